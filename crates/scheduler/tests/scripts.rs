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
            Slurm::with_accounting().lookup("drover-p-42", "work dir/p-42"),
            Slurm::new().sbatch("/site/bin/sbatch wrapper").submit("w"),
            Slurm::new().status(&["1", "2", "3"]),
            Slurm::new().cancel("7"),
            Direct.submit("work dir/p-42"),
            Direct.lookup("drover-p-42", "work dir/p-42"),
            Direct.status(&["11", "12:5:b00f-1d"]),
            Direct.cancel("11"),
            Direct.cancel("12:5:b00f-1d"),
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
    // A site's wrapper and a login banner print around the id.
    let banner = "Welcome to Cluster X (2 users)\n\nSubmitted to 12 nodes\n  5678  \nRemember: quota 90% full\n";
    assert_eq!(Slurm::new().parse_submit(&out(0, banner, "")), Ok("5678".into()));
    assert_eq!(Slurm::new().parse_submit(&out(0, "Job 12 is 7 cores\n99;c1\n", "")), Ok("99".into()));
    // Exit 0 without an id line: accepted, and the message says what it printed.
    for printed in ["", "Submitted batch job 12 now\n", "12 13\n", "12;\n", "12;a b\n", "１２\n"] {
        let e = Slurm::new().parse_submit(&out(0, printed, "note")).unwrap_err();
        assert!(e.accepted && !e.transient, "{printed:?}: {e:?}");
        assert!(e.message.contains(&format!("{:?}", printed.trim())) && e.message.contains("note"), "{e}");
    }
    // What a remote printed is quoted, not all of it.
    let huge = "x".repeat(100_000) + "é";
    assert!(Slurm::new().parse_submit(&out(0, &huge, "")).unwrap_err().message.len() < 1_000);
    let refused = Slurm::new()
        .parse_submit(&out(1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified\n"))
        .unwrap_err();
    assert_eq!(refused.message, "sbatch: error: Batch job submission failed: Invalid partition name specified");
    assert!(!refused.transient && !refused.accepted);
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
fn direct_parses_its_status_output() {
    let ids = ["11", "12:5:ab-1", "13:6:ab-1", "14"];
    let got =
        Direct.parse_status(&out(0, "11 running\n12:5:ab-1 gone\nbanner line\n13:6:ab-1 running\n", ""), &ids).unwrap();
    assert_eq!(got["11"], JobStatus::Running);
    assert_eq!(got["12:5:ab-1"], JobStatus::Done(Ended::Completed));
    assert_eq!(got["13:6:ab-1"], JobStatus::Running);
    assert_eq!(got["14"], JobStatus::Unknown, "a job the output does not mention is not taken for ended");
    assert!(Direct.parse_status(&out(1, "", "sh: cannot fork"), &ids).is_err());
}

#[test]
fn direct_ids_carry_the_process_identity() {
    let boot = "6f1c0c9e-3b7a-4e0e-9d52-0c6f2f0e8a11";
    let with = format!("4242:987654:{boot}");
    // Banners before the id are skipped; the id is recorded whole.
    assert_eq!(Direct.parse_submit(&out(0, &format!("Welcome!\n{with}\n"), "")), Ok(with.clone()));
    // Where `/proc` is missing, only the pid is known.
    assert_eq!(Direct.parse_submit(&out(0, "4242::\n", "")), Ok("4242".into()));
    let none = Direct.parse_submit(&out(0, "motd\n", "")).unwrap_err();
    assert!(none.accepted && none.message.contains("motd"), "{none:?}");
    assert_eq!(Direct.parse_lookup(&out(0, &format!("{with}\n"), ""), "w"), Ok(Some(with.clone())));
    assert_eq!(Direct.parse_lookup(&out(0, "", ""), "w"), Ok(None));
    for ok in ["1", &with] {
        assert!(Direct.valid_id(ok), "{ok}");
    }
    for bad in ["", "x", "1:2", "1:2:3:4", "1:x:ab", "1:2:$(reboot)", "1::", "-1"] {
        assert!(!Direct.valid_id(bad), "{bad}");
    }
    // The status and cancel commands check the identity, and quote it.
    assert!(Direct.status(&[&with]).contains(&format!("drover_alive '4242' '987654' '{boot}'")));
    assert!(Direct.cancel(&with).contains(&format!("if drover_alive '4242' '987654' '{boot}'; then kill")));
    assert_eq!(Direct.cancel("1; reboot"), "true", "an id that is none is never killed");
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

#[test]
fn slurm_looks_up_an_interrupted_submit_in_its_file_then_among_the_users_own_jobs() {
    let dir = "drover-work/p-42";
    let home = "/home/ann/drover-work/p-42";
    let lookup = |slurm: &Slurm, stdout: &str| slurm.parse_lookup(&out(0, stdout, ""), dir);
    let acct = Slurm::with_accounting();
    // The file the submit wrote, after a banner that looks like an id section.
    let file = "Welcome\n@drover-file\nbanner 1\n77\n@drover-squeue\n@drover-exit 0\n@drover-sacct\n@drover-exit 0\n";
    assert_eq!(lookup(&acct, file), Ok(Some("77".into())));
    // squeue, where the job ran in this work directory (`%Z` is absolute).
    let queued = format!("@drover-file\n@drover-squeue\n8|/elsewhere/p-42\n9|{home}\n@drover-exit 0\n");
    assert_eq!(lookup(&Slurm::new(), &queued), Ok(Some("9".into())));
    // A job that finished long ago: only `sacct` still knows it.
    let old = format!("@drover-file\n@drover-squeue\n@drover-exit 0\n@drover-sacct\n31|{home}/\n@drover-exit 0\n");
    assert_eq!(lookup(&acct, &old), Ok(Some("31".into())));
    // Another directory of the same name, or nothing: not found.
    let other = "@drover-file\n@drover-squeue\n8|/x/other-work/p-42\n8|/x/drover-work/p-42x\n@drover-exit 0\n";
    assert_eq!(lookup(&Slurm::new(), other), Ok(None));
    // A lookup that failed or was cut short says so: nothing may be submitted.
    let failed = "@drover-file\n@drover-squeue\n@drover-exit 1\n";
    let e = Slurm::new()
        .parse_lookup(&out(0, failed, "squeue: error: Unable to contact slurm controller"), dir)
        .unwrap_err();
    assert!(e.transient, "{e:?}");
    assert!(lookup(&acct, "@drover-file\n@drover-squeue\n@drover-exit 0\n").is_err(), "sacct never answered");
    assert!(lookup(&Slurm::new(), "").is_err());
    // Only the user's own jobs are searched.
    assert!(Slurm::new().lookup("n", dir).contains("squeue --me "));
    assert!(acct.lookup("n", dir).contains("--user=\"$(id -un)\""));
}

#[test]
fn slurm_keeps_ids_it_cannot_have_given_out_of_its_commands() {
    let slurm = Slurm::new();
    for ok in ["1", "123456789"] {
        assert!(slurm.valid_id(ok), "{ok}");
    }
    for bad in ["", "abc", "1,2", "12;c", "1_2", "$(x)", "1 2", &"9".repeat(40)] {
        assert!(!slurm.valid_id(bad), "{bad}");
    }
    // squeue refuses a whole batch over ids it does not know: each is asked
    // about alone.
    let refused = out(1, "", "slurm_load_jobs error: Invalid job id specified\n");
    assert!(slurm.refused_batch(&refused, &["1", "2"]));
    assert!(!slurm.refused_batch(&refused, &["1"]));
    assert!(!slurm.refused_batch(&out(0, "1|RUNNING\n", ""), &["1", "2"]));
}
