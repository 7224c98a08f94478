//! A process-wide monotonic millisecond clock, cheap enough for the data path and comparable
//! across threads (suspect deadlines are written by one worker and read by all).

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process.
pub fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Microseconds since the first call in this process (latency histograms).
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}
