//! The HTTP API: auth on every route, health, operator actions, metrics, the event stream, and
//! the dashboard in a real browser.

#[path = "support/webdriver.rs"]
mod webdriver;

use actix_web::{App, test, web};
use breakerbox::actor::{Clock, Registry, RegistryOptions};
use breakerbox::config::{Config, Secret};
use breakerbox::http::{ApiState, auth, authenticate, configure};
use breakerbox::journal::{Journal, JournalOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// 33 characters: serve and demo refuse a token shorter than 32.
const TOKEN: &str = "s3cret-token-0123456789abcdefghij";

async fn registry(dir: &Path) -> (Arc<Registry>, Config) {
    let config = Config::from_toml(
        Path::new("t.toml"),
        "[services.stripe]\nfailure_threshold = 2\n[services.stripe.operations.\"customers.create\"]\n[services.calcom]\n",
        &BTreeMap::new(),
    )
    .unwrap();
    (start(dir, &config).await, config)
}

/// The breakers of `config` on a log in `dir`, on a manual clock, without a projection tail.
async fn start(dir: &Path, config: &Config) -> Arc<Registry> {
    let journal = Arc::new(
        Journal::open(&dir.join("log.db"), JournalOptions::default())
            .await
            .unwrap(),
    );
    let registry = Registry::start(
        config,
        journal,
        RegistryOptions {
            clock: Clock::manual(1_764_000_000_000),
            ..RegistryOptions::default()
        },
    )
    .await
    .unwrap();
    Arc::new(registry)
}

macro_rules! app {
    ($registry:expr, $config:expr) => {
        test::init_service(
            App::new()
                .app_data(web::Data::new(ApiState::new(
                    $registry.clone(),
                    $config.clone(),
                    vec![auth::Token::new("oncall", &Secret::new(TOKEN))],
                )))
                .wrap(actix_web::middleware::from_fn(authenticate))
                .configure(configure),
        )
        .await
    };
}

fn bearer(t: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {t}"))
}

#[actix_web::test]
async fn every_protected_route_needs_the_token_and_nothing_leaks_it() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    let routes = [
        ("GET", "/api/health/circuit-breakers"),
        ("GET", "/api/health/circuit-breakers/stripe"),
        ("POST", "/api/circuit-breakers/stripe/reset"),
        ("POST", "/api/circuit-breakers/stripe/force-open"),
        ("POST", "/api/circuit-breakers/stripe/disable"),
        ("POST", "/api/config/reload"),
        ("GET", "/api/history"),
        ("GET", "/api/fleet/health"),
        ("GET", "/api/fleet/health/stripe"),
        ("GET", "/api/events"),
        ("GET", "/api/events/stream"),
        ("GET", "/api/openapi.json"),
        ("GET", "/metrics"),
    ];
    let same_length_wrong: String = TOKEN.chars().rev().collect();
    let mut n = 0;
    for (method, uri) in routes {
        for auth in [None, Some(same_length_wrong.clone()), Some("short".to_owned())] {
            // Each from its own address, so the bad-token limiter stays out of this test.
            n += 1;
            let mut req = if method == "GET" {
                test::TestRequest::get()
            } else {
                test::TestRequest::post()
            }
            .uri(uri)
            .peer_addr(format!("127.0.1.{n}:1000").parse().unwrap());
            if let Some(t) = &auth {
                req = req.insert_header(bearer(t));
            }
            let resp = test::call_service(&app, req.to_request()).await;
            assert_eq!(resp.status(), 401, "{method} {uri} with {auth:?}");
            let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
            assert!(!body.contains(TOKEN) && !auth.as_ref().is_some_and(|t| body.contains(t.as_str())));
        }
    }
    // /healthz needs no token, nor the dashboard's page, which holds no data: its script sends
    // the token (from the URL's #fragment) with every API request.
    let resp = test::call_service(&app, test::TestRequest::get().uri("/healthz").to_request()).await;
    assert_eq!(resp.status(), 200);
    let resp = test::call_service(&app, test::TestRequest::get().uri("/").to_request()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("Content-Security-Policy").is_some());
    let page = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
    assert!(page.contains("<html") && !page.contains(TOKEN));
    // Only GET: anything else on / needs the token like every other route.
    let resp = test::call_service(&app, test::TestRequest::post().uri("/").to_request()).await;
    assert_eq!(resp.status(), 401);
    registry.shutdown().await.unwrap();
}

/// The `Retry-After` of a 429, which must be there and be whole seconds.
fn retry_after<B>(resp: &actix_web::dev::ServiceResponse<B>) -> u64 {
    let v = resp.headers().get("Retry-After").expect("every 429 says when to retry");
    v.to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {v:?}: not whole seconds"))
}

