//! A job: what a process runs, of any kind, as the engine stores it.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::Kind;

/// What a process runs: its kind's name and its spec, stored as one JSON
/// object `{"kind": NAME, ...the spec's fields}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    kind: String,
    spec: Map<String, Value>,
}

impl Job {
    /// A job of kind `K`.
    ///
    /// # Panics
    ///
    /// When `K::Spec` does not serialise to a JSON object: a bug in the kind.
    pub fn new<K: Kind>(spec: &K::Spec) -> Job {
        match serde_json::to_value(spec) {
            Ok(Value::Object(spec)) => Job { kind: K::NAME.to_owned(), spec },
            other => panic!("a {} spec must serialise to a JSON object, not {other:?}", K::NAME),
        }
    }

    /// A job from its kind's name and the spec's fields, as given by a user
    /// (the kind and the fields are checked when it is submitted).
    pub fn from_parts(kind: impl Into<String>, spec: Map<String, Value>) -> Job {
        Job { kind: kind.into(), spec }
    }

    /// Its kind's name.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The spec's fields, as JSON.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.spec
    }

    /// Whether it is of kind `K`.
    pub fn is<K: Kind>(&self) -> bool {
        self.kind == K::NAME
    }

    /// Its spec, read as kind `K`'s.
    ///
    /// # Errors
    ///
    /// When it is of another kind (`None`), or its spec does not read as
    /// `K`'s (`Some(Err)`).
    pub fn spec<K: Kind>(&self) -> Option<Result<K::Spec, serde_json::Error>> {
        self.is::<K>().then(|| serde_json::from_value(Value::Object(self.spec.clone())))
    }
}

impl Serialize for Job {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut object = Map::with_capacity(self.spec.len() + 1);
        object.insert("kind".to_owned(), Value::String(self.kind.clone()));
        for (key, value) in &self.spec {
            object.insert(key.clone(), value.clone());
        }
        object.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Job {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Job, D::Error> {
        let mut object = Map::deserialize(deserializer)?;
        match object.remove("kind") {
            Some(Value::String(kind)) => Ok(Job { kind, spec: object }),
            Some(other) => Err(D::Error::custom(format!("`kind` must be a string, not {other}"))),
            None => Err(D::Error::missing_field("kind")),
        }
    }
}
