//! `breakerbox migrate`: brings a log's schema up to date.

use super::{CliError, Global, Target};

/// Bring the log's schema up to date. A fleet's log on PostgreSQL: run it once, as the role that
/// owns the schema, before the nodes connect as a role that owns nothing (docs/fleet.md); a
/// SQLite file migrates itself whenever it is opened, and this does just that.
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLES:
  breakerbox migrate --db postgres://owner@db:5432/breakerbox
  breakerbox migrate --db breakerbox.db")]
pub struct MigrateArgs {}

pub fn migrate(_args: MigrateArgs, global: &Global) -> Result<(), CliError> {
    let rt = super::runtime()?;
    match global.target() {
        Target::Fleet(url) => {
            let shown = breakerbox::config::redacted(&url);
            let applied = rt.block_on(async {
                let log = breakerbox::journal::pg::PgLog::connect_without_migrating(
                    &url,
                    std::time::Duration::from_secs(5),
                    1,
                )
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?;
                let applied = log
                    .migrate()
                    .await
                    .map_err(|e| CliError::Runtime(format!("migrating {shown}: {e}")));
                log.close().await;
                applied
            })?;
            println!("{shown}: {applied} migrations applied; the schema is up to date");
        }
        Target::File(path) => {
            rt.block_on(async {
                let journal = breakerbox::journal::Journal::open(&path, breakerbox::journal::JournalOptions::default())
                    .await
                    .map_err(|e| CliError::Runtime(format!("opening {}: {e}", path.display())))?;
                journal.close().await;
                Ok::<(), CliError>(())
            })?;
            println!("{}: the schema is up to date", path.display());
        }
    }
    Ok(())
}
