//! The task that drives one process: it waits for requests, runs steps and hooks,
//! publishes every state, and records how the process ended.

use std::any::Any;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Mutex;
use tokio::task::LocalSet;

use crate::interrupt::{interruptible, poll_marked};
use crate::runner::{self, Block};
use crate::shared::{Ctl, End, Shared};
use crate::{DriveMode, Process, ProcessHandler, State};

/// Spawns `proc` on `local` and returns its handler.
///
/// The process is shared with the caller, who can inspect it (for example its
/// outputs) after the end. The driver holds its lock only while a step or hook
/// runs; waiting for the lock counts as [`interruptible`].
///
/// In [`DriveMode::FireAndForget`] nothing runs before the first nudge; in
/// [`DriveMode::Step`] each nudge allows one step.
///
/// # Panics
///
/// If the process's mutex is locked when `spawn` is called: the runtime reads
/// the process's real state to publish it as the first state.
pub fn spawn<S, P>(local: &LocalSet, proc: &Rc<Mutex<P>>, drive_mode: DriveMode) -> ProcessHandler<S>
where
    S: State,
    P: Process<S> + 'static,
{
    let (shared, done) = {
        let guard = proc.try_lock().expect("drover::spawn: the process's mutex is locked; release it before spawning");
        prepare(&*guard, drive_mode)
    };
    spawn_host(local, shared, Borrowed(proc.clone()), done)
}

/// Spawns `proc` on `local`, owned by the runtime: no lock is taken around it.
/// [`ProcessHandler::join`] hands the process back at the end, with its state
/// and outputs.
///
/// Otherwise as [`spawn`].
pub fn spawn_owned<S, P>(local: &LocalSet, proc: P, drive_mode: DriveMode) -> ProcessHandler<S, P>
where
    S: State,
    P: Process<S> + 'static,
{
    let (shared, done) = prepare(&proc, drive_mode);
    spawn_host(local, shared, Owned(proc), done)
}

/// Makes the control block for a process about to be spawned, with its real
/// state as the first one published.
pub(crate) fn prepare<S: State, O, P: Process<S>>(proc: &P, mode: DriveMode) -> (Shared<S, O>, bool) {
    let done = proc.is_done();
    let paused = proc.is_paused() && !done;
    (Shared::new(mode, proc.state().clone(), paused), done)
}

/// Spawns the driver of `host` on `local`'s runner, with the control block
/// `shared`: one allocation for both.
fn spawn_host<S: State, H: Host<S> + 'static>(
    local: &LocalSet,
    shared: Shared<S, H::Output>,
    host: H,
    done: bool,
) -> ProcessHandler<S, H::Output> {
    ProcessHandler::new(runner::spawn(local, shared, move |guard| drive(host, guard, done)))
}

/// One call into the process.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Advance,
    Pause,
    Resume,
    Kill,
}

/// What the driver learns from the process after each call.
pub(crate) struct Snapshot<S> {
    state: S,
    done: bool,
    paused: bool,
}

async fn apply<S: State, P: Process<S>>(proc: &mut P, op: Op) -> Snapshot<S> {
    match op {
        Op::Advance => proc.advance().await,
        Op::Pause => proc.pause().await,
        Op::Resume => proc.resume().await,
        Op::Kill => proc.kill().await,
    }
    Snapshot { state: proc.state().clone(), done: proc.is_done(), paused: proc.is_paused() }
}

/// Where the driver finds its process.
pub(crate) trait Host<S: State> {
    /// What the handler's `join` hands back.
    type Output;
    fn apply(&mut self, op: Op) -> impl Future<Output = Snapshot<S>>;
    fn finish(self) -> Self::Output;
    /// Makes a new state durable before the process goes on (see [`Recorder`]).
    fn record(&mut self, _state: &S, _paused: bool) -> impl Future<Output = ()> {
        std::future::ready(())
    }
    /// Records that the process panicked (see [`Recorder::panicked`]).
    fn panicked(&mut self, _state: &S, _message: &str) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

/// Makes a process's states durable: the runtime hands it every state the
/// process enters (after a step, a pause, a resume, a kill) and waits until it
/// returns before the process takes its next step or hook. So a side effect
/// never starts before the state that announced it is recorded.
///
/// `paused` says whether the process is paused after this transition (by a
/// request, or by itself), so that a restored process can stay paused.
///
/// The recorder owns its failures: it returns once the state is durable,
/// retrying as it sees fit. A store that cannot record holds the process where
/// it is, which is safer than running side effects nobody could resume.
pub trait Recorder<S>: 'static {
    /// Records `state`; returns once it is durable.
    fn record(&self, state: &S, paused: bool) -> impl Future<Output = ()>;

