//! The journal (append-only SQLite event log) in one criterion run: appends, a raw sqlx baseline,
//! replay and start-up.
//!
//! Groups (one table each in `docs/performance.md`):
//!
//! - `outcomes/*`: per-call outcomes (`call_recorded`, packed by the writer into `call_batch`
//!   rows) submitted from real breakers on 3 streams, then `flush()`: outcomes per second,
//!   durable commit included. `full` and `normal` are the two `Durability` settings.
//! - `rows/*`: transitions, one row each, on 100 streams, through the journal (`journal`:
//!   submit, then `flush()`) beside a raw sqlx baseline in the same run (`raw_sqlx`: one
//!   `SqliteConnection` with the same pragmas, the same table, the same pre-encoded rows, the same
//!   batches: 10,000 rows per `BEGIN IMMEDIATE`/`COMMIT`, 4,000 per multi-row `INSERT`).
//! - `replay/*`: `recover` of one stream of ≥ 1,000,000 outcomes (with some OPEN episodes) and no
//!   snapshot, for three layouts of the same calls: as the journal packs them at full speed
//!   (`packed`), and 100 and 10 calls per row (what slower traffic gives: every group commit
//!   closes a stream's batch). Beside each: the reads alone (`read_stream` pages) and the
//!   decode + fold alone (on rows already in memory).
//! - `startup/*`: 100 streams in a log of 10,000,000 outcomes, each ending with a snapshot
//!   followed by a few hundred rows; `Journal::open` + `recover` of all 100, and each part alone.
//!   `open` after a clean close (the full `quick_check` runs in the background, later) and after
//!   an unclean one (`_unclean`: the clean-shutdown marker removed first, so `quick_check` runs in
//!   `open`, as it did on every open before). The `_cold` cases drop the file from the page cache
//!   before each iteration (`dd iflag=nocache count=0`, i.e. `posix_fadvise(DONTNEED)`), outside
//!   the clock.
//!
//! Logs are built once per run in a temp dir, outside the timed loops, and the build times and
//! file sizes are printed (lines starting `journal-bench:`). Without `--bench` (criterion's test
//! mode, `cargo test --all-targets`) every size is tiny. `BREAKERBOX_BENCH_STARTUP_OUTCOMES`
//! overrides the size of the start-up log.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use breakerbox::breaker::{Breaker, Decision, Event, Evidence, Outcome, Policy, Reason, State, Transition, codec};
use breakerbox::journal::{
    BackgroundCheck, Body, CALL_BATCH, CallBatch, Decoded, Durability, Integrity, Journal, JournalOptions, Row,
    StoredEvent, VERSION, connect_options, decode,
};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sqlx::{ConnectOptions, Connection, Executor};
use tokio::runtime::Runtime;

mod support;
use support::{append_raw, file_bytes, open, raw_log, runtime};

/// How big each case is: real sizes under `cargo bench`, tiny ones in criterion's test mode.
struct Sizes {
    /// Outcomes per iteration of `outcomes/*`.
    outcomes: u64,
    /// Rows per iteration of `rows/*`.
    rows: usize,
    /// Outcomes in the replayed stream.
    replay: u64,
    /// Outcomes in the start-up log, over all streams.
    startup: u64,
    /// Rows per stream after its last snapshot.
    tail: u64,
}

fn sizes() -> Sizes {
    if std::env::args().any(|a| a == "--bench") {
        Sizes {
            outcomes: 1_000_000,
            rows: 50_000,
            replay: 1_000_000,
            startup: std::env::var("BREAKERBOX_BENCH_STARTUP_OUTCOMES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000_000),
            tail: 300,
        }
    } else {
        Sizes {
            outcomes: 3_000,
            rows: 300,
            replay: 3_000,
            startup: 20_000,
            tail: 3,
        }
    }
}

/// The journal's defaults, as the bench relies on them.
const MAX_BATCH: usize = 10_000;
/// Streams in `rows/*` and `startup/*`.
const STREAMS: usize = 100;

/// Records kept waiting in the journal's buffer at most. Its capacity is 100,000 records: a
/// producer that outruns the disk for longer than that overflows it, and what overflows is
/// dropped and written as a gap. A bench producer runs flat out, so it waits for commits past this.
const IN_FLIGHT: u64 = 50_000;

/// Submits records, waiting for commits when more than [`IN_FLIGHT`] are pending.
struct Producer<'a> {
    journal: &'a Journal,
    last: u64,
}

