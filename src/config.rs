//! Configuration: the TOML file and the command-line flags, parsed raw, merged, then validated
//! into the typed [`Config`] the rest of ringlb reads. Nothing outside this module sees raw input.
//!
//! Invariant: a `Config` that exists is valid. Every listener has a bind address and at least one
//! backend, every backend address is resolved, every number is in range. Errors name the file,
//! line and key (or the flag) so a user sees one clear line.
//!
//! The work happens in three steps, each apart from I/O where it can be:
//!
//! 1. read the file (the only step that touches the file system);
//! 2. parse it into `Raw*` structs that mirror the TOML (`deny_unknown_fields`, every value
//!    [`Spanned`] so that a later complaint can name its line); a serde error is mapped back to a
//!    key path by walking the parsed document for the error's byte offset;
//! 3. `build` merges the flags over the raw file and validates into [`Config`]. Name resolution
//!    is passed in as a function, so that the validation is unit-tested without DNS.
//!
//! [`to_toml`] writes a `Config` back in the file's shape (`ringlb check`); what it writes loads
//! back to the same `Config`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Which probe the health checker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Read the server greeting (protocol 10), log in as the check user and quit cleanly.
    Mysql,
    /// A TCP connect is enough.
    Tcp,
}

/// Health-check settings shared by every backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HealthConfig {
    pub check: CheckKind,
    /// Time between two probes of one backend.
    pub interval_ms: u64,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// Bound on one probe (connect plus greeting plus login).
    pub timeout_ms: u64,
    /// User the `mysql` check logs in as (no password), so it leaves the server cleanly instead of
    /// counting as an aborted connection. Empty: read the greeting only and close.
    pub user: String,
}

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackendConfig {
    /// The address as the operator wrote it ("db-01:3306"): the label in metrics and logs.
    pub name: String,
    /// `name` resolved once at start-up.
    pub addr: SocketAddr,
    /// Relative share for least connections: active / weight is compared. At least 1.
    pub weight: u32,
}

/// One listening address with its own pool of backends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// A backend that has not answered a connect by then is skipped for the next one.
    pub connect_timeout_ms: u64,
    pub backends: Vec<BackendConfig>,
}

/// How a direction moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Small messages through provided buffers (recv + send); a direction switches to splice when
    /// a read fills its whole buffer, and back when the socket is drained.
    Auto,
    /// Every byte through splice (socket → pipe → socket), after a poll for readability.
    Splice,
}

/// Data-path knobs; each one's measured effect is in tuning.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TuningConfig {
    pub relay: RelayMode,
    /// Size of each provided buffer; a read that fills one marks its direction as bulk.
    pub buffer_bytes: u32,
    /// Provided buffers per worker (a power of two).
    pub buffers: u16,
    /// Requested size of each pooled pipe.
    pub pipe_bytes: u32,
    /// Idle pipes each worker keeps for reuse.
    pub pipes_kept: u32,
    /// Submission queue entries per worker ring (a power of two).
    pub ring_entries: u32,
    /// Cap on the kernel's io-wq workers per ring for unbounded work (splice); 0 = kernel default.
    pub iowq_max_workers: u32,
    /// Pin worker N to core N (modulo the cores this process may use).
    pub pin_workers: bool,
    /// Idle time of a kernel submission-polling thread per ring (IORING_SETUP_SQPOLL); 0 = off.
    pub sqpoll_idle_ms: u32,
}

impl Default for TuningConfig {
    fn default() -> Self {
        TuningConfig {
            relay: RelayMode::Auto,
            buffer_bytes: 16 * 1024,
            buffers: 128,
            pipe_bytes: 1024 * 1024,
            pipes_kept: 8,
            ring_entries: 4096,
            iowq_max_workers: 0,
            pin_workers: true,
            sqpoll_idle_ms: 0,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    /// Worker threads, one per core; already resolved (never 0).
    pub workers: usize,
    /// Admin HTTP endpoint (loopback by default).
    pub admin: SocketAddr,
    pub health: HealthConfig,
    pub listeners: Vec<ListenerConfig>,
    pub tuning: TuningConfig,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:4040";
pub const DEFAULT_BACKEND: &str = "127.0.0.1:3306";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4041";
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;

/// What the command line contributes; `None`/empty means "not given", so the file's value stands.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub backends: Vec<String>,
    pub workers: Option<usize>,
    pub admin: Option<String>,
}

/// A configuration error: one line, naming the culprit.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Parse or validation error located in the file.
    #[error("{path}:{line}: {key}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    /// Error in a command-line flag.
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
}

/// Health-check defaults (the schema's).
pub const DEFAULT_INTERVAL_MS: u64 = 1000;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_CHECK_USER: &str = "ringlb_check";
/// The default probe timeout, whatever the interval: a probe cut short mid-login counts in the
/// server's Aborted_connects, which the mysql check exists to avoid, so a short interval must not
/// shorten it. A probe that overruns its interval only delays that backend's next probe.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Shortest health-check interval: below it the checker would spend its time probing.
pub const MIN_INTERVAL_MS: u64 = 10;
/// Largest backend weight (the schema allows 1..=1000).
pub const MAX_WEIGHT: u32 = 1000;
/// Upper bound on worker threads, to catch a typo before it asks the kernel for that many rings.
pub const MAX_WORKERS: usize = 1024;

/// Reads the optional file, applies the flags over it and validates the result. Backend names
/// are resolved here, once, with the system resolver (IPv4 preferred).
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            load_str(path, &text, overrides, &resolve_system)
        }
        None => build(&Origin::none(), RawFile::default(), overrides, &resolve_system),
    }
}

/// Resolves a host (a name or an IP literal) and port to one address.
pub type Resolver<'r> = &'r dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// [`load`] for text already in memory; `path` only labels the errors. The resolver is a
/// parameter so tests can stand in for DNS.
pub fn load_str(
    path: &Path,
    text: &str,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Config, ConfigError> {
    let origin = Origin { path, text };
    let raw = parse(&origin)?;
    build(&origin, raw, overrides, resolve)
}

/// The system resolver: an IP literal as is, otherwise the first IPv4 address the name has, or
/// its first address when it has no IPv4 one.
pub fn resolve_system(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| "the name has no address".to_string())
}

