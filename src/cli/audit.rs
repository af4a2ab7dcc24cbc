//! `breakerbox audit`: the audit trail.

use super::history::{fmt_time, open, runtime_err, time_arg};
use super::{CliError, Global};
use breakerbox::replay::{self, AuditQuery, Kind};
use std::io::{IsTerminal, Write};

/// The audit trail: transitions, operator commands, policy changes, gaps, call stats.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "KINDS: transition, command, policy, gap, alert, stats (per-second rejections and fallbacks:
shown only when asked for with --kind stats)
ORDER: newest first on a terminal, log order otherwise (--order to choose); a line says how many
entries the limit left out.
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
    /// At most this many entries (the newest with --order newest, the oldest otherwise).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Newest or oldest first [default: newest on a terminal, oldest (log order) otherwise].
    #[arg(long, value_enum)]
    order: Option<Order>,
    /// Every node of a fleet's log (--db postgres://…), merged in time order; each entry names
    /// its node.
    #[arg(long)]
    all_nodes: bool,
}

/// Keeps the first or the last `limit` entries fed to it, in the order fed, and counts the rest.
struct Keeper {
    order: Order,
    limit: usize,
    kept: std::collections::VecDeque<replay::AuditEntry>,
    matched: u64,
}

impl Keeper {
    fn push(&mut self, e: replay::AuditEntry) {
        self.matched += 1;
        match self.order {
            Order::Oldest if self.kept.len() < self.limit => self.kept.push_back(e),
            Order::Oldest => {}
            Order::Newest if self.limit == 0 => {}
            Order::Newest => {
                if self.kept.len() == self.limit {
                    self.kept.pop_front();
                }
                self.kept.push_back(e);
            }
        }
    }

    /// The entries as shown, and how many the limit left out.
    fn done(self) -> (Vec<replay::AuditEntry>, u64) {
        let mut entries: Vec<_> = self.kept.into_iter().collect();
        if self.order == Order::Newest {
            entries.reverse();
        }
        let left_out = self.matched - entries.len() as u64;
        (entries, left_out)
    }
}

