//! A breaker as it was at an instant, from a bounded stretch of its stream.
//!
//! Folding the whole stream gives the answer too, but costs the stream's length (0.7 s for a
//! packed 24-hour stream at 100 calls/s, ~30 s written one call per row). [`state_at`] reads only
//! what the answer depends on (`docs/replay.md`, "How `state_at` reads the log"):
//!
//! - **the breaker**: from the latest snapshot recorded at least [`LATE_MS`] before the health
//!   window, the stream's rows in log order up to the first one recorded more than [`LATE_MS`]
//!   after the instant, folded with [`fold`] (which stops at the first event after the instant,
//!   exactly as on the whole stream);
//! - **the health**: the calls and call stats of those same rows (they cover the window), the
//!   call summaries of the window's hours, and the transitions of the hour before the instant,
//!   both by index range;
//! - **the last transition** and **"compacted?"**: index probes.
//!
//! It gives exactly what the fold of the whole stream gives as long as a stream's rows are in
//! time order to within [`LATE_MS`] (the live path keeps them to within a millisecond) and a
//! snapshot is the fold of the events stored before it (what recovery relies on too).

use super::{Entry, Health, Item, fold, health, minutes, push};
use crate::breaker::codec::{self, types};
use crate::breaker::{Breaker, Event, Policy, Transition};
use crate::journal::{CALL_BATCH, CALL_STATS, CALL_SUMMARY, Decoded, Journal, JournalError, SNAPSHOT, decode};
use serde::Serialize;

/// How far out of time order one stream's rows may be, in ms: a row is never stored after an
/// event of the same stream more than this much later than the row's own first event.
///
/// The live path keeps a stream in time order to within a millisecond (the actor folds an
/// instant's records once it is over, sorted; snapshots and call stats are stamped with the
/// actor's monotonic clock after what they cover; the writer keeps each stream's order). 10 s
/// leaves four orders of magnitude for what is not foreseen, e.g. a wall clock stepped back across
/// a restart. It costs 2 × 10 s of extra rows per look-up (~2,000 rows at 100 calls/s).
pub const LATE_MS: u64 = 10_000;

/// Rows of the first read of the stream; each next read takes twice as many, up to
/// [`PAGE_ROWS`]. Small at first because the stop is not known in advance and a packed row holds
/// thousands of calls (a first page of 2,000 packed rows would read most of a day's log).
const FIRST_PAGE_ROWS: u32 = 16;
/// Rows per read of the stream at most (a bound on what one statement returns; the last page
/// read may run up to this many rows past what is needed).
const PAGE_ROWS: u32 = 2_000;
/// Events per read of the transition and summary ranges.
const PAGE_EVENTS: u32 = 10_000;
/// Types of the rows `fold` acts on: breaker events (packed calls included) and snapshots.
const BREAKER_ROWS: [&str; 6] = [
    CALL_BATCH,
    SNAPSHOT,
    types::CALL_RECORDED,
    types::TRIAL_ADMITTED,
    types::TRANSITION,
    types::POLICY_APPLIED,
];
const MINUTE: u64 = 60_000;
const FIVE_MIN: u64 = 5 * MINUTE;
const HOUR: u64 = 60 * MINUTE;

/// A breaker as it was at an instant.
#[derive(Clone, Debug, Serialize)]
pub struct StateAt {
    /// The breaker key.
    pub stream: String,
    /// The instant.
    pub at_ms: u64,
    /// State, windows, counts, trial permits as the core has them.
    pub view: crate::breaker::View,
    /// Time left in OPEN at that instant.
    pub open_remaining_ms: Option<u64>,
    /// The policy in force.
    pub policy: Policy,
    /// The last transition at or before the instant.
    pub last_transition: Option<Transition>,
    /// Per-call detail was compacted before this instant (counts there come from snapshots and
    /// summaries), when it was.
    pub compacted: bool,
    /// The health score at that instant, with its components.
    pub health: Health,
    /// Events read for it that cannot be decoded and were skipped (see [`super::damaged`]):
    /// the answer may differ from what was live when this is not empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
}

