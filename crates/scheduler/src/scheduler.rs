//! Schedulers, sans I/O: each one writes job scripts and command lines, and
//! reads command outputs. Transports run the commands.

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::job::{EXIT_CODE_FILE, JobSpec, SCRIPT_FILE, STDERR_FILE, STDOUT_FILE, wall_time};
use crate::quote::{quote, quote_all};

/// What a command printed and how it exited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmdOutput {
    /// The exit status (`-1` if killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Where a job is, as the scheduler tells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Waiting to run.
    Pending,
    /// Running (or completing).
    Running,
    /// Left the queue, and how.
    Done(Ended),
    /// The scheduler does not know the job (any more).
    Unknown,
}

/// How a job left the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ended {
    /// It ran to its end; its exit code says whether it succeeded.
    Completed,
    /// It ended with a non-zero exit code.
    Failed,
    /// It hit its wall time.
    Timeout,
    /// It was cancelled.
    Cancelled,
    /// It ran out of memory.
    OutOfMemory,
    /// Another end the scheduler named (node failure, preemption, ...).
    Other(String),
}

/// A scheduler command that failed, with the scheduler's own message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} failed: {message}")]
pub struct CommandFailed {
    /// Which command.
    pub what: &'static str,
    /// The scheduler's message (its standard error, trimmed).
    pub message: String,
    /// Whether trying again later may work (the controller was unreachable).
    pub transient: bool,
    /// The command itself succeeded (a submit exited 0) but what it printed
    /// could not be read: the job may exist, so nothing it needs is removed.
    pub accepted: bool,
}

/// At most this much of what a remote command printed goes into a message.
const MAX_QUOTED: usize = 400;

/// `text`, trimmed and cut to [`MAX_QUOTED`] bytes at a character boundary.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    if text.len() <= MAX_QUOTED {
        return text.to_owned();
    }
    let mut end = MAX_QUOTED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The SLURM job id of a line of `sbatch --parsable` output: `ID` or
/// `ID;CLUSTER`, digits only; `None` for any other line (a banner, a
/// wrapper's notice).
fn slurm_id_line(line: &str) -> Option<&str> {
    let line = line.trim();
    let (id, cluster) = match line.split_once(';') {
        Some((id, cluster)) => (id, Some(cluster)),
        None => (line, None),
    };
    let cluster_ok = cluster.is_none_or(|c| !c.is_empty() && !c.contains(char::is_whitespace));
    (is_slurm_id(id) && cluster_ok).then_some(id)
}

/// A job id SLURM can be asked about: digits, and not absurdly long.
fn is_slurm_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

impl CommandFailed {
    fn from_output(what: &'static str, out: &CmdOutput) -> CommandFailed {
        let message = match out.stderr.trim() {
            "" => format!("exit status {}: {}", out.status, out.stdout.trim()),
            err => err.to_owned(),
        };
        let lower = message.to_lowercase();
        let transient = ["unable to contact slurm controller", "socket timed out", "try again", "connection refused"]
            .iter()
            .any(|s| lower.contains(s));
        CommandFailed { what, message: excerpt(&message), transient, accepted: false }
    }

    /// A submit that exited 0 but printed no line that is a job id.
    fn no_id(what: &'static str, out: &CmdOutput) -> CommandFailed {
        let message = format!(
            "{what}: exited 0 but printed no job id line; it printed: {:?}; its errors: {:?}",
            excerpt(&out.stdout),
            excerpt(&out.stderr)
        );
        CommandFailed { what, message, transient: false, accepted: true }
    }
}

