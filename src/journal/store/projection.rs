//! The metrics projection's tables (`migrations/0002_projections.sql`): a checkpoint (position
//! in the log and the fold's carry-over, encoded by the projection) and per-breaker, per-minute
//! rows. Writes go through the one write connection ([`SideWriter`]); reads use the read pool.
//! The rows' type is the projection's ([`MinuteRow`]); this layer only stores and merges them.

use super::{ConnFuture, Durability, SideWriter, StoreError, classify};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{Executor, SqliteConnection, SqlitePool};
use std::collections::BTreeMap;

/// A stored per-minute row: merged by adding a page's delta to it.
pub trait MinuteRow: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// An empty row for the minute starting at `minute_ms`.
    fn empty(minute_ms: u64) -> Self;
    /// Adds `delta` to this row.
    fn add(&mut self, delta: &Self);
}

/// A page's deltas: per stream, per minute.
pub type Deltas<R> = BTreeMap<String, BTreeMap<u64, R>>;

/// One projection's tables.
pub struct ProjectionStore {
    name: &'static str,
    side: SideWriter,
    pool: SqlitePool,
    /// The write connection's own durability, given back after each projection transaction.
    durability: Durability,
}

fn corrupt_row(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!(
        "a stored {what} of the metrics projection does not decode: {e}"
    ))
}

/// The log's last position, read in the transaction that records a fold's start.
async fn origin(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let (origin,): (Option<i64>,) = sqlx::query_as("SELECT MAX(position) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    Ok(origin.unwrap_or(0))
}

/// Ends a transaction begun with [`begin`]: commits when the body says so, then gives the
/// connection its own durability back.
async fn end(
    conn: &mut SqliteConnection,
    body: Result<bool, sqlx::Error>,
    durability: Durability,
) -> Result<bool, StoreError> {
    let ended = super::end_checked(conn, body).await.map_err(classify);
    let restored = conn.execute(sync_pragma(durability)).await.map_err(classify);
    let ended = ended?;
    restored?;
    Ok(ended)
}

/// Begins a projection transaction on the shared write connection. The projection is derived
/// data (rebuilt from the log if its last commits are lost), so its commits skip the fsync a
/// `Full` journal gives its events: `synchronous = NORMAL` for this transaction only. An event
/// commit after it syncs the WAL, projection frames included.
async fn begin(conn: &mut SqliteConnection, durability: Durability) -> Result<(), StoreError> {
    conn.execute("PRAGMA synchronous = NORMAL").await.map_err(classify)?;
    if let Err(e) = conn.execute("BEGIN IMMEDIATE").await {
        // Not begun: the connection's own durability back at once.
        let _ = conn.execute(sync_pragma(durability)).await;
        return Err(classify(e));
    }
    Ok(())
}

fn sync_pragma(durability: Durability) -> &'static str {
    match durability {
        Durability::Full => "PRAGMA synchronous = FULL",
        Durability::Normal => "PRAGMA synchronous = NORMAL",
    }
}

impl ProjectionStore {
    pub(crate) fn new(
        name: &'static str,
        side: SideWriter,
        pool: SqlitePool,
        durability: Durability,
    ) -> ProjectionStore {
        ProjectionStore {
            name,
            side,
            pool,
            durability,
        }
    }

