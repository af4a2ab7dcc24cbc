//! `breakerbox export`: the recorded calls as a `simulate` trace.

use super::history::{configured, load_history, optional_time, runtime_err};
use super::{CliError, Global};
use breakerbox::replay;
use std::io::Write;

/// The recorded calls as a `simulate` trace (JSON lines on stdout).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The trace is self-contained: the policy in force first (config-file keys) and again where it
changed, operator commands as command lines, and the breaker's state first when --from starts
mid-history. `breakerbox simulate < trace` reproduces the transitions the log recorded.
Calls rejected for real never ran, have no outcome, and are not in the trace.

EXAMPLE:
  breakerbox export --service stripe --from 2h > incident.jsonl"
)]
pub struct ExportArgs {
    /// The breaker.
    #[arg(long, value_name = "NAME")]
    service: String,
    /// From this time [default: the beginning].
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Until this time [default: the end].
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
}

pub fn export(args: ExportArgs, global: &Global) -> Result<(), CliError> {
    let (from, to) = (optional_time(&args.from, "--from")?, optional_time(&args.to, "--to")?);
    let fallback = configured(global, &args.service)?;
    let entries = load_history(global, &args.service)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in replay::export(&entries, from, to, &fallback) {
        serde_json::to_writer(&mut out, &line.to_json()).map_err(runtime_err)?;
        writeln!(out).map_err(runtime_err)?;
    }
    out.flush().map_err(runtime_err)
}
