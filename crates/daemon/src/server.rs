//! The daemon: the engine on its own thread, and the control API on another.
//!
//! The engine and its processes live on the main thread's `LocalSet`; the API
//! runs on a second thread and reaches them only by messages ([`Call`]), each
//! answered on a oneshot channel. So no process is ever touched from the
//! API's thread, and a slow client cannot hold up a process.
//!
//! What needs no process is served on the API's thread from a store handle
//! of its own (opened once the engine opened the store): `list` pages and
//! filters in SQL there, and `prune` removes ended processes there, so
//! neither ever waits for, or holds up, the engine's thread.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use drover_engine::{
    Action, ControlError, Engine, EngineError, Identity, Job, Kinds, LogError, ProcessDetail, ProcessInfo,
    PruneOptions, PruneReport, hostname,
};
use drover_kind::now_ms;
use drover_store::Store;
use serde::Deserialize;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::LocalSet;

use crate::api::{
    Control, ControlResult, ControlResults, EngineInfo, Engines, ErrorBody, Filter, Info, LogChunk, ProcessList,
    Stream, Submit, Submitted,
};
use crate::paths::Paths;

/// The OpenAPI description of the control API.
pub const OPENAPI: &str = include_str!("openapi.json");
const INDEX_HTML: &str = include_str!("web/index.html");
/// The most a log request returns at once.
const MAX_LOG_CHUNK: u64 = 1 << 20;

/// How to run a daemon.
#[derive(Debug)]
pub struct DaemonConfig {
    /// Its data directory: store (unless `store` says otherwise), outputs,
    /// socket, pid file, token.
    pub data_dir: PathBuf,
    /// The store's location, if not `drover.db` in the data directory.
    pub store: Option<String>,
    /// `computers.toml`, as JSON: each process kind reads its own section
    /// (the computers of scheduler jobs, the cluster of cloud jobs). If a
    /// cluster cannot be reached at start, cloud jobs are refused with the
    /// reason.
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Where `config` was read from, for messages.
    pub config_path: PathBuf,
    /// At most this many shell processes run at once (default: the CPUs).
    pub jobs: Option<usize>,
    /// How long its claim on its processes holds without a heartbeat.
    pub lease: Duration,
    /// Also serve the API and the web page on this loopback address, asking
    /// for the token in `daemon.token`.
    pub http: Option<SocketAddr>,
    /// Allow `http` on an address that is not loopback.
    pub allow_non_loopback: bool,
    /// At most this many connections are served at once on each listener
    /// (the Unix socket and the TCP one each have their own), event streams
    /// included; more wait to be accepted. From 1 to
    /// [`MAX_CONNECTIONS_LIMIT`]; [`DEFAULT_MAX_CONNECTIONS`] by default.
    pub max_connections: usize,
    /// A connection that has not sent a whole request header (or body) this
    /// long after it opened, or after its last answer, is closed. From
    /// 100 ms to an hour; [`DEFAULT_IDLE_TIMEOUT`] by default. An answer
    /// being sent, such as an event stream, is never cut by it.
    pub idle_timeout: Duration,
    /// Prune ended processes this old, periodically (off by default).
    pub retention: Option<Retention>,
}

/// A daemon's retention: every so often (a tenth of `older_than`, from a
/// second to an hour), the processes that ended at least `older_than` ago
/// are pruned with their events and supervisor records, and with
/// `outputs`, their outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// How long an ended process is kept (1 s to 100 years).
    pub older_than: Duration,
    /// Whether its outputs go with it.
    pub outputs: bool,
}

/// The default of [`DaemonConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// The most [`DaemonConfig::max_connections`] may be.
pub const MAX_CONNECTIONS_LIMIT: usize = 16_384;
/// The default of [`DaemonConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The range of [`DaemonConfig::idle_timeout`].
const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(3600);

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory is not private to this user.
    #[error(transparent)]
    Private(#[from] crate::paths::PrivateDirError),
    /// Another daemon serves this data directory.
    #[error("a drover daemon is already running for {data_dir} (pid {pid})")]
    AlreadyRunning {
        /// Its data directory.
        data_dir: String,
        /// Its pid.
        pid: u32,
    },
    /// A file or socket could not be made.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `http` is not a loopback address and that was not allowed.
    #[error(
        "refusing to serve the control API on {0}: not a loopback address (pass --allow-non-loopback to do it anyway)"
    )]
    NotLoopback(SocketAddr),
    /// A setting is out of its range.
    #[error("{0}")]
    BadConfig(String),
    /// The store could not be opened or read.
    #[error("{0}")]
    Engine(String),
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io { path: path.display().to_string(), source }
}

