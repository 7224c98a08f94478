//! ringlb's PROXY protocol headers against MariaDB's own parser: what a server with
//! `proxy_protocol_networks` makes of [`proxy_protocol::header`] and
//! [`proxy_protocol::local_header`], what one without it does, and the health probe's LOCAL header.
//!
//! The data path is stood in for by a relay in this file ([`HeaderRelay`]): it connects to the
//! server, writes a header in one write, then copies bytes both ways, so the `mysql` crate logs in
//! through it as a client would through ringlb. The header announces a made-up client
//! (10.1.2.3:5555, 2001:db8::7:5555), so the server's `processlist.host` shows whether the header
//! was taken: without it the server would see the relay's 127.0.0.1.
//!
//! What MariaDB 10.11 was seen to do, and these tests pin:
//!
//! - from a proxy network, v1 and v2 PROXY headers set the client's host, IPv4-mapped IPv6 sources
//!   included (shown as IPv4); LOCAL (v2) and UNKNOWN (v1) keep the real peer address;
//! - from a proxy network, a connection without a header is accepted as before;
//! - the header may come at once after the connect or together with the client's first packet,
//!   after the greeting: the server reads it where it expects the handshake response;
//! - from an address outside `proxy_protocol_networks` (or with none set), any header is refused
//!   after the greeting with ERROR 1130 "Proxy header is not accepted from <address>", counted in
//!   `Aborted_connects`; the health probe then fails the login, so the backend goes down;
//! - with name resolution on (the server's default), `max_connect_errors` refusals in a row from
//!   one host block it (ERROR 1129 for any connection) until `FLUSH HOSTS`, and a successful login
//!   resets the count: the probe logs in without the header after a refusal, so checks alone
//!   never get ringlb blocked. (Loopback clients are never counted, nor is any client under
//!   `--skip-name-resolve`, which the harness sets.)

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::Conn;
use ringlb::config::CheckKind;
use ringlb::health::probe::{self, Alive, ProbeError, Target};
use ringlb::proxy_protocol::{self, ProxyVersion};
use support::{tcp_opts, MariaDb, TcpServer, APP_PASSWORD, APP_USER, CHECK_USER};

/// ringlb's address as the servers under test must trust it: the loopback, both families.
const PROXY_NETWORKS: &str = "--proxy-protocol-networks=127.0.0.0/8,::1/128";
/// Bound on the relay's reads, so that a stuck test ends.
const RELAY_TIMEOUT: Duration = Duration::from_secs(30);
const VERSIONS: [ProxyVersion; 2] = [ProxyVersion::V1, ProxyVersion::V2];

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// When the relay writes its header.
#[derive(Clone, Copy)]
enum When {
    /// Right after the connect, before the server's greeting: what a proxy does that has the
    /// header ready when it connects.
    AtConnect,
    /// In one write with the client's first bytes (the handshake response), after the greeting.
    WithClientsFirstBytes,
}

/// A stand-in for ringlb's data path: every connection to it is relayed to `backend` behind
/// `header`.
struct HeaderRelay(TcpServer);

impl HeaderRelay {
    fn start(backend: SocketAddr, header: Vec<u8>, when: When) -> HeaderRelay {
        HeaderRelay(TcpServer::start("the PROXY header relay", move |client, _| {
            relay(client, backend, &header, when)
        }))
    }

    /// A login as `app` through the relay.
    fn login(&self) -> mysql::Result<Conn> {
        Conn::new(tcp_opts(self.0.addr().port(), APP_USER, APP_PASSWORD, None))
    }
}

fn relay(mut client: TcpStream, backend: SocketAddr, header: &[u8], when: When) {
    let Ok(mut server) = TcpStream::connect(backend) else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_read_timeout(Some(RELAY_TIMEOUT));
        let _ = stream.set_nodelay(true);
    }
    let (Ok(mut from_server), Ok(mut to_client)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    let downstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let first = match when {
        When::AtConnect => header.to_vec(),
        When::WithClientsFirstBytes => {
            let mut buf = vec![0u8; 4096];
            let n = client.read(&mut buf).unwrap_or(0);
            [header, &buf[..n]].concat()
        }
    };
    // One write: MariaDB does not reassemble a v2 header that arrives in pieces.
    if server.write_all(&first).is_ok() {
        let _ = std::io::copy(&mut client, &mut server);
    }
    let _ = server.shutdown(Shutdown::Write);
    let _ = downstream.join();
}

