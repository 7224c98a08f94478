//! The admin endpoint over a real socket: the admin thread serves a `SharedState` built from a small
//! configuration; requests are raw bytes so that malformed ones can be sent too. Latency values
//! are recorded into the workers' histograms directly, as the data path would; `ringlb histogram`
//! is the real binary against this endpoint.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlb::admin;
use ringlb::balance::Backends;
use ringlb::config::{BackendConfig, Config, ListenerConfig};
use ringlb::latency::{self, Kind, PercentilesReport};
use ringlb::shared::SharedState;
use ringlb::stats::Snapshot;

fn config() -> Config {
    let backend = |name: &str| BackendConfig::at(name.parse().unwrap());
    let mut config = Config::with_listener(
        "127.0.0.1:0".parse().unwrap(),
        vec![backend("127.0.0.1:13306"), backend("127.0.0.1:13307")],
    );
    config.workers = 2;
    config.listeners[0].name = "rw".into();
    config.listeners.push(ListenerConfig::new(
        "r\"o",
        "127.0.0.1:0".parse().unwrap(),
        vec![backend("127.0.0.1:13308")],
    ));
    config
}

/// Starts the admin thread over a `SharedState` with some counters set; returns its address.
fn start() -> (SocketAddr, Arc<SharedState>) {
    let config = config();
    let backends = Arc::new(Backends::from_config(&config));
    backends.all[1].server.up.store(false, Ordering::Relaxed);
    backends.all[0]
        .live
        .active_connections
        .store(2, Ordering::Relaxed);
    let traffic = |b: usize, worker: usize| &backends.all[b].stats.traffic[worker];
    traffic(0, 0).connections.store(3, Ordering::Relaxed);
    traffic(0, 1).connections.store(4, Ordering::Relaxed);
    traffic(0, 1).bytes_to_client.store(1234, Ordering::Relaxed);
    traffic(1, 0).connect_errors.store(9, Ordering::Relaxed);
    let shared = Arc::new(SharedState::new(backends.clone(), config.workers).unwrap());
    shared.workers[0].accepted.store(5, Ordering::Relaxed);
    shared.workers[1].accepted.store(7, Ordering::Relaxed);
    // Backend 0 is used by both workers, backend 2 by worker 1 only, backend 1 by none.
    record(&shared, 0, 0, |l| {
        l.record_connect(150);
        l.record_connect(250);
        for us in 1_000..1_100 {
            l.record_first_byte(us);
        }
    });
    record(&shared, 1, 0, |l| {
        l.record_connect(350);
        l.record_first_byte(5_000);
        l.record_lifetime(2_000_000);
    });
    record(&shared, 1, 2, |l| l.record_first_byte(42));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    admin::spawn(
        listener,
        shared.clone(),
        admin::Hooks::default(),
        admin::auth::Guard::new(None),
    )
    .unwrap();
    (addr, shared)
}

fn record(shared: &SharedState, worker: usize, backend: usize, f: impl FnOnce(&mut latency::Latency)) {
    f(&mut shared.table().all[backend].stats.latency[worker].lock().unwrap());
}

/// Sends `request` as is and reads the whole answer.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    String::from_utf8(answer).unwrap()
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(addr, format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
}

fn status(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or_default()
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn metrics_serves_prometheus_text_with_every_family() {
    let (addr, _shared) = start();
    let answer = get(addr, "/metrics");
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(
        answer.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nConnection: close\r\n"));
    let content_length: usize = answer
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let body = body(&answer);
    assert_eq!(content_length, body.len());
    for line in [
        "# TYPE ringlb_backend_up gauge",
        "ringlb_backend_up{backend=\"127.0.0.1:13306\",listener=\"rw\"} 1",
        "ringlb_backend_up{backend=\"127.0.0.1:13307\",listener=\"rw\"} 0",
        "ringlb_backend_up{backend=\"127.0.0.1:13308\",listener=\"r\\\"o\"} 1",
        "ringlb_backend_active_connections{backend=\"127.0.0.1:13306\",listener=\"rw\"} 2",
        "ringlb_backend_connections_total{backend=\"127.0.0.1:13306\",listener=\"rw\"} 7",
        "ringlb_backend_connect_errors_total{backend=\"127.0.0.1:13307\",listener=\"rw\"} 9",
        "ringlb_backend_bytes_total{backend=\"127.0.0.1:13306\",listener=\"rw\",direction=\"to_client\"} 1234",
        "ringlb_backend_bytes_total{backend=\"127.0.0.1:13306\",listener=\"rw\",direction=\"to_backend\"} 0",
        "ringlb_worker_accepted_total{worker=\"0\"} 5",
        "ringlb_worker_accepted_total{worker=\"1\"} 7",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
}

#[test]
fn stats_serves_the_snapshot_as_json() {
    let (addr, shared) = start();
    let answer = get(addr, "/stats");
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.contains("\r\nContent-Type: application/json\r\n"));
    let snapshot: Snapshot = serde_json::from_str(body(&answer)).unwrap();
    assert_eq!(snapshot, shared.snapshot());
    assert_eq!(snapshot.backends.len(), 3);
    assert_eq!(snapshot.backends[0].connections_total, 7);
}

#[test]
fn unknown_path_is_404_and_other_methods_405() {
    let (addr, _shared) = start();
    assert_eq!(status(&get(addr, "/nope")), "404");
    let answer = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&answer), "405", "{answer}");
    assert!(answer.contains("\r\nAllow: GET\r\n"));
}

