//! `[fleet]`: what a node of a fleet (`docs/fleet.md`) does with the others' news.
//!
//! ```toml
//! [fleet.quorum]      # quorum hints, off without this table
//! nodes = 3           # at least this many other nodes opened the breaker by their own trip rules…
//! fraction = 0.5      # …and at least this share of the live nodes…
//! within = "30s"      # …within this long
//! mode = "on"         # "on": a CLOSED breaker opens (reason fleet_quorum); "shadow": only recorded
//! ```

use super::knobs::{Raw, parse_duration};
use super::reader::Reader;
use toml::Spanned;
use toml::de::DeValue;

/// The `[fleet]` section.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FleetConfig {
    /// Quorum hints (`[fleet.quorum]`); off when absent.
    pub quorum: Option<QuorumConfig>,
}

/// `[fleet.quorum]`: when enough live nodes opened a breaker by their own trip rules recently,
/// a CLOSED local breaker opens too (reason `fleet_quorum`), or, in shadow mode, a `quorum_hint`
/// record says it would have.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct QuorumConfig {
    /// Other nodes needed, at least.
    pub nodes: u32,
    /// Share of the live nodes needed (0 < fraction ≤ 1), this one counted among the live.
    pub fraction: f64,
    /// How recent their openings must be, ms.
    pub within_ms: u64,
    /// Open (`on`) or only record (`shadow`).
    pub shadow: bool,
}

const FLEET_KEYS: [&str; 1] = ["quorum"];
const QUORUM_KEYS: [&str; 4] = ["nodes", "fraction", "within", "mode"];

pub(super) fn read(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>) -> FleetConfig {
    let mut config = FleetConfig::default();
    let Some(table) = r.table("fleet", value) else {
        return config;
    };
    for (key, v) in table.iter() {
        match key.get_ref().as_ref() {
            "quorum" => config.quorum = read_quorum(r, v),
            other => r.unknown(key.span().start, "fleet.", other, &FLEET_KEYS),
        }
    }
    config
}

fn read_quorum(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>) -> Option<QuorumConfig> {
    let table = r.table("fleet.quorum", value)?;
    let mut q = QuorumConfig {
        nodes: 3,
        fraction: 0.5,
        within_ms: 30_000,
        shadow: false,
    };
    let mut ok = true;
    for (key, v) in table.iter() {
        let at = v.span().start;
        match key.get_ref().as_ref() {
            "nodes" => match v.get_ref() {
                DeValue::Integer(i) => match i.to_string().parse::<u32>() {
                    Ok(n) if (1..=10_000).contains(&n) => q.nodes = n,
                    _ => {
                        r.problem(at, format!("fleet.quorum.nodes {i}: expected 1 to 10000"));
                        ok = false;
                    }
                },
                _ => {
                    r.problem(at, "fleet.quorum.nodes: expected a whole number (1 to 10000)".into());
                    ok = false;
                }
            },
            "fraction" => {
                let f = match v.get_ref() {
                    DeValue::Float(f) => f.to_string().parse::<f64>().ok(),
                    DeValue::Integer(i) => i.to_string().parse::<f64>().ok(),
                    _ => None,
                };
                match f {
                    Some(f) if f > 0.0 && f <= 1.0 => q.fraction = f,
                    Some(f) => {
                        r.problem(
                            at,
                            format!("fleet.quorum.fraction {f}: expected more than 0 and at most 1"),
                        );
                        ok = false;
                    }
                    None => {
                        r.problem(
                            at,
                            "fleet.quorum.fraction: expected a number (more than 0, at most 1)".into(),
                        );
                        ok = false;
                    }
                }
            }
            "within" => match parse_duration(&Raw::Toml(v.get_ref())) {
                Ok(ms) if (1..=86_400_000).contains(&ms) => q.within_ms = ms,
                Ok(ms) => {
                    r.problem(at, format!("fleet.quorum.within: {ms} ms: expected 1 ms to 1 day"));
                    ok = false;
                }
                Err(e) => {
                    r.problem(at, format!("fleet.quorum.within: {e}"));
                    ok = false;
                }
            },
            "mode" => match v.get_ref().as_str() {
                Some("on") => q.shadow = false,
                Some("shadow") => q.shadow = true,
                Some(m) => {
                    r.problem(at, format!("fleet.quorum.mode {m:?}: expected \"on\" or \"shadow\""));
                    ok = false;
                }
                None => {
                    r.problem(at, "fleet.quorum.mode: expected \"on\" or \"shadow\"".into());
                    ok = false;
                }
            },
            other => {
                r.unknown(key.span().start, "fleet.quorum.", other, &QUORUM_KEYS);
                ok = false;
            }
        }
    }
    ok.then_some(q)
}
