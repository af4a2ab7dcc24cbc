//! Fleet health: each live node's own health report, merged per breaker (`docs/fleet.md`,
//! "Fleet health"). A node publishes what its one [`super::health_report`] says about every
//! second ([`NodeDoc`]); this folds the documents into one view: each node's state and score,
//! the fleet's merged health (counters add, latency histograms add bucket by bucket), the
//! spread of the scores, and the nodes far below the others (in the spirit of Envoy's
//! success-rate outlier detection), so one node's bad network is told apart from the service
//! being down. Pure: the caller reads the documents and the database's clock.

use super::{Health, HealthReport, Minute, Recent, Severity, health};
use crate::breaker::{Reason, State};
use crate::journal::fleet::{NodeState, NodeView};
use crate::journal::pg::NodeHealthRow;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of [`NodeDoc`] this build writes.
pub const NODE_DOC_VERSION: u32 = 1;
/// A live node's document older than this is stale: shown, not merged (published every second).
pub const STALE_AFTER_MS: i64 = 3_000;
/// Attempts in five minutes below which a node's success rate says too little to compare.
pub const OUTLIER_MIN_ATTEMPTS: u64 = 10;
/// Nodes with enough attempts needed before any is called an outlier.
pub const OUTLIER_MIN_NODES: usize = 3;
/// How far below the median success rate of the nodes an outlier is (30 points).
pub const OUTLIER_GAP: f64 = 0.30;

/// What a node publishes: its health report's essentials per breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeDoc {
    /// [`NODE_DOC_VERSION`] when written.
    pub version: u32,
    /// When the report was made, by the node's clock.
    pub at_ms: u64,
    /// Whether the node's own log takes appends.
    pub log_ok: bool,
    /// Its breakers.
    pub breakers: Vec<NodeBreaker>,
}

/// One breaker of a node's document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeBreaker {
    /// The breaker's key.
    pub service: String,
    /// Its state on the node.
    pub state: State,
    /// Its severity there.
    pub severity: Severity,
    /// Its health score there (none when the node could not read its log).
    pub health: Option<u8>,
    /// Its last five minutes, histogram included.
    pub window_5m: Option<Minute>,
    /// The latency budget its score measured against.
    pub latency_budget_ms: u64,
    /// When its current episode began by the node's own trip rule (not a quorum hint, not an
    /// operator): what a quorum counts (`docs/fleet.md`, "Quorum hints").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tripped_at_ms: Option<u64>,
}

impl NodeDoc {
    /// The document of a node's report.
    pub fn of(report: &HealthReport) -> NodeDoc {
        NodeDoc {
            version: NODE_DOC_VERSION,
            at_ms: report.as_of_ms,
            log_ok: report.log.is_ok(),
            breakers: report
                .breakers
                .iter()
                .map(|b| NodeBreaker {
                    service: b.service.clone(),
                    state: b.state,
                    severity: b.severity,
                    health: b.health.as_ref().map(|h| h.score),
                    window_5m: b.window_5m.clone(),
                    latency_budget_ms: b.latency_budget_ms,
                    tripped_at_ms: b
                        .current_trip
                        .as_ref()
                        .filter(|t| {
                            matches!(
                                t.reason,
                                Reason::ConsecutiveFailures
                                    | Reason::FailureCount
                                    | Reason::FailureRate
                                    | Reason::SlowCallRate
                            )
                        })
                        .map(|t| t.at_ms),
                })
                .collect(),
        }
    }
}

/// Fleet health at one instant.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetHealth {
    /// The instant, by the database's clock (node clocks never order the fleet).
    pub as_of_ms: i64,
    /// The breaker asked about, when one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The nodes not gone, by name.
    pub nodes: Vec<FleetNode>,
    /// The breakers, in trouble first (then by name).
    pub breakers: Vec<FleetBreaker>,
}

/// A node in the fleet view.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetNode {
    /// The node.
    pub node: String,
    /// `live`, `stopped` or `lapsed` (gone nodes are left out).
    pub state: NodeState,
    /// How old its last document is (none: it published none).
    pub report_age_ms: Option<i64>,
    /// Its clock minus the database's when it last published (positive: ahead). It includes the
    /// one-way trip to the database, under a millisecond on a LAN.
    pub clock_skew_ms: Option<i64>,
    /// Whether its document is merged: a live node's, at most [`STALE_AFTER_MS`] old, readable.
    pub merged: bool,
    /// Why it is not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// Whose trouble a breaker's is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trouble {
    /// Half the nodes or more are open, or the median node's calls mostly fail: the service.
    Service,
    /// Some nodes are open or far below the others, fewer than half: those nodes.
    Nodes,
    /// None.
    None,
}

