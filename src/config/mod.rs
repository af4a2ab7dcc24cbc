//! Configuration: embedded defaults, `config/circuit_breaker.toml` and the seed's environment
//! variables, layered per service and per operation, validated as a whole, with the source of
//! every value kept.
//!
//! Layers, most specific last (a set value hides those before it):
//!
//! 1. embedded defaults (failure threshold 5, success threshold 2, timeout 60 s, 3 half-open requests)
//! 2. the file's `[defaults]`
//! 3. global environment variables (`CIRCUIT_BREAKER_FAILURE_THRESHOLD`, …)
//! 4. the service's embedded section (calcom 3 / 30 s, retell 5 / 60 s, stripe 10 / 120 s)
//! 5. the service's file section `[services.NAME]`
//! 6. the service's environment variables (`STRIPE_CIRCUIT_BREAKER_THRESHOLD`, …)
//! 7. the service's schedule window active at the instant, if any
//! 8. for an operation: its section `[services.NAME.operations."OP"]`, then its active schedule
//!
//! So `CIRCUIT_BREAKER_FAILURE_THRESHOLD` does not change Cal.com's embedded threshold of 3, as in
//! the seed's Laravel config; `CALCOM_CIRCUIT_BREAKER_THRESHOLD` does.

mod alerts;
mod api;
mod env;
mod file;
mod fleet;
mod journal;
mod proxy;
mod reader;
mod reload;
mod schedule;
mod secret;

// The knob vocabulary lives below the config (and below `simulate`, which speaks it too).
use crate::knobs;
pub(crate) use crate::knobs::did_you_mean;

pub use crate::knobs::{KnobError, Knobs, Millis, Source, Sourced, defaults, policy_keys};
pub use crate::knobs::{StatusClassifier, StatusPattern, default_failures};
pub use alerts::{AlertsConfig, Webhook, WebhookFormat};
pub use api::{ApiConfig, ApiToken, MIN_TOKEN_LEN, TOKEN_VAR, check_token_lengths, tokens_from_env};
pub use env::{is_ours as env_is_ours, prefix as env_prefix};
pub use fleet::{FleetConfig, QuorumConfig};
pub use journal::{JournalConfig, MAX_OUTCOME_HOLD_MS, check_node_name, is_postgres_url, redacted};
pub use proxy::{DEFAULT_PROXY_BIND, ProxyConfig, Route, RouteFallback, Upstream};
pub use reload::{Apply, Reloadable};
pub use schedule::Schedule;
pub use secret::Secret;

use crate::breaker::Policy;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the config file is looked for when neither `--config` nor `CIRCUIT_BREAKER_CONFIG` is set.
pub const DEFAULT_PATH: &str = "config/circuit_breaker.toml";

/// The services that exist when no file lists any: (name, failure threshold, timeout in s).
pub const EMBEDDED_SERVICES: [(&str, u32, u64); 3] = [("calcom", 3, 30), ("retell", 5, 60), ("stripe", 10, 120)];

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `file:line`, `env VAR` or `default`.
    pub location: String,
    /// What is wrong, naming the key and value.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A configuration that cannot be used, with every problem found. Nothing of it is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// All problems, in file order then environment order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One layer of a breaker's stack: always in force, or only while its schedule is active.
#[derive(Clone, Debug, PartialEq)]
enum Layer {
    Always(Knobs),
    Scheduled(Schedule),
}

/// The configuration of one breaker (a service, or an operation of one).
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// `service` or `service/operation`: the breaker's key and its event stream's name.
    pub key: String,
    /// The service.
    pub service: String,
    /// The operation, for an operation's own breaker.
    pub operation: Option<String>,
    layers: Vec<Layer>,
    /// The settings in force when no schedule is active, with their sources.
    pub knobs: Knobs,
    /// The policy in force when no schedule is active.
    pub policy: Policy,
}

