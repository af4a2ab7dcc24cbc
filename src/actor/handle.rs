//! `BreakerHandle`: the protected call path. Cheap to clone, `Send + Sync`, usable from any
//! thread or runtime. Admission never waits on the actor.

use super::call::{CallError, Classifier, Fallback, Results};
use super::gate::{Admission, Gate};
use super::service::{self, CommandResult, Crash, Figures, Flush, Inspect, Measure, Operate, ServiceActor, Tick};
use crate::breaker::{Breaker, Command, Outcome, Permit, State};
use crate::clock::Clock;
use crate::config::StatusClassifier;
use crate::journal::JournalError;
use crate::journal::Operator;
use actix::Addr;
use std::any::{Any, TypeId};
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

pub(crate) struct Inner {
    /// Interned for the process's lifetime (a handful of keys, leaked once at start), so an error
    /// carrying it costs no reference count: a shared count would be a contended cache line on
    /// every rejection.
    pub key: &'static str,
    pub gate: Arc<Gate>,
    pub addr: Addr<ServiceActor>,
    pub clock: Clock,
    pub call_timeout: Duration,
    pub statuses: StatusClassifier,
    pub operations: BTreeMap<String, BreakerHandle>,
    pub last_ok: LastSuccesses,
}

/// The last good value of each operation of one breaker, by its type: `Fallback::LastSuccess`
/// for `prices.list` never answers with what `customers.create` returned, nor with a value of
/// another type.
#[derive(Default)]
pub(crate) struct LastSuccesses(Mutex<HashMap<TypeId, ByOperation>>);

/// One type's last good values, by operation.
type ByOperation = HashMap<String, Box<dyn Any + Send + Sync>>;

impl LastSuccesses {
    fn remember<T: Clone + Send + Sync + 'static>(&self, op: &str, value: &T) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let by_op = map.entry(TypeId::of::<T>()).or_default();
        match by_op.get_mut(op) {
            Some(slot) => *slot = Box::new(value.clone()),
            None => {
                by_op.insert(op.to_owned(), Box::new(value.clone()));
            }
        }
    }

    fn last<T: Clone + 'static>(&self, op: &str) -> Option<T> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&TypeId::of::<T>())?.get(op)?.downcast_ref::<T>().cloned()
    }
}

/// An admitted call that has not ended yet. It ends exactly once: [`Admitted::complete`] with
/// the call's outcome, or — if it is dropped first (the caller's future was dropped, a `select!`
/// branch lost, the closure panicked) — as `cancelled`, or as a timeout once the call ran past
/// its call timeout. Either way a HALF_OPEN trial permit is given back at once, so a breaker can
/// never lock itself shut on calls nobody waits for any more.
pub(crate) struct Admitted<H: Borrow<BreakerHandle>> {
    handle: H,
    permit: Permit,
    ended: bool,
}

impl<H: Borrow<BreakerHandle>> Admitted<H> {
    #[inline]
    pub(crate) fn new(handle: H, permit: Permit) -> Self {
        Admitted {
            handle,
            permit,
            ended: false,
        }
    }

    /// Ends the call with its outcome.
    #[inline]
    pub(crate) fn complete(mut self, outcome: Outcome) {
        self.ended = true;
        self.handle.borrow().finish(self.permit, outcome);
    }
}

impl<H: Borrow<BreakerHandle>> Drop for Admitted<H> {
    #[inline]
    fn drop(&mut self) {
        if !self.ended {
            self.cancel();
        }
    }
}

impl<H: Borrow<BreakerHandle>> Admitted<H> {
    /// The call was given up before it ended (kept out of line: the common path only checks the
    /// flag).
    #[cold]
    #[inline(never)]
    fn cancel(&mut self) {
        let h = self.handle.borrow();
        let elapsed_ms = h.inner.clock.now_ms().saturating_sub(self.permit.admitted_at_ms);
        let outcome = if u128::from(elapsed_ms) >= h.inner.call_timeout.as_millis() {
            Outcome::Timeout
        } else {
            Outcome::Cancelled
        };
        h.finish(self.permit, outcome);
    }
}

