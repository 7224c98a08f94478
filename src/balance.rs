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

use crate::config::{Balance, Config, ListenerConfig};
use crate::stats::BackendTraffic;

/// The atomics one backend's state lives in; written by workers and the health checker.
#[derive(Debug, Default)]
pub struct BackendLive {
    /// Health checker's verdict (with rise/fall hysteresis applied).
    pub up: AtomicBool,
    /// Connections open to this backend right now, over all workers: the least-connections key.
    pub active_connections: AtomicU32,
    /// A failed connect marks the backend suspect until this instant (ms on [`crate::clock`]),
    /// so other connections skip it at once instead of each waiting for its own failure.
    pub suspect_until_ms: AtomicU64,
    /// What the operator set: [`AdminState`] as a byte. Anything but enabled takes no new
    /// connection; connections already open finish as they would.
    pub admin_state: AtomicU8,
    /// Set when a reload removed the backend: its health checker stops.
    pub retired: AtomicBool,
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
    pub stats: Arc<BackendStats>,
}

impl Backend {
    pub fn is_up(&self) -> bool {
        self.live.up.load(Ordering::Relaxed)
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
}

impl Backends {
    /// Builds the table; every backend starts up (the first failed check takes it down at once).
    pub fn from_config(config: &Config) -> Self {
        Self::build(config, None)
    }

    /// The table for a reloaded `config`: what stays shares its state with `self`.
    pub fn rebuild(&self, config: &Config) -> Self {
        Self::build(config, Some(self))
    }

    fn build(config: &Config, old: Option<&Backends>) -> Self {
        let workers = config.workers;
        let mut all = Vec::new();
        let mut pools = Vec::new();
        let mut listeners = Vec::new();
        for (l, listener) in config.listeners.iter().enumerate() {
            let old_listener = old.and_then(|old| {
                old.listeners
                    .iter()
                    .position(|o| o.config.name == listener.name)
                    .map(|i| (old, i))
            });
            // A backend keeps its state (and its health checker) only while what the checker
            // sends stays the same: a PROXY header setting change starts a new checker.
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
                    None => {
                        let live = BackendLive::default();
                        live.up.store(true, Ordering::Relaxed);
                        (
                            Arc::new(CachePadded::new(live)),
                            Arc::new(BackendStats::new(workers)),
                        )
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
                });
            }
            pools.push(start..all.len());
            let state = match old_listener {
                Some((old, i)) => old.listeners[i].state.clone(),
                None => Arc::new(ListenerState::new(workers)),
            };
            listeners.push(Listener {
                config: listener.clone(),
                state,
            });
        }
        Backends {
            all: all.into_boxed_slice(),
            rotors: pools
                .iter()
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            modes: config.listeners.iter().map(|l| l.balance).collect(),
            pools: pools.into_boxed_slice(),
            listeners: listeners.into_boxed_slice(),
        }
    }

    /// Backends of `self` that `next` no longer has (by their shared state).
    pub fn removed_in<'a>(&'a self, next: &'a Backends) -> impl Iterator<Item = &'a Backend> + 'a {
        self.all
            .iter()
            .filter(move |b| !next.all.iter().any(|n| Arc::ptr_eq(&n.live, &b.live)))
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
    pub fn acquire(&self, listener: usize, tried: &Tried, now_ms: u64) -> Pick {
        let pool = self.pools[listener].clone();
        let rotor = self.rotors[listener].fetch_add(1, Ordering::Relaxed);
        let backends = &self.all[pool.clone()];
        let pick_in = match self.modes[listener] {
            Balance::Leastconn => choose,
            Balance::Roundrobin => choose_round_robin,
        };
        // Backends that filled up between the choice and the count, passed over on the next try.
        let mut excluded = tried.clone();
        for _ in 0..=backends.len() {
            // In order of preference: healthy primaries, then primaries a recent connect failed
            // on (they may have recovered before their check says so), then the same for backups.
            let candidate = |pos: usize, skip_suspect: bool, backup: bool| {
                let b = &backends[pos];
                let suspect = skip_suspect && b.live.suspect_until_ms.load(Ordering::Relaxed) > now_ms;
                Candidate {
                    up: b.takes_connections() && !suspect && b.backup == backup && !b.full(),
                    active: b.active_connections(),
                    weight: b.weight,
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
            .any(|(pos, b)| !tried.contains(pos) && b.takes_connections() && b.maxconn > 0);
        if waitable {
            Pick::Full
        } else {
            Pick::None
        }
    }

    /// Whether a healthy backend of `listener` not in `tried` is left to try, suspect or not:
    /// [`Backends::acquire`] falls back to suspect backends before it gives up.
    pub fn has_candidate(&self, listener: usize, tried: &Tried) -> bool {
        self.all[self.pools[listener].clone()]
            .iter()
            .enumerate()
            .any(|(pos, b)| !tried.contains(pos) && b.takes_connections() && !b.full())
    }

    /// Sets the operator's state of every backend named `name` (in any listener); returns how
    /// many there were.
    pub fn set_admin_state(&self, name: &str, state: AdminState) -> usize {
        let matching = self.all.iter().filter(|b| b.name == name);
        let mut count = 0;
        for b in matching {
            b.live.admin_state.store(state as u8, Ordering::Relaxed);
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
            .live
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

/// Least connections: among eligible candidates (up, not yet tried) the smallest
/// `active / weight` (`candidate(pos)` for positions `0..n`), compared exactly by cross-multiplication; ties go to the first one at or
/// after position `rotor % n`, so equal backends take turns. Returns the position in the pool.
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
                u64::from(c.active) * u64::from(b.weight) < u64::from(b.active) * u64::from(c.weight)
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
        // 4 active on weight 3 (1.33 each) beats 2 active on weight 1.
        let heavy = Candidate {
            up: true,
            active: 4,
            weight: 3,
        };
        assert_eq!(pick(&[up(2), heavy], 0, 0), Some(1));
        // 7 on weight 3 (2.33) loses to 2 on weight 1.
        let busier = Candidate { active: 7, ..heavy };
        assert_eq!(pick(&[up(2), busier], 0, 0), Some(0));
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
        table.all[1].live.up.store(false, Ordering::Relaxed);
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
        table.all[0].live.up.store(false, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), Some(1));
        // Both primaries down: the backup.
        table.all[1].live.up.store(false, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), Some(2));
        // A primary back: new connections leave the backup again.
        table.all[0].live.up.store(true, Ordering::Relaxed);
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
        table.all[0].live.up.store(false, Ordering::Relaxed);
        table.all[1].live.up.store(false, Ordering::Relaxed);
        assert_eq!(acq(&table, 0, 0, 0), None);
    }
}
