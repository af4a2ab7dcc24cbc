//! The composition root: the one place that opens the log, starts the breakers and everything a
//! long-running process keeps beside them — the metrics projection, retention, the alert
//! notifier, the config reload (SIGHUP, a changed file, `POST /api/config/reload`), the HTTP
//! API — and stops them in order. `breakerbox serve` and `breakerbox demo` are an [`App`]; an
//! embedding application can be one too. The registry only runs breakers.

use crate::actor::fleet::FleetFollower;
use crate::actor::{Registry, RegistryError, RegistryOptions, Reloader, watch};
use crate::alerts::{Alerting, AlertsError, NotifierOptions};
use crate::config::{Config, LoadOptions};
use crate::http::{ApiState, auth::Token, server};
use crate::journal::fleet::{FleetError, FleetOptions, HealthSlot, ShipStatus, Shipper};
use crate::journal::{Journal, JournalError, JournalOptions, StoreError};
use crate::proxy::{Proxy, ProxyError, ProxyOptions};
use crate::replay::Projection;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// What an [`App`] runs beside the breakers.
pub struct AppOptions {
    /// How the log is written.
    pub journal: JournalOptions,
    /// The breakers' settings (clock, lease holder, buffers, actor settings).
    pub registry: RegistryOptions,
    /// Per-call outcomes older than this are compacted into per-minute summaries (None: never).
    pub retention: Option<Duration>,
    /// How often retention runs.
    pub compact_every: Duration,
    /// How often the metrics projection folds new events (None: not kept by this process; the
    /// HTTP API still brings it up to date when asked).
    pub project_every: Option<Duration>,
    /// How often a `chain_anchor` records the heads of the streams written since the last one
    /// (None: never; one is also written when the app stops). See `docs/durability.md`.
    pub anchor_every: Option<Duration>,
    /// Deliver the configuration's alerts (`[alerts]`; nothing runs without sinks).
    pub alerts: bool,
    /// Reload from this file and environment on SIGHUP or when the file changes (None: no
    /// reload but through the HTTP API, and none there either).
    pub reload: Option<LoadOptions>,
    /// Serve the HTTP API (None: no server). Needs an actix-web runtime (`actix_web::rt::System`).
    pub http: Option<HttpOptions>,
    /// Run the sidecar proxy in front of the configuration's upstreams (None: no proxy).
    pub proxy: Option<ProxyOptions>,
    /// Ship the log to the fleet's log on PostgreSQL, as node [`JournalOptions::node`] (None:
    /// this process's log is its own). See `docs/fleet.md`.
    pub fleet: Option<FleetOptions>,
    /// How long [`App::shutdown`] may take in all, whatever state the log is in (a full disk,
    /// a corrupt page, a lock held by another process): what the log has not taken by then is
    /// reported as lost, not waited on.
    pub stop_within: Duration,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            journal: JournalOptions::default(),
            registry: RegistryOptions::default(),
            retention: Some(Duration::from_secs(7 * 86_400)),
            compact_every: Duration::from_secs(3_600),
            project_every: Some(Duration::from_secs(1)),
            anchor_every: Some(Duration::from_secs(600)),
            alerts: true,
            reload: None,
            http: None,
            proxy: None,
            fleet: None,
            stop_within: DEFAULT_STOP_WITHIN,
        }
    }
}

/// [`AppOptions::stop_within`]'s default: 5 s.
pub const DEFAULT_STOP_WITHIN: Duration = Duration::from_secs(5);

/// Where and how the HTTP API is served.
pub struct HttpOptions {
    /// The address.
    pub bind: SocketAddr,
    /// Tokens besides the configuration's `[api.tokens]` (the environment's, a one-time one).
    pub tokens: Vec<Token>,
    /// When `bind` is taken, serve on any free loopback port instead (the demo does).
    pub any_port_if_taken: bool,
}

