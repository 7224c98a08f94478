//! The real binary against bad input: every failure must end the process with a non-zero status
//! and exactly one line on stderr that names the culprit (the address, the file and line, or the
//! flag), never a panic or a backtrace.
//!
//! `ringlb run` is only given input that fails before start-up (configuration errors, or a port
//! in use, which `runtime::run` checks before any worker starts): valid input would run until a
//! signal. The deadline below is a liveness check, not a timing one.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::free_port;

/// Long enough for a slow machine; a process that takes this long has hung.
const DEADLINE: Duration = Duration::from_secs(10);

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs ringlb with `args`, waiting for it to exit by polling, and kills it at the deadline.
fn ringlb(args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringlb");
    // Drain both pipes on their own threads so a chatty child cannot block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringlb {args:?} still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Outcome {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Asserts the contract for a failure: non-zero status, one `ringlb: ` line on stderr holding
/// every fragment, no panic text.
fn assert_fails_with(args: &[&str], fragments: &[&str]) -> String {
    let out = ringlb(args);
    assert!(
        !out.status.success(),
        "ringlb {args:?} succeeded; stdout: {}",
        out.stdout
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "ringlb {args:?}: stderr is not one line: {:?}",
        out.stderr
    );
    let line = lines[0];
    assert!(
        line.starts_with("ringlb: ") && line.len() > "ringlb: ".len(),
        "{line:?}"
    );
    for fragment in fragments {
        assert!(
            line.contains(fragment),
            "ringlb {args:?}: {line:?} does not name {fragment:?}"
        );
    }
    for forbidden in ["panicked", "backtrace", "internal error"] {
        assert!(!line.contains(forbidden), "{line:?}");
    }
    assert_eq!(out.status.code(), Some(1), "ringlb {args:?}: {line}");
    line.to_string()
}

/// A fresh scratch directory for this test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let path = scratch(name).join("ringlb.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn listen_port_in_use_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    assert_fails_with(
        &[
            "run",
            "--listen",
            &listen,
            "--backend",
            "127.0.0.1:3306",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
        &[&listen, "in use"],
    );
}

#[test]
fn admin_port_in_use_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    assert_fails_with(
        &["run", "--listen", &listen, "--admin", &admin, "--workers", "1"],
        &[&admin, "admin", "in use"],
    );
}

#[test]
fn unresolvable_backend_flag_names_flag_and_address() {
    assert_fails_with(
        &[
            "run",
            "--backend",
            "no-such-host.invalid:3306",
            "--admin",
            "127.0.0.1:0",
        ],
        &["--backend", "cannot resolve", "no-such-host.invalid:3306"],
    );
}

#[test]
fn malformed_backend_flags_name_flag_and_value() {
    assert_fails_with(&["run", "--backend", "nonsense"], &["--backend", "\"nonsense\""]);
    assert_fails_with(
        &["run", "--backend", "host:notaport"],
        &["--backend", "host:notaport"],
    );
    assert_fails_with(
        &["run", "--proxy-backend-addresses", "127.0.0.1:99999"],
        &["--backend", "127.0.0.1:99999"],
    );
}

#[test]
fn bad_workers_values_name_the_flag() {
    assert_fails_with(&["run", "--workers", "0"], &["--workers", "0"]);
    assert_fails_with(&["run", "--workers", "abc"], &["--workers", "abc"]);
    assert_fails_with(&["run", "--workers", "-3"], &["--workers", "-3"]);
}

#[test]
fn bad_listen_and_admin_values_name_the_flag() {
    assert_fails_with(&["run", "--proxy-address", "4040"], &["--listen", "4040"]);
    assert_fails_with(&["run", "--listen", "127.0.0.1:0"], &["--listen", "port 0"]);
    assert_fails_with(&["stats", "--admin", "localhost"], &["--admin", "localhost"]);
}

#[test]
fn missing_config_file_names_the_path() {
    let path = scratch("missing").join("absent.toml");
    let path = path.to_str().unwrap();
    assert_fails_with(&["run", "--config", path], &[path, "No such file"]);
}

#[test]
fn unreadable_config_names_the_path() {
    // Root reads a mode-000 file, so unreadable means a directory or a path through a file.
    let dir = scratch("unreadable");
    let dir_text = dir.to_str().unwrap();
    assert_fails_with(&["run", "--config", dir_text], &[dir_text, "cannot read"]);
    let file = dir.join("plain");
    std::fs::write(&file, "").unwrap();
    let through = file.join("ringlb.toml");
    let through = through.to_str().unwrap();
    assert_fails_with(&["check", "--config", through], &[through, "cannot read"]);
}

#[test]
fn unknown_key_in_config_names_file_line_and_key() {
    let path = write_config(
        "unknown-key",
        "[global]\nworkers = 1\n\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:4040\"\nbackends = []\n",
    );
    let at = format!("{}:7:", path.display());
    assert_fails_with(
        &["run", "--config", path.to_str().unwrap()],
        &[&at, "listener[0].backends", "unknown key"],
    );
}

