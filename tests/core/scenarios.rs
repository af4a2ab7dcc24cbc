//! Given/when/then scenarios at the boundaries users rely on.

use breakerbox::breaker::{
    Breaker, Command, Decision, Event, MAX_OPEN_MS, OpenPolicy, Outcome, Permit, Policy, Reason, Rejection,
    SlidingWindow, SlowCallRule, State, TripRule,
};

/// A breaker with its event history, driven by plain numbers for time.
struct Given {
    breaker: Breaker,
    events: Vec<Event>,
}

fn given(policy: Policy) -> Given {
    Given {
        breaker: Breaker::new(policy).expect("valid policy"),
        events: Vec::new(),
    }
}

impl Given {
    fn acquire(&mut self, at: u64) -> Decision {
        self.breaker.acquire(at, &mut self.events)
    }

    fn permit(&mut self, at: u64) -> Permit {
        match self.acquire(at) {
            Decision::Permit(p) => p,
            Decision::Reject(r) => panic!("expected a permit at {at}, got {r:?}"),
        }
    }

    /// A call admitted at `at` that completes `latency` later with `outcome`.
    fn call(mut self, at: u64, latency: u64, outcome: Outcome) -> Self {
        let p = self.permit(at);
        self.breaker.complete(at + latency, p, outcome, &mut self.events);
        self
    }

    fn calls(mut self, n: usize, at: u64, outcome: Outcome) -> Self {
        for _ in 0..n {
            self = self.call(at, 0, outcome);
        }
        self
    }

    fn tick(mut self, at: u64) -> Self {
        self.breaker.tick(at, &mut self.events);
        self
    }

    fn command(mut self, at: u64, command: Command) -> Self {
        self.breaker.command(at, command, &mut self.events);
        self
    }

    fn state(&self) -> State {
        self.breaker.state()
    }

    fn transitions(&self) -> Vec<(u64, State, State, Reason)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Transitioned(t) => Some((t.at_ms, t.from, t.to, t.reason)),
                _ => None,
            })
            .collect()
    }
}

fn seed_policy() -> Policy {
    Policy::consecutive(3, 30_000)
}

#[test]
fn the_nth_consecutive_failure_opens_and_the_one_before_does_not() {
    let b = given(seed_policy()).calls(2, 100, Outcome::Failure);
    assert_eq!(b.state(), State::Closed);
    let b = b.calls(1, 200, Outcome::Failure);
    assert_eq!(
        b.transitions(),
        [(200, State::Closed, State::Open, Reason::ConsecutiveFailures)]
    );
}

#[test]
fn a_success_in_closed_resets_the_consecutive_count() {
    let b = given(seed_policy())
        .calls(2, 0, Outcome::Failure)
        .calls(1, 1, Outcome::Success)
        .calls(2, 2, Outcome::Failure);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(
        b.calls(1, 3, Outcome::Timeout).state(),
        State::Open,
        "a timeout is a failure"
    );
}

