//! The single-node proxy against real MariaDB servers: what a client of the article's setup sees
//! through one ringlb (queries answer, connections spread, a dead server is skipped at once and
//! a restarted one comes back), plus the byte-exactness, half-close, concurrency, health-check
//! manners and metrics the product promises.

mod support;

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::Hasher;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Conn;
use support::{poll_until, wait_until, EofReplyServer, MariaDb, Ringlb};

/// Fast health checks for the tests that wait on them: up/down within about half a second.
const FAST_HEALTH: &str = "[health]\ninterval_ms = 200\nrise = 2\nfall = 2\nuser = \"ringlb_check\"\n";

fn port_of(conn: &mut Conn) -> u16 {
    conn.query_first("SELECT @@port")
        .expect("SELECT @@port")
        .expect("a row")
}

/// A fresh connection through the proxy, one query, and a clean quit: the port that answered.
fn one_shot_port(lb: &Ringlb) -> u16 {
    port_of(&mut lb.conn())
}

fn up(lb: &Ringlb, db: &MariaDb) -> Option<f64> {
    lb.backend_metric("ringlb_backend_up", db.addr())
}

#[test]
fn queries_answer_through_the_proxy() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], "");
    let mut conn = lb.conn();
    conn.query_drop("CREATE TABLE IF NOT EXISTS greetings (id INT PRIMARY KEY, word VARCHAR(20))")
        .unwrap();
    conn.query_drop("REPLACE INTO greetings VALUES (1, 'hello')")
        .unwrap();
    let word: String = conn
        .query_first("SELECT word FROM greetings WHERE id = 1")
        .unwrap()
        .unwrap();
    assert_eq!(word, "hello");
    let sum: i64 = conn.exec_first("SELECT ? + ?", (40, 2)).unwrap().unwrap();
    assert_eq!(sum, 42, "prepared statements work through the proxy");
    let port = port_of(&mut conn);
    assert!(
        port == a.port() || port == b.port(),
        "answered by {port}, not a configured backend"
    );
}

#[test]
fn sequential_connections_alternate_between_two_backends() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], "");
    let ports: Vec<u16> = (0..10)
        .map(|_| {
            let port = one_shot_port(&lb);
            // Sequential: the next connection starts once ringlb has closed this one. Otherwise
            // the client's close and its next connect race, and least connections rightly sends
            // the next one away from a backend that still holds the last.
            wait_until(Duration::from_secs(5), "the connection closed in ringlb", || {
                lb.metric("ringlb_backend_active_connections", &[]) == Some(0.0)
            });
            port
        })
        .collect();
    for pair in ports.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "two sequential connections went to the same backend: {ports:?}"
        );
    }
    for db in [&a, &b] {
        assert!(
            ports.contains(&db.port()),
            "backend {} never chosen: {ports:?}",
            db.port()
        );
    }
}

#[test]
fn held_connections_balance_by_least_connections() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], "");
    let mut held: Vec<Conn> = (0..6).map(|_| lb.conn()).collect();
    let mut per_port: HashMap<u16, usize> = HashMap::new();
    for conn in &mut held {
        *per_port.entry(port_of(conn)).or_default() += 1;
    }
    assert_eq!(per_port.get(&a.port()), Some(&3), "split {per_port:?}");
    assert_eq!(per_port.get(&b.port()), Some(&3), "split {per_port:?}");
    for db in [&a, &b] {
        wait_until(
            Duration::from_secs(5),
            "active_connections = 3 on each backend",
            || lb.backend_metric("ringlb_backend_active_connections", db.addr()) == Some(3.0),
        );
    }
    drop(held);
    for db in [&a, &b] {
        wait_until(
            Duration::from_secs(5),
            "active_connections back to 0 after the clients quit",
            || lb.backend_metric("ringlb_backend_active_connections", db.addr()) == Some(0.0),
        );
    }
}

