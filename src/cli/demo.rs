//! `breakerbox demo`: stand-in calcom / retell / stripe services with scripted trouble, real
//! traffic through the breakers, the API and dashboard, a line per transition, and a
//! post-incident summary from the log at the end.

use super::{CliError, Global, history::fmt_time};
use breakerbox::actor::system_now_ms;
use breakerbox::app::{App, AppOptions, HttpOptions};
use breakerbox::demo::{self, SERVICES, Script};
use breakerbox::duration::{format_ms, parse_ms};
use breakerbox::journal::Journal;
use breakerbox::replay::{AuditQuery, Kind, Summary, audit, history, summarize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Watch breakers at work: stand-in services misbehave on a script under real traffic.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The stand-ins: stripe fails hard for a while, retell gets slow, calcom flaps.
The demo's OPEN periods are seconds (production settings are minutes). A second run on the same
--db continues the same history.

EXAMPLE:
  breakerbox demo --duration 30s --db /tmp/demo.db"
)]
pub struct Args {
    /// How long to run (Ctrl-C ends it early, cleanly).
    #[arg(long, value_name = "DUR", default_value = "90s", value_parser = parse_ms)]
    duration: u64,
    /// Where the API and dashboard listen (another free port is taken if this one is busy).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    if args.duration < 5_000 {
        return Err(CliError::BadInput(format!(
            "--duration {}: the demo needs at least 5s to tell its story",
            format_ms(args.duration)
        )));
    }
    if let Some(path) = &global.config {
        return Err(CliError::BadInput(format!(
            "--config {}: the demo runs its own configuration (src/demo/demo.toml); use `breakerbox serve --config` for yours",
            path.display()
        )));
    }
    let options = breakerbox::config::LoadOptions::from_process(None);
    // The environment is read and checked as every command reads it, so a bad value is named
    // here too; the demo's settings are its own, and a valid setting it does not apply is said.
    breakerbox::config::Config::load(&options).map_err(CliError::config)?;
    let ignored: Vec<&str> = options
        .env
        .keys()
        .map(String::as_str)
        .filter(|v| breakerbox::config::env_is_ours(v) && *v != breakerbox::config::TOKEN_VAR)
        .collect();
    if !ignored.is_empty() {
        println!(
            "demo: not applying {} (the demo runs its own settings; `breakerbox serve` applies them)",
            ignored.join(", ")
        );
    }
    // Tokens from the environment only: the demo's configuration is its own.
    let (tokens, one_time) = super::api_tokens(&options, &breakerbox::config::ApiConfig::default(), args.bind)?;
    let json = global.json;
    actix_web::rt::System::new().block_on(async move {
        // Registered before anything is printed, so a Ctrl-C at any point ends the demo cleanly.
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| CliError::Runtime(format!("listening for Ctrl-C: {e}")))?;
        let started = Instant::now();
        let script = Script {
            length_ms: args.duration,
        };
        let mut upstreams = BTreeMap::new();
        for service in SERVICES {
            let addr = demo::start_upstream(service, script, started)
                .await
                .map_err(|e| CliError::Runtime(format!("starting the {service} stand-in: {e}")))?;
            upstreams.insert(service, addr);
        }
        let config = demo::config(&upstreams).map_err(CliError::config)?;
        let (db, journal_options, fleet) = global.node_log(&config)?;
        let shown = super::shown_log(&db, fleet.as_ref());
        // What the commands printed below read: the fleet's log (this node's history) or the file.
        let db_arg = match &fleet {
            Some(f) => format!(
                "{} --node {}",
                breakerbox::config::redacted(&f.url),
                journal_options.node
            ),
            None => db.display().to_string(),
        };
        // Written beside the log, so `status --config … --test` can reach the stand-ins while
        // the demo runs, and later commands judge latency against the demo's budgets.
        let config_file = db.with_extension("demo.toml");
        std::fs::write(&config_file, demo::config_text(&upstreams))
            .map_err(|e| CliError::Runtime(format!("writing {}: {e}", config_file.display())))?;
        println!(
            "breakerbox demo: {} of traffic to stand-in services on 127.0.0.1, {} requests/s each, recorded in {}",
            format_ms(args.duration),
            demo::RATE_PER_SECOND,
            shown
        );
        println!(
            "demo settings: OPEN for 2-3 s (stripe backs off to 8 s), call timeout 2 s; production settings are minutes"
        );
        for (service, from, to, what) in script.timeline() {
            println!("  {service:<7} {what} from {} to {}", secs(from), secs(to));
        }
        let app_options = AppOptions {
            registry: super::registry_options(&config, "demo"),
            // The demo's configuration has no alert sinks and is its own: nothing to reload.
            alerts: false,
            http: Some(HttpOptions {
                bind: args.bind,
                tokens,
                any_port_if_taken: true,
            }),
            journal: journal_options,
            fleet,
            ..AppOptions::default()
        };
        let stop_within = app_options.stop_within;
        let app = App::start(&db, &config, app_options)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        let (journal, registry) = (app.journal().clone(), app.registry().clone());
        let addrs = app.http_addrs().to_vec();
        if addrs.first().is_some_and(|a| *a != args.bind) && args.bind.port() != 0 {
            println!("{} is busy; took another port", args.bind);
        }
        for addr in &addrs {
            super::print_dashboard(*addr, one_time.as_deref());
        }
        let start_ms = system_now_ms();
        let from_position = journal
            .last_position()
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        println!(
            "its configuration: {} (e.g. `breakerbox status --db {} --config {} --test` while it runs)",
            config_file.display(),
            db_arg,
            config_file.display()
        );
        println!("\ntransitions as they happen (+seconds since start):");
        let tail = actix_web::rt::spawn(print_transitions(journal.clone(), from_position, started));

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let traffic = {
            let (registry, upstreams) = (registry.clone(), upstreams.clone());
            actix_web::rt::spawn(async move { demo::drive(&registry, &upstreams, stop_rx).await })
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.duration)) => {}
            _ = interrupt.recv() => println!("\nCtrl-C: stopping cleanly"),
        }
        // The whole stop, from here, within the App's stop bound (5 s, docs/durability.md): the
        // calls in flight (each within its timeout), the summary and the App's own stop share it.
        let stop_by = tokio::time::Instant::now() + stop_within;
        let _ = stop_tx.send(true);
        let _ = traffic.await;
        let end_ms = system_now_ms();
        // Bounded: with the log failing the demo still ends in time, and says why there is no
        // summary.
        let flushed = tokio::time::timeout(Duration::from_secs(2), journal.flush()).await;
        let summaries = match flushed {
            Ok(Ok(_)) => {
                // Let the tail print what the last flush committed before the summary.
                tokio::time::sleep(Duration::from_millis(300)).await;
                tail.abort();
                summaries_of(&journal, &registry, &config, start_ms, end_ms).await
            }
            Ok(Err(e)) => Err(CliError::Runtime(format!("no summary: {e}"))),
            Err(_) => Err(CliError::Runtime(format!("no summary: {}", journal.condition()))),
        };
        tail.abort();
        drop((journal, registry));
        let stopped = app
            .shutdown_within(stop_by.saturating_duration_since(tokio::time::Instant::now()))
            .await
            .map_err(|e| CliError::Runtime(e.to_string()));
        let summaries = summaries?;
        stopped?;
        if json {
            let out = serde_json::to_string_pretty(&summaries).map_err(|e| CliError::Runtime(e.to_string()))?;
            println!("{out}");
        } else {
            print_summary(&summaries, &db_arg, &config_file);
        }
        Ok(())
    })
}

