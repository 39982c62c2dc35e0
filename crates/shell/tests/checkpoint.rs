//! The shell checkpoint format: a golden fixture for every version.

use std::time::{Duration, UNIX_EPOCH};

use drover_kind::{CheckpointError, decode, encode};
use drover_shell::{ProcessIdentity, ShellState};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn golden_fixtures_pin_each_checkpoint_version() {
    let shell = ShellState::Finished { exit_code: 3, ran_for: Duration::from_millis(2500) };
    // Version 1, from before `Starting`, reads through its upgrade.
    assert_eq!(decode::<ShellState>(&fixture("shell-v1.json")).unwrap(), shell);
    assert_eq!(decode::<ShellState>(&fixture("shell-v2.json")).unwrap(), shell);
    assert_eq!(decode::<ShellState>(&fixture("shell-v3.json")).unwrap(), shell);
    assert_eq!(encode(&shell), fixture("shell-v3.json"), "the shell checkpoint format changed: bump its version");
    assert_eq!(decode::<ShellState>(&fixture("shell-v2-starting.json")).unwrap(), ShellState::Starting);

    // Version 3 added the child's identity; version 2's running child has none.
    let started_at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let identity = ProcessIdentity { boot_id: "6d1c2bb0-2f0e-4c53-9a51-0c9d0b1f3e77".into(), start_ticks: 123_456 };
    assert_eq!(
        decode::<ShellState>(&fixture("shell-v2-running.json")).unwrap(),
        ShellState::Running { pid: 4242, started_at, identity: None }
    );
    let running = ShellState::Running { pid: 4242, started_at, identity: Some(identity.clone()) };
    assert_eq!(decode::<ShellState>(&fixture("shell-v3-running.json")).unwrap(), running);
    assert_eq!(encode(&running), fixture("shell-v3-running.json"));
    let paused = ShellState::Paused { pid: 4242, started_at, identity: Some(identity) };
    assert_eq!(decode::<ShellState>(&fixture("shell-v3-paused.json")).unwrap(), paused);
    assert_eq!(encode(&paused), fixture("shell-v3-paused.json"));
}

#[test]
fn newer_and_corrupt_checkpoints_are_refused_loudly() {
    assert_eq!(
        decode::<ShellState>(&fixture("shell-v99.json")),
        Err(CheckpointError::TooNew { kind: "shell".into(), found: 99, known: 3 })
    );
    let e = decode::<ShellState>("{\"v\":1,\"state\":{\"Running\":{}}}").unwrap_err();
    assert!(matches!(&e, CheckpointError::Corrupt { kind, .. } if kind == "shell"), "{e}");
    assert!(decode::<ShellState>("garbage").unwrap_err().to_string().contains("not JSON"));
    assert!(decode::<ShellState>("{\"state\":\"Queued\"}").unwrap_err().to_string().contains("no version"));
}
