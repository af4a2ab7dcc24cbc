//! A reference model of the breaker, written from `docs/core.md` alone, and property tests that
//! drive it and the real [`Breaker`] with the same random inputs.
//!
//! The model is deliberately naive: it keeps every counted call since the last transition in a
//! `Vec` and recomputes each window from scratch, counts consecutive failures in a plain integer
//! and computes OPEN periods with the formula of the spec. It is a second, independent
//! implementation: where it and `Breaker` disagree, one of them breaks the spec.
//!
//! Properties (1,000 cases each, up to 200 steps per case):
//! - `model_agrees_with_breaker`: after every step, same decision (permit episode/admission/trial,
//!   or rejection state and `retry_after_ms`), state, episode, OPEN deadline, the same events in
//!   the same order (transitions with from/to/reason/at/episode/open-until — evidence is not
//!   compared —, recorded calls with latency/slow/stale, trial admissions), and the same
//!   `view(now)`: both windows slid to `now`, trial permits out, trial successes, failures in a row.
//! - `model_agrees_with_breaker_across_policy_changes`: the same with random `set_policy` calls
//!   (valid ones, and invalid ones that must be refused).
//! - `replay_law`: folding the emitted events into a fresh breaker gives an equal breaker, after
//!   every step (incrementally) and at checkpoints (from scratch), with policy changes.
//! - `codec_round_trips_every_event`, `codec_decode_never_panics` (random type names, versions
//!   and bytes) and `codec_decode_never_panics_on_damaged_events` (real payloads truncated or
//!   with bytes flipped).
//! - `time_running_backwards_never_panics`, `open_ms_formula`, and a few fixed cases.
//!
//! `same_shaped_trip_window_survives_a_change_of_rule_kind` pins the one disagreement this model
//! found between docs/core.md and the code (since fixed in the code).

use breakerbox::breaker::codec;
use breakerbox::breaker::{
    Breaker, Command, Decision, Event, MAX_OPEN_MS, OpenPolicy, Outcome, Permit, Policy, Reason, SlidingWindow,
    SlowCallRule, State, TripRule,
};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------------

/// A permit as the model hands it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelPermit {
    pub episode: u64,
    pub admitted_at_ms: u64,
    pub trial: bool,
}

/// The model's answer to `acquire`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelDecision {
    Permit(ModelPermit),
    Reject { state: State, retry_after_ms: Option<u64> },
}

/// A transition as the model reports it (everything but the evidence, whose content the spec
/// describes only loosely).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelTransition {
    pub at_ms: u64,
    pub from: State,
    pub to: State,
    pub episode: u64,
    pub reason: Reason,
    pub open_until_ms: Option<u64>,
}

/// Everything the model emits, in emission order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelEvent {
    Call {
        at_ms: u64,
        outcome: Outcome,
        latency_ms: u64,
        slow: bool,
        stale: bool,
    },
    Trial {
        at_ms: u64,
    },
    Transition(ModelTransition),
    PolicyApplied {
        at_ms: u64,
    },
}

impl ModelEvent {
    /// The model's view of a real event.
    pub fn of(event: &Event) -> ModelEvent {
        match event {
            Event::CallRecorded(c) => ModelEvent::Call {
                at_ms: c.at_ms,
                outcome: c.outcome,
                latency_ms: c.latency_ms,
                slow: c.slow,
                stale: c.stale,
            },
            Event::TrialAdmitted(t) => ModelEvent::Trial { at_ms: t.at_ms },
            Event::Transitioned(t) => ModelEvent::Transition(ModelTransition {
                at_ms: t.at_ms,
                from: t.from,
                to: t.to,
                episode: t.episode,
                reason: t.reason,
                open_until_ms: t.open_until_ms,
            }),
            Event::PolicyApplied(p) => ModelEvent::PolicyApplied { at_ms: p.at_ms },
        }
    }
}

/// One counted call: when it completed, whether it failed, whether it was slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CountedCall {
    at_ms: u64,
    failed: bool,
    slow: bool,
}

/// Calls, failures and slow calls in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

/// `x × 100 ≥ percent × calls`, in the spec's own words.
fn rate_reached(x: u64, calls: u64, percent: f64) -> bool {
    x as f64 * 100.0 >= percent * calls as f64
}

/// The OPEN period of docs/core.md:
/// `min(cap, timeout × factor^(streak − 1)) × (1 + jitter% / 100 × (2u − 1))`, clamped to `[1, cap]`.
/// Without jitter it is computed here; with jitter, the documented pure function is the source of
/// `u` (SplitMix64 over seed and episode), so it is called for that case only.
pub fn model_open_ms(open: &OpenPolicy, streak: u32, episode: u64) -> u64 {
    if open.jitter_percent > 0.0 {
        return open.open_ms(streak, episode);
    }
    let cap = open.max_timeout_ms.unwrap_or(MAX_OPEN_MS).min(MAX_OPEN_MS);
    let mut grown = open.timeout_ms as f64;
    for _ in 1..streak {
        grown *= open.backoff_factor;
    }
    let ms = grown.min(cap as f64) as u64;
    ms.clamp(1, cap)
}

