//! What each trip rule measures now, against its threshold: the gauge a report shows beside a
//! breaker. Read from the policy and the breaker's own counts (its [`super::View`]), never recomputed from
//! elsewhere, so a dashboard shows exactly the number the rule compares (a breaker opened by its
//! slow-call rule shows its slow-call rate, not a failure ratio the rule never looked at).

use super::event::Reason;
use super::policy::{Policy, SlidingWindow, TripRule};
use super::window::Counts;
use serde::Serialize;

/// One rule's reading.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RuleGauge {
    /// The rule, named as the reason of the transition it makes when it fires
    /// (`consecutive_failures`, `failure_count`, `failure_rate`, `slow_call_rate`).
    pub rule: Reason,
    /// What it measures now: failures in a row or in the window (count rules), or a percentage
    /// of the window's calls (rate rules; `None` while the window holds no call).
    pub value: Option<f64>,
    /// The value at which it fires: a count, or a percentage for rate rules.
    pub threshold: f64,
    /// `true` for rate rules: `value` and `threshold` are percentages.
    pub percent: bool,
    /// Calls in the rule's window (`None` for consecutive failures, which has no window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// Rate rules judge no rate before the window holds this many calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// The window's length, for time windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The window's size, for count windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_calls: Option<u32>,
}

/// The share of `hits` in `calls`, in percent, as the rate rules compute it (`None` without calls).
pub(super) fn percent_of(calls: u64, hits: u64) -> Option<f64> {
    (calls > 0).then(|| hits as f64 * 100.0 / calls as f64)
}

/// Every rule of `policy` read off a breaker's counts at one instant (its [`super::View`]'s
/// `consecutive_failures`, `window` and `slow_window`): the trip rule first, then the slow-call
/// rule when there is one. Every transition empties the windows, so an OPEN breaker's rate rules
/// read `None`: what made it open is its trip transition's evidence.
pub fn gauges(
    policy: &Policy,
    consecutive_failures: u32,
    window: Option<Counts>,
    slow_window: Option<Counts>,
) -> Vec<RuleGauge> {
    let window = window.unwrap_or_default();
    let mut out = Vec::with_capacity(2);
    out.push(match &policy.trip {
        TripRule::ConsecutiveFailures { threshold } => RuleGauge {
            rule: Reason::ConsecutiveFailures,
            value: Some(f64::from(consecutive_failures)),
            threshold: f64::from(*threshold),
            percent: false,
            calls: None,
            minimum_calls: None,
            window_ms: None,
            window_calls: None,
        },
        TripRule::FailureCount {
            threshold, window_ms, ..
        } => RuleGauge {
            rule: Reason::FailureCount,
            value: Some(window.failures as f64),
            threshold: f64::from(*threshold),
            percent: false,
            calls: Some(window.calls),
            minimum_calls: None,
            window_ms: Some(*window_ms),
            window_calls: None,
        },
        TripRule::FailureRate {
            threshold_percent,
            window: w,
            minimum_calls,
        } => with_window(
            w,
            RuleGauge {
                rule: Reason::FailureRate,
                value: percent_of(window.calls, window.failures),
                threshold: *threshold_percent,
                percent: true,
                calls: Some(window.calls),
                minimum_calls: Some(*minimum_calls),
                window_ms: None,
                window_calls: None,
            },
        ),
    });
    if let Some(rule) = &policy.slow_calls {
        let slow = slow_window.unwrap_or_default();
        out.push(with_window(
            &rule.window,
            RuleGauge {
                rule: Reason::SlowCallRate,
                value: percent_of(slow.calls, slow.slow),
                threshold: rule.threshold_percent,
                percent: true,
                calls: Some(slow.calls),
                minimum_calls: Some(rule.minimum_calls),
                window_ms: None,
                window_calls: None,
            },
        ));
    }
    out
}

fn with_window(window: &SlidingWindow, gauge: RuleGauge) -> RuleGauge {
    match *window {
        SlidingWindow::Count { calls } => RuleGauge {
            window_calls: Some(calls),
            ..gauge
        },
        SlidingWindow::Time { window_ms, .. } => RuleGauge {
            window_ms: Some(window_ms),
            ..gauge
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{Breaker, Decision, Outcome, SlowCallRule};

    #[test]
    fn a_slow_call_rule_reads_the_slow_call_rate_of_its_own_window() {
        let mut policy = Policy::consecutive(100, 60_000);
        policy.slow_calls = Some(SlowCallRule {
            duration_ms: 500,
            threshold_percent: 80.0,
            window: SlidingWindow::Count { calls: 10 },
            minimum_calls: 10,
        });
        let mut b = Breaker::new(policy).unwrap();
        let mut out = Vec::new();
        // 4 calls, 1 slow (successful): 25 % slow, no failure at all.
        for (t, latency) in [(0, 10), (1_000, 900), (2_000, 10), (3_000, 10)] {
            let Decision::Permit(p) = b.acquire(t, &mut out) else {
                unreachable!()
            };
            b.complete(t + latency, p, Outcome::Success, &mut out);
        }
        let g = b.gauges(4_000);
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].rule, g[0].value, g[0].threshold),
            (Reason::ConsecutiveFailures, Some(0.0), 100.0)
        );
        assert_eq!(g[1].rule, Reason::SlowCallRate);
        assert_eq!(g[1].value, Some(25.0));
        assert_eq!((g[1].threshold, g[1].percent, g[1].calls), (80.0, true, Some(4)));
        assert_eq!((g[1].minimum_calls, g[1].window_calls), (Some(10), Some(10)));
    }
}
