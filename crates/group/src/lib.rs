//! Groups: a process that runs a set of child jobs, of any kinds, and ends
//! when they have all ended; a composite process written on
//! [`drover_kind::Children`].
//!
//! A group spawns its children a batch at a time; each batch is recorded in
//! the same transaction as the group's next checkpoint (`Spawning { spawned
//! }`), so after a crash the group knows exactly which children exist and
//! spawns only the rest. Then it waits, costing nothing, until its
//! children's terminal states wake it. It finishes with exit code 0 when
//! every child succeeded, 1 otherwise (naming the ones that did not).
//!
//! In a job file:
//!
//! ```toml
//! [[job]]
//! id = "sweep"
//! jobs = [
//!     { id = "a", command = "echo", args = ["a"] },
//!     { id = "b", script = "exit 3" },
//!     { id = "c", computer = "cluster", command = "hostname" },
//! ]
//! ```

use drover_core::{Process, State, interruptible};
use drover_kind::{Checkpoint, Children, Context, Ended, Entry, Job, Kind, LogPlan, Setup, Stream};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many children a group spawns per step (per checkpoint), by default.
pub const BATCH: usize = 64;

/// The group kind.
#[derive(Debug)]
pub struct GroupKind;

/// One child of a group: its name (the child's id is `<group>.<name>`) and
/// what it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its name in the group.
    pub name: String,
    /// What it runs.
    pub job: Job,
}

/// A group, as the engine stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupJob {
    /// Its children, in order.
    pub jobs: Vec<Member>,
    /// How many it spawns per step (default [`BATCH`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

/// Where a group is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupState {
    /// Children `0..spawned` are recorded (and started); the rest are to come.
    Spawning {
        /// How many are recorded.
        spawned: usize,
    },
    /// Every child is recorded; waiting for them to end.
    Waiting {
        /// How many there are.
        children: usize,
    },
    /// Every child ended; exit code 0 if all succeeded, else 1.
    Finished {
        /// 0 or 1.
        exit_code: i32,
        /// The children that did not succeed, with how they ended.
        failed: Vec<String>,
    },
    /// It could not run (a child was refused).
    Failed {
        /// Why.
        reason: String,
    },
    /// Killed (its children were killed first).
    Killed,
}

impl State for GroupState {
    fn is_done(&self) -> bool {
        matches!(self, GroupState::Finished { .. } | GroupState::Failed { .. } | GroupState::Killed)
    }

    fn is_paused(&self) -> bool {
        false
    }
}

impl Checkpoint for GroupState {
    const KIND: &'static str = "group";
    const VERSION: u32 = 1;
}

/// A running group.
#[derive(Debug)]
pub struct GroupProcess {
    id: String,
    job: GroupJob,
    children: Children,
    state: GroupState,
}

impl GroupProcess {
    fn child_id(&self, n: usize) -> String {
        format!("{}.{}", self.id, self.job.jobs[n].name)
    }
}

impl Process<GroupState> for GroupProcess {
    fn state(&self) -> &GroupState {
        &self.state
    }

    fn transition_to(&mut self, state: GroupState) {
        self.state = state;
    }

    async fn advance(&mut self) {
        match &self.state {
            GroupState::Spawning { spawned } => {
                // A checkpoint that says more than the spec has is read as all.
                let (total, from) = (self.job.jobs.len(), *spawned);
                if from >= total {
                    self.state = GroupState::Waiting { children: total };
                    return;
                }
                let to = (from + self.job.batch.unwrap_or(BATCH).max(1)).min(total);
                for n in from..to {
                    let id = self.child_id(n);
                    if let Err(e) = self.children.spawn(id, self.job.jobs[n].job.clone()) {
                        self.state = GroupState::Failed { reason: e.to_string() };
                        return;
                    }
                }
                self.state = GroupState::Spawning { spawned: to };
            }
            GroupState::Waiting { children } => {
                let ids: Vec<String> = (0..(*children).min(self.job.jobs.len())).map(|n| self.child_id(n)).collect();
                let ends = interruptible(self.children.wait(ids)).await;
                let failed: Vec<String> = ends.iter().filter(|e| !e.succeeded).map(describe_end).collect();
                let exit_code = i32::from(!failed.is_empty());
                self.state = GroupState::Finished { exit_code, failed };
            }
            _ => {}
        }
    }

    async fn pause(&mut self) {}

    async fn kill(&mut self) {
        self.state = GroupState::Killed;
    }
}

