//! Retrying transport and scheduler failures with exponential backoff.

use std::future::Future;
use std::time::Duration;

use drover_core::interruptible;

use crate::poller::PollError;
use crate::scheduler::CommandFailed;
use crate::transport::TransportError;

/// How failures that may pass (an unreachable computer, a scheduler that did
/// not answer) are retried: `attempts` tries, waiting `first_delay`, then twice
/// as long each time. After the last one the process pauses itself with the
/// error recorded; resuming it tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first one included.
    pub attempts: u32,
    /// The wait after the first failure.
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, first_delay: Duration::from_secs(4) }
    }
}

/// A failed step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) transient: bool,
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        Failure { transient: e.is_transient(), message: e.to_string() }
    }
}

impl From<CommandFailed> for Failure {
    fn from(e: CommandFailed) -> Self {
        Failure { transient: e.transient, message: e.message }
    }
}

impl From<PollError> for Failure {
    fn from(e: PollError) -> Self {
        Failure { transient: e.transient, message: e.message }
    }
}

/// Runs `op` until it succeeds, fails for good, or has failed `attempts`
/// times. The waits between tries are interruptible: a pause may end them.
pub(crate) async fn retrying<T, Fut>(policy: RetryPolicy, mut op: impl FnMut() -> Fut) -> Result<T, Failure>
where
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        match op().await {
            Err(f) if f.transient && attempt < policy.attempts => {
                tracing::debug!(attempt, ?delay, error = %f.message, "retrying");
                interruptible(tokio::time::sleep(delay)).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            other => return other,
        }
    }
}
