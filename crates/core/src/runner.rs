//! The runner: one tokio task per `LocalSet` that polls the drivers of the
//! processes spawned on it.
//!
//! A process spawned on a `LocalSet` is one allocation, a [`Node`]: its control
//! block and its driver future side by side in one `Arc`, woken through that
//! `Arc`. A tokio task per process would be a second allocation beside the
//! control block, and tokio pads every task to 128 bytes and allocates it
//! aligned to 128, which glibc pays for with about 176 bytes of fragments per
//! task on a cold heap.
//!
//! The runner owns every node whose driver has not ended. It polls drivers only
//! on its own thread, and when its task is dropped (with its `LocalSet` or its
//! runtime) it drops every driver still running there, on that thread: their
//! guards close them as aborted, as a dropped tokio task would. Its task ends
//! once no process is left, so that a `LocalSet` awaited to its end completes;
//! the next spawn starts a new runner.

// The one place of the runtime that needs `unsafe`: a node is woken from any
// thread, but its driver and its process stay on the runner's thread.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use tokio::task::LocalSet;

use crate::driver::AbortGuard;
use crate::shared::{End, Shared};

/// A process's control block and, beside it, its driver (`L`).
pub(crate) struct Node<S, O, L: ?Sized> {
    shared: Shared<S, O>,
    /// Where a wake-up sends the node; `None` when its driver runs elsewhere
    /// (as a tokio task of a pool worker).
    queue: Option<Arc<Queue>>,
    /// The node is in its runner's queue.
    queued: AtomicBool,
    /// Its place among its runner's live nodes.
    index: AtomicUsize,
    /// The driver: touched only on the runner's thread.
    driver: RefCell<L>,
}

/// A node whose driver's type is erased: what handlers and guards hold.
pub(crate) type Block<S, O> = Node<S, O, dyn Erased>;

/// Any driver; erases its type.
pub(crate) trait Erased {}

impl<S, O, L: ?Sized> Deref for Node<S, O, L> {
    type Target = Shared<S, O>;

    fn deref(&self) -> &Shared<S, O> {
        &self.shared
    }
}

// SAFETY: what other threads touch is `Sync`: the control block's mutex and
// `Notify` (and, for handlers, the states and the output, which a handler
// reaches only when `S` and `O` let it leave the thread: its own `Send` and
// `Sync` follow `Shared<S, O>`'s), the queue behind its mutex, and the atomics.
// The driver, and with it the process, is polled and dropped only by the runner
// on its own thread (`Task::run`, `Task::abort`, `Runner::drop`), which owns
// the node until the driver has been dropped in place (`Lazy::Done`). What may
// be dropped on another thread with the last `Arc` (a waker's) is then a spent
// driver and a control block whose states and output the last of its driver
// and its handler has dropped already (`Shared::close`, `Shared::detach`).
unsafe impl<S, O, L: ?Sized> Send for Node<S, O, L> {}
// SAFETY: as for `Send`.
unsafe impl<S, O, L: ?Sized> Sync for Node<S, O, L> {}

/// What makes a driver, from the guard of its node.
pub(crate) trait Start<S: Clone, O>: 'static {
    type Driver: Future<Output = ()> + 'static;
    fn start(self, guard: AbortGuard<S, O>) -> Self::Driver;
}

impl<S: Clone, O, C, F> Start<S, O> for C
where
    C: FnOnce(AbortGuard<S, O>) -> F + 'static,
    F: Future<Output = ()> + 'static,
{
    type Driver = F;

    fn start(self, guard: AbortGuard<S, O>) -> F {
        self(guard)
    }
}

/// A driver not yet started, running, or dropped.
enum Lazy<S: Clone, O, C: Start<S, O>> {
    /// Not polled yet: it is made at its first poll from what it needs, the
    /// node among it.
    Start(Option<C>),
    Running(C::Driver),
    Done,
}

impl<S: Clone, O, C: Start<S, O>> Erased for Lazy<S, O, C> {}

/// A driver that runs as a tokio task of its own: a pool worker's.
pub(crate) struct Elsewhere;

impl Erased for Elsewhere {}

/// Makes a control block whose driver runs elsewhere, as a tokio task that
/// holds the returned node's [`AbortGuard`].
pub(crate) fn detached<S: 'static, O: 'static>(shared: Shared<S, O>) -> Arc<Block<S, O>> {
    Arc::new(Node {
        shared,
        queue: None,
        queued: AtomicBool::new(false),
        index: AtomicUsize::new(0),
        driver: RefCell::new(Elsewhere),
    })
}