impl BreakerConfig {
    /// The schedules that can apply to this breaker (the service's, then the operation's).
    pub fn schedules(&self) -> impl Iterator<Item = &Schedule> {
        self.layers.iter().filter_map(|l| match l {
            Layer::Scheduled(s) => Some(s),
            Layer::Always(_) => None,
        })
    }

    /// The settings in force at `at_ms` (Unix epoch ms).
    pub fn knobs_at(&self, at_ms: u64) -> Knobs {
        let mut knobs = Knobs::default();
        for layer in &self.layers {
            match layer {
                Layer::Always(k) => knobs.overlay(k),
                Layer::Scheduled(s) if s.active_at(at_ms) => knobs.overlay(&s.knobs),
                Layer::Scheduled(_) => {}
            }
        }
        knobs
    }

    /// The policy in force at `at_ms`: a pure function of the instant, so replay is exact.
    pub fn policy_at(&self, at_ms: u64) -> Policy {
        if !self.layers.iter().any(|l| matches!(l, Layer::Scheduled(_))) {
            return self.policy.clone();
        }
        // Every combination that can be active at one instant was validated at load, so this
        // cannot fail; if it ever did, the base policy is used (never a panic on the call path),
        // and said.
        self.knobs_at(at_ms).policy().unwrap_or_else(|e| {
            tracing::error!(
                breaker = %self.key,
                at_ms,
                error = %e,
                "the schedules active at this instant give an invalid policy (a bug: load validates every combination); the base policy is used"
            );
            self.policy.clone()
        })
    }

    /// The first minute boundary after `at_ms` at which the policy in force changes, looking
    /// at most 8 days ahead (a weekly schedule repeats within that). `None` without schedules.
    pub fn next_change_after(&self, at_ms: u64) -> Option<u64> {
        if !self.layers.iter().any(|l| matches!(l, Layer::Scheduled(_))) {
            return None;
        }
        let active = |t: u64| -> Vec<bool> { self.schedules().map(|s| s.active_at(t)).collect() };
        let now = active(at_ms);
        let mut t = (at_ms / 60_000 + 1) * 60_000;
        for _ in 0..(8 * 24 * 60) {
            if active(t) != now {
                return Some(t);
            }
            t += 60_000;
        }
        None
    }

    /// Time limit of one protected call.
    pub fn call_timeout_ms(&self) -> u64 {
        self.knobs
            .call_timeout
            .as_ref()
            .map_or(knobs::DEFAULT_CALL_TIMEOUT_MS, |v| v.value.0)
    }

    /// Latency the health score compares calls against.
    pub fn latency_budget_ms(&self) -> u64 {
        self.knobs.latency_budget.as_ref().map_or(1_000, |v| v.value.0)
    }

    /// URL for `status --test`, if configured.
    pub fn health_url(&self) -> Option<&str> {
        self.knobs.health_url.as_ref().map(|v| v.value.as_str())
    }

    /// How HTTP statuses are classified.
    pub fn classifier(&self) -> StatusClassifier {
        StatusClassifier {
            failures: self
                .knobs
                .failure_statuses
                .as_ref()
                .map_or_else(default_failures, |v| v.value.clone()),
            ignored: self
                .knobs
                .ignored_statuses
                .as_ref()
                .map_or_else(Vec::new, |v| v.value.clone()),
        }
    }
}

/// Where to read from.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--config PATH`, if given.
    pub path: Option<PathBuf>,
    /// The environment (a snapshot, so loading is a pure function of its inputs).
    pub env: BTreeMap<String, String>,
    /// Variables whose value is not UTF-8 (left out of `env`): one of breakerbox's is an error
    /// naming it, any other is ignored.
    pub not_utf8: Vec<String>,
}

