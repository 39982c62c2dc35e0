//! The store against SQLite files and a real PostgreSQL server (started by the
//! README's test command; without it the PostgreSQL tests fail, loudly).

use std::time::Duration;

use drover_core::{DriveMode, Process, spawn_recorded};
use drover_shell::{Governor, ShellProcess, ShellSpec, ShellState};
use drover_store::{
    CheckpointError, Cursor, ListFilter, NewProcess, PageLimit, Store, StoreError, StoreRecorder, decode, encode,
};
use tokio::task::LocalSet;

const PG_URL_FILE: &str = "/tmp/drover-services/postgres/url";

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{nanos}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A fresh PostgreSQL schema for one test, as a URL whose search path is it.
async fn pg_url() -> String {
    let url = std::env::var("DROVER_TEST_POSTGRES_URL")
        .ok()
        .or_else(|| std::fs::read_to_string(PG_URL_FILE).ok().map(|s| s.trim().to_owned()))
        .expect(
            "PostgreSQL for tests is not running: run `scripts/services/all.sh start` (the README's test command does)",
        );
    let schema = unique("t");
    let pool = sqlx::PgPool::connect(&url).await.expect("PostgreSQL for tests does not accept connections");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&pool).await.unwrap();
    format!("{url}?options=-csearch_path%3D{schema}")
}

enum Backend {
    Sqlite,
    Postgres,
}

async fn open(backend: &Backend, dir: &std::path::Path) -> Store {
    match backend {
        Backend::Sqlite => Store::open(dir.join("store.db").to_str().unwrap()).await.unwrap(),
        Backend::Postgres => Store::open(&pg_url().await).await.unwrap(),
    }
}

fn new_process(id: &str) -> NewProcess {
    NewProcess::new(id, "shell", r#"{"program":"true"}"#.into(), encode(&ShellState::Queued))
}

async fn records_and_reads(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&backend, dir.path()).await;
    store.insert(new_process("a")).await.unwrap();
    store.insert(NewProcess { parent: Some("a".into()), ..new_process("b") }).await.unwrap();
    assert_eq!(store.insert(new_process("a")).await, Err(StoreError::Duplicate("a".into())));
    let running =
        ShellState::Running { pid: 42, started_at: std::time::UNIX_EPOCH + Duration::from_secs(1), identity: None };
    store.record("a", encode(&running), false, false).await.unwrap();
    let done = ShellState::Finished { exit_code: 0, ran_for: Duration::from_secs(2) };
    store.record("a", encode(&done), false, true).await.unwrap();
    store.record("b", encode(&ShellState::Queued), true, false).await.unwrap();
    assert_eq!(store.record("nope", encode(&done), false, true).await, Err(StoreError::Unknown("nope".into())));

    let a = store.get("a").await.unwrap().unwrap();
    assert!(a.terminal);
    assert_eq!(decode::<ShellState>(&a.checkpoint).unwrap(), done);
    let b = store.get("b").await.unwrap().unwrap();
    assert_eq!((b.parent.as_deref(), b.paused, b.terminal), (Some("a"), true, false));
    assert_eq!(store.get("nope").await.unwrap(), None);

    let unfinished: Vec<String> = store.unfinished().await.unwrap().into_iter().map(|p| p.id).collect();
    assert_eq!(unfinished, vec!["b".to_owned()]);
    let all: Vec<(String, bool)> = store.list().await.unwrap().into_iter().map(|p| (p.id, p.terminal)).collect();
    assert_eq!(all, vec![("a".to_owned(), true), ("b".to_owned(), false)]);
    let log: Vec<ShellState> =
        store.events("a").await.unwrap().iter().map(|e| decode::<ShellState>(&e.checkpoint).unwrap()).collect();
    assert_eq!(log, vec![ShellState::Queued, running, done]);
    assert_eq!(store.count().await.unwrap(), 2);

    // Reopened, it is all still there.
    drop(store);
    if let Backend::Sqlite = backend {
        let store = Store::open(dir.path().join("store.db").to_str().unwrap()).await.unwrap();
        assert_eq!(store.count().await.unwrap(), 2);
        assert_eq!(store.events("a").await.unwrap().len(), 3);
    }
}

