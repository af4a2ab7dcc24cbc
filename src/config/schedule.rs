//! Time-of-day schedules: windows of days and hours in an IANA time zone during which a section's
//! knobs are overridden (e.g. a higher Stripe threshold during business hours).
//!
//! A window is kept as a bitmap of the 10,080 minutes of a local week, so "is it active at
//! instant t" is a pure function (convert t to local time in the zone, look up one bit), and two
//! windows overlap exactly when their bitmaps intersect. Hours may wrap midnight
//! (`22:00-06:00` runs into the next day). Across a DST change the local clock decides: a
//! `09:00-17:00` window starts at 09:00 local time on both sides of the change.

use super::knobs::{Knobs, Source};
use chrono::{Datelike, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

const WEEK_MINUTES: usize = 7 * 24 * 60;

/// One schedule window of a section.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// Its name (for `config` output and events).
    pub name: String,
    /// The zone its days and hours are in.
    pub timezone: Tz,
    /// Active minutes of the local week, Monday 00:00 first.
    minutes: Box<[u64; WEEK_MINUTES / 64 + 1]>,
    /// The knobs in force while it is active.
    pub knobs: Knobs,
    /// Where it was defined.
    pub source: Source,
    /// Its `days` and `hours` as written, for display.
    pub describe: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(s: &str) -> Result<usize, String> {
    let t = s.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| t.starts_with(d) && (t.len() == 3 || DAYS_LONG.contains(&t.as_str())))
        .ok_or_else(|| format!("{s:?} is not a day: use mon, tue, wed, thu, fri, sat, sun"))
}

const DAYS_LONG: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Parses `["mon", "tue"]`-style entries, each a day or a range such as `mon-fri`.
pub(crate) fn parse_days(entries: &[String]) -> Result<[bool; 7], String> {
    let mut days = [false; 7];
    if entries.is_empty() {
        return Err("days is empty: list at least one day, e.g. [\"mon-fri\"]".to_owned());
    }
    for entry in entries {
        match entry.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(entry)?] = true,
        }
    }
    Ok(days)
}

fn clock(s: &str) -> Result<usize, String> {
    let bad = || format!("{s:?} is not a time of day: use HH:MM, 00:00 to 24:00");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (usize, usize) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Parses `"09:00-17:00"` into (start, end) minutes of the day; end may be before start (wraps).
pub(crate) fn parse_hours(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not an hour range: use \"09:00-17:00\""))?;
    let (start, end) = (clock(a)?, clock(b)?);
    if start == end {
        return Err(format!("{s:?} is empty: start and end are the same time"));
    }
    Ok((start, end))
}

pub(crate) fn parse_timezone(s: &str) -> Result<Tz, String> {
    s.parse::<Tz>()
        .map_err(|_| format!("{s:?} is not an IANA time zone (e.g. \"America/New_York\", \"Europe/Berlin\", \"UTC\")"))
}

impl Schedule {
    pub(crate) fn new(
        name: String,
        days: [bool; 7],
        (start, end): (usize, usize),
        timezone: Tz,
        knobs: Knobs,
        source: Source,
        describe: String,
    ) -> Self {
        let mut minutes = Box::new([0u64; WEEK_MINUTES / 64 + 1]);
        for (d, on) in days.iter().enumerate() {
            if !on {
                continue;
            }
            let length = if end > start { end - start } else { 1440 - start + end };
            for m in 0..length {
                let minute = (d * 1440 + start + m) % WEEK_MINUTES;
                minutes[minute / 64] |= 1 << (minute % 64);
            }
        }
        Schedule {
            name,
            timezone,
            minutes,
            knobs,
            source,
            describe,
        }
    }

    /// Is the window active at `at_ms` (Unix epoch milliseconds)?
    pub fn active_at(&self, at_ms: u64) -> bool {
        let Some(utc) = chrono::DateTime::from_timestamp_millis(at_ms.min(i64::MAX as u64) as i64) else {
            return false;
        };
        let local = self.timezone.from_utc_datetime(&utc.naive_utc());
        let minute = local.weekday().num_days_from_monday() as usize * 1440
            + local.hour() as usize * 60
            + local.minute() as usize;
        self.minutes[minute / 64] & (1 << (minute % 64)) != 0
    }

    /// Do the two windows share a local minute? Only meaningful in the same zone.
    pub(crate) fn overlaps(&self, other: &Schedule) -> bool {
        self.minutes.iter().zip(other.minutes.iter()).any(|(a, b)| a & b != 0)
    }

    fn has(&self, minute: usize) -> bool {
        self.minutes[minute / 64] & (1 << (minute % 64)) != 0
    }

