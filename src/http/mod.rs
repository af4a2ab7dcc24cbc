//! The HTTP API as an actix-web service a host application mounts (or `breakerbox serve` runs):
//! the seed's health endpoints, operator actions, and Prometheus metrics. Every route but
//! `GET /healthz` needs `Authorization: Bearer <token>`; see `docs/http-api.md`.

pub mod auth;

use crate::actor::Registry;
use crate::breaker::{Breaker, Command, Event, State, codec};
use crate::config::{Config, policy_keys};
use crate::journal::{LATENCY_BOUNDS_MS, Operator};
use crate::replay::{Health, Minute, Projection};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use auth::{Limiter, Token};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

/// What the handlers share.
pub struct ApiState {
    registry: Arc<Registry>,
    config: Config,
    tokens: Vec<Token>,
    limiter: Limiter,
    projection: tokio::sync::Mutex<Option<Projection>>,
}

impl ApiState {
    /// The API over running breakers. Bad tokens: more than 10 per minute from one address
    /// blocks it for the rest of the minute.
    pub fn new(registry: Arc<Registry>, config: Config, tokens: Vec<Token>) -> Self {
        ApiState {
            registry,
            config,
            tokens,
            limiter: Limiter::new(10, Duration::from_secs(60)),
            projection: tokio::sync::Mutex::new(None),
        }
    }
}

/// The caller's token name, set by the authentication middleware.
#[derive(Clone, Debug)]
struct Caller(String);

fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message }))
}

/// Authentication for every route but `/healthz`. Bearer tokens only: no cookies, so the API
/// cannot be driven cross-site by a browser's ambient credentials.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.path() == "/healthz" {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    }
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        let r = error(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR, "api state missing");
        return Ok(req.into_response(r).map_into_right_body());
    };
    let ip = req.peer_addr().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
    if let Some(wait) = state.limiter.blocked(ip) {
        let r = HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", wait.as_secs().max(1).to_string()))
            .json(json!({"error": "too many bad tokens from this address"}));
        return Ok(req.into_response(r).map_into_right_body());
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|p| auth::check(&state.tokens, p)) {
        Some(token) => {
            req.extensions_mut().insert(Caller(token.name.clone()));
            next.call(req).await.map(ServiceResponse::map_into_left_body)
        }
        None => {
            state.limiter.failed(ip);
            let r = HttpResponse::Unauthorized()
                .insert_header(("WWW-Authenticate", "Bearer"))
                .json(json!({"error": "missing or invalid bearer token"}));
            Ok(req.into_response(r).map_into_right_body())
        }
    }
}

/// Mounts the routes. Wrap the app (or scope) with
/// `actix_web::middleware::from_fn(breakerbox::http::authenticate)` and give it
/// `web::Data<ApiState>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/api/health/circuit-breakers", web::get().to(all_breakers))
        .route("/api/health/circuit-breakers/{service}", web::get().to(one_service))
        .route("/api/circuit-breakers/{service}/{action}", web::post().to(command))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Health and recent metrics of the given breakers, from the projection (brought up to date).
async fn health_of(
    state: &ApiState,
    keys: &[String],
) -> Result<(BTreeMap<String, Health>, BTreeMap<String, Minute>), String> {
    let journal = state.registry.journal();
    let now = state.registry.clock().now_ms();
    let mut guard = state.projection.lock().await;
    if guard.is_none() {
        *guard = Some(Projection::open(journal.path()).await.map_err(|e| e.to_string())?);
    }
    let projection = guard.as_mut().expect("opened above");
    projection.catch_up(journal, 10_000).await.map_err(|e| e.to_string())?;
    let budgets: BTreeMap<String, u64> = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                state.config.breaker(k).map_or(1_000, |b| b.latency_budget_ms()),
            )
        })
        .collect();
    let health = projection
        .health_all(journal, &budgets, now)
        .await
        .map_err(|e| e.to_string())?;
    let mut recent = BTreeMap::new();
    for k in keys {
        let mut sum = Minute::default();
        for m in projection
            .minutes(k, now.saturating_sub(5 * 60_000), now)
            .await
            .map_err(|e| e.to_string())?
            .values()
        {
            sum.merge(m);
        }
        recent.insert(k.clone(), sum);
    }
    Ok((health, recent))
}

