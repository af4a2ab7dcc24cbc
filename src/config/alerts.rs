//! The `[alerts]` section: where alerts go (`[[alerts.webhooks]]`) and how they are delivered.
//!
//! ```toml
//! [alerts]
//! quiet_period = "2m"                 # re-opens closer than this after a close are one episode
//! dashboard_url = "http://breakerbox.internal:8080/"
//!
//! [[alerts.webhooks]]
//! name = "oncall"
//! url = "http://alert-relay.internal:9000/hook"   # a secret: shown as ***
//! format = "alertmanager"             # the default; or "slack"
//! ```
//!
//! Webhook URLs are [`Secret`]s: `config` prints `***`, and no error message ever repeats one.

use super::knobs::{Raw, Source, describe_toml, parse_count, parse_duration, parse_string};
use super::reader::Reader;
use super::{Secret, did_you_mean};
use crate::duration::format_ms;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The body a sink expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Alertmanager's webhook notification, version "4": `status`, `alerts[]` with `labels`,
    /// `annotations`, `startsAt`/`endsAt`, `fingerprint`.
    Alertmanager,
    /// A Slack incoming webhook: `text` plus `blocks`.
    Slack,
}

impl WebhookFormat {
    /// `alertmanager` or `slack`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Alertmanager => "alertmanager",
            WebhookFormat::Slack => "slack",
        }
    }

    const NAMES: [&'static str; 2] = ["alertmanager", "slack"];
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Webhook {
    /// Its name: in delivery records, logs and `alerts test --sink NAME`.
    pub name: String,
    /// Where to POST (a secret).
    pub url: Secret,
    /// The body's shape.
    pub format: WebhookFormat,
    /// Messages per minute at most to this sink (a burst of as many is allowed).
    pub rate_limit_per_minute: u32,
    /// Where it was defined.
    pub source: Source,
}

/// Alert delivery settings. Without webhooks, no notifier runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AlertsConfig {
    /// The sinks, in file order.
    pub webhooks: Vec<Webhook>,
    /// A breaker that closes and re-opens within this period stays in one episode: one firing,
    /// one resolved (sent once it stayed closed this long). Default 2 minutes.
    pub quiet_period_ms: u64,
    /// Longest wait between two attempts of one message (before `Retry-After`). Default 5 minutes.
    pub max_backoff_ms: u64,
    /// A message still undelivered this long after it was due is abandoned (recorded). Default 1 day.
    pub give_up_after_ms: u64,
    /// Default messages per minute per sink. Default 20.
    pub rate_limit_per_minute: u32,
    /// Time limit of one HTTP request to a sink. Default 10 s.
    pub timeout_ms: u64,
    /// Link put in every message, if set.
    pub dashboard_url: Option<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhooks: Vec::new(),
            quiet_period_ms: 120_000,
            max_backoff_ms: 300_000,
            give_up_after_ms: 86_400_000,
            rate_limit_per_minute: 20,
            timeout_ms: 10_000,
            dashboard_url: None,
        }
    }
}

impl AlertsConfig {
    /// Is any sink configured?
    pub fn enabled(&self) -> bool {
        !self.webhooks.is_empty()
    }

    /// The sink with this name, or an error naming the configured ones.
    pub fn require(&self, name: &str) -> Result<&Webhook, String> {
        self.webhooks.iter().find(|w| w.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.webhooks.iter().map(|w| w.name.as_str()).collect();
            if names.is_empty() {
                format!("unknown sink {name:?}: no [[alerts.webhooks]] are configured")
            } else {
                format!(
                    "unknown sink {name:?}{}; configured: {}",
                    did_you_mean(name, names.iter().copied()),
                    names.join(", ")
                )
            }
        })
    }

    /// `(key, value as text)` of the settings, for `breakerbox config`.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("quiet_period", format_ms(self.quiet_period_ms)),
            ("max_backoff", format_ms(self.max_backoff_ms)),
            ("give_up_after", format_ms(self.give_up_after_ms)),
            ("rate_limit", format!("{}/min per sink", self.rate_limit_per_minute)),
            ("timeout", format_ms(self.timeout_ms)),
            (
                "dashboard_url",
                self.dashboard_url.clone().unwrap_or_else(|| "-".into()),
            ),
        ]
    }
}