#[test]
fn killed_backend_is_skipped_within_a_second() {
    let _serial = support::one_at_a_time();
    let mut a = MariaDb::start();
    let b = MariaDb::start();
    // Default health settings (1 s interval, fall 3): the checker is far too slow to notice the
    // kill in time, so this proves the redispatch on a refused connect.
    let lb = Ringlb::start(&[&a, &b], "");
    let before: Vec<u16> = (0..4).map(|_| one_shot_port(&lb)).collect();
    assert!(
        before.contains(&a.port()),
        "backend a takes traffic before the kill: {before:?}"
    );

    let promise = Duration::from_secs(1);
    a.kill();
    let killed_at = Instant::now();
    let mut first_success = None;
    let mut connections = 0;
    while killed_at.elapsed() < Duration::from_secs(4) {
        let started = Instant::now();
        let result = lb
            .try_conn()
            .and_then(|mut conn| conn.query_first::<u16, _>("SELECT @@port"));
        let took = started.elapsed();
        let port = match result {
            Ok(Some(port)) => port,
            Ok(None) => panic!("SELECT @@port returned no row"),
            Err(e) => panic!("connection {connections} after the kill failed after {took:?}: {e}"),
        };
        assert_eq!(
            port,
            b.port(),
            "connection {connections} after the kill answered by {port}"
        );
        assert!(
            took < promise,
            "connection {connections} after the kill took {took:?}"
        );
        first_success.get_or_insert(killed_at.elapsed());
        connections += 1;
    }
    let first = first_success.expect("at least one connection after the kill");
    assert!(first < promise, "first answer {first:?} after the kill");
    assert!(connections > 10, "only {connections} connections in 4 s");
    wait_until(
        Duration::from_secs(10),
        "the refused connects to be counted",
        || {
            lb.backend_metric("ringlb_backend_connect_errors_total", a.addr())
                .unwrap_or(0.0)
                >= 1.0
        },
    );
}

#[test]
fn restarted_backend_takes_traffic_again_after_rise_checks() {
    let _serial = support::one_at_a_time();
    let mut a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], FAST_HEALTH);
    wait_until(Duration::from_secs(10), "both backends up", || {
        up(&lb, &a) == Some(1.0) && up(&lb, &b) == Some(1.0)
    });

    a.kill();
    wait_until(
        Duration::from_secs(10),
        "the killed backend to be marked down",
        || up(&lb, &a) == Some(0.0),
    );
    let while_down: Vec<u16> = (0..6).map(|_| one_shot_port(&lb)).collect();
    assert!(
        while_down.iter().all(|&p| p == b.port()),
        "a down backend got traffic: {while_down:?}"
    );

    a.restart();
    wait_until(
        Duration::from_secs(10),
        "the restarted backend to be marked up",
        || up(&lb, &a) == Some(1.0),
    );
    let after: Vec<u16> = (0..10).map(|_| one_shot_port(&lb)).collect();
    let on_a = after.iter().filter(|&&p| p == a.port()).count();
    assert!(
        on_a >= 3,
        "the restarted backend took {on_a} of 10 connections: {after:?}"
    );
}

#[test]
fn a_restarted_backend_with_slowstart_takes_a_small_share_at_first_then_its_full_one() {
    let _serial = support::one_at_a_time();
    let mut a = MariaDb::start();
    let b = MariaDb::start();
    let config = format!(
        "{FAST_HEALTH}\n[[listener]]\nname = \"default\"\nbind = \"127.0.0.1:0\"\nslowstart_ms = 4000\n\
         [[listener.backend]]\naddress = \"{}\"\n[[listener.backend]]\naddress = \"{}\"\n",
        a.addr(),
        b.addr()
    );
    let lb = Ringlb::start(&[], &config);
    wait_until(Duration::from_secs(10), "both backends up", || {
        up(&lb, &a) == Some(1.0) && up(&lb, &b) == Some(1.0)
    });
    a.kill();
    wait_until(Duration::from_secs(10), "a down", || up(&lb, &a) == Some(0.0));
    a.restart();
    wait_until(Duration::from_secs(10), "a up again", || up(&lb, &a) == Some(1.0));
    // Held connections opened right after: without slow start they would split evenly.
    let held: Vec<Conn> = (0..30).map(|_| lb.conn()).collect();
    let on = |server: &MariaDb| {
        lb.backend_metric("ringlb_backend_active_connections", server.addr())
            .unwrap_or_default()
    };
    let early = on(&a);
    assert!(
        early <= 8.0,
        "the restarted backend took {early} of 30 at the start of its ramp"
    );
    drop(held);
    wait_until(Duration::from_secs(10), "the held connections closed", || {
        on(&a) + on(&b) == 0.0
    });
    // Once the ramp is over, 30 held connections split evenly again.
    wait_until(Duration::from_secs(15), "an even split after the ramp", || {
        let held: Vec<Conn> = (0..30).map(|_| lb.conn()).collect();
        let level = (on(&a) - on(&b)).abs() <= 2.0;
        drop(held);
        support::poll_until(Duration::from_secs(5), || on(&a) + on(&b) == 0.0);
        level
    });
}