impl LoadOptions {
    /// `--config` (if any) and this process's environment. Never panics on a value that is not
    /// UTF-8 (`std::env::vars` would): see [`LoadOptions::not_utf8`].
    pub fn from_process(path: Option<PathBuf>) -> Self {
        let mut env = BTreeMap::new();
        let mut not_utf8 = Vec::new();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 is none of breakerbox's variables.
            let Ok(name) = name.into_string() else { continue };
            match value.into_string() {
                Ok(value) => {
                    env.insert(name, value);
                }
                Err(_) => not_utf8.push(name),
            }
        }
        LoadOptions { path, env, not_utf8 }
    }

    /// A problem for each of breakerbox's own variables whose value is not UTF-8.
    pub fn encoding_problems(&self) -> Vec<Problem> {
        self.not_utf8
            .iter()
            .filter(|v| env::is_ours(v))
            .map(|v| Problem {
                location: format!("env {v}"),
                message: format!("{v}: the value is not valid UTF-8"),
            })
            .collect()
    }
}

/// The effective configuration of every breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file that was read, if any.
    pub file: Option<PathBuf>,
    /// Every breaker: each service, then its operations, sorted by key.
    pub breakers: Vec<BreakerConfig>,
    /// Where alerts go when a breaker opens (`[alerts]`); none by default.
    pub alerts: AlertsConfig,
    /// Named API tokens from the file (`[api.tokens]`); none by default.
    pub api: ApiConfig,
    /// How a running process writes the log (`[journal]`).
    pub journal: JournalConfig,
    /// The sidecar proxy (`[proxy]`).
    pub proxy: ProxyConfig,
    /// What a node of a fleet does with the others' news (`[fleet]`).
    pub fleet: FleetConfig,
    /// The services with an `upstream`, which the proxy forwards to, with their routes.
    pub upstreams: Vec<Upstream>,
}

fn embedded_service(name: &str) -> Knobs {
    let mut k = Knobs::default();
    if let Some((_, threshold, timeout)) = EMBEDDED_SERVICES.iter().find(|(n, _, _)| *n == name) {
        let _ = k.set(
            "failure_threshold",
            &knobs::Raw::Text(&threshold.to_string()),
            Source::Default,
        );
        let _ = k.set("timeout", &knobs::Raw::Text(&format!("{timeout}s")), Source::Default);
    }
    k
}

/// Service and operation names become stream keys, URL segments and metric labels: keep them plain.
fn check_name(kind: &str, name: &str, problems: &mut Vec<Problem>, location: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        problems.push(Problem {
            location: location.to_owned(),
            message: format!("{kind} name {name:?} must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '-' or '.'"),
        });
    }
}

/// A breaker defined in code rather than in a file ([`Config::of_breakers`]).
#[derive(Clone, Debug)]
pub struct CodeBreaker {
    /// `service` or `service/operation`.
    pub key: String,
    /// Its policy.
    pub policy: Policy,
    /// How long a protected call may run (default: the embedded `call_timeout`, 10 s).
    pub call_timeout_ms: Option<u64>,
}

