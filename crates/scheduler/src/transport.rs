//! Transports: how commands reach a computer and files move to and from it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use drover_shell::ShellSpec;
use openssh::Session;
use openssh_sftp_client::file::TokioCompatFile;
use openssh_sftp_client::{Sftp, SftpOptions};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, Semaphore};

use crate::master;
use crate::quote::quote;
use crate::scheduler::CmdOutput;

/// Why a transport operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The computer refused the connection for good: an unknown host, a
    /// refused key, a host key that does not match. Retrying will not help.
    #[error("cannot connect to {host}: {message}")]
    Refused {
        /// The computer.
        host: String,
        /// ssh's own message.
        message: String,
    },
    /// The computer could not be reached, or the connection broke. Trying
    /// again later may work.
    #[error("cannot reach {host}: {message}")]
    Unreachable {
        /// The computer.
        host: String,
        /// What went wrong.
        message: String,
    },
    /// The local copy of a remote file could not be written (this machine's
    /// disk).
    #[error("writing `{}`: {message}", path.display())]
    LocalWrite {
        /// The local file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
        /// Whether it was for want of space (or quota): that may pass.
        no_space: bool,
    },
    /// A file operation failed on a reachable computer.
    #[error("{op} `{path}` on {host}: {message}")]
    File {
        /// The computer.
        host: String,
        /// What was done.
        op: &'static str,
        /// The remote or local path.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl TransportError {
    /// Whether trying again later may work.
    pub fn is_transient(&self) -> bool {
        match self {
            TransportError::Unreachable { .. } => true,
            // A full disk (or quota) here may be made room on.
            TransportError::LocalWrite { no_space, .. } => *no_space,
            _ => false,
        }
    }
}

/// Counts of the commands a transport ran, by program (the first word after
/// an optional `cd DIR &&`), for diagnostics and benchmarks.
#[derive(Debug, Default)]
pub struct CommandStats {
    counts: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
}

impl CommandStats {
    fn record(&self, command: &str) {
        let rest = match command.strip_prefix("cd ").and_then(|r| r.split_once(" && ")) {
            Some((_, rest)) => rest,
            None => command,
        };
        let program = rest.trim_start_matches(['{', ' ']).split_whitespace().next().unwrap_or("").to_owned();
        *self.counts.lock().unwrap_or_else(|p| p.into_inner()).entry(program).or_default() += 1;
    }

    /// How many commands ran, by program.
    pub fn by_program(&self) -> std::collections::BTreeMap<String, usize> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How commands reach a computer and how files move to and from it. Remote
/// paths are relative to the login directory unless absolute.
///
/// Implementations are shared by every process on the computer (`Send + Sync`)
/// and cap their own concurrency.
pub trait Transport: Send + Sync + 'static {
    /// Runs a POSIX shell command line and captures what it prints.
    fn run(&self, command: &str) -> impl Future<Output = Result<CmdOutput, TransportError>> + Send;
    /// Writes `data` to the remote file `remote`, replacing it.
    fn write(&self, remote: &str, data: &[u8]) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Copies the local file `local` to `remote`, streaming.
    fn put(&self, local: &Path, remote: &str) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Copies the remote file `remote` to `local`, streaming, if it is a
    /// regular file (a symlink is followed to one) of at most `limit` bytes;
    /// returns its size, or `None` if it does not exist. A FIFO, a device,
    /// a directory or a larger file is refused before any byte is copied
    /// (and one that grows past `limit` while it is copied is cut there and
    /// refused), so that a job's output cannot hang or fill the engine's disk.
    fn get(
        &self,
        remote: &str,
        local: &Path,
        limit: u64,
    ) -> impl Future<Output = Result<Option<u64>, TransportError>> + Send;
    /// Whether the last attempt to reach the computer worked.
    fn reachable(&self) -> bool;
    /// The commands run so far.
    fn stats(&self) -> &CommandStats;
    /// The computer, for messages.
    fn host(&self) -> &str;
}

/// The engine runs on the computer itself (its login node): commands run
/// under `/bin/sh -c` through drover's command wrapper, files are copied.
#[derive(Clone, Debug, Default)]
pub struct Local {
    home: Option<PathBuf>,
    stats: Arc<CommandStats>,
}

impl Local {
    /// A local transport whose relative paths are relative to `$HOME`.
    pub fn new() -> Local {
        Local { home: std::env::var_os("HOME").map(PathBuf::from), stats: Arc::default() }
    }

