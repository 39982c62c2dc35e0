//! Engines that own what they drive, through the `drover` program: a daemon
//! whose lease expired writes nothing; `drover run` and a daemon on one data
//! directory never drive the same process.

#![allow(clippy::disallowed_methods)] // runs the program under test

use std::time::{Duration, Instant};

use drover_store::Store;
use drover_testkit::{
    Drover, SSHD_LOG, StopDaemon, alive, each_once, marker_jobs, require_cluster, sh, signal, text, until,
};
use serde_json::Value;

const PROGRAM: &str = env!("CARGO_BIN_EXE_drover");

#[test]
fn a_daemon_whose_lease_expired_writes_nothing_and_another_finishes_its_jobs_once() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("shared.db");
    let store = store.to_str().unwrap();
    let marker = root.path().join("marker");
    let (a, b) = (Drover::new(PROGRAM, root.path(), "a"), Drover::new(PROGRAM, root.path(), "b"));
    // One computer, the machine itself with the `direct` scheduler: its jobs
    // outlive the daemon that started them.
    let computers = format!(
        "[computer.here]\ntransport = \"local\"\nscheduler = \"direct\"\nwork_dir = \"{}\"\npoll_interval_secs = 1\n",
        root.path().join("work").display()
    );
    for d in [&a, &b] {
        d.computers(&computers);
    }
    a.ok(&["daemon", "start", "--store", store, "--lease-secs", "2"]);
    let _stop_a = StopDaemon(&a);
    let jobs = root.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "[[job]]\nid = \"slow\"\ncomputer = \"here\"\nscript = \"echo ran >> {}; sleep 5; echo done\"\n",
            marker.display()
        ),
    )
    .unwrap();
    let submitted = a.json(&["submit", jobs.to_str().unwrap(), "--json"]);
    let id = submitted["ids"][0].as_str().unwrap().to_owned();
    until("the job runs", 30, || a.json(&["show", &id, "--json"])["state"] == "running");
    let a_pid = a.json(&["daemon", "status", "--json"])["info"]["pid"].as_u64().unwrap() as u32;

    // A stops answering (SIGSTOP) past its lease; B, on the same store, takes
    // the job over and finishes it.
    signal(a_pid, libc::SIGSTOP);
    b.ok(&["daemon", "start", "--store", store, "--lease-secs", "2"]);
    let _stop_b = StopDaemon(&b);
    let b_id = b.json(&["daemon", "status", "--json"])["info"]["pid"].as_u64().unwrap();
    assert!(b_id > 0);
    until("B takes the job over", 20, || {
        let p = b.json(&["show", &id, "--json"]);
        p["owner"].as_str().is_some_and(|o| o.contains("/b")) || p["terminal"] == true
    });
    until("the job finishes under B", 40, || b.json(&["show", &id, "--json"])["state"] == "finished");
    let shown = b.json(&["show", &id, "--json"]);
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
    let status = b.ok(&["daemon", "status"]);
    assert!(status.contains("(this one): live") && status.contains("gone"), "{status}");
}

