//! The seam between drover's engine and its process kinds.
//!
//! A process kind (local shell, scheduler job, cloud job, group, ...) is one
//! implementation of [`Kind`]: it owns its job-file keys and their
//! validation, building a process from its stored spec or restoring one from
//! its checkpoint ([`Checkpoint`], a versioned envelope), its description for
//! `list`/`show`, where its logs are read, and what must still be finished
//! after it ended (a cancel or a delete still to be confirmed). The engine
//! lists the kinds in one place and holds no code of its own for any of them.
//!
//! A process may create other processes: it is handed [`Children`] when it is
//! built. A child it [spawns](Children::spawn) is recorded with its parent in
//! the same transaction as the parent's next checkpoint, and started once
//! that transaction committed; [`Children::wait`] wakes the parent when its
//! children have ended, without polling.

mod checkpoint;
mod children;
mod job;

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};

use drover_core::{Process, State};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use checkpoint::{Checkpoint, CheckpointError, decode, encode, envelope_state_name, state_name};
pub use children::{ChildEnd, ChildHost, Children, NewChild, SpawnError};
pub use job::Job;

/// Now by the system clock, in milliseconds since the Unix epoch (0 for a
/// clock set before 1970): the one clock of every timestamp drover records
/// or shows.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The job-file keys every kind shares: a job's id, and what it runs.
pub const COMMON_KEYS: &[&str] = &["id", "command", "args", "script", "env"];

