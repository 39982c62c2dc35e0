//! The control contract (design.md §2), rule by rule.

mod common;

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::{Event, Job, JobState, Log, Step, settle};
use drover_core::{
    DriveMode, Error, ProcessHandler, Recorder, spawn, spawn_owned, spawn_recorded, spawn_recorded_paused,
};
use tokio::sync::Mutex;
use tokio::task::LocalSet;
use tokio::time::{Instant, timeout};

const HOUR: Duration = Duration::from_secs(3600);
const MS: Duration = Duration::from_millis(1);

fn job(steps: Vec<Step>) -> (Rc<Mutex<Job>>, Log) {
    let (job, log) = Job::new(steps);
    (Rc::new(Mutex::new(job)), log)
}

async fn in_local<F: std::future::Future>(f: impl FnOnce(Rc<LocalSet>) -> F) -> F::Output {
    let local = Rc::new(LocalSet::new());
    local.clone().run_until(f(local)).await
}

// --- 1. Launch -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn fire_and_forget_runs_nothing_before_the_first_nudge_then_runs_to_the_end() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Compute, Step::Busy(10 * MS), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        settle().await;
        tokio::time::sleep(HOUR).await;
        assert!(log.events().is_empty(), "advanced before the nudge: {:?}", log.events());
        assert_eq!(handler.state(), JobState::Ready(0));

        handler.try_nudge().unwrap();
        handler.until_completion().await;
        assert_eq!(log.ends(), 3);
        assert_eq!(proc.lock().await.state, JobState::Done);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn step_mode_allows_exactly_one_advance_per_nudge() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Compute, Step::Busy(5 * MS), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::Step);
        settle().await;
        assert_eq!(log.starts(), 0);
        for n in 1..=3 {
            handler.nudge().await.unwrap();
            let mut rx = handler.subscribe();
            if log.ends() < n {
                rx.changed().await.ok();
            }
            settle().await;
            tokio::time::sleep(HOUR).await;
            assert_eq!(log.ends(), n, "{:?}", log.events());
            assert_eq!(log.starts(), n, "{:?}", log.events());
        }
        assert!(handler.is_done());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn try_nudge_fails_while_a_nudge_is_pending() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Compute, Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::Step);
        handler.try_nudge().unwrap();
        assert_eq!(handler.try_nudge(), Err(Error::NudgePending));
        settle().await;
        assert_eq!(log.ends(), 1);
        // The first nudge was taken: the slot is free again.
        handler.try_nudge().unwrap();
        handler.until_completion().await;
        assert_eq!(log.ends(), 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn nudge_waits_for_the_pending_nudge_to_be_taken() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Busy(10 * MS), Step::Busy(10 * MS), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::Step);
        for _ in 0..3 {
            handler.nudge().await.unwrap();
        }
        handler.until_completion().await;
        assert_eq!(log.ends(), 3);
    })
    .await;
}

// --- 2. Observe ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn every_state_is_published_starting_with_the_real_one() {
    in_local(|local| async move {
        let (mut job, _log) = Job::new(vec![Step::Compute, Step::Compute, Step::Compute]);
        job.state = JobState::Ready(1); // not the state's first variant: no dummy initial state
        let handler = spawn_owned(&local, job, DriveMode::Step);
        assert_eq!(handler.state(), JobState::Ready(1));
        let mut rx = handler.subscribe();
        assert_eq!(*rx.borrow(), JobState::Ready(1));

        handler.nudge().await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), JobState::Ready(2));
        handler.nudge().await.unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), JobState::Done);
        // After the final state the channel closes: watchers see the end.
        assert!(rx.changed().await.is_err());
        assert_eq!(handler.state(), JobState::Done);
        // A late subscriber still sees the final state.
        assert_eq!(*handler.subscribe().borrow(), JobState::Done);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn pause_resume_and_kill_states_are_published() {
    in_local(|local| async move {
        let (proc, _log) = job(vec![Step::PauseSelf, Step::Wait(HOUR)]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        let mut rx = handler.subscribe();
        handler.try_nudge().unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), JobState::SelfPaused(1));
        handler.resume().unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), JobState::Ready(1));
        handler.kill().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), JobState::Killed);
    })
    .await;
}

