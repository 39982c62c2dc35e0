//! The engine: one place that wires a [`Store`], the process kinds and what
//! they share (the shell governor, the computers), submits processes so that
//! every state they enter is durable, and recovers the unfinished ones after a
//! crash or restart.
//!
//! Every kind of process is one implementation of [`drover_kind::Kind`],
//! listed once in `kinds.rs`; the engine drives them all the same way.
//!
//! Every unfinished process has an owner: the engine that claimed it, at an
//! epoch that every checkpoint write is fenced by, under a lease the engine
//! renews by heartbeat (timed by the database's clock). An engine recovers
//! only its own processes and those of its pool whose owner's lease expired;
//! a write of an engine that lost its claim is refused, and that engine stops
//! driving the process at once.
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
//!
//! [`prune`] removes ended processes from a store, with their events and
//! their files in the data directory, with or without an engine.

mod info;
mod inner;
mod kinds;
mod prune;

use std::collections::HashSet;
use std::rc::Rc;

use drover_core::Error;
use drover_kind::{Ended, Kind, RemoteRead};
use drover_store::{NewProcess, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::LocalSet;

pub use drover_kind::{Job, Stream};
/// Raises the engine's limit of open files; the jobs it starts keep the old one.
pub use drover_shell::raise_open_files_limit;
pub use info::{ProcessDetail, ProcessInfo, Transition};
pub use inner::{DEFAULT_LEASE, Identity, hostname};
pub use kinds::{KindInfo, Kinds, all as kinds, plan, sections};
pub use prune::{MAX_AGE, MAX_NAMED, MIN_AGE, PruneOptions, PruneReport, check_age, parse_age, prune};

use inner::Inner;
use kinds::Start;

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// The job's kind refused it (an unknown computer, no cluster), or the
    /// engine does not run its kind.
    #[error("{kind} job `{id}`: {problem}")]
    Refused {
        /// The job's kind.
        kind: String,
        /// The job.
        id: String,
        /// Why.
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
    /// The process is in the store but this engine does not drive it.
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
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    kind: &'static str,
    result: Result<(Ended, Value), Error>,
}

impl Outcome {
    pub(crate) fn new(kind: &'static str, result: Result<(Ended, Value), Error>) -> Outcome {
        Outcome { kind, result }
    }

    /// Whether it succeeded (exit code 0).
    pub fn succeeded(&self) -> bool {
        self.result.as_ref().is_ok_and(|(e, _)| e.succeeded)
    }

    /// A few words on how it ended: `exit 0, 1.20 s`, why it failed, the
    /// runtime's error.
    pub fn summary(&self) -> String {
        match &self.result {
            Ok((ended, _)) => ended.summary.clone(),
            Err(e) => e.to_string(),
        }
    }

    /// Its kind's name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Its final state, if it is of kind `K` and ended without a runtime error.
    pub fn state<K: Kind>(&self) -> Option<K::State> {
        let (_, state) = self.result.as_ref().ok().filter(|_| self.kind == K::NAME)?;
        serde_json::from_value(state.clone()).ok()
    }

    /// The runtime's error, if it ended with one (a panic).
    pub fn error(&self) -> Option<&Error> {
        self.result.as_ref().err()
    }
}

/// What recovery did.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Processes resumed.
    pub resumed: Vec<String>,
    /// Processes that could not be loaded, with the error they are marked with.
    pub failed: Vec<(String, String)>,
    /// Ended processes whose work left to finish (a cancel or a delete to
    /// confirm) was taken up again.
    pub cancels: Vec<String>,
    /// Processes bound to another host (local shell processes of an engine
    /// elsewhere), marked lost, with the reason.
    pub lost: Vec<(String, String)>,
}

/// A chunk of a process's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRead {
    /// The bytes from the offset asked for.
    pub bytes: Vec<u8>,
    /// Where they were read.
    pub source: String,
}

/// Why a log could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// No such process, or the log is not kept.
    #[error("{0}")]
    NotFound(String),
    /// Where the process runs could not be read.
    #[error("{0}")]
    Remote(String),
    /// The local file could not be read.
    #[error("{0}")]
    Local(String),
}

