//! A node and the fleet's log on PostgreSQL (`docs/fleet.md`).
//!
//! **How a node writes.** A node's breakers write to its own log, as every process does: the
//! embedded SQLite file, through the one writer thread, so a decision never waits on a network
//! and an acknowledgement names a local commit. Beside it, the [`Shipper`] copies every committed
//! event, in the node's own log order, to the fleet's shared log, with its node, seq, payload
//! and chain link unchanged and its position kept as `source_position`. While PostgreSQL is down
//! the events stay in the node's own log (not in memory, so no outage loses or drops one) and
//! land when it is back; the shipper resumes from the highest shipped position, and a shipment's
//! batch id, derived from the node and its positions, makes the retry of a commit whose answer
//! was lost recognise its rows. One process per node: the shipper holds the node's lease.
//!
//! **How commands read a node.** [`node_copy`] reads one node's history back from the fleet's
//! log, in its own order and at its own positions, into a scratch SQLite log, and the commands
//! answer from that with the same code as from the node's own file: the same answers.

use super::pg::{FleetAck, FleetAsk, FleetCommand, LeaseError, NodeHealthRow, NodeRecord, PgLog, Shippable, redacted};
use super::{CALL_BATCH, CALL_SUMMARY, Decoded, Holder, Journal, StoreError, decode, host_name};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Events per shipment at most.
const SHIPMENT: u32 = 5_000;
/// The first wait after a failed shipment; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a node does when the fleet's log cannot be reached at start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OfflineStart {
    /// Start, write to the node's own log, and ship once the fleet's log answers (default: a
    /// database outage never keeps a service's breakers from starting).
    #[default]
    Run,
    /// Refuse to start.
    Refuse,
}

impl std::str::FromStr for OfflineStart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "run" => Ok(OfflineStart::Run),
            "refuse" => Ok(OfflineStart::Refuse),
            other => Err(format!("offline_start {other:?}: expected \"run\" or \"refuse\"")),
        }
    }
}

/// Where and how a node ships to the fleet's log.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// The longest a connection attempt waits (default 5 s): start-up never waits longer for it.
    pub connect_timeout: Duration,
    /// When the database does not answer at start-up.
    pub offline_start: OfflineStart,
    /// The node lease's time to live (default 30 s; renewed every third of it).
    pub lease_ttl: Duration,
}

impl FleetOptions {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> FleetOptions {
        FleetOptions {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            offline_start: OfflineStart::Run,
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// Why a node did not start shipping, or a copy could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Another live process ships as this node.
    #[error("{0}")]
    Held(LeaseError),
    /// The database did not answer (with `offline_start = "refuse"`, or for a command that reads).
    #[error("the fleet log {url} does not answer: {source}")]
    Unreachable {
        /// The URL, password redacted.
        url: String,
        /// Why.
        source: StoreError,
    },
    /// The fleet's log holds more of this node's history than its own log has.
    #[error(
        "the fleet log holds node {node}'s events up to position {shipped} of its own log, but this log ends at \
         {local}: it is not the log that node wrote (start with the log it wrote, or with another --node)"
    )]
    Ahead {
        /// The node.
        node: String,
        /// The highest shipped position.
        shipped: i64,
        /// This log's last position.
        local: i64,
    },
    /// The fleet's log holds another event than this log at the position shipping resumes from.
    #[error(
        "the fleet log holds another event than this log at position {position} of node {node}'s log: it is not \
         the log that node wrote (start with the log it wrote, or with another --node)"
    )]
    NotThisLog {
        /// The node.
        node: String,
        /// The position.
        position: i64,
    },
    /// Which node to read is not clear, or the node has no events.
    #[error("{0}")]
    Node(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far a node's shipping is: what the health API and `/metrics` report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShipStatus {
    /// The node.
    pub node: String,
    /// The fleet's log, password redacted.
    pub url: String,
    /// Every event of the node's own log up to this position is in the fleet's log (None: not
    /// known yet, the database has not answered since start-up).
    pub shipped: Option<i64>,
    /// Why the last attempt failed, while it fails.
    pub failing: Option<String>,
    /// Since when it has been failing (Unix ms): the fleet's view of this node is stale since.
    pub failing_since_ms: Option<u64>,
}

