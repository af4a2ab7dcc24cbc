//! SQLite storage: opening (pragmas, migrations, integrity), multi-row appends, reads.
//!
//! Every pragma is set explicitly, because defaults differ between SQLite versions and builds:
//!
//! | pragma | value | why |
//! |---|---|---|
//! | `journal_mode` | `WAL` | readers (CLI, dashboard) never block the writer, and the writer never blocks them |
//! | `synchronous` | `FULL` (default) or `NORMAL` | FULL: a commit is on disk before it is acknowledged, so it survives power loss too; cheap because commits are batched. NORMAL survives process crashes but may lose the last commits on power loss |
//! | `busy_timeout` | 5 s | another process holding the write lock briefly (a CLI command) is waited for, not failed |
//! | `recursive_triggers` | `ON` | without it `REPLACE`/`INSERT OR REPLACE` delete rows without firing the append-only trigger |
//! | `foreign_keys` | `ON` | no foreign keys today; set so a future one is enforced |
//! | `wal_autocheckpoint` | 1000 pages | bounds the WAL file; readers use short transactions so checkpoints are not starved |
//! | `locking_mode` | `NORMAL` | other processes may open the same file |

use super::record::{Row, StoredEvent};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How hard a commit is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync at every commit: survives process crash and power loss (if the disk honours fsync).
    Full,
    /// Survives process crashes; a power loss may lose the last commits.
    Normal,
}

/// Storage failures. Domain outcomes (rejected calls) are never here.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The file is damaged: refuse to start and inspect it; it is never truncated or "repaired".
    #[error("the event log {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// What `quick_check` or SQLite said.
        detail: String,
    },
    /// Two writers wrote the same stream (UNIQUE(stream, seq)): stop writing that stream and let
    /// the lease holder own it.
    #[error("another writer appended to stream {stream:?} (seq {seq} taken)")]
    Conflict {
        /// The stream.
        stream: String,
        /// The sequence number that was taken.
        seq: u64,
    },
    /// The disk is full (or `max_page_count` reached): keep events buffered and retry.
    #[error("the event log's disk is full")]
    Full,
    /// The database is locked or busy past `busy_timeout`: retry.
    #[error("the event log is locked by another process")]
    Busy,
    /// The file cannot be written (read-only file or directory, permissions): retry; report.
    #[error("the event log is read-only: {0}")]
    ReadOnly(String),
    /// Any other I/O or SQL failure: retry; report.
    #[error("event log I/O error: {0}")]
    Io(String),
}

impl StoreError {
    /// A short label for metrics (`busy`, `full`, `io`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::Conflict { .. } => "conflict",
            StoreError::Full => "full",
            StoreError::Busy => "busy",
            StoreError::ReadOnly(_) => "read_only",
            StoreError::Io(_) => "io",
        }
    }
}

/// Maps a SQLite error by its (extended) result code.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        let code = db.code().map(|c| c.to_string()).unwrap_or_default();
        let primary = code.parse::<i32>().map(|c| c & 0xff).unwrap_or(-1);
        return match primary {
            13 => StoreError::Full,                             // SQLITE_FULL
            5 | 6 => StoreError::Busy,                          // SQLITE_BUSY, SQLITE_LOCKED
            8 => StoreError::ReadOnly(db.message().to_owned()), // SQLITE_READONLY
            11 | 26 => StoreError::Corrupt {
                // SQLITE_CORRUPT, SQLITE_NOTADB
                path: String::new(),
                detail: db.message().to_owned(),
            },
            _ => StoreError::Io(format!("{} (code {code})", db.message())),
        };
    }
    StoreError::Io(e.to_string())
}

/// The connection options every connection of the project uses (pragmas in the table above).
pub fn connect_options(path: &Path, durability: Durability, busy_timeout: Duration) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Full => SqliteSynchronous::Full,
            Durability::Normal => SqliteSynchronous::Normal,
        })
        .busy_timeout(busy_timeout)
        .locking_mode(SqliteLockingMode::Normal)
        .foreign_keys(true)
        .pragma("recursive_triggers", "ON")
        .pragma("wal_autocheckpoint", "1000")
}