#[test]
fn garbage_gets_400_and_the_endpoint_keeps_serving() {
    let (addr, _shared) = start();
    assert_eq!(
        status(&exchange(addr, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\r\n\r\n")),
        "400"
    );
    assert_eq!(status(&exchange(addr, b"GET /metrics SPDY/3\r\n\r\n")), "400");
    // Cut short: the client half-closes before the head ends.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metr").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(status(&answer), "400", "{answer}");
    // Over the 8 KiB cap.
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(status(&exchange(addr, huge.as_bytes())), "431");
    assert_eq!(status(&get(addr, "/metrics")), "200");
}

#[test]
fn silent_client_is_dropped_after_the_read_timeout() {
    let (addr, _shared) = start();
    let _silent = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    // Served once the silent connection's 2 s budget runs out, not never.
    assert_eq!(status(&get(addr, "/stats")), "200");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[test]
fn stats_table_renders_a_running_instance() {
    let (addr, _shared) = start();
    let table = admin::stats_table(addr).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("LISTENER"), "{table}");
    assert!(
        lines[1].split_whitespace().eq([
            "rw",
            "127.0.0.1:13306",
            "up",
            "any",
            "-",
            "2",
            "7",
            "0",
            "0",
            "1234"
        ]),
        "{table}"
    );
    assert!(lines[2].split_whitespace().eq([
        "rw",
        "127.0.0.1:13307",
        "down",
        "any",
        "-",
        "0",
        "0",
        "9",
        "0",
        "0"
    ]));
    assert!(
        table.contains("WORKER  ACCEPTED\n     0         5\n     1         7\n"),
        "{table}"
    );
}

#[test]
fn stats_table_names_the_address_when_nothing_listens() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = admin::stats_table(addr).unwrap_err();
    assert_eq!(err, format!("{addr}: connection refused: is ringlb running?"));
}

#[test]
fn stats_table_refuses_a_non_ringlb_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    });
    let err = admin::stats_table(addr).unwrap_err();
    assert!(err.starts_with(&format!("{addr}: invalid /stats JSON")), "{err}");
}

#[test]
fn histogram_table_merges_the_workers_per_backend() {
    let (addr, _shared) = start();
    let answer = get(addr, "/histogram");
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
    let rows: Vec<Vec<&str>> = body(&answer)
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["LISTENER", "BACKEND", "KIND", "COUNT", "P50_MS", "P90_MS", "P99_MS", "P99.9_MS", "MAX_MS"]
    );
    // Three kinds for each of the three backends.
    assert_eq!(rows.len(), 1 + 9, "{}", body(&answer));
    assert_eq!(
        rows[1],
        [
            "rw",
            "127.0.0.1:13306",
            "connect",
            "3",
            "0.250",
            "0.351",
            "0.351",
            "0.351",
            "0.351"
        ]
    );
    assert_eq!(rows[2][..4], ["rw", "127.0.0.1:13306", "first_byte", "101"]);
    assert_eq!(rows[2][8], "5.02", "the max comes from worker 1");
    // 2 s is shown as the top of its histogram cell, 2.007 s: within the 1/128 resolution.
    assert_eq!(rows[3][..4], ["rw", "127.0.0.1:13306", "lifetime", "1"]);
    assert!(rows[3][4..].iter().all(|&v| v == "2007"), "{:?}", rows[3]);
    assert_eq!(
        rows[4],
        ["rw", "127.0.0.1:13307", "connect", "0", "-", "-", "-", "-", "-"]
    );
    assert_eq!(
        rows[8],
        [
            "r\"o",
            "127.0.0.1:13308",
            "first_byte",
            "1",
            "0.042",
            "0.042",
            "0.042",
            "0.042",
            "0.042"
        ]
    );
}

