//! Faults, as a user meets them with the release binary: a full disk, an immutable file, a lock
//! held by another process or a corrupt page under `serve`, a disk that fills under `demo`, a
//! stderr whose reader has gone, an environment that is not UTF-8. Each asserts what an operator
//! relies on: the breakers' states are answered, a command is answered in its bound and
//! truthfully, SIGTERM ends the process in its bound, nothing acknowledged is lost.
//!
//! The disk is a real tmpfs mounted for the test (tests run as root here). Where mounting is not
//! allowed the test says so; under `CI=true` that is a failure, never a silent skip.

#[path = "support/lock.rs"]
mod lock;
#[path = "support/tamper.rs"]
mod tamper;

use serde_json::Value;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "fault-test-token-0123456789abcdef";

/// A tmpfs of `mb` MiB mounted on a fresh directory, unmounted when dropped. `None` (said on
/// stderr) where this machine does not allow it and `CI` is not set.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mb: u32) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                let message = format!("mounting a tmpfs needs root (CAP_SYS_ADMIN): {why}");
                assert!(std::env::var_os("CI").is_none(), "{message}");
                eprintln!("skipped: {message}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes zeros beside the log until the disk is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let block = vec![0u8; 1 << 20];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// `serve` on `db` with a token, its address, and its stdout lines as they come.
fn serve(db: &Path, stderr: Stdio) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--db", db.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .env("CIRCUIT_BREAKER_API_TOKEN", format!("ci:{TOKEN}"))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("serve says where it listens");
    let addr = line
        .strip_prefix("listening on http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    (child, addr, rx)
}

/// One request; the status and the body.
fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn breaker<'a>(doc: &'a Value, key: &str) -> &'a Value {
    doc["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["service"] == key)
        .unwrap_or_else(|| panic!("{key} in {doc}"))
}

/// Sends SIGTERM and waits for the exit; how long it took and how it ended.
fn sigterm(child: &mut Child, bound: Duration) -> (Duration, std::process::ExitStatus) {
    let started = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (started.elapsed(), status);
        }
        if started.elapsed() > bound + Duration::from_secs(10) {
            let _ = child.kill();
            panic!("still running {:?} after SIGTERM", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How the log fails under `serve`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// The disk fills up (a 16 MB tmpfs).
    DiskFull,
    /// The data files become immutable (`chattr +i`: even root cannot write them).
    Immutable,
    /// Another process holds the database's write lock (`BEGIN IMMEDIATE`).
    Locked,
    /// A page of the file was damaged at rest; the background integrity check finds it.
    Corrupt,
}

#[test]
fn serve_on_a_full_disk_answers_states_and_commands_and_stops_on_sigterm_in_its_bound() {
    let Some(disk) = Tmpfs::mount(16) else { return };
    under_fault(Fault::DiskFull, disk.path(), |_| disk.fill());
}

#[test]
fn serve_on_an_immutable_log_answers_states_and_commands_and_stops_on_sigterm_in_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    // The data files. Not `-shm`: SQLite maps it into memory, and a write fault on an
    // immutable mapped page is SIGBUS, which no process survives (docs/durability.md).
    let files = ["log.db", "log.db-wal"].map(|f| dir.path().join(f));
    let chattr = |flag: &str, f: &Path| Command::new("chattr").arg(flag).arg(f).output();
    // Can this machine make a file immutable? (root and a file system that keeps the flag)
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"").unwrap();
    match chattr("+i", &probe) {
        Ok(o) if o.status.success() => {
            chattr("-i", &probe).unwrap();
        }
        other => {
            let message = format!("chattr +i needs root and e2fsprogs: {other:?}");
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("skipped: {message}");
            return;
        }
    }
    // Made writable again however the test ends, so the directory can be removed.
    struct Mutable<'a>(&'a [std::path::PathBuf]);
    impl Drop for Mutable<'_> {
        fn drop(&mut self) {
            for f in self.0 {
                let _ = Command::new("chattr").arg("-i").arg(f).output();
            }
        }
    }
    let _mutable = Mutable(&files);
    under_fault(Fault::Immutable, dir.path(), |_| {
        for f in &files {
            let o = chattr("+i", f).unwrap();
            assert!(o.status.success(), "chattr +i {}: {o:?}", f.display());
        }
    });
}