/// Opens the write connection: creates the file if missing, checks integrity, migrates.
pub(crate) async fn open_writer(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
) -> Result<SqliteConnection, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.display().to_string(),
        detail,
    };
    let mut conn = connect_options(path, durability, busy_timeout)
        .create_if_missing(true)
        .connect()
        .await
        .map_err(|e| match classify(e) {
            StoreError::Corrupt { detail, .. } => corrupt(detail),
            other => other,
        })?;
    // A damaged file is refused, never truncated or "repaired": its history may be all there is.
    let check: Vec<(String,)> = sqlx::query_as("PRAGMA quick_check")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| match classify(e) {
            StoreError::Corrupt { detail, .. } => corrupt(detail),
            other => other,
        })?;
    if check.len() != 1 || check[0].0 != "ok" {
        let detail = check.into_iter().map(|(s,)| s).take(5).collect::<Vec<_>>().join("; ");
        return Err(corrupt(detail));
    }
    MIGRATOR.run(&mut conn).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => classify(e),
        other => StoreError::Io(format!("migrating the event log: {other}")),
    })?;
    Ok(conn)
}

/// Opens the readers' pool (WAL readers never block the writer).
pub(crate) async fn open_readers(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
    size: u32,
) -> Result<SqlitePool, StoreError> {
    SqlitePoolOptions::new()
        .max_connections(size)
        .connect_with(connect_options(path, durability, busy_timeout).read_only(true))
        .await
        .map_err(classify)
}

/// SQLite allows 32,766 bound variables per statement; 7 per row.
const ROWS_PER_INSERT: usize = 4_000;

/// Appends rows in one `BEGIN IMMEDIATE` transaction with multi-row inserts. Returns the
/// position of the last row. On error the transaction is rolled back whole.
pub(crate) async fn append(conn: &mut SqliteConnection, rows: &[Row]) -> Result<i64, StoreError> {
    // IMMEDIATE takes the write lock up front, so busy_timeout applies (a deferred transaction
    // upgrading to write fails at once with SQLITE_BUSY_SNAPSHOT instead). Plain statements
    // rather than sqlx's Transaction: after a failed statement that one stays "open" until a
    // queued rollback runs, and the retry would be refused.
    conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
    let result = append_in_transaction(conn, rows).await;
    match result {
        Ok(last) => match conn.execute("COMMIT").await {
            Ok(_) => Ok(last),
            Err(e) => {
                // A failed COMMIT may leave the transaction open (e.g. SQLITE_BUSY); end it.
                let _ = conn.execute("ROLLBACK").await;
                Err(classify(e))
            }
        },
        Err(e) => {
            // SQLite may already have rolled back (SQLITE_FULL can); a ROLLBACK error then only
            // says there is no transaction, which is what we want.
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn append_in_transaction(conn: &mut SqliteConnection, rows: &[Row]) -> Result<i64, StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO events (stream, seq, event_type, event_version, recorded_at, payload) ");
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.stream.clone())
                .push_bind(r.seq as i64)
                .push_bind(r.event_type)
                .push_bind(r.event_version)
                .push_bind(r.recorded_at.min(i64::MAX as u64) as i64)
                .push_bind(r.payload.as_slice());
        });
        q.build().execute(&mut *conn).await.map_err(|e| {
            let unique = matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation());
            if unique {
                // Which row collided is not reported by SQLite; name the first of the chunk.
                StoreError::Conflict {
                    stream: chunk[0].stream.to_string(),
                    seq: chunk[0].seq,
                }
            } else {
                classify(e)
            }
        })?;
    }
    let (last,): (i64,) = sqlx::query_as("SELECT last_insert_rowid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(last)
}

/// The highest `seq` of a stream (0 when empty).
pub(crate) async fn last_seq<'e>(exec: impl Executor<'e, Database = Sqlite>, stream: &str) -> Result<u64, StoreError> {
    let (seq,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM events WHERE stream = ?")
        .bind(stream)
        .fetch_one(exec)
        .await
        .map_err(classify)?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

type RowTuple = (i64, String, i64, String, i64, i64, Vec<u8>);

fn stored((position, stream, seq, event_type, event_version, recorded_at, payload): RowTuple) -> StoredEvent {
    StoredEvent {
        position,
        stream,
        seq,
        event_type,
        event_version: event_version.clamp(0, u32::MAX as i64) as u32,
        recorded_at,
        payload,
    }
}

/// The row columns, as a literal (sqlx only takes audited, literal SQL).
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream, seq, event_type, event_version, recorded_at, payload FROM events",
            $rest
        )
    };
}

