//! The engine the crash harness (`tests/crash.rs`) kills and restarts: it
//! opens a SQLite store, resumes what is unfinished, submits whatever of its
//! workload is not in the store yet, and runs everything to the end.
//!
//! `crash-engine STORE WORK TAG SHELL_JOBS SLURM_JOBS`
//!
//! Shell job `s<i>` appends its id to `WORK/marker` once and sleeps 2 s; SLURM
//! job `j<i>` runs through `ssh drover-test-host`, prints its id and sleeps 5 s:
//! long enough, with 8 at a time, for the harness to kill the engine ten times. Exits 0 when every
//! process succeeded.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use drover_engine::{Engine, Job};
use drover_scheduler::{AnyScheduler, AnyTransport, Computer, JobSpec, RetryPolicy, Slurm, Ssh, SshConfig};
use drover_shell::{Governor, Output, ShellSpec};
use drover_store::Store;
use tokio::task::LocalSet;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, store, work, tag, shells, slurms] = &args[..] else {
        eprintln!("usage: crash-engine STORE WORK TAG SHELL_JOBS SLURM_JOBS");
        std::process::exit(2);
    };
    let work = std::path::PathBuf::from(work);
    let (shells, slurms): (usize, usize) = (shells.parse().unwrap(), slurms.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    let ok = local.block_on(&rt, {
        let local = local.clone();
        async move {
            let store = Store::open(store).await.expect("open the store");
            let cluster = Computer::new(
                "cluster",
                AnyTransport::Ssh(Ssh::new(SshConfig::new("drover-test-host"))),
                AnyScheduler::Slurm(Slurm::new()),
                format!("drover-crash/{tag}"),
                Duration::from_secs(1),
            )
            .with_retry(RetryPolicy { attempts: 5, first_delay: Duration::from_millis(500) });
            let computers = HashMap::from([("cluster".to_owned(), cluster)]);
            let engine = Engine::new(store.clone(), local, Governor::new(8), computers, work.join("run"));
            let recovery = engine.recover().await.expect("recover");
            eprintln!("resumed {} processes, {} could not be loaded", recovery.resumed.len(), recovery.failed.len());
            for i in 0..shells {
                let id = format!("s{i}");
                if store.get(&id).await.unwrap().is_none() {
                    let spec = ShellSpec::program("sh", ["-c", "echo \"$1\" >> \"$2\"; sleep 2", "sh"])
                        .with_stdout(Output::File(work.join(format!("{id}.out"))));
                    let mut spec = spec;
                    spec.args.push(id.clone());
                    spec.args.push(work.join("marker").display().to_string());
                    engine.submit(&id, Job::Shell { spec }).await.expect("submit");
                }
            }
            for i in 0..slurms {
                let id = format!("j{i}");
                if store.get(&id).await.unwrap().is_none() {
                    let spec = JobSpec {
                        id: format!("{tag}-{id}"),
                        command: "sh".into(),
                        args: vec!["-c".into(), "echo \"$1\"; sleep 5".into(), "sh".into(), id.clone()],
                        local_dir: work.join("slurm").join(&id),
                        ..JobSpec::default()
                    };
                    engine.submit(&id, Job::Scheduler { computer: "cluster".into(), spec }).await.expect("submit");
                }
            }
            let outcomes = engine.wait_all().await;
            let failed: Vec<_> = outcomes.iter().filter(|(_, o)| !o.succeeded()).collect();
            eprintln!("{} processes ended, {} did not succeed: {failed:?}", outcomes.len(), failed.len());
            failed.is_empty()
        }
    });
    std::process::exit(if ok { 0 } else { 1 });
}
