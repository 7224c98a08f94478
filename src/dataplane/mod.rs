//! The data path: one worker per core, each with its own io_uring, listeners, connections and
//! pipe pool. See `worker.rs` for a connection's life.

pub mod bufring;
pub mod listener;
pub mod pipes;
pub mod probe;
pub mod worker;

/// What a worker needs to know beyond its sockets and the shared table.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: usize,
    /// Core to pin to; `None` where the affinity could not be read.
    pub core: Option<core_affinity::CoreId>,
    pub tuning: crate::config::TuningConfig,
}
