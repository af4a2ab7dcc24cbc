//! Runs the core over a trace of call attempts, with the exact ordering rules of
//! `breakerbox simulate` (see `docs/simulate.md`):
//!
//! - a call attempted at `t` is decided at `t` and, if admitted, completes at `t + latency_ms`;
//!   a rejected call never runs, so it has no outcome;
//! - at equal times a timer due at `t` fires first, then completions due at `t` of calls admitted
//!   earlier (in admission order), then the lines at `t` in input order;
//! - a call with `latency_ms` 0 completes right after it is admitted, before the next line;
//! - after the last line, calls still running complete (timers due before them fire); time does
//!   not run on past the last completion.
//!
//! The engine is pure and reused by what-if and replay.

mod trace;

pub use trace::{Input, TraceError, parse, parse_line};

use crate::breaker::{Breaker, Decision, Event, Outcome, Permit, Policy, PolicyError, State, Transition};
use serde::Serialize;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Totals of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Call lines seen.
    pub attempts: u64,
    /// Calls admitted.
    pub permitted: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Transitions made.
    pub transitions: u64,
    /// State at the end.
    pub final_state: State,
}

struct Running {
    done_at_ms: u64,
    /// Admission order, to break ties between completions at the same instant.
    order: u64,
    permit: Permit,
    outcome: Outcome,
}

impl PartialEq for Running {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Running {}
impl PartialOrd for Running {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Running {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.done_at_ms, self.order).cmp(&(other.done_at_ms, other.order))
    }
}

/// A breaker plus the calls it has running, stepped through a trace.
pub struct Simulator {
    breaker: Breaker,
    running: BinaryHeap<Reverse<Running>>,
    admitted: u64,
    summary: Summary,
}

impl Simulator {
    /// A simulator over a fresh CLOSED breaker.
    pub fn new(policy: Policy) -> Result<Self, PolicyError> {
        Ok(Self::with_breaker(Breaker::new(policy)?))
    }

    /// A simulator continuing from an existing breaker (e.g. one rebuilt from a log).
    pub fn with_breaker(breaker: Breaker) -> Self {
        Simulator {
            summary: Summary {
                attempts: 0,
                permitted: 0,
                rejected: 0,
                transitions: 0,
                final_state: breaker.state(),
            },
            breaker,
            running: BinaryHeap::new(),
            admitted: 0,
        }
    }

    /// The breaker as it is now.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Feeds one line; every event it causes (timers and completions due first) goes to `out`.
    pub fn step(&mut self, input: &Input, out: &mut Vec<Event>) {
        let before = out.len();
        let now = input.at_ms();
        self.run_until(now, out);
        match *input {
            Input::Call {
                at_ms,
                outcome,
                latency_ms,
            } => {
                self.summary.attempts += 1;
                match self.breaker.acquire(at_ms, out) {
                    Decision::Permit(permit) => {
                        self.summary.permitted += 1;
                        if latency_ms == 0 {
                            self.breaker.complete(at_ms, permit, outcome, out);
                        } else {
                            self.admitted += 1;
                            self.running.push(Reverse(Running {
                                done_at_ms: at_ms.saturating_add(latency_ms),
                                order: self.admitted,
                                permit,
                                outcome,
                            }));
                        }
                    }
                    Decision::Reject(_) => self.summary.rejected += 1,
                }
            }
            Input::Command { at_ms, command } => self.breaker.command(at_ms, command, out),
            Input::Hint { at_ms, ref quorum } => {
                self.breaker.hint(at_ms, (**quorum).clone(), out);
            }
            Input::Policy { at_ms, ref knobs } => {
                // Over the embedded defaults; `breakerbox simulate` puts its flags on top instead.
                let mut all = crate::knobs::defaults();
                all.overlay(knobs);
                if let Ok(policy) = all.policy() {
                    let _ = self.breaker.set_policy(at_ms, policy, out);
                }
            }
            Input::State { ref breaker, .. } => {
                self.breaker = (**breaker).clone();
                self.running.clear();
            }
        }
        self.count(&out[before..]);
    }

    /// Puts a new policy in force at `at_ms`, after the timers and completions due by then
    /// (state and windows kept, see [`Breaker::set_policy`]).
    pub fn set_policy(&mut self, at_ms: u64, policy: Policy, out: &mut Vec<Event>) -> Result<(), PolicyError> {
        let before = out.len();
        self.run_until(at_ms, out);
        let result = self.breaker.set_policy(at_ms, policy, out);
        self.count(&out[before..]);
        result
    }

    /// Fires the timers and completions due by `now` (what a line at `now` would fire first):
    /// for runs that step several breakers in one time order.
    pub fn advance_to(&mut self, now: u64, out: &mut Vec<Event>) {
        let before = out.len();
        self.run_until(now, out);
        self.count(&out[before..]);
    }

    /// Lets every running call complete (timers due before each completion fire first).
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Summary {
        let before = out.len();
        // Time runs on only as far as the last completion: a timer due after it never fires.
        if let Some(last) = self.running.iter().map(|r| r.0.done_at_ms).max() {
            self.run_until(last, out);
        }
        self.count(&out[before..]);
        self.summary.clone()
    }

    /// The totals so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Fires, in order, the timers and completions due at or before `now`.
    fn run_until(&mut self, now: u64, out: &mut Vec<Event>) {
        loop {
            let next_done = self.running.peek().map(|r| r.0.done_at_ms);
            let timer = self.breaker.next_deadline_ms();
            match (timer, next_done) {
                // A timer due at the same instant as a completion fires first.
                (Some(t), d) if t <= now && d.is_none_or(|d| t <= d) => self.breaker.tick(t, out),
                (_, Some(d)) if d <= now => {
                    let Reverse(call) = self.running.pop().expect("peeked");
                    self.breaker.complete(call.done_at_ms, call.permit, call.outcome, out);
                }
                _ => break,
            }
        }
    }

    /// Counts transitions from the events themselves, so the summary can't disagree with them.
    fn count(&mut self, new_events: &[Event]) {
        let transitions = new_events
            .iter()
            .filter(|e| matches!(e, Event::Transitioned(_)))
            .count();
        self.summary.transitions += transitions as u64;
        self.summary.final_state = self.breaker.state();
    }
}

/// Runs a whole trace: every transition, in order, and the summary.
pub fn run(policy: Policy, inputs: &[Input]) -> Result<(Vec<Transition>, Summary), PolicyError> {
    let mut sim = Simulator::new(policy)?;
    let mut events = Vec::new();
    let mut transitions = Vec::new();
    let mut collect = |events: &mut Vec<Event>| {
        transitions.extend(events.drain(..).filter_map(|e| match e {
            Event::Transitioned(t) => Some(*t),
            _ => None,
        }));
    };
    for input in inputs {
        sim.step(input, &mut events);
        collect(&mut events);
    }
    let summary = sim.finish(&mut events);
    collect(&mut events);
    Ok((transitions, summary))
}
