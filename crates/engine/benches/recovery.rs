//! Recovery benchmark: the time for an engine to resume the 10,000 unfinished
//! processes of a store holding 100,000 (load, decode, respawn; they were
//! paused, so none starts a child), on SQLite.
//!
//! `cargo bench -p drover-engine --bench recovery`; `cargo test` runs it small.

#![allow(missing_docs)]

use std::rc::Rc;
use std::time::Instant;

use drover_engine::{Engine, Job, Kinds};
use drover_shell::{Governor, ShellEnv, ShellJob, ShellKind, ShellSpec, ShellState};
use drover_store::{NewProcess, Store, encode};
use tokio::task::LocalSet;

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (stored, open) = if full { (100_000, 10_000) } else { (1_000, 100) };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let spec = serde_json::to_string(&Job::new::<ShellKind>(&ShellJob {
        spec: ShellSpec::program("true", Vec::<String>::new()),
    }))
    .unwrap();
    rt.block_on(async {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..stored {
            let (store, spec) = (store.clone(), spec.clone());
            set.spawn(async move {
                let id = format!("p{i}");
                let checkpoint = encode(&ShellState::Queued);
                store.insert(NewProcess::new(id.clone(), "shell", spec, checkpoint)).await?;
                if i < open {
                    store.record(&id, encode(&ShellState::Queued), true, false).await
                } else {
                    let done = ShellState::Finished { exit_code: 0, ran_for: std::time::Duration::ZERO };
                    store.record(&id, encode(&done), false, true).await
                }
            });
        }
        while let Some(done) = set.join_next().await {
            done.unwrap().unwrap();
        }
    });
    let local = Rc::new(LocalSet::new());
    let (took, resumed) = local.block_on(&rt, {
        let local = local.clone();
        async move {
            let started = Instant::now();
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            let kinds = Kinds::new()
                .with::<ShellKind>(ShellEnv { governor: Governor::new(2), run_root: dir.path().join("runs") });
            let engine = Engine::new(store, local, kinds);
            let recovery = engine.recover().await.unwrap();
            (started.elapsed(), recovery.resumed.len())
        }
    });
    assert_eq!(resumed, open);
    println!(
        "recovery: {resumed} unfinished of {stored} stored processes resumed in {:.3} s (open, load, decode, respawn; goal: under 5 s)",
        took.as_secs_f64()
    );
}
