//! The notifier: tails the log from its own checkpoint, turns transitions into episode notices,
//! keeps them in an outbox, and delivers each to every sink at least once. Every attempt is
//! recorded as an `alert_delivery` event in the log.
//!
//! It never touches the protected call path: breakers only append to the journal; the notifier
//! reads the log on its own thread, runtime and SQLite connection, and its queue (the outbox)
//! is bounded.

use super::episode::{Episodes, Notice};
use super::outbox::{OutboxItem, OutboxState, Read, Store};
use super::payload::{Links, render};
use super::retry::{Answer, RateLimit, RetryPolicy, Verdict, decide, jitter};
use crate::breaker::{Event, codec};
use crate::clock::Clock;
use crate::config::{AlertsConfig, Webhook};
use crate::journal::{
    ALERTS_STREAM, AlertDelivery, AlertStatus, Body, DeliveryOutcome, Journal, OPERATOR_COMMAND, OperatorCommand,
    StoreError,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the notifier could not start or run a step.
#[derive(Debug, Error)]
pub enum AlertsError {
    /// The log or the outbox could not be read or written: the running notifier retries every
    /// second; at start, report it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing to deliver to: configure `[[alerts.webhooks]]`.
    #[error("no alert sinks are configured: add [[alerts.webhooks]] with name and url to the config file")]
    NoSinks,
    /// The HTTP client or the notifier's thread could not start: report it.
    #[error("starting the alert notifier: {0}")]
    Start(String),
}

/// Settings of a notifier beyond the config file's; every bound explicit.
#[derive(Clone, Debug)]
pub struct NotifierOptions {
    /// The clock of the background loop ([`Notifier::start`]); [`Notifier::pump`] takes `now`.
    pub clock: Clock,
    /// Longest sleep between two steps of the loop (default 200 ms): how soon a new transition
    /// is seen.
    pub poll: Duration,
    /// Log events read per page (default 1,000).
    pub page: u32,
    /// Outbox bound: pending messages at most (default 10,000, plus at most one page's worth).
    /// At the bound the notifier stops reading the log until deliveries drain; nothing is lost,
    /// the log is the queue.
    pub max_pending: u64,
    /// Messages sent per step at most (default 200).
    pub max_sends: u32,
    /// The first retry's wait (default 1 s); doubled per attempt up to `alerts.max_backoff`.
    pub base_backoff: Duration,
    /// Finished outbox rows are forgotten after this (default 7 days); their records stay in the log.
    pub keep_done: Duration,
    /// The stream delivery records are written to (default `_alerts`).
    pub stream: String,
    /// A node of a fleet (`docs/alerts.md`, "A fleet"): announce only the fleet's episodes (the
    /// `fleet_alert` records the fleet's alert leader writes), not this node's own, so a fleet
    /// pages once, not once per node.
    pub fleet: bool,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions {
            clock: Clock::system(),
            poll: Duration::from_millis(200),
            page: 1_000,
            max_pending: 10_000,
            max_sends: 200,
            base_backoff: Duration::from_secs(1),
            keep_done: Duration::from_secs(7 * 86_400),
            stream: ALERTS_STREAM.to_owned(),
            fleet: false,
        }
    }
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pump {
    /// Messages put in the outbox (notices × sinks, before deduplication).
    pub enqueued: u64,
    /// The attempts made (and messages abandoned), as recorded in the log.
    pub deliveries: Vec<AlertDelivery>,
    /// When something is next due (a retry, a rate-limited send, an episode's quiet period).
    pub next_wake_ms: Option<u64>,
}

/// What a sink answered, or why it did not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// Its `Retry-After` header.
    pub retry_after: Option<String>,
    /// The transport error (never holding the URL).
    pub error: Option<String>,
    /// How long the request took.
    pub latency_ms: u64,
}

