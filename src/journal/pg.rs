//! The fleet's shared log on PostgreSQL (`docs/fleet.md`). Nodes ship their own logs into one
//! `events` table (`PgLog::ship`; the shipper is `journal::fleet`): each node is the only writer
//! of what it ships, kept so by a per-node lease in `nodes`, with a unique index on (the shipping
//! node, stream, seq) as the backstop. Readers read a node back in its own order
//! (`PgLog::read_node`), or tail the whole log in `(epoch, tx, id)` order below the oldest running
//! transaction, so a row that commits late is never skipped ("Reading in log order").
//!
//! What is here: connecting and migrating (`migrations/postgres/`; migrating only when something
//! is pending, or as its own step), shipping and appending a batch in one transaction with a batch
//! id (so the retry of a commit whose answer was lost recognises its own rows and never duplicates
//! them), the resume point (`shipped`), reading a node or a stream, the horizon tail, the
//! sequencer's dense positions, node leases, and retention's narrow deletes.

pub use super::record::Shippable;
use super::record::{Row, StoredEvent};
use super::store::StoreError;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The sequencer's advisory lock ("brkbseq").
const SEQUENCER_LOCK: i64 = 0x6272_6b62_7365_7100;

/// Rows per INSERT statement (11 parameters each, under PostgreSQL's 65,535).
const ROWS_PER_INSERT: usize = 1_000;

/// Where a tailing read stands: after the event with this `(epoch, writing transaction, id)`.
/// Ordered as the log is read; `Default` is before the first event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgCursor {
    /// Bumped after a logical restore (transaction ids start again).
    pub epoch: i32,
    /// The writing transaction's id (`xid8`).
    pub tx: u64,
    /// The row's id.
    pub id: i64,
}

/// One row of an INSERT.
struct Insert<'a> {
    node: &'a str,
    stream: &'a str,
    seq: i64,
    event_type: &'a str,
    event_version: i32,
    recorded_at: i64,
    payload: &'a [u8],
    hash: Option<&'a [u8]>,
    source_node: Option<&'a str>,
    source_position: Option<i64>,
}

/// The batch id of a shipment: the same for the same node and positions, whichever process
/// retries it.
fn ship_batch_id(node: &str, first: i64, last: i64) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"breakerbox shipment\0");
    h.update((node.len() as u64).to_le_bytes());
    h.update(node.as_bytes());
    h.update(first.to_le_bytes());
    h.update(last.to_le_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// A writer lease of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLease {
    /// The node.
    pub node: String,
    /// Who holds it (`ROLE pid N on HOST …`).
    pub holder: String,
    /// When it was last renewed (the database's clock, Unix ms).
    pub renewed_at_ms: i64,
    /// How long it holds without renewal.
    pub ttl_ms: i64,
}

/// A row of [`PgLog::node_list`]'s query: the node, its lease's columns, its shipped position and
/// the database's clock.
type NodeTuple = (
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    i64,
);

/// A node as the log knows it: its lease (none: it never held one) and how far it shipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node.
    pub node: String,
    /// Who holds or last held its lease.
    pub holder: Option<String>,
    /// When the lease was last renewed (the database's clock, Unix ms).
    pub renewed_at_ms: Option<i64>,
    /// The lease's time to live.
    pub ttl_ms: Option<i64>,
    /// When its holder started.
    pub started_at_ms: Option<i64>,
    /// When its holder gave the lease up (a clean stop).
    pub released_at_ms: Option<i64>,
    /// The last position of its log that is shipped.
    pub shipped: Option<i64>,
}

/// A `fleet_commands` row as read, with the database's clock.
type CommandTuple = (i64, i64, String, String, String, String, String, Option<i64>, i64);
/// A `fleet_acks` row as read.
type AckTuple = (
    i64,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// The advisory lock the fleet's alert leader holds.
pub const ALERT_LEADER: i64 = 0x6272_6b62_616c_7274; // "brkbalrt"

/// A session holding a fleet role ([`PgLog::try_lead`]).
pub struct Leadership {
    conn: sqlx::PgConnection,
}

impl Leadership {
    /// Whether the session (and with it the role) is still held.
    pub async fn alive(&mut self) -> bool {
        sqlx::query("SELECT 1").execute(&mut self.conn).await.is_ok()
    }

    /// Gives the role up.
    pub async fn close(self) {
        use sqlx::Connection;
        let _ = self.conn.close().await;
    }
}

/// Wake-ups for fleet commands: a session listening on [`FLEET_CHANNEL`].
pub struct CommandWakeups {
    listener: sqlx::postgres::PgListener,
}

impl CommandWakeups {
    /// Listens (on a session of its own) for fleet commands announced at their commit.
    pub async fn listen(url: &str) -> Result<CommandWakeups, StoreError> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await.map_err(classify)?;
        listener.listen(FLEET_CHANNEL).await.map_err(classify)?;
        Ok(CommandWakeups { listener })
    }

    /// The next announcement (an error when the session was lost).
    pub async fn recv(&mut self) -> Result<(), StoreError> {
        self.listener.recv().await.map(|_| ()).map_err(classify)
    }
}

/// A fleet alert episode in progress ([`PgLog::open_episodes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetEpisode {
    /// The breaker.
    pub service: String,
    /// Its fingerprint (the breaker and its start).
    pub fingerprint: String,
    /// When it started (the database's clock).
    pub started_at_ms: i64,
    /// When a node was last seen open.
    pub last_open_at_ms: i64,
    /// The most nodes open at once.
    pub nodes_max: u32,
}

/// The longest ttl a fleet override takes: 365 days.
pub const MAX_FLEET_TTL: Duration = Duration::from_secs(365 * 86_400);

