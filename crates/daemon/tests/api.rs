//! The control API against a real daemon (in this process, on its own
//! threads), over its real Unix socket and loopback TCP listener.

use std::path::Path;
use std::time::{Duration, Instant};

use drover_cloud::{CloudJob, CloudKind};
use drover_daemon::api::{
    Control, ControlResults, Info, LogChunk, NewJob, ProcessDetail, ProcessList, PruneReport, Submit, Submitted,
};
use drover_daemon::{Client, ClientError, DaemonConfig, DaemonError, Method, OPENAPI, Paths, StatusCode, Target};
use drover_engine::{Action, Job, ProcessInfo};
use drover_scheduler::{SchedulerJob, SchedulerKind};
use drover_shell::{Output, ShellJob, ShellKind, ShellSpec};

struct Daemon {
    unix: Client,
    tcp: Client,
    addr: String,
    token: String,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let rt = rt();
            let _ = rt.block_on(self.unix.post::<_, serde_json::Value>("/v1/shutdown", &serde_json::json!({})));
            let _ = thread.join();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn config(dir: &Path) -> DaemonConfig {
    DaemonConfig {
        data_dir: dir.to_path_buf(),
        store: None,
        // No computers, and a cluster that is not there: cloud jobs are
        // refused (the cloud tests have one).
        config: serde_json::json!({ "cloud": { "kubeconfig": dir.join("no-kubeconfig") } })
            .as_object()
            .cloned()
            .unwrap(),
        config_path: dir.join("computers.toml"),
        jobs: Some(4),
        lease: Duration::from_secs(10),
        http: Some("127.0.0.1:0".parse().unwrap()),
        allow_non_loopback: false,
        max_connections: drover_daemon::DEFAULT_MAX_CONNECTIONS,
        idle_timeout: drover_daemon::DEFAULT_IDLE_TIMEOUT,
        retention: None,
    }
}

fn start(dir: &Path) -> Daemon {
    start_with(config(dir))
}

fn start_with(config: DaemonConfig) -> Daemon {
    let dir = config.data_dir.clone();
    let dir = dir.as_path();
    let thread = std::thread::spawn(move || drover_daemon::run(config));
    let unix = Client::new(Target::Unix(Paths::new(dir).socket()));
    let rt = rt();
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        if let Ok(info) = rt.block_on(unix.get::<Info>("/v1/info")) {
            break info;
        }
        assert!(!thread.is_finished(), "the daemon stopped: {:?}", thread.join());
        assert!(Instant::now() < deadline, "the daemon does not answer");
        std::thread::sleep(Duration::from_millis(20));
    };
    let addr = info.http.expect("an http address");
    let token = std::fs::read_to_string(Paths::new(dir).token()).unwrap().trim().to_owned();
    let tcp = Client::new(Target::Tcp { addr: addr.clone(), token: Some(token.clone()) });
    Daemon { unix, tcp, addr, token, thread: Some(thread) }
}

fn shell(dir: &Path, name: &str, script: &str) -> NewJob {
    let mut spec = ShellSpec::program("/bin/sh", ["-c", script]);
    spec.stdout = Output::File(dir.join(format!("{name}.out")));
    spec.stderr = Output::File(dir.join(format!("{name}.err")));
    NewJob { id: name.to_owned(), job: Job::new::<ShellKind>(&ShellJob { spec }) }
}

async fn wait_for(client: &Client, id: &str, done: impl Fn(&ProcessInfo) -> bool) -> ProcessInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let detail: ProcessDetail = client.get(&format!("/v1/processes/{id}")).await.unwrap();
        if done(&detail.info) {
            return detail.info;
        }
        assert!(Instant::now() < deadline, "{id} stays {:?}", detail.info);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every `enum` marked `x-drover-kinds` in an OpenAPI document.
fn kind_lists(value: &serde_json::Value, out: &mut Vec<Vec<serde_json::Value>>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("x-drover-kinds") == Some(&serde_json::Value::Bool(true)) {
                out.push(map["enum"].as_array().cloned().unwrap_or_default());
            }
            map.values().for_each(|v| kind_lists(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| kind_lists(v, out)),
        _ => {}
    }
}

