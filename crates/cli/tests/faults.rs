//! Faults, through the `drover` program, against the real things: the disk
//! of the data directory full (a small tmpfs), the SQLite store locked by
//! another process for 15 s, the PostgreSQL server restarted mid-run, sshd
//! killed in the middle of a file transfer and restarted. Each time: no
//! process lost, no command run twice, and a clear message while it lasts.
//!
//! They need root (to mount a file system, to restart the services): the
//! README's test command runs them so.

#![allow(clippy::disallowed_methods)] // runs the program under test and the services' scripts

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_testkit::{Drover, StopDaemon, alive, each_once, marker_jobs, sh, text, until};

const PROGRAM: &str = env!("CARGO_BIN_EXE_drover");

fn need_root(what: &str) {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::geteuid() };
    assert_eq!(uid, 0, "{what} needs root: run the README's test command (sudo ./scripts/test)");
}

fn service(name: &str, action: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services").join(format!("{name}.sh"));
    let out = Command::new("bash").arg(&script).arg(action).output().unwrap();
    assert!(out.status.success(), "{name}.sh {action}: {}{}", text(&out.stdout), text(&out.stderr));
}

/// A `drover run` whose standard output and error go to files under `root`.
struct Run {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Run {
    fn start(d: &Drover, root: &Path, args: &[&str]) -> Run {
        let (stdout, stderr) = (root.join("run.out"), root.join("run.err"));
        let child = d
            .command(args)
            .stdout(File::create(&stdout).unwrap())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Run { child, stdout, stderr }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the run's end (within `secs`): its exit code, output, error.
    fn end(mut self, secs: u64) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the run did not end within {secs} s:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (status.code(), std::fs::read_to_string(&self.stdout).unwrap(), self.stderr())
    }
}

/// A tmpfs of `mib` MiB mounted on `dir` (private), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        sh(&format!("mount -t tmpfs -o size={mib}m,mode=0700 drover-faults '{}'", dir.display()));
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with the file `dir/filler`, to its last
/// byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = file.write_all(&block) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling {}: {e}", path.display());
            break;
        }
    }
    let mut byte = [0u8; 1];
    while file.write(&byte).is_ok_and(|n| n == 1) {
        byte[0] = 1;
    }
    path
}

#[test]
fn a_full_disk_holds_the_run_and_each_job_runs_once_when_space_returns() {
    need_root("mounting a small file system for the data directory");
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
    let _disk = Tmpfs::mount(&d.data, 24);
    let (jobs, marker) = marker_jobs(root.path(), 10, 0.5);
    let mut run = Run::start(&d, root.path(), &["run", "-j", "2", jobs.to_str().unwrap()]);
    until("two jobs run", 30, || std::fs::read_to_string(&marker).is_ok_and(|m| m.lines().count() >= 2));
    let filler = fill(&d.data);
    // While the disk is full, the run says so, and waits.
    until("the run says it cannot write", 30, || {
        let said = run.stderr();
        said.contains("cannot record a checkpoint") || said.contains("cannot renew")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(run.running(), "the run ended on a full disk:\n{}", run.stderr());
    let held = std::fs::read_to_string(&marker).unwrap().lines().count();
    assert!(held < 10, "every job ran on a full disk:\n{}", run.stderr());
    // Space comes back: the run goes on and ends, each job run once.
    std::fs::remove_file(&filler).unwrap();
    let (code, stdout, stderr) = run.end(120);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("10 jobs: 10 succeeded"), "{stdout}{stderr}");
    assert!(stderr.contains("the store records checkpoints again"), "{stderr}");
    each_once(&marker, 10);
}

#[test]
fn a_store_locked_for_15_s_holds_the_run_and_each_job_runs_once() {
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
    let (jobs, marker) = marker_jobs(root.path(), 10, 0.5);
    let mut run = Run::start(&d, root.path(), &["run", "-j", "2", jobs.to_str().unwrap()]);
    until("two jobs run", 30, || std::fs::read_to_string(&marker).is_ok_and(|m| m.lines().count() >= 2));
    // Another process takes SQLite's write lock, and holds it for 15 s.
    let store = d.data.join("drover.db");
    let mut locker = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\n\
             print('locked', flush=True)\n\
             time.sleep(15)\n\
             c.execute('COMMIT')\n",
        )
        .arg(&store)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (for its sqlite3 module)");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(locker.stdout.as_mut().unwrap()), &mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    let locked = Instant::now();
    until("the run says the store is locked", 20, || run.stderr().contains("database is locked"));
    assert!(run.running(), "the run ended while the store was locked:\n{}", run.stderr());
    assert!(locker.wait().unwrap().success());
    assert!(locked.elapsed() >= Duration::from_secs(15));
    let (code, stdout, stderr) = run.end(120);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("10 jobs: 10 succeeded"), "{stdout}{stderr}");
    assert!(stderr.contains("the store records checkpoints again"), "{stderr}");
    assert!(!stderr.contains("lost its claim"), "{stderr}");
    each_once(&marker, 10);
}

