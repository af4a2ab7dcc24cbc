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
        let v = json!({"service": service, "from_ms": start, "to_ms": end, "actual": actual, "what_if": what});
        serde_json::to_writer(&mut out, &v).map_err(runtime_err)?;
        return writeln!(out).map_err(io);
    }
    writeln!(out, "{service} from {} to {}", fmt_time(start), fmt_time(end)).map_err(io)?;
    writeln!(out, "{:<28} {:>14} {:>14}", "", "actual", "what-if").map_err(io)?;
    writeln!(
        out,
        "{:<28} {:>14} {:>14}",
        "transitions",
        actual.transitions.len(),
        what.transitions.len()
    )
    .map_err(io)?;
    writeln!(
        out,
        "{:<28} {:>14} {:>14}",
        "times opened",
        actual.times_opened(),
        what.times_opened()
    )
    .map_err(io)?;
    writeln!(
        out,
        "{:<28} {:>13.1}s {:>13.1}s",
        "time open",
        actual.open_ms as f64 / 1e3,
        what.open_ms as f64 / 1e3
    )
    .map_err(io)?;
    writeln!(
        out,
        "{:<28} {:>14} {:>14}",
        "recorded calls that ran", actual.calls_run, what.calls_run
    )
    .map_err(io)?;
    writeln!(out, "{:<28} {:>14} {:>14}", "recorded calls rejected", 0, what.rejected).map_err(io)?;
    writeln!(
        out,
        "{:<28} {:>14} {:>14}",
        "  of which failed for real", "-", what.failed_calls_rejected
    )
    .map_err(io)?;
    writeln!(out, "what-if transitions:").map_err(io)?;
    for t in &what.transitions {
        writeln!(out, "  {}", transition_line(t)).map_err(io)?;
    }
    Ok(())
}
