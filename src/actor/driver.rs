//! The logic of a breaker's actor as a plain driver: no actix, no timers, no clock reads. It
//! folds what callers left in the gate into the core, in the core's order; runs the core's
//! timers when told; decides and applies operator commands all-or-none with their records;
//! hands every event to the log; and publishes the admission view callers read.
//!
//! Time comes in as an argument. The actix actor (`service.rs`) is a thin shell that reads the
//! clock and arms timers; the runtime's deterministic simulation (`sim.rs`) drives the same
//! driver with a simulated clock and store.

use super::command::Decided;
use super::gate::{self, Gate, Record};
use crate::breaker::{Breaker, Command, Decision, Event, Outcome, Permit, Policy, State};
use crate::journal::{Appender, Body, CallStats, JournalError, Operator, Tracked};
use std::sync::Arc;
use std::time::Duration;

/// Settings of the actors.
#[derive(Clone, Debug)]
pub struct ActorOptions {
    /// How often buffered successes are folded into the breaker (failures are at once).
    pub flush_interval: Duration,
    /// A snapshot of the breaker is written every this many events, so recovery stays short.
    pub snapshot_every: u64,
    /// How long recorded calls may wait in the actor before they go to the journal, so a
    /// breaker's calls share rows: a row costs the same to read whether it holds one call or
    /// thousands, so fewer, fuller rows make every replay and rebuild faster and the log
    /// smaller. Transitions, commands, snapshots and shutdown take the waiting calls with them
    /// at once, so the log's order never changes; what a crash can lose grows to this (calls
    /// are never acknowledged one by one; see docs/durability.md). Zero: no wait.
    pub outcome_hold: Duration,
    /// How long an operator command waits for its records to be durable before it is answered
    /// anyway as applied but not yet durable (the log failing, and since when): a caller is
    /// never left without an answer while the log is down.
    pub command_wait: Duration,
}

impl Default for ActorOptions {
    fn default() -> Self {
        ActorOptions {
            flush_interval: Duration::from_millis(10),
            snapshot_every: 10_000,
            outcome_hold: Duration::from_secs(1),
            command_wait: Duration::from_secs(2),
        }
    }
}

/// Calls held at most per breaker before they go to the journal anyway (one full row).
/// Rows of 1,000 calls already read at tens of millions of outcomes per second; a larger cap would
/// let many breakers release bursts together that fill the journal's buffer (100,000 records).
const HOLD_CAP: usize = 1_000;

/// An operator command applied: in force, its records queued (durable once `tracked` is).
pub(crate) struct Applied {
    pub from: State,
    pub to: State,
    pub tracked: Tracked,
}

pub(crate) struct Driver {
    pub key: Arc<str>,
    pub breaker: Breaker,
    pub gate: Arc<Gate>,
    pub log: Appender,
    pub options: ActorOptions,
    /// Records of the current millisecond, held until it is over (see `drain_settled`).
    held: Vec<Record>,
    spare: Vec<Record>,
    records: Vec<Record>,
    events: Vec<Event>,
    since_snapshot: u64,
    /// When the oldest call in `events` was held back (see `ActorOptions::outcome_hold`).
    holding_since_ms: Option<u64>,
    /// Rejections, fallbacks and drops counted since the last `emit`, logged after its calls.
    pending_stats: Option<CallStats>,
    /// The deadline the shell's timer is armed for.
    armed_deadline: Option<u64>,
}

impl Driver {
    pub(crate) fn new(key: Arc<str>, breaker: Breaker, gate: Arc<Gate>, log: Appender, options: ActorOptions) -> Self {
        Driver {
            key,
            breaker,
            gate,
            log,
            options,
            held: Vec::new(),
            spare: Vec::new(),
            records: Vec::new(),
            events: Vec::new(),
            since_snapshot: 0,
            holding_since_ms: None,
            pending_stats: None,
            armed_deadline: None,
        }
    }

    /// Publishes the core's admission view to the gate.
    pub(crate) fn publish(&self) {
        self.gate.publish(&self.breaker.admission());
    }

    /// The core's next deadline, now the one the timer is armed for (the shell arms it).
    pub(crate) fn arm(&mut self) -> Option<u64> {
        self.armed_deadline = self.breaker.next_deadline_ms();
        self.armed_deadline
    }

    /// Whether the core's next deadline moved since the last [`Driver::arm`]: a HALF_OPEN trial
    /// deadline starts with a trial and ends with its outcome, not with a transition. The view
    /// is republished then; the shell re-arms.
    pub(crate) fn deadline_moved(&self) -> bool {
        let moved = self.breaker.next_deadline_ms() != self.armed_deadline;
        if moved {
            self.publish();
        }
        moved
    }

