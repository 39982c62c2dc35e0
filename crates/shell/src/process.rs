//! The shell process kind: its states and how it reacts to control.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use drover_core::{Process, State, interruptible};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::time::Instant;

use crate::command::{self, signal_group};
use crate::governor::{Governor, Slot};
use crate::ident::{self, ProcessIdentity};
use crate::shepherd::{self, NotSpawned, Refusal};
use crate::spec::ShellSpec;

/// Where a shell process is. States carry their data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShellState {
    /// Waiting for the governor to admit its child.
    Queued,
    /// Admitted, and about to start its child: recorded by older drovers
    /// before a durable child started, and now only while a child whose
    /// `/bin/sh` supervisor could not write its record (a full disk) waits to
    /// start again. A durable process goes from `Queued` to `Running`: its
    /// record, made exclusively before the child starts, is what a restarted
    /// engine re-attaches by.
    Starting,
    /// The child runs as the leader of process group `pid`.
    Running {
        /// The child's pid, which is also its process group.
        pid: u32,
        /// When it started.
        started_at: SystemTime,
        /// What tells the child apart from a later process with its pid
        /// (none in checkpoints from before version 3).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<ProcessIdentity>,
    },
    /// The child's process group is stopped (`SIGSTOP`) by a pause.
    Paused {
        /// The child's pid.
        pid: u32,
        /// When it started.
        started_at: SystemTime,
        /// As in `Running`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<ProcessIdentity>,
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
    /// Durable processes: where the supervisor records the child's pid and
    /// exit code.
    run_dir: Option<PathBuf>,
    /// The governor slot taken in `Queued`, held through `Starting`.
    slot: Option<Slot>,
    /// Restored from a checkpoint: an earlier engine may have started the child.
    restored: bool,
}

/// The leader of a process's group: our own child, or (after the engine
/// restarted) a supervisor started by an earlier engine.
#[derive(Debug)]
enum Leader {
    Child(Child),
    /// A command this process's shepherd started: its end comes as a message.
    Shepherded {
        pid: u32,
        identity: Option<ProcessIdentity>,
        exit: tokio::sync::oneshot::Receiver<i32>,
        /// Its exit code, once received.
        code: Option<i32>,
    },
    Adopted {
        pid: u32,
        identity: ProcessIdentity,
    },
}

/// How long a durable process waits before it starts again a command its
/// supervisor could not record.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// How a leader ended.
enum Exit {
    Status(ExitStatus),
    /// An adopted leader's exit code, from its record; `None` if it
    /// wrote none.
    Recorded(Option<i32>),
}

impl Leader {
    /// Waits for the leader to exit. An adopted one is not our child: its end
    /// is seen by polling `/proc`, its exit code read from its record.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    async fn wait(&mut self, run_dir: Option<&Path>) -> std::io::Result<Exit> {
        if let Leader::Shepherded { pid, identity, exit, code } = self {
            if code.is_none() {
                *code = (&mut *exit).await.ok();
            }
            if code.is_some() {
                return Ok(Exit::Recorded(*code));
            }
            // The shepherd went away first: follow the command as an
            // adopted one, by its record and identity.
            match identity.take() {
                Some(identity) => *self = Leader::Adopted { pid: *pid, identity },
                None => return Ok(Exit::Recorded(run_dir.and_then(recorded_exit))),
            }
        }
        match self {
            Leader::Child(child) => child.wait().await.map(Exit::Status),
            Leader::Shepherded { .. } => unreachable!("a shepherded leader was handled above"),
            Leader::Adopted { pid, identity } => loop {
                // The recorded exit code first: once it is there, the pid
                // says nothing more.
                if let Some(code) = run_dir.and_then(recorded_exit) {
                    return Ok(Exit::Recorded(Some(code)));
                }
                if !ident::is(*pid, identity) {
                    return Ok(Exit::Recorded(run_dir.and_then(recorded_exit)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            },
        }
    }
}

/// Whether `pid` is a live process (a zombie is not).
/// The identity of the supervisor of `run_dir` if `pid` is still it: the
/// recorded `identity`, or (a checkpoint from before identities, or a child
/// not yet recorded running) the process that wrote the pid file.
fn adoptable(pid: u32, identity: Option<&ProcessIdentity>, run_dir: &Path) -> Option<ProcessIdentity> {
    match identity {
        Some(identity) => ident::is(pid, identity).then(|| identity.clone()),
        None => ident::identify_writer(pid, &pid_record(run_dir)),
    }
}

// A supervisor's record is the file `run_dir`: its pid on the first line,
// the command's exit code on the second. Older drovers made `run_dir` a
// directory holding `started`, `pid` and `exit`: such records still read.

/// Where the supervisor's pid is written.
fn pid_record(run_dir: &Path) -> PathBuf {
    if run_dir.is_dir() { run_dir.join("pid") } else { run_dir.to_owned() }
}

fn recorded_exit(run_dir: &Path) -> Option<i32> {
    if run_dir.is_dir() { whole_line(&run_dir.join("exit"), 0) } else { whole_line(run_dir, 1) }
}

fn recorded_pid(run_dir: &Path) -> Option<u32> {
    whole_line(&pid_record(run_dir), 0)
}

/// The number on line `n` of a supervisor's record, once the line is whole
/// (the supervisor may be writing it).
fn whole_line<T: std::str::FromStr>(path: &Path, n: usize) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    let whole = &text[..text.rfind('\n')? + 1];
    whole.lines().nth(n)?.trim().parse().ok()
}

/// A live child and what the process needs to control it.
#[derive(Debug)]
struct Run {
    leader: Leader,
    pgid: u32,
    /// Leave the group running when dropped (a durable child outlives its engine).
    durable: bool,
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
        let _ = tokio::time::timeout(grace, self.leader.wait(None)).await;
        self.end_group();
        let _ = self.leader.wait(None).await;
    }