impl Sent {
    fn answer(&self) -> Answer<'_> {
        match self.status_code {
            Some(code) => Answer::Status {
                code,
                retry_after: self.retry_after.as_deref(),
            },
            None => Answer::Transport,
        }
    }

    fn problem(&self) -> Option<String> {
        match (self.status_code, &self.error) {
            (_, Some(e)) => Some(e.clone()),
            (Some(c), None) if !(200..300).contains(&c) => Some(format!("HTTP {c}")),
            _ => None,
        }
    }
}

/// The HTTP client of the alert sinks: no redirects (a redirected POST would change meaning;
/// a 3xx is reported as a rejection), the configured time limit.
pub fn client(config: &AlertsConfig) -> Result<reqwest::Client, AlertsError> {
    crate::tls::init();
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("breakerbox/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AlertsError::Start(format!("building the HTTP client: {}", e.without_url())))
}

/// A transport error as text, with the sink's URL (a secret) removed wherever it appears.
fn describe(e: reqwest::Error, url: &str) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    // The causes only: the top level ("error sending request") is what `kind` says better.
    let causes =
        std::error::Error::source(&e).map_or_else(String::new, |s| format!(": {}", crate::tls::error_chain(s)));
    scrub(&format!("{kind}{causes}"), url)
}

/// Removes a URL (and its path, where a webhook's secret token usually is) from `text`.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, "***");
    if let Ok(u) = reqwest::Url::parse(url) {
        out = out.replace(u.as_str(), "***");
        if u.path().len() > 1 {
            out = out.replace(u.path(), "/***");
        }
        if let Some(q) = u.query() {
            out = out.replace(q, "***");
        }
    }
    out
}

/// POSTs one JSON body to a sink. Never fails: the outcome is data.
pub async fn send(client: &reqwest::Client, hook: &Webhook, body: Vec<u8>) -> Sent {
    let started = Instant::now();
    let result = client
        .post(hook.url.expose())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(r) => Sent {
            status_code: Some(r.status().as_u16()),
            retry_after: r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            error: None,
            latency_ms,
        },
        Err(e) => Sent {
            status_code: None,
            retry_after: None,
            error: Some(describe(e, hook.url.expose())),
            latency_ms,
        },
    }
}

/// The alert notifier's working state. Drive it step by step with [`Notifier::pump`] (tests, a
/// host's own loop), or run it in the background with [`Notifier::start`].
pub struct Notifier {
    journal: Arc<Journal>,
    config: AlertsConfig,
    options: NotifierOptions,
    store: Store,
    client: reqwest::Client,
    links: Links,
    limits: HashMap<String, RateLimit>,
    /// When the next episode resolves, as of the last catch-up.
    deadline: Option<u64>,
    full_warned: bool,
    pruned_ms: u64,
}

impl Notifier {
    /// Opens the notifier on a journal (whose migrations created the outbox tables).
    pub async fn open(
        journal: Arc<Journal>,
        config: AlertsConfig,
        options: NotifierOptions,
    ) -> Result<Notifier, AlertsError> {
        if !config.enabled() {
            return Err(AlertsError::NoSinks);
        }
        let store = Store::open(&journal);
        let client = client(&config)?;
        let links = Links {
            dashboard_url: config.dashboard_url.clone(),
            db_path: Some(journal.path().display().to_string()),
        };
        Ok(Notifier {
            journal,
            config,
            options,
            store,
            client,
            links,
            limits: HashMap::new(),
            deadline: None,
            full_warned: false,
            pruned_ms: 0,
        })
    }

    /// Starts the notifier on a thread of its own (its own runtime, so it runs whatever the
    /// host runs, and a slow sink never delays anything else). Stop it with
    /// [`NotifierHandle::stop`]; dropping the handle stops it too, without waiting. Give it new
    /// sinks with [`NotifierHandle::reconfigure`].
    pub async fn start(
        journal: Arc<Journal>,
        config: AlertsConfig,
        options: NotifierOptions,
    ) -> Result<NotifierHandle, AlertsError> {
        Notifier::open(journal, config, options).await?.spawn()
    }

