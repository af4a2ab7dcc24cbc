//! The health report: every breaker's state, health score and last five minutes, built once for
//! every surface. `breakerbox status --json` prints it and `GET /api/health/circuit-breakers`
//! answers it, so the two can't disagree (`docs/http-api.md` has the shape).

use super::{GREEN_FROM, Health, Minute, Projection};
use crate::breaker::{Breaker, Command, Event, RuleGauge, State, Transition, codec};
use crate::journal::{Journal, JournalError, LogCondition, OPERATOR_COMMAND, Operator, OperatorCommand, decode_record};
use serde::Serialize;
use std::collections::BTreeMap;

/// What the report needs of one breaker besides the log: its value now and what only a live
/// process knows.
pub struct BreakerNow<'a> {
    /// The breaker's key (`stripe`, `stripe/customers.create`).
    pub key: &'a str,
    /// The breaker: the actor's (live) or recovered from the log.
    pub breaker: &'a Breaker,
    /// The state admission acts on (a live breaker's published state; else the breaker's own).
    pub state: State,
    /// Trial permits held by calls in flight (0 read from the log: it holds no calls in flight).
    pub trial_permits_in_use: u64,
    /// The latency budget the health score measures against.
    pub latency_budget_ms: u64,
}

impl<'a> BreakerNow<'a> {
    /// The latency budget the score uses: the one recorded with the breaker's policy, else the
    /// configured one (policies written before it was recorded), so every tool scores alike.
    pub fn budget(&self) -> u64 {
        self.breaker
            .policy()
            .latency_budget_ms
            .unwrap_or(self.latency_budget_ms)
    }

    /// A breaker read from the log, as of `now_ms`.
    pub fn recovered(key: &'a str, breaker: &'a Breaker, latency_budget_ms: u64, now_ms: u64) -> Self {
        BreakerNow {
            key,
            breaker,
            state: breaker.view(now_ms).state,
            trial_permits_in_use: 0,
            latency_budget_ms,
        }
    }
}

/// The overall verdict, as the health-check draft's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every breaker closed (or half-open, disabled) and the log is written.
    Pass,
    /// A breaker is open or forced open: a dependency is in trouble, this process is fine.
    Warn,
    /// This process's own event log is failing.
    Fail,
}

/// Counts of the last five minutes, with latency percentiles from the histogram.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Recent {
    /// Calls that ran.
    pub calls: u64,
    /// Successful calls.
    pub successes: u64,
    /// Failed calls.
    pub failures: u64,
    /// Timed-out calls.
    pub timeouts: u64,
    /// Ignored calls.
    pub ignored: u64,
    /// Calls whose caller gave up.
    pub cancelled: u64,
    /// Slow calls.
    pub slow: u64,
    /// Calls the breaker rejected.
    pub rejected: u64,
    /// Calls answered by a fallback.
    pub fallbacks: u64,
    /// Median latency: the upper bound of the histogram bucket it falls in.
    pub p50_ms: Option<u64>,
    /// 95th percentile latency (bucket upper bound).
    pub p95_ms: Option<u64>,
    /// 99th percentile latency (bucket upper bound).
    pub p99_ms: Option<u64>,
}

impl From<&Minute> for Recent {
    fn from(m: &Minute) -> Recent {
        Recent {
            calls: m.calls(),
            successes: m.successes,
            failures: m.failures,
            timeouts: m.timeouts,
            ignored: m.ignored,
            cancelled: m.cancelled,
            slow: m.slow,
            rejected: m.rejected,
            fallbacks: m.fallbacks,
            p50_ms: m.latency_quantile_ms(0.5),
            p95_ms: m.latency_quantile_ms(0.95),
            p99_ms: m.latency_quantile_ms(0.99),
        }
    }
}

