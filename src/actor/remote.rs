//! Operator commands from a process that does not run the breakers (the CLI beside a server).
//!
//! Each breaker stream has one writer: the process holding the writer lease. Another process
//! never writes a breaker's stream. If a live process holds the lease, the command goes to it
//! through the log: a `command_request` event in a stream of the requester's own, which the
//! holder's registry picks up (within 200 ms), applies through the breaker's actor and answers
//! with an `operator_command` naming the request. With no live lease, the requester takes the
//! lease and applies the command itself, as the holder would.

use super::clock::system_now_ms;
use crate::breaker::{Command, Event, Policy, State};
use crate::journal::{
    Body, COMMAND_REQUEST, CommandRequest, Journal, JournalError, OPERATOR_COMMAND, Operator, OperatorCommand,
};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How a command went.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteOutcome {
    /// The running process that owns the log applied it.
    AppliedByOwner {
        /// The owner (lease holder).
        holder: String,
        /// Its record of the command.
        record: OperatorCommand,
    },
    /// Nobody owned the log: this process applied it.
    AppliedHere {
        /// The state before.
        from: State,
        /// The state after.
        to: State,
    },
}

/// Why a command could not be applied.
#[derive(Debug, Error)]
pub enum RemoteError {
    /// The log failed: see the journal error.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The owner did not answer in time (it may be stalled or stopping): try again, or check it.
    #[error("{holder} owns the log but did not apply the command within {} ms", waited.as_millis())]
    NotAnswered {
        /// The owner.
        holder: String,
        /// How long we waited.
        waited: Duration,
    },
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
    /// This process's name (lease and audit), e.g. `cli pid 42 as bob@laptop`.
    pub me: &'a str,
    /// The breaker's configured policy (for a stream with no history yet).
    pub policy: Policy,
    /// How recent a renewal makes an owner alive (the owners' `lease_ttl`, default 3 s).
    pub lease_ttl: Duration,
    /// How long to wait for the owner's answer.
    pub wait: Duration,
}

/// Applies a command from a process that may not own the log; see the module docs.
pub async fn command(journal: &Journal, request: Request<'_>) -> Result<RemoteOutcome, RemoteError> {
    let Request {
        target,
        command,
        operator,
        me,
        policy,
        lease_ttl,
        wait,
    } = request;
    let now = system_now_ms();
    let alive = |renewed: i64| now.saturating_sub(renewed.max(0) as u64) < lease_ttl.as_millis() as u64;
    if let Some(lease) = journal.lease().await?
        && lease.holder != me
        && alive(lease.renewed_at_ms)
    {
        return ask(journal, target, command, operator, me, lease.holder, wait).await;
    }
    let lease = journal.acquire_lease(me, lease_ttl).await?;
    if lease.holder != me {
        // Someone took it between our look and our try: ask them instead.
        return ask(journal, target, command, operator, me, lease.holder, wait).await;
    }
    // We own the log now: do what the owner's actor does.
    let mut breaker = journal.recover(target, policy).await?.breaker;
    let from = breaker.state();
    let mut events: Vec<Event> = Vec::new();
    breaker.command(now, command, &mut events);
    let to = breaker.state();
    let stream: Arc<str> = Arc::from(target);
    let record = OperatorCommand {
        at_ms: now,
        command,
        operator,
        from_state: from,
        to_state: to,
        request_position: None,
    };
    journal.submit(
        &stream,
        Body::Other {
            event_type: OPERATOR_COMMAND,
            event_version: 1,
            at_ms: now,
            payload: rmp_serde::to_vec_named(&record).expect("plain data encodes"),
        },
    );
    for e in events {
        journal.submit(&stream, Body::Breaker(e));
    }
    journal.flush().await?;
    Ok(RemoteOutcome::AppliedHere { from, to })
}

async fn ask(
    journal: &Journal,
    target: &str,
    command: Command,
    operator: Operator,
    me: &str,
    holder: String,
    wait: Duration,
) -> Result<RemoteOutcome, RemoteError> {
    // A stream of this requester's own: two requesters never race for one stream's seqs.
    let stream: Arc<str> = Arc::from(format!("_commands/{me}").as_str());
    let request = CommandRequest {
        at_ms: system_now_ms(),
        target: target.to_owned(),
        command,
        operator,
    };
    let ticket = journal
        .submit(
            &stream,
            Body::Other {
                event_type: COMMAND_REQUEST,
                event_version: 1,
                at_ms: request.at_ms,
                payload: rmp_serde::to_vec_named(&request).expect("plain data encodes"),
            },
        )
        .ok_or(JournalError::Closed)?;
    journal.durable(ticket).await?;
    let mine = journal
        .read_stream(&stream, 0, u32::MAX)
        .await
        .map_err(JournalError::from)?;
    let position = mine.last().map_or(0, |e| e.position);
    let deadline = tokio::time::Instant::now() + wait;
    let mut after = position;
    loop {
        let page = journal
            .read_range(&[OPERATOR_COMMAND], 0, i64::MAX, after, 1_000)
            .await
            .map_err(JournalError::from)?;
        for e in page {
            after = e.position;
            if let Ok(record) = rmp_serde::from_slice::<OperatorCommand>(&e.payload)
                && record.request_position == Some(position)
            {
                return Ok(RemoteOutcome::AppliedByOwner { holder, record });
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RemoteError::NotAnswered { holder, waited: wait });
        }
        let _ = journal.wait_after(after, Duration::from_millis(200)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