    /// The checkpoint: the position folded up to and the encoded carry-over.
    pub async fn checkpoint(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        sqlx::query_as("SELECT position, cursor FROM projections WHERE name = ?")
            .bind(self.name)
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)
    }

    /// Creates the checkpoint at position 0 unless there is one, with `start(origin)` as its
    /// carry-over, `origin` being the log's last position — both under the write lock, so no
    /// compaction commits in between.
    pub async fn start(&self, start: impl FnOnce(i64) -> Vec<u8> + Send + 'static) -> Result<(), StoreError> {
        self.checkpoint_at_zero(false, start).await
    }

    /// Forgets every row and puts the checkpoint back at 0 with `start(origin)`, in one
    /// transaction (no compaction commits between the two, and none sees no checkpoint).
    pub async fn restart(&self, start: impl FnOnce(i64) -> Vec<u8> + Send + 'static) -> Result<(), StoreError> {
        self.checkpoint_at_zero(true, start).await
    }

    /// [`start`](Self::start) (`forget: false`: an existing checkpoint stays) and
    /// [`restart`](Self::restart) (`forget: true`: rows and checkpoint replaced).
    async fn checkpoint_at_zero(
        &self,
        forget: bool,
        start: impl FnOnce(i64) -> Vec<u8> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (name, durability) = (self.name, self.durability);
        self.side
            .run(move |conn: &mut SqliteConnection| -> ConnFuture<'_, Result<(), StoreError>> {
                Box::pin(async move {
                    begin(conn, durability).await?;
                    let body = async {
                        let insert = if forget {
                            conn.execute("DELETE FROM metrics_minutes").await?;
                            "INSERT INTO projections (name, position, cursor) VALUES (?, 0, ?)
                             ON CONFLICT (name) DO UPDATE SET position = excluded.position, cursor = excluded.cursor"
                        } else {
                            "INSERT INTO projections (name, position, cursor) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING"
                        };
                        let cursor = start(origin(conn).await?);
                        sqlx::query(insert).bind(name).bind(cursor).execute(&mut *conn).await?;
                        Ok(true)
                    }
                    .await;
                    end(conn, body, durability).await.map(|_| ())
                })
            })
            .await
    }

    /// Adds a page's `deltas` to the rows and moves the checkpoint from `from` to `to` with
    /// `cursor`, in one transaction — only if the checkpoint is still at `from` and
    /// `same_fold(stored cursor)` says it belongs to the same fold (false: it moved or was
    /// rebuilt meanwhile; nothing written).
    pub async fn advance<R: MinuteRow>(
        &self,
        from: i64,
        to: i64,
        cursor: Vec<u8>,
        same_fold: impl FnOnce(&[u8]) -> bool + Send + 'static,
        deltas: Deltas<R>,
    ) -> Result<bool, StoreError> {
        let (name, durability) = (self.name, self.durability);
        self.side
            .run(
                move |conn: &mut SqliteConnection| -> ConnFuture<'_, Result<bool, StoreError>> {
                    Box::pin(async move {
                        begin(conn, durability).await?;
                        let body = advance_in(conn, name, from, to, cursor, same_fold, &deltas).await;
                        match body {
                            Ok(Ok(moved)) => end(conn, Ok(moved), durability).await,
                            Ok(Err(e)) => {
                                let _ = end(conn, Ok(false), durability).await;
                                Err(e)
                            }
                            Err(e) => end(conn, Err(e), durability).await,
                        }
                    })
                },
            )
            .await
    }

    /// A stream's rows for minutes starting in `[from_minute, to_ms]`.
    pub async fn rows<R: MinuteRow>(
        &self,
        stream: &str,
        from_minute: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<u64, R>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT minute_ms, data FROM metrics_minutes WHERE stream = ? AND minute_ms >= ? AND minute_ms <= ? ORDER BY minute_ms",
        )
        .bind(stream)
        .bind(from_minute.min(i64::MAX as u64) as i64)
        .bind(to_ms.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter()
            .map(|(m, d)| {
                Ok((
                    m as u64,
                    rmp_serde::from_slice(&d).map_err(|e| corrupt_row("minute", e))?,
                ))
            })
            .collect()
    }

    /// The rows of `streams` for minutes starting in `[from_minute, to_ms]`, in one read (an
    /// index range per stream, not a scan of every stream's minutes).
    pub async fn rows_of<R: MinuteRow>(
        &self,
        streams: &[&str],
        from_minute: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<String, BTreeMap<u64, R>>, StoreError> {
        let mut out: BTreeMap<String, BTreeMap<u64, R>> = BTreeMap::new();
        // 500 streams per statement stays far below SQLite's variable limit.
        for chunk in streams.chunks(500) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT stream, minute_ms, data FROM metrics_minutes WHERE minute_ms >= ",
            );
            q.push_bind(from_minute.min(i64::MAX as u64) as i64);
            q.push(" AND minute_ms <= ");
            q.push_bind(to_ms.min(i64::MAX as u64) as i64);
            q.push(" AND stream IN (");
            let mut list = q.separated(", ");
            for s in chunk {
                list.push_bind(*s);
            }
            q.push(")");
            let rows: Vec<(String, i64, Vec<u8>)> = q.build_query_as().fetch_all(&self.pool).await.map_err(classify)?;
            for (s, m, d) in rows {
                let row = rmp_serde::from_slice(&d).map_err(|e| corrupt_row("minute", e))?;
                out.entry(s).or_default().insert(m as u64, row);
            }
        }
        Ok(out)
    }

    /// Every row, by stream and minute.
    pub async fn all_rows<R: MinuteRow>(&self) -> Result<Vec<(String, u64, R)>, StoreError> {
        let rows: Vec<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT stream, minute_ms, data FROM metrics_minutes ORDER BY stream, minute_ms")
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        rows.into_iter()
            .map(|(s, m, d)| {
                Ok((
                    s,
                    m as u64,
                    rmp_serde::from_slice(&d).map_err(|e| corrupt_row("minute", e))?,
                ))
            })
            .collect()
    }
}

