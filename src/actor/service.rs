//! The actor that owns one breaker: the only writer of its stream. It drives the pure core with
//! the callers' records, runs the timers, applies commands and policy changes, hands every event
//! to the journal, and publishes the state callers read.

use super::command::Decided;
use super::gate::{self, Gate, Record};
use crate::breaker::{Breaker, Command, Decision, Event, Outcome, Permit, Policy, State};
use crate::clock::Clock;
use crate::config::BreakerConfig;
use crate::journal::{Body, Journal, JournalError, LogCondition};
use crate::journal::{CallStats, Operator};
use actix::prelude::*;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandResult {
    /// State before.
    pub from: State,
    /// State after (in force when this is returned).
    pub to: State,
    /// Log position of the command's own record, once durable; `None` when the log did not
    /// take it within [`ActorOptions::command_wait`]: the command is applied and buffered, and
    /// durable only once the log recovers (`log` says how it stands).
    pub position: Option<i64>,
    /// The log's condition when answered.
    pub log: LogCondition,
}

impl CommandResult {
    /// Whether the command's records are durable.
    pub fn durable(&self) -> bool {
        self.position.is_some()
    }
}

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

/// Calls held at most per breaker before they go to the journal anyway (one full row).
/// Rows of 1,000 calls already read at tens of millions of outcomes per second; a larger cap would
/// let many breakers release bursts together that fill the journal's buffer (100,000 records).
const HOLD_CAP: usize = 1_000;

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

pub(crate) struct ServiceActor {
    pub key: Arc<str>,
    pub breaker: Breaker,
    /// Records of the current millisecond, held until it is over (see `drain_settled`).
    held: Vec<Record>,
    spare: Vec<Record>,
    pub config: BreakerConfig,
    pub gate: Arc<Gate>,
    pub journal: Arc<Journal>,
    pub clock: Clock,
    pub options: ActorOptions,
    records: Vec<Record>,
    events: Vec<Event>,
    since_snapshot: u64,
    /// When the oldest call in `events` was held back (see `ActorOptions::outcome_hold`).
    holding_since_ms: Option<u64>,
    /// Rejections, fallbacks and drops counted since the last `emit`, logged after its calls.
    pending_stats: Option<CallStats>,
    timer: Option<SpawnHandle>,
    /// The deadline `timer` is armed for.
    armed_deadline: Option<u64>,
    schedule_timer: Option<SpawnHandle>,
}

impl ServiceActor {
    pub(crate) fn new(
        key: Arc<str>,
        breaker: Breaker,
        config: BreakerConfig,
        gate: Arc<Gate>,
        journal: Arc<Journal>,
        clock: Clock,
        options: ActorOptions,
    ) -> Self {
        ServiceActor {
            key,
            breaker,
            config,
            gate,
            journal,
            clock,
            options,
            records: Vec::new(),
            held: Vec::new(),
            spare: Vec::new(),
            events: Vec::new(),
            since_snapshot: 0,
            holding_since_ms: None,
            pending_stats: None,
            timer: None,
            armed_deadline: None,
            schedule_timer: None,
        }
    }

