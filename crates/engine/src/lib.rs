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
//!
//! The engine also controls its processes by id ([`Engine::pause`],
//! [`Engine::resume`], [`Engine::kill`]), describes them from the store
//! ([`Engine::list`], [`Engine::show`]) and announces every state change on a
//! broadcast channel ([`Engine::changes`]): what a daemon's control API needs.

mod info;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[cfg(feature = "cloud")]
use drover_cloud::{Cloud, CloudProcess, CloudSpec, CloudState};
use drover_core::{DriveMode, Error, Process, ProcessHandler, Recorder, State, spawn_recorded, spawn_recorded_paused};
use drover_scheduler::{Computer, JobSpec, JobState, SchedulerProcess};
use drover_shell::{Governor, ShellProcess, ShellSpec, ShellState};
use drover_store::{Checkpoint, NewProcess, Store, StoreError, StoreRecorder, StoredProcess, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::task::LocalSet;

pub use info::{ProcessDetail, ProcessInfo, Transition};

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
    /// A cloud job on the engine's Kubernetes cluster.
    #[cfg(feature = "cloud")]
    Cloud {
        /// What it runs.
        spec: CloudSpec,
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
    /// A process id that is taken (in the store, or twice in one submission).
    #[error("process `{0}` already exists")]
    Duplicate(String),
    /// An id drover cannot use: it names files and cluster objects.
    #[error("process id `{id}`: {problem}")]
    InvalidId {
        /// The id.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// A cloud job, but the engine has no Kubernetes cluster.
    #[error("cloud job `{id}`: no Kubernetes cluster: {problem}")]
    NoCloud {
        /// The job.
        id: String,
        /// Why there is none.
        problem: String,
    },
}

/// Why a pause, resume or kill by id could not be done.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No process has this id.
    #[error("no process `{0}`")]
    Unknown(String),
    /// The process has ended.
    #[error("process `{id}` has already ended ({state})")]
    Ended {
        /// Its id.
        id: String,
        /// How it ended.
        state: String,
    },
    /// The process is in the store but this engine could not load it.
    #[error("process `{id}` is not running in this engine: {reason}")]
    NotLoaded {
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The runtime refused (a resume cancelled the pause, it panicked, ...).
    #[error("process `{id}`: {error}")]
    Runtime {
        /// Its id.
        id: String,
        /// The runtime's error.
        error: Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A control request, by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pause; returns once the process is paused.
    Pause,
    /// Resume a paused process.
    Resume,
    /// Kill; returns once the process has ended.
    Kill,
}

/// How a process ended, as the engine reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A shell process's final state.
    Shell(ShellState),
    /// A scheduler job's final state.
    Scheduler(JobState),
    /// A cloud job's final state.
    #[cfg(feature = "cloud")]
    Cloud(CloudState),
    /// It ended with a runtime error (panic, aborted).
    Error(Error),
}

impl Outcome {
    /// Whether it succeeded (exit code 0).
    pub fn succeeded(&self) -> bool {
        match self {
            Outcome::Shell(s) => s.succeeded(),
            Outcome::Scheduler(s) => s.succeeded(),
            #[cfg(feature = "cloud")]
            Outcome::Cloud(s) => s.succeeded(),
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
    #[cfg(feature = "cloud")]
    Cloud(ProcessHandler<CloudState, CloudProcess>),
}

/// Runs `$body` with `$h` bound to the handler, whatever the kind.
macro_rules! on_handle {
    ($handle:expr, $h:ident => $body:expr) => {
        match $handle {
            Handle::Shell($h) => $body,
            Handle::Scheduler($h) => $body,
            #[cfg(feature = "cloud")]
            Handle::Cloud($h) => $body,
        }
    };
}

impl Handle {
    /// Waits until the process has ended, and says how.
    async fn outcome(&self) -> Outcome {
        match self {
            Handle::Shell(h) => match h.ended().await {
                Ok(()) => Outcome::Shell(h.state()),
                Err(e) => Outcome::Error(e),
            },
            Handle::Scheduler(h) => match h.ended().await {
                Ok(()) => Outcome::Scheduler(h.state()),
                Err(e) => Outcome::Error(e),
            },
            #[cfg(feature = "cloud")]
            Handle::Cloud(h) => match h.ended().await {
                Ok(()) => Outcome::Cloud(h.state()),
                Err(e) => Outcome::Error(e),
            },
        }
    }

    async fn act(&self, action: Action) -> Result<(), Error> {
        match action {
            Action::Pause => on_handle!(self, h => h.pause().await),
            Action::Resume => on_handle!(self, h => h.resume()),
            Action::Kill => on_handle!(self, h => h.kill().await),
        }
    }
}

/// Records a process's states in the store, then announces each on the
/// engine's broadcast channel (only when someone listens).
struct EngineRecorder<S> {
    store: StoreRecorder<S>,
    template: ProcessInfo,
    changes: broadcast::Sender<ProcessInfo>,
}

impl<S: State + Checkpoint> Recorder<S> for EngineRecorder<S> {
    async fn record(&self, state: &S, paused: bool) {
        self.store.record(state, paused).await;
        if self.changes.receiver_count() > 0 {
            let mut info = self.template.clone();
            info.set_state(&serde_json::to_value(state).unwrap_or_default());
            info.paused = paused;
            info.terminal = state.is_done();
            info.updated_at = now_ms();
            let _ = self.changes.send(info);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// How many changes a slow listener may fall behind before it is told it
/// lagged (and should read the list again).
const CHANGES_CAPACITY: usize = 4096;

/// The engine. See the [crate docs](crate).
pub struct Engine {
    store: Store,
    local: Rc<LocalSet>,
    governor: Governor,
    computers: HashMap<String, Arc<Computer>>,
    run_root: PathBuf,
    handles: Rc<RefCell<HashMap<String, Rc<Handle>>>>,
    changes: broadcast::Sender<ProcessInfo>,
    forget_ended: Cell<bool>,
    /// One batch submission at a time, so that the checks of one hold until
    /// its inserts are done.
    submitting: tokio::sync::Mutex<()>,
    #[cfg(feature = "cloud")]
    cloud: Result<Arc<Cloud>, String>,
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
        Engine {
            store,
            local,
            governor,
            computers,
            run_root: run_root.into(),
            handles: Rc::default(),
            changes: broadcast::channel(CHANGES_CAPACITY).0,
            forget_ended: Cell::new(false),
            submitting: tokio::sync::Mutex::new(()),
            #[cfg(feature = "cloud")]
            cloud: Err("none was given to the engine".to_owned()),
        }
    }

    /// Runs cloud jobs on `cloud`; or, with `Err(why)`, refuses them saying
    /// why there is no cluster (no configuration found, say).
    #[cfg(feature = "cloud")]
    pub fn with_cloud(mut self, cloud: Result<Arc<Cloud>, String>) -> Engine {
        self.cloud = cloud;
        self
    }

    /// The Kubernetes cluster of cloud jobs, if the engine has one.
    #[cfg(feature = "cloud")]
    pub fn cloud(&self) -> Option<&Arc<Cloud>> {
        self.cloud.as_ref().ok()
    }

    #[cfg(feature = "cloud")]
    fn cloud_for(&self, id: &str) -> Result<Arc<Cloud>, EngineError> {
        self.cloud.clone().map_err(|problem| EngineError::NoCloud { id: id.to_owned(), problem })
    }

    /// Lets go of each process once it has ended, so that a long-lived engine
    /// (a daemon) holds only live ones; [`wait_each`](Self::wait_each) and
    /// [`wait_all`](Self::wait_all) then see only processes still running.
    pub fn forget_ended(&self) {
        self.forget_ended.set(true);
    }

    /// Every state change from now on: the changed process's summary. A
    /// receiver that falls more than a few thousand changes behind gets
    /// `Lagged` and should read [`list`](Self::list) again.
    pub fn changes(&self) -> broadcast::Receiver<ProcessInfo> {
        self.changes.subscribe()
    }

    /// The names of the configured computers, sorted.
    pub fn computer_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.computers.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// A configured computer.
    pub fn computer_named(&self, name: &str) -> Option<Arc<Computer>> {
        self.computers.get(name).cloned()
    }

    /// Every process in the store, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>, StoreError> {
        Ok(self.store.list().await?.iter().map(ProcessInfo::from_stored).collect())
    }

    /// One process with its spec and history, if there is one.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn show(&self, id: &str) -> Result<Option<ProcessDetail>, StoreError> {
        let Some(stored) = self.store.get(id).await? else { return Ok(None) };
        let events = self.store.events(id).await?;
        Ok(Some(ProcessDetail::from_stored(&stored, &events)))
    }

    /// Pauses, resumes or kills process `id`; a pause or kill returns once it
    /// has taken effect.
    ///
    /// # Errors
    ///
    /// [`ControlError`]: no such process, it has ended, it could not be
    /// loaded, or the runtime refused.
    pub async fn control(&self, id: &str, action: Action) -> Result<(), ControlError> {
        let handle = self.handles.borrow().get(id).cloned();
        let Some(handle) = handle else {
            let stored = self.store.get(id).await?.ok_or_else(|| ControlError::Unknown(id.to_owned()))?;
            let info = ProcessInfo::from_stored(&stored);
            return Err(if stored.terminal {
                ControlError::Ended { id: id.to_owned(), state: info.state }
            } else {
                let reason = stored.error.unwrap_or_else(|| "it was not resumed".to_owned());
                ControlError::NotLoaded { id: id.to_owned(), reason }
            });
        };
        handle.act(action).await.map_err(|error| match error {
            Error::Finished => ControlError::Ended { id: id.to_owned(), state: "ended".to_owned() },
            error => ControlError::Runtime { id: id.to_owned(), error },
        })?;
        #[cfg(feature = "cloud")]
        if let Handle::Cloud(h) = &*handle
            && let CloudState::Killed { name: Some(name), delete_pending: true } = h.state()
        {
            self.record_when_deleted(id, name);
        }
        Ok(())
    }

    /// Records a killed cloud job's delete as confirmed once the background
    /// delete went through (after a kill now, or one taken up at recovery).
    #[cfg(feature = "cloud")]
    fn record_when_deleted(&self, id: &str, name: String) {
        let Ok(cloud) = self.cloud.clone() else { return };
        let (store, id) = (self.store.clone(), id.to_owned());
        tokio::task::spawn_local(async move {
            let spec = store.get(&id).await.ok().flatten().and_then(|p| serde_json::from_str::<Job>(&p.spec).ok());
            let Some(Job::Cloud { spec }) = spec else { return };
            let namespace = spec.namespace.unwrap_or_else(|| cloud.default_namespace().to_owned());
            while cloud.delete_pending(&namespace, &name) {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            let done = encode(&CloudState::Killed { name: Some(name), delete_pending: false });
            let _ = store.record(&id, done, false, true).await;
        });
    }

    /// Pauses process `id`. See [`control`](Self::control).
    ///
    /// # Errors
    ///
    /// [`ControlError`].
    pub async fn pause(&self, id: &str) -> Result<(), ControlError> {
        self.control(id, Action::Pause).await
    }

    /// Resumes process `id`. See [`control`](Self::control).
    ///
    /// # Errors
    ///
    /// [`ControlError`].
    pub async fn resume(&self, id: &str) -> Result<(), ControlError> {
        self.control(id, Action::Resume).await
    }

    /// Kills process `id`. See [`control`](Self::control).
    ///
    /// # Errors
    ///
    /// [`ControlError`].
    pub async fn kill(&self, id: &str) -> Result<(), ControlError> {
        self.control(id, Action::Kill).await
    }

    /// Records and starts several processes, all or nothing as far as the
    /// input goes: every id and computer is checked before the first is
    /// recorded.
    ///
    /// # Errors
    ///
    /// [`EngineError`]: a duplicate id, an unknown computer (then nothing is
    /// recorded), a store failure.
    pub async fn submit_all(&self, jobs: Vec<(String, Job)>) -> Result<(), EngineError> {
        let _one_at_a_time = self.submitting.lock().await;
        let mut ids = HashSet::new();
        for (id, job) in &jobs {
            if !ids.insert(id.as_str()) || self.store.get(id).await?.is_some() {
                return Err(EngineError::Duplicate(id.clone()));
            }
            self.check(id, job)?;
        }
        for (id, job) in jobs {
            self.submit(&id, job).await?;
        }
        Ok(())
    }

    /// What can be checked of a job before anything is recorded.
    fn check(&self, id: &str, job: &Job) -> Result<(), EngineError> {
        let invalid = |problem: &str| Err(EngineError::InvalidId { id: id.to_owned(), problem: problem.to_owned() });
        if id.is_empty() || id.len() > 200 {
            return invalid("must have 1 to 200 characters");
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return invalid("may hold only letters, digits, `.`, `_` and `-`");
        }
        if id.starts_with('.') || id.contains("..") {
            return invalid("may not start with `.` or hold `..`");
        }
        match job {
            Job::Scheduler { computer, .. } => {
                self.computer(computer)?;
            }
            #[cfg(feature = "cloud")]
            Job::Cloud { spec } => {
                // The spec's id names the pod: two processes must never share one.
                if spec.id != id {
                    return invalid(&format!("a cloud job's spec must carry its process id, not `{}`", spec.id));
                }
                self.cloud_for(id)?;
            }
            Job::Shell { .. } => {}
        }
        Ok(())
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
        self.check(id, &job)?;
        let spec = serde_json::to_string(&job).expect("a job serialises");
        match job {
            Job::Shell { spec: shell } => {
                let new = new_process(id, "shell", spec, &ShellState::Queued);
                self.store.insert(new.clone()).await?;
                let proc = ShellProcess::durable(shell, self.governor.clone(), self.run_root.join(id));
                self.start(id, proc, false, self.template(&new, now_ms()), Handle::Shell);
            }
            Job::Scheduler { computer, spec: job } => {
                let computer = self.computer(&computer)?;
                let new = new_process(id, "scheduler", spec, &JobState::Created);
                self.store.insert(new.clone()).await?;
                let proc = SchedulerProcess::new(job, computer);
                self.start(id, proc, false, self.template(&new, now_ms()), Handle::Scheduler);
            }
            #[cfg(feature = "cloud")]
            Job::Cloud { spec: job } => {
                let cloud = self.cloud_for(id)?;
                let new = new_process(id, "cloud", spec, &CloudState::Created);
                self.store.insert(new.clone()).await?;
                let proc = CloudProcess::new(job, cloud);
                self.start(id, proc, false, self.template(&new, now_ms()), Handle::Cloud);
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
        #[cfg(feature = "cloud")]
        resumed.extend(self.resume_pending_deletes().await?);
        Ok(resumed)
    }

    /// Killed cloud jobs whose delete was still unconfirmed: deleted again in
    /// the background, and recorded once the API confirms.
    #[cfg(feature = "cloud")]
    async fn resume_pending_deletes(&self) -> Result<Vec<String>, EngineError> {
        let mut resumed = Vec::new();
        for stored in self.store.terminal_marked("cloud", "\"delete_pending\":true").await? {
            let Ok(CloudState::Killed { name: Some(name), delete_pending: true }) =
                decode::<CloudState>(&stored.checkpoint)
            else {
                continue;
            };
            let Ok(Job::Cloud { spec }) = serde_json::from_str::<Job>(&stored.spec) else { continue };
            let cloud = match self.cloud_for(&stored.id) {
                Ok(cloud) => cloud,
                Err(e) => {
                    self.store.mark_error(&stored.id, &e.to_string()).await?;
                    continue;
                }
            };
            let namespace = spec.namespace.clone().unwrap_or_else(|| cloud.default_namespace().to_owned());
            cloud.delete_in_background(&namespace, &name, spec.batch_job);
            self.record_when_deleted(&stored.id, name);
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
            match self.restore(&stored) {
                Ok(()) => recovery.resumed.push(stored.id),
                Err(error) => {
                    self.store.mark_error(&stored.id, &error).await?;
                    recovery.failed.push((stored.id, error));
                }
            }
        }
        Ok(recovery)
    }

    fn restore(&self, stored: &StoredProcess) -> Result<(), String> {
        let (id, paused) = (stored.id.as_str(), stored.paused);
        let template = ProcessInfo::from_stored(stored);
        let job: Job = serde_json::from_str(&stored.spec).map_err(|e| format!("unreadable spec: {e}"))?;
        match (stored.kind.as_str(), job) {
            ("shell", Job::Shell { spec }) => {
                let state: ShellState = decode(&stored.checkpoint).map_err(|e| e.to_string())?;
                let proc = ShellProcess::restore(spec, self.governor.clone(), self.run_root.join(id), state);
                self.start(id, proc, paused, template, Handle::Shell);
            }
            ("scheduler", Job::Scheduler { computer, spec }) => {
                let state: JobState = decode(&stored.checkpoint).map_err(|e| e.to_string())?;
                let computer = self.computer(&computer).map_err(|e| e.to_string())?;
                self.start(id, SchedulerProcess::restore(spec, computer, state), paused, template, Handle::Scheduler);
            }
            #[cfg(feature = "cloud")]
            ("cloud", Job::Cloud { spec }) => {
                let state: CloudState = decode(&stored.checkpoint).map_err(|e| e.to_string())?;
                let cloud = self.cloud_for(id).map_err(|e| e.to_string())?;
                self.start(id, CloudProcess::restore(spec, cloud, state), paused, template, Handle::Cloud);
            }
            (kind, _) => return Err(format!("unknown process kind `{kind}`")),
        }
        Ok(())
    }

    /// The summary a new process's changes are announced with.
    fn template(&self, new: &NewProcess, created_at: i64) -> ProcessInfo {
        let stored = StoredProcess {
            id: new.id.clone(),
            kind: new.kind.clone(),
            spec: new.spec.clone(),
            parent: new.parent.clone(),
            checkpoint: new.checkpoint.clone(),
            paused: false,
            terminal: false,
            created_at,
            updated_at: created_at,
            error: None,
        };
        let info = ProcessInfo::from_stored(&stored);
        let _ = self.changes.send(info.clone());
        info
    }

    fn start<S, P>(
        &self,
        id: &str,
        proc: P,
        paused: bool,
        template: ProcessInfo,
        wrap: fn(ProcessHandler<S, P>) -> Handle,
    ) where
        S: State + Checkpoint,
        P: Process<S> + 'static,
    {
        let recorder = EngineRecorder {
            store: StoreRecorder::new(self.store.clone(), id),
            template,
            changes: self.changes.clone(),
        };
        // Paused by a request (not by itself): stays paused, without its hook.
        let h = if paused && !proc.is_paused() {
            spawn_recorded_paused(&self.local, proc, DriveMode::FireAndForget, recorder)
        } else {
            spawn_recorded(&self.local, proc, DriveMode::FireAndForget, recorder)
        };
        let _ = h.try_nudge();
        let handle = Rc::new(wrap(h));
        self.handles.borrow_mut().insert(id.to_owned(), handle.clone());
        if self.forget_ended.get() {
            let id = id.to_owned();
            let map = Rc::downgrade(&self.handles);
            tokio::task::spawn_local(async move {
                handle.outcome().await;
                if let Some(map) = map.upgrade() {
                    map.borrow_mut().remove(&id);
                }
            });
        }
    }

    /// Waits for every process started so far to end, calling `each` as each
    /// one ends (in the order they end), and returns how each ended.
    pub async fn wait_each(&self, mut each: impl FnMut(&str, &Outcome)) -> Vec<(String, Outcome)> {
        let handles = std::mem::take(&mut *self.handles.borrow_mut());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (id, handle) in handles {
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let _ = tx.send((id, handle.outcome().await));
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
            outcomes.push((id, handle.outcome().await));
        }
        outcomes
    }
}

fn new_process<S: Checkpoint>(id: &str, kind: &str, spec: String, state: &S) -> NewProcess {
    NewProcess { id: id.to_owned(), kind: kind.to_owned(), spec, parent: None, checkpoint: encode(state) }
}
