//! The integration-test harness: real MariaDB servers, a real `ringlb` process, and small helpers
//! to talk to both.
//!
//! Every test file includes it with `mod support;`. What it promises:
//!
//! - [`MariaDb::start`] gives a private server on a free port of 127.0.0.1, in its own temporary
//!   directory, with the users every test needs (`app`/`app` with all privileges on
//!   [`TEST_SCHEMA`]; `ringlb_check` with no password and no privileges, for the health check).
//!   `SELECT @@port` tells servers apart through the proxy.
//! - [`Ringlb::start`] runs the binary under test in front of given backends, with stderr captured
//!   to a file whose tail is printed when start-up fails.
//! - Nothing outlives the test: `Drop` kills servers and ringlb and removes their directories, and
//!   every child gets `PR_SET_PDEATHSIG` so that even a test killed by a timeout leaves no server
//!   running.
//! - [`netns::Topology`] gives private network namespaces on a bridge of their own, for the HA
//!   tests: nodes, links to cut and restore, code run inside a node.
//! - Nothing sleeps a fixed time: readiness is polled with a deadline, and a timeout panics with a
//!   message naming what was awaited (and the log tail where there is one).
//!
//! `mariadb-install-db` runs once per build into a template data directory (under cargo's target
//! tmp dir, keyed by the MariaDB version) that every server copies, because installing is much
//! slower than copying.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

/// Network namespaces joined by a bridge, for the HA tests.
pub mod netns;

/// The schema `app` owns on every test server.
pub const TEST_SCHEMA: &str = "ringlb_test";
/// The test user, as in the article's `some_user`.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app";
/// The user ringlb's mysql health check logs in as (no password, no privileges).
pub const CHECK_USER: &str = "ringlb_check";

/// How long a MariaDB server or ringlb may take to become ready before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on a test's client connections, so that a proxy that swallows a connection fails the
/// test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds; panics naming `what` once `deadline` has passed.
pub fn wait_until(deadline: Duration, what: &str, condition: impl FnMut() -> bool) {
    if !poll_until(deadline, condition) {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// Polls `condition` every 20 ms until it holds (true) or `deadline` passes (false). For callers
/// that must not panic yet, e.g. while other threads wait on a barrier.
pub fn poll_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if condition() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// A port on 127.0.0.1 that was free a moment ago, and never handed out before in this process:
/// the kernel may give the same ephemeral port to two probes in a row, and a test that asks
/// for a listener port and an admin port must not get one port twice. Another process may
/// still take it before the caller binds it; the starters below retry with a new port when
/// that happens.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local_addr of a bound socket")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A directory under the system temp dir, removed with everything in it on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Short names: a server's Unix socket lives inside, and socket paths are limited to 107 bytes.
        let name = format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `lines` lines of a log file, for panic messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Makes a child die with the test process, even when the test is killed and no `Drop` runs.
/// The signal comes when the *thread* that spawned the child exits, so spawn long-lived children
/// from a thread that lives as long as they should.
pub fn die_with_parent(command: &mut Command) {
    let hook = || {
        // SAFETY: prctl with integer arguments touches no memory; it is async-signal-safe.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only calls prctl.
    unsafe { command.pre_exec(hook) };
}

/// Gives the child `limit` open descriptors at most (`RLIMIT_NOFILE`, soft and hard), from
/// before it runs its first instruction.
pub fn limit_open_files(command: &mut Command, limit: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    let hook = move || {
        // SAFETY: setrlimit reads the rlimit it is given, which lives in the closure.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec and only calls setrlimit, which is
    // async-signal-safe.
    unsafe { command.pre_exec(hook) };
}

/// Installs a seccomp filter in the child that makes each of `syscalls` fail with `errno`,
/// everything else allowed, as a container runtime's profile does (Docker's and containerd's
/// default profiles refuse the io_uring calls with EPERM).
pub fn deny_syscalls(command: &mut Command, syscalls: &'static [libc::c_long], errno: i32) {
    let statement = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    // Load the syscall number; for each denied one, return the errno on a match. Built here,
    // before the fork: the child may not allocate.
    let mut filter = vec![statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0)];
    for &nr in syscalls {
        filter.push(statement(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            nr as u32,
        ));
        let deny = libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA);
        filter.push(statement(libc::BPF_RET | libc::BPF_K, 0, 0, deny));
    }
    filter.push(statement(
        libc::BPF_RET | libc::BPF_K,
        0,
        0,
        libc::SECCOMP_RET_ALLOW,
    ));
    let hook = move || {
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prctl with integer arguments touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel copies the program, which `filter` (owned by the closure) backs
        // for the length of the call, and only reads it.
        if unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec; it only calls prctl, which is
    // async-signal-safe, and allocates nothing.
    unsafe { command.pre_exec(hook) };
}

/// The io_uring system calls, as Docker's default seccomp profile refuses them.
pub const IO_URING_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// The path of an installed program, looked up in PATH and the sbin directories; panics naming
/// the program when it is missing.
pub fn find_program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/local/bin"),
        ])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found in PATH or /usr/sbin: run scripts/test, which installs MariaDB")
        })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A `tmpdir` of the server's own: servers sharing /tmp have been seen to delete each other's
