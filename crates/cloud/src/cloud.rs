//! One Kubernetes cluster as drover uses it: a client, one shared watch per
//! namespace that every cloud process follows, a background deleter, and the
//! janitor that deletes the objects of ended jobs after a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy, WatchEvent, WatchParams};
use kube::{Client, Config};
use tokio::sync::watch;

use crate::spec::{COLLECT_AFTER_LABEL, MANAGED_BY, OBJECT_LABEL};

/// How long the objects of ended jobs are kept (for `kubectl logs` and
/// post-mortems) before drover deletes them, by default.
pub const DEFAULT_CLEANUP_AFTER: Duration = Duration::from_secs(600);

/// Counts of the requests drover made to the API server, by kind.
#[derive(Debug, Default)]
pub struct RequestStats {
    /// Creates (pods and Jobs).
    pub creates: AtomicU64,
    /// Gets of one object (only after an interrupted create).
    pub gets: AtomicU64,
    /// Deletes (kills and clean-up), retries included.
    pub deletes: AtomicU64,
    /// Log fetches.
    pub logs: AtomicU64,
    /// Lists of the shared watches that the API server answered (at start,
    /// and after 410 Gone).
    pub lists: AtomicU64,
    /// Watch (re)connections of the shared watches.
    pub watches: AtomicU64,
    /// Marks of ended objects for collection (one per ended object).
    pub marks: AtomicU64,
    /// Lists of the janitor's sweeps (pods and Jobs marked for collection).
    pub sweeps: AtomicU64,
}

impl RequestStats {
    /// Requests made for processes: everything but the shared watches.
    pub fn per_process_requests(&self) -> u64 {
        self.creates.load(Ordering::Relaxed)
            + self.gets.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
            + self.logs.load(Ordering::Relaxed)
            + self.marks.load(Ordering::Relaxed)
    }
}

/// What the shared watch knows of one object's pod (and Job).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The pod was seen (for a Job: a pod of it).
    pub pod_seen: bool,
    /// The pod observed: for a Job, its newest pod (older attempts are ignored).
    pub pod_name: Option<String>,
    /// When that pod was created.
    pub pod_created: Option<k8s_openapi::jiff::Timestamp>,
    /// Why the pod itself failed (`Evicted`, `DeadlineExceeded`), with the message.
    pub pod_reason: Option<String>,
    /// The pod's phase: Pending, Running, Succeeded, Failed, Unknown.
    pub phase: Option<String>,
    /// The container's exit code, once it terminated.
    pub exit_code: Option<i32>,
    /// Why it is waiting or failed (`ImagePullBackOff`, `Error`, ...), with the message.
    pub reason: Option<String>,
    /// The pod was deleted.
    pub pod_deleted: bool,
    /// A Job's outcome once its controller decided: `Some(true)` complete,
    /// `Some(false)` failed.
    pub job_succeeded: Option<bool>,
    /// A Job's failure message.
    pub job_message: Option<String>,
    /// The Job was seen.
    pub job_seen: bool,
    /// The Job was deleted.
    pub job_deleted: bool,
}

type Senders = Arc<Mutex<HashMap<String, watch::Sender<Observed>>>>;

/// The shared watch of one namespace.
struct NamespaceWatch {
    senders: Senders,
    jobs_started: Mutex<bool>,
    /// The objects this `Cloud` followed: the janitor deletes only these, not
    /// the ended pods of other drover engines in the namespace.
    ours: Ours,
}

type Ours = Arc<Mutex<std::collections::HashSet<String>>>;

