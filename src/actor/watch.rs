//! Reloading the configuration of running breakers: on SIGHUP, and when the config file changes.

use super::registry::Registry;
use crate::config::{Config, LoadOptions};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What one reload attempt did.
#[derive(Clone, Debug, PartialEq)]
pub enum ReloadOutcome {
    /// The new configuration is in force (state, windows and trial permits kept).
    Applied(crate::config::Reload),
    /// The new configuration has problems: nothing of it was applied; the old one stays.
    Refused(crate::config::ConfigError),
}

/// Loads the configuration again and applies it to `registry`, or refuses it whole.
pub async fn reload(registry: &Registry, options: &LoadOptions) -> ReloadOutcome {
    match Config::load(options) {
        Ok(config) => {
            let report = registry.reload(&config).await;
            tracing::info!(changed = report.changed.len(), added = ?report.added, removed = ?report.removed, "configuration reloaded");
            ReloadOutcome::Applied(report)
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
            ReloadOutcome::Refused(e)
        }
    }
}

fn modified(options: &LoadOptions) -> Option<SystemTime> {
    let path = options
        .path
        .clone()
        .or_else(|| options.env.get("CIRCUIT_BREAKER_CONFIG").map(Into::into))?;
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads on SIGHUP and whenever the config file's modification time changes (checked every
/// `poll`), until the returned task is aborted. Each attempt's outcome is sent to `outcomes` if
/// given (tests, status pages). Must run inside a tokio runtime.
pub fn watch(
    registry: Arc<Registry>,
    options: LoadOptions,
    poll: Duration,
    outcomes: Option<tokio::sync::mpsc::UnboundedSender<ReloadOutcome>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let mut seen = modified(&options);
        let mut tick = tokio::time::interval(poll);
        loop {
            let signalled = tokio::select! {
                _ = hangup.recv() => true,
                _ = tick.tick() => false,
            };
            let now = modified(&options);
            if !signalled && now == seen {
                continue;
            }
            seen = now;
            let outcome = reload(&registry, &options).await;
            if let Some(tx) = &outcomes {
                let _ = tx.send(outcome);
            }
        }
    }))
}
