//! SQLite storage: opening (pragmas, migrations, integrity), multi-row appends, reads.
//!
//! What is checked at open, and when the full `PRAGMA quick_check` runs, is in
//! [`super::integrity`].
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
//!
//! The long sequential reads go through the bulk reader (rusqlite, read-only connections); its
//! settings are in [`bulk`].

pub(crate) mod chain;
pub(crate) mod integrity;
use super::record::{Row, Shippable, StoredEvent};
use integrity::Unclean;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor, QueryBuilder, Sqlite, SqliteConnection, SqlitePool};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// The row columns, as a literal (sqlx only takes audited, literal SQL).
macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT position, stream, seq, event_type, event_version, recorded_at, payload, node FROM events",
            $rest
        )
    };
}

/// Runs `$query` (a `select!` literal with `event_type = '<type>'` inside) for the one type it
/// names: the partial indexes of `migrations/0004_replay_lookups.sql` are only used when the type
/// is written literally in the SQL, so each indexed type gets its own statement.
macro_rules! by_indexed_type {
    ($event_type:expr, |$sql:ident| $run:expr, $head:literal, $tail:literal $(,)?) => {
        match $event_type {
            crate::journal::record::SNAPSHOT => {
                let $sql = concat!(select!($head), " 'snapshot' ", $tail);
                $run
            }
            crate::breaker::codec::types::TRANSITION => {
                let $sql = concat!(select!($head), " 'transition' ", $tail);
                $run
            }
            crate::journal::record::CALL_SUMMARY => {
                let $sql = concat!(select!($head), " 'call_summary' ", $tail);
                $run
            }
            other => {
                return Err(crate::journal::StoreError::Io(format!(
                    "no time index for event type {other:?}"
                )))
            }
        }
    };
}

// After the macros above: the bulk reader builds its statements with them too.
mod bulk;
pub(crate) use bulk::BulkReader;
mod outbox;
mod projection;
pub use outbox::{OutboxMessage, OutboxRow, OutboxState, OutboxStore};
pub use projection::{Deltas, MinuteRow, ProjectionStore};

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
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    /// The file is damaged: refuse to start and inspect it; it is never truncated or "repaired".
    /// Found at open (header checks, or `quick_check` after an unclean shutdown), or later by
    /// the background `quick_check`, after which nothing more is written to the file.
    #[error("the event log {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong: the header check's finding, or what `quick_check` or SQLite said.
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
///
/// Every open checks the header (cheap, [`integrity::check_header`]). The full `PRAGMA
/// quick_check` (every page) runs here only when the last shutdown is not known to be clean;
/// otherwise the caller starts it in the background. Returns how integrity was established:
/// `Ok(())` — clean shutdown, background check to follow — or the reason the full check ran.
pub(crate) async fn open_writer(
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
) -> Result<(SqliteConnection, Result<(), Unclean>, Vec<String>), StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.display().to_string(),
        detail,
    };
    let header = integrity::check_header(path)?;
    // Removes the marker before connecting: a crash from here on leaves none.
    let clean = integrity::take_marker(path, header.as_ref());
    if clean.is_err() {
        integrity::prefetch(path);
    }
    let mut conn = connect_options(path, durability, busy_timeout)
        .create_if_missing(true)
        .connect()
        .await
        .map_err(|e| match classify(e) {
            StoreError::Corrupt { detail, .. } => corrupt(detail),
            other => other,
        })?;
    // And again now that this connection holds the file open: another process closing cleanly
    // between the first removal and the connect may have written one.
    integrity::remove_marker(path);
    match check_and_migrate(&mut conn, clean.is_err()).await {
        Ok(()) => {
            // The append-only triggers, as the migrations made them: one dropped or altered
            // behind our back is put back now, and reported (`breakerbox verify` says so too).
            let restored = chain::restore_triggers(&mut conn).await?;
            for name in &restored {
                tracing::error!(trigger = %name, "an append-only trigger of the event log was missing or altered; put back");
            }
            Ok((conn, clean, restored))
        }
        Err(StoreError::Corrupt { detail, .. }) => {
            // Refused, and left exactly as it is: closing the last connection normally would
            // checkpoint the WAL into the damaged file.
            let _ = close_without_checkpoint(conn, path, durability, busy_timeout).await;
            Err(corrupt(detail))
        }
        Err(e) => Err(e),
    }
}

/// The full `PRAGMA quick_check` (when `full`), then the migrations, which parse the schema.
async fn check_and_migrate(conn: &mut SqliteConnection, full: bool) -> Result<(), StoreError> {
    if full {
        // A damaged file is refused, never truncated or "repaired": its history may be all there is.
        let check: Vec<(String,)> = sqlx::query_as("PRAGMA quick_check")
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
        if check.len() != 1 || check[0].0 != "ok" {
            let detail = check.into_iter().map(|(s,)| s).take(5).collect::<Vec<_>>().join("; ");
            return Err(StoreError::Corrupt {
                path: String::new(),
                detail,
            });
        }
    }
    MIGRATOR.run(&mut *conn).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(e) => classify(e),
        other => StoreError::Io(format!("migrating the event log: {other}")),
    })
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

