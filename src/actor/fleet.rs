//! A node's side of fleet commands (`docs/fleet.md`, "Fleet commands"): it follows the fleet's
//! stream of commands by its own sequence, applies each through the breaker's actor as any
//! operator command (recorded in the node's own log, naming the fleet command), acknowledges it
//! naming that record's position, pins the override so node-local commands are refused while it
//! stands, and lapses an override whose ttl ended. Woken by `LISTEN` on the command channel,
//! with a short poll as the fallback. A node that starts applies the fleet's standing overrides
//! before it serves; one cut off from the database catches up when it can read it again.

use super::Registry;
use super::service::FleetPin;
use crate::breaker::{Command, State};
use crate::journal::Operator;
use crate::journal::pg::{FleetAck, FleetCommand, PgLog};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How a node follows the fleet's commands.
#[derive(Clone, Debug)]
pub struct FollowerOptions {
    /// The fleet's log.
    pub url: String,
    /// This node.
    pub node: String,
    /// Connecting's bound.
    pub connect_timeout: Duration,
    /// How often the stream is read without a wake-up (`LISTEN` is the fast path): 200 ms.
    pub poll: Duration,
    /// Listen for wake-ups (false: polling only, to measure it).
    pub listen: bool,
    /// Quorum hints (`[fleet.quorum]`), off when `None`.
    pub quorum: Option<crate::config::QuorumConfig>,
}

impl FollowerOptions {
    /// The defaults for `node` on `url`.
    pub fn new(url: impl Into<String>, node: impl Into<String>) -> FollowerOptions {
        FollowerOptions {
            url: url.into(),
            node: node.into(),
            connect_timeout: Duration::from_secs(5),
            poll: Duration::from_millis(200),
            listen: true,
            quorum: None,
        }
    }
}

/// How often a node looks at the fleet's quorum (the nodes publish their health every second).
const QUORUM_EVERY: Duration = Duration::from_millis(500);

