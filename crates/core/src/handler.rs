//! The handle through which user code launches, steps, pauses, resumes, kills and
//! watches a spawned process.

use std::marker::PhantomData;
use std::sync::Arc;

use tokio::sync::watch;

use crate::runner::Block;
use crate::shared::{End, Shared};
use crate::{DriveMode, Error, State};

/// Controls one spawned process and watches its state.
///
/// Returned by [`spawn`](crate::spawn), [`spawn_owned`](crate::spawn_owned) and
/// [`Pool::spawn`](crate::Pool::spawn). `O` is what [`join`](Self::join) hands
/// back at the end: `()` for a process shared as `Rc<Mutex<P>>`, the process
/// itself for an owned one.
///
/// The handler holds no reference to the process, only to its control block,
/// so it is `Send + Sync` whenever `S` is `Send + Sync` and `O` is `Send`, and can be moved to
/// other tasks and threads than the one the process runs on. The control block
/// shares one allocation with the process's driver, which lives until both the
/// process has ended and the handler is gone.
///
/// Every control call on a process that has ended returns an error at once.
///
/// # Drop
///
/// Dropping the handler detaches the process: it runs on as before. A
/// `FireAndForget` process that was never nudged then never starts, and is
/// dropped with its `LocalSet`.
pub struct ProcessHandler<S, O = ()> {
    /// The control block, beside the driver in one allocation.
    shared: Arc<Block<S, O>>,
    /// `Send` and `Sync` as the control block's contents allow.
    _contents: PhantomData<Arc<Shared<S, O>>>,
}

impl<S, O> Drop for ProcessHandler<S, O> {
    fn drop(&mut self) {
        self.shared.detach();
    }
}

impl<S, O> std::fmt::Debug for ProcessHandler<S, O>
where
    S: State,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandler")
            .field("mode", &self.shared.mode)
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

impl<S: State, O> ProcessHandler<S, O> {
    pub(crate) fn new(shared: Arc<Block<S, O>>) -> Self {
        ProcessHandler { shared, _contents: PhantomData }
    }

    /// Waits until the process has ended, however it ended.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future detaches the process, as dropping the handler does.
    pub async fn until_completion(self) {
        let _ = self.join().await;
    }

    /// Waits until the process has ended and hands back its output: `()` for a
    /// process shared as `Rc<Mutex<P>>`, the process itself for an owned one.
    ///
    /// # Errors
    ///
    /// [`Error::Panicked`] if the process panicked, [`Error::Aborted`] if it was
    /// dropped with its runtime before it ended. A killed process is not an error:
    /// its state says it was killed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future detaches the process, as dropping the handler does.
    pub async fn join(self) -> Result<O, Error> {
        self.shared
            .wait_for(|ctl| {
                let end = ctl.end.as_ref()?;
                Some(match (end, ctl.output.take()) {
                    (End::Done | End::Killed, Some(output)) => Ok(output),
                    (end, _) => Err(end.error()),
                })
            })
            .await
    }

    /// Waits until the process has ended, without taking the handler: for
    /// code that keeps controlling or watching other processes by handler.
    /// The final state is then [`state`](Self::state).
    ///
    /// # Errors
    ///
    /// As [`join`](Self::join): [`Error::Panicked`], [`Error::Aborted`].
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future changes nothing.
    pub async fn ended(&self) -> Result<(), Error> {
        self.shared
            .wait_for(|ctl| {
                Some(match ctl.end.as_ref()? {
                    End::Done | End::Killed => Ok(()),
                    end => Err(end.error()),
                })
            })
            .await
    }

    /// Nudges the process without waiting: launches a `FireAndForget` process,
    /// or allows one more step of a `Step` process.
    ///
    /// # Errors
    ///
    /// [`Error::NudgePending`] while an earlier nudge has not been taken yet,
    /// [`Error::Finished`] (or how it ended) once the process has ended.
    pub fn try_nudge(&self) -> Result<(), Error> {
        let mut ctl = self.shared.lock();
        if let Some(end) = &ctl.end {
            return Err(end.error());
        }
        if ctl.launched {
            return Ok(());
        }
        if ctl.nudge {
            return Err(Error::NudgePending);
        }
        ctl.nudge = true;
        self.shared.wake_driver(ctl);
        Ok(())
    }

    /// Nudges the process, first waiting for an earlier nudge to be taken.
    ///
    /// # Errors
    ///
    /// [`Error::Finished`] (or how it ended) once the process has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, no nudge was sent.
    pub async fn nudge(&self) -> Result<(), Error> {
        let woke = self
            .shared
            .wait_for(|ctl| {
                if let Some(end) = &ctl.end {
                    return Some(Err(end.error()));
                }
                if ctl.launched {
                    return Some(Ok(None));
                }
                if ctl.nudge {
                    return None;
                }
                ctl.nudge = true;
                Some(Ok(ctl.driver.take()))
            })
            .await?;
        if let Some(waker) = woke {
            waker.wake();
        }
        Ok(())
    }

