//! What goes into the log and comes out of it.
//!
//! Callers submit [`Body`]s per stream. The writer packs each stream's consecutive call outcomes
//! into one `call_batch` event per group commit (9 bytes per call), and encodes everything else
//! as one event each, so a stream's order is kept exactly: `[calls…] [transition] [calls…]`
//! becomes `batch, transition, batch`.

use crate::breaker::codec::{self, DecodeError};
use crate::breaker::{Breaker, CallRecorded, Event, Outcome};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Event type of a packed run of call outcomes.
pub const CALL_BATCH: &str = "call_batch";
/// Event type of a breaker snapshot.
pub const SNAPSHOT: &str = "snapshot";
/// Event type of a record of events dropped because the buffer overflowed.
pub const GAP: &str = "gap";
/// Version of `snapshot` and `gap` (and of `call_summary`).
pub const VERSION: u32 = 1;
/// Version of `call_batch` written now: 2 added the `cancelled` outcome (see [`CallBatch`]);
/// version 1 rows are still read.
pub const CALL_BATCH_VERSION: u32 = 2;
/// Stream of the journal's own events (gaps).
pub const JOURNAL_STREAM: &str = "_journal";

/// What a caller submits for one stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// An event of the breaker core; `CallRecorded` is packed into batches.
    Breaker(Event),
    /// The breaker's whole state, so recovery need not fold the stream from the start.
    Snapshot {
        /// When it was taken (Unix epoch ms).
        at_ms: u64,
        /// The state.
        breaker: Box<Breaker>,
    },
    /// An event of a layer above (operator commands, alerts, …), already encoded.
    Other {
        /// Its type name.
        event_type: &'static str,
        /// Its version.
        event_version: u32,
        /// When it happened (Unix epoch ms).
        at_ms: u64,
        /// MessagePack map.
        payload: Vec<u8>,
    },
}

impl Body {
    /// The event type this body is stored as.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Breaker(Event::CallRecorded(_)) => CALL_BATCH,
            Body::Breaker(e) => codec::encode_type(e),
            Body::Snapshot { .. } => SNAPSHOT,
            Body::Other { event_type, .. } => event_type,
        }
    }
}

/// A submitted body with its stream.
#[derive(Clone, Debug)]
pub struct Record {
    /// The stream (breaker key).
    pub stream: Arc<str>,
    /// What happened.
    pub body: Body,
}

/// A row ready to insert (the writer assigns `seq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The node that writes it (see [`crate::journal::JournalOptions::node`]).
    pub node: Arc<str>,
    /// Stream.
    pub stream: Arc<str>,
    /// Per-stream sequence.
    pub seq: u64,
    /// Type.
    pub event_type: &'static str,
    /// Version.
    pub event_version: u32,
    /// When (ms).
    pub recorded_at: u64,
    /// Payload.
    pub payload: Vec<u8>,
}

/// An event of a node's own log with its chain link, as shipped to (and read back from) the
/// fleet's log (`journal::fleet`); `event.position` is its position in the node's own log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shippable {
    /// The event.
    pub event: StoredEvent,
    /// Its link in the stream's tamper-evident chain (None: written before the chain).
    pub hash: Option<Vec<u8>>,
}

/// A row as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredEvent {
    /// Global position.
    pub position: i64,
    /// The node that wrote it; empty for events written before nodes were recorded.
    pub node: String,
    /// Stream.
    pub stream: String,
    /// Per-stream sequence.
    pub seq: i64,
    /// Type.
    pub event_type: String,
    /// Version.
    pub event_version: u32,
    /// When (ms).
    pub recorded_at: i64,
    /// Payload.
    #[serde(skip)]
    pub payload: Vec<u8>,
}

