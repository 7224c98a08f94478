//! Per-backend latency histograms (placeholder until the histogram module lands).

/// Connect, first-byte and lifetime histograms of one backend on one worker, in microseconds.
#[derive(Debug, Clone)]
pub struct Latency {
    pub connect: hdrhistogram::Histogram<u64>,
    pub first_byte: hdrhistogram::Histogram<u64>,
    pub lifetime: hdrhistogram::Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        let h = || hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
        Latency {
            connect: h(),
            first_byte: h(),
            lifetime: h(),
        }
    }
    pub fn record_connect(&mut self, us: u64) {
        self.connect.saturating_record(us.max(1));
    }
    pub fn record_first_byte(&mut self, us: u64) {
        self.first_byte.saturating_record(us.max(1));
    }
    pub fn record_lifetime(&mut self, us: u64) {
        self.lifetime.saturating_record(us.max(1));
    }
}

impl Latency {
    pub fn add(&mut self, other: &Latency) {
        let _ = self.connect.add(&other.connect);
        let _ = self.first_byte.add(&other.first_byte);
        let _ = self.lifetime.add(&other.lifetime);
    }
}

/// One backend's merged histograms.
#[derive(Debug, Clone)]
pub struct BackendLatency {
    pub listener: String,
    pub backend: String,
    pub latency: Latency,
}

/// Writes the histograms to `path` (replaced when the histogram module lands).
pub fn dump_to_file(_path: &std::path::Path, _entries: &[BackendLatency]) -> std::io::Result<()> {
    Err(std::io::Error::other("not yet"))
}