#[test]
fn histogram_json_gives_percentiles_in_microseconds() {
    let (addr, shared) = start();
    let answer = get(addr, "/histogram?format=json");
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.contains("\r\nContent-Type: application/json\r\n"));
    let report: PercentilesReport = serde_json::from_str(body(&answer)).unwrap();
    assert_eq!(report, latency::percentiles(&shared.latency()));
    assert_eq!(report.backends.len(), 3);
    let rw = &report.backends[0];
    assert_eq!(
        (rw.listener.as_str(), rw.backend.as_str()),
        ("rw", "127.0.0.1:13306")
    );
    assert_eq!(rw.connect.count, 3);
    assert_eq!(rw.connect.max_us, Some(351));
    let first_byte = rw.first_byte;
    assert_eq!(first_byte.count, 101);
    // 101 values: 1000..1100 and one 5000; the median is 1050 to the histogram's resolution.
    assert!(
        (1_050..=1_057).contains(&first_byte.p50_us.unwrap()),
        "{first_byte:?}"
    );
    assert!(first_byte.p99_us.unwrap() < 1_110, "{first_byte:?}");
    assert!(
        (5_000..5_040).contains(&first_byte.max_us.unwrap()),
        "{first_byte:?}"
    );
    assert_eq!(report.backends[1].lifetime.count, 0);
    assert_eq!(report.backends[1].lifetime.p50_us, None);
    let raw: serde_json::Value = serde_json::from_str(body(&answer)).unwrap();
    assert_eq!(raw["backends"][1]["connect"]["p99_us"], serde_json::Value::Null);
    assert_eq!(raw["backends"][2]["first_byte"]["p999_us"], 42);
}

