//! What drover's tests share: the `drover` program on a private data
//! directory, waiting for a condition, signals, marker jobs that tell how
//! often each command ran, and where the real test services are.
//!
//! Dev-only: a dev-dependency of the crates whose tests use it, never
//! published. The services are those `scripts/services/all.sh start` runs;
//! a helper that needs one panics, saying how to start it, when it is
//! missing (a test never skips).

#![allow(clippy::disallowed_methods)] // runs the programs under test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the PostgreSQL of the test services writes its URL (root only).
pub const PG_URL_FILE: &str = "/tmp/drover-services/postgres/url";

/// The log of the test services' sshd (it counts connections).
pub const SSHD_LOG: &str = "/tmp/drover-services/sshd/sshd.log";

/// The `drover` program on a data directory and a configuration directory
/// of its own.
#[derive(Clone, Debug)]
pub struct Drover {
    program: PathBuf,
    /// The data directory (`--data-dir`).
    pub data: PathBuf,
    /// The configuration directory (`--config-dir`), created.
    pub config: PathBuf,
}

impl Drover {
    /// `program` (the test's `env!("CARGO_BIN_EXE_drover")`) on the data
    /// directory `root/name` and the configuration directory
    /// `root/name-config`.
    pub fn new(program: &str, root: &Path, name: &str) -> Drover {
        let drover =
            Drover { program: program.into(), data: root.join(name), config: root.join(format!("{name}-config")) };
        std::fs::create_dir_all(&drover.config).unwrap();
        drover
    }

    /// The command `drover --data-dir .. --config-dir .. args`, with no
    /// standard input.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--data-dir").arg(&self.data).arg("--config-dir").arg(&self.config).args(args).stdin(Stdio::null());
        cmd
    }

    /// Runs `drover args` to its end.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `drover args`, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(out.status.success(), "drover {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// Runs `drover args`, which must succeed and print JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("drover {args:?} printed no JSON ({e}): {out}"))
    }

    /// Starts `drover args` with its outputs piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// Writes `text` into the configuration directory's `computers.toml`.
    pub fn computers(&self, text: &str) {
        std::fs::write(self.config.join("computers.toml"), text).unwrap();
    }
}

/// Stops the daemon of a data directory when dropped, however the test ends.
pub struct StopDaemon<'a>(pub &'a Drover);

impl Drop for StopDaemon<'_> {
    fn drop(&mut self) {
        let _ = self.0.output(&["daemon", "stop"]);
    }
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits until `done`, checked every 100 ms; fails the test, naming `what`,
/// after `secs` seconds.
pub fn until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends signal `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).expect("a pid");
    // SAFETY: kill(2) has no memory effects; the test chose the process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Whether process `pid` is alive (a zombie is not).
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Runs `cmd` with `sh -c`, which must succeed; its standard output.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}{}", text(&out.stdout), text(&out.stderr));
    text(&out.stdout)
}

/// A job file `root/jobs.toml` of `n` shell jobs `j<i>`, each appending its
/// id to the marker file `root/marker` and sleeping `secs`; the file and
/// the marker.
pub fn marker_jobs(root: &Path, n: usize, secs: f64) -> (PathBuf, PathBuf) {
    let marker = root.join("marker");
    let mut file = String::new();
    for i in 0..n {
        file.push_str(&format!(
            "[[job]]\nid = \"j{i}\"\nscript = \"echo j{i} >> {}; sleep {secs}\"\n\n",
            marker.display()
        ));
    }
    let jobs = root.join("jobs.toml");
    std::fs::write(&jobs, file).unwrap();
    (jobs, marker)
}

/// Each of the `n` jobs of [`marker_jobs`] ran exactly once.
pub fn each_once(marker: &Path, n: usize) {
    let lines = std::fs::read_to_string(marker).unwrap_or_default();
    for i in 0..n {
        assert_eq!(lines.lines().filter(|l| *l == format!("j{i}")).count(), 1, "j{i} ran other than once:\n{lines}");
    }
}

/// The URL of the test services' PostgreSQL; fails the test, saying how to
/// start it, when it is not running.
pub fn postgres_url() -> String {
    std::fs::read_to_string(PG_URL_FILE).map(|s| s.trim().to_owned()).expect(
        "PostgreSQL for tests is not running: run `scripts/services/all.sh start` (the README's test command does)",
    )
}

/// Fails the test, saying how to start them, unless the test services'
/// sshd and SLURM answer.
pub fn require_cluster() {
    assert!(
        Command::new("sh")
            .args(["-c", "ssh -o BatchMode=yes drover-test-host true && scontrol ping | grep -q UP"])
            .status()
            .unwrap()
            .success(),
        "sshd and SLURM for tests are not running: run `scripts/services/all.sh start`"
    );
}
