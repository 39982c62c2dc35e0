//! What an engine holds, shared with its recorders and its processes'
//! [`Children`]: the store, the kinds, the live processes, the children
//! staged for their parents' next checkpoints, whoever waits for an end, and
//! the engine's claim (its id, pool and lease).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use drover_core::{DriveMode, Error, Process, ProcessHandler, Recorder, State, spawn_recorded, spawn_recorded_paused};
use drover_kind::{ChildEnd, ChildHost, Children, NewChild, SpawnError};
use drover_store::{Fence, NewProcess, Record, Store, StoreError, StoredProcess};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::LocalSet;

use crate::Action;
use crate::info::{ProcessInfo, now_ms, state_name};
use crate::kinds::{Kinds, Live, LocalBoxFuture, Start};

/// Who an engine is in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Its id: stable across restarts where one engine serves one place (a
    /// daemon and its data directory), so that it takes its own processes
    /// back at once.
    pub id: String,
    /// Its pool: engines of one pool take over each other's processes once
    /// their lease expired. Daemons are pool `daemon`; a `drover run` is a
    /// pool of its own (`run:<id>`), so no daemon ever picks its jobs up.
    pub pool: String,
    /// The host it runs on.
    pub host: String,
    /// How long its claim holds without a heartbeat.
    pub lease: Duration,
}

impl Identity {
    /// A fresh identity in `pool`, unique to this process and moment.
    pub fn fresh(pool: impl Into<String>) -> Identity {
        let host = hostname();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Identity {
            id: format!("{host}:{}:{nanos:x}", std::process::id()),
            pool: pool.into(),
            host,
            lease: DEFAULT_LEASE,
        }
    }
}

/// How long an engine's claim holds without a heartbeat, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".to_owned())
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) local: Rc<LocalSet>,
    pub(crate) kinds: Kinds,
    pub(crate) identity: Identity,
    pub(crate) handles: RefCell<HashMap<String, Rc<dyn Live>>>,
    pub(crate) changes: broadcast::Sender<ProcessInfo>,
    pub(crate) forget_ended: Cell<bool>,
    registered: Cell<bool>,
    /// `true` once the lease was lost: every write of this engine is refused.
    pub(crate) lost: watch::Sender<bool>,
    staged: RefCell<HashMap<String, Vec<NewChild>>>,
    waiters: RefCell<HashMap<String, Vec<oneshot::Sender<ChildEnd>>>>,
    /// Live parents' children, for control (kill and pause reach them first).
    pub(crate) families: RefCell<HashMap<String, Vec<String>>>,
    /// The places (`kind:computer`) whose lease this engine holds.
    pub(crate) held: RefCell<std::collections::HashSet<String>>,
    /// The epoch of this engine's claim on each process it drives (a claim
    /// made again, by a second `recover`, moves it on; the process goes on).
    pub(crate) epochs: RefCell<HashMap<String, i64>>,
    /// Since when checkpoints cannot be recorded (the store is locked, its
    /// disk full, its server away): said once, and once when it is over.
    unwritable: Cell<Option<std::time::Instant>>,
    me: Weak<Inner>,
}

impl Inner {
    pub(crate) fn new(store: Store, local: Rc<LocalSet>, kinds: Kinds, identity: Identity) -> Rc<Inner> {
        Rc::new_cyclic(|me| Inner {
            store,
            local,
            kinds,
            identity,
            handles: RefCell::default(),
            changes: broadcast::channel(CHANGES_CAPACITY).0,
            forget_ended: Cell::new(false),
            registered: Cell::new(false),
            lost: watch::channel(false).0,
            staged: RefCell::default(),
            waiters: RefCell::default(),
            families: RefCell::default(),
            held: RefCell::default(),
            epochs: RefCell::default(),
            unwritable: Cell::new(None),
            me: me.clone(),
        })
    }

