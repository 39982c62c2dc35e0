//! The crash harness: an engine running 200 mixed processes (shell, and SLURM
//! jobs over SSH) is killed with SIGKILL at random moments, at least ten
//! times, submits included, and restarted each time. Then: every process
//! reached the state it would have reached without crashes, no SLURM job was
//! submitted twice, no shell command ran twice, no output was lost.
//!
//! Needs the test services (`scripts/services/all.sh start`).

#![allow(clippy::disallowed_methods)] // the harness starts and kills the engine itself

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_scheduler::JobState;
use drover_shell::ShellState;
use drover_store::{Store, decode};

const SHELL_JOBS: usize = 150;
const SLURM_JOBS: usize = 50;
const KILLS: usize = 12;

fn services_up() {
    let ok = |cmd: &str| Command::new("sh").args(["-c", cmd]).output().map(|o| o.status.success()).unwrap_or(false);
    assert!(
        ok("ssh -o BatchMode=yes -o ConnectTimeout=5 drover-test-host true") && ok("scontrol ping | grep -q UP"),
        "sshd and SLURM for tests are not running: run `scripts/services/all.sh start` (the README's test command does)"
    );
}

/// A small deterministic generator, seeded from the clock (printed, to replay).
struct Lcg(u64);

impl Lcg {
    fn next_ms(&mut self, min: u64, max: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        min + (self.0 >> 33) % (max - min)
    }
}

#[test]
fn an_engine_killed_at_random_moments_finishes_everything_exactly_once() {
    services_up();
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let tag = format!("c{}", std::process::id());
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Lcg(seed);
    let engine = |_: ()| {
        Command::new(env!("CARGO_BIN_EXE_crash-engine"))
            .args([
                store_path.to_str().unwrap(),
                work.to_str().unwrap(),
                &tag,
                &SHELL_JOBS.to_string(),
                &SLURM_JOBS.to_string(),
            ])
            .spawn()
            .expect("start the engine")
    };

    let mut kills = 0;
    while kills < KILLS {
        let mut child = engine(());
        // The first kills land early, in the submissions (store inserts,
        // `sbatch`); later ones anywhere in the runs.
        let after = Duration::from_millis(if kills < 4 { rng.next_ms(150, 700) } else { rng.next_ms(150, 2500) });
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_some() {
            break; // it finished before this kill
        }
        // SAFETY: kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        child.wait().unwrap();
        kills += 1;
        println!("killed the engine after {after:?} ({kills})");
    }
    assert!(kills >= 10, "the engine finished before it could be killed ten times");

    let started = Instant::now();
    let mut last = engine(());
    let status = loop {
        if let Some(status) = last.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = last.kill();
            panic!("the last engine did not finish in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the last engine reported failures");

    // Every process reached its end, successfully.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = Store::open(store_path.to_str().unwrap()).await.unwrap();
        assert_eq!(store.count().await.unwrap(), (SHELL_JOBS + SLURM_JOBS) as i64);
        assert!(store.unfinished().await.unwrap().is_empty());
        for i in 0..SHELL_JOBS {
            let p = store.get(&format!("s{i}")).await.unwrap().unwrap();
            let state: ShellState = decode(&p.checkpoint).unwrap();
            assert!(state.succeeded(), "s{i}: {state:?}");
        }
        for i in 0..SLURM_JOBS {
            let p = store.get(&format!("j{i}")).await.unwrap().unwrap();
            let state: JobState = decode(&p.checkpoint).unwrap();
            assert!(state.succeeded(), "j{i}: {state:?}");
        }
    });

    // No shell command ran twice, none was lost.
    let marker = std::fs::read_to_string(work.join("marker")).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in marker.lines() {
        *runs.entry(line).or_default() += 1;
    }
    for i in 0..SHELL_JOBS {
        assert_eq!(
            runs.get(format!("s{i}").as_str()),
            Some(&1),
            "s{i} ran {:?} times",
            runs.get(format!("s{i}").as_str())
        );
    }

    // No SLURM job was submitted twice; every output came back.
    let out = Command::new("squeue").args(["--states=all", "--noheader", "--format=%j"]).output().unwrap();
    let names = String::from_utf8_lossy(&out.stdout);
    let mut submitted: HashMap<&str, usize> = HashMap::new();
    for name in names.lines().map(str::trim).filter(|n| n.starts_with(&format!("drover-{tag}-"))) {
        *submitted.entry(name).or_default() += 1;
    }
    for i in 0..SLURM_JOBS {
        let name = format!("drover-{tag}-j{i}");
        assert_eq!(
            submitted.get(name.as_str()),
            Some(&1),
            "{name} was submitted {:?} times",
            submitted.get(name.as_str())
        );
        let stdout = std::fs::read_to_string(work.join("slurm").join(format!("j{i}")).join("stdout.txt")).unwrap();
        assert_eq!(stdout, format!("j{i}\n"));
    }
    println!("{kills} kills; all {} processes ended once, correctly", SHELL_JOBS + SLURM_JOBS);
}

