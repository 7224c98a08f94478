//! The admin endpoint over a real socket: the admin thread serves a `Shared` built from a small
//! configuration; requests are raw bytes so that malformed ones can be sent too.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlb::admin;
use ringlb::balance::Backends;
use ringlb::config::{BackendConfig, CheckKind, Config, HealthConfig, ListenerConfig};
use ringlb::stats::{Shared, Snapshot};

fn config() -> Config {
    let backend = |name: &str| BackendConfig {
        name: name.into(),
        addr: name.parse().unwrap(),
        weight: 1,
        backup: false,
    };
    Config {
        workers: 2,
        admin: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_ms: 5000,
        health: HealthConfig {
            check: CheckKind::Mysql,
            interval_ms: 1000,
            rise: 2,
            fall: 3,
            timeout_ms: 1000,
            user: "ringlb_check".into(),
        },
        listeners: vec![
            ListenerConfig {
                name: "rw".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                connect_timeout_ms: 1000,
                backends: vec![backend("127.0.0.1:13306"), backend("127.0.0.1:13307")],
                allow: Vec::new(),
                balance: Default::default(),
                send_proxy: None,
            },
            ListenerConfig {
                name: "r\"o".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                connect_timeout_ms: 1000,
                backends: vec![backend("127.0.0.1:13308")],
                allow: Vec::new(),
                balance: Default::default(),
                send_proxy: None,
            },
        ],
        tuning: Default::default(),
        ha: None,
    }
}

/// Starts the admin thread over a `Shared` with some counters set; returns its address.
fn start() -> (SocketAddr, Arc<Shared>) {
    let config = config();
    let backends = Arc::new(Backends::from_config(&config));
    backends.all[1].live.up.store(false, Ordering::Relaxed);
    backends.all[0]
        .live
        .active_connections
        .store(2, Ordering::Relaxed);
    let names = config.listeners.iter().map(|l| l.name.clone()).collect();
    let shared = Arc::new(Shared::new(backends, config.workers, names));
    shared.workers[0].accepted.store(5, Ordering::Relaxed);
    shared.workers[1].accepted.store(7, Ordering::Relaxed);
    shared.workers[0].backends[0]
        .connections
        .store(3, Ordering::Relaxed);
    shared.workers[1].backends[0]
        .connections
        .store(4, Ordering::Relaxed);
    shared.workers[1].backends[0]
        .bytes_to_client
        .store(1234, Ordering::Relaxed);
    shared.workers[0].backends[1]
        .connect_errors
        .store(9, Ordering::Relaxed);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    admin::spawn(listener, shared.clone()).unwrap();
    (addr, shared)
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
        lines[1]
            .split_whitespace()
            .eq(["rw", "127.0.0.1:13306", "up", "2", "7", "0", "0", "1234"]),
        "{table}"
    );
    assert!(lines[2]
        .split_whitespace()
        .eq(["rw", "127.0.0.1:13307", "down", "0", "0", "9", "0", "0"]));
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
