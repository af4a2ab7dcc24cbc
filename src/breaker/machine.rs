//! The state machine. Every change of state goes through [`Breaker::apply`]: the drivers
//! (`acquire`, `complete`, `tick`, `command`, `set_policy`) only decide which events happen, emit
//! them and apply them. Folding a breaker's events into a new breaker therefore gives back the same
//! state, bit for bit (the replay law), and nothing here reads a clock or does I/O.

use super::event::{
    CallRecorded, Command, Event, Evidence, Outcome, PolicyApplied, QuorumEvidence, Reason, State, Transition,
    TrialAdmitted,
};
use super::policy::{Policy, PolicyError, SlidingWindow, TripRule};
use super::window::{Counts, Window};
use serde::{Deserialize, Serialize};

/// Permission to run one call, handed out by [`Breaker::acquire`] and given back to
/// [`Breaker::complete`] with the call's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permit {
    /// The episode the call was admitted in; outcomes of earlier episodes never count.
    pub episode: u64,
    /// When it was admitted; latency is measured from here.
    pub admitted_at_ms: u64,
    /// A HALF_OPEN trial call.
    pub trial: bool,
}

/// Why a call was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The state that rejected it: `open`, `half_open` (all trial permits out) or `forced_open`.
    pub state: State,
    /// Time left until the breaker will let calls try again: the rest of the OPEN period. `None`
    /// when unknown: forced open, or HALF_OPEN waiting for its trials.
    pub retry_after_ms: Option<u64>,
}

/// What the breaker lets callers do right now, as plain data: the one admission rule, read by
/// [`Breaker::acquire`] and by the runtime's lock-free gate alike (which publishes this view and
/// counts trial permits itself), so the hot path never re-implements a rule of the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionView {
    /// The state.
    pub state: State,
    /// The current episode.
    pub episode: u64,
    /// The episode trial permits belong to: this one when HALF_OPEN; when OPEN, the HALF_OPEN
    /// episode that the end of the OPEN period starts.
    pub trial_episode: u64,
    /// End of the OPEN period (0 unless OPEN).
    pub open_until_ms: u64,
    /// HALF_OPEN: no trial is admitted at or after this instant (`u64::MAX`: none running).
    pub trial_deadline_ms: u64,
    /// Trial permits per HALF_OPEN episode.
    pub half_open_requests: u32,
}

/// What [`AdmissionView::decide`] says about one call attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run it: not a trial.
    Permit {
        /// The episode it is admitted in.
        episode: u64,
    },
    /// Run it as a trial of `episode` if one of the episode's `half_open_requests` permits is
    /// left; otherwise reject it as [`AdmissionView::trials_exhausted`] says.
    Trial {
        /// The HALF_OPEN episode the permit belongs to.
        episode: u64,
    },
    /// Don't run it.
    Reject(Rejection),
}

impl AdmissionView {
    /// The verdict for a call attempted at `now_ms`.
    #[inline]
    pub fn decide(&self, now_ms: u64) -> Verdict {
        match self.state {
            State::Closed | State::Disabled => Verdict::Permit { episode: self.episode },
            State::Open if now_ms < self.open_until_ms => Verdict::Reject(Rejection {
                state: State::Open,
                retry_after_ms: Some(self.open_until_ms - now_ms),
            }),
            // The OPEN period is over: this is already the HALF_OPEN episode that follows,
            // whether or not a timer has moved the breaker there yet.
            State::Open => Verdict::Trial {
                episode: self.trial_episode,
            },
            State::HalfOpen if now_ms < self.trial_deadline_ms => Verdict::Trial {
                episode: self.trial_episode,
            },
            State::HalfOpen | State::ForcedOpen => Verdict::Reject(Rejection {
                state: self.state,
                retry_after_ms: None,
            }),
        }
    }

    /// Does [`AdmissionView::decide`] read the timing fields (`open_until_ms`,
    /// `trial_deadline_ms`, `half_open_requests`) in `state`? A reader that keeps the view in
    /// separate words (the runtime's gate) need not load them otherwise.
    #[inline]
    pub fn reads_timing(state: State) -> bool {
        matches!(state, State::Open | State::HalfOpen)
    }

