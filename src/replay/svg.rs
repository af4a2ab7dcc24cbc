//! The timeline as a picture: the state band, the calls of each minute stacked by outcome
//! (rejected included, so an outage shows as the share of calls that got no good answer), the
//! p95 latency per minute, and markers for operator actions. "No data" before the stream's log
//! began. A pure function of what replay already folds; plain SVG, no toolchain.

use super::Timeline;
use super::metrics::Minute;
use crate::breaker::{Reason, State};
use std::fmt::Write;

const W: f64 = 1000.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 60.0;
const BAND_TOP: f64 = 70.0;
const BAND_H: f64 = 26.0;
const CHART_TOP: f64 = 120.0;
const CHART_H: f64 = 170.0;
const H: f64 = 370.0;
/// The gap a label needs from the one before it in its row (px): ~6 px a character at 10 px.
const LABEL_GAP: f64 = 72.0;

fn color(s: State) -> &'static str {
    match s {
        State::Closed => "#2e7d32",
        State::Open => "#c62828",
        State::HalfOpen => "#f9a825",
        State::ForcedOpen => "#6a1b9a",
        State::Disabled => "#757575",
    }
}

/// The outcome layers of a minute's bar, bottom up: name, colour, count.
fn layers(m: &Minute) -> [(&'static str, &'static str, u64); 5] {
    [
        ("succeeded", "#81c784", m.successes),
        ("failed", "#e53935", m.failures),
        ("timed out", "#fb8c00", m.timeouts),
        ("rejected", "#8e24aa", m.rejected),
        ("ignored or cancelled", "#bdbdbd", m.ignored + m.cancelled),
    ]
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

/// The timeline `t` of `stream` as an SVG picture.
pub fn timeline_svg(stream: &str, t: &Timeline) -> String {
    let (from_ms, to_ms) = (t.from_ms, t.to_ms.max(t.from_ms + 1));
    let span = (to_ms - from_ms) as f64;
    let x = |at: u64| LEFT + (at.clamp(from_ms, to_ms) - from_ms) as f64 / span * (W - LEFT - RIGHT);
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
    // Nothing is known before the log began: shown as such, not as a state.
    let known_from = t.began_ms.map_or(to_ms, |b| b.max(from_ms));
    if known_from > from_ms {
        let _ = write!(
            s,
            r##"<pattern id="nodata" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="6" height="6" fill="#eeeeee"/><line x1="0" y1="0" x2="0" y2="6" stroke="#bdbdbd" stroke-width="2"/></pattern>"##
        );
        let (x0, x1) = (x(from_ms), x(known_from));
        let _ = write!(
            s,
            r##"<rect class="nodata" x="{x0:.1}" y="{BAND_TOP}" width="{:.1}" height="{:.1}" fill="url(#nodata)"><title>no data: the log of {} begins at {}</title></rect>"##,
            (x1 - x0).max(0.5),
            CHART_TOP + CHART_H - BAND_TOP,
            escape(stream),
            t.began_ms.map_or_else(|| "no event".to_owned(), clock)
        );
        if x1 - x0 > 50.0 {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#616161">no data</text>"##,
                (x0 + x1) / 2.0,
                BAND_TOP + BAND_H / 2.0 + 4.0
            );
        }
    }
    // State bands, from where the log is known.
    let mut state = t.initial;
    let mut since = known_from;
    let mut bands = Vec::new();
    for tr in t
        .transitions
        .iter()
        .filter(|tr| tr.at_ms >= from_ms && tr.at_ms < to_ms)
    {
        if tr.at_ms > since {
            bands.push((since, tr.at_ms, state));
        }
        state = tr.to;
        since = tr.at_ms.max(since);
    }
    if since < to_ms {
        bands.push((since, to_ms, state));
    }
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
    let _ = write!(s, r##"<text x="6" y="{}">state</text>"##, BAND_TOP + 17.0);
    // Calls per minute, stacked by outcome (left scale), and p95 latency (right scale).
    let bottom = CHART_TOP + CHART_H;
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{CHART_TOP}" width="{:.1}" height="{CHART_H}" fill="none" stroke="#bbbbbb"/>"##,
        W - LEFT - RIGHT
    );
    let in_range: Vec<&Minute> = t
        .minutes
        .range(from_ms / 60_000 * 60_000..to_ms)
        .map(|(_, m)| m)
        .filter(|m| m.minute_ms + 60_000 > known_from)
        .collect();
    let total = |m: &Minute| layers(m).iter().map(|l| l.2).sum::<u64>();
    let max_calls = in_range.iter().map(|m| total(m)).max().unwrap_or(0).max(1) as f64;
    let max_p95 = in_range
        .iter()
        .filter_map(|m| m.latency_quantile_ms(0.95))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut p95 = String::new();
    for m in &in_range {
        let (x0, x1) = (x(m.minute_ms), x(m.minute_ms + 60_000));
        let width = ((x1 - x0) - 1.0).max(0.5);
        let mut top = bottom;
        for (name, fill, n) in layers(m) {
            if n == 0 {
                continue;
            }
            let h = n as f64 / max_calls * CHART_H;
            top -= h;
            let _ = write!(
                s,
                r##"<rect class="calls" x="{x0:.1}" y="{top:.1}" width="{width:.1}" height="{h:.1}" fill="{fill}"><title>{} {name}: {n}</title></rect>"##,
                clock(m.minute_ms)
            );
        }
        if let Some(q) = m.latency_quantile_ms(0.95) {
            let _ = write!(
                p95,
                "{:.1},{:.1} ",
                (x0 + x1) / 2.0,
                bottom - q as f64 / max_p95 * CHART_H
            );
        }
    }
    let _ = write!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1565c0" stroke-width="1.5" stroke-dasharray="4 2"/>"##,
        p95.trim()
    );
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{}" fill="#1565c0">{max_p95:.0} ms</text><text x="{:.1}" y="{}" fill="#1565c0">p95</text>"##,
        W - RIGHT + 4.0,
        CHART_TOP + 10.0,
        W - RIGHT + 4.0,
        CHART_TOP + 24.0
    );
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{}" text-anchor="end">{max_calls:.0}</text><text x="{:.1}" y="{}" text-anchor="end">calls/min</text><text x="{:.1}" y="{}" text-anchor="end">0</text>"##,
        LEFT - 4.0,
        CHART_TOP + 10.0,
        LEFT - 4.0,
        CHART_TOP + 24.0,
        LEFT - 4.0,
        bottom
    );
    // Operator actions: each label in the first of three rows where it doesn't overlap.
    let mut rows_end = [f64::MIN; 3];
    for tr in t
        .transitions
        .iter()
        .filter(|tr| tr.at_ms >= from_ms && tr.at_ms < to_ms)
    {
        let label = match tr.reason {
            Reason::Reset => "reset",
            Reason::ForceOpen => "force open",
            Reason::Disable => "disable",
            _ => continue,
        };
        let xm = x(tr.at_ms);
        let row = rows_end
            .iter()
            .position(|end| xm >= *end)
            .unwrap_or_else(|| (0..3).min_by(|a, b| rows_end[*a].total_cmp(&rows_end[*b])).unwrap_or(0));
        rows_end[row] = xm + LABEL_GAP;
        let _ = write!(
            s,
            r##"<line class="operator" x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{bottom}" stroke="#000000" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" font-size="10">{label}</text>"##,
            BAND_TOP - 12.0 * (row as f64 + 1.0) + 8.0,
            xm + 3.0,
            BAND_TOP - 12.0 * row as f64 - 4.0
        );
    }
    // Time axis.
    for i in 0..=4 {
        let at = from_ms + (span * i as f64 / 4.0) as u64;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{}" text-anchor="{anchor}">{}</text>"##,
            x(at),
            bottom + 16.0,
            clock(at)
        );
    }
    // Legend: the states on one row, the calls' outcomes and p95 on the next.
    let legend = |s: &mut String, lx: f64, y: f64, fill: &str, text: &str| {
        let _ = write!(
            s,
            r##"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{fill}"/><text x="{:.1}" y="{y:.1}">{text}</text>"##,
            y - 9.0,
            lx + 14.0
        );
    };
    let mut lx = LEFT;
    for st in State::ALL {
        legend(&mut s, lx, H - 40.0, color(st), &st.to_string());
        lx += 100.0;
    }
    lx = LEFT;
    for (name, fill, _) in layers(&Minute::default()) {
        legend(&mut s, lx, H - 18.0, fill, name);
        lx += 25.0 + 6.5 * name.len() as f64;
    }
    let _ = write!(
        s,
        r##"<line x1="{lx:.1}" y1="{}" x2="{:.1}" y2="{}" stroke="#1565c0" stroke-width="1.5" stroke-dasharray="4 2"/><text x="{:.1}" y="{}">p95 latency</text>"##,
        H - 22.0,
        lx + 16.0,
        H - 22.0,
        lx + 20.0,
        H - 18.0
    );
    s.push_str("</svg>\n");
    s
}
