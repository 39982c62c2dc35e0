//! Computers, defined once in `computers.toml` in the user's config directory
//! and referred to by name from job files.
//!
//! ```toml
//! [computer.cluster]
//! transport = "ssh"             # or "local" (drover runs on the login node)
//! host = "login.cluster.org"    # an ssh destination or ~/.ssh/config alias
//! scheduler = "slurm"           # "slurm", "slurm-accounting" (sacct) or "direct"
//! work_dir = "drover-work"      # remote, relative to the login directory
//! poll_interval_secs = 10       # one status command per interval (>= 1)
//!
//! [cloud]                       # the Kubernetes cluster of cloud jobs (optional)
//! kubeconfig = "~/.kube/config" # default: $KUBECONFIG, ~/.kube/config, in-cluster
//! context = "science"           # default: the kubeconfig's current context
//! namespace = "jobs"            # default: the context's namespace
//! cleanup_after_secs = 600      # how long ended jobs' pods are kept
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_scheduler::Computer;
use serde_json::{Map, Value};

pub(crate) fn config_dir() -> PathBuf {
    std::env::var_os("DROVER_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("drover")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/drover")))
        .unwrap_or_else(|| PathBuf::from(".drover-config"))
}

/// `computers.toml` as JSON, each section to be read by the kind that owns
/// it; a section no kind reads is refused.
pub(crate) fn read(dir: &Path) -> Result<(PathBuf, Map<String, Value>), String> {
    let path = dir.join("computers.toml");
    let table: toml::Table = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => toml::Table::new(),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let sections = drover_engine::sections();
    if let Some(key) = table.keys().find(|k| !sections.contains(&k.as_str())) {
        return Err(format!("{}: unknown section `{key}` (known: {})", path.display(), sections.join(", ")));
    }
    let json = serde_json::to_value(table).map_err(|e| format!("{}: {e}", path.display()))?;
    let Value::Object(map) = json else { unreachable!("a TOML table is a JSON object") };
    Ok((path, map))
}

/// The computers of `computers.toml`.
pub(crate) fn computers(dir: &Path) -> Result<HashMap<String, Arc<Computer>>, String> {
    let (path, map) = read(dir)?;
    drover_scheduler::computers(map.get("computer"), &path)
}
