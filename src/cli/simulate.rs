//! `breakerbox simulate`: the core over a JSON-lines trace on stdin.

use super::policy_args::PolicyArgs;
use super::{CliError, Global};
use breakerbox::breaker::{Event, Policy};
use breakerbox::config::{BreakerConfig, Config, Knobs, LoadOptions};
use breakerbox::simulate::{Input, Simulator, parse};
use serde::Serialize;
use std::io::{BufWriter, Read, Write};

const AFTER_HELP: &str = "\
INPUT (stdin), one JSON object per line, in non-decreasing at_ms:
  {\"at_ms\": 1000, \"outcome\": \"success\"|\"failure\"|\"timeout\"|\"ignored\", \"latency_ms\": 12}
      a call attempt; latency_ms defaults to 0
  {\"at_ms\": 5000, \"command\": \"reset\"|\"force_open\"|\"disable\"}
      an operator command
  {\"at_ms\": 0, \"policy\": {\"failure_threshold\": 5, \"timeout\": \"30000ms\", …}}
      a policy from here on, in config-file keys (as `breakerbox export` writes it); explicit
      policy flags still override its keys
  {\"at_ms\": 0, \"state\": {…}}
      the breaker's whole state (an exported window that starts mid-history)

A call is decided at at_ms and, if admitted, completes at at_ms + latency_ms; a rejected call
never runs. At equal times a timer due at t fires first, then completions due at t of calls
admitted earlier, then the lines at t in input order; a call with latency_ms 0 completes before
the next line. After the last line, running calls complete; time stops at the last completion.

OUTPUT (stdout), one JSON object per line:
  {\"at_ms\":…,\"from\":\"closed\",\"to\":\"open\",\"episode\":1,\"reason\":\"consecutive_failures\",\"evidence\":{…},…}
      one line per transition (states: closed, open, half_open, forced_open, disabled);
      OPEN -> HALF_OPEN is stamped at the instant the OPEN period ends
  {\"summary\":{\"attempts\":N,\"permitted\":N,\"rejected\":N,\"transitions\":N,\"final_state\":\"…\"}}

The whole trace is read and checked first: a bad line is reported with its number on stderr,
nothing is printed on stdout, and the exit code is 2.

POLICY: flags over the embedded defaults; with --service NAME, flags over that service's
effective policy (config file plus environment, and its schedule windows at each line's at_ms,
read as Unix epoch milliseconds).

TRIP RULES (one):
  default            --failure-threshold N failures in a row (a success resets the count)
  --failure-window   --failure-threshold N failures within the window, whatever the successes
  --failure-rate     failure percentage over --window-calls N calls or a --window DUR, once the
                     window holds --minimum-calls calls
  plus, optionally, --slow-call-duration DUR: open when --slow-call-rate percent of the calls in
  the same window are at least that slow.

DURATIONS: 30 (seconds), 30s, 1500ms, 2m, 1h, 1d.

EXAMPLES:
  printf '%s\\n' '{\"at_ms\":0,\"outcome\":\"failure\"}' '{\"at_ms\":10,\"outcome\":\"failure\"}' \\
    | breakerbox simulate --failure-threshold 2 --timeout 30s
  CALCOM_CIRCUIT_BREAKER_THRESHOLD=2 breakerbox simulate --service calcom < trace.jsonl";

/// Run the breaker over a trace of calls before deploying a policy.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP, after_help = "See --help for the trace format and an example.")]
pub struct Args {
    #[command(flatten)]
    policy: PolicyArgs,
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    summary: &'a breakerbox::simulate::Summary,
}

/// The policy in force at an instant: the service's layers (schedules included), then the
/// trace's latest policy line, then the flags.
struct PolicySource<'a> {
    service: Option<&'a BreakerConfig>,
    line: Option<Knobs>,
    flags: Knobs,
}

impl PolicySource<'_> {
    fn at(&self, at_ms: u64) -> Result<Policy, CliError> {
        let mut knobs = match self.service {
            Some(b) => b.knobs_at(at_ms),
            None => breakerbox::config::defaults(),
        };
        if let Some(line) = &self.line {
            knobs.overlay(line);
        }
        knobs.overlay(&self.flags);
        knobs
            .policy()
            .map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))
    }

    fn scheduled(&self) -> bool {
        self.service.is_some_and(|b| b.schedules().next().is_some())
    }
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let config = match &args.policy.service {
        Some(_) => Some(Config::load(&LoadOptions::from_process(global.config.clone())).map_err(CliError::config)?),
        None => None,
    };
    let mut source = PolicySource {
        service: match &config {
            Some(c) => args.policy.service(c).map_err(CliError::BadInput)?,
            None => None,
        },
        line: None,
        flags: args.policy.knobs(),
    };
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError::BadInput(format!("reading the trace from stdin: {e}")))?;
    // Checked whole before anything is printed, so a bad line never leaves half an answer.
    let inputs = parse(&text).map_err(|e| CliError::BadInput(format!("trace {e}")))?;
    let first = inputs.first().map_or(0, Input::at_ms);
    let mut sim = Simulator::new(source.at(first)?).map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))?;

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let write_err = super::stdout_error;
    let mut events = Vec::new();
    // JSON lines as they happen; with --json, one document at the end.
    let mut kept = Vec::new();
    let mut print = |events: &mut Vec<Event>, out: &mut BufWriter<_>| -> Result<(), CliError> {
        for event in events.drain(..) {
            if let Event::Transitioned(t) = event {
                if global.json {
                    kept.push(t);
                    continue;
                }
                serde_json::to_writer(&mut *out, &t).map_err(|e| CliError::Runtime(e.to_string()))?;
                out.write_all(b"\n").map_err(write_err)?;
            }
        }
        Ok(())
    };
    for input in &inputs {
        if let Input::Policy { at_ms, knobs } = input {
            source.line = Some((**knobs).clone());
            let policy = source.at(*at_ms)?;
            sim.set_policy(*at_ms, policy, &mut events)
                .map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))?;
            print(&mut events, &mut out)?;
            continue;
        }
        if source.scheduled() {
            let policy = source.at(input.at_ms())?;
            if &policy != sim.breaker().policy() {
                sim.set_policy(input.at_ms(), policy, &mut events)
                    .map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))?;
            }
        }
        sim.step(input, &mut events);
        print(&mut events, &mut out)?;
    }
    let summary = sim.finish(&mut events);
    print(&mut events, &mut out)?;
    if global.json {
        let doc = serde_json::json!({ "transitions": kept, "summary": summary });
        serde_json::to_writer(&mut out, &doc).map_err(|e| CliError::Runtime(e.to_string()))?;
        out.write_all(b"\n").map_err(write_err)?;
        return out.flush().map_err(write_err);
    }
    serde_json::to_writer(&mut out, &SummaryLine { summary: &summary })
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    out.write_all(b"\n").map_err(write_err)?;
    out.flush().map_err(write_err)
}