#[test]
fn ignored_outcomes_neither_count_nor_reset() {
    let b = given(seed_policy())
        .calls(2, 0, Outcome::Failure)
        .calls(5, 1, Outcome::Ignored)
        .calls(1, 2, Outcome::Failure);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn open_rejects_until_one_ms_before_the_timeout_and_is_half_open_at_it() {
    let mut b = given(seed_policy()).calls(3, 1_000, Outcome::Failure);
    assert_eq!(
        b.acquire(31_000 - 1),
        Decision::Reject(Rejection {
            state: State::Open,
            retry_after_ms: Some(1)
        })
    );
    let b = b.tick(31_000 - 1);
    assert_eq!(b.state(), State::Open);
    let b = b.tick(31_000);
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(
        b.transitions()[1],
        (31_000, State::Open, State::HalfOpen, Reason::TimeoutElapsed)
    );
}

#[test]
fn a_late_timer_is_still_stamped_at_the_end_of_the_open_period() {
    let b = given(seed_policy()).calls(3, 0, Outcome::Failure).tick(95_000);
    assert_eq!(b.transitions()[1].0, 30_000);
}

#[test]
fn a_fourth_trial_while_three_are_in_flight_is_rejected() {
    let mut b = given(seed_policy()).calls(3, 0, Outcome::Failure).tick(30_000);
    let trials: Vec<Permit> = (0..3).map(|i| b.permit(30_000 + i)).collect();
    assert!(trials.iter().all(|p| p.trial));
    assert_eq!(
        b.acquire(30_010),
        Decision::Reject(Rejection {
            state: State::HalfOpen,
            retry_after_ms: None
        })
    );
    // An ignored trial gives its permit back: one more trial may run.
    b.breaker.complete(30_020, trials[0], Outcome::Ignored, &mut b.events);
    assert!(matches!(b.acquire(30_021), Decision::Permit(p) if p.trial));
    assert!(matches!(b.acquire(30_022), Decision::Reject(_)));
}

#[test]
fn half_open_closes_after_success_threshold_trials() {
    let mut b = given(seed_policy()).calls(3, 0, Outcome::Failure).tick(30_000);
    let p1 = b.permit(30_000);
    let p2 = b.permit(30_000);
    b.breaker.complete(30_050, p1, Outcome::Success, &mut b.events);
    assert_eq!(b.state(), State::HalfOpen, "1 of 2 successes");
    b.breaker.complete(30_060, p2, Outcome::Success, &mut b.events);
    assert_eq!(
        b.transitions().last().copied(),
        Some((30_060, State::HalfOpen, State::Closed, Reason::TrialsSucceeded))
    );
}

#[test]
fn any_trial_failure_reopens_at_once_even_after_a_success() {
    let mut b = given(seed_policy()).calls(3, 0, Outcome::Failure).tick(30_000);
    let p1 = b.permit(30_000);
    let p2 = b.permit(30_000);
    b.breaker.complete(30_010, p1, Outcome::Success, &mut b.events);
    b.breaker.complete(30_020, p2, Outcome::Failure, &mut b.events);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.transitions().last().unwrap().3, Reason::TrialFailed);
    assert_eq!(b.breaker.next_deadline_ms(), Some(60_020));
}

#[test]
fn a_late_outcome_from_the_previous_episode_changes_nothing() {
    let mut b = given(seed_policy());
    let slow_call = b.permit(0);
    let mut b = b.calls(3, 10, Outcome::Failure).tick(30_010);
    let trial = b.permit(30_010);
    let before = b.breaker.clone();
    // The call admitted in CLOSED fails long after the breaker moved on.
    b.breaker.complete(30_020, slow_call, Outcome::Failure, &mut b.events);
    assert_eq!(b.state(), State::HalfOpen);
    assert!(matches!(b.events.last(), Some(Event::CallRecorded(c)) if c.stale));
    // Only the stale record was added: the state, counts and permits are untouched.
    let mut expected = before;
    expected.apply(b.events.last().unwrap());
    assert_eq!(b.breaker, expected);
    b.breaker.complete(30_030, trial, Outcome::Success, &mut b.events);
    assert_eq!(b.breaker.view(30_030).trial_successes, 1);
}

#[test]
fn forced_open_never_leaves_by_itself_and_disabled_never_trips() {
    let mut b = given(seed_policy()).command(0, Command::ForceOpen).tick(u64::MAX);
    assert_eq!(b.state(), State::ForcedOpen);
    assert!(matches!(b.acquire(u64::MAX), Decision::Reject(r) if r.state == State::ForcedOpen));
    let b = b
        .command(1, Command::Disable)
        .calls(1_000, 2, Outcome::Failure)
        .tick(u64::MAX);
    assert_eq!(b.state(), State::Disabled);
    assert_eq!(
        b.breaker.view(2).consecutive_failures,
        1_000,
        "outcomes are still counted"
    );
    let b = b.command(3, Command::Reset);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.breaker.view(3).consecutive_failures, 0);
}

#[test]
fn failure_count_in_a_window_trips_regardless_of_successes_and_slides() {
    let policy = Policy {
        trip: TripRule::FailureCount {
            threshold: 3,
            window_ms: 10_000,
            buckets: 10,
        },
        ..seed_policy()
    };
    // Successes in between do not reset the count.
    let b = given(policy.clone())
        .call(0, 0, Outcome::Failure)
        .calls(50, 100, Outcome::Success)
        .call(200, 0, Outcome::Failure)
        .calls(50, 300, Outcome::Success)
        .call(9_999, 0, Outcome::Failure);
    assert_eq!(b.transitions()[0].3, Reason::FailureCount);
    // The first failure's bucket (0..1000) has slid out by t = 10,000.
    let b = given(policy)
        .call(0, 0, Outcome::Failure)
        .call(1_000, 0, Outcome::Failure)
        .call(10_000, 0, Outcome::Failure);
    assert_eq!(b.state(), State::Closed);
    let b = b.call(10_001, 0, Outcome::Failure);
    assert_eq!(b.state(), State::Open);
}