/// Copies a node's own log to the fleet's, in the background (see the module's documentation).
pub struct Shipper {
    status: watch::Receiver<ShipStatus>,
    stop: watch::Sender<bool>,
    health: HealthSlot,
    task: tokio::task::JoinHandle<()>,
}

/// Where a node puts its health document for the shipper to publish (`docs/fleet.md`, "Fleet
/// health"): the latest replaces one not yet published.
#[derive(Clone)]
pub struct HealthSlot(Arc<watch::Sender<Option<(u64, u64, String)>>>);

impl HealthSlot {
    /// The node's health document (JSON), made at `node_clock_ms` by the node's clock.
    pub fn put(&self, node_clock_ms: u64, doc: String) {
        // Each put is a new document, whatever its instant (a clock a test holds still).
        self.0.send_modify(|slot| {
            let generation = slot.as_ref().map_or(0, |(g, _, _)| g + 1);
            *slot = Some((generation, node_clock_ms, doc));
        });
    }
}

impl Shipper {
    /// Connects (at most twice `connect_timeout` in all), takes the node's lease and starts shipping
    /// `journal`'s events as `node`. Refused when another live process holds the node, or when
    /// the fleet's log already holds more of the node than `journal` has. When the database does
    /// not answer, `offline_start` decides: run (and ship once it answers) or refuse.
    pub async fn start(
        journal: Arc<Journal>,
        node: &str,
        holder: &str,
        options: FleetOptions,
    ) -> Result<Shipper, FleetError> {
        let (status_tx, status) = watch::channel(ShipStatus {
            node: node.to_owned(),
            url: redacted(&options.url),
            ..ShipStatus::default()
        });
        let (health_tx, health) = watch::channel(None);
        let mut run = Run {
            health,
            published_health: None,
            journal,
            node: node.to_owned(),
            holder: holder.to_owned(),
            options,
            log: None,
            shipped: None,
            renewed: None,
            status: status_tx,
        };
        // Bounded as a whole (connecting, the schema, the lease, the resume point): start-up never
        // waits longer on the database than twice the connect timeout.
        let bound = run.options.connect_timeout.saturating_mul(2);
        let first = match tokio::time::timeout(bound, run.connect()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(FleetError::Unreachable {
                url: redacted(&run.options.url),
                source: StoreError::Io(format!("no answer within {bound:?}")),
            }),
        };
        if let Err(e) = first {
            match (&e, run.options.offline_start) {
                (FleetError::Unreachable { .. } | FleetError::Store(_), OfflineStart::Run) => {
                    tracing::warn!(error = %e, "starting without the fleet log; its events are shipped once it answers");
                    run.failed(&e);
                }
                _ => {
                    if let Some(log) = run.log.take() {
                        log.close().await;
                    }
                    return Err(e);
                }
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run.ship(stop_rx));
        Ok(Shipper {
            status,
            stop,
            health: HealthSlot(Arc::new(health_tx)),
            task,
        })
    }

    /// Where the node puts its health document; the shipper publishes it to the fleet's log.
    pub fn health(&self) -> HealthSlot {
        self.health.clone()
    }

    /// How far shipping is.
    pub fn status(&self) -> ShipStatus {
        self.status.borrow().clone()
    }

    /// The status as it changes.
    pub fn watch(&self) -> watch::Receiver<ShipStatus> {
        self.status.clone()
    }

    /// Waits until `f` holds of the status.
    pub async fn wait_for(&self, f: impl FnMut(&ShipStatus) -> bool) -> ShipStatus {
        let mut rx = self.status.clone();
        rx.wait_for(f)
            .await
            .map(|s| s.clone())
            .unwrap_or_else(|_| self.status())
    }

    /// Ships what the node's log holds, for at most `within`, then gives up the node's lease.
    /// What is not shipped by then stays in the node's log and is shipped at its next start.
    pub async fn stop(mut self, within: Duration) -> ShipStatus {
        let _ = self.stop.send(true);
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            self.task.abort();
            tracing::warn!("the fleet log took no more within {within:?}; the rest is shipped at the next start");
        }
        self.status()
    }
}

