//! `GET /metrics` in Prometheus text format (0.0.4): state gauges like Resilience4j's, calls by
//! outcome, duration histograms, failure and health ratios, transitions, event-log commits.

use super::{ApiState, health::report_of};
use crate::breaker::State;
use crate::journal::LATENCY_BOUNDS_MS;
use actix_web::{HttpResponse, web};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Transitions by (breaker, from, to).
pub(super) type TransitionCounts = BTreeMap<(String, State, State), u64>;

/// A metric family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(super) async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let keys: Vec<String> = state.registry.handles().map(|h| h.key().to_owned()).collect();
    // Always the breakers' states; series read from the log are left out while it cannot be read.
    let report = report_of(&state, &keys).await;
    let totals = {
        let mut guard = state.projection.lock().await;
        match guard.as_mut() {
            Some(p) => p.totals().await.unwrap_or_default(),
            None => BTreeMap::new(),
        }
    };
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
    let mut out = String::new();
    family(
        &mut out,
        "circuit_breaker_state",
        "gauge",
        "1 for the state each breaker is in, 0 for the others.",
    );
    for h in state.registry.handles() {
        let current = h.state();
        for s in State::ALL {
            let _ = writeln!(
                out,
                "circuit_breaker_state{{service=\"{}\",state=\"{}\"}} {}",
                label(h.key()),
                s,
                u8::from(s == current)
            );
        }
    }
    family(
        &mut out,
        "circuit_breaker_calls_total",
        "counter",
        "Calls by outcome (rejected and fallback included).",
    );
    for k in &keys {
        let m = totals.get(k).cloned().unwrap_or_default();
        for (outcome, n) in [
            ("success", m.successes),
            ("failure", m.failures),
            ("timeout", m.timeouts),
            ("ignored", m.ignored),
            ("cancelled", m.cancelled),
            ("rejected", m.rejected),
            ("fallback", m.fallbacks),
        ] {
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
    for k in &keys {
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
        "Failed and timed-out share of the calls of the last 5 minutes.",
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
        let n = stats.errors[i].load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "circuit_breaker_event_log_errors_total{{kind=\"{kind}\"}} {n}");
    }
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let micros = stats.commit_us_total.load(std::sync::atomic::Ordering::Relaxed);
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
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out)
}
