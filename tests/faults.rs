//! Faults, each against real MariaDB servers and the real ringlb binary: a backend killed in the
//! middle of a query, frozen with SIGSTOP, black-holed (its link cut, nothing answers), or one
//! that accepts and never greets; a client that resets in the middle of a large result; a
//! thousand silent clients; ringlb out of file descriptors.
//!
//! Each test asserts what ringlb promises (bounded times, descriptors back at their baseline, no
//! busy loop) and prints what it measured on lines starting with `[fault]`, so that a run with
//! `--no-capture` can be quoted. The bounds are generous correctness bounds (an error within a
//! second, not never), not performance targets: the machine may have two shared cores.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Conn;
use ringlb::health::mysql as protocol;
use socket2::SockRef;
use support::netns::{require_root, Topology};
use support::{one_at_a_time, poll_until, tcp_opts, wait_until, Launch, MariaDb, Ringlb, TcpServer};

/// A `tcp` health check whose first probe runs at start-up and the next a minute later, so no
/// probe socket comes and goes while a test counts descriptors.
const QUIET_HEALTH: &str = "[health]\ncheck = \"tcp\"\ninterval_ms = 60000\n";

/// Health settings of the detection tests, and the bounds derived from them.
const INTERVAL_MS: u64 = 200;
const CHECK_TIMEOUT_MS: u64 = 500;
const RISE: u64 = 2;
const FALL: u64 = 2;
/// Scheduling slack added to every computed bound.
const SLACK: Duration = Duration::from_secs(1);

/// What "at once" means for a client: well under any timeout, far above a loopback round trip.
const PROMPT: Duration = Duration::from_secs(1);
const MIB: usize = 1024 * 1024;

/// The `[health]` section of the detection tests: a `mysql` check with the settings above.
fn fast_mysql_health() -> String {
    format!(
        "[health]\ncheck = \"mysql\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {CHECK_TIMEOUT_MS}\n\
         rise = {RISE}\nfall = {FALL}\nuser = \"{}\"\n",
        support::CHECK_USER
    )
}

/// Prints one measured figure of `test`, for the report.
fn figure(test: &str, what: &str) {
    eprintln!("[fault] {test}: {what}");
}

/// The longest it may take the checks to mark a backend that stopped answering down: the next
/// probe starts within an interval, and each of `fall` failing probes takes its timeout (a probe
/// that overran its interval is followed by the next at once).
fn down_bound() -> Duration {
    Duration::from_millis(INTERVAL_MS + FALL * INTERVAL_MS.max(CHECK_TIMEOUT_MS)) + SLACK
}

/// The longest it may take the checks to bring a recovered backend up: a probe in flight may
/// still time out, then `rise` passing probes an interval apart.
fn up_bound() -> Duration {
    Duration::from_millis(CHECK_TIMEOUT_MS + RISE * INTERVAL_MS) + SLACK
}

/// Sends SIGCONT to a server frozen with SIGSTOP when dropped.
struct Thaw<'a>(&'a MariaDb);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

fn up(lb: &Ringlb, backend: SocketAddr) -> Option<f64> {
    lb.backend_metric("ringlb_backend_up", backend)
}

fn port_of(conn: &mut Conn) -> mysql::Result<u16> {
    conn.query_first("SELECT @@port")
        .map(|port| port.expect("SELECT @@port returns a row"))
}

/// A fresh connection through ringlb, one query and a clean quit: the answering port and how
/// long it all took.
fn one_shot(lb: &Ringlb) -> (mysql::Result<u16>, Duration) {
    let started = Instant::now();
    let port = lb.try_conn().and_then(|mut conn| port_of(&mut conn));
    (port, started.elapsed())
}

/// Fresh connections after a backend was taken out: each must be answered by `expected` within
/// [`PROMPT`]. Returns the slowest.
fn each_answered_by(lb: &Ringlb, expected: u16, connections: usize, after: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for i in 0..connections {
        let (port, took) = one_shot(lb);
        let port = port.unwrap_or_else(|e| panic!("{after}: connection {i} failed after {took:?}: {e}"));
        assert_eq!(port, expected, "{after}: connection {i} answered by {port}");
        assert!(took < PROMPT, "{after}: connection {i} took {took:?}");
        slowest = slowest.max(took);
    }
    slowest
}

/// How many statements `SELECT SLEEP(...)` run on `db` now, read over a fresh root login.
fn sleeping_queries(db: &MariaDb) -> usize {
    let mut root = db.root_conn().expect("root login");
    let count: Option<u64> = root
        .query_first(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE INFO LIKE 'SELECT SLEEP%' AND COMMAND = 'Query'",
        )
        .expect("count the running SLEEPs");
    count.unwrap_or(0) as usize
}

