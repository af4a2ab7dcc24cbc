//! The bulk reader: the SQLite store's long sequential reads (`read_stream`, `read_after` and
//! `read_stream_range` of [`LogReader`]: recovery, the projection's rebuild and catch-up,
//! `state_at`), through rusqlite on tokio's blocking pool.
//!
//! Why not sqlx: sqlx-sqlite costs 3–5 µs per row read. It steps the statement on its worker
//! thread, copies every column with a `malloc`, and sends each row through a channel to the
//! async task, so whole-log reads ran at 0.2–0.3 M rows/s (`docs/performance.md`). Here one
//! blocking task steps a whole page on one thread and builds each [`StoredEvent`] straight from
//! SQLite's column buffers ([`rusqlite::Row::get_ref`]: one copy per text or blob, nothing in
//! between): several times the row rate. The short look-ups stay on the sqlx pool.
//!
//! Both crates link the same SQLite (libsqlite3-sys, bundled by sqlx's feature); no `unsafe` is
//! needed here, rusqlite's safe API does it all.
//!
//! Every setting is explicit:
//!
//! | setting | value | why |
//! |---|---|---|
//! | open flags | `READ_ONLY`, `NO_MUTEX` | it never writes, and a read-only connection cannot checkpoint the WAL, even when it is the last to close (a damaged file stays as it is); a connection is used by one thread at a time |
//! | `busy_timeout` | the journal's (default 5 s) | a lock held by another process (e.g. while it recovers the WAL) is waited for, then `StoreError::Busy` |
//! | `journal_mode` | `WAL`, checked | set and checked as the sqlx readers do; a read-only connection cannot change it, so any other mode is an error |
//! | `locking_mode` | `NORMAL` | other processes may open the same file |
//! | `query_only` | `ON` | belt and braces beside the read-only open |
//! | `synchronous`, `foreign_keys`, `recursive_triggers`, `wal_autocheckpoint` | not set | they act on writes only |
//! | rows per transaction | at most [`ROWS_PER_TRANSACTION`], and no more once [`BYTES_PER_TRANSACTION`] of payload are read | a reader's snapshot holds back checkpoints (and so the WAL's size) while it lasts; one statement is one short transaction (autocommit, no `BEGIN`) |
//! | reads at once | at most `readers` ([`crate::journal::JournalOptions::readers`]); as many idle connections kept | bounds threads and file handles as the sqlx pool does |
//!
//! A call for more rows than one transaction takes reads them in several, each continuing after
//! the last row read. The log is append-only and one writer commits in position order, so this
//! gives exactly what the caller's own paging would: the rows in order, none twice, none skipped.

#[cfg(doc)]
use super::LogReader;
use super::{StoreError, StoredEvent};
use rusqlite::{Connection, ErrorCode, OpenFlags, Statement};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Rows one read transaction returns at most (a bound on how long it holds its snapshot: ~5 ms
/// for small rows).
const ROWS_PER_TRANSACTION: usize = 10_000;
/// Payload bytes after which a read transaction ends even short of [`ROWS_PER_TRANSACTION`]
/// (packed call batches are up to ~90 KB each: 10,000 of them would hold a snapshot for a long
/// time).
const BYTES_PER_TRANSACTION: usize = 8 << 20;

/// The SQLite store's bulk reads: a bounded set of read-only rusqlite connections used from
/// tokio's blocking pool.
pub(crate) struct BulkReader {
    shared: Arc<Shared>,
    /// One permit per read at once.
    slots: Arc<Semaphore>,
}

struct Shared {
    path: PathBuf,
    busy_timeout: Duration,
    /// Idle connections (at most `max_idle`); `None` once closed.
    idle: Mutex<Option<Vec<Connection>>>,
    max_idle: usize,
}

impl BulkReader {
    /// Opens the first connection (so a file that cannot be read fails here, as the sqlx pool
    /// does) and allows `size` reads at once.
    pub(crate) async fn open(path: &Path, busy_timeout: Duration, size: u32) -> Result<BulkReader, StoreError> {
        let size = size.max(1) as usize;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            busy_timeout,
            idle: Mutex::new(Some(Vec::with_capacity(size))),
            max_idle: size,
        });
        let first = shared.clone();
        let conn = tokio::task::spawn_blocking(move || first.connect())
            .await
            .map_err(|e| StoreError::Io(format!("opening the event log's bulk reader: {e}")))??;
        shared.put_back(conn);
        Ok(BulkReader {
            shared,
            slots: Arc::new(Semaphore::new(size)),
        })
    }

    /// Closes the idle connections; reads still running close theirs when they end, and reads
    /// after this fail (`StoreError::Io`).
    pub(crate) fn close(&self) {
        self.slots.close();
        let idle = self.shared.idle.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(idle);
    }

    /// Runs `read` on a connection of its own, on the blocking pool, waiting for a free slot.
    async fn run<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Io("the event log's readers are closed".into()))?;
        let shared = self.shared.clone();
        // If the caller stops waiting, the task still ends after one bounded read and frees its
        // slot and connection.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let taken = shared
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(Vec::pop);
            let conn = match taken {
                Some(c) => c,
                None => shared.connect()?,
            };
            let result = read(&conn, &shared.path);
            // Every statement is reset by now, so no read transaction stays open on it.
            debug_assert!(conn.is_autocommit());
            shared.put_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::Io(format!("a read of the event log stopped: {e}")))?
    }
}

