//! Errors of the control interface.

/// Why a control call on a [`ProcessHandler`](crate::ProcessHandler) failed, or
/// how a process ended other than normally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The process has already ended, so it can no longer be controlled.
    #[error("the process has already ended")]
    Finished,
    /// [`try_nudge`](crate::ProcessHandler::try_nudge) found a nudge still pending.
    #[error("a nudge is already pending")]
    NudgePending,
    /// A resume cancelled this pause request before it took effect.
    #[error("the pause was cancelled by a resume before it took effect")]
    Resumed,
    /// The process panicked; it ended, and no other process was affected.
    #[error("the process panicked: {0}")]
    Panicked(String),
    /// The process was dropped before it ended, because its `LocalSet`, runtime
    /// or pool was shut down.
    #[error("the process was dropped before it ended (its runtime shut down)")]
    Aborted,
}
