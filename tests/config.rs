//! Configuration: defaults, every key and variable, precedence, schedules across DST, reload.

use breakerbox::breaker::{Breaker, Decision, Outcome, State, TripRule};
use breakerbox::config::{Config, LoadOptions, Secret, Source};
use std::collections::BTreeMap;
use std::path::Path;

fn env(vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
    Config::from_toml(Path::new("test.toml"), toml, &env(vars)).map_err(|e| e.to_string())
}

fn threshold(c: &Config, key: &str) -> u32 {
    match c.breaker(key).unwrap().policy.trip {
        TripRule::ConsecutiveFailures { threshold } | TripRule::FailureCount { threshold, .. } => threshold,
        TripRule::FailureRate { .. } => panic!("rate rule"),
    }
}

#[test]
fn embedded_defaults_are_the_seeds() {
    let c = Config::load(&LoadOptions::default()).unwrap();
    let keys: Vec<&str> = c.breakers.iter().map(|b| b.key.as_str()).collect();
    assert_eq!(keys, ["calcom", "retell", "stripe"]);
    for (key, failures, timeout_ms) in [("calcom", 3, 30_000), ("retell", 5, 60_000), ("stripe", 10, 120_000)] {
        let b = c.breaker(key).unwrap();
        assert_eq!(threshold(&c, key), failures);
        assert_eq!(b.policy.open.timeout_ms, timeout_ms);
        assert_eq!((b.policy.success_threshold, b.policy.half_open_requests), (2, 3));
        assert_eq!(b.knobs.failure_threshold.as_ref().unwrap().source, Source::Default);
        assert_eq!(b.call_timeout_ms(), 10_000);
        assert_eq!(b.classifier().classify(503), Outcome::Failure);
        assert_eq!(b.classifier().classify(404), Outcome::Success);
    }
}

#[test]
fn the_most_specific_setting_wins_across_all_five_layers() {
    let file = |section: bool| {
        format!(
            "[defaults]\nfailure_threshold = 7\n[services.calcom]\n{}[services.acme]\n{}",
            if section { "failure_threshold = 9\n" } else { "" },
            if section { "failure_threshold = 9\n" } else { "" }
        )
    };
    let all = [
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "8"),
        ("CALCOM_CIRCUIT_BREAKER_THRESHOLD", "11"),
        ("ACME_CIRCUIT_BREAKER_THRESHOLD", "11"),
    ];
    // service env > service section > (embedded service section) > global env > file defaults > embedded
    let c = load(&file(true), &all).unwrap();
    assert_eq!((threshold(&c, "calcom"), threshold(&c, "acme")), (11, 11));
    let src = &c
        .breaker("calcom")
        .unwrap()
        .knobs
        .failure_threshold
        .as_ref()
        .unwrap()
        .source;
    assert_eq!(src.to_string(), "env CALCOM_CIRCUIT_BREAKER_THRESHOLD");
    let c = load(&file(true), &all[..1]).unwrap();
    assert_eq!((threshold(&c, "calcom"), threshold(&c, "acme")), (9, 9));
    let src = &c
        .breaker("acme")
        .unwrap()
        .knobs
        .failure_threshold
        .as_ref()
        .unwrap()
        .source;
    assert_eq!(src.to_string(), "test.toml:6");
    // No service section: Cal.com keeps its embedded 3 (the global variable does not change it,
    // as in the seed), a service without an embedded section takes the global variable.
    let c = load(&file(false), &all[..1]).unwrap();
    assert_eq!((threshold(&c, "calcom"), threshold(&c, "acme")), (3, 8));
    let c = load(&file(false), &[]).unwrap();
    assert_eq!((threshold(&c, "calcom"), threshold(&c, "acme")), (3, 7));
    let c = load("[services.acme]\n", &[]).unwrap();
    assert_eq!(threshold(&c, "acme"), 5);
}

