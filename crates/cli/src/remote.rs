//! The commands that talk to a running daemon: submit, list, show, pause,
//! resume, kill, watch, logs.

use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use drover_daemon::api::{
    Control, ControlResults, Filter, Info, LogChunk, NewJob, ProcessDetail, ProcessList, Stream, Submit, Submitted,
    encode,
};
use drover_daemon::{Client, ClientError, Paths, StatusCode};
use drover_engine::{Action, ProcessInfo, PruneOptions, PruneReport};

use crate::daemon::{client, runtime};
use crate::{EXIT_BAD_INPUT, EXIT_NO_DAEMON, fmt, jobfile};

/// Which processes, by state, kind and computer.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only processes in this state (queued, running, paused, finished,
    /// failed, killed, ...; `active`: every one that has not ended).
    #[arg(long)]
    state: Option<String>,
    /// Only processes of this kind (one of `drover_engine::kinds()`: shell,
    /// scheduler, cloud, group).
    #[arg(long, value_parser = kind_name)]
    kind: Option<String>,
    /// Only processes on this computer.
    #[arg(long)]
    computer: Option<String>,
    /// Only the children of this process.
    #[arg(long, value_name = "ID")]
    parent: Option<String>,
}

/// A kind this drover knows.
fn kind_name(name: &str) -> Result<String, String> {
    let kinds: Vec<&str> = drover_engine::kinds().iter().map(|k| k.name()).collect();
    if kinds.contains(&name) {
        Ok(name.to_owned())
    } else {
        Err(format!("no kind `{name}` (kinds: {})", kinds.join(", ")))
    }
}

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Filter {
        Filter { state: a.state, kind: a.kind, computer: a.computer, parent: a.parent }
    }
}

/// Which processes a command is about: ids, or a filter.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Targets {
    /// Process ids (or a unique end of one, like `quickstart.hello`).
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every process that has not ended.
    #[arg(long, conflicts_with_all = ["ids", "state"])]
    all: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// Why a remote command failed, with its exit code.
struct Failure(u8, String);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::NoDaemon { .. } => Failure(EXIT_NO_DAEMON, e.to_string()),
            ClientError::Api { status, .. } if status == StatusCode::NOT_FOUND || status.is_client_error() => {
                Failure(EXIT_BAD_INPUT, e.to_string())
            }
            e => Failure(1, e.to_string()),
        }
    }
}

fn finish(result: Result<ExitCode, Failure>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(Failure(code, message)) => {
            eprintln!("drover: {message}");
            ExitCode::from(code)
        }
    }
}

fn json_line<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("serialisable"));
}

fn json_pretty<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("serialisable"));
}

/// A new submission's id: `run-`, the time in milliseconds in base 36, and
/// two more characters of the time within it, so that two submissions in the
/// same millisecond differ.
pub(crate) fn new_run_id() -> String {
    let base36 = |mut n: u64, min: usize| {
        let mut digits = Vec::new();
        while n > 0 || digits.len() < min {
            digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
            n /= 36;
        }
        digits.reverse();
        String::from_utf8(digits).unwrap_or_default()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let ms = u64::try_from(now.as_millis()).unwrap_or(0);
    let within = u64::from(now.subsec_nanos() % 1_000_000) * 1296 / 1_000_000;
    format!("run-{}{}", base36(ms, 1), base36(within, 2))
}

/// `drover submit`.
pub(crate) fn submit(data: &Path, files: &[PathBuf], json: bool) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let client = client(data);
        let info: Info = client.get("/v1/info").await?;
        let run_id = new_run_id();
        let out_dir = Paths::new(&info.data_dir).runs().join(&run_id);
        let planned = jobfile::load(files, &out_dir, &run_id)
            .map_err(|e| Failure(EXIT_BAD_INPUT, format!("{e}\ndrover: nothing was submitted")))?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&out_dir)
            .map_err(|e| Failure(1, format!("cannot create {}: {e}", out_dir.display())))?;
        let jobs = planned.into_iter().map(|p| NewJob { id: format!("{run_id}.{}", p.id), job: p.job }).collect();
        let submitted: Submitted = client.post("/v1/processes", &Submit { jobs }).await?;
        if json {
            json_line(&serde_json::json!({ "run": run_id, "ids": submitted.ids, "outputs": out_dir }));
        } else {
            println!("submitted {} jobs as {run_id}; outputs in {}", submitted.ids.len(), out_dir.display());
            println!("  follow them with `drover watch`, or `drover list --state active`");
        }
        Ok(ExitCode::SUCCESS)
    }))
}

