//! Delivery decisions: what to do after an attempt, when to try again, whether a sink may be
//! sent to now. Pure functions of their inputs; `now_ms` is an argument, so tests step a clock
//! by hand instead of sleeping.

use sha2::{Digest, Sha256};

/// How retries are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry waits about this long (default 1 s); each further one doubles it.
    pub base_ms: u64,
    /// Cap of the doubling (`alerts.max_backoff`, default 5 min). A `Retry-After` may ask for longer.
    pub max_backoff_ms: u64,
    /// A message not delivered this long after it was first due is abandoned (`alerts.give_up_after`).
    pub give_up_after_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 1_000,
            max_backoff_ms: 300_000,
            give_up_after_ms: 86_400_000,
        }
    }
}

/// How the sink answered one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// An HTTP status, with the `Retry-After` header if there was one.
    Status {
        /// The status code.
        code: u16,
        /// The raw `Retry-After` value: seconds, or an HTTP date.
        retry_after: Option<&'a str>,
    },
    /// No answer: connection refused or reset, DNS, timeout.
    Transport,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Transport error, 5xx or 429: try again at this instant (ms).
    Retry {
        /// When.
        at_ms: u64,
    },
    /// Another status (4xx, 3xx, 1xx): the sink refused the message; retrying cannot help.
    Reject,
    /// Retryable, but the next try would fall after `give_up_after`.
    GiveUp,
}

/// A number in [0, 1) from the message's identity and the attempt: spreads the retries of many
/// messages apart, yet is reproducible (the same inputs give the same schedule).
pub fn jitter(fingerprint: &str, sink: &str, attempt: u32) -> f64 {
    let d = Sha256::digest(format!("{fingerprint}\n{sink}\n{attempt}").as_bytes());
    let x = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The wait after failed attempt number `attempt` (1-based): capped exponential backoff with
/// "equal jitter" — half of `min(max, base · 2^(attempt−1))` for sure, the other half scaled by
/// `jitter` (in [0, 1)). Never 0, never above the cap.
pub fn backoff_ms(policy: &RetryPolicy, attempt: u32, jitter: f64) -> u64 {
    let exp = policy
        .base_ms
        .max(1)
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
        .min(policy.max_backoff_ms.max(1));
    let half = exp / 2;
    (half + ((exp - half) as f64 * jitter.clamp(0.0, 1.0)) as u64).clamp(1, exp)
}

/// The delay a `Retry-After` value asks for, in ms: delta-seconds (`"2"`) or an HTTP date
/// (`"Wed, 21 Oct 2026 07:28:00 GMT"`, counted from `now_ms`; a date in the past asks for 0).
/// `None` when the value is neither.
pub fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    let v = value.trim();
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()) {
        return Some(v.parse::<u64>().unwrap_or(u64::MAX / 1_000).saturating_mul(1_000));
    }
    // IMF-fixdate is RFC 2822 with "GMT"; chrono reads it (the obsolete RFC 850 and asctime
    // forms are not accepted: senders must not generate them).
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at_ms = u64::try_from(at.timestamp_millis()).ok()?;
    Some(at_ms.saturating_sub(now_ms))
}

/// Decides after attempt number `attempt` (1-based) of a message first due at `first_due_ms`,
/// answered at `now_ms`. Retryable answers wait the backoff, or longer if `Retry-After` says so
/// (a `Retry-After` is honoured for 429 and 5xx alike, as HTTP allows).
pub fn decide(
    policy: &RetryPolicy,
    answer: Answer<'_>,
    attempt: u32,
    first_due_ms: u64,
    now_ms: u64,
    jitter: f64,
) -> Verdict {
    let retry_after = match answer {
        Answer::Status { code: 200..=299, .. } => return Verdict::Delivered,
        Answer::Status {
            code: 429 | 500..=599,
            retry_after,
        } => retry_after.and_then(|v| retry_after_ms(v, now_ms)),
        Answer::Status { .. } => return Verdict::Reject,
        Answer::Transport => None,
    };
    let wait = backoff_ms(policy, attempt, jitter).max(retry_after.unwrap_or(0));
    let at_ms = now_ms.saturating_add(wait);
    if at_ms > first_due_ms.saturating_add(policy.give_up_after_ms) {
        Verdict::GiveUp
    } else {
        Verdict::Retry { at_ms }
    }
}

/// A per-sink rate limit (GCRA, the "virtual scheduling" form of a token bucket): `per_minute`
/// messages a minute on average, with bursts of up to `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    interval_ms: u64,
    tolerance_ms: u64,
    /// The theoretical arrival time of the next message.
    tat_ms: u64,
}

impl RateLimit {
    /// `per_minute` messages a minute (≥ 1), bursts of `burst` (≥ 1).
    pub fn new(per_minute: u32, burst: u32) -> RateLimit {
        let interval_ms = 60_000 / u64::from(per_minute.max(1));
        RateLimit {
            interval_ms,
            tolerance_ms: interval_ms * u64::from(burst.max(1) - 1),
            tat_ms: 0,
        }
    }

    /// Takes a slot at `now_ms` if there is one (`Ok`), else says when the next one frees up.
    pub fn acquire(&mut self, now_ms: u64) -> Result<(), u64> {
        let earliest = self.tat_ms.saturating_sub(self.tolerance_ms);
        if now_ms < earliest {
            return Err(earliest);
        }
        self.tat_ms = self.tat_ms.max(now_ms) + self.interval_ms;
        Ok(())
    }
}