impl<'a> Producer<'a> {
    fn new(journal: &'a Journal) -> Self {
        Producer { journal, last: 0 }
    }

    async fn submit(&mut self, stream: &Arc<str>, body: Body) {
        self.last = self
            .journal
            .submit(stream, body)
            .expect("the buffer never fills: the producer waits for commits");
        if self.last.is_multiple_of(1_024) && self.last > IN_FLIGHT {
            let behind = self.last - IN_FLIGHT;
            if self.journal.progress().ticket < behind {
                self.journal.durable(behind).await.expect("commit");
            }
        }
    }
}

/// Breakers on a fake clock, called in turn. Every call is permitted unless OPEN, completes
/// 2 ms after it starts and succeeds, except the first `failures` of every `burst` calls of a
/// stream, which fail: 5 in a row open a `consecutive(5, …)` breaker now and then.
struct Driver {
    streams: Vec<(Arc<str>, Breaker)>,
    now: u64,
    calls: u64,
    burst: u64,
    failures: u64,
    events: Vec<Event>,
    outcomes: u64,
    /// A copy of every event, when asked for.
    kept: Option<Vec<Event>>,
}

impl Driver {
    fn new(streams: usize, policy: &Policy, burst: u64, failures: u64) -> Self {
        Driver {
            streams: (0..streams)
                .map(|i| {
                    (
                        Arc::from(format!("svc-{i:03}")),
                        Breaker::new(policy.clone()).expect("valid policy"),
                    )
                })
                .collect(),
            now: 1_700_000_000_000,
            calls: 0,
            burst,
            failures,
            events: Vec::with_capacity(8),
            outcomes: 0,
            kept: None,
        }
    }

    /// One call attempt on the next stream; its events go to the journal. Returns the stream's
    /// index and how many events it submitted.
    async fn step(&mut self, producer: &mut Producer<'_>) -> (usize, u64) {
        let n = self.streams.len() as u64;
        let i = (self.calls % n) as usize;
        let failing = (self.calls / n) % self.burst < self.failures;
        self.calls += 1;
        self.now += 3;
        let (stream, breaker) = &mut self.streams[i];
        if let Decision::Permit(permit) = breaker.acquire(self.now, &mut self.events) {
            let outcome = if failing { Outcome::Failure } else { Outcome::Success };
            breaker.complete(self.now + 2, permit, outcome, &mut self.events);
        }
        let submitted = self.events.len() as u64;
        for e in self.events.drain(..) {
            self.outcomes += u64::from(matches!(e, Event::CallRecorded(_)));
            if let Some(kept) = &mut self.kept {
                kept.push(e.clone());
            }
            producer.submit(stream, Body::Breaker(e)).await;
        }
        (i, submitted)
    }
}

// ---------------------------------------------------------------------------------------------
// outcomes/*

fn outcomes(c: &mut Criterion) {
    let sizes = sizes();
    let rt = runtime();
    let mut group = c.benchmark_group("outcomes");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(sizes.outcomes));
    for (name, durability) in [("full", Durability::Full), ("normal", Durability::Normal)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("log.db");
        let journal = rt.block_on(open(&path, durability));
        // 1 call in 16 fails: never 5 in a row, so every event is a call outcome.
        let mut driver = Driver::new(3, &Policy::consecutive(5, 60_000), 16, 1);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let mut producer = Producer::new(&journal);
                        let before = driver.outcomes;
                        while driver.outcomes - before < sizes.outcomes {
                            driver.step(&mut producer).await;
                        }
                        journal.flush().await.expect("flush");
                        elapsed += start.elapsed();
                    }
                    elapsed
                })
            })
        });
        let stats = journal.stats();
        let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
        let calls = stats.calls.load(std::sync::atomic::Ordering::Relaxed);
        let events = stats.events.load(std::sync::atomic::Ordering::Relaxed);
        let commit_us = stats.commit_us_total.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(driver.outcomes, driver.calls, "every call permitted, no transitions");
        rt.block_on(journal.close());
        if calls == 0 {
            continue; // filtered out
        }
        eprintln!(
            "journal-bench: outcomes/{name}: {calls} calls in {events} rows, {commits} commits, mean commit {:.0} µs \
             ({:.1} µs per 10,000 calls), file {:.2} MB per million outcomes",
            commit_us as f64 / commits.max(1) as f64,
            commit_us as f64 / calls.max(1) as f64 * 10_000.0,
            file_bytes(&path) as f64 / calls.max(1) as f64,
        );
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// rows/*