#[test]
fn every_seed_variable_applies_and_bad_values_are_named() {
    let good = [
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "4"),
        ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "1"),
        ("CIRCUIT_BREAKER_TIMEOUT", "45"),
        ("CIRCUIT_BREAKER_HALF_OPEN_REQUESTS", "5"),
        ("STRIPE_CIRCUIT_BREAKER_THRESHOLD", "20"),
        ("STRIPE_CIRCUIT_BREAKER_TIMEOUT", "1500ms"),
    ];
    let c = Config::load(&LoadOptions {
        path: None,
        env: env(&good),
        ..Default::default()
    })
    .unwrap();
    let acme = load("[services.acme]\n", &good[..4]).unwrap();
    let a = &acme.breaker("acme").unwrap().policy;
    assert_eq!(threshold(&acme, "acme"), 4);
    assert_eq!(
        (a.success_threshold, a.open.timeout_ms, a.half_open_requests),
        (1, 45_000, 5)
    );
    let s = &c.breaker("stripe").unwrap().policy;
    assert_eq!((threshold(&c, "stripe"), s.open.timeout_ms), (20, 1_500));
    assert_eq!(s.half_open_requests, 5);
    for (var, bad, needle) in [
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "-1", "-1"),
        ("CIRCUIT_BREAKER_SUCCESS_THRESHOLD", "two", "two"),
        ("CIRCUIT_BREAKER_TIMEOUT", "5 parsecs", "5 parsecs"),
        ("CIRCUIT_BREAKER_HALF_OPEN_REQUESTS", "0", "half_open_requests = 0"),
        ("STRIPE_CIRCUIT_BREAKER_THRESHOLD", "0", "failure_threshold = 0"),
        (
            "STRIPE_CIRCUIT_BREAKER_TIMEOUT",
            "99999999999999999999",
            "99999999999999999999",
        ),
        (
            "RETELL_CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
            "1",
            "RETELL_CIRCUIT_BREAKER_THRESHOLD",
        ),
        (
            "CIRCUIT_BREAKER_TIMEOUTS",
            "1",
            "did you mean \"CIRCUIT_BREAKER_TIMEOUT\"",
        ),
        (
            "STRIPPE_CIRCUIT_BREAKER_THRESHOLD",
            "3",
            "no service is named \"strippe\"",
        ),
    ] {
        let err = Config::load(&LoadOptions {
            path: None,
            env: env(&[(var, bad)]),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(var), "{var}={bad}: {err}");
        assert!(err.contains(needle), "{var}={bad}: {needle:?} not in {err}");
    }
}

#[test]
fn every_file_key_applies_and_bad_values_name_key_value_and_line() {
    // (key, good value, bad value) — the good one must change the effective config.
    let keys = [
        ("failure_threshold", "4", "0"),
        ("success_threshold", "1", "-2"),
        ("timeout", "\"45s\"", "\"45 parsecs\""),
        ("half_open_requests", "4", "0"),
        ("failure_window", "\"30s\"", "\"0s\""),
        ("backoff_factor", "2.0", "0.5"),
        ("max_timeout", "\"10m\"", "\"1s\""),
        ("jitter", "10", "100"),
        ("seed", "7", "-7"),
        ("call_timeout", "3", "true"),
        ("latency_budget", "\"250ms\"", "[1]"),
        ("health_url", "\"http://127.0.0.1:1/health\"", "5"),
        ("failure_statuses", "[\"5xx\", 418]", "[\"6xx\"]"),
        ("ignored_statuses", "[404]", "[99]"),
    ];
    let base = load("[services.acme]\n", &[]).unwrap();
    for (key, good, bad) in keys {
        let c = load(&format!("[services.acme]\n{key} = {good}\n"), &[]).unwrap_or_else(|e| panic!("{key}: {e}"));
        let b = c.breaker("acme").unwrap();
        assert_ne!(b.knobs, base.breaker("acme").unwrap().knobs, "{key} changed nothing");
        assert_eq!(b.knobs.source_of(key).unwrap().to_string(), "test.toml:2", "{key}");
        let err = load(&format!("[services.acme]\n{key} = {bad}\n"), &[]).unwrap_err();
        assert!(err.contains("test.toml:2"), "{key} = {bad}: {err}");
        assert!(err.contains(key), "{key} = {bad}: {err}");
    }
    // Rate-rule knobs, which only apply together.
    let c = load(
        "[services.acme]\nfailure_rate = 50\nwindow = \"1m\"\nwindow_buckets = 6\nminimum_calls = 4\nslow_call_duration = \"2s\"\nslow_call_rate = 80\n",
        &[],
    )
    .unwrap();
    let p = &c.breaker("acme").unwrap().policy;
    assert!(matches!(p.trip, TripRule::FailureRate { minimum_calls: 4, .. }));
    assert_eq!(p.slow_calls.unwrap().threshold_percent, 80.0);
    let c = load("[services.acme]\nfailure_rate = 50\nwindow_calls = 20\n", &[]).unwrap();
    assert!(matches!(
        c.breaker("acme").unwrap().policy.trip,
        TripRule::FailureRate { .. }
    ));
    for (toml, needle) in [
        ("window_calls = 20\n", "window_calls"),
        (
            "failure_rate = 50\nfailure_window = \"1m\"\n",
            "conflicts with failure_window",
        ),
        ("failure_rate = 0\n", "failure_rate = 0"),
        (
            "slow_call_rate = 50\nslow_call_duration = \"0s\"\n",
            "slow_call_duration",
        ),
        ("failure_rate = 50\nwindow_calls = 0\n", "window_calls"),
    ] {
        let err = load(&format!("[services.acme]\n{toml}"), &[]).unwrap_err();
        assert!(err.contains(needle), "{toml}: {err}");
    }
}

