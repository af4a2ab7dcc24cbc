//! breakerbox: circuit breakers whose every decision is an event in a durable log.
//!
//! - [`breaker`]: the pure, deterministic state machine (time in, events out).
//! - [`simulate`]: the core stepped over a trace of calls (`breakerbox simulate`).
//! - [`knobs`]: the settings' vocabulary (keys, values, sources, embedded defaults) → a policy.
//! - [`config`]: policies from embedded defaults, a TOML file and the seed's environment variables.
//! - [`journal`]: the append-only SQLite event log: group commit, recovery, retention.
//! - [`actor`]: the live breakers: one actor per breaker, the protected call path, integrations.
//! - [`alerts`]: webhooks (Alertmanager, Slack) when a breaker opens, delivered from the log.
//!
//! See `docs/architecture.md` for the layers and `docs/library.md` for embedding.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actor;
pub mod alerts;
pub mod app;
pub mod breaker;
pub mod clock;
pub mod config;
pub mod demo;
pub mod duration;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod journal;
pub mod knobs;
pub mod proxy;
pub mod replay;
pub mod simulate;
pub mod tls;

#[cfg(test)]
mod architecture;

// The README's examples are compiled and run as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../docs/library.md")]
#[cfg(doctest)]
pub struct LibraryDoctests;