const CHILDREN: usize = 200;

/// A group fanning out to 200 shell children, two per checkpoint, is killed
/// with SIGKILL again and again, mostly in the middle of its fan-out: in the
/// end there is exactly one record of each child, with its parent, and each
/// child's command ran exactly once.
#[test]
fn a_fan_out_killed_in_the_middle_spawns_each_child_once() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store.db");
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("seed {seed}");
    let mut rng = Lcg(seed);
    let engine = || {
        Command::new(env!("CARGO_BIN_EXE_crash-engine"))
            .args([store_path.to_str().unwrap(), work.to_str().unwrap(), "fan", "0", "0", &CHILDREN.to_string()])
            .spawn()
            .expect("start the engine")
    };
    let spawned = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let store = Store::open(store_path.to_str().unwrap()).await.unwrap();
            store.children("g").await.unwrap().len()
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut kills, mut mid_way) = (0, 0);
    let ran = || std::fs::read_to_string(work.join("marker")).map_or(0, |m| m.lines().count());
    while kills < 8 {
        let before = ran();
        let mut child = engine();
        // Each kill lands a random moment after this engine's first child
        // command ran: a fan-out takes some tens of milliseconds, which a
        // moment counted from the engine's start would mostly miss.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ran() == before && child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(rng.next_ms(0, 20)));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        // SAFETY: kill(2) on our own child's pid.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        child.wait().unwrap();
        kills += 1;
        let n = spawned(&rt);
        if n > 0 && n < CHILDREN {
            mid_way += 1;
        }
        println!("killed the engine with {n} of {CHILDREN} children recorded");
    }
    assert!(mid_way >= 1, "no kill landed in the middle of the fan-out");
    let status = engine().wait().unwrap();
    assert!(status.success(), "the last engine reported failures");

    rt.block_on(async {
        let store = Store::open(store_path.to_str().unwrap()).await.unwrap();
        let children = store.children("g").await.unwrap();
        assert_eq!(children.len(), CHILDREN, "children recorded");
        let mut ids: Vec<&str> = children.iter().map(|c| c.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), CHILDREN, "a child was recorded twice");
        assert!(children.iter().all(|c| c.terminal && c.parent.as_deref() == Some("g")));
        let g = store.get("g").await.unwrap().unwrap();
        let state: drover_group::GroupState = decode(&g.checkpoint).unwrap();
        assert_eq!(state, drover_group::GroupState::Finished { exit_code: 0, failed: vec![] });
        assert_eq!(store.count().await.unwrap(), CHILDREN as i64 + 1);
    });
    let marker = std::fs::read_to_string(work.join("marker")).unwrap();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for line in marker.lines() {
        *runs.entry(line).or_default() += 1;
    }
    for i in 0..CHILDREN {
        let id = format!("g.c{i}");
        assert_eq!(runs.get(id.as_str()), Some(&1), "{id} ran {:?} times", runs.get(id.as_str()));
    }
    assert_eq!(runs.len(), CHILDREN);
    println!("{kills} kills ({mid_way} mid-way); {CHILDREN} children, each once");
}