#[test]
fn backend_killed_mid_query_fails_its_clients_at_once_and_leaks_nothing() {
    let _serial = one_at_a_time();
    const TEST: &str = "backend killed mid-query";
    const CLIENTS: usize = 8;
    let mut a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], QUIET_HEALTH);
    let baseline = lb.settled_descriptors();

    // Each client says which backend it landed on, then runs a 5 s query and reports how that
    // ended and when.
    let (landed_tx, landed) = mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut conn = lb.conn();
            let landed_tx = landed_tx.clone();
            std::thread::spawn(move || {
                let port = port_of(&mut conn).expect("SELECT @@port");
                landed_tx.send(port).expect("the test waits for every client");
                let result = conn.query_drop("SELECT SLEEP(5)");
                (port, result.map_err(|e| e.to_string()), Instant::now())
            })
        })
        .collect();
    // Only the clients hold senders now: one that fails before it reports ends the wait below.
    drop(landed_tx);
    let ports: Vec<u16> = (0..CLIENTS)
        .map(|_| landed.recv().expect("every client reports its backend"))
        .collect();
    let on_a = ports.iter().filter(|&&p| p == a.port()).count();
    assert!(
        on_a > 0 && on_a < CLIENTS,
        "the clients should be spread over both backends: {ports:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "every client's SLEEP to run on its server",
        || sleeping_queries(&a) == on_a && sleeping_queries(&b) == CLIENTS - on_a,
    );

    let killed_at = Instant::now();
    a.kill();
    let mut slowest_error = Duration::ZERO;
    let mut errors = Vec::new();
    for client in clients {
        let (port, result, ended) = client.join().expect("a client thread");
        let after = ended.saturating_duration_since(killed_at);
        if port == a.port() {
            let error = result.expect_err("a query on the killed server cannot succeed");
            assert!(
                after < PROMPT,
                "a client of the killed server got its error {after:?} after the kill: {error}"
            );
            slowest_error = slowest_error.max(after);
            errors.push(error);
        } else {
            result.unwrap_or_else(|e| panic!("a client of the surviving server failed: {e}"));
        }
    }
    figure(
        TEST,
        &format!(
            "{on_a} clients in SELECT SLEEP(5) on the killed server, all errored within {slowest_error:?} \
             of the SIGKILL (first error: {:?}); {} clients on the other server finished normally",
            errors.first(),
            CLIENTS - on_a
        ),
    );
    let slowest = each_answered_by(&lb, b.port(), 5, "after the kill");
    figure(
        TEST,
        &format!("5 fresh connections after the kill answered by the survivor, slowest {slowest:?}"),
    );
    lb.wait_for_baseline(baseline, "after the kill and the clients' exit");
    figure(
        TEST,
        &format!("descriptors back at baseline {baseline:?}, none in CLOSE_WAIT"),
    );
}