/// The channel a fleet command is announced on (`NOTIFY`, at its commit).
pub const FLEET_CHANNEL: &str = "breakerbox_fleet";

/// A fleet-wide operator command as asked.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FleetAsk {
    /// The breaker's key.
    pub service: String,
    /// What.
    pub command: crate::breaker::Command,
    /// Who (`user@host`, `token:NAME`).
    pub who: String,
    /// From where: `cli`, `http`, `dashboard`.
    pub origin: String,
    /// Why.
    pub why: String,
}

/// A fleet command in the fleet's stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FleetCommand {
    /// Its place in the fleet's stream: 1, 2, 3, …
    pub seq: i64,
    /// When it was issued (the database's clock, Unix ms).
    pub issued_at_ms: i64,
    /// What was asked.
    #[serde(flatten)]
    pub asked: FleetAsk,
    /// When an override lapses (`--ttl`; the database's clock).
    pub expires_at_ms: Option<i64>,
}

/// A node's acknowledgement of a fleet command.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FleetAck {
    /// The command.
    pub seq: i64,
    /// The node.
    pub node: String,
    /// When it was acknowledged (the database's clock; ignored when writing one).
    pub applied_at_ms: i64,
    /// `applied`, `lapsed`, `superseded` (a later command replaced it before the node read it),
    /// `unknown_breaker` (the node has no such breaker) or `refused`.
    pub outcome: String,
    /// The state it found.
    pub from_state: Option<String>,
    /// The state it left.
    pub to_state: Option<String>,
    /// The node's own log position of its `operator_command` record.
    pub position: Option<i64>,
    /// More, for people.
    pub detail: Option<String>,
}

fn command_name(c: crate::breaker::Command) -> &'static str {
    match c {
        crate::breaker::Command::Reset => "reset",
        crate::breaker::Command::ForceOpen => "force_open",
        crate::breaker::Command::Disable => "disable",
    }
}

fn parse_command(s: &str) -> Option<crate::breaker::Command> {
    match s {
        "reset" => Some(crate::breaker::Command::Reset),
        "force_open" => Some(crate::breaker::Command::ForceOpen),
        "disable" => Some(crate::breaker::Command::Disable),
        _ => None,
    }
}

/// A node's last health document ([`PgLog::node_health`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHealthRow {
    /// The node.
    pub node: String,
    /// When it was written (the database's clock, Unix ms).
    pub reported_at_ms: i64,
    /// The node's clock when it made it (Unix ms).
    pub node_clock_ms: i64,
    /// The document (JSON).
    pub doc: String,
}

/// Why a node's lease was not given.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another live process holds it.
    #[error("node {} is held by {} (renewed {} ms ago, lease {} ms): start this process with another --node, or stop that one", .0.node, .0.holder, .1, .0.ttl_ms)]
    Held(NodeLease, i64),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Maps a PostgreSQL error by its SQLSTATE.
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            match code.as_str() {
                "53100" => StoreError::Full,                                         // disk_full
                "40001" | "40P01" | "55P03" | "53300" | "57P03" => StoreError::Busy, // serialization, deadlock, lock, too many connections, cannot connect now
                "25006" | "42501" => StoreError::ReadOnly(db.message().to_owned()), // read-only transaction, insufficient privilege
                _ => StoreError::Io(format!("{} (SQLSTATE {code})", db.message())),
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Io("the PostgreSQL server did not answer in time".into()),
        _ => StoreError::Io(crate::tls::error_chain(&e)),
    }
}

pub use crate::config::redacted;

/// The shared log on one PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgLog {
    pool: PgPool,
}

impl PgLog {
    /// Connects (at most `connect_timeout` for the first connection) and brings the schema up to
    /// date. `max_connections` bounds this process's connections (mind the server's own
    /// `max_connections`, 100 by default, across every node).
    pub async fn connect(url: &str, connect_timeout: Duration, max_connections: u32) -> Result<PgLog, StoreError> {
        let log = PgLog::connect_without_migrating(url, connect_timeout, max_connections).await?;
        if let Err(e) = log.bring_up_to_date(url).await {
            log.close().await;
            return Err(e);
        }
        Ok(log)
    }

    /// Applies what is pending of this version's migrations, if anything is. Migrating needs
    /// CREATE on the schema even with nothing left to apply, so only then: a role that owns
    /// nothing runs once the owner migrated (`url` is for the message).
    pub async fn bring_up_to_date(&self, url: &str) -> Result<(), StoreError> {
        if self.pending().await? > 0 {
            self.migrate().await.map_err(|e| {
                StoreError::Io(format!(
                    "migrating {}: {e} (a role that may not create tables needs the schema migrated by its owner \
                     first: breakerbox migrate --db URL, docs/fleet.md)",
                    redacted(url)
                ))
            })?;
        }
        Ok(())
    }

    /// Connects (at most `connect_timeout` for the first connection) without touching the
    /// schema: for `breakerbox migrate`, which applies [`PgLog::pending`] itself.
    pub async fn connect_without_migrating(
        url: &str,
        connect_timeout: Duration,
        max_connections: u32,
    ) -> Result<PgLog, StoreError> {
        // Not echoed when it does not parse: it may be a key=value string with a password in it.
        let options: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::Io(format!(
                "the database URL is not a PostgreSQL URL (postgres://user@host:port/database): {e}"
            ))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(connect_timeout)
            .connect_with(options)
            .await
            .map_err(|e| match classify(e) {
                StoreError::Io(m) => StoreError::Io(format!("connecting to {}: {m}", redacted(url))),
                other => other,
            })?;
        Ok(PgLog { pool })
    }

