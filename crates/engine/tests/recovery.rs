//! Recovery through the engine, with shell processes (no services needed).

mod common;

use common::run;

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use drover_engine::{Engine, Identity, Job, Kinds};
use drover_shell::{Governor, ShellEnv, ShellJob, ShellKind, ShellSpec, ShellState};
use drover_store::{Store, decode, encode};
use tokio::task::LocalSet;

fn engine(store: Store, local: &Rc<LocalSet>, run_root: &std::path::Path) -> Engine {
    let kinds = Kinds::new().with::<ShellKind>(ShellEnv { governor: Governor::new(4), run_root: run_root.to_owned() });
    // One engine, restarted: it takes its own processes back at once.
    let identity = Identity { id: "recovery-test".into(), ..Identity::fresh("daemon") };
    Engine::with_identity(store, local.clone(), kinds, identity)
}

#[test]
fn unreadable_processes_are_marked_and_the_others_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let runs = dir.path().join("runs");
    // An engine records three processes, paused, and stops.
    run(|local| {
        let (db, runs) = (db.clone(), runs.clone());
        async move {
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            let e = engine(store.clone(), &local, &runs);
            for id in ["good", "corrupt", "newer"] {
                e.submit(id, Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script("exit 0") })).await.unwrap();
            }
            let _ = e.wait_all().await;
        }
    });
    let outcomes = run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        // Make `good` unfinished again, as if the crash came before it ended,
        // and break the other two checkpoints behind the engine's back.
        store.record("good", encode(&ShellState::Queued), false, false).await.unwrap();
        store.record("corrupt", "{\"v\":2,\"state\":{\"Bogus\":7}}".into(), false, false).await.unwrap();
        store.record("newer", "{\"v\":99,\"state\":\"Queued\"}".into(), false, false).await.unwrap();
        let e = engine(store.clone(), &local, &runs);
        let recovery = e.recover().await.unwrap();
        assert_eq!(recovery.resumed, vec!["good".to_owned()]);
        let failed: HashMap<_, _> = recovery.failed.into_iter().collect();
        assert!(failed["corrupt"].contains("corrupt shell checkpoint"), "{failed:?}");
        assert!(failed["newer"].contains("version 99 is newer"), "{failed:?}");
        // The marks are in the store, the checkpoints untouched.
        let newer = store.get("newer").await.unwrap().unwrap();
        assert!(newer.error.as_deref().is_some_and(|e| e.contains("upgrade drover")));
        assert_eq!(newer.checkpoint, "{\"v\":99,\"state\":\"Queued\"}");
        e.wait_all().await
    });
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].1.succeeded(), "{outcomes:?}");
}

#[test]
fn a_process_paused_before_the_restart_stays_paused() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let runs = dir.path().join("runs");
    let marker = dir.path().join("ran");
    let spec = ShellSpec::program("touch", [marker.to_str().unwrap()]);
    run(|local| {
        let db = db.clone();
        async move {
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            store
                .insert(drover_store::NewProcess::new(
                    "p",
                    "shell",
                    serde_json::to_string(&Job::new::<ShellKind>(&ShellJob { spec })).unwrap(),
                    encode(&ShellState::Queued),
                ))
                .await
                .unwrap();
            // Paused by a request before the engine went down.
            store.record("p", encode(&ShellState::Queued), true, false).await.unwrap();
            drop(local);
        }
    });
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, &runs);
        assert_eq!(e.recover().await.unwrap().resumed, vec!["p".to_owned()]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!marker.exists(), "a paused process ran after the restart");
        let p = store.get("p").await.unwrap().unwrap();
        assert!(p.paused);
        assert_eq!(decode::<ShellState>(&p.checkpoint).unwrap(), ShellState::Queued);
    });
}
