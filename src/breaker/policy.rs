//! The policy: which rule trips the breaker, how long it stays OPEN, how HALF_OPEN decides.
//!
//! A [`Policy`] is plain data (it is serialized into `policy_applied` events). It is checked by
//! [`Policy::validate`], which every constructor of a breaker calls, so a breaker never runs on a
//! policy that cannot work (e.g. `success_threshold > half_open_requests`, which could never close).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Most calls a count-based window keeps. Memory is one byte per call, so 1 MB per window at most.
pub const MAX_WINDOW_CALLS: u32 = 1_000_000;
/// Most buckets a time-based window keeps (an hour of one-second buckets).
pub const MAX_WINDOW_BUCKETS: u32 = 3_600;
/// Longest OPEN period: 365 days. A longer `timeout_ms`, `max_timeout_ms` or backoff growth is
/// clamped to it, so arithmetic on `now + open` can never overflow in practice.
pub const MAX_OPEN_MS: u64 = 365 * 24 * 3_600 * 1_000;

/// Everything that decides a breaker's behaviour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// The rule that opens a CLOSED breaker.
    pub trip: TripRule,
    /// Optional second rule: open when too many calls are slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_calls: Option<SlowCallRule>,
    /// How long OPEN lasts.
    pub open: OpenPolicy,
    /// Trial calls admitted per HALF_OPEN episode (the seed's `half_open_requests`, default 3).
    pub half_open_requests: u32,
    /// Successful trials needed to close again (the seed's `success_threshold`, default 2).
    pub success_threshold: u32,
    /// Longest a HALF_OPEN episode waits for the trials it let through (Resilience4j's
    /// `maxWaitDurationInHalfOpenState`): counted from the first trial out, it goes back to OPEN
    /// with reason `trial_deadline` if trials are still out and undecided then. `None`: no
    /// deadline (policies written before it existed read so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_max_wait_ms: Option<u64>,
    /// The latency the health score measures calls against (the `latency_budget` key). It
    /// decides nothing here; it is part of the policy so the log records it with the policy,
    /// and every tool scores an instant of the log alike, with or without the configuration.
    /// `None` (policies written before it was recorded): the tool's own budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_budget_ms: Option<u64>,
}

/// The rule that opens a CLOSED breaker. One per policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum TripRule {
    /// Open after `threshold` failures in a row; any success resets the count (the seed's rule).
    ConsecutiveFailures {
        /// The seed's `failure_threshold`.
        threshold: u32,
    },
    /// Open when `threshold` failures fall within a time window, whatever the successes.
    FailureCount {
        /// Failures within the window that open the breaker.
        threshold: u32,
        /// The window (time-based only: a count window would make this a rate).
        window_ms: u64,
        /// Buckets the window is kept in; its granularity is `window_ms / buckets`.
        buckets: u32,
    },
    /// Open when the share of failures in a sliding window reaches a percentage.
    FailureRate {
        /// Percentage of failed calls that opens the breaker, in (0, 100].
        threshold_percent: f64,
        /// The window the rate is computed over.
        window: SlidingWindow,
        /// No rate is judged before the window holds this many calls.
        minimum_calls: u32,
    },
}

/// A sliding window of recent calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SlidingWindow {
    /// The last `calls` calls.
    Count {
        /// How many calls the window holds, at most [`MAX_WINDOW_CALLS`].
        calls: u32,
    },
    /// Calls completed within the last `window_ms`, kept in `buckets` equal buckets: a call at `t`
    /// falls in bucket `t / (window_ms / buckets)`, and at `now` the window is the `buckets`
    /// buckets ending with `now`'s own. So the window covers between `window_ms - width` and
    /// `window_ms` of history, like Resilience4j's and Hystrix's bucketed windows.
    Time {
        /// Length of the window.
        window_ms: u64,
        /// Number of buckets, at most [`MAX_WINDOW_BUCKETS`]; must divide `window_ms`.
        buckets: u32,
    },
}

/// Open when too many calls are slow (latency at or above `duration_ms`), success or not.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlowCallRule {
    /// A call whose latency is at least this is slow.
    pub duration_ms: u64,
    /// Percentage of slow calls that opens the breaker, in (0, 100].
    pub threshold_percent: f64,
    /// The window the slow-call rate is computed over.
    pub window: SlidingWindow,
    /// No rate is judged before the window holds this many calls.
    pub minimum_calls: u32,
}

