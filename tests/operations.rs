//! Day-two operations against real MariaDB servers: reload (SIGHUP and `ringlb reload`) adding and
//! removing listeners and backends without dropping a connection, a bad reload refused while the
//! old configuration serves on, `maxconn` with its queue and queue timeout, and `idle_timeout_ms`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Conn;
use support::{free_port, poll_until, tcp_opts, wait_until, MariaDb, Ringlb};

fn port_of(conn: &mut Conn) -> u16 {
    conn.query_first("SELECT @@port")
        .expect("SELECT @@port")
        .expect("a row")
}

fn connect(addr: SocketAddr) -> mysql::Result<Conn> {
    Conn::new(tcp_opts(
        addr.port(),
        support::APP_USER,
        support::APP_PASSWORD,
        Some(support::TEST_SCHEMA),
    ))
}

/// A `[global]` section for `admin` with fast health checks.
fn global(admin: SocketAddr) -> String {
    format!(
        "[global]\nadmin = \"{admin}\"\n\n[health]\ninterval_ms = 200\nrise = 2\nfall = 2\nuser = \"ringlb_check\"\n"
    )
}

fn listener(name: &str, bind: SocketAddr, backends: &[&MariaDb], extra: &str) -> String {
    let mut text = format!("\n[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\n{extra}\n");
    for b in backends {
        text.push_str(&format!("[[listener.backend]]\naddress = \"{}\"\n", b.addr()));
    }
    text
}

fn listener_stat(lb: &Ringlb, listener: &str, key: &str) -> u64 {
    let stats = lb.stats_json();
    stats["listeners"]
        .as_array()
        .and_then(|all| all.iter().find(|l| l["listener"] == listener))
        .and_then(|l| l[key].as_u64())
        .unwrap_or_else(|| panic!("no {key} for listener {listener} in {stats}"))
}

