//! The actor that owns one breaker: the only writer of its stream. A thin actix shell around
//! its [`Driver`] (the logic: folding the callers' records into the core, commands, policy
//! changes, events to the journal, the published state): this reads the clock, arms the core's
//! timers and the schedule's, answers messages, and restarts from the log after a panic.

use super::driver::{ActorOptions, Applied, Driver};
use super::gate::Gate;
use crate::breaker::{Breaker, Command, Outcome, Policy, Rates, State, View};
use crate::clock::Clock;
use crate::config::BreakerConfig;
use crate::journal::{Journal, JournalError, LogCondition, Operator};
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

/// The actix shell around a [`Driver`]: reads the clock, arms the timers, answers messages.
pub(crate) struct ServiceActor {
    driver: Driver,
    /// For a restart, which rebuilds the breaker from the log.
    journal: Arc<Journal>,
    pub config: BreakerConfig,
    pub clock: Clock,
    timer: Option<SpawnHandle>,
    schedule_timer: Option<SpawnHandle>,
    /// The fleet override standing on this breaker, if any (node-local commands are refused).
    fleet_pin: Option<FleetPin>,
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
            driver: Driver::new(key, breaker, gate, journal.appender().clone(), options),
            journal,
            config,
            clock,
            timer: None,
            schedule_timer: None,
            fleet_pin: None,
        }
    }

    fn now(&self) -> impl Fn() -> u64 + use<> {
        let clock = self.clock.clone();
        move || clock.now_ms()
    }

    /// Keeps the timer on the core's next deadline.
    fn sync_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.driver.deadline_moved() {
            self.arm_timer(ctx);
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let deadline = self.driver.arm();
        if self.clock.is_manual() {
            return; // tests drive time: `tick` after `advance`
        }
        if let Some(deadline) = deadline {
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
        let now = self.now();
        if self.driver.set_policy(now, policy) {
            self.arm_timer(ctx);
        }
    }

    fn on_flush(&mut self, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            let now = act.now();
            let manual = act.clock.is_manual();
            if manual {
                // A manual clock may never move again: fold everything.
                act.driver.drain(&now);
            } else if act.driver.drain_settled(&now) && act.driver.gate.claim_flush() {
                ctx.run_later(Duration::from_millis(1), |act, ctx| act.on_flush(ctx));
            }
            if act.driver.emit_or_hold(now(), !manual) {
                act.arm_timer(ctx);
            }
            act.sync_deadline(ctx);
        });
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            let now = act.now();
            act.driver.tick(now);
            // Always set again: the timer runs on real time and the core's clock is the coarse
            // one, which can still read just before the deadline when the timer fires. Then
            // nothing was due, the deadline did not move, and a timer not set again would leave
            // the breaker OPEN until a call came.
            act.arm_timer(ctx);
        });
    }

    /// Folds and emits everything now (commands, inspection, shutdown).
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let now = self.now();
        self.driver.drain(&now);
        if self.driver.emit(now()) {
            self.arm_timer(ctx);
        }
    }

    /// Runs `f`; if it panics, the actor stops and its supervisor restarts it, which rebuilds the
    /// breaker from the log (the panicking step's events may be lost, never half-applied).
    fn guard(&mut self, ctx: &mut Context<Self>, f: impl FnOnce(&mut Self, &mut Context<Self>)) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| f(self, ctx))).is_err() {
            tracing::error!(breaker = %self.driver.key, "breaker actor panicked; restarting it from the log");
            ctx.stop();
        }
    }
}

impl Actor for ServiceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.driver.publish();
        self.arm_timer(ctx);
        self.arm_schedule(ctx);
        let every = self.driver.options.flush_interval;
        ctx.run_interval(every, |act, ctx| act.on_flush(ctx));
    }
}

