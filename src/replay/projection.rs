//! The stored metrics projection (the seed's `circuit_breaker_metrics`): per breaker, per minute,
//! kept up to date by tailing the log from a checkpoint, and rebuildable from scratch. Folding
//! the log in one go or in any number of steps gives the same rows (tested), compaction between
//! the steps included: see `Cursor::origin` and `CallSummary::folded_by`.
//!
//! Each step folds a page of events into per-minute deltas and, in one transaction, merges them
//! into the stored rows and moves the checkpoint: a crash leaves the projection at the previous
//! checkpoint, never counted twice.

use super::health::{Health, health};
use super::metrics::{self, Minute};
use crate::breaker::{Event, State};
use crate::journal::{
    CALL_BATCH, Decoded, Journal, JournalError, MinuteRow, ProjectionStore, StoreError, StoredEvent, decode,
    decode_batch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// The metrics projection: folds the log into its tables (kept by the storage layer's
/// [`ProjectionStore`], written through the journal's one write connection).
pub struct Projection {
    store: ProjectionStore,
}

fn minute_of(t: u64) -> u64 {
    t / 60_000 * 60_000
}

/// Adds `to − from` ms in `state` to the stream's minutes it spans.
fn spend(deltas: &mut Deltas, stream: &str, state: State, from: u64, to: u64) {
    if from < to {
        metrics::spend(minutes_of(deltas, stream), state, from, to);
    }
}

/// A page's minutes by stream, then minute. By stream first so a row finds its stream by `&str`:
/// a `(String, minute)` key made every row allocate its stream's name.
type Deltas = crate::journal::Deltas<Minute>;

/// A stream's minutes in `deltas`, made on first sight (its name allocated only then).
fn minutes_of<'a>(deltas: &'a mut Deltas, stream: &str) -> &'a mut BTreeMap<u64, Minute> {
    if !deltas.contains_key(stream) {
        deltas.insert(stream.to_owned(), BTreeMap::new());
    }
    deltas.get_mut(stream).expect("inserted above")
}

fn entry<'a>(deltas: &'a mut Deltas, stream: &str, minute: u64) -> &'a mut Minute {
    minutes_of(deltas, stream).entry(minute).or_insert_with(|| Minute {
        minute_ms: minute,
        ..Minute::default()
    })
}

