//! The one place that starts external commands (clippy's `disallowed-methods`
//! keeps the rest of the workspace on it): checks the spec, resolves the
//! program, opens the streams, and starts the child in its own process group.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::spec::{Input, Output, ShellSpec};

/// Why a child could not be started. The message names the problem and the path.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The working directory does not exist or is not a directory.
    #[error("working directory `{path}` {problem}")]
    Cwd {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The program was not found.
    #[error("program `{program}` not found{where_}")]
    NotFound {
        /// The program as given.
        program: String,
        /// Where it was looked for.
        where_: String,
    },
    /// The program exists but cannot be executed.
    #[error("program `{}` is not executable: {problem}", path.display())]
    NotExecutable {
        /// The resolved path.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A standard stream's file could not be opened.
    #[error("cannot open {stream} file `{}`: {source}", path.display())]
    Stream {
        /// `standard input`, `standard output` or `standard error`.
        stream: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `fork`/`exec` failed.
    #[error("cannot start `{}`: {source}", path.display())]
    Spawn {
        /// The resolved program.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A started child, the leader of its own process group.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) child: Child,
    pub(crate) pid: u32,
}

/// Runs `spec` to its end and captures its standard output and error, for
/// short commands (both are held in memory; the spec's own output settings are
/// ignored). The child leads its own process group, as every child does.
///
/// # Errors
///
/// [`StartError`] if it cannot be started; `Ok` with its exit status otherwise.
///
/// # Cancel safety
///
/// Dropping the future kills the child.
pub async fn output(spec: &ShellSpec) -> Result<std::process::Output, StartError> {
    let started = start_with(spec, true, None)?;
    let program = spec.program.clone();
    started.child.wait_with_output().await.map_err(|source| StartError::Spawn { path: program.into(), source })
}

/// Starts the child described by `spec`.
pub(crate) fn start(spec: &ShellSpec) -> Result<Started, StartError> {
    start_with(spec, false, None)
}

/// The supervisor of a durable child: a `/bin/sh` that leads the process
/// group, runs the command, and records it in one file, its record: the
/// supervisor's pid on the first line, the command's exit code on the
/// second. Creating the record exclusively (`set -C`: `O_EXCL`) makes sure
/// only one supervisor ever runs the command of a record, whatever crashed in
/// between (an older drover's supervisor made a directory of that name, which
/// fails the same way). Only shell builtins: the command is the one other
/// program it runs, and the record the one file it makes. Each line is one
/// `echo`, one `write`; a reader takes only whole lines. A record it made
/// but cannot write its pid in (a full disk) it removes again, with `rm`,
/// the one program it may run besides the command, then only: the command
/// has not run, and it may be started again.
const SUPERVISOR: &str = r#"r=$0
set -C
: 2>/dev/null >"$r" || exit 97
set +C
echo $$ 2>/dev/null >>"$r" || { rm -f "$r"; exit 96; }
"$@"
code=$?
echo $code >>"$r"
exit $code"#;

/// The exit status of a supervisor that found its command already started
/// (or could not create its record: then there is none).
pub(crate) const ALREADY_STARTED: i32 = 97;

/// The exit status of a supervisor that could not write its record.
pub(crate) const UNRECORDED: i32 = 96;

/// Starts the child described by `spec` under a supervisor that records its
/// pid and exit code in the file `run_dir`, so that it can be re-attached
/// after the engine restarts. The checks and messages are those of [`start`].
pub(crate) fn start_supervised(spec: &ShellSpec, run_dir: &Path) -> Result<Started, StartError> {
    start_with(spec, false, Some(run_dir))
}

/// What the engine opens and checks before a child starts, wherever it is
/// started (here, or by the shepherd): the program found, the streams
/// opened (`None`: `/dev/null`), with the messages of [`StartError`].
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) program: PathBuf,
    pub(crate) stdin: Option<OwnedFd>,
    /// Standard output and error: files the shepherd opens, with
    /// [`open_output_file`], so that the engine's thread creates none.
    pub(crate) outputs: [Option<OutputFile>; 2],
    /// The bytes to write into standard input's pipe once the child runs.
    pub(crate) feed: Option<Feed>,
}

/// Bytes for a child's standard input, and the pipe's end they go into.
#[derive(Debug)]
pub(crate) struct Feed {
    pipe: OwnedFd,
    bytes: Vec<u8>,
}

impl Feed {
    /// Writes the bytes on a thread of their own, then closes the pipe: the
    /// child may read them at its pace, or exit without (a broken pipe is
    /// not an error).
    pub(crate) fn start(self) {
        let Feed { pipe, bytes } = self;
        let _ = std::thread::Builder::new().name("drover-stdin".to_owned()).spawn(move || {
            use std::io::Write;
            let _ = File::from(pipe).write_all(&bytes);
        });
    }
}

/// Checks the working directory, finds the program and opens the streams of
/// `spec` for a child another process starts (the shepherd).
pub(crate) fn prepare(spec: &ShellSpec) -> Result<Prepared, StartError> {
    check_cwd(spec)?;
    let program = resolve(spec)?;
    let (stdin, feed) =
        match &spec.stdin {
            Input::Null => (None, None),
            Input::Bytes(bytes) => {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
                    StartError::Stream { stream: "standard input", path: PathBuf::from("(a pipe)"), source: e.into() }
                })?;
                (Some(read), Some(Feed { pipe: write, bytes: bytes.clone() }))
            }
            Input::File(path) => (Some(input_file(spec, path)?.into()), None),
        };
    let output = |output: &Output| match output {
        Output::Null => None,
        Output::File(path) => Some(OutputFile { path: in_cwd(spec, path), append: false }),
        Output::Append(path) => Some(OutputFile { path: in_cwd(spec, path), append: true }),
    };
    Ok(Prepared { program, stdin, outputs: [output(&spec.stdout), output(&spec.stderr)], feed })
}

