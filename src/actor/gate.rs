//! The gate: what callers read to be admitted without asking the actor, and where they leave
//! the outcomes of their calls. Plain atomics and one mutex; no actix, no clock reads.
//!
//! The actor is the only writer of the published state; callers only read it, take HALF_OPEN
//! trial permits by compare-and-swap, and append outcome records.

pub(crate) use super::admission::Admission;
use super::admission::Published;
use crate::breaker::{AdmissionView, Outcome, Permit, State};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// This thread's stripe (0..16).
#[inline]
fn stripe() -> usize {
    STRIPE.with(|s| *s)
}

// A tally word: the millisecond (42 bits, good until the year 2109), the low 8 bits of the
// permits' episode, and how many successes (14 bits).
const TALLY_COUNT_BITS: u32 = 14;
const TALLY_TAG_BITS: u32 = 8;
const TALLY_MS_SHIFT: u32 = TALLY_COUNT_BITS + TALLY_TAG_BITS;
const TALLY_MAX: u64 = (1 << TALLY_COUNT_BITS) - 1;

fn pack_tally(ms: u64, tag: u64, count: u64) -> u64 {
    (ms << TALLY_MS_SHIFT) | (tag << TALLY_COUNT_BITS) | count
}

fn unpack_tally(word: u64) -> (u64, u64, u64) {
    (
        word >> TALLY_MS_SHIFT,
        (word >> TALLY_COUNT_BITS) & ((1 << TALLY_TAG_BITS) - 1),
        word & TALLY_MAX,
    )
}

/// The episode a tally's 8-bit tag stands for: the latest one at or before `current` with those
/// low bits. Exact as long as fewer than 256 episodes pass between a call's admission and the
/// actor's next drain (at most a few milliseconds; an episode lasts at least one).
pub(crate) fn tally_episode(current: u64, tag: u8) -> u64 {
    current.saturating_sub(current.wrapping_sub(u64::from(tag)) & 0xFF)
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
        self.cells[stripe()].0.fetch_add(n, Ordering::Relaxed);
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
    /// `count` successes of non-trial calls, each admitted and completed at `at_ms`, of the
    /// episode whose low 8 bits are `tag` (see [`tally_episode`]).
    Tally { at_ms: u64, tag: u8, count: u32 },
    /// A permitted call completed.
    Done {
        at_ms: u64,
        permit: Permit,
        outcome: Outcome,
    },
}

/// The published state of one breaker plus its outcome buffer.
pub(crate) struct Gate {
    /// The core's admission view and the trial permits taken from it.
    published: Published,
    records: Mutex<Vec<Record>>,
    /// The common case — a non-trial call that succeeds within the millisecond it was admitted —
    /// is counted here instead of appended to `records`: one compare-and-swap on a word of the
    /// caller's own stripe (cache line), where a record costs a lock round trip and 40 bytes.
    /// Each word holds one millisecond's count (see [`pack_tally`]); the actor takes them with
    /// the records and seals them at the drain's instant, so no tally ends up earlier than
    /// records already folded.
    tallies: [Padded; 16],
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

impl Gate {
    pub(crate) fn new(soft_limit: usize, hard_limit: usize) -> Self {
        Gate {
            published: Published::new(),
            records: Mutex::new(Vec::with_capacity(1024)),
            tallies: std::array::from_fn(|_| Padded::default()),
            flush_pending: AtomicBool::new(false),
            rejected: Striped::new(),
            fallbacks: Striped::new(),
            soft_limit,
            hard_limit: hard_limit.max(soft_limit),
            dropped: AtomicU64::new(0),
        }
    }

    /// Publishes the core's admission view (actor only).
    pub(crate) fn publish(&self, view: &AdmissionView) {
        self.published.publish(view);
    }

    /// The published state and episode.
    pub(crate) fn state(&self) -> (State, u64) {
        self.published.state()
    }

    /// Trial permits out (of the trial episode the published state hands them out for).
    pub(crate) fn trials_out(&self) -> u64 {
        self.published.trials_out()
    }

    /// Admission at `now_ms`, without the actor: the core's rule on the published view. Exact
    /// for trial permits under contention: never more than `half_open_requests` per episode.
    #[inline]
    pub(crate) fn admit(&self, clock: &impl Fn() -> u64) -> Admission {
        self.published.admit(clock(), || {
            // Recorded in order with the outcomes (time read under the same lock), so the core
            // sees the same sequence the callers made.
            let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
            let at_ms = clock();
            self.flush_own_tally(at_ms, &mut r);
            r.push(Record::Trial { at_ms });
            at_ms
        })
    }

    /// A trial that ended without counting gives its permit back (as the core does).
    pub(crate) fn return_trial(&self, episode: u64) {
        self.published.return_trial(episode);
    }

