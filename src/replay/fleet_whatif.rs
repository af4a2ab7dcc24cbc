//! Fleet what-if (`docs/fleet.md`, "Fleet what-if"): would one shared breaker, or a quorum of
//! nodes, have done better? The nodes' recorded calls of a period (and their calls rejected for
//! real, put back with estimated outcomes, as [`super::what_if`] does) are merged by time and
//! run through one simulated breaker, and through one breaker per node with quorum hints between
//! them, and both are compared with what happened: failed calls let through, healthy calls
//! rejected, time to open, time to recover. Pure: the caller reads each node's history.

use super::whatif::{PeriodCall, period_calls};
use super::{Entry, WhatIfError, transitions, what_if};
use crate::breaker::{Event, Policy, QuorumEvidence, Reason, State, Transition};
use crate::config::{Knobs, defaults};
use crate::simulate::{Input, Simulator};
use serde::Serialize;

/// The quorum rule the quorum side runs with (`[fleet.quorum]`'s keys).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct QuorumRule {
    /// Other nodes needed, at least.
    pub nodes: u32,
    /// Share of the nodes needed.
    pub fraction: f64,
    /// How recent their openings must be, ms.
    pub within_ms: u64,
}

/// One way of running the fleet's calls, and what it did with them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FleetSide {
    /// Breakers deciding (1: one shared; else one per node).
    pub breakers: u32,
    /// Calls that reached the service.
    pub calls_run: u64,
    /// Of those, calls that failed or timed out: failed calls let through.
    pub failed_let_through: u64,
    /// Of `failed_let_through`, how many are estimated (calls rejected for real, put back).
    pub failed_let_through_estimated: u64,
    /// Calls turned away.
    pub rejected: u64,
    /// Of those, calls that would have worked: healthy calls rejected.
    pub healthy_rejected: u64,
    /// Of `healthy_rejected`, how many are estimated.
    pub healthy_rejected_estimated: u64,
    /// Openings (transitions into OPEN), all breakers together.
    pub openings: usize,
    /// Of those, openings by a quorum hint (`fleet_quorum`).
    pub by_quorum: usize,
    /// From the period's first failed call to the first opening.
    pub time_to_open_ms: Option<u64>,
    /// From the period's last failed call until every breaker was CLOSED again (none: some
    /// was not by the end of the period).
    pub time_to_recover_ms: Option<u64>,
}

/// What happened across the fleet, and what one shared breaker and a quorum would have done.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetWhatIf {
    /// The period: from the first call or command of any node…
    pub from_ms: u64,
    /// …until the last call completed.
    pub to_ms: u64,
    /// The nodes, in the order of the breakers of `actual` and `quorum`.
    pub nodes: Vec<String>,
    /// What the nodes' own breakers did.
    pub actual: FleetSide,
    /// One breaker fed every node's calls.
    pub shared: FleetSide,
    /// One breaker per node, with quorum hints between them.
    pub quorum: FleetSide,
    /// The quorum side's rule.
    pub quorum_rule: QuorumRule,
    /// For people: which did best on failed calls let through and healthy calls rejected.
    pub verdict: String,
}

fn is_own_trip(t: &Transition) -> bool {
    t.from == State::Closed
        && t.to == State::Open
        && matches!(
            t.reason,
            Reason::ConsecutiveFailures | Reason::FailureCount | Reason::FailureRate | Reason::SlowCallRate
        )
}

/// Time to open and to recover, from the breakers' transitions.
fn timing(
    all: &[Vec<Transition>],
    first_failure: Option<u64>,
    last_failure: Option<u64>,
) -> (Option<u64>, Option<u64>) {
    let open = first_failure.and_then(|f| {
        all.iter()
            .flatten()
            .filter(|t| t.to == State::Open && t.at_ms >= f)
            .map(|t| t.at_ms - f)
            .min()
    });
    let recover = last_failure.and_then(|l| {
        let mut latest = l;
        for ts in all {
            match ts.last() {
                Some(t) if t.to == State::Closed || t.to == State::Disabled => latest = latest.max(t.at_ms),
                Some(_) => return None,
                None => {}
            }
        }
        Some(latest - l)
    });
    (open, recover)
}

