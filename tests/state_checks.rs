//! The state a health check reads from a real MariaDB server, through the check's own MySQL
//! client: `read_only` as `SET GLOBAL` leaves it, replica status refused for want of the
//! privilege and read once it is granted (empty on a server that replicates from nobody), Galera
//! variables absent. These statements and replies are what the role-aware pools build on.

mod support;

use std::time::Duration;

use ringlb::config::CheckKind;
use ringlb::health::probe::{probe_state, Alive};
use ringlb::health::resultset::{Reply, ResultSet};
use ringlb::health::state::{self, Replication, ServerState};
use support::{MariaDb, CHECK_USER};

const TIMEOUT: Duration = Duration::from_secs(5);

/// One state check of `server`: the variables, the Galera status and the replica status.
fn check(server: &MariaDb) -> (ServerState, Reply) {
    let replicas = state::replica_status_query(&server_version(server));
    let statements = [state::VARIABLES_QUERY, state::GALERA_STATUS_QUERY, replicas];
    let (alive, replies) = probe_state(CheckKind::Mysql, server.addr(), CHECK_USER, TIMEOUT, &statements)
        .unwrap_or_else(|e| panic!("state check of {}: {e}", server.addr()));
    assert!(matches!(alive, Alive::LoggedIn { .. }), "{alive:?}");
    assert_eq!(replies.len(), 3, "{replies:?}");
    let rows = |reply: &Reply| match reply {
        Reply::Rows(set) => set.clone(),
        other => panic!("{other:?} instead of rows"),
    };
    let replica_reply = replies[2].clone();
    let replica_rows = match &replica_reply {
        Reply::Rows(set) => Some(set.clone()),
        _ => None,
    };
    let state = ServerState::read(&rows(&replies[0]), &rows(&replies[1]), replica_rows.as_ref());
    (state, replica_reply)
}

fn server_version(server: &MariaDb) -> String {
    let mut root = server.root_conn().expect("root connection");
    mysql::prelude::Queryable::query_first::<String, _>(&mut root, "SELECT VERSION()")
        .expect("version")
        .expect("a version")
}