#[test]
fn frozen_backend_is_marked_down_within_fall_checks_and_new_clients_go_elsewhere() {
    let _serial = one_at_a_time();
    const TEST: &str = "backend frozen (SIGSTOP)";
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], &fast_mysql_health());
    wait_until(Duration::from_secs(10), "both backends up", || {
        up(&lb, a.addr()) == Some(1.0) && up(&lb, b.addr()) == Some(1.0)
    });

    a.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let (window, detected, resumed_at) = std::thread::scope(|scope| {
        // Thaws the server when this closure ends, even while a panic unwinds, so that no client
        // below waits out its own timeout before the scope can join it.
        let thaw = Thaw(&a);
        // Clients opened while the checks have not yet noticed: a new one every 50 ms, each on
        // its own thread, since one that lands on the frozen server waits for a greeting the
        // server sends only once it runs again. With both backends idle at first, the rotation
        // sends one of the first two to the frozen server.
        let mut window = Vec::new();
        let detected = loop {
            if up(&lb, a.addr()) == Some(0.0) {
                break frozen_at.elapsed();
            }
            assert!(
                frozen_at.elapsed() < down_bound(),
                "the frozen backend was not marked down within {:?}\n{}",
                down_bound(),
                lb.log_tail()
            );
            let lb = &lb;
            window.push(scope.spawn(move || {
                let opened = Instant::now();
                let port = lb.try_conn().and_then(|mut conn| port_of(&mut conn));
                (port.map_err(|e| e.to_string()), opened.elapsed())
            }));
            // Paces the arrivals; nothing waits on it.
            std::thread::sleep(Duration::from_millis(50));
        };
        figure(
            TEST,
            &format!(
                "marked down {detected:?} after SIGSTOP (interval {INTERVAL_MS} ms, timeout \
                 {CHECK_TIMEOUT_MS} ms, fall {FALL}; bound {:?})",
                down_bound()
            ),
        );
        let slowest = each_answered_by(&lb, b.port(), 10, "after the down-mark");
        figure(
            TEST,
            &format!(
                "10 connections opened after the down-mark answered by the other server, slowest {slowest:?}"
            ),
        );
        let stalled = window.iter().filter(|t| !t.is_finished()).count();
        figure(
            TEST,
            &format!(
                "{} clients opened before the down-mark; {stalled} of them still wait for a greeting \
                 {:?} after SIGSTOP",
                window.len(),
                frozen_at.elapsed()
            ),
        );
        drop(thaw);
        let resumed_at = Instant::now();
        let window: Vec<_> = window
            .into_iter()
            .map(|t| t.join().expect("a window client"))
            .collect();
        (window, detected, resumed_at)
    });
    let mut stalls = Vec::new();
    for (result, took) in &window {
        let port = result
            .as_ref()
            .unwrap_or_else(|e| panic!("a client opened during the freeze failed: {e}"));
        if *port == a.port() {
            stalls.push(*took);
        }
    }
    assert!(
        !stalls.is_empty(),
        "no client opened before the down-mark ({detected:?}) went to the frozen server: the test \
         did not see the window it measures"
    );
    figure(
        TEST,
        &format!(
            "{} of {} clients opened in the {detected:?} window went to the frozen server; they stalled \
             until SIGCONT, then logged in and answered (times from open to answer: {stalls:?})",
            stalls.len(),
            window.len()
        ),
    );

    let back = poll_until(up_bound() + Duration::from_secs(5), || {
        up(&lb, a.addr()) == Some(1.0)
    });
    assert!(back, "the thawed backend never came back up\n{}", lb.log_tail());
    let back_after = resumed_at.elapsed();
    assert!(
        back_after < up_bound(),
        "the thawed backend came back after {back_after:?} (bound {:?})",
        up_bound()
    );
    let ports: Vec<u16> = (0..6).map(|_| one_shot(&lb).0.expect("a connection")).collect();
    assert!(
        ports.contains(&a.port()),
        "the thawed backend takes no traffic: {ports:?}"
    );
    figure(
        TEST,
        &format!(
            "up again {back_after:?} after SIGCONT (rise {RISE}; bound {:?})",
            up_bound()
        ),
    );
}

/// A connection straight to a server in a namespace, from inside `node`: its `@@datadir`, which
/// tells the test's servers apart (they share port and hostname).
fn datadir_of(net: &Topology, node: &str, server: SocketAddr) -> String {
    let opts = support::tcp_opts_to(
        &server.ip().to_string(),
        server.port(),
        support::APP_USER,
        support::APP_PASSWORD,
        None,
    );
    net.run_in(node, || {
        let mut conn = Conn::new(opts).unwrap_or_else(|e| panic!("direct login to {server}: {e}"));
        conn.query_first::<String, _>("SELECT @@datadir")
            .expect("SELECT @@datadir")
            .expect("a row")
    })
}

/// A fresh connection through ringlb: the answering server's datadir and how long it took.
fn one_shot_datadir(lb: &Ringlb) -> (mysql::Result<String>, Duration) {
    let started = Instant::now();
    let datadir = lb.try_conn().and_then(|mut conn| {
        conn.query_first::<String, _>("SELECT @@datadir")
            .map(|d| d.expect("a row"))
    });
    (datadir, started.elapsed())
}

