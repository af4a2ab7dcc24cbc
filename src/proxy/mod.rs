//! The sidecar: a local HTTP/1.1 proxy in front of each configured upstream, so an application
//! in any language gets breakerbox's breakers by pointing its HTTP client at
//! `http://127.0.0.1:9000/SERVICE`. See `docs/sidecar.md`.
//!
//! ```text
//!  client ──▶ /stripe/v1/customers ──▶ path checks, limits, bulkhead ──▶ route → breaker
//!          admitted: forwarded to the configured upstream only (Host set, hop-by-hop stripped),
//!                    bodies streamed both ways; the call ends with the response's last byte
//!          rejected: 503 + Retry-After + X-Breaker-State, or the route's fallback
//! ```
//!
//! It runs on worker threads of its own (one current-thread runtime each, with its own
//! SO_REUSEPORT socket on the port), beside whatever runs the breakers; the breakers' handles are the same
//! ones the library's callers use, so everything is recorded as for any other call (calls,
//! rejections, fallbacks, transitions).

mod body;
mod cache;
mod path;

use crate::actor::{BreakerHandle, Registry};
use crate::breaker::{Outcome, State};
use crate::config::{Config, ProxyConfig, RouteFallback, Secret};
use body::{Copy, Held, ProxyBody, RequestBody, Streaming};
use cache::LastGood;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::Semaphore;

type Upstreams = Client<hyper_rustls::HttpsConnector<HttpConnector>, RequestBody>;

/// How to run the proxy.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// The address of the path-prefix listener (`/SERVICE/...`).
    pub bind: SocketAddr,
    /// Tokens a client must show as `Proxy-Authorization: Bearer TOKEN`. Required (non-empty)
    /// to listen on anything but loopback; empty on loopback: no check.
    pub tokens: Vec<Secret>,
    /// Worker threads (default: the machine's cores).
    pub threads: Option<usize>,
}

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum ProxyError {
    /// No service has an upstream.
    #[error("no service has an upstream: give one, e.g. [services.stripe] upstream = \"https://api.stripe.com\"")]
    NoUpstreams,
    /// Not loopback, and no token to check.
    #[error(
        "refusing to proxy on {0} without tokens: anything but a loopback address needs CIRCUIT_BREAKER_API_TOKEN or [api.tokens] (clients send Proxy-Authorization: Bearer TOKEN)"
    )]
    Unprotected(SocketAddr),
    /// A listening address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A service's breaker is not running.
    #[error("service {0} has no breaker running")]
    NoBreaker(String),
    /// An upstream's address cannot be used.
    #[error("upstream {0}")]
    Upstream(String),
    /// TLS could not be set up.
    #[error("setting up TLS to upstreams: {0}")]
    Tls(String),
    /// The proxy's thread could not start.
    #[error("starting the proxy's runtime: {0}")]
    Runtime(std::io::Error),
}

/// Counts of what the proxy did, since it started.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Requests forwarded to an upstream.
    pub forwarded: AtomicU64,
    /// Requests the breaker rejected (answered 503 or by a fallback).
    pub rejected: AtomicU64,
    /// Requests answered by a route's fallback.
    pub fallbacks: AtomicU64,
    /// Requests refused by the bulkhead.
    pub bulkhead_full: AtomicU64,
    /// Requests refused before reaching a breaker (bad path, unknown service, limits, token).
    pub refused: AtomicU64,
    /// Upstream responses that carried `Retry-After` (recorded, not acted on).
    pub retry_after_seen: AtomicU64,
}

/// A running proxy. [`Proxy::stop`] ends it; dropping it stops it too, without waiting.
pub struct Proxy {
    addrs: Vec<(SocketAddr, Option<String>)>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<ProxyStats>,
}

struct RouteRt {
    route: crate::config::Route,
    handle: BreakerHandle,
    last_good: Option<Arc<LastGood>>,
}

struct Service {
    name: String,
    handle: BreakerHandle,
    scheme: String,
    authority: String,
    host: HeaderValue,
    base_path: String,
    routes: Vec<RouteRt>,
    bulkhead: Arc<Semaphore>,
    max_concurrent: u32,
}