/// The window a trip rule counts in, if any.
fn trip_window_of(trip: &TripRule) -> Option<SlidingWindow> {
    match *trip {
        TripRule::ConsecutiveFailures { .. } => None,
        TripRule::FailureCount { window_ms, buckets, .. } => Some(SlidingWindow::Time { window_ms, buckets }),
        TripRule::FailureRate { window, .. } => Some(window),
    }
}

/// docs/core.md: "A window of the same shape is kept", also when the trip rule changes kind (a
/// failure-count rule replaced by a failure-rate rule over the same time window keeps it).
const TRIP_WINDOW_SURVIVES_RULE_CHANGE: bool = true;

/// Where a window that saw `calls[since..len]` starts after re-shaping from `old` to `new`.
fn reshaped(old: SlidingWindow, new: SlidingWindow, since: usize, len: usize) -> usize {
    match (old, new) {
        _ if old == new => since,
        // A resized count window keeps its most recent calls: the old one held the last `a`.
        (SlidingWindow::Count { calls: a }, SlidingWindow::Count { .. }) => since.max(len.saturating_sub(a as usize)),
        // A change of kind or of bucket width starts empty. (The spec does not say what a time
        // window with the same bucket width but another bucket count does; empty is assumed.)
        _ => len,
    }
}

/// The breaker as docs/core.md describes it, with the most naive data structures available.
#[derive(Clone, Debug)]
pub struct Model {
    pub policy: Policy,
    pub state: State,
    pub episode: u64,
    /// Failures in a row (counted outcomes in CLOSED/DISABLED).
    pub consecutive: u64,
    /// Every counted call since the last transition, oldest first.
    calls: Vec<CountedCall>,
    /// The trip rule's window sees `calls[trip_since..]` (policy changes can empty a window).
    trip_since: usize,
    /// The slow-call rule's window sees `calls[slow_since..]`.
    slow_since: usize,
    /// End of the current OPEN period.
    pub open_until_ms: u64,
    /// OPEN periods since the last CLOSED/DISABLED.
    streak: u32,
    /// HALF_OPEN trial permits out (handed out, not given back by an ignored outcome).
    pub trials_out: u32,
    /// Successful HALF_OPEN trials this episode.
    pub trial_successes: u32,
    /// HALF_OPEN with trials out and undecided: when they must be decided by (docs/core.md:
    /// counted from the trial that found none out).
    pub trial_deadline_ms: Option<u64>,
}

impl Model {
    pub fn new(policy: Policy) -> Model {
        Model {
            policy,
            state: State::Closed,
            episode: 0,
            consecutive: 0,
            calls: Vec::new(),
            trip_since: 0,
            slow_since: 0,
            open_until_ms: 0,
            streak: 0,
            trials_out: 0,
            trial_successes: 0,
            trial_deadline_ms: None,
        }
    }

    /// The next instant a timer is due.
    pub fn deadline(&self) -> Option<u64> {
        match self.state {
            State::Open => Some(self.open_until_ms),
            State::HalfOpen => self.trial_deadline_ms,
            _ => None,
        }
    }

    /// No trial undecided any more: no deadline.
    fn decided(&mut self) {
        if self.trials_out == self.trial_successes {
            self.trial_deadline_ms = None;
        }
    }

    /// The calls in a window of shape `spec` at `now_ms`, seeing only `calls[since..]`.
    fn window(&self, spec: &SlidingWindow, since: usize, now_ms: u64) -> Tally {
        let visible = &self.calls[since..];
        let in_window: Vec<&CountedCall> = match *spec {
            SlidingWindow::Count { calls } => {
                let n = calls as usize;
                let skip = visible.len().saturating_sub(n);
                visible.iter().skip(skip).collect()
            }
            SlidingWindow::Time { window_ms, buckets } => {
                let width = window_ms / u64::from(buckets);
                let newest = now_ms / width;
                let oldest = newest.saturating_sub(u64::from(buckets) - 1);
                visible
                    .iter()
                    .filter(|c| {
                        // Time never runs backwards in these tests, so no call is newer than `now`.
                        let b = c.at_ms / width;
                        oldest <= b && b <= newest
                    })
                    .collect()
            }
        };
        Tally {
            calls: in_window.len() as u64,
            failures: in_window.iter().filter(|c| c.failed).count() as u64,
            slow: in_window.iter().filter(|c| c.slow).count() as u64,
        }
    }

    /// What the trip rule's and the slow-call rule's windows hold at `now_ms` (`None`: no window).
    pub fn windows(&self, now_ms: u64) -> (Option<Tally>, Option<Tally>) {
        (
            trip_window_of(&self.policy.trip).map(|w| self.window(&w, self.trip_since, now_ms)),
            self.policy
                .slow_calls
                .as_ref()
                .map(|r| self.window(&r.window, self.slow_since, now_ms)),
        )
    }

