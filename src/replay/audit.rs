//! The audit trail: what happened to which breaker, when, and who did it.

use crate::breaker::{PolicyApplied, Transition, codec};
use crate::journal::{
    ALERT_DELIVERY, AlertDelivery, CALL_STATS, CallStats, Decoded, GAP, Journal, JournalError, OPERATOR_COMMAND,
    OperatorCommand, decode, decode_record,
};
use serde::Serialize;
use serde_json::{Value, json};
use std::str::FromStr;

/// Kinds of audit entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A state change, with its reason and evidence.
    Transition,
    /// An operator's command: who, from where, why.
    Command,
    /// A policy put in force (start, reload, schedule switch).
    Policy,
    /// Events lost because the log's buffer overflowed.
    Gap,
    /// Rejections, fallbacks and outcomes dropped, counted per flush.
    Stats,
    /// An attempt to deliver an alert to a sink: delivered, retrying, rejected or abandoned.
    Alert,
}

impl Kind {
    /// Every kind, in display order.
    pub const ALL: [Kind; 6] = [
        Kind::Transition,
        Kind::Command,
        Kind::Policy,
        Kind::Gap,
        Kind::Stats,
        Kind::Alert,
    ];

    fn event_type(self) -> &'static str {
        match self {
            Kind::Transition => codec::types::TRANSITION,
            Kind::Command => OPERATOR_COMMAND,
            Kind::Policy => codec::types::POLICY_APPLIED,
            Kind::Gap => GAP,
            Kind::Stats => CALL_STATS,
            Kind::Alert => ALERT_DELIVERY,
        }
    }

    /// The kind's name on the command line and in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Transition => "transition",
            Kind::Command => "command",
            Kind::Policy => "policy",
            Kind::Gap => "gap",
            Kind::Stats => "stats",
            Kind::Alert => "alert",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        let t = s.trim().to_ascii_lowercase();
        // The issue's names, and the obvious synonyms.
        let kind = match t.as_str() {
            "transition" | "transitions" => Kind::Transition,
            "command" | "commands" | "operator" | "operator_command" => Kind::Command,
            "policy" | "policy_change" | "policy_applied" => Kind::Policy,
            "gap" | "gaps" => Kind::Gap,
            "stats" | "fallback" | "fallbacks" | "rejection" | "rejections" => Kind::Stats,
            "alert" | "alerts" | "alert_delivery" | "delivery" | "deliveries" => Kind::Alert,
            _ => {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!("unknown kind {s:?}: use one of {}", names.join(", ")));
            }
        };
        Ok(kind)
    }
}

/// What to look for.
#[derive(Clone, Debug)]
pub struct AuditQuery {
    /// Only this breaker (key).
    pub stream: Option<String>,
    /// Only these kinds (all when empty).
    pub kinds: Vec<Kind>,
    /// From this instant (ms, inclusive).
    pub since_ms: u64,
    /// Until this instant (ms, exclusive).
    pub until_ms: u64,
    /// Only entries after this log position (pagination).
    pub after_position: i64,
    /// At most this many entries.
    pub limit: usize,
}

/// One line of the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Log position (pass it as `after_position` for the next page).
    pub position: i64,
    /// When (ms).
    pub at_ms: i64,
    /// The node that wrote it (absent for events written before nodes were recorded).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// The breaker.
    pub stream: String,
    /// What kind of entry.
    pub kind: Kind,
    /// One line for people.
    pub summary: String,
    /// Everything, for machines.
    pub details: Value,
}

fn entry(e: &crate::journal::StoredEvent, kind: Kind) -> Result<AuditEntry, String> {
    let bad = |m: String| m;
    let (summary, details) = match kind {
        Kind::Transition | Kind::Policy => match codec::decode(&e.event_type, e.event_version, &e.payload) {
            Ok(crate::breaker::Event::Transitioned(t)) => (transition_line(&t), json!(t)),
            Ok(crate::breaker::Event::PolicyApplied(p)) => (policy_line(&p), json!(p)),
            Ok(_) => return Err(bad("unexpected event".into())),
            Err(err) => return Err(bad(err.to_string())),
        },
        Kind::Command => {
            let c: OperatorCommand = decode_record(e).map_err(|err| bad(err.to_string()))?;
            let line = format!(
                "{} by {} from {}: {} ({} → {})",
                command_name(c.command),
                c.operator.who,
                c.operator.from,
                c.operator.why,
                c.from_state,
                c.to_state
            );
            (line, json!(c))
        }
        Kind::Gap => {
            let Decoded::Gap(g) = decode(e).map_err(|err| bad(err.to_string()))? else {
                return Err(bad("not a gap".into()));
            };
            let total: u64 = g.dropped.values().flat_map(|m| m.values()).sum();
            (format!("{total} events dropped (the log's buffer was full)"), json!(g))
        }
        Kind::Stats => {
            let s: CallStats = decode_record(e).map_err(|err| bad(err.to_string()))?;
            (
                format!(
                    "{} rejected, {} served by fallback, {} dropped",
                    s.rejected, s.fallbacks, s.dropped
                ),
                json!(s),
            )
        }
        Kind::Alert => {
            let d: AlertDelivery = decode_record(e).map_err(|err| bad(err.to_string()))?;
            return Ok(AuditEntry {
                position: e.position,
                at_ms: e.recorded_at,
                node: e.node.clone(),
                // The breaker the alert is about, so `--service` finds it (the record itself is
                // in the notifier's stream); a test message keeps its stream.
                stream: if d.breaker.is_empty() {
                    e.stream.clone()
                } else {
                    d.breaker.clone()
                },
                kind,
                summary: printable(&alert_line(&d)).into_owned(),
                details: json!(d),
            });
        }
    };
    Ok(AuditEntry {
        position: e.position,
        at_ms: e.recorded_at,
        node: e.node.clone(),
        stream: e.stream.clone(),
        kind,
        // One line whatever a reason holds (the details keep it as it was given).
        summary: printable(&summary).into_owned(),
        details,
    })
}