/// A batch system, as command lines to run in a job's work directory and
/// parsers of what they print.
pub trait Scheduler {
    /// The job script for `job`.
    fn script(&self, job: &JobSpec) -> String;
    /// The command line that submits the script in `work_dir` and prints the job id.
    fn submit(&self, work_dir: &str) -> String;
    /// Reads the job id from the submit command's output.
    ///
    /// # Errors
    ///
    /// The scheduler's message when it refused the job.
    fn parse_submit(&self, out: &CmdOutput) -> Result<String, CommandFailed>;
    /// The command line that finds the job of an interrupted submit: from
    /// what the submit itself wrote in `work_dir`, else among the user's own
    /// jobs named `job_name` that ran in `work_dir`.
    fn lookup(&self, job_name: &str, work_dir: &str) -> String;
    /// Reads the found job id, if any.
    ///
    /// # Errors
    ///
    /// When the lookup itself failed (then nobody knows whether the job
    /// exists, and nothing may be submitted).
    fn parse_lookup(&self, out: &CmdOutput, work_dir: &str) -> Result<Option<String>, CommandFailed>;
    /// Whether `id` is a job id this scheduler could have given; anything
    /// else (a corrupted or forged checkpoint) never reaches a status command,
    /// where it could make the whole batch fail.
    fn valid_id(&self, id: &str) -> bool;
    /// One command line that reports the status of all `ids`.
    fn status(&self, ids: &[&str]) -> String;
    /// Whether a job that wrote its exit code file has ended, so that the file
    /// is read before the job's id is asked about: where an id can outlive
    /// its job (a pid that another process may hold by now).
    fn exit_code_first(&self) -> bool {
        false
    }
    /// Whether the status command refused the whole batch because of some of
    /// its ids, so that each must be asked about alone.
    fn refused_batch(&self, _out: &CmdOutput, _ids: &[&str]) -> bool {
        false
    }
    /// Reads the status of each of `ids`; a job the output does not mention is
    /// [`JobStatus::Unknown`].
    ///
    /// # Errors
    ///
    /// When the status command itself failed.
    fn parse_status(&self, out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed>;
    /// For jobs that left the queue, one command line that reports how they
    /// ended, or `None` when [`status`](Scheduler::status) already does.
    fn final_status(&self, _ids: &[&str]) -> Option<String> {
        None
    }
    /// Reads how each of `ids` ended; a job the output does not mention stays
    /// [`JobStatus::Unknown`].
    ///
    /// # Errors
    ///
    /// When the command itself failed.
    fn parse_final(&self, _out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed> {
        Ok(ids.iter().map(|id| ((*id).to_owned(), JobStatus::Unknown)).collect())
    }
    /// The command line that cancels job `id`.
    fn cancel(&self, id: &str) -> String;
    /// Checks the cancel command's output.
    ///
    /// # Errors
    ///
    /// When the scheduler refused to cancel.
    fn parse_cancel(&self, out: &CmdOutput) -> Result<(), CommandFailed>;
}

/// The shell part every job script shares: environment, the text before, the
/// command (each word quoted), its exit code written to [`EXIT_CODE_FILE`], the
/// text after, and the command's exit code as the script's.
fn body(job: &JobSpec, wrap: &[String]) -> String {
    let mut s = String::new();
    for (k, v) in &job.env {
        let _ = writeln!(s, "export {k}={}", quote(v));
    }
    if !job.prepend.is_empty() {
        let _ = writeln!(s, "{}", job.prepend.trim_end());
    }
    let words: Vec<&str> = wrap.iter().map(String::as_str).chain([job.command.as_str()]).collect();
    let mut line = quote_all(words);
    for a in &job.args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let _ = writeln!(s, "{line}");
    let _ = writeln!(s, "drover_exit=$?");
    let _ = writeln!(s, "echo \"$drover_exit\" > {EXIT_CODE_FILE}");
    if !job.append.is_empty() {
        let _ = writeln!(s, "{}", job.append.trim_end());
    }
    let _ = writeln!(s, "exit \"$drover_exit\"");
    s
}

/// SLURM: `sbatch --parsable`, `squeue`, `scancel`.
///
/// Without accounting ([`Slurm::new`]), final states come from
/// `squeue --states=all` while SLURM remembers the job (`MinJobAge`), in the
/// same batched call as the status of running jobs. With accounting
/// ([`Slurm::with_accounting`]), `squeue` reports the jobs in the queue and one
/// `sacct` call per interval reports how the jobs that left it ended. Either
/// way the exit code comes from the file the job script writes.
///
/// The submit writes what `sbatch` printed to [`SUBMIT_FILE`] in the work
/// directory; the job id is the line of it that is one, whatever else a site's
/// wrapper or a login banner printed around it. The lookup of an interrupted
/// submit reads that file first, then asks `squeue --me` (and `sacct` for the
/// user's own jobs, with accounting) for a job of the job's name that ran in
/// its work directory: never another user's job of the same name.
#[derive(Clone, Debug)]
pub struct Slurm {
    accounting: bool,
    sbatch: String,
}

impl Default for Slurm {
    fn default() -> Slurm {
        Slurm::new()
    }
}

/// Where SLURM's submit keeps what `sbatch` printed, in the work directory.
pub const SUBMIT_FILE: &str = ".drover-submit";

impl Slurm {
    /// SLURM without accounting (`sacct` unavailable).
    pub fn new() -> Slurm {
        Slurm { accounting: false, sbatch: "sbatch".to_owned() }
    }

    /// SLURM with accounting: final states from `sacct`.
    pub fn with_accounting() -> Slurm {
        Slurm { accounting: true, ..Slurm::new() }
    }

    /// The same, submitting with the program `sbatch` (a site's wrapper)
    /// instead of the `sbatch` found in the remote `PATH`.
    pub fn sbatch(mut self, sbatch: impl Into<String>) -> Slurm {
        self.sbatch = sbatch.into();
        self
    }
}

/// Marks of the sections of SLURM's lookup output.
const SECTION: &str = "@drover-";

impl Scheduler for Slurm {
    fn script(&self, job: &JobSpec) -> String {
        let mut s = String::from("#!/bin/bash\n");
        let mut directive = |text: String| {
            let _ = writeln!(s, "#SBATCH {text}");
        };
        directive(format!("--job-name={}", job.job_name()));
        directive(format!("--output={STDOUT_FILE}"));
        directive(format!("--error={STDERR_FILE}"));
        let r = &job.resources;
        if let Some(n) = r.nodes {
            directive(format!("--nodes={n}"));
        }
        if let Some(n) = r.tasks {
            directive(format!("--ntasks={n}"));
        }
        if let Some(n) = r.cpus_per_task {
            directive(format!("--cpus-per-task={n}"));
        }
        if let Some(m) = r.memory_mb {
            directive(format!("--mem={m}M"));
        }
        if let Some(t) = r.wall_time {
            directive(format!("--time={}", wall_time(t)));
        }
        if let Some(p) = &r.partition {
            directive(format!("--partition={p}"));
        }
        if let Some(a) = &r.account {
            directive(format!("--account={a}"));
        }
        if let Some(q) = &r.qos {
            directive(format!("--qos={q}"));
        }
        for d in &job.extra_directives {
            directive(d.clone());
        }
        s.push_str(&body(job, &[]));
        s
    }

    fn submit(&self, work_dir: &str) -> String {
        // What sbatch prints goes to a file first, so that it is there even
        // if the connection (or the engine) dies before the id comes back.
        format!(
            "cd {} && {{ {} --parsable {SCRIPT_FILE} > {SUBMIT_FILE} 2> {SUBMIT_FILE}.err; drover_s=$?; cat {SUBMIT_FILE}; cat {SUBMIT_FILE}.err >&2; exit $drover_s; }}",
            quote(work_dir),
            quote(&self.sbatch)
        )
    }

    fn parse_submit(&self, out: &CmdOutput) -> Result<String, CommandFailed> {
        if out.status != 0 {
            return Err(CommandFailed::from_output("sbatch", out));
        }
        match out.stdout.lines().find_map(slurm_id_line) {
            Some(id) => Ok(id.to_owned()),
            None => Err(CommandFailed::no_id("sbatch", out)),
        }
    }

    fn lookup(&self, job_name: &str, work_dir: &str) -> String {
        let name = quote(job_name);
        let mut s = format!(
            "echo {SECTION}file; cat {dir}/{SUBMIT_FILE} 2>/dev/null; \
             echo {SECTION}squeue; squeue --me --states=all --noheader --format='%i|%Z' --name={name}; echo \"{SECTION}exit $?\"",
            dir = quote(work_dir)
        );
        if self.accounting {
            let _ = write!(
                s,
                "; echo {SECTION}sacct; sacct --noheader --parsable2 --allocations --user=\"$(id -un)\" --starttime=1970-01-01 --format=JobID,WorkDir --name={name}; echo \"{SECTION}exit $?\""
            );
        }
        s
    }

    fn parse_lookup(&self, out: &CmdOutput, work_dir: &str) -> Result<Option<String>, CommandFailed> {
        let work_dir = work_dir.trim_end_matches('/');
        let here = |dir: &str| {
            let dir = dir.trim().trim_end_matches('/');
            !work_dir.is_empty()
                && (dir == work_dir || dir.strip_suffix(work_dir).is_some_and(|head| head.ends_with('/')))
        };
        // Anything before the first mark is a login banner.
        let mut section = None;
        let mut seen_exit = 0;
        for line in out.stdout.lines() {
            if let Some(mark) = line.trim().strip_prefix(SECTION) {
                if let Some(code) = mark.strip_prefix("exit ") {
                    seen_exit += 1;
                    if code.trim() != "0" {
                        let what = if section == Some("sacct") { "sacct" } else { "squeue" };
                        return Err(CommandFailed::from_output(what, &CmdOutput { status: 1, ..out.clone() }));
                    }
                } else {
                    section = Some(mark.trim());
                }
                continue;
            }
            match section {
                Some("file") => {
                    if let Some(id) = slurm_id_line(line) {
                        return Ok(Some(id.to_owned()));
                    }
                }
                Some("squeue" | "sacct") => {
                    if let Some((id, dir)) = line.trim().split_once('|')
                        && is_slurm_id(id)
                        && here(dir)
                    {
                        return Ok(Some(id.to_owned()));
                    }
                }
                _ => {}
            }
        }
        let expected = if self.accounting { 2 } else { 1 };
        if out.status != 0 || seen_exit < expected {
            // Cut short: nobody knows whether the job exists.
            return Err(CommandFailed::from_output("looking up the job", out));
        }
        Ok(None)
    }

    fn valid_id(&self, id: &str) -> bool {
        is_slurm_id(id)
    }

    fn refused_batch(&self, out: &CmdOutput, ids: &[&str]) -> bool {
        ids.len() > 1 && out.status != 0 && out.stderr.contains("Invalid job id")
    }

    fn status(&self, ids: &[&str]) -> String {
        let states = if self.accounting { "" } else { "--states=all " };
        format!("squeue {states}--noheader --format='%i|%T' --jobs={}", quote(&ids.join(",")))
    }

    fn final_status(&self, ids: &[&str]) -> Option<String> {
        self.accounting.then(|| {
            format!("sacct --noheader --parsable2 --allocations --format=JobID,State --jobs={}", quote(&ids.join(",")))
        })
    }

    fn parse_final(&self, out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed> {
        if out.status != 0 {
            return Err(CommandFailed::from_output("sacct", out));
        }
        let mut map: HashMap<String, JobStatus> = ids.iter().map(|id| ((*id).to_owned(), JobStatus::Unknown)).collect();
        for line in out.stdout.lines() {
            let mut fields = line.trim().split('|');
            let (Some(id), Some(state)) = (fields.next(), fields.next()) else { continue };
            // `CANCELLED by 0`: the first word is the state.
            let state = state.split_whitespace().next().unwrap_or("");
            if let Some(slot) = map.get_mut(id) {
                *slot = slurm_state(state);
            }
        }
        Ok(map)
    }

    fn parse_status(&self, out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed> {
        let mut map: HashMap<String, JobStatus> = ids.iter().map(|id| ((*id).to_owned(), JobStatus::Unknown)).collect();
        if out.status != 0 {
            // Every id unknown to SLURM: it says so and fails.
            if out.stderr.contains("Invalid job id") {
                return Ok(map);
            }
            return Err(CommandFailed::from_output("squeue", out));
        }
        for line in out.stdout.lines() {
            let Some((id, state)) = line.trim().split_once('|') else { continue };
            if let Some(slot) = map.get_mut(id) {
                *slot = slurm_state(state);
            }
        }
        Ok(map)
    }

    fn cancel(&self, id: &str) -> String {
        format!("scancel {}", quote(id))
    }

    fn parse_cancel(&self, out: &CmdOutput) -> Result<(), CommandFailed> {
        if out.status == 0
            || out.stderr.contains("Invalid job id")
            || out.stderr.contains("already completing or completed")
        {
            return Ok(());
        }
        Err(CommandFailed::from_output("scancel", out))
    }
}

fn slurm_state(state: &str) -> JobStatus {
    match state {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" => JobStatus::Pending,
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT" | "RESIZING" => {
            JobStatus::Running
        }
        "COMPLETED" => JobStatus::Done(Ended::Completed),
        "FAILED" => JobStatus::Done(Ended::Failed),
        "TIMEOUT" | "DEADLINE" => JobStatus::Done(Ended::Timeout),
        "CANCELLED" => JobStatus::Done(Ended::Cancelled),
        "OUT_OF_MEMORY" => JobStatus::Done(Ended::OutOfMemory),
        other => JobStatus::Done(Ended::Other(other.to_owned())),
    }
}

/// No batch system: the job script runs as a detached background process in
/// its own session on the target, followed through `/proc` and stopped with
/// `kill`. A wall time is enforced with `timeout`. Linux targets only.
///
/// A pid alone does not name a process for long: after a reboot or a pid
/// wrap another process may hold it. So the job id is `PID:START:BOOT`: the
/// pid, the process's start time (field 22 of `/proc/PID/stat`) and the
/// host's boot id (`/proc/sys/kernel/random/boot_id`), read at submit time.
/// Status and cancel act on the pid only while all three still match; a
/// process that holds the pid now but started at another time or before
/// another boot is somebody else's, and the job counts as gone (its exit code
/// file says how it ended). A bare `PID` (recorded before the identity was)
/// is still followed and cancelled by pid alone, once its exit code file
/// (read first, see [`Scheduler::exit_code_first`]) says it has not ended.
#[derive(Clone, Debug, Default)]
pub struct Direct;

/// Where `Direct` records a job's id, for lookups after an interrupted submit.
const DIRECT_PID_FILE: &str = ".drover-job-id";

/// Shell functions of `Direct`'s status and cancel commands:
/// `drover_alive PID START BOOT` succeeds while process PID lives (and is no
/// zombie) and, unless START is empty, started at START during boot BOOT.
const DIRECT_ALIVE: &str = "drover_boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null); \
drover_alive() { drover_s=$(sed 's/.*) //' /proc/\"$1\"/stat 2>/dev/null) && [ -n \"$drover_s\" ] || return 1; \
set -- \"$1\" \"$2\" \"$3\" $drover_s; [ \"$4\" != Z ] || return 1; \
[ -z \"$2\" ] || { [ \"$3\" = \"$drover_boot\" ] && [ \"${23}\" = \"$2\" ]; }; }; ";

/// A direct job's id: its pid, and (unless recorded by an older drover) the
/// process's start time and the host's boot id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirectId<'a> {
    pid: &'a str,
    identity: Option<(&'a str, &'a str)>,
}

impl<'a> DirectId<'a> {
    /// Reads `PID` or `PID:START:BOOT`; `None` for anything else.
    fn parse(id: &'a str) -> Option<DirectId<'a>> {
        let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        let mut parts = id.trim().split(':');
        let pid = parts.next().filter(|p| digits(p))?;
        match (parts.next(), parts.next(), parts.next()) {
            (None, ..) => Some(DirectId { pid, identity: None }),
            // No `/proc` where it started: only the pid is known.
            (Some(""), Some(""), None) => Some(DirectId { pid, identity: None }),
            (Some(start), Some(boot), None)
                if digits(start)
                    && !boot.is_empty()
                    && boot.len() <= 64
                    && boot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') =>
            {
                Some(DirectId { pid, identity: Some((start, boot)) })
            }
            _ => None,
        }
    }

    /// The id as recorded.
    fn text(&self) -> String {
        match self.identity {
            Some((start, boot)) => format!("{}:{start}:{boot}", self.pid),
            None => self.pid.to_owned(),
        }
    }

    /// `drover_alive` called for this process.
    fn alive(&self) -> String {
        let (start, boot) = self.identity.unwrap_or(("", ""));
        format!("drover_alive {} {} {}", quote(self.pid), quote(start), quote(boot))
    }
}

impl Direct {
    /// The id on the last line of `stdout` that is one (banners come first).
    fn id_in(stdout: &str) -> Option<String> {
        stdout.lines().rev().find_map(DirectId::parse).map(|id| id.text())
    }
}

impl Scheduler for Direct {
    fn script(&self, job: &JobSpec) -> String {
        let wrap = match job.resources.wall_time {
            Some(t) => vec!["timeout".to_owned(), "--kill-after=10".to_owned(), format!("{}s", t.as_secs().max(1))],
            None => Vec::new(),
        };
        format!("#!/bin/bash\n{}", body(job, &wrap))
    }

    fn submit(&self, work_dir: &str) -> String {
        // The job is still this shell's child (a zombie at worst) while its
        // start time is read.
        format!(
            "cd {} && {{ setsid nohup bash {SCRIPT_FILE} > {STDOUT_FILE} 2> {STDERR_FILE} < /dev/null & drover_pid=$!; \
             drover_start=$(sed 's/.*) //' /proc/$drover_pid/stat 2>/dev/null | cut -d' ' -f20); \
             echo \"$drover_pid:$drover_start:$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)\" > {DIRECT_PID_FILE}; cat {DIRECT_PID_FILE}; }}",
            quote(work_dir)
        )
    }

    fn parse_submit(&self, out: &CmdOutput) -> Result<String, CommandFailed> {
        if out.status != 0 {
            return Err(CommandFailed::from_output("starting the job", out));
        }
        Direct::id_in(&out.stdout).ok_or_else(|| CommandFailed::no_id("starting the job", out))
    }

    fn lookup(&self, _job_name: &str, work_dir: &str) -> String {
        format!("cat {}/{DIRECT_PID_FILE} 2>/dev/null || true", quote(work_dir))
    }

    fn parse_lookup(&self, out: &CmdOutput, _work_dir: &str) -> Result<Option<String>, CommandFailed> {
        Ok(Direct::id_in(&out.stdout))
    }

    fn valid_id(&self, id: &str) -> bool {
        DirectId::parse(id).is_some_and(|d| d.text() == id)
    }

    fn exit_code_first(&self) -> bool {
        true
    }

    fn status(&self, ids: &[&str]) -> String {
        let mut s = String::from(DIRECT_ALIVE);
        for id in ids.iter().filter_map(|id| DirectId::parse(id)) {
            let text = quote(&id.text());
            let _ = write!(s, "if {}; then echo {text} running; else echo {text} gone; fi; ", id.alive());
        }
        s.push_str("true");
        s
    }

    fn parse_status(&self, out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed> {
        if out.status != 0 {
            return Err(CommandFailed::from_output("checking the job", out));
        }
        let mut map: HashMap<String, JobStatus> = ids.iter().map(|id| ((*id).to_owned(), JobStatus::Unknown)).collect();
        for line in out.stdout.lines() {
            let mut words = line.split_whitespace();
            let (Some(id), Some(state), None) = (words.next(), words.next(), words.next()) else { continue };
            let Some(slot) = map.get_mut(id) else { continue };
            match state {
                "running" => *slot = JobStatus::Running,
                // Ended (or the pid is another process's now): its exit code
                // file says how.
                "gone" => *slot = JobStatus::Done(Ended::Completed),
                _ => {}
            }
        }
        Ok(map)
    }

    fn cancel(&self, id: &str) -> String {
        // The job leads its own session and process group: end all of it,
        // but only while the pid is still the job's.
        // (`kill -TERM -PGID`: dash's `kill` does not take `--`.)
        match DirectId::parse(id) {
            Some(id) => format!(
                "{DIRECT_ALIVE}if {}; then kill -TERM -{pid} 2>/dev/null; kill -TERM {pid} 2>/dev/null; fi; true",
                id.alive(),
                pid = quote(id.pid)
            ),
            None => "true".to_owned(),
        }
    }

    fn parse_cancel(&self, _out: &CmdOutput) -> Result<(), CommandFailed> {
        Ok(())
    }
}

/// A scheduler chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyScheduler {
    /// SLURM.
    Slurm(Slurm),
    /// Direct execution.
    Direct(Direct),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyScheduler::Slurm($s) => $e,
            AnyScheduler::Direct($s) => $e,
        }
    };
}

impl Scheduler for AnyScheduler {
    fn script(&self, job: &JobSpec) -> String {
        delegate!(self, s => s.script(job))
    }
    fn submit(&self, work_dir: &str) -> String {
        delegate!(self, s => s.submit(work_dir))
    }
    fn parse_submit(&self, out: &CmdOutput) -> Result<String, CommandFailed> {
        delegate!(self, s => s.parse_submit(out))
    }
    fn lookup(&self, job_name: &str, work_dir: &str) -> String {
        delegate!(self, s => s.lookup(job_name, work_dir))
    }
    fn parse_lookup(&self, out: &CmdOutput, work_dir: &str) -> Result<Option<String>, CommandFailed> {
        delegate!(self, s => s.parse_lookup(out, work_dir))
    }
    fn valid_id(&self, id: &str) -> bool {
        delegate!(self, s => s.valid_id(id))
    }
    fn refused_batch(&self, out: &CmdOutput, ids: &[&str]) -> bool {
        delegate!(self, s => s.refused_batch(out, ids))
    }
    fn exit_code_first(&self) -> bool {
        delegate!(self, s => s.exit_code_first())
    }
    fn status(&self, ids: &[&str]) -> String {
        delegate!(self, s => s.status(ids))
    }
    fn parse_status(&self, out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed> {
        delegate!(self, s => s.parse_status(out, ids))
    }
    fn final_status(&self, ids: &[&str]) -> Option<String> {
        delegate!(self, s => s.final_status(ids))
    }
    fn parse_final(&self, out: &CmdOutput, ids: &[&str]) -> Result<HashMap<String, JobStatus>, CommandFailed> {
        delegate!(self, s => s.parse_final(out, ids))
    }
    fn cancel(&self, id: &str) -> String {
        delegate!(self, s => s.cancel(id))
    }
    fn parse_cancel(&self, out: &CmdOutput) -> Result<(), CommandFailed> {
        delegate!(self, s => s.parse_cancel(out))
    }
}
