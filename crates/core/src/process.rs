//! The two traits a process kind implements: its [`State`] and the [`Process`] itself.

use std::fmt::Debug;
use std::future::Future;

/// What a process is in.
///
/// A state is a plain value: the runtime clones it to publish it to watchers, and
/// asks it only two questions. States should carry their data (`Queued { job_id }`,
/// `Failed { reason }`) rather than sit beside optional fields.
pub trait State: Clone + Debug + 'static {
    /// Whether this state is terminal. Once a process reaches a terminal state it
    /// never advances again, and the runtime ends it.
    fn is_done(&self) -> bool;

    /// Whether the process, in this state, has paused itself (for example after
    /// its retries ran out). The runtime then waits for a resume before it
    /// advances the process again; see [`Process::resume`].
    fn is_paused(&self) -> bool;
}

/// A state machine that the runtime drives one step at a time.
///
/// [`advance`](Process::advance) does one step of real work and moves the process
/// to its next state; [`pause`](Process::pause), [`resume`](Process::resume) and
/// [`kill`](Process::kill) are the process's own reactions to control requests
/// (stop polling, send `SIGSTOP`, cancel a job, ...). The runtime calls them; user
/// code talks to a running process only through its
/// [`ProcessHandler`](crate::ProcessHandler).
///
/// # Cancel safety
///
/// A kill, and a pause while the step waits inside [`interruptible`](crate::interruptible),
/// interrupt `advance` by dropping its future at an `.await`. Write each step so
/// that this is safe: record intent in the state before a side effect, and make
/// the step idempotent, so that running it again (after a resume, or after a
/// crash) does not repeat the side effect. The hooks `pause`, `resume` and
/// `kill` are never interrupted.
///
/// Methods are written as `async fn` in implementations.
pub trait Process<S: State> {
    /// The current state.
    fn state(&self) -> &S;

    /// Moves the process to `state`.
    fn transition_to(&mut self, state: S);

    /// Whether the current state is terminal.
    fn is_done(&self) -> bool {
        self.state().is_done()
    }

    /// Whether the process has paused itself.
    fn is_paused(&self) -> bool {
        self.state().is_paused()
    }

    /// The process's own clean-up when it is killed: cancel its job, stop its
    /// child, delete its pod. Runs exactly once, and leaves nothing behind. The
    /// runtime ends the process right after it, whatever state it leaves.
    fn kill(&mut self) -> impl Future<Output = ()>;

    /// The process's own reaction to a pause request that took effect. Runs once
    /// per pause; nothing advances until the matching [`resume`](Process::resume).
    fn pause(&mut self) -> impl Future<Output = ()>;

    /// Runs once when a paused process resumes, before it advances again. The
    /// default does nothing. A process that paused itself (its state
    /// [`is_paused`](State::is_paused)) must leave that state here, or it stays
    /// paused.
    fn resume(&mut self) -> impl Future<Output = ()> {
        async {}
    }

    /// One step of real work.
    fn advance(&mut self) -> impl Future<Output = ()>;
}

/// How the runtime drives a spawned process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DriveMode {
    /// Nothing runs before the first nudge; after it the process advances on its
    /// own until it is done. Later nudges are accepted and ignored.
    FireAndForget,
    /// Each nudge allows exactly one completed [`Process::advance`]: for
    /// debugging and tests. A step interrupted by a pause keeps its nudge and
    /// runs again after the resume.
    Step,
}
