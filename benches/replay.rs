//! Replay and projections in one criterion run: the metrics projection's rebuild, the health of
//! every breaker from it, and one breaker's state at an instant of a 24-hour log.
//!
//! Groups (one table in `docs/performance.md`):
//!
//! - `rebuild/*`: `Projection::rebuild(&journal, 10_000)` over 10 breakers' 24 hours (5,000,000
//!   outcomes) as the journal packs calls submitted in bulk (`packed`), and over the same traffic
//!   written one call per row (`one_call_per_row`: what the writer makes of ~6 calls/s per
//!   breaker, every group commit closing a stream's batch; 500,000 outcomes, 2.4 hours), and
//!   over the packed log's traffic as the live system writes it with the actor's 1 s
//!   `outcome_hold` (`held_1s`: a breaker's calls of up to a second share a row). Beside
//!   each: the `read_after` pages alone, and the pages plus `decode` alone. Outcomes per second.
//! - `health_all/*`: `Projection::health_all` of 100 breakers at the end of a 24-hour log of
//!   10,000,000 outcomes, the projection caught up beforehand.
//! - `state_at/*`: `replay::state_at` at a random instant (a new one every iteration) of one
//!   breaker's log at 100 calls/s: 24 hours packed (8,640,000 outcomes), and one call per row
//!   (what live traffic at that rate gave before the actor's `outcome_hold`) over 1 hour (360,000)
//!   and over 24 hours (8,640,000), and as the live system writes it now (`held_1s_24h`).
//!   Beside it, on the first two: `replay::history` alone, and the whole-stream fold `state_at`
//!   was before it read a bounded stretch (`whole_fold`, the reference it is checked equal to
//!   before anything is timed; on the 24-hour one-call-per-row log only those checks time it).
//!
//! Traffic comes from real breakers (`consecutive(5, 30 s)`) on a fake clock: calls spread evenly
//! over the span, latencies of a few ms (up to 250 ms when the breaker's calls are far apart),
//! 2 % failures, 0.5 % timeouts, and 5 failures in a row every `burst` calls of a breaker, which
//! open it (then HALF_OPEN, then CLOSED). A snapshot every 10,000 events of a breaker, as the
//! actor writes them (`snapshot_every`). No `call_stats` rows.
//!
//! Logs are built once per run, on first use, in a temp dir, outside the timed loops; build times
//! and sizes are printed (lines starting `replay-bench:`). Without `--bench` (criterion's test
//! mode, `cargo test --all-targets`) every size is tiny.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakerbox::breaker::codec;
use breakerbox::breaker::{Breaker, Decision, Event, Outcome, Policy, State, View};
use breakerbox::journal::{Body, CALL_BATCH, CallBatch, Decoded, Durability, Journal, Row, SNAPSHOT, VERSION, decode};
use breakerbox::replay::{self, Item, Projection, StateAt};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sqlx::{Connection, Executor};
use tokio::runtime::Runtime;

mod support;
use support::{append_raw, file_bytes, open, raw_log, runtime};

/// How big each case is: real sizes under `cargo bench`, tiny ones in criterion's test mode.
struct Sizes {
    /// How long the big logs span (ms).
    span_ms: u64,
    /// Outcomes in the packed rebuild log (10 breakers over `span_ms`).
    rebuild: u64,
    /// Outcomes in the one-call-per-row rebuild log (same breakers, same rate, shorter span).
    rebuild_sparse: u64,
    /// Outcomes in the health log (100 breakers over `span_ms`).
    health: u64,
    /// Calls per second of the breaker replayed by `state_at`.
    state_rate: u64,
    /// Span of the one-call-per-row `state_at` log (ms).
    live_span_ms: u64,
    /// Events of a breaker between two snapshots.
    snapshot_every: u64,
}

