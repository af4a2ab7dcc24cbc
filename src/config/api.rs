//! `[api]`: named bearer tokens for the HTTP API, beside `CIRCUIT_BREAKER_API_TOKEN`, and the
//! token length rule.
//!
//! ```toml
//! [api]
//! allow_short_tokens = false   # true: tokens under 32 characters, on a loopback address only
//! unready_when_log_fails = false  # true: the health endpoints answer 503 while the log fails
//!
//! [api.tokens]
//! oncall = "3f9c…"      # the name is "who" in the audit trail: token:oncall
//! grafana = "b71e…"
//! ```

use super::knobs::{Raw, Source, parse_string};
use super::reader::Reader;
use super::{Problem, Secret};
use std::net::SocketAddr;
use toml::Spanned;
use toml::de::DeValue;

/// Shortest token accepted: 32 characters (`openssl rand -hex 16` gives 32, 128 random bits).
/// The length is what protects a token from guessing: a valid token is never throttled, so the
/// bad-token limiter only slows noise down.
pub const MIN_TOKEN_LEN: usize = 32;

/// The variable holding tokens: `name:token[,name:token…]`, or one token (named `default`).
pub const TOKEN_VAR: &str = "CIRCUIT_BREAKER_API_TOKEN";

/// The `[api]` section.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ApiConfig {
    /// Named tokens, by name.
    pub tokens: Vec<ApiToken>,
    /// `allow_short_tokens`: tokens under [`MIN_TOKEN_LEN`] are accepted, on a loopback bind
    /// address only ([`check_token_lengths`]).
    pub allow_short_tokens: bool,
    /// `unready_when_log_fails`: the health endpoints answer 503 while this process's event log
    /// is failing. Off by default: the breakers keep deciding in memory through an outage of
    /// the log, and when a fleet shares one database its outage must not take every node out of
    /// its load balancer while protected calls work. The document says `"status": "fail"` either way.
    pub unready_when_log_fails: bool,
}

/// One `[api.tokens]` entry.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ApiToken {
    /// Its name: "who" in the audit trail (`token:NAME`).
    pub name: String,
    /// The token (a secret: shown as `***`).
    pub token: Secret,
    /// Where it was defined.
    pub source: Source,
}

const API_KEYS: [&str; 3] = ["tokens", "allow_short_tokens", "unready_when_log_fails"];

/// Tokens from [`TOKEN_VAR`]'s value: `name:token,name:token`, or one bare token (named
/// `default`). Empty parts are refused with the position named (the error does not name the
/// variable), never the token.
pub fn tokens_from_env(value: &str) -> Result<Vec<ApiToken>, String> {
    let mut out = Vec::new();
    for (i, part) in value.split(',').enumerate() {
        let part = part.trim();
        let (name, token) = match part.split_once(':') {
            Some((n, t)) => (n.trim(), t.trim()),
            None => ("default", part),
        };
        if name.is_empty() || token.is_empty() {
            return Err(format!(
                "entry {} is empty: use name:token[,name:token…] or one token",
                i + 1
            ));
        }
        out.push(ApiToken {
            name: name.to_owned(),
            token: Secret::new(token),
            source: Source::Env { var: TOKEN_VAR.into() },
        });
    }
    Ok(out)
}

/// The tokens that may not be used: each one shorter than [`MIN_TOKEN_LEN`] characters, unless
/// `allow_short` and the server listens on a loopback address. `bind: None` is for a check
/// before the address is known (`config check`, a reload): short tokens pass if allowed, and
/// `serve` judges the address at start. Each problem names the token (its key, or its name in
/// the variable), never its value.
pub fn check_token_lengths(tokens: &[ApiToken], allow_short: bool, bind: Option<SocketAddr>) -> Vec<Problem> {
    let fix = format!("use a token of {MIN_TOKEN_LEN} characters or more (e.g. `openssl rand -hex 16`)");
    tokens
        .iter()
        .filter(|t| t.token.expose().chars().count() < MIN_TOKEN_LEN)
        .filter_map(|t| {
            let what = match &t.source {
                Source::Env { .. } => format!("token {:?}", t.name),
                _ => format!("api.tokens.{}", t.name),
            };
            let why = match bind {
                _ if !allow_short => {
                    format!("{fix}, or set `allow_short_tokens = true` in [api] for a server on a loopback address")
                }
                Some(addr) if !addr.ip().is_loopback() => {
                    format!("allow_short_tokens holds on a loopback address only, and --bind {addr} is not one: {fix}")
                }
                _ => return None,
            };
            Some(Problem {
                location: t.source.to_string(),
                message: format!("{what}: the token is shorter than {MIN_TOKEN_LEN} characters: {why}"),
            })
        })
        .collect()
}

pub(super) fn read(r: &mut Reader<'_>, value: &Spanned<DeValue<'_>>) -> ApiConfig {
    let mut config = ApiConfig::default();
    let Some(table) = r.table("api", value) else {
        return config;
    };
    for (key, v) in table.iter() {
        match key.get_ref().as_ref() {
            "tokens" => {
                let Some(tokens) = r.table("api.tokens", v) else {
                    continue;
                };
                for (name, token) in tokens.iter() {
                    let name: &str = name.get_ref();
                    let at = token.span().start;
                    // The value is never repeated in a message: it is a secret. Its length is
                    // judged with the whole section read (check_token_lengths).
                    match parse_string(&Raw::Toml(token.get_ref())) {
                        Ok(t) if !t.trim().is_empty() => config.tokens.push(ApiToken {
                            name: name.to_owned(),
                            token: Secret::new(t.trim().to_owned()),
                            source: r.source(at),
                        }),
                        Ok(_) => r.problem(at, format!("api.tokens.{name} is empty")),
                        Err(_) => r.problem(at, format!("api.tokens.{name} must be a string")),
                    }
                }
            }
            "allow_short_tokens" => match v.get_ref() {
                DeValue::Boolean(b) => config.allow_short_tokens = *b,
                _ => r.problem(
                    v.span().start,
                    "api.allow_short_tokens must be true or false".to_owned(),
                ),
            },
            "unready_when_log_fails" => match v.get_ref() {
                DeValue::Boolean(b) => config.unready_when_log_fails = *b,
                _ => r.problem(
                    v.span().start,
                    "api.unready_when_log_fails must be true or false".to_owned(),
                ),
            },
            other => r.unknown(key.span().start, "api.", other, &API_KEYS),
        }
    }
    config
}
