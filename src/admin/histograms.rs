//! The latency histograms as the admin endpoint shows them: a table for people ([`report`],
//! `GET /histogram` and `ringlb histogram`) and Prometheus histograms ([`prometheus`], on
//! `/metrics`). The data and its HdrHistogram log are [`crate::latency`]'s.

use std::fmt::Write as _;

use super::metrics::{escape, header};
use crate::latency::{BackendLatency, Kind, Percentiles};

/// The `# HELP` text of a kind's Prometheus family.
fn help(kind: Kind) -> &'static str {
    match kind {
        Kind::Connect => "Time to connect to the backend (TCP).",
        Kind::FirstByte => "Time from a client's request to the backend's first response byte.",
        Kind::Lifetime => "Lifetime of the connections relayed to the backend.",
    }
}

/// Prometheus bucket bounds: microseconds, and the `le` label that says the same in seconds
/// (written out, so that the label is exactly what the bound means).
fn buckets(kind: Kind) -> &'static [(u64, &'static str)] {
    match kind {
        Kind::Connect | Kind::FirstByte => &SHORT_BUCKETS,
        Kind::Lifetime => &LIFETIME_BUCKETS,
    }
}

/// From a LAN connect (100 µs) to a query that takes seconds.
const SHORT_BUCKETS: [(u64, &str); 16] = [
    (100, "0.0001"),
    (250, "0.00025"),
    (500, "0.0005"),
    (1_000, "0.001"),
    (2_500, "0.0025"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (25_000, "0.025"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (250_000, "0.25"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (2_500_000, "2.5"),
    (5_000_000, "5"),
    (10_000_000, "10"),
];

/// From a one-query connection to a pooled one that lives for days.
const LIFETIME_BUCKETS: [(u64, &str); 14] = [
    (1_000, "0.001"),
    (10_000, "0.01"),
    (100_000, "0.1"),
    (1_000_000, "1"),
    (10_000_000, "10"),
    (60_000_000, "60"),
    (300_000_000, "300"),
    (900_000_000, "900"),
    (3_600_000_000, "3600"),
    (14_400_000_000, "14400"),
    (43_200_000_000, "43200"),
    (86_400_000_000, "86400"),
    (259_200_000_000, "259200"),
    (604_800_000_000, "604800"),
];

/// A table with one row per backend and kind: count, then p50, p90, p99, p99.9 and max in
/// milliseconds to three significant digits; `-` where nothing was recorded.
pub fn report(entries: &[BackendLatency]) -> String {
    let header = [
        "LISTENER", "BACKEND", "KIND", "COUNT", "P50_MS", "P90_MS", "P99_MS", "P99.9_MS", "MAX_MS",
    ];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .flat_map(|e| {
            Kind::ALL.into_iter().map(|kind| {
                let p = Percentiles::of(e.latency.histogram(kind));
                let mut row = vec![
                    e.listener.clone(),
                    e.backend.clone(),
                    kind.as_str().to_string(),
                    p.count.to_string(),
                ];
                row.extend(
                    [p.p50_us, p.p90_us, p.p99_us, p.p999_us, p.max_us].map(|v| v.map_or("-".into(), ms)),
                );
                row
            })
        })
        .collect();
    let mut out = String::new();
    super::table::aligned(&mut out, &header, &rows, 3);
    out
}

/// Microseconds as milliseconds with three significant digits (at least one decimal below 100 ms,
/// none above): `0.153`, `1.23`, `12.3`, `123`, `3600000`.
fn ms(us: u64) -> String {
    let decimals = match us {
        0..=999 => 3,
        1_000..=9_999 => 2,
        10_000..=99_999 => 1,
        _ => 0,
    };
    format!("{:.*}", decimals, us as f64 / 1000.0)
}

/// Appends the three Prometheus histogram families, `ringlb_backend_{connect,first_byte,
/// lifetime}_seconds`, with a sample set per backend: cumulative `_bucket`s up to `+Inf`, `_sum`
/// and `_count`. A value counts toward a bucket when its histogram cell starts at or below the
/// bound, so bounds and the sum are exact to the histogram's resolution (under 0.8 %).
pub fn prometheus(out: &mut String, entries: &[BackendLatency]) {
    let labels: Vec<String> = entries
        .iter()
        .map(|e| {
            format!(
                "backend=\"{}\",listener=\"{}\"",
                escape(&e.backend),
                escape(&e.listener)
            )
        })
        .collect();
    for kind in Kind::ALL {
        let name = format!("ringlb_backend_{}_seconds", kind.as_str());
        header(out, &name, "histogram", help(kind));
        for (e, labels) in entries.iter().zip(&labels) {
            let h = e.latency.histogram(kind);
            let bounds = buckets(kind);
            let mut per_bucket = vec![0u64; bounds.len()];
            let mut sum_us: u128 = 0;
            for v in h.iter_recorded() {
                let value = v.value_iterated_to();
                let count = v.count_at_value();
                let lowest = h.lowest_equivalent(value);
                let first = bounds.partition_point(|&(bound, _)| bound < lowest);
                if let Some(bucket) = per_bucket.get_mut(first) {
                    *bucket += count;
                }
                sum_us += u128::from(h.median_equivalent(value)) * u128::from(count);
            }
            let mut cumulative = 0u64;
            for (&(_, le), n) in bounds.iter().zip(&per_bucket) {
                cumulative += n;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_us as f64 / 1e6);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Latency;

    fn entry(listener: &str, backend: &str, latency: Latency) -> BackendLatency {
        BackendLatency {
            listener: listener.into(),
            backend: backend.into(),
            latency,
        }
    }

    /// The samples of one family for one label set: (suffix with labels, value).
    fn samples<'a>(text: &'a str, family: &str) -> Vec<(&'a str, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix(family))
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series, value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        for (us, text) in [
            (0, "0.000"),
            (153, "0.153"),
            (1_234, "1.23"),
            (12_345, "12.3"),
            (123_456, "123"),
            (3_600_000_000, "3600000"),
        ] {
            assert_eq!(ms(us), text);
        }
    }

    #[test]
    fn report_has_a_row_per_backend_and_kind() {
        let mut l = Latency::new();
        for us in [100, 200, 300] {
            l.record_connect(us);
        }
        l.record_first_byte(1_500);
        let out = report(&[
            entry("rw", "db-01:3306", l),
            entry("ro", "db-02:3306", Latency::new()),
        ]);
        let expected = "\
LISTENER  BACKEND     KIND        COUNT  P50_MS  P90_MS  P99_MS  P99.9_MS  MAX_MS
rw        db-01:3306  connect         3   0.200   0.301   0.301     0.301   0.301
rw        db-01:3306  first_byte      1    1.50    1.50    1.50      1.50    1.50
rw        db-01:3306  lifetime        0       -       -       -         -       -
ro        db-02:3306  connect         0       -       -       -         -       -
ro        db-02:3306  first_byte      0       -       -       -         -       -
ro        db-02:3306  lifetime        0       -       -       -         -       -
";
        assert_eq!(out, expected);
    }

    #[test]
    fn prometheus_buckets_are_cumulative_and_end_at_the_count() {
        let mut l = Latency::new();
        // 100 µs is a bound: counted in le="0.0001". Then one value per decade up to 20 s,
        // the last above every finite bound.
        for us in [100, 300, 3_000, 30_000, 300_000, 3_000_000, 20_000_000] {
            l.record_first_byte(us);
        }
        for s in [1, 5_000, 400_000] {
            l.record_lifetime(s * 1_000_000);
        }
        let mut out = String::new();
        prometheus(&mut out, &[entry("rw", "db\"1:3306", l)]);

        let family = "ringlb_backend_first_byte_seconds";
        assert!(out.contains(&format!("# TYPE {family} histogram\n")), "{out}");
        let buckets = samples(&out, &format!("{family}_bucket"));
        assert_eq!(buckets.len(), SHORT_BUCKETS.len() + 1);
        let labels = "{backend=\"db\\\"1:3306\",listener=\"rw\"";
        let expected: Vec<(String, f64)> = SHORT_BUCKETS
            .iter()
            .map(|(_, le)| *le)
            .chain(["+Inf"])
            .zip([1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4., 5., 5., 5., 6., 6., 7.])
            .map(|(le, n)| (format!("{labels},le=\"{le}\"}}"), n))
            .collect();
        let got: Vec<(String, f64)> = buckets.iter().map(|(s, v)| (s.to_string(), *v)).collect();
        assert_eq!(got, expected);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
        let count = samples(&out, &format!("{family}_count"));
        assert_eq!(count, [(&format!("{labels}}}")[..], 7.0)]);
        assert_eq!(count[0].1, buckets.last().unwrap().1, "count == +Inf bucket");
        let sum = samples(&out, &format!("{family}_sum"))[0].1;
        let exact = 23.3334;
        assert!((sum - exact).abs() < exact / 128.0, "{sum}");

        let lifetime = samples(&out, "ringlb_backend_lifetime_seconds_bucket");
        let le = |bound: &str| {
            lifetime
                .iter()
                .find(|(s, _)| s.ends_with(&format!("le=\"{bound}\"}}")))
                .unwrap()
                .1
        };
        assert_eq!(
            (le("1"), le("3600"), le("259200"), le("604800"), le("+Inf")),
            (1., 1., 2., 3., 3.)
        );
        // An empty histogram still has its buckets, all zero.
        let connect = samples(&out, "ringlb_backend_connect_seconds_bucket");
        assert_eq!(connect.len(), SHORT_BUCKETS.len() + 1);
        assert!(connect.iter().all(|(_, v)| *v == 0.0));
        assert_eq!(samples(&out, "ringlb_backend_connect_seconds_sum")[0].1, 0.0);
    }

    #[test]
    fn prometheus_declares_every_family_without_backends() {
        let mut out = String::new();
        prometheus(&mut out, &[]);
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with("# TYPE "))
                .collect::<Vec<_>>(),
            [
                "# TYPE ringlb_backend_connect_seconds histogram",
                "# TYPE ringlb_backend_first_byte_seconds histogram",
                "# TYPE ringlb_backend_lifetime_seconds histogram",
            ]
        );
        assert!(out.lines().all(|l| l.starts_with('#')));
    }

    #[test]
    fn bucket_bounds_rise_and_their_labels_say_the_same_in_seconds() {
        for kind in Kind::ALL {
            let bounds = buckets(kind);
            assert!(bounds.windows(2).all(|w| w[0].0 < w[1].0), "{kind:?}");
            for &(us, le) in bounds {
                assert_eq!(le.parse::<f64>().unwrap(), us as f64 / 1e6, "{le}");
                assert!(us <= kind.max_us());
            }
        }
    }
}
