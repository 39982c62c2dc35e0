//! The cloud process: a pod (or batch Job) on demand, followed through the
//! namespace's shared watch, its logs fetched at the end, deleted on kill.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use drover_core::{Process, RetryPolicy, State, interruptible, retrying};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

use crate::cloud::{Cloud, Observed};
use crate::spec::{CloudSpec, MANAGED_BY, OBJECT_LABEL, PROCESS_ANNOTATION};

/// Where a cloud job is. Every state carries what the next step needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloudState {
    /// Not started.
    Created,
    /// Creating the object. Recorded before the create, so that an
    /// interrupted create finds its object by name instead of making a second.
    Creating {
        /// The pod's or Job's name.
        name: String,
    },
    /// Created; waiting to be scheduled and started.
    Pending {
        /// The pod's or Job's name.
        name: String,
    },
    /// Its container runs.
    Running {
        /// The pod's or Job's name.
        name: String,
    },
    /// The container ended on its own; its exit code says whether it succeeded.
    Finished {
        /// The pod's or Job's name.
        name: String,
        /// The container's exit code.
        exit_code: i32,
    },
    /// It could not run, or was ended by the cluster, in the API's own words.
    Failed {
        /// What went wrong.
        reason: String,
        /// The container's exit code, if it ran.
        exit_code: Option<i32>,
    },
    /// Killed. With `delete_pending`, the API could not be reached and the
    /// deletion is retried in the background until it is confirmed.
    Killed {
        /// The object's name, if it may exist.
        name: Option<String>,
        /// Whether the deletion is still to be confirmed.
        delete_pending: bool,
    },
    /// Paused itself after its retries ran out (the API server could not be
    /// reached); resuming it tries `resume` again.
    Stalled {
        /// The state to try again from.
        resume: Box<CloudState>,
        /// The last error.
        error: String,
    },
}

impl State for CloudState {
    fn is_done(&self) -> bool {
        matches!(self, CloudState::Finished { .. } | CloudState::Failed { .. } | CloudState::Killed { .. })
    }

    fn is_paused(&self) -> bool {
        matches!(self, CloudState::Stalled { .. })
    }
}

impl CloudState {
    /// Whether it finished with exit code 0.
    pub fn succeeded(&self) -> bool {
        matches!(self, CloudState::Finished { exit_code: 0, .. })
    }

    /// The object's name, once it may exist.
    pub fn name(&self) -> Option<&str> {
        match self {
            CloudState::Creating { name }
            | CloudState::Pending { name }
            | CloudState::Running { name }
            | CloudState::Finished { name, .. } => Some(name),
            CloudState::Killed { name, .. } => name.as_deref(),
            CloudState::Stalled { resume, .. } => resume.name(),
            CloudState::Created | CloudState::Failed { .. } => None,
        }
    }
}

/// A cloud job on a [`Cloud`]. See the [crate docs](crate).
///
/// Pause only stops following the pod: Kubernetes cannot pause a container,
/// so it runs on, and resume follows it again. Kill deletes the pod (or the
/// Job with its pods) and ends once the API confirmed; if the API cannot be
/// reached within `kill_timeout`, it ends `Killed { delete_pending: true }` at
/// once and the deletion is retried in the background.
#[derive(Debug)]
pub struct CloudProcess {
    spec: CloudSpec,
    cloud: Arc<Cloud>,
    state: CloudState,
    retry: RetryPolicy,
    kill_timeout: Duration,
}

struct Failure {
    message: String,
    transient: bool,
}

fn failure(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(status) => Failure {
            message: if status.message.is_empty() { status.reason.clone() } else { status.message.clone() },
            // Too many requests, or the server is not ready: try again.
            transient: status.code == 429 || status.code >= 500,
        },
        other => Failure { message: other.to_string(), transient: true },
    }
}

