//! A minimal engine that holds a computer over SSH while it runs one SLURM
//! job, for the test that kills engines (`tests/slurm.rs`): a killed engine
//! must leave no SSH connection behind, and a new one must join the master
//! the killed one used.
//!
//! `ssh-engine DESTINATION CONTROL_DIR WORK_ROOT JOB_ID`
//!
//! Prints `running SLURM_ID` once the job runs, then follows it to its end.

use std::path::PathBuf;
use std::time::Duration;

use drover_core::{DriveMode, Process, spawn_owned};
use drover_scheduler::{
    AnyScheduler, AnyTransport, Computer, JobSpec, JobState, SchedulerProcess, Slurm, Ssh, SshConfig,
};
use tokio::task::LocalSet;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, destination, control_dir, work_root, id] = &args[..] else {
        eprintln!("usage: ssh-engine DESTINATION CONTROL_DIR WORK_ROOT JOB_ID");
        std::process::exit(2);
    };
    let mut config = SshConfig::new(destination.clone());
    config.control_dir = Some(PathBuf::from(control_dir));
    let computer = Computer::new(
        "cluster",
        AnyTransport::Ssh(Ssh::new(config)),
        AnyScheduler::Slurm(Slurm::new()),
        work_root.clone(),
        Duration::from_secs(1),
    );
    let spec = JobSpec {
        id: id.clone(),
        command: "sleep".into(),
        args: vec!["20".into()],
        local_dir: std::env::temp_dir().join(format!("ssh-engine-{id}")),
        ..JobSpec::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let local = LocalSet::new();
    let state = local.block_on(&rt, async {
        let h = spawn_owned(&local, SchedulerProcess::new(spec, computer), DriveMode::FireAndForget);
        let mut states = h.subscribe();
        h.try_nudge().expect("the first nudge");
        loop {
            if let JobState::Running { job_id } = &*states.borrow_and_update() {
                println!("running {job_id}");
                break;
            }
            if states.changed().await.is_err() {
                break;
            }
        }
        h.join().await.map(|p| p.state().clone())
    });
    println!("ended {state:?}");
}
