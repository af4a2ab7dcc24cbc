//! Alerts when a breaker opens (issue #9): episodes from the log, at-least-once webhook delivery
//! to a fake receiver on 127.0.0.1, the Alertmanager v4 and Slack payloads, the config, the CLI.
//!
//! Time is injected: the notifier is stepped with `Notifier::pump(now_ms)`, so "no sooner than
//! 2 s later" is checked by stepping the clock, never by sleeping. Only the crash test runs the
//! real `breakerbox serve` (and kills it with SIGKILL), so it waits on real time, with deadlines.

use breakerbox::alerts::retry::{Answer, RateLimit, RetryPolicy, Verdict, backoff_ms, decide, retry_after_ms};
use breakerbox::alerts::{Episodes, Links, Notice, Notifier, NotifierOptions, OutboxState, fingerprint, payload};
use breakerbox::breaker::{Breaker, Decision, Event, Evidence, Outcome, Policy, Reason, State, Transition};
use breakerbox::config::{Config, Secret, WebhookFormat};
use breakerbox::journal::{
    ALERT_DELIVERY, AlertDelivery, AlertStatus, Body, DeliveryOutcome, Journal, JournalOptions, Operator,
};
use breakerbox::replay::{AuditQuery, Kind, audit};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 2025-11-24T16:00:00Z: a fixed instant, so payloads and fixtures are stable.
const T0: u64 = 1_764_000_000_000;
const MIN: u64 = 60_000;

// ---------------------------------------------------------------------------------------------
// A fake receiver: a tiny HTTP/1.1 server on 127.0.0.1 that records every request and answers
// with scripted statuses (then a default).

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
    }
}

#[derive(Clone, Debug)]
struct Got {
    path: String,
    answered: u16,
    body: Value,
}

struct Script {
    replies: VecDeque<Reply>,
    default: Reply,
    got: Vec<Got>,
}

struct Receiver {
    port: u16,
    state: Arc<Mutex<Script>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The secret part of every fake webhook URL: it must never show up in logs or records.
const TOKEN: &str = "T0KEN-s3cret";

impl Receiver {
    fn start(script: Vec<Reply>) -> Receiver {
        Receiver::on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    fn on(listener: TcpListener, script: Vec<Reply>) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(Script {
            replies: script.into(),
            default: reply(200),
            got: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    serve_one(conn, &s);
                }
            }
        });
        Receiver {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/{TOKEN}", self.port)
    }

    fn got(&self) -> Vec<Got> {
        self.state.lock().unwrap().got.clone()
    }

    /// Bodies answered with 2xx: what the receiver accepted.
    fn accepted(&self) -> Vec<Value> {
        self.got()
            .into_iter()
            .filter(|g| (200..300).contains(&g.answered))
            .map(|g| g.body)
            .collect()
    }

    fn set_default(&self, status: u16) {
        self.state.lock().unwrap().default = reply(status);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_one(mut conn: TcpStream, state: &Mutex<Script>) {
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the wake-up connection of Drop
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let answer = {
        let mut s = state.lock().unwrap();
        let answer = s.replies.pop_front().unwrap_or_else(|| s.default.clone());
        s.got.push(Got {
            path,
            answered: answer.status,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        answer
    };
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-length: 0\r\nconnection: close\r\n",
        answer.status
    );
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
}

/// A port nothing listens on (yet): connections are refused, as when the receiver is down.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Helpers: config, journal, transitions, captured log lines.

fn load(toml: &str) -> Result<Config, String> {
    Config::from_toml(Path::new("alerts.toml"), toml, &BTreeMap::new()).map_err(|e| e.to_string())
}

/// A config with `[alerts]` settings `extra` and one webhook per (name, url, format).
fn config(extra: &str, hooks: &[(&str, &str, &str)]) -> Config {
    let mut t = format!("[alerts]\n{extra}\n");
    for (name, url, format) in hooks {
        t.push_str(&format!(
            "[[alerts.webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nformat = \"{format}\"\n"
        ));
    }
    load(&t).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    db: PathBuf,
    journal: Arc<Journal>,
    notifier: Notifier,
}

/// A fresh log and a notifier on it that has run once (so it has its checkpoint: what follows
/// is news, not history).
async fn setup(config: &Config) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let journal = Arc::new(Journal::open(&db, JournalOptions::default()).await.unwrap());
    let mut notifier = Notifier::open(journal.clone(), config.alerts.clone(), NotifierOptions::default())
        .await
        .unwrap();
    notifier.pump(T0 - 1_000).await.unwrap();
    Setup {
        _dir: dir,
        db,
        journal,
        notifier,
    }
}

fn opened(at_ms: u64) -> Transition {
    Transition {
        at_ms,
        from: State::Closed,
        to: State::Open,
        episode: 1,
        reason: Reason::ConsecutiveFailures,
        evidence: Evidence {
            failures: Some(10),
            threshold: Some(10.0),
            open_ms: Some(120_000),
            ..Evidence::default()
        },
        open_until_ms: Some(at_ms + 120_000),
    }
}

async fn append(journal: &Journal, stream: &str, events: impl IntoIterator<Item = Event>) {
    let stream: Arc<str> = Arc::from(stream);
    for e in events {
        journal.submit(&stream, Body::Breaker(e));
    }
    journal.flush().await.unwrap();
}

async fn open_breaker(journal: &Journal, stream: &str, at_ms: u64) {
    append(journal, stream, [Event::Transitioned(Box::new(opened(at_ms)))]).await;
}

async fn alert_audit(journal: &Journal, service: Option<&str>) -> Vec<AlertDelivery> {
    let q = AuditQuery {
        stream: service.map(str::to_owned),
        kinds: vec![Kind::Alert],
        since_ms: 0,
        until_ms: u64::MAX,
        after_position: 0,
        limit: 1_000,
    };
    audit(journal, &q)
        .await
        .unwrap()
        .entries
        .into_iter()
        .map(|e| serde_json::from_value(e.details).unwrap())
        .collect()
}

/// Collects formatted log events of the current thread (the notifier's steps run on it).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl tracing::Subscriber for Logs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        self.0.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---------------------------------------------------------------------------------------------
// Delivery against the fake receiver.

#[tokio::test]
async fn given_a_sink_failing_500_500_500_when_a_breaker_opens_then_one_payload_is_accepted_after_3_retries() {
    let rx = Receiver::start(vec![reply(500), reply(500), reply(500)]);
    let cfg = config("", &[("oncall", &rx.url(), "alertmanager")]);
    let mut s = setup(&cfg).await;

    open_breaker(&s.journal, "stripe", T0).await;
    let mut deliveries = Vec::new();
    for step in 0..6 {
        // Each step is past any backoff (capped at max_backoff = 5 min).
        deliveries.extend(s.notifier.pump(T0 + step * 10 * MIN).await.unwrap().deliveries);
    }

    let got = rx.got();
    let answered: Vec<u16> = got.iter().map(|g| g.answered).collect();
    assert_eq!(answered, [500, 500, 500, 200], "three retries, then it went through");
    assert!(got.iter().all(|g| g.path == format!("/hooks/{TOKEN}")));
    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 1, "exactly one accepted payload");
    assert_eq!(accepted[0]["status"], "firing");
    assert_eq!(accepted[0]["alerts"][0]["labels"]["service"], "stripe");
    assert_eq!(accepted[0]["alerts"][0]["fingerprint"], fingerprint("stripe", T0));
    let outcomes: Vec<(u32, DeliveryOutcome, Option<u16>)> = deliveries
        .iter()
        .map(|d| (d.attempt, d.outcome, d.status_code))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, DeliveryOutcome::Retrying, Some(500)),
            (2, DeliveryOutcome::Retrying, Some(500)),
            (3, DeliveryOutcome::Retrying, Some(500)),
            (4, DeliveryOutcome::Delivered, Some(200)),
        ]
    );
    // The waits grow (capped exponential backoff with jitter: 0.5–1 s, 1–2 s, 2–4 s).
    let waits: Vec<u64> = deliveries
        .iter()
        .filter_map(|d| d.next_attempt_ms.map(|n| n - d.at_ms))
        .collect();
    for (i, w) in waits.iter().enumerate() {
        let cap = 1_000 << i;
        assert!((cap / 2..=cap).contains(w), "wait {i} = {w} ms");
    }
    // Every attempt is in the log, for `audit --kind alert` and the dashboard.
    let recorded = alert_audit(&s.journal, Some("stripe")).await;
    assert_eq!(recorded, deliveries);
    let row = &s.notifier.outbox().await.unwrap()[0];
    assert_eq!((row.state, row.attempts), (OutboxState::Delivered, 4));
}