    /// The first rule that fires in CLOSED, if any: the trip rule, then the slow-call rule.
    fn tripped(&self, now_ms: u64) -> Option<Reason> {
        let trip = match &self.policy.trip {
            TripRule::ConsecutiveFailures { threshold } => {
                (self.consecutive >= u64::from(*threshold)).then_some(Reason::ConsecutiveFailures)
            }
            TripRule::FailureCount {
                threshold,
                window_ms,
                buckets,
            } => {
                let spec = SlidingWindow::Time {
                    window_ms: *window_ms,
                    buckets: *buckets,
                };
                (self.window(&spec, self.trip_since, now_ms).failures >= u64::from(*threshold))
                    .then_some(Reason::FailureCount)
            }
            TripRule::FailureRate {
                threshold_percent,
                window,
                minimum_calls,
            } => {
                let t = self.window(window, self.trip_since, now_ms);
                (t.calls >= u64::from(*minimum_calls) && rate_reached(t.failures, t.calls, *threshold_percent))
                    .then_some(Reason::FailureRate)
            }
        };
        trip.or_else(|| {
            let rule = self.policy.slow_calls.as_ref()?;
            let t = self.window(&rule.window, self.slow_since, now_ms);
            (t.calls >= u64::from(rule.minimum_calls) && rate_reached(t.slow, t.calls, rule.threshold_percent))
                .then_some(Reason::SlowCallRate)
        })
    }

    fn transition(&mut self, at_ms: u64, to: State, reason: Reason, out: &mut Vec<ModelEvent>) {
        let from = self.state;
        self.episode += 1;
        self.state = to;
        // Every transition empties the counts.
        self.consecutive = 0;
        self.calls.clear();
        self.trip_since = 0;
        self.slow_since = 0;
        self.trials_out = 0;
        self.trial_successes = 0;
        self.trial_deadline_ms = None;
        let mut open_until_ms = None;
        match to {
            State::Closed | State::Disabled => self.streak = 0,
            State::Open => {
                self.streak += 1;
                self.open_until_ms = at_ms + model_open_ms(&self.policy.open, self.streak, self.episode);
                open_until_ms = Some(self.open_until_ms);
            }
            State::HalfOpen | State::ForcedOpen => {}
        }
        out.push(ModelEvent::Transition(ModelTransition {
            at_ms,
            from,
            to,
            episode: self.episode,
            reason,
            open_until_ms,
        }));
    }

    /// OPEN → HALF_OPEN once the period is over, stamped at its end.
    fn run_timer(&mut self, now_ms: u64, out: &mut Vec<ModelEvent>) {
        loop {
            if self.state == State::Open && now_ms >= self.open_until_ms {
                self.transition(self.open_until_ms, State::HalfOpen, Reason::TimeoutElapsed, out);
            } else if self.state == State::HalfOpen
                && let Some(deadline) = self.trial_deadline_ms
                && now_ms >= deadline
            {
                self.transition(deadline, State::Open, Reason::TrialDeadline, out);
            } else {
                break;
            }
        }
    }

    pub fn acquire(&mut self, now_ms: u64, out: &mut Vec<ModelEvent>) -> ModelDecision {
        self.run_timer(now_ms, out);
        let permit = |trial| {
            ModelDecision::Permit(ModelPermit {
                episode: self.episode,
                admitted_at_ms: now_ms,
                trial,
            })
        };
        match self.state {
            State::Closed | State::Disabled => permit(false),
            State::Open => ModelDecision::Reject {
                state: State::Open,
                retry_after_ms: Some(self.open_until_ms - now_ms),
            },
            State::HalfOpen if self.trials_out < self.policy.half_open_requests => {
                let decision = permit(true);
                if self.trials_out == self.trial_successes {
                    self.trial_deadline_ms = self.policy.half_open_max_wait_ms.map(|w| now_ms + w);
                }
                self.trials_out += 1;
                out.push(ModelEvent::Trial { at_ms: now_ms });
                decision
            }
            State::HalfOpen | State::ForcedOpen => ModelDecision::Reject {
                state: self.state,
                retry_after_ms: None,
            },
        }
    }