#[test]
fn black_holed_backend_is_redispatched_after_the_connect_timeout() {
    if !require_root() {
        return;
    }
    let _serial = one_at_a_time();
    const TEST: &str = "backend black-holed";
    const PORT: u16 = 3306;
    let net = Topology::new(&["lb", "db1", "db2"]);
    let _servers: Vec<MariaDb> = ["db1", "db2"]
        .iter()
        .map(|node| MariaDb::start_in_namespace(net.namespace(node), net.addr(node), PORT))
        .collect();
    let (hole, good) = (
        SocketAddr::from((net.addr("db1"), PORT)),
        SocketAddr::from((net.addr("db2"), PORT)),
    );
    let good_datadir = datadir_of(&net, "lb", good);
    // The listener's connect timeout is the default 1 s; while another backend is left, ringlb
    // gives a connect 250 ms before it redispatches.
    let lb = Ringlb::launch(
        &[hole, good],
        &fast_mysql_health(),
        Launch {
            namespace: Some(net.namespace("lb").to_owned()),
            ..Launch::default()
        },
    );
    wait_until(Duration::from_secs(10), "both backends up", || {
        up(&lb, hole) == Some(1.0) && up(&lb, good) == Some(1.0)
    });
    let before: Vec<String> = (0..4)
        .map(|_| one_shot_datadir(&lb).0.expect("a connection"))
        .collect();
    assert!(
        before.iter().any(|d| *d != good_datadir),
        "db1 takes traffic before the cut: {before:?}"
    );

    net.cut("db1");
    let cut_at = Instant::now();
    // Fresh connections one after another until the checks mark db1 down, and a little after:
    // every one is answered by db2, the ones that met the hole after one redispatch timeout.
    let mut detected = None;
    let mut latencies = Vec::new();
    while cut_at.elapsed() < down_bound() + Duration::from_secs(1) {
        let (datadir, took) = one_shot_datadir(&lb);
        let datadir =
            datadir.unwrap_or_else(|e| panic!("a connection after the cut failed after {took:?}: {e}"));
        assert_eq!(
            datadir, good_datadir,
            "a connection after the cut was answered by db1"
        );
        assert!(
            took < Duration::from_millis(1000) + SLACK,
            "a connection after the cut took {took:?}, more than the connect timeout and slack"
        );
        latencies.push(took);
        if detected.is_none() && up(&lb, hole) == Some(0.0) {
            detected = Some(cut_at.elapsed());
        }
        // Paces the connections (a hundred a second is plenty to meet the hole); nothing waits
        // on it.
        std::thread::sleep(Duration::from_millis(10));
    }
    let errors = lb
        .backend_metric("ringlb_backend_connect_errors_total", hole)
        .unwrap_or(0.0);
    assert!(
        errors >= 1.0,
        "no connect to the black hole was counted: the connections never met it"
    );
    let detected = detected.unwrap_or_else(|| {
        panic!(
            "the black-holed backend was not marked down within {:?}\n{}",
            down_bound(),
            lb.log_tail()
        )
    });
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    let slow = latencies
        .iter()
        .filter(|t| **t >= Duration::from_millis(200))
        .count();
    figure(
        TEST,
        &format!(
            "{} connections in the {:?} after the cut all answered by db2; {slow} met the hole and \
             were redispatched (slowest {slowest:?}); {errors} connect errors counted for db1",
            latencies.len(),
            cut_at.elapsed()
        ),
    );
    figure(
        TEST,
        &format!(
            "marked down {detected:?} after the cut (bound {:?})",
            down_bound()
        ),
    );
    let after: Vec<Duration> = (0..5)
        .map(|i| {
            let (datadir, took) = one_shot_datadir(&lb);
            assert_eq!(
                datadir.unwrap_or_else(|e| panic!("connection {i} after the down-mark: {e}")),
                good_datadir
            );
            assert!(took < PROMPT, "connection {i} after the down-mark took {took:?}");
            took
        })
        .collect();
    figure(TEST, &format!("5 connections after the down-mark: {after:?}"));

    net.restore("db1");
    let restored_at = Instant::now();
    let back = poll_until(up_bound() + Duration::from_secs(5), || up(&lb, hole) == Some(1.0));
    assert!(
        back,
        "db1 never came back after its link was restored\n{}",
        lb.log_tail()
    );
    figure(
        TEST,
        &format!("up again {:?} after the link was restored", restored_at.elapsed()),
    );
}