/// How long OPEN lasts: `timeout_ms`, times `backoff_factor` for every re-open without a close in
/// between, capped at `max_timeout_ms`, then spread by ±`jitter_percent` drawn from a generator
/// seeded with `seed` and the episode number, so a replay draws the same jitter.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenPolicy {
    /// The seed's `timeout`: 30 s for Cal.com, 60 s Retell, 120 s Stripe.
    pub timeout_ms: u64,
    /// Growth per consecutive re-open; 1.0 keeps every OPEN period at `timeout_ms`.
    #[serde(default = "one")]
    pub backoff_factor: f64,
    /// Cap of the grown period (default and ceiling: [`MAX_OPEN_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_ms: Option<u64>,
    /// Random spread of each OPEN period, in [0, 100).
    #[serde(default)]
    pub jitter_percent: f64,
    /// Seed of the jitter generator.
    #[serde(default)]
    pub seed: u64,
}

fn one() -> f64 {
    1.0
}

impl OpenPolicy {
    /// A constant OPEN period with no backoff and no jitter.
    pub fn fixed(timeout_ms: u64) -> Self {
        OpenPolicy {
            timeout_ms,
            backoff_factor: 1.0,
            max_timeout_ms: None,
            jitter_percent: 0.0,
            seed: 0,
        }
    }

    /// The length of the `streak`-th consecutive OPEN period (1 = the first since CLOSED),
    /// drawn for episode `episode`. Pure: the same inputs give the same length.
    pub fn open_ms(&self, streak: u32, episode: u64) -> u64 {
        let cap = self.max_timeout_ms.unwrap_or(MAX_OPEN_MS).min(MAX_OPEN_MS);
        let base = self.timeout_ms.min(cap) as f64;
        // powi takes i32; past ~1000 re-opens any factor > 1 is at the cap anyway.
        let exponent = streak.saturating_sub(1).min(1_000) as i32;
        let mut ms = base * self.backoff_factor.powi(exponent);
        if self.jitter_percent > 0.0 {
            let unit = unit_interval(self.seed, episode);
            ms *= 1.0 + self.jitter_percent / 100.0 * (2.0 * unit - 1.0);
        }
        // NaN or infinity (a huge factor) clamps to the cap; `as` saturates, it never wraps.
        // At least 1 ms, so OPEN always lasts (heavy jitter on a 1 ms timeout could round to 0).
        if ms.is_finite() {
            (ms.max(1.0) as u64).min(cap)
        } else {
            cap
        }
    }
}

/// A number in [0, 1) from `seed` and `episode` (SplitMix64): deterministic, no state to persist.
fn unit_interval(seed: u64, episode: u64) -> f64 {
    let mut z = seed ^ episode.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

impl Policy {
    /// The seed's policy: open after `failure_threshold` consecutive failures, stay OPEN for
    /// `timeout_ms`, then admit 3 trial calls and close after 2 succeed.
    pub fn consecutive(failure_threshold: u32, timeout_ms: u64) -> Self {
        Policy {
            trip: TripRule::ConsecutiveFailures {
                threshold: failure_threshold,
            },
            slow_calls: None,
            open: OpenPolicy::fixed(timeout_ms),
            half_open_requests: 3,
            success_threshold: 2,
            half_open_max_wait_ms: None,
            latency_budget_ms: None,
        }
    }

    /// Checks every knob; the error names the first bad one and its value.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match &self.trip {
            TripRule::ConsecutiveFailures { threshold } => at_least_one("failure_threshold", *threshold)?,
            TripRule::FailureCount {
                threshold,
                window_ms,
                buckets,
            } => {
                at_least_one("failure_threshold", *threshold)?;
                check_window(
                    "failure_window",
                    &SlidingWindow::Time {
                        window_ms: *window_ms,
                        buckets: *buckets,
                    },
                )?;
            }
            TripRule::FailureRate {
                threshold_percent,
                window,
                minimum_calls,
            } => {
                check_percent("failure_rate", *threshold_percent)?;
                check_window("window", window)?;
                check_minimum_calls(*minimum_calls, window)?;
            }
        }
        if let Some(slow) = &self.slow_calls {
            if slow.duration_ms == 0 {
                return Err(PolicyError::new("slow_call_duration", "0 ms", "must be at least 1 ms"));
            }
            check_percent("slow_call_rate", slow.threshold_percent)?;
            check_window("window", &slow.window)?;
            check_minimum_calls(slow.minimum_calls, &slow.window)?;
        }
        let open = &self.open;
        if open.timeout_ms == 0 {
            return Err(PolicyError::new("timeout", "0 ms", "must be at least 1 ms"));
        }
        if !(open.backoff_factor.is_finite() && open.backoff_factor >= 1.0) {
            return Err(PolicyError::new(
                "backoff_factor",
                open.backoff_factor,
                "must be a finite number of at least 1.0 (1.0 = no backoff)",
            ));
        }
        if let Some(max) = open.max_timeout_ms
            && max < open.timeout_ms
        {
            return Err(PolicyError::new(
                "max_timeout",
                format!("{max} ms"),
                "must be at least the timeout",
            ));
        }
        if !(open.jitter_percent.is_finite() && (0.0..100.0).contains(&open.jitter_percent)) {
            return Err(PolicyError::new(
                "jitter",
                open.jitter_percent,
                "must be at least 0 and below 100",
            ));
        }
        if let Some(wait) = self.half_open_max_wait_ms
            && !(1..=MAX_OPEN_MS).contains(&wait)
        {
            return Err(PolicyError::new(
                "half_open_max_wait",
                format!("{wait} ms"),
                "must be at least 1 ms and at most 365 days (0 in the config turns the deadline off)",
            ));
        }
        if let Some(budget) = self.latency_budget_ms
            && !(1..=MAX_OPEN_MS).contains(&budget)
        {
            return Err(PolicyError::new(
                "latency_budget",
                format!("{budget} ms"),
                "must be at least 1 ms and at most 365 days",
            ));
        }
        at_least_one("half_open_requests", self.half_open_requests)?;
        at_least_one("success_threshold", self.success_threshold)?;
        if self.success_threshold > self.half_open_requests {
            return Err(PolicyError::new(
                "success_threshold",
                self.success_threshold,
                format!(
                    "must not exceed half_open_requests ({}): the breaker could never close",
                    self.half_open_requests
                ),
            ));
        }
        Ok(())
    }
}