#[test]
fn structural_mistakes_are_reported_all_at_once() {
    let err = load(
        "[defualts]\n[services.acme]\nfailur_threshold = 3\nsuccess_threshold = 4\n[services.\"bad name\"]\n",
        &[],
    )
    .unwrap_err();
    for needle in [
        "test.toml:1: unknown key defualts (did you mean \"defaults\"?)",
        "test.toml:3: unknown key services.acme.failur_threshold (did you mean \"failure_threshold\"?)",
        "success_threshold = 4 must not exceed half_open_requests (3)",
        "service name \"bad name\"",
    ] {
        assert!(err.contains(needle), "{needle:?} not in:\n{err}");
    }
    assert!(
        load("this is not toml", &[])
            .unwrap_err()
            .contains("test.toml:1: not valid TOML")
    );
}

const BUSINESS_HOURS: &str = r#"
[services.stripe]
failure_threshold = 10

[[services.stripe.schedules]]
name = "business-hours"
days = ["mon-fri"]
hours = "09:00-17:00"
timezone = "America/New_York"
failure_threshold = 25

[services.stripe.operations."customers.create"]
timeout = "30s"
"#;

fn utc_ms(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis() as u64
}

#[test]
fn schedules_follow_local_time_across_a_dst_change() {
    let c = load(BUSINESS_HOURS, &[]).unwrap();
    let stripe = c.breaker("stripe").unwrap();
    let at = |t: &str| match stripe.policy_at(utc_ms(t)).trip {
        TripRule::ConsecutiveFailures { threshold } => threshold,
        _ => unreachable!(),
    };
    // New York left EST (UTC-5) for EDT (UTC-4) on Sunday 2026-03-08.
    assert_eq!(at("2026-03-06T13:59:00Z"), 10, "Fri 08:59 EST");
    assert_eq!(at("2026-03-06T14:00:00Z"), 25, "Fri 09:00 EST");
    assert_eq!(at("2026-03-06T21:59:00Z"), 25, "Fri 16:59 EST");
    assert_eq!(at("2026-03-06T22:00:00Z"), 10, "Fri 17:00 EST: the end is exclusive");
    assert_eq!(at("2026-03-07T15:00:00Z"), 10, "Saturday");
    assert_eq!(
        at("2026-03-09T13:00:00Z"),
        25,
        "Mon 09:00 EDT: one UTC hour earlier than on Friday"
    );
    assert_eq!(at("2026-03-09T12:59:00Z"), 10, "Mon 08:59 EDT");
    assert_eq!(at("2026-03-09T21:00:00Z"), 10, "Mon 17:00 EDT");
    // The next switch is found at the exact minute, across the weekend and the change.
    let next = stripe.next_change_after(utc_ms("2026-03-06T22:00:00Z")).unwrap();
    assert_eq!(next, utc_ms("2026-03-09T13:00:00Z"));
    // The operation inherits the service (and its schedule) and overrides its own key.
    let op = c.breaker("stripe/customers.create").unwrap();
    assert_eq!(op.policy_at(utc_ms("2026-03-09T13:00:00Z")).open.timeout_ms, 30_000);
    assert!(matches!(
        op.policy_at(utc_ms("2026-03-09T13:00:00Z")).trip,
        TripRule::ConsecutiveFailures { threshold: 25 }
    ));
    assert_eq!(op.policy.open.timeout_ms, 30_000);
    assert_eq!(c.breaker("stripe").unwrap().policy.open.timeout_ms, 120_000);
}