/// How urgently a breaker needs a look, worst first (the order is the triage order: sorting by
/// it puts the breakers in trouble first). Defined once here; `docs/health-score.md` says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// FORCED_OPEN: an operator turned every call away.
    ForcedOpen,
    /// OPEN: a rule tripped; every call is rejected until the OPEN period ends.
    Open,
    /// HALF_OPEN: trial calls decide between CLOSED and OPEN.
    HalfOpen,
    /// CLOSED, but it opened [`FLAPPING_OPENINGS`] times or more in the last
    /// [`FLAPPING_WINDOW_MS`].
    Flapping,
    /// CLOSED, but its health is below the green band or more than [`DEGRADED_UNANSWERED`] of
    /// the last five minutes' attempts got no good answer.
    Degraded,
    /// CLOSED and none of the above.
    Healthy,
    /// DISABLED: an operator turned the breaker off; calls flow unprotected, it never trips.
    Disabled,
}

/// Openings (transitions to OPEN) within [`FLAPPING_WINDOW_MS`] that make a CLOSED breaker
/// `flapping`.
pub const FLAPPING_OPENINGS: u64 = 3;
/// The window openings are counted over for `flapping`: the last ten minutes.
pub const FLAPPING_WINDOW_MS: u64 = 10 * 60_000;
/// An unanswered ratio above this (5 %) makes a CLOSED breaker `degraded`.
pub const DEGRADED_UNANSWERED: f64 = 0.05;
/// Most transitions read back to find the one that started the current OPEN/HALF_OPEN episode
/// (each one index probe); an episode longer than that reports no `current_trip`.
pub const MAX_EPISODE_TRANSITIONS: usize = 1_000;

impl Severity {
    /// Every severity, worst first.
    pub const ALL: [Severity; 7] = [
        Severity::ForcedOpen,
        Severity::Open,
        Severity::HalfOpen,
        Severity::Flapping,
        Severity::Degraded,
        Severity::Healthy,
        Severity::Disabled,
    ];

    /// The severity of a breaker in `state` with these figures (`None`: the log could not be
    /// read, and a CLOSED breaker is then judged by its state alone: `healthy`).
    pub fn of(
        state: State,
        health: Option<&Health>,
        unanswered_ratio: Option<f64>,
        openings_10m: Option<u64>,
    ) -> Severity {
        match state {
            State::ForcedOpen => Severity::ForcedOpen,
            State::Open => Severity::Open,
            State::HalfOpen => Severity::HalfOpen,
            State::Disabled => Severity::Disabled,
            State::Closed if openings_10m.is_some_and(|n| n >= FLAPPING_OPENINGS) => Severity::Flapping,
            State::Closed
                if health.is_some_and(|h| h.score < GREEN_FROM)
                    || unanswered_ratio.is_some_and(|r| r > DEGRADED_UNANSWERED) =>
            {
                Severity::Degraded
            }
            State::Closed => Severity::Healthy,
        }
    }
}

/// Who put a breaker in FORCED_OPEN or DISABLED, when and why: its stream's latest
/// `operator_command`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Override {
    /// `force_open` or `disable`.
    pub command: Command,
    /// When it was applied.
    pub at_ms: u64,
    /// Who (`who`), from where (`from`: cli, http, dashboard, library), why (`why`, as given).
    #[serde(flatten)]
    pub operator: Operator,
}

