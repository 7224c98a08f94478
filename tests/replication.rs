//! Replication-aware pools against real MariaDB replication started by the tests: GTID
//! replication between `mariadbd` processes on loopback ports.
//!
//! The article's master-master pair: each server a replica of the other, with
//! `auto_increment_increment = 2` and offsets 1 and 2 as the article sets them; a writer listener
//! and a reader listener over both. Role changes are awaited by polling `/stats`, never by
//! sleeping.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Conn;
use support::{
    free_port, tcp_opts, wait_until, MariaDb, Ringlb, APP_PASSWORD, APP_USER, CHECK_USER, TEST_SCHEMA,
};

/// Health timing of these tests: a server that dies is out after `FALL` checks `INTERVAL_MS`
/// apart.
const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;
const TIMEOUT_MS: u64 = 500;
/// How long a role change may take: `fall × interval` plus one check, plus a generous margin for
/// a loaded machine (a check that times out, the poll's own interval).
const ROLE_CHANGE: Duration = Duration::from_millis(FALL * INTERVAL_MS + INTERVAL_MS + TIMEOUT_MS + 3000);

/// A server ready to replicate: binary log with GTIDs, the article's auto-increment settings
/// (`increment` servers, this one at `offset`), the replication user and the check user's
/// privilege to read replica status.
fn replicating_server(server_id: u32, increment: u32, offset: u32) -> MariaDb {
    let server = MariaDb::start_with_options(&[
        &format!("--server-id={server_id}"),
        "--log-bin=binlog",
        "--log-slave-updates",
        "--binlog-format=ROW",
        &format!("--auto-increment-increment={increment}"),
        &format!("--auto-increment-offset={offset}"),
        // A replica reconnects at once when its source comes back.
        "--slave-net-timeout=5",
    ]);
    root(
        &server,
        &[
            // Not replicated: every server gets the same accounts from its own setup.
            "SET sql_log_bin = 0",
            "CREATE USER IF NOT EXISTS 'repl'@'%' IDENTIFIED BY 'repl'",
            "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'",
            &format!("GRANT SLAVE MONITOR ON *.* TO '{CHECK_USER}'@'%'"),
            "CREATE TABLE IF NOT EXISTS ringlb_test.writes \
             (id INT AUTO_INCREMENT PRIMARY KEY, server_id INT NOT NULL)",
        ],
    );
    server
}

/// Makes `replica` replicate from `source` (GTID, reconnecting every second).
fn replicate(replica: &MariaDb, source: &MariaDb) {
    root(
        replica,
        &[
            &format!(
                "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {}, MASTER_USER = 'repl', \
             MASTER_PASSWORD = 'repl', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
                source.port()
            ),
            "START SLAVE",
        ],
    );
}

/// Runs `statements` as root on one connection.
fn root(server: &MariaDb, statements: &[&str]) {
    let mut conn = server.root_conn().expect("root connection");
    for sql in statements {
        conn.query_drop(*sql)
            .unwrap_or_else(|e| panic!("{sql} on {}: {e}", server.addr()));
    }
}

/// The article's pair: two masters, each replicating from the other.
fn master_master_pair() -> (MariaDb, MariaDb) {
    let db1 = replicating_server(1, 2, 1);
    let db2 = replicating_server(2, 2, 2);
    replicate(&db1, &db2);
    replicate(&db2, &db1);
    (db1, db2)
}

/// A configuration with a writer listener `rw` on `listen` and a reader listener `ro` on
/// `read_port`, both over `servers`; `keys` are added to the writer listener and the reader
/// listener.
fn role_config(
    listen: SocketAddr,
    admin: SocketAddr,
    read_port: u16,
    servers: &[SocketAddr],
    (writer_keys, reader_keys, health_keys): (&str, &str, &str),
) -> String {
    let backends: String = servers
        .iter()
        .map(|s| format!("[[listener.backend]]\naddress = \"{s}\"\n"))
        .collect();
    format!(
        "[global]\nadmin = \"{admin}\"\n\n\
         [health]\ninterval_ms = {INTERVAL_MS}\nrise = 2\nfall = {FALL}\ntimeout_ms = {TIMEOUT_MS}\n{health_keys}\n\n\
         [[listener]]\nname = \"rw\"\nbind = \"{listen}\"\nrole = \"writer\"\n{writer_keys}\n{backends}\n\
         [[listener]]\nname = \"ro\"\nbind = \"127.0.0.1:{read_port}\"\nrole = \"reader\"\n{reader_keys}\n{backends}"
    )
}

