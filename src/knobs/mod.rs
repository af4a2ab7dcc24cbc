//! The knob vocabulary: the keys a section of the config (or a `simulate` policy line, or a
//! flag) can set, how their values parse, where each value came from, the embedded defaults,
//! and how a stack of layers becomes a [`Policy`]. Pure: `config` reads files and the
//! environment into these; `simulate` and `replay` speak them without the config.

mod classify;

use crate::breaker::{OpenPolicy, Policy, PolicyError, SlidingWindow, SlowCallRule, TripRule};
use crate::duration::{format_ms, parse_ms};
pub use classify::{StatusClassifier, StatusPattern, default_failures};
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// Where a setting came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Built into breakerbox.
    Default,
    /// A line of a config file.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// An environment variable.
    Env {
        /// Its name.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// Its name, with dashes.
        flag: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env { var } => write!(f, "env {var}"),
            Source::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// A value and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// A raw setting before parsing: a TOML value or a string (environment variables, flags).
pub(crate) enum Raw<'a> {
    Toml(&'a toml::de::DeValue<'a>),
    Text(&'a str),
}

impl Raw<'_> {
    fn describe(&self) -> String {
        match self {
            Raw::Text(s) => format!("{s:?}"),
            Raw::Toml(v) => describe_toml(v),
        }
    }
}