/// A Kubernetes cluster. Make one per cluster and share it (`Arc`) among its
/// processes: one shared watch per namespace, a background deleter and a
/// janitor for the objects of ended jobs.
pub struct Cloud {
    client: Client,
    /// For the long-lived watches: no read timeout.
    watch_client: Client,
    namespace: String,
    cleanup_after: Duration,
    stats: Arc<RequestStats>,
    watches: Mutex<HashMap<String, Arc<NamespaceWatch>>>,
    deleting: Arc<Mutex<Vec<(String, String, bool)>>>,
    watch_timeout: Arc<AtomicU32>,
    /// Ended objects the janitor is to delete later: namespace and name, and
    /// whether it is a Job.
    later: Later,
    /// The namespaces the janitor sweeps.
    sweeping: Mutex<std::collections::HashSet<String>>,
    /// When this `Cloud` was made: its sweeps wait `cleanup_after` from then,
    /// so that the processes an engine restores follow their objects first.
    made: tokio::time::Instant,
    me: Weak<Cloud>,
}

type Later = Arc<Mutex<std::collections::HashSet<(String, String, bool)>>>;

/// How long the server keeps one watch request open before the watch
/// reconnects (from the last resource version), by default.
pub const DEFAULT_WATCH_TIMEOUT_SECS: u32 = 290;

impl std::fmt::Debug for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cloud").field("namespace", &self.namespace).field("cleanup_after", &self.cleanup_after).finish()
    }
}

/// Why the cluster cannot be reached or used.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// No configuration was found (KUBECONFIG, ~/.kube/config, in-cluster).
    #[error("no Kubernetes configuration: {0}")]
    Config(String),
}

/// Where a cluster is and how drover uses it: what `[cloud]` in
/// `computers.toml` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudSettings {
    /// A kubeconfig file (default: `$KUBECONFIG`, `~/.kube/config`, else
    /// the in-cluster service account).
    pub kubeconfig: Option<std::path::PathBuf>,
    /// A context of the kubeconfig (default: its current one).
    pub context: Option<String>,
    /// The namespace of jobs that name none (default: the context's).
    pub namespace: Option<String>,
    /// How long the objects of ended jobs are kept.
    pub cleanup_after: Duration,
}

impl Default for CloudSettings {
    fn default() -> Self {
        CloudSettings { kubeconfig: None, context: None, namespace: None, cleanup_after: DEFAULT_CLEANUP_AFTER }
    }
}

impl Cloud {
    /// A cluster as `settings` say.
    ///
    /// # Errors
    ///
    /// [`CloudError::Config`] when the configuration cannot be found or read.
    pub async fn connect(settings: &CloudSettings) -> Result<Arc<Cloud>, CloudError> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let options = KubeConfigOptions { context: settings.context.clone(), ..KubeConfigOptions::default() };
        let mut config = match &settings.kubeconfig {
            Some(path) => {
                let file =
                    Kubeconfig::read_from(path).map_err(|e| CloudError::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(file, &options).await.map_err(|e| CloudError::Config(e.to_string()))?
            }
            None if settings.context.is_some() => {
                Config::from_kubeconfig(&options).await.map_err(|e| CloudError::Config(e.to_string()))?
            }
            None => Config::infer().await.map_err(|e| CloudError::Config(e.to_string()))?,
        };
        if let Some(ns) = &settings.namespace {
            config.default_namespace = ns.clone();
        }
        config.read_timeout = Some(Duration::from_secs(30));
        let cloud = Cloud::from_config(config, settings.cleanup_after)?;
        cloud.sweep_later(cloud.default_namespace());
        Ok(cloud)
    }

    /// A cluster from the configuration `kubectl` would use: `$KUBECONFIG`
    /// or `~/.kube/config` (its current context), else the in-cluster
    /// service account.
    ///
    /// # Errors
    ///
    /// [`CloudError::Config`] when there is none, or it cannot be read.
    pub async fn infer(cleanup_after: Duration) -> Result<Arc<Cloud>, CloudError> {
        let mut config = Config::infer().await.map_err(|e| CloudError::Config(e.to_string()))?;
        // A request that hangs must not hold a process: every call ends within
        // this time (the watches use a client of their own, without it).
        config.read_timeout = Some(Duration::from_secs(30));
        let cloud = Cloud::from_config(config, cleanup_after)?;
        cloud.sweep_later(cloud.default_namespace());
        Ok(cloud)
    }

