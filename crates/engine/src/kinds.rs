//! The one list of process kinds, and the adapter through which the engine
//! drives any of them without knowing which.
//!
//! Adding a kind: implement [`Kind`] in the kind's own crate, and add it to
//! [`kinds!`] below (and the crate to this one's dependencies). Nothing else
//! in the engine, the daemon or the CLI names a kind.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::path::Path;
use std::pin::Pin;
use std::rc::Rc;

use drover_core::{Error, ProcessHandler, Recorder, State};
use drover_kind::{
    ChildEnd, Context, Ended, Entry, Job, Kind, LogPlan, RemoteLog, RemoteRead, Setup, Stream, decode, encode,
};
use serde_json::{Map, Value};

use crate::info::ProcessInfo;
use crate::inner::Inner;
use crate::{Action, Outcome};

pub(crate) type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Lists the kinds: the only place that names them.
macro_rules! kinds {
    ($($(#[$attr:meta])* $kind:ty),* $(,)?) => {
        /// What every kind this drover knows says of itself, in the order
        /// job files try their markers.
        pub fn all() -> Vec<&'static dyn KindInfo> {
            let all: &[&'static dyn KindInfo] = &[$( $(#[$attr])* &Static::<$kind>(PhantomData), )*];
            all.to_vec()
        }

        impl Kinds {
            /// Every kind, each with its environment built from its section
            /// of `computers.toml` (`config`); `wanted` says which kinds have
            /// jobs to run now (`None`: any may).
            ///
            /// # Errors
            ///
            /// The first kind's message that could not be set up.
            pub async fn from_config(
                config: &Map<String, Value>,
                config_path: &Path,
                run_root: &Path,
                max_jobs: Option<usize>,
                wanted: Option<&[&str]>,
            ) -> Result<Kinds, String> {
                let mut kinds = Kinds::default();
                $( $(#[$attr])* {
                    let name = <$kind as Kind>::NAME;
                    let setup = Setup {
                        section: <$kind as Kind>::SECTION.and_then(|s| config.get(s)),
                        config_path,
                        run_root,
                        max_jobs,
                        wanted: wanted.is_none_or(|w| w.contains(&name)),
                    };
                    kinds = kinds.with::<$kind>(<$kind as Kind>::env(&setup).await?);
                } )*
                Ok(kinds)
            }
        }
    };
}

kinds![
    drover_shell::ShellKind,
    drover_scheduler::SchedulerKind,
    #[cfg(feature = "cloud")]
    drover_cloud::CloudKind,
    drover_group::GroupKind,
];

/// The sections of `computers.toml` some kind reads.
pub fn sections() -> Vec<&'static str> {
    all().iter().filter_map(|k| k.section()).collect()
}

/// The kind of a job-file entry: the first whose marker key it has, else the
/// one without a marker; keys of other kinds are refused, naming the kind
/// they are for.
///
/// # Errors
///
/// A message naming the key.
pub fn plan(entry: &Entry<'_>) -> Result<Job, String> {
    let kinds = all();
    let has = |key: &str| entry.table.contains_key(key);
    let kind = kinds
        .iter()
        .find(|k| k.marker().is_some_and(has))
        .or_else(|| kinds.iter().find(|k| k.marker().is_none()))
        .ok_or_else(|| "no kind of job takes this entry".to_owned())?;
    for key in entry.table.keys() {
        if drover_kind::COMMON_KEYS.contains(&key.as_str()) || kind.keys().contains(&key.as_str()) {
            continue;
        }
        if let Some(other) = kinds.iter().find(|k| k.keys().contains(&key.as_str())) {
            let how = match (other.marker(), kind.marker()) {
                (Some(theirs), Some(ours)) => format!(" (give `{theirs}`, not `{ours}`)"),
                (Some(theirs), None) => format!(" (give `{theirs}`)"),
                (None, Some(ours)) => format!(" (a `{ours}` makes this one a {} job)", kind.name()),
                (None, None) => String::new(),
            };
            return Err(format!("`{key}` is for {} jobs{how}", other.name()));
        }
    }
    kind.plan(entry)
}

/// What a kind says of itself, without an engine: its name, its job-file
/// keys, how to read an entry, describe a spec, judge an end.
pub trait KindInfo {
    /// Its name.
    fn name(&self) -> &'static str;
    /// The job-file key that makes an entry of it.
    fn marker(&self) -> Option<&'static str>;
    /// Its job-file keys, besides the common ones.
    fn keys(&self) -> &'static [&'static str];
    /// The section of `computers.toml` it reads.
    fn section(&self) -> Option<&'static str>;
    /// Reads a job-file entry of this kind.
    ///
    /// # Errors
    ///
    /// A message naming the key.
    fn plan(&self, entry: &Entry<'_>) -> Result<Job, String>;
    /// What `drover show` prints of a spec.
    fn describe(&self, job: &Job) -> Vec<(&'static str, String)>;
    /// Where it runs.
    fn place(&self, job: &Job) -> Option<String>;
    /// How a terminal checkpoint ended.
    fn ended(&self, checkpoint: &str) -> Option<Ended>;
    /// See [`Kind::outputs`]; none when the spec does not read.
    fn outputs(&self, job: &Job) -> Vec<std::path::PathBuf>;
    /// See [`Kind::records`].
    fn records(&self, id: &str, binding: Option<&str>) -> Vec<std::path::PathBuf>;
}

struct Static<K>(PhantomData<fn() -> K>);

impl<K: Kind> KindInfo for Static<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn marker(&self) -> Option<&'static str> {
        K::MARKER
    }
    fn keys(&self) -> &'static [&'static str] {
        K::KEYS
    }
    fn section(&self) -> Option<&'static str> {
        K::SECTION
    }
    fn plan(&self, entry: &Entry<'_>) -> Result<Job, String> {
        K::plan(entry).map(|spec| Job::new::<K>(&spec))
    }
    fn describe(&self, job: &Job) -> Vec<(&'static str, String)> {
        job.spec::<K>().and_then(Result::ok).map(|s| K::describe(&s)).unwrap_or_default()
    }
    fn place(&self, job: &Job) -> Option<String> {
        job.spec::<K>().and_then(Result::ok).and_then(|s| K::place(&s))
    }
    fn ended(&self, checkpoint: &str) -> Option<Ended> {
        decode::<K::State>(checkpoint).ok().map(|s| K::ended(&s))
    }
    fn outputs(&self, job: &Job) -> Vec<std::path::PathBuf> {
        job.spec::<K>().and_then(Result::ok).map(|s| K::outputs(&s)).unwrap_or_default()
    }
    fn records(&self, id: &str, binding: Option<&str>) -> Vec<std::path::PathBuf> {
        K::records(id, binding)
    }
}

