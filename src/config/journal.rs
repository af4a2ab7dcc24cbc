//! `[journal]`: how a running process (`serve`, `demo`) writes the event log.
//!
//! ```toml
//! [journal]
//! outcome_hold = "1s"   # how long a breaker's recorded calls may wait to share a row; "0s": none
//! url = "postgres://breakerbox@db:5432/breakerbox"   # the fleet's log (docs/fleet.md); none by default
//! node = "app-1"        # this process's node name [default: the host name]
//! offline_start = "run" # the fleet's log down at start-up: "run" (ship later) or "refuse"
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
    /// The fleet's log, `postgres://…` (shown with its password redacted).
    #[serde(serialize_with = "serialize_redacted")]
    pub url: Option<String>,
    /// This process's node name.
    pub node: Option<String>,
    /// `run` or `refuse`: what a node does when the fleet's log does not answer at start-up.
    pub offline_start: Option<String>,
}

fn serialize_redacted<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(u) => s.serialize_some(&redacted(u)),
        None => s.serialize_none(),
    }
}

const JOURNAL_KEYS: [&str; 4] = ["outcome_hold", "url", "node", "offline_start"];

/// Whether `s` names a PostgreSQL database (`postgres://…` or `postgresql://…`) rather than a file.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// Whether `name` is usable as a node name: 1 to 128 characters, no space, control character,
/// `/` or `\`, and not `.` or `..` (it names the node's own log file, `breakerbox-NODE.db`).
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.chars().count() > 128
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == '\\')
    {
        return Err(format!(
            "node name {name:?} must be 1 to 128 characters without spaces, control characters, '/' or '\\', \
             and not \".\" or \"..\""
        ));
    }
    Ok(())
}

/// A URL with its password, if any, replaced by `***` (for messages): the one in the user info
/// and a `password=` parameter of the query.
pub fn redacted(url: &str) -> String {
    // The user info ends at the last '@': a password may hold '?', '/' or '#' unencoded (the URL
    // then does not parse, and is still shown in the message that says so).
    let (mut out, rest) = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let shown = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => userinfo.to_owned(),
            };
            (format!("{}{shown}", &url[..s + 3]), &url[at..])
        }
        _ => (String::new(), url),
    };
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    out.push_str(base);
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

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
            "url" => match v.get_ref().as_str() {
                Some(u) if is_postgres_url(u) => config.url = Some(u.to_owned()),
                Some(u) => r.problem(
                    at,
                    format!(
                        "journal.url {:?}: expected postgres://user@host:port/database",
                        redacted(u)
                    ),
                ),
                None => r.problem(at, "journal.url: expected a string (postgres://user@host:port/database)".to_owned()),
            },
            "node" => match v.get_ref().as_str().map(|n| (n, check_node_name(n))) {
                Some((n, Ok(()))) => config.node = Some(n.to_owned()),
                Some((_, Err(e))) => r.problem(at, format!("journal.node: {e}")),
                None => r.problem(at, "journal.node: expected a string".to_owned()),
            },
            "offline_start" => match v.get_ref().as_str() {
                Some(o @ ("run" | "refuse")) => config.offline_start = Some(o.to_owned()),
                Some(o) => r.problem(at, format!("journal.offline_start {o:?}: expected \"run\" or \"refuse\"")),
                None => r.problem(at, "journal.offline_start: expected \"run\" or \"refuse\"".to_owned()),
            },
            other => r.unknown(key.span().start, "journal.", other, &JOURNAL_KEYS),
        }
    }
    config
}