/// Outcomes of one stream packed into one event. Layout of `calls`, 9 bytes per call, little
/// endian: `dt_ms: u32` (after `at_ms`), `latency_ms: u32` (saturating), `code: u8`:
///
/// - version 2: bits 0–2 outcome (success, failure, timeout, ignored, cancelled), bit 3 slow,
///   bit 4 stale;
/// - version 1 (written before `cancelled` existed): bits 0–1 outcome (success, failure,
///   timeout, ignored), bit 2 slow, bit 3 stale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallBatch {
    /// Completion time of the first call.
    pub at_ms: u64,
    /// Number of calls.
    pub count: u32,
    /// The packed calls.
    #[serde(with = "serde_bytes")]
    pub calls: Vec<u8>,
    /// The layout of `calls`: the row's `event_version` (not stored in the payload).
    #[serde(skip, default = "current_layout")]
    layout: u32,
}

fn current_layout() -> u32 {
    CALL_BATCH_VERSION
}

const CALL_BYTES: usize = 9;

fn outcome_code(o: Outcome) -> u8 {
    match o {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Timeout => 2,
        Outcome::Ignored => 3,
        Outcome::Cancelled => 4,
    }
}

const OUTCOMES: [Outcome; 5] = [
    Outcome::Success,
    Outcome::Failure,
    Outcome::Timeout,
    Outcome::Ignored,
    Outcome::Cancelled,
];

/// (outcome mask, slow bit, stale bit, known bits) of a layout.
fn code_bits(layout: u32) -> (u8, u8, u8, u8) {
    if layout == 1 { (3, 4, 8, 0x0F) } else { (7, 8, 16, 0x1F) }
}

impl CallBatch {
    /// An empty batch starting at `at_ms`.
    pub fn new(at_ms: u64) -> Self {
        CallBatch {
            at_ms,
            count: 0,
            calls: Vec::new(),
            layout: CALL_BATCH_VERSION,
        }
    }

    /// A stored batch: its payload and the row's `event_version`, checked. Bad bytes or an
    /// unknown version are an error naming what is wrong, never a panic.
    pub fn from_stored(event_version: u32, payload: &[u8]) -> Result<CallBatch, String> {
        if !(1..=CALL_BATCH_VERSION).contains(&event_version) {
            return Err(format!(
                "call_batch version {event_version} is not one this build reads"
            ));
        }
        let mut batch: CallBatch = rmp_serde::from_slice(payload).map_err(|e| e.to_string())?;
        batch.layout = event_version;
        batch.check()?;
        Ok(batch)
    }

    /// Adds a call; `false` (nothing added) if it lies more than `u32::MAX` ms after `at_ms`,
    /// or before it: start a new batch then.
    pub fn push(&mut self, call: &CallRecorded) -> bool {
        let Some(dt) = call.at_ms.checked_sub(self.at_ms).and_then(|d| u32::try_from(d).ok()) else {
            return false;
        };
        let latency = u32::try_from(call.latency_ms).unwrap_or(u32::MAX);
        debug_assert_eq!(self.layout, CALL_BATCH_VERSION, "only the current layout is written");
        let code = outcome_code(call.outcome) | (u8::from(call.slow) << 3) | (u8::from(call.stale) << 4);
        self.calls.extend_from_slice(&dt.to_le_bytes());
        self.calls.extend_from_slice(&latency.to_le_bytes());
        self.calls.push(code);
        self.count += 1;
        true
    }

    /// The calls, in order. Malformed bytes end the iteration early; [`CallBatch::check`] tells.
    pub fn iter(&self) -> impl Iterator<Item = CallRecorded> + '_ {
        let (outcome, slow, stale, _) = code_bits(self.layout);
        self.calls.chunks_exact(CALL_BYTES).map_while(move |c| {
            let dt = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let latency = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            Some(CallRecorded {
                at_ms: self.at_ms.saturating_add(u64::from(dt)),
                outcome: *OUTCOMES.get(usize::from(c[8] & outcome))?,
                latency_ms: u64::from(latency),
                slow: c[8] & slow != 0,
                stale: c[8] & stale != 0,
            })
        })
    }

    /// Checks the layout: `count` calls of 9 bytes, no unknown bits.
    pub fn check(&self) -> Result<(), String> {
        if self.calls.len() != self.count as usize * CALL_BYTES {
            return Err(format!(
                "call batch says {} calls but holds {} bytes",
                self.count,
                self.calls.len()
            ));
        }
        let (outcome, _, _, known) = code_bits(self.layout);
        if self.calls.chunks_exact(CALL_BYTES).any(|c| c[8] & !known != 0) {
            return Err("call batch has unknown flag bits".to_owned());
        }
        if self
            .calls
            .chunks_exact(CALL_BYTES)
            .any(|c| usize::from(c[8] & outcome) >= OUTCOMES.len())
        {
            return Err("call batch has an unknown outcome code".to_owned());
        }
        Ok(())
    }
}

