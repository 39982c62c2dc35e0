//! Marking the awaits inside a step where a pause may interrupt it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    /// Set when the step being polled is parked inside [`interruptible`].
    static WAITING: Cell<bool> = const { Cell::new(false) };
}

/// Marks `future` as a pure wait (for a job, a pod, a child process, a timer)
/// that a pause may interrupt.
///
/// While a step of a process is parked inside `interruptible`, a pause request
/// takes effect at once: the runtime drops the step's future, runs the process's
/// [`pause`](crate::Process::pause) hook, and runs the step again from its start
/// after the resume. Elsewhere a pause waits for the step to finish. A kill
/// interrupts a step wherever it is parked.
///
/// Outside a process's step this only awaits `future`.
///
/// Wrap a whole wait, not one branch of a `join!` whose other branch does
/// work: a step counts as waiting when any `interruptible` in it is pending at
/// the end of a poll. An `interruptible` dropped while pending (a lost
/// `select!` branch, an elapsed `timeout`) clears the mark.
///
/// # Cancel safety
///
/// As cancel safe as `future`: only wrap awaits whose interruption loses nothing
/// that the step cannot redo.
///
/// ```
/// # async fn wait_for_job() {}
/// async fn step() {
///     // ... submit the job (not interruptible by a pause) ...
///     drover_core::interruptible(wait_for_job()).await;
/// }
/// ```
pub fn interruptible<F: Future>(future: F) -> Interruptible<F> {
    Interruptible { future, parked: false }
}

pin_project_lite::pin_project! {
    /// The future returned by [`interruptible`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless awaited"]
    pub struct Interruptible<F> {
        #[pin]
        future: F,
        // Whether the last poll left it pending.
        parked: bool,
    }

    impl<F> PinnedDrop for Interruptible<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped while parked (a lost `select!` branch, an elapsed
            // `timeout`): the step no longer waits here, so the mark set by
            // the last poll must not make the runtime think it does.
            if *this.project().parked {
                WAITING.with(|w| w.set(false));
            }
        }
    }
}

impl<F: Future> Future for Interruptible<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let poll = this.future.poll(cx);
        *this.parked = poll.is_pending();
        if poll.is_pending() {
            WAITING.with(|w| w.set(true));
        }
        poll
    }
}

/// Runs `poll` with the waiting mark cleared, and reports whether the polled
/// future ended parked inside [`interruptible`].
pub(crate) fn poll_marked<T>(poll: impl FnOnce() -> T) -> (T, bool) {
    let outer = WAITING.with(|w| w.replace(false));
    let out = poll();
    let waiting = WAITING.with(|w| w.replace(outer));
    (out, waiting)
}