    /// Folds everything callers recorded into the core (commands, ticks, inspection, shutdown).
    /// `now` is read once, as the gate seals the callers' tallies.
    pub(crate) fn drain(&mut self, now: impl Fn() -> u64) {
        self.gate.release_flush();
        let mut fresh = std::mem::take(&mut self.spare);
        let at_ms = self.gate.drain(now, &mut fresh);
        self.records.append(&mut self.held);
        self.records.append(&mut fresh);
        self.spare = fresh;
        self.fold_records(at_ms);
    }

    /// Folds the records of completed instants only (regular drains): an instant's records are
    /// all known before any is folded, so they can be put in `simulate`'s order. Records of the
    /// current millisecond wait for a drain 1 ms later; true when some do.
    pub(crate) fn drain_settled(&mut self, now: impl Fn() -> u64) -> bool {
        self.gate.release_flush();
        let mut fresh = std::mem::take(&mut self.spare);
        let settled_before = self.gate.drain(now, &mut fresh);
        // Held records were pushed before the fresh ones: keep that order.
        self.records.append(&mut self.held);
        self.records.append(&mut fresh);
        self.spare = fresh;
        // Tallies follow the records they may predate, so the unsettled ones are picked out
        // (in order) rather than split off as a suffix.
        self.held
            .extend(self.records.extract_if(.., |r| r.at_ms() >= settled_before));
        self.fold_records(settled_before);
        !self.held.is_empty()
    }

