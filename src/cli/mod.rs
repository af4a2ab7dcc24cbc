//! The `breakerbox` command line: parsing and rendering only; the work is in the library.

mod alerts;
mod audit;
mod command;
mod compact;
mod config;
mod demo;
mod export;
mod history;
mod migrate;
mod nodes;
mod policy_args;
mod proxy;
mod rebuild;
mod replay;
mod serve;
mod simulate;
mod standin;
mod status;
mod verify;
mod what_if;

use clap::{Parser, Subcommand};
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

/// breakerbox: circuit breakers whose every decision is an event in a durable log.
#[derive(Debug, Parser)]
#[command(name = "breakerbox", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every command takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Config file [default: $CIRCUIT_BREAKER_CONFIG, else config/circuit_breaker.toml if present].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The event log: a SQLite file, or the fleet's log on PostgreSQL (postgres://…, docs/fleet.md)
    /// [default: $BREAKERBOX_DB, else breakerbox.db].
    #[arg(long, global = true, value_name = "PATH|URL")]
    pub db: Option<PathBuf>,
    /// This process's node name in the fleet's log [default: $BREAKERBOX_NODE, else [journal]
    /// node, else the host name]; for the commands that read the fleet's log, the node to read
    /// [default: $BREAKERBOX_NODE, else this host's name if it shipped, else the only node].
    #[arg(long, global = true, value_name = "NAME")]
    pub node: Option<String>,
    /// With --db postgres://…: where serve, demo and proxy keep the node's own log, which they
    /// ship from [default: breakerbox-NODE.db].
    #[arg(long, global = true, value_name = "PATH")]
    pub spool: Option<PathBuf>,
}

/// What `--db` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A SQLite file.
    File(PathBuf),
    /// The fleet's log (a `postgres://` URL).
    Fleet(String),
}

/// The commands that read a node's history from the fleet's log.
const FLEET_READERS: &str = "status, audit, replay, export, what-if and verify";

impl Global {
    /// What `--db` (or `BREAKERBOX_DB`) names.
    pub fn target(&self) -> Target {
        let raw = self
            .db
            .clone()
            .or_else(|| {
                std::env::var_os("BREAKERBOX_DB")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("breakerbox.db"));
        match raw.to_str() {
            Some(s) if breakerbox::config::is_postgres_url(s) => Target::Fleet(s.to_owned()),
            _ => Target::File(raw),
        }
    }

    /// The node asked for: `--node`, else `BREAKERBOX_NODE`, else `[journal] node` (`None`: none
    /// was).
    pub fn asked_node(&self, journal: Option<&breakerbox::config::JournalConfig>) -> Result<Option<String>, CliError> {
        let (node, from) = match (
            &self.node,
            std::env::var("BREAKERBOX_NODE").ok().filter(|v| !v.is_empty()),
        ) {
            (Some(n), _) => (Some(n.clone()), "--node"),
            (None, Some(n)) => (Some(n), "BREAKERBOX_NODE"),
            (None, None) => (journal.and_then(|j| j.node.clone()), "[journal] node"),
        };
        if let Some(n) = &node {
            breakerbox::config::check_node_name(n).map_err(|e| CliError::BadInput(format!("{from}: {e}")))?;
        }
        Ok(node)
    }

    /// The `--db` file, which must exist (commands that read history never create one).
    pub fn existing_db(&self) -> Result<PathBuf, CliError> {
        match self.target() {
            Target::File(path) if path.is_file() => Ok(path),
            Target::File(path) => Err(CliError::BadInput(format!(
                "no event log at {}: pass --db PATH of an existing breakerbox database",
                path.display()
            ))),
            Target::Fleet(url) => Err(CliError::BadInput(format!(
                "--db {}: this command works on a node's own log file (--db PATH); on the fleet log only {FLEET_READERS} \
                 run yet (docs/fleet.md)",
                breakerbox::config::redacted(&url)
            ))),
        }
    }

    /// Where a long-running command (`serve`, `demo`, `proxy`) writes: the node's own log, its
    /// settings (the node's name), and where it ships them — `--db postgres://…` (the own log
    /// then at `--spool`, else `breakerbox-NODE.db`), or `[journal] url` beside a `--db` file.
    pub fn node_log(
        &self,
        config: &breakerbox::config::Config,
    ) -> Result<
        (
            PathBuf,
            breakerbox::journal::JournalOptions,
            Option<breakerbox::journal::fleet::FleetOptions>,
        ),
        CliError,
    > {
        use breakerbox::journal::fleet::FleetOptions;
        let node = self
            .asked_node(Some(&config.journal))?
            .unwrap_or_else(breakerbox::journal::host_name);
        let (path, url) = match self.target() {
            Target::File(path) => (path, config.journal.url.clone()),
            Target::Fleet(url) => (
                self.spool
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("breakerbox-{node}.db"))),
                Some(url),
            ),
        };
        let fleet = match url {
            Some(url) => {
                let mut f = FleetOptions::new(url);
                if let Some(o) = &config.journal.offline_start {
                    f.offline_start = o.parse().map_err(CliError::BadInput)?;
                }
                Some(f)
            }
            None => None,
        };
        let options = breakerbox::journal::JournalOptions {
            node: std::sync::Arc::from(node.as_str()),
            ..breakerbox::journal::JournalOptions::default()
        };
        Ok((path, options, fleet))
    }
}