/// Hashes every row's bytes in order; returns (rows, bytes, hash).
fn digest_result(conn: &mut Conn, query: &str) -> (usize, usize, u64) {
    let mut hasher = DefaultHasher::new();
    let (mut rows, mut bytes) = (0, 0);
    for row in conn.query_iter(query).expect(query) {
        let row = row.expect("a row");
        for column in 0..row.len() {
            let value: Vec<u8> = row.get(column).expect("a non-NULL column");
            bytes += value.len();
            hasher.write_usize(value.len());
            hasher.write(&value);
        }
        rows += 1;
    }
    (rows, bytes, hasher.finish())
}

#[test]
fn large_results_are_byte_identical_through_the_proxy_and_direct() {
    let _serial = support::one_at_a_time();
    let db = MariaDb::start();
    let lb = Ringlb::start(&[&db], "");
    let queries = [
        // One 33 MiB value: a single MySQL packet split at 16 MiB boundaries. The 33-byte period
        // does not divide 16 MiB, so a lost or repeated chunk changes the hash.
        "SELECT REPEAT(CONCAT(MD5('ringlb'), '!'), 1050000)".to_owned(),
        // 32 MiB in 512 rows of 64 KiB, each row different.
        "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 512) \
         SELECT n, REPEAT(SHA2(n, 256), 1024) FROM s ORDER BY n"
            .to_owned(),
    ];
    for query in &queries {
        let direct = digest_result(&mut db.conn(), query);
        let proxied = digest_result(&mut lb.conn(), query);
        assert!(
            direct.1 >= 32 * 1024 * 1024,
            "the query must return at least 32 MiB: {direct:?}"
        );
        assert_eq!(
            proxied, direct,
            "(rows, bytes, hash) through the proxy vs direct for {query}"
        );
    }
}

#[test]
fn half_closed_client_still_reads_the_whole_reply() {
    let _serial = support::one_at_a_time();
    let backend = EofReplyServer::start();
    let lb = Ringlb::start_with_addrs(&[backend.addr()], "[health]\ncheck = \"tcp\"\n");
    let request: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = TcpStream::connect(lb.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    // The backend answers only once it reads EOF, so the reply arrives only if the proxy passes
    // the client's half-close on while keeping the other direction open.
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let request = request.clone();
        std::thread::spawn(move || {
            stream.write_all(&request).unwrap();
            stream.shutdown(Shutdown::Write).unwrap();
        })
    };
    let mut reply = Vec::new();
    stream
        .read_to_end(&mut reply)
        .expect("the reply after the half-close");
    writer.join().unwrap();
    assert_eq!(reply.len(), request.len());
    assert!(reply == request, "the reply differs from the request");
}

