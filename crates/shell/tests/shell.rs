//! Shell processes against real child processes.

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use drover_core::{DriveMode, Process, ProcessHandler, spawn_owned};
use drover_shell::{Governor, Input, Limits, Output, ShellProcess, ShellSpec, ShellState};
use tokio::task::LocalSet;

type Handler = ProcessHandler<ShellState, ShellProcess>;

fn launch(local: &LocalSet, spec: ShellSpec, governor: &Governor) -> Handler {
    let h = spawn_owned(local, ShellProcess::new(spec, governor.clone()), DriveMode::FireAndForget);
    h.try_nudge().unwrap();
    h
}

async fn finish(h: Handler) -> ShellState {
    h.join().await.unwrap().state().clone()
}

fn test<F: std::future::Future>(f: impl FnOnce(Rc<LocalSet>) -> F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    local.block_on(&rt, f(local.clone()))
}

/// Processes of process group `pgid` that are still alive (not zombies).
fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields[0].chars().next().unwrap();
        if fields[2].parse::<u32>().ok() == Some(pgid) && state != 'Z' {
            members.push((pid, state));
        }
    }
    members
}

/// Asserts that nothing of group `pgid` is left alive. SIGKILL takes a moment
/// to land: a process that got it may still show as running for a few
/// milliseconds, so this looks for up to two seconds.
fn assert_group_gone(pgid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !group_members(pgid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(group_members(pgid), vec![], "a process of the group is left");
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn running_pid(h: &Handler) -> Option<u32> {
    match h.state() {
        ShellState::Running { pid, .. } => Some(pid),
        _ => None,
    }
}

#[test]
fn runs_a_program_with_its_arguments_environment_cwd_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "from a file\n").unwrap();
    test(|local| async move {
        let g = Governor::new(4);
        let tricky = "it's a \"quoted\" $(echo no) ; arg\nwith a newline and ünïcödé";
        let spec = ShellSpec::program(
            "sh",
            [
                "-c",
                r#"printf '%s|' "$@"; printf '%s|%s|%s|' "$KEEP" "${GONE-unset}" "$PWD"; cat"#,
                "sh",
                tricky,
                "two words",
            ],
        )
        .with_cwd(dir.path())
        .with_env("KEEP", "kept value; $(not run)")
        .without_env("HOME")
        .with_stdin(Input::Bytes(b"from bytes".to_vec()))
        .with_stdout(Output::File("out.txt".into()))
        .with_stderr(Output::File(dir.path().join("err.txt")));
        let mut spec = spec;
        spec.env.set.insert("GONE".into(), "x".into());
        spec.env.remove.push("GONE".into());
        spec.env.set.remove("GONE");
        assert!(finish(launch(&local, spec, &g)).await.succeeded());
        let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("out.txt")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an output file is private to its owner");
        let cwd = dir.path().canonicalize().unwrap();
        assert_eq!(out, format!("{tricky}|two words|kept value; $(not run)|unset|{}|from bytes", cwd.display()));

        // stdin from a file, stderr appended, a clear environment.
        let spec = ShellSpec::program("/bin/sh", ["-c", "cat; echo \"${HOME-nohome}\" >&2; echo second >&2"])
            .with_cwd(dir.path())
            .with_clear_env()
            .with_stdin(Input::File("in.txt".into()))
            .with_stdout(Output::Append("out.txt".into()))
            .with_stderr(Output::Append("err.txt".into()));
        assert!(finish(launch(&local, spec, &g)).await.succeeded());
        let out = std::fs::read_to_string(dir.path().join("out.txt")).unwrap();
        assert!(out.ends_with("from bytesfrom a file\n"), "{out:?}");
        assert_eq!(std::fs::read_to_string(dir.path().join("err.txt")).unwrap(), "nohome\nsecond\n");
    });
}

#[test]
fn a_non_zero_exit_code_is_finished_with_that_code() {
    test(|local| async move {
        let g = Governor::new(2);
        let state = finish(launch(&local, ShellSpec::script("exit 42"), &g)).await;
        assert!(matches!(state, ShellState::Finished { exit_code: 42, .. }), "{state:?}");
        assert!(!state.succeeded());
        let state = finish(launch(&local, ShellSpec::script("kill -SEGV $$"), &g)).await;
        assert!(matches!(&state, ShellState::Failed { reason } if reason.contains("SIGSEGV")), "{state:?}");
    });
}

