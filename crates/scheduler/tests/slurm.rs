//! Scheduler jobs against a real SLURM, through a real sshd on loopback and
//! through the local transport. The README's test command starts both
//! (`scripts/services/all.sh start`); without them these tests fail, loudly.

// The tests look at SLURM and the process table with their own tools, not
// through the code under test.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_core::{DriveMode, Process, ProcessHandler, spawn_owned};
use drover_scheduler::{
    AnyScheduler, AnyTransport, Computer, Direct, JobSpec, JobState, JobStatus, Local, Resources, RetryPolicy,
    Scheduler, SchedulerProcess, Slurm, Source, Ssh, SshConfig, Transport, Upload,
};
use tokio::task::LocalSet;

const SSH_HOST: &str = "drover-test-host";

type Handler = ProcessHandler<JobState, SchedulerProcess>;

#[derive(Clone, Copy, Debug)]
enum Via {
    Ssh,
    Local,
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}-{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy { attempts: 2, first_delay: Duration::from_millis(200) }
}

fn computer(via: Via, scheduler: AnyScheduler) -> Arc<Computer> {
    let (transport, root) = match via {
        Via::Ssh => (AnyTransport::Ssh(Ssh::new(SshConfig::new(SSH_HOST))), "drover-tests".to_owned()),
        Via::Local => (AnyTransport::Local(Local::new()), "/tmp/drover-tests-local".to_owned()),
    };
    Computer::new(format!("{via:?}"), transport, scheduler, root, Duration::from_secs(1)).with_retry(fast_retry())
}

fn services_up() {
    let ok = |cmd: &str| {
        std::process::Command::new("sh").args(["-c", cmd]).output().map(|o| o.status.success()).unwrap_or(false)
    };
    assert!(
        ok(&format!("ssh -o BatchMode=yes -o ConnectTimeout=5 {SSH_HOST} true")),
        "sshd for tests is not reachable as `{SSH_HOST}`: run `scripts/services/all.sh start` (the README's test command does)"
    );
    assert!(
        ok("scontrol ping | grep -q UP"),
        "SLURM is not running: run `scripts/services/all.sh start` (the README's test command does)"
    );
}

/// A computer reached through the ControlMaster socket `socket`, which does
/// not exist yet: unreachable until [`open_master`] opens it.
fn behind_master(socket: &Path, retry: RetryPolicy) -> Arc<Computer> {
    let mut config = SshConfig::new(SSH_HOST);
    config.control_path = Some(socket.to_owned());
    config.reconnect_min = Duration::from_millis(100);
    config.reconnect_max = Duration::from_millis(500);
    Computer::new(
        "behind-master",
        AnyTransport::Ssh(Ssh::new(config)),
        AnyScheduler::Slurm(Slurm::new()),
        "drover-tests",
        Duration::from_secs(1),
    )
    .with_retry(retry)
}

fn open_master(socket: &Path) {
    let master = std::process::Command::new("ssh")
        .args(["-M", "-S", socket.to_str().unwrap(), "-o", "ControlPersist=yes", "-fN", SSH_HOST])
        .status()
        .unwrap();
    assert!(master.success());
}

fn close_master(socket: &Path) {
    let _ = std::process::Command::new("ssh").args(["-S", socket.to_str().unwrap(), "-O", "exit", SSH_HOST]).output();
}