    /// The process panicked, in a step or a hook, and ends with
    /// [`Error::Panicked`](crate::Error::Panicked). The runtime has run its
    /// kill hook to clean up (unless the kill hook itself panicked); `state`
    /// is the state it left, or the last one published. A durable recorder
    /// records an ending here, so that the process is not taken for one that
    /// still runs. Returns once that is durable. The default does nothing.
    fn panicked(&self, state: &S, message: &str) -> impl Future<Output = ()> {
        let _ = (state, message);
        std::future::ready(())
    }
}

/// Spawns `proc`, owned by the runtime, and records every state it enters with
/// `recorder` before it takes its next step. Otherwise as [`spawn_owned`].
pub fn spawn_recorded<S, P, R>(local: &LocalSet, proc: P, drive_mode: DriveMode, recorder: R) -> ProcessHandler<S, P>
where
    S: State,
    P: Process<S> + 'static,
    R: Recorder<S>,
{
    let (shared, done) = prepare(&proc, drive_mode);
    spawn_host(local, shared, Recorded { host: Owned(proc), recorder }, done)
}

/// As [`spawn_recorded`], for a process restored from a store where it was
/// paused by a request: it starts paused, without running its pause hook
/// again, and a resume runs its resume hook.
pub fn spawn_recorded_paused<S, P, R>(
    local: &LocalSet,
    proc: P,
    drive_mode: DriveMode,
    recorder: R,
) -> ProcessHandler<S, P>
where
    S: State,
    P: Process<S> + 'static,
    R: Recorder<S>,
{
    let (shared, done) = prepare(&proc, drive_mode);
    if !done {
        let mut ctl = shared.lock();
        ctl.paused = true;
        ctl.want_paused = true;
    }
    spawn_host(local, shared, Recorded { host: Owned(proc), recorder }, done)
}

/// A host whose states a [`Recorder`] makes durable.
pub(crate) struct Recorded<H, R> {
    host: H,
    recorder: R,
}

impl<S: State, H: Host<S>, R: Recorder<S>> Host<S> for Recorded<H, R> {
    type Output = H::Output;

    fn apply(&mut self, op: Op) -> impl Future<Output = Snapshot<S>> {
        self.host.apply(op)
    }

    fn finish(self) -> H::Output {
        self.host.finish()
    }

    fn record(&mut self, state: &S, paused: bool) -> impl Future<Output = ()> {
        self.recorder.record(state, paused)
    }

    fn panicked(&mut self, state: &S, message: &str) -> impl Future<Output = ()> {
        self.recorder.panicked(state, message)
    }
}

/// A process shared with the caller as `Rc<Mutex<P>>`.
pub(crate) struct Borrowed<P>(Rc<Mutex<P>>);

impl<S: State, P: Process<S>> Host<S> for Borrowed<P> {
    type Output = ();

    async fn apply(&mut self, op: Op) -> Snapshot<S> {
        let mut proc = match self.0.try_lock() {
            Ok(proc) => proc,
            // Rare: the caller holds the lock. The lock future is boxed so that its
            // 120 bytes do not sit in every driver's frame.
            Err(_) => interruptible(Box::pin(self.0.lock())).await,
        };
        apply(&mut *proc, op).await
    }

    fn finish(self) {}
}

/// A process the runtime owns.
pub(crate) struct Owned<P>(pub(crate) P);

impl<S: State, P: Process<S>> Host<S> for Owned<P> {
    type Output = P;

    fn apply(&mut self, op: Op) -> impl Future<Output = Snapshot<S>> {
        apply(&mut self.0, op)
    }

    fn finish(self) -> P {
        self.0
    }
}

/// A host whose output is dropped at the end, for processes whose output
/// cannot leave their thread.
pub(crate) struct Detached<H>(pub(crate) H);

impl<S: State, H: Host<S>> Host<S> for Detached<H> {
    type Output = ();

    fn apply(&mut self, op: Op) -> impl Future<Output = Snapshot<S>> {
        self.0.apply(op)
    }

    fn finish(self) {}
}

/// A process's claim on its control block, held from the moment it is spawned:
/// if it is dropped before the process ends (even before the driver's first
/// poll, or with a job that never reached its worker), it closes the block as
/// aborted, so that no handler waits forever.
pub(crate) struct AbortGuard<S: Clone, O>(pub(crate) Arc<Block<S, O>>);

impl<S: Clone, O> Drop for AbortGuard<S, O> {
    fn drop(&mut self) {
        self.0.close(End::Aborted, None, None);
    }
}

