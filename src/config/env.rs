//! The seed's environment variables, exactly:
//!
//! | variable | key |
//! |---|---|
//! | `CIRCUIT_BREAKER_FAILURE_THRESHOLD` | `failure_threshold` (every service) |
//! | `CIRCUIT_BREAKER_SUCCESS_THRESHOLD` | `success_threshold` |
//! | `CIRCUIT_BREAKER_TIMEOUT` | `timeout` (seconds when a bare number) |
//! | `CIRCUIT_BREAKER_HALF_OPEN_REQUESTS` | `half_open_requests` |
//! | `CIRCUIT_BREAKER_HALF_OPEN_MAX_WAIT` | `half_open_max_wait` (seconds when a bare number) |
//! | `<NAME>_CIRCUIT_BREAKER_THRESHOLD` | `failure_threshold` of service NAME |
//! | `<NAME>_CIRCUIT_BREAKER_TIMEOUT` | `timeout` of service NAME |
//!
//! `<NAME>` is the service name upper-cased, other characters than A–Z and 0–9 turned into `_`
//! (`cal-com` → `CAL_COM`). Any other `CIRCUIT_BREAKER_*` or `*_CIRCUIT_BREAKER_*` variable is
//! reported, not ignored: a typo must not silently leave a default in force.

use super::knobs::{Knobs, Raw, Source};
use super::{Problem, did_you_mean};
use std::collections::BTreeMap;

/// Global variables and the knob each sets.
pub const GLOBAL: [(&str, &str); 5] = [
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "failure_threshold"),
    ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "success_threshold"),
    ("CIRCUIT_BREAKER_TIMEOUT", "timeout"),
    ("CIRCUIT_BREAKER_HALF_OPEN_REQUESTS", "half_open_requests"),
    ("CIRCUIT_BREAKER_HALF_OPEN_MAX_WAIT", "half_open_max_wait"),
];

/// Other variables breakerbox reads (not knobs).
pub const OTHER: [&str; 2] = ["CIRCUIT_BREAKER_CONFIG", "CIRCUIT_BREAKER_API_TOKEN"];

/// Per-service suffixes and the knob each sets.
pub const PER_SERVICE: [(&str, &str); 2] = [
    ("_CIRCUIT_BREAKER_THRESHOLD", "failure_threshold"),
    ("_CIRCUIT_BREAKER_TIMEOUT", "timeout"),
];

/// Whether `var` is one of breakerbox's variables (or looks like one: a typo is reported).
pub fn is_ours(var: &str) -> bool {
    var.starts_with("CIRCUIT_BREAKER_") || var.contains("_CIRCUIT_BREAKER_") || var.starts_with("BREAKERBOX_")
}

/// A service name as an environment variable prefix.
pub fn prefix(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The environment's layers: one global, one per service (by name).
pub(crate) struct EnvLayers {
    pub global: Knobs,
    pub services: BTreeMap<String, Knobs>,
}

pub(crate) fn read(env: &BTreeMap<String, String>, services: &[String], problems: &mut Vec<Problem>) -> EnvLayers {
    let mut layers = EnvLayers {
        global: Knobs::default(),
        services: BTreeMap::new(),
    };
    let by_prefix: BTreeMap<String, &String> = services.iter().map(|s| (prefix(s), s)).collect();
    let set = |knobs: &mut Knobs, var: &str, key: &str, value: &str, problems: &mut Vec<Problem>| {
        let source = Source::Env { var: var.to_owned() };
        if let Err(message) = knobs.set(key, &Raw::Text(value), source) {
            problems.push(Problem {
                location: format!("env {var}"),
                message: format!("{var}={value:?}: {message}"),
            });
        }
    };
    for (var, value) in env {
        if let Some((_, key)) = GLOBAL.iter().find(|(v, _)| v == var) {
            set(&mut layers.global, var, key, value, problems);
            continue;
        }
        if OTHER.contains(&var.as_str()) {
            continue;
        }
        if var.starts_with("CIRCUIT_BREAKER_") {
            let known = GLOBAL.iter().map(|(v, _)| *v).chain(OTHER);
            problems.push(Problem {
                location: format!("env {var}"),
                message: format!("{var} is not a breakerbox setting{}", did_you_mean(var, known)),
            });
            continue;
        }
        let Some(at) = var.find("_CIRCUIT_BREAKER_") else {
            continue;
        };
        let (name_prefix, suffix) = var.split_at(at);
        let Some((_, key)) = PER_SERVICE.iter().find(|(s, _)| *s == suffix) else {
            problems.push(Problem {
                location: format!("env {var}"),
                message: format!(
                    "{var} is not a breakerbox setting: per-service variables are {name_prefix}_CIRCUIT_BREAKER_THRESHOLD and {name_prefix}_CIRCUIT_BREAKER_TIMEOUT; set other keys in the config file"
                ),
            });
            continue;
        };
        match by_prefix.get(name_prefix) {
            Some(service) => {
                let knobs = layers.services.entry((*service).clone()).or_default();
                set(knobs, var, key, value, problems);
            }
            None => problems.push(Problem {
                location: format!("env {var}"),
                message: format!(
                    "{var} is set but no service is named {:?}{}; configured: {}",
                    name_prefix.to_ascii_lowercase(),
                    did_you_mean(name_prefix, by_prefix.keys().map(String::as_str)),
                    services.join(", ")
                ),
            }),
        }
    }
    layers
}