#[test]
fn a_postgres_restarted_mid_run_loses_no_process_and_runs_none_twice() {
    need_root("restarting the test services' PostgreSQL");
    let url = drover_testkit::postgres_url();
    let schema = format!("faults_{}", std::process::id());
    sh(&format!("psql -q '{url}' -c 'CREATE SCHEMA {schema}'"));
    let url = format!("{url}?options=-csearch_path%3D{schema}");
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
    let out = d.command(&["daemon", "start", "-j", "4"]).env("DROVER_STORE", &url).output().unwrap();
    assert!(out.status.success(), "daemon start: {}{}", text(&out.stdout), text(&out.stderr));
    let _stop = StopDaemon(&d);
    let pid = drover_daemon::Paths::new(&d.data).running_pid().expect("a daemon runs");
    let n = 16;
    let (jobs, marker) = marker_jobs(root.path(), n, 1.0);
    d.ok(&["submit", jobs.to_str().unwrap()]);
    until("four jobs run", 30, || std::fs::read_to_string(&marker).is_ok_and(|m| m.lines().count() >= 4));
    // The server goes away for a few seconds, and comes back.
    service("postgres", "stop");
    std::thread::sleep(Duration::from_secs(4));
    service("postgres", "start");
    let ended = || {
        let list = d.json(&["list", "--json"]);
        let processes = list["processes"].as_array().unwrap().clone();
        (processes.len() == n && processes.iter().all(|p| p["terminal"] == true), processes)
    };
    until("every job ends", 120, || ended().0);
    let (_, processes) = ended();
    assert!(processes.iter().all(|p| p["state"] == "finished" && p["exit_code"] == 0), "{processes:?}");
    each_once(&marker, n);
    assert!(alive(pid), "the daemon stopped when its store went away");
    let log = std::fs::read_to_string(d.data.join("daemon.log")).unwrap();
    assert!(log.contains("cannot record a checkpoint") || log.contains("cannot renew"), "{log}");
    assert!(!log.contains("lease expired"), "{log}");
}

/// Every file under `dir` named `name`.
fn find(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(find(&path, name));
        } else if entry.file_name() == name {
            found.push(path);
        }
    }
    found
}

#[test]
fn sshd_killed_mid_transfer_and_restarted_the_file_arrives_whole_from_the_job_submitted_once() {
    need_root("restarting the test services' sshd");
    drover_testkit::require_cluster();
    let root = tempfile::tempdir().unwrap();
    let d = Drover::new(PROGRAM, root.path(), "data");
    let tag = format!("faults-{}", std::process::id());
    d.computers(&format!(
        "[computer.cluster]\ntransport = \"ssh\"\nhost = \"drover-test-host\"\nscheduler = \"slurm\"\nwork_dir = \"drover-{tag}\"\npoll_interval_secs = 1\n"
    ));
    const SIZE: u64 = 600 * 1024 * 1024;
    let jobs = root.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        format!(
            "[[job]]\nid = \"big\"\ncomputer = \"cluster\"\n\
             script = \"head -c {SIZE} /dev/urandom > big.bin && sha256sum big.bin | cut -d' ' -f1 > big.sum\"\n\
             retrieve = [\"big.bin\", \"big.sum\"]\n"
        ),
    )
    .unwrap();
    let mut run = Run::start(&d, root.path(), &["run", jobs.to_str().unwrap()]);
    // The file is on its way: sshd goes away, with every connection it
    // served, for a few seconds.
    let mut partial = 0;
    until("the retrieval starts", 120, || {
        let copied = find(&d.data, "big.bin").iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).max();
        partial = copied.unwrap_or(0);
        partial > 0 && partial < SIZE
    });
    let _ = Command::new("pkill").args(["-KILL", "-f", "^sshd: drover-test"]).status();
    service("sshd", "stop");
    std::thread::sleep(Duration::from_secs(3));
    assert!(run.running(), "the run ended while the cluster was away:\n{}", run.stderr());
    service("sshd", "start");
    let (code, stdout, stderr) = run.end(180);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.starts_with("1 jobs: 1 succeeded"), "{stdout}{stderr}");
    assert!(stderr.contains("cannot reach drover-test-host"), "no word of the broken connection:\n{stderr}");
    println!("the copy was cut off at {partial} of {SIZE} bytes; the run said:\n{stderr}");
    // Whole: the digest the job took on the cluster is the local copy's.
    let local = find(&d.data, "big.bin");
    assert_eq!(local.len(), 1, "{local:?}");
    assert_eq!(std::fs::metadata(&local[0]).unwrap().len(), SIZE, "a copy of {partial} bytes was cut off");
    let sum = std::fs::read_to_string(local[0].with_file_name("big.sum")).unwrap();
    let ours = sh(&format!("sha256sum '{}' | cut -d' ' -f1", local[0].display()));
    assert_eq!(ours.trim(), sum.trim());
    // The job was submitted once.
    let run_id = std::fs::read_dir(d.data.join("runs")).unwrap().next().unwrap().unwrap().file_name();
    let name = format!("drover-{}.jobs.big", run_id.to_str().unwrap());
    let names = sh("squeue --states=all --noheader --format=%j");
    let accounted = sh("sacct --noheader --allocations --parsable2 --format=JobName --starttime=now-1hour");
    assert_eq!(names.lines().filter(|l| l.trim() == name).count(), 1, "{name} in squeue:\n{names}");
    assert_eq!(accounted.lines().filter(|l| l.trim() == name).count(), 1, "{name} in sacct:\n{accounted}");
    sh(&format!("ssh -o BatchMode=yes drover-test-host rm -rf 'drover-{tag}'"));
}