#[tokio::test]
async fn given_a_sink_answering_400_when_a_breaker_opens_then_it_is_not_retried_and_one_clear_line_is_logged() {
    let rx = Receiver::start(vec![reply(400)]);
    let cfg = config("", &[("oncall", &rx.url(), "alertmanager")]);
    let mut s = setup(&cfg).await;
    let logs = Logs::default();
    let _guard = tracing::subscriber::set_default(logs.clone());

    open_breaker(&s.journal, "stripe", T0).await;
    for step in 0..4 {
        s.notifier.pump(T0 + step * 60 * MIN).await.unwrap();
    }

    assert_eq!(rx.got().len(), 1, "a 400 is never retried");
    let row = &s.notifier.outbox().await.unwrap()[0];
    assert_eq!((row.state, row.attempts), (OutboxState::Rejected, 1));
    let recorded = alert_audit(&s.journal, Some("stripe")).await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        (recorded[0].outcome, recorded[0].status_code),
        (DeliveryOutcome::Rejected, Some(400))
    );
    let lines = logs.lines();
    let rejected: Vec<&String> = lines.iter().filter(|l| l.contains("rejected")).collect();
    assert_eq!(rejected.len(), 1, "logged once: {lines:#?}");
    let line = rejected[0];
    assert!(line.starts_with("ERROR"), "{line}");
    assert!(
        line.contains("rejected by sink \"oncall\": HTTP 400; not retried") && line.contains("stripe"),
        "{line}"
    );
    for l in &lines {
        assert!(!l.contains(TOKEN) && !l.contains(&rx.url()), "the URL is a secret: {l}");
    }
}

#[test]
fn given_429_with_retry_after_2_then_the_scheduler_never_retries_sooner_than_2_s_later() {
    let policy = RetryPolicy::default();
    for attempt in 1..=3 {
        for jitter in [0.0, 0.5, 0.999] {
            let answer = Answer::Status {
                code: 429,
                retry_after: Some("2"),
            };
            let Verdict::Retry { at_ms } = decide(&policy, answer, attempt, T0, T0, jitter) else {
                panic!("429 is retried")
            };
            assert!(at_ms >= T0 + 2_000, "attempt {attempt}, jitter {jitter}: {at_ms}");
        }
    }
    // An HTTP date: as long as it says, counted from the answer.
    assert_eq!(retry_after_ms("Mon, 24 Nov 2025 16:00:05 GMT", T0), Some(5_000));
    assert_eq!(retry_after_ms("Mon, 24 Nov 2025 15:00:00 GMT", T0), Some(0));
    assert_eq!(retry_after_ms(" 120 ", T0), Some(120_000));
    assert_eq!(retry_after_ms("soon", T0), None);
    // A Retry-After longer than the backoff cap is still honoured; 5xx may send one too.
    let long = Answer::Status {
        code: 503,
        retry_after: Some("600"),
    };
    assert_eq!(
        decide(&policy, long, 1, T0, T0, 0.0),
        Verdict::Retry { at_ms: T0 + 600_000 }
    );
    // Transport errors and 5xx retry with backoff; other 4xx and 3xx never; 2xx is done.
    assert!(matches!(
        decide(&policy, Answer::Transport, 1, T0, T0, 0.3),
        Verdict::Retry { .. }
    ));
    for code in [400, 401, 403, 404, 410, 301] {
        let a = Answer::Status {
            code,
            retry_after: Some("1"),
        };
        assert_eq!(decide(&policy, a, 1, T0, T0, 0.3), Verdict::Reject, "{code}");
    }
    let ok = Answer::Status {
        code: 204,
        retry_after: None,
    };
    assert_eq!(decide(&policy, ok, 9, T0, T0, 0.3), Verdict::Delivered);
    // Capped: never above max_backoff; past give_up_after it gives up.
    for attempt in 1..60 {
        assert!(backoff_ms(&policy, attempt, 0.99) <= policy.max_backoff_ms);
    }
    let late = T0 + policy.give_up_after_ms;
    assert_eq!(decide(&policy, Answer::Transport, 300, T0, late, 0.5), Verdict::GiveUp);
}