impl Config {
    /// Breakers defined in code, without a file or the environment: each policy over the
    /// embedded defaults, written as the file's keys and read through the same reader and
    /// checks as a file, so a bad value is refused the same way (its problem names the breaker,
    /// the key and the value, at `code:N`).
    ///
    /// ```
    /// use breakerbox::breaker::Policy;
    /// use breakerbox::config::{CodeBreaker, Config};
    /// let config = Config::of_breakers(&[CodeBreaker {
    ///     key: "stripe/customers.create".into(),
    ///     policy: Policy::consecutive(3, 10_000),
    ///     call_timeout_ms: Some(2_000),
    /// }])
    /// .unwrap();
    /// let b = config.breaker("stripe/customers.create").unwrap();
    /// // The policy given, with the embedded latency budget the health score uses (1 s).
    /// let policy = Policy { latency_budget_ms: Some(1_000), ..Policy::consecutive(3, 10_000) };
    /// assert_eq!((b.policy.clone(), b.call_timeout_ms()), (policy, 2_000));
    /// assert!(config.breaker("stripe").is_some(), "its service has a breaker too");
    /// let bad = Config::of_breakers(&[CodeBreaker {
    ///     key: "stripe".into(),
    ///     policy: Policy::consecutive(0, 10_000),
    ///     call_timeout_ms: None,
    /// }]);
    /// assert!(bad.unwrap_err().to_string().contains("failure_threshold"));
    /// ```
    pub fn of_breakers(breakers: &[CodeBreaker]) -> Result<Config, ConfigError> {
        // Quoted as TOML basic strings (JSON's escapes are TOML's).
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let mut text = String::new();
        for b in breakers {
            let header = match b.key.split_once('/') {
                Some((service, op)) => format!("[services.{}.operations.{}]", quote(service), quote(op)),
                None => format!("[services.{}]", quote(&b.key)),
            };
            text.push_str(&header);
            text.push('\n');
            for (key, value) in policy_keys(&b.policy) {
                text.push_str(&format!("{key} = {value}\n"));
            }
            if let Some(ms) = b.call_timeout_ms {
                text.push_str(&format!("call_timeout = \"{ms}ms\"\n"));
            }
        }
        Self::from_toml(Path::new("code"), &text, &BTreeMap::new())
    }

    /// The embedded defaults alone: calcom, retell and stripe.
    pub fn embedded() -> Config {
        Self::load(&LoadOptions::default()).expect("embedded defaults are valid")
    }