    /// Connects for reading only: the schema is never changed, and one that is behind this
    /// version is an error that says to migrate (reading commands must not need an owner's rights).
    pub async fn connect_to_read(url: &str, connect_timeout: Duration) -> Result<PgLog, StoreError> {
        let log = PgLog::connect_without_migrating(url, connect_timeout, 1).await?;
        match log.pending().await {
            Ok(0) => Ok(log),
            Ok(n) => {
                log.close().await;
                Err(StoreError::Io(format!(
                    "{}: the schema lacks {n} of this version's migrations: run breakerbox migrate --db URL (as the \
                     schema's owner) first",
                    redacted(url)
                )))
            }
            Err(e) => {
                log.close().await;
                Err(e)
            }
        }
    }

    /// How many of this version's migrations the database has not applied.
    pub async fn pending(&self) -> Result<usize, StoreError> {
        let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        let applied: Vec<(i64,)> = if exists {
            sqlx::query_as("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?
        } else {
            Vec::new()
        };
        Ok(MIGRATOR
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .filter(|m| !applied.iter().any(|(v,)| *v == m.version))
            .count())
    }

    /// Applies this version's migrations that the database lacks (as the schema's owner: see
    /// `docs/fleet.md`); how many it applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let pending = self.pending().await?;
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?;
        Ok(pending)
    }