fn alert_line(d: &AlertDelivery) -> String {
    let mut line = format!(
        "{} to {}: {} (attempt {}",
        d.status.as_str(),
        d.sink,
        d.outcome.as_str(),
        d.attempt
    );
    if let Some(code) = d.status_code {
        line.push_str(&format!(", HTTP {code}"));
    }
    if let (Some(err), None) = (&d.error, d.status_code) {
        line.push_str(&format!(", {err}"));
    }
    line.push_str(&format!(", fingerprint {})", d.fingerprint));
    line
}

fn command_name(c: crate::breaker::Command) -> &'static str {
    match c {
        crate::breaker::Command::Reset => "reset",
        crate::breaker::Command::ForceOpen => "force_open",
        crate::breaker::Command::Disable => "disable",
    }
}

fn transition_line(t: &Transition) -> String {
    let evidence = t.evidence.text();
    if evidence.is_empty() {
        format!("{} → {} ({})", t.from, t.to, t.reason.as_str())
    } else {
        format!("{} → {} ({}: {evidence})", t.from, t.to, t.reason.as_str())
    }
}

fn policy_line(p: &PolicyApplied) -> String {
    let keys = crate::config::policy_keys(&p.policy);
    let shown: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("policy in force: {}", shown.join(" "))
}

/// `text` as it may be shown on a terminal or in a spreadsheet: control characters (escape
/// sequences, carriage returns, newlines, C1 codes) and the bidirectional overrides that reorder
/// what a reader sees are written as escapes (`\n`, `\u{1b}`), so a stored reason can never
/// clear a screen, retitle it, or print a line that looks like another audit entry.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(bad) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if bad(c) => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// An event of the log that could not be decoded: reported with its position and skipped.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Damaged {
    /// Where it is.
    pub position: i64,
    /// Its stream.
    pub stream: String,
    /// Its type.
    pub event_type: String,
    /// Why it does not decode.
    pub error: String,
}

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} event at position {} ({}) cannot be decoded and was skipped: {}",
            self.event_type, self.position, self.stream, self.error
        )
    }
}

/// An audit query's answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuditPage {
    /// The entries, in log order.
    pub entries: Vec<AuditEntry>,
    /// Events of the query that do not decode (damaged, or written by a newer version): each
    /// is reported and skipped, never the whole answer.
    pub damaged: Vec<Damaged>,
    /// The last position examined (the next page starts after it, past skipped rows too).
    pub scanned_to: i64,
}

/// Runs an audit query, in log order.
pub async fn audit(journal: &Journal, q: &AuditQuery) -> Result<AuditPage, JournalError> {
    let kinds: Vec<Kind> = if q.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        q.kinds.clone()
    };
    let types: Vec<&str> = kinds.iter().map(|k| k.event_type()).collect();
    let mut out = Vec::new();
    let mut damaged = Vec::new();
    let mut after = q.after_position;
    let mut scanned = q.after_position;
    let (since, until) = (
        q.since_ms.min(i64::MAX as u64) as i64,
        q.until_ms.min(i64::MAX as u64) as i64,
    );
    'pages: while out.len() < q.limit {
        let page = journal.read_range(&types, since, until, after, 1_000).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            scanned = e.position;
            // Alert records live in the notifier's stream: they are matched on the breaker they name.
            if e.event_type != ALERT_DELIVERY && q.stream.as_ref().is_some_and(|s| *s != e.stream) {
                continue;
            }
            let kind = kinds
                .iter()
                .copied()
                .find(|k| k.event_type() == e.event_type)
                .expect("read_range returned a requested type");
            let item = match entry(e, kind) {
                Ok(item) => item,
                Err(error) => {
                    damaged.push(Damaged {
                        position: e.position,
                        stream: e.stream.clone(),
                        event_type: e.event_type.clone(),
                        error,
                    });
                    continue;
                }
            };
            if q.stream.as_ref().is_some_and(|s| *s != item.stream) {
                continue;
            }
            out.push(item);
            if out.len() >= q.limit {
                break 'pages;
            }
        }
    }
    Ok(AuditPage {
        entries: out,
        damaged,
        scanned_to: scanned,
    })
}