/// One breaker across the fleet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetBreaker {
    /// The breaker's key.
    pub service: String,
    /// Whose trouble it is.
    pub trouble: Trouble,
    /// Nodes in each state.
    pub states: BTreeMap<State, u32>,
    /// The fleet's health: the score of every merged node's last five minutes added together,
    /// in the state most of them are in.
    pub health: Option<Health>,
    /// The merged last five minutes.
    pub metrics_5m: Option<Recent>,
    /// Lowest, median and highest score of the nodes.
    pub spread: Option<Spread>,
    /// Nodes far below the others.
    pub outliers: Vec<Outlier>,
    /// Each merged node's view of it, by node.
    pub nodes: Vec<NodeRow>,
}

/// Lowest, median and highest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// Lowest.
    pub min: u8,
    /// Median (the lower of the two middle ones).
    pub median: u8,
    /// Highest.
    pub max: u8,
}

/// A node far below the others for one breaker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outlier {
    /// The node.
    pub node: String,
    /// Its share of attempts that worked in the last five minutes.
    pub success_rate: f64,
    /// The median of the nodes' (those with enough attempts).
    pub median_success_rate: f64,
}

/// One node's view of one breaker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeRow {
    /// The node.
    pub node: String,
    /// The breaker's state there.
    pub state: State,
    /// Its severity there.
    pub severity: Severity,
    /// Its score there.
    pub health: Option<u8>,
    /// Attempts there in the last five minutes (ran or rejected).
    pub attempts_5m: u64,
    /// The share of them that worked (none without attempts).
    pub success_rate_5m: Option<f64>,
}

fn attempts(m: &Minute) -> u64 {
    m.successes + m.failures + m.timeouts + m.rejected
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    (n > 0).then(|| v[(n - 1) / 2])
}

/// Fleet health at `now_ms` (the database's clock) from where each node stands and each node's
/// last document; only `service`'s breaker when one is asked.
pub fn fleet_health(
    now_ms: i64,
    views: &[NodeView],
    published: &[NodeHealthRow],
    service: Option<&str>,
) -> FleetHealth {
    let docs: BTreeMap<&str, &NodeHealthRow> = published.iter().map(|p| (p.node.as_str(), p)).collect();
    let mut nodes = Vec::new();
    let mut merged: Vec<(String, NodeDoc)> = Vec::new();
    for v in views.iter().filter(|v| v.state != NodeState::Gone) {
        let p = docs.get(v.node.as_str());
        let age = p.map(|p| now_ms.saturating_sub(p.reported_at_ms));
        let decoded = p.map(|p| serde_json::from_str::<NodeDoc>(&p.doc));
        let why_not = match (&v.state, age, &decoded) {
            (NodeState::Live, _, None) => Some("it has published no health yet".to_owned()),
            (NodeState::Live, Some(age), _) if age > STALE_AFTER_MS => {
                Some(format!("its health is {:.1} s old", age as f64 / 1000.0))
            }
            (NodeState::Live, _, Some(Err(e))) => Some(format!("its health document cannot be read: {e}")),
            (NodeState::Live, _, Some(Ok(_))) => None,
            (state, _, _) => Some(format!(
                "it is {}",
                serde_json::to_value(state).unwrap_or_default().as_str().unwrap_or("?")
            )),
        };
        if why_not.is_none()
            && let Some(Ok(doc)) = decoded
        {
            merged.push((v.node.clone(), doc));
        }
        nodes.push(FleetNode {
            node: v.node.clone(),
            state: v.state,
            report_age_ms: age,
            clock_skew_ms: p.map(|p| p.node_clock_ms - p.reported_at_ms),
            merged: why_not.is_none(),
            why_not,
        });
    }
    // Each breaker's rows, across the merged nodes.
    let mut by_service: BTreeMap<&str, Vec<(&str, &NodeBreaker)>> = BTreeMap::new();
    for (node, doc) in &merged {
        for b in &doc.breakers {
            if service.is_none_or(|s| s == b.service) {
                by_service
                    .entry(b.service.as_str())
                    .or_default()
                    .push((node.as_str(), b));
            }
        }
    }
    let at = now_ms.max(0) as u64;
    let mut breakers: Vec<FleetBreaker> = by_service
        .into_iter()
        .map(|(name, rows)| one_breaker(name, &rows, at))
        .collect();
    breakers.sort_by(|a, b| (a.trouble, &a.service).cmp(&(b.trouble, &b.service)));
    FleetHealth {
        as_of_ms: now_ms,
        service: service.map(str::to_owned),
        nodes,
        breakers,
    }
}

