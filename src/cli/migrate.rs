//! `breakerbox migrate`: brings a log's schema up to date.

use super::{CliError, Global, Target};

/// Bring the log's schema up to date. A fleet's log on PostgreSQL: run it once, as the role that
/// owns the schema, before the nodes connect as a role that owns nothing (docs/fleet.md); a
/// SQLite file migrates itself whenever it is opened, and this does just that.
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLES:
  breakerbox migrate --db postgres://owner@db:5432/breakerbox
  breakerbox migrate --db postgres://owner@db:5432/breakerbox --new-epoch   # after pg_dump + restore
  breakerbox migrate --db breakerbox.db")]
pub struct MigrateArgs {
    /// After a logical restore of a fleet's log (pg_dump and restore: transaction ids start
    /// again): start a new epoch, so the restored rows are final for every reader and new rows
    /// follow them (docs/fleet.md, "Epochs").
    #[arg(long)]
    new_epoch: bool,
}

pub fn migrate(args: MigrateArgs, global: &Global) -> Result<(), CliError> {
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
                let done = async {
                    let applied = log
                        .migrate()
                        .await
                        .map_err(|e| CliError::Runtime(format!("migrating {shown}: {e}")))?;
                    let epoch = if args.new_epoch {
                        Some(
                            log.bump_epoch()
                                .await
                                .map_err(|e| CliError::Runtime(format!("starting a new epoch on {shown}: {e}")))?,
                        )
                    } else {
                        None
                    };
                    Ok::<_, CliError>((applied, epoch))
                }
                .await;
                log.close().await;
                done
            })?;
            println!("{shown}: {} migrations applied; the schema is up to date", applied.0);
            if let Some(epoch) = applied.1 {
                println!("{shown}: epoch {epoch} begins; every row before it is final");
            }
        }
        Target::File(path) => {
            if args.new_epoch {
                return Err(CliError::BadInput(format!(
                    "--new-epoch is for a fleet's log restored from a dump (--db postgres://…); {} is a file",
                    path.display()
                )));
            }
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
