//! The store: process records and their event logs, in SQLite or PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use drover_kind::now_ms;

use crate::page::{Cursor, ListFilter, Page, PageLimit, PruneBatch, PruneCursor};

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

/// The version of the schema this drover writes.
pub const SCHEMA_VERSION: u32 = 4;
const MAGIC: &str = "drover-store";
/// The tables of a store (for a shared PostgreSQL database that has others).
const OUR_TABLES: &[&str] = &["drover_meta", "processes", "events", "drover_engines", "drover_leases", "drover_counts"];
/// The columns of a process, as [`process`] reads them.
const COLS: &str = "id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error, owner, epoch, host, place, pending_work";
/// [`COLS`], of the table named `p`.
const P_COLS: &str = "p.id, p.kind, p.spec, p.parent, p.checkpoint, p.paused, p.terminal, p.created_at, p.updated_at, p.error, p.owner, p.epoch, p.host, p.place, p.pending_work";

/// Why the store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The location holds something that is not a drover store. It is left untouched.
    #[error("{location} is not a drover store ({problem}); refusing to touch it")]
    NotAStore {
        /// The file or database.
        location: String,
        /// What is there instead.
        problem: String,
    },
    /// The store was written by a newer drover.
    #[error("{location} has schema version {found}, newer than this drover knows ({known}): upgrade drover")]
    TooNew {
        /// The file or database.
        location: String,
        /// Its schema version.
        found: u32,
        /// The newest version known.
        known: u32,
    },
    /// A process id that is already taken.
    #[error("process `{0}` already exists")]
    Duplicate(String),
    /// A process id that is not there.
    #[error("process `{0}` does not exist")]
    Unknown(String),
    /// A fenced write from an engine that no longer owns the process: another
    /// engine took it over (this one's lease expired). Nothing was written.
    #[error("process `{0}` is driven by another engine now; this engine's write was refused")]
    Fenced(String),
    /// A request the store cannot take: a bad cursor, a page size out of
    /// its range. The message says which.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("{location}: {message}")]
    Db {
        /// The file or database.
        location: String,
        /// The database's message.
        message: String,
    },
}

/// A process to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewProcess {
    /// Its id, unique in the store.
    pub id: String,
    /// Its kind (`shell`, `scheduler`, ...).
    pub kind: String,
    /// Its inputs, as JSON.
    pub spec: String,
    /// The process that started it, if any.
    pub parent: Option<String>,
    /// Its first checkpoint (an envelope from [`crate::encode`]).
    pub checkpoint: String,
    /// The engine that drives it from the start (epoch 1), or `None` for a
    /// process any engine may claim.
    pub owner: Option<String>,
    /// The host it is bound to (local processes), if any.
    pub host: Option<String>,
    /// Where it runs (a computer), for claims that go by place.
    pub place: Option<String>,
}

impl NewProcess {
    /// A process of `kind` with its `spec` and first `checkpoint`, no parent,
    /// owner, host or place.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, spec: String, checkpoint: String) -> NewProcess {
        NewProcess {
            id: id.into(),
            kind: kind.into(),
            spec,
            parent: None,
            checkpoint,
            owner: None,
            host: None,
            place: None,
        }
    }
}

/// Which engine may write a process's checkpoints: its owner, at the epoch
/// it claimed the process with. A write with a fence commits only while the
/// process still has that owner and epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The engine's id.
    pub owner: String,
    /// The epoch of its claim.
    pub epoch: i64,
}

/// A transition to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The new checkpoint.
    pub checkpoint: String,
    /// Whether the process is paused after it.
    pub paused: bool,
    /// Whether it is terminal.
    pub terminal: bool,
    /// Whether a terminal state leaves work to finish (a cancel to confirm).
    pub pending_work: bool,
    /// Children to insert in the same transaction (their parent is this process).
    pub children: Vec<NewProcess>,
    /// The writer's claim, if the write is fenced.
    pub fence: Option<Fence>,
}

impl Record {
    /// A plain transition: no children, no fence.
    pub fn new(checkpoint: String, paused: bool, terminal: bool) -> Record {
        Record { checkpoint, paused, terminal, pending_work: false, children: Vec::new(), fence: None }
    }
}

/// An engine, as it registered in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineRecord {
    /// Its id.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: i64,
    /// When it registered (the database's clock, Unix milliseconds).
    pub started_at: i64,
    /// Until when its lease holds (the database's clock).
    pub lease_until: i64,
    /// Its pool: engines of one pool take over each other's processes
    /// (`daemon`; a `drover run` is a pool of its own, `run:<id>`).
    pub pool: String,
    /// Whether its lease holds now.
    pub live: bool,
    /// How many unfinished processes it owns.
    pub owns: i64,
    /// The places (`kind:computer`) whose lease it holds.
    pub places: Vec<String>,
}

/// A stored process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredProcess {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its inputs, as JSON.
    pub spec: String,
    /// The process that started it, if any.
    pub parent: Option<String>,
    /// Its latest checkpoint, as stored: decode it with [`crate::decode`]; a
    /// corrupt one concerns this process only.
    pub checkpoint: String,
    /// Whether it was paused at its latest checkpoint.
    pub paused: bool,
    /// Whether its latest checkpoint is terminal.
    pub terminal: bool,
    /// When it was inserted (Unix milliseconds).
    pub created_at: i64,
    /// When it last changed (Unix milliseconds).
    pub updated_at: i64,
    /// Why an engine could not load or resume it (a corrupt checkpoint, an
    /// unknown computer), if one could not.
    pub error: Option<String>,
    /// The engine that owns it, if one does.
    pub owner: Option<String>,
    /// The epoch of its owner's claim (0: never claimed).
    pub epoch: i64,
    /// The host it is bound to, if any.
    pub host: Option<String>,
    /// Where it runs (a computer), if it says.
    pub place: Option<String>,
    /// Whether its terminal state left work to finish.
    pub pending_work: bool,
}

/// One transition in a process's event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its place in the store-wide order.
    pub seq: i64,
    /// When (Unix milliseconds).
    pub at: i64,
    /// The checkpoint entered.
    pub checkpoint: String,
    /// Whether the process was paused after it.
    pub paused: bool,
    /// The epoch of the claim it was written under (0: unowned).
    pub epoch: i64,
}

/// `future`, boxed as `Send`: the compiler proves it for the concrete
/// lifetimes here, where callers that spawn a future holding a query
/// otherwise fail on sqlx's higher-ranked `Executor` bounds.
fn boxed<'a, T>(
    future: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

/// A value bound to a statement built at run time.
enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool: the same SQL for both.
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            Db::Sqlite($pool) => $body,
            Db::Postgres($pool) => $body,
        }
    };
}

enum Write {
    Insert(NewProcess),
    /// Several processes, all or none.
    InsertAll(Vec<NewProcess>),
    Record {
        id: String,
        record: Record,
    },
}

struct Request {
    write: Write,
    at: i64,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A durable store of processes: one row per process with its latest
/// checkpoint, and an append-only log of every transition.
///
/// SQLite (embedded, WAL, `synchronous = NORMAL`: a commit survives a crash
/// of any process, and a power loss may take back the last commits, never
/// the file's consistency; ARCHITECTURE.md says why that is enough) is the
/// default; PostgreSQL serves several engines. Both have the same schema. Writes go through one
/// writer task that commits them in groups: a write returns only once its
/// group is committed, so it is durable when it returns, and many processes'
/// checkpoints share one commit.
///
/// Clones share the store.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    location: Arc<str>,
    writes: mpsc::UnboundedSender<Request>,
}

/// Makes the SQLite file (created here if missing) and its WAL and
/// shared-memory files readable and writable by their owner only. SQLite
/// gives the files it creates later the main file's mode.
fn private_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.permissions().mode() & 0o077 != 0
        {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(meta.permissions().mode() & 0o700))?;
        }
    }
    Ok(())
}

