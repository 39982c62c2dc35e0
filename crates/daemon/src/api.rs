//! The control API's messages, shared by the server and the client. The
//! routes and their shapes are described in the OpenAPI document the daemon
//! serves at `GET /v1/openapi.json` (the file `openapi.json` of this crate).

use std::collections::BTreeMap;

use drover_engine::{Action, Job, ProcessInfo};
use serde::{Deserialize, Serialize};

pub use drover_engine::{ProcessDetail, Transition};

/// `GET /v1/info`: who is answering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// drover's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// When it started (Unix milliseconds).
    pub started_at: i64,
    /// Its data directory (store, outputs, socket, log).
    pub data_dir: String,
    /// Its store (a path, or a PostgreSQL URL without password).
    pub store: String,
    /// The Unix socket of the API.
    pub socket: String,
    /// The loopback address of the API and web page, if it listens on one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The computers it knows, by name.
    pub computers: Vec<String>,
    /// Whether it has opened its store and resumed its processes (it answers
    /// before, but does not act on processes until then).
    #[serde(default)]
    pub ready: bool,
}

/// `GET /v1/engines`: the engines on this daemon's store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engines {
    /// This daemon's engine id.
    pub this: String,
    /// Every engine that registered, oldest first.
    pub engines: Vec<EngineInfo>,
}

/// One engine on the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// Its id.
    pub id: String,
    /// Its host.
    pub host: String,
    /// Its pid there.
    pub pid: i64,
    /// Its pool (`daemon`, or `run:<id>` for a `drover run`).
    pub pool: String,
    /// When it registered (the database's clock, Unix milliseconds).
    pub started_at: i64,
    /// Until when its lease holds (the database's clock).
    pub lease_until: i64,
    /// Whether its lease holds now.
    pub live: bool,
    /// How many unfinished processes it owns.
    pub owns: i64,
    /// The places (`kind:computer`) it holds: their jobs are its alone.
    pub places: Vec<String>,
}

/// Which processes: every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// A status (`queued`, `running`, `paused`, `finished`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// A kind (one of [`drover_engine::kinds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A computer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<String>,
    /// The parent: only its children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl Filter {
    /// Whether `info` matches. `state` matches the status (so `paused`
    /// matches paused processes) or the state's name; `active` matches every
    /// process that has not ended.
    pub fn matches(&self, info: &ProcessInfo) -> bool {
        let state_ok = self
            .state
            .as_deref()
            .is_none_or(|s| s == info.status() || s == info.state || (s == "active" && !info.terminal));
        state_ok
            && self.kind.as_deref().is_none_or(|k| k == info.kind)
            && self.computer.as_deref().is_none_or(|c| info.computer.as_deref() == Some(c))
            && self.parent.as_deref().is_none_or(|p| info.parent.as_deref() == Some(p))
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.kind.is_none() && self.computer.is_none() && self.parent.is_none()
    }

    /// The filter as query parameters, each followed by `&` (empty when no
    /// field is set).
    pub fn query(&self) -> String {
        let fields =
            [("state", &self.state), ("kind", &self.kind), ("computer", &self.computer), ("parent", &self.parent)];
        fields.iter().filter_map(|(key, value)| value.as_ref().map(|v| format!("{key}={}&", encode(v)))).collect()
    }
}

/// Percent-encodes everything but unreserved characters, for a path or a
/// query.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /v1/processes`: a page of the processes that match, and on the
/// first page, counts per status of all of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessList {
    /// The processes, oldest first.
    pub processes: Vec<ProcessInfo>,
    /// How many processes there are per status (over all, not only those
    /// listed); on the first page only (empty on the pages after a cursor).
    #[serde(default)]
    pub counts: BTreeMap<String, usize>,
    /// Where the next page starts (`cursor=`); absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

pub use drover_engine::{PruneOptions, PruneReport};

/// One job to submit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewJob {
    /// Its id, unique in the store.
    pub id: String,
    /// What it runs.
    pub job: Job,
}

/// `POST /v1/processes`: jobs to record and start, all or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    /// The jobs.
    pub jobs: Vec<NewJob>,
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The ids recorded and started.
    pub ids: Vec<String>,
}

/// `POST /v1/control`: one action on several processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// What to do.
    pub action: Action,
    /// To which processes.
    pub ids: Vec<String>,
}

/// What a control action did to one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResult {
    /// The process.
    pub id: String,
    /// Whether it took effect.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The answer to `POST /v1/control`, one result per id, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResults {
    /// The results.
    pub results: Vec<ControlResult>,
}

/// Which output of a process.
pub use drover_engine::Stream;

/// `GET /v1/processes/{id}/logs`: a piece of a process's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The text, from byte `offset` of the asked-for offset on.
    pub data: String,
    /// Where the next piece starts: ask again from here.
    pub offset: u64,
    /// Whether the process has ended (then nothing more will come once a
    /// piece comes back empty).
    pub terminal: bool,
    /// Where the output is read from (a local file, or `computer:path`).
    pub source: String,
}

/// An error answer: `{"error": "..."}`, with an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}
