//! The live breakers: the call path under contention, exact trial permits, commands, restarts.

#[path = "support/lock.rs"]
mod lock;

use breakerbox::actor::{CallError, Clock, Fallback, FallbackReason, Operator, Registry, RegistryOptions};
use breakerbox::breaker::{Event, State};
use breakerbox::config::Config;
use breakerbox::journal::{Decoded, Journal, JournalOptions, StoredEvent, decode};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const CONFIG: &str = r#"
[services.stripe]
failure_threshold = 5
timeout = "30s"
call_timeout = "200ms"

[services.calcom]
failure_threshold = 16
timeout = "30s"
"#;

fn operator() -> Operator {
    Operator {
        who: "alice@laptop".into(),
        from: "library".into(),
        why: "test".into(),
    }
}

async fn start(dir: &Path, clock: Clock) -> Registry {
    start_with(dir, clock, CONFIG, JournalOptions::default()).await
}

async fn stored(registry: &Registry) -> Vec<StoredEvent> {
    registry.journal().flush().await.unwrap();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = registry.journal().read_after(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        out.extend(page);
    }
    out
}

fn core_events(stored: &[StoredEvent], stream: &str) -> Vec<Event> {
    stored
        .iter()
        .filter(|e| e.stream == stream)
        .flat_map(|e| match decode(e).unwrap() {
            Decoded::Breaker(events) => events,
            _ => Vec::new(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_is_counted_exactly_under_contention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::system();
    let registry = Arc::new(start(dir.path(), clock).await);
    let stripe = registry.get("stripe").unwrap().clone();
    let totals = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for task in 0..16u64 {
        let (stripe, totals) = (stripe.clone(), totals.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000u64 {
                // Bursts of failures open the breaker now and then.
                let fail = (i / 50 + task) % 7 == 0;
                let r = stripe
                    .call("", async move { if fail { Err("boom") } else { Ok(i) } })
                    .await;
                let slot = match r {
                    Ok(_) => 0,
                    Err(CallError::Inner(_)) => 1,
                    Err(CallError::Rejected { .. }) => 2,
                    Err(CallError::TimedOut { .. }) => panic!("ready futures never time out"),
                };
                totals[slot].fetch_add(1, Ordering::Relaxed);
                // Now and then, wait for the actor to fold what was recorded, so the breaker
                // opens and rejects during the run however busy the machine is: a run that
                // outpaced the actor entirely would be folded in one burst at shutdown.
                if i % 1_000 == 0 {
                    stripe.inspect().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let [ok, failed, rejected] = [0, 1, 2].map(|i| totals[i].load(Ordering::Relaxed));
    assert_eq!(
        ok + failed + rejected,
        160_000,
        "every call is a success, a failure or a rejection"
    );
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    // Every permitted call's outcome is in the log (nothing sampled); rejections are counted.
    let calls = core_events(&log, "stripe")
        .iter()
        .filter(|e| matches!(e, Event::CallRecorded(_)))
        .count() as u64;
    assert_eq!(calls, ok + failed);
    let logged_rejections: u64 = log
        .iter()
        .filter(|e| e.event_type == "call_stats")
        .map(|e| {
            rmp_serde::from_slice::<breakerbox::actor::CallStats>(&e.payload)
                .unwrap()
                .rejected
        })
        .sum();
    assert_eq!(logged_rejections, rejected);
    assert!(
        rejected > 0 && failed > 0,
        "the breaker opened: {ok} ok, {failed} failed, {rejected} rejected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_failures_at_the_threshold_open_the_breaker_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = Arc::new(start(dir.path(), clock.clone()).await);
    let calcom = registry.get("calcom").unwrap().clone();
    for round in 0..30 {
        // 16 failures at once, threshold 16.
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (calcom, barrier) = (calcom.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let _ = calcom.call("", async { Err::<(), _>("down") }).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let b = calcom.inspect().await.unwrap();
        assert_eq!(b.state(), State::Open, "round {round}");
        calcom.reset(operator()).await.unwrap();
        clock.advance(1);
    }
    registry.shutdown().await.unwrap();
    let opened = core_events(&stored(&registry).await, "calcom")
        .iter()
        .filter(|e| matches!(e, Event::Transitioned(t) if t.to == State::Open))
        .count();
    assert_eq!(
        opened, 30,
        "exactly one transition to OPEN per round of racing failures"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_lets_exactly_half_open_requests_trials_reach_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start(dir.path(), clock.clone()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    for round in 0..20 {
        for _ in 0..5 {
            let _ = stripe.call("", async { Err::<(), _>("down") }).await;
        }
        assert_eq!(stripe.inspect().await.unwrap().state(), State::Open, "round {round}");
        clock.advance(30_000);
        // 30 concurrent calls (10 × half_open_requests); the backend holds each one until every
        // call has been admitted or rejected.
        let reached = Arc::new(AtomicU64::new(0));
        let settled = Arc::new(AtomicU64::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..30)
            .map(|_| {
                let (stripe, reached, settled, release) =
                    (stripe.clone(), reached.clone(), settled.clone(), release.clone());
                tokio::spawn(async move {
                    let r = stripe
                        .call("", async {
                            reached.fetch_add(1, Ordering::SeqCst);
                            settled.fetch_add(1, Ordering::SeqCst);
                            release.notified().await;
                            Ok::<_, &str>(())
                        })
                        .await;
                    if r.is_err() {
                        settled.fetch_add(1, Ordering::SeqCst);
                    }
                    r
                })
            })
            .collect();
        while settled.load(Ordering::SeqCst) < 30 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            reached.load(Ordering::SeqCst),
            3,
            "round {round}: exactly half_open_requests trials"
        );
        assert_eq!(stripe.trial_permits(), 3);
        release.notify_waiters();
        let results: Vec<_> = futures_join(tasks).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
        assert_eq!(
            stripe.inspect().await.unwrap().state(),
            State::Closed,
            "two successes closed it"
        );
        clock.advance(1);
    }
    registry.shutdown().await.unwrap();
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_actor_restarts_from_the_log_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start(dir.path(), clock.clone()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    for _ in 0..3 {
        let _ = stripe.call("", async { Err::<(), _>("down") }).await;
    }
    let before = stripe.inspect().await.unwrap();
    assert_eq!(before.view(0).consecutive_failures, 3);
    stripe.crash_for_test().await;
    let after = stripe.inspect().await.unwrap();
    assert_eq!(
        after, before,
        "rebuilt from the log, without the damage done before the panic"
    );
    assert_eq!(stripe.state(), State::Closed);
    // It keeps serving: two more failures open it.
    for _ in 0..2 {
        let _ = stripe.call("", async { Err::<(), _>("down") }).await;
    }
    assert_eq!(stripe.inspect().await.unwrap().state(), State::Open);
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_are_durable_and_audited_before_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start(dir.path(), clock.clone()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let done = stripe.force_open(operator()).await.unwrap();
    assert_eq!((done.from, done.to), (State::Closed, State::ForcedOpen));
    // Already in the log when the command returns (read through another reader, no flush).
    let log = registry.journal().read_after(0, 1_000).await.unwrap();
    let cmd = log
        .iter()
        .find(|e| e.event_type == "operator_command")
        .expect("audited");
    let rec: breakerbox::actor::OperatorCommand = rmp_serde::from_slice(&cmd.payload).unwrap();
    assert_eq!(
        (rec.operator.who.as_str(), rec.operator.from.as_str()),
        ("alice@laptop", "library")
    );
    assert!(log.iter().any(|e| e.event_type == "transition"));
    assert!(done.position.expect("durable: the log is written") >= cmd.position);
    let r = stripe.call("", async { Ok::<_, &str>(1) }).await;
    assert!(matches!(
        r,
        Err(CallError::Rejected {
            state: State::ForcedOpen,
            ..
        })
    ));
    stripe.disable(operator()).await.unwrap();
    for _ in 0..20 {
        assert!(stripe.call("", async { Err::<(), _>("down") }).await.is_err());
    }
    assert_eq!(
        stripe.inspect().await.unwrap().state(),
        State::Disabled,
        "disabled never trips"
    );
    stripe.reset(operator()).await.unwrap();
    assert_eq!(stripe.state(), State::Closed);
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_stays_open_across_a_restart_with_the_remaining_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    {
        let registry = start(dir.path(), clock.clone()).await;
        let stripe = registry.get("stripe").unwrap();
        for _ in 0..5 {
            let _ = stripe.call("", async { Err::<(), _>("down") }).await;
        }
        assert_eq!(stripe.inspect().await.unwrap().state(), State::Open);
        registry.shutdown().await.unwrap();
        registry.journal().close().await;
    }
    clock.advance(10_000);
    let registry = start(dir.path(), clock.clone()).await;
    let stripe = registry.get("stripe").unwrap();
    match stripe.call("", async { Ok::<_, &str>(()) }).await {
        Err(CallError::Rejected {
            state: State::Open,
            retry_after,
            ..
        }) => assert_eq!(retry_after, Some(Duration::from_secs(20))),
        other => panic!("expected an OPEN rejection, got {other:?}"),
    }
    // The OPEN period ends on time: a trial goes through.
    clock.advance(20_000);
    assert!(stripe.call("", async { Ok::<_, &str>(()) }).await.is_ok());
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_get_the_reason_and_their_use_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start(dir.path(), clock.clone()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    // The last success is remembered, and served when the call fails.
    let v = stripe
        .call_with_fallback("", async { Ok::<u32, &str>(7) }, Fallback::LastSuccess)
        .await;
    assert_eq!(v.unwrap(), 7);
    let v = stripe
        .call_with_fallback("", async { Err::<u32, _>("down") }, Fallback::LastSuccess)
        .await;
    assert_eq!(v.unwrap(), 7);
    let reason = Arc::new(std::sync::Mutex::new(None));
    let seen = reason.clone();
    let v = stripe
        .call_with_fallback(
            "",
            async { Err::<u32, _>("down") },
            Fallback::with(move |e| {
                *seen.lock().unwrap() = Some(e.reason());
                0
            }),
        )
        .await;
    assert_eq!((v.unwrap(), *reason.lock().unwrap()), (0, Some(FallbackReason::Failed)));
    stripe.force_open(operator()).await.unwrap();
    let v = stripe
        .call_with_fallback("", async { Ok::<u32, &str>(1) }, Fallback::Value(99))
        .await;
    assert_eq!(v.unwrap(), 99);
    // A timeout is a failure, and the call's timeout is the service's.
    stripe.reset(operator()).await.unwrap();
    let r = stripe.call("", std::future::pending::<Result<(), &str>>()).await;
    assert!(matches!(r, Err(CallError::TimedOut { after, .. }) if after == Duration::from_millis(200)));
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    let fallbacks: u64 = log
        .iter()
        .filter(|e| e.event_type == "call_stats")
        .map(|e| {
            rmp_serde::from_slice::<breakerbox::actor::CallStats>(&e.payload)
                .unwrap()
                .fallbacks
        })
        .sum();
    assert_eq!(fallbacks, 3);
    assert!(
        core_events(&log, "stripe")
            .iter()
            .any(|e| matches!(e, Event::CallRecorded(c) if c.outcome == breakerbox::breaker::Outcome::Timeout))
    );
}

/// A tower service that fails when asked to.
#[derive(Clone)]
struct Upstream {
    calls: Arc<AtomicU64>,
}

impl tower::Service<bool> for Upstream {
    type Response = &'static str;
    type Error = &'static str;
    type Future = std::future::Ready<Result<&'static str, &'static str>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, fail: bool) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if fail { Err("down") } else { Ok("ok") })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_layer_protects_a_service() {
    use tower::{Layer, Service};
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::manual(1_764_000_000_000)).await;
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = breakerbox::actor::BreakerLayer::new(registry.get("stripe").unwrap().clone())
        .layer(Upstream { calls: calls.clone() });
    assert_eq!(svc.call(false).await.unwrap(), "ok");
    for _ in 0..5 {
        assert!(matches!(svc.call(true).await, Err(CallError::Inner("down"))));
    }
    registry.get("stripe").unwrap().inspect().await.unwrap();
    assert!(matches!(
        svc.call(false).await,
        Err(CallError::Rejected { state: State::Open, .. })
    ));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "the rejected call never reached the service"
    );
    registry.shutdown().await.unwrap();
}

/// An HTTP server on 127.0.0.1 answering each request with the next status of `statuses`.
fn http_server(statuses: Vec<u16>) -> (String, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for (stream, status) in listener.incoming().zip(statuses) {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            count.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reqwest_middleware_classifies_statuses_and_rejects_without_sending() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::manual(1_764_000_000_000)).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(breakerbox::actor::BreakerMiddleware::new(stripe.clone()))
        .build();
    // 404 is the caller's mistake (a success for the breaker); 5xx, 429 and 408 are failures;
    // a refused connection (transport error) too.
    let (url, served) = http_server(vec![404, 503, 429, 408, 503, 500]);
    for expected in [404, 503, 429, 408] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), expected);
    }
    assert_eq!(stripe.inspect().await.unwrap().view(0).consecutive_failures, 3);
    // Two more 5xx: the 5th failure in a row opens the breaker.
    for _ in 0..2 {
        let _ = client.get(&url).send().await.unwrap();
    }
    assert_eq!(stripe.inspect().await.unwrap().state(), State::Open);
    let err = client.get(&url).send().await.unwrap_err();
    let rejected = match &err {
        reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<breakerbox::actor::Rejected>().unwrap(),
        other => panic!("expected a rejection, got {other}"),
    };
    assert_eq!(rejected.state, State::Open);
    assert_eq!(served.load(Ordering::SeqCst), 6, "the rejected request was never sent");
    stripe.reset(operator()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(client.get(format!("http://{closed}")).send().await.is_err());
    assert_eq!(
        stripe.inspect().await.unwrap().view(0).consecutive_failures,
        1,
        "connection refused counts"
    );
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_or_sighup_reloads_policies_without_losing_state() {
    use breakerbox::actor::ReloadOutcome;
    use breakerbox::config::LoadOptions;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cb.toml");
    std::fs::write(&file, "[services.stripe]\nfailure_threshold = 2\ntimeout = \"30s\"\n").unwrap();
    let options = LoadOptions {
        path: Some(file.clone()),
        env: BTreeMap::new(),
        ..Default::default()
    };
    let config = Config::load(&options).unwrap();
    let journal = Arc::new(
        Journal::open(&dir.path().join("log.db"), JournalOptions::default())
            .await
            .unwrap(),
    );
    let clock = Clock::manual(1_764_000_000_000);
    let registry = Arc::new(
        Registry::start(
            &config,
            journal,
            RegistryOptions {
                clock: clock.clone(),
                ..RegistryOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let stripe = registry.get("stripe").unwrap().clone();
    // HALF_OPEN with one of its two successes, and a trial still out.
    for _ in 0..2 {
        let _ = stripe.call("", async { Err::<(), _>("down") }).await;
    }
    stripe.inspect().await;
    clock.advance(30_000);
    assert!(stripe.call("", async { Ok::<_, &str>(()) }).await.is_ok());
    let release = Arc::new(tokio::sync::Notify::new());
    let held = {
        let (stripe, release) = (stripe.clone(), release.clone());
        tokio::spawn(async move {
            stripe
                .call("", async move {
                    release.notified().await;
                    Ok::<_, &str>(())
                })
                .await
        })
    };
    while stripe.trial_permits() < 2 {
        tokio::task::yield_now().await;
    }
    let before = stripe.inspect().await.unwrap().view(0);
    assert_eq!(
        (before.state, before.trial_successes, before.trials_issued),
        (State::HalfOpen, 1, 2)
    );

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reloader = Arc::new(breakerbox::actor::Reloader::new(registry.clone(), options));
    let watcher = breakerbox::actor::watch(reloader, Duration::from_millis(20), Some(tx)).unwrap();
    // The file changes: the new timeout applies, the HALF_OPEN progress stays.
    std::fs::write(&file, "[services.stripe]\nfailure_threshold = 2\ntimeout = \"90s\"\n").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let ReloadOutcome::Applied(report) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(report.changed.len(), 1);
    let after = stripe.inspect().await.unwrap();
    assert_eq!(after.policy().open.timeout_ms, 90_000);
    let v = after.view(0);
    assert_eq!(
        (v.state, v.trial_successes, v.trials_issued),
        (State::HalfOpen, 1, 2),
        "progress and permits kept"
    );
    release.notify_waiters();
    held.await.unwrap().unwrap();
    assert_eq!(
        stripe.inspect().await.unwrap().state(),
        State::Closed,
        "the kept success counts"
    );
    // SIGHUP with a broken file: refused whole, the running configuration stays.
    std::fs::write(&file, "[services.stripe]\nfailure_threshold = 0\n").unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(outcome, ReloadOutcome::Refused(_)), "{outcome:?}");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let outcome = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, ReloadOutcome::Refused(_)),
        "SIGHUP reloads too: {outcome:?}"
    );
    assert_eq!(stripe.inspect().await.unwrap().policy().open.timeout_ms, 90_000);
    watcher.abort();
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_commands_a_running_owner_through_the_log_and_applies_itself_when_none_runs() {
    use breakerbox::actor::remote::{self, RemoteOutcome, Request};
    use breakerbox::breaker::{Command, Policy};
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start(dir.path(), clock.clone()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    // "The CLI": another journal on the same file, as a second process would open it.
    let cli = Journal::open(&dir.path().join("log.db"), JournalOptions::default())
        .await
        .unwrap();
    let request = |command| Request {
        target: "stripe",
        command,
        operator: Operator {
            who: "dave@laptop".into(),
            from: "cli".into(),
            why: "upstream incident".into(),
        },
        me: "cli pid 7",
        policy: Policy::consecutive(5, 30_000),
        lease_ttl: Duration::from_secs(3),
        wait: Duration::from_secs(5),
    };
    let started = std::time::Instant::now();
    let outcome = remote::command(&cli, request(Command::ForceOpen)).await.unwrap();
    let RemoteOutcome::AppliedByOwner {
        holder,
        record,
        position,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "applied within a second ({:?})",
        started.elapsed()
    );
    assert!(holder.starts_with("test"));
    assert_eq!((record.from_state, record.to_state), (State::Closed, State::ForcedOpen));
    assert_eq!(record.operator.who, "dave@laptop");
    assert_eq!(stripe.state(), State::ForcedOpen, "the running process applied it");
    // Only the owner wrote the breaker's stream; the CLI wrote its own request stream.
    let log = stored(&registry).await;
    assert!(log.iter().filter(|e| e.stream == "stripe").count() > 0);
    assert!(
        log.iter()
            .any(|e| e.position == position && e.stream == "stripe" && e.event_type == "operator_command"),
        "the ack names its record's position"
    );
    assert!(
        log.iter()
            .any(|e| e.stream == "_commands/cli pid 7" && e.event_type == "command_request")
    );
    registry.shutdown().await.unwrap();
    registry.journal().close().await;
    // No owner any more: the CLI applies the command itself, and the next owner recovers it.
    let outcome = remote::command(&cli, request(Command::Disable)).await.unwrap();
    let RemoteOutcome::AppliedHere {
        from,
        to,
        position: here,
        took_over: None,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((from, to), (State::ForcedOpen, State::Disabled));
    assert!(here > position, "its own record, after the owner's");
    cli.close().await;
    let registry = start(dir.path(), clock.clone()).await;
    assert_eq!(registry.get("stripe").unwrap().state(), State::Disabled);
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn light_traffic_shares_rows_and_a_command_takes_the_waiting_calls_with_it_in_order() {
    // Given a breaker called every 5 ms for ~0.4 s (light traffic: a commit would otherwise
    // carry one or two calls)
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::system()).await;
    let calcom = registry.get("calcom").unwrap().clone();
    for i in 0..80u32 {
        calcom.call("", async move { Ok::<_, &str>(i) }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // When an operator forces it open
    calcom.force_open(operator()).await.unwrap();
    // Then every call is in the log, in a few rows, all before the transition they preceded
    let log = stored(&registry).await;
    let rows = log
        .iter()
        .filter(|e| e.stream == "calcom" && e.event_type == "call_batch")
        .count();
    assert!(rows <= 3, "80 calls over 0.4 s took {rows} rows");
    let events = core_events(&log, "calcom");
    let calls = events.iter().filter(|e| matches!(e, Event::CallRecorded(_))).count();
    assert_eq!(calls, 80);
    let opened = events
        .iter()
        .position(|e| matches!(e, Event::Transitioned(t) if t.to == State::ForcedOpen))
        .expect("the transition is logged");
    assert!(
        events[opened..].iter().all(|e| !matches!(e, Event::CallRecorded(_))),
        "a call was logged after the command it preceded"
    );
    registry.shutdown().await.unwrap();
}

/// What a subscriber wrote, shared with the test.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_debug_subscriber_sees_a_span_per_call_with_service_op_and_outcome() {
    // tracing caches which callsites are enabled process-wide, and this binary's other tests
    // run concurrently without a subscriber, which races with a scoped one. So the test runs
    // alone, in a child process of this same binary.
    const CHILD: &str = "BREAKERBOX_SPAN_TEST_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let name = "a_debug_subscriber_sees_a_span_per_call_with_service_op_and_outcome";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // Given a subscriber listening at DEBUG that writes each span when it closes
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    tracing::subscriber::with_default(subscriber, || {
        rt.block_on(async {
            let registry = start(dir.path(), Clock::system()).await;
            let stripe = registry.get("stripe").unwrap().clone();
            // When one call succeeds and one fails
            stripe.call("charges.create", async { Ok::<_, &str>(1) }).await.unwrap();
            let _ = stripe.call("refunds.create", async { Err::<u32, _>("declined") }).await;
            registry.shutdown().await.unwrap();
        })
    });
    // Then each has its span with the service, the operation and the outcome
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let spans: Vec<&str> = text.lines().filter(|l| l.contains("breaker.call")).collect();
    assert!(
        spans.iter().any(|l| l.contains("service=\"stripe\"")
            && l.contains("op=\"charges.create\"")
            && l.contains("outcome=\"success\"")),
        "{text}"
    );
    assert!(
        spans
            .iter()
            .any(|l| l.contains("op=\"refunds.create\"") && l.contains("outcome=\"failure\"")),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// [robust]: every admitted call ends exactly once; per-operation last successes; trial deadline;
// commands acknowledged with their own position, never with another write's.
// ---------------------------------------------------------------------------------------------

const TRIALS: &str = r#"
[services.stripe]
failure_threshold = 3
timeout = "30s"
half_open_requests = 2
success_threshold = 2
call_timeout = "10s"
half_open_max_wait = "1m"
"#;

async fn start_with(dir: &Path, clock: Clock, toml: &str, journal: JournalOptions) -> Registry {
    let config = Config::from_toml(Path::new("test.toml"), toml, &BTreeMap::new()).unwrap();
    let journal = Arc::new(Journal::open(&dir.join("log.db"), journal).await.unwrap());
    Registry::start(
        &config,
        journal,
        RegistryOptions {
            clock,
            holder: format!("test {:?}", std::thread::current().id()),
            ..RegistryOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Opens stripe and lets its OPEN period pass, so the next calls are HALF_OPEN trials.
async fn open_then_wait(stripe: &breakerbox::actor::BreakerHandle, clock: &Clock) {
    for _ in 0..3 {
        let _ = stripe.call("", async { Err::<(), _>("down") }).await;
    }
    assert_eq!(stripe.inspect().await.unwrap().state(), State::Open);
    clock.advance(30_000);
}

/// Healthy calls after the trials were given up: the breaker must close, not reject them all.
async fn healthy_calls_close_it(stripe: &breakerbox::actor::BreakerHandle, what: &str) {
    let mut ok = 0;
    for _ in 0..50 {
        if stripe.call("", async { Ok::<_, &str>(()) }).await.is_ok() {
            ok += 1;
        }
        // Calls spread out in time: the actor folds each one before the next comes.
        stripe.inspect().await;
    }
    assert_eq!(
        ok, 50,
        "{what}: every healthy call after the cancelled trials got through"
    );
    assert_eq!(stripe.inspect().await.unwrap().state(), State::Closed, "{what}");
}

fn cancelled_calls(log: &[StoredEvent], stream: &str) -> usize {
    core_events(log, stream)
        .iter()
        .filter(|e| matches!(e, Event::CallRecorded(c) if c.outcome == breakerbox::breaker::Outcome::Cancelled))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_trial_futures_give_their_permits_back_and_the_breaker_closes_on_healthy_calls() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start_with(dir.path(), clock.clone(), TRIALS, JournalOptions::default()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    open_then_wait(&stripe, &clock).await;
    // Two trial calls whose callers give up (a timeout around the call, as a user writes it),
    // each on its own task of the multi-threaded runtime.
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let stripe = stripe.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_millis(20),
                    stripe.call("", std::future::pending::<Result<(), &str>>()),
                )
                .await
            })
        })
        .collect();
    for r in futures_join(tasks).await {
        assert!(r.is_err(), "the caller's own timeout dropped the call");
    }
    assert_eq!(stripe.trial_permits(), 0, "both permits came back at once");
    healthy_calls_close_it(&stripe, "call").await;
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    assert_eq!(cancelled_calls(&log, "stripe"), 2, "recorded as cancelled, once each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_call_sync_closure_and_an_unpolled_tower_future_end_their_calls() {
    use tower::{Layer, Service};
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start_with(dir.path(), clock.clone(), TRIALS, JournalOptions::default()).await;
    let stripe = registry.get("stripe").unwrap().clone();

    open_then_wait(&stripe, &clock).await;
    for _ in 0..2 {
        let s = stripe.clone();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            s.call_sync("", || -> Result<(), &str> { panic!("bug") })
        }));
        assert!(panicked.is_err());
    }
    healthy_calls_close_it(&stripe, "call_sync").await;

    open_then_wait(&stripe, &clock).await;
    let calls = Arc::new(AtomicU64::new(0));
    let mut svc = breakerbox::actor::BreakerLayer::new(stripe.clone()).layer(Upstream { calls: calls.clone() });
    for _ in 0..2 {
        // Admitted in `call`, then dropped without a poll (a lost select! branch).
        drop(svc.call(false));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "both trials were admitted");
    healthy_calls_close_it(&stripe, "tower").await;

    open_then_wait(&stripe, &clock).await;
    let (url, _) = hanging_server();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(breakerbox::actor::BreakerMiddleware::new(stripe.clone()))
        .build();
    for _ in 0..2 {
        let r = tokio::time::timeout(Duration::from_millis(50), client.get(&url).send()).await;
        assert!(r.is_err(), "the request hangs until its caller gives up");
    }
    healthy_calls_close_it(&stripe, "reqwest").await;
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    assert_eq!(cancelled_calls(&log, "stripe"), 6);
}

/// A server on 127.0.0.1 that accepts connections and never answers (bounded: it exits with
/// the test process; at most a few connections).
fn hanging_server() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    (url, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_after_its_call_timeout_is_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start_with(dir.path(), clock.clone(), TRIALS, JournalOptions::default()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let call = {
        let stripe = stripe.clone();
        tokio::spawn(async move {
            let _ = stripe
                .call("", async move {
                    let _ = started_tx.send(());
                    let _ = rx.await;
                    Ok::<_, &str>(())
                })
                .await;
        })
    };
    // The call was admitted and runs (its body is polled only after admission).
    started.await.unwrap();
    // The breaker's clock says the call ran 11 s (its call timeout is 10 s) when it is dropped.
    clock.advance(11_000);
    call.abort();
    let _ = call.await;
    drop(tx);
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    let outcomes: Vec<_> = core_events(&log, "stripe")
        .into_iter()
        .filter_map(|e| match e {
            Event::CallRecorded(c) => Some(c.outcome),
            _ => None,
        })
        .collect();
    assert_eq!(outcomes, vec![breakerbox::breaker::Outcome::Timeout]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_success_is_kept_per_operation_and_never_answers_another() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::manual(1_764_000_000_000)).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let prices = stripe
        .call_with_fallback("prices.list", async { Ok::<_, &str>("PRICES") }, Fallback::LastSuccess)
        .await;
    assert_eq!(prices.unwrap(), "PRICES");
    let customer = stripe
        .call_with_fallback(
            "customers.create",
            async { Err::<&str, _>("down") },
            Fallback::LastSuccess,
        )
        .await;
    assert!(
        matches!(customer, Err(CallError::Inner("down"))),
        "customers.create has no good answer of its own: {customer:?}"
    );
    // prices.list still gets its own.
    let again = stripe
        .call_with_fallback("prices.list", async { Err::<&str, _>("down") }, Fallback::LastSuccess)
        .await;
    assert_eq!(again.unwrap(), "PRICES");
    // A value of another type is never served either.
    let n = stripe
        .call_with_fallback("prices.list", async { Err::<u32, _>("down") }, Fallback::LastSuccess)
        .await;
    assert!(n.is_err());
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_nobody_decides_sends_half_open_back_to_open_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let registry = start_with(dir.path(), clock.clone(), TRIALS, JournalOptions::default()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    open_then_wait(&stripe, &clock).await;
    // One trial that hangs (its caller still waits: not cancelled).
    let release = Arc::new(tokio::sync::Notify::new());
    let held = {
        let (stripe, release) = (stripe.clone(), release.clone());
        tokio::spawn(async move {
            stripe
                .call("", async move {
                    release.notified().await;
                    Ok::<_, &str>(())
                })
                .await
        })
    };
    while stripe.trial_permits() == 0 {
        tokio::task::yield_now().await;
    }
    let b = stripe.inspect().await.unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    let deadline = b.view(clock.now_ms()).trial_deadline_ms.expect("a deadline runs");
    assert_eq!(deadline, clock.now_ms() + 60_000);
    clock.advance(60_000);
    stripe.tick().await;
    let b = stripe.inspect().await.unwrap();
    assert_eq!(b.state(), State::Open, "the deadline re-opened it");
    release.notify_one();
    assert!(held.await.unwrap().is_ok(), "the late call still returns its value");
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    let reopened = core_events(&log, "stripe").into_iter().find_map(|e| match e {
        Event::Transitioned(t) if t.reason == breakerbox::breaker::Reason::TrialDeadline => Some(t),
        _ => None,
    });
    let t = reopened.expect("a trial_deadline transition is in the log");
    assert_eq!((t.from, t.to, t.at_ms), (State::HalfOpen, State::Open, deadline));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_answer_names_its_own_command_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::system()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let calcom = registry.get("calcom").unwrap().clone();
    // Traffic and commands on both breakers at once, so group commits mix their writes.
    let traffic = {
        let stripe = stripe.clone();
        tokio::spawn(async move {
            for i in 0..2_000u32 {
                let _ = stripe
                    .call("", async move { if i % 7 == 0 { Err("x") } else { Ok(()) } })
                    .await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let commands: Vec<_> = (0..120)
        .map(|i| {
            let h = if i % 2 == 0 { stripe.clone() } else { calcom.clone() };
            tokio::spawn(async move {
                let r = if i % 3 == 0 {
                    h.force_open(operator()).await
                } else {
                    h.reset(operator()).await
                };
                (h.key().to_owned(), r.unwrap())
            })
        })
        .collect();
    let answers = futures_join(commands).await;
    traffic.await.unwrap();
    let log = stored(&registry).await;
    let by_position: BTreeMap<i64, &StoredEvent> = log.iter().map(|e| (e.position, e)).collect();
    let mut positions = std::collections::BTreeSet::new();
    for (key, answer) in &answers {
        let position = answer.position.expect("durable: the log is written");
        let e = by_position
            .get(&position)
            .unwrap_or_else(|| panic!("{key}: position {position} is in the log"));
        assert_eq!(
            (e.stream.as_str(), e.event_type.as_str()),
            (key.as_str(), "operator_command"),
            "the answer's position {position} is its own command"
        );
        assert!(positions.insert(position), "each answer has its own position");
    }
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_log_cannot_take_is_refused_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let journal_options = JournalOptions {
        capacity: 8,
        busy_timeout: Duration::from_millis(50),
        ..JournalOptions::default()
    };
    let registry = start_with(dir.path(), Clock::manual(1_764_000_000_000), CONFIG, journal_options).await;
    let stripe = registry.get("stripe").unwrap().clone();
    // Another process holds the file's write lock: the journal can't commit, its buffer fills.
    let mut blocker = lock::hold_write_lock(&dir.path().join("log.db"));
    let calcom = registry.get("calcom").unwrap().clone();
    // Until the buffer is full for good: once a commit has failed, the writer holds that batch
    // and takes no more, so a record dropped after that means the buffer stays full. (A drop
    // before the writer's first take is not enough: the take empties the buffer again.)
    let journal = registry.journal();
    let dropped = || journal.stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
    let mut dropped_once_failing = None;
    let mut calls = 0;
    loop {
        if dropped_once_failing.is_none() && !journal.condition().is_ok() {
            dropped_once_failing = Some(dropped());
        }
        if dropped_once_failing.is_some_and(|d| dropped() > d) {
            break;
        }
        assert!(calls < 100_000, "the buffer of 8 never filled");
        let _ = calcom.call("", async { Err::<(), _>("down") }).await;
        calcom.inspect().await;
        calls += 1;
    }
    let answer = tokio::time::timeout(Duration::from_secs(5), stripe.force_open(operator()))
        .await
        .expect("answered at once, not when the store recovers");
    assert!(
        matches!(answer, Err(breakerbox::journal::JournalError::Full)),
        "refused: {answer:?}"
    );
    assert_eq!(stripe.state(), State::Closed, "a refused command changes nothing");
    blocker.release();
    registry.shutdown().await.unwrap();
    let log = stored(&registry).await;
    assert!(
        !log.iter()
            .any(|e| e.event_type == "operator_command" && e.stream == "stripe"),
        "nothing of the refused command reached the log"
    );
}

/// The gate's lock-free admission, model-checked with loom over every interleaving (up to a
/// preemption bound): `src/actor/admission.rs` compiled against loom's atomics instead of std's.
mod admission_deps {
    pub(super) use breakerbox::breaker::{AdmissionView, Permit, Rejection, State, Verdict};
    pub(super) use loom::sync::atomic::{AtomicU64, Ordering};
}
#[allow(dead_code)]
#[path = "../src/actor/admission.rs"]
mod admission;

mod loom_gate {
    use crate::admission::{Admission, Published};
    use breakerbox::breaker::{AdmissionView, State};
    use loom::sync::Arc;

    fn view(state: State, episode: u64, open_until_ms: u64) -> AdmissionView {
        AdmissionView {
            state,
            episode,
            trial_episode: episode + u64::from(state == State::Open),
            open_until_ms,
            trial_deadline_ms: u64::MAX,
            half_open_requests: 1,
        }
    }

    fn model(f: impl Fn() + Send + Sync + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(f);
    }

    /// Two callers race for HALF_OPEN 4's one trial while the actor re-opens it (OPEN 5, its
    /// period already over, so its trials are HALF_OPEN 6's); one caller gives its trial back
    /// (an ignored or cancelled outcome) and tries again.
    #[test]
    fn no_episode_hands_out_more_trials_than_its_limit_and_none_counts_in_another() {
        model(|| {
            let published = Arc::new(Published::new());
            published.publish(&view(State::HalfOpen, 4, 0));
            let caller = |give_back: bool| {
                let p = published.clone();
                loom::thread::spawn(move || {
                    let mut kept = Vec::new();
                    if let Admission::Permit(permit) = p.admit(100, || 100) {
                        if give_back {
                            p.return_trial(permit.episode);
                            if let Admission::Permit(again) = p.admit(100, || 100) {
                                kept.push(again);
                            }
                        } else {
                            kept.push(permit);
                        }
                    }
                    kept
                })
            };
            let (a, b) = (caller(true), caller(false));
            published.publish(&view(State::Open, 5, 50));
            let kept: Vec<_> = [a, b].into_iter().flat_map(|t| t.join().unwrap()).collect();
            for episode in [4, 6] {
                let trials = kept.iter().filter(|p| p.trial && p.episode == episode).count();
                assert!(trials <= 1, "episode {episode} handed out {trials} trials kept at once");
            }
            assert!(kept.iter().all(|p| p.trial && [4, 6].contains(&p.episode)), "{kept:?}");
            // Permits of 6 taken before the timer moved the core there are kept; no more.
            let out_for_6 = kept.iter().filter(|p| p.episode == 6).count() as u64;
            published.publish(&view(State::HalfOpen, 6, 0));
            assert_eq!(published.trials(), (6, out_for_6));
            // CLOSED: no trial can be taken on any view.
            published.publish(&view(State::Closed, 7, 0));
            assert_eq!(published.trials_out(), 0);
            assert!(matches!(published.admit(100, || 100), Admission::Permit(p) if !p.trial && p.episode == 7));
        });
    }

    /// A give-back of an old episode's permit never frees a permit of the current one.
    #[test]
    fn a_late_give_back_never_frees_a_permit_of_a_later_episode() {
        model(|| {
            let published = Arc::new(Published::new());
            published.publish(&view(State::HalfOpen, 4, 0));
            let Admission::Permit(old) = published.admit(10, || 10) else {
                panic!("the first trial of episode 4 is admitted")
            };
            let late = {
                let p = published.clone();
                loom::thread::spawn(move || p.return_trial(old.episode))
            };
            published.publish(&view(State::Open, 5, 50));
            let taken = published.admit(100, || 100);
            late.join().unwrap();
            assert!(matches!(taken, Admission::Permit(p) if p.trial && p.episode == 6));
            // Episode 6's one permit is out: the late give-back of 4's did not free it.
            assert_eq!(published.trials(), (6, 1));
            assert!(matches!(published.admit(100, || 100), Admission::Reject(r) if r.state == State::HalfOpen));
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_keeps_the_projection_beside_its_breakers_and_stops_them_in_order() {
    use breakerbox::app::{App, AppOptions};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let config = Config::from_toml(Path::new("t.toml"), CONFIG, &Default::default()).unwrap();
    let clock = Clock::manual(1_764_000_000_000);
    let options = || AppOptions {
        registry: RegistryOptions {
            clock: clock.clone(),
            ..RegistryOptions::default()
        },
        project_every: Some(Duration::from_millis(20)),
        alerts: false,
        ..AppOptions::default()
    };
    let app = App::start(&db, &config, options()).await.unwrap();
    let stripe = app.registry().get("stripe").unwrap().clone();
    for _ in 0..5 {
        let _ = stripe.call("", async { Err::<(), _>("down") }).await;
    }
    stripe.inspect().await;
    assert_eq!(stripe.state(), State::Open);
    app.journal().flush().await.unwrap();
    // The app, not the registry, folds the log into the projection: its stored minutes fill up
    // without anyone asking for a catch-up.
    let mut reader = breakerbox::replay::Projection::open(app.journal());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let calls: u64 = reader
            .minutes("stripe", 0, clock.now_ms())
            .await
            .unwrap()
            .values()
            .map(|m| m.calls())
            .sum();
        if calls == 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the projection has {calls} of 5 calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown().await.unwrap();
    // Stopped in order: the lease is given back and the breakers' state is durable, so the next
    // app on the file starts at once with stripe still open.
    let again = App::start(&db, &config, options()).await.unwrap();
    assert_eq!(again.registry().get("stripe").unwrap().state(), State::Open);
    again.shutdown().await.unwrap();
}

/// Caps the log below its size and appends to a stream of its own until an append fails as
/// "full" (the file's free pages take a few first).
async fn fill_up(journal: &Journal) {
    use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
    journal.flush().await.unwrap();
    journal.set_max_size(Some(1));
    let stream: Arc<str> = Arc::from("filler");
    let mut b = Breaker::new(Policy::consecutive(1_000_000, 100)).unwrap();
    let mut rx = journal.subscribe();
    for t in 0..1_000_000u64 {
        let mut events = Vec::new();
        if let Decision::Permit(p) = b.acquire(t, &mut events) {
            b.complete(t + 1, p, Outcome::Success, &mut events);
        }
        for e in events {
            journal.submit(&stream, breakerbox::journal::Body::Breaker(e));
        }
        if t % 100 == 99 {
            let full = tokio::time::timeout(Duration::from_millis(50), rx.wait_for(|p| p.failing.is_some())).await;
            if full.is_ok() {
                return;
            }
        }
    }
    panic!("the capped log never filled up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_during_a_log_outage_is_answered_applied_not_durable_and_written_when_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::manual(1_764_000_000_000)).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let journal = registry.journal().clone();
    // The disk fills up: every append fails as "full".
    fill_up(&journal).await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), stripe.force_open(operator()))
        .await
        .expect("a command is answered while the log is down")
        .unwrap();
    let waited = started.elapsed();
    // Answered once the command wait (2 s by default) is over, not when the disk clears.
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    assert_eq!((answer.from, answer.to), (State::Closed, State::ForcedOpen));
    assert_eq!(answer.position, None, "not durable: the log did not take it");
    assert_eq!((answer.log.status, answer.log.kind), ("failing", Some("full")));
    assert!(answer.log.since_ms.is_some());
    // What the caller was told is what the breaker does.
    assert_eq!(stripe.state(), State::ForcedOpen);
    assert!(stripe.call("", async { Ok::<_, &str>(1) }).await.is_err());
    // Space comes back: the command is in the log, in the order it was applied.
    journal.set_max_size(None);
    tokio::time::timeout(Duration::from_secs(10), journal.flush())
        .await
        .expect("written once the disk clears")
        .unwrap();
    assert!(journal.condition().is_ok());
    let log = stored(&registry).await;
    let types: Vec<&str> = log
        .iter()
        .filter(|e| e.stream == "stripe")
        .map(|e| e.event_type.as_str())
        .filter(|t| *t != "snapshot" && *t != "call_stats")
        .collect();
    assert_eq!(types, ["policy_applied", "operator_command", "transition"]);
    assert_eq!(journal.condition().dropped, 0, "nothing accepted was lost");
    registry.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_log_failing_ends_within_its_bound_and_says_what_was_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let registry = start(dir.path(), Clock::manual(1_764_000_000_000)).await;
    let stripe = registry.get("stripe").unwrap().clone();
    fill_up(registry.journal()).await;
    let _ = stripe.call("", async { Err::<u8, _>("down") }).await;
    let started = std::time::Instant::now();
    let stopped = tokio::time::timeout(
        Duration::from_secs(10),
        registry.shutdown_within(Duration::from_millis(500)),
    )
    .await
    .expect("shutdown ends while the log is down");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    match stopped {
        Err(breakerbox::journal::JournalError::NotDurable(c)) => {
            assert_eq!(c.kind, Some("full"));
            let text = breakerbox::journal::JournalError::NotDurable(c).to_string();
            assert!(text.contains("not durable") && text.contains("full since"), "{text}");
        }
        other => panic!("expected NotDurable, got {other:?}"),
    }
    let closing = std::time::Instant::now();
    registry.journal().close().await;
    assert!(
        closing.elapsed() < Duration::from_secs(4),
        "close took {:?}",
        closing.elapsed()
    );
}

/// The OPEN → HALF_OPEN timer runs on real time, the core on the coarse clock a ticker thread
/// keeps. When the timer fires while that clock still reads just before the deadline (the
/// ticker lags: two busy cores, fifty actors), nothing is due yet; the timer must be set again,
/// or the breaker stays OPEN until a call comes (seen once in CI: a dashboard breaker never
/// went HALF_OPEN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_that_fires_before_the_clock_reaches_its_deadline_is_set_again() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = 1_700_000_000_000;
    let clock = Clock::held(t0);
    let toml = "[services.stripe]\nfailure_threshold = 1\ntimeout = \"200ms\"\n";
    let registry = start_with(dir.path(), clock.clone(), toml, JournalOptions::default()).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let _ = stripe.call("", async { Err::<(), _>("down") }).await;
    assert_eq!(stripe.inspect().await.unwrap().state(), State::Open);
    // The timer (200 ms of real time) fires while the clock still reads 1 ms before the end of
    // the OPEN period: correctly, nothing happens yet.
    clock.set(t0 + 199);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stripe.state(), State::Open, "not due yet");
    // The clock reaches the deadline: with no call coming, the breaker goes HALF_OPEN by itself.
    clock.set(t0 + 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while stripe.state() != State::HalfOpen {
        assert!(
            std::time::Instant::now() < deadline,
            "still {:?} 3 s after its OPEN period ended: the timer was not set again",
            stripe.state()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    registry.shutdown().await.unwrap();
}
