//! The operator commands `force-open`, `disable`, `reset` (and `status --reset`): against the
//! log file, applied by a running server that owns it, or here when none does.

use super::{CliError, Global};
use breakerbox::actor::remote::{self, RemoteOutcome};
use breakerbox::breaker::Command;
use breakerbox::config::{BreakerConfig, Config, LoadOptions};
use breakerbox::journal::{Journal, JournalOptions, Operator};
use std::io::Write;
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
    /// On every node of the fleet (--db postgres://…): appended once to the fleet's commands,
    /// applied and acknowledged by every live node (docs/fleet.md, "Fleet commands").
    #[arg(long)]
    fleet: bool,
    /// With --fleet: the override lapses after this long (e.g. 10m), on every node.
    #[arg(long, value_name = "DURATION", requires = "fleet")]
    ttl: Option<String>,
    /// With --fleet: how long to wait for every live node's acknowledgement.
    #[arg(long, value_name = "DURATION", default_value = "5s", requires = "fleet")]
    wait: String,
}

fn runtime_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

fn load(global: &Global) -> Result<Config, CliError> {
    Config::load(&LoadOptions::from_process(global.config.clone())).map_err(CliError::config)
}

/// What an operator command did, as printed (a line, or with `--json` one document).
#[derive(Debug, serde::Serialize)]
pub(super) struct Done {
    service: String,
    command: Command,
    from: breakerbox::breaker::State,
    to: breakerbox::breaker::State,
    /// The log position of its `operator_command` record.
    position: i64,
    /// The running process that applied it, when one owns the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_by: Option<String>,
    /// The dead owner whose lease this process took to apply it.
    #[serde(skip_serializing_if = "Option::is_none")]
    took_over_from: Option<String>,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} → {} at position {}",
            self.service, self.from, self.to, self.position
        )?;
        match (&self.applied_by, &self.took_over_from) {
            (Some(holder), _) => write!(f, " (applied by {holder})"),
            (None, Some(dead)) => write!(f, " (applied here; the log's owner was dead: {dead})"),
            (None, None) => Ok(()),
        }
    }
}

pub(super) async fn apply(journal: &Journal, b: &BreakerConfig, command: Command, why: &str) -> Result<Done, CliError> {
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
    let done = |from, to, position, applied_by, took_over_from| Done {
        service: b.key.clone(),
        command,
        from,
        to,
        position,
        applied_by,
        took_over_from,
    };
    let outcome = match remote::command(journal, request).await {
        Ok(o) => o,
        // A fleet override stands: the owner said why; nothing was applied.
        Err(e @ remote::RemoteError::Refused(_)) => return Err(CliError::BadInput(e.to_string())),
        Err(e) => return Err(runtime_err(e)),
    };
    Ok(match outcome {
        RemoteOutcome::AppliedByOwner {
            holder,
            record,
            position,
        } => done(record.from_state, record.to_state, position, Some(holder), None),
        RemoteOutcome::AppliedHere {
            from,
            to,
            position,
            took_over,
        } => done(from, to, position, None, took_over.map(|dead| dead.to_string())),
    })
}

/// `force-open NAME`, `disable NAME`, `reset NAME`.
pub fn command(args: CommandArgs, command: Command, global: &Global) -> Result<(), CliError> {
    breakerbox::journal::check_reason(&args.reason).map_err(|e| CliError::BadInput(format!("--reason: {e}")))?;
    if args.fleet {
        return fleet_command(args, command, global);
    }
    let config = load(global)?;
    let b = config.require(&args.name).map_err(CliError::BadInput)?.clone();
    let path = global.existing_db()?;
    let rt = super::runtime()?;
    let done = rt.block_on(async {
        let journal = Journal::open(&path, JournalOptions::default())
            .await
            .map_err(runtime_err)?;
        let r = apply(&journal, &b, command, &args.reason).await;
        journal.close().await;
        r
    })?;
    let mut out = std::io::stdout().lock();
    if global.json {
        serde_json::to_writer(&mut out, &done).map_err(runtime_err)?;
        writeln!(out).map_err(super::stdout_error)
    } else {
        writeln!(out, "{done}").map_err(super::stdout_error)
    }
}

/// `force-open NAME --fleet` (and `disable`, `reset`): the fleet-wide command.
fn fleet_command(args: CommandArgs, command: Command, global: &Global) -> Result<(), CliError> {
    use breakerbox::journal::fleet::issue_command;
    use breakerbox::journal::pg::FleetAsk;
    let super::Target::Fleet(url) = global.target() else {
        return Err(CliError::BadInput(
            "--fleet issues the command to the fleet's log: pass --db postgres://… (or BREAKERBOX_DB)".into(),
        ));
    };
    if command == Command::Reset && args.ttl.is_some() {
        return Err(CliError::BadInput(
            "--ttl: a reset is not an override; it has no ttl".into(),
        ));
    }
    let duration = |flag: &str, text: &str| {
        breakerbox::duration::parse_ms(text)
            .map(Duration::from_millis)
            .map_err(|e| CliError::BadInput(format!("{flag}: {e}")))
            .and_then(|d| {
                if d.is_zero() {
                    Err(CliError::BadInput(format!("{flag} {text}: must be more than 0")))
                } else {
                    Ok(d)
                }
            })
    };
    let ttl = args.ttl.as_deref().map(|t| duration("--ttl", t)).transpose()?;
    if let (Some(t), Some(text)) = (ttl, &args.ttl)
        && t > breakerbox::journal::pg::MAX_FLEET_TTL
    {
        return Err(CliError::BadInput(format!("--ttl {text}: at most 365 days")));
    }
    let wait = duration("--wait", &args.wait)?;
    if args.name.is_empty() || args.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(CliError::BadInput(format!("{:?}: not a breaker's name", args.name)));
    }
    let asked = FleetAsk {
        service: args.name.clone(),
        command,
        who: super::user_at_host(),
        origin: "cli".into(),
        why: args.reason.clone(),
    };
    let issued = super::runtime()?
        .block_on(issue_command(&url, &asked, ttl, wait, Duration::from_secs(5)))
        .map_err(runtime_err)?;
    let mut out = std::io::stdout().lock();
    if global.json {
        serde_json::to_writer(&mut out, &issued).map_err(runtime_err)?;
        writeln!(out).map_err(super::stdout_error)?;
    } else {
        writeln!(out, "{issued}").map_err(super::stdout_error)?;
    }
    if !issued.acks.is_empty() && issued.acks.iter().all(|a| a.outcome == "unknown_breaker") {
        return Err(CliError::BadInput(format!(
            "{}: no node has a breaker of that name",
            args.name
        )));
    }
    if issued.silent.is_empty() {
        Ok(())
    } else {
        Err(CliError::Runtime(format!(
            "{} of {} live nodes did not acknowledge within {}; they apply it when they read the fleet's log",
            issued.silent.len(),
            issued.live.len(),
            args.wait
        )))
    }
}
