//! Fuzzing, as a proptest corpus run: a job-file entry of any shape, read by
//! the engine's list of kinds, and a stored checkpoint of any shape, decoded
//! by each kind, never panic; each is a job, a state or an error.
//!
//! The test command runs `DROVER_FUZZ_CASES` inputs per target (default
//! 4,096); a long campaign sets it higher (`DROVER_FUZZ_CASES=10000000`).

use std::path::Path;

use drover_engine::{Job, plan};
use drover_kind::{Entry, decode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn cases() -> u32 {
    std::env::var("DROVER_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4096)
}

/// Values of every JSON type, with the numbers users get wrong (huge,
/// negative, fractional) and strings that look like durations and sizes.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(0.0), Just(-1.0), Just(1e19), Just(1e20), Just(f64::MAX), any::<f64>()]
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just("".to_owned()),
            Just("2x".to_owned()),
            Just("busybox:1.36".to_owned()),
            Just("cluster".to_owned()),
            "[0-9]{1,20}(Mi|Gi|m|k)?",
            "[^\n]{0,24}",
        ]
        .prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every key some kind reads, and a few no kind does.
fn key() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = drover_engine::kinds()
        .iter()
        .flat_map(|k| k.keys().iter().copied().chain(k.marker()))
        .chain(drover_kind::COMMON_KEYS.iter().copied())
        .chain(["bogus", "timeout", "jobs", "after"])
        .collect();
    prop_oneof![4 => prop::sample::select(known).prop_map(str::to_owned), 1 => "[a-z_]{1,12}"]
}

fn entry() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(key(), value(), 0..8).prop_map(|m| m.into_iter().collect())
}

fn planned(table: &Map<String, Value>) -> Result<Job, String> {
    let nested = |e: &Entry<'_>| plan(e);
    plan(&Entry { name: "f.j", process_id: "run-x.f.j", table, out_dir: Path::new("/tmp/out"), plan: &nested })
}

/// A checkpoint envelope around a state of any shape, with the variant
/// names of every kind.
fn checkpoint() -> impl Strategy<Value = String> {
    let variant = prop::sample::select(vec![
        "Queued",
        "Starting",
        "Running",
        "Paused",
        "Finished",
        "Failed",
        "Killed",
        "Submitting",
        "Retrieving",
        "Stalled",
        "Created",
        "Creating",
        "Pending",
        "Spawning",
        "Waiting",
        "Bogus",
    ]);
    let state = prop_oneof![
        variant.clone().prop_map(Value::from),
        (variant, value()).prop_map(|(v, fields)| json!({ v: fields })),
        value(),
    ];
    prop_oneof![
        8 => (prop_oneof![Just(json!(1)), Just(json!(2)), Just(json!(3)), leaf()], state)
            .prop_map(|(v, state)| json!({"v": v, "state": state}).to_string()),
        1 => "\\PC{0,60}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_job_file_entry_panics_the_planner(table in entry()) {
        let _ = planned(&table);
    }

    #[test]
    fn no_checkpoint_panics_a_kind_s_decoder(text in checkpoint()) {
        let _ = decode::<drover_shell::ShellState>(&text);
        let _ = decode::<drover_scheduler::JobState>(&text);
        let _ = decode::<drover_cloud::CloudState>(&text);
        let _ = decode::<drover_group::GroupState>(&text);
    }
}
