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
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_shell::{Output, ShellSpec};
use serde::Deserialize;

/// A job file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    job: Vec<JobEntry>,
}

/// One `[[job]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobEntry {
    id: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    script: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    timeout_secs: Option<f64>,
}

/// A job ready to run.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) id: String,
    pub(crate) spec: ShellSpec,
}

/// Reads and checks every file; any error in any file means nothing runs.
///
/// # Errors
///
/// A message naming the file, and the line and column where TOML says so.
pub(crate) fn load(paths: &[PathBuf], out_dir: &Path) -> Result<Vec<Planned>, String> {
    let mut planned = Vec::new();
    let mut seen = HashSet::new();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let file: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.job.is_empty() {
            return Err(format!("{}: no [[job]] in the file", path.display()));
        }
        let stem = path.file_stem().map_or_else(|| "jobs".into(), |s| s.to_string_lossy().into_owned());
        for (n, entry) in file.job.into_iter().enumerate() {
            let local = entry.id.clone().unwrap_or_else(|| format!("job-{}", n + 1));
            if local.is_empty() || !local.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(format!(
                    "{}: job {}: id `{local}` may hold only letters, digits, `-`, `_` and `.`",
                    path.display(),
                    n + 1
                ));
            }
            let id = format!("{stem}.{local}");
            if !seen.insert(id.clone()) {
                return Err(format!("{}: job id `{local}` appears twice", path.display()));
            }
            let where_ = format!("{}: job `{local}`", path.display());
            let mut spec = match (entry.command, entry.script) {
                (Some(command), None) => ShellSpec::program(command, entry.args),
                (None, Some(script)) if entry.args.is_empty() => ShellSpec::script(script),
                (None, Some(_)) => return Err(format!("{where_}: `args` go with `command`, not with `script`")),
                (Some(_), Some(_)) => return Err(format!("{where_}: give `command` or `script`, not both")),
                (None, None) => return Err(format!("{where_}: give `command` (with `args`) or `script`")),
            };
            spec.env.set = entry.env;
            spec.cwd = entry.cwd;
            if let Some(secs) = entry.timeout_secs {
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(format!("{where_}: timeout_secs must be a positive number"));
                }
                spec.timeout = Some(Duration::from_secs_f64(secs));
            }
            spec.stdout = Output::File(out_dir.join(format!("{id}.out")));
            spec.stderr = Output::File(out_dir.join(format!("{id}.err")));
            planned.push(Planned { id, spec });
        }
    }
    Ok(planned)
}