#[test]
fn pause_stops_the_whole_group_and_resume_continues_it() {
    test(|local| async move {
        let g = Governor::new(2);
        let h = launch(&local, ShellSpec::script("sleep 1000 & sleep 1000; wait"), &g);
        wait_until("running", || running_pid(&h).is_some()).await;
        let pgid = running_pid(&h).unwrap();
        wait_until("both sleeps started", || group_members(pgid).len() == 3).await;

        h.pause().await.unwrap();
        assert!(matches!(h.state(), ShellState::Paused { pid, .. } if pid == pgid));
        wait_until("all stopped", || group_members(pgid).iter().all(|(_, s)| *s == 'T')).await;
        assert_eq!(g.running(), 1, "a paused child keeps its slot");

        h.resume().unwrap();
        wait_until("all continued", || group_members(pgid).iter().all(|(_, s)| *s != 'T')).await;
        assert!(matches!(h.state(), ShellState::Running { .. }));

        // Kill while paused works too: SIGTERM reaches a stopped group.
        h.pause().await.unwrap();
        h.kill().await.unwrap();
        assert_eq!(h.state(), ShellState::Killed);
        assert_group_gone(pgid);
        assert_eq!(g.running(), 0);
    });
}

#[test]
fn kill_leaves_no_orphans() {
    test(|local| async move {
        let g = Governor::new(2);
        let h = launch(&local, ShellSpec::program("sh", ["-c", "sleep 1000 & sleep 1000"]), &g);
        wait_until("running", || running_pid(&h).is_some()).await;
        let pgid = running_pid(&h).unwrap();
        wait_until("both sleeps started", || group_members(pgid).len() == 3).await;
        let started = Instant::now();
        h.kill().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2), "sleep obeys SIGTERM: no grace period needed");
        assert_group_gone(pgid);
        assert_eq!(finish(h).await, ShellState::Killed);
    });
}

#[test]
fn a_tree_that_ignores_sigterm_is_killed_after_the_grace_period() {
    test(|local| async move {
        let g = Governor::new(2);
        let spec =
            ShellSpec::script("trap '' TERM; sleep 1000 & sleep 1000").with_kill_grace(Duration::from_millis(300));
        let h = launch(&local, spec, &g);
        wait_until("running", || running_pid(&h).is_some()).await;
        let pgid = running_pid(&h).unwrap();
        wait_until("both sleeps started", || group_members(pgid).len() == 3).await;
        h.kill().await.unwrap();
        assert_group_gone(pgid);
    });
}

#[test]
fn leftovers_of_a_finished_command_are_ended() {
    test(|local| async move {
        let g = Governor::new(2);
        let h = launch(&local, ShellSpec::script("sleep 1000 & echo started"), &g);
        let mut rx = h.subscribe();
        let mut pgid = None;
        while rx.changed().await.is_ok() {
            if let ShellState::Running { pid, .. } = *rx.borrow() {
                pgid = Some(pid);
            }
        }
        assert!(h.state().succeeded());
        assert_group_gone(pgid.unwrap());
    });
}

#[test]
fn a_timeout_ends_the_tree_and_fails_the_process() {
    test(|local| async move {
        let g = Governor::new(2);
        let spec = ShellSpec::script("sleep 1000 & sleep 1000").with_timeout(Duration::from_millis(300));
        let h = launch(&local, spec, &g);
        wait_until("running", || running_pid(&h).is_some()).await;
        let pgid = running_pid(&h).unwrap();
        let state = finish(h).await;
        assert!(matches!(&state, ShellState::Failed { reason } if reason.contains("timed out")), "{state:?}");
        assert_group_gone(pgid);
    });
}

#[test]
fn time_spent_paused_does_not_count_against_the_timeout() {
    test(|local| async move {
        let g = Governor::new(2);
        let spec = ShellSpec::program("sleep", ["0.6"]).with_timeout(Duration::from_millis(1500));
        let h = launch(&local, spec, &g);
        wait_until("running", || running_pid(&h).is_some()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.pause().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2000)).await;
        h.resume().unwrap();
        let state = finish(h).await;
        assert!(state.succeeded(), "{state:?}");
    });
}

