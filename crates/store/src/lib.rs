//! drover's durable store: a record of every process (id, kind, spec, parent,
//! its latest checkpoint in a versioned envelope, timestamps) and an
//! append-only log of its transitions, in SQLite (embedded, the default) or
//! PostgreSQL (shared by several engines), with the same schema.
//!
//! - [`Store`]: open, insert, record, read. Writes are committed in groups by
//!   one writer and are durable when they return.
//! - [`Checkpoint`], [`encode`], [`decode`] (from `drover-kind`, re-exported):
//!   versioned envelopes; the store itself keeps checkpoints as text and
//!   depends on no process kind.
//! - [`StoreRecorder`]: a [`Recorder`](drover_core::Recorder) that makes every
//!   state durable before the process takes its next step.

mod page;
mod recorder;
mod store;

pub use drover_kind::{Checkpoint, CheckpointError, decode, encode};
pub use page::{Cursor, DEFAULT_PAGE, ListFilter, MAX_PAGE, Page, PageLimit, PruneBatch, PruneCursor};
pub use recorder::StoreRecorder;
pub use store::{
    EngineRecord, Fence, NewProcess, Record, SCHEMA_VERSION, Store, StoreError, StoredEvent, StoredProcess,
};