/// Events dropped because the journal's buffer was full: the loss is recorded, never silent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// First drop (ms).
    pub from_ms: u64,
    /// Last drop (ms).
    pub to_ms: u64,
    /// Dropped events by stream, then by event type.
    pub dropped: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A decoded stored event.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// Core events (a call batch gives one per call).
    Breaker(Vec<Event>),
    /// A snapshot.
    Snapshot(Box<Breaker>),
    /// A gap.
    Gap(Gap),
    /// Per-minute summaries of compacted calls (the calls themselves are gone).
    Summary(CallSummary),
    /// Rejections, fallbacks and dropped outcomes counted by the actor.
    Stats(CallStats),
    /// An operator's command (who, from where, why).
    Command(OperatorCommand),
    /// A command asked for by a process that does not hold the lease.
    Request(CommandRequest),
    /// An attempt to deliver an alert.
    Delivery(AlertDelivery),
    /// The heads of the streams written since the previous anchor.
    Anchor(ChainAnchor),
    /// A type this build does not know (a newer build added it): skipped by folds.
    Other,
}

/// Decodes a stored event: every kind the log holds, each with its version checked (a version
/// this build has no decoder for is an error naming it). Bad bytes are an error, never a panic.
pub fn decode(e: &StoredEvent) -> Result<Decoded, DecodeError> {
    let malformed = |source| DecodeError::Malformed {
        event_type: e.event_type.clone(),
        event_version: e.event_version,
        source,
    };
    match e.event_type.as_str() {
        SNAPSHOT | GAP | CALL_SUMMARY if e.event_version != VERSION => Err(DecodeError::UnknownVersion {
            event_type: e.event_type.clone(),
            event_version: e.event_version,
        }),
        CALL_BATCH => Ok(Decoded::Breaker(
            decode_batch(e)?.iter().map(Event::CallRecorded).collect(),
        )),
        SNAPSHOT => Ok(Decoded::Snapshot(Box::new(
            rmp_serde::from_slice(&e.payload).map_err(malformed)?,
        ))),
        GAP => Ok(Decoded::Gap(rmp_serde::from_slice(&e.payload).map_err(malformed)?)),
        CALL_SUMMARY => Ok(Decoded::Summary(rmp_serde::from_slice(&e.payload).map_err(malformed)?)),
        CALL_STATS => Ok(Decoded::Stats(decode_record(e)?)),
        OPERATOR_COMMAND => Ok(Decoded::Command(decode_record(e)?)),
        COMMAND_REQUEST => Ok(Decoded::Request(decode_record(e)?)),
        ALERT_DELIVERY => Ok(Decoded::Delivery(decode_record(e)?)),
        CHAIN_ANCHOR => Ok(Decoded::Anchor(decode_record(e)?)),
        t if codec::is_core_type(t) => Ok(Decoded::Breaker(vec![codec::decode(t, e.event_version, &e.payload)?])),
        // A type a newer build added: nothing here folds it; `audit` shows it by name.
        _ => Ok(Decoded::Other),
    }
}

/// A `call_batch` row's calls, checked, without building an event per call (what [`decode`]
/// does): folds over millions of calls iterate [`CallBatch::iter`] instead.
pub fn decode_batch(e: &StoredEvent) -> Result<CallBatch, DecodeError> {
    let malformed = |source| DecodeError::Malformed {
        event_type: e.event_type.clone(),
        event_version: e.event_version,
        source,
    };
    if e.event_type != CALL_BATCH || !(1..=CALL_BATCH_VERSION).contains(&e.event_version) {
        return Err(DecodeError::UnknownVersion {
            event_type: e.event_type.clone(),
            event_version: e.event_version,
        });
    }
    CallBatch::from_stored(e.event_version, &e.payload).map_err(|m| malformed(rmp_serde::decode::Error::Syntax(m)))
}

