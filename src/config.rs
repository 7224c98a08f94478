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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::proxy_protocol::ProxyVersion;

/// Which probe the health checker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Read the server greeting (protocol 10), log in as the check user and quit cleanly.
    Mysql,
    /// A TCP connect is enough.
    Tcp,
}

/// Whether the `mysql` check uses TLS (`[health] tls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Never: a server that requires TLS refuses the check.
    Off,
    /// When the greeting offers it and the login without it is refused (a server with
    /// `require_secure_transport = ON`); from then on for that server.
    #[default]
    Auto,
    /// Always; a server that does not offer TLS fails the check.
    Required,
}

impl TlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Auto => "auto",
            TlsMode::Required => "required",
        }
    }
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
    /// A Galera node that is a donor (`wsrep_local_state` 2) still takes traffic in writer and
    /// reader pools (it serves while it sends a state transfer, slower).
    pub galera_donor_ok: bool,
    /// The check user's password, from `password_file` (mode 0600; never logged). `None`: the
    /// user has no password, which needs no privilege to be safe.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Whether the check speaks TLS to the server (client traffic is relayed as it is, TLS
    /// included).
    pub tls: TlsMode,
    /// The CA certificates (DER) that a server's certificate must chain to, from `tls_ca_file`;
    /// `None`: the check encrypts without verifying the server.
    pub tls_ca: Option<Vec<Vec<u8>>>,
    pub tls_ca_file: Option<PathBuf>,
    /// A statement run after the login on every check; the first column of its first row decides
    /// (NULL, empty or zero: the check fails).
    pub check_query: Option<String>,
    /// Run on every change of a writer pool's writer, with the arguments `writer HOST:PORT
    /// REASON` (`none` for HOST:PORT when no server qualifies).
    pub notify: Option<PathBuf>,
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
    /// Used only while no primary (non-backup) backend of the listener can take a connection.
    pub backup: bool,
    /// Connections this backend holds at most (0: no limit); beyond it new connections wait in
    /// the listener's queue.
    pub maxconn: u32,
}

/// One listening address with its own pool of backends.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// A backend that has not answered a connect by then is skipped for the next one.
    pub connect_timeout_ms: u64,
    pub backends: Vec<BackendConfig>,
    /// Client networks allowed to connect; empty: everyone.
    pub allow: Vec<Cidr>,
    pub balance: Balance,
    /// A connection that moved no byte either way for this long is closed (0: never).
    pub idle_timeout_ms: u64,
    /// Clients waiting for a backend under its `maxconn`, at most (over all workers); one more
    /// is refused at once.
    pub queue_limit: u32,
    /// A client waits in the queue this long at most, then is refused.
    pub queue_timeout_ms: u64,
    /// After a client's first backend fails (connect refused or timed out, or closed before its
    /// first byte), at most this many other backends are tried, each a different one; then the
    /// client gets a "no backend available" error (HAProxy's `retries`, with its redispatch).
    pub retries: u32,
    /// A PROXY protocol header written to the backend before the client's bytes, so that the
    /// server sees the client's address (MariaDB: `proxy_protocol_networks` must hold ringlb's
    /// address); the health check sends the LOCAL form. `None`: the backend sees ringlb.
    pub send_proxy: Option<ProxyVersion>,
    /// What the pool is for: any healthy backend, the one writer, or the replicas that keep up.
    pub role: Role,
    /// `role = "writer"`: a recovered server listed before the writer takes the role back.
    pub failback: bool,
    /// `role = "writer"`: what happens to connections still open to a server that lost the role.
    pub on_writer_change: OnWriterChange,
    /// `role = "reader"`: a replica further behind than this leaves the pool...
    pub max_lag_s: u64,
    /// ...and comes back once it is no further behind than this (at most `max_lag_s`).
    pub lag_return_s: u64,
    /// A backend back in the pool (up again, enabled again, a replica back within its lag)
    /// gets a share of new connections that grows from almost none to its full weight over this
    /// long (0: at once), so that a cold buffer pool is not flooded.
    pub slowstart_ms: u64,
    /// `role = "reader"`: a writable server (`read_only` OFF: the primary, or the survivor of a
    /// master-master pair) takes reads beside the qualifying replicas; otherwise only while no
    /// replica qualifies.
    pub reader_uses_writer: bool,
}

/// What a listener's pool is for; the roles other than `any` read server state after the
/// check's login ([`crate::health::state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every healthy backend.
    #[default]
    Any,
    /// Exactly one backend at a time: a healthy, writable one, kept until it stops qualifying.
    Writer,
    /// Healthy replicas with both threads running and a lag within `max_lag_s`.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Any => "any",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }
}

/// What happens to connections open to a server that lost the writer role.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnWriterChange {
    /// They are reset, so that no client goes on writing to a server that left the role
    /// (HAProxy's `on-marked-down shutdown-sessions`).
    #[default]
    Close,
    /// They finish as they would.
    Keep,
}

impl OnWriterChange {
    pub fn as_str(self) -> &'static str {
        match self {
            OnWriterChange::Close => "close",
            OnWriterChange::Keep => "keep",
        }
    }
}

/// How a listener spreads new connections over its backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// The backend with the fewest active connections per unit of weight; ties take turns.
    #[default]
    Leastconn,
    /// Each backend in turn, as often as its weight says, whatever it holds.
    Roundrobin,
}

impl BackendConfig {
    /// A backend named by its address, weight 1, no limit.
    pub fn at(addr: SocketAddr) -> Self {
        BackendConfig {
            name: addr.to_string(),
            addr,
            weight: 1,
            backup: false,
            maxconn: 0,
        }
    }
}

impl ListenerConfig {
    /// A listener with every setting at its default.
    pub fn new(name: &str, bind: SocketAddr, backends: Vec<BackendConfig>) -> Self {
        ListenerConfig {
            name: name.to_string(),
            bind,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            backends,
            allow: Vec::new(),
            balance: Balance::default(),
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            queue_timeout_ms: DEFAULT_QUEUE_TIMEOUT_MS,
            retries: DEFAULT_RETRIES,
            send_proxy: None,
            role: Role::Any,
            failback: false,
            on_writer_change: OnWriterChange::default(),
            max_lag_s: DEFAULT_MAX_LAG_S,
            lag_return_s: DEFAULT_MAX_LAG_S / 2,
            reader_uses_writer: false,
            slowstart_ms: 0,
        }
    }
}

impl Config {
    /// One worker, one listener on `bind` with `backends`, every other setting at its default
    /// (a health check by TCP connect every second).
    pub fn with_listener(bind: SocketAddr, backends: Vec<BackendConfig>) -> Self {
        Config {
            workers: 1,
            admin: DEFAULT_ADMIN.parse().expect("valid default"),
            admin_token_file: None,
            admin_token: None,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            histogram_dump: PathBuf::from(DEFAULT_HISTOGRAM_DUMP),
            health: HealthConfig {
                check: CheckKind::Tcp,
                interval_ms: 1000,
                rise: 2,
                fall: 3,
                timeout_ms: 1000,
                user: String::new(),
                galera_donor_ok: false,
                password: None,
                password_file: None,
                tls: TlsMode::Auto,
                tls_ca: None,
                tls_ca_file: None,
                check_query: None,
                notify: None,
            },
            listeners: vec![ListenerConfig::new("default", bind, backends)],
            tuning: TuningConfig::default(),
            ha: None,
        }
    }
}