thread_local! {
    /// The jobs this test (each test runs on its own thread) launched.
    static LAUNCHED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn test<F: std::future::Future>(f: impl FnOnce(Rc<LocalSet>) -> F) -> F::Output {
    services_up();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    let out = local.block_on(&rt, f(local.clone()));
    // After each test, nothing of ours is left in the queue.
    for name in LAUNCHED.with(|l| std::mem::take(&mut *l.borrow_mut())) {
        assert_eq!(live_jobs(&name), "", "job {name} was left in the queue");
    }
    out
}

fn launch(local: &LocalSet, spec: JobSpec, computer: &Arc<Computer>) -> Handler {
    LAUNCHED.with(|l| l.borrow_mut().push(spec.job_name()));
    let h = spawn_owned(local, SchedulerProcess::new(spec, computer.clone()), DriveMode::FireAndForget);
    h.try_nudge().unwrap();
    h
}

async fn finish(h: Handler) -> JobState {
    tokio::time::timeout(Duration::from_secs(240), h.join())
        .await
        .expect("the job took too long")
        .unwrap()
        .state()
        .clone()
}

fn spec(id: &str, command: &str, args: &[&str], local_dir: &Path) -> JobSpec {
    JobSpec {
        id: id.into(),
        command: command.into(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        local_dir: local_dir.to_owned(),
        ..JobSpec::default()
    }
}

/// Jobs of ours that SLURM still has pending or running.
fn live_jobs(name: &str) -> String {
    let out = std::process::Command::new("squeue")
        .args(["--noheader", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING", "--format=%i %T", "--name", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn wait_for(what: &str, h: &Handler, f: impl Fn(&JobState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut rx = h.subscribe();
    while !f(&h.state()) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; state {:?}", h.state());
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

fn tricky() -> Vec<String> {
    vec![
        "it's \"quoted\"".into(),
        "$(touch /tmp/drover-pwned); `touch /tmp/drover-pwned2`".into(),
        "a; b && c | d".into(),
        "  spaces  ".into(),
        "new\nline".into(),
        "ünïcödé ✓".into(),
    ]
}

async fn success_with_files(via: Via, scheduler: AnyScheduler) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.bin");
    let payload: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(&input, &payload).unwrap();
    let odd_name = "we'ird $(x); näme.txt";
    let id = unique("ok");
    let mut job = spec(
        &id,
        "sh",
        &[
            "-c",
            r#"cat input.bin > copy.bin && mkdir -p sub && printf '%s\n' "$@" > sub/args.txt && printf '%s' "$ODD" > "$1.out" && echo hello"#,
        ],
        &dir.path().join("out"),
    );
    job.args.push("sh".into()); // $0
    job.args.push(odd_name.into());
    job.args.extend(tricky());
    job.env = BTreeMap::from([("ODD".into(), tricky().join("|"))]);
    job.uploads = vec![
        Upload { source: Source::Path(input.clone()), target: "input.bin".into() },
        Upload { source: Source::Content(b"inline\n".to_vec()), target: format!("in/{odd_name}") },
    ];
    job.retrieve = vec!["copy.bin".into(), "sub/args.txt".into(), format!("{odd_name}.out"), format!("in/{odd_name}")];
    job.resources.wall_time = Some(Duration::from_secs(300));

    let computer = computer(via, scheduler);
    let local = LocalSet::new();
    let state = local.run_until(async { finish(launch(&local, job, &computer)).await }).await;
    assert!(state.succeeded(), "{via:?}: {state:?}");
    let out = dir.path().join("out");
    assert_eq!(std::fs::read(out.join("copy.bin")).unwrap(), payload, "uploaded and retrieved bytes differ");
    let mut expected = vec![odd_name.to_owned()];
    expected.extend(tricky());
    assert_eq!(std::fs::read_to_string(out.join("sub/args.txt")).unwrap(), expected.join("\n") + "\n");
    assert_eq!(std::fs::read_to_string(out.join(format!("{odd_name}.out"))).unwrap(), tricky().join("|"));
    assert_eq!(std::fs::read_to_string(out.join(format!("in/{odd_name}"))).unwrap(), "inline\n");
    assert_eq!(std::fs::read_to_string(out.join("stdout.txt")).unwrap(), "hello\n");
    assert!(!Path::new("/tmp/drover-pwned").exists() && !Path::new("/tmp/drover-pwned2").exists());
    assert_eq!(live_jobs(&format!("drover-{id}")), "");
}

#[test]
fn a_job_succeeds_through_ssh_and_slurm_with_files_byte_for_byte() {
    test(|_| success_with_files(Via::Ssh, AnyScheduler::Slurm(Slurm::new())));
}

#[test]
fn a_job_succeeds_through_the_local_transport_and_slurm() {
    test(|_| success_with_files(Via::Local, AnyScheduler::Slurm(Slurm::new())));
}

#[test]
fn a_direct_job_succeeds_through_ssh() {
    test(|_| success_with_files(Via::Ssh, AnyScheduler::Direct(Direct)));
}

#[test]
fn a_failing_job_reports_its_exit_code() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        for via in [Via::Ssh, Via::Local] {
            for slurm in [Slurm::new(), Slurm::with_accounting()] {
                let c = computer(via, AnyScheduler::Slurm(slurm.clone()));
                let state =
                    finish(launch(&local, spec(&unique("exit"), "sh", &["-c", "exit 7"], dir.path()), &c)).await;
                assert!(matches!(state, JobState::Finished { exit_code: 7, .. }), "{via:?} {slurm:?}: {state:?}");
            }
        }
    });
}

#[test]
fn a_job_that_hits_its_wall_time_fails() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        // Side by side: the final state from `squeue --states=all` and from
        // `sacct`, through SSH and locally.
        let variants = [(Via::Ssh, Slurm::new()), (Via::Ssh, Slurm::with_accounting()), (Via::Local, Slurm::new())];
        let handlers: Vec<_> = variants
            .into_iter()
            .map(|(via, slurm)| {
                let c = computer(via, AnyScheduler::Slurm(slurm));
                let mut job = spec(&unique("wall"), "sleep", &["600"], dir.path());
                job.resources.wall_time = Some(Duration::from_secs(60));
                launch(&local, job, &c)
            })
            .collect();
        for h in handlers {
            let state = finish(h).await;
            assert!(matches!(&state, JobState::Failed { reason, .. } if reason.contains("wall time")), "{state:?}");
        }
    });
}