#[test]
fn serve_with_its_log_locked_by_another_process_answers_and_stops_on_sigterm_in_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let mut lock = None;
    under_fault(Fault::Locked, dir.path(), |_| lock = Some(lock::hold_write_lock(&db)));
    if let Some(mut lock) = lock {
        lock.release();
    }
}

#[test]
fn serve_on_a_log_found_corrupt_while_serving_answers_states_and_commands_and_stops_on_sigterm_in_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    // Given a log of many pages, then a server on it that stopped cleanly (so the next open
    // skips the full check and runs it in the background)
    a_log_of_many_pages(&db);
    let (mut child, addr, _lines) = serve(&db, Stdio::null());
    // (asked once, so the metrics projection has folded the whole log: the next start reads
    // nothing of it)
    let (code, _) = request(&addr, "GET", "/api/health/circuit-breakers", "");
    assert_eq!(code, 200);
    let (_, status) = sigterm(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let mut marker = db.clone().into_os_string();
    marker.push("-clean");
    assert!(Path::new(&marker).exists(), "a clean stop leaves its marker");
    // and a page of it damaged at rest (its mtime kept, as bit rot leaves it)
    tamper::damage_a_page(&db, true);
    under_fault(Fault::Corrupt, dir.path(), |addr| {
        // The background check starts 1 s after the open; its finding shows in the health
        // document.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = request(addr, "GET", "/api/health/circuit-breakers", "");
            if json(&body)["log"]["kind"] == "corrupt" {
                break;
            }
            assert!(Instant::now() < deadline, "the damage is not found after 30 s: {body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// A log of many pages before any `serve` runs on it: 20,000 calls (recent ones, so retention
/// leaves them) of a breaker since removed from the configuration, with a snapshot every 100.
/// Nothing reads them at start-up, so a page damaged among them is found by the integrity
/// check alone.
fn a_log_of_many_pages(db: &Path) {
    use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
    use breakerbox::journal::{Body, Journal, JournalOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let journal = Journal::open(db, JournalOptions::default()).await.unwrap();
        let stream: std::sync::Arc<str> = std::sync::Arc::from("paypal");
        let mut b = Breaker::new(Policy::consecutive(3, 100)).unwrap();
        let start = breakerbox::actor::system_now_ms() - 60_000;
        let mut events = Vec::new();
        for i in 0..20_000u64 {
            let t = start + i;
            if let Decision::Permit(p) = b.acquire(t, &mut events) {
                let outcome = if i % 5 == 0 { Outcome::Failure } else { Outcome::Success };
                b.complete(t, p, outcome, &mut events);
            }
            for e in events.drain(..) {
                journal.submit(&stream, Body::Breaker(e));
            }
            if i % 100 == 0 {
                journal.submit(
                    &stream,
                    Body::Snapshot {
                        at_ms: t,
                        breaker: Box::new(b.clone()),
                    },
                );
            }
        }
        journal.flush().await.unwrap();
        journal.close().await;
    });
    let len = std::fs::metadata(db).unwrap().len();
    assert!(len > 256 * 1024, "a log of many pages ({len} bytes)");
}

/// `serve` on a log in `dir`, then `fault_now(address)` makes the log fail under it (or, for
/// a corruption there from the start, waits until it is found).
fn under_fault(fault: Fault, dir: &Path, fault_now: impl FnOnce(&str)) {
    let db = dir.join("log.db");
    // Its log lines, kept off the faulty disk.
    let logs = tempfile::tempdir().unwrap();
    let stderr = logs.path().join("serve.stderr");
    let (mut child, addr, lines) = serve(&db, std::fs::File::create(&stderr).unwrap().into());
    // Dashboards on the event stream must not hold the stop up.
    let streams: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                write!(
                    s,
                    "GET /api/events/stream HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                )
                .unwrap();
                let mut all = String::new();
                let _ = s.read_to_string(&mut all);
                all
            })
        })
        .collect();
    // One command first, so the files exist and the lock is this process's to lose. (Not with
    // the damage already there: it would race the check that finds it.)
    if fault != Fault::Corrupt {
        let (code, _) = request(
            &addr,
            "POST",
            "/api/circuit-breakers/calcom/reset",
            r#"{"reason":"before"}"#,
        );
        assert_eq!(code, 200);
    }
    fault_now(&addr);

    // A command is answered within its bound, applied, and said not to be durable.
    let started = Instant::now();
    let (code, body) = request(
        &addr,
        "POST",
        "/api/circuit-breakers/stripe/force-open",
        r#"{"reason":"stripe is down"}"#,
    );
    let waited = started.elapsed();
    assert_eq!(code, 202, "{body}");
    assert!(waited < Duration::from_secs(5), "answered after {waited:?}");
    let answer = json(&body);
    assert_eq!(
        (answer["durable"].as_bool(), answer["to"].as_str()),
        (Some(false), Some("forced_open"))
    );
    let kind = answer["log"]["kind"].clone();
    match fault {
        Fault::DiskFull => assert_eq!(kind, "full", "{answer}"),
        Fault::Immutable => assert_eq!(kind, "read_only", "{answer}"),
        Fault::Corrupt => assert_eq!(kind, "corrupt", "{answer}"),
        // The first attempt may still be waiting out its busy timeout: not failed yet, or busy.
        Fault::Locked => assert!(kind.is_null() || kind == "busy", "{answer}"),
    }

    // The health document still has every breaker's state, and the log's condition.
    let (code, body) = request(&addr, "GET", "/api/health/circuit-breakers", "");
    assert_eq!(code, 200, "the log's outage does not make the process unready: {body}");
    let doc = json(&body);
    if fault != Fault::Locked {
        assert_eq!(doc["status"], "fail");
        assert_eq!(doc["log"]["status"], "failing", "{doc}");
        assert_eq!(doc["log"]["kind"], kind, "{doc}");
        assert!(doc["log"]["since_ms"].as_u64().is_some(), "{doc}");
    }
    assert_eq!(breaker(&doc, "stripe")["state"], "forced_open");
    assert_eq!(breaker(&doc, "calcom")["state"], "closed");
    let (code, metrics) = request(&addr, "GET", "/metrics", "");
    assert_eq!(code, 200, "{metrics}");
    assert!(metrics.contains("circuit_breaker_state{service=\"stripe\",state=\"forced_open\"} 1"));
    assert!(
        metrics.contains("resilience4j_circuitbreaker_state{name=\"stripe\",state=\"forced_open\"} 1"),
        "{metrics}"
    );
    if fault != Fault::Locked {
        assert!(metrics.contains("circuit_breaker_event_log_up 0"), "{metrics}");
    }

    // SIGTERM ends it within the bound (5 s), saying what was not written.
    let (took, status) = sigterm(&mut child, Duration::from_secs(5));
    assert!(took < Duration::from_secs(7), "stopped after {took:?}");
    assert!(!status.success(), "unwritten events are an error exit");
    let said: Vec<String> = lines.try_iter().collect();
    assert!(!said.iter().any(|l| l == "stopped cleanly"), "{said:?}");
    // The outage is logged once, not once a second for as long as it lasts.
    let logged = std::fs::read_to_string(&stderr).unwrap();
    assert!(logged.matches("metrics projection failed").count() <= 1, "{logged}");
    for s in streams {
        let all = s.join().unwrap();
        assert!(
            all.contains("event: shutdown"),
            "each stream ends with a closing event: {all}"
        );
    }
}

