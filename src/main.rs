//! The `breakerbox` binary: a thin shell over the library.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            // Bad input is one line naming the problem (clap's own first line), exit code 2.
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .collect();
            cli::to_stderr(format_args!("{}\n", line.join(" ")));
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    logging(&cli);
    match cli::run(cli) {
        Ok(()) | Err(cli::CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            cli::to_stderr(format_args!("error: {e}\n"));
            e.exit_code()
        }
    }
}

/// Logs to stderr: `RUST_LOG` if set (e.g. `RUST_LOG=breakerbox=debug`), else warnings, plus
/// breakerbox's own info lines for `serve`; `demo` prints its own line per transition, so it
/// logs errors only.
fn logging(cli: &cli::Cli) {
    let default = cli.default_log_filter();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| cli::Stderr)
        // A closed or full stderr drops log lines (counted); it never fails, or panics, the
        // request or command that logged (tracing-subscriber would `eprintln!` the error).
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
