//! Command line: `ringlb run | check | stats | histogram | backend | ha`, parsed by clap, then handed to [`config`],
//! [`runtime`](crate::runtime) or [`admin`](crate::admin).
//!
//! Invariant: whatever goes wrong, the user sees one line on stderr, `ringlb: <what>`, naming
//! the culprit, and the exit status is 1; never a backtrace (a panic hook turns a bug into one
//! `ringlb: internal error: ...` line too). clap's own usage errors (an unknown flag, a missing
//! subcommand) keep clap's message and its status 2; `--help` and `--version` exit 0.
//!
//! Flag values are plain strings here and are checked by [`config::load`], so that a bad value
//! gets the same one-line treatment as a bad file, naming the flag.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use crate::admin::HistogramFormat;
use crate::config::{self, ConfigError, Overrides};
use crate::runtime::RunError;

#[derive(Debug, Parser)]
#[command(
    name = "ringlb",
    version,
    about = "A thread-per-core io_uring load balancer for MySQL and MariaDB"
)]
struct Cli {
    /// Log filter: a level (off, error, warn, info, debug, trace) or tracing directives such as
    /// "info,ringlb::health=debug". Without it, RUST_LOG is read, else "info". Logs go to stderr.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,

    /// Log line format on stderr: "text" for people, "json" for one JSON object per line
    /// (timestamp, level, target, fields.message and the event's other fields) for collectors.
    #[arg(long, global = true, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// How log events are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// One human-readable line per event; coloured only on a terminal.
    Text,
    /// One JSON object per line, never coloured.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load balancer until SIGINT or SIGTERM.
    Run(ConfigArgs),
    /// Validate the configuration and print it as `run` would use it (TOML, defaults filled in).
    Check(ConfigArgs),
    /// Print the /stats of a running ringlb as a table.
    Stats(StatsArgs),
    /// High availability: the floating IP and the peer.
    #[command(subcommand)]
    Ha(HaCommand),
    /// Drain, disable or enable a backend of a running ringlb (in every listener that has it).
    Backend(BackendArgs),
    /// Make a running ringlb re-read its configuration file (as SIGHUP does); open connections
    /// stay. A bad file is refused and the running configuration stays.
    Reload(ChangeArgs),
    /// Print the latency histograms of a running ringlb: connect, first byte and connection
    /// lifetime per backend, as percentiles in ms, an HdrHistogram log or JSON.
    Histogram(HistogramArgs),
}

#[derive(Debug, Args)]
struct HistogramArgs {
    /// Only this backend (HOST:PORT, as `ringlb stats` shows it), in every listener that has it.
    #[arg(long, value_name = "HOST:PORT")]
    backend: Option<String>,
    /// Admin endpoint of the running ringlb.
    #[arg(long, value_name = "IP:PORT", default_value = config::DEFAULT_ADMIN)]
    admin: String,
    /// text: a table of percentiles in ms; hdr: an HdrHistogram interval log (values in µs);
    /// json: count, p50, p90, p99, p99.9 and max in µs.
    #[arg(long, value_enum, default_value_t = HistogramFormatArg::Text)]
    format: HistogramFormatArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum HistogramFormatArg {
    Text,
    Hdr,
    Json,
}

#[derive(Debug, Args)]
struct BackendArgs {
    /// drain: no new connections, open ones finish; disable: the same, for maintenance;
    /// enable: back in service; promote: make it the writer of its writer pools (refused unless
    /// it is up and writable).
    #[arg(value_parser = ["drain", "disable", "enable", "promote"])]
    action: String,
    /// The backend as configured (HOST:PORT, as `ringlb stats` shows it).
    backend: String,
    #[command(flatten)]
    change: ChangeArgs,
}

/// Where a command that changes state sends it, and the token it proves itself with.
#[derive(Debug, Args)]
struct ChangeArgs {
    /// Admin endpoint of the running ringlb [default: the --config file's, else 127.0.0.1:4041].
    #[arg(long, value_name = "IP:PORT")]
    admin: Option<String>,
    /// The admin token (the running ringlb's `[global] admin_token_file`; mode 0600)
    /// [default: the --config file's].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The running ringlb's configuration file, for its admin address and token file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum HaCommand {
    /// Print this node's HA role, the VIP, the peers and the dropped heartbeats.
    Status(StatsArgs),
}

/// The configuration flags, shared by `run` and `check` so that `check` shows exactly what `run`
/// would do with the same command line. Flags override the file.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on, IP:PORT [default: 0.0.0.0:4040]. With a file, replaces the bind of
    /// its one listener.
    #[arg(long, short = 'P', visible_alias = "proxy-address", value_name = "IP:PORT")]
    listen: Option<String>,

