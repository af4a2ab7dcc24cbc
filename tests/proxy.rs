//! The sidecar proxy (`breakerbox proxy`), through real clients — curl, Python's urllib and
//! requests, PHP's curl extension — against the demo's stand-in upstreams: bytes passed exactly
//! both ways, the breaker opening and rejecting with 503 + Retry-After, fallbacks, recovery,
//! the log replaying to what the clients saw; bad input refused with nothing forwarded; each
//! limit at its bound.

use breakerbox::demo::{Script, pattern, start_upstream};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The stand-ins answer healthily for years (the demo's script phases are fractions of this).
const FOREVER: Script = Script {
    length_ms: 10 * 365 * 86_400_000,
};

/// Stand-ins for stripe and calcom on a runtime of their own, alive as long as this is.
struct StandIns {
    stripe: SocketAddr,
    calcom: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

fn stand_ins() -> StandIns {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stripe, calcom) = runtime.block_on(async {
        let now = Instant::now();
        (
            start_upstream("stripe", FOREVER, now).await.unwrap(),
            start_upstream("calcom", FOREVER, now).await.unwrap(),
        )
    });
    StandIns {
        stripe,
        calcom,
        _runtime: runtime,
    }
}

/// A running `breakerbox proxy`, stopped (SIGTERM) when dropped.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Sidecar {
    fn start(dir: &Path, config: &str) -> Sidecar {
        let config_path = dir.join("proxy.toml");
        std::fs::write(&config_path, config).unwrap();
        let db = dir.join("proxy.db");
        let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
            .args(["proxy", "--bind", "127.0.0.1:0", "--db"])
            .arg(&db)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("proxy.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // The readiness signal: the listening line, with the address.
        let first = lines.next().expect("a first line").unwrap();
        let addr = first
            .strip_prefix("proxy listening on http://")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("not a listening line: {first}"))
            .parse()
            .unwrap();
        Sidecar { child, addr, lines }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, and the rest of its output; it must stop cleanly.
    fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.lines.by_ref().map_while(Result::ok).collect();
        assert!(status.success(), "exit {status:?}: {rest:?}");
        assert!(rest.iter().any(|l| l == "stopped cleanly"), "{rest:?}");
        rest
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response as raw parts: status, headers (lower-case names), body.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The stand-in's count of requests received, as of this answer.
    fn seq(&self) -> u64 {
        self.header("x-standin-seq")
            .unwrap_or_else(|| panic!("not the stand-in's answer: {} {:?}", self.status, self.headers))
            .parse()
            .unwrap()
    }
}

/// Sends `request` as is (one request, `Connection: close`) and reads the whole answer.
fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out, true)
}

/// `wire`: the body is as on the wire (curl's output is already decoded).
fn parse_response(mut out: &[u8], wire: bool) -> Raw {
    // Informational answers first (curl's `Expect: 100-continue`): the final one follows.
    while out.starts_with(b"HTTP/1.1 1") {
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole 1xx head");
        out = &out[end + 4..];
    }
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(out)));
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = out[end + 4..].to_vec();
    if wire && headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked") {
        body = dechunk(&body);
    }
    Raw { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
}