/// The fleet what-if of one breaker over `[from_ms, to_ms)`: each node's history (`entries`,
/// by node), the policy when the log records none (`fallback`), `changes` on top of the
/// recorded policy for the simulated sides, and the quorum side's rule.
pub fn fleet_what_if(
    nodes: &[(String, Vec<Entry>)],
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    fallback: &Policy,
    changes: &Knobs,
    rule: QuorumRule,
) -> Result<FleetWhatIf, WhatIfError> {
    if nodes.is_empty() {
        return Err(WhatIfError("no node has a history of this breaker".into()));
    }
    // Every node's calls of the period, merged by time (then node, then their own order).
    let mut calls: Vec<(usize, PeriodCall)> = Vec::new();
    let mut policy: Option<Policy> = None;
    let (mut start, mut end) = (u64::MAX, 0);
    let mut actual = FleetSide {
        breakers: nodes.len() as u32,
        ..FleetSide::default()
    };
    let mut actual_transitions = Vec::new();
    for (i, (_, entries)) in nodes.iter().enumerate() {
        let period = period_calls(entries, from_ms, to_ms, fallback);
        if policy.is_none() {
            policy = Some(period.policy.clone());
        }
        start = start.min(period.start_ms);
        end = end.max(period.end_ms);
        calls.extend(period.calls.into_iter().map(|c| (i, c)));
        let same = what_if(entries, from_ms, to_ms, fallback, &Knobs::default())?;
        actual.calls_run += same.actual.calls_run;
        actual.failed_let_through += same.actual.reached_failing;
        actual.rejected += same.actual.rejected;
        actual.healthy_rejected += same.actual.rejected_while_healthy;
        actual.healthy_rejected_estimated += same.actual.rejected_while_healthy_estimated;
        actual.openings += same.actual.times_opened;
        actual.by_quorum += same
            .actual
            .transitions
            .iter()
            .filter(|t| t.reason == Reason::FleetQuorum)
            .count();
        actual_transitions.push(transitions(entries, same.from_ms, same.to_ms.saturating_add(1)));
    }
    calls.sort_by_key(|(node, c)| (c.at_ms, *node));
    let start = if start == u64::MAX { 0 } else { start };
    let failures: Vec<u64> = calls
        .iter()
        .filter(|(_, c)| c.outcome.is_failure())
        .map(|(_, c)| c.at_ms)
        .collect();
    let (first_failure, last_failure) = (failures.first().copied(), failures.last().copied());
    (actual.time_to_open_ms, actual.time_to_recover_ms) = timing(&actual_transitions, first_failure, last_failure);
    let recorded = policy.unwrap_or_else(|| fallback.clone());
    let mut k = defaults();
    k.overlay(&Knobs::of_policy(&recorded));
    k.overlay(changes);
    let policy = k
        .policy()
        .map_err(|e| WhatIfError(format!("the recorded policy with the changes cannot work: {e}")))?;
    let new_sim = || Simulator::new(policy.clone()).map_err(|e| WhatIfError(e.to_string()));

    // One shared breaker.
    let mut shared_sim = new_sim()?;
    let mut shared = FleetSide {
        breakers: 1,
        ..FleetSide::default()
    };
    let mut events = Vec::new();
    for (_, c) in &calls {
        run_call(&mut shared_sim, c, &mut shared, &mut events);
    }
    shared_sim.finish(&mut events);
    let shared_t = vec![transitions_of(&events, end)];
    shared.openings = shared_t[0].iter().filter(|t| t.to == State::Open).count();
    (shared.time_to_open_ms, shared.time_to_recover_ms) = timing(&shared_t, first_failure, last_failure);

    // One breaker per node, with quorum hints.
    let n = nodes.len();
    let mut sims = (0..n).map(|_| new_sim()).collect::<Result<Vec<_>, _>>()?;
    let mut per_node: Vec<Vec<Event>> = vec![Vec::new(); n];
    let mut own_trip: Vec<Option<u64>> = vec![None; n];
    let mut quorum = FleetSide {
        breakers: n as u32,
        ..FleetSide::default()
    };
    // Quorum hints at `at`: every CLOSED breaker looks at the others' own trips.
    let look = |sims: &mut Vec<Simulator>, per_node: &mut Vec<Vec<Event>>, own_trip: &[Option<u64>], at: u64| {
        for other in 0..n {
            if sims[other].breaker().state() != State::Closed {
                continue;
            }
            let openers: Vec<String> = (0..n)
                .filter(|&j| j != other && own_trip[j].is_some_and(|t| at.saturating_sub(t) <= rule.within_ms))
                .map(|j| nodes[j].0.clone())
                .collect();
            if openers.len() as u32 >= rule.nodes && openers.len() as f64 >= rule.fraction * n as f64 {
                let hint = Input::Hint {
                    at_ms: at,
                    quorum: Box::new(QuorumEvidence {
                        nodes: openers,
                        live: n as u32,
                        within_ms: rule.within_ms,
                    }),
                };
                sims[other].step(&hint, &mut per_node[other]);
            }
        }
    };
    // As a live node publishes it: the trip that began the breaker's current episode, while it
    // is OPEN or HALF_OPEN; none once it closed, was disabled or forced open.
    let note_trips = |events: &[Event], own: &mut Option<u64>| {
        for e in events {
            if let Event::Transitioned(t) = e {
                if is_own_trip(t) {
                    *own = Some(t.at_ms);
                } else if matches!(t.to, State::Closed | State::Disabled | State::ForcedOpen)
                    || t.reason == Reason::FleetQuorum
                {
                    *own = None;
                }
            }
        }
    };
    for (node, c) in &calls {
        // Every breaker up to this instant (a call that ended before it has ended on its node),
        // the hints that makes, then this call, and the hints it makes.
        for j in 0..n {
            let before = per_node[j].len();
            sims[j].advance_to(c.at_ms, &mut per_node[j]);
            note_trips(&per_node[j][before..], &mut own_trip[j]);
        }
        look(&mut sims, &mut per_node, &own_trip, c.at_ms);
        let before = per_node[*node].len();
        run_call(&mut sims[*node], c, &mut quorum, &mut per_node[*node]);
        note_trips(&per_node[*node][before..], &mut own_trip[*node]);
        look(&mut sims, &mut per_node, &own_trip, c.at_ms);
    }
    let mut quorum_t = Vec::with_capacity(n);
    for (sim, events) in sims.iter_mut().zip(per_node.iter_mut()) {
        sim.finish(events);
        quorum_t.push(transitions_of(events, end));
    }
    quorum.openings = quorum_t.iter().flatten().filter(|t| t.to == State::Open).count();
    quorum.by_quorum = quorum_t
        .iter()
        .flatten()
        .filter(|t| t.reason == Reason::FleetQuorum)
        .count();
    (quorum.time_to_open_ms, quorum.time_to_recover_ms) = timing(&quorum_t, first_failure, last_failure);
    let verdict = verdict(&actual, &shared, &quorum);
    Ok(FleetWhatIf {
        from_ms: start,
        to_ms: end,
        nodes: nodes.iter().map(|(n, _)| n.clone()).collect(),
        actual,
        shared,
        quorum,
        quorum_rule: rule,
        verdict,
    })
}

