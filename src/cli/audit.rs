//! `breakerbox audit`: the audit trail.

use super::history::{fmt_time, open, runtime_err, time_arg};
use super::{CliError, Global};
use breakerbox::replay::{self, AuditQuery, Kind};
use std::io::Write;

/// The audit trail: transitions, operator commands, policy changes, gaps, call stats.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "KINDS: transition, command, policy, gap, stats (rejections and fallbacks)
TIMES: now, RFC 3339 (2026-11-27T14:03:00Z) or an age (30m, 1h, 2d, 1h30m = that long ago)

EXAMPLES:
  breakerbox audit --service stripe --since 1h
  breakerbox audit --kind command --format csv > commands.csv"
)]
pub struct AuditArgs {
    /// Only this breaker.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Only these kinds (repeatable).
    #[arg(long, value_name = "KIND", value_parser = |s: &str| s.parse::<Kind>())]
    kind: Vec<Kind>,
    /// From this time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Until this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only entries after this log position (the `position` of the last entry of a page).
    #[arg(long, value_name = "POS", default_value_t = 0)]
    after: i64,
    /// At most this many entries.
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

pub fn audit(args: AuditArgs, global: &Global) -> Result<(), CliError> {
    let since = time_arg(&args.since, "--since", 0)?;
    let until = time_arg(&args.until, "--until", u64::MAX)?;
    let rt = super::runtime()?;
    let page = rt.block_on(async {
        let journal = open(global).await?;
        let q = AuditQuery {
            stream: args.service.clone(),
            kinds: args.kind.clone(),
            since_ms: since,
            until_ms: until,
            after_position: args.after,
            limit: args.limit,
        };
        let r = replay::audit(&journal, &q).await.map_err(runtime_err);
        journal.close().await;
        r
    })?;
    for d in &page.damaged {
        super::to_stderr(format_args!("warning: {}\n", replay::printable(&d.to_string())));
    }
    let entries = page.entries;
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    let format = if global.json { Format::Json } else { args.format };
    match format {
        Format::Json => {
            for e in &entries {
                serde_json::to_writer(&mut out, e).map_err(runtime_err)?;
                writeln!(out).map_err(io)?;
            }
        }
        Format::Csv => {
            writeln!(out, "position,time,service,kind,summary").map_err(io)?;
            for e in &entries {
                writeln!(
                    out,
                    "{},{},{},{},{}",
                    e.position,
                    fmt_time(e.at_ms as u64),
                    // Breaker names are plain (a-z, 0-9, `_-.`), quoted only where a formula could start.
                    if e.stream.starts_with(FORMULA) {
                        csv_cell(&e.stream)
                    } else {
                        replay::printable(&e.stream).into_owned()
                    },
                    e.kind.as_str(),
                    csv_cell(&e.summary)
                )
                .map_err(io)?;
            }
        }
        Format::Table => {
            for e in &entries {
                writeln!(
                    out,
                    "{:>8}  {}  {:<24} {:<10} {}",
                    e.position,
                    fmt_time(e.at_ms as u64),
                    replay::printable(&e.stream),
                    e.kind.as_str(),
                    replay::printable(&e.summary)
                )
                .map_err(io)?;
            }
        }
    }
    Ok(())
}

/// What a spreadsheet takes for the start of a formula.
const FORMULA: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// One CSV cell, quoted, that a spreadsheet shows as text: a cell starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return would be read as a formula (`=cmd|' /C calc'!A0`), so it gets
/// a leading `'` (OWASP's advice); quotes are doubled, control characters escaped.
fn csv_cell(text: &str) -> String {
    let text = replay::printable(text);
    let guard = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        "'"
    } else {
        ""
    };
    format!("\"{guard}{}\"", text.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_never_start_a_formula() {
        assert_eq!(csv_cell("=cmd|' /C calc'!A0"), "\"'=cmd|' /C calc'!A0\"");
        assert_eq!(csv_cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("reset by alice"), "\"reset by alice\"");
        assert_eq!(csv_cell("a\nb"), "\"a\\nb\"");
    }
}
