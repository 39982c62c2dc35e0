//! Fuzzing, as a proptest corpus run: what a cluster prints (`sbatch`,
//! `squeue`, `sacct`, the direct scheduler's commands, site banners and
//! `.bashrc` noise) and what `computers.toml` holds never panic drover; each
//! parser answers with a value or an error.
//!
//! The test command runs `DROVER_FUZZ_CASES` inputs per target (default
//! 4,096); a long campaign sets it higher (`DROVER_FUZZ_CASES=10000000`).

use std::path::Path;

use drover_scheduler::{CmdOutput, Direct, Scheduler, Slurm, computers};
use proptest::prelude::*;
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("DROVER_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4096)
}

/// A line a cluster might print: ids (well formed or not), status rows of
/// every shape, section marks, banners, and anything at all.
fn line() -> impl Strategy<Value = String> {
    let state = prop_oneof![
        Just("PENDING"),
        Just("RUNNING"),
        Just("COMPLETED"),
        Just("FAILED"),
        Just("TIMEOUT"),
        Just("CANCELLED by 0"),
        Just("OUT_OF_MEMORY"),
        Just("NODE_FAIL"),
        Just(""),
    ];
    prop_oneof![
        "[0-9]{1,25}",
        "[0-9]{1,12};[a-z]{0,8}",
        "[0-9]{1,8}:[0-9]{1,20}:[0-9a-f-]{0,40}",
        ("[0-9]{0,12}(_[0-9]{1,3})?", state.clone(), "[-0-9:]{0,12}")
            .prop_map(|(id, state, code)| format!("{id}|{state}|{code}")),
        ("[0-9]{0,12}", state, "[^|\n]{0,20}", "[^|\n]{0,20}")
            .prop_map(|(id, state, a, b)| format!("{id}|{state}|{a}|{b}")),
        "@drover-[a-z]{0,10}",
        "(Welcome|WARNING|module load|sbatch:|squeue:) [^\n]{0,40}",
        "slurm_load_jobs error: Invalid job id specified",
        "[^\n]{0,80}",
        "\\PC{0,40}",
    ]
}

fn output() -> impl Strategy<Value = CmdOutput> {
    (
        prop_oneof![Just(0), Just(1), Just(-1), any::<i32>()],
        prop::collection::vec(line(), 0..12),
        prop::collection::vec(line(), 0..3),
        any::<bool>(),
    )
        .prop_map(|(status, out, err, newline)| {
            let mut stdout = out.join("\n");
            if newline {
                stdout.push('\n');
            }
            CmdOutput { status, stdout, stderr: err.join("\n") }
        })
}

fn ids() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop_oneof!["[0-9]{1,12}", "[0-9]{1,8}:[0-9]{1,12}:[0-9a-f-]{36}", "[^\n]{0,20}"], 0..6)
}

/// Every parser of one scheduler, on one output.
fn parse_all(scheduler: &dyn Scheduler, out: &CmdOutput, ids: &[String], work_dir: &str) {
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let _ = scheduler.parse_submit(out);
    let _ = scheduler.parse_lookup(out, work_dir);
    let _ = scheduler.parse_status(out, &ids);
    let _ = scheduler.parse_final(out, &ids);
    let _ = scheduler.parse_cancel(out);
    for id in &ids {
        let _ = scheduler.valid_id(id);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_scheduler_output_panics_a_parser(out in output(), ids in ids(), work_dir in "[^\n]{0,30}") {
        parse_all(&Slurm::new(), &out, &ids, &work_dir);
        parse_all(&Slurm::with_accounting(), &out, &ids, &work_dir);
        parse_all(&Direct, &out, &ids, &work_dir);
    }

    #[test]
    fn no_computers_toml_panics_the_reader(section in computers_section()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let _ = computers(Some(&section), Path::new("computers.toml"));
        });
    }
}

/// A `[computer]` section: known keys with values of every type and range,
/// unknown keys, and values that are not tables.
fn computers_section() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        Just(json!("ssh")),
        Just(json!("local")),
        Just(json!("slurm")),
        Just(json!("slurm-accounting")),
        Just(json!("direct")),
        Just(json!("")),
        "[^\n]{0,20}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<bool>().prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
    ];
    let key = prop_oneof![
        Just("transport"),
        Just("host"),
        Just("scheduler"),
        Just("work_dir"),
        Just("poll_interval_secs"),
        Just("sbatch"),
        Just("ssh_idle_secs"),
        Just("bogus"),
    ];
    let entry = prop::collection::btree_map(key, value.clone(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()));
    prop_oneof![
        4 => prop::collection::btree_map("[a-z]{1,6}", entry, 0..3)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => value,
    ]
}