/// A CLOSED → OPEN transition as the core emits it (boxed: the rare, large event).
fn transition(at_ms: u64, episode: u64) -> Event {
    Event::Transitioned(Box::new(Transition {
        at_ms,
        from: State::Closed,
        to: State::Open,
        episode,
        reason: Reason::ConsecutiveFailures,
        evidence: Evidence {
            failures: Some(5),
            threshold: Some(5.0),
            open_ms: Some(60_000),
            ..Evidence::default()
        },
        open_until_ms: Some(at_ms + 60_000),
    }))
}

fn rows(c: &mut Criterion) {
    let sizes = sizes();
    let n = sizes.rows;
    let rt = runtime();
    let streams: Vec<Arc<str>> = (0..STREAMS).map(|i| Arc::from(format!("svc-{i:03}"))).collect();
    let mut group = c.benchmark_group("rows");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .throughput(Throughput::Elements(n as u64));
    let payload_bytes = codec::encode(&transition(1_700_000_000_000, 1)).payload.len();

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.db");
    let journal = rt.block_on(open(&path, Durability::Full));
    let mut t = 1_700_000_000_000u64;
    group.bench_function("journal", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    // Built before the clock starts, as the baseline's rows are.
                    let bodies: Vec<Body> = (0..n)
                        .map(|i| {
                            t += 1;
                            Body::Breaker(transition(t, i as u64))
                        })
                        .collect();
                    let start = Instant::now();
                    let mut producer = Producer::new(&journal);
                    for (i, body) in bodies.into_iter().enumerate() {
                        producer.submit(&streams[i % STREAMS], body).await;
                    }
                    journal.flush().await.expect("flush");
                    elapsed += start.elapsed();
                }
                elapsed
            })
        })
    });
    let stats = journal.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let events = stats.events.load(std::sync::atomic::Ordering::Relaxed);
    let commit_us = stats.commit_us_total.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    rt.block_on(journal.close());
    if events > 0 {
        eprintln!(
            "journal-bench: rows/journal: {events} rows of {payload_bytes} payload bytes in {commits} commits \
             ({:.0} rows per commit), mean commit {:.0} µs",
            events as f64 / commits.max(1) as f64,
            commit_us as f64 / commits.max(1) as f64,
        );
    }

    let path = dir.path().join("raw.db");
    let mut conn = rt.block_on(raw_log(&path, Durability::Full));
    let mut seqs = [0u64; STREAMS];
    let mut t = 1_700_000_000_000u64;
    group.bench_function("raw_sqlx", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let rows: Vec<Row> = (0..n)
                        .map(|i| {
                            t += 1;
                            seqs[i % STREAMS] += 1;
                            let e = codec::encode(&transition(t, i as u64));
                            Row {
                                node: Arc::from("bench"),
                                stream: streams[i % STREAMS].clone(),
                                seq: seqs[i % STREAMS],
                                event_type: e.event_type,
                                event_version: e.event_version,
                                recorded_at: t,
                                payload: e.payload,
                            }
                        })
                        .collect();
                    let start = Instant::now();
                    for batch in rows.chunks(MAX_BATCH) {
                        append_raw(&mut conn, batch).await;
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            })
        })
    });
    rt.block_on(async { conn.close().await.expect("close") });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// replay/*

/// The replayed stream's policy: 5 failures in a row open it for 100 ms.
fn replay_policy() -> Policy {
    Policy::consecutive(5, 100)
}

/// Packs one stream's events as the writer does (consecutive outcomes into one `call_batch`,
/// anything else one row each), at most `per_row` calls per batch.
fn pack(stream: &Arc<str>, events: &[Event], per_row: u32, seq: &mut u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut batch: Option<CallBatch> = None;
    let flush = |batch: &mut Option<CallBatch>, rows: &mut Vec<Row>, seq: &mut u64| {
        if let Some(b) = batch.take() {
            *seq += 1;
            rows.push(Row {
                node: Arc::from("bench"),
                stream: stream.clone(),
                seq: *seq,
                event_type: CALL_BATCH,
                event_version: VERSION,
                recorded_at: b.at_ms,
                payload: rmp_serde::to_vec_named(&b).expect("a batch encodes"),
            });
        }
    };
    for e in events {
        match e {
            Event::CallRecorded(call) => {
                let b = batch.get_or_insert_with(|| CallBatch::new(call.at_ms));
                assert!(b.push(call));
                if b.count >= per_row {
                    flush(&mut batch, &mut rows, seq);
                }
            }
            other => {
                flush(&mut batch, &mut rows, seq);
                let encoded = codec::encode(other);
                *seq += 1;
                rows.push(Row {
                    node: Arc::from("bench"),
                    stream: stream.clone(),
                    seq: *seq,
                    event_type: encoded.event_type,
                    event_version: encoded.event_version,
                    recorded_at: other.at_ms(),
                    payload: encoded.payload,
                });
            }
        }
    }
    flush(&mut batch, &mut rows, seq);
    rows
}

