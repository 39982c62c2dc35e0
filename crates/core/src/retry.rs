//! Retrying steps whose failures may pass (an unreachable computer or API
//! server), with exponential backoff, for every process kind.

use std::future::Future;
use std::time::Duration;

use crate::interruptible;

/// How failures that may pass are retried: `attempts` tries, waiting
/// `first_delay`, then twice as long each time. After the last one a process
/// typically pauses itself with the error recorded; resuming it tries again.
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

/// Runs `op` until it succeeds, fails for good (`transient` says the error
/// will not pass), or has failed `policy.attempts` times, and returns its last
/// result. The waits between tries are [`interruptible`]: a pause may end them.
pub async fn retrying<T, E, Fut>(
    policy: RetryPolicy,
    transient: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = policy.first_delay;
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if transient(&e) && attempt < policy.attempts => {
                interruptible(tokio::time::sleep(delay)).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
            other => return other,
        }
    }
}