#[test]
fn the_governor_caps_running_children_and_admits_in_fifo_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order.txt");
    test(|local| async move {
        let g = Governor::new(2);
        let handlers: Vec<_> = (0..8)
            .map(|i| {
                let spec = ShellSpec::script(format!("echo {i} >> '{}'; sleep 0.15", log.display()));
                launch(&local, spec, &g)
            })
            .collect();
        let mut most = 0;
        while handlers.iter().any(|h| !h.is_done()) {
            let running = handlers.iter().filter(|h| matches!(h.state(), ShellState::Running { .. })).count();
            most = most.max(running);
            assert!(g.running() <= 2);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(most, 2);
        for h in handlers {
            assert!(finish(h).await.succeeded());
        }
        let order = std::fs::read_to_string(&log).unwrap();
        let order: Vec<u32> = order.lines().map(|l| l.parse().unwrap()).collect();
        // Two at a time start together; pairs are admitted in order.
        for pair in order.chunks(2).enumerate() {
            let mut got = pair.1.to_vec();
            got.sort();
            assert_eq!(got, vec![2 * pair.0 as u32, 2 * pair.0 as u32 + 1], "{order:?}");
        }
    });
}

#[test]
fn a_killed_queued_process_never_starts_and_a_paused_one_waits() {
    let dir = tempfile::tempdir().unwrap();
    let killed_marker = dir.path().join("killed-ran");
    let paused_marker = dir.path().join("paused-ran");
    test(|local| async move {
        let g = Governor::new(1);
        let first = launch(&local, ShellSpec::program("sleep", ["0.3"]), &g);
        let killed = launch(&local, ShellSpec::program("touch", [killed_marker.to_str().unwrap()]), &g);
        let paused = launch(&local, ShellSpec::program("touch", [paused_marker.to_str().unwrap()]), &g);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(g.waiting(), 2);
        killed.kill().await.unwrap();
        paused.pause().await.unwrap();
        assert_eq!(g.waiting(), 0);
        assert!(finish(first).await.succeeded());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(paused.state(), ShellState::Queued);
        assert!(!paused_marker.exists());
        paused.resume().unwrap();
        assert!(finish(paused).await.succeeded());
        assert!(paused_marker.exists());
        assert_eq!(finish(killed).await, ShellState::Killed);
        assert!(!killed_marker.exists(), "a killed queued process ran");
    });
}

#[test]
fn the_memory_guard_holds_children_back() {
    test(|local| async move {
        // No machine has u64::MAX bytes available: nothing may start.
        let g = Governor::with_memory_guard(2, u64::MAX);
        let h = launch(&local, ShellSpec::program("true", Vec::<String>::new()), &g);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(h.state(), ShellState::Queued);
        h.kill().await.unwrap();
        // A threshold the machine meets lets it run.
        let g = Governor::with_memory_guard(2, 1);
        assert!(finish(launch(&local, ShellSpec::program("true", Vec::<String>::new()), &g)).await.succeeded());
    });
}

#[test]
fn per_child_limits_apply_before_exec() {
    test(|local| async move {
        let g = Governor::new(2);
        let spec =
            ShellSpec::script("while :; do :; done").with_limits(Limits { cpu_seconds: Some(1), address_space: None });
        let state = finish(launch(&local, spec, &g)).await;
        assert!(
            matches!(&state, ShellState::Failed { reason } if reason.contains("SIGXCPU") || reason.contains("SIGKILL")),
            "{state:?}"
        );

        let spec = ShellSpec::program("python3", ["-c", "bytearray(512 * 1024 * 1024)"])
            .with_limits(Limits { cpu_seconds: None, address_space: Some(256 * 1024 * 1024) });
        let state = finish(launch(&local, spec, &g)).await;
        assert!(matches!(state, ShellState::Finished { exit_code: 1, .. }), "MemoryError expected: {state:?}");
    });
}

