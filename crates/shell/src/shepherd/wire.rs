//! What the engine and its shepherd say to each other: one JSON message per
//! packet of a `SOCK_SEQPACKET` socket pair, the standard streams of a
//! command to start attached to its request (`SCM_RIGHTS`).
//!
//! Both ends are the same build of drover (the shepherd is the engine's own
//! program, started again), so the messages need no version beyond the
//! hello's, which tells a shepherd from a program that is not one.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::command::OutputFile;
use crate::spec::{Env, Limits};

/// The shepherd's first message, and how an engine knows the program it
/// started is one.
pub(crate) const HELLO: u32 = 1;

/// The environment variable that makes a drover program a shepherd; its
/// value names the descriptor of the shepherd's end of the socket.
pub(crate) const MARKER: &str = "DROVER_SHELL_SHEPHERD";

/// The argument a shepherd is started with (so that `ps` says what it is).
pub(crate) const ARG: &str = "--drover-shell-shepherd";

/// The largest message either side sends: a request's program, arguments
/// and environment changes, as JSON.
pub(crate) const MAX_MESSAGE: usize = 192 * 1024;

/// Start a command.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Start {
    /// The request's number, echoed in every answer about it.
    pub id: u64,
    /// The record to create exclusively: the command's pid, then its exit code.
    pub record: PathBuf,
    /// The program, resolved by the engine.
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Changes to the shepherd's environment, which is the engine's.
    pub env: Env,
    pub cwd: Option<PathBuf>,
    pub limits: Limits,
    /// The soft limit of open files the command gets, if not the shepherd's.
    pub open_files: Option<u64>,
    /// Whether standard input comes attached; else it is `/dev/null`.
    pub stdin: bool,
    /// The files of standard output and error, opened by the shepherd
    /// (`None`: `/dev/null`).
    pub outputs: [Option<OutputFile>; 2],
}

/// What the shepherd tells the engine.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToEngine {
    /// The shepherd runs, speaking this version.
    Hello { version: u32, pid: u32 },
    /// The command of request `id` runs as `pid` (leading its own process
    /// group), which started at `start_ticks` after boot.
    Started { id: u64, pid: u32, start_ticks: Option<u64> },
    /// The command of request `id` did not start.
    Refused { id: u64, why: Refusal },
    /// The command of request `id` ended with `code` (128 + N for signal N,
    /// as a shell reports it), recorded in its record.
    Exited { id: u64, code: i32 },
}

/// Why a command did not start.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// Its record exists: some shepherd or supervisor started it already.
    AlreadyStarted,
    /// Its record could not be made or written (a full disk): it did not run,
    /// and may be started again.
    Unrecorded { message: String },
    /// Output file `n` (0: standard output, 1: standard error) could not be
    /// opened: it did not run.
    Output { n: usize, errno: i32 },
    /// `fork` or `exec` failed with `errno`.
    Spawn { errno: i32, message: String },
}