/// A ringlb in front of `servers` with the listeners of [`role_config`]; returns it and the
/// reader listener's port.
fn start_roles(servers: &[SocketAddr], writer_keys: &str) -> (Ringlb, u16) {
    start_with_keys(servers, writer_keys, "")
}

/// [`start_roles`] with keys for each listener.
fn start_with_keys(servers: &[SocketAddr], writer_keys: &str, reader_keys: &str) -> (Ringlb, u16) {
    start_with_health(servers, writer_keys, reader_keys, "")
}

/// [`start_with_keys`] with more `[health]` keys.
fn start_with_health(
    servers: &[SocketAddr],
    writer_keys: &str,
    reader_keys: &str,
    health_keys: &str,
) -> (Ringlb, u16) {
    let read_port = free_port();
    let servers = servers.to_vec();
    let keys = (
        writer_keys.to_string(),
        reader_keys.to_string(),
        health_keys.to_string(),
    );
    let ringlb = Ringlb::start_with_file(move |listen, admin| {
        role_config(listen, admin, read_port, &servers, (&keys.0, &keys.1, &keys.2))
    });
    (ringlb, read_port)
}

/// The writer of listener `listener` as `/stats` shows it.
fn writer(ringlb: &Ringlb, listener: &str) -> Option<String> {
    let stats = ringlb.stats_json();
    let found = stats["listeners"]
        .as_array()
        .expect("listeners in /stats")
        .iter()
        .find(|l| l["listener"] == listener)
        .unwrap_or_else(|| panic!("no listener {listener} in /stats: {stats}"))["writer"]
        .as_str()
        .map(String::from);
    found
}

/// The role `/stats` gives `backend` in `listener`, and why it qualifies for less.
fn role(ringlb: &Ringlb, listener: &str, backend: SocketAddr) -> (String, String) {
    let stats = ringlb.stats_json();
    let b = stats["backends"]
        .as_array()
        .expect("backends in /stats")
        .iter()
        .find(|b| b["listener"] == listener && b["backend"] == backend.to_string())
        .unwrap_or_else(|| panic!("no backend {backend} in {listener}: {stats}"))
        .clone();
    (
        b["role"].as_str().unwrap_or_default().to_string(),
        b["why_not"].as_str().unwrap_or_default().to_string(),
    )
}

fn await_writer(ringlb: &Ringlb, expected: SocketAddr, within: Duration, after: &str) -> Duration {
    let start = Instant::now();
    let expected = expected.to_string();
    wait_until(within, &format!("writer {expected} {after}"), || {
        writer(ringlb, "rw").as_deref() == Some(expected.as_str())
    });
    start.elapsed()
}

/// A login through ringlb's listener on `port`.
fn through(port: u16) -> mysql::Result<Conn> {
    Conn::new(tcp_opts(port, APP_USER, APP_PASSWORD, Some(TEST_SCHEMA)))
}

/// Inserts one row through the writer listener and returns the server that took it.
fn write_through(ringlb: &Ringlb) -> mysql::Result<u32> {
    let mut conn = through(ringlb.addr().port())?;
    conn.query_drop("INSERT INTO writes (server_id) VALUES (@@server_id)")?;
    Ok(conn.query_first("SELECT @@server_id")?.expect("a server id"))
}

/// The number of checks `server` has seen: each is one connection.
fn connections(server: &MariaDb) -> u64 {
    server.status("Connections")
}

