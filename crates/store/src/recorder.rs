//! Recording a running process's states in the store.

use std::marker::PhantomData;
use std::time::Duration;

use drover_core::{Recorder, State};

use crate::store::{Fence, Record, Store, StoreError};
use drover_kind::{Checkpoint, encode};

/// Records a process's states in a [`Store`] as the runtime hands them over:
/// each state is durable before the process takes its next step. If the store
/// fails, it tries again (from 100 ms, doubling, up to 10 s) until the write
/// goes through: the process waits where it is rather than run side effects
/// whose record could be lost.
#[derive(Debug)]
pub struct StoreRecorder<S> {
    store: Store,
    id: String,
    fence: Option<Fence>,
    _state: PhantomData<fn(&S)>,
}

impl<S> StoreRecorder<S> {
    /// Records into `store` for process `id` (inserted already).
    pub fn new(store: Store, id: impl Into<String>) -> Self {
        StoreRecorder { store, id: id.into(), fence: None, _state: PhantomData }
    }

    /// Records under a claim: each write commits only while `fence` still
    /// owns the process. A refused write is not retried: the recorder holds
    /// the process where it is, for good (another engine drives it now).
    pub fn fenced(store: Store, id: impl Into<String>, fence: Fence) -> Self {
        StoreRecorder { store, id: id.into(), fence: Some(fence), _state: PhantomData }
    }
}

impl<S: State + Checkpoint> Recorder<S> for StoreRecorder<S> {
    async fn record(&self, state: &S, paused: bool) {
        let checkpoint = encode(state);
        let terminal = state.is_done();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut record = Record::new(checkpoint.clone(), paused, terminal);
            record.fence.clone_from(&self.fence);
            match self.store.commit_record(&self.id, record).await {
                Ok(()) => return,
                Err(StoreError::Fenced(_) | StoreError::Unknown(_)) => {
                    tracing::warn!(process = %self.id, "another engine drives this process now; it stops here");
                    return std::future::pending().await;
                }
                Err(e) => {
                    tracing::warn!(process = %self.id, error = %e, ?delay, "cannot record a checkpoint; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
