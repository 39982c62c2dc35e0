//! Engines that own what they drive, through the `drover` program: a daemon
//! whose lease expired writes nothing; `drover run` and a daemon on one data
//! directory never drive the same process.

#![allow(clippy::disallowed_methods)] // runs the program under test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_store::Store;
use serde_json::Value;

struct Dirs {
    data: PathBuf,
    config: PathBuf,
}

fn drover(dirs: &Dirs, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--data-dir")
        .arg(&dirs.data)
        .arg("--config-dir")
        .arg(&dirs.config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn spawn(dirs: &Dirs, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--data-dir")
        .arg(&dirs.data)
        .arg("--config-dir")
        .arg(&dirs.config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(dirs: &Dirs, args: &[&str]) -> String {
    let out = drover(dirs, args);
    assert!(out.status.success(), "drover {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

fn json(dirs: &Dirs, args: &[&str]) -> Value {
    serde_json::from_str(&ok(dirs, args)).unwrap()
}

/// Stops a daemon when the test ends, however it ends.
struct Stop<'a>(&'a Dirs);

impl Drop for Stop<'_> {
    fn drop(&mut self) {
        let _ = drover(self.0, &["daemon", "stop"]);
    }
}

fn dirs(root: &Path, name: &str) -> Dirs {
    let d = Dirs { data: root.join(name), config: root.join(format!("{name}-config")) };
    std::fs::create_dir_all(&d.config).unwrap();
    d
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a daemon this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_daemon_whose_lease_expired_writes_nothing_and_another_finishes_its_jobs_once() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("shared.db");
    let store = store.to_str().unwrap();
    let marker = root.path().join("marker");
    let (a, b) = (dirs(root.path(), "a"), dirs(root.path(), "b"));
    // One computer, the machine itself with the `direct` scheduler: its jobs
    // outlive the daemon that started them.
    let computers = format!(
        "[computer.here]\ntransport = \"local\"\nscheduler = \"direct\"\nwork_dir = \"{}\"\npoll_interval_secs = 1\n",
        root.path().join("work").display()
    );
    for d in [&a, &b] {
        std::fs::write(d.config.join("computers.toml"), &computers).unwrap();
    }
    ok(&a, &["daemon", "start", "--store", store, "--lease-secs", "2"]);
    let _stop_a = Stop(&a);
    let jobs = root.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "[[job]]\nid = \"slow\"\ncomputer = \"here\"\nscript = \"echo ran >> {}; sleep 5; echo done\"\n",
            marker.display()
        ),
    )
    .unwrap();
    let submitted = json(&a, &["submit", jobs.to_str().unwrap(), "--json"]);
    let id = submitted["ids"][0].as_str().unwrap().to_owned();
    until("the job runs", 30, || json(&a, &["show", &id, "--json"])["state"] == "running");
    let a_pid = json(&a, &["daemon", "status", "--json"])["info"]["pid"].as_u64().unwrap() as u32;

    // A stops answering (SIGSTOP) past its lease; B, on the same store, takes
    // the job over and finishes it.
    signal(a_pid, libc::SIGSTOP);
    ok(&b, &["daemon", "start", "--store", store, "--lease-secs", "2"]);
    let _stop_b = Stop(&b);
    let b_id = json(&b, &["daemon", "status", "--json"])["info"]["pid"].as_u64().unwrap();
    assert!(b_id > 0);
    until("B takes the job over", 20, || {
        let p = json(&b, &["show", &id, "--json"]);
        p["owner"].as_str().is_some_and(|o| o.contains("/b")) || p["terminal"] == true
    });
    until("the job finishes under B", 40, || json(&b, &["show", &id, "--json"])["state"] == "finished");
    let shown = json(&b, &["show", &id, "--json"]);
    assert_eq!(shown["exit_code"], 0, "{shown}");

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let events = || rt.block_on(async { Store::open(store).await.unwrap().events(&id).await.unwrap() });
    let before = events();
    let first_epoch = before[0].epoch;
    let takeover = before.iter().map(|e| e.epoch).max().unwrap();
    assert!(takeover > first_epoch, "B claimed the job with a new epoch: {before:?}");

    // A comes back: its lease is gone, its writes are refused, and it stops.
    signal(a_pid, libc::SIGCONT);
    until("A stops on its own", 20, || !alive(a_pid));
    let after = events();
    assert_eq!(after.len(), before.len(), "A wrote after it lost its lease: {after:?}");
    assert!(
        after.iter().filter(|e| e.epoch == first_epoch).count()
            == before.iter().filter(|e| e.epoch == first_epoch).count()
    );
    let log = std::fs::read_to_string(a.data.join("daemon.log")).unwrap();
    assert!(log.contains("lease expired"), "{log}");
    // The command ran once.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    // B lists both engines, A's no longer live.
    let status = ok(&b, &["daemon", "status"]);
    assert!(status.contains("(this one): live") && status.contains("gone"), "{status}");
}

#[test]
fn drover_run_and_a_daemon_on_one_data_dir_never_drive_the_same_process() {
    let root = tempfile::tempdir().unwrap();
    let d = dirs(root.path(), "data");
    let marker = root.path().join("marker");
    let mut file = String::new();
    for i in 0..12 {
        file.push_str(&format!("[[job]]\nid = \"j{i}\"\nscript = \"echo j{i} >> {}; sleep 1\"\n\n", marker.display()));
    }
    let jobs = root.path().join("jobs.toml");
    std::fs::write(&jobs, file).unwrap();
    // The run works through its jobs three at a time; a daemon starts meanwhile.
    let run = spawn(&d, &["run", "-j", "3", jobs.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    ok(&d, &["daemon", "start"]);
    let _stop = Stop(&d);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("12 jobs: 12 succeeded"), "{}", text(&out.stdout));
    let lines = std::fs::read_to_string(&marker).unwrap();
    for i in 0..12 {
        assert_eq!(lines.lines().filter(|l| *l == format!("j{i}")).count(), 1, "j{i} ran other than once:\n{lines}");
    }
    // The daemon sees the run's jobs, all finished, and drove none of them.
    let list = json(&d, &["list", "--json"]);
    let processes = list["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 12);
    assert!(processes.iter().all(|p| p["state"] == "finished" && p["exit_code"] == 0), "{list}");
    let log = std::fs::read_to_string(d.data.join("daemon.log")).unwrap();
    assert!(log.contains("resumed=0"), "the daemon resumed the run's jobs:\n{log}");
}

#[test]
fn a_run_stopped_with_ctrl_c_kills_its_jobs_and_leaves_nothing_to_a_daemon() {
    let root = tempfile::tempdir().unwrap();
    let d = dirs(root.path(), "data");
    let marker = root.path().join("marker");
    let jobs = root.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "[[job]]\nid = \"a\"\nscript = \"echo a >> {m}; sleep 60\"\n\n[[job]]\nid = \"b\"\nscript = \"echo b >> {m}; sleep 60\"\n",
            m = marker.display()
        ),
    )
    .unwrap();
    let run = spawn(&d, &["run", jobs.to_str().unwrap()]);
    until("both jobs run", 20, || std::fs::read_to_string(&marker).is_ok_and(|m| m.lines().count() == 2));
    signal(run.id(), libc::SIGINT);
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("killing the run's jobs"), "{}", text(&out.stderr));
    ok(&d, &["daemon", "start"]);
    let _stop = Stop(&d);
    let list = json(&d, &["list", "--json"]);
    let processes = list["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2);
    assert!(processes.iter().all(|p| p["state"] == "killed"), "{list}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2, "a killed job ran again");
}
