//! `breakerbox demo`: three stand-in upstreams on 127.0.0.1 (calcom, retell, stripe) with
//! scripted trouble, and real HTTP traffic to them through the breakers (a reqwest client with
//! the [`BreakerMiddleware`]), all recorded in the event log. The command (`src/cli/demo.rs`)
//! serves the API and dashboard and prints; this module is the machinery, usable from tests.

mod script;
mod upstream;

pub use script::{Reply, SERVICES, Script};
pub use upstream::{pattern, start as start_upstream, start_bad_network, start_on as start_upstream_on};

use crate::actor::{BreakerHandle, BreakerMiddleware, Registry};
use crate::config::{Config, ConfigError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The demo's configuration, with OPEN periods of seconds.
pub const CONFIG: &str = include_str!("demo.toml");

/// Requests per second to each stand-in.
pub const RATE_PER_SECOND: u64 = 10;

/// The demo configuration's text for stand-ins at these addresses (service → address).
pub fn config_text(upstreams: &BTreeMap<&str, SocketAddr>) -> String {
    let mut text = CONFIG.to_owned();
    for (service, addr) in upstreams {
        text = text.replace(&format!("{{{service}}}"), &addr.to_string());
    }
    text
}

/// The demo configuration for stand-ins at these addresses (service → address).
pub fn config(upstreams: &BTreeMap<&str, SocketAddr>) -> Result<Config, ConfigError> {
    // The demo's own settings only: the environment must not turn it into something else.
    Config::from_toml(Path::new("demo.toml"), &config_text(upstreams), &BTreeMap::new())
}

/// The path each stand-in is called on, as its real API would be.
fn path(service: &str) -> &'static str {
    match service {
        "calcom" => "/v2/bookings",
        "retell" => "/v2/list-calls",
        _ => "/v1/charges",
    }
}

/// Sends traffic to every stand-in through its breaker until `stop` turns true, then waits for
/// the requests in flight (at most the call timeout). A request that fails or is rejected is
/// answered from the last good response — a fallback, recorded as such in the log.
pub async fn drive(registry: &Registry, upstreams: &BTreeMap<&str, SocketAddr>, stop: watch::Receiver<bool>) {
    let mut services = JoinSet::new();
    for (service, addr) in upstreams {
        let Some(handle) = registry.get(service).cloned() else {
            continue;
        };
        let url = format!("http://{addr}{}", path(service));
        services.spawn(service_traffic(handle, url, stop.clone()));
    }
    while services.join_next().await.is_some() {}
}

async fn service_traffic(handle: BreakerHandle, url: String, mut stop: watch::Receiver<bool>) {
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BreakerMiddleware::new(handle.clone()))
        .build();
    let last_good: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RATE_PER_SECOND));
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let (client, url, handle, last_good) = (client.clone(), url.clone(), handle.clone(), last_good.clone());
        in_flight.spawn(async move {
            let body = match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            };
            let mut cached = last_good.lock().unwrap_or_else(|e| e.into_inner());
            match body {
                Some(b) => *cached = Some(b),
                None if cached.is_some() => handle.record_fallback(),
                None => {}
            }
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}