/// A backend that accepts connections and never sends a byte, as a server whose accept loop is
/// wedged: it holds each connection until the peer closes or the server is dropped.
fn mute_server() -> TcpServer {
    TcpServer::start("the mute server", |mut stream, stopping| {
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let mut sink = [0u8; 1024];
        while !stopping.load(Ordering::Relaxed) {
            match stream.read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    })
}

#[test]
fn backend_that_never_greets_is_marked_down_and_its_client_closed_by_the_idle_timeout() {
    let _serial = one_at_a_time();
    const TEST: &str = "backend accepts, never greets";
    const FIRST_CHECK_TIMEOUT_MS: u64 = 3000;
    const IDLE_TIMEOUT_MS: u64 = 1000;
    let mute = mute_server();
    let db = MariaDb::start();
    // The first check of the mute server waits out its 3 s timeout: the window in which clients
    // are still sent there. One failure of a backend that never passed takes it down.
    let config = format!(
        "[health]\ncheck = \"mysql\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = {FIRST_CHECK_TIMEOUT_MS}\n\
         fall = {FALL}\nuser = \"ringlb_check\"\n\n\
         [[listener]]\nname = \"default\"\nbind = \"127.0.0.1:1\"\nidle_timeout_ms = {IDLE_TIMEOUT_MS}\n\
         [[listener.backend]]\naddress = \"127.0.0.1:1\"\n"
    );
    let started_at = Instant::now();
    let lb = Ringlb::start_with_addrs(&[mute.addr(), db.addr()], &config);
    // Two clients at once while both backends count as up: one of them lands on the mute server.
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let opts = tcp_opts(lb.addr().port(), support::APP_USER, support::APP_PASSWORD, None);
            std::thread::spawn(move || {
                let opened = Instant::now();
                let result = Conn::new(opts).and_then(|mut conn| port_of(&mut conn));
                (result.map_err(|e| e.to_string()), opened.elapsed())
            })
        })
        .collect();
    assert_eq!(
        up(&lb, mute.addr()),
        Some(1.0),
        "premise: the mute server still counts as up while the window clients connect"
    );
    wait_until(
        Duration::from_millis(FIRST_CHECK_TIMEOUT_MS) + Duration::from_secs(5),
        "the mute backend to be marked down",
        || up(&lb, mute.addr()) == Some(0.0),
    );
    let detected = started_at.elapsed();
    assert!(
        detected < Duration::from_millis(FIRST_CHECK_TIMEOUT_MS) + Duration::from_secs(3),
        "marked down {detected:?} after start-up"
    );
    let results: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("a client thread"))
        .collect();
    let failed: Vec<_> = results.iter().filter(|(r, _)| r.is_err()).collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly one client should have landed on the mute server and failed: {results:?}"
    );
    let (error, waited) = failed[0];
    assert!(
        *waited < Duration::from_millis(IDLE_TIMEOUT_MS) + SLACK,
        "the client on the mute server waited {waited:?} for its error"
    );
    let idle_closed = lb
        .metric("ringlb_listener_idle_closed_total", &[("listener", "default")])
        .unwrap_or(0.0);
    assert!(
        idle_closed >= 1.0,
        "ringlb did not close the client by its idle timeout"
    );
    figure(
        TEST,
        &format!(
            "marked down {detected:?} after start-up by its first check (timeout {FIRST_CHECK_TIMEOUT_MS} ms); \
             the client sent there meanwhile got {error:?} after {waited:?} (closed by idle_timeout_ms = \
             {IDLE_TIMEOUT_MS}; without it the client waits for its own read timeout)"
        ),
    );
    let slowest = each_answered_by(&lb, db.port(), 10, "after the mute backend's down-mark");
    figure(
        TEST,
        &format!("10 connections after the down-mark all answered by MariaDB, slowest {slowest:?}"),
    );
}

/// Reads one MySQL packet: (sequence, payload).
fn read_packet(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("a packet header");
    let header = protocol::parse_header(&header).expect("a packet header");
    let mut payload = vec![0u8; header.payload_len];
    stream.read_exact(&mut payload).expect("a packet payload");
    (header.sequence, payload)
}

/// A raw client logged in through ringlb as the password-less, privilege-less check user, so the
/// test holds the bare socket and can reset it whenever it likes.
fn raw_login(lb: &Ringlb) -> TcpStream {
    let mut stream = lb.tcp_connect().expect("connect to ringlb");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let (sequence, payload) = read_packet(&mut stream);
    let greeting = match protocol::parse_initial(&payload).expect("a greeting") {
        protocol::InitialPacket::Greeting(g) => g,
        protocol::InitialPacket::Error(e) => panic!("the server refused the connection: {e:?}"),
    };
    let login = protocol::handshake_response(&greeting, support::CHECK_USER, b"", false).expect("a login");
    stream
        .write_all(&protocol::packet(sequence + 1, &login).expect("a login packet"))
        .expect("send the login");
    loop {
        let (sequence, payload) = read_packet(&mut stream);
        match protocol::parse_auth_reply(&payload).expect("an auth reply") {
            protocol::AuthReply::Ok => return stream,
            protocol::AuthReply::AuthSwitch { .. } => stream
                .write_all(&protocol::packet(sequence + 1, &[]).expect("an empty auth packet"))
                .expect("answer the auth switch"),
            other => panic!("login as {} failed: {other:?}", support::CHECK_USER),
        }
    }
}

