//! Job files: TOML, one file may hold many jobs.
//!
//! ```toml
//! [[job]]
//! id = "greet"              # unique in the file; default: job-<n>
//! command = "echo"          # run directly, no shell
//! args = ["hello", "world"]
//!
//! [[job]]
//! id = "count"
//! script = "seq 3 | wc -l"  # run with /bin/sh -c
//! env = { LC_ALL = "C" }
//! cwd = "/tmp"
//! timeout_secs = 30
//!
//! [[job]]
//! id = "relax"
//! computer = "cluster"      # a scheduler job, on a computer of computers.toml
//! command = "pw.x"
//! args = ["-in", "relax.in"]
//! nodes = 1
//! tasks = 4
//! wall_time_secs = 3600
//! partition = "debug"
//! retrieve = ["relax.out"]
//!
//! [[job]]
//! id = "render"
//! image = "python:3.12-slim" # a cloud job: a pod on the Kubernetes cluster
//! command = "python"         # the entrypoint (default: the image's)
//! args = ["-c", "print(42)"]
//! cpu = "500m"               # requests; cpu_limit and memory_limit for limits
//! memory = "256Mi"
//! namespace = "science"      # default: the cluster configuration's
//! labels = { team = "physics" }
//! service_account = "runner"
//! batch_job = true           # a batch/v1 Job instead of a bare pod
//! backoff_limit = 2
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_engine::Job;
use drover_scheduler::{JobSpec, Resources};
use drover_shell::{Output, ShellSpec};
use serde::Deserialize;

/// A job file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    job: Vec<JobEntry>,
}

/// One `[[job]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    id: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    script: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    timeout_secs: Option<f64>,
    // Scheduler jobs.
    computer: Option<String>,
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
    // Cloud jobs.
    image: Option<String>,
    cpu: Option<String>,
    memory: Option<String>,
    cpu_limit: Option<String>,
    memory_limit: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    service_account: Option<String>,
    batch_job: Option<bool>,
    backoff_limit: Option<i32>,
}

impl JobEntry {
    /// The first key set that only shell jobs take.
    fn shell_key(&self) -> Option<&'static str> {
        first_set(&[("cwd", self.cwd.is_some()), ("timeout_secs", self.timeout_secs.is_some())])
    }

    /// The first key set that only scheduler jobs take.
    fn scheduler_key(&self) -> Option<&'static str> {
        first_set(&[
            ("nodes", self.nodes.is_some()),
            ("tasks", self.tasks.is_some()),
            ("cpus_per_task", self.cpus_per_task.is_some()),
            ("memory_mb", self.memory_mb.is_some()),
            ("wall_time_secs", self.wall_time_secs.is_some()),
            ("partition", self.partition.is_some()),
            ("account", self.account.is_some()),
            ("qos", self.qos.is_some()),
            ("directives", !self.directives.is_empty()),
            ("prepend", self.prepend.is_some()),
            ("append", self.append.is_some()),
            ("retrieve", !self.retrieve.is_empty()),
        ])
    }

    /// The first key set that only cloud jobs take.
    fn cloud_key(&self) -> Option<&'static str> {
        first_set(&[
            ("image", self.image.is_some()),
            ("cpu", self.cpu.is_some()),
            ("memory", self.memory.is_some()),
            ("cpu_limit", self.cpu_limit.is_some()),
            ("memory_limit", self.memory_limit.is_some()),
            ("namespace", self.namespace.is_some()),
            ("labels", !self.labels.is_empty()),
            ("service_account", self.service_account.is_some()),
            ("batch_job", self.batch_job.is_some()),
            ("backoff_limit", self.backoff_limit.is_some()),
        ])
    }
}

fn first_set(keys: &[(&'static str, bool)]) -> Option<&'static str> {
    keys.iter().find(|(_, set)| *set).map(|(key, _)| *key)
}

/// A job ready to run.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) id: String,
    pub(crate) job: Job,
}

/// Reads and checks every file; any error in any file means nothing runs.
///
/// # Errors
///
/// A message naming the file, and the line and column where TOML says so.
pub(crate) fn load(
    paths: &[PathBuf],
    out_dir: &Path,
    run_id: &str,
    computers: &[String],
) -> Result<Vec<Planned>, String> {
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.job.is_empty() {
            return Err(format!("{}: no [[job]] in the file", path.display()));
        }
        let stem = path.file_stem().map_or_else(|| "jobs".into(), |s| s.to_string_lossy().into_owned());
        for (n, entry) in file.job.into_iter().enumerate() {
            let local = entry.id.clone().unwrap_or_else(|| format!("job-{}", n + 1));
            if local.is_empty() || !local.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!(
                    "{}: job {}: id `{local}` may hold only letters, digits, `-`, `_` and `.`",
                    path.display(),
                    n + 1
                ));
            }
            let id = format!("{stem}.{local}");
            if !seen.insert(id.clone()) {
                return Err(format!("{}: job id `{local}` appears twice", path.display()));
            }
            let where_ = format!("{}: job `{local}`", path.display());
            let job = match entry.computer.clone() {
                None if entry.image.is_some() => {
                    cloud_job(entry, &where_, out_dir.join(&id), &format!("{run_id}.{id}"))?
                }
                None => shell_job(entry, &where_, out_dir, &id)?,
                Some(computer) => {
                    if let Some(key) = entry.cloud_key() {
                        return Err(format!("{where_}: `{key}` is for cloud jobs (give `image`, not `computer`)"));
                    }
                    if !computers.contains(&computer) {
                        let known =
                            if computers.is_empty() { "none are configured".to_owned() } else { computers.join(", ") };
                        return Err(format!("{where_}: computer `{computer}` is not defined (known: {known})"));
                    }
                    scheduler_job(entry, &where_, out_dir.join(&id), &format!("{run_id}.{id}"), computer)?
                }
            };
            planned.push(Planned { id, job });
        }
    }
    Ok(planned)
}

