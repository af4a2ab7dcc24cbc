//! `breakerbox replay`: a breaker at an instant, or its timeline over a period.

use super::history::{configured_with_budget, fmt_time, history, open, runtime_err, time_arg};
use super::{CliError, Global};
use breakerbox::actor::system_now_ms;
use breakerbox::breaker::{State, Transition};
use breakerbox::replay::{self, parse_time};
use serde_json::{Value, json};
use std::io::Write;

/// A breaker as it was at an instant, or its timeline over a period.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "TIMES: now, RFC 3339 (2026-11-27T14:03:00Z) or an age (10m = ten minutes ago; 1h30m)

EXAMPLES:
  breakerbox replay --service stripe --at 10m
  breakerbox replay --service stripe --from 2026-11-27T14:00:00Z --to 2026-11-27T14:30:00Z"
)]
pub struct ReplayArgs {
    /// The breaker (a service, or service/operation).
    #[arg(long, value_name = "NAME")]
    service: String,
    /// The instant to show the breaker at.
    #[arg(long, value_name = "TIME", conflicts_with_all = ["from", "to"])]
    at: Option<String>,
    /// Start of the timeline.
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// End of the timeline [default: now].
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Also draw the timeline (state bands, failure rate and p95 latency per minute, operator
    /// actions) as an SVG picture into FILE.
    #[arg(long, value_name = "FILE", requires = "from")]
    svg: Option<std::path::PathBuf>,
}

pub fn replay(args: ReplayArgs, global: &Global) -> Result<(), CliError> {
    if args.at.is_none() && args.from.is_none() {
        return Err(CliError::BadInput(
            "replay needs --at TIME, or --from TIME [--to TIME]".into(),
        ));
    }
    let (fallback, budget) = configured_with_budget(global, &args.service)?;
    let rt = super::runtime()?;
    let now = system_now_ms();
    let (entries, state) = rt.block_on(async {
        let journal = open(global).await?;
        // `--at` reads only what the instant depends on (`replay::state_at`); the timeline needs
        // the whole history.
        let mut began_ms = None;
        let entries = match &args.at {
            Some(_) => match journal.read_stream(&args.service, 0, 1).await {
                Ok(first) if first.is_empty() => Err(CliError::BadInput(format!(
                    "no history for service {:?} in this log",
                    args.service
                ))),
                Ok(first) => {
                    began_ms = first.first().map(|e| e.recorded_at.max(0) as u64);
                    Ok(Vec::new())
                }
                Err(e) => Err(runtime_err(e)),
            },
            None => history(&journal, &args.service).await,
        };
        let state = match (&entries, &args.at) {
            (Ok(_), Some(at_text)) => {
                let at = parse_time(at_text, now).map_err(|e| CliError::BadInput(format!("--at: {e}")))?;
                // Nothing is known before the stream's first event: no state is made up for it.
                if let Some(began) = began_ms.filter(|b| at < *b) {
                    journal.close().await;
                    return Err(CliError::BadInput(format!(
                        "--at {at_text}: {} is before {}'s log began ({}): no state is known then",
                        fmt_time(at),
                        args.service,
                        fmt_time(began)
                    )));
                }
                Some(
                    replay::state_at(&journal, &args.service, at, &fallback, budget)
                        .await
                        .map_err(runtime_err)?,
                )
            }
            _ => None,
        };
        journal.close().await;
        Ok::<_, CliError>((entries?, state))
    })?;
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if let Some(s) = state {
        for line in &s.damaged {
            super::to_stderr(format_args!("warning: {}: {}\n", s.stream, replay::printable(line)));
        }
        if global.json {
            serde_json::to_writer(&mut out, &s).map_err(runtime_err)?;
            return writeln!(out).map_err(io);
        }
        let v = &s.view;
        writeln!(out, "{} at {}", s.stream, fmt_time(s.at_ms)).map_err(io)?;
        // A breaker that never changed state has been in it since the log began.
        let since = if v.episode == 0 {
            "since its first event".to_owned()
        } else {
            format!("since {}", fmt_time(v.entered_at_ms))
        };
        writeln!(
            out,
            "  state               {} (episode {}, {since})",
            v.state, v.episode
        )
        .map_err(io)?;
        if let Some(left) = s.open_remaining_ms {
            writeln!(out, "  OPEN for another    {} ms", left).map_err(io)?;
        }
        writeln!(out, "  failures in a row   {}", v.consecutive_failures).map_err(io)?;
        if let Some(w) = &v.window {
            writeln!(
                out,
                "  window              {} calls, {} failed, {} slow",
                w.calls, w.failures, w.slow
            )
            .map_err(io)?;
        }
        if v.state == State::HalfOpen {
            writeln!(
                out,
                "  trial permits out   {} ({} succeeded)",
                v.trials_issued, v.trial_successes
            )
            .map_err(io)?;
        }
        let keys = breakerbox::config::policy_keys(&s.policy);
        let shown: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "  policy in force     {}", shown.join(" ")).map_err(io)?;
        if let Some(t) = &s.last_transition {
            writeln!(out, "  last transition     {}", transition_line(t)).map_err(io)?;
        }
        let h = &s.health;
        writeln!(out, "  health              {}/100", h.score).map_err(io)?;
        for (name, c) in [
            ("success", &h.success),
            ("latency", &h.latency),
            ("stability", &h.stability),
        ] {
            writeln!(out, "    {name:<10} {:>5.1}/{:<3} {}", c.points, c.max, c.why).map_err(io)?;
        }
        if s.compacted {
            writeln!(
                out,
                "  note: per-call detail before the compaction watermark is summarized"
            )
            .map_err(io)?;
        }
        return Ok(());
    }
    let from = time_arg(&args.from, "--from", 0)?;
    let to = time_arg(&args.to, "--to", u64::MAX)?;
    let t = replay::timeline(&entries, from, to.min(now), &fallback);
    if let Some(file) = &args.svg {
        let picture = replay::timeline_svg(&args.service, &t);
        std::fs::write(file, picture).map_err(|e| CliError::Runtime(format!("writing {}: {e}", file.display())))?;
    }
    if global.json {
        let minutes: Vec<Value> = t.minutes.values().map(minute_json).collect();
        let v = json!({"service": args.service, "transitions": t.transitions, "minutes": minutes});
        serde_json::to_writer(&mut out, &v).map_err(runtime_err)?;
        return writeln!(out).map_err(io);
    }
    writeln!(out, "{}: {} transitions", args.service, t.transitions.len()).map_err(io)?;
    for tr in &t.transitions {
        writeln!(out, "  {}", transition_line(tr)).map_err(io)?;
    }
    writeln!(
        out,
        "per minute: calls, failed, timed out, slow, rejected, p50/p95/p99 latency (ms, histogram bucket bounds)"
    )
    .map_err(io)?;
    let ms = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for m in t.minutes.values() {
        writeln!(
            out,
            "  {}  {:>6} {:>6} {:>6} {:>6} {:>6}  {}/{}/{}",
            fmt_time(m.minute_ms),
            m.calls(),
            m.failures,
            m.timeouts,
            m.slow,
            m.rejected,
            ms(m.latency_quantile_ms(0.5)),
            ms(m.latency_quantile_ms(0.95)),
            ms(m.latency_quantile_ms(0.99))
        )
        .map_err(io)?;
    }
    Ok(())
}

/// A minute as `replay --json` and `/api/history` show it.
fn minute_json(m: &replay::Minute) -> Value {
    json!({"minute_ms": m.minute_ms, "calls": m.calls(), "successes": m.successes, "failures": m.failures,
           "timeouts": m.timeouts, "ignored": m.ignored, "cancelled": m.cancelled, "slow": m.slow,
           "rejected": m.rejected, "fallbacks": m.fallbacks,
           "p50_ms": m.latency_quantile_ms(0.5), "p95_ms": m.latency_quantile_ms(0.95),
           "p99_ms": m.latency_quantile_ms(0.99)})
}

pub(super) fn transition_line(t: &Transition) -> String {
    format!(
        "{}  {} → {}  {}  {}",
        fmt_time(t.at_ms),
        t.from,
        t.to,
        t.reason.as_str(),
        t.evidence.text()
    )
}