impl Drop for Shipper {
    /// A shipper dropped without [`Shipper::stop`] (its host panicked, say) still stops: it ships
    /// what it can without waiting, and gives up the node's lease.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Run {
    health: watch::Receiver<Option<(u64, u64, String)>>,
    /// The generation of the last health document published.
    published_health: Option<u64>,
    journal: Arc<Journal>,
    node: String,
    holder: String,
    options: FleetOptions,
    log: Option<PgLog>,
    shipped: Option<i64>,
    renewed: Option<Instant>,
    status: watch::Sender<ShipStatus>,
}

enum Step {
    Shipped,
    Idle,
}

impl Run {
    /// Connects if not connected, renews the lease when due, and learns where shipping resumes.
    async fn connect(&mut self) -> Result<&PgLog, FleetError> {
        if self.log.is_none() {
            let log = PgLog::connect_without_migrating(&self.options.url, self.options.connect_timeout, 2)
                .await
                .map_err(|source| FleetError::Unreachable {
                    url: redacted(&self.options.url),
                    source,
                })?;
            if let Err(e) = log.bring_up_to_date(&self.options.url).await {
                log.close().await;
                return Err(e.into());
            }
            self.log = Some(log);
        }
        let log = self.log.as_ref().expect("connected above");
        if self.renewed.is_none_or(|at| at.elapsed() >= self.options.lease_ttl / 3) {
            match log.acquire_node(&self.node, &self.holder, self.options.lease_ttl).await {
                Ok(_) => {}
                Err(LeaseError::Store(e)) => return Err(FleetError::Store(e)),
                // Its holder ran on this host and is gone (killed, say): taken at once, as the
                // node's own log's lease is, rather than after it lapses.
                Err(LeaseError::Held(lease, age)) if Holder::parse(&lease.holder).is_some_and(|h| h.is_gone()) => {
                    let taken = log
                        .take_over_node(&self.node, &self.holder, self.options.lease_ttl, &lease.holder)
                        .await?;
                    if taken.is_none() {
                        return Err(FleetError::Held(LeaseError::Held(lease, age)));
                    }
                    tracing::info!(node = %self.node, gone = %lease.holder, "took over the node from a process that is gone");
                }
                Err(held) => return Err(FleetError::Held(held)),
            }
            self.renewed = Some(Instant::now());
        }
        if self.shipped.is_none() {
            let shipped = log.shipped_position(&self.node).await?;
            let local = self.journal.last_position().await?;
            if shipped > local {
                return Err(FleetError::Ahead {
                    node: self.node.clone(),
                    shipped,
                    local,
                });
            }
            // The same length is not the same log: the event at the resume point must be the one
            // shipped from there (unless compaction removed it here since).
            if shipped > 0 {
                let ours = self.journal.read_shippable(shipped - 1, 1).await?;
                let theirs = log.read_node(&self.node, shipped - 1, 1).await?;
                if let (Some(a), Some(b)) = (ours.first(), theirs.first())
                    && a.event.position == shipped
                    && b.event.position == shipped
                    && a != b
                {
                    return Err(FleetError::NotThisLog {
                        node: self.node.clone(),
                        position: shipped,
                    });
                }
            }
            self.shipped = Some(shipped);
            self.status.send_modify(|s| s.shipped = Some(shipped));
        }
        Ok(log)
    }

    async fn step(&mut self) -> Result<Step, FleetError> {
        self.connect().await?;
        let after = self.shipped.unwrap_or(0);
        let events: Vec<Shippable> = self.journal.read_shippable(after, SHIPMENT).await?;
        if events.is_empty() {
            return Ok(Step::Idle);
        }
        let log = self.log.as_ref().expect("connected");
        let last = log.ship(&self.node, &events).await?;
        self.shipped = Some(last);
        // Number what passed below the horizon for the fleet-wide readers; a round another node
        // runs makes this one a no-op, and a failure here loses nothing (the next round takes it).
        if let Err(e) = log.sequence(SHIPMENT * 2).await {
            tracing::debug!(error = %e, "a sequencer round failed");
        }
        Ok(Step::Shipped)
    }

