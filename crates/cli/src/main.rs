//! `drover`, the command-line program.

mod config;
mod jobfile;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use drover_engine::{Engine, Outcome};
use drover_shell::{Governor, ShellState};
use drover_store::Store;
use tokio::task::LocalSet;

/// drover runs scientific computations as durable, controllable state machines.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
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
        after_help = "Examples:\n  drover run examples/quickstart.toml\n  drover --data-dir /tmp/d run a.toml b.toml"
    )]
    Run {
        /// The job files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// At most this many jobs run at once [default: the number of CPUs].
        #[arg(long, short = 'j', value_name = "N")]
        jobs: Option<usize>,
    },
    /// Computers defined in `computers.toml`.
    #[command(subcommand)]
    Computer(ComputerCommand),
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
    let data = data_dir(cli.data_dir);
    let config = cli.config_dir.unwrap_or_else(config::config_dir);
    match cli.command {
        Command::Run { files, jobs } => run(&data, &config, &files, jobs),
        Command::Computer(ComputerCommand::Test { name }) => test_computer(&config, &name),
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

fn run(data: &std::path::Path, config: &std::path::Path, files: &[PathBuf], jobs: Option<usize>) -> ExitCode {
    let started = Instant::now();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let run_id = format!("run-{stamp}");
    let out_dir = data.join("runs").join(&run_id);
    let computers = match config::computers(config) {
        Ok(computers) => computers,
        Err(e) => {
            eprintln!("drover: {e}");
            eprintln!("drover: nothing was run");
            return ExitCode::from(2);
        }
    };
    let mut names: Vec<String> = computers.keys().cloned().collect();
    names.sort();
    let planned = match jobfile::load(files, &out_dir, &run_id, &names) {
        Ok(planned) => planned,
        Err(e) => {
            eprintln!("drover: {e}");
            eprintln!("drover: nothing was run");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&out_dir) {
        eprintln!("drover: cannot create {}: {e}", out_dir.display());
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = Rc::new(LocalSet::new());
    let total = planned.len();
    let result: Result<Vec<(String, Outcome)>, String> = local.block_on(&rt, {
        let local = local.clone();
        let out_dir = out_dir.clone();
        let run_id = run_id.clone();
        async move {
            let store_path = data.join("drover.db");
            let store = Store::open(store_path.to_str().unwrap_or("drover.db")).await.map_err(|e| e.to_string())?;
            let governor = jobs.map_or_else(Governor::default, Governor::new);
            let engine = Engine::new(store, local, governor, computers, out_dir.join(".supervise"));
            for job in planned {
                let id = format!("{run_id}.{}", job.id);
                engine.submit(&id, job.job).await.map_err(|e| e.to_string())?;
            }
            let mut progress = Progress::new(total, std::io::stderr().is_terminal(), &run_id);
            Ok(engine.wait_each(|id, outcome| progress.ended(id, outcome)).await)
        }
    });
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(e) => {
            eprintln!("drover: {e}");
            return ExitCode::FAILURE;
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

fn short<'a>(id: &'a str, run_id: &str) -> &'a str {
    id.strip_prefix(run_id).and_then(|s| s.strip_prefix('.')).unwrap_or(id)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Shell(ShellState::Finished { exit_code, ran_for }) => {
            format!("exit {exit_code}, {:.2} s", ran_for.as_secs_f64())
        }
        Outcome::Shell(ShellState::Failed { reason }) => reason.clone(),
        Outcome::Shell(other) => format!("{other:?}"),
        Outcome::Scheduler(drover_scheduler::JobState::Finished { exit_code, job_id }) => {
            format!("exit {exit_code}, job {job_id}")
        }
        Outcome::Scheduler(drover_scheduler::JobState::Failed { reason, .. }) => reason.clone(),
        Outcome::Scheduler(state) => format!("{state:?}"),
        Outcome::Error(e) => e.to_string(),
    }
}

/// Live progress: one line redrawn in place on a terminal, plain lines otherwise.
struct Progress<'a> {
    total: usize,
    done: usize,
    failed: usize,
    terminal: bool,
    run_id: &'a str,
}

impl<'a> Progress<'a> {
    fn new(total: usize, terminal: bool, run_id: &'a str) -> Self {
        let p = Progress { total, done: 0, failed: 0, terminal, run_id };
        p.draw();
        p
    }

    fn ended(&mut self, id: &str, outcome: &Outcome) {
        self.done += 1;
        let ok = outcome.succeeded();
        if !ok {
            self.failed += 1;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            if !ok {
                let _ = writeln!(err, "\r\x1b[2Kfailed  {} ({})", short(id, self.run_id), describe(outcome));
            }
        } else {
            let word = if ok { "ok     " } else { "failed " };
            let _ = writeln!(err, "{word} {} ({})", short(id, self.run_id), describe(outcome));
        }
        drop(err);
        self.draw();
    }

    fn draw(&self) {
        if self.terminal {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K[{}/{}] done, {} failed", self.done, self.total, self.failed);
            if self.done == self.total {
                let _ = writeln!(err);
            }
            let _ = err.flush();
        }
    }
}
