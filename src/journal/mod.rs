//! The append-only SQLite event log.
//!
//! One writer thread owns the only write connection and group-commits what callers submit
//! ([`Journal::submit`] never blocks and never touches the disk); readers use their own pool.
//! [`Journal::durable`] / [`Journal::flush`] resolve once submitted events are committed. See
//! `docs/durability.md` for the contract.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
//! use breakerbox::journal::{Body, Journal, JournalOptions};
//! use std::sync::Arc;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let journal = Journal::open(&dir.path().join("log.db"), JournalOptions::default()).await.unwrap();
//! let stream: Arc<str> = Arc::from("stripe");
//! let mut breaker = Breaker::new(Policy::consecutive(3, 30_000)).unwrap();
//! let mut events = Vec::new();
//! for t in 0..3 {
//!     let Decision::Permit(p) = breaker.acquire(t, &mut events) else { unreachable!() };
//!     breaker.complete(t + 1, p, Outcome::Failure, &mut events);
//! }
//! let mut last = None;
//! for e in events.drain(..) {
//!     last = journal.submit(&stream, Body::Breaker(e));
//! }
//! journal.durable(last.unwrap()).await.unwrap();
//! // After a restart, the breaker comes back from the log exactly as it was.
//! let recovered = journal.recover("stripe", Policy::consecutive(3, 30_000)).await.unwrap();
//! assert_eq!(recovered.breaker, breaker);
//! journal.close().await;
//! # });
//! ```

pub mod fleet;
mod holder;
pub mod pg;
mod record;
mod store;
mod writer;

pub use holder::{Claim, DEFAULT_LEASE_TTL, Holder, Mark, Standing, host_name, user_name};
pub use record::{
    ALERT_DELIVERY, ALERTS_STREAM, AlertDelivery, AlertStatus, Body, CALL_BATCH, CALL_BATCH_VERSION, CALL_STATS,
    CALL_SUMMARY, CHAIN_ANCHOR, COMMAND_REFUSED, COMMAND_REQUEST, CallBatch, CallStats, CallSummary, ChainAnchor,
    CommandRefused, CommandRequest, Decoded, DeliveryOutcome, FLEET_ALERT, FLEET_ALERTS_STREAM, FleetAlert, GAP, Gap,
    JOURNAL_STREAM, LATENCY_BOUNDS_MS, MAX_REASON_BYTES, MinuteSummary, OPERATOR_COMMAND, Operator, OperatorCommand,
    QUORUM_HINT, QuorumHint, Record, Recorded, Row, SNAPSHOT, Shippable, StoredEvent, VERSION, check_reason, decode,
    decode_batch, decode_record,
};
#[cfg(test)]
pub(crate) use store::SideWork;
pub use store::chain::{Finding, Head, VerifyReport};
pub use store::integrity::{Integrity, Unclean};
pub use store::{
    CompactReport, Deltas, Durability, Lease, LogReader, LogWriter, MinuteRow, OutboxMessage, OutboxRow, OutboxState,
    OutboxStore, ProjectionStore, SqliteCursor, SqliteReader, SqliteWriter, StoreError, connect_options,
};

/// How this log's readers continue a tailing read (see [`LogReader`]: opaque, per backend).
pub type ReadCursor = <SqliteReader as LogReader>::Cursor;
use store::{chain, integrity};
pub use writer::{ERROR_KINDS, Progress, Stats, WriterLimits};

use crate::breaker::codec::DecodeError;
use crate::breaker::{Breaker, Policy, PolicyError};
use sqlx::SqlitePool;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::watch;

/// Settings of a journal; every bound explicit.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// The node this process writes as: recorded on every event it appends (default: the host
    /// name, so a restarted process is the same node). See `docs/durability.md`, "Nodes".
    pub node: Arc<str>,
    /// `synchronous` mode: FULL (default) survives power loss, NORMAL only process crashes.
    pub durability: Durability,
    /// Records buffered at most (default 100,000) while the writer is busy or the store fails;
    /// beyond it records are dropped and written as a gap event.
    pub capacity: usize,
    /// Records per group commit at most (default 10,000).
    pub max_batch: usize,
    /// Longest a record waits for its group commit (default 2 ms).
    pub flush_interval: Duration,
    /// Longest wait between retries while the store fails (default 1 s).
    pub max_backoff: Duration,
    /// Reader connections (default 4): the sqlx pool's for look-ups, and as many again for the
    /// long sequential reads (recovery, projections), which run on tokio's blocking pool.
    pub readers: u32,
    /// How long a write waits for a lock held by another process before failing and retrying
    /// (default 5 s).
    pub busy_timeout: Duration,
    /// Cap on the file's size (SQLite `max_page_count`); past it appends fail as "disk full"
    /// and events wait in the buffer. Default: none. Changeable with [`Journal::set_max_size`].
    pub max_size_bytes: Option<u64>,
    /// The integrity check that runs in the background after a clean shutdown's fast open.
    pub background_check: BackgroundCheck,
}