/// Runs `send`, then waits until the stand-in at `stand_in` has received `n` more requests (its
/// count, read directly, not through the proxy): those requests are then in flight.
fn while_in_flight<T>(stand_in: SocketAddr, n: u64, what: &str, send: impl FnOnce() -> T) -> T {
    let before = get(stand_in, "/status/200").seq();
    let sent = send();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Each read is one request too.
    let mut reads = 1;
    loop {
        reads += 1;
        if get(stand_in, "/status/200").seq() >= before + (reads - 1) + n {
            return sent;
        }
        assert!(Instant::now() < deadline, "{what} never reached the stand-in");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn get(addr: SocketAddr, path: &str) -> Raw {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// curl's answer: (status, headers, body) with `--dump-header`.
fn curl(args: &[&str]) -> Raw {
    let out = Command::new("curl")
        .args(["-sS", "--include", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_response(&out.stdout, false)
}

fn breakerbox_json(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn expected_pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

/// A program the test needs; with CI=true, a missing one fails the test.
fn have(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "{program} is needed (scripts/test installs it) and CI=true"
        );
        eprintln!("skipping the {program} part: {program} is not installed (scripts/test installs it)");
    }
    ok
}

fn config(s: &StandIns, extra: &str) -> String {
    format!(
        r#"
[defaults]
call_timeout = "2s"

[services.stripe]
upstream = "http://{stripe}"
failure_threshold = 3
timeout = "2s"
success_threshold = 1
half_open_requests = 1

[[services.stripe.routes]]
method = "GET"
path = "/v1/prices/{{id}}"
fallback = "last_good"
max_age = "10m"

[[services.stripe.routes]]
method = "POST"
path = "/v1/customers"
operation = "customers.create"

[[services.stripe.routes]]
method = "GET"
path = "/v1/status-page"
fallback = "static"
status = 200
headers = {{ "content-type" = "application/json" }}
body = '{{"status":"degraded","source":"fallback"}}'

[services.calcom]
upstream = "http://{calcom}"
{extra}
"#,
        stripe = s.stripe,
        calcom = s.calcom,
    )
}

#[test]
fn real_clients_get_exact_bytes_a_breaker_that_opens_fallbacks_and_recovery() {
    let s = stand_ins();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Sidecar::start(dir.path(), &config(&s, ""));
    let addr = proxy.addr;

    // 10 MB down, with Content-Length and chunked, byte for byte (curl).
    let ten = 10_000_000u64;
    let want = expected_pattern(ten);
    for path in ["/stripe/bytes/10000000", "/stripe/bytes/10000000?chunked=1"] {
        let r = curl(&[&proxy.url(path)]);
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), want.len(), "{path}");
        assert!(r.body == want, "{path}: bytes differ");
        let chunked = path.contains("chunked");
        assert_eq!(r.header("content-length").is_none(), chunked, "{path}: {:?}", r.headers);
    }
    // 10 MB up and back, with Content-Length and chunked (curl).
    let upload = dir.path().join("upload.bin");
    let sent: Vec<u8> = (0..ten).map(|i| pattern(i * 7 + 3)).collect();
    std::fs::write(&upload, &sent).unwrap();
    let at_file = format!("@{}", upload.display());
    let r = curl(&["--data-binary", &at_file, &proxy.url("/stripe/echo")]);
    assert_eq!((r.status, r.body.len()), (200, sent.len()));
    assert!(r.body == sent, "echo with Content-Length differs");
    let r = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &at_file,
        &proxy.url("/stripe/echo"),
    ]);
    assert_eq!((r.status, r.body.len()), (200, sent.len()));
    assert!(r.body == sent, "chunked echo differs");

    // Headers: Host is the upstream's, hop-by-hop ones stay behind, the rest go through (urllib).
    let py = r#"
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"X-Trace": "abc", "Authorization": "Bearer sk_test_1", "Host": "evil.example"})
with urllib.request.urlopen(req) as r:
    print(json.dumps({"status": r.status, "seen": json.load(r)}))
