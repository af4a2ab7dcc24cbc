//! `breakerbox serve`: the breakers of the config, the HTTP API, the alert notifier, config
//! reload on SIGHUP, a changed file or `POST /api/config/reload`, retention and the metrics
//! projection, until Ctrl-C.

use super::{CliError, Global};
use breakerbox::actor::{Reloader, watch};
use breakerbox::alerts::{Alerting, NotifierOptions};
use breakerbox::config::{Config, LoadOptions};
use breakerbox::http::{ApiState, server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
    let db = global.db.clone();
    actix_web::rt::System::new().block_on(async move {
        let (journal, registry) = super::start_breakers(&db, &config, "serve").await?;
        // Alerts from the log, on the notifier's own thread; the breakers never wait for it.
        let alerting = Arc::new(
            Alerting::start(journal.clone(), &config.alerts, NotifierOptions::default())
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?,
        );
        if alerting.is_running() {
            let names: Vec<&str> = config.alerts.webhooks.iter().map(|w| w.name.as_str()).collect();
            println!("alerts: {} sinks ({})", names.len(), names.join(", "));
        }
        let state = ApiState::new(registry.clone(), config.clone(), tokens);
        state.settings().serving_on(args.bind);
        // One reload for SIGHUP, the file watcher and POST /api/config/reload: policies, the
        // API's budgets and tokens, the alert sinks, all from one read of the file or none.
        let reloader = Arc::new(
            Reloader::new(registry.clone(), options.clone())
                .with(state.settings())
                .with(alerting.clone()),
        );
        let watcher = watch(reloader.clone(), Duration::from_secs(2), None)
            .map_err(|e| CliError::Runtime(format!("watching for SIGHUP: {e}")))?;
        let state = actix_web::web::Data::new(state.with_reload(reloader));
        let (server, addrs) =
            server(state, args.bind).map_err(|e| CliError::Runtime(format!("binding {}: {e}", args.bind)))?;
        for addr in addrs {
            println!(
                "listening on http://{addr} ({} breakers, log {})",
                registry.handles().count(),
                db.display()
            );
            super::print_dashboard(addr, one_time.as_deref());
        }
        let result = server.await;
        watcher.abort();
        alerting.stop().await;
        registry
            .shutdown()
            .await
            .map_err(|e| CliError::Runtime(e.to_string()))?;
        journal.close().await;
        println!("stopped cleanly");
        result.map_err(|e| CliError::Runtime(e.to_string()))
    })
}
