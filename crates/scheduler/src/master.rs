//! The SSH master connection of a computer, at a control path that a later
//! engine of the same user finds again.
//!
//! An engine that dies (SIGKILL, OOM) cannot close its master. So the master
//! is not the engine's: it lives at `DIR/HASH`, where `DIR` is a directory
//! private to the user ([`default_control_dir`]) and `HASH` names the
//! destination, and it ends by itself once nobody used it for its idle time
//! (`ControlPersist`). An engine joins the master it finds alive there
//! (`ssh -O check`, through the mux protocol) and starts one only when none
//! is: restarts never add connections to the login node.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_shell::ShellSpec;
use openssh::Session;

use crate::quote::quote_all;

/// The longest control path that still leaves room for the 17 characters
/// ssh appends to it while it binds (`PATH.XXXXXXXXXXXXXXXX`), under the
/// smallest socket path limit of the systems drover runs on (104 bytes).
const MAX_SOCKET_PATH: usize = 104 - 1 - 17;

/// Why no master could be joined or started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MasterError {
    /// The control directory is unusable; trying again will not help.
    #[error("control directory `{}`: {problem}", dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A file of the control directory could not be used.
    #[error("control directory `{}`: {what}", dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// What was done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// ssh could not connect; its own words.
    #[error("{0}")]
    Connect(String),
    /// The master answered no check after it started.
    #[error("the new master does not answer")]
    NoAnswer(#[source] openssh::Error),
}

impl MasterError {
    /// Whether trying again later cannot help.
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(self, MasterError::Dir { .. } | MasterError::Io { .. })
    }
}

/// The user's own directory for control sockets: `$XDG_RUNTIME_DIR/drover-ssh`
/// where the session has a runtime directory, else `$TMPDIR/drover-ssh-UID`
/// (`/tmp` by default). Either is created 0700, and refused if another user
/// owns it or others may write to it.
pub(crate) fn default_control_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("drover-ssh"),
        _ => std::env::temp_dir().join(format!("drover-ssh-{}", euid())),
    }
}

fn euid() -> u32 {
    // SAFETY: `geteuid` has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

/// The control socket's name for `destination`: FNV-1a, so that it is the
/// same in every engine and every drover version, and short whatever the
/// destination's length.
fn socket_name(destination: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in destination.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Creates `dir` (0700) if it is missing, and checks that it is the user's
/// own: a directory, not a link, owned by the user, writable by nobody else.
fn private_dir(dir: &Path) -> Result<(), MasterError> {
    let problem = |problem: String| MasterError::Dir { dir: dir.to_owned(), problem };
    if !dir.is_absolute() {
        return Err(problem("is not an absolute path".into()));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(MasterError::Io { dir: dir.to_owned(), what: "creating it", source }),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|source| MasterError::Io {
        dir: dir.to_owned(),
        what: "reading it",
        source,
    })?;
    if !meta.file_type().is_dir() {
        return Err(problem("is not a directory (a link, or a file)".into()));
    }
    if meta.uid() != euid() {
        return Err(problem(format!("is owned by uid {}, not by this user (uid {}): remove it", meta.uid(), euid())));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(problem(format!("is writable by others (mode {mode:o}): `chmod 700` it")));
    }
    Ok(())
}

/// Where the master for `destination` lives under `dir`.
pub(crate) fn socket_path(dir: &Path, destination: &str) -> Result<PathBuf, MasterError> {
    let path = dir.join(socket_name(destination));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(MasterError::Dir {
            dir: dir.to_owned(),
            problem: format!("is too long for a socket path (at most {} bytes)", MAX_SOCKET_PATH - 17),
        });
    }
    Ok(path)
}

/// What starting a master takes.
pub(crate) struct Launch<'a> {
    pub(crate) destination: &'a str,
    pub(crate) dir: &'a Path,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle: Duration,
}

