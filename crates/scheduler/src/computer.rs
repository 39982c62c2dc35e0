//! A computer: where scheduler jobs run, and what its processes share.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::poller::Poller;
use crate::retry::RetryPolicy;
use crate::scheduler::{AnyScheduler, JobStatus, Scheduler};
use crate::transport::{AnyTransport, Transport, TransportError};

/// A computer and everything its processes share: one transport (one SSH
/// connection), its scheduler, one status poller, one background canceller.
#[derive(Debug)]
pub struct Computer {
    /// Its name, for messages.
    pub name: String,
    /// How commands and files reach it.
    pub transport: AnyTransport,
    /// Its batch system.
    pub scheduler: AnyScheduler,
    /// The remote directory under which each job gets its own work directory
    /// (relative to the login directory unless absolute).
    pub work_root: String,
    /// How transport and scheduler failures are retried.
    pub retry: RetryPolicy,
    /// How long a kill waits for the scheduler to confirm a cancel before it
    /// leaves the cancel to the background canceller.
    pub kill_timeout: Duration,
    poller: Poller,
    canceller: Canceller,
}

impl Computer {
    /// A computer polled every `interval` (at least [`crate::MIN_INTERVAL`]).
    pub fn new(
        name: impl Into<String>,
        transport: AnyTransport,
        scheduler: AnyScheduler,
        work_root: impl Into<String>,
        interval: Duration,
    ) -> Arc<Computer> {
        let poller = Poller::new(transport.clone(), scheduler.clone(), interval);
        let canceller = Canceller::new(transport.clone(), scheduler.clone());
        Arc::new(Computer {
            name: name.into(),
            transport,
            scheduler,
            work_root: work_root.into(),
            retry: RetryPolicy::default(),
            kill_timeout: Duration::from_secs(20),
            poller,
            canceller,
        })
    }

    /// The same computer with another retry policy.
    pub fn with_retry(mut self: Arc<Self>, retry: RetryPolicy) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("set the retry policy before sharing the computer").retry = retry;
        self
    }

    /// Its status poller.
    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    /// Its background canceller.
    pub fn canceller(&self) -> &Canceller {
        &self.canceller
    }

    /// A job's work directory.
    pub fn work_dir(&self, id: &str) -> String {
        format!("{}/{id}", self.work_root.trim_end_matches('/'))
    }
}

/// Cancels jobs whose kill could not reach the computer, in the background,
/// until the scheduler confirms each one: nothing is left running.
#[derive(Clone, Debug)]
pub struct Canceller {
    inner: Arc<CancellerInner>,
}

#[derive(Debug)]
struct CancellerInner {
    transport: AnyTransport,
    scheduler: AnyScheduler,
    pending: Mutex<HashSet<String>>,
}

impl Canceller {
    fn new(transport: AnyTransport, scheduler: AnyScheduler) -> Canceller {
        Canceller { inner: Arc::new(CancellerInner { transport, scheduler, pending: Mutex::default() }) }
    }

    /// Job ids whose cancel is not confirmed yet.
    pub fn pending(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        ids.sort();
        ids
    }

    /// Keeps trying to cancel job `id` until the scheduler confirms it, with
    /// backoff from 1 s up to one minute.
    pub fn cancel_in_background(&self, id: String) {
        let first = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone());
        if !first {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                if matches!(cancel_and_confirm(&inner.transport, &inner.scheduler, &id).await, Ok(true)) {
                    inner.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        });
    }
}

/// Cancels job `id` and checks with the scheduler that it left the queue.
/// `Ok(false)`: the cancel was sent but the job still shows.
pub(crate) async fn cancel_and_confirm(
    transport: &AnyTransport,
    scheduler: &AnyScheduler,
    id: &str,
) -> Result<bool, TransportError> {
    let out = transport.run(&scheduler.cancel(id)).await?;
    if scheduler.parse_cancel(&out).is_err() {
        return Ok(false);
    }
    for _ in 0..20 {
        let out = transport.run(&scheduler.status(&[id])).await?;
        match scheduler.parse_status(&out, &[id]).ok().and_then(|m| m.get(id).cloned()) {
            Some(JobStatus::Done(_) | JobStatus::Unknown) => return Ok(true),
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    Ok(false)
}
