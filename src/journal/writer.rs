//! The one writer: group commit, seq assignment, packing, retries, gaps.
//!
//! Producers push records into a bounded buffer under a mutex (no I/O, no await) and go on. The
//! writer thread swaps the buffer out, packs it into rows and appends them in one transaction;
//! while SQLite is failing it keeps that batch and retries with capped backoff, the buffer fills
//! up to its bound, and further records are dropped and counted, to be written as a `gap` event
//! once the store recovers. The protected calls never wait on the disk.

use super::record::{
    Body, CALL_BATCH, CALL_BATCH_VERSION, CallBatch, GAP, Gap, JOURNAL_STREAM, Record, Row, SNAPSHOT, VERSION,
};
use super::store::integrity::{CheckReport, Integrity};
use super::store::{self, LogWriter, StoreError};
use crate::breaker::{Event, codec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};

/// Bounds of the writer.
#[derive(Clone, Copy, Debug)]
pub struct WriterLimits {
    /// Records buffered at most while the writer is busy or the store is failing.
    pub capacity: usize,
    /// Records per group commit at most.
    pub max_batch: usize,
    /// Longest a record waits for its group commit when the store is healthy.
    pub flush_interval: Duration,
    /// Longest wait between retries of a failing append.
    pub max_backoff: Duration,
}

/// What has been made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every record with a ticket up to this one is committed (or was dropped by a conflict).
    pub ticket: u64,
    /// The last committed log position.
    pub position: i64,
    /// The store's current failure, if the last attempt failed.
    pub failing: Option<&'static str>,
    /// Since when it has been failing (ms since the Unix epoch): the first failed attempt of
    /// this outage.
    pub failing_since_ms: Option<u64>,
}

impl Progress {
    /// An attempt failed with `kind`: the outage starts now unless it already had.
    fn fail(&mut self, kind: &'static str) {
        self.failing = Some(kind);
        if self.failing_since_ms.is_none() {
            self.failing_since_ms = Some(now_ms());
        }
    }
}

#[derive(Default)]
struct Pending {
    records: Vec<(u64, Record)>,
    next_ticket: u64,
    gap: Option<Gap>,
    urgent: bool,
}

/// Counters for metrics.
#[derive(Default)]
pub struct Stats {
    /// Events written (a call batch counts once).
    pub events: AtomicU64,
    /// Calls written inside batches.
    pub calls: AtomicU64,
    /// Group commits.
    pub commits: AtomicU64,
    /// Records dropped (buffer full or stream conflict).
    pub dropped: AtomicU64,
    /// `gap` events committed (each one records a run of dropped records).
    pub gaps: AtomicU64,
    /// Failed append attempts, by kind: busy, full, read_only, io, conflict, corrupt.
    pub errors: [AtomicU64; 6],
    /// Duration of the last commit, µs.
    pub last_commit_us: AtomicU64,
    /// Sum of commit durations, µs (with `commits`, the mean).
    pub commit_us_total: AtomicU64,
}

/// Error kinds in the order of [`Stats::errors`].
pub const ERROR_KINDS: [&str; 6] = ["busy", "full", "read_only", "io", "conflict", "corrupt"];

/// Work for the writer other than appending (it owns the only write connection).
pub(crate) enum Request {
    /// Compact call batches recorded before the watermark (ms).
    Compact {
        watermark: i64,
        reply: tokio::sync::oneshot::Sender<Result<store::CompactReport, StoreError>>,
    },
    /// Write a chain anchor (the heads moved since the last one).
    Anchor {
        reply: tokio::sync::oneshot::Sender<Result<Option<i64>, StoreError>>,
    },
    /// Take the writer lease for `holder` (and keep renewing it), unless someone else holds it;
    /// with `dead`, from that holder, judged dead, if the lease is still exactly as judged.
    Lease {
        holder: String,
        ttl: Duration,
        dead: Option<store::Lease>,
        reply: tokio::sync::oneshot::Sender<Result<store::Lease, StoreError>>,
    },
    /// A write to the tables derived from the log (the metrics projection, the alert outbox),
    /// on the process's one write connection, between two commits of events (see
    /// [`store::SideWriter`]). It answers through the reply its closure holds.
    Side(store::SideWork),
}

