//! The shepherd's side: a small single-threaded loop that starts the
//! engine's durable commands as its own children, records each one's pid and
//! exit code in its record, tells the engine, and outlives an engine that
//! stops or crashes until its last command has ended.
//!
//! It runs in the engine's own program, started again with [`MARKER`] set:
//! a constructor (run before `main`, in every program that links this crate)
//! sees the variable and runs [`serve`] instead of the program. Before `main`,
//! the code here keeps to what needs no runtime set up by it: files,
//! `fork`/`exec` through `std::process`, and `nix`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use super::wire::{HELLO, MARKER, MAX_MESSAGE, Refusal, Start, ToEngine};

/// Runs before `main` in every program that links drover-shell: a program
/// started as a shepherd becomes one and never reaches its `main`.
#[ctor::ctor(unsafe)]
#[allow(unsafe_code)]
fn become_a_shepherd_if_asked() {
    let Some(value) = std::env::var_os(MARKER) else { return };
    let fd = value.to_str().and_then(|v| v.parse::<RawFd>().ok()).filter(|fd| *fd > 2);
    let is_socket = fd.is_some_and(|fd| {
        // SAFETY: only asks the kernel about the descriptor; nothing is owned.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::SockType)
            .is_ok_and(|t| t == nix::sys::socket::SockType::SeqPacket)
    });
    let (Some(fd), true) = (fd, is_socket) else {
        eprintln!(
            "drover: {MARKER} is set, but this program was not started as drover's shepherd \
             (descriptor {value:?} is not its socket); unset {MARKER}"
        );
        std::process::exit(2);
    };
    // SAFETY: before `main`, one thread; the variable is for this process
    // alone, and its commands must not inherit it.
    unsafe { std::env::remove_var(MARKER) };
    // SAFETY: the engine handed this descriptor over for this process to own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    std::process::exit(serve(&sock));
}

/// A command the shepherd started and has not reaped yet. Its record is
/// opened again for its exit code, not held open: thousands of commands may
/// run at once.
struct Child {
    id: u64,
    record: PathBuf,
}

/// The loop: requests from the engine, and the ends of the commands. Returns
/// the shepherd's exit status once the engine has gone and every command it
/// started has ended.
fn serve(sock: &OwnedFd) -> i32 {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let signals = chld.thread_block().and_then(|()| SignalFd::with_flags(&chld, SfdFlags::SFD_NONBLOCK));
    let Ok(signals) = signals else {
        eprintln!("drover shepherd: cannot watch its children: {}", Errno::last());
        return 1;
    };
    let mut connected = send(sock, &ToEngine::Hello { version: HELLO, pid: std::process::id() });
    let mut children: HashMap<i32, Child> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        if !connected && children.is_empty() {
            return 0;
        }
        let (ended, asked) = {
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            if connected {
                fds.push(PollFd::new(sock.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("drover shepherd: poll: {e}");
                    return 1;
                }
            }
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), fds.get(1).is_some_and(ready))
        };
        if ended {
            while let Ok(Some(_)) = signals.read_signal() {}
            reap(&mut children, sock, &mut connected);
        }
        if asked {
            match receive(sock, &mut buf) {
                Ok(Some((len, streams))) => match serde_json::from_slice::<Start>(&buf[..len]) {
                    Ok(mut start) => {
                        let id = start.id;
                        if let Some(soft) = start.open_files.take() {
                            // The shepherd holds a few descriptors at a time:
                            // the children's limit is enough for it, and its
                            // commands inherit it so.
                            let _ = crate::limits::apply(crate::spec::Limits::default(), Some(soft));
                        }
                        let record = start.record.clone();
                        let answer = match launch(start, streams) {
                            Ok(pid) => {
                                children.insert(pid, Child { id, record });
                                let pid = pid.unsigned_abs();
                                ToEngine::Started { id, pid, start_ticks: crate::ident::start_ticks(pid) }
                            }
                            Err(why) => ToEngine::Refused { id, why },
                        };
                        connected = send(sock, &answer);
                    }
                    Err(e) => {
                        eprintln!("drover shepherd: a request it cannot read: {e}");
                        connected = false;
                    }
                },
                Ok(None) => connected = false,
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(_) => connected = false,
            }
        }
    }
}

/// Reaps every command that has ended: its exit code goes to its record,
/// then to the engine.
fn reap(children: &mut HashMap<i32, Child>, sock: &OwnedFd, connected: &mut bool) {
    loop {
        let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(_) => continue,
        };
        let Some(child) = children.remove(&pid.as_raw()) else { continue };
        // The engine first: the next command waits for it. The record is for
        // an engine that is not there (it went away, or goes away before it
        // recorded the end), which reads it later.
        if *connected {
            *connected = send(sock, &ToEngine::Exited { id: child.id, code });
        }
        // One write of the whole line: a reader takes only whole lines. A
        // record that cannot take it (a full disk) leaves the engine, if
        // there is one, as the only one to know.
        let record = File::options().append(true).custom_flags(nix::libc::O_NOFOLLOW).open(&child.record);
        let _ = record.and_then(|mut record| record.write_all(format!("{code}\n").as_bytes()));
    }
}