/// `drover list`.
/// Every matching process, page after page, or the first `limit`.
pub(crate) fn list(data: &Path, filter: Filter, limit: Option<usize>, json: bool) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let list = client(data).list(&filter, limit).await?;
        if json {
            json_pretty(&list);
            return Ok(ExitCode::SUCCESS);
        }
        let rows: Vec<Vec<String>> = list
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.kind.clone(),
                    p.computer.clone().unwrap_or_else(|| "-".into()),
                    p.status().to_owned(),
                    p.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                    fmt::age(p.created_at),
                    p.error.clone().or_else(|| p.detail.clone()).unwrap_or_default(),
                ]
            })
            .collect();
        print!("{}", fmt::table(&["ID", "KIND", "COMPUTER", "STATE", "EXIT", "AGE", "DETAIL"], &rows));
        let per: Vec<String> = list.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        let total: usize = list.counts.values().sum();
        println!(
            "{} shown of {total}: {}",
            list.processes.len(),
            if per.is_empty() { "-".into() } else { per.join(", ") }
        );
        Ok(ExitCode::SUCCESS)
    }))
}

/// `drover prune`: through the daemon when one serves the data directory,
/// else on the embedded store (`drover.db` in it) directly.
pub(crate) fn prune(data: &Path, options: PruneOptions, json: bool) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let report: PruneReport = if Paths::new(data).running_pid().is_some() {
            client(data).post("/v1/prune", &options).await?
        } else {
            let path = Paths::new(data).store();
            if !path.exists() {
                return Err(Failure(EXIT_BAD_INPUT, format!("no store in {} (and no daemon)", data.display())));
            }
            let store =
                drover_store::Store::open(&path.display().to_string()).await.map_err(|e| Failure(1, e.to_string()))?;
            drover_engine::prune(&store, data, &options).await.map_err(|e| Failure(1, e))?
        };
        if json {
            json_pretty(&report);
            return Ok(ExitCode::SUCCESS);
        }
        let verb = if report.dry_run { "would remove" } else { "removed" };
        for id in &report.ids {
            println!("{verb:<13} {id}");
        }
        for path in &report.paths {
            println!("{verb:<13} {path}");
        }
        for refused in &report.refused {
            println!("left alone    {refused}");
        }
        let named = report.ids.len() + report.paths.len();
        let all = report.processes + report.files;
        if usize::try_from(all).is_ok_and(|all| all > named) {
            println!("(and {} more not named)", all - named as u64);
        }
        println!("{verb} {} ended processes (with their events) and {} files", report.processes, report.files);
        Ok(ExitCode::SUCCESS)
    }))
}

/// The process a user means: an exact id, or else among the ids that end
/// with `.GIVEN` or start with `GIVEN` (the same job submitted again matches
/// once per submission): the only one, else the only one still active, else
/// (to read, not to control) the newest, said on stderr.
fn resolve(given: &str, all: &[ProcessInfo], control: bool) -> Result<String, Failure> {
    if all.iter().any(|p| p.id == given) {
        return Ok(given.to_owned());
    }
    let dotted = format!(".{given}");
    let matches: Vec<&ProcessInfo> =
        all.iter().filter(|p| p.id.ends_with(&dotted) || p.id.starts_with(given)).collect();
    let active: Vec<&&ProcessInfo> = matches.iter().filter(|p| !p.terminal).collect();
    let ids = |ps: &[&ProcessInfo]| ps.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ");
    match (matches.as_slice(), active.as_slice()) {
        ([], _) => Err(Failure(EXIT_BAD_INPUT, format!("no process `{given}` (see `drover list`)"))),
        ([one], _) => Ok(one.id.clone()),
        (_, [one]) => Ok(one.id.clone()),
        (many, _) if control => Err(Failure(
            EXIT_BAD_INPUT,
            format!("`{given}` could be any of {} processes: {}; give the full id", many.len(), ids(many)),
        )),
        (many, _) => {
            let newest = many.iter().max_by_key(|p| (p.created_at, p.id.as_str())).expect("not empty");
            eprintln!("drover: `{given}` matches {} processes; showing the newest, {}", many.len(), newest.id);
            Ok(newest.id.clone())
        }
    }
}

