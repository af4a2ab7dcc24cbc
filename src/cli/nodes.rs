//! `breakerbox nodes`: the nodes of a fleet's log and where each stands.

use super::{CliError, Global, Target};
use breakerbox::duration::parse_ms;
use breakerbox::journal::fleet::{NodeState, fleet_nodes};
use std::time::Duration;

/// The nodes of a fleet's log (--db postgres://…): live, stopped, lapsed (died or cut off) or
/// gone, since when, who holds each, and how far each shipped. A node stopped or lapsed longer
/// than --gone-after ago is gone and left out (its history stays; --all shows it).
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLES:
  breakerbox nodes --db postgres://breakerbox@db:5432/breakerbox
  breakerbox nodes --db postgres://… --all --json")]
pub struct NodesArgs {
    /// How long after its last sign of life a node is gone.
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = parse_ms)]
    gone_after: u64,
    /// Show gone nodes too.
    #[arg(long)]
    all: bool,
}

pub fn nodes(args: NodesArgs, global: &Global) -> Result<(), CliError> {
    let url = match global.target() {
        Target::Fleet(url) => url,
        Target::File(path) => {
            return Err(CliError::BadInput(format!(
                "--db {}: a log file has one node, its own; nodes lists a fleet's log (--db postgres://…)",
                path.display()
            )));
        }
    };
    let gone_after = Duration::from_millis(args.gone_after);
    let all = super::runtime()?
        .block_on(fleet_nodes(&url, gone_after, Duration::from_secs(5)))
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    let hidden = all.iter().filter(|n| n.state == NodeState::Gone).count();
    let shown: Vec<_> = all
        .into_iter()
        .filter(|n| args.all || n.state != NodeState::Gone)
        .collect();
    if global.json {
        let doc = serde_json::json!({
            "nodes": shown,
            "gone_hidden": if args.all { 0 } else { hidden },
            "gone_after_ms": args.gone_after,
        });
        println!("{doc}");
        return Ok(());
    }
    println!("{:<24} {:<8} {:<25} {:>9}  HOLDER", "NODE", "STATE", "SINCE", "SHIPPED");
    for n in &shown {
        let state = serde_json::to_value(n.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{:<24} {:<8} {:<25} {:>9}  {}",
            n.node,
            state,
            n.since_ms
                .map_or_else(|| "-".into(), |ms| super::history::fmt_time(ms.max(0) as u64)),
            n.shipped.map_or_else(|| "-".into(), |p| p.to_string()),
            n.holder
                .as_deref()
                .map_or_else(|| "-".into(), breakerbox::journal::Holder::describe_name)
        );
    }
    if !args.all && hidden > 0 {
        println!(
            "{hidden} gone nodes left out (stopped or lapsed over {} ago; --all shows them)",
            breakerbox::duration::format_ms(args.gone_after)
        );
    }
    Ok(())
}
