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
//! - [`SchedulerProcess`]: the process kind, with its [`JobState`].

mod computer;
mod job;
mod poller;
mod process;
mod quote;
mod retry;
mod scheduler;
mod transport;

pub use computer::{Canceller, Computer};
pub use job::{EXIT_CODE_FILE, InvalidJob, JobSpec, Resources, SCRIPT_FILE, STDERR_FILE, STDOUT_FILE, Source, Upload};
pub use poller::{MIN_INTERVAL, PollError, Poller};
pub use process::{JobState, SchedulerProcess};
pub use quote::{quote, quote_all};
pub use retry::RetryPolicy;
pub use scheduler::{AnyScheduler, CmdOutput, CommandFailed, Direct, Ended, JobStatus, Scheduler, Slurm};
pub use transport::{AnyTransport, CommandStats, Local, Ssh, SshConfig, Transport, TransportError};
