//! Local shell processes: commands run where the engine runs, as tokio child
//! processes, under a [`Governor`] so that thousands of them never drain the
//! machine or starve the engine.
//!
//! A [`ShellProcess`] runs one [`ShellSpec`]: a program with its arguments (run
//! directly; through `/bin/sh -c` only with [`ShellSpec::script`]), environment
//! changes, a working directory, standard input from bytes or a file, standard
//! output and error written by the child straight to files (never buffered by
//! the engine), an optional timeout and per-child resource limits.
//!
//! # States
//!
//! `Queued` → `Running { pid, started_at }` → `Finished { exit_code, ran_for }`,
//! or `Failed { reason }`, or `Killed`; `Paused { pid, started_at }` while a
//! pause holds the child stopped. A non-zero exit code is `Finished`: the
//! process ran to its end; [`ShellState::succeeded`] tells success.
//!
//! # Control
//!
//! The child leads its own process group, and every signal goes to the whole
//! group, so control reaches every process the command started:
//!
//! - **pause** while running sends `SIGSTOP` to the group; **resume** sends
//!   `SIGCONT`. A paused child keeps its governor slot. A queued process that is
//!   paused leaves the queue, stays `Queued`, and queues again on resume.
//! - **kill** sends `SIGTERM` (and `SIGCONT`, so that a stopped group gets it),
//!   waits up to [`ShellSpec::kill_grace`] for the child to exit, then sends
//!   `SIGKILL` to whatever is left of the group, and reaps the child. A queued
//!   process that is killed never starts.
//! - a **timeout** counts running time only (not time paused) and ends the tree
//!   the same way; the process ends `Failed` with the reason.
//! - when the child exits on its own, what it left behind in its group is killed
//!   too; when a process is dropped with its runtime, its group is killed.
//!   Nothing is left running. A command that must outlive its job has to leave
//!   the group itself (`setsid`).
//!
//! # Durable processes
//!
//! [`ShellProcess::durable`] runs the child so that it outlives the engine:
//! the engine's shepherd (one small process per engine process, the
//! engine's own program started again) creates the child's record
//! exclusively, starts the child, and records its pid and exit code there,
//! also after the engine has stopped or crashed. A process restored with
//! [`ShellProcess::restore`] re-attaches to its child (or reads the exit code
//! it recorded) and never starts it twice: whoever created the record is the
//! only one that runs the command, and a restored process that finds a
//! record re-attaches, whatever state was recorded. Where the program cannot
//! host a shepherd, a `/bin/sh` supervisor per child does the same.
//! The child's identity ([`ProcessIdentity`]: the boot and its start time)
//! is recorded with its pid, so that a process that got the pid after a
//! reboot or a pid wrap is never re-attached, paused or killed.
//!
//! # The governor
//!
//! At most [`Governor::max_running`] children run at once (default: the number
//! of CPUs); the others wait in FIFO order holding neither a child nor a pipe.
//! With [`Governor::with_memory_guard`] no child starts while the machine's
//! available memory is under a threshold. Per-child limits
//! ([`Limits`]: CPU seconds, address space) are set in the child before it
//! executes the program.
//!
//! # Bad input
//!
//! A program that does not exist or cannot be executed, a missing working
//! directory, an input file that cannot be read or an output file that cannot
//! be written end only the process concerned, as `Failed` with a message that
//! names the problem and the path.
//!
//! # Example
//!
//! ```
//! use drover_core::{spawn_owned, DriveMode};
//! use drover_shell::{Governor, ShellProcess, ShellSpec, ShellState};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let local = tokio::task::LocalSet::new();
//! local.run_until(async {
//!     let governor = Governor::new(4);
//!     let spec = ShellSpec::program("sh", ["-c", "exit 3"]);
//!     let handler = spawn_owned(&local, ShellProcess::new(spec, governor), DriveMode::FireAndForget);
//!     handler.try_nudge().unwrap();
//!     let done = handler.join().await.unwrap();
//!     assert!(matches!(done.state(), ShellState::Finished { exit_code: 3, .. }));
//! # use drover_core::Process;
//! }).await;
//! # });
//! ```

mod command;
mod governor;
mod ident;
mod kind;
mod limits;
mod process;
mod shepherd;
mod spec;

pub use command::{StartError, output};
pub use governor::Governor;
pub use ident::ProcessIdentity;
pub use kind::{ShellEnv, ShellJob, ShellKind};
pub use limits::raise_open_files_limit;
pub use process::{ShellProcess, ShellState};
pub use spec::{Env, Input, Limits, Output, ShellSpec};