    /// Keeps the timer and the published view on the core's next deadline: a HALF_OPEN trial
    /// deadline starts with a trial and ends with its outcome, not with a transition.
    fn sync_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.breaker.next_deadline_ms() != self.armed_deadline {
            self.publish();
            self.arm_timer(ctx);
        }
    }

    fn publish(&self) {
        self.gate.publish(&self.breaker.admission());
    }

    /// Folds everything callers recorded into the core (commands, inspection, shutdown).
    fn drain(&mut self) {
        self.gate.release_flush();
        let mut fresh = std::mem::take(&mut self.spare);
        let clock = &self.clock;
        self.gate.drain(|| clock.now_ms(), &mut fresh);
        self.records.append(&mut self.held);
        self.records.append(&mut fresh);
        self.spare = fresh;
        self.fold_records();
    }

    /// Folds the records of completed instants only (regular drains): an instant's records are
    /// all known before any is folded, so they can be put in `simulate`'s order. Records of the
    /// current millisecond wait for a drain 1 ms later.
    fn drain_settled(&mut self, ctx: &mut Context<Self>) {
        self.gate.release_flush();
        let clock = self.clock.clone();
        let mut fresh = std::mem::take(&mut self.spare);
        let settled_before = self.gate.drain(|| clock.now_ms(), &mut fresh);
        // Held records were pushed before the fresh ones: keep that order.
        self.records.append(&mut self.held);
        self.records.append(&mut fresh);
        self.spare = fresh;
        // Tallies follow the records they may predate, so the unsettled ones are picked out
        // (in order) rather than split off as a suffix.
        self.held
            .extend(self.records.extract_if(.., |r| r.at_ms() >= settled_before));
        self.fold_records();
        if !self.held.is_empty() && !self.clock.is_manual() && self.gate.claim_flush() {
            ctx.run_later(Duration::from_millis(1), |act, ctx| act.on_flush(ctx));
        }
    }

    fn fold_records(&mut self) {
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
            let at_ms = self.clock.now_ms();
            let stats = self.pending_stats.get_or_insert(CallStats {
                at_ms,
                rejected: 0,
                fallbacks: 0,
                dropped: 0,
            });
            stats.at_ms = at_ms;
            stats.rejected += rejected;
            stats.fallbacks += fallbacks;
            stats.dropped += dropped;
        }
    }

    /// As `emit`, but recorded calls alone wait up to `outcome_hold` (the regular drains).
    fn emit_or_hold(&mut self, ctx: &mut Context<Self>) {
        let hold_ms = self.options.outcome_hold.as_millis() as u64;
        if hold_ms > 0
            && !self.clock.is_manual()
            && self.events.len() < HOLD_CAP
            && self.events.iter().all(|e| matches!(e, Event::CallRecorded(_)))
        {
            let now = self.clock.now_ms();
            let since = *self.holding_since_ms.get_or_insert(now);
            if now.saturating_sub(since) < hold_ms {
                return;
            }
        }
        self.emit(ctx);
    }

    /// Hands the events to the journal, logs transitions, republishes, re-arms timers.
    fn emit(&mut self, ctx: &mut Context<Self>) {
        self.holding_since_ms = None;
        if self.events.is_empty() {
            self.submit_stats();
            return;
        }
        let mut transitioned = false;
        for event in self.events.drain(..) {
            if let Event::Transitioned(t) = &event {
                transitioned = true;
                log_transition(&self.key, t);
            }
            self.since_snapshot += 1;
            self.journal.submit(&self.key, Body::Breaker(event));
        }
        if self.since_snapshot >= self.options.snapshot_every {
            self.since_snapshot = 0;
            let at_ms = self.clock.now_ms();
            self.journal.submit(
                &self.key,
                Body::Snapshot {
                    at_ms,
                    breaker: Box::new(self.breaker.clone()),
                },
            );
        }
        self.submit_stats();
        if transitioned {
            self.publish();
            self.arm_timer(ctx);
        }
    }

    fn submit_stats(&mut self) {
        if let Some(stats) = self.pending_stats.take() {
            self.journal.submit(&self.key, Body::record(&stats));
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.armed_deadline = self.breaker.next_deadline_ms();
        if self.clock.is_manual() {
            return; // tests drive time: `tick` after `advance`
        }
        if let Some(deadline) = self.armed_deadline {
            let wait = deadline.saturating_sub(self.clock.now_ms());
            self.timer = Some(ctx.run_later(Duration::from_millis(wait), |act, ctx| act.on_tick(ctx)));
        }
    }

    fn arm_schedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.schedule_timer.take() {
            ctx.cancel_future(t);
        }
        if self.clock.is_manual() {
            return;
        }
        if let Some(at) = self.config.next_change_after(self.clock.now_ms()) {
            let wait = at.saturating_sub(self.clock.now_ms());
            self.schedule_timer = Some(ctx.run_later(Duration::from_millis(wait), |act, ctx| {
                act.apply_policy(act.config.policy_at(act.clock.now_ms()), ctx);
                act.arm_schedule(ctx);
            }));
        }
    }

    fn apply_policy(&mut self, policy: Policy, ctx: &mut Context<Self>) {
        if &policy == self.breaker.policy() {
            return;
        }
        self.drain();
        let now = self.clock.now_ms();
        if let Err(e) = self.breaker.set_policy(now, policy, &mut self.events) {
            tracing::error!(breaker = %self.key, error = %e, "a configured policy was refused by the core");
        }
        self.emit(ctx);
        self.publish();
    }

    fn on_flush(&mut self, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if act.clock.is_manual() {
                // A manual clock may never move again: fold everything.
                act.drain();
            } else {
                act.drain_settled(ctx);
            }
            act.emit_or_hold(ctx);
            act.sync_deadline(ctx);
        });
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            // Records made before the deadline are folded first, so order is kept.
            act.drain();
            let now = act.clock.now_ms();
            act.breaker.tick(now, &mut act.events);
            act.emit(ctx);
            act.sync_deadline(ctx);
        });
    }

    /// Runs `f`; if it panics, the actor stops and its supervisor restarts it, which rebuilds the
    /// breaker from the log (the panicking step's events may be lost, never half-applied).
    fn guard(&mut self, ctx: &mut Context<Self>, f: impl FnOnce(&mut Self, &mut Context<Self>)) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(self, ctx))).is_err() {
            tracing::error!(breaker = %self.key, "breaker actor panicked; restarting it from the log");
            ctx.stop();
        }
    }
}