    pub fn complete(&mut self, now_ms: u64, permit: ModelPermit, outcome: Outcome, out: &mut Vec<ModelEvent>) {
        if self.state == State::HalfOpen {
            self.run_timer(now_ms, out);
        }
        let latency_ms = now_ms.saturating_sub(permit.admitted_at_ms);
        let ignored = matches!(outcome, Outcome::Ignored | Outcome::Cancelled);
        let failed = matches!(outcome, Outcome::Failure | Outcome::Timeout);
        let slow = !ignored
            && self
                .policy
                .slow_calls
                .as_ref()
                .is_some_and(|r| latency_ms >= r.duration_ms);
        let stale = permit.episode != self.episode;
        out.push(ModelEvent::Call {
            at_ms: now_ms,
            outcome,
            latency_ms,
            slow,
            stale,
        });
        if stale {
            return;
        }
        match self.state {
            State::Closed | State::Disabled => {
                if ignored {
                    return;
                }
                self.calls.push(CountedCall {
                    at_ms: now_ms,
                    failed,
                    slow,
                });
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                if self.state == State::Closed
                    && let Some(reason) = self.tripped(now_ms)
                {
                    self.transition(now_ms, State::Open, reason, out);
                }
            }
            State::HalfOpen => {
                assert!(permit.trial, "model: a current HALF_OPEN permit is a trial");
                if ignored {
                    self.trials_out -= 1;
                    self.decided();
                } else if failed {
                    self.transition(now_ms, State::Open, Reason::TrialFailed, out);
                } else if slow {
                    self.transition(now_ms, State::Open, Reason::TrialSlow, out);
                } else {
                    self.trial_successes += 1;
                    self.decided();
                    if self.trial_successes >= self.policy.success_threshold {
                        self.transition(now_ms, State::Closed, Reason::TrialsSucceeded, out);
                    }
                }
            }
            State::Open | State::ForcedOpen => unreachable!("model: no permit is issued in {:?}", self.state),
        }
    }

    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<ModelEvent>) {
        self.run_timer(now_ms, out);
    }

    /// A new policy: state, consecutive count, trial permits and successes kept; each window kept
    /// if its shape is unchanged, its most recent calls kept if it is a resized count window,
    /// emptied otherwise; a running OPEN period keeps its end. Rules are re-checked on the next
    /// outcome. Validity is `Policy::validate`'s call: the model is only handed valid policies.
    pub fn set_policy(&mut self, now_ms: u64, policy: Policy, out: &mut Vec<ModelEvent>) {
        let len = self.calls.len();
        let old_trip = trip_window_of(&self.policy.trip);
        let new_trip = trip_window_of(&policy.trip);
        let same_rule = std::mem::discriminant(&self.policy.trip) == std::mem::discriminant(&policy.trip);
        self.trip_since = match (old_trip, new_trip) {
            (Some(old), Some(new)) if same_rule || TRIP_WINDOW_SURVIVES_RULE_CHANGE => {
                reshaped(old, new, self.trip_since, len)
            }
            _ => len,
        };
        let old_slow = self.policy.slow_calls.map(|r| r.window);
        let new_slow = policy.slow_calls.map(|r| r.window);
        self.slow_since = match (old_slow, new_slow) {
            (Some(old), Some(new)) => reshaped(old, new, self.slow_since, len),
            _ => len,
        };
        self.policy = policy;
        out.push(ModelEvent::PolicyApplied { at_ms: now_ms });
    }

    pub fn command(&mut self, now_ms: u64, command: Command, out: &mut Vec<ModelEvent>) {
        match command {
            Command::Reset => self.transition(now_ms, State::Closed, Reason::Reset, out),
            Command::ForceOpen if self.state != State::ForcedOpen => {
                self.transition(now_ms, State::ForcedOpen, Reason::ForceOpen, out)
            }
            Command::Disable if self.state != State::Disabled => {
                self.transition(now_ms, State::Disabled, Reason::Disable, out)
            }
            Command::ForceOpen | Command::Disable => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

fn percent() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => (1u32..=100).prop_map(f64::from),
        1 => Just(100.0 / 3.0),
        1 => Just(200.0 / 3.0),
        1 => Just(12.5),
        1 => Just(0.1),
        1 => Just(100.0),
    ]
}

fn time_window() -> impl Strategy<Value = SlidingWindow> {
    (1u32..=5, 1u64..=40).prop_map(|(buckets, width)| SlidingWindow::Time {
        window_ms: width * u64::from(buckets),
        buckets,
    })
}

fn sliding_window() -> impl Strategy<Value = SlidingWindow> {
    prop_oneof![
        (1u32..=10).prop_map(|calls| SlidingWindow::Count { calls }),
        time_window(),
    ]
}

/// A window and a valid `minimum_calls` for it.
fn window_and_minimum() -> impl Strategy<Value = (SlidingWindow, u32)> {
    sliding_window().prop_flat_map(|w| {
        let max = match w {
            SlidingWindow::Count { calls } => calls,
            SlidingWindow::Time { .. } => 6,
        };
        (Just(w), 1u32..=max)
    })
}

fn trip_rule() -> impl Strategy<Value = TripRule> {
    prop_oneof![
        (1u32..=5).prop_map(|threshold| TripRule::ConsecutiveFailures { threshold }),
        (1u32..=5, time_window()).prop_map(|(threshold, w)| {
            let SlidingWindow::Time { window_ms, buckets } = w else {
                unreachable!()
            };
            TripRule::FailureCount {
                threshold,
                window_ms,
                buckets,
            }
        }),
        (percent(), window_and_minimum()).prop_map(|(threshold_percent, (window, minimum_calls))| {
            TripRule::FailureRate {
                threshold_percent,
                window,
                minimum_calls,
            }
        }),
    ]
}

fn slow_rule() -> impl Strategy<Value = SlowCallRule> {
    (1u64..=60, percent(), window_and_minimum()).prop_map(
        |(duration_ms, threshold_percent, (window, minimum_calls))| SlowCallRule {
            duration_ms,
            threshold_percent,
            window,
            minimum_calls,
        },
    )
}