/// The routes and methods `router()` serves, read from its source: each
/// `.route("PATH", get(..).post(..))` line.
fn served_routes() -> Vec<(String, String)> {
    let source = include_str!("../src/server.rs");
    let body = &source[source.find("fn router(").expect("router()")..];
    let body = &body[..body.find("\n}").unwrap()];
    let mut routes = Vec::new();
    for line in body.lines().filter_map(|l| l.trim().strip_prefix(".route(\"")) {
        let (path, rest) = line.split_once('"').unwrap();
        for method in ["get", "post"] {
            if rest.contains(&format!("{method}(")) {
                routes.push((path.to_owned(), method.to_owned()));
            }
        }
    }
    routes.sort();
    routes
}

#[test]
fn the_served_routes_are_the_documented_ones() {
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let mut documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, methods)| methods.as_object().unwrap().keys().map(move |m| (path.clone(), m.clone())))
        .collect();
    documented.sort();
    let served = served_routes();
    assert!(served.len() >= 12, "{served:?}");
    assert_eq!(served, documented, "router() and openapi.json list different routes");
}

#[test]
fn every_route_of_the_openapi_document_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let submitted: Submitted =
            d.unix.post("/v1/processes", &Submit { jobs: vec![shell(dir.path(), "one", "echo one")] }).await.unwrap();
        assert_eq!(submitted.ids, ["one"]);
        wait_for(&d.unix, "one", |p| p.terminal).await;
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let served: serde_json::Value =
            serde_json::from_slice(&d.unix.raw(Method::GET, "/v1/openapi.json", None).await.unwrap().1).unwrap();
        // The document as served is the file, its kind lists filled from the
        // engine's one list of kinds; the file must say the same kinds.
        assert_eq!(served, serde_json::from_str::<serde_json::Value>(&drover_daemon::openapi_document()).unwrap());
        let kinds: Vec<serde_json::Value> = drover_engine::kinds().iter().map(|k| k.name().into()).collect();
        let mut lists = Vec::new();
        kind_lists(&doc, &mut lists);
        assert!(lists.len() >= 2, "the kind lists are marked with x-drover-kinds");
        for list in &lists {
            assert_eq!(list, &kinds, "openapi.json names other kinds than the engine's list");
        }
        let mut served_lists = Vec::new();
        kind_lists(&served, &mut served_lists);
        assert_eq!(served_lists.len(), lists.len());
        assert!(served_lists.iter().all(|l| l == &kinds));
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 10, "{paths:?}");
        let mut checked = 0;
        for (path, methods) in paths {
            if path == "/v1/shutdown" || path == "/v1/events" {
                continue; // below, and a stream that does not end
            }
            let path = path.replace("{id}", "one").replace("{action}", "kill");
            for method in methods.as_object().unwrap().keys() {
                let (method, body) = match method.as_str() {
                    "get" => (Method::GET, None),
                    "post" => (Method::POST, Some(br#"{"jobs": [], "action": "kill", "ids": []}"#.to_vec())),
                    other => panic!("unexpected method {other}"),
                };
                let (status, _) = d.unix.raw(method.clone(), &path, body).await.unwrap();
                assert!(
                    status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: {status}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 9);
        let (status, _) = d.unix.raw(Method::GET, "/v1/nothing", None).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    });
}

#[test]
fn a_submission_is_all_or_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let marker = dir.path().join("ran");
        let touch = format!("touch {}", marker.display());
        d.unix
            .post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![shell(dir.path(), "a", "true")] })
            .await
            .unwrap();
        // A duplicate id: neither job is recorded, nothing runs.
        let jobs = vec![shell(dir.path(), "b", &touch), shell(dir.path(), "a", "true")];
        let err = d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs }).await.unwrap_err();
        let ClientError::Api { status, message } = err else { panic!("{err:?}") };
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(message.contains("`a` already exists") && message.contains("nothing was submitted"), "{message}");
        // An unknown computer is named.
        let mut job = shell(dir.path(), "c", "true");
        job.job = Job::new::<SchedulerKind>(&SchedulerJob {
            computer: "nowhere".into(),
            spec: drover_scheduler::JobSpec {
                id: "c".into(),
                command: "true".into(),
                local_dir: dir.path().join("c"),
                ..Default::default()
            },
        });
        let err = d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![job] }).await.unwrap_err();
        assert!(err.to_string().contains("computer `nowhere` is not defined"), "{err}");
        // A kind this drover does not know is named, with those it runs.
        let mut job = shell(dir.path(), "t", "true");
        job.job = Job::from_parts("teleport", serde_json::Map::new());
        let err = d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![job] }).await.unwrap_err();
        assert!(err.to_string().contains("does not run teleport jobs (it runs: "), "{err}");
        // A cloud job, and no cluster: refused, saying why.
        let cloud = NewJob {
            id: "k".into(),
            job: Job::new::<CloudKind>(&CloudJob {
                spec: drover_cloud::CloudSpec {
                    id: "k".into(),
                    image: "busybox".into(),
                    local_dir: dir.path().join("k"),
                    ..Default::default()
                },
            }),
        };
        let err = d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![cloud] }).await.unwrap_err();
        assert!(err.to_string().contains("cloud job `k`: no Kubernetes cluster"), "{err}");
        assert!(err.to_string().contains("no-kubeconfig"), "{err}");
        // An id that would name a path outside the daemon's directories.
        let mut bad = shell(dir.path(), "x", "true");
        bad.id = "../escape".into();
        let err = d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![bad] }).await.unwrap_err();
        let ClientError::Api { status, message } = err else { panic!("{err:?}") };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("process id `../escape`"), "{message}");
        // Not JSON of a submission.
        let (status, body) = d.unix.raw(Method::POST, "/v1/processes", Some(b"{\"jobs\": 3}".to_vec())).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).contains("jobs"), "{body:?}");
        let list: ProcessList = d.unix.get("/v1/processes").await.unwrap();
        let ids: Vec<&str> = list.processes.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!marker.exists(), "a job of a refused submission ran");
    });
}