    /// Kills what is left of the process group (children the leader left behind).
    fn end_group(&mut self) {
        signal_group(self.pgid, Signal::SIGKILL);
    }
}

impl Drop for Run {
    /// No orphans, even when the process is dropped with its runtime; but a
    /// durable child is left running, for the next engine to re-attach.
    fn drop(&mut self) {
        if !self.durable {
            self.end_group();
        }
    }
}

impl ShellProcess {
    /// A shell process that will run `spec` under `governor`.
    pub fn new(spec: ShellSpec, governor: Governor) -> ShellProcess {
        ShellProcess {
            spec,
            governor,
            state: ShellState::Queued,
            run: None,
            run_dir: None,
            slot: None,
            restored: false,
        }
    }

    /// A durable shell process: its child is started by this engine
    /// process's shepherd (or, where there can be none, a small `/bin/sh`
    /// supervisor), which records the child's pid and exit code in the file
    /// `run_dir` (one per process, in a directory made private), and
    /// outlives the engine. A process restored from a checkpoint with
    /// [`ShellProcess::restore`] re-attaches to the child, or reads its exit
    /// code, and never starts it twice.
    ///
    /// The exit code is the shell's: a command killed by signal N reports
    /// 128 + N.
    pub fn durable(spec: ShellSpec, governor: Governor, run_dir: impl Into<PathBuf>) -> ShellProcess {
        ShellProcess { run_dir: Some(run_dir.into()), ..ShellProcess::new(spec, governor) }
    }

    /// A durable process restored in `state` (from a checkpoint) after the
    /// engine restarted.
    pub fn restore(
        spec: ShellSpec,
        governor: Governor,
        run_dir: impl Into<PathBuf>,
        state: ShellState,
    ) -> ShellProcess {
        ShellProcess { state, restored: true, ..ShellProcess::durable(spec, governor, run_dir) }
    }

    /// What it runs.
    pub fn spec(&self) -> &ShellSpec {
        &self.spec
    }

    async fn start(&mut self) {
        let slot = interruptible(self.governor.acquire()).await;
        if self.run_dir.is_some() {
            // The record, made exclusively before the command starts, is what
            // tells a restarted engine it started: no state is recorded first.
            self.slot = Some(slot);
            return Box::pin(self.launch()).await;
        }
        match command::start(&self.spec) {
            Ok(started) => {
                let identity = ident::identify(started.pid);
                self.running(Leader::Child(started.child), started.pid, SystemTime::now(), identity, slot);
            }
            Err(e) => self.state = ShellState::Failed { reason: e.to_string() },
        }
    }

    fn running(
        &mut self,
        leader: Leader,
        pid: u32,
        started_at: SystemTime,
        identity: Option<ProcessIdentity>,
        slot: Slot,
    ) {
        self.state = ShellState::Running { pid, started_at, identity };
        self.run = Some(Run {
            leader,
            pgid: pid,
            durable: self.run_dir.is_some(),
            ran: Duration::ZERO,
            since: Instant::now(),
            _slot: slot,
        });
    }

