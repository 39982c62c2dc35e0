//! Where a daemon keeps its files in its data directory.

use std::path::{Path, PathBuf};

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