/// One breaker in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerReport {
    /// The breaker's key.
    pub service: String,
    /// Its state.
    pub state: State,
    /// How urgently it needs a look (see [`Severity`]).
    pub severity: Severity,
    /// Its health score with the components; `null` when the log could not be read (see the
    /// report's `read_error`): no score is better than a made-up one.
    pub health: Option<Health>,
    /// The last five minutes; `null` when the log could not be read.
    pub metrics_5m: Option<Recent>,
    /// Failed and timed-out calls among those that succeeded, failed or timed out; none without
    /// calls. The calls that ran, as a failure rule counts them: rejected calls are not in it.
    pub failure_ratio_5m: Option<f64>,
    /// The share of the last five minutes' attempts that got no good answer: failed, timed-out
    /// and rejected calls over every attempt (succeeded, failed, timed out, rejected); none
    /// without attempts. What the application saw: a FORCED_OPEN breaker's is 1.
    pub unanswered_ratio_5m: Option<f64>,
    /// What each of its rules measures now against its threshold: the trip rule, then the
    /// slow-call rule if any (the core's own counts: windows empty at every transition).
    pub trip_rules: Vec<RuleGauge>,
    /// Transitions to OPEN in the last ten minutes (`null` when the log could not be read).
    pub openings_10m: Option<u64>,
    /// OPEN or HALF_OPEN: the transition that started this episode of trouble (the trip out of
    /// CLOSED, with the rule's evidence), however many OPEN ⇄ HALF_OPEN transitions followed.
    pub current_trip: Option<Transition>,
    /// FORCED_OPEN or DISABLED: who did it, when and why.
    #[serde(rename = "override")]
    pub operator_override: Option<Override>,
    /// Its last transition in the log (`null` when there is none or the log could not be read).
    pub last_transition: Option<Transition>,
    /// Time left in OPEN.
    pub open_remaining_ms: Option<u64>,
    /// Trial permits held by calls in flight.
    pub trial_permits_in_use: u64,
    /// Trial permits a HALF_OPEN episode hands out.
    pub trial_permits_max: u32,
    /// The policy in force, in the config file's keys.
    pub policy: serde_json::Map<String, serde_json::Value>,
    /// `status --test`'s probe of the service's `health_url` (the CLI's only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<serde_json::Value>,
    /// The last five minutes as counted, histogram included (what a node publishes for fleet
    /// health to merge; not in the health document, whose `metrics_5m` says it for people).
    #[serde(skip)]
    pub window_5m: Option<Minute>,
    /// The latency budget the score measured against.
    #[serde(skip)]
    pub latency_budget_ms: u64,
}

/// The report of some breakers at one instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthReport {
    /// `pass`, `warn` or `fail`.
    pub status: Verdict,
    /// This process's event log: written (`ok`) or `failing`, with what and since when (a
    /// process only reading the log, like `breakerbox status`, reports `ok` with the position it
    /// read to).
    pub log: LogCondition,
    /// Why the figures from the log (health, last five minutes, last transition) are missing or
    /// behind, when they are: the states are the breakers' own and always there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// The service asked about, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How far this process's log is shipped to the fleet's log, when it is (`docs/fleet.md`):
    /// `failing_since_ms` is since when the fleet's view of this node is stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::journal::fleet::ShipStatus>,
    /// The instant it describes.
    pub as_of_ms: u64,
    /// The breakers, in the order asked.
    pub breakers: Vec<BreakerReport>,
}

const FIVE_MIN: u64 = 5 * 60_000;

