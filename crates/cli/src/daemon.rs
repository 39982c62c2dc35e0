//! `drover daemon start|stop|status|run`.

use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use drover_daemon::api::{Engines, Info, ProcessList};
use drover_daemon::{
    Client, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DaemonConfig, MAX_CONNECTIONS_LIMIT, Paths, Target,
};

use crate::{EXIT_BAD_INPUT, EXIT_NO_DAEMON, config, fmt};

/// How a daemon is to run.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DaemonOptions {
    /// Also serve the API and the web page on this loopback address (e.g.
    /// 127.0.0.1:7878; port 0 picks a free one); it asks for the token in
    /// `daemon.token` of the data directory.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Allow `--http` on an address that is not loopback (anyone who can
    /// reach it and has the token controls your processes).
    #[arg(long, requires = "http")]
    allow_non_loopback: bool,
    /// At most this many shell jobs run at once [default: the number of CPUs].
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// The store: a SQLite file or a postgres:// URL [default: drover.db in
    /// the data directory].
    #[arg(long, value_name = "LOCATION")]
    store: Option<String>,
    /// How long this daemon's claim on its processes holds without a
    /// heartbeat (1 to 3600 s): daemons sharing a store take over a dead
    /// one's processes this long after it stopped answering.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_secs: u64,
    /// At most this many connections at once on each of the daemon's
    /// listeners (the socket, the --http address), event streams included;
    /// more wait until one ends.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_CONNECTIONS_LIMIT as u64))]
    max_connections: u64,
    /// A connection that sends no whole request within this many seconds
    /// (of opening, or of its last answer) is closed (1 to 3600 s).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    idle_timeout_secs: u64,
    /// Prune, every tenth of this age, the processes that ended at least
    /// this long ago (as `drover prune --older-than`; off by default).
    #[arg(long, value_name = "AGE", value_parser = drover_engine::parse_age)]
    retention: Option<Duration>,
    /// With `--retention`, their outputs too.
    #[arg(long, requires = "retention")]
    retention_outputs: bool,
}

/// How `daemon start` hands the store's location to the daemon.
const STORE_ENV: &str = "DROVER_STORE";