    /// May a trial be admitted when `taken` of the episode's permits are out?
    #[inline]
    pub fn trial_left(&self, taken: u64) -> bool {
        taken < u64::from(self.half_open_requests)
    }

    /// The rejection of a trial attempt that found no permit left.
    pub fn trials_exhausted() -> Rejection {
        Rejection {
            state: State::HalfOpen,
            retry_after_ms: None,
        }
    }
}

/// The answer to a call attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run the call, then report its outcome with this permit.
    Permit(Permit),
    /// Don't run the call.
    Reject(Rejection),
}

/// One circuit breaker: policy plus state, driven by the caller's clock.
///
/// ```
/// use breakerbox::breaker::{Breaker, Decision, Outcome, Policy, State};
///
/// let mut breaker = Breaker::new(Policy::consecutive(3, 30_000)).unwrap();
/// let mut events = Vec::new();
/// for t in 0..3 {
///     let Decision::Permit(permit) = breaker.acquire(t, &mut events) else { unreachable!() };
///     breaker.complete(t, permit, Outcome::Failure, &mut events);
/// }
/// assert_eq!(breaker.state(), State::Open);
/// // 1 ms before the timeout it still rejects; at the timeout it lets a trial through.
/// assert!(matches!(breaker.acquire(30_001, &mut events), Decision::Reject(_)));
/// assert!(matches!(breaker.acquire(30_002, &mut events), Decision::Permit(p) if p.trial));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    policy: Policy,
    state: State,
    /// Counts transitions; a permit from an earlier episode is stale.
    episode: u64,
    /// When the current state was entered (0 before any transition).
    entered_at_ms: u64,
    /// Failures in a row (CLOSED, DISABLED).
    consecutive_failures: u32,
    /// Window of the failure-count or failure-rate rule.
    trip_window: Option<Window>,
    /// Window of the slow-call rule.
    slow_window: Option<Window>,
    /// End of the OPEN period.
    open_until_ms: u64,
    /// OPEN periods since the last CLOSED/DISABLED, for backoff.
    open_streak: u32,
    /// HALF_OPEN trial permits handed out and not given back.
    trials_issued: u32,
    /// HALF_OPEN trials that succeeded.
    trial_successes: u32,
    /// HALF_OPEN: when the trials out must have been decided (0: no deadline running). Set by
    /// the first trial admitted while none is out, cleared when none is out any more.
    #[serde(default)]
    trial_deadline_ms: u64,
}

/// A read-only view of a breaker's state, for status output and snapshots.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct View {
    /// Current state.
    pub state: State,
    /// Current episode.
    pub episode: u64,
    /// When the state was entered.
    pub entered_at_ms: u64,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// The trip rule's window as seen at the instant asked about.
    pub window: Option<Counts>,
    /// The slow-call rule's window as seen at the instant asked about.
    pub slow_window: Option<Counts>,
    /// End of the OPEN period, when OPEN.
    pub open_until_ms: Option<u64>,
    /// Trial permits out, when HALF_OPEN.
    pub trials_issued: u32,
    /// Successful trials, when HALF_OPEN.
    pub trial_successes: u32,
    /// When HALF_OPEN with trials out: the instant they must have been decided by.
    pub trial_deadline_ms: Option<u64>,
}