pub(crate) fn describe_toml(v: &toml::de::DeValue<'_>) -> String {
    use toml::de::DeValue;
    match v {
        DeValue::String(s) => format!("{s:?}"),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(x) => x.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// The problem with one value: the key is added by the caller.
pub(crate) type ValueResult<T> = Result<T, String>;

fn integer(raw: &Raw<'_>) -> ValueResult<i128> {
    match raw {
        Raw::Toml(toml::de::DeValue::Integer(i)) => {
            i128::from_str_radix(i.as_str(), i.radix()).map_err(|_| format!("{i} is out of range"))
        }
        Raw::Text(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("{s:?} is not a whole number")),
        other => Err(format!("{} is not a whole number", other.describe())),
    }
}

fn number(raw: &Raw<'_>) -> ValueResult<f64> {
    let x = match raw {
        Raw::Toml(toml::de::DeValue::Float(x)) => x.as_str().parse::<f64>().ok(),
        Raw::Toml(toml::de::DeValue::Integer(_)) => integer(raw).ok().map(|i| i as f64),
        Raw::Text(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match x {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(format!("{} is not a number", raw.describe())),
    }
}

pub(crate) fn parse_count(raw: &Raw<'_>) -> ValueResult<u32> {
    let i = integer(raw)?;
    u32::try_from(i).map_err(|_| format!("{i} must be a whole number from 0 to {}", u32::MAX))
}

pub(crate) fn parse_u64(raw: &Raw<'_>) -> ValueResult<u64> {
    let i = integer(raw)?;
    u64::try_from(i).map_err(|_| format!("{i} must be a whole number from 0 to {}", u64::MAX))
}

/// Durations: a string with a unit (`"30s"`, `"1500ms"`, `"2m"`), or a bare number of seconds
/// (`30`, or `"30"` in the environment, as the seed's Laravel config reads them).
pub(crate) fn parse_duration(raw: &Raw<'_>) -> ValueResult<u64> {
    match raw {
        Raw::Text(s) => parse_ms(s).map_err(|e| e.to_string()),
        Raw::Toml(toml::de::DeValue::String(s)) => parse_ms(s).map_err(|e| e.to_string()),
        Raw::Toml(toml::de::DeValue::Integer(_)) => {
            let secs = integer(raw)?;
            u64::try_from(secs)
                .ok()
                .and_then(|s| s.checked_mul(1_000))
                .ok_or_else(|| format!("{secs} is not a duration: use a number of seconds of 0 or more, or \"1500ms\""))
        }
        other => Err(format!(
            "{} is not a duration: use \"30s\", \"1500ms\", \"2m\" or a number of seconds",
            other.describe()
        )),
    }
}

pub(crate) fn parse_number(raw: &Raw<'_>) -> ValueResult<f64> {
    number(raw)
}

pub(crate) fn parse_string(raw: &Raw<'_>) -> ValueResult<String> {
    match raw {
        Raw::Text(s) => Ok((*s).to_owned()),
        Raw::Toml(toml::de::DeValue::String(s)) => Ok(s.to_string()),
        other => Err(format!("{} is not a string", other.describe())),
    }
}

pub(crate) fn parse_statuses(raw: &Raw<'_>) -> ValueResult<Vec<StatusPattern>> {
    match raw {
        Raw::Text(s) => s.split(',').map(|p| p.trim().parse()).collect(),
        Raw::Toml(toml::de::DeValue::Array(items)) => items
            .iter()
            .map(|item| match item.get_ref() {
                toml::de::DeValue::String(s) => s.parse(),
                toml::de::DeValue::Integer(_) => {
                    parse_count(&Raw::Toml(item.get_ref())).and_then(|n| n.to_string().parse())
                }
                other => Err(format!("{} is not an HTTP status", describe_toml(other))),
            })
            .collect(),
        other => Err(format!(
            "{} is not a list of statuses: use e.g. [\"5xx\", 408, 429]",
            other.describe()
        )),
    }
}

/// Renders a value for `breakerbox config`.
pub(crate) trait Show {
    fn show(&self) -> String;
}
impl Show for u32 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for u64 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for f64 {
    fn show(&self) -> String {
        self.to_string()
    }
}
impl Show for String {
    fn show(&self) -> String {
        self.clone()
    }
}
impl Show for Vec<StatusPattern> {
    fn show(&self) -> String {
        self.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }
}
/// Durations are kept in ms; shown the short way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Millis(pub u64);
impl Show for Millis {
    fn show(&self) -> String {
        format_ms(self.0)
    }
}

macro_rules! knobs {
    ($($(#[doc = $doc:literal])* $name:ident : $ty:ty => $parse:expr;)*) => {
        /// Settings of one layer (defaults, a file section, the environment, flags): each is
        /// unset or a value with its source. Layers stack: a set value hides the one below.
        #[derive(Clone, Debug, Default, PartialEq, Serialize)]
        pub struct Knobs {
            $($(#[doc = $doc])* #[serde(skip_serializing_if = "Option::is_none")] pub $name: Option<Sourced<$ty>>,)*
        }

        impl Knobs {
            /// Every key, as written in the config file.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Sets `key` from a raw value. `Ok(false)` if `key` is not a knob.
            pub(crate) fn set(&mut self, key: &str, raw: &Raw<'_>, source: Source) -> Result<bool, String> {
                match key {
                    $(stringify!($name) => {
                        #[allow(clippy::redundant_closure_call)]
                        let value = ($parse)(raw)?;
                        self.$name = Some(Sourced { value, source });
                    })*
                    _ => return Ok(false),
                }
                Ok(true)
            }

            /// Puts `top` over `self`: every key `top` sets replaces this layer's.
            pub fn overlay(&mut self, top: &Knobs) {
                $(if let Some(v) = &top.$name { self.$name = Some(v.clone()); })*
            }

            /// The source of `key`, if set.
            pub fn source_of(&self, key: &str) -> Option<&Source> {
                match key {
                    $(stringify!($name) => self.$name.as_ref().map(|v| &v.source),)*
                    _ => None,
                }
            }

            /// `(key, value as text, source)` for every key that is set, in declaration order.
            pub fn entries(&self) -> Vec<(&'static str, String, &Source)> {
                let mut out = Vec::new();
                $(if let Some(v) = &self.$name { out.push((stringify!($name), v.value.show(), &v.source)); })*
                out
            }
        }
    };
}

knobs! {
    /// Failures that open the breaker: in a row, or within `failure_window`.
    failure_threshold: u32 => parse_count;
    /// Successful trial calls that close a HALF_OPEN breaker.
    success_threshold: u32 => parse_count;
    /// How long OPEN lasts.
    timeout: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Trial calls admitted per HALF_OPEN episode.
    half_open_requests: u32 => parse_count;
    /// Longest HALF_OPEN waits for its trials before it re-opens (0: no deadline).
    half_open_max_wait: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Count failures within this window instead of in a row.
    failure_window: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Open at this failure percentage over the window.
    failure_rate: f64 => parse_number;
    /// Count-based window for the rate rules.
    window_calls: u32 => parse_count;
    /// Time-based window for the rate rules.
    window: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Buckets of a time-based window.
    window_buckets: u32 => parse_count;
    /// Calls a window must hold before a rate is judged.
    minimum_calls: u32 => parse_count;
    /// Calls at least this slow are slow.
    slow_call_duration: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Open at this slow-call percentage over the window.
    slow_call_rate: f64 => parse_number;
    /// OPEN grows by this factor per re-open.
    backoff_factor: f64 => parse_number;
    /// Cap of the grown OPEN period.
    max_timeout: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Spread of each OPEN period, ± percent.
    jitter: f64 => parse_number;
    /// Seed of the jitter.
    seed: u64 => parse_u64;
    /// Time limit of one protected call; a call over it is a timeout (a failure).
    call_timeout: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// Latency the health score compares calls against.
    latency_budget: Millis => |r: &Raw<'_>| parse_duration(r).map(Millis);
    /// URL `breakerbox status --test` requests through the breaker.
    health_url: String => parse_string;
    /// HTTP statuses that are failures (default: 5xx, 408, 429).
    failure_statuses: Vec<StatusPattern> => parse_statuses;
    /// HTTP statuses that count as neither success nor failure (default: none).
    ignored_statuses: Vec<StatusPattern> => parse_statuses;
}

/// The call timeout when none is set (the embedded defaults set "10s").
pub(crate) const DEFAULT_CALL_TIMEOUT_MS: u64 = 10_000;

/// Window knobs only mean something with a rate rule: set without one, they are refused rather
/// than silently ignored (wherever they were set, `[defaults]` included).
const RATE_ONLY: [&str; 3] = ["window_calls", "window", "minimum_calls"];

impl Knobs {
    /// The policy these settings describe. `explain` turns a core [`PolicyError`] (which names a
    /// key) into a message that also names where the value came from.
    pub fn policy(&self) -> Result<Policy, KnobError> {
        let v = |o: &Option<Sourced<u32>>, d: u32| o.as_ref().map_or(d, |s| s.value);
        let ms = |o: &Option<Sourced<Millis>>| o.as_ref().map(|s| s.value.0);
        let rate_rule = self.failure_rate.is_some() || self.slow_call_duration.is_some();
        let time_window = self.window.is_some() || self.failure_window.is_some();
        let needs: [(&'static str, bool, &str); 5] = [
            (RATE_ONLY[0], rate_rule, "failure_rate or slow_call_duration"),
            (RATE_ONLY[1], rate_rule, "failure_rate or slow_call_duration"),
            (RATE_ONLY[2], rate_rule, "failure_rate or slow_call_duration"),
            ("window_buckets", time_window, "window or failure_window"),
            (
                "slow_call_rate",
                self.slow_call_duration.is_some(),
                "slow_call_duration",
            ),
        ];
        for (key, ok, with) in needs {
            if let (false, Some(source)) = (ok, self.source_of(key)) {
                return Err(KnobError {
                    key,
                    source: source.clone(),
                    message: format!("only applies with {with}"),
                });
            }
        }
        if let (Some(rate), Some(window)) = (&self.failure_rate, &self.failure_window) {
            return Err(KnobError {
                key: "failure_rate",
                source: rate.source.clone(),
                message: format!(
                    "conflicts with failure_window (set at {}): a breaker has one trip rule",
                    window.source
                ),
            });
        }
        let window = match (ms(&self.window), &self.window_calls) {
            (Some(window_ms), _) => SlidingWindow::Time {
                window_ms,
                buckets: v(&self.window_buckets, 10),
            },
            (None, calls) => SlidingWindow::Count { calls: v(calls, 100) },
        };
        let minimum_calls = self.minimum_calls.as_ref().map_or(
            match window {
                SlidingWindow::Count { calls } => calls.min(10),
                SlidingWindow::Time { .. } => 10,
            },
            |m| m.value,
        );
        let trip = match (&self.failure_rate, ms(&self.failure_window)) {
            (Some(rate), _) => TripRule::FailureRate {
                threshold_percent: rate.value,
                window,
                minimum_calls,
            },
            (None, Some(window_ms)) => TripRule::FailureCount {
                threshold: v(&self.failure_threshold, 5),
                window_ms,
                buckets: v(&self.window_buckets, 10),
            },
            (None, None) => TripRule::ConsecutiveFailures {
                threshold: v(&self.failure_threshold, 5),
            },
        };
        let policy = Policy {
            trip,
            slow_calls: ms(&self.slow_call_duration).map(|duration_ms| SlowCallRule {
                duration_ms,
                threshold_percent: self.slow_call_rate.as_ref().map_or(100.0, |r| r.value),
                window,
                minimum_calls,
            }),
            open: OpenPolicy {
                timeout_ms: ms(&self.timeout).unwrap_or(60_000),
                backoff_factor: self.backoff_factor.as_ref().map_or(1.0, |f| f.value),
                max_timeout_ms: ms(&self.max_timeout),
                jitter_percent: self.jitter.as_ref().map_or(0.0, |j| j.value),
                seed: self.seed.as_ref().map_or(0, |s| s.value),
            },
            half_open_requests: v(&self.half_open_requests, 3),
            success_threshold: v(&self.success_threshold, 2),
            // Unset: twice the call timeout, so a trial that ran out its time has been decided
            // (as a timeout) well before; "0s" turns the deadline off.
            half_open_max_wait_ms: match ms(&self.half_open_max_wait) {
                Some(0) => None,
                Some(wait) => Some(wait),
                None => Some(
                    ms(&self.call_timeout)
                        .unwrap_or(DEFAULT_CALL_TIMEOUT_MS)
                        .saturating_mul(2),
                ),
            },
            latency_budget_ms: ms(&self.latency_budget),
        };
        policy.validate().map_err(|e| self.explain(e))?;
        Ok(policy)
    }

    fn explain(&self, e: PolicyError) -> KnobError {
        // The core names the knob; the bucket count of a failure window shares `window_buckets`.
        let source = self.source_of(e.field).cloned().unwrap_or(Source::Default);
        KnobError {
            key: e.field,
            source,
            message: format!("= {} {}", e.value, e.problem),
        }
    }
}

/// A knob whose value cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnobError {
    /// The key.
    pub key: &'static str,
    /// Where its value came from.
    pub source: Source,
    /// What is wrong, to follow the key (`= 0 must be at least 1`, `only applies with …`).
    pub message: String,
}

impl fmt::Display for KnobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.source, self.key, self.message)
    }
}

/// The config-file keys that describe `policy` completely: parsed back over the embedded
/// defaults they give the same policy (durations as `"…ms"` strings, so nothing is rounded).
pub fn policy_keys(policy: &Policy) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::json;
    let ms = |v: u64| json!(format!("{v}ms"));
    let mut m = serde_json::Map::new();
    let window = |m: &mut serde_json::Map<String, serde_json::Value>, w: &SlidingWindow, minimum: u32| {
        match *w {
            SlidingWindow::Count { calls } => {
                m.insert("window_calls".into(), json!(calls));
            }
            SlidingWindow::Time { window_ms, buckets } => {
                m.insert("window".into(), ms(window_ms));
                m.insert("window_buckets".into(), json!(buckets));
            }
        }
        m.insert("minimum_calls".into(), json!(minimum));
    };
    match &policy.trip {
        TripRule::ConsecutiveFailures { threshold } => {
            m.insert("failure_threshold".into(), json!(threshold));
        }
        TripRule::FailureCount {
            threshold,
            window_ms,
            buckets,
        } => {
            m.insert("failure_threshold".into(), json!(threshold));
            m.insert("failure_window".into(), ms(*window_ms));
            m.insert("window_buckets".into(), json!(buckets));
        }
        TripRule::FailureRate {
            threshold_percent,
            window: w,
            minimum_calls,
        } => {
            m.insert("failure_rate".into(), json!(threshold_percent));
            window(&mut m, w, *minimum_calls);
        }
    }
    if let Some(slow) = &policy.slow_calls {
        m.insert("slow_call_duration".into(), ms(slow.duration_ms));
        m.insert("slow_call_rate".into(), json!(slow.threshold_percent));
        // One window and minimum serve both rate rules in the config's keys.
        window(&mut m, &slow.window, slow.minimum_calls);
    }
    m.insert("timeout".into(), ms(policy.open.timeout_ms));
    m.insert("backoff_factor".into(), json!(policy.open.backoff_factor));
    if let Some(max) = policy.open.max_timeout_ms {
        m.insert("max_timeout".into(), ms(max));
    }
    m.insert("jitter".into(), json!(policy.open.jitter_percent));
    m.insert("seed".into(), json!(policy.open.seed));
    m.insert("half_open_requests".into(), json!(policy.half_open_requests));
    m.insert(
        "half_open_max_wait".into(),
        policy.half_open_max_wait_ms.map_or_else(|| json!("0s"), ms),
    );
    m.insert("success_threshold".into(), json!(policy.success_threshold));
    if let Some(budget) = policy.latency_budget_ms {
        m.insert("latency_budget".into(), ms(budget));
    }
    m
}

impl Knobs {
    /// The settings that give `policy` over the embedded defaults (its [`policy_keys`]): a
    /// recorded policy with some keys changed is `defaults` + this + the changes.
    pub fn of_policy(policy: &Policy) -> Knobs {
        Knobs::from_json(&policy_keys(policy), &Source::Default).expect("policy_keys writes only valid keys")
    }

    /// Settings from a JSON object of config keys (a `simulate` policy line), each with `source`.
    pub fn from_json(object: &serde_json::Map<String, serde_json::Value>, source: &Source) -> Result<Knobs, String> {
        let mut knobs = Knobs::default();
        for (key, value) in object {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                other => return Err(format!("{key}: {other} is not a value for this key")),
            };
            match knobs.set(key, &Raw::Text(&text), source.clone()) {
                Ok(true) => {}
                Ok(false) => {
                    return Err(format!(
                        "unknown key {key}{}",
                        did_you_mean(key, Knobs::KEYS.iter().copied())
                    ));
                }
                Err(e) => return Err(format!("{key}: {e}")),
            }
        }
        Ok(knobs)
    }
}

/// ` (did you mean "x"?)` when a known word is close to `word`, else nothing.
pub(crate) fn did_you_mean<'a>(word: &str, known: impl Iterator<Item = &'a str>) -> String {
    let best = known
        .map(|k| {
            (
                strsim::levenshtein(&word.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                k,
            )
        })
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d);
    best.map(|(_, k)| format!(" (did you mean {k:?}?)")).unwrap_or_default()
}

/// The embedded defaults alone (layer 1): what `simulate` starts from without `--service`.
pub fn defaults() -> Knobs {
    let mut k = Knobs::default();
    let set = |k: &mut Knobs, key: &str, v: &str| {
        k.set(key, &Raw::Text(v), Source::Default)
            .expect("embedded defaults parse");
    };
    set(&mut k, "failure_threshold", "5");
    set(&mut k, "success_threshold", "2");
    set(&mut k, "timeout", "60s");
    set(&mut k, "half_open_requests", "3");
    set(&mut k, "call_timeout", "10s");
    set(&mut k, "latency_budget", "1s");
    set(&mut k, "failure_statuses", "5xx,408,429");
    k
}