/// Why an app could not start.
#[derive(Debug, Error)]
pub enum AppError {
    /// The log could not be opened.
    #[error("opening {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: StoreError,
    },
    /// The breakers could not start (the log is another process's, or unreadable).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The alert notifier could not start.
    #[error("starting the alert notifier: {0}")]
    Alerts(#[from] AlertsError),
    /// SIGHUP, SIGTERM or SIGINT could not be listened for.
    #[error("listening for signals: {0}")]
    Watch(std::io::Error),
    /// The HTTP API could not bind.
    #[error("binding {bind}: {source}")]
    Bind {
        /// The address.
        bind: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The proxy could not start.
    #[error("starting the proxy: {0}")]
    Proxy(#[from] ProxyError),
    /// Shipping to the fleet's log could not start (the node is another live process's, …).
    #[error("the fleet log: {0}")]
    Fleet(#[from] FleetError),
    /// Stopping: the breakers' last events could not be made durable.
    #[error("stopping: {0}")]
    Stop(#[from] JournalError),
}

/// A running process's parts, owned in one place.
pub struct App {
    journal: Arc<Journal>,
    registry: Arc<Registry>,
    alerting: Option<Arc<Alerting>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    http: Option<(
        actix_web::dev::ServerHandle,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    api: Option<actix_web::web::Data<ApiState>>,
    /// SIGTERM and SIGINT, listened for from the start (see [`App::served`]).
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    addrs: Vec<SocketAddr>,
    proxy: Option<Proxy>,
    shipper: Option<Shipper>,
    /// The fleet's log, when this node ships to one (`GET /api/fleet/health` reads it).
    fleet_url: Option<String>,
    /// Follows the fleet's commands, when this node ships to a fleet log.
    follower: Option<FleetFollower>,
    /// Runs for the fleet's alert leadership, when this node ships to a fleet log and alerts.
    alerter: Option<crate::actor::fleet::FleetAlerter>,
    stop_within: Duration,
}

impl App {
    /// Opens the log at `db`, starts the breakers of `config` on it, and what `options` asks for.
    /// On an error, what was started is stopped again.
    pub async fn start(db: &Path, config: &Config, options: AppOptions) -> Result<App, AppError> {
        let node = options.journal.node.clone();
        let journal = Arc::new(
            Journal::open(db, options.journal)
                .await
                .map_err(|source| AppError::Open {
                    path: db.to_path_buf(),
                    source,
                })?,
        );
        // Before the breakers: a second live process as this node is refused before it starts any.
        let fleet_url = options.fleet.as_ref().map(|f| f.url.clone());
        let follow = options.fleet.as_ref().map(|f| {
            let mut o = crate::actor::fleet::FollowerOptions::new(f.url.clone(), node.to_string());
            o.connect_timeout = f.connect_timeout;
            o.quorum = config.fleet.quorum.clone();
            o
        });
        let shipper = match options.fleet {
            Some(fleet) => match Shipper::start(journal.clone(), &node, &options.registry.holder, fleet).await {
                Ok(s) => Some(s),
                Err(e) => {
                    journal.close().await;
                    return Err(e.into());
                }
            },
            None => None,
        };
        let registry = match Registry::start(config, journal.clone(), options.registry).await {
            Ok(r) => Arc::new(r),
            Err(e) => {
                if let Some(s) = shipper {
                    s.stop(Duration::ZERO).await;
                }
                journal.close().await;
                return Err(e.into());
            }
        };
        // The fleet's standing overrides are applied before the app serves (bounded: a node
        // that cannot read them now applies them as soon as it can).
        let follower = match follow {
            Some(o) => {
                let bound = o.connect_timeout.saturating_mul(2);
                let f = FleetFollower::start(registry.clone(), o);
                if !f.caught_up(bound).await {
                    tracing::warn!("the fleet's overrides could not be read within {bound:?}; applied once they can");
                }
                Some(f)
            }
            None => None,
        };
        let mut app = App {
            journal,
            registry,
            follower,
            alerter: None,
            alerting: None,
            tasks: Vec::new(),
            http: None,
            api: None,
            signals: None,
            addrs: Vec::new(),
            proxy: None,
            shipper,
            fleet_url,
            stop_within: options.stop_within,
        };
        if let Some(every) = options.project_every {
            app.tasks
                .push(tokio::spawn(keep_projection(app.journal.clone(), every)));
        }
        if let Some(shipper) = &app.shipper {
            app.tasks.push(tokio::spawn(publish_health(
                app.registry.clone(),
                config.clone(),
                shipper.health(),
                HEALTH_EVERY,
            )));
        }
        if let Some(every) = options.anchor_every {
            app.tasks.push(tokio::spawn(keep_anchors(app.journal.clone(), every)));
        }
        if let Some(retention) = options.retention {
            app.tasks.push(tokio::spawn(keep_retention(
                app.journal.clone(),
                app.registry.clock().clone(),
                retention,
                options.compact_every,
            )));
        }
        match app
            .start_parts(config, options.alerts, options.reload, options.http, options.proxy)
            .await
        {
            Ok(()) => Ok(app),
            Err(e) => {
                let _ = app.shutdown().await;
                Err(e)
            }
        }
    }

    async fn start_parts(
        &mut self,
        config: &Config,
        alerts: bool,
        reload: Option<LoadOptions>,
        http: Option<HttpOptions>,
        proxy: Option<ProxyOptions>,
    ) -> Result<(), AppError> {
        if http.is_some() || proxy.is_some() {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate()).map_err(AppError::Watch)?;
            let int = signal(SignalKind::interrupt()).map_err(AppError::Watch)?;
            self.signals = Some((term, int));
        }
        if let Some(p) = proxy {
            self.proxy = Some(Proxy::start(&self.registry, config, p)?);
        }
        if alerts {
            // Alerts from the log, on the notifier's own thread; the breakers never wait for it.
            // A node of a fleet announces the fleet's episodes only (one leader decides them),
            // so the fleet pages once, not once per node (docs/alerts.md, "A fleet").
            let options = NotifierOptions {
                fleet: self.fleet_url.is_some(),
                ..NotifierOptions::default()
            };
            let alerting = Alerting::start(self.journal.clone(), &config.alerts, options).await?;
            self.alerting = Some(Arc::new(alerting));
            if let (Some(url), true) = (&self.fleet_url, config.alerts.enabled()) {
                self.alerter = Some(crate::actor::fleet::FleetAlerter::start(
                    self.journal.clone(),
                    crate::actor::fleet::AlerterOptions {
                        url: url.clone(),
                        quiet: Duration::from_millis(config.alerts.quiet_period_ms),
                        every: HEALTH_EVERY,
                        connect_timeout: Duration::from_secs(5),
                    },
                ));
            }
        }
        let state = http
            .as_ref()
            .map(|h| ApiState::new(self.registry.clone(), config.clone(), h.tokens.clone()));
        let reloader = reload.map(|options| {
            // One reload for SIGHUP, the file watcher and POST /api/config/reload: policies, the
            // API's budgets and tokens, the alert sinks, all from one read of the file or none.
            let mut r = Reloader::new(self.registry.clone(), options);
            if let Some(s) = &state {
                r = r.with(s.settings());
            }
            if let Some(a) = &self.alerting {
                r = r.with(a.clone());
            }
            Arc::new(r)
        });
        if let Some(r) = &reloader {
            self.tasks
                .push(watch(r.clone(), Duration::from_secs(2), None).map_err(AppError::Watch)?);
        }
        if let (Some(h), Some(state)) = (http, state) {
            let state = match reloader {
                Some(r) => state.with_reload(r),
                None => state,
            };
            let state = match (&self.shipper, &self.fleet_url) {
                (Some(s), Some(url)) => state.with_fleet(s.watch(), url.clone()),
                _ => state,
            };
            let settings = state.settings();
            let state = actix_web::web::Data::new(state);
            let (server, addrs) = match server(state.clone(), h.bind) {
                Ok(s) => s,
                Err(e) if h.any_port_if_taken && e.kind() == std::io::ErrorKind::AddrInUse => {
                    let any = SocketAddr::from(([127, 0, 0, 1], 0));
                    server(state.clone(), any).map_err(|source| AppError::Bind { bind: any, source })?
                }
                Err(source) => return Err(AppError::Bind { bind: h.bind, source }),
            };
            if let Some(first) = addrs.first() {
                settings.serving_on(*first);
            }
            self.http = Some((server.handle(), actix_web::rt::spawn(server)));
            self.api = Some(state);
            self.addrs = addrs;
        }
        Ok(())
    }

    /// The log.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The breakers.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Where the HTTP API listens (empty without one).
    pub fn http_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Where the proxy listens: the path-prefix listener (service `None`), then one per
    /// `[proxy.ports]` entry. Empty without a proxy.
    pub fn proxy_addrs(&self) -> &[(SocketAddr, Option<String>)] {
        self.proxy.as_ref().map_or(&[], |p| p.addrs())
    }

    /// How far the log is shipped to the fleet's log (None: it is not shipped).
    pub fn shipping(&self) -> Option<ShipStatus> {
        self.shipper.as_ref().map(Shipper::status)
    }

    /// Waits until the fleet's log holds this process's log up to `position` (at once without a
    /// fleet log); how far it is then.
    pub async fn shipped(&self, position: i64) -> Option<ShipStatus> {
        match &self.shipper {
            Some(s) => Some(s.wait_for(|st| st.shipped.is_some_and(|p| p >= position)).await),
            None => None,
        }
    }

    /// Whether alerts are being delivered (the configuration has sinks).
    pub fn alerting(&self) -> bool {
        self.alerting.as_ref().is_some_and(|a| a.is_running())
    }

    /// Waits until SIGTERM or SIGINT (Ctrl-C), or until the HTTP server ends on its own; at once
    /// without a server or a proxy. Its error, if it failed. Then call [`App::shutdown`].
    pub async fn served(&mut self) -> std::io::Result<()> {
        let Some((_, task)) = self.http.as_mut() else {
            if let Some((term, int)) = self.signals.as_mut().filter(|_| self.proxy.is_some()) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            return Ok(());
        };
        let ended = match self.signals.as_mut() {
            Some((term, int)) => tokio::select! {
                r = task => Some(r),
                _ = term.recv() => None,
                _ = int.recv() => None,
            },
            None => Some(task.await),
        };
        match ended {
            None => Ok(()),
            Some(r) => {
                self.http = None;
                r.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            }
        }
    }

    /// Stops everything in order, within [`AppOptions::stop_within`] in all: the HTTP API (event
    /// streams end with a closing event; requests in flight get [`crate::http::SHUTDOWN_GRACE_SECS`]),
    /// the reload watcher, the notifier, the projection and retention, then the breakers (their
    /// last events and snapshots made durable), then the log, cleanly. While the log is failing
    /// it still ends in time, and says what was not written ([`AppError::Stop`]).
    pub async fn shutdown(self) -> Result<(), AppError> {
        let within = self.stop_within;
        self.shutdown_within(within).await
    }

    /// [`App::shutdown`] within `within` instead of [`AppOptions::stop_within`]: for a host that
    /// spent part of its stop bound before stopping the app (the demo, on its summary).
    pub async fn shutdown_within(mut self, within: Duration) -> Result<(), AppError> {
        let deadline = tokio::time::Instant::now() + within;
        if let Some(p) = self.proxy.take() {
            // First: it makes calls. Its requests in flight get up to 2 s, then end as cancelled.
            let _ = tokio::time::timeout_at(deadline, p.stop()).await;
        }
        if let Some(api) = self.api.take() {
            api.stop_streams();
        }
        if let Some((handle, task)) = self.http.take() {
            let _ = tokio::time::timeout_at(deadline, handle.stop(true)).await;
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(f) = self.follower.take() {
            let _ = tokio::time::timeout_at(deadline, f.stop()).await;
        }
        if let Some(a) = self.alerter.take() {
            let _ = tokio::time::timeout_at(deadline, a.stop()).await;
        }
        if let Some(a) = self.alerting.take() {
            let _ = tokio::time::timeout_at(deadline, a.stop()).await;
        }
        // The breakers get what is left but the last second, the log's close that second.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // Never less than half a second, so a healthy log is not reported as failing only
        // because something before took its time.
        let stopped = self
            .registry
            .shutdown_within(
                left.saturating_sub(Duration::from_secs(1))
                    .max(Duration::from_millis(500)),
            )
            .await;
        if stopped.is_ok() {
            // The heads as they are at the end, so what was written up to here is anchored.
            match tokio::time::timeout(Duration::from_millis(500), self.journal.anchor()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "writing the last chain anchor failed"),
                Err(_) => tracing::warn!("writing the last chain anchor took too long; skipped"),
            }
        }
        if let Some(s) = self.shipper.take() {
            // What is not shipped by then stays in the log and goes at the next start.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            s.stop(
                left.saturating_sub(Duration::from_millis(500))
                    .max(Duration::from_millis(500)),
            )
            .await;
        }
        let closed = tokio::time::timeout(
            deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(500)),
            self.journal.close(),
        )
        .await;
        if closed.is_err() {
            tracing::error!("the event log did not close in time; what it had not written is lost");
        }
        stopped.map_err(AppError::Stop)
    }
}

/// Folds new events into the metrics projection every `every`. A failure is logged once per
/// reason and the recovery once, not at every try while an outage lasts (a corrupt file's lasts
/// until the process stops).
async fn keep_projection(journal: Arc<Journal>, every: Duration) {
    let mut projection = Projection::open(&journal);
    let mut tick = tokio::time::interval(every);
    let mut failing: Option<String> = None;
    loop {
        tick.tick().await;
        match projection.catch_up(&journal, 10_000).await {
            Ok(_) => {
                if failing.take().is_some() {
                    tracing::info!("the metrics projection folds new events again");
                }
            }
            Err(e) => {
                let why = e.to_string();
                if failing.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, "folding new events into the metrics projection failed; retrying");
                    failing = Some(why);
                }
            }
        }
    }
}