#[test]
fn failure_rate_waits_for_minimum_calls_then_trips_at_the_threshold() {
    let policy = Policy {
        trip: TripRule::FailureRate {
            threshold_percent: 50.0,
            window: SlidingWindow::Count { calls: 10 },
            minimum_calls: 4,
        },
        ..seed_policy()
    };
    let b = given(policy.clone()).calls(3, 0, Outcome::Failure);
    assert_eq!(b.state(), State::Closed, "3 calls < minimum 4");
    let b = b.calls(1, 1, Outcome::Success);
    assert_eq!(b.state(), State::Open, "3 of 4 = 75% >= 50%");
    // 4 of 10 failed (40%): closed; the 5th failure makes 50%.
    let b = given(policy)
        .calls(6, 0, Outcome::Success)
        .calls(4, 1, Outcome::Failure);
    assert_eq!(b.state(), State::Closed);
    let b = b.calls(1, 2, Outcome::Failure);
    assert_eq!(b.state(), State::Open, "the oldest success slid out: 5 of 10");
    let Event::Transitioned(t) = b.events.last().unwrap() else {
        panic!()
    };
    assert_eq!((t.evidence.calls, t.evidence.failures), (Some(10), Some(5)));
    assert_eq!(t.evidence.rate_percent, Some(50.0));
}

/// `rates` reports what the trip rules judge (the figures `/metrics` exports as Resilience4j's
/// failure and slow-call rates): nothing before the minimum of calls, then the window's share,
/// sliding with time; nothing for a rule without a window.
#[test]
fn rates_are_the_judged_shares_and_none_before_the_minimum_of_calls() {
    let policy = Policy {
        trip: TripRule::FailureRate {
            threshold_percent: 50.0,
            window: SlidingWindow::Count { calls: 10 },
            minimum_calls: 4,
        },
        slow_calls: Some(SlowCallRule {
            duration_ms: 500,
            threshold_percent: 90.0,
            window: SlidingWindow::Time {
                window_ms: 10_000,
                buckets: 10,
            },
            minimum_calls: 2,
        }),
        ..seed_policy()
    };
    let b = given(policy)
        .call(0, 600, Outcome::Success)
        .call(0, 0, Outcome::Success)
        .call(0, 0, Outcome::Failure);
    let r = b.breaker.rates(1_000);
    assert_eq!(r.failure_rate_percent, None, "3 calls < minimum 4");
    assert_eq!(r.slow_call_rate_percent, Some(100.0 / 3.0), "1 of 3 slow");
    let b = b.call(0, 0, Outcome::Success);
    assert_eq!(b.breaker.rates(1_000).failure_rate_percent, Some(25.0));
    assert_eq!(b.state(), State::Closed, "25 % is under the threshold");
    // The time window slides: 11 s later its calls are gone, and so is its rate.
    assert_eq!(b.breaker.rates(11_000).slow_call_rate_percent, None);
    // Consecutive failures keep no window: no rate.
    let c = given(seed_policy()).calls(2, 0, Outcome::Failure);
    assert_eq!(c.breaker.rates(0), Default::default());
}

#[test]
fn slow_calls_trip_by_rate_and_a_slow_trial_reopens() {
    let policy = Policy {
        trip: TripRule::ConsecutiveFailures { threshold: 100 },
        slow_calls: Some(SlowCallRule {
            duration_ms: 500,
            threshold_percent: 60.0,
            window: SlidingWindow::Time {
                window_ms: 60_000,
                buckets: 60,
            },
            minimum_calls: 5,
        }),
        ..seed_policy()
    };
    let b = given(policy)
        .call(0, 499, Outcome::Success)
        .call(0, 499, Outcome::Success)
        .call(0, 500, Outcome::Success)
        .call(0, 900, Outcome::Success);
    assert_eq!(b.state(), State::Closed, "4 calls < minimum 5");
    let mut b = b.call(0, 700, Outcome::Success);
    assert_eq!(b.transitions()[0].3, Reason::SlowCallRate, "3 of 5 slow = 60%");
    let opened = b.transitions()[0].0;
    b = b.tick(opened + 30_000);
    let trial = b.permit(opened + 30_000);
    b.breaker
        .complete(opened + 30_000 + 500, trial, Outcome::Success, &mut b.events);
    assert_eq!(b.transitions().last().unwrap().3, Reason::TrialSlow);
}

