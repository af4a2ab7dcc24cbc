//! The pure core against recloser and failsafe, single-threaded, in one criterion run.
//!
//! Groups (one row each in `docs/performance.md`):
//!
//! - `closed_call/*`: one call that is let through and succeeds, in CLOSED.
//!   - `breakerbox`: `acquire` + `complete(Success)`, consecutive-failures policy, `now` from a
//!     counter (the core never reads a clock), one reused events `Vec` cleared every call.
//!   - `breakerbox_instant_now`: the same, plus one `Instant::now()` per call turned into
//!     milliseconds: what a live caller pays to feed the core a time.
//!   - `breakerbox_rate_window100`: failure-rate policy over a count window of 100 calls.
//!   - `recloser`: `Recloser::default()` (failure rate over a ring of 100 calls).
//!   - `failsafe_default`: `Config::new().build()` (EMA success rate over 30 s, or else 5
//!     consecutive failures).
//!   - `failsafe_consecutive`: `consecutive_failures(5, constant 60 s)`.
//! - `open_reject/*`: one call refused by an OPEN breaker whose period runs for another hour.
//! - `clock/instant_now_ms`: the clock read alone, as a reference.
//!
//! Peers run `|| Ok::<u32, ()>(black_box(1))` as the protected call; the core does not run the
//! call itself, so its bench makes the same `black_box(1)` between `acquire` and `complete`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use breakerbox::breaker::{Breaker, Decision, Event, Outcome, Policy, SlidingWindow, State, TripRule};
use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::{CircuitBreaker, Config, backoff, failure_policy};
use recloser::Recloser;

const HOUR_MS: u64 = 3_600_000;
const HOUR: Duration = Duration::from_secs(3_600);
/// `now` for the OPEN benches wraps below this, so it stays inside the one-hour OPEN period
/// however many iterations criterion runs.
const OPEN_NOW_MASK: u64 = (1 << 20) - 1;

/// The seed's policy shape: 5 failures in a row open it for 60 s.
fn consecutive_policy() -> Policy {
    Policy::consecutive(5, 60_000)
}

/// Failure rate ≥ 50 % over the last 100 calls, judged from 100 calls (Resilience4j's defaults).
fn rate_policy() -> Policy {
    Policy {
        trip: TripRule::FailureRate {
            threshold_percent: 50.0,
            window: SlidingWindow::Count { calls: 100 },
            minimum_calls: 100,
        },
        ..consecutive_policy()
    }
}

/// One permitted, successful call through the core at `now`.
#[inline(always)]
fn core_call(breaker: &mut Breaker, now: u64, events: &mut Vec<Event>) {
    events.clear();
    match breaker.acquire(now, events) {
        Decision::Permit(permit) => {
            black_box(1u32);
            breaker.complete(now, permit, Outcome::Success, events);
        }
        Decision::Reject(_) => unreachable!("CLOSED rejects nothing"),
    }
    black_box(&events);
}