impl Breaker {
    /// A CLOSED breaker with empty counts. Fails when the policy cannot work.
    pub fn new(policy: Policy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Breaker {
            trip_window: trip_window_spec(&policy.trip).map(|s| Window::new(&s)),
            slow_window: policy.slow_calls.map(|s| Window::new(&s.window)),
            policy,
            state: State::Closed,
            episode: 0,
            entered_at_ms: 0,
            consecutive_failures: 0,
            open_until_ms: 0,
            open_streak: 0,
            trials_issued: 0,
            trial_successes: 0,
            trial_deadline_ms: 0,
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The current episode.
    pub fn episode(&self) -> u64 {
        self.episode
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The next instant at which [`Breaker::tick`] has something to do: the end of OPEN, or
    /// the HALF_OPEN trial deadline.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match self.state {
            State::Open => Some(self.open_until_ms),
            State::HalfOpen if self.trial_deadline_ms > 0 => Some(self.trial_deadline_ms),
            _ => None,
        }
    }

    /// What callers may do now (see [`AdmissionView`]). The runtime publishes this after every
    /// change; [`Breaker::acquire`] decides by it too.
    #[inline]
    pub fn admission(&self) -> AdmissionView {
        AdmissionView {
            state: self.state,
            episode: self.episode,
            // Every transition starts the next episode, so the HALF_OPEN that ends an OPEN
            // period is this episode's successor (see `transition`).
            trial_episode: if self.state == State::Open {
                self.episode.saturating_add(1)
            } else {
                self.episode
            },
            open_until_ms: if self.state == State::Open {
                self.open_until_ms
            } else {
                0
            },
            trial_deadline_ms: match self.trial_deadline_ms {
                0 => u64::MAX,
                d => d,
            },
            half_open_requests: self.policy.half_open_requests,
        }
    }

    /// Trial permits out whose outcome is not known yet (HALF_OPEN).
    fn trials_undecided(&self) -> u32 {
        self.trials_issued.saturating_sub(self.trial_successes)
    }

    /// The state as seen at `now_ms` (time windows slide; nothing changes).
    pub fn view(&self, now_ms: u64) -> View {
        View {
            state: self.state,
            episode: self.episode,
            entered_at_ms: self.entered_at_ms,
            consecutive_failures: self.consecutive_failures,
            window: self.trip_window.as_ref().map(|w| w.counts_at(now_ms)),
            slow_window: self.slow_window.as_ref().map(|w| w.counts_at(now_ms)),
            open_until_ms: (self.state == State::Open).then_some(self.open_until_ms),
            trials_issued: self.trials_issued,
            trial_successes: self.trial_successes,
            trial_deadline_ms: (self.state == State::HalfOpen && self.trial_deadline_ms > 0)
                .then_some(self.trial_deadline_ms),
        }
    }

    /// What each of its rules measures at `now_ms`, against its threshold (see
    /// [`super::gauges`]).
    pub fn gauges(&self, now_ms: u64) -> Vec<super::RuleGauge> {
        let view = self.view(now_ms);
        super::gauges(&self.policy, view.consecutive_failures, view.window, view.slow_window)
    }

    /// The failure and slow-call rates as the trip rules judge them at `now_ms` (for
    /// `/metrics`), read off [`Breaker::gauges`]: `None` before a rule's window holds its
    /// minimum of calls (a failure-count rule: one call), and for consecutive failures, which
    /// have no window.
    pub fn rates(&self, now_ms: u64) -> Rates {
        let judged = |g: &super::RuleGauge, rate: Option<f64>| {
            let calls = g.calls?;
            (calls > 0 && calls >= u64::from(g.minimum_calls.unwrap_or(1))).then_some(rate)?
        };
        let mut rates = Rates::default();
        for g in self.gauges(now_ms) {
            match g.rule {
                Reason::FailureRate => rates.failure_rate_percent = judged(&g, g.value),
                Reason::FailureCount => {
                    let failures = g.value.unwrap_or(0.0) as u64;
                    rates.failure_rate_percent =
                        judged(&g, g.calls.and_then(|c| super::gauge::percent_of(c, failures)));
                }
                Reason::SlowCallRate => rates.slow_call_rate_percent = judged(&g, g.value),
                _ => {}
            }
        }
        rates
    }

    /// Asks to run one call at `now_ms`. OPEN whose period has ended first moves to HALF_OPEN
    /// (that transition is stamped at the period's end). Events go to `out`.
    ///
    /// The decision is [`AdmissionView::decide`]'s, the rule the runtime's gate reads too.
    #[inline]
    pub fn acquire(&mut self, now_ms: u64, out: &mut Vec<Event>) -> Decision {
        // Timers due by now first (the end of OPEN, a trial deadline), as `simulate` orders them.
        if self.next_deadline_ms().is_some_and(|d| d <= now_ms) {
            self.tick(now_ms, out);
        }
        match self.admission().decide(now_ms) {
            Verdict::Permit { episode } => Decision::Permit(Permit {
                episode,
                admitted_at_ms: now_ms,
                trial: false,
            }),
            Verdict::Trial { episode } => {
                debug_assert_eq!((self.state, episode), (State::HalfOpen, self.episode));
                if !self.admission().trial_left(u64::from(self.trials_issued)) {
                    return Decision::Reject(AdmissionView::trials_exhausted());
                }
                self.emit(Event::TrialAdmitted(TrialAdmitted { at_ms: now_ms }), out);
                debug_assert!(self.trials_issued <= self.policy.half_open_requests);
                Decision::Permit(Permit {
                    episode,
                    admitted_at_ms: now_ms,
                    trial: true,
                })
            }
            Verdict::Reject(r) => Decision::Reject(r),
        }
    }

    /// Reports the outcome of a permitted call that completed at `now_ms`. An outcome from an
    /// earlier episode is recorded as stale and changes nothing. Events go to `out`.
    #[inline]
    pub fn complete(&mut self, now_ms: u64, permit: Permit, outcome: Outcome, out: &mut Vec<Event>) {
        // A trial deadline that passed before this completion decided the episode first.
        if self.state == State::HalfOpen && self.next_deadline_ms().is_some_and(|d| d <= now_ms) {
            self.tick(now_ms, out);
        }
        let latency_ms = now_ms.saturating_sub(permit.admitted_at_ms);
        let slow = match &self.policy.slow_calls {
            Some(rule) => outcome.counts() && latency_ms >= rule.duration_ms,
            None => false,
        };
        // Trials are only handed out in HALF_OPEN, so a trial permit that meets another state of
        // the same episode number was taken on a view that a command overtook: it counts nowhere.
        let stale = permit.episode != self.episode || (permit.trial && self.state != State::HalfOpen);
        self.emit(
            Event::CallRecorded(CallRecorded {
                at_ms: now_ms,
                outcome,
                latency_ms,
                slow,
                stale,
            }),
            out,
        );
        if stale || !outcome.counts() {
            return;
        }
        match self.state {
            State::Closed => {
                if let Some((reason, evidence)) = self.tripped() {
                    self.open(now_ms, State::Closed, reason, evidence, out);
                }
            }
            State::HalfOpen => {
                let evidence = Evidence {
                    successes: Some(u64::from(self.trial_successes)),
                    outcome: Some(outcome),
                    latency_ms: Some(latency_ms),
                    ..Evidence::default()
                };
                if outcome.is_failure() {
                    self.open(now_ms, State::HalfOpen, Reason::TrialFailed, evidence, out);
                } else if slow {
                    self.open(now_ms, State::HalfOpen, Reason::TrialSlow, evidence, out);
                } else if self.trial_successes >= self.policy.success_threshold {
                    let evidence = Evidence {
                        threshold: Some(f64::from(self.policy.success_threshold)),
                        ..evidence
                    };
                    self.transition(now_ms, State::Closed, Reason::TrialsSucceeded, evidence, None, out);
                }
            }
            // DISABLED records but never trips; OPEN and FORCED_OPEN hand out no permits, so a
            // permit of the current episode cannot come back while in them.
            State::Disabled | State::Open | State::ForcedOpen => {}
        }
    }

    /// Runs timers due at `now_ms`: OPEN → HALF_OPEN at the end of the OPEN period; HALF_OPEN →
    /// OPEN at the trial deadline if trials are still undecided. Each transition is stamped at
    /// the instant its timer was due, not when it is noticed.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        // A trial deadline re-opens the breaker, and that OPEN period may be over by now too: run
        // timers until none is due (each step starts a state whose timer is later, or none).
        while self.next_deadline_ms().is_some_and(|d| d <= now_ms) {
            self.tick_once(now_ms, out);
        }
    }