/// The breaker `stream` as it was at `at_ms` (its health judged against `latency_budget_ms`):
/// what folding the whole stream up to `at_ms` gives, read from a bounded stretch of it (see the
/// module docs for what is read, and `docs/replay.md` for why it is the same answer). Every event
/// stamped `at_ms` is included.
pub async fn state_at(
    journal: &Journal,
    stream: &str,
    at_ms: u64,
    fallback: &Policy,
    latency_budget_ms: u64,
) -> Result<StateAt, JournalError> {
    // The health window: whole minutes from 5 minutes before the instant (as `health` reads them).
    let window_ms = at_ms.saturating_sub(FIVE_MIN) / MINUTE * MINUTE;
    // Start at a snapshot recorded more than LATE_MS before the window: every event stored before
    // it happened before `snapshot + LATE_MS`, i.e. before the window (so before the instant too,
    // and the whole-stream fold reaches this snapshot and starts over from it, as we do).
    let start = match window_ms.checked_sub(LATE_MS + 1) {
        Some(cut) => journal.latest_at_or_before(stream, SNAPSHOT, cut).await?,
        None => None,
    };
    // Read up to the first timed row recorded more than LATE_MS after the instant: no event at or
    // before the instant is stored after it.
    let end_ms = at_ms.saturating_add(LATE_MS);
    let mut entries: Vec<Entry> = Vec::new();
    let mut after = start.as_ref().map_or(0, |s| s.seq - 1);
    let mut taken_to_seq = after;
    let mut page_rows = FIRST_PAGE_ROWS;
    'read: loop {
        let page = journal.read_stream(stream, after, page_rows).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if e.event_type == CALL_SUMMARY {
                taken_to_seq = e.seq;
                continue;
            }
            if timed(&e.event_type) && e.recorded_at.max(0) as u64 > end_ms {
                break 'read;
            }
            push(&mut entries, e)?;
            taken_to_seq = e.seq;
        }
        if page.len() < page_rows as usize {
            break;
        }
        page_rows = (page_rows * 2).min(PAGE_ROWS);
    }
    // The whole-stream fold stops at the first breaker event after the instant. If none was read,
    // it goes on past the stop row, and every snapshot it meets before that event replaces what it
    // folded (all later events happened after the instant, so nothing else counts). Where call
    // batches were compacted away, such a snapshot holds calls the rows no longer do: take the
    // same snapshots, by index, without reading the rows in between.
    let stopped = entries
        .iter()
        .any(|e| matches!(&e.item, Item::Core(ev) if ev.at_ms() > at_ms));
    if !stopped {
        let mut after = taken_to_seq;
        while let Some(next) = journal.first_of_types(stream, after, &BREAKER_ROWS).await? {
            if next.event_type != SNAPSHOT {
                break;
            }
            after = next.seq;
            push(&mut entries, &next)?;
        }
    }
    // `fold` takes its first policy from the stream's first policy change or snapshot. Without a
    // start snapshot the rows read are the stream's beginning; if they hold neither, it is further
    // on.
    let mut fallback = fallback.clone();
    let has_initial = |entries: &[Entry]| {
        entries
            .iter()
            .any(|e| matches!(e.item, Item::Core(Event::PolicyApplied(_)) | Item::Snapshot(_)))
    };
    if start.is_none()
        && !has_initial(&entries)
        && let Some(first) = journal
            .first_of_types(stream, taken_to_seq, &[types::POLICY_APPLIED, SNAPSHOT])
            .await?
    {
        // Undecodable, it is as if missing (the fold below meets it as damaged and says so).
        let initial = match decode(&first).unwrap_or(Decoded::Other) {
            Decoded::Snapshot(b) => Some(b.policy().clone()),
            Decoded::Breaker(events) => events.into_iter().find_map(|ev| match ev {
                Event::PolicyApplied(p) => Some(p.policy),
                _ => None,
            }),
            _ => None,
        };
        // An invalid stored policy makes the whole-stream fold use the fallback: so do we.
        if let Some(p) = initial.filter(|p| Breaker::new(p.clone()).is_ok()) {
            fallback = p;
        }
    }
    let breaker = fold(&entries, Some(at_ms), &fallback);

    // Compacted minutes of the window: summaries are one event per stream and hour, recorded at
    // the hour's start, so the window's are those recorded from its first hour to the instant.
    let summaries = journal
        .read_stream_range(stream, CALL_SUMMARY, window_ms / HOUR * HOUR, at_ms, PAGE_EVENTS)
        .await?;
    for e in &summaries {
        push(&mut entries, e)?;
    }

    // Transitions: the last one at or before the instant (by time; rows out of order by less
    // than LATE_MS may put a slightly earlier one after it in the log, so read from LATE_MS
    // before it and take the last in log order), and those of the hour before the instant.
    let mut recent: Vec<Transition> = Vec::new();
    if let Some(latest) = journal.latest_at_or_before(stream, types::TRANSITION, at_ms).await? {
        let from_ms = (latest.recorded_at.max(0) as u64)
            .saturating_sub(LATE_MS)
            .min(at_ms.saturating_add(1).saturating_sub(HOUR));
        let stored = journal
            .read_stream_range(stream, types::TRANSITION, from_ms, at_ms, PAGE_EVENTS)
            .await?;
        for e in &stored {
            let decoded = match decode(e) {
                Ok(d) => d,
                Err(why) => {
                    // Reported with the others (unless the fold read it already), and skipped.
                    if !entries.iter().any(|x| x.position == e.position) {
                        entries.push(Entry {
                            position: e.position,
                            item: Item::Damaged(format!("{} event: {why}", e.event_type)),
                        });
                    }
                    continue;
                }
            };
            if let Decoded::Breaker(events) = decoded {
                recent.extend(events.into_iter().filter_map(|ev| match ev {
                    Event::Transitioned(t) if t.at_ms <= at_ms => Some(*t),
                    _ => None,
                }));
            }
        }
    }
    let compacted = journal.has_event_type(stream, CALL_SUMMARY).await?;
    let view = breaker.view(at_ms);
    // The budget recorded with the policy in force, so `replay --at` scores alike with or
    // without the configuration; the given one for policies recorded before it was.
    let budget = breaker.policy().latency_budget_ms.unwrap_or(latency_budget_ms);
    let health = health(&minutes(&entries, at_ms), &recent, at_ms, budget, view.state);
    Ok(StateAt {
        stream: stream.to_owned(),
        at_ms,
        open_remaining_ms: view.open_until_ms.map(|u| u.saturating_sub(at_ms)),
        view,
        policy: breaker.policy().clone(),
        last_transition: recent.last().cloned(),
        compacted,
        health,
        damaged: super::damaged(&entries),
    })
}

/// Rows whose time bounds the read: breaker events, snapshots and call stats. Call summaries are
/// written at compaction time with an old time (and are read by index instead); other types
/// (operator commands…) change nothing a replay computes.
fn timed(event_type: &str) -> bool {
    event_type == CALL_BATCH || event_type == SNAPSHOT || event_type == CALL_STATS || codec::is_core_type(event_type)
}
