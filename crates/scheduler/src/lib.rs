//! Scheduler jobs on HPC clusters, in the spirit of AiiDA's `CalcJob`: stage
//! files to a computer through a transport, submit a batch job, follow it,
//! bring its outputs back, and cancel it on kill.
//!
//! - [`Transport`]: how commands and files reach a computer — [`Local`] (the
//!   engine runs on the login node) or [`Ssh`] (the system's OpenSSH, one
//!   multiplexed connection per computer, SFTP for files).
//! - [`Scheduler`]: a batch system, sans I/O — [`Slurm`] or [`Direct`] (a
//!   detached background process). Job scripts come from a typed [`JobSpec`];
//!   every value that reaches a shell is quoted.
//! - [`Computer`]: a transport, a scheduler, a work root, and what the
//!   computer's processes share: one batched status [`Poller`] (one status
//!   command per interval for all jobs) and one background [`Canceller`].
//! - [`SchedulerProcess`]: the process kind, with its [`JobState`]:
//!   `Created → Uploading → Submitting { job_name } → Queued { job_id } →
//!   Running { job_id } → Retrieving { job_id, ended } → Finished { exit_code }`,
//!   or `Failed { reason }`, `Killed { cancel_pending }`, and `Stalled` when
//!   retries ran out (the process pauses itself; resume tries again).
//!
//! # Behaviour a user can rely on
//!
//! - Every step is idempotent and every state serialisable. `Submitting` is
//!   recorded before `sbatch` runs; a process restored in it looks its job up
//!   before submitting (in the file the submit wrote in the work directory,
//!   then among the user's own jobs named `drover-<id>` that ran there, in
//!   `squeue` and, with accounting, `sacct`), so a job is never submitted
//!   twice and another user's job is never adopted.
//! - The job id is read from the line of `sbatch`'s output that is one, so a
//!   site's wrapper or a login banner printing around it does no harm; a
//!   submit that exited 0 without a readable id is looked up, and if not
//!   found fails with what was printed, keeping its work directory.
//! - A direct job's id records the process's start time and the host's boot
//!   id beside its pid: a recycled pid is never followed or killed.
//! - One SSH master connection per computer and user, shared by all its
//!   processes and by every engine of the user (at a control path they all
//!   find again); a master nobody uses ends after its idle time, so a killed
//!   engine leaves no connection behind;
//!   at most [`SshConfig::max_channels`] commands at once; a broken connection
//!   is reopened on next use, no sooner than its backoff allows.
//! - One status command per polling interval per computer, whatever the number
//!   of jobs; final states arrive in the same call (`squeue --states=all` while
//!   SLURM remembers the job; the exit code from a file the job script writes).
//! - Transport and scheduler failures that may pass are retried with
//!   exponential backoff ([`RetryPolicy`]: 5 attempts from 4 s); refusals
//!   (an unknown host, a refused key, a partition SLURM rejects) fail the
//!   process at once with the remote's own message, and leave nothing behind.
//! - Pause while queued or running stops following the job: the job keeps its
//!   place in the queue and runs on; resume follows it again.
//! - Kill cancels the job and waits until the scheduler confirms it, then
//!   retrieves what the job wrote; when the computer cannot be reached, the
//!   process ends at once as `Killed { cancel_pending: true }` and the
//!   computer's [`Canceller`] keeps trying until SLURM confirms.

mod computer;
mod job;
mod kind;
mod master;
mod poller;
mod process;
mod quote;
mod retry;
mod scheduler;
mod transport;

pub use computer::{Canceller, Computer};
pub use job::{
    DEFAULT_RETRIEVE_LIMIT, EXIT_CODE_FILE, InvalidJob, JobSpec, MAX_RETRIEVE_MIB, Resources, SCRIPT_FILE, STDERR_FILE,
    STDOUT_FILE, Source, Upload,
};
pub use kind::{Computers, SchedulerJob, SchedulerKind, computers};
pub use poller::{DEFAULT_INTERVAL, MIN_INTERVAL, PollError, Poller};
pub use process::{JobState, SchedulerProcess};
pub use quote::{quote, quote_all};
pub use retry::RetryPolicy;
pub use scheduler::{AnyScheduler, CmdOutput, CommandFailed, Direct, Ended, JobStatus, SUBMIT_FILE, Scheduler, Slurm};
pub use transport::{
    AnyTransport, CommandStats, DEFAULT_IDLE_TIMEOUT, Local, Ssh, SshConfig, Transport, TransportError,
};
