//! Store benchmarks: checkpointed transitions per second (every state durable
//! before the next step) on SQLite and PostgreSQL, with and without fencing
//! (each write conditional on its engine's claim), beside the same processes
//! unrecorded; claims by three engines at once on one PostgreSQL; and loading
//! the unfinished processes of a large store.
//!
//! `cargo bench -p drover-store --bench store` runs them at full size;
//! `cargo test` runs this binary with tiny sizes as a smoke test. PostgreSQL
//! comes from the test services (`scripts/services/all.sh start`).

#![allow(missing_docs)]

use std::rc::Rc;
use std::time::{Duration, Instant};

use drover_core::{DriveMode, Process, State, spawn_owned, spawn_recorded};
use drover_store::{Checkpoint, Fence, NewProcess, Store, StoreRecorder, decode, encode};
use serde::{Deserialize, Serialize};
use tokio::task::LocalSet;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Count {
    n: u32,
    target: u32,
}

impl State for Count {
    fn is_done(&self) -> bool {
        self.n >= self.target
    }
    fn is_paused(&self) -> bool {
        false
    }
}

impl Checkpoint for Count {
    const KIND: &'static str = "bench-counter";
    const VERSION: u32 = 1;
}

struct Counter(Count);

impl Process<Count> for Counter {
    fn state(&self) -> &Count {
        &self.0
    }
    fn transition_to(&mut self, state: Count) {
        self.0 = state;
    }
    async fn kill(&mut self) {}
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        self.0.n += 1;
    }
}

fn new_process(id: String, target: u32) -> NewProcess {
    NewProcess::new(id, Count::KIND, "{}".into(), encode(&Count { n: 0, target }))
}

/// The engine the fenced runs write as.
const ENGINE: &str = "bench-engine";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs `procs` counters of `steps` steps; returns the wall time.
fn run(store: Option<&Store>, fenced: bool, procs: u32, steps: u32, rt: &tokio::runtime::Runtime) -> Duration {
    let local = Rc::new(LocalSet::new());
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    local.block_on(rt, {
        let local = local.clone();
        async move {
            let ids: Vec<String> = (0..procs).map(|i| format!("c{}-{run}-{i}", std::process::id())).collect();
            if let Some(store) = store {
                all_at_once(ids.clone(), |id| {
                    let store = store.clone();
                    async move {
                        let mut new = new_process(id, steps);
                        new.owner = fenced.then(|| ENGINE.to_owned());
                        store.insert(new).await
                    }
                })
                .await;
            }
            let started = Instant::now();
            let mut joins = Vec::new();
            for id in &ids {
                let proc = Counter(Count { n: 0, target: steps });
                match store {
                    Some(store) => {
                        let recorder = if fenced {
                            StoreRecorder::fenced(store.clone(), id, Fence { owner: ENGINE.into(), epoch: 1 })
                        } else {
                            StoreRecorder::new(store.clone(), id)
                        };
                        let h = spawn_recorded(&local, proc, DriveMode::FireAndForget, recorder);
                        h.try_nudge().unwrap();
                        joins.push(tokio::task::spawn_local(async move { h.join().await.unwrap().0.n }));
                    }
                    None => {
                        let h = spawn_owned(&local, proc, DriveMode::FireAndForget);
                        h.try_nudge().unwrap();
                        joins.push(tokio::task::spawn_local(async move { h.join().await.unwrap().0.n }));
                    }
                }
            }
            for j in joins {
                assert_eq!(j.await.unwrap(), steps);
            }
            started.elapsed()
        }
    })
}

/// Runs `write` for every id at once (they share the store's group commits).
async fn all_at_once<F, Fut>(ids: impl IntoIterator<Item = String>, write: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), drover_store::StoreError>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for id in ids {
        set.spawn(write(id));
    }
    while let Some(done) = set.join_next().await {
        done.unwrap().unwrap();
    }
}

fn pg_url() -> String {
    std::env::var("DROVER_TEST_POSTGRES_URL")
        .ok()
        .or_else(|| std::fs::read_to_string("/tmp/drover-services/postgres/url").ok().map(|s| s.trim().to_owned()))
        .expect("PostgreSQL is not running: run `scripts/services/all.sh start`")
}

/// A fresh PostgreSQL schema, as the URL of a store in it.
async fn pg_schema() -> String {
    let url = pg_url();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let schema = format!("bench_{}_{nanos}", std::process::id());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&pool).await.unwrap();
    format!("{url}?options=-csearch_path%3D{schema}")
}