/// Event type of per-minute summaries of compacted call batches.
pub const CALL_SUMMARY: &str = "call_summary";

/// Upper bounds (ms, inclusive) of the latency histogram buckets; a last bucket takes the rest.
/// Fixed, so histograms of any two minutes merge by adding.
pub const LATENCY_BOUNDS_MS: [u32; 14] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000];

/// One minute of one stream's calls, folded from call batches by compaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteSummary {
    /// Start of the minute (Unix epoch ms).
    pub minute_ms: u64,
    /// Successful calls.
    pub successes: u32,
    /// Failed calls.
    pub failures: u32,
    /// Timed-out calls.
    pub timeouts: u32,
    /// Ignored calls.
    pub ignored: u32,
    /// Cancelled calls (the caller gave up before they ended).
    #[serde(default)]
    pub cancelled: u32,
    /// Slow calls (any outcome).
    pub slow: u32,
    /// Calls from an earlier episode.
    pub stale: u32,
    /// Sum of latencies.
    pub latency_total_ms: u64,
    /// Largest latency.
    pub latency_max_ms: u32,
    /// Calls per latency bucket ([`LATENCY_BOUNDS_MS`], plus one for the rest).
    pub latency_buckets: Vec<u32>,
    /// Sum of latencies by outcome (success, failure, timeout, ignored, cancelled), so a
    /// projection rebuilt over compacted calls gives `/metrics` the same per-kind sums as the
    /// one that folded the calls. Summaries written before it have none (all 0).
    #[serde(default, skip_serializing_if = "no_latency")]
    pub latency_ms_by_outcome: [u64; 5],
}

/// Nothing added to any outcome's sum: the field is left out, as summaries wrote it before.
fn no_latency(sums: &[u64; 5]) -> bool {
    sums.iter().all(|&n| n == 0)
}

impl MinuteSummary {
    /// Adds one call.
    pub fn add(&mut self, call: &CallRecorded) {
        match call.outcome {
            Outcome::Success => self.successes += 1,
            Outcome::Failure => self.failures += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Cancelled => self.cancelled += 1,
        }
        self.slow += u32::from(call.slow);
        self.stale += u32::from(call.stale);
        let latency = u32::try_from(call.latency_ms).unwrap_or(u32::MAX);
        self.latency_total_ms += u64::from(latency);
        let by_outcome = match call.outcome {
            Outcome::Success => 0,
            Outcome::Failure => 1,
            Outcome::Timeout => 2,
            Outcome::Ignored => 3,
            Outcome::Cancelled => 4,
        };
        self.latency_ms_by_outcome[by_outcome] += u64::from(latency);
        self.latency_max_ms = self.latency_max_ms.max(latency);
        if self.latency_buckets.is_empty() {
            self.latency_buckets = vec![0; LATENCY_BOUNDS_MS.len() + 1];
        }
        let bucket = LATENCY_BOUNDS_MS.partition_point(|&b| b < latency);
        self.latency_buckets[bucket] += 1;
    }

    /// All calls of the minute.
    pub fn calls(&self) -> u64 {
        u64::from(self.successes)
            + u64::from(self.failures)
            + u64::from(self.timeouts)
            + u64::from(self.ignored)
            + u64::from(self.cancelled)
    }
}

/// Summaries of one stream's compacted calls, one event per stream and hour (or more: see
/// `folded_by`).
///
/// It is appended at a new log position, after the batches it replaces, so a projection tailing
/// the log would meet those calls twice: `folded_by` says which tailers already counted them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSummary {
    /// The minutes, in order.
    pub minutes: Vec<MinuteSummary>,
    /// The highest log position of the call batches it replaced (0: written before this was
    /// recorded).
    #[serde(default)]
    pub through_position: i64,
    /// The tailing projections (rows of the `projections` table, by name) whose checkpoint was at
    /// or past `through_position` when it was written: they had folded every call it holds, and
    /// skip it. Compaction splits a stream's batches at every such checkpoint, so no summary
    /// holds calls from both sides of one. A projection folding from before the summary existed
    /// (a rebuild) counts it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folded_by: Vec<String>,
    /// The call batches it replaced, each with its link of the tamper-evident chain, so
    /// `breakerbox verify` follows each stream's chain across compaction (and a row deleted any
    /// other way is still found). Empty in summaries written before the chain existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<ReplacedEvent>,
}