#[test]
fn the_demo_on_a_disk_that_fills_ends_in_its_bound_and_says_why_there_is_no_summary() {
    const DURATION: Duration = Duration::from_secs(5);
    let Some(disk) = Tmpfs::mount(16) else { return };
    let db = disk.path().join("log.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["demo", "--duration", "5s", "--bind", "127.0.0.1:0", "--db"])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The traffic, and the demo's clock, start right after this line.
    let mut said = Vec::new();
    let running = loop {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("transitions as they happen") => break Instant::now(),
            Ok(line) => said.push(line),
            Err(e) => panic!("the demo did not start ({e}): {said:?}"),
        }
    };
    disk.fill();
    // It ends within its duration and the stop bound (5 s), however full the disk is.
    let bound = DURATION + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if running.elapsed() > bound + Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the demo still runs {:?} after it started", running.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = running.elapsed();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    said.extend(lines.try_iter());
    assert!(
        took < bound + Duration::from_secs(1),
        "ended {took:?} after it started: {stderr}"
    );
    // With an error exit that says why there is no summary
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: no summary: the event log is failing (full"),
        "{stderr}"
    );
    assert!(!said.iter().any(|l| l.contains("post-incident summary")), "{said:?}");
}

#[test]
fn a_closed_stderr_never_turns_a_command_into_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    // `serve 2>&1 | tee log` with tee gone: stderr is a pipe whose reader has exited.
    let (mut child, addr, lines) = serve(&db, Stdio::piped());
    drop(child.stderr.take());
    let (code, body) = request(
        &addr,
        "POST",
        "/api/circuit-breakers/stripe/force-open",
        r#"{"reason":"logged to nowhere"}"#,
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["durable"], true);
    let (_, body) = request(&addr, "GET", "/api/health/circuit-breakers/stripe", "");
    assert_eq!(breaker(&json(&body), "stripe")["state"], "forced_open");
    let (_, status) = sigterm(&mut child, Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let said: Vec<String> = lines.try_iter().collect();
    assert!(
        said.iter()
            .any(|l| l.ends_with("log lines could not be written to stderr")),
        "the lost log lines are counted and said where they can be read: {said:?}"
    );
    // What it said it did is in the log: a restart has stripe still forced open.
    let (mut child, addr, _lines) = serve(&db, Stdio::null());
    let (_, body) = request(&addr, "GET", "/api/health/circuit-breakers/stripe", "");
    assert_eq!(breaker(&json(&body), "stripe")["state"], "forced_open", "{body}");
    let (_, status) = sigterm(&mut child, Duration::from_secs(5));
    assert!(status.success());
    // Each stop anchored the heads it wrote, and the chain passes through them.
    let out = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["verify", "--db", db.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["anchors_checked"].as_u64().unwrap() >= 2, "{report}");
}

