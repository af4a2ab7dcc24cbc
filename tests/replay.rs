//! Answers about the past: export → simulate reproduces the live log; state at an instant;
//! the audit trail.

use breakerbox::actor::{Clock, Operator, Registry, RegistryOptions};
use breakerbox::breaker::{Event, Outcome, Policy, State};
use breakerbox::config::Config;
use breakerbox::journal::{Journal, JournalOptions};
use breakerbox::replay::{self, AuditQuery, Kind};
use breakerbox::simulate::{Simulator, parse_line};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = r#"
[services.stripe]
failure_threshold = 3
timeout = "1s"
backoff_factor = 2
max_timeout = "8s"
jitter = 20
seed = 7
"#;

fn operator(why: &str) -> Operator {
    Operator {
        who: "bob@ops".into(),
        from: "cli".into(),
        why: why.into(),
    }
}

async fn start(dir: &Path, clock: &Clock) -> (Registry, Config) {
    let config = Config::from_toml(Path::new("test.toml"), CONFIG, &BTreeMap::new()).unwrap();
    let journal = Arc::new(
        Journal::open(&dir.join("log.db"), JournalOptions::default())
            .await
            .unwrap(),
    );
    let registry = Registry::start(
        &config,
        journal,
        RegistryOptions {
            clock: clock.clone(),
            ..RegistryOptions::default()
        },
    )
    .await
    .unwrap();
    (registry, config)
}