/// internal temporary tables during `mariadb-install-db`.
fn private_tmpdir(dir: &Path) -> PathBuf {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
    tmp
}

/// Server options shared by `mariadb-install-db` and every start, so that the template's InnoDB
/// files match what the server expects. Small and fast: a test server holds little data.
const SMALL_SERVER_OPTIONS: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    // Native AIO needs a kernel AIO budget that parallel test servers can exhaust.
    "--innodb-use-native-aio=0",
];

/// Statements run at every start (`--init-file`), so a restarted server has them too.
const INIT_SQL: &str = "\
CREATE DATABASE IF NOT EXISTS ringlb_test;
CREATE USER IF NOT EXISTS 'app'@'%' IDENTIFIED BY 'app';
GRANT ALL PRIVILEGES ON ringlb_test.* TO 'app'@'%';
CREATE USER IF NOT EXISTS 'ringlb_check'@'%';
";

/// The template data directory, installed once per build (per MariaDB version and options) under
/// cargo's target tmp dir and shared by every test process after that: with one process per
/// test, installing it per process cost about 2 s per test.
///
/// It is installed into a staging directory of its own and renamed into place, so a reader sees
/// either a whole template or none; a process that loses the race to rename removes its copy and
/// uses the winner's. The template is never written after that (servers copy it).
fn template() -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(install_template).join("data")
}

/// Where the template for this MariaDB and these options lives: the key changes when
/// `mariadbd --version`, the options or the user the server runs as do.
fn template_root() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let version = Command::new(find_program("mariadbd"))
        .arg("--version")
        .output()
        .expect("run mariadbd --version");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    version.stdout.hash(&mut hasher);
    SMALL_SERVER_OPTIONS.hash(&mut hasher);
    is_root().hash(&mut hasher);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("mariadb-template-{:016x}", hasher.finish()))
}

