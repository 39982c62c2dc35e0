//! The shell process kind: its states and how it reacts to control.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use drover_core::{Process, State, interruptible};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::time::Instant;

use crate::command::{self, signal_group};
use crate::governor::{Governor, Slot};
use crate::spec::ShellSpec;

/// Where a shell process is. States carry their data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellState {
    /// Waiting for the governor to admit its child.
    Queued,
    /// The child runs as the leader of process group `pid`.
    Running {
        /// The child's pid, which is also its process group.
        pid: u32,
        /// When it started.
        started_at: SystemTime,
    },
    /// The child's process group is stopped (`SIGSTOP`) by a pause.
    Paused {
        /// The child's pid.
        pid: u32,
        /// When it started.
        started_at: SystemTime,
    },
    /// The child exited on its own. Whether it succeeded is its exit code's call.
    Finished {
        /// The exit code.
        exit_code: i32,
        /// How long it ran, paused time excluded.
        ran_for: Duration,
    },
    /// The process failed: it could not start, timed out, or its child died of
    /// a signal it did not get from drover.
    Failed {
        /// What went wrong, naming the file, program or limit concerned.
        reason: String,
    },
    /// A kill ended it; its process tree was ended too.
    Killed,
}

impl ShellState {
    /// Whether the child exited with code 0.
    pub fn succeeded(&self) -> bool {
        matches!(self, ShellState::Finished { exit_code: 0, .. })
    }
}

impl State for ShellState {
    fn is_done(&self) -> bool {
        matches!(self, ShellState::Finished { .. } | ShellState::Failed { .. } | ShellState::Killed)
    }

    /// `Paused` says the process group is stopped, so a process restored in
    /// that state is restored paused.
    fn is_paused(&self) -> bool {
        matches!(self, ShellState::Paused { .. })
    }
}

/// A command run where the engine runs, as a tokio child process under a
/// [`Governor`]. See the [crate docs](crate) for how control behaves.
#[derive(Debug)]
pub struct ShellProcess {
    spec: ShellSpec,
    governor: Governor,
    state: ShellState,
    run: Option<Run>,
}

/// A live child and what the process needs to control it.
#[derive(Debug)]
struct Run {
    child: Child,
    pgid: u32,
    /// Running time before the last resume.
    ran: Duration,
    /// When it last started or resumed running.
    since: Instant,
    _slot: Slot,
}

impl Run {
    fn ran_for(&self) -> Duration {
        self.ran + self.since.elapsed()
    }

    /// Ends the whole process group: `SIGTERM` (with `SIGCONT`, so that a
    /// stopped group receives it), up to `grace` for the leader to exit, then
    /// `SIGKILL` for whatever is left. Returns once the leader is reaped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: running it again sends the signals again.
    async fn terminate(&mut self, grace: Duration) {
        signal_group(self.pgid, Signal::SIGTERM);
        signal_group(self.pgid, Signal::SIGCONT);
        let _ = tokio::time::timeout(grace, self.child.wait()).await;
        self.end_group();
        let _ = self.child.wait().await;
    }

    /// Kills what is left of the process group (children the leader left behind).
    fn end_group(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }
}

impl Drop for Run {
    /// No orphans, even when the process is dropped with its runtime.
    fn drop(&mut self) {
        self.end_group();
    }
}

impl ShellProcess {
    /// A shell process that will run `spec` under `governor`.
    pub fn new(spec: ShellSpec, governor: Governor) -> ShellProcess {
        ShellProcess { spec, governor, state: ShellState::Queued, run: None }
    }

    /// What it runs.
    pub fn spec(&self) -> &ShellSpec {
        &self.spec
    }

    async fn start(&mut self) {
        let slot = interruptible(self.governor.acquire()).await;
        match command::start(&self.spec) {
            Ok(started) => {
                let started_at = SystemTime::now();
                self.state = ShellState::Running { pid: started.pid, started_at };
                self.run = Some(Run {
                    child: started.child,
                    pgid: started.pid,
                    ran: Duration::ZERO,
                    since: Instant::now(),
                    _slot: slot,
                });
            }
            Err(e) => self.state = ShellState::Failed { reason: e.to_string() },
        }
    }

    async fn wait(&mut self) {
        let Some(run) = self.run.as_mut() else {
            self.state =
                ShellState::Failed { reason: "the child process is no longer known to this engine".to_owned() };
            return;
        };
        let deadline = self.spec.timeout.map(|t| run.since + t.saturating_sub(run.ran));
        let exited = interruptible(async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, run.child.wait()).await.ok(),
                None => Some(run.child.wait().await),
            }
        })
        .await;
        self.state = match exited {
            Some(Ok(status)) => {
                run.end_group();
                exit_state(status, run.ran_for())
            }
            Some(Err(e)) => {
                run.terminate(self.spec.kill_grace).await;
                ShellState::Failed { reason: format!("cannot wait for the child process: {e}") }
            }
            None => {
                run.terminate(self.spec.kill_grace).await;
                let timeout = self.spec.timeout.unwrap_or_default();
                ShellState::Failed { reason: format!("timed out after {timeout:?} of running time") }
            }
        };
        self.run = None;
    }
}

fn exit_state(status: ExitStatus, ran_for: Duration) -> ShellState {
    if let Some(exit_code) = status.code() {
        return ShellState::Finished { exit_code, ran_for };
    }
    let reason = match status.signal().map(Signal::try_from) {
        Some(Ok(signal)) => format!("the child was terminated by signal {signal}"),
        Some(Err(_)) | None => format!("the child ended abnormally ({status})"),
    };
    ShellState::Failed { reason }
}

impl Process<ShellState> for ShellProcess {
    fn state(&self) -> &ShellState {
        &self.state
    }

    fn transition_to(&mut self, state: ShellState) {
        self.state = state;
    }

    /// Ends the process tree (`SIGTERM`, then `SIGKILL` after the grace period)
    /// and waits for the child to be reaped. A queued process never starts.
    async fn kill(&mut self) {
        if let Some(mut run) = self.run.take() {
            Box::pin(run.terminate(self.spec.kill_grace)).await;
        }
        self.state = ShellState::Killed;
    }

    /// Stops the process group with `SIGSTOP`. A queued process leaves the
    /// governor's queue (the runtime dropped its wait) and stays `Queued`.
    async fn pause(&mut self) {
        if let (ShellState::Running { pid, started_at }, Some(run)) = (&self.state, self.run.as_mut()) {
            signal_group(run.pgid, Signal::SIGSTOP);
            run.ran += run.since.elapsed();
            self.state = ShellState::Paused { pid: *pid, started_at: *started_at };
        }
    }

    /// Continues the process group with `SIGCONT`.
    async fn resume(&mut self) {
        if let (ShellState::Paused { pid, started_at }, Some(run)) = (&self.state, self.run.as_mut()) {
            signal_group(run.pgid, Signal::SIGCONT);
            run.since = Instant::now();
            self.state = ShellState::Running { pid: *pid, started_at: *started_at };
        } else if let ShellState::Paused { .. } = self.state {
            self.state =
                ShellState::Failed { reason: "the paused child process is no longer known to this engine".to_owned() };
        }
    }

    async fn advance(&mut self) {
        match self.state {
            ShellState::Queued => self.start().await,
            // Boxed: at most `max_running` processes wait for a child at once, and
            // the wait's timer and termination would otherwise make every queued
            // process's task as large as a running one's.
            ShellState::Running { .. } => Box::pin(self.wait()).await,
            ShellState::Paused { .. }
            | ShellState::Finished { .. }
            | ShellState::Failed { .. }
            | ShellState::Killed => {}
        }
    }
}