impl CloudProcess {
    /// A job to run `spec` on `cloud`.
    pub fn new(spec: CloudSpec, cloud: Arc<Cloud>) -> CloudProcess {
        CloudProcess::restore(spec, cloud, CloudState::Created)
    }

    /// A process restored in `state` (from a checkpoint).
    pub fn restore(spec: CloudSpec, cloud: Arc<Cloud>, state: CloudState) -> CloudProcess {
        CloudProcess {
            spec,
            cloud,
            state,
            retry: RetryPolicy { attempts: 5, first_delay: Duration::from_secs(2) },
            kill_timeout: Duration::from_secs(10),
        }
    }

    /// Retries of the create when the API cannot be reached (default: 5
    /// tries from 2 s).
    pub fn with_retry(mut self, retry: RetryPolicy) -> CloudProcess {
        self.retry = retry;
        self
    }

    /// How long a kill waits for the API before it leaves the deletion to
    /// the background.
    pub fn with_kill_timeout(mut self, timeout: Duration) -> CloudProcess {
        self.kill_timeout = timeout;
        self
    }

    /// What it runs.
    pub fn spec(&self) -> &CloudSpec {
        &self.spec
    }

    fn namespace(&self) -> String {
        self.spec.namespace.clone().unwrap_or_else(|| self.cloud.default_namespace().to_owned())
    }