    fn tick_once(&mut self, now_ms: u64, out: &mut Vec<Event>) {
        if self.state == State::Open && now_ms >= self.open_until_ms {
            let at = self.open_until_ms;
            let evidence = Evidence {
                open_ms: Some(at.saturating_sub(self.entered_at_ms)),
                ..Evidence::default()
            };
            self.transition(at, State::HalfOpen, Reason::TimeoutElapsed, evidence, None, out);
        }
        if self.state == State::HalfOpen && self.trial_deadline_ms > 0 && now_ms >= self.trial_deadline_ms {
            // The deadline is cleared whenever no trial is out, so one is still out here.
            debug_assert!(self.trials_undecided() > 0);
            let at = self.trial_deadline_ms;
            let evidence = Evidence {
                calls: Some(u64::from(self.trials_issued)),
                successes: Some(u64::from(self.trial_successes)),
                ..Evidence::default()
            };
            self.open(at, State::HalfOpen, Reason::TrialDeadline, evidence, out);
        }
    }

    /// An operator's command at `now_ms`. A command that changes nothing (force-open while
    /// forced open, disable while disabled) emits nothing; reset always starts a fresh CLOSED.
    pub fn command(&mut self, now_ms: u64, command: Command, out: &mut Vec<Event>) {
        let (to, reason) = match command {
            Command::Reset => (State::Closed, Reason::Reset),
            Command::ForceOpen => (State::ForcedOpen, Reason::ForceOpen),
            Command::Disable => (State::Disabled, Reason::Disable),
        };
        if to != self.state || command == Command::Reset {
            self.transition(now_ms, to, reason, Evidence::default(), None, out);
        }
    }