/// A kind with its environment, as an engine drives it.
pub(crate) trait DynKind {
    fn info(&self) -> &dyn KindInfo;
    fn check(&self, id: &str, job: &Job) -> Result<(), String>;
    fn binding(&self) -> Option<String>;
    fn takes_over(&self, bound: &str) -> bool;
    fn places(&self) -> Vec<String>;
    fn initial(&self, job: &Job) -> Result<String, String>;
    /// Builds and starts the process (new when `checkpoint` is `None`).
    fn start(&self, inner: &Rc<Inner>, start: Start) -> Result<Rc<dyn Live>, String>;
    fn logs(&self, job: &Job, stream: Stream) -> Result<LogPlan, String>;
    fn remote_log<'a>(
        &'a self,
        job: &'a Job,
        read: RemoteRead,
    ) -> LocalBoxFuture<'a, Option<Result<RemoteLog, String>>>;
    /// The work a terminal checkpoint left, as a future that resolves to the
    /// checkpoint to record once done; `None` if it left none.
    fn finish(&self, job: &Job, checkpoint: &str) -> Option<LocalBoxFuture<'static, String>>;
    /// See [`Kind::close`].
    fn close(&self) -> LocalBoxFuture<'_, ()>;
}

/// What a process is started from.
pub(crate) struct Start {
    pub(crate) id: String,
    pub(crate) job: Job,
    pub(crate) checkpoint: Option<String>,
    pub(crate) paused: bool,
    pub(crate) epoch: i64,
    pub(crate) template: ProcessInfo,
    /// Where it is bound, as stored.
    pub(crate) binding: Option<String>,
}