#[actix_web::test]
async fn repeated_bad_tokens_from_one_address_get_429_and_others_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    let attacker = "127.0.0.9:5000".parse().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let req = test::TestRequest::get()
            .uri("/metrics")
            .peer_addr(attacker)
            .insert_header(bearer("guess"))
            .to_request();
        let resp = test::call_service(&app, req).await;
        if resp.status() == 429 {
            // One more bad token is allowed every 6 s (10 a minute): that, rounded up, is the
            // wait, not the rest of a minute.
            let wait = retry_after(&resp);
            assert!((1..=6).contains(&wait), "Retry-After {wait}");
        }
        statuses.push(resp.status().as_u16());
    }
    // A burst of 10 bad tokens is answered 401; after that, 429 until the bucket refills.
    assert_eq!(statuses, [[401; 10], [429; 10]].concat(), "{statuses:?}");
    let ok = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("127.0.0.10:5000".parse().unwrap())
        .insert_header(bearer(TOKEN))
        .to_request();
    assert_eq!(test::call_service(&app, ok).await.status(), 200);
    // IPv6 clients are counted by their /64 (one host usually has all of it).
    for host in 1..=11 {
        let req = test::TestRequest::get()
            .uri("/metrics")
            .peer_addr(format!("[2001:db8:1:2::{host:x}]:5000").parse().unwrap())
            .insert_header(bearer("guess"))
            .to_request();
        let status = test::call_service(&app, req).await.status();
        assert_eq!(status, if host <= 10 { 401 } else { 429 }, "host {host}");
    }
    let other_net = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("[2001:db8:1:3::1]:5000".parse().unwrap())
        .insert_header(bearer("guess"))
        .to_request();
    assert_eq!(test::call_service(&app, other_net).await.status(), 401);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn the_right_token_gets_through_however_many_bad_ones_came_from_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    // The on-call engineer's address, shared (a NAT, a proxy) with something sending junk:
    // wrong tokens, no token, Basic credentials.
    let shared = "127.0.0.11:5000".parse().unwrap();
    let mut limited = 0;
    for i in 0..50 {
        let mut req = test::TestRequest::get().uri("/metrics").peer_addr(shared);
        req = match i % 3 {
            0 => req.insert_header(bearer(&format!("guess-{i}"))),
            1 => req,
            _ => req.insert_header(("Authorization", "Basic b25jYWxsOmh1bnRlcjI=")),
        };
        let resp = test::call_service(&app, req.to_request()).await;
        limited += usize::from(resp.status() == 429);
    }
    assert!(limited > 0, "the junk is throttled");
    for _ in 0..3 {
        let req = test::TestRequest::get()
            .uri("/metrics")
            .peer_addr(shared)
            .insert_header(bearer(TOKEN))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 200);
    }
    // …and a good token does not lift the throttle for the junk.
    let req = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr(shared)
        .insert_header(bearer("guess"))
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 429);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    for (n, scheme) in ["bearer", "BEARER", "Bearer", "bEaReR"].into_iter().enumerate() {
        let req = test::TestRequest::get()
            .uri("/metrics")
            .peer_addr(format!("127.0.2.{n}:1").parse().unwrap())
            .insert_header(("Authorization", format!("{scheme} {TOKEN}")))
            .to_request();
        assert_eq!(test::call_service(&app, req).await.status(), 200, "{scheme}");
    }
    // The scheme, not a prefix of it: "Bearer" glued to the token is not a bearer credential.
    let req = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("127.0.2.9:1".parse().unwrap())
        .insert_header(("Authorization", format!("Bearer{TOKEN}")))
        .to_request();
    assert_eq!(test::call_service(&app, req).await.status(), 401);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_throttled_address_stays_throttled_however_many_other_addresses_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    let bad = |addr: String| {
        test::TestRequest::get()
            .uri("/metrics")
            .peer_addr(addr.parse().unwrap())
            .insert_header(bearer("guess"))
            .to_request()
    };
    let blocked = "127.0.0.12:5000".to_owned();
    for _ in 0..11 {
        test::call_service(&app, bad(blocked.clone())).await;
    }
    assert_eq!(test::call_service(&app, bad(blocked.clone())).await.status(), 429);
    // More addresses than are tracked, each with one bad token: none of them evicts the
    // throttled one. Past the bound, a bad token from a new address is refused too (429): the
    // table never grows, and a good token is never counted, so no operator is affected.
    let mut statuses = BTreeMap::new();
    for i in 0..auth::MAX_TRACKED_CLIENTS as u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
        let resp = test::call_service(&app, bad(format!("{ip}:1"))).await;
        if resp.status() == 429 {
            assert!(retry_after(&resp) >= 1);
        }
        *statuses.entry(resp.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&429), Some(&1), "{statuses:?}");
    assert_eq!(test::call_service(&app, bad(blocked.clone())).await.status(), 429);
    let ok = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("10.255.0.1:1".parse().unwrap())
        .insert_header(bearer(TOKEN))
        .to_request();
    assert_eq!(test::call_service(&app, ok).await.status(), 200);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn the_bad_token_limiter_tracks_at_most_its_bound() {
    let limiter = auth::Limiter::new(
        std::num::NonZeroU32::new(3).unwrap(),
        std::time::Duration::from_secs(60),
        100,
    );
    let ip = |i: u32| std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
    for _ in 0..3 {
        assert!(limiter.failed(ip(0)).is_ok());
    }
    let wait = limiter.failed(ip(0)).unwrap_err();
    assert!(
        wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(20),
        "{wait:?}"
    );
    let refused = (1..1_000).filter(|i| limiter.failed(ip(*i)).is_err()).count();
    assert_eq!(
        refused,
        1_000 - 100,
        "past the bound, new addresses are refused, not tracked"
    );
    assert!(limiter.tracked() <= 100, "{}", limiter.tracked());
    assert!(limiter.failed(ip(0)).is_err(), "still throttled");
}

