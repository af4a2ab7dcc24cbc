//! `breakerbox serve`: an [`App`] — the breakers of the config, the HTTP API, the alert
//! notifier, config reload on SIGHUP, a changed file or `POST /api/config/reload`, retention and
//! the metrics projection — until Ctrl-C or SIGTERM.

use super::{CliError, Global};
use breakerbox::app::{App, AppOptions, HttpOptions};
use breakerbox::config::{Config, LoadOptions};
use std::net::SocketAddr;

/// Run the breakers and serve the HTTP API.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Tokens: CIRCUIT_BREAKER_API_TOKEN=name:token[,name:token…] (or one token). Without it,
serve prints a one-time token on start, and only on a loopback address. A token must have 32
characters or more ([api] allow_short_tokens = true allows shorter ones on loopback only).

EXAMPLE:
  CIRCUIT_BREAKER_API_TOKEN=oncall:$(openssl rand -hex 16) breakerbox serve --bind 127.0.0.1:8080"
)]
pub struct Args {
    /// Address to listen on. Anything but loopback needs a configured token.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
}

pub fn run(args: Args, global: &Global) -> Result<(), CliError> {
    let options = LoadOptions::from_process(global.config.clone());
    let config = Config::load(&options).map_err(CliError::config)?;
    let (tokens, one_time) = super::api_tokens(&options, &config.api, args.bind)?;
    // `[proxy] enabled = true`: the sidecar proxy runs beside the API.
    let proxy = if config.proxy.enabled {
        let tokens = super::proxy::proxy_tokens(&options, &config, config.proxy.bind)?;
        Some(breakerbox::proxy::ProxyOptions {
            bind: config.proxy.bind,
            tokens,
            threads: None,
        })
    } else {
        None
    };
    let (db, journal, fleet) = global.node_log(&config)?;
    let shown = super::shown_log(&db, fleet.as_ref());
    actix_web::rt::System::new().block_on(async move {
        let app_options = AppOptions {
            registry: super::registry_options(&config, "serve"),
            reload: Some(options),
            http: Some(HttpOptions {
                bind: args.bind,
                tokens,
                any_port_if_taken: false,
            }),
            proxy,
            journal,
            fleet,
            ..AppOptions::default()
        };
        let mut app = App::start(&db, &config, app_options)
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        if app.alerting() {
            let names: Vec<&str> = config.alerts.webhooks.iter().map(|w| w.name.as_str()).collect();
            println!("alerts: {} sinks ({})", names.len(), names.join(", "));
        }
        super::proxy::print_proxy(&app, &config);
        for addr in app.http_addrs() {
            println!(
                "listening on http://{addr} ({} breakers, log {})",
                app.registry().handles().count(),
                shown
            );
            super::print_dashboard(*addr, one_time.as_deref());
        }
        // Until SIGINT or SIGTERM (actix-web stops the server on either).
        let served = app.served().await;
        app.shutdown().await.map_err(|e| CliError::Runtime(e.to_string()))?;
        let dropped = super::STDERR_DROPPED.load(std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            // stderr went away at some point (`2>&1 | tee` with tee gone): say it where it can be read.
            println!("{dropped} log lines could not be written to stderr");
        }
        println!("stopped cleanly");
        served.map_err(|e| CliError::Runtime(e.to_string()))
    })
}