impl Supervised for ServiceActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        // Rebuild from what is durable: flush what was submitted, then fold the stream.
        let journal = self.journal.clone();
        let key = self.driver.key.clone();
        let policy = self.config.policy_at(self.clock.now_ms());
        self.driver.forget_unlogged();
        ctx.wait(
            async move {
                journal.flush().await?;
                journal.recover(&key, policy).await
            }
            .into_actor(self)
            .map(|result, act, _| match result {
                Ok(r) => {
                    if let Some(why) = r.skipped(&act.driver.key) {
                        tracing::error!(breaker = %act.driver.key, "{why}");
                    }
                    act.driver.breaker = r.breaker;
                    act.driver.publish();
                }
                Err(e) => tracing::error!(breaker = %act.driver.key, error = %e, "recovering a restarted breaker failed; keeping its last state"),
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

/// A quorum hint from the fleet (`super::fleet`); answers whether the breaker opened.
#[derive(Message)]
#[rtype(result = "bool")]
pub(crate) struct Hint(pub crate::breaker::QuorumEvidence);

impl Handler<Hint> for ServiceActor {
    type Result = bool;
    fn handle(&mut self, msg: Hint, ctx: &mut Context<Self>) -> bool {
        let now = self.now();
        let opened = self.driver.hint(now, msg.0);
        if opened {
            self.arm_timer(ctx);
        }
        opened
    }
}

/// An operator's command; answered once its events are durable.
#[derive(Message)]
#[rtype(result = "Result<CommandResult, JournalError>")]
pub(crate) struct Operate {
    pub command: Command,
    pub operator: Operator,
    /// Who asked besides the operator (another process through the log, the fleet).
    pub asked: super::command::Asked,
}

/// A fleet override standing on this breaker (`docs/fleet.md`, "Fleet commands"): node-local
/// commands are refused, naming it, until the fleet resets it or it lapses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FleetPin {
    pub seq: i64,
    pub command: Command,
    pub who: String,
    pub why: String,
}

/// Sets (or clears) the fleet override standing on this breaker, without a command: a node that
/// starts finds its breaker already as the override left it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Pin(pub Option<FleetPin>);

impl Handler<Pin> for ServiceActor {
    type Result = ();
    fn handle(&mut self, msg: Pin, _: &mut Context<Self>) {
        self.fleet_pin = msg.0;
    }
}

impl Handler<Operate> for ServiceActor {
    type Result = ResponseFuture<Result<CommandResult, JournalError>>;

    fn handle(&mut self, msg: Operate, ctx: &mut Context<Self>) -> Self::Result {
        use super::command::Asked;
        if let (Some(pin), false) = (&self.fleet_pin, matches!(msg.asked, Asked::Fleet(_))) {
            let why = format!(
                "a fleet override stands on {}: {} by fleet command {} ({}: {}); reset it for the fleet \
                 (breakerbox reset {} --fleet)",
                self.driver.key,
                serde_json::to_value(pin.command)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                pin.seq,
                pin.who,
                pin.why,
                self.driver.key
            );
            return Box::pin(std::future::ready(Err(JournalError::Refused(why))));
        }
        let now = self.now();
        let pin = match msg.asked {
            Asked::Fleet(seq) => Some(match msg.command {
                Command::Reset => None,
                c => Some(FleetPin {
                    seq,
                    command: c,
                    who: msg.operator.who.clone(),
                    why: msg.operator.why.clone(),
                }),
            }),
            _ => None,
        };
        let Applied { from, to, tracked } = match self.driver.operate(now, msg.command, msg.operator, msg.asked) {
            Ok(applied) => applied,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        if let Some(pin) = pin {
            self.fleet_pin = pin;
        }
        self.arm_timer(ctx);
        let journal = self.driver.log.clone();
        let wait = self.driver.options.command_wait;
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
    fn handle(&mut self, _: Settle, _: &mut Context<Self>) {
        let now = self.now();
        self.driver.settle(now);
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
            act.catch_up(ctx);
            act.sync_deadline(ctx);
        });
        MessageResult(self.driver.breaker.clone())
    }
}

/// The breaker's window figures now, after folding every recorded outcome: computed in the
/// actor, so a metrics scrape copies no window (a count window is up to 1 MB).
#[derive(Message)]
#[rtype(result = "Figures")]
pub(crate) struct Measure;

/// What [`Measure`] answers: the core's rates and view at the actor's `now`.
#[derive(Clone, Debug, PartialEq)]
pub struct Figures {
    /// The failure and slow-call rates as the trip rules judge them.
    pub rates: Rates,
    /// The state, and the windows' counts.
    pub view: View,
}

impl Handler<Measure> for ServiceActor {
    type Result = MessageResult<Measure>;
    fn handle(&mut self, _: Measure, ctx: &mut Context<Self>) -> Self::Result {
        self.guard(ctx, |act, ctx| {
            act.catch_up(ctx);
            act.sync_deadline(ctx);
        });
        let now_ms = self.clock.now_ms();
        let b = &self.driver.breaker;
        MessageResult(Figures {
            rates: b.rates(now_ms),
            view: b.view(now_ms),
        })
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
            act.driver.breaker.command(0, Command::ForceOpen, &mut scratch);
            panic!("injected panic in breaker {}", act.driver.key);
        });
    }
}

/// Trial outcomes that were ignored give their permit back in the gate as well; see
/// [`super::handle`]. (Kept here so the rule sits beside the core's.)
pub(crate) fn returns_permit(outcome: Outcome, trial: bool) -> bool {
    trial && !outcome.counts()
}