    fn path(&self, remote: &str) -> PathBuf {
        match &self.home {
            Some(home) if Path::new(remote).is_relative() => home.join(remote),
            _ => PathBuf::from(remote),
        }
    }
}

/// An error with its chain of causes: ssh's own words are in the causes.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(text.trim());
        }
        source = cause.source();
    }
    message
}

/// Whether a file whose stat says `regular` and `len` may be retrieved
/// within `limit` bytes.
fn check_retrievable(regular: bool, len: u64, limit: u64) -> std::io::Result<()> {
    if !regular {
        return Err(std::io::Error::other(
            "it is not a regular file (a FIFO, a device, a directory, a dangling link): not retrieved",
        ));
    }
    if len > limit {
        return Err(std::io::Error::other(format!(
            "it holds {len} bytes, more than the {limit} left of the job's retrieval limit (retrieve_max_mib): not retrieved"
        )));
    }
    Ok(())
}

/// Why a copy failed: its source could not be read (a connection that
/// broke), its target not written (this machine's disk), or the source was
/// larger than the limit.
#[derive(Debug)]
enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
    TooBig(u64),
}

impl CopyError {
    /// As a transport's error, the source's being `remote` on `host`, the
    /// target `local`; `read` says what a failed read means.
    fn into_transport(
        self,
        host: &str,
        remote: &str,
        local: &Path,
        read: impl FnOnce(std::io::Error) -> TransportError,
    ) -> TransportError {
        match self {
            CopyError::Read(e) => read(e),
            CopyError::Write(e) => TransportError::LocalWrite {
                path: local.to_owned(),
                no_space: matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
                message: e.to_string(),
            },
            CopyError::TooBig(limit) => file_error(
                host,
                "copying from",
                remote,
                format!(
                    "it grew past the {limit} bytes left of the job's retrieval limit while it was copied: not retrieved"
                ),
            ),
        }
    }
}

/// Copies `source` into a new file `local`, refusing more than `limit`
/// bytes; an unfinished copy is removed (a retry starts it again whole).
async fn copy_capped(
    mut source: impl tokio::io::AsyncRead + Unpin,
    local: &Path,
    limit: u64,
) -> Result<Option<u64>, CopyError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let copied = async {
        let mut target = tokio::fs::File::create(local).await.map_err(CopyError::Write)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut copied: u64 = 0;
        loop {
            let n = source.read(&mut buf).await.map_err(CopyError::Read)?;
            if n == 0 {
                break;
            }
            copied += n as u64;
            if copied > limit {
                return Err(CopyError::TooBig(limit));
            }
            target.write_all(&buf[..n]).await.map_err(CopyError::Write)?;
        }
        target.flush().await.map_err(CopyError::Write)?;
        Ok(copied)
    }
    .await;
    match copied {
        Ok(copied) => Ok(Some(copied)),
        Err(e) => {
            let _ = tokio::fs::remove_file(local).await;
            Err(e)
        }
    }
}

fn file_error(host: &str, op: &'static str, path: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::File { host: host.to_owned(), op, path: path.to_owned(), message: e.to_string() }
}

