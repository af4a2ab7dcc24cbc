//! Time-of-day schedules: windows of days and hours in an IANA time zone during which a section's
//! knobs are overridden (e.g. a higher Stripe threshold during business hours).
//!
//! A window is kept as a bitmap of the 10,080 minutes of a local week, so "is it active at
//! instant t" is a pure function (convert t to local time in the zone, look up one bit), and two
//! windows overlap exactly when their bitmaps intersect. Hours may wrap midnight
//! (`22:00-06:00` runs into the next day). Across a DST change the local clock decides: a
//! `09:00-17:00` window starts at 09:00 local time on both sides of the change.

use super::knobs::{Knobs, Source};
use chrono::{Datelike, TimeZone, Timelike};
use chrono_tz::Tz;

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
}