fn sizes() -> Sizes {
    if std::env::args().any(|a| a == "--bench") {
        Sizes {
            span_ms: 24 * HOUR,
            rebuild: 5_000_000,
            rebuild_sparse: 500_000,
            health: 10_000_000,
            state_rate: 100,
            live_span_ms: HOUR,
            snapshot_every: 10_000,
        }
    } else {
        Sizes {
            span_ms: HOUR,
            rebuild: 20_000,
            rebuild_sparse: 2_000,
            health: 20_000,
            state_rate: 5,
            live_span_ms: 10 * MINUTE,
            snapshot_every: 500,
        }
    }
}

const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;
/// Start of every log (a minute boundary).
const T0: u64 = 1_764_000_000_000;
/// Events per page of the projection's catch-up (what `breakerbox rebuild` uses).
const PAGE: u32 = 10_000;
/// Latency budget of every breaker's health.
const BUDGET_MS: u64 = 1_000;
/// Breakers in the rebuild logs and in the health log.
const REBUILD_STREAMS: usize = 10;
const HEALTH_STREAMS: usize = 100;

fn policy() -> Policy {
    Policy::consecutive(5, 30_000)
}

fn file_mb(path: &Path) -> f64 {
    file_bytes(path) as f64 / 1e6
}

/// xorshift64*: deterministic, good enough for traffic and instants.
fn next(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

// ---------------------------------------------------------------------------------------------
// Traffic

struct Stream {
    name: Arc<str>,
    breaker: Breaker,
    /// Permitted calls so far.
    calls: u64,
    /// Events since the last snapshot.
    since_snapshot: u64,
}

/// Breakers called in turn, evenly over a span, on a fake clock.
struct Traffic {
    streams: Vec<Stream>,
    /// Microseconds between two call attempts (over all breakers).
    step_us: u64,
    /// Longest latency (ms): calls of a breaker never overlap.
    max_latency: u64,
    /// Every this many permitted calls of a breaker, 5 fail in a row.
    burst: u64,
    snapshot_every: u64,
    attempts: u64,
    outcomes: u64,
    transitions: u64,
    rejected: u64,
    snapshots: u64,
    /// Latest event time.
    last_ms: u64,
    rng: u64,
    events: Vec<Event>,
    /// Breaker 0's state at some instants (view at `t`, every event up to `t` folded), to check
    /// replay against: every `record_every` attempts, when it is CLOSED.
    record_every: Option<u64>,
    recorded: Vec<(u64, View)>,
}

impl Traffic {
    /// `outcomes` calls over `span_ms` on `streams` breakers.
    fn new(streams: usize, outcomes: u64, span_ms: u64, burst: u64, snapshot_every: u64) -> Self {
        let step_us = (span_ms * 1_000 / outcomes.max(1)).max(1);
        let interval_ms = step_us * streams as u64 / 1_000;
        assert!(interval_ms >= 2, "a breaker's calls must be at least 2 ms apart");
        Traffic {
            streams: (0..streams)
                .map(|i| Stream {
                    name: Arc::from(format!("svc-{i:03}")),
                    breaker: Breaker::new(policy()).expect("valid policy"),
                    calls: 0,
                    since_snapshot: 0,
                })
                .collect(),
            step_us,
            max_latency: (interval_ms - 1).min(250),
            burst,
            snapshot_every,
            attempts: 0,
            outcomes: 0,
            transitions: 0,
            rejected: 0,
            snapshots: 0,
            last_ms: T0,
            rng: 0x9E37_79B9_7F4A_7C15,
            events: Vec::with_capacity(8),
            record_every: None,
            recorded: Vec::new(),
        }
    }

    fn names(&self) -> Vec<Arc<str>> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    /// One call attempt on the next breaker; what it writes goes to `out` as (breaker, body).
    fn step(&mut self, out: &mut Vec<(usize, Body)>) {
        let n = self.streams.len() as u64;
        let i = (self.attempts % n) as usize;
        let t = T0 + self.attempts * self.step_us / 1_000;
        if i == 0
            && self.record_every.is_some_and(|k| self.attempts.is_multiple_of(k * n))
            && self.streams[0].breaker.state() == State::Closed
        {
            self.recorded.push((t - 1, self.streams[0].breaker.view(t - 1)));
        }
        self.attempts += 1;
        let r = next(&mut self.rng);
        let s = &mut self.streams[i];
        match s.breaker.acquire(t, &mut self.events) {
            Decision::Permit(permit) => {
                let in_burst = s.calls % self.burst < 5;
                s.calls += 1;
                let (outcome, latency) = if in_burst || r % 100 < 2 {
                    (Outcome::Failure, 1 + (r >> 8) % self.max_latency)
                } else if r % 200 == 2 {
                    (Outcome::Timeout, self.max_latency)
                } else {
                    (Outcome::Success, 1 + (r >> 8) % self.max_latency)
                };
                s.breaker.complete(t + latency, permit, outcome, &mut self.events);
            }
            Decision::Reject(_) => self.rejected += 1,
        }
        for e in self.events.drain(..) {
            match &e {
                Event::CallRecorded(_) => self.outcomes += 1,
                Event::Transitioned(_) => self.transitions += 1,
                _ => {}
            }
            self.last_ms = self.last_ms.max(e.at_ms());
            s.since_snapshot += 1;
            out.push((i, Body::Breaker(e)));
        }
        if s.since_snapshot >= self.snapshot_every {
            s.since_snapshot = 0;
            self.snapshots += 1;
            out.push((
                i,
                Body::Snapshot {
                    at_ms: self.last_ms,
                    breaker: Box::new(s.breaker.clone()),
                },
            ));
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} outcomes on {} breakers, {} transitions, {} snapshots, {} rejected attempts, {:.1} h",
            self.outcomes,
            self.streams.len(),
            self.transitions,
            self.snapshots,
            self.rejected,
            (self.last_ms - T0) as f64 / HOUR as f64
        )
    }
}