#[actix_web::test]
async fn health_reports_every_breaker_and_operator_actions_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    let get = |uri: &str| {
        test::TestRequest::get()
            .uri(uri)
            .peer_addr("127.0.0.3:1".parse().unwrap())
            .insert_header(bearer(TOKEN))
            .to_request()
    };
    let stripe = registry.get("stripe").unwrap().clone();
    for _ in 0..3 {
        let _ = stripe.call("", async { Ok::<_, ()>(()) }).await;
    }
    // Outcomes reach the log within the flush interval; settle them before asking.
    stripe.inspect().await;
    registry.journal().flush().await.unwrap();
    let body: Value = test::call_and_read_body_json(&app, get("/api/health/circuit-breakers")).await;
    assert_eq!(body["status"], "pass");
    let keys: Vec<&str> = body["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["service"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["calcom", "stripe", "stripe/customers.create"]);
    let s = &body["breakers"][1];
    assert_eq!(
        (s["state"].as_str(), s["metrics_5m"]["calls"].as_u64()),
        (Some("closed"), Some(3))
    );
    assert_eq!(s["health"]["score"], 100);
    assert_eq!(s["policy"]["failure_threshold"], 2);
    // The same document gzipped for a client that takes it, plain for one that refuses it.
    let encoded = |accept: &str| {
        test::TestRequest::get()
            .uri("/api/health/circuit-breakers")
            .peer_addr("127.0.0.3:1".parse().unwrap())
            .insert_header(bearer(TOKEN))
            .insert_header(("Accept-Encoding", accept.to_owned()))
            .to_request()
    };
    let zipped = test::call_service(&app, encoded("br, gzip;q=0.8")).await;
    assert_eq!(zipped.headers().get("Content-Encoding").unwrap(), "gzip");
    let bytes = test::read_body(zipped).await;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), body);
    let plain = test::call_service(&app, encoded("gzip;q=0")).await;
    assert!(plain.headers().get("Content-Encoding").is_none());
    // One service with its operations.
    let one: Value = test::call_and_read_body_json(&app, get("/api/health/circuit-breakers/stripe")).await;
    assert_eq!(one["breakers"].as_array().unwrap().len(), 2);
    // Unknown: 404 JSON, the name never echoed.
    let resp = test::call_service(&app, get("/api/health/circuit-breakers/%3Cscript%3E")).await;
    assert_eq!(resp.status(), 404);
    let text = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
    assert!(!text.contains("script"), "{text}");

    // Force open over HTTP: answered once durable, audited with the token's name.
    let post = |uri: &str, body: Option<&str>| {
        let mut r = test::TestRequest::post()
            .uri(uri)
            .peer_addr("127.0.0.3:1".parse().unwrap())
            .insert_header(bearer(TOKEN));
        if let Some(b) = body {
            r = r
                .insert_header(("Content-Type", "application/json"))
                .set_payload(b.to_owned());
        }
        r.to_request()
    };
    let resp = test::call_service(&app, post("/api/circuit-breakers/stripe/force-open", None)).await;
    assert_eq!(resp.status(), 400, "a reason is required");
    let done: Value = test::call_and_read_body_json(
        &app,
        post(
            "/api/circuit-breakers/stripe/force-open",
            Some(r#"{"reason":"stripe incident"}"#),
        ),
    )
    .await;
    assert_eq!(
        (done["from"].as_str(), done["to"].as_str()),
        (Some("closed"), Some("forced_open"))
    );
    let log = registry.journal().read_after(0, 10_000).await.unwrap();
    let cmd = log
        .iter()
        .find(|e| e.event_type == "operator_command")
        .expect("audited");
    let rec: breakerbox::journal::OperatorCommand = rmp_serde::from_slice(&cmd.payload).unwrap();
    assert_eq!(
        (rec.operator.who.as_str(), rec.operator.from.as_str()),
        ("token:oncall", "http")
    );
    let body: Value = test::call_and_read_body_json(&app, get("/api/health/circuit-breakers")).await;
    assert_eq!(
        body["status"], "warn",
        "a breaker is open: a dependency is down, this process is fine"
    );
    let resp = test::call_service(
        &app,
        post("/api/circuit-breakers/paypal/reset", Some(r#"{"reason":"x"}"#)),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let resp = test::call_service(
        &app,
        post("/api/circuit-breakers/stripe/explode", Some(r#"{"reason":"x"}"#)),
    )
    .await;
    assert_eq!(resp.status(), 404);
    // Mutations are never on GET.
    let resp = test::call_service(&app, get("/api/circuit-breakers/stripe/reset")).await;
    assert!(resp.status() == 404 || resp.status() == 405);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn metrics_are_prometheus_text_with_real_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    let stripe = registry.get("stripe").unwrap().clone();
    for i in 0..10 {
        let _ = stripe
            .call("", async move { if i % 3 == 0 { Err(()) } else { Ok(()) } })
            .await;
    }
    stripe.inspect().await;
    registry.journal().flush().await.unwrap();
    let req = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("127.0.0.4:1".parse().unwrap())
        .insert_header(bearer(TOKEN))
        .to_request();
    let text = String::from_utf8(test::call_and_read_body(&app, req).await.to_vec()).unwrap();
    for family in [
        "circuit_breaker_state{service=\"stripe\",state=\"closed\"} 1",
        "circuit_breaker_state{service=\"stripe\",state=\"open\"} 0",
        "circuit_breaker_calls_total{service=\"stripe\",outcome=\"failure\"} 4",
        "circuit_breaker_calls_total{service=\"stripe\",outcome=\"success\"} 6",
        "circuit_breaker_call_duration_seconds_bucket{service=\"stripe\",le=\"+Inf\"} 10",
        "# TYPE circuit_breaker_call_duration_seconds histogram",
        "circuit_breaker_health_ratio{service=\"stripe\"}",
        "circuit_breaker_event_log_errors_total{kind=\"full\"} 0",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }
    promtool_accepts(&text);
    // Transitions are counted on from the previous scrape: one more shows as one more.
    assert!(!text.contains("circuit_breaker_transitions_total{service=\"stripe\""));
    stripe
        .force_open(breakerbox::journal::Operator {
            who: "ops".into(),
            from: "library".into(),
            why: "drill".into(),
        })
        .await
        .unwrap();
    let req = test::TestRequest::get()
        .uri("/metrics")
        .peer_addr("127.0.0.4:1".parse().unwrap())
        .insert_header(bearer(TOKEN))
        .to_request();
    let again = String::from_utf8(test::call_and_read_body(&app, req).await.to_vec()).unwrap();
    assert!(
        again.contains("circuit_breaker_transitions_total{service=\"stripe\",from=\"closed\",to=\"forced_open\"} 1"),
        "{again}"
    );
    // Every sample line is `name{labels} value` with a number; buckets are cumulative.
    let mut last_bucket = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (_, value) = line.rsplit_once(' ').unwrap();
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        if line.starts_with("circuit_breaker_call_duration_seconds_bucket{service=\"stripe\"") {
            assert!(v >= last_bucket, "buckets must be cumulative: {line}");
            last_bucket = v;
        }
    }
    registry.shutdown().await.unwrap();
}

/// A real server on an ephemeral loopback port, for streaming responses.
async fn serve(registry: &Arc<Registry>, config: &Config) -> std::net::SocketAddr {
    let state = web::Data::new(ApiState::new(
        registry.clone(),
        config.clone(),
        vec![auth::Token::new("oncall", &Secret::new(TOKEN))],
    ));
    let (server, addrs) = breakerbox::http::server(state, "127.0.0.1:0".parse().unwrap()).unwrap();
    actix_web::rt::spawn(server);
    addrs[0]
}

/// An open SSE connection, read frame by frame.
struct Sse {
    stream: tokio::net::TcpStream,
    buf: String,
    raw: String,
}

impl Sse {
    async fn connect(addr: std::net::SocketAddr, last_event_id: Option<i64>) -> Sse {
        Sse::connect_to(addr, "/api/events/stream", last_event_id).await
    }

    async fn connect_to(addr: std::net::SocketAddr, path: &str, last_event_id: Option<i64>) -> Sse {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n{resume}\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut sse = Sse {
            stream,
            buf: String::new(),
            raw: String::new(),
        };
        // Past the headers and the opening comment: from here on the stream is live.
        let first = sse.frame().await.expect("the stream opens");
        assert!(sse.raw.starts_with("HTTP/1.1 200"), "{}", sse.raw);
        assert!(sse.raw.contains("text/event-stream"));
        assert!(first.contains(": connected"), "{first}");
        sse
    }

    /// The next frame (chunked encoding's size lines dropped), or None after 2 s of silence.
    async fn frame(&mut self) -> Option<String> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..i + 2).collect();
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), self.stream.read(&mut chunk))
                .await
                .ok()?
                .unwrap();
            if n == 0 {
                return None;
            }
            let text = String::from_utf8_lossy(&chunk[..n]).into_owned();
            self.raw.push_str(&text);
            // Keep only SSE lines: drop HTTP headers and chunk-size lines.
            for line in text.split_inclusive('\n') {
                let l = line.trim_end_matches(['\r', '\n']);
                let sse_line =
                    l.starts_with("id: ") || l.starts_with("event: ") || l.starts_with("data: ") || l.starts_with(": ");
                if sse_line {
                    self.buf.push_str(l);
                    self.buf.push('\n');
                } else if l.is_empty() && !self.buf.is_empty() && !self.buf.ends_with("\n\n") {
                    self.buf.push('\n');
                }
            }
        }
    }

    /// Event frames (comments skipped) until `n` arrived or the stream goes quiet.
    async fn events(&mut self, n: usize) -> Vec<(i64, String, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(f) = self.frame().await else { break };
            if f.starts_with(": ") {
                continue;
            }
            let field = |name: &str| {
                f.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {f:?}"))
                    .to_owned()
            };
            out.push((
                field("id: ").parse().unwrap(),
                field("event: "),
                serde_json::from_str(&field("data: ")).unwrap(),
            ));
        }
        out
    }
}

fn operator(why: &str) -> breakerbox::journal::Operator {
    breakerbox::journal::Operator {
        who: "ops".into(),
        from: "library".into(),
        why: why.into(),
    }
}