#[test]
fn client_reset_in_a_large_result_closes_the_server_connection_and_leaks_nothing() {
    let _serial = one_at_a_time();
    const TEST: &str = "client reset mid-transfer (MariaDB)";
    let db = MariaDb::start();
    let lb = Ringlb::start(&[&db], QUIET_HEALTH);
    // More resets than the pipe pools can keep pipes, so a pipe lost with each reset would show.
    let resets = 3 * lb.pipe_fds_kept() / 2;
    let baseline = lb.settled_descriptors();
    let threads_connected = db.status("Threads_connected");
    // 33 MiB in one value: the server is still writing it when the client resets.
    let query = "SELECT REPEAT(CONCAT(MD5('ringlb'), '!'), 1050000)";
    let mut command = vec![0x03u8];
    command.extend_from_slice(query.as_bytes());
    let command = protocol::packet(0, &command).expect("a COM_QUERY packet");

    let mut slowest_close = Duration::ZERO;
    for round in 0..resets {
        let mut client = raw_login(&lb);
        wait_until(
            Duration::from_secs(10),
            "the client's session on the server",
            || db.status("Threads_connected") == threads_connected + 1,
        );
        client.write_all(&command).expect("send the query");
        let mut first = vec![0u8; MIB];
        client
            .read_exact(&mut first)
            .expect("the first MiB of the result through ringlb");
        SockRef::from(&client)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(client);
        let reset_at = Instant::now();
        let closed = poll_until(Duration::from_secs(30), || {
            db.status("Threads_connected") == threads_connected
        });
        assert!(
            closed,
            "round {round}: the server still has the session 30 s after the client reset\n{}",
            lb.log_tail()
        );
        slowest_close = slowest_close.max(reset_at.elapsed());
    }
    lb.wait_for_baseline(baseline, &format!("after {resets} client resets mid-result"));
    figure(
        TEST,
        &format!(
            "{resets} resets after 1 MiB of a 33 MiB result: the server's session ended within \
             {slowest_close:?} each time; descriptors back at baseline {baseline:?}, none in CLOSE_WAIT"
        ),
    );
}

/// The sum of `active_connections` over the `default` listener's backends.
fn active_connections(lb: &Ringlb) -> f64 {
    lb.metric("ringlb_backend_active_connections", &[("listener", "default")])
        .unwrap_or(0.0)
}

/// Whether the bytes waiting on `stream` begin with a MySQL greeting (packet 0, protocol 10),
/// read without consuming them.
fn greeting_waiting(stream: &TcpStream) -> bool {
    let mut head = [0u8; 5];
    stream.set_nonblocking(true).expect("non-blocking");
    let seen = stream.peek(&mut head);
    stream.set_nonblocking(false).expect("blocking");
    matches!(seen, Ok(5)) && head[3] == 0 && head[4] == 10
}

/// `count` plain TCP clients of ringlb that never send a byte nor read one.
fn silent_clients(lb: &Ringlb, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            lb.tcp_connect()
                .unwrap_or_else(|e| panic!("silent client {i}: {e}"))
        })
        .collect()
}

/// Asserts that every silent client can now read its greeting and then EOF: ringlb passed on the
/// greeting and then closed its side.
fn each_read_its_greeting_then_eof(clients: Vec<TcpStream>) {
    for (i, mut client) in clients.into_iter().enumerate() {
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut seen = Vec::new();
        client
            .read_to_end(&mut seen)
            .unwrap_or_else(|e| panic!("silent client {i}: {e} after {} bytes", seen.len()));
        let greeting_len = seen.get(..3).map_or(0, |h| {
            4 + usize::from(h[0]) + (usize::from(h[1]) << 8) + (usize::from(h[2]) << 16)
        });
        assert!(
            greeting_len > 4 && seen.len() == greeting_len && seen[4] == 10,
            "silent client {i} should read exactly a greeting, then EOF: {} bytes",
            seen.len()
        );
    }
}