/// One process kind. See the [crate docs](crate).
///
/// Every method is plain code over the kind's own types; the engine calls
/// them through the one list of kinds, never by matching on a kind.
pub trait Kind: Sized + 'static {
    /// The kind's name, as stored with each process and shown to users.
    const NAME: &'static str;
    /// The job-file key whose presence makes an entry of this kind
    /// (`computer`, `image`); `None` for the kind an entry is by default.
    const MARKER: Option<&'static str>;
    /// Every job-file key this kind takes, besides [`COMMON_KEYS`].
    const KEYS: &'static [&'static str];
    /// The section of `computers.toml` this kind reads its settings from, if any.
    const SECTION: Option<&'static str>;

    /// What a process of this kind runs, as stored (a JSON object; `kind` is
    /// added beside its fields).
    type Spec: Serialize + DeserializeOwned + Clone + Debug;
    /// Its state, checkpointed after every step.
    type State: State + Checkpoint + Debug;
    /// The process.
    type Process: Process<Self::State> + 'static;
    /// What the engine holds for every process of this kind: a governor, the
    /// computers, a cluster client.
    type Env: Clone + 'static;

    /// Builds the kind's environment from its settings.
    ///
    /// # Errors
    ///
    /// A message saying what in the settings is wrong (naming the file).
    fn env(setup: &Setup<'_>) -> impl Future<Output = Result<Self::Env, String>>;

    /// Reads a job-file entry of this kind into a spec. Keys of other kinds
    /// are refused before this is called; this refuses the kind's own bad
    /// values, and unknown keys.
    ///
    /// # Errors
    ///
    /// A message saying which key is wrong and why (without the file's name).
    fn plan(entry: &Entry<'_>) -> Result<Self::Spec, String>;

    /// What can be checked of a spec in an engine before anything is recorded
    /// (its computer is configured, its cluster reachable).
    ///
    /// # Errors
    ///
    /// A message saying what is wrong.
    fn check(env: &Self::Env, id: &str, spec: &Self::Spec) -> Result<(), String>;

    /// The state a new process starts in.
    fn initial(spec: &Self::Spec) -> Self::State;

    /// Builds a process from its spec: a new one (`state` is `None`) or one
    /// restored from its checkpoint.
    ///
    /// # Errors
    ///
    /// A message saying why it cannot be built (its computer is gone).
    fn build(
        env: &Self::Env,
        context: Context,
        spec: Self::Spec,
        state: Option<Self::State>,
    ) -> Result<Self::Process, String>;

    /// Where every process of this kind that this environment starts is
    /// bound to (a host and a run directory, for local processes), stored
    /// with the process; `None`: it is bound nowhere.
    fn binding(env: &Self::Env) -> Option<String> {
        let _ = env;
        None
    }

    /// Whether this environment can take over a process bound to `bound`
    /// (by [`binding`](Kind::binding)); an engine that cannot marks it lost.
    fn takes_over(env: &Self::Env, bound: &str) -> bool {
        Self::binding(env).as_deref() == Some(bound)
    }

    /// The places (computers) this environment can run processes on: the
    /// engine holds each one's lease while it drives its processes, so that
    /// a cluster sees one engine at a time.
    fn places(env: &Self::Env) -> Vec<String> {
        let _ = env;
        Vec::new()
    }

    /// Where it runs, for `list` and its filters: a computer's name.
    fn place(spec: &Self::Spec) -> Option<String> {
        let _ = spec;
        None
    }

    /// What `drover show` prints of its spec: labelled lines.
    fn describe(spec: &Self::Spec) -> Vec<(&'static str, String)>;

    /// How it ended: whether it succeeded, and a few words on it.
    fn ended(state: &Self::State) -> Ended;

    /// The terminal state recorded when drover's own code for a process in
    /// `state` failed (it panicked): a failure with `reason`, keeping what
    /// identifies the work (a job id). The runtime has run the kill hook
    /// first, so `state` is usually the state the hook left.
    fn failed(state: &Self::State, reason: String) -> Self::State;

    /// Where its logs are kept.
    ///
    /// # Errors
    ///
    /// A message when this stream is not kept at all.
    fn logs(spec: &Self::Spec, stream: Stream) -> Result<LogPlan, String>;

    /// The local files and directories that hold a process's outputs, which
    /// `drover prune --outputs` removes with it: its log files, unless the
    /// kind says more (a directory of retrieved files).
    fn outputs(spec: &Self::Spec) -> Vec<PathBuf> {
        [Stream::Stdout, Stream::Stderr]
            .into_iter()
            .filter_map(|stream| Self::logs(spec, stream).ok())
            .flat_map(|plan| std::iter::once(plan.local).chain(plan.why_not))
            .collect()
    }

    /// The files drover itself keeps for a process of id `id` besides its
    /// outputs (a shell process's supervisor record), which `drover prune`
    /// removes with it; `binding` is what [`binding`](Kind::binding) said
    /// when it was stored.
    fn records(id: &str, binding: Option<&str>) -> Vec<PathBuf> {
        let _ = (id, binding);
        Vec::new()
    }

    /// Reads the log from where the process runs, when its local copy is not
    /// there yet: `None` when there is nowhere else to read it from.
    ///
    /// # Cancel safety
    ///
    /// Dropping it abandons the read.
    ///
    /// # Errors
    ///
    /// The transport's or API's message.
    fn remote_log(
        env: &Self::Env,
        spec: &Self::Spec,
        read: RemoteRead,
    ) -> impl Future<Output = Option<Result<RemoteLog, String>>> {
        let _ = (env, spec, read);
        std::future::ready(None)
    }

    /// The engine stops for good, every process of its ended (a `drover
    /// run` at its end): finish what the kind would do later in the
    /// background for ended processes (a cloud deletes the ended pods its
    /// janitor would delete later), since nothing of it will run again.
    ///
    /// # Cancel safety
    ///
    /// Dropping it leaves the rest undone.
    fn close(env: &Self::Env) -> impl Future<Output = ()> {
        let _ = env;
        std::future::ready(())
    }

    /// Whether a terminal state leaves work to finish (a cancel or delete not
    /// yet confirmed). Such processes are taken up by
    /// [`finish`](Kind::finish) after the end, and again after a restart.
    fn unfinished(state: &Self::State) -> bool {
        let _ = state;
        false
    }

    /// Finishes the work an [`unfinished`](Kind::unfinished) terminal state
    /// left, and returns the state to record once it is done.
    ///
    /// # Cancel safety
    ///
    /// Dropping it abandons the wait; the work goes on in the background
    /// where the kind has a background worker, and is taken up again after a
    /// restart.
    fn finish(env: &Self::Env, spec: &Self::Spec, state: Self::State) -> impl Future<Output = Self::State> {
        let _ = (env, spec);
        std::future::ready(state)
    }
}

/// What a kind's environment is built from.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The kind's section of `computers.toml`, if the file has one.
    pub section: Option<&'a Value>,
    /// The configuration file, for messages.
    pub config_path: &'a Path,
    /// Where durable processes keep their run directories.
    pub run_root: &'a Path,
    /// A limit on local jobs running at once (`--jobs`).
    pub max_jobs: Option<usize>,
    /// Whether any job of this kind is to run now: a kind whose environment
    /// is costly to set up (a cluster to connect to) may skip it otherwise.
    pub wanted: bool,
}

/// One job-file entry, to be read by its kind.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    /// Its name in the run: `<file stem>.<id>`.
    pub name: &'a str,
    /// The id its process will have: `<run>.<name>`.
    pub process_id: &'a str,
    /// Its keys (but `id`), as JSON.
    pub table: &'a Map<String, Value>,
    /// The run's output directory.
    pub out_dir: &'a Path,
    /// Reads a nested entry (a composite kind's children) by its own kind.
    pub plan: &'a dyn Fn(&Entry<'_>) -> Result<Job, String>,
}

