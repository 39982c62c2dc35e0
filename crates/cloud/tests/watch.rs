//! The shared watch survives losing its connection: it is re-established
//! from the last resource version seen (listing again only when the server
//! says that version is gone), and the processes it feeds go on. The second
//! test restarts the test cluster's API server (`scripts/services/kube.sh`),
//! so they are a test binary of their own (cargo runs test binaries one after
//! the other).

#![allow(clippy::disallowed_methods)] // restarts the API server through kube.sh

mod node;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_cloud::{CloudProcess, CloudSpec, CloudState, object_name};
use drover_core::Process as _;
use tokio::task::LocalSet;

fn restart_api_server() {
    let dir = std::env::var("DROVER_SERVICES_DIR").unwrap_or_else(|_| "/tmp/drover-services".into());
    let pid: i32 = std::fs::read_to_string(format!("{dir}/kube/kube-apiserver.pid")).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services/kube.sh");
    let out = std::process::Command::new(script).arg("start").output().unwrap();
    assert!(out.status.success(), "kube.sh start: {}", String::from_utf8_lossy(&out.stderr));
}

/// One test, in order: the second part restarts the API server, which the
/// first must not see.
#[tokio::test]
async fn a_lost_watch_is_re_established_from_its_last_resource_version() {
    a_watch_the_server_ends_resumes_without_listing().await;
    a_watch_lost_with_the_api_server_is_re_established().await;
}

/// Launches a pod job on `cloud` and waits until the scheduler has bound its
/// pod; returns the handle and the pod's name.
async fn bound_job(
    local: &LocalSet,
    cloud: &std::sync::Arc<drover_cloud::Cloud>,
    dir: &std::path::Path,
    tag: &str,
) -> (node::Handle, String) {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let id = format!("{tag}-{stamp}.job");
    let spec = CloudSpec { id: id.clone(), image: "busybox".into(), local_dir: dir.join("s"), ..CloudSpec::default() };
    let h = node::launch(local, CloudProcess::new(spec, cloud.clone()));
    let name = object_name(&id);
    node::wait_bound(&node::kube_client().await, "default", &name).await;
    (h, name)
}

async fn a_watch_the_server_ends_resumes_without_listing() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = node::cloud(Duration::from_secs(600)).await;
            // The server ends every watch request after a second.
            cloud.set_watch_timeout(1);
            let client = node::kube_client().await;
            let (h, name) = bound_job(&local, &cloud, dir.path(), "rewatch").await;
            // Changes come only after several watch requests have ended.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            node::run(&client, "default", &name).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            node::finish(&client, "default", &name, 7, "Error").await.unwrap();
            let end = h.join().await.unwrap();
            assert_eq!(end.state(), &CloudState::Finished { name: name.clone(), exit_code: 7 });
            let (lists, watches) =
                (cloud.stats().lists.load(Ordering::Relaxed), cloud.stats().watches.load(Ordering::Relaxed));
            assert_eq!(lists, 1, "it listed again instead of resuming");
            assert!(watches >= 3, "{watches} watch requests: the server should have ended several");
            node::delete_now(&client, "default", &name).await;
        })
        .await;
}

async fn a_watch_lost_with_the_api_server_is_re_established() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = node::cloud(Duration::from_secs(600)).await;
            let (h, name) = bound_job(&local, &cloud, dir.path(), "watch").await;
            node::until(&h, |s| matches!(s, CloudState::Pending { .. })).await;
            let lists = cloud.stats().lists.load(Ordering::Relaxed);
            let watches = cloud.stats().watches.load(Ordering::Relaxed);

            // The API server dies and comes back; the watch breaks.
            tokio::task::spawn_blocking(restart_api_server).await.unwrap();
            let client = node::kube_client().await;
            node::run(&client, "default", &name).await.unwrap();
            node::finish(&client, "default", &name, 0, "Completed").await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !h.is_done() {
                assert!(Instant::now() < deadline, "the process never saw its pod end: {:?}", h.state());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let end = h.join().await.unwrap();
            assert_eq!(end.state(), &CloudState::Finished { name: name.clone(), exit_code: 0 });
            assert!(cloud.stats().watches.load(Ordering::Relaxed) > watches, "the watch was not re-established");
            // A restarted API server may not know the old version any more
            // (410 Gone): then, and only then, it lists again, once.
            assert!(cloud.stats().lists.load(Ordering::Relaxed) <= lists + 1);
            node::delete_now(&client, "default", &name).await;
        })
        .await;
}
