//! A multi-step test process that logs every step and hook it runs.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_core::{Process, State, interruptible};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// About to run step `n`.
    Ready(usize),
    /// Paused itself; resumes at step `n`.
    SelfPaused(usize),
    Done,
    Killed,
}

impl State for JobState {
    fn is_done(&self) -> bool {
        matches!(self, JobState::Done | JobState::Killed)
    }
    fn is_paused(&self) -> bool {
        matches!(self, JobState::SelfPaused(_))
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Step {
    /// Finishes on its first poll.
    Compute,
    /// Waits inside `interruptible`: a pause interrupts it.
    Wait(Duration),
    /// Waits outside `interruptible`: a pause waits for it; a kill still interrupts it.
    Busy(Duration),
    /// Completes, then the process pauses itself.
    PauseSelf,
    /// Panics.
    Panic,
    /// Waits in `interruptible` under a 1 ms timeout that elapses, then is busy
    /// (not interruptible) for the duration.
    LostWait(Duration),
    /// Returns at once without changing state: a step that never waits.
    Spin,
    /// Holds a guard whose drop panics across an hour's wait.
    Bomb,
}

struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the step's guard panicked on drop");
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Start(usize),
    End(usize),
    SelfPause,
    Pause,
    Resume,
    Kill,
    /// A recorder made this state durable (with the paused flag).
    Recorded(JobState, bool),
}

#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Event>>>);

impl Log {
    pub fn push(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }
    pub fn count(&self, event: &Event) -> usize {
        self.0.lock().unwrap().iter().filter(|e| *e == event).count()
    }
    pub fn starts(&self) -> usize {
        self.0.lock().unwrap().iter().filter(|e| matches!(e, Event::Start(_))).count()
    }
    pub fn ends(&self) -> usize {
        self.0.lock().unwrap().iter().filter(|e| matches!(e, Event::End(_))).count()
    }
}

pub struct Job {
    pub state: JobState,
    pub steps: Vec<Step>,
    pub log: Log,
    /// How long the pause and resume hooks take.
    pub hook_delay: Duration,
}

impl Job {
    pub fn new(steps: Vec<Step>) -> (Job, Log) {
        let log = Log::default();
        (Job { state: JobState::Ready(0), steps, log: log.clone(), hook_delay: Duration::ZERO }, log)
    }

    fn after(&self, step: usize) -> JobState {
        if step + 1 >= self.steps.len() { JobState::Done } else { JobState::Ready(step + 1) }
    }
}

impl Process<JobState> for Job {
    fn state(&self) -> &JobState {
        &self.state
    }
    fn transition_to(&mut self, state: JobState) {
        self.state = state;
    }
    async fn kill(&mut self) {
        self.log.push(Event::Kill);
        self.state = JobState::Killed;
    }
    async fn pause(&mut self) {
        if !self.hook_delay.is_zero() {
            tokio::time::sleep(self.hook_delay).await;
        }
        self.log.push(Event::Pause);
    }
    async fn resume(&mut self) {
        if !self.hook_delay.is_zero() {
            tokio::time::sleep(self.hook_delay).await;
        }
        self.log.push(Event::Resume);
        if let JobState::SelfPaused(next) = self.state {
            self.state = if next >= self.steps.len() { JobState::Done } else { JobState::Ready(next) };
        }
    }
    async fn advance(&mut self) {
        let JobState::Ready(i) = self.state else {
            panic!("advance called in state {:?}", self.state);
        };
        self.log.push(Event::Start(i));
        match self.steps[i] {
            Step::Compute => {}
            Step::Wait(d) => interruptible(tokio::time::sleep(d)).await,
            Step::Busy(d) => tokio::time::sleep(d).await,
            Step::PauseSelf => {
                self.log.push(Event::End(i));
                self.log.push(Event::SelfPause);
                self.state = JobState::SelfPaused(i + 1);
                return;
            }
            Step::Panic => panic!("step {i} panicked on purpose"),
            Step::LostWait(d) => {
                let _ = tokio::time::timeout(
                    Duration::from_millis(1),
                    interruptible(tokio::time::sleep(Duration::from_secs(3600))),
                )
                .await;
                tokio::time::sleep(d).await;
            }
            Step::Spin => {
                self.log.0.lock().unwrap().pop();
                return;
            }
            Step::Bomb => {
                let _bomb = Bomb;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
        self.log.push(Event::End(i));
        self.state = self.after(i);
    }
}

/// Lets every ready task on the current `LocalSet` run a few times.
pub async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}
