//! The fleet's log on PostgreSQL on 127.0.0.1, side by side with the SQLite backend in one run
//! (`docs/performance.md`, "Fleet log"). Run with `cargo bench --bench fleet`. The server is
//! `BREAKERBOX_BENCH_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`); the bench makes
//! a database of its own and drops it.
//!
//! 1. **Ingest**: 8 nodes at once. SQLite: each node commits to its own file (`Durability::Full`)
//!    rounds of 125 breakers × 100 outcomes, one `call_batch` row per breaker per round. PostgreSQL:
//!    each node ships those same rows over its own connection, 125 rows per shipment (what a
//!    node at 1,250 rows/s ships per 100 ms poll), `synchronous_commit` on. Figures: rows/s,
//!    outcomes/s, p50/p99 of a round's commit (SQLite) or a shipment's (PostgreSQL).
//! 2. **Replay**: reading every node's rows back. PostgreSQL, by node in its own order
//!    (`read_node`); a node copied into a scratch log (`node_copy`, what the commands do); SQLite,
//!    the same rows from each node's file.
//! 3. **Start-up** of 100 breakers, from the node's own file, with and without the shipper
//!    (connect, schema check, lease, resume point).
//! 4. **The call path with the database stopped**: `call_sync` on a breaker whose journal ships to
//!    a server that does not answer, against one that ships nowhere; 5 interleaved rounds.
//! 6. **Fleet command propagation** to 8 nodes (`-- commands`): 40 commands, each node's
//!    acknowledgement time by the database's clock, woken by `NOTIFY`, then by polling only.
//! 5. **Fleet health** of 30 breakers × 8 nodes: reading the nodes' published reports and merging
//!    them (what `GET /api/fleet/health` does on a kept connection), and `status --fleet --json`
//!    as a process (connecting included).

use breakerbox::actor::{Clock, Registry, RegistryOptions};
use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
use breakerbox::config::Config;
use breakerbox::journal::fleet::{FleetOptions, OfflineStart, Shipper, node_copy};
use breakerbox::journal::pg::{PgLog, Shippable};
use breakerbox::journal::{Body, Durability, Journal, JournalOptions};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NODES: usize = 8;
const BREAKERS: usize = 125;
const OUTCOMES: u64 = 100;
const ROUNDS: usize = 20;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("fleet: a measurement, not a test: run it with `cargo bench --bench fleet`");
        return;
    }
    let admin =
        std::env::var("BREAKERBOX_BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = format!("bb_bench_{}", std::process::id());
    let (base, _) = admin.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .expect("the bench's PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template0"
        )))
        .execute(&mut c)
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `cargo bench --bench fleet -- health`: only the fleet health figure.
        if std::env::args().any(|a| a == "health") {
            fleet_health(&url).await;
        } else if std::env::args().any(|a| a == "commands") {
            fleet_commands(dir.path(), &url).await;
        } else {
            run(dir.path(), &url).await;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .execute(&mut c)
            .await
            .unwrap();
    });
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn node_path(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("node-{n}.db"))
}

async fn open_node(dir: &Path, n: usize, durability: Durability) -> Arc<Journal> {
    let options = JournalOptions {
        node: Arc::from(format!("node-{n}").as_str()),
        durability,
        ..JournalOptions::default()
    };
    Arc::new(Journal::open(&node_path(dir, n), options).await.unwrap())
}

/// One node's rounds into its own file: each round, 100 outcomes for each of 125 breakers, then
/// the wait for their commit. The commit time of every round.
async fn write_node(journal: Arc<Journal>) -> Vec<Duration> {
    let streams: Vec<Arc<str>> = (0..BREAKERS).map(|b| Arc::from(format!("s{b}").as_str())).collect();
    let mut breakers: Vec<Breaker> = (0..BREAKERS)
        .map(|_| Breaker::new(Policy::consecutive(1_000_000, 1_000)).unwrap())
        .collect();
    let mut times = Vec::with_capacity(ROUNDS);
    let mut events = Vec::new();
    let mut t = 1_700_000_000_000u64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut last = None;
        for (b, breaker) in breakers.iter_mut().enumerate() {
            for i in 0..OUTCOMES {
                t += 1;
                if let Decision::Permit(p) = breaker.acquire(t, &mut events) {
                    let outcome = if i % 10 == 0 {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    breaker.complete(t + 3, p, outcome, &mut events);
                }
                for e in events.drain(..) {
                    last = journal.submit(&streams[b], Body::Breaker(e));
                }
            }
        }
        journal.durable(last.unwrap()).await.unwrap();
        times.push(start.elapsed());
    }
    times
}

