//! The shared backend table and the least-connections choice.
//!
//! Every worker reads the same [`Backends`] table; its only mutable state is atomics, each
//! backend's on its own cache line, so the data path takes no lock. The choice is a pure function
//! over a snapshot of those atomics: a race between two workers can cost one extra connection on
//! a backend, never a lock or a wrong answer about health. `maxconn` alone is enforced exactly,
//! by a compare-and-swap on the backend's active count.
//!
//! # Reload
//!
//! A table is immutable; a reload builds a new one ([`Backends::rebuild`]) and hands it to the
//! workers. A backend or listener that stays (same listener name, same address) keeps its
//! state — health verdict, active count, counters — because the new table shares its `live`,
//! `stats` and listener `state` (`Arc`s) with the old one. Connections opened under the old table
//! keep it alive until they close, and release their backend in it, which is the same atomics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_utils::CachePadded;

use crate::config::{Balance, Config, ListenerConfig, Role};
use crate::health::topology::WriterElection;
use crate::proxy_protocol::ProxyVersion;

/// [`ServerLive::lag_s`] of a server whose lag is unknown or that is no replica.
pub const NO_LAG: u64 = u64::MAX;
/// [`WriterGroup::writer`] while no server holds the role.
pub const NO_WRITER: usize = usize::MAX;

/// What the health checker knows of one server. Every backend entry at the same address (with
/// the same PROXY protocol setting, which changes what the check sends) in any listener shares
/// it, so one checker serves the server and every pool naming it sees the same verdict: the
/// article's writer and reader listeners over the same two servers check each server once.
#[derive(Debug)]
pub struct ServerLive {
    /// As first configured ("db-01:3306"); the label in the checker's log lines.
    pub name: String,
    pub addr: SocketAddr,
    /// The checker sends this version's LOCAL header first.
    pub send_proxy: Option<ProxyVersion>,
    /// Health checker's verdict (with rise/fall hysteresis applied).
    pub up: AtomicBool,
    /// A failed connect marks the server suspect until this instant (ms on [`crate::clock`]),
    /// so other connections, in any pool, skip it at once instead of each waiting for its own
    /// failure. A check that reaches the server clears it.
    pub suspect_until_ms: AtomicU64,
    /// When `up` last turned true (ms on [`crate::clock`]; 0: up since start-up): where
    /// `slowstart_ms` ramps from.
    pub up_since_ms: AtomicU64,
    /// When `replicating` last turned true: a reader pool's ramp starts there too.
    pub replicating_since_ms: AtomicU64,
    /// Set when a reload removed every backend at this server: its checker stops.
    pub retired: AtomicBool,
    /// What the pools naming it need read after the login: [`NEEDS_STATE`] and
    /// [`NEEDS_REPLICAS`] bits, rewritten by every table build.
    pub needs: AtomicU8,
    /// The checker has judged the server's state once (the first election waits for every
    /// server's first verdict, so that the first listed server is the first writer).
    pub judged: AtomicBool,
    /// Qualifies as a writer: up, writable and (on Galera) in sync; rise/fall applied.
    pub writable: AtomicBool,
    /// Qualifies as a reader: replicating with both threads running, or a Galera node in sync;
    /// rise/fall applied. The lag is judged per pool ([`BackendLive::lag_in`]).
    pub replicating: AtomicBool,
    /// The worst `Seconds_Behind_Master` over its sources at the last check; [`NO_LAG`] when
    /// unknown or not a replica.
    pub lag_s: AtomicU64,
    /// `read_only` at the last check: 0 off, 1 on, 2 not read.
    pub read_only: AtomicU8,
    /// Galera's `wsrep_local_state` at the last check; 0 on a server without Galera.
    pub galera_state: AtomicU8,
    /// Why the server does not qualify as a writer (empty: it does); for `/stats` and the log
    /// line of a change. Written by its checker only.
    pub not_writer: Mutex<String>,
    /// Why it does not qualify as a replica for reader pools (empty: it does).
    pub not_reader: Mutex<String>,
}

/// [`ServerLive::needs`]: the server's read_only and Galera state (writer and reader pools).
pub const NEEDS_STATE: u8 = 1;
/// [`ServerLive::needs`]: its replica status (reader pools).
pub const NEEDS_REPLICAS: u8 = 2;

