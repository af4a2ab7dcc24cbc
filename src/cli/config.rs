//! `breakerbox config`: the effective policy of every breaker and where each value came from.

use super::{CliError, Global};
use breakerbox::config::{BreakerConfig, Config, LoadOptions};
use serde_json::json;
use std::io::Write;

/// Show the effective configuration, or check it.
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLES:
  breakerbox config                      every breaker, each setting with its source
  breakerbox config --service stripe --json
  breakerbox config check                exit 0 if the config is valid, 2 with every problem if not")]
pub struct Args {
    #[command(subcommand)]
    check: Option<Check>,
    /// Only this breaker (a service, or service/operation).
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Check {
    /// Validate the config file and the environment; exit 0 if usable, 2 otherwise.
    Check,
}

fn rule(b: &BreakerConfig) -> &'static str {
    use breakerbox::breaker::TripRule;
    match b.policy.trip {
        TripRule::ConsecutiveFailures { .. } => "consecutive failures",
        TripRule::FailureCount { .. } => "failure count in a time window",
        TripRule::FailureRate { .. } => "failure rate",
    }
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let loaded = Config::load(&LoadOptions::from_process(global.config.clone()));
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            if args.check.is_some() && global.json {
                // One document on stdout too; the problems also go to stderr as with any error.
                let problems: Vec<_> = e
                    .problems
                    .iter()
                    .map(|p| json!({"location": p.location, "message": p.message}))
                    .collect();
                let mut out = std::io::stdout().lock();
                serde_json::to_writer(&mut out, &json!({"ok": false, "problems": problems}))
                    .map_err(|e| CliError::Runtime(e.to_string()))?;
                writeln!(out).map_err(super::stdout_error)?;
            }
            return Err(CliError::config(e));
        }
    };
    let file = config
        .file
        .as_ref()
        .map_or("none (embedded defaults)".to_owned(), |p| p.display().to_string());
    if args.check.is_some() {
        let note = config.api.allow_short_tokens.then(|| {
            format!(
                "[api] allow_short_tokens = true: serve takes tokens shorter than {} characters on a loopback address only",
                breakerbox::config::MIN_TOKEN_LEN
            )
        });
        let mut out = std::io::stdout().lock();
        let io = super::stdout_error;
        if global.json {
            let doc = json!({
                "ok": true,
                "file": config.file,
                "breakers": config.breakers.len(),
                "alert_sinks": config.alerts.webhooks.len(),
                "notes": note.into_iter().collect::<Vec<_>>(),
            });
            serde_json::to_writer(&mut out, &doc).map_err(|e| CliError::Runtime(e.to_string()))?;
            return writeln!(out).map_err(io);
        }
        writeln!(
            out,
            "config ok: {} breakers, {} alert sinks, file: {file}",
            config.breakers.len(),
            config.alerts.webhooks.len()
        )
        .map_err(io)?;
        if let Some(note) = note {
            writeln!(out, "note: {note}").map_err(io)?;
        }
        return Ok(());
    }
    let breakers: Vec<&BreakerConfig> = match &args.service {
        Some(name) => vec![config.require(name).map_err(CliError::BadInput)?],
        None => config.breakers.iter().collect(),
    };
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if global.json {
        let list: Vec<_> = breakers
            .iter()
            .map(|b| {
                let settings: serde_json::Map<String, serde_json::Value> = b
                    .knobs
                    .entries()
                    .into_iter()
                    .map(|(k, v, s)| (k.to_owned(), json!({"value": v, "source": s.to_string()})))
                    .collect();
                let schedules: Vec<_> = b
                    .schedules()
                    .map(|s| {
                        let overrides: serde_json::Map<String, serde_json::Value> =
                            s.knobs.entries().into_iter().map(|(k, v, _)| (k.to_owned(), json!(v))).collect();
                        json!({"name": s.name, "when": s.describe, "source": s.source.to_string(), "overrides": overrides})
                    })
                    .collect();
                json!({
                    "key": b.key, "service": b.service, "operation": b.operation,
                    "rule": rule(b), "policy": b.policy, "settings": settings, "schedules": schedules,
                })
            })
            .collect();
        let alerts = &config.alerts;
        let sinks: Vec<_> = alerts
            .webhooks
            .iter()
            .map(|w| {
                json!({"name": w.name, "url": w.url, "format": w.format.as_str(),
                            "rate_limit_per_minute": w.rate_limit_per_minute, "source": w.source.to_string()})
            })
            .collect();
        let settings: serde_json::Map<String, serde_json::Value> = alerts
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect();
        let alerts = json!({"webhooks": sinks, "settings": settings});
        serde_json::to_writer_pretty(
            &mut out,
            &json!({"file": config.file, "breakers": list, "alerts": alerts}),
        )
        .map_err(|e| CliError::Runtime(e.to_string()))?;
        return writeln!(out).map_err(io);
    }
    writeln!(out, "config file: {file}").map_err(io)?;
    for b in breakers {
        writeln!(out, "\n{}  ({})", b.key, rule(b)).map_err(io)?;
        for (key, value, source) in b.knobs.entries() {
            writeln!(out, "  {key:<20} {value:<16} {source}").map_err(io)?;
        }
        for s in b.schedules() {
            let overrides: Vec<String> = s.knobs.entries().iter().map(|(k, v, _)| format!("{k} = {v}")).collect();
            writeln!(
                out,
                "  schedule {:?}: {} ({}): {}",
                s.name,
                s.describe,
                s.source,
                overrides.join(", ")
            )
            .map_err(io)?;
        }
    }
    if args.service.is_none() {
        let alerts = &config.alerts;
        if alerts.enabled() {
            writeln!(out, "\nalerts").map_err(io)?;
            for w in &alerts.webhooks {
                // The URL is a secret: `***` (Secret's Display), never the value.
                writeln!(
                    out,
                    "  webhook {:<14} url {} format {} rate_limit {}/min  {}",
                    w.name,
                    w.url,
                    w.format.as_str(),
                    w.rate_limit_per_minute,
                    w.source
                )
                .map_err(io)?;
            }
            for (key, value) in alerts.entries() {
                writeln!(out, "  {key:<20} {value}").map_err(io)?;
            }
        } else {
            writeln!(out, "\nalerts: none configured ([[alerts.webhooks]])").map_err(io)?;
        }
    }
    Ok(())
}
