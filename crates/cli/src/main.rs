//! `drover`, the command-line program.

mod config;
mod daemon;
mod fmt;
mod jobfile;
mod progress;
mod remote;

use std::io::IsTerminal;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand};
use drover_daemon::api::Stream;
use drover_engine::{Action, Engine, Identity, Kinds, Outcome};
use drover_store::Store;
use progress::Progress;
use tokio::task::LocalSet;

/// Bad input: a job file, a configuration, an id, a usage error.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;
/// No daemon is running (for the commands that need one).
pub(crate) const EXIT_NO_DAEMON: u8 = 3;

/// drover runs scientific computations as durable, controllable state machines.
///
/// `drover run` runs job files in the foreground. `drover daemon start` runs
/// the engine in the background; `submit`, `list`, `show`, `pause`, `resume`,
/// `kill`, `watch` and `logs` talk to it.
#[derive(Debug, Parser)]
#[command(
    version,
    propagate_version = true,
    after_help = "Examples:
  drover run examples/quickstart.toml
  drover daemon start --http 127.0.0.1:7878
  drover submit examples/quickstart.toml
  drover list --state running
  drover kill --all

Exit codes:
  0  success
  1  a job failed, or a check or an action did not succeed
  2  bad input: a job file, the configuration, an id, the command line
  3  no daemon is running (for the commands that need one)"
)]
struct Cli {
    /// Where drover keeps its store and job outputs [default: $DROVER_DATA_DIR,
    /// else $XDG_DATA_HOME/drover, else ~/.local/share/drover].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where `computers.toml` is [default: $DROVER_CONFIG_DIR, else
    /// $XDG_CONFIG_HOME/drover, else ~/.config/drover].
    #[arg(long, global = true, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the jobs of one or more TOML job files in the foreground, with live
    /// progress, and ends with a summary.
    ///
    /// Every job is recorded in the embedded store before it starts. A file with
    /// an error runs nothing at all.
    ///
    /// Exit codes: 0 every job succeeded; 1 a job failed; 2 bad input.
    #[command(
        after_help = "Examples:\n  drover run examples/quickstart.toml\n  drover --data-dir /tmp/d run a.toml b.toml\n  drover run --resume run-mx5rrdvzpp"
    )]
    Run {
        /// The job files.
        #[arg(required_unless_present = "resume", conflicts_with = "resume", value_name = "FILE")]
        files: Vec<PathBuf>,
        /// At most this many jobs run at once [default: the number of CPUs].
        #[arg(long, short = 'j', value_name = "N")]
        jobs: Option<usize>,
        /// Takes up a run whose `drover run` was killed outright (not with
        /// Ctrl-C, which kills its jobs): once its lease expired, its
        /// unfinished jobs go on where they were, none run twice.
        #[arg(long, value_name = "RUN")]
        resume: Option<String>,
    },
    /// Submits the jobs of one or more job files to the daemon, all or none.
    ///
    /// The files are checked first: a file with an error submits nothing.
    #[command(after_help = "Examples:\n  drover submit examples/quickstart.toml\n  drover submit --json a.toml b.toml")]
    Submit {
        /// The job files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print the run id and the process ids as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Lists the daemon's processes, oldest first, with counts per state.
    #[command(
        visible_alias = "ls",
        after_help = "Examples:\n  drover list\n  drover list --state running --kind scheduler\n  drover list --state active --json"
    )]
    List {
        #[command(flatten)]
        filter: remote::FilterArgs,
        /// At most this many (the oldest first) [default: all of them, read
        /// a page at a time].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Removes ended processes (finished, failed, killed, lost) with their
    /// events and supervisor records, and with `--outputs`, their outputs;
    /// never one that has not ended, nor anything outside the data directory.
    ///
    /// Through the daemon when one runs, else on the embedded store.
    #[command(
        after_help = "Examples:\n  drover prune --older-than 30d --dry-run\n  drover prune --older-than 12h --outputs"
    )]
    Prune {
        /// Those that ended at least this long ago: a number and a unit, s,
        /// m, h, d or w (1 s to 100 years).
        #[arg(long, value_name = "AGE", value_parser = drover_engine::parse_age)]
        older_than: std::time::Duration,
        /// Their outputs too: `.out`/`.err` files, retrieved directories.
        #[arg(long)]
        outputs: bool,
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shows one process: its spec, state, history of transitions and outputs.
    #[command(
        after_help = "Examples:\n  drover show run-mi5k8z1c.quickstart.hello\n  drover show quickstart.hello --json"
    )]
    Show {
        /// Its id, or a unique end of it (like `quickstart.hello`).
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pauses processes; returns once each is paused.
    #[command(after_help = "Examples:\n  drover pause quickstart.sleepy\n  drover pause --state queued")]
    Pause(remote::Targets),
    /// Resumes paused processes.
    #[command(after_help = "Examples:\n  drover resume quickstart.sleepy\n  drover resume --state paused")]
    Resume(remote::Targets),
    /// Kills processes; returns once each has ended. A scheduler job whose
    /// cluster cannot be reached is cancelled in the background until the
    /// scheduler confirms.
    #[command(
        after_help = "Examples:\n  drover kill quickstart.sleepy\n  drover kill --computer cluster --state queued\n  drover kill --all"
    )]
    Kill(remote::Targets),
    /// Prints every state change as it happens, until interrupted.
    #[command(after_help = "Examples:\n  drover watch\n  drover watch --kind scheduler --json")]
    Watch {
        #[command(flatten)]
        filter: remote::FilterArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Prints a process's standard output (or error).
    ///
    /// Shell jobs' outputs are read where they are written; a scheduler job's
    /// are read on its computer while it runs and locally once retrieved.
    #[command(
        after_help = "Examples:\n  drover logs quickstart.hello\n  drover logs --stderr --follow quickstart.sleepy"
    )]
    Logs {
        /// Its id, or a unique end of it.
        id: String,
        /// Standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
        /// Keep printing what comes until the process ends.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// The daemon: the engine in the background, with a control API and a web page.
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Computers defined in `computers.toml`.
    #[command(subcommand)]
    Computer(ComputerCommand),
    /// Prints a shell completion script.
    #[command(
        after_help = "Examples:\n  drover completions bash > ~/.local/share/bash-completion/completions/drover\n  drover completions zsh > ~/.zfunc/_drover"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Starts the daemon in the background (a second start says it is already running).
    ///
    /// The daemon resumes the store's unfinished processes, serves the
    /// control API on `daemon.sock` in the data directory and, with `--http`,
    /// the API and a live web page on a loopback address. Its pid and log
    /// are `daemon.pid` and `daemon.log` in the data directory.
    #[command(after_help = "Examples:\n  drover daemon start\n  drover daemon start --http 127.0.0.1:7878 -j 8")]
    Start(daemon::DaemonOptions),
    /// Stops the daemon. Its processes are left as after a crash: shell
    /// commands run on, cluster jobs stay queued; the next start resumes them.
    #[command(after_help = "Examples:\n  drover daemon stop")]
    Stop,
    /// Says whether a daemon runs, and what it serves.
    ///
    /// Exit code 3 when none runs.
    #[command(after_help = "Examples:\n  drover daemon status\n  drover daemon status --json")]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs the daemon in the foreground (for systemd and the like).
    #[command(after_help = "Examples:\n  drover daemon run --http 127.0.0.1:7878")]
    Run(daemon::DaemonOptions),
}