    /// A quorum hint at `now_ms` (`docs/fleet.md`, "Quorum hints"): other nodes of the fleet
    /// opened this breaker by their own trip rules. A CLOSED breaker opens, with reason
    /// `fleet_quorum` and the hint as its evidence, for the policy's OPEN period; in any other
    /// state nothing happens (a hint never closes a breaker or moves it to HALF_OPEN: recovery
    /// stays local). Timers due by `now_ms` run first. True when it opened.
    pub fn hint(&mut self, now_ms: u64, quorum: QuorumEvidence, out: &mut Vec<Event>) -> bool {
        self.tick(now_ms, out);
        if self.state != State::Closed {
            return false;
        }
        let evidence = Evidence {
            quorum: Some(quorum),
            ..Evidence::default()
        };
        self.open(now_ms, State::Closed, Reason::FleetQuorum, evidence, out);
        true
    }

    /// Puts a new policy in force at `now_ms` without touching the state, the counts or the
    /// trial permits. Windows of the same shape are kept; a resized count window keeps its most
    /// recent calls; otherwise a window starts empty. An OPEN period already running keeps its end.
    pub fn set_policy(&mut self, now_ms: u64, policy: Policy, out: &mut Vec<Event>) -> Result<(), PolicyError> {
        policy.validate()?;
        self.emit(
            Event::PolicyApplied(Box::new(PolicyApplied { at_ms: now_ms, policy })),
            out,
        );
        Ok(())
    }