/// Pace of the background `PRAGMA quick_check` (after a clean shutdown, the file is opened
/// without it; see [`Journal::integrity`]). It reads every page of the file, so it is kept off
/// start-up and throttled; it never blocks the writer (it is a WAL reader), but while it runs
/// checkpoints cannot move past its snapshot, so the WAL grows by what is written meanwhile.
#[derive(Clone, Copy, Debug)]
pub struct BackgroundCheck {
    /// Wait after open before it starts (default 1 s), so start-up's own reads (recovering the
    /// breakers) are not slowed down by it, least of all from a cold page cache.
    pub delay: Duration,
    /// Rest after each ~10 ms of checking, as a multiple of the time it worked (default 1: it
    /// reads at most half the time; 0: no rest). A 120 MB file then takes ~0.2 s from the page
    /// cache and ~5 s from disk (docs/performance.md, start-up).
    pub rest_ratio: u32,
}

impl Default for BackgroundCheck {
    fn default() -> Self {
        BackgroundCheck {
            delay: Duration::from_secs(1),
            rest_ratio: 1,
        }
    }
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            node: Arc::from(host_name()),
            durability: Durability::Full,
            capacity: 100_000,
            max_batch: 10_000,
            flush_interval: Duration::from_millis(2),
            max_backoff: Duration::from_secs(1),
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            max_size_bytes: None,
            background_check: BackgroundCheck::default(),
        }
    }
}

/// A journal failure seen by a reader or waiter.
#[derive(Debug, Error)]
pub enum JournalError {
    /// The store failed: see the variant for what to do.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event cannot be decoded: the log needs inspection at that position.
    #[error("event at position {position}: {source}")]
    Decode {
        /// Where.
        position: i64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The initial policy given to recovery is not valid: fix the configuration.
    #[error("invalid policy: {0}")]
    Policy(#[from] PolicyError),
    /// The journal was closed: nothing more can be written or awaited.
    #[error("the journal is closed")]
    Closed,
    /// The journal's buffer could not take the records (the store has been failing for a while,
    /// or is far behind): nothing was submitted and nothing was applied. Retry later.
    #[error("the event log's buffer is full: nothing was applied; retry when the log catches up")]
    Full,
    /// A shutdown's last events were not durable within its bound: the log is failing. They
    /// are lost when the process exits.
    #[error("the last events are not durable: {0}")]
    NotDurable(LogCondition),
    /// The command was refused before anything was applied or stored (an operator's reason
    /// missing or not one line of plain text: [`check_reason`]). Fix the input.
    #[error("refused, nothing applied: {0}")]
    Refused(String),
    /// The records were refused by the log (another writer took their stream): they are not in
    /// the log. Report it.
    #[error("the records were not written: another process writes this stream")]
    Dropped,
}

/// How a process's event log stands (health, `/metrics`, command answers and shutdown say it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LogCondition {
    /// `ok` (appends are written) or `failing` (the last append failed: breakers keep deciding
    /// in memory and their events are buffered, or counted as dropped once the buffer is full).
    pub status: &'static str,
    /// What fails: `busy`, `full`, `read_only`, `io`, `conflict` or `corrupt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Since when (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// The last committed position.
    pub position: i64,
    /// Records dropped since this process started (buffer full, or another writer's stream).
    pub dropped: u64,
}

impl LogCondition {
    fn of(p: &Progress, stats: &Stats) -> LogCondition {
        LogCondition {
            status: if p.failing.is_some() { "failing" } else { "ok" },
            kind: p.failing,
            since_ms: p.failing.and(p.failing_since_ms),
            position: p.position,
            dropped: stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether appends are being written.
    pub fn is_ok(&self) -> bool {
        self.kind.is_none()
    }
}

impl std::fmt::Display for LogCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.kind, self.since_ms) {
            (None, _) => write!(f, "the event log is written (position {})", self.position),
            (Some(kind), since) => {
                write!(f, "the event log is failing ({kind}")?;
                if let Some(ms) = since {
                    let at = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
                    write!(f, " since {}", at.format("%Y-%m-%dT%H:%M:%S%.3fZ"))?;
                }
                write!(f, ")")?;
                if self.dropped > 0 {
                    write!(f, "; {} records dropped", self.dropped)?;
                }
                Ok(())
            }
        }
    }
}

/// Records submitted together by [`Journal::submit_all`], whose position is tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    first: u64,
    last: u64,
}

/// Follows the journal's commits. It only ever hands out copies: nothing a subscriber does can
/// hold a lock the writer needs (a `watch::Ref` kept alive would stall every commit).
pub struct ProgressWatch(watch::Receiver<Progress>);

