//! The control block shared by a process's driver and its handler.
//!
//! Handlers write requests (nudge, pause, resume, kill) into [`Ctl`] and wake the
//! driver; the driver acts on them at safe points and records what took effect.
//! The block is the only thing shared between threads: the process itself stays
//! on its driver's thread.

use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Waker};

use tokio::sync::{Notify, watch};

use crate::{DriveMode, Error};

/// How a process ended.
#[derive(Clone, Debug)]
pub(crate) enum End {
    /// It reached a terminal state by advancing.
    Done,
    /// A kill took effect.
    Killed,
    /// It panicked.
    Panicked(String),
    /// Its driver was dropped before it ended.
    Aborted,
}

impl End {
    /// The error a control call reports once the process has ended this way.
    pub(crate) fn error(&self) -> Error {
        match self {
            End::Done | End::Killed => Error::Finished,
            End::Panicked(msg) => Error::Panicked(msg.clone()),
            End::Aborted => Error::Aborted,
        }
    }
}

/// The latest published state. A `watch` channel costs a few hundred bytes and
/// a wake-up sweep per change, so it is made only when someone subscribes.
pub(crate) enum Slot<S> {
    Plain(S),
    Watched(watch::Sender<S>),
    /// Dropped: the driver has ended and the handler is gone, so nobody reads
    /// it again (see `Shared::detach`).
    Gone,
}

pub(crate) struct Ctl<S, O> {
    pub(crate) slot: Slot<S>,
    /// A nudge is pending: sent, not yet taken by the driver.
    pub(crate) nudge: bool,
    /// `FireAndForget` only: the first nudge was taken.
    pub(crate) launched: bool,
    /// What handlers asked for: paused or not.
    pub(crate) want_paused: bool,
    /// What took effect: the process is paused.
    pub(crate) paused: bool,
    /// The pause hook is running.
    pub(crate) pausing: bool,
    /// The resume hook is running.
    pub(crate) resuming: bool,
    /// A kill was requested.
    pub(crate) kill: bool,
    /// How many times the process entered the paused phase.
    pub(crate) pauses: u64,
    /// Set once, when the driver ends.
    pub(crate) end: Option<End>,
    /// What the driver hands back at the end, taken by `join`.
    pub(crate) output: Option<O>,
    /// The driver's waker while it waits for a request.
    pub(crate) driver: Option<Waker>,
    /// Handler calls waiting on `Shared::changed`.
    pub(crate) waiters: u32,
    /// The handler was dropped.
    pub(crate) detached: bool,
}

pub(crate) struct Shared<S, O> {
    pub(crate) mode: DriveMode,
    ctl: Mutex<Ctl<S, O>>,
    /// Wakes handler calls that wait for an effect (nudge taken, paused, ended).
    changed: Notify,
}

impl<S: Clone, O> Shared<S, O> {
    pub(crate) fn new(mode: DriveMode, state: S, paused: bool) -> Self {
        Shared {
            mode,
            ctl: Mutex::new(Ctl {
                slot: Slot::Plain(state),
                nudge: false,
                launched: false,
                want_paused: paused,
                paused,
                pausing: false,
                resuming: false,
                kill: false,
                pauses: 0,
                end: None,
                output: None,
                driver: None,
                waiters: 0,
                detached: false,
            }),
            changed: Notify::new(),
        }
    }

    /// Releases `ctl` and wakes the handler calls waiting for an effect.
    pub(crate) fn notify(&self, ctl: MutexGuard<'_, Ctl<S, O>>) {
        let any = ctl.waiters > 0;
        drop(ctl);
        if any {
            self.changed.notify_waiters();
        }
    }