/// A handle on one breaker (a service, or an operation of one).
///
/// ```no_run
/// # async fn example(stripe: breakerbox::actor::BreakerHandle) {
/// use breakerbox::actor::{CallError, Fallback};
/// // Admission, the service's call timeout, classification (Ok = success) and recording:
/// let charge: Result<u32, CallError<std::io::Error>> = stripe.call("charges.create", async { Ok(42) }).await;
/// // The same with a fallback when the breaker is open, the call times out or fails:
/// let price = stripe
///     .call_with_fallback("prices.list", async { Ok::<_, std::io::Error>(9) }, Fallback::LastSuccess)
///     .await;
/// # }
/// ```
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerHandle").field("key", &self.inner.key).finish()
    }
}

impl BreakerHandle {
    /// The breaker's key (`stripe`, `stripe/customers.create`).
    pub fn key(&self) -> &str {
        self.inner.key
    }

    /// The state callers are admitted by right now (published by the actor).
    pub fn state(&self) -> State {
        self.inner.gate.state().0
    }

    /// HALF_OPEN trial permits in use (of the current HALF_OPEN episode, or of the one that
    /// follows an OPEN period).
    pub fn trial_permits(&self) -> u64 {
        self.inner.gate.trials_out()
    }

    /// The handle of an operation's own breaker, or this one if the operation has none.
    pub fn operation(&self, op: &str) -> &BreakerHandle {
        if self.inner.operations.is_empty() || op.is_empty() {
            return self;
        }
        self.inner.operations.get(op).unwrap_or(self)
    }

    /// How long one protected call may run (the service's `call_timeout`).
    pub fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// The service's HTTP status classification (from its config).
    pub fn statuses(&self) -> &StatusClassifier {
        &self.inner.statuses
    }

    /// Admission: a guard that ends the call exactly once (see [`Admitted`]).
    #[inline]
    pub(crate) fn admit<E>(&self) -> Result<Admitted<&BreakerHandle>, CallError<E>> {
        self.admit_permit().map(|p| Admitted::new(self, p))
    }

    /// As [`BreakerHandle::admit`], with a guard that owns its handle (futures that outlive
    /// the borrow: the tower service's).
    #[inline]
    pub(crate) fn admit_owned<E>(&self) -> Result<Admitted<BreakerHandle>, CallError<E>> {
        self.admit_permit().map(|p| Admitted::new(self.clone(), p))
    }

    #[inline]
    fn admit_permit<E>(&self) -> Result<Permit, CallError<E>> {
        let clock = &self.inner.clock;
        match self.inner.gate.admit(&|| clock.now_ms()) {
            Admission::Permit(p) => Ok(p),
            Admission::Reject(r) => {
                self.inner.gate.rejected.add(1);
                Err(CallError::Rejected {
                    service: self.inner.key,
                    state: r.state,
                    retry_after: r.retry_after_ms.map(Duration::from_millis),
                })
            }
        }
    }

    /// Records a call's outcome. Failures and trial outcomes are folded at once (one coalesced
    /// message to the actor); successes within the flush interval.
    #[inline]
    fn finish(&self, permit: Permit, outcome: Outcome) {
        let gate = &self.inner.gate;
        let clock = &self.inner.clock;
        let buffered = gate.done(|| clock.now_ms(), permit, outcome);
        if service::returns_permit(outcome, permit.trial) {
            gate.return_trial(permit.episode);
        }
        if (outcome.is_failure() || permit.trial || buffered >= gate.soft_limit) && gate.claim_flush() {
            self.inner.addr.do_send(Flush);
        }
    }

