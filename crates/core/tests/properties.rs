//! Random sequences of control calls against a multi-step process with waiting
//! steps, checked against the contract's invariants.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::{Event, Job, JobState, Step};
use drover_core::{DriveMode, Error, State, spawn_owned};
use proptest::prelude::*;
use tokio::task::LocalSet;
use tokio::time::timeout;

#[derive(Clone, Debug)]
enum Op {
    TryNudge,
    Nudge,
    Pause,
    Resume,
    Kill,
    Yield(u8),
    Sleep(u16),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Compute),
        (1u64..40).prop_map(|ms| Step::Wait(Duration::from_millis(ms))),
        (1u64..40).prop_map(|ms| Step::Busy(Duration::from_millis(ms))),
        Just(Step::PauseSelf),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::TryNudge),
        2 => Just(Op::Nudge),
        3 => Just(Op::Pause),
        3 => Just(Op::Resume),
        1 => Just(Op::Kill),
        3 => (0u8..6).prop_map(Op::Yield),
        3 => (0u16..60).prop_map(Op::Sleep),
    ]
}

/// What one run observed.
#[derive(Debug, Default)]
struct Seen {
    nudges_ok: usize,
    pause_calls: usize,
    pauses_ok: usize,
    kills_ok: usize,
    /// Every state a watcher saw, in order.
    states: Vec<JobState>,
    events: Vec<Event>,
    final_state: Option<JobState>,
    handler_state: Option<JobState>,
    /// Control calls that had not returned a day after the end.
    hung: usize,
    join_after_kill: Option<Result<(), Error>>,
}

async fn run_case(local: &LocalSet, steps: Vec<Step>, mode: DriveMode, ops: Vec<Op>, hook_ms: u64) -> Seen {
    let seen = Rc::new(RefCell::new(Seen::default()));
    let (mut job, log) = Job::new(steps);
    // Hooks that take time let requests arrive while they run.
    job.hook_delay = Duration::from_millis(hook_ms);
    let handler = Rc::new(spawn_owned(local, job, mode));

    let mut rx = handler.subscribe();
    let watcher = {
        let seen = seen.clone();
        tokio::task::spawn_local(async move {
            while rx.changed().await.is_ok() {
                let state = rx.borrow_and_update().clone();
                seen.borrow_mut().states.push(state);
            }
        })
    };

    let mut calls = Vec::new();
    for op in ops {
        let h = handler.clone();
        let s = seen.clone();
        match op {
            Op::TryNudge => {
                if h.try_nudge().is_ok() {
                    s.borrow_mut().nudges_ok += 1;
                }
            }
            Op::Nudge => calls.push(tokio::task::spawn_local(async move {
                if h.nudge().await.is_ok() {
                    s.borrow_mut().nudges_ok += 1;
                }
            })),
            Op::Pause => {
                s.borrow_mut().pause_calls += 1;
                calls.push(tokio::task::spawn_local(async move {
                    if h.pause().await.is_ok() {
                        s.borrow_mut().pauses_ok += 1;
                    }
                }));
            }
            Op::Resume => {
                let _ = h.resume();
            }
            Op::Kill => calls.push(tokio::task::spawn_local(async move {
                if h.kill().await.is_ok() {
                    s.borrow_mut().kills_ok += 1;
                }
            })),
            Op::Yield(n) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
            }
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms.into())).await,
        }
    }

    // End it: every kill must end the process, and then every call returns.
    let day = Duration::from_secs(86_400);
    let killed = match timeout(day, handler.kill()).await {
        Ok(result) => result,
        Err(_) => Err(Error::Aborted),
    };
    let mut hung = 0;
    for call in calls {
        if timeout(day, call).await.is_err() {
            hung += 1;
        }
    }
    let _ = timeout(day, watcher).await;
    let handler_state = handler.state();
    let handler = Rc::try_unwrap(handler).expect("all calls returned");
    let joined = timeout(day, handler.join()).await;

    let mut seen = Rc::try_unwrap(seen).expect("all calls returned").into_inner();
    seen.hung = hung;
    seen.events = log.events();
    seen.handler_state = Some(handler_state);
    seen.join_after_kill = Some(killed);
    seen.final_state = joined.ok().and_then(Result::ok).map(|job| job.state);
    seen
}

