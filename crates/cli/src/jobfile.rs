//! Job files: TOML, one file may hold many jobs.
//!
//! ```toml
//! [[job]]
//! id = "greet"              # unique in the file; default: job-<n>
//! command = "echo"          # run directly, no shell
//! args = ["hello", "world"]
//!
//! [[job]]
//! id = "count"
//! script = "seq 3 | wc -l"  # run with /bin/sh -c
//! env = { LC_ALL = "C" }
//! cwd = "/tmp"
//! timeout_secs = 30
//!
//! [[job]]
//! id = "relax"
//! computer = "cluster"      # a scheduler job, on a computer of computers.toml
//! command = "pw.x"
//! args = ["-in", "relax.in"]
//! nodes = 1
//! tasks = 4
//! wall_time_secs = 3600
//! partition = "debug"
//! retrieve = ["relax.out"]
//!
//! [[job]]
//! id = "render"
//! image = "python:3.12-slim" # a cloud job: a pod on the Kubernetes cluster
//! command = "python"         # the entrypoint (default: the image's)
//! args = ["-c", "print(42)"]
//! cpu = "500m"               # requests; cpu_limit and memory_limit for limits
//! memory = "256Mi"
//! namespace = "science"      # default: the cluster configuration's
//! labels = { team = "physics" }
//! service_account = "runner"
//! batch_job = true           # a batch/v1 Job instead of a bare pod
//! backoff_limit = 2
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use drover_engine::Job;
use drover_kind::Entry;
use serde_json::{Map, Value};

/// A job file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    job: Vec<toml::Table>,
}

/// A job ready to run.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) id: String,
    pub(crate) job: Job,
    /// Where it came from, for messages: `FILE: job `ID``.
    pub(crate) origin: String,
}

/// Reads and checks every file; any error in any file means nothing runs.
/// Each entry is read by its kind (the one whose marker key it has).
///
/// # Errors
///
/// A message naming the file, and the line and column where TOML says so.
pub(crate) fn load(paths: &[PathBuf], out_dir: &Path, run_id: &str) -> Result<Vec<Planned>, String> {
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.job.is_empty() {
            return Err(format!("{}: no [[job]] in the file", path.display()));
        }
        let stem = path.file_stem().map_or_else(|| "jobs".into(), |s| s.to_string_lossy().into_owned());
        // The stem names every job of the file: checked before any job is.
        if stem.is_empty() || !stem.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!(
                "{}: the file's name `{stem}` names its jobs, so it may hold only letters, digits, `-`, `_` and `.` \
                 (rename the file)",
                path.display()
            ));
        }
        for (n, entry) in file.job.into_iter().enumerate() {
            let local = match entry.get("id") {
                None => format!("job-{}", n + 1),
                Some(toml::Value::String(id)) => id.clone(),
                Some(other) => {
                    return Err(format!("{}: job {}: `id` must be a string, not {other}", path.display(), n + 1));
                }
            };
            if local.is_empty() || !local.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!(
                    "{}: job {}: id `{local}` may hold only letters, digits, `-`, `_` and `.`",
                    path.display(),
                    n + 1
                ));
            }
            let name = format!("{stem}.{local}");
            if !seen.insert(name.clone()) {
                return Err(format!("{}: job id `{local}` appears twice", path.display()));
            }
            let origin = format!("{}: job `{local}`", path.display());
            // JSON has no NaN nor infinity: refused here, not read as nothing.
            if let Some(key) = non_finite(&entry) {
                return Err(format!("{origin}: `{key}` must be a finite number"));
            }
            let Value::Object(table) = serde_json::to_value(entry).map_err(|e| format!("{origin}: {e}"))? else {
                unreachable!("a TOML table is a JSON object")
            };
            let table: Map<String, Value> = table;
            let process_id = format!("{run_id}.{name}");
            let entry =
                Entry { name: &name, process_id: &process_id, table: &table, out_dir, plan: &drover_engine::plan };
            let job = drover_engine::plan(&entry).map_err(|e| format!("{origin}: {e}"))?;
            planned.push(Planned { id: name, job, origin });
        }
    }
    Ok(planned)
}

/// The first key (a path, for nested tables) whose value is a float that is
/// not finite.
fn non_finite(table: &toml::Table) -> Option<String> {
    fn walk(value: &toml::Value, path: &str) -> Option<String> {
        match value {
            toml::Value::Float(f) if !f.is_finite() => Some(path.to_owned()),
            toml::Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| walk(v, &format!("{path}[{i}]"))),
            toml::Value::Table(t) => t.iter().find_map(|(k, v)| walk(v, &format!("{path}.{k}"))),
            _ => None,
        }
    }
    table.iter().find_map(|(k, v)| walk(v, k))
}
