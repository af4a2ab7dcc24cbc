//! Episodes, from transitions: pure, time is an argument.
//!
//! A breaker opening (or being forced open) starts an episode, which *fires*. HALF_OPEN and
//! re-opens from HALF_OPEN stay in it. Closing (or an operator's reset or disable) starts the
//! quiet period; re-opening within it continues the same episode (a flap), and only once the
//! breaker has stayed closed for the whole quiet period is the episode *resolved*. So a breaker
//! flapping 50 times in a minute gives one firing and one resolved notice, not 100.

use crate::breaker::{Evidence, Reason, State, Transition};
use crate::journal::{AlertStatus, Operator};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What an alert message says: everything a sink's payload is built from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// Firing, resolved or test.
    pub status: AlertStatus,
    /// The breaker key (`stripe`, `stripe/customers.create`).
    pub breaker: String,
    /// [`fingerprint`] of the breaker and the episode's start.
    pub fingerprint: String,
    /// When the episode started (ms).
    pub starts_at_ms: u64,
    /// When it ended (the last close), for a resolved notice.
    #[serde(default)]
    pub ends_at_ms: Option<u64>,
    /// The state it opened to: `open` or `forced_open`.
    pub opened_to: State,
    /// Why it opened.
    pub reason: Reason,
    /// The numbers behind the why.
    #[serde(default)]
    pub evidence: Evidence,
    /// End of the first OPEN period, when known.
    #[serde(default)]
    pub open_until_ms: Option<u64>,
    /// Who forced it open, from where, why (operator commands).
    #[serde(default)]
    pub opened_by: Option<Operator>,
    /// Why it closed, for a resolved notice.
    #[serde(default)]
    pub closed_reason: Option<Reason>,
    /// Who reset or disabled it, when an operator did.
    #[serde(default)]
    pub closed_by: Option<Operator>,
    /// How often it re-opened within the episode (flaps merged into this one).
    #[serde(default)]
    pub reopened: u32,
    /// A fleet's episode (one for every node: `docs/alerts.md`, "A fleet"), when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetScope>,
}

/// What a fleet's episode says of its nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetScope {
    /// The nodes it was open on when it fired, by name.
    pub nodes_open: Vec<String>,
    /// The most nodes it was open on at once.
    pub nodes_max: u32,
    /// Live nodes reporting the breaker.
    pub nodes_live: u32,
    /// `service` (half the nodes or more), `nodes` (fewer) or `none`.
    pub trouble: String,
}

impl Notice {
    /// The notice of a fleet alert record (the leader decided the episode; nothing is folded).
    pub fn of_fleet(a: &crate::journal::FleetAlert) -> Notice {
        Notice {
            status: a.status,
            breaker: a.breaker.clone(),
            fingerprint: a.fingerprint.clone(),
            starts_at_ms: a.starts_at_ms,
            ends_at_ms: a.ends_at_ms,
            opened_to: a.opened_to,
            // Not shown for a fleet's notice (its text and labels come from `fleet`): each node's
            // own reasons are in its own log.
            reason: if a.opened_to == State::ForcedOpen {
                Reason::ForceOpen
            } else {
                Reason::ConsecutiveFailures
            },
            evidence: Evidence::default(),
            open_until_ms: None,
            opened_by: None,
            closed_reason: None,
            closed_by: None,
            reopened: 0,
            fleet: Some(FleetScope {
                nodes_open: a.nodes_open.clone(),
                nodes_max: a.nodes_max,
                nodes_live: a.nodes_live,
                trouble: a.trouble.clone(),
            }),
        }
    }
}

impl Notice {
    /// The service part of the breaker key.
    pub fn service(&self) -> &str {
        self.breaker.split_once('/').map_or(self.breaker.as_str(), |(s, _)| s)
    }

    /// The operation part of the breaker key, for an operation's own breaker.
    pub fn operation(&self) -> Option<&str> {
        self.breaker.split_once('/').map(|(_, op)| op)
    }

    /// A message that only checks the wiring (`breakerbox alerts test`).
    pub fn test(now_ms: u64) -> Notice {
        Notice {
            status: AlertStatus::Test,
            breaker: String::new(),
            fingerprint: fingerprint("breakerbox-test", now_ms),
            starts_at_ms: now_ms,
            ends_at_ms: None,
            opened_to: State::Open,
            reason: Reason::ForceOpen,
            evidence: Evidence::default(),
            open_until_ms: None,
            opened_by: None,
            closed_reason: None,
            closed_by: None,
            reopened: 0,
            fleet: None,
        }
    }
}