#[test]
fn master_master_writes_go_to_one_server_and_move_when_it_fails_or_turns_read_only() {
    let (mut db1, db2) = master_master_pair();
    let (ringlb, read_port) = start_roles(&[db1.addr(), db2.addr()], "");
    await_writer(
        &ringlb,
        db1.addr(),
        ROLE_CHANGE,
        "at start-up: the first listed qualifying server",
    );

    // Every write goes to the writer.
    for _ in 0..20 {
        assert_eq!(write_through(&ringlb).expect("write through rw"), 1);
    }
    // Both servers replicate, with no lag: reads go to both.
    wait_until(ROLE_CHANGE, "both servers readers", || {
        role(&ringlb, "ro", db1.addr()).0 == "reader" && role(&ringlb, "ro", db2.addr()).0 == "reader"
    });
    let mut readers = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let mut conn = through(read_port).expect("read through ro");
        let id: u32 = conn.query_first("SELECT @@server_id").unwrap().unwrap();
        readers.insert(id);
    }
    assert_eq!(readers, [1, 2].into(), "reads spread over both servers");
    assert_eq!(role(&ringlb, "rw", db2.addr()).0, "none");

    // The writer dies: new writes succeed on the other within fall × interval plus one check.
    db1.kill();
    let killed = Instant::now();
    let moved = loop {
        match write_through(&ringlb) {
            Ok(2) => break killed.elapsed(),
            Ok(other) => panic!("a write went to server {other} after server 1 died"),
            Err(_) => {
                assert!(
                    killed.elapsed() < ROLE_CHANGE,
                    "no write succeeded within {ROLE_CHANGE:?} of the writer's death"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    eprintln!("writes resumed on server 2 {moved:?} after server 1 died");
    assert_eq!(
        writer(&ringlb, "rw").as_deref(),
        Some(db2.addr().to_string().as_str())
    );
    // Reads go on too: the survivor's replication from the dead server has stopped, so it is
    // no replica in good standing, and the reader pool falls back to it as a writable server.
    let mut conn = through(read_port).expect("a read through ro with one master dead");
    assert_eq!(conn.query_first::<u32, _>("SELECT @@server_id").unwrap(), Some(2));
    drop(conn);

    // It comes back: the role stays where it is (failback = false).
    db1.restart();
    wait_until(ROLE_CHANGE * 4, "server 1 back and qualifying", || {
        let stats = ringlb.stats_json();
        let up = stats["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["listener"] == "rw" && b["backend"] == db1.addr().to_string() && b["up"] == true);
        up && role(&ringlb, "rw", db1.addr()).1.starts_with("qualifies")
    });
    // Two more checks of server 1, each followed by an election, and the writer has not moved.
    let seen = connections(&db1);
    wait_until(ROLE_CHANGE, "two more checks of server 1", || {
        connections(&db1) >= seen + 2
    });
    assert_eq!(
        writer(&ringlb, "rw").as_deref(),
        Some(db2.addr().to_string().as_str())
    );
    assert_eq!(write_through(&ringlb).unwrap(), 2);

    // An idle connection to the writer, then the writer turns read-only: the role moves, and
    // the idle connection (on_writer_change = "close", the default) is closed.
    let mut idle = through(ringlb.addr().port()).unwrap();
    assert_eq!(idle.query_first::<u32, _>("SELECT @@server_id").unwrap(), Some(2));
    root(&db2, &["SET GLOBAL read_only = 1"]);
    await_writer(
        &ringlb,
        db1.addr(),
        ROLE_CHANGE,
        "after server 2 turned read-only",
    );
    let (_, why) = role(&ringlb, "rw", db2.addr());
    assert!(why.contains("read_only is ON"), "{why}");
    wait_until(
        ROLE_CHANGE,
        "the idle connection to the former writer closed",
        || idle.query_drop("SELECT 1").is_err(),
    );
    assert_eq!(write_through(&ringlb).unwrap(), 1);
    let changes = ringlb.metric("ringlb_writer_changes_total", &[("listener", "rw")]);
    assert_eq!(changes, Some(3.0), "elected, moved on death, moved on read_only");

    // The operator's switchover: refused while server 2 is read-only, done once it is writable.
    let promote = |server: SocketAddr| {
        let out = ringlb.command(&["backend", "promote", &server.to_string()]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    };
    let (ok, said) = promote(db2.addr());
    assert!(!ok && said.contains("read_only is ON"), "{said}");
    root(&db2, &["SET GLOBAL read_only = 0"]);
    wait_until(ROLE_CHANGE, "server 2 writable again", || {
        role(&ringlb, "rw", db2.addr()).1.starts_with("qualifies")
    });
    let (ok, said) = promote(db2.addr());
    assert!(ok, "{said}");
    assert_eq!(
        writer(&ringlb, "rw").as_deref(),
        Some(db2.addr().to_string().as_str())
    );
    assert_eq!(write_through(&ringlb).unwrap(), 2);
    let (ok, said) = promote(SocketAddr::from(([127, 0, 0, 1], free_port())));
    assert!(!ok && said.contains("no backend"), "{said}");

    // Draining the writer hands the role over when the command returns, not at the next check.
    let out = ringlb.command(&["backend", "drain", &db2.addr().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        writer(&ringlb, "rw").as_deref(),
        Some(db1.addr().to_string().as_str())
    );
    let (_, why) = role(&ringlb, "rw", db2.addr());
    assert!(why.contains("drain"), "{why}");
    assert_eq!(write_through(&ringlb).unwrap(), 1);
    // Enabled again, it qualifies, and the role stays where it is.
    let out = ringlb.command(&["backend", "enable", &db2.addr().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        writer(&ringlb, "rw").as_deref(),
        Some(db1.addr().to_string().as_str())
    );
}

#[test]
fn with_failback_the_first_listed_server_takes_the_role_back_and_keep_leaves_connections_open() {
    let (mut db1, db2) = master_master_pair();
    // The notify command appends its arguments to a file, one change per line.
    let dir = support::TempDir::new("rlb-notify");
    let (script, changes) = (dir.path().join("notify.sh"), dir.path().join("changes"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", changes.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ringlb, _) = start_with_health(
        &[db1.addr(), db2.addr()],
        "failback = true\non_writer_change = \"keep\"",
        "",
        &format!("notify = \"{}\"", script.display()),
    );
    await_writer(&ringlb, db1.addr(), ROLE_CHANGE, "at start-up");
    db1.kill();
    await_writer(&ringlb, db2.addr(), ROLE_CHANGE, "after server 1 died");
    let mut kept = through(ringlb.addr().port()).unwrap();
    assert_eq!(kept.query_first::<u32, _>("SELECT @@server_id").unwrap(), Some(2));
    db1.restart();
    await_writer(
        &ringlb,
        db1.addr(),
        ROLE_CHANGE * 4,
        "after server 1 came back (failback)",
    );
    assert_eq!(write_through(&ringlb).unwrap(), 1);
    // on_writer_change = "keep": the connection to the former writer is still served.
    assert_eq!(kept.query_first::<u32, _>("SELECT @@server_id").unwrap(), Some(2));
    // Every change ran the notify command with `writer HOST:PORT REASON`.
    let read = || std::fs::read_to_string(&changes).unwrap_or_default();
    wait_until(ROLE_CHANGE, "three notify lines", || read().lines().count() == 3);
    let lines: Vec<String> = read().lines().map(String::from).collect();
    let (a, b) = (db1.addr().to_string(), db2.addr().to_string());
    assert!(lines[0].starts_with(&format!("writer {a} ")), "{lines:?}");
    assert!(lines[1].starts_with(&format!("writer {b} down")), "{lines:?}");
    assert!(lines[2].starts_with(&format!("writer {a} failback")), "{lines:?}");
}

/// The server ids that `reads` logins through the reader listener landed on.
fn read_ids(read_port: u16, reads: usize) -> std::collections::BTreeSet<u32> {
    (0..reads)
        .map(|_| {
            let mut conn = through(read_port).expect("read through ro");
            conn.query_first("SELECT @@server_id")
                .unwrap()
                .expect("a server id")
        })
        .collect()
}

fn await_role(ringlb: &Ringlb, listener: &str, backend: SocketAddr, expected: &str, after: &str) -> String {
    let mut last = (String::new(), String::new());
    let found = support::poll_until(ROLE_CHANGE * 2, || {
        last = role(ringlb, listener, backend);
        last.0 == expected
    });
    assert!(
        found,
        "{backend} in {listener} is {:?} ({}), not {expected}, {after}",
        last.0, last.1
    );
    last.1
}

#[test]
fn a_replica_that_stops_or_lags_leaves_the_reader_pool_and_comes_back_once() {
    let primary = replicating_server(10, 1, 1);
    let r1 = replicating_server(11, 1, 1);
    let r2 = replicating_server(12, 1, 1);
    for replica in [&r1, &r2] {
        root(replica, &["SET GLOBAL read_only = 1"]);
        replicate(replica, &primary);
    }
    let servers = [primary.addr(), r1.addr(), r2.addr()];
    let (ringlb, read_port) = start_with_keys(&servers, "", "max_lag_s = 2");
    await_writer(
        &ringlb,
        primary.addr(),
        ROLE_CHANGE,
        "at start-up: the only writable server",
    );
    await_role(&ringlb, "ro", r1.addr(), "reader", "at start-up");
    await_role(&ringlb, "ro", r2.addr(), "reader", "at start-up");
    assert_eq!(role(&ringlb, "ro", primary.addr()).0, "primary");
    // The primary takes no reads while a replica qualifies (reader_uses_writer = false).
    assert_eq!(read_ids(read_port, 12), [11, 12].into());

    // r2's SQL thread stops: it leaves the pool, and comes back when it runs again.
    root(&r2, &["STOP SLAVE SQL_THREAD"]);
    let why = await_role(&ringlb, "ro", r2.addr(), "none", "after its SQL thread stopped");
    assert!(why.contains("SQL thread not running"), "{why}");
    assert_eq!(read_ids(read_port, 6), [11].into());
    root(&r2, &["START SLAVE SQL_THREAD"]);
    await_role(
        &ringlb,
        "ro",
        r2.addr(),
        "reader",
        "after its SQL thread ran again",
    );

    // r1 falls behind (MASTER_DELAY holds every event back): out above max_lag_s = 2 ...
    root(
        &r1,
        &[
            "STOP SLAVE",
            "CHANGE MASTER TO MASTER_DELAY = 3600",
            "START SLAVE",
        ],
    );
    root(
        &primary,
        &["INSERT INTO ringlb_test.writes (server_id) VALUES (@@server_id)"],
    );
    let why = await_role(&ringlb, "ro", r1.addr(), "none", "while it lags");
    assert!(why.contains("over max_lag_s 2"), "{why}");
    let lag = ringlb
        .metric(
            "ringlb_backend_replication_lag_seconds",
            &[("backend", &r1.addr().to_string()), ("listener", "ro")],
        )
        .expect("r1's lag exported");
    assert!(lag > 2.0, "{lag}");
    assert_eq!(read_ids(read_port, 6), [12].into());
    // ... and back once it has caught up (lag 0, within lag_return_s = 1).
    root(
        &r1,
        &["STOP SLAVE", "CHANGE MASTER TO MASTER_DELAY = 0", "START SLAVE"],
    );
    await_role(&ringlb, "ro", r1.addr(), "reader", "after it caught up");
    let log = std::fs::read_to_string(ringlb.log_path()).expect("ringlb's log");
    let r1_name = r1.addr().to_string();
    let count = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains(&r1_name))
            .count()
    };
    assert_eq!(count("replica leaves the reader pool"), 1, "{log}");
    assert_eq!(count("replica back in the reader pool"), 1, "{log}");

    // No replica qualifies: the reads fall back to the primary rather than fail.
    root(&r1, &["STOP SLAVE SQL_THREAD"]);
    root(&r2, &["STOP SLAVE SQL_THREAD"]);
    await_role(&ringlb, "ro", r1.addr(), "none", "with its SQL thread stopped");
    await_role(&ringlb, "ro", r2.addr(), "none", "with its SQL thread stopped");
    assert_eq!(read_ids(read_port, 4), [10].into());
}