async fn run(dir: &Path, url: &str) {
    println!("fleet log bench: {NODES} nodes, {ROUNDS} rounds of {BREAKERS} breakers x {OUTCOMES} outcomes each");

    // 1. Ingest. SQLite: every node its own file, all at once.
    let mut journals: Vec<Arc<Journal>> = Vec::with_capacity(NODES);
    for n in 0..NODES {
        journals.push(open_node(dir, n, Durability::Full).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = journals.iter().map(|j| tokio::spawn(write_node(j.clone()))).collect();
    let mut commits = Vec::new();
    for t in tasks {
        commits.extend(t.await.unwrap());
    }
    let sqlite_wall = start.elapsed();
    let mut rows: Vec<Vec<Shippable>> = Vec::new();
    for j in &journals {
        rows.push(j.read_shippable(0, 10_000_000).await.unwrap());
    }
    let total_rows: usize = rows.iter().map(Vec::len).sum();
    let outcomes = (NODES * ROUNDS * BREAKERS) as f64 * OUTCOMES as f64;
    let bytes: usize = rows.iter().flatten().map(|s| s.event.payload.len()).sum();
    commits.sort();
    println!(
        "rows: {total_rows} ({:.0} outcomes and {:.0} payload bytes a row on average)",
        outcomes / total_rows as f64,
        bytes as f64 / total_rows as f64
    );
    println!(
        "ingest  sqlite    : {:>9.0} rows/s {:>11.0} outcomes/s  commit p50 {:.1} ms p99 {:.1} ms (a round of {BREAKERS} rows, 8 files)",
        total_rows as f64 / sqlite_wall.as_secs_f64(),
        outcomes / sqlite_wall.as_secs_f64(),
        percentile(&commits, 0.5),
        percentile(&commits, 0.99)
    );
    for j in &journals {
        j.close().await;
    }

    // PostgreSQL: the same rows, each node over its own connection.
    let first = PgLog::connect(url, Duration::from_secs(5), 1).await.unwrap();
    first.close().await;
    let start = Instant::now();
    let tasks: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(n, node_rows)| {
            let (url, node_rows) = (url.to_owned(), node_rows.clone());
            tokio::spawn(async move {
                let log = PgLog::connect(&url, Duration::from_secs(5), 1).await.unwrap();
                let node = format!("node-{n}");
                let mut times = Vec::new();
                for chunk in node_rows.chunks(BREAKERS) {
                    let t = Instant::now();
                    log.ship(&node, chunk).await.unwrap();
                    times.push(t.elapsed());
                }
                log.close().await;
                times
            })
        })
        .collect();
    let mut ships = Vec::new();
    for t in tasks {
        ships.extend(t.await.unwrap());
    }
    let pg_wall = start.elapsed();
    ships.sort();
    println!(
        "ingest  postgres  : {:>9.0} rows/s {:>11.0} outcomes/s  commit p50 {:.1} ms p99 {:.1} ms (a shipment of {BREAKERS} rows, 8 connections)",
        total_rows as f64 / pg_wall.as_secs_f64(),
        outcomes / pg_wall.as_secs_f64(),
        percentile(&ships, 0.5),
        percentile(&ships, 0.99)
    );

    // At the goal's rate rather than flat out: every node ships 125 rows every 100 ms (8 nodes:
    // 10,000 rows/s), the latency of each shipment's commit.
    let start = Instant::now();
    let tasks: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(n, node_rows)| {
            let (url, node_rows) = (url.to_owned(), node_rows.clone());
            tokio::spawn(async move {
                let log = PgLog::connect(&url, Duration::from_secs(5), 1).await.unwrap();
                let node = format!("paced-{n}");
                // The same rows under another node's name (the flat-out run's are in the log).
                let node_rows: Vec<Shippable> = node_rows
                    .into_iter()
                    .map(|mut s| {
                        s.event.node = node.clone();
                        s
                    })
                    .collect();
                let mut times = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                // Each node starts at its own offset in the 100 ms, as independent nodes do.
                tokio::time::sleep(Duration::from_millis(100 * n as u64 / NODES as u64)).await;
                for chunk in node_rows.chunks(BREAKERS) {
                    tick.tick().await;
                    let t = Instant::now();
                    log.ship(&node, chunk).await.unwrap();
                    times.push(t.elapsed());
                }
                log.close().await;
                times
            })
        })
        .collect();
    let mut paced = Vec::new();
    for t in tasks {
        paced.extend(t.await.unwrap());
    }
    let paced_wall = start.elapsed();
    paced.sort();
    println!(
        "ingest  postgres  : {:>9.0} rows/s paced (125 rows per node every 100 ms)  commit p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        total_rows as f64 / paced_wall.as_secs_f64(),
        percentile(&paced, 0.5),
        percentile(&paced, 0.99),
        percentile(&paced, 1.0)
    );

    // 2. Replay (of the first, flat-out ingest's nodes).
    let log = PgLog::connect(url, Duration::from_secs(5), 2).await.unwrap();
    // For the copies: every row again as one big node, and a node of one row (the fixed cost).
    let relabel = |node: &str, rows: &[Shippable]| -> Vec<Shippable> {
        let mut position = 0;
        rows.iter()
            .map(|s| {
                position += 1;
                let mut s = s.clone();
                s.event.node = node.to_owned();
                s.event.stream = format!("{}/{}", s.event.stream, position % 1000);
                s.event.position = position;
                s.event.seq = position;
                s
            })
            .collect()
    };
    let big = relabel("big", &rows.concat());
    for chunk in big.chunks(5_000) {
        log.ship("big", chunk).await.unwrap();
    }
    log.ship("tiny", &relabel("tiny", &rows[0][..1])).await.unwrap();
    let mut fixed = Vec::new();
    let mut pg_read = Vec::new();
    let mut sqlite_read = Vec::new();
    let mut copies = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut n_read = 0;
        for n in 0..NODES {
            let mut after = 0;
            loop {
                let page = log.read_node(&format!("node-{n}"), after, 20_000).await.unwrap();
                let Some(last) = page.last() else { break };
                after = last.event.position;
                n_read += page.len();
            }
        }
        assert_eq!(n_read, total_rows);
        pg_read.push(total_rows as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let mut n_read = 0;
        for n in 0..NODES {
            let j = open_node(dir, n, Durability::Full).await;
            let mut after = 0;
            loop {
                let page = j.read_shippable(after, 20_000).await.unwrap();
                let Some(last) = page.last() else { break };
                after = last.event.position;
                n_read += page.len();
            }
            j.close().await;
        }
        assert_eq!(n_read, total_rows);
        sqlite_read.push(total_rows as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let (copy, _) = node_copy(url, Some("big"), Duration::from_secs(5)).await.unwrap();
        copies.push(total_rows as f64 / start.elapsed().as_secs_f64());
        copy.close().await;
        let start = Instant::now();
        let (copy, _) = node_copy(url, Some("tiny"), Duration::from_secs(5)).await.unwrap();
        fixed.push(start.elapsed().as_secs_f64() * 1e3);
        copy.close().await;
    }
    println!(
        "replay  postgres  : {:>9.0} rows/s (every node, in its own order, over loopback)",
        median(pg_read)
    );
    println!(
        "replay  sqlite    : {:>9.0} rows/s (every node's file, opened and read)",
        median(sqlite_read)
    );
    println!(
        "copy    node_copy : {:>9.0} rows/s (a node of {total_rows} rows into a scratch log, what a command reading the fleet log does); {:.0} ms for a node of one row",
        median(copies),
        median(fixed)
    );
    log.close().await;

    // 3. Start-up of 100 breakers from node-0's file, with and without the shipper.
    let config = Config::from_toml(
        Path::new("bench.toml"),
        &(0..100).map(|b| format!("[services.s{b}]\n")).collect::<String>(),
        &BTreeMap::new(),
    )
    .unwrap();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..10 {
        let ship = round % 2 == 0;
        let start = Instant::now();
        let journal = open_node(dir, 0, Durability::Full).await;
        let shipper = if ship {
            Some(
                Shipper::start(
                    journal.clone(),
                    "node-0",
                    &format!("bench round {round}"),
                    FleetOptions::new(url),
                )
                .await
                .unwrap(),
            )
        } else {
            None
        };
        let registry = Registry::start(&config, journal.clone(), RegistryOptions::default())
            .await
            .unwrap();
        let took = start.elapsed().as_secs_f64() * 1e3;
        if ship {
            with.push(took)
        } else {
            without.push(took)
        }
        registry.shutdown_within(Duration::from_secs(5)).await.unwrap();
        if let Some(s) = shipper {
            s.stop(Duration::from_secs(5)).await;
        }
        journal.close().await;
    }
    println!(
        "start-up 100 breakers: {:.0} ms with the shipper, {:.0} ms without (medians of 5)",
        median(with),
        median(without)
    );

    // 4. The call path while the fleet's log does not answer.
    let config = Config::from_toml(Path::new("bench.toml"), "[services.closed]\n", &BTreeMap::new()).unwrap();
    let mut setups = Vec::new();
    for (n, ships) in [(100, true), (101, false)] {
        let journal = open_node(dir, n, Durability::Full).await;
        let shipper = if ships {
            let options = FleetOptions {
                connect_timeout: Duration::from_millis(200),
                offline_start: OfflineStart::Run,
                ..FleetOptions::new("postgres://postgres@127.0.0.1:1/none")
            };
            Some(
                Shipper::start(journal.clone(), &format!("node-{n}"), "bench", options)
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let registry = Registry::start(
            &config,
            journal.clone(),
            RegistryOptions {
                clock: Clock::system(),
                ..RegistryOptions::default()
            },
        )
        .await
        .unwrap();
        setups.push((journal, shipper, registry));
    }
    let calls = 250_000u32;
    let mut stopped = Vec::new();
    let mut none = Vec::new();
    for round in 0..20 {
        // Alternating which goes first; each journal's backlog written before the other runs.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (journal, _, registry) = &setups[i];
            let handle = registry.get("closed").unwrap().clone();
            let took = tokio::task::block_in_place(|| {
                let start = Instant::now();
                for _ in 0..calls {
                    let _ = black_box(handle.call_sync("", || Ok::<u32, ()>(black_box(1))));
                }
                start.elapsed()
            });
            journal.flush().await.unwrap();
            let ns = took.as_secs_f64() * 1e9 / f64::from(calls);
            if i == 0 { stopped.push(ns) } else { none.push(ns) }
        }
    }
    let least = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (ls, ln) = (least(&stopped), least(&none));
    let (s, n) = (median(stopped), median(none));
    println!(
        "call_sync: {s:.1} ns with the fleet log stopped, {n:.1} ns shipping nowhere ({:+.1} %; medians of 20 rounds of {calls}); fastest rounds {ls:.1} / {ln:.1} ns ({:+.1} %)",
        (s / n - 1.0) * 100.0,
        (ls / ln - 1.0) * 100.0
    );
    for (journal, shipper, registry) in setups {
        registry.shutdown_within(Duration::from_secs(5)).await.unwrap();
        if let Some(s) = shipper {
            s.stop(Duration::from_secs(1)).await;
        }
        journal.close().await;
    }

    // 5. Fleet health of 30 breakers × 8 nodes.
    fleet_health(url).await;
    // 6. Fleet command propagation.
    fleet_commands(dir, url).await;
}

async fn fleet_commands(dir: &Path, url: &str) {
    use breakerbox::actor::fleet::{FleetFollower, FollowerOptions};
    use breakerbox::breaker::Command;
    use breakerbox::journal::fleet::issue_on;
    use breakerbox::journal::pg::FleetAsk;
    let config = Config::from_toml(Path::new("bench.toml"), "[services.stripe]\n", &BTreeMap::new()).unwrap();
    let log = PgLog::connect(url, Duration::from_secs(5), 4).await.unwrap();
    for (listen, label) in [(true, "NOTIFY"), (false, "polling every 200 ms")] {
        let mut nodes = Vec::new();
        for n in 0..NODES {
            let node = format!("cmd-{label}-{n}").replace(' ', "_");
            let journal = open_node(dir, 200 + n + if listen { 0 } else { 100 }, Durability::Full).await;
            let registry = Arc::new(
                Registry::start(
                    &config,
                    journal.clone(),
                    RegistryOptions {
                        clock: Clock::system(),
                        ..RegistryOptions::default()
                    },
                )
                .await
                .unwrap(),
            );
            log.acquire_node(&node, "bench", Duration::from_secs(600))
                .await
                .unwrap();
            let options = FollowerOptions {
                listen,
                ..FollowerOptions::new(url, node.clone())
            };
            let follower = FleetFollower::start(registry.clone(), options);
            assert!(follower.caught_up(Duration::from_secs(10)).await);
            nodes.push((node, journal, registry, follower));
        }
        let mut each = Vec::new();
        let mut all = Vec::new();
        for i in 0..40 {
            let asked = FleetAsk {
                service: "stripe".into(),
                command: if i % 2 == 0 { Command::ForceOpen } else { Command::Reset },
                who: "bench".into(),
                origin: "cli".into(),
                why: format!("propagation {i}"),
            };
            let issued = issue_on(&log, &asked, None, Duration::from_secs(5)).await.unwrap();
            let mine: Vec<i64> = issued
                .acks
                .iter()
                .filter(|a| nodes.iter().any(|(n, ..)| n == &a.node))
                .map(|a| a.applied_at_ms - issued.command.issued_at_ms)
                .collect();
            assert_eq!(mine.len(), NODES, "every node acknowledged");
            all.push(*mine.iter().max().unwrap());
            each.extend(mine);
        }
        for (node, journal, registry, follower) in nodes {
            follower.stop().await;
            log.release_node(&node, "bench").await.unwrap();
            registry.shutdown_within(Duration::from_secs(5)).await.unwrap();
            journal.close().await;
        }
        let ms = |v: &mut Vec<i64>, p: f64| {
            v.sort();
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        };
        let within_1s = each.iter().filter(|&&t| t <= 1_000).count() as f64 / each.len() as f64 * 100.0;
        println!(
            "fleet command to {NODES} nodes, {label}: each node's ack p50 {} ms, p99 {} ms, max {} ms; all {NODES} acked p50 {} ms, p99 {} ms; {within_1s:.0} % within 1 s (40 commands)",
            ms(&mut each, 0.5),
            ms(&mut each, 0.99),
            ms(&mut each, 1.0),
            ms(&mut all, 0.5),
            ms(&mut all, 0.99)
        );
    }
    log.close().await;
}

async fn fleet_health(url: &str) {
    use breakerbox::breaker::State;
    use breakerbox::journal::LATENCY_BOUNDS_MS;
    use breakerbox::journal::fleet::{DEFAULT_GONE_AFTER, health_rows, open_to_read};
    use breakerbox::replay::fleet::{NODE_DOC_VERSION, NodeBreaker, NodeDoc, fleet_health};
    use breakerbox::replay::{Minute, Severity};
    let log = PgLog::connect(url, Duration::from_secs(5), 2).await.unwrap();
    for n in 0..NODES {
        let node = format!("fleet-{n}");
        log.acquire_node(&node, "bench", Duration::from_secs(600))
            .await
            .unwrap();
        let breakers = (0..30)
            .map(|b| NodeBreaker {
                service: format!("service-{b:02}"),
                state: if n == 0 && b < 3 { State::Open } else { State::Closed },
                severity: Severity::Healthy,
                health: Some(90),
                window_5m: Some(Minute {
                    successes: 3_000 + b,
                    failures: 30,
                    latency_total_ms: 90_000,
                    latency_buckets: (0..=LATENCY_BOUNDS_MS.len() as u64).map(|i| i * 10 + b).collect(),
                    ..Minute::default()
                }),
                latency_budget_ms: 1_000,
                tripped_at_ms: None,
            })
            .collect();
        let doc = NodeDoc {
            version: NODE_DOC_VERSION,
            at_ms: 0,
            log_ok: true,
            breakers,
        };
        log.publish_health(&node, 0, &serde_json::to_string(&doc).unwrap())
            .await
            .unwrap();
    }
    log.close().await;
    let reader = open_to_read(url, Duration::from_secs(5)).await.unwrap();
    let mut took = Vec::new();
    let mut size = 0;
    for _ in 0..200 {
        let start = Instant::now();
        let (now, views, rows) = health_rows(&reader, DEFAULT_GONE_AFTER).await.unwrap();
        let health = fleet_health(now, &views, &rows, None);
        size = serde_json::to_vec(black_box(&health)).unwrap().len();
        took.push(start.elapsed());
    }
    reader.close().await;
    took.sort();
    let mut cli = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_breakerbox"))
            .args(["status", "--fleet", "--json", "--db", url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        cli.push(start.elapsed());
    }
    cli.sort();
    println!(
        "fleet health, 30 breakers x {NODES} nodes: read and merged in {:.2} ms p50, {:.2} ms p99 (200 reads on a kept connection; {size} bytes of JSON); `status --fleet --json` as a process {:.1} ms median of 10",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&cli, 0.5)
    );
}