fn open_policy() -> impl Strategy<Value = OpenPolicy> {
    prop_oneof![
        // Fixed periods: most policies.
        6 => (1u64..=300).prop_map(OpenPolicy::fixed),
        // Exponential backoff, optionally capped, no jitter.
        2 => (1u64..=100, prop_oneof![Just(1.5), Just(2.0), Just(3.0)], proptest::option::of(0u64..=400)).prop_map(
            |(timeout_ms, backoff_factor, extra)| OpenPolicy {
                timeout_ms,
                backoff_factor,
                max_timeout_ms: extra.map(|e| timeout_ms + e),
                jitter_percent: 0.0,
                seed: 0,
            }
        ),
        // Jitter (and backoff): `u` comes from the documented pure `OpenPolicy::open_ms`.
        1 => (1u64..=200, 1.0f64..3.0, proptest::option::of(0u64..=400), 0.0f64..99.0, any::<u64>()).prop_map(
            |(timeout_ms, backoff_factor, extra, jitter_percent, seed)| OpenPolicy {
                timeout_ms,
                backoff_factor,
                max_timeout_ms: extra.map(|e| timeout_ms + e),
                jitter_percent,
                seed,
            }
        ),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        trip_rule(),
        proptest::option::weighted(0.4, slow_rule()),
        open_policy(),
        (1u32..=4).prop_flat_map(|h| (Just(h), 1u32..=h)),
        proptest::option::weighted(0.5, 1u64..=300),
    )
        .prop_map(
            |(trip, slow_calls, open, (half_open_requests, success_threshold), half_open_max_wait_ms)| Policy {
                trip,
                slow_calls,
                open,
                half_open_requests,
                success_threshold,
                half_open_max_wait_ms,
                latency_budget_ms: None,
            },
        )
}

/// A policy `validate` must refuse (for `set_policy`: refused, nothing emitted, nothing changed).
fn invalid_policy() -> impl Strategy<Value = Policy> {
    (policy(), 0u32..4).prop_map(|(mut p, which)| {
        match which {
            0 => p.success_threshold = p.half_open_requests + 1,
            1 => p.open.timeout_ms = 0,
            2 => p.half_open_max_wait_ms = Some(0),
            _ => p.half_open_requests = 0,
        }
        p
    })
}

#[derive(Clone, Debug)]
enum Step {
    /// Try to start a call `dt` ms after the previous step.
    Acquire { dt: u64 },
    /// Complete one of the calls in flight (any episode: older ones are stale).
    Complete { dt: u64, which: usize, outcome: Outcome },
    /// Let timers run.
    Tick { dt: u64 },
    /// An operator command.
    Command { dt: u64, command: Command },
    /// A new policy (only in `steps(true)`); may be invalid.
    SetPolicy { dt: u64, policy: Box<Policy> },
}

fn dt() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..=5, 3 => 0u64..=30, 1 => 0u64..=400]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Success),
        3 => Just(Outcome::Failure),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Ignored),
        1 => Just(Outcome::Cancelled),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![3 => Just(Command::Reset), 1 => Just(Command::ForceOpen), 1 => Just(Command::Disable)]
}

fn step(with_policy_changes: bool) -> BoxedStrategy<Step> {
    let base = prop_oneof![
        20 => dt().prop_map(|dt| Step::Acquire { dt }),
        20 => (dt(), any::<usize>(), outcome()).prop_map(|(dt, which, outcome)| Step::Complete { dt, which, outcome }),
        6 => dt().prop_map(|dt| Step::Tick { dt }),
        1 => (dt(), command()).prop_map(|(dt, command)| Step::Command { dt, command }),
    ];
    if with_policy_changes {
        prop_oneof![
            30 => base,
            1 => (dt(), prop_oneof![4 => policy(), 1 => invalid_policy()])
                .prop_map(|(dt, policy)| Step::SetPolicy { dt, policy: Box::new(policy) }),
        ]
        .boxed()
    } else {
        base.boxed()
    }
}

fn steps(with_policy_changes: bool) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(with_policy_changes), 0..=200)
}

/// Where the clock starts: anywhere, so bucket boundaries fall everywhere.
fn start() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..100_000, Just(1_700_000_000_000u64)]
}

// ---------------------------------------------------------------------------------------------
// Drivers
// ---------------------------------------------------------------------------------------------

fn dt_of(step: &Step) -> u64 {
    match step {
        Step::Acquire { dt }
        | Step::Complete { dt, .. }
        | Step::Tick { dt }
        | Step::Command { dt, .. }
        | Step::SetPolicy { dt, .. } => *dt,
    }
}

fn same_decision(real: &Decision, model: &ModelDecision) -> bool {
    match (real, model) {
        (Decision::Permit(p), ModelDecision::Permit(m)) => {
            p.episode == m.episode && p.admitted_at_ms == m.admitted_at_ms && p.trial == m.trial
        }
        (Decision::Reject(r), ModelDecision::Reject { state, retry_after_ms }) => {
            r.state == *state && r.retry_after_ms == *retry_after_ms
        }
        _ => false,
    }
}

