//! The health report: every breaker's state, health score and last five minutes, built once for
//! every surface. `breakerbox status --json` prints it and `GET /api/health/circuit-breakers`
//! answers it, so the two can't disagree (`docs/http-api.md` has the shape).

use super::{Health, Minute, Projection};
use crate::breaker::{Breaker, Event, State, Transition, codec};
use crate::journal::{Journal, JournalError, LogCondition};
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

/// One breaker in the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerReport {
    /// The breaker's key.
    pub service: String,
    /// Its state.
    pub state: State,
    /// Its health score with the components; `null` when the log could not be read (see the
    /// report's `read_error`): no score is better than a made-up one.
    pub health: Option<Health>,
    /// The last five minutes; `null` when the log could not be read.
    pub metrics_5m: Option<Recent>,
    /// Failed and timed-out calls among those that succeeded, failed or timed out; none without calls.
    pub failure_ratio_5m: Option<f64>,
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
        let got = figures.remove(b.key);
        let (health, recent, last_transition) = match got {
            Some((h, m, t)) => (Some(h), Some(m), t),
            None => (None, None, None),
        };
        let ran = recent.as_ref().map_or(0, |r| r.successes + r.failures + r.timeouts);
        let view = b.breaker.view(now_ms);
        out.push(BreakerReport {
            service: b.key.to_owned(),
            state: b.state,
            health,
            failure_ratio_5m: recent
                .as_ref()
                .filter(|_| ran > 0)
                .map(|r| (r.failures + r.timeouts) as f64 / ran as f64),
            metrics_5m: recent.as_ref().map(Recent::from),
            last_transition,
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
        as_of_ms: now_ms,
        breakers: out,
    }
}

fn figures_missing(breakers: &[BreakerReport]) -> bool {
    breakers.iter().any(|b| b.health.is_none())
}

/// Per breaker, what the log says: health, the last five minutes and the last transition.
type Figures = BTreeMap<String, (Health, Minute, Option<Transition>)>;

async fn from_log(
    journal: &Journal,
    projection: &mut Projection,
    breakers: &[BreakerNow<'_>],
    now_ms: u64,
) -> Result<Figures, JournalError> {
    let budgets: BTreeMap<String, u64> = breakers
        .iter()
        .map(|b| (b.key.to_owned(), b.latency_budget_ms))
        .collect();
    let mut health = projection.health_all(journal, &budgets, now_ms).await?;
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
            Some(e) => match codec::decode(&e.event_type, e.event_version, &e.payload) {
                Ok(Event::Transitioned(t)) => Some(*t),
                // One damaged record never blanks the report: it is shown as no last transition
                // (`breakerbox audit` reports it with its position).
                Ok(_) | Err(_) => None,
            },
            None => None,
        };
        let h = health
            .remove(b.key)
            .unwrap_or_else(|| super::health(&BTreeMap::new(), &[], now_ms, b.latency_budget_ms));
        out.insert(b.key.to_owned(), (h, recent, last_transition));
    }
    Ok(out)
}