impl Actor for ServiceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish();
        self.arm_timer(ctx);
        self.arm_schedule(ctx);
        let every = self.options.flush_interval;
        ctx.run_interval(every, |act, ctx| act.on_flush(ctx));
    }
}

impl Supervised for ServiceActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Rebuild from what is durable: flush what was submitted, then fold the stream.
        let journal = self.journal.clone();
        let key = self.key.clone();
        let policy = self.config.policy_at(self.clock.now_ms());
        self.events.clear();
        self.records.clear();
        self.pending_stats = None;
        ctx.wait(
            async move {
                journal.flush().await?;
                journal.recover(&key, policy).await
            }
            .into_actor(self)
            .map(|result, act, _| match result {
                Ok(r) => {
                    if let Some(why) = r.skipped(&act.key) {
                        tracing::error!(breaker = %act.key, "{why}");
                    }
                    act.breaker = r.breaker;
                    act.publish();
                }
                Err(e) => tracing::error!(breaker = %act.key, error = %e, "recovering a restarted breaker failed; keeping its last state"),
            }),
        );
    }
}

/// Callers recorded outcomes that should be folded now (a failure, a trial, a full buffer).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Flush;

impl Handler<Flush> for ServiceActor {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.on_flush(ctx);
    }
}

/// Run the timers now (manual clocks; a real clock arms its own).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Tick;

impl Handler<Tick> for ServiceActor {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        self.on_tick(ctx);
    }
}

/// An operator's command; answered once its events are durable.
#[derive(Message)]
#[rtype(result = "Result<CommandResult, JournalError>")]
pub(crate) struct Operate {
    pub command: Command,
    pub operator: Operator,
    /// The `command_request` this answers (another process asked through the log).
    pub request_position: Option<i64>,
}

impl Handler<Operate> for ServiceActor {
    type Result = ResponseFuture<Result<CommandResult, JournalError>>;