/// The schema, the same for both backends but for the type of the event
/// log's sequence column and the language of the triggers.
fn schema(serial_key: &str, triggers: &[&str]) -> Vec<String> {
    vec![
        "CREATE TABLE drover_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)".to_owned(),
        "CREATE TABLE processes (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            spec TEXT NOT NULL,
            parent TEXT REFERENCES processes(id),
            checkpoint TEXT NOT NULL,
            paused BOOLEAN NOT NULL,
            terminal BOOLEAN NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            error TEXT,
            owner TEXT,
            epoch BIGINT NOT NULL DEFAULT 0,
            host TEXT,
            place TEXT,
            pending_work BOOLEAN NOT NULL DEFAULT FALSE,
            state TEXT NOT NULL DEFAULT ''
        )"
        .to_owned(),
    ]
    .into_iter()
    .chain(LIST_INDEXES.iter().map(|s| (*s).to_owned()))
    .chain([
        ENGINES.to_owned(),
        LEASES.to_owned(),
        format!(
            "CREATE TABLE events (
                seq {serial_key},
                process_id TEXT NOT NULL REFERENCES processes(id),
                at BIGINT NOT NULL,
                checkpoint TEXT NOT NULL,
                paused BOOLEAN NOT NULL,
                epoch BIGINT NOT NULL DEFAULT 0
            )"
        ),
        "CREATE INDEX events_process ON events (process_id, seq)".to_owned(),
        COUNTS.to_owned(),
    ])
    .chain(triggers.iter().map(|s| (*s).to_owned()))
    .chain([format!(
        "INSERT INTO drover_meta (key, value) VALUES ('magic', '{MAGIC}'), ('schema_version', '{SCHEMA_VERSION}')"
    )])
    .collect()
}

/// The indexes of schema version 3: a page of `list` in the order it is
/// listed (`created_at`, `id`), whichever filter it has, and the ended
/// processes in the order `prune` takes them (`updated_at`, `id`). Each
/// filter's index leads with the filtered column, so that a page is a range
/// of one index however many rows the store holds. No index holds a
/// column that every transition changes (`updated_at`, `checkpoint`).
const LIST_INDEXES: &[&str] = &[
    "CREATE INDEX processes_created ON processes (created_at, id)",
    "CREATE INDEX processes_state ON processes (state, created_at, id)",
    "CREATE INDEX processes_kind ON processes (kind, created_at, id)",
    "CREATE INDEX processes_place ON processes (place, created_at, id) WHERE place IS NOT NULL",
    // Also the children of a claim (`parent IN (...)`).
    "CREATE INDEX processes_children ON processes (parent, created_at, id) WHERE parent IS NOT NULL",
    // Also what claims take (`NOT terminal ... ORDER BY created_at, id`).
    "CREATE INDEX processes_active ON processes (created_at, id) WHERE NOT terminal",
    "CREATE INDEX processes_paused ON processes (created_at, id) WHERE paused AND NOT terminal",
    // Not by `updated_at`: a column every write changes must be in no
    // index, or PostgreSQL could update no row in place (HOT) and would
    // write every index at every transition.
    "CREATE INDEX processes_ended ON processes (created_at, id) WHERE terminal AND parent IS NULL",
];

/// The number of processes per status, moved with every write that moves
/// one (schema version 4's triggers): the counts `list` shows cost one
/// small read however many processes there are.
const COUNTS: &str = "CREATE TABLE drover_counts (status TEXT PRIMARY KEY, n BIGINT NOT NULL)";

/// Schema version 4: the event log and the counts per status are kept by
/// the database itself, in the statement that writes a process (an insert,
/// a checkpoint, a delete), so that a checkpoint is one statement: one
/// round trip to the database, whatever it moves. A process's status is
/// `paused` while it is paused and has not ended, its state's name otherwise.
const SQLITE_TRIGGERS: &[&str] = &[
    "CREATE TRIGGER drover_inserted AFTER INSERT ON processes BEGIN
        INSERT INTO events (process_id, checkpoint, paused, at, epoch)
            VALUES (NEW.id, NEW.checkpoint, NEW.paused, NEW.updated_at, NEW.epoch);
        INSERT INTO drover_counts (status, n)
            VALUES (CASE WHEN NEW.paused AND NOT NEW.terminal THEN 'paused' ELSE NEW.state END, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END",
    "CREATE TRIGGER drover_recorded AFTER UPDATE OF checkpoint ON processes BEGIN
        INSERT INTO events (process_id, checkpoint, paused, at, epoch)
            VALUES (NEW.id, NEW.checkpoint, NEW.paused, NEW.updated_at, NEW.epoch);
    END",
    "CREATE TRIGGER drover_moved AFTER UPDATE OF state, paused, terminal ON processes
        WHEN (CASE WHEN OLD.paused AND NOT OLD.terminal THEN 'paused' ELSE OLD.state END)
            IS NOT (CASE WHEN NEW.paused AND NOT NEW.terminal THEN 'paused' ELSE NEW.state END)
    BEGIN
        INSERT INTO drover_counts (status, n)
            VALUES (CASE WHEN OLD.paused AND NOT OLD.terminal THEN 'paused' ELSE OLD.state END, -1)
            ON CONFLICT (status) DO UPDATE SET n = n - 1;
        INSERT INTO drover_counts (status, n)
            VALUES (CASE WHEN NEW.paused AND NOT NEW.terminal THEN 'paused' ELSE NEW.state END, 1)
            ON CONFLICT (status) DO UPDATE SET n = n + 1;
    END",
    "CREATE TRIGGER drover_removed AFTER DELETE ON processes BEGIN
        INSERT INTO drover_counts (status, n)
            VALUES (CASE WHEN OLD.paused AND NOT OLD.terminal THEN 'paused' ELSE OLD.state END, -1)
            ON CONFLICT (status) DO UPDATE SET n = n - 1;
    END",
];

/// [`SQLITE_TRIGGERS`], for PostgreSQL.
const POSTGRES_TRIGGERS: &[&str] = &[
    "CREATE OR REPLACE FUNCTION drover_event() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO events (process_id, checkpoint, paused, at, epoch)
            VALUES (NEW.id, NEW.checkpoint, NEW.paused, NEW.updated_at, NEW.epoch);
        RETURN NULL;
    END $$",
    "CREATE OR REPLACE FUNCTION drover_count() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        old_status TEXT;
        new_status TEXT;
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            old_status := CASE WHEN OLD.paused AND NOT OLD.terminal THEN 'paused' ELSE OLD.state END;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            new_status := CASE WHEN NEW.paused AND NOT NEW.terminal THEN 'paused' ELSE NEW.state END;
        END IF;
        IF old_status IS DISTINCT FROM new_status THEN
            IF old_status IS NOT NULL THEN
                INSERT INTO drover_counts (status, n) VALUES (old_status, -1)
                    ON CONFLICT (status) DO UPDATE SET n = drover_counts.n - 1;
            END IF;
            IF new_status IS NOT NULL THEN
                INSERT INTO drover_counts (status, n) VALUES (new_status, 1)
                    ON CONFLICT (status) DO UPDATE SET n = drover_counts.n + 1;
            END IF;
        END IF;
        RETURN NULL;
    END $$",
    "CREATE TRIGGER drover_inserted AFTER INSERT ON processes FOR EACH ROW EXECUTE FUNCTION drover_event()",
    "CREATE TRIGGER drover_recorded AFTER UPDATE OF checkpoint ON processes FOR EACH ROW EXECUTE FUNCTION drover_event()",
    "CREATE TRIGGER drover_counted AFTER INSERT OR DELETE OR UPDATE OF state, paused, terminal ON processes
        FOR EACH ROW EXECUTE FUNCTION drover_count()",
];

const ENGINES: &str = "CREATE TABLE drover_engines (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    pool TEXT NOT NULL
)";

/// Places (a kind's computer) held by one engine at a time: valid while
/// their owner's lease holds.
const LEASES: &str = "CREATE TABLE drover_leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL)";

/// The steps from schema version 1 to 2 (ownership, children, places).
fn migrate_1_to_2() -> Vec<String> {
    vec![
        "ALTER TABLE processes ADD COLUMN owner TEXT".to_owned(),
        "ALTER TABLE processes ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0".to_owned(),
        "ALTER TABLE processes ADD COLUMN host TEXT".to_owned(),
        "ALTER TABLE processes ADD COLUMN place TEXT".to_owned(),
        "ALTER TABLE processes ADD COLUMN pending_work BOOLEAN NOT NULL DEFAULT FALSE".to_owned(),
        // Version 1 marked nothing: every terminal checkpoint with a pending
        // cancel or delete is work to finish (the engine asks its kind, and
        // clears the mark where there is none).
        "UPDATE processes SET pending_work = TRUE WHERE terminal AND checkpoint LIKE '%_pending\":true%'".to_owned(),
        "CREATE INDEX processes_parent ON processes (parent)".to_owned(),
        ENGINES.to_owned(),
        LEASES.to_owned(),
        "ALTER TABLE events ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0".to_owned(),
        "UPDATE drover_meta SET value = '2' WHERE key = 'schema_version'".to_owned(),
    ]
}

