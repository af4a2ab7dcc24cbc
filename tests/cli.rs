//! The `breakerbox` binary as a user runs it.

#[path = "support/tamper.rs"]
mod tamper;

use serde_json::Value;
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn breakerbox(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run breakerbox");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// `audit --json`'s entries: one document, its `entries`.
fn audit_entries(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("audit --json prints one JSON document");
    doc["entries"].as_array().expect("its entries").clone()
}

fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every output line is JSON"))
        .collect()
}

/// `status --json`'s output: exactly one JSON document (as `JSON.parse` / `json.load` read it);
/// its breakers.
fn status_rows(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("status --json prints one JSON document");
    assert!(
        matches!(doc["status"].as_str(), Some("pass" | "warn" | "fail")),
        "{doc}"
    );
    doc["breakers"].as_array().expect("a breakers array").clone()
}

fn transitions(lines: &[Value]) -> Vec<(u64, String, String, String)> {
    lines
        .iter()
        .filter(|l| l.get("summary").is_none())
        .map(|l| {
            (
                l["at_ms"].as_u64().unwrap(),
                l["from"].as_str().unwrap().to_owned(),
                l["to"].as_str().unwrap().to_owned(),
                l["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn summary(lines: &[Value]) -> &Value {
    &lines.last().expect("a summary line")["summary"]
}

#[test]
fn simulate_runs_the_shipped_example_trace() {
    let trace = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/stripe-outage.jsonl"
    ))
    .unwrap();
    let calls = trace.lines().filter(|l| l.contains("outcome")).count() as u64;
    let out = breakerbox(&["simulate", "--failure-threshold", "10", "--timeout", "20s"], &trace);
    let lines = json_lines(&out);
    let t = transitions(&lines);
    assert_eq!(
        (t[0].1.as_str(), t[0].2.as_str(), t[0].3.as_str()),
        ("closed", "open", "consecutive_failures")
    );
    assert_eq!(t[1].2, "half_open");
    assert_eq!(
        t[1].0,
        t[0].0 + 20_000,
        "HALF_OPEN exactly when the 20 s OPEN period ends"
    );
    assert!(t.iter().any(|x| x.3 == "trials_succeeded"), "the outage ends: {t:?}");
    assert!(t.iter().any(|x| x.2 == "forced_open") && t.iter().any(|x| x.3 == "reset"));
    let s = summary(&lines);
    assert_eq!(s["attempts"].as_u64().unwrap(), calls);
    assert_eq!(
        s["permitted"].as_u64().unwrap() + s["rejected"].as_u64().unwrap(),
        calls
    );
    assert!(s["rejected"].as_u64().unwrap() > 0);
    assert_eq!(s["transitions"].as_u64().unwrap(), t.len() as u64);
    assert_eq!(s["final_state"], "closed");
}

#[test]
fn completions_due_at_t_come_before_the_lines_at_t() {
    // Two failures admitted at 0 and 5 both complete at 10 and open the breaker at 10, so the
    // call attempted at 10 is rejected.
    let trace = r#"{"at_ms":0,"outcome":"failure","latency_ms":10}
{"at_ms":5,"outcome":"failure","latency_ms":5}
{"at_ms":10,"outcome":"success"}
"#;
    let lines = json_lines(&breakerbox(&["simulate", "--failure-threshold", "2"], trace));
    assert_eq!(transitions(&lines)[0].0, 10);
    assert_eq!(summary(&lines)["rejected"], 1);
}

#[test]
fn simulate_reopens_at_the_trial_deadline_and_a_cancelled_trial_gives_its_permit_back() {
    // Open at 0 for 100 ms; at 100 a trial that runs 10 s. With a 1 s trial deadline the breaker
    // re-opens at 1,100 (stamped at the deadline); without one it waits for the trial.
    let trace = r#"{"at_ms":0,"outcome":"failure"}
{"at_ms":100,"outcome":"success","latency_ms":10000}
"#;
    let flags = [
        "simulate",
        "--failure-threshold",
        "1",
        "--timeout",
        "100ms",
        "--half-open-requests",
        "1",
        "--success-threshold",
        "1",
    ];
    let with = json_lines(&breakerbox(
        &[&flags[..], &["--half-open-max-wait", "1s"]].concat(),
        trace,
    ));
    assert_eq!(
        transitions(&with)[2],
        (1_100, "half_open".into(), "open".into(), "trial_deadline".into())
    );
    let without = json_lines(&breakerbox(
        &[&flags[..], &["--half-open-max-wait", "0s"]].concat(),
        trace,
    ));
    assert_eq!(
        transitions(&without)[2],
        (10_100, "half_open".into(), "closed".into(), "trials_succeeded".into())
    );
    // A cancelled trial gives its one permit back: the next caller is a trial, not rejected.
    let trace = r#"{"at_ms":0,"outcome":"failure"}
{"at_ms":100,"outcome":"cancelled","latency_ms":5}
{"at_ms":110,"outcome":"success"}
"#;
    let lines = json_lines(&breakerbox(&flags, trace));
    assert_eq!(summary(&lines)["rejected"], 0);
    assert_eq!(transitions(&lines)[2].3, "trials_succeeded");
}

#[test]
fn a_zero_latency_call_completes_before_the_next_line() {
    let trace = "{\"at_ms\":0,\"outcome\":\"failure\"}\n{\"at_ms\":0,\"outcome\":\"success\"}\n";
    let lines = json_lines(&breakerbox(&["simulate", "--failure-threshold", "1"], trace));
    assert_eq!(summary(&lines)["rejected"], 1);
}

#[test]
fn the_timer_fires_at_the_end_of_open_and_trials_are_limited() {
    // Open at 0 for 100 ms; at 100 four attempts, the calls run 50 ms: three trials, one rejected.
    let mut trace = String::from("{\"at_ms\":0,\"outcome\":\"failure\"}\n{\"at_ms\":99,\"outcome\":\"success\"}\n");
    for _ in 0..4 {
        trace.push_str("{\"at_ms\":100,\"outcome\":\"success\",\"latency_ms\":50}\n");
    }
    let lines = json_lines(&breakerbox(
        &["simulate", "--failure-threshold", "1", "--timeout", "100ms"],
        &trace,
    ));
    let t = transitions(&lines);
    assert_eq!(t[1], (100, "open".into(), "half_open".into(), "timeout_elapsed".into()));
    // Two successes complete at 150 and close it; the third is stale.
    assert_eq!(
        t[2],
        (150, "half_open".into(), "closed".into(), "trials_succeeded".into())
    );
    assert_eq!(summary(&lines)["rejected"], 2, "one at 99 (still open), one 4th trial");
}

#[test]
fn other_trip_rules_and_slow_calls_from_flags() {
    let mut trace = String::new();
    for i in 0..10 {
        let outcome = if i % 2 == 0 { "failure" } else { "success" };
        trace.push_str(&format!("{{\"at_ms\":{},\"outcome\":\"{outcome}\"}}\n", i * 100));
    }
    let rate = json_lines(&breakerbox(
        &[
            "simulate",
            "--failure-rate",
            "50",
            "--window-calls",
            "4",
            "--minimum-calls",
            "4",
        ],
        &trace,
    ));
    assert_eq!(transitions(&rate)[0].3, "failure_rate");
    let count = json_lines(&breakerbox(
        &[
            "simulate",
            "--failure-threshold",
            "3",
            "--failure-window",
            "1s",
            "--window-buckets",
            "10",
        ],
        &trace,
    ));
    assert_eq!(transitions(&count)[0].3, "failure_count");
    let slow = "{\"at_ms\":0,\"outcome\":\"success\",\"latency_ms\":900}\n".repeat(3);
    let lines = json_lines(&breakerbox(
        &[
            "simulate",
            "--slow-call-duration",
            "500ms",
            "--slow-call-rate",
            "100",
            "--minimum-calls",
            "3",
        ],
        &slow,
    ));
    assert_eq!(transitions(&lines)[0].3, "slow_call_rate");
}

fn fails_with(args: &[&str], stdin: &str, needle: &str) {
    let out = breakerbox(args, stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
}

#[test]
fn bad_trace_lines_name_the_line_and_print_nothing() {
    let good = "{\"at_ms\":0,\"outcome\":\"failure\"}\n";
    fails_with(&["simulate"], &format!("{good}{good}not json\n"), "line 3");
    fails_with(
        &["simulate"],
        &format!("{good}{{\"at_ms\":1,\"outcome\":\"boom\"}}\n"),
        "line 2",
    );
    fails_with(&["simulate"], "{\"at_ms\":1,\"outcome\":\"boom\"}\n", "boom");
    fails_with(
        &["simulate"],
        "{\"at_ms\":5,\"outcome\":\"success\"}\n{\"at_ms\":4,\"outcome\":\"success\"}\n",
        "line 2",
    );
    fails_with(&["simulate"], "{\"at_ms\":5,\"command\":\"explode\"}\n", "explode");
    fails_with(&["simulate"], "{\"at_ms\":5}\n", "line 1");
    fails_with(&["simulate"], "{\"at_ms\":-5,\"outcome\":\"success\"}\n", "line 1");
    fails_with(
        &["simulate"],
        "{\"at_ms\":5,\"outcome\":\"success\",\"extra\":1}\n",
        "extra",
    );
}

#[test]
fn bad_policy_flags_name_the_flag_or_knob() {
    let out = breakerbox(&["simulate", "--timeout", "5x"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--timeout") && stderr.contains("5x"), "{stderr}");
    fails_with(&["simulate", "--success-threshold", "4"], "", "success_threshold = 4");
    fails_with(&["simulate", "--failure-threshold", "0"], "", "failure_threshold = 0");
    fails_with(&["simulate", "--failure-rate", "150"], "", "failure_rate = 150");
    fails_with(
        &["simulate", "--failure-rate", "50", "--window", "1001ms"],
        "",
        "window = 1001 ms in 10 buckets",
    );
    // Flags that only mean something with another one are refused, not ignored.
    for args in [
        &["simulate", "--window", "10s"][..],
        &["simulate", "--window-calls", "10"],
        &["simulate", "--minimum-calls", "10"],
        &["simulate", "--window-buckets", "5"],
        &["simulate", "--slow-call-rate", "50"],
        &["simulate", "--failure-rate", "50", "--failure-threshold", "3"],
    ] {
        let out = breakerbox(args, "");
        assert_eq!(out.status.code(), Some(2), "{args:?} must be refused");
        assert!(String::from_utf8_lossy(&out.stderr).contains(args[1]), "{args:?}");
    }
}

#[test]
fn help_documents_the_trace_format() {
    let out = breakerbox(&["simulate", "--help"], "");
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "at_ms",
        "latency_ms",
        "force_open",
        "summary",
        "half_open",
        "--failure-rate",
        "EXAMPLE",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

fn breakerbox_env(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_breakerbox"));
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run breakerbox");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn simulate_uses_a_services_effective_policy_and_flags_override_it() {
    let three_failures = "{\"at_ms\":0,\"outcome\":\"failure\"}\n".repeat(3);
    // Cal.com's embedded threshold is 3.
    let lines = json_lines(&breakerbox_env(
        &["simulate", "--service", "calcom"],
        &[],
        &three_failures,
    ));
    assert_eq!(transitions(&lines)[0].0, 0);
    assert_eq!(lines[0]["evidence"]["threshold"], 3.0);
    assert_eq!(lines[0]["evidence"]["open_ms"], 30_000, "Cal.com's 30 s timeout");
    // The seed's example: the service variable changes it.
    let lines = json_lines(&breakerbox_env(
        &["simulate", "--service", "calcom"],
        &[("CALCOM_CIRCUIT_BREAKER_THRESHOLD", "2")],
        &three_failures,
    ));
    assert_eq!(lines[0]["evidence"]["threshold"], 2.0);
    // An explicit flag beats the variable.
    let lines = json_lines(&breakerbox_env(
        &[
            "simulate",
            "--service",
            "calcom",
            "--failure-threshold",
            "3",
            "--timeout",
            "5s",
        ],
        &[("CALCOM_CIRCUIT_BREAKER_THRESHOLD", "2")],
        &three_failures,
    ));
    assert_eq!(
        (
            lines[0]["evidence"]["threshold"].as_f64(),
            lines[0]["evidence"]["open_ms"].as_u64()
        ),
        (Some(3.0), Some(5_000))
    );
    // Unknown services and bad configuration are bad input.
    fails_with(&["simulate", "--service", "stripee"], "", "did you mean \"stripe\"");
    let out = breakerbox_env(
        &["simulate", "--service", "calcom"],
        &[("CALCOM_CIRCUIT_BREAKER_THRESHOLD", "zero")],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CALCOM_CIRCUIT_BREAKER_THRESHOLD"));
}

#[test]
fn config_shows_each_value_with_its_source_and_check_validates() {
    let dir = std::env::temp_dir().join(format!("breakerbox-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cb.toml");
    std::fs::write(&file, "[services.stripe]\ntimeout = \"90s\"\n").unwrap();
    let path = file.to_str().unwrap();
    let out = breakerbox_env(
        &["config", "--config", path, "--service", "stripe", "--json"],
        &[("STRIPE_CIRCUIT_BREAKER_THRESHOLD", "12")],
        "",
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = &v["breakers"][0]["settings"];
    assert_eq!(settings["failure_threshold"]["value"], "12");
    assert_eq!(
        settings["failure_threshold"]["source"],
        "env STRIPE_CIRCUIT_BREAKER_THRESHOLD"
    );
    assert_eq!(settings["timeout"]["value"], "90s");
    assert_eq!(settings["timeout"]["source"], format!("{path}:2"));
    assert_eq!(settings["success_threshold"]["source"], "default");
    let table = String::from_utf8(breakerbox_env(&["config", "--config", path], &[], "").stdout).unwrap();
    assert!(
        table.contains("stripe") && table.contains(&format!("{path}:2")),
        "{table}"
    );

    let ok = breakerbox_env(&["config", "check", "--config", path], &[], "");
    assert_eq!(ok.status.code(), Some(0));
    std::fs::write(&file, "[services.stripe]\ntimeout = \"90s\"\nfailure_treshold = 1\n").unwrap();
    let bad = breakerbox_env(&["config", "check", "--config", path], &[], "");
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!("{path}:3")) && stderr.contains("did you mean"),
        "{stderr}"
    );
    let missing = breakerbox_env(&["config", "check", "--config", "/nonexistent/cb.toml"], &[], "");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/cb.toml"));
    let via_env = breakerbox_env(
        &["config", "check"],
        &[("CIRCUIT_BREAKER_CONFIG", "/nonexistent/x.toml")],
        "",
    );
    assert!(String::from_utf8_lossy(&via_env.stderr).contains("env CIRCUIT_BREAKER_CONFIG"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compact_runs_on_a_log_and_refuses_while_a_server_owns_it() {
    use breakerbox::breaker::{Breaker, Decision, Outcome, Policy};
    use breakerbox::journal::{Body, Journal, JournalOptions};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let journal = rt.block_on(async {
        let j = Journal::open(&db, JournalOptions::default()).await.unwrap();
        let stream: Arc<str> = Arc::from("stripe");
        let mut b = Breaker::new(Policy::consecutive(5, 1_000)).unwrap();
        let mut events = Vec::new();
        // Calls a day old, then a snapshot: all of them may be compacted.
        let day_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            - 86_400_000;
        for t in 0..500 {
            if let Decision::Permit(p) = b.acquire(day_ago + t, &mut events) {
                b.complete(day_ago + t, p, Outcome::Success, &mut events);
            }
        }
        for e in events {
            j.submit(&stream, Body::Breaker(e));
        }
        j.submit(
            &stream,
            Body::Snapshot {
                at_ms: day_ago + 500,
                breaker: Box::new(b),
            },
        );
        j.flush().await.unwrap();
        j
    });
    let db_arg = db.to_str().unwrap();
    // A running server holds the lease: compact leaves the log to it.
    rt.block_on(journal.acquire_lease("serve pid 1", std::time::Duration::from_secs(30)))
        .unwrap();
    let out = breakerbox(&["compact", "--db", db_arg, "--horizon", "1h"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("serve pid 1"));
    rt.block_on(journal.close());
    let out = breakerbox(&["compact", "--db", db_arg, "--horizon", "1h", "--json"], "");
    let lines = json_lines(&out);
    assert_eq!(lines[0]["calls"], 500);
    assert!(lines[0]["summaries"].as_u64().unwrap() >= 1);
    fails_with(&["compact", "--db", db_arg, "--horizon", "soon"], "", "soon");
}

/// A log written by the live registry: 20 minutes of stripe traffic ending now, with an outage
/// and an operator's force-open and reset.
fn recorded_log(dir: &std::path::Path) -> std::path::PathBuf {
    use breakerbox::actor::{Clock, Operator, Registry, RegistryOptions};
    use breakerbox::config::Config;
    use breakerbox::journal::{Journal, JournalOptions};
    use std::sync::Arc;
    let db = dir.join("log.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let clock = Clock::manual(now - 20 * 60_000);
        let config = Config::from_toml(
            std::path::Path::new("t.toml"),
            "[services.stripe]\nfailure_threshold = 3\ntimeout = \"20s\"\n",
            &Default::default(),
        )
        .unwrap();
        let journal = Arc::new(Journal::open(&db, JournalOptions::default()).await.unwrap());
        let registry = Registry::start(
            &config,
            journal.clone(),
            RegistryOptions {
                clock: clock.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let stripe = registry.get("stripe").unwrap().clone();
        for i in 0..1_100u64 {
            let fail = (300..420).contains(&i) || i % 17 == 0;
            let _ = stripe
                .call("", async move { if fail { Err(()) } else { Ok(()) } })
                .await;
            stripe.inspect().await;
            clock.advance(1_000);
            stripe.tick().await;
            if i == 800 {
                let op = Operator {
                    who: "carol@ops".into(),
                    from: "cli".into(),
                    why: "provider maintenance".into(),
                };
                stripe.force_open(op.clone()).await.unwrap();
                clock.advance(5_000);
                stripe.reset(op).await.unwrap();
            }
        }
        registry.shutdown().await.unwrap();
        journal.close().await;
    });
    db
}

#[test]
fn audit_replay_export_and_what_if_answer_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let db = db.to_str().unwrap();
    // Audit: parseable JSON and CSV, the operator's action with who, where and why.
    let out = breakerbox(&["audit", "--db", db, "--service", "stripe", "--format", "json"], "");
    let entries = audit_entries(&out);
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "transition" && e["summary"].as_str().unwrap().contains("closed → open"))
    );
    let cmd = entries
        .iter()
        .find(|e| e["kind"] == "command")
        .expect("the force-open is audited");
    assert_eq!(cmd["details"]["operator"]["who"], "carol@ops");
    assert_eq!(cmd["details"]["operator"]["why"], "provider maintenance");
    let csv = String::from_utf8(breakerbox(&["audit", "--db", db, "--kind", "command", "--format", "csv"], "").stdout)
        .unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "position,time,service,kind,summary");
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows[1].contains(",stripe,command,\"force_open by carol@ops from cli: provider maintenance"));
    let recent = audit_entries(&breakerbox(
        &["audit", "--db", db, "--since", "1m", "--kind", "transition", "--json"],
        "",
    ));
    assert!(recent.len() < entries.iter().filter(|e| e["kind"] == "transition").count());
    fails_with(&["audit", "--db", db, "--since", "lately"], "", "--since");
    fails_with(&["audit", "--db", db, "--kind", "gossip"], "", "gossip");
    fails_with(&["audit", "--db", "/nonexistent.db"], "", "/nonexistent.db");

    // Replay at an instant (an age: 14 minutes ago is inside the outage, which began 15 minutes
    // ago; the breaker then cycles OPEN (20 s) → HALF_OPEN (until the next call fails)).
    let at = json_lines(&breakerbox(
        &["replay", "--db", db, "--service", "stripe", "--at", "14m", "--json"],
        "",
    ));
    let state = at[0]["view"]["state"].as_str().unwrap();
    assert!(state == "open" || state == "half_open", "{}", at[0]);
    assert!(at[0]["last_transition"]["reason"].as_str().is_some());
    if state == "open" {
        assert!(at[0]["open_remaining_ms"].as_u64().unwrap() <= 20_000);
    }
    let timeline =
        String::from_utf8(breakerbox(&["replay", "--db", db, "--service", "stripe", "--from", "30m"], "").stdout)
            .unwrap();
    assert!(
        timeline.contains("closed → open  consecutive_failures") && timeline.contains("per minute"),
        "{timeline}"
    );
    fails_with(
        &["replay", "--db", db, "--service", "paypal", "--at", "1m"],
        "",
        "paypal",
    );
    // The same timeline as a picture: state bands, the per-minute lines, the operator's action.
    let svg = dir.path().join("stripe.svg");
    let out = breakerbox(
        &[
            "replay",
            "--db",
            db,
            "--service",
            "stripe",
            "--from",
            "25m",
            "--svg",
            svg.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let picture = std::fs::read_to_string(&svg).unwrap();
    assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
    for needle in [
        "#c62828\"><title>open",
        "#2e7d32\"><title>closed",
        "class=\"operator\"",
        "force open",
        "polyline",
        // Calls per minute stacked by outcome, rejected ones included.
        "class=\"calls\"",
        " rejected: ",
        " failed: ",
        // --from 25m is before the log began (20 minutes ago): no data, not a made-up state.
        "class=\"nodata\"",
    ] {
        assert!(picture.contains(needle), "{needle} missing from the picture");
    }
    if let Some(keep) = std::env::var_os("BREAKERBOX_KEEP_SVG") {
        std::fs::copy(&svg, keep).unwrap();
    }

    // Export, then simulate: exactly the transitions the log recorded.
    let trace = breakerbox(&["export", "--db", db, "--service", "stripe"], "");
    assert!(trace.status.success());
    let trace = String::from_utf8(trace.stdout).unwrap();
    assert!(trace.lines().next().unwrap().contains("\"policy\""));
    let simulated = transitions(&json_lines(&breakerbox(&["simulate"], &trace)));
    let logged: Vec<(u64, String, String, String)> = entries
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| {
            let d = &e["details"];
            (
                d["at_ms"].as_u64().unwrap(),
                d["from"].as_str().unwrap().into(),
                d["to"].as_str().unwrap().into(),
                d["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(simulated, logged);

    // What-if: a higher threshold would have opened less often.
    let v = json_lines(&breakerbox(
        &[
            "what-if",
            "--db",
            db,
            "--service",
            "stripe",
            "--failure-threshold",
            "50",
            "--json",
        ],
        "",
    ));
    let opened = |side: &Value| {
        side["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["to"] == "open")
            .count()
    };
    assert!(opened(&v[0]["what_if"]) < opened(&v[0]["actual"]), "{}", v[0]);
    assert!(v[0]["actual"]["open_ms"].as_u64().unwrap() > v[0]["what_if"]["open_ms"].as_u64().unwrap());
    let table = String::from_utf8(
        breakerbox(
            &["what-if", "--db", db, "--service", "stripe", "--failure-threshold", "2"],
            "",
        )
        .stdout,
    )
    .unwrap();
    assert!(table.contains("times opened") && table.contains("what-if"), "{table}");
    // The metrics projection rebuilds from the log: every recorded call is in it.
    let rebuilt = json_lines(&breakerbox(&["rebuild", "--db", db, "--json"], ""));
    let call_lines = trace.lines().filter(|l| l.contains("\"outcome\"")).count() as u64;
    assert_eq!(rebuilt[0]["calls"].as_u64().unwrap(), call_lines, "{}", rebuilt[0]);
}

/// An HTTP server on 127.0.0.1 answering every request with `status`, counting them.
fn status_server(status: u16) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, hits)
}

#[test]
fn status_shows_every_breaker_and_operator_commands_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let db = db.to_str().unwrap();
    let rows = status_rows(&breakerbox(&["status", "--db", db], ""));
    let keys: Vec<&str> = rows.iter().map(|r| r["service"].as_str().unwrap()).collect();
    assert_eq!(
        keys,
        ["calcom", "retell", "stripe"],
        "every configured breaker, JSON when piped"
    );
    let stripe = &rows[2];
    assert_eq!(stripe["state"], "closed");
    assert!(stripe["health"]["score"].as_u64().unwrap() <= 100);
    assert!(stripe["last_transition"]["reason"].as_str().is_some());
    assert_eq!(rows[0]["last_transition"], Value::Null, "calcom has no history");
    let one = status_rows(&breakerbox(&["status", "--db", db, "--service=stripe"], ""));
    assert_eq!(one.len(), 1);

    let out = breakerbox(
        &["force-open", "stripe", "--db", db, "--reason", "provider incident"],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("closed → forced_open"));
    assert_eq!(
        status_rows(&breakerbox(&["status", "--db", db, "--service", "stripe"], ""))[0]["state"],
        "forced_open"
    );
    let out = breakerbox(
        &[
            "status",
            "--db",
            db,
            "--reset",
            "--service",
            "stripe",
            "--reason",
            "resolved",
            "--json",
        ],
        "",
    );
    assert_eq!(status_rows(&out)[0]["state"], "closed");
    let audit = audit_entries(&breakerbox(&["audit", "--db", db, "--kind", "command", "--json"], ""));
    let last = &audit.last().unwrap()["details"];
    assert_eq!(
        (last["operator"]["from"].as_str(), last["operator"]["why"].as_str()),
        (Some("cli"), Some("resolved"))
    );
    assert!(
        last["operator"]["who"].as_str().unwrap().contains('@'),
        "who is user@host"
    );

    fails_with(&["status", "--db", db, "--service", "paypal"], "", "paypal");
    fails_with(&["status", "--db", "/nonexistent.db"], "", "/nonexistent.db");
    fails_with(&["force-open", "stripe", "--db", db], "", "--reason");
    fails_with(&["status", "--db", db, "--reset"], "", "--reason");
}

#[test]
fn status_test_fails_the_command_on_a_refused_connection_and_passes_when_every_check_does() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let (ok_url, _) = status_server(200);
    // A port nobody listens on: connection refused.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/health", l.local_addr().unwrap())
    };
    let run = |url: &str| {
        let config = dir.path().join("cb.toml");
        std::fs::write(
            &config,
            format!("[services.stripe]\nfailure_threshold = 3\nhealth_url = \"{url}\"\n"),
        )
        .unwrap();
        breakerbox(
            &[
                "status",
                "--test",
                "--db",
                db.to_str().unwrap(),
                "--config",
                config.to_str().unwrap(),
            ],
            "",
        )
    };
    let out = run(&refused);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "connection refused is a failed check: {stderr}"
    );
    assert!(stderr.contains("1 of 1 checks failed: stripe ("), "{stderr}");
    let out = run(&ok_url);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn operator_commands_need_a_reason_name_who_and_answer_json_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let db = db.to_str().unwrap();
    let config = dir.path().join("cb.toml");
    std::fs::write(&config, "[services.stripe]\nfailure_threshold = 3\n[services.calcom]\n").unwrap();
    let config = config.to_str().unwrap();
    // A reason is required, not empty, on every command.
    fails_with(
        &["reset", "stripe", "--db", db, "--config", config, "--reason", " "],
        "",
        "reason is required",
    );
    let out = breakerbox(&["force-open", "stripe", "--db", db, "--config", config], "");
    assert_eq!(out.status.code(), Some(2), "clap asks for --reason");
    // `status --reset` resets every breaker only when told so.
    fails_with(
        &["status", "--reset", "--reason", "oops", "--db", db, "--config", config],
        "",
        "--all",
    );

    // Who: $USER, else $LOGNAME, else the uid's name — never `unknown`.
    let cmd = |env: &[(&str, &str)], unset: &[&str], args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_breakerbox"));
        c.args(args).envs(env.iter().copied());
        for v in unset {
            c.env_remove(v);
        }
        c.output().unwrap()
    };
    let force = [
        "force-open",
        "stripe",
        "--db",
        db,
        "--config",
        config,
        "--reason",
        "INC-7",
        "--json",
    ];
    let out = cmd(&[("LOGNAME", "alice")], &["USER"], &force);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // One JSON document saying what was done.
    let done: Value = serde_json::from_slice(&out.stdout).expect("force-open --json prints one JSON document");
    assert_eq!(
        (done["service"].as_str(), done["command"].as_str(), done["to"].as_str()),
        (Some("stripe"), Some("force_open"), Some("forced_open"))
    );
    let position = done["position"].as_i64().expect("the record's position");
    let out = cmd(
        &[],
        &["USER", "LOGNAME"],
        &["reset", "stripe", "--db", db, "--config", config, "--reason", "fixed"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let entries = audit_entries(&breakerbox(&["audit", "--db", db, "--kind", "command", "--json"], ""));
    let by_position =
        |p: i64| entries.iter().find(|e| e["position"] == p).unwrap()["details"]["operator"]["who"].clone();
    assert!(
        by_position(position).as_str().unwrap().starts_with("alice@"),
        "{entries:?}"
    );
    let last = entries.last().unwrap()["details"]["operator"]["who"]
        .as_str()
        .unwrap()
        .to_owned();
    let uid_name = {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_owned())
            })
            .unwrap_or(format!("uid {uid}"))
    };
    assert!(last.starts_with(&format!("{uid_name}@")), "{last}");

    // `status --reset --all` resets every breaker and says so.
    let out = breakerbox(
        &[
            "status",
            "--reset",
            "--all",
            "--reason",
            "all clear",
            "--db",
            db,
            "--config",
            config,
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `config check --json`: one document, for a good config and for a bad one (exit 2).
    let out = breakerbox(&["config", "check", "--json", "--config", config], "");
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((doc["ok"].as_bool(), doc["breakers"].as_u64()), (Some(true), Some(2)));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[services.stripe]\nfailure_threshold = 0\n").unwrap();
    let out = breakerbox(&["config", "check", "--json", "--config", bad.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert!(
        doc["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("failure_threshold"),
        "{doc}"
    );
}

#[test]
fn times_take_now_and_compound_ages_and_audit_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let db = db.to_str().unwrap();
    // `now`, compound ages and RFC 3339 wherever a time is taken.
    let out = breakerbox(
        &["audit", "--db", db, "--since", "1h30m", "--until", "now", "--json"],
        "",
    );
    let all = audit_entries(&out);
    assert!(!all.is_empty());
    let out = breakerbox(
        &[
            "replay",
            "--db",
            db,
            "--service",
            "stripe",
            "--from",
            "20m",
            "--to",
            "now",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = breakerbox(
        &["replay", "--db", db, "--service", "stripe", "--at", "14m30s", "--json"],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Before the log began, nothing is known: said, not answered "closed".
    fails_with(
        &["replay", "--db", db, "--service", "stripe", "--at", "2h"],
        "",
        "before stripe's log began",
    );
    fails_with(&["audit", "--db", db, "--since", "30m1h"], "", "30m1h");

    // Stats records are left out unless asked for, and the document says so.
    let doc: Value = serde_json::from_slice(&out_of(&["audit", "--db", db, "--json"])).unwrap();
    assert_eq!(doc["hidden_kinds"], serde_json::json!(["stats"]));
    assert!(doc["entries"].as_array().unwrap().iter().all(|e| e["kind"] != "stats"));
    let stats = audit_entries(&breakerbox(&["audit", "--db", db, "--kind", "stats", "--json"], ""));
    assert!(!stats.is_empty(), "the recorded log has rejections");
    // A limit says how many it left out; newest first when asked (the default on a terminal).
    let total = doc["entries"].as_array().unwrap().len();
    assert!(total > 3);
    let newest: Value = serde_json::from_slice(&out_of(&[
        "audit", "--db", db, "--json", "--limit", "2", "--order", "newest",
    ]))
    .unwrap();
    let positions: Vec<i64> = newest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    let last_two: Vec<i64> = doc["entries"].as_array().unwrap()[total - 2..]
        .iter()
        .rev()
        .map(|e| e["position"].as_i64().unwrap())
        .collect();
    assert_eq!(positions, last_two);
    assert_eq!(newest["left_out"].as_u64(), Some(total as u64 - 2));
    let table = breakerbox(&["audit", "--db", db, "--limit", "2"], "");
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(
        stdout.lines().next().unwrap().contains("position") && stdout.lines().count() == 3,
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&table.stderr).contains(&format!("{} later entries not shown", total - 2)),
        "{}",
        String::from_utf8_lossy(&table.stderr)
    );
}

fn out_of(args: &[&str]) -> Vec<u8> {
    let out = breakerbox(args, "");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn status_test_requests_each_health_url_and_says_which_services_cannot_be_tested() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let (ok_url, hits) = status_server(200);
    let (bad_url, _) = status_server(503);
    // https to a server that speaks plain HTTP: the TLS handshake is tried and fails, clearly.
    let (plain_url, _) = status_server(200);
    let tls_url = plain_url.replace("http://", "https://");
    let config = dir.path().join("cb.toml");
    std::fs::write(
        &config,
        format!(
            "[services.stripe]\nfailure_threshold = 3\nhealth_url = \"{ok_url}\"\n[services.retell]\nhealth_url = \"{bad_url}\"\n[services.calcom]\n[services.paypal]\nhealth_url = \"{tls_url}\"\n"
        ),
    )
    .unwrap();
    let args = [
        "status",
        "--test",
        "--db",
        db.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let out = breakerbox(&args, "");
    // A check that failed fails the command (exit 1), naming each; the document is still printed.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("2 of 4 checks failed") && stderr.contains("retell (HTTP 503") && stderr.contains("paypal ("),
        "{stderr}"
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let rows = doc["breakers"].as_array().unwrap().clone();
    let by = |k: &str| rows.iter().find(|r| r["service"] == k).unwrap()["test"].clone();
    assert_eq!(by("calcom")["testable"], false, "reported, not skipped");
    assert_eq!(
        (by("stripe")["status"].as_u64(), by("stripe")["outcome"].as_str()),
        (Some(200), Some("success"))
    );
    assert!(by("stripe")["latency_ms"].as_u64().is_some());
    assert_eq!(
        (by("retell")["status"].as_u64(), by("retell")["outcome"].as_str()),
        (Some(503), Some("failure"))
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let tls = by("paypal");
    assert_eq!(tls["outcome"], "failure");
    assert!(
        tls["result"].as_str().unwrap().contains("corrupt message"),
        "rustls tried a handshake and says why it failed: {tls}"
    );
}

#[test]
fn status_reset_from_a_second_process_resets_the_breaker_inside_a_running_server() {
    use breakerbox::actor::{Clock, Operator, Registry, RegistryOptions};
    use breakerbox::breaker::State;
    use breakerbox::config::{Config, LoadOptions};
    use breakerbox::journal::{Journal, JournalOptions};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The running server: a registry holding the lease, with stripe forced open.
    let registry = rt.block_on(async {
        let config = Config::load(&LoadOptions::default()).unwrap();
        let journal = Arc::new(Journal::open(&db, JournalOptions::default()).await.unwrap());
        let registry = Registry::start(
            &config,
            journal,
            RegistryOptions {
                clock: Clock::system(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let op = Operator {
            who: "ops".into(),
            from: "library".into(),
            why: "test".into(),
        };
        registry.get("stripe").unwrap().force_open(op).await.unwrap();
        registry
    });
    let stripe = registry.get("stripe").unwrap().clone();
    assert_eq!(stripe.state(), State::ForcedOpen);
    let started = std::time::Instant::now();
    let out = breakerbox(
        &[
            "status",
            "--reset",
            "--service",
            "stripe",
            "--reason",
            "from the CLI",
            "--db",
            db.to_str().unwrap(),
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(stripe.state(), State::Closed, "the running process applied the reset");
    let rows = status_rows(&out);
    assert_eq!(rows[0]["state"], "closed");
    rt.block_on(async {
        registry.shutdown().await.unwrap();
        registry.journal().close().await;
    });
}

/// The address `serve` says it listens on, from its first line of output.
fn listening_addr(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> String {
    let listening = lines.next().unwrap().unwrap();
    listening
        .strip_prefix("listening on http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{listening}"))
        .to_owned()
}

fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response)
}

#[test]
fn serve_runs_the_api_on_loopback_and_stops_cleanly() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    // Not on another address without a configured token.
    fails_with(
        &["serve", "--db", db.to_str().unwrap(), "--bind", "0.0.0.0:0"],
        "",
        "CIRCUIT_BREAKER_API_TOKEN",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--db", db.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .env("CIRCUIT_BREAKER_API_TOKEN", "ci:token-for-the-test-0123456789abcdef")
        // Everything logged (to a file: a full pipe would block the server), to check that no
        // token is.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = listening_addr(&mut lines);
    assert_eq!(http_get(&addr, "/healthz", None).0, 200);
    assert_eq!(http_get(&addr, "/api/health/circuit-breakers", None).0, 401);
    let (status, body) = http_get(
        &addr,
        "/api/health/circuit-breakers",
        Some("token-for-the-test-0123456789abcdef"),
    );
    assert_eq!(status, 200);
    assert!(
        body.contains("\"status\":\"pass\"") && body.contains("\"service\":\"stripe\""),
        "{body}"
    );
    assert!(!body.contains("token-for-the-test-0123456789abcdef"));
    let (status, body) = http_get(&addr, "/api/health/circuit-breakers", Some("wrong-token-guess-1234"));
    assert_eq!(status, 401);
    assert!(!body.contains("wrong-token-guess-1234"));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "exit {status:?}, output {rest:?}");
    assert!(rest.iter().any(|l| l == "stopped cleanly"), "{rest:?}");
    assert!(stderr.contains("DEBUG"), "debug logging was on: {stderr}");
    assert!(
        !stderr.contains("token-for-the-test-0123456789abcdef") && !stderr.contains("wrong-token-guess-1234"),
        "no token in the logs"
    );
}

#[test]
fn demo_runs_end_to_end_and_every_history_command_answers_from_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let db = db.to_str().unwrap();
    // Given a 20-second demo on a fresh log…
    let out = breakerbox(
        &[
            "demo",
            "--duration",
            "20s",
            "--db",
            db,
            "--bind",
            "127.0.0.1:0",
            "--json",
        ],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("dashboard: http://127.0.0.1:"), "{stdout}");
    assert!(
        stdout.contains("stripe  closed → open"),
        "a line per transition as it happens: {stdout}"
    );
    let summaries: Value = serde_json::from_str(&stdout[stdout.find("\n[").expect("a JSON summary")..]).unwrap();
    let stripe = summaries
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "stripe")
        .expect("stripe is summarised");
    // …then stripe opened and closed again, its callers were served by fallback while it was open.
    assert!(stripe["openings"].as_u64().unwrap() >= 1, "{stripe}");
    assert_eq!(stripe["end_state"], "closed", "{stripe}");
    assert!(stripe["open_ms"].as_u64().unwrap() >= 3_000, "{stripe}");
    assert!(stripe["rejected"].as_u64().unwrap() > 0 && stripe["fallbacks"].as_u64().unwrap() > 0);

    // status on the same file, with the configuration the demo wrote beside it
    let demo_config = dir.path().join("demo.demo.toml");
    assert!(
        demo_config.is_file(),
        "the demo writes its configuration beside the log"
    );
    let rows = status_rows(&breakerbox(
        &[
            "status",
            "--db",
            db,
            "--config",
            demo_config.to_str().unwrap(),
            "--json",
        ],
        "",
    ));
    let row = rows.iter().find(|r| r["service"] == "stripe").unwrap();
    assert_eq!(row["state"], "closed");
    assert_eq!(row["last_transition"]["to"], "closed");
    assert!(row["metrics_5m"]["calls"].as_u64().unwrap() > 0);

    // the audit trail shows stripe opening and closing
    let audit = audit_entries(&breakerbox(
        &[
            "audit",
            "--db",
            db,
            "--kind",
            "transition",
            "--service",
            "stripe",
            "--json",
        ],
        "",
    ));
    let opened = audit
        .iter()
        .find(|e| e["details"]["to"] == "open")
        .expect("stripe opened");
    assert!(audit.iter().any(|e| e["details"]["to"] == "closed"));

    // replay at the instant it opened shows it OPEN with the time left
    let at = opened["at_ms"].as_u64().unwrap() + 100;
    let at = chrono::DateTime::from_timestamp_millis(at as i64).unwrap().to_rfc3339();
    let replay = json_lines(&breakerbox(
        &["replay", "--db", db, "--service", "stripe", "--at", &at, "--json"],
        "",
    ));
    assert_eq!(replay[0]["view"]["state"], "open", "{}", replay[0]);
    assert!(replay[0]["open_remaining_ms"].as_u64().unwrap() > 0);

    // what-if with a higher threshold over the whole demo opens less often
    let what_if = breakerbox(
        &[
            "what-if",
            "--db",
            db,
            "--service",
            "stripe",
            "--from",
            "1h",
            "--to",
            "0s",
            "--failure-threshold",
            "50",
            "--json",
        ],
        "",
    );
    let w = &json_lines(&what_if)[0];
    let openings = |side: &str| {
        w[side]["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["to"] == "open")
            .count()
    };
    assert!(openings("actual") >= 1, "{w}");
    assert_eq!(openings("what_if"), 0, "{w}");
    assert_eq!(w["what_if"]["open_ms"], 0);

    // A second run on the same file continues the same history.
    let again = breakerbox(&["demo", "--duration", "5s", "--db", db, "--bind", "127.0.0.1:0"], "");
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let audit2 = audit_entries(&breakerbox(
        &["audit", "--db", db, "--kind", "transition", "--json"],
        "",
    ));
    let first_stripe = audit2.iter().find(|e| e["stream"] == "stripe").unwrap();
    assert_eq!(first_stripe, &audit[0], "the first run's history is still there, first");
    let policy = audit_entries(&breakerbox(&["audit", "--db", db, "--kind", "policy", "--json"], ""));
    assert_eq!(
        policy.iter().filter(|e| e["stream"] == "stripe").count(),
        1,
        "an unchanged policy is not applied again on the second run"
    );
}

#[test]
fn every_command_names_bad_input_in_one_line_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    // A log with the default breakers in it, and a config path that cannot be read as a file.
    let db = recorded_log(dir.path());
    let db = db.to_str().unwrap();
    let not_a_file = dir.path().to_str().unwrap();
    let missing = dir.path().join("missing.db");
    let missing = missing.to_str().unwrap();
    let long_reason = "x".repeat(2_000);
    let cases: &[(&[&str], &str)] = &[
        // unknown service
        (&["status", "--db", db, "--service", "paypal"], "paypal"),
        (&["status", "--db", db, "--service=paypal"], "paypal"),
        (&["force-open", "paypal", "--reason", "x", "--db", db], "paypal"),
        (&["disable", "paypal", "--reason", "x", "--db", db], "paypal"),
        (&["reset", "paypal", "--reason", "x", "--db", db], "paypal"),
        (&["replay", "--service", "paypal", "--at", "1m", "--db", db], "paypal"),
        (
            &["what-if", "--service", "paypal", "--from", "1h", "--db", db],
            "paypal",
        ),
        (&["export", "--service", "paypal", "--db", db], "paypal"),
        (&["config", "--service", "paypal"], "paypal"),
        // bad duration or time
        (&["demo", "--duration", "2x"], "2x"),
        (&["demo", "--duration", "1s"], "--duration 1s"),
        (&["compact", "--horizon", "7x", "--db", db], "7x"),
        (&["audit", "--since", "5y", "--db", db], "5y"),
        (&["replay", "--service", "stripe", "--at", "noon", "--db", db], "noon"),
        (
            &[
                "what-if",
                "--service",
                "stripe",
                "--from",
                "1h",
                "--timeout",
                "soon",
                "--db",
                db,
            ],
            "soon",
        ),
        (&["simulate", "--timeout", "3days"], "3days"),
        // missing database
        (&["status", "--db", missing], missing),
        (&["audit", "--db", missing], missing),
        (
            &["replay", "--service", "stripe", "--at", "1m", "--db", missing],
            missing,
        ),
        (
            &["what-if", "--service", "stripe", "--from", "1h", "--db", missing],
            missing,
        ),
        (&["export", "--service", "stripe", "--db", missing], missing),
        (&["rebuild", "--db", missing], missing),
        (&["compact", "--db", missing], missing),
        (&["reset", "stripe", "--reason", "x", "--db", missing], missing),
        // unreadable config
        (&["status", "--db", db, "--config", not_a_file], not_a_file),
        (&["config", "--config", not_a_file], not_a_file),
        (&["serve", "--config", not_a_file], not_a_file),
        (&["simulate", "--service", "stripe", "--config", not_a_file], not_a_file),
        (&["demo", "--config", not_a_file], "its own configuration"),
        // a reason the audit trail cannot show as one line, or none
        (
            &["reset", "stripe", "--reason", "", "--db", db],
            "--reason: a reason is required",
        ),
        (
            &["force-open", "stripe", "--reason", "  ", "--db", db],
            "--reason: a reason is required",
        ),
        (
            &["force-open", "stripe", "--reason", "a\u{1b}[2Jb", "--db", db],
            "control character (\\u{1b}) at byte 1",
        ),
        (
            &["disable", "stripe", "--reason", &long_reason, "--db", db],
            "at most 1024",
        ),
        (
            &["status", "--reset", "--reason", "two\nlines", "--db", db],
            "control character (\\u{a})",
        ),
        // others
        (&["completions", "tcsh"], "tcsh"),
        (&["serve", "--bind", "nope"], "nope"),
    ];
    for (args, needle) in cases {
        fails_with(args, "", needle);
    }
}

#[test]
fn serve_takes_named_tokens_from_the_config_file() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let config = dir.path().join("cb.toml");
    std::fs::write(
        &config,
        "[api.tokens]\noncall = \"file-token-0123456789abcdef0123456789\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--db", db.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .args(["--config", config.to_str().unwrap()])
        .env_remove("CIRCUIT_BREAKER_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = listening_addr(&mut lines);
    let dashboard = lines.next().unwrap().unwrap();
    assert!(
        dashboard.contains("it asks for") && !dashboard.contains("#token="),
        "configured tokens: no one-time token is made: {dashboard}"
    );
    let (status, _) = http_get(
        &addr,
        "/api/health/circuit-breakers",
        Some("file-token-0123456789abcdef0123456789"),
    );
    assert_eq!(status, 200);
    assert_eq!(
        http_get(
            &addr,
            "/api/health/circuit-breakers",
            Some("file-token-0123456789abcdef012345678X")
        )
        .0,
        401
    );
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Runs breakerbox with `env` (and no API token but the one given) and expects exit code 2
/// with one line on stderr holding each of `needles`; gives back that line.
fn refused_with(args: &[&str], env: &[(&str, &str)], needles: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(args)
        .env_remove("CIRCUIT_BREAKER_API_TOKEN")
        .env_remove("CIRCUIT_BREAKER_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal is immediate; one that does not come means the command started serving.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{args:?} was not refused: it ran");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{args:?} printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
    stderr
}

#[test]
fn a_token_shorter_than_32_characters_is_refused_at_start_and_by_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("serve.db");
    let db = db.to_str().unwrap();
    // In the environment: serve, demo and config check say which token, never its value.
    let env = [("CIRCUIT_BREAKER_API_TOKEN", "ops:changeme")];
    for args in [
        &["serve", "--db", db, "--bind", "127.0.0.1:0"][..],
        &["demo", "--db", db, "--bind", "127.0.0.1:0", "--duration", "5s"],
        &["config", "check"],
    ] {
        let err = refused_with(
            args,
            &env,
            &[
                "CIRCUIT_BREAKER_API_TOKEN",
                "token \"ops\"",
                "shorter than 32 characters",
            ],
        );
        assert!(!err.contains("changeme"), "{err}");
    }
    assert!(
        !dir.path().join("serve.db").exists(),
        "refused before the log was opened"
    );
    // In the file: named by its key and line.
    let short = dir.path().join("short.toml");
    std::fs::write(&short, "[api.tokens]\noncall = \"changeme\"\n").unwrap();
    let config = short.to_str().unwrap();
    for args in [
        &["serve", "--db", db, "--bind", "127.0.0.1:0", "--config", config][..],
        &["config", "check", "--config", config],
    ] {
        let err = refused_with(
            args,
            &[],
            &[
                "short.toml:2: api.tokens.oncall",
                "shorter than 32 characters",
                "allow_short_tokens",
            ],
        );
        assert!(!err.contains("changeme"), "{err}");
    }
    // Allowed by `[api] allow_short_tokens = true`, but on loopback only: refused on 0.0.0.0
    // before anything is bound or opened.
    let allowed = dir.path().join("allowed.toml");
    std::fs::write(
        &allowed,
        "[api]\nallow_short_tokens = true\n[api.tokens]\noncall = \"changeme\"\n",
    )
    .unwrap();
    let allowed = allowed.to_str().unwrap();
    let err = refused_with(
        &["serve", "--db", db, "--bind", "0.0.0.0:0", "--config", allowed],
        &[],
        &[
            "api.tokens.oncall",
            "shorter than 32 characters",
            "loopback",
            "0.0.0.0:0",
        ],
    );
    assert!(!err.contains("changeme"), "{err}");
    let allowed_no_tokens = dir.path().join("allowed-no-tokens.toml");
    std::fs::write(&allowed_no_tokens, "[api]\nallow_short_tokens = true\n").unwrap();
    refused_with(
        &[
            "serve",
            "--db",
            db,
            "--bind",
            "0.0.0.0:0",
            "--config",
            allowed_no_tokens.to_str().unwrap(),
        ],
        &[(
            "CIRCUIT_BREAKER_API_TOKEN",
            "ops:0123456789abcdef0123456789abcdef,dev:changeme",
        )],
        &["env CIRCUIT_BREAKER_API_TOKEN: token \"dev\"", "loopback"],
    );
    assert!(
        !dir.path().join("serve.db").exists(),
        "refused before the log was opened"
    );
    let out = breakerbox_env(&["config", "check", "--config", allowed], &[], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("allow_short_tokens") && stdout.contains("loopback"),
        "{stdout}"
    );
    // …and on 127.0.0.1 it serves, with that token.
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--db", db, "--bind", "127.0.0.1:0", "--config", allowed])
        .env_remove("CIRCUIT_BREAKER_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = listening_addr(&mut lines);
    assert_eq!(http_get(&addr, "/api/health/circuit-breakers", Some("changeme")).0, 200);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Records `calls` successful calls of `latency_ms` each to stripe in the log at `db`, a minute
/// ago, through the library (as an application would), and stops cleanly.
fn record_calls(db: &std::path::Path, config: &std::path::Path, calls: u32, latency_ms: u64) {
    use breakerbox::actor::{Clock, Registry, RegistryOptions, system_now_ms};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let options = breakerbox::config::LoadOptions {
            path: Some(config.to_path_buf()),
            ..Default::default()
        };
        let config = breakerbox::config::Config::load(&options).unwrap();
        let journal = std::sync::Arc::new(
            breakerbox::journal::Journal::open(db, breakerbox::journal::JournalOptions::default())
                .await
                .unwrap(),
        );
        let clock = Clock::manual(system_now_ms() - 60_000);
        let registry = Registry::start(
            &config,
            journal.clone(),
            RegistryOptions {
                clock: clock.clone(),
                ..RegistryOptions::default()
            },
        )
        .await
        .unwrap();
        let stripe = registry.get("stripe").unwrap().clone();
        for _ in 0..calls {
            let clock = clock.clone();
            stripe
                .call("", async move {
                    clock.advance(latency_ms);
                    Ok::<_, &str>(())
                })
                .await
                .unwrap();
        }
        registry.shutdown().await.unwrap();
        journal.close().await;
    });
}

/// `serve` on a free loopback port with `config` and the API token `ci:token-for-the-test-0123456789abcdef`.
fn serve_with(db: &std::path::Path, config: &std::path::Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--db", db.to_str().unwrap(), "--bind", "127.0.0.1:0"])
        .args(["--config", config.to_str().unwrap()])
        .env("CIRCUIT_BREAKER_API_TOKEN", "ci:token-for-the-test-0123456789abcdef")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = listening_addr(&mut lines);
    // Keep reading, so serve never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

fn stop(mut child: std::process::Child) {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// Polls `probe` every 50 ms until it is true, for at most 20 s.
fn within_20s(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !probe() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_sighup_reload_gives_the_health_score_the_new_latency_budget() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = (dir.path().join("serve.db"), dir.path().join("cb.toml"));
    // Given stripe's recent calls took 500 ms each, against a budget of 100 ms…
    std::fs::write(&config, "[services.stripe]\nlatency_budget = \"100ms\"\n").unwrap();
    record_calls(&db, &config, 20, 500);
    let (child, addr) = serve_with(&db, &config);
    let latency = || {
        let (status, response) = http_get(
            &addr,
            "/api/health/circuit-breakers/stripe",
            Some("token-for-the-test-0123456789abcdef"),
        );
        assert_eq!(status, 200, "{response}");
        let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        body["breakers"][0]["health"]["latency"].clone()
    };
    let before = latency();
    assert!(
        before["why"].as_str().unwrap().contains("against a 100 ms budget"),
        "{before}"
    );
    assert!(before["points"].as_f64().unwrap() < 10.0, "{before}");
    // …when the budget becomes 1 s and serve gets SIGHUP, the health score judges by 1 s.
    std::fs::write(&config, "[services.stripe]\nlatency_budget = \"1s\"\n").unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    within_20s("the health score with the new budget", || {
        latency()["why"].as_str().unwrap().contains("against a 1000 ms budget")
    });
    assert_eq!(latency()["points"], 25.0, "500 ms calls are within a 1 s budget");
    stop(child);
}

#[test]
fn status_json_is_the_document_the_health_api_answers() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let config = dir.path().join("cb.toml");
    std::fs::write(&config, "[services.stripe]\nfailure_threshold = 3\ntimeout = \"20s\"\n").unwrap();
    let (child, addr) = serve_with(&db, &config);
    let args = [
        "status",
        "--db",
        db.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--json",
    ];
    // Asked at (nearly) the same instant: equal but for the instant itself. The five-minute
    // window moves at minute boundaries; a pair asked across one is asked again.
    let mut agreed = None;
    for _ in 0..3 {
        let (code, response) = http_get(
            &addr,
            "/api/health/circuit-breakers",
            Some("token-for-the-test-0123456789abcdef"),
        );
        assert_eq!(code, 200, "{response}");
        let mut http: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        let out = breakerbox(&args, "");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut cli: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
        let minute = |v: &Value| v["as_of_ms"].as_u64().unwrap() / 60_000;
        if minute(&http) != minute(&cli) {
            continue;
        }
        http.as_object_mut().unwrap().remove("as_of_ms");
        cli.as_object_mut().unwrap().remove("as_of_ms");
        // Each process says how its own log stands (the server's writes, the CLI's reads).
        for doc in [&mut http, &mut cli] {
            let log = doc.as_object_mut().unwrap().remove("log").expect("the log's condition");
            assert_eq!(log["status"], "ok", "{log}");
        }
        agreed = Some((http, cli));
        break;
    }
    stop(child);
    let (http, cli) = agreed.expect("three pairs, each across a minute boundary");
    assert_eq!(cli, http, "the CLI and the HTTP API give one answer");
    let stripe = http["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["service"] == "stripe")
        .unwrap();
    assert!(
        stripe["metrics_5m"]["calls"].as_u64().unwrap() > 0,
        "the recorded calls of the last five minutes are in it: {stripe}"
    );
    assert_eq!(stripe["last_transition"]["to"], "closed", "{stripe}");
}

#[test]
fn a_changed_config_file_swaps_the_api_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = (dir.path().join("serve.db"), dir.path().join("cb.toml"));
    std::fs::write(
        &config,
        "[api.tokens]\noncall = \"old-token-0123456789abcdef0123456789\"\n",
    )
    .unwrap();
    let (child, addr) = serve_with(&db, &config);
    let health = |token: &str| http_get(&addr, "/api/health/circuit-breakers", Some(token)).0;
    assert_eq!(health("old-token-0123456789abcdef0123456789"), 200);
    // The file changes (no signal): oncall's token is replaced by grafana's.
    std::fs::write(
        &config,
        "[api.tokens]\ngrafana = \"new-token-0123456789abcdef0123456789\"\n",
    )
    .unwrap();
    // Polled with the old token, which works until the reload (so the bad-token limiter
    // sees one failure, not one per poll).
    within_20s("the reload to drop the old token", || {
        health("old-token-0123456789abcdef0123456789") == 401
    });
    assert_eq!(
        health("new-token-0123456789abcdef0123456789"),
        200,
        "the added token works"
    );
    assert_eq!(
        health("token-for-the-test-0123456789abcdef"),
        200,
        "the environment's token stays"
    );
    // A file with a problem is refused whole: the token it adds is not taken either.
    std::fs::write(
        &config,
        "[api.tokens]\ngrafana = \"new-token-0123456789abcdef0123456789\"\nthird = \"third-token-0123456789abcdef0123456789\"\n[services.stripe]\nfailure_threshold = 0\n",
    )
    .unwrap();
    let (status, response) = http_post(&addr, "/api/config/reload", "new-token-0123456789abcdef0123456789");
    assert_eq!(status, 422, "{response}");
    assert!(response.contains("cb.toml:5"), "{response}");
    assert_eq!(health("third-token-0123456789abcdef0123456789"), 401);
    assert_eq!(health("new-token-0123456789abcdef0123456789"), 200);
    stop(child);
}

/// An empty POST with a bearer token: its status and the whole response.
fn http_post(addr: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    (response.split_whitespace().nth(1).unwrap().parse().unwrap(), response)
}

#[test]
fn ctrl_c_ends_the_demo_cleanly_with_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args([
            "demo",
            "--duration",
            "60s",
            "--bind",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let started = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "it stopped, not ran on"
    );
    assert!(stdout.contains("Ctrl-C: stopping cleanly"), "{stdout}");
    assert!(stdout.contains("post-incident summary (from the log):"), "{stdout}");
    assert!(stdout.contains("  stripe  opened 0x"), "{stdout}");
}

#[test]
fn every_command_has_help_with_an_example() {
    let top = breakerbox(&["--help"], "");
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    // The commands as --help lists them.
    let commands: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() >= 16, "{commands:?}");
    for c in &commands {
        let out = breakerbox(&[c, "--help"], "");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{c} --help");
        assert!(help.contains("EXAMPLE"), "{c} --help has no example:\n{help}");
    }
}

#[test]
fn completions_are_printed_for_each_shell() {
    for (shell, needle) in [
        ("bash", "complete -F _breakerbox"),
        ("zsh", "#compdef breakerbox"),
        ("fish", "complete -c breakerbox"),
    ] {
        let out = breakerbox(&["completions", shell], "");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains(needle), "{shell}: {needle:?} missing");
        assert!(
            script.contains("what-if") && script.contains("demo"),
            "{shell}: every command completes"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Commands after a crash: the lease holder was killed (SIGKILL: no release, a fresh lease left
// behind), and an operator acts at once.

/// `serve` on a fresh port of `db`, its stdout read by a thread: returns the child, its lines
/// (as they come) and its stderr file.
fn spawn_serve(db: &str, dir: &std::path::Path, run: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_breakerbox"))
        .args(["serve", "--db", db, "--bind", "127.0.0.1:0"])
        .env("CIRCUIT_BREAKER_API_TOKEN", "ci:token-for-the-test-0123456789abcdef")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join(format!("{run}.stderr"))).unwrap())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (bounded) for serve's readiness line; `None` if it ended or said nothing in time.
fn listening_within(lines: &std::sync::mpsc::Receiver<String>, within: std::time::Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        match lines.recv_timeout(left) {
            Ok(l) if l.starts_with("listening on") => return Some(l),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// A `serve` started, ready, then killed with SIGKILL (and reaped, as the operator's shell or
/// systemd would).
fn serve_then_sigkill(db: &str, dir: &std::path::Path) {
    let (mut child, lines) = spawn_serve(db, dir, "first");
    let ready = listening_within(&lines, std::time::Duration::from_secs(30));
    assert!(
        ready.is_some(),
        "serve did not start: {:?}",
        std::fs::read_to_string(dir.join("first.stderr"))
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_command_right_after_the_server_was_killed_is_applied_and_names_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let db = db.to_str().unwrap();
    serve_then_sigkill(db, dir.path());
    let started = std::time::Instant::now();
    let out = breakerbox(&["force-open", "stripe", "--reason", "x", "--db", db], "");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the dead holder was seen at once, not waited out: {:?}",
        started.elapsed()
    );
    assert!(stdout.contains("→ forced_open"), "{stdout}");
    assert!(
        stdout.contains("is gone"),
        "the ack says why this process applied it: {stdout}"
    );
    let position: i64 = stdout
        .split("at position ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the ack names its position: {stdout}"));
    let rows = status_rows(&breakerbox(
        &["status", "--db", db, "--service", "stripe", "--json"],
        "",
    ));
    assert_eq!(rows[0]["state"], "forced_open");
    let audit = audit_entries(&breakerbox(&["audit", "--db", db, "--kind", "command", "--json"], ""));
    let entry = audit
        .iter()
        .find(|e| e["position"] == position)
        .unwrap_or_else(|| panic!("no command at position {position}: {audit:?}"));
    assert_eq!(entry["stream"], "stripe");
    assert_eq!(entry["details"]["operator"]["why"], "x");
}

#[test]
fn serve_restarted_right_after_a_sigkill_takes_the_log_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let db = db.to_str().unwrap();
    serve_then_sigkill(db, dir.path());
    let (mut child, lines) = spawn_serve(db, dir.path(), "second");
    let ready = listening_within(&lines, std::time::Duration::from_secs(30));
    if let Some(line) = &ready {
        // It serves (and so has its signal handlers) before it is asked to stop.
        let addr = listening_addr(&mut std::iter::once(Ok(line.clone())));
        assert_eq!(http_get(&addr, "/healthz", None).0, 200);
    }
    let _ = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(dir.path().join("second.stderr")).unwrap();
    assert!(ready.is_some(), "the restart did not start ({status:?}): {stderr}");
    assert!(
        stderr.contains("took over the event log") && stderr.contains("is gone"),
        "it says whose lease it took and why: {stderr}"
    );
    assert!(status.success(), "{stderr}");
}

#[test]
fn serve_starts_on_a_log_whose_latest_snapshot_is_damaged_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let db = path.to_str().unwrap();
    // Given a server whose stripe an operator forced open, stopped cleanly (its snapshots written)
    let (child, lines) = spawn_serve(db, dir.path(), "first");
    assert!(listening_within(&lines, std::time::Duration::from_secs(30)).is_some());
    let out = breakerbox(
        &["force-open", "stripe", "--db", db, "--reason", "provider incident"],
        "",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    stop(child);
    // and stripe's latest snapshot then damaged on disk
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let damaged = rt.block_on(async {
        use sqlx::Connection;
        let mut c = tamper::outsider(&path).await;
        let (position,): (i64,) =
            sqlx::query_as("SELECT MAX(position) FROM events WHERE stream = 'stripe' AND event_type = 'snapshot'")
                .fetch_one(&mut c)
                .await
                .unwrap();
        c.close().await.unwrap();
        tamper::garble(&path, position).await;
        position
    });
    // When serve starts on it again
    let (mut child, lines) = spawn_serve(db, dir.path(), "second");
    let ready = listening_within(&lines, std::time::Duration::from_secs(30));
    let stderr = || std::fs::read_to_string(dir.path().join("second.stderr")).unwrap();
    let Some(line) = ready else {
        let _ = child.kill();
        panic!("serve did not start ({:?}): {}", child.wait(), stderr());
    };
    // Then it serves stripe, still forced open (folded from the events before the snapshot), with
    // its figures (the metrics projection skips the damaged event too)
    let addr = listening_addr(&mut std::iter::once(Ok(line)));
    let (code, response) = http_get(
        &addr,
        "/api/health/circuit-breakers/stripe",
        Some("token-for-the-test-0123456789abcdef"),
    );
    assert_eq!(code, 200, "{response}");
    let doc: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let stripe = doc["breakers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["service"] == "stripe");
    assert_eq!(stripe.unwrap()["state"], "forced_open", "{doc}");
    assert!(doc["read_error"].is_null(), "{doc}");
    stop(child);
    // and said once, as an error, which event of which breaker it skipped
    let said = stderr();
    let errors: Vec<&str> = said.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{said}");
    assert!(
        errors[0].contains("stripe") && errors[0].contains(&format!("position {damaged} ")),
        "{said}"
    );
}

#[test]
fn a_command_to_an_owner_that_is_alive_but_does_not_answer_says_so() {
    use breakerbox::journal::{Holder, Journal, JournalOptions};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // An owner on this host that is alive and keeps its lease (this test process renews it) but
    // follows no command requests: a stalled server, as the requester sees it.
    let owner = Holder::this_process("serve");
    let journal = rt.block_on(async {
        let j = Journal::open(&db, JournalOptions::default()).await.unwrap();
        let lease = j
            .acquire_lease(&owner.to_string(), std::time::Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(lease.holder, owner.to_string());
        j
    });
    // The writer renews from its own thread while the CLI waits.
    let out = breakerbox(
        &["force-open", "stripe", "--reason", "x", "--db", db.to_str().unwrap()],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("serve pid {} on this host is alive", std::process::id());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("did not apply the command within 5000 ms"), "{stderr}");
    rt.block_on(journal.close());
    let rows = status_rows(&breakerbox(
        &["status", "--db", db.to_str().unwrap(), "--service", "stripe", "--json"],
        "",
    ));
    assert_eq!(rows[0]["state"], "closed", "nobody applied it");
}

#[test]
fn a_command_to_an_owner_on_another_host_that_stops_renewing_is_applied_once_its_lease_lapses() {
    use breakerbox::journal::{Durability, Journal, JournalOptions, connect_options};
    use sqlx::{ConnectOptions, Connection};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("log.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // An owner on another host (its pid means nothing here) that renewed its 1 s lease just now
    // and then died: only the lapse tells.
    rt.block_on(async {
        Journal::open(&db, JournalOptions::default())
            .await
            .unwrap()
            .close()
            .await;
        let mut conn = connect_options(&db, Durability::Full, std::time::Duration::from_millis(50))
            .connect()
            .await
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        sqlx::query("INSERT INTO writer_lease (id, holder, renewed_at, ttl_ms) VALUES (1, ?, ?, 1000)")
            .bind("serve pid 4242 on db-2 as ops")
            .bind(now)
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
    let started = std::time::Instant::now();
    let out = breakerbox(
        &["force-open", "stripe", "--reason", "x", "--db", db.to_str().unwrap()],
        "",
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "taken when the owner's own 1 s ttl ran out: {:?}",
        started.elapsed()
    );
    assert!(
        stdout.contains("serve pid 4242 on host db-2 did not renew the lease") && stdout.contains("at position "),
        "{stdout}"
    );
    let rows = status_rows(&breakerbox(
        &["status", "--db", db.to_str().unwrap(), "--service", "stripe", "--json"],
        "",
    ));
    assert_eq!(rows[0]["state"], "forced_open");
}

#[test]
fn verify_passes_a_recorded_log_and_an_exported_anchor_catches_a_log_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let db = recorded_log(dir.path());
    let db_s = db.to_str().unwrap();
    let out = breakerbox(&["verify", "--db", db_s], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("verified: "), "{text}");
    assert!(text.contains("heads (the anchor to keep elsewhere):"), "{text}");
    // The anchor, kept elsewhere.
    let anchor = dir.path().join("anchor.json");
    let out = breakerbox(&["verify", "--db", db_s, "--json"], "");
    assert!(out.status.success());
    std::fs::write(&anchor, &out.stdout).unwrap();
    // Someone cuts stripe's newest event off and puts the trigger back as it was: the chain
    // alone cannot tell (nothing after it is left to break), the anchor can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(tamper::cut_newest(&db, "stripe"));
    let out = breakerbox(&["verify", "--db", db_s], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = breakerbox(&["verify", "--db", db_s, "--anchor", anchor.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("anchor broken: stripe #"), "{text}");
    assert!(text.contains("NOT verified"), "{text}");
    // A file that is not an anchor is named.
    let not_anchor = dir.path().join("notes.txt");
    std::fs::write(&not_anchor, "heads: stripe 42\n").unwrap();
    let out = breakerbox(&["verify", "--db", db_s, "--anchor", not_anchor.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not the JSON of `breakerbox verify --json`"));
}

#[test]
fn simulate_with_json_prints_one_document() {
    let trace = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/examples/stripe-outage.jsonl"
    ))
    .unwrap();
    let lines = json_lines(&breakerbox(&["simulate", "--failure-threshold", "10"], &trace));
    let out = breakerbox(&["simulate", "--failure-threshold", "10", "--json"], &trace);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("simulate --json prints one JSON document");
    // The same transitions and summary as the JSON lines, in one document.
    assert_eq!(doc["transitions"].as_array().unwrap().len(), lines.len() - 1);
    assert_eq!(doc["summary"], lines.last().unwrap()["summary"]);
}