impl ProgressWatch {
    /// What is committed now.
    pub fn get(&self) -> Progress {
        *self.0.borrow()
    }

    /// Waits for the next commit.
    pub async fn changed(&mut self) -> Result<Progress, JournalError> {
        self.0.changed().await.map_err(|_| JournalError::Closed)?;
        Ok(self.get())
    }

    /// Waits until `f` holds for what is committed, and returns a copy of it.
    pub async fn wait_for(&mut self, f: impl FnMut(&Progress) -> bool) -> Result<Progress, JournalError> {
        let p = *self.0.wait_for(f).await.map_err(|_| JournalError::Closed)?;
        Ok(p)
    }
}

/// A breaker rebuilt from the log.
#[derive(Clone, Debug, PartialEq)]
pub struct Recovered {
    /// Its state.
    pub breaker: Breaker,
    /// The stream's last seq.
    pub last_seq: i64,
    /// Events folded after the snapshot (or from the start).
    pub folded: u64,
    /// The seq of the snapshot it started from, if any.
    pub snapshot_seq: Option<i64>,
    /// Positions of the stream's events that do not decode and were skipped, in log order
    /// (snapshots among them: recovery started before them). The breaker is folded from the
    /// others, so it may differ from what it was; [`Recovered::skipped`] says so.
    pub damaged: Vec<i64>,
}

impl Recovered {
    /// What to tell an operator about the skipped events (`None` when none was): where they
    /// are (the first ten positions), that the state may differ, and which commands look closer.
    pub fn skipped(&self, stream: &str) -> Option<String> {
        const NAMED: usize = 10;
        let n = self.damaged.len();
        let mut at: Vec<String> = self.damaged.iter().take(NAMED).map(i64::to_string).collect();
        if n > NAMED {
            at.push(format!("… ({n} in all)"));
        }
        let at = at.join(", ");
        let what = match n {
            0 => return None,
            1 => format!("the event at position {at} cannot be decoded and was skipped"),
            _ => format!("{n} events (positions {at}) cannot be decoded and were skipped"),
        };
        Some(format!(
            "recovering {stream}: {what}; its state is folded from the other events and may differ from \
             what it was. `breakerbox verify` checks the log, `breakerbox replay --service {stream} --from \
             TIME` names each event it skips"
        ))
    }
}

/// The write side of a journal, as the breakers' actors use it: submit, submit all or none,
/// wait for durability, the log's condition. Cheap to clone; callable from any thread. A
/// [`Journal`] hands one out ([`Journal::appender`]); the runtime's deterministic simulation
/// builds one over a simulated store (`simulated`).
#[derive(Clone)]
pub struct Appender {
    shared: Arc<writer::Shared>,
}

impl Appender {
    /// Queues an event for the next group commit and returns at once. `None` if the buffer is
    /// full: the event is dropped, counted, and recorded later as a `gap` event.
    pub fn submit(&self, stream: &Arc<str>, body: Body) -> Option<u64> {
        self.shared.submit(Record {
            stream: stream.clone(),
            body,
        })
    }

    /// Queues `bodies` of one stream together, or none of them ([`JournalError::Full`]): the
    /// records of one operator command are in the log all or not at all. Wait on the result with
    /// [`Appender::durable_position`].
    pub fn submit_all(&self, stream: &Arc<str>, bodies: Vec<Body>) -> Result<Tracked, JournalError> {
        let records = bodies
            .into_iter()
            .map(|body| Record {
                stream: stream.clone(),
                body,
            })
            .collect();
        let (first, last) = self.shared.submit_all(records).ok_or(JournalError::Full)?;
        Ok(Tracked { first, last })
    }

    /// Resolves when the records of `tracked` are committed, with the first one's position.
    pub async fn durable_position(&self, tracked: Tracked) -> Result<i64, JournalError> {
        self.durable(tracked.last).await?;
        self.shared.take_position(tracked.first).ok_or(JournalError::Dropped)
    }

    /// Resolves when the record with this ticket (and every one before it) is committed.
    pub async fn durable(&self, ticket: u64) -> Result<Progress, JournalError> {
        let mut rx = self.subscribe();
        if rx.get().ticket < ticket {
            // Don't wait out the flush interval: somebody is waiting on this commit.
            let _ = self.shared.flush_ticket();
        }
        rx.wait_for(|p| p.ticket >= ticket).await
    }

    /// Resolves when everything submitted so far is committed.
    pub async fn flush(&self) -> Result<Progress, JournalError> {
        let ticket = self.shared.flush_ticket();
        self.durable(ticket).await
    }

