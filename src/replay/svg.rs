//! The timeline as a picture: state bands, failure rate and p95 latency per minute, and markers
//! for operator actions. A pure function of what replay already folds; plain SVG, no toolchain.

use super::metrics::Minute;
use crate::breaker::{Reason, State, Transition};
use std::collections::BTreeMap;
use std::fmt::Write;

const W: f64 = 1000.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const BAND_TOP: f64 = 40.0;
const BAND_H: f64 = 28.0;
const CHART_TOP: f64 = 100.0;
const CHART_H: f64 = 160.0;
const H: f64 = 320.0;

fn color(s: State) -> &'static str {
    match s {
        State::Closed => "#2e7d32",
        State::Open => "#c62828",
        State::HalfOpen => "#f9a825",
        State::ForcedOpen => "#6a1b9a",
        State::Disabled => "#757575",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn clock(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S").to_string())
}

/// The timeline of `stream` over `[from_ms, to_ms)`, starting in `initial` state.
pub fn timeline_svg(
    stream: &str,
    from_ms: u64,
    to_ms: u64,
    initial: State,
    transitions: &[Transition],
    minutes: &BTreeMap<u64, Minute>,
) -> String {
    let to_ms = to_ms.max(from_ms + 1);
    let span = (to_ms - from_ms) as f64;
    let x = |t: u64| LEFT + (t.clamp(from_ms, to_ms) - from_ms) as f64 / span * (W - LEFT - RIGHT);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(s, r##"<rect width="{W}" height="{H}" fill="#ffffff"/>"##);
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{} — {} to {} (UTC)</text>"##,
        escape(stream),
        clock(from_ms),
        clock(to_ms)
    );
    // State bands.
    let mut state = initial;
    let mut since = from_ms;
    let mut bands = Vec::new();
    for t in transitions.iter().filter(|t| t.at_ms >= from_ms && t.at_ms < to_ms) {
        bands.push((since, t.at_ms, state));
        state = t.to;
        since = t.at_ms;
    }
    bands.push((since, to_ms, state));
    for (a, b, st) in bands {
        let (x0, x1) = (x(a), x(b));
        let _ = write!(
            s,
            r##"<rect x="{x0:.1}" y="{BAND_TOP}" width="{:.1}" height="{BAND_H}" fill="{}"><title>{} {}–{}</title></rect>"##,
            (x1 - x0).max(0.5),
            color(st),
            st,
            clock(a),
            clock(b)
        );
    }
    let _ = write!(s, r##"<text x="6" y="{}">state</text>"##, BAND_TOP + 18.0);
    // Chart frame: failure rate (0–100 %, left) and p95 latency (right, scaled to the max seen).
    let bottom = CHART_TOP + CHART_H;
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{CHART_TOP}" width="{:.1}" height="{CHART_H}" fill="none" stroke="#bbbbbb"/>"##,
        W - LEFT - RIGHT
    );

    let in_range: Vec<&Minute> = minutes
        .range(from_ms / 60_000 * 60_000..to_ms)
        .map(|(_, m)| m)
        .collect();
    let max_p95 = in_range
        .iter()
        .filter_map(|m| m.latency_quantile_ms(0.95))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut rate = String::new();
    let mut p95 = String::new();
    for m in &in_range {
        let mid = x(m.minute_ms + 30_000);
        let attempts = m.successes + m.failures + m.timeouts;
        if attempts > 0 {
            let r = (m.failures + m.timeouts) as f64 / attempts as f64;
            let _ = write!(rate, "{mid:.1},{:.1} ", bottom - r * CHART_H);
        }
        if let Some(q) = m.latency_quantile_ms(0.95) {
            let _ = write!(p95, "{mid:.1},{:.1} ", bottom - q as f64 / max_p95 * CHART_H);
        }
    }
    let _ = write!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#c62828" stroke-width="2"/>"##,
        rate.trim()
    );
    let _ = write!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1565c0" stroke-width="1.5" stroke-dasharray="4 2"/>"##,
        p95.trim()
    );
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="end" fill="#1565c0">{max_p95:.0} ms</text>"##,
        W - RIGHT - 4.0,
        CHART_TOP + 12.0
    );
    // Operator actions; labels of actions close together are staggered so they stay readable.
    let mut last_label: Option<(f64, u32)> = None;
    for t in transitions.iter().filter(|t| t.at_ms >= from_ms && t.at_ms < to_ms) {
        let label = match t.reason {
            Reason::Reset => "reset",
            Reason::ForceOpen => "force open",
            Reason::Disable => "disable",
            _ => continue,
        };
        let xm = x(t.at_ms);
        let row = match last_label {
            Some((lx, r)) if xm - lx < 70.0 => (r + 1) % 2,
            _ => 0,
        };
        last_label = Some((xm, row));
        let _ = write!(
            s,
            r##"<line class="operator" x1="{xm:.1}" y1="{BAND_TOP}" x2="{xm:.1}" y2="{bottom}" stroke="#000000" stroke-dasharray="3 3"/><text x="{:.1}" y="{}" font-size="10">{label}</text>"##,
            xm + 3.0,
            BAND_TOP - 4.0 - 11.0 * f64::from(row)
        );
    }
    // Time axis and legend.
    for i in 0..=4 {
        let t = from_ms + (span * i as f64 / 4.0) as u64;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"##,
            x(t),
            bottom + 16.0,
            clock(t)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="end" fill="#c62828">100 %</text><text x="{:.1}" y="{}" text-anchor="end" fill="#c62828">0</text>"##,
        LEFT - 4.0,
        CHART_TOP + 10.0,
        LEFT - 4.0,
        bottom
    );
    let mut lx = LEFT;
    for st in State::ALL {
        let _ = write!(
            s,
            r##"<rect x="{lx:.1}" y="{}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{}">{}</text>"##,
            H - 22.0,
            color(st),
            lx + 14.0,
            H - 13.0,
            st
        );
        lx += 95.0;
    }
    let _ = write!(
        s,
        r##"<line x1="{lx:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="#c62828" stroke-width="2"/><text x="{:.1}" y="{}">failed % per minute</text>"##,
        H - 17.0,
        lx + 16.0,
        H - 17.0,
        lx + 20.0,
        H - 13.0
    );
    lx += 140.0;
    let _ = write!(
        s,
        r##"<line x1="{lx:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="#1565c0" stroke-width="1.5" stroke-dasharray="4 2"/><text x="{:.1}" y="{}">p95 latency per minute</text>"##,
        H - 17.0,
        lx + 16.0,
        H - 17.0,
        lx + 20.0,
        H - 13.0
    );
    s.push_str("</svg>\n");
    s
}
