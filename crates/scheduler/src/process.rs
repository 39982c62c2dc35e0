//! The scheduler job process kind.

use std::sync::Arc;

use drover_core::{Process, State, interruptible};
use serde::{Deserialize, Serialize};

use crate::computer::{Computer, cancel_and_confirm};
use crate::job::{DEFAULT_RETRIEVE_LIMIT, EXIT_CODE_FILE, JobSpec, SCRIPT_FILE, STDERR_FILE, STDOUT_FILE, Source};
use crate::quote::quote;
use crate::retry::{Failure, retrying};
use crate::scheduler::{Ended, JobStatus, Scheduler};
use crate::transport::Transport;

/// Where a scheduler job is. States carry their data and are serialisable, so
/// that a store can checkpoint them and a later engine resume them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Nothing done yet.
    Created,
    /// Staging files into the work directory (idempotent: files are replaced).
    Uploading,
    /// About to submit, or submitting. Recorded before `sbatch` runs, so that
    /// an interrupted submit looks the job up by name before submitting again.
    Submitting {
        /// The scheduler's name of the job.
        job_name: String,
    },
    /// Waiting in the queue.
    Queued {
        /// The scheduler's id of the job.
        job_id: String,
    },
    /// Running.
    Running {
        /// The scheduler's id of the job.
        job_id: String,
    },
    /// Left the queue; bringing its files back.
    Retrieving {
        /// The scheduler's id of the job.
        job_id: String,
        /// How it left the queue.
        ended: Ended,
    },
    /// The job ran to its end; its exit code says whether it succeeded.
    Finished {
        /// The scheduler's id of the job.
        job_id: String,
        /// The command's exit code.
        exit_code: i32,
    },
    /// The job could not run, or did not end on its own (wall time, memory).
    Failed {
        /// The scheduler's id, once it had one.
        job_id: Option<String>,
        /// What went wrong, in the scheduler's or transport's own words.
        reason: String,
    },
    /// Killed. With `cancel_pending`, the computer could not be reached and
    /// the computer's canceller keeps cancelling the job in the background.
    Killed {
        /// The scheduler's id, once it had one.
        job_id: Option<String>,
        /// Whether the cancel is still to be confirmed.
        cancel_pending: bool,
    },
    /// Paused itself after its retries ran out; resuming it tries `resume` again.
    Stalled {
        /// The state to try again from.
        resume: Box<JobState>,
        /// The last error.
        error: String,
    },
}

impl State for JobState {
    fn is_done(&self) -> bool {
        matches!(self, JobState::Finished { .. } | JobState::Failed { .. } | JobState::Killed { .. })
    }

    fn is_paused(&self) -> bool {
        matches!(self, JobState::Stalled { .. })
    }
}

impl JobState {
    /// Whether the job finished with exit code 0.
    pub fn succeeded(&self) -> bool {
        matches!(self, JobState::Finished { exit_code: 0, .. })
    }

    /// The scheduler's job id, once there is one.
    pub fn job_id(&self) -> Option<&str> {
        match self {
            JobState::Queued { job_id } | JobState::Running { job_id } | JobState::Retrieving { job_id, .. } => {
                Some(job_id)
            }
            JobState::Finished { job_id, .. } => Some(job_id),
            JobState::Failed { job_id, .. } | JobState::Killed { job_id, .. } => job_id.as_deref(),
            JobState::Stalled { resume, .. } => resume.job_id(),
            JobState::Created | JobState::Uploading | JobState::Submitting { .. } => None,
        }
    }
}

/// A batch job on a [`Computer`], in the spirit of AiiDA's `CalcJob`: upload,
/// submit, follow (through the computer's batched poller), retrieve; cancel on
/// kill.
///
/// Pause while the job is queued or running only stops following it: the job
/// keeps its place in the queue (or keeps running), and resume follows it
/// again. Kill cancels it (`scancel`, or `kill` for direct jobs), waits until
/// the scheduler confirms, and retrieves what it wrote so far; if the computer
/// cannot be reached, the process ends `Killed { cancel_pending: true }` at
/// once and the computer's [`Canceller`](crate::Canceller) keeps trying.
#[derive(Debug)]
pub struct SchedulerProcess {
    spec: JobSpec,
    computer: Arc<Computer>,
    state: JobState,
    /// The submit step was entered by this very process, not restored: no
    /// lookup by name is needed before the first `sbatch`.
    fresh_submit: bool,
}

