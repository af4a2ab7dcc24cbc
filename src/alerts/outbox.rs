//! The notifier's view of its tables (stored by [`crate::journal::OutboxStore`], in the storage
//! layer, through the process's one write connection): its checkpoint with the episode
//! detector's state, and the outbox of messages to deliver, typed.

use super::episode::{Episodes, Notice};
use crate::journal::{AlertStatus, Journal, OutboxMessage, OutboxRow, OutboxStore, StoreError, StoredEvent};

pub use crate::journal::OutboxState;

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

fn item(r: OutboxRow) -> Result<OutboxItem, (i64, rmp_serde::decode::Error)> {
    Ok(OutboxItem {
        notice: rmp_serde::from_slice(&r.notice).map_err(|e| (r.id, e))?,
        id: r.id,
        sink: r.sink,
        created_ms: r.created_ms,
        attempts: r.attempts,
        next_attempt_ms: r.next_attempt_ms,
        state: r.state,
        done_ms: r.done_ms,
        last_error: r.last_error,
    })
}

/// A transition or operator command read from the log.
pub(crate) type Read = StoredEvent;

/// The notifier's tables.
pub(crate) struct Store(OutboxStore);

impl Store {
    /// On the journal's file (the journal has applied the migrations).
    pub fn open(journal: &Journal) -> Store {
        Store(journal.outbox_store())
    }

    /// The checkpoint: the log position read up to and the detector's state there. `None`
    /// before the notifier's first run on this file.
    pub async fn checkpoint(&mut self) -> Result<Option<(i64, Episodes)>, StoreError> {
        self.0
            .checkpoint()
            .await?
            .map(|(p, c)| {
                rmp_serde::from_slice(&c)
                    .map(|e| (p, e))
                    .map_err(|e| StoreError::Io(format!("the alert checkpoint does not decode: {e}")))
            })
            .transpose()
    }

    /// The last position in the log.
    pub async fn last_position(&mut self) -> Result<i64, StoreError> {
        self.0.last_position().await
    }

    /// Transitions and operator commands in `(after, upto]`, at most `limit`, in log order.
    pub async fn read(&mut self, after: i64, upto: i64, limit: u32) -> Result<Vec<Read>, StoreError> {
        self.0.read(after, upto, limit).await
    }

    /// Moves the checkpoint from `from` to `to` with the detector's state and enqueues
    /// `messages` (sink, notice), or nothing when another notifier moved it (false).
    pub async fn advance(
        &mut self,
        from: Option<i64>,
        to: i64,
        episodes: &Episodes,
        messages: &[(String, Notice)],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let messages = messages
            .iter()
            .filter_map(|(sink, n)| {
                let status = match n.status {
                    AlertStatus::Firing => "firing",
                    AlertStatus::Resolved => "resolved",
                    AlertStatus::Test => return None,
                };
                Some(OutboxMessage {
                    sink: sink.clone(),
                    fingerprint: n.fingerprint.clone(),
                    status,
                    breaker: n.breaker.clone(),
                    episode_start_ms: n.starts_at_ms,
                    notice: rmp_serde::to_vec_named(n).expect("plain data encodes"),
                })
            })
            .collect();
        let cursor = rmp_serde::to_vec_named(episodes).expect("plain data encodes");
        self.0.advance(from, to, cursor, messages, now_ms).await
    }

    /// Pending messages due at `now_ms`, oldest first, at most `limit` (the order rules are
    /// [`OutboxStore::due`]'s). A message this version cannot read can never be sent: it is
    /// given up (and stops holding its sink's queue), not left pending forever.
    pub async fn due(&mut self, now_ms: u64, limit: u32) -> Result<Vec<OutboxItem>, StoreError> {
        let mut due = Vec::new();
        let mut unreadable = Vec::new();
        for r in self.0.due(now_ms, limit).await? {
            match item(r) {
                Ok(i) => due.push(i),
                Err((id, e)) => {
                    tracing::error!(id, error = %e, "an outbox message that does not decode was abandoned");
                    unreadable.push((
                        id,
                        OutboxState::Abandoned,
                        0,
                        0,
                        Some("the stored message does not decode".to_owned()),
                    ));
                }
            }
        }
        self.0.update(unreadable, now_ms).await?;
        Ok(due)
    }

    /// When the earliest pending message is due.
    pub async fn next_due(&mut self) -> Result<Option<u64>, StoreError> {
        self.0.next_due().await
    }

    /// How many messages are pending.
    pub async fn pending(&mut self) -> Result<u64, StoreError> {
        self.0.pending().await
    }

    /// Records attempts' results (id, new state, attempts made, next due time, error), together.
    pub async fn update(
        &mut self,
        updates: Vec<(i64, OutboxState, u32, u64, Option<String>)>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.0.update(updates, now_ms).await
    }

    /// Forgets finished messages older than `before_ms`.
    pub async fn prune(&mut self, before_ms: u64) -> Result<u64, StoreError> {
        self.0.prune(before_ms).await
    }

    /// Every message, oldest first (inspection and tests); one that does not decode is an error.
    pub async fn all(&mut self) -> Result<Vec<OutboxItem>, StoreError> {
        self.0
            .all()
            .await?
            .into_iter()
            .map(|r| item(r).map_err(|(id, e)| StoreError::Io(format!("outbox message {id} does not decode: {e}"))))
            .collect()
    }
}