impl Transport for Local {
    async fn run(&self, command: &str) -> Result<CmdOutput, TransportError> {
        self.stats.record(command);
        let mut spec = ShellSpec::script(command);
        spec.cwd = self.home.clone();
        let out = drover_shell::output(&spec)
            .await
            .map_err(|e| TransportError::Unreachable { host: "localhost".into(), message: e.to_string() })?;
        Ok(CmdOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn write(&self, remote: &str, data: &[u8]) -> Result<(), TransportError> {
        tokio::fs::write(self.path(remote), data).await.map_err(|e| file_error("localhost", "writing", remote, e))
    }

    async fn put(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        tokio::fs::copy(local, self.path(remote))
            .await
            .map(drop)
            .map_err(|e| file_error("localhost", "copying to", remote, e))
    }

    async fn get(&self, remote: &str, local: &Path, limit: u64) -> Result<Option<u64>, TransportError> {
        let path = self.path(remote);
        let refuse = |e: std::io::Error| file_error("localhost", "copying from", remote, e);
        match tokio::fs::metadata(&path).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(refuse(e)),
            Ok(meta) => check_retrievable(meta.is_file(), meta.len(), limit).map_err(refuse)?,
        }
        // Non-blocking: had a FIFO taken the file's place since, opening it
        // would wait for a writer.
        let mut options = tokio::fs::OpenOptions::new();
        options.read(true).custom_flags(libc::O_NONBLOCK);
        let source = options.open(&path).await.map_err(refuse)?;
        let meta = source.metadata().await.map_err(refuse)?;
        check_retrievable(meta.is_file(), meta.len(), limit).map_err(refuse)?;
        copy_capped(source, local, limit).await.map_err(|e| e.into_transport("localhost", remote, local, refuse))
    }

    fn reachable(&self) -> bool {
        true
    }

    fn stats(&self) -> &CommandStats {
        &self.stats
    }

    fn host(&self) -> &str {
        "localhost"
    }
}

/// How long a master connection nobody uses stays, unless a computer asks
/// for another time.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// Settings of an SSH connection. Everything else comes from the system's
/// OpenSSH configuration (`~/.ssh/config`: user, port, keys, `ProxyJump`,
/// agents), since drover runs the system's `ssh`.
#[derive(Clone, Debug)]
pub struct SshConfig {
    /// The destination: a host, `user@host`, or a `Host` alias of `~/.ssh/config`.
    pub destination: String,
    /// An already-open `ControlMaster` socket to use instead of opening a
    /// connection (for sites with two-factor login).
    pub control_path: Option<PathBuf>,
    /// Where drover keeps the control socket of the master it shares with
    /// every engine of this user (`None`: `$XDG_RUNTIME_DIR/drover-ssh`, else
    /// `$TMPDIR/drover-ssh-UID`). Created 0700; refused if another user owns
    /// it or others may write to it.
    pub control_dir: Option<PathBuf>,
    /// How long a master nobody uses stays (`ControlPersist`), so that the
    /// master of an engine that died ends by itself.
    pub idle_timeout: Duration,
    /// Commands at once over the connection; keep it below sshd's `MaxSessions`
    /// (default 10), one channel being taken by SFTP.
    pub max_channels: usize,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// The first wait before reconnecting after a failed attempt; it doubles
    /// up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// The longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

impl SshConfig {
    /// Defaults for `destination`.
    pub fn new(destination: impl Into<String>) -> SshConfig {
        SshConfig {
            destination: destination.into(),
            control_path: None,
            control_dir: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_channels: 8,
            connect_timeout: Duration::from_secs(15),
            reconnect_min: Duration::from_secs(2),
            reconnect_max: Duration::from_secs(60),
        }
    }
}

/// SSH through the system's OpenSSH: one multiplexed master connection per
/// computer, shared by every process on it, commands as channels (at most
/// [`SshConfig::max_channels`] at once), files over one SFTP channel. A broken
/// connection is reopened on the next use, no sooner than the backoff allows.
///
/// The master is not this transport's own: it lives at a control path named
/// after the destination in the user's private control directory
/// ([`SshConfig::control_dir`]), where every engine of the user finds it. A
/// transport joins the master it finds alive there and starts one only when
/// none is; nothing closes it on drop: it ends by itself after
/// [`SshConfig::idle_timeout`] with no command. So an engine that was killed
/// and restarted, or several engines of one user, make one connection to the
/// computer.
#[derive(Clone, Debug)]
pub struct Ssh {
    inner: Arc<SshInner>,
}

#[derive(Debug)]
struct SshInner {
    config: SshConfig,
    conn: Mutex<Conn>,
    channels: Semaphore,
    reachable: AtomicBool,
    connections: AtomicUsize,
    stats: CommandStats,
}

/// Why connecting failed.
enum Connect {
    /// The master would not answer at the given control path.
    Ssh(openssh::Error),
    /// No master could be joined or started.
    Master(master::MasterError),
}

#[derive(Debug, Default)]
struct Conn {
    session: Option<Arc<Session>>,
    sftp: Option<Arc<Sftp>>,
    failed_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

impl Ssh {
    /// A transport to `config.destination`. Nothing connects until first use.
    pub fn new(config: SshConfig) -> Ssh {
        let channels = Semaphore::new(config.max_channels.max(1));
        Ssh {
            inner: Arc::new(SshInner {
                config,
                conn: Mutex::new(Conn::default()),
                channels,
                reachable: AtomicBool::new(true),
                connections: AtomicUsize::new(0),
                stats: CommandStats::default(),
            }),
        }
    }

    /// How many times this transport connected so far (started a master, or
    /// joined one that was running).
    pub fn connections_opened(&self) -> usize {
        self.inner.connections.load(Ordering::Relaxed)
    }

    fn unreachable(&self, message: impl std::fmt::Display) -> TransportError {
        TransportError::Unreachable { host: self.inner.config.destination.clone(), message: message.to_string() }
    }