impl SchedulerProcess {
    /// A job to run `spec` on `computer`.
    pub fn new(spec: JobSpec, computer: Arc<Computer>) -> SchedulerProcess {
        SchedulerProcess { spec, computer, state: JobState::Created, fresh_submit: false }
    }

    /// A process restored in `state` (from a checkpoint).
    pub fn restore(spec: JobSpec, computer: Arc<Computer>, state: JobState) -> SchedulerProcess {
        SchedulerProcess { spec, computer, state, fresh_submit: false }
    }

    /// What it runs.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    fn work_dir(&self) -> String {
        self.computer.work_dir(&self.spec.id)
    }

    /// Records a failure: for good, or (when it may pass) as a stall that a
    /// resume retries from `retry_from`.
    fn fail(&mut self, failure: Failure, retry_from: JobState, job_id: Option<String>) {
        self.state = if failure.transient {
            JobState::Stalled { resume: Box::new(retry_from), error: failure.message }
        } else {
            JobState::Failed { job_id, reason: failure.message }
        };
    }

    async fn check(&mut self) {
        if let Err(e) = self.spec.validate() {
            self.state = JobState::Failed { job_id: None, reason: e.to_string() };
            return;
        }
        for upload in &self.spec.uploads {
            if let Source::Path(path) = &upload.source
                && !path.is_file()
            {
                self.state = JobState::Failed {
                    job_id: None,
                    reason: format!("input file `{}` does not exist or is not a file", path.display()),
                };
                return;
            }
        }
        self.state = JobState::Uploading;
    }

    async fn upload(&mut self) {
        let computer = self.computer.clone();
        let spec = &self.spec;
        let dir = self.work_dir();
        let result = retrying(computer.retry, || async {
            let t = &computer.transport;
            let mut dirs = vec![dir.clone()];
            for u in &spec.uploads {
                if let Some((parent, _)) = u.target.rsplit_once('/') {
                    dirs.push(format!("{dir}/{parent}"));
                }
            }
            let mkdir = format!("mkdir -p {}", dirs.iter().map(|d| quote(d)).collect::<Vec<_>>().join(" "));
            let out = t.run(&mkdir).await?;
            if out.status != 0 {
                return Err(Failure {
                    message: format!("mkdir failed: {}", out.stderr.trim()),
                    transient: false,
                    accepted: false,
                });
            }
            for u in &spec.uploads {
                let target = format!("{dir}/{}", u.target);
                match &u.source {
                    Source::Path(path) => t.put(path, &target).await?,
                    Source::Content(bytes) => t.write(&target, bytes).await?,
                }
            }
            t.write(&format!("{dir}/{SCRIPT_FILE}"), computer.scheduler.script(spec).as_bytes()).await?;
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                self.state = JobState::Submitting { job_name: self.spec.job_name() };
                self.fresh_submit = true;
            }
            Err(f) => {
                if !f.transient {
                    self.clean_up().await;
                }
                self.fail(f, JobState::Uploading, None);
            }
        }
    }

    async fn submit(&mut self, job_name: String) {
        let computer = self.computer.clone();
        let dir = self.work_dir();
        let mut fresh = std::mem::take(&mut self.fresh_submit);
        let result = retrying(computer.retry, || {
            let lookup = !fresh;
            // Whatever happens to this try, the next one must look first.
            fresh = false;
            let (computer, dir, job_name) = (&computer, &dir, &job_name);
            async move {
                let (t, s) = (&computer.transport, &computer.scheduler);
                if lookup {
                    let out = t.run(&s.lookup(job_name, dir)).await?;
                    if let Some(id) = s.parse_lookup(&out, dir)? {
                        return Ok(id);
                    }
                }
                let out = t.run(&s.submit(dir)).await?;
                match s.parse_submit(&out) {
                    Ok(id) => Ok(id),
                    // Accepted, but the id was not in what it printed: the
                    // lookup may find the job; if not, it is not submitted
                    // again (it may exist) and its directory stays.
                    Err(e) if e.accepted => {
                        let out = t.run(&s.lookup(job_name, dir)).await?;
                        s.parse_lookup(&out, dir)?.ok_or_else(|| e.into())
                    }
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await;
        match result {
            Ok(job_id) => self.state = JobState::Queued { job_id },
            Err(f) => {
                if !f.transient && !f.accepted {
                    // Refused by the scheduler: leave nothing on the computer.
                    self.clean_up().await;
                }
                self.fail(f, JobState::Submitting { job_name }, None);
            }
        }
    }

    /// Whether the job wrote its exit code, asked first where the job's id
    /// may outlive it ([`Scheduler::exit_code_first`]); `false` when that
    /// cannot be told.
    async fn wrote_exit_code(&self) -> bool {
        if !self.computer.scheduler.exit_code_first() {
            return false;
        }
        let mark = "drover-exit-code-written";
        let file = format!("{}/{EXIT_CODE_FILE}", self.work_dir());
        let test = format!("test -e {} && echo {mark}; true", quote(&file));
        let out = self.computer.transport.run(&test).await;
        out.is_ok_and(|out| out.stdout.lines().any(|l| l.trim() == mark))
    }

    async fn follow(&mut self, job_id: String, running: bool) {
        if interruptible(self.wrote_exit_code()).await {
            self.state = JobState::Retrieving { job_id, ended: Ended::Completed };
            return;
        }
        let computer = self.computer.clone();
        let last = if running { JobStatus::Running } else { JobStatus::Pending };
        let result = retrying(computer.retry, || async {
            Ok(interruptible(computer.poller().wait_change(&job_id, last.clone())).await?)
        })
        .await;
        let from = if running {
            JobState::Running { job_id: job_id.clone() }
        } else {
            JobState::Queued { job_id: job_id.clone() }
        };
        self.state = match result {
            Ok(JobStatus::Pending) => JobState::Queued { job_id },
            Ok(JobStatus::Running) => JobState::Running { job_id },
            Ok(JobStatus::Done(ended)) => JobState::Retrieving { job_id, ended },
            Ok(JobStatus::Unknown) => JobState::Retrieving { job_id, ended: Ended::Other("UNKNOWN".into()) },
            Err(f) => {
                self.fail(Failure { transient: true, ..f }, from, Some(job_id));
                return;
            }
        };
    }

    /// Brings back the job's files; returns the exit code it wrote, if any.
    async fn fetch(&self) -> Result<Option<i32>, Failure> {
        let computer = &self.computer;
        let dir = self.work_dir();
        let local = &self.spec.local_dir;
        tokio::fs::create_dir_all(local).await.map_err(|e| Failure {
            message: format!("cannot create `{}`: {e}", local.display()),
            transient: false,
            accepted: false,
        })?;
        let always = [STDOUT_FILE, STDERR_FILE, EXIT_CODE_FILE];
        // One limit for all the job's files together.
        let mut left = self.spec.retrieve_limit.unwrap_or(DEFAULT_RETRIEVE_LIMIT);
        for name in always.iter().copied().chain(self.spec.retrieve.iter().map(String::as_str)) {
            let target = local.join(name);
            if let Some(parent) = target.parent() {
                let _ = tokio::fs::create_dir_all(parent).await;
            }
            if let Some(size) = computer.transport.get(&format!("{dir}/{name}"), &target, left).await? {
                left = left.saturating_sub(size);
            }
        }
        let code = tokio::fs::read_to_string(local.join(EXIT_CODE_FILE)).await.ok();
        Ok(code.and_then(|c| c.trim().parse().ok()))
    }

    async fn retrieve(&mut self, job_id: String, ended: Ended) {
        let policy = self.computer.retry;
        let result = retrying(policy, || self.fetch()).await;
        self.state = match (result, &ended) {
            (Err(f), _) => {
                let from = JobState::Retrieving { job_id: job_id.clone(), ended };
                self.fail(f, from, Some(job_id));
                return;
            }
            (Ok(_), Ended::Timeout) => {
                JobState::Failed { job_id: Some(job_id), reason: "the job hit its wall time".into() }
            }
            (Ok(_), Ended::OutOfMemory) => {
                JobState::Failed { job_id: Some(job_id), reason: "the job ran out of memory".into() }
            }
            (Ok(_), Ended::Cancelled) => {
                JobState::Failed { job_id: Some(job_id), reason: "the job was cancelled outside drover".into() }
            }
            (Ok(Some(exit_code)), _) => JobState::Finished { job_id, exit_code },
            (Ok(None), ended) => JobState::Failed {
                job_id: Some(job_id),
                reason: format!("the job ended ({ended:?}) without writing its exit code"),
            },
        };
    }

    /// Removes the job's work directory (after the scheduler refused the job).
    async fn clean_up(&self) {
        let _ = self.computer.transport.run(&format!("rm -rf {}", quote(&self.work_dir()))).await;
    }
}

impl Process<JobState> for SchedulerProcess {
    fn state(&self) -> &JobState {
        &self.state
    }

    fn transition_to(&mut self, state: JobState) {
        self.state = state;
    }

    async fn kill(&mut self) {
        let computer = self.computer.clone();
        let mut job_id = self.state.job_id().map(str::to_owned);
        if job_id.is_none() && matches!(self.state, JobState::Submitting { .. }) && computer.transport.reachable() {
            // The submit may have gone through: find the job by its name.
            let lookup = computer.scheduler.lookup(&self.spec.job_name(), &self.work_dir());
            if let Ok(Ok(out)) = tokio::time::timeout(computer.kill_timeout, computer.transport.run(&lookup)).await {
                job_id = computer.scheduler.parse_lookup(&out, &self.work_dir()).ok().flatten();
            }
        }
        let Some(id) = job_id else {
            self.state = JobState::Killed { job_id: None, cancel_pending: false };
            return;
        };
        let ended = computer.transport.reachable()
            && tokio::time::timeout(computer.kill_timeout, self.wrote_exit_code()).await.unwrap_or(false);
        if ended {
            // Nothing left to cancel, and its pid may be another process's.
            let _ = tokio::time::timeout(computer.kill_timeout, self.fetch()).await;
            self.state = JobState::Killed { job_id: Some(id), cancel_pending: false };
            return;
        }
        let confirmed = computer.transport.reachable()
            && matches!(
                tokio::time::timeout(
                    computer.kill_timeout,
                    cancel_and_confirm(&computer.transport, &computer.scheduler, &id)
                )
                .await,
                Ok(Ok(true))
            );
        if confirmed {
            // What the job wrote so far.
            let _ = tokio::time::timeout(computer.kill_timeout, self.fetch()).await;
        } else {
            computer.canceller().cancel_in_background(id.clone());
        }
        self.state = JobState::Killed { job_id: Some(id), cancel_pending: !confirmed };
    }

    /// Nothing to do: the runtime dropped the wait, so the poller stops
    /// asking about this job; the job itself keeps its place.
    async fn pause(&mut self) {}

    async fn resume(&mut self) {
        if let JobState::Stalled { resume, .. } = &self.state {
            self.state = (**resume).clone();
        }
    }

    async fn advance(&mut self) {
        match self.state.clone() {
            JobState::Created => self.check().await,
            JobState::Uploading => self.upload().await,
            JobState::Submitting { job_name } => self.submit(job_name).await,
            JobState::Queued { job_id } => self.follow(job_id, false).await,
            JobState::Running { job_id } => self.follow(job_id, true).await,
            JobState::Retrieving { job_id, ended } => self.retrieve(job_id, ended).await,
            JobState::Finished { .. }
            | JobState::Failed { .. }
            | JobState::Killed { .. }
            | JobState::Stalled { .. } => {}
        }
    }
}
