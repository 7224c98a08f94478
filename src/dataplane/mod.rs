//! The data path: one worker per core, each with its own I/O driver, listeners, connections and
//! pipe pool.
//!
//! - `conn`: a client connection as a pure state machine (events in, intents out);
//! - `worker`: the loop that feeds each machine and carries out its intents, with its jobs in
//!   `worker/` (accept, backend, queue, control);
//! - `driver`: the seam between a worker and its I/O; `uring` and `epoll`, the two drivers;
//! - `bufring`, `pipes`: the receive buffers and the splice pipes;
//! - `listener`, `probe`: the listening sockets, and the start-up choice of a driver.

pub mod bufring;
pub mod conn;
pub mod driver;
pub mod epoll;
pub mod listener;
pub mod pipes;
pub mod probe;
pub mod uring;
pub mod worker;

/// The I/O driver the workers run, once `[tuning] driver` is resolved ([`probe::choose`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Epoll,
}

impl DriverKind {
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        }
    }
}

/// What a worker needs to know beyond its sockets and the shared table.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: usize,
    pub driver: DriverKind,
    /// Core to pin to; `None` where the affinity could not be read.
    pub core: Option<core_affinity::CoreId>,
    pub tuning: crate::config::TuningConfig,
}