    /// The shared session, connecting if there is none (and the backoff allows).
    async fn session(&self) -> Result<Arc<Session>, TransportError> {
        let mut conn = self.inner.conn.lock().await;
        if let Some(session) = &conn.session {
            return Ok(session.clone());
        }
        if let Some(failed_at) = conn.failed_at
            && failed_at.elapsed() < conn.backoff
        {
            return Err(self.unreachable(format!(
                "{} (next attempt in {:?})",
                conn.last_error,
                conn.backoff - failed_at.elapsed()
            )));
        }
        let config = &self.inner.config;
        let connected = match &config.control_path {
            Some(path) => {
                let session = Session::resume_mux(path.clone().into_boxed_path(), None);
                session.check().await.map(|()| session).map_err(Connect::Ssh)
            }
            None => {
                let dir = config.control_dir.clone().unwrap_or_else(master::default_control_dir);
                let launch = master::Launch {
                    destination: &config.destination,
                    dir: &dir,
                    connect_timeout: config.connect_timeout,
                    idle: config.idle_timeout,
                };
                master::join_or_start(launch).await.map_err(Connect::Master)
            }
        };
        match connected {
            Ok(session) => {
                self.inner.connections.fetch_add(1, Ordering::Relaxed);
                self.inner.reachable.store(true, Ordering::Relaxed);
                conn.failed_at = None;
                conn.backoff = Duration::ZERO;
                let session = Arc::new(session);
                conn.session = Some(session.clone());
                conn.sftp = None;
                Ok(session)
            }
            Err(e) => {
                let message = match &e {
                    Connect::Ssh(e) => with_sources(e),
                    Connect::Master(e) => with_sources(e),
                };
                self.inner.reachable.store(false, Ordering::Relaxed);
                conn.failed_at = Some(Instant::now());
                conn.backoff = (conn.backoff * 2).clamp(config.reconnect_min, config.reconnect_max);
                conn.last_error = message.clone();
                let permanent = [
                    "Could not resolve hostname",
                    "Name or service not known",
                    "Permission denied",
                    "Host key verification failed",
                    "Too many authentication failures",
                    "REMOTE HOST IDENTIFICATION HAS CHANGED",
                ];
                if permanent.iter().any(|p| message.contains(p)) || matches!(&e, Connect::Master(m) if m.is_permanent())
                {
                    return Err(TransportError::Refused { host: config.destination.clone(), message });
                }
                Err(self.unreachable(message))
            }
        }
    }

    async fn sftp(&self) -> Result<Arc<Sftp>, TransportError> {
        let session = self.session().await?;
        let mut conn = self.inner.conn.lock().await;
        if let Some(sftp) = &conn.sftp {
            return Ok(sftp.clone());
        }
        let sftp = Sftp::from_clonable_session(session, SftpOptions::default())
            .await
            .map_err(|e| self.unreachable(with_sources(&e)))?;
        let sftp = Arc::new(sftp);
        conn.sftp = Some(sftp.clone());
        Ok(sftp)
    }

    /// An SFTP error: the server's own refusal (no such file, permission
    /// denied) is a file error; anything else means the channel or the
    /// connection broke, and the next use reconnects.
    async fn sftp_error(&self, op: &'static str, path: &str, e: openssh_sftp_client::Error) -> TransportError {
        match e {
            openssh_sftp_client::Error::SftpError(..) => file_error(self.host(), op, path, with_sources(&e)),
            other => self.broken(format!("{op} `{path}`: {}", with_sources(&other))).await,
        }
    }