/// `host` of this session in the server's process list: "address:port".
fn session_host(conn: &mut Conn) -> String {
    conn.query_first("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
        .expect("processlist query")
        .expect("a row for this session")
}

#[test]
fn mariadb_sees_the_client_that_v1_and_v2_headers_announce() {
    let server = MariaDb::start_with_options(&[PROXY_NETWORKS]);
    let cases = [
        ("10.1.2.3:5555", "127.0.0.1:4040", "10.1.2.3:5555"),
        ("[2001:db8::7]:5555", "[::1]:4040", "2001:db8::7:5555"),
        // Families apart: the header is TCP6 with ::ffff:10.1.2.3, which the server reads as IPv4.
        ("10.1.2.3:5555", "[::1]:4040", "10.1.2.3:5555"),
    ];
    for version in VERSIONS {
        for (source, destination, expected) in cases {
            let header = proxy_protocol::header(version, addr(source), addr(destination));
            let relay = HeaderRelay::start(server.addr(), header, When::AtConnect);
            let mut conn = relay
                .login()
                .unwrap_or_else(|e| panic!("{version} {source} -> {destination}: {e}"));
            assert_eq!(
                session_host(&mut conn),
                expected,
                "{version} {source} -> {destination}"
            );
        }
    }
}

#[test]
fn header_may_come_with_the_clients_first_packet_after_the_greeting() {
    let server = MariaDb::start_with_options(&[PROXY_NETWORKS]);
    for version in VERSIONS {
        let header = proxy_protocol::header(version, addr("10.1.2.3:5555"), addr("127.0.0.1:4040"));
        let relay = HeaderRelay::start(server.addr(), header, When::WithClientsFirstBytes);
        let mut conn = relay.login().unwrap_or_else(|e| panic!("{version}: {e}"));
        assert_eq!(session_host(&mut conn), "10.1.2.3:5555", "{version}");
    }
}

#[test]
fn proxy_network_still_accepts_connections_without_a_header() {
    let server = MariaDb::start_with_options(&[PROXY_NETWORKS]);
    let mut conn = server.conn();
    let host = session_host(&mut conn);
    assert!(host.starts_with("127.0.0.1:"), "{host}");
}

#[test]
fn local_and_unknown_headers_keep_the_real_peer_address() {
    let server = MariaDb::start_with_options(&[PROXY_NETWORKS]);
    for version in VERSIONS {
        let relay = HeaderRelay::start(
            server.addr(),
            proxy_protocol::local_header(version),
            When::AtConnect,
        );
        let mut conn = relay.login().unwrap_or_else(|e| panic!("{version}: {e}"));
        let host = session_host(&mut conn);
        assert!(host.starts_with("127.0.0.1:"), "{version}: {host}");
    }
}

/// Everything a server sends on a connection that starts with `header`, until it closes or
/// resets it (a reset after data keeps the data: the kernel queues it ahead of the reset).
fn answer_to(server: SocketAddr, header: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).unwrap();
    stream.set_read_timeout(Some(RELAY_TIMEOUT)).unwrap();
    stream.write_all(header).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return received,
            Err(e) => panic!("reading the answer to {header:?}: {e}"),
        }
    }
}

/// The MySQL packets in `bytes`: (sequence, payload) each.
fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 4 {
        let len = usize::from(bytes[0]) | usize::from(bytes[1]) << 8 | usize::from(bytes[2]) << 16;
        let payload = bytes.get(4..4 + len).expect("a whole packet");
        out.push((bytes[3], payload.to_vec()));
        bytes = &bytes[4 + len..];
    }
    assert!(bytes.is_empty(), "a partial packet header at the end: {bytes:?}");
    out
}

#[test]
fn server_without_proxy_networks_refuses_any_header_after_its_greeting() {
    let server = MariaDb::start();
    let headers = [
        proxy_protocol::header(ProxyVersion::V1, addr("10.1.2.3:5555"), addr("127.0.0.1:4040")),
        proxy_protocol::header(ProxyVersion::V2, addr("10.1.2.3:5555"), addr("127.0.0.1:4040")),
        proxy_protocol::local_header(ProxyVersion::V1),
        proxy_protocol::local_header(ProxyVersion::V2),
    ];
    let aborted_before = server.status("Aborted_connects");
    for header in &headers {
        let answer = packets(&answer_to(server.addr(), header));
        assert_eq!(answer.len(), 2, "greeting and ERR: {answer:?}");
        assert_eq!(
            (answer[0].0, answer[0].1[0]),
            (0, 10),
            "a protocol 10 greeting first"
        );
        // ERR 1130, numbered as the reply to a first client packet (sequence 1).
        let mut refusal = vec![0xFF];
        refusal.extend_from_slice(&1130u16.to_le_bytes());
        refusal.extend_from_slice(b"#HY000Proxy header is not accepted from 127.0.0.1");
        assert_eq!(answer[1], (1, refusal), "{header:?}");
    }
    assert_eq!(
        server.status("Aborted_connects"),
        aborted_before + headers.len() as u64
    );
    // A client behind such a header fails its login (the mysql crate, which expects the reply to
    // its handshake response as packet 2, calls it packets out of sync).
    let relay = HeaderRelay::start(
        server.addr(),
        proxy_protocol::header(ProxyVersion::V2, addr("10.1.2.3:5555"), addr("127.0.0.1:4040")),
        When::AtConnect,
    );
    assert!(relay.login().is_err());
}