async fn breaker_json(state: &ApiState, key: &str, health: Option<&Health>, recent: Option<&Minute>) -> Value {
    let handle = state.registry.get(key).expect("keys come from the registry");
    let now = state.registry.clock().now_ms();
    let breaker: Option<Breaker> = handle.inspect().await;
    let last = state
        .registry
        .journal()
        .latest(key, codec::types::TRANSITION)
        .await
        .ok()
        .flatten()
        .and_then(|e| match codec::decode(&e.event_type, e.event_version, &e.payload) {
            Ok(Event::Transitioned(t)) => Some(*t),
            _ => None,
        });
    let view = breaker.as_ref().map(|b| b.view(now));
    let m = recent.cloned().unwrap_or_default();
    json!({
        "service": key,
        "state": handle.state(),
        "health": health,
        "metrics_5m": {
            "calls": m.calls(), "successes": m.successes, "failures": m.failures, "timeouts": m.timeouts,
            "ignored": m.ignored, "slow": m.slow, "rejected": m.rejected, "fallbacks": m.fallbacks,
            "p50_ms": m.latency_quantile_ms(0.5), "p95_ms": m.latency_quantile_ms(0.95), "p99_ms": m.latency_quantile_ms(0.99),
        },
        "last_transition": last,
        "open_remaining_ms": view.as_ref().and_then(|v| v.open_until_ms).map(|u| u.saturating_sub(now)),
        "trial_permits_in_use": handle.trial_permits(),
        "policy": breaker.as_ref().map(|b| policy_keys(b.policy())),
    })
}

fn overall(state: &ApiState, breakers: &[Value]) -> &'static str {
    if state.registry.journal().progress().failing.is_some() {
        "fail"
    } else if breakers
        .iter()
        .any(|b| b["state"] == json!(State::Open) || b["state"] == json!(State::ForcedOpen))
    {
        "warn"
    } else {
        "pass"
    }
}

async fn respond(state: &ApiState, keys: Vec<String>, service: Option<&str>) -> HttpResponse {
    let (health, recent) = match health_of(state, &keys).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "reading health from the log failed");
            return error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the event log cannot be read",
            );
        }
    };
    let mut breakers = Vec::new();
    for k in &keys {
        breakers.push(breaker_json(state, k, health.get(k), recent.get(k)).await);
    }
    let status = overall(state, &breakers);
    // `fail` (our own log is failing) is a 503 so orchestrators can tell; `warn` (a dependency is
    // down, this process is fine) stays 200.
    let code = if status == "fail" { 503 } else { 200 };
    let body = match service {
        Some(s) => json!({"status": status, "service": s, "breakers": breakers}),
        None => json!({"status": status, "breakers": breakers}),
    };
    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).expect("valid status"))
        .content_type("application/health+json")
        .json(body)
}

async fn all_breakers(state: web::Data<ApiState>) -> HttpResponse {
    let keys: Vec<String> = state.registry.handles().map(|h| h.key().to_owned()).collect();
    respond(&state, keys, None).await
}

async fn one_service(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    let service = path.into_inner();
    let keys: Vec<String> = state
        .registry
        .handles()
        .map(|h| h.key().to_owned())
        .filter(|k| *k == service || k.split_once('/').is_some_and(|(s, _)| s == service))
        .collect();
    if keys.is_empty() {
        // The name is never echoed: it came from the request.
        return error(actix_web::http::StatusCode::NOT_FOUND, "unknown service");
    }
    respond(&state, keys, Some(&service)).await
}

#[derive(serde::Deserialize)]
struct CommandBody {
    reason: String,
}

async fn command(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: Option<web::Json<CommandBody>>,
) -> HttpResponse {
    let (service, action) = path.into_inner();
    let command = match action.as_str() {
        "reset" => Command::Reset,
        "force-open" => Command::ForceOpen,
        "disable" => Command::Disable,
        _ => {
            return error(
                actix_web::http::StatusCode::NOT_FOUND,
                "unknown action: use reset, force-open or disable",
            );
        }
    };
    let Some(handle) = state.registry.get(&service) else {
        return error(actix_web::http::StatusCode::NOT_FOUND, "unknown service");
    };
    let Some(body) = body.filter(|b| !b.reason.trim().is_empty()) else {
        return error(
            actix_web::http::StatusCode::BAD_REQUEST,
            "a JSON body with a non-empty \"reason\" is required",
        );
    };
    let who = req
        .extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_owned(), |c| format!("token:{}", c.0));
    let from = if req.headers().get("X-Breakerbox-Client").and_then(|v| v.to_str().ok()) == Some("dashboard") {
        "dashboard"
    } else {
        "http"
    };
    let operator = Operator {
        who,
        from: from.into(),
        why: body.reason.clone(),
    };
    let result = match command {
        Command::Reset => handle.reset(operator).await,
        Command::ForceOpen => handle.force_open(operator).await,
        Command::Disable => handle.disable(operator).await,
    };
    match result {
        // Answered once the command is durable.
        Ok(r) => {
            HttpResponse::Ok().json(json!({"service": service, "from": r.from, "to": r.to, "position": r.position}))
        }
        Err(e) => {
            tracing::error!(error = %e, "an operator command could not be recorded");
            error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the command could not be recorded",
            )
        }
    }
}

fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let keys: Vec<String> = state.registry.handles().map(|h| h.key().to_owned()).collect();
    let (health, recent) = match health_of(&state, &keys).await {
        Ok(h) => h,
        Err(_) => {
            return error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the event log cannot be read",
            );
        }
    };
    let totals = {
        let mut guard = state.projection.lock().await;
        match guard.as_mut() {
            Some(p) => p.totals().await.unwrap_or_default(),
            None => BTreeMap::new(),
        }
    };
    let mut transitions: BTreeMap<(String, State, State), u64> = BTreeMap::new();
    let journal = state.registry.journal();
    let mut after = 0;
    while let Ok(page) = journal
        .read_range(&[codec::types::TRANSITION], 0, i64::MAX, after, 10_000)
        .await
    {
        let Some(last) = page.last() else { break };
        after = last.position;
        for e in &page {
            if let Ok(Event::Transitioned(t)) = codec::decode(&e.event_type, e.event_version, &e.payload) {
                *transitions.entry((e.stream.clone(), t.from, t.to)).or_default() += 1;
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_state 1 for the state each breaker is in, 0 for the others."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_state gauge");
    for h in state.registry.handles() {
        let current = h.state();
        for s in State::ALL {
            let _ = writeln!(
                out,
                "circuit_breaker_state{{service=\"{}\",state=\"{}\"}} {}",
                label(h.key()),
                s,
                u8::from(s == current)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_calls_total Calls by outcome (rejected and fallback included)."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_calls_total counter");
    for k in &keys {
        let m = totals.get(k).cloned().unwrap_or_default();
        for (outcome, n) in [
            ("success", m.successes),
            ("failure", m.failures),
            ("timeout", m.timeouts),
            ("ignored", m.ignored),
            ("rejected", m.rejected),
            ("fallback", m.fallbacks),
        ] {
            let _ = writeln!(
                out,
                "circuit_breaker_calls_total{{service=\"{}\",outcome=\"{outcome}\"}} {n}",
                label(k)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_call_duration_seconds Latency of the calls that ran."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_call_duration_seconds histogram");
    for k in &keys {
        let m = totals.get(k).cloned().unwrap_or_default();
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
            cumulative += m.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "circuit_breaker_call_duration_seconds_bucket{{service=\"{}\",le=\"{}\"}} {cumulative}",
                label(k),
                f64::from(*bound) / 1_000.0
            );
        }
        let _ = writeln!(
            out,
            "circuit_breaker_call_duration_seconds_bucket{{service=\"{}\",le=\"+Inf\"}} {}",
            label(k),
            m.calls()
        );
        let _ = writeln!(
            out,
            "circuit_breaker_call_duration_seconds_sum{{service=\"{}\"}} {}",
            label(k),
            m.latency_total_ms as f64 / 1_000.0
        );
        let _ = writeln!(
            out,
            "circuit_breaker_call_duration_seconds_count{{service=\"{}\"}} {}",
            label(k),
            m.calls()
        );
    }
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_failure_ratio Failed and timed-out share of the calls of the last 5 minutes."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_failure_ratio gauge");
    for k in &keys {
        let m = recent.get(k).cloned().unwrap_or_default();
        let ran = m.successes + m.failures + m.timeouts;
        let ratio = if ran == 0 {
            0.0
        } else {
            (m.failures + m.timeouts) as f64 / ran as f64
        };
        let _ = writeln!(out, "circuit_breaker_failure_ratio{{service=\"{}\"}} {ratio}", label(k));
    }
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_health_ratio The health score (docs/health-score.md) as a 0-1 ratio."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_health_ratio gauge");
    for (k, h) in &health {
        let _ = writeln!(
            out,
            "circuit_breaker_health_ratio{{service=\"{}\"}} {}",
            label(k),
            f64::from(h.score) / 100.0
        );
    }
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_half_open_permits_in_use Trial permits out."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_half_open_permits_in_use gauge");
    for h in state.registry.handles() {
        let _ = writeln!(
            out,
            "circuit_breaker_half_open_permits_in_use{{service=\"{}\"}} {}",
            label(h.key()),
            h.trial_permits()
        );
    }
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_transitions_total State changes by from and to."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_transitions_total counter");
    for ((k, from, to), n) in &transitions {
        let _ = writeln!(
            out,
            "circuit_breaker_transitions_total{{service=\"{}\",from=\"{from}\",to=\"{to}\"}} {n}",
            label(k)
        );
    }
    let stats = journal.stats();
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_event_log_errors_total Failed appends to the event log, by kind."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_event_log_errors_total counter");
    for (i, kind) in crate::journal::ERROR_KINDS.iter().enumerate() {
        let n = stats.errors[i].load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(out, "circuit_breaker_event_log_errors_total{{kind=\"{kind}\"}} {n}");
    }
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let micros = stats.commit_us_total.load(std::sync::atomic::Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP circuit_breaker_event_log_commit_seconds Time spent committing event-log batches."
    );
    let _ = writeln!(out, "# TYPE circuit_breaker_event_log_commit_seconds summary");
    let _ = writeln!(
        out,
        "circuit_breaker_event_log_commit_seconds_sum {}",
        micros as f64 / 1e6
    );
    let _ = writeln!(out, "circuit_breaker_event_log_commit_seconds_count {commits}");
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(out)
}
