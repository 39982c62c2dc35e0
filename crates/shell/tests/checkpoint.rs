//! The shell checkpoint format: a golden fixture for every version.

use std::time::Duration;

use drover_kind::{CheckpointError, decode, encode};
use drover_shell::ShellState;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn golden_fixtures_pin_each_checkpoint_version() {
    let shell = ShellState::Finished { exit_code: 3, ran_for: Duration::from_millis(2500) };
    // Version 1, from before `Starting`, reads through its upgrade.
    assert_eq!(decode::<ShellState>(&fixture("shell-v1.json")).unwrap(), shell);
    assert_eq!(decode::<ShellState>(&fixture("shell-v2.json")).unwrap(), shell);
    assert_eq!(encode(&shell), fixture("shell-v2.json"), "the shell checkpoint format changed: bump its version");
    assert_eq!(decode::<ShellState>(&fixture("shell-v2-starting.json")).unwrap(), ShellState::Starting);
}

#[test]
fn newer_and_corrupt_checkpoints_are_refused_loudly() {
    assert_eq!(
        decode::<ShellState>(&fixture("shell-v99.json")),
        Err(CheckpointError::TooNew { kind: "shell".into(), found: 99, known: 2 })
    );
    let e = decode::<ShellState>("{\"v\":1,\"state\":{\"Running\":{}}}").unwrap_err();
    assert!(matches!(&e, CheckpointError::Corrupt { kind, .. } if kind == "shell"), "{e}");
    assert!(decode::<ShellState>("garbage").unwrap_err().to_string().contains("not JSON"));
    assert!(decode::<ShellState>("{\"state\":\"Queued\"}").unwrap_err().to_string().contains("no version"));
}