type Reply<T> = oneshot::Sender<T>;

/// A message from the API's thread to the engine's.
enum Call {
    Show(String, Reply<Result<Option<ProcessDetail>, String>>),
    Submit(Vec<(String, Job)>, Reply<Result<(), EngineError>>),
    Control(String, Action, Reply<Result<(), ControlError>>),
    Subscribe(Reply<broadcast::Receiver<ProcessInfo>>),
    Engines(Reply<Result<Engines, String>>),
    /// Reads a process's log: its local file, else where it runs.
    Log {
        id: String,
        stream: Stream,
        offset: u64,
        reply: Reply<Result<drover_engine::LogRead, LogError>>,
    },
}

/// Runs a daemon in the foreground until it is told to stop (`POST
/// /v1/shutdown`, SIGTERM or SIGINT). It locks the pid file first, so only one
/// daemon serves a data directory; it listens before it recovers the store's
/// unfinished processes, so that clients can reach it at once.
///
/// Stopping it leaves the processes as a crash would, which drover is made
/// for: shell commands run on under their supervisors and cluster jobs stay
/// queued; the next daemon resumes them.
///
/// # Errors
///
/// [`DaemonError`] when it cannot start.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    if !(1..=MAX_CONNECTIONS_LIMIT).contains(&config.max_connections) {
        return Err(DaemonError::BadConfig(format!(
            "at most {} connections at once is not between 1 and {MAX_CONNECTIONS_LIMIT}",
            config.max_connections
        )));
    }
    if let Some(retention) = config.retention {
        drover_engine::check_age(retention.older_than)
            .map_err(|e| DaemonError::BadConfig(format!("retention: {e}")))?;
    }
    if !IDLE_TIMEOUT_RANGE.contains(&config.idle_timeout) {
        return Err(DaemonError::BadConfig(format!(
            "an idle timeout of {:?} is not between {:?} and {:?}",
            config.idle_timeout,
            IDLE_TIMEOUT_RANGE.start(),
            IDLE_TIMEOUT_RANGE.end()
        )));
    }
    raise_open_files_limit();
    let paths = Paths::new(&config.data_dir);
    crate::paths::private_dir(&paths.data_dir)?;
    let pid_path = paths.pid();
    let mut pid_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&pid_path)
        .map_err(io_err(&pid_path))?;
    if pid_file.try_lock().is_err() {
        let pid = std::fs::read_to_string(&pid_path).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0);
        return Err(DaemonError::AlreadyRunning { data_dir: paths.data_dir.display().to_string(), pid });
    }
    pid_file.set_len(0).map_err(io_err(&pid_path))?;
    writeln!(pid_file, "{}", std::process::id()).map_err(io_err(&pid_path))?;
    if let Some(addr) = config.http
        && !addr.ip().is_loopback()
        && !config.allow_non_loopback
    {
        return Err(DaemonError::NotLoopback(addr));
    }

    // The listeners, bound before anything else so that a client that sees
    // the daemon started can reach it.
    let socket = paths.socket();
    let _ = std::fs::remove_file(&socket); // stale: we hold the lock
    // Private from its first moment, not only once `chmod` ran.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = std::os::unix::net::UnixListener::bind(&socket);
    nix::sys::stat::umask(umask);
    let unix = bound.map_err(io_err(&socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).map_err(io_err(&socket))?;
    unix.set_nonblocking(true).map_err(io_err(&socket))?;
    let tcp = match config.http {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|source| DaemonError::Io { path: addr.to_string(), source })?;
            listener.set_nonblocking(true).map_err(|source| DaemonError::Io { path: addr.to_string(), source })?;
            let token = new_token().map_err(io_err(&paths.token()))?;
            let token_path = paths.token();
            let _ = std::fs::remove_file(&token_path);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token_path)
                .map_err(io_err(&token_path))?;
            writeln!(file, "{token}").map_err(io_err(&token_path))?;
            Some((listener, token))
        }
        None => {
            let _ = std::fs::remove_file(paths.token());
            None
        }
    };

    let store_location = config.store.clone().unwrap_or_else(|| paths.store().display().to_string());
    let (calls, rx) = mpsc::unbounded_channel();
    let shutdown = Arc::new(Notify::new());
    let info = Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: now_ms(),
        data_dir: paths.data_dir.display().to_string(),
        store: redact(&store_location),
        socket: socket.display().to_string(),
        http: tcp.as_ref().and_then(|(l, _)| l.local_addr().ok()).map(|a| a.to_string()),
        computers: {
            let mut names: Vec<String> = config
                .config
                .get("computer")
                .and_then(serde_json::Value::as_object)
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default();
            names.sort();
            names
        },
        ready: false,
    };
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (store_open, store_opened) = tokio::sync::watch::channel(false);
    let store = StoreSlot {
        location: store_location.clone().into(),
        opened: store_opened,
        store: Arc::new(tokio::sync::OnceCell::new()),
    };
    let app = App {
        calls,
        info: Arc::new(info),
        shutdown: shutdown.clone(),
        ready: ready.clone(),
        store,
        retention: config.retention,
    };
    let limits = Limits { max_connections: config.max_connections, idle_timeout: config.idle_timeout };
    let api = std::thread::Builder::new()
        .name("drover-api".into())
        .spawn(move || serve(app, unix, tcp, limits))
        .map_err(io_err(&socket))?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| DaemonError::Io { path: "the engine's runtime".into(), source })?;
    let local = Rc::new(LocalSet::new());
    let result = local.block_on(&rt, {
        let local = local.clone();
        engine_main(config, paths.clone(), store_location, local, rx, shutdown, (store_open, ready))
    });
    // The API thread ends with the process: nothing is waited for, as after a crash.
    drop(api);
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(paths.token());
    result
}

