//! The open-files limit: raised for the engine, given back to its children.
//!
//! A daemon holds a descriptor per connection and per child's streams, so it
//! raises its soft `RLIMIT_NOFILE` to the hard limit. Its children must not
//! inherit the raise: programs that close every possible descriptor at start,
//! or use `select`, slow down or break with a limit of a million. Every child
//! drover starts gets the soft limit back that the engine started with.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft limit children get; `u64::MAX`: the engine did not raise its own.
static CHILDREN: AtomicU64 = AtomicU64::new(u64::MAX);

/// Raises this process's soft limit of open files to its hard limit, and
/// remembers the old one for the children drover starts. Returns the old and
/// the new soft limit, or `None` if it was already at the hard limit.
///
/// # Errors
///
/// The system's, when the limit cannot be read or set.
pub fn raise_open_files_limit() -> Result<Option<(u64, u64)>, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= hard {
        return Ok(None);
    }
    // Remembered first: a child started meanwhile gets the old limit either way.
    let _ = CHILDREN.compare_exchange(u64::MAX, soft, Ordering::SeqCst, Ordering::SeqCst);
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok(Some((soft, hard)))
}

/// The soft limit of open files a child should get, if not this process's.
pub(crate) fn children_open_files() -> Option<u64> {
    match CHILDREN.load(Ordering::SeqCst) {
        u64::MAX => None,
        soft => Some(soft),
    }
}

/// Sets `limits` and the soft limit of open files (`open_files`, if any: the
/// engine's raised limit is not the child's) in a child between `fork` and
/// `exec`: only `getrlimit` and `setrlimit`, which are async-signal-safe, and
/// no allocation.
///
/// # Errors
///
/// The system's, when a limit cannot be set.
pub(crate) fn apply(limits: crate::spec::Limits, open_files: Option<u64>) -> std::io::Result<()> {
    if let Some(secs) = limits.cpu_seconds {
        setrlimit(Resource::RLIMIT_CPU, secs, secs)?;
    }
    if let Some(bytes) = limits.address_space {
        setrlimit(Resource::RLIMIT_AS, bytes, bytes)?;
    }
    if let Some(soft) = open_files {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
        setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    }
    Ok(())
}
