//! A `tower::Layer`, so axum, tonic and hyper services are protected in one line:
//!
//! ```no_run
//! # fn example<S>(stripe: breakerbox::actor::BreakerHandle, service: S) {
//! use breakerbox::actor::BreakerLayer;
//! use tower::Layer;
//! let protected = BreakerLayer::new(stripe).layer(service);
//! # }
//! ```
//!
//! `Ok` responses are successes and `Err`s failures unless a classifier says otherwise
//! ([`BreakerLayer::with_classifier`]); errors come back as [`CallError`].

use super::call::{CallError, Classifier, Results};
use super::handle::{BreakerHandle, run_admitted_outcome};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Wraps services so every call goes through a breaker.
#[derive(Clone)]
pub struct BreakerLayer<C = Results> {
    handle: BreakerHandle,
    classifier: Arc<C>,
}

impl BreakerLayer<Results> {
    /// `Ok` is a success, `Err` a failure.
    pub fn new(handle: BreakerHandle) -> Self {
        BreakerLayer {
            handle,
            classifier: Arc::new(Results),
        }
    }
}

impl<C> BreakerLayer<C> {
    /// Classifies results with `classifier` (e.g. by HTTP status).
    pub fn with_classifier<D>(self, classifier: D) -> BreakerLayer<D> {
        BreakerLayer {
            handle: self.handle,
            classifier: Arc::new(classifier),
        }
    }
}

impl<S, C> tower::Layer<S> for BreakerLayer<C> {
    type Service = BreakerService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            handle: self.handle.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A service whose calls go through a breaker.
#[derive(Clone)]
pub struct BreakerService<S, C = Results> {
    inner: S,
    handle: BreakerHandle,
    classifier: Arc<C>,
}

impl<S, C, Req> tower::Service<Req> for BreakerService<S, C>
where
    S: tower::Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    C: Classifier<S::Response, S::Error> + 'static,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, CallError<S::Error>>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Admission first: a rejected request must not reach the inner service at all (many
        // services start their work in `call`, not when the future is polled).
        // The guard is taken before the inner call: a future dropped unpolled still ends the call
        // (cancelled), so its trial permit comes back.
        let admitted = match self.handle.admit_owned::<S::Error>() {
            Ok(a) => a,
            Err(rejected) => return Box::pin(std::future::ready(Err(rejected))),
        };
        let fut = self.inner.call(req);
        let classifier = self.classifier.clone();
        Box::pin(async move { run_admitted_outcome(admitted, fut, classifier.as_ref()).await.0 })
    }
}