#[test]
fn backoff_grows_per_reopen_up_to_the_cap_and_resets_on_close() {
    let policy = Policy {
        open: OpenPolicy {
            timeout_ms: 1_000,
            backoff_factor: 2.0,
            max_timeout_ms: Some(5_000),
            jitter_percent: 0.0,
            seed: 0,
        },
        half_open_requests: 1,
        success_threshold: 1,
        ..seed_policy()
    };
    let mut b = given(policy).calls(3, 0, Outcome::Failure);
    let mut periods = Vec::new();
    for _ in 0..5 {
        let until = b.breaker.next_deadline_ms().unwrap();
        periods.push(until - b.breaker.view(0).entered_at_ms);
        b = b.tick(until).call(until, 0, Outcome::Failure);
    }
    assert_eq!(periods, [1_000, 2_000, 4_000, 5_000, 5_000]);
    // A close resets the streak.
    let until = b.breaker.next_deadline_ms().unwrap();
    b = b
        .tick(until)
        .call(until, 0, Outcome::Success)
        .calls(3, until, Outcome::Failure);
    assert_eq!(b.breaker.next_deadline_ms(), Some(until + 1_000));
}

#[test]
fn jitter_is_deterministic_and_within_its_bounds() {
    let open = OpenPolicy {
        timeout_ms: 10_000,
        backoff_factor: 1.0,
        max_timeout_ms: None,
        jitter_percent: 20.0,
        seed: 42,
    };
    let draws: Vec<u64> = (1..200).map(|episode| open.open_ms(1, episode)).collect();
    assert!(draws.iter().all(|&ms| (8_000..=12_000).contains(&ms)), "{draws:?}");
    assert!(draws.iter().any(|&ms| ms != draws[0]), "jitter varies by episode");
    assert_eq!(draws, (1..200).map(|e| open.open_ms(1, e)).collect::<Vec<_>>());
    let other_seed = OpenPolicy { seed: 43, ..open };
    assert_ne!(draws, (1..200).map(|e| other_seed.open_ms(1, e)).collect::<Vec<_>>());
}

#[test]
fn huge_numbers_clamp_instead_of_overflowing() {
    // Timeout of 400 days (> the 365-day cap), threshold u32::MAX, a factor of 1e300.
    let policy = Policy {
        trip: TripRule::ConsecutiveFailures { threshold: u32::MAX },
        open: OpenPolicy {
            timeout_ms: 400 * 86_400_000,
            backoff_factor: 1e300,
            max_timeout_ms: None,
            jitter_percent: 99.0,
            seed: u64::MAX,
        },
        ..seed_policy()
    };
    let mut b = given(policy.clone());
    let p = b.permit(u64::MAX - 5);
    b.breaker.complete(u64::MAX, p, Outcome::Failure, &mut b.events);
    assert_eq!(b.state(), State::Closed);
    assert!(policy.open.open_ms(u32::MAX, u64::MAX) <= MAX_OPEN_MS);
    assert_eq!(
        OpenPolicy {
            jitter_percent: 0.0,
            ..policy.open
        }
        .open_ms(u32::MAX, 7),
        MAX_OPEN_MS
    );
    // Open near the end of time: the deadline saturates.
    let mut b = given(seed_policy()).calls(3, u64::MAX - 1, Outcome::Failure);
    assert_eq!(b.breaker.next_deadline_ms(), Some(u64::MAX));
    assert!(matches!(b.acquire(u64::MAX - 1), Decision::Reject(_)));
}