    /// A cluster from an explicit configuration.
    ///
    /// # Errors
    ///
    /// [`CloudError::Config`] when the client cannot be built from it.
    pub fn from_config(config: Config, cleanup_after: Duration) -> Result<Arc<Cloud>, CloudError> {
        let namespace = config.default_namespace.clone();
        let mut watch_config = config.clone();
        watch_config.read_timeout = None;
        let client = Client::try_from(config).map_err(|e| CloudError::Config(e.to_string()))?;
        let watch_client = Client::try_from(watch_config).map_err(|e| CloudError::Config(e.to_string()))?;
        Ok(Arc::new_cyclic(|me| Cloud {
            client,
            watch_client,
            namespace,
            cleanup_after,
            stats: Arc::default(),
            watches: Mutex::default(),
            deleting: Arc::default(),
            watch_timeout: Arc::new(AtomicU32::new(DEFAULT_WATCH_TIMEOUT_SECS)),
            later: Arc::default(),
            sweeping: Mutex::default(),
            made: tokio::time::Instant::now(),
            me: me.clone(),
        }))
    }

    /// Starts the janitor's sweeps of `namespace` (once per namespace): every
    /// `cleanup_after` (at least a minute), from `cleanup_after` after this
    /// `Cloud` was made, it deletes the objects marked for collection whose
    /// time passed and that no process of this `Cloud` follows, whichever
    /// engine marked them: so the janitor's work survives a restart (or a
    /// crash) of the engine that marked them. Sweeps end with the `Cloud`.
    /// Needs a tokio runtime.
    pub fn sweep_later(&self, namespace: &str) {
        if !self.sweeping.lock().expect("not poisoned").insert(namespace.to_owned()) {
            return;
        }
        let (me, namespace) = (self.me.clone(), namespace.to_owned());
        let (first, every) = (self.made + self.cleanup_after, self.cleanup_after.max(Duration::from_secs(60)));
        tokio::spawn(async move {
            tokio::time::sleep_until(first).await;
            loop {
                let Some(cloud) = me.upgrade() else { return };
                cloud.sweep(&namespace).await;
                drop(cloud);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Deletes, in `namespace`, the objects marked for collection whose time
    /// passed and that no process of this `Cloud` follows; returns how many.
    /// One the API refuses stays for the next sweep.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what it did not delete, the next sweep does.
    pub async fn sweep(&self, namespace: &str) -> usize {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let params = ListParams::default().labels(&format!("{},{COLLECT_AFTER_LABEL}", selector()));
        let due = |meta: &kube::api::ObjectMeta| {
            let labels = meta.labels.as_ref()?;
            let at: u64 = labels.get(COLLECT_AFTER_LABEL)?.parse().ok()?;
            let object = labels.get(OBJECT_LABEL)?;
            (at <= now && !self.followed(namespace, object)).then(|| meta.name.clone()).flatten()
        };
        let mut doomed: Vec<(String, bool)> = Vec::new();
        self.stats.sweeps.fetch_add(2, Ordering::Relaxed);
        match Api::<Pod>::namespaced(self.client.clone(), namespace).list(&params).await {
            Ok(pods) => doomed.extend(pods.items.iter().filter_map(|p| due(&p.metadata)).map(|n| (n, false))),
            Err(e) => tracing::warn!(namespace, error = %e, "the janitor cannot list ended pods"),
        }
        match Api::<Job>::namespaced(self.client.clone(), namespace).list(&params).await {
            Ok(jobs) => doomed.extend(jobs.items.iter().filter_map(|j| due(&j.metadata)).map(|n| (n, true))),
            Err(e) => tracing::warn!(namespace, error = %e, "the janitor cannot list ended Jobs"),
        }
        let mut deleted = 0;
        for (name, job) in doomed {
            match self.delete(namespace, &name, job).await {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(object = %name, error = %e, "cannot clean up an ended object"),
            }
        }
        deleted
    }

    /// Whether a process of this `Cloud` follows object `name` now.
    fn followed(&self, namespace: &str, name: &str) -> bool {
        let watches = self.watches.lock().expect("not poisoned");
        watches
            .get(namespace)
            .is_some_and(|w| w.senders.lock().expect("not poisoned").get(name).is_some_and(|s| s.receiver_count() > 0))
    }

    /// Makes the server end each watch request after `secs` seconds (then
    /// the watch reconnects from the last resource version it saw).
    pub fn set_watch_timeout(&self, secs: u32) {
        self.watch_timeout.store(secs.max(1), Ordering::Relaxed);
    }

    /// The namespace jobs go to unless their spec says otherwise.
    pub fn default_namespace(&self) -> &str {
        &self.namespace
    }

    /// The requests made so far.
    pub fn stats(&self) -> &RequestStats {
        &self.stats
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn stats_arc(&self) -> &Arc<RequestStats> {
        &self.stats
    }

    /// Deletes waiting in the background for the API to confirm them.
    pub fn pending_deletes(&self) -> Vec<String> {
        self.deleting.lock().expect("not poisoned").iter().map(|(ns, name, _)| format!("{ns}/{name}")).collect()
    }

    /// Follows object `name` in `namespace` through the namespace's shared
    /// watch (started on first use; `jobs` also watches batch Jobs there).
    pub fn follow(&self, namespace: &str, name: &str, jobs: bool) -> watch::Receiver<Observed> {
        let shared = {
            let mut watches = self.watches.lock().expect("not poisoned");
            watches
                .entry(namespace.to_owned())
                .or_insert_with(|| {
                    let w = Arc::new(NamespaceWatch {
                        senders: Senders::default(),
                        jobs_started: Mutex::new(false),
                        ours: Ours::default(),
                    });
                    tokio::spawn(watch_pods(self.runner(namespace), w.senders.clone(), w.ours.clone()));
                    w
                })
                .clone()
        };
        if jobs {
            let mut started = shared.jobs_started.lock().expect("not poisoned");
            if !*started {
                *started = true;
                tokio::spawn(watch_jobs(self.runner(namespace), shared.senders.clone(), shared.ours.clone()));
            }
        }
        shared.ours.lock().expect("not poisoned").insert(name.to_owned());
        self.sweep_later(namespace);
        let mut senders = shared.senders.lock().expect("not poisoned");
        senders.entry(name.to_owned()).or_insert_with(|| watch::channel(Observed::default()).0).subscribe()
    }

    /// Whether the pod (or Job) `name` exists, asked of the API: for a
    /// process whose object the watch has not seen (deleted while nobody
    /// followed it).
    ///
    /// # Errors
    ///
    /// The API's message.
    pub async fn exists(&self, namespace: &str, name: &str, job: bool) -> Result<bool, kube::Error> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        if job {
            Ok(Api::<Job>::namespaced(self.client.clone(), namespace).get_opt(name).await?.is_some())
        } else {
            Ok(Api::<Pod>::namespaced(self.client.clone(), namespace).get_opt(name).await?.is_some())
        }
    }

    /// Stops following `name` (the watch forgets it once it is deleted).
    pub fn unfollow(&self, namespace: &str, name: &str) {
        if let Some(w) = self.watches.lock().expect("not poisoned").get(namespace) {
            let mut senders = w.senders.lock().expect("not poisoned");
            // The caller dropped its receiver already: remove only if nobody else follows.
            if senders.get(name).is_some_and(|s| s.receiver_count() == 0) {
                senders.remove(name);
            }
        }
    }

    fn runner(&self, namespace: &str) -> Runner {
        Runner {
            client: self.client.clone(),
            watch_client: self.watch_client.clone(),
            namespace: namespace.to_owned(),
            stats: self.stats.clone(),
            cleanup_after: self.cleanup_after,
            deleting: self.deleting.clone(),
            watch_timeout: self.watch_timeout.clone(),
            later: self.later.clone(),
        }
    }

    /// Deletes now every ended object of this `Cloud`'s that the janitor was
    /// to delete later: for an engine that stops for good once its jobs
    /// ended (`drover run`), so that it leaves no ended pod or Job behind.
    /// Returns how many it deleted; one the API refuses is left, logged.
    ///
    /// # Cancel safety
    ///
    /// Dropping it stops deleting; what it did not reach stays for the
    /// janitor's timers while this `Cloud` lives.
    pub async fn clean_up_now(&self) -> usize {
        let later: Vec<_> = self.later.lock().expect("not poisoned").drain().collect();
        let mut deleted = 0;
        for (namespace, name, job) in later {
            let ours = self.watches.lock().expect("not poisoned").get(&namespace).map(|w| w.ours.clone());
            if !ours.is_some_and(|o| o.lock().expect("not poisoned").remove(&name)) {
                continue;
            }
            match self.delete(&namespace, &name, job).await {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(object = %name, error = %e, "cannot clean up an ended object"),
            }
        }
        deleted
    }

    /// Deletes the pod or Job `name` (a Job with its pods). `Ok` once the API
    /// confirmed (or the object is gone already).
    ///
    /// # Errors
    ///
    /// The API's message when it refused or could not be reached.
    pub async fn delete(&self, namespace: &str, name: &str, job: bool) -> Result<(), kube::Error> {
        self.runner(namespace).delete(name, job).await
    }

    /// Deletes in the background, retrying (from 1 s, doubling up to a
    /// minute) until the API confirms: for a kill that could not reach it.
    pub fn delete_in_background(&self, namespace: &str, name: &str, job: bool) {
        self.delete_in_background_after(namespace, name, job, Duration::ZERO);
    }

    /// As [`delete_in_background`](Self::delete_in_background), starting after `after`.
    pub fn delete_in_background_after(&self, namespace: &str, name: &str, job: bool, after: Duration) {
        let key = (namespace.to_owned(), name.to_owned(), job);
        {
            let mut deleting = self.deleting.lock().expect("not poisoned");
            if deleting.contains(&key) {
                return;
            }
            deleting.push(key.clone());
        }
        let runner = self.runner(namespace);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let mut delay = Duration::from_secs(1);
            loop {
                match runner.delete(&key.1, key.2).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(object = %key.1, error = %e, ?delay, "cannot delete; trying again");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                }
            }
            runner.deleting.lock().expect("not poisoned").retain(|k| k != &key);
        });
    }

    /// Whether `namespace/name` is still to be deleted in the background.
    pub fn delete_pending(&self, namespace: &str, name: &str) -> bool {
        self.deleting.lock().expect("not poisoned").iter().any(|(ns, n, _)| ns == namespace && n == name)
    }

    /// The logs of pod `name` (for a Job: of its latest pod), if the API offers them.
    ///
    /// # Errors
    ///
    /// The API's message.
    pub async fn logs(&self, namespace: &str, name: &str, job: bool) -> Result<String, kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = if job {
            self.stats.gets.fetch_add(1, Ordering::Relaxed);
            let list = pods.list(&ListParams::default().labels(&format!("{OBJECT_LABEL}={name}"))).await?;
            let latest = list.items.into_iter().max_by_key(|p| p.metadata.creation_timestamp.clone().map(|t| t.0));
            latest.and_then(|p| p.metadata.name).unwrap_or_else(|| name.to_owned())
        } else {
            name.to_owned()
        };
        self.stats.logs.fetch_add(1, Ordering::Relaxed);
        pods.logs(&pod, &kube::api::LogParams { limit_bytes: Some(16 << 20), ..Default::default() }).await
    }
}

