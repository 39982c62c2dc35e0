//! The cloud kind: how the engine builds, describes and restores cloud jobs,
//! and finds its Kubernetes cluster from `computers.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_kind::{
    Checkpoint, Context, Ended, Entry, Kind, LogPlan, RemoteLog, RemoteRead, Setup, Stream, command_line,
    command_or_script,
};
use serde::{Deserialize, Serialize};

use crate::{Cloud, CloudProcess, CloudSettings, CloudSpec, CloudState, DEFAULT_CLEANUP_AFTER, Quantities};

/// Containers in pods or batch Jobs on a Kubernetes cluster.
#[derive(Debug)]
pub struct CloudKind;

/// A cloud job, as the engine stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudJob {
    /// What it runs.
    pub spec: CloudSpec,
}

/// The cluster of an engine's cloud jobs, or why it has none.
#[derive(Clone, Debug)]
pub struct CloudEnv(pub Result<Arc<Cloud>, String>);

impl CloudEnv {
    fn cloud(&self) -> Result<&Arc<Cloud>, String> {
        self.0.as_ref().map_err(|why| format!("no Kubernetes cluster: {why}"))
    }
}

impl Checkpoint for CloudState {
    const KIND: &'static str = "cloud";
    const VERSION: u32 = 1;
}

/// The `[cloud]` table of `computers.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    cleanup_after_secs: Option<u64>,
}

/// The job-file keys of a cloud job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudEntry {
    image: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    script: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
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

/// The settings of the `[cloud]` table of `computers.toml` (`section`, as
/// JSON), with `~/` in `kubeconfig` taken from `$HOME`.
///
/// # Errors
///
/// A message naming the file.
pub fn settings(section: Option<&serde_json::Value>, path: &std::path::Path) -> Result<CloudSettings, String> {
    let entry: Section = match section {
        None => Section::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("{}: [cloud]: {e}", path.display()))?,
    };
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let kubeconfig = entry.kubeconfig.map(|p| match (p.strip_prefix("~"), &home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p,
    });
    let cleanup_after = match entry.cleanup_after_secs {
        Some(secs) if secs > 365 * 86_400 => {
            return Err(format!("{}: [cloud]: cleanup_after_secs must be at most a year", path.display()));
        }
        Some(secs) => Duration::from_secs(secs),
        None => DEFAULT_CLEANUP_AFTER,
    };
    Ok(CloudSettings { kubeconfig, context: entry.context, namespace: entry.namespace, cleanup_after })
}

