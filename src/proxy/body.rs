//! Bodies streamed through the proxy, never buffered whole: the request's (counted against
//! `max_body`; its end and its faults told to the handler) and the response's, which ends the
//! call exactly once — with the outcome its status gave when the last byte went out, as a
//! failure if the upstream's body broke, as a timeout past `total_timeout` (by the worker's
//! sweep, so a client that stops reading cannot hold the call, its trial permit or its bulkhead
//! place), as cancelled if the client went away or its own body broke.

use super::cache::{Answer, LastGood};
use crate::actor::{Admitted, BreakerHandle};
use crate::breaker::Outcome;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the client's side of an exchange stands, as its request body tells it.
#[derive(Default)]
pub(super) struct Client {
    state: AtomicU8,
    /// Told once the whole request body has gone to the upstream.
    pub sent: tokio::sync::Notify,
}

impl Client {
    const OVER: u8 = 1;
    const BROKEN: u8 = 2;

    /// The request body went over `max_body`: 413.
    pub(super) fn over(&self) -> bool {
        self.state.load(Ordering::Acquire) == Self::OVER
    }

    /// The exchange broke on the client's side (its body too large, malformed or cut off): the
    /// call ends as cancelled, not as the upstream's failure.
    pub(super) fn at_fault(&self) -> bool {
        self.state.load(Ordering::Acquire) != 0
    }
}

/// The request body on its way to the upstream: an error (which aborts the upstream request)
/// once more than `max` bytes came or when the client's body breaks, each told to `client`.
pub(super) struct RequestBody {
    pub inner: Incoming,
    pub seen: u64,
    pub max: u64,
    pub client: Arc<Client>,
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
                        this.client.state.store(Client::OVER, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(this.max)))));
                    }
                }
                // hyper stops polling once a Content-Length is all read: the end is here.
                if this.inner.is_end_stream() {
                    this.client.sent.notify_one();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                let _ = this
                    .client
                    .state
                    .compare_exchange(0, Client::BROKEN, Ordering::AcqRel, Ordering::Acquire);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            None => {
                this.client.sent.notify_one();
                Poll::Ready(None)
            }
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

/// What a streaming exchange holds until it ends: the call and the bulkhead's place. Shared with
/// the worker's sweep, which ends it at `total_timeout` whether or not the body is being polled.
pub(super) struct Held {
    pub call: Option<Admitted<BreakerHandle>>,
    pub slot: Option<OwnedSemaphorePermit>,
    /// The body's task, woken when the sweep ends the exchange.
    pub waker: Option<std::task::Waker>,
}

impl Held {
    /// Ends the call with `outcome` (the first end wins) and gives the place back.
    pub(super) fn end(held: &Mutex<Held>, outcome: Outcome) {
        let (call, slot, waker) = {
            let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
            (h.call.take(), h.slot.take(), h.waker.take())
        };
        if let Some(call) = call {
            call.complete(outcome);
        }
        drop(slot);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// An upstream's body, carrying the call until its end.
pub(super) struct Streaming {
    pub inner: Incoming,
    pub held: Arc<Mutex<Held>>,
    /// What the status said.
    pub outcome: Outcome,
    pub copy: Option<Copy>,
    /// The client's side: a broken exchange that is its doing ends as cancelled.
    pub client: Arc<Client>,
}

impl Streaming {
    fn end(&mut self, outcome: Outcome) {
        Held::end(&self.held, outcome);
    }

    /// Whether the exchange has ended (the sweep's doing, when the body has not); otherwise
    /// the body's task is left to be woken by it.
    fn ended(&self, cx: &Context<'_>) -> bool {
        let mut h = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if h.call.is_none() {
            return true;
        }
        match &h.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => h.waker = Some(cx.waker().clone()),
        }
        false
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
        if s.ended(cx) {
            // The sweep ended it at total_timeout: the exchange stops here.
            s.copy = None;
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
                let outcome = if s.client.at_fault() {
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