    fn stall(&mut self, from: CloudState, error: String) {
        self.state = CloudState::Stalled { resume: Box::new(from), error };
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        let mut labels: BTreeMap<String, String> = self.spec.labels.clone();
        labels.insert(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned());
        labels.insert(OBJECT_LABEL.to_owned(), name.to_owned());
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(PROCESS_ANNOTATION.to_owned(), self.spec.id.clone())])),
            ..ObjectMeta::default()
        }
    }

    fn pod_spec(&self) -> PodSpec {
        let quantities = |q: &crate::spec::Quantities| {
            let mut map = BTreeMap::new();
            if let Some(cpu) = &q.cpu {
                map.insert("cpu".to_owned(), Quantity(cpu.clone()));
            }
            if let Some(memory) = &q.memory {
                map.insert("memory".to_owned(), Quantity(memory.clone()));
            }
            (!map.is_empty()).then_some(map)
        };
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let env: Vec<EnvVar> = self
            .spec
            .env
            .iter()
            .map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), ..EnvVar::default() })
            .collect();
        PodSpec {
            containers: vec![Container {
                name: "main".to_owned(),
                image: Some(self.spec.image.clone()),
                command: non_empty(&self.spec.command),
                args: non_empty(&self.spec.args),
                env: (!env.is_empty()).then_some(env),
                resources: Some(ResourceRequirements {
                    requests: quantities(&self.spec.requests),
                    limits: quantities(&self.spec.limits),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            restart_policy: Some("Never".to_owned()),
            service_account_name: self.spec.service_account.clone(),
            ..PodSpec::default()
        }
    }

    async fn create_once(&self, name: &str) -> Result<(), Failure> {
        let namespace = self.namespace();
        let client = self.cloud.client().clone();
        let stats = self.cloud.stats_arc();
        let pp = PostParams::default();
        stats.creates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let created = if self.spec.batch_job {
            let job = Job {
                metadata: self.meta(name),
                spec: Some(JobSpec {
                    backoff_limit: Some(self.spec.backoff_limit.unwrap_or(0)),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta { labels: self.meta(name).labels, ..ObjectMeta::default() }),
                        spec: Some(self.pod_spec()),
                    },
                    ..JobSpec::default()
                }),
                ..Job::default()
            };
            Api::<Job>::namespaced(client.clone(), &namespace).create(&pp, &job).await.map(|j| j.metadata)
        } else {
            let pod = Pod { metadata: self.meta(name), spec: Some(self.pod_spec()), ..Pod::default() };
            Api::<Pod>::namespaced(client.clone(), &namespace).create(&pp, &pod).await.map(|p| p.metadata)
        };
        match created {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && status.reason == "AlreadyExists" => {
                // An interrupted create went through, or the name is taken.
                stats.gets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let meta = if self.spec.batch_job {
                    Api::<Job>::namespaced(client, &namespace).get(name).await.map(|j| j.metadata)
                } else {
                    Api::<Pod>::namespaced(client, &namespace).get(name).await.map(|p| p.metadata)
                }
                .map_err(|e| failure(&e))?;
                let owner = meta.annotations.as_ref().and_then(|a| a.get(PROCESS_ANNOTATION));
                if owner == Some(&self.spec.id) {
                    Ok(())
                } else {
                    Err(Failure {
                        message: format!("{name} exists in namespace {namespace} and is not this process's"),
                        transient: false,
                    })
                }
            }
            Err(e) => Err(failure(&e)),
        }
    }

    async fn create(&mut self, name: String) {
        let this = &*self;
        let result = retrying(self.retry, |f: &Failure| f.transient, || this.create_once(&name)).await;
        match result {
            Ok(()) => self.state = CloudState::Pending { name },
            Err(f) if f.transient => {
                let error = format!("the API server cannot be reached: {}", f.message);
                self.stall(CloudState::Creating { name }, error);
            }
            Err(f) => self.state = CloudState::Failed { reason: f.message, exit_code: None },
        }
    }

    /// Waits on the shared watch until the object moves on.
    async fn follow(&mut self, name: String, running: bool) {
        let namespace = self.namespace();
        let jobs = self.spec.batch_job;
        let mut rx = self.cloud.follow(&namespace, &name, jobs);
        let mut asked = false;
        let seen = loop {
            let observed = rx.borrow_and_update().clone();
            if let Some(next) = next_state(&name, &observed, running, jobs) {
                break Some((next, observed));
            }
            let unseen = if jobs { !observed.job_seen } else { !observed.pod_seen };
            if unseen && !asked {
                // The watch shows a new object within moments; one it has not
                // seen for a while may have been deleted while nobody followed
                // it (during a pause, or while no engine ran): ask, once.
                match tokio::time::timeout(UNSEEN_GRACE, interruptible(rx.changed())).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        asked = true;
                        if let Ok(false) = self.cloud.exists(&namespace, &name, jobs).await {
                            let kind = if jobs { "Job" } else { "pod" };
                            let reason =
                                format!("the {kind} {name} no longer exists: it was deleted before drover saw it end");
                            break Some((CloudState::Failed { reason, exit_code: None }, observed));
                        }
                        continue;
                    }
                }
            }
            if interruptible(rx.changed()).await.is_err() {
                break None;
            }
        };
        drop(rx);
        self.cloud.unfollow(&namespace, &name);
        let Some((next, observed)) = seen else { return };
        let ended =
            matches!(observed.phase.as_deref(), Some("Succeeded" | "Failed")) || observed.job_succeeded.is_some();
        let exists = (observed.pod_seen || observed.job_seen) && !observed.pod_deleted && !observed.job_deleted;
        if matches!(next, CloudState::Failed { .. }) && !ended && exists {
            // It cannot run (its image cannot be pulled, say) and would wait
            // for ever: delete it.
            let deleted = tokio::time::timeout(self.kill_timeout, self.cloud.delete(&namespace, &name, jobs)).await;
            if !matches!(deleted, Ok(Ok(()))) {
                self.cloud.delete_in_background(&namespace, &name, jobs);
            }
        } else if next.is_done() && ended {
            self.save_logs(&namespace, &name).await;
        }
        self.state = next;
    }

    /// Writes the container's logs to `stdout.txt` in the local directory, if
    /// the API offers them; else says why in `logs-unavailable.txt`.
    async fn save_logs(&self, namespace: &str, name: &str) {
        let dir = &self.spec.local_dir;
        let _ = tokio::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).await;
        match tokio::time::timeout(Duration::from_secs(60), self.cloud.logs(namespace, name, self.spec.batch_job)).await
        {
            Ok(Ok(text)) => {
                let _ = tokio::fs::write(dir.join("stdout.txt"), text).await;
            }
            Ok(Err(e)) => {
                let _ = tokio::fs::write(dir.join("logs-unavailable.txt"), format!("{}\n", failure(&e).message)).await;
            }
            Err(_) => {
                let _ = tokio::fs::write(dir.join("logs-unavailable.txt"), "the API did not answer in 60 s\n").await;
            }
        }
    }
}

