//! The scheduler kind: how the engine builds, describes and restores
//! scheduler jobs, and reads its computers from `computers.toml`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_kind::{
    Checkpoint, Context, Ended, Entry, Kind, LogPlan, RemoteLog, RemoteRead, Setup, Stream, command_line,
    command_or_script,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{MAX_RETRIEVE_MIB, STDERR_FILE, STDOUT_FILE};
use crate::{
    AnyScheduler, AnyTransport, Computer, DEFAULT_INTERVAL, Direct, JobSpec, JobState, Local, Resources,
    SchedulerProcess, Slurm, Ssh, SshConfig, Transport, quote,
};

/// Batch jobs on the computers of `computers.toml`.
#[derive(Debug)]
pub struct SchedulerKind;

/// A scheduler job, as the engine stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerJob {
    /// The computer's name.
    pub computer: String,
    /// The job.
    pub spec: JobSpec,
}

/// The computers of an engine, by name.
pub type Computers = HashMap<String, Arc<Computer>>;

impl Checkpoint for JobState {
    const KIND: &'static str = "scheduler";
    const VERSION: u32 = 1;
}

/// The job-file keys of a scheduler job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchedulerEntry {
    computer: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    script: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    nodes: Option<u32>,
    tasks: Option<u32>,
    cpus_per_task: Option<u32>,
    memory_mb: Option<u64>,
    wall_time_secs: Option<u64>,
    partition: Option<String>,
    account: Option<String>,
    qos: Option<String>,
    #[serde(default)]
    directives: Vec<String>,
    prepend: Option<String>,
    append: Option<String>,
    #[serde(default)]
    retrieve: Vec<String>,
    retrieve_max_mib: Option<u64>,
}

impl Kind for SchedulerKind {
    const NAME: &'static str = "scheduler";
    const MARKER: Option<&'static str> = Some("computer");
    const KEYS: &'static [&'static str] = &[
        "computer",
        "nodes",
        "tasks",
        "cpus_per_task",
        "memory_mb",
        "wall_time_secs",
        "partition",
        "account",
        "qos",
        "directives",
        "prepend",
        "append",
        "retrieve",
        "retrieve_max_mib",
    ];
    const SECTION: Option<&'static str> = Some("computer");

    type Spec = SchedulerJob;
    type State = JobState;
    type Process = SchedulerProcess;
    type Env = Arc<Computers>;

    async fn env(setup: &Setup<'_>) -> Result<Arc<Computers>, String> {
        computers(setup.section, setup.config_path).map(Arc::new)
    }

    fn plan(entry: &Entry<'_>) -> Result<SchedulerJob, String> {
        let e: SchedulerEntry = entry.read()?;
        let (command, args) = command_or_script(e.command, e.args, e.script)?;
        let spec = JobSpec {
            id: entry.process_id.to_owned(),
            command,
            args,
            env: e.env,
            resources: Resources {
                nodes: e.nodes,
                tasks: e.tasks,
                cpus_per_task: e.cpus_per_task,
                memory_mb: e.memory_mb,
                wall_time: e.wall_time_secs.map(Duration::from_secs),
                partition: e.partition,
                account: e.account,
                qos: e.qos,
            },
            extra_directives: e.directives,
            prepend: e.prepend.unwrap_or_default(),
            append: e.append.unwrap_or_default(),
            uploads: Vec::new(),
            retrieve: e.retrieve,
            retrieve_limit: match e.retrieve_max_mib {
                None => None,
                Some(mib @ 1..=MAX_RETRIEVE_MIB) => Some(mib << 20),
                Some(mib) => {
                    return Err(format!("retrieve_max_mib: {mib} is out of range (1 to {MAX_RETRIEVE_MIB})"));
                }
            },
            local_dir: entry.out_dir.join(entry.name),
        };
        spec.validate().map_err(|e| e.problem)?;
        Ok(SchedulerJob { computer: e.computer, spec })
    }

    fn check(computers: &Arc<Computers>, _: &str, job: &SchedulerJob) -> Result<(), String> {
        computer(computers, &job.computer).map(drop)
    }

    fn initial(_: &SchedulerJob) -> JobState {
        JobState::Created
    }

    fn build(
        computers: &Arc<Computers>,
        _: Context,
        job: SchedulerJob,
        state: Option<JobState>,
    ) -> Result<SchedulerProcess, String> {
        let computer = computer(computers, &job.computer)?;
        Ok(match state {
            None => SchedulerProcess::new(job.spec, computer),
            Some(state) => SchedulerProcess::restore(job.spec, computer, state),
        })
    }

    fn places(computers: &Arc<Computers>) -> Vec<String> {
        let mut names: Vec<String> = computers.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    fn place(job: &SchedulerJob) -> Option<String> {
        Some(job.computer.clone())
    }

    fn describe(job: &SchedulerJob) -> Vec<(&'static str, String)> {
        let words = std::iter::once(job.spec.command.as_str()).chain(job.spec.args.iter().map(String::as_str));
        vec![("command", command_line(words)), ("outputs", job.spec.local_dir.display().to_string())]
    }

    fn ended(state: &JobState) -> Ended {
        let summary = match state {
            JobState::Finished { exit_code, job_id } => format!("exit {exit_code}, job {job_id}"),
            JobState::Failed { reason, .. } => reason.clone(),
            other => format!("{other:?}"),
        };
        Ended { succeeded: state.succeeded(), summary }
    }

    fn failed(state: &JobState, reason: String) -> JobState {
        JobState::Failed { job_id: state.job_id().map(str::to_owned), reason }
    }

    /// The directory its files are retrieved into.
    fn outputs(job: &SchedulerJob) -> Vec<PathBuf> {
        vec![job.spec.local_dir.clone()]
    }

    fn logs(job: &SchedulerJob, stream: Stream) -> Result<LogPlan, String> {
        Ok(LogPlan { local: job.spec.local_dir.join(file(stream)), why_not: None })
    }

    /// While the job runs, its output is still on the computer: read there,
    /// in base64, so that offsets stay exact whatever the output holds.
    async fn remote_log(
        computers: &Arc<Computers>,
        job: &SchedulerJob,
        read: RemoteRead,
    ) -> Option<Result<RemoteLog, String>> {
        if read.terminal {
            return None;
        }
        let name = &job.computer;
        let Some(c) = computers.get(name) else {
            return Some(Err(format!("computer `{name}` is not configured in this engine")));
        };
        let path = format!("{}/{}", c.work_dir(&job.spec.id), file(read.stream));
        let command = format!(
            "if [ -e {p} ]; then tail -c +{} {p} | head -c {} | base64; fi",
            read.offset.saturating_add(1),
            read.max,
            p = quote(&path)
        );
        Some(match c.transport.run(&command).await {
            Ok(out) if out.status == 0 => from_base64(&out.stdout)
                .map(|bytes| RemoteLog { bytes, source: format!("{name}:{}", file(read.stream)) })
                .ok_or_else(|| format!("reading {path} on {name}: not base64")),
            Ok(out) => Err(format!("reading {path} on {name}: {}", out.stderr.trim())),
            Err(e) => Err(format!("reading {path} on {name}: {e}")),
        })
    }

    fn unfinished(state: &JobState) -> bool {
        matches!(state, JobState::Killed { job_id: Some(_), cancel_pending: true })
    }

    /// A cancel still to be confirmed: handed to the computer's canceller
    /// (which cancels in the background until the scheduler confirms).
    async fn finish(computers: &Arc<Computers>, job: &SchedulerJob, state: JobState) -> JobState {
        let JobState::Killed { job_id: Some(job_id), cancel_pending: true } = state else { return state };
        let Some(computer) = computers.get(&job.computer) else {
            // Not configured here: left as it is, for an engine that has it.
            return std::future::pending().await;
        };
        let canceller = computer.canceller();
        if !canceller.pending().contains(&job_id) {
            canceller.cancel_in_background(job_id.clone());
        }
        while canceller.pending().contains(&job_id) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        JobState::Killed { job_id: Some(job_id), cancel_pending: false }
    }
}

