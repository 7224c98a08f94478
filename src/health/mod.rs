//! Health checks. (Skeleton: see the helper task.)

use std::sync::Arc;
use std::thread::JoinHandle;

use crate::balance::Backends;
use crate::config::HealthConfig;

/// Starts the `health` thread, which probes every backend every `interval_ms` and writes each
/// backend's `live.up` atomic with rise/fall hysteresis.
pub fn spawn(config: HealthConfig, backends: Arc<Backends>) -> std::io::Result<JoinHandle<()>> {
    let _ = (config, backends);
    std::thread::Builder::new().name("health".into()).spawn(|| {})
}