#[test]
fn state_changes_stream_as_events_and_logs_are_read_by_offset() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let mut events = d.tcp.events("/v1/events").await.unwrap();
        let job = shell(dir.path(), "talk", "printf 'hello\\n'; printf 'wörld\\n' >&2; sleep 0.2; printf 'bye\\n'");
        d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![job] }).await.unwrap();
        let mut states = Vec::new();
        let finished = loop {
            let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(event.event, "process");
            let p: ProcessInfo = serde_json::from_str(&event.data).unwrap();
            assert_eq!(p.id, "talk");
            states.push(p.state.clone());
            if p.terminal {
                break p;
            }
        };
        assert_eq!((finished.state.as_str(), finished.exit_code), ("finished", Some(0)));
        assert_eq!(states.first().map(String::as_str), Some("queued"), "{states:?}");
        assert!(states.contains(&"running".to_owned()), "{states:?}");

        let all: LogChunk = d.unix.get("/v1/processes/talk/logs").await.unwrap();
        assert_eq!((all.data.as_str(), all.offset, all.terminal), ("hello\nbye\n", 10, true));
        let rest: LogChunk = d.unix.get("/v1/processes/talk/logs?offset=6").await.unwrap();
        assert_eq!(rest.data, "bye\n");
        let end: LogChunk = d.unix.get("/v1/processes/talk/logs?offset=10").await.unwrap();
        assert_eq!((end.data.as_str(), end.offset), ("", 10));
        let err: LogChunk = d.unix.get("/v1/processes/talk/logs?stream=stderr").await.unwrap();
        assert_eq!(err.data, "wörld\n");
        let detail: ProcessDetail = d.unix.get("/v1/processes/talk").await.unwrap();
        let history: Vec<&str> = detail.history.iter().map(|t| t.state.as_str()).collect();
        assert_eq!(history.first(), Some(&"queued"));
        assert_eq!(history.last(), Some(&"finished"));
        let missing = d.unix.get::<LogChunk>("/v1/processes/nope/logs").await.unwrap_err();
        assert!(matches!(missing, ClientError::Api { status: StatusCode::NOT_FOUND, .. }), "{missing:?}");
    });
}