impl Kind for CloudKind {
    const NAME: &'static str = "cloud";
    const MARKER: Option<&'static str> = Some("image");
    const KEYS: &'static [&'static str] = &[
        "image",
        "cpu",
        "memory",
        "cpu_limit",
        "memory_limit",
        "namespace",
        "labels",
        "service_account",
        "batch_job",
        "backoff_limit",
    ];
    const SECTION: Option<&'static str> = Some("cloud");

    type Spec = CloudJob;
    type State = CloudState;
    type Process = CloudProcess;
    type Env = CloudEnv;

    /// Connects only when cloud jobs are wanted; a cluster that cannot be
    /// reached is no error here (cloud jobs are refused then, with the reason).
    async fn env(setup: &Setup<'_>) -> Result<CloudEnv, String> {
        let settings = settings(setup.section, setup.config_path)?;
        if !setup.wanted {
            return Ok(CloudEnv(Err("no cloud jobs were expected".to_owned())));
        }
        Ok(CloudEnv(Cloud::connect(&settings).await.map_err(|e| e.to_string())))
    }

    fn plan(entry: &Entry<'_>) -> Result<CloudJob, String> {
        let e: CloudEntry = entry.read()?;
        // No command: the image's own entrypoint, with `args` if any.
        let (command, args) = match (e.command, e.script) {
            (None, None) => (Vec::new(), e.args),
            (command, script) => {
                let (program, args) = command_or_script(command, e.args, script)?;
                (vec![program], args)
            }
        };
        let spec = CloudSpec {
            id: entry.process_id.to_owned(),
            image: e.image,
            command,
            args,
            env: e.env,
            requests: Quantities { cpu: e.cpu, memory: e.memory },
            limits: Quantities { cpu: e.cpu_limit, memory: e.memory_limit },
            namespace: e.namespace,
            labels: e.labels,
            service_account: e.service_account,
            batch_job: e.batch_job.unwrap_or(false),
            backoff_limit: e.backoff_limit,
            local_dir: entry.out_dir.join(entry.name),
        };
        spec.validate().map_err(|e| e.to_string())?;
        Ok(CloudJob { spec })
    }

    fn check(env: &CloudEnv, id: &str, job: &CloudJob) -> Result<(), String> {
        // The spec's id names the pod: two processes must never share one.
        if job.spec.id != id {
            return Err(format!("a cloud job's spec must carry its process id, not `{}`", job.spec.id));
        }
        job.spec.validate().map_err(|e| e.to_string())?;
        env.cloud().map(drop)
    }

    fn initial(_: &CloudJob) -> CloudState {
        CloudState::Created
    }

    fn build(env: &CloudEnv, _: Context, job: CloudJob, state: Option<CloudState>) -> Result<CloudProcess, String> {
        let cloud = env.cloud()?.clone();
        Ok(CloudProcess::restore(job.spec, cloud, state.unwrap_or(CloudState::Created)))
    }

    fn describe(job: &CloudJob) -> Vec<(&'static str, String)> {
        let spec = &job.spec;
        let ns = spec.namespace.as_deref().unwrap_or("(the cluster's default)");
        let object = if spec.batch_job { "Job" } else { "pod" };
        vec![
            ("image", spec.image.clone()),
            ("command", command_line(spec.command.iter().chain(&spec.args).map(String::as_str))),
            ("object", format!("{object} {} in namespace {ns}", spec.object_name())),
            ("outputs", spec.local_dir.display().to_string()),
        ]
    }

    fn ended(state: &CloudState) -> Ended {
        let summary = match state {
            CloudState::Finished { exit_code, name } => format!("exit {exit_code}, {name}"),
            // The exit code first, as a shell job's line gives it: the
            // API's reason ("Error", "Completed") says less.
            CloudState::Failed { reason, exit_code: Some(code) } => format!("exit {code}, {reason}"),
            CloudState::Failed { reason, exit_code: None } => reason.clone(),
            other => format!("{other:?}"),
        };
        Ended { succeeded: state.succeeded(), summary }
    }

    async fn close(env: &CloudEnv) {
        if let Ok(cloud) = &env.0 {
            let deleted = cloud.clean_up_now().await;
            tracing::debug!(deleted, "deleted the ended objects the janitor would have deleted later");
        }
    }

    fn failed(_state: &CloudState, reason: String) -> CloudState {
        CloudState::Failed { reason, exit_code: None }
    }

    /// The directory its logs are fetched into.
    fn outputs(job: &CloudJob) -> Vec<PathBuf> {
        vec![job.spec.local_dir.clone()]
    }

    fn logs(job: &CloudJob, stream: Stream) -> Result<LogPlan, String> {
        if stream == Stream::Stderr {
            return Err("has one log per container in Kubernetes: its stdout".to_owned());
        }
        let dir = &job.spec.local_dir;
        Ok(LogPlan { local: dir.join("stdout.txt"), why_not: Some(dir.join("logs-unavailable.txt")) })
    }

    /// While it runs, or before its logs are fetched: from the API.
    async fn remote_log(env: &CloudEnv, job: &CloudJob, read: RemoteRead) -> Option<Result<RemoteLog, String>> {
        let cloud = match env.cloud() {
            Ok(cloud) => cloud,
            Err(e) => return Some(Err(e)),
        };
        let spec = &job.spec;
        let (ns, name) =
            (spec.namespace.clone().unwrap_or_else(|| cloud.default_namespace().to_owned()), spec.object_name());
        Some(match cloud.logs(&ns, &name, spec.batch_job).await {
            Ok(all) => {
                let start = usize::try_from(read.offset).unwrap_or(usize::MAX).min(all.len());
                let end = start.saturating_add(usize::try_from(read.max).unwrap_or(usize::MAX)).min(all.len());
                Ok(RemoteLog { bytes: all.as_bytes()[start..end].to_vec(), source: format!("pod {name}") })
            }
            Err(e) => Err(format!("the logs of {ns}/{name}: {e}")),
        })
    }

    fn unfinished(state: &CloudState) -> bool {
        matches!(state, CloudState::Killed { name: Some(_), delete_pending: true })
    }

    /// A delete still to be confirmed: retried in the background until the
    /// API confirms.
    async fn finish(env: &CloudEnv, job: &CloudJob, state: CloudState) -> CloudState {
        let CloudState::Killed { name: Some(name), delete_pending: true } = state else { return state };
        let Ok(cloud) = env.cloud() else { return std::future::pending().await };
        let namespace = job.spec.namespace.clone().unwrap_or_else(|| cloud.default_namespace().to_owned());
        if !cloud.delete_pending(&namespace, &name) {
            cloud.delete_in_background(&namespace, &name, job.spec.batch_job);
        }
        while cloud.delete_pending(&namespace, &name) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        CloudState::Killed { name: Some(name), delete_pending: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_container_s_end_names_its_exit_code() {
        let failed = CloudState::Failed { reason: "Completed".into(), exit_code: Some(3) };
        let ended = CloudKind::ended(&failed);
        assert!(!ended.succeeded);
        assert_eq!(ended.summary, "exit 3, Completed");
        let unscheduled = CloudState::Failed { reason: "the image cannot be pulled".into(), exit_code: None };
        assert_eq!(CloudKind::ended(&unscheduled).summary, "the image cannot be pulled");
    }
}
