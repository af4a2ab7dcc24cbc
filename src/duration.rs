//! Durations as people write them: `30` (seconds, as the seed's environment variables),
//! `30s`, `1500ms`, `2m`, `1h`, `1d`, and compounds of them, largest unit first (`1h30m`,
//! `3m30s`, `1s500ms`).

use std::fmt;

/// A duration that could not be read. Bad input: show it and stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    /// The text given.
    pub input: String,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: expected a whole number of seconds (30) or numbers with units, largest first: 1500ms, 30s, 2m, 1h, 1d, 1h30m",
            self.input
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration into milliseconds. A bare number is seconds; otherwise numbers with units,
/// each unit smaller than the one before (`1h30m`, never `30m1h` or `1m1m`).
///
/// ```
/// use breakerbox::duration::parse_ms;
/// assert_eq!(parse_ms("30").unwrap(), 30_000);
/// assert_eq!(parse_ms("1500ms").unwrap(), 1_500);
/// assert_eq!(parse_ms("2m").unwrap(), 120_000);
/// assert_eq!(parse_ms("1h30m").unwrap(), 5_400_000);
/// assert_eq!(parse_ms("3m30s").unwrap(), 210_000);
/// assert!(parse_ms("-5").is_err());
/// assert!(parse_ms("30m1h").is_err());
/// ```
pub fn parse_ms(input: &str) -> Result<u64, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let text = input.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let seconds: u64 = text.parse().map_err(|_| err())?;
        return seconds.checked_mul(1_000).ok_or_else(err);
    }
    let (mut rest, mut total, mut last_scale) = (text, 0u64, u64::MAX);
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let unit_end = rest[digits_end..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |i| digits_end + i);
        let (digits, unit) = (&rest[..digits_end], &rest[digits_end..unit_end]);
        if digits.is_empty() || unit.is_empty() {
            return Err(err());
        }
        let scale: u64 = match unit {
            "s" | "sec" | "secs" => 1_000,
            "ms" => 1,
            "m" | "min" | "mins" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        if scale >= last_scale {
            return Err(err());
        }
        let value: u64 = digits.parse().map_err(|_| err())?;
        total = value
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
        (rest, last_scale) = (&rest[unit_end..], scale);
    }
    Ok(total)
}

/// Formats milliseconds the short way back (`1500ms`, `30s`, `2m`).
pub fn format_ms(ms: u64) -> String {
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1_000 == 0 => format!("{}s", ms / 1_000),
        ms => format!("{ms}ms"),
    }
}
