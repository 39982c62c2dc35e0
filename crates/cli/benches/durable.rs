//! The durable path at the bare path's speed: `drover run -j N` on a job file
//! of `/bin/true` jobs, where every job is recorded in the store before each
//! step and runs under its supervisor, side by side in one run with
//! `xargs -P N -n 1 /bin/true` (N = CPUs). Each round is a fresh `drover`
//! process on a fresh data directory: a cold heap and a new store, as a user
//! meets them. The figures are wall time (best of the rounds) and CPU time
//! per job of the whole process tree (the command's own `exec` included on
//! both sides). The library's non-durable path is measured beside `xargs` in
//! `cargo bench -p drover-shell --bench shell`.
//!
//! Then the engine's CPU per SLURM job through `drover run`: trivial jobs on
//! the test services' SLURM over SSH (the SSH master, which outlives the
//! run, is not counted; everything `drover` waited for is).
//!
//! `cargo bench -p drover-cli --bench durable` runs 10,000 shell jobs, three
//! rounds, and 200 SLURM jobs; `cargo test` runs 200 and 4, once, as a smoke
//! test (the SLURM part needs `scripts/services/all.sh start`).

#![allow(missing_docs, clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The CPU time (user + system) of this process's waited-for children so far.
fn children_cpu() -> Duration {
    // SAFETY: `getrusage` fills the struct it is given and nothing else.
    #[allow(unsafe_code)]
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage), 0);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Makes this process the reaper of its descendants that lose their parent
/// (drover's shepherd, which outlives `drover run` by a moment), so that
/// their CPU time counts in [`children_cpu`] once [`reap_orphans`] waited.
fn adopt_orphans() {
    // SAFETY: `prctl(PR_SET_CHILD_SUBREAPER)` changes only this process.
    #[allow(unsafe_code)]
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(set, 0, "cannot become a subreaper");
}

/// Waits for every descendant this process adopted to end.
fn reap_orphans() {
    // SAFETY: `waitpid` on any child; the status is not needed.
    #[allow(unsafe_code)]
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
}

/// Runs `cmd` to its end; returns its wall time (until it exits) and its
/// whole tree's CPU time (its shepherd's and commands' included).
fn measure(cmd: &mut Command) -> (Duration, Duration) {
    let cpu = children_cpu();
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output().unwrap();
    let wall = started.elapsed();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    reap_orphans();
    (wall, children_cpu() - cpu)
}

fn xargs(count: usize, parallel: usize) -> (Duration, Duration) {
    let cpu = children_cpu();
    let started = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &parallel.to_string(), "-n", "1", "/bin/true"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all("x\n".repeat(count).as_bytes()).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    (started.elapsed(), children_cpu() - cpu)
}

fn drover_run(root: &Path, round: usize, jobs: &Path, parallel: usize) -> (Duration, Duration) {
    let data = root.join(format!("data-{round}"));
    drover_run_in(root, &data, jobs, parallel)
}

fn drover_run_in(root: &Path, data: &Path, jobs: &Path, parallel: usize) -> (Duration, Duration) {
    measure(
        Command::new(env!("CARGO_BIN_EXE_drover"))
            .arg("--data-dir")
            .arg(data)
            .arg("--config-dir")
            .arg(root)
            .args(["run", "-j", &parallel.to_string()])
            .arg(jobs)
            .stdin(Stdio::null()),
    )
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (count, rounds) = if full { (10_000, 3) } else { (200, 1) };
    println!(
        "drover-cli durable-path benchmark ({} mode, {cpus} CPUs, best of {rounds}, interleaved)\n",
        if full { "full" } else { "smoke" }
    );
    adopt_orphans();
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("trues.toml");
    let mut file = String::with_capacity(count * 40);
    for n in 0..count {
        file.push_str(&format!("[[job]]\nid = \"t{n}\"\ncommand = \"/bin/true\"\n\n"));
    }
    std::fs::write(&jobs, file).unwrap();

    let (mut best_xargs, mut best_drover) = ((Duration::MAX, Duration::ZERO), (Duration::MAX, Duration::ZERO));
    for round in 0..rounds {
        let x = xargs(count, cpus);
        if x.0 < best_xargs.0 {
            best_xargs = x;
        }
        let d = drover_run(root.path(), round, &jobs, cpus);
        if d.0 < best_drover.0 {
            best_drover = d;
        }
    }
    // Kept until the end: on an ext4 without a journal, files created soon
    // after many were deleted take the allocator a scan past each deleted
    // inode (`recently_deleted`), which would slow the next round.
    let per_job = |d: Duration| d.as_secs_f64() * 1e3 / count as f64;
    println!("{count} runs of /bin/true, {cpus} at a time");
    println!(
        "  xargs -P {cpus}        {:>8.2} s   {:>6.0} jobs/s   CPU {:.2} ms/job",
        best_xargs.0.as_secs_f64(),
        count as f64 / best_xargs.0.as_secs_f64(),
        per_job(best_xargs.1)
    );
    println!(
        "  drover run -j {cpus}   {:>8.2} s   {:>6.0} jobs/s   CPU {:.2} ms/job  ({:.2}x xargs; goal 1.5x)",
        best_drover.0.as_secs_f64(),
        count as f64 / best_drover.0.as_secs_f64(),
        per_job(best_drover.1),
        best_drover.0.as_secs_f64() / best_xargs.0.as_secs_f64()
    );
    println!(
        "  drover's CPU beyond xargs's: {:.2} ms/job (engine, store, shepherd)",
        per_job(best_drover.1.saturating_sub(best_xargs.1))
    );

    slurm(root.path(), if full { 200 } else { 4 });
}

/// The engine's CPU per SLURM job through `drover run`.
fn slurm(root: &Path, count: usize) {
    let cluster = Command::new("sh")
        .args(["-c", "ssh -o BatchMode=yes drover-test-host true && scontrol ping | grep -q UP"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(cluster, "sshd and SLURM for tests are not running: run `scripts/services/all.sh start`");
    let work = format!("drover-bench-durable-{}", std::process::id());
    std::fs::write(
        root.join("computers.toml"),
        format!(
            "[computer.cluster]\ntransport = \"ssh\"\nhost = \"drover-test-host\"\nscheduler = \"slurm\"\nwork_dir = \"{work}\"\npoll_interval_secs = 2\n"
        ),
    )
    .unwrap();
    let jobs = root.join("slurm.toml");
    let mut file = String::new();
    for n in 0..count {
        file.push_str(&format!("[[job]]\nid = \"s{n}\"\ncomputer = \"cluster\"\ncommand = \"/bin/true\"\n\n"));
    }
    std::fs::write(&jobs, file).unwrap();
    let (wall, cpu) = drover_run_in(root, &root.join("data-slurm"), &jobs, count);
    let _ = Command::new("ssh").args(["-o", "BatchMode=yes", "drover-test-host", &format!("rm -rf '{work}'")]).status();
    println!("\n{count} SLURM jobs (/bin/true) through drover run, over SSH");
    println!(
        "  drover run   {:>8.2} s   engine CPU {:.2} ms/job (goal: 3 ms; the SSH master not counted)",
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e3 / count as f64
    );
}
