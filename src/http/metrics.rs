//! `GET /metrics` in Prometheus text format (0.0.4): Resilience4j's circuit-breaker series
//! (`resilience4j_circuitbreaker_*`, labelled `name`, so its Grafana panels and alerts work
//! unchanged), then breakerbox's own (`circuit_breaker_*`, labelled `service`): attempts by
//! outcome, fallbacks, latency histograms, health, transitions and the event log's own health.
//! The figures are read, never recomputed: states and window rates from the live breakers
//! (the core's [`crate::breaker::Breaker::rates`], through [`crate::actor::BreakerHandle::measure`]), counts from the metrics projection, the
//! log's from [`crate::journal::Journal::stats`]. See docs/monitoring.md.

use super::{ApiState, health::report_of};
use crate::actor::Figures;
use crate::breaker::{Outcome, State};
use crate::journal::LATENCY_BOUNDS_MS;
use crate::replay::Minute;
use actix_web::{HttpResponse, web};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

/// Transitions by (breaker, from, to).
pub(super) type TransitionCounts = BTreeMap<(String, State, State), u64>;

/// A metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The HELP text of a series kept for one release under its old name.
fn deprecated(replacement: &str, help: &str) -> String {
    format!("DEPRECATED, removed in the next release: use {replacement}. {help}")
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Resilience4j's state names: ours, plus `metrics_only` (a state breakerbox does not have,
/// always 0), so a query naming any of its states finds a series.
const R4J_METRICS_ONLY: &str = "metrics_only";

/// Resilience4j's call kinds and the outcomes each one counts: a timeout is a failure there
/// too; a cancelled call is none of them (it is in `circuit_breaker_attempts_total`).
const R4J_KINDS: [(&str, &[Outcome]); 3] = [
    ("successful", &[Outcome::Success]),
    ("failed", &[Outcome::Failure, Outcome::Timeout]),
    ("ignored", &[Outcome::Ignored]),
];

pub(super) async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let keys: Vec<String> = state.registry.handles().map(|h| h.key().to_owned()).collect();
    // Always the breakers' states; series read from the log are left out while it cannot be read.
    let report = report_of(&state, &keys).await;
    let (totals, folded_to) = {
        let mut guard = state.projection.lock().await;
        match guard.as_mut() {
            Some(p) => (p.totals().await.ok(), p.position().await.ok()),
            None => (None, None),
        }
    };
    // The counts are the projection's: while it cannot be read their samples are left out (a
    // counter read as 0 would look like a reset, and its return like a burst of calls).
    let counted: &[String] = if totals.is_some() { &keys } else { &[] };
    let totals = totals.unwrap_or_default();
    let journal = state.registry.journal();
    // Counted on from where the last scrape stopped, not from the start of the log each time.
    let transitions = {
        let mut seen = state.transitions_seen.lock().await;
        if let Ok((new, read_to)) = crate::replay::transitions_by_stream(journal, 0, u64::MAX, seen.0).await {
            for (stream, ts) in new {
                for t in ts {
                    *seen.1.entry((stream.clone(), t.from, t.to)).or_default() += 1;
                }
            }
            seen.0 = read_to;
        }
        seen.1.clone()
    };
    // The live breakers' windows as the core holds them, for the figures Resilience4j exports.
    let mut live: Vec<(String, State, Option<Figures>)> = Vec::new();
    for h in state.registry.handles() {
        live.push((h.key().to_owned(), h.state(), h.measure().await));
    }
    let mut out = String::new();
    resilience4j(&mut out, &live, counted, &totals);
    family(
        &mut out,
        "circuit_breaker_state",
        "gauge",
        &deprecated(
            "resilience4j_circuitbreaker_state{name,state}",
            "1 for the state each breaker is in, 0 for the others.",
        ),
    );
    for (key, current, _) in &live {
        for s in State::ALL {
            let _ = writeln!(
                out,
                "circuit_breaker_state{{service=\"{}\",state=\"{}\"}} {}",
                label(key),
                s,
                u8::from(s == *current)
            );
        }
    }
    family(
        &mut out,
        "circuit_breaker_attempts_total",
        "counter",
        "Call attempts by outcome, each counted once: success, failure, timeout, ignored, cancelled \
         (the calls that ran) and rejected (not permitted). A rejected call a fallback answered is \
         rejected here; fallbacks are counted in circuit_breaker_fallbacks_total.",
    );
    for k in counted {
        let m = totals.get(k).cloned().unwrap_or_default();
        for (outcome, n) in attempts(&m) {
            let _ = writeln!(
                out,
                "circuit_breaker_attempts_total{{service=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(k)
            );
        }
    }
    family(
        &mut out,
        "circuit_breaker_fallbacks_total",
        "counter",
        "Calls a fallback answered (each is also an attempt, usually a rejected one).",
    );
    for k in counted {
        let m = totals.get(k).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "circuit_breaker_fallbacks_total{{service=\"{}\"}} {}",
            label(k),
            m.fallbacks
        );
    }
    family(
        &mut out,
        "circuit_breaker_outcomes_dropped_total",
        "counter",
        "Outcomes lost because the breaker's buffer was full (its actor fell behind): counted in no other series.",
    );
    for k in counted {
        let m = totals.get(k).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "circuit_breaker_outcomes_dropped_total{{service=\"{}\"}} {}",
            label(k),
            m.dropped
        );
    }
    family(
        &mut out,
        "circuit_breaker_calls_total",
        "counter",
        &deprecated(
            "circuit_breaker_attempts_total and circuit_breaker_fallbacks_total",
            "Calls by outcome; a rejected call a fallback answered is in both rejected and fallback.",
        ),
    );
    for k in counted {
        let m = totals.get(k).cloned().unwrap_or_default();
        for (outcome, n) in attempts(&m).into_iter().chain([("fallback", m.fallbacks)]) {
            let _ = writeln!(
                out,
                "circuit_breaker_calls_total{{service=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(k)
            );
        }
    }
    family(
        &mut out,
        "circuit_breaker_call_duration_seconds",
        "histogram",
        "Latency of the calls that ran.",
    );
    for k in counted {
        let m = totals.get(k).cloned().unwrap_or_default();
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
            cumulative += m.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "circuit_breaker_call_duration_seconds_bucket{{service=\"{}\",le=\"{}\"}} {cumulative}",
                label(k),
                f64::from(*bound) / 1_000.0
            );
        }
        let _ = writeln!(
            out,
            "circuit_breaker_call_duration_seconds_bucket{{service=\"{}\",le=\"+Inf\"}} {}",
            label(k),
            m.calls()
        );
        let _ = writeln!(
            out,
            "circuit_breaker_call_duration_seconds_sum{{service=\"{}\"}} {}",
            label(k),
            m.latency_total_ms as f64 / 1_000.0
        );
        let _ = writeln!(
            out,
            "circuit_breaker_call_duration_seconds_count{{service=\"{}\"}} {}",
            label(k),
            m.calls()
        );
    }
    family(
        &mut out,
        "circuit_breaker_failure_ratio",
        "gauge",
        &deprecated(
            "resilience4j_circuitbreaker_failure_rate{name} (the breaker's own window, in percent)",
            "Failed and timed-out share of the calls of the last 5 minutes.",
        ),
    );
    for b in report.breakers.iter().filter(|b| b.metrics_5m.is_some()) {
        let ratio = b.failure_ratio_5m.unwrap_or(0.0);
        let _ = writeln!(
            out,
            "circuit_breaker_failure_ratio{{service=\"{}\"}} {ratio}",
            label(&b.service)
        );
    }
    family(
        &mut out,
        "circuit_breaker_health_ratio",
        "gauge",
        "The health score (docs/health-score.md) as a 0-1 ratio.",
    );
    for b in &report.breakers {
        let Some(health) = &b.health else { continue };
        let _ = writeln!(
            out,
            "circuit_breaker_health_ratio{{service=\"{}\"}} {}",
            label(&b.service),
            f64::from(health.score) / 100.0
        );
    }
    family(
        &mut out,
        "circuit_breaker_half_open_permits_in_use",
        "gauge",
        "Trial permits out.",
    );
    for h in state.registry.handles() {
        let _ = writeln!(
            out,
            "circuit_breaker_half_open_permits_in_use{{service=\"{}\"}} {}",
            label(h.key()),
            h.trial_permits()
        );
    }
    family(
        &mut out,
        "circuit_breaker_transitions_total",
        "counter",
        "State changes by from and to.",
    );
    for ((k, from, to), n) in &transitions {
        let _ = writeln!(
            out,
            "circuit_breaker_transitions_total{{service=\"{}\",from=\"{from}\",to=\"{to}\"}} {n}",
            label(k)
        );
    }
    family(
        &mut out,
        "circuit_breaker_event_log_up",
        "gauge",
        "1 while this process's event log takes appends, 0 while they fail.",
    );
    let _ = writeln!(out, "circuit_breaker_event_log_up {}", u8::from(report.log.is_ok()));
    family(
        &mut out,
        "circuit_breaker_event_log_readable",
        "gauge",
        "1 while the health figures could be read from the log.",
    );
    let _ = writeln!(
        out,
        "circuit_breaker_event_log_readable {}",
        u8::from(report.breakers.iter().all(|b| b.health.is_some()))
    );
    let stats = journal.stats();
    family(
        &mut out,
        "circuit_breaker_event_log_errors_total",
        "counter",
        "Failed appends to the event log, by kind.",
    );
    for (i, kind) in crate::journal::ERROR_KINDS.iter().enumerate() {
        let n = stats.errors[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "circuit_breaker_event_log_errors_total{{kind=\"{kind}\"}} {n}");
    }
    let commits = stats.commits.load(Ordering::Relaxed);
    let micros = stats.commit_us_total.load(Ordering::Relaxed);
    family(
        &mut out,
        "circuit_breaker_event_log_commit_seconds",
        "summary",
        "Time spent committing event-log batches.",
    );
    let _ = writeln!(
        out,
        "circuit_breaker_event_log_commit_seconds_sum {}",
        micros as f64 / 1e6
    );
    let _ = writeln!(out, "circuit_breaker_event_log_commit_seconds_count {commits}");
    family(
        &mut out,
        "circuit_breaker_event_log_records_dropped_total",
        "counter",
        "Records this process could not write (its buffer full while the log failed, or a stream another writer took); each run of them is recorded as a gap.",
    );
    let _ = writeln!(
        out,
        "circuit_breaker_event_log_records_dropped_total {}",
        stats.dropped.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "circuit_breaker_event_log_gaps_total",
        "counter",
        "Gap events this process wrote: each says which records were dropped, and when.",
    );
    let _ = writeln!(
        out,
        "circuit_breaker_event_log_gaps_total {}",
        stats.gaps.load(Ordering::Relaxed)
    );
    let condition = journal.condition();
    if let Some(folded_to) = folded_to {
        family(
            &mut out,
            "circuit_breaker_event_log_projection_lag",
            "gauge",
            "Log positions committed but not yet folded into the metrics projection (the counts here trail the log by them).",
        );
        let _ = writeln!(
            out,
            "circuit_breaker_event_log_projection_lag {}",
            (condition.position - folded_to).max(0)
        );
    }
    if let Some(fleet) = state.fleet.as_ref().map(|f| f.borrow().clone()) {
        family(
            &mut out,
            "circuit_breaker_fleet_log_unshipped",
            "gauge",
            "Positions of this node's log committed but not yet in the fleet's log (docs/fleet.md).",
        );
        let _ = writeln!(
            out,
            "circuit_breaker_fleet_log_unshipped {}",
            (condition.position - fleet.shipped.unwrap_or(0)).max(0)
        );
        family(
            &mut out,
            "circuit_breaker_fleet_log_stale_seconds",
            "gauge",
            "How long shipping to the fleet's log has been failing: its view of this node is that old (0 while it ships).",
        );
        let stale_ms = fleet
            .failing_since_ms
            .map_or(0, |since| crate::journal::fleet::now_ms().saturating_sub(since));
        let _ = writeln!(
            out,
            "circuit_breaker_fleet_log_stale_seconds {}",
            stale_ms as f64 / 1000.0
        );
    }
    family(
        &mut out,
        "circuit_breaker_event_log_size_bytes",
        "gauge",
        "The log's files on disk: the database and its write-ahead log.",
    );
    let _ = writeln!(
        out,
        "circuit_breaker_event_log_size_bytes {}",
        log_size_bytes(journal.path()).await
    );
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out)
}