#[test]
fn a_thousand_concurrent_connections_each_complete_a_query() -> Result<(), String> {
    let _serial = support::one_at_a_time();
    const CONNECTIONS: usize = 1000;
    // Threads that open and drive the connections; each holds CONNECTIONS / THREADS at once.
    const THREADS: usize = 20;
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Arc::new(Ringlb::start(&[&a, &b], ""));
    let all_open = Arc::new(Barrier::new(THREADS + 1));
    let may_query = Arc::new(Barrier::new(THREADS + 1));
    // No thread panics before both barriers are passed: a panic there would leave the others
    // waiting forever. Failures travel back as errors and are asserted after the joins.
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (lb, all_open, may_query) = (lb.clone(), all_open.clone(), may_query.clone());
            std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(move || -> Result<Vec<u16>, String> {
                    let conns: Result<Vec<Conn>, _> =
                        (0..CONNECTIONS / THREADS).map(|_| lb.try_conn()).collect();
                    all_open.wait();
                    may_query.wait();
                    let mut conns = conns.map_err(|e| format!("connect: {e}"))?;
                    conns
                        .iter_mut()
                        .map(|c| c.query_first::<u16, _>("SELECT @@port"))
                        .map(|r| match r {
                            Ok(Some(port)) => Ok(port),
                            Ok(None) => Err("SELECT @@port: no row".to_owned()),
                            Err(e) => Err(format!("SELECT @@port: {e}")),
                        })
                        .collect()
                })
                .unwrap()
        })
        .collect();
    all_open.wait();
    let all_counted = poll_until(Duration::from_secs(10), || {
        lb.metric("ringlb_backend_active_connections", &[("listener", "default")]) == Some(CONNECTIONS as f64)
    });
    let active = lb.metric("ringlb_backend_active_connections", &[("listener", "default")]);
    may_query.wait();
    let mut ports = Vec::with_capacity(CONNECTIONS);
    for thread in threads {
        ports.extend(thread.join().expect("a client thread panicked")?);
    }
    assert!(
        all_counted,
        "with 1,000 connections open, /metrics counts {active:?} active"
    );
    assert_eq!(ports.len(), CONNECTIONS);
    for db in [&a, &b] {
        let n = ports.iter().filter(|&&p| p == db.port()).count();
        assert!(n >= 400, "backend {} holds {n} of 1,000 connections", db.port());
    }
    Ok(())
}

#[test]
fn health_checks_leave_aborted_connects_and_clients_unchanged() {
    let _serial = support::one_at_a_time();
    const CHECKS: u64 = 30;
    let a = MariaDb::start();
    let b = MariaDb::start();
    // A probe that times out mid-login is an aborted connect by definition; the generous timeout
    // keeps a slow moment of a busy test machine from being mistaken for an unclean check.
    let lb = Ringlb::start(
        &[&a, &b],
        "[health]\ninterval_ms = 100\ntimeout_ms = 1000\nrise = 2\nfall = 2\n",
    );
    wait_until(Duration::from_secs(10), "both backends up", || {
        up(&lb, &a) == Some(1.0) && up(&lb, &b) == Some(1.0)
    });
    let before: Vec<(u64, u64, u64)> = [&a, &b]
        .iter()
        .map(|db| {
            (
                db.status("Connections"),
                db.status("Aborted_connects"),
                db.status("Aborted_clients"),
            )
        })
        .collect();
    // The observation window is "until each server has seen 30 more logins", all of them health
    // checks: nothing else connects to the servers meanwhile (the harness reads status over a
    // connection it already holds).
    for (db, (connections, _, _)) in [&a, &b].iter().zip(&before) {
        wait_until(
            Duration::from_secs(30),
            "30 health checks on each backend",
            || db.status("Connections") >= connections + CHECKS,
        );
    }
    for (db, (_, aborted_connects, aborted_clients)) in [&a, &b].iter().zip(&before) {
        assert_eq!(
            db.status("Aborted_connects"),
            *aborted_connects,
            "health checks aborted a login"
        );
        assert_eq!(
            db.status("Aborted_clients"),
            *aborted_clients,
            "health checks left without COM_QUIT"
        );
        assert_eq!(
            up(&lb, db),
            Some(1.0),
            "backend {} went down during the checks",
            db.port()
        );
    }
}