    /// Publishes the node's health document if a new one was put (the lease is held: `step`
    /// just connected). A failure loses nothing: the next document replaces it.
    async fn publish_health(&mut self) {
        // By what was published, not by `has_changed`: the wait below marks a new document seen.
        let Some((generation, _, doc)) = self.health.borrow_and_update().clone() else {
            return;
        };
        if self.published_health == Some(generation) {
            return;
        }
        if let Some(log) = &self.log {
            // The node's clock as it sends, against the database's as it writes: the skew.
            match log.publish_health(&self.node, now_ms(), &doc).await {
                Ok(()) => self.published_health = Some(generation),
                Err(e) => tracing::debug!(error = %e, "publishing the node's health document failed"),
            }
        }
    }

    fn failed(&self, e: &FleetError) {
        let why = e.to_string();
        self.status.send_modify(|s| {
            if s.failing.is_none() {
                tracing::warn!(error = %why, node = %self.node, "shipping to the fleet log failed; retrying");
                s.failing_since_ms = Some(super::writer::now_ms());
            }
            s.failing = Some(why);
        });
    }

    async fn ship(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = MIN_BACKOFF;
        loop {
            // A dropped `Shipper` (its sender gone) stops it too.
            let stopping = *stop.borrow() || stop.has_changed().is_err();
            match self.step().await {
                Ok(step) => {
                    backoff = MIN_BACKOFF;
                    let shipped = self.shipped;
                    self.status.send_modify(|s| {
                        if s.failing.take().is_some() {
                            tracing::info!(node = %s.node, "shipping to the fleet log again");
                        }
                        s.failing_since_ms = None;
                        s.shipped = shipped;
                    });
                    self.publish_health().await;
                    if matches!(step, Step::Idle) {
                        if stopping {
                            break;
                        }
                        let after = self.shipped.unwrap_or(0);
                        let open = self.health.has_changed().is_ok();
                        tokio::select! {
                            _ = self.journal.wait_after(after, Duration::from_secs(1)) => {}
                            _ = stop.changed() => {}
                            _ = self.health.changed(), if open => {}
                        }
                    }
                }
                Err(e) => {
                    self.failed(&e);
                    // The checkpoint in the database is what counts: a shipment whose answer was
                    // lost may have committed, and the next one (larger by then) must start
                    // after it rather than collide with it.
                    self.shipped = None;
                    if stopping {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if let Some(log) = self.log.take() {
            if self.renewed.is_some()
                && let Err(e) = log.release_node(&self.node, &self.holder).await
            {
                tracing::warn!(error = %e, "giving up the node's lease in the fleet log");
            }
            log.close().await;
        }
    }
}

/// The wall clock, Unix ms (what `failing_since_ms` is measured against).
pub fn now_ms() -> u64 {
    super::writer::now_ms()
}

/// How long after its last sign of life a node leaves fleet views (its history stays): 10 min.
pub const DEFAULT_GONE_AFTER: Duration = Duration::from_secs(600);

/// Where a node stands, by its lease and the database's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Its lease is held and renewed.
    Live,
    /// It gave its lease up (a clean stop).
    Stopped,
    /// Its lease lapsed unrenewed: it died, or lost the database.
    Lapsed,
    /// Stopped or lapsed longer ago than the gone-after time, or it never held a lease here.
    Gone,
}

/// A node in the fleet view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The node.
    pub node: String,
    /// Where it stands.
    pub state: NodeState,
    /// Since when (Unix ms, the database's clock): started, stopped or lapsed. None for a node
    /// that never held a lease here.
    pub since_ms: Option<i64>,
    /// Who holds or last held its lease.
    pub holder: Option<String>,
    /// The last position of its log that is shipped.
    pub shipped: Option<i64>,
}

/// The fleet's log, opened for a command that reads it (never migrating it).
async fn reader(url: &str, connect_timeout: Duration) -> Result<PgLog, FleetError> {
    PgLog::connect_to_read(url, connect_timeout)
        .await
        .map_err(|source| FleetError::Unreachable {
            url: redacted(url),
            source,
        })
}

/// The nodes of the fleet's log and where each stands, by name. A node that stopped or lapsed
/// more than `gone_after` ago is [`NodeState::Gone`]; its history stays in the log.
pub async fn fleet_nodes(
    url: &str,
    gone_after: Duration,
    connect_timeout: Duration,
) -> Result<Vec<NodeView>, FleetError> {
    let log = reader(url, connect_timeout).await?;
    let listed = log.node_list().await;
    log.close().await;
    let (now, records) = listed?;
    Ok(node_views(now, records, gone_after))
}

/// Where each node stands at `now` (the database's clock), from its record.
pub fn node_views(now: i64, records: Vec<NodeRecord>, gone_after: Duration) -> Vec<NodeView> {
    let gone_ms = gone_after.as_millis().min(i64::MAX as u128) as i64;
    records
        .into_iter()
        .map(|r| {
            let (state, since) = match (r.released_at_ms, r.renewed_at_ms, r.ttl_ms) {
                (Some(at), _, _) => (NodeState::Stopped, Some(at)),
                (None, Some(renewed), Some(ttl)) if renewed.saturating_add(ttl) >= now => {
                    (NodeState::Live, r.started_at_ms)
                }
                (None, Some(renewed), Some(ttl)) => (NodeState::Lapsed, Some(renewed.saturating_add(ttl))),
                _ => (NodeState::Gone, None),
            };
            let state = match (state, since) {
                (NodeState::Stopped | NodeState::Lapsed, Some(at)) if now.saturating_sub(at) > gone_ms => {
                    NodeState::Gone
                }
                (s, _) => s,
            };
            NodeView {
                node: r.node,
                state,
                since_ms: since,
                holder: r.holder,
                shipped: r.shipped,
            }
        })
        .collect()
}

/// What fleet health is made of: the database's clock, where each node stands, and each node's
/// last health document.
pub async fn fleet_health_rows(
    url: &str,
    gone_after: Duration,
    connect_timeout: Duration,
) -> Result<(i64, Vec<NodeView>, Vec<NodeHealthRow>), FleetError> {
    let log = reader(url, connect_timeout).await?;
    let read = health_rows(&log, gone_after).await;
    log.close().await;
    Ok(read?)
}

/// [`fleet_health_rows`] on an open log (a server keeps one).
pub async fn health_rows(
    log: &PgLog,
    gone_after: Duration,
) -> Result<(i64, Vec<NodeView>, Vec<NodeHealthRow>), StoreError> {
    let (now, records) = log.node_list().await?;
    let docs = log.node_health().await?;
    Ok((now, node_views(now, records, gone_after), docs))
}

/// Opens the fleet's log for reading (never migrating it; bounded by `connect_timeout`).
pub async fn open_to_read(url: &str, connect_timeout: Duration) -> Result<PgLog, FleetError> {
    reader(url, connect_timeout).await
}

/// A fleet command issued, and who acknowledged it within the wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issued {
    /// The command, as the fleet's stream holds it.
    pub command: FleetCommand,
    /// The nodes live when it was issued.
    pub live: Vec<String>,
    /// Every acknowledgement within the wait, by node (a node not live then may be among them).
    pub acks: Vec<FleetAck>,
    /// Live nodes that did not acknowledge it within the wait.
    pub silent: Vec<Silent>,
    /// How long the acknowledgements took, ms (the last one's, by the database's clock).
    pub took_ms: i64,
}

/// A live node that did not acknowledge a fleet command in time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Silent {
    /// The node.
    pub node: String,
    /// How long ago it was last seen (its last health report or lease renewal).
    pub last_seen_ms_ago: Option<i64>,
}