#[tokio::test]
async fn given_429_with_retry_after_2_when_the_clock_is_stepped_then_the_next_try_waits_2_s() {
    let rx = Receiver::start(vec![Reply {
        status: 429,
        headers: vec![("Retry-After".into(), "2".into())],
    }]);
    let cfg = config("", &[("oncall", &rx.url(), "slack")]);
    let mut s = setup(&cfg).await;
    open_breaker(&s.journal, "stripe", T0).await;

    let first = s.notifier.pump(T0).await.unwrap();
    assert_eq!(first.deliveries[0].status_code, Some(429));
    let next = first.deliveries[0].next_attempt_ms.unwrap();
    assert!(next >= T0 + 2_000, "next attempt at +{} ms", next - T0);
    assert_eq!(first.next_wake_ms, Some(next), "the loop sleeps until then");
    for t in [T0 + 1, T0 + 1_000, next - 1] {
        let p = s.notifier.pump(t).await.unwrap();
        assert!(p.deliveries.is_empty(), "nothing sent at +{} ms", t - T0);
    }
    assert_eq!(rx.got().len(), 1);
    let p = s.notifier.pump(next).await.unwrap();
    assert_eq!(p.deliveries[0].outcome, DeliveryOutcome::Delivered);
    assert_eq!(rx.got().len(), 2);
}

#[tokio::test]
async fn given_the_receiver_is_down_during_the_open_when_it_comes_back_then_the_alert_is_delivered() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hooks/{TOKEN}");
    let cfg = config("", &[("oncall", &url, "alertmanager")]);
    let mut s = setup(&cfg).await;
    open_breaker(&s.journal, "stripe", T0).await;

    let mut failed = Vec::new();
    for step in 0..3 {
        failed.extend(s.notifier.pump(T0 + step * 10 * MIN).await.unwrap().deliveries);
    }
    assert_eq!(failed.len(), 3);
    for d in &failed {
        assert_eq!((d.outcome, d.status_code), (DeliveryOutcome::Retrying, None));
        let error = d.error.as_deref().unwrap();
        assert!(error.contains("could not connect"), "{error}");
        assert!(!error.contains(TOKEN) && !error.contains(&url), "{error}");
    }

    let rx = Receiver::on(TcpListener::bind(("127.0.0.1", port)).unwrap(), vec![]);
    let later = s.notifier.pump(T0 + 40 * MIN).await.unwrap();
    assert_eq!(later.deliveries.len(), 1);
    assert_eq!(
        (later.deliveries[0].outcome, later.deliveries[0].attempt),
        (DeliveryOutcome::Delivered, 4)
    );
    assert_eq!(rx.accepted().len(), 1);
    assert_eq!(rx.accepted()[0]["alerts"][0]["fingerprint"], fingerprint("stripe", T0));
}

#[tokio::test]
async fn given_the_notifier_dies_after_the_open_before_delivery_when_it_restarts_then_one_firing_arrives() {
    let rx = Receiver::start(vec![]);
    let cfg = config("", &[("oncall", &rx.url(), "alertmanager")]);
    let s = setup(&cfg).await;
    let (db, dir) = (s.db.clone(), s._dir);
    let (journal, mut notifier) = (s.journal, s.notifier);
    // One breaker's open was read into the outbox, another's only reached the log.
    open_breaker(&journal, "stripe", T0).await;
    notifier.catch_up(T0).await.unwrap();
    open_breaker(&journal, "calcom", T0 + 5).await;
    // Killed: nothing closed, nothing flushed beyond what was already durable.
    drop(notifier);
    drop(journal);
    assert!(rx.got().is_empty());

    let journal = Arc::new(Journal::open(&db, JournalOptions::default()).await.unwrap());
    let mut notifier = Notifier::open(journal.clone(), cfg.alerts.clone(), NotifierOptions::default())
        .await
        .unwrap();
    for step in 0..5 {
        notifier.pump(T0 + 1_000 + step * MIN).await.unwrap();
    }
    let mut fingerprints: Vec<String> = rx
        .accepted()
        .iter()
        .map(|b| b["alerts"][0]["fingerprint"].as_str().unwrap().to_owned())
        .collect();
    fingerprints.sort();
    let mut expected = vec![fingerprint("stripe", T0), fingerprint("calcom", T0 + 5)];
    expected.sort();
    assert_eq!(fingerprints, expected, "exactly one firing per episode");
    journal.close().await;
    drop(dir);
}

#[tokio::test]
async fn given_the_firing_is_still_failing_when_the_episode_resolves_then_resolved_waits_for_firing() {
    let rx = Receiver::start(vec![reply(503), reply(503)]);
    let cfg = config("quiet_period = \"1m\"", &[("oncall", &rx.url(), "alertmanager")]);
    let mut s = setup(&cfg).await;
    open_breaker(&s.journal, "stripe", T0).await;
    s.notifier.pump(T0).await.unwrap(); // firing: 503
    let mut closed = opened(T0 + 10);
    (closed.from, closed.to, closed.reason) = (State::HalfOpen, State::Closed, Reason::TrialsSucceeded);
    append(&s.journal, "stripe", [Event::Transitioned(Box::new(closed))]).await;
    // Past the quiet period: the resolved message is due, but the firing is not delivered yet.
    let t = T0 + 10 + MIN;
    let p = s.notifier.pump(t).await.unwrap();
    let sent: Vec<Value> = rx.got().iter().map(|g| g.body["status"].clone()).collect();
    assert_eq!(sent, ["firing", "firing"], "no resolved before its firing");
    let wake = p.next_wake_ms.unwrap();
    assert!(
        wake > t,
        "the loop sleeps until the firing's retry, it does not spin: {wake} <= {t}"
    );
    s.notifier.pump(wake).await.unwrap();
    s.notifier.pump(wake + MIN).await.unwrap();
    let statuses: Vec<String> = rx
        .accepted()
        .iter()
        .map(|b| b["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"]);
}