    /// Backend server, HOST:PORT; repeat for several [default: 127.0.0.1:3306]. With a file,
    /// replaces the backends of its one listener.
    #[arg(
        long,
        short = 'b',
        visible_alias = "proxy-backend-addresses",
        value_name = "HOST:PORT"
    )]
    backend: Vec<String>,

    /// Worker threads, one per core [default: all available cores].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    workers: Option<String>,

    /// Admin HTTP endpoint (/metrics, /stats), IP:PORT [default: 127.0.0.1:4041].
    #[arg(long, value_name = "IP:PORT")]
    admin: Option<String>,

    /// I/O driver: auto (io_uring where usable, else epoll), io_uring or epoll. Replaces
    /// `[tuning] driver` [default: auto].
    #[arg(long, value_name = "DRIVER")]
    driver: Option<String>,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Admin endpoint of the running ringlb.
    #[arg(long, value_name = "IP:PORT", default_value = config::DEFAULT_ADMIN)]
    admin: String,
}

/// Everything that ends a command early. Each variant displays as one line naming the culprit.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Run(#[from] RunError),
    /// From an admin client (stats, histogram, backend, ha), which already names the admin address.
    #[error("{0}")]
    Stats(String),
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// The binary's whole `main`.
pub fn main() -> ExitCode {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors, --help and --version: clap's text and clap's status.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> Result<(), CliError> {
    init_logging(cli.log_level.as_deref(), cli.log_format)?;
    match cli.command {
        Command::Run(args) => {
            let config = load(&args)?;
            let source = match &args.config {
                Some(path) => Some(crate::reload::Source {
                    path: path.clone(),
                    overrides: overrides(&args)?,
                }),
                None => None,
            };
            crate::runtime::run(config, source)?;
            Ok(())
        }
        Command::Check(args) => {
            let config = load(&args)?;
            let source = match &args.config {
                Some(path) => format!("{} and the flags", path.display()),
                None => "the flags and the defaults".to_string(),
            };
            let (driver, fallback) = crate::dataplane::probe::choose(config.tuning.driver)
                .map_err(|e| CliError::Run(RunError::Kernel(e)))?;
            let why = fallback.map_or(String::new(), |why| {
                format!(": io_uring is not usable here ({why})")
            });
            let text = format!(
                "# ringlb check: valid. Effective configuration from {source}:\n# the workers would use the {} driver{why}\n\n{}",
                driver.name(),
                config::to_toml(&config)
            );
            print_stdout(&text)
        }
        Command::Stats(args) => {
            let admin = parse_admin(&args.admin)?;
            let table = crate::admin::stats_table(admin).map_err(CliError::Stats)?;
            let newline = if table.ends_with('\n') { "" } else { "\n" };
            print_stdout(&format!("{table}{newline}"))
        }
        Command::Backend(args) => {
            let (admin, token) = change_target(&args.change)?;
            let path = format!("/backend/{}/{}", args.backend, args.action);
            let answer: serde_json::Value =
                crate::admin::table::post_json(admin, &path, token.as_ref()).map_err(CliError::Stats)?;
            if let Some(summary) = answer["summary"].as_str() {
                return print_stdout(&format!("{summary}\n"));
            }
            let listeners = answer["listeners"].as_u64().unwrap_or(0);
            print_stdout(&format!(
                "backend {}: {} ({listeners} listener{})\n",
                args.backend,
                answer["state"].as_str().unwrap_or("?"),
                if listeners == 1 { "" } else { "s" }
            ))
        }
        Command::Reload(args) => {
            let (admin, token) = change_target(&args)?;
            let answer: serde_json::Value =
                crate::admin::table::post_json(admin, "/reload", token.as_ref()).map_err(CliError::Stats)?;
            print_stdout(&format!(
                "reloaded: {}\n",
                answer["summary"].as_str().unwrap_or("?")
            ))
        }
        Command::Histogram(args) => {
            let admin = parse_admin(&args.admin)?;
            let format = match args.format {
                HistogramFormatArg::Text => HistogramFormat::Text,
                HistogramFormatArg::Hdr => HistogramFormat::Hdr,
                HistogramFormatArg::Json => HistogramFormat::Json,
            };
            let text =
                crate::admin::histogram(admin, format, args.backend.as_deref()).map_err(CliError::Stats)?;
            print_stdout(&text)
        }
        Command::Ha(HaCommand::Status(args)) => {
            let admin = parse_admin(&args.admin)?;
            let status: crate::ha::status::HaStatus =
                crate::admin::table::fetch_json(admin, "/ha").map_err(CliError::Stats)?;
            print_stdout(&crate::ha::status::render(&status))
        }
    }
}

/// The admin address and token of a change: the flags, else the configuration file's, else the
/// default address and no token. `--token-file` replaces the file's token (which is then not
/// read). The file's token goes only to the file's own address or to loopback, never to another
/// host that `--admin` names.
fn change_target(args: &ChangeArgs) -> Result<(SocketAddr, Option<config::Secret>), ConfigError> {
    let read_token = args.token_file.is_none();
    let from_file = args
        .config
        .as_deref()
        .map(|path| config::admin_client(path, read_token))
        .transpose()?;
    let admin = match (&args.admin, &from_file) {
        (Some(text), _) => parse_admin(text)?,
        (None, Some(file)) => file.admin,
        (None, None) => parse_admin(config::DEFAULT_ADMIN)?,
    };
    let token = match (&args.token_file, from_file) {
        (Some(path), _) => Some(config::load_admin_token(path).map_err(|e| ConfigError::Flag {
            flag: "--token-file".into(),
            message: e.to_string(),
        })?),
        (None, Some(file))
            if file.token.is_some() && admin != file.admin && !admin.ip().to_canonical().is_loopback() =>
        {
            return Err(ConfigError::Flag {
                flag: "--admin".into(),
                message: format!(
                    "{admin} is not the admin address of the configuration file ({}) nor loopback, \
                     so its token is not sent there; pass that host's token with --token-file",
                    file.admin
                ),
            });
        }
        (None, Some(file)) => file.token,
        (None, None) => None,
    };
    Ok((admin, token))
}

fn load(args: &ConfigArgs) -> Result<config::Config, ConfigError> {
    config::load(args.config.as_deref(), &overrides(args)?)
}

fn overrides(args: &ConfigArgs) -> Result<Overrides, ConfigError> {
    Ok(Overrides {
        listen: args.listen.clone(),
        backends: args.backend.clone(),
        workers: args.workers.as_deref().map(parse_workers).transpose()?,
        admin: args.admin.clone(),
        driver: args
            .driver
            .as_deref()
            .map(|text| {
                config::DriverChoice::parse(text).map_err(|message| ConfigError::Flag {
                    flag: "--driver".into(),
                    message,
                })
            })
            .transpose()?,
    })
}

/// `--workers` as a count; the range (`0` included) is [`config::load`]'s to judge.
fn parse_workers(text: &str) -> Result<usize, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError::Flag {
        flag: "--workers".into(),
        message: format!("{text:?} is not a number from 1 to {}", config::MAX_WORKERS),
    })
}