/// The process a user means, as [`resolve`] says: an exact id is asked
/// about alone (one row, however large the store); only another is looked
/// for in the whole list.
async fn resolve_id(client: &Client, given: &str, control: bool) -> Result<String, Failure> {
    match client.get::<ProcessDetail>(&format!("/v1/processes/{}", encode(given))).await {
        Ok(_) => Ok(given.to_owned()),
        Err(ClientError::Api { status: StatusCode::NOT_FOUND, .. }) => {
            resolve(given, &client.list(&Filter::default(), None).await?.processes, control)
        }
        Err(e) => Err(e.into()),
    }
}

/// `drover show`.
pub(crate) fn show(data: &Path, given: &str, json: bool) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let client = client(data);
        let id = resolve_id(&client, given, false).await?;
        let detail: ProcessDetail = client.get(&format!("/v1/processes/{}", encode(&id))).await?;
        if json {
            json_pretty(&detail);
            return Ok(ExitCode::SUCCESS);
        }
        let p = &detail.info;
        let mut state = p.status().to_owned();
        if let Some(code) = p.exit_code {
            state.push_str(&format!(" (exit {code})"));
        }
        println!("id:        {}", p.id);
        println!("kind:      {}", p.kind);
        if let Some(c) = &p.computer {
            println!("computer:  {c}");
        }
        println!("state:     {state}");
        if let Some(d) = &p.detail {
            println!("detail:    {d}");
        }
        if let Some(e) = &p.error {
            println!("error:     {e}");
        }
        println!("submitted: {} ({} ago)", fmt::utc(p.created_at), fmt::age(p.created_at));
        if detail.describe.is_empty() {
            println!("spec:      {}", detail.spec);
        }
        for (label, value) in &detail.describe {
            println!("{:<10} {value}", format!("{label}:"));
        }
        if let Some(parent) = &p.parent {
            println!("parent:    {parent}");
        }
        if let Some(owner) = &p.owner {
            println!("engine:    {owner}");
        }
        if !detail.children.is_empty() {
            println!("children:");
            for child in &detail.children {
                let code = child.exit_code.map(|c| format!(" (exit {c})")).unwrap_or_default();
                println!("  {}  {}{code}", child.id, child.status());
            }
        }
        println!("history:");
        for t in &detail.history {
            let paused = if t.paused && t.state != "paused" { " (paused)" } else { "" };
            println!("  {}  {}{paused}", fmt::utc_time_ms(t.at), t.state);
        }
        Ok(ExitCode::SUCCESS)
    }))
}

/// `drover pause|resume|kill`.
pub(crate) fn control(data: &Path, action: Action, targets: Targets) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let client = client(data);
        let mut filter = Filter::from(targets.filter.clone());
        if targets.all {
            filter.state = Some("active".into());
        }
        if targets.ids.is_empty() && filter.is_empty() {
            return Err(Failure(
                EXIT_BAD_INPUT,
                "name the processes: give ids, or --state/--kind/--computer, or --all".into(),
            ));
        }
        let mut ids = Vec::new();
        for given in &targets.ids {
            ids.push(resolve_id(&client, given, true).await?);
        }
        if !filter.is_empty() {
            // Filtered by the daemon's store, page after page.
            let matching = client.list(&filter, None).await?.processes;
            let chosen = matching.iter().filter(|p| ids.is_empty() || ids.contains(&p.id));
            let chosen: Vec<String> = chosen.map(|p| p.id.clone()).collect();
            ids = chosen;
        }
        if ids.is_empty() {
            if targets.json {
                json_line(&ControlResults { results: Vec::new() });
            } else {
                println!("no process matches");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let results: ControlResults = client.post("/v1/control", &Control { action, ids }).await?;
        let failed = results.results.iter().filter(|r| !r.ok).count();
        if targets.json {
            json_line(&results);
        } else {
            let done = match action {
                Action::Pause => "paused",
                Action::Resume => "resumed",
                Action::Kill => "killed",
            };
            for r in &results.results {
                match &r.error {
                    None => println!("{done:<8} {}", r.id),
                    Some(e) => println!("failed   {}: {e}", r.id),
                }
            }
        }
        Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }))
}

