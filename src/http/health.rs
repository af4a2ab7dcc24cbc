//! Health of every breaker (`/api/health/circuit-breakers[/{service}]`), per-minute history for
//! the dashboard (`/api/history`), and operator actions (`POST /api/circuit-breakers/{key}/…`).

use super::{ApiState, Caller, bad_request, error};
use crate::breaker::{Command, State};
use crate::journal::Operator;
use crate::replay::{HealthReport, Projection, Verdict};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The health report of the given breakers now: the one [`crate::replay::health_report`] that
/// `breakerbox status` prints too, from the live breakers and the projection (brought up to date).
pub(super) async fn report_of(state: &ApiState, keys: &[String]) -> HealthReport {
    // The configuration in force now: a reload replaces it (see `ApiSettings`).
    let config = state.config();
    let budget = |k: &str| config.breaker(k).map_or(1_000, |b| b.latency_budget_ms());
    let mut guard = state.projection.lock().await;
    if guard.is_none() {
        *guard = Some(Projection::open(state.registry.journal()));
    }
    let projection = guard.as_mut().expect("opened above");
    let report = state.registry.report(keys, budget, projection).await;
    if let Some(e) = &report.read_error {
        // Once per distinct reason, not once per request while an outage lasts.
        let mut last = state.last_read_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_deref() != Some(e.as_str()) {
            tracing::error!(error = %e, "health: answering with the breakers' states only");
            *last = Some(e.clone());
        }
    } else {
        *state.last_read_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    report
}

/// The health document of `keys`: its status code and JSON body. Always the breakers' states;
/// 503 only while the log fails and `[api] unready_when_log_fails` asks for it.
async fn render(state: &ApiState, keys: Vec<String>, service: Option<&str>) -> (u16, Bytes) {
    let mut report = report_of(state, &keys).await;
    report.service = service.map(str::to_owned);
    report.fleet = state.fleet.as_ref().map(|s| s.borrow().clone());
    // `warn` (a dependency is down, this process is fine) and `fail` (this process's own log is
    // failing or unreadable) are 200 unless configured: the breakers still decide.
    let code = if report.status == Verdict::Fail && state.config().config.api.unready_when_log_fails {
        503
    } else {
        200
    };
    let body = serde_json::to_vec(&report).expect("a report always encodes");
    (code, Bytes::from(body))
}

fn health_response(code: u16, body: Bytes) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).expect("valid status"))
        .content_type("application/health+json")
        .body(body)
}

/// Does the client take gzip (`Accept-Encoding: gzip`, not refused with `q=0`)?
fn accepts_gzip(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(actix_web::http::header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut params = part.split(';').map(str::trim);
            let coding = params.next().unwrap_or_default();
            let q = params
                .find_map(|p| p.strip_prefix("q="))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
            coding.eq_ignore_ascii_case("gzip") && q.is_some_and(|q| q > 0.0)
        })
}

fn gzip(body: &[u8]) -> Option<Bytes> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::fast());
    enc.write_all(body).ok()?;
    enc.finish().ok().map(Bytes::from)
}

/// The cached document, compressed when the client takes it: it is ~700 bytes per breaker as
/// JSON and a fifth of that gzipped, compressed once per refresh.
fn cached_response(doc: &CachedDoc, req: &HttpRequest) -> HttpResponse {
    match (&doc.gzip, accepts_gzip(req)) {
        (Some(z), true) => {
            let mut r = health_response(doc.code, z.clone());
            r.headers_mut().insert(
                actix_web::http::header::CONTENT_ENCODING,
                actix_web::http::header::HeaderValue::from_static("gzip"),
            );
            r.headers_mut().insert(
                actix_web::http::header::VARY,
                actix_web::http::header::HeaderValue::from_static("Accept-Encoding"),
            );
            r
        }
        _ => {
            let mut r = health_response(doc.code, doc.body.clone());
            r.headers_mut().insert(
                actix_web::http::header::VARY,
                actix_web::http::header::HeaderValue::from_static("Accept-Encoding"),
            );
            r
        }
    }
}

/// How long the all-breakers document is served from memory at most. Dashboards and probes
/// poll it; folding the projection for each of them would make the API the busiest part of the
/// process.
const FRESH: Duration = Duration::from_secs(1);

/// The last all-breakers document, and what it was made from.
#[derive(Default)]
pub(super) struct HealthCache {
    doc: std::sync::Mutex<Option<CachedDoc>>,
    // One refresh at a time: concurrent misses wait for it instead of each folding the log.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct CachedDoc {
    made: Instant,
    key: Vec<u8>,
    code: u16,
    body: Bytes,
    gzip: Option<Bytes>,
}

