//! Versioned checkpoints: a process state in an envelope that says which
//! version of its format it is.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A state that can be checkpointed. Its JSON is stored in an envelope
/// `{"v": VERSION, "state": ...}`. When the format changes, bump `VERSION`,
/// teach [`upgrade`](Checkpoint::upgrade) the old one, and keep a golden
/// fixture of every version in the kind's `tests/fixtures/`.
pub trait Checkpoint: Serialize + DeserializeOwned {
    /// The process kind, as stored with each process.
    const KIND: &'static str;
    /// The current version of the format.
    const VERSION: u32;

    /// Turns the JSON of an older version into the current one.
    ///
    /// # Errors
    ///
    /// When `version` cannot be upgraded.
    fn upgrade(version: u32, state: Value) -> Result<Value, String> {
        let _ = state;
        Err(format!("no upgrade from version {version}"))
    }
}

/// Why a checkpoint cannot be read. Only the process concerned is affected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint envelope, or not valid for the kind.
    #[error("corrupt {kind} checkpoint: {problem}")]
    Corrupt {
        /// The kind expected.
        kind: String,
        /// What is wrong.
        problem: String,
    },
    /// Written by a newer drover: refused, never guessed at.
    #[error("{kind} checkpoint version {found} is newer than this drover knows (up to {known}): upgrade drover")]
    TooNew {
        /// The kind.
        kind: String,
        /// The version found.
        found: u32,
        /// The newest version known.
        known: u32,
    },
    /// An older version that cannot be upgraded.
    #[error("{kind} checkpoint version {found} cannot be upgraded: {problem}")]
    Unsupported {
        /// The kind.
        kind: String,
        /// The version found.
        found: u32,
        /// Why.
        problem: String,
    },
}

/// Encodes `state` in its envelope.
///
/// # Panics
///
/// Never for the derived `Serialize` of plain data; a `Serialize` that fails
/// is a bug in the state type.
pub fn encode<T: Checkpoint>(state: &T) -> String {
    serde_json::json!({ "v": T::VERSION, "state": state }).to_string()
}

/// The name of a state from its JSON (`"Queued"`, `{"Finished": {...}}`),
/// in snake case (`queued`, `finished`); `unreadable` for anything else.
pub fn state_name(state: &Value) -> String {
    match state {
        Value::String(name) => snake_case(name),
        Value::Object(map) if map.len() == 1 => map.keys().next().map_or_else(String::new, |k| snake_case(k)),
        _ => "unreadable".to_owned(),
    }
}

/// The name of the state in an envelope's text, as [`state_name`] says it;
/// `unreadable` when the text is not an envelope.
pub fn envelope_state_name(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(envelope) => state_name(envelope.get("state").unwrap_or(&Value::Null)),
        Err(_) => "unreadable".to_owned(),
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Decodes an envelope written by [`encode`], upgrading older versions.
///
/// # Errors
///
/// [`CheckpointError`], naming the kind and the problem.
pub fn decode<T: Checkpoint>(text: &str) -> Result<T, CheckpointError> {
    let corrupt = |problem: String| CheckpointError::Corrupt { kind: T::KIND.to_owned(), problem };
    let mut envelope: Value = serde_json::from_str(text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let version = envelope
        .get("v")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| corrupt("no version field `v`".to_owned()))?;
    let state = envelope.get_mut("state").map(Value::take).ok_or_else(|| corrupt("no `state` field".to_owned()))?;
    if version > T::VERSION {
        return Err(CheckpointError::TooNew { kind: T::KIND.to_owned(), found: version, known: T::VERSION });
    }
    let state = if version < T::VERSION {
        T::upgrade(version, state).map_err(|problem| CheckpointError::Unsupported {
            kind: T::KIND.to_owned(),
            found: version,
            problem,
        })?
    } else {
        state
    };
    serde_json::from_value(state).map_err(|e| corrupt(e.to_string()))
}
