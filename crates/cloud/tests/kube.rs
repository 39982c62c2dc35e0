//! Cloud processes against a real Kubernetes API server (with its scheduler
//! and controller manager) from `scripts/services/kube.sh`. There is no
//! kubelet: these tests play the node's part by setting pod status through
//! the API, as a kubelet would.

mod node;

use std::sync::Arc;
use std::time::Duration;

use drover_cloud::{Cloud, CloudProcess, CloudSpec, CloudState, PROCESS_ANNOTATION, RetryPolicy, object_name};
use drover_core::{DriveMode, Process as _, spawn_owned};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use node::{cloud, finish, kube_client, run, unreachable_cloud, wait_bound};
use tokio::task::LocalSet;

fn spec(id: &str, dir: &std::path::Path) -> CloudSpec {
    CloudSpec {
        id: id.to_owned(),
        image: "busybox:1.36".into(),
        command: vec!["sh".into(), "-c".into()],
        args: vec!["echo hello".into()],
        local_dir: dir.join(id),
        ..CloudSpec::default()
    }
}

/// A name no other run of these tests used.
fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}", nanos % 1_000_000_000_000, N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[tokio::test]
async fn pods_run_to_their_end_through_one_shared_watch() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = cloud(Duration::from_secs(1)).await;
            let client = kube_client().await;
            let base = unique("ends");
            let ok = spawn_owned(
                &local,
                CloudProcess::new(spec(&format!("{base}.ok"), dir.path()), cloud.clone()),
                DriveMode::FireAndForget,
            );
            let mut failing = spec(&format!("{base}.fails"), dir.path());
            failing.requests.cpu = Some("100m".into());
            failing.limits.memory = Some("64Mi".into());
            failing.env.insert("MODE".into(), "fail".into());
            failing.labels.insert("team".into(), "physics".into());
            let bad = spawn_owned(&local, CloudProcess::new(failing.clone(), cloud.clone()), DriveMode::FireAndForget);
            let watch_ok = tokio::task::spawn_local({
                let rx = ok.subscribe();
                async move {
                    let mut rx = rx;
                    let mut seen = vec![rx.borrow().clone()];
                    while rx.changed().await.is_ok() {
                        seen.push(rx.borrow().clone());
                    }
                    seen
                }
            });
            ok.try_nudge().unwrap();
            bad.try_nudge().unwrap();

            // Play the node: bound by the real scheduler, then running, then ended.
            let ok_name = object_name(&format!("{base}.ok"));
            let bad_name = object_name(&format!("{base}.fails"));
            for name in [&ok_name, &bad_name] {
                wait_bound(&client, "default", name).await;
                run(&client, "default", name).await.unwrap();
            }
            finish(&client, "default", &ok_name, 0, "Completed").await.unwrap();
            finish(&client, "default", &bad_name, 3, "Error").await.unwrap();

            let ok_end = ok.join().await.unwrap();
            assert_eq!(ok_end.state(), &CloudState::Finished { name: ok_name.clone(), exit_code: 0 });
            let bad_end = bad.join().await.unwrap();
            assert_eq!(bad_end.state(), &CloudState::Finished { name: bad_name.clone(), exit_code: 3 });
            let seen = watch_ok.await.unwrap();
            let names: Vec<&str> = seen
                .iter()
                .map(|s| match s {
                    CloudState::Created => "created",
                    CloudState::Creating { .. } => "creating",
                    CloudState::Pending { .. } => "pending",
                    CloudState::Running { .. } => "running",
                    CloudState::Finished { .. } => "finished",
                    _ => "other",
                })
                .collect();
            let mut names = names;
            names.dedup();
            assert!(names.ends_with(&["creating", "pending", "running", "finished"]), "{names:?}");

            // The pod as created: labels, annotation, resources, environment.
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            let pod = pods.get(&bad_name).await.unwrap();
            let labels = pod.metadata.labels.clone().unwrap();
            assert_eq!(labels["app.kubernetes.io/managed-by"], "drover");
            assert_eq!(labels["drover.io/object"], bad_name);
            assert_eq!(labels["team"], "physics");
            assert_eq!(pod.metadata.annotations.unwrap()[PROCESS_ANNOTATION], failing.id);
            let container = &pod.spec.as_ref().unwrap().containers[0];
            assert_eq!(container.image.as_deref(), Some("busybox:1.36"));
            let resources = container.resources.as_ref().unwrap();
            assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "100m");
            assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "64Mi");
            assert_eq!(container.env.as_ref().unwrap()[0].name, "MODE");
            assert_eq!(pod.spec.unwrap().restart_policy.as_deref(), Some("Never"));

            // No kubelet serves logs here: the API's answer is kept instead.
            let why = std::fs::read_to_string(dir.path().join(&failing.id).join("logs-unavailable.txt")).unwrap();
            assert!(!why.trim().is_empty());

            // One create and one log fetch each; the states came from the watch.
            let stats = cloud.stats();
            assert_eq!(stats.creates.load(std::sync::atomic::Ordering::Relaxed), 2);
            assert_eq!(stats.gets.load(std::sync::atomic::Ordering::Relaxed), 0);
            assert_eq!(stats.logs.load(std::sync::atomic::Ordering::Relaxed), 2);

            // The janitor deletes ended pods after `cleanup_after` (1 s here).
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while pods.get_opt(&ok_name).await.unwrap().is_some() || pods.get_opt(&bad_name).await.unwrap().is_some() {
                assert!(std::time::Instant::now() < deadline, "the ended pods were not cleaned up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
}

#[tokio::test]
async fn a_batch_job_is_followed_through_its_pod_and_killed_with_it() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = cloud(Duration::from_secs(600)).await;
            let client = kube_client().await;
            let base = unique("batch");
            let mut done = spec(&format!("{base}.done"), dir.path());
            done.batch_job = true;
            let mut killed = spec(&format!("{base}.killed"), dir.path());
            killed.batch_job = true;
            let a = node::launch(&local, CloudProcess::new(done.clone(), cloud.clone()));
            let b = node::launch(&local, CloudProcess::new(killed.clone(), cloud.clone()));
            // The Job controller (real) makes the pods; play the node for them.
            let a_pod = node::job_pod(&client, "default", &done.object_name()).await;
            wait_bound(&client, "default", &a_pod).await;
            run(&client, "default", &a_pod).await.unwrap();
            finish(&client, "default", &a_pod, 0, "Completed").await.unwrap();
            let end = a.join().await.unwrap();
            assert_eq!(end.state(), &CloudState::Finished { name: done.object_name(), exit_code: 0 });

            let b_pod = node::job_pod(&client, "default", &killed.object_name()).await;
            wait_bound(&client, "default", &b_pod).await;
            run(&client, "default", &b_pod).await.unwrap();
            node::until(&b, |s| matches!(s, CloudState::Running { .. })).await;
            b.kill().await.unwrap();
            assert_eq!(b.state(), CloudState::Killed { name: Some(killed.object_name()), delete_pending: false });
            // The Job is gone (its pods go with it, in the background).
            let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), "default");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while jobs.get_opt(&killed.object_name()).await.unwrap().is_some() {
                assert!(std::time::Instant::now() < deadline, "the killed Job is still there");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // No kubelet confirms the pod's graceful end: do it as one would.
            node::delete_now(&client, "default", &b_pod).await;
        })
        .await;
}