/// What must not have changed for a cached document to be served: every breaker's state and
/// trial permits, and whether the log is failing. Atomic reads only.
fn cache_key(state: &ApiState) -> Vec<u8> {
    let mut key: Vec<u8> = state
        .registry
        .handles()
        .flat_map(|h| {
            let s = State::ALL.iter().position(|s| *s == h.state()).unwrap_or(0) as u8;
            [s, h.trial_permits().min(255) as u8]
        })
        .collect();
    key.push(u8::from(state.registry.journal().progress().failing.is_some()));
    key
}

impl HealthCache {
    fn get(&self, key: &[u8], req: &HttpRequest) -> Option<HttpResponse> {
        let doc = self.doc.lock().unwrap_or_else(|e| e.into_inner());
        doc.as_ref()
            .filter(|d| d.key == key && d.made.elapsed() < FRESH)
            .map(|d| cached_response(d, req))
    }
}

pub(super) async fn all_breakers(state: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    let key = cache_key(&state);
    if let Some(response) = state.health_cache.get(&key, &req) {
        return response;
    }
    let _refreshing = state.health_cache.refresh.lock().await;
    // Another request may have refreshed it while this one waited.
    let key = cache_key(&state);
    if let Some(response) = state.health_cache.get(&key, &req) {
        return response;
    }
    let keys: Vec<String> = state.registry.handles().map(|h| h.key().to_owned()).collect();
    let (code, body) = render(&state, keys, None).await;
    let doc = CachedDoc {
        made: Instant::now(),
        key,
        code,
        gzip: gzip(&body),
        body,
    };
    let response = cached_response(&doc, &req);
    *state.health_cache.doc.lock().unwrap_or_else(|e| e.into_inner()) = Some(doc);
    response
}

pub(super) async fn one_service(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
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
    let (code, body) = render(&state, keys, Some(&service)).await;
    health_response(code, body)
}

/// The largest command body taken, in bytes (a reason is at most 1 KiB; 413 above this).
pub(super) const MAX_COMMAND_BODY: usize = 4 * 1_024;

#[derive(serde::Deserialize)]
pub(super) struct CommandBody {
    reason: String,
    /// `node` (this node's breaker, the default) or `fleet` (every node's: `docs/fleet.md`).
    #[serde(default)]
    scope: Option<String>,
    /// With `fleet`: the override lapses after this long (`10m`).
    #[serde(default)]
    ttl: Option<String>,
}

/// "Who" for the audit trail: the name of the token the request came with.
fn who(req: &HttpRequest) -> String {
    req.extensions()
        .get::<Caller>()
        .map_or_else(|| "unknown".to_owned(), |c| format!("token:{}", c.0))
}

pub(super) async fn command(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: Result<web::Json<CommandBody>, actix_web::Error>,
) -> HttpResponse {
    let (service, action) = path.into_inner();
    // An operation's key (`stripe/customers.create`) arrives as one encoded path segment.
    let service = service.replace("%2F", "/").replace("%2f", "/");
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
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            use actix_web::error::JsonPayloadError;
            let too_large = matches!(
                e.as_error::<JsonPayloadError>(),
                Some(JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. })
            );
            return if too_large {
                error(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is larger than {MAX_COMMAND_BODY} bytes"),
                )
            } else {
                error(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    "a JSON body with a non-empty \"reason\" is required",
                )
            };
        }
    };
    if let Err(why) = crate::journal::check_reason(&body.reason) {
        return error(actix_web::http::StatusCode::BAD_REQUEST, &why);
    }
    let Some(handle) = state.registry.get(&service) else {
        return error(actix_web::http::StatusCode::NOT_FOUND, "unknown service");
    };
    let fleet = match body.scope.as_deref() {
        None | Some("node") => false,
        Some("fleet") => true,
        Some(_) => return bad_request("\"scope\" is \"node\" (the default) or \"fleet\""),
    };
    if !fleet && body.ttl.is_some() {
        return bad_request("\"ttl\" goes with \"scope\": \"fleet\" (a node's own command stands until reset)");
    }
    let who = who(&req);
    let from = if req.headers().get("X-Breakerbox-Client").and_then(|v| v.to_str().ok()) == Some("dashboard") {
        "dashboard"
    } else {
        "http"
    };
    if fleet {
        return fleet_command(&state, &service, command, who, from, &body).await;
    }
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
        // 200 once the command is durable; 202 when it is applied but the log has not taken it
        // within the command wait (failing: `log` says since when) — never no answer.
        Ok(r) if r.durable() => HttpResponse::Ok().json(json!({
            "service": service, "from": r.from, "to": r.to, "durable": true, "position": r.position, "log": r.log,
        })),
        Ok(r) => HttpResponse::Accepted().json(json!({
            "service": service, "from": r.from, "to": r.to, "durable": false, "position": null, "log": r.log,
            "message": if r.log.is_ok() {
                "applied, not yet durable: the event log has not taken it within the command wait (a write is waiting: the database is locked or slow); it is written when the write goes through, and lost if this process stops first".to_owned()
            } else {
                format!("applied, not yet durable: {}; it is written when the log recovers, and lost if this process stops first", r.log)
            },
        })),
        // A fleet override stands: the node's own command is refused, naming it.
        Err(crate::journal::JournalError::Refused(why)) => error(actix_web::http::StatusCode::CONFLICT, &why),
        Err(e) => {
            tracing::error!(error = %e, "an operator command could not be recorded");
            error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the command could not be recorded",
            )
        }
    }
}