#[test]
fn policies_that_cannot_work_are_rejected_naming_the_knob() {
    let cases: Vec<(Policy, &str)> = vec![
        (
            Policy {
                success_threshold: 4,
                ..seed_policy()
            },
            "success_threshold",
        ),
        (Policy::consecutive(0, 1_000), "failure_threshold"),
        (Policy::consecutive(3, 0), "timeout"),
        (
            Policy {
                half_open_requests: 0,
                ..seed_policy()
            },
            "half_open_requests",
        ),
        (
            Policy {
                trip: TripRule::FailureRate {
                    threshold_percent: 0.0,
                    window: SlidingWindow::Count { calls: 10 },
                    minimum_calls: 1,
                },
                ..seed_policy()
            },
            "failure_rate",
        ),
        (
            Policy {
                trip: TripRule::FailureRate {
                    threshold_percent: 50.0,
                    window: SlidingWindow::Count { calls: 10 },
                    minimum_calls: 11,
                },
                ..seed_policy()
            },
            "minimum_calls",
        ),
        (
            Policy {
                trip: TripRule::FailureCount {
                    threshold: 2,
                    window_ms: 1_001,
                    buckets: 10,
                },
                ..seed_policy()
            },
            "failure_window",
        ),
        (
            Policy {
                open: OpenPolicy {
                    backoff_factor: 0.5,
                    ..OpenPolicy::fixed(1_000)
                },
                ..seed_policy()
            },
            "backoff_factor",
        ),
        (
            Policy {
                open: OpenPolicy {
                    jitter_percent: f64::NAN,
                    ..OpenPolicy::fixed(1_000)
                },
                ..seed_policy()
            },
            "jitter",
        ),
    ];
    for (policy, field) in cases {
        let err = Breaker::new(policy).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.to_string().starts_with(field), "{err}");
    }
}

#[test]
fn a_policy_change_keeps_half_open_progress_and_permits() {
    let mut b = given(seed_policy()).calls(3, 0, Outcome::Failure).tick(30_000);
    let p1 = b.permit(30_000);
    let p2 = b.permit(30_000);
    b.breaker.complete(30_001, p1, Outcome::Success, &mut b.events);
    b.breaker
        .set_policy(30_002, Policy::consecutive(3, 90_000), &mut b.events)
        .unwrap();
    let view = b.breaker.view(30_002);
    // Two trials were handed out (one succeeded, one still running), one success is banked.
    assert_eq!(
        (view.state, view.trials_issued, view.trial_successes),
        (State::HalfOpen, 2, 1)
    );
    b.breaker.complete(30_003, p2, Outcome::Success, &mut b.events);
    assert_eq!(b.state(), State::Closed, "the kept success plus this one make 2");
    // The new timeout applies to the next opening.
    let b = b.calls(3, 40_000, Outcome::Failure);
    assert_eq!(b.breaker.next_deadline_ms(), Some(130_000));
}

#[test]
fn a_resized_count_window_keeps_its_most_recent_calls() {
    let rate = |calls| Policy {
        trip: TripRule::FailureRate {
            threshold_percent: 50.0,
            window: SlidingWindow::Count { calls },
            minimum_calls: 4,
        },
        ..seed_policy()
    };
    // S S S F F S S: at most 40% failed, so still closed.
    let mut b = given(rate(10))
        .calls(3, 0, Outcome::Success)
        .calls(2, 0, Outcome::Failure)
        .calls(2, 0, Outcome::Success);
    assert_eq!(b.state(), State::Closed);
    b.breaker.set_policy(1, rate(4), &mut b.events).unwrap();
    let w = b.breaker.view(1).window.unwrap();
    assert_eq!((w.calls, w.failures), (4, 2), "the last 4 calls: F F S S");
    let b = b.calls(1, 2, Outcome::Success).calls(1, 2, Outcome::Failure);
    assert_eq!(b.state(), State::Closed, "S S S F: 25%");
    assert_eq!(b.calls(1, 3, Outcome::Failure).state(), State::Open, "S S F F: 50%");
}

// --- HALF_OPEN trial deadline and cancelled calls (docs/core.md) ------------------------------

fn with_deadline(wait_ms: u64) -> Policy {
    Policy {
        half_open_max_wait_ms: Some(wait_ms),
        open: OpenPolicy {
            backoff_factor: 2.0,
            ..OpenPolicy::fixed(30_000)
        },
        ..Policy::consecutive(3, 30_000)
    }
}

