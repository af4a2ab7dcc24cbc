//! A `reqwest_middleware::Middleware`: every request through the client goes through a
//! breaker. By default 5xx, 408 and 429 responses and transport errors are failures, other
//! statuses successes (the service's `failure_statuses` / `ignored_statuses` decide). A rejected
//! or timed-out call comes back as `reqwest_middleware::Error::Middleware` holding a
//! [`Rejected`] / [`TimedOut`], which retry middleware (reqwest-retry) does not retry.
//!
//! ```no_run
//! # fn example(stripe: breakerbox::actor::BreakerHandle) {
//! use breakerbox::actor::{BreakerMiddleware, Operation};
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(BreakerMiddleware::new(stripe))
//!     .build();
//! // A request for an operation with its own breaker:
//! let request = client.get("http://127.0.0.1:9/v1/customers").with_extension(Operation::new("customers.list"));
//! # }
//! ```

use super::call::{CallError, HasStatus, HttpStatuses};
use super::handle::BreakerHandle;
use crate::breaker::State;
use std::time::Duration;

/// The operation a request belongs to, as a request extension (selects the operation's breaker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation(pub String);

impl Operation {
    /// An operation name, e.g. `customers.create`.
    pub fn new(name: impl Into<String>) -> Self {
        Operation(name.into())
    }
}

/// The breaker rejected the request: it was never sent. Don't retry now.
#[derive(Clone, Debug, thiserror::Error)]
#[error("circuit breaker {service} is {state}: request not sent")]
pub struct Rejected {
    /// The breaker.
    pub service: String,
    /// Its state.
    pub state: State,
    /// Time left until it lets requests try again, when known.
    pub retry_after: Option<Duration>,
}

/// The request exceeded the service's call timeout and was abandoned (counted as a failure).
#[derive(Clone, Debug, thiserror::Error)]
#[error("request to {service} timed out after {} ms", after.as_millis())]
pub struct TimedOut {
    /// The breaker.
    pub service: String,
    /// The limit.
    pub after: Duration,
}

impl HasStatus for reqwest::Response {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Protects a reqwest client with one service's breaker.
pub struct BreakerMiddleware {
    handle: BreakerHandle,
    classifier: HttpStatuses,
}

impl BreakerMiddleware {
    /// Classifies by the service's configured statuses.
    pub fn new(handle: BreakerHandle) -> Self {
        crate::tls::init();
        let classifier = HttpStatuses(handle.statuses().clone());
        BreakerMiddleware { handle, classifier }
    }
}

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for BreakerMiddleware {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let op = extensions.get::<Operation>().map(|o| o.0.clone()).unwrap_or_default();
        let handle = self.handle.operation(&op).clone();
        match handle
            .call_classified("", next.run(req, extensions), &self.classifier)
            .await
        {
            Ok(response) => Ok(response),
            Err(CallError::Inner(e)) => Err(e),
            Err(CallError::Rejected {
                service,
                state,
                retry_after,
            }) => Err(reqwest_middleware::Error::Middleware(anyhow::Error::new(Rejected {
                service: service.to_string(),
                state,
                retry_after,
            }))),
            Err(CallError::TimedOut { service, after }) => {
                Err(reqwest_middleware::Error::Middleware(anyhow::Error::new(TimedOut {
                    service: service.to_string(),
                    after,
                })))
            }
        }
    }
}
