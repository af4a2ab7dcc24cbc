//! The stored metrics projection (the seed's `circuit_breaker_metrics`): per breaker, per minute,
//! kept up to date by tailing the log from a checkpoint, and rebuildable from scratch. Folding
//! the log in one go or in any number of steps gives the same rows (tested), compaction between
//! the steps included: see `Cursor::origin` and `CallSummary::folded_by`.
//!
//! Each step folds a page of events into per-minute deltas and, in one transaction, merges them
//! into the stored rows and moves the checkpoint: a crash leaves the projection at the previous
//! checkpoint, never counted twice.

use super::health::{Health, health};
use super::metrics::Minute;
use crate::breaker::{Event, State};
use crate::journal::{
    CALL_BATCH, CALL_STATS, CallStats, Decoded, Durability, Journal, JournalError, StoreError, StoredEvent,
    connect_options, decode, decode_batch,
};
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Connection, Executor, SqliteConnection};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const NAME: &str = "metrics";

/// Carry-over between steps: each breaker's state and since when (for time in state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    states: BTreeMap<String, (State, u64)>,
    /// The log's last position when this fold began from scratch. A call summary at or before it
    /// was written before the fold read anything, so the batches it replaced were never folded:
    /// it is counted. A later one was written while this projection's checkpoint was known to
    /// compaction, and is skipped when it names the projection in `folded_by`. (0 in cursors
    /// written before this was recorded.)
    #[serde(default)]
    origin: i64,
}

/// What a catch-up did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CatchUp {
    /// Stored events folded.
    pub events: u64,
    /// Call outcomes folded (a call batch holds many).
    pub calls: u64,
    /// The checkpoint after it.
    pub position: i64,
}

/// The projection's own connection to the log file (it writes only its own tables).
pub struct Projection {
    conn: SqliteConnection,
}

fn io(e: sqlx::Error) -> JournalError {
    JournalError::Store(StoreError::Io(e.to_string()))
}

fn minute_of(t: u64) -> u64 {
    t / 60_000 * 60_000
}

/// Adds `to − from` ms in `state` to the minutes it spans.
fn spend(deltas: &mut Deltas, stream: &str, state: State, from: u64, to: u64) {
    let index = State::ALL.iter().position(|s| *s == state).unwrap_or(0);
    let mut t = from;
    while t < to {
        let m = minute_of(t);
        let end = (m + 60_000).min(to);
        entry(deltas, stream, m).state_ms[index] += end - t;
        t = end;
    }
}

/// A page's minutes by stream, then minute. By stream first so a row finds its stream by `&str`:
/// a `(String, minute)` key made every row allocate its stream's name.
type Deltas = BTreeMap<String, BTreeMap<u64, Minute>>;

fn entry<'a>(deltas: &'a mut Deltas, stream: &str, minute: u64) -> &'a mut Minute {
    if !deltas.contains_key(stream) {
        deltas.insert(stream.to_owned(), BTreeMap::new());
    }
    deltas
        .get_mut(stream)
        .expect("inserted above")
        .entry(minute)
        .or_insert_with(|| Minute {
            minute_ms: minute,
            ..Minute::default()
        })
}

/// Folds one stored event into the deltas and the cursor.
fn fold(e: &StoredEvent, deltas: &mut Deltas, cursor: &mut Cursor, calls: &mut u64) -> Result<(), JournalError> {
    if e.event_type == CALL_STATS {
        if let Ok(s) = rmp_serde::from_slice::<CallStats>(&e.payload) {
            let m = entry(deltas, &e.stream, minute_of(s.at_ms));
            m.rejected += s.rejected;
            m.fallbacks += s.fallbacks;
        }
        return Ok(());
    }
    let bad = |source| JournalError::Decode {
        position: e.position,
        source,
    };
    if e.event_type == CALL_BATCH {
        // Most rows: their calls are folded straight from the batch, without an event each.
        let batch = decode_batch(e).map_err(bad)?;
        fold_events(e, batch.iter().map(Event::CallRecorded), deltas, cursor, calls);
        return Ok(());
    }
    match decode(e).map_err(bad)? {
        Decoded::Breaker(events) => fold_events(e, events.into_iter(), deltas, cursor, calls),
        // Compaction appends summaries after the batches they replace: count the calls once.
        Decoded::Summary(s) if e.position > cursor.origin && s.folded_by.iter().any(|n| n == NAME) => {}
        Decoded::Summary(s) => {
            for sm in &s.minutes {
                entry(deltas, &e.stream, sm.minute_ms).merge(&Minute::from_summary(sm));
                *calls += sm.calls();
            }
        }
        Decoded::Snapshot(_) | Decoded::Gap(_) | Decoded::Other => {}
    }
    Ok(())
}