/// An output file a child writes, and how it is opened.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct OutputFile {
    /// Where it is (relative to the engine's working directory).
    pub(crate) path: PathBuf,
    /// Appended to, or truncated.
    pub(crate) append: bool,
}

/// Opens an output file as every child's is opened: private, and never
/// through a symlink (one planted where an output goes would have drover
/// write, or truncate, a file of its choosing).
pub(crate) fn open_output_file(file: &OutputFile) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .append(file.append)
        .truncate(!file.append)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&file.path)
}

/// What it means that `stream`'s file `path` (as the spec names it) could not
/// be opened.
pub(crate) fn output_error(stream: &'static str, path: &Path, source: io::Error) -> StartError {
    let source = if source.raw_os_error() == Some(nix::libc::ELOOP) {
        io::Error::other("it is a symbolic link, and drover writes outputs only to files it opens itself")
    } else {
        source
    };
    StartError::Stream { stream, path: path.to_owned(), source }
}

fn check_cwd(spec: &ShellSpec) -> Result<(), StartError> {
    if let Some(cwd) = &spec.cwd {
        match std::fs::metadata(cwd) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(StartError::Cwd { path: cwd.clone(), problem: "is not a directory" }),
            Err(_) => return Err(StartError::Cwd { path: cwd.clone(), problem: "does not exist" }),
        }
    }
    Ok(())
}

fn input_file(spec: &ShellSpec, path: &Path) -> Result<File, StartError> {
    File::open(in_cwd(spec, path)).map_err(|source| StartError::Stream {
        stream: "standard input",
        path: path.to_owned(),
        source,
    })
}

fn start_with(spec: &ShellSpec, capture: bool, run_dir: Option<&Path>) -> Result<Started, StartError> {
    check_cwd(spec)?;
    let program = resolve(spec)?;
    let stdin = match &spec.stdin {
        Input::Null => Stdio::null(),
        Input::Bytes(_) => Stdio::piped(),
        Input::File(path) => Stdio::from(input_file(spec, path)?),
    };
    let output = |output, stream| open_output(spec, output, stream).map(|f| f.map_or_else(Stdio::null, Stdio::from));
    let (stdout, stderr) = if capture {
        (Stdio::piped(), Stdio::piped())
    } else {
        (output(&spec.stdout, "standard output")?, output(&spec.stderr, "standard error")?)
    };

    #[allow(clippy::disallowed_methods)] // this is the wrapper
    let mut cmd = match run_dir {
        None => Command::new(&program),
        Some(dir) => {
            let mut sh = Command::new("/bin/sh");
            sh.arg("-c").arg(SUPERVISOR).arg(dir).arg(&program);
            sh
        }
    };
    // A supervised child must outlive an engine that stops: it is re-attached.
    cmd.args(&spec.args).stdin(stdin).stdout(stdout).stderr(stderr).process_group(0).kill_on_drop(run_dir.is_none());
    set_env(cmd.as_std_mut(), &spec.env, spec.cwd.as_deref());
    let limits = spec.limits;
    let open_files = crate::limits::children_open_files();
    if limits.any() || open_files.is_some() {
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only calls
        // `getrlimit` and `setrlimit`, which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || crate::limits::apply(limits, open_files));
        }
    }
    let mut child = cmd.spawn().map_err(|source| spawn_error(&program, source))?;
    let pid = child.id().expect("a child that was just started has a pid");
    if let Input::Bytes(bytes) = &spec.stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        let bytes = bytes.clone();
        // The child may exit without reading: a broken pipe is not an error.
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
        });
    }
    Ok(Started { child, pid })
}