    fn spawn(mut self) -> Result<NotifierHandle, AlertsError> {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sinks = Arc::new(NewSinks::default());
        let new_sinks = sinks.clone();
        let thread = std::thread::Builder::new()
            .name("breakerbox-alerts".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "the alert notifier could not start its runtime; no alerts will be sent");
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut failing = false;
                    loop {
                        // A reload's sinks, before the step that reads what followed it.
                        let pending = new_sinks.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
                        if let Some((config, client)) = pending {
                            self.set(config, client);
                        }
                        let now = self.options.clock.now_ms();
                        let step = tokio::select! {
                            step = self.pump(now) => step,
                            _ = stopped.changed() => break,
                        };
                        let wake = match step {
                            Ok(p) => {
                                if failing {
                                    tracing::info!("the alert notifier works again");
                                    failing = false;
                                }
                                p.next_wake_ms
                            }
                            Err(e) => {
                                if !failing {
                                    tracing::error!(error = %e, "the alert notifier failed; retrying every second");
                                    failing = true;
                                }
                                Some(now + 1_000)
                            }
                        };
                        let poll = self.options.poll;
                        let wait = wake.map_or(poll, |w| Duration::from_millis(w.saturating_sub(now)).min(poll));
                        tokio::select! {
                            _ = tokio::time::sleep(wait.max(Duration::from_millis(1))) => {}
                            _ = new_sinks.wake.notified() => {}
                            _ = stopped.changed() => break,
                        }
                    }
                });
            })
            .map_err(|e| AlertsError::Start(format!("starting its thread: {e}")))?;
        Ok(NotifierHandle {
            stop,
            sinks,
            thread: Some(thread),
        })
    }

    /// Delivers by `config` from now on (a reload): new notices go to its sinks; messages still
    /// waiting for a sink it no longer has are abandoned, as "no longer configured". A sink
    /// added now gets what happens from now on, not the episodes already announced.
    pub fn reconfigure(&mut self, config: AlertsConfig) -> Result<(), AlertsError> {
        let client = client(&config)?;
        self.set(config, client);
        Ok(())
    }

    fn set(&mut self, config: AlertsConfig, client: reqwest::Client) {
        // A sink's rate limit starts over when its settings change.
        self.limits.retain(|name, _| {
            self.config.webhooks.iter().find(|w| &w.name == name) == config.webhooks.iter().find(|w| &w.name == name)
        });
        self.links.dashboard_url = config.dashboard_url.clone();
        self.client = client;
        self.config = config;
    }

    /// The configuration it delivers by.
    pub fn config(&self) -> &AlertsConfig {
        &self.config
    }

    /// One step at `now_ms`: read the new events into the outbox, then send what is due.
    pub async fn pump(&mut self, now_ms: u64) -> Result<Pump, AlertsError> {
        if matches!(self.journal.integrity(), crate::journal::Integrity::Corrupt(_)) {
            // The file is damaged: nothing more is written to it, the outbox included (its
            // commits could checkpoint into the damaged pages). Look again in a second.
            return Ok(Pump {
                enqueued: 0,
                deliveries: Vec::new(),
                next_wake_ms: Some(now_ms + 1_000),
            });
        }
        let enqueued = self.catch_up(now_ms).await?;
        let deliveries = self.deliver(now_ms).await?;
        if now_ms.saturating_sub(self.pruned_ms) >= 3_600_000 {
            self.pruned_ms = now_ms;
            let keep = self.options.keep_done.as_millis() as u64;
            self.store.prune(now_ms.saturating_sub(keep)).await?;
        }
        let due = self.store.next_due().await?;
        let next_wake_ms = match (due, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Pump {
            enqueued,
            deliveries,
            next_wake_ms,
        })
    }

    /// Folds the log after the checkpoint into episodes and enqueues their notices for every
    /// sink, moving the checkpoint in the same transaction. The first run on a file (no
    /// checkpoint yet) announces only the episodes still in progress, not the whole history.
    pub async fn catch_up(&mut self, now_ms: u64) -> Result<u64, AlertsError> {
        let quiet = self.config.quiet_period_ms;
        let sinks = self.config.webhooks.len().max(1) as u64;
        let mut enqueued = 0;
        loop {
            let checkpoint = self.store.checkpoint().await?;
            let first_run = checkpoint.is_none();
            let (from, mut episodes) = checkpoint.map_or((None, Episodes::default()), |(p, e)| (Some(p), e));
            let upto = self.store.last_position().await?;
            let room = self.options.max_pending.saturating_sub(self.store.pending().await?) / sinks;
            let mut position = from.unwrap_or(0);
            let mut notices: Vec<Notice> = Vec::new();
            let mut full = false;
            while position < upto {
                if !first_run && notices.len() as u64 >= room {
                    full = true;
                    break;
                }
                let page = self.store.read(position, upto, self.options.page.max(1)).await?;
                let complete = page.len() < self.options.page.max(1) as usize;
                for r in &page {
                    if self.options.fleet {
                        fold_fleet(r, &mut notices);
                    } else {
                        fold(r, &mut episodes, quiet, &mut notices);
                    }
                    position = r.position;
                }
                if first_run {
                    // History is not news (see below): keep memory flat on a long log.
                    notices.clear();
                }
                if complete {
                    position = upto;
                }
            }
            if full && !self.full_warned {
                tracing::warn!(
                    pending = self.options.max_pending,
                    "the alert outbox is full (sinks are failing); reading the log waits until deliveries drain"
                );
                self.full_warned = true;
            } else if !full {
                self.full_warned = false;
            }
            // Quiet periods end by the clock only once the log is read to its end: a re-open in
            // the unread part would otherwise be announced as "resolved", then fire again.
            if !full {
                episodes.tick(now_ms, quiet, &mut notices);
            }
            if first_run {
                // History is not news: only what is still going on is announced.
                notices = episodes.active().cloned().collect();
            }
            self.deadline = episodes.next_deadline(quiet);
            if !first_run && Some(position) == from && notices.is_empty() {
                return Ok(enqueued);
            }
            let messages: Vec<(String, Notice)> = notices
                .iter()
                .flat_map(|n| self.config.webhooks.iter().map(move |w| (w.name.clone(), n.clone())))
                .collect();
            if self.store.advance(from, position, &episodes, &messages, now_ms).await? {
                enqueued += messages.len() as u64;
                if full || position >= upto {
                    return Ok(enqueued);
                }
            }
            // Else another notifier moved the checkpoint since it was read: read it again.
        }
    }

    /// Sends every due message (at most `max_sends`), sinks in parallel, each sink's in order,
    /// records each attempt in the log, then in the outbox.
    pub async fn deliver(&mut self, now_ms: u64) -> Result<Vec<AlertDelivery>, AlertsError> {
        let due = self.store.due(now_ms, self.options.max_sends.max(1)).await?;
        // Plan (no I/O): which messages go out now, per sink, rendered; which wait or are given up.
        let mut plan = self.plan(due, now_ms);
        // Send (the network): each sink's messages in order, sinks in parallel.
        let sent = send_all(&self.client, std::mem::take(&mut plan.sends)).await;
        // Decide (pure): what each answer means for the message.
        let policy = RetryPolicy {
            base_ms: self.options.base_backoff.as_millis() as u64,
            max_backoff_ms: self.config.max_backoff_ms,
            give_up_after_ms: self.config.give_up_after_ms,
        };
        settle(&policy, sent, now_ms, &mut plan);
        // Record: the log first, then the outbox.
        self.record(plan, now_ms).await
    }

    /// Groups the due messages by sink: a sink no longer configured gives its messages up; a
    /// sink over its rate keeps the rest waiting for its next slot (not an attempt).
    fn plan(&mut self, due: Vec<OutboxItem>, now_ms: u64) -> Plan {
        let mut by_sink: BTreeMap<String, Vec<OutboxItem>> = BTreeMap::new();
        for item in due {
            by_sink.entry(item.sink.clone()).or_default().push(item);
        }
        let mut plan = Plan::default();
        for (sink, items) in by_sink {
            let Some(hook) = self.config.webhooks.iter().find(|w| w.name == sink).cloned() else {
                for item in items {
                    let error = "the sink is no longer configured".to_owned();
                    plan.records.push(record(
                        &item,
                        now_ms,
                        item.attempts,
                        DeliveryOutcome::Abandoned,
                        None,
                        Some(error.clone()),
                        None,
                    ));
                    plan.updates.push((
                        item.id,
                        OutboxState::Abandoned,
                        item.attempts,
                        item.next_attempt_ms,
                        Some(error),
                    ));
                }
                continue;
            };
            let rate = hook.rate_limit_per_minute;
            let limit = self
                .limits
                .entry(sink.clone())
                .or_insert_with(|| RateLimit::new(rate, rate));
            let mut batch = Vec::new();
            for item in items {
                match limit.acquire(now_ms) {
                    Ok(()) => {
                        let body = serde_json::to_vec(&render(hook.format, &item.notice, &hook.name, &self.links))
                            .expect("JSON values encode");
                        batch.push((item, body));
                    }
                    Err(at) => plan
                        .updates
                        .push((item.id, OutboxState::Pending, item.attempts, at, item.last_error)),
                }
            }
            if !batch.is_empty() {
                plan.sends.push((hook, batch));
            }
        }
        plan
    }

    /// The attempts' records into the log, then the outbox's rows: a crash between the two sends
    /// again (at least once), never loses the record of a delivery that is marked done.
    async fn record(&mut self, plan: Plan, now_ms: u64) -> Result<Vec<AlertDelivery>, AlertsError> {
        let Plan { records, updates, .. } = plan;
        let stream: Arc<str> = Arc::from(self.options.stream.as_str());
        for r in &records {
            let queued = self.journal.submit(&stream, Body::record(r));
            if queued.is_none() {
                // The log's buffer is full: the delivery happened, its record is counted in the
                // next gap event instead of being written.
                tracing::error!(sink = %r.sink, "an alert delivery record was dropped: the event log's buffer is full");
            }
        }
        if !records.is_empty() {
            match tokio::time::timeout(Duration::from_secs(5), self.journal.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "alert delivery records could not be written to the log"),
                Err(_) => tracing::error!("alert delivery records are not in the log yet (it is slow or failing)"),
            }
        }
        self.store.update(updates, now_ms).await?;
        Ok(records)
    }

    /// Every outbox message, oldest first (inspection and tests).
    pub async fn outbox(&mut self) -> Result<Vec<OutboxItem>, AlertsError> {
        Ok(self.store.all().await?)
    }
}