    /// Forgets a connection that failed, so that the next use reconnects.
    async fn broken(&self, error: impl std::fmt::Display) -> TransportError {
        let mut conn = self.inner.conn.lock().await;
        conn.session = None;
        conn.sftp = None;
        conn.failed_at = Some(Instant::now());
        conn.backoff = self.inner.config.reconnect_min;
        conn.last_error = error.to_string();
        self.inner.reachable.store(false, Ordering::Relaxed);
        self.unreachable(error)
    }
}

impl Transport for Ssh {
    async fn run(&self, command: &str) -> Result<CmdOutput, TransportError> {
        let _channel = self.inner.channels.acquire().await.expect("never closed");
        let session = self.session().await?;
        self.inner.stats.record(command);
        // The login shell may not be POSIX: hand the line to `sh` as one word.
        let out = match session.raw_command(format!("sh -c {}", quote(command))).output().await {
            Ok(out) => out,
            Err(e) => return Err(self.broken(with_sources(&e)).await),
        };
        // 255 is ssh's own failure, not the command's.
        if out.status.code() == Some(255) && session.check().await.is_err() {
            return Err(self.broken(String::from_utf8_lossy(&out.stderr).trim()).await);
        }
        Ok(CmdOutput {
            status: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn write(&self, remote: &str, data: &[u8]) -> Result<(), TransportError> {
        let sftp = self.sftp().await?;
        let mut fs = sftp.fs();
        match fs.write(remote, data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.sftp_error("writing", remote, e).await),
        }
    }

    async fn put(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        let host = self.host().to_owned();
        let mut source = tokio::fs::File::open(local)
            .await
            .map_err(|e| file_error(&host, "reading", &local.display().to_string(), e))?;
        let sftp = self.sftp().await?;
        let file = match sftp.create(remote).await {
            Ok(file) => file,
            Err(e) => return Err(self.sftp_error("creating", remote, e).await),
        };
        let mut target = Box::pin(TokioCompatFile::new(file));
        let copied = async {
            tokio::io::copy(&mut source, &mut target).await?;
            target.shutdown().await
        };
        // A stream that breaks mid-copy: the connection, most likely.
        copied.await.map_err(|e| self.unreachable(format!("writing `{remote}`: {e}")))
    }

    async fn get(&self, remote: &str, local: &Path, limit: u64) -> Result<Option<u64>, TransportError> {
        let host = self.host().to_owned();
        let sftp = self.sftp().await?;
        let missing = |e: &openssh_sftp_client::Error| {
            matches!(e, openssh_sftp_client::Error::SftpError(openssh_sftp_client::error::SftpErrorKind::NoSuchFile, _))
        };
        // Looked at before it is opened: the SFTP server would wait on a
        // FIFO for a writer that never comes.
        let meta = match sftp.fs().metadata(remote).await {
            Ok(meta) => meta,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(self.sftp_error("looking at", remote, e).await),
        };
        let regular = meta.file_type().is_some_and(|t| t.is_file());
        check_retrievable(regular, meta.len().unwrap_or(0), limit)
            .map_err(|e| file_error(&host, "copying from", remote, e))?;
        let file = match sftp.open(remote).await {
            Ok(file) => file,
            Err(e) if missing(&e) => return Ok(None),
            Err(e) => return Err(self.sftp_error("opening", remote, e).await),
        };
        let source = Box::pin(TokioCompatFile::new(file));
        // A read that fails once the file is open is the connection's
        // failure: it is forgotten, and the next try connects again.
        match copy_capped(source, local, limit).await {
            Ok(copied) => Ok(copied),
            Err(CopyError::Read(e)) => Err(self.broken(format!("reading `{remote}`: {e}")).await),
            Err(e) => Err(e.into_transport(&host, remote, local, |e| self.unreachable(e))),
        }
    }

    fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    fn stats(&self) -> &CommandStats {
        &self.inner.stats
    }

    fn host(&self) -> &str {
        &self.inner.config.destination
    }
}

/// A transport chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyTransport {
    /// The engine runs on the computer.
    Local(Local),
    /// Over SSH.
    Ssh(Ssh),
}

impl Transport for AnyTransport {
    async fn run(&self, command: &str) -> Result<CmdOutput, TransportError> {
        match self {
            AnyTransport::Local(t) => t.run(command).await,
            AnyTransport::Ssh(t) => t.run(command).await,
        }
    }
    async fn write(&self, remote: &str, data: &[u8]) -> Result<(), TransportError> {
        match self {
            AnyTransport::Local(t) => t.write(remote, data).await,
            AnyTransport::Ssh(t) => t.write(remote, data).await,
        }
    }
    async fn put(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        match self {
            AnyTransport::Local(t) => t.put(local, remote).await,
            AnyTransport::Ssh(t) => t.put(local, remote).await,
        }
    }
    async fn get(&self, remote: &str, local: &Path, limit: u64) -> Result<Option<u64>, TransportError> {
        match self {
            AnyTransport::Local(t) => t.get(remote, local, limit).await,
            AnyTransport::Ssh(t) => t.get(remote, local, limit).await,
        }
    }
    fn reachable(&self) -> bool {
        match self {
            AnyTransport::Local(t) => t.reachable(),
            AnyTransport::Ssh(t) => t.reachable(),
        }
    }
    fn host(&self) -> &str {
        match self {
            AnyTransport::Local(t) => t.host(),
            AnyTransport::Ssh(t) => t.host(),
        }
    }
    fn stats(&self) -> &CommandStats {
        match self {
            AnyTransport::Local(t) => t.stats(),
            AnyTransport::Ssh(t) => t.stats(),
        }
    }
}