#[test]
fn kill_cancels_a_queued_and_a_running_job_and_retrieves_what_it_wrote() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        for via in [Via::Ssh, Via::Local] {
            let c = computer(via, AnyScheduler::Slurm(Slurm::new()));
            // Queued: held back by a start time an hour away.
            let queued_id = unique("kq");
            let mut job = spec(&queued_id, "sleep", &["600"], &dir.path().join("q"));
            job.extra_directives = vec!["--begin=now+3600".into()];
            let queued = launch(&local, job, &c);
            wait_for("queued", &queued, |s| matches!(s, JobState::Queued { .. })).await;
            queued.kill().await.unwrap();
            assert!(
                matches!(queued.state(), JobState::Killed { cancel_pending: false, job_id: Some(_) }),
                "{:?}",
                queued.state()
            );
            assert_eq!(live_jobs(&format!("drover-{queued_id}")), "");

            // Running: it wrote something before the kill.
            let running_id = unique("kr");
            let job = spec(&running_id, "sh", &["-c", "echo started; sleep 600"], &dir.path().join("r"));
            let running = launch(&local, job, &c);
            wait_for("running", &running, |s| matches!(s, JobState::Running { .. })).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            running.kill().await.unwrap();
            assert!(matches!(running.state(), JobState::Killed { cancel_pending: false, .. }), "{:?}", running.state());
            assert_eq!(live_jobs(&format!("drover-{running_id}")), "");
            assert_eq!(std::fs::read_to_string(dir.path().join("r/stdout.txt")).unwrap(), "started\n");
        }
    });
}

#[test]
fn a_direct_job_is_killed_with_its_process_tree() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer(Via::Ssh, AnyScheduler::Direct(Direct));
        // Sleeps of a length no other test uses, to find them afterwards.
        let tag = std::process::id() % 100_000;
        let job =
            spec(&unique("dk"), "sh", &["-c", &format!("sleep 600.{tag} & sleep 601.{tag}; echo done")], dir.path());
        let h = launch(&local, job, &c);
        wait_for("running", &h, |s| matches!(s, JobState::Running { .. })).await;
        let pattern = format!("^sleep 60[01][.]{tag}$");
        let sleeps = || {
            let out = std::process::Command::new("pgrep").args(["-u", "drover-test", "-f", &pattern]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).lines().count()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sleeps() < 2 {
            assert!(Instant::now() < deadline, "the job's sleeps never started");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.kill().await.unwrap();
        assert!(matches!(h.state(), JobState::Killed { cancel_pending: false, .. }), "{:?}", h.state());
        // The signals take a moment to land.
        let deadline = Instant::now() + Duration::from_secs(5);
        while sleeps() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sleeps(), 0, "the job's process tree was left running");
    });
}

#[test]
fn a_kill_while_the_computer_is_unreachable_ends_at_once_and_cancels_later() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let reachable = computer(Via::Ssh, AnyScheduler::Slurm(Slurm::new()));
        let id = unique("ku");
        let h = launch(&local, spec(&id, "sleep", &["600"], dir.path()), &reachable);
        wait_for("running", &h, |s| matches!(s, JobState::Running { .. })).await;
        let job_id = h.state().job_id().unwrap().to_owned();

        // The same cluster through a ControlMaster socket that does not exist yet.
        let socket = dir.path().join("ctl");
        let cut_off = behind_master(&socket, fast_retry());
        assert!(cut_off.transport.run("true").await.is_err());
        let spec2 = spec(&id, "sleep", &["600"], dir.path());
        let restored = SchedulerProcess::restore(spec2, cut_off.clone(), JobState::Running { job_id: job_id.clone() });
        let killer = spawn_owned(&local, restored, DriveMode::Step);
        let started = Instant::now();
        killer.kill().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "kill waited for an unreachable cluster: {:?}",
            started.elapsed()
        );
        assert_eq!(killer.state(), JobState::Killed { job_id: Some(job_id.clone()), cancel_pending: true });
        assert_eq!(cut_off.canceller().pending(), vec![job_id.clone()]);
        assert!(!live_jobs(&format!("drover-{id}")).is_empty(), "the job must still run while unreachable");

        // The cluster becomes reachable: a ControlMaster opens at that socket.
        open_master(&socket);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cut_off.canceller().pending().is_empty() {
            assert!(Instant::now() < deadline, "the background cancel never went through");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(live_jobs(&format!("drover-{id}")), "");
        let state = finish(h).await;
        assert!(matches!(&state, JobState::Failed { reason, .. } if reason.contains("cancelled")), "{state:?}");
        close_master(&socket);
    });
}