// --- 3. Pause --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn pause_takes_effect_between_steps() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Busy(100 * MS), Step::Compute, Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        assert_eq!(log.events(), vec![Event::Start(0)]);
        // Step 0 is busy (not interruptible): the pause waits for it.
        let started = Instant::now();
        handler.pause().await.unwrap();
        assert!(started.elapsed() >= 90 * MS);
        assert_eq!(log.events(), vec![Event::Start(0), Event::End(0), Event::Pause]);
        assert!(handler.is_paused());

        // Nothing advances while paused, however long.
        tokio::time::sleep(HOUR).await;
        settle().await;
        assert_eq!(log.events().len(), 3);
        assert_eq!(handler.state(), JobState::Ready(1));

        handler.resume().unwrap();
        handler.until_completion().await;
        assert_eq!(
            log.events(),
            vec![
                Event::Start(0),
                Event::End(0),
                Event::Pause,
                Event::Resume,
                Event::Start(1),
                Event::End(1),
                Event::Start(2),
                Event::End(2)
            ]
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn pause_interrupts_a_step_that_is_only_waiting_and_the_step_runs_again_after_resume() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Wait(HOUR), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        let started = Instant::now();
        handler.pause().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "the pause waited for the hour");
        assert_eq!(log.events(), vec![Event::Start(0), Event::Pause]);
        assert_eq!(handler.state(), JobState::Ready(0));

        handler.resume().unwrap();
        settle().await;
        assert_eq!(log.events(), vec![Event::Start(0), Event::Pause, Event::Resume, Event::Start(0)]);
        handler.until_completion().await;
        assert_eq!(log.count(&Event::End(0)), 1);
        assert_eq!(log.count(&Event::End(1)), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_step_keeps_its_nudge_in_step_mode() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Wait(10 * MS), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::Step);
        handler.nudge().await.unwrap();
        settle().await;
        handler.pause().await.unwrap();
        handler.resume().unwrap();
        // No second nudge: the interrupted step runs again and completes.
        tokio::time::sleep(HOUR).await;
        assert_eq!(log.count(&Event::End(0)), 1);
        assert_eq!(log.starts(), 2);
        assert_eq!(handler.state(), JobState::Ready(1));
        handler.nudge().await.unwrap();
        handler.until_completion().await;
        assert_eq!(log.ends(), 2);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_process_can_pause_itself_and_resume_continues_it() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::PauseSelf, Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        assert!(handler.is_paused());
        assert_eq!(handler.state(), JobState::SelfPaused(1));
        // A pause of a paused process does nothing; no pause hook ran.
        handler.pause().await.unwrap();
        assert_eq!(log.count(&Event::Pause), 0);
        tokio::time::sleep(HOUR).await;
        assert_eq!(log.starts(), 1);

        handler.resume().unwrap();
        handler.until_completion().await;
        assert_eq!(
            log.events(),
            vec![Event::Start(0), Event::End(0), Event::SelfPause, Event::Resume, Event::Start(1), Event::End(1)]
        );
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_pause_hook_runs_once_for_concurrent_pauses() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Wait(HOUR)]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        let (a, b, c) = tokio::join!(handler.pause(), handler.pause(), handler.pause());
        assert_eq!((a, b, c), (Ok(()), Ok(()), Ok(())));
        assert_eq!(log.count(&Event::Pause), 1);
        handler.kill().await.unwrap();
    })
    .await;
}

// --- 4. Resume -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn resume_when_not_paused_leaves_no_stale_permit() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Compute, Step::Compute, Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::Step);
        // Resumes that find nothing to resume.
        handler.resume().unwrap();
        handler.resume().unwrap();
        handler.nudge().await.unwrap();
        settle().await;
        handler.resume().unwrap();

        // A later pause still pauses, and stays paused.
        handler.pause().await.unwrap();
        handler.nudge().await.unwrap();
        settle().await;
        tokio::time::sleep(HOUR).await;
        assert!(handler.is_paused());
        assert_eq!(log.ends(), 1, "advanced while paused: {:?}", log.events());
        assert_eq!(log.count(&Event::Resume), 0, "resume hook ran without a pause");

        handler.resume().unwrap();
        settle().await;
        assert_eq!(log.ends(), 2);
        assert_eq!(log.count(&Event::Resume), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_resume_before_the_pause_took_effect_cancels_it() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Busy(100 * MS), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        let (paused, resumed) = tokio::join!(handler.pause(), async {
            settle().await;
            handler.resume()
        });
        assert_eq!(paused, Err(Error::Resumed));
        assert_eq!(resumed, Ok(()));
        handler.until_completion().await;
        assert_eq!(log.count(&Event::Pause), 0);
        assert_eq!(log.count(&Event::Resume), 0);
        assert_eq!(log.ends(), 2);
    })
    .await;
}