impl Shared {
    fn connect(&self) -> Result<Connection, StoreError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let opened = Connection::open_with_flags(&self.path, flags).and_then(|conn| {
            conn.busy_timeout(self.busy_timeout)?;
            let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Ok(Err(mode));
            }
            conn.pragma_update_and_check(None, "locking_mode", "NORMAL", |r| r.get::<_, String>(0))?;
            conn.pragma_update(None, "query_only", "ON")?;
            Ok(Ok(conn))
        });
        match opened {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(mode)) => Err(StoreError::Io(format!(
                "the event log {} is in journal mode {mode:?}, not WAL: readers would block the writer",
                self.path.display()
            ))),
            Err(e) => Err(classify(&self.path, "opening a reader on", e)),
        }
    }

    /// Keeps a connection for the next read, unless enough are kept or the reader is closed.
    fn put_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(idle) = idle.as_mut().filter(|v| v.len() < self.max_idle) {
            idle.push(conn);
        }
    }
}

/// Maps a rusqlite error by its SQLite result code, as `store::classify` maps sqlx's; `doing`
/// says what failed ("reading", "opening a reader on").
fn classify(path: &Path, doing: &str, e: rusqlite::Error) -> StoreError {
    let message = || format!("{doing} the event log {}: {e}", path.display());
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(message()),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            path: path.display().to_string(),
            detail: e.to_string(),
        },
        _ => StoreError::Io(message()),
    }
}

/// The columns of `select!`, in its order.
const COLUMNS: [&str; 8] = [
    "position",
    "stream",
    "seq",
    "event_type",
    "event_version",
    "recorded_at",
    "payload",
    "node",
];

/// A column that is not of its type (the table is `STRICT`, so only a damaged file gives one).
fn column_error(path: &Path, after: &str, index: usize, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!(
        "reading the event log {}: column {} of the row after {after}: {e}",
        path.display(),
        COLUMNS[index]
    ))
}

/// One row of `select!`, built from the borrowed column values: one allocation per text or
/// blob, none in between.
fn stored(row: &rusqlite::Row<'_>, path: &Path, after: &dyn Fn() -> String) -> Result<StoredEvent, StoreError> {
    let value = |i: usize| row.get_ref(i).map_err(|e| column_error(path, &after(), i, e));
    let int = |i: usize| value(i)?.as_i64().map_err(|e| column_error(path, &after(), i, e));
    let text = |i: usize| {
        value(i)?
            .as_str()
            .map(str::to_owned)
            .map_err(|e| column_error(path, &after(), i, e))
    };
    Ok(StoredEvent {
        position: int(0)?,
        node: text(7)?,
        stream: text(1)?,
        seq: int(2)?,
        event_type: text(3)?,
        event_version: int(4)?.clamp(0, i64::from(u32::MAX)) as u32,
        recorded_at: int(5)?,
        payload: value(6)?
            .as_blob()
            .map(<[u8]>::to_vec)
            .map_err(|e| column_error(path, &after(), 6, e))?,
    })
}

/// One of the paged reads: its statement, how to bind the key to continue after and the row
/// count of one transaction, the key of a row, and how to name a key in an error message.
struct Scan<B, F, D> {
    sql: &'static str,
    bind: B,
    key: F,
    describe: D,
}