/// The steps from schema version 2 to 3 (the state's name in a column, and
/// the indexes of paged lists and prunes); [`Store::migrate`] fills the new
/// column from each checkpoint, and a place from a spec's computer where a
/// version 1 store recorded none.
fn migrate_2_to_3() -> Vec<String> {
    // Version 2's indexes of open processes and of parents are the list's
    // now (every index is written at every transition PostgreSQL cannot
    // make in place: as few as will do).
    [
        "ALTER TABLE processes ADD COLUMN state TEXT NOT NULL DEFAULT ''",
        "DROP INDEX processes_open",
        "DROP INDEX processes_parent",
    ]
    .into_iter()
    .chain(LIST_INDEXES.iter().copied())
    .chain([COUNTS, "UPDATE drover_meta SET value = '3' WHERE key = 'schema_version'"])
    .map(str::to_owned)
    .collect()
}

const SQLITE_SERIAL: &str = "INTEGER PRIMARY KEY AUTOINCREMENT";
const POSTGRES_SERIAL: &str = "BIGSERIAL PRIMARY KEY";

impl Store {
    /// Opens (or creates) the store at `location`: a `postgres://` URL, or a
    /// SQLite file path (optionally as `sqlite:PATH`).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotAStore`] when the location holds something else (it is
    /// never overwritten), [`StoreError::TooNew`] when a newer drover wrote it,
    /// [`StoreError::Db`] when the database cannot be reached.
    pub async fn open(location: &str) -> Result<Store, StoreError> {
        boxed(async move {
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                Store::open_postgres(location).await
            } else {
                Store::open_sqlite(Path::new(location.strip_prefix("sqlite:").unwrap_or(location))).await
            }
        })
        .await
    }

    /// Opens (or creates) a SQLite store.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        let location = path.display().to_string();
        let db_err = |e: sqlx::Error| StoreError::Db { location: location.clone(), message: e.to_string() };
        if let Ok(mut file) = std::fs::File::open(path) {
            use std::io::Read;
            let mut header = [0u8; 16];
            let n = file.read(&mut header).unwrap_or(0);
            if n > 0 && (n < 16 || &header != b"SQLite format 3\0") {
                return Err(StoreError::NotAStore { location, problem: "not an SQLite database".into() });
            }
        }
        let url = format!("sqlite://{}", path.display());
        let mut judged = Judged::Create;
        // Look before touching: a read-only connection that sets no pragma
        // that would rewrite the file (switching to WAL changes its header).
        if path.exists() {
            use sqlx::{ConnectOptions, Connection};
            let mut probe = SqliteConnectOptions::from_str(&url)
                .map_err(db_err)?
                .read_only(true)
                .connect()
                .await
                .map_err(db_err)?;
            let tables = sqlite_tables(&mut probe).await.map_err(db_err)?;
            let meta = if tables.iter().any(|t| t == "drover_meta") {
                Some(meta_rows(&mut probe).await.map_err(db_err)?)
            } else {
                None
            };
            probe.close().await.map_err(db_err)?;
            judged = judge(&location, &tables, meta)?;
        }
        private_files(path).map_err(|e| StoreError::Db { location: location.clone(), message: e.to_string() })?;
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(db_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A statement that fails for want of space (or on I/O) may make
            // SQLite roll the transaction back by itself, behind sqlx's count
            // of open transactions; sqlx's own rollback may then leave a write
            // transaction open on the connection, and the store locked for
            // every other one. So a connection goes back to the pool with no
            // transaction open, whatever happened (outside one, the ROLLBACK
            // is refused, harmlessly).
            .after_release(|conn, _| {
                Box::pin(async move {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(db_err)?;
        let tables = sqlite_tables(&mut *pool.acquire().await.map_err(db_err)?).await.map_err(db_err)?;
        let db = Db::Sqlite(pool);
        if judge(&location, &tables, None)? == Judged::Create {
            Store::create(&db, &location, &schema(SQLITE_SERIAL, SQLITE_TRIGGERS)).await?;
        } else {
            Store::migrate(&db, &location, judged).await?;
        }
        Ok(Store::start(db, location))
    }

    /// Opens (or creates) a PostgreSQL store in the database of `url`.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        // Never the password in a message: neither the user's part (which
        // may hold `@`) nor the query (which may say `password=`).
        let location = {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("postgres://…@{host}/{}", path.split('?').next().unwrap_or(""))
        };
        let db_err = |e: sqlx::Error| StoreError::Db { location: location.clone(), message: e.to_string() };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // A server that is away is said soon (each write waits, tries
            // again and says so), well within an engine's lease.
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(db_err)?;
        let tables: Vec<String> =
            sqlx::query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()")
                .fetch_all(&pool)
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.get::<String, _>(0))
                .collect();
        // A shared database may hold other tables; ours must not collide.
        let ours: Vec<String> = tables.into_iter().filter(|t| OUR_TABLES.contains(&t.as_str())).collect();
        let meta = if ours.iter().any(|t| t == "drover_meta") {
            Some(pg_meta_rows(&pool).await.map_err(db_err)?)
        } else {
            None
        };
        let db = Db::Postgres(pool);
        match judge(&location, &ours, meta)? {
            Judged::Create => Store::create(&db, &location, &schema(POSTGRES_SERIAL, POSTGRES_TRIGGERS)).await?,
            judged => Store::migrate(&db, &location, judged).await?,
        }
        Ok(Store::start(db, location))
    }

    /// Runs `statements` in one transaction (creating the schema in an empty
    /// database, or one step of a migration).
    async fn create(db: &Db, location: &str, statements: &[String]) -> Result<(), StoreError> {
        let db_err = |e: sqlx::Error| StoreError::Db { location: location.to_owned(), message: e.to_string() };
        on_db!(db, pool => {
            let mut tx = pool.begin().await.map_err(db_err)?;
            for statement in statements {
                sqlx::query(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *tx).await.map_err(db_err)?;
            }
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    /// Brings an existing store to this schema version, one transaction per
    /// step.
    ///
    /// Engines opening one store at once migrate it once: the step takes the
    /// write lock first (a no-op update of the version), reads the version
    /// again, and does nothing if another engine migrated meanwhile.
    async fn migrate(db: &Db, location: &str, judged: Judged) -> Result<(), StoreError> {
        if !matches!(judged, Judged::Existing(1..=3)) {
            return Ok(());
        }
        let db_err = |e: sqlx::Error| StoreError::Db { location: location.to_owned(), message: e.to_string() };
        on_db!(db, pool => {
            let mut tx = pool.begin().await.map_err(db_err)?;
            if matches!(db, Db::Postgres(_)) {
                sqlx::query("LOCK TABLE drover_meta IN EXCLUSIVE MODE").execute(&mut *tx).await.map_err(db_err)?;
            }
            sqlx::query("UPDATE drover_meta SET value = value WHERE key = 'schema_version'")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            let version: String = sqlx::query("SELECT value FROM drover_meta WHERE key = 'schema_version'")
                .fetch_one(&mut *tx)
                .await
                .map_err(db_err)?
                .get(0);
            let mut steps = Vec::new();
            if version == "1" {
                steps.extend(migrate_1_to_2());
            }
            if version == "1" || version == "2" {
                steps.extend(migrate_2_to_3());
            }
            for statement in &steps {
                sqlx::query(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *tx).await.map_err(db_err)?;
            }
            if !steps.is_empty() {
                // Version 3's state column, from each process's checkpoint.
                let rows = sqlx::query("SELECT id, checkpoint FROM processes").fetch_all(&mut *tx).await.map_err(db_err)?;
                let states: Vec<(String, String)> = rows
                    .iter()
                    .map(|r| (r.get::<String, _>(0), drover_kind::envelope_state_name(&r.get::<String, _>(1))))
                    .collect();
                for part in states.chunks(CHUNK) {
                    let sql = format!(
                        "UPDATE processes SET state = v.column2 FROM (VALUES {}) AS v WHERE processes.id = v.column1",
                        placeholders(part.len(), 2)
                    );
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                    for (id, state) in part {
                        query = query.bind(id).bind(state);
                    }
                    query.execute(&mut *tx).await.map_err(db_err)?;
                }
                sqlx::query(
                    "INSERT INTO drover_counts (status, n)
                     SELECT CASE WHEN paused AND NOT terminal THEN 'paused' ELSE state END, COUNT(*) FROM processes
                     GROUP BY CASE WHEN paused AND NOT terminal THEN 'paused' ELSE state END",
                )
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            }
            // Version 4: the triggers, once the counts are right.
            if version != SCHEMA_VERSION.to_string() {
                let triggers = if matches!(db, Db::Postgres(_)) { POSTGRES_TRIGGERS } else { SQLITE_TRIGGERS };
                for statement in triggers.iter().chain(&["UPDATE drover_meta SET value = '4' WHERE key = 'schema_version'"]) {
                    sqlx::query(sqlx::AssertSqlSafe(*statement)).execute(&mut *tx).await.map_err(db_err)?;
                }
            }
            tx.commit().await.map_err(db_err)?;
        });
        Ok(())
    }

    fn start(db: Db, location: String) -> Store {
        let (writes, rx) = mpsc::unbounded_channel();
        let location: Arc<str> = location.into();
        tokio::spawn(writer(db.clone(), location.clone(), rx));
        Store { db, location, writes }
    }

    fn db_err(&self, e: sqlx::Error) -> StoreError {
        StoreError::Db { location: self.location.to_string(), message: e.to_string() }
    }

    async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let closed =
            || StoreError::Db { location: self.location.to_string(), message: "the store's writer stopped".into() };
        self.writes.send(Request { write, at: now_ms(), done }).map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Inserts a process. Durable when it returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Duplicate`] if the id is taken, [`StoreError::Db`].
    pub async fn insert(&self, process: NewProcess) -> Result<(), StoreError> {
        self.write(Write::Insert(process)).await
    }

    /// Inserts several processes in one transaction: all of them, or (on
    /// any error) none. Durable when it returns.
    ///
    /// # Cancel safety
    ///
    /// Dropping it does not withdraw the write: it commits or fails whole.
    ///
    /// # Errors
    ///
    /// [`StoreError::Duplicate`] naming the first id that is taken (or given
    /// twice), [`StoreError::Db`]; nothing is written then.
    pub async fn insert_all(&self, processes: Vec<NewProcess>) -> Result<(), StoreError> {
        if processes.is_empty() {
            return Ok(());
        }
        self.write(Write::InsertAll(processes)).await
    }

    /// Records a transition: the process's new checkpoint, and an event in its
    /// log. Durable when it returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unknown`] if there is no such process, [`StoreError::Db`].
    pub async fn record(&self, id: &str, checkpoint: String, paused: bool, terminal: bool) -> Result<(), StoreError> {
        self.write(Write::Record { id: id.to_owned(), record: Record::new(checkpoint, paused, terminal) }).await
    }

    /// Records a transition with all it may carry: children inserted in the
    /// same transaction, a mark of work left to finish, and a fence (the
    /// write commits only while the writer still owns the process). Durable
    /// when it returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Fenced`] when another engine owns the process now (then
    /// nothing of it is written), [`StoreError::Duplicate`] when a child's id
    /// is another process's, [`StoreError::Unknown`], [`StoreError::Db`].
    pub async fn commit_record(&self, id: &str, record: Record) -> Result<(), StoreError> {
        self.write(Write::Record { id: id.to_owned(), record }).await
    }

    /// The database's clock now, in Unix milliseconds: the clock every lease
    /// is timed by, whichever machine asks.
    fn now_sql(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000 AS BIGINT)",
            Db::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    /// Supersedes, for engine `$2` taking over, the other engines of pool
    /// `$1` whose lease expired and that own work (an unfinished process, or
    /// a terminal one with work left): none of them renews its lease again
    /// (see [`heartbeat`](Self::heartbeat)). Run in the transaction that
    /// takes their processes over, before it.
    fn supersede_sql(&self) -> String {
        let now = self.now_sql();
        format!(
            "UPDATE drover_engines SET lease_until = -1
             WHERE pool = $1 AND id <> $2 AND lease_until > 0 AND lease_until < {now}
             AND EXISTS (SELECT 1 FROM processes p WHERE p.owner = drover_engines.id AND (NOT p.terminal OR p.pending_work))"
        )
    }

    /// Registers engine `id` (or renews it, if it registered before) with a
    /// lease of `lease_ms` from the database's clock now.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn register_engine(
        &self,
        id: &str,
        host: &str,
        pid: u32,
        pool: &str,
        lease_ms: i64,
    ) -> Result<(), StoreError> {
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO drover_engines (id, host, pid, started_at, lease_until, pool) VALUES ($1, $2, $3, {now}, {now} + $4, $5)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,
             lease_until = excluded.lease_until, pool = excluded.pool"
        );
        on_db!(&self.db, db => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).bind(host).bind(i64::from(pid)).bind(lease_ms).bind(pool)
                .execute(db).await.map_err(|e| self.db_err(e))?;
        });
        Ok(())
    }

    /// Renews engine `id`'s lease for `lease_ms` from the database's clock
    /// now, unless it was released or superseded: `false` then (another
    /// engine took, or may take, its processes; it must stop driving them).
    /// A lease that merely ran out, while the store could not be written (a
    /// lock, a full disk), is renewed: nobody used its expiry, since taking
    /// over an expired engine's processes or places supersedes it first (in
    /// the same transaction).
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn heartbeat(&self, id: &str, lease_ms: i64) -> Result<bool, StoreError> {
        let now = self.now_sql();
        let sql = format!("UPDATE drover_engines SET lease_until = {now} + $1 WHERE id = $2 AND lease_until > 0");
        let updated = on_db!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(lease_ms).bind(id).execute(pool).await.map_err(|e| self.db_err(e))?.rows_affected()
        });
        Ok(updated == 1)
    }

    /// Ends engine `id`'s lease now (a clean stop), so that another engine
    /// may take its processes over at once.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn release_engine(&self, id: &str) -> Result<(), StoreError> {
        on_db!(&self.db, pool => {
            sqlx::query("UPDATE drover_engines SET lease_until = 0 WHERE id = $1").bind(id).execute(pool).await.map_err(|e| self.db_err(e))?;
        });
        Ok(())
    }

    /// Every engine that registered, with whether its lease holds and how
    /// many unfinished processes it owns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn engines(&self) -> Result<Vec<EngineRecord>, StoreError> {
        let now = self.now_sql();
        let sql = format!(
            "SELECT e.id, e.host, e.pid, e.started_at, e.lease_until, e.pool, e.lease_until >= {now} AS live,
                    (SELECT COUNT(*) FROM processes p WHERE p.owner = e.id AND NOT p.terminal) AS owns
             FROM drover_engines e ORDER BY e.started_at, e.id"
        );
        let mut engines: Vec<EngineRecord> = on_db!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(|r| EngineRecord {
                id: r.get(0), host: r.get(1), pid: r.get(2), started_at: r.get(3), lease_until: r.get(4), pool: r.get(5),
                live: r.get(6), owns: r.get(7), places: Vec::new(),
            }).collect()
        });
        for engine in &mut engines {
            engine.places = self.places(&engine.id).await?;
        }
        Ok(engines)
    }

    /// Claims for engine `owner` of `pool` up to `limit` unfinished processes
    /// that are its own already, that nobody owns (pool `daemon` only), or
    /// whose owner, of the same pool, let its lease expire, oldest first
    /// (its own only with `own`, when it starts): each claimed one's epoch
    /// goes up by one, which fences every later write of its former owner.
    /// Children are claimed with their parents' families: a process whose
    /// parent is unfinished is claimed only with it (in the same call).
    /// On PostgreSQL, rows another engine is claiming are skipped (`FOR
    /// UPDATE SKIP LOCKED`), so engines claiming at once never wait on each
    /// other nor claim the same process.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn claim(
        &self,
        owner: &str,
        pool: &str,
        limit: i64,
        own: bool,
    ) -> Result<Vec<StoredProcess>, StoreError> {
        let now = self.now_sql();
        let lock = match self.db {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => "FOR UPDATE OF p SKIP LOCKED",
        };
        // Its own ones only when it (re)starts: a live engine's own processes
        // run already, and a new claim would fence them.
        let mine = if own { "p.owner = $1" } else { "FALSE" };
        let who = format!(
            "({mine} OR (p.owner IS NULL AND $3 = 'daemon')
              OR EXISTS (SELECT 1 FROM drover_engines e WHERE e.id = p.owner AND e.pool = $3 AND e.lease_until < {now}))"
        );
        // A process with a place (a computer) goes only to the engine that
        // holds the place, so that a cluster sees one engine at a time.
        let place = "($3 <> 'daemon' OR p.place IS NULL
                      OR EXISTS (SELECT 1 FROM drover_leases l WHERE l.name = p.kind || ':' || p.place AND l.owner = $1))";
        let root =
            "(p.parent IS NULL OR NOT EXISTS (SELECT 1 FROM processes q WHERE q.id = p.parent AND NOT q.terminal))";
        let roots_sql = format!(
            "UPDATE processes SET owner = $1, epoch = epoch + 1 WHERE id IN (
                SELECT p.id FROM processes p WHERE NOT p.terminal AND {who} AND {root} AND {place}
                ORDER BY p.created_at, p.id LIMIT $2 {lock}
             ) RETURNING {COLS}"
        );
        let db_err = |e: sqlx::Error| self.db_err(e);
        let supersede = self.supersede_sql();
        let mut claimed: Vec<StoredProcess> = on_db!(&self.db, db => {
            let mut tx = db.begin().await.map_err(db_err)?;
            sqlx::query(sqlx::AssertSqlSafe(supersede)).bind(pool).bind(owner).execute(&mut *tx).await.map_err(db_err)?;
            let mut claimed: Vec<StoredProcess> = sqlx::query(sqlx::AssertSqlSafe(roots_sql))
                .bind(owner).bind(limit).bind(pool).fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(process).collect();
            // Their unfinished descendants, with them.
            let mut parents: Vec<String> = claimed.iter().map(|p| p.id.clone()).collect();
            while !parents.is_empty() {
                let mut next = Vec::new();
                for chunk in parents.chunks(CHUNK) {
                    let list = (2..chunk.len() + 2).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
                    let sql = format!("UPDATE processes SET owner = $1, epoch = epoch + 1 WHERE NOT terminal AND parent IN ({list}) RETURNING {COLS}");
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner);
                    for id in chunk {
                        query = query.bind(id);
                    }
                    let children: Vec<StoredProcess> = query.fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(process).collect();
                    next.extend(children.iter().map(|c| c.id.clone()));
                    claimed.extend(children);
                }
                parents = next;
            }
            tx.commit().await.map_err(db_err)?;
            claimed
        });
        claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(claimed)
    }

    /// Claims, for engine `owner` of `pool`, the terminal processes whose
    /// state left work to finish (a cancel or a delete to confirm), as
    /// [`claim`](Self::claim) decides who may (its own ones with `own`, when
    /// it starts), each at a new epoch: one engine does the work, and
    /// records its end fenced.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn claim_pending(&self, owner: &str, pool: &str, own: bool) -> Result<Vec<StoredProcess>, StoreError> {
        let now = self.now_sql();
        let mine = if own { "p.owner = $1" } else { "FALSE" };
        let lock = match self.db {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => "FOR UPDATE OF p SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE processes SET owner = $1, epoch = epoch + 1 WHERE id IN (
                SELECT p.id FROM processes p WHERE p.terminal AND p.pending_work
                AND ({mine} OR (p.owner IS NULL AND $2 = 'daemon')
                     OR EXISTS (SELECT 1 FROM drover_engines e WHERE e.id = p.owner AND e.pool = $2 AND e.lease_until < {now}))
                ORDER BY p.created_at, p.id {lock}
             ) RETURNING {COLS}"
        );
        let supersede = self.supersede_sql();
        let db_err = |e: sqlx::Error| self.db_err(e);
        Ok(on_db!(&self.db, db => {
            let mut tx = db.begin().await.map_err(db_err)?;
            sqlx::query(sqlx::AssertSqlSafe(supersede)).bind(pool).bind(owner).execute(&mut *tx).await.map_err(db_err)?;
            let claimed = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(owner).bind(pool).fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(process).collect();
            tx.commit().await.map_err(db_err)?;
            claimed
        }))
    }

    /// Takes place `name` (`scheduler:cluster`) for engine `owner` if it is
    /// free, its own already, or held by an engine whose lease expired; and
    /// says which engine holds it now.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn acquire(&self, name: &str, owner: &str) -> Result<String, StoreError> {
        let now = self.now_sql();
        let take = format!(
            "INSERT INTO drover_leases (name, owner) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET owner = excluded.owner
             WHERE drover_leases.owner = excluded.owner
                OR NOT EXISTS (SELECT 1 FROM drover_engines e WHERE e.id = drover_leases.owner AND e.lease_until >= {now})"
        );
        // The expired holder is superseded before its place is taken.
        let supersede = format!(
            "UPDATE drover_engines SET lease_until = -1 WHERE id <> $2 AND lease_until > 0 AND lease_until < {now}
             AND id = (SELECT owner FROM drover_leases WHERE name = $1)"
        );
        Ok(on_db!(&self.db, db => {
            sqlx::query(sqlx::AssertSqlSafe(supersede)).bind(name).bind(owner).execute(db).await.map_err(|e| self.db_err(e))?;
            sqlx::query(sqlx::AssertSqlSafe(take)).bind(name).bind(owner).execute(db).await.map_err(|e| self.db_err(e))?;
            sqlx::query("SELECT owner FROM drover_leases WHERE name = $1").bind(name).fetch_one(db).await.map_err(|e| self.db_err(e))?.get::<String, _>(0)
        }))
    }

    /// Hands engine `owner`'s unfinished processes on places it does not
    /// hold (another engine took the place while this one was away) to
    /// nobody, at a new epoch: the place's holder claims them, and any write
    /// of their old driver is refused. Children stay with their unfinished
    /// parent's engine (a family is driven by one engine). Returns how many.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn hand_over(&self, owner: &str) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE processes SET owner = NULL, epoch = epoch + 1
            WHERE owner = $1 AND NOT terminal AND place IS NOT NULL
            AND (parent IS NULL OR NOT EXISTS (SELECT 1 FROM processes q WHERE q.id = processes.parent AND NOT q.terminal))
            AND NOT EXISTS (SELECT 1 FROM drover_leases l WHERE l.name = processes.kind || ':' || processes.place AND l.owner = $1)";
        Ok(on_db!(&self.db, db => {
            sqlx::query(SQL).bind(owner).execute(db).await.map_err(|e| self.db_err(e))?.rows_affected()
        }))
    }

    /// The places engine `owner` holds.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn places(&self, owner: &str) -> Result<Vec<String>, StoreError> {
        Ok(on_db!(&self.db, db => {
            sqlx::query("SELECT name FROM drover_leases WHERE owner = $1 ORDER BY name").bind(owner).fetch_all(db).await
                .map_err(|e| self.db_err(e))?.iter().map(|r| r.get::<String, _>(0)).collect()
        }))
    }

    /// Ends an unfinished process that cannot go on where it was claimed (a
    /// local process bound to another host): its latest checkpoint becomes
    /// `{"v": 0, "state": {"Lost": {"reason": ...}}}`, terminal, under the
    /// claim `fence`. Its kind's own history is kept in its events.
    ///
    /// # Errors
    ///
    /// [`StoreError::Fenced`], [`StoreError::Db`].
    pub async fn mark_lost(&self, id: &str, reason: &str, fence: Fence) -> Result<(), StoreError> {
        let checkpoint = serde_json::json!({ "v": 0, "state": { "Lost": { "reason": reason } } }).to_string();
        let mut record = Record::new(checkpoint, false, true);
        record.fence = Some(fence);
        self.commit_record(id, record).await?;
        self.mark_error(id, reason).await
    }

    /// The children of `parent`, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn children(&self, parent: &str) -> Result<Vec<StoredProcess>, StoreError> {
        let sql = format!("SELECT {COLS} FROM processes WHERE parent = $1 ORDER BY created_at, id");
        Ok(on_db!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(parent).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(process).collect()
        }))
    }

    /// Marks a process that an engine could not load or resume, keeping its
    /// checkpoint as it is (nothing is lost: a fixed drover can load it later).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unknown`], [`StoreError::Db`].
    pub async fn mark_error(&self, id: &str, error: &str) -> Result<(), StoreError> {
        let updated = on_db!(&self.db, pool => {
            sqlx::query("UPDATE processes SET error = $1 WHERE id = $2")
                .bind(error)
                .bind(id)
                .execute(pool)
                .await
                .map_err(|e| self.db_err(e))?
                .rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::Unknown(id.to_owned()));
        }
        Ok(())
    }

    /// One process.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn get(&self, id: &str) -> Result<Option<StoredProcess>, StoreError> {
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error, owner, epoch, host, place, pending_work
                           FROM processes WHERE id = $1";
        let row = on_db!(&self.db, pool => {
            sqlx::query(SQL).bind(id).fetch_optional(pool).await.map_err(|e| self.db_err(e))?.map(|r| process(&r))
        });
        Ok(row)
    }

    /// Every process that has not reached a terminal state, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn unfinished(&self) -> Result<Vec<StoredProcess>, StoreError> {
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error, owner, epoch, host, place, pending_work
                           FROM processes WHERE NOT terminal ORDER BY created_at, id";
        Ok(on_db!(&self.db, pool => {
            sqlx::query(SQL).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(process).collect()
        }))
    }

    /// Every process, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn list(&self) -> Result<Vec<StoredProcess>, StoreError> {
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error, owner, epoch, host, place, pending_work
                           FROM processes ORDER BY created_at, id";
        Ok(on_db!(&self.db, pool => {
            sqlx::query(SQL).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(process).collect()
        }))
    }

    /// One page of the processes that match `filter`, oldest first (by
    /// `created_at`, then `id`), starting after `after`: the filter and
    /// the page are SQL, each a range of one index, so a page costs the
    /// same however many processes the store holds. Paging from no cursor
    /// to the last page returns every process that was there all along
    /// exactly once, whatever is inserted or removed meanwhile.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping it changes nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn list_page(
        &self,
        filter: &ListFilter,
        after: Option<&Cursor>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut binds: Vec<Bind<'_>> = Vec::new();
        fn arg<'a>(binds: &mut Vec<Bind<'a>>, value: Bind<'a>) -> String {
            binds.push(value);
            format!("${}", binds.len())
        }
        match filter.state.as_deref() {
            None => {}
            Some("active") => clauses.push("NOT terminal".to_owned()),
            // A paused process's status, or a state of that name.
            Some("paused") => clauses.push("((paused AND NOT terminal) OR state = 'paused')".to_owned()),
            Some(state) => clauses.push(format!("state = {}", arg(&mut binds, Bind::Text(state)))),
        }
        for (column, value) in [("kind", &filter.kind), ("place", &filter.place), ("parent", &filter.parent)] {
            if let Some(value) = value {
                clauses.push(format!("{column} = {}", arg(&mut binds, Bind::Text(value))));
            }
        }
        if let Some(cursor) = after {
            let (at, id) = (arg(&mut binds, Bind::Int(cursor.created_at)), arg(&mut binds, Bind::Text(&cursor.id)));
            clauses.push(format!("(created_at > {at} OR (created_at = {at} AND id > {id}))"));
        }
        let limit = limit.get();
        let fetch = arg(&mut binds, Bind::Int(i64::try_from(limit).unwrap_or(i64::MAX) + 1));
        let filter = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let sql = format!("SELECT {COLS} FROM processes {filter} ORDER BY created_at, id LIMIT {fetch}");
        let mut processes: Vec<StoredProcess> = boxed(async {
            Ok::<_, StoreError>(on_db!(&self.db, pool => {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for bind in &binds {
                    query = match bind {
                        Bind::Text(text) => query.bind(*text),
                        Bind::Int(n) => query.bind(*n),
                    };
                }
                query.fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(process).collect()
            }))
        })
        .await?;
        let next = if processes.len() > limit {
            processes.truncate(limit);
            processes.last().map(Cursor::after)
        } else {
            None
        };
        Ok(Page { processes, next })
    }

    /// How many processes there are per status: a state's name, or `paused`
    /// for a paused process that has not ended.
    ///
    /// # Cancel safety
    ///
    /// A read: dropping it changes nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn status_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        // Kept by every write (see `drover_counts`): one small read.
        const SQL: &str = "SELECT status, n FROM drover_counts WHERE n <> 0 ORDER BY status";
        boxed(async {
            Ok(on_db!(&self.db, pool => {
                sqlx::query(SQL).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter()
                    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1))).collect()
            }))
        })
        .await
    }

    /// Removes one batch of ended processes that ended before `before` (Unix
    /// milliseconds), looking at up to `roots` processes without a parent,
    /// oldest first (by `created_at`), after `after`: each with its whole family
    /// (its children, theirs, ...), and only families in which every
    /// process has ended and left no work to finish (a cancel to confirm).
    /// A family goes with its event log in one transaction: the store never
    /// holds a process without its events, nor events without their process.
    /// With `dry_run`, nothing is removed: the batch says what would be.
    ///
    /// Call it again from [`PruneBatch::next`] until that is `None`.
    ///
    /// # Cancel safety
    ///
    /// Dropping it before it returns rolls the batch back whole, or leaves
    /// it committed whole.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`]; nothing of the batch is removed then.
    pub async fn prune_batch(
        &self,
        before: i64,
        after: Option<&PruneCursor>,
        roots: PageLimit,
        dry_run: bool,
    ) -> Result<PruneBatch, StoreError> {
        let start = after.cloned().unwrap_or(PruneCursor { created_at: i64::MIN, id: String::new() });
        let roots_sql = "SELECT id, created_at FROM processes
            WHERE terminal AND parent IS NULL AND NOT pending_work AND updated_at < $1
            AND (created_at > $2 OR (created_at = $2 AND id > $3))
            ORDER BY created_at, id LIMIT $4";
        let db_err = |e: sqlx::Error| self.db_err(e);
        let limit = i64::try_from(roots.get()).unwrap_or(i64::MAX);
        boxed(async move { on_db!(&self.db, db => {
            let mut tx = db.begin().await.map_err(db_err)?;
            if !dry_run {
                // The write lock first (on SQLite, a transaction that read
                // first cannot write once another committed; on PostgreSQL,
                // prunes at once take their turns).
                sqlx::query("UPDATE drover_meta SET value = value WHERE key = 'schema_version'")
                    .execute(&mut *tx)
                    .await
                    .map_err(db_err)?;
            }
            let found: Vec<(String, i64)> = sqlx::query(roots_sql).bind(before).bind(start.created_at).bind(&start.id).bind(limit)
                .fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(|r| (r.get(0), r.get(1))).collect();
            let next = if found.len() as i64 == limit {
                found.last().map(|(id, created_at)| PruneCursor { created_at: *created_at, id: id.clone() })
            } else {
                None
            };
            // Their families, each member with its root and its depth.
            let mut members: Vec<(String, i64, StoredProcess)> = Vec::new();
            for part in found.chunks(CHUNK) {
                let list = in_list(part.len());
                let sql = format!(
                    "WITH RECURSIVE fam(root, id, depth) AS (
                        SELECT id, id, CAST(0 AS BIGINT) FROM processes WHERE id IN ({list})
                        UNION ALL SELECT fam.root, c.id, fam.depth + 1 FROM processes c JOIN fam ON c.parent = fam.id
                     ) SELECT fam.root AS root, fam.depth AS depth, {P_COLS} FROM fam JOIN processes p ON p.id = fam.id"
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, _) in part {
                    query = query.bind(id);
                }
                for row in query.fetch_all(&mut *tx).await.map_err(db_err)? {
                    members.push((row.get("root"), row.get("depth"), process(&row)));
                }
            }
            // A family with a member that has not ended (or left work) stays whole.
            let kept: std::collections::HashSet<String> =
                members.iter().filter(|(_, _, p)| !p.terminal || p.pending_work).map(|(root, _, _)| root.clone()).collect();
            members.retain(|(root, _, _)| !kept.contains(root));
            // Children before their parents: no statement removes a parent whose child stays.
            members.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.2.id.cmp(&b.2.id)));
            let mut processes: Vec<StoredProcess> = members.into_iter().map(|(_, _, p)| p).collect();
            if !dry_run {
                // What this transaction removed: a prune running at once
                // (another daemon's) may have taken some first.
                let mut removed = std::collections::HashSet::new();
                for part in processes.chunks(CHUNK) {
                    let list = in_list(part.len());
                    for table in ["events WHERE process_id", "processes WHERE id"] {
                        let returning = if table.starts_with("processes") { " RETURNING id" } else { "" };
                        let sql = format!("DELETE FROM {table} IN ({list}){returning}");
                        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                        for p in part {
                            query = query.bind(&p.id);
                        }
                        for row in query.fetch_all(&mut *tx).await.map_err(db_err)? {
                            removed.insert(row.get::<String, _>(0));
                        }
                    }
                }
                // (The counts move with each deleted row: schema version 4's triggers.)
                processes.retain(|p| removed.contains(&p.id));
                tx.commit().await.map_err(db_err)?;
            }
            Ok(PruneBatch { processes, next })
        }) })
        .await
    }

    /// How many processes the store holds.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn count(&self) -> Result<i64, StoreError> {
        Ok(on_db!(&self.db, pool => {
            sqlx::query("SELECT COUNT(*) FROM processes").fetch_one(pool).await.map_err(|e| self.db_err(e))?.get::<i64, _>(0)
        }))
    }

    /// A process's event log, in order.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn events(&self, id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        const SQL: &str = "SELECT seq, at, checkpoint, paused, epoch FROM events WHERE process_id = $1 ORDER BY seq";
        Ok(on_db!(&self.db, pool => {
            sqlx::query(SQL)
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(e))?
                .iter()
                .map(|r| StoredEvent { seq: r.get(0), at: r.get(1), checkpoint: r.get(2), paused: r.get(3), epoch: r.get(4) })
                .collect()
        }))
    }

    /// Where the store is (a PostgreSQL URL without its password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the store is a file on this machine (SQLite): then no engine
    /// elsewhere can write to it while this one cannot, so an engine that
    /// cannot renew its lease for a while (a lock, a full disk) has lost
    /// nothing to another (see [`heartbeat`](Self::heartbeat)).
    pub fn is_local(&self) -> bool {
        matches!(self.db, Db::Sqlite(_))
    }
}