impl ServerLive {
    fn new(name: &str, addr: SocketAddr, send_proxy: Option<ProxyVersion>) -> ServerLive {
        ServerLive {
            name: name.to_string(),
            addr,
            send_proxy,
            up: AtomicBool::new(true),
            suspect_until_ms: AtomicU64::new(0),
            up_since_ms: AtomicU64::new(0),
            replicating_since_ms: AtomicU64::new(0),
            retired: AtomicBool::new(false),
            needs: AtomicU8::new(0),
            judged: AtomicBool::new(false),
            writable: AtomicBool::new(false),
            replicating: AtomicBool::new(false),
            lag_s: AtomicU64::new(NO_LAG),
            read_only: AtomicU8::new(2),
            galera_state: AtomicU8::new(0),
            not_writer: Mutex::new(String::new()),
            not_reader: Mutex::new(String::new()),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Lag in seconds, when the server is a replica that reports one.
    pub fn lag(&self) -> Option<u64> {
        Some(self.lag_s.load(Ordering::Relaxed)).filter(|&lag| lag != NO_LAG)
    }
}

/// The writer of the writer pools over one set of servers: every listener with `role =
/// "writer"` naming the same servers shares one group, so that all of them, and every worker,
/// agree on the writer at any moment: the data path reads the one atomic [`WriterGroup::writer`].
/// The checkers elect ([`crate::health::topology`]) under the mutex; the data path never takes it.
#[derive(Debug)]
pub struct WriterGroup {
    /// In the order of the first listener that names them (the order `failback` prefers).
    pub servers: Box<[Arc<CachePadded<ServerLive>>]>,
    pub failback: bool,
    /// Position in `servers` of the writer; [`NO_WRITER`] while none qualifies.
    pub writer: AtomicUsize,
    /// Changes of the writer (elected, moved, lost) since start-up.
    pub changes: AtomicU64,
    pub election: Mutex<WriterElection>,
    /// Every group of an earlier table that this one replaced, directly or through a group in
    /// between (a reload changed the servers or `failback`): connections opened under those
    /// tables, and clients still queued there, read their writer from them, so every change here
    /// is copied to them. Flat, so that a group in between that is gone (no connection kept its
    /// table) breaks no link.
    predecessors: Mutex<Vec<std::sync::Weak<WriterGroup>>>,
}

impl WriterGroup {
    /// Makes the server at `writer` (or none) the writer, here and in every group this one
    /// replaced, so that every table in use agrees. Called by the election, under its lock.
    pub fn publish(&self, writer: Option<usize>) {
        self.writer.store(writer.unwrap_or(NO_WRITER), Ordering::Relaxed);
        let server = writer.map(|w| &self.servers[w]);
        let mut predecessors = self.predecessors.lock().unwrap_or_else(|e| e.into_inner());
        predecessors.retain(|p| p.strong_count() > 0);
        for p in predecessors.iter().filter_map(std::sync::Weak::upgrade) {
            let position = server.and_then(|s| p.holds(s));
            p.writer.store(position.unwrap_or(NO_WRITER), Ordering::Relaxed);
        }
    }

    /// This group and every group it replaced that is still in use.
    fn lineage(self: &Arc<Self>) -> Vec<std::sync::Weak<WriterGroup>> {
        let predecessors = self.predecessors.lock().unwrap_or_else(|e| e.into_inner());
        let mut lineage: Vec<_> = predecessors
            .iter()
            .filter(|p| p.strong_count() > 0)
            .cloned()
            .collect();
        lineage.push(Arc::downgrade(self));
        lineage
    }

    /// The writer's position in [`WriterGroup::servers`].
    pub fn writer(&self) -> Option<usize> {
        Some(self.writer.load(Ordering::Relaxed)).filter(|&w| w != NO_WRITER)
    }

    /// The writer's server.
    pub fn writer_server(&self) -> Option<&ServerLive> {
        self.writer().map(|w| &**self.servers[w])
    }

    fn holds(&self, server: &Arc<CachePadded<ServerLive>>) -> Option<usize> {
        self.servers.iter().position(|s| Arc::ptr_eq(s, server))
    }
}

/// The atomics one backend's state lives in; written by workers and the health checker.
#[derive(Debug)]
pub struct BackendLive {
    /// In a reader pool: the replica's lag is within the pool's limit, with the pool's
    /// hysteresis ([`crate::health::state::LagGate`]); written by the server's checker.
    pub lag_in: AtomicBool,
    /// When `lag_in` last turned true, ms ([`crate::clock`]).
    pub lag_in_since_ms: AtomicU64,
    /// When the operator last enabled it after a drain or disable, ms.
    pub enabled_since_ms: AtomicU64,
    /// Connections open to this backend right now, over all workers: the least-connections key.
    pub active_connections: AtomicU32,
    /// What the operator set: [`AdminState`] as a byte. Anything but enabled takes no new
    /// connection; connections already open finish as they would.
    pub admin_state: AtomicU8,
    /// Set when a reload removed the backend: it takes no new connection.
    pub retired: AtomicBool,
}

impl Default for BackendLive {
    fn default() -> Self {
        BackendLive {
            lag_in: AtomicBool::new(true),
            lag_in_since_ms: AtomicU64::new(0),
            enabled_since_ms: AtomicU64::new(0),
            active_connections: AtomicU32::new(0),
            admin_state: AtomicU8::new(AdminState::Enabled as u8),
            retired: AtomicBool::new(false),
        }
    }
}

/// One worker's counters for one backend (in [`BackendStats::traffic`]).
#[derive(Debug, Default)]
pub struct BackendTraffic {
    pub connections: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

/// What the workers count for one backend, one slot per worker (each writes only its own).
#[derive(Debug)]
pub struct BackendStats {
    pub traffic: Box<[CachePadded<BackendTraffic>]>,
    /// Latency histograms; a worker locks only its own, uncontended but for the moment the
    /// admin thread merges them.
    pub latency: Box<[CachePadded<Mutex<crate::latency::Latency>>]>,
}

impl BackendStats {
    pub fn new(workers: usize) -> Self {
        BackendStats {
            traffic: (0..workers).map(|_| Default::default()).collect(),
            latency: (0..workers)
                .map(|_| CachePadded::new(Mutex::new(crate::latency::Latency::new())))
                .collect(),
        }
    }
}

/// What lives as long as a listener does, across reloads.
#[derive(Debug)]
pub struct ListenerState {
    /// Per worker: clients closed at accept because `allow` left them out.
    pub rejected: Box<[CachePadded<AtomicU64>]>,
    /// Per worker: clients refused because the queue was full or their wait ran out.
    pub queue_refused: Box<[CachePadded<AtomicU64>]>,
    /// Per worker: connections closed by `idle_timeout_ms`.
    pub idle_closed: Box<[CachePadded<AtomicU64>]>,
    /// Per worker: clients moved to another backend after theirs failed to connect or closed
    /// before its first byte.
    pub redispatches: Box<[CachePadded<AtomicU64>]>,
    /// Per worker: clients closed with "no backend available": `retries` used up, every backend
    /// tried, or none up.
    pub no_backend: Box<[CachePadded<AtomicU64>]>,
    /// Clients waiting in some worker's queue right now.
    pub queued: CachePadded<AtomicU32>,
}

impl ListenerState {
    pub fn new(workers: usize) -> Self {
        let counters = || (0..workers).map(|_| Default::default()).collect();
        ListenerState {
            rejected: counters(),
            queue_refused: counters(),
            idle_closed: counters(),
            redispatches: counters(),
            no_backend: counters(),
            queued: Default::default(),
        }
    }
}

/// One listener of a table.
#[derive(Debug)]
pub struct Listener {
    pub config: ListenerConfig,
    pub state: Arc<ListenerState>,
}

/// The operator's say over a backend (`ringlb backend drain|disable|enable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AdminState {
    Enabled = 0,
    /// No new connections; open ones finish. Health checks go on.
    Drain = 1,
    /// Maintenance: no new connections; open ones finish.
    Disabled = 2,
}

impl AdminState {
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Enabled => "enabled",
            AdminState::Drain => "drain",
            AdminState::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<AdminState> {
        match text {
            "enable" | "enabled" => Some(AdminState::Enabled),
            "drain" => Some(AdminState::Drain),
            "disable" | "disabled" => Some(AdminState::Disabled),
            _ => None,
        }
    }
}

/// One backend of one listener.
#[derive(Debug)]
pub struct Backend {
    /// As written in the configuration ("db-01:3306"); the label in metrics and logs.
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Taken only while no primary backend of the pool can take the connection.
    pub backup: bool,
    /// Connections held at most; 0: no limit.
    pub maxconn: u32,
    /// Index of the listener whose pool holds it.
    pub listener: usize,
    pub live: Arc<CachePadded<BackendLive>>,
    /// The server it points at, shared with every backend entry at the same address.
    pub server: Arc<CachePadded<ServerLive>>,
    /// In a writer pool: the pool's group and this server's position in it.
    pub writer: Option<(Arc<WriterGroup>, usize)>,
    pub stats: Arc<BackendStats>,
}

impl Backend {
    pub fn is_up(&self) -> bool {
        self.server.is_up()
    }

    /// Whether it is among the backends `pass` considers.
    fn serves(&self, pass: Pass) -> bool {
        let replica =
            || self.server.replicating.load(Ordering::Relaxed) && self.live.lag_in.load(Ordering::Relaxed);
        // A reader pool's fallback: a server that takes writes has every write it was sent, which
        // is what a reader wants once no replica can be trusted (the survivor of a master-master
        // pair whose peer died: its replication from the dead peer has stopped).
        let primary = || self.server.writable.load(Ordering::Relaxed);
        match pass {
            Pass::Any => true,
            Pass::Writer => self.is_writer(),
            Pass::Replica => replica(),
            Pass::Primary => primary(),
            Pass::ReplicaOrPrimary => replica() || primary(),
        }
    }

    /// When it last came back into its pool (ms on [`crate::clock`]; 0: in since start-up): up
    /// again, enabled again and, in a reader pool, replicating and within the lag again. A writer
    /// pool has one server at a time: nothing to ramp against.
    fn back_since_ms(&self, pool: Role) -> u64 {
        let up = self.server.up_since_ms.load(Ordering::Relaxed);
        let enabled = self.live.enabled_since_ms.load(Ordering::Relaxed);
        match pool {
            Role::Any => up.max(enabled),
            Role::Writer => 0,
            Role::Reader => up
                .max(enabled)
                .max(self.server.replicating_since_ms.load(Ordering::Relaxed))
                .max(self.live.lag_in_since_ms.load(Ordering::Relaxed)),
        }
    }

    /// In a writer pool: whether its server holds the role now.
    pub fn is_writer(&self) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|(group, pos)| group.writer.load(Ordering::Relaxed) == *pos)
    }

