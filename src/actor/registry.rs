//! The registry (the seed's CircuitBreakerManager): starts one actor per breaker key from the
//! configuration, each recovered from the log, on an actix system it owns on its own thread, so
//! callers on any runtime (or none) never need `#[actix::main]`.

use super::driver::ActorOptions;
use super::gate::Gate;
use super::handle::{BreakerHandle, Inner};
use super::service::{CommandResult, Reconfigure, ServiceActor, Settle};
use crate::clock::Clock;
use crate::config::{BreakerConfig, Config};
use crate::journal::Operator;
use crate::journal::{Body, Claim, DEFAULT_LEASE_TTL, Holder, Journal, JournalError, Lease};
use actix::{Addr, Supervisor, System};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Settings of a registry.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// The clock of the call path and the actors.
    pub clock: Clock,
    /// Actor settings.
    pub actors: ActorOptions,
    /// Buffered outcomes per breaker before callers ask the actor to fold them early.
    pub soft_limit: usize,
    /// Buffered outcomes per breaker at most; past it outcomes are dropped and counted.
    pub hard_limit: usize,
    /// Name this process takes the writer lease under (who writes the breakers' streams): a
    /// [`Holder`] written out, so that another process on this host can tell at once when this
    /// one is gone; any other name is judged by the lease's age only.
    pub holder: String,
    /// The lease's time to live, recorded with it; renewed every third of it.
    pub lease_ttl: Duration,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            clock: Clock::system(),
            actors: ActorOptions::default(),
            soft_limit: 4_096,
            hard_limit: 1_000_000,
            holder: Holder::this_process("breakerbox").to_string(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// Why a registry could not start.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The log could not be read or written: see the journal error.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Another process writes these breakers' streams and is alive (it renewed its lease while
    /// this one waited): run beside it as a reader (CLI), or stop it.
    #[error("the event log is owned by another process: {account}; only one process may run the breakers")]
    LeaseHeld {
        /// Who holds the lease.
        holder: String,
        /// Who it is and how it stands, for people.
        account: String,
    },
    /// The actor system could not start.
    #[error("starting the actor system: {0}")]
    System(String),
    /// Breakers defined in code ([`Registry::builder`]) that cannot work: every problem named.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
}

/// Breakers from code, no TOML file: see [`Registry::builder`].
#[derive(Default)]
pub struct RegistryBuilder {
    breakers: Vec<crate::config::CodeBreaker>,
    journal: Option<Arc<Journal>>,
    options: Option<RegistryOptions>,
}

impl RegistryBuilder {
    /// A breaker (`service`, or `service/operation`) with `policy` over the embedded defaults.
    pub fn breaker(mut self, key: &str, policy: crate::breaker::Policy) -> Self {
        self.breakers.push(crate::config::CodeBreaker {
            key: key.to_owned(),
            policy,
            call_timeout_ms: None,
        });
        self
    }