/// Parses `IP:PORT` (IPv6 in brackets), as a bind or admin address must be.
pub fn parse_ip_port(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is not IP:PORT (for example \"127.0.0.1:4041\")"))
}

/// Splits `HOST:PORT` (`[IPv6]:PORT` for an IPv6 literal) without resolving anything. The port
/// is required and must be 1..=65535.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let malformed = || format!("{address:?} is not HOST:PORT (for example \"db-01:3306\")");
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(malformed)?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!(
                    "{address:?}: {host:?} in brackets is not an IPv6 address"
                ));
            }
            (host, after.strip_prefix(':').ok_or_else(malformed)?)
        }
        None => {
            let (host, port) = address.rsplit_once(':').ok_or_else(malformed)?;
            if host.contains(':') {
                return Err(format!(
                    "{address:?}: an IPv6 address needs brackets, as in \"[::1]:3306\""
                ));
            }
            (host, port)
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed());
    }
    // u16::from_str would also take "+80"; a port is digits only.
    let port_number = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse::<u16>().ok().filter(|&p| p != 0)
    } else {
        None
    };
    match port_number {
        Some(port) => Ok((host, port)),
        None => Err(format!(
            "{address:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}

/// Writes `config` in the shape of the configuration file, every default filled in and each
/// backend's resolved address as a comment. Loading the output gives `config` back.
pub fn to_toml(config: &Config) -> String {
    let health = &config.health;
    let check = match health.check {
        CheckKind::Mysql => "mysql",
        CheckKind::Tcp => "tcp",
    };
    let mut out = String::new();
    out.push_str("[global]\n");
    out.push_str(&format!("workers = {}\n", config.workers));
    out.push_str(&format!("admin = {}\n", toml_string(&config.admin.to_string())));
    out.push_str("\n[health]\n");
    out.push_str(&format!("check = {}\n", toml_string(check)));
    out.push_str(&format!("interval_ms = {}\n", health.interval_ms));
    out.push_str(&format!("rise = {}\n", health.rise));
    out.push_str(&format!("fall = {}\n", health.fall));
    out.push_str(&format!("timeout_ms = {}\n", health.timeout_ms));
    out.push_str(&format!("user = {}\n", toml_string(&health.user)));
    for listener in &config.listeners {
        out.push_str("\n[[listener]]\n");
        out.push_str(&format!("name = {}\n", toml_string(&listener.name)));
        out.push_str(&format!("bind = {}\n", toml_string(&listener.bind.to_string())));
        out.push_str(&format!("connect_timeout_ms = {}\n", listener.connect_timeout_ms));
        for backend in &listener.backends {
            out.push_str("[[listener.backend]]\n");
            let address = toml_string(&backend.name);
            if backend.name.parse::<SocketAddr>() == Ok(backend.addr) {
                out.push_str(&format!("address = {address}\n"));
            } else {
                out.push_str(&format!("address = {address}  # resolved to {}\n", backend.addr));
            }
            out.push_str(&format!("weight = {}\n", backend.weight));
        }
    }
    let tuning = &config.tuning;
    let relay = match tuning.relay {
        RelayMode::Auto => "auto",
        RelayMode::Splice => "splice",
    };
    out.push_str("\n[tuning]\n");
    out.push_str(&format!("relay = {}\n", toml_string(relay)));
    out.push_str(&format!("buffer_bytes = {}\n", tuning.buffer_bytes));
    out.push_str(&format!("buffers = {}\n", tuning.buffers));
    out.push_str(&format!("pipe_bytes = {}\n", tuning.pipe_bytes));
    out.push_str(&format!("pipes_kept = {}\n", tuning.pipes_kept));
    out.push_str(&format!("ring_entries = {}\n", tuning.ring_entries));
    out.push_str(&format!("iowq_max_workers = {}\n", tuning.iowq_max_workers));
    out.push_str(&format!("pin_workers = {}\n", tuning.pin_workers));
    out.push_str(&format!("sqpoll_idle_ms = {}\n", tuning.sqpoll_idle_ms));
    out
}

/// A TOML basic string. (toml's own `Value` writes multi-line literals for strings with
/// newlines, which would not fit behind `key = ` on one line with a comment after it.)
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Raw input: the file as written. Integers are read as i64 so that a negative or huge number
// gets our range message with its line, not a serde type error.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawFile {
    global: Option<RawGlobal>,
    health: Option<RawHealth>,
    tuning: Option<RawTuning>,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGlobal {
    workers: Option<Spanned<i64>>,
    admin: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawHealth {
    check: Option<Spanned<String>>,
    interval_ms: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    timeout_ms: Option<Spanned<i64>>,
    user: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTuning {
    relay: Option<Spanned<String>>,
    buffer_bytes: Option<Spanned<i64>>,
    buffers: Option<Spanned<i64>>,
    pipe_bytes: Option<Spanned<i64>>,
    pipes_kept: Option<Spanned<i64>>,
    ring_entries: Option<Spanned<i64>>,
    iowq_max_workers: Option<Spanned<i64>>,
    pin_workers: Option<bool>,
    sqpoll_idle_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawListener {
    name: Spanned<String>,
    bind: Spanned<String>,
    connect_timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
}

/// The file an error points into.
struct Origin<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Origin<'_> {
    /// Stands in when there is no file: no value carries a span then, so it is never pointed at.
    fn none() -> Origin<'static> {
        Origin {
            path: Path::new("(no file)"),
            text: "",
        }
    }

    fn at(&self, offset: usize, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::At {
            path: self.path.to_path_buf(),
            line: line_of(self.text, offset),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Where a value came from, so that a complaint about it names the right thing.
#[derive(Debug, Clone)]
enum Site {
    File {
        offset: usize,
        key: String,
    },
    Flag(&'static str),
    /// A built-in default; `what` says which.
    Default(&'static str),
}

impl Site {
    fn file<T>(value: &Spanned<T>, key: impl Into<String>) -> Site {
        Site::File {
            offset: value.span().start,
            key: key.into(),
        }
    }

    fn error(&self, origin: &Origin<'_>, message: impl Into<String>) -> ConfigError {
        match self {
            Site::File { offset, key } => origin.at(*offset, key.clone(), message),
            Site::Flag(flag) => ConfigError::Flag {
                flag: (*flag).to_string(),
                message: message.into(),
            },
            Site::Default(what) => ConfigError::Flag {
                flag: format!("default {what}"),
                message: message.into(),
            },
        }
    }
}

fn parse(origin: &Origin<'_>) -> Result<RawFile, ConfigError> {
    // Parsing the document alone first separates syntax errors from schema errors, and gives the
    // tree that maps a schema error's offset back to its key path.
    let document = DeTable::parse(origin.text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        origin.at(offset, "TOML syntax", e.message())
    })?;
    toml::from_str::<RawFile>(origin.text).map_err(|e| schema_error(origin, document.get_ref(), &e))
}

/// Turns a serde error into `file:line: key: message`.
fn schema_error(origin: &Origin<'_>, document: &DeTable<'_>, error: &toml::de::Error) -> ConfigError {
    let offset = error.span().map_or(0, |s| s.start);
    let path = key_path_at(document, offset);
    let message = error.message();
    // "missing field `x`" points at the table that lacks it: name the key itself.
    if let Some((name, _)) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split_once('`'))
    {
        let key = match &path {
            Some(table) => join_key(table, name),
            None => name.to_string(),
        };
        return origin.at(offset, key, "required key is missing");
    }
    // "unknown field `x`, expected ..." points at the key, which the path already ends with.
    let message = match message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        Some((_, rest)) => format!("unknown key{rest}"),
        None => message
            .replace("expected i64", "expected an integer")
            .replace("expected a sequence", "expected an array of tables"),
    };
    origin.at(offset, path.unwrap_or_else(|| "(top level)".into()), message)
}

/// The key path (`listener[0].backend[1].weight`) of the deepest key, value or array element
/// whose span covers `offset`.
fn key_path_at(document: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut best = None;
    search_table(document, offset, "", 0, &mut best);
    best.map(|(_, path)| path)
}

fn covers(span: Range<usize>, offset: usize) -> bool {
    // An empty span (an error at the end of a value) still covers its own position.
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn offer(best: &mut Option<(usize, String)>, depth: usize, path: &str) {
    if best.as_ref().is_none_or(|(d, _)| depth > *d) {
        *best = Some((depth, path.to_string()));
    }
}

fn search_table(
    table: &DeTable<'_>,
    offset: usize,
    prefix: &str,
    depth: usize,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table.iter() {
        let path = join_key(prefix, key.get_ref());
        if covers(key.span(), offset) || covers(value.span(), offset) {
            offer(best, depth + 1, &path);
        }
        // Always descend: an array of tables has the span of its first header only, and a
        // table's span is its header, while their contents lie further down the file.
        search_value(value.get_ref(), offset, &path, depth + 1, best);
    }
}

fn search_value(
    value: &DeValue<'_>,
    offset: usize,
    path: &str,
    depth: usize,
    best: &mut Option<(usize, String)>,
) {
    match value {
        DeValue::Table(table) => search_table(table, offset, path, depth, best),
        DeValue::Array(array) => {
            for (i, element) in array.into_iter().enumerate() {
                let element_path = format!("{path}[{i}]");
                if covers(element.span(), offset) {
                    offer(best, depth + 1, &element_path);
                }
                search_value(element.get_ref(), offset, &element_path, depth + 1, best);
            }
        }
        _ => {}
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_string() } else { toml_string(key) };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// An integer from the file, checked against `min..=max`.
fn int_in<T: TryFrom<i64>>(
    origin: &Origin<'_>,
    value: &Spanned<i64>,
    key: &str,
    min: i64,
    max: i64,
) -> Result<T, ConfigError> {
    let v = *value.get_ref();
    let out_of_range = || {
        let bound = if max == i64::MAX {
            format!("at least {min}")
        } else {
            format!("from {min} to {max}")
        };
        origin.at(
            value.span().start,
            key,
            format!("{v} is out of range: must be {bound}"),
        )
    };
    if v < min || v > max {
        return Err(out_of_range());
    }
    T::try_from(v).map_err(|_| out_of_range())
}

/// A listener being built, with where its name and bind came from.
struct Draft {
    config: ListenerConfig,
    name_site: Site,
    bind_site: Site,
}

/// Merges the flags over the raw file and validates the result.
fn build(
    origin: &Origin<'_>,
    raw: RawFile,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Config, ConfigError> {
    let global = raw.global.unwrap_or(RawGlobal {
        workers: None,
        admin: None,
    });

    let workers = match (overrides.workers, &global.workers) {
        (Some(n), _) if (1..=MAX_WORKERS).contains(&n) => n,
        (Some(n), _) => {
            return Err(Site::Flag("--workers").error(
                origin,
                format!("{n} is out of range: must be from 1 to {MAX_WORKERS}"),
            ))
        }
        (None, Some(w)) => int_in(origin, w, "global.workers", 1, MAX_WORKERS as i64)?,
        (None, None) => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS),
    };

    let (admin_text, admin_site) = match (&overrides.admin, &global.admin) {
        (Some(flag), _) => (flag.as_str(), Site::Flag("--admin")),
        (None, Some(a)) => (a.get_ref().as_str(), Site::file(a, "global.admin")),
        (None, None) => (DEFAULT_ADMIN, Site::Default("admin address")),
    };
    let admin = parse_ip_port(admin_text).map_err(|m| admin_site.error(origin, m))?;

    let health = build_health(origin, raw.health)?;
    let tuning = build_tuning(origin, raw.tuning)?;

    let mut drafts = Vec::new();
    if raw.listener.is_empty() {
        drafts.push(default_listener(origin, overrides, resolve)?);
    } else {
        let count = raw.listener.len();
        if count > 1 {
            let why = format!(
                "{} defines {count} listeners; set each listener's bind and backends in the file",
                origin.path.display()
            );
            if overrides.listen.is_some() {
                return Err(Site::Flag("--listen").error(origin, why));
            }
            if !overrides.backends.is_empty() {
                return Err(Site::Flag("--backend").error(origin, why));
            }
        }
        for (i, listener) in raw.listener.iter().enumerate() {
            drafts.push(file_listener(origin, i, listener, overrides, resolve)?);
        }
    }

    check_listeners_apart(origin, &drafts, admin, &admin_site)?;
    Ok(Config {
        workers,
        admin,
        health,
        listeners: drafts.into_iter().map(|d| d.config).collect(),
        tuning,
    })
}

fn build_tuning(origin: &Origin<'_>, raw: Option<RawTuning>) -> Result<TuningConfig, ConfigError> {
    let defaults = TuningConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let relay = match &raw.relay {
        None => defaults.relay,
        Some(r) => match r.get_ref().as_str() {
            "auto" => RelayMode::Auto,
            "splice" => RelayMode::Splice,
            other => {
                return Err(origin.at(
                    r.span().start,
                    "tuning.relay",
                    format!("unknown relay {other:?}, expected \"auto\" or \"splice\""),
                ))
            }
        },
    };
    let power_of_two = |v: &Spanned<i64>, key: &str, min: i64, max: i64| -> Result<i64, ConfigError> {
        let n: i64 = int_in(origin, v, key, min, max)?;
        if (n as u64).is_power_of_two() {
            Ok(n)
        } else {
            Err(origin.at(v.span().start, key, format!("{n} is not a power of two")))
        }
    };
    Ok(TuningConfig {
        relay,
        buffer_bytes: match &raw.buffer_bytes {
            Some(v) => int_in(origin, v, "tuning.buffer_bytes", 512, 1 << 20)?,
            None => defaults.buffer_bytes,
        },
        buffers: match &raw.buffers {
            Some(v) => power_of_two(v, "tuning.buffers", 1, 32768)? as u16,
            None => defaults.buffers,
        },
        pipe_bytes: match &raw.pipe_bytes {
            Some(v) => int_in(origin, v, "tuning.pipe_bytes", 4096, 1 << 30)?,
            None => defaults.pipe_bytes,
        },
        pipes_kept: match &raw.pipes_kept {
            Some(v) => int_in(origin, v, "tuning.pipes_kept", 0, 4096)?,
            None => defaults.pipes_kept,
        },
        ring_entries: match &raw.ring_entries {
            Some(v) => power_of_two(v, "tuning.ring_entries", 64, 32768)? as u32,
            None => defaults.ring_entries,
        },
        iowq_max_workers: match &raw.iowq_max_workers {
            Some(v) => int_in(origin, v, "tuning.iowq_max_workers", 0, 4096)?,
            None => defaults.iowq_max_workers,
        },
        pin_workers: raw.pin_workers.unwrap_or(defaults.pin_workers),
        sqpoll_idle_ms: match &raw.sqpoll_idle_ms {
            Some(v) => int_in(origin, v, "tuning.sqpoll_idle_ms", 0, 60_000)?,
            None => defaults.sqpoll_idle_ms,
        },
    })
}

fn build_health(origin: &Origin<'_>, raw: Option<RawHealth>) -> Result<HealthConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HealthConfig {
            check: CheckKind::Mysql,
            interval_ms: DEFAULT_INTERVAL_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            user: DEFAULT_CHECK_USER.to_string(),
        });
    };
    let check = match &raw.check {
        None => CheckKind::Mysql,
        Some(c) => match c.get_ref().as_str() {
            "mysql" => CheckKind::Mysql,
            "tcp" => CheckKind::Tcp,
            other => {
                return Err(origin.at(
                    c.span().start,
                    "health.check",
                    format!("unknown check {other:?}, expected \"mysql\" or \"tcp\""),
                ))
            }
        },
    };
    let interval_ms: u64 = match &raw.interval_ms {
        Some(v) => int_in(origin, v, "health.interval_ms", MIN_INTERVAL_MS as i64, i64::MAX)?,
        None => DEFAULT_INTERVAL_MS,
    };
    let rise: u32 = match &raw.rise {
        Some(v) => int_in(origin, v, "health.rise", 1, i64::from(u32::MAX))?,
        None => DEFAULT_RISE,
    };
    let fall: u32 = match &raw.fall {
        Some(v) => int_in(origin, v, "health.fall", 1, i64::from(u32::MAX))?,
        None => DEFAULT_FALL,
    };
    let timeout_ms: u64 = match &raw.timeout_ms {
        Some(v) => int_in(origin, v, "health.timeout_ms", 1, i64::MAX)?,
        None => DEFAULT_TIMEOUT_MS,
    };
    let user = match raw.user {
        None => DEFAULT_CHECK_USER.to_string(),
        Some(u) if u.get_ref().contains('\0') => {
            // The handshake response carries the user NUL-terminated.
            return Err(origin.at(u.span().start, "health.user", "must not contain a NUL character"));
        }
        Some(u) => u.into_inner(),
    };
    Ok(HealthConfig {
        check,
        interval_ms,
        rise,
        fall,
        timeout_ms,
        user,
    })
}

/// The listener made from flags (or MySQL Proxy's defaults) when the file has none.
fn default_listener(
    origin: &Origin<'_>,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Draft, ConfigError> {
    let (bind_text, bind_site) = match &overrides.listen {
        Some(listen) => (listen.as_str(), Site::Flag("--listen")),
        None => (DEFAULT_LISTEN, Site::Default("listen address")),
    };
    let bind = parse_bind(bind_text).map_err(|m| bind_site.error(origin, m))?;
    let backends = if overrides.backends.is_empty() {
        vec![backend(
            origin,
            DEFAULT_BACKEND,
            1,
            &Site::Default("backend"),
            resolve,
        )?]
    } else {
        flag_backends(origin, overrides, resolve)?
    };
    Ok(Draft {
        config: ListenerConfig {
            name: "default".to_string(),
            bind,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            backends,
        },
        name_site: Site::Default("listener name"),
        bind_site,
    })
}

fn file_listener(
    origin: &Origin<'_>,
    index: usize,
    raw: &Spanned<RawListener>,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Draft, ConfigError> {
    let key = format!("listener[{index}]");
    let listener = raw.get_ref();

    let name = listener.name.get_ref();
    let name_site = Site::file(&listener.name, format!("{key}.name"));
    if name.trim().is_empty() {
        return Err(name_site.error(origin, "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(name_site.error(origin, "must not contain control characters"));
    }

    // `--listen` and `--backend` reach here only when this is the file's one listener.
    let (bind_text, bind_site) = match &overrides.listen {
        Some(listen) => (listen.as_str(), Site::Flag("--listen")),
        None => (
            listener.bind.get_ref().as_str(),
            Site::file(&listener.bind, format!("{key}.bind")),
        ),
    };
    let bind = parse_bind(bind_text).map_err(|m| bind_site.error(origin, m))?;

    let connect_timeout_ms = match &listener.connect_timeout_ms {
        Some(v) => int_in(origin, v, &format!("{key}.connect_timeout_ms"), 1, i64::MAX)?,
        None => DEFAULT_CONNECT_TIMEOUT_MS,
    };

    let backends = if !overrides.backends.is_empty() {
        flag_backends(origin, overrides, resolve)?
    } else if listener.backend.is_empty() {
        return Err(origin.at(
            raw.span().start,
            format!("{key}.backend"),
            "a listener needs at least one [[listener.backend]]",
        ));
    } else {
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(listener.backend.len());
        for (j, b) in listener.backend.iter().enumerate() {
            let b = b.get_ref();
            let site = Site::file(&b.address, format!("{key}.backend[{j}].address"));
            let weight = match &b.weight {
                Some(w) => int_in(
                    origin,
                    w,
                    &format!("{key}.backend[{j}].weight"),
                    1,
                    i64::from(MAX_WEIGHT),
                )?,
                None => 1,
            };
            let built = backend(origin, b.address.get_ref(), weight, &site, resolve)?;
            refuse_duplicate_backend(origin, &backends, &built, &site)?;
            backends.push(built);
        }
        backends
    };

    Ok(Draft {
        config: ListenerConfig {
            name: name.clone(),
            bind,
            connect_timeout_ms,
            backends,
        },
        name_site,
        bind_site,
    })
}

fn flag_backends(
    origin: &Origin<'_>,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Vec<BackendConfig>, ConfigError> {
    let site = Site::Flag("--backend");
    let mut backends = Vec::with_capacity(overrides.backends.len());
    for address in &overrides.backends {
        let built = backend(origin, address, 1, &site, resolve)?;
        refuse_duplicate_backend(origin, &backends, &built, &site)?;
        backends.push(built);
    }
    Ok(backends)
}

fn backend(
    origin: &Origin<'_>,
    address: &str,
    weight: u32,
    site: &Site,
    resolve: Resolver<'_>,
) -> Result<BackendConfig, ConfigError> {
    let (host, port) = split_host_port(address).map_err(|m| site.error(origin, m))?;
    let addr =
        resolve(host, port).map_err(|m| site.error(origin, format!("cannot resolve {address:?}: {m}")))?;
    Ok(BackendConfig {
        name: address.to_string(),
        addr,
        weight,
    })
}

/// The same backend twice in one listener would give two metric series one label, and double
/// its share in a way `weight` says more plainly.
fn refuse_duplicate_backend(
    origin: &Origin<'_>,
    earlier: &[BackendConfig],
    backend: &BackendConfig,
    site: &Site,
) -> Result<(), ConfigError> {
    if earlier.iter().any(|b| b.name == backend.name) {
        return Err(site.error(
            origin,
            format!(
                "{:?} is listed twice for this listener (use weight for a larger share)",
                backend.name
            ),
        ));
    }
    Ok(())
}

/// A listener's bind: `IP:PORT` with a real port, since every worker binds the same one.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_ip_port(text)?;
    if addr.port() == 0 {
        return Err(format!(
            "{text:?}: port 0 is not allowed, every worker must bind the same port"
        ));
    }
    Ok(addr)
}

/// Whether two sockets cannot both listen: same port and the same address, or one of them is
/// the wildcard (`[::]` also covers IPv4, as Linux binds it dual-stack by default).
fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let wildcard_v6 = |s: SocketAddr| s.is_ipv6() && s.ip().is_unspecified();
    a.ip() == b.ip()
        || wildcard_v6(a)
        || wildcard_v6(b)
        || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

/// Names unique, binds apart from each other and from the admin endpoint. Catching an overlap
/// here names the line; at bind time only "address in use" would be left to say.
fn check_listeners_apart(
    origin: &Origin<'_>,
    drafts: &[Draft],
    admin: SocketAddr,
    admin_site: &Site,
) -> Result<(), ConfigError> {
    for (i, draft) in drafts.iter().enumerate() {
        let l = &draft.config;
        for (j, earlier) in drafts[..i].iter().enumerate() {
            if earlier.config.name == l.name {
                return Err(draft.name_site.error(
                    origin,
                    format!("{:?} is already the name of listener[{j}]", l.name),
                ));
            }
            if binds_overlap(earlier.config.bind, l.bind) {
                return Err(draft.bind_site.error(
                    origin,
                    format!(
                        "{} overlaps listener {:?} on {}",
                        l.bind, earlier.config.name, earlier.config.bind
                    ),
                ));
            }
        }
        if binds_overlap(admin, l.bind) {
            let message = format!(
                "listener {:?} on {} overlaps the admin endpoint {admin}",
                l.name, l.bind
            );
            let site = match draft.bind_site {
                Site::Default(_) => admin_site,
                _ => &draft.bind_site,
            };
            return Err(site.error(origin, message));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stands in for DNS: db-01 and db-02 exist, IP literals are themselves, nothing else does.
    fn fake_dns(host: &str, port: u16) -> Result<SocketAddr, String> {
        let ip: IpAddr = match host {
            "db-01" => [10, 0, 0, 1].into(),
            "db-02" => [10, 0, 0, 2].into(),
            other => other.parse().map_err(|_| "no such host".to_string())?,
        };
        Ok(SocketAddr::new(ip, port))
    }

    fn load_text(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        load_str(Path::new("ringlb.toml"), text, overrides, &fake_dns)
    }

    fn error_text(text: &str, overrides: &Overrides) -> String {
        match load_text(text, overrides) {
            Ok(config) => panic!("expected an error, loaded {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const TWO_LISTENERS: &str = r#"
[[listener]]
name = "rw"
bind = "0.0.0.0:4040"
[[listener.backend]]
address = "db-01:3306"

[[listener]]
name = "ro"
bind = "0.0.0.0:4042"
[[listener.backend]]
address = "db-02:3306"
"#;

    #[test]
    fn no_file_and_no_flags_give_mysql_proxy_defaults() {
        let config = build(
            &Origin::none(),
            RawFile::default(),
            &Overrides::default(),
            &fake_dns,
        )
        .unwrap();
        assert!(config.workers >= 1);
        assert_eq!(config.admin, addr(DEFAULT_ADMIN));
        assert_eq!(config.listeners.len(), 1);
        let l = &config.listeners[0];
        assert_eq!(l.name, "default");
        assert_eq!(l.bind, addr(DEFAULT_LISTEN));
        assert_eq!(l.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
        assert_eq!(l.backends.len(), 1);
        assert_eq!(l.backends[0].name, DEFAULT_BACKEND);
        assert_eq!(l.backends[0].addr, addr(DEFAULT_BACKEND));
        assert_eq!(l.backends[0].weight, 1);
        assert_eq!(
            config.health,
            HealthConfig {
                check: CheckKind::Mysql,
                interval_ms: 1000,
                rise: 2,
                fall: 3,
                timeout_ms: 1000,
                user: "ringlb_check".into(),
            }
        );
    }

    #[test]
    fn every_key_of_the_schema_is_read() {
        let config = load_text(
            r#"
[global]
workers = 3
admin = "127.0.0.1:5041"

[health]
check = "tcp"
interval_ms = 250
rise = 4
fall = 5
timeout_ms = 100
user = ""

[[listener]]
name = "rw"
bind = "10.1.1.1:3306"
connect_timeout_ms = 300
[[listener.backend]]
address = "db-01:3306"
weight = 10
[[listener.backend]]
address = "[::1]:3307"
"#,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.admin, addr("127.0.0.1:5041"));
        assert_eq!(
            config.health,
            HealthConfig {
                check: CheckKind::Tcp,
                interval_ms: 250,
                rise: 4,
                fall: 5,
                timeout_ms: 100,
                user: String::new(),
            }
        );
        assert_eq!(
            config.listeners,
            vec![ListenerConfig {
                name: "rw".into(),
                bind: addr("10.1.1.1:3306"),
                connect_timeout_ms: 300,
                backends: vec![
                    BackendConfig {
                        name: "db-01:3306".into(),
                        addr: addr("10.0.0.1:3306"),
                        weight: 10,
                    },
                    BackendConfig {
                        name: "[::1]:3307".into(),
                        addr: addr("[::1]:3307"),
                        weight: 1,
                    },
                ],
            }]
        );
    }

    #[test]
    fn probe_timeout_defaults_to_one_second_whatever_the_interval() {
        let short = load_text("[health]\ninterval_ms = 200\n", &Overrides::default()).unwrap();
        assert_eq!(short.health.timeout_ms, 1000);
        let long = load_text("[health]\ninterval_ms = 5000\n", &Overrides::default()).unwrap();
        assert_eq!(long.health.timeout_ms, 1000);
    }

    #[test]
    fn flags_make_the_default_listener_when_the_file_has_none() {
        let overrides = Overrides {
            listen: Some("127.0.0.1:5000".into()),
            backends: vec!["db-01:3306".into(), "db-02:3307".into()],
            workers: Some(2),
            admin: Some("127.0.0.1:5001".into()),
        };
        let config = load_text("[global]\nworkers = 8\n", &overrides).unwrap();
        assert_eq!(config.workers, 2, "the flag wins over the file");
        assert_eq!(config.admin, addr("127.0.0.1:5001"));
        let l = &config.listeners[0];
        assert_eq!((l.name.as_str(), l.bind), ("default", addr("127.0.0.1:5000")));
        let backends: Vec<_> = l.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
        assert_eq!(
            backends,
            vec![
                ("db-01:3306", addr("10.0.0.1:3306")),
                ("db-02:3307", addr("10.0.0.2:3307"))
            ]
        );
    }

    #[test]
    fn flags_replace_bind_and_backends_of_the_single_file_listener() {
        let file = "[[listener]]\nname = \"rw\"\nbind = \"0.0.0.0:4040\"\nconnect_timeout_ms = 50\n\
                    [[listener.backend]]\naddress = \"unknown-host:3306\"\n";
        let overrides = Overrides {
            listen: Some("127.0.0.1:6000".into()),
            backends: vec!["db-02:3306".into()],
            ..Overrides::default()
        };
        let config = load_text(file, &overrides).unwrap();
        let l = &config.listeners[0];
        assert_eq!(l.name, "rw");
        assert_eq!(l.bind, addr("127.0.0.1:6000"));
        assert_eq!(l.connect_timeout_ms, 50, "what the flags do not replace stays");
        assert_eq!(l.backends.len(), 1);
        assert_eq!(
            l.backends[0].name, "db-02:3306",
            "replaced backends are not resolved"
        );
    }

    #[test]
    fn listen_or_backend_flag_with_several_listeners_names_the_flag() {
        let listen = Overrides {
            listen: Some("127.0.0.1:6000".into()),
            ..Overrides::default()
        };
        let e = error_text(TWO_LISTENERS, &listen);
        assert!(e.starts_with("--listen: ringlb.toml defines 2 listeners"), "{e}");
        let backend = Overrides {
            backends: vec!["db-01:3306".into()],
            ..Overrides::default()
        };
        assert!(error_text(TWO_LISTENERS, &backend).starts_with("--backend: "));
        assert_eq!(
            load_text(TWO_LISTENERS, &Overrides::default())
                .unwrap()
                .listeners
                .len(),
            2
        );
    }

    #[test]
    fn unresolvable_backend_names_file_line_key_and_address() {
        let file = "[[listener]]\nname = \"rw\"\nbind = \"0.0.0.0:4040\"\n\
                    [[listener.backend]]\naddress = \"db-01:3306\"\n[[listener.backend]]\naddress = \"db-9:3306\"\n";
        assert_eq!(
            error_text(file, &Overrides::default()),
            "ringlb.toml:7: listener[0].backend[1].address: cannot resolve \"db-9:3306\": no such host"
        );
    }

    #[test]
    fn flag_errors_name_the_flag_and_the_value() {
        let cases: [(Overrides, &str); 6] = [
            (
                Overrides {
                    workers: Some(0),
                    ..Overrides::default()
                },
                "--workers: 0 is out of range",
            ),
            (
                Overrides {
                    backends: vec!["nonsense".into()],
                    ..Overrides::default()
                },
                "--backend: \"nonsense\" is not HOST:PORT",
            ),
            (
                Overrides {
                    backends: vec!["host:notaport".into()],
                    ..Overrides::default()
                },
                "--backend: \"host:notaport\": port \"notaport\" is not a number",
            ),
            (
                Overrides {
                    backends: vec!["nowhere:3306".into()],
                    ..Overrides::default()
                },
                "--backend: cannot resolve \"nowhere:3306\"",
            ),
            (
                Overrides {
                    listen: Some("localhost:4040".into()),
                    ..Overrides::default()
                },
                "--listen: \"localhost:4040\" is not IP:PORT",
            ),
            (
                Overrides {
                    admin: Some("4041".into()),
                    ..Overrides::default()
                },
                "--admin: \"4041\" is not IP:PORT",
            ),
        ];
        for (overrides, expected) in cases {
            let e = error_text("", &overrides);
            assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
        }
    }

    #[test]
    fn schema_errors_name_line_and_key_path() {
        let cases = [
            (
                "[global]\nworkerz = 2\n",
                "ringlb.toml:2: global.workerz: unknown key, expected `workers`",
            ),
            (
                "[global]\nworkers = \"2\"\n",
                "ringlb.toml:2: global.workers: invalid type: string \"2\"",
            ),
            ("bogus = 1\n", "ringlb.toml:1: bogus: unknown key"),
            (
                "global = 5\n",
                "ringlb.toml:1: global: invalid type: integer `5`, expected a table",
            ),
            (
                "[listener]\nname = \"x\"\n",
                "ringlb.toml:1: listener: invalid type",
            ),
            (
                "[[listener]]\nbind = \"0.0.0.0:1\"\n",
                "ringlb.toml:1: listener[0].name: required key is missing",
            ),
            (
                "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\n[[listener.backend]]\nweight = 2\n",
                "ringlb.toml:4: listener[0].backend[0].address: required key is missing",
            ),
            (
                "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\n\n[[listener]]\nname = \"b\"\n\
                 bind = \"0.0.0.0:2\"\nbackend = [{ address = \"db-01:1\", port = 3 }]\n",
                "ringlb.toml:8: listener[1].backend[0].port: unknown key",
            ),
            (
                "[global]\nworkers = 2\nworkers = 3\n",
                "ringlb.toml:3: TOML syntax: ",
            ),
            ("[global\nworkers = 2\n", "ringlb.toml:1: TOML syntax: "),
            ("[health]\nuser = \n", "ringlb.toml:2: TOML syntax: "),
        ];
        for (text, expected) in cases {
            let e = error_text(text, &Overrides::default());
            assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
        }
    }

    #[test]
    fn values_out_of_range_name_line_and_key() {
        let listener = |extra: &str, backend_extra: &str| {
            format!(
                "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:4040\"\n{extra}\n\
                 [[listener.backend]]\naddress = \"db-01:3306\"\n{backend_extra}\n"
            )
        };
        let cases = [
            (
                "[global]\nworkers = 0\n".to_string(),
                "ringlb.toml:2: global.workers: 0 is out of range",
            ),
            (
                "[global]\nworkers = -1\n".to_string(),
                "ringlb.toml:2: global.workers: -1 is out of range",
            ),
            (
                "[global]\nworkers = 5000\n".to_string(),
                "ringlb.toml:2: global.workers: 5000 is out of range",
            ),
            (
                "[global]\nadmin = \"localhost\"\n".to_string(),
                "ringlb.toml:2: global.admin: \"localhost\"",
            ),
            (
                "[health]\ncheck = \"http\"\n".to_string(),
                "ringlb.toml:2: health.check: unknown check \"http\"",
            ),
            (
                "[health]\ninterval_ms = 9\n".to_string(),
                "ringlb.toml:2: health.interval_ms: 9 is out of range",
            ),
            (
                "[health]\nrise = 0\n".to_string(),
                "ringlb.toml:2: health.rise: 0 is out of range",
            ),
            (
                "[health]\nfall = 0\n".to_string(),
                "ringlb.toml:2: health.fall: 0 is out of range",
            ),
            (
                "[health]\ntimeout_ms = 0\n".to_string(),
                "ringlb.toml:2: health.timeout_ms: 0 is out of range",
            ),
            (
                "[health]\nrise = 4294967296\n".to_string(),
                "ringlb.toml:2: health.rise: 4294967296 is out of range",
            ),
            (
                listener("connect_timeout_ms = 0", ""),
                "ringlb.toml:4: listener[0].connect_timeout_ms: 0 is",
            ),
            (
                listener("", "weight = 0"),
                "ringlb.toml:7: listener[0].backend[0].weight: 0 is out of range",
            ),
            (
                listener("", "weight = 1001"),
                "ringlb.toml:7: listener[0].backend[0].weight: 1001 is out of",
            ),
        ];
        for (text, expected) in cases {
            let e = error_text(&text, &Overrides::default());
            assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
        }
    }

    #[test]
    fn listener_errors_name_line_and_key() {
        let one = |name: &str, bind: &str, backend: &str| {
            format!("[[listener]]\nname = {name:?}\nbind = {bind:?}\n[[listener.backend]]\naddress = {backend:?}\n")
        };
        let cases = [
            (
                one("", "0.0.0.0:1", "db-01:1"),
                "ringlb.toml:2: listener[0].name: must not be empty",
            ),
            (
                one("a", "0.0.0.0", "db-01:1"),
                "ringlb.toml:3: listener[0].bind: \"0.0.0.0\" is not IP:PORT",
            ),
            (
                one("a", "db-01:3306", "db-01:1"),
                "ringlb.toml:3: listener[0].bind: \"db-01:3306\" is not IP",
            ),
            (
                one("a", "0.0.0.0:0", "db-01:1"),
                "ringlb.toml:3: listener[0].bind: \"0.0.0.0:0\": port 0",
            ),
            (
                one("a", "0.0.0.0:1", "db-01"),
                "ringlb.toml:5: listener[0].backend[0].address: \"db-01\" is not",
            ),
            (
                one("a", "0.0.0.0:1", "db-01:0"),
                "ringlb.toml:5: listener[0].backend[0].address: \"db-01:0\": port",
            ),
            (
                one("a", "0.0.0.0:1", ":3306"),
                "ringlb.toml:5: listener[0].backend[0].address: \":3306\" is not",
            ),
            (
                "\n\n[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\n".to_string(),
                "ringlb.toml:3: listener[0].backend: a listener needs at least one",
            ),
            (
                one("a", "0.0.0.0:1", "db-01:1") + &one("a", "0.0.0.0:2", "db-01:1"),
                "ringlb.toml:7: listener[1].name: \"a\" is already the name of listener[0]",
            ),
            (
                one("a", "0.0.0.0:1", "db-01:1") + &one("b", "0.0.0.0:1", "db-01:1"),
                "ringlb.toml:8: listener[1].bind: 0.0.0.0:1 overlaps listener \"a\"",
            ),
            (
                one("a", "10.0.0.1:1", "db-01:1") + &one("b", "0.0.0.0:1", "db-01:1"),
                "ringlb.toml:8: listener[1].bind: 0.0.0.0:1 overlaps listener \"a\" on 10.0.0.1:1",
            ),
            (
                one("a", "127.0.0.1:4041", "db-01:1"),
                "ringlb.toml:3: listener[0].bind: listener \"a\" on 127.0.0.1:4041 overlaps the admin",
            ),
            (
                one("a", "0.0.0.0:1", "db-01:1") + "[[listener.backend]]\naddress = \"db-01:1\"\n",
                "ringlb.toml:7: listener[0].backend[1].address: \"db-01:1\" is listed twice",
            ),
        ];
        for (text, expected) in cases {
            let e = error_text(&text, &Overrides::default());
            assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
        }
    }

    #[test]
    fn default_listen_address_clashing_with_the_admin_flag_names_the_flag() {
        let overrides = Overrides {
            admin: Some("0.0.0.0:4040".into()),
            ..Overrides::default()
        };
        let e = error_text("", &overrides);
        assert!(
            e.starts_with("--admin: listener \"default\" on 0.0.0.0:4040 overlaps"),
            "{e}"
        );
    }

    #[test]
    fn host_port_splitting_accepts_names_and_literals_and_rejects_the_rest() {
        assert_eq!(split_host_port("db-01:3306"), Ok(("db-01", 3306)));
        assert_eq!(split_host_port("10.0.0.1:1"), Ok(("10.0.0.1", 1)));
        assert_eq!(split_host_port("[::1]:65535"), Ok(("::1", 65535)));
        for bad in [
            "",
            "db-01",
            ":3306",
            "db-01:",
            "db-01:0",
            "db-01:65536",
            "db-01:+80",
            "db-01:-1",
            "::1:3306",
            "[::1]",
            "[::1]3306",
            "[db-01]:3306",
            "db 01:3306",
            "host:notaport",
        ] {
            assert!(split_host_port(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn binds_overlap_when_one_is_a_wildcard_on_the_same_port() {
        let overlap = |a: &str, b: &str| binds_overlap(addr(a), addr(b));
        assert!(overlap("0.0.0.0:1", "0.0.0.0:1"));
        assert!(overlap("0.0.0.0:1", "127.0.0.1:1"));
        assert!(overlap("127.0.0.1:1", "0.0.0.0:1"));
        assert!(overlap("[::]:1", "127.0.0.1:1"), "[::] is dual-stack");
        assert!(overlap("[::1]:1", "[::]:1"));
        assert!(!overlap("0.0.0.0:1", "0.0.0.0:2"));
        assert!(!overlap("127.0.0.1:1", "127.0.0.2:1"));
        assert!(
            !overlap("0.0.0.0:1", "[::1]:1"),
            "an IPv4 wildcard leaves IPv6 alone"
        );
    }

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of("", 0), 1);
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }

    #[test]
    fn effective_configuration_loads_back_to_itself() {
        let file = r#"
[global]
workers = 2
[health]
user = "odd \"user\"\\ name"
[[listener]]
name = "rw"
bind = "[::]:4040"
[[listener.backend]]
address = "db-01:3306"
weight = 7
[[listener.backend]]
address = "127.0.0.1:3307"
"#;
        let config = load_text(file, &Overrides::default()).unwrap();
        let written = to_toml(&config);
        assert!(
            written.contains("address = \"db-01:3306\"  # resolved to 10.0.0.1:3306\n"),
            "{written}"
        );
        assert!(written.contains("address = \"127.0.0.1:3307\"\n"), "{written}");
        assert_eq!(load_text(&written, &Overrides::default()).unwrap(), config);

        let defaults = load_text("", &Overrides::default()).unwrap();
        assert_eq!(
            load_text(&to_toml(&defaults), &Overrides::default()).unwrap(),
            defaults
        );
    }

    #[test]
    fn toml_strings_escape_what_toml_requires() {
        assert_eq!(toml_string("plain"), "\"plain\"");
        assert_eq!(toml_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        let parsed: toml::Table =
            toml::from_str(&format!("k = {}", toml_string("a\"b\\c\nd\u{1}é"))).unwrap();
        assert_eq!(parsed["k"].as_str(), Some("a\"b\\c\nd\u{1}é"));
    }

    #[test]
    fn missing_file_is_a_read_error_naming_the_path() {
        let e = load(Some(Path::new("/nonexistent/ringlb.toml")), &Overrides::default()).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/ringlb.toml: cannot read: "),
            "{e}"
        );
    }
}