fn install_template() -> PathBuf {
    let root = template_root();
    if root.join("data").is_dir() {
        return root;
    }
    let parent = root.parent().expect("the template has a parent directory");
    std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    let staging = parent.join(format!(
        "{}.staging-{}",
        root.file_name()
            .expect("the template has a name")
            .to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap_or_else(|e| panic!("create {}: {e}", staging.display()));
    let data = staging.join("data");
    let log = staging.join("install.log");
    let tmp = private_tmpdir(&staging);
    let log_file = std::fs::File::create(&log).expect("create install.log");
    let mut command = Command::new(find_program("mariadb-install-db"));
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        // root@localhost and root@127.0.0.1 with no password: the harness's admin login.
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg(format!("--tmpdir={}", tmp.display()))
        .args(SMALL_SERVER_OPTIONS)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("clone install.log handle"))
        .stderr(log_file);
    if is_root() {
        command.arg("--user=root");
    }
    let status = command.status().expect("run mariadb-install-db");
    if !status.success() {
        let tail = log_tail(&log, 30);
        let _ = std::fs::remove_dir_all(&staging);
        panic!("mariadb-install-db failed ({status}):\n{tail}");
    }
    if std::fs::rename(&staging, &root).is_err() {
        // Another test process renamed its template into place first.
        let _ = std::fs::remove_dir_all(&staging);
        assert!(
            root.join("data").is_dir(),
            "no template data directory at {} after installing one",
            root.display()
        );
    }
    root
}

/// Connection options for a login over TCP (never the Unix socket: the mysql crate would
/// otherwise switch to the server's socket and bypass the proxy).
pub fn tcp_opts(port: u16, user: &str, password: &str, schema: Option<&str>) -> OptsBuilder {
    tcp_opts_to("127.0.0.1", port, user, password, schema)
}

/// [`tcp_opts`] for a server at `host` (an address inside a test namespace).
pub fn tcp_opts_to(host: &str, port: u16, user: &str, password: &str, schema: Option<&str>) -> OptsBuilder {
    OptsBuilder::new()
        .ip_or_hostname(Some(host))
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(schema)
        .prefer_socket(false)
        .tcp_connect_timeout(Some(CLIENT_TIMEOUT))
        .read_timeout(Some(CLIENT_TIMEOUT))
        .write_timeout(Some(CLIENT_TIMEOUT))
}

/// A private MariaDB server. Killed and removed on drop.
pub struct MariaDb {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// Server options given after the harness's own (a later value of an option wins).
    extra_options: Vec<String>,
    /// A root login kept open for [`MariaDb::status`], so that reading a counter does not itself
    /// open connections (and move `Connections`) on every poll.
    admin: Mutex<Option<Conn>>,
    /// Where the server runs when not on the host's loopback: a network namespace and the
    /// address it listens on there.
    placement: Option<(String, std::net::Ipv4Addr)>,
}

/// Why one attempt to start a server failed.
enum StartFailure {
    PortTaken,
    Other(String),
}

impl MariaDb {
    /// Starts a fresh server on a free port; panics with the error log tail if it does not
    /// accept a login in time.
    pub fn start() -> MariaDb {
        MariaDb::start_with_options(&[])
    }

    /// [`MariaDb::start`] with more server options, given after the harness's own so that they
    /// override them (the benchmark raises `--max-connections`; the PROXY protocol tests set
    /// `--proxy-protocol-networks`).
    pub fn start_with_options(extra_options: &[&str]) -> MariaDb {
        MariaDb::unstarted(0, extra_options, None).start_on_a_free_port()
    }

    /// [`MariaDb::start_with_options`] for a Galera node: its data directory is open to every
    /// user, because a joining node receives its state through an rsync daemon that runs as
    /// `nobody` (`wsrep_sst_method = rsync`).
    pub fn start_galera_node(extra_options: &[&str]) -> MariaDb {
        let server = MariaDb::unstarted(0, extra_options, None);
        let data = server.dir.path().join("data");
        let status = Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(server.dir.path())
            .status()
            .expect("run chmod");
        assert!(status.success(), "chmod -R a+rwX {}", data.display());
        server.start_on_a_free_port()
    }

    fn start_on_a_free_port(mut self) -> MariaDb {
        let server = &mut self;
        for _attempt in 0..5 {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return self,
                // Another process took the port between free_port() and the server's bind.
                Err(StartFailure::PortTaken) => continue,
                Err(StartFailure::Other(message)) => panic!("{message}"),
            }
        }
        panic!("MariaDB: no free port after 5 attempts");
    }

    /// A server with its own copy of the template data directory, not started yet.
    fn unstarted(
        port: u16,
        extra_options: &[&str],
        placement: Option<(String, std::net::Ipv4Addr)>,
    ) -> MariaDb {
        let dir = TempDir::new("rlb-db");
        copy_dir(&template(), &dir.path().join("data")).expect("copy the template data directory");
        std::fs::write(dir.path().join("init.sql"), INIT_SQL).expect("write init.sql");
        MariaDb {
            dir,
            port,
            child: None,
            extra_options: extra_options.iter().map(|o| o.to_string()).collect(),
            admin: Mutex::new(None),
            placement,
        }
    }

    /// A server inside network namespace `namespace`, listening on `ip:port` there (the HA tests'
    /// db-01 and db-02). Its process runs through `ip netns exec`; [`MariaDb::kill`] and
    /// [`MariaDb::restart`] work as for a local one.
    pub fn start_in_namespace(namespace: &str, ip: std::net::Ipv4Addr, port: u16) -> MariaDb {
        let mut server = MariaDb::unstarted(port, &[], Some((namespace.to_string(), ip)));
        match server.spawn_and_wait() {
            Ok(()) => server,
            Err(StartFailure::PortTaken) => panic!("MariaDB in {namespace}: port {port} is taken"),
            Err(StartFailure::Other(message)) => panic!("{message}"),
        }
    }

    /// The server's TCP port on 127.0.0.1 (what `SELECT @@port` returns).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn error_log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }

    /// A direct connection as `app`, with [`TEST_SCHEMA`] selected.
    pub fn conn(&self) -> Conn {
        self.conn_as(APP_USER, APP_PASSWORD)
    }

    /// A direct connection as any user, over TCP.
    pub fn conn_as(&self, user: &str, password: &str) -> Conn {
        Conn::new(tcp_opts(self.port, user, password, None))
            .unwrap_or_else(|e| panic!("direct login as {user} to 127.0.0.1:{}: {e}", self.port))
    }

    /// A direct connection as root (all privileges), over TCP.
    pub fn root_conn(&self) -> mysql::Result<Conn> {
        Conn::new(tcp_opts(self.port, "root", "", None))
    }

    /// `SHOW GLOBAL STATUS LIKE name`, read over the harness's own long-lived root connection.
    pub fn status(&self, name: &str) -> u64 {
        let mut admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if admin.is_none() {
            *admin = Some(
                self.root_conn()
                    .unwrap_or_else(|e| panic!("root login to {}: {e}", self.port)),
            );
        }
        let conn = admin.as_mut().expect("just set");
        // SHOW cannot be prepared, so the name goes into the text; it is checked to be an identifier.
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "status variable name {name:?} must be an identifier"
        );
        let row: Option<(String, String)> = conn
            .query_first(format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .unwrap_or_else(|e| panic!("SHOW GLOBAL STATUS on {}: {e}", self.port));
        let (_, value) = row.unwrap_or_else(|| panic!("no status variable {name}"));
        value
            .parse()
            .unwrap_or_else(|e| panic!("status {name} = {value:?}: {e}"))
    }

    /// Sends `signal` to the running server (SIGSTOP freezes it: its kernel still completes TCP
    /// handshakes into the listen backlog, but nothing answers).
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("the server is running");
        // SAFETY: kill takes no pointers; the pid is our own child's, not yet reaped.
        let rc = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", child.id());
    }

    /// Kills the server with SIGKILL (a crash: no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        // Dropped first: its COM_QUIT would otherwise go to a dead socket later.
        *self.admin.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory (killing it first if it runs).
    pub fn restart(&mut self) {
        self.kill();
        // The port was ours until the kill; a few retries cover a late release by the kernel.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(StartFailure::PortTaken) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(StartFailure::PortTaken) => panic!("MariaDB restart: port {} stays taken", self.port),
                Err(StartFailure::Other(message)) => panic!("{message}"),
            }
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartFailure> {
        let dir = self.dir.path();
        let log = self.error_log();
        // Each attempt's log is read on its own: an old "in use" must not decide a new attempt.
        let _ = std::fs::remove_file(&log);
        // In a namespace the server listens on every address of it (the namespace is private), so
        // that the harness's root login, which root may make only from localhost, goes to
        // 127.0.0.1 inside the namespace while clients use the node's address.
        let bind = if self.placement.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut command = match &self.placement {
            Some((namespace, _)) => {
                let mut c = Command::new(find_program("ip"));
                c.args(["netns", "exec", namespace]).arg(find_program("mariadbd"));
                c
            }
            None => Command::new(find_program("mariadbd")),
        };
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--socket={}", dir.join("mysqld.sock").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--bind-address={bind}"))
            .arg("--skip-name-resolve")
            .arg(format!("--pid-file={}", dir.join("mysqld.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--init-file={}", dir.join("init.sql").display()))
            .arg(format!("--tmpdir={}", private_tmpdir(dir).display()))
            .args(SMALL_SERVER_OPTIONS)
            .args([
                "--skip-log-bin",
                "--innodb-doublewrite=0",
                "--performance-schema=OFF",
                // The concurrency test holds 1,000 connections across two servers.
                "--max-connections=1200",
                // Room for a 32 MiB row.
                "--max-allowed-packet=64M",
            ])
            .args(&self.extra_options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            command.arg("--user=root");
        }
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| StartFailure::Other(format!("spawn mariadbd: {e}")))?;
        self.child = Some(child);

        let what = format!("mariadbd on port {}", self.port);
        let (port, placement, admin) = (self.port, &self.placement, &self.admin);
        let started = await_ready(
            &mut self.child,
            &log,
            &what,
            &["Address already in use", "Can't start server: Bind"],
            || {
                let opts = tcp_opts_to("127.0.0.1", port, "root", "", None)
                    .tcp_connect_timeout(Some(Duration::from_secs(1)));
                let login = match placement {
                    // The socket stays in the namespace it was made in, so the login is made there.
                    Some((namespace, _)) => netns::in_namespace(namespace, || Conn::new(opts)),
                    None => Conn::new(opts),
                };
                let Ok(conn) = login else {
                    return false;
                };
                *admin.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                true
            },
        );
        if started.is_err() {
            self.kill();
        }
        started
    }
}