    fn handle(&mut self, msg: Operate, ctx: &mut Context<Self>) -> Self::Result {
        self.drain();
        self.emit(ctx);
        let now = self.clock.now_ms();
        let decided = Decided::decide(&self.breaker, now, msg.command, msg.operator, msg.request_position);
        let (from, to) = (decided.record.from_state, decided.record.to_state);
        let tracked = match self.journal.submit_all(&self.key, decided.bodies()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(breaker = %self.key, command = ?msg.command, error = %e, "operator command refused: the event log cannot take it");
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        // In force as the log has it, before anything else can fail (logging included).
        self.since_snapshot += decided.events.len() as u64;
        self.breaker = decided.after;
        self.publish();
        self.arm_timer(ctx);
        for event in &decided.events {
            if let Event::Transitioned(t) = event {
                log_transition(&self.key, t);
            }
        }
        let journal = self.journal.clone();
        let wait = self.options.command_wait;
        Box::pin(async move {
            let position = match tokio::time::timeout(wait, journal.durable_position(tracked)).await {
                Ok(durable) => Some(durable?),
                // Applied and buffered; the caller is told so rather than left waiting.
                Err(_) => None,
            };
            Ok(CommandResult {
                from,
                to,
                position,
                log: journal.condition(),
            })
        })
    }
}

/// A new configuration for this breaker (reload): policy applied, state kept.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Reconfigure(pub BreakerConfig);

impl Handler<Reconfigure> for ServiceActor {
    type Result = ();
    fn handle(&mut self, msg: Reconfigure, ctx: &mut Context<Self>) {
        self.config = msg.0;
        let policy = self.config.policy_at(self.clock.now_ms());
        self.apply_policy(policy, ctx);
        self.arm_schedule(ctx);
    }
}

/// Folds everything and submits it with a snapshot (clean shutdown); the registry then waits,
/// bounded, for the journal to make it durable.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Settle;

impl Handler<Settle> for ServiceActor {
    type Result = ();
    fn handle(&mut self, _: Settle, ctx: &mut Context<Self>) {
        self.drain();
        self.emit(ctx);
        let at_ms = self.clock.now_ms();
        self.journal.submit(
            &self.key,
            Body::Snapshot {
                at_ms,
                breaker: Box::new(self.breaker.clone()),
            },
        );
    }
}

/// The breaker's state as the actor has it (after folding what callers recorded).
#[derive(Message)]
#[rtype(result = "Breaker")]
pub(crate) struct Inspect;

impl Handler<Inspect> for ServiceActor {
    type Result = MessageResult<Inspect>;
    fn handle(&mut self, _: Inspect, ctx: &mut Context<Self>) -> Self::Result {
        self.guard(ctx, |act, ctx| {
            act.drain();
            act.emit(ctx);
            act.sync_deadline(ctx);
        });
        MessageResult(self.breaker.clone())
    }
}

/// Makes the actor panic inside its guard (tests of the restart path only).
#[doc(hidden)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct Crash;

impl Handler<Crash> for ServiceActor {
    type Result = ();
    fn handle(&mut self, _: Crash, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, _| {
            // Damage the in-memory state, then panic: the restart must not keep the damage.
            let mut scratch = Vec::new();
            act.breaker.command(0, Command::ForceOpen, &mut scratch);
            panic!("injected panic in breaker {}", act.key);
        });
    }
}

fn log_transition(key: &str, t: &crate::breaker::Transition) {
    if t.to == State::Open || t.to == State::ForcedOpen {
        tracing::warn!(breaker = %key, from = %t.from, to = %t.to, reason = t.reason.as_str(), at_ms = t.at_ms, "circuit breaker opened");
    } else {
        tracing::info!(breaker = %key, from = %t.from, to = %t.to, reason = t.reason.as_str(), at_ms = t.at_ms, "circuit breaker transition");
    }
}

/// Trial outcomes that were ignored give their permit back in the gate as well; see
/// [`super::handle`]. (Kept here so the rule sits beside the core's.)
pub(crate) fn returns_permit(outcome: Outcome, trial: bool) -> bool {
    trial && !outcome.counts()
}