#[test]
fn commands_whose_output_is_cut_short_end_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let (mut child, addr, _lines) = serve(&db, Stdio::null());
    for _ in 0..20 {
        request(
            &addr,
            "POST",
            "/api/circuit-breakers/stripe/reset",
            r#"{"reason":"many lines"}"#,
        );
    }
    sigterm(&mut child, Duration::from_secs(5));
    // `audit --db X 2>&1 | head -1`: stdout and stderr are one pipe, closed after one line.
    let (reader, writer) = std::io::pipe().unwrap();
    let mut audit = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["audit", "--db", db.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(reader).read_line(&mut first).unwrap();
    // The reader goes away here.
    let status = audit.wait().unwrap();
    assert_ne!(status.code(), Some(101), "a panic: {first}");
    assert!(status.success(), "{status:?}");
}

fn breakerbox_with_env(args: &[&str], var: &str, value: &[u8]) -> std::process::Output {
    use std::os::unix::ffi::OsStrExt;
    Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .env(var, std::ffi::OsStr::from_bytes(value))
        .output()
        .unwrap()
}

#[test]
fn an_environment_that_is_not_utf8_is_read_without_a_panic() {
    // Someone else's variable: ignored.
    let out = breakerbox_with_env(&["config", "check"], "UNRELATED", b"\xff");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One of ours: named, exit code 2.
    let out = breakerbox_with_env(&["config", "check"], "CIRCUIT_BREAKER_TIMEOUT", b"\xff");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CIRCUIT_BREAKER_TIMEOUT") && err.contains("not valid UTF-8"),
        "{err}"
    );
    // The demo reads the same validated environment as every other command.
    let dir = tempfile::tempdir().unwrap();
    let db: PathBuf = dir.path().join("demo.db");
    let out = breakerbox_with_env(
        &["demo", "--db", db.to_str().unwrap(), "--duration", "5s"],
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        b"abc",
    );
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CIRCUIT_BREAKER_FAILURE_THRESHOLD"), "{err}");
}