/// SQLite allows 32,766 bound variables per statement; 8 per row.
const ROWS_PER_INSERT: usize = 4_000;

/// Appends rows in one `BEGIN IMMEDIATE` transaction with multi-row inserts. Returns the
/// position of the last row. On error the transaction is rolled back whole.
/// Ends a compare-and-set transaction begun with `BEGIN IMMEDIATE` (the projection's and the
/// alert notifier's checkpoints): commits when its body says so (`Ok(true)`), rolls back when
/// the checkpoint had moved meanwhile (`Ok(false)`) or the body failed.
pub(crate) async fn end_checked(
    conn: &mut SqliteConnection,
    body: Result<bool, sqlx::Error>,
) -> Result<bool, sqlx::Error> {
    match body {
        Ok(true) => conn.execute("COMMIT").await.map(|_| true),
        Ok(false) => conn.execute("ROLLBACK").await.map(|_| false),
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(e)
        }
    }
}

pub(crate) async fn append(
    conn: &mut SqliteConnection,
    heads: &mut chain::Heads,
    rows: &[Row],
) -> Result<i64, StoreError> {
    // IMMEDIATE takes the write lock up front, so busy_timeout applies (a deferred transaction
    // upgrading to write fails at once with SQLITE_BUSY_SNAPSHOT instead). Plain statements
    // rather than sqlx's Transaction: after a failed statement that one stays "open" until a
    // queued rollback runs, and the retry would be refused.
    conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
    let mut staged = chain::Staged::new();
    let result = append_in_transaction(conn, heads, &mut staged, rows).await;
    let last = end_transaction(conn, result).await?;
    // The new heads only once committed: a rolled-back batch is retried on the old ones.
    heads.keep(staged);
    Ok(last)
}

/// Commits if the work succeeded, rolls back otherwise; either way no transaction is left open.
async fn end_transaction<T>(conn: &mut SqliteConnection, result: Result<T, StoreError>) -> Result<T, StoreError> {
    match result {
        Ok(value) => match conn.execute("COMMIT").await {
            Ok(_) => Ok(value),
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

async fn append_in_transaction(
    conn: &mut SqliteConnection,
    heads: &mut chain::Heads,
    staged: &mut chain::Staged,
    rows: &[Row],
) -> Result<i64, StoreError> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let hashes = heads.hashes(conn, chunk, staged).await?;
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (node, stream, seq, event_type, event_version, recorded_at, payload, hash) ",
        );
        q.push_values(chunk.iter().zip(&hashes), |mut b, (r, h)| {
            b.push_bind(r.node.clone())
                .push_bind(r.stream.clone())
                .push_bind(r.seq as i64)
                .push_bind(r.event_type)
                .push_bind(r.event_version)
                .push_bind(r.recorded_at.min(i64::MAX as u64) as i64)
                .push_bind(r.payload.as_slice())
                .push_bind(h.as_slice());
        });
        if let Err(e) = q.build().execute(&mut *conn).await {
            // A second writer of a stream: UNIQUE, or the no-replace trigger that runs before it.
            if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation() || db.message().contains(chain::REPLACE_REFUSED))
            {
                return Err(collision(conn, chunk).await);
            }
            return Err(classify(e));
        }
    }
    let (last,): (i64,) = sqlx::query_as("SELECT last_insert_rowid()")
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(last)
}

/// Which row of `chunk` hit `UNIQUE(stream, seq)`: SQLite does not say, so each stream of the
/// chunk is looked up (a failed statement leaves the transaction open, and the look-up sees what
/// it already wrote). Naming the wrong stream would fence an innocent one and drop its events.
async fn collision(conn: &mut SqliteConnection, chunk: &[Row]) -> StoreError {
    // Each stream's seqs in the chunk, in order of first appearance.
    let mut ranges: Vec<(&str, u64, u64)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for r in chunk {
        let i = *index.entry(&r.stream).or_insert_with(|| {
            ranges.push((&r.stream, r.seq, r.seq));
            ranges.len() - 1
        });
        let (_, lo, hi) = &mut ranges[i];
        (*lo, *hi) = ((*lo).min(r.seq), (*hi).max(r.seq));
    }
    for (stream, lo, hi) in ranges {
        let taken: Result<Option<(i64,)>, _> =
            sqlx::query_as("SELECT seq FROM events WHERE stream = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT 1")
                .bind(stream)
                .bind(lo as i64)
                .bind(hi as i64)
                .fetch_optional(&mut *conn)
                .await;
        match taken {
            Ok(Some((seq,))) => {
                return StoreError::Conflict {
                    stream: stream.to_owned(),
                    seq: seq.max(0) as u64,
                };
            }
            Ok(None) => {}
            Err(e) => return classify(e),
        }
    }
    // Only a duplicate inside the chunk itself could do this (a bug of the writer's seqs): not
    // another writer, so no stream is fenced; the append fails and is retried, loudly.
    StoreError::Io("UNIQUE(stream, seq) violated, but no stored row collides with the append".to_owned())
}

/// A row of [`read_shippable`]: a [`RowTuple`] and the chain link.
type ShippableTuple = (i64, String, i64, String, i64, i64, Vec<u8>, String, Option<Vec<u8>>);