/// The report of `breakers` at `now_ms`, with `log` the condition of the process's log. The
/// projection is brought up to date first. It always answers: the states are the breakers'
/// own, and when the log cannot be read (a corrupt page, an I/O error) the figures that come
/// from it are `null` and `read_error` says why — an operator needs the states most then.
pub async fn health_report(
    journal: &Journal,
    projection: &mut Projection,
    breakers: &[BreakerNow<'_>],
    now_ms: u64,
    log: LogCondition,
) -> HealthReport {
    // While the log fails to take appends the projection may not be written either; what it
    // holds is then as recent as the log itself, and the figures are read from it as they are.
    let behind = projection.catch_up(journal, 10_000).await.err();
    let (mut figures, read_error) = match from_log(journal, projection, breakers, now_ms).await {
        Ok(f) => (
            f,
            behind.map(|e| format!("the metrics projection could not be brought up to date: {e}")),
        ),
        Err(e) => (Figures::new(), Some(format!("the event log could not be read: {e}"))),
    };
    let mut out = Vec::with_capacity(breakers.len());
    for b in breakers {
        let f = figures.remove(b.key).unwrap_or_default();
        let (health, recent) = (f.health, f.recent);
        let ran = recent.as_ref().map_or(0, |r| r.successes + r.failures + r.timeouts);
        let attempts = ran + recent.as_ref().map_or(0, |r| r.rejected);
        let unanswered_ratio_5m = recent
            .as_ref()
            .filter(|_| attempts > 0)
            .map(|r| (r.failures + r.timeouts + r.rejected) as f64 / attempts as f64);
        let view = b.breaker.view(now_ms);
        out.push(BreakerReport {
            service: b.key.to_owned(),
            state: b.state,
            severity: Severity::of(b.state, health.as_ref(), unanswered_ratio_5m, f.openings_10m),
            health,
            failure_ratio_5m: recent
                .as_ref()
                .filter(|_| ran > 0)
                .map(|r| (r.failures + r.timeouts) as f64 / ran as f64),
            unanswered_ratio_5m,
            trip_rules: b.breaker.gauges(now_ms),
            openings_10m: f.openings_10m,
            current_trip: f.current_trip,
            operator_override: f.operator_override,
            metrics_5m: recent.as_ref().map(Recent::from),
            window_5m: recent.clone(),
            latency_budget_ms: b.budget(),
            last_transition: f.last_transition,
            open_remaining_ms: view.open_until_ms.map(|u| u.saturating_sub(now_ms)),
            trial_permits_in_use: b.trial_permits_in_use,
            trial_permits_max: b.breaker.policy().half_open_requests,
            policy: crate::config::policy_keys(b.breaker.policy()),
            test: None,
        });
    }
    let status = if !log.is_ok() || figures_missing(&out) {
        Verdict::Fail
    } else if out.iter().any(|b| matches!(b.state, State::Open | State::ForcedOpen)) {
        Verdict::Warn
    } else {
        Verdict::Pass
    };
    HealthReport {
        status,
        log,
        read_error,
        service: None,
        fleet: None,
        as_of_ms: now_ms,
        breakers: out,
    }
}

fn figures_missing(breakers: &[BreakerReport]) -> bool {
    breakers.iter().any(|b| b.health.is_none())
}

/// What the log says of one breaker.
#[derive(Default)]
struct BreakerFigures {
    health: Option<Health>,
    recent: Option<Minute>,
    last_transition: Option<Transition>,
    current_trip: Option<Transition>,
    operator_override: Option<Override>,
    openings_10m: Option<u64>,
}

/// Per breaker, what the log says.
type Figures = BTreeMap<String, BreakerFigures>;

async fn from_log(
    journal: &Journal,
    projection: &mut Projection,
    breakers: &[BreakerNow<'_>],
    now_ms: u64,
) -> Result<Figures, JournalError> {
    let inputs: super::HealthInputs = breakers
        .iter()
        .map(|b| (b.key.to_owned(), (b.budget(), b.state)))
        .collect();
    let mut health = projection.health_all(journal, &inputs, now_ms).await?;
    let (recent_transitions, _) =
        super::transitions_by_stream(journal, now_ms.saturating_sub(FLAPPING_WINDOW_MS), now_ms + 1, 0).await?;
    let mut out = Figures::new();
    for b in breakers {
        let mut recent = Minute::default();
        for m in projection
            .minutes(b.key, now_ms.saturating_sub(FIVE_MIN), now_ms)
            .await?
            .values()
        {
            recent.merge(m);
        }
        let last_transition = match journal.latest(b.key, codec::types::TRANSITION).await? {
            Some(e) => transition_of(&e),
            None => None,
        };
        let current_trip = match (&last_transition, b.state) {
            (Some(t), State::Open | State::HalfOpen) => episode_start(journal, b.key, t.clone()).await?,
            _ => None,
        };
        let operator_override = match b.state {
            State::ForcedOpen | State::Disabled => override_of(journal, b.key, b.state).await?,
            _ => None,
        };
        let openings_10m = recent_transitions
            .get(b.key)
            .map_or(0, |ts| ts.iter().filter(|t| t.to == State::Open).count() as u64);
        let h = health
            .remove(b.key)
            .unwrap_or_else(|| super::health(&BTreeMap::new(), &[], now_ms, b.budget(), b.state));
        out.insert(
            b.key.to_owned(),
            BreakerFigures {
                health: Some(h),
                recent: Some(recent),
                last_transition,
                current_trip,
                operator_override,
                openings_10m: Some(openings_10m),
            },
        );
    }
    Ok(out)
}

/// A stored transition, decoded. One damaged record never blanks the report: it reads as no
/// transition (`breakerbox audit` reports it with its position).
fn transition_of(e: &crate::journal::StoredEvent) -> Option<Transition> {
    match codec::decode(&e.event_type, e.event_version, &e.payload) {
        Ok(Event::Transitioned(t)) => Some(*t),
        Ok(_) | Err(_) => None,
    }
}

/// Walks back from `latest` (a transition into OPEN or HALF_OPEN) to the one that entered the
/// OPEN ⇄ HALF_OPEN cycle from outside it: the trip. Each step is one probe of the transitions'
/// time index for the latest one before the current step's instant: an OPEN period lasts at
/// least 1 ms, so the trip never shares its millisecond with the transition after it.
async fn episode_start(journal: &Journal, key: &str, latest: Transition) -> Result<Option<Transition>, JournalError> {
    let trouble = |s: State| matches!(s, State::Open | State::HalfOpen);
    let mut t = latest;
    for _ in 0..MAX_EPISODE_TRANSITIONS {
        if !trouble(t.to) {
            return Ok(None);
        }
        if !trouble(t.from) {
            return Ok(Some(t));
        }
        let Some(before) = t.at_ms.checked_sub(1) else {
            return Ok(None);
        };
        match journal
            .latest_at_or_before(key, codec::types::TRANSITION, before)
            .await?
        {
            Some(e) => match transition_of(&e) {
                Some(prev) => t = prev,
                None => return Ok(None),
            },
            // Compacted away or never recorded: no trip to show.
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// The operator command that put the breaker in `state` (FORCED_OPEN or DISABLED): its
/// stream's latest `operator_command`, when that one left it in `state`.
async fn override_of(journal: &Journal, key: &str, state: State) -> Result<Option<Override>, JournalError> {
    let Some(e) = journal.latest(key, OPERATOR_COMMAND).await? else {
        return Ok(None);
    };
    Ok(decode_record::<OperatorCommand>(&e)
        .ok()
        .filter(|c| c.to_state == state)
        .map(|c| Override {
            command: c.command,
            at_ms: c.at_ms,
            operator: c.operator,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn health_of(score_state: State) -> Health {
        super::super::health(&BTreeMap::new(), &[], 600_000, 1_000, score_state)
    }

    #[test]
    fn severity_boundaries_are_the_documented_ones() {
        let green = health_of(State::Closed);
        let mut amber = green.clone();
        amber.score = GREEN_FROM - 1;
        let closed = |h: &Health, unanswered: Option<f64>, openings: Option<u64>| {
            Severity::of(State::Closed, Some(h), unanswered, openings)
        };
        assert_eq!(closed(&green, Some(0.0), Some(0)), Severity::Healthy);
        // Flapping from the third opening in ten minutes, before degraded.
        assert_eq!(
            closed(&green, Some(0.0), Some(FLAPPING_OPENINGS - 1)),
            Severity::Healthy
        );
        assert_eq!(closed(&amber, Some(0.5), Some(FLAPPING_OPENINGS)), Severity::Flapping);
        // Degraded: below the green band, or more than 5 % unanswered.
        assert_eq!(closed(&amber, None, Some(0)), Severity::Degraded);
        assert_eq!(closed(&green, Some(DEGRADED_UNANSWERED), Some(0)), Severity::Healthy);
        assert_eq!(closed(&green, Some(0.051), Some(0)), Severity::Degraded);
        // No figures (the log unreadable): the state alone.
        assert_eq!(Severity::of(State::Closed, None, None, None), Severity::Healthy);
        // The states that say it all, whatever the figures.
        for (state, severity) in [
            (State::ForcedOpen, Severity::ForcedOpen),
            (State::Open, Severity::Open),
            (State::HalfOpen, Severity::HalfOpen),
            (State::Disabled, Severity::Disabled),
        ] {
            assert_eq!(Severity::of(state, Some(&green), Some(0.0), Some(9)), severity);
        }
        // Worst first, as the dashboard sorts.
        let mut sorted = Severity::ALL;
        sorted.sort();
        assert_eq!(sorted, Severity::ALL);
    }
}
