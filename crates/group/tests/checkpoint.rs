//! The group checkpoint format: a golden fixture of every variant.

use drover_group::GroupState;
use drover_kind::{decode, encode};

#[test]
fn golden_fixtures_pin_every_variant() {
    let fixtures =
        std::fs::read_to_string(format!("{}/tests/fixtures/group-v1.jsonl", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let states = [
        GroupState::Spawning { spawned: 64 },
        GroupState::Waiting { children: 200 },
        GroupState::Finished { exit_code: 1, failed: vec!["sweep.b (finished, exit 3)".into()] },
        GroupState::Failed { reason: "child `sweep.a`: the id is taken".into() },
        GroupState::Killed,
    ];
    let lines: Vec<&str> = fixtures.lines().collect();
    assert_eq!(lines.len(), states.len());
    for (line, state) in lines.iter().zip(&states) {
        assert_eq!(&decode::<GroupState>(line).unwrap(), state);
        assert_eq!(&encode(state), line, "the group checkpoint format changed: bump its version");
    }
}