struct Shared {
    services: HashMap<String, Arc<Service>>,
    names: Vec<String>,
    /// This worker's upstream connections (set once its runtime runs).
    client: Option<Upstreams>,
    limits: ProxyConfig,
    /// SHA-256 of each token (compared in constant time).
    tokens: Vec<[u8; 32]>,
    stats: Arc<ProxyStats>,
    /// This worker's streaming exchanges and their total_timeout deadlines, swept every
    /// [`SWEEP`]: one ends as a timeout there even when nobody polls its body.
    watch: std::sync::Mutex<Vec<(tokio::time::Instant, std::sync::Weak<std::sync::Mutex<Held>>)>>,
}

/// How often a worker ends the streaming exchanges past their `total_timeout`: the bound is
/// enforced within this much.
const SWEEP: Duration = Duration::from_millis(250);

/// Ends the exchanges past their deadline (their calls as timeouts: trial permits and bulkhead
/// places come back, the bodies' tasks are woken to stop) and forgets the finished ones.
async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        let due: Vec<Arc<std::sync::Mutex<Held>>> = {
            let mut watch = shared.watch.lock().unwrap_or_else(|e| e.into_inner());
            let mut due = Vec::new();
            watch.retain(|(deadline, held)| match held.upgrade() {
                None => false,
                Some(h) if *deadline <= now => {
                    due.push(h);
                    false
                }
                Some(_) => true,
            });
            due
        };
        for h in due {
            Held::end(&h, Outcome::Timeout);
        }
    }
}

#[derive(Clone)]
enum Mode {
    /// `/SERVICE/...`.
    Prefix,
    /// One service's own port: the path is the upstream's.
    Fixed(Arc<Service>),
}