fn root_exec(server: &MariaDb, sql: &str) {
    let mut root = server.root_conn().expect("root connection");
    mysql::prelude::Queryable::query_drop(&mut root, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[test]
fn a_check_reads_read_only_and_replica_status_from_a_real_server() {
    let server = MariaDb::start();
    let (writable, replicas) = check(&server);
    assert!(!writable.read_only);
    assert_eq!(writable.galera, None, "no Galera on a plain server");
    assert_eq!(writable.writable(false), Ok(()));
    // The check user has no privilege: replica status is refused, naming what it needs.
    let Reply::Err(refused) = replicas else {
        panic!("replica status without the privilege: {replicas:?}");
    };
    let privilege = state::replica_status_privilege(&server_version(&server));
    assert!(refused.message.contains(privilege), "{refused}");
    assert_eq!(writable.replication, Replication::NotRead);

    root_exec(&server, "SET GLOBAL read_only = 1");
    root_exec(
        &server,
        &format!("GRANT {privilege} ON *.* TO '{CHECK_USER}'@'%'"),
    );
    let (read_only, replicas) = check(&server);
    assert!(read_only.read_only);
    assert_eq!(read_only.writable(false), Err("read_only is ON".into()));
    assert!(
        matches!(&replicas, Reply::Rows(ResultSet { rows, .. }) if rows.is_empty()),
        "{replicas:?}"
    );
    assert_eq!(read_only.replication, Replication::NotReplica);
    assert_eq!(read_only.replicating(), Err("not a replica".into()));
    root_exec(&server, "SET GLOBAL read_only = 0");
}

#[test]
fn a_check_query_that_answers_zero_takes_the_server_down_until_it_answers_again() {
    let servers = [MariaDb::start(), MariaDb::start()];
    for server in &servers {
        root_exec(server, "CREATE TABLE ringlb_test.health (ok INT NOT NULL)");
        root_exec(server, "INSERT INTO ringlb_test.health VALUES (1)");
        root_exec(
            server,
            &format!("GRANT SELECT ON ringlb_test.health TO '{CHECK_USER}'@'%'"),
        );
    }
    let ringlb = support::Ringlb::start(
        &[&servers[0], &servers[1]],
        "[health]\ninterval_ms = 100\nrise = 2\nfall = 2\ncheck_query = \"SELECT ok FROM ringlb_test.health\"\n",
    );
    let up = |server: &MariaDb| ringlb.backend_metric("ringlb_backend_up", server.addr()) == Some(1.0);
    support::wait_until(Duration::from_secs(10), "both servers up", || {
        up(&servers[0]) && up(&servers[1])
    });
    root_exec(&servers[0], "UPDATE ringlb_test.health SET ok = 0");
    support::wait_until(
        Duration::from_secs(10),
        "server 0 down on its check_query",
        || !up(&servers[0]),
    );
    assert!(up(&servers[1]));
    assert!(
        ringlb.log_tail().contains("check_query returned \"0\""),
        "{}",
        ringlb.log_tail()
    );
    // Every new connection goes to server 1 now.
    for _ in 0..6 {
        let mut conn = ringlb.conn();
        let port: u16 = mysql::prelude::Queryable::query_first(&mut conn, "SELECT @@port")
            .unwrap()
            .unwrap();
        assert_eq!(port, servers[1].port());
    }
    root_exec(&servers[0], "UPDATE ringlb_test.health SET ok = 1");
    support::wait_until(Duration::from_secs(10), "server 0 back up", || up(&servers[0]));
}

#[test]
fn a_check_user_with_a_password_logs_in_and_the_password_stays_out_of_the_log() {
    let server = MariaDb::start();
    root_exec(&server, "CREATE USER 'pwcheck'@'%' IDENTIFIED BY 'Sup3r-s3cret'");
    let dir = support::TempDir::new("rlb-pw");
    let password_file = dir.path().join("check.password");
    std::fs::write(&password_file, "Sup3r-s3cret\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = |listen: std::net::SocketAddr, admin: std::net::SocketAddr| {
        format!(
            "[global]\nadmin = \"{admin}\"\n[health]\ninterval_ms = 100\nuser = \"pwcheck\"\n\
             password_file = \"{}\"\n[[listener]]\nname = \"rw\"\nbind = \"{listen}\"\nrole = \"writer\"\n\
             [[listener.backend]]\naddress = \"{}\"\n",
            password_file.display(),
            server.addr()
        )
    };
    let ringlb = support::Ringlb::start_with_file(config);
    // The writer role needs the state read after a login: it is elected only if the password
    // was right.
    support::wait_until(Duration::from_secs(10), "the server elected writer", || {
        ringlb.metric(
            "ringlb_backend_role",
            &[
                ("backend", &server.addr().to_string()),
                ("listener", "rw"),
                ("role", "writer"),
            ],
        ) == Some(1.0)
    });
    let mut conn = ringlb.conn();
    let one: Option<u32> = mysql::prelude::Queryable::query_first(&mut conn, "SELECT 1").unwrap();
    assert_eq!(one, Some(1));
    let log = std::fs::read_to_string(ringlb.log_path()).unwrap();
    assert!(!log.contains("Sup3r-s3cret"), "{log}");
    assert!(!log.contains("cannot log in"), "{log}");
    let checked = ringlb.command(&["stats"]);
    assert!(!String::from_utf8_lossy(&checked.stdout).contains("Sup3r"));

    // The same file readable by others is refused at start, naming the file and the fix.
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = dir.path().join("ringlb.toml");
    std::fs::write(
        &path,
        config("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("health.password_file") && said.contains("chmod 600"),
        "{said}"
    );
    assert!(!said.contains("Sup3r"), "{said}");
}

/// A CA and a server certificate for 127.0.0.1 signed by it, written into `dir` with openssl;
/// and a second CA that signed nothing. Returns (ca.pem, server.pem, server.key, other-ca.pem).
fn tls_files(dir: &std::path::Path) -> [std::path::PathBuf; 4] {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new(support::find_program("openssl"))
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for ca in ["ca", "other-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=ringlb test {ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    ["ca.pem", "server.pem", "server.key", "other-ca.pem"].map(|f| dir.join(f))
}

#[test]
fn a_server_that_requires_tls_is_checked_over_tls_and_up_only_when_the_login_succeeds() {
    let dir = support::TempDir::new("rlb-tls");
    let [ca, cert, key, other_ca] = tls_files(dir.path());
    let server = MariaDb::start_with_options(&[
        &format!("--ssl-ca={}", ca.display()),
        &format!("--ssl-cert={}", cert.display()),
        &format!("--ssl-key={}", key.display()),
    ]);
    // At run time, after the harness's own plain login has seen the server ready.
    root_exec(&server, "SET GLOBAL require_secure_transport = ON");
    // One ringlb per [health] setting, each with a writer listener over the one server: the
    // writer role needs a login that read the server's state.
    let start = |health: &str| {
        let addr = server.addr();
        let health = health.to_string();
        support::Ringlb::start_with_file(move |listen, admin| {
            format!(
                "[global]\nadmin = \"{admin}\"\n[health]\ninterval_ms = 100\nfall = 1\n{health}\n\
                 [[listener]]\nname = \"rw\"\nbind = \"{listen}\"\nrole = \"writer\"\n\
                 [[listener.backend]]\naddress = \"{addr}\"\n"
            )
        })
    };
    let role = |ringlb: &support::Ringlb, role: &str| {
        ringlb.metric(
            "ringlb_backend_role",
            &[
                ("backend", &server.addr().to_string()),
                ("listener", "rw"),
                ("role", role),
            ],
        ) == Some(1.0)
    };
    let writer_within =
        |ringlb: &support::Ringlb| support::poll_until(Duration::from_secs(5), || role(ringlb, "writer"));

    // tls = "auto" (the default): refused without TLS, then logged in over it.
    let auto = start("");
    assert!(writer_within(&auto), "{}", auto.log_tail());
    assert!(
        auto.log_tail().contains("checks use TLS from now on"),
        "{}",
        auto.log_tail()
    );
    // Clients reach the server through ringlb as they are: its greeting offers them TLS.
    let mut client = auto.tcp_connect().expect("connect through ringlb");
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut greeting = vec![0u8; 512];
    let n = std::io::Read::read(&mut client, &mut greeting).expect("the server's greeting");
    match ringlb::health::mysql::parse_initial(&greeting[4..n]).expect("a greeting") {
        ringlb::health::mysql::InitialPacket::Greeting(g) => {
            assert_ne!(g.capabilities & ringlb::health::mysql::CLIENT_SSL, 0)
        }
        other => panic!("{other:?}"),
    }

    // Verified against the CA that signed the server's certificate.
    let verified = start(&format!("tls = \"required\"\ntls_ca_file = \"{}\"", ca.display()));
    assert!(writer_within(&verified), "{}", verified.log_tail());

    // A CA that did not sign it: the TLS handshake fails, the check fails, the server is down.
    let wrong = start(&format!(
        "tls = \"required\"\ntls_ca_file = \"{}\"",
        other_ca.display()
    ));
    support::wait_until(
        Duration::from_secs(5),
        "the server down on a bad certificate",
        || {
            wrong.metric(
                "ringlb_backend_up",
                &[("backend", &server.addr().to_string()), ("listener", "rw")],
            ) == Some(0.0)
        },
    );
    assert!(wrong.log_tail().contains("TLS"), "{}", wrong.log_tail());

    // tls = "off": the login is refused; the server answers, but is never the writer.
    let off = start("tls = \"off\"");
    support::wait_until(Duration::from_secs(5), "a refused login logged", || {
        off.log_tail().contains("cannot log in")
    });
    assert!(role(&off, "none"), "{}", off.log_tail());
}
