//! `breakerbox stand-in`: one of the demo's stand-in upstreams on its own, to try the sidecar
//! against or to benchmark it (`benches/proxy.sh`).

use super::{CliError, Global};
use breakerbox::demo::{Script, start_upstream_on};
use std::net::SocketAddr;

/// Run a stand-in upstream (echo, bytes, status, headers, delay; see docs/sidecar.md).
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLE:
  breakerbox stand-in --bind 127.0.0.1:8081 &
  curl -si http://127.0.0.1:8081/status/503?retry_after=5")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    bind: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

pub fn run(args: Args, _global: &Global) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("starting the runtime: {e}")))?;
    runtime.block_on(async {
        // Healthy for years: the demo's script phases are fractions of its length.
        let script = Script {
            length_ms: 10 * 365 * 86_400_000,
        };
        let addr = start_upstream_on(args.bind, "stand-in", script, std::time::Instant::now())
            .await
            .map_err(|e| CliError::Runtime(format!("binding {}: {e}", args.bind)))?;
        println!("stand-in listening on http://{addr}");
        let _ = tokio::signal::ctrl_c().await;
        Ok(())
    })
}
