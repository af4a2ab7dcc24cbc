//! The gate: what callers read to be admitted without asking the actor, and where they leave
//! the outcomes of their calls. Plain atomics and one mutex; no actix, no clock reads.
//!
//! The actor is the only writer of the published state; callers only read it, take HALF_OPEN
//! trial permits by compare-and-swap, and append outcome records.

use crate::breaker::{Outcome, Permit, Rejection, State};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const STATE_BITS: u32 = 3;

fn state_code(s: State) -> u64 {
    match s {
        State::Closed => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::ForcedOpen => 3,
        State::Disabled => 4,
    }
}

fn code_state(c: u64) -> State {
    match c {
        0 => State::Closed,
        1 => State::Open,
        2 => State::HalfOpen,
        3 => State::ForcedOpen,
        _ => State::Disabled,
    }
}

/// Trial permits: the episode they belong to (high 40 bits) and how many are out (low 24).
fn pack_trials(episode: u64, count: u64) -> u64 {
    (episode << 24) | (count & 0xFF_FFFF)
}

fn unpack_trials(word: u64) -> (u64, u64) {
    (word >> 24, word & 0xFF_FFFF)
}

/// A counter many threads add to without sharing a cache line: one padded cell per stripe,
/// a thread always adding to the same one. Only the actor reads (and resets) the sum.
pub(crate) struct Striped {
    cells: [Padded; 16],
}

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

thread_local! {
    static STRIPE: usize = {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % 16
    };
}

impl Striped {
    fn new() -> Self {
        Striped {
            cells: std::array::from_fn(|_| Padded::default()),
        }
    }

    /// Adds `n` (callers).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        let i = STRIPE.with(|s| *s);
        self.cells[i].0.fetch_add(n, Ordering::Relaxed);
    }

    /// Takes the total, leaving zero (the actor).
    pub(crate) fn take(&self) -> u64 {
        self.cells.iter().map(|c| c.0.swap(0, Ordering::Relaxed)).sum()
    }
}

/// One thing a caller reports to the actor, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// A HALF_OPEN trial permit was taken at `at_ms`.
    Trial { at_ms: u64 },
    /// A permitted call completed.
    Done {
        at_ms: u64,
        permit: Permit,
        outcome: Outcome,
    },
}

/// The published state of one breaker plus its outcome buffer.
pub(crate) struct Gate {
    /// `episode << 3 | state`.
    word: AtomicU64,
    open_until_ms: AtomicU64,
    /// Trial permits of the current HALF_OPEN episode (or of the next one, while OPEN).
    trials: AtomicU64,
    half_open_requests: AtomicU64,
    records: Mutex<Vec<Record>>,
    /// A flush message is on its way to the actor: don't send another.
    flush_pending: AtomicBool,
    /// Calls rejected since the actor last collected them.
    pub(crate) rejected: Striped,
    /// Calls served by a fallback since the actor last collected them.
    pub(crate) fallbacks: Striped,
    /// Records buffered before a caller asks the actor to fold them early.
    pub(crate) soft_limit: usize,
    /// Records buffered at most: past it outcomes are dropped and counted (never silent), so a
    /// stalled actor can't grow memory without bound. Trial records are never dropped.
    pub(crate) hard_limit: usize,
    /// Outcomes dropped at the hard limit since the actor last collected them.
    pub(crate) dropped: AtomicU64,
}

/// What admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Permit(Permit),
    Reject(Rejection),
}

impl Gate {
    pub(crate) fn new(soft_limit: usize, hard_limit: usize) -> Self {
        Gate {
            word: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            trials: AtomicU64::new(0),
            half_open_requests: AtomicU64::new(0),
            records: Mutex::new(Vec::with_capacity(1024)),
            flush_pending: AtomicBool::new(false),
            rejected: Striped::new(),
            fallbacks: Striped::new(),
            soft_limit,
            hard_limit: hard_limit.max(soft_limit),
            dropped: AtomicU64::new(0),
        }
    }

