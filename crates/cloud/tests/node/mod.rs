//! The node's part, played by the tests (there is no kubelet), and the
//! clients of the test cluster from `scripts/services/kube.sh`.

#![allow(dead_code)] // each test binary uses its part

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_cloud::Cloud;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The test cluster's kubeconfig.
pub(crate) fn kubeconfig_path() -> String {
    let dir = std::env::var("DROVER_SERVICES_DIR").unwrap_or_else(|_| "/tmp/drover-services".into());
    format!("{dir}/kube/kubeconfig")
}

pub(crate) async fn config() -> Config {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!("the test Kubernetes cluster is not running ({path}: {e}): run `scripts/services/kube.sh start` (the README's test command does)")
    });
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.unwrap()
}

pub(crate) async fn kube_client() -> Client {
    Client::try_from(config().await).unwrap()
}

pub(crate) async fn cloud(cleanup_after: Duration) -> Arc<Cloud> {
    Cloud::from_config(config().await, cleanup_after).unwrap()
}

/// A cloud with the test cluster's address but another token.
pub(crate) async fn cloud_with_token(token: &str) -> Arc<Cloud> {
    let mut config = config().await;
    config.auth_info.token = Some(token.to_owned().into());
    Cloud::from_config(config, Duration::from_secs(600)).unwrap()
}

/// A cloud whose API server cannot be reached (nothing listens there).
pub(crate) fn unreachable_cloud() -> Arc<Cloud> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    config.connect_timeout = Some(Duration::from_millis(200));
    Cloud::from_config(config, Duration::from_secs(600)).unwrap()
}

/// Waits until the scheduler has bound pod `name` to the node.
pub(crate) async fn wait_bound(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pod) = pods.get_opt(name).await.unwrap()
            && pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        {
            return;
        }
        assert!(Instant::now() < deadline, "pod {name} was never bound to the node");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pod a Job's controller made for it.
pub(crate) async fn job_pod(client: &Client, ns: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = pods.list(&ListParams::default().labels(&format!("job-name={job}"))).await.unwrap();
        if let Some(name) = list.items.into_iter().find_map(|p| p.metadata.name) {
            return name;
        }
        assert!(Instant::now() < deadline, "the Job controller made no pod for {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_status(client: &Client, ns: &str, name: &str, status: serde_json::Value) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(serde_json::json!({ "status": status }))).await?;
    Ok(())
}

/// The node started the pod's container.
pub(crate) async fn run(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    set_status(
        client,
        ns,
        name,
        serde_json::json!({
            "phase": "Running",
            "containerStatuses": [{ "name": "main", "image": "busybox", "imageID": "", "ready": true, "restartCount": 0,
                                    "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } } }]
        }),
    )
    .await
}

/// The node saw the container exit with `code`.
pub(crate) async fn finish(client: &Client, ns: &str, name: &str, code: i32, reason: &str) -> Result<(), kube::Error> {
    let phase = if code == 0 { "Succeeded" } else { "Failed" };
    set_status(
        client,
        ns,
        name,
        serde_json::json!({
            "phase": phase,
            "containerStatuses": [{ "name": "main", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                                    "state": { "terminated": { "exitCode": code, "reason": reason,
                                               "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z" } } }]
        }),
    )
    .await
}

/// Deletes a pod at once (no kubelet would confirm a graceful delete).
pub(crate) async fn delete_now(client: &Client, ns: &str, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods.delete(name, &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await;
}

/// A stand-in for the kubelet: "runs" every drover pod bound to the node in
/// `ns` by setting its status, as a kubelet would: Running, then after
/// `SLEEP_MS` (from the container's environment, default 0) Succeeded, or
/// Failed with the exit code in `EXIT_CODE`. Runs until its task is dropped.
pub(crate) async fn kubelet(client: Client, ns: String) {
    use futures_util::StreamExt as _;
    use kube::api::{WatchEvent, WatchParams};
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = "app.kubernetes.io/managed-by=drover";
    let mut started = std::collections::HashSet::new();
    loop {
        let list = pods.list(&ListParams::default().labels(selector)).await.unwrap();
        let handle = |pod: &Pod, started: &mut std::collections::HashSet<String>| {
            let bound = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            if !bound
                || pod.metadata.deletion_timestamp.is_some()
                || phase != "Pending"
                || !started.insert(name.clone())
            {
                return;
            }
            let env = pod.spec.as_ref().map(|s| s.containers[0].env.clone().unwrap_or_default()).unwrap_or_default();
            let var = |key: &str| env.iter().find(|e| e.name == key).and_then(|e| e.value.clone());
            let code: i32 = var("EXIT_CODE").and_then(|v| v.parse().ok()).unwrap_or(0);
            let sleep = Duration::from_millis(var("SLEEP_MS").and_then(|v| v.parse().ok()).unwrap_or(0));
            let (client, ns) = (client.clone(), ns.clone());
            tokio::spawn(async move {
                if run(&client, &ns, &name).await.is_ok() {
                    tokio::time::sleep(sleep).await;
                    // A pod killed meanwhile is gone: nothing to finish.
                    let _ = finish(&client, &ns, &name, code, if code == 0 { "Completed" } else { "Error" }).await;
                }
            });
        };
        for pod in &list.items {
            handle(pod, &mut started);
        }
        let rv = list.metadata.resource_version.unwrap_or_default();
        let Ok(stream) = pods.watch(&WatchParams::default().labels(selector).timeout(290), &rv).await else { continue };
        let mut stream = std::pin::pin!(stream);
        while let Some(Ok(event)) = stream.next().await {
            if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) = event {
                handle(&pod, &mut started);
            }
        }
    }
}

/// The node cannot pull the pod's image.
pub(crate) async fn cannot_pull(client: &Client, ns: &str, name: &str) -> Result<(), kube::Error> {
    set_status(
        client,
        ns,
        name,
        serde_json::json!({
            "phase": "Pending",
            "containerStatuses": [{ "name": "main", "image": "busybox:no-such-tag", "imageID": "", "ready": false,
                                    "restartCount": 0, "state": { "waiting": { "reason": "ImagePullBackOff",
                                    "message": "Back-off pulling image \"busybox:no-such-tag\"" } } }]
        }),
    )
    .await
}

/// A cloud process's handler.
pub(crate) type Handle = drover_core::ProcessHandler<drover_cloud::CloudState, drover_cloud::CloudProcess>;

/// Spawns `proc` on `local` and launches it.
pub(crate) fn launch(local: &tokio::task::LocalSet, proc: drover_cloud::CloudProcess) -> Handle {
    let h = drover_core::spawn_owned(local, proc, drover_core::DriveMode::FireAndForget);
    h.try_nudge().unwrap();
    h
}

/// Waits until the process's state satisfies `done`.
pub(crate) async fn until(h: &Handle, done: impl Fn(&drover_cloud::CloudState) -> bool) {
    let mut rx = h.subscribe();
    while !done(&rx.borrow_and_update()) {
        rx.changed().await.unwrap();
    }
}
