//! A cancel left unconfirmed by an engine that stopped is taken up by the next
//! one: nothing is left running on the cluster. Needs the test services.

#![allow(clippy::disallowed_methods)] // the test submits and inspects jobs with SLURM's own tools

use std::collections::HashMap;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_engine::{Engine, Job, Kinds};
use drover_scheduler::{
    AnyScheduler, AnyTransport, Computer, JobSpec, JobState, SchedulerJob, SchedulerKind, Slurm, Ssh, SshConfig,
};
use drover_store::{NewProcess, Record, Store, decode, encode};
use tokio::task::LocalSet;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn an_unconfirmed_cancel_is_taken_up_after_a_restart() {
    let ok = Command::new("sh")
        .args(["-c", "ssh -o BatchMode=yes drover-test-host true && scontrol ping | grep -q UP"])
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "sshd and SLURM for tests are not running: run `scripts/services/all.sh start` (the README's test command does)"
    );
    let name = format!("drover-cancel-{}", std::process::id());
    let job_id = sh(&format!(
        "ssh drover-test-host \"sbatch --parsable --job-name={name} --output=/dev/null --wrap 'sleep 600'\""
    ));
    let live = || sh(&format!("squeue --noheader --states=PENDING,RUNNING,COMPLETING --name={name} --format=%i"));
    assert_eq!(live(), job_id);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    local.block_on(&rt, {
        let local = local.clone();
        async move {
            let store = Store::open(db.to_str().unwrap()).await.unwrap();
            // What a crashed engine left: the job killed, its cancel unconfirmed.
            let spec = JobSpec { id: "k".into(), command: "sleep".into(), ..JobSpec::default() };
            let job =
                serde_json::to_string(&Job::new::<SchedulerKind>(&SchedulerJob { computer: "cluster".into(), spec }))
                    .unwrap();
            let checkpoint = encode(&JobState::Created);
            store.insert(NewProcess::new("k", "scheduler", job, checkpoint)).await.unwrap();
            let killed = JobState::Killed { job_id: Some(job_id.clone()), cancel_pending: true };
            let mut record = Record::new(encode(&killed), false, true);
            record.pending_work = true;
            store.commit_record("k", record).await.unwrap();

            let cluster = Computer::new(
                "cluster",
                AnyTransport::Ssh(Ssh::new(SshConfig::new("drover-test-host"))),
                AnyScheduler::Slurm(Slurm::new()),
                "drover-tests",
                Duration::from_secs(1),
            );
            let kinds = Kinds::new().with::<SchedulerKind>(Arc::new(HashMap::from([("cluster".to_owned(), cluster)])));
            let engine = Engine::new(store.clone(), local, kinds);
            let recovery = engine.recover().await.unwrap();
            assert_eq!(recovery.cancels, vec!["k".to_owned()]);
            assert!(recovery.resumed.is_empty());

            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let stored = store.get("k").await.unwrap().unwrap();
                let state: JobState = decode(&stored.checkpoint).unwrap();
                if state == (JobState::Killed { job_id: Some(job_id.clone()), cancel_pending: false }) {
                    break;
                }
                assert!(Instant::now() < deadline, "the cancel was never confirmed: {state:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    assert_eq!(live(), "", "the job was left running");
}