#[test]
fn pause_resume_and_kill_reach_the_processes_by_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let jobs = vec![shell(dir.path(), "s1", "sleep 300"), shell(dir.path(), "s2", "sleep 300")];
        d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs }).await.unwrap();
        for id in ["s1", "s2"] {
            wait_for(&d.unix, id, |p| p.state == "running").await;
        }
        let paused: ControlResults = d
            .unix
            .post("/v1/control", &Control { action: Action::Pause, ids: vec!["s1".into(), "nope".into()] })
            .await
            .unwrap();
        assert!(paused.results[0].ok, "{paused:?}");
        assert_eq!(paused.results[1].error.as_deref(), Some("no process `nope`"));
        let list: ProcessList = d.unix.get("/v1/processes?state=paused").await.unwrap();
        assert_eq!(list.processes.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["s1"]);
        assert_eq!(list.counts.get("paused"), Some(&1));
        assert_eq!(list.counts.get("running"), Some(&1));
        // One action through the per-process route, over TCP.
        let (status, _) = d.tcp.raw(Method::POST, "/v1/processes/s1/resume", None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        wait_for(&d.unix, "s1", |p| !p.paused && p.state == "running").await;
        let killed: ControlResults = d
            .unix
            .post("/v1/control", &Control { action: Action::Kill, ids: vec!["s1".into(), "s2".into()] })
            .await
            .unwrap();
        assert!(killed.results.iter().all(|r| r.ok), "{killed:?}");
        for id in ["s1", "s2"] {
            let p: ProcessDetail = d.unix.get(&format!("/v1/processes/{id}")).await.unwrap();
            assert_eq!((p.info.state.as_str(), p.info.terminal), ("killed", true));
        }
        let again = d.unix.post::<_, serde_json::Value>("/v1/processes/s1/kill", &()).await.unwrap_err();
        let ClientError::Api { status, message } = again else { panic!("{again:?}") };
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(message.contains("already ended (killed)"), "{message}");
        let (status, _) = d.unix.raw(Method::POST, "/v1/processes/s1/explode", None).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    });
}

#[test]
fn the_tcp_listener_asks_for_the_token_and_one_daemon_serves_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let bare = Client::new(Target::Tcp { addr: d.addr.clone(), token: None });
        let wrong = Client::new(Target::Tcp { addr: d.addr.clone(), token: Some("0".repeat(d.token.len())) });
        for client in [&bare, &wrong] {
            let err = client.get::<Info>("/v1/info").await.unwrap_err();
            let ClientError::Api { status, message } = err else { panic!("{err:?}") };
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert!(message.contains("daemon.token"), "{message}");
            let (status, _) = client.raw(Method::GET, "/", None).await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(d.tcp.get::<Info>("/v1/info").await.unwrap().pid, std::process::id());
        let (status, page) = d.tcp.raw(Method::GET, "/", None).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(String::from_utf8_lossy(&page).contains("<title>drover</title>"));
        let raw = |request: String| {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(&d.addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        };
        // The token once in the page's address: a session cookie that is not
        // the token (every other localhost port would receive it), and the
        // address without it.
        let answer = raw(format!("GET /?token={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", d.token, d.addr));
        assert!(answer.starts_with("HTTP/1.1 303"), "{answer}");
        let set_cookie = answer
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
            .unwrap_or_else(|| panic!("no cookie: {answer}"));
        assert!(!set_cookie.contains(&d.token), "the cookie carries the token: {set_cookie}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        let session = set_cookie.split(';').next().unwrap().to_owned();
        let (name, id) = session.split_once('=').unwrap();
        assert!(id.len() >= 32, "{session}");
        // The session reads; the token itself as a cookie does not.
        let cookie_get = |cookie: &str| {
            format!("GET /v1/info HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n", d.addr)
        };
        assert!(raw(cookie_get(&session)).starts_with("HTTP/1.1 200"));
        let answer = raw(cookie_get(&format!("{name}={}", d.token)));
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        let answer = raw(cookie_get(&format!("drover_token={}", d.token)));
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        // With the cookie, a change also needs the page's header (no form
        // of another local site can send it).
        let cookie_post = |extra: &str| {
            format!(
                "POST /v1/processes/nope/kill HTTP/1.1\r\nHost: {}\r\nCookie: {session}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n",
                d.addr
            )
        };
        // (Blocking calls are fine here: the daemon runs on threads of its own.)
        let answer = raw(cookie_post(""));
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        let answer = raw(cookie_post("x-drover-page: 1\r\n"));
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        // A request that names another host (a rebound DNS name) reaches
        // nothing, token or not; every answer refuses to be framed.
        let get = |host: &str| {
            format!(
                "GET /v1/info HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
                d.token
            )
        };
        let answer = raw(get("evil.example:7878"));
        assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("is not this daemon"), "{answer}");
        let answer = raw(get(&d.addr)).to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains("x-frame-options: deny"), "{answer}");
        assert!(answer.contains("content-security-policy: frame-ancestors 'none'"), "{answer}");
        // The Unix socket is private to its user, and needs no token.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(Paths::new(dir.path()).socket()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token_mode = std::fs::metadata(Paths::new(dir.path()).token()).unwrap().permissions().mode();
        assert_eq!(token_mode & 0o777, 0o600);
    });
    // A second daemon for the same data directory refuses to start.
    match drover_daemon::run(config(dir.path())) {
        Err(DaemonError::AlreadyRunning { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("{other:?}"),
    }
    assert_eq!(Paths::new(dir.path()).running_pid(), Some(std::process::id()));
    // Not loopback: refused unless allowed.
    let other = tempfile::tempdir().unwrap();
    let mut open = config(other.path());
    open.http = Some("0.0.0.0:0".parse().unwrap());
    assert!(matches!(drover_daemon::run(open), Err(DaemonError::NotLoopback(_))));
    // Connection settings out of their ranges.
    let mut none = config(other.path());
    none.max_connections = 0;
    let mut too_many = config(other.path());
    too_many.max_connections = drover_daemon::MAX_CONNECTIONS_LIMIT + 1;
    let mut too_long = config(other.path());
    too_long.idle_timeout = Duration::from_secs(3601);
    for bad in [none, too_many, too_long] {
        let err = drover_daemon::run(bad).unwrap_err();
        assert!(matches!(err, DaemonError::BadConfig(_)), "{err:?}");
    }
}

/// The connections to `port` this process has accepted (queued ones have no
/// socket yet: inode 0 in `/proc/net/tcp`).
fn accepted_connections(port: u16) -> usize {
    let local = format!(":{port:04X}");
    std::fs::read_to_string("/proc/self/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields[1].ends_with(&local) && fields[3] == "01" && fields[9] != "0"
        })
        .count()
}