async fn sqlite_tables(conn: &mut sqlx::SqliteConnection) -> Result<Vec<String>, sqlx::Error> {
    Ok(sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect())
}

async fn meta_rows(conn: &mut sqlx::SqliteConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    Ok(meta_pairs(&sqlx::query("SELECT key, value FROM drover_meta").fetch_all(conn).await?))
}

async fn pg_meta_rows(pool: &PgPool) -> Result<Vec<(String, String)>, sqlx::Error> {
    Ok(meta_pairs(&sqlx::query("SELECT key, value FROM drover_meta").fetch_all(pool).await?))
}

fn meta_pairs<R: Row>(rows: &[R]) -> Vec<(String, String)>
where
    usize: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter().map(|r| (r.get::<String, _>(0), r.get::<String, _>(1))).collect()
}

/// What to do with a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    /// It is empty: create the schema.
    Create,
    /// It is a store of this schema version (0: not read).
    Existing(u32),
}

/// Decides what to do with a database that has `tables` (and, if it has
/// `drover_meta`, those rows), or refuses it.
fn judge(location: &str, tables: &[String], meta: Option<Vec<(String, String)>>) -> Result<Judged, StoreError> {
    if !tables.iter().any(|t| t == "drover_meta") {
        if tables.is_empty() {
            return Ok(Judged::Create);
        }
        return Err(StoreError::NotAStore {
            location: location.to_owned(),
            problem: format!("it has other tables: {}", tables.join(", ")),
        });
    }
    let Some(rows) = meta else { return Ok(Judged::Existing(0)) };
    let get = |k: &str| rows.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    if get("magic").as_deref() != Some(MAGIC) {
        return Err(StoreError::NotAStore {
            location: location.to_owned(),
            problem: "its drover_meta table does not say drover-store".into(),
        });
    }
    let found: u32 = get("schema_version").and_then(|v| v.parse().ok()).unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew { location: location.to_owned(), found, known: SCHEMA_VERSION });
    }
    Ok(Judged::Existing(found))
}