/// Event type of a chain anchor (stream `_journal`).
pub const CHAIN_ANCHOR: &str = "chain_anchor";

/// Payload of a `chain_anchor` event: the heads of the streams written since the previous
/// anchor, as the writer committed them. `breakerbox verify` checks each is still on its
/// stream's chain, so a stream cut short (or rewritten) before an anchor is found even without
/// an exported one; the anchors are chained in `_journal` like any event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainAnchor {
    /// When it was written.
    pub at_ms: u64,
    /// The heads.
    pub heads: Vec<super::Head>,
}

impl Recorded for ChainAnchor {
    const TYPE: &'static str = CHAIN_ANCHOR;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// An event compaction removed: its seq and its hash (hex; `None` if it had none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedEvent {
    /// Its seq in its stream.
    pub seq: u64,
    /// Its hash, hex.
    pub hash: Option<String>,
}

// Events of the runtime layer, defined here so every reader (projections, audit) decodes them
// without depending on the actors.

/// Event type of an operator's command (who, from where, why); the transition follows it.
pub const OPERATOR_COMMAND: &str = "operator_command";
/// Event type of call counts that are not outcomes: rejections and fallbacks.
pub const CALL_STATS: &str = "call_stats";

/// Who asked for a command, from where, and why: the audit trail's "who did what".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operator {
    /// A person or a token's name, e.g. `alice@ops-laptop` or `token:oncall`.
    pub who: String,
    /// `cli`, `http`, `dashboard` or `library`.
    pub from: String,
    /// Free text.
    pub why: String,
}

/// The longest reason a command is recorded with, in bytes (UTF-8): an audit line, not a file.
pub const MAX_REASON_BYTES: usize = 1_024;

/// Checks an operator's reason before anything is applied or stored, for every surface (the
/// CLI, the HTTP API, the dashboard): some text, at most [`MAX_REASON_BYTES`], on one line, with
/// no control characters or bidirectional overrides (a reason is shown on terminals and in
/// spreadsheets: see [`crate::replay::printable`] for logs written before this rule). The
/// error names what is wrong.
pub fn check_reason(why: &str) -> Result<(), String> {
    if why.trim().is_empty() {
        return Err("a reason is required: say why (it is recorded in the audit trail)".into());
    }
    if why.len() > MAX_REASON_BYTES {
        return Err(format!(
            "the reason is {} bytes: at most {MAX_REASON_BYTES} are recorded",
            why.len()
        ));
    }
    if let Some((i, c)) = why
        .char_indices()
        .find(|(_, c)| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    {
        return Err(format!(
            "the reason has a control character ({}) at byte {i}: give one line of plain text",
            c.escape_unicode()
        ));
    }
    Ok(())
}

/// Payload of an `operator_command` event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OperatorCommand {
    /// When.
    pub at_ms: u64,
    /// What.
    pub command: crate::breaker::Command,
    /// Who, from where, why.
    pub operator: Operator,
    /// The state it found.
    pub from_state: crate::breaker::State,
    /// The state it left.
    pub to_state: crate::breaker::State,
    /// The log position of the `command_request` it answers, when another process asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_position: Option<i64>,
    /// The fleet command it applies (its seq in the fleet's stream, `docs/fleet.md`), when the
    /// fleet asked. Absent from every record written before fleet commands, which read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_command: Option<i64>,
}

/// Event type of a command asked for by a process that does not hold the writer lease.
pub const COMMAND_REQUEST: &str = "command_request";