#[test]
fn an_interrupted_submit_finds_its_job_by_name() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer(Via::Ssh, AnyScheduler::Slurm(Slurm::new()));
        let id = unique("resub");
        let job = spec(&id, "true", &[], dir.path());
        // Run to `Submitting` and submit once, as a crashed engine would have.
        let h = spawn_owned(&local, SchedulerProcess::new(job.clone(), c.clone()), DriveMode::Step);
        for _ in 0..3 {
            h.nudge().await.unwrap();
        }
        wait_for("queued", &h, |s| matches!(s, JobState::Queued { .. })).await;
        let first = h.state().job_id().unwrap().to_owned();
        h.kill().await.ok();
        // A new engine restores it in `Submitting`: it must adopt the job, not submit again.
        let restored =
            SchedulerProcess::restore(job, c.clone(), JobState::Submitting { job_name: format!("drover-{id}") });
        let h = spawn_owned(&local, restored, DriveMode::Step);
        h.nudge().await.unwrap();
        wait_for("queued", &h, |s| matches!(s, JobState::Queued { .. })).await;
        assert_eq!(h.state().job_id(), Some(first.as_str()));
        let out = std::process::Command::new("squeue")
            .args(["--noheader", "--states=all", "--format=%i", "--name", &format!("drover-{id}")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "submitted twice");
    });
}

#[test]
fn bad_input_fails_with_the_remote_message_and_leaves_nothing() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer(Via::Ssh, AnyScheduler::Slurm(Slurm::new()));

        // A partition SLURM does not know.
        let id = unique("badpart");
        let mut job = spec(&id, "true", &[], dir.path());
        job.resources = Resources { partition: Some("no-such-partition".into()), ..Resources::default() };
        let state = finish(launch(&local, job, &c)).await;
        assert!(
            matches!(&state, JobState::Failed { reason, .. } if reason.contains("Invalid partition name specified")),
            "{state:?}"
        );
        let left = c.transport.run(&format!("test -e drover-tests/{id} && echo left || echo gone")).await.unwrap();
        assert_eq!(left.stdout.trim(), "gone", "the rejected job's work directory was left");

        // A local input file that does not exist: nothing reaches the cluster.
        let id = unique("noinput");
        let mut job = spec(&id, "true", &[], dir.path());
        job.uploads =
            vec![Upload { source: Source::Path(PathBuf::from("/no/such/input.dat")), target: "in.dat".into() }];
        let state = finish(launch(&local, job, &c)).await;
        assert!(
            matches!(&state, JobState::Failed { reason, .. } if reason.contains("/no/such/input.dat")),
            "{state:?}"
        );
        let left = c.transport.run(&format!("test -e drover-tests/{id} && echo left || echo gone")).await.unwrap();
        assert_eq!(left.stdout.trim(), "gone");

        // An unknown host and a refused key: the process fails with ssh's own words.
        for (destination, needle) in
            [("no-such-host.invalid", "Could not resolve hostname"), ("nobody@drover-test-host", "Permission denied")]
        {
            let mut config = SshConfig::new(destination);
            config.connect_timeout = Duration::from_secs(5);
            let bad = Computer::new(
                "bad",
                AnyTransport::Ssh(Ssh::new(config)),
                AnyScheduler::Slurm(Slurm::new()),
                "x",
                Duration::from_secs(1),
            )
            .with_retry(fast_retry());
            let h = launch(&local, spec(&unique("badhost"), "true", &[], dir.path()), &bad);
            let state = finish(h).await;
            assert!(
                matches!(&state, JobState::Failed { reason, .. } if reason.contains(needle)),
                "{destination}: {state:?}"
            );
        }
    });
}

#[test]
fn one_connection_and_batched_polling_for_many_jobs() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let ssh = Ssh::new(SshConfig::new(SSH_HOST));
        let c = Computer::new(
            "batch",
            AnyTransport::Ssh(ssh.clone()),
            AnyScheduler::Slurm(Slurm::new()),
            "drover-tests",
            Duration::from_secs(1),
        )
        .with_retry(fast_retry());
        let started = Instant::now();
        let handlers: Vec<_> = (0..12)
            .map(|i| {
                launch(&local, spec(&unique(&format!("many{i}")), "true", &[], &dir.path().join(i.to_string())), &c)
            })
            .collect();
        for h in handlers {
            assert!(finish(h).await.succeeded());
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(ssh.connections_opened(), 1, "one master connection per computer");
        let polls = c.poller().polls() as f64;
        assert!(polls <= seconds / c.poller().interval().as_secs_f64() + 2.0, "{polls} polls in {seconds:.1} s");
    });
}

#[test]
fn pause_stops_following_and_resume_follows_again() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer(Via::Ssh, AnyScheduler::Slurm(Slurm::new()));
        let h = launch(&local, spec(&unique("pause"), "sleep", &["3"], dir.path()), &c);
        wait_for("queued or running", &h, |s| matches!(s, JobState::Queued { .. } | JobState::Running { .. })).await;
        h.pause().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(c.poller().watched(), 0, "a paused process is still polled");
        let polls = c.poller().polls();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(c.poller().polls(), polls, "polls ran for nobody");
        // The job ran on meanwhile; resume finds it done.
        h.resume().unwrap();
        assert!(finish(h).await.succeeded());
    });
}