/// One request that may fail (the server is being killed): the status and body, or `None`.
fn try_request(addr: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

#[test]
fn a_hundred_sigkills_of_serve_under_command_load_lose_no_acknowledged_command() {
    const CYCLES: u64 = 100;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let started = Instant::now();
    // (position, reason) of every command answered `200, durable`.
    let mut acknowledged: Vec<(i64, String)> = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for cycle in 0..CYCLES {
        let (mut child, addr, _lines) = serve(&db, Stdio::null());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for n in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let action = if n % 2 == 0 { "force-open" } else { "reset" };
                    let reason = format!("cycle {cycle} command {n}");
                    let body = format!(r#"{{"reason":"{reason}"}}"#);
                    match try_request(&addr, &format!("/api/circuit-breakers/stripe/{action}"), &body) {
                        Some((200, answer)) => {
                            let v: Value = serde_json::from_str(&answer).unwrap();
                            assert_eq!(v["durable"], true, "{answer}");
                            acked.push((v["position"].as_i64().unwrap(), reason));
                        }
                        Some((code, answer)) => panic!("cycle {cycle}: {code} {answer}"),
                        None => break,
                    }
                }
                acked
            })
        };
        // Killed at a seeded instant 30–230 ms into the load.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(30 + seed % 200));
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        acknowledged.extend(load.join().unwrap());
    }
    let took = started.elapsed();
    // Every acknowledged command is in the log, at the position its answer named.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stored: std::collections::BTreeMap<i64, String> = rt.block_on(async {
        let journal = breakerbox::journal::Journal::open(&db, breakerbox::journal::JournalOptions::default())
            .await
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        let mut after = 0;
        loop {
            let page = journal
                .read_range(&["operator_command"], 0, i64::MAX, after, 1_000)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            for e in &page {
                let c: breakerbox::journal::OperatorCommand = breakerbox::journal::decode_record(e).unwrap();
                out.insert(e.position, c.operator.why);
            }
        }
        let report = journal.verify().await.unwrap();
        assert!(report.ok(), "the chain holds across every kill: {:?}", report.findings);
        journal.close().await;
        out
    });
    let lost: Vec<&(i64, String)> = acknowledged
        .iter()
        .filter(|(p, why)| stored.get(p) != Some(why))
        .collect();
    eprintln!(
        "{CYCLES} SIGKILLs in {:.1} s: {} commands acknowledged, {} in the log, {} lost",
        took.as_secs_f64(),
        acknowledged.len(),
        stored.len(),
        lost.len()
    );
    assert!(
        acknowledged.len() as u64 >= CYCLES,
        "the load ran: {} acknowledged",
        acknowledged.len()
    );
    assert!(lost.is_empty(), "acknowledged but not in the log: {lost:?}");
}

