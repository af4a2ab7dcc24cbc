//! `breakerbox rebuild`: the metrics projection folded again from the whole log.

use super::history::{open, runtime_err};
use super::{CliError, Global};
use breakerbox::replay;

/// Rebuild the metrics projection from the whole log (it is derived data; the log is the truth).
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLE:\n  breakerbox rebuild --db breakerbox.db")]
pub struct RebuildArgs {}

pub fn rebuild(_: RebuildArgs, global: &Global) -> Result<(), CliError> {
    // A clear error naming the file when there is no log there (never a new empty one).
    global.existing_db()?;
    let rt = super::runtime()?;
    let started = std::time::Instant::now();
    let done = rt.block_on(async {
        let journal = open(global).await?;
        let mut projection = replay::Projection::open(&journal);
        let r = projection.rebuild(&journal, 10_000).await.map_err(runtime_err);
        journal.close().await;
        r
    })?;
    let secs = started.elapsed().as_secs_f64();
    if global.json {
        println!("{}", serde_json::to_string(&done).map_err(runtime_err)?);
    } else {
        println!(
            "rebuilt the metrics projection: {} events, {} call outcomes, up to position {} in {:.2} s",
            done.events, done.calls, done.position, secs
        );
    }
    Ok(())
}
