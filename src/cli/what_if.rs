//! `breakerbox what-if`: the recorded calls under another policy ([`breakerbox::replay::what_if`]).

use super::history::{configured, fmt_time, load_history, optional_time, runtime_err};
use super::policy_args::PolicyArgs;
use super::replay::transition_line;
use super::{CliError, Global};
use breakerbox::replay;
use serde_json::json;
use std::io::Write;

/// Re-run the recorded calls of a period through another policy and compare with what happened.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The recorded calls are exported (as `breakerbox export` does) and run through the recorded
policy with the given flags on top, by the same engine as `simulate`. Calls rejected for real
never ran and have no outcome: they are left out of both sides (so `would reject` counts only
calls that actually ran).

EXAMPLE:
  breakerbox what-if --service stripe --from 2h --failure-threshold 5"
)]
pub struct WhatIfArgs {
    /// From this time [default: the beginning].
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Until this time [default: now].
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Every node of the fleet's log (--db postgres://…): what happened, against one breaker
    /// shared by every node and against one per node with quorum hints (docs/fleet.md).
    #[arg(long)]
    all_nodes: bool,
    /// With --all-nodes: the quorum side's other nodes needed [default: [fleet.quorum] nodes, else 3].
    #[arg(long, value_name = "N", requires = "all_nodes")]
    quorum_nodes: Option<u32>,
    /// With --all-nodes: the quorum side's share of the nodes [default: [fleet.quorum], else 0.5].
    #[arg(long, value_name = "F", requires = "all_nodes")]
    quorum_fraction: Option<f64>,
    /// With --all-nodes: how recent the openings must be [default: [fleet.quorum], else 30s].
    #[arg(long, value_name = "DUR", requires = "all_nodes", value_parser = breakerbox::duration::parse_ms)]
    quorum_within: Option<u64>,
}

pub fn what_if(args: WhatIfArgs, global: &Global) -> Result<(), CliError> {
    let service = args
        .policy
        .service
        .clone()
        .ok_or_else(|| CliError::BadInput("what-if needs --service NAME".into()))?;
    let (from, to) = (optional_time(&args.from, "--from")?, optional_time(&args.to, "--to")?);
    let fallback = configured(global, &service)?;
    if args.all_nodes {
        return fleet(&args, global, &service, (from, to), &fallback);
    }
    let entries = load_history(global, &service)?;
    let r = replay::what_if(&entries, from, to, &fallback, &args.policy.knobs())
        .map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))?;
    let (start, end, actual, what) = (r.from_ms, r.to_ms, &r.actual, &r.alternative);
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if global.json {
        let v = json!({"service": service, "from_ms": start, "to_ms": end, "actual": actual, "what_if": what,
                       "verdict": r.verdict});
        serde_json::to_writer(&mut out, &v).map_err(runtime_err)?;
        return writeln!(out).map_err(io);
    }
    // A figure with an estimated part says how much of it is estimated.
    let fig = |n: u64, estimated: u64| {
        if estimated > 0 {
            format!("{n} ({estimated} est.)")
        } else {
            n.to_string()
        }
    };
    writeln!(out, "{service} from {} to {}", fmt_time(start), fmt_time(end)).map_err(io)?;
    let rows: [(&str, String, String); 8] = [
        (
            "times opened",
            actual.times_opened.to_string(),
            what.times_opened.to_string(),
        ),
        (
            "times forced open",
            actual.times_forced_open.to_string(),
            what.times_forced_open.to_string(),
        ),
        (
            "time open",
            format!("{:.1}s", actual.open_ms as f64 / 1e3),
            format!("{:.1}s", what.open_ms as f64 / 1e3),
        ),
        (
            "calls that reached it",
            fig(actual.calls_run, actual.calls_run_estimated),
            fig(what.calls_run, what.calls_run_estimated),
        ),
        (
            "  while it was failing",
            fig(actual.reached_failing, actual.reached_failing_estimated),
            fig(what.reached_failing, what.reached_failing_estimated),
        ),
        ("calls rejected", actual.rejected.to_string(), what.rejected.to_string()),
        (
            "  while it answered",
            fig(actual.rejected_while_healthy, actual.rejected_while_healthy_estimated),
            fig(what.rejected_while_healthy, what.rejected_while_healthy_estimated),
        ),
        (
            "transitions",
            actual.transitions.len().to_string(),
            what.transitions.len().to_string(),
        ),
    ];
    writeln!(out, "{:<24} {:>18} {:>18}", "", "actual", "what-if").map_err(io)?;
    for (name, a, w) in &rows {
        writeln!(out, "{name:<24} {a:>18} {w:>18}").map_err(io)?;
    }
    writeln!(out, "verdict: {}", r.verdict).map_err(io)?;
    writeln!(out, "what-if transitions:").map_err(io)?;
    for t in &what.transitions {
        writeln!(out, "  {}", transition_line(t)).map_err(io)?;
    }
    Ok(())
}