/// One delivery round: the messages to send per sink (rendered), and the records and outbox
/// updates decided so far.
#[derive(Default)]
struct Plan {
    sends: Sends,
    records: Vec<AlertDelivery>,
    updates: Vec<(i64, OutboxState, u32, u64, Option<String>)>,
}

/// Per sink, its messages to send now with their rendered bodies, in order.
type Sends = Vec<(Webhook, Vec<(OutboxItem, Vec<u8>)>)>;

/// What one sink answered: per message, its answer, or `None` when it was held back behind a
/// failed one of the same sink.
type Answers = Vec<(Webhook, Vec<(OutboxItem, Option<Sent>)>)>;

/// Sends every sink's messages, sinks in parallel, each sink's in order; after a failure worth
/// retrying the rest of that sink's wait for the same retry instead of hammering a sink that is
/// down.
async fn send_all(client: &reqwest::Client, sends: Sends) -> Answers {
    let mut tasks = tokio::task::JoinSet::new();
    for (hook, batch) in sends {
        let client = client.clone();
        tasks.spawn(async move {
            let mut results = Vec::new();
            let mut items = batch.into_iter();
            for (item, body) in items.by_ref() {
                let sent = send(&client, &hook, body).await;
                let retryable =
                    matches!(sent.answer(), Answer::Transport) || matches!(sent.status_code, Some(429 | 500..=599));
                results.push((item, Some(sent)));
                if retryable {
                    break;
                }
            }
            results.extend(items.map(|(item, _)| (item, None)));
            (hook, results)
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(answered) = joined {
            out.push(answered);
        }
    }
    out
}

/// What each answer means for its message (retry, give up, done), into the plan's records and
/// outbox updates. No I/O.
fn settle(policy: &RetryPolicy, answers: Answers, now_ms: u64, plan: &mut Plan) {
    for (hook, results) in answers {
        let mut held_until: Option<u64> = None;
        for (item, sent) in results {
            let Some(sent) = sent else {
                // Held back behind a failed message of the same sink.
                let at = held_until.unwrap_or(now_ms + 1_000);
                plan.updates
                    .push((item.id, OutboxState::Pending, item.attempts, at, item.last_error));
                continue;
            };
            let attempt = item.attempts.saturating_add(1);
            let verdict = decide(
                policy,
                sent.answer(),
                attempt,
                item.created_ms,
                now_ms,
                jitter(&item.notice.fingerprint, &item.sink, attempt),
            );
            let problem = sent.problem();
            let (outcome, state, next) = match verdict {
                Verdict::Delivered => (DeliveryOutcome::Delivered, OutboxState::Delivered, None),
                Verdict::Retry { at_ms } => {
                    held_until = Some(at_ms);
                    (DeliveryOutcome::Retrying, OutboxState::Pending, Some(at_ms))
                }
                Verdict::Reject => (DeliveryOutcome::Rejected, OutboxState::Rejected, None),
                Verdict::GiveUp => (DeliveryOutcome::Abandoned, OutboxState::Abandoned, None),
            };
            log_attempt(&hook, &item, attempt, outcome, &sent, next, now_ms);
            plan.records.push(record(
                &item,
                now_ms,
                attempt,
                outcome,
                sent.status_code,
                problem.clone(),
                next,
            ));
            plan.updates
                .push((item.id, state, attempt, next.unwrap_or(item.next_attempt_ms), problem));
        }
    }
}

fn fold(r: &Read, episodes: &mut Episodes, quiet: u64, out: &mut Vec<Notice>) {
    if r.event_type == OPERATOR_COMMAND {
        match crate::journal::decode_record::<OperatorCommand>(r) {
            Ok(c) => episodes.command(&r.stream, c.at_ms, c.operator),
            Err(e) => {
                tracing::error!(position = r.position, error = %e, "an operator command does not decode; the alert will not say who")
            }
        }
        return;
    }
    match codec::decode(&r.event_type, r.event_version, &r.payload) {
        Ok(Event::Transitioned(t)) => episodes.observe(&r.stream, &t, quiet, out),
        Ok(_) => {}
        // Skipping it is loud: `breakerbox audit` and `replay` report the same position.
        Err(e) => tracing::error!(position = r.position, error = %e, "a transition does not decode; no alert for it"),
    }
}

/// A fleet node's fold: only the fleet alert leader's records make notices.
fn fold_fleet(r: &Read, out: &mut Vec<Notice>) {
    if r.event_type != crate::journal::FLEET_ALERT {
        return;
    }
    match crate::journal::decode_record::<crate::journal::FleetAlert>(r) {
        Ok(a) => out.push(Notice::of_fleet(&a)),
        Err(e) => tracing::error!(position = r.position, error = %e, "a fleet alert does not decode; not announced"),
    }
}

fn record(
    item: &OutboxItem,
    at_ms: u64,
    attempt: u32,
    outcome: DeliveryOutcome,
    status_code: Option<u16>,
    error: Option<String>,
    next_attempt_ms: Option<u64>,
) -> AlertDelivery {
    AlertDelivery {
        at_ms,
        breaker: item.notice.breaker.clone(),
        status: item.notice.status,
        sink: item.sink.clone(),
        fingerprint: item.notice.fingerprint.clone(),
        episode_start_ms: item.notice.starts_at_ms,
        attempt,
        outcome,
        status_code,
        error,
        next_attempt_ms,
    }
}

/// One line per attempt worth a human's attention, never with the URL: a rejection once, the
/// first failure of a message and every tenth after it, the delivery after failures, giving up.
fn log_attempt(
    hook: &Webhook,
    item: &OutboxItem,
    attempt: u32,
    outcome: DeliveryOutcome,
    sent: &Sent,
    next: Option<u64>,
    now_ms: u64,
) {
    let (sink, breaker, status) = (
        hook.name.as_str(),
        item.notice.breaker.as_str(),
        item.notice.status.as_str(),
    );
    let what = sent.problem().unwrap_or_default();
    match outcome {
        DeliveryOutcome::Delivered if attempt > 1 => {
            tracing::info!(
                sink,
                breaker,
                status,
                attempt,
                "alert delivered after {} failed attempts",
                attempt - 1
            )
        }
        DeliveryOutcome::Delivered => tracing::debug!(sink, breaker, status, "alert delivered"),
        DeliveryOutcome::Retrying if attempt == 1 || attempt.is_multiple_of(10) => tracing::warn!(
            sink,
            breaker,
            status,
            attempt,
            retry_in_ms = next.unwrap_or(now_ms).saturating_sub(now_ms),
            "alert not delivered to sink {sink:?} ({what}); retrying"
        ),
        DeliveryOutcome::Retrying => {}
        DeliveryOutcome::Rejected => tracing::error!(
            sink,
            breaker,
            status,
            status_code = sent.status_code,
            fingerprint = item.notice.fingerprint,
            "alert rejected by sink {sink:?}: {what}; not retried (a 4xx means the request itself is wrong: check the sink's url and format)"
        ),
        DeliveryOutcome::Abandoned => tracing::error!(
            sink,
            breaker,
            status,
            attempt,
            "alert abandoned after {attempt} attempts: sink {sink:?} kept failing ({what}) past alerts.give_up_after"
        ),
    }
}

/// A running notifier (see [`Notifier::start`]).
pub struct NotifierHandle {
    stop: tokio::sync::watch::Sender<bool>,
    sinks: Arc<NewSinks>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Settings handed to the notifier's thread: taken at its next step.
#[derive(Default)]
struct NewSinks {
    pending: std::sync::Mutex<Option<(AlertsConfig, reqwest::Client)>>,
    wake: tokio::sync::Notify,
}

impl NewSinks {
    fn hand_over(&self, config: AlertsConfig, client: reqwest::Client) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) = Some((config, client));
        // A permit is kept if the thread is not waiting yet: the wake is never lost.
        self.wake.notify_one();
    }
}

impl NotifierHandle {
    /// Gives the running notifier new sinks and settings ([`Notifier::reconfigure`]); its next
    /// step uses them.
    pub fn reconfigure(&self, config: AlertsConfig) -> Result<(), AlertsError> {
        let client = client(&config)?;
        self.sinks.hand_over(config, client);
        Ok(())
    }

    /// Stops it and waits for its thread. A send in flight is abandoned; its message stays in
    /// the outbox and is sent again by the next run (at least once).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = crate::journal::joined(t).await;
        }
    }
}