/// What a watch task needs, without the `Cloud`.
struct Runner {
    client: Client,
    watch_client: Client,
    namespace: String,
    stats: Arc<RequestStats>,
    cleanup_after: Duration,
    deleting: Arc<Mutex<Vec<(String, String, bool)>>>,
    watch_timeout: Arc<AtomicU32>,
    later: Later,
}

impl Runner {
    async fn delete(&self, name: &str, job: bool) -> Result<(), kube::Error> {
        self.stats.deletes.fetch_add(1, Ordering::Relaxed);
        let result = if job {
            let dp =
                DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
            Api::<Job>::namespaced(self.client.clone(), &self.namespace).delete(name, &dp).await.map(|_| ())
        } else {
            Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ())
        };
        match result {
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Labels the ended object `name` with the time it may be deleted:
    /// `cleanup_after` from now.
    async fn mark(&self, name: &str, job: bool) -> Result<(), kube::Error> {
        self.stats.marks.fetch_add(1, Ordering::Relaxed);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
            + self.cleanup_after.as_secs();
        let patch =
            Patch::Merge(serde_json::json!({ "metadata": { "labels": { COLLECT_AFTER_LABEL: at.to_string() } } }));
        let result = if job {
            Api::<Job>::namespaced(self.client.clone(), &self.namespace)
                .patch(name, &PatchParams::default(), &patch)
                .await
                .map(|_| ())
        } else {
            Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
                .patch(name, &PatchParams::default(), &patch)
                .await
                .map(|_| ())
        };
        match result {
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Deletes an ended object after `cleanup_after`, counted from now, if
    /// it is one this `Cloud` followed.
    fn clean_up_later(self: &Arc<Self>, name: String, job: bool, ours: Ours) {
        let runner = self.clone();
        let key = (self.namespace.clone(), name.clone(), job);
        self.later.lock().expect("not poisoned").insert(key.clone());
        tokio::spawn(async move {
            // Marked in the cluster first: should this engine stop before the
            // time comes, any engine's sweep deletes it then. Only its own
            // (another engine's watch sees it end too, and marks it itself).
            let mine = ours.lock().expect("not poisoned").contains(&name);
            if mine && let Err(e) = runner.mark(&name, job).await {
                tracing::warn!(object = %name, error = %e, "cannot mark an ended object for collection");
            }
            tokio::time::sleep(runner.cleanup_after).await;
            runner.later.lock().expect("not poisoned").remove(&key);
            if !ours.lock().expect("not poisoned").remove(&name) {
                return; // another engine's: its janitor's business
            }
            let mut delay = Duration::from_secs(1);
            for _ in 0..10 {
                match runner.delete(&name, job).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(object = %name, error = %e, "cannot clean up; trying again");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                }
            }
        });
    }
}

fn selector() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// Updates `name`'s observation, kept for a process that follows it now or
/// later; forgotten once the object is deleted and nobody follows it.
fn publish(senders: &Senders, name: &str, deleted: bool, change: impl FnOnce(&mut Observed)) {
    let mut senders = senders.lock().expect("not poisoned");
    let sender = senders.entry(name.to_owned()).or_insert_with(|| watch::channel(Observed::default()).0);
    sender.send_modify(change);
    if deleted && sender.receiver_count() == 0 {
        senders.remove(name);
    }
}

fn observe_pod(pod: &Pod, o: &mut Observed) {
    // A Job may make several pods (retries): only its newest counts.
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if o.pod_name.is_some() && o.pod_name != pod.metadata.name {
        if created < o.pod_created {
            return;
        }
        *o = Observed { job_succeeded: o.job_succeeded, job_message: o.job_message.take(), ..Observed::default() };
    }
    o.pod_name.clone_from(&pod.metadata.name);
    o.pod_created = created;
    o.pod_seen = true;
    o.pod_deleted = false;
    let Some(status) = &pod.status else { return };
    o.pod_reason = status.reason.clone().map(|r| match &status.message {
        Some(m) if !m.is_empty() => format!("{r}: {m}"),
        _ => r,
    });
    o.phase = status.phase.clone();
    let container = status.container_statuses.as_ref().and_then(|c| c.first());
    let state = container.and_then(|c| c.state.as_ref());
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        o.exit_code = Some(t.exit_code);
        o.reason = t.reason.clone().map(|r| match &t.message {
            Some(m) if !m.is_empty() => format!("{r}: {m}"),
            _ => r,
        });
    } else if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        o.reason = w.reason.clone().map(|r| match &w.message {
            Some(m) if !m.is_empty() => format!("{r}: {m}"),
            _ => r,
        });
    } else if o.phase.as_deref() == Some("Pending")
        && let Some(c) = status.conditions.as_ref().and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        && c.status == "False"
    {
        o.reason = c.message.clone().or_else(|| c.reason.clone());
    }
    if o.phase.as_deref() == Some("Failed") && o.reason.is_none() {
        o.reason = status.message.clone().or_else(|| status.reason.clone());
    }
}