/// A network in CIDR notation ("10.0.0.0/24"; a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` is inside this network; an IPv4 client seen on an IPv6 socket
    /// (`::ffff:a.b.c.d`) matches IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Parses "IP/PREFIX" or a bare IP.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let bad = || format!("{text:?} is not a network like \"10.0.0.0/24\" or an address");
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = ip.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: prefix must be 0 to {max}")),
            },
        };
        Ok(Cidr { addr, prefix_len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
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

/// Which I/O driver the workers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverChoice {
    /// io_uring where it is usable, epoll where it is refused (with a log line that says why).
    Auto,
    /// io_uring or nothing: start-up fails where it is refused.
    IoUring,
    /// epoll with non-blocking calls, whether or not io_uring is usable.
    Epoll,
}

impl DriverChoice {
    /// `auto`, `io_uring` or `epoll`; the error says which are known.
    pub fn parse(text: &str) -> Result<DriverChoice, String> {
        match text {
            "auto" => Ok(DriverChoice::Auto),
            "io_uring" => Ok(DriverChoice::IoUring),
            "epoll" => Ok(DriverChoice::Epoll),
            other => Err(format!(
                "unknown driver {other:?}, expected \"auto\", \"io_uring\" or \"epoll\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DriverChoice::Auto => "auto",
            DriverChoice::IoUring => "io_uring",
            DriverChoice::Epoll => "epoll",
        }
    }
}

/// Data-path knobs; each one's measured effect is in tuning.md.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TuningConfig {
    /// The I/O driver; see [`DriverChoice`].
    pub driver: DriverChoice,
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
            driver: DriverChoice::Auto,
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

/// The floating IP: an IPv4 address and the prefix length it is added with ("10.0.0.100/24").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Vip {
    pub addr: Ipv4Addr,
    /// 1..=32; the address is added to the interface with this prefix, as `ip addr add` would.
    pub prefix_len: u8,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A secret read from a file of mode 0600 (`[ha] authkey_file`: the key that signs heartbeats;
/// `[health] password_file`: the check user's password): the bytes less one trailing newline.
/// Never printed: `Debug` and `Serialize` write `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A key from bytes already in memory (tests, or a caller with its own source). Unlike
    /// [`load_secret`] it does not refuse an empty key.
    pub fn from_bytes(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// The `[ha]` section: this node's heartbeat sidecar and the floating IP it may hold.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HaConfig {
    /// This node's name, carried in every heartbeat (1..=64 bytes, no control characters).
    pub node: String,
    /// The heartbeat UDP socket.
    pub bind: SocketAddr,
    /// Where heartbeats are sent (unicast); at least one, same address family as `bind`.
    pub peers: Vec<SocketAddr>,
    pub vip: Vip,
    /// The interface the VIP is added to (1..=15 bytes, a Linux interface name).
    pub interface: String,
    /// The node that holds the VIP when both are up and healthy; any name, this node's or not.
    pub preferred: Option<String>,
    /// Whether the preferred node takes the VIP back when it returns; without it the node
    /// holding the VIP keeps it.
    pub auto_failback: bool,
    /// Time between two heartbeats.
    pub keepalive_ms: u64,
    /// Silence after which a peer is dead; more than `keepalive_ms` (3× or more recommended, so
    /// that two lost heartbeats in a row do not move the VIP).
    pub deadtime_ms: u64,
    /// How long a starting node listens before it may take the VIP; at least `deadtime_ms`.
    pub initdead_ms: u64,
    /// Where the key came from, relative paths taken from the configuration file's folder.
    pub authkey_file: PathBuf,
    /// The key itself, read at load time so that a bad key file stops ringlb at start-up.
    pub authkey: Secret,
    /// A command run (without a shell) on each transition; relative to the configuration
    /// file's folder like `authkey_file`.
    pub notify: Option<PathBuf>,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Config {
    /// Worker threads, one per core; already resolved (never 0).
    pub workers: usize,
    /// Admin HTTP endpoint (loopback by default; any other address needs `admin_token`).
    pub admin: SocketAddr,
    /// Where the admin token came from (`[global] admin_token_file`), relative paths taken from
    /// the configuration file's folder.
    pub admin_token_file: Option<PathBuf>,
    /// The token a change through the admin endpoint must carry ([`crate::admin::auth`]); read
    /// at load time, so a bad token file stops ringlb at start-up. Without one, changes are
    /// taken from loopback only.
    pub admin_token: Option<Secret>,
    /// On SIGTERM or SIGINT, how long open connections may take to finish after ringlb stops
    /// accepting; what is still open then is closed.
    pub shutdown_grace_ms: u64,
    /// Where SIGUSR1 writes the latency histograms (HdrHistogram log format).
    pub histogram_dump: PathBuf,
    pub health: HealthConfig,
    pub listeners: Vec<ListenerConfig>,
    pub tuning: TuningConfig,
    /// The HA sidecar, when the file has an `[ha]` section.
    pub ha: Option<HaConfig>,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:4040";
pub const DEFAULT_BACKEND: &str = "127.0.0.1:3306";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:4041";
/// Below systemd's default stop timeout, so that ringlb, not the service manager, ends it.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;
/// MySQL's own `wait_timeout` default: an idle client is closed no sooner than the server would.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 28_800_000;
pub const DEFAULT_QUEUE_LIMIT: u32 = 1024;
pub const DEFAULT_QUEUE_TIMEOUT_MS: u64 = 5000;
/// Other backends a client tries after its first fails (HAProxy's default `retries`).
pub const DEFAULT_RETRIES: u32 = 3;
/// A replica further behind than this leaves a reader pool (ProxySQL's `max_replication_lag`
/// and MaxScale's `max_slave_replication_lag` are off by default; 10 s keeps reads fresh enough
/// for most applications while riding out a short burst of writes).
pub const DEFAULT_MAX_LAG_S: u64 = 10;
/// The largest `max_lag_s`: a day.
const MAX_LAG_S: i64 = 86_400;
/// The most `retries` accepts: more than any pool needs, since no backend is tried twice.
const MAX_RETRIES: i64 = 10_000;
/// Where SIGUSR1 writes the latency histograms unless `[global] histogram_dump` says otherwise.
pub const DEFAULT_HISTOGRAM_DUMP: &str = "/var/tmp/ringlb-histograms.hlog";

/// What the command line contributes; `None`/empty means "not given", so the file's value stands.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub backends: Vec<String>,
    pub workers: Option<usize>,
    pub admin: Option<String>,
    /// `--driver`: replaces `[tuning] driver`.
    pub driver: Option<DriverChoice>,
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
    /// A key file that must not be used: open to group or others, or empty.
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
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

/// HA defaults: a heartbeat every 100 ms, a peer dead after 400 ms of silence (four heartbeats,
/// so one or two lost datagrams move nothing) and takeover well under the 500 ms target.
pub const DEFAULT_KEEPALIVE_MS: u64 = 100;
pub const DEFAULT_DEADTIME_MS: u64 = 400;
/// A booting node listens this long before it may take the VIP, so that a peer whose network
/// comes up a little later is not met with two VIP owners.
pub const DEFAULT_INITDEAD_MS: u64 = 2000;
/// Shortest keepalive: below it heartbeats are noise and timer jitter decides deaths.
pub const MIN_KEEPALIVE_MS: u64 = 10;
/// Longest HA timer, to catch a typo (an hour).
pub const MAX_HA_TIMER_MS: u64 = 3_600_000;
/// Longest node name: the heartbeat carries it behind a one-byte length.
pub const MAX_NODE_NAME_BYTES: usize = 64;
/// Linux interface names are at most IFNAMSIZ - 1 = 15 bytes.
pub const MAX_INTERFACE_NAME_BYTES: usize = 15;

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
        None => build(
            &Origin::none(),
            RawFile::default(),
            overrides,
            &resolve_system,
            &load_secret,
        ),
    }
}

/// Reads the HA key file: refuses one that group or others may read or write (as Heartbeat does
/// with its authkeys) and an empty one, and drops one trailing newline so that `echo secret >
/// FILE` and an editor's final newline give the same key. Errors name the file, never the key.
pub fn load_secret(path: &Path) -> Result<Secret, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    // The mode of the file opened, not of the path checked earlier: no window for a swap.
    let mode = file.metadata().map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            message: format!(
                "key file mode {:04o} lets group or others in; run `chmod 600 {}`",
                mode & 0o7777,
                path.display()
            ),
        });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            message: "key file is empty; write a long random secret into it".to_string(),
        });
    }
    Ok(Secret(bytes))
}

/// The shortest admin token: 128 bits as hex, so that it cannot be guessed over the network.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// Reads an admin token file as [`load_secret`] does and checks the token ([`check_admin_token`]).
/// `ringlb backend` and `ringlb reload` read their `--token-file` with it.
pub fn load_admin_token(path: &Path) -> Result<Secret, ConfigError> {
    load_secret(path).and_then(|token| check_admin_token(path, token))
}

/// An admin token travels in an HTTP header: printable ASCII without spaces, and long enough not
/// to be guessed. Errors name the file, never the token.
fn check_admin_token(path: &Path, token: Secret) -> Result<Secret, ConfigError> {
    let refuse = |message: String| ConfigError::Key {
        path: path.to_path_buf(),
        message,
    };
    if !token.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
        return Err(refuse(
            "admin token must be printable ASCII without spaces (it travels in an HTTP header); \
             `openssl rand -hex 32` writes one"
                .into(),
        ));
    }
    if token.as_bytes().len() < MIN_ADMIN_TOKEN_BYTES {
        return Err(refuse(format!(
            "admin token is {} characters; use at least {MIN_ADMIN_TOKEN_BYTES} \
             (`openssl rand -hex 32` writes 64)",
            token.as_bytes().len()
        )));
    }
    Ok(token)
}

/// The text of a `[health]` key that only a check that logs in can use (`purpose` says what it
/// does with the login): refused when blank, or when the check does not log in.
fn login_key<'a>(
    origin: &Origin<'_>,
    value: &'a Spanned<String>,
    key: &str,
    purpose: &str,
    logs_in: bool,
) -> Result<&'a str, ConfigError> {
    let at = |message: String| origin.at(value.span().start, key, message);
    if value.get_ref().trim().is_empty() {
        return Err(at("must not be empty (leave the key out)".into()));
    }
    if !logs_in {
        return Err(at(format!("{purpose}: needs check = \"mysql\" with a user")));
    }
    Ok(value.get_ref())
}

/// The certificates of a PEM file, as DER; an error names what is wrong with the file.
fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    // What the checks will trust: a certificate that is PEM but not one rustls can use is found
    // here, by `ringlb check`, not at the first check.
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in certificates.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
    }
    Ok(certificates)
}

/// Reads a key file; a parameter of `build` so that validation is unit-tested without files.
pub type KeyReader<'r> = &'r dyn Fn(&Path) -> Result<Secret, ConfigError>;

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
    load_str_with(path, text, overrides, resolve, &load_secret)
}

