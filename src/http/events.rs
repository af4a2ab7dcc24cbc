//! The audit trail over HTTP: `GET /api/events` (a page of the [replay] audit query) and
//! `GET /api/events/stream` (Server-Sent Events, `id:` = log position, resumable with
//! `Last-Event-ID`, so a reconnecting dashboard misses nothing).

use super::{ApiState, bad_request, error};
use crate::journal::Journal;
use crate::replay::{AuditEntry, AuditPage, AuditQuery, Damaged, Kind, audit, parse_time};
use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Query parameters shared by both routes.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct EventsParams {
    service: Option<String>,
    /// Comma-separated kinds (`transition,command`).
    kind: Option<String>,
    /// RFC 3339 or an age (`1h`).
    since: Option<String>,
    until: Option<String>,
    /// Only entries after this log position.
    after: Option<i64>,
    limit: Option<usize>,
    /// The newest `limit` entries of the window, oldest first (for a page's first view).
    newest: Option<bool>,
}

/// Most entries one page returns.
const MAX_PAGE: usize = 1_000;
/// Frames buffered per stream client before the reader waits for it: a slow client slows only
/// its own reader, never the log.
const STREAM_BUFFER: usize = 64;
/// A comment frame this often, so proxies keep the connection and clients can tell it is live.
const KEEPALIVE: Duration = Duration::from_secs(10);

fn kinds(text: Option<&str>, default: &[Kind]) -> Result<Vec<Kind>, String> {
    match text {
        None => Ok(default.to_vec()),
        Some(t) => t.split(',').map(str::parse).collect(),
    }
}

fn query(params: &EventsParams, now_ms: u64, default_kinds: &[Kind]) -> Result<AuditQuery, String> {
    let time = |t: &Option<String>, default: u64| match t {
        Some(t) => parse_time(t, now_ms).map_err(|e| e.to_string()),
        None => Ok(default),
    };
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(format!("limit {limit} is out of range: use 1 to {MAX_PAGE}"));
    }
    Ok(AuditQuery {
        stream: params.service.clone(),
        kinds: kinds(params.kind.as_deref(), default_kinds)?,
        since_ms: time(&params.since, 0)?,
        until_ms: time(&params.until, u64::MAX)?,
        after_position: params.after.unwrap_or(0),
        limit,
    })
}

/// `GET /api/events`: one page, in log order, and `next_after` for the next one (null when
/// this page was the last).
pub(super) async fn list(state: web::Data<ApiState>, params: web::Query<EventsParams>) -> HttpResponse {
    let now = state.registry.clock().now_ms();
    let mut q = match query(&params, now, &[]) {
        Ok(q) => q,
        Err(m) => return bad_request(&m),
    };
    let journal = state.registry.journal();
    let result = if params.newest == Some(true) {
        // Walk the window keeping only the last `limit`: bounded memory whatever its size.
        let keep = q.limit;
        let mut last: VecDeque<AuditEntry> = VecDeque::with_capacity(keep);
        let mut damaged: Vec<Damaged> = Vec::new();
        q.limit = MAX_PAGE;
        loop {
            match audit(journal, &q).await {
                Ok(page) => {
                    let done = page.entries.len() < MAX_PAGE;
                    q.after_position = page.scanned_to;
                    for e in page.entries {
                        if last.len() == keep {
                            last.pop_front();
                        }
                        last.push_back(e);
                    }
                    damaged.extend(page.damaged);
                    if done {
                        break Ok((Vec::from(last), damaged, false));
                    }
                }
                Err(e) => break Err(e),
            }
        }
    } else {
        audit(journal, &q).await.map(|page| {
            let full = page.entries.len() == q.limit;
            (page.entries, page.damaged, full)
        })
    };
    match result {
        Ok((events, damaged, more)) => {
            let next = if more { events.last().map(|e| e.position) } else { None };
            let mut body = json!({"events": events, "next_after": next});
            if !damaged.is_empty() {
                // Reported beside what could be read, never instead of it.
                body["damaged"] = json!(damaged);
            }
            HttpResponse::Ok().json(body)
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the audit trail failed");
            error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the event log cannot be read",
            )
        }
    }
}

