//! The live breakers: one actix actor per breaker key driving the pure core, a registry that
//! starts them from the configuration and the log, and handles for the protected call path.
//!
//! ```text
//!  caller thread                         actor (own actix system thread)          journal thread
//!  handle.call(op, fut)
//!    gate.admit()  ── atomics ──────────  gate.publish(core.admission())
//!    fut.await (call_timeout)
//!    gate.done(outcome) ── mutex'd buffer ─▶ drain → core.complete → events ──submit──▶ group commit
//!    failure? one coalesced Flush ───────▶ (successes every flush_interval)
//! ```
//!
//! Admission never waits on a mailbox: CLOSED and DISABLED admit from the published state,
//! OPEN rejects at once with the time left, HALF_OPEN trial permits are taken by
//! compare-and-swap on an episode-tagged counter, so never more than `half_open_requests` per
//! episode, whatever the contention. See `docs/library.md`.

mod admission;
mod call;
mod command;
mod driver;
pub mod fleet;
mod gate;
mod handle;
mod registry;
pub mod remote;
mod reqwest;
mod service;
#[cfg(test)]
mod sim;
mod tower;
mod watch;

/// What `admission.rs` is built on: std's atomics here, loom's in the model test
/// (`tests/actor.rs`), which compiles that one file on its own.
mod admission_deps {
    pub(super) use crate::breaker::{AdmissionView, Permit, Rejection, State, Verdict};
    pub(super) use std::sync::atomic::{AtomicU64, Ordering};
}

pub use crate::clock::{Clock, system_now_ms};
pub use crate::config::{Apply, Reloadable};
pub use crate::journal::{CALL_STATS, CallStats, OPERATOR_COMMAND, Operator, OperatorCommand};
pub use call::{CallError, Classifier, Fallback, FallbackFn, FallbackReason, HasStatus, HttpStatuses, Results};
pub use driver::ActorOptions;
pub(crate) use handle::Admitted;
pub use handle::{BreakerHandle, HasCircuitBreaker};
pub use registry::{Registry, RegistryBuilder, RegistryError, RegistryOptions};
pub use reqwest::{BreakerMiddleware, Operation, Rejected, TimedOut};
pub use service::{CommandResult, Figures};
pub use tower::{BreakerLayer, BreakerService};
pub use watch::{ReloadOutcome, Reloader, watch};