#[actix_web::test]
async fn the_event_stream_resumes_after_last_event_id_with_exactly_the_missed_events() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let addr = serve(&registry, &config).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let calcom = registry.get("calcom").unwrap().clone();

    // Given a dashboard connected to the stream once the start-up's policy events are in the
    // log, which sees a force-open live (and a second client, following calcom only)…
    registry.journal().flush().await.unwrap();
    let mut sse = Sse::connect(addr, None).await;
    let mut calcom_only = Sse::connect_to(addr, "/api/events/stream?service=calcom&kind=command", None).await;
    stripe.force_open(operator("incident 1")).await.unwrap();
    let seen = sse.events(2).await;
    let kinds: Vec<&str> = seen.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["command", "transition"], "{seen:?}");
    assert_eq!(seen[0].2["details"]["operator"]["why"], "incident 1");
    let last_id = seen[1].0;
    // …when it disconnects and events are appended meanwhile…
    drop(sse);
    stripe.reset(operator("incident 1 over")).await.unwrap();
    calcom.force_open(operator("incident 2")).await.unwrap();
    // …then reconnecting with Last-Event-ID gives exactly the missed ones, in order, once.
    let mut sse = Sse::connect(addr, Some(last_id)).await;
    let missed = sse.events(10).await;
    let got: Vec<(String, String)> = missed
        .iter()
        .map(|(_, k, e)| (e["stream"].as_str().unwrap().to_owned(), k.clone()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("stripe", "command"),
        ("stripe", "transition"),
        ("calcom", "command"),
        ("calcom", "transition"),
    ]
    .iter()
    .map(|(s, k)| ((*s).to_owned(), (*k).to_owned()))
    .collect();
    assert_eq!(got, expected);
    let ids: Vec<i64> = missed.iter().map(|(id, _, _)| *id).collect();
    assert!(ids[0] > last_id && ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The id is the log position, the same as the audit trail's.
    assert!(missed.iter().all(|(id, _, e)| e["position"] == *id));
    assert!(!sse.raw.contains(TOKEN), "the token never appears in the stream");
    // The filtered client, connected all along, got calcom's command and nothing else.
    let filtered = calcom_only.events(10).await;
    assert_eq!(filtered.len(), 1, "{filtered:?}");
    assert_eq!(
        (filtered[0].1.as_str(), filtered[0].2["stream"].as_str()),
        ("command", Some("calcom"))
    );
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn the_events_route_pages_the_audit_trail_by_position() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let app = app!(registry, config);
    let stripe = registry.get("stripe").unwrap().clone();
    for i in 0..3 {
        stripe.force_open(operator(&format!("drill {i}"))).await.unwrap();
        stripe.reset(operator(&format!("drill {i} over"))).await.unwrap();
    }
    let get = |uri: String| {
        test::TestRequest::get()
            .uri(&uri)
            .peer_addr("127.0.0.5:1".parse().unwrap())
            .insert_header(bearer(TOKEN))
            .to_request()
    };
    // Page through the commands two at a time.
    let mut whys = Vec::new();
    let mut after = 0;
    loop {
        let page: Value =
            test::call_and_read_body_json(&app, get(format!("/api/events?kind=command&limit=2&after={after}"))).await;
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["kind"], "command");
            whys.push(e["details"]["operator"]["why"].as_str().unwrap().to_owned());
        }
        match page["next_after"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(
        whys,
        [
            "drill 0",
            "drill 0 over",
            "drill 1",
            "drill 1 over",
            "drill 2",
            "drill 2 over"
        ]
    );
    // The newest two, oldest first.
    let newest: Value =
        test::call_and_read_body_json(&app, get("/api/events?kind=command&limit=2&newest=true".into())).await;
    let whys: Vec<&str> = newest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["operator"]["why"].as_str().unwrap())
        .collect();
    assert_eq!(whys, ["drill 2", "drill 2 over"]);
    // Bad input names the bad value.
    for (uri, needle) in [
        ("/api/events?kind=explosion", "explosion"),
        ("/api/events?since=yesterday", "yesterday"),
        ("/api/events?limit=0", "limit 0"),
        ("/api/history?minutes=0", "minutes=0"),
    ] {
        let resp = test::call_service(&app, get(uri.into())).await;
        assert_eq!(resp.status(), 400, "{uri}");
        let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
        assert!(body.contains(needle), "{uri}: {body}");
    }
    // History for the dashboard: every breaker, with its transitions.
    let history: Value = test::call_and_read_body_json(&app, get("/api/history?minutes=60".into())).await;
    assert_eq!(
        history["breakers"]["stripe"]["transitions"].as_array().unwrap().len(),
        6
    );
    assert!(history["breakers"]["calcom"]["minutes"].is_array());
    // The OpenAPI document names every route.
    let doc: Value = test::call_and_read_body_json(&app, get("/api/openapi.json".into())).await;
    for route in [
        "/api/events",
        "/api/events/stream",
        "/api/history",
        "/api/config/reload",
        "/api/fleet/health",
        "/api/fleet/health/{service}",
        "/metrics",
    ] {
        assert!(doc["paths"].get(route).is_some(), "{route}");
    }
    registry.shutdown().await.unwrap();
}

/// A tool the test command installs (scripts/test). Missing under CI is a failure; when someone
/// runs `cargo test` by hand without it, the check is skipped with a note saying so.
fn installed_tool(path: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "{path} is missing: scripts/test installs it (Debian package)"
    );
    eprintln!("note: {path} not installed, check skipped (scripts/test installs it)");
    false
}

/// `promtool check metrics` (Debian's prometheus package) finds no problem in the exposition.
fn promtool_accepts(text: &str) {
    if let Some((ok, said)) = promtool(&["check", "metrics"], text) {
        assert!(ok && said.trim().is_empty(), "promtool: {said}\n{text}");
    }
}

