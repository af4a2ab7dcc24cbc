//! The HTTP API as an actix-web service a host application mounts (or `breakerbox serve` runs):
//! the seed's health endpoints, operator actions, the audit trail and its live stream,
//! Prometheus metrics and the dashboard. Every route but `GET /healthz` and the dashboard's
//! page (`GET /`, a static page holding no data) needs `Authorization: Bearer <token>`; see
//! `docs/http-api.md`.

pub mod auth;
mod events;
mod health;
mod metrics;

pub use events::frame;

use crate::actor::{Apply, Registry, Reloadable, Reloader};
use crate::config::{Config, ConfigError, Problem};
use crate::replay::Projection;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};
use auth::{Limiter, Token};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// What the handlers share.
pub struct ApiState {
    registry: Arc<Registry>,
    settings: Arc<ApiSettings>,
    reloader: Option<Arc<Reloader>>,
    limiter: Limiter,
    projection: tokio::sync::Mutex<Option<Projection>>,
    health_cache: health::HealthCache,
    tail: events::Tail,
    /// Transitions counted for `/metrics`, by (breaker, from, to), and the log position they
    /// were counted up to.
    transitions_seen: tokio::sync::Mutex<(i64, metrics::TransitionCounts)>,
    /// The last reason the health report could not read the log (logged once, not per request).
    last_read_error: std::sync::Mutex<Option<String>>,
    /// Set when the server stops: every event stream sends a closing event and ends, so a
    /// dashboard left open never holds the shutdown up.
    stopping: tokio::sync::watch::Sender<bool>,
    /// How far the log is shipped to the fleet's log, when it is.
    fleet: Option<tokio::sync::watch::Receiver<crate::journal::fleet::ShipStatus>>,
    /// The fleet's log (its URL, and a reader opened on first use) for `/api/fleet/health`.
    fleet_log: Option<(String, tokio::sync::Mutex<Option<crate::journal::pg::PgLog>>)>,
}

impl ApiState {
    /// The API over running breakers, with the configuration's `[api.tokens]` and `tokens`
    /// beside them (the environment's, a one-time token: kept for the whole run; for a name in
    /// both, these win). Bad tokens: a burst of 10 per client, then one more every 6 s
    /// ([`auth::Limiter`]); a valid token is never throttled.
    pub fn new(registry: Arc<Registry>, config: Config, tokens: Vec<Token>) -> Self {
        ApiState {
            registry,
            settings: Arc::new(ApiSettings::new(config, tokens)),
            reloader: None,
            limiter: Limiter::default(),
            projection: tokio::sync::Mutex::new(None),
            health_cache: health::HealthCache::default(),
            last_read_error: std::sync::Mutex::new(None),
            stopping: tokio::sync::watch::channel(false).0,
            tail: events::Tail::default(),
            transitions_seen: tokio::sync::Mutex::new((0, metrics::TransitionCounts::new())),
            fleet: None,
            fleet_log: None,
        }
    }
}

impl ApiState {
    /// Enables `POST /api/config/reload`, through `reloader` — the one SIGHUP and the file
    /// watcher use ([`crate::actor::watch`]). Give it [`ApiState::settings`] as a part, so a
    /// reload reaches the API's budgets and tokens too.
    pub fn with_reload(mut self, reloader: Arc<Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// Reports how far the log is shipped to the fleet's log in the health documents.
    /// With the node's shipping to the fleet's log at `url`: its status in the health documents,
    /// and fleet health (`/api/fleet/health`) read from there.
    pub fn with_fleet(
        mut self,
        status: tokio::sync::watch::Receiver<crate::journal::fleet::ShipStatus>,
        url: String,
    ) -> Self {
        self.fleet = Some(status);
        self.fleet_log = Some((url, tokio::sync::Mutex::new(None)));
        self
    }

    /// The API's share of the configuration (latency budgets, tokens), for a [`Reloader`].
    pub fn settings(&self) -> Arc<ApiSettings> {
        self.settings.clone()
    }

    fn config(&self) -> Arc<Current> {
        self.settings.current()
    }

    /// Ends every event stream (`/api/events/stream`) with a closing `shutdown` event, now and
    /// for any opened after: call it before stopping the server.
    pub fn stop_streams(&self) {
        self.stopping.send_replace(true);
    }
}

/// What the API takes from the configuration: the latency budgets the health score judges by
/// and the bearer tokens. A reload replaces both at once, from one read of the file.
pub struct ApiSettings {
    /// Tokens that are not the file's: kept across reloads.
    kept: Vec<Token>,
    /// The address served on, once known: a reload's short tokens are judged against it as at
    /// start (`allow_short_tokens` holds on loopback only).
    bind: std::sync::OnceLock<std::net::SocketAddr>,
    current: Arc<std::sync::RwLock<Arc<Current>>>,
}

/// The settings in force.
struct Current {
    config: Config,
    tokens: Vec<Token>,
}

impl std::ops::Deref for Current {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl ApiSettings {
    fn new(config: Config, kept: Vec<Token>) -> Self {
        let tokens = tokens(&kept, &config);
        ApiSettings {
            kept,
            bind: std::sync::OnceLock::new(),
            current: Arc::new(std::sync::RwLock::new(Arc::new(Current { config, tokens }))),
        }
    }

    fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The address the API serves on, for judging reloaded tokens as the start did.
    pub fn serving_on(&self, bind: std::net::SocketAddr) {
        let _ = self.bind.set(bind);
    }
}

/// `kept`, then the file's tokens whose names `kept` does not have.
fn tokens(kept: &[Token], config: &Config) -> Vec<Token> {
    let mut out = kept.to_vec();
    for t in &config.api.tokens {
        if !kept.iter().any(|k| k.name == t.name) {
            out.push(Token::new(t.name.clone(), &t.token));
        }
    }
    out
}

#[async_trait::async_trait]
impl Reloadable for ApiSettings {
    async fn prepare(&self, config: &Config) -> Result<Apply, ConfigError> {
        let problems = crate::config::check_token_lengths(
            &config.api.tokens,
            config.api.allow_short_tokens,
            self.bind.get().copied(),
        );
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let tokens = tokens(&self.kept, config);
        if tokens.is_empty() && !self.current().tokens.is_empty() {
            // Refused rather than locking every client out.
            return Err(ConfigError {
                problems: vec![Problem {
                    location: config
                        .file
                        .as_ref()
                        .map_or_else(|| "default".to_owned(), |p| p.display().to_string()),
                    message: "api.tokens: the configuration has no API token left and CIRCUIT_BREAKER_API_TOKEN is not set: the API would refuse every request; keep at least one token".to_owned(),
                }],
            });
        }
        let next = Arc::new(Current {
            config: config.clone(),
            tokens,
        });
        let cell = self.current.clone();
        Ok(Box::new(move || {
            *cell.write().unwrap_or_else(|e| e.into_inner()) = next;
        }))
    }
}

/// The caller's token name, set by the authentication middleware.
#[derive(Clone, Debug)]
struct Caller(String);

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

fn bad_request(message: &str) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, message)
}

/// Routes anyone may GET: the liveness probe, and the dashboard's page, which holds no data —
/// its script asks for the token (carried in the URL's `#fragment`, never sent to the server)
/// and sends it as a bearer header on every API request.
fn public(req: &ServiceRequest) -> bool {
    req.method() == actix_web::http::Method::GET && matches!(req.path(), "/healthz" | "/")
}

/// Authentication for every route but the public ones. Bearer tokens only: no cookies, so the
/// API cannot be driven cross-site by a browser's ambient credentials.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if public(&req) {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        let r = error(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, "api state missing");
        return Ok(req.into_response(r).map_into_right_body());
    };
    // The token first: a valid one is never throttled, whatever else came from its address.
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer);
    let current = state.settings.current();
    if let Some(name) = presented.and_then(|p| auth::check(&current.tokens, p).map(|t| t.name.clone())) {
        req.extensions_mut().insert(Caller(name));
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let ip = req.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let r = match state.limiter.failed(ip) {
        Ok(()) => HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Bearer"))
            .json(json!({"error": "missing or invalid bearer token"})),
        Err(wait) => HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", retry_after_secs(wait).to_string()))
            .json(json!({"error": "too many bad tokens from this address"})),
    };
    Ok(req.into_response(r).map_into_right_body())
}

/// Whole seconds for `Retry-After`, rounded up (and at least 1), so a client that waits that
/// long is let through.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// How long requests in flight may finish when the server stops, in seconds.
pub const SHUTDOWN_GRACE_SECS: u64 = 1;

/// An HTTP server with the API on `bind` (one worker: the API is I/O-bound and the protected
/// calls need the other cores), and the addresses it listens on. It does not handle signals
/// itself: [`crate::app::App::served`] does (so event streams end first, and the whole stop is
/// bounded); stop it through its handle.
pub fn server(
    state: web::Data<ApiState>,
    bind: std::net::SocketAddr,
) -> std::io::Result<(actix_web::dev::Server, Vec<std::net::SocketAddr>)> {
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(authenticate))
            // On every answer, errors included: no browser second-guesses a content type.
            .wrap(actix_web::middleware::DefaultHeaders::new().add(("X-Content-Type-Options", "nosniff")))
            .configure(configure)
    })
    .workers(1)
    // Requests in flight get this long once the server is told to stop (event streams end at
    // once: see `ApiState::stop_streams`); then their connections are closed.
    .shutdown_timeout(SHUTDOWN_GRACE_SECS)
    .disable_signals()
    .bind(bind)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

/// Mounts the routes. Wrap the app (or scope) with
/// `actix_web::middleware::from_fn(breakerbox::http::authenticate)` and give it
/// `web::Data<ApiState>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(health::MAX_COMMAND_BODY))
        .route("/", web::get().to(dashboard))
        .route("/healthz", web::get().to(healthz))
        .route("/api/health/circuit-breakers", web::get().to(health::all_breakers))
        .route(
            "/api/health/circuit-breakers/{service}",
            web::get().to(health::one_service),
        )
        .route("/api/history", web::get().to(health::history))
        .route("/api/fleet/health", web::get().to(health::fleet_all))
        .route("/api/fleet/health/{service}", web::get().to(health::fleet_one))
        .route(
            "/api/circuit-breakers/{service}/{action}",
            web::post().to(health::command),
        )
        .route("/api/config/reload", web::post().to(health::reload))
        .route("/api/events", web::get().to(events::list))
        .route("/api/events/stream", web::get().to(events::stream))
        .route("/api/openapi.json", web::get().to(openapi))
        .route("/metrics", web::get().to(metrics::metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// The dashboard's Content-Security-Policy (docs/http-api.md quotes it): its own origin only,
/// its inline script and style, no framing.
pub const DASHBOARD_CSP: &str = "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'";

/// The dashboard: server-rendered HTML and a small script, no build step.
async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page may only talk to this origin, and no other site may frame it.
        .insert_header(("Content-Security-Policy", DASHBOARD_CSP))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(include_str!("dashboard.html"))
}

/// The API described as OpenAPI 3.1.
async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("openapi.json"))
}