    /// Starts the durable child (`Queued` with a slot, or `Starting` from an
    /// older checkpoint), unless an earlier engine did: then re-attaches.
    async fn launch(&mut self) {
        let Some(run_dir) = self.run_dir.clone() else { return };
        let slot = match self.slot.take() {
            Some(slot) => slot,
            None => interruptible(self.governor.acquire()).await,
        };
        // Private: the supervisors' records are for this user alone.
        let records = run_dir.parent().unwrap_or(Path::new("."));
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(records) {
            self.state = ShellState::Failed {
                reason: format!("cannot create the supervisors' directory `{}`: {e}", records.display()),
            };
            return;
        }
        let mut shepherd = true;
        while shepherd && !run_dir.exists() {
            let prepared = match command::prepare(&self.spec) {
                Ok(prepared) => prepared,
                Err(e) => {
                    self.state = ShellState::Failed { reason: e.to_string() };
                    return;
                }
            };
            let program = prepared.program.clone();
            match shepherd::spawn(&self.spec, prepared, &run_dir).await {
                Ok(spawned) => {
                    let leader = Leader::Shepherded {
                        pid: spawned.pid,
                        identity: spawned.identity.clone(),
                        exit: spawned.exit,
                        code: None,
                    };
                    self.running(leader, spawned.pid, SystemTime::now(), spawned.identity, slot);
                    return;
                }
                Err(NotSpawned::Refused(Refusal::AlreadyStarted)) => break,
                Err(NotSpawned::Refused(Refusal::Unrecorded { message })) => {
                    tracing::warn!(
                        "{message} (is the disk full?): the command did not run; starting it again in {RESTART_AFTER:?}"
                    );
                    interruptible(tokio::time::sleep(RESTART_AFTER)).await;
                }
                Err(NotSpawned::Refused(Refusal::Output { n, errno })) => {
                    let (stream, output) = if n == 0 {
                        ("standard output", &self.spec.stdout)
                    } else {
                        ("standard error", &self.spec.stderr)
                    };
                    let path = match output {
                        crate::spec::Output::File(path) | crate::spec::Output::Append(path) => path.clone(),
                        crate::spec::Output::Null => PathBuf::new(),
                    };
                    let e = command::output_error(stream, &path, std::io::Error::from_raw_os_error(errno));
                    self.state = ShellState::Failed { reason: e.to_string() };
                    return;
                }
                Err(NotSpawned::Refused(Refusal::Spawn { errno, .. })) => {
                    let e = command::spawn_error(&program, std::io::Error::from_raw_os_error(errno));
                    self.state = ShellState::Failed { reason: e.to_string() };
                    return;
                }
                Err(NotSpawned::NoShepherd) => shepherd = false,
            }
        }
        if !run_dir.exists() {
            match command::start_supervised(&self.spec, &run_dir) {
                Ok(started) => {
                    let since = Instant::now();
                    let mut child = started.child;
                    // Restored: did a supervisor an earlier engine started win the
                    // race for the record? (A fresh process has no rival.)
                    let lost = self.restored
                        && (tokio::time::timeout(Duration::from_millis(50), child.wait()).await)
                            .is_ok_and(|s| s.is_ok_and(|s| s.code() == Some(command::ALREADY_STARTED)));
                    if !lost {
                        let identity = ident::identify(started.pid);
                        self.running(Leader::Child(child), started.pid, SystemTime::now(), identity, slot);
                        if let Some(run) = self.run.as_mut() {
                            run.since = since;
                        }
                        return;
                    }
                }
                Err(e) => {
                    self.state = ShellState::Failed { reason: e.to_string() };
                    return;
                }
            }
        }
        // Started by an earlier engine: re-attach.
        self.adopt(&run_dir, slot).await;
    }