/// Spawns a driver on `local`'s runner: `make` makes it, from the guard of its
/// node, at its first poll. Returns the node.
pub(crate) fn spawn<S: Clone + 'static, O: 'static>(
    local: &LocalSet,
    shared: Shared<S, O>,
    make: impl Start<S, O>,
) -> Arc<Block<S, O>> {
    let runner = Runner::of(local);
    let node = Arc::new(Node {
        shared,
        queue: Some(runner.queue.clone()),
        queued: AtomicBool::new(true),
        index: AtomicUsize::new(0),
        driver: RefCell::new(Lazy::Start(Some(make))),
    });
    let index = runner.live.borrow_mut().insert(node.clone());
    node.index.store(index, Ordering::Relaxed);
    runner.queue.push(node.clone());
    // If the runner's task is gone already (its `LocalSet` is shutting down),
    // dropping the last `Rc` drops the runner, which aborts the process.
    drop(runner);
    node
}

/// A node, from the side of its runner; woken from any thread.
trait Task: Send + Sync {
    /// Polls the driver once. `true` when it has just ended.
    fn run(self: Arc<Self>) -> bool;
    /// Drops the driver in place, as a dropped tokio task drops its future.
    fn abort(&self);
    fn index(&self) -> usize;
}

impl<S: Clone + 'static, O: 'static, C: Start<S, O>> Task for Node<S, O, Lazy<S, O, C>> {
    fn run(self: Arc<Self>) -> bool {
        // Cleared first: a wake-up while the driver runs queues it again.
        self.queued.store(false, Ordering::SeqCst);
        let Ok(mut driver) = self.driver.try_borrow_mut() else {
            return false;
        };
        if let Lazy::Start(make) = &mut *driver {
            let Some(make) = make.take() else {
                return false;
            };
            let block: Arc<Block<S, O>> = self.clone();
            *driver = Lazy::Running(make.start(AbortGuard(block)));
        }
        let Lazy::Running(future) = &mut *driver else {
            return false;
        };
        // SAFETY: the future lives inside the node, in an `Arc`, and never
        // moves: it is dropped in place (`*driver = Lazy::Done`) before the
        // node is freed, since the runner holds the node until then.
        let future = unsafe { Pin::new_unchecked(future) };
        let waker = Waker::from(self.clone());
        if future.poll(&mut Context::from_waker(&waker)).is_pending() {
            return false;
        }
        *driver = Lazy::Done;
        true
    }

    fn abort(&self) {
        let Ok(mut driver) = self.driver.try_borrow_mut() else {
            return;
        };
        let make = match &mut *driver {
            Lazy::Start(make) => make.take(),
            // Dropping a running driver drops its guard, which closes the
            // block even if a destructor before it panics.
            Lazy::Running(_) | Lazy::Done => None,
        };
        let started = matches!(*driver, Lazy::Running(_));
        *driver = Lazy::Done;
        drop(driver);
        if !started {
            // Not started: no guard yet. The block is closed even if the
            // process's destructor panics, as a guard would close it.
            let dropped = catch_unwind(AssertUnwindSafe(|| drop(make)));
            self.shared.close(End::Aborted, None, None);
            if let Err(panic) = dropped {
                resume_unwind(panic);
            }
        }
    }

    fn index(&self) -> usize {
        self.index.load(Ordering::Relaxed)
    }
}

impl<S: Clone + 'static, O: 'static, C: Start<S, O>> Wake for Node<S, O, Lazy<S, O, C>> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(queue) = &self.queue
            && !self.queued.swap(true, Ordering::SeqCst)
        {
            queue.push(self.clone());
        }
    }
}

/// The nodes ready to be polled, pushed from any thread.
pub(crate) struct Queue(Mutex<Ready>);