/// Waits until a child just spawned into `child` is `ready`, polling. It fails with
/// [`StartFailure::PortTaken`] when the child exits with one of `port_in_use` in its log (the
/// caller picks another port), and otherwise with the log's tail; the caller kills the child.
fn await_ready(
    child: &mut Option<Child>,
    log: &Path,
    what: &str,
    port_in_use: &[&str],
    mut ready: impl FnMut() -> bool,
) -> Result<(), StartFailure> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            *child = None;
            let tail = log_tail(log, 30);
            if port_in_use.iter().any(|needle| tail.contains(needle)) {
                return Err(StartFailure::PortTaken);
            }
            return Err(StartFailure::Other(format!(
                "{what} exited during start-up ({status}); {}:\n{tail}",
                log.display()
            )));
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > START_DEADLINE {
            return Err(StartFailure::Other(format!(
                "{what} was not ready within {START_DEADLINE:?}; {}:\n{}",
                log.display(),
                log_tail(log, 30)
            )));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running ringlb. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Ringlb {
    dir: TempDir,
    child: Option<Child>,
    workers: usize,
    listen: SocketAddr,
    admin: SocketAddr,
    /// Started from a whole file ([`Ringlb::start_with_file`]): no address flags.
    file_only: bool,
    /// How the process is started: its network namespace and descriptor limit.
    launch: Launch,
}

/// How [`Ringlb::launch`] starts the process, beyond its addresses and configuration.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Worker threads (`--workers`).
    pub workers: usize,
    /// Runs ringlb inside this network namespace (through `ip netns exec`), listening on
    /// 127.0.0.1:[`NAMESPACE_LISTEN_PORT`] and with its admin on 127.0.0.1:[`NAMESPACE_ADMIN_PORT`]
    /// there; the harness's own connections to it are made from inside the namespace.
    pub namespace: Option<String>,
    /// `RLIMIT_NOFILE` (soft and hard) of the ringlb process, for the out-of-descriptors tests.
    pub max_open_files: Option<u64>,
    /// Runs ringlb under a seccomp filter that refuses the io_uring calls with EPERM.
    pub deny_io_uring: bool,
    /// Another ringlb binary to run instead of this build's (the bench's baseline column).
    pub binary: Option<PathBuf>,
}

impl Default for Launch {
    fn default() -> Launch {
        Launch {
            workers: 2,
            namespace: None,
            max_open_files: None,
            deny_io_uring: false,
            binary: None,
        }
    }
}

/// Ports of a ringlb started in a namespace: the namespace is the test's own, so they are free.
pub const NAMESPACE_LISTEN_PORT: u16 = 4040;
pub const NAMESPACE_ADMIN_PORT: u16 = 4041;

/// Idle pipes a worker keeps by default (`tuning.pipes_kept`), two descriptors each.
pub const PIPES_KEPT: usize = 8;

/// Generous deadline for ringlb's descriptors to settle, which normally takes milliseconds.
const SETTLE: Duration = Duration::from_secs(30);

