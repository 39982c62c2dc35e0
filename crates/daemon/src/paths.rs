//! Where a daemon keeps its files in its data directory.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a data directory is not drover's to use.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// It could not be created or read.
    #[error("data directory {}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// It belongs to another user, who could read and change drover's store.
    #[error(
        "data directory {} belongs to uid {owner}, not to you (uid {me}): refusing to keep a store there; \
         give a directory of your own (--data-dir or $DROVER_DATA_DIR)",
        path.display()
    )]
    NotYours {
        /// The directory.
        path: PathBuf,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// Others may create, delete or replace files in it.
    #[error(
        "data directory {} is writable by {who} (mode {mode:o}): others could replace drover's files; \
         run `chmod 700 {}`",
        path.display(),
        path.display()
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its mode's permission bits.
        mode: u32,
        /// `group`, `others` or `group and others`.
        who: &'static str,
    },
    /// It is not a directory.
    #[error("data directory {} is not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

/// Makes `dir` drover's private directory: creates it (and missing parents)
/// with mode 0700, or checks that the existing one is a directory owned by
/// this user that neither group nor others may write to. A symlink is
/// followed (a home directory may be one), but the directory it names is
/// held to the same rules.
///
/// # Errors
///
/// [`PrivateDirError`], saying what is wrong and how to mend it.
pub fn private_dir(dir: &Path) -> Result<(), PrivateDirError> {
    let io = |source| PrivateDirError::Io { path: dir.to_owned(), source };
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
            std::fs::metadata(dir).map_err(io)?
        }
        other => other.map_err(io)?,
    };
    if !meta.is_dir() {
        return Err(PrivateDirError::NotADirectory { path: dir.to_owned() });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(PrivateDirError::NotYours { path: dir.to_owned(), owner: meta.uid(), me });
    }
    let mode = meta.permissions().mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "group",
        (false, true) => "others",
        (false, false) => return Ok(()),
    };
    Err(PrivateDirError::Writable { path: dir.to_owned(), mode, who })
}

/// The files of the daemon that serves one data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The data directory.
    pub data_dir: PathBuf,
}

impl Paths {
    /// The daemon files of `data_dir`.
    pub fn new(data_dir: impl AsRef<Path>) -> Paths {
        Paths { data_dir: data_dir.as_ref().to_path_buf() }
    }

    /// The control API's Unix socket (mode 0600).
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join("daemon.sock")
    }

    /// The pid file, locked while the daemon runs.
    pub fn pid(&self) -> PathBuf {
        self.data_dir.join("daemon.pid")
    }

    /// The log file.
    pub fn log(&self) -> PathBuf {
        self.data_dir.join("daemon.log")
    }

    /// The token that the loopback TCP listener asks for (mode 0600).
    pub fn token(&self) -> PathBuf {
        self.data_dir.join("daemon.token")
    }

    /// The default store.
    pub fn store(&self) -> PathBuf {
        self.data_dir.join("drover.db")
    }

    /// Where durable shell processes keep their supervisors' records.
    pub fn supervise(&self) -> PathBuf {
        self.data_dir.join("supervise")
    }

    /// Where submitted jobs write their outputs, one directory per submission.
    pub fn runs(&self) -> PathBuf {
        self.data_dir.join("runs")
    }

    /// The pid of the daemon that holds the pid file's lock, if one does.
    pub fn running_pid(&self) -> Option<u32> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(self.pid()).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => Some(std::fs::read_to_string(self.pid()).ok()?.trim().parse().ok().unwrap_or(0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_made_private_and_a_shared_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/drover");
        private_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // Again: fine.
        private_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("writable by group (mode 775)") && e.contains("chmod 700"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("writable by group and others (mode 1777)"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(matches!(private_dir(&file), Err(PrivateDirError::NotADirectory { .. })));
        // Another user's directory (the test command runs as root, who can make one).
        let theirs = root.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("run as root");
        let e = private_dir(&theirs).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 65534, not to you (uid 0)"), "{e}");
    }
}
