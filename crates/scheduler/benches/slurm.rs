//! Scheduler jobs through SSH to the local SLURM, side by side with a plain
//! shell loop of `sbatch --parsable --wrap` over one multiplexed SSH connection
//! followed by `squeue` polling until the queue is empty.
//!
//! `cargo bench -p drover-scheduler --bench slurm` runs 500 jobs (about ten
//! minutes: SLURM runs about one trivial job per CPU per second);
//! `cargo test` runs 4 as a smoke test. Needs the test services
//! (`scripts/services/all.sh start`).

#![allow(missing_docs)]
#![allow(clippy::disallowed_methods)] // the baseline is a plain shell loop

use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use drover_core::{DriveMode, spawn_owned};
use drover_scheduler::{
    AnyScheduler, AnyTransport, Computer, JobSpec, SchedulerProcess, Slurm, Ssh, SshConfig, Transport,
};
use tokio::task::LocalSet;

const HOST: &str = "drover-test-host";
const CHILD: &str = "DROVER_BENCH_ENGINE";

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (jobs, interval) = if full { (500, 2) } else { (4, 1) };
    if let Ok(spec) = std::env::var(CHILD) {
        let (jobs, interval) = spec.split_once(',').unwrap();
        engine(jobs.parse().unwrap(), Duration::from_secs(interval.parse().unwrap()));
        return;
    }
    println!("drover-scheduler: {jobs} trivial jobs through SSH to SLURM, polling every {interval} s\n");
    wait_for_empty_queue();
    let loop_times = shell_loop(jobs, interval);
    wait_for_empty_queue();
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, format!("{jobs},{interval}"))
        .output()
        .expect("run the engine in a fresh process");
    assert!(out.status.success(), "engine run failed: {}", String::from_utf8_lossy(&out.stderr));
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    let field = |name: &str| -> f64 {
        report.lines().find_map(|l| l.strip_prefix(&format!("#{name}="))).unwrap().parse().unwrap()
    };
    let (submit, total) = (field("submit"), field("total"));
    println!(
        "  shell loop: submission {:.2} s, queue empty after {:.2} s",
        loop_times.0.as_secs_f64(),
        loop_times.1.as_secs_f64()
    );
    println!(
        "  drover against the loop: submission {:.2}x (goal <= 1.2x), all finished and retrieved {:.2}x (goal <= 1.05x)",
        submit / loop_times.0.as_secs_f64(),
        total / loop_times.1.as_secs_f64()
    );
}

fn sh(script: &str) -> String {
    let out = Command::new("bash").args(["-c", script]).output().expect("bash");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_empty_queue() {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !sh("squeue -h -t PENDING,RUNNING,CONFIGURING,COMPLETING").trim().is_empty() {
        assert!(Instant::now() < deadline, "the queue never emptied");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The baseline: submission time and time until the queue is empty.
fn shell_loop(jobs: usize, interval: u64) -> (Duration, Duration) {
    let ctl = format!("/tmp/drover-bench-ctl-{}", std::process::id());
    sh(&format!(
        "ssh -M -S {ctl} -o ControlPersist=yes -fN {HOST} && ssh -S {ctl} {HOST} 'mkdir -p drover-bench-loop'"
    ));
    let started = Instant::now();
    sh(&format!(
        "for i in $(seq {jobs}); do ssh -S {ctl} {HOST} 'cd drover-bench-loop && sbatch --parsable --wrap true' >/dev/null; done"
    ));
    let submitted = started.elapsed();
    sh(&format!(
        "while [ -n \"$(ssh -S {ctl} {HOST} 'squeue -h -u drover-test -t PENDING,RUNNING,CONFIGURING,COMPLETING')\" ]; do sleep {interval}; done"
    ));
    let total = started.elapsed();
    sh(&format!("ssh -S {ctl} -O exit {HOST} 2>/dev/null || true"));
    (submitted, total)
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the struct we pass.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(who, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// In a fresh process: run the jobs through drover and print the figures.
fn engine(jobs: usize, interval: Duration) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    let ssh = Ssh::new(SshConfig::new(HOST));
    let computer = Computer::new(
        "bench",
        AnyTransport::Ssh(ssh.clone()),
        AnyScheduler::Slurm(Slurm::new()),
        "drover-bench",
        interval,
    );
    let out_dir = tempfile::tempdir().unwrap();
    let cpu_before = rusage(libc::RUSAGE_SELF);
    let started = Instant::now();
    let (submitted, total) = local.block_on(&rt, {
        let local = local.clone();
        let computer = computer.clone();
        async move {
            let run = std::process::id();
            let handlers: Vec<_> = (0..jobs)
                .map(|i| {
                    let spec = JobSpec {
                        id: format!("b{run}-{i}"),
                        command: "true".into(),
                        local_dir: out_dir.path().join(i.to_string()),
                        ..JobSpec::default()
                    };
                    let h =
                        spawn_owned(&local, SchedulerProcess::new(spec, computer.clone()), DriveMode::FireAndForget);
                    h.try_nudge().unwrap();
                    h
                })
                .collect();
            while !handlers.iter().all(|h| h.state().job_id().is_some() || h.is_done()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let submitted = started.elapsed();
            for h in handlers {
                let state = h.join().await.unwrap();
                assert!(drover_core::Process::state(&state).succeeded(), "{:?}", drover_core::Process::state(&state));
            }
            (submitted, started.elapsed())
        }
    });
    let cpu = rusage(libc::RUSAGE_SELF) - cpu_before;
    let commands = computer.transport.stats().by_program();
    let polls = computer.poller().polls();
    let allowed = total.as_secs_f64() / interval.as_secs_f64() + 2.0;
    println!(
        "  drover: submission {:.2} s, all finished and retrieved after {:.2} s",
        submitted.as_secs_f64(),
        total.as_secs_f64()
    );
    println!("  SSH master connections opened: {} (goal: 1)", ssh.connections_opened());
    println!("  commands run, by program: {commands:?}");
    println!(
        "  sbatch per job: {:.2} (goal: 1); status polls: {polls} (goal: <= duration/interval + 2 = {allowed:.0})",
        commands.get("sbatch").copied().unwrap_or(0) as f64 / jobs as f64
    );
    println!(
        "  engine CPU time: {:.2} ms per job (goal: < 5 ms); peak RSS (VmHWM): {:.1} MiB (goal: < 30 MiB)",
        cpu.as_secs_f64() * 1000.0 / jobs as f64,
        vm_hwm_kib() as f64 / 1024.0
    );
    println!("#submit={}", submitted.as_secs_f64());
    println!("#total={}", total.as_secs_f64());
}
