//! Reloading the configuration of running breakers: on SIGHUP, and when the config file changes.

use super::registry::Registry;
use crate::config::{Config, LoadOptions};
use std::sync::Arc;
use std::time::Duration;

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

/// The config file's contents: compared rather than its modification time, which the kernel
/// stamps with a coarse clock (two writes within one tick look unchanged).
fn modified(options: &LoadOptions) -> Option<Vec<u8>> {
    let path = options
        .path
        .clone()
        .or_else(|| options.env.get("CIRCUIT_BREAKER_CONFIG").map(Into::into))
        .unwrap_or_else(|| crate::config::DEFAULT_PATH.into());
    std::fs::read(path).ok()
}

/// Reloads on SIGHUP and whenever the config file's contents change (checked every
/// `poll`) and then stay the same for one more poll, until the returned task is aborted. The
/// wait is what keeps a file caught half-written (an editor or `echo >` truncates it, then
/// writes) from being applied when its first half happens to be valid; SIGHUP reloads at once. Each attempt's outcome is sent to `outcomes` if
/// given (tests, status pages). Must run inside a tokio runtime.
pub fn watch(
    registry: Arc<Registry>,
    options: LoadOptions,
    poll: Duration,
    outcomes: Option<tokio::sync::mpsc::UnboundedSender<ReloadOutcome>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // The baseline is read now, not when the task first runs: a change made right after `watch`
    // returns must count as a change.
    let mut seen = modified(&options);
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        // Contents that differ from `seen`, read at the previous poll: applied if still there.
        let mut changing: Option<Option<Vec<u8>>> = None;
        loop {
            let signalled = tokio::select! {
                _ = hangup.recv() => true,
                _ = tick.tick() => false,
            };
            let now = modified(&options);
            if !signalled && now == seen {
                changing = None;
                continue;
            }
            if !signalled && changing.as_ref() != Some(&now) {
                changing = Some(now);
                continue;
            }
            changing = None;
            seen = now;
            let outcome = reload(&registry, &options).await;
            if let Some(tx) = &outcomes {
                let _ = tx.send(outcome);
            }
        }
    }))
}