struct Ready {
    nodes: VecDeque<Arc<dyn Task>>,
    /// The runner's task, while it waits for a node.
    runner: Option<Waker>,
    /// The runner is gone: nothing will poll a node again.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Ready> {
        // No code of a process runs under this lock.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, node: Arc<dyn Task>) {
        let mut ready = self.lock();
        if ready.closed {
            drop(ready);
            return;
        }
        ready.nodes.push_back(node);
        let runner = ready.runner.take();
        drop(ready);
        if let Some(runner) = runner {
            runner.wake();
        }
    }

    /// The next ready node, or `None` after registering `waker` to be woken
    /// when there is one.
    fn pop(&self, waker: &Waker) -> Option<Arc<dyn Task>> {
        let mut ready = self.lock();
        let node = ready.nodes.pop_front();
        if node.is_none() {
            if !ready.runner.as_ref().is_some_and(|r| r.will_wake(waker)) {
                ready.runner = Some(waker.clone());
            }
            // A burst of spawns (a million at once) leaves no buffer behind.
            ready.nodes.shrink_to(KEEP);
        }
        node
    }
}

/// The live nodes of a runner: a slab.
#[derive(Default)]
struct Live {
    nodes: Vec<Option<Arc<dyn Task>>>,
    free: Vec<usize>,
}

impl Live {
    fn insert(&mut self, node: Arc<dyn Task>) -> usize {
        match self.free.pop() {
            Some(index) => {
                self.nodes[index] = Some(node);
                index
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        }
    }

    fn remove(&mut self, index: usize) -> Option<Arc<dyn Task>> {
        let node = self.nodes.get_mut(index)?.take();
        if node.is_some() {
            self.free.push(index);
        }
        node
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.nodes.len()
    }
}

/// The runner of one `LocalSet`, shared by its task and, briefly, by `spawn`.
struct Runner {
    local: tokio::runtime::Id,
    queue: Arc<Queue>,
    live: RefCell<Live>,
    /// A runner never leaves its thread.
    _local: PhantomData<Rc<()>>,
}

thread_local! {
    /// The runners of this thread's `LocalSet`s, by `LocalSet` id (unique in
    /// the process).
    static RUNNERS: RefCell<Vec<Weak<Runner>>> = const { RefCell::new(Vec::new()) };
}

/// How many ready nodes the queue keeps room for when it is empty.
const KEEP: usize = 1024;

/// How many drivers the runner polls before it lets the other tasks of its
/// `LocalSet` run.
const BATCH: usize = 128;

impl Runner {
    /// The runner of `local`, started on first use.
    fn of(local: &LocalSet) -> Rc<Runner> {
        let id = local.id();
        RUNNERS.with_borrow_mut(|runners| {
            if let Some(runner) = runners.iter().filter_map(Weak::upgrade).find(|r| r.local == id) {
                return runner;
            }
            runners.retain(|r| r.strong_count() > 0);
            let runner = Rc::new(Runner {
                local: id,
                queue: Arc::new(Queue(Mutex::new(Ready { nodes: VecDeque::new(), runner: None, closed: false }))),
                live: RefCell::new(Live::default()),
                _local: PhantomData,
            });
            runners.push(Rc::downgrade(&runner));
            drop(local.spawn_local(RunnerTask(runner.clone())));
            runner
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let ready = {
            let mut ready = self.queue.lock();
            ready.closed = true;
            ready.runner = None;
            std::mem::take(&mut ready.nodes)
        };
        drop(ready);
        let live = std::mem::take(self.live.get_mut());
        for node in live.nodes.into_iter().flatten() {
            // A process's destructor that panics must not keep the others' from running.
            let _ = catch_unwind(AssertUnwindSafe(|| node.abort()));
        }
    }
}

/// The runner's tokio task.
struct RunnerTask(Rc<Runner>);

impl Future for RunnerTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let runner = &*self.0;
        for _ in 0..BATCH {
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
            let Some(node) = runner.queue.pop(cx.waker()) else {
                // No process left: the task ends, as the processes' own tasks
                // would have, so that an awaited `LocalSet` completes. The next
                // spawn starts a new runner.
                if runner.live.borrow().is_empty() {
                    return Poll::Ready(());
                }
                return Poll::Pending;
            };
            let index = node.index();
            // The driver catches the panics of process code; this keeps a
            // panic outside them (a destructor's) to its own process.
            let ended = catch_unwind(AssertUnwindSafe(|| node.clone().run())).unwrap_or_else(|_| {
                let _ = catch_unwind(AssertUnwindSafe(|| node.abort()));
                true
            });
            drop(node);
            if ended {
                let removed = runner.live.borrow_mut().remove(index);
                drop(removed);
            }
        }
        // More may be ready: let the other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