/// Reads until the peer closes; how long that took, or `None` if it did not
/// within `limit`.
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Option<(Duration, String)> {
    use std::io::Read;
    let began = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(limit.saturating_sub(began.elapsed()).max(Duration::from_millis(1)))).unwrap();
        let read = stream.read(&mut buf);
        if began.elapsed() >= limit {
            return None;
        }
        match read {
            Ok(0) | Err(_) => return Some((began.elapsed(), String::from_utf8_lossy(&answer).into_owned())),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn idle_connections_are_capped_and_closed_while_the_daemon_answers() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use std::io::Write;
    // A soft limit of open files below the hard one is raised at start.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(hard > 512, "a hard limit of {hard} open files leaves nothing to test");
    setrlimit(Resource::RLIMIT_NOFILE, 512, hard).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_connections = 16;
    config.idle_timeout = Duration::from_secs(1);
    let d = start_with(config);
    assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, hard);
    let port: u16 = d.addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let rt = rt();

    // An event stream lives on past the idle timeout.
    let mut events = rt.block_on(d.tcp.events("/v1/events")).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Another local user opens 64 connections and sends nothing.
    let mut idle: Vec<std::net::TcpStream> = (0..64).map(|_| std::net::TcpStream::connect(&d.addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let accepted = accepted_connections(port);
    assert!(accepted <= 16, "{accepted} connections accepted past the cap of 16");
    rt.block_on(async {
        // The owner's socket has slots of its own, and answers at once.
        let began = Instant::now();
        d.unix.get::<Info>("/v1/info").await.unwrap();
        assert!(began.elapsed() < Duration::from_secs(1), "{:?}", began.elapsed());
        let job = shell(dir.path(), "ping", "true");
        d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![job] }).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(20), events.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(event.event, "process");
        assert!(event.data.contains("\"ping\""), "{}", event.data);
    });
    // Each idle connection is closed once its turn's timeout ran out (four
    // rounds of 16), and then the port answers again.
    for stream in &mut idle {
        let closed = closed_within(stream, Duration::from_secs(15));
        assert!(closed.is_some(), "an idle connection is still open after 15 s");
    }
    let began = Instant::now();
    rt.block_on(d.tcp.get::<Info>("/v1/info")).unwrap();
    assert!(began.elapsed() < Duration::from_secs(1), "{:?}", began.elapsed());
    // Half a request header, or a header whose body never comes: closed too.
    let mut partial = std::net::TcpStream::connect(&d.addr).unwrap();
    partial.write_all(format!("GET /v1/info HTTP/1.1\r\nHost: {}\r\n", d.addr).as_bytes()).unwrap();
    let (took, _) = closed_within(&mut partial, Duration::from_secs(5)).expect("a half header is closed");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the timeout");
    let mut no_body = std::net::TcpStream::connect(&d.addr).unwrap();
    let header = format!(
        "POST /v1/processes HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: 10\r\n\r\n{{",
        d.addr, d.token
    );
    no_body.write_all(header.as_bytes()).unwrap();
    let (_, answer) = closed_within(&mut no_body, Duration::from_secs(5)).expect("a missing body is closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The Unix socket closes idle connections too.
    use std::io::Read;
    let mut on_unix = std::os::unix::net::UnixStream::connect(Paths::new(dir.path()).socket()).unwrap();
    on_unix.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let began = Instant::now();
    assert_eq!(on_unix.read(&mut [0u8; 16]).unwrap(), 0, "an idle connection to the socket is closed");
    assert!(began.elapsed() < Duration::from_secs(4), "{:?}", began.elapsed());
}