/// Records kept waiting in the journal's buffer at most (its capacity is 100,000: past it,
/// records would be dropped as a gap). The producer waits for commits past this.
const IN_FLIGHT: u64 = 50_000;

/// Writes `outcomes` calls of `traffic` through the journal, submitted in bulk: the writer packs
/// each breaker's consecutive calls of a commit into one `call_batch` row. Returns the rows.
async fn write_packed(path: &Path, traffic: &mut Traffic, outcomes: u64) -> u64 {
    let journal = open(path, Durability::Normal).await;
    let names = traffic.names();
    let mut out = Vec::new();
    while traffic.outcomes < outcomes {
        traffic.step(&mut out);
        for (i, body) in out.drain(..) {
            let last = journal
                .submit(&names[i], body)
                .expect("the buffer never fills: the producer waits for commits");
            if last.is_multiple_of(1_024) && last > IN_FLIGHT && journal.progress().ticket < last - IN_FLIGHT {
                journal.durable(last - IN_FLIGHT).await.expect("commit");
            }
        }
    }
    journal.flush().await.expect("flush");
    let rows = journal.stats().events.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(journal.stats().dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    journal.close().await;
    rows
}

/// The row of an event other than a call (calls go into `call_batch` rows, see `write_raw`), in
/// the journal's own row format.
fn row(stream: &Arc<str>, seq: u64, body: Body) -> Row {
    let (event_type, event_version, recorded_at, payload) = match body {
        Body::Breaker(e) => {
            let encoded = codec::encode(&e);
            (encoded.event_type, encoded.event_version, e.at_ms(), encoded.payload)
        }
        Body::Snapshot { at_ms, breaker } => {
            let payload = rmp_serde::to_vec_named(breaker.as_ref()).expect("a breaker encodes");
            (SNAPSHOT, VERSION, at_ms, payload)
        }
        Body::Other { .. } => unreachable!("the traffic writes breaker events and snapshots"),
    };
    Row {
        node: Arc::from("bench"),
        stream: stream.clone(),
        seq,
        event_type,
        event_version,
        recorded_at,
        payload,
    }
}

/// Writes `outcomes` calls of `traffic` as the live system does with an actor `outcome_hold` of
/// `hold_ms`: a breaker's calls share a row until the row's first call is `hold_ms` old, it holds
/// 1,000 calls, or the breaker logs anything else (a transition, a snapshot). `hold_ms` 1,000 is
/// today's default; 0 gives one call per row, what the writer made of light traffic before the
/// hold (every group commit closing a breaker's batch). Raw sqlx into the journal's schema,
/// 10,000 rows per transaction. Returns the rows.
async fn write_raw(path: &Path, traffic: &mut Traffic, outcomes: u64, hold_ms: u64) -> u64 {
    const CAP: u32 = 1_000;
    let mut conn = raw_log(path, Durability::Normal).await;
    let names = traffic.names();
    let mut seqs = vec![0u64; names.len()];
    let mut open: Vec<Option<CallBatch>> = vec![None; names.len()];
    let mut out = Vec::new();
    let mut rows = Vec::with_capacity(10_000);
    let mut written = 0;
    let close = |i: usize, open: &mut Vec<Option<CallBatch>>, seqs: &mut Vec<u64>, rows: &mut Vec<Row>| {
        if let Some(b) = open[i].take() {
            seqs[i] += 1;
            rows.push(Row {
                node: Arc::from("bench"),
                stream: names[i].clone(),
                seq: seqs[i],
                event_type: CALL_BATCH,
                event_version: VERSION,
                recorded_at: b.at_ms,
                payload: rmp_serde::to_vec_named(&b).expect("a batch encodes"),
            });
        }
    };
    while traffic.outcomes < outcomes {
        traffic.step(&mut out);
        for (i, body) in out.drain(..) {
            match body {
                Body::Breaker(Event::CallRecorded(call)) => {
                    if open[i]
                        .as_ref()
                        .is_some_and(|b| call.at_ms >= b.at_ms + hold_ms || b.count >= CAP)
                    {
                        close(i, &mut open, &mut seqs, &mut rows);
                    }
                    let b = open[i].get_or_insert_with(|| CallBatch::new(call.at_ms));
                    if !b.push(&call) {
                        close(i, &mut open, &mut seqs, &mut rows);
                        let b = open[i].insert(CallBatch::new(call.at_ms));
                        assert!(b.push(&call));
                    }
                }
                other => {
                    close(i, &mut open, &mut seqs, &mut rows);
                    seqs[i] += 1;
                    rows.push(row(&names[i], seqs[i], other));
                }
            }
        }
        if rows.len() >= 10_000 {
            append_raw(&mut conn, &rows).await;
            written += rows.len() as u64;
            rows.clear();
        }
    }
    for i in 0..names.len() {
        close(i, &mut open, &mut seqs, &mut rows);
    }
    append_raw(&mut conn, &rows).await;
    written += rows.len() as u64;
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .expect("checkpoint");
    conn.close().await.expect("close");
    written
}

/// A log on disk, with what is known about it.
struct Log {
    _dir: tempfile::TempDir,
    path: PathBuf,
    names: Vec<Arc<str>>,
    outcomes: u64,
    /// Latest event time.
    end_ms: u64,
    /// Breaker 0's view at some instants, to check replay against.
    recorded: Vec<(u64, View)>,
}

#[derive(Clone, Copy)]
enum Layout {
    Packed,
    OneCallPerRow,
    /// The live layout with the actor's 1 s `outcome_hold`.
    Held,
}

fn build(rt: &Runtime, name: &str, layout: Layout, mut traffic: Traffic, outcomes: u64) -> Log {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("{name}.db"));
    let started = Instant::now();
    let rows = rt.block_on(async {
        match layout {
            Layout::Packed => write_packed(&path, &mut traffic, outcomes).await,
            Layout::OneCallPerRow => write_raw(&path, &mut traffic, outcomes, 0).await,
            Layout::Held => write_raw(&path, &mut traffic, outcomes, 1_000).await,
        }
    });
    eprintln!(
        "replay-bench: log `{name}`: {}; {rows} rows ({:.0} calls per row), written {} in {:.1} s; {:.0} MB",
        traffic.summary(),
        traffic.outcomes as f64 / rows as f64,
        match layout {
            Layout::Packed => "through the journal (NORMAL)",
            Layout::OneCallPerRow | Layout::Held => "raw",
        },
        started.elapsed().as_secs_f64(),
        file_mb(&path),
    );
    Log {
        _dir: dir,
        path,
        names: traffic.names(),
        outcomes: traffic.outcomes,
        end_ms: traffic.last_ms,
        recorded: std::mem::take(&mut traffic.recorded),
    }
}