#[test]
fn retries_run_out_into_a_stall_and_resume_tries_again() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ctl");
        let c = behind_master(&socket, RetryPolicy { attempts: 3, first_delay: Duration::from_millis(300) });
        let h = launch(&local, spec(&unique("stall"), "echo", &["back"], dir.path()), &c);
        wait_for("the stall", &h, |s| matches!(s, JobState::Stalled { .. })).await;
        match h.state() {
            JobState::Stalled { resume, error } => {
                assert_eq!(*resume, JobState::Uploading);
                assert!(error.contains("cannot reach"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert!(h.is_paused(), "a stalled process pauses itself");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(matches!(h.state(), JobState::Stalled { .. }), "nothing advances while stalled");

        open_master(&socket);
        h.resume().unwrap();
        let state = finish(h).await;
        assert!(state.succeeded(), "{state:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join("stdout.txt")).unwrap(), "back\n");
        close_master(&socket);
    });
}

#[test]
fn with_accounting_final_states_come_from_one_sacct_per_interval() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer(Via::Ssh, AnyScheduler::Slurm(Slurm::with_accounting()));
        let started = Instant::now();
        let handlers: Vec<_> = (0..6)
            .map(|i| {
                let code = (i % 2 * 2).to_string();
                let job =
                    spec(&unique("acct"), "sh", &["-c", "exit \"$1\"", "sh", &code], &dir.path().join(i.to_string()));
                launch(&local, job, &c)
            })
            .collect();
        for (i, h) in handlers.into_iter().enumerate() {
            let state = finish(h).await;
            let expected = (i % 2 * 2) as i32;
            assert!(matches!(state, JobState::Finished { exit_code, .. } if exit_code == expected), "{state:?}");
        }
        let intervals = started.elapsed().as_secs_f64() / c.poller().interval().as_secs_f64();
        let commands = c.transport.stats().by_program();
        let sacct = commands.get("sacct").copied().unwrap_or(0);
        assert!(sacct >= 1, "no sacct ran: {commands:?}");
        assert_eq!(sacct, c.poller().final_queries());
        assert!((sacct as f64) <= intervals + 2.0, "{sacct} sacct calls in {intervals:.1} intervals");
    });
}

/// A directory every user may read, for programs the test user runs.
fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// An executable `sbatch` wrapper with body `body` in `dir`.
fn wrapper(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn computer_with(via: Via, slurm: Slurm) -> Arc<Computer> {
    computer(via, AnyScheduler::Slurm(slurm))
}

/// Whether `path` exists on the computer.
async fn exists(c: &Computer, path: &str) -> bool {
    let out = c.transport.run(&format!("test -e {} && echo yes || echo no", drover_scheduler::quote(path))).await;
    out.unwrap().stdout.trim() == "yes"
}

#[test]
fn a_site_sbatch_wrapper_that_prints_banners_is_understood() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let bin = shared_dir();
        let chatty = wrapper(
            bin.path(),
            "chatty",
            "echo 'Welcome to Cluster X: 12 nodes, 3 down'; echo; sbatch \"$@\"; s=$?; echo 'Remember: quota 90% full'; exit $s",
        );
        let silent = wrapper(bin.path(), "silent", "sbatch \"$@\" > /dev/null");
        let liar = wrapper(bin.path(), "liar", "echo 'sbatch is under maintenance until 18:00'");
        for via in [Via::Ssh, Via::Local] {
            // Banners around the id.
            let c = computer_with(via, Slurm::new().sbatch(chatty.clone()));
            let state = finish(launch(&local, spec(&unique("chatty"), "echo", &["hi"], dir.path()), &c)).await;
            assert!(state.succeeded(), "{via:?}: {state:?}");

            // Accepted, but no id printed: found by the lookup, not submitted twice.
            let c = computer_with(via, Slurm::with_accounting().sbatch(silent.clone()));
            let id = unique("silent");
            let state = finish(launch(&local, spec(&id, "echo", &["hi"], dir.path()), &c)).await;
            assert!(state.succeeded(), "{via:?}: {state:?}");
            assert_eq!(sacct_ids(&format!("drover-{id}")).len(), 1, "{via:?}: submitted twice");

            // Exit 0 and no job anywhere: a failure that says what sbatch
            // printed, and the work directory stays (the job may exist).
            let c = computer_with(via, Slurm::new().sbatch(liar.clone()));
            let id = unique("liar");
            let state = finish(launch(&local, spec(&id, "true", &[], dir.path()), &c)).await;
            assert!(
                matches!(&state, JobState::Failed { reason, .. } if reason.contains("under maintenance until 18:00")),
                "{via:?}: {state:?}"
            );
            assert!(
                exists(&c, &c.work_dir(&id)).await,
                "{via:?}: the work directory of an accepted submit was removed"
            );
        }
    });
}

