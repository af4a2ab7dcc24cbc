//! Message bodies, per sink format: pure functions of a [`Notice`] and where to look closer.
//!
//! - Alertmanager's webhook notification, version "4" (what Alertmanager itself POSTs to a
//!   `webhook_config` receiver, so anything that accepts those accepts these): `status`,
//!   `alerts[]` with `labels` {alertname, service, severity, …}, `annotations` {summary,
//!   description, …}, `startsAt`/`endsAt` (RFC 3339; `0001-01-01T00:00:00Z` while firing) and
//!   `fingerprint`.
//! - A Slack incoming webhook: `text` (the notification's fallback) plus `blocks` (header,
//!   sections, context), within Slack's documented size limits.

use super::episode::Notice;
use crate::breaker::{Reason, State};
use crate::config::WebhookFormat;
use crate::journal::AlertStatus;
use serde_json::{Map, Value, json};

/// Where a reader can look closer; the same for every message of a notifier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// The dashboard (`alerts.dashboard_url`), if configured.
    pub dashboard_url: Option<String>,
    /// The log file, for the `breakerbox replay --db …` hint.
    pub db_path: Option<String>,
}

/// `alertname` of breaker alerts.
pub const ALERT_NAME: &str = "CircuitBreakerOpen";
/// `alertname` of `breakerbox alerts test` messages.
pub const TEST_ALERT_NAME: &str = "CircuitBreakerTest";

