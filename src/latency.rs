//! Per-backend latency histograms: what the workers record, their merge, their percentiles, and
//! the HdrHistogram interval log tools read ([`hdr_log`], [`dump_to_file`] for SIGUSR1). The
//! views for people and Prometheus are the admin endpoint's ([`crate::admin::histograms`]).
//!
//! Each worker keeps one [`Latency`] per backend (in the backend's
//! [`crate::balance::BackendStats::latency`], one per worker) and records into it alone; the
//! admin thread merges them per backend into [`BackendLatency`] values, which every view
//! renders. All values are microseconds.
//!
//! # Precision and memory
//!
//! The histograms have [`SIGNIFICANT_DIGITS`] = 2: a value is kept to within 1/128 of itself (under
//! 0.8 %), finer than the three significant digits the table prints. Their size is fixed at
//! creation, so recording never allocates: about 26 KiB each for connect and first byte (1 µs to
//! 1 hour) and 36 KiB for lifetime (1 µs to 30 days), 88 KiB per [`Latency`]. With three
//! significant digits the same ranges would take 630 KiB per `Latency`, which times workers times
//! backends is more than the rest of ringlb's heap.
//!
//! # Invariants
//!
//! Recording clamps out-of-range values to the range and never fails or panics; merging never
//! fails either. Histograms only grow, so the Prometheus buckets, sums and counts are counters.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Each value is kept to within 1/128 of itself; see the module documentation for the memory.
pub const SIGNIFICANT_DIGITS: u8 = 2;
/// The largest connect and first-byte time kept: one hour. Longer values count as one hour.
pub const MAX_CONNECT_US: u64 = 3_600 * 1_000_000;
pub const MAX_FIRST_BYTE_US: u64 = MAX_CONNECT_US;
/// The largest connection lifetime kept: 30 days. Longer values count as 30 days.
pub const MAX_LIFETIME_US: u64 = 30 * 24 * 3_600 * 1_000_000;

/// What a histogram measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The backend's TCP connect time.
    Connect,
    /// From a client's request to the backend's first response byte.
    FirstByte,
    /// A relayed connection's lifetime.
    Lifetime,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Connect, Kind::FirstByte, Kind::Lifetime];

    /// The name in tables, tags, JSON and metric names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::FirstByte => "first_byte",
            Kind::Lifetime => "lifetime",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The largest value kept; larger ones are recorded as this.
    pub fn max_us(self) -> u64 {
        match self {
            Kind::Connect => MAX_CONNECT_US,
            Kind::FirstByte => MAX_FIRST_BYTE_US,
            Kind::Lifetime => MAX_LIFETIME_US,
        }
    }
}

/// The three histograms of one backend, as one worker records them or as merged for display.
#[derive(Clone)]
pub struct Latency {
    connect: Histogram<u64>,
    first_byte: Histogram<u64>,
    lifetime: Histogram<u64>,
    /// When recording began: the start of the interval an HdrHistogram log reports. A merge keeps
    /// the earliest.
    since: SystemTime,
}