#[test]
fn silent_clients_leave_service_intact_and_are_closed_by_the_idle_or_handshake_timeout() {
    let _serial = one_at_a_time();
    const TEST: &str = "slowloris (silent clients)";
    const SILENT: usize = 1000;
    // MariaDB's own handshake timeout (connect_timeout, 10 s by default; shorter here to keep the
    // test short), and ringlb's idle timeout, shorter still for the first part.
    const SERVER_CONNECT_TIMEOUT_MS: u64 = 4000;
    const IDLE_TIMEOUT_MS: u64 = 2000;
    // As in the data-path idle test: about 16 MiB for ringlb itself, and room for allocator
    // slack, while failing if each connection kept a 16 KiB buffer per direction.
    const RSS_BOUND: u64 = 64 * MIB as u64;
    let server_option = format!("--connect-timeout={}", SERVER_CONNECT_TIMEOUT_MS / 1000);
    let a = MariaDb::start_with_options(&[&server_option]);
    let b = MariaDb::start_with_options(&[&server_option]);
    let idle_config = format!(
        "{QUIET_HEALTH}\n[[listener]]\nname = \"default\"\nbind = \"127.0.0.1:1\"\n\
         idle_timeout_ms = {IDLE_TIMEOUT_MS}\n[[listener.backend]]\naddress = \"127.0.0.1:1\"\n"
    );
    let lb = Ringlb::start_with_addrs(&[a.addr(), b.addr()], &idle_config);
    let baseline = lb.settled_descriptors();
    let baseline_rss = lb.rss_bytes();

    let silent = silent_clients(&lb, SILENT);
    let opened_at = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "ringlb to count 1,000 active connections",
        || active_connections(&lb) == SILENT as f64,
    );
    // The servers speak first: every silent client has its greeting waiting, unread.
    wait_until(
        Duration::from_secs(10),
        "every silent client to have its greeting",
        || silent.iter().all(greeting_waiting),
    );
    let held = lb.descriptors();
    let rss = lb.rss_bytes();
    assert!(
        held.sockets >= baseline.sockets + 2 * SILENT && held.sockets <= baseline.sockets + 2 * SILENT + 4,
        "ringlb should hold a client and a backend socket per silent client: {held:?}, baseline {baseline:?}"
    );
    assert!(
        held.pipes <= baseline.pipes + lb.pipe_fds_kept(),
        "silent clients hold pipes: {held:?}"
    );
    assert!(
        rss < RSS_BOUND,
        "ringlb's RSS is {} MiB with {SILENT} silent clients",
        rss / MIB as u64
    );
    // Other clients are served as usual meanwhile.
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let (port, took) = one_shot(&lb);
        let port = port.unwrap_or_else(|e| panic!("client {i} beside the silent ones: {e}"));
        assert!(port == a.port() || port == b.port());
        assert!(took < PROMPT, "client {i} beside the silent ones took {took:?}");
        slowest = slowest.max(took);
    }
    figure(
        TEST,
        &format!(
            "{SILENT} silent clients held: {held:?} (baseline {baseline:?}); RSS {} KiB (baseline {} KiB); \
             each got its server's greeting; 20 other clients answered meanwhile, slowest {slowest:?}",
            rss / 1024,
            baseline_rss / 1024
        ),
    );

    // ringlb's idle timeout comes first: it closes every one of them, before the servers would.
    wait_until(
        Duration::from_millis(IDLE_TIMEOUT_MS) + Duration::from_secs(10),
        "the idle timeout to close every silent connection",
        || active_connections(&lb) == 0.0,
    );
    let idle_closed_after = opened_at.elapsed();
    let idle_closed = lb
        .metric("ringlb_listener_idle_closed_total", &[("listener", "default")])
        .unwrap_or(0.0);
    assert_eq!(
        idle_closed, SILENT as f64,
        "every silent connection closed by the idle timeout"
    );
    lb.wait_for_baseline(baseline, "after the idle timeout closed the silent clients");
    each_read_its_greeting_then_eof(silent);
    figure(
        TEST,
        &format!(
            "idle_timeout_ms = {IDLE_TIMEOUT_MS}: all {SILENT} closed by ringlb {idle_closed_after:?} after \
             they opened (each read its greeting, then EOF); descriptors back at baseline, RSS now {} KiB",
            lb.rss_bytes() / 1024
        ),
    );

    // Without an idle timeout, the servers' handshake timeout ends them: MariaDB resets a
    // connection that sent no login within connect_timeout, and ringlb closes the client's side
    // at once.
    const FEW: usize = 100;
    let plain = Ringlb::start_with_addrs(&[a.addr(), b.addr()], QUIET_HEALTH);
    let plain_baseline = plain.settled_descriptors();
    let silent = silent_clients(&plain, FEW);
    let opened_at = Instant::now();
    wait_until(
        Duration::from_millis(SERVER_CONNECT_TIMEOUT_MS) + Duration::from_secs(10),
        "the servers' handshake timeout to end every silent connection",
        || active_connections(&plain) == 0.0,
    );
    let ended_after = opened_at.elapsed();
    assert!(
        ended_after >= Duration::from_millis(SERVER_CONNECT_TIMEOUT_MS - 500),
        "the silent connections ended after {ended_after:?}, before the servers' connect_timeout"
    );
    assert_eq!(
        plain.metric("ringlb_listener_idle_closed_total", &[("listener", "default")]),
        Some(0.0)
    );
    plain.wait_for_baseline(plain_baseline, "after the servers' handshake timeout");
    each_read_its_greeting_then_eof(silent);
    figure(
        TEST,
        &format!(
            "no idle timeout: {FEW} silent clients ended {ended_after:?} after they opened by MariaDB's \
             connect_timeout = {} s (the server resets, ringlb closes the client side: greeting, then EOF); \
             descriptors back at baseline",
            SERVER_CONNECT_TIMEOUT_MS / 1000
        ),
    );
}

/// How many times ringlb has logged that an accept failed for lack of descriptors.
fn accept_failures_logged(lb: &Ringlb) -> usize {
    std::fs::read_to_string(lb.log_path())
        .unwrap_or_default()
        .matches("accept failed; retrying shortly")
        .count()
}