/// The driver of one process. Its arguments, the guard among them, are
/// moved into the future at the call, so dropping the future unpolled still
/// closes the process.
///
/// An `async` block rather than an `async fn`, whose arguments would take room
/// twice in every driver's frame.
#[allow(clippy::manual_async_fn, reason = "an async fn's arguments take room twice in its frame")]
pub(crate) fn drive<S: State, H: Host<S>>(
    mut host: H,
    guard: AbortGuard<S, H::Output>,
    done: bool,
) -> impl Future<Output = ()> {
    async move {
        let shared: &Shared<S, H::Output> = &guard.0;
        let ended = run(&mut host, shared, done).await;
        let (end, last) = match ended {
            Ok(ended) => ended,
            // Boxed: rare, and its hooks' futures need not sit in every frame.
            Err(panic) => Box::pin(panicked(&mut host, shared, panic)).await,
        };
        let output = matches!(end, End::Done | End::Killed).then(|| host.finish());
        shared.close(end, output, last);
    }
}

/// A panic is an ending: the kill hook cleans up what the process started (a
/// job, a child), once, and the recorder hears of it.
async fn panicked<S: State, H: Host<S>>(
    host: &mut H,
    shared: &Shared<S, H::Output>,
    Panic { message, killed }: Panic,
) -> (End, Option<S>) {
    let mut left = None;
    if !killed {
        left = caught(host.apply(Op::Kill)).await.ok().map(|snap| snap.state);
    }
    let state = left.unwrap_or_else(|| shared.state());
    let _ = caught(host.panicked(&state, &message)).await;
    (End::Panicked(message), None)
}

/// Runs a hook (pause, resume, kill), catching its panic. Boxed: hooks are
/// rare, and their futures need not sit in every driver's frame.
async fn hook<S: State, H: Host<S>>(host: &mut H, op: Op) -> Result<Snapshot<S>, String> {
    Box::pin(caught(host.apply(op))).await
}

/// What the driver does next.
enum Action {
    Advance,
    Pause,
    Resume,
    Kill,
}

/// A panic in process code (or in the recorder).
struct Panic {
    message: String,
    /// Whether the kill hook has run (or was what panicked).
    killed: bool,
}

impl Panic {
    fn before_kill(message: String) -> Panic {
        Panic { message, killed: false }
    }

    fn in_kill(message: String) -> Panic {
        Panic { message, killed: true }
    }
}

/// Drives the process to its end, and returns how it ended with its final
/// state, which `close` publishes. `Err` carries a panic's message.
#[allow(clippy::manual_async_fn, reason = "an async fn's arguments take room twice in its frame")]
fn run<'a, S: State, H: Host<S>>(
    host: &'a mut H,
    shared: &'a Shared<S, H::Output>,
    done: bool,
) -> impl Future<Output = Result<(End, Option<S>), Panic>> + 'a {
    // An `async` block, as `drive`.
    async move {
        if done {
            return Ok((End::Done, None));
        }
        let mut credit = false;
        loop {
            // Bound first: a scrutinee's future would sit in the frame beside the step's.
            let action = next_action(shared, &mut credit).await;
            let snap = match action {
                Action::Kill => {
                    let snap = hook(host, Op::Kill).await.map_err(Panic::in_kill)?;
                    caught(host.record(&snap.state, false)).await.map_err(Panic::in_kill)?;
                    return Ok((End::Killed, Some(snap.state)));
                }
                Action::Pause => {
                    let snap = hook(host, Op::Pause).await.map_err(Panic::before_kill)?;
                    caught(host.record(&snap.state, !snap.done)).await.map_err(Panic::before_kill)?;
                    if snap.done {
                        return Ok((End::Done, Some(snap.state)));
                    }
                    let mut ctl = shared.lock();
                    Shared::publish(&mut ctl, snap.state);
                    ctl.pausing = false;
                    ctl.paused = true;
                    ctl.pauses += 1;
                    shared.notify(ctl);
                    continue;
                }
                Action::Resume => {
                    let snap = hook(host, Op::Resume).await.map_err(Panic::before_kill)?;
                    caught(host.record(&snap.state, snap.paused && !snap.done)).await.map_err(Panic::before_kill)?;
                    if snap.done {
                        return Ok((End::Done, Some(snap.state)));
                    }
                    let mut ctl = shared.lock();
                    Shared::publish(&mut ctl, snap.state);
                    ctl.resuming = false;
                    if snap.paused {
                        // The process still says it is paused: it stays paused.
                        ctl.want_paused = true;
                    } else {
                        ctl.paused = false;
                    }
                    shared.notify(ctl);
                    continue;
                }
                Action::Advance => match advance(host, shared).await {
                    Ok(Some(snap)) => snap,
                    // Interrupted: a kill or pause is pending; the step keeps its nudge.
                    Ok(None) => continue,
                    // The process panicked: `drive` runs its kill hook.
                    Err(panic) => return Err(Panic::before_kill(panic)),
                },
            };
            credit = false;
            caught(host.record(&snap.state, snap.paused && !snap.done)).await.map_err(Panic::before_kill)?;
            if snap.done {
                return Ok((End::Done, Some(snap.state)));
            }
            {
                let mut ctl = shared.lock();
                Shared::publish(&mut ctl, snap.state);
                if snap.paused {
                    // The process paused itself: no hook, a resume continues it.
                    ctl.paused = true;
                    ctl.want_paused = true;
                    ctl.pauses += 1;
                    shared.notify(ctl);
                    continue;
                }
            }
            // A step that never waits must not starve the other tasks of its
            // thread: yield once the task's cooperative budget is spent.
            tokio::task::coop::consume_budget().await;
        }
    }
}

