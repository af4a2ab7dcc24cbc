//! `breakerbox alerts test [--sink NAME]`: a test message to each configured sink (or one).

use super::{CliError, Global};
use breakerbox::actor::system_now_ms;
use breakerbox::alerts::send_test;
use breakerbox::config::{Config, LoadOptions, Webhook};
use breakerbox::journal::{ALERTS_STREAM, Body, Journal, JournalOptions};
use std::io::Write;
use std::sync::Arc;

/// Alert sinks ([[alerts.webhooks]]): check the wiring.
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLES:
  breakerbox alerts test                 a test message to every sink; exit 0 if all took it
  breakerbox alerts test --sink oncall   only to the sink named oncall

The result is recorded in the log (--db) when it exists: breakerbox audit --kind alert.")]
pub struct Args {
    #[command(subcommand)]
    command: AlertsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum AlertsCommand {
    /// Send a test message to each sink (or one) and report what it answered.
    Test {
        /// Only this sink (its `name`).
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
    },
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let AlertsCommand::Test { sink } = args.command;
    let config = Config::load(&LoadOptions::from_process(global.config.clone())).map_err(CliError::config)?;
    let alerts = &config.alerts;
    if !alerts.enabled() {
        return Err(CliError::BadInput(
            "no alert sinks are configured: add [[alerts.webhooks]] with name and url to the config file".into(),
        ));
    }
    let sinks: Vec<&Webhook> = match &sink {
        Some(name) => vec![alerts.require(name).map_err(CliError::BadInput)?],
        None => alerts.webhooks.iter().collect(),
    };
    let rt = super::runtime()?;
    let results = rt.block_on(async {
        let mut results = Vec::new();
        for hook in sinks {
            results.push(send_test(alerts, hook, system_now_ms()).await);
        }
        // Recorded when there is a log to record in (a stream of this process's own, so it
        // never races a running server's notifier).
        if let Ok(db) = global.existing_db()
            && let Ok(journal) = Journal::open(&db, JournalOptions::default()).await
        {
            let stream: Arc<str> = Arc::from(format!("{ALERTS_STREAM}/{}", super::holder("alerts-test")).as_str());
            for (_, record) in &results {
                journal.submit(&stream, Body::record(record));
            }
            let _ = journal.flush().await;
            journal.close().await;
        }
        results
    });
    let mut out = std::io::stdout().lock();
    let io = super::stdout_error;
    if global.json {
        // One document: every sink's answer.
        let sinks: Vec<_> = results.iter().map(|(r, _)| r).collect();
        serde_json::to_writer(&mut out, &serde_json::json!({ "sinks": sinks }))
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        writeln!(out).map_err(io)?;
    }
    for (r, _) in &results {
        if !global.json {
            let verdict = match (r.delivered, r.status_code, &r.error) {
                (true, Some(code), _) => format!("delivered, HTTP {code} in {} ms", r.latency_ms),
                (false, Some(code), _) => format!("NOT delivered: the sink answered HTTP {code}"),
                (_, _, Some(e)) => format!("NOT delivered: {e}"),
                _ => "NOT delivered".to_owned(),
            };
            writeln!(out, "{} ({}): {verdict}", r.sink, r.format).map_err(io)?;
        }
    }
    let failed = results.iter().filter(|(r, _)| !r.delivered).count();
    if failed > 0 {
        return Err(CliError::Runtime(format!(
            "{failed} of {} sinks did not take the test message",
            results.len()
        )));
    }
    Ok(())
}
