//! Counters and their snapshot.
//!
//! Traffic counters are per worker (each worker writes only its own cache lines, so counting a
//! message costs an uncontended add) and summed when the admin endpoint asks. Health and active
//! connections live in the shared backend table ([`crate::balance`]). [`Snapshot`] is the one
//! plain-data view that /metrics, /stats and `ringlb stats` all render.
//!
//! Latency histograms are per worker too ([`crate::balance::BackendStats`]), each behind a mutex
//! that only its worker and, for a merge, the admin thread take ([`SharedState::latency`]).

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::balance::{BackendTraffic, Backends};
use crate::config::Role;
use crate::shared::SharedState;

/// Everything one worker counts that belongs to no backend or listener; written only by that
/// worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub accepted: CachePadded<AtomicU64>,
    /// Client connections this worker holds right now (queued, connecting or relaying).
    pub open: CachePadded<AtomicU64>,
    /// Reads that found the provided-buffer ring empty and waited for a buffer to come back.
    pub buffer_waits: CachePadded<AtomicU64>,
    /// Submissions that found the submission queue full and waited in the worker's backlog.
    pub backlogged: CachePadded<AtomicU64>,
    /// Submissions waiting in the backlog right now.
    pub backlog: CachePadded<AtomicU64>,
    /// Times the completion queue was found full, its overflow held by the kernel.
    pub cq_overflows: CachePadded<AtomicU64>,
    /// Completions that matched no op in flight (a stale generation, a free slot, an unknown op,
    /// or more completions than submissions): each a bug, counted and logged, never fatal.
    pub accounting_errors: CachePadded<AtomicU64>,
}

impl SharedState {
    /// Reads every counter once. Counters are independent relaxed loads: a snapshot taken while
    /// traffic flows is consistent per counter, not across counters.
    pub fn snapshot(&self) -> Snapshot {
        let table = self.table();
        let backends = table
            .all
            .iter()
            .map(|b| {
                let sum = |f: fn(&BackendTraffic) -> &AtomicU64| -> u64 {
                    b.stats.traffic.iter().map(|t| f(t).load(Ordering::Relaxed)).sum()
                };
                let pool = table.listeners[b.listener].config.role;
                let server = &b.server;
                let in_role_pool = pool != Role::Any;
                BackendSnapshot {
                    role: b.role(pool).to_string(),
                    read_only: match server.read_only.load(Ordering::Relaxed) {
                        0 if in_role_pool => Some(false),
                        1 if in_role_pool => Some(true),
                        _ => None,
                    },
                    lag_s: server.lag().filter(|_| pool == Role::Reader),
                    galera_state: in_role_pool.then(|| server.galera_state.load(Ordering::Relaxed)),
                    why_not: why_not(&table, b),
                    backend: b.name.clone(),
                    listener: table.listeners[b.listener].config.name.clone(),
                    up: b.is_up(),
                    state: b.admin_state().as_str().to_string(),
                    weight: b.weight,
                    maxconn: b.maxconn,
                    active_connections: u64::from(b.active_connections()),
                    connections_total: sum(|t| &t.connections),
                    connect_errors_total: sum(|t| &t.connect_errors),
                    bytes_to_backend_total: sum(|t| &t.bytes_to_backend),
                    bytes_to_client_total: sum(|t| &t.bytes_to_client),
                }
            })
            .collect();
        let workers = self
            .workers
            .iter()
            .enumerate()
            .map(|(worker, w)| WorkerSnapshot {
                worker,
                accepted_total: w.accepted.load(Ordering::Relaxed),
                open: w.open.load(Ordering::Relaxed),
                buffer_waits_total: w.buffer_waits.load(Ordering::Relaxed),
                backlogged_total: w.backlogged.load(Ordering::Relaxed),
                backlog: w.backlog.load(Ordering::Relaxed),
                cq_overflows_total: w.cq_overflows.load(Ordering::Relaxed),
                accounting_errors_total: w.accounting_errors.load(Ordering::Relaxed),
            })
            .collect();
        let listeners = table
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let sum = |c: &[CachePadded<AtomicU64>]| c.iter().map(|v| v.load(Ordering::Relaxed)).sum();
                let group = table.all[table.pools[i].clone()]
                    .first()
                    .and_then(|b| b.writer.as_ref())
                    .map(|(group, _)| group);
                ListenerSnapshot {
                    role: l.config.role.as_str().to_string(),
                    writer: group.and_then(|g| g.writer_server()).map(|s| s.name.clone()),
                    writer_changes_total: group.map(|g| g.changes.load(Ordering::Relaxed)),
                    listener: l.config.name.clone(),
                    rejected_total: sum(&l.state.rejected),
                    queued: u64::from(l.state.queued.load(Ordering::Relaxed)),
                    queue_refused_total: sum(&l.state.queue_refused),
                    idle_closed_total: sum(&l.state.idle_closed),
                    redispatches_total: sum(&l.state.redispatches),
                    no_backend_total: sum(&l.state.no_backend),
                }
            })
            .collect();
        Snapshot {
            backends,
            workers,
            listeners,
            driver: self.driver.get().copied().unwrap_or_default().to_string(),
        }
    }
}