/// The fuzz targets' committed corpora (`fuzz/corpus/TARGET/*`, seeds and whatever `cargo fuzz`
/// found worth keeping) replayed through the same bodies: none may panic.
#[test]
fn the_fuzz_corpora_replay_without_a_panic() {
    type Body = fn(&[u8]);
    let targets: [(&str, Body); 4] = [
        ("event_codec", breakerbox::fuzzing::event_codec),
        ("trace_parser", breakerbox::fuzzing::trace_parser),
        ("config_parser", breakerbox::fuzzing::config_parser),
        ("duration_parser", breakerbox::fuzzing::duration_parser),
    ];
    for (name, body) in targets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let caught = std::panic::catch_unwind(|| body(&data));
            assert!(caught.is_ok(), "{name}: {} panics", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "{name}: its corpus is empty");
    }
}

#[test]
fn the_reading_commands_answer_from_a_log_on_a_read_only_mount() {
    let src = tempfile::tempdir().unwrap();
    let db = src.path().join("log.db");
    let (mut child, addr, _lines) = serve(&db, Stdio::null());
    let (code, _) = request(
        &addr,
        "POST",
        "/api/circuit-breakers/stripe/force-open",
        r#"{"reason":"before the mount"}"#,
    );
    assert_eq!(code, 200);
    let (_, status) = sigterm(&mut child, Duration::from_secs(5));
    assert!(status.success());
    // The same directory, mounted read-only (a backup volume, a snapshot, an inspection copy).
    let ro = tempfile::tempdir().unwrap();
    let bind = Command::new("mount")
        .arg("--bind")
        .arg(src.path())
        .arg(ro.path())
        .output();
    if !bind.as_ref().is_ok_and(|o| o.status.success()) {
        let message = format!("a read-only bind mount needs root: {bind:?}");
        assert!(std::env::var_os("CI").is_none(), "{message}");
        eprintln!("skipped: {message}");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(ro.path());
    let remount = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(ro.path())
        .status()
        .unwrap();
    assert!(remount.success());
    let db = ro.path().join("log.db");
    let db = db.to_str().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_breakerbox"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["status", "--db", db, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(breaker(&doc, "stripe")["state"], "forced_open", "{doc}");
    // Its figures are the projection's as it was: said, not hidden.
    assert!(
        doc["read_error"].as_str().unwrap_or_default().contains("read-only"),
        "{doc}"
    );
    let out = run(&["audit", "--db", db, "--kind", "command"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("before the mount"));
    let out = run(&["verify", "--db", db]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // A command cannot be recorded there: refused, and said.
    let out = run(&["reset", "stripe", "--reason", "on a read-only copy", "--db", db]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_calls_are_served_at_full_speed_while_the_disk_is_full_and_the_app_still_stops_in_time() {
    use breakerbox::app::{App, AppOptions};
    let Some(disk) = Tmpfs::mount(16) else { return };
    let config = breakerbox::config::Config::embedded();
    let app = App::start(&disk.path().join("log.db"), &config, AppOptions::default())
        .await
        .unwrap();
    let stripe = app.registry().get("stripe").unwrap().clone();
    stripe.call("", async { Ok::<_, &str>(()) }).await.unwrap();
    app.journal().flush().await.unwrap();
    disk.fill();
    // The log fails from the next append on; the calls never wait for it.
    let started = Instant::now();
    for i in 0..20_000u32 {
        let r = stripe.call("", async move { Ok::<_, &str>(i) }).await;
        assert_eq!(r.unwrap(), i);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "20,000 calls took {took:?}");
    let mut progress = app.journal().subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|p| p.failing == Some("full")),
    )
    .await
    .expect("the outage is visible")
    .unwrap();
    assert_eq!(stripe.state(), breakerbox::breaker::State::Closed);
    let stopping = Instant::now();
    let stopped = app.shutdown().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(7),
        "stopped after {:?}",
        stopping.elapsed()
    );
    let e = stopped.expect_err("the last events could not be written");
    assert!(e.to_string().contains("not durable"), "{e}");
}