    /// Runs `call` through the breaker if it is admitted: `Ok` is a success, `Err` a failure.
    /// No timeout (it is not async); see [`BreakerHandle::call`].
    ///
    /// If `call` panics, the call is recorded as cancelled (a trial permit comes back) and the
    /// panic goes on to the caller.
    #[inline]
    pub fn call_sync<T, E>(&self, op: &str, call: impl FnOnce() -> Result<T, E>) -> Result<T, CallError<E>> {
        let h = self.operation(op);
        let admitted = h.admit()?;
        let result = call();
        admitted.complete(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result.map_err(CallError::Inner)
    }

    /// Runs `fut` through the breaker of `op` (or the service's): admitted or rejected at once,
    /// limited to the service's `call_timeout` (a timeout is a failure), `Ok` a success and `Err`
    /// a failure. A future that is ready on its first poll costs no timer and no clock read.
    pub fn call<T, E>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> impl Future<Output = Result<T, CallError<E>>> {
        // Not an `async fn` awaiting the other: one state machine, not two nested.
        self.call_classified(op, fut, &Results)
    }

    /// As [`BreakerHandle::call`], with a classifier deciding what the result means (e.g.
    /// [`super::HttpStatuses`], or a closure).
    pub async fn call_classified<T, E, C: Classifier<T, E> + ?Sized>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, E>>,
        classifier: &C,
    ) -> Result<T, CallError<E>> {
        let h = self.operation(op);
        // A span per protected call. Skipped by hand while no subscriber was ever set: with
        // tracing's `log` feature on (a dependency turns it on), the span macro then builds and
        // records a disabled span for the `log` crate on every call (~5–10 ns). Once one is set
        // the macro decides, as always.
        let span = if tracing::dispatcher::has_been_set() {
            tracing::debug_span!(
                "breaker.call",
                service = h.inner.key,
                op,
                outcome = tracing::field::Empty
            )
        } else {
            tracing::Span::none()
        };
        let admitted = match h.admit() {
            Ok(a) => a,
            Err(e) => {
                if !span.is_disabled() {
                    span.record("outcome", "rejected");
                }
                return Err(e);
            }
        };
        let (result, outcome) = run_admitted_outcome(admitted, fut, classifier).await;
        // Recording on a disabled span still runs tracing's `log` fallback checks (~10 ns).
        if !span.is_disabled() {
            span.record("outcome", outcome.as_str());
        }
        result
    }

