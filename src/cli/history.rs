//! What the commands over the log's history share (`audit`, `replay`, `export`, `what-if`,
//! `rebuild`): time flags, opening the log, a service's configured policy, reading its history.

use super::{CliError, Global};
use breakerbox::actor::system_now_ms;
use breakerbox::breaker::Policy;
use breakerbox::config::{Config, LoadOptions, defaults};
use breakerbox::journal::{Journal, JournalOptions};
use breakerbox::replay::{self, parse_time};

pub(super) fn time_arg(text: &Option<String>, flag: &str, default: u64) -> Result<u64, CliError> {
    match text {
        Some(t) => parse_time(t, system_now_ms()).map_err(|e| CliError::BadInput(format!("{flag}: {e}"))),
        None => Ok(default),
    }
}

/// An optional time flag: `None` when not given.
pub(super) fn optional_time(text: &Option<String>, flag: &str) -> Result<Option<u64>, CliError> {
    text.as_ref()
        .map(|t| parse_time(t, system_now_ms()).map_err(|e| CliError::BadInput(format!("{flag}: {e}"))))
        .transpose()
}

pub(super) fn fmt_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// Opens the log `--db` names: the file, or one node's history in the fleet's log (`--node`,
/// else this host's node, else the only one), copied to a scratch log the commands read with the
/// same code (`breakerbox::journal::fleet::node_copy`).
pub(super) async fn open(global: &Global) -> Result<Journal, CliError> {
    use breakerbox::journal::fleet::{FleetError, node_copy};
    match global.target() {
        super::Target::Fleet(url) => {
            let asked = global.asked_node(None)?;
            match node_copy(&url, asked.as_deref(), std::time::Duration::from_secs(5)).await {
                Ok((journal, _node)) => Ok(journal),
                Err(FleetError::Node(why)) => Err(CliError::BadInput(why)),
                Err(e) => Err(CliError::Runtime(e.to_string())),
            }
        }
        super::Target::File(_) => {
            let path = global.existing_db()?;
            Journal::open(&path, JournalOptions::default())
                .await
                .map_err(|e| CliError::Runtime(format!("opening {}: {e}", path.display())))
        }
    }
}

/// The configured policy of a service, used where the log itself names none.
pub(super) fn configured(global: &Global, service: &str) -> Result<Policy, CliError> {
    Ok(configured_with_budget(global, service)?.0)
}

/// The configured policy and latency budget of a service.
pub(super) fn configured_with_budget(global: &Global, service: &str) -> Result<(Policy, u64), CliError> {
    let config = Config::load(&LoadOptions::from_process(global.config.clone())).map_err(super::CliError::config)?;
    Ok(config.breaker(service).map_or_else(
        || (defaults().policy().expect("defaults are valid"), 1_000),
        |b| (b.policy.clone(), b.latency_budget_ms()),
    ))
}

/// Opens the log, reads one service's history, closes the log.
pub(super) fn load_history(global: &Global, service: &str) -> Result<Vec<replay::Entry>, CliError> {
    super::runtime()?.block_on(async {
        let journal = open(global).await?;
        let r = history(&journal, service).await;
        journal.close().await;
        r
    })
}

pub(super) async fn history(journal: &Journal, service: &str) -> Result<Vec<replay::Entry>, CliError> {
    use std::io::IsTerminal;
    // Progress on a terminal only (never in pipes, files or --json output, which is stdout).
    let show = std::io::stderr().is_terminal();
    let mut shown = false;
    let entries = replay::history_with_progress(journal, service, |read| {
        if show && read >= 50_000 {
            super::to_stderr(format_args!("\rreading {service}: {read} events"));
            shown = true;
        }
    })
    .await
    .map_err(|e| CliError::Runtime(e.to_string()))?;
    if shown {
        super::to_stderr(format_args!("\n"));
    }
    for line in replay::damaged(&entries) {
        super::to_stderr(format_args!("warning: {service}: {}\n", replay::printable(&line)));
    }
    if entries.is_empty() {
        return Err(CliError::BadInput(format!(
            "no history for service {service:?} in this log"
        )));
    }
    Ok(entries)
}

pub(super) fn runtime_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}
