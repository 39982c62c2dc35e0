//! The shell kind: how the engine builds, describes and restores shell processes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use drover_kind::{Checkpoint, Context, Ended, Entry, Kind, LogPlan, Setup, Stream, command_line, command_or_script};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Governor, Output, ShellProcess, ShellSpec, ShellState};

/// Local shell processes, durable: each child runs under a supervisor in its
/// own run directory (see [`ShellProcess::durable`]).
#[derive(Debug)]
pub struct ShellKind;

/// A shell job, as the engine stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellJob {
    /// What to run.
    pub spec: ShellSpec,
}

/// What every shell process of an engine shares.
#[derive(Clone, Debug)]
pub struct ShellEnv {
    /// The governor of local children.
    pub governor: Governor,
    /// Where run directories are made: `<run_root>/<process id>`.
    pub run_root: PathBuf,
}

/// This host's name, read once: every process's binding names it.
fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default())
}

/// The job-file keys of a shell job.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellEntry {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    script: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    timeout_secs: Option<f64>,
}

impl Checkpoint for ShellState {
    const KIND: &'static str = "shell";
    /// 2 added `Starting` (durable shell processes); 3 added the child's
    /// `identity` to `Running` and `Paused` (absent, it is judged by when
    /// the supervisor wrote its pid). 1 and 2 read as they are.
    const VERSION: u32 = 3;

    fn upgrade(version: u32, state: Value) -> Result<Value, String> {
        match version {
            1 | 2 => Ok(state),
            other => Err(format!("no shell checkpoint version {other} ever existed")),
        }
    }
}

impl Kind for ShellKind {
    const NAME: &'static str = "shell";
    const MARKER: Option<&'static str> = None;
    const KEYS: &'static [&'static str] = &["cwd", "timeout_secs"];
    const SECTION: Option<&'static str> = None;

    type Spec = ShellJob;
    type State = ShellState;
    type Process = ShellProcess;
    type Env = ShellEnv;

    async fn env(setup: &Setup<'_>) -> Result<ShellEnv, String> {
        let governor = setup.max_jobs.map_or_else(Governor::default, Governor::new);
        Ok(ShellEnv { governor, run_root: setup.run_root.to_owned() })
    }

    fn plan(entry: &Entry<'_>) -> Result<ShellJob, String> {
        let e: ShellEntry = entry.read()?;
        let (program, args) = command_or_script(e.command, e.args, e.script)?;
        let mut spec = ShellSpec::program(program, args);
        spec.env.set = e.env;
        spec.cwd = e.cwd;
        if let Some(secs) = e.timeout_secs {
            if !(secs.is_finite() && secs > 0.0 && secs <= 1e9) {
                return Err("timeout_secs must be a positive number of seconds (at most 1e9)".to_owned());
            }
            spec.timeout = Some(Duration::from_secs_f64(secs));
        }
        spec.stdout = Output::File(entry.out_dir.join(format!("{}.out", entry.name)));
        spec.stderr = Output::File(entry.out_dir.join(format!("{}.err", entry.name)));
        Ok(ShellJob { spec })
    }

    fn check(_: &ShellEnv, _: &str, _: &ShellJob) -> Result<(), String> {
        Ok(())
    }

    fn initial(_: &ShellJob) -> ShellState {
        ShellState::Queued
    }

    fn build(
        env: &ShellEnv,
        context: Context,
        job: ShellJob,
        state: Option<ShellState>,
    ) -> Result<ShellProcess, String> {
        // Started under another engine's run root (on this host): there.
        let root = context.binding.as_deref().and_then(|b| b.split_once(':')).map(|(_, root)| PathBuf::from(root));
        let run_dir = root.unwrap_or_else(|| env.run_root.clone()).join(&context.id);
        Ok(match state {
            None => ShellProcess::durable(job.spec, env.governor.clone(), run_dir),
            Some(state) => ShellProcess::restore(job.spec, env.governor.clone(), run_dir, state),
        })
    }

    /// A shell process's child and its supervisor live on this host, in a
    /// run directory under this run root: `<host>:<run root>`.
    fn binding(env: &ShellEnv) -> Option<String> {
        Some(format!("{}:{}", hostname(), env.run_root.display()))
    }

    /// Any engine on the same host re-attaches (under the run root the
    /// process was started with); one on another host cannot.
    fn takes_over(_: &ShellEnv, bound: &str) -> bool {
        bound.split_once(':').is_some_and(|(host, _)| host == hostname())
    }

    /// Its supervisor's record: `<run root>/<id>`, under the run root it
    /// was bound to.
    fn records(id: &str, binding: Option<&str>) -> Vec<PathBuf> {
        binding.and_then(|b| b.split_once(':')).map(|(_, root)| PathBuf::from(root).join(id)).into_iter().collect()
    }

    fn describe(job: &ShellJob) -> Vec<(&'static str, String)> {
        let spec = &job.spec;
        let words = std::iter::once(spec.program.as_str()).chain(spec.args.iter().map(String::as_str));
        let mut lines = vec![("command", command_line(words))];
        if let Some(cwd) = &spec.cwd {
            lines.push(("cwd", cwd.display().to_string()));
        }
        for (name, output) in [("stdout", &spec.stdout), ("stderr", &spec.stderr)] {
            if let Output::File(path) | Output::Append(path) = output {
                lines.push((name, path.display().to_string()));
            }
        }
        lines
    }

    fn ended(state: &ShellState) -> Ended {
        let summary = match state {
            ShellState::Finished { exit_code, ran_for } => format!("exit {exit_code}, {:.2} s", ran_for.as_secs_f64()),
            ShellState::Failed { reason } => reason.clone(),
            other => format!("{other:?}"),
        };
        Ended { succeeded: state.succeeded(), summary }
    }

    fn failed(_state: &ShellState, reason: String) -> ShellState {
        ShellState::Failed { reason }
    }

    fn logs(job: &ShellJob, stream: Stream) -> Result<LogPlan, String> {
        let output = if stream == Stream::Stdout { &job.spec.stdout } else { &job.spec.stderr };
        match output {
            Output::File(p) | Output::Append(p) => Ok(LogPlan { local: p.clone(), why_not: None }),
            Output::Null => Err("is not kept".to_owned()),
        }
    }
}
