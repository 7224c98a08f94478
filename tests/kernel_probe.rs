//! Where io_uring is unusable (here: a seccomp filter, as a container runtime would install),
//! ringlb runs on its epoll driver by default, and with `driver = "io_uring"` refuses to start
//! with one line naming the cause and the fix.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use support::{Launch, MariaDb, Ringlb};

/// Makes `io_uring_setup` fail with `errno` in the child, everything else allowed.
fn deny_io_uring_setup(cmd: &mut Command, errno: i32) {
    support::deny_syscalls(cmd, &[libc::SYS_io_uring_setup], errno);
}

fn run_denied(errno: i32) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringlb"));
    cmd.args([
        "run",
        "--driver",
        "io_uring",
        "--listen",
        "127.0.0.1:1",
        "--backend",
        "127.0.0.1:9",
        "--admin",
        "127.0.0.1:2",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    deny_io_uring_setup(&mut cmd, errno);
    let mut child = cmd.spawn().expect("spawn ringlb");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringlb kept running without io_uring");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    (status.success(), stderr)
}

#[test]
fn io_uring_blocked_by_seccomp_is_named_with_its_fix() {
    let (ok, stderr) = run_denied(libc::EPERM);
    assert!(!ok, "ringlb must exit non-zero");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].contains("io_uring"), "{stderr}");
    assert!(lines[0].contains("seccomp"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn io_uring_missing_from_the_kernel_is_named() {
    let (ok, stderr) = run_denied(libc::ENOSYS);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(
        lines[0].contains("ENOSYS") && lines[0].contains("CONFIG_IO_URING"),
        "{stderr}"
    );
}

#[test]
fn with_the_io_uring_calls_refused_as_dockers_profile_does_ringlb_serves_mariadb_through_epoll() {
    let db = MariaDb::start();
    let lb = Ringlb::launch(
        &[db.addr()],
        "",
        Launch {
            deny_io_uring: true,
            ..Launch::default()
        },
    );
    let mut conn = lb.conn();
    conn.query_drop("CREATE TABLE IF NOT EXISTS fallback (id INT PRIMARY KEY, word VARCHAR(20))")
        .unwrap();
    conn.query_drop("REPLACE INTO fallback VALUES (1, 'epoll')")
        .unwrap();
    let word: String = conn
        .query_first("SELECT word FROM fallback WHERE id = 1")
        .unwrap()
        .unwrap();
    assert_eq!(word, "epoll");
    // A result bigger than a buffer goes through the splice path.
    let big: String = conn.query_first("SELECT REPEAT('x', 1000000)").unwrap().unwrap();
    assert_eq!(big.len(), 1_000_000);
    drop(conn);
    assert_eq!(lb.metric("ringlb_driver", &[("driver", "epoll")]), Some(1.0));
    let stats = lb.stats_json();
    assert_eq!(stats["driver"], "epoll", "{stats}");
    let log = lb.log_tail();
    let fallback: Vec<&str> = log.lines().filter(|l| l.contains("workers use epoll")).collect();
    assert_eq!(fallback.len(), 1, "one line says why: {log}");
    assert!(fallback[0].contains("seccomp"), "{log}");
}
