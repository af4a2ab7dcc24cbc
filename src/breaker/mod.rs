//! The pure core: one circuit breaker as a deterministic state machine.
//!
//! No actix, tokio, sqlx, clock reads or I/O here. Time comes in as an argument (milliseconds
//! on any fixed origin, usually the Unix epoch) and effects go out as [`Event`]s, in the shape of
//! raft-rs's `RawNode`:
//!
//! - [`Breaker::acquire`]: may a call run now? Gives a [`Decision`].
//! - [`Breaker::complete`]: how did it end?
//! - [`Breaker::tick`]: timers, OPEN to HALF_OPEN.
//! - [`Breaker::command`]: reset, force-open, disable.
//! - [`Breaker::set_policy`]: a new policy, state kept.
//! - [`Breaker::apply`]: fold one event (replay).
//!
//! The same code runs live (driven by an actor), in replay, in what-if and in `breakerbox
//! simulate`. See `docs/core.md` for the exact semantics.

pub mod codec;
mod event;
mod gauge;
mod machine;
mod policy;
mod window;

pub use event::{
    CallRecorded, Command, Event, Evidence, Outcome, PolicyApplied, QuorumEvidence, Reason, State, Transition,
    TrialAdmitted,
};
pub use gauge::{RuleGauge, gauges};
pub use machine::{AdmissionView, Breaker, Decision, Permit, Rates, Rejection, Verdict, View};
pub use policy::{
    MAX_OPEN_MS, MAX_WINDOW_BUCKETS, MAX_WINDOW_CALLS, OpenPolicy, Policy, PolicyError, SlidingWindow, SlowCallRule,
    TripRule,
};
pub use window::Counts;