#[tokio::test]
async fn sqlite_records_and_reads() {
    records_and_reads(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_records_and_reads() {
    records_and_reads(Backend::Postgres).await;
}

async fn group_commits_are_durable_each(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&backend, dir.path()).await;
    for i in 0..200 {
        store.insert(new_process(&format!("p{i}"))).await.unwrap();
    }
    // 200 processes × 10 transitions, all at once: they share commits.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.spawn(async move {
            for step in 0..10 {
                let state = ShellState::Finished { exit_code: step, ran_for: Duration::ZERO };
                store.record(&format!("p{i}"), encode(&state), false, step == 9).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert!(store.unfinished().await.unwrap().is_empty());
    for i in [0, 99, 199] {
        let events = store.events(&format!("p{i}")).await.unwrap();
        assert_eq!(events.len(), 11);
        assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_group_commits_are_durable_each() {
    group_commits_are_durable_each(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_group_commits_are_durable_each() {
    group_commits_are_durable_each(Backend::Postgres).await;
}

async fn a_running_process_records_every_state(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&backend, dir.path()).await;
    let local = LocalSet::new();
    local
        .run_until(async {
            let spec = ShellSpec::script("exit 5");
            store.insert(new_process("job")).await.unwrap();
            let proc = ShellProcess::new(spec, Governor::new(1));
            let h = spawn_recorded(&local, proc, DriveMode::FireAndForget, StoreRecorder::new(store.clone(), "job"));
            h.try_nudge().unwrap();
            let done = h.join().await.unwrap();
            // Durable before `join` returned.
            let stored = store.get("job").await.unwrap().unwrap();
            assert!(stored.terminal);
            assert_eq!(decode::<ShellState>(&stored.checkpoint).unwrap(), done.state().clone());
            let kinds: Vec<&'static str> = store
                .events("job")
                .await
                .unwrap()
                .iter()
                .map(|e| match decode::<ShellState>(&e.checkpoint).unwrap() {
                    ShellState::Queued => "queued",
                    ShellState::Running { .. } => "running",
                    ShellState::Finished { exit_code: 5, .. } => "finished 5",
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(kinds, vec!["queued", "running", "finished 5"]);
        })
        .await;
}

#[tokio::test]
async fn sqlite_a_running_process_records_every_state() {
    a_running_process_records_every_state(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_running_process_records_every_state() {
    a_running_process_records_every_state(Backend::Postgres).await;
}

// --- Checkpoints, as the store keeps them -------------------------------------

#[tokio::test]
async fn a_corrupt_checkpoint_concerns_only_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    for id in ["good", "bad", "newer"] {
        store.insert(new_process(id)).await.unwrap();
    }
    store.record("bad", "{\"v\":1,\"state\":{\"Nonsense\":1}}".into(), false, false).await.unwrap();
    store.record("newer", "{\"state\":\"Queued\",\"v\":99}".into(), false, false).await.unwrap();
    let loaded: Vec<(String, Result<ShellState, CheckpointError>)> =
        store.unfinished().await.unwrap().into_iter().map(|p| (p.id, decode(&p.checkpoint))).collect();
    assert_eq!(loaded.len(), 3);
    for (id, state) in loaded {
        match id.as_str() {
            "good" => assert_eq!(state, Ok(ShellState::Queued)),
            "bad" => assert!(matches!(state, Err(CheckpointError::Corrupt { .. })), "{state:?}"),
            "newer" => assert!(matches!(state, Err(CheckpointError::TooNew { found: 99, .. })), "{state:?}"),
            other => panic!("{other}"),
        }
    }
}

#[tokio::test]
async fn the_store_s_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("drover.db");
    let mode = |suffix: &str| {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok()
    };
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    store.insert(new_process("p")).await.unwrap();
    assert_eq!(mode(""), Some(0o600));
    assert_eq!(mode("-wal"), Some(0o600));
    assert_eq!(mode("-shm"), Some(0o600));
    drop(store);
    // A store an earlier drover left readable by all is made private.
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    assert_eq!(mode(""), Some(0o600));
    assert!(store.get("p").await.unwrap().is_some());
}

// --- Refusals ------------------------------------------------------------------

#[tokio::test]
async fn a_file_that_is_not_a_drover_store_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "my precious notes\n").unwrap();
    let e = Store::open(text.to_str().unwrap()).await.unwrap_err();
    assert!(matches!(&e, StoreError::NotAStore { problem, .. } if problem.contains("not an SQLite database")), "{e}");
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "my precious notes\n");

    let other = dir.path().join("other.db");
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=rwc", other.display())).await.unwrap();
        sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)").execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO invoices (amount) VALUES (12.5)").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let before = std::fs::read(&other).unwrap();
    let e = Store::open(other.to_str().unwrap()).await.unwrap_err();
    assert!(matches!(&e, StoreError::NotAStore { problem, .. } if problem.contains("invoices")), "{e}");
    assert!(e.to_string().contains("refusing to touch it"));
    assert!(std::fs::read(&other).unwrap() == before, "a foreign database was modified");
}

#[tokio::test]
async fn a_store_from_a_newer_drover_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    drop(Store::open(path.to_str().unwrap()).await.unwrap());
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
        sqlx::query("UPDATE drover_meta SET value = '7' WHERE key = 'schema_version'").execute(&pool).await.unwrap();
        pool.close().await;
    }
    let e = Store::open(path.to_str().unwrap()).await.unwrap_err();
    assert!(matches!(e, StoreError::TooNew { found: 7, known: drover_store::SCHEMA_VERSION, .. }), "{e}");
}