impl Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).field("table", &self.table).finish_non_exhaustive()
    }
}

impl Entry<'_> {
    /// The entry's keys read into `T` (which should deny unknown fields).
    ///
    /// # Errors
    ///
    /// The deserializer's message, which names the key.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, String> {
        let mut table = self.table.clone();
        table.remove("id");
        serde_json::from_value(Value::Object(table)).map_err(|e| e.to_string())
    }
}

/// What a process is handed when it is built.
#[derive(Clone)]
pub struct Context {
    /// Its id.
    pub id: String,
    /// Its children.
    pub children: Children,
    /// Where it is bound, as stored (see [`Kind::binding`]): the binding it
    /// was started under, for a process restored by another engine.
    pub binding: Option<String>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("id", &self.id).finish_non_exhaustive()
    }
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ended {
    /// Whether it succeeded (exit code 0).
    pub succeeded: bool,
    /// A few words: `exit 0, 1.20 s`, the reason it failed.
    pub summary: String,
}

/// A log stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a process's log is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogPlan {
    /// The local file (written as it runs, or retrieved at the end).
    pub local: PathBuf,
    /// A file that, once the process ended, says why no log could be had.
    pub why_not: Option<PathBuf>,
}

/// A read of a log where the process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteRead {
    /// The stream.
    pub stream: Stream,
    /// From this byte.
    pub offset: u64,
    /// At most this many bytes.
    pub max: u64,
    /// Whether the process has ended.
    pub terminal: bool,
}

/// Bytes of a log read where the process runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteLog {
    /// The bytes, from the offset asked for.
    pub bytes: Vec<u8>,
    /// Where they were read (`cluster:stdout`, `pod drover-x`).
    pub source: String,
}

/// Reads the shared keys `command` (with `args`) or `script` (run with
/// `/bin/sh -c`) into a program and its arguments.
///
/// # Errors
///
/// A message when both or neither are given, or `args` with `script`.
pub fn command_or_script(
    command: Option<String>,
    args: Vec<String>,
    script: Option<String>,
) -> Result<(String, Vec<String>), String> {
    match (command, script) {
        (Some(command), None) => Ok((command, args)),
        (None, Some(script)) if args.is_empty() => Ok(("/bin/sh".to_owned(), vec!["-c".to_owned(), script])),
        (None, Some(_)) => Err("`args` go with `command`, not with `script`".to_owned()),
        (Some(_), Some(_)) => Err("give `command` or `script`, not both".to_owned()),
        (None, None) => Err("give `command` (with `args`) or `script`".to_owned()),
    }
}

/// A command line as one would type it: words quoted where the shell would
/// need it.
pub fn command_line<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    let quote = |w: &str| {
        if !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
            w.to_owned()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.into_iter().map(quote).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_quoted_only_where_needed() {
        assert_eq!(command_line(["sleep", "600"]), "sleep 600");
        assert_eq!(command_line(["sh", "-c", "echo it's"]), "sh -c 'echo it'\\''s'");
        assert_eq!(command_line(["printf", ""]), "printf ''");
    }

    #[test]
    fn command_or_script_says_what_is_wrong() {
        assert_eq!(command_or_script(Some("ls".into()), vec!["-l".into()], None), Ok(("ls".into(), vec!["-l".into()])));
        let script = command_or_script(None, vec![], Some("exit 3".into())).unwrap();
        assert_eq!(script, ("/bin/sh".into(), vec!["-c".into(), "exit 3".into()]));
        assert!(command_or_script(None, vec![], None).unwrap_err().contains("give `command`"));
        assert!(command_or_script(Some("a".into()), vec![], Some("b".into())).unwrap_err().contains("not both"));
        assert!(command_or_script(None, vec!["x".into()], Some("b".into())).unwrap_err().contains("`args` go with"));
    }
}