#[tokio::test]
async fn an_interrupted_create_finds_its_pod_and_a_foreign_one_is_refused() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = cloud(Duration::from_secs(600)).await;
            let client = kube_client().await;
            let id = format!("{}.again", unique("restart"));
            let first = node::launch(&local, CloudProcess::new(spec(&id, dir.path()), cloud.clone()));
            let name = object_name(&id);
            wait_bound(&client, "default", &name).await;
            // The engine "crashed" after the create, before recording Pending:
            // a restored process creates again and finds its pod.
            drop(first);
            let again = CloudProcess::restore(
                spec(&id, dir.path()),
                cloud.clone(),
                CloudState::Creating { name: name.clone() },
            );
            let h = node::launch(&local, again);
            node::until(&h, |s| matches!(s, CloudState::Pending { .. })).await;
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            let ours =
                pods.list(&kube::api::ListParams::default().labels(&format!("drover.io/object={name}"))).await.unwrap();
            assert_eq!(ours.items.len(), 1, "a second pod was made");
            h.kill().await.unwrap();
            node::delete_now(&client, "default", &name).await;

            // A pod of the same name that is not this process's: refused, left alone.
            let foreign_id = format!("{}.foreign", unique("restart"));
            let foreign_name = object_name(&foreign_id);
            let mut pod: Pod = serde_json::from_value(serde_json::json!({
                "metadata": { "name": foreign_name },
                "spec": { "containers": [{ "name": "x", "image": "busybox" }] }
            }))
            .unwrap();
            pod.metadata.namespace = Some("default".into());
            pods.create(&PostParams::default(), &pod).await.unwrap();
            let h = node::launch(&local, CloudProcess::new(spec(&foreign_id, dir.path()), cloud.clone()));
            let end = h.join().await.unwrap();
            let CloudState::Failed { reason, .. } = end.state() else { panic!("{:?}", end.state()) };
            assert!(reason.contains("is not this process's"), "{reason}");
            assert!(pods.get_opt(&foreign_name).await.unwrap().is_some(), "the foreign pod was touched");
            node::delete_now(&client, "default", &foreign_name).await;
        })
        .await;
}

