//! drover's durable store: a record of every process (id, kind, spec, parent,
//! its latest checkpoint in a versioned envelope, timestamps) and an
//! append-only log of its transitions, in SQLite (embedded, the default) or
//! PostgreSQL (shared by several engines), with the same schema.
//!
//! - [`Store`]: open, insert, record, read. Writes are committed in groups by
//!   one writer and are durable when they return.
//! - [`Checkpoint`], [`encode`], [`decode`]: versioned envelopes; a newer
//!   version than this drover knows is refused, a corrupt one concerns only
//!   its own process.
//! - [`StoreRecorder`]: a [`Recorder`](drover_core::Recorder) that makes every
//!   state durable before the process takes its next step.

mod checkpoint;
mod recorder;
mod store;

pub use checkpoint::{Checkpoint, CheckpointError, decode, encode};
pub use recorder::StoreRecorder;
pub use store::{NewProcess, SCHEMA_VERSION, Store, StoreError, StoredEvent, StoredProcess};
