//! Retrying transport and scheduler failures with exponential backoff.

use std::future::Future;

use crate::poller::PollError;
use crate::scheduler::CommandFailed;
use crate::transport::TransportError;

/// How failures that may pass (an unreachable computer, a scheduler that did
/// not answer) are retried; after the last try the process pauses itself with
/// the error recorded, and resuming it tries again. The runtime's own policy,
/// shared by every process kind.
pub use drover_core::RetryPolicy;

/// A failed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) transient: bool,
    /// The scheduler accepted the job (see [`CommandFailed::accepted`]): its
    /// work directory must stay.
    pub(crate) accepted: bool,
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        Failure { transient: e.is_transient(), message: e.to_string(), accepted: false }
    }
}

impl From<CommandFailed> for Failure {
    fn from(e: CommandFailed) -> Self {
        Failure { transient: e.transient, message: e.message, accepted: e.accepted }
    }
}

impl From<PollError> for Failure {
    fn from(e: PollError) -> Self {
        Failure { transient: e.transient, message: e.message, accepted: false }
    }
}

/// Runs `op` as [`drover_core::retrying`] does, retrying transient failures,
/// each said as a warning (an unreachable computer is said while it lasts).
pub(crate) async fn retrying<T, Fut>(policy: RetryPolicy, mut op: impl FnMut() -> Fut) -> Result<T, Failure>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    drover_core::retrying(
        policy,
        |f: &Failure| f.transient,
        || {
            let attempt = op();
            async move {
                let result = attempt.await;
                if let Err(f) = &result
                    && f.transient
                {
                    tracing::warn!(error = %f.message, "trying again");
                }
                result
            }
        },
    )
    .await
}