// ---------------------------------------------------------------------------------------------
// rebuild/*

/// Every event of the log, in pages of [`PAGE`] as the projection reads them; with `decode`,
/// decoded too. Returns the calls seen (when decoded) or the rows.
async fn read_log(journal: &Journal, decoded: bool) -> u64 {
    let mut position = 0;
    let mut n = 0u64;
    loop {
        let page = journal.read_after(position, PAGE).await.expect("read");
        let Some(last) = page.last() else { break };
        position = last.position;
        if decoded {
            for e in &page {
                if let Decoded::Breaker(events) = decode(e).expect("decodes") {
                    n += events.iter().filter(|e| matches!(e, Event::CallRecorded(_))).count() as u64;
                }
            }
        } else {
            n += page.len() as u64;
        }
        black_box(&page);
    }
    n
}

struct Opened {
    log: Log,
    journal: Journal,
    projection: Projection,
}

fn open_log(rt: &Runtime, log: Log) -> Opened {
    rt.block_on(async {
        let journal = open(&log.path, Durability::Full).await;
        let projection = Projection::open(&journal);
        Opened {
            log,
            journal,
            projection,
        }
    })
}

fn close(rt: &Runtime, opened: Option<Opened>) {
    if let Some(o) = opened {
        rt.block_on(async {
            o.journal.close().await;
        });
    }
}

