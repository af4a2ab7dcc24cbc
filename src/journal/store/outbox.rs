//! The alert notifier's tables (`migrations/0003_alerts.sql`): its checkpoint in the log (the
//! episode detector's state, encoded by the notifier) and the outbox of messages to deliver.
//! Writes go through the one write connection ([`SideWriter`]); reads use the read pool. The
//! messages' content is the notifier's; this layer stores it as bytes with the columns the
//! delivery order needs.

use super::{ConnFuture, RowTuple, SideWriter, StoreError, classify, stored};
use crate::journal::StoredEvent;
use sqlx::{Executor, SqliteConnection, SqlitePool};

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

    fn parse(s: &str) -> Result<OutboxState, StoreError> {
        Ok(match s {
            "pending" => OutboxState::Pending,
            "delivered" => OutboxState::Delivered,
            "rejected" => OutboxState::Rejected,
            "abandoned" => OutboxState::Abandoned,
            other => return Err(StoreError::Io(format!("an outbox row has the unknown state {other:?}"))),
        })
    }
}

/// A message to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The sink's name.
    pub sink: String,
    /// The episode's fingerprint (with `sink` and `status`, the deduplication key).
    pub fingerprint: String,
    /// `firing` or `resolved`.
    pub status: &'static str,
    /// The breaker it is about.
    pub breaker: String,
    /// When its episode began.
    pub episode_start_ms: u64,
    /// The encoded message.
    pub notice: Vec<u8>,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRow {
    /// Row id (delivery order).
    pub id: i64,
    /// The sink's name.
    pub sink: String,
    /// The encoded message.
    pub notice: Vec<u8>,
    /// When it was enqueued (ms).
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

fn row((id, sink, notice, created, attempts, next, state, done, err): ItemRow) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id,
        sink,
        notice,
        created_ms: created.max(0) as u64,
        attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
        next_attempt_ms: next.max(0) as u64,
        state: OutboxState::parse(&state)?,
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

/// The notifier's tables.
pub struct OutboxStore {
    side: SideWriter,
    pool: SqlitePool,
}

impl OutboxStore {
    pub(crate) fn new(side: SideWriter, pool: SqlitePool) -> OutboxStore {
        OutboxStore { side, pool }
    }

    /// The checkpoint: the log position read up to and the encoded detector state there.
    /// `None` before the notifier's first run on this file.
    pub async fn checkpoint(&self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        sqlx::query_as("SELECT position, cursor FROM alert_checkpoint WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(classify)
    }

    /// The last position in the log.
    pub async fn last_position(&self) -> Result<i64, StoreError> {
        let (p,): (Option<i64>,) = sqlx::query_as("SELECT MAX(position) FROM events")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(p.unwrap_or(0))
    }

    /// Transitions, operator commands and fleet alerts in `(after, upto]`, at most `limit`, in log order. A
    /// range scan of the primary key that skips other types without decoding them (per-call
    /// batches are most of the log).
    pub async fn read(&self, after: i64, upto: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows: Vec<RowTuple> = sqlx::query_as(select!(
            " WHERE position > ? AND position <= ? AND event_type IN ('transition', 'operator_command', 'fleet_alert')
             ORDER BY position LIMIT ?"
        ))
        .bind(after)
        .bind(upto)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows.into_iter().map(stored).collect())
    }

    /// Moves the checkpoint from `from` (`None`: no checkpoint yet) to `to` with `cursor`, and
    /// enqueues `messages` — one transaction, only if the checkpoint is still at `from` (false:
    /// another notifier moved it; nothing written). A message already in the outbox (same sink,
    /// fingerprint and status) is ignored: the deduplication.
    pub async fn advance(
        &self,
        from: Option<i64>,
        to: i64,
        cursor: Vec<u8>,
        messages: Vec<OutboxMessage>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.side
            .run(move |conn: &mut SqliteConnection| -> ConnFuture<'_, Result<bool, StoreError>> {
                Box::pin(async move {
                    conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
                    let body = async {
                        let stored: Option<(i64,)> = sqlx::query_as("SELECT position FROM alert_checkpoint WHERE id = 1")
                            .fetch_optional(&mut *conn)
                            .await?;
                        if stored.map(|(p,)| p) != from {
                            return Ok(false);
                        }
                        let now = now_ms.min(i64::MAX as u64) as i64;
                        for m in &messages {
                            sqlx::query(
                                "INSERT INTO alert_outbox (sink, fingerprint, status, breaker, episode_start_ms, notice, created_ms, next_attempt_ms)
                                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sink, fingerprint, status) DO NOTHING",
                            )
                            .bind(&m.sink)
                            .bind(&m.fingerprint)
                            .bind(m.status)
                            .bind(&m.breaker)
                            .bind(m.episode_start_ms.min(i64::MAX as u64) as i64)
                            .bind(m.notice.as_slice())
                            .bind(now)
                            .bind(now)
                            .execute(&mut *conn)
                            .await?;
                        }
                        sqlx::query(
                            "INSERT INTO alert_checkpoint (id, position, cursor, updated_at) VALUES (1, ?, ?, ?)
                             ON CONFLICT (id) DO UPDATE SET position = excluded.position, cursor = excluded.cursor,
                             updated_at = excluded.updated_at",
                        )
                        .bind(to)
                        .bind(cursor.as_slice())
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                        Ok(true)
                    }
                    .await;
                    super::end_checked(conn, body).await.map_err(classify)
                })
            })
            .await
    }

    /// Pending messages due at `now_ms`, oldest first, at most `limit`. A sink's messages go out
    /// in order: one waiting for a retry or a rate-limit slot holds back the sink's newer ones
    /// (so a sink that is down is not hammered). A resolved message waits while the firing of
    /// its episode is still pending for the same sink, so a receiver never hears "resolved"
    /// before "firing".
    pub async fn due(&self, now_ms: u64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
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
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.into_iter().map(row).collect()
    }

    /// When the earliest pending message is due.
    pub async fn next_due(&self) -> Result<Option<u64>, StoreError> {
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
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(t.map(|t| t.max(0) as u64))
    }

    /// How many messages are pending.
    pub async fn pending(&self) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM alert_outbox WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(n.max(0) as u64)
    }

    /// Records attempts' results, in one transaction: per message (id, new state, attempts made,
    /// next due time, error).
    pub async fn update(
        &self,
        updates: Vec<(i64, OutboxState, u32, u64, Option<String>)>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.side
            .run(move |conn: &mut SqliteConnection| -> ConnFuture<'_, Result<(), StoreError>> {
                Box::pin(async move {
                    conn.execute("BEGIN IMMEDIATE").await.map_err(classify)?;
                    let body = async {
                        for (id, state, attempts, next_attempt_ms, error) in &updates {
                            let done = (*state != OutboxState::Pending).then_some(now_ms.min(i64::MAX as u64) as i64);
                            sqlx::query(
                                "UPDATE alert_outbox SET state = ?, attempts = ?, next_attempt_ms = ?, done_ms = ?, last_error = ? WHERE id = ?",
                            )
                            .bind(state.as_str())
                            .bind(i64::from(*attempts))
                            .bind((*next_attempt_ms).min(i64::MAX as u64) as i64)
                            .bind(done)
                            .bind(error.as_deref())
                            .bind(id)
                            .execute(&mut *conn)
                            .await?;
                        }
                        Ok(true)
                    }
                    .await;
                    super::end_checked(conn, body).await.map(|_| ()).map_err(classify)
                })
            })
            .await
    }

    /// Forgets finished messages older than `before_ms` (bounds the table; their delivery
    /// records stay in the log, and the checkpoint is past their events, so none comes back).
    pub async fn prune(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.side
            .run(
                move |conn: &mut SqliteConnection| -> ConnFuture<'_, Result<u64, StoreError>> {
                    Box::pin(async move {
                        let r = sqlx::query("DELETE FROM alert_outbox WHERE state <> 'pending' AND done_ms < ?")
                            .bind(before_ms.min(i64::MAX as u64) as i64)
                            .execute(&mut *conn)
                            .await
                            .map_err(classify)?;
                        Ok(r.rows_affected())
                    })
                },
            )
            .await
    }

    /// Every message, oldest first (inspection and tests).
    pub async fn all(&self) -> Result<Vec<OutboxRow>, StoreError> {
        let rows: Vec<ItemRow> = sqlx::query_as(items!(" ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(classify)?;
        rows.into_iter().map(row).collect()
    }
}
