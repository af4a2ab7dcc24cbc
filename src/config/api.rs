//! `[api]`: named bearer tokens for the HTTP API, beside `CIRCUIT_BREAKER_API_TOKEN`.
//!
//! ```toml
//! [api.tokens]
//! oncall = "3f9c…"      # the name is "who" in the audit trail: token:oncall
//! grafana = "b71e…"
//! ```

use super::Secret;
use super::file::Reader;
use super::knobs::{Raw, Source, parse_string};
use toml::Spanned;
use toml::de::DeValue;

/// Shortest token accepted: 16 characters (e.g. `openssl rand -hex 16` gives 32).
pub const MIN_TOKEN_LEN: usize = 16;

/// The `[api]` section.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ApiConfig {
    /// Named tokens, by name.
    pub tokens: Vec<ApiToken>,
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

const API_KEYS: [&str; 1] = ["tokens"];

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
                    // The value is never repeated in a message: it is a secret.
                    match parse_string(&Raw::Toml(token.get_ref())) {
                        Ok(t) if t.trim().chars().count() >= MIN_TOKEN_LEN => config.tokens.push(ApiToken {
                            name: name.to_owned(),
                            token: Secret::new(t.trim().to_owned()),
                            source: r.source(at),
                        }),
                        Ok(_) => r.problem(
                            at,
                            format!(
                                "api.tokens.{name}: *** is shorter than {MIN_TOKEN_LEN} characters: use e.g. `openssl rand -hex 16`"
                            ),
                        ),
                        Err(_) => r.problem(at, format!("api.tokens.{name} must be a string")),
                    }
                }
            }
            other => r.unknown(key.span().start, "api.", other, &API_KEYS),
        }
    }
    config
}