/// Drives the real breaker and the model with the same inputs, comparing after every step.
fn check_against_model(policy: Policy, start_ms: u64, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut real = Breaker::new(policy.clone()).map_err(|e| TestCaseError::fail(format!("invalid policy: {e}")))?;
    let mut model = Model::new(policy);
    let mut now = start_ms;
    let mut in_flight: Vec<(Permit, ModelPermit)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        now += dt_of(step);
        let mut real_events = Vec::new();
        let mut model_events = Vec::new();
        match step {
            Step::Acquire { .. } => {
                let r = real.acquire(now, &mut real_events);
                let m = model.acquire(now, &mut model_events);
                prop_assert!(
                    same_decision(&r, &m),
                    "step {i} at {now}: acquire decided {r:?}, the model {m:?}"
                );
                if let (Decision::Permit(r), ModelDecision::Permit(m)) = (r, m) {
                    in_flight.push((r, m));
                }
            }
            Step::Complete { which, outcome, .. } => {
                if in_flight.is_empty() {
                    real.tick(now, &mut real_events);
                    model.tick(now, &mut model_events);
                } else {
                    let (r, m) = in_flight.remove(which % in_flight.len());
                    real.complete(now, r, *outcome, &mut real_events);
                    model.complete(now, m, *outcome, &mut model_events);
                }
            }
            Step::Tick { .. } => {
                real.tick(now, &mut real_events);
                model.tick(now, &mut model_events);
            }
            Step::Command { command, .. } => {
                real.command(now, *command, &mut real_events);
                model.command(now, *command, &mut model_events);
            }
            Step::SetPolicy { policy: new, .. } => {
                if new.validate().is_ok() {
                    prop_assert!(real.set_policy(now, (**new).clone(), &mut real_events).is_ok());
                    model.set_policy(now, (**new).clone(), &mut model_events);
                } else {
                    prop_assert!(real.set_policy(now, (**new).clone(), &mut real_events).is_err());
                }
            }
        }
        let real_events: Vec<ModelEvent> = real_events.iter().map(ModelEvent::of).collect();
        prop_assert_eq!(&real_events, &model_events, "step {} at {}: {:?}", i, now, step);
        prop_assert_eq!(real.state(), model.state, "step {} at {}: state", i, now);
        prop_assert_eq!(real.episode(), model.episode, "step {} at {}: episode", i, now);
        let model_deadline = model.deadline();
        prop_assert_eq!(
            real.next_deadline_ms(),
            model_deadline,
            "step {} at {}: deadline",
            i,
            now
        );
        // What status shows: the windows as they slide to `now`, and the HALF_OPEN counters.
        let view = real.view(now);
        let tally = |c: breakerbox::breaker::Counts| Tally {
            calls: c.calls,
            failures: c.failures,
            slow: c.slow,
        };
        let (trip_window, slow_window) = model.windows(now);
        prop_assert_eq!(
            view.window.map(tally),
            trip_window,
            "step {} at {}: trip window",
            i,
            now
        );
        prop_assert_eq!(
            view.slow_window.map(tally),
            slow_window,
            "step {} at {}: slow window",
            i,
            now
        );
        prop_assert_eq!(
            view.trials_issued,
            model.trials_out,
            "step {} at {}: trials out",
            i,
            now
        );
        prop_assert_eq!(
            view.trial_successes,
            model.trial_successes,
            "step {} at {}: trial successes",
            i,
            now
        );
        prop_assert_eq!(
            u64::from(view.consecutive_failures),
            model.consecutive,
            "step {} at {}: in a row",
            i,
            now
        );
    }
    Ok(())
}

