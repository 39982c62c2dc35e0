//! The cloud checkpoint format: a golden fixture for every version.

use drover_cloud::CloudState;
use drover_kind::{decode, encode};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn golden_fixtures_pin_each_checkpoint_version() {
    let killed = CloudState::Killed { name: Some("drover-render-1a2b3c4d".into()), delete_pending: true };
    assert_eq!(decode::<CloudState>(&fixture("cloud-v1.json")).unwrap(), killed);
    assert_eq!(encode(&killed), fixture("cloud-v1.json"), "the cloud checkpoint format changed: bump its version");
    let failed = CloudState::Failed { reason: "ErrImagePull: busybox:nope".into(), exit_code: None };
    assert_eq!(decode::<CloudState>(&fixture("cloud-v1-failed.json")).unwrap(), failed);
}
