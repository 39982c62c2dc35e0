//! Shell process benchmarks, side by side with `xargs -P` in the same run.
//!
//! `cargo bench -p drover-shell --bench shell` runs them at full size;
//! `cargo test` runs this binary with tiny sizes as a smoke test.
//!
//! 1. N = CPUs: runs of `/bin/true` through drover against `xargs -P N -n 1 /bin/true`,
//!    and through drover's durable path without a store (each command
//!    started by the shepherd, its record written; `drover run`, with the
//!    store, is `cargo bench -p drover-cli --bench durable`);
//! 2. N = 50: runs of `sleep 0.05` against `xargs -P 50 -n 1 sleep`;
//! 3. the engine's peak memory (VmHWM) with 10,000 processes queued behind a
//!    full governor, measured in a fresh child process, and how fast pause and
//!    kill reach any of them.

#![allow(missing_docs)]
#![allow(clippy::disallowed_methods)] // the baselines run xargs directly

use std::io::Write;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use drover_core::{DriveMode, spawn_owned};
use drover_shell::{Governor, ShellProcess, ShellSpec, ShellState};
use tokio::task::LocalSet;

const QUEUED_CHILD: &str = "DROVER_BENCH_QUEUED";

fn main() {
    if let Ok(n) = std::env::var(QUEUED_CHILD) {
        queued_child(n.parse().unwrap());
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (trues, sleeps, queued, rounds) = if full { (10_000, 1_000, 10_000, 3) } else { (200, 50, 500, 1) };
    println!(
        "drover-shell benchmarks ({} mode, {cpus} CPUs, best of {rounds}, interleaved)\n",
        if full { "full" } else { "smoke" }
    );

    println!("(1) {trues} runs of /bin/true, {cpus} at a time");
    compare(rounds, trues, cpus, "/bin/true", "x", 1.25, true);
    println!("(2) {sleeps} runs of sleep 0.05, 50 at a time");
    compare(rounds, sleeps, 50, "sleep", "0.05", 1.1, false);

    println!("(3) {queued} processes queued behind a full governor (fresh process)");
    let out = Command::new(std::env::current_exe().unwrap())
        .env(QUEUED_CHILD, queued.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("re-run the bench binary");
    assert!(out.status.success(), "the queued-processes run failed");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("  goals: peak memory under 50 MiB; pause and kill within 10 ms");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Runs `count` times `program arg`, `parallel` at a time, through drover and
/// through xargs, and prints both.
fn compare(rounds: usize, count: usize, parallel: usize, program: &str, arg: &str, goal: f64, durable: bool) {
    let mut best_drover = Duration::MAX;
    let mut best_durable = Duration::MAX;
    let mut best_xargs = Duration::MAX;
    for _ in 0..rounds {
        best_xargs = best_xargs.min(xargs(count, parallel, program, arg));
        best_drover = best_drover.min(drover(count, parallel, program, arg, false));
        if durable {
            best_durable = best_durable.min(drover(count, parallel, program, arg, true));
        }
    }
    let ratio = |d: Duration| d.as_secs_f64() / best_xargs.as_secs_f64();
    println!("  {:<36} {:>9.3} s", format!("xargs -P {parallel} -n 1 {program}"), best_xargs.as_secs_f64());
    println!(
        "  {:<36} {:>9.3} s   {:.2}x xargs (goal: within {goal}x)",
        "drover",
        best_drover.as_secs_f64(),
        ratio(best_drover)
    );
    if durable {
        println!(
            "  {:<36} {:>9.3} s   {:.2}x xargs",
            "drover, durable (shepherd, no store)",
            best_durable.as_secs_f64(),
            ratio(best_durable)
        );
    }
    println!();
}

fn xargs(count: usize, parallel: usize, program: &str, arg: &str) -> Duration {
    let input = format!("{arg}\n").repeat(count);
    let started = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &parallel.to_string(), "-n", "1", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("xargs");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    started.elapsed()
}

fn drover(count: usize, parallel: usize, program: &str, arg: &str, durable: bool) -> Duration {
    let rt = runtime();
    let local = Rc::new(LocalSet::new());
    let governor = Governor::new(parallel);
    let records = tempfile::tempdir().unwrap();
    let records = records.path();
    let started = Instant::now();
    local.block_on(&rt, {
        let local = local.clone();
        async move {
            let handlers: Vec<_> = (0..count)
                .map(|n| {
                    let spec = ShellSpec::program(program, [arg]);
                    let proc = if durable {
                        ShellProcess::durable(spec, governor.clone(), records.join(n.to_string()))
                    } else {
                        ShellProcess::new(spec, governor.clone())
                    };
                    spawn_owned(&local, proc, DriveMode::FireAndForget)
                })
                .collect();
            for h in &handlers {
                h.try_nudge().unwrap();
            }
            for h in handlers {
                let state = h.join().await.unwrap().state_owned();
                assert!(state.succeeded(), "{state:?}");
            }
        }
    });
    started.elapsed()
}

trait StateOwned {
    fn state_owned(self) -> ShellState;
}

impl StateOwned for ShellProcess {
    fn state_owned(self) -> ShellState {
        drover_core::Process::state(&self).clone()
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// In a fresh process: queue `n` processes behind a governor held by one
/// `sleep`, report peak memory, then time pauses and kills of queued ones.
fn queued_child(n: usize) {
    let rt = runtime();
    let local = Rc::new(LocalSet::new());
    let idle = status_kib("VmHWM:");
    local.block_on(&rt, {
        let local = local.clone();
        async move {
            let governor = Governor::new(1);
            let launch = |spec: ShellSpec| {
                let h = spawn_owned(&local, ShellProcess::new(spec, governor.clone()), DriveMode::FireAndForget);
                h.try_nudge().unwrap();
                h
            };
            let blocker = launch(ShellSpec::program("sleep", ["1000"]));
            let queued: Vec<_> = (0..n).map(|_| launch(ShellSpec::program("true", Vec::<String>::new()))).collect();
            while governor.waiting() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let peak = status_kib("VmHWM:");
            println!(
                "  {:<36} {:>9.1} MiB   (idle engine: {:.1} MiB, {:.0} bytes per queued process)",
                "peak RSS (VmHWM) with all queued",
                peak as f64 / 1024.0,
                idle as f64 / 1024.0,
                (peak - idle) as f64 * 1024.0 / n as f64
            );

            let samples = 100.min(n / 3);
            let mut pauses = Vec::new();
            let mut kills = Vec::new();
            for i in 0..samples {
                let h = &queued[(i * 7919) % n];
                let started = Instant::now();
                h.pause().await.unwrap();
                pauses.push(started.elapsed());
                h.resume().unwrap();
            }
            for i in 0..samples {
                let h = &queued[(i * 104_729 + 1) % n];
                if h.is_done() {
                    continue;
                }
                let started = Instant::now();
                h.kill().await.unwrap();
                kills.push(started.elapsed());
            }
            for (what, v) in [("pause of a queued process", &mut pauses), ("kill of a queued process", &mut kills)] {
                v.sort();
                println!(
                    "  {what:<36} mean {:>7.1} µs, p99 {:>7.1} µs, max {:>7.1} µs",
                    v.iter().sum::<Duration>().as_secs_f64() * 1e6 / v.len() as f64,
                    v[(v.len() - 1) * 99 / 100].as_secs_f64() * 1e6,
                    v[v.len() - 1].as_secs_f64() * 1e6
                );
            }
            for h in &queued {
                let _ = h.kill().await;
            }
            blocker.kill().await.unwrap();
        }
    });
}