/// Folds one row's core events (in order) into the deltas and the cursor.
fn fold_events(
    e: &StoredEvent,
    events: impl Iterator<Item = Event>,
    deltas: &mut Deltas,
    cursor: &mut Cursor,
    calls: &mut u64,
) {
    let mut events = events.peekable();
    // One cursor lookup and one running minute per row, not per call: a packed row holds
    // thousands of calls, and per-call map lookups with owned keys dominated the rebuild.
    if !cursor.states.contains_key(&e.stream) {
        let first = events.peek().map_or(0, Event::at_ms);
        cursor.states.insert(e.stream.clone(), (State::Closed, first));
    }
    let (state, since) = cursor.states.get_mut(&e.stream).expect("inserted above");
    let mut current: Option<Minute> = None;
    for ev in events {
        match ev {
            Event::CallRecorded(c) => {
                let minute = minute_of(c.at_ms);
                if let Some(done) = current.take_if(|m| m.minute_ms != minute) {
                    entry(deltas, &e.stream, done.minute_ms).merge(&done);
                }
                current
                    .get_or_insert_with(|| Minute {
                        minute_ms: minute,
                        ..Minute::default()
                    })
                    .add_call(c.outcome, c.latency_ms, c.slow);
                *calls += 1;
            }
            Event::Transitioned(t) => {
                let (from_state, from_ms) = (*state, *since);
                *state = t.to;
                *since = t.at_ms.max(from_ms);
                spend(deltas, &e.stream, from_state, from_ms, t.at_ms);
            }
            Event::TrialAdmitted(_) | Event::PolicyApplied(_) => {}
        }
    }
    if let Some(done) = current {
        entry(deltas, &e.stream, done.minute_ms).merge(&done);
    }
}

/// The encoded cursor of a fold beginning now: its origin is the log's last position. Run inside
/// the transaction that stores it, under the write lock, so no compaction commits in between.
async fn fresh_cursor(conn: &mut SqliteConnection) -> Result<Vec<u8>, sqlx::Error> {
    let (origin,): (Option<i64>,) = sqlx::query_as("SELECT MAX(position) FROM events")
        .fetch_one(&mut *conn)
        .await?;
    let cursor = Cursor {
        origin: origin.unwrap_or(0),
        ..Cursor::default()
    };
    Ok(rmp_serde::to_vec_named(&cursor).expect("plain data encodes"))
}

impl Projection {
    /// Opens the projection on the log file (the journal has created its tables).
    pub async fn open(path: &Path) -> Result<Projection, JournalError> {
        let conn = connect_options(path, Durability::Normal, Duration::from_secs(5))
            .connect()
            .await
            .map_err(io)?;
        Ok(Projection { conn })
    }

    /// The checkpoint, created at position 0 if there is none yet, with the log's last position
    /// as its origin, both read under the write lock so no compaction commits in between.
    async fn checkpoint_or_start(&mut self) -> Result<(i64, Cursor), JournalError> {
        if let Some(found) = self.stored_checkpoint().await? {
            return Ok(found);
        }
        self.conn.execute("BEGIN IMMEDIATE").await.map_err(io)?;
        let started = async {
            let cursor = fresh_cursor(&mut self.conn).await?;
            sqlx::query(
                "INSERT INTO projections (name, position, cursor) VALUES (?, 0, ?) ON CONFLICT (name) DO NOTHING",
            )
            .bind(NAME)
            .bind(cursor)
            .execute(&mut self.conn)
            .await?;
            Ok(true)
        }
        .await;
        crate::journal::end_checked(&mut self.conn, started).await.map_err(io)?;
        self.checkpoint().await
    }