fn backends_of(lb: &Ringlb, listener: &str) -> Vec<String> {
    let stats = lb.stats_json();
    let mut names: Vec<String> = stats["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["listener"] == listener)
        .map(|b| b["backend"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn reload_adds_and_removes_listeners_and_backends_while_connections_are_held() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let reads = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let lb = Ringlb::start_with_file(|listen, admin| global(admin) + &listener("writes", listen, &[&a], ""));
    let text = |with_reads: bool, writes: &[&MariaDb]| {
        let mut text = global(lb.admin_addr()) + &listener("writes", lb.addr(), writes, "");
        if with_reads {
            text += &listener("reads", reads, &[&b], "");
        }
        text
    };

    // Held across the reload that adds a listener and a backend.
    let mut held = lb.conn();
    assert_eq!(port_of(&mut held), a.port());
    let (ok, said) = lb.reload_with(&text(true, &[&a, &b]));
    assert!(ok, "reload failed: {said}\n{}", lb.log_tail());
    assert!(
        said.contains("listeners +1 -0") && said.contains("backends +2 -0"),
        "{said}"
    );
    assert_eq!(
        port_of(&mut held),
        a.port(),
        "the held connection after the reload"
    );
    let mut through_reads = connect(reads).expect("a connection through the new listener");
    assert_eq!(port_of(&mut through_reads), b.port());
    assert_eq!(backends_of(&lb, "writes"), {
        let mut both = vec![a.addr().to_string(), b.addr().to_string()];
        both.sort();
        both
    });
    // The new backend of `writes` takes new connections (least connections: `held` is on a).
    let mut second = lb.conn();
    assert_eq!(port_of(&mut second), b.port());

    // SIGHUP removes the `reads` listener and backend b from `writes`; what was open stays open.
    std::fs::write(lb.config_path(), text(false, &[&a])).unwrap();
    lb.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reads listener closed", || {
        std::net::TcpStream::connect(reads).is_err()
    });
    assert_eq!(backends_of(&lb, "writes"), vec![a.addr().to_string()]);
    assert_eq!(
        port_of(&mut through_reads),
        b.port(),
        "a connection of a removed listener"
    );
    assert_eq!(
        port_of(&mut second),
        b.port(),
        "a connection to a removed backend"
    );
    assert_eq!(port_of(&mut held), a.port());
    for _ in 0..3 {
        assert_eq!(
            port_of(&mut lb.conn()),
            a.port(),
            "a new connection to a removed backend"
        );
    }
    drop((held, second, through_reads));

    // Each reload is one line in the log.
    let log = std::fs::read_to_string(lb.log_path()).unwrap();
    let reloads: Vec<&str> = log.lines().filter(|l| l.contains("reloaded:")).collect();
    assert_eq!(reloads.len(), 2, "{log}");
    assert!(
        reloads[1].contains("listeners +0 -1") && reloads[1].contains("backends +0 -2"),
        "{log}"
    );
}

#[test]
fn a_bad_reload_is_refused_and_the_old_configuration_keeps_serving() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start_with_file(|listen, admin| global(admin) + &listener("writes", listen, &[&a], ""));
    let good = global(lb.admin_addr()) + &listener("writes", lb.addr(), &[&a], "");
    let mut held = lb.conn();

    // A typo: refused with the file, line and key, and nothing changes.
    let typo = good.replace("[[listener.backend]]", "[[listener.backend]]\nwieght = 2");
    let (ok, said) = lb.reload_with(&typo);
    let path = lb.config_path().display().to_string();
    assert!(!ok, "a bad file was accepted: {said}");
    assert!(said.contains(&path) && said.contains("wieght"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "{said}");

    // A new listener on a port something else holds: refused before anything changes, so the
    // backend added in the same file is not there either.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let clash = global(lb.admin_addr())
        + &listener("writes", lb.addr(), &[&a, &b], "")
        + &listener("reads", busy, &[&b], "");
    let (ok, said) = lb.reload_with(&clash);
    assert!(
        !ok && said.contains(&busy.to_string()) && said.contains("reads"),
        "{said}"
    );
    assert_eq!(backends_of(&lb, "writes"), vec![a.addr().to_string()]);

    // The old configuration serves on, for the held connection and new ones.
    assert_eq!(port_of(&mut held), a.port());
    for _ in 0..3 {
        assert_eq!(port_of(&mut lb.conn()), a.port());
    }
    assert!(lb.log_tail().contains("reload refused"), "{}", lb.log_tail());
    // And a good reload after the bad ones goes through.
    let (ok, said) =
        lb.reload_with(&(global(lb.admin_addr()) + &listener("writes", lb.addr(), &[&a, &b], "")));
    assert!(ok, "{said}");
}

#[test]
fn maxconn_queues_clients_until_a_slot_frees_and_refuses_them_after_the_queue_timeout() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let short = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let lb = Ringlb::start_with_file(|listen, admin| {
        let limited = |name: &str, bind: SocketAddr, timeout_ms: u64| {
            format!(
                "\n[[listener]]\nname = \"{name}\"\nbind = \"{bind}\"\nqueue_timeout_ms = {timeout_ms}\n\
                 [[listener.backend]]\naddress = \"{}\"\nmaxconn = 1\n",
                a.addr()
            )
        };
        global(admin) + &limited("patient", listen, 30_000) + &limited("short", short, 300)
    });

    // One slot: the first client holds it, the second waits in the queue.
    let mut first = lb.conn();
    assert_eq!(port_of(&mut first), a.port());
    let listen = lb.addr();
    let second = std::thread::spawn(move || {
        let mut conn = connect(listen).expect("the queued client gets in");
        port_of(&mut conn)
    });
    wait_until(Duration::from_secs(10), "the second client queued", || {
        listener_stat(&lb, "patient", "queued") == 1
    });
    assert!(!second.is_finished(), "the second client got past maxconn");
    // The slot frees: the queued client is served.
    drop(first);
    assert_eq!(second.join().unwrap(), a.port());
    assert_eq!(listener_stat(&lb, "patient", "queued"), 0);

    // With a 300 ms queue timeout the waiting client gets MySQL's "Too many connections".
    let mut holder = connect(short).unwrap();
    assert_eq!(port_of(&mut holder), a.port());
    let started = Instant::now();
    match connect(short) {
        Err(mysql::Error::MySqlError(e)) => {
            assert_eq!(e.code, 1040, "{e:?}");
            assert!(e.message.contains("short"), "{e:?}");
        }
        Err(e) => panic!("expected error 1040, got {e}"),
        Ok(_) => panic!("a client got past maxconn = 1"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(listener_stat(&lb, "short", "queue_refused_total"), 1);
    assert_eq!(
        lb.metric("ringlb_listener_queue_refused_total", &[("listener", "short")]),
        Some(1.0)
    );
    // The holder was never disturbed.
    assert_eq!(port_of(&mut holder), a.port());
}

#[test]
fn idle_timeout_closes_a_silent_connection_and_spares_a_busy_one() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let lb = Ringlb::start_with_file(|listen, admin| {
        global(admin) + &listener("writes", listen, &[&a], "idle_timeout_ms = 500")
    });
    let mut silent = lb.conn();
    let mut busy = lb.conn();
    assert_eq!(port_of(&mut silent), a.port());
    // `busy` queries every 100 ms for well past the timeout while `silent` says nothing.
    let closed = poll_until(Duration::from_secs(10), || {
        port_of(&mut busy);
        std::thread::sleep(Duration::from_millis(100));
        listener_stat(&lb, "writes", "idle_closed_total") >= 1
    });
    assert!(closed, "the silent connection was not closed\n{}", lb.log_tail());
    assert_eq!(
        listener_stat(&lb, "writes", "idle_closed_total"),
        1,
        "the busy one was closed too"
    );
    assert!(
        silent.query_drop("SELECT 1").is_err(),
        "the idle connection still answers"
    );
    assert_eq!(port_of(&mut busy), a.port());
}

#[test]
fn reload_of_an_instance_started_from_flags_alone_is_refused_in_one_line() {
    let lb = Ringlb::start_with_addrs(&["127.0.0.1:9".parse().unwrap()], "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["reload", "--admin"])
        .arg(lb.admin_addr().to_string())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--config") && err.trim().lines().count() == 1,
        "{err}"
    );
    // SIGHUP is refused the same way, in the log, and ringlb runs on.
    lb.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(5), "the refusal logged twice", || {
        std::fs::read_to_string(lb.log_path())
            .unwrap()
            .matches("reload refused")
            .count()
            == 2
    });
    assert!(lb.stats_json()["backends"].is_array());
}