impl<K, B, F, D> Scan<B, F, D>
where
    K: Copy,
    B: Fn(&mut Statement<'_>, K, i64) -> rusqlite::Result<()>,
    F: Fn(&StoredEvent) -> K,
    D: Fn(K) -> String,
{
    /// Reads up to `limit` rows after `after`, a transaction at a time ([`ROWS_PER_TRANSACTION`],
    /// [`BYTES_PER_TRANSACTION`]).
    fn read(&self, conn: &Connection, path: &Path, mut after: K, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let failed = |e| classify(path, "reading", e);
        let mut stmt = conn.prepare(self.sql).map_err(failed)?;
        let mut remaining = limit as usize;
        let mut out = Vec::with_capacity(remaining.min(ROWS_PER_TRANSACTION));
        while remaining > 0 {
            let want = remaining.min(ROWS_PER_TRANSACTION);
            (self.bind)(&mut stmt, after, want as i64).map_err(failed)?;
            let (mut got, mut bytes, mut cut) = (0, 0, false);
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().map_err(failed)? {
                let e = stored(row, path, &|| (self.describe)(after))?;
                bytes += e.payload.len();
                got += 1;
                out.push(e);
                if got < want && bytes >= BYTES_PER_TRANSACTION {
                    cut = true;
                    break;
                }
            }
            // Resets the statement: its read transaction ends here.
            drop(rows);
            remaining -= got;
            match out.last() {
                Some(last) if cut || got == want => after = (self.key)(last),
                // Fewer rows than asked for: that was all.
                _ => break,
            }
        }
        Ok(out)
    }
}

impl BulkReader {
    /// See [`LogReader::read_stream`].
    pub(crate) async fn read_stream(
        &self,
        stream: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let stream = stream.to_owned();
        self.run(move |conn, path| {
            Scan {
                sql: select!(" WHERE stream = ? AND seq > ? ORDER BY seq LIMIT ?"),
                bind: |stmt: &mut Statement<'_>, after: i64, n| {
                    stmt.raw_bind_parameter(1, stream.as_str())?;
                    stmt.raw_bind_parameter(2, after)?;
                    stmt.raw_bind_parameter(3, n)
                },
                key: |e: &StoredEvent| e.seq,
                describe: |after| format!("seq {after} of stream {stream:?}"),
            }
            .read(conn, path, after_seq, limit)
        })
        .await
    }

    /// See [`LogReader::read_after`].
    pub(crate) async fn read_after(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.run(move |conn, path| {
            Scan {
                sql: select!(" WHERE position > ? ORDER BY position LIMIT ?"),
                bind: |stmt: &mut Statement<'_>, after: i64, n| {
                    stmt.raw_bind_parameter(1, after)?;
                    stmt.raw_bind_parameter(2, n)
                },
                key: |e: &StoredEvent| e.position,
                describe: |after| format!("position {after}"),
            }
            .read(conn, path, after, limit)
        })
        .await
    }

    /// See [`LogReader::read_stream_range`]: a range of the type's `*_by_time` index, ordered by
    /// time (ordering by seq makes SQLite walk the whole stream by `(stream, seq)` instead).
    pub(crate) async fn read_stream_range(
        &self,
        stream: &str,
        event_type: &str,
        after: (i64, i64),
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql: &'static str = by_indexed_type!(
            event_type,
            |sql| sql,
            " WHERE stream = ? AND event_type =",
            "AND (recorded_at, seq) > (?, ?) AND recorded_at <= ? ORDER BY recorded_at, seq LIMIT ?",
        );
        let stream = stream.to_owned();
        self.run(move |conn, path| {
            Scan {
                sql,
                bind: |stmt: &mut Statement<'_>, (at, seq): (i64, i64), n| {
                    stmt.raw_bind_parameter(1, stream.as_str())?;
                    stmt.raw_bind_parameter(2, at)?;
                    stmt.raw_bind_parameter(3, seq)?;
                    stmt.raw_bind_parameter(4, to_ms)?;
                    stmt.raw_bind_parameter(5, n)
                },
                key: |e: &StoredEvent| (e.recorded_at, e.seq),
                describe: |(at, seq)| format!("(recorded_at {at}, seq {seq}) of stream {stream:?}"),
            }
            .read(conn, path, after, limit)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some("what SQLite said".into()))
    }

    #[test]
    fn sqlite_errors_map_to_what_the_caller_should_do() {
        let path = Path::new("/var/lib/breakerbox/log.db");
        let kind = |code| classify(path, "reading", failure(code));
        assert_eq!(kind(ffi::SQLITE_BUSY), StoreError::Busy);
        assert_eq!(kind(ffi::SQLITE_LOCKED), StoreError::Busy);
        assert_eq!(
            kind(ffi::SQLITE_BUSY_SNAPSHOT),
            StoreError::Busy,
            "extended codes by their primary"
        );
        assert_eq!(kind(ffi::SQLITE_FULL), StoreError::Full);
        assert!(matches!(kind(ffi::SQLITE_READONLY), StoreError::ReadOnly(_)));
        for code in [ffi::SQLITE_CORRUPT, ffi::SQLITE_NOTADB] {
            let StoreError::Corrupt { path: p, detail } = kind(code) else {
                panic!("{code}: expected Corrupt")
            };
            assert_eq!(p, "/var/lib/breakerbox/log.db");
            assert!(detail.contains("what SQLite said"), "{detail}");
        }
        let StoreError::Io(message) = kind(ffi::SQLITE_IOERR_READ) else {
            panic!("expected Io")
        };
        assert!(
            message.starts_with("reading the event log /var/lib/breakerbox/log.db: "),
            "{message}"
        );
        assert!(message.contains("what SQLite said"), "{message}");
    }
}
