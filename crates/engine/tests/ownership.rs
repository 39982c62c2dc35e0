//! Engines that own what they drive (no services needed: SQLite, shell
//! processes): fenced writes, takeover after a lease expires, shell
//! processes re-attached on their host and marked lost elsewhere.

mod common;

use common::run;

use std::rc::Rc;
use std::time::Duration;

use drover_engine::{Engine, Identity, Job, Kinds};
use drover_shell::{Governor, ShellEnv, ShellJob, ShellKind, ShellSpec, ShellState};
use drover_store::{Fence, NewProcess, Record, Store, StoreError, decode, encode};
use tokio::task::LocalSet;

fn engine(store: Store, local: &Rc<LocalSet>, run_root: &std::path::Path, id: &str, lease: Duration) -> Engine {
    let kinds = Kinds::new().with::<ShellKind>(ShellEnv { governor: Governor::new(4), run_root: run_root.to_owned() });
    Engine::with_identity(store, local.clone(), kinds, Identity { id: id.into(), lease, ..Identity::fresh("daemon") })
}

fn shell(script: &str) -> Job {
    Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script(script) })
}

#[test]
fn a_write_under_a_stale_claim_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|_| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let mut new = NewProcess::new("p", "shell", "{}".into(), encode(&ShellState::Queued));
        new.owner = Some("a".into());
        store.insert(new).await.unwrap();
        store.register_engine("a", "h", 1, "daemon", 1).await.unwrap();
        store.register_engine("b", "h", 2, "daemon", 60_000).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A's lease (1 ms) expired: B claims the process, at epoch 2.
        let claimed = store.claim("b", "daemon", 10, false).await.unwrap();
        assert_eq!(claimed.iter().map(|p| (p.id.as_str(), p.epoch)).collect::<Vec<_>>(), [("p", 2)]);
        let mut stale = Record::new(encode(&ShellState::Killed), false, true);
        stale.fence = Some(Fence { owner: "a".into(), epoch: 1 });
        assert_eq!(store.commit_record("p", stale).await, Err(StoreError::Fenced("p".into())));
        let p = store.get("p").await.unwrap().unwrap();
        assert_eq!((p.owner.as_deref(), p.terminal, store.events("p").await.unwrap().len()), (Some("b"), false, 1));
        // A's heartbeat learns it lost its lease; B's holds.
        assert!(!store.heartbeat("a", 10_000).await.unwrap());
        assert!(store.heartbeat("b", 10_000).await.unwrap());
        let mut fresh = Record::new(encode(&ShellState::Killed), false, true);
        fresh.fence = Some(Fence { owner: "b".into(), epoch: 2 });
        store.commit_record("p", fresh).await.unwrap();
        assert!(store.events("p").await.unwrap().iter().any(|e| e.epoch == 2));
    });
}

#[test]
fn another_engine_on_the_host_takes_over_a_shell_process_after_the_lease_and_re_attaches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let marker = dir.path().join("marker");
    let script = format!("echo ran >> {}; sleep 1", marker.display());
    // Engine A starts the command and stops (as a crash would) while it runs.
    run(|local| {
        let (db, root) = (db.clone(), dir.path().join("a-runs"));
        async move {
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            let a = engine(store.clone(), &local, &root, "a", Duration::from_millis(600));
            a.submit("p", shell(&script)).await.unwrap();
            for _ in 0..100 {
                let p = store.get("p").await.unwrap().unwrap();
                if matches!(decode::<ShellState>(&p.checkpoint), Ok(ShellState::Running { .. })) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let b = engine(store.clone(), &local, &dir.path().join("b-runs"), "b", Duration::from_secs(10));
        // A's lease holds yet: B takes nothing.
        assert!(b.recover().await.unwrap().resumed.is_empty());
        tokio::time::sleep(Duration::from_millis(800)).await;
        let recovery = b.recover().await.unwrap();
        assert_eq!(recovery.resumed, ["p"]);
        let outcomes = b.wait_all().await;
        assert!(outcomes[0].1.succeeded(), "{outcomes:?}");
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n", "it ran again instead of re-attaching");
        assert_eq!(store.get("p").await.unwrap().unwrap().owner.as_deref(), Some("b"));
    });
}

#[test]
fn a_shell_process_of_another_host_is_marked_lost_naming_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let marker = dir.path().join("marker");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let job = serde_json::to_string(&shell(&format!("touch {}", marker.display()))).unwrap();
        let mut new = NewProcess::new("far", "shell", job, encode(&ShellState::Starting));
        new.host = Some("login7.cluster.example:/home/u/.local/share/drover/runs".into());
        store.insert(new).await.unwrap();
        let e = engine(store.clone(), &local, &dir.path().join("runs"), "here", Duration::from_secs(10));
        let recovery = e.recover().await.unwrap();
        assert!(recovery.resumed.is_empty());
        assert_eq!(recovery.lost.len(), 1);
        assert!(recovery.lost[0].1.contains("login7.cluster.example"), "{:?}", recovery.lost);
        let info = e.list().await.unwrap().into_iter().find(|p| p.id == "far").unwrap();
        assert_eq!((info.state.as_str(), info.terminal), ("lost", true));
        assert!(info.detail.unwrap().contains("login7.cluster.example"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!marker.exists(), "a process of another host ran here");
    });
}

#[test]
fn recovering_again_leaves_the_running_processes_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let e = engine(store.clone(), &local, &dir.path().join("runs"), "twice", Duration::from_secs(10));
        e.submit("p", shell("sleep 0.5")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // A second recover claims it again (a new epoch): it goes on under it.
        e.recover().await.unwrap();
        let outcomes = tokio::time::timeout(Duration::from_secs(10), e.wait_all()).await.expect("it ends");
        assert!(outcomes[0].1.succeeded(), "{outcomes:?}");
        let p = store.get("p").await.unwrap().unwrap();
        assert!(p.terminal && p.epoch == 2, "{p:?}");
    });
}

#[test]
fn a_child_marked_lost_wakes_its_waiting_parent() {
    use drover_group::{GroupJob, GroupKind, GroupState, Member};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let child = shell("true");
        let group = Job::new::<GroupKind>(&GroupJob {
            jobs: vec![Member { name: "a".into(), job: child.clone() }],
            batch: None,
        });
        store
            .insert(NewProcess::new(
                "g",
                "group",
                serde_json::to_string(&group).unwrap(),
                encode(&GroupState::Waiting { children: 1 }),
            ))
            .await
            .unwrap();
        let mut far =
            NewProcess::new("g.a", "shell", serde_json::to_string(&child).unwrap(), encode(&ShellState::Starting));
        far.parent = Some("g".into());
        far.host = Some("login7.cluster.example:/runs".into());
        store.insert(far).await.unwrap();
        let kinds = Kinds::new()
            .with::<ShellKind>(ShellEnv { governor: Governor::new(2), run_root: dir.path().join("runs") })
            .with::<GroupKind>(());
        let e = Engine::with_identity(
            store.clone(),
            local.clone(),
            kinds,
            Identity { id: "here".into(), ..Identity::fresh("daemon") },
        );
        let recovery = e.recover().await.unwrap();
        assert_eq!((recovery.resumed.as_slice(), recovery.lost.len()), (&["g".to_owned()][..], 1));
        let outcomes = tokio::time::timeout(Duration::from_secs(10), e.wait_all()).await.expect("the group ends");
        let g = outcomes.iter().find(|(id, _)| id == "g").unwrap();
        assert_eq!(
            g.1.state::<GroupKind>(),
            Some(GroupState::Finished { exit_code: 1, failed: vec!["g.a (lost)".into()] })
        );
    });
}
