//! The engine the crash harness (`tests/crash.rs`) kills and restarts: it
//! opens a SQLite store, resumes what is unfinished, submits whatever of its
//! workload is not in the store yet, and runs everything to the end.
//!
//! `crash-engine STORE WORK TAG SHELL_JOBS SLURM_JOBS [GROUP_CHILDREN]`
//!
//! Shell job `s<i>` appends its id to `WORK/marker` once and sleeps 2 s; SLURM
//! job `j<i>` runs through `ssh drover-test-host`, prints its id and sleeps 5 s:
//! long enough, with 8 at a time, for the harness to kill the engine ten times.
//! With `GROUP_CHILDREN`, a group `g` fans out to that many shell children
//! `g.c<i>`, two per checkpoint, each appending its id to `WORK/marker` once.
//! Exits 0 when every process succeeded.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use drover_engine::{Engine, Identity, Job, Kinds};
use drover_group::{GroupJob, GroupKind, Member};
use drover_scheduler::{
    AnyScheduler, AnyTransport, Computer, JobSpec, RetryPolicy, SchedulerJob, SchedulerKind, Slurm, Ssh, SshConfig,
};
use drover_shell::{Governor, Output, ShellEnv, ShellJob, ShellKind, ShellSpec};
use drover_store::Store;
use tokio::task::LocalSet;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (store, work, tag, shells, slurms, group) = match &args[..] {
        [_, store, work, tag, shells, slurms] => (store, work, tag, shells, slurms, "0"),
        [_, store, work, tag, shells, slurms, group] => (store, work, tag, shells, slurms, group.as_str()),
        _ => {
            eprintln!("usage: crash-engine STORE WORK TAG SHELL_JOBS SLURM_JOBS [GROUP_CHILDREN]");
            std::process::exit(2);
        }
    };
    let group: usize = group.parse().unwrap();
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
            let kinds = Kinds::new()
                .with::<ShellKind>(ShellEnv { governor: Governor::new(8), run_root: work.join("run") })
                .with::<SchedulerKind>(Arc::new(computers))
                .with::<GroupKind>(());
            // The same engine each time: it takes its own processes back at once.
            let identity = Identity { id: format!("crash-engine-{tag}"), ..Identity::fresh("daemon") };
            let engine = Engine::with_identity(store.clone(), local, kinds, identity);
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
                    engine.submit(&id, Job::new::<ShellKind>(&ShellJob { spec })).await.expect("submit");
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
                    engine
                        .submit(&id, Job::new::<SchedulerKind>(&SchedulerJob { computer: "cluster".into(), spec }))
                        .await
                        .expect("submit");
                }
            }
            if group > 0 && store.get("g").await.unwrap().is_none() {
                let marker = work.join("marker").display().to_string();
                let jobs = (0..group)
                    .map(|i| {
                        let spec = ShellSpec::program("sh", ["-c", "echo \"$1\" >> \"$2\"", "sh"]);
                        let mut spec = spec;
                        spec.args.push(format!("g.c{i}"));
                        spec.args.push(marker.clone());
                        Member { name: format!("c{i}"), job: Job::new::<ShellKind>(&ShellJob { spec }) }
                    })
                    .collect();
                engine.submit("g", Job::new::<GroupKind>(&GroupJob { jobs, batch: Some(2) })).await.expect("submit");
            }
            let outcomes = engine.wait_all().await;
            let failed: Vec<_> = outcomes.iter().filter(|(_, o)| !o.succeeded()).collect();
            eprintln!("{} processes ended, {} did not succeed: {failed:?}", outcomes.len(), failed.len());
            failed.is_empty()
        }
    });
    std::process::exit(if ok { 0 } else { 1 });
}
