//! `drover daemon` and the commands that talk to it, run as a user runs them,
//! against a real daemon in the background.

#![allow(clippy::disallowed_methods)] // runs the program under test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

fn drover(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--data-dir")
        .arg(data)
        .arg("--config-dir")
        .arg(data.join("config"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs and expects exit code `code`; returns stdout.
fn expect(data: &Path, args: &[&str], code: i32) -> String {
    let out = drover(data, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "drover {args:?}\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn json(data: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&expect(data, args, 0)).unwrap()
}

/// Stops the daemon when the test ends, however it ends.
struct Running(PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = drover(&self.0, &["daemon", "stop"]);
    }
}

fn state_of(data: &Path, id: &str) -> Value {
    json(data, &["show", id, "--json"])
}

fn wait_state(data: &Path, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = state_of(data, id);
        if p["state"] == state || (state == "paused" && p["paused"] == true) {
            return p;
        }
        assert!(Instant::now() < deadline, "{id} never became {state}: {p}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[test]
fn commands_that_need_a_daemon_say_how_to_start_one() {
    let data = tempfile::tempdir().unwrap();
    let file = write(data.path(), "j.toml", "[[job]]\ncommand = \"true\"\n");
    for args in
        [vec!["submit", file.as_str()], vec!["list"], vec!["show", "x"], vec!["kill", "--all"], vec!["logs", "x"]]
    {
        let out = drover(data.path(), &args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("no drover daemon is running") && stderr.contains("drover daemon start"), "{stderr}");
    }
    let status = drover(data.path(), &["daemon", "status"]);
    assert_eq!(status.status.code(), Some(3));
    assert!(text(&status.stdout).contains("no drover daemon is running"));
    let stop = drover(data.path(), &["daemon", "stop"]);
    assert_eq!(stop.status.code(), Some(0));
}

#[test]
fn a_daemon_runs_submitted_jobs_and_is_controlled_from_the_command_line() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let started = expect(d, &["daemon", "start", "--http", "127.0.0.1:0"], 0);
    let _running = Running(d.to_path_buf());
    assert!(started.contains("drover daemon started"), "{started}");
    assert!(started.contains("web:    http://127.0.0.1:"), "{started}");
    let again = expect(d, &["daemon", "start"], 0);
    assert!(again.contains("already running"), "{again}");
    let status = json(d, &["daemon", "status", "--json"]);
    assert_eq!(status["running"], true);
    assert!(d.join("daemon.pid").exists() && d.join("daemon.log").exists());
    // Connection settings out of their ranges are bad input.
    for bad in [["--max-connections", "0"], ["--max-connections", "16385"], ["--idle-timeout-secs", "0"]] {
        let out = drover(d, &["daemon", "start", bad[0], bad[1]]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }

    // A file with an error submits nothing at all, and says where.
    let good = write(d, "good.toml", "[[job]]\nid = \"ok\"\ncommand = \"true\"\n");
    let bad = write(d, "bad.toml", "[[job]]\nid = \"x\"\ncommand = \"true\"\ncolour = \"red\"\n");
    let out = drover(d, &["submit", &good, &bad]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.toml") && stderr.contains("unknown field `colour`"), "{stderr}");
    assert!(stderr.contains("nothing was submitted"), "{stderr}");
    let undefined = write(d, "cluster.toml", "[[job]]\ncomputer = \"hpc\"\ncommand = \"true\"\n");
    let out = drover(d, &["submit", &undefined]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("computer `hpc` is not defined"), "{}", text(&out.stderr));
    assert_eq!(json(d, &["list", "--json"])["processes"], serde_json::json!([]));

    // Submit: a quick job, a talkative one, and two that sleep.
    let jobs = write(
        d,
        "work.toml",
        r#"
[[job]]
id = "quick"
command = "echo"
args = ["quick job"]

[[job]]
id = "talk"
script = "for i in 1 2 3; do echo line $i; sleep 0.3; done"

[[job]]
id = "nap"
command = "sleep"
args = ["300"]

[[job]]
id = "doze"
command = "sleep"
args = ["300"]
"#,
    );
    let submitted = json(d, &["submit", "--json", &jobs]);
    let run = submitted["run"].as_str().unwrap().to_owned();
    assert_eq!(submitted["ids"].as_array().unwrap().len(), 4);
    let quick = wait_state(d, "work.quick", "finished");
    assert_eq!(quick["exit_code"], 0);
    assert_eq!(quick["id"], format!("{run}.work.quick"));
    assert_eq!(expect(d, &["logs", "work.quick"], 0), "quick job\n");
    // --follow prints everything as it comes and returns when the job ends.
    assert_eq!(expect(d, &["logs", "--follow", "work.talk"], 0), "line 1\nline 2\nline 3\n");

    // Show: spec, state, history, outputs.
    let shown = expect(d, &["show", "work.quick"], 0);
    for needle in ["state:     finished (exit 0)", "command:   echo 'quick job'", "history:", "queued", "running"] {
        assert!(shown.contains(needle), "{needle} in\n{shown}");
    }
    assert!(shown.contains(&format!("runs/{run}/work.quick.out")), "{shown}");

    // Pause, list by state, resume, kill one by id and the rest by filter.
    wait_state(d, "work.nap", "running");
    wait_state(d, "work.doze", "running");
    let paused = expect(d, &["pause", "work.nap"], 0);
    assert!(paused.starts_with("paused"), "{paused}");
    let list = json(d, &["list", "--state", "paused", "--json"]);
    let ids: Vec<&str> = list["processes"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [format!("{run}.work.nap")]);
    assert_eq!(list["counts"]["paused"], 1);
    let table = expect(d, &["list"], 0);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.lines().any(|l| l.contains("work.nap") && l.contains("paused")), "{table}");
    expect(d, &["resume", "work.nap"], 0);
    wait_state(d, "work.nap", "running");
    let killed = expect(d, &["kill", "work.doze"], 0);
    assert!(killed.starts_with("killed"), "{killed}");
    assert_eq!(state_of(d, "work.doze")["state"], "killed");
    // Killing it again fails, and says why.
    let out = drover(d, &["kill", "work.doze"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("already ended (killed)"), "{}", text(&out.stdout));
    // An ambiguous or unknown id is bad input.
    assert_eq!(drover(d, &["show", "nothing-like-it"]).status.code(), Some(2));

    // Stop the daemon with a job running: it runs on, and the next daemon
    // resumes it and can kill it.
    let nap = state_of(d, "work.nap");
    let pid = nap["history"].as_array().unwrap().iter().rev().find_map(|t| t["data"]["Running"]["pid"].as_i64());
    let pid = pid.expect("a running pid in the history");
    let stopped = expect(d, &["daemon", "stop"], 0);
    assert!(stopped.contains("stopped"), "{stopped}");
    assert_eq!(drover(d, &["daemon", "status"]).status.code(), Some(3));
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the job died with the daemon");
    expect(d, &["daemon", "start"], 0);
    assert_eq!(state_of(d, "work.nap")["state"], "running");
    let all = json(d, &["kill", "--all", "--json"]);
    let results = all["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{all}");
    assert_eq!(results[0]["ok"], true, "{all}");
    assert_eq!(state_of(d, "work.nap")["state"], "killed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the killed job's process {pid} lives on");
        std::thread::sleep(Duration::from_millis(20));
    }
    let counts = json(d, &["list", "--json"])["counts"].clone();
    assert_eq!(counts, serde_json::json!({"finished": 2, "killed": 2}));
}

#[test]
fn watch_prints_changes_as_they_happen() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    expect(d, &["daemon", "start"], 0);
    let _running = Running(d.to_path_buf());
    let mut watch = Command::new(env!("CARGO_BIN_EXE_drover"))
        .arg("--data-dir")
        .arg(d)
        .args(["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let jobs = write(d, "w.toml", "[[job]]\nid = \"one\"\nscript = \"sleep 0.2; exit 4\"\n");
    expect(d, &["submit", &jobs], 0);
    wait_state(d, "w.one", "finished");
    std::thread::sleep(Duration::from_millis(200));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let states: Vec<(String, Option<i64>)> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["state"].as_str().unwrap().to_owned(), v["exit_code"].as_i64()))
        .collect();
    assert_eq!(states.first().map(|s| s.0.as_str()), Some("queued"), "{states:?}");
    assert_eq!(states.last(), Some(&("finished".to_owned(), Some(4))), "{states:?}");
}

#[test]
fn list_reads_page_after_page_and_prune_goes_through_the_daemon() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    expect(d, &["daemon", "start"], 0);
    let _running = Running(d.to_path_buf());
    let mut file = String::new();
    for i in 0..12 {
        file.push_str(&format!("[[job]]\nid = \"j{i:02}\"\ncommand = \"true\"\n\n"));
    }
    let jobs = write(d, "p.toml", &file);
    expect(d, &["submit", &jobs], 0);
    for i in 0..12 {
        wait_state(d, &format!("p.j{i:02}"), "finished");
    }
    let all = json(d, &["list", "--json"]);
    assert_eq!(all["processes"].as_array().unwrap().len(), 12);
    let some = json(d, &["list", "--limit", "5", "--json"]);
    assert_eq!(some["processes"].as_array().unwrap().len(), 5);
    assert!(some["next_cursor"].is_string(), "{some}");
    let table = expect(d, &["list", "--state", "finished"], 0);
    assert!(table.contains("12 shown of 12"), "{table}");
    std::thread::sleep(Duration::from_millis(1100));
    let pruned = expect(d, &["prune", "--older-than", "1s", "--outputs"], 0);
    assert!(pruned.contains("removed 12 ended processes"), "{pruned}");
    assert_eq!(json(d, &["list", "--json"])["processes"], serde_json::json!([]));
    let out = drover(d, &["daemon", "start", "--retention", "0s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn help_has_examples_and_completions_are_generated() {
    let data = tempfile::tempdir().unwrap();
    for command in ["run", "submit", "list", "show", "pause", "resume", "kill", "watch", "logs", "prune", "completions"]
    {
        let help = expect(data.path(), &[command, "--help"], 0);
        assert!(help.contains("Examples:"), "drover {command} --help:\n{help}");
    }
    for command in ["start", "stop", "status", "run"] {
        let help = expect(data.path(), &["daemon", command, "--help"], 0);
        assert!(help.contains("Examples:"), "drover daemon {command} --help:\n{help}");
    }
    let top = expect(data.path(), &["--help"], 0);
    assert!(top.contains("Exit codes:") && top.contains("3  no daemon is running"), "{top}");
    let bash = expect(data.path(), &["completions", "bash"], 0);
    assert!(bash.contains("complete") && bash.contains("submit"), "{}", &bash[..200.min(bash.len())]);
}
