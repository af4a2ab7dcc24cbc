//! `breakerbox status` (the seed's command): the health report of every breaker, read from the
//! log, beside a running server or not; `--reset` resets through [`super::command`].

use super::{CliError, Global};
use breakerbox::actor::system_now_ms;
use breakerbox::breaker::{Command, Outcome, State};
use breakerbox::config::{BreakerConfig, Config, LoadOptions};
use breakerbox::replay::{BreakerNow, Projection, health_report};
use serde_json::json;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Every breaker's state, health and recent calls; or reset them.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A table on a terminal; otherwise (or with --json) one JSON document, the same as
GET /api/health/circuit-breakers answers.

EXAMPLES:
  breakerbox status
  breakerbox status --service=stripe --test
  breakerbox status --reset --service stripe --reason \"provider fixed the outage\"
  breakerbox status --reset --all --reason \"provider fixed the outage\""
)]
pub struct StatusArgs {
    /// Only this breaker (a service, or service/operation).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    /// Send a real request to each service's health_url and report latency and outcome.
    #[arg(long)]
    test: bool,
    /// Reset the breaker named by --service (or, with --all, every breaker) to CLOSED.
    #[arg(long, requires = "reason")]
    reset: bool,
    /// With --reset: every breaker.
    #[arg(long, requires = "reset", conflicts_with = "service")]
    all: bool,
    /// Why (recorded in the audit trail with who and from where).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// Every live node's view, merged per breaker (--db postgres://…): each node's state and
    /// score, the fleet's health, the spread and the outlier nodes.
    #[arg(long, conflicts_with_all = ["reset", "test"])]
    fleet: bool,
}

fn runtime_err(e: impl std::fmt::Display) -> CliError {
    CliError::Runtime(e.to_string())
}

fn load(global: &Global) -> Result<Config, CliError> {
    Config::load(&LoadOptions::from_process(global.config.clone())).map_err(CliError::config)
}

fn selected<'c>(config: &'c Config, service: Option<&str>) -> Result<Vec<&'c BreakerConfig>, CliError> {
    match service {
        Some(s) => Ok(vec![config.require(s).map_err(CliError::BadInput)?]),
        None => Ok(config.breakers.iter().collect()),
    }
}

fn fmt_ago(now: u64, at: u64) -> String {
    let s = now.saturating_sub(at) / 1_000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3_599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3_600),
    }
}