/// Waits until every process in `ids` has ended.
async fn wait_ended(client: &Client, ids: &[String]) {
    for id in ids {
        wait_for(client, id, |p| p.terminal).await;
    }
}

#[test]
fn the_list_comes_in_pages_filtered_by_the_store_and_bad_pages_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let jobs: Vec<NewJob> = (0..25).map(|i| shell(dir.path(), &format!("j{i:02}"), "exit 0")).collect();
        let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
        d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs }).await.unwrap();
        wait_ended(&d.unix, &ids).await;
        d.unix
            .post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![shell(dir.path(), "nap", "sleep 30")] })
            .await
            .unwrap();
        wait_for(&d.unix, "nap", |p| p.state == "running").await;

        // Page after page of 7: every process once, counts on the first page only.
        let mut seen = Vec::new();
        let first: ProcessList = d.unix.get("/v1/processes?limit=7").await.unwrap();
        assert_eq!(first.counts.get("finished"), Some(&25), "{:?}", first.counts);
        assert_eq!(first.counts.get("running"), Some(&1), "{:?}", first.counts);
        let mut page = first;
        loop {
            assert!(page.processes.len() <= 7);
            seen.extend(page.processes.iter().map(|p| p.id.clone()));
            let Some(cursor) = page.next_cursor.clone() else { break };
            page = d.unix.get(&format!("/v1/processes?limit=7&cursor={cursor}")).await.unwrap();
            assert!(page.counts.is_empty());
        }
        let mut expected = ids.clone();
        expected.push("nap".into());
        assert_eq!(seen, expected, "oldest first, each once");
        // The client follows the pages, or stops at a limit.
        let all = d.tcp.list(&Default::default(), None).await.unwrap();
        assert_eq!(all.processes.len(), 26);
        assert!(all.next_cursor.is_none());
        let some = d.tcp.list(&Default::default(), Some(10)).await.unwrap();
        assert_eq!((some.processes.len(), some.next_cursor.is_some()), (10, true));
        // Filters, in SQL.
        let active: ProcessList = d.unix.get("/v1/processes?state=active").await.unwrap();
        assert_eq!(active.processes.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["nap"]);
        let finished: ProcessList = d.unix.get("/v1/processes?state=finished&kind=shell&limit=100").await.unwrap();
        assert_eq!(finished.processes.len(), 25);
        let none: ProcessList = d.unix.get("/v1/processes?computer=nowhere").await.unwrap();
        assert!(none.processes.is_empty());
        // A bad cursor or limit: 400, saying which.
        for (query, says) in [
            ("cursor=nonsense", "not a cursor"),
            ("cursor=c9.1.61", "not a cursor"),
            ("limit=0", "from 1 to 10000"),
            ("limit=10001", "from 1 to 10000"),
            ("limit=many", "not a number"),
        ] {
            let e = d.unix.get::<ProcessList>(&format!("/v1/processes?{query}")).await.unwrap_err();
            match e {
                ClientError::Api { status, message } => {
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
                    assert!(message.contains(says), "{query}: {message}");
                }
                other => panic!("{query}: {other:?}"),
            }
        }
        d.unix
            .post::<_, ControlResults>("/v1/control", &Control { action: Action::Kill, ids: vec!["nap".into()] })
            .await
            .unwrap();
    });
}

