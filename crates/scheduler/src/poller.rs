//! Batched status polling: one status command per interval for every job of a
//! computer, however many processes wait.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::scheduler::{AnyScheduler, JobStatus, Scheduler};
use crate::transport::{AnyTransport, Transport};

/// The shortest polling interval a computer may ask for.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The polling interval unless a computer asks for another: gentle on shared
/// login nodes and scheduler controllers.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Why a wait for a job's status failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("polling job status failed: {message}")]
pub struct PollError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again later may work.
    pub transient: bool,
}

/// The status poller of one computer (one host and user). Processes ask it to
/// wake them when their job's status changes; once per interval it runs one
/// status command for all jobs that someone waits for, and fans the results
/// out. Nobody waiting, no command. Final states arrive in the same call.
///
/// Clones share the poller. Its task runs on the tokio runtime that first
/// waits on it, and ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Poller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: AnyTransport,
    scheduler: AnyScheduler,
    interval: Duration,
    waiting: Mutex<HashMap<String, Vec<Waiter>>>,
    running: AtomicBool,
    polls: AtomicUsize,
    finals: AtomicUsize,
}

#[derive(Debug)]
struct Waiter {
    last: JobStatus,
    tx: oneshot::Sender<Result<JobStatus, PollError>>,
}

impl Poller {
    /// A poller that runs `scheduler`'s status command through `transport`
    /// every `interval` (at least [`MIN_INTERVAL`]).
    pub fn new(transport: AnyTransport, scheduler: AnyScheduler, interval: Duration) -> Poller {
        Poller {
            inner: Arc::new(Inner {
                transport,
                scheduler,
                interval: interval.max(MIN_INTERVAL),
                waiting: Mutex::default(),
                running: AtomicBool::new(false),
                polls: AtomicUsize::new(0),
                finals: AtomicUsize::new(0),
            }),
        }
    }

    /// The polling interval.
    pub fn interval(&self) -> Duration {
        self.inner.interval
    }

    /// How many status commands this poller has run.
    pub fn polls(&self) -> usize {
        self.inner.polls.load(Ordering::Relaxed)
    }

    /// How many final-state commands (`sacct`) this poller has run.
    pub fn final_queries(&self) -> usize {
        self.inner.finals.load(Ordering::Relaxed)
    }

    /// How many jobs someone waits for now.
    pub fn watched(&self) -> usize {
        let waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.values().filter(|w| w.iter().any(|w| !w.tx.is_closed())).count()
    }

    /// Waits until job `id`'s status differs from `last`, and returns it.
    ///
    /// # Errors
    ///
    /// [`PollError`] when the status command failed; the caller decides
    /// whether to try again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped wait is forgotten at the next tick, and a job
    /// nobody waits for is not polled.
    pub async fn wait_change(&self, id: &str, last: JobStatus) -> Result<JobStatus, PollError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.entry(id.to_owned()).or_default().push(Waiter { last, tx });
        }
        if !self.inner.running.swap(true, Ordering::AcqRel) {
            tokio::spawn(run(Arc::downgrade(&self.inner)));
        }
        rx.await.unwrap_or_else(|_| Err(PollError { message: "the poller stopped".into(), transient: true }))
    }
}

async fn run_parsed(
    inner: &Inner,
    command: &str,
    parse: impl FnOnce(&crate::scheduler::CmdOutput) -> Result<HashMap<String, JobStatus>, crate::scheduler::CommandFailed>,
) -> Result<HashMap<String, JobStatus>, PollError> {
    let out = inner.transport.run(command).await.map_err(poll_error)?;
    parse(&out).map_err(command_error)
}

/// The status of each of `ids`: one command for all, or, if the scheduler
/// refused the batch because of some of them, one command each, so that one
/// bad id does not blind the others.
async fn statuses(inner: &Inner, ids: &[&str]) -> Result<HashMap<String, JobStatus>, PollError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    inner.polls.fetch_add(1, Ordering::Relaxed);
    let out = inner.transport.run(&inner.scheduler.status(ids)).await.map_err(poll_error)?;
    if !inner.scheduler.refused_batch(&out, ids) {
        return inner.scheduler.parse_status(&out, ids).map_err(command_error);
    }
    let mut all = HashMap::new();
    for id in ids {
        inner.polls.fetch_add(1, Ordering::Relaxed);
        let one = [*id];
        let out = inner.transport.run(&inner.scheduler.status(&one)).await.map_err(poll_error)?;
        all.extend(inner.scheduler.parse_status(&out, &one).map_err(command_error)?);
    }
    Ok(all)
}

fn poll_error(e: crate::transport::TransportError) -> PollError {
    PollError { message: e.to_string(), transient: e.is_transient() }
}

fn command_error(e: crate::scheduler::CommandFailed) -> PollError {
    PollError { message: e.to_string(), transient: e.transient }
}

async fn run(weak: Weak<Inner>) {
    let interval = match weak.upgrade() {
        Some(inner) => inner.interval,
        None => return,
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let ids: Vec<String> = {
            let mut waiting = inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
            waiting.retain(|_, ws| {
                ws.retain(|w| !w.tx.is_closed());
                !ws.is_empty()
            });
            waiting.keys().cloned().collect()
        };
        if ids.is_empty() {
            continue;
        }
        // An id the scheduler could not have given (a corrupted or forged
        // checkpoint) is unknown, and never asked about: it could make the
        // whole batch fail.
        let (refs, invalid): (Vec<&str>, Vec<&str>) =
            ids.iter().map(String::as_str).partition(|id| inner.scheduler.valid_id(id));
        let mut result = statuses(&inner, &refs).await;
        // Jobs that left the queue: one more call, for all of them, where the
        // scheduler reports final states separately (`sacct`).
        if let Ok(statuses) = &mut result {
            statuses.extend(invalid.iter().map(|id| ((*id).to_owned(), JobStatus::Unknown)));
            let left: Vec<&str> =
                refs.iter().copied().filter(|id| statuses.get(*id) == Some(&JobStatus::Unknown)).collect();
            if let Some(command) = (!left.is_empty()).then(|| inner.scheduler.final_status(&left)).flatten() {
                inner.finals.fetch_add(1, Ordering::Relaxed);
                match run_parsed(&inner, &command, |out| inner.scheduler.parse_final(out, &left)).await {
                    Ok(finals) => statuses.extend(finals),
                    Err(e) => result = Err(e),
                }
            }
        }
        let mut waiting = inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(statuses) => {
                for (id, status) in statuses {
                    let Some(ws) = waiting.get_mut(&id) else { continue };
                    let mut keep = Vec::new();
                    for w in ws.drain(..) {
                        if w.last == status {
                            keep.push(w);
                        } else {
                            let _ = w.tx.send(Ok(status.clone()));
                        }
                    }
                    *ws = keep;
                }
            }
            Err(e) => {
                for (_, ws) in waiting.drain() {
                    for w in ws {
                        let _ = w.tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}