#[test]
fn bad_input_fails_only_the_process_concerned_and_names_the_problem() {
    bad_input_fails_only_the_process_concerned(false);
}

/// The same through the shepherd, which opens the outputs and makes the
/// record: the messages are the same, and no record says a command that did
/// not start started.
#[test]
fn bad_input_fails_a_durable_process_the_same_and_leaves_no_record() {
    bad_input_fails_only_the_process_concerned(true);
}

fn bad_input_fails_only_the_process_concerned(durable: bool) {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records");
    let not_exec = dir.path().join("script.sh");
    std::fs::write(&not_exec, "#!/bin/sh\necho hi\n").unwrap();
    let missing_dir = dir.path().join("no/such/dir");
    let unwritable = dir.path().join("no-such-dir/out.txt");
    let missing_input = dir.path().join("missing-input.txt");
    // A link planted where an output goes, to a file of someone else's choosing.
    let precious = dir.path().join("precious.txt");
    std::fs::write(&precious, "keep me\n").unwrap();
    let planted = dir.path().join("planted.out");
    std::os::unix::fs::symlink(&precious, &planted).unwrap();
    let planted_err = planted.clone();
    test(|local| async move {
        let g = Governor::new(2);
        let cases: Vec<(ShellSpec, String)> = vec![
            (ShellSpec::program("no-such-program-drover", ["x"]), "program `no-such-program-drover` not found".into()),
            (ShellSpec::program("./no/such/program", ["x"]), "program `./no/such/program` not found".into()),
            (
                ShellSpec::program(not_exec.to_str().unwrap(), ["x"]),
                format!("`{}` is not executable", not_exec.display()),
            ),
            (
                ShellSpec::program("true", ["x"]).with_cwd(&missing_dir),
                format!("working directory `{}` does not exist", missing_dir.display()),
            ),
            (
                ShellSpec::program("true", ["x"]).with_stdout(Output::File(unwritable.clone())),
                format!("cannot open standard output file `{}`", unwritable.display()),
            ),
            (
                ShellSpec::program("true", ["x"]).with_stdout(Output::File(planted.clone())),
                format!("cannot open standard output file `{}`: it is a symbolic link", planted.display()),
            ),
            (
                ShellSpec::program("true", ["x"]).with_stderr(Output::Append(planted_err.clone())),
                "it is a symbolic link".to_owned(),
            ),
            (
                ShellSpec::program("true", ["x"]).with_stdin(Input::File(missing_input.clone())),
                format!("cannot open standard input file `{}`", missing_input.display()),
            ),
        ];
        let start = |n: usize, spec: ShellSpec| {
            if !durable {
                return launch(&local, spec, &g);
            }
            let process = ShellProcess::durable(spec, g.clone(), records.join(n.to_string()));
            let h = spawn_owned(&local, process, DriveMode::FireAndForget);
            h.try_nudge().unwrap();
            h
        };
        let good = start(0, ShellSpec::program("sh", ["-c", "sleep 0.2; exit 0"]));
        let bad: Vec<_> = cases.into_iter().enumerate().map(|(n, (spec, msg))| (start(n + 1, spec), msg)).collect();
        for (h, expected) in bad {
            let state = finish(h).await;
            match state {
                ShellState::Failed { reason } => assert!(reason.contains(&expected), "{reason:?} lacks {expected:?}"),
                other => panic!("expected Failed containing {expected:?}, got {other:?}"),
            }
        }
        assert!(finish(good).await.succeeded());
        assert!(!Path::new(&unwritable).exists());
        if durable {
            let left: Vec<_> = std::fs::read_dir(&records).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(left, ["0"], "only the good process's record");
        }
    });
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n", "written through the planted link");
}

