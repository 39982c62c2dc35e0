//! A submission is all or nothing: a taken id, or a store that fails in the
//! middle of the batch (here a real SQLite error, raised by a trigger on the
//! 50th row as a full disk would), leaves nothing recorded and nothing run.

#![allow(clippy::disallowed_methods)] // python3 changes the database behind the store's back

mod common;

use common::run;

use std::rc::Rc;

use drover_engine::{Engine, EngineError, Job, Kinds};
use drover_shell::{ShellJob, ShellKind, ShellSpec};
use drover_store::Store;
use tokio::task::LocalSet;

fn engine(store: Store, local: &Rc<LocalSet>, dir: &std::path::Path) -> Engine {
    common::engine(store, local, Kinds::new().with::<ShellKind>(common::shell_env(&dir.join("runs"), 2)), "submit-test")
}

/// 100 jobs that each leave a marker file.
fn batch(dir: &std::path::Path) -> Vec<(String, Job)> {
    (0..100)
        .map(|n| {
            let script = format!("touch {}/ran-{n}", dir.display());
            (format!("j{n}"), Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script(&script) }))
        })
        .collect()
}

fn markers(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("ran-"))
        .count()
}

#[test]
fn a_store_error_in_the_middle_of_a_submission_leaves_nothing_recorded_or_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, dir.path());
        let trigger = "CREATE TRIGGER boom BEFORE INSERT ON processes WHEN NEW.id = 'j50' \
                       BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;";
        let status = std::process::Command::new("python3")
            .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()"])
            .arg(&db)
            .arg(trigger)
            .status()
            .expect("python3 runs");
        assert!(status.success());

        let error = e.submit_all(batch(dir.path())).await.unwrap_err();
        assert!(error.to_string().contains("disk is full"), "{error}");
        assert_eq!(store.count().await.unwrap(), 0, "half a submission was recorded");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(markers(dir.path()), 0, "a job of a failed submission ran");

        // The same batch with one id already taken: refused whole, naming it.
        std::process::Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('DROP TRIGGER boom'); c.commit()",
            ])
            .arg(&db)
            .status()
            .unwrap();
        e.submit("j70", Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script("true") })).await.unwrap();
        let _ = e.wait_all().await;
        match e.submit_all(batch(dir.path())).await {
            Err(EngineError::Duplicate(id)) => assert_eq!(id, "j70"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.count().await.unwrap(), 1);

        // And whole once it can be.
        let mut jobs = batch(dir.path());
        jobs.retain(|(id, _)| id != "j70");
        e.submit_all(jobs).await.unwrap();
        let outcomes = e.wait_all().await;
        assert!(outcomes.iter().all(|(_, o)| o.succeeded()));
        assert_eq!(store.count().await.unwrap(), 100);
        assert_eq!(markers(dir.path()), 99);
    });
}