/// A PostgreSQL store in a fresh schema.
async fn pg_store() -> Store {
    Store::open(&pg_schema().await).await.unwrap()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (procs, steps, stored, open) = if full { (2_000, 25, 100_000, 10_000) } else { (50, 4, 1_000, 100) };
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = rt.block_on(Store::open(dir.path().join("bench.db").to_str().unwrap())).unwrap();
    let postgres = rt.block_on(pg_store());
    let transitions = f64::from(procs * steps);
    println!(
        "drover-store benchmarks ({} mode): {procs} processes x {steps} steps, each state durable before the next step\n",
        if full { "full" } else { "smoke" }
    );
    let mut plain = 0.0;
    for (label, store, fenced) in [
        ("unrecorded (no store)", None, false),
        ("SQLite (WAL, synchronous=FULL)", Some(&sqlite), false),
        ("SQLite, fenced", Some(&sqlite), true),
        ("PostgreSQL", Some(&postgres), false),
        ("PostgreSQL, fenced", Some(&postgres), true),
    ] {
        run(store, fenced, procs / 10, steps, &rt); // warm-up
        let d = run(store, fenced, procs, steps, &rt);
        let rate = transitions / d.as_secs_f64();
        let beside = if fenced { format!("  ({:.2}x the unfenced time)", plain / rate) } else { String::new() };
        if !fenced {
            plain = rate;
        }
        println!("  {label:<34} {rate:>10.0} transitions/s  ({:.3} s){beside}", d.as_secs_f64());
    }
    println!("  goals: SQLite >= 20,000 checkpointed transitions/s; fenced within 1.2x of unfenced\n");

    let claims = if full { 30_000 } else { 600 };
    println!(
        "claims: three engines, each its own connection pool, claim {claims} new processes on one PostgreSQL, 500 at a time"
    );
    rt.block_on(async {
        let url = pg_schema().await;
        let store = Store::open(&url).await.unwrap();
        let run = std::process::id();
        all_at_once((0..claims).map(|i| format!("n{run}-{i}")), |id| {
            let store = store.clone();
            async move { store.insert(new_process(id, 1)).await }
        })
        .await;
        let engines: Vec<Store> = vec![store, Store::open(&url).await.unwrap(), Store::open(&url).await.unwrap()];
        for (k, e) in engines.iter().enumerate() {
            e.register_engine(&format!("claimer-{k}"), "bench", k as u32, "daemon", 60_000).await.unwrap();
        }
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (k, e) in engines.into_iter().enumerate() {
            set.spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = e.claim(&format!("claimer-{k}"), "daemon", 500, false).await.unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|p| p.id));
                }
            });
        }
        let mut all = Vec::new();
        let mut per = Vec::new();
        while let Some(mine) = set.join_next().await {
            let mine = mine.unwrap();
            per.push(mine.len());
            all.extend(mine);
        }
        let took = started.elapsed();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!((n, all.len()), (claims as usize, claims as usize), "a process was claimed twice, or not at all");
        println!(
            "  PostgreSQL, FOR UPDATE SKIP LOCKED    {:>10.0} processes/s claimed ({:.3} s; per engine {per:?}; none twice)",
            f64::from(claims) / took.as_secs_f64(),
            took.as_secs_f64()
        );
        println!("  goal: >= 5,000 processes/s\n");
    });

    println!("recovery: load the {open} unfinished of {stored} stored processes and decode their checkpoints");
    for (label, store) in [("SQLite", &sqlite), ("PostgreSQL", &postgres)] {
        rt.block_on(async {
            let run = std::process::id();
            all_at_once((0..stored).map(|i| format!("r{run}-{i}")), |id| {
                let store = store.clone();
                async move { store.insert(new_process(id, 5)).await }
            })
            .await;
            all_at_once((open..stored).map(|i| format!("r{run}-{i}")), |id| {
                let store = store.clone();
                async move { store.record(&id, encode(&Count { n: 5, target: 5 }), false, true).await }
            })
            .await;
            let started = Instant::now();
            let unfinished = store.unfinished().await.unwrap();
            let states: Vec<Count> = unfinished.iter().map(|p| decode::<Count>(&p.checkpoint).unwrap()).collect();
            let took = started.elapsed();
            // The earlier throughput runs left no unfinished process behind.
            assert_eq!(states.len(), open as usize);
            println!("  {label:<34} {:>10.3} s for {} processes  (goal: under 5 s)", took.as_secs_f64(), states.len());
        });
    }
}
