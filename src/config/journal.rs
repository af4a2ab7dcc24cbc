//! `[journal]`: how a running process (`serve`, `demo`) writes the event log.
//!
//! ```toml
//! [journal]
//! outcome_hold = "1s"   # how long a breaker's recorded calls may wait to share a row; "0s": none
//! ```

use super::knobs::{Raw, parse_duration};
use super::reader::Reader;
use toml::Spanned;
use toml::de::DeValue;

/// Longest `outcome_hold` accepted: what a crash may lose grows with it (docs/durability.md).
pub const MAX_OUTCOME_HOLD_MS: u64 = 60_000;

/// The `[journal]` section; `None` keeps the library's default.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalConfig {
    /// `outcome_hold` in ms (`ActorOptions::outcome_hold`).
    pub outcome_hold_ms: Option<u64>,
}

const JOURNAL_KEYS: [&str; 1] = ["outcome_hold"];

pub(super) fn read(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>) -> JournalConfig {
    let mut config = JournalConfig::default();
    let Some(table) = r.table("journal", value) else {
        return config;
    };
    for (key, v) in table.iter() {
        let at = v.span().start;
        match key.get_ref().as_ref() {
            "outcome_hold" => match parse_duration(&Raw::Toml(v.get_ref())) {
                Ok(ms) if ms <= MAX_OUTCOME_HOLD_MS => config.outcome_hold_ms = Some(ms),
                Ok(ms) => r.problem(
                    at,
                    format!(
                        "journal.outcome_hold: {ms} ms is longer than the {MAX_OUTCOME_HOLD_MS} ms allowed (a crash may \
                         lose up to this much of the calls' record)"
                    ),
                ),
                Err(e) => r.problem(at, format!("journal.outcome_hold: {e}")),
            },
            other => r.unknown(key.span().start, "journal.", other, &JOURNAL_KEYS),
        }
    }
    config
}