const ALERT_KEYS: [&str; 7] = [
    "webhooks",
    "quiet_period",
    "dashboard_url",
    "max_backoff",
    "give_up_after",
    "rate_limit",
    "timeout",
];
const WEBHOOK_KEYS: [&str; 4] = ["name", "url", "format", "rate_limit"];

/// What is wrong with a webhook URL, without ever repeating it.
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("*** is not a URL ({e}): use e.g. \"http://relay.internal:9000/hook\""))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(format!("*** has scheme {other:?}: use an https:// or http:// URL")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("*** has no host".into());
    }
    Ok(())
}

/// Reads `[alerts]`. Every problem goes to the reader; what could be read is returned.
pub(super) fn read(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>) -> AlertsConfig {
    let mut config = AlertsConfig::default();
    let Some(table) = r.table("alerts", value) else {
        return config;
    };
    for (key, v) in table.iter() {
        let name: &str = key.get_ref();
        let at = v.span().start;
        let raw = Raw::Toml(v.get_ref());
        let duration = |r: &mut Reader<'_>, min_ms: u64, max_ms: u64| -> Option<u64> {
            match parse_duration(&raw) {
                Ok(ms) if (min_ms..=max_ms).contains(&ms) => Some(ms),
                Ok(ms) => {
                    r.problem(
                        at,
                        format!(
                            "alerts.{name} = {} must be from {} to {}",
                            format_ms(ms),
                            format_ms(min_ms),
                            format_ms(max_ms)
                        ),
                    );
                    None
                }
                Err(m) => {
                    r.problem(at, format!("alerts.{name}: {m}"));
                    None
                }
            }
        };
        match name {
            "webhooks" => {}
            "quiet_period" => {
                if let Some(ms) = duration(r, 0, 86_400_000) {
                    config.quiet_period_ms = ms;
                }
            }
            "max_backoff" => {
                if let Some(ms) = duration(r, 1_000, 86_400_000) {
                    config.max_backoff_ms = ms;
                }
            }
            "give_up_after" => {
                if let Some(ms) = duration(r, 60_000, 30 * 86_400_000) {
                    config.give_up_after_ms = ms;
                }
            }
            "timeout" => {
                if let Some(ms) = duration(r, 100, 300_000) {
                    config.timeout_ms = ms;
                }
            }
            "rate_limit" => {
                if let Some(n) = rate_limit(r, at, &raw, "alerts.rate_limit") {
                    config.rate_limit_per_minute = n;
                }
            }
            "dashboard_url" => match parse_string(&raw) {
                Ok(url) => match reqwest::Url::parse(url.trim()) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => config.dashboard_url = Some(url.trim().into()),
                    _ => r.problem(
                        at,
                        format!("alerts.dashboard_url: {url:?} is not an http:// or https:// URL"),
                    ),
                },
                Err(m) => r.problem(at, format!("alerts.dashboard_url: {m}")),
            },
            other => r.unknown(key.span().start, "alerts.", other, &ALERT_KEYS),
        }
    }
    if config.give_up_after_ms < config.max_backoff_ms {
        let at = table
            .get("give_up_after")
            .map_or(value.span().start, |v| v.span().start);
        r.problem(
            at,
            format!(
                "alerts.give_up_after = {} must be at least max_backoff ({})",
                format_ms(config.give_up_after_ms),
                format_ms(config.max_backoff_ms)
            ),
        );
    }
    if let Some(hooks) = table.get("webhooks") {
        config.webhooks = webhooks(r, hooks, config.rate_limit_per_minute);
    }
    config
}

fn rate_limit(r: &mut Reader<'_>, at: usize, raw: &Raw<'_>, path: &str) -> Option<u32> {
    match parse_count(raw) {
        Ok(n) if (1..=6_000).contains(&n) => Some(n),
        Ok(n) => {
            r.problem(at, format!("{path} = {n} must be from 1 to 6000 messages per minute"));
            None
        }
        Err(m) => {
            r.problem(at, format!("{path}: {m}"));
            None
        }
    }
}

