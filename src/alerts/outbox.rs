//! The notifier's own tables (`migrations/0003_alerts.sql`): its checkpoint in the log with the
//! episode detector's state, and the outbox of messages to deliver. One connection of its own,
//! like the metrics projection; it writes only these tables and reads `events`.

use super::episode::{Episodes, Notice};
use crate::journal::{AlertStatus, Durability, StoreError, connect_options};
use sqlx::{ConnectOptions, Connection, Executor, SqliteConnection};
use std::path::Path;
use std::time::Duration;

fn io(e: sqlx::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Where a message stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Not delivered yet; due at `next_attempt_ms`.
    Pending,
    /// A sink answered 2xx.
    Delivered,
    /// A sink refused it (4xx other than 429): not retried.
    Rejected,
    /// Given up after `give_up_after`, or its sink is no longer configured.
    Abandoned,
}

impl OutboxState {
    fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Delivered => "delivered",
            OutboxState::Rejected => "rejected",
            OutboxState::Abandoned => "abandoned",
        }
    }

    fn parse(s: &str) -> OutboxState {
        match s {
            "delivered" => OutboxState::Delivered,
            "rejected" => OutboxState::Rejected,
            "abandoned" => OutboxState::Abandoned,
            _ => OutboxState::Pending,
        }
    }
}

/// One message for one sink.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OutboxItem {
    /// Row id (delivery order).
    pub id: i64,
    /// The sink's name.
    pub sink: String,
    /// What it says.
    pub notice: Notice,
    /// When it was enqueued (ms): `give_up_after` counts from here.
    pub created_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_attempt_ms: u64,
    /// Where it stands.
    pub state: OutboxState,
    /// When it was delivered, rejected or abandoned.
    pub done_ms: Option<u64>,
    /// The last failure (never a URL).
    pub last_error: Option<String>,
}

type ItemRow = (i64, String, Vec<u8>, i64, i64, i64, String, Option<i64>, Option<String>);

fn item((id, sink, notice, created, attempts, next, state, done, err): ItemRow) -> Option<OutboxItem> {
    Some(OutboxItem {
        id,
        sink,
        notice: rmp_serde::from_slice(&notice).ok()?,
        created_ms: created.max(0) as u64,
        attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
        next_attempt_ms: next.max(0) as u64,
        state: OutboxState::parse(&state),
        done_ms: done.map(|d| d.max(0) as u64),
        last_error: err,
    })
}

/// The item columns, as a literal (sqlx only takes audited, literal SQL).
macro_rules! items {
    ($rest:literal) => {
        concat!(
            "SELECT id, sink, notice, created_ms, attempts, next_attempt_ms, state, done_ms, last_error FROM alert_outbox",
            $rest
        )
    };
}

/// A transition or operator command read from the log.
pub(crate) struct Read {
    pub position: i64,
    pub stream: String,
    pub event_type: String,
    pub event_version: u32,
    pub payload: Vec<u8>,
}

/// The notifier's connection.
pub(crate) struct Store {
    conn: SqliteConnection,
}