/// `what-if --all-nodes`: the fleet what-if ([`breakerbox::replay::fleet_what_if`]).
fn fleet(
    args: &WhatIfArgs,
    global: &Global,
    service: &str,
    (from, to): (Option<u64>, Option<u64>),
    fallback: &breakerbox::breaker::Policy,
) -> Result<(), CliError> {
    use breakerbox::journal::fleet::{FleetError, node_copy, shipped_nodes};
    let super::Target::Fleet(url) = global.target() else {
        return Err(CliError::BadInput(
            "--all-nodes reads a fleet's log: pass --db postgres://… (or BREAKERBOX_DB)".into(),
        ));
    };
    if global.node.is_some() {
        return Err(CliError::BadInput(
            "--all-nodes reads every node: leave --node out".into(),
        ));
    }
    let configured =
        breakerbox::config::Config::load(&breakerbox::config::LoadOptions::from_process(global.config.clone()))
            .map_err(CliError::config)?
            .fleet
            .quorum;
    let rule = breakerbox::replay::QuorumRule {
        nodes: args.quorum_nodes.or(configured.as_ref().map(|q| q.nodes)).unwrap_or(3),
        fraction: args
            .quorum_fraction
            .or(configured.as_ref().map(|q| q.fraction))
            .unwrap_or(0.5),
        within_ms: args
            .quorum_within
            .or(configured.as_ref().map(|q| q.within_ms))
            .unwrap_or(30_000),
    };
    if rule.nodes == 0 {
        return Err(CliError::BadInput("--quorum-nodes 0: expected 1 or more".into()));
    }
    if !(rule.fraction > 0.0 && rule.fraction <= 1.0) {
        return Err(CliError::BadInput(format!(
            "--quorum-fraction {}: expected more than 0 and at most 1",
            rule.fraction
        )));
    }
    if rule.within_ms == 0 {
        return Err(CliError::BadInput("--quorum-within 0: expected more than 0".into()));
    }
    let timeout = std::time::Duration::from_secs(5);
    let histories = super::runtime()?.block_on(async {
        let nodes = shipped_nodes(&url, timeout).await.map_err(runtime_err)?;
        let mut out = Vec::new();
        for node in nodes {
            let (journal, node) = match node_copy(&url, Some(&node), timeout).await {
                Ok(c) => c,
                Err(FleetError::Node(why)) => return Err(CliError::BadInput(why)),
                Err(e) => return Err(runtime_err(e)),
            };
            let entries = breakerbox::replay::history(&journal, service).await;
            journal.close().await;
            let entries = entries.map_err(runtime_err)?;
            if !entries.is_empty() {
                out.push((node, entries));
            }
        }
        Ok(out)
    })?;
    if histories.is_empty() {
        return Err(CliError::BadInput(format!(
            "--service {service}: no node of the fleet's log has its history"
        )));
    }
    let r = breakerbox::replay::fleet_what_if(&histories, from, to, fallback, &args.policy.knobs(), rule)
        .map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))?;
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if global.json {
        let v = json!({"service": service, "fleet_what_if": r});
        serde_json::to_writer(&mut out, &v).map_err(runtime_err)?;
        return writeln!(out).map_err(io);
    }
    writeln!(
        out,
        "{service} on {} nodes ({}) from {} to {}",
        r.nodes.len(),
        r.nodes.join(", "),
        fmt_time(r.from_ms),
        fmt_time(r.to_ms)
    )
    .map_err(io)?;
    let fig = |n: u64, estimated: u64| {
        if estimated > 0 {
            format!("{n} ({estimated} est.)")
        } else {
            n.to_string()
        }
    };
    let secs = |ms: Option<u64>| ms.map_or_else(|| "-".to_owned(), |ms| format!("{:.1}s", ms as f64 / 1e3));
    writeln!(
        out,
        "{:<30} {:>20} {:>20} {:>9} {:>13} {:>16}",
        "", "failed let through", "healthy rejected", "openings", "time to open", "time to recover"
    )
    .map_err(io)?;
    let quorum_name = format!(
        "{} breakers + quorum ({}, {}, {}s)",
        r.quorum.breakers,
        r.quorum_rule.nodes,
        r.quorum_rule.fraction,
        r.quorum_rule.within_ms / 1000
    );
    for (name, s) in [
        (format!("what happened ({} breakers)", r.actual.breakers), &r.actual),
        ("one shared breaker".to_owned(), &r.shared),
        (quorum_name, &r.quorum),
    ] {
        writeln!(
            out,
            "{name:<30} {:>20} {:>20} {:>9} {:>13} {:>16}",
            fig(s.failed_let_through, s.failed_let_through_estimated),
            fig(s.healthy_rejected, s.healthy_rejected_estimated),
            if s.by_quorum > 0 {
                format!("{} ({} q)", s.openings, s.by_quorum)
            } else {
                s.openings.to_string()
            },
            secs(s.time_to_open_ms),
            secs(s.time_to_recover_ms)
        )
        .map_err(io)?;
    }
    writeln!(out, "verdict: {}", r.verdict).map_err(io)
}