/// A rebuild log, built and opened on first use.
struct RebuildSetup {
    layout: Layout,
    name: &'static str,
    outcomes: u64,
    span: u64,
    snapshot_every: u64,
}

impl RebuildSetup {
    fn get<'a>(&self, rt: &Runtime, opened: &'a mut Option<Opened>) -> &'a mut Opened {
        opened.get_or_insert_with(|| {
            let name = self.name;
            // 10 breakers at ~6 calls/s each; each opens every 50,000 of its calls.
            let traffic = Traffic::new(REBUILD_STREAMS, self.outcomes, self.span, 50_000, self.snapshot_every);
            let log = build(rt, &format!("rebuild_{name}"), self.layout, traffic, self.outcomes);
            let mut o = open_log(rt, log);
            // Once, untimed: it folds every outcome, and how long a first rebuild takes.
            let started = Instant::now();
            let done = rt.block_on(o.projection.rebuild(&o.journal, PAGE)).expect("rebuild");
            let took = started.elapsed();
            assert_eq!(done.calls, o.log.outcomes);
            let minutes = rt.block_on(o.projection.dump()).expect("dump").len();
            eprintln!(
                "replay-bench: rebuild/{name}: {} events, {} calls, {minutes} minute rows; first rebuild {:.2} s",
                done.events,
                done.calls,
                took.as_secs_f64()
            );
            o
        })
    }
}