/// Alertmanager's "zero" time: `endsAt` of an alert that is still firing.
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-27T14:03:00.500Z`.
pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.min(i64::MAX as u64) as i64)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

fn duration_text(ms: u64) -> String {
    let s = ms / 1_000;
    match s {
        0 => format!("{ms} ms"),
        1..=119 => format!("{s} s"),
        120..=7_199 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3_600, s / 60 % 60),
    }
}

/// `critical` when failures opened it, `warning` when an operator forced it open, `info` for tests.
pub fn severity(n: &Notice) -> &'static str {
    match (n.status, n.opened_to) {
        (AlertStatus::Test, _) => "info",
        (_, State::ForcedOpen) => "warning",
        _ => "critical",
    }
}

/// The `breakerbox replay` command that shows the episode (from 5 minutes before it to a minute
/// after it ended, or to now).
pub fn replay_command(n: &Notice, links: &Links) -> String {
    let db = links
        .db_path
        .as_ref()
        .map_or_else(String::new, |p| format!(" --db {}", shell_word(p)));
    let to = n
        .ends_at_ms
        .map_or_else(|| "now".to_owned(), |e| rfc3339(e.saturating_add(60_000)));
    let to = if to == "now" {
        String::new()
    } else {
        format!(" --to {to}")
    };
    format!(
        "breakerbox replay{db} --service {} --from {}{to}",
        n.breaker,
        rfc3339(n.starts_at_ms.saturating_sub(300_000))
    )
}

fn shell_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// One line: what happened.
pub fn summary(n: &Notice) -> String {
    match n.status {
        AlertStatus::Test => "Test message from breakerbox: this sink is wired up".to_owned(),
        AlertStatus::Firing if n.fleet.is_some() => {
            let f = n.fleet.as_ref().expect("matched");
            format!(
                "Circuit breaker {} is {} on {}/{} nodes",
                n.breaker,
                if n.opened_to == State::ForcedOpen {
                    "FORCED_OPEN"
                } else {
                    "OPEN"
                },
                f.nodes_open.len(),
                f.nodes_live
            )
        }
        AlertStatus::Resolved if n.fleet.is_some() => {
            format!("Circuit breaker {} closed again on every node", n.breaker)
        }
        AlertStatus::Firing if n.opened_to == State::ForcedOpen => {
            format!("Circuit breaker {} was forced OPEN", n.breaker)
        }
        AlertStatus::Firing => format!("Circuit breaker {} is OPEN", n.breaker),
        AlertStatus::Resolved => format!("Circuit breaker {} closed again", n.breaker),
    }
}

fn why(n: &Notice) -> String {
    match &n.opened_by {
        Some(op) if n.reason == Reason::ForceOpen => {
            format!("forced open by {} from {}: \"{}\"", op.who, op.from, op.why)
        }
        _ => {
            let evidence = n.evidence.text();
            if evidence.is_empty() {
                n.reason.as_str().to_owned()
            } else {
                format!("{} ({evidence})", n.reason.as_str())
            }
        }
    }
}

/// What happened, why, since when and until when (without where to look closer).
pub fn what_happened(n: &Notice) -> String {
    if let Some(f) = &n.fleet {
        let whose = match f.trouble.as_str() {
            "service" => "half the nodes or more: the service itself",
            "nodes" => "fewer than half the nodes: those nodes' trouble",
            _ => "no node now",
        };
        return match n.status {
            AlertStatus::Resolved => format!(
                "{} closed again on every live node at {}, {} after it first opened at {} (open on {} node{} at most).",
                n.breaker,
                rfc3339(n.ends_at_ms.unwrap_or(n.starts_at_ms)),
                duration_text(n.ends_at_ms.unwrap_or(n.starts_at_ms).saturating_sub(n.starts_at_ms)),
                rfc3339(n.starts_at_ms),
                f.nodes_max,
                if f.nodes_max == 1 { "" } else { "s" }
            ),
            _ => format!(
                "{} opened on {} of {} live nodes ({}) since {}: {whose}. Each node's own reason is in its log.",
                n.breaker,
                f.nodes_open.len(),
                f.nodes_live,
                f.nodes_open.join(", "),
                rfc3339(n.starts_at_ms)
            ),
        };
    }
    match n.status {
        AlertStatus::Test => {
            "breakerbox sent this with `breakerbox alerts test`: alerts about circuit breakers will arrive here."
                .to_owned()
        }
        AlertStatus::Firing => {
            let mut t = format!("{} opened at {}: {}.", n.breaker, rfc3339(n.starts_at_ms), why(n));
            match (n.opened_to, n.open_until_ms) {
                (State::ForcedOpen, _) => t.push_str(" Every call is rejected until an operator resets it."),
                (_, Some(until)) => t.push_str(&format!(
                    " Calls are rejected until {}, then trial calls decide.",
                    rfc3339(until)
                )),
                _ => t.push_str(" Calls are rejected."),
            }
            t
        }
        AlertStatus::Resolved => {
            let end = n.ends_at_ms.unwrap_or(n.starts_at_ms);
            let closed = match (&n.closed_by, n.closed_reason) {
                (Some(op), Some(r)) => format!("{} by {} from {}: \"{}\"", r.as_str(), op.who, op.from, op.why),
                (None, Some(r)) => r.as_str().to_owned(),
                _ => "closed".to_owned(),
            };
            let mut t = format!(
                "{} closed at {} ({closed}), {} after it opened at {}: {}.",
                n.breaker,
                rfc3339(end),
                duration_text(end.saturating_sub(n.starts_at_ms)),
                rfc3339(n.starts_at_ms),
                why(n)
            );
            if n.reopened > 0 {
                t.push_str(&format!(
                    " It re-opened {} time{} in between (flaps within the quiet period are one episode).",
                    n.reopened,
                    if n.reopened == 1 { "" } else { "s" }
                ));
            }
            t
        }
    }
}

/// A paragraph: what happened, why, since when, until when, and how to look closer (the
/// `replay` command, the dashboard if configured).
pub fn description(n: &Notice, links: &Links) -> String {
    let mut text = what_happened(n);
    if n.status == AlertStatus::Test {
        return text;
    }
    text.push_str(&format!(" Look closer: {}", replay_command(n, links)));
    if let Some(url) = &links.dashboard_url {
        text.push_str(&format!(" or {url}"));
    }
    text
}

fn labels(n: &Notice) -> Map<String, Value> {
    let mut m = Map::new();
    if n.status == AlertStatus::Test {
        m.insert("alertname".into(), json!(TEST_ALERT_NAME));
        m.insert("service".into(), json!("breakerbox"));
        m.insert("severity".into(), json!("info"));
        return m;
    }
    m.insert("alertname".into(), json!(ALERT_NAME));
    m.insert("service".into(), json!(n.service()));
    m.insert("severity".into(), json!(severity(n)));
    m.insert("breaker".into(), json!(n.breaker));
    if let Some(op) = n.operation() {
        m.insert("operation".into(), json!(op));
    }
    m.insert("state".into(), json!(n.opened_to.as_str()));
    match &n.fleet {
        Some(f) => {
            m.insert("reason".into(), json!("fleet"));
            m.insert("scope".into(), json!("fleet"));
            m.insert("trouble".into(), json!(f.trouble));
        }
        None => {
            m.insert("reason".into(), json!(n.reason.as_str()));
        }
    }
    m
}

fn wire_status(n: &Notice) -> &'static str {
    match n.status {
        AlertStatus::Resolved => "resolved",
        AlertStatus::Firing | AlertStatus::Test => "firing",
    }
}

/// Alertmanager's webhook notification (version "4") for one notice. `receiver` is the sink's name.
pub fn alertmanager(n: &Notice, receiver: &str, links: &Links) -> Value {
    let labels = labels(n);
    let mut annotations = Map::new();
    annotations.insert("summary".into(), json!(summary(n)));
    annotations.insert("description".into(), json!(description(n, links)));
    if n.status != AlertStatus::Test {
        annotations.insert("replay".into(), json!(replay_command(n, links)));
    }
    if let Some(url) = &links.dashboard_url {
        annotations.insert("dashboard".into(), json!(url));
    }
    let status = wire_status(n);
    let ends_at = match (n.status, n.ends_at_ms) {
        (AlertStatus::Resolved, Some(e)) => rfc3339(e),
        _ => ZERO_TIME.to_owned(),
    };
    let group_labels = json!({"alertname": labels["alertname"], "service": labels["service"]});
    let group_key = format!(
        "{{}}:{{alertname={:?}, service={:?}}}",
        labels["alertname"].as_str().unwrap_or_default(),
        labels["service"].as_str().unwrap_or_default()
    );
    let external = links.dashboard_url.clone().unwrap_or_default();
    json!({
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": external,
        "alerts": [{
            "status": status,
            "labels": labels,
            "annotations": annotations,
            "startsAt": rfc3339(n.starts_at_ms),
            "endsAt": ends_at,
            "generatorURL": external,
            "fingerprint": n.fingerprint,
        }],
    })
}

/// Slack's limits (Block Kit reference): header text 150 characters, section text 3,000, a
/// field 2,000, a context element 2,000; at most 10 fields.
pub const SLACK_HEADER_MAX: usize = 150;
/// See [`SLACK_HEADER_MAX`].
pub const SLACK_TEXT_MAX: usize = 3_000;
/// See [`SLACK_HEADER_MAX`].
pub const SLACK_FIELD_MAX: usize = 2_000;

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped in text that is not a link.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A Slack incoming-webhook message for one notice: `text` plus `blocks`.
pub fn slack(n: &Notice, links: &Links) -> Value {
    let icon = match n.status {
        AlertStatus::Firing => ":red_circle:",
        AlertStatus::Resolved => ":large_green_circle:",
        AlertStatus::Test => ":white_check_mark:",
    };
    let head = summary(n);
    let text = cut(&format!("{icon} {}", escape(&head)), SLACK_TEXT_MAX);
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&head, SLACK_HEADER_MAX), "emoji": true}}),
        // Where to look closer goes in the context block below.
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&escape(&what_happened(n)), SLACK_TEXT_MAX)}}),
    ];
    if n.status != AlertStatus::Test {
        let field = |title: &str, value: String| json!({"type": "mrkdwn", "text": cut(&format!("*{title}*\n{}", escape(&value)), SLACK_FIELD_MAX)});
        let mut fields = vec![
            field("Breaker", n.breaker.clone()),
            field("Severity", severity(n).to_owned()),
            field("Why", why(n)),
            field("Since", rfc3339(n.starts_at_ms)),
        ];
        if let Some(end) = n.ends_at_ms.filter(|_| n.status == AlertStatus::Resolved) {
            fields.push(field("Closed", rfc3339(end)));
        }
        blocks.push(json!({"type": "section", "fields": fields}));
        let mut context = format!("Look closer: `{}`", escape(&replay_command(n, links)));
        if let Some(url) = &links.dashboard_url {
            context.push_str(&format!(" · <{url}|dashboard>"));
        }
        context.push_str(&format!(" · fingerprint `{}`", n.fingerprint));
        blocks
            .push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&context, SLACK_FIELD_MAX)}]}));
    }
    json!({"text": text, "blocks": blocks})
}

/// The body for a sink of `format` named `receiver`.
pub fn render(format: WebhookFormat, n: &Notice, receiver: &str, links: &Links) -> Value {
    match format {
        WebhookFormat::Alertmanager => alertmanager(n, receiver, links),
        WebhookFormat::Slack => slack(n, links),
    }
}
