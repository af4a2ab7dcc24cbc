//! Commands over the log's history: `audit`, `replay`, `export`, `what-if`.

use super::policy_args::PolicyArgs;
use super::{CliError, Global};
use breakerbox::actor::system_now_ms;
use breakerbox::breaker::{Policy, State, Transition};
use breakerbox::config::{Config, LoadOptions, defaults};
use breakerbox::journal::{Journal, JournalOptions};
use breakerbox::replay::{self, AuditQuery, Kind, parse_time};
use serde_json::{Value, json};
use std::io::Write;

fn time_arg(text: &Option<String>, flag: &str, default: u64) -> Result<u64, CliError> {
    match text {
        Some(t) => parse_time(t, system_now_ms()).map_err(|e| CliError::BadInput(format!("{flag}: {e}"))),
        None => Ok(default),
    }
}

/// An optional time flag: `None` when not given.
fn optional_time(text: &Option<String>, flag: &str) -> Result<Option<u64>, CliError> {
    text.as_ref()
        .map(|t| parse_time(t, system_now_ms()).map_err(|e| CliError::BadInput(format!("{flag}: {e}"))))
        .transpose()
}

pub(super) fn fmt_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

async fn open(global: &Global) -> Result<Journal, CliError> {
    let path = global.existing_db()?;
    Journal::open(&path, JournalOptions::default())
        .await
        .map_err(|e| CliError::Runtime(format!("opening {}: {e}", path.display())))
}

/// The configured policy of a service, used where the log itself names none.
fn configured(global: &Global, service: &str) -> Result<Policy, CliError> {
    Ok(configured_with_budget(global, service)?.0)
}

/// The configured policy and latency budget of a service.
fn configured_with_budget(global: &Global, service: &str) -> Result<(Policy, u64), CliError> {
    let config = Config::load(&LoadOptions::from_process(global.config.clone())).map_err(super::CliError::config)?;
    Ok(config.breaker(service).map_or_else(
        || (defaults().policy().expect("defaults are valid"), 1_000),
        |b| (b.policy.clone(), b.latency_budget_ms()),
    ))
}

/// Opens the log, reads one service's history, closes the log.
fn load_history(global: &Global, service: &str) -> Result<Vec<replay::Entry>, CliError> {
    super::runtime()?.block_on(async {
        let journal = open(global).await?;
        let r = history(&journal, service).await;
        journal.close().await;
        r
    })
}

async fn history(journal: &Journal, service: &str) -> Result<Vec<replay::Entry>, CliError> {
    use std::io::IsTerminal;
    // Progress on a terminal only (never in pipes, files or --json output, which is stdout).
    let show = std::io::stderr().is_terminal();
    let mut shown = false;
    let entries = replay::history_with_progress(journal, service, |read| {
        if show && read >= 50_000 {
            eprint!("\rreading {service}: {read} events");
            shown = true;
        }
    })
    .await
    .map_err(|e| CliError::Runtime(e.to_string()))?;
    if shown {
        eprintln!();
    }
    if entries.is_empty() {
        return Err(CliError::BadInput(format!(
            "no history for service {service:?} in this log"
        )));
    }
    Ok(entries)
}

fn runtime_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

// ---------------------------------------------------------------------------------------------

/// The audit trail: transitions, operator commands, policy changes, gaps, call stats.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "KINDS: transition, command, policy, gap, stats (rejections and fallbacks)
TIMES: RFC 3339 (2026-11-27T14:03:00Z) or an age (30m, 1h, 2d = that long ago)

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
    let entries = rt.block_on(async {
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
                let summary = e.summary.replace('"', "\"\"");
                writeln!(
                    out,
                    "{},{},{},{},\"{}\"",
                    e.position,
                    fmt_time(e.at_ms as u64),
                    e.stream,
                    e.kind.as_str(),
                    summary
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
                    e.stream,
                    e.kind.as_str(),
                    e.summary
                )
                .map_err(io)?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// A breaker as it was at an instant, or its timeline over a period.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "TIMES: RFC 3339 (2026-11-27T14:03:00Z) or an age (10m = ten minutes ago)

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
        let entries = match &args.at {
            Some(_) => match journal.read_stream(&args.service, 0, 1).await {
                Ok(first) if first.is_empty() => Err(CliError::BadInput(format!(
                    "no history for service {:?} in this log",
                    args.service
                ))),
                Ok(_) => Ok(Vec::new()),
                Err(e) => Err(runtime_err(e)),
            },
            None => history(&journal, &args.service).await,
        };
        let state = match (&entries, &args.at) {
            (Ok(_), Some(at)) => {
                let at = parse_time(at, now).map_err(|e| CliError::BadInput(format!("--at: {e}")))?;
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
        let picture = replay::timeline_svg(&args.service, t.from_ms, t.to_ms, t.initial, &t.transitions, &t.minutes);
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

fn transition_line(t: &Transition) -> String {
    format!(
        "{}  {} → {}  {}  {}",
        fmt_time(t.at_ms),
        t.from,
        t.to,
        t.reason.as_str(),
        t.evidence.text()
    )
}

// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------

/// Rebuild the metrics projection from the whole log (it is derived data; the log is the truth).
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLE:\n  breakerbox rebuild --db breakerbox.db")]
pub struct RebuildArgs {}

pub fn rebuild(_: RebuildArgs, global: &Global) -> Result<(), CliError> {
    // A clear error naming the file when there is no log there (never a new empty one).
    global.existing_db()?;
    let rt = super::runtime()?;
    let started = std::time::Instant::now();
    let done = rt.block_on(async {
        let journal = open(global).await?;
        let mut projection = replay::Projection::open(&journal);
        let r = projection.rebuild(&journal, 10_000).await.map_err(runtime_err);
        journal.close().await;
        r
    })?;
    let secs = started.elapsed().as_secs_f64();
    if global.json {
        println!("{}", serde_json::to_string(&done).map_err(runtime_err)?);
    } else {
        println!(
            "rebuilt the metrics projection: {} events, {} call outcomes, up to position {} in {:.2} s",
            done.events, done.calls, done.position, secs
        );
    }
    Ok(())
}
