//! A pool of single-threaded runtimes, so that processes use every core while
//! each one stays on one thread and need not be `Send` once placed.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

use crate::driver::{AbortGuard, Detached, Owned, drive, prepare};
use crate::runner;
use crate::{DriveMode, Error, Process, ProcessHandler, State};

type Job = Box<dyn FnOnce() + Send>;

/// A pool of worker threads, each running a current-thread tokio runtime with a
/// `LocalSet`. A process is placed on the worker with the fewest live processes
/// and stays there; its handler works from any thread.
///
/// Each worker's runtime has every driver this build of tokio offers (timers,
/// I/O, child processes) enabled.
///
/// # Drop
///
/// Dropping the pool stops its workers and drops the processes still running on
/// them: their handlers report [`Error::Aborted`]. [`Pool::join`] waits for
/// them to end instead.
///
/// ```
/// use drover_core::{DriveMode, Pool};
/// # use drover_core::{Process, State};
/// # #[derive(Clone, Debug)] struct Done;
/// # impl State for Done { fn is_done(&self) -> bool { true } fn is_paused(&self) -> bool { false } }
/// # struct P(Done);
/// # impl Process<Done> for P {
/// #     fn state(&self) -> &Done { &self.0 }
/// #     fn transition_to(&mut self, s: Done) { self.0 = s }
/// #     async fn kill(&mut self) {}
/// #     async fn pause(&mut self) {}
/// #     async fn advance(&mut self) {}
/// # }
/// let pool = Pool::new(2)?;
/// let handler = pool.spawn(P(Done), DriveMode::FireAndForget);
/// handler.try_nudge().ok();
/// pool.join();
/// assert!(handler.is_done());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Pool {
    workers: Vec<Worker>,
    next: AtomicUsize,
    graceful: Arc<AtomicBool>,
}

struct Worker {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    live: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("threads", &self.workers.len()).field("live", &self.live()).finish()
    }
}

impl Pool {
    /// Starts a pool of `threads` workers (at least one).
    ///
    /// # Errors
    ///
    /// If a runtime or a thread cannot be created.
    pub fn new(threads: usize) -> io::Result<Pool> {
        let graceful = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for index in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (jobs, rx) = mpsc::unbounded_channel();
            let graceful = graceful.clone();
            let thread = thread::Builder::new()
                .name(format!("drover-worker-{index}"))
                .spawn(move || work(&runtime, rx, &graceful))?;
            workers.push(Worker { jobs: Some(jobs), live: Arc::default(), thread: Some(thread) });
        }
        Ok(Pool { workers, next: AtomicUsize::new(0), graceful })
    }

    /// Starts one worker per available core.
    ///
    /// # Errors
    ///
    /// As [`Pool::new`].
    pub fn with_available_parallelism() -> io::Result<Pool> {
        Pool::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many worker threads the pool has.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// How many processes are placed and whose driver task has not yet returned
    /// (it returns just after the process ends).
    pub fn live(&self) -> usize {
        self.workers.iter().map(|w| w.live.load(Ordering::Relaxed)).sum()
    }

    /// Places `proc` on a worker and returns its handler, which hands the process
    /// back at the end ([`ProcessHandler::join`]).
    pub fn spawn<S, P>(&self, proc: P, drive_mode: DriveMode) -> ProcessHandler<S, P>
    where
        S: State + Send + Sync,
        P: Process<S> + Send + 'static,
    {
        let (shared, done) = prepare(&proc, drive_mode);
        let shared = runner::detached(shared);
        let guard = AbortGuard(shared.clone());
        let worker = self.pick();
        let live = Live::new(&worker.live);
        // If the job is dropped unrun, the guard closes the process as aborted.
        worker.send(Box::new(move || {
            let driver = drive(Owned(proc), guard, done);
            tokio::task::spawn_local(async move {
                let _live = live;
                driver.await;
            });
        }));
        ProcessHandler::new(shared)
    }

    /// Builds a process on a worker with `make` and places it there, for
    /// processes that are not `Send`. Returns its handler once it is placed.
    ///
    /// # Errors
    ///
    /// [`Error::Panicked`] if `make` panicked, [`Error::Aborted`] if the worker
    /// has stopped.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped after the job reached the worker, the process is
    /// still placed, detached.
    pub async fn spawn_with<S, P, F>(&self, make: F, drive_mode: DriveMode) -> Result<ProcessHandler<S>, Error>
    where
        S: State + Send + Sync,
        P: Process<S> + 'static,
        F: FnOnce() -> P + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let worker = self.pick();
        let live = Live::new(&worker.live);
        let sent = worker.send(Box::new(move || {
            // `prepare` asks the process for its state: process code too.
            let built = catch_unwind(AssertUnwindSafe(|| {
                let proc = make();
                let prepared = prepare(&proc, drive_mode);
                (proc, prepared)
            }));
            let (proc, (shared, done)) = match built {
                Ok(built) => built,
                Err(_) => {
                    let _ = tx.send(Err(Error::Panicked("building the process panicked".to_owned())));
                    return;
                }
            };
            let shared = runner::detached(shared);
            let driver = drive(Detached(Owned(proc)), AbortGuard(shared.clone()), done);
            let _ = tx.send(Ok(ProcessHandler::new(shared)));
            tokio::task::spawn_local(async move {
                let _live = live;
                driver.await;
            });
        }));
        if !sent {
            return Err(Error::Aborted);
        }
        rx.await.unwrap_or(Err(Error::Aborted))
    }

    /// Waits until every process placed on the pool has ended, then stops the
    /// workers. Blocks the calling thread: call it outside async code.
    ///
    /// A process that can never end keeps it waiting: one never nudged, or
    /// paused, whose handlers are gone. Kill such processes first, or drop the
    /// pool instead.
    pub fn join(mut self) {
        self.graceful.store(true, Ordering::SeqCst);
        self.stop();
    }

    fn stop(&mut self) {
        for worker in &mut self.workers {
            worker.jobs = None;
        }
        let me = thread::current().id();
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                // Dropped by one of its own workers: that thread stops on its own.
                if thread.thread().id() != me {
                    let _ = thread.join();
                }
            }
        }
    }

    /// The worker with the fewest live processes, scanning from a rotating start
    /// so that ties spread evenly.
    fn pick(&self) -> &Worker {
        let n = self.workers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n)
            .map(|k| &self.workers[(start + k) % n])
            .filter(|w| w.jobs.as_ref().is_some_and(|jobs| !jobs.is_closed()))
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .unwrap_or(&self.workers[0])
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Worker {
    /// Sends `job` to the worker; if the worker has stopped, the job is dropped.
    fn send(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|jobs| jobs.send(job).is_ok())
    }
}

/// Counts a process as live on its worker until it ends (or its job is dropped).
struct Live(Arc<AtomicUsize>);

impl Live {
    fn new(count: &Arc<AtomicUsize>) -> Live {
        count.fetch_add(1, Ordering::Relaxed);
        Live(count.clone())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn work(runtime: &Runtime, mut jobs: mpsc::UnboundedReceiver<Job>, graceful: &AtomicBool) {
    let local = LocalSet::new();
    local.block_on(runtime, async {
        while let Some(job) = jobs.recv().await {
            // Jobs catch the panics of process code; this keeps a bug in a job
            // itself from taking the worker's other processes with it.
            let _ = catch_unwind(AssertUnwindSafe(job));
        }
    });
    if graceful.load(Ordering::SeqCst) {
        // Runs until every process on this worker has ended.
        runtime.block_on(local);
    }
}