async fn engine_main(
    config: DaemonConfig,
    paths: Paths,
    store_location: String,
    local: Rc<LocalSet>,
    mut calls: mpsc::UnboundedReceiver<Call>,
    shutdown: Arc<Notify>,
    (store_open, ready): (tokio::sync::watch::Sender<bool>, Arc<std::sync::atomic::AtomicBool>),
) -> Result<(), DaemonError> {
    let store = Store::open(&store_location).await.map_err(|e| DaemonError::Engine(e.to_string()))?;
    // Created or migrated: the API's thread may open its own handle now.
    let _ = store_open.send(true);
    let kinds = Kinds::from_config(&config.config, &config.config_path, &paths.supervise(), config.jobs, None)
        .await
        .map_err(DaemonError::Engine)?;
    // One daemon serves a data directory (the pid file's lock says so): it
    // is the same engine across restarts, and takes its processes back at once.
    let data_dir = std::fs::canonicalize(&paths.data_dir).unwrap_or_else(|_| paths.data_dir.clone());
    let identity = Identity {
        id: format!("daemon:{}:{}", hostname(), data_dir.display()),
        lease: config.lease,
        ..Identity::fresh("daemon")
    };
    let engine = Rc::new(Engine::with_identity(store, local, kinds, identity));
    engine.forget_ended();
    let recovery = engine.recover().await.map_err(|e| DaemonError::Engine(e.to_string()))?;
    tracing::info!(
        resumed = recovery.resumed.len(),
        failed = recovery.failed.len(),
        cancels = recovery.cancels.len(),
        "recovered the store's unfinished processes"
    );
    for (id, error) in &recovery.failed {
        tracing::warn!(process = %id, %error, "could not resume");
    }
    // Then new work handed to it, and the processes of daemons that died.
    engine.share((config.lease / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)), 1000);
    ready.store(true, std::sync::atomic::Ordering::Release);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Io { path: "SIGTERM".into(), source })?;
    loop {
        tokio::select! {
            call = calls.recv() => match call {
                Some(call) => {
                    tokio::task::spawn_local(answer(engine.clone(), call));
                }
                None => break,
            },
            () = shutdown.notified() => {
                tracing::info!("stopping: asked to by the API");
                // Let the API answer the request that asked.
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            _ = term.recv() => {
                tracing::info!("stopping: SIGTERM");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("stopping: SIGINT");
                break;
            }
            () = engine.lease_lost() => {
                // Another daemon has taken its processes over: it writes
                // nothing more, and stops.
                return Err(DaemonError::Engine("this daemon's lease expired (it was stopped or cut off from the store); its processes are another daemon's now".to_owned()));
            }
        }
    }
    // Stopped on purpose: the other daemons of the store may take over at once.
    if let Err(e) = engine.release().await {
        tracing::warn!(error = %e, "could not end this daemon's lease");
    }
    Ok(())
}