fn object_of(labels: Option<&std::collections::BTreeMap<String, String>>) -> Option<String> {
    labels.and_then(|l| l.get(OBJECT_LABEL)).cloned()
}

fn pod_ended(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

fn owned_by_job(pod: &Pod) -> bool {
    pod.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.kind == "Job"))
}

/// The shared pod watch of a namespace.
async fn watch_pods(runner: Runner, senders: Senders, ours: Ours) {
    let runner = Arc::new(runner);
    let api: Api<Pod> = Api::namespaced(runner.watch_client.clone(), &runner.namespace);
    let mut cleaning = std::collections::HashSet::new();
    let janitor = runner.clone();
    watch_loop(
        &runner,
        api,
        "pods",
        |pod: &Pod, deleted| {
            let Some(name) = object_of(pod.metadata.labels.as_ref()) else { return };
            publish(&senders, &name, deleted, |o| {
                // Only the pod observed (a Job's newest) can be deleted from under it.
                if deleted && (o.pod_name.is_none() || o.pod_name == pod.metadata.name) {
                    o.pod_deleted = true;
                } else if !deleted {
                    observe_pod(pod, o);
                }
            });
            if deleted {
                cleaning.remove(&name);
            }
            // The janitor: ended bare pods go after `cleanup_after` (a Job's go with it).
            if !deleted && pod_ended(pod) && !owned_by_job(pod) && cleaning.insert(name.clone()) {
                janitor.clean_up_later(name, false, ours.clone());
            }
        },
        |pods: &[Pod]| {
            // A (re)list: pods seen before and missing now were deleted meanwhile.
            let present: std::collections::HashSet<&str> =
                pods.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
            let senders = senders.lock().expect("not poisoned");
            for sender in senders.values() {
                sender.send_if_modified(|o| {
                    let gone =
                        o.pod_seen && !o.pod_deleted && o.pod_name.as_deref().is_some_and(|n| !present.contains(n));
                    if gone {
                        o.pod_deleted = true;
                    }
                    gone
                });
            }
        },
    )
    .await;
}