    /// How this process's log stands now: written, or failing since when and with what.
    pub fn condition(&self) -> LogCondition {
        LogCondition::of(&self.subscribe().get(), &self.shared.stats)
    }

    /// Wakes on every commit of this process (SSE, alerts and projections tail with it).
    pub fn subscribe(&self) -> ProgressWatch {
        ProgressWatch(self.shared.progress.subscribe())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Stops taking records and lets the writer drain and stop (see [`Journal::close`]).
    #[cfg(test)]
    pub(crate) fn close(&self) {
        self.shared.close();
    }
}

/// A journal's write side over `store`, for the runtime's deterministic simulation: the writer
/// is the returned future, run by the caller on its own (paused-clock) runtime, so nothing but
/// the simulation's schedule decides what happens when. The future ends once the appender is
/// closed and drained; it gives the store back.
#[cfg(test)]
pub(crate) fn simulated<W: LogWriter>(
    store: W,
    limits: WriterLimits,
) -> (Appender, impl std::future::Future<Output = (W, bool)>) {
    let shared = writer::Shared::new(limits, 0, Integrity::Checking);
    let appender = Appender { shared: shared.clone() };
    (appender, writer::Writer::new(shared, store, Arc::from("sim")).run())
}

/// The event log. Cheap to share behind an `Arc`; `submit` is callable from any thread.
pub struct Journal {
    /// The write side; its shared state is the writer's (the one `Arc` both hold).
    appender: Appender,
    readers: SqliteReader,
    path: PathBuf,
    durability: Durability,
    thread: Mutex<Option<std::thread::JoinHandle<Result<(), StoreError>>>>,
    /// The background integrity check, if one runs, and its stop signal.
    check: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop_check: Arc<integrity::Stop>,
    restored_triggers: Vec<String>,
    /// The directory [`Journal::in_memory`] made for it, removed with it.
    scratch: Option<PathBuf>,
}

impl Journal {
    /// Opens (creating if missing) the log at `path`: checks integrity (a corrupt file is
    /// refused), applies migrations, and starts the writer thread.
    ///
    /// Integrity: the header is checked on every open. After a clean [`Journal::close`] (a
    /// clean-shutdown marker beside the file that still matches it) the file opens without the
    /// full `PRAGMA quick_check`, which then runs in the background ([`BackgroundCheck`]); after
    /// anything else (a crash, a kill, a drop without `close`, a file changed since) it runs
    /// here, before the journal opens. See [`Journal::integrity`] and `docs/durability.md`.
    pub async fn open(path: &Path, options: JournalOptions) -> Result<Journal, StoreError> {
        let limits = WriterLimits {
            capacity: options.capacity.max(1),
            max_batch: options.max_batch.max(1),
            flush_interval: options.flush_interval,
            max_backoff: options.max_backoff.max(Duration::from_millis(10)),
        };
        // The writer gets its own thread and runtime, so it works whatever runtime (or none) the
        // host runs, and a busy host runtime never delays a commit.
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        let thread_path = path.to_path_buf();
        let durability = options.durability;
        let busy = options.busy_timeout;
        let max_size = options.max_size_bytes;
        let node = options.node.clone();
        let thread = std::thread::Builder::new()
            .name("breakerbox-journal".into())
            .spawn(move || -> Result<(), StoreError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Io(format!("starting the journal runtime: {e}")))?;
                rt.block_on(async move {
                    let (mut conn, clean, restored) = match store::open_writer(&thread_path, durability, busy).await {
                        Ok((c, clean, restored)) => (SqliteWriter::new(c, &thread_path, node.clone()), clean, restored),
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let position = match conn.last_position().await {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = opened_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let integrity = match clean {
                        Ok(()) => Integrity::Checking,
                        Err(why) => Integrity::CheckedAtOpen(why),
                    };
                    let shared = writer::Shared::new(limits, position, integrity);
                    shared.set_max_size(max_size);
                    if opened_tx.send(Ok((shared.clone(), restored))).is_err() {
                        return Ok(());
                    }
                    let (store, drained) = writer::Writer::new(shared.clone(), conn, node).run().await;
                    if shared.is_corrupt() {
                        // Nothing more goes into a damaged file, not even a checkpoint.
                        return store::close_without_checkpoint(store.conn, &thread_path, durability, busy).await;
                    }
                    store.close().await?;
                    // A marker only after an orderly close that wrote everything it took, and
                    // only while the file is not known to be damaged (the check is stopped by now).
                    if shared.closed_cleanly() && drained && !shared.is_corrupt() {
                        match integrity::write_marker(&thread_path) {
                            Ok(true) => {}
                            Ok(false) => tracing::info!(
                                "the WAL is not empty after closing (another process has the file open): no \
                                 clean-shutdown marker, the next open runs the full integrity check"
                            ),
                            Err(e) => tracing::warn!(error = %e, "writing the clean-shutdown marker"),
                        }
                    }
                    Ok(())
                })
            })
            .map_err(|e| StoreError::Io(format!("starting the journal thread: {e}")))?;
        let (shared, restored_triggers) = match opened_rx.await {
            Ok(Ok(opened)) => opened,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                return Err(match thread.join() {
                    Ok(Err(e)) => e,
                    _ => StoreError::Io("the journal thread stopped while opening".into()),
                });
            }
        };
        let readers =
            match SqliteReader::open(path, options.durability, options.busy_timeout, options.readers.max(1)).await {
                Ok(readers) => readers,
                Err(e) => {
                    shared.close();
                    return Err(e);
                }
            };
        let stop_check = Arc::new(integrity::Stop::default());
        let check = if matches!(shared.integrity(), Integrity::Checking) {
            let spawned = integrity::spawn_check(
                path,
                options.durability,
                options.busy_timeout,
                options.background_check,
                shared.clone(),
                stop_check.clone(),
            );
            match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    shared.close();
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Journal {
            appender: Appender { shared },
            readers,
            path: path.to_path_buf(),
            durability: options.durability,
            thread: Mutex::new(Some(thread)),
            check: Mutex::new(check),
            stop_check,
            restored_triggers,
            scratch: None,
        })
    }

