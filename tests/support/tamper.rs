//! Changing a log behind breakerbox's back, as a stray `sqlite3` session would, for the tests
//! of what `verify` and the readers make of it.
#![allow(dead_code)] // each test binary uses its own share

use sqlx::{ConnectOptions, Connection, SqliteConnection};
use std::path::Path;

/// A plain connection: `recursive_triggers` off, as the sqlite3 shell has it.
pub async fn outsider(path: &Path) -> SqliteConnection {
    sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap()
}

/// Deletes `stream`'s newest event and puts the delete trigger back exactly as it was: a log
/// cut short, which the chain alone cannot tell (nothing after it is left to break).
pub async fn cut_newest(path: &Path, stream: &str) {
    let mut c = outsider(path).await;
    let (trigger,): (String,) =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'events_no_delete'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    sqlx::query("DROP TRIGGER events_no_delete")
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE stream = ?1 AND seq = (SELECT MAX(seq) FROM events WHERE stream = ?1)")
        .bind(stream)
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}