    /// Registers the engine in the store (once) and starts its heartbeat.
    pub(crate) async fn register(&self) -> Result<(), StoreError> {
        if self.registered.get() {
            return Ok(());
        }
        let id = &self.identity;
        let lease_ms = i64::try_from(id.lease.as_millis()).unwrap_or(i64::MAX);
        self.store.register_engine(&id.id, &id.host, std::process::id(), &id.pool, lease_ms).await?;
        self.registered.set(true);
        let (store, engine, lost) = (self.store.clone(), id.id.clone(), self.lost.clone());
        let (every, lease) = (id.lease / 3, id.lease);
        tokio::task::spawn_local(async move {
            // Sent before the heartbeat that renewed the lease: the lease
            // holds until at least then + lease, by any clock.
            let mut renewed = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let sent = tokio::time::Instant::now();
                let expired = match store.heartbeat(&engine, lease_ms).await {
                    Ok(true) => {
                        renewed = sent;
                        false
                    }
                    Ok(false) => true,
                    // A shared store cannot be reached: once the lease may
                    // have run out, another engine may drive our processes.
                    // A local one that cannot be written (locked, disk full)
                    // cannot be by any other engine either: this one goes on,
                    // and learns at its next heartbeat whether it was
                    // superseded meanwhile.
                    Err(e) => {
                        let expired = !store.is_local() && renewed.elapsed() >= lease;
                        tracing::warn!(engine = %engine, error = %e, "cannot renew this engine's lease; trying again");
                        expired
                    }
                };
                if expired {
                    tracing::error!(engine = %engine, "this engine's lease expired: it drives nothing more");
                    let _ = lost.send(true);
                    return;
                }
            }
        });
        Ok(())
    }

    /// Whether this engine shares work with others (pool `daemon`): then
    /// places go by lease, and unowned processes are claimed.
    pub(crate) fn shares(&self) -> bool {
        self.identity.pool == "daemon"
    }

    /// Takes every place lease it can (those free, its own, or of engines
    /// whose lease expired); drops those another engine holds.
    pub(crate) async fn acquire_places(&self) -> Result<(), StoreError> {
        if !self.shares() {
            return Ok(());
        }
        for name in self.kinds.places() {
            let holder = self.store.acquire(&name, &self.identity.id).await?;
            let mut held = self.held.borrow_mut();
            if holder == self.identity.id {
                held.insert(name);
            } else {
                held.remove(&name);
            }
        }
        // Its own processes on places another engine holds now go to that one.
        let handed = self.store.hand_over(&self.identity.id).await?;
        if handed > 0 {
            tracing::info!(processes = handed, "handed to the engines that hold their computers");
        }
        Ok(())
    }

    /// Claims the ended processes whose work is left to finish (its own ones
    /// too with `own`, at start), does each one's work in the background, and
    /// records its end fenced by the claim; a mark with nothing behind it is
    /// cleared.
    pub(crate) async fn resume_pending_work(&self, own: bool) -> Result<Vec<String>, StoreError> {
        let mut resumed = Vec::new();
        let identity = &self.identity;
        for stored in self.store.claim_pending(&identity.id, &identity.pool, own).await? {
            let fence = Fence { owner: identity.id.clone(), epoch: stored.epoch };
            let job = serde_json::from_str::<drover_kind::Job>(&stored.spec).map_err(|e| e.to_string());
            let kind = job.as_ref().map_err(Clone::clone).and_then(|job| self.kinds.get(job.kind()).map(|k| (job, k)));
            let (job, kind) = match kind {
                Ok(found) => found,
                Err(e) => {
                    // Kept marked, for an engine that has its kind.
                    self.store.mark_error(&stored.id, &e).await?;
                    continue;
                }
            };
            let Some(work) = kind.finish(job, &stored.checkpoint) else {
                let mut clear = Record::new(stored.checkpoint.clone(), stored.paused, true);
                clear.fence = Some(fence);
                self.store.commit_record(&stored.id, clear).await?;
                continue;
            };
            let (store, id) = (self.store.clone(), stored.id.clone());
            tokio::task::spawn_local(async move {
                let mut done = Record::new(work.await, false, true);
                done.fence = Some(fence);
                if let Err(e) = store.commit_record(&id, done).await {
                    tracing::warn!(process = %id, error = %e, "the end of its left work was not recorded");
                }
            });
            resumed.push(stored.id);
        }
        Ok(resumed)
    }

    /// Starts claimed processes: each restored from its checkpoint, unless it
    /// runs already here (then it goes on under the new claim), or it is
    /// bound to another host (then it is marked lost, naming the host). A
    /// process that cannot be loaded or marked is reported in `recovery`.
    pub(crate) async fn take_over(self: &Rc<Self>, claimed: Vec<StoredProcess>, recovery: &mut crate::Recovery) {
        for stored in &claimed {
            if let Some(parent) = &stored.parent {
                let mut families = self.families.borrow_mut();
                let family = families.entry(parent.clone()).or_default();
                if !family.contains(&stored.id) {
                    family.push(stored.id.clone());
                }
            }
        }
        for stored in claimed {
            if self.handles.borrow().get(&stored.id).is_some_and(|h| !h.is_done()) {
                // Running here already: it goes on, under the new claim.
                self.epochs.borrow_mut().insert(stored.id.clone(), stored.epoch);
                continue;
            }
            let kind = self.kinds.get(&stored.kind).ok();
            if let (Some(bound), Some(kind)) = (&stored.host, kind)
                && !kind.takes_over(bound)
            {
                let host = bound.split(':').next().unwrap_or(bound);
                let here = &self.identity.host;
                let reason =
                    format!("lost: it runs on host {host}, and this engine on {here}; not re-attached, not run again");
                let fence = Fence { owner: self.identity.id.clone(), epoch: stored.epoch };
                match self.store.mark_lost(&stored.id, &reason, fence).await {
                    Ok(()) => {
                        // A parent waiting for it learns it ended.
                        if let Ok(Some(lost)) = self.store.get(&stored.id).await {
                            self.ended(self.end_of(&lost));
                        }
                        recovery.lost.push((stored.id, reason));
                    }
                    Err(e) => recovery.failed.push((stored.id, format!("could not mark it lost: {e}"))),
                }
                continue;
            }
            match self.restore(&stored) {
                Ok(()) => recovery.resumed.push(stored.id),
                Err(error) => {
                    // Left claimed, with the reason; the next start tries again.
                    if let Err(e) = self.store.mark_error(&stored.id, &error).await {
                        tracing::warn!(process = %stored.id, error = %e, "could not mark a process that did not load");
                    }
                    recovery.failed.push((stored.id, error));
                }
            }
        }
    }

    fn restore(self: &Rc<Self>, stored: &StoredProcess) -> Result<(), String> {
        let job: drover_kind::Job = serde_json::from_str(&stored.spec).map_err(|e| format!("unreadable spec: {e}"))?;
        if job.kind() != stored.kind {
            return Err(format!("a `{}` process with a `{}` spec", stored.kind, job.kind()));
        }
        let start = Start {
            id: stored.id.clone(),
            job,
            checkpoint: Some(stored.checkpoint.clone()),
            paused: stored.paused,
            epoch: stored.epoch,
            template: ProcessInfo::from_stored(stored),
            binding: stored.host.clone(),
        };
        self.start(start)
    }

    /// Spawns a process with its recorder on the engine's `LocalSet`.
    pub(crate) fn spawn<S, P, R>(&self, proc: P, paused: bool, recorder: R) -> ProcessHandler<S, P>
    where
        S: State,
        P: Process<S> + 'static,
        R: Recorder<S>,
    {
        // Paused by a request (not by itself): stays paused, without its hook.
        let h = if paused && !proc.is_paused() {
            spawn_recorded_paused(&self.local, proc, DriveMode::FireAndForget, recorder)
        } else {
            spawn_recorded(&self.local, proc, DriveMode::FireAndForget, recorder)
        };
        let _ = h.try_nudge();
        h
    }

    /// Starts a process and keeps its handle.
    pub(crate) fn start(self: &Rc<Self>, start: Start) -> Result<(), String> {
        let id = start.id.clone();
        let live = self.kinds.get(start.job.kind())?.start(self, start)?;
        self.handles.borrow_mut().insert(id.clone(), live.clone());
        if self.forget_ended.get() {
            let map = self.me.clone();
            tokio::task::spawn_local(async move {
                live.outcome().await;
                if let Some(inner) = map.upgrade() {
                    inner.handles.borrow_mut().remove(&id);
                    inner.families.borrow_mut().remove(&id);
                    inner.epochs.borrow_mut().remove(&id);
                }
            });
        }
        Ok(())
    }

    /// Records a state of process `id` under this engine's claim (`epoch`),
    /// with the children it staged, retrying until it is durable. `false`
    /// when another engine owns the process now: nothing was written, and the
    /// process must stop.
    /// The children of `id` this engine drives that have not ended.
    pub(crate) fn live_children(&self, id: &str) -> Vec<(String, Rc<dyn Live>)> {
        let children = self.families.borrow().get(id).cloned().unwrap_or_default();
        let handles = self.handles.borrow();
        children.into_iter().filter_map(|c| handles.get(&c).filter(|h| !h.is_done()).cloned().map(|h| (c, h))).collect()
    }

    /// Takes `action` to every live descendant of `id`, deepest first: a kill
    /// returns once each child ended.
    pub(crate) fn reach_children<'a>(&'a self, id: &'a str, action: Action) -> LocalBoxFuture<'a, ()> {
        Box::pin(async move {
            // One after the other; boxed, for the recursion into grandchildren.
            for (child, handle) in self.live_children(id) {
                if action == Action::Kill && !self.live_children(&child).is_empty() {
                    let _ = handle.act(Action::Pause).await;
                }
                self.reach_children(&child, action).await;
                match handle.act(action).await {
                    Ok(()) | Err(Error::Finished) => {}
                    Err(e) => {
                        tracing::warn!(parent = %id, child = %child, error = %e, "a child did not take the request")
                    }
                }
            }
        })
    }

    pub(crate) async fn record(
        &self,
        id: &str,
        checkpoint: String,
        paused: bool,
        terminal: bool,
        pending_work: bool,
    ) -> bool {
        self.record_at(id, None, checkpoint, paused, terminal, pending_work).await
    }

    /// As [`record`](Self::record), under claim `epoch` if given (else the
    /// process's current one).
    pub(crate) async fn record_at(
        &self,
        id: &str,
        epoch: Option<i64>,
        checkpoint: String,
        paused: bool,
        terminal: bool,
        pending_work: bool,
    ) -> bool {
        // A terminal state starts no child (a kill landed after the staging).
        let mut children = self.staged.borrow_mut().remove(id).filter(|_| !terminal).unwrap_or_default();
        let mut delay = Duration::from_millis(100);
        loop {
            if *self.lost.borrow() {
                return false;
            }
            let Some(epoch) = epoch.or_else(|| self.epochs.borrow().get(id).copied()) else { return false };
            let news: Vec<NewProcess> = children.iter().filter_map(|c| self.new_child(id, c)).collect();
            let record = Record {
                checkpoint: checkpoint.clone(),
                paused,
                terminal,
                pending_work,
                children: news,
                fence: Some(Fence { owner: self.identity.id.clone(), epoch }),
            };
            match self.store.commit_record(id, record).await {
                Ok(()) => {
                    if let Some(since) = self.unwritable.take() {
                        tracing::warn!(
                            "the store records checkpoints again, after {:.1} s; the processes that waited go on",
                            since.elapsed().as_secs_f64()
                        );
                    }
                    break;
                }
                Err(StoreError::Fenced(_) | StoreError::Unknown(_)) => {
                    tracing::warn!(process = %id, "another engine drives this process now; this one stops driving it");
                    self.handles.borrow_mut().remove(id);
                    self.epochs.borrow_mut().remove(id);
                    return false;
                }
                Err(StoreError::Duplicate(child)) => {
                    // Its waiters learn it is not this parent's (see `wait`).
                    tracing::error!(process = %id, %child, "a child's id is another process's: not spawned");
                    let _ = self.store.mark_error(id, &format!("child `{child}` not spawned: the id is taken")).await;
                    children.retain(|c| c.id != child);
                }
                Err(e) => {
                    // Each waits here, holding its step: nothing it would do
                    // next happens before its state is recorded.
                    if self.unwritable.get().is_none() {
                        self.unwritable.set(Some(std::time::Instant::now()));
                        tracing::warn!(
                            process = %id,
                            error = %e,
                            "cannot record a checkpoint; every process waits for the store, trying again"
                        );
                    } else {
                        tracing::debug!(process = %id, error = %e, ?delay, "cannot record a checkpoint; trying again");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        if !children.is_empty()
            && let Some(me) = self.me.upgrade()
        {
            for child in children {
                me.families.borrow_mut().entry(id.to_owned()).or_default().push(child.id.clone());
                let start = Start {
                    template: me.template(&child.id, child.job.kind(), &child.job, Some(id)),
                    checkpoint: None,
                    paused: false,
                    epoch: 1,
                    binding: None,
                    id: child.id,
                    job: child.job,
                };
                if let Err(e) = me.start(start) {
                    tracing::error!(parent = %id, error = %e, "a recorded child could not start");
                }
            }
        }
        true
    }

    fn new_child(&self, parent: &str, child: &NewChild) -> Option<NewProcess> {
        let kind = self.kinds.get(child.job.kind()).ok()?;
        let checkpoint = kind.initial(&child.job).ok()?;
        let spec = serde_json::to_string(&child.job).ok()?;
        let mut new = NewProcess::new(&child.id, child.job.kind(), spec, checkpoint);
        new.parent = Some(parent.to_owned());
        new.owner = Some(self.identity.id.clone());
        new.host = kind.binding();
        new.place = kind.info().place(&child.job);
        Some(new)
    }

    /// The summary a process's changes are announced with (and announces it).
    pub(crate) fn template(&self, id: &str, kind: &str, job: &drover_kind::Job, parent: Option<&str>) -> ProcessInfo {
        let now = now_ms();
        let stored = StoredProcess {
            id: id.to_owned(),
            kind: kind.to_owned(),
            spec: serde_json::to_string(job).unwrap_or_default(),
            parent: parent.map(str::to_owned),
            checkpoint: self.kinds.get(kind).and_then(|k| k.initial(job)).unwrap_or_default(),
            paused: false,
            terminal: false,
            created_at: now,
            updated_at: now,
            error: None,
            owner: Some(self.identity.id.clone()),
            epoch: 1,
            host: None,
            place: None,
            pending_work: false,
        };
        let info = ProcessInfo::from_stored(&stored);
        let _ = self.changes.send(info.clone());
        info
    }

    /// Announces a recorded state, if someone listens.
    pub(crate) fn announce(&self, template: &ProcessInfo, state: &serde_json::Value, paused: bool, terminal: bool) {
        if self.changes.receiver_count() > 0 {
            let mut info = template.clone();
            info.set_state(state);
            info.paused = paused;
            info.terminal = terminal;
            info.updated_at = now_ms();
            let _ = self.changes.send(info);
        }
    }

    /// Wakes whoever waits for `end.id` to end.
    pub(crate) fn ended(&self, end: ChildEnd) {
        if let Some(waiters) = self.waiters.borrow_mut().remove(&end.id) {
            for w in waiters {
                let _ = w.send(end.clone());
            }
        }
    }

    /// The children of process `id`, as it is handed them when built.
    pub(crate) fn children_of(&self, id: &str) -> Children {
        Children::new(id, Rc::new(Host(self.me.clone())))
    }

    fn waiter(&self, id: &str) -> oneshot::Receiver<ChildEnd> {
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().entry(id.to_owned()).or_default().push(tx);
        rx
    }

    /// How a stored terminal process ended.
    pub(crate) fn end_of(&self, stored: &StoredProcess) -> ChildEnd {
        let data = serde_json::from_str::<serde_json::Value>(&stored.checkpoint)
            .ok()
            .and_then(|mut v| v.get_mut("state").map(serde_json::Value::take))
            .unwrap_or_default();
        let succeeded = self
            .kinds
            .get(&stored.kind)
            .ok()
            .and_then(|k| k.info().ended(&stored.checkpoint))
            .is_some_and(|e| e.succeeded);
        ChildEnd { id: stored.id.clone(), parent: stored.parent.clone(), state: state_name(&data), succeeded, data }
    }
}

/// How many changes a slow listener may fall behind before it is told it
/// lagged (and should read the list again).
const CHANGES_CAPACITY: usize = 4096;

/// The engine as its processes' children see it.
struct Host(Weak<Inner>);

impl ChildHost for Host {
    fn stage(&self, parent: &str, child: NewChild) -> Result<(), SpawnError> {
        let refuse = |problem: String| SpawnError::Refused { id: child.id.clone(), problem };
        let inner = self.0.upgrade().ok_or_else(|| refuse("the engine stopped".to_owned()))?;
        crate::check_id(&child.id).map_err(refuse)?;
        let kind = inner.kinds.get(child.job.kind()).map_err(refuse)?;
        kind.check(&child.id, &child.job).map_err(refuse)?;
        let mut staged = inner.staged.borrow_mut();
        let taken =
            inner.handles.borrow().contains_key(&child.id) || staged.values().flatten().any(|c| c.id == child.id);
        if taken {
            return Err(refuse("the id is taken: a process of this engine, or a child spawned already".to_owned()));
        }
        staged.entry(parent.to_owned()).or_default().push(child);
        Ok(())
    }

    fn wait(&self, parent: &str, ids: Vec<String>) -> Pin<Box<dyn Future<Output = Vec<ChildEnd>>>> {
        let weak = self.0.clone();
        let parent = parent.to_owned();
        // Another process of the same id is never taken for this parent's child.
        let own = move |end: ChildEnd| {
            if end.parent.as_deref() == Some(parent.as_str()) {
                end
            } else {
                let data = serde_json::json!({ "Refused": { "reason": "the id is another process's" } });
                ChildEnd {
                    id: end.id,
                    parent: Some(parent.clone()),
                    state: "refused".to_owned(),
                    succeeded: false,
                    data,
                }
            }
        };
        Box::pin(async move {
            let mut ends = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(inner) = weak.upgrade() else { return std::future::pending().await };
                // Registered before the look, so an end between the two is not missed.
                let rx = inner.waiter(&id);
                if let Ok(Some(stored)) = inner.store.get(&id).await
                    && stored.terminal
                {
                    ends.push(own(inner.end_of(&stored)));
                    continue;
                }
                drop(inner);
                match rx.await {
                    Ok(end) => ends.push(own(end)),
                    Err(_) => return std::future::pending().await,
                }
            }
            ends
        })
    }
}
