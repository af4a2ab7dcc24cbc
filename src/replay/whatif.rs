//! What if: the recorded calls of a period run again, by the core itself, under another policy
//! (the recorded policy with some keys changed), and compared with what the log says happened.
//! A library function: `breakerbox what-if` only parses its flags and renders this.

use super::metrics::{open_ms, time_in_states};
use super::{Entry, Item, TraceLine, export, fold, transitions};
use crate::breaker::{Event, Outcome, Policy, State, Transition};
use crate::config::{Knobs, defaults};
use crate::simulate::{Input, Simulator};
use serde::Serialize;
use std::fmt;

/// One side of the comparison. Calls rejected for real never ran, so the log has no outcome
/// for them: where a figure needs one, it is an **estimate** from the recorded calls around them
/// (the share that failed among the nearest recorded calls, trials included), and the
/// `*_estimated` figure says how much of it is estimated.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Side {
    /// The transitions in the period.
    pub transitions: Vec<Transition>,
    /// Transitions into OPEN (by a trip rule or a failed trial).
    pub times_opened: usize,
    /// Transitions into FORCED_OPEN (operators).
    pub times_forced_open: usize,
    /// Time spent OPEN or FORCED_OPEN in the period.
    pub open_ms: u64,
    /// Calls that reached the service: recorded calls that ran, and (what-if) calls rejected for
    /// real that this side would have let through.
    pub calls_run: u64,
    /// Of `calls_run`, how many are estimated (calls rejected for real).
    pub calls_run_estimated: u64,
    /// Calls that reached the service while it was failing: they failed or timed out.
    pub reached_failing: u64,
    /// Of `reached_failing`, how many are estimated.
    pub reached_failing_estimated: u64,
    /// Calls this side rejected: for what happened, the rejections the log counted; for the
    /// what-if, recorded calls and calls rejected for real that it rejects.
    pub rejected: u64,
    /// Of `rejected`, calls that would have succeeded: rejected while the service answered.
    pub rejected_while_healthy: u64,
    /// Of `rejected_while_healthy`, how many are estimated.
    pub rejected_while_healthy_estimated: u64,
    /// Recorded calls (that ran for real) this side rejects (0 for what happened).
    pub recorded_rejected: u64,
    /// Of those, calls that failed for real.
    pub failed_calls_rejected: u64,
}

impl Side {
    /// Transitions into OPEN.
    pub fn times_opened(&self) -> usize {
        self.times_opened
    }

