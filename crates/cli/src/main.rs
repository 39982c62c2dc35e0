//! `drover`, the command-line program.

mod jobfile;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use drover_engine::{Engine, Job, Outcome};
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
    match cli.command {
        Command::Run { files, jobs } => run(&data, &files, jobs),
    }
}

fn run(data: &std::path::Path, files: &[PathBuf], jobs: Option<usize>) -> ExitCode {
    let started = Instant::now();
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let run_id = format!("run-{stamp}");
    let out_dir = data.join("runs").join(&run_id);
    let planned = match jobfile::load(files, &out_dir) {
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
            let engine = Engine::new(store, local, governor, HashMap::new(), out_dir.join(".supervise"));
            for job in planned {
                let id = format!("{run_id}.{}", job.id);
                engine.submit(&id, Job::Shell { spec: job.spec }).await.map_err(|e| e.to_string())?;
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