    async fn stored_checkpoint(&mut self) -> Result<Option<(i64, Cursor)>, JournalError> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT position, cursor FROM projections WHERE name = ?")
            .bind(NAME)
            .fetch_optional(&mut self.conn)
            .await
            .map_err(io)?;
        Ok(row.map(|(p, c)| (p, rmp_serde::from_slice(&c).unwrap_or_default())))
    }

    async fn checkpoint(&mut self) -> Result<(i64, Cursor), JournalError> {
        Ok(self.stored_checkpoint().await?.unwrap_or_default())
    }

    /// Folds everything the log holds after the checkpoint, a page (`page` events) per
    /// transaction.
    pub async fn catch_up(&mut self, journal: &Journal, page: u32) -> Result<CatchUp, JournalError> {
        if let crate::journal::Integrity::Corrupt(e) = journal.integrity() {
            // The file is damaged: the projection writes nothing more to it either.
            return Err(JournalError::Store(e));
        }
        let (mut position, mut cursor) = self.checkpoint_or_start().await?;
        let mut done = CatchUp {
            position,
            ..CatchUp::default()
        };
        loop {
            let events = journal.read_after(position, page.max(1)).await?;
            let Some(last) = events.last() else { break };
            let (mut deltas, mut next, mut calls) = (BTreeMap::new(), cursor.clone(), 0);
            for e in &events {
                fold(e, &mut deltas, &mut next, &mut calls)?;
            }
            if self.write(&deltas, position, last.position, &next).await? {
                (position, cursor) = (last.position, next);
                done.events += events.len() as u64;
                done.calls += calls;
            } else {
                // Another projector (or a rebuild) moved the checkpoint since this page was read:
                // the page would count twice. Start again from where it left the checkpoint.
                (position, cursor) = self.checkpoint_or_start().await?;
            }
        }
        done.position = position;
        Ok(done)
    }

    /// Adds a page's deltas and moves the checkpoint from `from` to `position`, in one
    /// transaction, only if the checkpoint is still at `from` and its fold began at the same
    /// origin (false: it moved or was rebuilt meanwhile, nothing written).
    async fn write(
        &mut self,
        deltas: &Deltas,
        from: i64,
        position: i64,
        cursor: &Cursor,
    ) -> Result<bool, JournalError> {
        self.conn.execute("BEGIN IMMEDIATE").await.map_err(io)?;
        let result: Result<bool, sqlx::Error> = async {
            // Checked under the write lock, so two projectors on one file never both add a page.
            let stored: Option<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT position, cursor FROM projections WHERE name = ?")
                    .bind(NAME)
                    .fetch_optional(&mut self.conn)
                    .await?;
            let Some((at, stored)) = stored else {
                return Ok(false);
            };
            let origin = rmp_serde::from_slice::<Cursor>(&stored).unwrap_or_default().origin;
            if at != from || origin != cursor.origin {
                return Ok(false);
            }
            // One range read per stream and multi-row upserts: a statement per minute row cost
            // ~90 µs of round trip each and made a 10 M-outcome catch-up take 50 s.
            let ranges: BTreeMap<&str, (u64, u64)> = deltas
                .iter()
                .filter_map(|(stream, minutes)| {
                    let (lo, hi) = (minutes.first_key_value()?.0, minutes.last_key_value()?.0);
                    Some((stream.as_str(), (*lo, *hi)))
                })
                .collect();
            let mut old: BTreeMap<(&str, u64), Minute> = BTreeMap::new();
            for (stream, (lo, hi)) in &ranges {
                let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT minute_ms, data FROM metrics_minutes WHERE stream = ? AND minute_ms BETWEEN ? AND ?",
                )
                .bind(*stream)
                .bind(*lo as i64)
                .bind(*hi as i64)
                .fetch_all(&mut self.conn)
                .await?;
                for (m, d) in rows {
                    if let Ok(row) = rmp_serde::from_slice::<Minute>(&d) {
                        old.insert((stream, m as u64), row);
                    }
                }
            }
            let merged: Vec<(&str, u64, Vec<u8>)> = deltas
                .iter()
                .flat_map(|(stream, minutes)| minutes.iter().map(move |(minute, delta)| (stream, minute, delta)))
                .map(|(stream, minute, delta)| {
                    let mut row = old.remove(&(stream.as_str(), *minute)).unwrap_or(Minute {
                        minute_ms: *minute,
                        ..Minute::default()
                    });
                    row.merge(delta);
                    let data = rmp_serde::to_vec_named(&row).expect("plain data encodes");
                    (stream.as_str(), *minute, data)
                })
                .collect();
            // 3 binds per row stays far below SQLite's 32,766-variable limit.
            for chunk in merged.chunks(1_000) {
                let mut q =
                    sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO metrics_minutes (stream, minute_ms, data) ");
                q.push_values(chunk, |mut b, (s, m, d)| {
                    b.push_bind(*s).push_bind(*m as i64).push_bind(d.as_slice());
                });
                q.push(" ON CONFLICT (stream, minute_ms) DO UPDATE SET data = excluded.data");
                q.build().execute(&mut self.conn).await?;
            }
            sqlx::query(
                "INSERT INTO projections (name, position, cursor) VALUES (?, ?, ?)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, cursor = excluded.cursor",
            )
            .bind(NAME)
            .bind(position)
            .bind(rmp_serde::to_vec_named(cursor).expect("plain data encodes"))
            .execute(&mut self.conn)
            .await?;
            Ok(true)
        }
        .await;
        crate::journal::end_checked(&mut self.conn, result).await.map_err(io)
    }

    /// Forgets everything and folds the whole log again.
    pub async fn rebuild(&mut self, journal: &Journal, page: u32) -> Result<CatchUp, JournalError> {
        self.conn.execute("BEGIN IMMEDIATE").await.map_err(io)?;
        let cleared = async {
            self.conn.execute("DELETE FROM metrics_minutes").await?;
            // Back to position 0 with a new origin in the same transaction: no compaction commits
            // between the two, and none in between sees no checkpoint.
            let cursor = fresh_cursor(&mut self.conn).await?;
            sqlx::query(
                "INSERT INTO projections (name, position, cursor) VALUES (?, 0, ?)
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position, cursor = excluded.cursor",
            )
            .bind(NAME)
            .bind(cursor)
            .execute(&mut self.conn)
            .await?;
            Ok::<_, sqlx::Error>(())
        }
        .await;
        match cleared {
            Ok(()) => self.conn.execute("COMMIT").await.map_err(io)?,
            Err(e) => {
                let _ = self.conn.execute("ROLLBACK").await;
                return Err(io(e));
            }
        };
        self.catch_up(journal, page).await
    }

    /// A breaker's stored minutes in `[from_ms, to_ms]`, with the time in its current state up to
    /// `to_ms` added (the stored rows hold time in state only up to the last transition).
    pub async fn minutes(
        &mut self,
        stream: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<BTreeMap<u64, Minute>, JournalError> {
        let (_, cursor) = self.checkpoint().await?;
        self.minutes_at(stream, from_ms, to_ms, &cursor).await
    }

    /// [`Projection::minutes`] against a checkpoint cursor the caller has already read.
    async fn minutes_at(
        &mut self,
        stream: &str,
        from_ms: u64,
        to_ms: u64,
        cursor: &Cursor,
    ) -> Result<BTreeMap<u64, Minute>, JournalError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT minute_ms, data FROM metrics_minutes WHERE stream = ? AND minute_ms >= ? AND minute_ms <= ? ORDER BY minute_ms",
        )
        .bind(stream)
        .bind(minute_of(from_ms) as i64)
        .bind(to_ms as i64)
        .fetch_all(&mut self.conn)
        .await
        .map_err(io)?;
        let mut out: BTreeMap<u64, Minute> = rows
            .into_iter()
            .filter_map(|(m, d)| rmp_serde::from_slice(&d).ok().map(|row| (m as u64, row)))
            .collect();
        if let Some((state, since)) = cursor.states.get(stream) {
            let mut deltas = BTreeMap::new();
            spend(&mut deltas, stream, *state, (*since).max(from_ms), to_ms);
            for (m, d) in deltas.into_values().flatten() {
                out.entry(m)
                    .or_insert_with(|| Minute {
                        minute_ms: m,
                        ..Minute::default()
                    })
                    .merge(&d);
            }
        }
        Ok(out)
    }

    /// Each breaker's minutes added up over everything stored (the counters `/metrics` exports).
    pub async fn totals(&mut self) -> Result<BTreeMap<String, Minute>, JournalError> {
        let mut out: BTreeMap<String, Minute> = BTreeMap::new();
        for (stream, _, m) in self.dump().await? {
            out.entry(stream).or_default().merge(&m);
        }
        Ok(out)
    }

    /// Everything stored, for comparing two projections.
    pub async fn dump(&mut self) -> Result<Vec<(String, u64, Minute)>, JournalError> {
        let rows: Vec<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT stream, minute_ms, data FROM metrics_minutes ORDER BY stream, minute_ms")
                .fetch_all(&mut self.conn)
                .await
                .map_err(io)?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, m, d)| rmp_serde::from_slice(&d).ok().map(|row| (s, m as u64, row)))
            .collect())
    }

    /// The health of every breaker in `budgets` (key → latency budget) at `at_ms`, from the
    /// stored minutes of the last five minutes and the transitions of the last hour.
    pub async fn health_all(
        &mut self,
        journal: &Journal,
        budgets: &BTreeMap<String, u64>,
        at_ms: u64,
    ) -> Result<BTreeMap<String, Health>, JournalError> {
        let hour_ago = at_ms.saturating_sub(3_600_000);
        let (transitions, _) = super::transitions_by_stream(journal, hour_ago, at_ms + 1, 0).await?;
        // One checkpoint for every breaker: it holds all their states.
        let (_, cursor) = self.checkpoint().await?;
        let mut out = BTreeMap::new();
        for (stream, budget) in budgets {
            let minutes = self
                .minutes_at(stream, at_ms.saturating_sub(5 * 60_000), at_ms, &cursor)
                .await?;
            let t = transitions.get(stream).map(Vec::as_slice).unwrap_or(&[]);
            out.insert(stream.clone(), health(&minutes, t, at_ms, *budget));
        }
        Ok(out)
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}