async fn answer(engine: Rc<Engine>, call: Call) {
    match call {
        Call::Show(id, reply) => {
            let _ = reply.send(engine.show(&id).await.map_err(|e| e.to_string()));
        }
        Call::Submit(jobs, reply) => {
            let _ = reply.send(engine.submit_all(jobs).await);
        }
        Call::Control(id, action, reply) => {
            let _ = reply.send(engine.control(&id, action).await);
        }
        Call::Subscribe(reply) => {
            let _ = reply.send(engine.changes());
        }
        Call::Engines(reply) => {
            let result = engine.engines().await.map_err(|e| e.to_string()).map(|all| Engines {
                this: engine.identity().id.clone(),
                engines: all
                    .into_iter()
                    .map(|e| EngineInfo {
                        id: e.id,
                        host: e.host,
                        pid: e.pid,
                        pool: e.pool,
                        started_at: e.started_at,
                        lease_until: e.lease_until,
                        live: e.live,
                        owns: e.owns,
                        places: e.places,
                    })
                    .collect(),
            });
            let _ = reply.send(result);
        }
        Call::Log { id, stream, offset, reply } => {
            let _ = reply.send(engine.log(&id, stream, offset, MAX_LOG_CHUNK).await);
        }
    }
}

/// A store location fit to show: a URL's password replaced by `***`.
fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else { return location.to_owned() };
    let (authority, tail) = rest.split_once('/').map_or((rest, None), |(a, t)| (a, Some(t)));
    // A query may carry `password=`: never shown.
    let tail = tail.map(|t| t.split('?').next().unwrap_or(""));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return location.to_owned() };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    let shown = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
    match tail {
        Some(t) => format!("{scheme}://{shown}@{host}/{t}"),
        None => format!("{scheme}://{shown}@{host}"),
    }
}

fn new_token() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

// --- The API ----------------------------------------------------------------

#[derive(Clone)]
struct App {
    calls: mpsc::UnboundedSender<Call>,
    info: Arc<Info>,
    shutdown: Arc<Notify>,
    /// Set once the store is open and recovery is done.
    ready: Arc<std::sync::atomic::AtomicBool>,
    /// The API thread's own handle on the store.
    store: StoreSlot,
    retention: Option<Retention>,
}

/// The API thread's handle on the store, opened on first use once the
/// engine has opened (created or migrated) it.
#[derive(Clone)]
struct StoreSlot {
    location: Arc<str>,
    opened: tokio::sync::watch::Receiver<bool>,
    store: Arc<tokio::sync::OnceCell<Store>>,
}

impl StoreSlot {
    async fn get(&self) -> Result<Store, ApiError> {
        let mut opened = self.opened.clone();
        let open = opened.wait_for(|open| *open).await.is_ok();
        if !open {
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "the engine could not open the store".into()));
        }
        let location = self.location.clone();
        let store = self.store.get_or_try_init(|| async move { Store::open(&location).await }).await;
        store.cloned().map_err(|e| internal(e.to_string()))
    }
}

/// An error answer.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl App {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Call) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        let gone = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "the engine is stopping".into());
        self.calls.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

fn internal(e: String) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, e)
}

/// What bounds the connections of one listener.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    idle_timeout: Duration,
}