    /// Publishes the breaker's state (actor only). A new episode resets the trial permits to
    /// that episode (or, entering OPEN, to the HALF_OPEN episode that follows it).
    pub(crate) fn publish(&self, state: State, episode: u64, open_until_ms: Option<u64>, half_open_requests: u32) {
        self.half_open_requests
            .store(u64::from(half_open_requests), Ordering::Relaxed);
        self.open_until_ms.store(open_until_ms.unwrap_or(0), Ordering::Relaxed);
        let trial_episode = if state == State::Open { episode + 1 } else { episode };
        // Keep permits already taken for this very episode (callers may have taken trials of the
        // HALF_OPEN episode before the actor's timer moved the core there).
        let mut current = self.trials.load(Ordering::Acquire);
        while unpack_trials(current).0 != trial_episode {
            // A caller may be taking a (now stale) permit at this very moment: retry until the
            // word is ours, so the new episode always starts at 0.
            match self.trials.compare_exchange_weak(
                current,
                pack_trials(trial_episode, 0),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.word
            .store((episode << STATE_BITS) | state_code(state), Ordering::Release);
    }

    /// The published state and episode.
    pub(crate) fn state(&self) -> (State, u64) {
        let w = self.word.load(Ordering::Acquire);
        (code_state(w & 7), w >> STATE_BITS)
    }

    /// Trial permits out for the episode they belong to.
    pub(crate) fn trials(&self) -> (u64, u64) {
        unpack_trials(self.trials.load(Ordering::Acquire))
    }

    /// Admission at `now_ms`, without the actor. Exact for trial permits under contention:
    /// never more than `half_open_requests` per episode.
    #[inline]
    pub(crate) fn admit(&self, clock: &impl Fn() -> u64) -> Admission {
        let now_ms = clock();
        let w = self.word.load(Ordering::Acquire);
        let (state, episode) = (code_state(w & 7), w >> STATE_BITS);
        match state {
            State::Closed | State::Disabled => Admission::Permit(Permit {
                episode,
                admitted_at_ms: now_ms,
                trial: false,
            }),
            State::Open => {
                let until = self.open_until_ms.load(Ordering::Relaxed);
                if now_ms < until {
                    Admission::Reject(Rejection {
                        state: State::Open,
                        retry_after_ms: Some(until - now_ms),
                    })
                } else {
                    // The OPEN period is over: this is already the next (HALF_OPEN) episode,
                    // whether or not the actor's timer has run yet.
                    self.trial(episode + 1, clock)
                }
            }
            State::HalfOpen => self.trial(episode, clock),
            State::ForcedOpen => Admission::Reject(Rejection {
                state: State::ForcedOpen,
                retry_after_ms: None,
            }),
        }
    }

    fn trial(&self, episode: u64, clock: &impl Fn() -> u64) -> Admission {
        let limit = self.half_open_requests.load(Ordering::Relaxed);
        let mut current = self.trials.load(Ordering::Acquire);
        loop {
            let (ep, count) = unpack_trials(current);
            if ep != episode || count >= limit {
                return Admission::Reject(Rejection {
                    state: State::HalfOpen,
                    retry_after_ms: None,
                });
            }
            match self.trials.compare_exchange_weak(
                current,
                pack_trials(ep, count + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // Recorded in order with the outcomes (time read under the same lock), so
                    // the core sees the same sequence the callers made.
                    let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
                    let at_ms = clock();
                    r.push(Record::Trial { at_ms });
                    return Admission::Permit(Permit {
                        episode,
                        admitted_at_ms: at_ms,
                        trial: true,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// An ignored trial gives its permit back (as the core does).
    pub(crate) fn return_trial(&self, episode: u64) {
        let mut current = self.trials.load(Ordering::Acquire);
        loop {
            let (ep, count) = unpack_trials(current);
            if ep != episode || count == 0 {
                return;
            }
            match self.trials.compare_exchange_weak(
                current,
                pack_trials(ep, count - 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Appends a completion, stamping it with `clock()` read under the lock, so records are in
    /// time order. Returns how many records are buffered.
    #[inline]
    pub(crate) fn done(&self, clock: impl Fn() -> u64, permit: Permit, outcome: Outcome) -> usize {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= self.hard_limit && !permit.trial {
            drop(r);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return self.hard_limit;
        }
        r.push(Record::Done {
            at_ms: clock(),
            permit,
            outcome,
        });
        r.len()
    }

    /// Takes every buffered record (actor only). O(1) under the callers' lock when `into` is
    /// empty: the vectors are swapped, so callers get `into`'s capacity back.
    pub(crate) fn drain(&self, into: &mut Vec<Record>) {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if into.is_empty() {
            std::mem::swap(&mut *r, into);
        } else {
            into.append(&mut r);
        }
    }

    /// Takes every buffered record and the instant they were complete up to: every record
    /// pushed later is stamped at that instant or after, so records stamped before it are final.
    pub(crate) fn drain_settled(&self, clock: impl Fn() -> u64, into: &mut Vec<Record>) -> u64 {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock();
        if into.is_empty() {
            std::mem::swap(&mut *r, into);
        } else {
            into.append(&mut r);
        }
        now
    }

    /// True if the caller should send a flush (none is pending yet).
    pub(crate) fn claim_flush(&self) -> bool {
        !self.flush_pending.swap(true, Ordering::AcqRel)
    }

    /// The actor took the flush: later records need a new one.
    pub(crate) fn release_flush(&self) {
        self.flush_pending.store(false, Ordering::Release);
    }
}

impl Record {
    pub(crate) fn at_ms(&self) -> u64 {
        match *self {
            Record::Trial { at_ms } | Record::Done { at_ms, .. } => at_ms,
        }
    }

    /// The order `breakerbox simulate` gives events at one instant: completions of calls admitted
    /// earlier (by admission time), then what was admitted at that instant (in arrival order).
    /// Sorting a drained batch by this key (stably) makes the live log replayable exactly.
    pub(crate) fn order_key(&self) -> (u64, u8, u64) {
        match *self {
            Record::Trial { at_ms } => (at_ms, 1, at_ms),
            Record::Done { at_ms, permit, .. } if permit.admitted_at_ms < at_ms => (at_ms, 0, permit.admitted_at_ms),
            Record::Done { at_ms, .. } => (at_ms, 1, at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permit(trial: bool) -> Permit {
        Permit {
            episode: 0,
            admitted_at_ms: 0,
            trial,
        }
    }

    #[test]
    fn the_buffer_is_bounded_and_what_it_drops_is_counted() {
        let gate = Gate::new(10, 100);
        for _ in 0..250 {
            gate.done(|| 5, permit(false), Outcome::Success);
        }
        // Trials are never dropped: the core's permit count depends on them.
        gate.done(|| 5, permit(true), Outcome::Success);
        let mut drained = Vec::new();
        gate.drain(&mut drained);
        assert_eq!(drained.len(), 101);
        assert_eq!(gate.dropped.load(Ordering::Relaxed), 150);
    }

    #[test]
    fn a_stale_view_never_takes_a_trial_of_a_later_episode() {
        let gate = Gate::new(10, 100);
        gate.publish(State::HalfOpen, 4, None, 2);
        let clock = || 7;
        assert!(matches!(gate.admit(&clock), Admission::Permit(p) if p.trial && p.episode == 4));
        // The actor re-opens (episode 5): the permits now belong to episode 6 and start at 0.
        gate.publish(State::Open, 5, Some(100), 2);
        assert_eq!(gate.trials(), (6, 0));
        assert!(matches!(gate.admit(&clock), Admission::Reject(r) if r.state == State::Open));
        // Past the deadline, callers take trials of episode 6, two at most.
        let later = || 100;
        assert!(matches!(gate.admit(&later), Admission::Permit(p) if p.trial && p.episode == 6));
        assert!(matches!(gate.admit(&later), Admission::Permit(p) if p.trial && p.episode == 6));
        assert!(matches!(gate.admit(&later), Admission::Reject(r) if r.state == State::HalfOpen));
        // The actor's timer moves to HALF_OPEN episode 6: the permits already taken are kept.
        gate.publish(State::HalfOpen, 6, None, 2);
        assert_eq!(gate.trials(), (6, 2));
        gate.return_trial(5); // a stale return changes nothing
        assert_eq!(gate.trials(), (6, 2));
        gate.return_trial(6);
        assert_eq!(gate.trials(), (6, 1));
    }
}