impl std::fmt::Display for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let acked = self
            .live
            .iter()
            .filter(|n| self.acks.iter().any(|a| &a.node == *n))
            .count();
        write!(
            f,
            "fleet command {} ({} {}): acknowledged by {acked}/{} live nodes",
            self.command.seq,
            serde_json::to_value(self.command.asked.command)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            self.command.asked.service,
            self.live.len()
        )?;
        if self.silent.is_empty() {
            write!(f, " in {} ms", self.took_ms)?;
        }
        let not_applied: Vec<String> = self
            .acks
            .iter()
            .filter(|a| a.outcome != "applied")
            .map(|a| format!("{} {}", a.node, a.outcome))
            .collect();
        if !not_applied.is_empty() {
            write!(f, "; {}", not_applied.join(", "))?;
        }
        for s in &self.silent {
            match s.last_seen_ms_ago {
                Some(ms) => write!(
                    f,
                    "; node {} silent (last seen {:.1} s ago)",
                    s.node,
                    ms as f64 / 1000.0
                )?,
                None => write!(f, "; node {} silent", s.node)?,
            }
        }
        Ok(())
    }
}

/// Issues a fleet-wide operator command: appended once to the fleet's stream, then every live
/// node applies it through its own breaker and acknowledges it. Waits at most `wait` for every
/// node live when it was issued.
pub async fn issue_command(
    url: &str,
    asked: &FleetAsk,
    ttl: Option<Duration>,
    wait: Duration,
    connect_timeout: Duration,
) -> Result<Issued, FleetError> {
    let log = reader(url, connect_timeout).await?;
    let r = issue_on(&log, asked, ttl, wait).await;
    log.close().await;
    Ok(r?)
}