/// How often a node of a fleet publishes its health ([`publish_health`]): fleet health is at
/// most this plus a shipment stale.
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Puts the node's health document (its own health report, as `/api/health` answers it) where
/// the shipper publishes it to the fleet's log, every `every`: what fleet health merges
/// (`docs/fleet.md`, "Fleet health"). Never on the call path: the breakers do not wait for it.
async fn publish_health(registry: Arc<Registry>, config: Config, slot: HealthSlot, every: Duration) {
    let mut projection = crate::replay::Projection::open(registry.journal());
    let keys: Vec<String> = registry.handles().map(|h| h.key().to_owned()).collect();
    let budget = |k: &str| config.breaker(k).map_or(1_000, |b| b.latency_budget_ms());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let report = registry.report(&keys, budget, &mut projection).await;
        let doc = crate::replay::fleet::NodeDoc::of(&report);
        match serde_json::to_string(&doc) {
            Ok(json) => slot.put(doc.at_ms, json),
            Err(e) => tracing::error!(error = %e, "the node's health document did not encode"),
        }
    }
}

/// Writes a chain anchor every `every` (when heads moved).
async fn keep_anchors(journal: Arc<Journal>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = journal.anchor().await {
            tracing::warn!(error = %e, "writing a chain anchor failed; retrying at the next interval");
        }
    }
}

/// Compacts per-call outcomes older than `retention` every `every`.
async fn keep_retention(journal: Arc<Journal>, clock: crate::clock::Clock, retention: Duration, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match journal.compact(retention.as_millis() as u64, clock.now_ms()).await {
            Ok(r) if r.batches > 0 => {
                tracing::info!(batches = r.batches, calls = r.calls, "compacted old call outcomes")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed; retrying at the next interval"),
        }
    }
}