/// One line per transition or operator command, as they are committed.
async fn print_transitions(journal: Arc<Journal>, mut after: i64, started: Instant) {
    loop {
        let q = AuditQuery {
            stream: None,
            kinds: vec![Kind::Transition, Kind::Command],
            since_ms: 0,
            until_ms: u64::MAX,
            after_position: after,
            limit: 100,
        };
        let Ok(page) = audit(&journal, &q).await else { return };
        for e in &page.entries {
            println!(
                "  +{:>5.1}s  {:<7} {}",
                started.elapsed().as_secs_f64(),
                e.stream,
                e.summary
            );
            after = e.position;
        }
        after = after.max(page.scanned_to);
        if page.entries.is_empty() {
            let seen = journal.last_position().await.unwrap_or(after).max(after);
            if journal.wait_after(seen, Duration::from_secs(5)).await.is_err() {
                return;
            }
        }
    }
}

/// Seconds with one decimal, for people: `13.5s`.
fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1_000.0)
}

/// Each breaker's post-incident summary, folded from the log.
async fn summaries_of(
    journal: &breakerbox::journal::Journal,
    registry: &breakerbox::actor::Registry,
    config: &breakerbox::config::Config,
    start_ms: u64,
    end_ms: u64,
) -> Result<Vec<Summary>, CliError> {
    let mut summaries = Vec::new();
    for handle in registry.handles() {
        let key = handle.key().to_owned();
        let b = config.breaker(&key).expect("breakers come from the config");
        let entries = history(journal, &key)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        summaries.push(summarize(
            &entries,
            &key,
            start_ms,
            end_ms,
            &b.policy,
            b.latency_budget_ms(),
        ));
    }
    Ok(summaries)
}

fn print_summary(summaries: &[Summary], db: &str, config_file: &std::path::Path) {
    println!("\npost-incident summary (from the log):");
    for s in summaries {
        println!(
            "  {:<7} opened {}x, open {} in all, {} now · {} calls ({} failed, {} timed out) · {} rejected, {} served by fallback · health {}/100",
            s.stream,
            s.openings,
            secs(s.open_ms),
            s.end_state,
            s.calls,
            s.failures,
            s.timeouts,
            s.rejected,
            s.fallbacks,
            s.health.score
        );
    }
    let (from, to) = summaries.first().map_or((0, 0), |s| (s.from_ms, s.to_ms));
    println!("\nlook closer:");
    println!("  breakerbox status --db {db} --config {}", config_file.display());
    println!(
        "  breakerbox audit --db {db} --kind transition --since {}",
        fmt_time(from)
    );
    println!(
        "  breakerbox replay --db {db} --service stripe --from {} --to {} --svg stripe.svg",
        fmt_time(from),
        fmt_time(to)
    );
    println!(
        "  breakerbox what-if --db {db} --service stripe --from {} --to {} --failure-threshold 20",
        fmt_time(from),
        fmt_time(to)
    );
}