/// One stream of `outcomes` calls, its rows laid out three ways.
struct ReplayLogs {
    _dir: tempfile::TempDir,
    /// (layout name, file, rows).
    logs: Vec<(&'static str, PathBuf, u64)>,
    /// The breaker as the calls left it, to check recovery against.
    expected: Breaker,
    outcomes: u64,
}

fn build_replay_logs(rt: &Runtime, outcomes: u64) -> ReplayLogs {
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut logs = Vec::new();
        // As the journal writes it at full speed.
        let started = Instant::now();
        let path = dir.path().join("packed.db");
        let journal = open(&path, Durability::Full).await;
        let mut driver = Driver::new(1, &replay_policy(), 20_000, 5);
        // Keep a copy of the events, to lay them out the other ways.
        driver.kept = Some(Vec::new());
        let mut producer = Producer::new(&journal);
        while driver.outcomes < outcomes {
            driver.step(&mut producer).await;
        }
        journal.flush().await.expect("flush");
        let rows = journal.stats().events.load(std::sync::atomic::Ordering::Relaxed);
        journal.close().await;
        let events = driver.kept.take().expect("kept");
        let transitions = events.iter().filter(|e| matches!(e, Event::Transitioned(_))).count();
        eprintln!(
            "journal-bench: replay log `packed`: {} outcomes, {transitions} transitions, {rows} rows, written \
             through the journal in {:.2} s, {:.2} MB per million outcomes",
            driver.outcomes,
            started.elapsed().as_secs_f64(),
            file_bytes(&path) as f64 / driver.outcomes as f64,
        );
        logs.push(("packed", path, rows));
        let (stream, expected) = driver.streams.pop().expect("one stream");
        for (name, per_row) in [("100_per_row", 100), ("10_per_row", 10)] {
            let started = Instant::now();
            let path = dir.path().join(format!("{name}.db"));
            let mut conn = raw_log(&path, Durability::Normal).await;
            let mut seq = 0;
            let rows = pack(&stream, &events, per_row, &mut seq);
            for batch in rows.chunks(MAX_BATCH) {
                append_raw(&mut conn, batch).await;
            }
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                .await
                .expect("checkpoint");
            conn.close().await.expect("close");
            eprintln!(
                "journal-bench: replay log `{name}`: {} rows, written raw in {:.2} s, {:.2} MB per million outcomes",
                rows.len(),
                started.elapsed().as_secs_f64(),
                file_bytes(&path) as f64 / driver.outcomes as f64,
            );
            logs.push((name, path, rows.len() as u64));
        }
        ReplayLogs {
            _dir: dir,
            logs,
            expected,
            outcomes: driver.outcomes,
        }
    })
}

/// Every row of a stream, in pages of 5,000 as `recover` reads them.
async fn read_all(journal: &Journal, stream: &str) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = journal.read_stream(stream, after, 5_000).await.expect("read");
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page);
    }
    out
}

/// What `recover` does with the rows once read: decode, fold.
fn decode_fold(rows: &[StoredEvent], mut breaker: Breaker) -> (Breaker, u64) {
    let mut folded = 0u64;
    for row in rows {
        if let Decoded::Breaker(events) = decode(row).expect("decodes") {
            for e in &events {
                breaker.apply(e);
            }
            folded += events.len() as u64;
        }
    }
    (breaker, folded)
}