/// Drives the real breaker alone; returns every event, and checks the replay law on the way:
/// after every step an incrementally folded replica must equal the live breaker, and at every
/// `checkpoint`-th step (and at the end) so must a fold of the whole log from scratch.
/// `rewinds[i]` (if present) moves the clock back before step `i`: time running backwards.
fn run_checking_replay(
    policy: Policy,
    start_ms: u64,
    steps: &[Step],
    checkpoint: usize,
    rewinds: &[u64],
) -> Result<Vec<Event>, TestCaseError> {
    let mut live = Breaker::new(policy.clone()).map_err(|e| TestCaseError::fail(format!("invalid policy: {e}")))?;
    let mut replica = Breaker::new(policy.clone()).unwrap();
    let mut log: Vec<Event> = Vec::new();
    let mut now = start_ms;
    let mut in_flight: Vec<Permit> = Vec::new();
    let fold_from_scratch = |log: &[Event]| {
        let mut b = Breaker::new(policy.clone()).unwrap();
        for e in log {
            b.apply(e);
        }
        b
    };
    for (i, step) in steps.iter().enumerate() {
        now = now.saturating_sub(rewinds.get(i).copied().unwrap_or(0)) + dt_of(step);
        let mut out = Vec::new();
        match step {
            Step::Acquire { .. } => {
                if let Decision::Permit(p) = live.acquire(now, &mut out) {
                    in_flight.push(p);
                }
            }
            Step::Complete { which, outcome, .. } => {
                if in_flight.is_empty() {
                    live.tick(now, &mut out);
                } else {
                    let p = in_flight.remove(which % in_flight.len());
                    live.complete(now, p, *outcome, &mut out);
                }
            }
            Step::Tick { .. } => live.tick(now, &mut out),
            Step::Command { command, .. } => live.command(now, *command, &mut out),
            Step::SetPolicy { policy: new, .. } => {
                let before = live.clone();
                let valid = new.validate().is_ok();
                let result = live.set_policy(now, (**new).clone(), &mut out);
                prop_assert_eq!(result.is_ok(), valid, "step {}: set_policy result vs validate", i);
                if valid {
                    prop_assert_eq!(live.policy(), &**new, "step {}: policy not in force", i);
                    prop_assert_eq!(live.state(), before.state(), "step {}: set_policy changed the state", i);
                    prop_assert!(
                        matches!(out.as_slice(), [Event::PolicyApplied(p)] if p.at_ms == now && p.policy == **new),
                        "step {i}: set_policy emitted {out:?}"
                    );
                } else {
                    prop_assert!(out.is_empty(), "step {i}: a refused policy emitted {out:?}");
                    prop_assert!(live == before, "step {i}: a refused policy changed the breaker");
                }
            }
        }
        for e in &out {
            replica.apply(e);
        }
        log.extend(out);
        prop_assert!(
            replica == live,
            "step {i} at {now}: incremental fold differs from the live breaker"
        );
        if i % checkpoint == 0 || i + 1 == steps.len() {
            prop_assert!(
                fold_from_scratch(&log) == live,
                "step {i} at {now}: fold of the whole log differs from the live breaker"
            );
        }
    }
    Ok(log)
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn model_agrees_with_breaker(policy in policy(), start_ms in start(), steps in steps(false)) {
        check_against_model(policy, start_ms, &steps)?;
    }

    #[test]
    fn model_agrees_with_breaker_across_policy_changes(
        policy in policy(),
        start_ms in start(),
        steps in steps(true),
    ) {
        check_against_model(policy, start_ms, &steps)?;
    }

    #[test]
    fn replay_law(policy in policy(), start_ms in start(), steps in steps(true), checkpoint in 5usize..40) {
        run_checking_replay(policy, start_ms, &steps, checkpoint, &[])?;
    }

    #[test]
    fn codec_round_trips_every_event(policy in policy(), start_ms in start(), steps in steps(true)) {
        let log = run_checking_replay(policy, start_ms, &steps, usize::MAX, &[])?;
        for event in &log {
            let encoded = codec::encode(event);
            prop_assert_eq!(encoded.event_version, codec::EVENT_VERSION);
            let decoded = codec::decode(encoded.event_type, encoded.event_version, &encoded.payload);
            prop_assert!(
                matches!(&decoded, Ok(d) if d == event),
                "{event:?} encoded as {encoded:?} decoded as {decoded:?}"
            );
        }
    }

    #[test]
    fn codec_decode_never_panics(
        event_type in prop_oneof![
            Just("call_recorded".to_owned()),
            Just("trial_admitted".to_owned()),
            Just("transition".to_owned()),
            Just("policy_applied".to_owned()),
            "[a-z_]{0,16}",
            ".{0,8}",
        ],
        event_version in prop_oneof![4 => Just(1u32), 1 => any::<u32>()],
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let _ = codec::decode(&event_type, event_version, &payload);
    }

    /// Valid payloads cut short or with bytes flipped: the likeliest corruption, and the bytes
    /// most likely to get deep into a decoder.
    #[test]
    fn codec_decode_never_panics_on_damaged_events(
        policy in policy(),
        steps in steps(true),
        pick in any::<Index>(),
        cut in any::<Index>(),
        flips in proptest::collection::vec((any::<Index>(), any::<u8>()), 0..4),
    ) {
        let log = run_checking_replay(policy, 0, &steps, usize::MAX, &[])?;
        if !log.is_empty() {
            let encoded = codec::encode(&log[pick.index(log.len())]);
            let mut bytes = encoded.payload.clone();
            for (at, xor) in &flips {
                let i = at.index(bytes.len());
                bytes[i] ^= xor;
            }
            let _ = codec::decode(encoded.event_type, 1, &bytes);
            let _ = codec::decode(encoded.event_type, 1, &bytes[..cut.index(bytes.len() + 1)]);
        }
    }

    /// docs/core.md, "Time": if the driver's clock runs backwards nothing panics (and the replay
    /// law still holds; a call recorded before its admission has latency 0).
    #[test]
    fn time_running_backwards_never_panics(
        policy in policy(),
        steps in steps(true),
        rewinds in proptest::collection::vec(prop_oneof![3 => Just(0u64), 1 => 0u64..500], 0..=200),
    ) {
        let log = run_checking_replay(policy, 1_000, &steps, 10, &rewinds)?;
        for event in &log {
            if let Event::CallRecorded(call) = event {
                prop_assert!(call.latency_ms <= call.at_ms, "{:?}", call);
            }
        }
    }

    /// The model's own OPEN formula (no jitter) agrees with the documented pure function.
    #[test]
    fn open_ms_formula(
        open in open_policy().prop_map(|o| OpenPolicy { jitter_percent: 0.0, ..o }),
        streak in 1u32..12,
        episode in 0u64..1000,
    ) {
        prop_assert_eq!(model_open_ms(&open, streak, episode), open.open_ms(streak, episode));
    }
}