#[test]
fn health_probe_with_send_proxy_logs_in_cleanly_through_the_local_header() {
    let server = MariaDb::start_with_options(&[PROXY_NETWORKS]);
    let aborted_before = server.status("Aborted_connects");
    for version in VERSIONS {
        let target = Target {
            name: "",
            addr: server.addr(),
            send_proxy: Some(version),
        };
        match probe::probe(CheckKind::Mysql, target, CHECK_USER, Duration::from_secs(10)) {
            Ok(Alive::LoggedIn { server_version, .. }) => {
                assert!(server_version.contains("MariaDB"), "{server_version}")
            }
            other => panic!("{version}: {other:?}"),
        }
    }
    // The point of the mysql check: the server counts nothing against ringlb's host.
    assert_eq!(server.status("Aborted_connects"), aborted_before);
}

#[test]
fn health_probe_with_send_proxy_takes_down_a_server_that_refuses_headers() {
    let server = MariaDb::start();
    for version in VERSIONS {
        let target = Target {
            name: "",
            addr: server.addr(),
            send_proxy: Some(version),
        };
        match probe::probe(CheckKind::Mysql, target, CHECK_USER, Duration::from_secs(10)) {
            Err(ProbeError::ProxyHeaderRefused(e)) => assert_eq!(
                e.to_string(),
                "ERROR 1130 (HY000): Proxy header is not accepted from 127.0.0.1",
                "{version}"
            ),
            other => panic!("{version}: {other:?}"),
        }
    }
    // Without the header the same server passes: the failure above is the header's alone.
    let alive = probe::probe(
        CheckKind::Mysql,
        server.addr(),
        CHECK_USER,
        Duration::from_secs(10),
    );
    assert!(matches!(alive, Ok(Alive::LoggedIn { .. })), "{alive:?}");
}

/// A non-loopback address of this machine: the source of a route out (the server counts
/// connection errors for such addresses only). `None` where there is no route out.
fn non_loopback_ip() -> Option<IpAddr> {
    ["198.51.100.1:9", "192.0.2.1:9", "203.0.113.1:9"]
        .into_iter()
        .find_map(|out| {
            let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
            // Connecting a UDP socket only picks the route; nothing is sent.
            socket.connect(out).ok()?;
            let ip = socket.local_addr().ok()?.ip();
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
}

/// The error code of an ERR packet's payload.
fn err_code(payload: &[u8]) -> Option<u16> {
    match payload {
        [0xFF, low, high, ..] => Some(u16::from_le_bytes([*low, *high])),
        _ => None,
    }
}

#[test]
fn refused_header_checks_never_get_ringlb_blocked() {
    let Some(ip) = non_loopback_ip() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "this machine has no non-loopback address to connect from (CI=true: not skipping)"
        );
        eprintln!("SKIPPED: this machine has no non-loopback address to connect from");
        return;
    };
    let server = MariaDb::start_with_options(&[
        // The server's defaults: host names resolved, so the host cache counts errors.
        "--skip-name-resolve=0",
        "--bind-address=0.0.0.0",
        "--max-connect-errors=2",
    ]);
    let target = SocketAddr::new(ip, server.port());
    let header = proxy_protocol::local_header(ProxyVersion::V2);

    // What the probe guards against: two refused headers and the host is blocked.
    for _ in 0..2 {
        let answer = packets(&answer_to(target, &header));
        assert_eq!(err_code(&answer[1].1), Some(1130), "{answer:?}");
    }
    let answer = packets(&answer_to(target, &header));
    assert_eq!(
        err_code(&answer[0].1),
        Some(1129),
        "blocked instead of greeted: {answer:?}"
    );
    server
        .root_conn()
        .expect("root login over loopback")
        .query_drop("FLUSH HOSTS")
        .unwrap();

    let with_header = Target {
        name: "",
        addr: target,
        send_proxy: Some(ProxyVersion::V2),
    };
    for check in 0..5 {
        match probe::probe(CheckKind::Mysql, with_header, CHECK_USER, Duration::from_secs(10)) {
            Err(ProbeError::ProxyHeaderRefused(e)) => assert_eq!(e.code, 1130, "check {check}"),
            other => panic!("check {check}: {other:?}"),
        }
    }
    let alive = probe::probe(CheckKind::Mysql, target, CHECK_USER, Duration::from_secs(10));
    assert!(matches!(alive, Ok(Alive::LoggedIn { .. })), "{alive:?}");
}