/// The lease this writer holds and keeps renewing.
struct Held {
    holder: String,
    ttl: Duration,
    renewed: Instant,
}

pub(crate) struct Shared {
    pending: Mutex<Pending>,
    requests: Mutex<Vec<Request>>,
    /// Requested size cap: `u64::MAX` none; applied by the writer before its next commit.
    max_size: AtomicU64,
    max_size_applied: AtomicU64,
    wake: Notify,
    closing: AtomicBool,
    /// The writer has stopped: requests are refused (see [`Shared::request`]).
    stopped: AtomicBool,
    /// Set by `Journal::close` (not by a drop): only then is a clean-shutdown marker written.
    clean_close: AtomicBool,
    /// What is known of the file's integrity; `corrupt` mirrors `Integrity::Corrupt` for the
    /// writer's cheap check before every write.
    integrity: Mutex<Integrity>,
    corrupt: AtomicBool,
    pub progress: watch::Sender<Progress>,
    /// Tracked records (operator commands) by ticket: their log position once committed (taken
    /// by `take_position`). Few and short-lived: each is taken by the one who submitted it.
    positions: Mutex<HashMap<u64, Option<i64>>>,
    pub stats: Stats,
    limits: WriterLimits,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    pub(crate) fn new(limits: WriterLimits, position: i64, integrity: Integrity) -> Arc<Self> {
        Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            requests: Mutex::new(Vec::new()),
            max_size: AtomicU64::new(u64::MAX),
            max_size_applied: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            clean_close: AtomicBool::new(false),
            integrity: Mutex::new(integrity),
            corrupt: AtomicBool::new(false),
            progress: watch::channel(Progress {
                position,
                ..Progress::default()
            })
            .0,
            positions: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            limits,
        })
    }

    /// Queues a record. `Some(ticket)` when accepted; `None` when the buffer is full (the drop is
    /// counted and will be written as a gap).
    pub(crate) fn submit(&self, record: Record) -> Option<u64> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.records.len() >= self.limits.capacity || self.closing.load(Ordering::Relaxed) {
            let at = now_ms();
            let gap = p.gap.get_or_insert_with(|| Gap {
                from_ms: at,
                ..Gap::default()
            });
            gap.to_ms = at;
            *gap.dropped
                .entry(record.stream.to_string())
                .or_default()
                .entry(record.body.kind().to_owned())
                .or_default() += 1;
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        p.next_ticket += 1;
        let ticket = p.next_ticket;
        p.records.push((ticket, record));
        // Wake the writer for the first record of a batch (it then waits `flush_interval` for
        // more to join) and when the batch is full; in between, pushing costs no wake-up.
        let wake = p.records.len() == 1 || p.records.len() >= self.limits.max_batch;
        drop(p);
        if wake {
            self.wake.notify_one();
        }
        Some(ticket)
    }

    /// Queues records of one stream together, or none of them when the buffer can't take them
    /// all (nothing is counted as dropped then: the caller was refused and knows). The first
    /// record's position is kept for [`Shared::take_position`]. Returns the first and last ticket.
    pub(crate) fn submit_all(&self, records: Vec<Record>) -> Option<(u64, u64)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if records.is_empty()
            || p.records.len() + records.len() > self.limits.capacity
            || self.closing.load(Ordering::Relaxed)
        {
            return None;
        }
        let first = p.next_ticket + 1;
        for record in records {
            p.next_ticket += 1;
            let ticket = p.next_ticket;
            p.records.push((ticket, record));
        }
        self.positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(first, None);
        let last = p.next_ticket;
        p.urgent = true;
        drop(p);
        self.wake.notify_one();
        Some((first, last))
    }

    /// The log position a tracked record was committed at, once (`None`: not committed, or its
    /// stream was fenced and the record dropped).
    pub(crate) fn take_position(&self, ticket: u64) -> Option<i64> {
        self.positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket)
            .flatten()
    }

    /// The ticket of the last accepted record, and a wake-up for the writer to commit now.
    pub(crate) fn flush_ticket(&self) -> u64 {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.urgent = true;
        let t = p.next_ticket;
        drop(p);
        self.wake.notify_one();
        t
    }

    pub(crate) fn set_max_size(&self, bytes: Option<u64>) {
        self.max_size.store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Queues work for the writer. After the writer stopped, the request is dropped at once,
    /// so its caller's reply channel closes (an error for it, never a wait forever).
    pub(crate) fn request(&self, request: Request) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        requests.push(request);
        drop(requests);
        self.wake.notify_one();
    }

    fn take_request(&self) -> Option<Request> {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        (!r.is_empty()).then(|| r.remove(0))
    }

    /// Side writes waiting (served while appends are failing too: they fail fast with the store).
    fn take_side_requests(&self) -> Vec<Request> {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let (side, rest): (Vec<_>, Vec<_>) = r.drain(..).partition(|q| matches!(q, Request::Side(_)));
        *r = rest;
        side
    }

    /// The writer has stopped: requests still queued are dropped (their callers get an error)
    /// and later ones are refused the same way.
    fn stop_requests(&self) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::Release);
        r.clear();
    }

    pub(crate) fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// `Journal::close`: the shutdown is orderly, a clean-shutdown marker may be written.
    pub(crate) fn close_cleanly(&self) {
        self.clean_close.store(true, Ordering::Relaxed);
        self.close();
    }

    pub(crate) fn closed_cleanly(&self) -> bool {
        self.clean_close.load(Ordering::Relaxed)
    }

    pub(crate) fn integrity(&self) -> Integrity {
        self.integrity.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records what the background check found (never replaces a corruption found earlier).
    pub(crate) fn set_integrity(&self, integrity: Integrity) {
        let mut current = self.integrity.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*current, Integrity::Corrupt(_)) {
            *current = integrity;
        }
    }

    /// The file is damaged: from now on the writer writes nothing to it (every append fails with
    /// this error without touching the file, so events stay buffered and overflow into a gap
    /// count, as with any failing store), and the failure is visible at once, work or not.
    pub(crate) fn mark_corrupt(&self, e: StoreError) {
        self.record_error(&e);
        *self.integrity.lock().unwrap_or_else(|e| e.into_inner()) = Integrity::Corrupt(e);
        self.corrupt.store(true, Ordering::Release);
        self.progress.send_modify(|p| p.fail("corrupt"));
        self.wake.notify_one();
    }

    pub(crate) fn is_corrupt(&self) -> bool {
        self.corrupt.load(Ordering::Acquire)
    }

    /// The corruption found, as the error every write now fails with.
    fn corruption(&self) -> Option<StoreError> {
        if !self.is_corrupt() {
            return None;
        }
        match self.integrity() {
            Integrity::Corrupt(e) => Some(e),
            _ => None,
        }
    }

    /// Swaps the whole buffer out: O(1) under the producers' lock (splitting it here would copy
    /// the tail while every `submit` waits). The writer cuts it into `max_batch` commits.
    fn take(&self) -> Taken {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.urgent = false;
        (std::mem::take(&mut p.records), p.gap.take())
    }

    fn has_work(&self) -> (bool, bool) {
        let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        (
            !p.records.is_empty() || p.gap.is_some(),
            p.urgent || p.records.len() >= self.limits.max_batch,
        )
    }

    fn record_error(&self, e: &StoreError) {
        let i = ERROR_KINDS.iter().position(|k| *k == e.kind()).unwrap_or(3);
        self.stats.errors[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A batch taken from the buffer: records with their tickets, and the gap to write with them.
type Taken = (Vec<(u64, Record)>, Option<Gap>);

/// The commit being attempted.
struct Inflight {
    /// What is still to be written (a fenced stream's records are taken out).
    records: Vec<(u64, Record)>,
    gap: Option<Gap>,
    /// The highest ticket of the batch as it was cut, fenced records included: settled once
    /// the rest is committed, so a caller waiting on a dropped record does not wait forever.
    settles: Option<u64>,
}

enum Payload {
    Encoded(Vec<u8>),
    Batch(CallBatch),
}

struct Draft {
    /// The ticket of the (first) record it holds; 0 for the gap.
    ticket: u64,
    stream: Arc<str>,
    event_type: &'static str,
    event_version: u32,
    recorded_at: u64,
    payload: Payload,
}

/// Packs records into rows (without seqs), keeping each stream's order.
fn pack(records: &[(u64, Record)], gap: Option<&Gap>) -> Vec<Draft> {
    let mut drafts: Vec<Draft> = Vec::with_capacity(records.len().min(1024));
    // The open call batch of each stream: closed by any other event of that stream.
    let mut open: HashMap<Arc<str>, usize> = HashMap::new();
    for (ticket, r) in records {
        let (event_type, event_version, at, payload) = match &r.body {
            Body::Breaker(Event::CallRecorded(call)) => {
                if let Some(&i) = open.get(&r.stream)
                    && let Payload::Batch(b) = &mut drafts[i].payload
                    && b.push(call)
                {
                    continue;
                }
                let mut batch = CallBatch::new(call.at_ms);
                batch.push(call);
                open.insert(r.stream.clone(), drafts.len());
                (CALL_BATCH, CALL_BATCH_VERSION, call.at_ms, Payload::Batch(batch))
            }
            Body::Breaker(event) => {
                open.remove(&r.stream);
                let e = codec::encode(event);
                (
                    e.event_type,
                    e.event_version,
                    event.at_ms(),
                    Payload::Encoded(e.payload),
                )
            }
            Body::Snapshot { at_ms, breaker } => {
                open.remove(&r.stream);
                let bytes = rmp_serde::to_vec_named(breaker.as_ref()).expect("a breaker always encodes");
                (SNAPSHOT, VERSION, *at_ms, Payload::Encoded(bytes))
            }
            Body::Other {
                event_type,
                event_version,
                at_ms,
                payload,
            } => {
                open.remove(&r.stream);
                (*event_type, *event_version, *at_ms, Payload::Encoded(payload.clone()))
            }
        };
        drafts.push(Draft {
            ticket: *ticket,
            stream: r.stream.clone(),
            event_type,
            event_version,
            recorded_at: at,
            payload,
        });
    }
    if let Some(gap) = gap {
        drafts.push(Draft {
            ticket: 0,
            stream: Arc::from(JOURNAL_STREAM),
            event_type: GAP,
            event_version: VERSION,
            recorded_at: gap.to_ms,
            payload: Payload::Encoded(rmp_serde::to_vec_named(gap).expect("a gap always encodes")),
        });
    }
    drafts
}

/// How long a closing writer keeps retrying a failing store.
const CLOSING_RETRIES_FOR: Duration = Duration::from_secs(2);

pub(crate) struct Writer<W: LogWriter> {
    pub shared: Arc<Shared>,
    pub store: W,
    /// The node every row is written by.
    node: Arc<str>,
    /// Last committed seq per stream (loaded on first sight).
    seqs: HashMap<Arc<str>, u64>,
    /// Streams another writer took: their records are dropped as gaps, never interleaved.
    fenced: HashMap<Arc<str>, u64>,
    lease: Option<Held>,
}

impl<W: LogWriter> Writer<W> {
    pub(crate) fn new(shared: Arc<Shared>, store: W, node: Arc<str>) -> Self {
        Writer {
            shared,
            store,
            node,
            seqs: HashMap::new(),
            fenced: HashMap::new(),
            lease: None,
        }
    }

    /// Runs until closed and drained (or, when closing with a failing store, for at most a few
    /// more attempts: what is still unwritten then is reported, not waited on forever). Returns
    /// the store and whether everything taken was written (the store was not failing at the end).
    pub(crate) async fn run(mut self) -> (W, bool) {
        let limits = self.shared.limits;
        let mut failing: Option<StoreError> = None;
        let mut backoff = Duration::from_millis(10);
        let mut attempts_while_closing = 0;
        let mut closing_since: Option<Instant> = None;
        let mut inflight: Option<Inflight> = None;
        // Records taken from the buffer and not yet cut into a commit.
        let mut backlog: std::collections::VecDeque<(u64, Record)> = std::collections::VecDeque::new();
        let mut backlog_gap: Option<Gap> = None;
        loop {
            if inflight.is_none() && (!backlog.is_empty() || backlog_gap.is_some()) {
                let n = backlog.len().min(limits.max_batch);
                let batch: Vec<_> = backlog.drain(..n).collect();
                // Settled with this commit whatever is dropped from it, so nobody waits forever.
                let settles = batch.last().map(|(t, _)| *t);
                let (dropped, batch): (Vec<_>, Vec<_>) = batch
                    .into_iter()
                    .partition(|(_, r)| self.fenced.contains_key(&r.stream));
                // A fenced stream's later records are lost too: counted, never silent.
                self.drop_into_gap(&mut backlog_gap, &dropped);
                let gap = if backlog.is_empty() { backlog_gap.take() } else { None };
                inflight = Some(Inflight {
                    records: batch,
                    gap,
                    settles,
                });
            }
            if inflight.is_none() {
                if let Some(request) = self.shared.take_request() {
                    self.serve(request).await;
                    continue;
                }
                self.renew_lease().await;
                let (work, urgent) = self.shared.has_work();
                if !work {
                    if self.shared.closing.load(Ordering::Relaxed) {
                        break;
                    }
                    match &self.lease {
                        // Wake up in time to renew the lease even when idle.
                        Some(held) => {
                            let _ = tokio::time::timeout(held.ttl / 3, self.shared.wake.notified()).await;
                        }
                        None => self.shared.wake.notified().await,
                    }
                    continue;
                }
                if !urgent && !self.shared.closing.load(Ordering::Relaxed) {
                    // Group commit: let a few more records join, unless the batch is full or
                    // somebody waits on a flush.
                    let _ = tokio::time::timeout(limits.flush_interval, self.shared.wake.notified()).await;
                }
                let (records, gap) = self.shared.take();
                backlog.extend(records);
                if let Some(g) = gap {
                    backlog_gap = Some(g);
                }
                continue;
            }
            let batch = inflight.as_ref().expect("set above");
            match self.commit(&batch.records, batch.gap.as_ref(), batch.settles).await {
                Ok(()) => {
                    if let Some(e) = failing.take() {
                        tracing::warn!(error = %e, "event log recovered; buffered events written");
                    }
                    backoff = Duration::from_millis(10);
                    inflight = None;
                }
                Err(StoreError::Conflict { stream, seq }) => {
                    // Another process wrote this stream (the store names the one that collided).
                    // Never interleave: fence it, drop its records (counted as a gap) and write
                    // the rest; if another stream of the batch collided too, the retry says so.
                    tracing::error!(
                        stream,
                        seq,
                        "another writer appended to this stream; this process stops writing it"
                    );
                    let key: Arc<str> = Arc::from(stream.as_str());
                    self.fenced.insert(key.clone(), seq);
                    self.shared.record_error(&StoreError::Conflict { stream, seq });
                    let mut batch = inflight.take().expect("set above");
                    let (dropped, kept): (Vec<_>, Vec<_>) =
                        batch.records.into_iter().partition(|(_, r)| r.stream == key);
                    self.drop_into_gap(&mut batch.gap, &dropped);
                    batch.records = kept;
                    inflight = Some(batch);
                }
                Err(e) => {
                    self.shared.record_error(&e);
                    // Logged once per outage, not per retry (a corruption was logged when found).
                    if failing.is_none() && !self.shared.is_corrupt() {
                        tracing::error!(error = %e, "event log append failed; breakers keep deciding in memory, events are buffered and retried");
                    }
                    self.shared.progress.send_modify(|p| p.fail(e.kind()));
                    failing = Some(e);
                    if self.shared.closing.load(Ordering::Relaxed) {
                        attempts_while_closing += 1;
                        let closing_since = *closing_since.get_or_insert_with(Instant::now);
                        // A damaged file does not heal: no point retrying it while closing.
                        // Bounded in attempts and in time (an attempt may wait for a lock).
                        if attempts_while_closing >= 5
                            || closing_since.elapsed() >= CLOSING_RETRIES_FOR
                            || self.shared.is_corrupt()
                        {
                            tracing::error!("closing with the event log still failing: buffered events are lost");
                            break;
                        }
                    }
                    if self.shared.is_corrupt() {
                        // Nothing will be written again: answer compaction and lease requests
                        // (with the corruption) instead of queuing them behind this batch forever.
                        while let Some(request) = self.shared.take_request() {
                            self.serve(request).await;
                        }
                    } else {
                        // Side writes are tried now rather than behind this batch: they fail
                        // fast with the store's error (or succeed), never wait for the outage.
                        for request in self.shared.take_side_requests() {
                            self.serve(request).await;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(limits.max_backoff);
                }
            }
        }
        if let Some(held) = self.lease.take()
            && !self.shared.is_corrupt()
        {
            let _ = self.store.release_lease(&held.holder).await;
        }
        self.shared.stop_requests();
        (self.store, failing.is_none())
    }

    /// Renews the lease a third of its ttl after the last renewal. A failed renewal is retried
    /// at the next turn; if another holder took it meanwhile (we were stalled past the ttl), we
    /// stop claiming it and the stream conflict guard takes over.
    async fn renew_lease(&mut self) {
        let Some(held) = &self.lease else { return };
        if held.renewed.elapsed() < held.ttl / 3 || self.shared.is_corrupt() {
            // A damaged file is not written, the lease row included: the lease lapses.
            return;
        }
        let (holder, ttl) = (held.holder.clone(), held.ttl);
        match self
            .store
            .acquire_lease(&holder, now_ms() as i64, ttl.as_millis() as i64)
            .await
        {
            Ok(lease) if lease.holder == holder => {
                if let Some(h) = &mut self.lease {
                    h.renewed = Instant::now();
                }
            }
            Ok(lease) => {
                tracing::error!(holder = lease.holder, "the writer lease was taken by another process");
                self.lease = None;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the writer lease failed; retrying"),
        }
    }

    async fn serve(&mut self, request: Request) {
        if let Some(e) = self.shared.corruption() {
            match request {
                Request::Lease { reply, .. } => drop(reply.send(Err(e))),
                Request::Compact { reply, .. } => drop(reply.send(Err(e))),
                Request::Anchor { reply } => drop(reply.send(Err(e))),
                Request::Side(work) => work(Err(e)).await,
            }
            return;
        }
        match request {
            Request::Side(work) => self.store.side(work).await,
            Request::Lease {
                holder,
                ttl,
                dead,
                reply,
            } => {
                let (now, ttl_ms) = (now_ms() as i64, ttl.as_millis() as i64);
                let result = match &dead {
                    Some(dead) => self.store.take_over_lease(&holder, now, ttl_ms, dead).await,
                    None => self.store.acquire_lease(&holder, now, ttl_ms).await,
                };
                if let Ok(lease) = &result
                    && lease.holder == holder
                {
                    self.lease = Some(Held {
                        holder,
                        ttl,
                        renewed: Instant::now(),
                    });
                }
                let _ = reply.send(result);
            }
            Request::Anchor { reply } => {
                // Its seq is taken only once its row committed: nothing to roll back.
                let _ = reply.send(self.store.anchor(now_ms(), &mut self.seqs).await);
            }
            Request::Compact { watermark, reply } => {
                // Seqs handed to summaries count only if the transaction commits.
                let backup = self.seqs.clone();
                let result = self.store.compact(watermark, &mut self.seqs).await;
                if result.is_err() {
                    self.seqs = backup;
                }
                let _ = reply.send(result);
            }
        }
    }

    /// Counts records of fenced streams into `gap` (created if there is none yet).
    fn drop_into_gap(&self, gap: &mut Option<Gap>, dropped: &[(u64, Record)]) {
        if dropped.is_empty() {
            return;
        }
        let at = now_ms();
        let gap = gap.get_or_insert_with(|| Gap {
            from_ms: at,
            ..Gap::default()
        });
        gap.to_ms = gap.to_ms.max(at);
        for (_, r) in dropped {
            *gap.dropped
                .entry(r.stream.to_string())
                .or_default()
                .entry(r.body.kind().to_owned())
                .or_default() += 1;
        }
        self.shared
            .stats
            .dropped
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
    }

    /// Writes `records` and `gap` in one append; on success every ticket up to `settles` is
    /// settled.
    async fn commit(
        &mut self,
        records: &[(u64, Record)],
        gap: Option<&Gap>,
        settles: Option<u64>,
    ) -> Result<(), StoreError> {
        if let Some(e) = self.shared.corruption() {
            return Err(e);
        }
        let wanted = self.shared.max_size.load(Ordering::Relaxed);
        if wanted != self.shared.max_size_applied.load(Ordering::Relaxed) {
            self.store.set_max_size((wanted != u64::MAX).then_some(wanted)).await?;
            self.shared.max_size_applied.store(wanted, Ordering::Relaxed);
        }
        let started = Instant::now();
        let drafts = pack(records, gap);
        // Seqs continue each stream's; a stream seen for the first time is looked up once.
        let mut next: HashMap<Arc<str>, u64> = HashMap::new();
        let mut rows = Vec::with_capacity(drafts.len());
        let mut tickets = Vec::with_capacity(drafts.len());
        let mut calls = 0u64;
        for d in drafts {
            tickets.push(d.ticket);
            let seq = match next.get_mut(&d.stream) {
                Some(s) => s,
                None => {
                    let last = match self.seqs.get(&d.stream) {
                        Some(&s) => s,
                        None => self.store.last_seq(&d.stream).await?,
                    };
                    next.entry(d.stream.clone()).or_insert(last)
                }
            };
            *seq += 1;
            let payload = match d.payload {
                Payload::Encoded(p) => p,
                Payload::Batch(b) => {
                    calls += u64::from(b.count);
                    rmp_serde::to_vec_named(&b).expect("a batch always encodes")
                }
            };
            rows.push(Row {
                node: self.node.clone(),
                stream: d.stream,
                seq: *seq,
                event_type: d.event_type,
                event_version: d.event_version,
                recorded_at: d.recorded_at,
                payload,
            });
        }
        let before = self.shared.progress.borrow().position;
        let position = if rows.is_empty() {
            before
        } else {
            self.store.append(&rows).await?
        };
        // One writer per file: its rows take positions after everything it committed before
        // (AUTOINCREMENT never reuses one), which is what the tracked positions below rely on.
        assert!(
            rows.is_empty() || position >= before + rows.len() as i64,
            "the log's positions went backwards: {before} then {position} for {} rows",
            rows.len()
        );
        self.seqs.extend(next);
        {
            // One writer, one transaction: the rows took consecutive positions ending at `position`.
            let mut tracked = self.shared.positions.lock().unwrap_or_else(|e| e.into_inner());
            if !tracked.is_empty() {
                let first = position - rows.len() as i64 + 1;
                for (i, ticket) in tickets.iter().enumerate() {
                    if let Some(slot) = tracked.get_mut(ticket) {
                        *slot = Some(first + i as i64);
                    }
                }
            }
        }
        let elapsed = started.elapsed().as_micros() as u64;
        let s = &self.shared.stats;
        s.events.fetch_add(rows.len() as u64, Ordering::Relaxed);
        s.calls.fetch_add(calls, Ordering::Relaxed);
        s.commits.fetch_add(1, Ordering::Relaxed);
        s.gaps.fetch_add(u64::from(gap.is_some()), Ordering::Relaxed);
        s.last_commit_us.store(elapsed, Ordering::Relaxed);
        s.commit_us_total.fetch_add(elapsed, Ordering::Relaxed);
        self.shared.progress.send_modify(|p| {
            if let Some(t) = settles {
                p.ticket = p.ticket.max(t);
            }
            p.position = position;
            // A corruption found while this commit ran stays visible.
            p.failing = self.shared.is_corrupt().then_some("corrupt");
            if p.failing.is_none() {
                p.failing_since_ms = None;
            }
        });
        Ok(())
    }
}

impl CheckReport for Shared {
    fn set_integrity(&self, integrity: Integrity) {
        Shared::set_integrity(self, integrity);
    }
    fn mark_corrupt(&self, e: StoreError) {
        Shared::mark_corrupt(self, e);
    }
}
