//! Generated job scripts and parsed scheduler output, pinned.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_scheduler::{CmdOutput, Direct, Ended, JobSpec, JobStatus, Resources, Scheduler, Slurm};

fn job() -> JobSpec {
    JobSpec {
        id: "p-42".into(),
        command: "python3".into(),
        args: vec!["run.py".into(), "it's $(here); `x`".into(), "two\nlines ü".into()],
        env: BTreeMap::from([("OMP_NUM_THREADS".into(), "4".into()), ("NOTE".into(), "a 'b' \"c\" $d".into())]),
        resources: Resources {
            nodes: Some(2),
            tasks: Some(8),
            cpus_per_task: Some(4),
            memory_mb: Some(16_000),
            wall_time: Some(Duration::from_secs(90_061)),
            partition: Some("debug".into()),
            account: Some("proj-7".into()),
            qos: Some("normal".into()),
        },
        extra_directives: vec!["--constraint=gpu".into()],
        prepend: "module load python".into(),
        append: "echo done".into(),
        ..JobSpec::default()
    }
}

#[test]
fn slurm_script() {
    insta::assert_snapshot!(Slurm::new().script(&job()));
}

#[test]
fn slurm_minimal_script() {
    let job = JobSpec { id: "min".into(), command: "true".into(), ..JobSpec::default() };
    insta::assert_snapshot!(Slurm::new().script(&job));
}

#[test]
fn direct_script() {
    insta::assert_snapshot!(Direct.script(&job()));
}

#[test]
fn commands() {
    insta::assert_snapshot!(
        [
            Slurm::new().submit("work dir/p-42"),
            Slurm::new().lookup("drover-p-42", "x"),
            Slurm::new().status(&["1", "2", "3"]),
            Slurm::new().cancel("7"),
            Direct.submit("work dir/p-42"),
            Direct.lookup("drover-p-42", "work dir/p-42"),
            Direct.status(&["11", "12"]),
            Direct.cancel("11"),
        ]
        .join("\n")
    );
}

fn out(status: i32, stdout: &str, stderr: &str) -> CmdOutput {
    CmdOutput { status, stdout: stdout.into(), stderr: stderr.into() }
}

#[test]
fn slurm_parses_submit_output() {
    assert_eq!(Slurm::new().parse_submit(&out(0, "1234\n", "")), Ok("1234".into()));
    assert_eq!(Slurm::new().parse_submit(&out(0, "1234;cluster\n", "")), Ok("1234".into()));
    let refused = Slurm::new()
        .parse_submit(&out(1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified\n"))
        .unwrap_err();
    assert_eq!(refused.message, "sbatch: error: Batch job submission failed: Invalid partition name specified");
    assert!(!refused.transient);
    let down = Slurm::new()
        .parse_submit(&out(
            1,
            "",
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
        ))
        .unwrap_err();
    assert!(down.transient);
}

#[test]
fn slurm_parses_status_output() {
    let ids = ["1", "2", "3", "4", "5", "6", "7"];
    let got = Slurm::new()
        .parse_status(&out(0, "1|PENDING\n2|RUNNING\n3|COMPLETED\n4|FAILED\n5|TIMEOUT\n6|CANCELLED\n", ""), &ids)
        .unwrap();
    assert_eq!(got["1"], JobStatus::Pending);
    assert_eq!(got["2"], JobStatus::Running);
    assert_eq!(got["3"], JobStatus::Done(Ended::Completed));
    assert_eq!(got["4"], JobStatus::Done(Ended::Failed));
    assert_eq!(got["5"], JobStatus::Done(Ended::Timeout));
    assert_eq!(got["6"], JobStatus::Done(Ended::Cancelled));
    assert_eq!(got["7"], JobStatus::Unknown);
    let forgotten =
        Slurm::new().parse_status(&out(1, "", "slurm_load_jobs error: Invalid job id specified\n"), &["9"]).unwrap();
    assert_eq!(forgotten["9"], JobStatus::Unknown);
    assert!(
        Slurm::new()
            .parse_status(&out(1, "", "slurm_load_jobs error: Unable to contact slurm controller"), &["9"])
            .unwrap_err()
            .transient
    );
}

#[test]
fn direct_parses_ps_output() {
    let got = Direct.parse_status(&out(0, "  11 Ss\n  12 Z\n", ""), &["11", "12", "13"]).unwrap();
    assert_eq!(got["11"], JobStatus::Running);
    assert_eq!(got["12"], JobStatus::Done(Ended::Completed));
    assert_eq!(got["13"], JobStatus::Done(Ended::Completed));
}

#[test]
fn invalid_jobs_are_refused_with_the_field() {
    let check = |job: JobSpec, needle: &str| {
        let e = job.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
    };
    check(JobSpec { id: "a b".into(), command: "x".into(), ..JobSpec::default() }, "the id");
    check(JobSpec { id: "a".into(), ..JobSpec::default() }, "command is empty");
    let mut j = job();
    j.env.insert("1BAD".into(), "x".into());
    check(j, "`1BAD` is not a valid environment variable name");
    let mut j = job();
    j.resources.partition = Some("debug; rm -rf ~".into());
    check(j, "partition");
    let mut j = job();
    j.retrieve.push("../escape".into());
    check(j, "must be relative");
    assert!(job().validate().is_ok());
}

#[test]
fn slurm_with_accounting_asks_sacct_for_the_jobs_that_left_the_queue() {
    let slurm = Slurm::with_accounting();
    assert_eq!(slurm.status(&["1", "2"]), "squeue --noheader --format='%i|%T' --jobs='1,2'");
    assert_eq!(
        slurm.final_status(&["1", "2"]).unwrap(),
        "sacct --noheader --parsable2 --allocations --format=JobID,State --jobs='1,2'"
    );
    assert_eq!(Slurm::new().final_status(&["1"]), None);
    let got =
        slurm.parse_final(&out(0, "1|COMPLETED\n2|CANCELLED by 0\n3|TIMEOUT\n", ""), &["1", "2", "3", "4"]).unwrap();
    assert_eq!(got["1"], JobStatus::Done(Ended::Completed));
    assert_eq!(got["2"], JobStatus::Done(Ended::Cancelled));
    assert_eq!(got["3"], JobStatus::Done(Ended::Timeout));
    assert_eq!(got["4"], JobStatus::Unknown);
    let off =
        slurm.parse_final(&out(1, "", "sacct: error: Problem talking to the database: Connection refused"), &["1"]);
    assert!(off.unwrap_err().message.contains("Problem talking to the database"));
}