/// Events after `position` with their chain links, in log order, at most `limit`: what a node
/// ships to the fleet's log.
pub(crate) async fn read_shippable(pool: &SqlitePool, position: i64, limit: u32) -> Result<Vec<Shippable>, StoreError> {
    let rows: Vec<ShippableTuple> = sqlx::query_as(
        "SELECT position, stream, seq, event_type, event_version, recorded_at, payload, node, hash \
         FROM events WHERE position > ? ORDER BY position LIMIT ?",
    )
    .bind(position)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    Ok(rows
        .into_iter()
        .map(|(p, stream, seq, t, v, at, payload, node, hash)| Shippable {
            event: stored((p, stream, seq, t, v, at, payload, node)),
            hash,
        })
        .collect())
}

/// Writes events read from another log at their own positions, with their own chain links, in
/// one transaction (see [`crate::journal::Journal::import`]).
pub(crate) async fn import(conn: &mut SqliteConnection, events: &[Shippable]) -> Result<(), StoreError> {
    conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
    let result = async {
        // 9 parameters a row, under SQLite's 32,766.
        for chunk in events.chunks(3_000) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO events (position, node, stream, seq, event_type, event_version, recorded_at, payload, hash) ",
            );
            q.push_values(chunk, |mut b, s| {
                let e = &s.event;
                b.push_bind(e.position)
                    .push_bind(e.node.as_str())
                    .push_bind(e.stream.as_str())
                    .push_bind(e.seq)
                    .push_bind(e.event_type.as_str())
                    .push_bind(i64::from(e.event_version))
                    .push_bind(e.recorded_at)
                    .push_bind(e.payload.as_slice())
                    .push_bind(s.hash.as_deref());
            });
            q.build().execute(&mut *conn).await.map_err(classify)?;
        }
        Ok(())
    }
    .await;
    end_transaction(conn, result).await
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

type RowTuple = (i64, String, i64, String, i64, i64, Vec<u8>, String);

fn stored((position, stream, seq, event_type, event_version, recorded_at, payload, node): RowTuple) -> StoredEvent {
    StoredEvent {
        position,
        node,
        stream,
        seq,
        event_type,
        event_version: event_version.clamp(0, u32::MAX as i64) as u32,
        recorded_at,
        payload,
    }
}

/// The latest event of `event_type` in a stream with `seq < before_seq` (`i64::MAX`: the
/// latest of all; recovery asks again below a snapshot that does not decode). Snapshots use
/// their partial index (the literal `'snapshot'` in the query is what lets SQLite pick it).
pub(crate) async fn latest_of_type(
    pool: &SqlitePool,
    stream: &str,
    event_type: &str,
    before_seq: i64,
) -> Result<Option<StoredEvent>, StoreError> {
    let row: Option<RowTuple> = if event_type == super::record::SNAPSHOT {
        sqlx::query_as(select!(
            " WHERE stream = ? AND event_type = 'snapshot' AND seq < ? ORDER BY seq DESC LIMIT 1"
        ))
        .bind(stream)
        .bind(before_seq)
        .fetch_optional(pool)
        .await
    } else {
        sqlx::query_as(select!(
            " WHERE stream = ? AND event_type = ? AND seq < ? ORDER BY seq DESC LIMIT 1"
        ))
        .bind(stream)
        .bind(event_type)
        .bind(before_seq)
        .fetch_optional(pool)
        .await
    }
    .map_err(classify)?;
    Ok(row.map(stored))
}

/// The latest event of `event_type` (a snapshot, a transition or a call summary) in a stream with
/// `recorded_at <= at_ms`: the one with the largest `recorded_at`, the last in log order among
/// equals. One probe of that type's `*_by_time` index.
pub(crate) async fn latest_at_or_before(
    pool: &SqlitePool,
    stream: &str,
    event_type: &str,
    at_ms: i64,
) -> Result<Option<StoredEvent>, StoreError> {
    let row: Option<RowTuple> = by_indexed_type!(
        event_type,
        |sql| sqlx::query_as(sql).bind(stream).bind(at_ms).fetch_optional(pool).await,
        " WHERE stream = ? AND event_type =",
        "AND recorded_at <= ? ORDER BY recorded_at DESC, seq DESC LIMIT 1",
    )
    .map_err(classify)?;
    Ok(row.map(stored))
}

/// Whether a stream holds any event of `event_type` (a snapshot, a transition or a call
/// summary). One probe of that type's `*_by_time` index.
pub(crate) async fn has_event_type(pool: &SqlitePool, stream: &str, event_type: &str) -> Result<bool, StoreError> {
    let sql = match event_type {
        super::record::SNAPSHOT => "SELECT EXISTS (SELECT 1 FROM events WHERE stream = ? AND event_type = 'snapshot')",
        crate::breaker::codec::types::TRANSITION => {
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream = ? AND event_type = 'transition')"
        }
        super::record::CALL_SUMMARY => {
            "SELECT EXISTS (SELECT 1 FROM events WHERE stream = ? AND event_type = 'call_summary')"
        }
        other => return Err(StoreError::Io(format!("no time index for event type {other:?}"))),
    };
    let (found,): (bool,) = sqlx::query_as(sql)
        .bind(stream)
        .fetch_one(pool)
        .await
        .map_err(classify)?;
    Ok(found)
}