fn file(stream: Stream) -> &'static str {
    match stream {
        Stream::Stdout => STDOUT_FILE,
        Stream::Stderr => STDERR_FILE,
    }
}

fn computer(computers: &Computers, name: &str) -> Result<Arc<Computer>, String> {
    computers.get(name).cloned().ok_or_else(|| {
        let mut known: Vec<&str> = computers.keys().map(String::as_str).collect();
        known.sort_unstable();
        let known = if known.is_empty() { "none are configured".to_owned() } else { known.join(", ") };
        format!("computer `{name}` is not defined (known: {known})")
    })
}

/// One `[computer.NAME]` table of `computers.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComputerEntry {
    transport: TransportKind,
    host: Option<String>,
    scheduler: SchedulerName,
    work_dir: String,
    poll_interval_secs: Option<u64>,
    /// The program that submits (a site's `sbatch` wrapper); SLURM only.
    sbatch: Option<String>,
    /// How long the SSH master stays with nobody using it; ssh only.
    ssh_idle_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportKind {
    Ssh,
    Local,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SchedulerName {
    Slurm,
    SlurmAccounting,
    Direct,
}

/// The computers of the `[computer.NAME]` tables of `computers.toml`
/// (`section` is the `computer` table, as JSON).
///
/// # Errors
///
/// A message naming the file and the computer.
pub fn computers(section: Option<&Value>, path: &Path) -> Result<Computers, String> {
    let entries: BTreeMap<String, ComputerEntry> = match section {
        None => BTreeMap::new(),
        Some(value) => {
            serde_json::from_value(value.clone()).map_err(|e| format!("{}: [computer]: {e}", path.display()))?
        }
    };
    let mut computers = HashMap::new();
    for (name, entry) in entries {
        let where_ = format!("{}: computer `{name}`", path.display());
        let idle = match entry.ssh_idle_secs {
            Some(secs @ 1..=86_400) => Some(Duration::from_secs(secs)),
            Some(_) => return Err(format!("{where_}: ssh_idle_secs must be from 1 to 86400")),
            None => None,
        };
        let transport = match (entry.transport, entry.host) {
            (TransportKind::Ssh, Some(host)) => {
                let mut config = SshConfig::new(host);
                config.idle_timeout = idle.unwrap_or(config.idle_timeout);
                AnyTransport::Ssh(Ssh::new(config))
            }
            (TransportKind::Local, _) if idle.is_some() => {
                return Err(format!("{where_}: ssh_idle_secs is for an ssh computer"));
            }
            (TransportKind::Ssh, None) => return Err(format!("{where_}: an ssh computer needs `host`")),
            (TransportKind::Local, None) => AnyTransport::Local(Local::new()),
            (TransportKind::Local, Some(_)) => return Err(format!("{where_}: a local computer has no `host`")),
        };
        let slurm = |slurm: Slurm| match &entry.sbatch {
            Some(sbatch) => slurm.sbatch(sbatch.clone()),
            None => slurm,
        };
        let scheduler = match entry.scheduler {
            SchedulerName::Slurm => AnyScheduler::Slurm(slurm(Slurm::new())),
            SchedulerName::SlurmAccounting => AnyScheduler::Slurm(slurm(Slurm::with_accounting())),
            SchedulerName::Direct if entry.sbatch.is_some() => {
                return Err(format!("{where_}: `sbatch` is for a SLURM computer"));
            }
            SchedulerName::Direct => AnyScheduler::Direct(Direct),
        };
        if entry.sbatch.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err(format!("{where_}: `sbatch` is empty"));
        }
        let interval = match entry.poll_interval_secs {
            Some(0) => return Err(format!("{where_}: poll_interval_secs must be at least 1")),
            Some(secs) if secs > 86_400 => return Err(format!("{where_}: poll_interval_secs must be at most 86400")),
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_INTERVAL,
        };
        computers.insert(name.clone(), Computer::new(name, transport, scheduler, entry.work_dir, interval));
    }
    Ok(computers)
}

