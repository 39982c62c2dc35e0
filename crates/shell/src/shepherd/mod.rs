//! The shepherd: one long-lived process per engine process that starts the
//! durable commands, so that each costs one `execve` (the command's), not
//! two (a `/bin/sh` supervisor's and the command's).
//!
//! The engine starts its own program again as the shepherd (`/proc/self/exe`,
//! in a session of its own, so a terminal's hangup or `Ctrl-C` does not reach
//! it), and speaks to it over a socket pair ([`wire`]). For each durable
//! command the shepherd creates the command's record exclusively (as the
//! `/bin/sh` supervisor did: whoever creates it is the one that runs the
//! command) with room for the pid, starts the command (`posix_spawn`), and
//! writes its pid over that room; when it ends, the shepherd tells the
//! engine and appends its exit code to the record. An engine that crashes leaves its shepherd behind,
//! recording its commands' ends until the last one has ended; the next
//! engine re-attaches to them from their records as it always has.
//!
//! Where the program cannot be a shepherd (a library loaded into a program
//! that does not link drover-shell, a shepherd that does not answer), the
//! engine says so once and runs each durable command under the `/bin/sh`
//! supervisor of `command.rs` instead; the records are the same.

mod serve;
mod wire;

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recv, sendmsg, setsockopt, socketpair, sockopt,
};
use nix::sys::time::TimeVal;
use tokio::sync::oneshot;

use crate::command::Prepared;
use crate::ident::{self, ProcessIdentity};
use crate::spec::ShellSpec;
pub(crate) use wire::Refusal;
use wire::{ARG, HELLO, MARKER, MAX_MESSAGE, Start, ToEngine};

/// How long a shepherd that was just started has to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(5);

/// A command the shepherd started.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) identity: Option<ProcessIdentity>,
    /// Its exit code (128 + N for signal N), once it has ended; closed if the
    /// shepherd went away first.
    pub(crate) exit: oneshot::Receiver<i32>,
}

/// Why [`spawn`] did not start the command.
#[derive(Debug)]
pub(crate) enum NotSpawned {
    /// The shepherd refused it.
    Refused(Refusal),
    /// There is no shepherd, or it went away: run it another way.
    NoShepherd,
}

/// What a request waits for.
enum Waiter {
    Start(oneshot::Sender<Result<Spawned, Refusal>>),
    Exit(oneshot::Sender<i32>),
}

/// The engine's end of a shepherd.
struct Shepherd {
    sock: Arc<OwnedFd>,
    waiters: Arc<Mutex<HashMap<u64, Waiter>>>,
    next: AtomicU64,
    alive: Arc<AtomicBool>,
}

/// This process's shepherd, started at the first durable command.
static SHEPHERD: Mutex<Option<Arc<Shepherd>>> = Mutex::new(None);

/// Set once a shepherd could not be started: the `/bin/sh` supervisor serves.
static UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Runs every durable command of this process under the `/bin/sh`
/// supervisor from now on, as where no shepherd can start (for tests).
#[cfg(test)]
pub(crate) fn do_without() {
    UNAVAILABLE.store(true, Ordering::Relaxed);
}

/// Whether this process has started a shepherd (for tests).
#[cfg(test)]
pub(crate) fn started() -> bool {
    SHEPHERD.lock().unwrap_or_else(PoisonError::into_inner).is_some()
}

/// This process's shepherd, started if there is none (or the last one went
/// away). Starting one blocks the calling thread until it answers (a few
/// milliseconds; at most [`HELLO_WITHIN`]).
fn shepherd() -> Option<Arc<Shepherd>> {
    let mut slot = SHEPHERD.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(shepherd) = slot.as_ref().filter(|s| s.alive.load(Ordering::Acquire)) {
        return Some(shepherd.clone());
    }
    if UNAVAILABLE.load(Ordering::Relaxed) {
        return None;
    }
    match Shepherd::start() {
        Ok(shepherd) => Some(slot.insert(Arc::new(shepherd)).clone()),
        Err(e) => {
            UNAVAILABLE.store(true, Ordering::Relaxed);
            tracing::warn!(
                "cannot start drover's shepherd ({e}): each durable command runs under a /bin/sh supervisor instead"
            );
            None
        }
    }
}

