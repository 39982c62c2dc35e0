//! The runner that polls the processes of a `LocalSet`: where processes are
//! dropped, several `LocalSet`s on one thread, processes spawned by processes.

use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread::{self, ThreadId};

use drover_core::{DriveMode, Error, Process, ProcessHandler, State, spawn_owned};
use tokio::task::LocalSet;

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Begin,
    End,
}

impl State for Phase {
    fn is_done(&self) -> bool {
        *self == Phase::End
    }
    fn is_paused(&self) -> bool {
        false
    }
}

/// Where a step hands its waker out.
type WakerOut = Arc<Mutex<Option<Waker>>>;
/// Where a destructor says on which thread it ran.
type DroppedOn = Arc<Mutex<Option<ThreadId>>>;

/// A process whose one step hands a clone of its waker out, so that the waker
/// outlives it; its destructor says on which thread it ran. With `parent`, its
/// step spawns a child on that `LocalSet` instead and awaits its end.
struct Sticky {
    phase: Phase,
    waker: WakerOut,
    dropped_on: DroppedOn,
    parent: Option<Rc<LocalSet>>,
    child: Option<ProcessHandler<Phase, Sticky>>,
}

impl Sticky {
    fn new() -> (Sticky, WakerOut, DroppedOn) {
        let waker = Arc::new(Mutex::new(None));
        let dropped_on = Arc::new(Mutex::new(None));
        let sticky = Sticky {
            phase: Phase::Begin,
            waker: waker.clone(),
            dropped_on: dropped_on.clone(),
            parent: None,
            child: None,
        };
        (sticky, waker, dropped_on)
    }
}

impl Drop for Sticky {
    fn drop(&mut self) {
        *self.dropped_on.lock().unwrap() = Some(thread::current().id());
    }
}

