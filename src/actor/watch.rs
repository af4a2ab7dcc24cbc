//! Reloading the configuration of a running process: on SIGHUP, when the config file changes,
//! or when asked (`POST /api/config/reload`) — all through one [`Reloader`].

use super::registry::Registry;
use crate::config::{Apply, Config, ConfigError, LoadOptions, Reloadable};
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

/// The one way a running process reloads its configuration: reads and validates the file once,
/// then applies everything from that one read — the breakers' policies and every registered
/// [`Reloadable`] — or, if anything is wrong, nothing.
pub struct Reloader {
    registry: Arc<Registry>,
    options: LoadOptions,
    parts: Vec<Arc<dyn Reloadable>>,
    /// One reload at a time: a SIGHUP during `POST /api/config/reload` waits for it, so the
    /// parts never end up with the settings of two different reads.
    running: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// Reloads `registry`'s policies from `options` (the `--config` file and the environment).
    pub fn new(registry: Arc<Registry>, options: LoadOptions) -> Self {
        Reloader {
            registry,
            options,
            parts: Vec::new(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Also reloads `part` (e.g. `ApiState::settings()`, the alert notifier).
    pub fn with(mut self, part: Arc<dyn Reloadable>) -> Self {
        self.parts.push(part);
        self
    }

    /// Where the configuration is read from.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Loads the configuration again and applies all of it, or refuses it whole.
    pub async fn reload(&self) -> ReloadOutcome {
        let _one_at_a_time = self.running.lock().await;
        let prepared = match Config::load(&self.options) {
            Ok(config) => self.prepare(config).await,
            Err(e) => Err(e),
        };
        match prepared {
            Ok((config, changes)) => {
                let report = self.registry.reload(&config).await;
                for apply in changes {
                    apply();
                }
                tracing::info!(changed = report.changed.len(), added = ?report.added, removed = ?report.removed, "configuration reloaded");
                ReloadOutcome::Applied(report)
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the running configuration stays");
                ReloadOutcome::Refused(e)
            }
        }
    }

    /// Every part's change made ready, or every part's problems.
    async fn prepare(&self, config: Config) -> Result<(Config, Vec<Apply>), ConfigError> {
        let mut changes = Vec::new();
        let mut problems = Vec::new();
        for part in &self.parts {
            match part.prepare(&config).await {
                Ok(apply) => changes.push(apply),
                Err(e) => problems.extend(e.problems),
            }
        }
        if problems.is_empty() {
            Ok((config, changes))
        } else {
            Err(ConfigError { problems })
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
/// writes) from being applied when its first half happens to be valid; SIGHUP reloads at once.
/// Every reload goes through `reloader`. Each attempt's outcome is sent to `outcomes` if given
/// (tests, status pages). Must run inside a tokio runtime.
pub fn watch(
    reloader: Arc<Reloader>,
    poll: Duration,
    outcomes: Option<tokio::sync::mpsc::UnboundedSender<ReloadOutcome>>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // The baseline is read now, not when the task first runs: a change made right after `watch`
    // returns must count as a change.
    let mut seen = modified(reloader.options());
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(poll);
        // Contents that differ from `seen`, read at the previous poll: applied if still there.
        let mut changing: Option<Option<Vec<u8>>> = None;
        loop {
            let signalled = tokio::select! {
                _ = hangup.recv() => true,
                _ = tick.tick() => false,
            };
            let now = modified(reloader.options());
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
            let outcome = reloader.reload().await;
            if let Some(tx) = &outcomes {
                let _ = tx.send(outcome);
            }
        }
    }))
}
