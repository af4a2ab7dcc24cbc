//! Per-minute metrics of one breaker, folded from its log: calls by outcome, slow calls,
//! rejections and fallbacks, a mergeable latency histogram, and time spent in each state.

use super::{Entry, Item};
use crate::breaker::{Event, Outcome, State, Transition};
use crate::journal::LATENCY_BOUNDS_MS;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One minute of one breaker. Minutes merge by adding (histograms included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// Start of the minute (Unix epoch ms).
    pub minute_ms: u64,
    /// Successful calls.
    pub successes: u64,
    /// Failed calls.
    pub failures: u64,
    /// Timed-out calls.
    pub timeouts: u64,
    /// Ignored calls.
    pub ignored: u64,
    /// Cancelled calls (the caller gave up before they ended).
    #[serde(default)]
    pub cancelled: u64,
    /// Slow calls.
    pub slow: u64,
    /// Calls rejected by the breaker.
    pub rejected: u64,
    /// Calls answered by a fallback.
    pub fallbacks: u64,
    /// Sum of latencies (ms).
    pub latency_total_ms: u64,
    /// Calls per latency bucket (bounds in `journal::LATENCY_BOUNDS_MS`, plus the rest).
    pub latency_buckets: Vec<u64>,
    /// Milliseconds spent in each state, in `State::ALL` order.
    pub state_ms: [u64; 5],
    /// Sum of latencies (ms) by outcome (success, failure, timeout, ignored, cancelled; read it
    /// with [`Minute::of`]): what `/metrics` gives as each kind's `_sum`. Minutes folded from
    /// summaries an earlier release compacted have none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_ms_by_outcome: [u64; 5],
    /// Outcomes the breaker's buffer dropped (the actor fell behind): counted nowhere else.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

/// An outcome's place in [`Minute::latency_ms_by_outcome`] (the order of `MinuteSummary`'s).
fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Timeout => 2,
        Outcome::Ignored => 3,
        Outcome::Cancelled => 4,
    }
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Minute {
    /// Calls that ran (every outcome).
    pub fn calls(&self) -> u64 {
        self.successes + self.failures + self.timeouts + self.ignored + self.cancelled
    }

    /// The calls that ended with `outcome`, and the sum of their latencies (ms).
    pub fn of(&self, outcome: Outcome) -> (u64, u64) {
        let calls = match outcome {
            Outcome::Success => self.successes,
            Outcome::Failure => self.failures,
            Outcome::Timeout => self.timeouts,
            Outcome::Ignored => self.ignored,
            Outcome::Cancelled => self.cancelled,
        };
        (calls, self.latency_ms_by_outcome[outcome_index(outcome)])
    }

    pub(crate) fn add_call(&mut self, outcome: Outcome, latency_ms: u64, slow: bool) {
        match outcome {
            Outcome::Success => self.successes += 1,
            Outcome::Failure => self.failures += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Cancelled => self.cancelled += 1,
        }
        self.slow += u64::from(slow);
        self.latency_total_ms += latency_ms;
        self.latency_ms_by_outcome[outcome_index(outcome)] += latency_ms;
        if self.latency_buckets.is_empty() {
            self.latency_buckets = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        }
        let l = u32::try_from(latency_ms).unwrap_or(u32::MAX);
        self.latency_buckets[LATENCY_BOUNDS_MS.partition_point(|&b| b < l)] += 1;
    }

    /// A compacted summary minute as metrics.
    pub fn from_summary(sm: &crate::journal::MinuteSummary) -> Minute {
        Minute {
            minute_ms: sm.minute_ms,
            successes: u64::from(sm.successes),
            failures: u64::from(sm.failures),
            timeouts: u64::from(sm.timeouts),
            ignored: u64::from(sm.ignored),
            cancelled: u64::from(sm.cancelled),
            slow: u64::from(sm.slow),
            latency_total_ms: sm.latency_total_ms,
            latency_buckets: sm.latency_buckets.iter().map(|&c| u64::from(c)).collect(),
            latency_ms_by_outcome: sm.latency_ms_by_outcome,
            ..Minute::default()
        }
    }

    /// Adds another minute's counts into this one.
    pub fn merge(&mut self, other: &Minute) {
        self.successes += other.successes;
        self.failures += other.failures;
        self.timeouts += other.timeouts;
        self.ignored += other.ignored;
        self.cancelled += other.cancelled;
        self.slow += other.slow;
        self.rejected += other.rejected;
        self.fallbacks += other.fallbacks;
        self.latency_total_ms += other.latency_total_ms;
        self.dropped += other.dropped;
        for (a, b) in self.latency_ms_by_outcome.iter_mut().zip(other.latency_ms_by_outcome) {
            *a += b;
        }
        if self.latency_buckets.len() < other.latency_buckets.len() {
            self.latency_buckets.resize(other.latency_buckets.len(), 0);
        }
        for (a, b) in self.latency_buckets.iter_mut().zip(&other.latency_buckets) {
            *a += b;
        }
        for (a, b) in self.state_ms.iter_mut().zip(other.state_ms) {
            *a += b;
        }
    }

    /// The latency below which `q` (0–1) of the calls fall: the upper bound of the histogram
    /// bucket holding that rank (so an upper estimate; exact for the bucket bounds).
    pub fn latency_quantile_ms(&self, q: f64) -> Option<u64> {
        let n: u64 = self.latency_buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.latency_buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS.get(i).map_or(u64::from(u32::MAX), |b| u64::from(*b)));
            }
        }
        None
    }
}