    /// Re-attaches to the supervisor recorded in the state (or in `run_dir`),
    /// or, if it has ended, takes the exit code it recorded. A process that
    /// now has its pid but is not it (a reboot, a wrap of the pid space) is
    /// left alone.
    async fn adopt(&mut self, run_dir: &Path, slot: Slot) {
        // The recorded exit code first: a supervisor that wrote one has
        // ended, whatever process has its pid now.
        if let Some(exit_code) = recorded_exit(run_dir) {
            self.state = ShellState::Finished { exit_code, ran_for: Duration::ZERO };
            return;
        }
        let (recorded, identity) = match &self.state {
            ShellState::Running { pid, identity, .. } | ShellState::Paused { pid, identity, .. } => {
                (Some(*pid), identity.clone())
            }
            _ => (None, None),
        };
        let mut pid = recorded.or_else(|| recorded_pid(run_dir));
        // A supervisor writes its pid right after it starts.
        for _ in 0..20 {
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            pid = recorded_pid(run_dir);
        }
        let started_at = match self.state {
            ShellState::Running { started_at, .. } | ShellState::Paused { started_at, .. } => started_at,
            _ => SystemTime::now(),
        };
        match pid.and_then(|pid| adoptable(pid, identity.as_ref(), run_dir).map(|identity| (pid, identity))) {
            Some((pid, identity)) => {
                let leader = Leader::Adopted { pid, identity: identity.clone() };
                self.running(leader, pid, started_at, Some(identity), slot);
            }
            None => {
                self.state = match recorded_exit(run_dir) {
                    Some(exit_code) => ShellState::Finished { exit_code, ran_for: Duration::ZERO },
                    None => ShellState::Failed {
                        reason: format!(
                            "the child ended while no engine watched it, without an exit code in `{}`",
                            run_dir.display()
                        ),
                    },
                };
            }
        }
    }

