//! The shepherd of durable commands, killed under a running engine: in a test
//! binary of its own, since every durable test of a binary shares its
//! process's shepherd.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use drover_core::{DriveMode, Process, spawn_owned};
use drover_shell::{Governor, ShellProcess, ShellSpec, ShellState};

/// The shepherds this process started: children whose command line says so.
fn my_shepherds() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let parent = stat.rfind(')').and_then(|i| stat[i + 2..].split_whitespace().nth(1).map(str::to_owned));
        if parent.as_deref() == Some(me.as_str())
            && String::from_utf8_lossy(&cmdline).contains("--drover-shell-shepherd")
        {
            found.push(pid);
        }
    }
    found
}

fn run(spec: ShellSpec, run_dir: std::path::PathBuf, kill_shepherd: bool) -> ShellState {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let handler =
            spawn_owned(&local, ShellProcess::durable(spec, Governor::new(1), run_dir), DriveMode::FireAndForget);
        handler.try_nudge().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(handler.state(), ShellState::Running { .. }) && !handler.is_done() {
            assert!(Instant::now() < deadline, "it never ran: {:?}", handler.state());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if kill_shepherd {
            let shepherds = my_shepherds();
            assert_eq!(shepherds.len(), 1, "one shepherd per engine process: {shepherds:?}");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(shepherds[0]), nix::sys::signal::Signal::SIGKILL)
                .unwrap();
        }
        let done = tokio::time::timeout(Duration::from_secs(20), handler.join()).await.expect("it never ended");
        done.unwrap().state().clone()
    })
}

#[test]
fn a_killed_shepherd_ends_its_commands_clearly_and_the_next_command_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    // The shepherd dies while the command runs: the command goes on (no
    // one kills it), its end is seen by its pid, and its exit code, which
    // only the shepherd could have recorded, is said to be lost.
    let state = run(ShellSpec::script("sleep 0.5; exit 3"), dir.path().join("a"), true);
    assert!(
        matches!(&state, ShellState::Failed { reason } if reason.contains("without recording its exit code")),
        "{state:?}"
    );
    // The next durable command starts a new shepherd, which records it.
    let state = run(ShellSpec::script("exit 4"), dir.path().join("b"), false);
    assert!(matches!(state, ShellState::Finished { exit_code: 4, .. }), "{state:?}");
    // The shepherd tells the engine first, then writes the record.
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let record = std::fs::read_to_string(dir.path().join("b")).unwrap();
        if record.lines().count() == 2 || Instant::now() > deadline {
            break record;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(record.lines().nth(1), Some("4"), "{record:?}");
    assert_eq!(my_shepherds().len(), 1, "the dead shepherd was reaped and one serves");
}