/// Waits for something to do. Takes a pending nudge when it is the next thing.
async fn next_action<S: Clone, O>(shared: &Shared<S, O>, credit: &mut bool) -> Action {
    poll_fn(|cx| {
        let mut ctl = shared.lock();
        if ctl.kill {
            return Poll::Ready(Action::Kill);
        }
        if ctl.want_paused != ctl.paused {
            if ctl.want_paused {
                ctl.pausing = true;
                return Poll::Ready(Action::Pause);
            }
            ctl.resuming = true;
            return Poll::Ready(Action::Resume);
        }
        if !ctl.paused {
            let ready = match shared.mode {
                DriveMode::FireAndForget => ctl.launched,
                DriveMode::Step => *credit,
            };
            if ready {
                return Poll::Ready(Action::Advance);
            }
            if ctl.nudge {
                ctl.nudge = false;
                match shared.mode {
                    DriveMode::FireAndForget => ctl.launched = true,
                    DriveMode::Step => *credit = true,
                }
                shared.notify(ctl);
                return Poll::Ready(Action::Advance);
            }
        }
        Shared::register(&mut ctl, cx);
        Poll::Pending
    })
    .await
}

/// Runs one step, racing it against kill and pause requests.
fn advance<'a, S: State, H: Host<S>>(
    host: &'a mut H,
    shared: &'a Shared<S, H::Output>,
) -> Step<'a, S, H::Output, impl Future<Output = Snapshot<S>> + 'a> {
    // The first poll follows `next_action`, which has just checked for requests.
    Step { step: Some(host.apply(Op::Advance)), shared, checked: true, waiting: false }
}

pin_project_lite::pin_project! {
    /// One step, raced against kill and pause requests. `Ok(None)` means the
    /// step was interrupted and its future dropped. A future of its own, not
    /// an `async fn`, so that every driver's frame holds the step and little
    /// more.
    struct Step<'a, S, O, F> {
        // In an `Option`, so that an interrupted step is dropped under
        // `catch_unwind` too: its destructors are process code.
        #[pin]
        step: Option<F>,
        shared: &'a Shared<S, O>,
        // Requests were checked since the last poll of the step.
        checked: bool,
        // The step waits inside `interruptible`: a pause interrupts it.
        waiting: bool,
    }
}

impl<S: Clone, O, F: Future<Output = Snapshot<S>>> Future for Step<'_, S, O, F> {
    type Output = Result<Option<Snapshot<S>>, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let interrupts = |ctl: &Ctl<S, O>, waiting: bool| ctl.kill || (waiting && ctl.want_paused && !ctl.paused);
        let outcome = 'step: {
            if !*this.checked && interrupts(&this.shared.lock(), *this.waiting) {
                break 'step Ok(None);
            }
            *this.checked = false;
            let Some(running) = this.step.as_mut().as_pin_mut() else {
                break 'step Ok(None);
            };
            let (poll, parked) = poll_marked(|| catch_unwind(AssertUnwindSafe(|| running.poll(cx))));
            *this.waiting = parked;
            match poll {
                Err(payload) => Err(panic_message(payload)),
                Ok(Poll::Ready(snap)) => Ok(Some(snap)),
                Ok(Poll::Pending) => {
                    let mut ctl = this.shared.lock();
                    if interrupts(&ctl, parked) {
                        break 'step Ok(None);
                    }
                    Shared::register(&mut ctl, cx);
                    return Poll::Pending;
                }
            }
        };
        let dropped = catch_unwind(AssertUnwindSafe(|| this.step.set(None)));
        Poll::Ready(match (outcome, dropped) {
            (Err(panic), _) => Err(panic),
            (Ok(snap), Ok(())) => Ok(snap),
            (Ok(_), Err(payload)) => Err(panic_message(payload)),
        })
    }
}

pin_project_lite::pin_project! {
    /// Awaits a future, turning a panic inside it into `Err` with its message.
    struct Caught<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => Poll::Ready(Err(panic_message(payload))),
        }
    }
}

fn caught<F: Future>(future: F) -> Caught<F> {
    Caught { future }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(msg) => *msg,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(msg) => (*msg).to_owned(),
            Err(_) => "a panic with a payload that is not a string".to_owned(),
        },
    }
}
