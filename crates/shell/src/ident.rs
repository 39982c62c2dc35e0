//! What identifies a process beyond its pid, which the kernel hands out
//! again once the process is gone (after a reboot, or a wrap of the pid
//! space): the boot it ran in and its start time, in clock ticks since that
//! boot (`/proc/<pid>/stat`, field 22). Two processes with the same pid, boot
//! and start time are the same process.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A process, as the kernel tells it apart from every other process that ever
/// had its pid.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    /// The boot it started in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// When it started, in clock ticks since that boot.
    pub start_ticks: u64,
}

/// This boot's id, read once.
fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_owned()))
        .as_deref()
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses): its state first, the start time 19th.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `fields` (of [`stat_fields`]) say the process has not died.
fn living(fields: &[String]) -> bool {
    fields.first().is_some_and(|state| state != "Z" && state != "X")
}

/// The identity of process `pid`, if it lives.
pub(crate) fn identify(pid: u32) -> Option<ProcessIdentity> {
    let fields = stat_fields(pid)?;
    if !living(&fields) {
        return None;
    }
    identity_at(fields.get(19)?.parse().ok()?)
}

/// When process `pid` started, in clock ticks since boot, even if it has
/// ended and is not reaped yet (a zombie keeps its start time).
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// The identity of a process of this boot that started at `start_ticks`.
pub(crate) fn identity_at(start_ticks: u64) -> Option<ProcessIdentity> {
    Some(ProcessIdentity { boot_id: boot_id()?.to_owned(), start_ticks })
}

/// Whether `pid` still is the process `identity` names: alive, in this
/// boot, started when it did. A pid the kernel gave to another process since
/// is not.
pub(crate) fn is(pid: u32, identity: &ProcessIdentity) -> bool {
    identify(pid).is_some_and(|now| now == *identity)
}

/// When this boot began, as the wall clock tells it (`btime` of `/proc/stat`).
fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs = stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .unwrap_or(100)
}

/// The identity of the process that wrote `record` (a file it wrote right
/// after it started, holding its pid) if `pid` is still that process: alive,
/// and started no later than the file was written. A process that took the
/// pid over after a reboot or a wrap started after the writer had died, so
/// after the file was written. The second of slack covers the boot time's
/// granularity.
pub(crate) fn identify_writer(pid: u32, record: &Path) -> Option<ProcessIdentity> {
    let written = std::fs::metadata(record).ok()?.modified().ok()?;
    let identity = identify(pid)?;
    let started = boot_time()? + Duration::from_millis(identity.start_ticks * 1000 / ticks_per_second());
    (started <= written + Duration::from_secs(1)).then_some(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_told_apart_from_a_later_one_with_its_pid() {
        let me = std::process::id();
        let identity = identify(me).expect("this process lives");
        assert!(is(me, &identity));
        assert_eq!(identity.boot_id.len(), 36, "{identity:?}");
        let older = ProcessIdentity { start_ticks: identity.start_ticks.wrapping_sub(1), ..identity.clone() };
        assert!(!is(me, &older), "an earlier process with this pid is not this one");
        let other_boot = ProcessIdentity { boot_id: "00000000-0000-0000-0000-000000000000".into(), ..identity };
        assert!(!is(me, &other_boot), "a process of another boot is not this one");
        assert_eq!(identify(u32::MAX), None);

        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("pid");
        std::fs::write(&record, me.to_string()).unwrap();
        assert!(identify_writer(me, &record).is_some(), "this process started before it wrote the file");
        // A record written before this process started (as before a reboot) is not its.
        let long_ago = std::fs::File::options().write(true).open(&record).unwrap();
        long_ago.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)).unwrap();
        assert_eq!(identify_writer(me, &record), None);
    }
}