/// [`issue_command`] on an open log (a server keeps one).
pub async fn issue_on(
    log: &PgLog,
    asked: &FleetAsk,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<Issued, StoreError> {
    let command = log.issue(asked, ttl).await?;
    let (now, records) = log.node_list().await?;
    let live: Vec<String> = node_views(now, records, DEFAULT_GONE_AFTER)
        .into_iter()
        .filter(|v| v.state == NodeState::Live)
        .map(|v| v.node)
        .collect();
    let deadline = Instant::now() + wait;
    let acks = loop {
        let acks = log.acks_of(command.seq).await?;
        if live.iter().all(|n| acks.iter().any(|a| &a.node == n)) || Instant::now() >= deadline {
            break acks;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut silent = Vec::new();
    let missing: Vec<&String> = live.iter().filter(|n| !acks.iter().any(|a| &a.node == *n)).collect();
    if !missing.is_empty() {
        let (now, records) = log.node_list().await?;
        let health = log.node_health().await?;
        for n in missing {
            let renewed = records.iter().find(|r| &r.node == n).and_then(|r| r.renewed_at_ms);
            let reported = health.iter().find(|h| &h.node == n).map(|h| h.reported_at_ms);
            silent.push(Silent {
                node: n.clone(),
                last_seen_ms_ago: renewed.max(reported).map(|at| now.saturating_sub(at)),
            });
        }
    }
    let took_ms = acks
        .iter()
        .map(|a| a.applied_at_ms - command.issued_at_ms)
        .max()
        .unwrap_or(0);
    Ok(Issued {
        command,
        live,
        acks,
        silent,
        took_ms,
    })
}

/// Which node a command reads: `asked` when given (it must have events), else this host's name
/// when it has events, else the only node; otherwise an error naming the nodes.
pub fn choose_node(nodes: &[String], asked: Option<&str>) -> Result<String, FleetError> {
    let listed = || nodes.join(", ");
    if let Some(node) = asked {
        return if nodes.iter().any(|n| n == node) {
            Ok(node.to_owned())
        } else if nodes.is_empty() {
            Err(FleetError::Node(format!(
                "the fleet log has no events yet (no node {node:?})"
            )))
        } else {
            Err(FleetError::Node(format!(
                "the fleet log has no events of node {node:?} (its nodes: {})",
                listed()
            )))
        };
    }
    let host = host_name();
    match nodes {
        [] => Err(FleetError::Node("the fleet log has no events yet".into())),
        [only] => Ok(only.clone()),
        _ if nodes.contains(&host) => Ok(host),
        _ => Err(FleetError::Node(format!(
            "the fleet log holds several nodes ({}): choose one with --node NAME",
            listed()
        ))),
    }
}

/// The nodes that shipped to the fleet's log, by name (their history, gone or not).
pub async fn shipped_nodes(url: &str, connect_timeout: Duration) -> Result<Vec<String>, FleetError> {
    let log = reader(url, connect_timeout).await?;
    let nodes = log.nodes().await;
    log.close().await;
    Ok(nodes?)
}

/// A copy of one node's history, read from the fleet's log into a scratch SQLite log under the
/// system's temporary directory (removed when the journal is closed), at the node's own
/// positions and without the call batches its retention replaced since: the commands answer
/// from it with the same code, and so the same answers, as from the node's own file. Returns the
/// copy and the node ([`choose_node`]).
pub async fn node_copy(
    url: &str,
    asked: Option<&str>,
    connect_timeout: Duration,
) -> Result<(Journal, String), FleetError> {
    let log = reader(url, connect_timeout).await?;
    let copied = async {
        let node = choose_node(&log.nodes().await?, asked)?;
        // The call batches the node's own retention replaced by summaries since it shipped them:
        // its log no longer has them, so neither does the copy (else a compacted hour counts
        // twice). A summary that does not decode is an error, not a guess.
        let mut replaced: std::collections::HashSet<(String, u64)> = std::collections::HashSet::new();
        for e in log.read_node_of_type(&node, CALL_SUMMARY).await? {
            match decode(&e) {
                Ok(Decoded::Summary(summary)) => {
                    replaced.extend(summary.replaced.iter().map(|r| (e.stream.clone(), r.seq)));
                }
                Ok(_) => {}
                Err(why) => {
                    return Err(FleetError::Store(StoreError::Io(format!(
                        "node {node}'s call summary at position {} does not decode: {why}",
                        e.position
                    ))));
                }
            }
        }
        // On disk, not in memory: a node's history may be larger than /dev/shm (64 MB in a
        // container by default).
        let journal = Journal::scratch_in(&std::env::temp_dir()).await?;
        let filled = async {
            let mut after = 0;
            loop {
                let mut events = log.read_node(&node, after, 20_000).await?;
                let Some(last) = events.last() else { break };
                after = last.event.position;
                events.retain(|s| {
                    s.event.event_type != CALL_BATCH
                        || !replaced.contains(&(s.event.stream.clone(), s.event.seq as u64))
                });
                journal.import(events).await?;
            }
            Ok::<(), FleetError>(())
        }
        .await;
        match filled {
            Ok(()) => Ok((journal, node)),
            Err(e) => {
                journal.close().await;
                Err(e)
            }
        }
    }
    .await;
    log.close().await;
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_reads_the_node_it_was_told_else_the_only_one() {
        let nodes = vec!["app-1".to_owned(), "app-2".to_owned()];
        assert_eq!(choose_node(&nodes, Some("app-2")).unwrap(), "app-2");
        let e = choose_node(&nodes, Some("app-3")).unwrap_err().to_string();
        assert!(e.contains("\"app-3\"") && e.contains("app-1, app-2"), "{e}");
        let e = choose_node(&nodes, None).unwrap_err().to_string();
        assert!(e.contains("--node") && e.contains("app-1, app-2"), "{e}");
        assert_eq!(choose_node(&nodes[..1], None).unwrap(), "app-1");
        assert!(
            choose_node(&[], None)
                .unwrap_err()
                .to_string()
                .contains("no events yet")
        );
        assert_eq!("refuse".parse::<OfflineStart>(), Ok(OfflineStart::Refuse));
        assert!("later".parse::<OfflineStart>().unwrap_err().contains("\"later\""));
    }
}