struct Registered<K: Kind> {
    env: K::Env,
}

fn spec<K: Kind>(job: &Job) -> Result<K::Spec, String> {
    match job.spec::<K>() {
        Some(Ok(spec)) => Ok(spec),
        Some(Err(e)) => Err(format!("unreadable {} spec: {e}", K::NAME)),
        None => Err(format!("a {} job given to the {} kind", job.kind(), K::NAME)),
    }
}

impl<K: Kind> DynKind for Registered<K> {
    fn info(&self) -> &dyn KindInfo {
        &Static::<K>(PhantomData)
    }

    fn check(&self, id: &str, job: &Job) -> Result<(), String> {
        K::check(&self.env, id, &spec::<K>(job)?)
    }

    fn initial(&self, job: &Job) -> Result<String, String> {
        Ok(encode(&K::initial(&spec::<K>(job)?)))
    }

    fn binding(&self) -> Option<String> {
        K::binding(&self.env)
    }

    fn takes_over(&self, bound: &str) -> bool {
        K::takes_over(&self.env, bound)
    }

    fn places(&self) -> Vec<String> {
        K::places(&self.env).into_iter().map(|p| format!("{}:{p}", K::NAME)).collect()
    }

    fn start(&self, inner: &Rc<Inner>, start: Start) -> Result<Rc<dyn Live>, String> {
        let spec = spec::<K>(&start.job)?;
        let state = start.checkpoint.as_deref().map(decode::<K::State>).transpose().map_err(|e| e.to_string())?;
        let context = Context { id: start.id.clone(), children: inner.children_of(&start.id), binding: start.binding };
        let proc = K::build(&self.env, context, spec.clone(), state)?;
        inner.epochs.borrow_mut().insert(start.id.clone(), start.epoch);
        let recorder = EngineRecorder::<K> {
            inner: Rc::downgrade(inner),
            id: start.id.clone(),
            env: self.env.clone(),
            spec,
            template: start.template,
        };
        let handler = inner.spawn(proc, start.paused, recorder);
        Ok(Rc::new(LiveProcess::<K> { handler }))
    }

    fn logs(&self, job: &Job, stream: Stream) -> Result<LogPlan, String> {
        K::logs(&spec::<K>(job)?, stream)
    }

    fn remote_log<'a>(
        &'a self,
        job: &'a Job,
        read: RemoteRead,
    ) -> LocalBoxFuture<'a, Option<Result<RemoteLog, String>>> {
        Box::pin(async move {
            match spec::<K>(job) {
                Ok(spec) => K::remote_log(&self.env, &spec, read).await,
                Err(e) => Some(Err(e)),
            }
        })
    }

    fn finish(&self, job: &Job, checkpoint: &str) -> Option<LocalBoxFuture<'static, String>> {
        let state = decode::<K::State>(checkpoint).ok()?;
        if !(state.is_done() && K::unfinished(&state)) {
            return None;
        }
        let spec = spec::<K>(job).ok()?;
        let env = self.env.clone();
        Some(Box::pin(async move { encode(&K::finish(&env, &spec, state).await) }))
    }

    fn close(&self) -> LocalBoxFuture<'_, ()> {
        Box::pin(K::close(&self.env))
    }
}