fn one_breaker(service: &str, rows: &[(&str, &NodeBreaker)], at_ms: u64) -> FleetBreaker {
    let mut states: BTreeMap<State, u32> = BTreeMap::new();
    let mut window = Minute::default();
    let mut any_window = false;
    let mut node_rows = Vec::with_capacity(rows.len());
    for (node, b) in rows {
        *states.entry(b.state).or_default() += 1;
        if let Some(w) = &b.window_5m {
            window.merge(w);
            any_window = true;
        }
        let tried = b.window_5m.as_ref().map_or(0, attempts);
        node_rows.push(NodeRow {
            node: (*node).to_owned(),
            state: b.state,
            severity: b.severity,
            health: b.health,
            attempts_5m: tried,
            success_rate_5m: b
                .window_5m
                .as_ref()
                .filter(|_| tried > 0)
                .map(|w| w.successes as f64 / tried as f64),
        });
    }
    // The state most nodes are in (a tie goes to the worse: ALL's order is not it, so rank).
    let rank = |s: State| match s {
        State::ForcedOpen => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::Closed => 3,
        State::Disabled => 4,
    };
    let fleet_state = states
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(rank(*b.0).cmp(&rank(*a.0))))
        .map_or(State::Closed, |(s, _)| *s);
    let budget = median(rows.iter().map(|(_, b)| b.latency_budget_ms).collect()).unwrap_or(1_000);
    let health = any_window.then(|| {
        let minutes = BTreeMap::from([(at_ms / 60_000 * 60_000, window.clone())]);
        health(&minutes, &[], at_ms, budget, fleet_state)
    });
    let spread = {
        let scores: Vec<u8> = rows.iter().filter_map(|(_, b)| b.health).collect();
        match (scores.iter().min(), median(scores.clone()), scores.iter().max()) {
            (Some(&min), Some(median), Some(&max)) => Some(Spread { min, median, max }),
            _ => None,
        }
    };
    // Outliers: far below the median success rate of the nodes with enough attempts, while
    // the service itself is fine (half the nodes open, or the median node's calls mostly
    // failing, is the service's trouble: no node then stands out as its cause).
    let rated: Vec<(&str, f64)> = node_rows
        .iter()
        .filter(|r| r.attempts_5m >= OUTLIER_MIN_ATTEMPTS)
        .filter_map(|r| r.success_rate_5m.map(|s| (r.node.as_str(), s)))
        .collect();
    let median_rate = median(rated.iter().map(|(_, s)| *s).collect());
    let open = rows
        .iter()
        .filter(|(_, b)| matches!(b.state, State::Open | State::ForcedOpen))
        .count();
    let service_down = 2 * open >= rows.len().max(1) || median_rate.is_some_and(|m| m < 0.5);
    let outliers: Vec<Outlier> = match median_rate {
        Some(m) if rated.len() >= OUTLIER_MIN_NODES && !service_down => rated
            .iter()
            .filter(|(_, s)| *s < m - OUTLIER_GAP)
            .map(|(node, s)| Outlier {
                node: (*node).to_owned(),
                success_rate: *s,
                median_success_rate: m,
            })
            .collect(),
        _ => Vec::new(),
    };
    let trouble = if service_down {
        Trouble::Service
    } else if open > 0 || !outliers.is_empty() {
        Trouble::Nodes
    } else {
        Trouble::None
    };
    FleetBreaker {
        service: service.to_owned(),
        trouble,
        states,
        metrics_5m: any_window.then(|| Recent::from(&window)),
        health,
        spread,
        outliers,
        nodes: node_rows,
    }
}

/// The other nodes that opened `service` by their own trip rules within `within_ms` of `now_ms`
/// (the database's clock: each node's trip time is moved by its clock skew), and how many live
/// nodes report it (`me` counted, reporting or not). What a quorum hint decides on.
pub fn quorum_of(
    now_ms: i64,
    me: &str,
    service: &str,
    views: &[NodeView],
    published: &[NodeHealthRow],
    within_ms: u64,
) -> (Vec<String>, u32) {
    let live: std::collections::BTreeSet<&str> = views
        .iter()
        .filter(|v| v.state == NodeState::Live)
        .map(|v| v.node.as_str())
        .collect();
    let mut openers = Vec::new();
    let mut reporting = 0u32;
    let mut me_counted = false;
    for p in published {
        if !live.contains(p.node.as_str()) || now_ms.saturating_sub(p.reported_at_ms) > STALE_AFTER_MS {
            continue;
        }
        let Ok(doc) = serde_json::from_str::<NodeDoc>(&p.doc) else {
            continue;
        };
        let Some(b) = doc.breakers.iter().find(|b| b.service == service) else {
            continue;
        };
        reporting += 1;
        if p.node == me {
            me_counted = true;
            continue;
        }
        let skew = p.node_clock_ms - p.reported_at_ms;
        if let Some(at) = b.tripped_at_ms {
            let at_db = (at as i64).saturating_sub(skew);
            if now_ms.saturating_sub(at_db) <= within_ms as i64 {
                openers.push(p.node.clone());
            }
        }
    }
    (openers, reporting + u32::from(!me_counted))
}
