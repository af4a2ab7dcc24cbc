//! A stand-in upstream: an HTTP/1.1 server (hyper) on 127.0.0.1 answering as the script says
//! at that moment, with a few endpoints of its own for the proxy's tests and benchmarks:
//!
//! | request | answer |
//! |---|---|
//! | `POST`/`PUT /echo` | the request body, streamed back as it comes (same `Content-Length`, or chunked) |
//! | `POST /upload` | `{"received": N}` once the whole body (N bytes) is read, as most APIs answer |
//! | `GET /bytes/N` | N bytes of a fixed pattern ([`pattern`]), streamed; `?chunked=1`: no `Content-Length` |
//! | `GET /status/CODE` | that status; `?retry_after=S` adds `Retry-After: S` |
//! | `GET /headers` | the request's headers as a JSON object |
//! | `GET /delay/MS` | 200 after MS milliseconds |
//! | `GET /slow-body/MS` | 200 at once, one chunk, then the last one MS milliseconds later |
//! | anything else | the script's reply (status and delay) as JSON |
//!
//! Every answer carries `x-standin-seq`: how many requests this stand-in has received, this one
//! included, so a test can tell that nothing reached it in between.

use super::script::Script;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Reply = Response<BoxBody<Bytes, BoxError>>;

/// Starts `service` on an ephemeral loopback port; it runs until the runtime stops.
pub async fn start(service: &'static str, script: Script, started: Instant) -> std::io::Result<SocketAddr> {
    start_on(SocketAddr::from(([127, 0, 0, 1], 0)), service, script, started).await
}

/// As [`start`], on `addr`.
pub async fn start_on(
    addr: SocketAddr,
    service: &'static str,
    script: Script,
    started: Instant,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let seq = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let seq = seq.clone();
            let svc = hyper::service::service_fn(move |req| {
                let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
                async move { Ok::<_, Infallible>(answer(req, service, script, started, n).await) }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Byte `i` of `/bytes/N`'s body.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7) % 251) as u8
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(
        http_body_util::Full::new(body.into())
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        content_type.parse().expect("a valid header"),
    );
    r
}

fn query_value<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn answer(req: Request<Incoming>, service: &'static str, script: Script, started: Instant, seq: u64) -> Reply {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let mut reply = match (req.method().as_str(), segments.as_slice()) {
        ("POST" | "PUT", ["echo"]) => {
            let length = req.headers().get(http::header::CONTENT_LENGTH).cloned();
            let content_type = req.headers().get(http::header::CONTENT_TYPE).cloned();
            let mut r = Response::new(req.into_body().map_err(|e| Box::new(e) as BoxError).boxed());
            if let Some(l) = length {
                r.headers_mut().insert(http::header::CONTENT_LENGTH, l);
            }
            if let Some(t) = content_type {
                r.headers_mut().insert(http::header::CONTENT_TYPE, t);
            }
            r
        }
        ("POST", ["upload"]) => match req.into_body().collect().await {
            Ok(b) => full(
                StatusCode::OK,
                "application/json",
                format!("{{\"received\":{}}}", b.to_bytes().len()),
            ),
            Err(e) => full(StatusCode::BAD_REQUEST, "text/plain", format!("reading the body: {e}")),
        },
        ("GET", ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => {
                let chunked = query_value(&req, "chunked") == Some("1");
                let mut r = Response::new(Pattern { at: 0, len: n, chunked }.boxed());
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/octet-stream"),
                );
                r
            }
            Err(_) => full(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("{n:?} is not a byte count"),
            ),
        },
        ("GET", ["status", code]) => match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
            Some(status) => {
                let mut r = full(
                    status,
                    "application/json",
                    format!("{{\"service\":\"{service}\",\"status\":{}}}", status.as_u16()),
                );
                if let Some(s) = query_value(&req, "retry_after").and_then(|s| s.parse::<u64>().ok()) {
                    r.headers_mut().insert(http::header::RETRY_AFTER, s.into());
                }
                r
            }
            None => full(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("{code:?} is not a status"),
            ),
        },
        ("GET", ["headers"]) => {
            let mut map = serde_json::Map::new();
            for (n, v) in req.headers() {
                map.insert(
                    n.as_str().to_owned(),
                    serde_json::Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                );
            }
            map.insert("x-request-target".into(), req.uri().to_string().into());
            full(
                StatusCode::OK,
                "application/json",
                serde_json::Value::Object(map).to_string(),
            )
        }
        ("GET", ["slow-body", ms]) => {
            let ms = ms.parse::<u64>().unwrap_or(0).min(600_000);
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"first chunk;")).await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(Bytes::from_static(b"last chunk")).await;
            });
            Response::new(Chunks(rx).boxed())
        }
        ("GET", ["delay", ms]) => {
            let ms = ms.parse::<u64>().unwrap_or(0).min(600_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "application/json", format!("{{\"delayed_ms\":{ms}}}"))
        }
        _ => {
            let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let reply = script.reply(service, elapsed);
            tokio::time::sleep(Duration::from_millis(reply.delay_ms)).await;
            let body = format!(
                "{{\"service\":\"{service}\",\"path\":{path:?},\"status\":{},\"served_after_ms\":{}}}",
                reply.status, reply.delay_ms
            );
            full(
                StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "application/json",
                body,
            )
        }
    };
    reply.headers_mut().insert("x-standin-seq", seq.into());
    reply
}

/// `/bytes/N`'s body, made 64 KiB at a time.
struct Pattern {
    at: u64,
    len: u64,
    chunked: bool,
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.at >= self.len {
            return Poll::Ready(None);
        }
        let n = (self.len - self.at).min(64 * 1024);
        let chunk: Vec<u8> = (self.at..self.at + n).map(pattern).collect();
        self.at += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.len - self.at)
        }
    }
}

/// Chunks as they come from a channel (no `Content-Length`).
struct Chunks(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// A relay to `target` whose network goes bad in `[bad_from_ms, bad_to_ms)` since `started`:
/// its connections are cut then, and new ones refused (reset at once). One node's own network
/// trouble, for the fleet demo (`breakerbox demo --nodes`).
pub async fn start_bad_network(
    target: SocketAddr,
    (bad_from_ms, bad_to_ms): (u64, u64),
    started: Instant,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let bad_from = started + Duration::from_millis(bad_from_ms);
    let bad_to = started + Duration::from_millis(bad_to_ms);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let now = Instant::now();
            if now >= bad_from && now < bad_to {
                drop(client);
                continue;
            }
            tokio::spawn(async move {
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                // A connection open when the network goes bad is cut then.
                let cut = async {
                    if Instant::now() < bad_from {
                        tokio::time::sleep_until(bad_from.into()).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = copy => {}
                    _ = cut => {}
                }
            });
        }
    });
    Ok(addr)
}