    /// Asks the process to pause, and waits until it is paused.
    ///
    /// The pause takes effect at the next safe point: between two steps, or at
    /// once if the current step waits inside [`interruptible`](crate::interruptible)
    /// (a job, a pod, a child process). The interrupted step runs again after the
    /// resume. The process's [`pause`](crate::Process::pause) hook runs once per
    /// pause that takes effect; pausing a paused process does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Resumed`] if a [`resume`](Self::resume) cancelled the request
    /// before it took effect; [`Error::Finished`] (or how it ended) if the process
    /// ended first.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not withdraw the request: the process still pauses.
    pub async fn pause(&self) -> Result<(), Error> {
        let before = {
            let mut ctl = self.shared.lock();
            if let Some(end) = &ctl.end {
                return Err(end.error());
            }
            if ctl.paused && !ctl.resuming {
                ctl.want_paused = true;
                return Ok(());
            }
            // (While the resume hook runs, the process is about to un-pause:
            // this pause will take effect after it.)
            let before = ctl.pauses;
            if !ctl.want_paused {
                ctl.want_paused = true;
                self.shared.wake_driver(ctl);
            }
            before
        };
        self.shared
            .wait_for(|ctl| {
                if ctl.pauses > before {
                    Some(Ok(()))
                } else if let Some(end) = &ctl.end {
                    Some(Err(end.error()))
                } else if !ctl.want_paused && !ctl.pausing {
                    Some(Err(Error::Resumed))
                } else {
                    None
                }
            })
            .await
    }

    /// Resumes a paused process where it stopped, or cancels a pause that has
    /// not taken effect yet. The process's [`resume`](crate::Process::resume)
    /// hook runs before it advances again. On a process that is neither paused nor
    /// pausing this does nothing and leaves nothing behind: a later pause still
    /// pauses.
    ///
    /// # Errors
    ///
    /// [`Error::Finished`] (or how it ended) once the process has ended.
    pub fn resume(&self) -> Result<(), Error> {
        let mut ctl = self.shared.lock();
        if let Some(end) = &ctl.end {
            return Err(end.error());
        }
        if !ctl.want_paused {
            return Ok(());
        }
        ctl.want_paused = false;
        if ctl.paused || ctl.pausing {
            // Paused, or the pause hook runs: the process resumes after it.
            self.shared.wake_driver(ctl);
        } else {
            // A pause that had not taken effect: tell its waiters it was cancelled.
            self.shared.notify(ctl);
        }
        Ok(())
    }

    /// Kills the process and waits until it has ended.
    ///
    /// Works from every point before the end: before launch, while paused, and
    /// in the middle of a step, which is interrupted at once however long it
    /// would still wait. The process's [`kill`](crate::Process::kill) hook runs
    /// exactly once, then the process ends.
    ///
    /// # Errors
    ///
    /// [`Error::Finished`] if the process ended before the kill took effect,
    /// [`Error::Panicked`] if it panicked (in its kill hook or before).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not withdraw the request: the process is still killed.
    pub async fn kill(&self) -> Result<(), Error> {
        {
            let mut ctl = self.shared.lock();
            if let Some(end) = &ctl.end {
                return Err(end.error());
            }
            ctl.kill = true;
            self.shared.wake_driver(ctl);
        }
        self.shared
            .wait_for(|ctl| match ctl.end.as_ref()? {
                End::Killed => Some(Ok(())),
                end => Some(Err(end.error())),
            })
            .await
    }

    /// Whether the process has ended.
    pub fn is_done(&self) -> bool {
        self.shared.lock().end.is_some()
    }

    /// Whether a pause has taken effect and no resume has yet.
    pub fn is_paused(&self) -> bool {
        let ctl = self.shared.lock();
        ctl.paused && ctl.end.is_none()
    }

    /// The latest state the process published: its real state from the start,
    /// then the state after every step, pause, resume and kill.
    pub fn state(&self) -> S {
        self.shared.state()
    }

    /// A receiver that sees every state published from now on.
    /// [`changed`](watch::Receiver::changed) returns an error once the process
    /// has ended and its final state was published.
    pub fn subscribe(&self) -> watch::Receiver<S> {
        self.shared.subscribe()
    }

    /// How this process is driven.
    pub fn mode(&self) -> DriveMode {
        self.shared.mode
    }
}