    /// The role it plays in its pool now, for `/stats` and `/metrics`: "writer" or "none" in a
    /// writer pool; "reader", "primary" (writable, not a qualifying replica: a reader pool's
    /// fallback) or "none" in a reader pool;
    /// "any" in a pool without a role.
    pub fn role(&self, pool: Role) -> &'static str {
        match pool {
            Role::Any => "any",
            Role::Writer if self.is_writer() => "writer",
            Role::Reader if self.serves(Pass::Replica) => "reader",
            Role::Reader if self.serves(Pass::Primary) => "primary",
            Role::Writer | Role::Reader => "none",
        }
    }
    pub fn active_connections(&self) -> u32 {
        self.live.active_connections.load(Ordering::Relaxed)
    }

    pub fn admin_state(&self) -> AdminState {
        match self.live.admin_state.load(Ordering::Relaxed) {
            1 => AdminState::Drain,
            2 => AdminState::Disabled,
            _ => AdminState::Enabled,
        }
    }

    /// Up, enabled and still configured: may take new connections. A backend a reload removed
    /// has no health checker any more, so a client still holding the old table (queued, or
    /// redispatched) must not be sent there on the strength of its last verdict.
    fn takes_connections(&self) -> bool {
        self.is_up()
            && self.live.admin_state.load(Ordering::Relaxed) == AdminState::Enabled as u8
            && !self.live.retired.load(Ordering::Relaxed)
    }

    fn full(&self) -> bool {
        self.maxconn > 0 && self.active_connections() >= self.maxconn
    }

    /// Counts one more connection unless that would pass `maxconn`.
    fn try_take(&self) -> bool {
        let maxconn = self.maxconn;
        self.live
            .active_connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |active| {
                (maxconn == 0 || active < maxconn).then_some(active + 1)
            })
            .is_ok()
    }
}

/// Which backends of a pool one pass of [`Backends::acquire`] considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Any healthy backend (`role = "any"`).
    Any,
    /// The elected writer of the pool's [`WriterGroup`].
    Writer,
    /// Replicas that replicate and keep within the pool's lag limit.
    Replica,
    /// Servers that take writes (`read_only` OFF): a reader pool's fallback.
    Primary,
    /// Either (`reader_uses_writer = true`).
    ReplicaOrPrimary,
}

/// Weights are scaled by this in a listener with `slowstart_ms`, so that a backend early in its
/// ramp holds a fraction of one unit of weight.
const RAMP_SCALE: u32 = 64;

/// A backend's weight `elapsed_ms` after it came back into a pool with `slowstart_ms`: from
/// almost nothing up to its full weight over the ramp (HAProxy's `slowstart`), on a scale of
/// [`RAMP_SCALE`] per unit. Without `slowstart_ms`, the configured weight.
fn ramped_weight(weight: u32, slowstart_ms: u64, elapsed_ms: u64) -> u32 {
    if slowstart_ms == 0 {
        return weight;
    }
    let full = weight * RAMP_SCALE;
    if elapsed_ms >= slowstart_ms {
        return full;
    }
    ((u64::from(full) * elapsed_ms / slowstart_ms) as u32).max(1)
}

/// What [`Backends::acquire`] found for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// This backend (global index), already counted as active.
    Backend(usize),
    /// Backends could take it but every one is at its `maxconn`: wait in the queue.
    Full,
    /// No backend can take it.
    None,
}

/// All backends of all listeners, in configuration order; `pools[l]` is the index range of
/// listener `l`'s backends.
#[derive(Debug)]
pub struct Backends {
    pub all: Box<[Backend]>,
    pub pools: Box<[std::ops::Range<usize>]>,
    /// Per listener: the tie-breaker of least connections, shared by all workers so that
    /// sequential connections alternate even when the kernel hands them to different workers.
    rotors: Box<[CachePadded<AtomicUsize>]>,
    /// Per listener: how it spreads connections.
    modes: Box<[Balance]>,
    pub listeners: Box<[Listener]>,
    /// Every server the backends point at, once each: one health checker per server.
    pub servers: Box<[Arc<CachePadded<ServerLive>>]>,
    /// Per server: what its pools need read ([`Backends::publish_needs`]).
    needs: Box<[u8]>,
    /// One per set of servers that writer pools name.
    pub groups: Box<[Arc<WriterGroup>]>,
}

