//! Changing a log behind breakerbox's back, as a stray `sqlite3` session or bit rot would, for
//! the tests of what `verify`, the readers and the integrity checks make of it.
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

/// Overwrites the payload of the event at `position` with bytes that do not decode (`0xc1` is
/// never used in MessagePack) and puts the update trigger back exactly as it was: a damaged
/// record, which `verify` names as rewritten and every reader must skip and report.
pub async fn garble(path: &Path, position: i64) {
    let mut c = outsider(path).await;
    let (trigger,): (String,) =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'events_no_update'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    sqlx::query("DROP TRIGGER events_no_update")
        .execute(&mut c)
        .await
        .unwrap();
    let changed = sqlx::query("UPDATE events SET payload = x'c1c1c1' WHERE position = ?")
        .bind(position)
        .execute(&mut c)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 1, "an event at position {position}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
        .execute(&mut c)
        .await
        .unwrap();
    c.close().await.unwrap();
}

/// Damages a table page in the middle of the file in place: its 8-byte page header is flipped,
/// so `quick_check` cannot miss it. With `keep_mtime` the file's mtime is put back, as bit rot
/// leaves it (no metadata changes). Returns the damaged bytes.
pub fn damage_a_page(path: &Path, keep_mtime: bool) -> Vec<u8> {
    use std::io::{Seek, SeekFrom, Write};
    let mut bytes = std::fs::read(path).unwrap();
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let pages = bytes.len() / page_size;
    // A table leaf (type 0x0d) a quarter into the file: not page 1, not the last leaf.
    let page = (pages / 4..pages - 1)
        .find(|p| bytes[p * page_size] == 0x0d)
        .expect("a table leaf page");
    let at = page * page_size;
    for b in &mut bytes[at..at + 8] {
        *b ^= 0xA5;
    }
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(at as u64)).unwrap();
    file.write_all(&bytes[at..at + 8]).unwrap();
    file.sync_all().unwrap();
    if keep_mtime {
        file.set_modified(mtime).unwrap();
    }
    bytes
}