/// A response body fed by a bounded channel; the stream ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl MessageBody for ChannelBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.get_mut().0.poll_recv(cx).map(|b| b.map(Ok))
    }
}

/// One SSE frame. Summaries and details are JSON, so a newline in them is escaped and a frame
/// is always exactly one `data:` line.
pub fn frame(entry: &AuditEntry) -> Bytes {
    let data = serde_json::to_string(entry).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        entry.position,
        entry.kind.as_str()
    ))
}

/// What the shared tail publishes: an entry and its frame, rendered once for every client.
#[derive(Debug)]
pub(super) struct Published {
    entry: AuditEntry,
    frame: Bytes,
}

type Slot = Arc<std::sync::Mutex<Option<broadcast::Sender<Arc<Published>>>>>;

/// One reader of the log for every stream client: it wakes on each commit (at most once per
/// [`TAIL_PERIOD`]), reads what is new once, and broadcasts it with its frame rendered once.
/// Clients read the log themselves only to catch up (after `Last-Event-ID`, or after falling
/// more than [`TAIL_BUFFER`] entries behind), so a hundred dashboards cost about what one does.
#[derive(Default)]
pub(super) struct Tail {
    slot: Slot,
}

/// Entries kept for a client that reads slowly; past it the client catches up from the log.
const TAIL_BUFFER: usize = 1_024;
/// Least time between two reads of the tail, so a burst of commits costs one read.
const TAIL_PERIOD: Duration = Duration::from_millis(50);

impl Tail {
    /// A receiver of everything the tail reads after `from` at the latest; starts the reader
    /// (from `from`, a position the caller read before subscribing) if none runs, so nothing
    /// committed between the caller's own reads and the tail's first one falls between them.
    fn subscribe(&self, journal: &Arc<Journal>, from: i64) -> broadcast::Receiver<Arc<Published>> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = slot.as_ref() {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(TAIL_BUFFER);
        *slot = Some(tx.clone());
        actix_web::rt::spawn(tail(journal.clone(), from, tx, self.slot.clone()));
        rx
    }
}

/// Every kind after `after`, a page at a time.
fn everything_after(after: i64) -> AuditQuery {
    AuditQuery {
        stream: None,
        kinds: Kind::ALL.to_vec(),
        since_ms: 0,
        until_ms: u64::MAX,
        after_position: after,
        limit: 500,
    }
}

async fn tail(journal: Arc<Journal>, from: i64, tx: broadcast::Sender<Arc<Published>>, slot: Slot) {
    let mut q = everything_after(from);
    loop {
        // Read before the page, so a commit landing during it still wakes the wait below.
        let before = journal.last_position().await.unwrap_or(q.after_position);
        match audit(&journal, &q).await {
            Ok(AuditPage {
                entries: page,
                damaged,
                scanned_to: scanned,
            }) => {
                for d in &damaged {
                    tracing::error!(position = d.position, error = %d.error, "event stream: {d}");
                }
                let full = page.len() == q.limit;
                for entry in page {
                    q.after_position = entry.position;
                    let frame = frame(&entry);
                    // Nobody listening right now is fine: a later client catches up from the log.
                    let _ = tx.send(Arc::new(Published { entry, frame }));
                }
                if full {
                    continue;
                }
                // Past rows that were skipped as undecodable, too.
                q.after_position = q.after_position.max(scanned);
            }
            Err(e) => tracing::warn!(error = %e, "event stream: reading the log failed; retrying"),
        }
        let _ = journal.wait_after(before.max(q.after_position), KEEPALIVE).await;
        tokio::time::sleep(TAIL_PERIOD).await;
        // No clients left: stop, under the lock a new client subscribes with, so none is left
        // holding a receiver of a stopped tail.
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        if tx.receiver_count() == 0 {
            *guard = None;
            return;
        }
    }
}