/// `id (state)`, with the exit code where the state has one.
fn describe_end(end: &drover_kind::ChildEnd) -> String {
    let fields = end.data.as_object().and_then(|m| m.values().next());
    match fields.and_then(|f| f.get("exit_code")).and_then(Value::as_i64) {
        Some(code) => format!("{} ({}, exit {code})", end.id, end.state),
        None => format!("{} ({})", end.id, end.state),
    }
}

/// The job-file keys of a group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    jobs: Vec<serde_json::Map<String, Value>>,
}

/// The most children a group may have.
pub const MAX_CHILDREN: usize = 100_000;

impl Kind for GroupKind {
    const NAME: &'static str = "group";
    const MARKER: Option<&'static str> = Some("jobs");
    const KEYS: &'static [&'static str] = &["jobs"];
    const SECTION: Option<&'static str> = None;

    type Spec = GroupJob;
    type State = GroupState;
    type Process = GroupProcess;
    type Env = ();

    async fn env(_: &Setup<'_>) -> Result<(), String> {
        Ok(())
    }

    fn plan(entry: &Entry<'_>) -> Result<GroupJob, String> {
        let e: GroupEntry = entry.read()?;
        if e.jobs.is_empty() || e.jobs.len() > MAX_CHILDREN {
            return Err(format!("jobs: a group holds 1 to {MAX_CHILDREN} jobs, not {}", e.jobs.len()));
        }
        let mut jobs = Vec::with_capacity(e.jobs.len());
        for (n, table) in e.jobs.iter().enumerate() {
            let name = match table.get("id") {
                None => format!("job-{}", n + 1),
                Some(Value::String(id)) => id.clone(),
                Some(other) => return Err(format!("jobs[{n}]: `id` must be a string, not {other}")),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
                return Err(format!("jobs[{n}]: id `{name}` may hold only letters, digits, `-` and `_`"));
            }
            if jobs.iter().any(|m: &Member| m.name == name) {
                return Err(format!("jobs: id `{name}` appears twice"));
            }
            let child_name = format!("{}.{name}", entry.name);
            let process_id = format!("{}.{name}", entry.process_id);
            let child = Entry { name: &child_name, process_id: &process_id, table, ..*entry };
            let job = (entry.plan)(&child).map_err(|e| format!("jobs[{n}] (`{name}`): {e}"))?;
            jobs.push(Member { name, job });
        }
        Ok(GroupJob { jobs, batch: None })
    }

    fn check(_: &(), _: &str, job: &GroupJob) -> Result<(), String> {
        if job.jobs.is_empty() || job.jobs.len() > MAX_CHILDREN {
            return Err(format!("a group holds 1 to {MAX_CHILDREN} jobs, not {}", job.jobs.len()));
        }
        Ok(())
    }

    fn initial(_: &GroupJob) -> GroupState {
        GroupState::Spawning { spawned: 0 }
    }

    fn build(_: &(), context: Context, job: GroupJob, state: Option<GroupState>) -> Result<GroupProcess, String> {
        let state = state.unwrap_or(GroupState::Spawning { spawned: 0 });
        Ok(GroupProcess { id: context.id, job, children: context.children, state })
    }

    fn describe(job: &GroupJob) -> Vec<(&'static str, String)> {
        let names: Vec<&str> = job.jobs.iter().take(8).map(|m| m.name.as_str()).collect();
        let more = job.jobs.len().saturating_sub(names.len());
        let more = if more > 0 { format!(" and {more} more") } else { String::new() };
        vec![("jobs", format!("{} ({}{more})", job.jobs.len(), names.join(", ")))]
    }

    fn failed(_state: &GroupState, reason: String) -> GroupState {
        GroupState::Failed { reason }
    }

    fn ended(state: &GroupState) -> Ended {
        match state {
            GroupState::Finished { exit_code: 0, .. } => {
                Ended { succeeded: true, summary: "every job succeeded".into() }
            }
            GroupState::Finished { failed, .. } => {
                Ended { succeeded: false, summary: format!("{} failed: {}", failed.len(), failed.join(", ")) }
            }
            GroupState::Failed { reason } => Ended { succeeded: false, summary: reason.clone() },
            other => Ended { succeeded: false, summary: format!("{other:?}") },
        }
    }

    fn logs(_: &GroupJob, _: Stream) -> Result<LogPlan, String> {
        Err("is a group's: a group has no output of its own (its jobs have)".to_owned())
    }
}