fn process<R: Row>(r: &R) -> StoredProcess
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    bool: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    StoredProcess {
        id: r.get("id"),
        kind: r.get("kind"),
        spec: r.get("spec"),
        parent: r.get("parent"),
        checkpoint: r.get("checkpoint"),
        paused: r.get("paused"),
        terminal: r.get("terminal"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        error: r.get("error"),
        owner: r.get("owner"),
        epoch: r.get("epoch"),
        host: r.get("host"),
        place: r.get("place"),
        pending_work: r.get("pending_work"),
    }
}

/// The single writer: takes every waiting request, commits them in one
/// transaction, then answers each. A request that fails on its own (a
/// duplicate id, an unknown process) is answered with its error and the rest
/// of the group is committed without it.
///
/// It keeps a connection of its own between groups: on SQLite that
/// connection's page cache stays valid (no other connection writes), so a
/// checkpoint reads no page back. After an error the connection goes back to
/// its pool (which rolls back whatever a failed statement left open) and
/// the next group takes another.
async fn writer(db: Db, location: Arc<str>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut group = Vec::new();
    let mut held: Option<Held> = None;
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < 4096 {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        if held.is_none() {
            held = match &db {
                Db::Sqlite(pool) => pool.acquire().await.map(Held::Sqlite),
                Db::Postgres(pool) => pool.acquire().await.map(Held::Postgres),
            }
            .map_err(|e| {
                let e = StoreError::Db { location: location.to_string(), message: e.to_string() };
                for request in group.drain(..) {
                    let _ = request.done.send(Err(e.clone()));
                }
            })
            .ok();
        }
        let Some(conn) = held.as_mut() else { continue };
        let results = commit(conn, &location, &group).await;
        if results.iter().any(|r| matches!(r, Err(StoreError::Db { .. }))) {
            held = None;
        }
        for (request, result) in group.drain(..).zip(results) {
            let _ = request.done.send(result);
        }
    }
}

