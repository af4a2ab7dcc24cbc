//! What a protected call can end in, how results are classified, and fallbacks.

use crate::breaker::{Outcome, State};
use crate::config::StatusClassifier;
use std::fmt;
use std::time::Duration;

/// Why a protected call did not give the callee's value. Each variant says what to do.
#[derive(Debug)]
pub enum CallError<E> {
    /// The breaker did not let the call run (the upstream is believed down). Don't retry now:
    /// fall back, or retry after `retry_after` if it is known.
    Rejected {
        /// The breaker's key.
        service: &'static str,
        /// The state that rejected it: `open`, `half_open` (trial permits all out) or `forced_open`.
        state: State,
        /// Time left until the breaker lets calls try again, when known.
        retry_after: Option<Duration>,
    },
    /// The call ran longer than the service's `call_timeout` and was abandoned; it counts as a
    /// failure. Fall back or report.
    TimedOut {
        /// The breaker's key.
        service: &'static str,
        /// The limit it exceeded.
        after: Duration,
    },
    /// The call ran and returned this error (classified by the service's classifier).
    Inner(E),
}

impl<E> CallError<E> {
    /// Is this a rejection (the call never ran)? Retry middleware should not retry these.
    pub fn is_rejected(&self) -> bool {
        matches!(self, CallError::Rejected { .. })
    }

    /// Why a fallback was called, without the inner error.
    pub fn reason(&self) -> FallbackReason {
        match self {
            CallError::Rejected { state, .. } => FallbackReason::Rejected(*state),
            CallError::TimedOut { .. } => FallbackReason::TimedOut,
            CallError::Inner(_) => FallbackReason::Failed,
        }
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Rejected {
                service,
                state,
                retry_after,
            } => {
                write!(f, "circuit breaker {service} is {state}: call not permitted")?;
                if let Some(d) = retry_after {
                    write!(f, " (retry after {} ms)", d.as_millis())?;
                }
                Ok(())
            }
            CallError::TimedOut { service, after } => {
                write!(f, "call to {service} timed out after {} ms", after.as_millis())
            }
            CallError::Inner(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CallError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Inner(e) => Some(e),
            _ => None,
        }
    }
}

/// Why a fallback was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackReason {
    /// The breaker rejected the call in this state.
    Rejected(State),
    /// The call timed out.
    TimedOut,
    /// The call failed.
    Failed,
}

/// Decides what a call's result means for the breaker.
pub trait Classifier<T, E>: Send + Sync {
    /// Success, failure or ignored (timeouts are decided by the call path).
    fn classify(&self, result: &Result<T, E>) -> Outcome;
}

impl<T, E, F> Classifier<T, E> for F
where
    F: Fn(&Result<T, E>) -> Outcome + Send + Sync,
{
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        self(result)
    }
}

/// `Ok` is a success, `Err` a failure.
#[derive(Clone, Copy, Debug, Default)]
pub struct Results;

impl<T, E> Classifier<T, E> for Results {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// A response with an HTTP status.
pub trait HasStatus {
    /// The status code.
    fn status_code(&self) -> u16;
}

/// HTTP responses by status (the service's `failure_statuses` / `ignored_statuses`; by default
/// 5xx, 408 and 429 fail, other statuses succeed); an `Err` (transport error) is a failure.
#[derive(Clone, Debug, Default)]
pub struct HttpStatuses(pub StatusClassifier);

impl<T: HasStatus, E> Classifier<T, E> for HttpStatuses {
    fn classify(&self, result: &Result<T, E>) -> Outcome {
        match result {
            Ok(response) => self.0.classify(response.status_code()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// A fallback closure: computes a value from why the call gave none.
pub type FallbackFn<T, E> = Box<dyn FnOnce(&CallError<E>) -> T + Send>;

/// What to answer when the call can't give a value.
pub enum Fallback<T, E> {
    /// Compute one from the reason (and the error, for a failure).
    With(FallbackFn<T, E>),
    /// This value.
    Value(T),
    /// The last value this breaker's calls returned successfully (if there is none yet, the
    /// error is returned).
    LastSuccess,
}

impl<T, E> Fallback<T, E> {
    /// A fallback computed by a closure.
    pub fn with(f: impl FnOnce(&CallError<E>) -> T + Send + 'static) -> Self {
        Fallback::With(Box::new(f))
    }
}
