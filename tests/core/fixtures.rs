//! Golden bytes: every event type as version 1 wrote it, decoded by every later build.
//!
//! The files in `tests/fixtures/events/` are never rewritten. If a payload must change, bump the
//! type's version, keep the old decoder, and add a new fixture beside the old one.
//! `BREAKERBOX_WRITE_FIXTURES=1 cargo test --test core golden` creates missing files only.

use breakerbox::breaker::codec::{self, DecodeError, EVENT_VERSION};
use breakerbox::breaker::{
    CallRecorded, Event, Evidence, OpenPolicy, Outcome, Policy, PolicyApplied, Reason, SlidingWindow, SlowCallRule,
    State, Transition, TrialAdmitted, TripRule,
};
use std::path::PathBuf;

fn samples() -> Vec<(&'static str, Event)> {
    vec![
        (
            "call_recorded.v1.msgpack",
            Event::CallRecorded(CallRecorded {
                at_ms: 1_764_000_000_123,
                outcome: Outcome::Timeout,
                latency_ms: 3_000,
                slow: true,
                stale: false,
            }),
        ),
        (
            "trial_admitted.v1.msgpack",
            Event::TrialAdmitted(TrialAdmitted {
                at_ms: 1_764_000_030_000,
            }),
        ),
        (
            "transition.v1.msgpack",
            Event::Transitioned(Box::new(Transition {
                at_ms: 1_764_000_000_500,
                from: State::Closed,
                to: State::Open,
                episode: 7,
                reason: Reason::FailureRate,
                evidence: Evidence {
                    calls: Some(20),
                    failures: Some(11),
                    threshold: Some(50.0),
                    rate_percent: Some(55.0),
                    window_calls: Some(20),
                    open_ms: Some(120_000),
                    ..Evidence::default()
                },
                open_until_ms: Some(1_764_000_120_500),
            })),
        ),
        (
            "policy_applied.v1.msgpack",
            Event::PolicyApplied(Box::new(PolicyApplied {
                at_ms: 1_764_000_000_000,
                policy: Policy {
                    trip: TripRule::FailureRate {
                        threshold_percent: 50.0,
                        window: SlidingWindow::Time {
                            window_ms: 60_000,
                            buckets: 60,
                        },
                        minimum_calls: 10,
                    },
                    slow_calls: Some(SlowCallRule {
                        duration_ms: 2_000,
                        threshold_percent: 80.0,
                        window: SlidingWindow::Count { calls: 50 },
                        minimum_calls: 10,
                    }),
                    open: OpenPolicy {
                        timeout_ms: 120_000,
                        backoff_factor: 2.0,
                        max_timeout_ms: Some(600_000),
                        jitter_percent: 10.0,
                        seed: 99,
                    },
                    half_open_requests: 3,
                    success_threshold: 2,
                    half_open_max_wait_ms: None,
                    latency_budget_ms: None,
                },
            })),
        ),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events")
}

#[test]
fn golden_bytes_of_every_event_type_still_decode() {
    let write = std::env::var_os("BREAKERBOX_WRITE_FIXTURES").is_some();
    for (file, event) in samples() {
        let path = dir().join(file);
        let encoded = codec::encode(&event);
        if write && !path.exists() {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &encoded.payload).unwrap();
        }
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let decoded = codec::decode(encoded.event_type, 1, &golden).unwrap();
        assert_eq!(decoded, event, "{file} decodes to the event it was written from");
        assert_eq!(
            encoded.payload, golden,
            "{file}: the current encoding changed; bump the version"
        );
        assert!(file.starts_with(encoded.event_type));
    }
}

#[test]
fn payloads_are_maps_with_field_names() {
    // Named fields keep old bytes readable when fields are added or reordered.
    let encoded = codec::encode(&samples()[0].1);
    assert!(
        encoded.payload.windows(b"latency_ms".len()).any(|w| w == b"latency_ms"),
        "field names are in the payload"
    );
    assert_eq!(encoded.event_version, EVENT_VERSION);
}

#[test]
fn bad_bytes_are_errors_not_panics() {
    let golden = std::fs::read(dir().join("transition.v1.msgpack")).unwrap();
    for cut in 0..golden.len() {
        assert!(
            codec::decode("transition", 1, &golden[..cut]).is_err(),
            "truncated at {cut}"
        );
    }
    assert!(matches!(
        codec::decode("transition", 2, &golden),
        Err(DecodeError::UnknownVersion { event_version: 2, .. })
    ));
    assert!(matches!(
        codec::decode("no_such_event", 1, &golden),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        codec::decode("call_recorded", 1, &golden),
        Err(DecodeError::Malformed { .. })
    ));
}
