//! What the engine tells about its processes: a summary per process (for
//! lists, counts and the live stream of changes) and a detail view with the
//! spec and the history of transitions.
//!
//! Summaries read the stored checkpoint generically (the state's variant name
//! and its usual fields), so every process kind is described the same way.

use drover_store::{StoredEvent, StoredProcess};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One process, summarised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Its id.
    pub id: String,
    /// Its kind: `shell`, `scheduler`, ...
    pub kind: String,
    /// Where it runs: the computer of a scheduler job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<String>,
    /// The process that spawned it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The engine that drives it, while it is unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Its state's name, in snake case: `queued`, `running`, `finished`, ...
    pub state: String,
    /// Whether it is paused.
    pub paused: bool,
    /// Whether its state is terminal.
    pub terminal: bool,
    /// The exit code, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Why it failed or stalled, or the scheduler's job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When it was submitted (Unix milliseconds).
    pub created_at: i64,
    /// When it last changed (Unix milliseconds).
    pub updated_at: i64,
    /// Why the engine could not load it, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ProcessInfo {
    /// The summary of a stored process.
    pub fn from_stored(stored: &StoredProcess) -> ProcessInfo {
        let computer = stored.place.clone().or_else(|| {
            serde_json::from_str::<Value>(&stored.spec)
                .ok()
                .and_then(|spec| spec.get("computer").and_then(Value::as_str).map(str::to_owned))
        });
        let mut info = ProcessInfo {
            id: stored.id.clone(),
            kind: stored.kind.clone(),
            computer,
            parent: stored.parent.clone(),
            owner: if stored.terminal { None } else { stored.owner.clone() },
            state: String::new(),
            paused: stored.paused,
            terminal: stored.terminal,
            exit_code: None,
            detail: None,
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            error: stored.error.clone(),
        };
        match serde_json::from_str::<Value>(&stored.checkpoint) {
            Ok(envelope) => info.set_state(envelope.get("state").unwrap_or(&Value::Null)),
            Err(_) => info.state = "unreadable".to_owned(),
        }
        info
    }

    /// Sets the state fields from a state's JSON (`"Queued"` or
    /// `{"Finished": {"exit_code": 0, ...}}`).
    pub fn set_state(&mut self, state: &Value) {
        let fields = match state {
            Value::Object(map) if map.len() == 1 => map.values().next(),
            _ => None,
        };
        self.state = state_name(state);
        let field = |key: &str| fields.and_then(|f| f.get(key));
        self.exit_code = field("exit_code").and_then(Value::as_i64);
        self.detail = ["reason", "error"]
            .iter()
            .find_map(|k| field(k).and_then(Value::as_str))
            .map(str::to_owned)
            .or_else(|| field("job_id").and_then(Value::as_str).map(|id| format!("job {id}")));
    }

    /// What a person reads as its status: `paused` for a paused process that
    /// has not ended, its state otherwise.
    pub fn status(&self) -> &str {
        if self.paused && !self.terminal { "paused" } else { &self.state }
    }

    /// Whether it ended well (finished with exit code 0).
    pub fn succeeded(&self) -> bool {
        self.state == "finished" && self.exit_code == Some(0)
    }
}

/// One transition in a process's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When (Unix milliseconds).
    pub at: i64,
    /// The state entered, by name.
    pub state: String,
    /// Whether the process was paused after it.
    pub paused: bool,
    /// The state as stored (its checkpoint's `state`).
    pub data: Value,
}

/// One process in full: its summary, spec and history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessDetail {
    /// The summary.
    #[serde(flatten)]
    pub info: ProcessInfo,
    /// What it runs, as submitted.
    pub spec: Value,
    /// What its kind says of its spec, as labelled lines (`command`, `cwd`, ...).
    #[serde(default)]
    pub describe: Vec<(String, String)>,
    /// The processes it spawned, oldest first.
    #[serde(default)]
    pub children: Vec<ProcessInfo>,
    /// Every transition, oldest first.
    pub history: Vec<Transition>,
}

impl ProcessDetail {
    /// The detail view of a stored process and its events.
    pub fn from_stored(stored: &StoredProcess, events: &[StoredEvent]) -> ProcessDetail {
        let history = events
            .iter()
            .map(|e| {
                let data = serde_json::from_str::<Value>(&e.checkpoint)
                    .ok()
                    .and_then(|mut v| v.get_mut("state").map(Value::take))
                    .unwrap_or(Value::Null);
                let mut info = ProcessInfo::from_stored(stored);
                info.set_state(&data);
                Transition { at: e.at, state: info.state, paused: e.paused, data }
            })
            .collect();
        ProcessDetail {
            info: ProcessInfo::from_stored(stored),
            spec: serde_json::from_str(&stored.spec).unwrap_or(Value::Null),
            describe: Vec::new(),
            children: Vec::new(),
            history,
        }
    }
}

pub(crate) use drover_kind::state_name;

pub(crate) use drover_kind::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_read_generically() {
        let mut info = ProcessInfo {
            id: "a".into(),
            kind: "shell".into(),
            computer: None,
            parent: None,
            owner: None,
            state: String::new(),
            paused: false,
            terminal: false,
            exit_code: None,
            detail: None,
            created_at: 0,
            updated_at: 0,
            error: None,
        };
        info.set_state(&serde_json::json!("Queued"));
        assert_eq!((info.state.as_str(), info.exit_code), ("queued", None));
        info.set_state(&serde_json::json!({"Finished": {"exit_code": 3, "ran_for": 1}}));
        assert_eq!((info.state.as_str(), info.exit_code), ("finished", Some(3)));
        info.set_state(&serde_json::json!({"Failed": {"reason": "no such file"}}));
        assert_eq!((info.state.as_str(), info.detail.as_deref()), ("failed", Some("no such file")));
        info.set_state(&serde_json::json!({"Retrieving": {"job_id": "42", "ended": {}}}));
        assert_eq!((info.state.as_str(), info.detail.as_deref()), ("retrieving", Some("job 42")));
        info.paused = true;
        assert_eq!(info.status(), "paused");
        info.set_state(&serde_json::json!([1]));
        assert_eq!(info.state, "unreadable");
    }
}
