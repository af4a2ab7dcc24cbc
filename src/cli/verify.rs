//! `breakerbox verify`: walks the log's tamper-evident chain.

use super::history::{open, runtime_err};
use super::{CliError, Global};
use std::io::Write;

/// Check the log's tamper-evident chain: every event against its hash, every stream for events
/// removed other than by compaction, the append-only triggers. Exit code 1 when anything is wrong.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The heads it prints (each stream's last seq and hash) are the log's anchor: keep them
somewhere this machine cannot rewrite (a ticket, a log shipper, another host), and a later
`verify` whose chain no longer passes through them shows the log was rewritten whole.

EXAMPLES:
  breakerbox verify --db breakerbox.db
  breakerbox verify --db breakerbox.db --json > anchor.json     # keep it elsewhere
  breakerbox verify --db breakerbox.db --anchor anchor.json     # still on the chain?"
)]
pub struct VerifyArgs {
    /// A `verify --json` output kept from before: each of its heads must still be on the chain.
    #[arg(long, value_name = "FILE")]
    anchor: Option<std::path::PathBuf>,
}

pub fn verify(args: VerifyArgs, global: &Global) -> Result<(), CliError> {
    let anchors: Vec<breakerbox::journal::Head> = match &args.anchor {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::BadInput(format!("--anchor {}: {e}", path.display())))?;
            #[derive(serde::Deserialize)]
            struct Exported {
                heads: Vec<breakerbox::journal::Head>,
            }
            serde_json::from_str::<Exported>(&text)
                .map_err(|e| {
                    CliError::BadInput(format!(
                        "--anchor {}: not the JSON of `breakerbox verify --json`: {e}",
                        path.display()
                    ))
                })?
                .heads
        }
    };
    if let super::Target::File(_) = global.target() {
        global.existing_db()?;
    }
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let journal = open(global).await?;
        let r = journal.verify_against(&anchors).await.map_err(runtime_err);
        journal.close().await;
        r
    })?;
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if global.json {
        serde_json::to_writer(&mut out, &report).map_err(runtime_err)?;
        writeln!(out).map_err(io)?;
    } else {
        for f in &report.findings {
            writeln!(out, "{f}").map_err(io)?;
        }
        let verdict = if report.ok() { "verified" } else { "NOT verified" };
        write!(
            out,
            "{verdict}: {} events in {} streams",
            report.events,
            report.heads.len()
        )
        .map_err(io)?;
        if report.compacted > 0 {
            write!(out, ", followed across {} compacted", report.compacted).map_err(io)?;
        }
        if let Some(p) = report.unchained_through {
            write!(
                out,
                "; {} written before the chain existed, unchained up to position {p}",
                report.unchained
            )
            .map_err(io)?;
        }
        writeln!(out).map_err(io)?;
        writeln!(out, "heads (the anchor to keep elsewhere):").map_err(io)?;
        for h in &report.heads {
            writeln!(
                out,
                "  {} #{} {}",
                breakerbox::replay::printable(&h.stream),
                h.seq,
                h.hash.as_deref().unwrap_or("(unchained)")
            )
            .map_err(io)?;
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(CliError::Runtime(format!(
            "the log does not verify: {} finding(s)",
            report.findings.len()
        )))
    }
}
