//! Parents and children through the engine, with groups of shell processes
//! (no services needed): children recorded with their parent, woken by
//! their ends, killed and paused with it, recovered together.

mod common;

use common::run;

use std::rc::Rc;
use std::time::Duration;

use drover_engine::{Engine, Identity, Job, Kinds};
use drover_group::{GroupJob, GroupKind, GroupState, Member};
use drover_shell::{Governor, ShellEnv, ShellJob, ShellKind, ShellSpec, ShellState};
use drover_store::{Store, decode};
use tokio::task::LocalSet;

fn engine(store: Store, local: &Rc<LocalSet>, dir: &std::path::Path, slots: usize) -> Engine {
    let kinds = Kinds::new()
        .with::<ShellKind>(ShellEnv { governor: Governor::new(slots), run_root: dir.join("runs") })
        .with::<GroupKind>(());
    let identity = Identity { id: "children-test".into(), ..Identity::fresh("daemon") };
    Engine::with_identity(store, local.clone(), kinds, identity)
}

fn shell(name: &str, script: &str) -> Member {
    Member { name: name.into(), job: Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script(script) }) }
}

fn group(jobs: Vec<Member>) -> Job {
    Job::new::<GroupKind>(&GroupJob { jobs, batch: None })
}

async fn state_of(store: &Store, id: &str) -> String {
    match store.get(id).await.unwrap() {
        Some(p) => serde_json::from_str::<serde_json::Value>(&p.checkpoint).unwrap()["state"].to_string(),
        None => "(not recorded)".to_owned(),
    }
}

#[test]
fn a_group_ends_when_its_children_have_and_says_which_failed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, dir.path(), 2);
        let jobs = vec![shell("a", "exit 0"), shell("b", "exit 3"), shell("c", "sleep 0.2")];
        e.submit("g", group(jobs)).await.unwrap();
        let outcomes = e.wait_all().await;
        let g = outcomes.iter().find(|(id, _)| id == "g").unwrap();
        assert_eq!(
            g.1.state::<GroupKind>(),
            Some(GroupState::Finished { exit_code: 1, failed: vec!["g.b (finished, exit 3)".into()] })
        );
        // Each child is in the store with its parent, and `show` lists them.
        let children = store.children("g").await.unwrap();
        let ids: Vec<&str> = children.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["g.a", "g.b", "g.c"]);
        let detail = e.show("g").await.unwrap().unwrap();
        assert_eq!(detail.children.len(), 3);
        assert!(detail.children.iter().all(|c| c.parent.as_deref() == Some("g") && c.terminal));
        assert_eq!(detail.describe, vec![("jobs".to_owned(), "3 (a, b, c)".to_owned())]);
        let b: ShellState = decode(&store.get("g.b").await.unwrap().unwrap().checkpoint).unwrap();
        assert!(matches!(b, ShellState::Finished { exit_code: 3, .. }), "{b:?}");
    });
}

#[test]
fn waiting_parents_hold_no_slot_a_group_of_groups_runs_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        // One governor slot, three levels of waiting parents.
        let e = engine(store.clone(), &local, dir.path(), 1);
        let inner = |n: &str| Member { name: n.into(), job: group(vec![shell("x", "true"), shell("y", "true")]) };
        e.submit("top", group(vec![inner("p"), inner("q")])).await.unwrap();
        let outcomes = tokio::time::timeout(Duration::from_secs(30), e.wait_all()).await.expect("it finishes");
        assert!(outcomes.iter().all(|(_, o)| o.succeeded()), "{outcomes:?}");
        assert_eq!(store.count().await.unwrap(), 7);
        assert!(store.get("top.p.x").await.unwrap().unwrap().terminal);
    });
}

#[test]
fn killing_a_parent_kills_its_children_first_and_pausing_pauses_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, dir.path(), 4);
        e.submit("g", group(vec![shell("a", "sleep 30"), shell("b", "sleep 30")])).await.unwrap();
        // Until both children run.
        for _ in 0..200 {
            if state_of(&store, "g.a").await.contains("Running") && state_of(&store, "g.b").await.contains("Running") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        e.pause("g").await.unwrap();
        assert!(store.get("g.a").await.unwrap().unwrap().paused, "a child was not paused with its parent");
        e.resume("g").await.unwrap();
        e.kill("g").await.unwrap();
        assert_eq!(state_of(&store, "g").await, "\"Killed\"");
        assert_eq!(state_of(&store, "g.a").await, "\"Killed\"");
        assert_eq!(state_of(&store, "g.b").await, "\"Killed\"");
        // The children ended before their parent did.
        let last_child = store
            .events("g.a")
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq
            .max(store.events("g.b").await.unwrap().last().unwrap().seq);
        let parent_end = store.events("g").await.unwrap().last().unwrap().seq;
        assert!(last_child < parent_end, "the parent ended before its children");
    });
}

