//! Who may change the pool through the admin endpoint, against the real binary: reads are open,
//! a change needs the admin token when one is set, and loopback plus the `X-Ringlb-Admin` header
//! when none is. The requests are raw HTTP, as curl or a browser's form would send them; the
//! token case is tried from a second host (a network namespace) too.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{netns, wait_until, MariaDb, Ringlb, TempDir};

/// A token as `openssl rand -hex 32` writes it.
const TOKEN: &str = "3f5a0c9e1b7d24680ace13579bdf02468ace13579bdf02468ace13579bdf0246";

/// Sends one request with `headers` (whole lines, CRLF each) and `body`; the status and the
/// body of the answer.
fn request(admin: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the admin endpoint {admin}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The endpoint's address as Host, as curl sends it, unless `headers` has its own.
    let host = if headers.to_ascii_lowercase().contains("host:") {
        String::new()
    } else {
        format!("Host: {admin}\r\n")
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\n{host}{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    (status, answer)
}

fn post(admin: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    request(admin, "POST", path, headers, "")
}

/// The operator state `/stats` shows for `backend` (every listener has the same here).
fn state(stats: &serde_json::Value, backend: &str) -> String {
    stats["backends"]
        .as_array()
        .expect("backends in /stats")
        .iter()
        .find(|b| b["backend"] == backend)
        .unwrap_or_else(|| panic!("no backend {backend} in {stats}"))["state"]
        .as_str()
        .expect("a state")
        .to_string()
}

/// Writes the token into a file of `mode` in `dir`.
fn token_file(dir: &Path, name: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn without_a_token_changes_need_loopback_and_the_admin_header_and_reads_stay_open() {
    let db = MariaDb::start();
    let lb = Ringlb::start(&[&db], "");
    let admin = lb.admin_addr();
    let backend = db.addr().to_string();
    let disable = format!("/backend/{backend}/disable");

    // What any page a browser opens could send: a form, a text/plain fetch, a bare POST.
    for (headers, body) in [
        ("Content-Type: application/x-www-form-urlencoded\r\n", "a=b"),
        ("Content-Type: text/plain\r\n", "x"),
        ("", ""),
    ] {
        let (status, answer) = request(admin, "POST", &disable, headers, body);
        assert_eq!(status, 403, "{answer}");
        assert!(answer.contains("X-Ringlb-Admin"), "{answer}");
        let (status, answer) = request(admin, "POST", "/reload", headers, body);
        assert_eq!(status, 403, "{answer}");
    }
    assert_eq!(state(&lb.stats_json(), &backend), "enabled");

    // A page that rebound its own name to 127.0.0.1 is same-origin to the browser, which then
    // sends the header too; its Host and Origin give it away.
    for headers in [
        "X-Ringlb-Admin: 1\r\nHost: rebind.evil.example:4041\r\n",
        "X-Ringlb-Admin: 1\r\nOrigin: http://rebind.evil.example:4041\r\n",
    ] {
        let (status, answer) = post(admin, &disable, headers);
        assert_eq!(status, 403, "{headers:?}: {answer}");
    }
    assert_eq!(state(&lb.stats_json(), &backend), "enabled");

    // Reads need nothing.
    for path in ["/metrics", "/stats", "/ha", "/histogram"] {
        assert_eq!(lb.admin_get(path).unwrap().0, 200, "GET {path}");
    }

    // curl with the header, and the CLI (which sends it), may.
    let (status, answer) = post(admin, &disable, "X-Ringlb-Admin: 1\r\n");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&lb.stats_json(), &backend), "disabled");
    let enable = lb.command(&["backend", "enable", &backend]);
    assert!(
        enable.status.success(),
        "{}",
        String::from_utf8_lossy(&enable.stderr)
    );
    assert_eq!(state(&lb.stats_json(), &backend), "enabled");

    // The refusal was logged, naming the path.
    wait_until(Duration::from_secs(5), "the refusal in the log", || {
        lb.log_tail().contains("admin: refused POST")
    });
}

#[test]
fn with_a_token_every_change_needs_it_and_the_cli_reads_it_from_the_flag_or_the_config() {
    let db = MariaDb::start();
    let dir = TempDir::new("rlb-token");
    let token = token_file(dir.path(), "admin.token", 0o600);
    let backend = db.addr().to_string();
    let lb = {
        let (token, backend) = (token.clone(), backend.clone());
        Ringlb::start_with_file(move |listen, admin| {
            format!(
                "[global]\nadmin = \"{admin}\"\nadmin_token_file = \"{}\"\n\n\
                 [[listener]]\nname = \"default\"\nbind = \"{listen}\"\n\
                 [[listener.backend]]\naddress = \"{backend}\"\n",
                token.display()
            )
        })
    };
    let admin = lb.admin_addr();
    let drain = format!("/backend/{backend}/drain");

    // The loopback rule's header is not enough once a token is set.
    let (status, answer) = post(admin, &drain, "X-Ringlb-Admin: 1\r\n");
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("WWW-Authenticate: Bearer"), "{answer}");
    let wrong = format!("Authorization: Bearer {}\r\n", &TOKEN[1..]);
    let (status, answer) = post(admin, &drain, &wrong);
    assert_eq!(status, 403, "{answer}");
    assert_eq!(state(&lb.stats_json(), &backend), "enabled");
    let (status, answer) = post(admin, "/reload", &wrong);
    assert_eq!(status, 403, "{answer}");

    let right = format!("Authorization: Bearer {TOKEN}\r\n");
    let (status, answer) = post(admin, &drain, &right);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(state(&lb.stats_json(), &backend), "drain");
    assert_eq!(lb.admin_get("/metrics").unwrap().0, 200, "reads stay open");

    let ringlb = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(args)
            .output()
            .expect("run ringlb")
    };
    let admin_text = admin.to_string();
    // Without the token the CLI fails in one line that says what is missing.
    let out = ringlb(&["backend", "enable", &backend, "--admin", &admin_text]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("admin token") && err.trim().lines().count() == 1,
        "{err}"
    );
    // --token-file, or the token file the configuration names (and its admin address).
    let token_text = token.to_str().unwrap();
    let out = ringlb(&[
        "backend",
        "enable",
        &backend,
        "--admin",
        &admin_text,
        "--token-file",
        token_text,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(state(&lb.stats_json(), &backend), "enabled");
    let config = lb.config_path();
    let out = ringlb(&["reload", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("reloaded"));

    // --token-file replaces the file's token, which is then not even read (an operator with their
    // own copy of a token file they cannot read).
    let elsewhere = dir.path().join("elsewhere.toml");
    std::fs::write(
        &elsewhere,
        format!("[global]\nadmin = \"{admin}\"\nadmin_token_file = \"/nonexistent/admin.token\"\n"),
    )
    .unwrap();
    let out = ringlb(&[
        "reload",
        "--config",
        elsewhere.to_str().unwrap(),
        "--token-file",
        token_text,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The file's token is not sent to another host that --admin names.
    let out = ringlb(&[
        "reload",
        "--config",
        config.to_str().unwrap(),
        "--admin",
        "192.0.2.1:4041",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.starts_with("ringlb: --admin: 192.0.2.1:4041 is not the admin address"),
        "{err}"
    );

    // A token file others can read is refused by the CLI as by the server.
    let open = token_file(dir.path(), "open.token", 0o644);
    let out = ringlb(&[
        "reload",
        "--admin",
        &admin_text,
        "--token-file",
        open.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--token-file") && err.contains("chmod 600"),
        "{err}"
    );

    assert!(!lb.log_tail().contains(&TOKEN[..16]), "the token is in the log");
}

/// A child process killed when the test ends, whatever way it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn from_another_host_reads_are_open_and_changes_need_the_token() {
    if !netns::require_root() {
        return;
    }
    let topology = netns::Topology::new(&["lb", "remote"]);
    let dir = TempDir::new("rlb-token");
    let token = token_file(dir.path(), "admin.token", 0o600);
    let config = dir.path().join("ringlb.toml");
    // Every address of the node: reachable from the other host, so a token is required.
    std::fs::write(
        &config,
        "[global]\nadmin = \"0.0.0.0:4041\"\nadmin_token_file = \"admin.token\"\n\
         [health]\ncheck = \"tcp\"\n\n\
         [[listener]]\nname = \"default\"\nbind = \"127.0.0.1:4040\"\n\
         [[listener.backend]]\naddress = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let log = dir.path().join("ringlb.log");
    let mut command = topology.command("lb", env!("CARGO_BIN_EXE_ringlb"));
    command
        .args(["run", "--workers", "1", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    support::die_with_parent(&mut command);
    let _ringlb = Killed(command.spawn().expect("start ringlb in the lb namespace"));

    let admin = SocketAddr::from((topology.addr("lb"), 4041));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    topology.run_in("remote", || {
        wait_until(
            Duration::from_secs(20),
            "the admin endpoint from the other host",
            || matches!(support::http_get(admin, "/metrics"), Ok((200, _))),
        );
        assert_eq!(support::http_get(admin, "/stats").unwrap().0, 200);

        let disable = "/backend/127.0.0.1:1/disable";
        // Not from loopback: the header is no help, nor a wrong token.
        assert_eq!(post(admin, disable, "X-Ringlb-Admin: 1\r\n").0, 401);
        assert_eq!(post(admin, disable, "").0, 401);
        let wrong = format!("Authorization: Bearer {}0\r\n", &TOKEN[1..]);
        assert_eq!(post(admin, disable, &wrong).0, 403);
        assert_eq!(post(admin, "/reload", &wrong).0, 403);
        let stats: serde_json::Value =
            serde_json::from_str(&support::http_get(admin, "/stats").unwrap().1).unwrap();
        assert_eq!(state(&stats, "127.0.0.1:1"), "enabled");

        let (status, answer) = post(admin, disable, &format!("Authorization: Bearer {TOKEN}\r\n"));
        assert_eq!(status, 200, "{answer}\n{}", log_text());
        let stats: serde_json::Value =
            serde_json::from_str(&support::http_get(admin, "/stats").unwrap().1).unwrap();
        assert_eq!(state(&stats, "127.0.0.1:1"), "disabled");
    });
    // The CLI from the other host, with the token file.
    let out = topology
        .command("remote", env!("CARGO_BIN_EXE_ringlb"))
        .args([
            "backend",
            "enable",
            "127.0.0.1:1",
            "--admin",
            &admin.to_string(),
            "--token-file",
        ])
        .arg(&token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = log_text();
    assert!(log.contains("admin: refused POST"), "{log}");
    assert!(!log.contains(&TOKEN[..16]), "the token is in the log:\n{log}");
}