/// A stream's first event with `seq > after_seq` of one of `types`. Walks the stream from there
/// (no index on the type): for rare look-ups only.
pub(crate) async fn first_of_types(
    pool: &SqlitePool,
    stream: &str,
    after_seq: i64,
    types: &[&str],
) -> Result<Option<StoredEvent>, StoreError> {
    if types.is_empty() {
        return Ok(None);
    }
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(select!(""));
    q.push(" WHERE stream = ")
        .push_bind(stream)
        .push(" AND seq > ")
        .push_bind(after_seq)
        .push(" AND event_type IN (");
    let mut sep = q.separated(", ");
    for t in types {
        sep.push_bind(*t);
    }
    sep.push_unseparated(")");
    q.push(" ORDER BY seq LIMIT 1");
    let row: Option<RowTuple> = q.build_query_as().fetch_optional(pool).await.map_err(classify)?;
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

/// Closes a damaged file's write connection without writing to the file: no checkpoint. The
/// last connection to close would checkpoint the WAL into the file on its own, so a read-only
/// connection (which cannot checkpoint) holds the file open across the close. The WAL keeps
/// what was committed; the next open's full check sees both.
pub(crate) async fn close_without_checkpoint(
    conn: SqliteConnection,
    path: &Path,
    durability: Durability,
    busy_timeout: Duration,
) -> Result<(), StoreError> {
    let mut guard = connect_options(path, durability, busy_timeout)
        .read_only(true)
        .connect()
        .await
        .ok();
    if let Some(g) = &mut guard {
        // A first read takes the shared lock a WAL connection then keeps until it closes.
        let _ = g.execute("SELECT 1 FROM sqlite_schema LIMIT 1").await;
    }
    let closed = conn.close().await.map_err(classify);
    if let Some(g) = guard {
        let _ = g.close().await;
    }
    closed
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

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactReport {
    /// The watermark before.
    pub from_ms: i64,
    /// The watermark after: call batches recorded before it (and before their stream's latest
    /// snapshot) are now summaries.
    pub compacted_before_ms: i64,
    /// Call batches removed.
    pub batches: u64,
    /// Calls they held, now in summaries.
    pub calls: u64,
    /// Summary events written.
    pub summaries: u64,
    /// Streams whose batches were kept because they have no snapshot yet (recovery needs them).
    pub streams_without_snapshot: Vec<String>,
}

/// Folds call batches before `watermark` (and before each stream's latest snapshot) into
/// per-minute summaries, writes them, moves the watermark and deletes the batches — one
/// transaction, so a crash leaves either everything before or everything after. `next_seq`
/// gives each stream's next sequence number (the writer's, so seqs stay contiguous).
pub(crate) async fn compact(
    conn: &mut SqliteConnection,
    heads: &mut chain::Heads,
    node: &std::sync::Arc<str>,
    watermark: i64,
    seqs: &mut std::collections::HashMap<std::sync::Arc<str>, u64>,
) -> Result<CompactReport, StoreError> {
    use super::record::{CALL_SUMMARY, CallBatch, CallSummary, MinuteSummary, ReplacedEvent, VERSION};
    conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
    let mut staged = chain::Staged::new();
    let result: Result<CompactReport, StoreError> = async {
        let (old,): (i64,) = sqlx::query_as("SELECT compacted_before FROM retention WHERE id = 1")
            .fetch_one(&mut *conn)
            .await
            .map_err(classify)?;
        let mut report = CompactReport {
            from_ms: old,
            compacted_before_ms: old.max(watermark),
            ..CompactReport::default()
        };
        if watermark <= old {
            return Ok(report);
        }
        sqlx::query("UPDATE retention SET compacted_before = ? WHERE id = 1")
            .bind(watermark)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        // The tailing projections' checkpoints, read under the write lock so none moves meanwhile:
        // a summary must not mix calls a tailer has folded with calls it has not (see
        // `CallSummary::folded_by`).
        let mut tailers: Vec<(String, i64)> = sqlx::query_as("SELECT name, position FROM projections")
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
        tailers.sort_by_key(|(_, position)| *position);
        let streams: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT b.stream, (SELECT MAX(s.seq) FROM events s WHERE s.stream = b.stream AND s.event_type = 'snapshot')
             FROM (SELECT DISTINCT stream FROM events WHERE event_type = 'call_batch' AND recorded_at < ?) b",
        )
        .bind(watermark)
        .fetch_all(&mut *conn)
        .await
        .map_err(classify)?;
        let mut rows = Vec::new();
        for (stream, snapshot) in streams {
            let Some(snapshot) = snapshot else {
                report.streams_without_snapshot.push(stream);
                continue;
            };
            // position, version, payload, seq, hash
            type BatchRow = (i64, u32, Vec<u8>, i64, Option<Vec<u8>>);
            let batches: Vec<BatchRow> = sqlx::query_as(
                "SELECT position, event_version, payload, seq, hash FROM events
                 WHERE stream = ? AND event_type = 'call_batch' AND recorded_at < ? AND seq < ? ORDER BY seq",
            )
            .bind(&stream)
            .bind(watermark)
            .bind(snapshot)
            .fetch_all(&mut *conn)
            .await
            .map_err(classify)?;
            if batches.is_empty() {
                continue;
            }
            // By hour, then by how many tailers' checkpoints lie before the batch (its side of
            // each checkpoint): one summary per stream, hour and side, which tailers skip or count.
            type Side = usize;
            type Minutes = std::collections::BTreeMap<u64, MinuteSummary>;
            let mut summaries: std::collections::BTreeMap<(u64, Side), (i64, Minutes, Vec<ReplacedEvent>)> =
                std::collections::BTreeMap::new();
            for (position, version, payload, seq, hash) in &batches {
                let batch = CallBatch::from_stored(*version, payload)
                    .map_err(|e| StoreError::Io(format!("call batch at position {position} does not decode: {e}")))?;
                let side = tailers.partition_point(|(_, checkpoint)| checkpoint < position);
                let mut first = None;
                for call in batch.iter() {
                    let minute = call.at_ms / 60_000 * 60_000;
                    let key = (minute / 3_600_000 * 3_600_000, side);
                    first.get_or_insert(key);
                    let (through, minutes, _) = summaries.entry(key).or_default();
                    *through = (*through).max(*position);
                    minutes
                        .entry(minute)
                        .or_insert_with(|| MinuteSummary {
                            minute_ms: minute,
                            ..MinuteSummary::default()
                        })
                        .add(&call);
                    report.calls += 1;
                }
                // The removed event's link, kept by the summary its first call went to, so
                // `verify` follows the chain across it.
                if let Some(key) = first {
                    summaries.entry(key).or_default().2.push(ReplacedEvent {
                        seq: *seq as u64,
                        hash: hash.as_deref().map(chain::hex),
                    });
                }
            }
            report.batches += batches.len() as u64;
            let key: std::sync::Arc<str> = std::sync::Arc::from(stream.as_str());
            let mut seq = match seqs.get(&key) {
                Some(&s) => s,
                None => last_seq(&mut *conn, &stream).await?,
            };
            for ((hour, _), (through_position, minutes, replaced)) in summaries {
                let summary = CallSummary {
                    minutes: minutes.into_values().collect(),
                    replaced,
                    through_position,
                    folded_by: tailers
                        .iter()
                        .filter(|(_, checkpoint)| *checkpoint >= through_position)
                        .map(|(name, _)| name.clone())
                        .collect(),
                };
                seq += 1;
                rows.push(Row {
                    node: node.clone(),
                    stream: key.clone(),
                    seq,
                    event_type: CALL_SUMMARY,
                    event_version: VERSION,
                    recorded_at: hour,
                    payload: rmp_serde::to_vec_named(&summary).expect("a summary always encodes"),
                });
            }
            sqlx::query(
                "DELETE FROM events WHERE stream = ? AND event_type = 'call_batch' AND recorded_at < ? AND seq < ?",
            )
            .bind(&stream)
            .bind(watermark)
            .bind(snapshot)
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
            seqs.insert(key, seq);
        }
        report.summaries = rows.len() as u64;
        if !rows.is_empty() {
            append_in_transaction(conn, heads, &mut staged, &rows).await?;
        }
        Ok(report)
    }
    .await;
    let report = end_transaction(conn, result).await?;
    heads.keep(staged);
    Ok(report)
}

/// Who holds the writer lease, and when they last renewed it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The holder: a [`crate::journal::Holder`] written out (e.g. `serve pid 4242 on host as
    /// bob [...]`), or any name a library host chose.
    pub holder: String,
    /// Last renewal, Unix epoch ms.
    pub renewed_at_ms: i64,
    /// The ttl the holder renews within (None: a lease written before it was recorded).
    pub ttl_ms: Option<i64>,
}

