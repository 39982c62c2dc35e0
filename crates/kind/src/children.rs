//! Children: processes that a process creates.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde_json::Value;

use crate::Job;

/// A child to record with its parent's next checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewChild {
    /// Its id, unique in the store.
    pub id: String,
    /// What it runs.
    pub job: Job,
}

/// How a child ended, as its parent learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildEnd {
    /// Its id.
    pub id: String,
    /// Its parent, as recorded (a process of the same id that is not this
    /// parent's child is reported as a failed child, never as its own end).
    pub parent: Option<String>,
    /// Its final state's name (`finished`, `failed`, `killed`, ...).
    pub state: String,
    /// Whether it succeeded.
    pub succeeded: bool,
    /// Its final state, as stored.
    pub data: Value,
}

/// Why a child could not be spawned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnError {
    /// The process was built without an engine to hold children.
    #[error("process `{0}` cannot have children here (no engine)")]
    NoEngine(String),
    /// The engine refused the child.
    #[error("child `{id}`: {problem}")]
    Refused {
        /// The child's id.
        id: String,
        /// Why.
        problem: String,
    },
}

/// What holds children: the engine. A process reaches it through [`Children`].
pub trait ChildHost {
    /// Checks `child` and stages it to be recorded with `parent`'s next
    /// checkpoint, in the same transaction.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Refused`]: an unknown kind, a bad spec or id.
    fn stage(&self, parent: &str, child: NewChild) -> Result<(), SpawnError>;

    /// Resolves once every process of `ids` has ended, with how each ended,
    /// in the order of `ids`.
    fn wait(&self, parent: &str, ids: Vec<String>) -> Pin<Box<dyn Future<Output = Vec<ChildEnd>>>>;
}

/// A process's handle on its children, given when it is built.
#[derive(Clone)]
pub struct Children {
    parent: String,
    host: Option<Rc<dyn ChildHost>>,
}

impl Debug for Children {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Children").field("parent", &self.parent).field("engine", &self.host.is_some()).finish()
    }
}

impl Children {
    /// The children of `parent`, held by `host`.
    pub fn new(parent: impl Into<String>, host: Rc<dyn ChildHost>) -> Children {
        Children { parent: parent.into(), host: Some(host) }
    }

    /// No engine: spawning fails (a process built outside an engine).
    pub fn none(parent: impl Into<String>) -> Children {
        Children { parent: parent.into(), host: None }
    }

    /// Spawns a child: it is recorded, with this process as its parent, in the
    /// same transaction as this process's next checkpoint, and starts once
    /// that committed. So the next state must say which children exist (a
    /// crash before it is recorded loses both the state and the child, and
    /// the step runs again); spawning the same id again before then is
    /// refused.
    ///
    /// # Errors
    ///
    /// [`SpawnError`]: no engine, an unknown kind, a bad spec, a taken id.
    pub fn spawn(&self, id: impl Into<String>, job: Job) -> Result<(), SpawnError> {
        let host = self.host.as_ref().ok_or_else(|| SpawnError::NoEngine(self.parent.clone()))?;
        host.stage(&self.parent, NewChild { id: id.into(), job })
    }

    /// Waits until every child of `ids` has ended, and says how each did, in
    /// the order of `ids`. The wait costs nothing while it lasts: it is woken
    /// by the children's terminal states.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it (a pause) loses nothing; waiting again later
    /// sees children that ended meanwhile.
    pub async fn wait(&self, ids: Vec<String>) -> Vec<ChildEnd> {
        match &self.host {
            Some(host) => host.wait(&self.parent, ids).await,
            None => std::future::pending().await,
        }
    }
}
