//! The HTTP API under load, in one run:
//!
//! - `GET /api/health/circuit-breakers` with 30 services, and a minimal actix-web handler (one
//!   worker each, the same as `serve`), loaded by `wrk` (Debian's package) on loopback. Printed
//!   as requests/s and the ratio; skipped with a note when `wrk` is not installed.
//! - `call_with_sse/*` (criterion): a protected call in CLOSED with no dashboard connected, and
//!   with 100 SSE clients connected while an operator command every 20 ms streams to all of them.

use breakerbox::actor::{Operator, Registry, RegistryOptions};
use breakerbox::config::{Config, Secret};
use breakerbox::http::{ApiState, auth, server};
use breakerbox::journal::{Journal, JournalOptions};
use criterion::Criterion;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const TOKEN: &str = "bench-token-0123456789abcdef0123456789";
const SERVICES: usize = 30;
const SSE_CLIENTS: usize = 100;

struct Servers {
    api: SocketAddr,
    baseline: SocketAddr,
    registry: Arc<Registry>,
}

fn config() -> Config {
    let mut text = String::new();
    for i in 0..SERVICES {
        text.push_str(&format!("[services.svc{i:02}]\nfailure_threshold = 5\n"));
    }
    Config::from_toml(Path::new("bench.toml"), &text, &BTreeMap::new()).unwrap()
}

/// Both servers on their own actix systems (threads), with some traffic recorded so every
/// breaker has minutes and a health score to report.
fn start(dir: &Path) -> Servers {
    let (tx, rx) = std::sync::mpsc::channel();
    let db = dir.join("log.db");
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let config = config();
            let journal = Arc::new(Journal::open(&db, JournalOptions::default()).await.unwrap());
            let registry = Arc::new(
                Registry::start(&config, journal, RegistryOptions::default())
                    .await
                    .unwrap(),
            );
            for h in registry.handles() {
                for i in 0..200u32 {
                    let _ = h.call_sync("", || if i % 10 == 0 { Err(()) } else { Ok(()) });
                }
                h.inspect().await;
            }
            registry.journal().flush().await.unwrap();
            let state = actix_web::web::Data::new(ApiState::new(
                registry.clone(),
                config,
                vec![auth::Token::new("bench", &Secret::new(TOKEN))],
            ));
            let (api, addrs) = server(state, "127.0.0.1:0".parse().unwrap()).unwrap();
            tx.send((addrs[0], registry)).unwrap();
            api.await.unwrap();
        })
    });
    let (api, registry) = rx.recv().unwrap();
    // A static body as large as the health document, for a baseline that writes as much.
    let same_size = actix_web::web::Bytes::from(vec![b'x'; health_doc_len(api)]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let s = actix_web::HttpServer::new(move || {
                let same_size = same_size.clone();
                actix_web::App::new()
                    .route(
                        "/",
                        actix_web::web::get().to(|| async { actix_web::HttpResponse::Ok().body("ok") }),
                    )
                    .route(
                        "/same-size",
                        actix_web::web::get().to(move || {
                            let body = same_size.clone();
                            async move { actix_web::HttpResponse::Ok().body(body) }
                        }),
                    )
            })
            .workers(1)
            .bind("127.0.0.1:0")
            .unwrap();
            tx.send(s.addrs()[0]).unwrap();
            s.run().await.unwrap();
        })
    });
    Servers {
        api,
        baseline: rx.recv().unwrap(),
        registry,
    }
}

/// Length of the health document's body, fetched once.
fn health_doc_len(api: SocketAddr) -> usize {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    write!(
        s,
        "GET /api/health/circuit-breakers HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).unwrap();
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    response.len() - head_end
}

/// Requests/s `wrk` reports for `url` (1 thread, 16 connections, 10 s), or None without wrk.
fn wrk(url: &str, headers: &[&str]) -> Option<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c16", "-d10s", "--latency"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!("wrk {url}:\n{text}");
    assert!(!text.contains("Non-2xx"), "wrk saw errors: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Opens `n` SSE connections and reads them on one thread (idle until a frame arrives), until
/// the returned runtime is dropped; counts the bytes received.
fn sse_clients(addr: SocketAddr, n: usize, bytes: Arc<AtomicU64>) -> tokio::runtime::Runtime {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..n {
        let bytes = bytes.clone();
        rt.spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req =
                format!("GET /api/events/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut buf = [0u8; 16 * 1024];
            while let Ok(k) = s.read(&mut buf).await {
                if k == 0 {
                    break;
                }
                bytes.fetch_add(k as u64, Ordering::Relaxed);
            }
        });
    }
    rt
}

/// Throughput, side by side.
fn throughput(servers: &Servers) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let health = format!("http://{}/api/health/circuit-breakers", servers.api);
    let ours = wrk(&health, &[&auth]);
    let ours_gzip = wrk(&health, &[&auth, "Accept-Encoding: gzip"]);
    let baseline = wrk(&format!("http://{}/", servers.baseline), &[]);
    let same_size = wrk(&format!("http://{}/same-size", servers.baseline), &[]);
    match (ours, ours_gzip, baseline, same_size) {
        (Some(o), Some(g), Some(b), Some(z)) => println!(
            "health of {SERVICES} services: {o:.0} req/s plain (ratio {:.2}), {g:.0} req/s gzip accepted (ratio {:.2}); \
             minimal actix-web handler: {b:.0} req/s; the same handler with a body as large as the plain document: \
             {z:.0} req/s (plain ratio to it {:.2})",
            o / b,
            g / b,
            o / z
        ),
        _ => println!("wrk is not installed (apt-get install wrk): throughput not measured"),
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start(dir.path());

    // 40 s of wrk: only under `cargo bench`, not when `cargo test` checks that the bench runs.
    if std::env::args().any(|a| a == "--bench") {
        throughput(&servers);
    }

    // The protected call path, without and with 100 dashboards streaming events.
    let mut c = Criterion::default().configure_from_args();
    let handle = servers.registry.get("svc00").unwrap().clone();
    let mut g = c.benchmark_group("call_with_sse");
    g.bench_function("no_clients", |b| {
        b.iter(|| handle.call_sync("", || Ok::<u32, ()>(black_box(1))))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let readers = sse_clients(servers.api, SSE_CLIENTS, received.clone());
    // Events to stream: an operator command every 20 ms on another breaker.
    let commander = {
        let (stop, other) = (stop.clone(), servers.registry.get("svc29").unwrap().clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let op = Operator {
                    who: "bench".into(),
                    from: "library".into(),
                    why: format!("event {n}"),
                };
                let _ = if n.is_multiple_of(2) {
                    rt.block_on(other.force_open(op))
                } else {
                    rt.block_on(other.reset(op))
                };
                n += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    g.bench_function("100_sse_clients", |b| {
        b.iter(|| handle.call_sync("", || Ok::<u32, ()>(black_box(1))))
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    let commands = commander.join().unwrap();
    readers.shutdown_background();
    let bytes = received.load(Ordering::Relaxed);
    println!(
        "{SSE_CLIENTS} SSE clients received {:.1} MB while {commands} commands were streamed",
        bytes as f64 / 1e6
    );
    c.final_summary();
}
