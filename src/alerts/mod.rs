//! Alerts: someone hears about it when a breaker opens.
//!
//! Alerts are derived from the log, so they survive restarts. A breaker opening (or being
//! forced open) starts an *episode* that fires; its closing resolves it, once it has stayed
//! closed for the quiet period (flaps within it are one episode). The [`Notifier`] tails the log
//! from its own checkpoint (stored in SQLite beside the log), keeps what it must say in an outbox
//! table, and delivers every firing and resolved message at least once to every configured sink
//! (`[[alerts.webhooks]]`): Alertmanager's webhook format or Slack's. Each attempt is an
//! `alert_delivery` event in the log (`breakerbox audit --kind alert`).
//!
//! - [`episode`] (pure): transitions → episodes → [`Notice`]s, with the quiet period.
//! - [`payload`] (pure): a notice → an Alertmanager v4 or Slack body.
//! - [`retry`] (pure): backoff with jitter, `Retry-After`, what to retry, per-sink rate limits.
//! - [`notifier`] (I/O): the tailing consumer, the outbox, HTTP delivery.
//!
//! ```no_run
//! # async fn run(journal: std::sync::Arc<breakerbox::journal::Journal>, config: breakerbox::config::Config)
//! # -> Result<(), breakerbox::alerts::AlertsError> {
//! use breakerbox::alerts::{Notifier, NotifierOptions};
//! // In the process that runs the breakers (it holds the writer lease), when sinks are configured:
//! if config.alerts.enabled() {
//!     let notifier = Notifier::start(journal.clone(), config.alerts.clone(), NotifierOptions::default()).await?;
//!     // … serve …
//!     notifier.stop().await;
//! }
//! # Ok(()) }
//! ```
//!
//! See `docs/alerts.md`.

pub mod episode;
pub mod notifier;
mod outbox;
pub mod payload;
pub mod retry;

pub use episode::{Episodes, FleetScope, Notice, fingerprint};
pub use notifier::{
    Alerting, AlertsError, Notifier, NotifierHandle, NotifierOptions, Pump, Sent, TestResult, send, send_test,
};
pub use outbox::{OutboxItem, OutboxState};
pub use payload::Links;