#[test]
fn metrics_and_stats_report_backends_workers_and_growing_byte_counters() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], "");
    let mut conn = lb.conn();
    let port = port_of(&mut conn);
    let (used, other) = if port == a.port() { (&a, &b) } else { (&b, &a) };
    let used_name = used.addr().to_string();
    let bytes = |direction: &str| {
        lb.metric(
            "ringlb_backend_bytes_total",
            &[
                ("backend", &used_name),
                ("listener", "default"),
                ("direction", direction),
            ],
        )
    };

    for db in [&a, &b] {
        assert_eq!(up(&lb, db), Some(1.0), "ringlb_backend_up of {}", db.addr());
        assert_eq!(
            lb.backend_metric("ringlb_backend_connect_errors_total", db.addr()),
            Some(0.0)
        );
        assert!(lb
            .backend_metric("ringlb_backend_connections_total", db.addr())
            .is_some());
        assert!(lb
            .backend_metric("ringlb_backend_active_connections", db.addr())
            .is_some());
    }
    assert_eq!(
        lb.backend_metric("ringlb_backend_connections_total", used.addr()),
        Some(1.0)
    );
    assert_eq!(
        lb.backend_metric("ringlb_backend_active_connections", used.addr()),
        Some(1.0)
    );
    assert_eq!(
        lb.backend_metric("ringlb_backend_active_connections", other.addr()),
        Some(0.0)
    );
    for worker in ["0", "1"] {
        assert!(
            lb.metric("ringlb_worker_accepted_total", &[("worker", worker)])
                .is_some(),
            "ringlb_worker_accepted_total of worker {worker}"
        );
    }
    assert_eq!(lb.metric("ringlb_worker_accepted_total", &[]), Some(1.0));

    // Counters may be published a little after the bytes move: poll, never read once.
    wait_until(
        Duration::from_secs(5),
        "the login's bytes to be counted both ways",
        || bytes("to_backend").unwrap_or(0.0) > 0.0 && bytes("to_client").unwrap_or(0.0) > 0.0,
    );
    let to_backend = bytes("to_backend").expect("bytes to_backend of the used backend");
    let to_client = bytes("to_client").expect("bytes to_client of the used backend");
    let reply: String = conn.query_first("SELECT REPEAT('m', 100000)").unwrap().unwrap();
    assert_eq!(reply.len(), 100_000);
    wait_until(
        Duration::from_secs(5),
        "the byte counters to count the query and its reply",
        || {
            bytes("to_backend").unwrap_or(0.0) > to_backend
                && bytes("to_client").unwrap_or(0.0) >= to_client + 100_000.0
        },
    );

    let stats = lb.stats_json();
    let backends = stats["backends"].as_array().expect("/stats has a backends array");
    assert_eq!(backends.len(), 2);
    for db in [&a, &b] {
        let name = db.addr().to_string();
        assert!(
            backends
                .iter()
                .any(|s| s["backend"] == name.as_str() && s["up"] == true),
            "/stats lists {name} as up: {stats}"
        );
    }
    assert_eq!(
        stats["workers"].as_array().map(Vec::len),
        Some(2),
        "/stats lists two workers: {stats}"
    );
}

#[test]
fn backup_is_used_only_while_the_primary_is_down() {
    let _serial = support::one_at_a_time();
    let mut primary = MariaDb::start();
    let backup = MariaDb::start();
    // The listener comes from the file (its bind is replaced by the harness's --listen), since
    // `backup` is a key of the file's backends.
    let config = format!(
        "[health]\ninterval_ms = 100\nrise = 1\nfall = 1\n\n\
         [[listener]]\nname = \"default\"\nbind = \"127.0.0.1:1\"\n\
         [[listener.backend]]\naddress = \"{}\"\n\
         [[listener.backend]]\naddress = \"{}\"\nbackup = true\n",
        primary.addr(),
        backup.addr()
    );
    let ringlb = Ringlb::start_with_addrs(&[], &config);
    for _ in 0..6 {
        assert_eq!(
            port_of(&mut ringlb.conn()),
            primary.port(),
            "the backup while the primary is up"
        );
    }

    primary.kill();
    for _ in 0..4 {
        assert_eq!(
            port_of(&mut ringlb.conn()),
            backup.port(),
            "the primary is down: the backup answers"
        );
    }

    primary.restart();
    wait_until(Duration::from_secs(30), "the primary counted up again", || {
        ringlb.backend_metric("ringlb_backend_up", primary.addr()) == Some(1.0)
    });
    for _ in 0..6 {
        assert_eq!(
            port_of(&mut ringlb.conn()),
            primary.port(),
            "the primary is back: the backup idles"
        );
    }
}

