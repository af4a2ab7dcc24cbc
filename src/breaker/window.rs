//! Sliding windows of recent calls: bounded memory, O(1) amortised per recorded call.

use super::policy::SlidingWindow;
use serde::{Deserialize, Serialize};

/// What a window holds at some instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Calls counted (ignored outcomes are not calls here).
    pub calls: u64,
    /// Failed calls (failures and timeouts).
    pub failures: u64,
    /// Slow calls, failed or not.
    pub slow: u64,
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// A window of calls, count- or time-based.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    /// The last N calls in a ring.
    Count(CountWindow),
    /// Calls in the last N time buckets.
    Time(TimeWindow),
}

impl Window {
    /// An empty window of the given shape (the shape was validated with the policy).
    pub fn new(spec: &SlidingWindow) -> Self {
        match *spec {
            SlidingWindow::Count { calls } => Window::Count(CountWindow::new(calls)),
            SlidingWindow::Time { window_ms, buckets } => Window::Time(TimeWindow::new(window_ms, buckets)),
        }
    }

    /// Records one call completed at `at_ms`.
    pub fn record(&mut self, at_ms: u64, failed: bool, slow: bool) {
        let bits = if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        match self {
            Window::Count(w) => w.record(bits),
            Window::Time(w) => w.record(at_ms, bits),
        }
    }

    /// The counts right after the latest `record` (what trip rules look at).
    pub fn totals(&self) -> Counts {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => w.totals,
        }
    }

    /// The counts as seen at `now_ms`: time buckets that have slid out by then are left out.
    pub fn counts_at(&self, now_ms: u64) -> Counts {
        match self {
            Window::Count(w) => w.totals,
            Window::Time(w) => w.counts_at(now_ms),
        }
    }

    /// Empties the window, keeping its allocation.
    pub fn clear(&mut self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }

    /// This window re-shaped to `spec`, keeping what can be kept: the same shape keeps
    /// everything, a count window resized keeps its most recent calls; a change of kind or of
    /// bucket width starts empty (the old buckets cannot be split).
    pub fn reshaped(&self, spec: &SlidingWindow) -> Window {
        match (self, spec) {
            (Window::Count(w), SlidingWindow::Count { calls }) => {
                let mut fresh = CountWindow::new(*calls);
                for bits in w.oldest_first() {
                    fresh.record(bits);
                }
                Window::Count(fresh)
            }
            (Window::Time(w), SlidingWindow::Time { window_ms, buckets })
                if w.width_ms == window_ms / u64::from(*buckets) && w.slots.len() == *buckets as usize =>
            {
                self.clone()
            }
            _ => Window::new(spec),
        }
    }
}

/// The last `capacity` calls, one byte each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountWindow {
    #[serde(with = "serde_bytes")]
    ring: Vec<u8>,
    capacity: usize,
    /// Where the next call goes once the ring is full.
    next: usize,
    totals: Counts,
}

impl CountWindow {
    fn new(calls: u32) -> Self {
        CountWindow {
            // Grows as calls arrive: a 1M-call window costs nothing until it is used.
            ring: Vec::new(),
            capacity: calls as usize,
            next: 0,
            totals: Counts::default(),
        }
    }

    fn record(&mut self, bits: u8) {
        if self.ring.len() < self.capacity {
            self.ring.push(bits);
        } else {
            let old = std::mem::replace(&mut self.ring[self.next], bits);
            self.next = (self.next + 1) % self.capacity;
            self.totals.calls -= 1;
            self.totals.failures -= u64::from(old & FAILED);
            self.totals.slow -= u64::from((old & SLOW) >> 1);
        }
        self.totals.calls += 1;
        self.totals.failures += u64::from(bits & FAILED);
        self.totals.slow += u64::from((bits & SLOW) >> 1);
    }

    fn oldest_first(&self) -> impl Iterator<Item = u8> + '_ {
        let (newer, older) = self.ring.split_at(self.next);
        older.iter().chain(newer).copied()
    }

    fn clear(&mut self) {
        self.ring.clear();
        self.next = 0;
        self.totals = Counts::default();
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    /// Absolute bucket number (`at_ms / width_ms`); a slot is reused for later numbers.
    index: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// Calls in the last `slots.len()` buckets of `width_ms` each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    slots: Vec<Bucket>,
    width_ms: u64,
    /// Newest bucket number recorded into; `totals` covers buckets in
    /// `(latest - slots.len(), latest]`.
    latest: u64,
    totals: Counts,
}

impl TimeWindow {
    fn new(window_ms: u64, buckets: u32) -> Self {
        TimeWindow {
            slots: vec![Bucket::default(); buckets as usize],
            width_ms: window_ms / u64::from(buckets),
            latest: 0,
            totals: Counts::default(),
        }
    }

    fn record(&mut self, at_ms: u64, bits: u8) {
        // Time never runs backwards here: an earlier instant counts in the newest bucket.
        let index = (at_ms / self.width_ms).max(self.latest);
        self.advance(index);
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(index % n) as usize];
        if slot.index != index || slot.calls == 0 {
            *slot = Bucket {
                index,
                ..Bucket::default()
            };
        }
        // Saturating: a bucket holding 4 billion calls is already decided.
        slot.calls = slot.calls.saturating_add(1);
        slot.failures = slot.failures.saturating_add(u32::from(bits & FAILED));
        slot.slow = slot.slow.saturating_add(u32::from((bits & SLOW) >> 1));
        self.totals.calls += 1;
        self.totals.failures += u64::from(bits & FAILED);
        self.totals.slow += u64::from((bits & SLOW) >> 1);
    }

    /// Slides the window so its newest bucket is `index`, dropping buckets that fall out.
    fn advance(&mut self, index: u64) {
        if index <= self.latest && self.totals.calls > 0 {
            return;
        }
        let n = self.slots.len() as u64;
        if index.saturating_sub(self.latest) >= n || self.totals.calls == 0 {
            self.clear();
        } else {
            // Buckets numbered (latest - n, index - n] slide out; at most n of them.
            for dropped in (self.latest + 1)..=index {
                let slot = &mut self.slots[(dropped % n) as usize];
                if slot.calls > 0 && slot.index + n <= index {
                    self.totals.calls -= u64::from(slot.calls);
                    self.totals.failures -= u64::from(slot.failures);
                    self.totals.slow -= u64::from(slot.slow);
                    *slot = Bucket::default();
                }
            }
        }
        self.latest = index;
    }

    fn counts_at(&self, now_ms: u64) -> Counts {
        let now = (now_ms / self.width_ms).max(self.latest);
        let n = self.slots.len() as u64;
        let mut counts = Counts::default();
        for slot in &self.slots {
            if slot.calls > 0 && slot.index + n > now && slot.index <= now {
                counts.calls += u64::from(slot.calls);
                counts.failures += u64::from(slot.failures);
                counts.slow += u64::from(slot.slow);
            }
        }
        counts
    }

    fn clear(&mut self) {
        self.slots.fill(Bucket::default());
        self.totals = Counts::default();
    }
}