    /// Records a completion. A non-trial success within the millisecond of its admission is
    /// tallied without the lock; anything else is appended, stamped with `clock()` read under
    /// the lock, so records are in time order. Returns how many records are buffered (0 for a
    /// tally: it never needs an early flush).
    #[inline]
    pub(crate) fn done(&self, clock: impl Fn() -> u64, permit: Permit, outcome: Outcome) -> usize {
        if outcome == Outcome::Success && !permit.trial && self.tally(clock(), permit) {
            return 0;
        }
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= self.hard_limit && !permit.trial {
            drop(r);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return self.hard_limit;
        }
        let at_ms = clock();
        // This thread's earlier successes go first, so its own calls stay in order.
        self.flush_own_tally(at_ms, &mut r);
        r.push(Record::Done { at_ms, permit, outcome });
        r.len()
    }

    /// Counts a success at `now` in this thread's tally word if it holds `now`'s count (or
    /// nothing) for the permit's episode. False: the caller records it under the lock instead.
    #[inline]
    fn tally(&self, now: u64, permit: Permit) -> bool {
        if now != permit.admitted_at_ms || now >> (64 - TALLY_MS_SHIFT) != 0 {
            return false;
        }
        let tag = permit.episode & 0xFF;
        let cell = &self.tallies[stripe()].0;
        let mut current = cell.load(Ordering::Relaxed);
        loop {
            let (ms, t, n) = unpack_tally(current);
            let next = if n == 0 && ms <= now {
                pack_tally(now, tag, 1)
            } else if ms == now && t == tag && n < TALLY_MAX {
                current + 1
            } else {
                // Another millisecond or episode is in the word (or it is full, or sealed at a
                // later instant than this thread's clock read): the locked path moves it out.
                return false;
            };
            match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Moves this thread's tally into the records (under the records lock), sealing the word at
    /// `now`.
    fn flush_own_tally(&self, now: u64, records: &mut Vec<Record>) {
        Self::seal(&self.tallies[stripe()], now, records);
    }

    fn seal(cell: &Padded, now: u64, records: &mut Vec<Record>) {
        if now >> (64 - TALLY_MS_SHIFT) != 0 {
            return;
        }
        let (ms, tag, count) = unpack_tally(cell.0.swap(pack_tally(now, 0, 0), Ordering::AcqRel));
        if count > 0 {
            records.push(Record::Tally {
                at_ms: ms,
                tag: tag as u8,
                count: count as u32,
            });
        }
    }

    /// Takes every buffered record and tally (actor only) and returns the instant they were
    /// complete up to: every record or tally added later is stamped at that instant or after,
    /// so records stamped before it are final. O(1) under the callers' lock for the records when
    /// `into` is empty (the vectors are swapped, so callers get `into`'s capacity back), plus one
    /// swap per tally word. Tallies follow the records, so `into` is not in time order: sort it.
    pub(crate) fn drain(&self, clock: impl Fn() -> u64, into: &mut Vec<Record>) -> u64 {
        let mut r = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let now = clock();
        if into.is_empty() {
            std::mem::swap(&mut *r, into);
        } else {
            into.append(&mut r);
        }
        // Under the lock: a caller's locked path moves its own tally into the records, and must
        // not do so with a tally older than `now` after this drain.
        for cell in &self.tallies {
            Self::seal(cell, now, into);
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
            Record::Trial { at_ms } | Record::Tally { at_ms, .. } | Record::Done { at_ms, .. } => at_ms,
        }
    }

    /// The order `breakerbox simulate` gives events at one instant: completions of calls admitted
    /// earlier (by admission time), then what was admitted at that instant (in arrival order).
    /// Sorting a drained batch by this key (stably) makes the live log replayable exactly.
    pub(crate) fn order_key(&self) -> (u64, u8, u64) {
        match *self {
            Record::Trial { at_ms } | Record::Tally { at_ms, .. } => (at_ms, 1, at_ms),
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
        gate.drain(|| 5, &mut drained);
        assert_eq!(drained.len(), 101);
        assert_eq!(gate.dropped.load(Ordering::Relaxed), 150);
    }

    fn closed(at_ms: u64, episode: u64) -> Permit {
        Permit {
            episode,
            admitted_at_ms: at_ms,
            trial: false,
        }
    }

    #[test]
    fn fast_successes_are_tallied_and_a_thread_keeps_its_own_order() {
        // Given three successes and then a failure in one millisecond on one thread
        let gate = Gate::new(10, 100);
        for _ in 0..3 {
            assert_eq!(gate.done(|| 7, closed(7, 2), Outcome::Success), 0);
        }
        gate.done(|| 7, closed(7, 2), Outcome::Failure);
        // When the actor drains
        let mut drained = Vec::new();
        assert_eq!(gate.drain(|| 8, &mut drained), 8);
        // Then the successes come first, as one tally, and nothing is left
        assert_eq!(
            drained,
            vec![
                Record::Tally {
                    at_ms: 7,
                    tag: 2,
                    count: 3
                },
                Record::Done {
                    at_ms: 7,
                    permit: closed(7, 2),
                    outcome: Outcome::Failure
                }
            ]
        );
        let mut again = Vec::new();
        gate.drain(|| 8, &mut again);
        assert!(again.is_empty());
    }

    #[test]
    fn nothing_is_stamped_before_a_drain_once_it_has_happened() {
        // Given a drain at 10
        let gate = Gate::new(10, 100);
        let mut drained = Vec::new();
        gate.drain(|| 10, &mut drained);
        // When a caller whose clock read 9 reports a success admitted at 9
        gate.done(|| 9, closed(9, 0), Outcome::Success);
        gate.drain(|| 11, &mut drained);
        // Then it was not tallied at 9: it went through the lock (a stale read, stamped again)
        assert_eq!(drained.len(), 1);
        assert!(matches!(drained[0], Record::Done { .. }));
    }

    #[test]
    fn a_new_millisecond_or_episode_moves_the_tally_into_the_records() {
        let gate = Gate::new(10, 100);
        gate.done(|| 5, closed(5, 1), Outcome::Success);
        gate.done(|| 5, closed(5, 1), Outcome::Success);
        // A later millisecond: the locked path moves the old tally, then records this one.
        gate.done(|| 6, closed(6, 1), Outcome::Success);
        // And the next success of that millisecond is tallied again.
        gate.done(|| 6, closed(6, 1), Outcome::Success);
        // Another episode in the same millisecond: moved again.
        gate.done(|| 6, closed(6, 2), Outcome::Success);
        let mut drained = Vec::new();
        gate.drain(|| 7, &mut drained);
        let tally = |at_ms, tag, count| Record::Tally { at_ms, tag, count };
        let ok = |at_ms, episode| Record::Done {
            at_ms,
            permit: closed(at_ms, episode),
            outcome: Outcome::Success,
        };
        assert_eq!(drained, vec![tally(5, 1, 2), ok(6, 1), tally(6, 1, 1), ok(6, 2)]);
        let total: u32 = drained
            .iter()
            .map(|r| match r {
                Record::Tally { count, .. } => *count,
                _ => 1,
            })
            .sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn a_tag_names_the_latest_episode_with_those_low_bits() {
        assert_eq!(tally_episode(300, (300 & 0xFF) as u8), 300);
        assert_eq!(tally_episode(300, (299 & 0xFF) as u8), 299);
        assert_eq!(tally_episode(300, (45 & 0xFF) as u8), 45);
        assert_eq!(tally_episode(256, 255), 255);
        assert_eq!(tally_episode(0, 0), 0);
    }

    fn view(state: State, episode: u64, open_until_ms: u64, half_open_requests: u32) -> AdmissionView {
        AdmissionView {
            state,
            episode,
            trial_episode: episode + u64::from(state == State::Open),
            open_until_ms,
            trial_deadline_ms: u64::MAX,
            half_open_requests,
        }
    }

    #[test]
    fn a_stale_view_never_takes_a_trial_of_a_later_episode() {
        let gate = Gate::new(10, 100);
        gate.publish(&view(State::HalfOpen, 4, 0, 2));
        let clock = || 7;
        assert!(matches!(gate.admit(&clock), Admission::Permit(p) if p.trial && p.episode == 4));
        // The actor re-opens (episode 5): the permits now belong to episode 6 and start at 0.
        gate.publish(&view(State::Open, 5, 100, 2));
        assert_eq!(gate.published.trials(), (6, 0));
        assert!(matches!(gate.admit(&clock), Admission::Reject(r) if r.state == State::Open));
        // Past the deadline, callers take trials of episode 6, two at most.
        let later = || 100;
        assert!(matches!(gate.admit(&later), Admission::Permit(p) if p.trial && p.episode == 6));
        assert!(matches!(gate.admit(&later), Admission::Permit(p) if p.trial && p.episode == 6));
        assert!(matches!(gate.admit(&later), Admission::Reject(r) if r.state == State::HalfOpen));
        // The actor's timer moves to HALF_OPEN episode 6: the permits already taken are kept.
        gate.publish(&view(State::HalfOpen, 6, 0, 2));
        assert_eq!(gate.published.trials(), (6, 2));
        gate.return_trial(5); // a stale return changes nothing
        assert_eq!(gate.published.trials(), (6, 2));
        gate.return_trial(6);
        assert_eq!(gate.published.trials(), (6, 1));
        // A reset to CLOSED 7: a caller on the older view can't take a trial of episode 7.
        gate.publish(&view(State::Closed, 7, 0, 2));
        assert!(matches!(gate.admit(&later), Admission::Permit(p) if !p.trial && p.episode == 7));
        assert_eq!(gate.trials_out(), 0);
    }

    #[test]
    fn no_trial_is_admitted_past_the_trial_deadline() {
        let gate = Gate::new(10, 100);
        let mut v = view(State::HalfOpen, 3, 0, 3);
        v.trial_deadline_ms = 50;
        gate.publish(&v);
        assert!(matches!(gate.admit(&|| 49), Admission::Permit(p) if p.trial));
        assert!(matches!(gate.admit(&|| 50), Admission::Reject(r) if r.state == State::HalfOpen));
    }
}