fn rebuild(c: &mut Criterion) {
    let sizes = sizes();
    let rt = runtime();
    let mut group = c.benchmark_group("rebuild");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let sparse_span = sizes.span_ms * sizes.rebuild_sparse / sizes.rebuild;
    for (layout, name, outcomes, span) in [
        (Layout::Packed, "packed", sizes.rebuild, sizes.span_ms),
        (Layout::Held, "held_1s", sizes.rebuild, sizes.span_ms),
        (
            Layout::OneCallPerRow,
            "one_call_per_row",
            sizes.rebuild_sparse,
            sparse_span,
        ),
    ] {
        // Built on first use, so a filter that skips these cases skips the build too.
        let mut opened: Option<Opened> = None;
        let setup = RebuildSetup {
            layout,
            name,
            outcomes,
            span,
            snapshot_every: sizes.snapshot_every,
        };
        group.throughput(Throughput::Elements(outcomes));
        group.bench_function(name, |b| {
            let o = setup.get(&rt, &mut opened);
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(o.projection.rebuild(&o.journal, PAGE).await.expect("rebuild"));
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(format!("reads_only/{name}"), |b| {
            let o = setup.get(&rt, &mut opened);
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(read_log(&o.journal, false).await);
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(format!("reads_and_decode_only/{name}"), |b| {
            let o = setup.get(&rt, &mut opened);
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let calls = read_log(&o.journal, true).await;
                        assert_eq!(calls, o.log.outcomes);
                    }
                    start.elapsed()
                })
            })
        });
        close(&rt, opened.take());
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// health_all/*

fn health_all(c: &mut Criterion) {
    let sizes = sizes();
    let rt = runtime();
    let mut group = c.benchmark_group("health_all");
    group
        .sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let mut opened: Option<(Opened, replay::HealthInputs, u64)> = None;
    group.bench_function("100_breakers_10m_outcomes", |b| {
        let (o, budgets, at_ms) = opened.get_or_insert_with(|| {
            // 100 breakers at ~1.2 calls/s each; each opens every 20,000 of its calls.
            let traffic = Traffic::new(
                HEALTH_STREAMS,
                sizes.health,
                sizes.span_ms,
                20_000,
                sizes.snapshot_every,
            );
            let log = build(&rt, "health", Layout::Packed, traffic, sizes.health);
            let mut o = open_log(&rt, log);
            let started = Instant::now();
            let done = rt.block_on(o.projection.catch_up(&o.journal, PAGE)).expect("catch up");
            assert_eq!(done.calls, o.log.outcomes);
            eprintln!(
                "replay-bench: health: projection caught up from scratch in {:.2} s ({} events, {} calls)",
                started.elapsed().as_secs_f64(),
                done.events,
                done.calls
            );
            let at_ms = o.log.end_ms + 1;
            // Each breaker's budget and the state it is in then (which caps its score).
            let budgets: replay::HealthInputs = o
                .log
                .names
                .iter()
                .map(|n| {
                    let at = rt
                        .block_on(replay::state_at(&o.journal, n, at_ms, &policy(), BUDGET_MS))
                        .expect("state_at");
                    (n.to_string(), (BUDGET_MS, at.view.state))
                })
                .collect();
            // Once: the projection's health equals the one folded from each breaker's history.
            let all = rt
                .block_on(o.projection.health_all(&o.journal, &budgets, at_ms))
                .expect("health");
            assert_eq!(all.len(), HEALTH_STREAMS);
            for name in o.log.names.iter().step_by(33) {
                let state = rt
                    .block_on(replay::state_at(&o.journal, name, at_ms, &policy(), BUDGET_MS))
                    .expect("state_at");
                assert_eq!(all[&**name], state.health, "{name}");
            }
            let scores: Vec<u8> = all.values().map(|h| h.score).collect();
            eprintln!(
                "replay-bench: health: scores from {} to {}, {} breakers opened in the last hour",
                scores.iter().min().expect("100"),
                scores.iter().max().expect("100"),
                all.values().filter(|h| h.stability.points < 15.0).count()
            );
            (o, budgets, at_ms)
        });
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(
                        o.projection
                            .health_all(&o.journal, budgets, *at_ms)
                            .await
                            .expect("health"),
                    );
                }
                start.elapsed()
            })
        })
    });
    close(&rt, opened.take().map(|(o, _, _)| o));
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// state_at/*

