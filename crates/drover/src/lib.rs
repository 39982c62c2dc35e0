//! drover runs scientific computations as durable, controllable state machines
//! on tokio.
//!
//! This crate is the front door: it re-exports the runtime ([`drover_core`]),
//! the process kinds (shell, scheduler, cloud), the store and the engine.
//!
//! ```
//! use drover::{spawn, DriveMode, Process, ProcessHandler, State};
//! ```

pub use drover_core::{
    DriveMode, Error, Interruptible, Pool, Process, ProcessHandler, Recorder, State, interruptible, spawn, spawn_owned,
    spawn_recorded, spawn_recorded_paused,
};

/// Local shell processes under a governor (feature `shell`, on by default).
/// The seam of process kinds: the `Kind` trait, checkpoints, children.
pub use drover_kind as kind;

#[cfg(feature = "shell")]
pub use drover_shell as shell;

#[cfg(feature = "group")]
pub use drover_group as group;

/// Scheduler jobs on HPC clusters (feature `scheduler`, on by default).
#[cfg(feature = "scheduler")]
pub use drover_scheduler as scheduler;

/// Cloud jobs on Kubernetes (feature `cloud`, on by default).
#[cfg(feature = "cloud")]
pub use drover_cloud as cloud;

/// The durable store (feature `store`, on by default).
#[cfg(feature = "store")]
pub use drover_store as store;

/// The engine: submission through the store, recovery after a crash
/// (feature `engine`, on by default).
#[cfg(feature = "engine")]
pub use drover_engine as engine;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