    /// The call timeout of the breaker added last (default 10 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        if let Some(b) = self.breakers.last_mut() {
            b.call_timeout_ms = Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64);
        }
        self
    }

    /// The log to write (default: [`Journal::in_memory`], for tests and examples).
    pub fn journal(mut self, journal: Arc<Journal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The registry's options (a manual [`Clock`] for tests, actor settings).
    pub fn options(mut self, options: RegistryOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Checks the breakers as a configuration file would be ([`crate::config::Config::of_breakers`])
    /// and starts them ([`Registry::start`]).
    pub async fn start(self) -> Result<Registry, RegistryError> {
        let config = crate::config::Config::of_breakers(&self.breakers)?;
        let journal = match self.journal {
            Some(j) => j,
            None => Arc::new(Journal::in_memory().await.map_err(JournalError::from)?),
        };
        Registry::start(&config, journal, self.options.unwrap_or_default()).await
    }
}

struct Started {
    key: String,
    addr: Addr<ServiceActor>,
    gate: Arc<Gate>,
    config: BreakerConfig,
}

/// All breakers of a configuration, running.
pub struct Registry {
    handles: BTreeMap<String, BreakerHandle>,
    configs: Mutex<BTreeMap<String, BreakerConfig>>,
    addrs: BTreeMap<String, Addr<ServiceActor>>,
    journal: Arc<Journal>,
    clock: Clock,
    system: System,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Registry {
    /// Breakers defined in code instead of a TOML file:
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use breakerbox::actor::{Clock, Registry, RegistryOptions};
    /// use breakerbox::breaker::{Policy, State};
    /// let clock = Clock::manual(1_764_000_000_000);
    /// let registry = Registry::builder()
    ///     .breaker("stripe", Policy::consecutive(2, 30_000))
    ///     .call_timeout(std::time::Duration::from_secs(2))
    ///     .options(RegistryOptions { clock: clock.clone(), ..RegistryOptions::default() })
    ///     .start()
    ///     .await
    ///     .unwrap();
    /// let stripe = registry.get("stripe").unwrap();
    /// for _ in 0..2 {
    ///     let _ = stripe.call("", async { Err::<(), _>("502") }).await;
    /// }
    /// stripe.inspect().await; // let the actor fold what callers recorded
    /// assert_eq!(stripe.state(), State::Open);
    /// registry.shutdown().await.unwrap();
    /// registry.journal().close().await;
    /// # });
    /// ```
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// Takes the writer lease, recovers every configured breaker from the log (applying the
    /// configured policy if it changed, state kept) and starts its actor.
    pub async fn start(
        config: &Config,
        journal: Arc<Journal>,
        options: RegistryOptions,
    ) -> Result<Registry, RegistryError> {
        // Before the host builds clients for the reqwest middleware.
        crate::tls::init();
        take_lease(&journal, &options.holder, options.lease_ttl).await?;
        let now = options.clock.now_ms();
        let mut recovered = Vec::new();
        for b in &config.breakers {
            let policy = b.policy_at(now);
            let found = journal.recover(&b.key, policy.clone()).await?;
            if let Some(why) = found.skipped(&b.key) {
                tracing::error!(breaker = %b.key, "{why}");
            }
            let mut breaker = found.breaker;
            // A new stream records the policy it starts with, so its log is self-contained
            // (replay and export know the policy in force from the first event on).
            if breaker.policy() != &policy || found.last_seq == 0 {
                let mut events = Vec::new();
                if breaker.set_policy(now, policy, &mut events).is_ok() {
                    let stream: Arc<str> = Arc::from(b.key.as_str());
                    for e in events {
                        journal.submit(&stream, Body::Breaker(e));
                    }
                }
            }
            recovered.push((b.clone(), breaker));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (journal2, clock2, opts2) = (journal.clone(), options.clock.clone(), options.clone());
        let thread = std::thread::Builder::new()
            .name("breakerbox-actors".into())
            .spawn(move || {
                let sys = System::new();
                let started = sys.block_on(async move {
                    recovered
                        .into_iter()
                        .map(|(config, breaker)| {
                            let gate = Arc::new(Gate::new(opts2.soft_limit, opts2.hard_limit));
                            // Published before any handle exists, so no call sees a default state.
                            gate.publish(&breaker.admission());
                            let key: Arc<str> = Arc::from(config.key.as_str());
                            let (g, j, c, o, cfg) = (
                                gate.clone(),
                                journal2.clone(),
                                clock2.clone(),
                                opts2.actors.clone(),
                                config.clone(),
                            );
                            let addr = Supervisor::start(move |_| ServiceActor::new(key, breaker, cfg, g, j, c, o));
                            Started {
                                key: config.key.clone(),
                                addr,
                                gate,
                                config,
                            }
                        })
                        .collect::<Vec<_>>()
                });
                let _ = tx.send((System::current(), started));
                let _ = sys.run();
            })
            .map_err(|e| RegistryError::System(e.to_string()))?;
        let (system, started) = rx
            .await
            .map_err(|_| RegistryError::System("the actor thread stopped".into()))?;
        // Operation handles first, so each service handle can hold its operations'.
        let mut handles: BTreeMap<String, BreakerHandle> = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let (ops, services): (Vec<_>, Vec<_>) = started.into_iter().partition(|s| s.config.operation.is_some());
        let make = |s: &Started, operations: BTreeMap<String, BreakerHandle>| BreakerHandle {
            inner: Arc::new(Inner {
                key: intern(&s.key),
                gate: s.gate.clone(),
                addr: s.addr.clone(),
                clock: options.clock.clone(),
                call_timeout: Duration::from_millis(s.config.call_timeout_ms()),
                statuses: s.config.classifier(),
                operations,
                last_ok: Default::default(),
            }),
        };
        for s in &ops {
            handles.insert(s.key.clone(), make(s, BTreeMap::new()));
            addrs.insert(s.key.clone(), s.addr.clone());
        }
        for s in &services {
            let operations = ops
                .iter()
                .filter(|o| o.config.service == s.config.service)
                .map(|o| (o.config.operation.clone().unwrap_or_default(), handles[&o.key].clone()))
                .collect();
            handles.insert(s.key.clone(), make(s, operations));
            addrs.insert(s.key.clone(), s.addr.clone());
        }
        let configs = Mutex::new(config.breakers.iter().map(|b| (b.key.clone(), b.clone())).collect());
        let mut tasks = Vec::new();
        // Commands other processes ask for through the log (see `remote`), from now on.
        let start_position = journal.last_position().await.map_err(JournalError::from)?;
        tasks.push(tokio::spawn(follow_requests(
            journal.clone(),
            handles.clone(),
            options.holder.clone(),
            start_position,
        )));
        Ok(Registry {
            handles,
            configs,
            addrs,
            journal,
            clock: options.clock,
            system,
            thread: Mutex::new(Some(thread)),
            tasks: Mutex::new(tasks),
        })
    }

    /// The handle of a breaker key (`stripe`, `stripe/customers.create`).
    pub fn get(&self, key: &str) -> Option<&BreakerHandle> {
        self.handles.get(key)
    }

    /// Every handle, by key.
    pub fn handles(&self) -> impl Iterator<Item = &BreakerHandle> {
        self.handles.values()
    }

    /// The journal the breakers write to.
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// The registry's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The health report of the breakers `keys` now: the one [`crate::replay::health_report`],
    /// from the live breakers (their published state, trial permits in use) and `projection`
    /// (brought up to date). `budget` gives a breaker's configured latency budget. A breaker
    /// whose actor does not answer (the registry is stopping) is left out, and logged.
    pub async fn report(
        &self,
        keys: &[String],
        budget: impl Fn(&str) -> u64,
        projection: &mut crate::replay::Projection,
    ) -> crate::replay::HealthReport {
        let mut live = Vec::with_capacity(keys.len());
        for k in keys {
            let Some(handle) = self.get(k) else { continue };
            let Some(breaker) = handle.inspect().await else {
                tracing::error!(breaker = %k, "a breaker's actor did not answer; it is left out of the health document");
                continue;
            };
            live.push((k, handle, breaker, budget(k)));
        }
        let now = self.clock.now_ms();
        let breakers: Vec<crate::replay::BreakerNow<'_>> = live
            .iter()
            .map(|(k, handle, breaker, budget)| crate::replay::BreakerNow {
                key: k,
                breaker,
                state: handle.state(),
                trial_permits_in_use: handle.trial_permits(),
                latency_budget_ms: *budget,
            })
            .collect();
        crate::replay::health_report(&self.journal, projection, &breakers, now, self.journal.condition()).await
    }

    /// Applies a reloaded configuration to the running breakers: each keeps its state, window and
    /// trial permits; its new policy is recorded as an event. Breakers added or removed by the
    /// reload are reported, not started or stopped (that takes a restart).
    pub async fn reload(&self, config: &Config) -> crate::config::Reload {
        let mut report = crate::config::Reload::default();
        let now = self.clock.now_ms();
        for b in &config.breakers {
            match self.addrs.get(&b.key) {
                Some(addr) => {
                    let old = self
                        .configs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(b.key.clone(), b.clone());
                    if old.as_ref() == Some(b) {
                        continue;
                    }
                    let _ = addr.send(Reconfigure(b.clone())).await;
                    if old.is_none_or(|o| o.policy_at(now) != b.policy_at(now)) {
                        report.changed.push((b.key.clone(), b.policy_at(now)));
                    }
                }
                None => report.added.push(b.key.clone()),
            }
        }
        report.removed = self
            .addrs
            .keys()
            .filter(|k| config.breaker(k).is_none())
            .cloned()
            .collect();
        report
    }

    /// An operator command on a breaker by key.
    pub async fn command(
        &self,
        key: &str,
        command: crate::breaker::Command,
        operator: Operator,
    ) -> Option<Result<CommandResult, JournalError>> {
        let h = self.handles.get(key)?;
        Some(match command {
            crate::breaker::Command::Reset => h.reset(operator).await,
            crate::breaker::Command::ForceOpen => h.force_open(operator).await,
            crate::breaker::Command::Disable => h.disable(operator).await,
        })
    }

    /// Folds every buffered outcome, writes a snapshot of each breaker, stops the actors, and
    /// waits until the journal has it all — for [`DEFAULT_STOP_WITHIN`] at most. The journal
    /// itself stays open (close it after).
    pub async fn shutdown(&self) -> Result<(), JournalError> {
        self.shutdown_within(DEFAULT_STOP_WITHIN).await
    }

    /// [`Registry::shutdown`], waiting at most `within` for the log: while it is failing the
    /// answer is [`JournalError::NotDurable`] naming how it stands, never a wait without end.
    pub async fn shutdown_within(&self, within: Duration) -> Result<(), JournalError> {
        let deadline = tokio::time::Instant::now() + within;
        for task in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            task.abort();
        }
        for addr in self.addrs.values() {
            // Folds and submits; nothing here waits on the log.
            let _ = addr.send(Settle).await;
        }
        self.system.stop();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = crate::journal::joined(t).await;
        }
        match tokio::time::timeout_at(deadline, self.journal.flush()).await {
            Ok(flushed) => flushed.map(|_| ()),
            Err(_) => Err(JournalError::NotDurable(self.journal.condition())),
        }
    }
}

/// How long [`Registry::shutdown`] waits for the log to take the breakers' last events.
pub const DEFAULT_STOP_WITHIN: Duration = Duration::from_secs(3);

/// Takes the writer lease: at once if nobody holds it or its holder is dead (its lease lapsed, or
/// it ran on this host and its process is gone). A holder that may be alive gets one ttl: a
/// live one renews within a third of it (then this start fails, naming it); a dead one's lease
/// lapses and is taken.
async fn take_lease(journal: &Journal, me: &str, ttl: Duration) -> Result<(), RegistryError> {
    let started = std::time::Instant::now();
    let mut first: Option<Lease> = None;
    loop {
        let now = crate::clock::system_now_ms();
        let (lease, standing) = match journal.claim_lease(me, ttl).await? {
            Claim::Taken { replaced } => {
                if let Some((dead, standing)) = replaced {
                    tracing::warn!(
                        previous = dead.holder,
                        "took over the event log: {}",
                        dead.account(standing, now, ttl)
                    );
                }
                return Ok(());
            }
            Claim::Held { lease, standing } => (lease, standing),
        };
        let renewed = first
            .as_ref()
            .is_some_and(|f| f.holder == lease.holder && f.renewed_at_ms != lease.renewed_at_ms);
        if renewed || started.elapsed() > lease.ttl(ttl) + Duration::from_secs(1) {
            return Err(RegistryError::LeaseHeld {
                account: lease.account(standing, now, ttl),
                holder: lease.holder,
            });
        }
        if first.as_ref().is_none_or(|f| f.holder != lease.holder) {
            first = Some(lease);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies the `command_request`s other processes append to the log (polled every 200 ms, so a
/// command takes effect within a second), answering each with an audited `operator_command`.
async fn follow_requests(journal: Arc<Journal>, handles: BTreeMap<String, BreakerHandle>, me: String, mut after: i64) {
    use crate::journal::{COMMAND_REQUEST, CommandRequest};
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let page = match journal.read_range(&[COMMAND_REQUEST], 0, i64::MAX, after, 100).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading command requests failed; retrying");
                continue;
            }
        };
        for e in page {
            after = e.position;
            let request = match crate::journal::decode_record::<CommandRequest>(&e) {
                Ok(r) => r,
                Err(err) => {
                    tracing::error!(position = e.position, error = %err, "a command request does not decode; skipped");
                    continue;
                }
            };
            let Some(handle) = handles.get(&request.target) else {
                tracing::warn!(
                    target = request.target,
                    holder = me,
                    "command request for an unknown breaker"
                );
                continue;
            };
            match handle
                .operate_for(
                    request.command,
                    request.operator,
                    super::command::Asked::Request(e.position),
                )
                .await
            {
                Ok(_) => {}
                // Refused (a fleet override stands): the requester is told why, in the log.
                Err(JournalError::Refused(why)) => {
                    let answer = crate::journal::CommandRefused {
                        at_ms: crate::clock::system_now_ms(),
                        request_position: e.position,
                        why,
                    };
                    let stream: Arc<str> = Arc::from(request.target.as_str());
                    let _ = journal.submit(&stream, Body::record(&answer));
                }
                Err(err) => {
                    tracing::error!(error = %err, target = request.target, "applying a requested command failed")
                }
            }
        }
    }
}

/// A breaker key for the process's lifetime. Keys are few (one per configured breaker) and
/// handles hand them out in every error, so they are leaked once rather than reference-counted
/// on every rejection; a registry started again reuses the interned copy.
fn intern(key: &str) -> &'static str {
    static KEYS: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = keys.iter().find(|k| **k == key) {
        return k;
    }
    let k: &'static str = Box::leak(key.to_owned().into_boxed_str());
    keys.push(k);
    k
}
