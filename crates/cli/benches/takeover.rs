//! Takeover latency: a daemon driving a job is SIGKILLed; another daemon on
//! the same store takes the job over once the dead one's lease expired. The
//! figure is the time from the kill until the job is the other daemon's,
//! beside the lease (the floor) and the goal (lease + 1 s), on SQLite (two
//! daemons of one host) and PostgreSQL (from the test services).
//!
//! `cargo bench -p drover-cli --bench takeover` runs five takeovers per store;
//! `cargo test` runs one per store as a smoke test.

#![allow(missing_docs, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_SECS: u64 = 2;

fn drover(data: &Path, config: &Path, store: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--data-dir")
        .arg(data)
        .arg("--config-dir")
        .arg(config)
        .args(args)
        .env("DROVER_STORE", store)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn show(data: &Path, config: &Path, store: &str, id: &str) -> serde_json::Value {
    let out = drover(data, config, store, &["show", id, "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One takeover on `store`: returns the time from the SIGKILL until the job
/// was the other daemon's.
fn takeover(root: &Path, store: &str, n: usize) -> Duration {
    let config = root.join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("computers.toml"),
        format!(
            "[computer.here]\ntransport = \"local\"\nscheduler = \"direct\"\nwork_dir = \"{}\"\npoll_interval_secs = 1\n",
            root.join("work").display()
        ),
    )
    .unwrap();
    let (a, b): (PathBuf, PathBuf) = (root.join(format!("a{n}")), root.join(format!("b{n}")));
    let lease = LEASE_SECS.to_string();
    for d in [&a, &b] {
        let out = drover(d, &config, store, &["daemon", "start", "--lease-secs", &lease]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let jobs = root.join(format!("jobs{n}.toml"));
    std::fs::write(&jobs, "[[job]]\nid = \"long\"\ncomputer = \"here\"\nscript = \"sleep 60\"\n").unwrap();
    let out = drover(&a, &config, store, &["submit", jobs.to_str().unwrap(), "--json"]);
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = submitted["ids"][0].as_str().unwrap().to_owned();
    wait("the job runs under A", || show(&a, &config, store, &id)["state"] == "running");
    let pid = drover_daemon::Paths::new(&a).running_pid().unwrap();
    let killed = Instant::now();
    // SAFETY: kill(2) on the daemon this bench started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let b_dir = b.display().to_string();
    wait("B takes the job over", || {
        show(&b, &config, store, &id)["owner"].as_str().is_some_and(|o| o.ends_with(&b_dir))
    });
    let took = killed.elapsed();
    let _ = drover(&b, &config, store, &["kill", &id]);
    let _ = drover(&b, &config, store, &["daemon", "stop"]);
    took
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 5 } else { 1 };
    println!(
        "takeover after SIGKILL ({} mode): lease {LEASE_SECS} s, the other daemon claims every {} ms\n",
        if full { "full" } else { "smoke" },
        (LEASE_SECS * 1000 / 4).clamp(100, 1000)
    );
    let root = tempfile::tempdir().unwrap();
    let pg = std::fs::read_to_string("/tmp/drover-services/postgres/url")
        .map(|s| s.trim().to_owned())
        .expect("PostgreSQL is not running: run `scripts/services/all.sh start`");
    let schema = format!("takeover_{}", std::process::id());
    let created = Command::new("psql").args(["-q", &pg, "-c", &format!("CREATE SCHEMA {schema}")]).status().unwrap();
    assert!(created.success());
    let pg = format!("{pg}?options=-csearch_path%3D{schema}");
    let sqlite = root.path().join("shared.db").display().to_string();
    for (label, store) in [("SQLite", sqlite.as_str()), ("PostgreSQL", pg.as_str())] {
        let mut times = Vec::new();
        for n in 0..rounds {
            let dir = root.path().join(format!("{label}-{n}"));
            times.push(takeover(&dir, store, n));
        }
        let mean = times.iter().sum::<Duration>() / u32::try_from(times.len()).unwrap();
        let max = times.iter().max().unwrap();
        println!(
            "  {label:<12} takeover {:.2} s mean, {:.2} s max over {rounds}  (lease {LEASE_SECS} s; goal: lease + 1 s = {} s)",
            mean.as_secs_f64(),
            max.as_secs_f64(),
            LEASE_SECS + 1
        );
    }
}