/// Follows the fleet's commands in the background until stopped.
pub struct FleetFollower {
    stop: watch::Sender<bool>,
    /// `None` while the first catch-up is under way; then whether it caught up.
    caught_up: watch::Receiver<Option<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl FleetFollower {
    /// Starts following; see the module's documentation.
    pub fn start(registry: Arc<Registry>, options: FollowerOptions) -> FleetFollower {
        let (stop, stop_rx) = watch::channel(false);
        let (caught_tx, caught_up) = watch::channel(None);
        let run = Run {
            registry,
            options,
            log: None,
            listener: None,
            cursor: None,
            standing: BTreeMap::new(),
            caught_up: caught_tx,
            quorum_looked: None,
            shadowed: std::collections::BTreeSet::new(),
            pending_acks: Vec::new(),
        };
        FleetFollower {
            stop,
            caught_up,
            task: tokio::spawn(run.follow(stop_rx)),
        }
    }

    /// Waits (at most `within`) for the first try to read and apply the fleet's standing
    /// overrides; whether they are applied.
    pub async fn caught_up(&self, within: Duration) -> bool {
        let mut rx = self.caught_up.clone();
        // Over as soon as the first try is: caught up, or the database did not answer (the
        // overrides are then applied once it does).
        let first = tokio::time::timeout(within, rx.wait_for(|c| c.is_some())).await;
        matches!(first, Ok(Ok(c)) if *c == Some(true))
    }

    /// Stops following (what was applied stays applied).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for FleetFollower {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Run {
    registry: Arc<Registry>,
    options: FollowerOptions,
    log: Option<PgLog>,
    listener: Option<crate::journal::pg::CommandWakeups>,
    /// The last command read (None: not caught up since start).
    cursor: Option<i64>,
    /// The overrides standing, by breaker.
    standing: BTreeMap<String, FleetCommand>,
    caught_up: watch::Sender<Option<bool>>,
    /// When the quorum was last looked at.
    quorum_looked: Option<std::time::Instant>,
    /// Breakers whose shadow quorum was recorded and still holds (recorded once per streak).
    shadowed: std::collections::BTreeSet<String>,
    /// Acknowledgements of applied commands not yet written.
    pending_acks: Vec<FleetAck>,
}

fn operator(c: &FleetCommand) -> Operator {
    Operator {
        who: c.asked.who.clone(),
        from: "fleet".into(),
        why: c.asked.why.clone(),
    }
}

fn pin_of(c: &FleetCommand) -> FleetPin {
    FleetPin {
        seq: c.seq,
        command: c.asked.command,
        who: c.asked.who.clone(),
        why: c.asked.why.clone(),
    }
}

fn state_name(s: State) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The state a standing override leaves a breaker in.
fn target(c: Command) -> Option<State> {
    match c {
        Command::ForceOpen => Some(State::ForcedOpen),
        Command::Disable => Some(State::Disabled),
        Command::Reset => None,
    }
}

impl Run {
    async fn follow(mut self, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                break;
            }
            match self.step().await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, node = %self.options.node, "following the fleet's commands failed; retrying");
                    self.caught_up.send_if_modified(|c| {
                        let first = c.is_none();
                        if first {
                            *c = Some(false);
                        }
                        first
                    });
                    if let Some(log) = self.log.take() {
                        log.close().await;
                    }
                    self.listener = None;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            let poll = self.options.poll;
            match &mut self.listener {
                Some(listener) => {
                    tokio::select! {
                        r = listener.recv() => if let Err(e) = r {
                            tracing::debug!(error = %e, "fleet command wake-ups lost; polling until they are back");
                            self.listener = None;
                        },
                        _ = tokio::time::sleep(poll) => {}
                        _ = stop.changed() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        }
        if let Some(log) = self.log.take() {
            log.close().await;
        }
    }

    async fn step(&mut self) -> Result<(), crate::journal::StoreError> {
        if self.log.is_none() {
            let log = PgLog::connect_without_migrating(&self.options.url, self.options.connect_timeout, 2).await?;
            self.log = Some(log);
        }
        if self.listener.is_none() && self.options.listen {
            // Listening first, then reading: a command committed in between is read, not missed.
            match crate::journal::pg::CommandWakeups::listen(&self.options.url).await {
                Ok(l) => self.listener = Some(l),
                Err(e) => tracing::debug!(error = %e, "LISTEN failed; polling"),
            }
        }
        match self.cursor {
            None => self.catch_up_from_start().await?,
            Some(after) => self.follow_from(after).await?,
        }
        if self.options.quorum.is_some() && self.quorum_looked.is_none_or(|at| at.elapsed() >= QUORUM_EVERY) {
            self.quorum_looked = Some(std::time::Instant::now());
            self.look_at_quorum().await?;
        }
        Ok(())
    }

    /// Quorum hints: each CLOSED breaker of this node that enough other live nodes opened by
    /// their own trip rules recently opens (reason `fleet_quorum`), or in shadow mode gets a
    /// `quorum_hint` record saying it would have, once per streak.
    async fn look_at_quorum(&mut self) -> Result<(), crate::journal::StoreError> {
        use crate::journal::fleet::{DEFAULT_GONE_AFTER, health_rows};
        let q = self.options.quorum.clone().expect("checked");
        let (now, views, rows) = health_rows(self.log.as_ref().expect("connected"), DEFAULT_GONE_AFTER).await?;
        for handle in self.registry.handles() {
            let key = handle.key().to_owned();
            let (openers, live) =
                crate::replay::fleet::quorum_of(now, &self.options.node, &key, &views, &rows, q.within_ms);
            let met =
                openers.len() as u32 >= q.nodes && f64::from(openers.len() as u32) >= q.fraction * f64::from(live);
            if !met || handle.state() != State::Closed {
                self.shadowed.remove(&key);
                continue;
            }
            let evidence = crate::breaker::QuorumEvidence {
                nodes: openers,
                live,
                within_ms: q.within_ms,
            };
            if !q.shadow {
                if handle.hint(evidence).await {
                    tracing::warn!(breaker = %key, "opened by a fleet quorum");
                }
            } else if self.shadowed.insert(key.clone()) {
                let record = crate::journal::QuorumHint {
                    at_ms: self.registry.clock().now_ms(),
                    nodes: evidence.nodes,
                    live,
                    within_ms: q.within_ms,
                    outcome: "would_open".into(),
                };
                let stream: Arc<str> = Arc::from(key.as_str());
                let _ = self
                    .registry
                    .journal()
                    .submit(&stream, crate::journal::Body::record(&record));
            }
        }
        Ok(())
    }

    /// At start (or after losing the database before the first catch-up): every override
    /// standing is applied, or pinned where the breaker is already as it left it; a breaker the
    /// fleet forced open or disabled, whose override was reset or lapsed since, is reset; and
    /// every command this node has not acknowledged is acknowledged.
    async fn catch_up_from_start(&mut self) -> Result<(), crate::journal::StoreError> {
        let node = self.options.node.clone();
        let (acked, all, now) = {
            let log = self.log.as_ref().expect("connected");
            let acked = log.acked_upto(&node).await?;
            let mut all = Vec::new();
            let mut now = 0;
            loop {
                let after = all.last().map_or(0, |c: &FleetCommand| c.seq);
                let (n, page) = log.commands_after(after, 10_000).await?;
                now = n.max(now);
                if page.is_empty() {
                    break;
                }
                all.extend(page);
            }
            (acked, all, now)
        };
        // The last command per breaker decides what stands.
        let mut last: BTreeMap<&str, &FleetCommand> = BTreeMap::new();
        for c in &all {
            last.insert(c.asked.service.as_str(), c);
        }
        let mut applied: BTreeMap<i64, FleetAck> = BTreeMap::new();
        for (service, c) in &last {
            let Some(handle) = self.registry.get(service) else {
                continue;
            };
            let lapsed = c.expires_at_ms.is_some_and(|e| e <= now);
            match target(c.asked.command).filter(|_| !lapsed) {
                Some(state) if handle.state() == state => handle.fleet_pin(Some(pin_of(c))).await,
                Some(_) => {
                    let done = handle.fleet_operate(c.asked.command, operator(c), c.seq).await;
                    applied.insert(c.seq, ack_of(c, &node, done));
                }
                // Reset, or lapsed: a breaker the fleet left forced open or disabled is reset.
                None => {
                    if self.fleet_left_it(service, handle.state()).await {
                        let op = if lapsed { lapse_operator(c) } else { operator(c) };
                        let done = handle.fleet_operate(Command::Reset, op, c.seq).await;
                        applied.insert(c.seq, ack_of(c, &node, done));
                    }
                    continue;
                }
            }
            self.standing.insert((*service).to_owned(), (*c).clone());
        }
        for c in all.iter().filter(|c| c.seq > acked) {
            let ack = match applied.remove(&c.seq) {
                Some(a) => a,
                None if self.registry.get(&c.asked.service).is_none() => outcome(c, &node, "unknown_breaker", None),
                None if last.get(c.asked.service.as_str()).is_some_and(|l| l.seq != c.seq) => outcome(
                    c,
                    &node,
                    "superseded",
                    Some("a later fleet command for this breaker came before this node read it".into()),
                ),
                None if c.expires_at_ms.is_some_and(|e| e <= now) => outcome(
                    c,
                    &node,
                    "lapsed",
                    Some("its ttl ended before this node read it".into()),
                ),
                // The breaker already stood as the command leaves it (a reset of a closed one).
                None => outcome(c, &node, "applied", Some("the breaker already stood so".into())),
            };
            self.pending_acks.push(ack);
        }
        self.cursor = Some(all.last().map_or(0, |c| c.seq));
        self.caught_up.send_replace(Some(true));
        self.flush_acks().await?;
        self.lapse(now).await;
        Ok(())
    }

    /// Whether the fleet's last command on `service` in this node's own log left it as it is
    /// (FORCED_OPEN or DISABLED by a fleet command, not by a node-local one).
    async fn fleet_left_it(&self, service: &str, state: State) -> bool {
        if !matches!(state, State::ForcedOpen | State::Disabled) {
            return false;
        }
        let journal = self.registry.journal();
        match journal.latest(service, crate::journal::OPERATOR_COMMAND).await {
            Ok(Some(e)) => crate::journal::decode_record::<crate::journal::OperatorCommand>(&e)
                .is_ok_and(|r| r.fleet_command.is_some() && r.to_state == state),
            _ => false,
        }
    }

    /// Acknowledgements not yet written: written in order; on failure they wait for the next
    /// step (the commands they answer are applied once, not again).
    async fn flush_acks(&mut self) -> Result<(), crate::journal::StoreError> {
        while let Some(ack) = self.pending_acks.first() {
            self.log.as_ref().expect("connected").ack(ack).await?;
            self.pending_acks.remove(0);
        }
        Ok(())
    }

    async fn follow_from(&mut self, after: i64) -> Result<(), crate::journal::StoreError> {
        self.flush_acks().await?;
        let node = self.options.node.clone();
        let (now, page) = self
            .log
            .as_ref()
            .expect("connected")
            .commands_after(after, 1_000)
            .await?;
        for c in page {
            let ack = match self.registry.get(&c.asked.service) {
                None => outcome(&c, &node, "unknown_breaker", None),
                Some(handle) if c.expires_at_ms.is_some_and(|e| e <= now) => {
                    // Lapsed before this node read it: the other nodes applied it and lapsed it
                    // since, so an override of the fleet's standing here is reset too.
                    if self.standing.remove(&c.asked.service).is_some() {
                        let done = handle.fleet_operate(Command::Reset, lapse_operator(&c), c.seq).await;
                        if done.is_err() {
                            self.standing.insert(c.asked.service.clone(), c.clone());
                        }
                    }
                    outcome(
                        &c,
                        &node,
                        "lapsed",
                        Some("its ttl ended before this node read it".into()),
                    )
                }
                Some(handle) => {
                    let done = handle.fleet_operate(c.asked.command, operator(&c), c.seq).await;
                    // What stands follows the breaker's state, whatever the answer said (a
                    // command applied but not durable in time still stands).
                    match target(c.asked.command) {
                        Some(state) if handle.state() == state => {
                            self.standing.insert(c.asked.service.clone(), c.clone());
                        }
                        Some(_) => {}
                        None => {
                            self.standing.remove(&c.asked.service);
                        }
                    }
                    ack_of(&c, &node, done)
                }
            };
            // Applied: the cursor moves on, whatever becomes of the acknowledgement.
            self.cursor = Some(c.seq);
            self.pending_acks.push(ack);
        }
        self.flush_acks().await?;
        self.lapse(now).await;
        Ok(())
    }

    /// Resets every override whose ttl ended by `now` (the database's clock), recorded as the
    /// fleet command that lapsed. One whose reset fails stays, and is tried again.
    async fn lapse(&mut self, now: i64) {
        let ended: Vec<FleetCommand> = self
            .standing
            .values()
            .filter(|c| c.expires_at_ms.is_some_and(|e| e <= now))
            .cloned()
            .collect();
        for c in ended {
            let Some(handle) = self.registry.get(&c.asked.service) else {
                self.standing.remove(&c.asked.service);
                continue;
            };
            match handle.fleet_operate(Command::Reset, lapse_operator(&c), c.seq).await {
                Ok(_) => {
                    self.standing.remove(&c.asked.service);
                }
                Err(e) => {
                    tracing::error!(error = %e, breaker = %c.asked.service, "lapsing a fleet override failed; retrying")
                }
            }
        }
    }
}

/// The operator of a fleet override's lapse.
fn lapse_operator(c: &FleetCommand) -> Operator {
    Operator {
        who: c.asked.who.clone(),
        from: "fleet".into(),
        why: format!("fleet command {} lapsed: its ttl ended", c.seq),
    }
}

fn outcome(c: &FleetCommand, node: &str, outcome: &str, detail: Option<String>) -> FleetAck {
    FleetAck {
        seq: c.seq,
        node: node.to_owned(),
        applied_at_ms: 0,
        outcome: outcome.to_owned(),
        from_state: None,
        to_state: None,
        position: None,
        detail,
    }
}

fn ack_of(c: &FleetCommand, node: &str, done: Result<super::CommandResult, crate::journal::JournalError>) -> FleetAck {
    match done {
        Ok(r) => FleetAck {
            from_state: Some(state_name(r.from)),
            to_state: Some(state_name(r.to)),
            position: r.position,
            detail: r
                .position
                .is_none()
                .then(|| format!("applied; not yet durable: {}", r.log)),
            ..outcome(c, node, "applied", None)
        },
        Err(e) => outcome(c, node, "refused", Some(e.to_string())),
    }
}

/// The fleet's alert leader (`docs/alerts.md`, "A fleet"): of every node running it, one holds
/// the leadership (an advisory lock on a session of its own; a leader that dies frees it) and
/// turns the nodes' published health into one episode per breaker: it fires when the breaker
/// is OPEN or FORCED_OPEN on some live node, and resolves once every live node has had it
/// closed for the quiet period (a gone node holds nothing open). It writes each as a
/// `fleet_alert` record to its own log, which its notifier delivers, once, to every sink.
pub struct FleetAlerter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// How the alert leader runs.
#[derive(Clone, Debug)]
pub struct AlerterOptions {
    /// The fleet's log.
    pub url: String,
    /// The quiet period (`[alerts] quiet_period`).
    pub quiet: Duration,
    /// How often the leader looks (1 s: the nodes publish their health every second).
    pub every: Duration,
    /// Connecting's bound.
    pub connect_timeout: Duration,
}

impl FleetAlerter {
    /// Runs for the node whose log is `journal`; see the type's documentation.
    pub fn start(journal: Arc<crate::journal::Journal>, options: AlerterOptions) -> FleetAlerter {
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(lead(journal, options, rx));
        FleetAlerter { stop, task }
    }