#[tokio::test]
async fn bad_input_ends_failed_with_the_api_message_and_leaves_nothing() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = cloud(Duration::from_secs(600)).await;
            let base = unique("bad");
            let mut nowhere = spec(&format!("{base}.ns"), dir.path());
            nowhere.namespace = Some("no-such-namespace".into());
            let mut image = spec(&format!("{base}.image"), dir.path());
            image.image = "Not An/Image::x".into();
            let mut quantity = spec(&format!("{base}.quantity"), dir.path());
            quantity.requests.cpu = Some("-3".into());
            let mut results = Vec::new();
            for s in [nowhere, image, quantity] {
                let h = node::launch(&local, CloudProcess::new(s, cloud.clone()));
                results.push(h.join().await.unwrap().state().clone());
            }
            let reasons: Vec<String> = results
                .iter()
                .map(|s| match s {
                    CloudState::Failed { reason, exit_code: None } => reason.clone(),
                    other => panic!("{other:?}"),
                })
                .collect();
            assert!(reasons[0].contains("namespaces \"no-such-namespace\" not found"), "{}", reasons[0]);
            assert!(reasons[1].starts_with("image: `Not An/Image::x` is not an image reference"), "{}", reasons[1]);
            assert!(reasons[2].starts_with("requests.cpu:"), "{}", reasons[2]);

            // A refused token.
            let refused = node::cloud_with_token("not-the-token").await;
            let h = node::launch(&local, CloudProcess::new(spec(&format!("{base}.token"), dir.path()), refused));
            let end = h.join().await.unwrap();
            let CloudState::Failed { reason, .. } = end.state() else { panic!("{:?}", end.state()) };
            assert!(reason.contains("Unauthorized"), "{reason}");
            // Nothing was made for any of them.
            let client = kube_client().await;
            let pods: Api<Pod> = Api::namespaced(client, "default");
            for suffix in ["ns", "image", "quantity", "token"] {
                assert!(pods.get_opt(&object_name(&format!("{base}.{suffix}"))).await.unwrap().is_none());
            }
        })
        .await;
}