/// The kinds an engine drives, each with its environment.
#[derive(Default)]
pub struct Kinds {
    kinds: BTreeMap<&'static str, Box<dyn DynKind>>,
}

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Kinds {
    /// No kinds: add each with [`with`](Self::with).
    pub fn new() -> Kinds {
        Kinds::default()
    }

    /// Drives kind `K` with `env` (replacing any environment it had).
    #[must_use]
    pub fn with<K: Kind>(mut self, env: K::Env) -> Kinds {
        self.kinds.insert(K::NAME, Box::new(Registered::<K> { env }));
        self
    }

    /// Every kind's places, as `kind:place` lease names.
    pub(crate) fn places(&self) -> Vec<String> {
        self.kinds.values().flat_map(|k| k.places()).collect()
    }

    /// Every kind's [`Kind::close`], one after the other.
    pub(crate) async fn close(&self) {
        for kind in self.kinds.values() {
            kind.close().await;
        }
    }

    pub(crate) fn get(&self, name: &str) -> Result<&dyn DynKind, String> {
        self.kinds.get(name).map(|k| &**k).ok_or_else(|| {
            let known: Vec<&str> = self.kinds.keys().copied().collect();
            format!("this engine does not run {name} jobs (it runs: {})", known.join(", "))
        })
    }
}

/// A running process of any kind.
pub(crate) trait Live {
    fn act(&self, action: Action) -> LocalBoxFuture<'_, Result<(), Error>>;
    fn outcome(&self) -> LocalBoxFuture<'_, Outcome>;
    fn is_done(&self) -> bool;
}

struct LiveProcess<K: Kind> {
    handler: ProcessHandler<K::State, K::Process>,
}

impl<K: Kind> Live for LiveProcess<K> {
    fn act(&self, action: Action) -> LocalBoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            match action {
                Action::Pause => self.handler.pause().await,
                Action::Resume => self.handler.resume(),
                Action::Kill => self.handler.kill().await,
            }
        })
    }

    fn outcome(&self) -> LocalBoxFuture<'_, Outcome> {
        Box::pin(async move {
            let result = self.handler.ended().await.map(|()| {
                let state = self.handler.state();
                (K::ended(&state), serde_json::to_value(&state).unwrap_or_default())
            });
            Outcome::new(K::NAME, result)
        })
    }

    fn is_done(&self) -> bool {
        self.handler.is_done()
    }
}

/// Records a process's states in the store (fenced by its owner's claim,
/// with the children it staged), then announces each on the engine's
/// broadcast channel and wakes whoever waits for its end.
struct EngineRecorder<K: Kind> {
    inner: std::rc::Weak<Inner>,
    id: String,
    env: K::Env,
    spec: K::Spec,
    template: ProcessInfo,
}

impl<K: Kind> Recorder<K::State> for EngineRecorder<K> {
    async fn record(&self, state: &K::State, paused: bool) {
        let Some(inner) = self.inner.upgrade() else { return std::future::pending().await };
        let terminal = state.is_done();
        let pending_work = terminal && K::unfinished(state);
        let checkpoint = encode(state);
        if !inner.record(&self.id, checkpoint, paused, terminal, pending_work).await {
            // Another engine drives it now: this one stops here, for good.
            return std::future::pending().await;
        }
        let value = serde_json::to_value(state).unwrap_or_default();
        inner.announce(&self.template, &value, paused, terminal);
        if terminal {
            let ended = K::ended(state);
            inner.ended(ChildEnd {
                id: self.id.clone(),
                parent: self.template.parent.clone(),
                state: crate::info::state_name(&value),
                succeeded: ended.succeeded,
                data: value,
            });
            if pending_work {
                let (env, spec, state) = (self.env.clone(), self.spec.clone(), state.clone());
                let id = self.id.clone();
                let weak = self.inner.clone();
                let epoch = inner.epochs.borrow().get(&id).copied();
                tokio::task::spawn_local(async move {
                    let done = K::finish(&env, &spec, state).await;
                    if let Some(inner) = weak.upgrade() {
                        inner.record_at(&id, epoch, encode(&done), false, true, false).await;
                    }
                });
            }
        }
    }

    async fn panicked(&self, state: &K::State, message: &str) {
        tracing::error!(id = %self.id, kind = K::NAME, panic = %message, "drover's code for a process panicked; it ends failed");
        if let Some(inner) = self.inner.upgrade() {
            // Its children do not outlive it.
            inner.reach_children(&self.id, Action::Kill).await;
        }
        let failed = K::failed(state, format!("drover's code for this process panicked: {message}"));
        self.record(&failed, false).await;
    }
}