const SELECT_LEASE: &str = "SELECT holder, renewed_at, ttl_ms FROM writer_lease WHERE id = 1";

/// Takes or renews the lease for `holder` unless another holder renewed it within its ttl (the
/// one it recorded; `ttl_ms` for a lease that recorded none). Returns the lease as it stands
/// afterwards (ours if taken).
pub(crate) async fn acquire_lease(
    conn: &mut SqliteConnection,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Lease, StoreError> {
    sqlx::query(
        "INSERT INTO writer_lease (id, holder, renewed_at, ttl_ms) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, renewed_at = excluded.renewed_at,
             ttl_ms = excluded.ttl_ms
         WHERE writer_lease.holder = excluded.holder
            OR writer_lease.renewed_at < ?2 - COALESCE(writer_lease.ttl_ms, ?3)",
    )
    .bind(holder)
    .bind(now_ms)
    .bind(ttl_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    fetch_lease(conn).await
}

/// Takes the lease from a holder judged dead before its ttl ran out (its process is gone), only
/// if the lease is still exactly as judged: the same holder, not renewed since. Returns the lease
/// as it stands afterwards (ours if taken).
pub(crate) async fn take_over_lease(
    conn: &mut SqliteConnection,
    holder: &str,
    now_ms: i64,
    ttl_ms: i64,
    dead: &Lease,
) -> Result<Lease, StoreError> {
    sqlx::query(
        "UPDATE writer_lease SET holder = ?1, renewed_at = ?2, ttl_ms = ?3
         WHERE id = 1 AND holder = ?4 AND renewed_at = ?5",
    )
    .bind(holder)
    .bind(now_ms)
    .bind(ttl_ms)
    .bind(&dead.holder)
    .bind(dead.renewed_at_ms)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    fetch_lease(conn).await
}

async fn fetch_lease(conn: &mut SqliteConnection) -> Result<Lease, StoreError> {
    let (holder, renewed_at_ms, ttl_ms): (String, i64, Option<i64>) = sqlx::query_as(SELECT_LEASE)
        .fetch_one(&mut *conn)
        .await
        .map_err(classify)?;
    Ok(Lease {
        holder,
        renewed_at_ms,
        ttl_ms,
    })
}

/// Gives the lease up if `holder` has it.
pub(crate) async fn release_lease(conn: &mut SqliteConnection, holder: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM writer_lease WHERE id = 1 AND holder = ?")
        .bind(holder)
        .execute(conn)
        .await
        .map_err(classify)?;
    Ok(())
}

/// The lease as it stands, if anyone took it.
pub(crate) async fn lease(pool: &SqlitePool) -> Result<Option<Lease>, StoreError> {
    let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(SELECT_LEASE)
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    Ok(row.map(|(holder, renewed_at_ms, ttl_ms)| Lease {
        holder,
        renewed_at_ms,
        ttl_ms,
    }))
}

/// The write side of a storage backend: what the single writer needs. SQLite implements it
/// today ([`SqliteWriter`]); a PostgreSQL backend implements the same.
pub trait LogWriter: Send + 'static {
    /// Appends rows in one transaction; returns the last position.
    fn append(&mut self, rows: &[Row]) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// The highest seq of a stream (0 when empty).
    fn last_seq(&mut self, stream: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// The last position (0 when empty).
    fn last_position(&mut self) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Retention; see [`crate::journal::Journal::compact`].
    fn compact(
        &mut self,
        watermark: i64,
        seqs: &mut std::collections::HashMap<std::sync::Arc<str>, u64>,
    ) -> impl Future<Output = Result<CompactReport, StoreError>> + Send;
    /// Appends a `chain_anchor` of the heads moved since the last one to `_journal`; its
    /// position, or `None` when no head moved.
    fn anchor(
        &mut self,
        now_ms: u64,
        seqs: &mut std::collections::HashMap<std::sync::Arc<str>, u64>,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Takes or renews the writer lease.
    fn acquire_lease(
        &mut self,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Takes the lease from a holder judged dead, if the lease is still exactly `dead`.
    fn take_over_lease(
        &mut self,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
        dead: &Lease,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Gives the lease up.
    fn release_lease(&mut self, holder: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Caps the store's size (None: no cap).
    fn set_max_size(&mut self, bytes: Option<u64>) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Runs a write to the derived tables on this connection (see [`SideWriter`]).
    fn side(&mut self, work: SideWork) -> impl Future<Output = ()> + Send;
    /// Closes cleanly.
    fn close(self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A boxed future borrowing the connection it runs on.
pub(crate) type ConnFuture<'c, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'c>>;

/// A write to the derived tables, run by the writer on its connection (or handed the error every
/// write fails with, when the file is known to be damaged). It answers through a reply it holds.
pub(crate) type SideWork =
    Box<dyn for<'c> FnOnce(Result<&'c mut SqliteConnection, StoreError>) -> ConnFuture<'c, ()> + Send>;

/// Writes to the tables derived from the log — the metrics projection's, the alert outbox's —
/// through the process's one write connection: the event writer runs them between two commits,
/// so they never contend with it for SQLite's write lock (`docs/architecture.md`).
#[derive(Clone)]
pub(crate) struct SideWriter(pub(crate) std::sync::Arc<dyn Fn(SideWork) + Send + Sync>);

impl SideWriter {
    /// Runs `f` in the writer on its connection and returns what it returned. Fails with the
    /// store's error, or when the writer has stopped (the journal closed: the work is dropped
    /// unrun, and with it the reply).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl for<'c> FnOnce(&'c mut SqliteConnection) -> ConnFuture<'c, Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work: SideWork = Box::new(move |conn| {
            Box::pin(async move {
                let result = match conn {
                    Ok(conn) => f(conn).await,
                    Err(e) => Err(e),
                };
                let _ = tx.send(result);
            })
        });
        (self.0)(work);
        rx.await
            .map_err(|_| StoreError::Io("the event log's writer has stopped (the journal is closed)".into()))?
    }
}

/// Where a tailing read of a SQLite log stands: after a row's position (the log's global order:
/// AUTOINCREMENT, one writer per file, so positions commit in order). Opaque, as every
/// backend's [`LogReader::Cursor`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SqliteCursor(i64);

/// The read side of a storage backend.
///
/// Two notions of "where in the log": a **position** is the integer every event carries, which
/// consumers keep (SSE ids, the projection's and the alerts' checkpoints, audit pages): dense
/// and in commit order on every backend (SQLite: the row's position; a shared PostgreSQL log:
/// the sequencer's). A **cursor** is how this reader continues a tailing read, opaque because
/// it differs by backend: one integer here, `(epoch, writing transaction id, id)` below the
/// oldest running transaction on PostgreSQL (`../shared/reference/fleet.md`, C3), never a bare
/// id that a late commit could slip under.
pub trait LogReader: Send + Sync {
    /// See the trait's documentation.
    type Cursor: Clone + Ord + Default + Send + Sync + std::fmt::Debug;
    /// The cursor just after the event at `position` (0: before the first event).
    fn cursor_at(&self, position: i64) -> impl Future<Output = Result<Self::Cursor, StoreError>> + Send;
    /// Events after `after` in the log's global order, at most `limit`, with the cursor after the
    /// last of them (`after` itself when there are none).
    fn tail(
        &self,
        after: &Self::Cursor,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<StoredEvent>, Self::Cursor), StoreError>> + Send;
    /// A stream's events after a seq.
    fn read_stream(
        &self,
        stream: &str,
        after_seq: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;
    /// Events of some types in a time range, after a position.
    fn read_range(
        &self,
        types: &[&str],
        from_ms: i64,
        to_ms: i64,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;
    /// The latest event of a type in a stream before a seq.
    fn latest_of_type(
        &self,
        stream: &str,
        event_type: &str,
        before_seq: i64,
    ) -> impl Future<Output = Result<Option<StoredEvent>, StoreError>> + Send;
    /// The latest event of an indexed type (snapshot, transition, call summary) at or before a
    /// time.
    fn latest_at_or_before(
        &self,
        stream: &str,
        event_type: &str,
        at_ms: i64,
    ) -> impl Future<Output = Result<Option<StoredEvent>, StoreError>> + Send;
    /// A stream's events of an indexed type up to a time, after a (time, seq), by time.
    fn read_stream_range(
        &self,
        stream: &str,
        event_type: &str,
        after: (i64, i64),
        to_ms: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<StoredEvent>, StoreError>> + Send;
    /// Whether a stream holds an event of an indexed type.
    fn has_event_type(&self, stream: &str, event_type: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A stream's first event of some types after a seq.
    fn first_of_types(
        &self,
        stream: &str,
        after_seq: i64,
        types: &[&str],
    ) -> impl Future<Output = Result<Option<StoredEvent>, StoreError>> + Send;
    /// The last position.
    fn last_position(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// The lease as it stands.
    fn lease(&self) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;
}

/// The SQLite write side: the one write connection, and each stream's head of the chain.
pub struct SqliteWriter {
    pub(crate) conn: SqliteConnection,
    heads: chain::Heads,
    path: std::path::PathBuf,
    /// The node its own rows (summaries, anchors) are written by.
    node: std::sync::Arc<str>,
}

impl SqliteWriter {
    pub(crate) fn new(conn: SqliteConnection, path: &Path, node: std::sync::Arc<str>) -> Self {
        SqliteWriter {
            conn,
            heads: chain::Heads::default(),
            path: path.to_path_buf(),
            node,
        }
    }

    /// SQLite reports a file it may not write (`chattr +i`, a read-only bind mount of one file)
    /// as a disk I/O error once it is open: name it for what it is.
    fn refine(&self, e: StoreError) -> StoreError {
        let StoreError::Io(detail) = e else { return e };
        let mut files = vec![self.path.clone()];
        for suffix in ["-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            files.push(p.into());
        }
        for f in files {
            if let Err(why) = std::fs::OpenOptions::new().append(true).open(&f)
                && why.kind() == std::io::ErrorKind::PermissionDenied
            {
                return StoreError::ReadOnly(format!("{} cannot be written: {why} ({detail})", f.display()));
            }
        }
        StoreError::Io(detail)
    }
}

impl LogWriter for SqliteWriter {
    async fn append(&mut self, rows: &[Row]) -> Result<i64, StoreError> {
        let appended = append(&mut self.conn, &mut self.heads, rows).await;
        appended.map_err(|e| self.refine(e))
    }
    async fn last_seq(&mut self, stream: &str) -> Result<u64, StoreError> {
        last_seq(&mut self.conn, stream).await
    }
    async fn last_position(&mut self) -> Result<i64, StoreError> {
        last_position_conn(&mut self.conn).await
    }
    async fn compact(
        &mut self,
        watermark: i64,
        seqs: &mut std::collections::HashMap<std::sync::Arc<str>, u64>,
    ) -> Result<CompactReport, StoreError> {
        compact(&mut self.conn, &mut self.heads, &self.node, watermark, seqs).await
    }
    async fn anchor(
        &mut self,
        now_ms: u64,
        seqs: &mut std::collections::HashMap<std::sync::Arc<str>, u64>,
    ) -> Result<Option<i64>, StoreError> {
        use super::record::{CHAIN_ANCHOR, ChainAnchor, JOURNAL_STREAM, Recorded};
        let heads = self.heads.moved(JOURNAL_STREAM);
        if heads.is_empty() {
            return Ok(None);
        }
        let stream: std::sync::Arc<str> = std::sync::Arc::from(JOURNAL_STREAM);
        let seq = match seqs.get(&stream) {
            Some(&s) => s,
            None => last_seq(&mut self.conn, JOURNAL_STREAM).await?,
        } + 1;
        let anchor = ChainAnchor { at_ms: now_ms, heads };
        let row = Row {
            node: self.node.clone(),
            stream: stream.clone(),
            seq,
            event_type: CHAIN_ANCHOR,
            event_version: ChainAnchor::VERSION,
            recorded_at: now_ms,
            payload: rmp_serde::to_vec_named(&anchor).expect("an anchor always encodes"),
        };
        let position = self.append(std::slice::from_ref(&row)).await?;
        seqs.insert(stream, seq);
        self.heads.anchored();
        Ok(Some(position))
    }
    async fn acquire_lease(&mut self, holder: &str, now_ms: i64, ttl_ms: i64) -> Result<Lease, StoreError> {
        acquire_lease(&mut self.conn, holder, now_ms, ttl_ms).await
    }
    async fn take_over_lease(
        &mut self,
        holder: &str,
        now_ms: i64,
        ttl_ms: i64,
        dead: &Lease,
    ) -> Result<Lease, StoreError> {
        take_over_lease(&mut self.conn, holder, now_ms, ttl_ms, dead).await
    }
    async fn release_lease(&mut self, holder: &str) -> Result<(), StoreError> {
        release_lease(&mut self.conn, holder).await
    }
    async fn set_max_size(&mut self, bytes: Option<u64>) -> Result<(), StoreError> {
        set_max_size(&mut self.conn, bytes).await
    }
    async fn side(&mut self, work: SideWork) {
        work(Ok(&mut self.conn)).await
    }
    async fn close(self) -> Result<(), StoreError> {
        close(self.conn).await
    }
}

/// The SQLite read side: a read-only sqlx pool for the look-ups, and the bulk reader
/// (`store/bulk.rs`, rusqlite) for the long sequential reads (`read_stream`, `read_after`,
/// `read_stream_range`), whose per-row cost through sqlx bounded replay and rebuilds.
pub struct SqliteReader {
    pub(crate) pool: SqlitePool,
    bulk: BulkReader,
}

impl SqliteReader {
    /// Opens both on the file; `size` bounds the connections of each.
    pub(crate) async fn open(
        path: &Path,
        durability: Durability,
        busy_timeout: Duration,
        size: u32,
    ) -> Result<SqliteReader, StoreError> {
        let pool = open_readers(path, durability, busy_timeout, size).await?;
        match BulkReader::open(path, busy_timeout, size).await {
            Ok(bulk) => Ok(SqliteReader { pool, bulk }),
            Err(e) => {
                pool.close().await;
                Err(e)
            }
        }
    }

    /// Closes every connection (reads still running finish first).
    pub(crate) async fn close(&self) {
        self.bulk.close();
        self.pool.close().await;
    }
}

impl LogReader for SqliteReader {
    type Cursor = SqliteCursor;
    async fn cursor_at(&self, position: i64) -> Result<SqliteCursor, StoreError> {
        Ok(SqliteCursor(position))
    }
    async fn tail(&self, after: &SqliteCursor, limit: u32) -> Result<(Vec<StoredEvent>, SqliteCursor), StoreError> {
        let events = self.bulk.read_after(after.0, limit).await?;
        let next = events.last().map_or(*after, |e| SqliteCursor(e.position));
        Ok((events, next))
    }
    async fn read_stream(&self, stream: &str, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.bulk.read_stream(stream, after_seq, limit).await
    }
    async fn read_range(
        &self,
        types: &[&str],
        from_ms: i64,
        to_ms: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        read_range(&self.pool, types, from_ms, to_ms, after, limit).await
    }
    async fn latest_of_type(
        &self,
        stream: &str,
        event_type: &str,
        before_seq: i64,
    ) -> Result<Option<StoredEvent>, StoreError> {
        latest_of_type(&self.pool, stream, event_type, before_seq).await
    }
    async fn latest_at_or_before(
        &self,
        stream: &str,
        event_type: &str,
        at_ms: i64,
    ) -> Result<Option<StoredEvent>, StoreError> {
        latest_at_or_before(&self.pool, stream, event_type, at_ms).await
    }
    async fn read_stream_range(
        &self,
        stream: &str,
        event_type: &str,
        after: (i64, i64),
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.bulk
            .read_stream_range(stream, event_type, after, to_ms, limit)
            .await
    }
    async fn has_event_type(&self, stream: &str, event_type: &str) -> Result<bool, StoreError> {
        has_event_type(&self.pool, stream, event_type).await
    }
    async fn first_of_types(
        &self,
        stream: &str,
        after_seq: i64,
        types: &[&str],
    ) -> Result<Option<StoredEvent>, StoreError> {
        first_of_types(&self.pool, stream, after_seq, types).await
    }
    async fn last_position(&self) -> Result<i64, StoreError> {
        last_position(&self.pool).await
    }
    async fn lease(&self) -> Result<Option<Lease>, StoreError> {
        lease(&self.pool).await
    }
}
