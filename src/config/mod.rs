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
//!
//! One file per job: this one holds the model (the typed `Config` and its parts, defaults and
//! limits, the error type); `raw` the `Raw*` structs and the mapping from a byte offset to a line
//! and key path; `validate` step 3; `load` the entry points that read files (the configuration,
//! key and token files) and the resolver; `output` [`to_toml`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::proxy_protocol::ProxyVersion;

mod load;
mod output;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use load::*;
pub use output::*;
use raw::*;
pub use validate::parse_vip;
use validate::*;

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
