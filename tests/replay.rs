//! Answers about the past: export → simulate reproduces the live log; state at an instant;
//! the audit trail.

#[path = "support/lock.rs"]
mod lock;
#[path = "support/tamper.rs"]
mod tamper;

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
    start_with(dir, clock, CONFIG).await
}

/// [`start`] with another configuration file's text.
async fn start_with(dir: &Path, clock: &Clock, toml: &str) -> (Registry, Config) {
    let config = Config::from_toml(Path::new("test.toml"), toml, &BTreeMap::new()).unwrap();
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

/// `simulate` run over exported trace lines: the transitions it makes.
fn simulate_lines(
    lines: &[serde_json::Value],
    policy: &Policy,
) -> Vec<(u64, State, State, breakerbox::breaker::Reason)> {
    let mut sim = Simulator::new(policy.clone()).unwrap();
    let mut events = Vec::new();
    let mut previous = 0;
    for (i, line) in lines.iter().enumerate() {
        let input = parse_line(i + 1, &line.to_string(), previous).unwrap().unwrap();
        previous = input.at_ms();
        sim.step(&input, &mut events);
    }
    sim.finish(&mut events);
    events
        .iter()
        .filter_map(|e| match e {
            Event::Transitioned(t) => Some((t.at_ms, t.from, t.to, t.reason)),
            _ => None,
        })
        .collect()
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

        let lines: Vec<_> = replay::export(&entries, None, None, &fallback)
            .iter()
            .map(replay::TraceLine::to_json)
            .collect();
        let simulated = simulate_lines(&lines, &fallback);
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
        let window: Vec<_> = replay::export(&entries, Some(mid), None, &fallback)
            .iter()
            .map(replay::TraceLine::to_json)
            .collect();
        assert!(window[0].get("state").is_some());
        let simulated = simulate_lines(&window, &fallback);
        let recorded: Vec<_> = replay::transitions(&entries, mid, u64::MAX)
            .iter()
            .map(|t| (t.at_ms, t.from, t.to, t.reason))
            .collect();
        assert_eq!(simulated, recorded, "seed {seed}: window from {mid}");
        // What-if with nothing changed is what happened; the library answers without the CLI.
        let same = replay::what_if(&entries, Some(mid), None, &fallback, &Default::default()).unwrap();
        assert_eq!(same.alternative.transitions, same.actual.transitions, "seed {seed}");
        assert_eq!(same.alternative.open_ms, same.actual.open_ms, "seed {seed}");
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
    let trail = replay::audit(registry.journal(), &all).await.unwrap().entries;
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
    .unwrap()
    .entries;
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
    .unwrap()
    .entries;
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
    let h = replay::health(&BTreeMap::new(), &[], at, 1_000, State::Closed);
    assert_eq!(
        (h.score, h.success.points, h.latency.points, h.stability.points),
        (100, 60.0, 25.0, 15.0)
    );
    // All good.
    assert_eq!(
        replay::health(&one(minute(1_000, 0, 0, 120)), &[], at, 1_000, State::Closed).score,
        100
    );
    // 10 % failures: 54 + 25 + 15.
    assert_eq!(
        replay::health(&one(minute(900, 100, 0, 120)), &[], at, 1_000, State::Closed).score,
        94
    );
    // All failures, opened once, rejections count as failures: 0 + 25 + 10.
    let h = replay::health(
        &one(minute(0, 1_000, 200, 5)),
        &[opened_at(at - 60_000)],
        at,
        1_000,
        State::Closed,
    );
    assert_eq!((h.score, h.success.points), (35, 0.0));
    // All slow: mean 3 s, p95 in the 5 s bucket: 25 × (½ × ⅓ + ½ × ⅖) = 9.17.
    let h = replay::health(&one(minute(1_000, 0, 0, 3_000)), &[], at, 1_000, State::Closed);
    assert!((h.latency.points - 9.1667).abs() < 0.01, "{h:?}");
    assert_eq!(h.score, 84);
    // Flapping: three openings in the hour take all 15; one older than an hour doesn't count.
    let flaps = [
        opened_at(at - 3_600_000 - 1),
        opened_at(at - 50_000),
        opened_at(at - 40_000),
        opened_at(at - 30_000),
    ];
    let h = replay::health(&one(minute(900, 100, 0, 120)), &flaps, at, 1_000, State::Closed);
    assert_eq!((h.stability.points, h.score), (0.0, 79));
    assert!(h.stability.why.contains("flapping"));
    // Minutes older than 5 minutes don't count.
    let old = BTreeMap::from([(0, minute(0, 1_000, 0, 5))]);
    assert_eq!(replay::health(&old, &[], at, 1_000, State::Closed).score, 100);
    // A breaker that rejects every call is never green, whatever its last calls did: OPEN and
    // FORCED_OPEN are capped at 49 (red), HALF_OPEN at 79 (amber), and the cap says why.
    let good = one(minute(1_000, 0, 0, 120));
    for (state, cap, band) in [
        (State::ForcedOpen, 49, replay::Band::Red),
        (State::Open, 49, replay::Band::Red),
        (State::HalfOpen, 79, replay::Band::Amber),
    ] {
        let h = replay::health(&good, &[], at, 1_000, state);
        assert_eq!((h.score, h.band), (cap, band), "{state}");
        assert!(h.capped.as_deref().unwrap().starts_with("100 capped at"), "{h:?}");
    }
    let h = replay::health(&good, &[], at, 1_000, State::Disabled);
    assert_eq!((h.score, h.band, h.capped), (100, replay::Band::Green, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_projection_is_the_same_tailed_step_by_step_or_rebuilt_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, config) = start(dir.path(), &clock).await;
    let mut projection = replay::Projection::open(registry.journal());
    // Traffic in phases; the projection tails the log between them, a few events per step.
    for (phase, seed) in [3u64, 11, 29, 31].iter().enumerate() {
        traffic(&registry, &clock, *seed, 150).await;
        registry.journal().flush().await.unwrap();
        let step = projection.catch_up(registry.journal(), 7).await.unwrap();
        // (The registry's own projector, every second, may have folded the phase first.)
        let end = registry.journal().last_position().await.unwrap();
        assert!(
            step.position >= end,
            "phase {phase}: caught up to {} of {end}",
            step.position
        );
    }
    registry.shutdown().await.unwrap();
    projection.catch_up(registry.journal(), 7).await.unwrap();
    let tailed = projection.dump().await.unwrap();
    assert!(!tailed.is_empty());
    // A second projector on the same file (another process) catching up at the same time never
    // counts anything twice.
    let mut other = replay::Projection::open(registry.journal());
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
    let fallback = config.breaker("stripe").unwrap().policy.clone();
    let state = replay::state_at(registry.journal(), "stripe", end, &fallback, 1_000)
        .await
        .unwrap();
    let breakers = BTreeMap::from([("stripe".to_owned(), (1_000u64, state.view.state))]);
    let all = projection.health_all(registry.journal(), &breakers, end).await.unwrap();
    assert_eq!(all["stripe"], state.health);
}

// ---------------------------------------------------------------------------------------------
// The tailing projection across compaction: retention replaces call batches by summaries at new
// positions; a projection that folded the batches must not count their summaries again.

mod tailing_across_compaction {
    use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
    use breakerbox::journal::{Body, Durability, Journal, JournalOptions};
    use breakerbox::replay::{Minute, Projection};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::sync::Arc;

    const T0: u64 = 1_764_000_000_000;
    const MINUTE: u64 = 60_000;

    #[derive(Clone, Debug)]
    enum Op {
        /// `n` calls of one stream, `gap_ms` apart; call `i` fails when bit `i % 32` of `fails`
        /// is set (runs of failures open the breaker).
        Calls {
            stream: usize,
            n: u32,
            gap_ms: u64,
            fails: u32,
        },
        /// Time passes.
        Wait(u64),
        /// A stream's snapshot: compaction removes only batches before one.
        Snapshot(usize),
        /// The writer commits what it holds.
        Flush,
        /// The tailing projection folds what is committed, `page` events per step.
        Tail(u32),
        /// Retention keeps the last `minutes` minutes of per-call outcomes.
        Compact(u64),
    }

    fn op(tail: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..3usize, 1..30u32, 0..5_000u64, any::<u32>())
                .prop_map(|(stream, n, gap_ms, fails)| Op::Calls { stream, n, gap_ms, fails }),
            2 => (0..4 * MINUTE).prop_map(Op::Wait),
            2 => (0..3usize).prop_map(Op::Snapshot),
            1 => Just(Op::Flush),
            tail => (1..40u32).prop_map(Op::Tail),
            2 => (1..30u64).prop_map(Op::Compact),
        ]
    }

    /// A stretch where the projection may not have started yet, then anything.
    fn ops() -> impl Strategy<Value = Vec<Op>> {
        (
            proptest::collection::vec(op(0), 0..40),
            proptest::collection::vec(op(3), 20..100),
        )
            .prop_map(|(mut first, rest)| {
                first.extend(rest);
                first
            })
    }

    /// Calls compacted while the projection had not started, was behind the log, or was not.
    #[derive(Debug, Default)]
    struct Seen {
        not_started: u64,
        behind: u64,
        up_to_date: u64,
    }

    fn calls(rows: &[(String, u64, Minute)]) -> u64 {
        rows.iter().map(|(_, _, m)| m.calls()).sum()
    }

    /// The rows that differ, side by side (the whole dumps are too long to read).
    fn differing<'a>(
        a: &'a [(String, u64, Minute)],
        b: &'a [(String, u64, Minute)],
    ) -> Vec<(String, u64, Option<&'a Minute>, Option<&'a Minute>)> {
        let index = |rows: &'a [(String, u64, Minute)]| {
            rows.iter()
                .map(|(s, m, row)| ((s.clone(), *m), row))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let (a, b) = (index(a), index(b));
        let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).cloned().collect();
        keys.into_iter()
            .filter(|k| a.get(k) != b.get(k))
            .map(|k| (k.0.clone(), k.1, a.get(&k).copied(), b.get(&k).copied()))
            .collect()
    }

    async fn run(ops: &[Op], seen: &mut Seen) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let options = JournalOptions {
            durability: Durability::Normal,
            ..JournalOptions::default()
        };
        let journal = Journal::open(&path, options).await.unwrap();
        let mut projection = Projection::open(&journal);
        let streams: Vec<Arc<str>> = ["stripe", "calcom", "retell"].into_iter().map(Arc::from).collect();
        let policy = Policy::consecutive(4, 30_000);
        let mut events = Vec::new();
        let mut breakers: Vec<Breaker> = Vec::new();
        for stream in &streams {
            // As the registry starts a new stream: with the policy it starts with.
            let mut b = Breaker::new(policy.clone()).unwrap();
            b.set_policy(T0, policy.clone(), &mut events).unwrap();
            for e in events.drain(..) {
                journal.submit(stream, Body::Breaker(e)).unwrap();
            }
            breakers.push(b);
        }
        let (mut now, mut recorded, mut tailed_to) = (T0, 0u64, None);
        for op in ops {
            match *op {
                Op::Calls {
                    stream,
                    n,
                    gap_ms,
                    fails,
                } => {
                    let b = &mut breakers[stream];
                    for i in 0..n {
                        now += gap_ms;
                        b.tick(now, &mut events);
                        if let Decision::Permit(p) = b.acquire(now, &mut events) {
                            let failed = fails & (1 << (i % 32)) != 0;
                            let outcome = if failed { Outcome::Failure } else { Outcome::Success };
                            b.complete(now + 1 + u64::from(i % 7) * 40, p, outcome, &mut events);
                        }
                        for e in events.drain(..) {
                            recorded += u64::from(matches!(e, breakerbox::breaker::Event::CallRecorded(_)));
                            journal.submit(&streams[stream], Body::Breaker(e)).unwrap();
                        }
                    }
                    now += 300;
                }
                Op::Wait(ms) => now += ms,
                Op::Snapshot(stream) => {
                    let breaker = Box::new(breakers[stream].clone());
                    journal
                        .submit(&streams[stream], Body::Snapshot { at_ms: now, breaker })
                        .unwrap();
                }
                Op::Flush => {
                    journal.flush().await.unwrap();
                }
                Op::Tail(page) => {
                    journal.flush().await.unwrap();
                    tailed_to = Some(projection.catch_up(&journal, page).await.unwrap().position);
                }
                Op::Compact(minutes) => {
                    journal.flush().await.unwrap();
                    let end = journal.last_position().await.unwrap();
                    let report = journal.compact(minutes * MINUTE, now).await.unwrap();
                    *match tailed_to {
                        None => &mut seen.not_started,
                        Some(p) if p < end => &mut seen.behind,
                        Some(_) => &mut seen.up_to_date,
                    } += report.calls;
                }
            }
        }
        journal.flush().await.unwrap();
        projection.catch_up(&journal, 50).await.unwrap();
        let tailed = projection.dump().await.unwrap();
        let tailed_totals = projection.totals().await.unwrap();
        projection.rebuild(&journal, 1_000).await.unwrap();
        let rebuilt = projection.dump().await.unwrap();
        prop_assert_eq!(calls(&rebuilt), recorded, "the rebuild counts every call once");
        let diff = differing(&tailed, &rebuilt);
        prop_assert!(
            diff.is_empty(),
            "tailed and rebuilt rows differ (stream, minute, tailed, rebuilt): {diff:#?}"
        );
        prop_assert_eq!(
            tailed_totals,
            projection.totals().await.unwrap(),
            "tailed and rebuilt totals"
        );
        journal.close().await;
        Ok(())
    }

    #[test]
    fn the_tailing_projection_equals_a_rebuild_whenever_compaction_runs() {
        // Given random calls over three streams and some hours, the projection tailing the log at
        // random points and retention at random points (cutting some of what it already folded,
        // and some of what it had not reached yet), when it catches up at the end, its rows and
        // totals are those of a rebuild from scratch.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut runner = TestRunner::new(Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        });
        let seen = std::cell::RefCell::new(Seen::default());
        runner
            .run(&ops(), |ops| rt.block_on(run(&ops, &mut seen.borrow_mut())))
            .unwrap();
        let seen = seen.into_inner();
        assert!(
            seen.not_started > 0 && seen.behind > 0 && seen.up_to_date > 0,
            "calls compacted in every position of the projection: {seen:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// state_at reads a bounded stretch of the stream: it must equal the fold of the whole stream.

mod bounded {
    use breakerbox::breaker::{Breaker, Command, Decision, Event, Outcome, Policy, State};
    use breakerbox::journal::{
        Body, CALL_STATS, CALL_SUMMARY, CallStats, Journal, JournalOptions, OPERATOR_COMMAND, Operator,
        OperatorCommand, SNAPSHOT,
    };
    use breakerbox::replay::{self, Entry, Item, LATE_MS, StateAt};
    use std::sync::Arc;

    const T0: u64 = 1_764_000_000_000;
    const MINUTE: u64 = 60_000;
    const BUDGET_MS: u64 = 200;

    /// The reference: `state_at` as it was before it was bounded, over the whole stream's entries.
    fn whole_fold(entries: &[Entry], stream: &str, at_ms: u64, fallback: &Policy) -> StateAt {
        let breaker = replay::fold(entries, Some(at_ms), fallback);
        let view = breaker.view(at_ms);
        let all = replay::transitions(entries, 0, at_ms.saturating_add(1));
        StateAt {
            stream: stream.to_owned(),
            at_ms,
            open_remaining_ms: view.open_until_ms.map(|u| u.saturating_sub(at_ms)),
            health: replay::health(&replay::minutes(entries, at_ms), &all, at_ms, BUDGET_MS, view.state),
            view,
            policy: breaker.policy().clone(),
            last_transition: all.last().cloned(),
            compacted: entries.iter().any(|e| matches!(e.item, Item::Summary(_))),
            damaged: replay::damaged(entries),
        }
    }

    fn assert_same(got: &StateAt, want: &StateAt, context: &str) {
        assert_eq!(got.view, want.view, "view, {context}");
        assert_eq!(
            got.open_remaining_ms, want.open_remaining_ms,
            "open remaining, {context}"
        );
        assert_eq!(got.policy, want.policy, "policy, {context}");
        assert_eq!(got.last_transition, want.last_transition, "last transition, {context}");
        assert_eq!(got.compacted, want.compacted, "compacted, {context}");
        assert_eq!(got.health, want.health, "health, {context}");
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// What the generator wrote, to aim instants at.
    #[derive(Default)]
    struct Written {
        end_ms: u64,
        snapshots: Vec<u64>,
        /// Completion times of outcomes stored after a snapshot taken later than them.
        late: Vec<u64>,
        /// Snapshots stamped before events stored ahead of them.
        early: Vec<u64>,
        transitions: usize,
        commands: usize,
        policies: usize,
        stats: usize,
        compacted_calls: u64,
    }

    struct Writer<'a> {
        journal: &'a Journal,
        stream: Arc<str>,
        breaker: Breaker,
        events: Vec<Event>,
        since_snapshot: u64,
        w: Written,
    }

    impl Writer<'_> {
        fn emit(&mut self) {
            for e in self.events.drain(..) {
                if matches!(e, Event::Transitioned(_)) {
                    self.w.transitions += 1;
                }
                self.since_snapshot += 1;
                self.journal
                    .submit(&self.stream, Body::Breaker(e))
                    .expect("buffer has room");
            }
        }
        fn snapshot(&mut self, at_ms: u64) {
            self.since_snapshot = 0;
            self.w.snapshots.push(at_ms);
            self.journal
                .submit(
                    &self.stream,
                    Body::Snapshot {
                        at_ms,
                        breaker: Box::new(self.breaker.clone()),
                    },
                )
                .expect("buffer has room");
        }
        fn other<T: serde::Serialize>(&mut self, event_type: &'static str, at_ms: u64, payload: &T) {
            self.journal
                .submit(
                    &self.stream,
                    Body::Other {
                        event_type,
                        event_version: 1,
                        at_ms,
                        payload: rmp_serde::to_vec_named(payload).unwrap(),
                    },
                )
                .expect("buffer has room");
        }
    }

    /// Seeded traffic of one breaker written through the journal: calls (bursts of failures open
    /// it), timers, operator commands, policy changes, call stats, snapshots every 150 events,
    /// idle gaps ended by a snapshot, outcomes completed before a snapshot but stored after it
    /// (up to 4 s late, as the actor's held records are, only later), and snapshots stamped up to
    /// 4 s before the events stored ahead of them. Commits at random points
    /// so call batches hold 1 to ~40 calls. Compacts twice, mid-way and at the end.
    async fn write(journal: &Journal, seed: u64, steps: usize) -> Written {
        let policies = [Policy::consecutive(3, 20_000), Policy::consecutive(6, 45_000)];
        let mut rng = Rng(seed | 1);
        let mut g = Writer {
            journal,
            stream: Arc::from("pay"),
            breaker: Breaker::new(policies[0].clone()).unwrap(),
            events: Vec::new(),
            since_snapshot: 0,
            w: Written::default(),
        };
        let mut now = T0;
        let mut rejected = 0u64;
        let mut failing = 0u64;
        for step in 0..steps {
            now += rng.below(2_000);
            g.breaker.tick(now, &mut g.events);
            g.emit();
            match rng.below(100) {
                0..=79 => {
                    if failing == 0 && rng.below(60) == 0 {
                        failing = 4 + rng.below(4);
                    }
                    let fail = failing > 0 || rng.below(10) == 0;
                    failing = failing.saturating_sub(1);
                    match g.breaker.acquire(now, &mut g.events) {
                        Decision::Permit(p) => {
                            now += rng.below(300);
                            let outcome = if fail { Outcome::Failure } else { Outcome::Success };
                            g.breaker.complete(now, p, outcome, &mut g.events);
                        }
                        Decision::Reject(_) => rejected += 1,
                    }
                    g.emit();
                }
                80..=84 => {
                    // Late: completed at `done`, the snapshot taken after it without it, the
                    // outcome stored after the snapshot.
                    if let Decision::Permit(p) = g.breaker.acquire(now, &mut g.events) {
                        g.emit();
                        now += 1 + rng.below(200);
                        let done = now;
                        now += rng.below(4_000);
                        g.snapshot(now);
                        let outcome = if rng.below(3) == 0 {
                            Outcome::Failure
                        } else {
                            Outcome::Success
                        };
                        g.breaker.complete(done, p, outcome, &mut g.events);
                        g.emit();
                        g.w.late.push(done);
                    }
                }
                85..=86 => {
                    let command = [Command::ForceOpen, Command::Disable, Command::Reset][rng.below(3) as usize];
                    let from_state = g.breaker.state();
                    let mut events = Vec::new();
                    g.breaker.command(now, command, &mut events);
                    let record = OperatorCommand {
                        at_ms: now,
                        command,
                        operator: Operator {
                            who: "test".into(),
                            from: "cli".into(),
                            why: "drill".into(),
                        },
                        from_state,
                        to_state: g.breaker.state(),
                        request_position: None,
                        fleet_command: None,
                    };
                    g.other(OPERATOR_COMMAND, now, &record);
                    g.events.extend(events);
                    g.emit();
                    g.w.commands += 1;
                    if g.breaker.state() != State::Closed && rng.below(2) == 0 {
                        // Don't stay forced open or disabled for long.
                        now += rng.below(30_000);
                        g.breaker.command(now, Command::Reset, &mut g.events);
                        g.emit();
                    }
                }
                87 => {
                    let next = policies[(g.w.policies + 1) % 2].clone();
                    g.breaker.set_policy(now, next, &mut g.events).unwrap();
                    g.emit();
                    g.w.policies += 1;
                }
                88..=91 if rejected > 0 => {
                    let stats = CallStats {
                        at_ms: now,
                        rejected,
                        fallbacks: rng.below(3),
                        dropped: 0,
                    };
                    g.other(CALL_STATS, now, &stats);
                    rejected = 0;
                    g.w.stats += 1;
                }
                // Quiet for a while, then a snapshot with no event since the last one.
                92 if rng.below(4) == 0 => {
                    now += 5 * MINUTE + rng.below(20 * MINUTE);
                    g.breaker.tick(now, &mut g.events);
                    g.emit();
                    g.snapshot(now);
                }
                93..=94 => {
                    // A snapshot stamped up to 4 s before events stored ahead of it (its stamp
                    // taken before the last folds): rows before a snapshot may be later than it.
                    let at = now - rng.below(4_000);
                    g.w.early.push(at);
                    g.snapshot(at);
                }
                _ => {}
            }
            if g.since_snapshot >= 150 {
                g.snapshot(now);
            }
            if rng.below(20) == 0 {
                journal.flush().await.unwrap();
            }
            if step == steps / 2 || step + 1 == steps {
                journal.flush().await.unwrap();
                // Keep the last 40 minutes (from `now`) per call; the rest becomes summaries.
                let report = journal.compact(40 * MINUTE, now).await.unwrap();
                g.w.compacted_calls += report.calls;
            }
        }
        journal.flush().await.unwrap();
        g.w.end_ms = now;
        g.w
    }

    /// The rows of the stream are in time order to within LATE_MS (what `state_at` assumes): the
    /// first event of every row of a timed type is at most LATE_MS before any event stored
    /// earlier. Call summaries and operator commands are exempt.
    fn check_time_order(entries: &[Entry], stored: &[breakerbox::journal::StoredEvent]) {
        let mut latest: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
        for e in entries {
            let at = match &e.item {
                Item::Core(ev) => ev.at_ms(),
                Item::Stats(s) => s.at_ms,
                _ => continue,
            };
            let l = latest.entry(e.position).or_default();
            *l = (*l).max(at);
        }
        let mut newest = 0u64;
        for row in stored {
            if row.event_type == CALL_SUMMARY || row.event_type == OPERATOR_COMMAND {
                continue;
            }
            let at = row.recorded_at as u64;
            assert!(
                at + LATE_MS >= newest,
                "row {} ({}) at {at} is stored after an event at {newest}",
                row.position,
                row.event_type
            );
            newest = newest.max(at).max(latest.get(&row.position).copied().unwrap_or(0));
        }
    }

    async fn stored(journal: &Journal, stream: &str) -> Vec<breakerbox::journal::StoredEvent> {
        let mut out = Vec::new();
        loop {
            let page = journal
                .read_stream(
                    stream,
                    out.last().map_or(0, |e: &breakerbox::journal::StoredEvent| e.seq),
                    10_000,
                )
                .await
                .unwrap();
            if page.is_empty() {
                return out;
            }
            out.extend(page);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_at_equals_the_fold_of_the_whole_stream_at_random_instants() {
        for seed in [5u64, 77, 2026] {
            // Given a log of a few hours with snapshots, transitions, commands, policy changes,
            // call stats, late-stored outcomes and compacted minutes,
            let dir = tempfile::tempdir().unwrap();
            let journal = Journal::open(&dir.path().join("log.db"), JournalOptions::default())
                .await
                .unwrap();
            let w = write(&journal, seed, 9_000).await;
            let entries = replay::history(&journal, "pay").await.unwrap();
            let rows = stored(&journal, "pay").await;
            check_time_order(&entries, &rows);
            let summaries = rows.iter().filter(|r| r.event_type == CALL_SUMMARY).count();
            assert!(
                w.snapshots.len() > 20
                    && w.late.len() > 50
                    && w.early.len() > 50
                    && w.transitions > 20
                    && w.commands > 20
                    && w.policies > 5
                    && w.stats > 20
                    && summaries >= 2
                    && w.compacted_calls > 1_000,
                "seed {seed}: the log exercises every case: {} snapshots, {} late outcomes, {} transitions, \
                 {} commands, {} policy changes, {} call stats, {summaries} summaries ({} calls compacted)",
                w.snapshots.len(),
                w.late.len(),
                w.transitions,
                w.commands,
                w.policies,
                w.stats,
                w.compacted_calls
            );
            assert!(
                w.end_ms - T0 > 3 * 60 * MINUTE,
                "seed {seed}: spans hours ({} min)",
                (w.end_ms - T0) / MINUTE
            );
            // (the fallback policy is never the stream's: a mix-up would show)
            let fallback = Policy::consecutive(9, 1_000);
            // at random instants, and at those where the choice of start snapshot or the end of
            // the read changes, and around late outcomes,
            let mut rng = Rng(seed.wrapping_mul(31) | 1);
            let span = w.end_ms - T0 + 2 * MINUTE;
            let mut instants: Vec<u64> = (0..150).map(|_| T0 - MINUTE + rng.below(span)).collect();
            for &s in w.snapshots.iter().step_by(5) {
                let first_use = (s + LATE_MS + 1) / MINUTE * MINUTE + MINUTE + 5 * MINUTE;
                instants.extend([s - 1, s, s + 1, first_use - 1, first_use, first_use + MINUTE]);
            }
            for &s in &w.early {
                // Where the health window starts just after the snapshot's stamp.
                let window = (s / MINUTE + 1) * MINUTE;
                instants.extend([window + 5 * MINUTE, window + 5 * MINUTE + 30_000]);
            }
            for &t in w.late.iter().step_by(6) {
                instants.extend([t - 1, t, t + LATE_MS]);
            }
            instants.push(w.end_ms + 1);
            eprintln!("seed {seed}: checking {} instants", instants.len());
            // when the state is replayed from the log, it is what the whole stream's fold gives.
            let mut differing_from_start = 0;
            for at in instants {
                let got = replay::state_at(&journal, "pay", at, &fallback, BUDGET_MS)
                    .await
                    .unwrap();
                let want = whole_fold(&entries, "pay", at, &fallback);
                assert_same(&got, &want, &format!("seed {seed}, at {at}"));
                if want.view.state != State::Closed || want.health.score < 100 {
                    differing_from_start += 1;
                }
            }
            assert!(differing_from_start > 20, "seed {seed}: instants in interesting states");
            journal.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_at_starts_from_the_snapshot_but_keeps_outcomes_stored_after_it_that_happened_before_it() {
        // Given a breaker with 2 failures in a row (threshold 3), a snapshot taken at T0+10 s that
        // does not hold the third failure, which completed at T0+9 s and is stored after it,
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("log.db"), JournalOptions::default())
            .await
            .unwrap();
        let stream: Arc<str> = Arc::from("pay");
        let policy = Policy::consecutive(3, 600_000);
        let mut b = Breaker::new(policy.clone()).unwrap();
        let mut events = Vec::new();
        b.set_policy(T0, policy.clone(), &mut events).unwrap();
        for t in [T0 + 1_000, T0 + 2_000] {
            let Decision::Permit(p) = b.acquire(t, &mut events) else {
                unreachable!()
            };
            b.complete(t + 5, p, Outcome::Failure, &mut events);
        }
        let Decision::Permit(late) = b.acquire(T0 + 8_000, &mut events) else {
            unreachable!()
        };
        for e in events.drain(..) {
            journal.submit(&stream, Body::Breaker(e));
        }
        journal.submit(
            &stream,
            Body::Snapshot {
                at_ms: T0 + 10_000,
                breaker: Box::new(b.clone()),
            },
        );
        b.complete(T0 + 9_000, late, Outcome::Failure, &mut events);
        assert_eq!(b.state(), State::Open);
        // and quiet calls for 20 minutes after (so the snapshot is the start of the read),
        let mut t = T0 + 11_000;
        for e in events.drain(..) {
            journal.submit(&stream, Body::Breaker(e));
        }
        b.command(T0 + 10_500, Command::Reset, &mut events);
        while t < T0 + 20 * MINUTE {
            if let Decision::Permit(p) = b.acquire(t, &mut events) {
                b.complete(t + 3, p, Outcome::Success, &mut events);
            }
            t += 1_000;
        }
        for e in events.drain(..) {
            journal.submit(&stream, Body::Breaker(e));
        }
        journal.flush().await.unwrap();
        assert_eq!(
            journal
                .latest_at_or_before("pay", SNAPSHOT, T0 + 10_000)
                .await
                .unwrap()
                .map(|s| s.recorded_at as u64),
            Some(T0 + 10_000)
        );
        let entries = replay::history(&journal, "pay").await.unwrap();
        // when replayed at the late failure, just before the snapshot, and minutes later,
        for at in [T0 + 9_000, T0 + 9_999, T0 + 10_000, T0 + 10_499, T0 + 16 * MINUTE] {
            let got = replay::state_at(&journal, "pay", at, &policy, BUDGET_MS).await.unwrap();
            // then it is the whole stream's fold: the late failure opened the breaker at T0+9 s.
            assert_same(&got, &whole_fold(&entries, "pay", at, &policy), &format!("at {at}"));
            if at < T0 + 10_500 {
                assert_eq!(got.view.state, State::Open, "at {at}");
                assert_eq!(got.last_transition.as_ref().map(|t| t.at_ms), Some(T0 + 9_000));
            }
        }
        journal.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_look_ups_of_state_at_use_their_indexes() {
        // Given a log (migrated),
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("log.db"), JournalOptions::default())
            .await
            .unwrap();
        // when SQLite plans the look-ups `state_at` makes,
        let plan = |sql: &'static str| {
            let pool = journal.pool().clone();
            async move {
                let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
                rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("; ")
            }
        };
        for (sql, index) in [
            (
                "EXPLAIN QUERY PLAN SELECT position, stream, seq, event_type, event_version, recorded_at, payload FROM events \
                 WHERE stream = 'pay' AND event_type = 'snapshot' AND recorded_at <= 5 ORDER BY recorded_at DESC, seq DESC LIMIT 1",
                "events_snapshots_by_time",
            ),
            (
                "EXPLAIN QUERY PLAN SELECT position, stream, seq, event_type, event_version, recorded_at, payload FROM events \
                 WHERE stream = 'pay' AND event_type = 'transition' AND recorded_at <= 5 ORDER BY recorded_at DESC, seq DESC LIMIT 1",
                "events_transitions_by_time",
            ),
            (
                "EXPLAIN QUERY PLAN SELECT position, stream, seq, event_type, event_version, recorded_at, payload FROM events \
                 WHERE stream = 'pay' AND event_type = 'transition' AND (recorded_at, seq) > (1, 0) AND recorded_at <= 5 ORDER BY recorded_at, seq LIMIT 10",
                "events_transitions_by_time",
            ),
            (
                "EXPLAIN QUERY PLAN SELECT position, stream, seq, event_type, event_version, recorded_at, payload FROM events \
                 WHERE stream = 'pay' AND event_type = 'call_summary' AND (recorded_at, seq) > (1, 0) AND recorded_at <= 5 ORDER BY recorded_at, seq LIMIT 10",
                "events_summaries_by_time",
            ),
            (
                "EXPLAIN QUERY PLAN SELECT EXISTS (SELECT 1 FROM events WHERE stream = 'pay' AND event_type = 'call_summary')",
                "events_summaries_by_time",
            ),
        ] {
            let plan = plan(sql).await;
            // then each is a search of its own index, not a scan of the stream.
            assert!(
                plan.contains(&format!("USING COVERING INDEX {index}"))
                    || plan.contains(&format!("USING INDEX {index}")),
                "{sql}: {plan}"
            );
            assert!(!plan.contains("SCAN events"), "{sql}: {plan}");
        }
        journal.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projection_writes_through_the_journals_writer_and_always_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let options = JournalOptions {
        busy_timeout: Duration::from_millis(100),
        ..JournalOptions::default()
    };
    let journal = Journal::open(&path, options).await.unwrap();
    let mut projection = replay::Projection::open(&journal);
    // Another process holds the write lock: the projection's write fails with the store's error
    // as soon as SQLite gives up (its busy timeout), it does not wait for the lock to go away.
    let mut lock = lock::hold_write_lock(&path);
    let refused = tokio::time::timeout(Duration::from_secs(10), projection.catch_up(&journal, 100))
        .await
        .expect("answered while the lock is held");
    let e = refused.expect_err("the checkpoint could not be written");
    assert!(e.to_string().contains("locked"), "{e}");
    lock.release();
    // Once the lock is gone it writes, through the journal's own connection.
    let done = projection.catch_up(&journal, 100).await.unwrap();
    assert_eq!(done.position, 0);
    journal.close().await;
    // After the journal closed, its writer takes no more work: an error, never a wait forever.
    let after = tokio::time::timeout(Duration::from_secs(10), projection.rebuild(&journal, 100))
        .await
        .expect("answered after the journal closed");
    assert!(after.is_err(), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_undecodable_event_is_reported_and_skipped_and_free_text_is_shown_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, _) = start(dir.path(), &clock).await;
    let stripe = registry.get("stripe").unwrap().clone();
    // A reason that holds an escape sequence that retitles a terminal, a carriage return and a
    // forged audit line: the library refuses it now, as every surface does…
    let forged = "ok\u{1b}]0;pwned\u{7}\r\n      99  2026-01-01T00:00:00Z  stripe  command  reset by root";
    let refused = stripe.force_open(operator(forged)).await;
    assert!(
        matches!(refused, Err(breakerbox::journal::JournalError::Refused(_))),
        "{refused:?}"
    );
    assert_eq!(stripe.state(), State::Closed, "nothing applied");
    // …but a log written before reasons were checked may hold one: stored as it was then.
    let journal = registry.journal();
    journal.submit(
        &Arc::from("stripe"),
        breakerbox::journal::Body::record(&breakerbox::journal::OperatorCommand {
            at_ms: clock.now_ms(),
            command: breakerbox::breaker::Command::ForceOpen,
            operator: operator(forged),
            from_state: State::Closed,
            to_state: State::ForcedOpen,
            request_position: None,
            fleet_command: None,
        }),
    );
    journal.flush().await.unwrap();
    stripe.force_open(operator("provider incident")).await.unwrap();
    clock.advance(10);
    stripe.reset(operator("resolved")).await.unwrap();
    registry.shutdown().await.unwrap();
    registry.journal().close().await;
    drop(registry);

    // Damage one transition's payload from outside (with the append-only trigger dropped).
    let db = dir.path().join("log.db");
    {
        use sqlx::Connection;
        let mut c = tamper::outsider(&db).await;
        sqlx::query("DROP TRIGGER events_no_update")
            .execute(&mut c)
            .await
            .unwrap();
        let (position,): (i64,) = sqlx::query_as(
            "SELECT position FROM events WHERE stream = 'stripe' AND event_type = 'transition' ORDER BY position LIMIT 1",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        sqlx::query("UPDATE events SET payload = x'c1c1c1' WHERE position = ?")
            .bind(position)
            .execute(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
    }
    let journal = Journal::open(&db, JournalOptions::default()).await.unwrap();
    let q = AuditQuery {
        stream: Some("stripe".into()),
        kinds: vec![Kind::Transition, Kind::Command],
        since_ms: 0,
        until_ms: u64::MAX,
        after_position: 0,
        limit: 1_000,
    };
    let page = replay::audit(&journal, &q).await.unwrap();
    assert_eq!(page.damaged.len(), 1, "{:?}", page.damaged);
    assert_eq!(page.damaged[0].event_type, "transition");
    // Everything else is answered: both commands and the other transition.
    let kinds: Vec<&str> = page.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["command", "command", "command", "transition"], "{kinds:?}");
    assert!(page.entries.iter().all(|e| e.position != page.damaged[0].position));
    // The forged reason is one line of plain text in the summary; its details keep it as given.
    let command = &page.entries[0];
    assert!(!command.summary.chars().any(char::is_control), "{}", command.summary);
    assert!(
        command.summary.contains(r"ok\u{1b}]0;pwned\u{7}\r\n"),
        "{}",
        command.summary
    );
    assert_eq!(command.details["operator"]["why"], forged);
    // Replay reads past it too, and says what it skipped.
    let entries = replay::history(&journal, "stripe").await.unwrap();
    let skipped = replay::damaged(&entries);
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].contains(&format!("position {}", page.damaged[0].position)),
        "{skipped:?}"
    );
    let at = replay::state_at(
        &journal,
        "stripe",
        1_764_000_000_005,
        &Policy::consecutive(5, 30_000),
        1_000,
    )
    .await
    .unwrap();
    assert_eq!(at.damaged, skipped);
    journal.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_if_says_how_many_calls_rejected_for_real_would_have_reached_a_failing_service() {
    use breakerbox::knobs::Knobs;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, config) = start(dir.path(), &clock).await;
    let stripe = registry.get("stripe").unwrap().clone();
    // Healthy, then hard down for a minute (every call fails), then healthy again: a call every
    // 100 ms. The breaker opens, rejects most calls of the outage, and closes after it.
    let (mut rejected, mut failed_outage) = (0u64, 0u64);
    for i in 0..1_800u64 {
        let down = (600..1_200).contains(&i);
        let r = stripe
            .call("", async move { if down { Err(()) } else { Ok(()) } })
            .await;
        match r {
            Err(breakerbox::actor::CallError::Rejected { .. }) => rejected += 1,
            Err(_) if down => failed_outage += 1,
            _ => {}
        }
        clock.advance(100);
        stripe.tick().await;
        if i % 10 == 0 {
            // The actor folds and records its counts (rejections per flush, as live).
            stripe.inspect().await;
        }
    }
    stripe.inspect().await;
    registry.shutdown().await.unwrap();
    let journal = registry.journal();
    journal.flush().await.unwrap();
    let entries = replay::history(journal, "stripe").await.unwrap();
    let fallback = config.require("stripe").unwrap().policy.clone();
    assert!(rejected > 400, "the outage was mostly rejected: {rejected}");

    // Nothing changed: what happened, with nothing made up.
    let same = replay::what_if(&entries, None, None, &fallback, &Knobs::default()).unwrap();
    assert_eq!(same.alternative.transitions, same.actual.transitions);
    assert_eq!(same.actual.rejected, rejected, "every rejection counted");
    assert_eq!(same.alternative.rejected, same.actual.rejected);
    assert_eq!(same.alternative.reached_failing, same.actual.reached_failing);
    assert!(same.verdict.starts_with("no difference"), "{}", same.verdict);

    // A threshold the outage never reaches: the calls rejected for real would have reached the
    // failing service — estimated from the failed trials around them, and said so.
    let changes = Knobs {
        failure_threshold: Some(breakerbox::knobs::Sourced {
            value: 100_000,
            source: breakerbox::knobs::Source::Flag {
                flag: "--failure-threshold".into(),
            },
        }),
        ..Knobs::default()
    };
    let lax = replay::what_if(&entries, None, None, &fallback, &changes).unwrap();
    let (actual, what) = (&lax.actual, &lax.alternative);
    assert_eq!((what.times_opened, what.rejected), (0, 0), "{what:?}");
    assert_eq!(actual.reached_failing, failed_outage);
    assert_eq!(what.calls_run, actual.calls_run + actual.rejected);
    assert_eq!(what.calls_run_estimated, actual.rejected);
    // The outage's rejections fall between failed calls: nearly all estimated as failures.
    let more = what.reached_failing - actual.reached_failing;
    assert!(
        more * 10 >= actual.rejected * 9,
        "{more} of {} estimated failing",
        actual.rejected
    );
    assert_eq!(what.reached_failing_estimated, more);
    assert!(
        lax.verdict.starts_with(&format!(
            "worse: about {more} more calls would have reached the service while it was failing"
        )),
        "{}",
        lax.verdict
    );
    assert!(lax.verdict.contains("estimated"), "{}", lax.verdict);
    journal.close().await;
}

// ---------------------------------------------------------------------------------------------
// Triage: the health report's figures beside the score, one definition each
// (docs/health-score.md), on one log and a manual clock.

mod triage {
    use super::operator;
    use breakerbox::actor::{Clock, Operator, Registry};
    use breakerbox::breaker::{Command, Outcome, Reason, State};
    use breakerbox::replay::{self, Band, BreakerNow, BreakerReport, HealthReport, Severity};
    use std::path::Path;

    const T0: u64 = 1_764_000_000_000;
    const CONFIG: &str = r#"
# forced open by an operator after mostly good traffic
[services.stripe]
failure_threshold = 5
timeout = "1m"
# opened by its slow-call rule: no call ever fails
[services.calcom]
failure_threshold = 100
slow_call_duration = "500ms"
slow_call_rate = 50
minimum_calls = 4
window_calls = 10
timeout = "10s"
# opens and closes again and again
[services.retell]
failure_threshold = 2
timeout = "1s"
# closed, but one call in ten fails
[services.twilio]
failure_threshold = 100
[services.quiet]
[services.off]
"#;
    const KEYS: [&str; 6] = ["stripe", "calcom", "retell", "twilio", "quiet", "off"];

    struct World {
        registry: Registry,
        clock: Clock,
    }

    impl World {
        async fn start(dir: &Path) -> World {
            let clock = Clock::manual(T0);
            let (registry, _) = super::start_with(dir, &clock, CONFIG).await;
            World { registry, clock }
        }

        /// One attempt through the live call path, taking `latency_ms` of the manual clock
        /// when it runs; rejected attempts take none.
        async fn call(&self, key: &str, latency_ms: u64, outcome: Outcome) {
            let h = self.registry.get(key).unwrap().clone();
            let c = self.clock.clone();
            let _ = h
                .call_classified(
                    "",
                    async move {
                        c.advance(latency_ms);
                        Ok::<_, ()>(())
                    },
                    &move |_: &Result<(), ()>| outcome,
                )
                .await;
            h.inspect().await;
        }

        async fn advance(&self, ms: u64) {
            self.clock.advance(ms);
            for k in KEYS {
                self.registry.get(k).unwrap().tick().await;
            }
        }

        /// The report as `GET /api/health/circuit-breakers` builds it, once everything recorded
        /// is in the log.
        async fn report(&self) -> HealthReport {
            let mut live = Vec::new();
            for k in KEYS {
                let h = self.registry.get(k).unwrap();
                live.push((k, h.inspect().await.unwrap(), h.state()));
            }
            let journal = self.registry.journal();
            journal.flush().await.unwrap();
            let now: Vec<BreakerNow<'_>> = live
                .iter()
                .map(|(k, b, state)| BreakerNow {
                    key: k,
                    breaker: b,
                    state: *state,
                    trial_permits_in_use: 0,
                    latency_budget_ms: 1_000,
                })
                .collect();
            let mut projection = replay::Projection::open(journal);
            replay::health_report(journal, &mut projection, &now, self.clock.now_ms(), journal.condition()).await
        }
    }

    fn row<'a>(report: &'a HealthReport, key: &str) -> &'a BreakerReport {
        report.breakers.iter().find(|b| b.service == key).unwrap()
    }

    fn who(who: &str, why: &str) -> Operator {
        Operator {
            who: who.into(),
            ..operator(why)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_breaker_gets_its_severity_and_honest_figures() {
        let dir = tempfile::tempdir().unwrap();
        let w = World::start(dir.path()).await;

        // stripe: 100 calls, 4 fail (never 5 in a row); then forced open and 50 attempts rejected.
        for i in 0..100 {
            let outcome = if i % 25 == 24 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            w.call("stripe", 10, outcome).await;
        }
        let stripe = w.registry.get("stripe").unwrap().clone();
        stripe
            .force_open(who("alice@ops", "provider maintenance"))
            .await
            .unwrap();
        for _ in 0..50 {
            w.call("stripe", 10, Outcome::Success).await;
        }
        // calcom: 2 fast calls, then slow ones: the 4th call makes 2 of 4 slow (50 %) and opens it.
        for latency in [10, 10, 600, 600] {
            w.call("calcom", latency, Outcome::Success).await;
        }
        // retell: three openings, each closed again by two good trials.
        for _ in 0..3 {
            w.call("retell", 5, Outcome::Failure).await;
            w.call("retell", 5, Outcome::Failure).await;
            w.advance(1_000).await;
            w.call("retell", 5, Outcome::Success).await;
            w.call("retell", 5, Outcome::Success).await;
        }
        // twilio: 90 good calls and 10 failed ones, fast.
        for i in 0..100 {
            let outcome = if i % 10 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            w.call("twilio", 10, outcome).await;
        }
        // off: disabled by an operator.
        w.registry
            .get("off")
            .unwrap()
            .disable(who("bob@ops", "noisy in staging"))
            .await
            .unwrap();

        let report = w.report().await;
        let severities: Vec<(&str, Severity)> = report
            .breakers
            .iter()
            .map(|b| (b.service.as_str(), b.severity))
            .collect();
        assert_eq!(
            severities,
            [
                ("stripe", Severity::ForcedOpen),
                ("calcom", Severity::Open),
                ("retell", Severity::Flapping),
                ("twilio", Severity::Degraded),
                ("quiet", Severity::Healthy),
                ("off", Severity::Disabled),
            ]
        );

        // Forced open: the failure ratio sees only the calls that ran; the unanswered ratio
        // counts the rejected attempts too, the score is capped red, and the override says who.
        let s = row(&report, "stripe");
        assert_eq!(s.state, State::ForcedOpen);
        assert_eq!(s.metrics_5m.as_ref().unwrap().rejected, 50);
        assert_eq!(s.failure_ratio_5m, Some(0.04));
        assert_eq!(s.unanswered_ratio_5m, Some(54.0 / 150.0));
        let h = s.health.as_ref().unwrap();
        assert!(h.score <= 49 && h.band == Band::Red, "{h:?}");
        assert!(h.capped.as_deref().unwrap().contains("FORCED_OPEN"), "{h:?}");
        let o = s.operator_override.as_ref().expect("who forced it");
        assert_eq!(
            (
                o.command,
                o.operator.who.as_str(),
                o.operator.from.as_str(),
                o.operator.why.as_str()
            ),
            (Command::ForceOpen, "alice@ops", "cli", "provider maintenance")
        );
        assert!(
            s.current_trip.is_none(),
            "an operator's act is no trip: {:?}",
            s.current_trip
        );

        // Opened by the slow-call rule: no failure at all, and the report says what tripped it.
        let c = row(&report, "calcom");
        assert_eq!(c.failure_ratio_5m, Some(0.0));
        assert_eq!(c.unanswered_ratio_5m, Some(0.0));
        let trip = c.current_trip.as_ref().expect("the trip of this episode");
        assert_eq!(
            (trip.from, trip.to, trip.reason),
            (State::Closed, State::Open, Reason::SlowCallRate)
        );
        assert_eq!(trip.evidence.rate_percent, Some(50.0));
        assert_eq!(trip.evidence.threshold, Some(50.0));
        let rules: Vec<(Reason, f64, bool)> = c.trip_rules.iter().map(|g| (g.rule, g.threshold, g.percent)).collect();
        assert_eq!(
            rules,
            [
                (Reason::ConsecutiveFailures, 100.0, false),
                (Reason::SlowCallRate, 50.0, true)
            ]
        );
        assert!(c.health.as_ref().unwrap().band == Band::Red, "{:?}", c.health);

        // Flapping: closed now, three openings in the last ten minutes.
        let r = row(&report, "retell");
        assert_eq!((r.state, r.openings_10m), (State::Closed, Some(3)));
        // Degraded: green score, but 10 % of attempts got no good answer.
        let t = row(&report, "twilio");
        assert_eq!(t.unanswered_ratio_5m, Some(0.1));
        assert_eq!(t.health.as_ref().unwrap().band, Band::Green);
        // Healthy without calls: no ratio is made up.
        let q = row(&report, "quiet");
        assert_eq!((q.unanswered_ratio_5m, q.failure_ratio_5m), (None, None));
        let off = row(&report, "off").operator_override.as_ref().expect("who disabled it");
        assert_eq!(
            (off.command, off.operator.why.as_str()),
            (Command::Disable, "noisy in staging")
        );

        // The episode's trip survives the timer's OPEN → HALF_OPEN and a re-opening by a slow trial.
        w.advance(10_000).await;
        let report = w.report().await;
        let c = row(&report, "calcom");
        assert_eq!((c.state, c.severity), (State::HalfOpen, Severity::HalfOpen));
        assert_eq!(c.last_transition.as_ref().unwrap().reason, Reason::TimeoutElapsed);
        assert_eq!(c.current_trip.as_ref().unwrap().reason, Reason::SlowCallRate);
        assert!(c.health.as_ref().unwrap().band != Band::Green, "{:?}", c.health);
        w.call("calcom", 600, Outcome::Success).await;
        w.advance(60_000).await;
        let report = w.report().await;
        let c = row(&report, "calcom");
        assert_eq!(c.state, State::HalfOpen);
        let reasons: Vec<Reason> = replay::transitions(
            &replay::history(w.registry.journal(), "calcom").await.unwrap(),
            0,
            u64::MAX,
        )
        .iter()
        .map(|t| t.reason)
        .collect();
        assert_eq!(
            reasons,
            [
                Reason::SlowCallRate,
                Reason::TimeoutElapsed,
                Reason::TrialSlow,
                Reason::TimeoutElapsed
            ]
        );
        let trip = c.current_trip.as_ref().unwrap();
        assert_eq!((trip.reason, trip.at_ms <= T0 + 10_000), (Reason::SlowCallRate, true));
        // Reset: no episode, no trip, no override.
        w.registry
            .get("calcom")
            .unwrap()
            .reset(operator("recovered"))
            .await
            .unwrap();
        stripe.reset(operator("maintenance over")).await.unwrap();
        let report = w.report().await;
        for key in ["calcom", "stripe"] {
            let b = row(&report, key);
            assert_eq!(b.state, State::Closed);
            assert!(b.current_trip.is_none() && b.operator_override.is_none(), "{b:?}");
        }
        w.registry.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latency_budget_is_recorded_with_the_policy_so_every_tool_scores_an_instant_alike() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    // A tight budget: calls of 40 ms are slow against it, fast against the default 1 s.
    let (registry, _) = start_with(
        dir.path(),
        &clock,
        "[services.stripe]\nfailure_threshold = 3\nlatency_budget = \"20ms\"\n",
    )
    .await;
    let journal = registry.journal().clone();
    let stripe = registry.get("stripe").unwrap().clone();
    for _ in 0..50 {
        let c = clock.clone();
        let _ = stripe
            .call("", async move {
                c.advance(40);
                Ok::<_, ()>(())
            })
            .await;
    }
    stripe.inspect().await;
    registry.shutdown().await.unwrap();
    let at = clock.now_ms();
    let fallback = Policy::consecutive(5, 30_000);
    // The configured budget (20 ms), a tool without the configuration (1 s), a wrong one: one score.
    let mut scores = Vec::new();
    for budget in [20, 1_000, 5] {
        let s = replay::state_at(&journal, "stripe", at, &fallback, budget)
            .await
            .unwrap();
        assert_eq!(s.policy.latency_budget_ms, Some(20), "recorded with the policy");
        scores.push(s.health.score);
    }
    assert_eq!(scores[0], scores[1], "{scores:?}");
    assert_eq!(scores[0], scores[2], "{scores:?}");
    assert!(
        scores[0] < 100,
        "40 ms calls against a 20 ms budget lose latency points: {scores:?}"
    );
    journal.close().await;
}

/// The actor counts rejections when it folds, which may be later than a second after the
/// breaker stopped rejecting (a slow actor; here, a fold 3 s after OPEN ended). What-if still
/// places each counted rejection in the stretch when the breaker was rejecting: a policy that
/// never opens rejects none of them (it once counted them as rejected under any policy).
#[tokio::test]
async fn what_if_places_rejections_counted_late_in_the_stretch_that_rejected_them() {
    use breakerbox::knobs::Knobs;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let (registry, config) = start_with(
        dir.path(),
        &clock,
        "[services.stripe]\nfailure_threshold = 3\ntimeout = \"2s\"\nsuccess_threshold = 1\nhalf_open_requests = 1\n",
    )
    .await;
    let stripe = registry.get("stripe").unwrap().clone();
    for _ in 0..3 {
        let _ = stripe.call("", async { Err::<(), ()>(()) }).await;
        clock.advance(10);
    }
    stripe.inspect().await;
    assert_eq!(stripe.state(), breakerbox::breaker::State::Open);
    let mut rejected = 0;
    for _ in 0..5 {
        if stripe.call("", async { Ok::<(), ()>(()) }).await.is_err() {
            rejected += 1;
        }
        clock.advance(100);
    }
    assert_eq!(rejected, 5);
    // The actor next folds 5 s later (OPEN lasted 2 s of them): the rejections are counted then.
    clock.advance(5_000);
    stripe.tick().await; // HALF_OPEN, and the rejections counted
    stripe.call("", async { Ok::<(), ()>(()) }).await.unwrap(); // the trial: CLOSED
    stripe.inspect().await;
    registry.shutdown().await.unwrap();
    let journal = registry.journal();
    let entries = replay::history(journal, "stripe").await.unwrap();
    let recorded = config.require("stripe").unwrap().policy.clone();
    let same = replay::what_if(&entries, None, None, &recorded, &Knobs::default()).unwrap();
    assert_eq!(same.actual.rejected, 5);
    assert_eq!(same.alternative.rejected, 5, "nothing changed: the same 5 rejected");
    let lax = Knobs {
        failure_threshold: Some(breakerbox::knobs::Sourced {
            value: 100,
            source: breakerbox::knobs::Source::Flag {
                flag: "--failure-threshold".into(),
            },
        }),
        ..Knobs::default()
    };
    let what = replay::what_if(&entries, None, None, &recorded, &lax)
        .unwrap()
        .alternative;
    assert_eq!((what.times_opened, what.rejected), (0, 0), "{what:?}");
    assert_eq!(what.calls_run_estimated, 5);
}

/// [fleet-ops] quorum hints: the hint is an input of the core. It opens a CLOSED breaker only
/// (reason `fleet_quorum`, the nodes as evidence), never closes one or moves it to HALF_OPEN,
/// and runs the timers due first. Recorded, it replays to the same breaker, exports as a `hint`
/// line that `simulate` reproduces, and what-if with nothing changed is what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_hint_opens_a_closed_breaker_only_and_replays_exactly() {
    use breakerbox::breaker::{Breaker, Decision, QuorumEvidence, Reason};
    let policy = Policy::consecutive(3, 10_000);
    let mut b = Breaker::new(policy.clone()).unwrap();
    let mut events = Vec::new();
    let t0 = 1_764_000_000_000u64;
    let call = |b: &mut Breaker, at: u64, outcome: Outcome, events: &mut Vec<Event>| {
        if let Decision::Permit(p) = b.acquire(at, events) {
            b.complete(at + 1, p, outcome, events);
        }
    };
    for i in 0..5 {
        call(&mut b, t0 + i * 10, Outcome::Success, &mut events);
    }
    let q = QuorumEvidence {
        nodes: vec!["app-2".into(), "app-3".into(), "app-4".into()],
        live: 8,
        within_ms: 30_000,
    };
    assert!(b.hint(t0 + 100, q.clone(), &mut events), "a CLOSED breaker opens");
    let Some(Event::Transitioned(t)) = events.last() else {
        panic!("no transition")
    };
    assert_eq!(
        (t.from, t.to, t.reason),
        (State::Closed, State::Open, Reason::FleetQuorum)
    );
    assert_eq!(t.evidence.quorum.as_ref(), Some(&q));
    assert_eq!(t.open_until_ms, Some(t0 + 10_100));
    // OPEN: nothing. After the OPEN period the timer runs first (HALF_OPEN), and the hint does
    // not open it again: recovery stays local.
    assert!(!b.hint(t0 + 200, q.clone(), &mut events));
    assert!(!b.hint(t0 + 10_200, q.clone(), &mut events));
    assert_eq!(b.state(), State::HalfOpen);
    call(&mut b, t0 + 10_300, Outcome::Success, &mut events);
    call(&mut b, t0 + 10_310, Outcome::Success, &mut events);
    assert_eq!(b.state(), State::Closed);
    b.command(t0 + 10_400, breakerbox::breaker::Command::ForceOpen, &mut events);
    assert!(!b.hint(t0 + 10_500, q.clone(), &mut events), "FORCED_OPEN stays");
    b.command(t0 + 10_600, breakerbox::breaker::Command::Reset, &mut events);
    for i in 0..4 {
        call(&mut b, t0 + 11_000 + i * 10, Outcome::Failure, &mut events);
    }
    assert_eq!(b.state(), State::Open, "its own trip rule still works");

    // Recorded, replayed, exported, simulated, what-if'd.
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("log.db"), JournalOptions::default())
        .await
        .unwrap();
    let stream: Arc<str> = Arc::from("stripe");
    let mut last = None;
    for e in events.iter().cloned() {
        last = journal.submit(&stream, breakerbox::journal::Body::Breaker(e)).or(last);
    }
    journal.durable(last.unwrap()).await.unwrap();
    let entries = replay::history(&journal, "stripe").await.unwrap();
    let folded = replay::fold(&entries, None, &policy);
    assert_eq!((folded.state(), folded.episode()), (b.state(), b.episode()));
    let lines: Vec<_> = replay::export(&entries, None, None, &policy)
        .iter()
        .map(replay::TraceLine::to_json)
        .collect();
    assert!(lines.iter().any(|l| l.get("hint").is_some()), "{lines:#?}");
    let recorded: Vec<_> = replay::transitions(&entries, 0, u64::MAX)
        .iter()
        .map(|t| (t.at_ms, t.from, t.to, t.reason))
        .collect();
    assert_eq!(simulate_lines(&lines, &policy), recorded);
    let same = replay::what_if(&entries, None, None, &policy, &Default::default()).unwrap();
    assert_eq!(same.alternative.transitions, same.actual.transitions);
    journal.close().await;
}

/// [fleet-ops] the fleet what-if: three nodes' recorded calls. While only node a's calls fail
/// (its own network), one shared breaker keeps closing on b's and c's successes and lets a's
/// failures through; when the service fails for all, a quorum opens c on a's and b's openings
/// before c's own third failure. Both are measured against what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_what_if_weighs_one_shared_breaker_and_a_quorum_against_what_happened() {
    use breakerbox::breaker::{Breaker, Decision};
    let policy = Policy::consecutive(3, 5_000);
    let t0 = 1_764_000_000_000u64;
    let dir = tempfile::tempdir().unwrap();
    let mut histories = Vec::new();
    for (i, node) in ["a", "b", "c"].into_iter().enumerate() {
        let mut b = Breaker::new(policy.clone()).unwrap();
        let mut events = Vec::new();
        // Calls rejected for real, counted as the actor counts them (a `call_stats` record).
        let mut rejected_at = Vec::new();
        let offset = if node == "c" { 50 } else { 0 };
        // Phase 1 (0-10 s): only a fails. Phase 2 (20-30 s): every node fails.
        for (phase, fails) in [(0u64, i == 0), (20_000, true)] {
            for k in 0..100u64 {
                let at = t0 + phase + k * 100 + offset;
                match b.acquire(at, &mut events) {
                    Decision::Permit(p) => {
                        let outcome = if fails { Outcome::Failure } else { Outcome::Success };
                        b.complete(at + 1, p, outcome, &mut events);
                    }
                    Decision::Reject(_) => rejected_at.push(at),
                }
            }
        }
        let journal = Journal::open(&dir.path().join(format!("{node}.db")), JournalOptions::default())
            .await
            .unwrap();
        let stream: Arc<str> = Arc::from("stripe");
        let mut bodies: Vec<(u64, breakerbox::journal::Body)> = events
            .into_iter()
            .map(|e| (e.at_ms(), breakerbox::journal::Body::Breaker(e)))
            .chain(rejected_at.into_iter().map(|at| {
                let stats = breakerbox::journal::CallStats {
                    at_ms: at,
                    rejected: 1,
                    ..Default::default()
                };
                (at, breakerbox::journal::Body::record(&stats))
            }))
            .collect();
        bodies.sort_by_key(|(at, _)| *at);
        let mut last = None;
        for (_, body) in bodies {
            last = journal.submit(&stream, body).or(last);
        }
        journal.durable(last.unwrap()).await.unwrap();
        histories.push((node.to_owned(), replay::history(&journal, "stripe").await.unwrap()));
        journal.close().await;
    }
    let rule = replay::QuorumRule {
        nodes: 2,
        fraction: 0.5,
        within_ms: 30_000,
    };
    let r = replay::fleet_what_if(&histories, None, None, &policy, &Default::default(), rule).unwrap();
    assert_eq!(r.nodes, ["a", "b", "c"]);
    assert_eq!((r.actual.breakers, r.shared.breakers, r.quorum.breakers), (3, 1, 3));
    // What happened: each node's own breaker, as the single-node what-if counts it.
    let mut own = 0;
    for (_, h) in &histories {
        own += replay::what_if(h, None, None, &policy, &Default::default())
            .unwrap()
            .actual
            .reached_failing;
    }
    assert_eq!(r.actual.failed_let_through, own);
    assert!(
        r.shared.failed_let_through > r.actual.failed_let_through + 50,
        "one shared breaker lets a's failures through: {r:#?}"
    );
    // The quorum opens c on a's and b's trips, before its own third failure (what each side
    // then does in HALF_OPEN follows its own timers, with estimated calls among them).
    assert_eq!((r.actual.by_quorum, r.quorum.by_quorum), (0, 1), "{r:#?}");
    assert!(r.actual.time_to_open_ms.is_some() && r.quorum.time_to_open_ms.is_some());
    assert!(
        r.verdict.contains("one shared breaker") && r.verdict.contains("a quorum"),
        "{}",
        r.verdict
    );
}