fn replay(c: &mut Criterion) {
    let sizes = sizes();
    let rt = runtime();
    let logs = build_replay_logs(&rt, sizes.replay);
    let mut group = c.benchmark_group("replay");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for layout in ["packed", "100_per_row", "10_per_row"] {
        let (_, path, _) = logs.logs.iter().find(|(n, _, _)| *n == layout).expect("layout");
        let journal = rt.block_on(open(path, Durability::Full));
        let stream = "svc-000";
        // Check once that recovery gives the breaker back.
        let recovered = rt.block_on(journal.recover(stream, replay_policy())).expect("recover");
        assert_eq!(recovered.breaker, logs.expected);
        let folded = recovered.folded;
        let rows = rt.block_on(read_all(&journal, stream));
        group.throughput(Throughput::Elements(logs.outcomes));
        group.bench_function(format!("recover/{layout}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(journal.recover(stream, replay_policy()).await.expect("recover"));
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(format!("read_only/{layout}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(read_all(&journal, stream).await);
                    }
                    start.elapsed()
                })
            })
        });
        let fresh = Breaker::new(replay_policy()).expect("valid policy");
        group.bench_function(format!("decode_fold_only/{layout}"), |b| {
            b.iter(|| {
                let (breaker, n) = decode_fold(black_box(&rows), fresh.clone());
                debug_assert_eq!(n, folded);
                breaker
            })
        });
        eprintln!(
            "journal-bench: replay/{layout}: {} rows, {folded} events folded",
            rows.len()
        );
        rt.block_on(journal.close());
    }
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// startup/*

fn startup_policy() -> Policy {
    Policy::consecutive(5, 1_000)
}

struct StartupLog {
    _dir: tempfile::TempDir,
    path: PathBuf,
    names: Vec<Arc<str>>,
}

fn build_startup_log(rt: &Runtime, outcomes: u64, tail: u64) -> StartupLog {
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("startup.db");
        let started = Instant::now();
        let journal = open(&path, Durability::Full).await;
        let mut producer = Producer::new(&journal);
        // Each stream opens twice per 100,000 of its calls.
        let mut driver = Driver::new(STREAMS, &startup_policy(), 50_000, 5);
        while driver.outcomes < outcomes {
            driver.step(&mut producer).await;
        }
        journal.flush().await.expect("flush");
        let bulk = started.elapsed();
        let bulk_rows = journal.stats().events.load(std::sync::atomic::Ordering::Relaxed);
        // A recent snapshot per stream, then `tail` rows per stream: one call per stream per
        // commit, as light live traffic writes them.
        for (name, breaker) in &driver.streams {
            let body = Body::Snapshot {
                at_ms: driver.now,
                breaker: Box::new(breaker.clone()),
            };
            producer.submit(name, body).await;
        }
        let mut tail_events = vec![0u64; STREAMS];
        for _ in 0..tail {
            for _ in 0..STREAMS {
                let (i, submitted) = driver.step(&mut producer).await;
                tail_events[i] += submitted;
            }
            journal.flush().await.expect("flush");
        }
        let rows = journal.stats().events.load(std::sync::atomic::Ordering::Relaxed);
        journal.close().await;
        eprintln!(
            "journal-bench: startup log: {} outcomes on {STREAMS} streams, {bulk_rows} rows written through the \
             journal in {:.1} s; then snapshots and {tail} rows per stream: {rows} rows, {:.1} s in all; {:.0} MB \
             ({:.2} MB per million outcomes)",
            driver.outcomes,
            bulk.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            file_bytes(&path) as f64 / 1e6,
            file_bytes(&path) as f64 / driver.outcomes as f64,
        );
        // Check once: every breaker comes back from its snapshot and its tail.
        let journal = open(&path, Durability::Full).await;
        for (i, (name, breaker)) in driver.streams.iter().enumerate() {
            let r = journal.recover(name, startup_policy()).await.expect("recover");
            assert_eq!(&r.breaker, breaker);
            assert!(r.snapshot_seq.is_some());
            assert_eq!(r.folded, tail_events[i]);
        }
        journal.close().await;
        StartupLog {
            _dir: dir,
            path,
            names: driver.streams.into_iter().map(|(name, _)| name).collect(),
        }
    })
}

/// Removes the clean-shutdown marker beside the log, so the next open is an unclean one.
fn forget_clean_close(path: &Path) {
    let mut marker = path.as_os_str().to_owned();
    marker.push("-clean");
    let _ = std::fs::remove_file(PathBuf::from(marker));
}

