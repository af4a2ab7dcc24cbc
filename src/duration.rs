//! Durations as people write them: `30` (seconds, as the seed's environment variables),
//! `30s`, `1500ms`, `2m`, `1h`, `1d`.

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
            "invalid duration {:?}: expected a whole number of seconds (30) or a number with a unit: 1500ms, 30s, 2m, 1h, 1d",
            self.input
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration into milliseconds. A bare number is seconds.
///
/// ```
/// use breakerbox::duration::parse_ms;
/// assert_eq!(parse_ms("30").unwrap(), 30_000);
/// assert_eq!(parse_ms("1500ms").unwrap(), 1_500);
/// assert_eq!(parse_ms("2m").unwrap(), 120_000);
/// assert!(parse_ms("-5").is_err());
/// ```
pub fn parse_ms(input: &str) -> Result<u64, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let text = input.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(err());
    }
    let value: u64 = digits.parse().map_err(|_| err())?;
    let scale: u64 = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1_000,
        "ms" => 1,
        "m" | "min" | "mins" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    value.checked_mul(scale).ok_or_else(err)
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