    /// Folds one event into the state. This is the only place state changes; replaying a
    /// breaker's events through it rebuilds the breaker exactly.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::CallRecorded(call) => {
                if call.stale || !call.outcome.counts() {
                    // An ignored or cancelled trial gives its permit back.
                    if !call.stale && self.state == State::HalfOpen {
                        self.trials_issued = self.trials_issued.saturating_sub(1);
                        self.end_deadline_if_decided();
                    }
                    return;
                }
                match self.state {
                    State::Closed | State::Disabled => {
                        let failed = call.outcome.is_failure();
                        self.consecutive_failures = if failed {
                            self.consecutive_failures.saturating_add(1)
                        } else {
                            0
                        };
                        if let Some(w) = &mut self.trip_window {
                            w.record(call.at_ms, failed, call.slow);
                        }
                        if let Some(w) = &mut self.slow_window {
                            w.record(call.at_ms, failed, call.slow);
                        }
                    }
                    State::HalfOpen if call.outcome == Outcome::Success => {
                        self.trial_successes = self.trial_successes.saturating_add(1);
                        self.end_deadline_if_decided();
                    }
                    _ => {}
                }
            }
            Event::TrialAdmitted(t) => {
                if self.trials_undecided() == 0 {
                    self.trial_deadline_ms = self
                        .policy
                        .half_open_max_wait_ms
                        .map_or(0, |wait| t.at_ms.saturating_add(wait));
                }
                self.trials_issued = self.trials_issued.saturating_add(1);
            }
            Event::Transitioned(t) => {
                self.state = t.to;
                self.episode = t.episode;
                self.entered_at_ms = t.at_ms;
                self.consecutive_failures = 0;
                self.trials_issued = 0;
                self.trial_successes = 0;
                self.trial_deadline_ms = 0;
                for w in self.trip_window.iter_mut().chain(self.slow_window.iter_mut()) {
                    w.clear();
                }
                match t.to {
                    State::Open => {
                        self.open_until_ms = t.open_until_ms.unwrap_or(t.at_ms);
                        self.open_streak = self.open_streak.saturating_add(1);
                    }
                    State::Closed | State::Disabled => self.open_streak = 0,
                    State::HalfOpen | State::ForcedOpen => {}
                }
            }
            Event::PolicyApplied(p) => {
                let trip_spec = trip_window_spec(&p.policy.trip);
                // A window holds calls, failures and slow calls whichever rule reads it, so a
                // same-shaped window is kept even when the rule changes kind.
                self.trip_window = match (&self.trip_window, trip_spec) {
                    (Some(old), Some(spec)) => Some(old.reshaped(&spec)),
                    (_, spec) => spec.map(|s| Window::new(&s)),
                };
                self.slow_window = match (&self.slow_window, p.policy.slow_calls) {
                    (Some(old), Some(rule)) => Some(old.reshaped(&rule.window)),
                    (_, rule) => rule.map(|r| Window::new(&r.window)),
                };
                self.policy = p.policy.clone();
            }
        }
    }

    /// No trial out any more: the HALF_OPEN episode waits for callers again, with no deadline.
    fn end_deadline_if_decided(&mut self) {
        if self.trials_undecided() == 0 {
            self.trial_deadline_ms = 0;
        }
    }

    /// Applies then hands out: the event is a fact before anyone sees it.
    #[inline]
    fn emit(&mut self, event: Event, out: &mut Vec<Event>) {
        self.apply(&event);
        out.push(event);
    }

    fn transition(
        &mut self,
        at_ms: u64,
        to: State,
        reason: Reason,
        evidence: Evidence,
        open_until_ms: Option<u64>,
        out: &mut Vec<Event>,
    ) {
        let event = Transition {
            at_ms,
            from: self.state,
            to,
            episode: self.episode.saturating_add(1),
            reason,
            evidence,
            open_until_ms,
        };
        self.emit(Event::Transitioned(Box::new(event)), out);
    }

    fn open(&mut self, now_ms: u64, from: State, reason: Reason, mut evidence: Evidence, out: &mut Vec<Event>) {
        debug_assert_eq!(from, self.state);
        let open_ms = self
            .policy
            .open
            .open_ms(self.open_streak.saturating_add(1), self.episode.saturating_add(1));
        evidence.open_ms = Some(open_ms);
        let until = now_ms.saturating_add(open_ms);
        self.transition(now_ms, State::Open, reason, evidence, Some(until), out);
    }

    /// The rule that fires on the counts as they are now, if any. The trip rule is checked
    /// before the slow-call rule.
    fn tripped(&self) -> Option<(Reason, Evidence)> {
        match &self.policy.trip {
            TripRule::ConsecutiveFailures { threshold } => {
                if self.consecutive_failures >= *threshold {
                    return Some((
                        Reason::ConsecutiveFailures,
                        Evidence {
                            failures: Some(u64::from(self.consecutive_failures)),
                            threshold: Some(f64::from(*threshold)),
                            ..Evidence::default()
                        },
                    ));
                }
            }
            TripRule::FailureCount {
                threshold, window_ms, ..
            } => {
                let counts = self.trip_window.as_ref().map(Window::totals).unwrap_or_default();
                if counts.failures >= u64::from(*threshold) {
                    return Some((
                        Reason::FailureCount,
                        Evidence {
                            calls: Some(counts.calls),
                            failures: Some(counts.failures),
                            threshold: Some(f64::from(*threshold)),
                            window_ms: Some(*window_ms),
                            ..Evidence::default()
                        },
                    ));
                }
            }
            TripRule::FailureRate {
                threshold_percent,
                window,
                minimum_calls,
            } => {
                let counts = self.trip_window.as_ref().map(Window::totals).unwrap_or_default();
                if let Some(rate) = rate_reached(counts.calls, counts.failures, *threshold_percent, *minimum_calls) {
                    return Some((
                        Reason::FailureRate,
                        window_evidence(
                            window,
                            Evidence {
                                calls: Some(counts.calls),
                                failures: Some(counts.failures),
                                threshold: Some(*threshold_percent),
                                rate_percent: Some(rate),
                                ..Evidence::default()
                            },
                        ),
                    ));
                }
            }
        }
        let rule = self.policy.slow_calls.as_ref()?;
        let counts = self.slow_window.as_ref().map(Window::totals).unwrap_or_default();
        let rate = rate_reached(counts.calls, counts.slow, rule.threshold_percent, rule.minimum_calls)?;
        Some((
            Reason::SlowCallRate,
            window_evidence(
                &rule.window,
                Evidence {
                    calls: Some(counts.calls),
                    slow_calls: Some(counts.slow),
                    threshold: Some(rule.threshold_percent),
                    rate_percent: Some(rate),
                    ..Evidence::default()
                },
            ),
        ))
    }
}