#[test]
fn bad_schedules_are_refused() {
    let window = |days: &str, hours: &str, tz: &str| {
        format!(
            "[[services.acme.schedules]]\ndays = {days}\nhours = \"{hours}\"\ntimezone = \"{tz}\"\nfailure_threshold = 9\n"
        )
    };
    for (toml, needle) in [
        (window("[\"mon\"]", "09:00-17:00", "Mars/Olympus"), "not an IANA time zone"),
        (window("[\"funday\"]", "09:00-17:00", "UTC"), "\"funday\" is not a day"),
        (window("[\"mon\"]", "25:00-26:00", "UTC"), "not a time of day"),
        (window("[\"mon\"]", "09:00-09:00", "UTC"), "is empty"),
        (
            window("[\"mon-fri\"]", "09:00-17:00", "UTC") + &window("[\"fri\"]", "16:00-18:00", "UTC"),
            "overlaps",
        ),
        (
            window("[\"sun\"]", "22:00-02:00", "UTC") + &window("[\"mon\"]", "01:00-03:00", "UTC"),
            "overlaps",
        ),
        (
            window("[\"mon\"]", "09:00-10:00", "UTC") + &window("[\"tue\"]", "09:00-10:00", "Europe/Berlin"),
            "one time zone per section",
        ),
        ("[[services.acme.schedules]]\ndays = [\"mon\"]\n".to_owned(), "needs days, hours and timezone"),
        (
            "[[services.acme.schedules]]\ndays = [\"mon\"]\nhours = \"09:00-10:00\"\ntimezone = \"UTC\"\nhealth_url = \"x\"\n".to_owned(),
            "unknown key",
        ),
        (
            "[[services.acme.schedules]]\ndays = [\"mon\"]\nhours = \"09:00-10:00\"\ntimezone = \"UTC\"\nsuccess_threshold = 9\n".to_owned(),
            "while schedule \"schedule 1\" is active",
        ),
    ] {
        let err = load(&format!("[services.acme]\n{toml}"), &[]).unwrap_err();
        assert!(err.contains(needle), "{needle:?} not in:\n{err}\n--- for:\n{toml}");
    }
    // Adjacent windows (one ends as the other starts) do not overlap.
    let ok = window("[\"mon\"]", "09:00-12:00", "UTC") + &window("[\"mon\"]", "12:00-17:00", "UTC");
    load(&format!("[services.acme]\n{ok}"), &[]).unwrap();
}

/// A service window (New York business hours: 5 of 5 trials must succeed) and an operation
/// window at `op_hours` in `op_zone` that admits `op_trials` trials.
fn service_and_operation_windows(op_days: &str, op_hours: &str, op_zone: &str, op_trials: u32) -> String {
    format!(
        r#"[services.stripe]

[[services.stripe.schedules]]
name = "peak"
days = ["mon-fri"]
hours = "09:00-17:00"
timezone = "America/New_York"
success_threshold = 5
half_open_requests = 5

[services.stripe.operations."charges.create"]

[[services.stripe.operations."charges.create".schedules]]
name = "batch"
days = ["{op_days}"]
hours = "{op_hours}"
timezone = "{op_zone}"
half_open_requests = {op_trials}
"#
    )
}

