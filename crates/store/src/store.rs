//! The store: process records and their event logs, in SQLite or PostgreSQL.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot};

/// The version of the schema this drover writes.
pub const SCHEMA_VERSION: u32 = 1;
const MAGIC: &str = "drover-store";

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
    Record { id: String, checkpoint: String, paused: bool, terminal: bool },
}

struct Request {
    write: Write,
    at: i64,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A durable store of processes: one row per process with its latest
/// checkpoint, and an append-only log of every transition.
///
/// SQLite (embedded, WAL, `synchronous = FULL`) is the default; PostgreSQL
/// serves several engines. Both have the same schema. Writes go through one
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

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The schema, the same for both backends but for the type of the event
/// log's sequence column.
fn schema(serial_key: &str) -> Vec<String> {
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
            error TEXT
        )"
        .to_owned(),
        "CREATE INDEX processes_open ON processes (id) WHERE NOT terminal".to_owned(),
        format!(
            "CREATE TABLE events (
                seq {serial_key},
                process_id TEXT NOT NULL REFERENCES processes(id),
                at BIGINT NOT NULL,
                checkpoint TEXT NOT NULL,
                paused BOOLEAN NOT NULL
            )"
        ),
        "CREATE INDEX events_process ON events (process_id, seq)".to_owned(),
    ]
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
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            Store::open_postgres(location).await
        } else {
            Store::open_sqlite(Path::new(location.strip_prefix("sqlite:").unwrap_or(location))).await
        }
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
            judge(&location, &tables, meta)?;
        }
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(db_err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(db_err)?;
        let tables = sqlite_tables(&mut *pool.acquire().await.map_err(db_err)?).await.map_err(db_err)?;
        let db = Db::Sqlite(pool);
        if judge(&location, &tables, None)? {
            Store::create(&db, &location, &schema(SQLITE_SERIAL)).await?;
        }
        Ok(Store::start(db, location))
    }

    /// Opens (or creates) a PostgreSQL store in the database of `url`.
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub async fn open_postgres(url: &str) -> Result<Store, StoreError> {
        // Never the password in a message.
        let location = match url.split_once('@') {
            Some((_, host)) => format!("postgres://…@{host}"),
            None => url.to_owned(),
        };
        let db_err = |e: sqlx::Error| StoreError::Db { location: location.clone(), message: e.to_string() };
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
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
        let ours: Vec<String> =
            tables.into_iter().filter(|t| ["drover_meta", "processes", "events"].contains(&t.as_str())).collect();
        let meta = if ours.iter().any(|t| t == "drover_meta") {
            Some(meta_rows(&mut *pool.acquire().await.map_err(db_err)?).await.map_err(db_err)?)
        } else {
            None
        };
        let db = Db::Postgres(pool);
        if judge(&location, &ours, meta)? {
            Store::create(&db, &location, &schema(POSTGRES_SERIAL)).await?;
        }
        Ok(Store::start(db, location))
    }

    /// Creates the schema in an empty database, in one transaction.
    async fn create(db: &Db, location: &str, schema: &[String]) -> Result<(), StoreError> {
        let db_err = |e: sqlx::Error| StoreError::Db { location: location.to_owned(), message: e.to_string() };
        on_db!(db, pool => {
            let mut tx = pool.begin().await.map_err(db_err)?;
            for statement in schema {
                sqlx::query(sqlx::AssertSqlSafe(statement.clone())).execute(&mut *tx).await.map_err(db_err)?;
            }
            sqlx::query("INSERT INTO drover_meta (key, value) VALUES ('magic', 'drover-store'), ('schema_version', '1')")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
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

    /// Records a transition: the process's new checkpoint, and an event in its
    /// log. Durable when it returns.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unknown`] if there is no such process, [`StoreError::Db`].
    pub async fn record(&self, id: &str, checkpoint: String, paused: bool, terminal: bool) -> Result<(), StoreError> {
        self.write(Write::Record { id: id.to_owned(), checkpoint, paused, terminal }).await
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
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error
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
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error
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
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error
                           FROM processes ORDER BY created_at, id";
        Ok(on_db!(&self.db, pool => {
            sqlx::query(SQL).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(process).collect()
        }))
    }

    /// Terminal processes of `kind` whose latest checkpoint contains `marker`
    /// (a fragment of its JSON): for work left to finish after the end, such
    /// as a cancel that was still to be confirmed when the engine stopped.
    ///
    /// # Errors
    ///
    /// [`StoreError::Db`].
    pub async fn terminal_marked(&self, kind: &str, marker: &str) -> Result<Vec<StoredProcess>, StoreError> {
        const SQL: &str = "SELECT id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at, error
                           FROM processes WHERE kind = $1 AND terminal AND checkpoint LIKE $2 ORDER BY created_at, id";
        // A LIKE pattern: `_` in the marker matches any one character, which
        // only widens the match; callers decode and check what they get.
        let pattern = format!("%{marker}%");
        Ok(on_db!(&self.db, pool => {
            sqlx::query(SQL).bind(kind).bind(&pattern).fetch_all(pool).await.map_err(|e| self.db_err(e))?.iter().map(process).collect()
        }))
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
        const SQL: &str = "SELECT seq, at, checkpoint, paused FROM events WHERE process_id = $1 ORDER BY seq";
        Ok(on_db!(&self.db, pool => {
            sqlx::query(SQL)
                .bind(id)
                .fetch_all(pool)
                .await
                .map_err(|e| self.db_err(e))?
                .iter()
                .map(|r| StoredEvent { seq: r.get(0), at: r.get(1), checkpoint: r.get(2), paused: r.get(3) })
                .collect()
        }))
    }

    /// Where the store is (a PostgreSQL URL without its password).
    pub fn location(&self) -> &str {
        &self.location
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

async fn meta_rows<'c, E>(conn: E) -> Result<Vec<(String, String)>, sqlx::Error>
where
    E: sqlx::Executor<'c>,
    for<'r> String: sqlx::Decode<'r, E::Database> + sqlx::Type<E::Database>,
    usize: sqlx::ColumnIndex<<E::Database as sqlx::Database>::Row>,
    for<'q> <E::Database as sqlx::Database>::Arguments: sqlx::IntoArguments<E::Database>,
{
    Ok(sqlx::query("SELECT key, value FROM drover_meta")
        .fetch_all(conn)
        .await?
        .iter()
        .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
        .collect())
}

/// Decides what to do with a database that has `tables` (and, if it has
/// `drover_meta`, those rows): `Ok(true)` to create the schema in an empty
/// one, `Ok(false)` to use an existing store, or a refusal.
fn judge(location: &str, tables: &[String], meta: Option<Vec<(String, String)>>) -> Result<bool, StoreError> {
    if !tables.iter().any(|t| t == "drover_meta") {
        if tables.is_empty() {
            return Ok(true);
        }
        return Err(StoreError::NotAStore {
            location: location.to_owned(),
            problem: format!("it has other tables: {}", tables.join(", ")),
        });
    }
    let Some(rows) = meta else { return Ok(false) };
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
    // Version 1 is the first: nothing to migrate yet. Later versions add
    // their steps here, each in its own transaction.
    Ok(false)
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
    }
}

/// The single writer: takes every waiting request, commits them in one
/// transaction, then answers each. A request that fails on its own (a
/// duplicate id, an unknown process) is answered with its error and the rest
/// of the group is committed without it.
async fn writer(db: Db, location: Arc<str>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut group = Vec::new();
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < 4096 {
            match rx.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let results = commit(&db, &location, &group).await;
        for (request, result) in group.drain(..).zip(results) {
            let _ = request.done.send(result);
        }
    }
}

/// Rows per statement: well under SQLite's limit of bound parameters.
const CHUNK: usize = 400;

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

/// Commits a group in one transaction, with a few multi-row statements per
/// chunk of requests: which ids exist, the new process rows, the updated
/// process rows, and the event rows. A request that fails on its own (a
/// duplicate id, an unknown process) gets its error; the others commit.
async fn commit(db: &Db, location: &str, group: &[Request]) -> Vec<Result<(), StoreError>> {
    let db_err = |e: sqlx::Error| StoreError::Db { location: location.to_owned(), message: e.to_string() };
    let attempt: Result<Vec<Result<(), StoreError>>, StoreError> = on_db!(db, pool => async {
        let mut tx = pool.begin().await.map_err(db_err)?;
        let mut results = Vec::with_capacity(group.len());
        for chunk in group.chunks(CHUNK) {
            let id = |r: &Request| match &r.write {
                Write::Insert(p) => p.id.clone(),
                Write::Record { id, .. } => id.clone(),
            };
            // Which ids exist already.
            let ids: Vec<String> = chunk.iter().map(id).collect();
            let sql = format!("SELECT id FROM processes WHERE id IN ({})", (1..=ids.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", "));
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in &ids {
                query = query.bind(id);
            }
            let existing: std::collections::HashSet<String> =
                query.fetch_all(&mut *tx).await.map_err(db_err)?.iter().map(|r| r.get::<String, _>(0)).collect();

            let mut inserts = Vec::new();
            let mut records = Vec::new();
            let mut events = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for request in chunk {
                let result = match &request.write {
                    Write::Insert(p) if existing.contains(&p.id) || !seen.insert(p.id.clone()) => {
                        Err(StoreError::Duplicate(p.id.clone()))
                    }
                    Write::Insert(p) => {
                        inserts.push((p, request.at));
                        events.push((&p.id, &p.checkpoint, false, request.at));
                        Ok(())
                    }
                    Write::Record { id, .. } if !existing.contains(id) && !seen.contains(id) => {
                        Err(StoreError::Unknown(id.clone()))
                    }
                    Write::Record { id, checkpoint, paused, terminal } => {
                        records.push((id, checkpoint, *paused, *terminal, request.at));
                        events.push((id, checkpoint, *paused, request.at));
                        Ok(())
                    }
                };
                results.push(result);
            }
            if !inserts.is_empty() {
                let sql = format!(
                    "INSERT INTO processes (id, kind, spec, parent, checkpoint, paused, terminal, created_at, updated_at) VALUES {}",
                    placeholders(inserts.len(), 9)
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (p, at) in &inserts {
                    query = query.bind(&p.id).bind(&p.kind).bind(&p.spec).bind(&p.parent).bind(&p.checkpoint)
                        .bind(false).bind(false).bind(*at).bind(*at);
                }
                query.execute(&mut *tx).await.map_err(db_err)?;
            }
            if !records.is_empty() {
                // VALUES columns are `column1`, `column2`, ... in SQLite and PostgreSQL alike.
                let sql = format!(
                    "UPDATE processes SET checkpoint = v.column2, paused = v.column3, terminal = v.column4, updated_at = v.column5
                     FROM (VALUES {}) AS v WHERE processes.id = v.column1",
                    placeholders(records.len(), 5)
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, checkpoint, paused, terminal, at) in &records {
                    query = query.bind(*id).bind(*checkpoint).bind(*paused).bind(*terminal).bind(*at);
                }
                query.execute(&mut *tx).await.map_err(db_err)?;
            }
            if !events.is_empty() {
                let sql = format!(
                    "INSERT INTO events (process_id, checkpoint, paused, at) VALUES {}",
                    placeholders(events.len(), 4)
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, checkpoint, paused, at) in &events {
                    query = query.bind(*id).bind(*checkpoint).bind(*paused).bind(*at);
                }
                query.execute(&mut *tx).await.map_err(db_err)?;
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