/// Seeded traffic through the live call path: latencies, overlapping calls, timers, commands.
async fn traffic(registry: &Registry, clock: &Clock, seed: u64, steps: usize) {
    let stripe = registry.get("stripe").unwrap().clone();
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut held: Vec<(tokio::task::JoinHandle<()>, Arc<tokio::sync::Notify>)> = Vec::new();
    for _ in 0..steps {
        match rand(20) {
            0..=11 => {
                let latency = rand(40);
                let outcome = match rand(10) {
                    0..=3 => Outcome::Failure,
                    4 => Outcome::Ignored,
                    _ => Outcome::Success,
                };
                let c = clock.clone();
                let _ = stripe
                    .call_classified(
                        "",
                        async move {
                            c.advance(latency);
                            Ok::<_, ()>(())
                        },
                        &move |_: &Result<(), ()>| outcome,
                    )
                    .await;
            }
            12..=13 => {
                // A call that stays in flight while others come and go.
                let release = Arc::new(tokio::sync::Notify::new());
                let (s, r) = (stripe.clone(), release.clone());
                let fail = rand(2) == 0;
                let task = tokio::spawn(async move {
                    let _ = s
                        .call("", async move {
                            r.notified().await;
                            if fail { Err(()) } else { Ok(()) }
                        })
                        .await;
                });
                // Wait until it is admitted or rejected.
                for _ in 0..50 {
                    tokio::task::yield_now().await;
                }
                held.push((task, release));
            }
            14..=16 => {
                clock.advance(rand(700));
                stripe.tick().await;
                // Release an older in-flight call right after time moved, at an instant of its own.
                if !held.is_empty() && rand(2) == 0 {
                    clock.advance(1);
                    let (task, release) = held.remove(0);
                    release.notify_one();
                    task.await.unwrap();
                }
            }
            17 => {
                let why = "drill";
                match rand(6) {
                    0 => drop(stripe.force_open(operator(why)).await.unwrap()),
                    1 => drop(stripe.disable(operator(why)).await.unwrap()),
                    _ => drop(stripe.reset(operator(why)).await.unwrap()),
                }
            }
            _ => clock.advance(rand(30)),
        }
        // The actor folds what the step recorded before the next step (its lag is µs; here the
        // steps are as fast as the test can go, so wait for it explicitly).
        stripe.inspect().await;
    }
    for (task, release) in held {
        clock.advance(1);
        release.notify_one();
        task.await.unwrap();
        stripe.inspect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_fed_to_simulate_reproduces_exactly_the_transitions_the_live_log_recorded() {
    for seed in [1u64, 7, 42, 2026] {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(1_764_000_000_000);
        let (registry, config) = start(dir.path(), &clock).await;
        traffic(&registry, &clock, seed, 600).await;
        registry.shutdown().await.unwrap();
        let entries = replay::history(registry.journal(), "stripe").await.unwrap();
        let fallback = config.breaker("stripe").unwrap().policy.clone();
        let live = replay::transitions(&entries, 0, u64::MAX);
        assert!(
            live.len() > 10,
            "seed {seed}: the traffic exercised the breaker ({} transitions)",
            live.len()
        );

        let lines = replay::export(&entries, None, None, &fallback);
        let mut sim = Simulator::new(fallback.clone()).unwrap();
        let mut events = Vec::new();
        let mut previous = 0;
        for (i, line) in lines.iter().enumerate() {
            let input = parse_line(i + 1, &line.to_string(), previous).unwrap().unwrap();
            previous = input.at_ms();
            sim.step(&input, &mut events);
        }
        sim.finish(&mut events);
        let simulated: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Transitioned(t) => Some((t.at_ms, t.from, t.to, t.reason)),
                _ => None,
            })
            .collect();
        let recorded: Vec<_> = live.iter().map(|t| (t.at_ms, t.from, t.to, t.reason)).collect();
        if simulated != recorded {
            let i = simulated
                .iter()
                .zip(&recorded)
                .position(|(a, b)| a != b)
                .unwrap_or(simulated.len().min(recorded.len()));
            eprintln!(
                "diverged: first difference at {i}: sim {:?} live {:?}",
                simulated.get(i),
                recorded.get(i)
            );
            let t = recorded.get(i).or(simulated.get(i)).unwrap().0;
            for e in &entries {
                if let replay::Item::Core(ev) = &e.item
                    && ev.at_ms() + 1500 > t
                    && ev.at_ms() < t + 200
                {
                    eprintln!("diverged: live pos {} {:?}", e.position, ev);
                }
            }
            for l in &lines {
                let at = l["at_ms"].as_u64().unwrap();
                if at + 1500 > t && at < t + 200 {
                    eprintln!("diverged: line {l}");
                }
            }
        }
        assert_eq!(simulated, recorded, "seed {seed}");
        // A window that starts mid-history (state line) reproduces that window's transitions.
        let mid = live[live.len() / 2].at_ms + 1;
        let window = replay::export(&entries, Some(mid), None, &fallback);
        assert!(window[0].get("state").is_some());
        let mut sim = Simulator::new(fallback.clone()).unwrap();
        let mut events = Vec::new();
        let mut previous = 0;
        for (i, line) in window.iter().enumerate() {
            let input = parse_line(i + 1, &line.to_string(), previous).unwrap().unwrap();
            previous = input.at_ms();
            sim.step(&input, &mut events);
        }
        sim.finish(&mut events);
        let simulated: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Transitioned(t) => Some((t.at_ms, t.from, t.to, t.reason)),
                _ => None,
            })
            .collect();
        let recorded: Vec<_> = replay::transitions(&entries, mid, u64::MAX)
            .iter()
            .map(|t| (t.at_ms, t.from, t.to, t.reason))
            .collect();
        assert_eq!(simulated, recorded, "seed {seed}: window from {mid}");
        registry.journal().close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_at_an_instant_equals_the_live_state_at_that_instant() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, config) = start(dir.path(), &clock).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let mut recorded = Vec::new();
    let mut x = 99u64;
    for i in 0..400u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let fail = x.is_multiple_of(3);
        let _ = stripe
            .call("", async move { if fail { Err(()) } else { Ok(()) } })
            .await;
        clock.advance(x % 120);
        stripe.tick().await;
        if i % 37 == 0 {
            // Record the live state at this instant (everything up to now folded).
            let b = stripe.inspect().await.unwrap();
            recorded.push((clock.now_ms(), b.view(clock.now_ms())));
            // "The state at T" includes every event stamped T: move on so nothing else is.
            clock.advance(1);
        }
    }
    registry.shutdown().await.unwrap();
    let fallback: Policy = config.breaker("stripe").unwrap().policy.clone();
    for (at, live) in recorded {
        let replayed = replay::state_at(registry.journal(), "stripe", at, &fallback, 1_000)
            .await
            .unwrap();
        if replayed.view != live {
            let entries = replay::history(registry.journal(), "stripe").await.unwrap();
            for e in &entries {
                if let replay::Item::Core(ev) = &e.item
                    && ev.at_ms() + 300 > at
                    && ev.at_ms() < at + 300
                {
                    eprintln!("diverged: pos {} {:?}", e.position, ev);
                }
            }
        }
        assert_eq!(replayed.view, live, "at {at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_shows_who_did_what_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, _) = start(dir.path(), &clock).await;
    let stripe = registry.get("stripe").unwrap().clone();
    for _ in 0..3 {
        let _ = stripe.call("", async { Err::<(), _>(()) }).await;
    }
    stripe.inspect().await;
    clock.advance(10);
    stripe.force_open(operator("stripe incident #42")).await.unwrap();
    clock.advance(10);
    let _ = stripe.call("", async { Ok::<_, ()>(()) }).await;
    stripe.reset(operator("resolved")).await.unwrap();
    registry.shutdown().await.unwrap();
    let all = AuditQuery {
        stream: Some("stripe".into()),
        kinds: vec![],
        since_ms: 0,
        until_ms: u64::MAX,
        after_position: 0,
        limit: 1_000,
    };
    let trail = replay::audit(registry.journal(), &all).await.unwrap();
    let lines: Vec<String> = trail
        .iter()
        .map(|e| format!("{}: {}", e.kind.as_str(), e.summary))
        .collect();
    let text = lines.join("\n");
    assert!(
        text.contains("transition: closed → open (consecutive_failures"),
        "{text}"
    );
    assert!(
        text.contains("command: force_open by bob@ops from cli: stripe incident #42 (open → forced_open)"),
        "{text}"
    );
    assert!(
        text.contains("command: reset by bob@ops from cli: resolved (forced_open → closed)"),
        "{text}"
    );
    assert!(text.contains("stats: 1 rejected"), "{text}");
    assert!(trail.windows(2).all(|w| w[0].position < w[1].position));
    // Filter by kind, and paginate by position.
    let commands = replay::audit(
        registry.journal(),
        &AuditQuery {
            kinds: vec![Kind::Command],
            limit: 1,
            ..all.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(commands.len(), 1);
    let next = replay::audit(
        registry.journal(),
        &AuditQuery {
            kinds: vec![Kind::Command],
            after_position: commands[0].position,
            ..all.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].summary.starts_with("reset"));
    let state = replay::state_at(
        registry.journal(),
        "stripe",
        clock.now_ms(),
        &Policy::consecutive(3, 1_000),
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(state.view.state, State::Closed);
    // Opened by failures, then forced open: two openings in the hour cost 10 of 15 points.
    assert_eq!(state.health.stability.points, 5.0, "{:?}", state.health);
    let _ = Duration::ZERO;
}

fn minute(successes: u64, failures: u64, rejected: u64, latency_ms: u64) -> replay::Minute {
    use breakerbox::journal::LATENCY_BOUNDS_MS;
    let calls = successes + failures;
    let mut buckets = vec![0; LATENCY_BOUNDS_MS.len() + 1];
    buckets[LATENCY_BOUNDS_MS.partition_point(|&b| u64::from(b) < latency_ms)] = calls;
    replay::Minute {
        minute_ms: 0,
        successes,
        failures,
        rejected,
        latency_total_ms: latency_ms * calls,
        latency_buckets: buckets,
        ..replay::Minute::default()
    }
}

fn opened_at(at_ms: u64) -> breakerbox::breaker::Transition {
    breakerbox::breaker::Transition {
        at_ms,
        from: State::Closed,
        to: State::Open,
        episode: 1,
        reason: breakerbox::breaker::Reason::ConsecutiveFailures,
        evidence: Default::default(),
        open_until_ms: Some(at_ms + 1_000),
    }
}

#[test]
fn health_scores_each_component_at_its_boundaries() {
    let at = 2 * 3_600_000;
    let last_minute = at - 60_000;
    let one = |m: replay::Minute| {
        BTreeMap::from([(
            last_minute,
            replay::Minute {
                minute_ms: last_minute,
                ..m
            },
        )])
    };
    // No calls at all: full marks.
    let h = replay::health(&BTreeMap::new(), &[], at, 1_000);
    assert_eq!(
        (h.score, h.success.points, h.latency.points, h.stability.points),
        (100, 60.0, 25.0, 15.0)
    );
    // All good.
    assert_eq!(
        replay::health(&one(minute(1_000, 0, 0, 120)), &[], at, 1_000).score,
        100
    );
    // 10 % failures: 54 + 25 + 15.
    assert_eq!(replay::health(&one(minute(900, 100, 0, 120)), &[], at, 1_000).score, 94);
    // All failures, opened once, rejections count as failures: 0 + 25 + 10.
    let h = replay::health(&one(minute(0, 1_000, 200, 5)), &[opened_at(at - 60_000)], at, 1_000);
    assert_eq!((h.score, h.success.points), (35, 0.0));
    // All slow: mean 3 s, p95 in the 5 s bucket: 25 × (½ × ⅓ + ½ × ⅖) = 9.17.
    let h = replay::health(&one(minute(1_000, 0, 0, 3_000)), &[], at, 1_000);
    assert!((h.latency.points - 9.1667).abs() < 0.01, "{h:?}");
    assert_eq!(h.score, 84);
    // Flapping: three openings in the hour take all 15; one older than an hour doesn't count.
    let flaps = [
        opened_at(at - 3_600_000 - 1),
        opened_at(at - 50_000),
        opened_at(at - 40_000),
        opened_at(at - 30_000),
    ];
    let h = replay::health(&one(minute(900, 100, 0, 120)), &flaps, at, 1_000);
    assert_eq!((h.stability.points, h.score), (0.0, 79));
    assert!(h.stability.why.contains("flapping"));
    // Minutes older than 5 minutes don't count.
    let old = BTreeMap::from([(0, minute(0, 1_000, 0, 5))]);
    assert_eq!(replay::health(&old, &[], at, 1_000).score, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_projection_is_the_same_tailed_step_by_step_or_rebuilt_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, config) = start(dir.path(), &clock).await;
    let mut projection = replay::Projection::open(&dir.path().join("log.db")).await.unwrap();
    // Traffic in phases; the projection tails the log between them, a few events per step.
    for (phase, seed) in [3u64, 11, 29, 31].iter().enumerate() {
        traffic(&registry, &clock, *seed, 150).await;
        registry.journal().flush().await.unwrap();
        let step = projection.catch_up(registry.journal(), 7).await.unwrap();
        assert!(step.events > 0, "phase {phase}");
    }
    registry.shutdown().await.unwrap();
    projection.catch_up(registry.journal(), 7).await.unwrap();
    let tailed = projection.dump().await.unwrap();
    assert!(!tailed.is_empty());
    // A second projector on the same file (another process) catching up at the same time never
    // counts anything twice.
    let mut other = replay::Projection::open(&dir.path().join("log.db")).await.unwrap();
    projection.rebuild(registry.journal(), 10_000).await.unwrap();
    projection.catch_up(registry.journal(), 10_000).await.unwrap();
    let (a, b) = tokio::join!(
        projection.rebuild(registry.journal(), 3),
        other.catch_up(registry.journal(), 5)
    );
    let _ = (a.unwrap(), b.unwrap());
    assert_eq!(
        projection.dump().await.unwrap(),
        tailed,
        "two projectors at once: still exact"
    );
    other.close().await;
    let rebuilt = projection.rebuild(registry.journal(), 10_000).await.unwrap();
    assert!(rebuilt.calls > 0);
    assert_eq!(
        projection.dump().await.unwrap(),
        tailed,
        "tailed and rebuilt projections are identical"
    );
    // And they agree with folding the history in memory, time in state included.
    let entries = replay::history(registry.journal(), "stripe").await.unwrap();
    let end = clock.now_ms();
    let stored = projection.minutes("stripe", 0, end).await.unwrap();
    assert_eq!(stored, replay::minutes(&entries, end));
    // Health of every breaker from the projection equals health from the history.
    let budgets = BTreeMap::from([("stripe".to_owned(), 1_000u64)]);
    let all = projection.health_all(registry.journal(), &budgets, end).await.unwrap();
    let fallback = config.breaker("stripe").unwrap().policy.clone();
    let state = replay::state_at(registry.journal(), "stripe", end, &fallback, 1_000)
        .await
        .unwrap();
    assert_eq!(all["stripe"], state.health);
    projection.close().await;
}
