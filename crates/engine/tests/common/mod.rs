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
