//! Cloud jobs against the real Kubernetes API server of
//! `scripts/services/kube.sh`, side by side with a naive client that follows
//! each pod with its own poll loop (a GET per second), as many workflow
//! engines do.
//!
//! `cargo bench -p drover-cloud --bench pods` creates 1,000 pods each way and
//! follows them to the end (a kubelet stand-in in this process sets their
//! status, as a kubelet would; there is none); `cargo test` runs 10 as a smoke
//! test. It reports the API requests per pod, counted by the API server
//! itself (`apiserver_request_total`, the kubelet stand-in's status patches
//! and the scheduler's bindings left out) and by drover, and the engine's
//! peak memory (drover runs in a fresh child process).

#![allow(missing_docs)]
#![allow(clippy::disallowed_methods)] // the engine runs in a fresh child process of this bench

#[path = "../tests/node/mod.rs"]
mod node;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_cloud::{CloudProcess, CloudSpec, CloudState};
use drover_core::{DriveMode, spawn_owned};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use tokio::task::LocalSet;

const NS: &str = "drover-bench";
const CHILD: &str = "DROVER_BENCH_CLOUD_ENGINE";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let pods = if full { 1000 } else { 10 };
    // How long each pod "runs" (the kubelet stand-in reads SLEEP_MS).
    let run_ms = if full { 5000 } else { 1000 };

    if let Ok(spec) = std::env::var(CHILD) {
        let (n, run_ms) = spec.split_once(',').unwrap();
        engine(n.parse().unwrap(), run_ms.to_owned());
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = rt.block_on(setup());
    let kubelet = rt.spawn(node::kubelet(client.clone(), NS.to_owned()));
    println!(
        "drover-cloud: {pods} pods created and followed to the end on a real API server (each runs {run_ms} ms)\n"
    );

    let before = rt.block_on(metrics(&client));
    let (naive_time, naive_counted) = rt.block_on(naive(&client, pods, run_ms));
    let after = rt.block_on(metrics(&client));
    let naive_server = per_pod(&before, &after, pods);

    let before = rt.block_on(metrics(&client));
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, format!("{pods},{run_ms}"))
        .output()
        .expect("run the engine in a fresh process");
    assert!(out.status.success(), "engine run failed: {}", String::from_utf8_lossy(&out.stderr));
    let after = rt.block_on(metrics(&client));
    kubelet.abort();
    let report = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> f64 {
        report.lines().find_map(|l| l.strip_prefix(&format!("#{name}="))).unwrap().parse().unwrap()
    };
    let drover_server = per_pod(&before, &after, pods);
    let per_process = field("per_process") / pods as f64;
    println!("  requests per pod, counted by the API server (beyond the shared watch: LIST and WATCH left out)");
    println!("    {:<28} {:>8} {:>8}", "", "drover", "naive");
    let verbs: std::collections::BTreeSet<&String> = drover_server.keys().chain(naive_server.keys()).collect();
    let (mut d_total, mut n_total) = (0.0, 0.0);
    for verb in verbs {
        let (d, n) = (drover_server.get(verb).copied().unwrap_or(0.0), naive_server.get(verb).copied().unwrap_or(0.0));
        if !verb.starts_with("LIST") && !verb.starts_with("WATCH") {
            d_total += d;
            n_total += n;
        }
        println!("    {verb:<28} {d:>8.2} {n:>8.2}");
    }
    println!("    {:<28} {d_total:>8.2} {n_total:>8.2}   (goal for drover: <= 3)", "total per pod");
    println!(
        "  counted by drover: {per_process:.2} per pod; the shared watch: {} list(s), {} watch connection(s)",
        field("lists"),
        field("watches")
    );
    println!("  time to follow all to the end: drover {:.1} s, naive {:.1} s", field("time"), naive_time.as_secs_f64());
    println!(
        "  engine memory: peak RSS {:.1} MiB for {pods} pods ({:.1} KiB per pod above an empty engine's {:.1} MiB)",
        field("peak_kib") / 1024.0,
        (field("peak_kib") - field("base_kib")) / pods as f64,
        field("base_kib") / 1024.0,
    );
    println!("  the naive client counted {:.2} requests per pod itself", naive_counted as f64 / pods as f64);
}