/// The ids of the jobs named `name` that `sacct` knows, of any user, once it
/// knows one (slurmdbd records a job a moment after SLURM ran it).
fn sacct_ids(name: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("sacct")
            .args([
                "--noheader",
                "--parsable2",
                "--allocations",
                "--allusers",
                "--starttime=now-1day",
                "--format=JobID",
            ])
            .arg(format!("--name={name}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "sacct: {}", String::from_utf8_lossy(&out.stderr));
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
        if !ids.is_empty() || Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_garbage_or_unknown_job_id_does_not_blind_the_batched_status() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        for slurm in [Slurm::new(), Slurm::with_accounting()] {
            let c = computer_with(Via::Ssh, slurm.clone());
            let h = launch(&local, spec(&unique("blind"), "sleep", &["600"], dir.path()), &c);
            wait_for("running", &h, |s| matches!(s, JobState::Running { .. })).await;
            let id = h.state().job_id().unwrap().to_owned();
            // Asked about in the same tick as a job id from a corrupted
            // checkpoint and one SLURM never gave.
            let poller = c.poller();
            let (real, garbage, unknown) = tokio::time::timeout(Duration::from_secs(30), async {
                tokio::join!(
                    poller.wait_change(&id, JobStatus::Pending),
                    poller.wait_change("12abc", JobStatus::Pending),
                    poller.wait_change("999999999", JobStatus::Pending),
                )
            })
            .await
            .expect("the poller never answered");
            assert_eq!(real.unwrap(), JobStatus::Running, "{slurm:?}: one bad id hid a running job");
            assert_eq!(garbage.unwrap(), JobStatus::Unknown);
            assert_eq!(unknown.unwrap(), JobStatus::Unknown);
            h.kill().await.unwrap();
        }
    });
}

/// Drives a fresh process to `Submitting` (checked and uploaded), as an engine
/// that crashed right before its submit would have left it, and returns the
/// state it was recorded in.
async fn up_to_submitting(local: &LocalSet, job: &JobSpec, c: &Arc<Computer>) -> JobState {
    let h = spawn_owned(local, SchedulerProcess::new(job.clone(), c.clone()), DriveMode::Step);
    for _ in 0..2 {
        h.nudge().await.unwrap();
    }
    wait_for("submitting", &h, |s| matches!(s, JobState::Submitting { .. })).await;
    let state = h.state();
    drop(h);
    state
}

#[test]
fn an_interrupted_submit_whose_job_finished_long_ago_is_adopted_not_resubmitted() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer_with(Via::Ssh, Slurm::with_accounting());
        let id = unique("gone");
        let job = spec(&id, "sh", &["-c", "echo once >> ../gone-ran-$0", &id], dir.path());
        let submitting = up_to_submitting(&local, &job, &c).await;
        // The crashed engine's submit went through, and the job ran to its end.
        let work = c.work_dir(&id);
        let out = c.transport.run(&format!("cd {} && sbatch --parsable job.sh", drover_scheduler::quote(&work))).await;
        let first = out.unwrap().stdout.trim().to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sacct_state(&first).starts_with("COMPLETED") {
            assert!(Instant::now() < deadline, "job {first} never completed: {}", sacct_state(&first));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // What the real lookup prints: `sacct` finds it (where `squeue` would
        // have forgotten it after `MinJobAge`), once slurmdbd recorded it.
        let slurm = Slurm::with_accounting();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lookup = c.transport.run(&slurm.lookup(&job.job_name(), &work)).await.unwrap();
            let in_sacct = lookup.stdout.split("@drover-sacct").nth(1).unwrap_or("");
            if in_sacct.lines().any(|l| l.starts_with(&format!("{first}|"))) {
                break;
            }
            assert!(Instant::now() < deadline, "sacct never found it: {}", lookup.stdout);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }

        let h = spawn_owned(&local, SchedulerProcess::restore(job, c.clone(), submitting), DriveMode::FireAndForget);
        h.try_nudge().unwrap();
        let state = finish(h).await;
        assert!(state.succeeded(), "{state:?}");
        assert_eq!(state.job_id(), Some(first.as_str()), "the finished job was not adopted");
        assert_eq!(sacct_ids(&format!("drover-{id}")), vec![first], "submitted again");
        let ran = c.transport.run(&format!("cat {}/../gone-ran-{id}", drover_scheduler::quote(&work))).await.unwrap();
        assert_eq!(ran.stdout, "once\n");
    });
}