#[test]
fn parents_and_children_recover_together() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let marker = dir.path().join("marker");
    let script = format!("echo ran >> {}; sleep 1", marker.display());
    // An engine starts a group and stops while its children run.
    run(|local| {
        let (db, dir, script) = (db.clone(), dir.path().to_owned(), script.clone());
        async move {
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            let e = engine(store.clone(), &local, &dir, 4);
            e.submit("g", group(vec![shell("a", &script), shell("b", &script)])).await.unwrap();
            for _ in 0..200 {
                if state_of(&store, "g.b").await.contains("Running") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    // The next one (the same engine, restarted) resumes all three.
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, dir.path(), 4);
        let mut resumed = e.recover().await.unwrap().resumed;
        resumed.sort();
        assert_eq!(resumed, ["g", "g.a", "g.b"]);
        let outcomes = tokio::time::timeout(Duration::from_secs(30), e.wait_all()).await.expect("it finishes");
        assert!(outcomes.iter().all(|(_, o)| o.succeeded()), "{outcomes:?}");
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2, "a child ran twice");
    });
}

#[test]
fn a_child_whose_id_is_another_process_s_is_reported_as_refused_not_as_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, dir.path(), 2);
        // A running process of this engine has the id: refused when spawned.
        e.submit("h.a", Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script("sleep 1") })).await.unwrap();
        e.submit("h", group(vec![shell("a", "exit 0")])).await.unwrap();
        // Another process, ended, has it in the store: the store refuses the
        // child, and the group does not take that process's end for its own.
        let job =
            serde_json::to_string(&Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script("exit 7") })).unwrap();
        let done = drover_store::encode(&ShellState::Finished { exit_code: 7, ran_for: Duration::ZERO });
        store.insert(drover_store::NewProcess::new("g.a", "shell", job, done.clone())).await.unwrap();
        store.record("g.a", done, false, true).await.unwrap();
        e.submit("g", group(vec![shell("a", "exit 0"), shell("b", "exit 0")])).await.unwrap();
        let outcomes = tokio::time::timeout(Duration::from_secs(20), e.wait_all()).await.expect("it ends");
        let h = outcomes.iter().find(|(id, _)| id == "h").unwrap();
        assert!(
            matches!(h.1.state::<GroupKind>(), Some(GroupState::Failed { reason }) if reason.contains("the id is taken"))
        );
        let g = outcomes.iter().find(|(id, _)| id == "g").unwrap();
        assert_eq!(
            g.1.state::<GroupKind>(),
            Some(GroupState::Finished { exit_code: 1, failed: vec!["g.a (refused)".into()] })
        );
        assert_eq!(store.get("g.a").await.unwrap().unwrap().parent, None, "the other process was adopted");
        assert!(store.get("g").await.unwrap().unwrap().error.unwrap().contains("`g.a` not spawned"));
    });
}

#[test]
fn a_group_in_a_job_file_is_read_child_by_child_each_by_its_own_kind() {
    let plan = |table: serde_json::Value| {
        let table = table.as_object().unwrap().clone();
        let entry = drover_kind::Entry {
            name: "f.g",
            process_id: "run.f.g",
            table: &table,
            out_dir: std::path::Path::new("/out"),
            plan: &drover_engine::plan,
        };
        drover_engine::plan(&entry)
    };
    let job = plan(serde_json::json!({ "jobs": [{ "id": "a", "command": "echo" }, { "script": "exit 1" }] })).unwrap();
    let spec = job.spec::<GroupKind>().unwrap().unwrap();
    assert_eq!(spec.jobs.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "job-2"]);
    let a = spec.jobs[0].job.spec::<ShellKind>().unwrap().unwrap();
    assert_eq!(a.spec.stdout, drover_shell::Output::File("/out/f.g.a.out".into()));
    let bad = plan(
        serde_json::json!({ "jobs": [{ "id": "a", "command": "echo" }, { "id": "b", "script": "x", "nodes": 2 }] }),
    );
    assert_eq!(bad.unwrap_err(), "jobs[1] (`b`): `nodes` is for scheduler jobs (give `computer`)");
    let twice =
        plan(serde_json::json!({ "jobs": [{ "id": "a", "command": "echo" }, { "id": "a", "command": "true" }] }));
    assert!(twice.unwrap_err().contains("`a` appears twice"));
    assert!(plan(serde_json::json!({ "jobs": [] })).unwrap_err().contains("a group holds 1 to 100000 jobs"));
}