/// A command with `"scope": "fleet"`: issued to the fleet's log, applied and acknowledged by
/// every live node (`crate::journal::fleet::issue_on`, as `breakerbox force-open --fleet`). 200
/// when every live node acknowledged it within 5 s, 202 when some did not (they apply it when
/// they read the fleet's log).
async fn fleet_command(
    state: &ApiState,
    service: &str,
    command: Command,
    who: String,
    from: &str,
    body: &CommandBody,
) -> HttpResponse {
    use crate::journal::pg::FleetAsk;
    let ttl = match body.ttl.as_deref().map(crate::duration::parse_ms) {
        None => None,
        Some(Ok(0)) => return bad_request("\"ttl\" must be more than 0"),
        Some(Ok(ms)) if Duration::from_millis(ms) > crate::journal::pg::MAX_FLEET_TTL => {
            return bad_request("\"ttl\" is at most 365 days");
        }
        Some(Ok(ms)) if command != Command::Reset => Some(Duration::from_millis(ms)),
        Some(Ok(_)) => return bad_request("\"ttl\": a reset is not an override; it has no ttl"),
        Some(Err(e)) => return bad_request(&format!("\"ttl\": {e}")),
    };
    let log = match fleet_reader(state).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let asked = FleetAsk {
        service: service.to_owned(),
        command,
        who,
        origin: from.to_owned(),
        why: body.reason.clone(),
    };
    let issued = crate::journal::fleet::issue_on(&log, &asked, ttl, Duration::from_secs(5)).await;
    match issued {
        Ok(i) if i.silent.is_empty() => {
            HttpResponse::Ok().json(json!({"scope": "fleet", "summary": i.to_string(), "issued": i}))
        }
        Ok(i) => HttpResponse::Accepted().json(json!({"scope": "fleet", "summary": i.to_string(), "issued": i})),
        Err(e) => error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            &format!("the fleet command could not be issued: {e}"),
        ),
    }
}

/// The fleet's log, opened on first use and kept (a handle on its pool, so no request holds the
/// others up); an error answer when there is none or it cannot be reached.
async fn fleet_reader(state: &ApiState) -> Result<crate::journal::pg::PgLog, HttpResponse> {
    let Some((url, log)) = &state.fleet_log else {
        return Err(error(
            actix_web::http::StatusCode::NOT_FOUND,
            "this node ships to no fleet log ([journal] url, or serve --db postgres://…): there is no fleet",
        ));
    };
    let mut guard = log.lock().await;
    if guard.is_none() {
        match crate::journal::fleet::open_to_read(url, Duration::from_secs(2)).await {
            Ok(l) => *guard = Some(l),
            Err(e) => return Err(error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, &e.to_string())),
        }
    }
    Ok(guard.as_ref().expect("opened above").clone())
}

/// Forgets the kept handle on the fleet's log after a failed read: the next request connects again.
async fn fleet_reader_failed(state: &ApiState) {
    if let Some((_, log)) = &state.fleet_log
        && let Some(l) = log.lock().await.take()
    {
        l.close().await;
    }
}

#[derive(serde::Deserialize)]
pub(super) struct HistoryParams {
    minutes: Option<u64>,
}

/// `GET /api/history?minutes=60`: per breaker, its minutes from the projection and its
/// transitions, for the dashboard's sparklines and timeline.
pub(super) async fn history(state: web::Data<ApiState>, params: web::Query<HistoryParams>) -> HttpResponse {
    let span = params.minutes.unwrap_or(60);
    if span == 0 || span > 24 * 60 {
        return bad_request(&format!("minutes={span} is out of range: use 1 to 1440"));
    }
    let keys: Vec<String> = state.registry.handles().map(|h| h.key().to_owned()).collect();
    let now = state.registry.clock().now_ms();
    let since = now.saturating_sub(span * 60_000) / 60_000 * 60_000;
    match history_of(&state, &keys, since, now).await {
        Ok(breakers) => HttpResponse::Ok().json(json!({"now_ms": now, "since_ms": since, "breakers": breakers})),
        Err(e) => {
            tracing::error!(error = %e, "reading history from the log failed");
            error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "the event log cannot be read",
            )
        }
    }
}

