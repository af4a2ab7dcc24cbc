//! The recorded calls of a stream as a `breakerbox simulate` trace, self-contained: the policy
//! in force first (config-file keys) and again wherever it changed, operator commands as command
//! lines, and a state line when the window starts mid-history. Fed to `simulate`, it reproduces
//! the transitions the log recorded.

use super::{Entry, Item, fold};
use crate::breaker::{Event, Policy, Reason};
use crate::config::policy_keys;
use serde_json::{Value, json};

/// Trace lines for the calls admitted in `[from_ms, to_ms)` (the whole history by default).
/// Calls are written at their admission time (`completion − latency`); a call admitted in the
/// window counts even if it completed after it. Calls rejected for real never ran and have no
/// outcome: they are not in the trace.
pub fn export(entries: &[Entry], from_ms: Option<u64>, to_ms: Option<u64>, fallback: &Policy) -> Vec<Value> {
    let first_at = entries.iter().find_map(|e| match &e.item {
        Item::Core(ev) => Some(ev.at_ms()),
        _ => None,
    });
    let from = from_ms.unwrap_or(0).max(first_at.unwrap_or(0));
    let to = to_ms.unwrap_or(u64::MAX);
    let mut lines: Vec<(u64, Value)> = Vec::new();
    let starts_mid_history = from_ms.is_some_and(|f| first_at.is_some_and(|first| f > first));
    let start = if starts_mid_history {
        // The state just before the window (events at `from` belong to the window).
        let state = fold(entries, Some(from - 1), fallback);
        lines.push((from, json!({"at_ms": from, "state": state})));
        state.policy().clone()
    } else {
        fallback_policy(entries, fallback).clone()
    };
    lines.push((from, json!({"at_ms": from, "policy": policy_keys(&start)})));
    let mut skipped_first_policy = false;
    for e in entries {
        let Item::Core(ev) = &e.item else { continue };
        match ev {
            Event::CallRecorded(c) => {
                let admitted = c.at_ms.saturating_sub(c.latency_ms);
                if admitted >= from && admitted < to {
                    lines.push((
                        admitted,
                        json!({"at_ms": admitted, "outcome": c.outcome, "latency_ms": c.latency_ms}),
                    ));
                }
            }
            Event::Transitioned(t) if t.at_ms >= from && t.at_ms < to => {
                let command = match t.reason {
                    Reason::Reset => "reset",
                    Reason::ForceOpen => "force_open",
                    Reason::Disable => "disable",
                    _ => continue,
                };
                lines.push((t.at_ms, json!({"at_ms": t.at_ms, "command": command})));
            }
            Event::PolicyApplied(p) if p.at_ms >= from && p.at_ms < to => {
                // The stream's first policy is the start line already.
                if !starts_mid_history && !skipped_first_policy && p.policy == start {
                    skipped_first_policy = true;
                    continue;
                }
                lines.push((p.at_ms, json!({"at_ms": p.at_ms, "policy": policy_keys(&p.policy)})));
            }
            _ => {}
        }
    }
    // Stable: lines of one instant keep the log's order, which is the order the actor folded
    // them in (and the order simulate gives them).
    lines.sort_by_key(|(at, _)| *at);
    lines.into_iter().map(|(_, v)| v).collect()
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