#[tokio::test]
async fn an_unreachable_api_server_stalls_a_create_and_a_kill_ends_at_once() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud: Arc<Cloud> = unreachable_cloud();
            let retry = RetryPolicy { attempts: 3, first_delay: Duration::from_millis(50) };
            let id = format!("{}.far", unique("unreachable"));
            let h = node::launch(&local, CloudProcess::new(spec(&id, dir.path()), cloud.clone()).with_retry(retry));
            node::until(&h, |s| matches!(s, CloudState::Stalled { .. })).await;
            let CloudState::Stalled { resume, error } = h.state() else { unreachable!() };
            assert_eq!(*resume, CloudState::Creating { name: object_name(&id) });
            assert!(error.starts_with("the API server cannot be reached"), "{error}");
            assert!(h.is_paused());

            // A kill while the server is unreachable ends the process at
            // once and leaves the delete to the background.
            let started = std::time::Instant::now();
            let p = CloudProcess::restore(
                spec(&id, dir.path()),
                cloud.clone(),
                CloudState::Pending { name: object_name(&id) },
            )
            .with_kill_timeout(Duration::from_millis(300));
            let h = node::launch(&local, p);
            h.kill().await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
            assert_eq!(h.state(), CloudState::Killed { name: Some(object_name(&id)), delete_pending: true });
            assert!(cloud.delete_pending("default", &object_name(&id)));
        })
        .await;
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_fails_and_a_pod_deleted_while_paused_is_noticed() {
    let local = LocalSet::new();
    local
        .run_until(async {
            let dir = tempfile::tempdir().unwrap();
            let cloud = cloud(Duration::from_secs(600)).await;
            let client = kube_client().await;
            let base = unique("gone");
            // The node cannot pull the image: the job fails, its pod is deleted.
            let mut nopull = spec(&format!("{base}.nopull"), dir.path());
            nopull.image = "busybox:no-such-tag".into();
            let h = node::launch(&local, CloudProcess::new(nopull.clone(), cloud.clone()));
            let name = nopull.object_name();
            wait_bound(&client, "default", &name).await;
            node::cannot_pull(&client, "default", &name).await.unwrap();
            let end = h.join().await.unwrap();
            let CloudState::Failed { reason, exit_code: None } = end.state() else { panic!("{:?}", end.state()) };
            assert!(reason.starts_with("ImagePullBackOff"), "{reason}");
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            let pod = pods.get_opt(&name).await.unwrap();
            assert!(pod.as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some()), "{pod:?}");
            node::delete_now(&client, "default", &name).await;

            // Paused, its pod deleted meanwhile: resumed, it notices (it asks
            // the API once about an object its watch has not seen).
            let paused = spec(&format!("{base}.paused"), dir.path());
            let name = paused.object_name();
            let h = node::launch(&local, CloudProcess::new(paused, cloud.clone()));
            wait_bound(&client, "default", &name).await;
            node::until(&h, |s| matches!(s, CloudState::Pending { .. })).await;
            h.pause().await.unwrap();
            node::delete_now(&client, "default", &name).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            h.resume().unwrap();
            let end = h.join().await.unwrap();
            let CloudState::Failed { reason, .. } = end.state() else { panic!("{:?}", end.state()) };
            assert!(reason.contains("deleted before drover saw it end"), "{reason}");
        })
        .await;
}

/// The janitor marks an ended pod in the cluster before it waits: an engine
/// that dies before the time comes (here: its runtime, timers and all, shut
/// down) leaves the mark, and another engine's sweep deletes the pod then.
#[tokio::test]
async fn the_janitor_s_work_survives_the_engine_that_marked_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = kube_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let id = unique("orphan");
    let name = object_name(&id);
    // The first engine, on a runtime of its own: runs the pod to its end and
    // marks it, to be deleted 2 s later; then it is gone, timers and all.
    let first = {
        let (spec, name) = (spec(&id, dir.path()), name.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let local = LocalSet::new();
            local.block_on(&rt, async {
                // A client of its own: one made on another runtime needs that one.
                let client = kube_client().await;
                let cloud = cloud(Duration::from_secs(2)).await;
                let p = spawn_owned(&local, CloudProcess::new(spec, cloud.clone()), DriveMode::FireAndForget);
                p.try_nudge().unwrap();
                wait_bound(&client, "default", &name).await;
                run(&client, "default", &name).await.unwrap();
                finish(&client, "default", &name, 0, "Completed").await.unwrap();
                assert!(matches!(p.join().await.unwrap().state(), CloudState::Finished { exit_code: 0, .. }));
                let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
                for _ in 0..100 {
                    let labels = pods.get(&name).await.unwrap().metadata.labels.unwrap_or_default();
                    if labels.contains_key(drover_cloud::COLLECT_AFTER_LABEL) {
                        return cloud.stats().marks.load(std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("the ended pod was not marked for collection");
            })
        })
    };
    assert_eq!(first.join().unwrap(), 1, "one mark");
    // A later engine, which never followed the pod: its sweep leaves it
    // until its time, then deletes it.
    // (Other tests' marked objects in the namespace may go with a sweep.)
    let later = cloud(Duration::from_secs(600)).await;
    later.sweep("default").await;
    assert!(pods.get_opt(&name).await.unwrap().is_some(), "swept before its time");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let deletes = later.stats().deletes.load(std::sync::atomic::Ordering::Relaxed);
    while pods.get_opt(&name).await.unwrap().is_some() {
        assert!(std::time::Instant::now() < deadline, "the marked pod outlived its time");
        later.sweep("default").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(later.stats().deletes.load(std::sync::atomic::Ordering::Relaxed) > deletes, "deleted by the sweep");
}
