//! Answers about the past, folded from the log with the core's own code: a breaker's state at
//! any instant, its timeline, the audit trail, and the recorded calls as a `simulate` trace.

mod audit;
mod export;
pub mod fleet;
mod fleet_whatif;
mod health;
mod metrics;
mod projection;
mod report;
mod state;
mod summary;
mod svg;
mod time;
mod timeline;
mod whatif;

pub use audit::{AuditEntry, AuditPage, AuditQuery, Damaged, Kind, audit, printable};
pub use export::{TraceLine, export};
pub use fleet_whatif::{FleetSide, FleetWhatIf, QuorumRule, fleet_what_if};
pub use health::{AMBER_FROM, Band, Component, GREEN_FROM, Health, cap_of, health};
pub use metrics::{Minute, minutes, open_ms, time_in_states};
pub use projection::{CatchUp, HealthInputs, Projection};
pub use report::{
    BreakerNow, BreakerReport, DEGRADED_UNANSWERED, FLAPPING_OPENINGS, FLAPPING_WINDOW_MS, HealthReport,
    MAX_EPISODE_TRANSITIONS, Override, Recent, Severity, Verdict, health_report,
};
pub use state::{LATE_MS, StateAt, state_at};
pub use summary::{Summary, summarize};
pub use svg::timeline_svg;
pub use time::{TimeError, parse_time};
pub use timeline::{Timeline, timeline};
pub use whatif::{Side, WhatIf, WhatIfError, open_time, what_if};

use crate::breaker::{Breaker, Event, Policy, Transition};
use crate::journal::{Decoded, Journal, JournalError, StoredEvent, decode};

/// One decoded event of a stream, with where it sits in the log.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Log position of the stored event it came from (a call batch gives several entries).
    pub position: i64,
    /// What it is.
    pub item: Item,
}

/// What an entry holds.
#[derive(Clone, Debug)]
pub enum Item {
    /// A core event.
    Core(Event),
    /// A snapshot of the breaker.
    Snapshot(Box<Breaker>),
    /// Per-minute summaries of compacted calls: per-call detail is gone there.
    Summary(crate::journal::CallSummary),
    /// Rejections, fallbacks and dropped outcomes counted by the actor.
    Stats(crate::journal::CallStats),
    /// Anything else (operator commands, call stats, gaps…).
    Other(String),
    /// An event that cannot be decoded (damaged, or written by a newer version): reported with
    /// its position and skipped by every fold, never the whole answer. Folds past it may
    /// differ from what was live; [`damaged`] lists them so a surface can say so.
    Damaged(String),
}

/// The entries that could not be decoded, as "position N (type): why" lines.
pub fn damaged(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| match &e.item {
            Item::Damaged(why) => Some(format!(
                "the event at position {} cannot be decoded and was skipped: {why}",
                e.position
            )),
            _ => None,
        })
        .collect()
}

/// Every event of a stream, decoded, in log order. An event that does not decode is an
/// [`Item::Damaged`] entry at its position (see [`damaged`]).
pub async fn history(journal: &Journal, stream: &str) -> Result<Vec<Entry>, JournalError> {
    history_with_progress(journal, stream, |_| {}).await
}

/// As [`history`], calling `progress` with the number of stored events read after each page
/// (long replays show it on a terminal).
pub async fn history_with_progress(
    journal: &Journal,
    stream: &str,
    mut progress: impl FnMut(u64),
) -> Result<Vec<Entry>, JournalError> {
    let mut read = 0u64;
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = journal.read_stream(stream, after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            push(&mut out, e)?;
        }
        read += page.len() as u64;
        progress(read);
    }
    Ok(out)
}

fn push(out: &mut Vec<Entry>, e: &StoredEvent) -> Result<(), JournalError> {
    let decoded = match decode(e) {
        Ok(d) => d,
        Err(why) => {
            out.push(Entry {
                position: e.position,
                item: Item::Damaged(format!("{} event: {why}", e.event_type)),
            });
            return Ok(());
        }
    };
    match decoded {
        Decoded::Breaker(events) => out.extend(events.into_iter().map(|ev| Entry {
            position: e.position,
            item: Item::Core(ev),
        })),
        Decoded::Snapshot(b) => out.push(Entry {
            position: e.position,
            item: Item::Snapshot(b),
        }),
        Decoded::Summary(s) => out.push(Entry {
            position: e.position,
            item: Item::Summary(s),
        }),
        Decoded::Stats(stats) => out.push(Entry {
            position: e.position,
            item: Item::Stats(stats),
        }),
        Decoded::Gap(_)
        | Decoded::Command(_)
        | Decoded::Request(_)
        | Decoded::Delivery(_)
        | Decoded::Anchor(_)
        | Decoded::Other => out.push(Entry {
            position: e.position,
            item: Item::Other(e.event_type.clone()),
        }),
    }
    Ok(())
}

/// The breaker a stream describes, folded with the core's `apply` up to and including the
/// events at `until_ms` (all of them if `None`). The first policy comes from the stream itself
/// (its first `policy_applied` or snapshot); `fallback` is used if it has neither.
pub fn fold(entries: &[Entry], until_ms: Option<u64>, fallback: &Policy) -> Breaker {
    let initial = entries.iter().find_map(|e| match &e.item {
        Item::Core(Event::PolicyApplied(p)) => Some(p.policy.clone()),
        Item::Snapshot(b) => Some(b.policy().clone()),
        _ => None,
    });
    let mut breaker = Breaker::new(initial.unwrap_or_else(|| fallback.clone()))
        .unwrap_or_else(|_| Breaker::new(fallback.clone()).expect("the fallback policy is valid"));
    for e in entries {
        match &e.item {
            Item::Core(ev) => {
                if until_ms.is_some_and(|t| ev.at_ms() > t) {
                    break;
                }
                breaker.apply(ev);
            }
            // A snapshot is the state at that point: start from it (compacted calls before it
            // are gone, and this is what recovery does too).
            Item::Snapshot(b) => breaker = (**b).clone(),
            Item::Summary(_) | Item::Stats(_) | Item::Other(_) | Item::Damaged(_) => {}
        }
    }
    breaker
}

/// Every breaker's transitions recorded in `[from_ms, to_ms)` after log position `after`, by
/// stream in log order, read through the transition index (one that does not decode is left
/// out); and the last position read, to go on from next time.
pub async fn transitions_by_stream(
    journal: &Journal,
    from_ms: u64,
    to_ms: u64,
    after: i64,
) -> Result<(std::collections::BTreeMap<String, Vec<Transition>>, i64), JournalError> {
    let mut out: std::collections::BTreeMap<String, Vec<Transition>> = std::collections::BTreeMap::new();
    let mut after = after;
    let (from, to) = (from_ms.min(i64::MAX as u64) as i64, to_ms.min(i64::MAX as u64) as i64);
    loop {
        let page = journal
            .read_range(&[crate::breaker::codec::types::TRANSITION], from, to, after, 10_000)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            if let Ok(Event::Transitioned(t)) =
                crate::breaker::codec::decode(&e.event_type, e.event_version, &e.payload)
            {
                out.entry(e.stream.clone()).or_default().push(*t);
            }
        }
    }
    Ok((out, after))
}

/// The transitions of a stream in `[from_ms, to_ms)`.
pub fn transitions(entries: &[Entry], from_ms: u64, to_ms: u64) -> Vec<Transition> {
    entries
        .iter()
        .filter_map(|e| match &e.item {
            Item::Core(Event::Transitioned(t)) if t.at_ms >= from_ms && t.at_ms < to_ms => Some((**t).clone()),
            _ => None,
        })
        .collect()
}