/// A breaker tripped at 0 ms, OPEN until one hour.
fn tripped_core() -> Breaker {
    let mut breaker = Breaker::new(Policy::consecutive(5, HOUR_MS)).unwrap();
    let mut events = Vec::new();
    for _ in 0..5 {
        let Decision::Permit(permit) = breaker.acquire(0, &mut events) else {
            unreachable!()
        };
        breaker.complete(0, permit, Outcome::Failure, &mut events);
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(breaker.next_deadline_ms(), Some(HOUR_MS));
    breaker
}

fn closed_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("closed_call");

    let mut breaker = Breaker::new(consecutive_policy()).unwrap();
    let mut events: Vec<Event> = Vec::with_capacity(4);
    let mut now = 0u64;
    group.bench_function("breakerbox", |b| {
        b.iter(|| {
            now += 1;
            core_call(&mut breaker, black_box(now), &mut events);
        })
    });
    assert_eq!(breaker.state(), State::Closed);

    let mut breaker = Breaker::new(consecutive_policy()).unwrap();
    let origin = Instant::now();
    group.bench_function("breakerbox_instant_now", |b| {
        b.iter(|| {
            let now = origin.elapsed().as_millis() as u64;
            core_call(&mut breaker, now, &mut events);
        })
    });
    assert_eq!(breaker.state(), State::Closed);

    let mut breaker = Breaker::new(rate_policy()).unwrap();
    let mut now = 0u64;
    // Fill the window first, so every measured call replaces the oldest one (steady state).
    for _ in 0..100 {
        now += 1;
        core_call(&mut breaker, now, &mut events);
    }
    assert_eq!(breaker.view(now).window.map(|w| w.calls), Some(100));
    group.bench_function("breakerbox_rate_window100", |b| {
        b.iter(|| {
            now += 1;
            core_call(&mut breaker, black_box(now), &mut events);
        })
    });
    assert_eq!(breaker.state(), State::Closed);

    let recloser = Recloser::default();
    group.bench_function("recloser", |b| {
        b.iter(|| black_box(recloser.call(|| Ok::<u32, ()>(black_box(1)))))
    });

    let failsafe_default = Config::new().build();
    group.bench_function("failsafe_default", |b| {
        b.iter(|| black_box(failsafe_default.call(|| Ok::<u32, ()>(black_box(1)))))
    });

    let failsafe_consecutive = Config::new()
        .failure_policy(failure_policy::consecutive_failures(
            5,
            backoff::constant(Duration::from_secs(60)),
        ))
        .build();
    group.bench_function("failsafe_consecutive", |b| {
        b.iter(|| black_box(failsafe_consecutive.call(|| Ok::<u32, ()>(black_box(1)))))
    });

    group.finish();
}

fn open_reject(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_reject");
    let mut events: Vec<Event> = Vec::with_capacity(4);

    let mut breaker = tripped_core();
    let mut now = 0u64;
    group.bench_function("breakerbox", |b| {
        b.iter(|| {
            now = (now + 1) & OPEN_NOW_MASK;
            events.clear();
            let decision = breaker.acquire(black_box(now), &mut events);
            debug_assert!(matches!(decision, Decision::Reject(_)));
            black_box(decision)
        })
    });
    assert_eq!(breaker.state(), State::Open);

    let mut breaker = tripped_core();
    let origin = Instant::now();
    group.bench_function("breakerbox_instant_now", |b| {
        b.iter(|| {
            // The run is far shorter than the hour the breaker stays OPEN.
            let now = origin.elapsed().as_millis() as u64;
            events.clear();
            black_box(breaker.acquire(now, &mut events))
        })
    });
    assert_eq!(breaker.state(), State::Open);

    // closed_len 1: the second failure fills the ring at a 100 % failure rate and opens it.
    let recloser = Recloser::custom().closed_len(1).error_rate(0.5).open_wait(HOUR).build();
    for _ in 0..2 {
        let _ = recloser.call(|| Err::<u32, ()>(()));
    }
    assert!(matches!(
        recloser.call(|| Ok::<u32, ()>(1)),
        Err(recloser::Error::Rejected)
    ));
    group.bench_function("recloser", |b| {
        b.iter(|| black_box(recloser.call(|| Ok::<u32, ()>(black_box(1)))))
    });

    let failsafe = Config::new()
        .failure_policy(failure_policy::consecutive_failures(1, backoff::constant(HOUR)))
        .build();
    let _ = failsafe.call(|| Err::<u32, ()>(()));
    assert!(matches!(
        failsafe.call(|| Ok::<u32, ()>(1)),
        Err(failsafe::Error::Rejected)
    ));
    group.bench_function("failsafe", |b| {
        b.iter(|| black_box(failsafe.call(|| Ok::<u32, ()>(black_box(1)))))
    });

    group.finish();
}

/// What reading the clock costs by itself, as our `_instant_now` variants read it.
fn clock(c: &mut Criterion) {
    let origin = Instant::now();
    c.bench_function("clock/instant_now_ms", |b| {
        b.iter(|| black_box(origin.elapsed().as_millis() as u64))
    });
}

criterion_group!(benches, closed_call, open_reject, clock);
criterion_main!(benches);