fn parse_admin(text: &str) -> Result<SocketAddr, ConfigError> {
    config::parse_ip_port(text).map_err(|message| ConfigError::Flag {
        flag: "--admin".into(),
        message,
    })
}

/// Prints to stdout; a reader that went away (`ringlb check | head`) is not an error.
fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(e)),
        _ => Ok(()),
    }
}

/// Starts the tracing subscriber: `--log-level`, else RUST_LOG, else info; to stderr, as text or
/// as one JSON object per line (`--log-format`).
fn init_logging(flag: Option<&str>, format: LogFormat) -> Result<(), ConfigError> {
    let (source, directives) = match flag {
        Some(value) => ("--log-level", value.to_string()),
        None => match std::env::var("RUST_LOG") {
            Ok(value) if !value.trim().is_empty() => ("RUST_LOG", value),
            _ => ("default", "info".to_string()),
        },
    };
    let filter = log_filter(&directives).map_err(|message| ConfigError::Flag {
        flag: source.into(),
        message,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init fails only when a subscriber is already set (a test harness): keep that one.
    let _ = match format {
        LogFormat::Text => builder
            // Colour only on a terminal: logs captured by journald or a file stay plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        // No colour codes: they would end up inside the JSON strings.
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    Ok(())
}

/// Parses a log filter. A lone word must be a level: EnvFilter would take "verbose" as a target
/// name and silently log nothing.
fn log_filter(directives: &str) -> Result<EnvFilter, String> {
    let single_word = !directives.contains(['=', ',', ':', '[']);
    if single_word && directives.trim().parse::<LevelFilter>().is_err() {
        return Err(format!(
            "unknown level {directives:?}, expected off, error, warn, info, debug or trace"
        ));
    }
    EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("invalid filter {directives:?}: {e}"))
}

/// Replaces the default panic message and backtrace hint with one line. A panic is a bug in
/// ringlb, never the user's input; the line says where, so the report can be acted on.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map(|l| (l.file(), l.line()));
        eprintln!(
            "{}",
            panic_line(
                info.payload_as_str(),
                location,
                thread.name().unwrap_or("unnamed")
            )
        );
    }));
}