#[test]
fn syntax_error_in_config_names_file_and_line() {
    let path = write_config("syntax", "[global]\nworkers = 1\nadmin = 127.0.0.1:4041\n");
    let at = format!("{}:3:", path.display());
    assert_fails_with(
        &["run", "--config", path.to_str().unwrap()],
        &[&at, "TOML syntax"],
    );
}

#[test]
fn unresolvable_backend_in_config_names_file_line_key_and_address() {
    let path = write_config(
        "unresolvable",
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:4040\"\n\
         [[listener.backend]]\naddress = \"127.0.0.1:3306\"\n\
         [[listener.backend]]\naddress = \"db-9.invalid:3306\"\n",
    );
    let at = format!("{}:7:", path.display());
    assert_fails_with(
        &["run", "--config", path.to_str().unwrap()],
        &[&at, "listener[0].backend[1].address", "db-9.invalid:3306"],
    );
}

#[test]
fn listen_flag_with_several_listeners_in_the_file_names_the_flag() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/valid/two-listeners.toml");
    assert_fails_with(
        &[
            "run",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:4040",
        ],
        &["--listen", "2 listeners"],
    );
}

#[test]
fn stats_without_a_running_instance_names_the_admin_address() {
    let admin = format!("127.0.0.1:{}", free_port());
    assert_fails_with(&["stats", "--admin", &admin], &[&admin]);
}

#[test]
fn reload_without_a_running_instance_names_the_admin_address() {
    let admin = format!("127.0.0.1:{}", free_port());
    assert_fails_with(&["reload", "--admin", &admin], &[&admin]);
}

#[test]
fn histogram_without_a_running_instance_names_the_admin_address() {
    let admin = format!("127.0.0.1:{}", free_port());
    assert_fails_with(&["histogram", "--admin", &admin], &[&admin, "connection refused"]);
    assert_fails_with(&["histogram", "--admin", "localhost"], &["--admin", "localhost"]);
}

#[test]
fn bad_log_level_names_the_flag() {
    assert_fails_with(&["--log-level", "verbose", "check"], &["--log-level", "verbose"]);
}

#[test]
fn check_prints_the_example_and_its_output_checks_again() {
    let out = ringlb(&["check", "--config", "examples/ringlb.toml"]);
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert!(
        out.stdout
            .contains("[[listener]]\nname = \"mysql\"\nbind = \"0.0.0.0:4040\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("address = \"127.0.0.1:3307\""),
        "{}",
        out.stdout
    );

    let path = write_config("check-round-trip", &out.stdout);
    let again = ringlb(&["check", "--config", path.to_str().unwrap()]);
    assert!(again.status.success(), "stderr: {}", again.stderr);
    let body = |text: &str| text.split_once("\n\n").map(|(_, body)| body.to_string());
    assert_eq!(
        body(&again.stdout),
        body(&out.stdout),
        "the effective configuration is a fixed point"
    );
}

#[test]
fn check_applies_the_flags_over_the_file() {
    let out = ringlb(&[
        "check",
        "--config",
        "examples/ringlb.toml",
        "--proxy-address",
        "127.0.0.1:5040",
        "--backend",
        "localhost:3306",
        "--workers",
        "3",
    ]);
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert!(out.stdout.contains("workers = 3\n"), "{}", out.stdout);
    assert!(out.stdout.contains("bind = \"127.0.0.1:5040\""), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("address = \"localhost:3306\"  # resolved to "),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("3307"),
        "--backend replaces the file's backends: {}",
        out.stdout
    );
}

#[test]
fn run_help_mentions_the_mysql_proxy_aliases() {
    let out = ringlb(&["run", "--help"]);
    assert!(out.status.success());
    for alias in [
        "--proxy-address",
        "--proxy-backend-addresses",
        "--listen",
        "--backend",
        "--log-level",
    ] {
        assert!(out.stdout.contains(alias), "{alias} missing from: {}", out.stdout);
    }
}

