//! The scheduler checkpoint format: a golden fixture for every version.

use drover_kind::{decode, encode};
use drover_scheduler::JobState;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn golden_fixtures_pin_each_checkpoint_version() {
    let job = JobState::Stalled {
        resume: Box::new(JobState::Submitting { job_name: "drover-relax-42".into() }),
        error: "cannot reach login.example: connection refused".into(),
    };
    assert_eq!(decode::<JobState>(&fixture("scheduler-v1.json")).unwrap(), job);
    assert_eq!(encode(&job), fixture("scheduler-v1.json"), "the scheduler checkpoint format changed: bump its version");
}