/// The rate in percent if `calls` reached `minimum` and `hits / calls` reached `threshold`.
/// Compared as `hits * 100 >= threshold * calls` so no division decides a boundary.
fn rate_reached(calls: u64, hits: u64, threshold_percent: f64, minimum: u32) -> Option<f64> {
    let rate = judged_rate(calls, hits, minimum)?;
    ((hits as f64) * 100.0 >= threshold_percent * calls as f64).then_some(rate)
}

/// `hits / calls` in percent once the window holds `minimum` calls (and at least one): the
/// rate a trip rule judges, and the one [`Breaker::rates`] reports.
fn judged_rate(calls: u64, hits: u64, minimum: u32) -> Option<f64> {
    if calls == 0 || calls < u64::from(minimum) {
        return None;
    }
    super::gauge::percent_of(calls, hits)
}

/// The rates the trip rules judge, as seen at some instant (see [`Breaker::rates`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    /// Failed share of the trip window's calls, in percent; `None` without a failure-rate or
    /// failure-count window, or before it holds the rule's minimum of calls.
    pub failure_rate_percent: Option<f64>,
    /// Slow share of the slow-call window's calls, in percent; `None` without a slow-call rule,
    /// or before its window holds the rule's minimum of calls.
    pub slow_call_rate_percent: Option<f64>,
}

fn window_evidence(window: &SlidingWindow, evidence: Evidence) -> Evidence {
    match *window {
        SlidingWindow::Count { calls } => Evidence {
            window_calls: Some(calls),
            ..evidence
        },
        SlidingWindow::Time { window_ms, .. } => Evidence {
            window_ms: Some(window_ms),
            ..evidence
        },
    }
}

fn trip_window_spec(trip: &TripRule) -> Option<SlidingWindow> {
    match *trip {
        TripRule::ConsecutiveFailures { .. } => None,
        TripRule::FailureCount { window_ms, buckets, .. } => Some(SlidingWindow::Time { window_ms, buckets }),
        TripRule::FailureRate { window, .. } => Some(window),
    }
}
