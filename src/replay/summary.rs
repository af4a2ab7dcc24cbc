//! A post-incident summary of one breaker over a window: what changed, for how long it was
//! open, what the callers saw, and its health at the end — all folded from the log.

use super::metrics;
use super::{Entry, Health, Item, fold, health, minutes, transitions};
use crate::breaker::{Event, Outcome, Policy, State, Transition};
use serde::Serialize;

/// What happened to one breaker in `[from_ms, to_ms)`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The breaker key.
    pub stream: String,
    /// Start of the window (ms).
    pub from_ms: u64,
    /// End of the window (ms).
    pub to_ms: u64,
    /// State at the start of the window.
    pub start_state: State,
    /// State at the end.
    pub end_state: State,
    /// Every transition in the window, in order.
    pub transitions: Vec<Transition>,
    /// Transitions into OPEN or FORCED_OPEN.
    pub openings: u64,
    /// Time spent OPEN or FORCED_OPEN within the window (ms).
    pub open_ms: u64,
    /// Calls that ran (every outcome).
    pub calls: u64,
    /// Of them, failed.
    pub failures: u64,
    /// Of them, timed out.
    pub timeouts: u64,
    /// Calls the breaker rejected.
    pub rejected: u64,
    /// Calls answered by a fallback.
    pub fallbacks: u64,
    /// Health at the end of the window.
    pub health: Health,
}

fn is_open(s: State) -> bool {
    matches!(s, State::Open | State::ForcedOpen)
}

/// Summarises `entries` (one stream's [`history`](super::history)) over `[from_ms, to_ms)`.
///
/// ```
/// use breakerbox::replay::summarize;
/// use breakerbox::breaker::Policy;
/// // An empty stream: nothing happened, and nothing says the service is in trouble.
/// let s = summarize(&[], "stripe", 0, 60_000, &Policy::consecutive(5, 30_000), 1_000);
/// assert_eq!((s.calls, s.openings, s.open_ms, s.health.score), (0, 0, 0, 100));
/// ```
pub fn summarize(
    entries: &[Entry],
    stream: &str,
    from_ms: u64,
    to_ms: u64,
    fallback: &Policy,
    latency_budget_ms: u64,
) -> Summary {
    // The state just before the window; a transition stamped at `from_ms` is in the window.
    let start_state = match from_ms.checked_sub(1) {
        Some(before) => fold(entries, Some(before), fallback).state(),
        None => State::Closed,
    };
    let in_window = transitions(entries, from_ms, to_ms);
    let open_ms = metrics::open_ms(&metrics::time_in_states(start_state, &in_window, from_ms, to_ms));
    let state = in_window.last().map_or(start_state, |t| t.to);
    // The budget recorded with the policy in force at the end, else the given one.
    let budget = fold(entries, Some(to_ms), fallback)
        .policy()
        .latency_budget_ms
        .unwrap_or(latency_budget_ms);
    let (mut calls, mut failures, mut timeouts, mut rejected, mut fallbacks) = (0, 0, 0, 0, 0);
    let within = |at: u64| (from_ms..to_ms).contains(&at);
    for e in entries {
        match &e.item {
            Item::Core(Event::CallRecorded(c)) if within(c.at_ms) => {
                calls += 1;
                failures += u64::from(c.outcome == Outcome::Failure);
                timeouts += u64::from(c.outcome == Outcome::Timeout);
            }
            Item::Stats(s) if within(s.at_ms) => {
                rejected += s.rejected;
                fallbacks += s.fallbacks;
            }
            _ => {}
        }
    }
    let until_end = transitions(entries, 0, to_ms);
    Summary {
        stream: stream.to_owned(),
        from_ms,
        to_ms,
        start_state,
        end_state: state,
        openings: in_window.iter().filter(|t| is_open(t.to)).count() as u64,
        transitions: in_window,
        open_ms,
        calls,
        failures,
        timeouts,
        rejected,
        fallbacks,
        health: health(&minutes(entries, to_ms), &until_end, to_ms, budget, state),
    }
}