/// Creates the record exclusively, with room for the pid line (so that a full
/// disk refuses the record before the command runs), starts the command in
/// its own process group, and writes its pid over the room. A shepherd
/// killed in the microseconds between the start and that write leaves a
/// record without a pid: a later engine reports the command's end unknown
/// and cannot signal it (the price of `posix_spawn`, which runs no code of
/// ours in the child).
fn launch(start: Start, streams: Vec<OwnedFd>) -> Result<i32, Refusal> {
    let mut record = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&start.record)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Refusal::AlreadyStarted,
            _ => Refusal::Unrecorded { message: format!("cannot create `{}`: {e}", start.record.display()) },
        })?;
    // Room for the pid line, taken before the command starts: on a full disk
    // this write fails while nothing has run; the pid goes over it in place.
    if let Err(e) = record.write_all(PID_ROOM) {
        drop(record);
        let _ = std::fs::remove_file(&start.record);
        return Err(Refusal::Unrecorded {
            message: format!("cannot write the pid into `{}`: {e}", start.record.display()),
        });
    }
    let stdin = match (start.stdin, streams.into_iter().next()) {
        (true, Some(fd)) => Stdio::from(fd),
        _ => Stdio::null(),
    };
    let mut outputs = Vec::with_capacity(2);
    for (n, output) in start.outputs.iter().enumerate() {
        match output.as_ref().map(crate::command::open_output_file).transpose() {
            Ok(file) => outputs.push(file.map_or_else(Stdio::null, Stdio::from)),
            Err(e) => {
                // It did not run: nothing may say it started.
                drop(record);
                let _ = std::fs::remove_file(&start.record);
                return Err(Refusal::Output { n, errno: e.raw_os_error().unwrap_or(0) });
            }
        }
    }
    let mut outputs = outputs.into_iter();
    #[allow(clippy::disallowed_methods)] // the shepherd starts the commands `command.rs` prepared
    let mut cmd = std::process::Command::new(&start.program);
    cmd.args(&start.args)
        .stdin(stdin)
        .stdout(outputs.next().unwrap_or_else(Stdio::null))
        .stderr(outputs.next().unwrap_or_else(Stdio::null))
        .process_group(0);
    crate::command::set_env(&mut cmd, &start.env, start.cwd.as_deref());
    // The open-files limit is the shepherd's own (see `serve`); other limits
    // are set in the child. Without them, `std` spawns with `posix_spawn`
    // (no copy of the shepherd's page tables, no wait for a pipe).
    let limits = start.limits;
    if limits.any() {
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and calls
        // only `setrlimit`, which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || crate::limits::apply(limits, None));
        }
    }
    match cmd.spawn() {
        Ok(child) => {
            // Over the room taken for it: in place, so a full disk cannot
            // refuse it. The command started before the record was written
            // to, which is how a later engine tells it from a process that
            // got its pid after it ended (`ident::identify_writer`).
            let mut line = [b' '; PID_ROOM.len()];
            let len = pid_line(child.id(), &mut line);
            line[len - 1] = b' ';
            line[PID_ROOM.len() - 1] = b'\n';
            let _ = std::os::unix::fs::FileExt::write_all_at(&record, &line, 0);
            Ok(i32::try_from(child.id()).unwrap_or(i32::MAX))
        }
        Err(e) => {
            // It did not run: nothing may say it started.
            drop(record);
            let _ = std::fs::remove_file(&start.record);
            Err(match e.raw_os_error() {
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT) => Refusal::Unrecorded {
                    message: format!("cannot write the pid into `{}`: {e}", start.record.display()),
                },
                errno => Refusal::Spawn { errno: errno.unwrap_or(0), message: e.to_string() },
            })
        }
    }
}

/// The first line of a record as the shepherd makes it: room for a pid
/// (spaces, which a reader takes for no pid yet), then the pid over it.
const PID_ROOM: &[u8; 16] = b"               \n";

/// `pid` in decimal and a newline, into `buf`; returns the length.
fn pid_line(pid: u32, buf: &mut [u8; 16]) -> usize {
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (pid, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for (i, d) in digits[..len].iter().rev().enumerate() {
        buf[i] = *d;
    }
    buf[len] = b'\n';
    len + 1
}

/// Sends one message; whether the engine is still there to read it.
fn send(sock: &OwnedFd, message: &ToEngine) -> bool {
    let Ok(bytes) = serde_json::to_vec(message) else { return false };
    sendmsg::<()>(sock.as_raw_fd(), &[IoSlice::new(&bytes)], &[], MsgFlags::MSG_NOSIGNAL, None).is_ok()
}

/// Receives one request and the streams attached to it; `None` once the
/// engine has closed its end.
#[allow(unsafe_code)]
fn receive(sock: &OwnedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: descriptors received with the message are this process's own.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(Errno::EMSGSIZE);
    }
    Ok((msg.bytes > 0).then_some((msg.bytes, fds)))
}

#[cfg(test)]
mod tests {
    use super::pid_line;

    #[test]
    fn a_pid_line_is_the_pid_and_a_newline() {
        for pid in [0, 7, 10, 4_194_304, u32::MAX] {
            let mut buf = [0u8; 16];
            let len = pid_line(pid, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), format!("{pid}\n"));
        }
    }
}