async fn setup() -> kube::Client {
    let client = node::kube_client().await;
    let ns: Namespace = serde_json::from_value(serde_json::json!({ "metadata": { "name": NS } })).unwrap();
    let _ = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await;
    // Room for every pod at once (kube.sh registers the node with 250).
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let room = serde_json::json!({ "status": { "capacity": { "pods": "5000" }, "allocatable": { "pods": "5000" } } });
    nodes.patch_status("drover-node", &PatchParams::default(), &Patch::Merge(room)).await.unwrap();
    // Nothing left from an earlier run.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let dp = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    let _ = pods.delete_collection(&dp, &ListParams::default()).await;
    client
}

/// `apiserver_request_total` for pods, by verb and subresource.
async fn metrics(client: &kube::Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            Some(&line[start..start + line[start..].find('"')?])
        };
        if label("resource") != Some("pods") {
            continue;
        }
        let (verb, sub) = (label("verb").unwrap_or("?"), label("subresource").unwrap_or(""));
        // The kubelet stand-in's and the scheduler's requests are not the client's.
        if sub == "status" || sub == "binding" {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let key = if sub.is_empty() { verb.to_owned() } else { format!("{verb} {sub}") };
        *counts.entry(key).or_insert(0.0) += value;
    }
    counts
}

fn per_pod(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, pods: usize) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)) / pods as f64))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

fn pod(name: &str, run_ms: u64) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "app.kubernetes.io/managed-by": "drover" } },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "busybox:1.36",
                  "env": [{ "name": "SLEEP_MS", "value": run_ms.to_string() }] }] }
    }))
    .unwrap()
}

/// The naive client: per pod, a create, a GET per second until it ends, its
/// logs, a delete.
async fn naive(client: &kube::Client, n: usize, run_ms: u64) -> (Duration, u64) {
    let started = Instant::now();
    let requests = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (client, requests) = (client.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client, NS);
            let name = format!("naive-{i}");
            requests.fetch_add(1, Ordering::Relaxed);
            pods.create(&PostParams::default(), &pod(&name, run_ms)).await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                requests.fetch_add(1, Ordering::Relaxed);
                let p = pods.get(&name).await.unwrap();
                if matches!(p.status.and_then(|s| s.phase).as_deref(), Some("Succeeded" | "Failed")) {
                    break;
                }
            }
            requests.fetch_add(2, Ordering::Relaxed);
            let _ = pods.logs(&name, &LogParams::default()).await;
            pods.delete(&name, &DeleteParams::default()).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (started.elapsed(), requests.load(Ordering::Relaxed))
}

fn rss_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// drover, in a fresh process: `n` cloud processes on one `Cloud` that
/// deletes each pod as soon as it ended (`cleanup_after` 0).
fn engine(n: usize, run_ms: String) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = LocalSet::new();
    local.block_on(&rt, async {
        let config = node::config().await;
        let cloud = drover_cloud::Cloud::from_config(config, Duration::ZERO).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let base = rss_kib("VmRSS:");
        let started = Instant::now();
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let spec = CloudSpec {
                    id: format!("bench-{stamp}.{i}"),
                    image: "busybox:1.36".into(),
                    namespace: Some(NS.into()),
                    env: [("SLEEP_MS".to_owned(), run_ms.clone())].into(),
                    local_dir: dir.path().join(i.to_string()),
                    ..CloudSpec::default()
                };
                let h = spawn_owned(&local, CloudProcess::new(spec, cloud.clone()), DriveMode::FireAndForget);
                h.try_nudge().unwrap();
                h
            })
            .collect();
        for h in handles {
            let end = h.join().await.unwrap();
            assert!(matches!(drover_core::Process::state(&end), CloudState::Finished { exit_code: 0, .. }));
        }
        let time = started.elapsed();
        // The janitor deletes each ended pod: wait for all of it.
        let deadline = Instant::now() + Duration::from_secs(300);
        while cloud.stats().deletes.load(Ordering::Relaxed) < n as u64 {
            assert!(Instant::now() < deadline, "the janitor did not delete every pod");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = cloud.stats();
        println!("#time={}", time.as_secs_f64());
        println!("#per_process={}", stats.per_process_requests());
        println!("#lists={}", stats.lists.load(Ordering::Relaxed));
        println!("#watches={}", stats.watches.load(Ordering::Relaxed));
        println!("#base_kib={base}");
        println!("#peak_kib={}", rss_kib("VmHWM:"));
    });
}