"#;
    if have("python3", &["-c", "import urllib.request"]) {
        let out = Command::new("python3")
            .args(["-c", py, &proxy.url("/stripe/headers")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let seen = &v["seen"];
        assert_eq!(v["status"], 200);
        assert_eq!(seen["host"], s.stripe.to_string(), "{seen}");
        assert_eq!(seen["x-trace"], "abc");
        assert_eq!(
            seen["authorization"], "Bearer sk_test_1",
            "the app's credentials reach the upstream"
        );
        assert_eq!(seen["x-request-target"], "/headers");
    }
    // Hop-by-hop headers, and those `Connection` names, stay behind.
    let r = raw(
        addr,
        format!(
            "GET /stripe/headers HTTP/1.1\r\nHost: {addr}\r\nConnection: X-Private, close\r\nX-Private: secret\r\n\
             Keep-Alive: timeout=5\r\nProxy-Authorization: Bearer p\r\nTE: trailers\r\nUpgrade: websocket\r\nX-Kept: yes\r\n\r\n"
        )
        .as_bytes(),
    );
    let seen = r.json();
    for hop in ["keep-alive", "x-private", "proxy-authorization", "te", "upgrade"] {
        assert!(seen.get(hop).is_none(), "{hop} forwarded: {seen}");
    }
    assert_eq!(seen["x-kept"], "yes");

    // Python requests: a chunked upload from a generator, and JSON back.
    let py = r#"
import sys, requests
def body():
    for i in range(64):
        yield bytes([i % 251]) * 65536
r = requests.post(sys.argv[1], data=body())
data = b"".join(body())
print(r.status_code, len(r.content), r.content == data)
"#;
    if have("python3", &["-c", "import requests"]) {
        let out = Command::new("python3")
            .args(["-c", py, &proxy.url("/stripe/echo")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200 4194304 True");
    }

    // PHP's curl extension, as the Laravel app calls it.
    let php = r#"
$ch = curl_init($argv[1]);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
curl_setopt($ch, CURLOPT_POST, true);
curl_setopt($ch, CURLOPT_POSTFIELDS, str_repeat("php", 100000));
$body = curl_exec($ch);
echo curl_getinfo($ch, CURLINFO_RESPONSE_CODE), " ", strlen($body), " ", $body === str_repeat("php", 100000) ? "same" : "differs", "\n";
"#;
    if have("php", &["-r", "exit(function_exists('curl_init') ? 0 : 1);"]) {
        let out = Command::new("php")
            .args(["-r", php, &proxy.url("/stripe/echo")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200 300000 same");
    }

    // A healthy read of a last_good route is remembered (per path and caller).
    let price = get(addr, "/stripe/v1/prices/price_1");
    assert_eq!(price.status, 200);

    // Failures open the breaker: 3 upstream 500s, passed through as they are…
    for _ in 0..3 {
        let r = curl(&[&proxy.url("/stripe/status/500?retry_after=30")]);
        assert_eq!(r.status, 500, "the upstream's own answer is passed through");
    }
    let before = get(addr, "/calcom/status/200").seq(); // calcom is another breaker: still forwarded
    assert!(before >= 1);
    // …then stripe's calls are rejected, never forwarded: 503, Retry-After, X-Breaker-State
    // (as soon as the breaker's actor has folded the third failure).
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = curl(&[&proxy.url("/stripe/v1/charges")]);
        if r.status == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-breaker-state"), Some("open"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&retry),
        "the time left in OPEN (2 s), not the upstream's 30: {retry}"
    );
    let v = r.json();
    assert_eq!(
        (v["service"].as_str(), v["state"].as_str()),
        (Some("stripe"), Some("open")),
        "{v}"
    );
    // The last_good route answers with what it remembered, marked as such; another id has none.
    let r = get(addr, "/stripe/v1/prices/price_1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-breakerbox-fallback"), Some("last_good"));
    assert_eq!(r.body, price.body, "the remembered answer, byte for byte");
    assert!(r.header("age").is_some());
    let r = get(addr, "/stripe/v1/prices/price_2");
    assert_eq!(
        (r.status, r.header("x-breaker-state")),
        (503, Some("open")),
        "nothing remembered for another id"
    );
    // customers.create has a breaker of its own, closed: still forwarded.
    let r = raw(
        addr,
        format!(
            "POST /stripe/v1/customers HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(r.seq() > before, "forwarded");
    // The same route written otherwise (a trailing /, an escaped letter) is the same operation.
    let r = raw(
        addr,
        format!(
            "POST /stripe/v1/%63ustomers/ HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "customers.create's breaker, not stripe's (open)");
    // The static fallback route.
    let r = get(addr, "/stripe/v1/status-page");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-breakerbox-fallback"), Some("static"));
    assert_eq!(r.json()["source"], "fallback");

    // PHP sees the same: 503, Retry-After, X-Breaker-State, the JSON naming the service.
    let php = r#"
$ch = curl_init($argv[1]);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
curl_setopt($ch, CURLOPT_HEADER, true);
$out = curl_exec($ch);
$size = curl_getinfo($ch, CURLINFO_HEADER_SIZE);
$head = strtolower(substr($out, 0, $size));
$body = json_decode(substr($out, $size), true);
preg_match('/retry-after: (\d+)/', $head, $retry);
preg_match('/x-breaker-state: (\w+)/', $head, $state);
echo curl_getinfo($ch, CURLINFO_RESPONSE_CODE), " ", $retry[1] > 0 ? "retry" : "no-retry", " ", $state[1], " ", $body["service"], "\n";
"#;
    if have("php", &["-r", "exit(function_exists('curl_init') ? 0 : 1);"]) {
        let out = Command::new("php")
            .args(["-r", php, &proxy.url("/stripe/v1/charges")])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "503 retry open stripe");
    }

    // Recovery: after the OPEN period a trial call goes through and closes it.
    std::thread::sleep(Duration::from_millis(2_100));
    let deadline = Instant::now() + Duration::from_secs(10);
    let trial = loop {
        let r = get(addr, "/stripe/status/200");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(trial.status, 200, "a trial call passed");
    // The trial's success closes it as soon as its actor folds it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed = get(addr, "/stripe/v1/charges");
    while closed.status == 503 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        closed = get(addr, "/stripe/v1/charges");
    }
    assert_eq!(closed.status, 200, "closed again");

    // The Retry-After the upstream sent is recorded, not acted on.
    proxy.stop();
    let stderr = std::fs::read_to_string(dir.path().join("proxy.stderr")).unwrap();
    assert!(stderr.contains("Retry-After"), "{stderr}");
    assert!(!stderr.contains("sk_test_1"), "credentials are never logged");

    // The log replays to what the clients saw: stripe closed after one opening, its rejections
    // and fallbacks counted; calcom never opened.
    let db = dir.path().join("proxy.db");
    let cfg = dir.path().join("proxy.toml");
    let report = breakerbox_json(&[
        "status",
        "--json",
        "--db",
        db.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    let breakers = report["breakers"].as_array().unwrap_or_else(|| panic!("{report}"));
    let find = |key: &str| {
        breakers
            .iter()
            .find(|b| b["service"] == key)
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    assert_eq!(find("stripe")["state"], "closed", "{report}");
    assert_eq!(find("calcom")["state"], "closed");
    let stripe = find("stripe");
    assert_eq!(stripe["openings_10m"], 1, "{stripe}");
    let m = &stripe["metrics_5m"];
    assert!(m["rejected"].as_u64().unwrap() >= 1, "{m}");
    assert_eq!(m["fallbacks"], 2, "the last_good and the static answers: {m}");
    assert!(m["failures"].as_u64().unwrap() >= 3, "{m}");
    assert!(m["calls"].as_u64().unwrap() >= 8, "{m}");
    assert_eq!(find("stripe/customers.create")["metrics_5m"]["calls"], 2, "{report}");
}

/// A listener whose accept queue is full: a connection to it hangs (its SYN is dropped), as to
/// an upstream that is down without refusing.
fn black_hole() -> (
    SocketAddr,
    Vec<std::net::TcpStream>,
    tokio::net::TcpListener,
    tokio::runtime::Runtime,
) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        s.listen(1).unwrap()
    });
    let addr = listener.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => fill.push(c),
            Err(_) => break,
        }
    }
    (addr, fill, listener, rt)
}

#[test]
fn bad_input_is_refused_with_nothing_forwarded_and_every_limit_holds_at_its_bound() {
    let s = stand_ins();
    let (hole, _fill, _listener, _rt) = black_hole();
    let dir = tempfile::tempdir().unwrap();
    let calcom_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        r#"
[services.blackhole]
upstream = "http://{hole}"

[services.refusing]
upstream = "http://127.0.0.1:1"

[proxy]
max_body = "1MiB"
max_header = "4KiB"
max_concurrent = 2
connect_timeout = "300ms"
total_timeout = "3s"

[proxy.ports]
calcom = {calcom_port}
"#
    );
    let mut proxy = Sidecar::start(dir.path(), &config(&s, &extra));
    let addr = proxy.addr;
    // calcom's own port: no prefix, and only calcom behind it.
    let line = proxy.lines.next().unwrap().unwrap();
    assert_eq!(
        line,
        format!(
            "proxy for calcom listening on http://127.0.0.1:{calcom_port} (/… → http://{})",
            s.calcom
        )
    );
    let calcom_port: SocketAddr = format!("127.0.0.1:{calcom_port}").parse().unwrap();
    let r = get(calcom_port, "/headers");
    assert_eq!(r.json()["host"], s.calcom.to_string());
    let r = get(calcom_port, "/stripe/v1/charges").json();
    assert_eq!(
        (&r["service"], &r["path"]),
        (&Value::from("calcom"), &Value::from("/stripe/v1/charges")),
        "a path under calcom's own port is calcom's: {r}"
    );
    // How many requests each stand-in has had, read through the proxy (one more each time).
    let stripe_seq = || get(addr, "/stripe/status/200").seq();
    let calcom_seq = || get(addr, "/calcom/status/200").seq();
    let (stripe0, calcom0) = (stripe_seq(), calcom_seq());

    // An unconfigured service: 404 naming it, never forwarded.
    let r = get(addr, "/nope/v1/charges");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("\"nope\""), "{}", r.json());
    // Paths trying to leave the prefix, plain and encoded: 400.
    for path in [
        "/stripe/../calcom/status/200",
        "/stripe/%2e%2e/calcom/status/200",
        "/stripe/%2E%2E/calcom/status/200",
        "/stripe/.%2e/calcom/status/200",
        "/stripe/%252e%252e/calcom/status/200",
        "/stripe/v1%2f..%2f..%2fcalcom",
        "/stripe/v1%5c..%5ccalcom",
        "/stripe/v1/%0d%0aX-Injected:%201",
        "/stripe/..;/calcom/status/200",
        "/stripe/%2e%2e%3b/calcom/status/200",
        "/stripe//evil.example/status/200",
    ] {
        let r = get(addr, path);
        assert_eq!(r.status, 400, "{path}: {}", String::from_utf8_lossy(&r.body));
    }
    // Header injection: a bare CR, an obs-fold, a NUL — the parser refuses them.
    for bad in ["X-A: b\rX-Injected: 1\r\n", "X-A: b\r\n folded: 1\r\n", "X-A: b\0c\r\n"] {
        let r = raw(
            addr,
            format!("GET /stripe/status/200 HTTP/1.1\r\nHost: x\r\n{bad}Connection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "{bad:?}");
    }
    // Request smuggling: Content-Length beside chunked. The parser takes the chunked body (an
    // empty one), drops Content-Length and closes the connection after the answer, so the
    // smuggled second request is never read, and calcom (below) never sees it.
    let r = raw(
        addr,
        b"POST /stripe/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\nGET /calcom/status/200 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.body.len()),
        (200, 0),
        "one answer, to the POST, with its empty body"
    );
    // The configured upstream whatever the absolute-form line or Host says.
    let r = raw(
        addr,
        format!(
            "GET http://{}/stripe/headers HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.calcom, s.calcom
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["host"], s.stripe.to_string());
    // Nothing of the above reached calcom; stripe saw the absolute-form request (and the
    // smuggling attempt's POST, if the parser took it as chunked) only.
    assert_eq!(calcom_seq(), calcom0 + 1, "calcom: only this probe");
    // stripe saw the smuggling attempt's POST and the absolute-form request; this read is the third.
    assert_eq!(stripe_seq(), stripe0 + 3);

    // max_body: exactly 1 MiB goes through; one byte more is 413, before anything is sent.
    let mib = 1usize << 20;
    let body = vec![b'x'; mib];
    let mut req =
        format!("POST /stripe/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {mib}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    req.extend_from_slice(&body);
    let r = raw(addr, &req);
    assert_eq!((r.status, r.body.len()), (200, mib));
    assert!(r.body == body);
    let before = stripe_seq();
    let r = raw(
        addr,
        format!(
            "POST /stripe/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            mib + 1
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 413);
    assert!(r.json()["error"].as_str().unwrap().contains("1048577"), "{}", r.json());
    // …and a chunked body that grows past it while streaming (to an upstream that answers once
    // it has the whole body, as most APIs do).
    let mut req =
        b"POST /stripe/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..2 {
        req.extend_from_slice(format!("{:x}\r\n", mib / 2).as_bytes());
        req.extend_from_slice(&body[..mib / 2]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
    let r = raw(addr, &req);
    assert_eq!(r.status, 413);
    assert_eq!(stripe_seq(), before + 2, "the Content-Length one never reached stripe");

    // A malformed chunked body is the client's fault: 400, and never a failure of stripe's (3
    // of them would open its breaker).
    for _ in 0..4 {
        let r = raw(
            addr,
            b"POST /stripe/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n4\r\nabcd\r\nzz\r\n",
        );
        assert!(r.status == 400, "{}", r.status);
    }
    assert_eq!(
        get(addr, "/stripe/status/200").status,
        200,
        "stripe's breaker is still closed"
    );

    // max_header: 4 KiB of request line and headers pass, one byte more is 431.
    let head = |value_len: usize| {
        format!(
            "GET /stripe/status/200 HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {}\r\n\r\n",
            "v".repeat(value_len)
        )
    };
    // As the proxy counts: method + target + 12, and name + value + 4 per header.
    let fixed = 3 + "/stripe/status/200".len() + 12 + (4 + 1 + 4) + (10 + 5 + 4) + (5 + 4);
    assert_eq!(raw(addr, head(4096 - fixed).as_bytes()).status, 200);
    assert_eq!(raw(addr, head(4096 - fixed + 1).as_bytes()).status, 431);

    // max_concurrent: two slow calls in flight, the third is refused by the bulkhead. In flight
    // means the stand-in has them: its count, read directly (not through the proxy), rises by
    // two besides the reads themselves.
    let slow = while_in_flight(s.stripe, 2, "the two slow calls", || {
        (0..2)
            .map(|_| std::thread::spawn(move || get(addr, "/stripe/delay/1500").status))
            .collect::<Vec<_>>()
    });
    let third = get(addr, "/stripe/status/200");
    assert_eq!(third.status, 503);
    assert_eq!(third.header("x-breakerbox-reason"), Some("bulkhead"));
    for t in slow {
        assert_eq!(t.join().unwrap(), 200, "the two in flight were served");
    }

    // call_timeout (2 s): an answer slower than it is a 504, and a timeout for the breaker.
    let t = Instant::now();
    let r = get(addr, "/stripe/delay/2500");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_millis(2_450), "{:?}", t.elapsed());
    // total_timeout (3 s): a body still streaming then is cut off.
    let t = Instant::now();
    let r = {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /stripe/slow-body/5000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("first chunk;"), "{r}");
    assert!(!r.contains("last chunk"), "{r}");
    assert!(t.elapsed() < Duration::from_millis(4_500), "{:?}", t.elapsed());
    // total_timeout also ends the calls of clients that stopped reading (nobody polls their
    // bodies): their bulkhead places come back, so a third request gets through after it.
    let stalled = while_in_flight(s.stripe, 2, "the two stalled requests", || {
        (0..2)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"GET /stripe/bytes/200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                c
            })
            .collect::<Vec<_>>()
    });
    let third = get(addr, "/stripe/status/200");
    assert_eq!(
        (third.status, third.header("x-breakerbox-reason")),
        (503, Some("bulkhead")),
        "the two stalled exchanges hold the bulkhead"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let freed = loop {
        let r = get(addr, "/stripe/status/200");
        if r.status != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(freed.status, 200, "and total_timeout gave their places back");
    drop(stalled);

    // connect_timeout (300 ms): an upstream that never answers the SYN.
    let t = Instant::now();
    let r = get(addr, "/blackhole/x");
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(t.elapsed() < Duration::from_millis(1_500), "{:?}", t.elapsed());
    // An upstream refusing connections: 502 naming it.
    let r = get(addr, "/refusing/x");
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error"].as_str().unwrap().contains("127.0.0.1:1"),
        "{}",
        r.json()
    );
    // A port is never shared: a second proxy on it fails to start, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["proxy", "--bind", &addr.to_string(), "--db"])
        .arg(dir.path().join("second.db"))
        .arg("--config")
        .arg(dir.path().join("proxy.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr.to_string()) && stderr.to_lowercase().contains("in use"),
        "{stderr}"
    );
    proxy.stop();

    // Never an open proxy: anything but loopback needs tokens.
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["proxy", "--bind", "0.0.0.0:0", "--db"])
        .arg(dir.path().join("other.db"))
        .arg("--config")
        .arg(dir.path().join("proxy.toml"))
        .env_remove("CIRCUIT_BREAKER_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without tokens"));
}

#[test]
fn off_loopback_a_client_must_show_a_token_which_is_never_forwarded() {
    use breakerbox::actor::Registry;
    use breakerbox::config::{Config, Secret};
    use breakerbox::journal::Journal;
    use breakerbox::proxy::{Proxy, ProxyOptions};
    let s = stand_ins();
    actix_web::rt::System::new().block_on(async {
        let config = Config::from_toml(Path::new("t.toml"), &config(&s, ""), &Default::default()).unwrap();
        let journal = std::sync::Arc::new(Journal::in_memory().await.unwrap());
        let registry = Registry::start(&config, journal, Default::default()).await.unwrap();
        // Tokens are what a non-loopback bind requires; given here on loopback, they are checked the same.
        let proxy = Proxy::start(
            &registry,
            &config,
            ProxyOptions {
                bind: "127.0.0.1:0".parse().unwrap(),
                tokens: vec![Secret::new("sidecar-token-0123456789abcdef0123")],
                threads: Some(1),
            },
        )
        .unwrap();
        let addr = proxy.addrs()[0].0;
        let r = tokio::task::spawn_blocking(move || {
            let without = get(addr, "/stripe/headers");
            let wrong = raw(addr, b"GET /stripe/headers HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer nope\r\nConnection: close\r\n\r\n");
            let right = raw(addr, b"GET /stripe/headers HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer sidecar-token-0123456789abcdef0123\r\nConnection: close\r\n\r\n");
            (without, wrong, right)
        })
        .await
        .unwrap();
        let (without, wrong, right) = r;
        assert_eq!(without.status, 407);
        assert_eq!(without.header("proxy-authenticate"), Some("Bearer"));
        assert_eq!(wrong.status, 407);
        assert_eq!(right.status, 200);
        assert!(right.json().get("proxy-authorization").is_none(), "the token stays here");
        assert_eq!(proxy.stats().refused.load(std::sync::atomic::Ordering::Relaxed), 2);
        proxy.stop().await;
        registry.shutdown().await.unwrap();
        // Without tokens, anything but loopback is refused before binding.
        let refused = Proxy::start(
            &registry,
            &config,
            ProxyOptions {
                bind: "0.0.0.0:0".parse().unwrap(),
                tokens: Vec::new(),
                threads: Some(1),
            },
        );
        assert!(matches!(refused, Err(breakerbox::proxy::ProxyError::Unprotected(_))));
    });
}

#[test]
fn serve_runs_the_proxy_beside_the_api_when_the_config_says_so() {
    let s = stand_ins();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config_path = dir.path().join("serve.toml");
    std::fs::write(
        &config_path,
        config(&s, &format!("[proxy]\nenabled = true\nbind = \"127.0.0.1:{port}\"\n")),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--bind", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("serve.db"))
        .arg("--config")
        .arg(&config_path)
        .env("CIRCUIT_BREAKER_API_TOKEN", "ci:token-for-the-test-0123456789abcdef")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(
        first.starts_with(&format!("proxy listening on http://127.0.0.1:{port} (")),
        "{first}"
    );
    let api = lines.next().unwrap().unwrap();
    assert!(api.starts_with("listening on http://127.0.0.1:"), "{api}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = get(addr, "/stripe/status/200");
    assert_eq!(r.status, 200);
    assert!(r.seq() >= 1);
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        status.success() && rest.iter().any(|l| l == "stopped cleanly"),
        "{rest:?}"
    );
}

#[test]
fn upstreams_are_reached_over_tls_verified_against_the_configured_roots() {
    if !have("openssl", &["version"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA, and a certificate for 127.0.0.1 signed by it.
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout srv.key -out srv.csr 2>/dev/null");
    sh(
        "printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n' > ext.cnf && \
        openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null",
    );
    std::fs::write(d.join("hello.txt"), "over TLS\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // openssl's own TLS server, serving this directory's files.
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "srv.pem",
            "-key",
            "srv.key",
            "-WWW",
        ])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let upstream = format!("[services.secure]\nupstream = \"https://127.0.0.1:{port}\"\n");
    // Verified against the configured CA: forwarded over TLS.
    let with_ca = d.join("with-ca");
    std::fs::create_dir(&with_ca).unwrap();
    let proxy = Sidecar::start(
        &with_ca,
        &format!("{upstream}[proxy]\nca_file = \"{}\"\n", d.join("ca.pem").display()),
    );
    let r = get(proxy.addr, "/secure/hello.txt");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"over TLS\n"[..]));
    proxy.stop();
    // Against the system's roots the same certificate is refused: 502, naming why.
    let system = d.join("system");
    std::fs::create_dir(&system).unwrap();
    let proxy = Sidecar::start(&system, &upstream);
    let r = get(proxy.addr, "/secure/hello.txt");
    assert_eq!(r.status, 502);
    let why = r.json()["error"].as_str().unwrap().to_owned();
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    proxy.stop();
    let _ = server.kill();
    let _ = server.wait();
}