#[test]
fn histogram_hdr_log_reads_back_with_hdrhistogram() {
    use base64::Engine;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::Histogram;

    let (addr, shared) = start();
    let answer = get(addr, "/histogram?format=hdr&backend=127.0.0.1%3A13306");
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(answer.contains("\r\nContent-Type: text/plain; charset=utf-8\r\n"));
    let expected = shared.latency();
    let mut deserializer = Deserializer::new();
    let mut kinds = Vec::new();
    for item in IntervalLogIterator::new(body(&answer).as_bytes()) {
        let LogEntry::Interval(interval) = item.unwrap() else {
            continue;
        };
        let (listener, backend, kind) = latency::parse_tag(interval.tag().unwrap().as_str()).unwrap();
        assert_eq!((listener.as_str(), backend.as_str()), ("rw", "127.0.0.1:13306"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(interval.encoded_histogram())
            .unwrap();
        let h: Histogram<u64> = deserializer.deserialize(&mut &bytes[..]).unwrap();
        assert_eq!(&h, expected[0].latency.histogram(kind), "{kind:?}");
        kinds.push(kind);
    }
    assert_eq!(kinds, Kind::ALL);
}

#[test]
fn histogram_query_errors_are_one_line_with_their_status() {
    let (addr, _shared) = start();
    for (path, code, message) in [
        (
            "/histogram?backend=db-9:3306",
            "404",
            "no backend \"db-9:3306\" (names as in /stats)\n",
        ),
        (
            "/histogram?format=xml",
            "400",
            "format \"xml\": expected text, hdr or json\n",
        ),
        (
            "/histogram?kind=connect",
            "400",
            "unknown query parameter \"kind\": expected format or backend\n",
        ),
        ("/histogram?backend=%zz", "400", "bad %-escape in the query\n"),
    ] {
        let answer = get(addr, path);
        assert_eq!(status(&answer), code, "{path}: {answer}");
        assert_eq!(body(&answer), message, "{path}");
    }
    let answer = exchange(addr, b"POST /histogram HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status(&answer), "405", "{answer}");
    // A known backend in the filter keeps only its rows.
    let answer = get(addr, "/histogram?backend=127.0.0.1:13308&format=text");
    let rows: Vec<&str> = body(&answer).lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{answer}");
    assert!(rows.iter().all(|r| r.contains("127.0.0.1:13308")), "{answer}");
}

#[test]
fn metrics_serve_latency_histograms_after_the_counters() {
    let (addr, _shared) = start();
    let body = body(&get(addr, "/metrics")).to_string();
    let labels = "backend=\"127.0.0.1:13306\",listener=\"rw\"";
    for line in [
        "# TYPE ringlb_backend_connect_seconds histogram".to_string(),
        "# TYPE ringlb_backend_first_byte_seconds histogram".to_string(),
        "# TYPE ringlb_backend_lifetime_seconds histogram".to_string(),
        format!("ringlb_backend_connect_seconds_bucket{{{labels},le=\"0.0001\"}} 0"),
        format!("ringlb_backend_connect_seconds_bucket{{{labels},le=\"0.00025\"}} 2"),
        format!("ringlb_backend_connect_seconds_bucket{{{labels},le=\"0.0005\"}} 3"),
        format!("ringlb_backend_connect_seconds_bucket{{{labels},le=\"+Inf\"}} 3"),
        format!("ringlb_backend_connect_seconds_count{{{labels}}} 3"),
        // 1000..=1003 µs share one histogram cell, which starts at the bound.
        format!("ringlb_backend_first_byte_seconds_bucket{{{labels},le=\"0.001\"}} 4"),
        format!("ringlb_backend_first_byte_seconds_bucket{{{labels},le=\"0.0025\"}} 100"),
        format!("ringlb_backend_first_byte_seconds_count{{{labels}}} 101"),
        format!("ringlb_backend_lifetime_seconds_count{{{labels}}} 1"),
        "ringlb_backend_lifetime_seconds_count{backend=\"127.0.0.1:13308\",listener=\"r\\\"o\"} 0"
            .to_string(),
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    let counters = body.find("# TYPE ringlb_worker_accepted_total").unwrap();
    assert!(counters < body.find("# TYPE ringlb_backend_connect_seconds").unwrap());
}

/// Runs the real `ringlb` binary (a client command, bounded by its own timeouts).
fn ringlb(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run ringlb")
}

#[test]
fn histogram_command_prints_what_the_endpoint_serves() {
    let (addr, shared) = start();
    let admin = addr.to_string();
    let out = ringlb(&["histogram", "--admin", &admin]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        admin::histograms::report(&shared.latency())
    );

    let out = ringlb(&[
        "histogram",
        "--admin",
        &admin,
        "--format",
        "json",
        "--backend",
        "127.0.0.1:13308",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: PercentilesReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.backends.len(), 1);
    assert_eq!(report.backends[0].first_byte.p50_us, Some(42));

    let out = ringlb(&["histogram", "--admin", &admin, "--format", "hdr"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tags: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("Tag="))
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    assert_eq!(tags.len(), 9, "{tags:?}");
    assert_eq!(tags[5], "listener=rw;backend=127.0.0.1:13307;kind=lifetime");
}

#[test]
fn histogram_command_names_an_unknown_backend_in_one_line() {
    let (addr, _shared) = start();
    let out = ringlb(&[
        "histogram",
        "--admin",
        &addr.to_string(),
        "--backend",
        "db-9:3306",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("ringlb: {addr}: no backend \"db-9:3306\" (names as in /stats)\n")
    );
}

/// A client that sends a request head one byte every 100 ms and never finishes it, until the
/// server answers or closes; returns what it read and when, after `start`.
fn drip(addr: SocketAddr) -> std::thread::JoinHandle<(String, Duration)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
    std::thread::spawn(move || {
        let start = Instant::now();
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while start.elapsed() < Duration::from_secs(30) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if stream.write_all(b"a").is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        (String::from_utf8_lossy(&answer).into_owned(), start.elapsed())
    })
}

#[test]
fn slow_clients_never_hold_up_other_requests_and_one_too_many_gets_503() {
    let (addr, _shared) = start();
    // Slow clients on all handlers but one: a request still answers while they drip.
    let mut slow: Vec<_> = (1..admin::MAX_HANDLERS).map(|_| drip(addr)).collect();
    let start = Instant::now();
    assert_eq!(status(&get(addr, "/metrics")), "200");
    let waited = start.elapsed();
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "/metrics answered only after the slow clients were done"
    );
    // The last handler, once the request above has let it go (its thread ends when it sees the
    // client's close, a moment after the answer): a slow client that arrives before that is
    // told to retry, and retries.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let last = drip(addr);
        let admitted_by = Instant::now() + Duration::from_millis(500);
        while !last.is_finished() && Instant::now() < admitted_by {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !last.is_finished() {
            slow.push(last);
            break;
        }
        let (answer, _) = last.join().unwrap();
        assert_eq!(status(&answer), "503", "{answer}");
        assert!(Instant::now() < deadline, "the last handler never came free");
    }
    // Every handler held: one more request is told to retry at once instead of waiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status(&get(addr, "/metrics")) != "503" {
        assert!(
            Instant::now() < deadline,
            "no 503 with every handler held by a slow client"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in slow {
        let (answer, slow_for) = s.join().unwrap();
        assert_eq!(status(&answer), "408", "{answer}");
        eprintln!("[fault] admin endpoint, slow client: a byte every 100 ms got 408 after {slow_for:?}");
    }
    // And the endpoint serves on.
    for _ in 0..10 {
        assert_eq!(status(&get(addr, "/metrics")), "200");
    }
    eprintln!(
        "[fault] admin endpoint: /metrics answered in {waited:?} beside {} slow clients; one more \
         than {} got 503",
        admin::MAX_HANDLERS - 1,
        admin::MAX_HANDLERS
    );
}