#[test]
fn a_service_window_and_an_operation_window_active_together_are_validated_together() {
    // Each window is fine alone; together (Berlin 14:00-22:00 is New York 08:00-16:00) 5
    // successes would be needed of 3 trials: refused at load, naming both windows and lines.
    let err = load(
        &service_and_operation_windows("mon-fri", "14:00-22:00", "Europe/Berlin", 3),
        &[],
    )
    .unwrap_err();
    assert!(
        err.contains(
            "test.toml:8: stripe/charges.create: success_threshold = 5 must not exceed half_open_requests (3)"
        ),
        "{err}"
    );
    assert!(
        err.contains("schedules \"peak\" (test.toml:3) and \"batch\" (test.toml:13) are active together"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Berlin 14:00-15:00 is New York 08:00-09:00, outside "peak", except in the weeks of March
    // and October when New York is on summer time and Berlin not yet (or no longer): then it is
    // 09:00-10:00, and the two are active together.
    let err = load(
        &service_and_operation_windows("mon-fri", "14:00-15:00", "Europe/Berlin", 3),
        &[],
    )
    .unwrap_err();
    assert!(err.contains("\"peak\"") && err.contains("\"batch\""), "{err}");
    // A compatible pair loads, and while both are active both apply.
    let c = load(
        &service_and_operation_windows("mon-fri", "14:00-22:00", "Europe/Berlin", 6),
        &[],
    )
    .unwrap();
    let both = c
        .breaker("stripe/charges.create")
        .unwrap()
        .policy_at(utc_ms("2026-01-05T15:00:00Z"));
    assert_eq!((both.success_threshold, both.half_open_requests), (5, 6));
    // Windows that are never active at the same instant load with jointly invalid values:
    // Berlin 00:00-06:00 is New York 18:00-00:00 (19:00-01:00 in those weeks), and weekends in
    // New York are not weekdays there.
    for (days, hours, zone) in [
        ("mon-fri", "00:00-06:00", "Europe/Berlin"),
        ("sat-sun", "09:00-17:00", "America/New_York"),
        ("mon-fri", "17:00-09:00", "America/New_York"),
    ] {
        let c = load(&service_and_operation_windows(days, hours, zone, 3), &[])
            .unwrap_or_else(|e| panic!("{days} {hours} {zone}: {e}"));
        let op = c.breaker("stripe/charges.create").unwrap();
        let t = utc_ms("2026-01-05T15:00:00Z"); // Monday 10:00 in New York
        assert_eq!(op.policy_at(t).success_threshold, 5, "{days} {hours} {zone}");
    }
}

#[test]
fn a_reload_keeps_half_open_progress_and_trial_permits() {
    let before = load("[services.acme]\nfailure_threshold = 2\ntimeout = \"30s\"\n", &[]).unwrap();
    let mut breaker = Breaker::new(before.breaker("acme").unwrap().policy.clone()).unwrap();
    let mut events = Vec::new();
    let permit = |b: &mut Breaker, at: u64, events: &mut Vec<_>| match b.acquire(at, events) {
        Decision::Permit(p) => p,
        Decision::Reject(r) => panic!("{r:?}"),
    };
    for t in 0..2 {
        let p = permit(&mut breaker, t, &mut events);
        breaker.complete(t, p, Outcome::Failure, &mut events);
    }
    let t1 = permit(&mut breaker, 30_001, &mut events);
    let t2 = permit(&mut breaker, 30_001, &mut events);
    breaker.complete(30_002, t1, Outcome::Success, &mut events);
    assert_eq!(breaker.view(30_002).trial_successes, 1);

    let after = load("[services.acme]\nfailure_threshold = 2\ntimeout = \"90s\"\n", &[]).unwrap();
    let reload = before.changes(&after, 30_003);
    assert_eq!(reload.changed.len(), 1);
    let (key, policy) = &reload.changed[0];
    assert_eq!(key, "acme");
    breaker.set_policy(30_003, policy.clone(), &mut events).unwrap();
    let view = breaker.view(30_003);
    assert_eq!(
        (view.state, view.trial_successes, view.trials_issued),
        (State::HalfOpen, 1, 2),
        "progress and permits kept"
    );
    assert_eq!(breaker.policy().open.timeout_ms, 90_000);
    breaker.complete(30_004, t2, Outcome::Success, &mut events);
    assert_eq!(breaker.state(), State::Closed, "the kept success counts toward closing");
    // Replay knows which policy was in force: the change is an event.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, breakerbox::breaker::Event::PolicyApplied(_)))
    );
    assert!(before.changes(&before, 0).changed.is_empty());
    let more = load("[services.acme]\n[services.other]\n", &[]).unwrap();
    let r = after.changes(&more, 0);
    assert_eq!((r.added, r.removed.len()), (vec!["other".to_owned()], 0));
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("tok-123456");
    assert_eq!(format!("{s:?} {s}"), "*** ***");
    assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
    assert_eq!(s.expose(), "tok-123456");
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/circuit_breaker.toml");
    let c = Config::load(&LoadOptions {
        path: Some(path.into()),
        env: BTreeMap::new(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.breaker("stripe/customers.create").is_some());
}

#[test]
fn api_tokens_come_from_the_file_by_name_and_are_never_shown() {
    let c = load(
        "[api.tokens]\noncall = \"0123456789abcdef0123456789-oncall\"\ngrafana = \"0123456789abcdef0123456789-grafana\"\n",
        &[],
    )
    .unwrap();
    let names: Vec<&str> = c.api.tokens.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["grafana", "oncall"], "by name");
    assert_eq!(c.api.tokens[1].token, Secret::new("0123456789abcdef0123456789-oncall"));
    assert_eq!(c.api.tokens[0].source.to_string(), "test.toml:3");
    let shown = format!("{:?} {}", c.api, serde_json::to_string(&c.api).unwrap());
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    // A short token, a non-string and an unknown key: each named with its line, never the value.
    let err = load(
        "[api]\ntokenz = 1\n[api.tokens]\nweak = \"hunter2\"\nnumber = 12345678901234567\n",
        &[],
    )
    .unwrap_err();
    for needle in [
        "test.toml:2: unknown key api.tokenz (did you mean \"tokens\"?)",
        "test.toml:4: api.tokens.weak: the token is shorter than 32 characters",
        "test.toml:5: api.tokens.number must be a string",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_token_shorter_than_32_characters_is_refused_from_the_file_and_the_environment() {
    // 31 characters: one short of the rule. `changeme` in the environment.
    let file = "[api.tokens]\noncall = \"0123456789012345678901234567890\"\n";
    let err = load(file, &[]).unwrap_err();
    assert!(
        err.contains("test.toml:2: api.tokens.oncall: the token is shorter than 32 characters"),
        "{err}"
    );
    assert!(err.contains("allow_short_tokens"), "says how to allow it: {err}");
    assert!(!err.contains("0123456789012345678901234567890"), "{err}");
    let err = load(
        "",
        &[(
            "CIRCUIT_BREAKER_API_TOKEN",
            "ci:0123456789abcdef0123456789abcdef,dev:changeme",
        )],
    )
    .unwrap_err();
    assert_eq!(err.lines().count(), 1, "only the short one: {err}");
    assert!(
        err.starts_with("env CIRCUIT_BREAKER_API_TOKEN: token \"dev\": the token is shorter than 32 characters"),
        "{err}"
    );
    assert!(!err.contains("changeme"), "{err}");
    // A bare token is named `default`.
    let err = load("", &[("CIRCUIT_BREAKER_API_TOKEN", "changeme")]).unwrap_err();
    assert!(err.contains("token \"default\""), "{err}");
    // 32 is enough.
    load("[api.tokens]\noncall = \"01234567890123456789012345678901\"\n", &[]).unwrap();
    load("", &[("CIRCUIT_BREAKER_API_TOKEN", "01234567890123456789012345678901")]).unwrap();
}

#[test]
fn allow_short_tokens_lets_short_tokens_through_the_file_check() {
    let c = load(
        "[api]\nallow_short_tokens = true\n[api.tokens]\ndev = \"changeme\"\n",
        &[("CIRCUIT_BREAKER_API_TOKEN", "local:short")],
    )
    .unwrap();
    assert!(c.api.allow_short_tokens);
    // Whether the address is loopback is for serve to judge; the rule itself is one function.
    use breakerbox::config::{ApiToken, check_token_lengths};
    let dev: Vec<ApiToken> = c.api.tokens.clone();
    assert!(check_token_lengths(&dev, true, None).is_empty());
    assert!(check_token_lengths(&dev, true, Some("127.0.0.1:8080".parse().unwrap())).is_empty());
    assert!(check_token_lengths(&dev, true, Some("[::1]:8080".parse().unwrap())).is_empty());
    let refused = check_token_lengths(&dev, true, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(refused.len(), 1);
    assert!(
        refused[0].to_string().contains("api.tokens.dev") && refused[0].to_string().contains("0.0.0.0:8080"),
        "{}",
        refused[0]
    );
    assert_eq!(
        check_token_lengths(&dev, false, Some("127.0.0.1:8080".parse().unwrap())).len(),
        1
    );
    let err = load("[api]\nallow_short_tokens = \"yes\"\n", &[]).unwrap_err();
    assert!(
        err.contains("test.toml:2: api.allow_short_tokens must be true or false"),
        "{err}"
    );
}

#[test]
fn the_fleet_log_settings_are_read_and_bad_values_are_named_without_a_password() {
    let c = load(
        "[journal]\nurl = \"postgres://bb:s3cret@db:5432/log\"\nnode = \"app-1\"\noffline_start = \"refuse\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.journal.url.as_deref(), Some("postgres://bb:s3cret@db:5432/log"));
    assert_eq!(c.journal.node.as_deref(), Some("app-1"));
    assert_eq!(c.journal.offline_start.as_deref(), Some("refuse"));
    // Shown (config --json, the API) with its password redacted.
    let shown = serde_json::to_string(&c.journal).unwrap();
    assert!(
        shown.contains("postgres://bb:***@db:5432/log") && !shown.contains("s3cret"),
        "{shown}"
    );
    let err = load("[journal]\nurl = \"mysql://bb:s3cret@db/log\"\n", &[]).unwrap_err();
    assert!(
        err.contains("test.toml:2: journal.url") && err.contains("mysql://bb:***@db/log") && !err.contains("s3cret"),
        "{err}"
    );
    let err = load("[journal]\nnode = \"app 1\"\n", &[]).unwrap_err();
    assert!(err.contains("journal.node: node name \"app 1\""), "{err}");
    for bad in ["../etc", "a/b", ".."] {
        let err = load(&format!("[journal]\nnode = \"{bad}\"\n"), &[]).unwrap_err();
        assert!(err.contains(&format!("journal.node: node name {bad:?}")), "{err}");
    }
    let err = load("[journal]\noffline_start = \"later\"\n", &[]).unwrap_err();
    assert!(err.contains("journal.offline_start \"later\""), "{err}");
}

#[test]
fn the_outcome_hold_is_read_from_the_journal_section_and_bad_values_are_named() {
    // Given no [journal] section, the library's default stays (None)
    assert_eq!(load("", &[]).unwrap().journal.outcome_hold_ms, None);
    // Given one, the hold is read as any duration is
    let c = load("[journal]\noutcome_hold = \"250ms\"\n", &[]).unwrap();
    assert_eq!(c.journal.outcome_hold_ms, Some(250));
    assert_eq!(
        load("[journal]\noutcome_hold = 0\n", &[])
            .unwrap()
            .journal
            .outcome_hold_ms,
        Some(0)
    );
    // Given a bad value, a value past the bound or an unknown key: each named with its line
    let err = load("[journal]\noutcome_hold = \"soon\"\n", &[]).unwrap_err();
    assert!(
        err.contains("test.toml:2: journal.outcome_hold:") && err.contains("soon"),
        "{err}"
    );
    let err = load("[journal]\noutcome_hold = \"2m\"\n", &[]).unwrap_err();
    assert!(err.contains("120000 ms is longer than the 60000 ms allowed"), "{err}");
    let err = load("[journal]\noutcome_hol = \"1s\"\n", &[]).unwrap_err();
    assert!(
        err.contains("unknown key journal.outcome_hol (did you mean \"outcome_hold\"?)"),
        "{err}"
    );
}

#[test]
fn quorum_hints_are_off_unless_configured_and_bad_values_are_named() {
    assert_eq!(load("", &[]).unwrap().fleet.quorum, None);
    let c = load(
        "[fleet.quorum]\nnodes = 4\nfraction = 0.75\nwithin = \"1m\"\nmode = \"shadow\"\n",
        &[],
    )
    .unwrap();
    let q = c.fleet.quorum.unwrap();
    assert_eq!((q.nodes, q.fraction, q.within_ms, q.shadow), (4, 0.75, 60_000, true));
    // The table alone: its defaults, and on.
    let q = load("[fleet.quorum]\n", &[]).unwrap().fleet.quorum.unwrap();
    assert_eq!((q.nodes, q.fraction, q.within_ms, q.shadow), (3, 0.5, 30_000, false));
    for (bad, named) in [
        ("nodes = 0", "fleet.quorum.nodes 0"),
        ("fraction = 1.5", "fleet.quorum.fraction 1.5"),
        ("fraction = \"half\"", "fleet.quorum.fraction: expected a number"),
        ("within = \"soon\"", "fleet.quorum.within"),
        ("mode = \"loud\"", "fleet.quorum.mode \"loud\""),
        ("nodez = 3", "unknown key fleet.quorum.nodez"),
    ] {
        let err = load(&format!("[fleet.quorum]\n{bad}\n"), &[]).unwrap_err();
        assert!(err.contains("test.toml:2") && err.contains(named), "{bad}: {err}");
    }
    let err = load("[fleet]\nquorom = {}\n", &[]).unwrap_err();
    assert!(
        err.contains("unknown key fleet.quorom") && err.contains("quorum"),
        "{err}"
    );
}