impl Drop for NotifierHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The alert notifier of a long-running process (`breakerbox serve`), as a reload sees it:
/// running while the configuration has sinks, given the new sinks by every reload
/// ([`crate::actor::Reloader`] in a running process), started by a reload that adds the first ones. A reload that
/// removes every sink leaves it running with none, so what waited for the old ones is closed
/// (abandoned, "no longer configured") rather than left pending.
pub struct Alerting {
    journal: Arc<Journal>,
    options: NotifierOptions,
    running: Arc<std::sync::Mutex<Option<NotifierHandle>>>,
}

impl Alerting {
    /// Starts the notifier if `config` has sinks (see [`Notifier::start`]).
    pub async fn start(
        journal: Arc<Journal>,
        config: &AlertsConfig,
        options: NotifierOptions,
    ) -> Result<Alerting, AlertsError> {
        let running = if config.enabled() {
            Some(Notifier::start(journal.clone(), config.clone(), options.clone()).await?)
        } else {
            None
        };
        Ok(Alerting {
            journal,
            options,
            running: Arc::new(std::sync::Mutex::new(running)),
        })
    }

    /// Is a notifier running?
    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Stops the notifier, if one runs (see [`NotifierHandle::stop`]).
    pub async fn stop(&self) {
        let handle = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            h.stop().await;
        }
    }
}