#[test]
fn out_of_descriptors_ringlb_backs_off_without_spinning_and_resumes() {
    let _serial = one_at_a_time();
    const TEST: &str = "out of file descriptors";
    const MAX_OPEN_FILES: u64 = 64;
    // Far more clients than ringlb has descriptors for: the rest wait in the listen backlog.
    const CLIENTS: usize = 100;
    // A busy loop burns a whole core (1 CPU-second per second); backing off burns next to none.
    const CPU_BOUND: f64 = 0.2;
    let db = MariaDb::start();
    // Checks every 200 ms: ten of them fall in the exhaustion, enough to take the backend down
    // five times over were a probe without a socket counted against it.
    let lb = Ringlb::launch(
        &[db.addr()],
        &fast_mysql_health(),
        Launch {
            max_open_files: Some(MAX_OPEN_FILES),
            ..Launch::default()
        },
    );
    let baseline = lb.settled_descriptors();
    assert!(
        (baseline.total as u64) < MAX_OPEN_FILES / 2,
        "premise: ringlb at rest holds well under its {MAX_OPEN_FILES} descriptors: {baseline:?}"
    );
    wait_until(Duration::from_secs(10), "the backend up", || {
        up(&lb, db.addr()) == Some(1.0)
    });
    let (port, _) = one_shot(&lb);
    assert_eq!(port.expect("a query before the exhaustion"), db.port());

    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| TcpStream::connect(lb.addr()).unwrap_or_else(|e| panic!("client {i}: {e}")))
        .collect();
    wait_until(
        Duration::from_secs(10),
        "ringlb to log an accept failed for lack of descriptors",
        || accept_failures_logged(&lb) > 0,
    );
    let exhausted = lb.descriptors();
    let (logged_before, cpu_before, measured_from) =
        (accept_failures_logged(&lb), lb.cpu_seconds(), Instant::now());
    // A measurement window, not a wait for a condition: ringlb's CPU while it cannot accept.
    std::thread::sleep(Duration::from_secs(2));
    let seconds = measured_from.elapsed().as_secs_f64();
    let cpu_rate = (lb.cpu_seconds() - cpu_before) / seconds;
    let log_rate = (accept_failures_logged(&lb) - logged_before) as f64 / seconds;
    assert!(
        cpu_rate < CPU_BOUND,
        "ringlb used {cpu_rate:.3} CPU-seconds per second while out of descriptors: a busy loop?"
    );
    // Accept is retried every 100 ms, but each worker says so at most once a second: at most
    // three lines per worker in a window of two seconds and a bit.
    let lines = accept_failures_logged(&lb) - logged_before;
    assert!(
        lines <= 3 * lb.workers(),
        "{lines} 'accept failed' lines in {seconds:.1} s: the log floods while descriptors run short"
    );
    assert_eq!(
        up(&lb, db.addr()),
        Some(1.0),
        "ringlb's own shortage of descriptors took the backend down\n{}",
        lb.log_tail()
    );
    // What a new client sees meanwhile: its connect completes in the kernel's backlog, and no
    // greeting comes until ringlb can accept it.
    let waiting_opts = tcp_opts(lb.addr().port(), support::APP_USER, support::APP_PASSWORD, None)
        .read_timeout(Some(Duration::from_secs(1)));
    let started = Instant::now();
    let meanwhile = Conn::new(waiting_opts).map(|_| ()).map_err(|e| e.to_string());
    let meanwhile_took = started.elapsed();
    assert!(
        meanwhile.is_err(),
        "a client was served while ringlb had no descriptor to spare"
    );
    figure(
        TEST,
        &format!(
            "RLIMIT_NOFILE {MAX_OPEN_FILES}, {CLIENTS} raw clients: ringlb holds {exhausted:?} \
             (baseline {baseline:?}); {cpu_rate:.3} CPU-s/s while exhausted (bound {CPU_BOUND}); \
             {log_rate:.1} 'accept failed' lines/s; the backend stayed up; a new client meanwhile got {meanwhile:?} after \
             {meanwhile_took:?}"
        ),
    );

    drop(clients);
    let closed_at = Instant::now();
    let resumed = poll_until(
        Duration::from_secs(10),
        || matches!(one_shot(&lb).0, Ok(port) if port == db.port()),
    );
    assert!(
        resumed,
        "no query answered within 10 s of the clients closing\n{}",
        lb.log_tail()
    );
    let resumed_after = closed_at.elapsed();
    assert!(
        resumed_after < PROMPT + SLACK,
        "the first answer came {resumed_after:?} after the clients closed"
    );
    lb.wait_for_baseline(
        baseline,
        "after the clients that exhausted the descriptors closed",
    );
    figure(
        TEST,
        &format!(
            "queries answer again {resumed_after:?} after the clients closed; descriptors back at baseline"
        ),
    );
}