/// A stream's events with `seq > after_seq`, in order, at most `limit`.
pub(crate) async fn read_stream(
    pool: &SqlitePool,
    stream: &str,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows: Vec<RowTuple> = sqlx::query_as(select!(" WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"))
        .bind(stream)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    Ok(rows.into_iter().map(stored).collect())
}

/// Events after a position, in log order, at most `limit`.
pub(crate) async fn read_after(pool: &SqlitePool, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
    let rows: Vec<RowTuple> = sqlx::query_as(select!(" WHERE position > ? ORDER BY position LIMIT ?"))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    Ok(rows.into_iter().map(stored).collect())
}

/// The latest event of `event_type` in a stream.
pub(crate) async fn latest_of_type(
    pool: &SqlitePool,
    stream: &str,
    event_type: &str,
) -> Result<Option<StoredEvent>, StoreError> {
    let row: Option<RowTuple> = sqlx::query_as(select!(
        " WHERE stream = ? AND event_type = ? ORDER BY seq DESC LIMIT 1"
    ))
    .bind(stream)
    .bind(event_type)
    .fetch_optional(pool)
    .await
    .map_err(classify)?;
    Ok(row.map(stored))
}

/// Events of the given types (all if empty) with `from_ms <= recorded_at < to_ms`, after a
/// position, in log order, at most `limit`.
pub(crate) async fn read_range(
    pool: &SqlitePool,
    types: &[&str],
    from_ms: i64,
    to_ms: i64,
    after: i64,
    limit: u32,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(select!(""));
    q.push(" WHERE recorded_at >= ")
        .push_bind(from_ms)
        .push(" AND recorded_at < ")
        .push_bind(to_ms)
        .push(" AND position > ")
        .push_bind(after);
    if !types.is_empty() {
        q.push(" AND event_type IN (");
        let mut sep = q.separated(", ");
        for t in types {
            sep.push_bind(*t);
        }
        sep.push_unseparated(")");
    }
    q.push(" ORDER BY position LIMIT ").push_bind(i64::from(limit));
    let rows: Vec<RowTuple> = q.build_query_as().fetch_all(pool).await.map_err(classify)?;
    Ok(rows.into_iter().map(stored).collect())
}

/// The last position in the log (0 when empty).
pub(crate) async fn last_position(pool: &SqlitePool) -> Result<i64, StoreError> {
    let (p,): (Option<i64>,) = sqlx::query_as("SELECT MAX(position) FROM events")
        .fetch_one(pool)
        .await
        .map_err(classify)?;
    Ok(p.unwrap_or(0))
}

/// Closes cleanly: a final checkpoint truncates the WAL.
pub(crate) async fn close(mut conn: SqliteConnection) -> Result<(), StoreError> {
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .map_err(classify)?;
    conn.close().await.map_err(classify)
}

/// The last position, read on the writer's own connection (before the readers exist).
pub(crate) async fn last_position_conn(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    let (p,): (Option<i64>,) = sqlx::query_as("SELECT MAX(position) FROM events")
        .fetch_one(conn)
        .await
        .map_err(classify)?;
    Ok(p.unwrap_or(0))
}

/// Applies a size cap: `max_page_count` from the page size (0 = no cap).
pub(crate) async fn set_max_size(conn: &mut SqliteConnection, bytes: Option<u64>) -> Result<(), StoreError> {
    let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    // SQLite's own ceiling when uncapped.
    let pages = bytes.map_or(4_294_967_294, |b| (b / page_size.max(512) as u64).max(1));
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("PRAGMA max_page_count = ");
    // A PRAGMA takes no bound parameters; the value is a number we computed, not user text.
    q.push(pages.to_string());
    q.build().execute(&mut *conn).await.map_err(classify)?;
    Ok(())
}