/// Counts only: the histograms' thousands of counters would drown any `{:?}` of the stats.
impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latency")
            .field("connect", &self.connect.len())
            .field("first_byte", &self.first_byte.len())
            .field("lifetime", &self.lifetime.len())
            .field("since", &self.since)
            .finish()
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Latency {
            connect: histogram(MAX_CONNECT_US),
            first_byte: histogram(MAX_FIRST_BYTE_US),
            lifetime: histogram(MAX_LIFETIME_US),
            since: SystemTime::now(),
        }
    }

    pub fn record_connect(&mut self, us: u64) {
        self.record(Kind::Connect, us);
    }

    pub fn record_first_byte(&mut self, us: u64) {
        self.record(Kind::FirstByte, us);
    }

    pub fn record_lifetime(&mut self, us: u64) {
        self.record(Kind::Lifetime, us);
    }

    /// Records one value; one above [`Kind::max_us`] is recorded as the maximum.
    pub fn record(&mut self, kind: Kind, us: u64) {
        self.histogram_mut(kind).saturating_record(us);
    }

    /// Adds `other`'s values to these.
    pub fn add(&mut self, other: &Latency) {
        for kind in Kind::ALL {
            let source = other.histogram(kind);
            let target = self.histogram_mut(kind);
            // Fails only for a source with a wider range than ours, before changing anything;
            // then its values are clamped one by one like recorded ones.
            if target.add(source).is_err() {
                for value in source.iter_recorded() {
                    target.saturating_record_n(value.value_iterated_to(), value.count_at_value());
                }
            }
        }
        self.since = self.since.min(other.since);
    }

    pub fn is_empty(&self) -> bool {
        Kind::ALL.iter().all(|&k| self.histogram(k).is_empty())
    }

    pub fn histogram(&self, kind: Kind) -> &Histogram<u64> {
        match kind {
            Kind::Connect => &self.connect,
            Kind::FirstByte => &self.first_byte,
            Kind::Lifetime => &self.lifetime,
        }
    }

    fn histogram_mut(&mut self, kind: Kind) -> &mut Histogram<u64> {
        match kind {
            Kind::Connect => &mut self.connect,
            Kind::FirstByte => &mut self.first_byte,
            Kind::Lifetime => &mut self.lifetime,
        }
    }

    /// When recording began.
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// Bytes the three histograms' counters take.
    pub fn heap_bytes(&self) -> usize {
        Kind::ALL
            .iter()
            .map(|&k| self.histogram(k).distinct_values() * std::mem::size_of::<u64>())
            .sum()
    }
}

fn histogram(max_us: u64) -> Histogram<u64> {
    // Bounds and digits are constants that a unit test creates too.
    Histogram::new_with_bounds(1, max_us, SIGNIFICANT_DIGITS).expect("constant histogram bounds are valid")
}

/// One backend of one listener and its merged histograms: what every view renders.
#[derive(Debug, Clone)]
pub struct BackendLatency {
    pub listener: String,
    /// "HOST:PORT" as configured.
    pub backend: String,
    pub latency: Latency,
}

/// The summary of one histogram in `GET /histogram?format=json`. Percentiles are `None` (null)
/// when nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl Percentiles {
    /// Each percentile is the highest value equivalent to the one at that quantile, so a
    /// percentile is never below the values it covers.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let at = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
        Percentiles {
            count: h.len(),
            p50_us: at(0.5),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: (!h.is_empty()).then(|| h.max()),
        }
    }
}

/// One backend in `GET /histogram?format=json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendPercentiles {
    pub listener: String,
    pub backend: String,
    pub connect: Percentiles,
    pub first_byte: Percentiles,
    pub lifetime: Percentiles,
}

/// The body of `GET /histogram?format=json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PercentilesReport {
    pub backends: Vec<BackendPercentiles>,
}

/// The summaries `GET /histogram?format=json` serves.
pub fn percentiles(entries: &[BackendLatency]) -> PercentilesReport {
    PercentilesReport {
        backends: entries
            .iter()
            .map(|e| BackendPercentiles {
                listener: e.listener.clone(),
                backend: e.backend.clone(),
                connect: Percentiles::of(e.latency.histogram(Kind::Connect)),
                first_byte: Percentiles::of(e.latency.histogram(Kind::FirstByte)),
                lifetime: Percentiles::of(e.latency.histogram(Kind::Lifetime)),
            })
            .collect(),
    }
}

