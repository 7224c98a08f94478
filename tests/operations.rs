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
    // More wait, spread over both workers: waiting costs no CPU (no worker wakes another while
    // the backend stays full).
    let more: Vec<_> = (0..5)
        .map(|_| {
            std::thread::spawn(move || {
                let mut conn = connect(listen).expect("a queued client gets in");
                port_of(&mut conn)
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "six clients queued", || {
        listener_stat(&lb, "patient", "queued") == 6
    });
    let cpu_before = lb.cpu_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let cpu = lb.cpu_seconds() - cpu_before;
    eprintln!("[queue] six clients queued for 1 s: ringlb used {cpu:.3} CPU s");
    assert!(
        cpu < 0.5,
        "ringlb spins while clients wait: {cpu:.3} CPU s in 1 s"
    );
    // The slot frees: the queued clients are served, one after another.
    drop(first);
    assert_eq!(second.join().unwrap(), a.port());
    for client in more {
        assert_eq!(client.join().unwrap(), a.port());
    }
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
    let out = lb.command(&["reload"]);
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

#[test]
fn send_proxy_shows_mariadb_the_clients_own_address_and_health_checks_still_log_in() {
    let _serial = support::one_at_a_time();
    let db = MariaDb::start_with_options(&["--proxy-protocol-networks=127.0.0.0/8,::1/128"]);
    // The client connects from 127.0.0.7; without a header MariaDB would see ringlb (127.0.0.1).
    let client = SocketAddr::from(([127, 0, 0, 7], 0));
    for version in ["v1", "v2"] {
        let lb = Ringlb::start_with_file(|listen, admin| {
            global(admin) + &listener("writes", listen, &[&db], &format!("send_proxy = \"{version}\""))
        });
        let opts = tcp_opts(
            lb.addr().port(),
            support::APP_USER,
            support::APP_PASSWORD,
            Some(support::TEST_SCHEMA),
        )
        .bind_address(Some(client));
        let mut conn = Conn::new(opts).unwrap_or_else(|e| panic!("{version}: {e}\n{}", lb.log_tail()));
        let host: String = conn
            .query_first("SELECT host FROM information_schema.processlist WHERE id = CONNECTION_ID()")
            .unwrap()
            .unwrap();
        assert!(host.starts_with("127.0.0.7:"), "{version}: MariaDB saw {host}");

        // Health checks (every 200 ms) go through the header too, log in, and leave cleanly.
        let aborted = db.status("Aborted_connects");
        let connections = db.status("Connections");
        wait_until(Duration::from_secs(10), "five more health checks", || {
            db.status("Connections") >= connections + 5
        });
        assert_eq!(
            db.status("Aborted_connects"),
            aborted,
            "{version}: checks aborted"
        );
        let backend = db.addr().to_string();
        assert_eq!(
            lb.metric(
                "ringlb_backend_up",
                &[("backend", &backend), ("listener", "writes")]
            ),
            Some(1.0),
            "{version}\n{}",
            lb.log_tail()
        );
    }
}

#[test]
fn latency_histograms_show_a_p99_per_backend_and_sigusr1_dumps_them() {
    let _serial = support::one_at_a_time();
    let db = MariaDb::start();
    let lb = Ringlb::start_with_file(|listen, admin| {
        global(admin).replace("[global]\n", "[global]\nhistogram_dump = \"histograms.hlog\"\n")
            + &listener("writes", listen, &[&db], "")
    });
    let backend = db.addr().to_string();
    // One login (its reply is a first byte too), 100 quick queries and two slow ones: the p99 of
    // the time to the first response byte is a slow one, the median a quick one.
    let mut conn = lb.conn();
    for _ in 0..100 {
        conn.query_drop("SELECT 1").unwrap();
    }
    for _ in 0..2 {
        conn.query_drop("SELECT SLEEP(0.2)").unwrap();
    }
    drop(conn);
    wait_until(
        Duration::from_secs(10),
        "the connection's lifetime recorded",
        || lb.stats_json()["backends"][0]["active_connections"] == 0,
    );

    let out = lb.command(&["histogram", "--format", "json", "--backend", &backend]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let only = &report["backends"][0];
    assert_eq!(only["backend"], backend.as_str(), "{report}");
    let first_byte = &only["first_byte"];
    assert!(first_byte["count"].as_u64().unwrap() >= 102, "{report}");
    assert!(first_byte["p99_us"].as_u64().unwrap() >= 200_000, "{report}");
    assert!(first_byte["p50_us"].as_u64().unwrap() < 100_000, "{report}");
    assert_eq!(only["connect"]["count"], 1, "{report}");
    assert_eq!(only["lifetime"]["count"], 1, "{report}");
    assert!(
        only["lifetime"]["max_us"].as_u64().unwrap() >= 400_000,
        "{report}"
    );

    // The table for people names the percentiles.
    let out = lb.command(&["histogram"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && table.contains("P99") && table.contains(&backend),
        "{table}"
    );

    // Prometheus histograms: every request counted, the slow ones above the 100 ms bucket.
    let labels = [("backend", backend.as_str()), ("listener", "writes")];
    let count = lb
        .metric("ringlb_backend_first_byte_seconds_count", &labels)
        .unwrap();
    assert!(count >= 102.0, "{count}");
    let metrics = lb.metrics();
    let under_100ms = support::parse_metrics(&metrics)
        .into_iter()
        .find(|s| {
            s.name == "ringlb_backend_first_byte_seconds_bucket"
                && s.labels.get("backend") == Some(&backend)
                && s.labels.get("le").map(String::as_str) == Some("0.1")
        })
        .expect("a 100 ms bucket")
        .value;
    assert_eq!(under_100ms, count - 2.0, "{metrics}");

    // SIGUSR1 writes the same as an HdrHistogram log next to the configuration file.
    let dump = lb.config_path().with_file_name("histograms.hlog");
    lb.signal(libc::SIGUSR1);
    wait_until(Duration::from_secs(10), "the histogram dump", || dump.exists());
    let log = std::fs::read_to_string(&dump).unwrap();
    for kind in ["connect", "first_byte", "lifetime"] {
        assert!(
            log.contains(&format!("backend={backend};kind={kind}")),
            "{kind} missing from\n{log}"
        );
    }
}

#[test]
fn reloads_under_connection_churn_fail_no_connection() {
    let _serial = support::one_at_a_time();
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start_with_file(|listen, admin| global(admin) + &listener("writes", listen, &[&a], ""));
    let with_b = global(lb.admin_addr()) + &listener("writes", lb.addr(), &[&a, &b], "");
    let without_b = global(lb.admin_addr()) + &listener("writes", lb.addr(), &[&a], "");

    // Clients connect, query and quit in a loop on two threads while the backend set changes
    // under them ten times.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listen = lb.addr();
    let churn: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match connect(listen).and_then(|mut c| c.query_first::<u16, _>("SELECT @@port")) {
                        Ok(Some(_)) => ok += 1,
                        Ok(None) => failed.push("no row".to_string()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut held = lb.conn();
    for round in 0..10 {
        let text = if round % 2 == 0 { &with_b } else { &without_b };
        let (ok, said) = lb.reload_with(text);
        assert!(ok, "reload {round}: {said}");
        let expected = if round % 2 == 0 { 2 } else { 1 };
        assert_eq!(backends_of(&lb, "writes").len(), expected, "after reload {round}");
        assert_eq!(
            port_of(&mut held),
            a.port(),
            "the held connection after reload {round}"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for thread in churn {
        let (o, f) = thread.join().unwrap();
        ok += o;
        failed.extend(f);
    }
    eprintln!(
        "[reload] 10 reloads under churn: {ok} connections answered, {} failed",
        failed.len()
    );
    assert!(ok > 0, "no connection went through");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
}