    /// Releases `ctl` and wakes the driver.
    pub(crate) fn wake_driver(&self, mut ctl: MutexGuard<'_, Ctl<S, O>>) {
        let waker = ctl.driver.take();
        drop(ctl);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits until `check` returns `Some`, re-checking after every change the
    /// driver (or another handler call) announces.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves no registration behind.
    pub(crate) async fn wait_for<R>(&self, mut check: impl FnMut(&mut Ctl<S, O>) -> Option<R>) -> R {
        // Fast path: no registration when the answer is already there.
        if let Some(r) = check(&mut self.lock()) {
            return r;
        }
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let mut ctl = self.lock();
                if let Some(r) = check(&mut ctl) {
                    return r;
                }
                ctl.waiters += 1;
            }
            let _waiting = Waiting(self);
            notified.await;
        }
    }

    /// Publishes a new state.
    pub(crate) fn publish(ctl: &mut Ctl<S, O>, state: S) {
        match &mut ctl.slot {
            Slot::Plain(current) => *current = state,
            Slot::Watched(tx) => {
                tx.send_replace(state);
            }
            // Only after the end, when nothing is published.
            Slot::Gone => {}
        }
    }

    /// The latest published state.
    pub(crate) fn state(&self) -> S {
        match &self.lock().slot {
            Slot::Plain(state) => state.clone(),
            Slot::Watched(tx) => tx.borrow().clone(),
            Slot::Gone => unreachable!("the state is read by the handler, or by the driver before it ends"),
        }
    }

    /// A receiver of every state published from now on. After the end, the
    /// receiver holds the final state and its sender is gone.
    pub(crate) fn subscribe(&self) -> watch::Receiver<S> {
        let mut ctl = self.lock();
        match &ctl.slot {
            Slot::Watched(tx) => tx.subscribe(),
            Slot::Gone => unreachable!("only the handler subscribes"),
            Slot::Plain(state) => {
                let (tx, rx) = watch::channel(state.clone());
                if ctl.end.is_none() {
                    ctl.slot = Slot::Watched(tx);
                }
                rx
            }
        }
    }

    /// Publishes the final state (if there is a new one), records how the
    /// driver ended, and closes the state channel, so that watchers see the end.
    pub(crate) fn close(&self, end: End, output: Option<O>, last: Option<S>) {
        let mut ctl = self.lock();
        if ctl.end.is_some() {
            return;
        }
        ctl.end = Some(end);
        ctl.output = output;
        ctl.driver = None;
        let last = match (&ctl.slot, last) {
            (Slot::Plain(_) | Slot::Gone, None) => None,
            (Slot::Plain(_) | Slot::Gone, Some(last)) => Some(last),
            (Slot::Watched(tx), Some(last)) => {
                tx.send_replace(last.clone());
                Some(last)
            }
            (Slot::Watched(tx), None) => Some(tx.borrow().clone()),
        };
        if let Some(last) = last {
            // Dropping a sender tells every receiver that no state follows.
            ctl.slot = Slot::Plain(last);
        }
        let left = ctl.detached.then(|| Self::take_contents(&mut ctl));
        self.notify(ctl);
        drop(left);
    }

    /// Registers the driver's waker, unless the same one is registered already.
    pub(crate) fn register(ctl: &mut Ctl<S, O>, cx: &Context<'_>) {
        match &ctl.driver {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => ctl.driver = Some(cx.waker().clone()),
        }
    }
}

impl<S, O> Shared<S, O> {
    /// Locks the control block. No user code runs under this lock, so a panic
    /// cannot poison it; if one did, the data is still consistent.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ctl<S, O>> {
        self.ctl.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The handler is gone. Once the driver has ended too, nobody reads the
    /// states or the output again: the last of the two drops them, on its own
    /// thread, so that the control block's memory, which a waker may free on
    /// any thread, holds nothing of them.
    pub(crate) fn detach(&self) {
        let mut ctl = self.lock();
        ctl.detached = true;
        let left = ctl.end.is_some().then(|| Self::take_contents(&mut ctl));
        drop(ctl);
        // Dropped outside the lock: an output's destructor is process code.
        drop(left);
    }

    fn take_contents(ctl: &mut Ctl<S, O>) -> (Slot<S>, Option<O>) {
        (std::mem::replace(&mut ctl.slot, Slot::Gone), ctl.output.take())
    }
}

/// Counts a handler call as waiting while it awaits `Shared::changed`.
struct Waiting<'a, S: Clone, O>(&'a Shared<S, O>);

impl<S: Clone, O> Drop for Waiting<'_, S, O> {
    fn drop(&mut self) {
        self.0.lock().waiters -= 1;
    }
}