/// A runtime for the commands that talk to the event log.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("starting the runtime: {e}")))
}

/// API tokens beside the config file's `[api.tokens]` (which `ApiState` takes from the
/// configuration, and again on every reload): `CIRCUIT_BREAKER_API_TOKEN` (which wins for a name
/// in both), or, with no token anywhere, a one-time token (returned, for printing) — only on a
/// loopback address: anything else must have tokens configured. A token shorter than 32
/// characters (environment or file) is refused unless `[api] allow_short_tokens` allows it and
/// `bind` is loopback.
pub fn api_tokens(
    options: &breakerbox::config::LoadOptions,
    api: &breakerbox::config::ApiConfig,
    bind: std::net::SocketAddr,
) -> Result<(Vec<breakerbox::http::auth::Token>, Option<String>), CliError> {
    use breakerbox::config::{ConfigError, MIN_TOKEN_LEN, TOKEN_VAR, check_token_lengths, tokens_from_env};
    use breakerbox::http::auth;
    let from_env = match options.env.get(TOKEN_VAR) {
        Some(v) => tokens_from_env(v).map_err(|e| CliError::BadInput(format!("{TOKEN_VAR}: {e}")))?,
        None => Vec::new(),
    };
    let mut configured = from_env.clone();
    configured.extend(api.tokens.iter().cloned());
    let problems = check_token_lengths(&configured, api.allow_short_tokens, Some(bind));
    if !problems.is_empty() {
        return Err(CliError::config(ConfigError { problems }));
    }
    let short: Vec<&str> = configured
        .iter()
        .filter(|t| t.token.expose().chars().count() < MIN_TOKEN_LEN)
        .map(|t| t.name.as_str())
        .collect();
    if !short.is_empty() {
        tracing::warn!(
            "allow_short_tokens: tokens shorter than {MIN_TOKEN_LEN} characters in use on {bind} ({})",
            short.join(", ")
        );
    }
    let tokens: Vec<auth::Token> = from_env
        .iter()
        .map(|t| auth::Token::new(t.name.clone(), &t.token))
        .collect();
    if !configured.is_empty() {
        return Ok((tokens, None));
    }
    if !bind.ip().is_loopback() {
        return Err(CliError::BadInput(format!(
            "refusing to serve on {bind} without a token ([api.tokens] in the config or CIRCUIT_BREAKER_API_TOKEN): only loopback addresses get a one-time token"
        )));
    }
    let t = one_time_token()?;
    let token = auth::Token::new("one-time", &breakerbox::config::Secret::new(t.clone()));
    Ok((vec![token], Some(t)))
}

/// Random bytes in a one-time token: as hex, 32 characters, the shortest token accepted.
const ONE_TIME_TOKEN_BYTES: usize = 16;
const _: () = assert!(2 * ONE_TIME_TOKEN_BYTES >= breakerbox::config::MIN_TOKEN_LEN);

