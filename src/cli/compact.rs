//! `breakerbox compact`: retention by hand (a running server does it periodically).

use super::{CliError, Global};
use breakerbox::actor::system_now_ms as now_ms;
use breakerbox::duration::parse_ms;
use breakerbox::journal::{Claim, DEFAULT_LEASE_TTL, Journal, JournalOptions};

/// Fold per-call outcomes older than the horizon into per-minute summaries and delete them.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Transitions, operator commands, policy changes, snapshots and alert deliveries are kept
forever; only per-call outcome batches older than the horizon (and older than their breaker's
latest snapshot, which recovery starts from) are replaced by per-minute summaries.

EXAMPLE:
  breakerbox compact --db breakerbox.db --horizon 7d"
)]
pub struct Args {
    /// Keep per-call outcomes of this long; older ones become per-minute summaries.
    #[arg(long, value_name = "DUR", default_value = "7d", value_parser = parse_ms)]
    horizon: u64,
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let path = global.existing_db()?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let journal = Journal::open(&path, JournalOptions::default())
            .await
            .map_err(|e| CliError::Runtime(format!("opening {}: {e}", path.display())))?;
        let me = super::holder("compact");
        // A dead owner (gone from this host, or its lease lapsed) does not stop retention.
        let claim = journal
            .claim_lease(&me, DEFAULT_LEASE_TTL)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        if let Claim::Held { lease, standing } = claim {
            journal.close().await;
            return Err(CliError::Runtime(format!(
                "{} is owned by a running process, which compacts it itself: {}; nothing done",
                path.display(),
                lease.account(standing, now_ms(), DEFAULT_LEASE_TTL)
            )));
        }
        let report = journal.compact(args.horizon, now_ms()).await;
        journal.close().await;
        let report = report.map_err(|e| CliError::Runtime(e.to_string()))?;
        if global.json {
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|e| CliError::Runtime(e.to_string()))?
            );
        } else {
            println!(
                "compacted {} calls in {} batches into {} summaries; per-call outcomes now kept from {} on",
                report.calls,
                report.batches,
                report.summaries,
                breakerbox::duration::format_ms(args.horizon)
            );
            if !report.streams_without_snapshot.is_empty() {
                println!(
                    "kept (no snapshot yet, recovery needs their calls): {}",
                    report.streams_without_snapshot.join(", ")
                );
            }
        }
        Ok(())
    })
}