async fn history_of(
    state: &ApiState,
    keys: &[String],
    since: u64,
    now: u64,
) -> Result<BTreeMap<String, Value>, crate::journal::JournalError> {
    let journal = state.registry.journal();
    let (mut transitions, _) = crate::replay::transitions_by_stream(journal, since, u64::MAX, 0).await?;
    let mut guard = state.projection.lock().await;
    if guard.is_none() {
        *guard = Some(Projection::open(journal));
    }
    let projection = guard.as_mut().expect("opened above");
    projection.catch_up(journal, 10_000).await?;
    let mut out = BTreeMap::new();
    for k in keys {
        let minutes: Vec<Value> = projection
            .minutes(k, since, now)
            .await?
            .values()
            .map(|m| {
                json!({
                    "minute_ms": m.minute_ms, "calls": m.calls(), "successes": m.successes,
                    "failures": m.failures, "timeouts": m.timeouts, "slow": m.slow,
                    "rejected": m.rejected, "fallbacks": m.fallbacks,
                    "p50_ms": m.latency_quantile_ms(0.5), "p95_ms": m.latency_quantile_ms(0.95),
                    "p99_ms": m.latency_quantile_ms(0.99), "state_ms": m.state_ms,
                })
            })
            .collect();
        let transitions: Vec<Value> = transitions
            .remove(k)
            .unwrap_or_default()
            .iter()
            .map(|t| json!({"at_ms": t.at_ms, "from": t.from, "to": t.to, "reason": t.reason.as_str()}))
            .collect();
        out.insert(k.clone(), json!({"minutes": minutes, "transitions": transitions}));
    }
    Ok(out)
}

/// `POST /api/config/reload`: reads the configuration again and applies all of it — the
/// breakers' policies (state, windows and trial permits kept), the API's budgets and tokens,
/// the alert sinks — or refuses it whole with every problem: what SIGHUP does, through the same
/// [`crate::actor::Reloader`], for where signals can't be sent.
pub(super) async fn reload(state: web::Data<ApiState>, req: HttpRequest) -> HttpResponse {
    let Some(reloader) = state.reloader.as_ref() else {
        return error(
            actix_web::http::StatusCode::NOT_FOUND,
            "reload is not enabled in this server",
        );
    };
    let who = who(&req);
    match reloader.reload().await {
        crate::actor::ReloadOutcome::Applied(report) => {
            tracing::info!(%who, changed = report.changed.len(), "configuration reloaded over HTTP");
            let changed: Vec<&str> = report.changed.iter().map(|(k, _)| k.as_str()).collect();
            HttpResponse::Ok().json(json!({
                "applied": true, "changed": changed, "added": report.added, "removed": report.removed,
            }))
        }
        crate::actor::ReloadOutcome::Refused(e) => {
            tracing::error!(%who, "configuration reload over HTTP refused; the running configuration stays");
            let problems: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
            HttpResponse::UnprocessableEntity().json(json!({
                "error": "the configuration has problems; the running one stays", "problems": problems,
            }))
        }
    }
}

/// `GET /api/fleet/health`: every live node's last report, merged per breaker (the one
/// `breakerbox status --fleet` prints: `crate::replay::fleet`).
pub(super) async fn fleet_all(state: web::Data<ApiState>) -> HttpResponse {
    fleet_health(&state, None).await
}

/// `GET /api/fleet/health/{service}`: one breaker across the fleet.
pub(super) async fn fleet_one(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    fleet_health(&state, Some(&path.into_inner())).await
}

async fn fleet_health(state: &ApiState, service: Option<&str>) -> HttpResponse {
    use crate::journal::fleet::{DEFAULT_GONE_AFTER, health_rows};
    use crate::replay::fleet::fleet_health;
    let log = match fleet_reader(state).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let read = health_rows(&log, DEFAULT_GONE_AFTER).await;
    let (now, views, rows) = match read {
        Ok(r) => r,
        Err(e) => {
            // Reconnect on the next request: the pool may hold dead connections.
            fleet_reader_failed(state).await;
            let why = format!("the fleet log could not be read: {e}");
            return error(actix_web::http::StatusCode::SERVICE_UNAVAILABLE, &why);
        }
    };
    let report = fleet_health(now, &views, &rows, service);
    if let Some(s) = service
        && report.breakers.is_empty()
    {
        let why = format!("no live node reports a breaker named {s:?}");
        return error(actix_web::http::StatusCode::NOT_FOUND, &why);
    }
    HttpResponse::Ok().json(report)
}