fn at_least_one(field: &'static str, value: u32) -> Result<(), PolicyError> {
    if value == 0 {
        return Err(PolicyError::new(field, 0, "must be at least 1"));
    }
    Ok(())
}

fn check_percent(field: &'static str, value: f64) -> Result<(), PolicyError> {
    if !(value.is_finite() && value > 0.0 && value <= 100.0) {
        return Err(PolicyError::new(
            field,
            value,
            "must be a percentage above 0 and at most 100",
        ));
    }
    Ok(())
}

/// `field` names a time window's length key (`window` or `failure_window`); a count window's size
/// is `window_calls` and a bucket count `window_buckets`, as in the config file and the CLI.
fn check_window(field: &'static str, window: &SlidingWindow) -> Result<(), PolicyError> {
    match *window {
        SlidingWindow::Count { calls } => {
            if calls == 0 || calls > MAX_WINDOW_CALLS {
                return Err(PolicyError::new(
                    "window_calls",
                    format!("{calls} calls"),
                    format!("must hold 1 to {MAX_WINDOW_CALLS} calls"),
                ));
            }
        }
        SlidingWindow::Time { window_ms, buckets } => {
            if buckets == 0 || buckets > MAX_WINDOW_BUCKETS {
                return Err(PolicyError::new(
                    "window_buckets",
                    format!("{buckets} buckets"),
                    format!("must have 1 to {MAX_WINDOW_BUCKETS} buckets"),
                ));
            }
            if window_ms == 0 || window_ms % u64::from(buckets) != 0 {
                return Err(PolicyError::new(
                    field,
                    format!("{window_ms} ms in {buckets} buckets"),
                    "the window must be at least 1 ms and a whole multiple of its bucket count",
                ));
            }
        }
    }
    Ok(())
}

fn check_minimum_calls(minimum: u32, window: &SlidingWindow) -> Result<(), PolicyError> {
    at_least_one("minimum_calls", minimum)?;
    if let SlidingWindow::Count { calls } = *window
        && minimum > calls
    {
        return Err(PolicyError::new(
            "minimum_calls",
            minimum,
            format!("must not exceed the window's {calls} calls: the rule could never trip"),
        ));
    }
    Ok(())
}

/// A policy knob with a value that cannot work. Bad input from a user: show it and stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The knob, named as in the config file (and, with dashes, as the CLI flag).
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

impl PolicyError {
    fn new(field: &'static str, value: impl fmt::Display, problem: impl Into<String>) -> Self {
        PolicyError {
            field,
            value: value.to_string(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.problem)
    }
}

impl std::error::Error for PolicyError {}