/// A store as drover wrote it with schema version 1 (before owners,
/// children's index and marks of work left to finish).
const SCHEMA_V1: &[&str] = &[
    "CREATE TABLE drover_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE processes (id TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL, parent TEXT REFERENCES processes(id),
        checkpoint TEXT NOT NULL, paused BOOLEAN NOT NULL, terminal BOOLEAN NOT NULL, created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL, error TEXT)",
    "CREATE INDEX processes_open ON processes (id) WHERE NOT terminal",
    "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, process_id TEXT NOT NULL REFERENCES processes(id),
        at BIGINT NOT NULL, checkpoint TEXT NOT NULL, paused BOOLEAN NOT NULL)",
    "CREATE INDEX events_process ON events (process_id, seq)",
    "INSERT INTO drover_meta (key, value) VALUES ('magic', 'drover-store'), ('schema_version', '1')",
    r#"INSERT INTO processes VALUES ('run', 'shell', '{"kind":"shell","spec":{}}', NULL, '{"state":"Queued","v":2}', 0, 0, 1, 1, NULL)"#,
    r#"INSERT INTO processes VALUES ('k', 'scheduler', '{}', NULL,
        '{"state":{"Killed":{"cancel_pending":true,"job_id":"7"}},"v":1}', 0, 1, 1, 2, NULL)"#,
    r#"INSERT INTO events (process_id, at, checkpoint, paused) VALUES ('run', 1, '{"state":"Queued","v":2}', 0)"#,
];