fn serve(
    app: App,
    unix: std::os::unix::net::UnixListener,
    tcp: Option<(std::net::TcpListener, String)>,
    limits: Limits,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("the API's runtime");
    rt.block_on(async move {
        if let Some(retention) = app.retention {
            tokio::spawn(retain(app.clone(), retention));
        }
        let routes = router(app, limits.idle_timeout);
        let unix = tokio::net::UnixListener::from_std(unix).expect("a Unix listener");
        let on_unix = serve_on(unix, routes.clone(), limits);
        match tcp {
            Some((tcp, token)) => {
                let tcp = tokio::net::TcpListener::from_std(tcp).expect("a TCP listener");
                let auth = Arc::new(Auth { token: token.into(), sessions: std::sync::Mutex::default() });
                let routes = routes
                    .layer(middleware::from_fn_with_state(auth, require_token))
                    .layer(middleware::from_fn(loopback_host));
                tokio::join!(on_unix, serve_on(tcp, routes, limits));
            }
            None => on_unix.await,
        }
    });
}

/// Serves `routes` on `listener` for good: at most `limits.max_connections`
/// connections at once (the next waits in the listen queue until one ends),
/// each closed when it sends no whole request header within
/// `limits.idle_timeout` of opening or of its last answer. So connections
/// that send nothing cost the daemon a bounded number of file descriptors,
/// for a bounded time.
async fn serve_on<L>(mut listener: L, routes: Router, limits: Limits)
where
    L: axum::serve::Listener,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    loop {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore is never closed");
        // (`accept` waits out errors such as running out of descriptors.)
        let (io, _) = listener.accept().await;
        let service = hyper_util::service::TowerToHyperService::new(routes.clone());
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "a connection to the control API ended");
            }
            drop(slot);
        });
    }
}

/// Raises the soft limit of open files to the hard one, so that the
/// connection cap, not the descriptors, bounds what clients can hold.
fn raise_open_files_limit() {
    match drover_engine::raise_open_files_limit() {
        Ok(Some((from, to))) => tracing::debug!(from, to, "raised the limit of open files (its jobs keep the old one)"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the limit of open files"),
    }
}

/// The routes. Keep them and `openapi.json` in step (a test checks).
fn router(app: App, idle_timeout: Duration) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/v1/info", get(info))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/engines", get(engines))
        .route("/v1/processes", get(list).post(submit))
        .route("/v1/processes/{id}", get(show))
        .route("/v1/processes/{id}/logs", get(logs))
        .route("/v1/processes/{id}/{action}", post(control_one))
        .route("/v1/control", post(control))
        .route("/v1/prune", post(prune))
        .route("/v1/events", get(events))
        .route("/v1/shutdown", post(shutdown))
        .with_state(app)
        .layer(middleware::from_fn_with_state(idle_timeout, read_body_in_time))
        .layer(middleware::from_fn(no_framing))
}

/// The most a request's body may hold (axum's own limit for JSON bodies).
const MAX_BODY: usize = 2 << 20;

/// A request's body is read whole within the idle timeout (a client that
/// sends a header and then a trickle, or nothing, is answered 408), and at
/// most [`MAX_BODY`] of it (413).
async fn read_body_in_time(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Ok(Err(e)) => {
            ApiError(StatusCode::PAYLOAD_TOO_LARGE, format!("a request body of at most {MAX_BODY} bytes: {e}"))
                .into_response()
        }
        Err(_) => {
            let mut answer =
                ApiError(StatusCode::REQUEST_TIMEOUT, format!("the request's body did not come within {timeout:?}"))
                    .into_response();
            answer.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            answer
        }
    }
}

/// Every answer says it must not be framed (no clickjacking of the page).
async fn no_framing(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static("frame-ancestors 'none'"));
    response
}