/// The body of [`ProjectionStore::advance`] inside its transaction: `Ok(Ok(moved))`, `Ok(Err)`
/// for a stored row that does not decode (rolled back), `Err` for SQLite's failures.
async fn advance_in<R: MinuteRow>(
    conn: &mut SqliteConnection,
    name: &'static str,
    from: i64,
    to: i64,
    cursor: Vec<u8>,
    same_fold: impl FnOnce(&[u8]) -> bool,
    deltas: &Deltas<R>,
) -> Result<Result<bool, StoreError>, sqlx::Error> {
    // Checked under the write lock, so two projectors on one file never both add a page.
    let stored: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT position, cursor FROM projections WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    let Some((at, stored)) = stored else {
        return Ok(Ok(false));
    };
    if at != from || !same_fold(&stored) {
        return Ok(Ok(false));
    }
    // One range read per stream and multi-row upserts: a statement per minute row cost ~90 µs
    // of round trip each and made a 10 M-outcome catch-up take 50 s.
    let mut merged: Vec<(&str, u64, Vec<u8>)> = Vec::new();
    for (stream, minutes) in deltas {
        let (Some((lo, _)), Some((hi, _))) = (minutes.first_key_value(), minutes.last_key_value()) else {
            continue;
        };
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT minute_ms, data FROM metrics_minutes WHERE stream = ? AND minute_ms BETWEEN ? AND ?",
        )
        .bind(stream.as_str())
        .bind(*lo as i64)
        .bind(*hi as i64)
        .fetch_all(&mut *conn)
        .await?;
        let mut old: BTreeMap<u64, R> = BTreeMap::new();
        for (m, d) in rows {
            match rmp_serde::from_slice::<R>(&d) {
                Ok(row) => {
                    old.insert(m as u64, row);
                }
                Err(e) => return Ok(Err(corrupt_row("minute", e))),
            }
        }
        for (minute, delta) in minutes {
            let mut row = old.remove(minute).unwrap_or_else(|| R::empty(*minute));
            row.add(delta);
            merged.push((
                stream.as_str(),
                *minute,
                rmp_serde::to_vec_named(&row).expect("plain data encodes"),
            ));
        }
    }
    // 3 binds per row stays far below SQLite's 32,766-variable limit.
    for chunk in merged.chunks(1_000) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO metrics_minutes (stream, minute_ms, data) ");
        q.push_values(chunk, |mut b, (s, m, d)| {
            b.push_bind(*s).push_bind(*m as i64).push_bind(d.as_slice());
        });
        q.push(" ON CONFLICT (stream, minute_ms) DO UPDATE SET data = excluded.data");
        q.build().execute(&mut *conn).await?;
    }
    sqlx::query(
        "INSERT INTO projections (name, position, cursor) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, cursor = excluded.cursor",
    )
    .bind(name)
    .bind(to)
    .bind(cursor)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(true))
}