#[derive(Debug, Subcommand)]
enum ComputerCommand {
    /// Checks the connection and the scheduler of a computer, and says what is wrong.
    ///
    /// Exit codes: 0 every check passed; 1 a check failed; 2 bad input.
    #[command(after_help = "Examples:\n  drover computer test cluster")]
    Test {
        /// The computer's name.
        name: String,
    },
}

fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os("DROVER_DATA_DIR").map(PathBuf::from))
        .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("drover")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/drover")))
        .unwrap_or_else(|| PathBuf::from(".drover"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data = daemon::absolute(data_dir(cli.data_dir));
    let config = daemon::absolute(cli.config_dir.unwrap_or_else(config::config_dir));
    match cli.command {
        Command::Run { files, jobs, resume } => run(&data, &config, &files, jobs, resume),
        Command::Submit { files, json } => remote::submit(&data, &files, json),
        Command::List { filter, limit, json } => {
            remote::list(&data, filter.into(), limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)), json)
        }
        Command::Prune { older_than, outputs, dry_run, json } => {
            let options = drover_engine::PruneOptions { older_than_secs: older_than.as_secs(), outputs, dry_run };
            remote::prune(&data, options, json)
        }
        Command::Show { id, json } => remote::show(&data, &id, json),
        Command::Pause(targets) => remote::control(&data, Action::Pause, targets),
        Command::Resume(targets) => remote::control(&data, Action::Resume, targets),
        Command::Kill(targets) => remote::control(&data, Action::Kill, targets),
        Command::Watch { filter, json } => remote::watch(&data, filter.into(), json),
        Command::Logs { id, stderr, follow } => {
            remote::logs(&data, &id, if stderr { Stream::Stderr } else { Stream::Stdout }, follow)
        }
        Command::Daemon(DaemonCommand::Start(options)) => daemon::start(&data, &config, options),
        Command::Daemon(DaemonCommand::Stop) => daemon::stop(&data),
        Command::Daemon(DaemonCommand::Status { json }) => daemon::status(&data, json),
        Command::Daemon(DaemonCommand::Run(options)) => daemon::run(&data, &config, options),
        Command::Computer(ComputerCommand::Test { name }) => test_computer(&config, &name),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
    }
}