#[async_trait::async_trait]
impl crate::config::Reloadable for Alerting {
    async fn prepare(
        &self,
        config: &crate::config::Config,
    ) -> Result<crate::config::Apply, crate::config::ConfigError> {
        let refuse = |e: AlertsError| crate::config::ConfigError {
            problems: vec![crate::config::Problem {
                location: config
                    .file
                    .as_ref()
                    .map_or_else(|| "default".to_owned(), |p| p.display().to_string()),
                message: format!("alerts: {e}"),
            }],
        };
        let alerts = config.alerts.clone();
        let slot = self.running.clone();
        if self.is_running() {
            // Built here, so a client that cannot be made refuses the reload instead of
            // leaving the notifier on the old sinks after the rest was applied.
            let client = client(&alerts).map_err(refuse)?;
            return Ok(Box::new(move || {
                if let Some(h) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    h.sinks.hand_over(alerts, client);
                }
            }));
        }
        if !alerts.enabled() {
            return Ok(Box::new(|| {}));
        }
        let notifier = Notifier::open(self.journal.clone(), alerts, self.options.clone())
            .await
            .map_err(refuse)?;
        Ok(Box::new(move || match notifier.spawn() {
            Ok(h) => *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(h),
            Err(e) => tracing::error!(error = %e, "the alert notifier could not start; no alerts will be sent"),
        }))
    }
}

