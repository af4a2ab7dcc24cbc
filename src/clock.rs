//! Time for the live path: a coarse millisecond clock read with one atomic load.
//!
//! `Instant::now()` costs 30–43 ns on this machine kind, more than a whole recloser call, and
//! the core counts in milliseconds anyway. So a ticker thread stores the Unix time in ms into an
//! atomic every millisecond, and the call path reads that. Tests use a manual clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A clock the breakers read: the coarse system clock, or one a test moves by hand.
#[derive(Clone, Debug)]
pub struct Clock {
    now: Arc<AtomicU64>,
    manual: bool,
    /// Set by hand while the actors' timers run on real time ([`Clock::held`]).
    held: bool,
    stop: Arc<AtomicBool>,
}

impl Clock {
    /// The system clock at 1 ms resolution, kept by a ticker thread (stopped when the last
    /// clone of this clock is dropped… or never, if leaked; it is one sleeping thread).
    pub fn system() -> Self {
        let now = Arc::new(AtomicU64::new(system_now_ms()));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (Arc::downgrade(&now), stop.clone());
        let _ = std::thread::Builder::new()
            .name("breakerbox-clock".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let Some(now) = n.upgrade() else { break };
                    // Never backwards: the core treats time as non-decreasing.
                    now.fetch_max(system_now_ms(), Ordering::Relaxed);
                    drop(now);
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
        Clock {
            now,
            manual: false,
            held: false,
            stop,
        }
    }

    /// A clock that only moves when told (tests, simulations).
    pub fn manual(start_ms: u64) -> Self {
        Clock {
            now: Arc::new(AtomicU64::new(start_ms)),
            manual: true,
            held: false,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A clock a test sets by hand ([`Clock::set`]) while the actors' timers run on real time,
    /// as with the system clock: for what a lagging ticker does to them (a timer that fires
    /// before this clock reaches its deadline must be set again, not forgotten).
    pub fn held(start_ms: u64) -> Self {
        Clock {
            now: Arc::new(AtomicU64::new(start_ms)),
            manual: false,
            held: true,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Moves a manual or held clock to `ms`, never backwards (no effect on the system clock).
    pub fn set(&self, ms: u64) {
        if self.manual || self.held {
            self.now.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// Now, in ms since the Unix epoch (or the manual clock's origin).
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, ms: u64) {
        if self.manual {
            self.now.fetch_add(ms, Ordering::Relaxed);
        }
    }

    /// Is this a manual clock (timers are then driven by [`Clock::advance`] and ticks)?
    pub fn is_manual(&self) -> bool {
        self.manual
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        // The last clone stops the ticker.
        if Arc::strong_count(&self.stop) == 1 {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}