fn test_computer(config: &std::path::Path, name: &str) -> ExitCode {
    use drover_scheduler::{AnyScheduler, Transport};
    let computers = match config::computers(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(computer) = computers.get(name).cloned() else {
        let mut known: Vec<_> = computers.keys().cloned().collect();
        known.sort();
        eprintln!(
            "drover: computer `{name}` is not defined in {}/computers.toml (known: {})",
            config.display(),
            known.join(", ")
        );
        return ExitCode::from(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let ok = rt.block_on(async {
        let t = &computer.transport;
        let mut ok = true;
        let mut check = |what: &str, result: Result<String, String>| match result {
            Ok(detail) => {
                println!("ok      {what}{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })
            }
            Err(e) => {
                println!("FAILED  {what}: {e}");
                ok = false;
            }
        };
        let reach = t.run("echo ok").await;
        let reachable = matches!(&reach, Ok(out) if out.stdout.trim() == "ok");
        check(&format!("reach {}", t.host()), reach.map(|_| String::new()).map_err(|e| e.to_string()));
        if !reachable {
            return false;
        }
        let tools = match &computer.scheduler {
            AnyScheduler::Slurm(_) => "sbatch squeue scancel",
            AnyScheduler::Direct(_) => "setsid ps kill",
        };
        let out = t.run(&format!("for t in {tools}; do command -v $t >/dev/null || echo \"missing: $t\"; done")).await;
        check(
            "scheduler commands",
            match out {
                Ok(o) if o.stdout.trim().is_empty() => Ok(tools.to_owned()),
                Ok(o) => Err(o.stdout.trim().replace('\n', ", ")),
                Err(e) => Err(e.to_string()),
            },
        );
        let dir = drover_scheduler::quote(&computer.work_root);
        let out = t.run(&format!("mkdir -p {dir} && test -w {dir} && echo writable")).await;
        check(
            &format!("work directory {}", computer.work_root),
            match out {
                Ok(o) if o.stdout.trim() == "writable" => Ok(String::new()),
                Ok(o) => Err(o.stderr.trim().to_owned()),
                Err(e) => Err(e.to_string()),
            },
        );
        if let AnyScheduler::Slurm(_) = computer.scheduler {
            let out = t.run("sinfo --noheader --summarize").await;
            check(
                "SLURM controller",
                match out {
                    Ok(o) if o.status == 0 => Ok(o.stdout.split_whitespace().collect::<Vec<_>>().join(" ")),
                    Ok(o) => Err(o.stderr.trim().to_owned()),
                    Err(e) => Err(e.to_string()),
                },
            );
        }
        ok
    });
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn run(
    data: &std::path::Path,
    config: &std::path::Path,
    files: &[PathBuf],
    jobs: Option<usize>,
    resume: Option<String>,
) -> ExitCode {
    let started = Instant::now();
    // What holds the run up (a store it cannot write, a cluster it cannot
    // reach) is said on standard error as it happens.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(tracing::Level::WARN)
        .init();
    if let Some(run) = &resume
        && (run.is_empty() || !run.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        eprintln!("drover: `{run}` is not a run id (like run-mx5rrdvzpp)");
        return ExitCode::from(2);
    }
    if let Err(e) = drover_daemon::private_dir(data) {
        eprintln!("drover: {e}\ndrover: nothing was run");
        return ExitCode::from(2);
    }
    let run_id = resume.clone().unwrap_or_else(remote::new_run_id);
    let out_dir = data.join("runs").join(&run_id);
    let (config_path, settings) = match config::read(config) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("drover: {e}");
            eprintln!("drover: nothing was run");
            return ExitCode::from(2);
        }
    };
    let planned = match jobfile::load(files, &out_dir, &run_id) {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("drover: {e}");
            eprintln!("drover: nothing was run");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Only the kinds with jobs here (a group's children included) set up what
    // they need (a cluster to reach).
    fn kinds_in(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(kind)) = map.get("kind") {
                    out.push(kind.clone());
                }
                map.values().for_each(|v| kinds_in(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| kinds_in(v, out)),
            _ => {}
        }
    }
    let mut wanted: Vec<String> = Vec::new();
    for p in &planned {
        kinds_in(&serde_json::to_value(&p.job).unwrap_or_default(), &mut wanted);
    }
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    // A resumed run may have jobs of any kind.
    let wanted = resume.is_none().then_some(wanted.as_slice());
    let supervise = out_dir.join(".supervise");
    let kinds = match rt.block_on(Kinds::from_config(&settings, &config_path, &supervise, jobs, wanted)) {
        Ok(kinds) => kinds,
        Err(e) => {
            eprintln!("drover: {e}\ndrover: nothing was run");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&out_dir) {
        eprintln!("drover: cannot create {}: {e}", out_dir.display());
        return ExitCode::from(2);
    }
    let local = Rc::new(LocalSet::new());
    let total = planned.len();
    let result: Result<Ended, (u8, String)> = local.block_on(&rt, {
        let local = local.clone();
        let run_id = run_id.clone();
        async move {
            let store_path = data.join("drover.db");
            let store =
                Store::open(store_path.to_str().unwrap_or("drover.db")).await.map_err(|e| (1, e.to_string()))?;
            // A pool of its own: no daemon ever takes these jobs over.
            let identity = Identity::fresh(format!("run:{run_id}"));
            let engine = Engine::with_identity(store, local, kinds, identity);
            // Every job is checked before the first is recorded.
            let mut jobs = Vec::with_capacity(planned.len());
            for job in planned {
                let id = format!("{run_id}.{}", job.id);
                engine.check(&id, &job.job).map_err(|e| (2, format!("{}: {e}\ndrover: nothing was run", job.origin)))?;
                jobs.push((id, job.job));
            }
            engine.submit_all(jobs).await.map_err(|e| (1, e.to_string()))?;
            let total = if resume.is_some() { take_up(&engine, &run_id).await? } else { total };
            let mut progress = Progress::new(total, std::io::stderr().is_terminal(), &run_id);
            tokio::select! {
                outcomes = engine.wait_each(|id, outcome| progress.ended(id, outcome)) => {
                    // Nothing of the run runs again: what ended is cleaned up now.
                    engine.close().await;
                    Ok((total, outcomes))
                }
                _ = tokio::signal::ctrl_c() => {
                    // Ctrl-C: the run's jobs are killed (with their children),
                    // so that nothing is left for anyone to pick up by surprise.
                    eprintln!("drover: interrupted: killing the run's jobs");
                    for p in engine.list().await.unwrap_or_default() {
                        if !p.terminal && p.owner.as_deref() == Some(engine.identity().id.as_str()) && p.parent.is_none() {
                            let _ = engine.kill(&p.id).await;
                        }
                    }
                    let _ = engine.release().await;
                    Err((130, "interrupted; the run's jobs were killed".to_owned()))
                }
                () = engine.lease_lost() => Err((1, "this run lost its claim on its jobs (the store was unreachable past the lease)".to_owned())),
            }
        }
    });
    let (total, outcomes) = match result {
        Ok(ended) => ended,
        Err((code, e)) => {
            eprintln!("drover: {e}");
            return ExitCode::from(code);
        }
    };
    let failed: Vec<&(String, Outcome)> = outcomes.iter().filter(|(_, o)| !o.succeeded()).collect();
    println!(
        "{total} jobs: {} succeeded, {} failed, in {:.1} s; outputs in {}",
        total - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64(),
        out_dir.display()
    );
    for (id, outcome) in &failed {
        println!("  failed: {} ({})", short(id, &run_id), describe(outcome));
    }
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// How many jobs a run had, and how each ended.
type Ended = (usize, Vec<(String, Outcome)>);

/// Takes up the unfinished jobs of run `run_id` once the lease of the
/// `drover run` that drove them expired; says how many there are.
async fn take_up(engine: &Engine, run_id: &str) -> Result<usize, (u8, String)> {
    let prefix = format!("{run_id}.");
    let ours = |p: &drover_engine::ProcessInfo| p.id.starts_with(&prefix) && p.parent.is_none();
    let all: Vec<_> = engine.list().await.map_err(|e| (1, e.to_string()))?.into_iter().filter(ours).collect();
    if all.is_empty() {
        return Err((2, format!("no run `{run_id}` in this data directory's store")));
    }
    let me = engine.identity().id.clone();
    let deadline = Instant::now() + engine.identity().lease * 3;
    let mut taken = std::collections::HashSet::new();
    loop {
        let recovery = engine.recover().await.map_err(|e| (1, e.to_string()))?;
        taken.extend(recovery.resumed.into_iter().filter(|id| all.iter().any(|p| p.id == *id)));
        let list = engine.list().await.map_err(|e| (1, e.to_string()))?;
        let waiting = list.iter().filter(|p| ours(p) && !p.terminal && p.owner.as_deref() != Some(me.as_str())).count();
        if waiting == 0 {
            eprintln!("drover: taking up {run_id}: {} of {} jobs had not ended", taken.len(), all.len());
            return Ok(taken.len());
        }
        if Instant::now() > deadline {
            return Err((
                1,
                format!("{run_id}: {waiting} jobs are still another engine's (is its `drover run` alive?)"),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn short<'a>(id: &'a str, run_id: &str) -> &'a str {
    id.strip_prefix(run_id).and_then(|s| s.strip_prefix('.')).unwrap_or(id)
}

fn describe(outcome: &Outcome) -> String {
    outcome.summary()
}