// --- 5. Kill ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn kill_before_launch() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.kill().await.unwrap();
        assert_eq!(log.events(), vec![Event::Kill]);
        assert_eq!(handler.state(), JobState::Killed);
        handler.until_completion().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn kill_while_paused() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Compute, Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::Step);
        handler.nudge().await.unwrap();
        settle().await;
        handler.pause().await.unwrap();
        handler.kill().await.unwrap();
        assert_eq!(log.events(), vec![Event::Start(0), Event::End(0), Event::Pause, Event::Kill]);
        handler.until_completion().await;
        assert_eq!(proc.lock().await.state, JobState::Killed);
    })
    .await;
}

/// Real time here: the step would wait an hour, and the test must end at once.
#[tokio::test]
async fn kill_interrupts_an_advance_that_would_wait_an_hour() {
    in_local(|local| async move {
        // `Busy`: not even marked interruptible. A kill interrupts any step.
        let (proc, log) = job(vec![Step::Busy(HOUR)]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        assert_eq!(log.events(), vec![Event::Start(0)]);
        let started = std::time::Instant::now();
        handler.kill().await.unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(500), "kill took {took:?}");
        assert_eq!(log.events(), vec![Event::Start(0), Event::Kill]);
        handler.until_completion().await;
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_kill_hook_runs_once_for_concurrent_kills() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Wait(HOUR)]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        let (a, b) = tokio::join!(handler.kill(), handler.kill());
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert_eq!(log.count(&Event::Kill), 1);
    })
    .await;
}