/// How long a followed object may stay unseen by the watch before the
/// process asks the API whether it still exists.
const UNSEEN_GRACE: Duration = Duration::from_secs(10);

/// Why a container cannot start that no waiting cures: the job fails.
const CANNOT_START: [&str; 6] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The state an observation leads to, if it leads anywhere.
fn next_state(name: &str, o: &Observed, running: bool, job: bool) -> Option<CloudState> {
    let name = name.to_owned();
    if job {
        match o.job_succeeded {
            // Complete: its controller saw a pod succeed.
            Some(true) => return Some(CloudState::Finished { name, exit_code: 0 }),
            Some(false) => {
                let reason =
                    o.job_message.clone().or_else(|| o.reason.clone()).unwrap_or_else(|| "the Job failed".into());
                return Some(CloudState::Failed { reason, exit_code: o.exit_code });
            }
            None => {}
        }
        if o.job_deleted {
            let reason = format!("the Job {name} was deleted outside drover");
            return Some(CloudState::Failed { reason, exit_code: None });
        }
    } else {
        match o.phase.as_deref() {
            Some("Succeeded") => return Some(CloudState::Finished { name, exit_code: o.exit_code.unwrap_or(0) }),
            Some("Failed") => {
                return Some(match (o.exit_code, &o.pod_reason) {
                    // The pod itself was ended (evicted, past its deadline).
                    (code, Some(pod_reason)) => CloudState::Failed { reason: pod_reason.clone(), exit_code: code },
                    // The container ran and exited non-zero: a finished job that failed.
                    (Some(code), None) if code != 0 && o.reason.as_deref().is_none_or(|r| r.starts_with("Error")) => {
                        CloudState::Finished { name, exit_code: code }
                    }
                    (code, None) => CloudState::Failed {
                        reason: o.reason.clone().unwrap_or_else(|| "the pod failed".into()),
                        exit_code: code,
                    },
                });
            }
            _ => {}
        }
        if o.pod_deleted {
            let reason = format!("the pod {name} was deleted before drover saw it end");
            return Some(CloudState::Failed { reason, exit_code: o.exit_code });
        }
    }
    if let Some(reason) = &o.reason
        && CANNOT_START.iter().any(|r| reason.starts_with(r))
    {
        return Some(CloudState::Failed { reason: reason.clone(), exit_code: None });
    }
    if !running && o.phase.as_deref() == Some("Running") {
        return Some(CloudState::Running { name });
    }
    None
}

impl Process<CloudState> for CloudProcess {
    fn state(&self) -> &CloudState {
        &self.state
    }

    fn transition_to(&mut self, state: CloudState) {
        self.state = state;
    }

    async fn kill(&mut self) {
        let Some(name) = self.state.name().map(str::to_owned) else {
            self.state = CloudState::Killed { name: None, delete_pending: false };
            return;
        };
        let namespace = self.namespace();
        let job = self.spec.batch_job;
        let confirmed = matches!(
            tokio::time::timeout(self.kill_timeout, self.cloud.delete(&namespace, &name, job)).await,
            Ok(Ok(()))
        );
        if !confirmed {
            self.cloud.delete_in_background(&namespace, &name, job);
        } else if matches!(self.state, CloudState::Creating { .. }) {
            // The create this kill interrupted may still land after the
            // delete: delete again a little later.
            self.cloud.delete_in_background_after(&namespace, &name, job, Duration::from_secs(5));
        }
        self.state = CloudState::Killed { name: Some(name), delete_pending: !confirmed };
    }

