//! The `simulate` trace format: JSON lines, one call attempt or operator command per line.

use crate::breaker::{Breaker, Command, Outcome, QuorumEvidence};
use crate::knobs::{Knobs, Source};
use serde::Deserialize;
use std::fmt;

/// One line of a trace.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A call attempted at `at_ms`; if admitted it completes at `at_ms + latency_ms`.
    Call {
        /// When the call is attempted.
        at_ms: u64,
        /// How it ends if it runs.
        outcome: Outcome,
        /// How long it runs.
        latency_ms: u64,
    },
    /// An operator command at `at_ms`.
    Command {
        /// When.
        at_ms: u64,
        /// Which.
        command: Command,
    },
    /// A quorum hint at `at_ms` (`docs/fleet.md`): other nodes opened the breaker; a CLOSED one
    /// opens with reason `fleet_quorum`.
    Hint {
        /// When.
        at_ms: u64,
        /// Which nodes, of how many.
        quorum: Box<QuorumEvidence>,
    },
    /// A policy in force from `at_ms` (config-file keys over the embedded defaults); explicit
    /// policy flags still override it.
    Policy {
        /// When.
        at_ms: u64,
        /// The keys given.
        knobs: Box<Knobs>,
    },
    /// The breaker's whole state at `at_ms` (an exported window that starts mid-history).
    State {
        /// When.
        at_ms: u64,
        /// The state.
        breaker: Box<Breaker>,
    },
}

impl Input {
    /// When the line happens.
    pub fn at_ms(&self) -> u64 {
        match *self {
            Input::Call { at_ms, .. }
            | Input::Command { at_ms, .. }
            | Input::Hint { at_ms, .. }
            | Input::Policy { at_ms, .. }
            | Input::State { at_ms, .. } => at_ms,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    at_ms: u64,
    outcome: Option<Outcome>,
    latency_ms: Option<u64>,
    command: Option<Command>,
    policy: Option<serde_json::Map<String, serde_json::Value>>,
    state: Option<Box<Breaker>>,
    hint: Option<QuorumEvidence>,
}

/// A line of a trace that cannot be used. Bad input: show it and stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

/// Reads one line (`number` is 1-based, for errors). `previous_at_ms` is the time of the line
/// before, as lines must be in non-decreasing time. Blank lines give `None`.
pub fn parse_line(number: usize, text: &str, previous_at_ms: u64) -> Result<Option<Input>, TraceError> {
    let err = |message: String| TraceError { line: number, message };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let raw: RawLine = serde_json::from_str(text).map_err(|e| err(format!("not a trace line: {e}")))?;
    let kinds = [
        raw.outcome.is_some(),
        raw.command.is_some(),
        raw.policy.is_some(),
        raw.state.is_some(),
        raw.hint.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err(err(
            "a line is one of: a call (outcome), a command, a hint, a policy or a state".to_owned(),
        ));
    }
    if raw.latency_ms.is_some() && raw.outcome.is_none() {
        return Err(err("latency_ms belongs to a call".to_owned()));
    }
    if let Some(policy) = &raw.policy {
        let source = Source::File {
            path: "trace".into(),
            line: number,
        };
        let knobs = Knobs::from_json(policy, &source).map_err(|e| err(format!("policy: {e}")))?;
        knobs
            .policy()
            .map_err(|e| err(format!("policy: {} {}", e.key, e.message)))?;
        return check_order(
            number,
            previous_at_ms,
            Input::Policy {
                at_ms: raw.at_ms,
                knobs: Box::new(knobs),
            },
        );
    }
    if let Some(quorum) = raw.hint {
        if raw.latency_ms.is_some() {
            return Err(err("latency_ms belongs to a call, not to a hint".to_owned()));
        }
        return check_order(
            number,
            previous_at_ms,
            Input::Hint {
                at_ms: raw.at_ms,
                quorum: Box::new(quorum),
            },
        );
    }
    if let Some(breaker) = raw.state {
        breaker
            .policy()
            .validate()
            .map_err(|e| err(format!("state: invalid policy: {e}")))?;
        return check_order(
            number,
            previous_at_ms,
            Input::State {
                at_ms: raw.at_ms,
                breaker,
            },
        );
    }
    let input = match (raw.outcome, raw.command) {
        (Some(outcome), None) => Input::Call {
            at_ms: raw.at_ms,
            outcome,
            latency_ms: raw.latency_ms.unwrap_or(0),
        },
        (None, Some(command)) if raw.latency_ms.is_none() => Input::Command {
            at_ms: raw.at_ms,
            command,
        },
        (None, Some(_)) => return Err(err("latency_ms belongs to a call, not to a command".to_owned())),
        (Some(_), Some(_)) => return Err(err("a line is a call (outcome) or a command, not both".to_owned())),
        (None, None) => {
            return Err(err(
                "expected \"outcome\" (a call), \"command\", \"hint\", \"policy\" or \"state\"".to_owned(),
            ));
        }
    };
    check_order(number, previous_at_ms, input)
}

fn check_order(number: usize, previous_at_ms: u64, input: Input) -> Result<Option<Input>, TraceError> {
    if input.at_ms() < previous_at_ms {
        return Err(TraceError {
            line: number,
            message: format!(
                "at_ms {} is earlier than the line before ({previous_at_ms}): lines must be in time order",
                input.at_ms()
            ),
        });
    }
    Ok(Some(input))
}

/// Reads a whole trace; the first bad line is an error and nothing is returned.
pub fn parse(text: &str) -> Result<Vec<Input>, TraceError> {
    let mut inputs = Vec::new();
    let mut previous = 0;
    for (i, line) in text.lines().enumerate() {
        if let Some(input) = parse_line(i + 1, line, previous)? {
            previous = input.at_ms();
            inputs.push(input);
        }
    }
    Ok(inputs)
}