/// On the TCP listener: a request must name a loopback host, so that a page
/// of another site whose name resolves to 127.0.0.1 (DNS rebinding) reaches
/// nothing.
async fn loopback_host(headers: HeaderMap, request: Request, next: Next) -> Response {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_loopback_host(host) {
        return ApiError(StatusCode::FORBIDDEN, format!("host `{host}` is not this daemon's loopback address"))
            .into_response();
    }
    next.run(request).await
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or("", |(ip, _)| ip),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The web page's session cookie: a random id the daemon keeps in memory,
/// never the token (cookies are not port-scoped: every other `localhost`
/// port's server receives them).
const COOKIE: &str = "drover_session";
/// The header the web page sends with every change.
const CSRF_HEADER: &str = "x-drover-page";
/// The most web page sessions kept at once; opening one more forgets the oldest.
const MAX_SESSIONS: usize = 64;

/// What the TCP listener asks for: the token, or a session the token opened.
struct Auth {
    token: Arc<str>,
    /// Session ids, oldest first.
    sessions: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Auth {
    fn is_session(&self, given: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.iter().fold(false, |found, id| found | same_secret(id, given))
    }

    fn open_session(&self) -> std::io::Result<String> {
        let id = new_token()?;
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if sessions.len() >= MAX_SESSIONS {
            sessions.pop_front();
        }
        sessions.push_back(id.clone());
        Ok(id)
    }
}

/// `secret == given`, in a time that does not depend on where they differ.
fn same_secret(secret: &str, given: &str) -> bool {
    secret.len() == given.len() && secret.bytes().zip(given.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// On the TCP listener: the token, as `Authorization: Bearer`, or a session
/// cookie, which `/?token=` on the page opens (and drops the token from the
/// address).
async fn require_token(State(auth): State<Arc<Auth>>, headers: HeaderMap, request: Request, next: Next) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| same_secret(&auth.token, given));
    if bearer {
        return next.run(request).await;
    }
    let session = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|c| c.strip_prefix('=')))
        .any(|given| auth.is_session(given));
    if session {
        // A cookie comes with any request the browser makes, also one a page
        // of another local port sends: changes need a header no form can set
        // (and that another origin cannot send without a CORS preflight).
        let safe = matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
        if safe || headers.contains_key(CSRF_HEADER) {
            return next.run(request).await;
        }
        return ApiError(
            StatusCode::FORBIDDEN,
            format!("a change through the cookie needs the header `{CSRF_HEADER}`"),
        )
        .into_response();
    }
    let query_token = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .is_some_and(|given| same_secret(&auth.token, given));
    if query_token && request.uri().path() == "/" {
        return match auth.open_session() {
            Ok(id) => {
                let cookie = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/");
                ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
            }
            Err(e) => internal(format!("cannot make a session id: {e}")).into_response(),
        };
    }
    ApiError(
        StatusCode::UNAUTHORIZED,
        "this address needs the daemon's token (in daemon.token of its data directory): send `Authorization: Bearer TOKEN`, or open /?token=TOKEN".into(),
    )
    .into_response()
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn engines(State(app): State<App>) -> Result<axum::Json<Engines>, ApiError> {
    Ok(axum::Json(app.call(Call::Engines).await?.map_err(internal)?))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_document())
}

/// The OpenAPI document as served: `openapi.json`, with every list of kinds
/// (marked `x-drover-kinds`) taken from the engine's one list of kinds.
pub fn openapi_document() -> String {
    fn fill(value: &mut serde_json::Value, kinds: &[serde_json::Value]) {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("x-drover-kinds") == Some(&serde_json::Value::Bool(true)) {
                    map.insert("enum".to_owned(), serde_json::Value::Array(kinds.to_vec()));
                }
                map.values_mut().for_each(|v| fill(v, kinds));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| fill(v, kinds)),
            _ => {}
        }
    }
    let kinds: Vec<serde_json::Value> = drover_engine::kinds().iter().map(|k| k.name().into()).collect();
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON (a test checks)");
    fill(&mut doc, &kinds);
    doc.to_string()
}

async fn info(State(app): State<App>) -> axum::Json<Info> {
    let mut info = (*app.info).clone();
    info.ready = app.ready.load(std::sync::atomic::Ordering::Acquire);
    axum::Json(info)
}

/// `GET /v1/processes`: a filter, and the page's size and start.
#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(flatten)]
    filter: Filter,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A page of the list, from the API thread's own store handle: filtered and
