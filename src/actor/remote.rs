//! Operator commands from a process that does not run the breakers (the CLI beside a server).
//!
//! Each breaker stream has one writer: the process holding the writer lease. Another process
//! never writes a breaker's stream. If a live process holds the lease, the command goes to it
//! through the log: a `command_request` event in a stream of the requester's own, which the
//! holder's registry picks up (within 200 ms), applies through the breaker's actor and answers
//! with an `operator_command` naming the request. With no live lease, the requester takes the
//! lease and applies the command itself, as the holder would. "No live lease" includes a holder
//! that dies while the requester waits: its lease lapses, or (on this host) its process is seen
//! gone at once — right after a crash, when operators act.

use super::command::Decided;
use crate::breaker::{Command, Policy, State};
use crate::clock::system_now_ms;
use crate::journal::{
    Body, COMMAND_REQUEST, Claim, CommandRequest, Holder, Journal, JournalError, Lease, OPERATOR_COMMAND, Operator,
    OperatorCommand, Standing, decode_record,
};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How a command went.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteOutcome {
    /// The running process that owns the log applied it.
    AppliedByOwner {
        /// The owner (lease holder), for people (`serve pid 4242 on this host`).
        holder: String,
        /// Its record of the command.
        record: OperatorCommand,
        /// The log position of that record.
        position: i64,
    },
    /// Nobody owned the log, or its owner was dead: this process applied it.
    AppliedHere {
        /// The state before.
        from: State,
        /// The state after.
        to: State,
        /// The log position of this process's `operator_command` record.
        position: i64,
        /// Why this process could: how the dead owner stood (`serve pid 4242 on this host is
        /// gone …`); `None` when nobody held the lease.
        took_over: Option<String>,
    },
}

/// Why a command could not be applied.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The log did not take the command (or the request for its owner) within the wait: it is
    /// failing. Nothing is confirmed: the records stay buffered while this process runs, so
    /// they may still be written as it exits; `breakerbox audit` shows whether they were.
    #[error(
        "{what} not written within {} ms: {condition}; not confirmed (it may still be written before this process exits: check `breakerbox audit`)",
        waited.as_millis()
    )]
    NotDurable {
        /// What was not written: `the command`, `the request to the log's owner`.
        what: &'static str,
        /// How the log stood.
        condition: crate::journal::LogCondition,
        /// How long it waited.
        waited: Duration,
    },
    /// The log failed: see the journal error.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The owner is alive (or cannot be checked and keeps renewing its lease) but did not answer
    /// in time (it may be stalled or stopping): try again, or check it.
    #[error("{account} and holds the log, but did not apply the command within {} ms", waited.as_millis())]
    NotAnswered {
        /// The owner, as written in its lease.
        holder: String,
        /// Who it is and how it stands, for people: `serve pid 4242 on this host is alive (it
        /// renewed the lease 0.4 s ago)`, `… on host db-2 (not this host) renewed the lease 1.2 s
        /// ago`.
        account: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The owner refused it, and said why (a fleet override stands on the breaker): nothing was
    /// applied.
    #[error("refused by the log's owner, nothing applied: {0}")]
    Refused(String),
    /// The owner runs no breaker of that name.
    #[error("{holder} owns the log but has no breaker {target:?}")]
    UnknownTarget {
        /// The owner.
        holder: String,
        /// The name asked for.
        target: String,
    },
}

/// A command from a process that may not own the log.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The breaker key.
    pub target: &'a str,
    /// What to do.
    pub command: Command,
    /// Who, from where, why.
    pub operator: Operator,
    /// This process's name (lease and audit): a [`Holder`] written out, e.g.
    /// `Holder::this_process("cli").to_string()`.
    pub me: &'a str,
    /// The breaker's configured policy (for a stream with no history yet).
    pub policy: Policy,
    /// The ttl this process takes the lease with, if it does; also how recent a renewal makes
    /// an owner alive when its lease recorded no ttl of its own (usually
    /// [`crate::journal::DEFAULT_LEASE_TTL`]).
    pub lease_ttl: Duration,
    /// How long to wait for the owner's answer.
    pub wait: Duration,
}

/// A request sent to an owner, waiting for its answer.
struct Asked {
    /// The owner asked: its lease's holder.
    holder: String,
    /// The request's log position.
    position: i64,
    /// Answers are looked for after this position.
    after: i64,
    deadline: tokio::time::Instant,
}

/// How many times a request follows the lease to a new owner (each gets the whole `wait`).
const MAX_OWNERS: usize = 3;