/// The writer group of a writer pool over `members` (in the pool's order): the one this table
/// already has for the same servers, else the previous table's (it keeps its writer across a
/// reload), else a new one, which starts with the writer the previous table had among these
/// servers, if any, so that a reload that adds a server does not move the role.
fn writer_group(
    groups: &mut Vec<Arc<WriterGroup>>,
    old: Option<&Backends>,
    members: Vec<Arc<CachePadded<ServerLive>>>,
    failback: bool,
) -> Arc<WriterGroup> {
    // Each server once (two names can resolve to one address), and the same set both ways.
    let mut members = members;
    let mut seen = 0;
    while seen < members.len() {
        if members[..seen].iter().any(|m| Arc::ptr_eq(m, &members[seen])) {
            members.remove(seen);
        } else {
            seen += 1;
        }
    }
    let same_set = |g: &WriterGroup| {
        g.servers.len() == members.len()
            && members.iter().all(|m| g.holds(m).is_some())
            && g.servers
                .iter()
                .all(|s| members.iter().any(|m| Arc::ptr_eq(m, s)))
    };
    if let Some(g) = groups.iter().find(|g| same_set(g)) {
        return g.clone();
    }
    let old_groups = old.map(|o| &o.groups[..]).unwrap_or_default();
    let group = match old_groups.iter().find(|g| same_set(g) && g.failback == failback) {
        Some(g) => g.clone(),
        None => {
            let position =
                |server: &Arc<CachePadded<ServerLive>>| members.iter().position(|m| Arc::ptr_eq(m, server));
            // The old groups over any of these servers: their writer (read under their lock, so
            // that an election running now is not half seen) carries over, and their connections
            // still open keep following this group's writer ([`WriterGroup::publish`]).
            let overlapping: Vec<&Arc<WriterGroup>> = old_groups
                .iter()
                .filter(|g| g.servers.iter().any(|s| position(s).is_some()))
                .collect();
            let mut carried = None;
            let mut promoted = None;
            let mut changes = 0;
            for g in &overlapping {
                let election = g.election.lock().unwrap_or_else(|e| e.into_inner());
                carried = carried.or_else(|| position(&g.servers[election.writer()?]));
                promoted = promoted.or_else(|| position(&g.servers[election.promoted()?]));
                changes = changes.max(g.changes.load(Ordering::Relaxed));
            }
            Arc::new(WriterGroup {
                servers: members.into_boxed_slice(),
                failback,
                writer: AtomicUsize::new(carried.unwrap_or(NO_WRITER)),
                changes: AtomicU64::new(changes),
                election: Mutex::new(WriterElection::starting_with(failback, carried, promoted)),
                predecessors: Mutex::new(overlapping.iter().flat_map(|g| g.lineage()).collect()),
            })
        }
    };
    groups.push(group.clone());
    group
}

impl Backends {
    /// Builds the table; every backend starts up (the first failed check takes it down at once).
    pub fn from_config(config: &Config) -> Self {
        let table = Self::build(config, None);
        table.publish_needs();
        table
    }

    /// The table for a reloaded `config`: what stays shares its state with `self`.
    pub fn rebuild(&self, config: &Config) -> Self {
        Self::build(config, Some(self))
    }

    fn build(config: &Config, old: Option<&Backends>) -> Self {
        let workers = config.workers;
        let mut all: Vec<Backend> = Vec::new();
        let mut pools = Vec::new();
        let mut listeners = Vec::new();
        let mut servers: Vec<Arc<CachePadded<ServerLive>>> = Vec::new();
        let mut groups: Vec<Arc<WriterGroup>> = Vec::new();
        for (l, listener) in config.listeners.iter().enumerate() {
            let old_listener = old.and_then(|old| {
                old.listeners
                    .iter()
                    .position(|o| o.config.name == listener.name)
                    .map(|i| (old, i))
            });
            // A backend keeps its state only while what the checker sends stays the same: a
            // PROXY header setting change makes it a new server with a new checker.
            let same_checks = old_listener
                .is_some_and(|(old, i)| old.listeners[i].config.send_proxy == listener.send_proxy);
            let start = all.len();
            for b in &listener.backends {
                let kept = old_listener.filter(|_| same_checks).and_then(|(old, i)| {
                    old.all[old.pools[i].clone()]
                        .iter()
                        .find(|o| o.name == b.name && o.addr == b.addr)
                });
                let (live, stats) = match kept {
                    Some(o) => (o.live.clone(), o.stats.clone()),
                    None => (
                        Arc::new(CachePadded::new(BackendLive::default())),
                        Arc::new(BackendStats::new(workers)),
                    ),
                };
                let same = |s: &&Arc<CachePadded<ServerLive>>| {
                    s.addr == b.addr && s.send_proxy == listener.send_proxy
                };
                let server = match servers.iter().find(same) {
                    Some(s) => s.clone(),
                    None => {
                        let server = old
                            .and_then(|old| old.servers.iter().find(same).cloned())
                            .unwrap_or_else(|| {
                                let server = ServerLive::new(&b.name, b.addr, listener.send_proxy);
                                if old.is_some() {
                                    // Added by a reload to pools already serving: it ramps
                                    // (slowstart_ms) from now, as a server back up would.
                                    server
                                        .up_since_ms
                                        .store(crate::clock::now_ms(), Ordering::Relaxed);
                                }
                                Arc::new(CachePadded::new(server))
                            });
                        servers.push(server.clone());
                        server
                    }
                };
                all.push(Backend {
                    name: b.name.clone(),
                    addr: b.addr,
                    weight: b.weight.max(1),
                    backup: b.backup,
                    maxconn: b.maxconn,
                    listener: l,
                    live,
                    stats,
                    server,
                    writer: None,
                });
            }
            pools.push(start..all.len());
            if listener.role == Role::Writer {
                let pool = &mut all[start..];
                let members: Vec<_> = pool.iter().map(|b| b.server.clone()).collect();
                let group = writer_group(&mut groups, old, members, listener.failback);
                for b in pool.iter_mut() {
                    let pos = group
                        .holds(&b.server)
                        .expect("the group was made of these servers");
                    b.writer = Some((group.clone(), pos));
                }
            }
            let state = match old_listener {
                Some((old, i)) => old.listeners[i].state.clone(),
                None => Arc::new(ListenerState::new(workers)),
            };
            listeners.push(Listener {
                config: listener.clone(),
                state,
            });
        }
        let needs = servers
            .iter()
            .map(|server| {
                all.iter()
                    .filter(|b| Arc::ptr_eq(&b.server, server))
                    .map(|b| match config.listeners[b.listener].role {
                        Role::Any => 0,
                        Role::Writer => NEEDS_STATE,
                        Role::Reader => NEEDS_STATE | NEEDS_REPLICAS,
                    })
                    .fold(0, |a, b| a | b)
            })
            .collect();
        Backends {
            all: all.into_boxed_slice(),
            rotors: pools
                .iter()
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            modes: config.listeners.iter().map(|l| l.balance).collect(),
            pools: pools.into_boxed_slice(),
            listeners: listeners.into_boxed_slice(),
            servers: servers.into_boxed_slice(),
            needs,
            groups: groups.into_boxed_slice(),
        }
    }

    /// Tells each server's checker what this table's pools need read of it. Apart from the
    /// build, because a reload's table shares its servers with the running one and may still be
    /// refused: only a table in force may change what the checkers read.
    pub fn publish_needs(&self) {
        for (server, needs) in self.servers.iter().zip(self.needs.iter()) {
            server.needs.store(*needs, Ordering::Relaxed);
        }
    }