fn check(seen: &Seen, mode: DriveMode) -> Result<(), TestCaseError> {
    let events = &seen.events;
    prop_assert_eq!(seen.hung, 0, "control calls still waiting after the end");

    // The process ended, `join` handed it back, and its state is terminal.
    let final_state = seen.final_state.clone();
    prop_assert!(final_state.as_ref().is_some_and(State::is_done), "final state {:?}", final_state);
    prop_assert_eq!(&seen.handler_state, &final_state);

    // A terminal state never changes.
    if let Some(first) = seen.states.iter().position(State::is_done) {
        prop_assert!(seen.states[first..].iter().all(|s| Some(s) == final_state.as_ref()), "{:?}", seen.states);
    }

    // Kill: the hook runs once iff the process was killed, and nothing follows it.
    let kills = events.iter().filter(|e| **e == Event::Kill).count();
    let killed = final_state == Some(JobState::Killed);
    prop_assert_eq!(kills, usize::from(killed));
    if killed {
        prop_assert_eq!(events.last(), Some(&Event::Kill));
        prop_assert!(seen.kills_ok >= 1 || seen.join_after_kill == Some(Ok(())));
    } else {
        prop_assert_eq!(seen.kills_ok, 0);
        prop_assert_eq!(&seen.join_after_kill, &Some(Err(Error::Finished)));
    }

    // Pause and resume hooks alternate; nothing starts while paused.
    let mut paused = false;
    let mut pauses = 0;
    for event in events {
        match event {
            Event::Pause => {
                prop_assert!(!paused, "pause hook while paused: {:?}", events);
                paused = true;
                pauses += 1;
            }
            Event::SelfPause => {
                prop_assert!(!paused);
                paused = true;
            }
            Event::Resume => {
                prop_assert!(paused, "resume hook while not paused: {:?}", events);
                paused = false;
            }
            Event::Start(_) => prop_assert!(!paused, "advanced while paused: {:?}", events),
            Event::End(_) | Event::Kill | Event::Recorded(..) => {}
        }
    }
    // No pause hook without a request, and a request that succeeded had an effect.
    prop_assert!(pauses <= seen.pause_calls);
    if seen.pauses_ok > 0 {
        prop_assert!(events.iter().any(|e| matches!(e, Event::Pause | Event::SelfPause)));
    }

    // Steps complete once each, in order.
    let ends: Vec<usize> = events.iter().filter_map(|e| if let Event::End(i) = e { Some(*i) } else { None }).collect();
    prop_assert!(ends.iter().enumerate().all(|(k, i)| k == *i), "{:?}", ends);

    // Launch: nothing runs without a nudge; in Step mode, one completed step per nudge.
    let starts = events.iter().filter(|e| matches!(e, Event::Start(_))).count();
    if seen.nudges_ok == 0 {
        prop_assert_eq!(starts, 0);
    }
    if mode == DriveMode::Step {
        prop_assert!(ends.len() <= seen.nudges_ok, "{} steps for {} nudges", ends.len(), seen.nudges_ok);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_control_sequences_keep_the_contract(
        steps in prop::collection::vec(step(), 1..6),
        step_mode in any::<bool>(),
        ops in prop::collection::vec(op(), 0..40),
        hook_ms in prop_oneof![Just(0u64), 1u64..20],
    ) {
        let mode = if step_mode { DriveMode::Step } else { DriveMode::FireAndForget };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let local = LocalSet::new();
        let seen = local.block_on(&rt, run_case(&local, steps, mode, ops, hook_ms));
        check(&seen, mode)?;
    }
}