/// Every entry of `journal` that `q` matches, in log order (pages of 10,000), each handed to `f`;
/// the damaged events met.
async fn scan(
    journal: &breakerbox::journal::Journal,
    mut q: AuditQuery,
    f: &mut impl FnMut(replay::AuditEntry),
) -> Result<Vec<replay::Damaged>, breakerbox::journal::JournalError> {
    let mut damaged = Vec::new();
    loop {
        let page = replay::audit(journal, &q).await?;
        damaged.extend(page.damaged);
        if page.entries.is_empty() {
            return Ok(damaged);
        }
        q.after_position = page.scanned_to;
        page.entries.into_iter().for_each(&mut *f);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Order {
    Newest,
    Oldest,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Csv,
}

/// Entries as printed: which, and how many the limit left out.
#[derive(serde::Serialize)]
struct Shown {
    entries: Vec<replay::AuditEntry>,
    order: &'static str,
    /// Entries that matched but were left out by `--limit`.
    left_out: u64,
    /// Kinds not shown because they were not asked for (`stats` unless `--kind stats`).
    hidden_kinds: Vec<&'static str>,
    damaged: Vec<replay::Damaged>,
}

pub fn audit(args: AuditArgs, global: &Global) -> Result<(), CliError> {
    let since = time_arg(&args.since, "--since", 0)?;
    let until = time_arg(&args.until, "--until", u64::MAX)?;
    let format = if global.json { Format::Json } else { args.format };
    let terminal = std::io::stdout().is_terminal();
    let order = args.order.unwrap_or(if terminal && matches!(format, Format::Table) {
        Order::Newest
    } else {
        Order::Oldest
    });
    // Per-second stats records drown the rest: shown when asked for.
    let (kinds, hidden_kinds) = if args.kind.is_empty() {
        let kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| *k != Kind::Stats).collect();
        (kinds, vec![Kind::Stats.as_str()])
    } else {
        (args.kind.clone(), Vec::new())
    };
    let fleet = match (args.all_nodes, global.target()) {
        (false, _) => None,
        (true, super::Target::Fleet(url)) => {
            if global.node.is_some() {
                return Err(CliError::BadInput(
                    "--all-nodes reads every node: leave --node out".into(),
                ));
            }
            if args.after != 0 {
                return Err(CliError::BadInput(format!(
                    "--after {}: a position is one node's; with --all-nodes, page by --since",
                    args.after
                )));
            }
            Some(url)
        }
        (true, super::Target::File(path)) => {
            return Err(CliError::BadInput(format!(
                "--all-nodes reads a fleet's log (--db postgres://…); {} is one node's file",
                path.display()
            )));
        }
    };
    let q = AuditQuery {
        stream: args.service.clone(),
        kinds,
        since_ms: since,
        until_ms: until,
        after_position: args.after,
        limit: 10_000,
    };
    let mut keeper = Keeper {
        order,
        limit: args.limit,
        kept: std::collections::VecDeque::with_capacity(args.limit.min(10_000)),
        matched: 0,
    };
    let rt = super::runtime()?;
    let damaged = rt.block_on(async {
        match &fleet {
            // Every match is read in log order, the first or the last `limit` kept and the rest
            // counted, so what the limit left out can be said exactly.
            None => {
                let journal = open(global).await?;
                let r = scan(&journal, q, &mut |e| keeper.push(e)).await;
                journal.close().await;
                r.map_err(runtime_err)
            }
            // Each node's matches, merged by time (then node, then position: a stable order).
            Some(url) => {
                use breakerbox::journal::fleet::{FleetError, node_copy, shipped_nodes};
                let timeout = std::time::Duration::from_secs(5);
                let nodes = shipped_nodes(url, timeout).await.map_err(runtime_err)?;
                let (mut all, mut damaged) = (Vec::new(), Vec::new());
                for node in &nodes {
                    let (journal, _) = match node_copy(url, Some(node), timeout).await {
                        Ok(copy) => copy,
                        Err(FleetError::Node(why)) => return Err(CliError::BadInput(why)),
                        Err(e) => return Err(runtime_err(e)),
                    };
                    let r = scan(&journal, q.clone(), &mut |e| all.push(e)).await;
                    journal.close().await;
                    damaged.extend(r.map_err(runtime_err)?);
                }
                all.sort_by(|a, b| (a.at_ms, &a.node, a.position).cmp(&(b.at_ms, &b.node, b.position)));
                all.into_iter().for_each(|e| keeper.push(e));
                Ok(damaged)
            }
        }
    })?;
    let (entries, left_out) = keeper.done();
    let shown = Shown {
        entries,
        order: match (order, fleet.is_some()) {
            (Order::Newest, _) => "newest first",
            (Order::Oldest, false) => "log order",
            (Order::Oldest, true) => "time order",
        },
        left_out,
        hidden_kinds,
        damaged,
    };
    let all_nodes = fleet.is_some();
    for d in &shown.damaged {
        super::to_stderr(format_args!("warning: {}\n", replay::printable(&d.to_string())));
    }
    let entries = &shown.entries;
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    // What was left out, said on stderr beside a table or CSV (stdout keeps only the rows).
    let say_left_out = || {
        if shown.left_out > 0 {
            let which = if order == Order::Newest { "older" } else { "later" };
            super::to_stderr(format_args!(
                "{} {which} entries not shown (--limit {}{})\n",
                shown.left_out,
                args.limit,
                if order == Order::Oldest && !all_nodes {
                    format!(
                        "; the next page: --after {}",
                        entries.last().map_or(args.after, |e| e.position)
                    )
                } else {
                    String::new()
                }
            ));
        }
        if !shown.hidden_kinds.is_empty() {
            super::to_stderr(format_args!(
                "{} records hidden: --kind {} shows them\n",
                shown.hidden_kinds.join(", "),
                shown.hidden_kinds.join(" --kind ")
            ));
        }
    };
    match format {
        Format::Json => {
            // One document: the entries, what was left out and why.
            serde_json::to_writer(&mut out, &shown).map_err(runtime_err)?;
            writeln!(out).map_err(io)?;
        }
        Format::Csv => {
            writeln!(
                out,
                "{}position,time,service,kind,summary",
                if all_nodes { "node," } else { "" }
            )
            .map_err(io)?;
            for e in entries {
                if all_nodes {
                    write!(out, "{},", csv_cell(&e.node)).map_err(io)?;
                }
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
            say_left_out();
        }
        Format::Table => {
            let width = entries
                .iter()
                .map(|e| replay::printable(&e.stream).chars().count())
                .max()
                .unwrap_or(0)
                .max("service".len());
            let node_width = entries
                .iter()
                .map(|e| replay::printable(&e.node).chars().count())
                .max()
                .unwrap_or(0)
                .max("node".len());
            if all_nodes {
                write!(out, "{:<node_width$}  ", "node").map_err(io)?;
            }
            writeln!(
                out,
                "{:>8}  {:<24}  {:<width$}  {:<10}  summary",
                "position", "time", "service", "kind"
            )
            .map_err(io)?;
            for e in entries {
                if all_nodes {
                    write!(out, "{:<node_width$}  ", replay::printable(&e.node)).map_err(io)?;
                }
                writeln!(
                    out,
                    "{:>8}  {:<24}  {:<width$}  {:<10}  {}",
                    e.position,
                    fmt_time(e.at_ms as u64),
                    replay::printable(&e.stream),
                    e.kind.as_str(),
                    replay::printable(&e.summary)
                )
                .map_err(io)?;
            }
            say_left_out();
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
