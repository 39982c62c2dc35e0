//! The drover runtime: scientific computations as durable, controllable state
//! machines on tokio.
//!
//! A **process** ([`Process`]) is a state machine over its own [`State`] enum.
//! [`spawn`] drives it on a tokio [`LocalSet`](tokio::task::LocalSet), so a
//! process need not be `Send`, and returns a [`ProcessHandler`] that launches,
//! steps, pauses, resumes and kills it and watches its state.
//!
//! The runtime keeps a control contract:
//!
//! - **Launch.** In [`DriveMode::FireAndForget`] nothing runs before the first
//!   nudge; after it the process advances until it is done. In
//!   [`DriveMode::Step`] each nudge allows exactly one step.
//! - **Observe.** Every state the process enters is published, starting with its
//!   real state at spawn.
//! - **Pause** takes effect between steps, or at once inside a step that waits in
//!   [`interruptible`]; the process's pause hook runs once. Nothing advances while
//!   paused. A process may pause itself.
//! - **Resume** continues a paused process; on one that is not paused it does
//!   nothing and leaves nothing behind.
//! - **Kill** works from every point before the end and interrupts a step at
//!   once; the process's kill hook runs once.
//! - **After the end** every control call returns an error at once. A panic ends
//!   only the process that panicked.
//!
//! ```
//! use std::rc::Rc;
//! use tokio::sync::Mutex;
//! use drover_core::{spawn, DriveMode, Process, State};
//!
//! #[derive(Clone, Debug, PartialEq)]
//! enum Sum { Todo(i32, i32), Done(i32), Killed }
//!
//! impl State for Sum {
//!     fn is_done(&self) -> bool { !matches!(self, Sum::Todo(..)) }
//!     fn is_paused(&self) -> bool { false }
//! }
//!
//! struct Add(Sum);
//!
//! impl Process<Sum> for Add {
//!     fn state(&self) -> &Sum { &self.0 }
//!     fn transition_to(&mut self, state: Sum) { self.0 = state }
//!     async fn kill(&mut self) { self.0 = Sum::Killed }
//!     async fn pause(&mut self) {}
//!     async fn advance(&mut self) {
//!         if let Sum::Todo(a, b) = self.0 { self.0 = Sum::Done(a + b) }
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let local = tokio::task::LocalSet::new();
//! let proc = Rc::new(Mutex::new(Add(Sum::Todo(6, 4))));
//! local.run_until(async {
//!     let handler = spawn(&local, &proc, DriveMode::FireAndForget);
//!     handler.try_nudge().unwrap();
//!     handler.until_completion().await;
//! }).await;
//! assert_eq!(proc.lock().await.state(), &Sum::Done(10));
//! # });
//! ```

mod driver;
mod error;
mod handler;
mod interrupt;
mod pool;
mod process;
mod retry;
mod runner;
mod shared;

pub use driver::{Recorder, spawn, spawn_owned, spawn_recorded, spawn_recorded_paused};
pub use error::Error;
pub use handler::ProcessHandler;
pub use interrupt::{Interruptible, interruptible};
pub use pool::Pool;
pub use process::{DriveMode, Process, State};
pub use retry::{RetryPolicy, retrying};