/// The alert's identity: the first 16 hex digits of SHA-256 over the breaker key and the
/// episode's start, like Alertmanager's 16-digit fingerprints. Stable across restarts, so a
/// notice enqueued twice is the same row, and receivers can deduplicate on it.
pub fn fingerprint(breaker: &str, episode_start_ms: u64) -> String {
    let digest = Sha256::digest(format!("{breaker}\n{episode_start_ms}").as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// An episode in progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Episode {
    /// The firing notice (its start, reason, evidence).
    firing: Notice,
    /// Closed since then, waiting out the quiet period.
    closed_at_ms: Option<u64>,
    closed_reason: Option<Reason>,
    closed_by: Option<Operator>,
    reopened: u32,
}

impl Episode {
    fn resolved(&self) -> Notice {
        Notice {
            status: AlertStatus::Resolved,
            ends_at_ms: self.closed_at_ms,
            closed_reason: self.closed_reason,
            closed_by: self.closed_by.clone(),
            reopened: self.reopened,
            ..self.firing.clone()
        }
    }
}

fn is_open(s: State) -> bool {
    matches!(s, State::Open | State::ForcedOpen)
}

/// The episode detector: the open episodes of every breaker, and the last operator command of
/// each (so a forced open says who forced it). Plain data, stored with the notifier's checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Episodes {
    open: BTreeMap<String, Episode>,
    commands: BTreeMap<String, (u64, Operator)>,
}

impl Episodes {
    /// An operator command on `breaker` at `at_ms` (it precedes the transition it causes).
    pub fn command(&mut self, breaker: &str, at_ms: u64, operator: Operator) {
        self.commands.insert(breaker.to_owned(), (at_ms, operator));
    }

    fn operator_for(&mut self, breaker: &str, t: &Transition) -> Option<Operator> {
        if !matches!(t.reason, Reason::ForceOpen | Reason::Reset | Reason::Disable) {
            return None;
        }
        // The command and its transition are stamped with the same instant; an older command
        // belongs to an earlier transition.
        match self.commands.remove(breaker) {
            Some((at, op)) if at.abs_diff(t.at_ms) <= 1_000 => Some(op),
            _ => None,
        }
    }

    /// Folds one transition of `breaker`; notices it causes are pushed to `out` (a firing for a
    /// new episode, and a resolved before it if the previous one's quiet period had elapsed).
    pub fn observe(&mut self, breaker: &str, t: &Transition, quiet_period_ms: u64, out: &mut Vec<Notice>) {
        let operator = self.operator_for(breaker, t);
        if is_open(t.to) {
            if let Some(ep) = self.open.get_mut(breaker) {
                match ep.closed_at_ms {
                    None => return, // HALF_OPEN → OPEN: the same episode goes on.
                    Some(closed) if t.at_ms.saturating_sub(closed) < quiet_period_ms => {
                        // A flap: closed and re-opened within the quiet period.
                        ep.closed_at_ms = None;
                        ep.closed_reason = None;
                        ep.closed_by = None;
                        ep.reopened += 1;
                        return;
                    }
                    Some(_) => {
                        let ep = self.open.remove(breaker).expect("just seen");
                        out.push(ep.resolved());
                    }
                }
            }
            let firing = Notice {
                status: AlertStatus::Firing,
                breaker: breaker.to_owned(),
                fingerprint: fingerprint(breaker, t.at_ms),
                starts_at_ms: t.at_ms,
                ends_at_ms: None,
                opened_to: t.to,
                reason: t.reason,
                evidence: t.evidence.clone(),
                open_until_ms: t.open_until_ms,
                opened_by: operator,
                closed_reason: None,
                closed_by: None,
                reopened: 0,
                fleet: None,
            };
            out.push(firing.clone());
            self.open.insert(
                breaker.to_owned(),
                Episode {
                    firing,
                    closed_at_ms: None,
                    closed_reason: None,
                    closed_by: None,
                    reopened: 0,
                },
            );
        } else if matches!(t.to, State::Closed | State::Disabled)
            && let Some(ep) = self.open.get_mut(breaker)
            && ep.closed_at_ms.is_none()
        {
            ep.closed_at_ms = Some(t.at_ms);
            ep.closed_reason = Some(t.reason);
            ep.closed_by = operator;
        }
        // HALF_OPEN: still in the episode; nothing to say.
    }

    /// Resolves every episode whose breaker has stayed closed for the quiet period by `now_ms`.
    pub fn tick(&mut self, now_ms: u64, quiet_period_ms: u64, out: &mut Vec<Notice>) {
        let done: Vec<String> = self
            .open
            .iter()
            .filter(|(_, ep)| {
                ep.closed_at_ms
                    .is_some_and(|c| now_ms.saturating_sub(c) >= quiet_period_ms)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            let ep = self.open.remove(&key).expect("listed above");
            out.push(ep.resolved());
        }
    }

    /// When the next episode resolves if nothing happens meanwhile.
    pub fn next_deadline(&self, quiet_period_ms: u64) -> Option<u64> {
        self.open
            .values()
            .filter_map(|ep| ep.closed_at_ms.map(|c| c.saturating_add(quiet_period_ms)))
            .min()
    }

    /// The firing notices of the episodes in progress (open, or closed within the quiet period).
    pub fn active(&self) -> impl Iterator<Item = &Notice> {
        self.open.values().map(|ep| &ep.firing)
    }
}