#[tokio::test]
async fn given_two_notifiers_and_a_lost_checkpoint_then_each_firing_is_still_sent_once_per_fingerprint() {
    use sqlx::{ConnectOptions, Executor};
    let rx = Receiver::start(vec![]);
    let cfg = config("", &[("oncall", &rx.url(), "alertmanager")]);
    let mut s = setup(&cfg).await;
    let mut other = Notifier::open(s.journal.clone(), cfg.alerts.clone(), NotifierOptions::default())
        .await
        .unwrap();
    open_breaker(&s.journal, "stripe", T0).await;
    // Both read the same transition: the checkpoint's compare-and-set lets one enqueue it.
    s.notifier.catch_up(T0).await.unwrap();
    other.catch_up(T0).await.unwrap();
    s.notifier.pump(T0 + 1).await.unwrap();
    other.pump(T0 + 2).await.unwrap();
    // The checkpoint is lost: the next run reads the log again and finds the episode still going.
    let mut conn =
        breakerbox::journal::connect_options(&s.db, breakerbox::journal::Durability::Full, Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
    conn.execute("DELETE FROM alert_checkpoint").await.unwrap();
    for step in 1..4 {
        s.notifier.pump(T0 + step * MIN).await.unwrap();
    }
    assert_eq!(rx.got().len(), 1, "deduplicated by fingerprint: one firing");
    assert_eq!(s.notifier.outbox().await.unwrap().len(), 1);
}

#[test]
fn given_serve_is_killed_after_a_breaker_opened_before_delivery_when_it_restarts_then_the_receiver_gets_one_firing() {
    let rx = Receiver::start(vec![]);
    rx.set_default(503);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let cfg = dir.path().join("breakers.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nmax_backoff = \"1s\"\n[[alerts.webhooks]]\nname = \"oncall\"\nurl = \"{}\"\n",
            rx.url()
        ),
    )
    .unwrap();
    let (db_s, cfg_s) = (db.to_str().unwrap(), cfg.to_str().unwrap());

    let mut first = serve(db_s, cfg_s);
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args([
            "force-open",
            "stripe",
            "--reason",
            "provider outage",
            "--db",
            db_s,
            "--config",
            cfg_s,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_for("the first attempt (answered 503)", || !rx.got().is_empty());
    // Its record reaches the log a few ms after the answer; kill once it is there, so the
    // audit below can show it (the delivery itself must not depend on it).
    wait_for("the failed attempt in the log", || {
        alert_outcomes(db_s).contains(&"retrying".to_owned())
    });
    first.kill().unwrap(); // SIGKILL: no shutdown, no flush, the lease left behind.
    first.wait().unwrap();
    assert!(rx.accepted().is_empty(), "not delivered before the kill");

    rx.set_default(200);
    let mut second = serve(db_s, cfg_s);
    wait_for("the delivery after the restart", || !rx.accepted().is_empty());
    // A clean stop (SIGINT), so everything the second run did is in the log.
    let pid = second.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while second.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }

    let accepted = rx.accepted();
    assert_eq!(accepted.len(), 1, "exactly one firing counted at the receiver");
    assert_eq!(accepted[0]["status"], "firing");
    let alert = &accepted[0]["alerts"][0];
    assert_eq!(alert["labels"]["service"], "stripe");
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("provider outage"),
        "the message says why: {alert}"
    );
    // The audit trail tells the story: failed attempts before the kill, the delivery after.
    let outcomes = alert_outcomes(db_s);
    assert_eq!(outcomes.last().map(String::as_str), Some("delivered"), "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "delivered").count(), 1);
    assert!(outcomes.iter().any(|o| o == "retrying"), "{outcomes:?}");
}

#[test]
fn given_reloads_over_http_add_then_replace_the_sink_then_each_alert_goes_to_the_sink_in_force() {
    let (old, new) = (Receiver::start(vec![]), Receiver::start(vec![]));
    let dir = tempfile::tempdir().unwrap();
    let (db, cfg) = (dir.path().join("log.db"), dir.path().join("breakers.toml"));
    let sink = |name: &str, url: &str| format!("[[alerts.webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\n");
    // Given serve started without sinks, and a reload that adds the first one…
    std::fs::write(&cfg, "").unwrap();
    let (db_s, cfg_s) = (db.to_str().unwrap(), cfg.to_str().unwrap());
    let (mut child, addr) = serve_with_token(db_s, cfg_s, "reload-test-token-0123456789abcdef");
    std::fs::write(&cfg, sink("oncall", &old.url())).unwrap();
    let (status, response) = post(&addr, "/api/config/reload", "reload-test-token-0123456789abcdef");
    assert_eq!(status, 200, "{response}");
    force_open(db_s, cfg_s, "stripe");
    wait_for("stripe's firing at the first sink", || !old.accepted().is_empty());
    // When the file names another sink and a reload is asked for over HTTP…
    std::fs::write(&cfg, sink("pager", &new.url())).unwrap();
    let (status, response) = post(&addr, "/api/config/reload", "reload-test-token-0123456789abcdef");
    assert_eq!(status, 200, "{response}");
    // …then the next alert goes to the new sink, and nothing more to the old one.
    force_open(db_s, cfg_s, "calcom");
    wait_for("calcom's firing at the new sink", || {
        new.accepted()
            .iter()
            .any(|b| b["alerts"][0]["labels"]["service"] == "calcom")
    });
    let at_old: Vec<Value> = old
        .accepted()
        .iter()
        .map(|b| b["alerts"][0]["labels"]["service"].clone())
        .collect();
    assert_eq!(at_old, ["stripe"], "the removed sink hears nothing after the reload");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn force_open(db: &str, config: &str, service: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args([
            "force-open",
            service,
            "--reason",
            "drill",
            "--db",
            db,
            "--config",
            config,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `breakerbox serve` on an ephemeral loopback port with an API token, and its address.
fn serve_with_token(db: &str, config: &str, token: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--bind", "127.0.0.1:0", "--db", db, "--config", config])
        .env("CIRCUIT_BREAKER_API_TOKEN", format!("ci:{token}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("listening on http://")
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_owned)
        })
        .expect("serve says where it listens");
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// An empty POST with a bearer token: its status and the whole response.
fn post(addr: &str, path: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    (response.split_whitespace().nth(1).unwrap().parse().unwrap(), response)
}

/// The outcomes of stripe's alert deliveries in the audit trail, in order.
fn alert_outcomes(db: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args([
            "audit",
            "--kind",
            "alert",
            "--service",
            "stripe",
            "--format",
            "json",
            "--db",
            db,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let doc: Value = serde_json::from_str(&text).expect("audit --json prints one JSON document");
    let entries = doc["entries"].as_array().expect("its entries").clone();
    entries
        .iter()
        .map(|e| e["details"]["outcome"].as_str().unwrap().to_owned())
        .collect()
}

/// `breakerbox serve` on a free loopback port, retried while the killed one's lease lasts.
fn serve(db: &str, config: &str) -> Child {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let port = free_port().to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--db",
                db,
                "--config",
                config,
            ])
            .env_remove("CIRCUIT_BREAKER_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut started = false;
        for line in lines.by_ref() {
            if line.unwrap_or_default().starts_with("listening on") {
                started = true;
                break;
            }
        }
        if started {
            // Keep draining stdout so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return child;
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("owned by") && Instant::now() < deadline,
            "serve did not start: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Episodes: flapping is one episode.

/// A breaker that opens on one failure, half-opens after 100 ms and closes on one success,
/// flapping `times` times, one flap a second: its events, from the core itself.
fn flapping(times: u64) -> Vec<Event> {
    let mut policy = Policy::consecutive(1, 100);
    policy.success_threshold = 1;
    policy.half_open_requests = 1;
    let mut b = Breaker::new(policy).unwrap();
    let mut events = Vec::new();
    for i in 0..times {
        let t = T0 + i * 1_000;
        if let Decision::Permit(p) = b.acquire(t, &mut events) {
            b.complete(t + 1, p, Outcome::Failure, &mut events);
        }
        b.tick(t + 101, &mut events);
        if let Decision::Permit(p) = b.acquire(t + 200, &mut events) {
            b.complete(t + 201, p, Outcome::Success, &mut events);
        }
    }
    let opens = events
        .iter()
        .filter(|e| matches!(e, Event::Transitioned(t) if t.to == State::Open))
        .count();
    assert_eq!(opens as u64, times, "the core flapped as planned");
    events
}

#[test]
fn given_50_flaps_in_a_minute_then_the_detector_says_one_firing_and_one_resolved() {
    let quiet = 2 * MIN;
    let mut episodes = Episodes::default();
    let mut notices = Vec::new();
    for e in flapping(50) {
        if let Event::Transitioned(t) = e {
            episodes.observe("stripe", &t, quiet, &mut notices);
        }
    }
    episodes.tick(T0 + 60_000, quiet, &mut notices);
    assert_eq!(notices.len(), 1, "only the firing while the quiet period runs");
    let last_close = T0 + 49_000 + 201;
    assert_eq!(episodes.next_deadline(quiet), Some(last_close + quiet));
    episodes.tick(last_close + quiet - 1, quiet, &mut notices);
    assert_eq!(notices.len(), 1);
    episodes.tick(last_close + quiet, quiet, &mut notices);
    let kinds: Vec<AlertStatus> = notices.iter().map(|n| n.status).collect();
    assert_eq!(kinds, [AlertStatus::Firing, AlertStatus::Resolved]);
    assert_eq!(notices[0].fingerprint, notices[1].fingerprint);
    assert_eq!(notices[1].reopened, 49);
    assert_eq!(notices[1].ends_at_ms, Some(last_close));

    // Re-opening after the quiet period is a new episode, with a new fingerprint.
    let mut notices = Vec::new();
    let mut again = opened(last_close + quiet + 1);
    again.episode = 999;
    episodes.observe("stripe", &again, quiet, &mut notices);
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].status, AlertStatus::Firing);
    assert_ne!(notices[0].fingerprint, fingerprint("stripe", T0 + 1));
}

#[test]
fn given_a_forced_open_then_the_firing_says_who_and_a_reset_resolves_it_naming_who() {
    let quiet = MIN;
    let mut episodes = Episodes::default();
    let mut out = Vec::new();
    let alice = Operator {
        who: "alice@ops".into(),
        from: "cli".into(),
        why: "provider incident".into(),
    };
    episodes.command("stripe", T0, alice.clone());
    let forced = Transition {
        at_ms: T0,
        from: State::Closed,
        to: State::ForcedOpen,
        episode: 1,
        reason: Reason::ForceOpen,
        evidence: Evidence::default(),
        open_until_ms: None,
    };
    episodes.observe("stripe", &forced, quiet, &mut out);
    assert_eq!(out[0].opened_by.as_ref(), Some(&alice));
    assert_eq!(payload::severity(&out[0]), "warning");
    episodes.command(
        "stripe",
        T0 + 10,
        Operator {
            why: "fixed".into(),
            ..alice.clone()
        },
    );
    let reset = Transition {
        at_ms: T0 + 10,
        from: State::ForcedOpen,
        to: State::Closed,
        episode: 2,
        reason: Reason::Reset,
        ..forced
    };
    episodes.observe("stripe", &reset, quiet, &mut out);
    episodes.tick(T0 + 10 + quiet, quiet, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].closed_by.as_ref().map(|o| o.why.as_str()), Some("fixed"));
    assert!(payload::description(&out[1], &Links::default()).contains("reset by alice@ops from cli: \"fixed\""));
}

#[tokio::test]
async fn given_a_breaker_flapping_50_times_in_a_minute_then_each_sink_gets_one_firing_and_one_resolved() {
    let am = Receiver::start(vec![]);
    let sl = Receiver::start(vec![]);
    let cfg = config(
        "quiet_period = \"2m\"",
        &[("oncall", &am.url(), "alertmanager"), ("chat", &sl.url(), "slack")],
    );
    let mut s = setup(&cfg).await;
    let events = flapping(50);
    // Written and read as they happen: ten chunks, the notifier stepped after each.
    for chunk in events.chunks(events.len().div_ceil(10)) {
        let at = chunk.last().unwrap().at_ms();
        append(&s.journal, "stripe", chunk.iter().cloned()).await;
        s.notifier.pump(at).await.unwrap();
    }
    let last = events.last().unwrap().at_ms();
    for t in [last + MIN, last + 2 * MIN + 1, last + 3 * MIN, last + 60 * MIN] {
        s.notifier.pump(t).await.unwrap();
    }

    for (rx, name) in [(&am, "alertmanager"), (&sl, "slack")] {
        assert_eq!(rx.got().len(), 2, "{name}: one firing and one resolved, not 100");
    }
    let am = am.accepted();
    assert_eq!(
        (am[0]["status"].as_str(), am[1]["status"].as_str()),
        (Some("firing"), Some("resolved"))
    );
    assert_eq!(am[0]["alerts"][0]["fingerprint"], am[1]["alerts"][0]["fingerprint"]);
    assert_eq!(am[1]["alerts"][0]["endsAt"], payload::rfc3339(last));
    let desc = am[1]["alerts"][0]["annotations"]["description"].as_str().unwrap();
    assert!(desc.contains("re-opened 49 times"), "{desc}");
    let sl = sl.accepted();
    assert!(sl[0]["text"].as_str().unwrap().contains("stripe is OPEN"));
    assert!(sl[1]["text"].as_str().unwrap().contains("stripe closed again"));
    let recorded = alert_audit(&s.journal, None).await;
    assert_eq!(recorded.len(), 4);
    assert!(recorded.iter().all(|d| d.outcome == DeliveryOutcome::Delivered));
}

#[test]
fn a_per_sink_rate_limit_lets_a_burst_through_then_spaces_messages() {
    let mut limit = RateLimit::new(6, 2); // 6 a minute: one per 10 s, bursts of 2
    assert_eq!(limit.acquire(T0), Ok(()));
    assert_eq!(limit.acquire(T0), Ok(()));
    assert_eq!(limit.acquire(T0), Err(T0 + 10_000));
    assert_eq!(limit.acquire(T0 + 9_999), Err(T0 + 10_000));
    assert_eq!(limit.acquire(T0 + 10_000), Ok(()));
    assert_eq!(limit.acquire(T0 + 10_000), Err(T0 + 20_000));
}

// ---------------------------------------------------------------------------------------------
// Payloads: the documented shapes, and golden files.

fn sample(status: AlertStatus) -> Notice {
    let mut notices = Vec::new();
    let mut episodes = Episodes::default();
    let t = Transition {
        at_ms: T0 + 500,
        from: State::Closed,
        to: State::Open,
        episode: 7,
        reason: Reason::FailureRate,
        evidence: Evidence {
            calls: Some(20),
            failures: Some(11),
            threshold: Some(50.0),
            rate_percent: Some(55.0),
            window_calls: Some(20),
            open_ms: Some(120_000),
            ..Evidence::default()
        },
        open_until_ms: Some(T0 + 120_500),
    };
    episodes.observe("stripe/charges.create", &t, MIN, &mut notices);
    let close = Transition {
        at_ms: T0 + 125_000,
        from: State::HalfOpen,
        to: State::Closed,
        episode: 9,
        reason: Reason::TrialsSucceeded,
        evidence: Evidence {
            successes: Some(2),
            threshold: Some(2.0),
            ..Evidence::default()
        },
        open_until_ms: None,
    };
    episodes.observe("stripe/charges.create", &close, MIN, &mut notices);
    episodes.tick(T0 + 125_000 + MIN, MIN, &mut notices);
    notices.into_iter().find(|n| n.status == status).unwrap()
}

fn links() -> Links {
    Links {
        dashboard_url: Some("http://breakerbox.internal:8080/".into()),
        db_path: Some("/var/lib/breakerbox/log.db".into()),
    }
}

fn rfc3339_ok(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

fn strings(v: &Value) -> bool {
    v.as_object().is_some_and(|m| m.values().all(Value::is_string))
}

/// Alertmanager's webhook notification, version 4 (prometheus.io, "webhook_config"): checks
/// every documented field and its type, and Prometheus' label-name rule.
fn assert_alertmanager_v4(p: &Value) {
    assert_eq!(p["version"], "4");
    for key in ["groupKey", "receiver", "externalURL"] {
        assert!(p[key].is_string(), "{key}");
    }
    assert!(p["truncatedAlerts"].as_u64().is_some());
    assert!(matches!(p["status"].as_str(), Some("firing" | "resolved")));
    for key in ["groupLabels", "commonLabels", "commonAnnotations"] {
        assert!(strings(&p[key]), "{key}");
    }
    let alerts = p["alerts"].as_array().unwrap();
    assert!(!alerts.is_empty());
    for a in alerts {
        assert_eq!(a["status"], p["status"]);
        assert!(strings(&a["labels"]) && strings(&a["annotations"]));
        for l in ["alertname", "service", "severity"] {
            assert!(a["labels"][l].is_string(), "label {l}");
        }
        for name in a["labels"].as_object().unwrap().keys() {
            let mut chars = name.chars();
            assert!(
                chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_'),
                "{name}"
            );
            assert!(chars.all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        }
        for n in ["summary", "description"] {
            assert!(a["annotations"][n].is_string(), "annotation {n}");
        }
        assert!(rfc3339_ok(&a["startsAt"]) && rfc3339_ok(&a["endsAt"]));
        if a["status"] == "firing" {
            assert_eq!(a["endsAt"], "0001-01-01T00:00:00Z");
        } else {
            assert!(a["endsAt"].as_str() > a["startsAt"].as_str());
        }
        assert!(a["generatorURL"].is_string());
        let fp = a["fingerprint"].as_str().unwrap();
        assert!(fp.len() == 16 && fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp}");
    }
}

/// A Slack incoming-webhook message (api.slack.com, Block Kit): `text`, and blocks of the
/// documented types within their limits.
fn assert_slack(p: &Value) {
    assert!(p["text"].as_str().is_some_and(|t| !t.is_empty()));
    let blocks = p["blocks"].as_array().unwrap();
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    let text_of = |t: &Value, kind: &str, max: usize| {
        assert_eq!(t["type"], kind);
        let s = t["text"].as_str().unwrap();
        assert!(!s.is_empty() && s.chars().count() <= max, "{s}");
    };
    for b in blocks {
        match b["type"].as_str().unwrap() {
            "header" => text_of(&b["text"], "plain_text", payload::SLACK_HEADER_MAX),
            "section" => {
                assert!(b.get("text").is_some() || b.get("fields").is_some());
                if let Some(t) = b.get("text") {
                    text_of(t, "mrkdwn", payload::SLACK_TEXT_MAX);
                }
                if let Some(f) = b.get("fields") {
                    let f = f.as_array().unwrap();
                    assert!(!f.is_empty() && f.len() <= 10);
                    f.iter().for_each(|x| text_of(x, "mrkdwn", payload::SLACK_FIELD_MAX));
                }
            }
            "context" => {
                let e = b["elements"].as_array().unwrap();
                assert!(!e.is_empty() && e.len() <= 10);
                e.iter().for_each(|x| text_of(x, "mrkdwn", payload::SLACK_FIELD_MAX));
            }
            other => panic!("unexpected block type {other}"),
        }
    }
}

/// Compares with `tests/fixtures/alerts/NAME` (written when missing, with
/// `BREAKERBOX_WRITE_FIXTURES=1`).
fn golden(name: &str, value: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/alerts")
        .join(name);
    if std::env::var_os("BREAKERBOX_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(value).unwrap() + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let stored: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(&stored, value, "{name} changed");
}

#[test]
fn alertmanager_payloads_have_the_v4_shape_and_match_their_fixtures() {
    for (status, file) in [
        (AlertStatus::Firing, "alertmanager.firing.json"),
        (AlertStatus::Resolved, "alertmanager.resolved.json"),
    ] {
        let n = sample(status);
        let p = payload::render(WebhookFormat::Alertmanager, &n, "oncall", &links());
        assert_alertmanager_v4(&p);
        let labels = &p["alerts"][0]["labels"];
        assert_eq!(labels["alertname"], "CircuitBreakerOpen");
        assert_eq!(
            (labels["service"].as_str(), labels["operation"].as_str()),
            (Some("stripe"), Some("charges.create"))
        );
        assert_eq!(labels["severity"], "critical");
        let description = p["alerts"][0]["annotations"]["description"].as_str().unwrap();
        for says in [
            "failure_rate",
            "failures=11",
            "rate_percent=55.0",
            "breakerbox replay --db /var/lib/breakerbox/log.db --service stripe/charges.create",
            "http://breakerbox.internal:8080/",
        ] {
            assert!(description.contains(says), "{says} in {description}");
        }
        golden(file, &p);
    }
    let test = payload::render(
        WebhookFormat::Alertmanager,
        &Notice::test(T0),
        "oncall",
        &Links::default(),
    );
    assert_alertmanager_v4(&test);
    assert_eq!(test["alerts"][0]["labels"]["alertname"], "CircuitBreakerTest");
}

#[test]
fn slack_payloads_have_text_and_blocks_within_limits_and_match_their_fixtures() {
    for (status, file) in [
        (AlertStatus::Firing, "slack.firing.json"),
        (AlertStatus::Resolved, "slack.resolved.json"),
    ] {
        let p = payload::render(WebhookFormat::Slack, &sample(status), "chat", &links());
        assert_slack(&p);
        golden(file, &p);
    }
    assert_slack(&payload::slack(&Notice::test(T0), &Links::default()));
    // Operator text is escaped and cut to Slack's limits.
    let mut n = sample(AlertStatus::Firing);
    n.breaker = "x".repeat(400);
    n.opened_to = State::ForcedOpen;
    n.reason = Reason::ForceOpen;
    n.opened_by = Some(Operator {
        who: "<script>".into(),
        from: "cli".into(),
        why: "a & b ".repeat(1_000),
    });
    let p = payload::slack(&n, &links());
    assert_slack(&p);
    assert!(!p.to_string().contains("<script>"));
}

#[test]
fn alert_delivery_events_keep_their_golden_bytes() {
    let record = AlertDelivery {
        at_ms: T0 + 2_000,
        breaker: "stripe".into(),
        status: AlertStatus::Firing,
        sink: "oncall".into(),
        fingerprint: fingerprint("stripe", T0),
        episode_start_ms: T0,
        attempt: 2,
        outcome: DeliveryOutcome::Retrying,
        status_code: Some(503),
        error: None,
        next_attempt_ms: Some(T0 + 4_000),
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events/alert_delivery.v1.msgpack");
    let bytes = rmp_serde::to_vec_named(&record).unwrap();
    if std::env::var_os("BREAKERBOX_WRITE_FIXTURES").is_some() && !path.exists() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let golden = std::fs::read(&path).unwrap();
    assert_eq!(rmp_serde::from_slice::<AlertDelivery>(&golden).unwrap(), record);
    assert_eq!(
        bytes, golden,
        "the encoding changed: bump the version of {ALERT_DELIVERY}"
    );
    assert!(!golden.windows(4).any(|w| w == b"http"), "no URL in a record");
}

// ---------------------------------------------------------------------------------------------
// Configuration.

#[test]
fn webhooks_default_to_alertmanager_and_their_urls_are_secrets() {
    let c = load(
        "[alerts]\nquiet_period = \"30s\"\ndashboard_url = \"http://dash:8080/\"\nrate_limit = 5\n\
         [[alerts.webhooks]]\nname = \"oncall\"\nurl = \"http://relay:9000/hooks/T0KEN-s3cret\"\n\
         [[alerts.webhooks]]\nname = \"chat\"\nurl = \"http://relay:9000/slack/T0KEN-s3cret\"\nformat = \"slack\"\nrate_limit = 60\n",
    )
    .unwrap();
    let a = &c.alerts;
    assert!(a.enabled());
    assert_eq!(a.quiet_period_ms, 30_000);
    assert_eq!(a.dashboard_url.as_deref(), Some("http://dash:8080/"));
    assert_eq!(a.webhooks[0].format, WebhookFormat::Alertmanager);
    assert_eq!(a.webhooks[1].format, WebhookFormat::Slack);
    assert_eq!(
        (a.webhooks[0].rate_limit_per_minute, a.webhooks[1].rate_limit_per_minute),
        (5, 60)
    );
    assert_eq!(a.webhooks[0].url, Secret::new("http://relay:9000/hooks/T0KEN-s3cret"));
    assert_eq!(a.webhooks[1].source.to_string(), "alerts.toml:8");
    let shown = format!("{c:?} {}", serde_json::to_string(&c.alerts).unwrap());
    assert!(!shown.contains(TOKEN) && shown.contains("***"), "{shown}");
    assert!(!load("").unwrap().alerts.enabled(), "no sinks, no notifier");
}

#[test]
fn every_problem_in_the_alerts_section_is_reported_with_its_line_and_never_the_url() {
    let err = load(
        "[alerts]\nquiet_period = \"soon\"\nmax_backof = \"1m\"\n\
         [[alerts.webhooks]]\nname = \"oncall\"\nurl = \"ftp://T0KEN-s3cret@relay/x\"\nformat = \"pagerduty\"\n\
         [[alerts.webhooks]]\nname = \"oncall\"\nurl = \"https://hooks.slack.com/services/T0KEN-s3cret\"\nformat = \"slak\"\n\
         [[alerts.webhooks]]\nurl = \"not a url T0KEN-s3cret\"\nrate_limit = 0\n",
    )
    .unwrap_err();
    let lines: Vec<&str> = err.lines().collect();
    let expect = [
        "alerts.toml:2: alerts.quiet_period: invalid duration \"soon\"",
        "alerts.toml:3: unknown key alerts.max_backof (did you mean \"max_backoff\"?)",
        "alerts.toml:6: alerts.webhooks[0].url: *** has scheme \"ftp\"",
        "alerts.toml:7: alerts.webhooks[0].format: unknown format \"pagerduty\"",
        "alerts.toml:9: alerts.webhooks[1].name \"oncall\" is already the name of the sink defined at alerts.toml:4",
        "alerts.toml:11: alerts.webhooks[1].format: unknown format \"slak\" (did you mean \"slack\"?)",
        "alerts.toml:12: alerts.webhooks[2]: a webhook needs a name",
        "alerts.toml:13: alerts.webhooks[2].url: *** is not a URL",
        "alerts.toml:14: alerts.webhooks[2].rate_limit = 0 must be from 1 to 6000",
    ];
    for e in expect {
        assert!(lines.iter().any(|l| l.starts_with(e)), "missing {e:?} in:\n{err}");
    }
    assert_eq!(lines.len(), expect.len(), "{err}");
    assert!(!err.contains(TOKEN), "a URL is never repeated: {err}");
}

// ---------------------------------------------------------------------------------------------
// The command line.

fn breakerbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .env_remove("CIRCUIT_BREAKER_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn alerts_test_sends_to_each_sink_reports_the_outcome_and_refuses_an_unknown_sink() {
    let ok = Receiver::start(vec![]);
    let down = Receiver::start(vec![]);
    down.set_default(500);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[alerts.webhooks]]\nname = \"oncall\"\nurl = \"{}\"\n[[alerts.webhooks]]\nname = \"chat\"\nurl = \"{}\"\nformat = \"slack\"\n",
            ok.url(),
            down.url()
        ),
    )
    .unwrap();
    let db = dir.path().join("log.db");
    let (cfg, db) = (cfg.to_str().unwrap(), db.to_str().unwrap());
    // A log to record in.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        Journal::open(Path::new(db), JournalOptions::default())
            .await
            .unwrap()
            .close()
            .await;
    });

    let one = breakerbox(&["alerts", "test", "--sink", "oncall", "--config", cfg, "--db", db]);
    assert_eq!(one.status.code(), Some(0), "{}", String::from_utf8_lossy(&one.stderr));
    let stdout = String::from_utf8_lossy(&one.stdout);
    assert!(
        stdout.starts_with("oncall (alertmanager): delivered, HTTP 200"),
        "{stdout}"
    );
    assert_eq!(
        ok.accepted()[0]["alerts"][0]["labels"]["alertname"],
        "CircuitBreakerTest"
    );
    assert!(down.got().is_empty(), "--sink sends to that sink only");

    let all = breakerbox(&["alerts", "test", "--config", cfg, "--db", db]);
    assert_eq!(all.status.code(), Some(1), "a sink that did not take it is a failure");
    let stdout = String::from_utf8_lossy(&all.stdout);
    assert!(
        stdout.contains("chat (slack): NOT delivered: the sink answered HTTP 500"),
        "{stdout}"
    );
    assert!(down.accepted().is_empty() && down.got()[0].body["blocks"].is_array());

    let unknown = breakerbox(&["alerts", "test", "--sink", "pager", "--config", cfg]);
    assert_eq!(unknown.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unknown sink \"pager\"") && stderr.contains("oncall, chat"),
        "{stderr}"
    );

    let audit = breakerbox(&["audit", "--kind", "alert", "--format", "json", "--db", db]);
    let text = String::from_utf8_lossy(&audit.stdout);
    assert_eq!(
        text.matches("\"test\"").count(),
        3,
        "three test messages recorded: {text}"
    );

    // With --json: one document of every sink's answer (no log here: nothing recorded).
    let nowhere = std::path::Path::new(db).with_file_name("not-there.db");
    let json = breakerbox(&[
        "alerts",
        "test",
        "--json",
        "--config",
        cfg,
        "--db",
        nowhere.to_str().unwrap(),
    ]);
    assert_eq!(json.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&json.stdout).expect("alerts test --json prints one JSON document");
    let delivered: Vec<bool> = doc["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["delivered"].as_bool().unwrap())
        .collect();
    assert_eq!(delivered, [true, false], "{doc}");

    let shown = breakerbox(&["config", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&shown.stdout);
    assert!(
        stdout.contains("webhook oncall") && stdout.contains("url ***"),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN));
    let json = breakerbox(&["config", "--config", cfg, "--json"]);
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["alerts"]["webhooks"][1]["url"], "***");

    let none = breakerbox(&["alerts", "test"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no alert sinks are configured"));
}

#[tokio::test]
async fn given_a_message_waiting_for_a_retry_then_the_sinks_newer_messages_wait_behind_it() {
    // The sink fails the first request, then works.
    let rx = Receiver::start(vec![reply(500)]);
    let cfg = config("", &[("oncall", &rx.url(), "alertmanager")]);
    let mut s = setup(&cfg).await;
    open_breaker(&s.journal, "stripe", T0).await;
    // stripe's firing is tried and fails: it waits 0.5–1 s for its retry.
    s.notifier.pump(T0).await.unwrap();
    // Meanwhile calcom opens: its firing must not overtake stripe's at the down sink.
    open_breaker(&s.journal, "calcom", T0 + 10).await;
    s.notifier.pump(T0 + 20).await.unwrap();
    assert_eq!(
        rx.got().len(),
        1,
        "nothing more sent to the sink while its oldest message waits"
    );
    // Once the retry is due, both go, in order.
    for step in 1..=3 {
        s.notifier.pump(T0 + step * MIN).await.unwrap();
    }
    let services: Vec<String> = rx
        .got()
        .iter()
        .map(|g| {
            g.body["alerts"][0]["labels"]["service"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(services, ["stripe", "stripe", "calcom"]);
}

#[tokio::test]
async fn given_an_outbox_message_that_does_not_decode_then_it_is_abandoned_and_the_sink_moves_on() {
    use sqlx::ConnectOptions;
    let rx = Receiver::start(vec![]);
    let cfg = config("", &[("oncall", &rx.url(), "alertmanager")]);
    let mut s = setup(&cfg).await;
    // A message written by a version whose notice this one cannot read, oldest in the queue.
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&s.db)
        .connect()
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO alert_outbox (sink, fingerprint, status, breaker, episode_start_ms, notice, created_ms, next_attempt_ms)
         VALUES ('oncall', 'ffffffffffffffff', 'firing', 'paypal', 0, x'c1c1c1', 0, 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    drop(conn);
    open_breaker(&s.journal, "stripe", T0).await;
    for step in 0..3 {
        s.notifier.pump(T0 + step * MIN).await.unwrap();
    }
    // stripe's firing went out; the unreadable one is given up, not pending forever.
    assert_eq!(rx.accepted().len(), 1);
    assert_eq!(rx.accepted()[0]["alerts"][0]["labels"]["service"], "stripe");
    let state: (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM alert_outbox WHERE fingerprint = 'ffffffffffffffff'")
            .fetch_one(
                &mut sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&s.db)
                    .connect()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
    assert_eq!(state.0, "abandoned");
    assert!(state.1.unwrap().contains("does not decode"));
}
