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

use drover_core::{DriveMode, Process, ProcessHandler, Recorder, State, spawn_recorded, spawn_recorded_paused};
use drover_kind::{ChildEnd, ChildHost, Children, NewChild, SpawnError};
use drover_store::{Fence, NewProcess, Record, Store, StoreError, StoredProcess};
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::LocalSet;

use crate::info::{ProcessInfo, now_ms, state_name};
use crate::kinds::{Kinds, Live, Start};

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
        let every = id.lease / 3;
        tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(every).await;
                match store.heartbeat(&engine, lease_ms).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(engine = %engine, "this engine's lease expired: it drives nothing more");
                        let _ = lost.send(true);
                        return;
                    }
                    // The store is down: try again; the lease runs out
                    // meanwhile if it stays down, and then we learn it.
                    Err(e) => tracing::warn!(engine = %engine, error = %e, "heartbeat failed"),
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

    /// Starts claimed processes: each restored from its checkpoint, unless it
    /// runs already here, or it is bound to another host (then it is marked
    /// lost, naming the host).
    pub(crate) async fn take_over(
        self: &Rc<Self>,
        claimed: Vec<StoredProcess>,
        recovery: &mut crate::Recovery,
    ) -> Result<(), StoreError> {
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
                self.store.mark_lost(&stored.id, &reason, fence).await?;
                recovery.lost.push((stored.id, reason));
                continue;
            }
            match self.restore(&stored) {
                Ok(()) => recovery.resumed.push(stored.id),
                Err(error) => {
                    self.store.mark_error(&stored.id, &error).await?;
                    recovery.failed.push((stored.id, error));
                }
            }
        }
        Ok(())
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
                }
            });
        }
        Ok(())
    }

    /// Records a state of process `id` under this engine's claim (`epoch`),
    /// with the children it staged, retrying until it is durable. `false`
    /// when another engine owns the process now: nothing was written, and the
    /// process must stop.
    pub(crate) async fn record(
        &self,
        id: &str,
        epoch: i64,
        checkpoint: String,
        paused: bool,
        terminal: bool,
        pending_work: bool,
    ) -> bool {
        let mut children = self.staged.borrow_mut().remove(id).unwrap_or_default();
        let mut delay = Duration::from_millis(100);
        loop {
            if *self.lost.borrow() {
                return false;
            }
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
                Ok(()) => break,
                Err(StoreError::Fenced(_)) => {
                    tracing::warn!(process = %id, "another engine drives this process now; this one stops driving it");
                    self.handles.borrow_mut().remove(id);
                    return false;
                }
                Err(StoreError::Duplicate(child)) => {
                    tracing::error!(process = %id, %child, "a child's id is another process's: not spawned");
                    let _ = self.store.mark_error(id, &format!("child `{child}` not spawned: the id is taken")).await;
                    children.retain(|c| c.id != child);
                }
                Err(e) => {
                    tracing::warn!(process = %id, error = %e, ?delay, "cannot record a checkpoint; trying again");
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
        ChildEnd { id: stored.id.clone(), state: state_name(&data), succeeded, data }
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
            return Err(refuse("spawned already".to_owned()));
        }
        staged.entry(parent.to_owned()).or_default().push(child);
        Ok(())
    }

    fn wait(&self, ids: Vec<String>) -> Pin<Box<dyn Future<Output = Vec<ChildEnd>>>> {
        let weak = self.0.clone();
        Box::pin(async move {
            let mut ends = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(inner) = weak.upgrade() else { return std::future::pending().await };
                // Registered before the look, so an end between the two is not missed.
                let rx = inner.waiter(&id);
                if let Ok(Some(stored)) = inner.store.get(&id).await
                    && stored.terminal
                {
                    ends.push(inner.end_of(&stored));
                    continue;
                }
                drop(inner);
                match rx.await {
                    Ok(end) => ends.push(end),
                    Err(_) => return std::future::pending().await,
                }
            }
            ends
        })
    }
}