impl Proxy {
    /// Binds the listeners (the prefix one, and `[proxy.ports]`) and serves on a thread of its
    /// own until stopped. Only the configuration's upstreams are ever reached.
    pub fn start(registry: &Registry, config: &Config, options: ProxyOptions) -> Result<Proxy, ProxyError> {
        crate::tls::init();
        if config.upstreams.is_empty() {
            return Err(ProxyError::NoUpstreams);
        }
        let limits = config.proxy.clone();
        let mut binds = vec![(options.bind, None)];
        for (service, port) in &limits.ports {
            binds.push((SocketAddr::new(options.bind.ip(), *port), Some(service.clone())));
        }
        if options.tokens.is_empty()
            && let Some((addr, _)) = binds.iter().find(|(a, _)| !a.ip().is_loopback())
        {
            return Err(ProxyError::Unprotected(*addr));
        }
        let mut services = HashMap::new();
        for u in &config.upstreams {
            let handle = registry
                .get(&u.service)
                .cloned()
                .ok_or_else(|| ProxyError::NoBreaker(u.service.clone()))?;
            let routes = u
                .routes
                .iter()
                .map(|r| RouteRt {
                    route: r.clone(),
                    handle: r
                        .operation
                        .as_deref()
                        .map_or_else(|| handle.clone(), |op| handle.operation(op).clone()),
                    last_good: match r.fallback {
                        Some(RouteFallback::LastGood { max_age_ms, max_bytes }) => Some(Arc::new(LastGood::new(
                            Duration::from_millis(max_age_ms),
                            max_bytes,
                            r.key_headers
                                .iter()
                                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                                .collect(),
                        ))),
                        _ => None,
                    },
                })
                .collect();
            let host = HeaderValue::from_str(&u.authority).map_err(|e| {
                ProxyError::Upstream(format!("{}: {:?} is not a Host header: {e}", u.service, u.authority))
            })?;
            services.insert(
                u.service.clone(),
                Arc::new(Service {
                    name: u.service.clone(),
                    handle,
                    scheme: u.scheme.clone(),
                    authority: u.authority.clone(),
                    host,
                    base_path: u.base_path.clone(),
                    routes,
                    bulkhead: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
                    max_concurrent: limits.max_concurrent,
                }),
            );
        }
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
            .max(1);
        // One listening socket per worker and address (SO_REUSEPORT: the kernel spreads new
        // connections evenly, where workers sharing one socket let one of them take most), so a
        // request lives on one worker's thread from its first byte to its last. Never a port
        // someone else holds: a plain bind first must succeed (it fails beside any socket on
        // the port, SO_REUSEPORT or not), and only then the workers' sockets take it; a second
        // proxy on the port then fails that plain bind. Two addresses of one port: refused.
        let mut per_worker: Vec<Vec<(std::net::TcpListener, Option<String>)>> =
            (0..threads).map(|_| Vec::new()).collect();
        let mut addrs: Vec<(SocketAddr, Option<String>)> = Vec::new();
        for (addr, service) in binds {
            if addr.port() != 0 {
                if let Some((other, _)) = addrs.iter().find(|(a, _)| a.port() == addr.port()) {
                    return Err(ProxyError::Bind {
                        addr,
                        source: std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            format!(
                                "port {} is also {other}'s: give each listener a port of its own",
                                addr.port()
                            ),
                        ),
                    });
                }
                drop(std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?);
            }
            let mut local = addr;
            for worker in per_worker.iter_mut() {
                let l = reuseport_listener(local).map_err(|source| ProxyError::Bind { addr, source })?;
                local = l.local_addr().map_err(|source| ProxyError::Bind { addr, source })?;
                worker.push((l, service.clone()));
            }
            addrs.push((local, service));
        }
        let tls = match &limits.ca_file {
            None => {
                use hyper_rustls::ConfigBuilderExt;
                rustls::ClientConfig::builder()
                    .try_with_platform_verifier()
                    .map_err(|e| ProxyError::Tls(e.to_string()))?
                    .with_no_client_auth()
            }
            Some(path) => {
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let named =
                    |e: &dyn std::fmt::Display| ProxyError::Tls(format!("proxy.ca_file {}: {e}", path.display()));
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path).map_err(|e| named(&e))? {
                    roots.add(cert.map_err(|e| named(&e))?).map_err(|e| named(&e))?;
                }
                if roots.is_empty() {
                    return Err(named(&"no certificate in the file"));
                }
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
        };
        let stats = Arc::new(ProxyStats::default());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tokens: Vec<[u8; 32]> = options
            .tokens
            .iter()
            .map(|t| {
                use sha2::Digest;
                sha2::Sha256::digest(t.expose().as_bytes()).into()
            })
            .collect();
        let names = {
            let mut n: Vec<String> = services.keys().cloned().collect();
            n.sort();
            n
        };
        let connect_timeout = Duration::from_millis(limits.connect_timeout_ms);
        let mut workers = Vec::new();
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
            let shared = Shared {
                services: services.clone(),
                names: names.clone(),
                client: None,
                limits: limits.clone(),
                tokens: tokens.clone(),
                stats: stats.clone(),
                watch: std::sync::Mutex::new(Vec::new()),
            };
            let (tls, stop_rx) = (tls.clone(), stop_rx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("breakerbox-proxy-{i}"))
                .spawn(move || worker(shared, listeners, tls, connect_timeout, stop_rx, ready_tx))
                .map_err(ProxyError::Runtime)?;
            workers.push(thread);
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = stop_tx.send(true);
                    return Err(ProxyError::Runtime(e));
                }
                Err(_) => {
                    let _ = stop_tx.send(true);
                    return Err(ProxyError::Runtime(std::io::Error::other(
                        "a proxy worker ended at start",
                    )));
                }
            }
        }
        Ok(Proxy {
            addrs,
            stop: Some(stop_tx),
            workers,
            stats,
        })
    }

    /// The listening addresses: the prefix listener (service `None`), then one per
    /// `[proxy.ports]` entry.
    pub fn addrs(&self) -> &[(SocketAddr, Option<String>)] {
        &self.addrs
    }

    /// What it did so far.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    /// Stops accepting, gives requests in flight up to 2 s, then ends. Waits on a blocking
    /// thread, so it can be awaited from any runtime.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
    }
}

/// A listening socket the workers share by SO_REUSEPORT, non-blocking.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1_024)?;
    Ok(socket.into())
}

/// One worker: a current-thread runtime with its own upstream pool, serving its listeners
/// until the stop.
fn worker(
    mut shared: Shared,
    listeners: Vec<(std::net::TcpListener, Option<String>)>,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    stop_rx: tokio::sync::watch::Receiver<bool>,
    ready: std::sync::mpsc::SyncSender<std::io::Result<()>>,
) {
    // Built here: a runtime may not be dropped inside another's context.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        shared.client = Some(
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        );
        let shared = Arc::new(shared);
        let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
        let mut accepting = tokio::task::JoinSet::new();
        accepting.spawn(sweep(shared.clone()));
        for (l, service) in listeners {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            };
            let mode = match service {
                Some(s) => Mode::Fixed(shared.services[&s].clone()),
                None => Mode::Prefix,
            };
            accepting.spawn(accept(l, shared.clone(), mode, graceful.clone(), stop_rx.clone()));
        }
        let _ = ready.send(Ok(()));
        let mut stop = stop_rx;
        let _ = stop.wait_for(|s| *s).await;
        accepting.shutdown().await;
        // Requests in flight get the stop's grace; then the runtime ends them (each call ends
        // as cancelled).
        if let Ok(graceful) = Arc::try_unwrap(graceful) {
            let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
}

