//! The (state × input) table in `tests/fixtures/transitions.txt`, row by row.

use breakerbox::breaker::{Breaker, Command, Decision, Event, Outcome, Permit, Policy, State};

const OPEN_MS: u64 = 1_000;

struct Fixture {
    breaker: Breaker,
    /// A permit admitted in the current episode (None where no call can be admitted).
    current: Option<Permit>,
    /// A permit admitted before the last transition.
    stale: Permit,
}

fn parse_state(s: &str) -> State {
    State::ALL
        .into_iter()
        .find(|state| state.as_str() == s)
        .unwrap_or_else(|| panic!("unknown state {s:?} in the table"))
}

fn permit(b: &mut Breaker, at: u64, out: &mut Vec<Event>) -> Permit {
    match b.acquire(at, out) {
        Decision::Permit(p) => p,
        Decision::Reject(r) => panic!("setup: expected a permit at {at}, got {r:?}"),
    }
}

/// Puts a fresh breaker into `state` the way a user would get there.
fn fixture(state: State) -> Fixture {
    let mut b = Breaker::new(Policy::consecutive(3, OPEN_MS)).unwrap();
    let mut out = Vec::new();
    let stale = permit(&mut b, 0, &mut out);
    for _ in 0..3 {
        let p = permit(&mut b, 0, &mut out);
        b.complete(0, p, Outcome::Failure, &mut out);
    }
    assert_eq!(b.state(), State::Open);
    let current = match state {
        State::Closed => {
            b.command(0, Command::Reset, &mut out);
            Some(permit(&mut b, 0, &mut out))
        }
        State::Open => None,
        State::HalfOpen => {
            b.tick(OPEN_MS, &mut out);
            Some(permit(&mut b, OPEN_MS, &mut out))
        }
        State::ForcedOpen => {
            b.command(0, Command::ForceOpen, &mut out);
            None
        }
        State::Disabled => {
            b.command(0, Command::Disable, &mut out);
            Some(permit(&mut b, 0, &mut out))
        }
    };
    assert_eq!(b.state(), state, "setup");
    Fixture {
        breaker: b,
        current,
        stale,
    }
}

#[test]
fn every_state_and_input_behaves_as_the_table_says() {
    let table = include_str!("../fixtures/transitions.txt");
    let mut rows = 0;
    let mut covered = std::collections::HashSet::new();
    for (n, line) in table.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [state, input, after, reason, decision] = cols[..] else {
            panic!("line {}: expected 5 columns: {line}", n + 1);
        };
        let Fixture {
            mut breaker,
            current,
            stale,
        } = fixture(parse_state(state));
        let t = 500;
        let mut out = Vec::new();
        let mut got_decision = "-";
        let complete = |b: &mut Breaker, p: Option<Permit>, o: Outcome, out: &mut Vec<Event>| {
            let p = p.unwrap_or_else(|| panic!("line {}: no call can be admitted in {state}", n + 1));
            b.complete(t + 10, p, o, out);
        };
        let decide = |d: Decision| match d {
            Decision::Permit(p) if p.trial => "trial",
            Decision::Permit(_) => "permit",
            Decision::Reject(_) => "reject",
        };
        match input {
            "acquire" => got_decision = decide(breaker.acquire(t, &mut out)),
            "acquire_due" => got_decision = decide(breaker.acquire(OPEN_MS, &mut out)),
            "success" => complete(&mut breaker, current, Outcome::Success, &mut out),
            "failure" => complete(&mut breaker, current, Outcome::Failure, &mut out),
            "timeout" => complete(&mut breaker, current, Outcome::Timeout, &mut out),
            "ignored" => complete(&mut breaker, current, Outcome::Ignored, &mut out),
            "stale_success" => breaker.complete(t, stale, Outcome::Success, &mut out),
            "stale_failure" => breaker.complete(t, stale, Outcome::Failure, &mut out),
            "tick_early" => breaker.tick(OPEN_MS - 1, &mut out),
            "tick_due" => breaker.tick(if state == "open" { OPEN_MS } else { 3_600_000 }, &mut out),
            "reset" => breaker.command(t, Command::Reset, &mut out),
            "force_open" => breaker.command(t, Command::ForceOpen, &mut out),
            "disable" => breaker.command(t, Command::Disable, &mut out),
            other => panic!("line {}: unknown input {other:?}", n + 1),
        }
        let transitions: Vec<_> = out
            .iter()
            .filter_map(|e| match e {
                Event::Transitioned(t) => Some(t.reason.as_str()),
                _ => None,
            })
            .collect();
        let got_reason = transitions.first().copied().unwrap_or("-");
        assert_eq!(
            (breaker.state().as_str(), got_reason, got_decision),
            (after, reason, decision),
            "line {}: {state} + {input}",
            n + 1
        );
        assert!(
            transitions.len() <= 1,
            "line {}: more than one transition: {transitions:?}",
            n + 1
        );
        covered.insert((state.to_owned(), input.to_owned()));
        rows += 1;
    }
    // Every state has a row for every input that can happen in it.
    let always = [
        "acquire",
        "stale_success",
        "stale_failure",
        "tick_due",
        "reset",
        "force_open",
        "disable",
    ];
    let admitted = ["success", "failure", "timeout", "ignored"];
    for state in State::ALL {
        let s = state.as_str();
        let can_admit = !matches!(state, State::Open | State::ForcedOpen);
        for input in always.iter().chain(admitted.iter().filter(|_| can_admit)) {
            assert!(
                covered.contains(&(s.to_owned(), input.to_string())),
                "no row for {s} + {input}"
            );
        }
    }
    assert!(rows >= 49, "only {rows} rows");
}
