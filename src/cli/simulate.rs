//! `breakerbox simulate`: the core over a JSON-lines trace on stdin.

use super::CliError;
use breakerbox::breaker::{Event, OpenPolicy, Policy, SlidingWindow, SlowCallRule, TripRule};
use breakerbox::duration::parse_ms;
use breakerbox::simulate::{Simulator, parse};
use serde::Serialize;
use std::io::{BufWriter, Read, Write};

const AFTER_HELP: &str = "\
INPUT (stdin), one JSON object per line, in non-decreasing at_ms:
  {\"at_ms\": 1000, \"outcome\": \"success\"|\"failure\"|\"timeout\"|\"ignored\", \"latency_ms\": 12}
      a call attempt; latency_ms defaults to 0
  {\"at_ms\": 5000, \"command\": \"reset\"|\"force_open\"|\"disable\"}
      an operator command

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

TRIP RULES (one):
  default            --failure-threshold N failures in a row (a success resets the count)
  --failure-window   --failure-threshold N failures within the window, whatever the successes
  --failure-rate     failure percentage over --window-calls N calls or a --window DUR, once the
                     window holds --minimum-calls calls
  plus, optionally, --slow-call-duration DUR: open when --slow-call-rate percent of the calls in
  the same window are at least that slow.

DURATIONS: 30 (seconds), 30s, 1500ms, 2m, 1h, 1d.

EXAMPLE:
  printf '%s\\n' '{\"at_ms\":0,\"outcome\":\"failure\"}' '{\"at_ms\":10,\"outcome\":\"failure\"}' \\
    | breakerbox simulate --failure-threshold 2 --timeout 30s";

/// Run the breaker over a trace of calls before deploying a policy.
// Flags that only mean something with another one are refused without it, never ignored.
#[derive(Debug, clap::Args)]
#[command(after_long_help = AFTER_HELP, after_help = "See --help for the trace format and an example.")]
#[command(group = clap::ArgGroup::new("rate_rules").args(["failure_rate", "slow_call_duration"]).multiple(true))]
#[command(group = clap::ArgGroup::new("time_windows").args(["failure_window", "window"]).multiple(true))]
pub struct Args {
    /// Failures that open the breaker: in a row, or within --failure-window [default: 5].
    #[arg(long, value_name = "N", conflicts_with = "failure_rate")]
    failure_threshold: Option<u32>,
    /// Successful trial calls that close a HALF_OPEN breaker.
    #[arg(long, value_name = "N", default_value_t = 2)]
    success_threshold: u32,
    /// How long the breaker stays OPEN before trying again.
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_ms)]
    timeout: u64,
    /// Trial calls admitted in HALF_OPEN.
    #[arg(long, value_name = "N", default_value_t = 3)]
    half_open_requests: u32,

    /// Count failures within this time window instead of in a row.
    #[arg(long, value_name = "DUR", value_parser = parse_ms, conflicts_with = "failure_rate")]
    failure_window: Option<u64>,
    /// Open when this percentage of the calls in the window failed.
    #[arg(long, value_name = "PCT")]
    failure_rate: Option<f64>,
    /// Count-based window for the rate rules: the last N calls [default: 100].
    #[arg(long, value_name = "N", conflicts_with = "window", requires = "rate_rules")]
    window_calls: Option<u32>,
    /// Time-based window for the rate rules.
    #[arg(long, value_name = "DUR", value_parser = parse_ms, requires = "rate_rules")]
    window: Option<u64>,
    /// Buckets of a time-based window (its granularity is window / buckets) [default: 10].
    #[arg(long, value_name = "N", requires = "time_windows")]
    window_buckets: Option<u32>,
    /// Calls the window must hold before a rate is judged [default: 10, or the window size if smaller].
    #[arg(long, value_name = "N", requires = "rate_rules")]
    minimum_calls: Option<u32>,
    /// Calls at least this slow count as slow.
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    slow_call_duration: Option<u64>,
    /// Open when this percentage of the calls in the window were slow [default: 100].
    #[arg(long, value_name = "PCT", requires = "slow_call_duration")]
    slow_call_rate: Option<f64>,

    /// Multiply the OPEN period by this for each re-open without a close in between.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    backoff_factor: f64,
    /// Cap of the grown OPEN period.
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    max_timeout: Option<u64>,
    /// Spread each OPEN period by up to ± this percentage.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    jitter: f64,
    /// Seed of the jitter (same seed, same periods).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
}

impl Args {
    fn policy(&self) -> Policy {
        let window = match (self.window, self.window_calls) {
            (Some(window_ms), _) => SlidingWindow::Time {
                window_ms,
                buckets: self.window_buckets.unwrap_or(10),
            },
            (None, calls) => SlidingWindow::Count {
                calls: calls.unwrap_or(100),
            },
        };
        let minimum_calls = self.minimum_calls.unwrap_or(match window {
            SlidingWindow::Count { calls } => calls.min(10),
            SlidingWindow::Time { .. } => 10,
        });
        let trip = match (self.failure_rate, self.failure_window) {
            (Some(threshold_percent), _) => TripRule::FailureRate {
                threshold_percent,
                window,
                minimum_calls,
            },
            (None, Some(window_ms)) => TripRule::FailureCount {
                threshold: self.failure_threshold.unwrap_or(5),
                window_ms,
                buckets: self.window_buckets.unwrap_or(10),
            },
            (None, None) => TripRule::ConsecutiveFailures {
                threshold: self.failure_threshold.unwrap_or(5),
            },
        };
        Policy {
            trip,
            slow_calls: self.slow_call_duration.map(|duration_ms| SlowCallRule {
                duration_ms,
                threshold_percent: self.slow_call_rate.unwrap_or(100.0),
                window,
                minimum_calls,
            }),
            open: OpenPolicy {
                timeout_ms: self.timeout,
                backoff_factor: self.backoff_factor,
                max_timeout_ms: self.max_timeout,
                jitter_percent: self.jitter,
                seed: self.seed,
            },
            half_open_requests: self.half_open_requests,
            success_threshold: self.success_threshold,
        }
    }
}

#[derive(Serialize)]
struct SummaryLine<'a> {
    summary: &'a breakerbox::simulate::Summary,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let policy = args.policy();
    let mut sim = Simulator::new(policy).map_err(|e| CliError::BadInput(format!("invalid policy: {e}")))?;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| CliError::BadInput(format!("reading the trace from stdin: {e}")))?;
    // Checked whole before anything is printed, so a bad line never leaves half an answer.
    let inputs = parse(&text).map_err(|e| CliError::BadInput(format!("trace {e}")))?;

    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let write_err = |e: std::io::Error| CliError::Runtime(format!("writing to stdout: {e}"));
    let mut events = Vec::new();
    let print = |events: &mut Vec<Event>, out: &mut BufWriter<_>| -> Result<(), CliError> {
        for event in events.drain(..) {
            if let Event::Transitioned(t) = event {
                serde_json::to_writer(&mut *out, &t).map_err(|e| CliError::Runtime(e.to_string()))?;
                out.write_all(b"\n").map_err(write_err)?;
            }
        }
        Ok(())
    };
    for input in &inputs {
        sim.step(input, &mut events);
        print(&mut events, &mut out)?;
    }
    let summary = sim.finish(&mut events);
    print(&mut events, &mut out)?;
    serde_json::to_writer(&mut out, &SummaryLine { summary: &summary })
        .map_err(|e| CliError::Runtime(e.to_string()))?;
    out.write_all(b"\n").map_err(write_err)?;
    out.flush().map_err(write_err)
}
