//! A panic is an ending: a process whose step panics is recorded failed with
//! the panic's message, its kill hook runs, and its children are killed, so
//! no row stays unfinished and nothing it started is orphaned. The panicking
//! kind is this test's own (no real kind panics on purpose); its child is a
//! real shell process.

mod common;

use common::run;

use std::cell::Cell;
use std::time::Duration;

use drover_core::{Process, State};
use drover_engine::{Job, Kinds};
use drover_kind::{Checkpoint, Context, Ended, Entry, Kind, LogPlan, Setup, Stream};
use drover_shell::{ShellJob, ShellKind, ShellSpec, ShellState};
use drover_store::{Store, decode};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum BadState {
    Start,
    Spawned,
    Failed { reason: String },
    Killed,
}

impl State for BadState {
    fn is_done(&self) -> bool {
        matches!(self, BadState::Failed { .. } | BadState::Killed)
    }
    fn is_paused(&self) -> bool {
        false
    }
}

impl Checkpoint for BadState {
    const KIND: &'static str = "bad";
    const VERSION: u32 = 1;
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct BadSpec {
    /// The child's script.
    child: String,
}

thread_local! {
    /// How many times a kill hook of this kind ran.
    static KILLS: Cell<usize> = const { Cell::new(0) };
}

struct BadProcess {
    state: BadState,
    context: Context,
    spec: BadSpec,
}

impl Process<BadState> for BadProcess {
    fn state(&self) -> &BadState {
        &self.state
    }
    fn transition_to(&mut self, state: BadState) {
        self.state = state;
    }
    async fn kill(&mut self) {
        KILLS.set(KILLS.get() + 1);
        self.state = BadState::Killed;
    }
    async fn pause(&mut self) {}
    async fn advance(&mut self) {
        match self.state {
            BadState::Start => {
                let child = Job::new::<ShellKind>(&ShellJob { spec: ShellSpec::script(&self.spec.child) });
                self.context.children.spawn(format!("{}.child", self.context.id), child).unwrap();
                self.state = BadState::Spawned;
            }
            _ => {
                // Until the child runs, then a bug.
                tokio::time::sleep(Duration::from_millis(300)).await;
                panic!("index out of bounds: the len is 0 but the index is 0");
            }
        }
    }
}

struct BadKind;

impl Kind for BadKind {
    const NAME: &'static str = "bad";
    const MARKER: Option<&'static str> = Some("bad");
    const KEYS: &'static [&'static str] = &[];
    const SECTION: Option<&'static str> = None;
    type Spec = BadSpec;
    type State = BadState;
    type Process = BadProcess;
    type Env = ();

    async fn env(_setup: &Setup<'_>) -> Result<(), String> {
        Ok(())
    }
    fn plan(_entry: &Entry<'_>) -> Result<BadSpec, String> {
        Err("not in job files".into())
    }
    fn check(_env: &(), _id: &str, _spec: &BadSpec) -> Result<(), String> {
        Ok(())
    }
    fn initial(_spec: &BadSpec) -> BadState {
        BadState::Start
    }
    fn build(_env: &(), context: Context, spec: BadSpec, state: Option<BadState>) -> Result<BadProcess, String> {
        Ok(BadProcess { state: state.unwrap_or(BadState::Start), context, spec })
    }
    fn describe(_spec: &BadSpec) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    fn ended(state: &BadState) -> Ended {
        Ended { succeeded: false, summary: format!("{state:?}") }
    }
    fn failed(_state: &BadState, reason: String) -> BadState {
        BadState::Failed { reason }
    }
    fn logs(_spec: &BadSpec, _stream: Stream) -> Result<LogPlan, String> {
        Err("keeps no logs".into())
    }
}

#[test]
fn a_panicking_step_is_recorded_failed_its_kill_hook_runs_and_its_child_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let pid_file = dir.path().join("child.pid");
    run(|local| async move {
        let store = Store::open(db.to_str().unwrap()).await.unwrap();
        let kinds = Kinds::new().with::<ShellKind>(common::shell_env(&dir.path().join("runs"), 2)).with::<BadKind>(());
        let engine = common::engine(store.clone(), &local, kinds, "panic-test");
        let child = format!("echo $$ > {}; exec sleep 60", pid_file.display());
        engine.submit("p", Job::new::<BadKind>(&BadSpec { child })).await.unwrap();
        let outcomes = tokio::time::timeout(Duration::from_secs(30), engine.wait_all()).await.expect("it ends");

        // The parent: failed, with the panic's message, and no longer owned.
        let p = store.get("p").await.unwrap().unwrap();
        assert!(p.terminal, "a panicked process stays unfinished in the store");
        let state: BadState = decode(&p.checkpoint).unwrap();
        let BadState::Failed { reason } = &state else { panic!("recorded {state:?}") };
        assert!(reason.contains("panicked") && reason.contains("index out of bounds"), "{reason}");
        assert_eq!(KILLS.get(), 1, "the kill hook runs once after the panic");
        let listed = engine.list().await.unwrap();
        let info = listed.iter().find(|i| i.id == "p").unwrap();
        assert_eq!(info.state, "failed");
        assert!(info.detail.as_deref().unwrap_or_default().contains("index out of bounds"), "{info:?}");

        // The child: killed with it, its process gone.
        let c = store.get("p.child").await.unwrap().unwrap();
        let child_state: ShellState = decode(&c.checkpoint).unwrap();
        assert_eq!(child_state, ShellState::Killed, "the child outlived its panicked parent");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(dead(pid), "the child's process {pid} still runs");
        assert!(outcomes.iter().all(|(_, o)| !o.succeeded()), "{outcomes:?}");
    });
}

/// Whether `pid` is gone or a zombie (dead, its parent not yet told).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}