/// Checks an id drover can use: it names files and cluster objects.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 200 {
        return Err("must have 1 to 200 characters".to_owned());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("may hold only letters, digits, `.`, `_` and `-`".to_owned());
    }
    if id.starts_with('.') || id.contains("..") {
        return Err("may not start with `.` or hold `..`".to_owned());
    }
    Ok(())
}

/// The engine. See the [crate docs](crate).
pub struct Engine {
    inner: Rc<Inner>,
    /// One batch submission at a time, so that the checks of one hold until
    /// its inserts are done.
    submitting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.inner.store.location())
            .field("identity", &self.inner.identity)
            .field("kinds", &self.inner.kinds)
            .field("processes", &self.inner.handles.borrow().len())
            .finish()
    }
}

impl Engine {
    /// An engine over `store`, running processes of `kinds` on `local`, in
    /// the `daemon` pool with a fresh id.
    pub fn new(store: Store, local: Rc<LocalSet>, kinds: Kinds) -> Engine {
        Engine::with_identity(store, local, kinds, Identity::fresh("daemon"))
    }

    /// An engine with the given identity.
    pub fn with_identity(store: Store, local: Rc<LocalSet>, kinds: Kinds, identity: Identity) -> Engine {
        Engine { inner: Inner::new(store, local, kinds, identity), submitting: tokio::sync::Mutex::new(()) }
    }

