//! The pool of single-threaded runtimes.

mod common;

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use common::{Event, Job, JobState, Step};
use drover_core::{DriveMode, Error, Pool, Process, State};

const HOUR: Duration = Duration::from_secs(3600);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn processes_spread_over_the_workers_and_run_to_the_end() {
    let pool = Pool::new(3).unwrap();
    assert_eq!(pool.threads(), 3);
    let handlers: Vec<_> = (0..30)
        .map(|_| {
            let (job, _) = Job::new(vec![Step::Compute, Step::Busy(Duration::from_millis(20))]);
            pool.spawn(job, DriveMode::FireAndForget)
        })
        .collect();
    // All 30 wait for their nudge: placement balanced them.
    assert_eq!(pool.live(), 30);
    for h in &handlers {
        h.try_nudge().unwrap();
    }
    block_on(async {
        for h in handlers {
            let job = h.join().await.unwrap();
            assert_eq!(job.state, JobState::Done);
        }
    });
    // A worker counts a process until its driver task returns, just after the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pool.live() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(pool.live(), 0);
}

/// A process that records the thread its steps ran on.
#[derive(Clone, Debug)]
struct Where(Option<std::thread::ThreadId>);

impl State for Where {
    fn is_done(&self) -> bool {
        self.0.is_some()
    }
    fn is_paused(&self) -> bool {
        false
    }
}

/// Not `Send`: placed with `spawn_with`.
struct Local {
    state: Where,
    _not_send: Rc<RefCell<()>>,
}

impl Process<Where> for Local {
    fn state(&self) -> &Where {
        &self.state
    }
    fn transition_to(&mut self, state: Where) {
        self.state = state;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        self.state = Where(Some(std::thread::current().id()));
    }
}

#[test]
fn processes_that_are_not_send_are_built_on_their_worker() {
    let pool = Pool::new(2).unwrap();
    let threads = block_on(async {
        let mut threads = HashSet::new();
        for _ in 0..8 {
            let h = pool
                .spawn_with(|| Local { state: Where(None), _not_send: Rc::default() }, DriveMode::FireAndForget)
                .await
                .unwrap();
            h.try_nudge().unwrap();
            let mut rx = h.subscribe();
            while rx.changed().await.is_ok() {}
            threads.insert(h.state().0.unwrap());
        }
        threads
    });
    assert!(!threads.contains(&std::thread::current().id()));
    assert_eq!(threads.len(), 2, "both workers were used");
}

#[test]
fn a_panicking_factory_is_reported() {
    let pool = Pool::new(1).unwrap();
    let result = block_on(pool.spawn_with::<Where, Local, _>(|| panic!("no"), DriveMode::Step));
    assert!(matches!(result, Err(Error::Panicked(_))), "{result:?}");
    // The worker survived.
    let (job, _) = Job::new(vec![Step::Compute]);
    let h = pool.spawn(job, DriveMode::FireAndForget);
    h.try_nudge().unwrap();
    assert_eq!(block_on(h.join()).unwrap().state, JobState::Done);
}

#[test]
fn control_from_any_thread() {
    let pool = Pool::new(2).unwrap();
    let (job, log) = Job::new(vec![Step::Wait(HOUR)]);
    let h = pool.spawn(job, DriveMode::FireAndForget);
    let started = log.clone();
    let other = std::thread::spawn(move || {
        block_on(async {
            h.try_nudge().unwrap();
            // Pause inside the waiting step, not before it.
            while started.starts() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            h.pause().await.unwrap();
            h.kill().await.unwrap();
            h.join().await.unwrap().state
        })
    });
    assert_eq!(other.join().unwrap(), JobState::Killed);
    assert_eq!(log.events(), vec![Event::Start(0), Event::Pause, Event::Kill]);
}

#[test]
fn join_waits_and_drop_aborts() {
    let pool = Pool::new(2).unwrap();
    let (job, _) = Job::new(vec![Step::Busy(Duration::from_millis(50))]);
    let finishing = pool.spawn(job, DriveMode::FireAndForget);
    finishing.try_nudge().unwrap();
    pool.join();
    assert_eq!(block_on(finishing.join()).unwrap().state, JobState::Done);

    let pool = Pool::new(2).unwrap();
    let (job, _) = Job::new(vec![Step::Wait(HOUR)]);
    let waiting = pool.spawn(job, DriveMode::FireAndForget);
    waiting.try_nudge().unwrap();
    drop(pool);
    assert!(waiting.is_done());
    assert_eq!(block_on(waiting.join()).err(), Some(Error::Aborted));
}

/// `is_done` panics: building the process panics on its worker.
struct Fragile;

impl Process<Where> for Fragile {
    fn state(&self) -> &Where {
        panic!("no state")
    }
    fn transition_to(&mut self, _: Where) {}
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {}
}

#[test]
fn a_process_that_panics_while_placed_takes_nothing_else_down() {
    let pool = Pool::new(2).unwrap();
    let (job, _) = Job::new(vec![Step::Busy(Duration::from_millis(200))]);
    let bystander = pool.spawn(job, DriveMode::FireAndForget);
    bystander.try_nudge().unwrap();
    let placed = block_on(pool.spawn_with(|| Fragile, DriveMode::FireAndForget));
    assert!(matches!(placed, Err(Error::Panicked(_))), "{placed:?}");
    assert_eq!(block_on(bystander.join()).unwrap().state, JobState::Done);
    for _ in 0..6 {
        let (job, _) = Job::new(vec![Step::Compute]);
        let h = pool.spawn(job, DriveMode::FireAndForget);
        h.try_nudge().unwrap();
        assert_eq!(block_on(h.join()).unwrap().state, JobState::Done);
    }
}
