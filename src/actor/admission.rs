//! The core's [`AdmissionView`] published in atomics, and the trial permits callers take from
//! it by compare-and-swap. The only lock-free protocol of admission, kept apart so it can be
//! model-checked (`tests/actor.rs` compiles this file against loom's atomics through
//! `admission_deps`): the rule itself is [`AdmissionView::decide`], the core's.
//!
//! Invariants (checked by the model test): no more than `half_open_requests` trial permits are
//! handed out per episode, and a permit taken for one episode is never counted in another.

use super::admission_deps::{AdmissionView, AtomicU64, Ordering, Permit, Rejection, State, Verdict};

/// The state word: `episode << 4 | next << 3 | state`, where `next` says the trial episode is
/// the one after `episode` (the core's view says so when OPEN). Stored as data from the view,
/// so the gate holds no rule about episodes.
const WORD_SHIFT: u32 = 4;
const NEXT_BIT: u64 = 1 << 3;

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

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// Trial permits: the episode they belong to (high 40 bits) and how many are out (low 24).
fn pack_trials(episode: u64, count: u64) -> u64 {
    (episode << COUNT_BITS) | (count & COUNT_MASK)
}

fn unpack_trials(word: u64) -> (u64, u64) {
    (word >> COUNT_BITS, word & COUNT_MASK)
}

/// What admission decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Permit(Permit),
    Reject(Rejection),
}

/// The published view. The actor is its only writer; callers read it and take trial permits.
pub(crate) struct Published {
    /// See [`WORD_SHIFT`]; stored last (Release) so a reader that sees it sees the rest.
    word: AtomicU64,
    open_until_ms: AtomicU64,
    trial_deadline_ms: AtomicU64,
    half_open_requests: AtomicU64,
    /// Trial permits of `trial_episode`. Outside OPEN and HALF_OPEN the word is full, so a
    /// caller reading an older view can never take a trial (of a number a later state reuses).
    trials: AtomicU64,
}

impl Published {
    pub(crate) fn new() -> Self {
        Published {
            word: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            trial_deadline_ms: AtomicU64::new(u64::MAX),
            half_open_requests: AtomicU64::new(0),
            trials: AtomicU64::new(pack_trials(0, COUNT_MASK)),
        }
    }

    /// Publishes the core's view (actor only). A new trial episode starts its permits at 0;
    /// permits already taken for that very episode are kept (callers may take trials of the
    /// HALF_OPEN episode before the actor's timer moves the core there).
    pub(crate) fn publish(&self, view: &AdmissionView) {
        debug_assert!(
            view.trial_episode >= view.episode && view.half_open_requests > 0,
            "a view the core cannot produce: {view:?}"
        );
        self.half_open_requests
            .store(u64::from(view.half_open_requests), Ordering::Relaxed);
        self.open_until_ms.store(view.open_until_ms, Ordering::Relaxed);
        self.trial_deadline_ms.store(view.trial_deadline_ms, Ordering::Relaxed);
        let trials_open = matches!(view.state, State::Open | State::HalfOpen);
        let mut current = self.trials.load(Ordering::Acquire);
        loop {
            let (episode, count) = unpack_trials(current);
            let next = if !trials_open {
                pack_trials(view.trial_episode, COUNT_MASK)
            } else if episode == view.trial_episode && count != COUNT_MASK {
                break;
            } else {
                pack_trials(view.trial_episode, 0)
            };
            if current == next {
                break;
            }
            // A caller may be taking a (now stale) permit at this very moment: retry until the
            // word is ours.
            match self
                .trials
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        let next = view.trial_episode.wrapping_sub(view.episode);
        debug_assert!(next <= 1, "a trial episode is this one or the next: {view:?}");
        let next_bit = if next == 1 { NEXT_BIT } else { 0 };
        self.word.store(
            (view.episode << WORD_SHIFT) | next_bit | state_code(view.state),
            Ordering::Release,
        );
    }

    /// The published state and episode.
    pub(crate) fn state(&self) -> (State, u64) {
        let w = self.word.load(Ordering::Acquire);
        (code_state(w & 7), w >> WORD_SHIFT)
    }

    /// Trial permits out, if the published state hands trials out (OPEN, HALF_OPEN).
    pub(crate) fn trials_out(&self) -> u64 {
        let (episode, count) = unpack_trials(self.trials.load(Ordering::Acquire));
        let view = self.view();
        if matches!(view.state, State::Open | State::HalfOpen) && episode == view.trial_episode {
            count
        } else {
            0
        }
    }

    /// The view as published. Fields stored after the state word can be newer than it (never
    /// older): a newer OPEN end or trial deadline only rejects more, and a newer trial episode
    /// is refused by the trial word's own episode tag.
    #[inline]
    fn view(&self) -> AdmissionView {
        let w = self.word.load(Ordering::Acquire);
        let (state, episode) = (code_state(w & 7), w >> WORD_SHIFT);
        let mut view = AdmissionView {
            state,
            episode,
            trial_episode: episode + u64::from(w & NEXT_BIT != 0),
            open_until_ms: 0,
            trial_deadline_ms: u64::MAX,
            half_open_requests: 0,
        };
        // The hot CLOSED path reads one word; the rest only where the rule reads it.
        if AdmissionView::reads_timing(state) {
            view.open_until_ms = self.open_until_ms.load(Ordering::Relaxed);
            view.trial_deadline_ms = self.trial_deadline_ms.load(Ordering::Relaxed);
            view.half_open_requests = self.half_open_requests.load(Ordering::Relaxed) as u32;
        }
        view
    }

    /// Admission at `now_ms`, without the actor: the core's verdict on the published view, with
    /// trial permits counted exactly under contention. `on_trial` runs once a trial permit is
    /// ours (the gate records it, stamping the time under its lock) and gives its admission time.
    #[inline]
    pub(crate) fn admit(&self, now_ms: u64, on_trial: impl FnOnce() -> u64) -> Admission {
        let view = self.view();
        match view.decide(now_ms) {
            Verdict::Permit { episode } => Admission::Permit(Permit {
                episode,
                admitted_at_ms: now_ms,
                trial: false,
            }),
            Verdict::Reject(r) => Admission::Reject(r),
            Verdict::Trial { episode } => {
                if self.take_trial(&view, episode) {
                    Admission::Permit(Permit {
                        episode,
                        admitted_at_ms: on_trial(),
                        trial: true,
                    })
                } else {
                    Admission::Reject(AdmissionView::trials_exhausted())
                }
            }
        }
    }

    fn take_trial(&self, view: &AdmissionView, episode: u64) -> bool {
        let mut current = self.trials.load(Ordering::Acquire);
        loop {
            let (ep, count) = unpack_trials(current);
            if ep != episode || count == COUNT_MASK || !view.trial_left(count) {
                return false;
            }
            match self.trials.compare_exchange_weak(
                current,
                pack_trials(ep, count + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// A trial that ended without counting (ignored, cancelled) gives its permit back, as the
    /// core does; a permit of another episode changes nothing.
    pub(crate) fn return_trial(&self, episode: u64) {
        let mut current = self.trials.load(Ordering::Acquire);
        loop {
            let (ep, count) = unpack_trials(current);
            if ep != episode || count == 0 || count == COUNT_MASK {
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

    /// The trial word as it stands: (episode, permits out). Tests.
    #[allow(dead_code)]
    pub(crate) fn trials(&self) -> (u64, u64) {
        unpack_trials(self.trials.load(Ordering::Acquire))
    }
}