/// The session of the master for `launch.destination`: the one alive at its
/// control path, else a new one (started while holding the directory's lock
/// for that destination, so that two engines starting at once make one).
///
/// Cancel safe: dropped before ssh forked its master, nothing is left; after,
/// the master idles out by itself if nobody joins it.
pub(crate) async fn join_or_start(launch: Launch<'_>) -> Result<Session, MasterError> {
    let dir = launch.dir;
    private_dir(dir)?;
    let socket = socket_path(dir, launch.destination)?;
    if let Some(session) = alive(&socket).await {
        return Ok(session);
    }
    let lock = dir.join(format!("{}.lock", socket_name(launch.destination)));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| MasterError::Io { dir: dir.to_owned(), what: "opening its lock", source })?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .map_err(|e| MasterError::Connect(format!("waiting for the lock: {e}")))?
        .map_err(|source| MasterError::Io { dir: dir.to_owned(), what: "locking it", source })?;
    // Another engine may have started it while this one waited.
    if let Some(session) = alive(&socket).await {
        return Ok(session);
    }
    // A socket left by a master that died: ssh would not bind over it.
    if std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(&socket);
    }
    let log = dir.join(format!("{}.log", socket_name(launch.destination)));
    let _ = std::fs::remove_file(&log);
    let socket_text = socket.to_string_lossy();
    let log_text = log.to_string_lossy();
    let options = [
        format!("ControlPersist={}s", launch.idle.as_secs().max(1)),
        "BatchMode=yes".to_owned(),
        "StrictHostKeyChecking=accept-new".to_owned(),
        format!("ConnectTimeout={}", launch.connect_timeout.as_secs().max(1)),
        "ServerAliveInterval=30".to_owned(),
    ];
    let mut words: Vec<&str> = vec!["ssh", "-E", &log_text, "-S", &socket_text, "-M", "-f", "-N"];
    for option in &options {
        words.push("-o");
        words.push(option);
    }
    words.push("--");
    words.push(launch.destination);
    // The master keeps no pipe of ours open: its output goes to the log.
    let script = format!("exec {} < /dev/null > /dev/null 2>&1", quote_all(words));
    let out = drover_shell::output(&ShellSpec::script(script)).await;
    drop(lock);
    let started = out.map_err(|e| MasterError::Connect(format!("cannot run ssh: {e}")))?;
    if !started.status.success() {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        let said = said.trim();
        return Err(MasterError::Connect(if said.is_empty() {
            format!("ssh exited with {}", started.status)
        } else {
            said.to_owned()
        }));
    }
    let session = Session::resume_mux(socket.into_boxed_path(), None);
    session.check().await.map_err(MasterError::NoAnswer)?;
    Ok(session)
}

/// The session of a master alive at `socket`, if one is.
async fn alive(socket: &Path) -> Option<Session> {
    let session = Session::resume_mux(socket.to_path_buf().into_boxed_path(), None);
    session.check().await.ok().map(|()| session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_short_and_stable() {
        assert_eq!(socket_name("drover-test-host"), socket_name("drover-test-host"));
        assert_ne!(socket_name("a@host"), socket_name("b@host"));
        assert_eq!(socket_name(&"x".repeat(10_000)).len(), 16);
        // Pinned: a restarted engine of another drover version finds it too.
        assert_eq!(socket_name(""), "cbf29ce484222325");
    }

    #[test]
    fn a_control_directory_must_be_the_users_own() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("fresh");
        private_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        private_dir(&fresh).unwrap();

        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&open).unwrap_err().to_string();
        assert!(e.contains("writable by others") && e.contains("777"), "{e}");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o720)).unwrap();
        assert!(private_dir(&open).is_err(), "group-writable");

        let link = root.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(private_dir(&link).unwrap_err().to_string().contains("not a directory"));
        assert!(private_dir(Path::new("relative")).unwrap_err().is_permanent());

        let long = root.path().join("d".repeat(100));
        assert!(socket_path(&long, "h").unwrap_err().to_string().contains("too long"));
    }
}