/// Drops the log's pages from the page cache (`posix_fadvise(DONTNEED)` through GNU dd), so the
/// next open reads from disk. The journal's `close` has synced the file, so no page is dirty.
fn drop_from_page_cache(path: &Path) -> bool {
    let mut all = true;
    for suffix in ["", "-wal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let file = PathBuf::from(file);
        if !file.exists() {
            continue;
        }
        let mut arg = std::ffi::OsString::from("if=");
        arg.push(&file);
        all &= std::process::Command::new("dd")
            .arg(arg)
            .args(["iflag=nocache", "count=0", "status=none"])
            .status()
            .is_ok_and(|s| s.success());
    }
    all
}

async fn recover_all(journal: &Journal, names: &[Arc<str>]) -> Vec<Breaker> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(journal.recover(name, startup_policy()).await.expect("recover").breaker);
    }
    out
}

fn startup(c: &mut Criterion) {
    let sizes = sizes();
    let rt = runtime();
    // Built on first use, so a filter that skips this group skips the build too.
    let mut log: Option<StartupLog> = None;
    let get = |log: &mut Option<StartupLog>| -> PathBuf {
        log.get_or_insert_with(|| build_startup_log(&rt, sizes.startup, sizes.tail))
            .path
            .clone()
    };
    let mut group = c.benchmark_group("startup");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    // `open` (and `recover` of every stream), each iteration from a file left as the case says,
    // outside the clock: unclean = no clean-shutdown marker, so `open` runs the full
    // `quick_check`, as after a crash; cold = the file and its WAL dropped from the page cache.
    for (name, recover, unclean, cold) in [
        ("open_and_recover_100", true, false, false),
        ("open_only", false, false, false),
        ("open_only_unclean", false, true, false),
        ("open_and_recover_100_cold", true, false, true),
        ("open_and_recover_100_cold_unclean", true, true, true),
    ] {
        let path = get(&mut log);
        if cold && !drop_from_page_cache(&path) {
            eprintln!("journal-bench: cannot drop the log from the page cache (dd iflag=nocache): {name} skipped");
            continue;
        }
        let names = &log.as_ref().expect("built").names;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        if unclean {
                            forget_clean_close(&path);
                        }
                        if cold {
                            drop_from_page_cache(&path);
                        }
                        let start = Instant::now();
                        let journal = open(&path, Durability::Full).await;
                        if recover {
                            black_box(recover_all(&journal, names).await);
                        }
                        elapsed += start.elapsed();
                        journal.close().await;
                    }
                    elapsed
                })
            })
        });
    }
    group.bench_function("recover_100_only", |b| {
        let path = get(&mut log);
        let names = &log.as_ref().expect("built").names;
        let journal = rt.block_on(open(&path, Durability::Full));
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(recover_all(&journal, names).await);
                }
                start.elapsed()
            })
        });
        rt.block_on(journal.close());
    });
    // The background check after a clean open, start to verdict (delay 0, default pace: it
    // rests as long as it works). Cold only with BREAKERBOX_BENCH_COLD_CHECK set (~7 s each).
    let cold_check = std::env::var_os("BREAKERBOX_BENCH_COLD_CHECK").is_some();
    for (name, cold) in [("background_check", false), ("background_check_cold", true)] {
        if cold && !cold_check {
            continue;
        }
        let path = get(&mut log);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iters {
                        if cold {
                            drop_from_page_cache(&path);
                        }
                        let options = JournalOptions {
                            background_check: BackgroundCheck {
                                delay: Duration::ZERO,
                                ..BackgroundCheck::default()
                            },
                            ..JournalOptions::default()
                        };
                        let journal = Journal::open(&path, options).await.expect("open");
                        let start = Instant::now();
                        while journal.integrity() == Integrity::Checking {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        elapsed += start.elapsed();
                        assert_eq!(journal.integrity(), Integrity::Verified);
                        journal.close().await;
                    }
                    elapsed
                })
            })
        });
    }
    // What `open` runs first on the whole file, by itself.
    group.bench_function("quick_check_only", |b| {
        let path = get(&mut log);
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut conn = connect_options(&path, Durability::Full, Duration::from_secs(5))
                    .connect()
                    .await
                    .expect("connect");
                let start = Instant::now();
                for _ in 0..iters {
                    let check: Vec<(String,)> = sqlx::query_as("PRAGMA quick_check")
                        .fetch_all(&mut conn)
                        .await
                        .expect("check");
                    assert_eq!(check[0].0, "ok");
                }
                let elapsed = start.elapsed();
                conn.close().await.expect("close");
                elapsed
            })
        })
    });
    group.finish();
}

criterion_group!(benches, outcomes, rows, replay, startup);
criterion_main!(benches);
