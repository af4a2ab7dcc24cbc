//! The operator commands `force-open`, `disable`, `reset` (and `status --reset`): against the
//! log file, applied by a running server that owns it, or here when none does.

use super::{CliError, Global};
use breakerbox::actor::remote::{self, RemoteOutcome};
use breakerbox::breaker::Command;
use breakerbox::config::{BreakerConfig, Config, LoadOptions};
use breakerbox::journal::{Journal, JournalOptions, Operator};
use std::time::Duration;

/// An operator command on one breaker.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Beside a running `serve` (or `demo`) on the same --db, the running process applies it
within a second; otherwise it is applied to the log directly. Recorded with who (user@host),
from where (cli) and why.

EXAMPLE:
  breakerbox force-open stripe --reason \"stripe status page: incident INC-123\"
  breakerbox reset stripe/customers.create --reason \"resolved\""
)]
pub struct CommandArgs {
    /// The breaker (a service, or service/operation).
    name: String,
    /// Why (recorded in the audit trail with who and from where).
    #[arg(long, value_name = "TEXT")]
    reason: String,
}

fn runtime_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

fn load(global: &Global) -> Result<Config, CliError> {
    Config::load(&LoadOptions::from_process(global.config.clone())).map_err(CliError::config)
}

pub(super) async fn apply(
    journal: &Journal,
    b: &BreakerConfig,
    command: Command,
    why: &str,
) -> Result<String, CliError> {
    let me = super::holder("cli");
    let request = remote::Request {
        target: &b.key,
        command,
        operator: Operator {
            who: super::user_at_host(),
            from: "cli".into(),
            why: why.to_owned(),
        },
        me: &me,
        policy: b.policy.clone(),
        // The ttl serve and demo take the lease with (recorded with it: a holder's own decides).
        lease_ttl: breakerbox::journal::DEFAULT_LEASE_TTL,
        wait: Duration::from_secs(5),
    };
    Ok(match remote::command(journal, request).await.map_err(runtime_err)? {
        RemoteOutcome::AppliedByOwner {
            holder,
            record,
            position,
        } => format!(
            "{}: {} → {} at position {position} (applied by {holder})",
            b.key, record.from_state, record.to_state
        ),
        RemoteOutcome::AppliedHere {
            from,
            to,
            position,
            took_over: None,
        } => format!("{}: {from} → {to} at position {position}", b.key),
        RemoteOutcome::AppliedHere {
            from,
            to,
            position,
            took_over: Some(dead),
        } => format!(
            "{}: {from} → {to} at position {position} (applied here; the log's owner was dead: {dead})",
            b.key
        ),
    })
}

/// `force-open NAME`, `disable NAME`, `reset NAME`.
pub fn command(args: CommandArgs, command: Command, global: &Global) -> Result<(), CliError> {
    breakerbox::journal::check_reason(&args.reason).map_err(|e| CliError::BadInput(format!("--reason: {e}")))?;
    let config = load(global)?;
    let b = config.require(&args.name).map_err(CliError::BadInput)?.clone();
    let path = global.existing_db()?;
    let rt = super::runtime()?;
    let line = rt.block_on(async {
        let journal = Journal::open(&path, JournalOptions::default())
            .await
            .map_err(runtime_err)?;
        let r = apply(&journal, &b, command, &args.reason).await;
        journal.close().await;
        r
    })?;
    println!("{line}");
    Ok(())
}