#[test]
fn trials_still_undecided_at_the_deadline_reopen_the_breaker_with_backoff() {
    // Given an OPEN period over at 30,000 and two trials taken at 30,000 and 30,500
    let mut b = given(with_deadline(20_000)).calls(3, 0, Outcome::Failure);
    let _t1 = b.permit(30_000);
    let _t2 = b.permit(30_500);
    assert_eq!(
        b.breaker.next_deadline_ms(),
        Some(50_000),
        "counted from the first trial out"
    );
    // When nobody decides them by the deadline
    let b = b.tick(49_999);
    assert_eq!(b.state(), State::HalfOpen);
    let b = b.tick(60_000);
    // Then HALF_OPEN went back to OPEN, stamped at the deadline, for a doubled period
    let t = b.transitions();
    assert_eq!(t[2], (50_000, State::HalfOpen, State::Open, Reason::TrialDeadline));
    assert_eq!(b.breaker.next_deadline_ms(), Some(50_000 + 60_000));
}

#[test]
fn a_half_open_breaker_with_no_trial_out_waits_for_callers_without_cycling() {
    let b = given(with_deadline(20_000))
        .calls(3, 0, Outcome::Failure)
        .tick(30_000)
        .tick(10_000_000);
    assert_eq!(b.state(), State::HalfOpen);
    assert_eq!(b.breaker.next_deadline_ms(), None);
}

#[test]
fn a_cancelled_trial_gives_its_permit_back_and_ends_the_deadline_when_it_was_the_last() {
    let mut b = given(with_deadline(20_000)).calls(3, 0, Outcome::Failure);
    let trials: Vec<Permit> = (0..3).map(|_| b.permit(30_000)).collect();
    assert!(matches!(b.acquire(30_001), Decision::Reject(r) if r.state == State::HalfOpen));
    b.breaker.complete(30_002, trials[0], Outcome::Cancelled, &mut b.events);
    assert!(
        matches!(b.acquire(30_003), Decision::Permit(p) if p.trial),
        "its permit came back"
    );
    for p in &trials[1..] {
        b.breaker.complete(30_004, *p, Outcome::Cancelled, &mut b.events);
    }
    assert_eq!(b.breaker.next_deadline_ms(), Some(50_000), "one trial still out");
    let last = trials[0]; // stands for the trial taken at 30,003: same episode, a trial
    b.breaker.complete(30_005, last, Outcome::Cancelled, &mut b.events);
    assert_eq!(b.breaker.next_deadline_ms(), None, "none out: no deadline");
    assert_eq!(b.state(), State::HalfOpen);
    let cancelled = b
        .events
        .iter()
        .filter(|e| matches!(e, Event::CallRecorded(c) if c.outcome == Outcome::Cancelled && !c.stale))
        .count();
    assert_eq!(cancelled, 4, "recorded, counted nowhere");
}

#[test]
fn a_trial_completing_after_the_deadline_is_stale() {
    let mut b = given(with_deadline(20_000)).calls(3, 0, Outcome::Failure);
    let trial = b.permit(30_000);
    b.breaker.complete(70_000, trial, Outcome::Success, &mut b.events);
    assert_eq!(b.state(), State::Open, "the deadline at 50,000 decided first");
    assert!(matches!(b.events.last(), Some(Event::CallRecorded(c)) if c.stale));
}

#[test]
fn a_trial_permit_meeting_a_closed_breaker_of_the_same_episode_counts_nowhere() {
    // A trial taken on a view a reset overtook: OPEN(1) past its period hands out trials of
    // episode 2, and a reset from OPEN(1) starts CLOSED(2).
    let orphan = Permit {
        episode: 2,
        admitted_at_ms: 30_000,
        trial: true,
    };
    let b = given(seed_policy())
        .calls(3, 0, Outcome::Failure)
        .command(30_000, Command::Reset);
    assert_eq!((b.state(), b.breaker.episode()), (State::Closed, 2));
    let mut b = b.calls(2, 30_001, Outcome::Failure);
    b.breaker.complete(30_002, orphan, Outcome::Failure, &mut b.events);
    assert!(matches!(b.events.last(), Some(Event::CallRecorded(c)) if c.stale));
    assert_eq!(
        b.breaker.view(30_002).consecutive_failures,
        2,
        "not counted in CLOSED(2)"
    );
}

#[test]
fn a_zero_or_oversized_half_open_max_wait_is_refused_naming_the_knob() {
    for wait in [0, MAX_OPEN_MS + 1] {
        let e = Breaker::new(with_deadline(wait)).unwrap_err();
        assert_eq!(e.field, "half_open_max_wait");
    }
}