    /// Who this engine is in the store.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// Resolves once this engine's lease was lost (its heartbeat found it
    /// expired): it drives nothing more, and should stop.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn lease_lost(&self) {
        let mut rx = self.inner.lost.subscribe();
        let _ = rx.wait_for(|lost| *lost).await;
    }

    /// Lets go of each process once it has ended, so that a long-lived engine
    /// (a daemon) holds only live ones; [`wait_each`](Self::wait_each) and
    /// [`wait_all`](Self::wait_all) then see only processes still running.
    pub fn forget_ended(&self) {
        self.inner.forget_ended.set(true);
    }

    /// Every state change from now on: the changed process's summary. A
    /// receiver that falls more than a few thousand changes behind gets
    /// `Lagged` and should read [`list`](Self::list) again.
    pub fn changes(&self) -> broadcast::Receiver<ProcessInfo> {
        self.inner.changes.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Every process in the store, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn list(&self) -> Result<Vec<ProcessInfo>, StoreError> {
        Ok(self.inner.store.list().await?.iter().map(ProcessInfo::from_stored).collect())
    }

    /// One process with its spec, its description by its kind, its children
    /// and its history, if there is one.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read.
    pub async fn show(&self, id: &str) -> Result<Option<ProcessDetail>, StoreError> {
        let Some(stored) = self.inner.store.get(id).await? else { return Ok(None) };
        let events = self.inner.store.events(id).await?;
        let mut detail = ProcessDetail::from_stored(&stored, &events);
        if let Ok(job) = serde_json::from_str::<Job>(&stored.spec)
            && let Some(kind) = kinds::all().into_iter().find(|k| k.name() == job.kind())
        {
            detail.describe = kind.describe(&job).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        }
        detail.children = self.inner.store.children(id).await?.iter().map(ProcessInfo::from_stored).collect();
        Ok(Some(detail))
    }

    /// Reads `stream` of process `id` from byte `offset` (at most `max`
    /// bytes): its local file where there is one, else where it runs.
    ///
    /// # Cancel safety
    ///
    /// Dropping it abandons the read.
    ///
    /// # Errors
    ///
    /// [`LogError`]: no such process or log, a remote or local read failed.
    pub async fn log(&self, id: &str, stream: Stream, offset: u64, max: u64) -> Result<LogRead, LogError> {
        let stored = self
            .inner
            .store
            .get(id)
            .await
            .map_err(|e| LogError::Local(e.to_string()))?
            .ok_or_else(|| LogError::NotFound(format!("no process `{id}`")))?;
        let job: Job = serde_json::from_str(&stored.spec)
            .map_err(|e| LogError::Local(format!("the spec of `{id}` cannot be read: {e}")))?;
        let kind = self.inner.kinds.get(job.kind()).map_err(LogError::NotFound)?;
        let name = if stream == Stream::Stdout { "stdout" } else { "stderr" };
        let plan = kind.logs(&job, stream).map_err(|why| LogError::NotFound(format!("the {name} of `{id}` {why}")))?;
        match read_from(&plan.local, offset, max) {
            Ok(bytes) => return Ok(LogRead { bytes, source: plan.local.display().to_string() }),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(LogError::Local(format!("{}: {e}", plan.local.display())));
            }
            Err(_) => {}
        }
        if stored.terminal
            && let Some(why_not) = plan.why_not.as_ref().filter(|p| p.exists())
        {
            let why = std::fs::read_to_string(why_not).unwrap_or_default();
            return Err(LogError::NotFound(format!("no logs could be had: {}", why.trim())));
        }
        let read = RemoteRead { stream, offset, max, terminal: stored.terminal };
        match kind.remote_log(&job, read).await {
            Some(Ok(remote)) => Ok(LogRead { bytes: remote.bytes, source: remote.source }),
            Some(Err(e)) => Err(LogError::Remote(e)),
            // Not written yet (queued), or never written.
            None => Ok(LogRead { bytes: Vec::new(), source: plan.local.display().to_string() }),
        }
    }

    /// Pauses, resumes or kills process `id`; a pause or kill returns once it
    /// has taken effect. A kill reaches the process's live children first
    /// (the parent is paused meanwhile, so their ends do not move it on); a
    /// pause or resume reaches them too.
    ///
    /// # Cancel safety
    ///
    /// Dropping it leaves the request in effect where it was made.
    ///
    /// # Errors
    ///
    /// [`ControlError`]: no such process, it has ended, this engine does not
    /// drive it, or the runtime refused.
    pub async fn control(&self, id: &str, action: Action) -> Result<(), ControlError> {
        let handle = self.inner.handles.borrow().get(id).cloned();
        let Some(handle) = handle else {
            let stored = self.inner.store.get(id).await?.ok_or_else(|| ControlError::Unknown(id.to_owned()))?;
            let info = ProcessInfo::from_stored(&stored);
            return Err(if stored.terminal {
                ControlError::Ended { id: id.to_owned(), state: info.state }
            } else {
                let reason = stored.error.unwrap_or_else(|| match &stored.owner {
                    Some(owner) if *owner != self.inner.identity.id => format!("engine `{owner}` drives it"),
                    _ => "it was not resumed".to_owned(),
                });
                ControlError::NotLoaded { id: id.to_owned(), reason }
            });
        };
        let runtime = |error: Error| match error {
            Error::Finished => ControlError::Ended { id: id.to_owned(), state: "ended".to_owned() },
            error => ControlError::Runtime { id: id.to_owned(), error },
        };
        if action == Action::Kill && !self.inner.live_children(id).is_empty() {
            // Held still while its children end, so that their ends do
            // not move it on; a parent that ended meanwhile is fine.
            let _ = handle.act(Action::Pause).await;
        }
        self.inner.reach_children(id, action).await;
        handle.act(action).await.map_err(runtime)
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

    /// Checks a job before anything is recorded: its id, its kind, and what
    /// its kind checks (its computer is configured, its cluster reachable).
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidId`], [`EngineError::Refused`].
    pub fn check(&self, id: &str, job: &Job) -> Result<(), EngineError> {
        check_id(id).map_err(|problem| EngineError::InvalidId { id: id.to_owned(), problem })?;
        let refused = |problem| EngineError::Refused { kind: job.kind().to_owned(), id: id.to_owned(), problem };
        self.inner.kinds.get(job.kind()).map_err(refused)?.check(id, job).map_err(refused)
    }

    /// Records and starts several processes, all or nothing: every id and job
    /// is checked, and then every process recorded in one transaction,
    /// before the first starts. A refused job, a taken id or a store error
    /// (locked, full, disconnected) leaves nothing recorded.
    ///
    /// # Cancel safety
    ///
    /// Dropping it once the processes are recorded leaves them recorded but
    /// not started; this engine's next [`recover`](Self::recover) starts them.
    ///
    /// # Errors
    ///
    /// [`EngineError`]: a duplicate id, a refused job, a store failure;
    /// nothing is recorded then.
    pub async fn submit_all(&self, jobs: Vec<(String, Job)>) -> Result<(), EngineError> {
        let _one_at_a_time = self.submitting.lock().await;
        let mut ids = HashSet::new();
        for (id, job) in &jobs {
            if !ids.insert(id.as_str()) {
                return Err(EngineError::Duplicate(id.clone()));
            }
            self.check(id, job)?;
        }
        self.inner.register().await?;
        let mut news = Vec::with_capacity(jobs.len());
        let mut starts = Vec::with_capacity(jobs.len());
        for (id, job) in jobs {
            let new = self.new_process(&id, &job).await?;
            if new.owner.is_some() {
                starts.push((id, job));
            } else {
                // Left for the engine that holds its place to claim.
                let _ = self.inner.template(&id, job.kind(), &job, None);
            }
            news.push(new);
        }
        self.inner.store.insert_all(news).await.map_err(|e| match e {
            StoreError::Duplicate(id) => EngineError::Duplicate(id),
            e => e.into(),
        })?;
        // Every one is started, even after one could not be: a process left
        // recorded and not started is started by the next recovery.
        let mut first = Ok(());
        for (id, job) in starts {
            let kind = job.kind().to_owned();
            let template = self.inner.template(&id, &kind, &job, None);
            let start =
                Start { id: id.clone(), job, checkpoint: None, paused: false, epoch: 1, template, binding: None };
            if let Err(problem) = self.inner.start(start) {
                first = first.and(Err(EngineError::Refused { kind, id, problem }));
            }
        }
        first
    }

    /// Records a new process `id`, owned by this engine, and starts it. As
    /// [`submit_all`](Self::submit_all) with one job.
    ///
    /// # Cancel safety
    ///
    /// Dropping it after the insert leaves the process recorded but not
    /// started; this engine's next [`recover`](Self::recover) starts it.
    ///
    /// # Errors
    ///
    /// [`EngineError`]: a duplicate id, a refused job, a store failure.
    /// Nothing is recorded or started then.
    pub async fn submit(&self, id: &str, job: Job) -> Result<(), EngineError> {
        self.submit_all(vec![(id.to_owned(), job)]).await
    }

    /// The row of a new, checked process: owned by this engine, or by none
    /// when another engine of the pool holds its place (that engine claims
    /// it, so that its cluster sees one engine).
    async fn new_process(&self, id: &str, job: &Job) -> Result<NewProcess, EngineError> {
        let kind = self.inner.kinds.get(job.kind()).expect("checked");
        let refused = |problem| EngineError::Refused { kind: job.kind().to_owned(), id: id.to_owned(), problem };
        let checkpoint = kind.initial(job).map_err(refused)?;
        let spec = serde_json::to_string(job).expect("a job serialises");
        let mut new = NewProcess::new(id, job.kind(), spec, checkpoint);
        new.owner = Some(self.inner.identity.id.clone());
        new.host = kind.binding();
        new.place = kind.info().place(job);
        if let Some(place) = new.place.as_ref().filter(|_| self.inner.shares()) {
            let lease = format!("{}:{place}", job.kind());
            if !self.inner.held.borrow().contains(&lease) {
                let holder = self.inner.store.acquire(&lease, &self.inner.identity.id).await?;
                if holder == self.inner.identity.id {
                    self.inner.held.borrow_mut().insert(lease);
                } else {
                    tracing::info!(process = %id, engine = %holder, "handed to the engine that holds {lease}");
                    new.owner = None;
                    new.host = None;
                }
            }
        }
        Ok(new)
    }

    /// Takes up the work that ended processes left (cancels and deletes not
    /// yet confirmed when the last engine stopped), and records each once it
    /// is done: no job is left running on a cluster because an engine crashed.
    async fn resume_pending_work(&self) -> Result<Vec<String>, EngineError> {
        Ok(self.inner.resume_pending_work(true).await?)
    }

    /// Claims and resumes the store's unfinished processes that are this
    /// engine's own, or of its pool with an expired lease; children come
    /// with their parents.
    ///
    /// # Cancel safety
    ///
    /// Dropping it may leave processes claimed but not started; the next
    /// call starts them.
    ///
    /// # Errors
    ///
    /// [`EngineError::Store`] when the store cannot be read at all; a process
    /// that cannot be loaded is reported in [`Recovery::failed`] instead.
    pub async fn recover(&self) -> Result<Recovery, EngineError> {
        self.inner.register().await?;
        self.inner.acquire_places().await?;
        let mut recovery = Recovery { cancels: self.resume_pending_work().await?, ..Recovery::default() };
        let identity = &self.inner.identity;
        let claimed = self.inner.store.claim(&identity.id, &identity.pool, i64::MAX, true).await?;
        self.inner.take_over(claimed, &mut recovery).await;
        Ok(recovery)
    }

    /// Shares work with the other engines of its pool, from now on: every
    /// `every`, it renews the place leases it can take and claims (`FOR
    /// UPDATE SKIP LOCKED` on PostgreSQL) up to `batch` processes nobody
    /// drives: new ones handed to it, and those of engines whose lease
    /// expired. For engines of pool `daemon` only; others return at once.
    pub fn share(&self, every: std::time::Duration, batch: i64) {
        if !self.inner.shares() {
            return;
        }
        let weak = Rc::downgrade(&self.inner);
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                if *inner.lost.borrow() {
                    return;
                }
                let result: Result<Recovery, StoreError> = async {
                    inner.acquire_places().await?;
                    // The cancels and deletes a dead engine left to confirm.
                    inner.resume_pending_work(false).await?;
                    let claimed = inner.store.claim(&inner.identity.id, &inner.identity.pool, batch, false).await?;
                    let mut recovery = Recovery::default();
                    inner.take_over(claimed, &mut recovery).await;
                    Ok(recovery)
                }
                .await;
                match result {
                    Ok(r) if !(r.resumed.is_empty() && r.lost.is_empty() && r.failed.is_empty()) => {
                        tracing::info!(
                            resumed = r.resumed.len(),
                            lost = r.lost.len(),
                            failed = r.failed.len(),
                            "claimed"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "claiming failed"),
                }
            }
        });
    }

    /// The engines that registered in the store, with whether they live and
    /// how many unfinished processes each owns.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn engines(&self) -> Result<Vec<drover_store::EngineRecord>, StoreError> {
        self.inner.store.engines().await
    }

    /// The places (`kind:computer`) whose lease this engine holds.
    pub fn held_places(&self) -> Vec<String> {
        let mut held: Vec<String> = self.inner.held.borrow().iter().cloned().collect();
        held.sort_unstable();
        held
    }

    /// Waits for every process started so far to end, calling `each` as each
    /// one ends (in the order they end), and returns how each ended.
    ///
    /// # Cancel safety
    ///
    /// Dropping it stops the waiting; the processes run on.
    pub async fn wait_each(&self, mut each: impl FnMut(&str, &Outcome)) -> Vec<(String, Outcome)> {
        // Kept in the map: they stay under control (a kill by id) meanwhile.
        let handles: Vec<(String, Rc<dyn kinds::Live>)> =
            self.inner.handles.borrow().iter().map(|(id, h)| (id.clone(), h.clone())).collect();
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
    ///
    /// # Cancel safety
    ///
    /// Dropping it stops the waiting; the processes run on.
    pub async fn wait_all(&self) -> Vec<(String, Outcome)> {
        // Kept in the map: they stay under control (a kill by id) meanwhile.
        let handles: Vec<(String, Rc<dyn kinds::Live>)> =
            self.inner.handles.borrow().iter().map(|(id, h)| (id.clone(), h.clone())).collect();
        let mut outcomes = Vec::with_capacity(handles.len());
        for (id, handle) in handles {
            outcomes.push((id, handle.outcome().await));
        }
        outcomes
    }

    /// Finishes, for an engine that stops for good once its processes have
    /// ended (`drover run`), what its kinds would do later in the background
    /// (see [`Kind::close`]): a cloud deletes the
    /// ended pods and Jobs its janitor would have deleted after a while.
    ///
    /// # Cancel safety
    ///
    /// Dropping it leaves the rest undone.
    pub async fn close(&self) {
        self.inner.kinds.close().await;
    }

    /// Ends this engine's lease now (a clean stop), so that another engine
    /// of its pool may take its processes over at once.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn release(&self) -> Result<(), StoreError> {
        self.inner.store.release_engine(&self.inner.identity.id).await
    }
}

/// Reads at most `max` bytes of `path` from `offset`.
fn read_from(path: &std::path::Path, offset: u64, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    file.take(max).read_to_end(&mut out)?;
    Ok(out)
}