/// Folds one stored event into the deltas and the cursor.
fn fold(e: &StoredEvent, deltas: &mut Deltas, cursor: &mut Cursor, calls: &mut u64) {
    // An event that does not decode is reported with its position and skipped, as every fold of
    // the log does: one damaged record must not stop the metrics for good.
    let skipped = |error: &dyn std::fmt::Display| {
        tracing::warn!(
            position = e.position,
            stream = %e.stream,
            error = %error,
            "the metrics projection skipped an event that cannot be decoded"
        );
    };
    if e.event_type == CALL_BATCH {
        // Most rows: their calls are folded straight from the batch, without an event each.
        match decode_batch(e) {
            Ok(batch) => fold_events(e, batch.iter().map(Event::CallRecorded), deltas, cursor, calls),
            Err(why) => skipped(&why),
        }
        return;
    }
    let decoded = match decode(e) {
        Ok(d) => d,
        Err(why) => return skipped(&why),
    };
    match decoded {
        Decoded::Breaker(events) => fold_events(e, events.into_iter(), deltas, cursor, calls),
        // Compaction appends summaries after the batches they replace: count the calls once.
        Decoded::Summary(s) if e.position > cursor.origin && s.folded_by.iter().any(|n| n == NAME) => {}
        Decoded::Summary(s) => {
            for sm in &s.minutes {
                entry(deltas, &e.stream, sm.minute_ms).merge(&Minute::from_summary(sm));
                *calls += sm.calls();
            }
        }
        Decoded::Stats(s) => {
            let m = entry(deltas, &e.stream, minute_of(s.at_ms));
            m.rejected += s.rejected;
            m.fallbacks += s.fallbacks;
            m.dropped += s.dropped;
        }
        Decoded::Snapshot(_)
        | Decoded::Gap(_)
        | Decoded::Command(_)
        | Decoded::Request(_)
        | Decoded::Delivery(_)
        | Decoded::Anchor(_)
        | Decoded::Other => {}
    }
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

/// The encoded cursor of a fold beginning at `origin` (the log's last position then).
fn fresh_cursor(origin: i64) -> Vec<u8> {
    let cursor = Cursor {
        origin,
        ..Cursor::default()
    };
    rmp_serde::to_vec_named(&cursor).expect("plain data encodes")
}

fn store_err(e: StoreError) -> JournalError {
    JournalError::Store(e)
}

impl MinuteRow for Minute {
    fn empty(minute_ms: u64) -> Minute {
        Minute {
            minute_ms,
            ..Minute::default()
        }
    }

    fn add(&mut self, delta: &Minute) {
        self.merge(delta);
    }
}

impl Projection {
    /// The projection on the journal's file (the journal has created its tables); its writes go
    /// through the journal's one write connection.
    pub fn open(journal: &Journal) -> Projection {
        Projection {
            store: journal.projection_store(),
        }
    }

    /// The checkpoint, created at position 0 if there is none yet, with the log's last position
    /// as its origin, both read under the write lock so no compaction commits in between.
    async fn checkpoint_or_start(&mut self) -> Result<(i64, Cursor), JournalError> {
        if let Some(found) = self.stored_checkpoint().await? {
            return Ok(found);
        }
        self.store.start(fresh_cursor).await.map_err(store_err)?;
        self.checkpoint().await
    }

    async fn stored_checkpoint(&mut self) -> Result<Option<(i64, Cursor)>, JournalError> {
        match self.store.checkpoint().await.map_err(store_err)? {
            None => Ok(None),
            Some((p, c)) => match rmp_serde::from_slice(&c) {
                Ok(cursor) => Ok(Some((p, cursor))),
                Err(e) => Err(store_err(StoreError::Io(format!(
                    "the metrics projection's checkpoint does not decode: {e} (run `breakerbox rebuild`)"
                )))),
            },
        }
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
        // The checkpoint keeps a position; the log is tailed by its reader's own cursor.
        let mut tail = journal.cursor_at(position).await?;
        loop {
            let (events, after) = journal.tail(&tail, page.max(1)).await?;
            let Some(last) = events.last() else { break };
            let (mut deltas, mut next, mut calls) = (BTreeMap::new(), cursor.clone(), 0);
            for e in &events {
                fold(e, &mut deltas, &mut next, &mut calls);
            }
            if self.write(deltas, position, last.position, &next).await? {
                (position, cursor, tail) = (last.position, next, after);
                done.events += events.len() as u64;
                done.calls += calls;
            } else {
                // Another projector (or a rebuild) moved the checkpoint since this page was read:
                // the page would count twice. Start again from where it left the checkpoint.
                (position, cursor) = self.checkpoint_or_start().await?;
                tail = journal.cursor_at(position).await?;
            }
        }
        done.position = position;
        Ok(done)
    }

    /// Adds a page's deltas and moves the checkpoint from `from` to `position`, in one
    /// transaction, only if the checkpoint is still at `from` and its fold began at the same
    /// origin (false: it moved or was rebuilt meanwhile, nothing written).
    async fn write(&mut self, deltas: Deltas, from: i64, position: i64, cursor: &Cursor) -> Result<bool, JournalError> {
        let origin = cursor.origin;
        let same_fold = move |stored: &[u8]| rmp_serde::from_slice::<Cursor>(stored).is_ok_and(|c| c.origin == origin);
        let encoded = rmp_serde::to_vec_named(cursor).expect("plain data encodes");
        self.store
            .advance(from, position, encoded, same_fold, deltas)
            .await
            .map_err(store_err)
    }

    /// Forgets everything and folds the whole log again.
    pub async fn rebuild(&mut self, journal: &Journal, page: u32) -> Result<CatchUp, JournalError> {
        // Back to position 0 with a new origin in one transaction: no compaction commits between
        // the two, and none in between sees no checkpoint.
        self.store.restart(fresh_cursor).await.map_err(store_err)?;
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
        let out: BTreeMap<u64, Minute> = self
            .store
            .rows(stream, minute_of(from_ms), to_ms)
            .await
            .map_err(store_err)?;
        Ok(with_time_in_state(out, stream, from_ms, to_ms, cursor))
    }

    /// The log position the projection has folded up to (0 before its first fold): with the
    /// log's last committed position, how far behind it is.
    pub async fn position(&mut self) -> Result<i64, JournalError> {
        Ok(self.stored_checkpoint().await?.map_or(0, |(p, _)| p))
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
        self.store.all_rows().await.map_err(store_err)
    }

    /// The health of every breaker in `breakers` at `at_ms`, from the stored minutes of the
    /// last five minutes and the transitions of the last hour.
    pub async fn health_all(
        &mut self,
        journal: &Journal,
        breakers: &HealthInputs,
        at_ms: u64,
    ) -> Result<BTreeMap<String, Health>, JournalError> {
        let hour_ago = at_ms.saturating_sub(3_600_000);
        let (transitions, _) = super::transitions_by_stream(journal, hour_ago, at_ms + 1, 0).await?;
        // One checkpoint for every breaker (it holds all their states), and one read of every
        // breaker's rows of the last five minutes.
        let (_, cursor) = self.checkpoint().await?;
        let from_ms = at_ms.saturating_sub(5 * 60_000);
        let streams: Vec<&str> = breakers.keys().map(String::as_str).collect();
        let mut rows = self
            .store
            .rows_of::<Minute>(&streams, minute_of(from_ms), at_ms)
            .await
            .map_err(store_err)?;
        let mut out = BTreeMap::new();
        for (stream, (budget, state)) in breakers {
            let stored = rows.remove(stream).unwrap_or_default();
            let minutes = with_time_in_state(stored, stream, from_ms, at_ms, &cursor);
            let t = transitions.get(stream).map(Vec::as_slice).unwrap_or(&[]);
            out.insert(stream.clone(), health(&minutes, t, at_ms, *budget, *state));
        }
        Ok(out)
    }
}

/// Per breaker key: its latency budget (ms) and the state it is in at the instant asked about
/// (which caps its score: see [`super::cap_of`]).
pub type HealthInputs = BTreeMap<String, (u64, State)>;

/// A stream's stored minutes with the time in its current state up to `to_ms` added (the stored
/// rows hold time in state only up to the last transition the checkpoint has folded).
fn with_time_in_state(
    mut out: BTreeMap<u64, Minute>,
    stream: &str,
    from_ms: u64,
    to_ms: u64,
    cursor: &Cursor,
) -> BTreeMap<u64, Minute> {
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
    out
}
