//! `GET /v1/processes` of a daemon whose store holds a million ended
//! processes: the first page (with its counts) as the daemon's first
//! request, cold (the API thread opens its store handle then), then warm;
//! and every process through `Client::list`, page after page, beside the
//! first page.
//!
//! `cargo bench -p drover-daemon --bench list -- --db PATH` lists the store
//! at PATH (the store bench's `--db` keeps one: `cargo bench -p
//! drover-store --bench list -- --db PATH`); without `--db`, it makes one of
//! `--size N` ended processes (10,000 by default) first. Only a store whose
//! processes have all ended is fit: the daemon would run the others.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use drover_daemon::api::{Filter, Info, ProcessList};
use drover_daemon::{Client, DaemonConfig, Paths, Target};
use drover_store::{NewProcess, Record, Store};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// A store of `size` processes, each recorded ended in the same write
/// group as its insert's neighbours.
async fn make_store(path: &str, size: usize) {
    let store = Store::open(path).await.unwrap();
    let ended = r#"{"v":3,"state":{"Finished":{"exit_code":0,"ran_for":{"secs":0,"nanos":0}}}}"#;
    for start in (0..size).step_by(10_000) {
        let ids: Vec<String> = (start..(start + 10_000).min(size)).map(|i| format!("run-d.job{i:07}")).collect();
        let spec = r#"{"kind":"shell","spec":{"program":"true","args":[]}}"#;
        let new = ids
            .iter()
            .map(|id| NewProcess::new(id.clone(), "shell", spec.into(), r#"{"v":3,"state":"Queued"}"#.into()));
        store.insert_all(new.collect()).await.unwrap();
        let writes = ids.iter().map(|id| store.commit_record(id, Record::new(ended.into(), false, true)));
        for done in futures_util::future::join_all(writes).await {
            done.unwrap();
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let db = match arg(&args, "--db") {
        Some(db) => db,
        None => {
            let db = dir.path().join("list.db").display().to_string();
            let size = arg(&args, "--size").and_then(|n| n.parse().ok()).unwrap_or(10_000);
            rt.block_on(make_store(&db, size));
            db
        }
    };
    let data = dir.path().join("data");
    let config = DaemonConfig {
        data_dir: data.clone(),
        store: Some(db.clone()),
        config: serde_json::Map::new(),
        config_path: data.join("computers.toml"),
        jobs: Some(1),
        lease: Duration::from_secs(10),
        http: None,
        allow_non_loopback: false,
        max_connections: drover_daemon::DEFAULT_MAX_CONNECTIONS,
        idle_timeout: drover_daemon::DEFAULT_IDLE_TIMEOUT,
        retention: None,
    };
    let _daemon = std::thread::spawn(move || drover_daemon::run(config));
    let client = Client::new(Target::Unix(Paths::new(&data).socket())).with_timeout(Duration::from_secs(600));
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client.get::<Info>("/v1/info").await.is_ok_and(|i| i.ready) {
            assert!(Instant::now() < deadline, "the daemon did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let timed_page = || async {
            let start = Instant::now();
            let page: ProcessList = client.get("/v1/processes").await.unwrap();
            (page, start.elapsed())
        };
        let (first, cold) = timed_page().await;
        let total: usize = first.counts.values().sum();
        println!("drover-daemon list benchmark: GET /v1/processes of a daemon whose store holds {total} processes\n");
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(timed_page().await.1);
        }
        warm.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  first page of {} with counts, the daemon's first list (cold) {:>9.2} ms",
            first.processes.len(),
            ms(cold)
        );
        println!("  first page, warm (median of 5)                              {:>9.2} ms", ms(warm[2]));
        let start = Instant::now();
        let all = client.list(&Filter::default(), None).await.unwrap();
        let every = start.elapsed();
        println!(
            "  every process, page after page of 10,000 ({:>7})        {:>9.2} ms  ({:.0}x the first page)",
            all.processes.len(),
            ms(every),
            every.as_secs_f64() / warm[2].as_secs_f64()
        );
        println!("\n  goal: the first page well under a second at 1,000,000 processes");
        let _ = client.post::<_, serde_json::Value>("/v1/shutdown", &serde_json::json!({})).await;
    });
}