impl Shepherd {
    fn start() -> io::Result<Shepherd> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(io::Error::from)?;
        let theirs_fd = theirs.as_raw_fd();
        #[allow(clippy::disallowed_methods)] // the engine's own program, not a user's command
        let mut cmd = std::process::Command::new("/proc/self/exe");
        // Nothing of the engine's but the socket: a pipe it held (a
        // terminal's, a test harness's) would stay open while it lives.
        cmd.arg0("drover-shepherd")
            .arg(ARG)
            .env(MARKER, "3")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        #[allow(unsafe_code)]
        // SAFETY: runs in the forked child before exec and calls only
        // `setsid`, `dup2`, `fcntl` and `close_range`, which are
        // async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc;
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Descriptor 3, open across the exec.
                if theirs_fd == 3 {
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Descriptors the engine did not mark close-on-exec (a
                // build tool's jobserver) are not the shepherd's, nor its
                // commands'.
                libc::close_range(4, libc::c_uint::MAX, 0);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(theirs);
        let hello = hello(&ours);
        let pid = match hello {
            Ok(pid) => pid,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        tracing::debug!(pid, "drover's shepherd started");
        let sock = Arc::new(ours);
        let waiters = Arc::new(Mutex::new(HashMap::new()));
        let alive = Arc::new(AtomicBool::new(true));
        let (r_sock, r_waiters, r_alive) = (sock.clone(), waiters.clone(), alive.clone());
        std::thread::Builder::new().name("drover-shepherd".to_owned()).spawn(move || {
            read(&r_sock, &r_waiters);
            r_alive.store(false, Ordering::Release);
            r_waiters.lock().unwrap_or_else(PoisonError::into_inner).clear();
            // Reaped here: it ends only once this process has let it go.
            let _ = child.wait();
        })?;
        Ok(Shepherd { sock, waiters, next: AtomicU64::new(1), alive })
    }
}

/// Waits (at most [`HELLO_WITHIN`]) for the hello of a shepherd just started.
fn hello(sock: &OwnedFd) -> io::Result<u32> {
    let within = TimeVal::new(HELLO_WITHIN.as_secs() as _, 0);
    setsockopt(sock, sockopt::ReceiveTimeout, &within).map_err(io::Error::from)?;
    let mut buf = vec![0u8; 4096];
    let len = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| match e {
        nix::errno::Errno::EAGAIN => io::Error::new(io::ErrorKind::TimedOut, "it did not answer"),
        e => io::Error::from(e),
    })?;
    setsockopt(sock, sockopt::ReceiveTimeout, &TimeVal::new(0, 0)).map_err(io::Error::from)?;
    match serde_json::from_slice::<ToEngine>(&buf[..len]) {
        Ok(ToEngine::Hello { version: HELLO, pid }) => Ok(pid),
        Ok(other) => Err(io::Error::other(format!("it answered {other:?}"))),
        Err(_) if len == 0 => Err(io::Error::other("the program ended without answering as a shepherd")),
        Err(e) => Err(io::Error::other(format!("it answered something else: {e}"))),
    }
}

/// The reader: answers each waiting request from the shepherd's messages,
/// until the shepherd goes away.
fn read(sock: &OwnedFd, waiters: &Mutex<HashMap<u64, Waiter>>) {
    // A refusal names a path (up to `PATH_MAX`) in its message.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let len = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => return,
            Ok(len) => len,
        };
        let Ok(message) = serde_json::from_slice::<ToEngine>(&buf[..len]) else { return };
        let mut waiters = waiters.lock().unwrap_or_else(PoisonError::into_inner);
        match message {
            ToEngine::Started { id, pid, start_ticks } => {
                if let Some(Waiter::Start(tx)) = waiters.remove(&id) {
                    let (exit_tx, exit) = oneshot::channel();
                    waiters.insert(id, Waiter::Exit(exit_tx));
                    let identity = start_ticks.and_then(ident::identity_at);
                    let _ = tx.send(Ok(Spawned { pid, identity, exit }));
                }
            }
            ToEngine::Refused { id, why } => {
                if let Some(Waiter::Start(tx)) = waiters.remove(&id) {
                    let _ = tx.send(Err(why));
                }
            }
            ToEngine::Exited { id, code } => {
                if let Some(Waiter::Exit(tx)) = waiters.remove(&id) {
                    let _ = tx.send(code);
                }
            }
            ToEngine::Hello { .. } => {}
        }
    }
}

/// Starts `spec`'s command (prepared by `command.rs`) through this process's
/// shepherd, which creates `record` first.
///
/// # Errors
///
/// [`NotSpawned::Refused`] with the shepherd's reason; [`NotSpawned::NoShepherd`]
/// when there is none, it went away, or the request is too large for it: the
/// command did not start, and may be started another way.
///
/// # Cancel safety
///
/// Not cancel safe: once the request is sent the command starts, and a
/// dropped future loses its pid (its record still has it).
pub(crate) async fn spawn(spec: &ShellSpec, prepared: Prepared, record: &Path) -> Result<Spawned, NotSpawned> {
    let Some(shepherd) = shepherd() else { return Err(NotSpawned::NoShepherd) };
    let id = shepherd.next.fetch_add(1, Ordering::Relaxed);
    let Prepared { program, stdin, mut outputs, feed } = prepared;
    // The shepherd's working directory is the engine's when it started:
    // every path goes whole, and a command without one gets the engine's now.
    let here = std::env::current_dir().ok();
    let whole = |path: &Path| match &here {
        Some(here) if path.is_relative() => here.join(path),
        _ => path.to_owned(),
    };
    for output in outputs.iter_mut().flatten() {
        output.path = whole(&output.path);
    }
    let start = Start {
        id,
        record: whole(record),
        program: whole(&program),
        args: spec.args.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.as_deref().map(whole).or(here.clone()),
        limits: spec.limits,
        open_files: crate::limits::children_open_files(),
        stdin: stdin.is_some(),
        outputs,
    };
    let Ok(bytes) = serde_json::to_vec(&start) else { return Err(NotSpawned::NoShepherd) };
    if bytes.len() > MAX_MESSAGE {
        return Err(NotSpawned::NoShepherd);
    }
    let fds: Vec<_> = stdin.iter().map(AsRawFd::as_raw_fd).collect();
    let (tx, rx) = oneshot::channel();
    shepherd.waiters.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Waiter::Start(tx));
    let rights = [ControlMessage::ScmRights(&fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(shepherd.sock.as_raw_fd(), &[IoSlice::new(&bytes)], cmsgs, MsgFlags::MSG_NOSIGNAL, None);
    // The shepherd holds its own copy now.
    drop(stdin);
    if sent.is_err() {
        shepherd.waiters.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        return Err(NotSpawned::NoShepherd);
    }
    match rx.await {
        Ok(Ok(spawned)) => {
            if let Some(feed) = feed {
                feed.start();
            }
            Ok(spawned)
        }
        Ok(Err(refusal)) => Err(NotSpawned::Refused(refusal)),
        // It went away before it answered: the record says whether the
        // command started.
        Err(_) if record.exists() => Err(NotSpawned::Refused(Refusal::AlreadyStarted)),
        Err(_) => Err(NotSpawned::NoShepherd),
    }
}