/// Applies a command from a process that may not own the log; see the module docs.
pub async fn command(journal: &Journal, request: Request<'_>) -> Result<RemoteOutcome, RemoteError> {
    let mut asked: Option<Asked> = None;
    let mut owners = 0;
    loop {
        let (lease, standing) = match journal.claim_lease(request.me, request.lease_ttl).await? {
            Claim::Taken { replaced } => {
                // An owner asked before it died may have answered just before.
                if let Some(a) = &mut asked
                    && let Some(answered) = answer(journal, a).await?
                {
                    return Ok(answered);
                }
                let took_over =
                    replaced.map(|(dead, standing)| dead.account(standing, system_now_ms(), request.lease_ttl));
                return apply_here(journal, &request, asked.map(|a| a.position), took_over).await;
            }
            Claim::Held { lease, standing } => (lease, standing),
        };
        match &mut asked {
            Some(a) if a.holder == lease.holder => {
                if let Some(answered) = answer(journal, a).await? {
                    return Ok(answered);
                }
                if tokio::time::Instant::now() >= a.deadline {
                    return Err(not_answered(&lease, standing, &request));
                }
                let _ = journal.wait_after(a.after, Duration::from_millis(200)).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Nobody asked yet, or the lease moved to a live process that started after the
            // request (a restarted server only follows requests from its start on): ask it.
            _ => {
                if owners == MAX_OWNERS {
                    return Err(not_answered(&lease, standing, &request));
                }
                owners += 1;
                asked = Some(ask(journal, &request, lease.holder).await?);
            }
        }
    }
}

fn not_answered(lease: &Lease, standing: Standing, request: &Request<'_>) -> RemoteError {
    RemoteError::NotAnswered {
        holder: lease.holder.clone(),
        account: lease.account(standing, system_now_ms(), request.lease_ttl),
        waited: request.wait,
    }
}

/// This process holds the lease: does what the owner's actor does, and waits until it is durable.
async fn apply_here(
    journal: &Journal,
    request: &Request<'_>,
    request_position: Option<i64>,
    took_over: Option<String>,
) -> Result<RemoteOutcome, RemoteError> {
    let now = system_now_ms();
    let breaker = journal.recover(request.target, request.policy.clone()).await?.breaker;
    // What the owner's actor would do, decided the same way; its own request, if it asked an
    // owner that then died, is named so the log shows it answered.
    let decided = Decided::decide(
        &breaker,
        now,
        request.command,
        request.operator.clone(),
        request_position.map_or(super::command::Asked::Here, super::command::Asked::Request),
    );
    let stream: Arc<str> = Arc::from(request.target);
    // All the records or none (refused when the log's buffer can't take them), and the answer
    // names the position of this command's own record.
    let tracked = journal.submit_all(&stream, decided.bodies())?;
    let position = within(journal, request.wait, "the command", journal.durable_position(tracked)).await?;
    Ok(RemoteOutcome::AppliedHere {
        from: decided.record.from_state,
        to: decided.record.to_state,
        position,
        took_over,
    })
}

/// Appends a `command_request` for the owner and waits until it is durable.
async fn ask(journal: &Journal, request: &Request<'_>, holder: String) -> Result<Asked, RemoteError> {
    // A stream of this requester's own: two requesters never race for one stream's seqs.
    let stream: Arc<str> = Arc::from(format!("_commands/{}", request.me).as_str());
    let payload = CommandRequest {
        at_ms: system_now_ms(),
        target: request.target.to_owned(),
        command: request.command,
        operator: request.operator.clone(),
    };
    let ticket = journal
        .submit(&stream, Body::record(&payload))
        .ok_or(JournalError::Closed)?;
    within(
        journal,
        request.wait,
        "the request to the log's owner",
        journal.durable(ticket),
    )
    .await?;
    let position = journal
        .latest(&stream, COMMAND_REQUEST)
        .await
        .map_err(JournalError::from)?
        .map_or(0, |e| e.position);
    Ok(Asked {
        holder,
        position,
        after: position,
        deadline: tokio::time::Instant::now() + request.wait,
    })
}

/// `durable`, or [`RemoteError::NotDurable`] once `wait` has passed without it.
async fn within<T>(
    journal: &Journal,
    wait: Duration,
    what: &'static str,
    durable: impl std::future::Future<Output = Result<T, JournalError>>,
) -> Result<T, RemoteError> {
    match tokio::time::timeout(wait, durable).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(RemoteError::NotDurable {
            what,
            condition: journal.condition(),
            waited: wait,
        }),
    }
}

/// The owner's answer to the request, if it is in the log yet.
async fn answer(journal: &Journal, asked: &mut Asked) -> Result<Option<RemoteOutcome>, RemoteError> {
    loop {
        let page = journal
            .read_range(
                &[OPERATOR_COMMAND, crate::journal::COMMAND_REFUSED],
                0,
                i64::MAX,
                asked.after,
                1_000,
            )
            .await
            .map_err(JournalError::from)?;
        let Some(last) = page.last() else { return Ok(None) };
        let last = last.position;
        for e in page {
            if e.event_type == crate::journal::COMMAND_REFUSED {
                let refused =
                    decode_record::<crate::journal::CommandRefused>(&e).map_err(|source| JournalError::Decode {
                        position: e.position,
                        source,
                    })?;
                if refused.request_position == asked.position {
                    return Err(RemoteError::Refused(refused.why));
                }
                continue;
            }
            let record = decode_record::<OperatorCommand>(&e).map_err(|source| JournalError::Decode {
                position: e.position,
                source,
            })?;
            if record.request_position == Some(asked.position) {
                let holder = Holder::describe_name(&asked.holder);
                return Ok(Some(RemoteOutcome::AppliedByOwner {
                    holder,
                    record,
                    position: e.position,
                }));
            }
        }
        asked.after = last;
    }
}
