//! Pruning: ended processes leave the store with their events, and their
//! files (supervisor records; with `outputs`, their outputs) leave the data
//! directory. Nothing outside the data directory is ever removed, and no
//! link is followed.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use drover_kind::Job;
use drover_store::{PageLimit, PruneCursor, Store, StoreError, StoredProcess};
use serde::{Deserialize, Serialize};

use crate::info::now_ms;
use crate::kinds;

/// The shortest age `prune` takes.
pub const MIN_AGE: Duration = Duration::from_secs(1);
/// The longest age `prune` takes: a hundred years.
pub const MAX_AGE: Duration = Duration::from_secs(100 * 365 * 86_400);
/// How many ids and paths a [`PruneReport`] names at most (it counts all).
pub const MAX_NAMED: usize = 1000;
/// Root processes per transaction.
const BATCH: usize = 500;

/// What to prune.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneOptions {
    /// Processes that ended at least this long ago, in seconds
    /// ([`MIN_AGE`] to [`MAX_AGE`]).
    pub older_than_secs: u64,
    /// Their outputs too (`.out`/`.err` files, retrieved directories).
    #[serde(default)]
    pub outputs: bool,
    /// Say what would go, remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a prune removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// How many processes (with their events).
    pub processes: u64,
    /// The first [`MAX_NAMED`] of them, by id.
    pub ids: Vec<String>,
    /// How many files and directories.
    pub files: u64,
    /// The first [`MAX_NAMED`] of them.
    pub paths: Vec<String>,
    /// Paths left alone and why (outside the data directory, through a
    /// link, unreadable), the first [`MAX_NAMED`].
    #[serde(default)]
    pub refused: Vec<String>,
}

impl PruneReport {
    fn add_process(&mut self, id: &str) {
        self.processes += 1;
        if self.ids.len() < MAX_NAMED {
            self.ids.push(id.to_owned());
        }
    }

    fn add_file(&mut self, path: &Path) {
        self.files += 1;
        if self.paths.len() < MAX_NAMED {
            self.paths.push(path.display().to_string());
        }
    }
}

/// Reads an age: a number and a unit, `s`, `m`, `h`, `d` or `w` (`90s`,
/// `12h`, `30d`), from [`MIN_AGE`] to [`MAX_AGE`].
///
/// # Errors
///
/// A message saying what is wrong.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(format!("`{text}` is not an age: a number and a unit, s, m, h, d or w (like 30d or 12h)")),
    };
    let age = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is not an age: a number and a unit, s, m, h, d or w (like 30d or 12h)"))?;
    check_age(age)?;
    Ok(age)
}

/// Whether `age` is from [`MIN_AGE`] to [`MAX_AGE`].
///
/// # Errors
///
/// A message saying the range.
pub fn check_age(age: Duration) -> Result<(), String> {
    if (MIN_AGE..=MAX_AGE).contains(&age) {
        Ok(())
    } else {
        Err(format!("an age of {} s is not between 1 s and 100 years", age.as_secs()))
    }
}

/// Prunes the processes of `store` that ended at least `older_than_secs`
/// ago (finished, failed, killed, lost: never one that has not ended or
/// that left work to finish, nor a family in which one has not ended), a
/// batch at a time, each batch one transaction holding whole families with
/// their events. Then removes their files under `data_dir`: supervisor
/// records, and their outputs with `outputs`. A batch's rows go before its
/// files, so a crash between them leaves files no process names, never a
/// process without its files' owner.
///
/// # Cancel safety
///
/// Dropping it stops between batches or within one: every committed batch
/// is whole; the files of the last one may stay.
///
/// # Errors
///
/// A message: the age out of its range, or the store failed (the batches
/// before stay pruned).
pub async fn prune(store: &Store, data_dir: &Path, options: &PruneOptions) -> Result<PruneReport, String> {
    let age = Duration::from_secs(options.older_than_secs);
    check_age(age)?;
    let before = now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    let roots = Roots::of(data_dir);
    let mut report = PruneReport { dry_run: options.dry_run, ..PruneReport::default() };
    let mut cursor: Option<PruneCursor> = None;
    let batch = PageLimit::new(BATCH).map_err(|e| e.to_string())?;
    loop {
        let pruned = store
            .prune_batch(before, cursor.as_ref(), batch, options.dry_run)
            .await
            .map_err(|e: StoreError| e.to_string())?;
        let paths: Vec<PathBuf> = pruned.processes.iter().flat_map(|p| files_of(p, options.outputs)).collect();
        for p in &pruned.processes {
            report.add_process(&p.id);
        }
        let roots = roots.clone();
        let dry_run = options.dry_run;
        let removed = tokio::task::spawn_blocking(move || {
            paths.iter().map(|path| (path.clone(), roots.remove(path, dry_run))).collect::<Vec<_>>()
        })
        .await
        .map_err(|e| format!("removing files failed: {e}"))?;
        for (path, outcome) in removed {
            match outcome {
                Ok(true) => report.add_file(&path),
                Ok(false) => {}
                Err(why) if report.refused.len() < MAX_NAMED => {
                    report.refused.push(format!("{}: {why}", path.display()))
                }
                Err(_) => {}
            }
        }
        match pruned.next {
            Some(next) => cursor = Some(next),
            None => return Ok(report),
        }
    }
}

