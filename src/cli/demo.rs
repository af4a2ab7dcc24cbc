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
    /// A fleet of this many node processes on one fleet log (--db postgres://…), 2 to 8: one
    /// node's network to stripe goes bad on its own, then stripe fails for all (docs/fleet.md).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    nodes: u32,
    /// A node of a fleet demo: the stand-ins its parent runs (SERVICE=ADDR), instead of its own.
    #[arg(long, value_name = "SERVICE=ADDR", hide = true)]
    upstream: Vec<String>,
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    if args.duration < 5_000 {
        return Err(CliError::BadInput(format!(
            "--duration {}: the demo needs at least 5s to tell its story",
            format_ms(args.duration)
        )));
    }
    if args.nodes > 1 {
        return fleet_demo(&args, global);
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
            // A node of a fleet demo calls its parent's stand-ins.
            if let Some(addr) = given_upstream(&args.upstream, service)? {
                upstreams.insert(service, addr);
                continue;
            }
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

/// The address given for `service` with `--upstream SERVICE=ADDR` (a fleet demo's node).
fn given_upstream(given: &[String], service: &str) -> Result<Option<SocketAddr>, CliError> {
    for g in given {
        let Some((name, addr)) = g.split_once('=') else {
            return Err(CliError::BadInput(format!("--upstream {g:?}: expected SERVICE=ADDR")));
        };
        if !SERVICES.contains(&name) {
            return Err(CliError::BadInput(format!(
                "--upstream {g:?}: {name:?} is not one of the demo's services ({})",
                SERVICES.join(", ")
            )));
        }
        if name == service {
            return addr
                .parse()
                .map(Some)
                .map_err(|e| CliError::BadInput(format!("--upstream {g:?}: {e}")));
        }
    }
    Ok(None)
}

/// When demo-1's network to stripe is bad, as fractions of the demo (before stripe fails for all).
const BAD_NETWORK: (f64, f64) = (0.02, 0.12);

/// `demo --nodes N --db postgres://…`: the stand-ins here, N node processes (`demo` itself, each
/// its own node) driving traffic through their own breakers, demo-1's network to stripe bad on
/// its own for a while, then stripe failing for all. Prints each node's transitions as they
/// happen and the fleet's view whenever it changes, then what a shared breaker or a quorum would
/// have done (the fleet what-if).
fn fleet_demo(args: &Args, global: &Global) -> Result<(), CliError> {
    use breakerbox::journal::fleet::{DEFAULT_GONE_AFTER, fleet_health_rows};
    use breakerbox::replay::fleet::{Trouble, fleet_health};
    let super::Target::Fleet(url) = global.target() else {
        return Err(CliError::BadInput(format!(
            "--nodes {}: a fleet needs a fleet log: pass --db postgres://… (docs/fleet.md)",
            args.nodes
        )));
    };
    if global.node.is_some() || !args.upstream.is_empty() {
        return Err(CliError::BadInput(
            "--nodes names its nodes demo-1, demo-2, …: leave --node out".into(),
        ));
    }
    if args.duration < 10_000 {
        return Err(CliError::BadInput(format!(
            "--duration {}: a fleet demo needs at least 10s to tell its story",
            format_ms(args.duration)
        )));
    }
    if let Some(path) = &global.config {
        return Err(CliError::BadInput(format!(
            "--config {}: the demo runs its own configuration (src/demo/demo.toml)",
            path.display()
        )));
    }
    let exe = std::env::current_exe().map_err(|e| CliError::Runtime(format!("finding this program: {e}")))?;
    let shown = breakerbox::config::redacted(&url);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("starting the runtime: {e}")))?;
    let length = args.duration;
    rt.block_on(async move {
        let started = Instant::now();
        let script = Script { length_ms: length };
        let mut upstreams = BTreeMap::new();
        for service in SERVICES {
            let addr = demo::start_upstream(service, script, started)
                .await
                .map_err(|e| CliError::Runtime(format!("starting the {service} stand-in: {e}")))?;
            upstreams.insert(service, addr);
        }
        let bad = (
            (length as f64 * BAD_NETWORK.0) as u64,
            (length as f64 * BAD_NETWORK.1) as u64,
        );
        let bad_stripe = demo::start_bad_network(upstreams["stripe"], bad, started)
            .await
            .map_err(|e| CliError::Runtime(format!("starting demo-1's network: {e}")))?;
        println!(
            "breakerbox demo: a fleet of {} nodes (demo-1 … demo-{}) on {shown}, {} of traffic to stand-in services",
            args.nodes,
            args.nodes,
            format_ms(length)
        );
        println!(
            "  demo-1's network to stripe goes bad from {} to {} (that node's trouble)",
            secs(bad.0),
            secs(bad.1)
        );
        for (service, from, to, what) in script.timeline() {
            println!("  {service:<7} {what} from {} to {} (on every node)", secs(from), secs(to));
        }
        println!("\ntransitions as they happen, and the fleet's view when it changes (+seconds since start):");
        let mut children: Vec<(String, std::process::Child)> = Vec::new();
        let mut readers = Vec::new();
        for n in 1..=args.nodes {
            let node = format!("demo-{n}");
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(["demo", "--duration", &format!("{length}ms"), "--bind", "127.0.0.1:0", "--db", &url])
                .args(["--node", &node]);
            for (service, addr) in &upstreams {
                let addr = if *service == "stripe" && n == 1 { bad_stripe } else { *addr };
                cmd.args(["--upstream", &format!("{service}={addr}")]);
            }
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    // The nodes already started stop with the demo.
                    for (_, c) in &mut children {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    return Err(CliError::Runtime(format!("starting {node}: {e}")));
                }
            };
            let (out, err) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
            let label = node.clone();
            // Each node's transitions, prefixed; the rest of its output kept for when it fails.
            readers.push(std::thread::spawn(move || {
                use std::io::BufRead;
                let errs = std::thread::spawn(move || {
                    std::io::BufReader::new(err).lines().map_while(Result::ok).collect::<Vec<_>>()
                });
                let mut kept = Vec::new();
                for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                    if let Some(rest) = line.strip_prefix("  +") {
                        println!("  [{label}] +{rest}");
                    }
                    kept.push(line);
                }
                kept.extend(errs.join().unwrap_or_default());
                kept
            }));
            children.push((node, child));
        }
        // The fleet's view, whenever a breaker's fleet-wide picture changes.
        let watcher = {
            let url = url.clone();
            tokio::spawn(async move {
                let mut last: BTreeMap<String, String> = BTreeMap::new();
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let Ok((now, views, rows)) = fleet_health_rows(&url, DEFAULT_GONE_AFTER, Duration::from_secs(2)).await
                    else {
                        continue;
                    };
                    let health = fleet_health(now, &views, &rows, None);
                    for b in &health.breakers {
                        let open: Vec<&str> = b
                            .nodes
                            .iter()
                            .filter(|r| r.state != breakerbox::breaker::State::Closed)
                            .map(|r| r.node.as_str())
                            .collect();
                        let line = match b.trouble {
                            Trouble::Service if open.is_empty() => {
                                "closed on every node (its last 5 minutes mostly failed)".to_owned()
                            }
                            _ if open.is_empty() => "closed on every node".to_owned(),
                            t => {
                                let whose = match t {
                                    Trouble::Service => "the service's trouble",
                                    Trouble::Nodes => "those nodes' trouble",
                                    Trouble::None => "recovering",
                                };
                                let outliers: Vec<&str> = b.outliers.iter().map(|o| o.node.as_str()).collect();
                                format!(
                                    "not closed on {}/{} nodes ({}): {whose}{}",
                                    open.len(),
                                    b.nodes.len(),
                                    open.join(", "),
                                    if outliers.is_empty() {
                                        String::new()
                                    } else {
                                        format!("; outlier: {}", outliers.join(", "))
                                    }
                                )
                            }
                        };
                        if last.get(&b.service) != Some(&line) {
                            if last.contains_key(&b.service) || !line.starts_with("closed") {
                                println!(
                                    "  [fleet ] +{:>5.1}s  {:<7} {line}",
                                    started.elapsed().as_secs_f64(),
                                    b.service
                                );
                            }
                            last.insert(b.service.clone(), line);
                        }
                    }
                }
            })
        };
        let mut failed = Vec::new();
        for ((node, mut child), reader) in children.into_iter().zip(readers) {
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .map_err(|e| CliError::Runtime(format!("waiting for {node}: {e}")))?
                .map_err(|e| CliError::Runtime(format!("waiting for {node}: {e}")))?;
            let kept = tokio::task::spawn_blocking(move || reader.join().unwrap_or_default())
                .await
                .unwrap_or_default();
            if !status.success() {
                failed.push(format!("{node} ended with {status}:\n{}", kept.join("\n")));
            }
        }
        watcher.abort();
        if !failed.is_empty() {
            return Err(CliError::Runtime(failed.join("\n")));
        }
        // What one shared breaker, or a quorum of the nodes, would have done with stripe's calls.
        println!("\nthe fleet, afterwards (from the fleet's log):");
        let mut histories = Vec::new();
        for n in 1..=args.nodes {
            let node = format!("demo-{n}");
            let (journal, node) = breakerbox::journal::fleet::node_copy(&url, Some(&node), Duration::from_secs(5))
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            let entries = breakerbox::replay::history(&journal, "stripe").await;
            journal.close().await;
            histories.push((node, entries.map_err(|e| CliError::Runtime(e.to_string()))?));
        }
        let config = demo::config(&upstreams).map_err(CliError::config)?;
        let policy = config.breaker("stripe").expect("the demo has stripe").policy.clone();
        let rule = breakerbox::replay::QuorumRule {
            nodes: 1,
            fraction: 0.5,
            within_ms: 30_000,
        };
        let r = breakerbox::replay::fleet_what_if(&histories, None, None, &policy, &Default::default(), rule)
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        println!(
            "  stripe: {:<28} {:>5} failed calls let through, {:>4} healthy calls rejected, {} openings",
            format!("what happened ({} breakers)", r.actual.breakers),
            r.actual.failed_let_through,
            r.actual.healthy_rejected,
            r.actual.openings
        );
        println!(
            "  stripe: {:<28} {:>5} failed calls let through, {:>4} healthy calls rejected, {} openings",
            "one shared breaker", r.shared.failed_let_through, r.shared.healthy_rejected, r.shared.openings
        );
        println!(
            "  stripe: {:<28} {:>5} failed calls let through, {:>4} healthy calls rejected, {} openings ({} by the quorum)",
            format!("{} breakers + quorum (1, 0.5)", r.quorum.breakers),
            r.quorum.failed_let_through,
            r.quorum.healthy_rejected,
            r.quorum.openings,
            r.quorum.by_quorum
        );
        println!("\nlook closer:");
        println!("  breakerbox audit --all-nodes --db {shown} --kind transition");
        println!("  breakerbox what-if --all-nodes --service stripe --db {shown}");
        println!("  breakerbox nodes --db {shown}");
        Ok(())
    })
}