/// An HdrHistogram interval log: one interval from `start` to `end` per backend and kind, each a
/// deflate-compressed V2 histogram tagged as [`tag`] says. `StartTime` and `BaseTime` are `start`,
/// so each interval starts at 0; the max column is in milliseconds (`MaxValueDivisor` 1000),
/// the histograms in microseconds.
pub fn hdr_log(entries: &[BackendLatency], start: SystemTime, end: SystemTime) -> Vec<u8> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let duration = end.duration_since(start).unwrap_or(Duration::ZERO);
    let writer = IntervalLogWriterBuilder::new()
        .add_comment("ringlb latency histograms, values in microseconds")
        .add_comment("tags: listener=NAME;backend=HOST:PORT;kind=connect|first_byte|lifetime (%XX escapes , ; = % and spaces)")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut serializer);
    // Writing to a Vec cannot fail.
    let Ok(mut writer) = writer else {
        return out;
    };
    for e in entries {
        for kind in Kind::ALL {
            let tag = tag(&e.listener, &e.backend, kind);
            // The tag escapes every character a tag may not hold, so Tag::new accepts it.
            let result = writer.write_histogram(
                e.latency.histogram(kind),
                Duration::ZERO,
                duration,
                Tag::new(&tag),
            );
            // Serializing fails only for counts above i64::MAX; keep the log readable and say so.
            if let Err(err) = result {
                let _ = writer.write_comment(&format!("{tag}: not written: {err}"));
            }
        }
    }
    out
}

/// The tag of one interval in [`hdr_log`]: `listener=NAME;backend=HOST:PORT;kind=KIND`. Names are
/// escaped as `%XX` (UTF-8 bytes) where they hold `%`, `;`, `=`, `,`, whitespace or a control
/// character, which interval-log tags may not contain or this format uses; [`parse_tag`] undoes it.
pub fn tag(listener: &str, backend: &str, kind: Kind) -> String {
    format!(
        "listener={};backend={};kind={}",
        escape_tag_value(listener),
        escape_tag_value(backend),
        kind.as_str()
    )
}

/// Reads a [`tag`] back: listener, backend and kind; `None` for anything else.
pub fn parse_tag(tag: &str) -> Option<(String, String, Kind)> {
    let mut fields = tag.split(';');
    let listener = fields.next()?.strip_prefix("listener=")?;
    let backend = fields.next()?.strip_prefix("backend=")?;
    let kind = Kind::parse(fields.next()?.strip_prefix("kind=")?)?;
    if fields.next().is_some() {
        return None;
    }
    Some((unescape_tag_value(listener)?, unescape_tag_value(backend)?, kind))
}