/// [`load_str`] with the key file read by `read_key` too: the unit tests and the config fuzz
/// target stand in for the file system with it, as for DNS with `resolve`.
pub fn load_str_with(
    path: &Path,
    text: &str,
    overrides: &Overrides,
    resolve: Resolver<'_>,
    read_key: KeyReader<'_>,
) -> Result<Config, ConfigError> {
    let origin = Origin { path, text };
    let raw = parse(&origin)?;
    build(&origin, raw, overrides, resolve, read_key)
}

/// What a client command (`ringlb backend`, `ringlb reload`) takes from a configuration file:
/// the admin address and token of the ringlb that runs with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminClient {
    pub admin: SocketAddr,
    pub token: Option<Secret>,
}

/// Reads the `[global]` admin keys of the configuration file at `path`, and the token file it
/// names; nothing else is validated or resolved, so the command works on a node whose backends
/// do not resolve from where it runs. Errors are located as [`load`]'s are.
pub fn admin_client(path: &Path) -> Result<AdminClient, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = Origin { path, text: &text };
    let global = parse(&origin)?.global;
    let admin = match global.as_ref().and_then(|g| g.admin.as_ref()) {
        Some(a) => parse_ip_port(a.get_ref()).map_err(|m| origin.at(a.span().start, "global.admin", m))?,
        None => DEFAULT_ADMIN.parse().expect("valid default"),
    };
    let token = match global.as_ref().and_then(|g| g.admin_token_file.as_ref()) {
        Some(v) => Some(
            load_admin_token(&relative_to_file(&origin, v.get_ref()))
                .map_err(|e| origin.at(v.span().start, "global.admin_token_file", e.to_string()))?,
        ),
        None => None,
    };
    Ok(AdminClient { admin, token })
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
    if let Some(file) = &config.admin_token_file {
        let file = file.to_string_lossy();
        out.push_str(&format!("admin_token_file = {}\n", toml_string(&file)));
    }
    out.push_str(&format!("shutdown_grace_ms = {}\n", config.shutdown_grace_ms));
    out.push_str(&format!(
        "histogram_dump = {}\n",
        toml_string(&config.histogram_dump.display().to_string())
    ));
    out.push_str("\n[health]\n");
    out.push_str(&format!("check = {}\n", toml_string(check)));
    out.push_str(&format!("interval_ms = {}\n", health.interval_ms));
    out.push_str(&format!("rise = {}\n", health.rise));
    out.push_str(&format!("fall = {}\n", health.fall));
    out.push_str(&format!("timeout_ms = {}\n", health.timeout_ms));
    out.push_str(&format!("user = {}\n", toml_string(&health.user)));
    if health.galera_donor_ok {
        out.push_str("galera_donor_ok = true\n");
    }
    if let Some(path) = &health.password_file {
        out.push_str(&format!(
            "password_file = {}\n",
            toml_string(&path.to_string_lossy())
        ));
    }
    if health.tls != TlsMode::Auto {
        out.push_str(&format!("tls = {}\n", toml_string(health.tls.as_str())));
    }
    if let Some(path) = &health.tls_ca_file {
        out.push_str(&format!(
            "tls_ca_file = {}\n",
            toml_string(&path.to_string_lossy())
        ));
    }
    if let Some(query) = &health.check_query {
        out.push_str(&format!("check_query = {}\n", toml_string(query)));
    }
    if let Some(notify) = &health.notify {
        out.push_str(&format!("notify = {}\n", toml_string(&notify.to_string_lossy())));
    }
    for listener in &config.listeners {
        out.push_str("\n[[listener]]\n");
        out.push_str(&format!("name = {}\n", toml_string(&listener.name)));
        out.push_str(&format!("bind = {}\n", toml_string(&listener.bind.to_string())));
        out.push_str(&format!("connect_timeout_ms = {}\n", listener.connect_timeout_ms));
        out.push_str(&format!("idle_timeout_ms = {}\n", listener.idle_timeout_ms));
        out.push_str(&format!("queue_limit = {}\n", listener.queue_limit));
        out.push_str(&format!("queue_timeout_ms = {}\n", listener.queue_timeout_ms));
        out.push_str(&format!("retries = {}\n", listener.retries));
        if listener.slowstart_ms > 0 {
            out.push_str(&format!("slowstart_ms = {}\n", listener.slowstart_ms));
        }
        if listener.balance == Balance::Roundrobin {
            out.push_str("balance = \"roundrobin\"\n");
        }
        if let Some(version) = listener.send_proxy {
            out.push_str(&format!("send_proxy = {}\n", toml_string(version.name())));
        }
        match listener.role {
            Role::Any => {}
            Role::Writer => {
                out.push_str("role = \"writer\"\n");
                out.push_str(&format!("failback = {}\n", listener.failback));
                let close = toml_string(listener.on_writer_change.as_str());
                out.push_str(&format!("on_writer_change = {close}\n"));
            }
            Role::Reader => {
                out.push_str("role = \"reader\"\n");
                out.push_str(&format!("max_lag_s = {}\n", listener.max_lag_s));
                out.push_str(&format!("lag_return_s = {}\n", listener.lag_return_s));
                out.push_str(&format!("reader_uses_writer = {}\n", listener.reader_uses_writer));
            }
        }
        if !listener.allow.is_empty() {
            let nets: Vec<String> = listener
                .allow
                .iter()
                .map(|c| toml_string(&c.to_string()))
                .collect();
            out.push_str(&format!("allow = [{}]\n", nets.join(", ")));
        }
        for backend in &listener.backends {
            out.push_str("[[listener.backend]]\n");
            let address = toml_string(&backend.name);
            if backend.name.parse::<SocketAddr>() == Ok(backend.addr) {
                out.push_str(&format!("address = {address}\n"));
            } else {
                out.push_str(&format!("address = {address}  # resolved to {}\n", backend.addr));
            }
            out.push_str(&format!("weight = {}\n", backend.weight));
            if backend.backup {
                out.push_str("backup = true\n");
            }
            if backend.maxconn > 0 {
                out.push_str(&format!("maxconn = {}\n", backend.maxconn));
            }
        }
    }
    let tuning = &config.tuning;
    let relay = match tuning.relay {
        RelayMode::Auto => "auto",
        RelayMode::Splice => "splice",
    };
    out.push_str("\n[tuning]\n");
    out.push_str(&format!("driver = {}\n", toml_string(tuning.driver.name())));
    out.push_str(&format!("relay = {}\n", toml_string(relay)));
    out.push_str(&format!("buffer_bytes = {}\n", tuning.buffer_bytes));
    out.push_str(&format!("buffers = {}\n", tuning.buffers));
    out.push_str(&format!("pipe_bytes = {}\n", tuning.pipe_bytes));
    out.push_str(&format!("pipes_kept = {}\n", tuning.pipes_kept));
    out.push_str(&format!("ring_entries = {}\n", tuning.ring_entries));
    out.push_str(&format!("iowq_max_workers = {}\n", tuning.iowq_max_workers));
    out.push_str(&format!("pin_workers = {}\n", tuning.pin_workers));
    out.push_str(&format!("sqpoll_idle_ms = {}\n", tuning.sqpoll_idle_ms));
    if let Some(ha) = &config.ha {
        let peers: Vec<String> = ha.peers.iter().map(|p| toml_string(&p.to_string())).collect();
        out.push_str("\n[ha]\n");
        out.push_str(&format!("node = {}\n", toml_string(&ha.node)));
        out.push_str(&format!("bind = {}\n", toml_string(&ha.bind.to_string())));
        out.push_str(&format!("peers = [{}]\n", peers.join(", ")));
        out.push_str(&format!("vip = {}\n", toml_string(&ha.vip.to_string())));
        out.push_str(&format!("interface = {}\n", toml_string(&ha.interface)));
        if let Some(preferred) = &ha.preferred {
            out.push_str(&format!("preferred = {}\n", toml_string(preferred)));
        }
        out.push_str(&format!("auto_failback = {}\n", ha.auto_failback));
        out.push_str(&format!("keepalive_ms = {}\n", ha.keepalive_ms));
        out.push_str(&format!("deadtime_ms = {}\n", ha.deadtime_ms));
        out.push_str(&format!("initdead_ms = {}\n", ha.initdead_ms));
        let authkey_file = ha.authkey_file.to_string_lossy();
        out.push_str(&format!("authkey_file = {}\n", toml_string(&authkey_file)));
        if let Some(notify) = &ha.notify {
            out.push_str(&format!("notify = {}\n", toml_string(&notify.to_string_lossy())));
        }
    }
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
    ha: Option<Spanned<RawHa>>,
    #[serde(default)]
    listener: Vec<Spanned<RawListener>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawHa {
    node: Spanned<String>,
    bind: Spanned<String>,
    peers: Spanned<Vec<Spanned<String>>>,
    vip: Spanned<String>,
    interface: Spanned<String>,
    preferred: Option<Spanned<String>>,
    auto_failback: Option<bool>,
    keepalive_ms: Option<Spanned<i64>>,
    deadtime_ms: Option<Spanned<i64>>,
    initdead_ms: Option<Spanned<i64>>,
    authkey_file: Spanned<String>,
    notify: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGlobal {
    workers: Option<Spanned<i64>>,
    admin: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<String>>,
    shutdown_grace_ms: Option<Spanned<i64>>,
    histogram_dump: Option<Spanned<String>>,
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
    galera_donor_ok: Option<bool>,
    password_file: Option<Spanned<String>>,
    tls: Option<Spanned<String>>,
    tls_ca_file: Option<Spanned<String>>,
    check_query: Option<Spanned<String>>,
    notify: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTuning {
    driver: Option<Spanned<String>>,
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
    allow: Option<Vec<Spanned<String>>>,
    balance: Option<Spanned<String>>,
    idle_timeout_ms: Option<Spanned<i64>>,
    queue_limit: Option<Spanned<i64>>,
    queue_timeout_ms: Option<Spanned<i64>>,
    retries: Option<Spanned<i64>>,
    send_proxy: Option<Spanned<String>>,
    slowstart_ms: Option<Spanned<i64>>,
    role: Option<Spanned<String>>,
    failback: Option<Spanned<bool>>,
    on_writer_change: Option<Spanned<String>>,
    max_lag_s: Option<Spanned<i64>>,
    lag_return_s: Option<Spanned<i64>>,
    reader_uses_writer: Option<Spanned<bool>>,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawBackend {
    address: Spanned<String>,
    weight: Option<Spanned<i64>>,
    backup: Option<bool>,
    maxconn: Option<Spanned<i64>>,
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
    // "unknown field `x`, expected ..." points at the key, which the path already ends with
    // (quoted and escaped when it needs to be). serde writes the key as it stands, backticks and
    // newlines included, so the part kept is what follows the last "`, expected ": the expected
    // names are ours and hold no backtick.
    let message = match message
        .strip_prefix("unknown field `")
        .map(|rest| rest.rfind("`, expected ").map_or("", |at| &rest[at + 1..]))
    {
        Some(expected) => format!("unknown key{expected}"),
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

/// A listener being built, with where its name, bind and role came from.
struct Draft {
    config: ListenerConfig,
    name_site: Site,
    bind_site: Site,
    role_site: Option<Site>,
}

/// A listener's role and the keys that go with it.
struct RoleKeys {
    role: Role,
    failback: bool,
    on_writer_change: OnWriterChange,
    max_lag_s: u64,
    lag_return_s: u64,
    reader_uses_writer: bool,
}

/// The role keys of listener `key`; a key that belongs to another role is refused, so that a
/// `max_lag_s` under a writer pool does not sit there doing nothing.
fn listener_role(origin: &Origin<'_>, key: &str, listener: &RawListener) -> Result<RoleKeys, ConfigError> {
    let role = match &listener.role {
        None => Role::Any,
        Some(r) => match r.get_ref().as_str() {
            "any" => Role::Any,
            "writer" => Role::Writer,
            "reader" => Role::Reader,
            other => {
                return Err(origin.at(
                    r.span().start,
                    format!("{key}.role"),
                    format!("unknown role {other:?}, expected \"any\", \"writer\" or \"reader\""),
                ))
            }
        },
    };
    let belongs = |offset: usize, name: &str, owner: Role| -> Result<(), ConfigError> {
        if role == owner {
            return Ok(());
        }
        Err(origin.at(
            offset,
            format!("{key}.{name}"),
            format!(
                "applies only to role = \"{}\" (this listener's role is \"{}\")",
                owner.as_str(),
                role.as_str()
            ),
        ))
    };
    if let Some(v) = &listener.failback {
        belongs(v.span().start, "failback", Role::Writer)?;
    }
    let on_writer_change = match &listener.on_writer_change {
        None => OnWriterChange::default(),
        Some(v) => {
            belongs(v.span().start, "on_writer_change", Role::Writer)?;
            match v.get_ref().as_str() {
                "close" => OnWriterChange::Close,
                "keep" => OnWriterChange::Keep,
                other => {
                    return Err(origin.at(
                        v.span().start,
                        format!("{key}.on_writer_change"),
                        format!("unknown value {other:?}, expected \"close\" or \"keep\""),
                    ))
                }
            }
        }
    };
    let max_lag_s: u64 = match &listener.max_lag_s {
        None => DEFAULT_MAX_LAG_S,
        Some(v) => {
            belongs(v.span().start, "max_lag_s", Role::Reader)?;
            int_in(origin, v, &format!("{key}.max_lag_s"), 0, MAX_LAG_S)?
        }
    };
    let lag_return_s: u64 = match &listener.lag_return_s {
        None => max_lag_s / 2,
        Some(v) => {
            belongs(v.span().start, "lag_return_s", Role::Reader)?;
            let ret = int_in(origin, v, &format!("{key}.lag_return_s"), 0, MAX_LAG_S)?;
            if ret > max_lag_s {
                return Err(origin.at(
                    v.span().start,
                    format!("{key}.lag_return_s"),
                    format!("{ret} is above max_lag_s ({max_lag_s}): a replica must be back within the limit to return"),
                ));
            }
            ret
        }
    };
    if let Some(v) = &listener.reader_uses_writer {
        belongs(v.span().start, "reader_uses_writer", Role::Reader)?;
    }
    Ok(RoleKeys {
        role,
        failback: listener.failback.as_ref().is_some_and(|v| *v.get_ref()),
        on_writer_change,
        max_lag_s,
        lag_return_s,
        reader_uses_writer: listener.reader_uses_writer.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

/// Whether two listeners name the same servers (same addresses, same PROXY setting), in any
/// order: their writer pools share one writer.
fn same_servers(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    let addrs = |l: &ListenerConfig| {
        let mut addrs: Vec<SocketAddr> = l.backends.iter().map(|b| b.addr).collect();
        addrs.sort();
        addrs
    };
    a.send_proxy == b.send_proxy && addrs(a) == addrs(b)
}

/// What the roles need of the rest: a check that logs in (state is read over its session), and
/// writer pools over the same servers that agree on how their one writer is chosen.
fn check_roles(origin: &Origin<'_>, drafts: &[Draft], health: &HealthConfig) -> Result<(), ConfigError> {
    for draft in drafts {
        let (Some(site), listener) = (&draft.role_site, &draft.config) else {
            continue;
        };
        if listener.role == Role::Any {
            continue;
        }
        if health.check != CheckKind::Mysql || health.user.is_empty() {
            return Err(site.error(
                origin,
                format!(
                    "role = \"{}\" reads each server's state after the health check's login: set \
                     [health] check = \"mysql\" with a user",
                    listener.role.as_str()
                ),
            ));
        }
    }
    let writers: Vec<&Draft> = drafts.iter().filter(|d| d.config.role == Role::Writer).collect();
    for (i, a) in writers.iter().enumerate() {
        for b in &writers[i + 1..] {
            let shares = a
                .config
                .backends
                .iter()
                .any(|x| b.config.backends.iter().any(|y| x.addr == y.addr));
            if !shares {
                continue;
            }
            let differs = if !same_servers(&a.config, &b.config) {
                "name the same servers with the same send_proxy"
            } else if a.config.failback != b.config.failback {
                "set the same failback"
            } else {
                continue;
            };
            let site = b.role_site.as_ref().unwrap_or(&b.name_site);
            return Err(site.error(
                origin,
                format!(
                    "listener {:?} shares servers with writer listener {:?}: writer pools that share \
                     a server elect one writer together, so both must {differs}",
                    b.config.name, a.config.name
                ),
            ));
        }
    }
    Ok(())
}

/// A path from the file, relative paths taken from the configuration file's folder.
fn relative_to_file(origin: &Origin<'_>, text: &str) -> PathBuf {
    let path = Path::new(text);
    match origin.path.parent() {
        Some(folder) if path.is_relative() => folder.join(path),
        _ => path.to_path_buf(),
    }
}

/// Merges the flags over the raw file and validates the result.
fn build(
    origin: &Origin<'_>,
    raw: RawFile,
    overrides: &Overrides,
    resolve: Resolver<'_>,
    read_key: KeyReader<'_>,
) -> Result<Config, ConfigError> {
    let global = raw.global.unwrap_or(RawGlobal {
        workers: None,
        admin: None,
        admin_token_file: None,
        shutdown_grace_ms: None,
        histogram_dump: None,
    });
    let shutdown_grace_ms = match &global.shutdown_grace_ms {
        Some(v) => int_in(origin, v, "global.shutdown_grace_ms", 0, 3_600_000)?,
        None => DEFAULT_SHUTDOWN_GRACE_MS,
    };
    let histogram_dump = match &global.histogram_dump {
        Some(v) if v.get_ref().trim().is_empty() => {
            return Err(origin.at(v.span().start, "global.histogram_dump", "must not be empty"))
        }
        Some(v) => relative_to_file(origin, v.get_ref()),
        None => PathBuf::from(DEFAULT_HISTOGRAM_DUMP),
    };

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
    let (admin_token_file, admin_token) = match &global.admin_token_file {
        Some(v) if v.get_ref().trim().is_empty() => {
            return Err(origin.at(
                v.span().start,
                "global.admin_token_file",
                "must not be empty (leave the key out)",
            ))
        }
        Some(v) => {
            let path = relative_to_file(origin, v.get_ref());
            let token = read_key(&path)
                .and_then(|token| check_admin_token(&path, token))
                .map_err(|e| origin.at(v.span().start, "global.admin_token_file", e.to_string()))?;
            (Some(path), Some(token))
        }
        None => (None, None),
    };
    if admin_token.is_none() && !admin.ip().to_canonical().is_loopback() {
        return Err(admin_site.error(
            origin,
            format!(
                "{admin} is not a loopback address, and without [global] admin_token_file anyone \
                 who reaches it could change the pool: set admin_token_file (a file of mode 0600 \
                 holding a random token, e.g. `openssl rand -hex 32`) or bind the admin endpoint \
                 to 127.0.0.1"
            ),
        ));
    }

    let health = build_health(origin, raw.health, read_key)?;
    let mut tuning = build_tuning(origin, raw.tuning)?;
    if let Some(driver) = overrides.driver {
        tuning.driver = driver;
    }
    let ha = match &raw.ha {
        Some(ha) => Some(build_ha(origin, ha, read_key)?),
        None => None,
    };

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
    check_roles(origin, &drafts, &health)?;
    Ok(Config {
        workers,
        admin,
        admin_token_file,
        admin_token,
        shutdown_grace_ms,
        histogram_dump,
        health,
        listeners: drafts.into_iter().map(|d| d.config).collect(),
        tuning,
        ha,
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
    let driver = match &raw.driver {
        None => defaults.driver,
        Some(d) => DriverChoice::parse(d.get_ref())
            .map_err(|message| origin.at(d.span().start, "tuning.driver", message))?,
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
        driver,
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

fn build_ha(
    origin: &Origin<'_>,
    raw: &Spanned<RawHa>,
    read_key: KeyReader<'_>,
) -> Result<HaConfig, ConfigError> {
    let ha = raw.get_ref();

    let node = ha.node.get_ref();
    check_node_name(node).map_err(|m| origin.at(ha.node.span().start, "ha.node", m))?;

    let bind = parse_ip_port(ha.bind.get_ref()).map_err(|m| origin.at(ha.bind.span().start, "ha.bind", m))?;
    if bind.port() == 0 {
        return Err(origin.at(
            ha.bind.span().start,
            "ha.bind",
            format!(
                "{:?}: port 0 is not allowed, peers send to a known port",
                ha.bind.get_ref()
            ),
        ));
    }

    if ha.peers.get_ref().is_empty() {
        return Err(origin.at(
            ha.peers.span().start,
            "ha.peers",
            "needs at least one peer IP:PORT",
        ));
    }
    let mut peers: Vec<SocketAddr> = Vec::with_capacity(ha.peers.get_ref().len());
    for (i, peer) in ha.peers.get_ref().iter().enumerate() {
        let at = |m: String| origin.at(peer.span().start, format!("ha.peers[{i}]"), m);
        let addr = parse_ip_port(peer.get_ref()).map_err(at)?;
        if addr.port() == 0 {
            return Err(at(format!("{:?}: port 0 is not allowed", peer.get_ref())));
        }
        if addr.is_ipv4() != bind.is_ipv4() {
            return Err(at(format!(
                "{addr} is not of the same address family as ha.bind {bind}"
            )));
        }
        if addr == bind {
            return Err(at(format!("{addr} is this node's own ha.bind")));
        }
        if peers.contains(&addr) {
            return Err(at(format!("{addr} is listed twice")));
        }
        peers.push(addr);
    }

    let vip = parse_vip(ha.vip.get_ref()).map_err(|m| origin.at(ha.vip.span().start, "ha.vip", m))?;

    let interface = ha.interface.get_ref();
    check_interface_name(interface).map_err(|m| origin.at(ha.interface.span().start, "ha.interface", m))?;

    let preferred = match &ha.preferred {
        Some(p) => {
            check_node_name(p.get_ref()).map_err(|m| origin.at(p.span().start, "ha.preferred", m))?;
            Some(p.get_ref().clone())
        }
        None => None,
    };

    let timer = |value: &Option<Spanned<i64>>, key: &str, min: u64, default: u64| match value {
        Some(v) => int_in::<u64>(origin, v, key, min as i64, MAX_HA_TIMER_MS as i64),
        None => Ok(default),
    };
    let keepalive_ms = timer(
        &ha.keepalive_ms,
        "ha.keepalive_ms",
        MIN_KEEPALIVE_MS,
        DEFAULT_KEEPALIVE_MS,
    )?;
    // The bounds below name the key the operator wrote, or `ha` when both values are defaults
    // shifted by the other key.
    let deadtime_ms = timer(&ha.deadtime_ms, "ha.deadtime_ms", 1, DEFAULT_DEADTIME_MS)?;
    if deadtime_ms <= keepalive_ms {
        let (offset, key) = site_of(
            raw,
            &ha.deadtime_ms,
            &ha.keepalive_ms,
            "ha.deadtime_ms",
            "ha.keepalive_ms",
        );
        return Err(origin.at(
            offset,
            key,
            format!(
                "deadtime_ms ({deadtime_ms}) must exceed keepalive_ms ({keepalive_ms}); \
                 3× or more is recommended"
            ),
        ));
    }
    let initdead_ms = timer(&ha.initdead_ms, "ha.initdead_ms", 1, DEFAULT_INITDEAD_MS)?;
    if initdead_ms < deadtime_ms {
        let (offset, key) = site_of(
            raw,
            &ha.initdead_ms,
            &ha.deadtime_ms,
            "ha.initdead_ms",
            "ha.deadtime_ms",
        );
        return Err(origin.at(
            offset,
            key,
            format!("initdead_ms ({initdead_ms}) must be at least deadtime_ms ({deadtime_ms})"),
        ));
    }
    if deadtime_ms < 3 * keepalive_ms {
        tracing::warn!(
            "{}: ha.deadtime_ms {deadtime_ms} is less than 3 × keepalive_ms {keepalive_ms}: \
             one or two lost heartbeats will move the VIP",
            origin.path.display()
        );
    }

    let relative_to_file = |text: &str| relative_to_file(origin, text);
    if ha.authkey_file.get_ref().is_empty() {
        return Err(origin.at(
            ha.authkey_file.span().start,
            "ha.authkey_file",
            "must not be empty",
        ));
    }
    let authkey_file = relative_to_file(ha.authkey_file.get_ref());
    let authkey = read_key(&authkey_file)
        .map_err(|e| origin.at(ha.authkey_file.span().start, "ha.authkey_file", e.to_string()))?;
    let notify = match &ha.notify {
        Some(n) if n.get_ref().is_empty() => {
            return Err(origin.at(
                n.span().start,
                "ha.notify",
                "must not be empty (leave the key out)",
            ))
        }
        Some(n) => Some(relative_to_file(n.get_ref())),
        None => None,
    };

    Ok(HaConfig {
        node: node.clone(),
        bind,
        peers,
        vip,
        interface: interface.clone(),
        preferred,
        auto_failback: ha.auto_failback.unwrap_or(true),
        keepalive_ms,
        deadtime_ms,
        initdead_ms,
        authkey_file,
        authkey,
        notify,
    })
}

/// Where to point a complaint about two timers that disagree: the first key if the file sets
/// it, else the second, else the `[ha]` header.
fn site_of(
    raw: &Spanned<RawHa>,
    first: &Option<Spanned<i64>>,
    second: &Option<Spanned<i64>>,
    first_key: &'static str,
    second_key: &'static str,
) -> (usize, &'static str) {
    match (first, second) {
        (Some(v), _) => (v.span().start, first_key),
        (None, Some(v)) => (v.span().start, second_key),
        (None, None) => (raw.span().start, "ha"),
    }
}

/// A node name travels in every heartbeat behind a one-byte length and shows in logs.
fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NODE_NAME_BYTES {
        return Err(format!(
            "{} bytes is too long: at most {MAX_NODE_NAME_BYTES}",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{name:?} must not contain spaces or control characters"));
    }
    Ok(())
}

/// The kernel's rule for interface names (`dev_valid_name`): 1..=15 bytes, not `.` or `..`,
/// no `/`, `:` or whitespace.
fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME_BYTES {
        return Err(format!(
            "{name:?} is not an interface name: 1 to {MAX_INTERFACE_NAME_BYTES} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} is not an interface name"));
    }
    Ok(())
}

/// `IPv4/PREFIX` with a prefix of 1..=32, and an address a host can hold.
pub fn parse_vip(text: &str) -> Result<Vip, String> {
    let malformed = || format!("{text:?} is not IPv4/PREFIX (for example \"10.0.0.100/24\")");
    let (addr, prefix) = text.split_once('/').ok_or_else(malformed)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
    let prefix_len = if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) {
        prefix.parse::<u8>().ok().filter(|p| (1..=32).contains(p))
    } else {
        None
    };
    let prefix_len =
        prefix_len.ok_or_else(|| format!("{text:?}: prefix {prefix:?} is not a number from 1 to 32"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!("{text:?}: {addr} cannot be a floating IP"));
    }
    Ok(Vip { addr, prefix_len })
}

fn build_health(
    origin: &Origin<'_>,
    raw: Option<RawHealth>,
    read_key: KeyReader<'_>,
) -> Result<HealthConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HealthConfig {
            check: CheckKind::Mysql,
            interval_ms: DEFAULT_INTERVAL_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            user: DEFAULT_CHECK_USER.to_string(),
            galera_donor_ok: false,
            password: None,
            password_file: None,
            tls: TlsMode::Auto,
            tls_ca: None,
            tls_ca_file: None,
            check_query: None,
            notify: None,
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
    let logs_in = check == CheckKind::Mysql && !user.is_empty();
    let (password, password_file) = match &raw.password_file {
        None => (None, None),
        Some(p) => {
            login_key(
                origin,
                p,
                "health.password_file",
                "is the check user's password",
                logs_in,
            )?;
            let path = relative_to_file(origin, p.get_ref());
            let secret = read_key(&path)
                .map_err(|e| origin.at(p.span().start, "health.password_file", e.to_string()))?;
            (Some(secret), Some(path))
        }
    };
    let tls = match &raw.tls {
        None => TlsMode::Auto,
        Some(t) => match t.get_ref().as_str() {
            "off" => TlsMode::Off,
            "auto" => TlsMode::Auto,
            "required" => TlsMode::Required,
            other => {
                return Err(origin.at(
                    t.span().start,
                    "health.tls",
                    format!("unknown value {other:?}, expected \"off\", \"auto\" or \"required\""),
                ))
            }
        },
    };
    if let (Some(t), false) = (&raw.tls, logs_in) {
        if tls == TlsMode::Required {
            return Err(origin.at(
                t.span().start,
                "health.tls",
                "\"required\" is for the check's login: needs check = \"mysql\" with a user",
            ));
        }
    }
    let (tls_ca, tls_ca_file) = match &raw.tls_ca_file {
        None => (None, None),
        Some(f) => {
            let purpose = "verifies the server of the check's login";
            login_key(origin, f, "health.tls_ca_file", purpose, logs_in)?;
            if tls == TlsMode::Off {
                return Err(origin.at(
                    f.span().start,
                    "health.tls_ca_file",
                    "has no use with tls = \"off\"",
                ));
            }
            let path = relative_to_file(origin, f.get_ref());
            let certificates = read_pem_certificates(&path)
                .map_err(|m| origin.at(f.span().start, "health.tls_ca_file", m))?;
            (Some(certificates), Some(path))
        }
    };
    let check_query = match &raw.check_query {
        None => None,
        Some(q) => {
            let purpose = "runs after the check's login";
            Some(login_key(origin, q, "health.check_query", purpose, logs_in)?.to_string())
        }
    };
    Ok(HealthConfig {
        check,
        interval_ms,
        rise,
        fall,
        timeout_ms,
        user,
        galera_donor_ok: raw.galera_donor_ok.unwrap_or(false),
        password,
        password_file,
        tls,
        tls_ca,
        tls_ca_file,
        check_query,
        notify: match &raw.notify {
            Some(n) if n.get_ref().is_empty() => {
                return Err(origin.at(
                    n.span().start,
                    "health.notify",
                    "must not be empty (leave the key out)",
                ))
            }
            Some(n) => Some(relative_to_file(origin, n.get_ref())),
            None => None,
        },
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
        config: ListenerConfig::new("default", bind, backends),
        name_site: Site::Default("listener name"),
        bind_site,
        role_site: None,
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
    let balance = match &listener.balance {
        None => Balance::default(),
        Some(b) => match b.get_ref().as_str() {
            "leastconn" => Balance::Leastconn,
            "roundrobin" => Balance::Roundrobin,
            other => {
                return Err(origin.at(
                    b.span().start,
                    format!("{key}.balance"),
                    format!("unknown balance {other:?}, expected \"leastconn\" or \"roundrobin\""),
                ))
            }
        },
    };
    let idle_timeout_ms = match &listener.idle_timeout_ms {
        Some(v) => int_in(origin, v, &format!("{key}.idle_timeout_ms"), 0, 365 * 86_400_000)?,
        None => DEFAULT_IDLE_TIMEOUT_MS,
    };
    let queue_limit = match &listener.queue_limit {
        Some(v) => int_in(origin, v, &format!("{key}.queue_limit"), 0, 1_000_000)?,
        None => DEFAULT_QUEUE_LIMIT,
    };
    let queue_timeout_ms = match &listener.queue_timeout_ms {
        Some(v) => int_in(origin, v, &format!("{key}.queue_timeout_ms"), 1, 3_600_000)?,
        None => DEFAULT_QUEUE_TIMEOUT_MS,
    };
    let retries = match &listener.retries {
        Some(v) => int_in(origin, v, &format!("{key}.retries"), 0, MAX_RETRIES)?,
        None => DEFAULT_RETRIES,
    };
    let send_proxy = match &listener.send_proxy {
        None => None,
        Some(v) => Some(ProxyVersion::from_name(v.get_ref()).ok_or_else(|| {
            origin.at(
                v.span().start,
                format!("{key}.send_proxy"),
                format!(
                    "unknown PROXY protocol version {:?}, expected \"v1\" or \"v2\"",
                    v.get_ref()
                ),
            )
        })?),
    };
    let role = listener_role(origin, &key, listener)?;
    let slowstart_ms = match &listener.slowstart_ms {
        Some(v) => int_in(origin, v, &format!("{key}.slowstart_ms"), 0, 3_600_000)?,
        None => 0,
    };
    let mut allow = Vec::new();
    for (j, entry) in listener.allow.iter().flatten().enumerate() {
        let cidr = Cidr::parse(entry.get_ref())
            .map_err(|m| origin.at(entry.span().start, format!("{key}.allow[{j}]"), m))?;
        allow.push(cidr);
    }

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
            let mut built = backend(origin, b.address.get_ref(), weight, &site, resolve)?;
            built.backup = b.backup.unwrap_or(false);
            if built.backup && role.role == Role::Writer {
                return Err(site.error(
                    origin,
                    "backup = true has no meaning in a writer pool, which elects one writer: list \
                     the preferred server first and set failback = true",
                ));
            }
            if let Some(m) = &b.maxconn {
                built.maxconn = int_in(origin, m, &format!("{key}.backend[{j}].maxconn"), 0, 1_000_000)?;
            }
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
            allow,
            balance,
            idle_timeout_ms,
            queue_limit,
            queue_timeout_ms,
            retries,
            send_proxy,
            role: role.role,
            failback: role.failback,
            on_writer_change: role.on_writer_change,
            max_lag_s: role.max_lag_s,
            lag_return_s: role.lag_return_s,
            reader_uses_writer: role.reader_uses_writer,
            slowstart_ms,
        },
        name_site,
        role_site: listener
            .role
            .as_ref()
            .map(|r| Site::file(r, format!("{key}.role"))),
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
        backup: false,
        maxconn: 0,
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

    #[test]
    fn allow_networks_match_their_addresses_only() {
        let net = Cidr::parse("10.0.0.0/24").unwrap();
        assert!(net.contains("10.0.0.7".parse().unwrap()));
        assert!(!net.contains("10.0.1.7".parse().unwrap()));
        // An IPv4 client on an IPv6 socket.
        assert!(net.contains("::ffff:10.0.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert_eq!(one.prefix_len, 32);
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

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

    /// Stands in for key files: any path holds "test key" except one named `missing`.
    fn fake_key(path: &Path) -> Result<Secret, ConfigError> {
        if path.ends_with("missing") {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        Ok(Secret::from_bytes(b"test key"))
    }

    fn load_text(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        load_str_with(Path::new("ringlb.toml"), text, overrides, &fake_dns, &fake_key)
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
            &fake_key,
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
                galera_donor_ok: false,
                password: None,
                password_file: None,
                tls: TlsMode::Auto,
                tls_ca: None,
                tls_ca_file: None,
                check_query: None,
                notify: None,
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
galera_donor_ok = true
notify = "/usr/local/bin/on-writer"

[[listener]]
name = "rw"
bind = "10.1.1.1:3306"
connect_timeout_ms = 300
send_proxy = "v2"
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
                galera_donor_ok: true,
                password: None,
                password_file: None,
                tls: TlsMode::Auto,
                tls_ca: None,
                tls_ca_file: None,
                check_query: None,
                notify: Some(PathBuf::from("/usr/local/bin/on-writer")),
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
                        backup: false,
                        maxconn: 0,
                    },
                    BackendConfig {
                        name: "[::1]:3307".into(),
                        addr: addr("[::1]:3307"),
                        weight: 1,
                        backup: false,
                        maxconn: 0,
                    },
                ],
                allow: Vec::new(),
                balance: Default::default(),
                idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
                queue_limit: DEFAULT_QUEUE_LIMIT,
                queue_timeout_ms: DEFAULT_QUEUE_TIMEOUT_MS,
                retries: DEFAULT_RETRIES,
                send_proxy: Some(ProxyVersion::V2),
                role: Role::Any,
                failback: false,
                on_writer_change: OnWriterChange::Close,
                max_lag_s: DEFAULT_MAX_LAG_S,
                lag_return_s: DEFAULT_MAX_LAG_S / 2,
                reader_uses_writer: false,
                slowstart_ms: 0,
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
            driver: None,
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
                "ringlb.toml:2: global.workerz: unknown key, expected one of `workers`, `admin`, `admin_token_file`, `shutdown_grace_ms`",
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
    fn unknown_keys_with_backticks_or_newlines_stay_on_one_line() {
        // Found by the config fuzz target: serde quotes an unknown key between backticks as it
        // stands, and the message was cut at the key's own backtick, leaving its newline in.
        let cases = [
            (
                "[global]\n\"a`b\\n\" = 1\n",
                "ringlb.toml:2: global.\"a`b\\n\": unknown key, expected one of `workers`, `admin`, `admin_token_file`, \
                 `shutdown_grace_ms`, `histogram_dump`",
            ),
            (
                "\"x`, expected \\n`\" = 1\n",
                "ringlb.toml:1: \"x`, expected \\n`\": unknown key, expected one of `global`, `health`, \
                 `tuning`, `ha`, `listener`",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(error_text(text, &Overrides::default()), expected);
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
            (
                "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\nsend_proxy = \"V2\"\n".to_string()
                    + "[[listener.backend]]\naddress = \"db-01:1\"\n",
                "ringlb.toml:4: listener[0].send_proxy: unknown PROXY protocol version \"V2\", expected \"v1\" or \"v2\"",
            ),
            (
                "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\nsend_proxy = true\n".to_string()
                    + "[[listener.backend]]\naddress = \"db-01:1\"\n",
                "ringlb.toml:4: listener[0].send_proxy: invalid type: boolean `true`, expected a string",
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
            admin: Some("127.0.0.1:4040".into()),
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
send_proxy = "v1"
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
        assert!(written.contains("send_proxy = \"v1\"\n"), "{written}");
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

    const HA: &str = r#"
[ha]
node = "lb-db-01"
bind = "10.0.0.11:694"
peers = ["10.0.0.12:694"]
vip = "10.0.0.100/24"
interface = "eth0"
preferred = "lb-db-01"
auto_failback = true
keepalive_ms = 100
deadtime_ms = 400
initdead_ms = 2000
authkey_file = "/etc/ringlb/authkey"
"#;

    /// The issue's `[ha]` example with one line replaced (`key = value`, matched by key).
    fn ha_with(key: &str, line: Option<&str>) -> String {
        let mut out = String::new();
        for l in HA.lines() {
            if l.starts_with(&format!("{key} = ")) {
                if let Some(line) = line {
                    out.push_str(line);
                    out.push('\n');
                }
            } else {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn ha_section_reads_every_key_and_the_key_file() {
        let config = load_text(
            &ha_with(
                "authkey_file",
                Some("authkey_file = \"/etc/ringlb/authkey\"\nnotify = \"/usr/local/bin/ha-notify\""),
            ),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            config.ha,
            Some(HaConfig {
                node: "lb-db-01".into(),
                bind: addr("10.0.0.11:694"),
                peers: vec![addr("10.0.0.12:694")],
                vip: Vip {
                    addr: Ipv4Addr::new(10, 0, 0, 100),
                    prefix_len: 24
                },
                interface: "eth0".into(),
                preferred: Some("lb-db-01".into()),
                auto_failback: true,
                keepalive_ms: 100,
                deadtime_ms: 400,
                initdead_ms: 2000,
                authkey_file: "/etc/ringlb/authkey".into(),
                authkey: Secret::from_bytes(b"test key"),
                notify: Some("/usr/local/bin/ha-notify".into()),
            })
        );
        assert_eq!(load_text("", &Overrides::default()).unwrap().ha, None);
    }

    #[test]
    fn ha_optional_keys_take_their_documented_defaults() {
        let text = "[ha]\nnode = \"b\"\nbind = \"10.0.0.12:694\"\npeers = [\"10.0.0.11:694\"]\n\
                    vip = \"10.0.0.100/32\"\ninterface = \"br-lb\"\nauthkey_file = \"authkey\"\n";
        let ha = load_text(text, &Overrides::default()).unwrap().ha.unwrap();
        assert_eq!(ha.preferred, None);
        assert!(ha.auto_failback);
        assert_eq!(
            (ha.keepalive_ms, ha.deadtime_ms, ha.initdead_ms),
            (DEFAULT_KEEPALIVE_MS, DEFAULT_DEADTIME_MS, DEFAULT_INITDEAD_MS)
        );
        assert_eq!(ha.notify, None);
        assert_eq!(ha.vip.to_string(), "10.0.0.100/32");
    }

    #[test]
    fn ha_relative_paths_are_taken_from_the_config_files_folder() {
        let text = ha_with(
            "authkey_file",
            Some("authkey_file = \"keys/authkey\"\nnotify = \"notify.sh\""),
        );
        let config = load_str_with(
            Path::new("/etc/ringlb/ringlb.toml"),
            &text,
            &Overrides::default(),
            &fake_dns,
            &fake_key,
        )
        .unwrap();
        let ha = config.ha.unwrap();
        assert_eq!(ha.authkey_file, Path::new("/etc/ringlb/keys/authkey"));
        assert_eq!(ha.notify.as_deref(), Some(Path::new("/etc/ringlb/notify.sh")));
    }

    #[test]
    fn ha_preferred_may_name_another_node_and_failback_may_be_off() {
        let text = ha_with("preferred", Some("preferred = \"lb-db-02\""))
            .replace("auto_failback = true", "auto_failback = false");
        let ha = load_text(&text, &Overrides::default()).unwrap().ha.unwrap();
        assert_eq!(ha.preferred.as_deref(), Some("lb-db-02"));
        assert!(!ha.auto_failback);
    }

    #[test]
    fn file_with_only_ha_combines_with_listen_and_backend_flags() {
        let overrides = Overrides {
            listen: Some("0.0.0.0:4040".into()),
            backends: vec!["db-01:3306".into(), "db-02:3306".into()],
            ..Overrides::default()
        };
        let config = load_text(HA, &overrides).unwrap();
        assert_eq!(config.ha.as_ref().unwrap().node, "lb-db-01");
        let l = &config.listeners[0];
        assert_eq!(l.bind, addr("0.0.0.0:4040"));
        let backends: Vec<_> = l.backends.iter().map(|b| b.addr).collect();
        assert_eq!(backends, vec![addr("10.0.0.1:3306"), addr("10.0.0.2:3306")]);
    }

    #[test]
    fn ha_errors_name_line_and_key() {
        let cases = [
            (
                ha_with("node", Some("node = \"\"")),
                "ringlb.toml:3: ha.node: must not be empty",
            ),
            (
                ha_with("node", Some(&format!("node = \"{}\"", "n".repeat(65)))),
                "ringlb.toml:3: ha.node: 65 bytes is too long: at most 64",
            ),
            (
                ha_with("node", Some("node = \"lb 1\"")),
                "ringlb.toml:3: ha.node: \"lb 1\" must not",
            ),
            (
                ha_with("node", None),
                "ringlb.toml:2: ha.node: required key is missing",
            ),
            (
                ha_with("bind", Some("bind = \"lb-db-01:694\"")),
                "ringlb.toml:4: ha.bind: \"lb-db-01:694\" is not IP:PORT",
            ),
            (
                ha_with("bind", Some("bind = \"10.0.0.11:0\"")),
                "ringlb.toml:4: ha.bind: \"10.0.0.11:0\": port 0",
            ),
            (
                ha_with("peers", Some("peers = []")),
                "ringlb.toml:5: ha.peers: needs at least one peer",
            ),
            (
                ha_with("peers", Some("peers = \"10.0.0.12:694\"")),
                "ringlb.toml:5: ha.peers: invalid type: string",
            ),
            (
                ha_with("peers", Some("peers = [\"10.0.0.12:694\", \"lb-db-02:694\"]")),
                "ringlb.toml:5: ha.peers[1]: \"lb-db-02:694\" is not IP:PORT",
            ),
            (
                ha_with("peers", Some("peers = [\"[fe80::2]:694\"]")),
                "ringlb.toml:5: ha.peers[0]: [fe80::2]:694 is not of the same address family",
            ),
            (
                ha_with("peers", Some("peers = [\"10.0.0.11:694\"]")),
                "ringlb.toml:5: ha.peers[0]: 10.0.0.11:694 is this node's own ha.bind",
            ),
            (
                ha_with("peers", Some("peers = [\"10.0.0.12:694\", \"10.0.0.12:694\"]")),
                "ringlb.toml:5: ha.peers[1]: 10.0.0.12:694 is listed twice",
            ),
            (
                ha_with("vip", Some("vip = \"10.0.0.100\"")),
                "ringlb.toml:6: ha.vip: \"10.0.0.100\" is not IPv4/PREFIX",
            ),
            (
                ha_with("vip", Some("vip = \"10.0.0.100/33\"")),
                "ringlb.toml:6: ha.vip: \"10.0.0.100/33\": prefix \"33\"",
            ),
            (
                ha_with("vip", Some("vip = \"10.0.0.100/0\"")),
                "ringlb.toml:6: ha.vip: \"10.0.0.100/0\": prefix \"0\"",
            ),
            (
                ha_with("vip", Some("vip = \"fe80::1/64\"")),
                "ringlb.toml:6: ha.vip: \"fe80::1/64\" is not IPv4/PREFIX",
            ),
            (
                ha_with("vip", Some("vip = \"224.0.0.1/24\"")),
                "ringlb.toml:6: ha.vip: \"224.0.0.1/24\": 224.0.0.1 cannot",
            ),
            (
                ha_with("interface", Some("interface = \"\"")),
                "ringlb.toml:7: ha.interface: \"\" is not an interface",
            ),
            (
                ha_with("interface", Some("interface = \"a-very-long-name\"")),
                "ringlb.toml:7: ha.interface: \"a-very-long-name\" is not an interface name: 1 to 15 bytes",
            ),
            (
                ha_with("interface", Some("interface = \"eth0:1\"")),
                "ringlb.toml:7: ha.interface: \"eth0:1\" is not",
            ),
            (
                ha_with("preferred", Some("preferred = \"\"")),
                "ringlb.toml:8: ha.preferred: must not be empty",
            ),
            (
                ha_with("auto_failback", Some("auto_failback = \"on\"")),
                "ringlb.toml:9: ha.auto_failback: invalid type",
            ),
            (
                ha_with("keepalive_ms", Some("keepalive_ms = 5")),
                "ringlb.toml:10: ha.keepalive_ms: 5 is out of range: must be from 10 to 3600000",
            ),
            (
                ha_with("deadtime_ms", Some("deadtime_ms = 100")),
                "ringlb.toml:11: ha.deadtime_ms: deadtime_ms (100) must exceed keepalive_ms (100)",
            ),
            (
                ha_with("deadtime_ms", None).replace("keepalive_ms = 100", "keepalive_ms = 500"),
                "ringlb.toml:10: ha.keepalive_ms: deadtime_ms (400) must exceed keepalive_ms (500)",
            ),
            (
                ha_with("initdead_ms", Some("initdead_ms = 300")),
                "ringlb.toml:12: ha.initdead_ms: initdead_ms (300) must be at least deadtime_ms (400)",
            ),
            (
                ha_with("initdead_ms", None).replace("deadtime_ms = 400", "deadtime_ms = 3000"),
                "ringlb.toml:11: ha.deadtime_ms: initdead_ms (2000) must be at least deadtime_ms (3000)",
            ),
            (
                ha_with("authkey_file", None),
                "ringlb.toml:2: ha.authkey_file: required key is missing",
            ),
            (
                ha_with("authkey_file", Some("authkey_file = \"\"")),
                "ringlb.toml:13: ha.authkey_file: must not be empty",
            ),
            (
                ha_with("authkey_file", Some("authkey_file = \"/etc/ringlb/missing\"")),
                "ringlb.toml:13: ha.authkey_file: /etc/ringlb/missing: cannot read: entity not found",
            ),
            (
                HA.to_string() + "notify = \"\"\n",
                "ringlb.toml:14: ha.notify: must not be empty",
            ),
            (
                HA.to_string() + "vip_interface = \"eth0\"\n",
                "ringlb.toml:14: ha.vip_interface: unknown key",
            ),
        ];
        for (text, expected) in cases {
            let e = error_text(&text, &Overrides::default());
            assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
        }
    }

    #[test]
    fn effective_configuration_with_ha_loads_back_to_itself() {
        for text in [
            HA.to_string(),
            ha_with("preferred", None) + "notify = \"/usr/local/bin/ha-notify\"\n",
        ] {
            let config = load_text(&text, &Overrides::default()).unwrap();
            let written = to_toml(&config);
            assert!(
                !written.contains("test key"),
                "the key itself is never written: {written}"
            );
            assert_eq!(
                load_text(&written, &Overrides::default()).unwrap(),
                config,
                "{written}"
            );
        }
    }

    #[test]
    fn auth_key_never_shows_in_debug_or_serialized_output() {
        let key = Secret::from_bytes(b"hunter2");
        assert_eq!(format!("{key:?}"), "Secret(<redacted>)");
        let config = load_text(HA, &Overrides::default()).unwrap();
        assert!(!format!("{config:?}").contains("test key"));
        let json = serde_json::to_string(&config).unwrap();
        assert!(json.contains("\"authkey\":\"<redacted>\""), "{json}");
        assert!(!json.contains("test key"));
    }

    /// A fresh folder under the system temp dir for one test's key files.
    fn key_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-authkey-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn key_file_private_to_its_owner_loads_without_its_trailing_newline() {
        let dir = key_dir("private");
        let key = load_secret(&key_file(&dir, "a", b"s3cret \n", 0o600)).unwrap();
        assert_eq!(key.as_bytes(), b"s3cret ", "only the newline goes");
        let key = load_secret(&key_file(&dir, "b", b"s3cret\r\n", 0o400)).unwrap();
        assert_eq!(key.as_bytes(), b"s3cret");
        let key = load_secret(&key_file(&dir, "c", b"\x00binary\xff\n\n", 0o600)).unwrap();
        assert_eq!(key.as_bytes(), b"\x00binary\xff\n", "one newline only");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_file_open_to_group_or_others_is_refused_naming_file_and_fix() {
        let dir = key_dir("open");
        for (name, mode) in [
            ("group-read", 0o640),
            ("other-read", 0o604),
            ("group-write", 0o620),
            ("all", 0o777),
        ] {
            let path = key_file(&dir, name, b"s3cret\n", mode);
            let e = load_secret(&path).unwrap_err().to_string();
            let expected = format!(
                "{}: key file mode {:04o} lets group or others in; run `chmod 600 {}`",
                path.display(),
                mode,
                path.display()
            );
            assert_eq!(e, expected);
            assert!(!e.contains("s3cret"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_empty_key_file_is_refused() {
        let dir = key_dir("empty");
        let missing = dir.join("nowhere");
        let e = load_secret(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e}");
        assert!(e
            .to_string()
            .starts_with(&format!("{}: cannot read: ", missing.display())));
        for (name, contents) in [("empty", &b""[..]), ("newline", b"\n")] {
            let path = key_file(&dir, name, contents, 0o600);
            assert_eq!(
                load_secret(&path).unwrap_err().to_string(),
                format!(
                    "{}: key file is empty; write a long random secret into it",
                    path.display()
                )
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn load_reads_the_key_file_and_stops_on_a_bad_one() {
        let dir = key_dir("load");
        key_file(&dir, "authkey", b"s3cret\n", 0o600);
        let config_path = dir.join("ringlb.toml");
        let text = ha_with("authkey_file", Some("authkey_file = \"authkey\""));
        std::fs::write(&config_path, &text).unwrap();
        let config = load(Some(&config_path), &Overrides::default()).unwrap();
        assert_eq!(config.ha.unwrap().authkey.as_bytes(), b"s3cret");

        key_file(&dir, "authkey", b"s3cret\n", 0o644);
        let e = load(Some(&config_path), &Overrides::default())
            .unwrap_err()
            .to_string();
        let key_path = dir.join("authkey");
        assert_eq!(
            e,
            format!(
                "{}:13: ha.authkey_file: {}: key file mode 0644 lets group or others in; run `chmod 600 {}`",
                config_path.display(),
                key_path.display(),
                key_path.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_token_file_is_read_from_the_files_folder_and_opens_any_admin_address() {
        let dir = key_dir("admin-token");
        let token = b"0123456789abcdef0123456789abcdef";
        key_file(&dir, "admin.token", &[&token[..], b"\n"].concat(), 0o600);
        let config_path = dir.join("ringlb.toml");
        std::fs::write(
            &config_path,
            "[global]\nadmin = \"0.0.0.0:4041\"\nadmin_token_file = \"admin.token\"\n",
        )
        .unwrap();
        let config = load(Some(&config_path), &Overrides::default()).unwrap();
        assert_eq!(config.admin_token_file, Some(dir.join("admin.token")));
        assert_eq!(
            config.admin_token.as_ref().map(Secret::as_bytes),
            Some(&token[..])
        );
        assert!(!format!("{config:?}").contains("0123456789abcdef"));

        // The effective configuration names the file, never the token, and loads back the same.
        let written = to_toml(&config);
        assert!(written.contains("admin_token_file = "), "{written}");
        assert!(!written.contains("0123456789abcdef"), "{written}");
        std::fs::write(&config_path, &written).unwrap();
        assert_eq!(load(Some(&config_path), &Overrides::default()).unwrap(), config);

        // What `ringlb backend` and `ringlb reload` take from the file.
        assert_eq!(
            admin_client(&config_path).unwrap(),
            AdminClient {
                admin: addr("0.0.0.0:4041"),
                token: config.admin_token.clone(),
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn without_a_token_only_a_loopback_admin_address_is_taken() {
        for loopback in ["127.0.0.1:4041", "127.0.0.2:4041", "[::1]:4041"] {
            let overrides = Overrides {
                admin: Some(loopback.into()),
                ..Overrides::default()
            };
            assert_eq!(load_text("", &overrides).unwrap().admin, addr(loopback));
        }
        for open in [
            "0.0.0.0:4041",
            "10.0.0.5:4041",
            "[::]:4041",
            "[::ffff:10.0.0.5]:4041",
        ] {
            let overrides = Overrides {
                admin: Some(open.into()),
                ..Overrides::default()
            };
            let e = load_text("", &overrides).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--admin: {} is not a loopback address", addr(open))),
                "{e}"
            );
            assert!(e.contains("admin_token_file") && !e.contains('\n'), "{e}");
        }
        let e = load_text("[global]\nadmin_token_file = \" \"\n", &Overrides::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ringlb.toml:2: global.admin_token_file: must not be empty (leave the key out)"
        );
    }
}