/// The outcome of one test message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TestResult {
    /// The sink's name.
    pub sink: String,
    /// Its format.
    pub format: &'static str,
    /// Did it answer 2xx?
    pub delivered: bool,
    /// The HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// What went wrong (never the URL).
    pub error: Option<String>,
    /// How long it took.
    pub latency_ms: u64,
}

/// Sends one test message to `hook` (one attempt, no retry) and says how it went; the record
/// for the log is returned beside it.
pub async fn send_test(config: &AlertsConfig, hook: &Webhook, now_ms: u64) -> (TestResult, AlertDelivery) {
    let notice = Notice::test(now_ms);
    let links = Links {
        dashboard_url: config.dashboard_url.clone(),
        db_path: None,
    };
    let body = serde_json::to_vec(&render(hook.format, &notice, &hook.name, &links)).expect("JSON values encode");
    let sent = match client(config) {
        Ok(c) => send(&c, hook, body).await,
        Err(e) => Sent {
            status_code: None,
            retry_after: None,
            error: Some(e.to_string()),
            latency_ms: 0,
        },
    };
    let delivered = sent.status_code.is_some_and(|c| (200..300).contains(&c));
    let outcome = if delivered {
        DeliveryOutcome::Delivered
    } else {
        DeliveryOutcome::Rejected
    };
    let result = TestResult {
        sink: hook.name.clone(),
        format: hook.format.as_str(),
        delivered,
        status_code: sent.status_code,
        error: sent.problem(),
        latency_ms: sent.latency_ms,
    };
    let record = AlertDelivery {
        at_ms: now_ms,
        breaker: String::new(),
        status: AlertStatus::Test,
        sink: hook.name.clone(),
        fingerprint: notice.fingerprint,
        episode_start_ms: now_ms,
        attempt: 1,
        outcome,
        status_code: sent.status_code,
        error: result.error.clone(),
        next_attempt_ms: None,
    };
    (result, record)
}