fn sacct_state(job_id: &str) -> String {
    let out = std::process::Command::new("sacct")
        .args(["--noheader", "--parsable2", "--allocations", "--format=State", "--jobs", job_id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn another_users_job_of_the_same_name_and_directory_is_never_adopted() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        for slurm in [Slurm::new(), Slurm::with_accounting()] {
            // This engine runs as root, on the login node.
            let c = computer_with(Via::Local, slurm.clone());
            let id = unique("theirs");
            let job = spec(&id, "true", &[], dir.path());
            let submitting = up_to_submitting(&local, &job, &c).await;
            let work = c.work_dir(&id);
            // Another user's job of the same name, in the same directory.
            let theirs = std::process::Command::new("ssh")
                .args([SSH_HOST, "sbatch", "--parsable", "-o", "/dev/null", "--wrap", "'sleep 300'"])
                .arg(format!("--job-name=drover-{id}"))
                .arg(format!("--chdir={work}"))
                .output()
                .unwrap();
            assert!(theirs.status.success(), "{}", String::from_utf8_lossy(&theirs.stderr));
            let theirs = String::from_utf8_lossy(&theirs.stdout).trim().to_owned();

            let h =
                spawn_owned(&local, SchedulerProcess::restore(job, c.clone(), submitting), DriveMode::FireAndForget);
            h.try_nudge().unwrap();
            let state = finish(h).await;
            let cancel = std::process::Command::new("scancel").arg(&theirs).status().unwrap();
            assert!(cancel.success());
            assert!(state.succeeded(), "{slurm:?}: {state:?}");
            assert_ne!(state.job_id(), Some(theirs.as_str()), "{slurm:?}: adopted another user's job");
        }
    });
}

/// The start time (field 22 of `/proc/PID/stat`) of a local process.
fn start_time(pid: &str) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(19).unwrap().to_owned()
}

#[test]
fn a_direct_job_never_follows_or_kills_a_process_that_took_its_pid() {
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let c = computer(Via::Ssh, AnyScheduler::Direct(Direct));
        let id = unique("pid");
        let job = spec(&id, "true", &[], dir.path());
        let h = launch(&local, job.clone(), &c);
        let recorded = match finish(h).await {
            JobState::Finished { job_id, exit_code: 0 } => job_id,
            other => panic!("{other:?}"),
        };
        // An unrelated process group of the same user now holds the pid the
        // job had (faked: the recorded pid is replaced by its own).
        let tag = std::process::id() % 100_000;
        let other = std::process::Command::new("ssh")
            .arg(SSH_HOST)
            .arg(format!("setsid sleep 300.{tag} > /dev/null 2>&1 < /dev/null & echo $!"))
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&other.stdout).trim().to_owned();
        assert!(!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()), "{other:?}");
        // (A process killed here may stay a zombie: nobody reaps it.)
        let alive = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rfind(')').is_some_and(|i| !stat[i..].starts_with(") Z"))
        };
        assert!(alive());
        let recycled = format!("{pid}{}", &recorded[recorded.find(':').unwrap_or(recorded.len())..]);
        assert_ne!(recycled, pid, "the job id records no identity beside the pid: {recorded}");

        let poller = c.poller();
        let status = tokio::time::timeout(Duration::from_secs(30), poller.wait_change(&recycled, JobStatus::Running));
        assert_eq!(status.await.unwrap().unwrap(), JobStatus::Done(drover_scheduler::Ended::Completed));
        // The same check knows the process when the identity is its own.
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let own = format!("{pid}:{}:{}", start_time(&pid), boot.trim());
        let status = tokio::time::timeout(Duration::from_secs(30), poller.wait_change(&own, JobStatus::Pending));
        assert_eq!(status.await.unwrap().unwrap(), JobStatus::Running);

        // A checkpoint of an older drover holds the bare pid: the exit code
        // the job wrote is read before the pid is asked about.
        let states = [
            JobState::Running { job_id: recycled.clone() },
            JobState::Queued { job_id: recycled.clone() },
            JobState::Running { job_id: pid.clone() },
        ];
        let restored = SchedulerProcess::restore(job.clone(), c.clone(), states[2].clone());
        let follower = spawn_owned(&local, restored, DriveMode::Step);
        follower.nudge().await.unwrap();
        wait_for("the next state", &follower, |s| !matches!(s, JobState::Running { .. })).await;
        assert!(matches!(follower.state(), JobState::Retrieving { .. }), "{:?}", follower.state());
        drop(follower);
        for state in states {
            let restored =
                spawn_owned(&local, SchedulerProcess::restore(job.clone(), c.clone(), state), DriveMode::Step);
            restored.kill().await.unwrap();
            assert!(
                matches!(restored.state(), JobState::Killed { cancel_pending: false, .. }),
                "{:?}",
                restored.state()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(alive(), "kill reached a process that only has the job's old pid");
        }
        let _ = std::process::Command::new("kill").arg(&pid).status();
    });
}

/// The ssh processes that use the control directory `dir` (masters, and an
/// ssh still starting one).
fn masters(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("pgrep").args(["-f", &format!("^ssh .*-S {}/", dir.display())]).output();
    String::from_utf8_lossy(&out.unwrap().stdout).split_whitespace().map(str::to_owned).collect()
}

/// The TCP connections process `pid` holds to the test sshd.
fn connections_of(pid: &str) -> usize {
    let out = std::process::Command::new("ss").args(["-Htnp", "state", "established", "dport", "= :2222"]).output();
    let text = String::from_utf8_lossy(&out.unwrap().stdout).into_owned();
    text.lines().filter(|l| l.contains(&format!("pid={pid},"))).count()
}

