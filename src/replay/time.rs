//! Times as people give them on the command line: `now`, RFC 3339 (`2026-11-27T14:03:00Z`) or
//! an age (`10m`: ten minutes ago; `90s`, `2h`, `1d`, `1h30m`).

use crate::duration::parse_ms;
use std::fmt;

/// A time that could not be read. Bad input: show it and stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeError {
    /// The text given.
    pub input: String,
}

impl fmt::Display for TimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid time {:?}: use now, an RFC 3339 time (2026-11-27T14:03:00Z) or an age (10m = ten minutes ago, 2h, 1d, 1h30m)",
            self.input
        )
    }
}

impl std::error::Error for TimeError {}

/// Milliseconds since the Unix epoch for `text`, ages counted back from `now_ms`.
///
/// ```
/// use breakerbox::replay::parse_time;
/// assert_eq!(parse_time("10m", 1_000_000).unwrap(), 400_000);
/// assert_eq!(parse_time("1m30s", 1_000_000).unwrap(), 910_000);
/// assert_eq!(parse_time("now", 1_000_000).unwrap(), 1_000_000);
/// assert_eq!(parse_time("1970-01-01T00:00:01Z", 0).unwrap(), 1_000);
/// assert!(parse_time("yesterday", 0).is_err());
/// ```
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, TimeError> {
    let err = || TimeError { input: text.to_owned() };
    if text.trim().eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text.trim()) {
        return u64::try_from(t.timestamp_millis()).map_err(|_| err());
    }
    // An age must have a unit: a bare number is ambiguous here.
    if text.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(err());
    }
    let age = parse_ms(text).map_err(|_| err())?;
    Ok(now_ms.saturating_sub(age))
}
