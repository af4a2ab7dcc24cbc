//! `breakerbox proxy`: the sidecar. The configuration's breakers, their log, and an HTTP proxy
//! in front of every service with an `upstream` (`docs/sidecar.md`); the HTTP API and
//! dashboard too with `--api`. Until Ctrl-C or SIGTERM.

use super::{CliError, Global};
use breakerbox::app::{App, AppOptions, HttpOptions};
use breakerbox::config::{Config, LoadOptions};
use breakerbox::proxy::ProxyOptions;
use std::net::SocketAddr;

/// Run a local HTTP proxy in front of each service's upstream, through its breaker.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Requests to http://BIND/SERVICE/PATH go to SERVICE's upstream + PATH through its breaker.

EXAMPLE:
  # in config/circuit_breaker.toml: [services.stripe] upstream = \"https://api.stripe.com\"
  breakerbox proxy --bind 127.0.0.1:9000
  curl http://127.0.0.1:9000/stripe/v1/charges -u sk_test_...:

A rejected request gets 503 with Retry-After and X-Breaker-State (or the route's fallback).
Anything but a loopback address needs tokens (CIRCUIT_BREAKER_API_TOKEN or [api.tokens]);
clients then send Proxy-Authorization: Bearer TOKEN. See docs/sidecar.md."
)]
pub struct Args {
    /// Address to listen on [default: [proxy] bind, else 127.0.0.1:9000].
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Serve the HTTP API and dashboard on this address too.
    #[arg(long, value_name = "ADDR")]
    api: Option<SocketAddr>,
    /// The proxy's worker threads [default: one per core].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

/// The tokens a proxy on `bind` checks: none on loopback; otherwise the environment's and the
/// file's, which must exist.
pub fn proxy_tokens(
    options: &LoadOptions,
    config: &Config,
    bind: SocketAddr,
) -> Result<Vec<breakerbox::config::Secret>, CliError> {
    use breakerbox::config::{ConfigError, TOKEN_VAR, check_token_lengths, tokens_from_env};
    if bind.ip().is_loopback() {
        return Ok(Vec::new());
    }
    let mut tokens = match options.env.get(TOKEN_VAR) {
        Some(v) => tokens_from_env(v).map_err(|e| CliError::BadInput(format!("{TOKEN_VAR}: {e}")))?,
        None => Vec::new(),
    };
    tokens.extend(config.api.tokens.iter().cloned());
    let problems = check_token_lengths(&tokens, config.api.allow_short_tokens, Some(bind));
    if !problems.is_empty() {
        return Err(CliError::config(ConfigError { problems }));
    }
    if tokens.is_empty() {
        return Err(CliError::BadInput(format!(
            "refusing to proxy on {bind} without tokens: set CIRCUIT_BREAKER_API_TOKEN or [api.tokens] (clients send Proxy-Authorization: Bearer TOKEN), or bind 127.0.0.1"
        )));
    }
    Ok(tokens.into_iter().map(|t| t.token).collect())
}

/// Prints where the proxy listens and where each path goes.
pub fn print_proxy(app: &App, config: &Config) {
    for (addr, service) in app.proxy_addrs() {
        match service {
            None => {
                let routes: Vec<String> = config
                    .upstreams
                    .iter()
                    .map(|u| format!("/{}/… → {}", u.service, u.url))
                    .collect();
                println!("proxy listening on http://{addr} ({})", routes.join(", "));
            }
            Some(s) => {
                let url = config.upstream(s).map_or("", |u| u.url.as_str());
                println!("proxy for {s} listening on http://{addr} (/… → {url})");
            }
        }
    }
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let options = LoadOptions::from_process(global.config.clone());
    let config = Config::load(&options).map_err(CliError::config)?;
    if config.upstreams.is_empty() {
        return Err(CliError::BadInput(format!(
            "no service in {} has an upstream: add one, e.g. [services.stripe] upstream = \"https://api.stripe.com\"",
            config
                .file
                .as_ref()
                .map_or("the configuration".to_owned(), |p| p.display().to_string())
        )));
    }
    let bind = args.bind.unwrap_or(config.proxy.bind);
    let tokens = proxy_tokens(&options, &config, bind)?;
    let http = match args.api {
        Some(api) => {
            let (tokens, one_time) = super::api_tokens(&options, &config.api, api)?;
            Some((api, tokens, one_time))
        }
        None => None,
    };
    let (db, journal, fleet) = global.node_log(&config)?;
    let shown = super::shown_log(&db, fleet.as_ref());
    actix_web::rt::System::new().block_on(async move {
        let one_time = http.as_ref().and_then(|(_, _, t)| t.clone());
        let app_options = AppOptions {
            registry: super::registry_options(&config, "proxy"),
            reload: Some(options),
            http: http.map(|(bind, tokens, _)| HttpOptions {
                bind,
                tokens,
                any_port_if_taken: false,
            }),
            proxy: Some(ProxyOptions {
                bind,
                tokens,
                threads: args.threads.map(usize::from),
            }),
            journal,
            fleet,
            ..AppOptions::default()
        };
        let mut app = App::start(&db, &config, app_options)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        print_proxy(&app, &config);
        for addr in app.http_addrs() {
            println!("API listening on http://{addr}");
            super::print_dashboard(*addr, one_time.as_deref());
        }
        println!("log {shown}");
        let served = app.served().await;
        app.shutdown().await.map_err(|e| CliError::Runtime(e.to_string()))?;
        println!("stopped cleanly");
        served.map_err(|e| CliError::Runtime(e.to_string()))
    })
}