fn escape_tag_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '%' | ';' | '=' | ',') || c.is_whitespace() || c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape_tag_value(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The earliest start of recording among `entries`, or now when there are none.
pub fn earliest_since(entries: &[BackendLatency]) -> SystemTime {
    entries
        .iter()
        .map(|e| e.latency.since())
        .min()
        .unwrap_or_else(SystemTime::now)
}

/// Writes [`hdr_log`] of `entries` (from the earliest start of recording to now) to `path`
/// atomically: a temporary file in the same directory, flushed to disk, then renamed over `path`,
/// so a reader sees the old log or the new one, never a part. Errors name the path.
pub fn dump_to_file(path: &Path, entries: &[BackendLatency]) -> io::Result<()> {
    let log = hdr_log(entries, earliest_since(entries), SystemTime::now());
    write_atomically(path, &log).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    /// Two dumps at once (two signals) must not share a temporary file.
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a file name"));
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temporary: PathBuf = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    fn entry(listener: &str, backend: &str, latency: Latency) -> BackendLatency {
        BackendLatency {
            listener: listener.into(),
            backend: backend.into(),
            latency,
        }
    }

    /// True when `value` is within the histograms' resolution of `expected`.
    fn close(value: u64, expected: u64) -> bool {
        value.abs_diff(expected) <= expected / 128 + 1
    }

    #[test]
    fn percentiles_of_uniform_data_are_within_resolution() {
        let mut l = Latency::new();
        for us in 1..=100_000 {
            l.record_first_byte(us);
        }
        let p = Percentiles::of(l.histogram(Kind::FirstByte));
        assert_eq!(p.count, 100_000);
        for (got, expected) in [
            (p.p50_us, 50_000),
            (p.p90_us, 90_000),
            (p.p99_us, 99_000),
            (p.p999_us, 99_900),
            (p.max_us, 100_000),
        ] {
            let got = got.unwrap();
            assert!(close(got, expected), "{got} vs {expected}");
            assert!(
                got >= expected,
                "a percentile covers its values: {got} < {expected}"
            );
        }
        assert!(l.histogram(Kind::Connect).is_empty());
    }

    #[test]
    fn small_values_are_exact() {
        let mut l = Latency::new();
        for us in [1, 2, 3, 100, 200] {
            l.record_connect(us);
        }
        let p = Percentiles::of(l.histogram(Kind::Connect));
        assert_eq!(
            p,
            Percentiles {
                count: 5,
                p50_us: Some(3),
                p90_us: Some(200),
                p99_us: Some(200),
                p999_us: Some(200),
                max_us: Some(200),
            }
        );
    }

    #[test]
    fn empty_histograms_have_a_count_and_no_percentiles() {
        let l = Latency::new();
        assert!(l.is_empty());
        assert_eq!(
            Percentiles::of(l.histogram(Kind::Lifetime)),
            Percentiles {
                count: 0,
                p50_us: None,
                p90_us: None,
                p99_us: None,
                p999_us: None,
                max_us: None,
            }
        );
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut l = Latency::new();
        l.record_connect(u64::MAX);
        l.record_first_byte(MAX_FIRST_BYTE_US + 1);
        l.record_lifetime(u64::MAX);
        l.record_lifetime(0);
        l.record_connect(0);
        assert!(!l.is_empty());
        let connect = l.histogram(Kind::Connect);
        assert_eq!(connect.len(), 2);
        assert_eq!(connect.min(), 0);
        assert!(close(connect.max(), MAX_CONNECT_US), "{}", connect.max());
        assert!(close(l.histogram(Kind::FirstByte).max(), MAX_FIRST_BYTE_US));
        let lifetime = l.histogram(Kind::Lifetime);
        assert_eq!(lifetime.len(), 2);
        assert!(close(lifetime.max(), MAX_LIFETIME_US), "{}", lifetime.max());
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_earliest_start() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        b.since = a.since - Duration::from_secs(60);
        for us in 1..=100 {
            a.record_connect(us);
            b.record_connect(us + 100);
            b.record_lifetime(us * 1_000_000);
        }
        let mut merged = Latency::new();
        merged.add(&a);
        merged.add(&b);
        assert_eq!(merged.since(), b.since);
        let connect = Percentiles::of(merged.histogram(Kind::Connect));
        assert_eq!(
            (connect.count, connect.p50_us, connect.max_us),
            (200, Some(100), Some(200))
        );
        assert_eq!(merged.histogram(Kind::Lifetime).len(), 100);
        assert!(merged.histogram(Kind::FirstByte).is_empty());
        // Adding again keeps adding; adding an empty one changes nothing.
        merged.add(&a);
        merged.add(&Latency::new());
        assert_eq!(merged.histogram(Kind::Connect).len(), 300);
    }

    #[test]
    fn merge_clamps_a_wider_histogram_instead_of_failing() {
        let mut wide = Latency::new();
        wide.connect = Histogram::new_with_bounds(1, MAX_LIFETIME_US, 3).unwrap();
        wide.connect.record(MAX_LIFETIME_US).unwrap();
        wide.connect.record(5).unwrap();
        let mut merged = Latency::new();
        merged.add(&wide);
        let connect = merged.histogram(Kind::Connect);
        assert_eq!(connect.len(), 2);
        assert!(close(connect.max(), MAX_CONNECT_US));
    }

    #[test]
    fn memory_per_latency_stays_under_100_kib() {
        let bytes = Latency::new().heap_bytes();
        assert!(bytes < 100 * 1024, "{bytes} bytes");
    }

    #[test]
    fn tags_round_trip_whatever_the_names_hold() {
        for (listener, backend) in [
            ("rw", "db-01:3306"),
            ("a,b c;d=e%f", "[::1]:3306"),
            ("tab\there\nline", "ünï:1"),
            ("", ""),
        ] {
            for kind in Kind::ALL {
                let t = tag(listener, backend, kind);
                assert!(Tag::new(&t).is_some(), "{t:?} is not a valid tag");
                assert_eq!(
                    parse_tag(&t),
                    Some((listener.to_string(), backend.to_string(), kind)),
                    "{t:?}"
                );
            }
        }
        assert_eq!(
            tag("rw", "db-01:3306", Kind::FirstByte),
            "listener=rw;backend=db-01:3306;kind=first_byte"
        );
        for bad in [
            "",
            "backend=x;listener=y;kind=connect",
            "listener=x;backend=y;kind=other",
            "listener=x;backend=y;kind=connect;more",
            "listener=%G0;backend=y;kind=connect",
            "listener=%4;backend=y;kind=connect",
            "listener=%FF;backend=y;kind=connect",
            "listener=%+1;backend=y;kind=connect",
        ] {
            assert_eq!(parse_tag(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hdr_log_round_trips_through_the_interval_log_reader() {
        let mut a = Latency::new();
        for us in 1..=1_000 {
            a.record_first_byte(us * 10);
        }
        a.record_connect(150);
        let mut b = Latency::new();
        b.record_lifetime(90 * 1_000_000);
        let entries = [
            entry("rw", "db-01:3306", a.clone()),
            entry("r,o w", "db-02:3306", b.clone()),
        ];
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let end = start + Duration::from_millis(12_500);
        let log = hdr_log(&entries, start, end);

        let mut deserializer = Deserializer::new();
        let mut intervals = Vec::new();
        let mut times = Vec::new();
        for item in IntervalLogIterator::new(&log) {
            match item.unwrap_or_else(|e| panic!("{e:?} in\n{}", String::from_utf8_lossy(&log))) {
                LogEntry::Interval(i) => {
                    let (listener, backend, kind) = parse_tag(i.tag().unwrap().as_str()).unwrap();
                    let bytes = base64_decode(i.encoded_histogram());
                    let h: Histogram<u64> = deserializer.deserialize(&mut &bytes[..]).unwrap();
                    assert_eq!(i.start_timestamp(), Duration::ZERO);
                    assert_eq!(i.duration(), Duration::from_millis(12_500));
                    assert_eq!(i.max(), h.max() as f64 / 1000.0);
                    intervals.push((listener, backend, kind, h));
                }
                LogEntry::StartTime(t) | LogEntry::BaseTime(t) => times.push(t),
            }
        }
        assert_eq!(times, [Duration::from_secs(1_700_000_000); 2]);
        assert_eq!(intervals.len(), 6);
        for ((listener, backend, kind, h), (e, expected_kind)) in intervals
            .iter()
            .zip(entries.iter().flat_map(|e| Kind::ALL.map(|k| (e, k))))
        {
            assert_eq!(
                (listener, backend, *kind),
                (&e.listener, &e.backend, expected_kind)
            );
            assert_eq!(
                h,
                e.latency.histogram(expected_kind),
                "{listener} {backend} {kind:?}"
            );
        }
    }

    fn base64_decode(text: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(text).unwrap()
    }

    #[test]
    fn dump_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("ringlb-latency-dump-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("latency.hlog");
        std::fs::write(&path, "old").unwrap();
        let mut l = Latency::new();
        l.record_connect(42);
        dump_to_file(&path, &[entry("rw", "db-01:3306", l)]).unwrap();
        let written = std::fs::read(&path).unwrap();
        let intervals = IntervalLogIterator::new(&written)
            .filter(|e| matches!(e, Ok(LogEntry::Interval(_))))
            .count();
        assert_eq!(intervals, 3);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["latency.hlog"]);

        let missing = dir.join("no-such-dir").join("latency.hlog");
        let err = dump_to_file(&missing, &[]).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{}: ", missing.display())), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