#[test]
fn usage_errors_keep_clap_status_two() {
    for args in [&["run", "--no-such-flag"][..], &[][..], &["frobnicate"][..]] {
        let out = ringlb(args);
        assert_eq!(out.status.code(), Some(2), "ringlb {args:?}: {}", out.stderr);
        assert!(out.stderr.contains("Usage"), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
}

#[test]
fn bad_log_format_is_a_usage_error_naming_the_flag() {
    let out = ringlb(&["--log-format", "yaml", "check"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--log-format"), "{}", out.stderr);
    assert!(out.stderr.contains("yaml"), "{}", out.stderr);
}

/// A real `run` with `--log-format json`: every line it writes to stderr, from start-up to a
/// SIGTERM stop, is one JSON object with a level and a message. The backend is a closed port
/// and the check is `tcp`, so the run needs no database; its health-check failures are logged
/// as JSON too.
#[test]
fn log_format_json_writes_one_json_object_per_stderr_line() {
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    let listen = format!("127.0.0.1:{}", free_port());
    let backend = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let config = write_config("log-format-json", "[health]\ncheck = \"tcp\"\n");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .args(["--listen", &listen, "--backend", &backend, "--admin", &admin])
        .args(["--workers", "1"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringlb");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        })
    };

    // "ringlb started" is logged once every listener is bound and the workers run.
    let started = Instant::now();
    while !lines.lock().unwrap().iter().any(|l| l.contains("ringlb started")) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ringlb exited early ({status}): {:?}", lines.lock().unwrap());
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no start-up line within {DEADLINE:?}: {:?}",
                lines.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A clean stop logs too ("stopping"), and only a clean stop guarantees whole last lines.
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child), so the id cannot
    // have been reused by another process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if stopped.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ringlb still running {DEADLINE:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    assert!(status.success(), "ringlb stopped with {status}");

    let lines = lines.lock().unwrap();
    let mut messages = Vec::new();
    for line in lines.iter() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        assert!(event["level"].is_string(), "no level: {line}");
        let message = event["fields"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fields.message: {line}"));
        messages.push(message.to_string());
    }
    for expected in ["listening", "ringlb started", "stopping"] {
        assert!(
            messages.iter().any(|m| m == expected),
            "{expected:?} not in {messages:?}"
        );
    }
}

#[test]
fn check_says_which_driver_the_workers_would_use() {
    let out = ringlb(&["check", "--config", "examples/ringlb.toml"]);
    assert!(out.status.success(), "stderr: {}", out.stderr);
    // This machine has io_uring: `auto` takes it.
    assert!(
        out.stdout
            .contains("# the workers would use the io_uring driver\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("driver = \"auto\"\n"), "{}", out.stdout);
    let out = ringlb(&["check", "--config", "examples/ringlb.toml", "--driver", "epoll"]);
    assert!(out.status.success(), "stderr: {}", out.stderr);
    assert!(
        out.stdout.contains("# the workers would use the epoll driver\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("driver = \"epoll\"\n"), "{}", out.stdout);
}

#[test]
fn an_unknown_driver_is_named_with_the_ones_known() {
    assert_fails_with(
        &["check", "--config", "examples/ringlb.toml", "--driver", "kqueue"],
        &["--driver", "kqueue", "io_uring", "epoll"],
    );
    let path = write_config("bad-driver", "[tuning]\ndriver = \"uring\"\n");
    assert_fails_with(
        &["check", "--config", path.to_str().unwrap()],
        &["tuning.driver", "\"uring\"", ":2:"],
    );
}

/// An admin endpoint others can reach must have a token: `run` and `check` refuse the address,
/// from the flag or the file, in one line that says how to fix it.
#[test]
fn a_non_loopback_admin_address_without_a_token_file_is_refused_by_run_and_check() {
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("0.0.0.0:{}", free_port());
    for command in ["run", "check"] {
        assert_fails_with(
            &[
                command,
                "--listen",
                &listen,
                "--backend",
                "127.0.0.1:3306",
                "--admin",
                &admin,
            ],
            &[
                "--admin: ",
                &admin,
                "not a loopback address",
                "admin_token_file",
                "127.0.0.1",
            ],
        );
    }
    let config = write_config(
        "admin-open",
        &format!("[global]\nworkers = 1\nadmin = \"[::]:{}\"\n", free_port()),
    );
    let config_text = config.to_str().unwrap();
    for command in ["run", "check"] {
        assert_fails_with(
            &[command, "--config", config_text],
            &[
                &format!("{config_text}:3: global.admin: "),
                "not a loopback address",
            ],
        );
    }
}

/// A token file must be private, printable and long; the line names the file and never holds
/// the token.
#[test]
fn an_admin_token_file_that_others_can_read_or_that_is_short_or_unprintable_is_refused() {
    use std::os::unix::fs::PermissionsExt;

    let dir = scratch("admin-token");
    let long = "0123456789abcdef0123456789abcdef";
    let cases: [(&str, &[u8], u32, &str); 4] = [
        ("open", long.as_bytes(), 0o644, "chmod 600"),
        ("short", b"0123456789abcdef", 0o600, "use at least 32"),
        (
            "spaced",
            b"0123456789abcdef 0123456789abcdef",
            0o600,
            "printable ASCII without spaces",
        ),
        ("empty", b"\n", 0o600, "empty"),
    ];
    for (name, contents, mode, fragment) in cases {
        let token = dir.join(name);
        std::fs::write(&token, contents).unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("[global]\nadmin_token_file = \"{name}\"\n")).unwrap();
        let config_text = config.to_str().unwrap();
        let line = assert_fails_with(
            &["check", "--config", config_text],
            &[
                &format!("{config_text}:2: global.admin_token_file: "),
                token.to_str().unwrap(),
                fragment,
            ],
        );
        assert!(
            !line.contains("0123456789abcdef"),
            "the token is in the line: {line}"
        );
    }
}