#[test]
fn clients_outside_the_allow_list_are_closed_and_counted() {
    let _serial = support::one_at_a_time();
    let db = MariaDb::start();
    let listener = |allow: &str| {
        format!(
            "[[listener]]\nname = \"default\"\nbind = \"127.0.0.1:1\"\nallow = [{allow}]\n\
             [[listener.backend]]\naddress = \"{}\"\n",
            db.addr()
        )
    };
    // This host is not in the list: the connection is closed before any byte, and counted.
    let closed = Ringlb::start_with_addrs(&[], &listener("\"10.0.0.0/24\""));
    assert!(
        closed.try_conn().is_err(),
        "a client outside the allow list got through"
    );
    let mut raw = TcpStream::connect(closed.addr()).expect("the TCP connect itself completes");
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    let read = raw.read(&mut byte);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected EOF or reset, got {read:?}"
    );
    wait_until(Duration::from_secs(10), "the rejections counted", || {
        closed.metric("ringlb_listener_rejected_total", &[("listener", "default")]) >= Some(2.0)
    });
    assert_eq!(
        closed.backend_metric("ringlb_backend_connections_total", db.addr()),
        Some(0.0),
        "a rejected client must never reach a backend"
    );
    // In the list: served as usual.
    let open = Ringlb::start_with_addrs(&[], &listener("\"10.0.0.0/24\", \"127.0.0.0/8\""));
    assert_eq!(port_of(&mut open.conn()), db.port());
    assert_eq!(
        open.metric("ringlb_listener_rejected_total", &[("listener", "default")]),
        Some(0.0)
    );
}

#[test]
fn drained_backend_lets_its_held_connection_finish_and_takes_no_new_one() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], "");
    // Two held connections land one on each backend.
    let mut held: Vec<Conn> = (0..2).map(|_| lb.conn()).collect();
    let on_a = held
        .iter_mut()
        .position(|c| port_of(c) == a.port())
        .expect("a held connection on a");

    let drain = lb.command(&["backend", "drain", &a.addr().to_string()]);
    let said = String::from_utf8_lossy(&drain.stdout);
    assert!(
        drain.status.success() && said.contains("drain"),
        "{said}{}",
        String::from_utf8_lossy(&drain.stderr)
    );

    for _ in 0..6 {
        assert_eq!(
            port_of(&mut lb.conn()),
            b.port(),
            "a new connection on the drained backend"
        );
    }
    // The connection held across the drain still works, then finishes normally.
    assert_eq!(port_of(&mut held[on_a]), a.port());
    drop(held);
    wait_until(Duration::from_secs(10), "the held connections closed", || {
        lb.backend_metric("ringlb_backend_active_connections", a.addr()) == Some(0.0)
    });

    let enable = lb.command(&["backend", "enable", &a.addr().to_string()]);
    assert!(
        enable.status.success(),
        "{}",
        String::from_utf8_lossy(&enable.stderr)
    );
    let ports: Vec<u16> = (0..4).map(|_| port_of(&mut lb.conn())).collect();
    assert!(ports.contains(&a.port()), "enabled again but unused: {ports:?}");

    // An unknown backend is one clear line and a non-zero exit.
    let unknown = lb.command(&["backend", "disable", "db-09:3306"]);
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        !unknown.status.success() && err.contains("db-09:3306") && err.lines().count() == 1,
        "{err}"
    );
}

/// Whether a process has ended (gone, or a zombie its parent has not reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn graceful_shutdown_lets_a_running_query_finish() {
    let _serial = support::one_at_a_time();
    let db = MariaDb::start();
    let lb = Ringlb::start(&[&db], "[global]\nshutdown_grace_ms = 20000\n");
    let mut conn = lb.conn();
    let query = std::thread::spawn(move || conn.query_first::<i64, _>("SELECT SLEEP(2)"));
    // The query is running on the server.
    let mut root = db.root_conn().expect("root login");
    wait_until(Duration::from_secs(10), "the SLEEP running on the server", || {
        let rows: Vec<Option<String>> = root
            .query("SELECT info FROM information_schema.processlist")
            .unwrap_or_default();
        rows.iter().flatten().any(|info| info.starts_with("SELECT SLEEP"))
    });

    // SAFETY: kill(2) on the pid of ringlb, a child this test's harness spawned.
    unsafe { libc::kill(lb.pid() as i32, libc::SIGTERM) };
    wait_until(
        Duration::from_secs(10),
        "new connections refused while draining",
        || lb.try_conn().is_err(),
    );
    assert!(!exited(lb.pid()), "ringlb exited with a query still running");
    let answer = query.join().expect("query thread");
    assert_eq!(
        answer.expect("the running query finishes through the draining ringlb"),
        Some(0)
    );
    wait_until(
        Duration::from_secs(10),
        "ringlb exits once its last connection closed",
        || exited(lb.pid()),
    );
}
