//! drover runs scientific computations as durable, controllable state machines
//! on tokio.
//!
//! This crate is the front door: it re-exports the runtime ([`drover_core`]) and,
//! as they arrive, the process kinds, the store and the engine.
//!
//! ```
//! use drover::{spawn, DriveMode, Process, ProcessHandler, State};
//! ```

pub use drover_core::{DriveMode, Error, Pool, Process, ProcessHandler, State, interruptible, spawn, spawn_owned};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