pub fn status(args: StatusArgs, global: &Global) -> Result<(), CliError> {
    if let Some(why) = &args.reason {
        breakerbox::journal::check_reason(why).map_err(|e| CliError::BadInput(format!("--reason: {e}")))?;
    }
    if args.reset && args.service.is_none() && !args.all {
        return Err(CliError::BadInput(
            "--reset needs --service NAME, or --all to reset every breaker".into(),
        ));
    }
    if args.fleet {
        return fleet_status(&args, global);
    }
    let config = load(global)?;
    let breakers = selected(&config, args.service.as_deref())?;
    if args.reset && matches!(global.target(), super::Target::Fleet(_)) {
        return Err(CliError::BadInput(
            "--reset writes to a node's own log: run it with --db PATH of that node's file (docs/fleet.md)".into(),
        ));
    }
    let json_out = global.json || !std::io::stdout().is_terminal();
    let rt = super::runtime()?;
    let report = rt.block_on(async {
        let journal = super::history::open(global).await?;
        let result = async {
            if args.reset {
                let why = args.reason.clone().unwrap_or_default();
                for b in &breakers {
                    let done = super::command::apply(&journal, b, Command::Reset, &why).await?;
                    if !json_out {
                        println!("{done}");
                    }
                }
            }
            let mut recovered = Vec::with_capacity(breakers.len());
            for b in &breakers {
                let r = journal.recover(&b.key, b.policy.clone()).await.map_err(runtime_err)?;
                if let Some(why) = r.skipped(&b.key) {
                    super::to_stderr(format_args!("warning: {why}\n"));
                }
                recovered.push(r.breaker);
            }
            let now = system_now_ms();
            let now_of: Vec<BreakerNow<'_>> = breakers
                .iter()
                .zip(&recovered)
                .map(|(b, breaker)| BreakerNow::recovered(&b.key, breaker, b.latency_budget_ms(), now))
                .collect();
            let mut projection = Projection::open(&journal);
            let mut report = health_report(&journal, &mut projection, &now_of, now, journal.condition()).await;
            report.service = args.service.clone();
            if args.test {
                for (b, row) in breakers.iter().zip(report.breakers.iter_mut()) {
                    row.test = Some(test(b, row.state, row.open_remaining_ms).await);
                }
            }
            Ok::<_, CliError>(report)
        }
        .await;
        journal.close().await;
        result
    })?;
    // `--test` fails the command when a check that was sent failed (or could not be sent).
    let failed: Vec<String> = report
        .breakers
        .iter()
        .filter_map(|r| {
            let t = r.test.as_ref()?;
            let failed = t["outcome"] == "failure" || t["outcome"] == "timeout" || t["error"].is_string();
            failed.then(|| format!("{} ({})", r.service, t["result"].as_str().unwrap_or("failed")))
        })
        .collect();
    let verdict = || {
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CliError::Runtime(format!(
                "status --test: {} of {} checks failed: {}",
                failed.len(),
                report.breakers.len(),
                failed.join("; ")
            )))
        }
    };
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if json_out {
        // One document, the same as `GET /api/health/circuit-breakers` answers.
        serde_json::to_writer(&mut out, &report).map_err(runtime_err)?;
        writeln!(out).map_err(io)?;
        return verdict();
    }
    let now = report.as_of_ms;
    // Columns as wide as their widest cell (names of operations run long); colour after padding.
    let width = report
        .breakers
        .iter()
        .map(|r| r.service.chars().count())
        .max()
        .unwrap_or(0)
        .max("breaker".len());
    let colour = super::colour();
    writeln!(
        out,
        "{:<width$}  {:<11}  {:>6}  {:>8}  {:>9}  last transition",
        "breaker", "state", "health", "calls 5m", "failed 5m"
    )
    .map_err(io)?;
    for r in &report.breakers {
        let last = match &r.last_transition {
            Some(t) => format!(
                "{} → {} ({}) {}",
                t.from,
                t.to,
                t.reason.as_str(),
                fmt_ago(now, t.at_ms)
            ),
            None => "none".into(),
        };
        let dash = || "—".to_owned();
        writeln!(
            out,
            "{:<width$}  {}  {:>6}  {:>8}  {:>9}  {last}",
            r.service,
            super::paint_state(r.state, &format!("{:<11}", r.state.to_string()), colour),
            r.health.as_ref().map_or_else(dash, |h| h.score.to_string()),
            r.metrics_5m.as_ref().map_or_else(dash, |m| m.calls.to_string()),
            r.metrics_5m
                .as_ref()
                .map_or_else(dash, |m| (m.failures + m.timeouts).to_string())
        )
        .map_err(io)?;
        if let Some(t) = r.test.as_ref().and_then(|t| t.as_object()) {
            writeln!(out, "    test: {}", t["result"].as_str().unwrap_or("")).map_err(io)?;
        }
    }
    verdict()
}

/// A real request to the service's `health_url`, unless its breaker would reject it.
async fn test(b: &BreakerConfig, state: State, open_remaining_ms: Option<u64>) -> serde_json::Value {
    let Some(url) = b.health_url() else {
        return json!({"testable": false, "result": "not testable: no health_url configured"});
    };
    if matches!(state, State::Open | State::ForcedOpen) && open_remaining_ms.is_none_or(|left| left > 0) {
        return json!({"testable": true, "sent": false, "result": format!("not sent: the breaker is {state}")});
    }
    breakerbox::tls::init();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(b.call_timeout_ms()))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            return json!({"testable": true, "sent": false, "error": e.to_string(), "result": format!("no HTTP client: {e}")});
        }
    };
    let started = Instant::now();
    let response = client.get(url).send().await;
    let latency_ms = started.elapsed().as_millis() as u64;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            let outcome = b.classifier().classify(status);
            let verdict = if outcome == Outcome::Failure {
                "failure"
            } else {
                outcome.as_str()
            };
            json!({"testable": true, "sent": true, "status": status, "latency_ms": latency_ms, "outcome": verdict,
                   "result": format!("HTTP {status} in {latency_ms} ms: {verdict}")})
        }
        Err(e) => json!({"testable": true, "sent": true, "latency_ms": latency_ms, "outcome": "failure",
                         "result": format!("failure after {latency_ms} ms: {}", breakerbox::tls::error_chain(&e))}),
    }
}