fn webhooks(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>, default_rate: u32) -> Vec<Webhook> {
    let DeValue::Array(items) = value.get_ref() else {
        r.problem(
            value.span().start,
            "alerts.webhooks must be an array of tables: [[alerts.webhooks]]".into(),
        );
        return Vec::new();
    };
    let mut out: Vec<Webhook> = Vec::new();
    // Every name seen, valid sink or not, so a duplicate is reported even beside another problem.
    let mut seen: Vec<(String, Source)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("alerts.webhooks[{i}]");
        let at = item.span().start;
        let Some(table): Option<&DeTable<'_>> = r.table(&path, item) else {
            continue;
        };
        let mut ok = true;
        for (key, _) in table.iter() {
            let k: &str = key.get_ref();
            if !WEBHOOK_KEYS.contains(&k) {
                r.unknown(key.span().start, &format!("{path}."), k, &WEBHOOK_KEYS);
                ok = false;
            }
        }
        let name = match table.get("name") {
            Some(v) => match v.get_ref() {
                DeValue::String(s) => {
                    let s = s.to_string();
                    let plain = !s.is_empty()
                        && s.len() <= 64
                        && s.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if !plain {
                        r.problem(
                            v.span().start,
                            format!("{path}.name {s:?} must be 1 to 64 characters of a-z, A-Z, 0-9, '_', '-' or '.'"),
                        );
                        ok = false;
                    } else if let Some((_, first)) = seen.iter().find(|(n, _)| *n == s) {
                        r.problem(
                            v.span().start,
                            format!("{path}.name {s:?} is already the name of the sink defined at {first}"),
                        );
                        ok = false;
                    } else {
                        seen.push((s.clone(), r.source(at)));
                    }
                    Some(s)
                }
                other => {
                    r.problem(
                        v.span().start,
                        format!("{path}.name: {} is not a string", describe_toml(other)),
                    );
                    None
                }
            },
            None => {
                r.problem(at, format!("{path}: a webhook needs a name (e.g. name = \"oncall\")"));
                None
            }
        };
        let url = match table.get("url") {
            Some(v) => match v.get_ref() {
                DeValue::String(s) => match check_webhook_url(s) {
                    Ok(()) => Some(Secret::new(s.trim())),
                    Err(m) => {
                        r.problem(v.span().start, format!("{path}.url: {m}"));
                        None
                    }
                },
                // Not a string, so not a secret worth hiding: but say only its kind.
                other => {
                    let kind = match other {
                        DeValue::Table(_) => "a table",
                        DeValue::Array(_) => "an array",
                        _ => "not a string",
                    };
                    r.problem(v.span().start, format!("{path}.url: *** is {kind}: use a string"));
                    None
                }
            },
            None => {
                r.problem(at, format!("{path}: a webhook needs a url"));
                None
            }
        };
        let format = match table.get("format") {
            None => Some(WebhookFormat::Alertmanager),
            Some(v) => match v.get_ref() {
                DeValue::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "alertmanager" => Some(WebhookFormat::Alertmanager),
                    "slack" => Some(WebhookFormat::Slack),
                    _ => {
                        r.problem(
                            v.span().start,
                            format!(
                                "{path}.format: unknown format {:?}{}: use \"alertmanager\" (the default) or \"slack\"",
                                s.as_ref(),
                                did_you_mean(s, WebhookFormat::NAMES.iter().copied())
                            ),
                        );
                        None
                    }
                },
                other => {
                    r.problem(
                        v.span().start,
                        format!(
                            "{path}.format: {} is not a format: use \"alertmanager\" or \"slack\"",
                            describe_toml(other)
                        ),
                    );
                    None
                }
            },
        };
        let rate = match table.get("rate_limit") {
            None => Some(default_rate),
            Some(v) => rate_limit(
                r,
                v.span().start,
                &Raw::Toml(v.get_ref()),
                &format!("{path}.rate_limit"),
            ),
        };
        if let (true, Some(name), Some(url), Some(format), Some(rate)) = (ok, name, url, format, rate) {
            out.push(Webhook {
                name,
                url,
                format,
                rate_limit_per_minute: rate,
                source: r.source(at),
            });
        }
    }
    out
}
