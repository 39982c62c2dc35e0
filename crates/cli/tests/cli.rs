//! The `drover` program, run as a user runs it.

#![allow(clippy::disallowed_methods)] // runs the program under test

use std::path::Path;
use std::process::{Command, Output};

fn drover(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover")).arg("--data-dir").arg(data).args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_quick_start_runs_every_job_and_reports_the_one_that_fails() {
    let data = tempfile::tempdir().unwrap();
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart.toml");
    let out = drover(data.path(), &["run", quickstart]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("24 jobs: 23 succeeded, 1 failed"), "{stdout}");
    assert!(stdout.contains("failed: quickstart.fails-on-purpose (exit 3"), "{stdout}");
    // Not a terminal: one plain line per job as it ends.
    assert_eq!(stderr.lines().filter(|l| l.starts_with("ok ")).count(), 23, "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.starts_with("failed ")).count(), 1, "{stderr}");
    let runs: Vec<_> = std::fs::read_dir(data.path().join("runs")).unwrap().flatten().collect();
    assert_eq!(runs.len(), 1);
    let run = runs[0].path();
    assert_eq!(std::fs::read_to_string(run.join("quickstart.hello.out")).unwrap(), "hello from drover\n");
    assert_eq!(
        std::fs::read_to_string(run.join("quickstart.quoting.out")).unwrap(),
        "it's|$(not expanded)|a; b|ünïcödé|"
    );
    assert_eq!(
        std::fs::read_to_string(run.join("quickstart.fails-on-purpose.err")).unwrap(),
        "this job fails on purpose\n"
    );
    assert!(data.path().join("drover.db").exists(), "the store is embedded in the data directory");
}

#[test]
fn the_data_directory_is_private_and_a_shared_one_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();
    let jobs = root.path().join("private.toml");
    std::fs::write(&jobs, "[[job]]\nid = \"a\"\nscript = \"echo secret result\"\n").unwrap();

    let data = root.path().join("new/drover");
    let out = drover(&data, &["run", jobs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("drover.db")), 0o600);
    let run = std::fs::read_dir(data.join("runs")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(mode(&run), 0o700);
    assert_eq!(mode(&run.join("private.a.out")), 0o600);

    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = drover(&shared, &["run", jobs.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("writable by group and others (mode 777)") && stderr.contains("nothing was run"),
        "{stderr}"
    );
    assert!(std::fs::read_dir(&shared).unwrap().next().is_none(), "something was written in a shared directory");
    let out = drover(&shared, &["daemon", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("writable by group and others"), "{}", text(&out.stderr));
}

#[test]
fn a_syntax_error_names_file_line_and_column_and_nothing_runs() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let marker = dir.path().join("ran");
    std::fs::write(&good, format!("[[job]]\ncommand = \"touch\"\nargs = [\"{}\"]\n", marker.display())).unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[job]]\ncommand = \"echo\"\nargs = [\"a\", \n").unwrap();
    let out = drover(data.path(), &["run", good.to_str().unwrap(), bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&bad.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 3") && stderr.contains("column"), "{stderr}");
    assert!(stderr.contains("nothing was run"), "{stderr}");
    assert!(!marker.exists(), "a job ran although another file had an error");
    assert!(!data.path().join("runs").exists());

    // A file whose name cannot name jobs: refused before anything is recorded.
    let spaced = dir.path().join("my jobs.toml");
    std::fs::write(&spaced, "[[job]]\ncommand = \"true\"\n").unwrap();
    let out = drover(data.path(), &["run", good.to_str().unwrap(), spaced.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the file's name `my jobs` names its jobs"), "{stderr}");
    assert!(!marker.exists(), "a job ran although another file's name was refused");
    assert!(!data.path().join("drover.db").exists(), "something was recorded");
}

#[test]
fn unknown_keys_are_rejected_with_the_valid_ones() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[[job]]\ncommnd = \"echo\"\n").unwrap();
    let out = drover(data.path(), &["run", file.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown field `commnd`"), "{stderr}");
    for valid in ["`command`", "`args`", "`script`", "`env`", "`cwd`", "`timeout_secs`"] {
        assert!(stderr.contains(valid), "{valid} missing from {stderr}");
    }

    std::fs::write(&file, "[[job]]\nid = \"x\"\ncommand = \"echo\"\nscript = \"echo\"\n").unwrap();
    let out = drover(data.path(), &["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("job `x`: give `command` or `script`, not both"), "{}", text(&out.stderr));
}

#[test]
fn numbers_out_of_range_are_bad_input_not_a_panic() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("huge.toml");
    for (value, says) in [
        ("1e19", "timeout_secs must be a positive number of seconds"),
        ("1e20", "timeout_secs must be a positive number of seconds"),
        ("-1", "timeout_secs must be a positive number of seconds"),
        ("0", "timeout_secs must be a positive number of seconds"),
        ("nan", "`timeout_secs` must be a finite number"),
        ("inf", "`timeout_secs` must be a finite number"),
    ] {
        std::fs::write(&file, format!("[[job]]\nid = \"t\"\ncommand = \"true\"\ntimeout_secs = {value}\n")).unwrap();
        let out = drover(data.path(), &["run", file.to_str().unwrap()]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "timeout_secs = {value}: {stderr}");
        assert!(stderr.contains(&format!("job `t`: {says}")), "{value}: {stderr}");
    }
    assert!(!data.path().join("runs").exists(), "something ran");
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let data = tempfile::tempdir().unwrap();
    let out = drover(data.path(), &["run", "--help"]);
    let help = text(&out.stdout);
    assert!(out.status.success());
    assert!(help.contains("drover run examples/quickstart.toml"), "{help}");
    assert!(help.contains("Exit codes: 0 every job succeeded; 1 a job failed; 2 bad input"), "{help}");
}

/// A config directory with a computer on the test cluster (sshd and SLURM from
/// the README's test command) and one that cannot be reached.
fn computers() -> tempfile::TempDir {
    let ok = Command::new("sh")
        .args(["-c", "ssh -o BatchMode=yes drover-test-host true && scontrol ping | grep -q UP"])
        .status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "sshd and SLURM for tests are not running: run `scripts/services/all.sh start` (the README's test command does)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("computers.toml"),
        "[computer.cluster]\ntransport = \"ssh\"\nhost = \"drover-test-host\"\nscheduler = \"slurm\"\nwork_dir = \"drover-cli-tests\"\npoll_interval_secs = 1\n\n\
         [computer.nowhere]\ntransport = \"ssh\"\nhost = \"no-such-host.invalid\"\nscheduler = \"slurm\"\nwork_dir = \"x\"\n",
    )
    .unwrap();
    dir
}

#[test]
fn computer_test_checks_the_connection_and_the_scheduler() {
    let config = computers();
    let data = tempfile::tempdir().unwrap();
    let cfg = config.path().to_str().unwrap();
    let out = drover(data.path(), &["--config-dir", cfg, "computer", "test", "cluster"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in ["ok      reach drover-test-host", "ok      scheduler commands", "ok      SLURM controller"] {
        assert!(stdout.contains(line), "{line:?} missing from {stdout}");
    }
    let out = drover(data.path(), &["--config-dir", cfg, "computer", "test", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("Could not resolve hostname"), "{}", text(&out.stdout));
    let out = drover(data.path(), &["--config-dir", cfg, "computer", "test", "elsewhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("computer `elsewhere` is not defined")
            && text(&out.stderr).contains("cluster, nowhere")
    );
}

#[test]
fn job_files_mix_shell_and_scheduler_jobs_on_named_computers() {
    let config = computers();
    let data = tempfile::tempdir().unwrap();
    let cfg = config.path().to_str().unwrap();
    let jobs = config.path().join("mixed.toml");
    std::fs::write(
        &jobs,
        "[[job]]\nid = \"remote\"\ncomputer = \"cluster\"\nscript = \"echo from slurm\"\nwall_time_secs = 120\n\n\
         [[job]]\nid = \"here\"\ncommand = \"echo\"\nargs = [\"from here\"]\n",
    )
    .unwrap();
    let out = drover(data.path(), &["--config-dir", cfg, "run", jobs.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.starts_with("2 jobs: 2 succeeded"), "{stdout}");
    let run = std::fs::read_dir(data.path().join("runs")).unwrap().flatten().next().unwrap().path();
    assert_eq!(std::fs::read_to_string(run.join("mixed.remote/stdout.txt")).unwrap(), "from slurm\n");
    assert_eq!(std::fs::read_to_string(run.join("mixed.here.out")).unwrap(), "from here\n");

    // A computer that is not defined is named, and nothing runs.
    std::fs::write(&jobs, "[[job]]\nid = \"x\"\ncomputer = \"elsewhere\"\ncommand = \"true\"\n").unwrap();
    let out = drover(data.path(), &["--config-dir", cfg, "run", jobs.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("computer `elsewhere` is not defined (known: cluster, nowhere)"), "{stderr}");
}

#[test]
fn a_daemon_follows_a_scheduler_job_and_reads_its_output_on_the_cluster_then_locally() {
    let config = computers();
    let data = tempfile::tempdir().unwrap();
    let cfg = config.path().to_str().unwrap();
    let d = data.path();
    let run = |args: &[&str]| {
        let out = drover(d, &[&["--config-dir", cfg], args].concat());
        assert!(out.status.success(), "{args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    };
    run(&["daemon", "start"]);
    struct Stop<'a>(&'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = drover(self.0, &["daemon", "stop"]);
        }
    }
    let _stop = Stop(d);
    let jobs = config.path().join("remote.toml");
    std::fs::write(
        &jobs,
        "[[job]]\nid = \"slow\"\ncomputer = \"cluster\"\nscript = \"echo start; sleep 4; echo end\"\nwall_time_secs = 120\n",
    )
    .unwrap();
    run(&["submit", jobs.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // While it runs, its output is read on the cluster.
    loop {
        let shown: serde_json::Value = serde_json::from_str(&run(&["show", "--json", "remote.slow"])).unwrap();
        assert_eq!(shown["computer"], "cluster");
        if shown["state"] == "running" && run(&["logs", "remote.slow"]) == "start\n" {
            break;
        }
        assert!(shown["terminal"] == false, "it ended before its output was read while running: {shown}");
        assert!(std::time::Instant::now() < deadline, "never saw it running with output: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let listed: serde_json::Value = serde_json::from_str(&run(&["list", "--computer", "cluster", "--json"])).unwrap();
    assert_eq!(listed["processes"].as_array().unwrap().len(), 1);
    // --follow goes on to the end; then the retrieved copy is read.
    assert_eq!(run(&["logs", "--follow", "remote.slow"]), "start\nend\n");
    let shown: serde_json::Value = serde_json::from_str(&run(&["show", "--json", "remote.slow"])).unwrap();
    assert_eq!((shown["state"].as_str(), shown["exit_code"].as_i64()), (Some("finished"), Some(0)), "{shown}");
    assert_eq!(run(&["logs", "remote.slow"]), "start\nend\n");
}

#[test]
fn prune_without_a_daemon_removes_ended_jobs_and_with_outputs_their_files() {
    let data = tempfile::tempdir().unwrap();
    let jobs = data.path().join("jobs.toml");
    std::fs::write(
        &jobs,
        "[[job]]\nid = \"a\"\ncommand = \"echo\"\nargs = [\"hi\"]\n\n[[job]]\nid = \"b\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = drover(data.path(), &["run", jobs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = std::fs::read_dir(data.path().join("runs")).unwrap().flatten().next().unwrap().path();
    let a_out = run.join("jobs.a.out");
    assert!(a_out.exists(), "{}", a_out.display());
    for bad in ["0s", "30", "5y", "-1d"] {
        let out = drover(data.path(), &["prune", "--older-than", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out.stderr));
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = drover(data.path(), &["prune", "--older-than", "1s", "--outputs", "--dry-run"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("would remove 2 ended processes"), "{stdout}");
    assert!(a_out.exists(), "a dry run removes nothing");
    let out = drover(data.path(), &["prune", "--older-than", "1s", "--outputs", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["processes"], 2, "{report}");
    assert!(!a_out.exists(), "its output went with it");
    let out = drover(data.path(), &["prune", "--older-than", "1s"]);
    assert!(text(&out.stdout).contains("removed 0 ended processes"), "{}", text(&out.stdout));
}