/// `status --fleet`: fleet health from every live node's last published report
/// (`breakerbox::replay::fleet`, the one `GET /api/fleet/health` answers).
fn fleet_status(args: &StatusArgs, global: &Global) -> Result<(), CliError> {
    use breakerbox::journal::fleet::{DEFAULT_GONE_AFTER, fleet_health_rows};
    use breakerbox::replay::fleet::fleet_health;
    let super::Target::Fleet(url) = global.target() else {
        return Err(CliError::BadInput(
            "--fleet reads the fleet's log: pass --db postgres://… (or BREAKERBOX_DB)".into(),
        ));
    };
    let rt = super::runtime()?;
    let (now, views, rows) = rt
        .block_on(fleet_health_rows(&url, DEFAULT_GONE_AFTER, Duration::from_secs(5)))
        .map_err(runtime_err)?;
    let health = fleet_health(now, &views, &rows, args.service.as_deref());
    if let Some(s) = &args.service
        && health.breakers.is_empty()
    {
        return Err(CliError::BadInput(format!(
            "--service {s}: no live node reports a breaker of that name"
        )));
    }
    let mut out = std::io::stdout().lock();
    if global.json || !std::io::stdout().is_terminal() {
        serde_json::to_writer(&mut out, &health).map_err(runtime_err)?;
        writeln!(out).map_err(runtime_err)?;
        return Ok(());
    }
    let pct = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{:.1} %", r * 100.0));
    for b in &health.breakers {
        let states: Vec<String> = b
            .states
            .iter()
            .map(|(s, n)| {
                format!(
                    "{} {n}",
                    serde_json::to_value(s).unwrap_or_default().as_str().unwrap_or("?")
                )
            })
            .collect();
        let trouble = match b.trouble {
            breakerbox::replay::fleet::Trouble::Service => "THE SERVICE",
            breakerbox::replay::fleet::Trouble::Nodes => "SOME NODES",
            breakerbox::replay::fleet::Trouble::None => "ok",
        };
        let score = b
            .health
            .as_ref()
            .map_or_else(|| "-".to_owned(), |h| h.score.to_string());
        let spread = b.spread.map_or_else(String::new, |s| {
            format!(" (nodes {}..{}, median {})", s.min, s.max, s.median)
        });
        writeln!(
            out,
            "{:<28} {trouble:<11} health {score}{spread}  {}",
            b.service,
            states.join(", ")
        )
        .map_err(runtime_err)?;
        for r in &b.nodes {
            let outlier = if b.outliers.iter().any(|o| o.node == r.node) {
                "  OUTLIER"
            } else {
                ""
            };
            let state = serde_json::to_value(r.state).unwrap_or_default();
            writeln!(
                out,
                "  {:<24} {:<10} health {:>3}  {:>6} attempts  {:>7} worked{outlier}",
                r.node,
                state.as_str().unwrap_or("?"),
                r.health.map_or_else(|| "-".to_owned(), |h| h.to_string()),
                r.attempts_5m,
                pct(r.success_rate_5m),
            )
            .map_err(runtime_err)?;
        }
    }
    writeln!(out, "nodes:").map_err(runtime_err)?;
    for n in &health.nodes {
        let state = serde_json::to_value(n.state).unwrap_or_default();
        let age = n.report_age_ms.map_or_else(
            || "no report".to_owned(),
            |a| format!("report {:.1} s old", a as f64 / 1000.0),
        );
        let skew = n
            .clock_skew_ms
            .map_or_else(String::new, |s| format!(", clock {s:+} ms"));
        let why = n
            .why_not
            .as_ref()
            .map_or_else(String::new, |w| format!(" — not merged: {w}"));
        writeln!(
            out,
            "  {:<24} {:<8} {age}{skew}{why}",
            n.node,
            state.as_str().unwrap_or("?")
        )
        .map_err(runtime_err)?;
    }
    Ok(())
}