/// The files of a pruned process: its kind's records, and its outputs.
fn files_of(process: &StoredProcess, outputs: bool) -> Vec<PathBuf> {
    let Some(kind) = kinds::all().into_iter().find(|k| k.name() == process.kind) else { return Vec::new() };
    let mut files = kind.records(&process.id, process.host.as_deref());
    if outputs && let Ok(job) = serde_json::from_str::<Job>(&process.spec) {
        files.extend(kind.outputs(&job));
    }
    files
}

/// The data directory, as given and as it resolves.
#[derive(Clone, Debug)]
struct Roots {
    given: PathBuf,
    real: Option<PathBuf>,
}

impl Roots {
    fn of(data_dir: &Path) -> Roots {
        Roots { given: data_dir.to_path_buf(), real: std::fs::canonicalize(data_dir).ok() }
    }

    /// Removes `path` (a file, a link, or a directory with all it holds)
    /// if it is inside the data directory and reached without passing a
    /// link: `Ok(true)` if it was there (in a dry run: would be removed),
    /// `Ok(false)` if it was not, `Err` with why it was left alone.
    fn remove(&self, path: &Path, dry_run: bool) -> Result<bool, String> {
        let real = self.real.as_ref().ok_or("the data directory cannot be resolved")?;
        let inside = path.strip_prefix(&self.given).or_else(|_| path.strip_prefix(real));
        let relative = inside.map_err(|_| "outside the data directory".to_owned())?;
        let parts: Vec<&std::ffi::OsStr> = relative
            .components()
            .map(|c| match c {
                Component::Normal(name) => Ok(name),
                _ => Err("not a plain path inside the data directory".to_owned()),
            })
            .collect::<Result<_, _>>()?;
        let Some((last, dirs)) = parts.split_last() else { return Err("the data directory itself".into()) };
        let mut at = real.clone();
        for dir in dirs {
            at.push(dir);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(format!("{} is a link or a file, not a directory", at.display())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(e.to_string()),
            }
        }
        at.push(last);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        if dry_run {
            return Ok(true);
        }
        // A link is removed itself, never what it points to; a directory's
        // removal does not follow the links inside it.
        let removed = if meta.is_dir() { std::fs::remove_dir_all(&at) } else { std::fs::remove_file(&at) };
        match removed {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_with_their_units_and_within_range() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in ["", "30", "d", "0s", "-1d", "1.5h", "30 days", "99999999999999999999d", "36501w"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_paths_inside_the_data_directory_go_and_no_link_is_followed() {
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let outside = root.path().join("outside");
        std::fs::create_dir_all(data.join("runs/r")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        std::fs::write(data.join("runs/r/a.out"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("runs/link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep"), data.join("runs/r/b.out")).unwrap();
        let roots = Roots::of(&data);
        assert_eq!(roots.remove(&data.join("runs/r/a.out"), true), Ok(true), "a dry run");
        assert!(data.join("runs/r/a.out").exists());
        assert_eq!(roots.remove(&data.join("runs/r/a.out"), false), Ok(true));
        assert_eq!(roots.remove(&data.join("runs/r/a.out"), false), Ok(false), "gone already");
        // Through a link: refused; a link itself: removed, not its target.
        assert!(roots.remove(&data.join("runs/link/keep"), false).is_err());
        assert_eq!(roots.remove(&data.join("runs/r/b.out"), false), Ok(true));
        assert!(outside.join("keep").exists());
        assert!(roots.remove(&outside.join("keep"), false).is_err());
        assert!(roots.remove(&data.join("runs/../../outside/keep"), false).is_err());
        assert!(roots.remove(&data, false).is_err());
        // A directory with a link inside: the link goes, its target stays.
        std::os::unix::fs::symlink(&outside, data.join("runs/r/inner")).unwrap();
        assert_eq!(roots.remove(&data.join("runs/r"), false), Ok(true));
        assert!(!data.join("runs/r").exists() && outside.join("keep").exists());
    }
}
