//! Recording a running process's states in the store.

use std::marker::PhantomData;
use std::time::Duration;

use drover_core::{Recorder, State};

use crate::store::Store;
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
    _state: PhantomData<fn(&S)>,
}

impl<S> StoreRecorder<S> {
    /// Records into `store` for process `id` (inserted already).
    pub fn new(store: Store, id: impl Into<String>) -> Self {
        StoreRecorder { store, id: id.into(), _state: PhantomData }
    }
}

impl<S: State + Checkpoint> Recorder<S> for StoreRecorder<S> {
    async fn record(&self, state: &S, paused: bool) {
        let checkpoint = encode(state);
        let terminal = state.is_done();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.record(&self.id, checkpoint.clone(), paused, terminal).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(process = %self.id, error = %e, ?delay, "cannot record a checkpoint; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