/// Why `b` qualifies for less than its pool asks, or nothing when it qualifies.
fn why_not(table: &Backends, b: &crate::balance::Backend) -> String {
    let listener = &table.listeners[b.listener].config;
    let read = |reason: &std::sync::Mutex<String>| reason.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match listener.role {
        Role::Any => String::new(),
        Role::Writer if b.is_writer() => String::new(),
        Role::Writer if b.admin_state() != crate::balance::AdminState::Enabled => {
            format!("set to {} by the operator", b.admin_state().as_str())
        }
        Role::Writer => match read(&b.server.not_writer) {
            why if why.is_empty() => "qualifies; another server holds the role".to_string(),
            why => why,
        },
        Role::Reader => {
            let not_reader = read(&b.server.not_reader);
            if !not_reader.is_empty() {
                not_reader
            } else if !b.live.lag_in.load(Ordering::Relaxed) {
                let lag = b.server.lag().map_or("unknown".to_string(), |l| format!("{l} s"));
                format!(
                    "lag {lag} went over max_lag_s {}; back at {} s or less",
                    listener.max_lag_s, listener.lag_return_s
                )
            } else {
                String::new()
            }
        }
    }
}

/// Plain-data view of all counters; also the JSON body of `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub backends: Vec<BackendSnapshot>,
    pub workers: Vec<WorkerSnapshot>,
    #[serde(default)]
    pub listeners: Vec<ListenerSnapshot>,
    /// The workers' I/O driver: "io_uring" or "epoll" (empty before they start).
    #[serde(default)]
    pub driver: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSnapshot {
    pub listener: String,
    /// "any", "writer" or "reader".
    #[serde(default)]
    pub role: String,
    /// A writer pool's writer now ("HOST:PORT" as configured); none while no server qualifies.
    #[serde(default)]
    pub writer: Option<String>,
    /// A writer pool's changes of writer since start-up (shared by the pools over its servers).
    #[serde(default)]
    pub writer_changes_total: Option<u64>,
    /// Clients closed at accept because `allow` left them out.
    pub rejected_total: u64,
    /// Clients waiting for a backend under its `maxconn` right now.
    #[serde(default)]
    pub queued: u64,
    /// Clients refused because the queue was full or their wait ran out.
    #[serde(default)]
    pub queue_refused_total: u64,
    /// Connections closed by `idle_timeout_ms`.
    #[serde(default)]
    pub idle_closed_total: u64,
    /// Clients moved to another backend after theirs failed before its first byte.
    #[serde(default)]
    pub redispatches_total: u64,
    /// Clients closed with "no backend available".
    #[serde(default)]
    pub no_backend_total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    /// "HOST:PORT" as configured.
    pub backend: String,
    pub listener: String,
    pub up: bool,
    /// What it is in its pool now: "writer", "reader", "primary" (a reader pool's fallback),
    /// "none" (in a role pool, qualifying for nothing) or "any" (a pool without a role).
    #[serde(default)]
    pub role: String,
    /// In a role pool: `read_only` (or `super_read_only`) at the last check, once read.
    #[serde(default)]
    pub read_only: Option<bool>,
    /// In a reader pool: the replica's lag at the last check, when it reports one.
    #[serde(default)]
    pub lag_s: Option<u64>,
    /// In a role pool: Galera's `wsrep_local_state` (4 Synced, 2 Donor/Desynced; 0 no Galera).
    #[serde(default)]
    pub galera_state: Option<u8>,
    /// In a role pool: why the server qualifies for less than the pool asks (empty: it does).
    #[serde(default)]
    pub why_not: String,
    /// The operator's state: enabled, drain or disabled.
    #[serde(default)]
    pub state: String,
    pub weight: u32,
    /// 0: no limit.
    #[serde(default)]
    pub maxconn: u32,
    pub active_connections: u64,
    pub connections_total: u64,
    pub connect_errors_total: u64,
    pub bytes_to_backend_total: u64,
    pub bytes_to_client_total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub accepted_total: u64,
    /// Client connections held right now.
    #[serde(default)]
    pub open: u64,
    /// What explains a stall (see [`WorkerStats`]).
    #[serde(default)]
    pub buffer_waits_total: u64,
    #[serde(default)]
    pub backlogged_total: u64,
    #[serde(default)]
    pub backlog: u64,
    #[serde(default)]
    pub cq_overflows_total: u64,
    #[serde(default)]
    pub accounting_errors_total: u64,
}