/// `drover watch`: one line per state change, until interrupted.
pub(crate) fn watch(data: &Path, filter: Filter, json: bool) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let client = client(data);
        let mut events = client.events("/v1/events").await?;
        if !json {
            let list: ProcessList = client.get("/v1/processes?limit=1").await?;
            let per: Vec<String> = list.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
            let total: usize = list.counts.values().sum();
            println!("watching {total} processes ({}); Ctrl-C to stop", per.join(", "));
        }
        while let Some(event) = events.next().await? {
            match event.event.as_str() {
                "process" => {
                    let Ok(p) = serde_json::from_str::<ProcessInfo>(&event.data) else { continue };
                    if !filter.matches(&p) {
                        continue;
                    }
                    if json {
                        println!("{}", event.data);
                    } else {
                        let mut extra = String::new();
                        if let Some(code) = p.exit_code {
                            extra.push_str(&format!(" exit {code}"));
                        }
                        if let Some(d) = &p.detail {
                            extra.push_str(&format!(" ({d})"));
                        }
                        println!("{}  {:<10} {}{extra}", fmt::utc_time_ms(p.updated_at), p.status(), p.id);
                    }
                    let _ = std::io::stdout().flush();
                }
                "lagged" if !json => println!("(fell behind by {} changes)", event.data),
                _ => {}
            }
        }
        Err(Failure(1, "the daemon closed the stream (it stopped?)".into()))
    }))
}

/// `drover logs`.
pub(crate) fn logs(data: &Path, given: &str, stream: Stream, follow: bool) -> ExitCode {
    let rt = runtime();
    finish(rt.block_on(async {
        let client = client(data);
        let id = resolve_id(&client, given, false).await?;
        let name = if stream == Stream::Stdout { "stdout" } else { "stderr" };
        let mut offset = 0;
        let mut out = std::io::stdout().lock();
        loop {
            let path = format!("/v1/processes/{}/logs?stream={name}&offset={offset}", encode(&id));
            let chunk: LogChunk = client.get(&path).await?;
            let _ = out.write_all(chunk.data.as_bytes());
            let _ = out.flush();
            let empty = chunk.offset == offset;
            offset = chunk.offset;
            if !follow || (chunk.terminal && empty) {
                return Ok(ExitCode::SUCCESS);
            }
            if empty {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, created_at: i64, terminal: bool) -> ProcessInfo {
        let mut p: ProcessInfo = serde_json::from_value(serde_json::json!({
            "id": id, "kind": "shell", "state": "running", "paused": false, "terminal": terminal,
            "created_at": created_at, "updated_at": created_at
        }))
        .unwrap();
        p.terminal = terminal;
        p
    }

    #[test]
    fn short_ids_resolve_to_the_one_meant() {
        let all = [
            info("run-a.q.hello", 1, true),
            info("run-b.q.hello", 2, true),
            info("run-b.q.nap", 2, false),
            info("run-c.q.nap", 3, false),
        ];
        assert_eq!(resolve("run-a.q.hello", &all, true).ok(), Some("run-a.q.hello".into()));
        // Read: the newest; control: refused, as two ended ones match.
        assert_eq!(resolve("q.hello", &all, false).ok(), Some("run-b.q.hello".into()));
        assert_eq!(resolve("q.hello", &all, true).err().map(|f| f.0), Some(EXIT_BAD_INPUT));
        // Two active ones: ambiguous to control; to read, the newest.
        assert_eq!(resolve("q.nap", &all, true).err().map(|f| f.0), Some(EXIT_BAD_INPUT));
        assert_eq!(resolve("q.nap", &all, false).ok(), Some("run-c.q.nap".into()));
        let one_active = [info("run-a.q.nap", 1, true), info("run-b.q.nap", 2, false)];
        assert_eq!(resolve("q.nap", &one_active, true).ok(), Some("run-b.q.nap".into()));
        assert_eq!(resolve("nothing", &all, false).err().map(|f| f.0), Some(EXIT_BAD_INPUT));
    }
}