    /// Backends of `self` that `next` no longer has (by their shared state).
    pub fn removed_in<'a>(&'a self, next: &'a Backends) -> impl Iterator<Item = &'a Backend> + 'a {
        self.all
            .iter()
            .filter(move |b| !next.all.iter().any(|n| Arc::ptr_eq(&n.live, &b.live)))
    }

    /// Servers of `self` that `next` no longer has: their checkers stop.
    pub fn servers_removed_in<'a>(
        &'a self,
        next: &'a Backends,
    ) -> impl Iterator<Item = &'a Arc<CachePadded<ServerLive>>> + 'a {
        self.servers
            .iter()
            .filter(move |s| !next.servers.iter().any(|n| Arc::ptr_eq(n, s)))
    }

    /// The writer groups `server` is a member of.
    pub fn groups_of<'a>(
        &'a self,
        server: &'a ServerLive,
    ) -> impl Iterator<Item = &'a Arc<WriterGroup>> + 'a {
        self.groups
            .iter()
            .filter(move |g| g.servers.iter().any(|s| std::ptr::eq(&***s, server)))
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Picks a backend of `listener` for a new connection and counts it as active.
    ///
    /// `tried` holds the pool positions already tried for this connection (redispatch).
    /// Ties rotate, so sequential short connections alternate between equal backends.
    /// Backends at their `maxconn` are passed over; when that leaves none but some could take
    /// the connection once a slot frees, the answer is [`Pick::Full`].
    ///
    /// The listener's role narrows the pool first: a writer pool has one candidate,
    /// the elected writer; a reader pool tries its replicas and falls back to the primary only
    /// when no replica qualifies (unless `reader_uses_writer` puts it among them).
    pub fn acquire(&self, listener: usize, tried: &Tried, now_ms: u64) -> Pick {
        for &pass in self.passes(listener) {
            match self.acquire_in(listener, tried, now_ms, pass) {
                Pick::None => continue,
                found => return found,
            }
        }
        Pick::None
    }

    /// The passes of [`Backends::acquire`] for `listener`, in order.
    fn passes(&self, listener: usize) -> &'static [Pass] {
        let config = &self.listeners[listener].config;
        match config.role {
            Role::Any => &[Pass::Any],
            Role::Writer => &[Pass::Writer],
            Role::Reader if config.reader_uses_writer => &[Pass::ReplicaOrPrimary],
            Role::Reader => &[Pass::Replica, Pass::Primary],
        }
    }

    fn acquire_in(&self, listener: usize, tried: &Tried, now_ms: u64, pass: Pass) -> Pick {
        let pool = self.pools[listener].clone();
        let rotor = self.rotors[listener].fetch_add(1, Ordering::Relaxed);
        let backends = &self.all[pool.clone()];
        let pick_in = match self.modes[listener] {
            Balance::Leastconn => choose,
            Balance::Roundrobin => choose_round_robin,
        };
        let config = &self.listeners[listener].config;
        let role = config.role;
        // Weights are scaled only while a backend ramps: scaled weights would make round robin
        // hand out blocks of RAMP_SCALE connections in a row.
        let ramping = config.slowstart_ms > 0
            && backends
                .iter()
                .any(|b| now_ms.saturating_sub(b.back_since_ms(role)) < config.slowstart_ms);
        let slowstart_ms = if ramping { config.slowstart_ms } else { 0 };
        // Backends that filled up between the choice and the count, passed over on the next try.
        let mut excluded = tried.clone();
        for _ in 0..=backends.len() {
            // In order of preference: healthy primaries, then primaries a recent connect failed
            // on (they may have recovered before their check says so), then the same for backups.
            let candidate = |pos: usize, skip_suspect: bool, backup: bool| {
                let b = &backends[pos];
                let suspect = skip_suspect && b.server.suspect_until_ms.load(Ordering::Relaxed) > now_ms;
                Candidate {
                    up: b.takes_connections()
                        && b.serves(pass)
                        && !suspect
                        && b.backup == backup
                        && !b.full(),
                    active: b.active_connections(),
                    weight: ramped_weight(
                        b.weight,
                        slowstart_ms,
                        now_ms.saturating_sub(b.back_since_ms(role)),
                    ),
                }
            };
            let pick = [(true, false), (false, false), (true, true), (false, true)]
                .into_iter()
                .find_map(|(skip_suspect, backup)| {
                    pick_in(backends.len(), &excluded, rotor, &|pos| {
                        candidate(pos, skip_suspect, backup)
                    })
                });
            let Some(pick) = pick else { break };
            if self.all[pool.start + pick].try_take() {
                return Pick::Backend(pool.start + pick);
            }
            excluded.insert(pick);
        }
        let waitable = backends
            .iter()
            .enumerate()
            .any(|(pos, b)| !tried.contains(pos) && b.takes_connections() && b.serves(pass) && b.maxconn > 0);
        if waitable {
            Pick::Full
        } else {
            Pick::None
        }
    }

    /// Whether a healthy backend of `listener` not in `tried` is left to try, suspect or not:
    /// [`Backends::acquire`] falls back to suspect backends before it gives up.
    pub fn has_candidate(&self, listener: usize, tried: &Tried) -> bool {
        self.passes(listener).iter().any(|&pass| {
            self.all[self.pools[listener].clone()]
                .iter()
                .enumerate()
                .any(|(pos, b)| !tried.contains(pos) && b.takes_connections() && b.serves(pass) && !b.full())
        })
    }

    /// Sets the operator's state of every backend named `name` (in any listener); returns how
    /// many there were.
    pub fn set_admin_state(&self, name: &str, state: AdminState) -> usize {
        let matching = self.all.iter().filter(|b| b.name == name);
        let mut count = 0;
        for b in matching {
            let was = b.live.admin_state.load(Ordering::Relaxed);
            if was != AdminState::Enabled as u8 && state == AdminState::Enabled {
                // Before the state: a worker that sees it enabled sees where its ramp starts.
                b.live
                    .enabled_since_ms
                    .store(crate::clock::now_ms(), Ordering::Release);
            }
            b.live.admin_state.store(state as u8, Ordering::Release);
            count += 1;
        }
        count
    }

    /// Undoes [`Backends::acquire`] when a connection ends or its connect fails.
    pub fn release(&self, index: usize) {
        self.all[index]
            .live
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Marks a backend suspect for `for_ms` after a failed connect.
    pub fn mark_suspect(&self, index: usize, until_ms: u64) {
        self.all[index]
            .server
            .suspect_until_ms
            .fetch_max(until_ms, Ordering::Relaxed);
    }
}

/// The pool positions one connection has tried, so that a redispatch never tries a backend
/// twice; any pool size (positions past 64 spill to the heap, the first 64 cost nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tried {
    low: u64,
    high: Vec<u64>,
}

impl Tried {
    pub const fn new() -> Tried {
        Tried {
            low: 0,
            high: Vec::new(),
        }
    }

    pub fn contains(&self, pos: usize) -> bool {
        let word = if pos < 64 {
            self.low
        } else {
            self.high.get(pos / 64 - 1).copied().unwrap_or(0)
        };
        word & (1 << (pos % 64)) != 0
    }

    pub fn insert(&mut self, pos: usize) {
        let word = if pos < 64 {
            &mut self.low
        } else {
            let i = pos / 64 - 1;
            if self.high.len() <= i {
                self.high.resize(i + 1, 0);
            }
            &mut self.high[i]
        };
        *word |= 1 << (pos % 64);
    }

