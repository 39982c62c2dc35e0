//! The engine: one place that wires a [`Store`], the process kinds and what
//! they share (the shell governor, the computers), submits processes so that
//! every state they enter is durable, and recovers the unfinished ones after a
//! crash or restart.
//!
//! Recovery resumes every non-terminal process from its checkpoint:
//! - shell processes are durable: a child that outlived the engine is
//!   re-attached, or its recorded exit code is taken; none starts twice;
//! - scheduler jobs continue by job id; an interrupted submit is resolved by
//!   job name;
//! - processes paused by a request stay paused; terminal ones are not loaded,
//!   except killed scheduler jobs whose cancel was still unconfirmed: their
//!   cancel is taken up again until the scheduler confirms;
//! - a process whose checkpoint cannot be read (corrupt, from a newer drover)
//!   or whose computer is no longer configured is marked with the error in the
//!   store, left as it is, and reported; every other process loads and runs.
//!
//! Processes run on the `LocalSet` the engine is given; call the engine's
//! methods from inside that `LocalSet` (they spawn local tasks).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;

use drover_core::{DriveMode, Error, Process, ProcessHandler, State, spawn_recorded, spawn_recorded_paused};
use drover_scheduler::{Computer, JobSpec, JobState, SchedulerProcess};
use drover_shell::{Governor, ShellProcess, ShellSpec, ShellState};
use drover_store::{Checkpoint, NewProcess, Store, StoreError, StoreRecorder, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::task::LocalSet;

/// What a process runs: its spec, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Job {
    /// A local shell process.
    Shell {
        /// What to run.
        spec: ShellSpec,
    },
    /// A scheduler job on a configured computer.
    Scheduler {
        /// The computer's name.
        computer: String,
        /// The job.
        spec: JobSpec,
    },
}

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A scheduler job names a computer the engine does not know.
    #[error("unknown computer `{name}` (known: {known})")]
    UnknownComputer {
        /// The name asked for.
        name: String,
        /// The names configured.
        known: String,
    },
}

/// How a process ended, as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A shell process's final state.
    Shell(ShellState),
    /// A scheduler job's final state.
    Scheduler(JobState),
    /// It ended with a runtime error (panic, aborted).
    Error(Error),
}

impl Outcome {
    /// Whether it succeeded (exit code 0).
    pub fn succeeded(&self) -> bool {
        match self {
            Outcome::Shell(s) => s.succeeded(),
            Outcome::Scheduler(s) => s.succeeded(),
            Outcome::Error(_) => false,
        }
    }
}

/// What recovery did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Processes resumed.
    pub resumed: Vec<String>,
    /// Processes that could not be loaded, with the error they are marked with.
    pub failed: Vec<(String, String)>,
    /// Killed scheduler jobs whose unconfirmed cancel was taken up again.
    pub cancels: Vec<String>,
}

enum Handle {
    Shell(ProcessHandler<ShellState, ShellProcess>),
    Scheduler(ProcessHandler<JobState, SchedulerProcess>),
}

/// The engine. See the [crate docs](crate).
pub struct Engine {
    store: Store,
    local: Rc<LocalSet>,
    governor: Governor,
    computers: HashMap<String, Arc<Computer>>,
    run_root: PathBuf,
    handles: RefCell<Vec<(String, Handle)>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store.location())
            .field("computers", &self.computers.keys().collect::<Vec<_>>())
            .field("processes", &self.handles.borrow().len())
            .finish()
    }
}