    /// Stops (another node takes the leadership).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for FleetAlerter {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn lead(journal: Arc<crate::journal::Journal>, options: AlerterOptions, mut stop: watch::Receiver<bool>) {
    use crate::journal::pg::{ALERT_LEADER, Leadership};
    let mut leadership: Option<Leadership> = None;
    let mut log: Option<PgLog> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        if leadership.is_none() {
            match PgLog::try_lead(&options.url, ALERT_LEADER, options.connect_timeout).await {
                Ok(Some(l)) => {
                    tracing::info!("this node leads the fleet's alerts");
                    leadership = Some(l);
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "the fleet's alert leadership could not be asked for"),
            }
        } else if !leadership.as_mut().expect("held").alive().await {
            tracing::warn!("the fleet's alert leadership was lost with its session; asking again");
            leadership = None;
        }
        if leadership.is_some() {
            if log.is_none() {
                log = PgLog::connect_without_migrating(&options.url, options.connect_timeout, 2)
                    .await
                    .ok();
            }
            if let Some(l) = &log
                && let Err(e) = alert_tick(&journal, l, options.quiet).await
            {
                tracing::warn!(error = %e, "the fleet's alerts could not be brought up to date; retrying");
                if let Some(l) = log.take() {
                    l.close().await;
                }
            }
        }
        let wait = if leadership.is_some() {
            options.every
        } else {
            options.every * 2
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    if let Some(l) = leadership {
        l.close().await;
    }
    if let Some(l) = log {
        l.close().await;
    }
}

/// One look of the leader: episodes started, kept and resolved from the nodes' health.
async fn alert_tick(
    journal: &crate::journal::Journal,
    log: &PgLog,
    quiet: Duration,
) -> Result<(), crate::journal::StoreError> {
    use crate::journal::fleet::{DEFAULT_GONE_AFTER, health_rows};
    use crate::journal::pg::FleetEpisode;
    use crate::journal::{AlertStatus, FleetAlert};
    let (now, views, rows) = health_rows(log, DEFAULT_GONE_AFTER).await?;
    let health = crate::replay::fleet::fleet_health(now, &views, &rows, None);
    // Nothing is known of any node (they are all stale): nothing is resolved on no news.
    if !health.nodes.iter().any(|n| n.merged) {
        return Ok(());
    }
    let open: BTreeMap<String, FleetEpisode> = log
        .open_episodes()
        .await?
        .into_iter()
        .map(|e| (e.service.clone(), e))
        .collect();
    let quiet_ms = quiet.as_millis().min(i64::MAX as u128) as i64;
    let mut seen = std::collections::BTreeSet::new();
    for b in &health.breakers {
        seen.insert(b.service.clone());
        let open_nodes: Vec<&crate::replay::fleet::NodeRow> = b
            .nodes
            .iter()
            .filter(|r| matches!(r.state, State::Open | State::ForcedOpen))
            .collect();
        // HALF_OPEN keeps an episode going (as a node's own alerts do); it does not start one.
        let troubled = b
            .nodes
            .iter()
            .filter(|r| matches!(r.state, State::Open | State::ForcedOpen | State::HalfOpen))
            .count() as u32;
        let live = b.nodes.len() as u32;
        let trouble = serde_json::to_value(b.trouble)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        match (open.get(&b.service), troubled == 0) {
            (None, false) if open_nodes.is_empty() => {}
            (None, false) => {
                let forced = open_nodes.iter().filter(|r| r.state == State::ForcedOpen).count();
                let e = FleetEpisode {
                    service: b.service.clone(),
                    fingerprint: crate::alerts::fingerprint(&b.service, now.max(0) as u64),
                    started_at_ms: now,
                    last_open_at_ms: now,
                    nodes_max: open_nodes.len() as u32,
                };
                if log.start_episode(&e).await? {
                    let alert = FleetAlert {
                        at_ms: now.max(0) as u64,
                        status: AlertStatus::Firing,
                        breaker: b.service.clone(),
                        fingerprint: e.fingerprint.clone(),
                        starts_at_ms: now.max(0) as u64,
                        ends_at_ms: None,
                        nodes_open: open_nodes.iter().map(|r| r.node.clone()).collect(),
                        nodes_max: e.nodes_max,
                        nodes_live: live,
                        trouble,
                        opened_to: if 2 * forced > open_nodes.len() {
                            State::ForcedOpen
                        } else {
                            State::Open
                        },
                    };
                    if let Err(err) = write_alert(journal, alert).await {
                        // Not announced: the episode starts again at the next look.
                        log.end_episode(&e).await?;
                        return Err(err);
                    }
                }
            }
            (Some(e), false) => {
                let touched = FleetEpisode {
                    last_open_at_ms: now,
                    nodes_max: e.nodes_max.max(troubled),
                    ..e.clone()
                };
                log.touch_episode(&touched).await?;
            }
            (Some(e), true) => resolve(journal, log, e, now, quiet_ms, live).await?,
            (None, true) => {}
        }
    }
    // A breaker no live node reports any more (its nodes are gone): nothing holds it open.
    for (service, e) in &open {
        if !seen.contains(service) {
            resolve(journal, log, e, now, quiet_ms, 0).await?;
        }
    }
    Ok(())
}

/// Writes a fleet alert to this node's log, durably (its notifier then delivers it).
async fn write_alert(
    journal: &crate::journal::Journal,
    alert: crate::journal::FleetAlert,
) -> Result<(), crate::journal::StoreError> {
    use crate::journal::{Body, FLEET_ALERTS_STREAM};
    let stream: Arc<str> = Arc::from(FLEET_ALERTS_STREAM);
    match journal.submit(&stream, Body::record(&alert)) {
        Some(ticket) => {
            journal.durable(ticket).await.map(|_| ()).map_err(|e| {
                crate::journal::StoreError::Io(format!("writing the fleet alert for {}: {e}", alert.breaker))
            })
        }
        None => Err(crate::journal::StoreError::Io(format!(
            "the log did not take the fleet alert for {}",
            alert.breaker
        ))),
    }
}

async fn resolve(
    journal: &crate::journal::Journal,
    log: &PgLog,
    e: &crate::journal::pg::FleetEpisode,
    now: i64,
    quiet_ms: i64,
    live: u32,
) -> Result<(), crate::journal::StoreError> {
    if now.saturating_sub(e.last_open_at_ms) < quiet_ms {
        return Ok(());
    }
    // The message first, then the episode's end: a leader that dies in between sends it again
    // (the same fingerprint), never not at all.
    write_alert(
        journal,
        crate::journal::FleetAlert {
            at_ms: now.max(0) as u64,
            status: crate::journal::AlertStatus::Resolved,
            breaker: e.service.clone(),
            fingerprint: e.fingerprint.clone(),
            starts_at_ms: e.started_at_ms.max(0) as u64,
            ends_at_ms: Some(e.last_open_at_ms.max(0) as u64),
            nodes_open: Vec::new(),
            nodes_max: e.nodes_max,
            nodes_live: live,
            trouble: "none".into(),
            opened_to: State::Open,
        },
    )
    .await?;
    log.end_episode(e).await?;
    Ok(())
}