/// paged in SQL, never through the engine's thread. The first page (no
/// cursor) carries the counts per status.
async fn list(
    State(app): State<App>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<ProcessList>, ApiError> {
    let bad = |e: drover_store::StoreError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    let Query(query) = query.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let limit = match query.limit.as_deref() {
        None => drover_store::PageLimit::default(),
        Some(text) => drover_store::PageLimit::new(text.parse().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit `{text}` is not a number of processes from 1 to {}", drover_store::MAX_PAGE),
            )
        })?)
        .map_err(bad)?,
    };
    let cursor = query.cursor.as_deref().map(drover_store::Cursor::parse).transpose().map_err(bad)?;
    let store = app.store.get().await?;
    let filter = &query.filter;
    let sql_filter = drover_store::ListFilter {
        state: filter.state.clone(),
        kind: filter.kind.clone(),
        place: filter.computer.clone(),
        parent: filter.parent.clone(),
    };
    let page = store.list_page(&sql_filter, cursor.as_ref(), limit).await.map_err(|e| internal(e.to_string()))?;
    let counts: BTreeMap<String, usize> = if cursor.is_none() {
        let counts = store.status_counts().await.map_err(|e| internal(e.to_string()))?;
        counts.into_iter().map(|(status, n)| (status, usize::try_from(n).unwrap_or(0))).collect()
    } else {
        BTreeMap::new()
    };
    let processes = page.processes.iter().map(ProcessInfo::from_stored).collect();
    Ok(axum::Json(ProcessList { processes, counts, next_cursor: page.next.map(|c| c.to_string()) }))
}

/// `POST /v1/prune`: on the API thread, from its own store handle.
async fn prune(
    State(app): State<App>,
    body: Result<axum::Json<PruneOptions>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::Json<PruneReport>, ApiError> {
    let axum::Json(options) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    drover_engine::check_age(Duration::from_secs(options.older_than_secs))
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("older_than_secs: {e}")))?;
    let store = app.store.get().await?;
    let data_dir = PathBuf::from(&app.info.data_dir);
    Ok(axum::Json(drover_engine::prune(&store, &data_dir, &options).await.map_err(internal)?))
}

/// The daemon's retention: a prune every tenth of its age (a second to an
/// hour), on the API thread.
async fn retain(app: App, retention: Retention) {
    let every = (retention.older_than / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let options =
        PruneOptions { older_than_secs: retention.older_than.as_secs(), outputs: retention.outputs, dry_run: false };
    let data_dir = PathBuf::from(&app.info.data_dir);
    loop {
        tokio::time::sleep(every).await;
        let Ok(store) = app.store.get().await else { return };
        match drover_engine::prune(&store, &data_dir, &options).await {
            Ok(report) if report.processes > 0 => {
                tracing::info!(processes = report.processes, files = report.files, "retention: pruned");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention: could not prune"),
        }
    }
}

async fn show(State(app): State<App>, Path(id): Path<String>) -> Result<axum::Json<ProcessDetail>, ApiError> {
    match app.call(|r| Call::Show(id.clone(), r)).await?.map_err(internal)? {
        Some(detail) => Ok(axum::Json(detail)),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no process `{id}`"))),
    }
}

async fn submit(
    State(app): State<App>,
    body: Result<axum::Json<Submit>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, axum::Json<Submitted>), ApiError> {
    let axum::Json(submit) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    if submit.jobs.is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "no jobs to submit".into()));
    }
    let ids: Vec<String> = submit.jobs.iter().map(|j| j.id.clone()).collect();
    let jobs = submit.jobs.into_iter().map(|j| (j.id, j.job)).collect();
    match app.call(|r| Call::Submit(jobs, r)).await? {
        Ok(()) => Ok((StatusCode::CREATED, axum::Json(Submitted { ids }))),
        Err(e @ EngineError::InvalidId { .. }) => {
            Err(ApiError(StatusCode::BAD_REQUEST, format!("{e}; nothing was submitted")))
        }
        Err(e @ (EngineError::Duplicate(_) | EngineError::Refused { .. })) => {
            Err(ApiError(StatusCode::CONFLICT, format!("{e}; nothing was submitted")))
        }
        Err(e) => Err(internal(e.to_string())),
    }
}