impl Engine {
    /// An engine over `store`, running processes on `local`. Durable shell
    /// processes keep their run directories under `run_root`.
    pub fn new(
        store: Store,
        local: Rc<LocalSet>,
        governor: Governor,
        computers: HashMap<String, Arc<Computer>>,
        run_root: impl Into<PathBuf>,
    ) -> Engine {
        Engine { store, local, governor, computers, run_root: run_root.into(), handles: RefCell::default() }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn computer(&self, name: &str) -> Result<Arc<Computer>, EngineError> {
        self.computers.get(name).cloned().ok_or_else(|| {
            let mut known: Vec<&str> = self.computers.keys().map(String::as_str).collect();
            known.sort_unstable();
            EngineError::UnknownComputer { name: name.to_owned(), known: known.join(", ") }
        })
    }

    /// Records a new process `id` and starts it.
    ///
    /// # Errors
    ///
    /// [`EngineError`]: a duplicate id, an unknown computer, a store failure.
    /// Nothing is recorded or started then.
    pub async fn submit(&self, id: &str, job: Job) -> Result<(), EngineError> {
        let spec = serde_json::to_string(&job).expect("a job serialises");
        match job {
            Job::Shell { spec: shell } => {
                self.store.insert(new_process(id, "shell", spec, &ShellState::Queued)).await?;
                let proc = ShellProcess::durable(shell, self.governor.clone(), self.run_root.join(id));
                self.start_shell(id, proc, false);
            }
            Job::Scheduler { computer, spec: job } => {
                let computer = self.computer(&computer)?;
                self.store.insert(new_process(id, "scheduler", spec, &JobState::Created)).await?;
                self.start_scheduler(id, SchedulerProcess::new(job, computer), false);
            }
        }
        Ok(())
    }

    /// Hands the cancels that were still unconfirmed when the last engine
    /// stopped (killed scheduler jobs with `cancel_pending`) to their
    /// computers' cancellers, and records each one once it is confirmed: no
    /// job is left running on a cluster because an engine crashed.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read.
    pub async fn resume_pending_cancels(&self) -> Result<Vec<String>, EngineError> {
        let mut resumed = Vec::new();
        for stored in self.store.terminal_marked("scheduler", "\"cancel_pending\":true").await? {
            let Ok(JobState::Killed { job_id: Some(job_id), cancel_pending: true }) =
                decode::<JobState>(&stored.checkpoint)
            else {
                continue;
            };
            let Ok(Job::Scheduler { computer, .. }) = serde_json::from_str::<Job>(&stored.spec) else { continue };
            let computer = match self.computer(&computer) {
                Ok(computer) => computer,
                Err(e) => {
                    self.store.mark_error(&stored.id, &e.to_string()).await?;
                    continue;
                }
            };
            computer.canceller().cancel_in_background(job_id.clone());
            let (store, id) = (self.store.clone(), stored.id.clone());
            tokio::task::spawn_local(async move {
                while computer.canceller().pending().contains(&job_id) {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                let done = encode(&JobState::Killed { job_id: Some(job_id), cancel_pending: false });
                let _ = store.record(&id, done, false, true).await;
            });
            resumed.push(stored.id);
        }
        Ok(resumed)
    }

    /// Resumes every unfinished process of the store.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read at all; a process
    /// that cannot be loaded is reported in [`Recovery::failed`] instead.
    pub async fn recover(&self) -> Result<Recovery, EngineError> {
        let mut recovery = Recovery { cancels: self.resume_pending_cancels().await?, ..Recovery::default() };
        for stored in self.store.unfinished().await? {
            match self.resume(&stored.id, &stored.kind, &stored.spec, &stored.checkpoint, stored.paused) {
                Ok(()) => recovery.resumed.push(stored.id),
                Err(error) => {
                    self.store.mark_error(&stored.id, &error).await?;
                    recovery.failed.push((stored.id, error));
                }
            }
        }
        Ok(recovery)
    }

    fn resume(&self, id: &str, kind: &str, spec: &str, checkpoint: &str, paused: bool) -> Result<(), String> {
        let job: Job = serde_json::from_str(spec).map_err(|e| format!("unreadable spec: {e}"))?;
        match (kind, job) {
            ("shell", Job::Shell { spec }) => {
                let state: ShellState = decode(checkpoint).map_err(|e| e.to_string())?;
                let proc = ShellProcess::restore(spec, self.governor.clone(), self.run_root.join(id), state);
                self.start_shell(id, proc, paused);
            }
            ("scheduler", Job::Scheduler { computer, spec }) => {
                let state: JobState = decode(checkpoint).map_err(|e| e.to_string())?;
                let computer = self.computer(&computer).map_err(|e| e.to_string())?;
                self.start_scheduler(id, SchedulerProcess::restore(spec, computer, state), paused);
            }
            (kind, _) => return Err(format!("unknown process kind `{kind}`")),
        }
        Ok(())
    }

    fn start_shell(&self, id: &str, proc: ShellProcess, paused: bool) {
        let h = self.spawn(id, proc, paused);
        self.handles.borrow_mut().push((id.to_owned(), Handle::Shell(h)));
    }

    fn start_scheduler(&self, id: &str, proc: SchedulerProcess, paused: bool) {
        let h = self.spawn(id, proc, paused);
        self.handles.borrow_mut().push((id.to_owned(), Handle::Scheduler(h)));
    }

    fn spawn<S, P>(&self, id: &str, proc: P, paused: bool) -> ProcessHandler<S, P>
    where
        S: State + Checkpoint,
        P: Process<S> + 'static,
    {
        let recorder = StoreRecorder::new(self.store.clone(), id);
        // Paused by a request (not by itself): stays paused, without its hook.
        let h = if paused && !proc.is_paused() {
            spawn_recorded_paused(&self.local, proc, DriveMode::FireAndForget, recorder)
        } else {
            spawn_recorded(&self.local, proc, DriveMode::FireAndForget, recorder)
        };
        let _ = h.try_nudge();
        h
    }

    /// Waits for every process started so far to end, calling `each` as each
    /// one ends (in the order they end), and returns how each ended.
    pub async fn wait_each(&self, mut each: impl FnMut(&str, &Outcome)) -> Vec<(String, Outcome)> {
        let handles = std::mem::take(&mut *self.handles.borrow_mut());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (id, handle) in handles {
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let _ = tx.send((id, join(handle).await));
            });
        }
        drop(tx);
        let mut outcomes = Vec::new();
        while let Some((id, outcome)) = rx.recv().await {
            each(&id, &outcome);
            outcomes.push((id, outcome));
        }
        outcomes
    }

    /// Waits for every process started so far to end, and reports how each ended.
    pub async fn wait_all(&self) -> Vec<(String, Outcome)> {
        let handles = std::mem::take(&mut *self.handles.borrow_mut());
        let mut outcomes = Vec::with_capacity(handles.len());
        for (id, handle) in handles {
            outcomes.push((id, join(handle).await));
        }
        outcomes
    }
}

async fn join(handle: Handle) -> Outcome {
    match handle {
        Handle::Shell(h) => match h.join().await {
            Ok(p) => Outcome::Shell(p.state().clone()),
            Err(e) => Outcome::Error(e),
        },
        Handle::Scheduler(h) => match h.join().await {
            Ok(p) => Outcome::Scheduler(p.state().clone()),
            Err(e) => Outcome::Error(e),
        },
    }
}

fn new_process<S: Checkpoint>(id: &str, kind: &str, spec: String, state: &S) -> NewProcess {
    NewProcess { id: id.to_owned(), kind: kind.to_owned(), spec, parent: None, checkpoint: encode(state) }
}
