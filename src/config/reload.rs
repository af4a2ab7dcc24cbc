//! What a part of a running process that takes settings from the configuration implements, so
//! one reload applies all of them or none ([`crate::actor::Reloader`] drives it). Here, below
//! the runtime and the parts (the HTTP API, the alert notifier), so none of them depends on
//! another for it.

use super::{Config, ConfigError};

/// A change a [`Reloadable`] made ready; running it applies it, and cannot fail.
pub type Apply = Box<dyn FnOnce() + Send>;

/// A part of a running process besides the breakers that takes settings from the
/// configuration: the HTTP API (latency budgets, tokens), the alert notifier (sinks).
#[async_trait::async_trait]
pub trait Reloadable: Send + Sync {
    /// Checks what it takes of `config` and makes the change ready, without applying it. An
    /// error refuses the whole reload: nothing of it is applied, anywhere.
    async fn prepare(&self, config: &Config) -> Result<Apply, ConfigError>;
}