fn control_status(e: &ControlError) -> StatusCode {
    match e {
        ControlError::Unknown(_) => StatusCode::NOT_FOUND,
        ControlError::Ended { .. } | ControlError::NotLoaded { .. } | ControlError::Runtime { .. } => {
            StatusCode::CONFLICT
        }
        ControlError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn parse_action(action: &str) -> Result<Action, ApiError> {
    serde_json::from_value(serde_json::Value::String(action.to_owned()))
        .map_err(|_| ApiError(StatusCode::NOT_FOUND, format!("unknown action `{action}` (known: pause, resume, kill)")))
}

async fn control_one(
    State(app): State<App>,
    Path((id, action)): Path<(String, String)>,
) -> Result<axum::Json<ControlResult>, ApiError> {
    let action = parse_action(&action)?;
    match app.call(|r| Call::Control(id.clone(), action, r)).await? {
        Ok(()) => Ok(axum::Json(ControlResult { id, ok: true, error: None })),
        Err(e) => Err(ApiError(control_status(&e), e.to_string())),
    }
}

async fn control(
    State(app): State<App>,
    body: Result<axum::Json<Control>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::Json<ControlResults>, ApiError> {
    let axum::Json(control) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    // All at once: a kill waits for its process to end, and a hundred of them
    // should not wait one after the other.
    let waits = control.ids.into_iter().map(|id| {
        let app = app.clone();
        async move {
            match app.call(|r| Call::Control(id.clone(), control.action, r)).await {
                Ok(Ok(())) => ControlResult { id, ok: true, error: None },
                Ok(Err(e)) => ControlResult { id, ok: false, error: Some(e.to_string()) },
                Err(ApiError(_, e)) => ControlResult { id, ok: false, error: Some(e) },
            }
        }
    });
    Ok(axum::Json(ControlResults { results: futures_util::future::join_all(waits).await }))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    #[serde(default)]
    stream: Stream,
    #[serde(default)]
    offset: u64,
}

async fn logs(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<axum::Json<LogChunk>, ApiError> {
    let detail = app
        .call(|r| Call::Show(id.clone(), r))
        .await?
        .map_err(internal)?
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no process `{id}`")))?;
    let terminal = detail.info.terminal;
    let stream = q.stream;
    let read =
        app.call(|reply| Call::Log { id: id.clone(), stream, offset: q.offset, reply }).await?.map_err(
            |e| match e {
                LogError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
                LogError::Remote(m) => ApiError(StatusCode::BAD_GATEWAY, m),
                LogError::Local(m) => internal(m),
            },
        )?;
    let (data, offset) = utf8_prefix(read.bytes, q.offset);
    Ok(axum::Json(LogChunk { data, offset, terminal, source: read.source }))
}

/// The text of `data`, without a UTF-8 sequence cut off at its end (it comes
/// whole with the next piece), and the offset after it.
fn utf8_prefix(mut data: Vec<u8>, offset: u64) -> (String, u64) {
    if let Err(e) = std::str::from_utf8(&data)
        && e.error_len().is_none()
    {
        data.truncate(e.valid_up_to());
    }
    let next = offset + data.len() as u64;
    (String::from_utf8_lossy(&data).into_owned(), next)
}

async fn events(
    State(app): State<App>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let rx = app.call(Call::Subscribe).await?;
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(info) => Event::default().event("process").json_data(info).unwrap_or_default(),
            Err(broadcast::error::RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

async fn shutdown(State(app): State<App>) -> (StatusCode, axum::Json<serde_json::Value>) {
    app.shutdown.notify_one();
    (StatusCode::ACCEPTED, axum::Json(serde_json::json!({ "stopping": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_pass() {
        for good in ["127.0.0.1:7878", "localhost", "LOCALHOST:1", "[::1]:7878", "127.0.0.2"] {
            assert!(is_loopback_host(good), "{good}");
        }
        for bad in ["evil.example", "evil.example:7878", "10.0.0.1:7878", "", "localhost.evil.example", "[::2]:1"] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact("postgres://drover:s3cret@127.0.0.1:5433/drover"),
            "postgres://drover:***@127.0.0.1:5433/drover"
        );
        assert_eq!(redact("postgres://drover@host/db"), "postgres://drover@host/db");
        assert_eq!(redact("postgres://u:p@ss@host/db?password=x"), "postgres://u:***@host/db");
        assert_eq!(redact("/data/drover.db"), "/data/drover.db");
    }

    #[test]
    fn a_cut_utf8_sequence_waits_for_the_next_piece() {
        let text = "ü".as_bytes().to_vec(); // two bytes
        assert_eq!(utf8_prefix(vec![b'a', text[0]], 10), ("a".to_owned(), 11));
        assert_eq!(utf8_prefix(text.clone(), 11), ("ü".to_owned(), 13));
        assert_eq!(utf8_prefix(vec![0xff, b'b'], 0), ("\u{fffd}b".to_owned(), 2));
    }
}