    async fn wait(&mut self) {
        if self.run.is_none()
            && let (Some(run_dir), ShellState::Running { .. }) = (self.run_dir.clone(), &self.state)
        {
            // Restored: re-attach to the child an earlier engine started.
            let slot = interruptible(self.governor.acquire()).await;
            self.adopt(&run_dir, slot).await;
            if self.run.is_none() {
                return;
            }
        }
        let run_dir = self.run_dir.clone();
        let Some(run) = self.run.as_mut() else {
            self.state =
                ShellState::Failed { reason: "the child process is no longer known to this engine".to_owned() };
            return;
        };
        let deadline = self.spec.timeout.map(|t| run.since + t.saturating_sub(run.ran));
        let exited = interruptible(async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, run.leader.wait(run_dir.as_deref())).await.ok(),
                None => Some(run.leader.wait(run_dir.as_deref()).await),
            }
        })
        .await;
        // A supervisor that exits as if its record were taken, or as if it
        // could not write it, and left no record, never ran the command (a
        // full disk, no inode left): it is started again, after a while.
        let unrecorded = |status: &ExitStatus| {
            matches!(status.code(), Some(command::ALREADY_STARTED | command::UNRECORDED))
                && run_dir.as_deref().is_some_and(|r| std::fs::symlink_metadata(r).is_err())
        };
        self.state = match exited {
            Some(Ok(Exit::Status(status))) if unrecorded(&status) => {
                run.end_group();
                self.run = None;
                tracing::warn!(
                    record = %run_dir.as_deref().unwrap_or(Path::new("")).display(),
                    "cannot make the supervisor's record (is the disk full?): the command did not run; starting it again in {RESTART_AFTER:?}"
                );
                interruptible(tokio::time::sleep(RESTART_AFTER)).await;
                self.state = ShellState::Starting;
                return;
            }
            Some(Ok(Exit::Status(status))) => {
                run.end_group();
                exit_state(status, run.ran_for())
            }
            Some(Ok(Exit::Recorded(Some(exit_code)))) => {
                run.end_group();
                ShellState::Finished { exit_code, ran_for: run.ran_for() }
            }
            Some(Ok(Exit::Recorded(None))) => {
                run.end_group();
                ShellState::Failed { reason: "the re-attached child ended without recording its exit code".to_owned() }
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
        if self.run.is_none()
            && let Some(run_dir) = self.run_dir.as_deref()
            && recorded_exit(run_dir).is_none()
        {
            // Restored and not re-attached yet: the group is the recorded
            // pid, if that is still the command's leader (and it has not
            // ended). Recorded before `Running` was, it is in the record.
            let recorded = match self.state {
                ShellState::Running { pid, ref identity, .. } | ShellState::Paused { pid, ref identity, .. } => {
                    Some((pid, identity.clone()))
                }
                ShellState::Queued | ShellState::Starting if self.restored => {
                    recorded_pid(run_dir).map(|pid| (pid, None))
                }
                _ => None,
            };
            if let Some((pid, identity)) = recorded
                && let Some(identity) = adoptable(pid, identity.as_ref(), run_dir)
            {
                let run = Run {
                    leader: Leader::Adopted { pid, identity },
                    pgid: pid,
                    durable: true,
                    ran: Duration::ZERO,
                    since: Instant::now(),
                    _slot: self.governor.unlimited_slot(),
                };
                self.run = Some(run);
            }
        }
        if let Some(mut run) = self.run.take() {
            Box::pin(run.terminate(self.spec.kill_grace)).await;
        }
        self.slot = None;
        self.state = ShellState::Killed;
    }

    /// Stops the process group with `SIGSTOP`. A queued process leaves the
    /// governor's queue (the runtime dropped its wait) and stays `Queued`.
    async fn pause(&mut self) {
        if let (ShellState::Running { pid, started_at, identity }, Some(run)) = (&self.state, self.run.as_mut()) {
            signal_group(run.pgid, Signal::SIGSTOP);
            run.ran += run.since.elapsed();
            self.state = ShellState::Paused { pid: *pid, started_at: *started_at, identity: identity.clone() };
        }
    }

    /// Continues the process group with `SIGCONT`.
    async fn resume(&mut self) {
        if let (ShellState::Paused { pid, identity, .. }, None, Some(run_dir)) = (&self.state, &self.run, &self.run_dir)
        {
            // Restored paused: continue the group (if its pid is still the
            // supervisor's), and re-attach at the next step.
            if adoptable(*pid, identity.as_ref(), run_dir).is_some() {
                signal_group(*pid, Signal::SIGCONT);
            }
            if let ShellState::Paused { pid, started_at, identity } = self.state.clone() {
                self.state = ShellState::Running { pid, started_at, identity };
            }
            return;
        }
        if let (ShellState::Paused { pid, started_at, identity }, Some(run)) = (&self.state, self.run.as_mut()) {
            signal_group(run.pgid, Signal::SIGCONT);
            run.since = Instant::now();
            self.state = ShellState::Running { pid: *pid, started_at: *started_at, identity: identity.clone() };
        } else if let ShellState::Paused { .. } = self.state {
            self.state =
                ShellState::Failed { reason: "the paused child process is no longer known to this engine".to_owned() };
        }
    }

    async fn advance(&mut self) {
        match self.state {
            ShellState::Queued => self.start().await,
            ShellState::Starting => Box::pin(self.launch()).await,
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

#[cfg(test)]
mod tests {
    use drover_core::{DriveMode, spawn_owned};

    use super::*;

    /// Where no shepherd can start, each durable command runs under its own
    /// `/bin/sh` supervisor, with the same record: a restart reads the exit
    /// code from it and does not run the command again. (The other tests
    /// of this binary start no durable command.)
    #[test]
    fn without_a_shepherd_a_sh_supervisor_records_the_command() {
        shepherd::do_without();
        let dir = tempfile::tempdir().unwrap();
        let (run_dir, marker) = (dir.path().join("run"), dir.path().join("ran"));
        let spec = ShellSpec::script(format!("echo ran >> '{}'; exit 5", marker.display()));
        let drive = |state: Option<ShellState>| {
            let (spec, run_dir) = (spec.clone(), run_dir.clone());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let process = match state {
                    None => ShellProcess::durable(spec, Governor::new(1), run_dir),
                    Some(state) => ShellProcess::restore(spec, Governor::new(1), run_dir, state),
                };
                let handler = spawn_owned(&local, process, DriveMode::FireAndForget);
                handler.try_nudge().unwrap();
                handler.join().await.unwrap().state().clone()
            })
        };
        let first = drive(None);
        assert!(matches!(first, ShellState::Finished { exit_code: 5, .. }), "{first:?}");
        let record = std::fs::read_to_string(&run_dir).unwrap();
        let lines: Vec<&str> = record.lines().collect();
        assert_eq!(lines.len(), 2, "{record:?}");
        assert!(lines[0].parse::<u32>().is_ok() && lines[1] == "5", "{record:?}");
        // Restored as if the engine had crashed before recording `Running`.
        let again = drive(Some(ShellState::Queued));
        assert!(matches!(again, ShellState::Finished { exit_code: 5, .. }), "{again:?}");
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1, "the command ran twice");
        assert!(!shepherd::started(), "a shepherd ran the command");
    }
}
