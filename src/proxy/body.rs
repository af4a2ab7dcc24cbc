//! Bodies streamed through the proxy, never buffered whole: the request's (counted against
//! `max_body`) and the response's, which ends the call exactly once — with the outcome its
//! status gave when the last byte went out, as a failure if the upstream's body broke, as a
//! timeout past `total_timeout`, as cancelled if the client went away first.

use super::cache::{Answer, LastGood};
use crate::actor::{Admitted, BreakerHandle};
use crate::breaker::Outcome;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body on its way to the upstream: an error (which aborts the upstream request)
/// once more than `max` bytes came, with `over` set so the client is answered 413.
pub(super) struct RequestBody {
    pub inner: Incoming,
    pub seen: u64,
    pub max: u64,
    pub over: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the proxy's max_body ({0} bytes)")]
pub(super) struct TooLarge(u64);

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.max {
                        this.over.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.max)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response sends: a whole answer of the proxy's own, or an upstream's body streamed.
pub(super) enum ProxyBody {
    Full(Option<Bytes>),
    Stream(Box<Streaming>),
}

impl ProxyBody {
    pub(super) fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

/// A 2xx answer of a `last_good` route, copied while it streams.
pub(super) struct Copy {
    pub cache: Arc<LastGood>,
    pub key: String,
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub parts: Vec<Bytes>,
    pub len: u64,
}

/// An upstream's body, carrying the call until its end.
pub(super) struct Streaming {
    pub inner: Incoming,
    pub call: Option<Admitted<BreakerHandle>>,
    /// What the status said.
    pub outcome: Outcome,
    pub deadline: Pin<Box<tokio::time::Sleep>>,
    pub copy: Option<Copy>,
    /// Set when the request body went over `max_body`: a broken exchange is then the client's
    /// doing (cancelled), not the upstream's failure.
    pub over: Arc<AtomicBool>,
    /// The bulkhead's place, given back with the body.
    pub _slot: OwnedSemaphorePermit,
}

impl Streaming {
    fn end(&mut self, outcome: Outcome) {
        if let Some(call) = self.call.take() {
            call.complete(outcome);
        }
    }
}

impl Streaming {
    /// The last byte came: the call ends with what its status said, and a remembered answer is
    /// kept.
    fn finish(&mut self) {
        let outcome = self.outcome;
        self.end(outcome);
        if let Some(c) = self.copy.take() {
            let mut body = Vec::with_capacity(c.len as usize);
            for p in &c.parts {
                body.extend_from_slice(p);
            }
            c.cache.put(
                c.key,
                Answer {
                    status: c.status,
                    headers: c.headers,
                    body: body.into(),
                    at: Instant::now(),
                },
            );
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        // The client went away before the last byte (or hyper dropped the body).
        self.end(Outcome::Cancelled);
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the exchange ran past the proxy's total_timeout")]
struct TotalTimeout;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let s = match &mut *self {
            ProxyBody::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream(s) => s,
        };
        if s.deadline.as_mut().poll(cx).is_ready() {
            s.copy = None;
            s.end(Outcome::Timeout);
            return Poll::Ready(Some(Err(Box::new(TotalTimeout))));
        }
        match ready!(Pin::new(&mut s.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let (Some(d), Some(c)) = (frame.data_ref(), s.copy.as_mut()) {
                    c.len += d.len() as u64;
                    if c.len > c.cache.max_bytes {
                        s.copy = None;
                    } else {
                        c.parts.push(d.clone());
                    }
                }
                // hyper stops polling once a Content-Length is all sent: end the call with its
                // last byte, not at a poll that may never come.
                if s.inner.is_end_stream() {
                    s.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                s.copy = None;
                let outcome = if s.over.load(Ordering::Acquire) {
                    Outcome::Cancelled
                } else {
                    Outcome::Failure
                };
                s.end(outcome);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                s.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream(s) => s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Stream(s) => s.inner.size_hint(),
        }
    }
}