/// Feeds one call to a simulated breaker and counts what it did with it.
fn run_call(sim: &mut Simulator, c: &PeriodCall, side: &mut FleetSide, events: &mut Vec<Event>) {
    let failed = c.outcome.is_failure();
    let Some(at_ms) = c.at_ms_put_back else {
        // Rejected for real while the recorded breaker was not rejecting every call: rejected
        // on every side, nothing made up about it.
        side.rejected += 1;
        side.healthy_rejected += u64::from(!failed);
        side.healthy_rejected_estimated += u64::from(!failed);
        return;
    };
    let before = sim.summary().rejected;
    sim.step(
        &Input::Call {
            at_ms,
            outcome: c.outcome,
            latency_ms: c.latency_ms,
        },
        events,
    );
    if sim.summary().rejected > before {
        side.rejected += 1;
        side.healthy_rejected += u64::from(!failed);
        side.healthy_rejected_estimated += u64::from(!failed && c.estimated);
    } else {
        side.calls_run += 1;
        side.failed_let_through += u64::from(failed);
        side.failed_let_through_estimated += u64::from(failed && c.estimated);
    }
}

fn transitions_of(events: &[Event], end: u64) -> Vec<Transition> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Transitioned(t) if t.at_ms <= end => Some((**t).clone()),
            _ => None,
        })
        .collect()
}

fn verdict(actual: &FleetSide, shared: &FleetSide, quorum: &FleetSide) -> String {
    let line = |name: &str, s: &FleetSide| {
        let failed = s.failed_let_through as i64 - actual.failed_let_through as i64;
        let healthy = s.healthy_rejected as i64 - actual.healthy_rejected as i64;
        let signed = |n: i64| {
            if n > 0 {
                format!("{n} more")
            } else if n < 0 {
                format!("{} fewer", -n)
            } else {
                "no more".to_owned()
            }
        };
        format!(
            "{name}: {} failed calls let through, {} healthy calls rejected",
            signed(failed),
            signed(healthy)
        )
    };
    let estimated = actual.healthy_rejected_estimated > 0
        || shared.failed_let_through_estimated > 0
        || quorum.failed_let_through_estimated > 0;
    format!(
        "against what happened: {}; {}{}",
        line("one shared breaker", shared),
        line("a quorum", quorum),
        if estimated {
            " (estimated in part: calls rejected for real have no recorded outcome; the calls around them were used)"
        } else {
            ""
        }
    )
}
