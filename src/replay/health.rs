//! The health score: 0–100 per breaker, a pure function of its per-minute metrics and its
//! transitions, computable as of any instant. See `docs/health-score.md` for why each weight.

use super::metrics::Minute;
use crate::breaker::{State, Transition};
use serde::Serialize;
use std::collections::BTreeMap;

/// Points of one component, out of its maximum, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Component {
    /// Points earned.
    pub points: f64,
    /// Points possible.
    pub max: f64,
    /// Why, for people.
    pub why: String,
}

/// The band a score falls in, for people: `green` (≥ 80), `amber` (50–79), `red` (< 50).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Band {
    /// 80–100: nothing to look at.
    Green,
    /// 50–79: worth a look.
    Amber,
    /// 0–49: in trouble.
    Red,
}

/// Lowest score of the green band.
pub const GREEN_FROM: u8 = 80;
/// Lowest score of the amber band.
pub const AMBER_FROM: u8 = 50;

impl Band {
    /// The band of `score`.
    pub fn of(score: u8) -> Band {
        if score >= GREEN_FROM {
            Band::Green
        } else if score >= AMBER_FROM {
            Band::Amber
        } else {
            Band::Red
        }
    }
}

/// The highest score a breaker in `state` can have, and why: one that rejects every call (OPEN,
/// FORCED_OPEN) is red whatever its last calls did; one admitting only trials (HALF_OPEN) is at
/// most amber. `None`: no cap.
pub fn cap_of(state: State) -> Option<(u8, &'static str)> {
    match state {
        State::Open => Some((
            AMBER_FROM - 1,
            "OPEN: every call is rejected until the OPEN period ends",
        )),
        State::ForcedOpen => Some((
            AMBER_FROM - 1,
            "FORCED_OPEN: every call is rejected until an operator resets it",
        )),
        State::HalfOpen => Some((GREEN_FROM - 1, "HALF_OPEN: only trial calls are let through")),
        State::Closed | State::Disabled => None,
    }
}

/// A breaker's health, with the components that make it up.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Health {
    /// 0–100: the components' sum, at most the state's cap.
    pub score: u8,
    /// `green`, `amber` or `red` (see [`Band`]).
    pub band: Band,
    /// Why the score is lower than the components' sum, when the state caps it (see [`cap_of`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capped: Option<String>,
    /// Calls that worked in the last 5 minutes (60 points).
    pub success: Component,
    /// Latency against the budget in the last 5 minutes (25 points).
    pub latency: Component,
    /// Openings in the last hour (15 points).
    pub stability: Component,
}

const FIVE_MIN: u64 = 5 * 60_000;
const HOUR: u64 = 60 * 60_000;

/// Health at `at_ms` of a breaker in `state` then, from per-minute metrics and the stream's
/// transitions.
///
/// ```
/// use breakerbox::breaker::State;
/// use breakerbox::replay::{Band, health};
/// use std::collections::BTreeMap;
/// // No traffic at all: nothing says the service is in trouble.
/// assert_eq!(health(&BTreeMap::new(), &[], 600_000, 1_000, State::Closed).score, 100);
/// // Forced open, it rejects everything: never green, whatever came before.
/// let forced = health(&BTreeMap::new(), &[], 600_000, 1_000, State::ForcedOpen);
/// assert_eq!((forced.score, forced.band), (49, Band::Red));
/// ```
pub fn health(
    minutes: &BTreeMap<u64, Minute>,
    transitions: &[Transition],
    at_ms: u64,
    latency_budget_ms: u64,
    state: State,
) -> Health {
    let mut recent = Minute::default();
    let from = at_ms.saturating_sub(FIVE_MIN);
    for m in minutes.range(from / 60_000 * 60_000..=at_ms).map(|(_, m)| m) {
        recent.merge(m);
    }
    // Success: calls that worked, among those that ran or were turned away (a rejected call is a
    // call the application could not make). Ignored calls are neither.
    let attempts = recent.successes + recent.failures + recent.timeouts + recent.rejected;
    let success = if attempts == 0 {
        Component {
            points: 60.0,
            max: 60.0,
            why: "no calls in the last 5 minutes".into(),
        }
    } else {
        let rate = recent.successes as f64 / attempts as f64;
        Component {
            points: 60.0 * rate,
            max: 60.0,
            why: format!(
                "{:.1} % of {attempts} calls worked ({} failed, {} timed out, {} rejected)",
                rate * 100.0,
                recent.failures,
                recent.timeouts,
                recent.rejected
            ),
        }
    };
    // Latency: the mean against the budget, and the tail (p95) against twice the budget.
    let ran = recent.calls();
    let budget = latency_budget_ms.max(1) as f64;
    let latency = if ran == 0 {
        Component {
            points: 25.0,
            max: 25.0,
            why: "no calls in the last 5 minutes".into(),
        }
    } else {
        let mean = recent.latency_total_ms as f64 / ran as f64;
        let p95 = recent.latency_quantile_ms(0.95).unwrap_or(0) as f64;
        let mean_part = (budget / mean.max(1.0)).min(1.0);
        let tail_part = (2.0 * budget / p95.max(1.0)).min(1.0);
        Component {
            points: 25.0 * (0.5 * mean_part + 0.5 * tail_part),
            max: 25.0,
            why: format!("mean {mean:.0} ms, p95 ≤ {p95:.0} ms against a {budget:.0} ms budget"),
        }
    };
    // Stability: each opening in the last hour costs 5 points; 3 or more (flapping) cost all 15.
    let opened = transitions
        .iter()
        .filter(|t| t.at_ms <= at_ms && t.at_ms + HOUR > at_ms && matches!(t.to, State::Open | State::ForcedOpen))
        .count();
    let stability = Component {
        points: (15.0 - 5.0 * opened as f64).max(0.0),
        max: 15.0,
        why: match opened {
            0 => "did not open in the last hour".into(),
            n if n >= 3 => format!("opened {n} times in the last hour (flapping)"),
            n => format!("opened {n} time{} in the last hour", if n == 1 { "" } else { "s" }),
        },
    };
    let sum = (success.points + latency.points + stability.points)
        .round()
        .clamp(0.0, 100.0) as u8;
    let (score, capped) = match cap_of(state) {
        Some((cap, why)) if sum > cap => (cap, Some(format!("{sum} capped at {cap}: {why}"))),
        _ => (sum, None),
    };
    Health {
        score,
        band: Band::of(score),
        capped,
        success,
        latency,
        stability,
    }
}