// --- 6. After the end ------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn control_calls_after_the_end_fail_at_once() {
    in_local(|local| async move {
        for killed in [false, true] {
            let (proc, _log) = job(vec![Step::Compute]);
            let handler = spawn(&local, &proc, DriveMode::FireAndForget);
            if killed {
                handler.kill().await.unwrap();
            } else {
                handler.try_nudge().unwrap();
                let mut rx = handler.subscribe();
                while rx.changed().await.is_ok() {}
            }
            assert!(handler.is_done());
            let at_once = Duration::from_secs(1);
            assert_eq!(handler.try_nudge(), Err(Error::Finished));
            assert_eq!(timeout(at_once, handler.nudge()).await, Ok(Err(Error::Finished)));
            assert_eq!(timeout(at_once, handler.pause()).await, Ok(Err(Error::Finished)));
            assert_eq!(handler.resume(), Err(Error::Finished));
            assert_eq!(timeout(at_once, handler.kill()).await, Ok(Err(Error::Finished)));
            assert_eq!(timeout(at_once, handler.join()).await, Ok(Ok(())));
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_process_ends_with_an_error_and_the_others_finish() {
    in_local(|local| async move {
        let (good_a, log_a) = job(vec![Step::Compute, Step::Busy(10 * MS), Step::Compute]);
        let (bad, _) = job(vec![Step::Compute, Step::Panic, Step::Compute]);
        let (good_b, log_b) = job(vec![Step::Busy(20 * MS), Step::Compute]);
        let a = spawn(&local, &good_a, DriveMode::FireAndForget);
        let p = spawn(&local, &bad, DriveMode::FireAndForget);
        let b = spawn(&local, &good_b, DriveMode::FireAndForget);
        for h in [&a, &p, &b] {
            h.try_nudge().unwrap();
        }
        let mut rx = p.subscribe();
        while rx.changed().await.is_ok() {}
        let expected = Error::Panicked("step 1 panicked on purpose".to_owned());
        assert_eq!(p.try_nudge(), Err(expected.clone()));
        assert_eq!(p.kill().await, Err(expected.clone()));
        assert_eq!(p.join().await, Err(expected));
        assert_eq!(a.join().await, Ok(()));
        assert_eq!(b.join().await, Ok(()));
        assert_eq!(log_a.ends(), 3);
        assert_eq!(log_b.ends(), 2);
        // The lock on the process was released by the unwinding step.
        assert!(bad.try_lock().is_ok());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_process_dropped_with_its_local_set_reports_aborted() {
    let (proc, log) = job(vec![Step::Wait(HOUR)]);
    let local = LocalSet::new();
    let handler = spawn(&local, &proc, DriveMode::FireAndForget);
    handler.try_nudge().unwrap();
    local.run_until(settle()).await;
    assert_eq!(log.starts(), 1);
    drop(local);
    assert!(handler.is_done());
    assert_eq!(handler.try_nudge(), Err(Error::Aborted));
    assert_eq!(handler.join().await, Err(Error::Aborted));
}

#[tokio::test(start_paused = true)]
async fn ended_waits_without_taking_the_handler_and_reports_how_it_ended() {
    in_local(|local| async move {
        let (done, _) = Job::new(vec![Step::Compute, Step::Busy(MS)]);
        let h = spawn_owned(&local, done, DriveMode::FireAndForget);
        h.try_nudge().unwrap();
        assert_eq!(h.ended().await, Ok(()));
        assert_eq!(h.state(), JobState::Done);
        // Still usable afterwards, and the output is still there.
        assert_eq!(h.ended().await, Ok(()));
        assert_eq!(h.join().await.unwrap().state, JobState::Done);

        let (waiting, _) = Job::new(vec![Step::Wait(HOUR)]);
        let h = spawn_owned(&local, waiting, DriveMode::FireAndForget);
        h.try_nudge().unwrap();
        let ended = tokio::select! {
            r = h.ended() => Some(r),
            () = tokio::time::sleep(10 * MS) => None,
        };
        assert_eq!(ended, None, "a waiting process has not ended");
        h.kill().await.unwrap();
        assert_eq!(h.ended().await, Ok(()));
        assert_eq!(h.state(), JobState::Killed);

        let (bad, _) = job(vec![Step::Panic]);
        let p = spawn(&local, &bad, DriveMode::FireAndForget);
        p.try_nudge().unwrap();
        assert!(matches!(p.ended().await, Err(Error::Panicked(_))));
    })
    .await;
}

// --- Owned processes, handlers across threads -----------------------------

#[tokio::test(start_paused = true)]
async fn an_owned_process_is_handed_back_at_the_end() {
    in_local(|local| async move {
        let (job, log) = Job::new(vec![Step::Compute, Step::Busy(MS)]);
        let handler = spawn_owned(&local, job, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        let job = handler.join().await.unwrap();
        assert_eq!(job.state, JobState::Done);
        assert_eq!(log.ends(), 2);

        let (job, _) = Job::new(vec![Step::Wait(HOUR)]);
        let handler = spawn_owned(&local, job, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        handler.kill().await.unwrap();
        assert_eq!(handler.join().await.unwrap().state, JobState::Killed);
    })
    .await;
}

#[test]
fn handlers_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ProcessHandler<JobState>>();
    send_sync::<ProcessHandler<JobState, Job>>();
}

/// A handler moved to another thread controls the process on its `LocalSet`.
#[test]
fn a_handler_controls_its_process_from_another_thread() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = LocalSet::new();
    let (proc, log) = job(vec![Step::Wait(HOUR)]);
    let handler = spawn(&local, &proc, DriveMode::FireAndForget);
    let controller = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            handler.try_nudge().unwrap();
            handler.pause().await.unwrap();
            handler.resume().unwrap();
            // A kill sent right after the resume would win over it: wait for the resume.
            while handler.is_paused() {
                std::thread::sleep(MS);
            }
            handler.kill().await.unwrap();
            handler.state()
        })
    });
    local.block_on(&rt, async {
        while !controller.is_finished() {
            tokio::time::sleep(MS).await;
        }
    });
    assert_eq!(controller.join().unwrap(), JobState::Killed);
    assert_eq!(log.count(&Event::Pause), 1);
    assert_eq!(log.count(&Event::Resume), 1);
    assert_eq!(log.count(&Event::Kill), 1);
}

// --- Regressions found in review ------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_wait_that_was_given_up_does_not_make_the_step_interruptible() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::LostWait(100 * MS), Step::Compute]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        tokio::time::sleep(20 * MS).await;
        // The step now does busy work: the pause must wait for it to end.
        handler.pause().await.unwrap();
        assert_eq!(log.events(), vec![Event::Start(0), Event::End(0), Event::Pause]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_resume_while_the_pause_hook_runs_does_not_cancel_the_pause() {
    in_local(|local| async move {
        let (mut proc, log) = Job::new(vec![Step::Compute]);
        proc.hook_delay = 100 * MS;
        let handler = Rc::new(spawn_owned(&local, proc, DriveMode::Step));
        let pausing = tokio::task::spawn_local({
            let h = handler.clone();
            async move { h.pause().await }
        });
        tokio::time::sleep(10 * MS).await;
        handler.resume().unwrap();
        // The pause took effect (its hook ran), then the resume.
        assert_eq!(pausing.await.unwrap(), Ok(()));
        tokio::time::sleep(HOUR).await;
        assert_eq!(log.events(), vec![Event::Pause, Event::Resume]);
        assert!(!handler.is_paused());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_while_the_resume_hook_runs_returns_once_paused_again() {
    in_local(|local| async move {
        let (mut proc, log) = Job::new(vec![Step::Compute]);
        proc.hook_delay = 100 * MS;
        let handler = spawn_owned(&local, proc, DriveMode::Step);
        handler.pause().await.unwrap();
        handler.resume().unwrap();
        tokio::time::sleep(10 * MS).await;
        handler.pause().await.unwrap();
        assert!(handler.is_paused());
        assert_eq!(log.events(), vec![Event::Pause, Event::Resume, Event::Pause]);
    })
    .await;
}

/// Real time: with paused time a spinning task keeps the clock from ever moving.
#[tokio::test]
async fn a_step_that_never_waits_does_not_starve_its_thread() {
    in_local(|local| async move {
        let (spinner, _) = job(vec![Step::Spin]);
        let (other, other_log) = job(vec![Step::Compute, Step::Busy(MS), Step::Compute]);
        let spin = spawn(&local, &spinner, DriveMode::FireAndForget);
        let h = spawn(&local, &other, DriveMode::FireAndForget);
        spin.try_nudge().unwrap();
        h.try_nudge().unwrap();
        h.until_completion().await;
        assert_eq!(other_log.ends(), 3);
        spin.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_step_whose_drop_panics_still_gets_its_kill_hook_and_reports_the_panic() {
    in_local(|local| async move {
        let (proc, log) = job(vec![Step::Bomb]);
        let handler = spawn(&local, &proc, DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        settle().await;
        let result = handler.kill().await;
        assert_eq!(result, Err(Error::Panicked("the step's guard panicked on drop".into())));
        assert_eq!(log.count(&Event::Kill), 1, "the kill hook must still clean up");
    })
    .await;
}

// --- Recording states -------------------------------------------------------

/// Records into the process's own log, slowly, so that a step that started
/// before its state was durable would show up in the log's order.
struct SlowRecorder(Log);

impl Recorder<JobState> for SlowRecorder {
    async fn record(&self, state: &JobState, paused: bool) {
        tokio::time::sleep(5 * MS).await;
        self.0.push(Event::Recorded(state.clone(), paused));
    }
}

#[tokio::test(start_paused = true)]
async fn every_state_is_recorded_before_the_next_step_or_hook() {
    in_local(|local| async move {
        let (proc, log) = Job::new(vec![Step::Compute, Step::Wait(HOUR), Step::Compute]);
        let handler = spawn_recorded(&local, proc, DriveMode::FireAndForget, SlowRecorder(log.clone()));
        handler.try_nudge().unwrap();
        settle().await;
        tokio::time::sleep(10 * MS).await;
        handler.pause().await.unwrap();
        handler.resume().unwrap();
        tokio::time::sleep(10 * MS).await;
        handler.kill().await.unwrap();
        use JobState::*;
        assert_eq!(
            log.events(),
            vec![
                Event::Start(0),
                Event::End(0),
                Event::Recorded(Ready(1), false),
                Event::Start(1),
                Event::Pause,
                Event::Recorded(Ready(1), true),
                Event::Resume,
                Event::Recorded(Ready(1), false),
                Event::Start(1),
                Event::Kill,
                Event::Recorded(Killed, false),
            ]
        );
        // The final state was durable before the kill returned.
        assert_eq!(handler.join().await.unwrap().state, Killed);
    })
    .await;
}

/// Records like [`SlowRecorder`], and records a panic as an ending.
struct EndingRecorder(Log, Arc<std::sync::Mutex<Vec<(JobState, String)>>>);

impl Recorder<JobState> for EndingRecorder {
    async fn record(&self, state: &JobState, paused: bool) {
        self.0.push(Event::Recorded(state.clone(), paused));
    }

    async fn panicked(&self, state: &JobState, message: &str) {
        tokio::time::sleep(5 * MS).await;
        self.1.lock().unwrap().push((state.clone(), message.to_owned()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_an_ending_its_kill_hook_runs_and_the_recorder_hears_of_it() {
    in_local(|local| async move {
        // A step panics with no kill asked for.
        let (proc, log) = Job::new(vec![Step::Compute, Step::Panic, Step::Compute]);
        let panics = Arc::default();
        let handler =
            spawn_recorded(&local, proc, DriveMode::FireAndForget, EndingRecorder(log.clone(), Arc::clone(&panics)));
        handler.try_nudge().unwrap();
        let expected = Error::Panicked("step 1 panicked on purpose".to_owned());
        assert_eq!(handler.ended().await, Err(expected));
        assert_eq!(log.count(&Event::Kill), 1, "the kill hook cleans up after a panicking step");
        assert_eq!(
            panics.lock().unwrap().clone(),
            vec![(JobState::Killed, "step 1 panicked on purpose".to_owned())],
            "the recorder was told, with the state the kill hook left, before the end"
        );
        assert_eq!(log.count(&Event::Recorded(JobState::Killed, false)), 0, "a panic is not recorded as a kill");

        // A pause hook panics: the kill hook still runs, once.
        let (mut proc, log) = Job::new(vec![Step::Wait(HOUR)]);
        proc.hook_delay = MS;
        let panics = Arc::default();
        struct PanicsOnPause(Job);
        impl drover_core::Process<JobState> for PanicsOnPause {
            fn state(&self) -> &JobState {
                self.0.state()
            }
            fn transition_to(&mut self, state: JobState) {
                self.0.transition_to(state);
            }
            async fn kill(&mut self) {
                self.0.kill().await;
            }
            async fn pause(&mut self) {
                panic!("the pause hook panicked");
            }
            async fn advance(&mut self) {
                self.0.advance().await;
            }
        }
        let handler = spawn_recorded(
            &local,
            PanicsOnPause(proc),
            DriveMode::FireAndForget,
            EndingRecorder(log.clone(), Arc::clone(&panics)),
        );
        handler.try_nudge().unwrap();
        settle().await;
        assert!(matches!(handler.pause().await, Err(Error::Panicked(_))));
        assert_eq!(log.count(&Event::Kill), 1);
        assert_eq!(panics.lock().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_process_restored_paused_stays_paused_until_resumed() {
    in_local(|local| async move {
        let (mut proc, log) = Job::new(vec![Step::Compute, Step::Compute]);
        proc.state = JobState::Ready(1);
        let handler = spawn_recorded_paused(&local, proc, DriveMode::FireAndForget, SlowRecorder(log.clone()));
        handler.try_nudge().unwrap();
        tokio::time::sleep(HOUR).await;
        assert!(handler.is_paused());
        assert_eq!(log.events(), vec![], "no hook, no step while restored paused");
        handler.resume().unwrap();
        assert_eq!(handler.join().await.unwrap().state, JobState::Done);
        use JobState::*;
        assert_eq!(
            log.events(),
            vec![
                Event::Resume,
                Event::Recorded(Ready(1), false),
                Event::Start(1),
                Event::End(1),
                Event::Recorded(Done, false)
            ]
        );
    })
    .await;
}