/// Runs promtool with `args` from the crate's root, `stdin` piped in: whether it succeeded and
/// what it said. `None` when it is not installed and may be skipped ([`installed_tool`]).
fn promtool(args: &[&str], stdin: &str) -> Option<(bool, String)> {
    use std::io::Write as _;
    if !installed_tool("/usr/bin/promtool") {
        return None;
    }
    let mut child = std::process::Command::new("/usr/bin/promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), said))
}

/// The shipped alert rules load, and each fires on its input series in `alerts.test.yml` (and
/// not before its `for`).
#[actix_web::test]
async fn the_shipped_alert_rules_pass_promtool_and_their_unit_tests() {
    for args in [
        ["check", "rules", "docs/monitoring/alerts.yml"],
        ["test", "rules", "docs/monitoring/alerts.test.yml"],
    ] {
        if let Some((ok, said)) = promtool(&args, "") {
            assert!(ok, "promtool {}: {said}", args.join(" "));
        }
    }
}

/// Metric names a PromQL expression names (breakerbox's and Resilience4j's prefixes).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["resilience4j_circuitbreaker_", "circuit_breaker_"] {
        for (at, _) in expr.match_indices(prefix) {
            if expr[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let name: String = expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// The value of the one sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// A server with a failure-rate breaker that opened (stripe), one that did not (calcom) and
/// one on consecutive failures (retell), after traffic with fallbacks; its `/metrics` scraped
/// over HTTP. The scrape has every Resilience4j series with its labels, passes promtool, its
/// attempts partition the calls made, and the shipped dashboard and alert rules name only
/// metrics it exposes.
#[actix_web::test]
async fn a_scrape_has_resilience4j_series_partitioned_attempts_and_what_the_dashboard_reads() {
    use breakerbox::actor::Fallback;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(
        Path::new("t.toml"),
        "[services.stripe]\nfailure_rate = 50\nwindow_calls = 10\nminimum_calls = 4\n\
         [services.calcom]\nfailure_rate = 50\nwindow_calls = 10\nminimum_calls = 4\nslow_call_duration = \"1s\"\n\
         [services.retell]\n",
        &BTreeMap::new(),
    )
    .unwrap();
    let registry = start(dir.path(), &config).await;
    let addr = serve(&registry, &config).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let calcom = registry.get("calcom").unwrap().clone();
    // stripe: 2 successes and 2 failures reach 50 % over the minimum of 4 calls: it opens.
    for ok in [true, true, false, false] {
        let _ = stripe.call("", async move { if ok { Ok(()) } else { Err(()) } }).await;
    }
    // (Outcomes reach the breaker through its actor: `inspect` waits until it has them all.)
    stripe.inspect().await;
    assert_eq!(stripe.state(), breakerbox::breaker::State::Open);
    // Then 3 calls answered by a fallback and 1 without one: 4 rejected, 3 fallbacks.
    for _ in 0..3 {
        let served = stripe
            .call_with_fallback("", async { Ok::<u32, ()>(1) }, Fallback::Value(7))
            .await;
        assert_eq!(served.ok(), Some(7));
    }
    assert!(stripe.call("", async { Ok::<(), ()>(()) }).await.is_err());
    let stripe_calls_made = 8.0;
    // calcom: 3 successes, 1 failure: 25 %, stays closed.
    for ok in [true, true, true, false] {
        let _ = calcom.call("", async move { if ok { Ok(()) } else { Err(()) } }).await;
    }
    stripe.inspect().await;
    calcom.inspect().await;
    registry.journal().flush().await.unwrap();

    let text = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    promtool_accepts(&text);

    // Resilience4j's series, as its micrometer binder names and labels them.
    for (series, value) in [
        ("resilience4j_circuitbreaker_state{name=\"stripe\",state=\"open\"}", 1.0),
        (
            "resilience4j_circuitbreaker_state{name=\"stripe\",state=\"closed\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_state{name=\"stripe\",state=\"metrics_only\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_state{name=\"calcom\",state=\"closed\"}",
            1.0,
        ),
        (
            "resilience4j_circuitbreaker_state{name=\"calcom\",state=\"forced_open\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_state{name=\"calcom\",state=\"half_open\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_state{name=\"calcom\",state=\"disabled\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_calls_seconds_count{name=\"stripe\",kind=\"successful\"}",
            2.0,
        ),
        (
            "resilience4j_circuitbreaker_calls_seconds_count{name=\"stripe\",kind=\"failed\"}",
            2.0,
        ),
        (
            "resilience4j_circuitbreaker_calls_seconds_count{name=\"stripe\",kind=\"ignored\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_calls_seconds_sum{name=\"stripe\",kind=\"successful\"}",
            0.0,
        ),
        (
            "resilience4j_circuitbreaker_not_permitted_calls_total{name=\"stripe\",kind=\"not_permitted\"}",
            4.0,
        ),
        (
            "resilience4j_circuitbreaker_not_permitted_calls_total{name=\"calcom\",kind=\"not_permitted\"}",
            0.0,
        ),
        // calcom's window: 1 failure in 4 calls, none slow; retell has no rate rule: -1.
        ("resilience4j_circuitbreaker_failure_rate{name=\"calcom\"}", 25.0),
        ("resilience4j_circuitbreaker_slow_call_rate{name=\"calcom\"}", 0.0),
        ("resilience4j_circuitbreaker_failure_rate{name=\"retell\"}", -1.0),
        ("resilience4j_circuitbreaker_slow_call_rate{name=\"retell\"}", -1.0),
        (
            "resilience4j_circuitbreaker_buffered_calls{name=\"calcom\",kind=\"successful\"}",
            3.0,
        ),
        (
            "resilience4j_circuitbreaker_buffered_calls{name=\"calcom\",kind=\"failed\"}",
            1.0,
        ),
    ] {
        assert_eq!(sample(&text, series), value, "{series}");
    }
    for family in [
        "# TYPE resilience4j_circuitbreaker_state gauge",
        "# TYPE resilience4j_circuitbreaker_calls_seconds summary",
        "# TYPE resilience4j_circuitbreaker_not_permitted_calls_total counter",
        "# TYPE resilience4j_circuitbreaker_failure_rate gauge",
        "# TYPE resilience4j_circuitbreaker_slow_call_rate gauge",
        "# TYPE resilience4j_circuitbreaker_buffered_calls gauge",
    ] {
        assert!(text.contains(family), "{family} missing from:\n{text}");
    }

    // Every attempt once: the outcomes add up to the calls made; the fallbacks are beside them.
    let outcomes = ["success", "failure", "timeout", "ignored", "cancelled", "rejected"];
    let attempts: f64 = outcomes
        .iter()
        .map(|o| {
            sample(
                &text,
                &format!("circuit_breaker_attempts_total{{service=\"stripe\",outcome=\"{o}\"}}"),
            )
        })
        .sum();
    assert_eq!(attempts, stripe_calls_made);
    assert_eq!(
        sample(
            &text,
            "circuit_breaker_attempts_total{service=\"stripe\",outcome=\"rejected\"}"
        ),
        4.0
    );
    assert_eq!(
        sample(&text, "circuit_breaker_fallbacks_total{service=\"stripe\"}"),
        3.0
    );
    assert!(!text.contains("circuit_breaker_attempts_total{service=\"stripe\",outcome=\"fallback\"}"));
    // The deprecated series are still there for one release, and say so.
    assert!(text.contains("# HELP circuit_breaker_calls_total DEPRECATED"), "{text}");
    assert!(text.contains("# HELP circuit_breaker_state DEPRECATED"), "{text}");
    // The log's own figures.
    assert!(sample(&text, "circuit_breaker_event_log_size_bytes") > 0.0);
    assert_eq!(sample(&text, "circuit_breaker_event_log_records_dropped_total"), 0.0);
    assert_eq!(sample(&text, "circuit_breaker_event_log_gaps_total"), 0.0);
    assert_eq!(sample(&text, "circuit_breaker_event_log_projection_lag"), 0.0);

    // The dashboard and the alert rules read only what is exposed.
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("grafana-dashboard.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let rules = std::fs::read_to_string(root.join("alerts.yml")).unwrap();
    let alert_exprs: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).collect();
    assert_eq!(alert_exprs.len(), rules.matches("- alert: ").count());
    for expr in exprs.iter().map(String::as_str).chain(alert_exprs) {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        for name in names {
            assert!(
                exposed.contains(name.as_str()),
                "{name} (in {expr}) is not in the scrape:\n{text}"
            );
        }
    }
    // The dashboard's queries are valid PromQL: promtool checks them as rules, with Grafana's
    // variables given values.
    let as_rules: String = exprs
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
        .map(|(i, e)| {
            let e = e.replace("$__rate_interval", "5m").replace("$name", ".*");
            format!(
                "      - record: dashboard:query{i}\n        expr: '{}'\n",
                e.replace('\'', "''")
            )
        })
        .collect();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, format!("groups:\n  - name: dashboard\n    rules:\n{as_rules}")).unwrap();
    if let Some((ok, said)) = promtool(&["check", "rules", file.to_str().unwrap()], "") {
        assert!(ok, "the dashboard's queries: {said}");
    }
    registry.shutdown().await.unwrap();
}

/// The dashboard in headless Chromium: it sees a breaker open live while failures are driven,
/// Force open and Reset work from its buttons, and the audit trail records who, from where, why.
#[actix_web::test]
async fn the_dashboard_shows_a_breaker_opening_live_and_its_buttons_are_audited() {
    use std::time::Duration;
    if !installed_tool(webdriver::CHROMEDRIVER) || !installed_tool(webdriver::CHROMIUM) {
        return;
    }
    const T: Duration = Duration::from_secs(15);
    let dir = tempfile::tempdir().unwrap();
    // Real time here: the page counts down and follows the live stream.
    let config = Config::from_toml(
        Path::new("t.toml"),
        "[services.stripe]\nfailure_threshold = 2\ntimeout = \"1h\"\n[services.stripe.operations.\"customers.create\"]\n[services.calcom]\n",
        &BTreeMap::new(),
    )
    .unwrap();
    let journal = Arc::new(
        Journal::open(&dir.path().join("log.db"), JournalOptions::default())
            .await
            .unwrap(),
    );
    let registry = Arc::new(
        Registry::start(&config, journal, RegistryOptions::default())
            .await
            .unwrap(),
    );
    let addr = serve(&registry, &config).await;
    let browser = webdriver::Driver::start().await.unwrap();
    let state_of = |key: &str| format!("[data-testid=breaker][data-key=\"{key}\"] [data-testid=state]");

    // Given the dashboard, opened from a link carrying the token…
    browser.goto(&format!("http://{addr}/#token={TOKEN}")).await.unwrap();
    browser.wait_text("[data-testid=conn]", "live", T).await.unwrap();
    browser.wait_text(&state_of("stripe"), "closed", T).await.unwrap();
    let url = browser.url().await.unwrap();
    assert!(!url.contains(TOKEN), "the token leaves the address bar: {url}");

    // …when stripe fails twice, the page shows it OPEN without a reload.
    let stripe = registry.get("stripe").unwrap().clone();
    for _ in 0..2 {
        let _ = stripe.call("", async { Err::<(), _>("502 from stripe") }).await;
    }
    browser.wait_text(&state_of("stripe"), "open", T).await.unwrap();

    // Force open an operation's breaker (its key has a '/') with a reason, confirmed.
    async fn act(browser: &webdriver::Driver, key: &str, button: &str, reason: &str) {
        let row = browser
            .wait_for(
                &format!("[data-testid=breaker][data-key=\"{key}\"]"),
                Duration::from_secs(15),
            )
            .await
            .unwrap();
        let b = browser.find_in(&row, &format!("[data-testid={button}]")).await.unwrap();
        browser.click(&b).await.unwrap();
        let input = browser
            .wait_for("[data-testid=reason-input]", Duration::from_secs(5))
            .await
            .unwrap();
        browser.send_keys(&input, reason).await.unwrap();
        let confirm = browser.find("[data-testid=confirm]").await.unwrap();
        browser.click(&confirm).await.unwrap();
    }
    act(
        &browser,
        "stripe/customers.create",
        "force-open",
        "provider maintenance",
    )
    .await;
    browser
        .wait_text(&state_of("stripe/customers.create"), "forced_open", T)
        .await
        .unwrap();
    assert_eq!(
        registry.get("stripe/customers.create").unwrap().state(),
        breakerbox::breaker::State::ForcedOpen
    );
    // Reset stripe from the page.
    act(&browser, "stripe", "reset", "stripe recovered").await;
    browser.wait_text(&state_of("stripe"), "closed", T).await.unwrap();
    assert_eq!(stripe.state(), breakerbox::breaker::State::Closed);

    // The audit trail has both actions: who (the token's name), from the dashboard, why.
    let commands = breakerbox::replay::audit(
        registry.journal(),
        &breakerbox::replay::AuditQuery {
            stream: None,
            kinds: vec![breakerbox::replay::Kind::Command],
            since_ms: 0,
            until_ms: u64::MAX,
            after_position: 0,
            limit: 100,
        },
    )
    .await
    .unwrap()
    .entries;
    let seen: Vec<(String, String, String, String)> = commands
        .iter()
        .map(|c| {
            let o = &c.details["operator"];
            (
                c.stream.clone(),
                o["who"].as_str().unwrap().to_owned(),
                o["from"].as_str().unwrap().to_owned(),
                o["why"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expect = |s: &str, why: &str| {
        (
            s.to_owned(),
            "token:oncall".to_owned(),
            "dashboard".to_owned(),
            why.to_owned(),
        )
    };
    assert_eq!(
        seen,
        [
            expect("stripe/customers.create", "provider maintenance"),
            expect("stripe", "stripe recovered")
        ]
    );
    // …and the page's own event list shows them, live.
    browser
        .wait_for("[data-testid=events] [data-testid=event]", T)
        .await
        .unwrap();
    // It arrives over the stream shortly after the command's answer: look until it is there.
    let deadline = std::time::Instant::now() + T;
    loop {
        let listed = browser
            .execute(
                "return [...document.querySelectorAll('[data-testid=event]')].some(e => e.textContent.includes(arguments[0]))",
                vec![serde_json::json!("stripe recovered")],
            )
            .await
            .unwrap();
        if listed == serde_json::json!(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reset never showed in the page's event list"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).await.unwrap();
    // Readable on a phone: at 390 px wide nothing is wider than the screen.
    browser.set_window_size(390, 844).await.unwrap();
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways on a phone by {overflow} px"
    );
    let phone = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-phone.png");
    browser.screenshot(&phone).await.unwrap();
    eprintln!("screenshots: {} {}", shot.display(), phone.display());
    drop(browser);
    registry.shutdown().await.unwrap();
}

/// Triage in headless Chromium: 50 breakers, 4 in trouble (one forced open with a reason, two
/// OPEN, one HALF_OPEN). The four are the first cards, worst first, on a 1400 px screen and on
/// a 390 px phone; the tab's title counts the open ones; the forced-open card names who and why;
/// call stats stay out of the event list until asked for; and once the server is stopped the
/// connection pill says "server gone" within 10 s.
#[actix_web::test]
async fn the_dashboard_puts_the_breakers_in_trouble_first_and_says_when_the_server_is_gone() {
    use std::time::Duration;
    if !installed_tool(webdriver::CHROMEDRIVER) || !installed_tool(webdriver::CHROMIUM) {
        return;
    }
    const T: Duration = Duration::from_secs(15);
    let dir = tempfile::tempdir().unwrap();
    // svc11 reopens for trials after 1 s (real time: the actor's timer moves it to HALF_OPEN).
    let mut toml = String::new();
    for i in 0..50 {
        let timeout = if i == 11 { "1s" } else { "1h" };
        toml.push_str(&format!(
            "[services.svc{i:02}]\nfailure_threshold = 2\ntimeout = \"{timeout}\"\n"
        ));
    }
    let config = Config::from_toml(Path::new("t.toml"), &toml, &BTreeMap::new()).unwrap();
    let journal = Arc::new(
        Journal::open(&dir.path().join("log.db"), JournalOptions::default())
            .await
            .unwrap(),
    );
    let registry = Arc::new(
        Registry::start(&config, journal, RegistryOptions::default())
            .await
            .unwrap(),
    );
    let state = web::Data::new(ApiState::new(
        registry.clone(),
        config.clone(),
        vec![auth::Token::new("oncall", &Secret::new(TOKEN))],
    ));
    let (server, addrs) = breakerbox::http::server(state, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_handle = server.handle();
    actix_web::rt::spawn(server);
    let addr = addrs[0];

    // Healthy traffic on the rest; then the trouble.
    for i in [0, 3, 8, 29] {
        let h = registry.get(&format!("svc{i:02}")).unwrap().clone();
        for _ in 0..5 {
            let _ = h.call("", async { Ok::<_, ()>(()) }).await;
        }
    }
    for key in ["svc05", "svc23", "svc11"] {
        let h = registry.get(key).unwrap().clone();
        for _ in 0..2 {
            let _ = h.call("", async { Err::<(), _>("502") }).await;
        }
        // The actor folds the outcomes: wait for it, not for time.
        h.inspect().await;
        assert_eq!(h.state(), breakerbox::breaker::State::Open, "{key}");
    }
    // Rejected calls: call stats in the log (one per flush).
    let svc05 = registry.get("svc05").unwrap().clone();
    for _ in 0..3 {
        let _ = svc05.call("", async { Ok::<_, ()>(()) }).await;
    }
    registry
        .get("svc17")
        .unwrap()
        .force_open(breakerbox::journal::Operator {
            who: "alice@ops".into(),
            from: "cli".into(),
            why: "provider maintenance window".into(),
        })
        .await
        .unwrap();
    let svc11 = registry.get("svc11").unwrap().clone();
    let deadline = std::time::Instant::now() + T;
    while svc11.state() != breakerbox::breaker::State::HalfOpen {
        assert!(std::time::Instant::now() < deadline, "svc11 never went HALF_OPEN");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let browser = webdriver::Driver::start().await.unwrap();
    browser.set_window_size(1400, 1000).await.unwrap();
    browser.goto(&format!("http://{addr}/#token={TOKEN}")).await.unwrap();
    browser.wait_text("[data-testid=conn]", "live", T).await.unwrap();
    browser
        .wait_text(
            "[data-testid=breaker][data-key=svc11] [data-testid=state]",
            "half_open",
            T,
        )
        .await
        .unwrap();

    // The cards in reading order (top to bottom, then left to right), as a person sees them.
    async fn seen_order(browser: &webdriver::Driver) -> Vec<String> {
        let keys = browser
            .execute(
                "return [...document.querySelectorAll('[data-testid=breaker]')]
                   .filter(e => e.offsetParent !== null)
                   .map(e => { const r = e.getBoundingClientRect(); return [Math.round(r.top), Math.round(r.left), e.dataset.key]; })
                   .sort((a, b) => a[0] - b[0] || a[1] - b[1]).map(x => x[2])",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(keys).unwrap()
    }
    let trouble = ["svc17", "svc05", "svc23", "svc11"];
    let order = seen_order(&browser).await;
    assert_eq!(order.len(), 50, "{order:?}");
    assert_eq!(order[..4], trouble, "worst first: {order:?}");
    // All 50 on one screen at 1400 × 1000: the last card ends inside the window.
    let fits = browser
        .execute(
            "const cards = [...document.querySelectorAll('[data-testid=breaker]')];
             return [Math.max(...cards.map(e => e.getBoundingClientRect().bottom)), window.innerHeight]",
            vec![],
        )
        .await
        .unwrap();
    let (bottom, height) = (fits[0].as_f64().unwrap(), fits[1].as_f64().unwrap());
    assert!(bottom <= height, "50 breakers need {bottom} px of a {height} px window");
    // The healthy ones follow by key.
    let rest: Vec<&String> = order[4..].iter().collect();
    let mut sorted = rest.clone();
    sorted.sort();
    assert_eq!(rest, sorted);
    // The title counts the breakers that reject every call (OPEN and FORCED_OPEN).
    assert_eq!(
        browser.execute("return document.title", vec![]).await.unwrap(),
        serde_json::json!("(3 open) breakerbox")
    );
    // …and so does the tab's icon (an SVG with the number in it).
    let icon = browser
        .execute(
            "return decodeURIComponent(document.getElementById('favicon').getAttribute('href'))",
            vec![],
        )
        .await
        .unwrap();
    assert!(icon.as_str().unwrap().contains(">3</text>"), "{icon}");
    // The strip counts by severity, worst first.
    let strip = browser
        .execute(
            "return [...document.querySelectorAll('[data-testid=sev-count]')].map(e => [e.dataset.severity, e.querySelector('b').textContent])",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        strip,
        serde_json::json!([
            ["forced_open", "1"],
            ["open", "2"],
            ["half_open", "1"],
            ["flapping", "0"],
            ["degraded", "0"],
            ["healthy", "46"],
            ["disabled", "0"]
        ])
    );
    // The forced-open card says who and why; an OPEN card says what tripped it.
    let override_text = browser
        .text(
            &browser
                .find("[data-testid=breaker][data-key=svc17] [data-testid=override]")
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        override_text.contains("alice@ops") && override_text.contains("provider maintenance window"),
        "{override_text}"
    );
    let trip = browser
        .text(
            &browser
                .find("[data-testid=breaker][data-key=svc05] [data-testid=trip]")
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(trip.contains("failures in a row"), "{trip}");
    // Call stats are out of the event list until the box is ticked.
    let stats_shown = "return [...document.querySelectorAll('[data-testid=event][data-kind=stats]')].filter(e => e.offsetParent !== null).length";
    assert_eq!(
        browser.execute(stats_shown, vec![]).await.unwrap(),
        serde_json::json!(0)
    );
    browser
        .click(&browser.find("[data-testid=show-stats]").await.unwrap())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    while browser.execute(stats_shown, vec![]).await.unwrap() == serde_json::json!(0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no call stats after ticking the box"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .click(&browser.find("[data-testid=show-stats]").await.unwrap())
        .await
        .unwrap();
    // The filter narrows the cards.
    let filter = browser.find("[data-testid=filter]").await.unwrap();
    browser.send_keys(&filter, "svc2").await.unwrap();
    let filtered = seen_order(&browser).await;
    assert_eq!(filtered[0], "svc23", "{filtered:?}");
    assert!(filtered.iter().all(|k| k.starts_with("svc2")), "{filtered:?}");
    browser
        .execute("const f = document.querySelector('[data-testid=filter]'); f.value = ''; f.dispatchEvent(new Event('input'))", vec![])
        .await
        .unwrap();
    assert_eq!(seen_order(&browser).await.len(), 50);
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let wide = tmp.join("dashboard-triage-1400.png");
    browser.screenshot(&wide).await.unwrap();
    // ▸ opens a card's details across the grid: the health components among them.
    let toggle = browser
        .find("[data-testid=breaker][data-key=svc05] [data-testid=details]")
        .await
        .unwrap();
    browser.click(&toggle).await.unwrap();
    browser
        .wait_text(
            "[data-testid=breaker][data-key=svc05] [data-component=success] .kv span",
            "success",
            T,
        )
        .await
        .unwrap();
    browser
        .screenshot(&tmp.join("dashboard-triage-details.png"))
        .await
        .unwrap();
    browser.click(&toggle).await.unwrap();

    // On a phone: the same four first, nothing wider than the screen.
    browser.set_window_size(390, 844).await.unwrap();
    let order = seen_order(&browser).await;
    assert_eq!(order[..4], trouble, "worst first on a phone: {order:?}");
    let overflow = browser
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways by {overflow} px"
    );
    let phone = tmp.join("dashboard-triage-390.png");
    browser.screenshot(&phone).await.unwrap();

    // The server stops: within 10 s the pill says so, never "live".
    browser.set_window_size(1400, 900).await.unwrap();
    server_handle.stop(false).await;
    let stopped = std::time::Instant::now();
    browser
        .wait_text("[data-testid=conn]", "server gone", Duration::from_secs(10))
        .await
        .unwrap();
    eprintln!("server gone shown after {:?}", stopped.elapsed());
    let gone = tmp.join("dashboard-triage-gone.png");
    browser.screenshot(&gone).await.unwrap();
    eprintln!("screenshots: {} {} {}", wide.display(), phone.display(), gone.display());
    drop(browser);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn config_reload_over_http_applies_a_good_file_and_refuses_a_bad_one_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cb.toml");
    std::fs::write(&file, "[services.stripe]\nfailure_threshold = 2\n[services.calcom]\n").unwrap();
    let options = breakerbox::config::LoadOptions {
        path: Some(file.clone()),
        env: BTreeMap::new(),
        ..Default::default()
    };
    let config = Config::load(&options).unwrap();
    let registry = start(dir.path(), &config).await;
    let state = ApiState::new(
        registry.clone(),
        config,
        vec![auth::Token::new("oncall", &Secret::new(TOKEN))],
    );
    let reloader = Arc::new(breakerbox::actor::Reloader::new(registry.clone(), options).with(state.settings()));
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(state.with_reload(reloader)))
            .wrap(actix_web::middleware::from_fn(authenticate))
            .configure(configure),
    )
    .await;
    let reload = || {
        test::TestRequest::post()
            .uri("/api/config/reload")
            .peer_addr("127.0.0.6:1".parse().unwrap())
            .insert_header(bearer(TOKEN))
            .to_request()
    };
    let stripe = registry.get("stripe").unwrap().clone();
    let threshold = || {
        let stripe = stripe.clone();
        async move {
            let b = stripe.inspect().await.unwrap();
            breakerbox::config::policy_keys(b.policy())["failure_threshold"].clone()
        }
    };
    // Given a running stripe with threshold 2, when the file says 7 and reload is asked for…
    std::fs::write(&file, "[services.stripe]\nfailure_threshold = 7\n[services.calcom]\n").unwrap();
    let resp = test::call_service(&app, reload()).await;
    assert_eq!(resp.status(), 200);
    let body: Value = test::read_body_json(resp).await;
    assert_eq!(body["changed"], serde_json::json!(["stripe"]));
    assert_eq!(threshold().await, 7);
    // …and a file with a problem is refused whole, naming it; the running policy stays.
    std::fs::write(&file, "[services.stripe]\nfailure_threshold = 0\n[services.calcom]\n").unwrap();
    let resp = test::call_service(&app, reload()).await;
    assert_eq!(resp.status(), 422);
    let body: Value = test::read_body_json(resp).await;
    assert!(body["problems"][0].as_str().unwrap().contains("cb.toml:2"), "{body}");
    assert_eq!(threshold().await, 7);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_reload_that_would_leave_the_api_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cb.toml");
    std::fs::write(&file, format!("[api.tokens]\noncall = \"{TOKEN}\"\n")).unwrap();
    let options = breakerbox::config::LoadOptions {
        path: Some(file.clone()),
        env: BTreeMap::new(),
        ..Default::default()
    };
    let config = Config::load(&options).unwrap();
    let registry = start(dir.path(), &config).await;
    // The file's token only: none from elsewhere.
    let state = ApiState::new(registry.clone(), config, Vec::new());
    let reloader = Arc::new(breakerbox::actor::Reloader::new(registry.clone(), options).with(state.settings()));
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(state.with_reload(reloader)))
            .wrap(actix_web::middleware::from_fn(authenticate))
            .configure(configure),
    )
    .await;
    let post = || {
        test::TestRequest::post()
            .uri("/api/config/reload")
            .peer_addr("127.0.0.7:1".parse().unwrap())
            .insert_header(bearer(TOKEN))
            .to_request()
    };
    std::fs::write(&file, "[services.stripe]\n").unwrap();
    let resp = test::call_service(&app, post()).await;
    assert_eq!(resp.status(), 422);
    let body: Value = test::read_body_json(resp).await;
    assert!(
        body["problems"][0].as_str().unwrap().contains("no API token left"),
        "{body}"
    );
    // Nothing of it was applied: the token still works, and the next reload is heard.
    std::fs::write(&file, format!("[api.tokens]\noncall = \"{TOKEN}\"\n")).unwrap();
    assert_eq!(test::call_service(&app, post()).await.status(), 200);
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn a_filtered_stream_gets_keepalives_while_other_breakers_events_flow() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    registry.journal().flush().await.unwrap();
    let addr = serve(&registry, &config).await;
    // Given a client following calcom only, while stripe's events flow every 200 ms…
    let mut calcom_only = Sse::connect_to(addr, "/api/events/stream?service=calcom", None).await;
    let stripe = registry.get("stripe").unwrap().clone();
    let driver = actix_web::rt::spawn(async move {
        for i in 0..70 {
            let op = operator(&format!("flap {i}"));
            let _ = if i % 2 == 0 {
                stripe.force_open(op).await
            } else {
                stripe.reset(op).await
            };
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    });
    // …then within the keepalive period it still hears that the stream is alive (and nothing
    // of stripe's).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(13);
    let mut heard = None;
    while tokio::time::Instant::now() < deadline {
        if let Some(f) = calcom_only.frame().await {
            heard = Some(f);
            break;
        }
    }
    let heard = heard.expect("a frame within 13 s");
    assert!(heard.starts_with(": keepalive"), "{heard:?}");
    driver.abort();
    registry.shutdown().await.unwrap();
}

#[actix_web::test]
async fn reasons_and_bodies_are_bounded_and_every_answer_carries_the_documented_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, config) = registry(dir.path()).await;
    let addr = serve(&registry, &config).await;
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(format!("http://{addr}/api/circuit-breakers/stripe/force-open"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    // Refused, with what is wrong named, and nothing applied.
    for (reason, needle) in [
        (String::new(), "a reason is required"),
        ("   ".to_owned(), "a reason is required"),
        (
            "line one\nforged line".to_owned(),
            "control character (\\u{a}) at byte 8",
        ),
        (
            "\u{1b}]0;owned\u{7}".to_owned(),
            "control character (\\u{1b}) at byte 0",
        ),
        ("rtl \u{202e}txt.exe".to_owned(), "control character (\\u{202e})"),
        ("x".repeat(1_025), "1025 bytes: at most 1024"),
    ] {
        let r = post(serde_json::json!({ "reason": reason }).to_string()).await.unwrap();
        assert_eq!(r.status(), 400, "{reason:?}");
        let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(needle), "{reason:?}: {message}");
    }
    // A body far over any reason's size is 413, not 400.
    let huge = serde_json::json!({ "reason": "x".repeat(10 << 20) }).to_string();
    let r = post(huge).await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        registry.get("stripe").unwrap().state(),
        breakerbox::breaker::State::Closed
    );
    // A good one, with every answer's header.
    let r = post(r#"{"reason":"INC-123: stripe is down"}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    for path in ["/healthz", "/api/health/circuit-breakers", "/nope"] {
        let r = client
            .get(format!("http://{addr}{path}"))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let page = client.get(format!("http://{addr}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert_eq!(csp, breakerbox::http::DASHBOARD_CSP);
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/http-api.md")).unwrap();
    assert!(
        docs.contains(&format!("Content-Security-Policy: {csp}")),
        "docs/http-api.md quotes the CSP"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    registry.shutdown().await.unwrap();
}
