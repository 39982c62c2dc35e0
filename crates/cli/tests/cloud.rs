//! Cloud jobs from the command line against the real Kubernetes API server
//! of `scripts/services/kube.sh`, in a namespace of their own. There is no
//! kubelet: a stand-in (`node::kubelet`) sets pod status through the API as
//! a kubelet would.

#![allow(clippy::disallowed_methods)] // runs the program under test

#[path = "../../cloud/tests/node/mod.rs"]
mod node;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};

const NS: &str = "drover-cli-test";

fn drover(data: &Path, config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--data-dir")
        .arg(data)
        .arg("--config-dir")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The namespace, a config directory pointing at the test cluster, and a
/// kubelet stand-in running on its own thread.
fn setup() -> (tempfile::TempDir, std::thread::JoinHandle<()>) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let client = node::kube_client().await;
        let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": NS } })).unwrap();
        let _ = Api::<Namespace>::all(client).create(&PostParams::default(), &ns).await; // exists already: fine
    });
    let kubelet = std::thread::spawn(move || {
        rt.block_on(async {
            let client = node::kube_client().await;
            node::kubelet(client, NS.to_owned()).await;
        });
    });
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("computers.toml"),
        format!(
            "[cloud]\nkubeconfig = \"{}\"\nnamespace = \"{NS}\"\ncleanup_after_secs = 2\n",
            node::kubeconfig_path()
        ),
    )
    .unwrap();
    (config, kubelet)
}

#[test]
fn cloud_jobs_run_from_job_files_and_are_controlled_by_the_daemon() {
    let (config, _kubelet) = setup();
    let data = tempfile::tempdir().unwrap();
    let (d, c) = (data.path(), config.path());
    let jobs = c.join("pods.toml");
    std::fs::write(
        &jobs,
        r#"
[[job]]
id = "ok"
image = "busybox:1.36"
script = "echo hello"
cpu = "100m"
memory = "32Mi"
labels = { team = "physics" }

[[job]]
id = "fails"
image = "busybox:1.36"
command = "false"
env = { EXIT_CODE = "5" }

[[job]]
id = "batch"
image = "busybox:1.36"
script = "true"
batch_job = true

[[job]]
id = "batch-fails"
image = "busybox:1.36"
command = "false"
env = { EXIT_CODE = "3" }
batch_job = true
"#,
    )
    .unwrap();
    let out = drover(d, c, &["run", jobs.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("4 jobs: 2 succeeded, 2 failed"), "{stdout}");
    assert!(stdout.contains("failed: pods.fails (exit 5"), "{stdout}");
    // A failed batch Job's line names its exit code too, not only the API's reason.
    assert!(stdout.contains("failed: pods.batch-fails (exit 3"), "{stdout}");
    // The run left no ended pod or Job behind (its janitor would have died
    // with it): every object is gone, or deleted and waiting for a kubelet.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // This run's objects (the namespace outlives test runs).
    let run = stdout.split("runs/").nth(1).and_then(|r| r.split_whitespace().next()).expect("the run's id").to_owned();
    let ours = |name: &String| name.starts_with(&format!("drover-{run}-"));
    rt.block_on(async {
        let client = node::kube_client().await;
        let selector = format!("{}={}", drover_cloud::MANAGED_BY.0, drover_cloud::MANAGED_BY.1);
        let params = kube::api::ListParams::default().labels(&selector);
        let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), NS);
        let left: Vec<String> = jobs
            .list(&params)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter_map(|j| j.metadata.name)
            .filter(ours)
            .collect();
        assert_eq!(left, Vec::<String>::new(), "Jobs the run left behind");
        let pods: Api<Pod> = Api::namespaced(client, NS);
        let left: Vec<String> = pods
            .list(&params)
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata.owner_references.as_ref().is_none_or(|o| o.is_empty())
            })
            .filter_map(|p| p.metadata.name)
            .filter(ours)
            .collect();
        assert_eq!(left, Vec::<String>::new(), "pods the run left behind");
    });

    // Bad input in a file: nothing at all is made.
    let bad = c.join("bad.toml");
    std::fs::write(&bad, "[[job]]\nid = \"x\"\nimage = \"Bad Image\"\n\n[[job]]\nid = \"y\"\nimage = \"busybox\"\n")
        .unwrap();
    let out = drover(d, c, &["run", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.toml: job `x`: image: `Bad Image` is not an image reference"), "{stderr}");
    let mixed = c.join("mixed.toml");
    std::fs::write(&mixed, "[[job]]\nimage = \"busybox\"\ncomputer = \"cluster\"\n").unwrap();
    let out = drover(d, c, &["run", mixed.to_str().unwrap()]);
    assert!(text(&out.stderr).contains("`image` is for cloud jobs"), "{}", text(&out.stderr));

    // Through the daemon: a long job is killed, and its pod deleted.
    let ok = |args: &[&str]| {
        let out = drover(d, c, args);
        assert!(out.status.success(), "{args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    ok(&["daemon", "start"]);
    struct Stop<'a>(&'a Path, &'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = drover(self.0, self.1, &["daemon", "stop"]);
        }
    }
    let _stop = Stop(d, c);
    let long = c.join("long.toml");
    std::fs::write(
        &long,
        "[[job]]\nid = \"long\"\nimage = \"busybox\"\nscript = \"sleep 60\"\nenv = { SLEEP_MS = \"60000\" }\n",
    )
    .unwrap();
    ok(&["submit", long.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let shown: serde_json::Value = serde_json::from_str(&ok(&["show", "--json", "long.long"])).unwrap();
        if shown["state"] == "running" {
            break shown;
        }
        assert!(Instant::now() < deadline, "never running: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(shown["kind"], "cloud");
    let name = drover_cloud::object_name(shown["id"].as_str().unwrap());
    assert!(ok(&["show", "long.long"]).contains(&format!("object:    pod {name} in namespace")));
    let killed = ok(&["kill", "long.long"]);
    assert!(killed.starts_with("killed"), "{killed}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pods: Api<Pod> = Api::namespaced(node::kube_client().await, NS);
        // Deleted: gone, or (no kubelet confirms a graceful end) terminating.
        let pod = pods.get_opt(&name).await.unwrap();
        assert!(pod.as_ref().is_none_or(|p| p.metadata.deletion_timestamp.is_some()), "{pod:?}");
        node::delete_now(&node::kube_client().await, NS, &name).await;
    });
    let shown: serde_json::Value = serde_json::from_str(&ok(&["show", "--json", "long.long"])).unwrap();
    assert_eq!(shown["state"], "killed");
}
