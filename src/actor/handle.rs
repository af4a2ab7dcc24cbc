//! `BreakerHandle`: the protected call path. Cheap to clone, `Send + Sync`, usable from any
//! thread or runtime. Admission never waits on the actor.

use super::call::{CallError, Classifier, Fallback, Results};
use super::clock::Clock;
use super::gate::{Admission, Gate};
use super::service::{self, CommandResult, Crash, Flush, Inspect, Operate, ServiceActor, Tick};
use crate::breaker::{Breaker, Command, Outcome, Permit, State};
use crate::config::StatusClassifier;
use crate::journal::JournalError;
use crate::journal::Operator;
use actix::Addr;
use std::any::Any;
use std::collections::BTreeMap;
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
    pub last_ok: Mutex<Option<Box<dyn Any + Send + Sync>>>,
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
        let (state, episode) = self.inner.gate.state();
        let (trial_episode, count) = self.inner.gate.trials();
        let expected = if state == State::Open { episode + 1 } else { episode };
        if trial_episode == expected && matches!(state, State::Open | State::HalfOpen) {
            count
        } else {
            0
        }
    }

    /// The handle of an operation's own breaker, or this one if the operation has none.
    pub fn operation(&self, op: &str) -> &BreakerHandle {
        if self.inner.operations.is_empty() || op.is_empty() {
            return self;
        }
        self.inner.operations.get(op).unwrap_or(self)
    }

    /// The service's HTTP status classification (from its config).
    pub fn statuses(&self) -> &StatusClassifier {
        &self.inner.statuses
    }

    #[inline]
    pub(crate) fn admit<E>(&self) -> Result<Permit, CallError<E>> {
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
    #[inline]
    pub fn call_sync<T, E>(&self, op: &str, call: impl FnOnce() -> Result<T, E>) -> Result<T, CallError<E>> {
        let h = self.operation(op);
        let permit = h.admit()?;
        let result = call();
        h.finish(
            permit,
            if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        );
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
        let permit = match h.admit() {
            Ok(p) => p,
            Err(e) => {
                if !span.is_disabled() {
                    span.record("outcome", "rejected");
                }
                return Err(e);
            }
        };
        let (result, outcome) = h.run_admitted_outcome(permit, fut, classifier).await;
        // Recording on a disabled span still runs tracing's `log` fallback checks (~10 ns).
        if !span.is_disabled() {
            span.record("outcome", outcome.as_str());
        }
        result
    }

    /// Runs a call that `admit` let through: timeout, classification, recording. Split from
    /// admission so integrations (tower) can admit before they even build the call.
    pub(crate) async fn run_admitted<T, E, C: Classifier<T, E> + ?Sized>(
        &self,
        permit: Permit,
        fut: impl Future<Output = Result<T, E>>,
        classifier: &C,
    ) -> Result<T, CallError<E>> {
        self.run_admitted_outcome(permit, fut, classifier).await.0
    }

    async fn run_admitted_outcome<T, E, C: Classifier<T, E> + ?Sized>(
        &self,
        permit: Permit,
        fut: impl Future<Output = Result<T, E>>,
        classifier: &C,
    ) -> (Result<T, CallError<E>>, Outcome) {
        let mut fut = std::pin::pin!(fut);
        let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        let result = match first {
            Poll::Ready(r) => Some(r),
            // Boxed: a timer is large, and keeping it inline would make every call's future
            // (and each move of it) that much bigger for the ready calls that never need one.
            // A call that is really pending is waiting on I/O, next to which one allocation is noise.
            Poll::Pending => Box::pin(tokio::time::timeout(self.inner.call_timeout, fut)).await.ok(),
        };
        match result {
            Some(r) => {
                let outcome = classifier.classify(&r);
                self.finish(permit, outcome);
                (r.map_err(CallError::Inner), outcome)
            }
            None => {
                self.finish(permit, Outcome::Timeout);
                let e = CallError::TimedOut {
                    service: self.inner.key,
                    after: self.inner.call_timeout,
                };
                (Err(e), Outcome::Timeout)
            }
        }
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
                    *h.inner.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(v.clone()));
                }
                Ok(v)
            }
            Err(e) => {
                let value = match fallback {
                    Fallback::With(f) => Some(f(&e)),
                    Fallback::Value(v) => Some(v),
                    Fallback::LastSuccess => h
                        .inner
                        .last_ok
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .and_then(|b| b.downcast_ref::<T>())
                        .cloned(),
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
        self.operate_for(command, operator, None).await
    }

    pub(crate) async fn operate_for(
        &self,
        command: Command,
        operator: Operator,
        request_position: Option<i64>,
    ) -> Result<CommandResult, JournalError> {
        self.inner
            .addr
            .send(Operate {
                command,
                operator,
                request_position,
            })
            .await
            .map_err(|_| JournalError::Closed)?
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

    /// Runs the breaker's timers now (with a manual clock, after [`Clock::advance`]).
    pub async fn tick(&self) {
        let _ = self.inner.addr.send(Tick).await;
    }

    /// The breaker as its actor has it, after folding every recorded outcome.
    pub async fn inspect(&self) -> Option<Breaker> {
        self.inner.addr.send(Inspect).await.ok()
    }

    #[doc(hidden)]
    pub async fn crash_for_test(&self) {
        let _ = self.inner.addr.send(Crash).await;
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