    /// Nothing to do: the runtime dropped the wait; the pod runs on.
    async fn pause(&mut self) {}

    async fn resume(&mut self) {
        if let CloudState::Stalled { resume, .. } = &self.state {
            self.state = (**resume).clone();
        }
    }

    async fn advance(&mut self) {
        match self.state.clone() {
            CloudState::Created => match self.spec.validate() {
                Ok(()) => self.state = CloudState::Creating { name: self.spec.object_name() },
                Err(e) => self.state = CloudState::Failed { reason: e.to_string(), exit_code: None },
            },
            CloudState::Creating { name } => self.create(name).await,
            CloudState::Pending { name } => self.follow(name, false).await,
            CloudState::Running { name } => self.follow(name, true).await,
            CloudState::Finished { .. }
            | CloudState::Failed { .. }
            | CloudState::Killed { .. }
            | CloudState::Stalled { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_lead_to_states() {
        let running = Observed { pod_seen: true, phase: Some("Running".into()), ..Observed::default() };
        assert_eq!(next_state("p", &running, false, false), Some(CloudState::Running { name: "p".into() }));
        assert_eq!(next_state("p", &running, true, false), None);
        let ok = Observed { phase: Some("Succeeded".into()), exit_code: Some(0), ..running.clone() };
        assert_eq!(next_state("p", &ok, true, false), Some(CloudState::Finished { name: "p".into(), exit_code: 0 }));
        let code = Observed {
            phase: Some("Failed".into()),
            exit_code: Some(3),
            reason: Some("Error".into()),
            ..running.clone()
        };
        assert_eq!(next_state("p", &code, true, false), Some(CloudState::Finished { name: "p".into(), exit_code: 3 }));
        let oom = Observed {
            phase: Some("Failed".into()),
            exit_code: Some(137),
            reason: Some("OOMKilled".into()),
            ..running.clone()
        };
        assert_eq!(
            next_state("p", &oom, true, false),
            Some(CloudState::Failed { reason: "OOMKilled".into(), exit_code: Some(137) })
        );
        let gone = Observed { pod_deleted: true, ..running.clone() };
        assert!(matches!(next_state("p", &gone, true, false), Some(CloudState::Failed { .. })));
        let evicted = Observed {
            phase: Some("Failed".into()),
            exit_code: Some(137),
            reason: Some("Error".into()),
            pod_reason: Some("Evicted: low memory".into()),
            ..running.clone()
        };
        assert_eq!(
            next_state("p", &evicted, true, false),
            Some(CloudState::Failed { reason: "Evicted: low memory".into(), exit_code: Some(137) })
        );
        let ended_then_deleted = Observed { pod_deleted: true, ..ok.clone() };
        assert_eq!(
            next_state("p", &ended_then_deleted, true, false),
            Some(CloudState::Finished { name: "p".into(), exit_code: 0 })
        );
        let no_image = Observed {
            phase: Some("Pending".into()),
            reason: Some("ImagePullBackOff: not found".into()),
            ..running.clone()
        };
        assert_eq!(
            next_state("p", &no_image, false, false),
            Some(CloudState::Failed { reason: "ImagePullBackOff: not found".into(), exit_code: None })
        );
        // A Job that completed succeeded, whatever an older attempt's exit code.
        let retried = Observed { job_succeeded: Some(true), exit_code: Some(1), ..running.clone() };
        assert_eq!(
            next_state("j", &retried, true, true),
            Some(CloudState::Finished { name: "j".into(), exit_code: 0 })
        );
        let job = Observed { job_succeeded: Some(false), job_message: Some("BackoffLimitExceeded".into()), ..running };
        assert_eq!(
            next_state("j", &job, true, true),
            Some(CloudState::Failed { reason: "BackoffLimitExceeded".into(), exit_code: None })
        );
    }
}