impl Store {
    /// Opens a connection to the log file (the journal has applied the migrations).
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        // FULL: an acknowledged outbox write (a delivery marked done, a checkpoint moved with its
        // messages) survives power loss too; these writes are few.
        let conn = connect_options(path, Durability::Full, Duration::from_secs(5))
            .connect()
            .await
            .map_err(io)?;
        Ok(Store { conn })
    }

    /// The checkpoint: the log position read up to and the detector's state there. `None`
    /// before the notifier's first run on this file.
    pub async fn checkpoint(&mut self) -> Result<Option<(i64, Episodes)>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT position, cursor FROM alert_checkpoint WHERE id = 1")
            .fetch_optional(&mut self.conn)
            .await
            .map_err(io)?;
        row.map(|(p, c)| {
            rmp_serde::from_slice(&c)
                .map(|e| (p, e))
                .map_err(|e| StoreError::Io(format!("the alert checkpoint does not decode: {e}")))
        })
        .transpose()
    }

    /// The last position in the log.
    pub async fn last_position(&mut self) -> Result<i64, StoreError> {
        let (p,): (Option<i64>,) = sqlx::query_as("SELECT MAX(position) FROM events")
            .fetch_one(&mut self.conn)
            .await
            .map_err(io)?;
        Ok(p.unwrap_or(0))
    }

    /// Transitions and operator commands in `(after, upto]`, at most `limit`, in log order. A
    /// range scan of the primary key that skips other types without decoding them (per-call
    /// batches are most of the log).
    pub async fn read(&mut self, after: i64, upto: i64, limit: u32) -> Result<Vec<Read>, StoreError> {
        let rows: Vec<(i64, String, String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT position, stream, event_type, event_version, payload FROM events
             WHERE position > ? AND position <= ? AND event_type IN ('transition', 'operator_command')
             ORDER BY position LIMIT ?",
        )
        .bind(after)
        .bind(upto)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await
        .map_err(io)?;
        Ok(rows
            .into_iter()
            .map(|(position, stream, event_type, v, payload)| Read {
                position,
                stream,
                event_type,
                event_version: v.clamp(0, i64::from(u32::MAX)) as u32,
                payload,
            })
            .collect())
    }

    /// Moves the checkpoint from `from` (`None`: no checkpoint yet) to `to` with the detector's
    /// state, and enqueues `messages` (sink, notice) — one transaction, only if the checkpoint
    /// is still at `from` (false: another notifier moved it; nothing written). A message already
    /// in the outbox (same sink, fingerprint and status) is ignored: the deduplication.
    pub async fn advance(
        &mut self,
        from: Option<i64>,
        to: i64,
        episodes: &Episodes,
        messages: &[(String, Notice)],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.conn.execute("BEGIN IMMEDIATE").await.map_err(io)?;
        let result: Result<bool, sqlx::Error> = async {
            let stored: Option<(i64,)> = sqlx::query_as("SELECT position FROM alert_checkpoint WHERE id = 1")
                .fetch_optional(&mut self.conn)
                .await?;
            if stored.map(|(p,)| p) != from {
                return Ok(false);
            }
            for (sink, n) in messages {
                let status = match n.status {
                    AlertStatus::Firing => "firing",
                    AlertStatus::Resolved => "resolved",
                    AlertStatus::Test => continue,
                };
                sqlx::query(
                    "INSERT INTO alert_outbox (sink, fingerprint, status, breaker, episode_start_ms, notice, created_ms, next_attempt_ms)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sink, fingerprint, status) DO NOTHING",
                )
                .bind(sink)
                .bind(&n.fingerprint)
                .bind(status)
                .bind(&n.breaker)
                .bind(n.starts_at_ms.min(i64::MAX as u64) as i64)
                .bind(rmp_serde::to_vec_named(n).expect("plain data encodes"))
                .bind(now_ms as i64)
                .bind(now_ms as i64)
                .execute(&mut self.conn)
                .await?;
            }
            sqlx::query(
                "INSERT INTO alert_checkpoint (id, position, cursor, updated_at) VALUES (1, ?, ?, ?)
                 ON CONFLICT (id) DO UPDATE SET position = excluded.position, cursor = excluded.cursor,
                 updated_at = excluded.updated_at",
            )
            .bind(to)
            .bind(rmp_serde::to_vec_named(episodes).expect("plain data encodes"))
            .bind(now_ms as i64)
            .execute(&mut self.conn)
            .await?;
            Ok(true)
        }
        .await;
        crate::journal::end_checked(&mut self.conn, result).await.map_err(io)
    }

    /// Pending messages due at `now_ms`, oldest first, at most `limit`. A sink's messages go out
    /// in order: one waiting for a retry or a rate-limit slot holds back the sink's newer ones
    /// (so a sink that is down is not hammered). A resolved message waits while the firing of
    /// its episode is still pending for the same sink, so a receiver never hears "resolved"
    /// before "firing".
    pub async fn due(&mut self, now_ms: u64, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        let now = now_ms.min(i64::MAX as u64) as i64;
        let rows: Vec<ItemRow> = sqlx::query_as(items!(
            " o WHERE o.state = 'pending' AND o.next_attempt_ms <= ?
             AND NOT EXISTS (SELECT 1 FROM alert_outbox p WHERE p.sink = o.sink AND p.state = 'pending'
                 AND p.id < o.id AND p.next_attempt_ms > ?)
             AND NOT (o.status = 'resolved' AND EXISTS (SELECT 1 FROM alert_outbox f WHERE f.sink = o.sink
                 AND f.fingerprint = o.fingerprint AND f.status = 'firing' AND f.state = 'pending'))
             ORDER BY o.id LIMIT ?"
        ))
        .bind(now)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await
        .map_err(io)?;
        let mut due = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.0;
            match item(row) {
                Some(i) => due.push(i),
                None => {
                    // Written by a version whose message this one cannot read: it can never be
                    // sent, so it is given up (and stops holding the sink's queue), not left
                    // pending forever.
                    tracing::error!(id, "an outbox message that does not decode was abandoned");
                    self.update(
                        id,
                        OutboxState::Abandoned,
                        0,
                        0,
                        Some("the stored message does not decode"),
                        now_ms,
                    )
                    .await?;
                }
            }
        }
        Ok(due)
    }

    /// When the earliest pending message is due.
    pub async fn next_due(&mut self) -> Result<Option<u64>, StoreError> {
        // The same rules as `due`: a message is due no sooner than every older pending message
        // of its sink, and a resolved message behind a pending firing not before that firing
        // (else the loop would wake for it again and again).
        let (t,): (Option<i64>,) = sqlx::query_as(
            "SELECT MIN(MAX(o.next_attempt_ms, COALESCE((SELECT MAX(p.next_attempt_ms) FROM alert_outbox p
                 WHERE p.sink = o.sink AND p.state = 'pending' AND p.id < o.id), 0)))
             FROM alert_outbox o WHERE o.state = 'pending'
             AND NOT (o.status = 'resolved' AND EXISTS (SELECT 1 FROM alert_outbox f WHERE f.sink = o.sink
                 AND f.fingerprint = o.fingerprint AND f.status = 'firing' AND f.state = 'pending'))",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(io)?;
        Ok(t.map(|t| t.max(0) as u64))
    }

    /// How many messages are pending.
    pub async fn pending(&mut self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM alert_outbox WHERE state = 'pending'")
            .fetch_one(&mut self.conn)
            .await
            .map_err(io)?;
        Ok(n.max(0) as u64)
    }

    /// Records an attempt's result: the new state, attempts made, next due time and error.
    pub async fn update(
        &mut self,
        id: i64,
        state: OutboxState,
        attempts: u32,
        next_attempt_ms: u64,
        error: Option<&str>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let done = (state != OutboxState::Pending).then_some(now_ms as i64);
        sqlx::query(
            "UPDATE alert_outbox SET state = ?, attempts = ?, next_attempt_ms = ?, done_ms = ?, last_error = ? WHERE id = ?",
        )
        .bind(state.as_str())
        .bind(i64::from(attempts))
        .bind(next_attempt_ms.min(i64::MAX as u64) as i64)
        .bind(done)
        .bind(error)
        .bind(id)
        .execute(&mut self.conn)
        .await
        .map_err(io)?;
        Ok(())
    }

    /// Forgets finished messages older than `before_ms` (bounds the table; their delivery
    /// records stay in the log, and the checkpoint is past their events, so none comes back).
    pub async fn prune(&mut self, before_ms: u64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM alert_outbox WHERE state <> 'pending' AND done_ms < ?")
            .bind(before_ms.min(i64::MAX as u64) as i64)
            .execute(&mut self.conn)
            .await
            .map_err(io)?;
        Ok(r.rows_affected())
    }

    /// Every message, oldest first (inspection and tests).
    pub async fn all(&mut self) -> Result<Vec<OutboxItem>, StoreError> {
        let rows: Vec<ItemRow> = sqlx::query_as(items!(" ORDER BY id"))
            .fetch_all(&mut self.conn)
            .await
            .map_err(io)?;
        Ok(rows.into_iter().filter_map(item).collect())
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}