#[test]
fn pause_and_kill_reach_any_of_10000_queued_processes_at_once() {
    test(|local| async move {
        let g = Governor::new(1);
        let blocker = launch(&local, ShellSpec::program("sleep", ["1000"]), &g);
        wait_until("the blocker runs", || running_pid(&blocker).is_some()).await;
        let queued: Vec<_> =
            (0..10_000).map(|_| launch(&local, ShellSpec::program("true", Vec::<String>::new()), &g)).collect();
        wait_until("all queued", || g.waiting() == 10_000).await;

        let started = Instant::now();
        queued[7_777].pause().await.unwrap();
        let pause = started.elapsed();
        let started = Instant::now();
        queued[4_242].kill().await.unwrap();
        let kill = started.elapsed();
        // Generous bounds for a shared machine; the benchmark reports the figure.
        assert!(pause < Duration::from_millis(500), "pause took {pause:?}");
        assert!(kill < Duration::from_millis(500), "kill took {kill:?}");
        assert_eq!(g.waiting(), 9_998);

        for h in &queued {
            let _ = h.kill().await;
        }
        blocker.kill().await.unwrap();
        assert_eq!(g.running(), 0);
    });
}

// --- Durable processes: re-attached after the engine restarts ---------------

/// Runs `f` on a fresh runtime and `LocalSet`, then drops both, as an engine
/// that stops (or crashes) would: durable children stay alive.
fn engine_life<F: std::future::Future>(f: impl FnOnce(Rc<LocalSet>) -> F) -> F::Output {
    test(f)
}

/// A first engine life: starts a durable process with one step (its record
/// is made, then the child starts), leaves it running, and goes away.
/// Returns the state a store would hold.
fn first_life(spec: &ShellSpec, governor: &Governor, run_dir: &Path) -> ShellState {
    let (spec, governor, run_dir) = (spec.clone(), governor.clone(), run_dir.to_owned());
    engine_life(|local| async move {
        let h = spawn_owned(&local, ShellProcess::durable(spec, governor, run_dir), DriveMode::Step);
        h.nudge().await.unwrap();
        wait_until("running", || running_pid(&h).is_some()).await;
        h.state()
    })
}

fn marker_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn a_durable_child_outlives_its_engine_and_is_reattached() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let marker = dir.path().join("marker");
    let spec = ShellSpec::script(format!("echo ran >> '{}'; sleep 1; exit 4", marker.display()));
    let governor = Governor::new(2);

    // First engine: starts the child, then goes away mid-run.
    let running = first_life(&spec, &governor, &run_dir);
    let ShellState::Running { pid, .. } = running else { panic!("{running:?}") };
    assert!(!group_members(pid).is_empty(), "the child survives its engine");

    // Second engine: restores the recorded state and re-attaches.
    let state = engine_life(|local| async move {
        let proc = ShellProcess::restore(spec, governor, run_dir, running);
        finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()).await
    });
    assert!(matches!(state, ShellState::Finished { exit_code: 4, .. }), "{state:?}");
    assert_eq!(marker_lines(&marker), 1, "the command ran twice");
    assert_group_gone(pid);
}

#[test]
fn a_restart_before_running_was_recorded_adopts_the_child_instead_of_starting_it_again() {
    // The engine started the child and crashed before it recorded `Running`:
    // the store says `Queued` (or `Starting`, from an older drover).
    for recorded in [ShellState::Queued, ShellState::Starting] {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        let marker = dir.path().join("marker");
        let spec = ShellSpec::script(format!("echo ran >> '{}'; sleep 0.5; exit 0", marker.display()));
        let governor = Governor::new(2);
        first_life(&spec, &governor, &run_dir);
        let label = format!("{recorded:?}");
        let state = engine_life(|local| async move {
            let proc = ShellProcess::restore(spec, governor, run_dir, recorded);
            finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()).await
        });
        assert!(state.succeeded(), "{label}: {state:?}");
        assert_eq!(marker_lines(&marker), 1, "{label}: the command ran twice");
    }
}

#[test]
fn a_restored_child_killed_before_it_was_re_attached_ends_with_its_tree() {
    // Recorded `Queued`, running already: a kill before the next step still
    // finds it by its record.
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let spec = ShellSpec::script("sleep 1000 & sleep 1000");
    let governor = Governor::new(2);
    let running = first_life(&spec, &governor, &run_dir);
    let ShellState::Running { pid, .. } = running else { panic!("{running:?}") };
    engine_life(|local| async move {
        let h =
            spawn_owned(&local, ShellProcess::restore(spec, governor, run_dir, ShellState::Queued), DriveMode::Step);
        h.kill().await.unwrap();
        assert_eq!(h.state(), ShellState::Killed);
    });
    assert_group_gone(pid);
}