    /// As [`BreakerHandle::call`], answering with `fallback` when the call is rejected, times out
    /// or fails (the fallback gets the reason). Fallback use is recorded in the log.
    pub async fn call_with_fallback<T, E>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, E>>,
        fallback: Fallback<T, E>,
    ) -> Result<T, CallError<E>>
    where
        T: Clone + Send + Sync + 'static,
    {
        let h = self.operation(op);
        let remember = matches!(fallback, Fallback::LastSuccess);
        match h.call("", fut).await {
            Ok(v) => {
                if remember {
                    h.inner.last_ok.remember(op, &v);
                }
                Ok(v)
            }
            Err(e) => {
                let value = match fallback {
                    Fallback::With(f) => Some(f(&e)),
                    Fallback::Value(v) => Some(v),
                    Fallback::LastSuccess => h.inner.last_ok.last::<T>(op),
                };
                match value {
                    Some(v) => {
                        h.inner.gate.fallbacks.add(1);
                        tracing::debug!(breaker = %h.inner.key, reason = ?e.reason(), "served by fallback");
                        Ok(v)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// Records that the caller answered from a fallback of its own — e.g. after the reqwest
    /// middleware rejected a request — so it is counted in the log as `call_with_fallback` is.
    pub fn record_fallback(&self) {
        self.inner.gate.fallbacks.add(1);
    }

    async fn operate(&self, command: Command, operator: Operator) -> Result<CommandResult, JournalError> {
        // The same rule as the CLI's and the API's: nothing is applied without a reason.
        crate::journal::check_reason(&operator.why).map_err(JournalError::Refused)?;
        self.operate_for(command, operator, super::command::Asked::Here).await
    }

    pub(crate) async fn operate_for(
        &self,
        command: Command,
        operator: Operator,
        asked: super::command::Asked,
    ) -> Result<CommandResult, JournalError> {
        self.inner
            .addr
            .send(Operate {
                command,
                operator,
                asked,
            })
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// A fleet command (`super::fleet`), applied as any command is and pinning (or, a reset,
    /// unpinning) the fleet's override.
    pub(crate) async fn fleet_operate(
        &self,
        command: Command,
        operator: Operator,
        seq: i64,
    ) -> Result<CommandResult, JournalError> {
        self.operate_for(command, operator, super::command::Asked::Fleet(seq))
            .await
    }

    /// Sets or clears the fleet override standing on this breaker, without a command.
    pub(crate) async fn fleet_pin(&self, pin: Option<super::service::FleetPin>) {
        let _ = self.inner.addr.send(super::service::Pin(pin)).await;
    }

    /// Back to CLOSED with empty counts. Answers once the command is durable.
    pub async fn reset(&self, operator: Operator) -> Result<CommandResult, JournalError> {
        self.operate(Command::Reset, operator).await
    }

    /// To FORCED_OPEN: reject every call until reset. Answers once durable.
    pub async fn force_open(&self, operator: Operator) -> Result<CommandResult, JournalError> {
        self.operate(Command::ForceOpen, operator).await
    }

    /// To DISABLED: permit every call, never trip, until reset. Answers once durable.
    pub async fn disable(&self, operator: Operator) -> Result<CommandResult, JournalError> {
        self.operate(Command::Disable, operator).await
    }

    /// A quorum hint from the fleet: other nodes opened this breaker by their own trip rules.
    /// A CLOSED breaker opens with reason `fleet_quorum`; true when it did.
    pub(crate) async fn hint(&self, quorum: crate::breaker::QuorumEvidence) -> bool {
        self.inner
            .addr
            .send(super::service::Hint(quorum))
            .await
            .unwrap_or(false)
    }

    /// Runs the breaker's timers now (with a manual clock, after [`Clock::advance`]).
    pub async fn tick(&self) {
        let _ = self.inner.addr.send(Tick).await;
    }

    /// The breaker as its actor has it, after folding every recorded outcome.
    pub async fn inspect(&self) -> Option<Breaker> {
        self.inner.addr.send(Inspect).await.ok()
    }

    /// The breaker's rates and windows now, after folding every recorded outcome (what
    /// `/metrics` exports; unlike [`BreakerHandle::inspect`], no copy of the windows).
    pub async fn measure(&self) -> Option<Figures> {
        self.inner.addr.send(Measure).await.ok()
    }

    #[doc(hidden)]
    pub async fn crash_for_test(&self) {
        let _ = self.inner.addr.send(Crash).await;
    }
}

/// Runs a call that admission let through: timeout, classification, recording. Split from
/// admission so integrations (tower) can admit before they even build the call. If this future
/// is dropped before it ends, `admitted` records the call as cancelled (or timed out).
pub(crate) async fn run_admitted_outcome<H, T, E, C>(
    admitted: Admitted<H>,
    fut: impl Future<Output = Result<T, E>>,
    classifier: &C,
) -> (Result<T, CallError<E>>, Outcome)
where
    H: Borrow<BreakerHandle>,
    C: Classifier<T, E> + ?Sized,
{
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    // Nothing but the guard is held across the await below: every byte held there sizes every
    // call's future, ready or not.
    let result = match first {
        Poll::Ready(r) => Some(r),
        // Boxed: a timer is large, and keeping it inline would make every call's future
        // (and each move of it) that much bigger for the ready calls that never need one.
        // A call that is really pending is waiting on I/O, next to which one allocation is noise.
        Poll::Pending => {
            let after = admitted.handle.borrow().inner.call_timeout;
            Box::pin(tokio::time::timeout(after, fut)).await.ok()
        }
    };
    match result {
        Some(r) => {
            let outcome = classifier.classify(&r);
            admitted.complete(outcome);
            (r.map_err(CallError::Inner), outcome)
        }
        None => {
            let inner = &admitted.handle.borrow().inner;
            let e = CallError::TimedOut {
                service: inner.key,
                after: inner.call_timeout,
            };
            admitted.complete(Outcome::Timeout);
            (Err(e), Outcome::Timeout)
        }
    }
}

/// The seed's `HasCircuitBreaker`: a service client that owns a breaker handle gets
/// `self.protected(op, fut)`.
///
/// ```no_run
/// use breakerbox::actor::{BreakerHandle, CallError, HasCircuitBreaker};
///
/// struct StripeClient {
///     breaker: BreakerHandle,
/// }
///
/// impl HasCircuitBreaker for StripeClient {
///     fn breaker(&self) -> &BreakerHandle {
///         &self.breaker
///     }
/// }
///
/// impl StripeClient {
///     async fn create_customer(&self) -> Result<String, CallError<std::io::Error>> {
///         self.protected("customers.create", async { Ok("cus_123".to_owned()) }).await
///     }
/// }
/// ```
pub trait HasCircuitBreaker {
    /// The service's breaker.
    fn breaker(&self) -> &BreakerHandle;

    /// Runs `fut` through the breaker of operation `op` (or the service's); see
    /// [`BreakerHandle::call`].
    fn protected<T, E>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, E>>,
    ) -> impl Future<Output = Result<T, CallError<E>>> {
        self.breaker().call(op, fut)
    }
}
