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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_scheduler::{AnyScheduler, AnyTransport, Computer, DEFAULT_INTERVAL, Direct, Local, Slurm, Ssh, SshConfig};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    computer: BTreeMap<String, Entry>,
    cloud: Option<CloudEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CloudEntry {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    cleanup_after_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    transport: TransportKind,
    host: Option<String>,
    scheduler: SchedulerKind,
    work_dir: String,
    poll_interval_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum TransportKind {
    Ssh,
    Local,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SchedulerKind {
    Slurm,
    SlurmAccounting,
    Direct,
}

/// Where the computers file is: `$DROVER_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/drover`, else `~/.config/drover`.
pub(crate) fn config_dir() -> PathBuf {
    std::env::var_os("DROVER_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("drover")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/drover")))
        .unwrap_or_else(|| PathBuf::from(".drover-config"))
}

fn read(dir: &Path) -> Result<(PathBuf, File), String> {
    let path = dir.join("computers.toml");
    let file: File = match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    Ok((path, file))
}

/// The Kubernetes cluster settings (`[cloud]`; defaults if there is none).
///
/// # Errors
///
/// A message naming the file when it cannot be read.
pub(crate) fn cloud(dir: &Path) -> Result<drover_cloud::CloudSettings, String> {
    let (_, file) = read(dir)?;
    let entry = file.cloud.unwrap_or_default();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let kubeconfig = entry.kubeconfig.map(|p| match (p.strip_prefix("~"), &home) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => p,
    });
    Ok(drover_cloud::CloudSettings {
        kubeconfig,
        context: entry.context,
        namespace: entry.namespace,
        cleanup_after: entry.cleanup_after_secs.map_or(drover_cloud::DEFAULT_CLEANUP_AFTER, Duration::from_secs),
    })
}

/// The configured computers (none if there is no file).
///
/// # Errors
///
/// A message naming the file (and line and column) when it cannot be read.
pub(crate) fn computers(dir: &Path) -> Result<HashMap<String, Arc<Computer>>, String> {
    let (path, file) = read(dir)?;
    let mut computers = HashMap::new();
    for (name, entry) in file.computer {
        let where_ = format!("{}: computer `{name}`", path.display());
        let transport = match (entry.transport, entry.host) {
            (TransportKind::Ssh, Some(host)) => AnyTransport::Ssh(Ssh::new(SshConfig::new(host))),
            (TransportKind::Ssh, None) => return Err(format!("{where_}: an ssh computer needs `host`")),
            (TransportKind::Local, None) => AnyTransport::Local(Local::new()),
            (TransportKind::Local, Some(_)) => return Err(format!("{where_}: a local computer has no `host`")),
        };
        let scheduler = match entry.scheduler {
            SchedulerKind::Slurm => AnyScheduler::Slurm(Slurm::new()),
            SchedulerKind::SlurmAccounting => AnyScheduler::Slurm(Slurm::with_accounting()),
            SchedulerKind::Direct => AnyScheduler::Direct(Direct),
        };
        let interval = match entry.poll_interval_secs {
            Some(0) => return Err(format!("{where_}: poll_interval_secs must be at least 1")),
            Some(secs) => Duration::from_secs(secs),
            None => DEFAULT_INTERVAL,
        };
        computers.insert(name.clone(), Computer::new(name, transport, scheduler, entry.work_dir, interval));
    }
    Ok(computers)
}
