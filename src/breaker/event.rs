//! What a breaker emits. Events are facts: the breaker's state is exactly the fold of its events.

use super::policy::Policy;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The states of a breaker. Names (`closed`, `open`, `half_open`, `forced_open`, `disabled`) are
/// the same everywhere: events, `simulate` output, the HTTP API and metrics labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Calls flow; outcomes are counted against the trip rule.
    Closed,
    /// Calls are rejected until the OPEN period ends.
    Open,
    /// A few trial calls are let through to decide between CLOSED and OPEN.
    HalfOpen,
    /// An operator opened it: everything is rejected until an operator resets it.
    ForcedOpen,
    /// An operator disabled it: everything is permitted, outcomes are recorded, it never trips.
    Disabled,
}

impl State {
    /// Every state, in a fixed order (for metrics with one series per state).
    pub const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// The state's name as written in events, output and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a protected call ended, as the caller's classifier saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// It worked. (Slow is decided by the policy from the latency.)
    Success,
    /// It failed.
    Failure,
    /// It took longer than the call timeout: a failure.
    Timeout,
    /// Counts as neither (e.g. a 404 that is the caller's fault); returns a HALF_OPEN trial permit.
    Ignored,
    /// The caller gave up before the call ended (its future was dropped, or it panicked): counts
    /// as neither success nor failure and returns a HALF_OPEN trial permit at once. A call
    /// abandoned after its call timeout is a [`Outcome::Timeout`] instead.
    Cancelled,
}

impl Outcome {
    /// Failures and timeouts.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure | Outcome::Timeout)
    }

    /// The outcome's name as written in events and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Timeout => "timeout",
            Outcome::Ignored => "ignored",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Counted by the trip rules and trials (success, failure, timeout); ignored and cancelled
    /// calls are recorded but count nowhere, and give a trial permit back.
    pub fn counts(self) -> bool {
        !matches!(self, Outcome::Ignored | Outcome::Cancelled)
    }
}

/// An operator's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Back to CLOSED with empty counts, from any state.
    Reset,
    /// To FORCED_OPEN: reject everything until reset.
    ForceOpen,
    /// To DISABLED: permit everything, never trip, until reset.
    Disable,
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// CLOSED → OPEN: `failure_threshold` failures in a row.
    ConsecutiveFailures,
    /// CLOSED → OPEN: `failure_threshold` failures within the time window.
    FailureCount,
    /// CLOSED → OPEN: the failure rate reached its threshold.
    FailureRate,
    /// CLOSED → OPEN: the slow-call rate reached its threshold.
    SlowCallRate,
    /// OPEN → HALF_OPEN: the OPEN period elapsed.
    TimeoutElapsed,
    /// HALF_OPEN → OPEN: a trial call failed.
    TrialFailed,
    /// HALF_OPEN → OPEN: a trial call was slow (only with a slow-call rule).
    TrialSlow,
    /// HALF_OPEN → OPEN: trials were still out, undecided, when `half_open_max_wait` ran out.
    TrialDeadline,
    /// HALF_OPEN → CLOSED: `success_threshold` trial calls succeeded.
    TrialsSucceeded,
    /// Operator reset.
    Reset,
    /// Operator force-open.
    ForceOpen,
    /// Operator disable.
    Disable,
    /// CLOSED → OPEN: enough other nodes of the fleet opened this breaker by their own trip
    /// rules recently (a quorum hint, `docs/fleet.md`); the evidence names them.
    FleetQuorum,
}

impl Reason {
    /// The reason's name as written in events and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ConsecutiveFailures => "consecutive_failures",
            Reason::FailureCount => "failure_count",
            Reason::FailureRate => "failure_rate",
            Reason::SlowCallRate => "slow_call_rate",
            Reason::TimeoutElapsed => "timeout_elapsed",
            Reason::TrialFailed => "trial_failed",
            Reason::TrialSlow => "trial_slow",
            Reason::TrialDeadline => "trial_deadline",
            Reason::TrialsSucceeded => "trials_succeeded",
            Reason::Reset => "reset",
            Reason::ForceOpen => "force_open",
            Reason::Disable => "disable",
            Reason::FleetQuorum => "fleet_quorum",
        }
    }
}

/// The numbers behind a transition: what the rule saw when it fired. Only the fields that the
/// reason uses are set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Calls in the window (rate rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    /// Failures counted (in a row, or in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    /// Slow calls in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_calls: Option<u64>,
    /// Successful trials (HALF_OPEN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successes: Option<u64>,
    /// The threshold that was reached: a count, or a percentage for rate rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// The rate observed, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_percent: Option<f64>,
    /// The time window, for time-based windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The count window's size, for count-based windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_calls: Option<u32>,
    /// How long the OPEN period lasted (OPEN → HALF_OPEN) or will last (→ OPEN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_ms: Option<u64>,
    /// Latency of the call that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Outcome of the call that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// A quorum hint's evidence: the nodes that opened the breaker by their own trip rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<QuorumEvidence>,
}

/// What a quorum hint saw: which other nodes of the fleet opened the breaker by their own trip
/// rules within the window, out of how many live ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumEvidence {
    /// The nodes, by name.
    pub nodes: Vec<String>,
    /// Live nodes reporting the breaker (this one included).
    pub live: u32,
    /// The window their openings fell in.
    pub within_ms: u64,
}

impl Evidence {
    /// The fields set, as `key=value` pairs (values as JSON), for people: audit lines, alerts.
    pub fn text(&self) -> String {
        let e = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let pairs: Vec<String> = e
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
            .unwrap_or_default();
        pairs.join(" ")
    }
}

/// A change of state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// When it happened. OPEN → HALF_OPEN is stamped at the instant the OPEN period ends.
    pub at_ms: u64,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// The episode this transition starts (episodes count transitions; permits of earlier
    /// episodes no longer count).
    pub episode: u64,
    /// Why.
    pub reason: Reason,
    /// The numbers behind the why.
    #[serde(default)]
    pub evidence: Evidence,
    /// End of the OPEN period, when `to` is OPEN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_until_ms: Option<u64>,
}

/// A call's outcome, recorded whether or not it still counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecorded {
    /// When the call completed.
    pub at_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Completion time minus admission time.
    pub latency_ms: u64,
    /// At or above the slow-call duration (only with a slow-call rule).
    #[serde(default)]
    pub slow: bool,
    /// Admitted in an earlier episode: recorded for metrics, counted nowhere.
    #[serde(default)]
    pub stale: bool,
}

/// A HALF_OPEN trial permit was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialAdmitted {
    /// When.
    pub at_ms: u64,
}

/// A new policy took effect (state and windows kept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyApplied {
    /// When.
    pub at_ms: u64,
    /// The policy now in force.
    pub policy: Policy,
}

/// Everything a breaker emits. The rare, large events are boxed so the per-call one stays small
/// (24 bytes instead of 200): it is pushed on every call.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A call completed.
    CallRecorded(CallRecorded),
    /// A HALF_OPEN trial permit was handed out.
    TrialAdmitted(TrialAdmitted),
    /// The state changed.
    Transitioned(Box<Transition>),
    /// A new policy took effect.
    PolicyApplied(Box<PolicyApplied>),
}

impl Event {
    /// When the event happened.
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::CallRecorded(e) => e.at_ms,
            Event::TrialAdmitted(e) => e.at_ms,
            Event::Transitioned(e) => e.at_ms,
            Event::PolicyApplied(e) => e.at_ms,
        }
    }
}