// ---------------------------------------------------------------------------------------------
// A few fixed cases, so a broken model shows up as a broken model and not as a "disagreement"
// ---------------------------------------------------------------------------------------------

#[test]
fn model_follows_the_doc_example() {
    let mut model = Model::new(Policy::consecutive(3, 30_000));
    let mut out = Vec::new();
    for t in 0..3 {
        let ModelDecision::Permit(p) = model.acquire(t, &mut out) else {
            panic!("closed rejects")
        };
        model.complete(t, p, Outcome::Failure, &mut out);
    }
    assert_eq!(model.state, State::Open);
    assert_eq!(model.open_until_ms, 30_002);
    assert!(matches!(
        model.acquire(30_001, &mut out),
        ModelDecision::Reject {
            state: State::Open,
            retry_after_ms: Some(1)
        }
    ));
    assert!(matches!(model.acquire(30_002, &mut out), ModelDecision::Permit(p) if p.trial));
    assert_eq!(model.state, State::HalfOpen);
}

#[test]
fn model_time_window_covers_its_buckets() {
    // 100 ms in 4 buckets of 25 ms: at 199 (bucket 7) the window is buckets 4..=7, i.e. 100..=199.
    let policy = Policy {
        trip: TripRule::FailureCount {
            threshold: 2,
            window_ms: 100,
            buckets: 4,
        },
        ..Policy::consecutive(1, 10)
    };
    let mut model = Model::new(policy);
    let mut out = Vec::new();
    for (t, outcome) in [(99, Outcome::Failure), (199, Outcome::Failure)] {
        let ModelDecision::Permit(p) = model.acquire(t, &mut out) else {
            panic!("closed rejects")
        };
        model.complete(t, p, outcome, &mut out);
    }
    assert_eq!(model.state, State::Closed, "the failure at 99 fell out of the window");
    let ModelDecision::Permit(p) = model.acquire(200, &mut out) else {
        panic!("closed rejects")
    };
    model.complete(200, p, Outcome::Failure, &mut out);
    assert_eq!(model.state, State::Open);
}

#[test]
fn the_same_replay_law_with_a_fixed_seed() {
    // A longer fixed run with backoff and jitter, checked against the model too.
    let policy = Policy {
        open: OpenPolicy {
            timeout_ms: 7,
            backoff_factor: 2.0,
            max_timeout_ms: Some(100),
            jitter_percent: 30.0,
            seed: 42,
        },
        ..Policy::consecutive(2, 10)
    };
    let steps: Vec<Step> = (0..400u64)
        .map(|i| match i % 5 {
            0 | 2 => Step::Acquire { dt: i % 7 },
            1 | 3 => Step::Complete {
                dt: i % 3,
                which: i as usize * 7919,
                outcome: if i % 4 == 1 { Outcome::Success } else { Outcome::Failure },
            },
            _ => Step::Tick { dt: 5 },
        })
        .collect();
    check_against_model(policy.clone(), 0, &steps).unwrap();
    run_checking_replay(policy, 0, &steps, 17, &[]).unwrap();
}

/// docs/core.md, "Policy changes": "A window of the same shape is kept" — even when the trip rule
/// changes kind: a failure-rate rule replaced by a failure-count rule over the very same time
/// window keeps its calls. (The first implementation emptied it; this model found that.)
#[test]
fn same_shaped_trip_window_survives_a_change_of_rule_kind() {
    let window = SlidingWindow::Time {
        window_ms: 100,
        buckets: 1,
    };
    let rate = Policy {
        trip: TripRule::FailureRate {
            threshold_percent: 60.0,
            window,
            minimum_calls: 1,
        },
        ..Policy::consecutive(10, 50)
    };
    let count = Policy {
        trip: TripRule::FailureCount {
            threshold: 2,
            window_ms: 100,
            buckets: 1,
        },
        ..Policy::consecutive(10, 50)
    };
    let mut breaker = Breaker::new(rate).unwrap();
    let mut out = Vec::new();
    for (t, outcome) in [(1, Outcome::Success), (2, Outcome::Failure)] {
        let Decision::Permit(p) = breaker.acquire(t, &mut out) else {
            panic!("closed rejects")
        };
        breaker.complete(t, p, outcome, &mut out);
    }
    assert_eq!(breaker.state(), State::Closed, "1 failure in 2 calls is 50% < 60%");
    breaker.set_policy(3, count, &mut out).unwrap();
    let Decision::Permit(p) = breaker.acquire(4, &mut out) else {
        panic!("closed rejects")
    };
    breaker.complete(4, p, Outcome::Failure, &mut out);
    // The same 100 ms window now holds the failures at 2 and 4: the threshold of 2 is reached.
    assert_eq!(breaker.state(), State::Open, "events: {out:#?}");
}