/// Payload of a `command_request`: the lease holder applies it and answers with an
/// `operator_command` naming this request's position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// When it was asked.
    pub at_ms: u64,
    /// The breaker key.
    pub target: String,
    /// What.
    pub command: crate::breaker::Command,
    /// Who, from where, why.
    pub operator: Operator,
}

/// Payload of a `call_stats` event: counts since the previous one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallStats {
    /// End of the period (ms).
    pub at_ms: u64,
    /// Calls rejected.
    pub rejected: u64,
    /// Calls answered by a fallback.
    pub fallbacks: u64,
    /// Outcomes dropped because the breaker's buffer was full (the actor fell behind): a loss,
    /// recorded so it is never silent.
    #[serde(default)]
    pub dropped: u64,
}

/// Event type of one attempt to deliver an alert to a sink (a webhook): delivered, retrying,
/// rejected or abandoned. Written by the notifier (`crate::alerts`), so the audit trail and the
/// dashboard show whether the page went out.
pub const ALERT_DELIVERY: &str = "alert_delivery";
/// Stream of the notifier's delivery records (one notifier per log file; see `docs/alerts.md`).
/// `breakerbox alerts test` writes to `_alerts/<its own name>` instead, so it never races it.
pub const ALERTS_STREAM: &str = "_alerts";

/// What an alert message announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// An episode started: the breaker opened (or was forced open).
    Firing,
    /// The episode ended: the breaker closed and stayed closed for the quiet period.
    Resolved,
    /// `breakerbox alerts test`: a message that only checks the wiring.
    Test,
}

impl AlertStatus {
    /// `firing`, `resolved` or `test`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Test => "test",
        }
    }
}

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// The sink answered 2xx: the page went out.
    Delivered,
    /// A transport error, 5xx or 429: another attempt is scheduled (`next_attempt_ms`).
    Retrying,
    /// Another 4xx (or a redirect): the sink refused the message; it is not retried. Fix the
    /// sink's url or format.
    Rejected,
    /// Retried until `give_up_after` passed (or the sink was removed from the config).
    Abandoned,
}

impl DeliveryOutcome {
    /// `delivered`, `retrying`, `rejected` or `abandoned`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retrying => "retrying",
            DeliveryOutcome::Rejected => "rejected",
            DeliveryOutcome::Abandoned => "abandoned",
        }
    }
}

/// Payload of an `alert_delivery` event (version 1). Never holds the sink's URL (a secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDelivery {
    /// When the attempt ended (ms).
    pub at_ms: u64,
    /// The breaker key the alert is about (`stripe`, `stripe/customers.create`); empty for a test.
    pub breaker: String,
    /// Firing, resolved or test.
    pub status: AlertStatus,
    /// The sink's configured name.
    pub sink: String,
    /// The alert's fingerprint: a hash of the breaker key and the episode's start.
    pub fingerprint: String,
    /// When the episode started (ms).
    pub episode_start_ms: u64,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it ended.
    pub outcome: DeliveryOutcome,
    /// The HTTP status, when the sink answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// What went wrong (never the URL), when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due, for `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_ms: Option<u64>,
}

/// A record kind of the runtime and the notifier, stored as a MessagePack map with its type name
/// and version beside the payload (`event_type`, `event_version`). One encoder
/// ([`Body::record`]) and one decoder ([`decode_record`]) for every kind; a version this build
/// has no decoder for is an error naming the version it met, never a guess.
pub trait Recorded: Serialize + serde::de::DeserializeOwned {
    /// The event type it is stored as.
    const TYPE: &'static str;
    /// The version this build writes (and the only one it reads, until a second exists).
    const VERSION: u32;
    /// When it happened.
    fn at_ms(&self) -> u64;
}

