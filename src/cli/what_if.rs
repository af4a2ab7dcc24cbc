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
}

pub fn what_if(args: WhatIfArgs, global: &Global) -> Result<(), CliError> {
    let service = args
        .policy
        .service
        .clone()
        .ok_or_else(|| CliError::BadInput("what-if needs --service NAME".into()))?;
    let (from, to) = (optional_time(&args.from, "--from")?, optional_time(&args.to, "--to")?);
    let fallback = configured(global, &service)?;
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