impl Process<Phase> for Sticky {
    fn state(&self) -> &Phase {
        &self.phase
    }
    fn transition_to(&mut self, phase: Phase) {
        self.phase = phase;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        if let Some(local) = self.parent.take() {
            let (child, _, _) = Sticky::new();
            let child = spawn_owned(&local, child, DriveMode::FireAndForget);
            child.try_nudge().unwrap();
            child.ended().await.unwrap();
            self.child = Some(child);
            self.phase = Phase::End;
            return;
        }
        let mut polled = false;
        poll_fn(|cx| {
            if polled {
                return Poll::Ready(());
            }
            polled = true;
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        self.phase = Phase::End;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Drops `waker` on another thread, as the last reference to the process's
/// memory, and returns once it is dropped.
fn drop_elsewhere(waker: &WakerOut) {
    let waker = waker.lock().unwrap().take().expect("the step handed its waker out");
    thread::spawn(move || drop(waker)).join().unwrap();
}

/// Runs a `Sticky` process to its end, its handler dropped before the end or
/// after, then drops the process's waker on another thread, as the last
/// reference to its memory. Checks that the process was dropped on this
/// thread, by the last of its driver and its handler.
fn check_dropped_on_its_thread(handler_goes_first: bool) {
    let rt = runtime();
    let local = LocalSet::new();
    let (proc, waker, dropped_on) = Sticky::new();
    let dropped = || *dropped_on.lock().unwrap();
    let handler = spawn_owned(&local, proc, DriveMode::FireAndForget);
    handler.try_nudge().unwrap();
    if handler_goes_first {
        drop(handler);
        local.block_on(&rt, async {
            while dropped().is_none() {
                tokio::task::yield_now().await;
            }
        });
    } else {
        local.block_on(&rt, async { handler.ended().await.unwrap() });
        assert_eq!(dropped(), None, "the output waits for the handler");
        drop(handler);
    }
    assert_eq!(dropped(), Some(thread::current().id()));
    drop_elsewhere(&waker);
    assert_eq!(dropped(), Some(thread::current().id()));
}

#[test]
fn an_owned_process_is_dropped_on_its_thread_when_its_handler_goes_after_the_end() {
    check_dropped_on_its_thread(false);
}

#[test]
fn an_owned_process_is_dropped_on_its_thread_when_its_handler_went_before_the_end() {
    // The driver ends after the handler went: it drops the output itself.
    check_dropped_on_its_thread(true);
}

#[test]
fn each_local_set_of_a_thread_runs_its_own_processes() {
    let rt = runtime();
    let one = LocalSet::new();
    let two = LocalSet::new();
    let (a, _, _) = Sticky::new();
    let (b, _, _) = Sticky::new();
    let on_one = spawn_owned(&one, a, DriveMode::FireAndForget);
    let on_two = spawn_owned(&two, b, DriveMode::FireAndForget);
    on_one.try_nudge().unwrap();
    on_two.try_nudge().unwrap();
    let ended = one.block_on(&rt, async { on_one.join().await.map(|p| p.phase.clone()) });
    assert_eq!(ended, Ok(Phase::End));
    // Running the first `LocalSet` did not run the second's process.
    assert!(!on_two.is_done());
    drop(two);
    assert!(on_two.is_done());
    assert_eq!(on_two.try_nudge(), Err(Error::Aborted));
}

#[test]
fn a_process_spawns_and_awaits_a_child_on_its_local_set() {
    let rt = runtime();
    let local = Rc::new(LocalSet::new());
    let (mut parent, _, _) = Sticky::new();
    parent.parent = Some(local.clone());
    let handler = spawn_owned(&local, parent, DriveMode::FireAndForget);
    handler.try_nudge().unwrap();
    let parent = local.block_on(&rt, handler.join()).unwrap();
    assert_eq!(parent.phase, Phase::End);
    assert_eq!(parent.child.as_ref().map(|c| c.state()), Some(Phase::End));
}

/// Runs `local` until its processes have nothing left to do for now.
fn settle(local: &LocalSet, rt: &tokio::runtime::Runtime) {
    local.block_on(rt, async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    });
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

#[test]
fn a_local_set_awaited_completes_once_its_processes_have_ended() {
    // A `LocalSet` awaited as a future completes once all its tasks have: the
    // runner must not be a task that never ends.
    let rt = paused_runtime();
    let local = LocalSet::new();
    let (proc, _, _) = Sticky::new();
    let handler = spawn_owned(&local, proc, DriveMode::FireAndForget);
    handler.try_nudge().unwrap();
    let awaited = rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(3600), local).await });
    assert!(awaited.is_ok(), "the LocalSet never completed");
    assert!(handler.is_done());
    // A LocalSet whose runner has ended runs processes spawned later too.
    let local = LocalSet::new();
    let (first, _, _) = Sticky::new();
    let first = spawn_owned(&local, first, DriveMode::FireAndForget);
    first.try_nudge().unwrap();
    local.block_on(&rt, async { first.ended().await.unwrap() });
    settle(&local, &rt);
    let (second, _, _) = Sticky::new();
    let second = spawn_owned(&local, second, DriveMode::FireAndForget);
    second.try_nudge().unwrap();
    let ended = local.block_on(&rt, async { second.join().await.map(|p| p.phase.clone()) });
    assert_eq!(ended, Ok(Phase::End));
}

/// A process whose destructor panics.
struct Bomb(Phase);

impl Drop for Bomb {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("the process's destructor panicked");
        }
    }
}

impl Process<Phase> for Bomb {
    fn state(&self) -> &Phase {
        &self.0
    }
    fn transition_to(&mut self, phase: Phase) {
        self.0 = phase;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        self.0 = Phase::End;
    }
}

#[test]
fn a_process_never_polled_whose_destructor_panics_is_aborted_with_its_local_set() {
    let local = LocalSet::new();
    let handler = spawn_owned(&local, Bomb(Phase::Begin), DriveMode::FireAndForget);
    let other = spawn_owned(&local, Bomb(Phase::Begin), DriveMode::FireAndForget);
    drop(local);
    // However its destructor went, the handler hears that it was aborted.
    assert!(handler.is_done());
    assert_eq!(handler.try_nudge(), Err(Error::Aborted));
    assert_eq!(other.try_nudge(), Err(Error::Aborted));
}

#[test]
fn a_waiting_process_whose_destructor_panics_is_aborted_with_its_local_set() {
    let rt = runtime();
    let local = LocalSet::new();
    let handler = spawn_owned(&local, Bomb(Phase::Begin), DriveMode::FireAndForget);
    // Its driver starts and waits for the nudge.
    settle(&local, &rt);
    drop(local);
    assert_eq!(handler.try_nudge(), Err(Error::Aborted));
}

/// A process whose step counts its polls and hands its waker out, until
/// `release` is set. `Restless`, every poll wakes itself again: a step that
/// never waits and takes nothing from tokio's budget.
struct Probe {
    phase: Phase,
    polls: Arc<AtomicUsize>,
    waker: WakerOut,
    release: Arc<AtomicBool>,
    restless: bool,
}

