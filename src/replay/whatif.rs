//! What if: the recorded calls of a period run again, by the core itself, under another policy
//! (the recorded policy with some keys changed), and compared with what the log says happened.
//! A library function: `breakerbox what-if` only parses its flags and renders this.

use super::metrics::{open_ms, time_in_states};
use super::{Entry, TraceLine, export, fold, transitions};
use crate::breaker::{Event, Policy, State, Transition};
use crate::config::{Knobs, defaults};
use crate::simulate::{Input, Simulator};
use serde::Serialize;
use std::fmt;

/// One side of the comparison.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Side {
    /// The transitions in the period.
    pub transitions: Vec<Transition>,
    /// Time spent OPEN or FORCED_OPEN in the period.
    pub open_ms: u64,
    /// Recorded calls that ran.
    pub calls_run: u64,
    /// Recorded calls this side rejects (0 for what happened: a call rejected for real never ran
    /// and is not among the recorded calls).
    pub rejected: u64,
    /// Of those, calls that failed for real.
    pub failed_calls_rejected: u64,
}

impl Side {
    /// Transitions into OPEN.
    pub fn times_opened(&self) -> usize {
        self.transitions.iter().filter(|t| t.to == State::Open).count()
    }
}

/// What happened and what would have, over `[from_ms, to_ms]`: from the first recorded call
/// or command of the period until the last recorded call completed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WhatIf {
    /// First recorded call or command of the period.
    pub from_ms: u64,
    /// When the last one completed.
    pub to_ms: u64,
    /// What the log recorded.
    pub actual: Side,
    /// The same calls under the other policy.
    #[serde(rename = "what_if")]
    pub alternative: Side,
}

/// The other policy cannot work (e.g. a threshold of 0), naming the key and the instant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhatIfError(pub String);

impl fmt::Display for WhatIfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WhatIfError {}

/// Time OPEN or FORCED_OPEN in `[start, end]`, from the state at `start` and the transitions.
pub fn open_time(transitions: &[Transition], start: u64, end: u64, initial: State) -> u64 {
    open_ms(&time_in_states(initial, transitions, start, end))
}

/// The recorded calls admitted in `[from_ms, to_ms)` of a stream's `entries` (see [`export`]),
/// run under each recorded policy with `changes` on top; `fallback` is the policy when the log
/// records none.
pub fn what_if(
    entries: &[Entry],
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    fallback: &Policy,
    changes: &Knobs,
) -> Result<WhatIf, WhatIfError> {
    let lines = export(entries, from_ms, to_ms, fallback);
    let start = lines.first().map_or(0, TraceLine::at_ms);
    // Until the last recorded call completed: both sides see its outcome.
    let end = lines
        .iter()
        .map(|l| match *l {
            TraceLine::Call { at_ms, latency_ms, .. } => at_ms.saturating_add(latency_ms),
            ref other => other.at_ms(),
        })
        .max()
        .unwrap_or(start);
    let initial = fold(entries, Some(start.saturating_sub(1)), fallback).state();
    let actual_transitions = transitions(entries, start, end.saturating_add(1));
    let actual = Side {
        open_ms: open_time(&actual_transitions, start, end, initial),
        calls_run: lines.iter().filter(|l| matches!(l, TraceLine::Call { .. })).count() as u64,
        transitions: actual_transitions,
        ..Side::default()
    };
    let changed = |at_ms: u64, recorded: &Policy| {
        let mut k = defaults();
        k.overlay(&Knobs::of_policy(recorded));
        k.overlay(changes);
        k.policy().map_err(|e| {
            WhatIfError(format!(
                "the policy in force at {at_ms} with the changes cannot work: {e}"
            ))
        })
    };
    let mut sim: Option<Simulator> = None;
    let mut events = Vec::new();
    let mut what = Side::default();
    for line in &lines {
        match line {
            TraceLine::Policy { at_ms, policy } => {
                let policy = changed(*at_ms, policy)?;
                match &mut sim {
                    Some(s) => s
                        .set_policy(*at_ms, policy, &mut events)
                        .map_err(|e| WhatIfError(format!("at {at_ms}: {e}")))?,
                    None => sim = Some(Simulator::new(policy).map_err(|e| WhatIfError(e.to_string()))?),
                }
            }
            // The state at the window's start; the policy line that follows applies the changes.
            TraceLine::State { breaker, .. } => sim = Some(Simulator::with_breaker((**breaker).clone())),
            TraceLine::Call {
                at_ms,
                outcome,
                latency_ms,
            } => {
                let s = sim.as_mut().expect("an export starts with a policy or state line");
                let before = s.summary().rejected;
                s.step(
                    &Input::Call {
                        at_ms: *at_ms,
                        outcome: *outcome,
                        latency_ms: *latency_ms,
                    },
                    &mut events,
                );
                if s.summary().rejected > before {
                    what.rejected += 1;
                    what.failed_calls_rejected += u64::from(outcome.is_failure());
                }
            }
            TraceLine::Command { at_ms, command } => sim.as_mut().expect("a policy line first").step(
                &Input::Command {
                    at_ms: *at_ms,
                    command: *command,
                },
                &mut events,
            ),
        }
    }
    if let Some(s) = &mut sim {
        s.finish(&mut events);
    }
    what.transitions = events
        .iter()
        .filter_map(|e| match e {
            // The same period as the recorded side: timers past it are not compared.
            Event::Transitioned(t) if t.at_ms <= end => Some((**t).clone()),
            _ => None,
        })
        .collect();
    what.open_ms = open_time(&what.transitions, start, end, initial);
    what.calls_run = actual.calls_run - what.rejected;
    Ok(WhatIf {
        from_ms: start,
        to_ms: end,
        actual,
        alternative: what,
    })
}
