//! The data path: one worker per core, each with its own io_uring, listeners, connections and
//! pipe pool. See `worker.rs` for a connection's life.

pub mod bufring;
pub mod listener;
pub mod pipes;
pub mod probe;
pub mod worker;

/// What a worker needs to know beyond its sockets.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub id: usize,
    /// Core to pin to; `None` where the affinity could not be read.
    pub core: Option<core_affinity::CoreId>,
    /// Per listener index.
    pub connect_timeout_ms: Vec<u64>,
    /// Per listener index: the client networks allowed (empty: everyone).
    pub allow: Vec<Vec<crate::config::Cidr>>,
    pub tuning: crate::config::TuningConfig,
}
