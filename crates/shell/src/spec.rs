//! What to run: the inputs of a shell process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The inputs of a shell process: program, arguments, environment, working
/// directory, standard streams, timeout and per-child limits.
///
/// Built with [`ShellSpec::program`] (run directly, no shell involved) or
/// [`ShellSpec::script`] (run through `/bin/sh -c`), then the `with_*` methods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellSpec {
    /// The program: a path, or a name looked up in the child's `PATH`.
    pub program: String,
    /// Its arguments, passed as they are: no shell sees them.
    pub args: Vec<String>,
    /// Changes to the environment the child inherits from the engine.
    pub env: Env,
    /// The working directory; the engine's when `None`.
    pub cwd: Option<PathBuf>,
    /// Standard input.
    pub stdin: Input,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
    /// Running time after which the process tree is ended and the process
    /// fails. Time spent paused does not count.
    pub timeout: Option<Duration>,
    /// How long a tree gets to exit after `SIGTERM` (on kill or timeout) before
    /// `SIGKILL`.
    pub kill_grace: Duration,
    /// Limits applied to the child before it executes the program.
    pub limits: Limits,
}

/// Environment changes, applied in order: clear, remove, set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Env {
    /// Start from an empty environment instead of the engine's.
    pub clear: bool,
    /// Variables to remove.
    pub remove: Vec<String>,
    /// Variables to add or replace.
    pub set: BTreeMap<String, String>,
}

/// Where standard input comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// `/dev/null`.
    #[default]
    Null,
    /// These bytes, then end of file.
    Bytes(Vec<u8>),
    /// This file.
    File(PathBuf),
}

/// Where an output stream goes. Outputs are written by the child straight to
/// their file: the engine never buffers them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// `/dev/null`.
    #[default]
    Null,
    /// This file, created or truncated.
    File(PathBuf),
    /// This file, created or appended to.
    Append(PathBuf),
}

/// Resource limits set in the child (with `setrlimit`) before it executes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU seconds (`RLIMIT_CPU`): the kernel sends `SIGXCPU`, then `SIGKILL`.
    pub cpu_seconds: Option<u64>,
    /// Bytes of address space (`RLIMIT_AS`): allocations beyond it fail.
    pub address_space: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.cpu_seconds.is_some() || self.address_space.is_some()
    }
}

impl ShellSpec {
    /// Runs `program` with `args` directly: no shell parses them.
    pub fn program<I, A>(program: impl Into<String>, args: I) -> ShellSpec
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        ShellSpec {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            env: Env::default(),
            cwd: None,
            stdin: Input::Null,
            stdout: Output::Null,
            stderr: Output::Null,
            timeout: None,
            kill_grace: Duration::from_secs(5),
            limits: Limits::default(),
        }
    }

    /// Runs `script` with `/bin/sh -c`: only for when a shell is wanted
    /// (pipes, redirections, `&`). The script is passed as one argument, never
    /// pasted into a command line.
    pub fn script(script: impl Into<String>) -> ShellSpec {
        ShellSpec::program("/bin/sh", ["-c".to_owned(), script.into()])
    }

    /// Sets the working directory.
    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    /// Sets an environment variable.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.set.insert(key.into(), value.into());
        self
    }

    /// Removes an environment variable.
    pub fn without_env(mut self, key: impl Into<String>) -> Self {
        self.env.remove.push(key.into());
        self
    }

    /// Starts from an empty environment.
    pub fn with_clear_env(mut self) -> Self {
        self.env.clear = true;
        self
    }

    /// Sets standard input.
    pub fn with_stdin(mut self, stdin: Input) -> Self {
        self.stdin = stdin;
        self
    }

    /// Sets standard output.
    pub fn with_stdout(mut self, stdout: Output) -> Self {
        self.stdout = stdout;
        self
    }

    /// Sets standard error.
    pub fn with_stderr(mut self, stderr: Output) -> Self {
        self.stderr = stderr;
        self
    }

    /// Sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the grace period between `SIGTERM` and `SIGKILL`.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets the per-child limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}
