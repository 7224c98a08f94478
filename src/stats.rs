//! Counters and their snapshot.
//!
//! Traffic counters are per worker (each worker writes only its own cache lines, so counting a
//! message costs an uncontended add) and summed when the admin endpoint asks. Health and active
//! connections live in the shared backend table ([`crate::balance`]). [`Snapshot`] is the one
//! plain-data view that /metrics, /stats and `ringlb stats` all render.
//!
//! Latency histograms are per worker too, each behind a mutex that only its worker and, for a
//! merge, the admin thread take ([`Shared::latency`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::balance::Backends;
use crate::latency::{BackendLatency, Latency};

/// One worker's counters for one backend.
#[derive(Debug, Default)]
pub struct BackendTraffic {
    pub connections: AtomicU64,
    pub connect_errors: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// This worker's connect, first-byte and lifetime histograms for the backend. Only this
    /// worker records (so its lock is uncontended but for a merge); [`Shared::latency`] merges.
    pub latency: std::sync::Mutex<Latency>,
}

/// Everything one worker counts; written only by that worker.
#[derive(Debug)]
pub struct WorkerStats {
    pub accepted: CachePadded<AtomicU64>,
    pub backends: Box<[CachePadded<BackendTraffic>]>,
    /// Per listener: clients closed at accept because the listener's `allow` left them out.
    pub rejected: Box<[AtomicU64]>,
}

impl WorkerStats {
    pub fn new(backends: usize, listeners: usize) -> Self {
        WorkerStats {
            accepted: CachePadded::new(AtomicU64::new(0)),
            backends: (0..backends)
                .map(|_| CachePadded::new(BackendTraffic::default()))
                .collect(),
            rejected: (0..listeners).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// State every thread can read: the backend table and each worker's counters.
#[derive(Debug)]
pub struct Shared {
    pub backends: Arc<Backends>,
    pub workers: Box<[WorkerStats]>,
    /// Listener names, by listener index.
    pub listeners: Box<[String]>,
    /// Written by the HA thread after each event; `enabled: false` without `[ha]`.
    pub ha: std::sync::Mutex<crate::ha::status::HaStatus>,
    /// Set at shutdown: workers stop accepting and do not re-arm accept.
    pub stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn new(backends: Arc<Backends>, workers: usize, listeners: Vec<String>) -> Self {
        let n = backends.len();
        Shared {
            backends,
            workers: (0..workers)
                .map(|_| WorkerStats::new(n, listeners.len()))
                .collect(),
            listeners: listeners.into_boxed_slice(),
            ha: Default::default(),
            stopping: Default::default(),
        }
    }

    /// Reads every counter once. Counters are independent relaxed loads: a snapshot taken while
    /// traffic flows is consistent per counter, not across counters.
    pub fn snapshot(&self) -> Snapshot {
        let backends = self
            .backends
            .all
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let sum = |f: fn(&BackendTraffic) -> &AtomicU64| -> u64 {
                    self.workers
                        .iter()
                        .map(|w| f(&w.backends[i]).load(Ordering::Relaxed))
                        .sum()
                };
                BackendSnapshot {
                    backend: b.name.clone(),
                    listener: self.listeners[b.listener].clone(),
                    up: b.is_up(),
                    state: b.admin_state().as_str().to_string(),
                    weight: b.weight,
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
            })
            .collect();
        let listeners = self
            .listeners
            .iter()
            .enumerate()
            .map(|(l, name)| ListenerSnapshot {
                listener: name.clone(),
                rejected_total: self
                    .workers
                    .iter()
                    .map(|w| w.rejected[l].load(Ordering::Relaxed))
                    .sum(),
            })
            .collect();
        Snapshot {
            backends,
            workers,
            listeners,
        }
    }

    /// Each backend's latency histograms, merged over the workers, in backend-table order. Each
    /// worker's lock is held only while its histograms are added.
    pub fn latency(&self) -> Vec<BackendLatency> {
        self.backends
            .all
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut latency = Latency::new();
                for w in self.workers.iter() {
                    // A worker that panicked mid-record leaves counts that are still counts.
                    let recorded = w.backends[i]
                        .latency
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    latency.add(&recorded);
                }
                BackendLatency {
                    listener: self.listeners[b.listener].clone(),
                    backend: b.name.clone(),
                    latency,
                }
            })
            .collect()
    }
}

/// Plain-data view of all counters; also the JSON body of `GET /stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub backends: Vec<BackendSnapshot>,
    pub workers: Vec<WorkerSnapshot>,
    #[serde(default)]
    pub listeners: Vec<ListenerSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSnapshot {
    pub listener: String,
    /// Clients closed at accept because `allow` left them out.
    pub rejected_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    /// "HOST:PORT" as configured.
    pub backend: String,
    pub listener: String,
    pub up: bool,
    /// The operator's state: enabled, drain or disabled.
    #[serde(default)]
    pub state: String,
    pub weight: u32,
    pub active_connections: u64,
    pub connections_total: u64,
    pub connect_errors_total: u64,
    pub bytes_to_backend_total: u64,
    pub bytes_to_client_total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub worker: usize,
    pub accepted_total: u64,
}
