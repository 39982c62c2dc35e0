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

/// A direct job's id gained the process's identity (`PID:START:BOOT`) inside
/// the same string: the format is unchanged, and a checkpoint of a direct job
/// recorded before (a bare pid) decodes as it was.
#[test]
fn direct_job_ids_with_and_without_the_process_identity_decode() {
    let lines = fixture("scheduler-v1-direct.json");
    let states: Vec<JobState> = lines.lines().map(|l| decode::<JobState>(l).unwrap()).collect();
    assert_eq!(
        states,
        vec![
            JobState::Running { job_id: "4242".into() },
            JobState::Running { job_id: "4242:987654:6f1c0c9e-3b7a-4e0e-9d52-0c6f2f0e8a11".into() },
        ]
    );
    for (state, line) in states.iter().zip(lines.lines()) {
        assert_eq!(encode(state), line);
    }
}