impl Recorded for OperatorCommand {
    const TYPE: &'static str = OPERATOR_COMMAND;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

impl Recorded for CommandRequest {
    const TYPE: &'static str = COMMAND_REQUEST;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

impl Recorded for CallStats {
    const TYPE: &'static str = CALL_STATS;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// Event type of a fleet alert's message (`docs/alerts.md`, "A fleet"): written by the one node
/// that leads the fleet's alerts, which its notifier delivers.
pub const FLEET_ALERT: &str = "fleet_alert";
/// Stream of the fleet alert leader's records.
pub const FLEET_ALERTS_STREAM: &str = "_fleet_alerts";

/// Payload of a `fleet_alert`: one breaker's fleet-wide episode fired or resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FleetAlert {
    /// When it was decided (the database's clock).
    pub at_ms: u64,
    /// `firing` or `resolved`.
    pub status: AlertStatus,
    /// The breaker's key.
    pub breaker: String,
    /// The episode's fingerprint (the breaker and its start).
    pub fingerprint: String,
    /// When the episode started (the database's clock).
    pub starts_at_ms: u64,
    /// When it ended (its last node closed), for `resolved`.
    #[serde(default)]
    pub ends_at_ms: Option<u64>,
    /// The nodes on which it is OPEN or FORCED_OPEN (firing), by name.
    pub nodes_open: Vec<String>,
    /// The most nodes it was open on at once in the episode.
    pub nodes_max: u32,
    /// Live nodes reporting the breaker.
    pub nodes_live: u32,
    /// `service`, `nodes` or `none` (`replay::fleet::Trouble`).
    pub trouble: String,
    /// The state most of its open nodes are in: `open` or `forced_open`.
    pub opened_to: crate::breaker::State,
}

impl Recorded for FleetAlert {
    const TYPE: &'static str = FLEET_ALERT;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// Event type of the owner's answer to a `command_request` it refused (a fleet override stands
/// on the breaker): the requester is told why instead of waiting for an answer that never comes.
pub const COMMAND_REFUSED: &str = "command_refused";

/// Payload of a `command_refused`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRefused {
    /// When (the owner's clock).
    pub at_ms: u64,
    /// The log position of the `command_request` it answers.
    pub request_position: i64,
    /// Why, naming what stands in the way.
    pub why: String,
}

impl Recorded for CommandRefused {
    const TYPE: &'static str = COMMAND_REFUSED;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

/// Event type of a quorum hint a node's breaker took or, in shadow mode, would have taken
/// (`docs/fleet.md`, "Quorum hints"). An opening in `on` mode is the breaker's own transition
/// (reason `fleet_quorum`); this record says what shadow mode saw.
pub const QUORUM_HINT: &str = "quorum_hint";

/// Payload of a `quorum_hint`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuorumHint {
    /// When (this node's clock).
    pub at_ms: u64,
    /// The other nodes that opened the breaker by their own trip rules.
    pub nodes: Vec<String>,
    /// Live nodes reporting it.
    pub live: u32,
    /// The window their openings fell in.
    pub within_ms: u64,
    /// `would_open`: shadow mode; nothing changed.
    pub outcome: String,
}

impl Recorded for QuorumHint {
    const TYPE: &'static str = QUORUM_HINT;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

impl Recorded for AlertDelivery {
    const TYPE: &'static str = ALERT_DELIVERY;
    const VERSION: u32 = 1;
    fn at_ms(&self) -> u64 {
        self.at_ms
    }
}

impl Body {
    /// A record of the runtime or the notifier, encoded with its type and version.
    pub fn record<R: Recorded>(r: &R) -> Body {
        Body::Other {
            event_type: R::TYPE,
            event_version: R::VERSION,
            at_ms: r.at_ms(),
            payload: rmp_serde::to_vec_named(r).expect("plain data encodes"),
        }
    }
}

/// A stored record of kind `R`: its type and version checked, then its payload.
pub fn decode_record<R: Recorded>(e: &StoredEvent) -> Result<R, DecodeError> {
    if e.event_type != R::TYPE {
        return Err(DecodeError::UnknownType {
            event_type: e.event_type.clone(),
        });
    }
    if e.event_version != R::VERSION {
        return Err(DecodeError::UnknownVersion {
            event_type: e.event_type.clone(),
            event_version: e.event_version,
        });
    }
    rmp_serde::from_slice(&e.payload).map_err(|source| DecodeError::Malformed {
        event_type: e.event_type.clone(),
        event_version: e.event_version,
        source,
    })
}