/// Decodes standard base64 as coreutils prints it (lines wrapped: white
/// space ignored); `None` if it is not.
pub(crate) fn from_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(symbols).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retrieval_limit_is_read_in_mib_and_range_checked() {
        let read = |mib: serde_json::Value| {
            let table = serde_json::json!({"computer": "c", "command": "true", "retrieve_max_mib": mib});
            let table = table.as_object().unwrap().clone();
            let nested = |_: &Entry<'_>| -> Result<drover_kind::Job, String> { unreachable!() };
            let entry =
                Entry { name: "f.j", process_id: "r.f.j", table: &table, out_dir: Path::new("/o"), plan: &nested };
            SchedulerKind::plan(&entry).map(|job| job.spec.retrieve_limit)
        };
        assert_eq!(read(serde_json::json!(2)), Ok(Some(2 << 20)));
        assert_eq!(read(serde_json::json!(MAX_RETRIEVE_MIB)), Ok(Some(1 << 40)));
        for bad in [0, MAX_RETRIEVE_MIB + 1, u64::MAX] {
            let e = read(serde_json::json!(bad)).unwrap_err();
            assert!(e.contains("retrieve_max_mib") && e.contains("out of range"), "{bad}: {e}");
        }
    }

    #[test]
    fn base64_as_coreutils_prints_it() {
        assert_eq!(from_base64("aGVsbG8K\n").as_deref(), Some(&b"hello\n"[..]));
        assert_eq!(from_base64("w7w=").as_deref(), Some("ü".as_bytes()));
        assert_eq!(from_base64("/w==").as_deref(), Some(&[0xff][..]));
        assert_eq!(from_base64(""), Some(Vec::new()));
        assert_eq!(from_base64("abc"), None);
        assert_eq!(from_base64("a*==").as_deref(), None);
    }

    #[test]
    fn computer_settings_are_checked() {
        let read = |extra: Value, transport: &str, scheduler: &str| {
            let mut c = serde_json::json!({ "transport": transport, "scheduler": scheduler, "work_dir": "w" });
            if transport == "ssh" {
                c["host"] = "h".into();
            }
            c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            computers(Some(&serde_json::json!({ "c": c })), Path::new("computers.toml")).map(|c| c.len())
        };
        use serde_json::json;
        assert_eq!(read(json!({"sbatch": "/site/sbatch", "ssh_idle_secs": 30}), "ssh", "slurm"), Ok(1));
        let err = |r: Result<usize, String>, needle: &str| {
            let e = r.unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        err(read(json!({"ssh_idle_secs": 0}), "ssh", "slurm"), "from 1 to 86400");
        err(read(json!({"ssh_idle_secs": 86_401}), "ssh", "slurm"), "from 1 to 86400");
        err(read(json!({"ssh_idle_secs": 5}), "local", "slurm"), "for an ssh computer");
        err(read(json!({"sbatch": "x"}), "ssh", "direct"), "for a SLURM computer");
        err(read(json!({"sbatch": " "}), "ssh", "slurm-accounting"), "empty");
    }
}
