//! What the engine's tests share.

use std::rc::Rc;

use tokio::task::LocalSet;

/// Runs `f` to its end on a fresh current-thread runtime and `LocalSet`, as
/// one engine's life: the `LocalSet` and every process on it end with it.
pub(crate) fn run<F: std::future::Future>(f: impl FnOnce(Rc<LocalSet>) -> F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = Rc::new(LocalSet::new());
    local.block_on(&rt, f(local.clone()))
}

/// An engine of pool `daemon` under the fixed id `id` (so that a restarted
/// one takes its own processes back at once), driving `kinds`.
#[allow(dead_code)]
pub(crate) fn engine(
    store: drover_store::Store,
    local: &Rc<LocalSet>,
    kinds: drover_engine::Kinds,
    id: &str,
) -> drover_engine::Engine {
    let identity = drover_engine::Identity { id: id.into(), ..drover_engine::Identity::fresh("daemon") };
    drover_engine::Engine::with_identity(store, local.clone(), kinds, identity)
}

/// Shell processes under `slots` governor slots, run from `run_root`.
#[allow(dead_code)]
pub(crate) fn shell_env(run_root: &std::path::Path, slots: usize) -> drover_shell::ShellEnv {
    drover_shell::ShellEnv { governor: drover_shell::Governor::new(slots), run_root: run_root.to_owned() }
}