#[test]
fn drover_run_and_a_daemon_on_one_data_dir_never_drive_the_same_process() {
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
    let (jobs, marker) = marker_jobs(root.path(), 12, 1.0);
    // The run works through its jobs three at a time; a daemon starts meanwhile.
    let run = d.spawn(&["run", "-j", "3", jobs.to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(1500));
    d.ok(&["daemon", "start"]);
    let _stop = StopDaemon(&d);
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("12 jobs: 12 succeeded"), "{}", text(&out.stdout));
    each_once(&marker, 12);
    // The daemon sees the run's jobs, all finished, and drove none of them.
    let list = d.json(&["list", "--json"]);
    let processes = list["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 12);
    assert!(processes.iter().all(|p| p["state"] == "finished" && p["exit_code"] == 0), "{list}");
    let log = std::fs::read_to_string(d.data.join("daemon.log")).unwrap();
    assert!(log.contains("resumed=0"), "the daemon resumed the run's jobs:\n{log}");
}

#[test]
fn a_run_stopped_with_ctrl_c_kills_its_jobs_and_leaves_nothing_to_a_daemon() {
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
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
    let run = d.spawn(&["run", jobs.to_str().unwrap()]);
    until("both jobs run", 20, || std::fs::read_to_string(&marker).is_ok_and(|m| m.lines().count() == 2));
    signal(run.id(), libc::SIGINT);
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stderr).contains("killing the run's jobs"), "{}", text(&out.stderr));
    d.ok(&["daemon", "start"]);
    let _stop = StopDaemon(&d);
    let list = d.json(&["list", "--json"]);
    let processes = list["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 2);
    assert!(processes.iter().all(|p| p["state"] == "killed"), "{list}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 2, "a killed job ran again");
}

/// One RPC counter of `sdiag` (SLURM's own statistics).
fn rpc_count(sdiag: &str, rpc: &str) -> u64 {
    sdiag
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{rpc} ")))
        .and_then(|l| l.split("count:").nth(1))
        .and_then(|c| c.split_whitespace().next())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A daemon on the shared store, with the URL in its environment (never on
/// its command line).
fn start_daemon(d: &Drover, url: &str) {
    let out =
        d.command(&["daemon", "start", "--lease-secs", "3", "-j", "8"]).env("DROVER_STORE", url).output().unwrap();
    assert!(out.status.success(), "daemon start: {}{}", text(&out.stdout), text(&out.stderr));
}

fn daemon_pid(d: &Drover) -> u32 {
    drover_daemon::Paths::new(&d.data).running_pid().expect("a daemon runs")
}

#[test]
fn three_daemons_on_one_postgres_run_300_jobs_once_through_kills_with_one_connection_to_the_cluster() {
    let url = drover_testkit::postgres_url();
    require_cluster();
    let root = tempfile::tempdir().unwrap();
    let tag = format!("e{}", std::process::id());
    let schema = format!("engines_{tag}");
    sh(&format!("psql -q '{url}' -c 'CREATE SCHEMA {schema}'"));
    let url = format!("{url}?options=-csearch_path%3D{schema}");
    let marker = root.path().join("marker");
    let daemons: Vec<Drover> = (0..3).map(|k| Drover::new(PROGRAM, root.path(), &format!("d{k}"))).collect();
    let computers = format!(
        "[computer.cluster]\ntransport = \"ssh\"\nhost = \"drover-test-host\"\nscheduler = \"slurm\"\nwork_dir = \"drover-engines-{tag}\"\npoll_interval_secs = 2\n"
    );
    for d in &daemons {
        d.computers(&computers);
    }
    let ssh_before = std::fs::read_to_string(SSHD_LOG).unwrap_or_default().matches("Accepted publickey").count();
    sh("sdiag -r >/dev/null");
    let started = Instant::now();
    for d in &daemons {
        start_daemon(d, &url);
    }
    struct StopAll<'a>(&'a [Drover]);
    impl Drop for StopAll<'_> {
        fn drop(&mut self) {
            for d in self.0 {
                let _ = d.output(&["daemon", "stop"]);
            }
        }
    }
    let _stop = StopAll(&daemons);

    // 100 jobs through each daemon: 250 shell jobs and 50 SLURM jobs in all.
    let (mut shells, mut slurms) = (Vec::new(), Vec::new());
    let mut runs = Vec::new();
    for (k, d) in daemons.iter().enumerate() {
        let mut file = String::new();
        let n_slurm = if k == 2 { 18 } else { 16 };
        for i in 0..100 - n_slurm {
            let id = format!("s{k}x{i}");
            file.push_str(&format!(
                "[[job]]\nid = \"{id}\"\nscript = \"echo {id} >> {}; sleep 0.3\"\n\n",
                marker.display()
            ));
            shells.push(id);
        }
        for i in 0..n_slurm {
            let id = format!("j{k}x{i}");
            file.push_str(&format!(
                "[[job]]\nid = \"{id}\"\ncomputer = \"cluster\"\nscript = \"sleep 2; echo {id}\"\n\n"
            ));
            slurms.push(id);
        }
        let path = root.path().join(format!("f{k}.toml"));
        std::fs::write(&path, file).unwrap();
        let submitted = d.json(&["submit", path.to_str().unwrap(), "--json"]);
        assert_eq!(submitted["ids"].as_array().unwrap().len(), 100);
        runs.push(submitted["run"].as_str().unwrap().to_owned());
    }
    let engines = |d: &Drover| d.json(&["daemon", "status", "--json"]);
    let holder_by = |ask: usize| {
        let status = daemons[ask].ok(&["daemon", "status"]);
        (0..3).find(|k| status.lines().any(|l| l.contains(&format!("/d{k}")) && l.contains("holds scheduler:cluster")))
    };
    until("a daemon holds the cluster", 20, || holder_by(0).is_some());
    let first_holder = holder_by(0).unwrap();
    // Asked from now on: the one daemon that is never killed.
    let steady = (first_holder + 2) % 3;
    let holder = || holder_by(steady);
    assert!(engines(&daemons[0])["running"] == true);

    // One daemon that does not hold the cluster is SIGKILLed five times at
    // random moments, and restarted each time; then the holder is killed
    // once and comes back only after another daemon took the cluster over.
    let victim = (first_holder + 1) % 3;
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("seed {seed}");
    for n in 0..5 {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 1500));
        signal(daemon_pid(&daemons[victim]), libc::SIGKILL);
        until("the killed daemon is gone", 10, || {
            drover_daemon::Paths::new(&daemons[victim].data).running_pid().is_none()
        });
        start_daemon(&daemons[victim], &url);
        println!("killed d{victim} ({})", n + 1);
    }
    signal(daemon_pid(&daemons[first_holder]), libc::SIGKILL);
    until("another daemon takes the cluster over", 20, || holder().is_some_and(|h| h != first_holder));
    start_daemon(&daemons[first_holder], &url);

    // Every job ends, successfully.
    let all_done = || {
        let list = daemons[steady].json(&["list", "--json"]);
        let processes = list["processes"].as_array().unwrap().clone();
        (processes.len() == 300 && processes.iter().all(|p| p["terminal"] == true), processes)
    };
    until("every job ends", 240, || all_done().0);
    let took = started.elapsed();
    let (_, processes) = all_done();
    let failed: Vec<&Value> = processes.iter().filter(|p| p["state"] != "finished" || p["exit_code"] != 0).collect();
    assert!(failed.is_empty(), "{failed:?}");

    // Each shell command ran once.
    let lines = std::fs::read_to_string(&marker).unwrap();
    let mut count = std::collections::HashMap::new();
    for line in lines.lines() {
        *count.entry(line).or_insert(0) += 1;
    }
    for id in &shells {
        assert_eq!(count.get(id.as_str()), Some(&1), "{id} ran {:?} times", count.get(id.as_str()));
    }
    // Each SLURM job was submitted once: in squeue, in sacct, and by count.
    let names = sh("squeue --states=all --noheader --format=%j");
    let accounted = sh("sacct --noheader --allocations --parsable2 --format=JobName --starttime=now-1hour");
    for (k, run) in runs.iter().enumerate() {
        for id in slurms.iter().filter(|id| id.starts_with(&format!("j{k}x"))) {
            let name = format!("drover-{run}.f{k}.{id}");
            assert_eq!(names.lines().filter(|l| l.trim() == name).count(), 1, "{name} in squeue");
            assert_eq!(accounted.lines().filter(|l| l.trim() == name).count(), 1, "{name} in sacct");
        }
    }
    let sdiag = sh("sdiag");
    assert_eq!(rpc_count(&sdiag, "REQUEST_SUBMIT_BATCH_JOB"), 50, "sbatch calls");
    // One engine at a time talks to the cluster, over the one SSH master of
    // this user and destination: the first holder starts it (or joins one an
    // earlier run left, which then idles out), the engine that took over
    // joins it; one squeue per interval from whichever holds it (three
    // pollers would make three times as many).
    let ssh = std::fs::read_to_string(SSHD_LOG).unwrap_or_default().matches("Accepted publickey").count() - ssh_before;
    let squeues = rpc_count(&sdiag, "REQUEST_JOB_INFO");
    let intervals = took.as_secs() / 2;
    println!("{took:?}: {ssh} SSH connections, {squeues} squeue calls ({intervals} intervals of 2 s), 50 sbatch");
    assert!(ssh <= 1, "{ssh} SSH connections to the cluster");
    assert!(squeues <= intervals + 6, "{squeues} squeue calls in {intervals} intervals");
}

#[test]
fn a_run_killed_outright_is_taken_up_by_resume_with_nothing_run_twice() {
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
    let (jobs, marker) = marker_jobs(root.path(), 4, 2.0);
    let mut run = d.spawn(&["run", "-j", "2", jobs.to_str().unwrap()]);
    until("two jobs run", 20, || std::fs::read_to_string(&marker).is_ok_and(|m| m.lines().count() == 2));
    signal(run.id(), libc::SIGKILL);
    run.wait().unwrap();
    let run_id = std::fs::read_dir(d.data.join("runs")).unwrap().next().unwrap().unwrap().file_name();
    let run_id = run_id.to_str().unwrap();
    let out = d.output(&["run", "--resume", run_id]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("4 of 4 jobs had not ended"), "{stderr}");
    assert!(stdout.starts_with("4 jobs: 4 succeeded"), "{stdout}");
    each_once(&marker, 4);
    // A run that is not there is bad input.
    let out = d.output(&["run", "--resume", "run-nothere"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("no run `run-nothere`"), "{}", text(&out.stderr));
}