fn state_index(s: State) -> usize {
    State::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

// Time in state, counted one way for every view: the per-minute metrics (`minutes`, the stored
// projection), what-if's and the summary's time open. A breaker is in the state of its last
// transition from that transition's instant on, and in its state at `start` before the first.

/// Adds `to − from` ms in `state` to the minutes it spans.
pub(crate) fn spend(minutes: &mut BTreeMap<u64, Minute>, state: State, from: u64, to: u64) {
    let mut t = from;
    while t < to {
        let minute = t / 60_000 * 60_000;
        let end = (minute + 60_000).min(to);
        minutes
            .entry(minute)
            .or_insert_with(|| Minute {
                minute_ms: minute,
                ..Minute::default()
            })
            .state_ms[state_index(state)] += end - t;
        t = end;
    }
}

/// Time in each state (indexed as [`State::ALL`]) over `[start, end]`, from the state at
/// `start` and the transitions after it, in order.
pub fn time_in_states(initial: State, transitions: &[Transition], start: u64, end: u64) -> [u64; 5] {
    let mut out = [0; 5];
    let (mut state, mut since) = (initial, start);
    for t in transitions {
        out[state_index(state)] += t.at_ms.saturating_sub(since);
        (state, since) = (t.to, t.at_ms);
    }
    out[state_index(state)] += end.saturating_sub(since);
    out
}

/// Of [`time_in_states`], the time the breaker rejected everything: OPEN or FORCED_OPEN.
pub fn open_ms(times: &[u64; 5]) -> u64 {
    times[state_index(State::Open)] + times[state_index(State::ForcedOpen)]
}

/// Per-minute metrics of a stream's entries up to `until_ms`, by minute. Time in each state is
/// counted from the stream's transitions (CLOSED before the first one) up to `until_ms`.
pub fn minutes(entries: &[Entry], until_ms: u64) -> BTreeMap<u64, Minute> {
    let mut out: BTreeMap<u64, Minute> = BTreeMap::new();
    let mut state = State::Closed;
    let mut since: Option<u64> = None;
    for e in entries {
        match &e.item {
            Item::Core(Event::CallRecorded(c)) if c.at_ms <= until_ms => {
                since.get_or_insert(c.at_ms);
                let m = c.at_ms / 60_000 * 60_000;
                out.entry(m)
                    .or_insert_with(|| Minute {
                        minute_ms: m,
                        ..Minute::default()
                    })
                    .add_call(c.outcome, c.latency_ms, c.slow);
            }
            Item::Core(Event::Transitioned(t)) if t.at_ms <= until_ms => {
                let from = since.unwrap_or(t.at_ms);
                spend(&mut out, state, from, t.at_ms);
                state = t.to;
                since = Some(t.at_ms);
            }
            Item::Core(ev) if ev.at_ms() <= until_ms => {
                since.get_or_insert(ev.at_ms());
            }
            Item::Stats(s) if s.at_ms <= until_ms => {
                let m = s.at_ms / 60_000 * 60_000;
                let minute = out.entry(m).or_insert_with(|| Minute {
                    minute_ms: m,
                    ..Minute::default()
                });
                minute.rejected += s.rejected;
                minute.fallbacks += s.fallbacks;
                minute.dropped += s.dropped;
            }
            Item::Summary(s) => {
                for sm in &s.minutes {
                    if sm.minute_ms > until_ms {
                        continue;
                    }
                    let m = out.entry(sm.minute_ms).or_insert_with(|| Minute {
                        minute_ms: sm.minute_ms,
                        ..Minute::default()
                    });
                    m.merge(&Minute::from_summary(sm));
                }
            }
            _ => {}
        }
    }
    if let Some(from) = since {
        spend(&mut out, state, from, until_ms.max(from));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::{Breaker, Decision, Policy};

    #[test]
    fn time_in_state_is_counted_the_same_way_per_minute_and_in_total() {
        // A breaker that trips, waits out OPEN, fails its trial and trips again, across minutes.
        let mut b = Breaker::new(Policy::consecutive(2, 50_000)).unwrap();
        let mut events = Vec::new();
        for t in [10_000, 20_000, 95_000, 200_000, 210_000] {
            b.tick(t, &mut events);
            if let Decision::Permit(p) = b.acquire(t, &mut events) {
                b.complete(t + 1, p, Outcome::Failure, &mut events);
            }
        }
        let transitions: Vec<Transition> = events
            .iter()
            .filter_map(|e| match e {
                Event::Transitioned(t) => Some((**t).clone()),
                _ => None,
            })
            .collect();
        assert!(transitions.len() >= 3, "{transitions:?}");
        let (start, end) = (5_000, 300_000);
        let total = time_in_states(State::Closed, &transitions, start, end);
        assert_eq!(total.iter().sum::<u64>(), end - start);
        let mut minutes = BTreeMap::new();
        let (mut state, mut since) = (State::Closed, start);
        for t in &transitions {
            spend(&mut minutes, state, since, t.at_ms);
            (state, since) = (t.to, t.at_ms);
        }
        spend(&mut minutes, state, since, end);
        let mut per_minute = [0u64; 5];
        for m in minutes.values() {
            assert!(m.state_ms.iter().sum::<u64>() <= 60_000);
            for (a, b) in per_minute.iter_mut().zip(m.state_ms) {
                *a += b;
            }
        }
        assert_eq!(per_minute, total);
        assert_eq!(
            open_ms(&total),
            total[state_index(State::Open)],
            "never forced open here"
        );
        assert!(open_ms(&total) >= 50_000);
    }
}