impl Probe {
    fn new(restless: bool) -> Probe {
        Probe { phase: Phase::Begin, polls: Arc::default(), waker: Arc::default(), release: Arc::default(), restless }
    }
}

impl Process<Phase> for Probe {
    fn state(&self) -> &Phase {
        &self.phase
    }
    fn transition_to(&mut self, phase: Phase) {
        self.phase = phase;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        poll_fn(|cx| {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.restless {
                cx.waker().wake_by_ref();
            } else {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
            }
            if self.release.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        self.phase = Phase::End;
    }
}

#[test]
fn a_process_that_wakes_itself_forever_starves_neither_processes_nor_tasks_nor_timers() {
    let rt = runtime();
    let local = LocalSet::new();
    let probe = Probe::new(true);
    let polls = probe.polls.clone();
    let restless = spawn_owned(&local, probe, DriveMode::FireAndForget);
    restless.try_nudge().unwrap();
    let (other, _, _) = Sticky::new();
    let other = spawn_owned(&local, other, DriveMode::FireAndForget);
    other.try_nudge().unwrap();
    local.block_on(&rt, async {
        let task = tokio::task::spawn_local(async { tokio::time::sleep(std::time::Duration::from_millis(5)).await });
        other.ended().await.unwrap();
        task.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        restless.kill().await.unwrap();
    });
    assert!(polls.load(Ordering::Relaxed) > 1);
}

#[test]
fn a_process_woken_many_times_from_other_threads_is_polled_once() {
    let rt = runtime();
    let local = LocalSet::new();
    let probe = Probe::new(false);
    let (polls, waker, release) = (probe.polls.clone(), probe.waker.clone(), probe.release.clone());
    let handler = spawn_owned(&local, probe, DriveMode::FireAndForget);
    handler.try_nudge().unwrap();
    settle(&local, &rt);
    assert_eq!(polls.load(Ordering::Relaxed), 1);
    let w = waker.lock().unwrap().clone().unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let w = w.clone();
            thread::spawn(move || {
                for _ in 0..1000 {
                    w.wake_by_ref();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(w);
    settle(&local, &rt);
    assert_eq!(polls.load(Ordering::Relaxed), 2, "4000 wake-ups, one poll");
    release.store(true, Ordering::Relaxed);
    waker.lock().unwrap().take().unwrap().wake();
    let ended = local.block_on(&rt, async { handler.join().await.map(|p| p.phase.clone()) });
    assert_eq!(ended, Ok(Phase::End));
}

#[test]
fn wakers_on_other_threads_outlive_the_local_set_and_the_handlers() {
    // Other threads keep waking (and finally drop) the processes' wakers while
    // their LocalSet is dropped with them pending, their handlers gone or not.
    for round in 0..20 {
        let rt = runtime();
        let local = LocalSet::new();
        let mut wakers = Vec::new();
        let mut handlers = Vec::new();
        let mut dropped = Vec::new();
        for n in 0..8 {
            let (proc, waker, dropped_on) = Sticky::new();
            dropped.push(dropped_on);
            let handler = spawn_owned(&local, proc, DriveMode::FireAndForget);
            let probe = Probe { waker: waker.clone(), ..Probe::new(false) };
            let counted = spawn_owned(&local, probe, DriveMode::FireAndForget);
            counted.try_nudge().unwrap();
            if (n + round) % 2 == 0 {
                handler.try_nudge().unwrap();
            }
            handlers.push((handler, counted));
            wakers.push(waker);
        }
        settle(&local, &rt);
        let wakers: Vec<Waker> = wakers.iter().filter_map(|w| w.lock().unwrap().take()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = wakers
            .chunks(4)
            .map(|chunk| {
                let chunk = chunk.to_vec();
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for w in &chunk {
                            w.wake_by_ref();
                        }
                    }
                    for w in chunk {
                        w.wake();
                    }
                })
            })
            .collect();
        drop(wakers);
        if round % 2 == 0 {
            drop(handlers);
            drop(local);
        } else {
            drop(local);
            for (sticky, counted) in &handlers {
                assert!(counted.is_done());
                assert!(sticky.is_done());
            }
            drop(handlers);
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        for dropped_on in dropped {
            assert_eq!(*dropped_on.lock().unwrap(), Some(thread::current().id()));
        }
    }
}