    /// An instant (Unix epoch ms) at which both windows are active, if there is one: the real
    /// intersection, each window in its own zone, through every offset change of both zones
    /// (daylight saving time, rule changes) that the time zone database knows. In one zone
    /// that is any shared local minute; in two, a UTC minute that lands in both windows under
    /// the offsets both zones have at that minute.
    pub(crate) fn active_together(&self, other: &Schedule) -> Option<u64> {
        if self.timezone == other.timezone {
            // Every minute of the local week occurs in some week, so a shared bit is an instant.
            let m = (0..WEEK_MINUTES).find(|&m| self.has(m) && other.has(m))?;
            return Some(first_instant_of_local_minute(self.timezone, m));
        }
        let (a, b) = (offsets(self.timezone), offsets(other.timezone));
        // The two zones' offset spans merged: between two changes of either, both are fixed.
        let mut starts: Vec<i64> = a.iter().chain(b.iter()).map(|(t, _)| *t).collect();
        starts.sort_unstable();
        starts.dedup();
        let at = |spans: &[(i64, i32)], t: i64| spans[spans.partition_point(|(s, _)| *s <= t) - 1].1;
        let mut checked_whole_week: Vec<(i32, i32)> = Vec::new();
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(i64::MAX);
            let pair = (at(&a, start), at(&b, start));
            // With both offsets fixed the pattern repeats weekly: one week of it says everything.
            if checked_whole_week.contains(&pair) {
                continue;
            }
            let length = end.saturating_sub(start).min(WEEK_MINUTES as i64);
            if length == WEEK_MINUTES as i64 {
                checked_whole_week.push(pair);
            }
            for u in start..start + length {
                if self.has(local_minute(u, pair.0)) && other.has(local_minute(u, pair.1)) {
                    return Some(u as u64 * 60_000);
                }
            }
        }
        None
    }

    /// `Mon 09:00 America/New_York`: the local time of `at_ms` in the window's zone.
    pub(crate) fn local_time(&self, at_ms: u64) -> String {
        let Some(utc) = chrono::DateTime::from_timestamp_millis(at_ms.min(i64::MAX as u64) as i64) else {
            return format!("{at_ms} ms");
        };
        let local = self.timezone.from_utc_datetime(&utc.naive_utc());
        let day = DAYS[local.weekday().num_days_from_monday() as usize];
        let day = format!("{}{}", day[..1].to_ascii_uppercase(), &day[1..]);
        format!("{day} {:02}:{:02} {}", local.hour(), local.minute(), self.timezone)
    }
}

/// The minute of the local week (Monday 00:00 first) of UTC minute `utc_minute` (since the
/// Unix epoch, a Thursday) at an offset of `offset_s` seconds east of UTC.
fn local_minute(utc_minute: i64, offset_s: i32) -> usize {
    let local = (utc_minute * 60 + i64::from(offset_s)).div_euclid(60);
    (local + 3 * 1440).rem_euclid(WEEK_MINUTES as i64) as usize
}

/// The first instant at or after the epoch whose local time in `tz` is minute `m` of the week.
fn first_instant_of_local_minute(tz: Tz, m: usize) -> u64 {
    let spans = offsets(tz);
    let mut u = 0i64;
    loop {
        let offset = spans[spans.partition_point(|(s, _)| *s <= u) - 1].1;
        if local_minute(u, offset) == m || u > 2 * WEEK_MINUTES as i64 {
            return u as u64 * 60_000;
        }
        u += 1;
    }
}

/// Instants the offsets are sampled up to: past the time zone database's last rule (chrono-tz
/// lists changes up to 2099 and keeps the last offset after it).
const OFFSETS_UNTIL_S: i64 = 4_133_980_800; // 2101-01-01T00:00:00Z
/// Sampling step: every zone keeps an offset for longer than this.
const OFFSETS_STEP_S: i64 = 6 * 3600;

/// A zone's offsets from the Unix epoch on, as (first UTC minute, seconds east of UTC),
/// ascending; the last one holds for ever.
type Offsets = Arc<[(i64, i32)]>;

/// The offsets of `tz`, computed once per zone per process.
fn offsets(tz: Tz) -> Offsets {
    static CACHE: OnceLock<Mutex<HashMap<Tz, Offsets>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(spans) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&tz) {
        return spans.clone();
    }
    let offset_at = |t_s: i64| -> i32 {
        chrono::DateTime::from_timestamp(t_s, 0).map_or(0, |utc| {
            tz.offset_from_utc_datetime(&utc.naive_utc()).fix().local_minus_utc()
        })
    };
    let mut spans = vec![(0i64, offset_at(0))];
    let mut t = 0;
    while t < OFFSETS_UNTIL_S {
        let next = t + OFFSETS_STEP_S;
        let (before, after) = (spans.last().expect("one span").1, offset_at(next));
        if after != before {
            // The minute of the change: the first one with the new offset.
            let (mut lo, mut hi) = (t / 60, next / 60);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if offset_at(mid * 60) == before {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            spans.push((hi, after));
        }
        t = next;
    }
    let spans: Offsets = spans.into();
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(tz, spans.clone());
    spans
}