/// 128 random bits as hex, from the operating system's generator (`getrandom`).
pub fn one_time_token() -> Result<String, CliError> {
    let mut bytes = [0u8; ONE_TIME_TOKEN_BYTES];
    getrandom::getrandom(&mut bytes).map_err(|e| {
        CliError::Runtime(format!(
            "reading the system's random source (getrandom) for a token: {e}"
        ))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Prints where the dashboard is: with the one-time token in the URL's fragment (which browsers
/// never send to the server), or asking for a configured one.
pub fn print_dashboard(addr: std::net::SocketAddr, one_time: Option<&str>) {
    match one_time {
        Some(t) => {
            println!("dashboard: http://{addr}/#token={t}");
            println!("API token (this run only; set CIRCUIT_BREAKER_API_TOKEN to choose your own): {t}");
        }
        None => println!("dashboard: http://{addr}/ (it asks for one of the CIRCUIT_BREAKER_API_TOKEN tokens)"),
    }
}

/// The breakers' settings of a long-running command (`serve`, `demo`): the writer lease held as
/// `role`, and the configuration's `[journal] outcome_hold`.
pub fn registry_options(config: &breakerbox::config::Config, role: &str) -> breakerbox::actor::RegistryOptions {
    let mut options = breakerbox::actor::RegistryOptions {
        holder: holder(role),
        ..breakerbox::actor::RegistryOptions::default()
    };
    if let Some(ms) = config.journal.outcome_hold_ms {
        options.actors.outcome_hold = std::time::Duration::from_millis(ms);
    }
    options
}

/// How a long-running command names its log: the file, and where it ships it.
pub fn shown_log(path: &std::path::Path, fleet: Option<&breakerbox::journal::fleet::FleetOptions>) -> String {
    match fleet {
        Some(f) => format!(
            "{}, shipped to {}",
            path.display(),
            breakerbox::config::redacted(&f.url)
        ),
        None => path.display().to_string(),
    }
}

/// Whether to colour what goes to stdout: a terminal, `NO_COLOR` unset or empty
/// (no-color.org), and not `TERM=dumb`.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// `text` (already padded) in the colour of a breaker state: red for rejecting everything,
/// yellow for trials, green for closed, dim for disabled; as it is without colour.
pub fn paint_state(state: breakerbox::breaker::State, text: &str, colour: bool) -> String {
    use breakerbox::breaker::State;
    if !colour {
        return text.to_owned();
    }
    let code = match state {
        State::Open | State::ForcedOpen => "31",
        State::HalfOpen => "33",
        State::Closed => "32",
        State::Disabled => "2",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// Who runs this command, for the audit trail: `USER@HOST` ([`breakerbox::journal::user_name`]).
pub fn user_at_host() -> String {
    format!(
        "{}@{}",
        breakerbox::journal::user_name(),
        breakerbox::journal::host_name()
    )
}

/// Who this process is, for the writer lease: `ROLE pid N on HOST as USER [...]`, which tells
/// another process on this host at once when this one is gone.
pub fn holder(role: &str) -> String {
    breakerbox::journal::Holder::this_process(role).to_string()
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(demo::Args),
    Simulate(simulate::Args),
    Config(config::Args),
    Compact(compact::Args),
    Audit(audit::AuditArgs),
    Replay(replay::ReplayArgs),
    Export(export::ExportArgs),
    WhatIf(what_if::WhatIfArgs),
    Rebuild(rebuild::RebuildArgs),
    Verify(verify::VerifyArgs),
    Migrate(migrate::MigrateArgs),
    Nodes(nodes::NodesArgs),
    Status(status::StatusArgs),
    Serve(serve::Args),
    Proxy(proxy::Args),
    StandIn(standin::Args),
    Alerts(alerts::Args),
    Completions(CompletionsArgs),
    /// Force a breaker OPEN: every call rejected until reset.
    ForceOpen(command::CommandArgs),
    /// Disable a breaker: every call permitted, never trips, until reset.
    Disable(command::CommandArgs),
    /// Reset a breaker to CLOSED with empty counts.
    Reset(command::CommandArgs),
}

/// Print a shell completion script.
#[derive(Debug, clap::Args)]
#[command(after_help = "EXAMPLE:
  breakerbox completions bash > ~/.local/share/bash-completion/completions/breakerbox
  breakerbox completions zsh > \"${fpath[1]}/_breakerbox\"")]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The input was wrong (a flag, a file, a trace line): exit code 2.
    BadInput(String),
    /// The input was fine but the work failed (I/O, storage): exit code 1.
    Runtime(String),
    /// Whoever read the output stopped reading (`| head`): stop quietly, exit code 0.
    StdoutClosed,
}

/// A failed write to stdout: a closed pipe ends the command quietly, anything else is a failure.
pub fn stdout_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::StdoutClosed
    } else {
        CliError::Runtime(format!("writing to stdout: {e}"))
    }
}