fn command_or_script(
    command: Option<String>,
    args: Vec<String>,
    script: Option<String>,
    where_: &str,
) -> Result<(String, Vec<String>), String> {
    match (command, script) {
        (Some(command), None) => Ok((command, args)),
        (None, Some(script)) if args.is_empty() => Ok(("/bin/sh".to_owned(), vec!["-c".to_owned(), script])),
        (None, Some(_)) => Err(format!("{where_}: `args` go with `command`, not with `script`")),
        (Some(_), Some(_)) => Err(format!("{where_}: give `command` or `script`, not both")),
        (None, None) => Err(format!("{where_}: give `command` (with `args`) or `script`")),
    }
}

fn shell_job(entry: JobEntry, where_: &str, out_dir: &Path, id: &str) -> Result<Job, String> {
    if let Some(key) = entry.scheduler_key() {
        return Err(format!("{where_}: `{key}` is for scheduler jobs (give `computer`)"));
    }
    if let Some(key) = entry.cloud_key() {
        return Err(format!("{where_}: `{key}` is for cloud jobs (give `image`)"));
    }
    let (program, args) = command_or_script(entry.command, entry.args, entry.script, where_)?;
    let mut spec = ShellSpec::program(program, args);
    spec.env.set = entry.env;
    spec.cwd = entry.cwd;
    if let Some(secs) = entry.timeout_secs {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(format!("{where_}: timeout_secs must be a positive number"));
        }
        spec.timeout = Some(Duration::from_secs_f64(secs));
    }
    spec.stdout = Output::File(out_dir.join(format!("{id}.out")));
    spec.stderr = Output::File(out_dir.join(format!("{id}.err")));
    Ok(Job::Shell { spec })
}

fn scheduler_job(entry: JobEntry, where_: &str, local_dir: PathBuf, id: &str, computer: String) -> Result<Job, String> {
    if entry.cwd.is_some() || entry.timeout_secs.is_some() {
        return Err(format!(
            "{where_}: `cwd` and `timeout_secs` are for shell jobs (a scheduler job has `wall_time_secs`)"
        ));
    }
    let (command, args) = command_or_script(entry.command, entry.args, entry.script, where_)?;
    let spec = JobSpec {
        id: id.to_owned(),
        command,
        args,
        env: entry.env,
        resources: Resources {
            nodes: entry.nodes,
            tasks: entry.tasks,
            cpus_per_task: entry.cpus_per_task,
            memory_mb: entry.memory_mb,
            wall_time: entry.wall_time_secs.map(Duration::from_secs),
            partition: entry.partition,
            account: entry.account,
            qos: entry.qos,
        },
        extra_directives: entry.directives,
        prepend: entry.prepend.unwrap_or_default(),
        append: entry.append.unwrap_or_default(),
        uploads: Vec::new(),
        retrieve: entry.retrieve,
        local_dir,
    };
    spec.validate().map_err(|e| format!("{where_}: {}", e.problem))?;
    Ok(Job::Scheduler { computer, spec })
}

fn cloud_job(entry: JobEntry, where_: &str, local_dir: PathBuf, id: &str) -> Result<Job, String> {
    if let Some(key) = entry.shell_key().or_else(|| entry.scheduler_key()) {
        return Err(format!("{where_}: `{key}` is not for cloud jobs (an `image` makes this one)"));
    }
    // No command: the image's own entrypoint, with `args` if any.
    let (command, args) = match (entry.command, entry.script) {
        (None, None) => (Vec::new(), entry.args),
        (command, script) => {
            let (program, args) = command_or_script(command, entry.args, script, where_)?;
            (vec![program], args)
        }
    };
    let spec = drover_cloud::CloudSpec {
        id: id.to_owned(),
        image: entry.image.unwrap_or_default(),
        command,
        args,
        env: entry.env,
        requests: drover_cloud::Quantities { cpu: entry.cpu, memory: entry.memory },
        limits: drover_cloud::Quantities { cpu: entry.cpu_limit, memory: entry.memory_limit },
        namespace: entry.namespace,
        labels: entry.labels,
        service_account: entry.service_account,
        batch_job: entry.batch_job.unwrap_or(false),
        backoff_limit: entry.backoff_limit,
        local_dir,
    };
    spec.validate().map_err(|e| format!("{where_}: {e}"))?;
    Ok(Job::Cloud { spec })
}