    fn fold_records(&mut self, now_ms: u64) {
        // Stable: records of one instant and class keep their arrival order.
        self.records.sort_by_key(|r| r.order_key());
        let mut records = std::mem::take(&mut self.records);
        for record in records.drain(..) {
            match record {
                Record::Trial { at_ms } => match self.breaker.acquire(at_ms, &mut self.events) {
                    Decision::Permit(p) if p.trial => {}
                    other => tracing::error!(
                        breaker = %self.key,
                        ?other,
                        "a trial permit taken by a caller was not a trial for the core; its outcome will count as stale"
                    ),
                },
                Record::Tally { at_ms, tag, count } => {
                    let permit = Permit {
                        episode: gate::tally_episode(self.breaker.episode(), tag),
                        admitted_at_ms: at_ms,
                        trial: false,
                    };
                    for _ in 0..count {
                        self.breaker.complete(at_ms, permit, Outcome::Success, &mut self.events);
                    }
                }
                Record::Done { at_ms, permit, outcome } => {
                    self.breaker.complete(at_ms, permit, outcome, &mut self.events)
                }
            }
        }
        // Keep the capacity for the next drain.
        self.records = records;
        let rejected = self.gate.rejected.take();
        let fallbacks = self.gate.fallbacks.take();
        let dropped = self.gate.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::error!(breaker = %self.key, dropped, "outcomes dropped: the breaker's buffer was full");
        }
        if rejected + fallbacks + dropped > 0 {
            // Logged after the calls folded so far (which may be waiting, see `emit_or_hold`), so
            // the stream stays in time order; counts of folds that wait together are summed.
            let stats = self.pending_stats.get_or_insert(CallStats {
                at_ms: now_ms,
                rejected: 0,
                fallbacks: 0,
                dropped: 0,
            });
            stats.at_ms = now_ms;
            stats.rejected += rejected;
            stats.fallbacks += fallbacks;
            stats.dropped += dropped;
        }
    }

    /// As [`Driver::emit`], but recorded calls alone wait up to `outcome_hold` when `may_hold`
    /// (the regular drains of a real clock).
    pub(crate) fn emit_or_hold(&mut self, now_ms: u64, may_hold: bool) -> bool {
        let hold_ms = self.options.outcome_hold.as_millis() as u64;
        if may_hold
            && hold_ms > 0
            && self.events.len() < HOLD_CAP
            && self.events.iter().all(|e| matches!(e, Event::CallRecorded(_)))
        {
            let since = *self.holding_since_ms.get_or_insert(now_ms);
            if now_ms.saturating_sub(since) < hold_ms {
                return false;
            }
        }
        self.emit(now_ms)
    }

    /// Hands the events to the log, logs transitions and republishes. True when the breaker
    /// transitioned (the shell re-arms its timer).
    pub(crate) fn emit(&mut self, now_ms: u64) -> bool {
        self.holding_since_ms = None;
        if self.events.is_empty() {
            self.submit_stats();
            return false;
        }
        let mut transitioned = false;
        for event in self.events.drain(..) {
            if let Event::Transitioned(t) = &event {
                transitioned = true;
                log_transition(&self.key, t);
            }
            self.since_snapshot += 1;
            self.log.submit(&self.key, Body::Breaker(event));
        }
        if self.since_snapshot >= self.options.snapshot_every {
            self.since_snapshot = 0;
            self.log.submit(
                &self.key,
                Body::Snapshot {
                    at_ms: now_ms,
                    breaker: Box::new(self.breaker.clone()),
                },
            );
        }
        self.submit_stats();
        if transitioned {
            self.publish();
        }
        transitioned
    }

    fn submit_stats(&mut self) {
        if let Some(stats) = self.pending_stats.take() {
            self.log.submit(&self.key, Body::record(&stats));
        }
    }

    /// Runs the core's timers now, after folding what was recorded before. True when the
    /// breaker transitioned.
    pub(crate) fn tick(&mut self, now: impl Fn() -> u64) -> bool {
        // Records made before the deadline are folded first, so order is kept; the time is read
        // after them, so it is never earlier than a record folded.
        self.drain(&now);
        let now_ms = now();
        self.breaker.tick(now_ms, &mut self.events);
        self.emit(now_ms)
    }

    /// A quorum hint from the fleet now (`Breaker::hint`): a CLOSED breaker opens. True when
    /// it opened.
    pub(crate) fn hint(&mut self, now: impl Fn() -> u64, quorum: crate::breaker::QuorumEvidence) -> bool {
        self.drain(&now);
        let now_ms = now();
        let opened = self.breaker.hint(now_ms, quorum, &mut self.events);
        self.emit(now_ms);
        opened
    }

    /// A new policy (reload, schedule), state kept. True when something was emitted.
    pub(crate) fn set_policy(&mut self, now: impl Fn() -> u64, policy: Policy) -> bool {
        if &policy == self.breaker.policy() {
            return false;
        }
        self.drain(&now);
        let now_ms = now();
        if let Err(e) = self.breaker.set_policy(now_ms, policy, &mut self.events) {
            tracing::error!(breaker = %self.key, error = %e, "a configured policy was refused by the core");
        }
        self.emit(now_ms);
        self.publish();
        true
    }

    /// An operator's command now: in force only if the log takes all its records (the command
    /// and what it did), then published. Refused, nothing applied, when it can't.
    pub(crate) fn operate(
        &mut self,
        now: impl Fn() -> u64,
        command: Command,
        operator: Operator,
        asked: super::command::Asked,
    ) -> Result<Applied, JournalError> {
        self.drain(&now);
        let now_ms = now();
        self.emit(now_ms);
        let decided = Decided::decide(&self.breaker, now_ms, command, operator, asked);
        let (from, to) = (decided.record.from_state, decided.record.to_state);
        let tracked = match self.log.submit_all(&self.key, decided.bodies()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(breaker = %self.key, ?command, error = %e, "operator command refused: the event log cannot take it");
                return Err(e);
            }
        };
        // In force as the log has it, before anything else can fail (logging included).
        self.since_snapshot += decided.events.len() as u64;
        self.breaker = decided.after;
        self.publish();
        for event in &decided.events {
            if let Event::Transitioned(t) = event {
                log_transition(&self.key, t);
            }
        }
        Ok(Applied { from, to, tracked })
    }

    /// Folds everything and submits it with a snapshot (clean shutdown).
    pub(crate) fn settle(&mut self, now: impl Fn() -> u64) {
        self.drain(&now);
        let now_ms = now();
        self.emit(now_ms);
        self.log.submit(
            &self.key,
            Body::Snapshot {
                at_ms: now_ms,
                breaker: Box::new(self.breaker.clone()),
            },
        );
    }

    /// Forgets what was not handed to the log (a restart rebuilds the breaker from the log).
    pub(crate) fn forget_unlogged(&mut self) {
        self.events.clear();
        self.records.clear();
        self.pending_stats = None;
    }
}

fn log_transition(key: &str, t: &crate::breaker::Transition) {
    if t.to == State::Open || t.to == State::ForcedOpen {
        tracing::warn!(breaker = %key, from = %t.from, to = %t.to, reason = t.reason.as_str(), at_ms = t.at_ms, "circuit breaker opened");
    } else {
        tracing::info!(breaker = %key, from = %t.from, to = %t.to, reason = t.reason.as_str(), at_ms = t.at_ms, "circuit breaker transition");
    }
}