    /// How many positions were tried.
    pub fn len(&self) -> u32 {
        self.low.count_ones() + self.high.iter().map(|w| w.count_ones()).sum::<u32>()
    }

    pub fn is_empty(&self) -> bool {
        self.low == 0 && self.high.iter().all(|&w| w == 0)
    }
}

/// Weighted round robin: the eligible candidates (up, not yet tried) in pool order, each
/// `weight` turns in a cycle of their total weight; `rotor` is the turn. Active connections do
/// not count. Returns the position in the pool.
pub fn choose_round_robin(
    n: usize,
    tried: &Tried,
    rotor: usize,
    candidate: &dyn Fn(usize) -> Candidate,
) -> Option<usize> {
    let eligible = |pos: usize| {
        let c = candidate(pos);
        (c.up && !tried.contains(pos)).then_some(c.weight.max(1) as usize)
    };
    let total: usize = (0..n).filter_map(eligible).sum();
    if total == 0 {
        return None;
    }
    let mut turn = rotor % total;
    for pos in 0..n {
        if let Some(weight) = eligible(pos) {
            if turn < weight {
                return Some(pos);
            }
            turn -= weight;
        }
    }
    None
}

/// What the choice needs to know of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub up: bool,
    pub active: u32,
    pub weight: u32,
}