impl CliError {
    /// 2 for bad input, 1 for a runtime failure.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::BadInput(_) => ExitCode::from(2),
            CliError::Runtime(_) => ExitCode::from(1),
            CliError::StdoutClosed => ExitCode::SUCCESS,
        }
    }

    /// A configuration that cannot be used is bad input; every problem is listed.
    fn config(e: breakerbox::config::ConfigError) -> Self {
        CliError::BadInput(e.to_string().replace('\n', "\nerror: "))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::BadInput(m) | CliError::Runtime(m) => f.write_str(m),
            CliError::StdoutClosed => f.write_str("stdout closed"),
        }
    }
}

impl Cli {
    /// What is logged without `RUST_LOG`.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            Command::Serve(_) | Command::Proxy(_) => "warn,breakerbox=info",
            Command::Demo(_) => "error",
            _ => "warn",
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Simulate(args) => simulate::run(args, &cli.global),
        Command::Config(args) => config::run(args, &cli.global),
        Command::Compact(args) => compact::run(args, &cli.global),
        Command::Audit(args) => audit::audit(args, &cli.global),
        Command::Replay(args) => replay::replay(args, &cli.global),
        Command::Export(args) => export::export(args, &cli.global),
        Command::WhatIf(args) => what_if::what_if(args, &cli.global),
        Command::Rebuild(args) => rebuild::rebuild(args, &cli.global),
        Command::Verify(args) => verify::verify(args, &cli.global),
        Command::Migrate(args) => migrate::migrate(args, &cli.global),
        Command::Nodes(args) => nodes::nodes(args, &cli.global),
        Command::Status(args) => status::status(args, &cli.global),
        Command::Serve(args) => serve::run(args, &cli.global),
        Command::Proxy(args) => proxy::run(args, &cli.global),
        Command::StandIn(args) => standin::run(args, &cli.global),
        Command::Demo(args) => demo::run(args, &cli.global),
        Command::Alerts(args) => alerts::run(args, &cli.global),
        Command::Completions(args) => {
            use clap::CommandFactory;
            clap_complete::generate(args.shell, &mut Cli::command(), "breakerbox", &mut std::io::stdout());
            Ok(())
        }
        Command::ForceOpen(args) => command::command(args, breakerbox::breaker::Command::ForceOpen, &cli.global),
        Command::Disable(args) => command::command(args, breakerbox::breaker::Command::Disable, &cli.global),
        Command::Reset(args) => command::command(args, breakerbox::breaker::Command::Reset, &cli.global),
    }
}

/// Log lines and messages that could not be written to stderr (it was closed or full).
pub static STDERR_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes to stderr without failing: a closed or full stderr (`serve 2>&1 | tee log` with
/// `tee` gone) drops the text and counts it in [`STDERR_DROPPED`], never fails or panics the
/// request or command that wrote it (`eprintln!` panics there).
pub fn to_stderr(text: fmt::Arguments<'_>) {
    use std::io::Write;
    if std::io::stderr().lock().write_fmt(text).is_err() {
        STDERR_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The log's writer: stderr through [`to_stderr`]'s rule (every write succeeds; what could not
/// be written is counted).
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().lock().write_all(buf).is_err() {
            STDERR_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