    fn count_transitions(&mut self) {
        self.times_opened = self.transitions.iter().filter(|t| t.to == State::Open).count();
        self.times_forced_open = self.transitions.iter().filter(|t| t.to == State::ForcedOpen).count();
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
    /// The trade in one line: more or fewer calls reaching the service while it failed, and
    /// rejected while it answered, estimates said as such.
    pub verdict: String,
}

/// A call rejected for real, put back with an estimated outcome (see [`Side`]).
struct Estimated {
    /// When it is put back; `None` when the recorded breaker was not rejecting every call then
    /// (a HALF_OPEN breaker with its trials out): it is not put back, and counts as rejected on
    /// both sides, so nothing is made up about it.
    at_ms: Option<u64>,
    outcome: Outcome,
    latency_ms: u64,
}

/// The stretches of `(from, to]` in which the recorded breaker rejected every call (OPEN,
/// FORCED_OPEN), from its state at `start` and transitions.
fn rejecting(initial: State, transitions: &[Transition], from: u64, to: u64) -> Vec<(u64, u64)> {
    let rejects = |s: State| matches!(s, State::Open | State::ForcedOpen);
    // Each state from its instant until the next transition's (the last until `to`).
    let starts = std::iter::once((0, initial)).chain(transitions.iter().map(|t| (t.at_ms, t.to)));
    let ends = transitions.iter().map(|t| t.at_ms).chain(std::iter::once(u64::MAX));
    starts
        .zip(ends)
        .filter(|((_, state), _)| rejects(*state))
        .map(|((since, _), until)| (since.max(from), until.min(to)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// The calls the log counted as rejected in `[start, end]`, each with an outcome estimated
/// from the recorded calls nearest in time (up to 5 on each side: the failures that tripped the breaker, the trials that followed): as many failures as that
/// share of them (rounded), spread evenly; their latency the median of those calls'. Spread over
/// the time since the count before (the actor counts rejections per flush, so they happened
/// then: usually the last second, longer when the actor was slow to flush), within the stretches
/// of it when the recorded breaker was rejecting (so the same policy rejects them again, and
/// what-if with nothing changed is what happened).
fn estimated_rejections(
    entries: &[Entry],
    lines: &[TraceLine],
    (start, end): (u64, u64),
    (initial, transitions): (State, &[Transition]),
) -> Vec<Estimated> {
    let calls: Vec<(u64, bool, u64)> = lines
        .iter()
        .filter_map(|l| match *l {
            TraceLine::Call {
                at_ms,
                outcome,
                latency_ms,
            } => Some((at_ms, outcome.is_failure(), latency_ms)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    let mut previous = start;
    for e in entries {
        let Item::Stats(s) = &e.item else { continue };
        if s.at_ms < start || s.at_ms > end {
            continue;
        }
        let (from, to) = (previous, s.at_ms);
        previous = s.at_ms;
        if s.rejected == 0 || calls.is_empty() {
            continue;
        }
        let i = calls.partition_point(|c| c.0 < to);
        let near = &calls[i.saturating_sub(5)..(i + 5).min(calls.len())];
        let failed = near.iter().filter(|c| c.1).count() as u64;
        let mut latencies: Vec<u64> = near.iter().map(|c| c.2).collect();
        latencies.sort_unstable();
        let latency_ms = latencies[latencies.len() / 2];
        let n = s.rejected;
        let stretches = rejecting(initial, transitions, from, to);
        let length: u64 = stretches.iter().map(|(a, b)| b - a).sum();
        // The instant `offset` ms into the rejecting stretches (the count's instant if none).
        let at = |offset: u64| {
            let mut left = offset;
            for (a, b) in &stretches {
                if left < b - a {
                    return a + left + 1;
                }
                left -= b - a;
            }
            to
        };
        for k in 0..n {
            // Failures spread evenly, rounded: call k fails when the rounded running count of
            // failures (k × the share) steps up, so one call alone follows the majority.
            let len = near.len() as u64;
            let running = |k: u64| (2 * k * failed + len) / (2 * len);
            let fails = running(k + 1) > running(k);
            out.push(Estimated {
                at_ms: (length > 0).then(|| at(length * k / n)),
                outcome: if fails { Outcome::Failure } else { Outcome::Success },
                latency_ms,
            });
        }
    }
    out
}

/// The one line: what the other policy trades, estimates said as such.
fn verdict(actual: &Side, what: &Side) -> String {
    let failing = what.reached_failing as i64 - actual.reached_failing as i64;
    let healthy = what.rejected_while_healthy as i64 - actual.rejected_while_healthy as i64;
    let estimated = actual.rejected_while_healthy_estimated > 0
        || what.reached_failing_estimated > 0
        || what.rejected_while_healthy_estimated > 0
        || what.calls_run_estimated > 0;
    let about = if estimated { "about " } else { "" };
    let more_fewer = |n: i64| if n > 0 { "more" } else { "fewer" };
    let line = match (failing.signum(), healthy.signum()) {
        (0, 0) => "no difference in the calls that reached the service or were turned away".to_owned(),
        (1, s) if s >= 0 => format!(
            "worse: {about}{failing} more calls would have reached the service while it was failing{}",
            if healthy > 0 {
                format!(", and {about}{healthy} more been rejected while it answered")
            } else {
                String::new()
            }
        ),
        (-1, s) if s <= 0 => format!(
            "better: {about}{} fewer calls would have reached the service while it was failing{}",
            -failing,
            if healthy < 0 {
                format!(", and {about}{} fewer been rejected while it answered", -healthy)
            } else {
                String::new()
            }
        ),
        (0, _) => format!(
            "{}: {about}{} {} calls would have been rejected while the service answered",
            if healthy > 0 { "worse" } else { "better" },
            healthy.abs(),
            more_fewer(healthy)
        ),
        _ => format!(
            "a trade: {about}{} {} calls reaching the service while it was failing, {about}{} {} rejected while it answered",
            failing.abs(),
            more_fewer(failing),
            healthy.abs(),
            more_fewer(healthy)
        ),
    };
    if estimated {
        format!("{line} (estimated: calls rejected for real have no recorded outcome; the calls around them were used)")
    } else {
        line
    }
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

/// A stream's period as the log recorded it: its export, from the first line until the last
/// recorded call completed (both sides of a what-if see its outcome), the state before it, its
/// transitions, and its calls rejected for real with estimated outcomes.
struct Recorded {
    lines: Vec<TraceLine>,
    start: u64,
    end: u64,
    initial: State,
    transitions: Vec<Transition>,
    estimated: Vec<Estimated>,
}

fn recorded(entries: &[Entry], from_ms: Option<u64>, to_ms: Option<u64>, fallback: &Policy) -> Recorded {
    let lines = export(entries, from_ms, to_ms, fallback);
    let start = lines.first().map_or(0, TraceLine::at_ms);
    let end = lines
        .iter()
        .map(|l| match *l {
            TraceLine::Call { at_ms, latency_ms, .. } => at_ms.saturating_add(latency_ms),
            ref other => other.at_ms(),
        })
        .max()
        .unwrap_or(start);
    let initial = fold(entries, Some(start.saturating_sub(1)), fallback).state();
    let transitions = transitions(entries, start, end.saturating_add(1));
    let estimated = estimated_rejections(entries, &lines, (start, end), (initial, &transitions));
    Recorded {
        lines,
        start,
        end,
        initial,
        transitions,
        estimated,
    }
}

/// One call of a period as a what-if runs it: recorded (it ran), or rejected for real and put
/// back with an estimated outcome (see [`Side`]).
pub(crate) struct PeriodCall {
    /// Its place in time: admission for a recorded call, the put-back instant (else the
    /// period's start) for an estimated one.
    pub at_ms: u64,
    /// When it is fed to a simulated breaker; `None`: not put back (rejected on every side).
    pub at_ms_put_back: Option<u64>,
    pub outcome: Outcome,
    pub latency_ms: u64,
    /// Rejected for real: its outcome is estimated.
    pub estimated: bool,
}

/// A stream's period as [`what_if`] runs it: the first policy in force, the period, and every
/// call (recorded or put back), in time order.
pub(crate) struct Period {
    pub policy: Policy,
    pub start_ms: u64,
    pub end_ms: u64,
    pub calls: Vec<PeriodCall>,
}

/// See [`Period`]; the fleet what-if merges the nodes' periods.
pub(crate) fn period_calls(entries: &[Entry], from_ms: Option<u64>, to_ms: Option<u64>, fallback: &Policy) -> Period {
    let Recorded {
        lines,
        start,
        end,
        estimated,
        ..
    } = recorded(entries, from_ms, to_ms, fallback);
    let policy = lines
        .iter()
        .find_map(|l| match l {
            TraceLine::Policy { policy, .. } => Some((**policy).clone()),
            TraceLine::State { breaker, .. } => Some(breaker.policy().clone()),
            _ => None,
        })
        .unwrap_or_else(|| fallback.clone());
    let mut calls: Vec<PeriodCall> = lines
        .iter()
        .filter_map(|l| match *l {
            TraceLine::Call {
                at_ms,
                outcome,
                latency_ms,
            } => Some(PeriodCall {
                at_ms,
                at_ms_put_back: Some(at_ms),
                outcome,
                latency_ms,
                estimated: false,
            }),
            _ => None,
        })
        .chain(estimated.iter().map(|e| PeriodCall {
            at_ms: e.at_ms.unwrap_or(start),
            at_ms_put_back: e.at_ms,
            outcome: e.outcome,
            latency_ms: e.latency_ms,
            estimated: true,
        }))
        .collect();
    // Stable: at one instant, the recorded calls first.
    calls.sort_by_key(|c| (c.at_ms, c.estimated));
    Period {
        policy,
        start_ms: start,
        end_ms: end,
        calls,
    }
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
    let Recorded {
        lines,
        start,
        end,
        initial,
        transitions: actual_transitions,
        estimated,
    } = recorded(entries, from_ms, to_ms, fallback);
    let recorded = || {
        lines.iter().filter_map(|l| match *l {
            TraceLine::Call { outcome, .. } => Some(outcome),
            _ => None,
        })
    };
    let healthy_estimated = estimated.iter().filter(|e| !e.outcome.is_failure()).count() as u64;
    let mut actual = Side {
        open_ms: open_time(&actual_transitions, start, end, initial),
        calls_run: recorded().count() as u64,
        reached_failing: recorded().filter(|o| o.is_failure()).count() as u64,
        rejected: estimated.len() as u64,
        rejected_while_healthy: healthy_estimated,
        rejected_while_healthy_estimated: healthy_estimated,
        transitions: actual_transitions,
        ..Side::default()
    };
    actual.count_transitions();
    // The recorded lines, and the calls rejected for real put back in time order (after the
    // lines of the same instant).
    enum Step<'a> {
        Recorded(&'a TraceLine),
        Estimated(&'a Estimated),
    }
    let mut steps: Vec<(u64, Step)> = lines
        .iter()
        .map(|l| (l.at_ms(), Step::Recorded(l)))
        .chain(estimated.iter().map(|e| (e.at_ms.unwrap_or(start), Step::Estimated(e))))
        .collect();
    // Stable: at one instant, the recorded lines first.
    steps.sort_by_key(|(at, step)| (*at, matches!(step, Step::Estimated(_))));
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
    for (_, step) in steps {
        let line = match step {
            Step::Recorded(line) => line,
            Step::Estimated(e) => {
                // One not put back (the recorded breaker never rejected everything then) counts
                // as rejected on both sides.
                let rejected = match (sim.as_mut(), e.at_ms) {
                    (Some(s), Some(at_ms)) => {
                        let before = s.summary().rejected;
                        let call = Input::Call {
                            at_ms,
                            outcome: e.outcome,
                            latency_ms: e.latency_ms,
                        };
                        s.step(&call, &mut events);
                        s.summary().rejected > before
                    }
                    _ => true,
                };
                let failed = u64::from(e.outcome.is_failure());
                if rejected {
                    what.rejected += 1;
                    what.rejected_while_healthy += 1 - failed;
                    what.rejected_while_healthy_estimated += 1 - failed;
                } else {
                    what.calls_run += 1;
                    what.calls_run_estimated += 1;
                    what.reached_failing += failed;
                    what.reached_failing_estimated += failed;
                }
                continue;
            }
        };
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
                    what.recorded_rejected += 1;
                    what.failed_calls_rejected += u64::from(outcome.is_failure());
                    what.rejected_while_healthy += u64::from(!outcome.is_failure());
                } else {
                    what.calls_run += 1;
                    what.reached_failing += u64::from(outcome.is_failure());
                }
            }
            TraceLine::Command { at_ms, command } => sim.as_mut().expect("a policy line first").step(
                &Input::Command {
                    at_ms: *at_ms,
                    command: *command,
                },
                &mut events,
            ),
            TraceLine::Hint { at_ms, quorum } => sim.as_mut().expect("a policy line first").step(
                &Input::Hint {
                    at_ms: *at_ms,
                    quorum: quorum.clone(),
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
    what.count_transitions();
    Ok(WhatIf {
        from_ms: start,
        to_ms: end,
        verdict: verdict(&actual, &what),
        actual,
        alternative: what,
    })
}