async fn accept(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mode: Mode,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let max_buf = (shared.limits.max_header_bytes as usize + 64 * 1024).max(8 * 1024);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: say it, breathe, go on.
                    tracing::warn!(error = %e, "the proxy could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (shared, mode) = (shared.clone(), mode.clone());
        let service = hyper::service::service_fn(move |req| {
            let (shared, mode) = (shared.clone(), mode.clone());
            async move { Ok::<_, Infallible>(handle(&shared, &mode, req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(max_buf)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

/// Connection-level headers never forwarded (RFC 9110 §7.6.1), besides those `Connection` names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(n);
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn refused(shared: &Shared, status: StatusCode, error: String) -> Response<ProxyBody> {
    shared.stats.refused.fetch_add(1, Ordering::Relaxed);
    json(status, serde_json::json!({ "error": error }))
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    if shared.tokens.is_empty() {
        return true;
    }
    let Some(given) = headers
        .get(header::PROXY_AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let digest: [u8; 32] = sha2::Sha256::digest(given.trim().as_bytes()).into();
    shared
        .tokens
        .iter()
        .fold(false, |ok, t| ok | bool::from(t.ct_eq(&digest)))
}

fn head_size(req: &Request<Incoming>) -> u64 {
    let target = match (req.uri().authority(), req.uri().path_and_query()) {
        // Absolute form: scheme://authority/path?query.
        (Some(a), pq) => {
            req.uri().scheme_str().map_or(0, |s| s.len() + 3) + a.as_str().len() + pq.map_or(0, |p| p.as_str().len())
        }
        (None, pq) => pq.map_or(1, |p| p.as_str().len()),
    };
    let line = req.method().as_str().len() + target + 12;
    let headers: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    (line + headers) as u64
}

async fn handle(shared: &Shared, mode: &Mode, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    if !authorized(shared, req.headers()) {
        let mut r = refused(
            shared,
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "send Proxy-Authorization: Bearer TOKEN".into(),
        );
        r.headers_mut()
            .insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let size = head_size(&req);
    if size > shared.limits.max_header_bytes {
        return refused(
            shared,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "the request line and headers are {size} bytes, over the proxy's max_header ({} bytes)",
                shared.limits.max_header_bytes
            ),
        );
    }
    // Only the path counts: an absolute-form request line's authority and the Host header are
    // never where a request goes.
    let full_path = req.uri().path().to_owned();
    let (service, rest) = match mode {
        Mode::Fixed(s) => (s.clone(), full_path.as_str()),
        Mode::Prefix => {
            let (name, rest) = path::split_service(&full_path);
            match shared.services.get(name) {
                Some(s) => (s.clone(), rest),
                None => {
                    return refused(
                        shared,
                        StatusCode::NOT_FOUND,
                        format!(
                            "no upstream is configured for {name:?}; the proxy forwards /{}/…",
                            shared.names.join("/…, /")
                        ),
                    );
                }
            }
        }
    };
    if let Err(why) = path::check(rest) {
        return refused(shared, StatusCode::BAD_REQUEST, why);
    }
    let rest = rest.to_owned();
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > shared.limits.max_body_bytes
    {
        return refused(
            shared,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is {len} bytes, over the proxy's max_body ({} bytes)",
                shared.limits.max_body_bytes
            ),
        );
    }
    let method = req.method().as_str().to_owned();
    // Normalized only for a service with routes: the rest go straight through.
    let route = if service.routes.is_empty() {
        None
    } else {
        let normal = path::normalized(&rest);
        service.routes.iter().find(|r| r.route.matches(&method, &normal))
    };
    let handle = route.map_or(&service.handle, |r| &r.handle);
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.clone(),
    };
    let Ok(slot) = service.bulkhead.clone().try_acquire_owned() else {
        shared.stats.bulkhead_full.fetch_add(1, Ordering::Relaxed);
        let mut r = json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({
                "error": format!("{} requests to {} are in flight already (the proxy's max_concurrent)", service.max_concurrent, service.name),
                "service": service.name,
            }),
        );
        r.headers_mut()
            .insert("x-breakerbox-reason", HeaderValue::from_static("bulkhead"));
        return r;
    };
    // A last_good route's key for this request (path, query, the caller's credentials).
    let cache_key = route
        .and_then(|r| r.last_good.as_ref())
        .map(|c| c.key(&path_and_query, req.headers()));
    let fallback = |why: Why| -> Option<Response<ProxyBody>> {
        let route = route?;
        let r = match route.route.fallback.as_ref()? {
            RouteFallback::Static { status, headers, body } => {
                let mut r = Response::new(ProxyBody::full(body.clone()));
                *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                for (n, v) in headers {
                    if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(v)) {
                        r.headers_mut().append(n, v);
                    }
                }
                r.headers_mut()
                    .insert("x-breakerbox-fallback", HeaderValue::from_static("static"));
                r
            }
            RouteFallback::LastGood { .. } => {
                let cache = route.last_good.as_ref()?;
                let now = Instant::now();
                let a = cache.get(cache_key.as_deref()?, now)?;
                let mut r = Response::new(ProxyBody::full(a.body.clone()));
                *r.status_mut() = a.status;
                *r.headers_mut() = a.headers.clone();
                let age = now.saturating_duration_since(a.at).as_secs();
                r.headers_mut().insert(header::AGE, HeaderValue::from(age));
                r.headers_mut()
                    .insert("x-breakerbox-fallback", HeaderValue::from_static("last_good"));
                r
            }
        };
        let mut r = r;
        if let Why::Rejected(state) = why {
            r.headers_mut()
                .insert("x-breaker-state", HeaderValue::from_static(state.as_str()));
        }
        handle.record_fallback();
        shared.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        Some(r)
    };
    let call = match handle.admit_owned::<Infallible>() {
        Ok(c) => c,
        Err(crate::actor::CallError::Rejected {
            service: key,
            state,
            retry_after,
        }) => {
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = fallback(Why::Rejected(state)) {
                return r;
            }
            let retry_ms = retry_after.map(|d| d.as_millis() as u64);
            let mut r = json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "error": format!("circuit breaker {key} is {state}: request not forwarded"),
                    "service": service.name,
                    "breaker": key,
                    "state": state.as_str(),
                    "retry_after_ms": retry_ms,
                }),
            );
            // Whole seconds, rounded up; 1 when the breaker does not know (trial permits out).
            let secs = retry_ms.map_or(1, |ms| ms.div_ceil(1_000).max(1));
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r.headers_mut()
                .insert("x-breaker-state", HeaderValue::from_static(state.as_str()));
            return r;
        }
        Err(_) => unreachable!("admission only rejects"),
    };
    // The upstream request: the configured upstream, this path and query, the client's headers
    // but the connection's own, Host set to the upstream's.
    let uri = format!(
        "{}://{}{}{}",
        service.scheme, service.authority, service.base_path, path_and_query
    );
    let Ok(uri) = uri.parse::<http::Uri>() else {
        return refused(
            shared,
            StatusCode::BAD_REQUEST,
            format!("{path_and_query:?} is not a valid path"),
        );
    };
    let (mut parts, incoming) = req.into_parts();
    let remember = route
        .and_then(|r| r.last_good.clone())
        .filter(|_| parts.method == http::Method::GET)
        .zip(cache_key.clone());
    let request_headers = remember.as_ref().map(|_| parts.headers.clone());
    strip_hop_by_hop(&mut parts.headers);
    // The client's `Expect: 100-continue` was answered here (hyper sends 100 when the body is
    // first read); the upstream gets the body without waiting.
    parts.headers.remove(header::EXPECT);
    parts.headers.insert(header::HOST, service.host.clone());
    let client_side = Arc::new(body::Client::default());
    // A request without a body has nothing to send: its upload is done at once.
    let mut uploaded = http_body::Body::is_end_stream(&incoming);
    let body = RequestBody {
        inner: incoming,
        seen: 0,
        max: shared.limits.max_body_bytes,
        client: client_side.clone(),
    };
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = parts.headers;
    shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let call_timeout = handle.call_timeout();
    let total = Duration::from_millis(shared.limits.total_timeout_ms);
    let Some(client) = shared.client.as_ref() else {
        unreachable!("a worker serves once its client is built")
    };
    // The upstream has `call_timeout` to answer once the request is all sent; the upload itself
    // is the client's pace, bounded by `total_timeout` (past it: the client's doing, 408).
    let mut request = std::pin::pin!(client.request(up));
    let mut answer_by = started + total;
    if uploaded {
        answer_by = answer_by.min(started + call_timeout);
    }
    let sent = loop {
        tokio::select! {
            r = &mut request => break Some(r),
            _ = client_side.sent.notified(), if !uploaded => {
                uploaded = true;
                answer_by = answer_by.min(tokio::time::Instant::now() + call_timeout);
            }
            _ = tokio::time::sleep_until(answer_by) => break None,
        }
    };
    let response = match sent {
        Some(Ok(r)) => r,
        Some(Err(e)) if client_side.at_fault() => {
            // The client's doing, not the upstream's: the call ends as cancelled.
            drop((call, e));
            if client_side.over() {
                return refused(
                    shared,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is over the proxy's max_body ({} bytes)",
                        shared.limits.max_body_bytes
                    ),
                );
            }
            return refused(
                shared,
                StatusCode::BAD_REQUEST,
                "the request body was malformed or cut off".into(),
            );
        }
        Some(Err(e)) => {
            call.complete(Outcome::Failure);
            let why = crate::tls::error_chain(&e);
            tracing::debug!(service = %service.name, peer = %peer, error = %why, "upstream request failed");
            if let Some(r) = fallback(Why::Failed) {
                return r;
            }
            return json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({
                    "error": format!("{} ({}) could not be reached: {why}", service.name, service.authority),
                    "service": service.name,
                }),
            );
        }
        None if !uploaded => {
            drop(call);
            return refused(
                shared,
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within the proxy's total_timeout ({} ms)",
                    total.as_millis()
                ),
            );
        }
        None => {
            call.complete(Outcome::Timeout);
            if let Some(r) = fallback(Why::Failed) {
                return r;
            }
            return json(
                StatusCode::GATEWAY_TIMEOUT,
                serde_json::json!({
                    "error": format!("{} did not answer within {} ms", service.name, call_timeout.min(total).as_millis()),
                    "service": service.name,
                }),
            );
        }
    };
    let (mut parts, incoming) = response.into_parts();
    let outcome = handle.statuses().classify(parts.status.as_u16());
    if let Some(v) = parts.headers.get(header::RETRY_AFTER) {
        shared.stats.retry_after_seen.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            service = %service.name,
            status = parts.status.as_u16(),
            retry_after = %String::from_utf8_lossy(v.as_bytes()),
            "the upstream sent Retry-After (recorded, not acted on: the breaker's own timing decides)"
        );
    }
    strip_hop_by_hop(&mut parts.headers);
    // The breaker's headers are this proxy's to set: an upstream's (another sidecar's) would
    // tell the client a request was not sent when it was.
    for name in ["x-breaker-state", "x-breakerbox-fallback", "x-breakerbox-reason"] {
        parts.headers.remove(name);
    }
    if http_body::Body::is_end_stream(&incoming) {
        call.complete(outcome);
        return Response::from_parts(parts, ProxyBody::Full(None));
    }
    let copy = remember
        .filter(|_| {
            request_headers
                .as_ref()
                .is_some_and(|r| LastGood::keepable(r, parts.status, &parts.headers))
        })
        .map(|(cache, key)| Copy {
            cache,
            key,
            status: parts.status,
            headers: parts.headers.clone(),
            parts: Vec::new(),
            len: 0,
        });
    let held = Arc::new(std::sync::Mutex::new(Held {
        call: Some(call),
        slot: Some(slot),
        waker: None,
    }));
    // Ends the call at total_timeout even when nobody polls the body (a client that stopped
    // reading): its trial permit and bulkhead place come back.
    // (The worker's sweep does it: a push here, no timer or task per response.)
    shared
        .watch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((started + total, Arc::downgrade(&held)));
    Response::from_parts(
        parts,
        ProxyBody::Stream(Box::new(Streaming {
            inner: incoming,
            held,
            outcome,
            copy,
            client: client_side,
        })),
    )
}

#[derive(Clone, Copy)]
enum Why {
    Rejected(State),
    Failed,
}