#[test]
fn engines_killed_during_slurm_jobs_leave_one_ssh_connection_behind() {
    services_up();
    let control = tempfile::tempdir().unwrap();
    let dir = control.path().join("ctl");
    let tag = unique("killed");
    let mut slurm_ids = Vec::new();
    let mut seen = Vec::new();
    for round in 0..5 {
        let mut engine = std::process::Command::new(env!("CARGO_BIN_EXE_ssh-engine"))
            .args([SSH_HOST, dir.to_str().unwrap(), "drover-tests", &format!("{tag}-{round}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Killed while its job runs, between two polls.
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(engine.stdout.take().unwrap()));
        let line = lines.next().expect("the engine ended before its job ran").unwrap();
        let id = line.strip_prefix("running ").unwrap_or_else(|| panic!("{line}")).to_owned();
        slurm_ids.push(id);
        std::thread::sleep(Duration::from_millis(1200));
        engine.kill().unwrap();
        engine.wait().unwrap();
        let now = masters(&dir);
        assert_eq!(now.len(), 1, "round {round}: ssh masters {now:?}");
        seen.extend(now);
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "a restarted engine started a master of its own instead of joining: {seen:?}");
    assert_eq!(connections_of(&seen[0]), 1, "the master holds one connection to the login node");
    let cancel = std::process::Command::new("scancel").args(&slurm_ids).status().unwrap();
    assert!(cancel.success());
    for pid in seen {
        let _ = std::process::Command::new("kill").arg(pid).status();
    }
}

#[test]
fn a_master_nobody_uses_ends_by_itself_and_the_control_directory_is_checked() {
    test(|_| async move {
        let control = tempfile::tempdir().unwrap();
        let dir = control.path().join("ctl");
        let mut config = SshConfig::new(SSH_HOST);
        config.control_dir = Some(dir.clone());
        config.idle_timeout = Duration::from_secs(2);
        let ssh = Ssh::new(config.clone());
        assert_eq!(ssh.run("echo hi").await.unwrap().stdout, "hi\n");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(masters(&dir).len(), 1);
        // A second transport (another engine) joins it.
        let other = Ssh::new(config.clone());
        other.run("true").await.unwrap();
        assert_eq!(masters(&dir).len(), 1);
        drop((ssh, other));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !masters(&dir).is_empty() {
            assert!(Instant::now() < deadline, "the idle master never ended: {:?}", masters(&dir));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // A control directory another user owns, or others may write to, is refused.
        let theirs = control.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(1001), None).unwrap();
        let open = control.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        for (bad, needle) in [(theirs, "is owned by uid 1001"), (open, "writable by others")] {
            let mut config = config.clone();
            config.control_dir = Some(bad);
            let e = Ssh::new(config).run("true").await.unwrap_err();
            assert!(
                matches!(&e, drover_scheduler::TransportError::Refused { message, .. } if message.contains(needle)),
                "{e}"
            );
        }
    });
}

#[test]
fn retrieval_takes_regular_files_only_within_the_job_s_limit() {
    // What a job (or whoever can write its directory) may leave where its
    // outputs are: a FIFO (opening it would wait for ever), a link to
    // /dev/zero (copying it would fill the disk), a file over the limit.
    test(|local| async move {
        let dir = tempfile::tempdir().unwrap();
        let script = "mkfifo fifo && ln -s /dev/zero zero && head -c 3145728 /dev/zero > big && echo done";
        let cases = [
            ("fifo", Via::Ssh, "not a regular file"),
            ("zero", Via::Local, "not a regular file"),
            ("big", Via::Ssh, "bytes, more than the"),
        ];
        let mut running = Vec::new();
        for (file, via, _) in cases {
            let mut job = spec(&unique(file), "sh", &["-c", script], &dir.path().join(file));
            job.retrieve = vec![file.into()];
            job.retrieve_limit = Some(1 << 20);
            running.push(launch(&local, job, &computer(via, AnyScheduler::Slurm(Slurm::new()))));
        }
        for (h, (file, via, expected)) in running.into_iter().zip(cases) {
            let state = tokio::time::timeout(Duration::from_secs(120), finish(h)).await.expect("retrieval hung");
            match &state {
                JobState::Failed { reason, .. } => {
                    assert!(reason.contains(file) && reason.contains(expected), "{via:?} {file}: {reason}");
                }
                other => panic!("{via:?} {file}: {other:?}"),
            }
            let local_copy = dir.path().join(file).join(file);
            assert!(std::fs::metadata(&local_copy).map_or(true, |m| m.len() <= 1 << 20), "{file} was copied whole");
            // The job's own output came back within the limit.
            assert_eq!(std::fs::read_to_string(dir.path().join(file).join("stdout.txt")).unwrap(), "done\n");
        }
    });
}
