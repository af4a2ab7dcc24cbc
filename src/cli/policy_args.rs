//! Policy flags shared by `simulate` and `what-if`: each given flag is a layer of settings on top
//! of the service's (`--service NAME`) or the embedded defaults.

use breakerbox::config::{BreakerConfig, Config, Knobs, Millis, Source, Sourced};
use breakerbox::duration::parse_ms;

// Flags that only mean something with another one (e.g. --window without a rate rule) are
// refused by the knob layer, which names the flag; never ignored.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Use this service's effective policy (config file plus environment); flags override it.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// Failures that open the breaker: in a row, or within --failure-window [default: 5].
    #[arg(long, value_name = "N", conflicts_with = "failure_rate")]
    failure_threshold: Option<u32>,
    /// Successful trial calls that close a HALF_OPEN breaker [default: 2].
    #[arg(long, value_name = "N")]
    success_threshold: Option<u32>,
    /// How long the breaker stays OPEN before trying again [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    timeout: Option<u64>,
    /// Trial calls admitted in HALF_OPEN [default: 3].
    #[arg(long, value_name = "N")]
    half_open_requests: Option<u32>,
    /// Longest HALF_OPEN waits for its trials' outcomes before it re-opens; 0s: no deadline
    /// [default: twice the call timeout].
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    half_open_max_wait: Option<u64>,
    /// Count failures within this time window instead of in a row.
    #[arg(long, value_name = "DUR", value_parser = parse_ms, conflicts_with = "failure_rate")]
    failure_window: Option<u64>,
    /// Open when this percentage of the calls in the window failed.
    #[arg(long, value_name = "PCT")]
    failure_rate: Option<f64>,
    /// Count-based window for the rate rules: the last N calls [default: 100].
    #[arg(long, value_name = "N", conflicts_with = "window")]
    window_calls: Option<u32>,
    /// Time-based window for the rate rules.
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    window: Option<u64>,
    /// Buckets of a time-based window (its granularity is window / buckets) [default: 10].
    #[arg(long, value_name = "N")]
    window_buckets: Option<u32>,
    /// Calls the window must hold before a rate is judged [default: 10, or the window size if smaller].
    #[arg(long, value_name = "N")]
    minimum_calls: Option<u32>,
    /// Calls at least this slow count as slow.
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    slow_call_duration: Option<u64>,
    /// Open when this percentage of the calls in the window were slow [default: 100].
    #[arg(long, value_name = "PCT")]
    slow_call_rate: Option<f64>,
    /// Multiply the OPEN period by this for each re-open without a close in between [default: 1].
    #[arg(long, value_name = "F")]
    backoff_factor: Option<f64>,
    /// Cap of the grown OPEN period.
    #[arg(long, value_name = "DUR", value_parser = parse_ms)]
    max_timeout: Option<u64>,
    /// Spread each OPEN period by up to ± this percentage [default: 0].
    #[arg(long, value_name = "PCT")]
    jitter: Option<f64>,
    /// Seed of the jitter: same seed, same periods [default: 0].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
}

fn flag<T>(value: Option<T>, name: &str) -> Option<Sourced<T>> {
    value.map(|value| Sourced {
        value,
        source: Source::Flag {
            flag: format!("--{name}"),
        },
    })
}

impl PolicyArgs {
    /// The settings the given flags make.
    pub fn knobs(&self) -> Knobs {
        let ms = |v: Option<u64>| v.map(Millis);
        Knobs {
            failure_threshold: flag(self.failure_threshold, "failure-threshold"),
            success_threshold: flag(self.success_threshold, "success-threshold"),
            timeout: flag(ms(self.timeout), "timeout"),
            half_open_requests: flag(self.half_open_requests, "half-open-requests"),
            half_open_max_wait: flag(ms(self.half_open_max_wait), "half-open-max-wait"),
            failure_window: flag(ms(self.failure_window), "failure-window"),
            failure_rate: flag(self.failure_rate, "failure-rate"),
            window_calls: flag(self.window_calls, "window-calls"),
            window: flag(ms(self.window), "window"),
            window_buckets: flag(self.window_buckets, "window-buckets"),
            minimum_calls: flag(self.minimum_calls, "minimum-calls"),
            slow_call_duration: flag(ms(self.slow_call_duration), "slow-call-duration"),
            slow_call_rate: flag(self.slow_call_rate, "slow-call-rate"),
            backoff_factor: flag(self.backoff_factor, "backoff-factor"),
            max_timeout: flag(ms(self.max_timeout), "max-timeout"),
            jitter: flag(self.jitter, "jitter"),
            seed: flag(self.seed, "seed"),
            ..Knobs::default()
        }
    }

    /// The service named by `--service`, from the loaded config.
    pub fn service<'c>(&self, config: &'c Config) -> Result<Option<&'c BreakerConfig>, String> {
        self.service.as_deref().map(|s| config.require(s)).transpose()
    }
}