/// List, then watch from the list's resource version; a watch that ends or
/// breaks is re-established from the last version seen; a version too old
/// (410 Gone) lists again. `on` gets every object and whether it was deleted.
async fn watch_loop<K>(
    runner: &Runner,
    api: Api<K>,
    what: &str,
    mut on: impl FnMut(&K, bool),
    mut listed: impl FnMut(&[K]),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let namespace = &runner.namespace;
    let mut version: Option<String> = None;
    let mut delay = Duration::from_millis(500);
    let backoff = |delay: &mut Duration| {
        let now = *delay;
        *delay = (*delay * 2).min(Duration::from_secs(30));
        tokio::time::sleep(now)
    };
    loop {
        let rv = match version.clone() {
            Some(rv) => rv,
            None => {
                // Counted once answered: a list the server never got (it is
                // down) costs it nothing.
                let answer = api.list(&ListParams::default().labels(&selector())).await;
                if matches!(&answer, Ok(_) | Err(kube::Error::Api(_))) {
                    runner.stats.lists.fetch_add(1, Ordering::Relaxed);
                }
                match answer {
                    Ok(list) => {
                        for object in &list.items {
                            on(object, false);
                        }
                        listed(&list.items);
                        list.metadata.resource_version.unwrap_or_default()
                    }
                    Err(e) => {
                        tracing::warn!(%namespace, error = %e, "cannot list {what}; trying again");
                        backoff(&mut delay).await;
                        continue;
                    }
                }
            }
        };
        runner.stats.watches.fetch_add(1, Ordering::Relaxed);
        let params = WatchParams::default().labels(&selector()).timeout(runner.watch_timeout.load(Ordering::Relaxed));
        let stream = match api.watch(&params, &rv).await {
            Ok(stream) => stream,
            Err(kube::Error::Api(status)) if status.code == 410 => {
                version = None; // too old: list again
                continue;
            }
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "cannot watch {what}; trying again");
                version = Some(rv);
                backoff(&mut delay).await;
                continue;
            }
        };
        version = Some(rv);
        let mut failed = false;
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                    version = object.meta().resource_version.clone().or(version);
                    on(&object, false);
                }
                Ok(WatchEvent::Deleted(object)) => {
                    version = object.meta().resource_version.clone().or(version);
                    on(&object, true);
                }
                Ok(WatchEvent::Bookmark(b)) => version = Some(b.metadata.resource_version),
                Ok(WatchEvent::Error(status)) if status.code == 410 => {
                    version = None; // too old: list again
                    break;
                }
                Ok(WatchEvent::Error(status)) => {
                    tracing::warn!(%namespace, message = %status.message, "the {what} watch reported an error");
                    failed = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(%namespace, error = %e, "the {what} watch broke; re-establishing it");
                    failed = true;
                    break;
                }
            }
            delay = Duration::from_millis(500);
        }
        if failed {
            // Not in a tight loop against a server that keeps failing.
            backoff(&mut delay).await;
        }
    }
}