pub(crate) fn client(data: &Path) -> Client {
    Client::new(Target::Unix(Paths::new(data).socket()))
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// `drover daemon run`: in the foreground.
pub(crate) fn run(data: &Path, config_dir: &Path, options: DaemonOptions) -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(false).with_target(false).init();
    let (config_path, settings) = match config::read(config_dir) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("drover: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let config = DaemonConfig {
        config: settings,
        config_path,
        data_dir: data.to_path_buf(),
        store: options.store.or_else(|| {
            let store = std::env::var(STORE_ENV).ok();
            // Read once, then gone: no job the daemon starts inherits it.
            // SAFETY: no other thread runs yet (the daemon's threads start
            // later), so nothing reads the environment meanwhile.
            #[allow(unsafe_code)]
            unsafe {
                std::env::remove_var(STORE_ENV);
            }
            store
        }),
        jobs: options.jobs,
        lease: std::time::Duration::from_secs(options.lease_secs),
        http: options.http,
        allow_non_loopback: options.allow_non_loopback,
        max_connections: usize::try_from(options.max_connections).unwrap_or(usize::MAX),
        idle_timeout: Duration::from_secs(options.idle_timeout_secs),
        retention: options
            .retention
            .map(|older_than| drover_daemon::Retention { older_than, outputs: options.retention_outputs }),
    };
    tracing::info!(data_dir = %data.display(), pid = std::process::id(), "drover daemon starting");
    match drover_daemon::run(config) {
        Ok(()) => {
            tracing::info!("drover daemon stopped");
            ExitCode::SUCCESS
        }
        Err(e @ drover_daemon::DaemonError::AlreadyRunning { .. }) => {
            eprintln!("drover: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("drover: the daemon cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `drover daemon start`: `drover daemon run` in the background, and wait
/// until it answers.
pub(crate) fn start(data: &Path, config_dir: &Path, options: DaemonOptions) -> ExitCode {
    let paths = Paths::new(data);
    if let Some(pid) = paths.running_pid() {
        println!("a drover daemon is already running for {} (pid {pid})", data.display());
        return ExitCode::SUCCESS;
    }
    // Bad configuration is reported here, not only in the log.
    if let Err(e) = config::computers(config_dir) {
        eprintln!("drover: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    if let Some(addr) = options.http
        && !addr.ip().is_loopback()
        && !options.allow_non_loopback
    {
        eprintln!("drover: --http {addr} is not a loopback address (add --allow-non-loopback to use it anyway)");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    if let Err(e) = drover_daemon::private_dir(data) {
        eprintln!("drover: {e}");
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let log = match std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(paths.log()) {
        Ok(log) => log,
        Err(e) => {
            eprintln!("drover: cannot open {}: {e}", paths.log().display());
            return ExitCode::FAILURE;
        }
    };
    let log_start = log.metadata().map_or(0, |m| m.len());
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        data.display().to_string(),
        "--config-dir".into(),
        config_dir.display().to_string(),
        "daemon".into(),
        "run".into(),
    ];
    if let Some(addr) = options.http {
        args.extend(["--http".into(), addr.to_string()]);
    }
    if options.allow_non_loopback {
        args.push("--allow-non-loopback".into());
    }
    if let Some(jobs) = options.jobs {
        args.extend(["--jobs".into(), jobs.to_string()]);
    }
    args.extend(["--lease-secs".into(), options.lease_secs.to_string()]);
    args.extend(["--max-connections".into(), options.max_connections.to_string()]);
    args.extend(["--idle-timeout-secs".into(), options.idle_timeout_secs.to_string()]);
    if let Some(retention) = options.retention {
        args.extend(["--retention".into(), format!("{}s", retention.as_secs())]);
    }
    if options.retention_outputs {
        args.push("--retention-outputs".into());
    }
    // Not on the command line, where any local user could read a password.
    let store = options.store;
    let spawned = std::env::current_exe().and_then(|exe| {
        use std::os::unix::process::CommandExt as _;
        let err = log.try_clone()?;
        // The daemon is drover itself, detached from the terminal (its own
        // process group, no stdin, output to the log): not a user command,
        // so not through drover-shell's wrapper.
        #[allow(clippy::disallowed_methods)]
        let mut command = std::process::Command::new(exe);
        if let Some(store) = &store {
            command.env(STORE_ENV, store);
        }
        command.args(&args).stdin(std::process::Stdio::null()).stdout(log).stderr(err).process_group(0).spawn()
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("drover: cannot start the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    let client = client(data);
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(info) = rt.block_on(client.get::<Info>("/v1/info"))
            && info.ready
        {
            println!("drover daemon started (pid {}) for {}", info.pid, info.data_dir);
            println!("  socket: {}", info.socket);
            if let Some(url) = web_url(&paths, &info) {
                println!("  web:    {url}");
            }
            println!("  log:    {}", paths.log().display());
            return ExitCode::SUCCESS;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read(paths.log()).unwrap_or_default();
            let tail = String::from_utf8_lossy(&text[usize::try_from(log_start).unwrap_or(0).min(text.len())..]);
            if tail.contains("already running") {
                println!("{}", tail.lines().rev().find(|l| l.contains("already running")).unwrap_or_default());
                return ExitCode::SUCCESS;
            }
            eprintln!("drover: the daemon did not start ({status}); its log says:");
            for line in tail.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev() {
                eprintln!("  {line}");
            }
            return ExitCode::FAILURE;
        }
        if Instant::now() > deadline {
            eprintln!(
                "drover: the daemon (pid {}) does not answer after 30 s; see {}",
                child.id(),
                paths.log().display()
            );
            return ExitCode::FAILURE;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The web page's address with its token, if the daemon serves one.
pub(crate) fn web_url(paths: &Paths, info: &Info) -> Option<String> {
    let addr = info.http.as_ref()?;
    let token = std::fs::read_to_string(paths.token()).ok()?;
    Some(format!("http://{addr}/?token={}", token.trim()))
}

/// `drover daemon stop`.
pub(crate) fn stop(data: &Path) -> ExitCode {
    let paths = Paths::new(data);
    let Some(pid) = paths.running_pid() else {
        println!("no drover daemon is running for {}", data.display());
        return ExitCode::SUCCESS;
    };
    let rt = runtime();
    let quick = client(data).with_timeout(Duration::from_secs(5));
    let asked = rt.block_on(quick.post::<_, serde_json::Value>("/v1/shutdown", &serde_json::json!({}))).is_ok();
    let gone = |secs| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if paths.running_pid().is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    if asked && gone(10) {
        println!("drover daemon stopped (pid {pid}); its processes resume when a daemon starts again");
        return ExitCode::SUCCESS;
    }
    // It did not answer, or did not stop: SIGTERM, then SIGKILL.
    let target = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0));
    for (signal, secs) in [(nix::sys::signal::Signal::SIGTERM, 10), (nix::sys::signal::Signal::SIGKILL, 5)] {
        if pid == 0 || nix::sys::signal::kill(target, signal).is_err() {
            break;
        }
        if gone(secs) {
            println!("drover daemon stopped (pid {pid}, by {signal})");
            return ExitCode::SUCCESS;
        }
    }
    eprintln!("drover: the daemon (pid {pid}) did not stop; see {}", paths.log().display());
    ExitCode::FAILURE
}

/// `drover daemon status`.
pub(crate) fn status(data: &Path, json: bool) -> ExitCode {
    let paths = Paths::new(data);
    let not_running = || {
        if json {
            println!("{}", serde_json::json!({ "running": false, "data_dir": data }));
        } else {
            println!("no drover daemon is running for {} (start one with `drover daemon start`)", data.display());
        }
        ExitCode::from(EXIT_NO_DAEMON)
    };
    if paths.running_pid().is_none() {
        return not_running();
    }
    let rt = runtime();
    let client = client(data);
    let Ok(info) = rt.block_on(client.get::<Info>("/v1/info")) else { return not_running() };
    let counts =
        rt.block_on(client.get::<ProcessList>("/v1/processes?state=none")).map(|l| l.counts).unwrap_or_default();
    let web = web_url(&paths, &info);
    if json {
        let value =
            serde_json::json!({ "running": true, "info": info, "counts": counts, "web": web, "log": paths.log() });
        println!("{value}");
        return ExitCode::SUCCESS;
    }
    let up = (fmt::now_ms() - info.started_at).max(0);
    println!("drover daemon {} running (pid {}) for {}", info.version, info.pid, fmt::duration_ms(up));
    println!("  data dir:  {}", info.data_dir);
    println!("  store:     {}", info.store);
    println!("  socket:    {}", info.socket);
    if let Some(web) = web {
        println!("  web:       {web}");
    }
    println!("  log:       {}", paths.log().display());
    let computers = if info.computers.is_empty() { "none".to_owned() } else { info.computers.join(", ") };
    println!("  computers: {computers}");
    if let Ok(engines) = rt.block_on(client.get::<Engines>("/v1/engines")) {
        println!("  engines:   {} live on the store", engines.engines.iter().filter(|e| e.live).count());
        for e in &engines.engines {
            let this = if e.id == engines.this { " (this one)" } else { "" };
            let places = if e.places.is_empty() { String::new() } else { format!(", holds {}", e.places.join(", ")) };
            let state = if e.live { "live" } else { "gone" };
            println!("    {}{this}: {state}, {} on {} (pid {}), owns {}{places}", e.id, e.pool, e.host, e.pid, e.owns);
        }
    }
    let total: usize = counts.values().sum();
    let per: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    println!("  processes: {total}{}", if per.is_empty() { String::new() } else { format!(" ({})", per.join(", ")) });
    ExitCode::SUCCESS
}

/// The data directory as an absolute path (the daemon outlives the shell's
/// working directory).
pub(crate) fn absolute(data: PathBuf) -> PathBuf {
    std::path::absolute(&data).unwrap_or(data)
}