#[test]
fn a_child_that_ended_while_no_engine_watched_reports_its_recorded_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let spec = ShellSpec::script("exit 9");
    let governor = Governor::new(2);
    let running = first_life(&spec, &governor, &run_dir);
    // Long enough for the child to end while nobody watches.
    std::thread::sleep(Duration::from_millis(300));
    let state = engine_life(|local| async move {
        let proc = ShellProcess::restore(spec, governor, run_dir, running);
        finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()).await
    });
    assert!(matches!(state, ShellState::Finished { exit_code: 9, .. }), "{state:?}");
}

#[test]
fn a_restored_running_child_can_be_killed() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let spec = ShellSpec::script("sleep 1000 & sleep 1000");
    let governor = Governor::new(2);
    let running = first_life(&spec, &governor, &run_dir);
    let ShellState::Running { pid, .. } = running else { panic!("{running:?}") };
    // The command's shell and its two sleeps.
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_members(pid).len() < 3 {
        assert!(Instant::now() < deadline, "the tree never started: {:?}", group_members(pid));
        std::thread::sleep(Duration::from_millis(5));
    }
    engine_life(|local| async move {
        let h = spawn_owned(&local, ShellProcess::restore(spec, governor, run_dir, running), DriveMode::Step);
        h.kill().await.unwrap();
        assert_eq!(h.state(), ShellState::Killed);
    });
    assert_group_gone(pid);
}

/// An unrelated process group, as another user's program that got a
/// recorded pid after a reboot would be: `sleep 60` leading its own group.
fn unrelated_group() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    #[allow(clippy::disallowed_methods)] // the test's own bystander, not drover's child
    let child = std::process::Command::new("sleep").arg("60").process_group(0).spawn().unwrap();
    child
}

#[test]
fn a_recycled_pid_is_never_adopted_paused_or_killed() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let spec = ShellSpec::script("sleep 1000");
    let governor = Governor::new(2);
    let running = first_life(&spec, &governor, &run_dir);
    let ShellState::Running { pid, started_at, identity } = running else { panic!("{running:?}") };
    let identity = identity.expect("a started child's identity is recorded");
    // The machine "reboots": the supervisor and its command die, without an
    // exit code, and an unrelated group gets a pid drover recorded.
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    assert_group_gone(pid);
    // The shepherd, which outlived the "reboot" here, records the end; the
    // record is then rewritten as a reboot leaves it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while marker_lines(&run_dir) < 2 {
        assert!(Instant::now() < deadline, "the end was never recorded");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut bystander = unrelated_group();
    let other = bystander.id();
    std::fs::write(&run_dir, format!("{other}\n")).unwrap();
    let before_it = std::fs::File::options().write(true).open(&run_dir).unwrap();
    before_it.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();
    drop(before_it);

    // Recorded with its identity (version 3), or without (version 2: the pid
    // file's time tells), or only as `Starting`: each is killed, paused and
    // resumed without a signal reaching the bystander, and none adopts it.
    let states = [
        ShellState::Running { pid: other, started_at, identity: Some(identity.clone()) },
        ShellState::Running { pid: other, started_at, identity: None },
        ShellState::Paused { pid: other, started_at, identity: Some(identity) },
    ];
    for state in states {
        let (spec, governor, run_dir) = (spec.clone(), governor.clone(), run_dir.clone());
        let label = format!("{state:?}");
        engine_life(|local| async move {
            let h = spawn_owned(&local, ShellProcess::restore(spec, governor, run_dir, state), DriveMode::Step);
            if h.is_paused() {
                h.resume().unwrap();
            } else {
                h.pause().await.unwrap();
                h.resume().unwrap();
            }
            h.kill().await.unwrap();
            assert_eq!(h.state(), ShellState::Killed);
        });
        let stat = std::fs::read_to_string(format!("/proc/{other}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        assert!(after.starts_with(['S', 'R', 'D']), "{label}: the bystander was stopped or killed: {stat}");
    }
    for state in [ShellState::Running { pid: other, started_at, identity: None }, ShellState::Starting] {
        let (spec, governor, run_dir) = (spec.clone(), governor.clone(), run_dir.clone());
        let ended = engine_life(|local| async move {
            let proc = ShellProcess::restore(spec, governor, run_dir, state);
            tokio::time::timeout(
                Duration::from_secs(10),
                finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()),
            )
            .await
            .expect("it does not wait for the bystander")
        });
        assert!(
            matches!(&ended, ShellState::Failed { reason } if reason.contains("without an exit code")),
            "{ended:?}"
        );
    }
    assert!(bystander.try_wait().unwrap().is_none(), "the bystander was ended");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn a_start_whose_record_was_lost_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A record without its pid line, and an older drover's directory of one.
    let file = dir.path().join("run");
    std::fs::write(&file, "").unwrap();
    let old = dir.path().join("old");
    std::fs::create_dir_all(old.join("started")).unwrap();
    for run_dir in [file, old] {
        let state = engine_life(|local| async move {
            let proc =
                ShellProcess::restore(ShellSpec::script("exit 0"), Governor::new(1), run_dir, ShellState::Starting);
            finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()).await
        });
        assert!(
            matches!(&state, ShellState::Failed { reason } if reason.contains("without an exit code")),
            "{state:?}"
        );
    }
}