fn observe_job(job: &Job, o: &mut Observed) {
    o.job_seen = true;
    o.job_deleted = false;
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    for c in conditions.into_iter().flatten() {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => o.job_succeeded = Some(true),
            "Failed" => {
                o.job_succeeded = Some(false);
                o.job_message = c.message.clone().or_else(|| c.reason.clone());
            }
            _ => {}
        }
    }
}

/// The shared Job watch of a namespace.
async fn watch_jobs(runner: Runner, senders: Senders, ours: Ours) {
    let runner = Arc::new(runner);
    let api: Api<Job> = Api::namespaced(runner.watch_client.clone(), &runner.namespace);
    let mut cleaning = std::collections::HashSet::new();
    let janitor = runner.clone();
    watch_loop(
        &runner,
        api,
        "jobs",
        |job: &Job, deleted| {
            let Some(name) = object_of(job.metadata.labels.as_ref()) else { return };
            let mut ended = false;
            publish(&senders, &name, deleted, |o| {
                if deleted {
                    o.job_deleted = true;
                } else {
                    observe_job(job, o);
                    ended = o.job_succeeded.is_some();
                }
            });
            if deleted {
                cleaning.remove(&name);
            }
            if ended && cleaning.insert(name.clone()) {
                janitor.clean_up_later(name, true, ours.clone());
            }
        },
        |jobs: &[Job]| {
            let present: std::collections::HashSet<String> =
                jobs.iter().filter_map(|j| object_of(j.metadata.labels.as_ref())).collect();
            let senders = senders.lock().expect("not poisoned");
            for (name, sender) in senders.iter() {
                sender.send_if_modified(|o| {
                    let gone = o.job_seen && !o.job_deleted && !present.contains(name);
                    if gone {
                        o.job_deleted = true;
                    }
                    gone
                });
            }
        },
    )
    .await;
}