impl Ringlb {
    /// Starts ringlb with two workers in front of `backends`. `extra_config` is TOML for a
    /// config file (e.g. a `[health]` section); empty means no file.
    pub fn start(backends: &[&MariaDb], extra_config: &str) -> Ringlb {
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr()).collect();
        Ringlb::start_with_addrs(&addrs, extra_config)
    }

    /// Like [`Ringlb::start`], for backends that are not MariaDB (raw TCP servers).
    pub fn start_with_addrs(backends: &[SocketAddr], extra_config: &str) -> Ringlb {
        Ringlb::start_with_workers(backends, extra_config, 2)
    }

    /// Like [`Ringlb::start_with_addrs`] with `workers` worker threads.
    pub fn start_with_workers(backends: &[SocketAddr], extra_config: &str, workers: usize) -> Ringlb {
        Ringlb::launch(
            backends,
            extra_config,
            Launch {
                workers,
                ..Launch::default()
            },
        )
    }

    /// Like [`Ringlb::start_with_addrs`], started as `launch` says (workers, network namespace,
    /// descriptor limit).
    pub fn launch(backends: &[SocketAddr], extra_config: &str, launch: Launch) -> Ringlb {
        let dir = TempDir::new("rlb-lb");
        let config = (!extra_config.trim().is_empty()).then(|| {
            let path = dir.path().join("ringlb.toml");
            std::fs::write(&path, extra_config).expect("write ringlb.toml");
            path
        });
        let in_namespace = launch.namespace.is_some();
        let mut ringlb = Ringlb {
            dir,
            child: None,
            workers: launch.workers,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            file_only: false,
            launch,
        };
        for _attempt in 0..5 {
            let (listen, admin) = if in_namespace {
                (NAMESPACE_LISTEN_PORT, NAMESPACE_ADMIN_PORT)
            } else {
                (free_port(), free_port())
            };
            ringlb.listen = SocketAddr::from(([127, 0, 0, 1], listen));
            ringlb.admin = SocketAddr::from(([127, 0, 0, 1], admin));
            match ringlb.spawn_and_wait(backends, config.as_deref()) {
                Ok(()) => return ringlb,
                Err(StartFailure::PortTaken) if !in_namespace => continue,
                Err(StartFailure::PortTaken) => panic!("ringlb in a namespace: port 4040 or 4041 is taken"),
                Err(StartFailure::Other(message)) => panic!("{message}"),
            }
        }
        panic!("ringlb: no free port pair after 5 attempts");
    }

    /// Starts ringlb (two workers) from a whole configuration file: `config(listen, admin)` is
    /// its text for the free addresses chosen; its first listener should bind `listen` and its
    /// `[global] admin` be `admin`. The file can be rewritten and reloaded later
    /// ([`Ringlb::reload_with`]).
    pub fn start_with_file(config: impl Fn(SocketAddr, SocketAddr) -> String) -> Ringlb {
        let mut ringlb = Ringlb {
            dir: TempDir::new("rlb-lb"),
            child: None,
            workers: 2,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            file_only: true,
            launch: Launch::default(),
        };
        let path = ringlb.config_path();
        for _attempt in 0..5 {
            ringlb.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            ringlb.admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            std::fs::write(&path, config(ringlb.listen, ringlb.admin)).expect("write ringlb.toml");
            match ringlb.spawn_and_wait(&[], Some(&path)) {
                Ok(()) => return ringlb,
                Err(StartFailure::PortTaken) => continue,
                Err(StartFailure::Other(message)) => panic!("{message}"),
            }
        }
        panic!("ringlb: no free port pair after 5 attempts");
    }

    /// The configuration file [`Ringlb::start_with_file`] wrote.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ringlb.toml")
    }

    /// Rewrites the configuration file with `text` and runs `ringlb reload` against this
    /// instance; returns what the command printed and whether it succeeded.
    pub fn reload_with(&self, text: &str) -> (bool, String) {
        std::fs::write(self.config_path(), text).expect("rewrite ringlb.toml");
        let out = self.command(&["reload"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), said)
    }

    /// Runs `ringlb ARGS --admin ADDR` against this instance (a client subcommand) to its end.
    pub fn command(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(args)
            .arg("--admin")
            .arg(self.admin.to_string())
            .output()
            .unwrap_or_else(|e| panic!("run ringlb {args:?}: {e}"))
    }

    /// Sends `signal` to the ringlb process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill takes no pointers; the pid is our own running child's.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    fn spawn_and_wait(&mut self, backends: &[SocketAddr], config: Option<&Path>) -> Result<(), StartFailure> {
        let log = self.log_path();
        let log_file = std::fs::File::create(&log).expect("create ringlb.log");
        let binary =
            (self.launch.binary.clone()).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ringlb")));
        let mut command = match &self.launch.namespace {
            // `ip netns exec` execs ringlb in place: the child's pid is ringlb's.
            Some(namespace) => {
                let mut c = Command::new(find_program("ip"));
                c.args(["netns", "exec", namespace]).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command.arg("run");
        if !self.file_only {
            command
                .arg("--listen")
                .arg(self.listen.to_string())
                .arg("--admin")
                .arg(self.admin.to_string());
        }
        command.arg("--workers").arg(self.workers.to_string());
        // The data-path suites run once per driver (scripts/test): this picks the driver.
        if let Ok(driver) = std::env::var("RINGLB_TEST_DRIVER") {
            command.arg("--driver").arg(driver);
        }
        for backend in backends {
            command.arg("--backend").arg(backend.to_string());
        }
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        die_with_parent(&mut command);
        if let Some(limit) = self.launch.max_open_files {
            limit_open_files(&mut command, limit);
        }
        if self.launch.deny_io_uring {
            deny_syscalls(&mut command, IO_URING_SYSCALLS, libc::EPERM);
        }
        let child = command
            .spawn()
            .map_err(|e| StartFailure::Other(format!("spawn ringlb: {e}")))?;
        self.child = Some(child);

        let admin = self.admin;
        let namespace = self.launch.namespace.clone();
        let started = await_ready(&mut self.child, &log, "ringlb", &["in use"], || {
            let answer = match &namespace {
                Some(namespace) => netns::in_namespace(namespace, || http_get(admin, "/metrics")),
                None => http_get(admin, "/metrics"),
            };
            matches!(answer, Ok((200, _)))
        });
        if started.is_err() {
            self.stop();
        }
        started
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The ringlb process's id; panics if it has been stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("ringlb is running").id()
    }

    /// The descriptors ringlb holds now, by kind.
    pub fn descriptors(&self) -> Descriptors {
        Descriptors::of(self.pid())
    }

    /// Worker threads it runs.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Pipe ends the workers' idle pools may keep on top of a baseline (see [`PIPES_KEPT`]).
    pub fn pipe_fds_kept(&self) -> usize {
        2 * PIPES_KEPT * self.workers
    }

    /// ringlb's descriptors once they stop changing: the same counts on 10 reads in a row, 20 ms
    /// apart (a health probe or a closing connection can be in flight at start-up).
    pub fn settled_descriptors(&self) -> Descriptors {
        let (mut last, mut same) = (self.descriptors(), 0);
        wait_until(SETTLE, "ringlb's descriptor counts to settle", || {
            let now = self.descriptors();
            same = if now == last { same + 1 } else { 0 };
            last = now;
            same >= 10
        });
        last
    }

    /// Whether `now` is back at `baseline`: the same sockets and other descriptors, and no more
    /// pipes than the idle pools may keep on top of it (a connection that ends with its pipe empty
    /// gives it back to its worker's pool, which keeps up to [`PIPES_KEPT`]).
    pub fn at_rest(&self, now: Descriptors, baseline: Descriptors) -> bool {
        now.sockets == baseline.sockets
            && now.total - now.pipes == baseline.total - baseline.pipes
            && now.pipes <= baseline.pipes + self.pipe_fds_kept()
    }

    /// Waits until ringlb is [`Ringlb::at_rest`] against `baseline` and none of its sockets is
    /// in CLOSE_WAIT; panics showing what it holds instead. `after` says what happened before.
    pub fn wait_for_baseline(&self, baseline: Descriptors, after: &str) {
        let settled = poll_until(SETTLE, || {
            self.at_rest(self.descriptors(), baseline) && self.sockets_in_close_wait() == 0
        });
        assert!(
            settled,
            "{after}, ringlb still holds {:?} (baseline {baseline:?}, up to {} more pipe ends \
             allowed) with {} sockets in CLOSE_WAIT after {SETTLE:?}\nringlb stderr:\n{}",
            self.descriptors(),
            self.pipe_fds_kept(),
            self.sockets_in_close_wait(),
            self.log_tail()
        );
    }

    /// ringlb's resident set size now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.pid())
    }

    /// CPU seconds ringlb has used so far (see [`cpu_seconds`]).
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    /// ringlb's own TCP sockets whose peer has closed and ringlb has not: each one a leak or a
    /// close that never came.
    pub fn sockets_in_close_wait(&self) -> usize {
        sockets_in_close_wait(self.pid())
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where ringlb's stderr goes.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("ringlb.log")
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 40)
    }

    /// A connection through the proxy as `app`.
    pub fn conn(&self) -> Conn {
        self.try_conn()
            .unwrap_or_else(|e| panic!("login through ringlb {}: {e}", self.listen))
    }

    pub fn try_conn(&self) -> mysql::Result<Conn> {
        self.try_conn_with(tcp_opts(
            self.listen.port(),
            APP_USER,
            APP_PASSWORD,
            Some(TEST_SCHEMA),
        ))
    }

    /// A connection through the proxy with `opts` (made from inside ringlb's namespace when it
    /// has one; the socket stays there, so the connection works from any thread).
    pub fn try_conn_with(&self, opts: OptsBuilder) -> mysql::Result<Conn> {
        self.nearby(|| Conn::new(opts))
    }

    /// A plain TCP connection to the proxy's listener (from inside its namespace, if any).
    pub fn tcp_connect(&self) -> std::io::Result<TcpStream> {
        let listen = self.listen;
        self.nearby(|| TcpStream::connect_timeout(&listen, CLIENT_TIMEOUT))
    }

    /// Runs `f` where ringlb's addresses can be reached: inside its network namespace when it
    /// runs in one, else right here. Sockets `f` opens stay in that namespace.
    pub fn nearby<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.launch.namespace {
            Some(namespace) => netns::in_namespace(namespace, f),
            None => f(),
        }
    }

    /// `GET path` from the admin endpoint: status and body.
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let admin = self.admin;
        self.nearby(|| http_get(admin, path))
    }

    /// The body of `GET /metrics`.
    pub fn metrics(&self) -> String {
        match self.admin_get("/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("GET /metrics: HTTP {status}: {body}"),
            Err(e) => panic!(
                "GET /metrics from {}: {e}\nringlb stderr:\n{}",
                self.admin,
                self.log_tail()
            ),
        }
    }

    /// The sum of every sample of `name` whose labels include all of `labels`; `None` when no
    /// sample matches. With all labels given it is the one series' value.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// A per-backend metric of the `default` listener.
    pub fn backend_metric(&self, name: &str, backend: SocketAddr) -> Option<f64> {
        let backend = backend.to_string();
        self.metric(name, &[("backend", &backend), ("listener", "default")])
    }

    /// The body of `GET /stats`, parsed.
    pub fn stats_json(&self) -> serde_json::Value {
        match self.admin_get("/stats") {
            Ok((200, body)) => {
                serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /stats is not JSON ({e}): {body}"))
            }
            Ok((status, body)) => panic!("GET /stats: HTTP {status}: {body}"),
            Err(e) => panic!("GET /stats from {}: {e}", self.admin),
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Stops a child process: SIGTERM, then SIGKILL if it has not exited within 5 s; reaps it.
pub fn terminate(mut child: Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: `pid` is our own child, not yet reaped (we hold its Child), so the id cannot
        // have been reused by another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A minimal HTTP/1.0 GET: returns the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut body = response[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = input.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&input[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(input.get(..size)?);
        input = input.get(size + 2..)?;
    }
}

/// One sample of Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text format: comment lines skipped, `name{k="v",...} value [timestamp]`.
/// Lines that do not parse are skipped (the metrics test checks the series it needs exist).
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let bytes = line.as_bytes();
    let mut labels = BTreeMap::new();
    let mut i = name_end;
    if bytes[i] == b'{' {
        i += 1;
        loop {
            while matches!(bytes.get(i)?, b',' | b' ' | b'\t') {
                i += 1;
            }
            if bytes[i] == b'}' {
                i += 1;
                break;
            }
            let eq = i + line[i..].find('=')?;
            let key = line[i..eq].trim().to_owned();
            i = eq + 1;
            if *bytes.get(i)? != b'"' {
                return None;
            }
            i += 1;
            let mut value = String::new();
            loop {
                // Label values are UTF-8; step by chars so multi-byte values survive.
                let c = line[i..].chars().next()?;
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let escaped = line[i..].chars().next()?;
                        i += escaped.len_utf8();
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
    }
    let value_text = line[i..].split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

/// The sum of every sample of `name` whose labels include all of `labels`; `None` if none match.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// A TCP server on a free port of 127.0.0.1 that runs `handle` on a thread of its own for each
/// connection, until it is dropped. The test backends below are this plus their `handle`.
pub struct TcpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// `what` names the server in the panic if it cannot bind. `handle` also gets the flag that
    /// turns true when the server is dropped, which a long-running handler polls to end with it.
    pub fn start(what: &str, handle: impl Fn(TcpStream, &AtomicBool) + Clone + Send + 'static) -> TcpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {what}: {e}"));
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (handle, stopping) = (handle.clone(), stopping.clone());
                std::thread::spawn(move || handle(stream, &stopping));
            }
        });
        TcpServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP backend that reads until the client's EOF, then sends back everything it read and
/// closes: it answers only a client whose half-close made it through the proxy.
pub struct EofReplyServer(TcpServer);

impl EofReplyServer {
    pub fn start() -> EofReplyServer {
        EofReplyServer(TcpServer::start("the EOF reply server", |mut stream, _| {
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let mut received = Vec::new();
            if stream.read_to_end(&mut received).is_ok() {
                let _ = stream.write_all(&received);
            }
            let _ = stream.shutdown(Shutdown::Both);
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

/// Serialises the tests of one test binary that make resource or timing promises, which a
/// neighbour opening hundreds of connections on the same cores could break for reasons that are
/// not ringlb's (nextest runs them one at a time too: see .config/nextest.toml).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next test must still run.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A process's open descriptors, counted by what `/proc/<pid>/fd/<n>` links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptors {
    pub total: usize,
    /// Pipe ends (`pipe:[inode]`): two per pipe.
    pub pipes: usize,
    /// Sockets of any family (`socket:[inode]`).
    pub sockets: usize,
}

impl Descriptors {
    /// Counts `pid`'s descriptors. One that closes while the directory is read is skipped.
    pub fn of(pid: u32) -> Descriptors {
        let mut counts = Descriptors::default();
        for target in fd_targets(pid) {
            counts.total += 1;
            if target.starts_with("pipe:") {
                counts.pipes += 1;
            } else if target.starts_with("socket:") {
                counts.sockets += 1;
            }
        }
        counts
    }
}

/// Where each of `pid`'s descriptors links to (`socket:[123]`, `pipe:[456]`, a path...).
fn fd_targets(pid: u32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {dir}: {e}"));
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

/// The inode numbers of `pid`'s sockets, as `/proc/net/tcp` names them.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    fd_targets(pid)
        .iter()
        .filter_map(|t| t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
        .collect()
}

/// CPU time `pid` has used so far, all its threads, user plus system (`utime + stime` of
/// `/proc/<pid>/stat`), in seconds. The kernel counts in clock ticks (10 ms on most systems).
pub fn cpu_seconds(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    // The command name in parentheses may hold spaces; the fields after its last ')' do not.
    // After it: state (field 3), ..., utime (field 14), stime (field 15).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| -> u64 {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no field {} in {stat:?}", index + 3))
    };
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name, handled below.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    (ticks(11) + ticks(12)) as f64 / hz
}

/// VmRSS of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}"));
    kib * 1024
}

/// `st` of a socket in CLOSE_WAIT in `/proc/net/tcp`.
const TCP_CLOSE_WAIT: &str = "08";

/// How many of `pid`'s own TCP sockets (v4 and v6) are in CLOSE_WAIT. `/proc/<pid>/net/tcp`
/// lists every socket of the network namespace; the inode column says whose each one is.
pub fn sockets_in_close_wait(pid: u32) -> usize {
    let own = socket_inodes(pid);
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .map(|text| {
            text.lines()
                .skip(1)
                .filter(|line| {
                    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    fields.get(3) == Some(&TCP_CLOSE_WAIT)
                        && fields
                            .get(9)
                            .and_then(|inode| inode.parse::<u64>().ok())
                            .is_some_and(|inode| own.contains(&inode))
                })
                .count()
        })
        .sum()
}

/// How one [`StreamServer`] connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// A write failed: the peer reset or closed the connection.
    WriteFailed(String),
    /// After the whole stream, a read saw EOF or failed.
    PeerClosed(String),
    /// The server was dropped first.
    Stopped,
}

/// One connection of a [`StreamServer`].
#[derive(Debug, Default)]
pub struct StreamConn {
    /// Bytes the kernel accepted from our writes so far.
    pub written: AtomicU64,
    end: Mutex<Option<StreamEnd>>,
}

impl StreamConn {
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// How the connection ended, once it has.
    pub fn end(&self) -> Option<StreamEnd> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(&self, end: StreamEnd) {
        *self.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
    }
}

/// A raw TCP backend that writes to every connection as fast as the kernel takes the bytes:
/// forever, or `limit` bytes and then it reads until the peer closes. Each connection's count and
/// end are kept, in accept order, so a test can tell what the far side of a proxy saw.
pub struct StreamServer {
    /// Dropping it stops the connection threads too, within one write or read timeout.
    server: TcpServer,
    conns: Arc<Mutex<Vec<Arc<StreamConn>>>>,
}

/// Write size of the stream servers and the bulk clients.
pub const CHUNK_BYTES: usize = 64 * 1024;

impl StreamServer {
    pub fn start(limit: Option<u64>) -> StreamServer {
        let conns: Arc<Mutex<Vec<Arc<StreamConn>>>> = Arc::default();
        let accepted = conns.clone();
        let server = TcpServer::start("the stream server", move |stream, stopping| {
            let conn = Arc::new(StreamConn::default());
            accepted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(conn.clone());
            let end = stream_to(stream, limit, &conn, stopping);
            conn.finish(end);
        });
        StreamServer { server, conns }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Every connection accepted so far, in order.
    pub fn connections(&self) -> Vec<Arc<StreamConn>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The body of one [`StreamServer`] connection. A write or read that times out only re-checks
/// `stop`, so that a stalled connection ends when the server is dropped.
fn stream_to(mut stream: TcpStream, limit: Option<u64>, conn: &StreamConn, stop: &AtomicBool) -> StreamEnd {
    let chunk: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i % 253) as u8).collect();
    let tick = Some(Duration::from_millis(200));
    let _ = stream.set_write_timeout(tick);
    let _ = stream.set_read_timeout(tick);
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted
        )
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return StreamEnd::Stopped;
        }
        let written = conn.written();
        let Some(left) = limit.map_or(Some(CHUNK_BYTES as u64), |l| {
            l.checked_sub(written).filter(|&n| n > 0)
        }) else {
            break;
        };
        match stream.write(&chunk[..left.min(CHUNK_BYTES as u64) as usize]) {
            Ok(0) => return StreamEnd::WriteFailed("write returned 0".into()),
            Ok(n) => {
                conn.written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if timed_out(&e) => {}
            Err(e) => return StreamEnd::WriteFailed(e.to_string()),
        }
    }
    let mut sink = [0u8; 4096];
    loop {
        if stop.load(Ordering::Relaxed) {
            return StreamEnd::Stopped;
        }
        match stream.read(&mut sink) {
            Ok(0) => return StreamEnd::PeerClosed("EOF".into()),
            Ok(_) => {}
            Err(e) if timed_out(&e) => {}
            Err(e) => return StreamEnd::PeerClosed(e.to_string()),
        }
    }
}

/// A raw TCP backend that echoes every byte as it arrives and half-closes after the client's
/// EOF, so a client can stream both directions at once through a proxy.
pub struct EchoServer(TcpServer);

impl EchoServer {
    pub fn start() -> EchoServer {
        EchoServer(TcpServer::start("the echo server", |mut stream, _| {
            let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
            let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
            let mut buffer = vec![0u8; CHUNK_BYTES];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => {
                        let _ = stream.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        if stream.write_all(&buffer[..n]).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }))
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}
