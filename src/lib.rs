//! breakerbox: circuit breakers whose every decision is an event in a durable log.
//!
//! This release holds the pure core ([`breaker`]) and the trace simulator ([`simulate`]);
//! see `docs/architecture.md` for the layers and what comes next.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod actor;
pub mod breaker;
pub mod config;
pub mod duration;
pub mod journal;
pub mod simulate;

// The README's examples are compiled and run as doctests, so they cannot rot.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc = include_str!("../docs/library.md")]
#[cfg(doctest)]
pub struct LibraryDoctests;