    /// Reads the file (if any) and the environment, validates everything, and gives back the
    /// effective configuration, or every problem found. Never half-applied.
    pub fn load(options: &LoadOptions) -> Result<Config, ConfigError> {
        let mut problems = options.encoding_problems();
        let located =
            file::locate(options.path.as_deref(), &options.env).map_err(|p| ConfigError { problems: vec![p] })?;
        let (path, file) = match located {
            Some((path, _)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                    problems: vec![Problem {
                        location: path.display().to_string(),
                        message: format!("cannot read the config file: {e}"),
                    }],
                })?;
                let (file, file_problems) = file::read(&path, &text);
                problems.extend(file_problems);
                (Some(path), file)
            }
            None => (None, file::File::default()),
        };
        Self::build(path, file, &options.env, &mut problems)
    }

    /// Loads from a TOML text as if it were the file at `path` (for tests and `config check`).
    pub fn from_toml(path: &Path, text: &str, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
        let (file, mut problems) = file::read(path, text);
        Self::build(Some(path.to_path_buf()), file, env, &mut problems)
    }

    fn build(
        path: Option<PathBuf>,
        mut file: file::File,
        env: &BTreeMap<String, String>,
        problems: &mut Vec<Problem>,
    ) -> Result<Config, ConfigError> {
        let services: Vec<String> = if file.services.is_empty() {
            EMBEDDED_SERVICES.iter().map(|(n, _, _)| (*n).to_owned()).collect()
        } else {
            file.services.keys().cloned().collect()
        };
        let location = path.as_ref().map_or("default".to_owned(), |p| p.display().to_string());
        let mut prefixes: BTreeMap<String, &String> = BTreeMap::new();
        for s in &services {
            check_name("service", s, problems, &location);
            if let Some(other) = prefixes.insert(env::prefix(s), s) {
                problems.push(Problem {
                    location: location.clone(),
                    message: format!(
                        "services {other:?} and {s:?} share the environment prefix {}_: rename one",
                        env::prefix(s)
                    ),
                });
            }
        }
        let upstreams = Self::upstreams(&mut file, problems, &location);
        let env_layers = env::read(env, &services, problems);
        // Token lengths, before any address is known: serve and demo judge the bind address.
        let mut tokens = file.api.tokens.clone();
        match env.get(TOKEN_VAR).map(|v| tokens_from_env(v)) {
            Some(Ok(from_env)) => tokens.extend(from_env),
            Some(Err(message)) => problems.push(Problem {
                location: format!("env {TOKEN_VAR}"),
                message,
            }),
            None => {}
        }
        problems.extend(check_token_lengths(&tokens, file.api.allow_short_tokens, None));
        let mut base = defaults();
        base.overlay(&file.defaults);
        base.overlay(&env_layers.global);

        let mut breakers = Vec::new();
        let empty = file::Section::default();
        for name in &services {
            let section = file.services.get(name).unwrap_or(&empty);
            let mut layers = vec![Layer::Always(base.clone()), Layer::Always(embedded_service(name))];
            layers.push(Layer::Always(section.knobs.clone()));
            if let Some(k) = env_layers.services.get(name) {
                layers.push(Layer::Always(k.clone()));
            }
            layers.extend(section.schedules.iter().cloned().map(Layer::Scheduled));
            breakers.extend(Self::build_breaker(name.clone(), None, layers.clone(), problems));
            for (op, op_section) in &section.operations {
                check_name("operation", op, problems, &location);
                let mut op_layers = layers.clone();
                op_layers.push(Layer::Always(op_section.knobs.clone()));
                op_layers.extend(op_section.schedules.iter().cloned().map(Layer::Scheduled));
                breakers.extend(Self::build_breaker(name.clone(), Some(op.clone()), op_layers, problems));
            }
        }
        if problems.is_empty() {
            breakers.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Config {
                file: path,
                breakers,
                alerts: file.alerts,
                api: file.api,
                journal: file.journal,
                proxy: file.proxy,
                fleet: file.fleet,
                upstreams,
            })
        } else {
            Err(ConfigError {
                problems: std::mem::take(problems),
            })
        }
    }

    /// The services with an `upstream`. A route's operation gets its own breaker, as if it had
    /// an `[services.NAME.operations."OP"]` section of its own.
    fn upstreams(file: &mut file::File, problems: &mut Vec<Problem>, location: &str) -> Vec<Upstream> {
        let mut out = Vec::new();
        for (name, section) in file.services.iter_mut() {
            for route in &section.routes {
                if let Some(op) = &route.operation {
                    check_name("operation", op, problems, &route.source.to_string());
                    section.operations.entry(op.clone()).or_default();
                }
            }
            let Some((url, source)) = &section.upstream else {
                if let Some(route) = section.routes.first() {
                    problems.push(Problem {
                        location: route.source.to_string(),
                        message: format!(
                            "services.{name}.routes: the service has no upstream = \"https://…\" to route to"
                        ),
                    });
                }
                continue;
            };
            match proxy::parse_upstream(url) {
                Ok((scheme, authority, base_path)) => out.push(Upstream {
                    service: name.clone(),
                    url: url.clone(),
                    scheme,
                    authority,
                    base_path,
                    routes: section.routes.clone(),
                }),
                Err(message) => problems.push(Problem {
                    location: source.to_string(),
                    message: format!("services.{name}.upstream: {message}"),
                }),
            }
        }
        for (service, port) in &file.proxy.ports {
            if !out.iter().any(|u| &u.service == service) {
                problems.push(Problem {
                    location: location.to_owned(),
                    message: format!("proxy.ports.{service}: no service {service:?} with an upstream (port {port})"),
                });
            }
        }
        out
    }

    /// The upstream of a service, if it has one.
    pub fn upstream(&self, service: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.service == service)
    }

    fn build_breaker(
        service: String,
        operation: Option<String>,
        layers: Vec<Layer>,
        problems: &mut Vec<Problem>,
    ) -> Option<BreakerConfig> {
        let key = match &operation {
            Some(op) => format!("{service}/{op}"),
            None => service.clone(),
        };
        // The layers with the schedules at these indexes active (as `knobs_at` stacks them).
        let fold = |active: &[usize]| {
            let mut knobs = Knobs::default();
            for (i, layer) in layers.iter().enumerate() {
                match layer {
                    Layer::Always(k) => knobs.overlay(k),
                    Layer::Scheduled(s) if active.contains(&i) => knobs.overlay(&s.knobs),
                    Layer::Scheduled(_) => {}
                }
            }
            knobs
        };
        let report = |e: KnobError, during: String, problems: &mut Vec<Problem>| {
            problems.push(Problem {
                location: e.source.to_string(),
                message: format!("{key}: {} {}{during}", e.key, e.message),
            });
        };
        let knobs = fold(&[]);
        let policy = match knobs.policy() {
            Ok(p) => Some(p),
            Err(e) => {
                report(e, String::new(), problems);
                None
            }
        };
        // Every schedule's policy must work too, so a switch at 09:00 can never fail.
        let scheduled: Vec<(usize, &Schedule)> = layers
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l {
                Layer::Scheduled(s) => Some((i, s)),
                Layer::Always(_) => None,
            })
            .collect();
        for &(i, s) in &scheduled {
            if let Err(e) = fold(&[i]).policy() {
                report(e, format!(" (while schedule {:?} is active)", s.name), problems);
            }
        }
        // And every two that can be active at the same instant: a window of the service and
        // one of the operation (an always-on layer, the operation's section, lies between
        // them; windows of one section never overlap), each in its own time zone.
        for (n, &(i, a)) in scheduled.iter().enumerate() {
            for &(j, b) in &scheduled[n + 1..] {
                let different_sections = layers[i..j].iter().any(|l| matches!(l, Layer::Always(_)));
                if !different_sections {
                    continue;
                }
                let Some(at_ms) = a.active_together(b) else {
                    continue;
                };
                if let Err(e) = fold(&[i, j]).policy() {
                    let during = format!(
                        " (while schedules {:?} ({}) and {:?} ({}) are active together, e.g. {})",
                        a.name,
                        a.source,
                        b.name,
                        b.source,
                        a.local_time(at_ms)
                    );
                    report(e, during, problems);
                }
            }
        }
        Some(BreakerConfig {
            key,
            service,
            operation,
            layers,
            knobs,
            policy: policy?,
        })
    }

    /// The breaker with this key (`stripe`, `stripe/customers.create`).
    pub fn breaker(&self, key: &str) -> Option<&BreakerConfig> {
        self.breakers.iter().find(|b| b.key == key)
    }

    /// The breaker for a `--service NAME` flag, or an error that lists the configured ones.
    pub fn require(&self, key: &str) -> Result<&BreakerConfig, String> {
        self.breaker(key).ok_or_else(|| {
            let keys: Vec<&str> = self.breakers.iter().map(|b| b.key.as_str()).collect();
            format!(
                "unknown service {key:?}{}; configured: {}",
                did_you_mean(key, keys.iter().copied()),
                keys.join(", ")
            )
        })
    }

    /// What a reload to `new` changes at `at_ms`: for every breaker in both, the new policy when
    /// it differs. Breakers only in one of the two are listed apart (they start or stop).
    pub fn changes(&self, new: &Config, at_ms: u64) -> Reload {
        let mut reload = Reload::default();
        for b in &new.breakers {
            match self.breaker(&b.key) {
                Some(old) => {
                    let policy = b.policy_at(at_ms);
                    if old.policy_at(at_ms) != policy {
                        reload.changed.push((b.key.clone(), policy));
                    }
                }
                None => reload.added.push(b.key.clone()),
            }
        }
        reload.removed = self
            .breakers
            .iter()
            .filter(|b| new.breaker(&b.key).is_none())
            .map(|b| b.key.clone())
            .collect();
        reload
    }
}

/// The effect of a reload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reload {
    /// Breakers whose policy changes: apply with `Breaker::set_policy`, state kept.
    pub changed: Vec<(String, Policy)>,
    /// Breakers that are new.
    pub added: Vec<String>,
    /// Breakers no longer configured.
    pub removed: Vec<String>,
}