/// Applies `env` (clear, remove, set, in that order) and the working
/// directory `cwd` to a command about to start, here or in the shepherd.
pub(crate) fn set_env(cmd: &mut std::process::Command, env: &crate::spec::Env, cwd: Option<&Path>) {
    if env.clear {
        cmd.env_clear();
    }
    for key in &env.remove {
        cmd.env_remove(key);
    }
    cmd.envs(&env.set);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
}

/// What a failed `fork`/`exec` of `program` means.
pub(crate) fn spawn_error(program: &Path, source: io::Error) -> StartError {
    match source.raw_os_error() {
        Some(e) if e == nix::errno::Errno::ENOEXEC as i32 => {
            StartError::NotExecutable { path: program.to_owned(), problem: "exec format error".to_owned() }
        }
        Some(e) if e == nix::errno::Errno::EACCES as i32 => {
            StartError::NotExecutable { path: program.to_owned(), problem: "permission denied".to_owned() }
        }
        _ => StartError::Spawn { path: program.to_owned(), source },
    }
}

/// Sends `signal` to the process group `pgid`. Returns whether any process
/// received it.
pub(crate) fn signal_group(pgid: u32, signal: Signal) -> bool {
    match i32::try_from(pgid) {
        Ok(pgid) if pgid > 1 => killpg(Pid::from_raw(pgid), signal).is_ok(),
        _ => false,
    }
}

fn in_cwd(spec: &ShellSpec, path: &Path) -> PathBuf {
    match &spec.cwd {
        Some(cwd) if path.is_relative() => cwd.join(path),
        _ => path.to_owned(),
    }
}

fn open_output(spec: &ShellSpec, output: &Output, stream: &'static str) -> Result<Option<File>, StartError> {
    let (path, append) = match output {
        Output::Null => return Ok(None),
        Output::File(path) => (path, false),
        Output::Append(path) => (path, true),
    };
    open_output_file(&OutputFile { path: in_cwd(spec, path), append })
        .map(Some)
        .map_err(|source| output_error(stream, path, source))
}

/// Finds the program the way `execvp` would, in the child's `PATH` and
/// relative to its working directory, so that a missing or non-executable
/// program gets a precise message before anything is started.
fn resolve(spec: &ShellSpec) -> Result<PathBuf, StartError> {
    let program = &spec.program;
    if program.is_empty() {
        return Err(StartError::NotFound { program: program.clone(), where_: " (the program is empty)".to_owned() });
    }
    if program.contains('/') {
        let path = in_cwd(spec, Path::new(program));
        return match check_executable(&path) {
            Ok(()) => Ok(path),
            Err(None) => Err(StartError::NotFound { program: program.clone(), where_: String::new() }),
            Err(Some(problem)) => Err(StartError::NotExecutable { path, problem }),
        };
    }
    let search = child_path(spec);
    let mut denied = None;
    for dir in std::env::split_paths(&search) {
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        let candidate = in_cwd(spec, &dir.join(program));
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(Some(problem)) => {
                denied.get_or_insert((candidate, problem));
            }
            Err(None) => {}
        }
    }
    match denied {
        Some((path, problem)) => Err(StartError::NotExecutable { path, problem }),
        None => Err(StartError::NotFound {
            program: program.clone(),
            where_: format!(" in PATH `{}`", search.to_string_lossy()),
        }),
    }
}

/// `Err(None)`: nothing there; `Err(Some(why))`: there but not executable.
fn check_executable(path: &Path) -> Result<(), Option<String>> {
    let meta = std::fs::metadata(path).map_err(|_| None)?;
    if meta.is_dir() {
        return Err(Some("it is a directory".to_owned()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Some("it has no execute permission".to_owned()));
    }
    Ok(())
}

/// The `PATH` the child will see.
fn child_path(spec: &ShellSpec) -> OsString {
    if let Some(path) = spec.env.set.get("PATH") {
        return path.into();
    }
    let inherited =
        if spec.env.clear || spec.env.remove.iter().any(|k| k == "PATH") { None } else { std::env::var_os("PATH") };
    inherited.unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into())
}
