//! What an operator command does to a breaker, decided once for both places that apply one:
//! the breaker's actor, and a process that applies it to the log itself because no live process
//! owns it (`remote`). Decided on a copy: the command takes effect only if the log takes all its
//! records.

use crate::breaker::{Breaker, Command, Event};
use crate::journal::{Body, Operator, OperatorCommand};

/// Who asked for a command besides its operator: this process, another process through the
/// log (the `command_request`'s position), or the fleet (the fleet command's seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    Here,
    Request(i64),
    Fleet(i64),
}

/// A command decided: the breaker after it, the audited record, and the events it caused.
pub(crate) struct Decided {
    pub after: Breaker,
    pub record: OperatorCommand,
    pub events: Vec<Event>,
}

impl Decided {
    /// `command` on (a copy of) `breaker` at `now_ms`, by `operator`, as `asked`.
    pub(crate) fn decide(
        breaker: &Breaker,
        now_ms: u64,
        command: Command,
        operator: Operator,
        asked: Asked,
    ) -> Decided {
        let mut after = breaker.clone();
        let mut events = Vec::new();
        after.command(now_ms, command, &mut events);
        let record = OperatorCommand {
            at_ms: now_ms,
            command,
            operator,
            from_state: breaker.state(),
            to_state: after.state(),
            request_position: match asked {
                Asked::Request(p) => Some(p),
                _ => None,
            },
            fleet_command: match asked {
                Asked::Fleet(s) => Some(s),
                _ => None,
            },
        };
        Decided { after, record, events }
    }

    /// What to append, all or none: the command first, then what it did (the audit trail reads
    /// in that order; a command whose transition the log dropped would replay as never applied).
    pub(crate) fn bodies(&self) -> Vec<Body> {
        std::iter::once(Body::record(&self.record))
            .chain(self.events.iter().cloned().map(Body::Breaker))
            .collect()
    }
}