/// Does a client's query want this entry?
fn wanted(q: &AuditQuery, e: &AuditEntry) -> bool {
    q.kinds.contains(&e.kind)
        && q.stream.as_ref().is_none_or(|s| *s == e.stream)
        && (q.since_ms..q.until_ms).contains(&(e.at_ms.max(0) as u64))
}

/// `GET /api/events/stream`: entries after `Last-Event-ID` (or `?after=`), then live ones as
/// they are committed, by this process or another on the same file. Without either, it starts
/// at the end of the log. Call statistics (one per flush under traffic) are left out unless
/// asked for with `?kind=`.
pub(super) async fn stream(
    state: web::Data<ApiState>,
    req: HttpRequest,
    params: web::Query<EventsParams>,
) -> HttpResponse {
    let now = state.registry.clock().now_ms();
    let live_kinds: Vec<Kind> = Kind::ALL.into_iter().filter(|k| *k != Kind::Stats).collect();
    let mut q = match query(&params, now, &live_kinds) {
        Ok(q) => q,
        Err(m) => return bad_request(&m),
    };
    let resume = match req.headers().get("Last-Event-ID").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => match v.trim().parse::<i64>() {
            Ok(p) if p >= 0 => Some(p),
            _ => return bad_request("Last-Event-ID must be a log position (a whole number)"),
        },
        Some(Err(_)) => return bad_request("Last-Event-ID must be a log position (a whole number)"),
    };
    let journal = state.registry.journal().clone();
    let end = match journal.last_position().await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading the log position failed");
            return error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the event log cannot be read",
            );
        }
    };
    // Subscribe before reading anything, so an entry committed meanwhile is in one or the
    // other (or both: positions tell).
    let mut live = state.tail.subscribe(&journal, end);
    q.after_position = resume.or(params.after).unwrap_or(end);
    q.limit = 500;
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let mut stopping = state.stopping.subscribe();
    actix_web::rt::spawn(async move {
        // A first comment so the client sees the stream open before any event.
        if tx.send(Bytes::from_static(b": connected\n\n")).await.is_err() {
            return;
        }
        // A comment after KEEPALIVE without a frame sent: it shows the client the stream is
        // alive, and shows this task when the client has gone.
        let keepalive = tokio::time::sleep(KEEPALIVE);
        tokio::pin!(keepalive);
        let mut catch_up = true;
        loop {
            if catch_up {
                // From the log, up to where the live tail takes over.
                loop {
                    let (page, scanned) = match audit(&journal, &q).await {
                        Ok(p) => (p.entries, p.scanned_to),
                        Err(e) => {
                            tracing::warn!(error = %e, "event stream: reading the log failed; ending the stream");
                            return;
                        }
                    };
                    for e in &page {
                        if tx.send(frame(e)).await.is_err() {
                            return;
                        }
                        q.after_position = e.position;
                        keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                    }
                    if page.len() < q.limit {
                        q.after_position = q.after_position.max(scanned);
                        break;
                    }
                }
                catch_up = false;
            }
            tokio::select! {
                next = live.recv() => match next {
                    Ok(p) if p.entry.position > q.after_position => {
                        if wanted(&q, &p.entry) {
                            if tx.send(p.frame.clone()).await.is_err() {
                                return;
                            }
                            keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                        }
                        // Seen, wanted or not: a catch-up after lagging starts past it.
                        q.after_position = p.entry.position;
                    }
                    Ok(_) => {}
                    // Fell behind the tail's buffer: read the gap from the log.
                    Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // The server is stopping: say so, and end the stream (EventSource reconnects
                // on its own to whichever server answers next).
                _ = stopping.wait_for(|s| *s) => {
                    let _ = tx.send(Bytes::from_static(b"event: shutdown\ndata: {\"reason\":\"the server is stopping\"}\n\n")).await;
                    return;
                }
                _ = &mut keepalive => {
                    if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() {
                        return;
                    }
                    keepalive.as_mut().reset(tokio::time::Instant::now() + KEEPALIVE);
                }
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .body(ChannelBody(rx))
}