#[tokio::test]
async fn a_version_1_store_is_migrated_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        for statement in SCHEMA_V1 {
            sqlx::query(sqlx::AssertSqlSafe(*statement)).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    let run = store.get("run").await.unwrap().unwrap();
    assert_eq!(
        (run.checkpoint.as_str(), run.owner, run.epoch, run.terminal),
        (r#"{"state":"Queued","v":2}"#, None, 0, false)
    );
    assert_eq!(store.events("run").await.unwrap().len(), 1);
    // Version 3's state column, read from each checkpoint, filters lists.
    let by_state = |state: &str| ListFilter { state: Some(state.to_owned()), ..ListFilter::default() };
    let page = store.list_page(&by_state("killed"), None, PageLimit::default()).await.unwrap();
    assert_eq!(page.processes.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["k"]);
    let page = store.list_page(&by_state("queued"), None, PageLimit::default()).await.unwrap();
    assert_eq!(page.processes.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["run"]);
    assert_eq!(store.status_counts().await.unwrap(), [("killed".to_owned(), 1), ("queued".to_owned(), 1)]);
    // The unconfirmed cancel is work left to finish, for whichever engine recovers.
    let k = store.get("k").await.unwrap().unwrap();
    assert!(k.pending_work && k.terminal);
    let pending = store.claim_pending("e1", "daemon", true).await.unwrap();
    assert_eq!(pending.iter().map(|p| (p.id.as_str(), p.epoch)).collect::<Vec<_>>(), [("k", 1)]);
    // Claimed: a second engine finds nothing to take up.
    assert!(store.claim_pending("e2", "daemon", false).await.unwrap().is_empty());
    // An unowned process of version 1 is claimed by the first engine that asks.
    store.register_engine("e1", "host", 1, "daemon", 10_000).await.unwrap();
    let claimed = store.claim("e1", "daemon", 100, true).await.unwrap();
    assert_eq!(claimed.iter().map(|p| (p.id.as_str(), p.epoch)).collect::<Vec<_>>(), [("run", 1)]);
    // Version 4's triggers move the counts and the event log with each write.
    store.record("run", encode(&ShellState::Killed), false, true).await.unwrap();
    assert_eq!(store.status_counts().await.unwrap(), [("killed".to_owned(), 2)]);
    assert_eq!(store.events("run").await.unwrap().len(), 2);
    drop(store);
    // Opening it again changes nothing more.
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(store.get("run").await.unwrap().unwrap().owner.as_deref(), Some("e1"));
    assert_eq!(store.status_counts().await.unwrap(), [("killed".to_owned(), 2)]);
}

/// A store of schema version 3 (counts and events written by drover's own
/// statements, no triggers) gets version 4's triggers, counts kept.
async fn a_version_3_store_gets_the_triggers_that_keep_counts_and_events(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let location = match backend {
        Backend::Sqlite => dir.path().join("store.db").to_str().unwrap().to_owned(),
        Backend::Postgres => pg_url().await,
    };
    let store = Store::open(&location).await.unwrap();
    store.insert(new_process("a")).await.unwrap();
    store.insert(new_process("b")).await.unwrap();
    drop(store);
    // Back to version 3, as an older drover left it.
    let v3: &[&str] = match backend {
        Backend::Sqlite => &[
            "DROP TRIGGER drover_inserted",
            "DROP TRIGGER drover_recorded",
            "DROP TRIGGER drover_moved",
            "DROP TRIGGER drover_removed",
        ],
        Backend::Postgres => &[
            "DROP TRIGGER drover_inserted ON processes",
            "DROP TRIGGER drover_recorded ON processes",
            "DROP TRIGGER drover_counted ON processes",
            "DROP FUNCTION drover_event()",
            "DROP FUNCTION drover_count()",
        ],
    };
    let downgrade = v3.iter().copied().chain(["UPDATE drover_meta SET value = '3' WHERE key = 'schema_version'"]);
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{location}")).await.unwrap();
            for statement in downgrade {
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&location).await.unwrap();
            for statement in downgrade {
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
    }
    let store = Store::open(&location).await.unwrap();
    assert_eq!(store.status_counts().await.unwrap(), [("queued".to_owned(), 2)]);
    store.record("a", encode(&ShellState::Killed), false, true).await.unwrap();
    store.insert(new_process("c")).await.unwrap();
    assert_eq!(store.status_counts().await.unwrap(), [("killed".to_owned(), 1), ("queued".to_owned(), 2)]);
    assert_eq!(store.events("a").await.unwrap().len(), 2, "the insert's and the record's");
    assert_eq!(store.events("c").await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_a_version_3_store_gets_the_triggers_that_keep_counts_and_events() {
    a_version_3_store_gets_the_triggers_that_keep_counts_and_events(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_version_3_store_gets_the_triggers_that_keep_counts_and_events() {
    a_version_3_store_gets_the_triggers_that_keep_counts_and_events(Backend::Postgres).await;
}

#[tokio::test]
async fn postgres_messages_never_show_the_password() {
    let url = std::fs::read_to_string(PG_URL_FILE).expect("PostgreSQL for tests is not running").trim().to_owned();
    let wrong = url.replacen("/drover", "/no_such_database", 1);
    let e = Store::open(&wrong).await.unwrap_err();
    let password = url.split(':').nth(2).unwrap().split('@').next().unwrap();
    assert!(!e.to_string().contains(password), "{e}");
    assert!(e.to_string().contains("no_such_database"), "{e}");
}

/// A lease that ran out while nobody used its expiry (the store could not be
/// written, say) is renewed; one whose processes or place another engine
/// took is not, nor a released one.
async fn a_lease_revives_unless_another_engine_took_over(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&backend, dir.path()).await;
    let (a, b, c) = (unique("a"), unique("b"), unique("c"));
    let mut p = new_process(&unique("p"));
    p.owner = Some(a.clone());
    let p_id = p.id.clone();
    store.insert(p).await.unwrap();
    store.register_engine(&a, "h", 1, "daemon", 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.heartbeat(&a, 60_000).await.unwrap(), "a lease that ran out unused is renewed");
    // It runs out again, and another engine of the pool claims its process.
    store.register_engine(&a, "h", 1, "daemon", 1).await.unwrap();
    store.register_engine(&b, "h", 2, "daemon", 60_000).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = store.claim(&b, "daemon", 10, false).await.unwrap();
    assert!(claimed.iter().any(|q| q.id == p_id), "{claimed:?}");
    assert!(!store.heartbeat(&a, 60_000).await.unwrap(), "a superseded engine renewed its lease");
    // A place taken from an expired holder supersedes it too.
    let place = unique("scheduler:x");
    store.register_engine(&c, "h", 3, "daemon", 1).await.unwrap();
    assert_eq!(store.acquire(&place, &c).await.unwrap(), c);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.acquire(&place, &b).await.unwrap(), b);
    assert!(!store.heartbeat(&c, 60_000).await.unwrap(), "an engine whose place was taken renewed its lease");
    // A released engine stays released.
    assert!(store.heartbeat(&b, 60_000).await.unwrap());
    store.release_engine(&b).await.unwrap();
    assert!(!store.heartbeat(&b, 60_000).await.unwrap());
}

#[tokio::test]
async fn sqlite_a_lease_revives_unless_another_engine_took_over() {
    a_lease_revives_unless_another_engine_took_over(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_a_lease_revives_unless_another_engine_took_over() {
    a_lease_revives_unless_another_engine_took_over(Backend::Postgres).await;
}

fn ended(exit_code: i32) -> String {
    encode(&ShellState::Finished { exit_code, ran_for: Duration::ZERO })
}

/// Every page from the first to the last, with a page of `limit`.
async fn all_pages(store: &Store, filter: &ListFilter, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_page(filter, cursor.as_ref(), PageLimit::new(limit).unwrap()).await.unwrap();
        assert!(page.processes.len() <= limit);
        ids.extend(page.processes.into_iter().map(|p| p.id));
        match page.next {
            Some(next) => cursor = Some(Cursor::parse(&next.to_string()).unwrap()),
            None => return ids,
        }
    }
}

async fn pages_list_every_process_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&backend, dir.path()).await;
    let first: Vec<NewProcess> = (0..600).map(|i| new_process(&format!("p{i:04}"))).collect();
    store.insert_all(first).await.unwrap();
    // Pages read while others insert: every process there from the start
    // comes exactly once, and nothing comes twice.
    let inserting = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                store.insert(new_process(&format!("new{i:04}"))).await.unwrap();
            }
        })
    };
    let ids = all_pages(&store, &ListFilter::default(), 7).await;
    inserting.await.unwrap();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a process came twice");
    for i in 0..600 {
        assert!(unique.contains(&format!("p{i:04}")), "p{i:04} was skipped");
    }
    let all = all_pages(&store, &ListFilter::default(), 10_000).await;
    assert_eq!(all.len(), 900);
    assert_eq!(all, store.list().await.unwrap().into_iter().map(|p| p.id).collect::<Vec<_>>(), "the list's order");

    // Filters, in SQL: a state, `paused`, `active`, a kind, a place, a parent.
    store.record("p0001", ended(0), false, true).await.unwrap();
    store.record("p0002", encode(&ShellState::Queued), true, false).await.unwrap();
    store.insert(NewProcess { place: Some("cluster".into()), ..new_process("on-cluster") }).await.unwrap();
    store
        .insert(NewProcess { parent: Some("p0003".into()), kind: "group".into(), ..new_process("child") })
        .await
        .unwrap();
    let check = |state: Option<&str>, kind: Option<&str>, place: Option<&str>, parent: Option<&str>| ListFilter {
        state: state.map(str::to_owned),
        kind: kind.map(str::to_owned),
        place: place.map(str::to_owned),
        parent: parent.map(str::to_owned),
    };
    assert_eq!(all_pages(&store, &check(Some("finished"), None, None, None), 2).await, ["p0001"]);
    assert_eq!(all_pages(&store, &check(Some("paused"), None, None, None), 2).await, ["p0002"]);
    assert_eq!(all_pages(&store, &check(Some("active"), None, None, None), 500).await.len(), 901);
    assert_eq!(
        all_pages(&store, &check(Some("queued"), None, None, None), 500).await.len(),
        901,
        "its state, paused or not"
    );
    assert_eq!(all_pages(&store, &check(None, Some("group"), None, None), 2).await, ["child"]);
    assert_eq!(all_pages(&store, &check(None, None, Some("cluster"), None), 2).await, ["on-cluster"]);
    assert_eq!(all_pages(&store, &check(None, None, None, Some("p0003")), 2).await, ["child"]);
    assert!(all_pages(&store, &check(Some("finished"), Some("group"), None, None), 2).await.is_empty());
    let counts = store.status_counts().await.unwrap();
    assert_eq!(counts, [("finished".to_owned(), 1), ("paused".to_owned(), 1), ("queued".to_owned(), 900)]);
    assert_eq!(counts, recount(&store).await, "the counts kept by the writes");
    // A bad cursor or size is refused.
    assert!(matches!(Cursor::parse("c9.1.61"), Err(StoreError::Invalid(_))));
    assert!(matches!(PageLimit::new(10_001), Err(StoreError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_pages_list_every_process_once() {
    pages_list_every_process_once(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pages_list_every_process_once() {
    pages_list_every_process_once(Backend::Postgres).await;
}

/// The counts per status, counted from every process.
async fn recount(store: &Store) -> Vec<(String, i64)> {
    let mut counts = std::collections::BTreeMap::new();
    for p in store.list().await.unwrap() {
        let state = drover_kind::envelope_state_name(&p.checkpoint);
        *counts.entry(if p.paused && !p.terminal { "paused".to_owned() } else { state }).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// Every batch of a prune of what ended before `before`, one root at a time.
async fn prune_all(store: &Store, before: i64, dry_run: bool) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let batch = store.prune_batch(before, cursor.as_ref(), PageLimit::new(1).unwrap(), dry_run).await.unwrap();
        ids.extend(batch.processes.into_iter().map(|p| p.id));
        match batch.next {
            Some(next) => cursor = Some(next),
            None => return ids,
        }
    }
}

async fn prune_removes_only_ended_families(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&backend, dir.path()).await;
    for id in ["done", "fam", "mixed", "running", "pending"] {
        store.insert(new_process(id)).await.unwrap();
    }
    let child = |id: &str, parent: &str| NewProcess { parent: Some(parent.into()), ..new_process(id) };
    store.insert_all(vec![child("fam.1", "fam"), child("fam.2", "fam"), child("mixed.1", "mixed")]).await.unwrap();
    store.insert(child("fam.1.a", "fam.1")).await.unwrap();
    for id in ["done", "fam.1.a", "fam.1", "fam.2", "fam", "mixed"] {
        store.record(id, ended(0), false, true).await.unwrap();
    }
    // A cancel still to confirm: not yet.
    let mut pending = drover_store::Record::new(ended(1), false, true);
    pending.pending_work = true;
    store.commit_record("pending", pending).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let cutoff = drover_kind::now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.insert(new_process("late")).await.unwrap();
    store.record("late", ended(0), false, true).await.unwrap();

    let mut would = prune_all(&store, cutoff, true).await;
    would.sort();
    assert_eq!(would, ["done", "fam", "fam.1", "fam.1.a", "fam.2"]);
    assert_eq!(store.count().await.unwrap(), 10, "a dry run removes nothing");
    // Two prunes at once (a daemon's retention and a user's): each process
    // goes once, and the counts stay true.
    let (one, two) = tokio::join!(prune_all(&store, cutoff, false), prune_all(&store, cutoff, false));
    let mut pruned: Vec<String> = one.into_iter().chain(two).collect();
    pruned.sort();
    assert_eq!(pruned, would);
    let mut left: Vec<String> = store.list().await.unwrap().into_iter().map(|p| p.id).collect();
    left.sort();
    assert_eq!(left, ["late", "mixed", "mixed.1", "pending", "running"]);
    for gone in &pruned {
        assert!(store.events(gone).await.unwrap().is_empty(), "{gone}'s events");
    }
    assert_eq!(store.events("late").await.unwrap().len(), 2);
    assert!(prune_all(&store, cutoff, false).await.is_empty(), "a second prune finds nothing");
    assert_eq!(store.status_counts().await.unwrap(), recount(&store).await, "the counts after a prune");
}

#[tokio::test]
async fn sqlite_prune_removes_only_ended_families() {
    prune_removes_only_ended_families(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_prune_removes_only_ended_families() {
    prune_removes_only_ended_families(Backend::Postgres).await;
}
