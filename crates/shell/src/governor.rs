//! The governor: how many children run at once, and whether memory allows one more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admits shell processes' children, so that thousands of queued processes
/// never drain the machine or starve the engine.
///
/// - At most `max_running` children run at once (default: the number of CPUs).
///   The others wait in FIFO order, holding neither a child nor a pipe.
/// - Optionally, no new child starts while the machine's available memory
///   (`MemAvailable` in `/proc/meminfo`) is under a threshold.
///
/// A paused child (stopped with `SIGSTOP`) still holds its slot: it keeps its
/// memory and resumes at once. A queued process that is paused leaves the queue
/// and joins its end again when resumed; a killed queued process never starts.
///
/// Cloning is cheap and shares the governor: give every shell process of an
/// engine the same one. It is `Send + Sync`, for processes on a
/// [`Pool`](drover_core::Pool).
#[derive(Clone, Debug)]
pub struct Governor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Arc<Semaphore>,
    max_running: usize,
    min_available_memory: Option<u64>,
    memory_poll: Duration,
    waiting: AtomicUsize,
}

/// A running child's place in the governor; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Default for Governor {
    fn default() -> Self {
        Governor::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Governor {
    /// A governor that runs at most `max_running` children at once (at least one).
    pub fn new(max_running: usize) -> Governor {
        Governor::build(max_running.max(1), None)
    }

    /// The same limit, and no new child while available memory is under
    /// `min_available_bytes`; memory is checked again every 200 ms while low.
    pub fn with_memory_guard(max_running: usize, min_available_bytes: u64) -> Governor {
        Governor::build(max_running.max(1), Some(min_available_bytes))
    }

    fn build(max_running: usize, min_available_memory: Option<u64>) -> Governor {
        Governor {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max_running)),
                max_running,
                min_available_memory,
                memory_poll: Duration::from_millis(200),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// How many children may run at once.
    pub fn max_running(&self) -> usize {
        self.inner.max_running
    }

    /// How many children hold a slot now (running or paused).
    pub fn running(&self) -> usize {
        self.inner.max_running - self.inner.slots.available_permits()
    }

    /// How many processes wait for a slot now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a slot, in FIFO order, then for memory.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future gives up the place in the queue.
    pub(crate) async fn acquire(&self) -> Slot {
        let _waiting = Waiting::new(&self.inner.waiting);
        let permit = self.inner.slots.clone().acquire_owned().await.expect("the governor's semaphore is never closed");
        if let Some(min) = self.inner.min_available_memory {
            while available_memory().is_some_and(|available| available < min) {
                tokio::time::sleep(self.inner.memory_poll).await;
            }
        }
        Slot { _permit: permit }
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Governor {
    /// A slot outside the limit, for a child that already runs (a re-attached
    /// one being killed): it must not wait behind the queue.
    pub(crate) fn unlimited_slot(&self) -> Slot {
        Slot { _permit: Arc::new(Semaphore::new(1)).try_acquire_owned().expect("a fresh semaphore has a permit") }
    }
}

/// `MemAvailable` in bytes, or `None` where `/proc/meminfo` cannot tell.
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