    /// A log for tests and examples: a real one (the same SQLite log, writer and readers) in a
    /// fresh directory on a memory-backed file system — `/dev/shm` where there is one (Linux),
    /// else the system's temporary directory — removed when the journal is closed or dropped.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let journal = breakerbox::journal::Journal::in_memory().await.unwrap();
    /// let dir = journal.path().parent().unwrap().to_owned();
    /// assert!(dir.is_dir());
    /// journal.close().await;
    /// assert!(!dir.exists(), "nothing is left behind");
    /// # });
    /// ```
    pub async fn in_memory() -> Result<Journal, StoreError> {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        Journal::scratch_in(&base).await
    }

    /// A scratch log (as [`Journal::in_memory`]) in a fresh directory under `base`, removed when
    /// the journal is closed or dropped.
    pub async fn scratch_in(base: &Path) -> Result<Journal, StoreError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "breakerbox-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
        let options = JournalOptions {
            durability: Durability::Normal,
            ..JournalOptions::default()
        };
        match Journal::open(&dir.join("log.db"), options).await {
            Ok(mut journal) => {
                journal.scratch = Some(dir);
                Ok(journal)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// The append-only triggers this open found missing or altered and put back (empty when
    /// the schema was as the migrations made it).
    pub fn restored_triggers(&self) -> &[String] {
        &self.restored_triggers
    }

    /// Walks the tamper-evident chain of every stream (see [`VerifyReport`]); with the triggers
    /// this open had to put back among the findings.
    pub async fn verify(&self) -> Result<VerifyReport, JournalError> {
        self.verify_against(&[]).await
    }

    /// [`Journal::verify`], and each of `anchors` (heads a `verify` exported earlier) must still
    /// be on the chain, with the same hash: a log rewritten whole, or cut short, since they were
    /// exported fails here.
    pub async fn verify_against(&self, anchors: &[Head]) -> Result<VerifyReport, JournalError> {
        let replaced = self.replaced().await?;
        // The log's own anchors, and the exported ones.
        let mut all = Vec::new();
        for e in self.every(CHAIN_ANCHOR).await? {
            if let Decoded::Anchor(anchor) = decoded(&e)? {
                all.extend(anchor.heads);
            }
        }
        all.extend(anchors.iter().cloned());
        Ok(chain::verify(&self.readers.pool, &replaced, &self.restored_triggers, &all).await?)
    }

    /// Writes a `chain_anchor` to `_journal`: the heads of the streams written since the last
    /// one (nothing when none was). [`crate::app::App`] writes one every
    /// [`crate::app::AppOptions::anchor_every`] and when it stops. Answers with the anchor's
    /// position, once durable.
    pub async fn anchor(&self) -> Result<Option<i64>, JournalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.appender.shared.request(writer::Request::Anchor { reply });
        Ok(answer.await.map_err(|_| JournalError::Closed)??)
    }

    /// What compaction kept of the events it removed, from the call summaries.
    async fn replaced(&self) -> Result<chain::Replaced, JournalError> {
        let mut out = chain::Replaced::new();
        for e in self.every(CALL_SUMMARY).await? {
            if let Decoded::Summary(summary) = decoded(&e)? {
                let stream = out.entry(e.stream.clone()).or_default();
                for r in summary.replaced {
                    stream.insert(r.seq, r.hash.as_deref().and_then(chain::from_hex));
                }
            }
        }
        Ok(out)
    }

    /// Every event of one (rare) type, in log order: anchors, summaries.
    async fn every(&self, event_type: &'static str) -> Result<Vec<StoredEvent>, JournalError> {
        let mut out: Vec<StoredEvent> = Vec::new();
        loop {
            let after = out.last().map_or(0, |e| e.position);
            let page = self.read_range(&[event_type], 0, i64::MAX, after, 1_000).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// How the file's integrity was established at open, and what the background check found
    /// so far. A corruption found in the background also shows as `progress().failing ==
    /// Some("corrupt")` and in `stats().errors` (kind `corrupt`).
    pub fn integrity(&self) -> Integrity {
        self.appender.shared.integrity()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write side, for a part that only appends (the breakers' actors).
    pub fn appender(&self) -> &Appender {
        &self.appender
    }

    /// See [`Appender::submit`].
    pub fn submit(&self, stream: &Arc<str>, body: Body) -> Option<u64> {
        self.appender.submit(stream, body)
    }

    /// See [`Appender::submit_all`].
    pub fn submit_all(&self, stream: &Arc<str>, bodies: Vec<Body>) -> Result<Tracked, JournalError> {
        self.appender.submit_all(stream, bodies)
    }

    /// See [`Appender::durable_position`].
    pub async fn durable_position(&self, tracked: Tracked) -> Result<i64, JournalError> {
        self.appender.durable_position(tracked).await
    }

    /// See [`Appender::durable`].
    pub async fn durable(&self, ticket: u64) -> Result<Progress, JournalError> {
        self.appender.durable(ticket).await
    }

    /// See [`Appender::flush`].
    pub async fn flush(&self) -> Result<Progress, JournalError> {
        self.appender.flush().await
    }

    /// What is committed now.
    pub fn progress(&self) -> Progress {
        self.subscribe().get()
    }

    /// See [`Appender::condition`].
    pub fn condition(&self) -> LogCondition {
        self.appender.condition()
    }

    /// See [`Appender::subscribe`].
    pub fn subscribe(&self) -> ProgressWatch {
        self.appender.subscribe()
    }

    /// Caps the file's size (None: no cap). Raising the cap after a "disk full" lets the buffered
    /// events be written at the next retry.
    pub fn set_max_size(&self, bytes: Option<u64>) {
        self.appender.shared.set_max_size(bytes);
    }

    /// The readers' pool, for read-only queries of projections (it cannot write).
    pub fn pool(&self) -> &SqlitePool {
        &self.readers.pool
    }

    /// Hands writes to the derived tables to this journal's writer.
    fn side_writer(&self) -> store::SideWriter {
        let shared = self.appender.shared.clone();
        store::SideWriter(Arc::new(move |work| shared.request(writer::Request::Side(work))))
    }

    /// The metrics projection's tables: writes through this journal's one write connection.
    pub fn projection_store(&self) -> ProjectionStore {
        ProjectionStore::new(
            "metrics",
            self.side_writer(),
            self.readers.pool.clone(),
            self.durability,
        )
    }

    /// The alert notifier's tables: writes through this journal's one write connection.
    pub fn outbox_store(&self) -> OutboxStore {
        OutboxStore::new(self.side_writer(), self.readers.pool.clone())
    }

    /// This log's events after `position` with their chain links, in log order, at most `limit`:
    /// what a node ships to the fleet's log (`docs/fleet.md`).
    pub async fn read_shippable(&self, position: i64, limit: u32) -> Result<Vec<Shippable>, StoreError> {
        store::read_shippable(&self.readers.pool, position, limit).await
    }

    /// Writes events of another log — a node's history read back from the fleet's log — into
    /// this one at their own positions, with their own chain links, in one transaction. Only into
    /// a fresh log that nothing else writes ([`fleet::node_copy`]): this journal's writer does not
    /// learn of the rows, so an append after it would collide with them.
    pub(crate) async fn import(&self, events: Vec<Shippable>) -> Result<(), StoreError> {
        let last = self
            .side_writer()
            .run(
                move |conn: &mut sqlx::SqliteConnection| -> store::ConnFuture<'_, Result<Option<i64>, StoreError>> {
                    Box::pin(async move {
                        let last = events.last().map(|e| e.event.position);
                        store::import(conn, &events).await.map(|()| last)
                    })
                },
            )
            .await?;
        if let Some(last) = last {
            // What the copy holds is committed: its condition says so, as the node's own would.
            self.appender
                .shared
                .progress
                .send_modify(|p| p.position = p.position.max(last));
        }
        Ok(())
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &Stats {
        self.appender.stats()
    }

    /// A stream's events with `seq > after_seq`, at most `limit`, in order.
    pub async fn read_stream(&self, stream: &str, after_seq: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        self.readers.read_stream(stream, after_seq, limit).await
    }

    /// Events after a log position, at most `limit`, in log order.
    pub async fn read_after(&self, position: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let cursor = self.readers.cursor_at(position).await?;
        Ok(self.readers.tail(&cursor, limit).await?.0)
    }

    /// The cursor a tailing read continues from, just after the event at `position` (0: the
    /// log's start). See [`LogReader`].
    pub async fn cursor_at(&self, position: i64) -> Result<ReadCursor, StoreError> {
        self.readers.cursor_at(position).await
    }

    /// Events after `after` in log order, at most `limit`, and the cursor after them: how the
    /// projection tails the log.
    pub async fn tail(&self, after: &ReadCursor, limit: u32) -> Result<(Vec<StoredEvent>, ReadCursor), StoreError> {
        self.readers.tail(after, limit).await
    }

    /// Events of some types (all when empty) recorded in `[from_ms, to_ms)` after a position.
    pub async fn read_range(
        &self,
        types: &[&str],
        from_ms: i64,
        to_ms: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.readers.read_range(types, from_ms, to_ms, after, limit).await
    }

    /// The latest event of `event_type` in a stream (e.g. its last transition).
    pub async fn latest(&self, stream: &str, event_type: &str) -> Result<Option<StoredEvent>, StoreError> {
        self.readers.latest_of_type(stream, event_type, i64::MAX).await
    }

    /// The latest snapshot, transition or call summary of a stream recorded at or before `at_ms`
    /// (the largest `recorded_at`, the last in log order among equals): one index probe
    /// (`migrations/0004_replay_lookups.sql`). Other types are refused (`StoreError::Io`): they
    /// have no index for it.
    pub async fn latest_at_or_before(
        &self,
        stream: &str,
        event_type: &str,
        at_ms: u64,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.readers
            .latest_at_or_before(stream, event_type, at_ms.min(i64::MAX as u64) as i64)
            .await
    }

    /// A stream's snapshots, transitions or call summaries (`event_type`) recorded in
    /// `[from_ms, to_ms]`, in log order: one index range, read in pages of `page` events.
    pub async fn read_stream_range(
        &self,
        stream: &str,
        event_type: &str,
        from_ms: u64,
        to_ms: u64,
        page: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let ms = |t: u64| t.min(i64::MAX as u64) as i64;
        let mut after = (ms(from_ms), i64::MIN);
        let mut out: Vec<StoredEvent> = Vec::new();
        loop {
            let events = self
                .readers
                .read_stream_range(stream, event_type, after, ms(to_ms), page.max(1))
                .await?;
            let Some(last) = events.last() else { break };
            after = (last.recorded_at, last.seq);
            out.extend(events);
        }
        // Read by time (that is what the index serves); handed back in log order.
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Whether a stream holds any snapshot, transition or call summary (`event_type`): one index
    /// probe.
    pub async fn has_event_type(&self, stream: &str, event_type: &str) -> Result<bool, StoreError> {
        self.readers.has_event_type(stream, event_type).await
    }

    /// A stream's first event of one of `types` with `seq > after_seq`. Walks the stream (no
    /// index on the type): for rare look-ups.
    pub async fn first_of_types(
        &self,
        stream: &str,
        after_seq: i64,
        types: &[&str],
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.readers.first_of_types(stream, after_seq, types).await
    }

    /// The last position in the file, whoever wrote it (other processes included).
    pub async fn last_position(&self) -> Result<i64, StoreError> {
        self.readers.last_position().await
    }

    /// Waits until the log holds events after `position`, written by this process or another,
    /// for at most `timeout`. Returns the last position seen.
    pub async fn wait_after(&self, position: i64, timeout: Duration) -> Result<i64, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.subscribe();
        loop {
            let last = self.last_position().await?;
            if last > position || tokio::time::Instant::now() >= deadline {
                return Ok(last);
            }
            // Own commits wake at once; another process's are seen by polling every 100 ms.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                rx.changed(),
            )
            .await;
        }
    }

    /// Rebuilds a breaker from its latest snapshot and the events after it; a stream with no
    /// events gives a fresh breaker with `policy`.
    ///
    /// An event that does not decode (damaged, or written by a newer version) is skipped and its
    /// position named in [`Recovered::damaged`], as every other reader of the log does: one
    /// damaged record never keeps the breakers from starting. A snapshot that does not decode is
    /// skipped the same way, and recovery starts from the latest earlier one that does, or from
    /// the stream's start. Only a store error fails it.
    pub async fn recover(&self, stream: &str, policy: Policy) -> Result<Recovered, JournalError> {
        let mut damaged = Vec::new();
        let mut below = i64::MAX;
        let start = loop {
            let Some(s) = self.readers.latest_of_type(stream, SNAPSHOT, below).await? else {
                break None;
            };
            match decode(&s) {
                Ok(Decoded::Snapshot(b)) => break Some((*b, s.seq)),
                Ok(_) => unreachable!("latest_of_type(SNAPSHOT) returns snapshots"),
                Err(_) => {
                    damaged.push(s.position);
                    below = s.seq;
                }
            }
        };
        let (mut breaker, mut after, snapshot_seq) = match start {
            Some((b, seq)) => (b, seq, Some(seq)),
            None => (Breaker::new(policy)?, 0, None),
        };
        let mut folded = 0;
        loop {
            let page = self.readers.read_stream(stream, after, 5_000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for e in &page {
                let Ok(decoded) = decode(e) else {
                    // A snapshot passed over above is met again here: named once.
                    if !damaged.contains(&e.position) {
                        damaged.push(e.position);
                    }
                    continue;
                };
                match decoded {
                    Decoded::Breaker(events) => {
                        for ev in &events {
                            breaker.apply(ev);
                        }
                        folded += events.len() as u64;
                    }
                    Decoded::Snapshot(_)
                    | Decoded::Gap(_)
                    | Decoded::Summary(_)
                    | Decoded::Stats(_)
                    | Decoded::Command(_)
                    | Decoded::Request(_)
                    | Decoded::Delivery(_)
                    | Decoded::Anchor(_)
                    | Decoded::Other => {}
                }
            }
        }
        damaged.sort_unstable();
        Ok(Recovered {
            breaker,
            last_seq: after,
            folded,
            snapshot_seq,
            damaged,
        })
    }

    /// Retention: folds call batches recorded more than `horizon_ms` before `now_ms` (rounded
    /// down to a minute) into per-minute `call_summary` events and deletes them, in one
    /// transaction. Only batches before their stream's latest snapshot go (recovery starts
    /// there); transitions, commands, policy changes, alerts and snapshots are kept forever.
    pub async fn compact(&self, horizon_ms: u64, now_ms: u64) -> Result<CompactReport, JournalError> {
        let watermark = (now_ms.saturating_sub(horizon_ms) / 60_000 * 60_000).min(i64::MAX as u64) as i64;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.appender
            .shared
            .request(writer::Request::Compact { watermark, reply });
        Ok(answer.await.map_err(|_| JournalError::Closed)??)
    }

    /// Takes the writer lease for `holder` and keeps renewing it (every `ttl / 3`) until
    /// [`Journal::close`], unless another holder renewed it within its ttl (the one it recorded;
    /// `ttl` for a lease that recorded none). `ttl` is recorded with the lease. Returns the lease as it
    /// stands: compare its `holder` with yours. Only the holder writes breaker streams; another
    /// process sends operator commands through the log instead.
    pub async fn acquire_lease(&self, holder: &str, ttl: Duration) -> Result<Lease, JournalError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.appender.shared.request(writer::Request::Lease {
            holder: holder.to_owned(),
            ttl,
            dead: None,
            reply,
        });
        Ok(answer.await.map_err(|_| JournalError::Closed)??)
    }

    /// The lease as it stands in the file (any process's), or `None` if nobody holds it.
    pub async fn lease(&self) -> Result<Option<Lease>, JournalError> {
        Ok(self.readers.lease().await?)
    }

    /// Writes what is buffered, checkpoints the WAL and stops the writer, then leaves a
    /// clean-shutdown marker beside the file (so the next open can skip the full integrity
    /// check). Bounded: with a failing store it gives up after a few attempts and says so in the
    /// log, and leaves no marker; a background check still running is stopped.
    pub async fn close(&self) {
        self.stop_check.set();
        let check = self.check.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(check) = check {
            let _ = joined(check).await;
        }
        self.appender.shared.close_cleanly();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle
            && let Ok(Err(e)) = joined(handle).await
        {
            tracing::warn!(error = %e, "closing the event log");
        }
        self.readers.close().await;
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `decode`, its error naming the event's position.
fn decoded(e: &StoredEvent) -> Result<Decoded, JournalError> {
    decode(e).map_err(|source| JournalError::Decode {
        position: e.position,
        source,
    })
}

/// Joins `thread` once it has finished, polling: no blocking task is left behind when the
/// caller stops waiting (a runtime waits for its blocking tasks as it shuts down, so a close cut
/// short by a deadline would otherwise hold the process's exit).
pub(crate) async fn joined<T>(thread: std::thread::JoinHandle<T>) -> std::thread::Result<T> {
    while !thread.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    thread.join()
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Tell the writer to finish; it drains and exits on its own thread. No clean-shutdown
        // marker: the process may be exiting under it, so the next open checks the whole file.
        self.stop_check.set();
        self.appender.shared.close();
        // An in-memory log not closed: its files go now (the writer may still hold them open,
        // which the file system allows; what it writes after is lost, as it would be anyway).
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
