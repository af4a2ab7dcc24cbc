//! What the journal and replay benches both need: a runtime, a journal, and raw writes in the
//! journal's own row format (for logs too large to write through one commit per row).
// Each bench includes this module and uses only part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use breakerbox::journal::{Durability, Journal, JournalOptions, Row, connect_options};
use sqlx::{ConnectOptions, Executor, QueryBuilder, Sqlite, SqliteConnection};
use tokio::runtime::Runtime;

/// Rows per multi-row `INSERT`, as in the journal's store.
pub const ROWS_PER_INSERT: usize = 4_000;

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub async fn open(path: &Path, durability: Durability) -> Journal {
    Journal::open(
        path,
        JournalOptions {
            durability,
            ..JournalOptions::default()
        },
    )
    .await
    .expect("opening the journal")
}

/// Bytes of the file after `close()` (which checkpoints the WAL into it and truncates the WAL).
pub fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Appends rows as the journal's store does: one `BEGIN IMMEDIATE` … `COMMIT`, multi-row
/// `INSERT`s of at most [`ROWS_PER_INSERT`] rows.
pub async fn append_raw(conn: &mut SqliteConnection, rows: &[Row]) {
    conn.execute("BEGIN IMMEDIATE").await.expect("begin");
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (node, stream, seq, event_type, event_version, recorded_at, payload) ",
        );
        q.push_values(chunk, |mut b, r| {
            b.push_bind(r.node.clone())
                .push_bind(r.stream.clone())
                .push_bind(r.seq as i64)
                .push_bind(r.event_type)
                .push_bind(r.event_version)
                .push_bind(r.recorded_at as i64)
                .push_bind(r.payload.as_slice());
        });
        q.build().execute(&mut *conn).await.expect("insert");
    }
    conn.execute("COMMIT").await.expect("commit");
}

/// A file with the journal's schema (its migrations), for raw writes.
pub async fn raw_log(path: &Path, durability: Durability) -> SqliteConnection {
    open(path, durability).await.close().await;
    connect_options(path, durability, Duration::from_secs(5))
        .create_if_missing(true)
        .connect()
        .await
        .expect("raw connection")
}