#[test]
fn a_record_an_older_drover_left_is_read_as_it_was() {
    // A supervisor of the layout before one record file: a directory with
    // `started`, `pid` and `exit`; its command ran and exited 6.
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(run_dir.join("started")).unwrap();
    std::fs::write(run_dir.join("pid"), "1\n").unwrap();
    std::fs::write(run_dir.join("exit"), "6\n").unwrap();
    let marker = dir.path().join("ran");
    let spec = ShellSpec::script(format!("touch '{}'", marker.display()));
    let running = ShellState::Running { pid: 1, started_at: std::time::SystemTime::now(), identity: None };
    let state = engine_life(|local| async move {
        let proc = ShellProcess::restore(spec, Governor::new(1), run_dir, running);
        finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()).await
    });
    assert!(matches!(state, ShellState::Finished { exit_code: 6, .. }), "{state:?}");
    assert!(!marker.exists(), "the command ran again");
}

#[test]
fn a_durable_job_makes_one_record_file() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("records/run");
    let spec = ShellSpec::script("exit 5");
    let governor = Governor::new(1);
    let state = engine_life(|local| async move {
        let proc = ShellProcess::durable(spec, governor, run_dir.clone());
        let state = finish(spawn_owned(&local, proc, DriveMode::FireAndForget).tap_nudge()).await;
        assert!(run_dir.is_file(), "the record is one file");
        // The shepherd tells the engine of the end first, then records it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while marker_lines(&run_dir) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let record = std::fs::read_to_string(&run_dir).unwrap();
        let lines: Vec<&str> = record.lines().collect();
        assert_eq!(lines.len(), 2, "{record:?}");
        // The pid (padded with spaces: the room taken before it was known), then the exit code.
        assert!(lines[0].trim_end().parse::<u32>().is_ok(), "{record:?}");
        assert_eq!(lines[1], "5");
        state
    });
    assert!(matches!(state, ShellState::Finished { exit_code: 5, .. }), "{state:?}");
    let entries: Vec<_> = std::fs::read_dir(dir.path().join("records")).unwrap().collect();
    assert_eq!(entries.len(), 1, "one file per durable job");
}

trait TapNudge {
    fn tap_nudge(self) -> Self;
}

impl TapNudge for Handler {
    fn tap_nudge(self) -> Self {
        self.try_nudge().unwrap();
        self
    }
}

#[test]
fn children_keep_the_open_files_limit_the_engine_raised_its_own_from() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard > 256, "a hard limit of {hard} leaves nothing to raise");
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    assert_eq!(drover_shell::raise_open_files_limit().unwrap(), Some((256, hard)));
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, hard, "the engine's own limit is raised");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("limit");
    test(|local| async move {
        let g = Governor::new(1);
        let spec = ShellSpec::script("ulimit -n").with_stdout(Output::File(out.clone()));
        assert!(finish(launch(&local, spec, &g)).await.succeeded());
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "256", "a child inherited the raised limit");
    });
}
