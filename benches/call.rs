//! The protected call path, with the journal attached and every outcome recorded, beside
//! recloser and failsafe doing the same work, in one run.
//!
//! - `closed_call/*`: a call in CLOSED whose work is an `Ok(1)` (breakerbox: `call_sync`, and
//!   `call` with a ready future polled once)
//! - `open_reject/*`: a call rejected in OPEN (tripped with a one-hour OPEN period)
//! - `*_2threads/*`: two threads calling one shared breaker; figure = wall time / calls per thread

use breakerbox::actor::{Clock, Registry, RegistryOptions};
use breakerbox::config::Config;
use breakerbox::journal::{Journal, JournalOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::CircuitBreaker as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[services.closed]
failure_threshold = 5
[services.open]
failure_threshold = 1
timeout = "1h"
"#;

struct Setup {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    registry: Registry,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let registry = rt.block_on(async {
        let config = Config::from_toml(Path::new("bench.toml"), CONFIG, &BTreeMap::new()).unwrap();
        let journal = Arc::new(
            Journal::open(&dir.path().join("log.db"), JournalOptions::default())
                .await
                .unwrap(),
        );
        let registry = Registry::start(
            &config,
            journal,
            RegistryOptions {
                clock: Clock::system(),
                ..RegistryOptions::default()
            },
        )
        .await
        .unwrap();
        let open = registry.get("open").unwrap();
        let _ = open.call_sync("", || Err::<(), _>("trip"));
        open.inspect().await;
        registry
    });
    Setup {
        _dir: dir,
        rt,
        registry,
    }
}

/// Polls a future once with a no-op waker: a ready future needs no executor. Always inlined:
/// out of line, the whole call future is moved into it by value on every iteration, and whether
/// the compiler inlines it changed with unrelated code (a 2x swing in `call_async_ready` between
/// two trees whose call path was identical: `docs/performance.md`).
#[inline(always)]
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the bench's futures are ready"),
    }
}

fn two_threads(iters: u64, call: impl Fn() + Send + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let call = &call;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        call();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
    })
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    let closed = setup.registry.get("closed").unwrap().clone();
    let open = setup.registry.get("open").unwrap().clone();

    let recloser_closed = recloser::Recloser::default();
    let recloser_open = recloser::Recloser::custom()
        .error_rate(0.01)
        .closed_len(1)
        .open_wait(Duration::from_secs(3600))
        .build();
    for _ in 0..10 {
        let _ = recloser_open.call(|| Err::<(), ()>(()));
    }
    let failsafe_closed = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            5,
            failsafe::backoff::constant(Duration::from_secs(60)),
        ))
        .build();
    let failsafe_open = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            1,
            failsafe::backoff::constant(Duration::from_secs(3600)),
        ))
        .build();
    let _ = failsafe_open.call(|| Err::<(), ()>(()));

    let mut g = c.benchmark_group("call_closed");
    g.bench_function("breakerbox_call_sync", |b| {
        b.iter(|| closed.call_sync("", || Ok::<u32, ()>(black_box(1))))
    });
    g.bench_function("breakerbox_call_async_ready", |b| {
        b.iter(|| ready(closed.call("", async { Ok::<u32, ()>(black_box(1)) })))
    });
    g.bench_function("recloser", |b| {
        b.iter(|| recloser_closed.call(|| Ok::<u32, ()>(black_box(1))))
    });
    g.bench_function("failsafe_consecutive", |b| {
        b.iter(|| failsafe_closed.call(|| Ok::<u32, ()>(black_box(1))))
    });
    g.finish();

    let mut g = c.benchmark_group("call_open_reject");
    g.bench_function("breakerbox", |b| {
        b.iter(|| open.call_sync("", || Ok::<u32, ()>(black_box(1))))
    });
    g.bench_function("recloser", |b| {
        b.iter(|| recloser_open.call(|| Ok::<u32, ()>(black_box(1))))
    });
    g.bench_function("failsafe", |b| {
        b.iter(|| failsafe_open.call(|| Ok::<u32, ()>(black_box(1))))
    });
    g.finish();

    let mut g = c.benchmark_group("call_closed_2threads");
    g.bench_function("breakerbox", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(closed.call_sync("", || Ok::<u32, ()>(black_box(1))));
            })
        })
    });
    g.bench_function("recloser", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(recloser_closed.call(|| Ok::<u32, ()>(black_box(1))));
            })
        })
    });
    g.bench_function("failsafe_consecutive", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(failsafe_closed.call(|| Ok::<u32, ()>(black_box(1))));
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("call_open_reject_2threads");
    g.bench_function("breakerbox", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(open.call_sync("", || Ok::<u32, ()>(black_box(1))));
            })
        })
    });
    g.bench_function("recloser", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(recloser_open.call(|| Ok::<u32, ()>(black_box(1))));
            })
        })
    });
    g.bench_function("failsafe", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, || {
                let _ = black_box(failsafe_open.call(|| Ok::<u32, ()>(black_box(1))));
            })
        })
    });
    g.finish();

    // Every outcome reached the log (or was counted as dropped if the actor fell behind).
    setup.rt.block_on(async {
        setup.registry.shutdown().await.unwrap();
        let stats = setup.registry.journal().stats();
        eprintln!(
            "journal: {} calls recorded in {} events over {} commits; {} records dropped by the journal",
            stats.calls.load(std::sync::atomic::Ordering::Relaxed),
            stats.events.load(std::sync::atomic::Ordering::Relaxed),
            stats.commits.load(std::sync::atomic::Ordering::Relaxed),
            stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        );
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