fn panic_line(message: Option<&str>, location: Option<(&str, u32)>, thread: &str) -> String {
    let message = one_line(message.unwrap_or("panic without a message"));
    match location {
        Some((file, line)) => {
            format!("ringlb: internal error: {message} (thread {thread}, at {file}:{line})")
        }
        None => format!("ringlb: internal error: {message} (thread {thread})"),
    }
}

/// Keeps a message on one line whatever a lower layer put in it.
fn one_line(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mysql_proxy_flag_names_are_aliases() {
        let cli = Cli::try_parse_from([
            "ringlb",
            "run",
            "--proxy-address",
            "127.0.0.1:1",
            "--proxy-backend-addresses=db-01:3306",
            "--proxy-backend-addresses",
            "db-02:3306",
            "-b",
            "db-03:3306",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("parsed as another subcommand")
        };
        assert_eq!(args.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(args.backend, ["db-01:3306", "db-02:3306", "db-03:3306"]);
    }

    #[test]
    fn log_level_is_accepted_before_and_after_the_subcommand() {
        for argv in [
            ["ringlb", "--log-level", "debug", "check"],
            ["ringlb", "check", "--log-level", "debug"],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap();
            assert_eq!(cli.log_level.as_deref(), Some("debug"));
        }
    }

    #[test]
    fn log_format_is_text_by_default_and_json_on_request_anywhere_on_the_line() {
        let cli = Cli::try_parse_from(["ringlb", "check"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        for argv in [
            ["ringlb", "--log-format", "json", "check"],
            ["ringlb", "check", "--log-format", "json"],
        ] {
            assert_eq!(Cli::try_parse_from(argv).unwrap().log_format, LogFormat::Json);
        }
    }

    #[test]
    fn workers_flag_must_be_a_number() {
        assert_eq!(parse_workers("4").unwrap(), 4);
        assert_eq!(
            parse_workers("0").unwrap(),
            0,
            "the range is config::load's to judge"
        );
        for bad in ["abc", "-1", "", "1.5"] {
            let e = parse_workers(bad).unwrap_err().to_string();
            assert!(e.starts_with("--workers: "), "{e}");
        }
    }

    #[test]
    fn log_filter_takes_levels_and_directives_but_not_stray_words() {
        for good in [
            "info",
            "DEBUG",
            "off",
            "warn,ringlb::health=debug",
            "ringlb=trace",
        ] {
            assert!(log_filter(good).is_ok(), "{good:?}");
        }
        for bad in ["verbose", "inf"] {
            assert!(log_filter(bad).unwrap_err().contains("unknown level"), "{bad:?}");
        }
    }

    #[test]
    fn panic_line_is_one_line_with_place_and_thread() {
        assert_eq!(
            panic_line(Some("boom\nsecond line"), Some(("src/x.rs", 7)), "worker-0"),
            "ringlb: internal error: boom second line (thread worker-0, at src/x.rs:7)"
        );
        assert_eq!(
            panic_line(None, None, "main"),
            "ringlb: internal error: panic without a message (thread main)"
        );
    }
}
