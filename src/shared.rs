//! [`SharedState`]: what the threads of one ringlb process share.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::balance::Backends;
use crate::latency::{BackendLatency, Latency};
use crate::stats::WorkerStats;

/// What every thread of a running ringlb shares: the backend table new connections use, the
/// workers' wakers and counters, the HA status, the stop flag, the writer-change epoch and the
/// driver in use. The workers, health checkers, HA thread, admin endpoint and reload all hold one
/// `Arc` of it; its snapshot for the views is [`crate::stats`]'s.
#[derive(Debug)]
pub struct SharedState {
    /// The table new connections use; replaced whole by a reload.
    table: RwLock<Arc<Backends>>,
    pub workers: Box<[WorkerStats]>,
    /// Per worker: an eventfd that wakes it (a reload for it, a queue slot freed elsewhere).
    wakers: Box<[OwnedFd]>,
    /// Written by the HA thread after each event; `enabled: false` without `[ha]`.
    pub ha: std::sync::Mutex<crate::ha::status::HaStatus>,
    /// Set at shutdown: workers stop accepting and do not re-arm accept.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Bumped when a writer pool's writer changes and a pool asks for the connections to the
    /// former writer to be closed: each worker then closes its connections of writer pools to a
    /// backend that is not its pool's writer.
    pub writer_changes: AtomicU64,
    /// The workers' I/O driver, set once at start-up ("io_uring" or "epoll").
    pub driver: OnceLock<&'static str>,
}

impl SharedState {
    pub fn new(backends: Arc<Backends>, workers: usize) -> io::Result<Self> {
        let wakers = (0..workers)
            .map(|_| {
                // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was just created and is owned by nothing else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect::<io::Result<_>>()?;
        Ok(SharedState {
            table: RwLock::new(backends),
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
            wakers,
            ha: Default::default(),
            stopping: Default::default(),
            writer_changes: AtomicU64::new(0),
            driver: OnceLock::new(),
        })
    }

    /// The table new connections use now.
    pub fn table(&self) -> Arc<Backends> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `table` the one [`SharedState::table`] returns (workers get it by message).
    pub fn set_table(&self, table: Arc<Backends>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The descriptor worker `worker` polls to be woken.
    pub fn waker(&self, worker: usize) -> RawFd {
        self.wakers[worker].as_raw_fd()
    }

    /// Wakes worker `worker`; coalesces with wakes it has not seen yet.
    pub fn wake(&self, worker: usize) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this struct owns.
        unsafe { libc::write(self.waker(worker), (&one as *const u64).cast(), 8) };
    }

    /// A writer changed in a pool with `on_writer_change = "close"`: every worker is woken to
    /// close its connections to former writers.
    pub fn writer_changed(&self) {
        self.writer_changes.fetch_add(1, Ordering::Release);
        for worker in 0..self.wakers.len() {
            self.wake(worker);
        }
    }

    /// Client connections open over all workers.
    pub fn open_connections(&self) -> u64 {
        self.workers.iter().map(|w| w.open.load(Ordering::Relaxed)).sum()
    }

    /// Merged latency histograms of every backend in the current table.
    pub fn latency(&self) -> Vec<BackendLatency> {
        let table = self.table();
        table
            .all
            .iter()
            .map(|b| {
                let mut latency = Latency::new();
                for per_worker in b.stats.latency.iter() {
                    latency.add(&per_worker.lock().unwrap_or_else(|e| e.into_inner()));
                }
                BackendLatency {
                    listener: table.listeners[b.listener].config.name.clone(),
                    backend: b.name.clone(),
                    latency,
                }
            })
            .collect()
    }
}