/// Least connections: among eligible candidates (up, not yet tried; `candidate(pos)` for
/// positions `0..n`) the smallest `(active + 1) / weight`, the load each would have with this
/// connection (as HAProxy's leastconn): with equal weights the fewest connections, and a backend
/// of small weight (early in its slow start) is not picked merely because it holds none yet.
/// Compared exactly by cross-multiplication; ties go to the first one at or after position
/// `rotor % n`, so equal backends take turns. Returns the position in the pool.
pub fn choose(
    n: usize,
    tried: &Tried,
    rotor: usize,
    candidate: &dyn Fn(usize) -> Candidate,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = rotor % n;
    let mut best: Option<(usize, Candidate)> = None;
    for step in 0..n {
        let pos = (start + step) % n;
        let c = candidate(pos);
        if !c.up || tried.contains(pos) {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, b)) => {
                (u64::from(c.active) + 1) * u64::from(b.weight)
                    < (u64::from(b.active) + 1) * u64::from(c.weight)
            }
        };
        if better {
            best = Some((pos, c));
        }
    }
    best.map(|(pos, _)| pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(active: u32) -> Candidate {
        Candidate {
            up: true,
            active,
            weight: 1,
        }
    }

    /// The positions whose bits are set in `bits`.
    fn mask(bits: u64) -> Tried {
        let mut tried = Tried::default();
        (0..64)
            .filter(|pos| bits & (1 << pos) != 0)
            .for_each(|pos| tried.insert(pos));
        tried
    }

    fn acq(table: &Backends, listener: usize, tried: u64, now_ms: u64) -> Option<usize> {
        match table.acquire(listener, &mask(tried), now_ms) {
            Pick::Backend(b) => Some(b),
            _ => None,
        }
    }

    fn pick(all: &[Candidate], tried: u64, rotor: usize) -> Option<usize> {
        choose(all.len(), &mask(tried), rotor, &|pos| all[pos])
    }

    #[test]
    fn round_robin_takes_turns_by_weight_whatever_the_load() {
        let heavy = Candidate {
            up: true,
            active: 100,
            weight: 2,
        };
        let all = [up(0), heavy, up(0)];
        let picks: Vec<_> = (0..8)
            .map(|r| choose_round_robin(all.len(), &mask(0), r, &|pos| all[pos]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 1, 2, 0, 1, 1, 2]);
        // Down or tried backends drop out of the cycle.
        let mut down = all;
        down[1].up = false;
        let picks: Vec<_> = (0..4)
            .map(|r| choose_round_robin(3, &mask(0b100), r, &|pos| down[pos]).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 0, 0, 0]);
        assert_eq!(choose_round_robin(3, &mask(0b101), 0, &|pos| down[pos]), None);
    }

    #[test]
    fn tried_holds_positions_of_any_pool_size() {
        let mut tried = Tried::default();
        for pos in [0, 63, 64, 65, 200, 65] {
            tried.insert(pos);
        }
        assert_eq!(tried.len(), 5);
        for pos in [0, 63, 64, 65, 200] {
            assert!(tried.contains(pos), "{pos}");
        }
        for pos in [1, 62, 66, 127, 128, 199, 201, 10_000] {
            assert!(!tried.contains(pos), "{pos}");
        }
    }

    #[test]
    fn every_backend_of_a_large_pool_is_tried_once_then_none_is_left() {
        let table = table(100);
        let mut tried = Tried::default();
        for _ in 0..100 {
            let Pick::Backend(b) = table.acquire(0, &tried, 0) else {
                panic!("a backend is left after {} tries", tried.len());
            };
            assert!(!tried.contains(b), "backend {b} picked twice");
            tried.insert(b);
            table.release(b);
        }
        assert!(!table.has_candidate(0, &tried));
        assert_eq!(table.acquire(0, &tried, 0), Pick::None);
    }

    #[test]
    fn least_connections_wins() {
        assert_eq!(pick(&[up(3), up(1), up(2)], 0, 0), Some(1));
        assert_eq!(pick(&[up(3), up(1), up(2)], 0, 2), Some(1));
    }

    #[test]
    fn ties_rotate_with_the_rotor() {
        let all = [up(0), up(0)];
        let picks: Vec<_> = (0..4).map(|r| pick(&all, 0, r).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn down_and_tried_backends_are_skipped() {
        let mut all = [up(0), up(5), up(9)];
        all[0].up = false;
        assert_eq!(pick(&all, 0, 0), Some(1));
        assert_eq!(pick(&all, 0b010, 0), Some(2));
        assert_eq!(pick(&all, 0b110, 0), None);
        assert_eq!(pick(&[], 0, 0), None);
    }

    #[test]
    fn weights_scale_the_share() {
        // With this connection: 5 on weight 3 (1.67 each) beats 3 on weight 1.
        let heavy = Candidate {
            up: true,
            active: 4,
            weight: 3,
        };
        assert_eq!(pick(&[up(2), heavy], 0, 0), Some(1));
        // 10 on weight 3 (3.33) loses to 3 on weight 1.
        let busier = Candidate { active: 9, ..heavy };
        assert_eq!(pick(&[up(2), busier], 0, 0), Some(0));
        // An idle backend of tiny weight is not a magnet: 1 on weight 1 of 64 (a backend early in
        // its slow start) loses to 3 on weight 64.
        let ramping = Candidate {
            up: true,
            active: 0,
            weight: 1,
        };
        let full = Candidate {
            up: true,
            active: 2,
            weight: 64,
        };
        assert_eq!(pick(&[ramping, full], 0, 0), Some(1));
    }

    #[test]
    fn a_backend_back_in_the_pool_ramps_up_over_slowstart() {
        assert_eq!(
            ramped_weight(3, 0, 5),
            3,
            "no slow start: the weight as configured"
        );
        assert_eq!(ramped_weight(2, 1000, 0), 1, "a sliver at first");
        assert_eq!(ramped_weight(2, 1000, 500), 64);
        assert_eq!(ramped_weight(2, 1000, 1000), 128);
        assert_eq!(ramped_weight(2, 1000, 99_999), 128);
        // Through the table: two backends, the second back 10% into a 1 s slow start. Held
        // connections spread by weight: the ramping one takes about a tenth of the other's.
        let mut config = Config::with_listener(
            "127.0.0.1:4040".parse().unwrap(),
            ["127.0.0.1:3306", "127.0.0.1:3307"]
                .map(|a| crate::config::BackendConfig::at(a.parse().unwrap()))
                .to_vec(),
        );
        config.listeners[0].slowstart_ms = 1000;
        let table = Backends::from_config(&config);
        table.all[1].server.up_since_ms.store(10_000, Ordering::Relaxed);
        let mut counts = [0u32; 2];
        for _ in 0..110 {
            let b = acq(&table, 0, 0, 10_100).unwrap();
            counts[b] += 1;
        }
        assert!((8..=12).contains(&counts[1]), "{counts:?}");
        // Once the ramp is over, new connections even it out.
        for _ in 0..90 {
            let b = acq(&table, 0, 0, 11_000).unwrap();
            counts[b] += 1;
        }
        assert!(counts[0].abs_diff(counts[1]) <= 2, "{counts:?}");
    }

    #[test]
    fn round_robin_with_slowstart_alternates_when_no_backend_ramps() {
        let mut config = Config::with_listener(
            "127.0.0.1:4040".parse().unwrap(),
            ["127.0.0.1:3306", "127.0.0.1:3307"]
                .map(|a| crate::config::BackendConfig::at(a.parse().unwrap()))
                .to_vec(),
        );
        config.listeners[0].balance = crate::config::Balance::Roundrobin;
        config.listeners[0].slowstart_ms = 1000;
        let table = Backends::from_config(&config);
        // Both up since start-up, the ramp long over.
        let picks: Vec<usize> = (0..10).map(|_| acq(&table, 0, 0, 1_000_000).unwrap()).collect();
        // Hold nothing: roundrobin ignores the load anyway.
        let to_second = picks.iter().filter(|&&b| b == 1).count();
        assert!(
            to_second >= 4,
            "10 connections, equal weights, no ramp: {picks:?}"
        );
    }

    fn table(n: usize) -> Backends {
        let backends = (0..n)
            .map(|i| crate::config::BackendConfig::at(format!("127.0.0.1:{}", 3306 + i).parse().unwrap()))
            .collect();
        Backends::from_config(&Config::with_listener(
            "127.0.0.1:4040".parse().unwrap(),
            backends,
        ))
    }

    /// A writer listener `rw` and a reader listener `ro`, both over the same `n` servers.
    fn role_table(n: usize, reader_uses_writer: bool) -> Backends {
        let backends: Vec<_> = (0..n)
            .map(|i| crate::config::BackendConfig::at(format!("127.0.0.1:{}", 3306 + i).parse().unwrap()))
            .collect();
        let mut config = Config::with_listener("127.0.0.1:4040".parse().unwrap(), backends.clone());
        config.listeners[0].role = Role::Writer;
        let mut ro = ListenerConfig::new("ro", "127.0.0.1:4041".parse().unwrap(), backends);
        ro.role = Role::Reader;
        ro.reader_uses_writer = reader_uses_writer;
        config.listeners.push(ro);
        Backends::from_config(&config)
    }

    /// Picks through listener `l` `times` times, releasing each; the backends picked, by global
    /// index.
    fn picks(table: &Backends, l: usize, times: usize) -> Vec<Option<usize>> {
        (0..times)
            .map(|_| {
                let b = acq(table, l, 0, 0);
                if let Some(b) = b {
                    table.release(b);
                }
                b
            })
            .collect()
    }

    #[test]
    fn listeners_over_the_same_servers_share_servers_and_one_writer_group() {
        let table = role_table(2, false);
        assert_eq!(
            table.servers.len(),
            2,
            "one server per address, whatever the listeners"
        );
        assert!(Arc::ptr_eq(&table.all[0].server, &table.all[2].server));
        assert_eq!(table.groups.len(), 1);
        assert_eq!(
            table.servers[0].needs.load(Ordering::Relaxed),
            NEEDS_STATE | NEEDS_REPLICAS
        );
        // No writer elected yet: the writer pool has nobody to send a connection to.
        assert_eq!(picks(&table, 0, 1), vec![None]);
        table.groups[0].writer.store(1, Ordering::Relaxed);
        assert_eq!(picks(&table, 0, 4), vec![Some(1); 4]);
        assert!(table.all[1].is_writer() && !table.all[0].is_writer());
        assert_eq!(table.all[1].role(Role::Writer), "writer");
        assert_eq!(table.all[0].role(Role::Writer), "none");
        // The writer down (its checker has not re-elected yet): nothing, never the other server.
        table.all[1].server.up.store(false, Ordering::Relaxed);
        assert_eq!(picks(&table, 0, 2), vec![None, None]);
    }

    #[test]
    fn a_reader_pool_takes_replicas_within_their_lag_and_falls_back_to_a_writable_server() {
        let table = role_table(3, false);
        let (db0, db1, db2) = (&table.servers[0], &table.servers[1], &table.servers[2]);
        // db0 the primary (writable, no replica), db1 and db2 replicas.
        db0.writable.store(true, Ordering::Relaxed);
        db1.replicating.store(true, Ordering::Relaxed);
        db2.replicating.store(true, Ordering::Relaxed);
        let ro = |pos: usize| Some(3 + pos);
        let seen = picks(&table, 1, 6);
        assert!(
            seen.iter().all(|&b| b == ro(1) || b == ro(2)),
            "replicas only: {seen:?}"
        );
        assert!(
            seen.contains(&ro(1)) && seen.contains(&ro(2)),
            "both replicas: {seen:?}"
        );
        // db2 lags past the pool's limit: db1 only.
        table.all[5].live.lag_in.store(false, Ordering::Relaxed);
        assert_eq!(picks(&table, 1, 3), vec![ro(1); 3]);
        // db1's replication stops too: the primary takes the reads rather than nobody.
        db1.replicating.store(false, Ordering::Relaxed);
        assert_eq!(picks(&table, 1, 3), vec![ro(0); 3]);
        assert_eq!(table.all[3].role(Role::Reader), "primary");
        assert_eq!(table.all[4].role(Role::Reader), "none");
        // A replica back: the primary is left alone again.
        table.all[5].live.lag_in.store(true, Ordering::Relaxed);
        assert_eq!(picks(&table, 1, 3), vec![ro(2); 3]);
        // Nothing qualifies at all: no backend.
        db0.writable.store(false, Ordering::Relaxed);
        db2.replicating.store(false, Ordering::Relaxed);
        assert_eq!(picks(&table, 1, 1), vec![None]);
        assert!(!table.has_candidate(1, &Tried::default()));
    }

    #[test]
    fn with_reader_uses_writer_the_primary_reads_beside_the_replicas() {
        let table = role_table(2, true);
        table.servers[0].writable.store(true, Ordering::Relaxed);
        table.servers[1].replicating.store(true, Ordering::Relaxed);
        let seen = picks(&table, 1, 4);
        assert!(seen.contains(&Some(2)) && seen.contains(&Some(3)), "{seen:?}");
    }

    #[test]
    fn a_rebuilt_table_keeps_its_servers_and_writer_and_a_new_group_inherits_the_writer() {
        let table = role_table(2, false);
        *table.groups[0].election.lock().unwrap() = WriterElection::starting_with(false, Some(1), None);
        table.groups[0].publish(Some(1));
        let mut config = Config::with_listener(
            "127.0.0.1:4040".parse().unwrap(),
            table.listeners[0].config.backends.clone(),
        );
        config.listeners[0].role = Role::Writer;
        let same = table.rebuild(&config);
        assert_eq!(
            same.servers[1].needs.load(Ordering::Relaxed),
            NEEDS_STATE | NEEDS_REPLICAS,
            "a table not yet in force changes nothing the checkers read"
        );
        same.publish_needs();
        assert!(Arc::ptr_eq(&same.groups[0], &table.groups[0]));
        assert!(Arc::ptr_eq(&same.servers[1], &table.servers[1]));
        assert_eq!(
            same.servers[1].needs.load(Ordering::Relaxed),
            NEEDS_STATE,
            "no reader pool left"
        );
        // A third server joins: a new group, whose writer is still the old one's.
        config.listeners[0]
            .backends
            .push(crate::config::BackendConfig::at(
                "127.0.0.1:3310".parse().unwrap(),
            ));
        let grown = table.rebuild(&config);
        assert!(!Arc::ptr_eq(&grown.groups[0], &table.groups[0]));
        assert_eq!(grown.groups[0].writer(), Some(1));
        // The new group's changes reach the table it replaced, whose connections still read it,
        // and the tables before that, even once a table in between is gone.
        grown.groups[0].publish(Some(2));
        assert_eq!(
            table.groups[0].writer(),
            None,
            "the new writer is not in the old pool"
        );
        grown.groups[0].publish(Some(0));
        assert_eq!(table.groups[0].writer(), Some(0));
        assert_eq!(table.servers_removed_in(&grown).count(), 0);
        assert_eq!(grown.servers_removed_in(&table).count(), 1);
        config.listeners[0]
            .backends
            .push(crate::config::BackendConfig::at(
                "127.0.0.1:3311".parse().unwrap(),
            ));
        let newest = grown.rebuild(&config);
        drop(grown);
        newest.groups[0].publish(Some(1));
        assert_eq!(
            table.groups[0].writer(),
            Some(1),
            "two reloads back, the middle table gone"
        );
    }

    #[test]
    fn held_connections_spread_evenly() {
        let table = table(2);
        for _ in 0..6 {
            acq(&table, 0, 0, 0).unwrap();
        }
        assert_eq!(table.all[0].active_connections(), 3);
        assert_eq!(table.all[1].active_connections(), 3);
        table.release(0);
        assert_eq!(acq(&table, 0, 0, 0), Some(0));
    }

    #[test]
    fn sequential_connections_alternate() {
        let table = table(2);
        let picks: Vec<_> = (0..4)
            .map(|_| {
                let b = acq(&table, 0, 0, 0).unwrap();
                table.release(b);
                b
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn suspect_backends_are_avoided_until_nothing_else_is_left() {
        let table = table(2);
        table.mark_suspect(0, 1000);
        for _ in 0..3 {
            let b = acq(&table, 0, 0, 500).unwrap();
            assert_eq!(b, 1);
            table.release(b);
        }
        // Backend 1 already tried: the suspect one is still better than nothing.
        assert_eq!(acq(&table, 0, 0b10, 500), Some(0));
        // After the deadline it is a normal candidate again.
        table.release(0);
        assert!(acq(&table, 0, 0, 1000).is_some());
    }

    #[test]
    fn a_candidate_is_left_only_while_an_untried_healthy_backend_is() {
        let table = table(2);
        assert!(table.has_candidate(0, &mask(0b01)));
        assert!(!table.has_candidate(0, &mask(0b11)));
        // Suspect still counts: acquire falls back to it.
        table.mark_suspect(1, 1000);
        assert!(table.has_candidate(0, &mask(0b01)));
        table.all[1].server.up.store(false, Ordering::Relaxed);
        assert!(!table.has_candidate(0, &mask(0b01)));
    }

    #[test]
    fn a_backup_takes_connections_only_while_no_primary_can() {
        let mut config_table = table(3);
        // Backend 2 is the backup.
        let backup = &mut config_table.all[2];
        backup.backup = true;
        let table = config_table;
        for _ in 0..6 {
            let b = acq(&table, 0, 0, 0).unwrap();
            assert_ne!(b, 2, "a backup while primaries are up");
        }
        // One primary down: the other primary, still not the backup.
        table.all[0].server.up.store(false, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), Some(1));
        // Both primaries down: the backup.
        table.all[1].server.up.store(false, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), Some(2));
        // A primary back: new connections leave the backup again.
        table.all[0].server.up.store(true, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), Some(0));
        // A primary that refused this connection (tried) sends it to the backup.
        assert_eq!(acq(&table, 0, 0b001, 0), Some(2));
    }

    #[test]
    fn drained_and_disabled_backends_take_no_new_connections() {
        let table = table(2);
        assert_eq!(table.set_admin_state("127.0.0.1:3306", AdminState::Drain), 1);
        for _ in 0..4 {
            assert_eq!(acq(&table, 0, 0, 0), Some(1));
        }
        assert!(!table.has_candidate(0, &mask(0b10)));
        table.set_admin_state("127.0.0.1:3307", AdminState::Disabled);
        assert_eq!(acq(&table, 0, 0, 0), None);
        table.set_admin_state("127.0.0.1:3306", AdminState::Enabled);
        assert_eq!(acq(&table, 0, 0, 0), Some(0));
        assert_eq!(table.set_admin_state("db-09:3306", AdminState::Drain), 0);
    }

    #[test]
    fn down_backends_get_nothing() {
        let table = table(2);
        table.all[0].server.up.store(false, Ordering::Relaxed);
        table.all[1].server.up.store(false, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), None);
    }
}