/// The reference: `state_at` as it was before it read a bounded stretch of the stream — the
/// whole stream read (`replay::history`) and folded. Checked equal to `state_at` before anything
/// is timed; timed beside it as the "before" figure.
async fn whole_fold(journal: &Journal, stream: &str, at_ms: u64, fallback: &Policy, latency_budget_ms: u64) -> StateAt {
    let entries = replay::history(journal, stream).await.expect("history");
    let breaker = replay::fold(&entries, Some(at_ms), fallback);
    let view = breaker.view(at_ms);
    let all = replay::transitions(&entries, 0, at_ms.saturating_add(1));
    StateAt {
        stream: stream.to_owned(),
        at_ms,
        open_remaining_ms: view.open_until_ms.map(|u| u.saturating_sub(at_ms)),
        health: replay::health(
            &replay::minutes(&entries, at_ms),
            &all,
            at_ms,
            latency_budget_ms,
            view.state,
        ),
        view,
        policy: breaker.policy().clone(),
        last_transition: all.last().cloned(),
        compacted: entries.iter().any(|e| matches!(e.item, Item::Summary(_))),
        damaged: replay::damaged(&entries),
    }
}

fn same(a: &StateAt, b: &StateAt) -> bool {
    a.view == b.view
        && a.open_remaining_ms == b.open_remaining_ms
        && a.policy == b.policy
        && a.last_transition == b.last_transition
        && a.compacted == b.compacted
        && a.health == b.health
}

/// A one-breaker log, opened, with a source of random instants inside it.
struct StateLog {
    log: Log,
    journal: Journal,
    rng: u64,
}

impl StateLog {
    fn instant(&mut self) -> u64 {
        T0 + next(&mut self.rng) % (self.log.end_ms - T0)
    }
}

/// Runs `f` at `iters` random instants of the log, a new one each time, timing `f` alone.
fn at_random_instants(rt: &Runtime, s: &mut StateLog, iters: u64, f: impl AsyncFn(&Journal, u64)) -> Duration {
    rt.block_on(async {
        let mut elapsed = Duration::ZERO;
        for _ in 0..iters {
            let at = s.instant();
            let start = Instant::now();
            f(&s.journal, at).await;
            elapsed += start.elapsed();
        }
        elapsed
    })
}

/// One `state_at/*` case: a log of one breaker at `rate` calls/s over `span_ms`, and how many
/// random instants to check against the whole-stream fold (which costs ~1.3 s per hour of log
/// written one call per row).
struct StateCase {
    name: &'static str,
    layout: Layout,
    span_ms: u64,
    checks: usize,
    /// Also time `history` and the whole-stream fold (too slow on the 24-hour one-call-per-row log:
    /// ~30 s per iteration; their cost there comes from the checks).
    references: bool,
}

