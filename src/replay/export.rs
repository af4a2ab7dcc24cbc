//! The recorded calls of a stream as a `breakerbox simulate` trace, self-contained: the policy
//! in force first (config-file keys) and again wherever it changed, operator commands as command
//! lines, and a state line when the window starts mid-history. Fed to `simulate`, it reproduces
//! the transitions the log recorded.

use super::{Entry, Item, fold};
use crate::breaker::{Breaker, Command, Event, Outcome, Policy, QuorumEvidence, Reason};
use crate::config::policy_keys;
use serde_json::{Value, json};

/// One line of an exported trace, typed (`to_json` gives the `simulate` trace line).
#[derive(Clone, Debug, PartialEq)]
pub enum TraceLine {
    /// The breaker's whole state when the window starts mid-history.
    State {
        /// When.
        at_ms: u64,
        /// The state.
        breaker: Box<Breaker>,
    },
    /// The policy in force from `at_ms`.
    Policy {
        /// When.
        at_ms: u64,
        /// The policy.
        policy: Box<Policy>,
    },
    /// A call admitted at `at_ms` that ran `latency_ms` and ended with `outcome`.
    Call {
        /// When it was admitted.
        at_ms: u64,
        /// How it ended.
        outcome: Outcome,
        /// How long it ran.
        latency_ms: u64,
    },
    /// An operator command.
    Command {
        /// When.
        at_ms: u64,
        /// Which.
        command: Command,
    },
    /// A quorum hint that opened the breaker (`fleet_quorum`): an input from the fleet, put
    /// back as such so the trace reproduces it.
    Hint {
        /// When.
        at_ms: u64,
        /// Which nodes, of how many.
        quorum: Box<QuorumEvidence>,
    },
}

impl TraceLine {
    /// When the line happens.
    pub fn at_ms(&self) -> u64 {
        match *self {
            TraceLine::State { at_ms, .. }
            | TraceLine::Policy { at_ms, .. }
            | TraceLine::Call { at_ms, .. }
            | TraceLine::Command { at_ms, .. }
            | TraceLine::Hint { at_ms, .. } => at_ms,
        }
    }

    /// The line as `breakerbox simulate` reads it (policies in config-file keys).
    pub fn to_json(&self) -> Value {
        match self {
            TraceLine::State { at_ms, breaker } => json!({"at_ms": at_ms, "state": breaker}),
            TraceLine::Policy { at_ms, policy } => json!({"at_ms": at_ms, "policy": policy_keys(policy)}),
            TraceLine::Call {
                at_ms,
                outcome,
                latency_ms,
            } => json!({"at_ms": at_ms, "outcome": outcome, "latency_ms": latency_ms}),
            TraceLine::Command { at_ms, command } => json!({"at_ms": at_ms, "command": command}),
            TraceLine::Hint { at_ms, quorum } => json!({"at_ms": at_ms, "hint": quorum}),
        }
    }
}

/// Trace lines for the calls admitted in `[from_ms, to_ms)` (the whole history by default).
/// Calls are written at their admission time (`completion − latency`); a call admitted in the
/// window counts even if it completed after it. Calls rejected for real never ran and have no
/// outcome: they are not in the trace.
pub fn export(entries: &[Entry], from_ms: Option<u64>, to_ms: Option<u64>, fallback: &Policy) -> Vec<TraceLine> {
    let first_at = entries.iter().find_map(|e| match &e.item {
        Item::Core(ev) => Some(ev.at_ms()),
        _ => None,
    });
    let from = from_ms.unwrap_or(0).max(first_at.unwrap_or(0));
    let to = to_ms.unwrap_or(u64::MAX);
    let mut lines: Vec<TraceLine> = Vec::new();
    let starts_mid_history = from_ms.is_some_and(|f| first_at.is_some_and(|first| f > first));
    let start = if starts_mid_history {
        // The state just before the window (events at `from` belong to the window).
        let state = fold(entries, Some(from - 1), fallback);
        let policy = state.policy().clone();
        lines.push(TraceLine::State {
            at_ms: from,
            breaker: Box::new(state),
        });
        policy
    } else {
        fallback_policy(entries, fallback).clone()
    };
    lines.push(TraceLine::Policy {
        at_ms: from,
        policy: Box::new(start.clone()),
    });
    let mut skipped_first_policy = false;
    for e in entries {
        let Item::Core(ev) = &e.item else { continue };
        match ev {
            Event::CallRecorded(c) => {
                let admitted = c.at_ms.saturating_sub(c.latency_ms);
                if admitted >= from && admitted < to {
                    lines.push(TraceLine::Call {
                        at_ms: admitted,
                        outcome: c.outcome,
                        latency_ms: c.latency_ms,
                    });
                }
            }
            Event::Transitioned(t) if t.at_ms >= from && t.at_ms < to && t.reason == Reason::FleetQuorum => {
                lines.push(TraceLine::Hint {
                    at_ms: t.at_ms,
                    quorum: Box::new(t.evidence.quorum.clone().unwrap_or_default()),
                });
            }
            Event::Transitioned(t) if t.at_ms >= from && t.at_ms < to => {
                let command = match t.reason {
                    Reason::Reset => Command::Reset,
                    Reason::ForceOpen => Command::ForceOpen,
                    Reason::Disable => Command::Disable,
                    _ => continue,
                };
                lines.push(TraceLine::Command {
                    at_ms: t.at_ms,
                    command,
                });
            }
            Event::PolicyApplied(p) if p.at_ms >= from && p.at_ms < to => {
                // The stream's first policy is the start line already.
                if !starts_mid_history && !skipped_first_policy && p.policy == start {
                    skipped_first_policy = true;
                    continue;
                }
                lines.push(TraceLine::Policy {
                    at_ms: p.at_ms,
                    policy: Box::new(p.policy.clone()),
                });
            }
            _ => {}
        }
    }
    // Stable: lines of one instant keep the log's order, which is the order the actor folded
    // them in (and the order simulate gives them).
    lines.sort_by_key(TraceLine::at_ms);
    lines
}

fn fallback_policy<'a>(entries: &'a [Entry], fallback: &'a Policy) -> &'a Policy {
    entries
        .iter()
        .find_map(|e| match &e.item {
            Item::Core(Event::PolicyApplied(p)) => Some(&p.policy),
            _ => None,
        })
        .unwrap_or(fallback)
}
