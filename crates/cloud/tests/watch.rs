//! The shared watch survives the API server going away: it is re-established
//! from the last resource version seen, without listing again, and the
//! process it feeds goes on. Restarts the test cluster's API server
//! (`scripts/services/kube.sh`), so it is a test binary of its own (cargo
//! runs test binaries one after the other).

#![allow(clippy::disallowed_methods)] // restarts the API server through kube.sh

mod node;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use drover_cloud::{CloudProcess, CloudSpec, CloudState, object_name};
use drover_core::{DriveMode, Process as _, spawn_owned};
use tokio::task::LocalSet;

fn restart_api_server() {
    let dir = std::env::var("DROVER_SERVICES_DIR").unwrap_or_else(|_| "/tmp/drover-services".into());
    let pid: i32 = std::fs::read_to_string(format!("{dir}/kube/kube-apiserver.pid")).unwrap().trim().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/services/kube.sh");
    let out = std::process::Command::new(script).arg("start").output().unwrap();
    assert!(out.status.success(), "kube.sh start: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn a_lost_watch_is_re_established_from_the_last_resource_version() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = node::cloud(Duration::from_secs(600)).await;
            let client = node::kube_client().await;
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
            let id = format!("watch-{stamp}.survivor");
            let spec = CloudSpec {
                id: id.clone(),
                image: "busybox".into(),
                local_dir: dir.path().join("s"),
                ..CloudSpec::default()
            };
            let h = spawn_owned(&local, CloudProcess::new(spec, cloud.clone()), DriveMode::FireAndForget);
            h.try_nudge().unwrap();
            let name = object_name(&id);
            node::wait_bound(&client, "default", &name).await;
            let mut rx = h.subscribe();
            while !matches!(*rx.borrow_and_update(), CloudState::Pending { .. }) {
                rx.changed().await.unwrap();
            }
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
            assert_eq!(cloud.stats().lists.load(Ordering::Relaxed), lists, "it listed again instead of resuming");
            node::delete_now(&client, "default", &name).await;
        })
        .await;
}
