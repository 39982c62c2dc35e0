//! The typed description of a batch job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A batch job: what to run, with which resources, which files to stage in,
/// and which to bring back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The process id. It names the job (`drover-<id>`) and its work directory,
    /// so that an interrupted submission can find its job again. Letters,
    /// digits, `-`, `_` and `.` only.
    pub id: String,
    /// The program the job runs (found in the job's `PATH`).
    pub command: String,
    /// Its arguments; each reaches the program as it is.
    pub args: Vec<String>,
    /// Environment variables set for the command.
    pub env: BTreeMap<String, String>,
    /// Resources asked of the scheduler.
    pub resources: Resources,
    /// More scheduler directives, each as its option text (`--constraint=gpu`).
    pub extra_directives: Vec<String>,
    /// Shell text run before the command (module loads, ...), as written.
    pub prepend: String,
    /// Shell text run after the command, as written.
    pub append: String,
    /// Files staged into the work directory before submission.
    pub uploads: Vec<Upload>,
    /// Files (relative to the work directory) brought back after the job.
    /// The job's standard output and error always are.
    pub retrieve: Vec<String>,
    /// The most bytes retrieved for the job, all files together (`None`:
    /// [`DEFAULT_RETRIEVE_LIMIT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrieve_limit: Option<u64>,
    /// The local directory the retrieved files are written to.
    pub local_dir: PathBuf,
}

/// The most bytes retrieved for a job unless it says otherwise: 10 GiB.
pub const DEFAULT_RETRIEVE_LIMIT: u64 = 10 << 30;

/// The largest retrieval limit a job may ask for, in MiB: 1 TiB.
pub const MAX_RETRIEVE_MIB: u64 = 1 << 20;

/// Resources of a job. `None` leaves the scheduler's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Nodes.
    pub nodes: Option<u32>,
    /// Tasks.
    pub tasks: Option<u32>,
    /// CPUs per task.
    pub cpus_per_task: Option<u32>,
    /// Memory per node, in MiB.
    pub memory_mb: Option<u64>,
    /// Wall time.
    pub wall_time: Option<Duration>,
    /// Partition (queue).
    pub partition: Option<String>,
    /// Account to charge.
    pub account: Option<String>,
    /// Quality of service.
    pub qos: Option<String>,
}

/// One file to stage in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// Where its bytes come from.
    pub source: Source,
    /// Its name in the work directory (relative; may contain `/`).
    pub target: String,
}

/// Where an uploaded file's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A local file.
    Path(PathBuf),
    /// These bytes.
    Content(Vec<u8>),
}

/// A job description that cannot be submitted, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid job `{id}`: {problem}")]
pub struct InvalidJob {
    /// The job's id.
    pub id: String,
    /// What is wrong.
    pub problem: String,
}

/// The file the job script writes the command's exit code to.
pub const EXIT_CODE_FILE: &str = ".drover-exit-code";
/// The job script's name in the work directory.
pub const SCRIPT_FILE: &str = "job.sh";
/// The job's standard output, in the work directory.
pub const STDOUT_FILE: &str = "stdout.txt";
/// The job's standard error, in the work directory.
pub const STDERR_FILE: &str = "stderr.txt";

impl JobSpec {
    /// The scheduler's name for this job.
    pub fn job_name(&self) -> String {
        format!("drover-{}", self.id)
    }

    /// Checks everything that would otherwise reach a scheduler or a shell in a
    /// form it could misread.
    ///
    /// # Errors
    ///
    /// [`InvalidJob`] naming the field and the problem.
    pub fn validate(&self) -> Result<(), InvalidJob> {
        let bad = |problem: String| Err(InvalidJob { id: self.id.clone(), problem });
        if self.id.is_empty() || !self.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return bad("the id must be letters, digits, `-`, `_` or `.`".into());
        }
        if self.command.is_empty() {
            return bad("the command is empty".into());
        }
        for key in self.env.keys() {
            let mut chars = key.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return bad(format!("`{key}` is not a valid environment variable name"));
            }
        }
        let r = &self.resources;
        for (what, value) in [("partition", &r.partition), ("account", &r.account), ("qos", &r.qos)] {
            if let Some(v) = value
                && (v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.,".contains(c)))
            {
                return bad(format!("{what} `{v}` may hold only letters, digits, `-`, `_`, `.` and `,`"));
            }
        }
        for d in &self.extra_directives {
            if d.contains('\n') || d.contains('\r') {
                return bad(format!("directive {d:?} spans lines"));
            }
        }
        for name in self.uploads.iter().map(|u| &u.target).chain(&self.retrieve) {
            if name.is_empty()
                || name.starts_with('/')
                || name.split('/').any(|part| part == "..")
                || name.contains('\0')
            {
                return bad(format!("file name {name:?} must be relative and stay inside the work directory"));
            }
        }
        Ok(())
    }
}

/// Formats a wall time as `D-HH:MM:SS`, rounding up to whole seconds.
pub(crate) fn wall_time(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    format!("{days}-{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}