/// The writer's own connection.
enum Held {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

/// Runs `$body` with `$conn` bound to the writer's connection: the same SQL for both.
macro_rules! on_held {
    ($held:expr, $conn:ident => $body:expr) => {
        match $held {
            Held::Sqlite($conn) => $body,
            Held::Postgres($conn) => $body,
        }
    };
}

/// Rows per statement: well under SQLite's limit of bound parameters.
const CHUNK: usize = 400;

/// `$1, $2, ... $n`: the placeholders of an `IN (...)` list.
fn in_list(n: usize) -> String {
    (1..=n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `($1, $2, $3), ($4, $5, $6), ...`: `rows` tuples of `width` placeholders.
fn placeholders(rows: usize, width: usize) -> String {
    let mut out = String::new();
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..width {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", r * width + c + 1));
        }
        out.push(')');
    }
    out
}

/// The statement that records checkpoints of `rows` processes: each row's
/// checkpoint where its fence (owner and epoch, or none) still holds; the
/// ids it updated come back. The event log and the counts move with it
/// (schema version 4's triggers).
fn record_sql(rows: usize) -> String {
    // VALUES columns are `column1`, `column2`, ... in SQLite and PostgreSQL alike.
    format!(
        "UPDATE processes SET checkpoint = v.column2, paused = v.column3, terminal = v.column4, updated_at = v.column5,
         pending_work = v.column6, state = v.column9
         FROM (VALUES {}) AS v
         WHERE processes.id = v.column1 AND (v.column7 = '' OR (processes.owner = v.column7 AND processes.epoch = v.column8))
         RETURNING processes.id",
        placeholders(rows, 9)
    )
}

/// Binds a [`record_sql`] statement's rows.
macro_rules! bind_records {
    ($query:expr, $records:expr) => {{
        let mut query = $query;
        for (id, r, at) in $records {
            let (owner, epoch) = r.fence.as_ref().map_or(("", 0), |f| (f.owner.as_str(), f.epoch));
            query = query
                .bind(*id)
                .bind(&r.checkpoint)
                .bind(r.paused)
                .bind(r.terminal)
                .bind(*at)
                .bind(r.pending_work)
                .bind(owner)
                .bind(epoch)
                .bind(drover_kind::envelope_state_name(&r.checkpoint));
        }
        query
    }};
}

/// A group of checkpoints alone, as one statement (atomic by itself, no
/// transaction around it). A process it did not update exists and was
/// fenced, or does not exist: one more read tells which, for those only.
async fn commit_records(conn: &mut Held, location: &str, group: &[Request]) -> Vec<Result<(), StoreError>> {
    let db_err = |e: sqlx::Error| StoreError::Db { location: location.to_owned(), message: e.to_string() };
    let rows: Vec<(&String, &Record, i64)> = group
        .iter()
        .filter_map(|r| match &r.write {
            Write::Record { id, record } => Some((id, record, r.at)),
            _ => None,
        })
        .collect();
    let attempt: Result<Vec<Result<(), StoreError>>, StoreError> = on_held!(conn, conn => async {
        let query = bind_records!(sqlx::query(sqlx::AssertSqlSafe(record_sql(rows.len()))), rows.iter().map(|(id, r, at)| (id, r, at)));
        let updated: std::collections::HashSet<String> =
            query.fetch_all(&mut **conn).await.map_err(db_err)?.iter().map(|r| r.get::<String, _>(0)).collect();
        let missing: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).filter(|id| !updated.contains(*id)).collect();
        let mut known = std::collections::HashSet::new();
        if !missing.is_empty() {
            let sql = format!("SELECT id FROM processes WHERE id IN ({})", in_list(missing.len()));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in &missing {
                query = query.bind(*id);
            }
            known.extend(query.fetch_all(&mut **conn).await.map_err(db_err)?.iter().map(|r| r.get::<String, _>(0)));
        }
        Ok(rows
            .iter()
            .map(|(id, _, _)| match (updated.contains(id.as_str()), known.contains(id.as_str())) {
                (true, _) => Ok(()),
                (false, true) => Err(StoreError::Fenced((*id).clone())),
                (false, false) => Err(StoreError::Unknown((*id).clone())),
            })
            .collect())
    }.await);
    match attempt {
        Ok(results) => results,
        Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Commits a group. A group of checkpoints alone (the common case: running
/// processes moving on) is one statement, atomic by itself: one round trip
/// to the database. Anything else is one transaction, with a few multi-row
/// statements per chunk of requests: which ids exist, the new process rows,
/// the updated process rows (fenced ones only where their owner and epoch
/// still hold), the children of the updated ones. A request that fails on
/// its own (a duplicate id, an unknown process, a stale fence) gets its
/// error and writes nothing; the others commit.
async fn commit(conn: &mut Held, location: &str, group: &[Request]) -> Vec<Result<(), StoreError>> {
    let only_records = group.len() <= CHUNK
        && group.iter().all(|r| matches!(&r.write, Write::Record { record, .. } if record.children.is_empty()));
    if only_records {
        return commit_records(conn, location, group).await;
    }
    let db_err = |e: sqlx::Error| StoreError::Db { location: location.to_owned(), message: e.to_string() };
    let attempt: Result<Vec<Result<(), StoreError>>, StoreError> = on_held!(conn, conn => async {
        let mut tx = sqlx::Connection::begin(&mut **conn).await.map_err(db_err)?;
        let mut results = Vec::with_capacity(group.len());
        for chunk in group.chunks(CHUNK) {
            // Which ids exist already (with their parents), of processes and children.
            let mut ids: Vec<&str> = Vec::new();
            for r in chunk {
                match &r.write {
                    Write::Insert(p) => ids.push(&p.id),
                    Write::InsertAll(all) => ids.extend(all.iter().map(|p| p.id.as_str())),
                    Write::Record { id, record } => {
                        ids.push(id);
                        ids.extend(record.children.iter().map(|c| c.id.as_str()));
                    }
                }
            }
            let mut existing: std::collections::HashMap<String, Option<String>> = std::collections::HashMap::new();
            for part in ids.chunks(CHUNK) {
                let sql = format!("SELECT id, parent FROM processes WHERE id IN ({})", in_list(part.len()));
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for id in part {
                    query = query.bind(*id);
                }
                for row in query.fetch_all(&mut *tx).await.map_err(db_err)? {
                    existing.insert(row.get::<String, _>(0), row.get::<Option<String>, _>(1));
                }
            }

            let first = results.len();
            let mut inserts: Vec<(&NewProcess, Option<&str>, i64)> = Vec::new();
            let mut records = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (n, request) in chunk.iter().enumerate() {
                let result = match &request.write {
                    Write::Insert(p) if existing.contains_key(&p.id) || !seen.insert(p.id.clone()) => {
                        Err(StoreError::Duplicate(p.id.clone()))
                    }
                    Write::Insert(p) => {
                        inserts.push((p, None, request.at));
                        Ok(())
                    }
                    Write::InsertAll(all) => {
                        let mut mine = std::collections::HashSet::new();
                        match all.iter().find(|p| existing.contains_key(&p.id) || seen.contains(&p.id) || !mine.insert(p.id.as_str())) {
                            Some(p) => Err(StoreError::Duplicate(p.id.clone())),
                            None => {
                                for p in all {
                                    seen.insert(p.id.clone());
                                    inserts.push((p, None, request.at));
                                }
                                Ok(())
                            }
                        }
                    }
                    Write::Record { id, .. } if !existing.contains_key(id) && !seen.contains(id) => {
                        Err(StoreError::Unknown(id.clone()))
                    }
                    Write::Record { id, record } => {
                        // A child recorded before (the same step run again
                        // after a crash cannot, but a retried write can) is
                        // left as it is; another process's id is refused.
                        let taken = record.children.iter().find(|c| match existing.get(&c.id) {
                            Some(parent) => parent.as_deref() != Some(id.as_str()),
                            None => seen.contains(&c.id),
                        });
                        match taken {
                            Some(c) => Err(StoreError::Duplicate(c.id.clone())),
                            None => {
                                for c in &record.children {
                                    seen.insert(c.id.clone());
                                }
                                records.push((n, id, record, request.at));
                                Ok(())
                            }
                        }
                    }
                };
                results.push(result);
            }
            // Processes inserted in this very group are updated below, after the inserts.
            let (old, fresh): (Vec<_>, Vec<_>) = records.iter().partition(|(_, id, _, _)| existing.contains_key(*id));
            let mut fenced = std::collections::HashSet::new();
            if !old.is_empty() {
                let query = bind_records!(
                    sqlx::query(sqlx::AssertSqlSafe(record_sql(old.len()))),
                    old.iter().map(|(_, id, r, at)| (id, r, at))
                );
                let updated: std::collections::HashSet<String> =
                    query.fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(|r| r.get::<String, _>(0)).collect();
                for (n, id, _, _) in &old {
                    if !updated.contains(*id) {
                        results[first + n] = Err(StoreError::Fenced((*id).clone()));
                        fenced.insert(id.as_str());
                    }
                }
            }
            // The children of the records that were made, created at their parent's record.
            for (_, id, r, at) in &records {
                if !fenced.contains(id.as_str()) {
                    for c in &r.children {
                        if !existing.contains_key(&c.id) {
                            inserts.push((c, Some(id.as_str()), *at));
                        }
                    }
                }
            }
            for part in inserts.chunks(CHUNK / 2) {
                let sql = format!(
                    "INSERT INTO processes (id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, owner, epoch, host, place, state)
                     VALUES {}",
                    placeholders(part.len(), 14)
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (p, parent, at) in part {
                    let parent = parent.map(str::to_owned).or_else(|| p.parent.clone());
                    let epoch: i64 = if p.owner.is_some() { 1 } else { 0 };
                    query = query.bind(&p.id).bind(&p.kind).bind(&p.spec).bind(parent).bind(&p.checkpoint)
                        .bind(false).bind(false).bind(*at).bind(*at).bind(&p.owner).bind(epoch).bind(&p.host).bind(&p.place)
                        .bind(drover_kind::envelope_state_name(&p.checkpoint));
                }
                query.execute(&mut *tx).await.map_err(db_err)?;
            }
            if !fresh.is_empty() {
                let query = bind_records!(
                    sqlx::query(sqlx::AssertSqlSafe(record_sql(fresh.len()))),
                    fresh.iter().map(|(_, id, r, at)| (id, r, at))
                );
                // Fenced like the others: a process inserted with an owner
                // takes only its owner's records.
                let updated: std::collections::HashSet<String> =
                    query.fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(|r| r.get::<String, _>(0)).collect();
                for (n, id, _, _) in &fresh {
                    if !updated.contains(*id) {
                        results[first + n] = Err(StoreError::Fenced((*id).clone()));
                    }
                }
            }
        }
        tx.commit().await.map_err(db_err)?;
        Ok(results)
    }.await);
    match attempt {
        Ok(results) => results,
        Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
    }
}