#[test]
fn prune_removes_ended_processes_and_their_files_inside_the_data_dir_only() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let rt = rt();
    rt.block_on(async {
        let done = shell(dir.path(), "done", "echo out; echo err >&2");
        let outside = shell(elsewhere.path(), "outside", "echo kept");
        let nap = shell(dir.path(), "nap", "sleep 30");
        d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs: vec![done, outside, nap] }).await.unwrap();
        wait_ended(&d.unix, &["done".into(), "outside".into()]).await;
        wait_for(&d.unix, "nap", |p| p.state == "running").await;
        let supervise = Paths::new(dir.path()).supervise();
        assert!(supervise.join("done").exists() && supervise.join("nap").exists());
        tokio::time::sleep(Duration::from_millis(1100)).await;

        let prune =
            |older_than_secs, outputs, dry_run| drover_daemon::api::PruneOptions { older_than_secs, outputs, dry_run };
        let e = d.unix.post::<_, PruneReport>("/v1/prune", &prune(0, false, false)).await.unwrap_err();
        assert!(matches!(e, ClientError::Api { status: StatusCode::BAD_REQUEST, .. }), "{e:?}");
        let would: PruneReport = d.unix.post("/v1/prune", &prune(1, true, true)).await.unwrap();
        let mut ids = would.ids.clone();
        ids.sort();
        assert_eq!((would.dry_run, ids.as_slice()), (true, ["done".to_owned(), "outside".to_owned()].as_slice()));
        assert!(dir.path().join("done.out").exists() && supervise.join("done").exists(), "a dry run removes nothing");

        let report: PruneReport = d.unix.post("/v1/prune", &prune(1, true, false)).await.unwrap();
        assert_eq!(report.processes, 2);
        for gone in ["done", "outside"] {
            let e = d.unix.get::<ProcessDetail>(&format!("/v1/processes/{gone}")).await.unwrap_err();
            assert!(matches!(e, ClientError::Api { status: StatusCode::NOT_FOUND, .. }), "{gone}: {e:?}");
            assert!(!supervise.join(gone).exists(), "{gone}'s supervisor record");
        }
        assert!(!dir.path().join("done.out").exists() && !dir.path().join("done.err").exists());
        // Outside the data directory: left alone, and said so.
        assert!(elsewhere.path().join("outside.out").exists());
        assert!(
            report.refused.iter().any(|r| r.contains("outside.out") && r.contains("outside the data directory")),
            "{:?}",
            report.refused
        );
        // The running one and its files stay.
        let nap = wait_for(&d.unix, "nap", |_| true).await;
        assert_eq!(nap.state, "running");
        assert!(supervise.join("nap").exists());
        d.unix
            .post::<_, ControlResults>("/v1/control", &Control { action: Action::Kill, ids: vec!["nap".into()] })
            .await
            .unwrap();
    });
}

#[test]
fn a_daemon_with_retention_prunes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.retention = Some(drover_daemon::Retention { older_than: Duration::from_secs(1), outputs: true });
    let d = start_with(config);
    let rt = rt();
    rt.block_on(async {
        let jobs = vec![shell(dir.path(), "brief", "echo hi"), shell(dir.path(), "nap", "sleep 30")];
        d.unix.post::<_, Submitted>("/v1/processes", &Submit { jobs }).await.unwrap();
        wait_ended(&d.unix, &["brief".into()]).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while d.unix.get::<ProcessDetail>("/v1/processes/brief").await.is_ok() {
            assert!(Instant::now() < deadline, "retention did not prune `brief`");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!dir.path().join("brief.out").exists());
        assert_eq!(wait_for(&d.unix, "nap", |_| true).await.state, "running");
        d.unix
            .post::<_, ControlResults>("/v1/control", &Control { action: Action::Kill, ids: vec!["nap".into()] })
            .await
            .unwrap();
    });
}