fn state_log(rt: &Runtime, case: &StateCase, rate: u64, snapshot_every: u64) -> StateLog {
    let outcomes = rate * case.span_ms / 1_000;
    // Opens every 200,000 calls (~33 min at 100 calls/s), 30 s each.
    let mut traffic = Traffic::new(1, outcomes, case.span_ms, 200_000, snapshot_every);
    traffic.record_every = Some((outcomes / 6).max(1));
    let log = build(rt, case.name, case.layout, traffic, outcomes);
    let journal = rt.block_on(open(&log.path, Durability::Full));
    let mut s = StateLog {
        log,
        journal,
        rng: 0x2545_F491_4F6C_DD1D,
    };
    // Once: replay gives the live breaker back at the recorded instants, and equals the fold of
    // the whole stream at random instants and just after the end.
    let stream = s.log.names[0].clone();
    let recorded = s.log.recorded.clone();
    let mut bounded = Duration::ZERO;
    for (at, live) in &recorded {
        let started = Instant::now();
        let state = rt
            .block_on(replay::state_at(&s.journal, &stream, *at, &policy(), BUDGET_MS))
            .expect("state_at");
        bounded += started.elapsed();
        assert_eq!(&state.view, live, "replay at {at} gives the live breaker");
    }
    let mut instants: Vec<u64> = (1..case.checks).map(|_| s.instant()).collect();
    instants.push(s.log.end_ms + 1);
    let mut whole = Duration::ZERO;
    for at in &instants {
        let started = Instant::now();
        let state = rt
            .block_on(replay::state_at(&s.journal, &stream, *at, &policy(), BUDGET_MS))
            .expect("state_at");
        bounded += started.elapsed();
        let started = Instant::now();
        let reference = rt.block_on(whole_fold(&s.journal, &stream, *at, &policy(), BUDGET_MS));
        whole += started.elapsed();
        assert!(
            same(&state, &reference),
            "state_at equals the whole-stream fold at {at}"
        );
    }
    eprintln!(
        "replay-bench: state_at/{}: checked at {} instants against the live breaker and {} against the whole-stream \
         fold; mean state_at {:.1} ms, whole-stream fold {:.0} ms",
        case.name,
        recorded.len(),
        instants.len(),
        bounded.as_secs_f64() * 1e3 / (recorded.len() + instants.len()) as f64,
        whole.as_secs_f64() * 1e3 / instants.len() as f64,
    );
    s
}

fn state_at(c: &mut Criterion) {
    let sizes = sizes();
    let rt = runtime();
    let mut group = c.benchmark_group("state_at");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    let cases = [
        StateCase {
            name: "packed_24h",
            layout: Layout::Packed,
            span_ms: sizes.span_ms,
            checks: 6,
            references: true,
        },
        StateCase {
            name: "one_call_per_row_1h",
            layout: Layout::OneCallPerRow,
            span_ms: sizes.live_span_ms,
            checks: 6,
            references: true,
        },
        StateCase {
            name: "held_1s_24h",
            layout: Layout::Held,
            span_ms: sizes.span_ms,
            checks: 6,
            references: false,
        },
        StateCase {
            name: "one_call_per_row_24h",
            layout: Layout::OneCallPerRow,
            span_ms: sizes.span_ms,
            checks: 2,
            references: false,
        },
    ];
    for case in &cases {
        let name = case.name;
        let mut opened: Option<StateLog> = None;
        // Built on first use, so a filter that skips these cases skips the build too.
        let make = || state_log(&rt, case, sizes.state_rate, sizes.snapshot_every);
        group.bench_function(name, |b| {
            let s = opened.get_or_insert_with(&make);
            let stream = s.log.names[0].clone();
            b.iter_custom(|iters| {
                at_random_instants(&rt, s, iters, async |journal, at| {
                    black_box(
                        replay::state_at(journal, &stream, at, &policy(), BUDGET_MS)
                            .await
                            .expect("state_at"),
                    );
                })
            })
        });
        if case.references {
            group.bench_function(format!("history_only/{name}"), |b| {
                let s = opened.get_or_insert_with(&make);
                let stream = s.log.names[0].clone();
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            black_box(replay::history(&s.journal, &stream).await.expect("history"));
                        }
                        start.elapsed()
                    })
                })
            });
            group.bench_function(format!("whole_fold/{name}"), |b| {
                let s = opened.get_or_insert_with(&make);
                let stream = s.log.names[0].clone();
                b.iter_custom(|iters| {
                    at_random_instants(&rt, s, iters, async |journal, at| {
                        black_box(whole_fold(journal, &stream, at, &policy(), BUDGET_MS).await);
                    })
                })
            });
        }
        if let Some(s) = opened.take() {
            rt.block_on(s.journal.close());
        }
    }
    group.finish();
}

criterion_group!(benches, rebuild, health_all, state_at);
criterion_main!(benches);
