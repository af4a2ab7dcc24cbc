//! A breaker's timeline over a period: its state at the start, its transitions, and its minutes
//! (the same histogram percentiles as the health report and `/api/history`).

use super::{Entry, Item, Minute, fold, minutes, transitions};
use crate::breaker::{Policy, State, Transition};
use serde::Serialize;
use std::collections::BTreeMap;

/// What `replay --from .. --to ..` shows and `--svg` draws.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// Start of the period.
    pub from_ms: u64,
    /// End of the period.
    pub to_ms: u64,
    /// The state just before `from_ms`.
    pub initial: State,
    /// The transitions in `[from_ms, to_ms)`.
    pub transitions: Vec<Transition>,
    /// The minutes overlapping the period, by start.
    pub minutes: BTreeMap<u64, Minute>,
    /// When the stream's log begins (its first event); nothing is known before it. `None` for
    /// a stream with no events.
    pub began_ms: Option<u64>,
}

/// The instant of a stream's first entry (a compacted minute counts from its start).
fn began(entries: &[Entry]) -> Option<u64> {
    entries
        .iter()
        .filter_map(|e| match &e.item {
            Item::Core(ev) => Some(ev.at_ms()),
            Item::Stats(s) => Some(s.at_ms),
            Item::Summary(s) => s.minutes.iter().map(|m| m.minute_ms).min(),
            _ => None,
        })
        .min()
}

/// The timeline of a stream's `entries` over `[from_ms, to_ms)`; `fallback` is the policy when
/// the log records none.
pub fn timeline(entries: &[Entry], from_ms: u64, to_ms: u64, fallback: &Policy) -> Timeline {
    let first_minute = from_ms / 60_000 * 60_000;
    let minutes = minutes(entries, to_ms)
        .into_iter()
        .filter(|(m, _)| *m >= first_minute && *m < to_ms)
        .collect();
    Timeline {
        from_ms,
        to_ms,
        initial: fold(entries, Some(from_ms.saturating_sub(1)), fallback).state(),
        transitions: transitions(entries, from_ms, to_ms),
        minutes,
        began_ms: began(entries),
    }
}