    /// The pool (for tests and tools that look at the tables directly).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends one batch of rows in one transaction; its id (16 bytes, random per batch) is
    /// kept with each row. Returns the last row's id.
    ///
    /// If the rows are already there under this batch id — the first try committed but its
    /// answer was lost with the connection — that is a success, and nothing is written twice.
    /// If another writer took one of the seqs, [`StoreError::Conflict`] names the stream and seq.
    pub async fn append(&self, batch: &[u8; 16], rows: &[Row]) -> Result<i64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        match self.insert(batch, rows).await {
            Ok(last) => Ok(last),
            Err(e) if is_unique_violation(&e) => self.settle(batch, rows).await,
            Err(e) => Err(classify(e)),
        }
    }

    async fn insert(&self, batch: &[u8; 16], rows: &[Row]) -> Result<i64, sqlx::Error> {
        let rows: Vec<Insert<'_>> = rows
            .iter()
            .map(|r| Insert {
                node: &r.node,
                stream: &r.stream,
                seq: r.seq.min(i64::MAX as u64) as i64,
                event_type: r.event_type,
                event_version: r.event_version.min(i32::MAX as u32) as i32,
                recorded_at: r.recorded_at.min(i64::MAX as u64) as i64,
                payload: &r.payload,
                hash: None,
                source_node: None,
                source_position: None,
            })
            .collect();
        self.insert_rows(batch, &rows, None, &[]).await
    }

    async fn insert_rows(
        &self,
        batch: &[u8; 16],
        rows: &[Insert<'_>],
        shipped: Option<(&str, i64)>,
        compacted: &[(&str, Vec<i64>)],
    ) -> Result<i64, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut last = 0;
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO events (node, stream, seq, event_type, event_version, recorded_at, batch_id, payload, \
                 hash, source_node, source_position) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(r.node)
                    .push_bind(r.stream)
                    .push_bind(r.seq)
                    .push_bind(r.event_type)
                    .push_bind(r.event_version)
                    .push_bind(r.recorded_at)
                    .push_bind(&batch[..])
                    .push_bind(r.payload)
                    .push_bind(r.hash)
                    .push_bind(r.source_node)
                    .push_bind(r.source_position);
            });
            q.push(" RETURNING id");
            let ids: Vec<(i64,)> = q.build_query_as().fetch_all(&mut *tx).await?;
            last = ids.iter().map(|(id,)| *id).max().unwrap_or(last);
        }
        if let Some((node, position)) = shipped {
            sqlx::query(
                "INSERT INTO shipped (node, position) VALUES ($1, $2) \
                 ON CONFLICT (node) DO UPDATE SET position = greatest(shipped.position, EXCLUDED.position)",
            )
            .bind(node)
            .bind(position)
            .execute(&mut *tx)
            .await?;
            for (stream, seqs) in compacted {
                sqlx::query("SELECT breakerbox_compact_shipped($1, $2, $3)")
                    .bind(node)
                    .bind(*stream)
                    .bind(seqs)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(last)
    }

    /// Ships events of this node's own log (read back with their positions and chain links) as
    /// one batch: each row keeps its `position` as `source_position`, its node, seq, payload and
    /// hash unchanged, so the chain verifies and the node's history reads back in its own order.
    /// A batch id derived from the node and the positions makes a retry after a lost answer —
    /// even by a restarted process — recognise its rows. Returns the last shipped position.
    pub async fn ship(&self, node: &str, events: &[Shippable]) -> Result<i64, StoreError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(0);
        };
        let batch = ship_batch_id(node, first.event.position, last.event.position);
        let rows: Vec<Insert<'_>> = events
            .iter()
            .map(|s| Insert {
                node: &s.event.node,
                stream: &s.event.stream,
                seq: s.event.seq,
                event_type: &s.event.event_type,
                event_version: s.event.event_version.min(i32::MAX as u32) as i32,
                recorded_at: s.event.recorded_at,
                payload: &s.event.payload,
                hash: s.hash.as_deref(),
                source_node: Some(node),
                source_position: Some(s.event.position),
            })
            .collect();
        // The call batches the shipped summaries replaced (the node's retention deleted them
        // from its file) go in the same transaction. A summary that does not decode replaces
        // nothing here: shipping never stops on one (a node's copy names it).
        let mut compacted: Vec<(&str, Vec<i64>)> = Vec::new();
        for s in events
            .iter()
            .filter(|s| s.event.event_type == super::record::CALL_SUMMARY)
        {
            match super::record::decode(&s.event) {
                Ok(super::record::Decoded::Summary(summary)) if !summary.replaced.is_empty() => {
                    compacted.push((
                        &s.event.stream,
                        summary
                            .replaced
                            .iter()
                            .map(|r| r.seq.min(i64::MAX as u64) as i64)
                            .collect(),
                    ));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    position = s.event.position,
                    "a call summary that does not decode: the batches it replaced stay in the fleet log"
                ),
            }
        }
        match self
            .insert_rows(&batch, &rows, Some((node, last.event.position)), &compacted)
            .await
        {
            Ok(_) => Ok(last.event.position),
            Err(e) if is_unique_violation(&e) => {
                // Keyed by the node that shipped them, as the backstop's index is.
                let keys: Vec<(String, String, u64)> = rows
                    .iter()
                    .map(|r| (node.to_owned(), r.stream.to_owned(), r.seq.max(0) as u64))
                    .collect();
                self.settle_keys(&batch, &keys).await?;
                Ok(last.event.position)
            }
            Err(e) => Err(classify(e)),
        }
    }

    /// The highest position of the log `node` ships that is shipped here (0: none): where its
    /// shipper resumes. (The rows keep the node they were written as, which is `node` unless the
    /// log was written under another name.)
    pub async fn shipped_position(&self, node: &str) -> Result<i64, StoreError> {
        let (p,): (Option<i64>,) = sqlx::query_as("SELECT max(position) FROM shipped WHERE node = $1")
            .bind(node)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(p.unwrap_or(0))
    }

    /// The events of `event_type` that `node` shipped, in its log's order.
    pub async fn read_node_of_type(&self, node: &str, event_type: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT source_position AS id, node, stream, seq, event_type, event_version, recorded_at, payload \
             FROM events WHERE source_node = $1 AND event_type = $2 ORDER BY source_position",
        )
        .bind(node)
        .bind(event_type)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(stored).collect()
    }

    /// Every node known to the log — holding or having held a lease, or having shipped — with its
    /// lease and how far it shipped, by name, and the database's clock.
    pub async fn node_list(&self) -> Result<(i64, Vec<NodeRecord>), StoreError> {
        let rows: Vec<NodeTuple> = sqlx::query_as(
            "SELECT coalesce(n.node, s.node), n.holder, n.renewed_at, n.ttl_ms, n.started_at, n.released_at, \
                        s.position, (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
                 FROM nodes n FULL OUTER JOIN shipped s ON s.node = n.node \
                 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let now = match rows.first() {
            Some(r) => r.7,
            None => self.now_ms().await?,
        };
        Ok((
            now,
            rows.into_iter()
                .map(
                    |(node, holder, renewed_at_ms, ttl_ms, started_at_ms, released_at_ms, shipped, _)| NodeRecord {
                        node,
                        holder,
                        renewed_at_ms,
                        ttl_ms,
                        started_at_ms,
                        released_at_ms,
                        shipped,
                    },
                )
                .collect(),
        ))
    }

    /// Replaces `node`'s health document (`docs/fleet.md`, "Fleet health"), stamped with the
    /// database's clock beside the node's own, `node_clock_ms`, when it made it.
    pub async fn publish_health(&self, node: &str, node_clock_ms: u64, doc: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_health (node, reported_at, node_clock_ms, doc) \
             VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, $2, $3) \
             ON CONFLICT (node) DO UPDATE SET reported_at = EXCLUDED.reported_at, \
                 node_clock_ms = EXCLUDED.node_clock_ms, doc = EXCLUDED.doc",
        )
        .bind(node)
        .bind(node_clock_ms.min(i64::MAX as u64) as i64)
        .bind(doc)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Every node's last health document, by name.
    pub async fn node_health(&self) -> Result<Vec<NodeHealthRow>, StoreError> {
        let rows: Vec<(String, i64, i64, String)> =
            sqlx::query_as("SELECT node, reported_at, node_clock_ms, doc FROM node_health ORDER BY node")
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(|(node, reported_at_ms, node_clock_ms, doc)| NodeHealthRow {
                node,
                reported_at_ms,
                node_clock_ms,
                doc,
            })
            .collect())
    }

    /// Appends a fleet-wide operator command at the fleet stream's next seq, and wakes the nodes
    /// (`NOTIFY breakerbox_fleet` at commit: one per command, never per append). `ttl`: an
    /// override's time to live, after which every node lapses it.
    pub async fn issue(&self, asked: &FleetAsk, ttl: Option<Duration>) -> Result<FleetCommand, StoreError> {
        let ttl_ms = ttl.map(|t| t.min(MAX_FLEET_TTL).as_millis() as i64);
        // Two requesters at once both take max + 1: the second's insert collides and goes again.
        for _ in 0..50 {
            let mut tx = self.pool.begin().await.map_err(classify)?;
            let inserted = sqlx::query_as::<_, (i64, i64, Option<i64>)>(
                "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) \
                 INSERT INTO fleet_commands (seq, issued_at, service, command, who, origin, why, expires_at) \
                 SELECT coalesce((SELECT max(seq) FROM fleet_commands), 0) + 1, now.ms, $1, $2, $3, $4, $5, \
                        now.ms + $6 FROM now \
                 RETURNING seq, issued_at, expires_at",
            )
            .bind(&asked.service)
            .bind(command_name(asked.command))
            .bind(&asked.who)
            .bind(&asked.origin)
            .bind(&asked.why)
            .bind(ttl_ms)
            .fetch_one(&mut *tx)
            .await;
            let (seq, issued_at_ms, expires_at_ms) = match inserted {
                Ok(r) => r,
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(classify(e)),
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(FLEET_CHANNEL)
                .bind(seq.to_string())
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            match tx.commit().await {
                Ok(()) => {}
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(classify(e)),
            }
            return Ok(FleetCommand {
                seq,
                issued_at_ms,
                asked: asked.clone(),
                expires_at_ms,
            });
        }
        Err(StoreError::Io(
            "fleet command: 50 other commands were issued at once; try again".into(),
        ))
    }

    /// The fleet's commands after `after` (a seq), in order, at most `limit`, with the database's
    /// clock.
    pub async fn commands_after(&self, after: i64, limit: u32) -> Result<(i64, Vec<FleetCommand>), StoreError> {
        let rows: Vec<CommandTuple> = sqlx::query_as(
            "SELECT seq, issued_at, service, command, who, origin, why, expires_at, \
                    (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             FROM fleet_commands WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let now = match rows.first() {
            Some(r) => r.8,
            None => self.now_ms().await?,
        };
        let mut out = Vec::with_capacity(rows.len());
        for (seq, issued_at_ms, service, command, who, origin, why, expires_at_ms, _) in rows {
            let command = parse_command(&command)
                .ok_or_else(|| StoreError::Io(format!("fleet command {seq}: unknown command {command:?}")))?;
            out.push(FleetCommand {
                seq,
                issued_at_ms,
                asked: FleetAsk {
                    service,
                    command,
                    who,
                    origin,
                    why,
                },
                expires_at_ms,
            });
        }
        Ok((now, out))
    }

    /// The database's clock, Unix ms.
    pub async fn now_ms(&self) -> Result<i64, StoreError> {
        let (now,): (i64,) = sqlx::query_as("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(now)
    }

    /// Records a node's acknowledgement of a fleet command (once: a second is ignored), stamped
    /// with the database's clock.
    pub async fn ack(&self, ack: &FleetAck) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO fleet_acks (seq, node, applied_at, outcome, from_state, to_state, position, detail) \
             VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, $3, $4, $5, $6, $7) \
             ON CONFLICT (seq, node) DO NOTHING",
        )
        .bind(ack.seq)
        .bind(&ack.node)
        .bind(&ack.outcome)
        .bind(&ack.from_state)
        .bind(&ack.to_state)
        .bind(ack.position)
        .bind(&ack.detail)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// The acknowledgements of fleet command `seq`, by node.
    pub async fn acks_of(&self, seq: i64) -> Result<Vec<FleetAck>, StoreError> {
        let rows: Vec<AckTuple> = sqlx::query_as(
            "SELECT seq, node, applied_at, outcome, from_state, to_state, position, detail \
                 FROM fleet_acks WHERE seq = $1 ORDER BY node",
        )
        .bind(seq)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(
                |(seq, node, applied_at_ms, outcome, from_state, to_state, position, detail)| FleetAck {
                    seq,
                    node,
                    applied_at_ms,
                    outcome,
                    from_state,
                    to_state,
                    position,
                    detail,
                },
            )
            .collect())
    }

    /// The last fleet command `node` acknowledged (0: none).
    pub async fn acked_upto(&self, node: &str) -> Result<i64, StoreError> {
        let (n,): (Option<i64>,) = sqlx::query_as("SELECT max(seq) FROM fleet_acks WHERE node = $1")
            .bind(node)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(n.unwrap_or(0))
    }

    /// The fleet's alert episodes in progress, by breaker.
    pub async fn open_episodes(&self) -> Result<Vec<FleetEpisode>, StoreError> {
        let rows: Vec<(String, String, i64, i64, i32)> = sqlx::query_as(
            "SELECT service, fingerprint, started_at, last_open_at, nodes_max FROM fleet_episodes ORDER BY service",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows
            .into_iter()
            .map(
                |(service, fingerprint, started_at_ms, last_open_at_ms, nodes_max)| FleetEpisode {
                    service,
                    fingerprint,
                    started_at_ms,
                    last_open_at_ms,
                    nodes_max: nodes_max.max(0) as u32,
                },
            )
            .collect())
    }

    /// Starts an episode; false when one is already in progress for its breaker.
    pub async fn start_episode(&self, e: &FleetEpisode) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO fleet_episodes (service, fingerprint, started_at, last_open_at, nodes_max) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (service) DO NOTHING",
        )
        .bind(&e.service)
        .bind(&e.fingerprint)
        .bind(e.started_at_ms)
        .bind(e.last_open_at_ms)
        .bind(e.nodes_max.min(i32::MAX as u32) as i32)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }

    /// An episode still open on some node: when it was last seen open, and its most nodes.
    pub async fn touch_episode(&self, e: &FleetEpisode) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE fleet_episodes SET last_open_at = greatest(last_open_at, $3), nodes_max = greatest(nodes_max, $4) \
             WHERE service = $1 AND fingerprint = $2",
        )
        .bind(&e.service)
        .bind(&e.fingerprint)
        .bind(e.last_open_at_ms)
        .bind(e.nodes_max.min(i32::MAX as u32) as i32)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Ends an episode; false when it was not in progress (any more).
    pub async fn end_episode(&self, e: &FleetEpisode) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM fleet_episodes WHERE service = $1 AND fingerprint = $2")
            .bind(&e.service)
            .bind(&e.fingerprint)
            .execute(&self.pool)
            .await
            .map_err(classify)?;
        Ok(done.rows_affected() == 1)
    }

    /// Tries to become the fleet's one `role` (an advisory lock on a session of its own, held
    /// until that session ends: a leader that dies frees it with its connection).
    pub async fn try_lead(url: &str, role: i64, connect_timeout: Duration) -> Result<Option<Leadership>, StoreError> {
        use sqlx::Connection;
        let options: PgConnectOptions = url.parse().map_err(|e| {
            StoreError::Io(format!(
                "the database URL is not a PostgreSQL URL (postgres://user@host:port/database): {e}"
            ))
        })?;
        let mut conn = tokio::time::timeout(connect_timeout, sqlx::PgConnection::connect_with(&options))
            .await
            .map_err(|_| StoreError::Io(format!("no answer within {connect_timeout:?}")))?
            .map_err(classify)?;
        // The server notices a leader whose host or network died by TCP keepalive: within
        // about 25 s (10 s idle, then 3 probes 5 s apart), not the system's default of hours.
        for setting in [
            "SET tcp_keepalives_idle = 10",
            "SET tcp_keepalives_interval = 5",
            "SET tcp_keepalives_count = 3",
        ] {
            sqlx::query(setting).execute(&mut conn).await.map_err(classify)?;
        }
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
            .bind(role)
            .fetch_one(&mut conn)
            .await
            .map_err(classify)?;
        if got {
            Ok(Some(Leadership { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// The nodes that shipped events to the log, by name.
    pub async fn nodes(&self) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "WITH RECURSIVE n AS ( \
                 (SELECT source_node AS node FROM events WHERE source_node IS NOT NULL ORDER BY source_node LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT e.source_node FROM events e WHERE e.source_node > n.node \
                         ORDER BY e.source_node LIMIT 1) FROM n \
                 WHERE n.node IS NOT NULL) \
             SELECT node FROM n WHERE node IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// The events `node` shipped after `after` (a position of its own log), in that order, at most
    /// `limit`, each with its position there, its chain link and its `node` column as written.
    pub async fn read_node(&self, node: &str, after: i64, limit: u32) -> Result<Vec<Shippable>, StoreError> {
        let rows = sqlx::query(
            "SELECT source_position AS id, node, stream, seq, event_type, event_version, recorded_at, payload, hash \
             FROM events WHERE source_node = $1 AND source_position > $2 ORDER BY source_position LIMIT $3",
        )
        .bind(node)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| {
                Ok(Shippable {
                    event: stored(r)?,
                    hash: r.try_get("hash").map_err(classify)?,
                })
            })
            .collect()
    }

    /// After a UNIQUE violation: this batch's own rows (an earlier try committed: every row of
    /// it is there, each under this batch id), or another writer's (a conflict, named). Looked
    /// up by each row's own key, so a batch id used before cannot pass for this batch.
    async fn settle(&self, batch: &[u8; 16], rows: &[Row]) -> Result<i64, StoreError> {
        let keys: Vec<(String, String, u64)> = rows
            .iter()
            .map(|r| (r.node.to_string(), r.stream.to_string(), r.seq))
            .collect();
        self.settle_keys(batch, &keys).await
    }

    async fn settle_keys(&self, batch: &[u8; 16], keys: &[(String, String, u64)]) -> Result<i64, StoreError> {
        let nodes: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let streams: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let seqs: Vec<i64> = keys.iter().map(|k| k.2.min(i64::MAX as u64) as i64).collect();
        let found: Vec<(i64, String, String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT e.id, coalesce(e.source_node, e.node), e.stream, e.seq, e.batch_id FROM events e \
             JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS k(node, stream, seq) \
               ON coalesce(e.source_node, e.node) = k.node AND e.stream = k.stream AND e.seq = k.seq",
        )
        .bind(&nodes)
        .bind(&streams)
        .bind(&seqs)
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        if let Some((_, node, stream, seq, _)) = found.iter().find(|f| f.4 != batch[..]) {
            return Err(StoreError::Conflict {
                stream: format!("{node}/{stream}"),
                seq: (*seq).max(0) as u64,
            });
        }
        if found.len() == keys.len() {
            return Ok(found.iter().map(|f| f.0).max().unwrap_or(0));
        }
        Err(StoreError::Io(format!(
            "batch {} is partly in the log ({} of {} rows): not retried",
            hex(batch),
            found.len(),
            keys.len()
        )))
    }

    /// The highest seq of a node's stream (0 when empty).
    pub async fn last_seq(&self, node: &str, stream: &str) -> Result<u64, StoreError> {
        let (seq,): (Option<i64>,) = sqlx::query_as("SELECT max(seq) FROM events WHERE node = $1 AND stream = $2")
            .bind(node)
            .bind(stream)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(seq.unwrap_or(0).max(0) as u64)
    }

    /// A node's stream after `after_seq`, in seq order, at most `limit` events.
    pub async fn read_stream(
        &self,
        node: &str,
        stream: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, node, stream, seq, event_type, event_version, recorded_at, payload FROM events \
             WHERE node = $1 AND stream = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(node)
        .bind(stream)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(stored).collect()
    }

    /// Events after `after` in the log's order, at most `limit`, and the cursor after the last
    /// of them (`after` when there are none). Only rows of finished transactions are read (below
    /// the oldest running one), in one statement, so one snapshot: a row still uncommitted sorts
    /// after every row returned, and is read by a later call, never skipped. A long transaction
    /// anywhere in the cluster delays this read (see [`PgLog::tail_lag`]), never a writer.
    pub async fn tail(
        &self,
        after: &PgCursor,
        limit: u32,
    ) -> Result<(Vec<(PgCursor, StoredEvent)>, PgCursor), StoreError> {
        let rows = sqlx::query(
            // `tx_text`, not `tx`: ORDER BY would take an output column named `tx` (text, where
            // '10014' sorts before '9999') over the table's xid8 column.
            "SELECT id, epoch, tx::text AS tx_text, node, stream, seq, event_type, event_version, recorded_at, payload \
             FROM events \
             WHERE (epoch, tx, id) > ($1, $2::text::xid8, $3) \
               AND (epoch < breakerbox_epoch() OR tx < pg_snapshot_xmin(pg_current_snapshot())) \
             ORDER BY epoch, tx, id LIMIT $4",
        )
        .bind(after.epoch)
        .bind(after.tx.to_string())
        .bind(after.id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut cursor = *after;
        for r in &rows {
            let tx: String = r.try_get("tx_text").map_err(classify)?;
            cursor = PgCursor {
                epoch: r.try_get("epoch").map_err(classify)?,
                tx: tx
                    .parse()
                    .map_err(|_| StoreError::Io(format!("a transaction id {tx:?} that is not a number")))?,
                id: r.try_get("id").map_err(classify)?,
            };
            out.push((cursor, stored(r)?));
        }
        Ok((out, cursor))
    }

    /// How long the oldest running write transaction in the cluster — or prepared transaction —
    /// has held back tailing reads (zero when none): what readers report as lag. Other roles'
    /// transactions show only to a role with `pg_read_all_stats`.
    pub async fn tail_lag(&self) -> Result<Duration, StoreError> {
        let (secs,): (Option<f64>,) = sqlx::query_as(
            "SELECT extract(epoch FROM clock_timestamp() - least( \
                 (SELECT min(xact_start) FROM pg_stat_activity WHERE backend_xid IS NOT NULL), \
                 (SELECT min(prepared) FROM pg_prepared_xacts)))::float8",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Ok(Duration::from_secs_f64(secs.unwrap_or(0.0).max(0.0)))
    }

    /// Takes or renews `node`'s writer lease for `holder`: given when free, already `holder`'s,
    /// or lapsed (not renewed within its ttl, by the database's clock); otherwise refused, naming
    /// the holder. Two live processes with one node name: the second is refused.
    pub async fn acquire_node(&self, node: &str, holder: &str, ttl: Duration) -> Result<NodeLease, LeaseError> {
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        let got: Option<(i64,)> = sqlx::query_as(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms) \
             INSERT INTO nodes (node, holder, renewed_at, ttl_ms, started_at) \
             SELECT $1, $2, now.ms, $3, now.ms FROM now \
             ON CONFLICT (node) DO UPDATE SET holder = EXCLUDED.holder, renewed_at = EXCLUDED.renewed_at, \
                 ttl_ms = EXCLUDED.ttl_ms, released_at = NULL, \
                 started_at = CASE WHEN nodes.holder = EXCLUDED.holder AND nodes.released_at IS NULL \
                     THEN nodes.started_at ELSE EXCLUDED.started_at END \
             WHERE nodes.holder = EXCLUDED.holder OR nodes.released_at IS NOT NULL \
                 OR nodes.renewed_at + nodes.ttl_ms < EXCLUDED.renewed_at \
             RETURNING renewed_at",
        )
        .bind(node)
        .bind(holder)
        .bind(ttl_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        if let Some((renewed_at_ms,)) = got {
            return Ok(NodeLease {
                node: node.to_owned(),
                holder: holder.to_owned(),
                renewed_at_ms,
                ttl_ms,
            });
        }
        let (holder, renewed_at_ms, ttl_ms, age_ms): (String, i64, i64, i64) = sqlx::query_as(
            "SELECT holder, renewed_at, ttl_ms, (extract(epoch FROM clock_timestamp()) * 1000)::bigint - renewed_at \
             FROM nodes WHERE node = $1",
        )
        .bind(node)
        .fetch_one(&self.pool)
        .await
        .map_err(classify)?;
        Err(LeaseError::Held(
            NodeLease {
                node: node.to_owned(),
                holder,
                renewed_at_ms,
                ttl_ms,
            },
            age_ms,
        ))
    }

    /// Takes `node`'s lease for `holder` from `dead`, a holder judged gone (its process ran on
    /// this host and has exited), if `dead` still holds it.
    pub async fn take_over_node(
        &self,
        node: &str,
        holder: &str,
        ttl: Duration,
        dead: &str,
    ) -> Result<Option<NodeLease>, StoreError> {
        let ttl_ms = ttl.as_millis().min(i64::MAX as u128) as i64;
        let got: Option<(i64,)> = sqlx::query_as(
            "UPDATE nodes SET holder = $2, ttl_ms = $3, released_at = NULL, \
                 renewed_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
                 started_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             WHERE node = $1 AND holder = $4 RETURNING renewed_at",
        )
        .bind(node)
        .bind(holder)
        .bind(ttl_ms)
        .bind(dead)
        .fetch_optional(&self.pool)
        .await
        .map_err(classify)?;
        Ok(got.map(|(renewed_at_ms,)| NodeLease {
            node: node.to_owned(),
            holder: holder.to_owned(),
            renewed_at_ms,
            ttl_ms,
        }))
    }

    /// Gives `node`'s lease up, if `holder` has it: free for the next process at once, and kept
    /// as when the node was last seen.
    pub async fn release_node(&self, node: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE nodes SET released_at = (extract(epoch FROM clock_timestamp()) * 1000)::bigint \
             WHERE node = $1 AND holder = $2 AND released_at IS NULL",
        )
        .bind(node)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Retention's one narrow path: deletes the `call_batch` rows of a node's stream up to
    /// `upto_seq` (through `breakerbox_compact_calls`, the only delete the triggers let through).
    pub async fn compact_calls(&self, node: &str, stream: &str, upto_seq: u64) -> Result<u64, StoreError> {
        let (n,): (i64,) = sqlx::query_as("SELECT breakerbox_compact_calls($1, $2, $3)")
            .bind(node)
            .bind(stream)
            .bind(upto_seq.min(i64::MAX as u64) as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(n.max(0) as u64)
    }

    /// One round of the sequencer: numbers the events that passed below the horizon since the
    /// last round, in `(epoch, tx, id)` order, from the last position + 1, at most `limit`; how
    /// many it numbered. Any node may call it at any time: a round another is running makes this
    /// one a no-op (an advisory lock), and the compare-and-set on the sequencer's row keeps two
    /// rounds from ever numbering twice. Positions are dense and never reused.
    pub async fn sequence(&self, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
            .bind(SEQUENCER_LOCK)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        if !locked {
            return Ok(0);
        }
        let (last, epoch, last_tx, last_id): (i64, i32, String, i64) =
            sqlx::query_as("SELECT last_position, last_epoch, last_tx::text, last_id FROM sequencer WHERE id = 1")
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
        // Read before this transaction writes (so before it has a transaction id of its own to
        // hold the horizon at).
        let batch: Vec<(i64, i32, String)> = sqlx::query_as(
            "SELECT id, epoch, tx::text AS tx_text FROM events \
             WHERE (epoch, tx, id) > ($1, $2::text::xid8, $3) \
               AND (epoch < breakerbox_epoch() OR tx < pg_snapshot_xmin(pg_current_snapshot())) \
             ORDER BY epoch, tx, id LIMIT $4",
        )
        .bind(epoch)
        .bind(&last_tx)
        .bind(last_id)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(classify)?;
        let Some((end_id, end_epoch, end_tx)) = batch.last().cloned() else {
            return Ok(0);
        };
        let ids: Vec<i64> = batch.iter().map(|b| b.0).collect();
        sqlx::query(
            "INSERT INTO event_order (position, event_id) \
             SELECT $1 + n, id FROM unnest($2::bigint[]) WITH ORDINALITY AS t(id, n)",
        )
        .bind(last)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        let moved = sqlx::query(
            "UPDATE sequencer SET last_position = $1, last_epoch = $2, last_tx = $3::text::xid8, last_id = $4 \
             WHERE id = 1 AND last_position = $5",
        )
        .bind(last + ids.len() as i64)
        .bind(end_epoch)
        .bind(&end_tx)
        .bind(end_id)
        .bind(last)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if moved.rows_affected() != 1 {
            // Another round moved it first (only without the lock): this one numbers nothing.
            return Ok(0);
        }
        tx.commit().await.map_err(classify)?;
        Ok(ids.len() as u64)
    }

    /// Events by position after `after`, at most `limit`: the dense order SSE ids, checkpoints
    /// and projections keep (as a SQLite log's positions). A compacted event's position is
    /// skipped.
    pub async fn read_positions(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT o.position AS id, e.node, e.stream, e.seq, e.event_type, e.event_version, e.recorded_at, e.payload \
             FROM event_order o JOIN events e ON e.id = o.event_id \
             WHERE o.position > $1 ORDER BY o.position LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(classify)?;
        rows.iter().map(stored).collect()
    }

    /// The last position numbered (0 before the first round).
    pub async fn last_position(&self) -> Result<i64, StoreError> {
        let (p,): (i64,) = sqlx::query_as("SELECT last_position FROM sequencer WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(p)
    }

    /// Starts a new epoch of the log, after a logical restore (transaction ids start again): rows
    /// written from now on sort after every restored row, and the restored rows are final for
    /// every tailer. Run by the schema's owner (`breakerbox epoch`). The new epoch.
    pub async fn bump_epoch(&self) -> Result<i32, StoreError> {
        let (epoch,): (i32,) = sqlx::query_as("UPDATE log_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch")
            .fetch_one(&self.pool)
            .await
            .map_err(classify)?;
        Ok(epoch)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn stored(r: &sqlx::postgres::PgRow) -> Result<StoredEvent, StoreError> {
    let version: i32 = r.try_get("event_version").map_err(classify)?;
    Ok(StoredEvent {
        position: r.try_get("id").map_err(classify)?,
        node: r.try_get("node").map_err(classify)?,
        stream: r.try_get("stream").map_err(classify)?,
        seq: r.try_get("seq").map_err(classify)?,
        event_type: r.try_get("event_type").map_err(classify)?,
        event_version: version.max(0) as u32,
        recorded_at: r.try_get("recorded_at").map_err(classify)?,
        payload: r.try_get("payload").map_err(classify)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_never_reach_a_message() {
        assert_eq!(
            super::redacted("postgres://bb:s3cret@db:5432/log"),
            "postgres://bb:***@db:5432/log"
        );
        assert_eq!(super::redacted("postgres://bb@db/log"), "postgres://bb@db/log");
        assert_eq!(super::redacted("postgres:///log"), "postgres:///log");
        assert_eq!(
            super::redacted("postgres://db/log?user=bb&password=s3cret&sslmode=require"),
            "postgres://db/log?user=bb&password=***&sslmode=require"
        );
        // Unencoded '?' or '/' in a password: the URL does not parse, and nothing of it shows.
        assert_eq!(
            super::redacted("postgres://bb:pa?ss@db/log"),
            "postgres://bb:***@db/log"
        );
        assert_eq!(super::redacted("postgres://bb:p/w@db/log"), "postgres://bb:***@db/log");
        assert_eq!(
            super::redacted("postgres://bb:x@y?z@db/log?password=q"),
            "postgres://bb:***@db/log?password=***"
        );
    }
}