/// The outcomes that partition attempts, with their counts: every call that ran has exactly
/// one of the first five, every call not permitted is `rejected`.
fn attempts(m: &Minute) -> [(&'static str, u64); 6] {
    [
        ("success", m.successes),
        ("failure", m.failures),
        ("timeout", m.timeouts),
        ("ignored", m.ignored),
        ("cancelled", m.cancelled),
        ("rejected", m.rejected),
    ]
}

/// The database file and its `-wal` beside it (a file missing counts 0).
async fn log_size_bytes(db: &std::path::Path) -> u64 {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let mut total = 0;
    for path in [db.to_path_buf(), wal.into()] {
        total += tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
    }
    total
}

/// Resilience4j's series (its micrometer binder's names, kinds and tags, as Prometheus
/// names them): `name` is the breaker's key.
fn resilience4j(
    out: &mut String,
    live: &[(String, State, Option<Figures>)],
    counted: &[String],
    totals: &BTreeMap<String, Minute>,
) {
    family(
        out,
        "resilience4j_circuitbreaker_state",
        "gauge",
        "The states of the circuit breaker",
    );
    for (key, current, _) in live {
        let names = State::ALL.iter().map(|s| (s.as_str(), s == current));
        for (s, on) in names.chain([(R4J_METRICS_ONLY, false)]) {
            let _ = writeln!(
                out,
                "resilience4j_circuitbreaker_state{{name=\"{}\",state=\"{s}\"}} {}",
                label(key),
                u8::from(on)
            );
        }
    }
    family(
        out,
        "resilience4j_circuitbreaker_calls_seconds",
        "summary",
        "Total number of calls by kind (successful, failed, ignored) and their duration",
    );
    for key in counted {
        let m = totals.get(key).cloned().unwrap_or_default();
        for (kind, outcomes) in R4J_KINDS {
            let (calls, latency_ms) = outcomes
                .iter()
                .map(|&o| m.of(o))
                .fold((0, 0), |(c, l), (n, ms)| (c + n, l + ms));
            let _ = writeln!(
                out,
                "resilience4j_circuitbreaker_calls_seconds_count{{name=\"{}\",kind=\"{kind}\"}} {calls}",
                label(key)
            );
            let _ = writeln!(
                out,
                "resilience4j_circuitbreaker_calls_seconds_sum{{name=\"{}\",kind=\"{kind}\"}} {}",
                label(key),
                latency_ms as f64 / 1_000.0
            );
        }
    }
    family(
        out,
        "resilience4j_circuitbreaker_not_permitted_calls_total",
        "counter",
        "Total number of not permitted calls",
    );
    for key in counted {
        let m = totals.get(key).cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "resilience4j_circuitbreaker_not_permitted_calls_total{{name=\"{}\",kind=\"not_permitted\"}} {}",
            label(key),
            m.rejected
        );
    }
    // Rates as Resilience4j gives them: percent, -1 while there is no rate to judge.
    let rates: Vec<_> = live
        .iter()
        .filter_map(|(key, _, f)| f.as_ref().map(|f| (key, f.rates, &f.view)))
        .collect();
    family(
        out,
        "resilience4j_circuitbreaker_failure_rate",
        "gauge",
        "The failure rate of the circuit breaker",
    );
    for (key, r, _) in &rates {
        let _ = writeln!(
            out,
            "resilience4j_circuitbreaker_failure_rate{{name=\"{}\"}} {}",
            label(key),
            r.failure_rate_percent.unwrap_or(-1.0)
        );
    }
    family(
        out,
        "resilience4j_circuitbreaker_slow_call_rate",
        "gauge",
        "The slow call of the circuit breaker",
    );
    for (key, r, _) in &rates {
        let _ = writeln!(
            out,
            "resilience4j_circuitbreaker_slow_call_rate{{name=\"{}\"}} {}",
            label(key),
            r.slow_call_rate_percent.unwrap_or(-1.0)
        );
    }
    family(
        out,
        "resilience4j_circuitbreaker_buffered_calls",
        "gauge",
        "The number of buffered calls stored in the ring buffer, by kind",
    );
    for (key, _, view) in &rates {
        // The trip rule's window, else the slow-call rule's; a breaker with neither (the
        // consecutive-failures rule alone) buffers no calls and has no series.
        let Some(w) = view.window.or(view.slow_window) else {
            continue;
        };
        for (kind, n) in [
            ("successful", w.calls.saturating_sub(w.failures)),
            ("failed", w.failures),
        ] {
            let _ = writeln!(
                out,
                "resilience4j_circuitbreaker_buffered_calls{{name=\"{}\",kind=\"{kind}\"}} {n}",
                label(key)
            );
        }
    }
}
