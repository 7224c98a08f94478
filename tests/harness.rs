//! Tests of the test harness itself: the MariaDB servers it starts are real, private, tell
//! themselves apart, survive a crash and restart on the same port; the metrics parser reads
//! Prometheus text correctly. These need no proxy, so a failure here points at the harness (or
//! the machine), not at ringlb.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use mysql::prelude::Queryable;
use support::{metric_value, parse_metrics, wait_until, EofReplyServer, MariaDb, CHECK_USER};

#[test]
fn two_servers_answer_direct_logins_with_their_own_port() {
    let a = MariaDb::start();
    let b = MariaDb::start();
    assert_ne!(a.port(), b.port());
    for server in [&a, &b] {
        let mut conn = server.conn();
        let port: u16 = conn.query_first("SELECT @@port").unwrap().unwrap();
        assert_eq!(port, server.port());
    }
}

#[test]
fn app_user_owns_the_test_schema_and_check_user_logs_in_without_password() {
    let db = MariaDb::start();
    let mut app = db.conn();
    app.query_drop("CREATE TABLE ringlb_test.t (id INT PRIMARY KEY, v VARCHAR(10))")
        .unwrap();
    app.query_drop("INSERT INTO ringlb_test.t VALUES (1, 'one')")
        .unwrap();
    let v: String = app
        .query_first("SELECT v FROM ringlb_test.t WHERE id = 1")
        .unwrap()
        .unwrap();
    assert_eq!(v, "one");

    // The health-check user: a login with no password, and nothing else.
    let mut check = db.conn_as(CHECK_USER, "");
    let user: String = check.query_first("SELECT CURRENT_USER()").unwrap().unwrap();
    assert_eq!(user, "ringlb_check@%");
    assert!(
        check.query_drop("SELECT * FROM ringlb_test.t").is_err(),
        "ringlb_check must have no privileges"
    );
}

#[test]
fn killed_server_refuses_then_restarts_on_the_same_port_with_its_data() {
    let mut db = MariaDb::start();
    let port = db.port();
    db.conn()
        .query_drop("CREATE TABLE ringlb_test.kept (id INT) ENGINE=InnoDB")
        .unwrap();
    db.conn()
        .query_drop("INSERT INTO ringlb_test.kept VALUES (7)")
        .unwrap();

    db.kill();
    assert!(!db.is_running());
    let refused = TcpStream::connect_timeout(&db.addr(), Duration::from_secs(1));
    assert!(refused.is_err(), "a killed server must refuse connections");

    db.restart();
    assert_eq!(db.port(), port);
    let mut conn = db.conn();
    let kept: u32 = conn
        .query_first("SELECT id FROM ringlb_test.kept")
        .unwrap()
        .unwrap();
    assert_eq!(kept, 7, "the data directory survives a crash and restart");
    assert!(db.status("Uptime") < 600);
}

#[test]
fn status_counters_are_read_without_moving_connections() {
    let db = MariaDb::start();
    // The harness reads status over one long-lived login, so polling a counter does not change it.
    let before = db.status("Connections");
    for _ in 0..5 {
        db.status("Aborted_connects");
    }
    assert_eq!(db.status("Connections"), before);
    drop(db.conn());
    wait_until(Duration::from_secs(5), "Connections to count a new login", || {
        db.status("Connections") == before + 1
    });
    assert_eq!(
        db.status("Aborted_connects"),
        0,
        "a login that quits cleanly is not aborted"
    );
}

#[test]
fn eof_reply_server_answers_only_after_the_client_half_closes() {
    let server = EofReplyServer::start();
    let mut stream = TcpStream::connect(server.addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"hello").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"hello");
}

#[test]
fn metrics_parser_reads_labels_values_and_sums_partial_matches() {
    let text = "\
# HELP ringlb_backend_up Whether the backend passes its health check.
# TYPE ringlb_backend_up gauge
ringlb_backend_up{backend=\"127.0.0.1:3306\",listener=\"default\"} 1
ringlb_backend_up{backend=\"127.0.0.1:3307\",listener=\"default\"} 0
ringlb_backend_bytes_total{backend=\"127.0.0.1:3306\",listener=\"default\",direction=\"to_backend\"} 120
ringlb_backend_bytes_total{backend=\"127.0.0.1:3306\",listener=\"default\",direction=\"to_client\"} 3.5e3
ringlb_worker_accepted_total{worker=\"0\"} 4
ringlb_worker_accepted_total{worker=\"1\"} 6
odd{path=\"a \\\"quoted\\\" \\\\ value\"} +Inf
plain_metric 42
";
    assert_eq!(parse_metrics(text).len(), 8);
    let up = |b: &str| {
        metric_value(
            text,
            "ringlb_backend_up",
            &[("backend", b), ("listener", "default")],
        )
    };
    assert_eq!(up("127.0.0.1:3306"), Some(1.0));
    assert_eq!(up("127.0.0.1:3307"), Some(0.0));
    assert_eq!(up("127.0.0.1:9999"), None);
    assert_eq!(
        metric_value(text, "ringlb_backend_bytes_total", &[("direction", "to_client")]),
        Some(3500.0)
    );
    assert_eq!(
        metric_value(text, "ringlb_backend_bytes_total", &[]),
        Some(3620.0)
    );
    assert_eq!(
        metric_value(text, "ringlb_worker_accepted_total", &[]),
        Some(10.0)
    );
    assert_eq!(
        metric_value(text, "odd", &[("path", "a \"quoted\" \\ value")]),
        Some(f64::INFINITY)
    );
    assert_eq!(metric_value(text, "plain_metric", &[]), Some(42.0));
    assert_eq!(metric_value(text, "missing", &[]), None);
}

#[test]
fn cpu_seconds_counts_the_work_of_every_thread_of_a_process() {
    /// This thread's own CPU time, from the kernel's per-thread clock.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
    let pid = std::process::id();
    let before = support::cpu_seconds(pid);
    // Two threads spin until each has had 100 ms of CPU by its own clock, however loaded the
    // machine is; the process's count must hold both, less the kernel's 10 ms ticks.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let mut x = 0u64;
                while thread_cpu() < Duration::from_millis(100) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                x
            })
        })
        .collect();
    for spinner in spinners {
        spinner.join().expect("spinner");
    }
    let used = support::cpu_seconds(pid) - before;
    assert!(
        used >= 0.15,
        "two threads that used 100 ms of CPU each were counted {used} s"
    );
    assert!(used < 5.0, "implausible CPU count {used} s");
}
