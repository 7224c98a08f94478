//! Health checks: every `interval_ms` each server is probed ([`probe`]), the result goes through
//! rise/fall hysteresis ([`hysteresis`]) and the verdict is written to the server's `up` atomic,
//! which the workers read when they choose a backend.
//!
//! A server is an address (with its PROXY protocol setting, which changes what the check sends):
//! every backend entry at that address, in any listener, shares one [`ServerLive`] and one
//! checker thread (`health-N`), started by [`Health::watch`] when the server first appears (at
//! start-up or in a reload) and ended when a reload retires it. A black-holed server, whose probe
//! waits out the whole timeout, never delays another server's checks. Threads are cheap next to
//! the number of servers a MySQL load balancer fronts, and blocking sockets keep each probe a
//! straight line of code.
//!
//! A server that a writer or reader pool names is also asked for its state after the login, in
//! the same session and one round trip ([`state`]: read_only, Galera, replica status), and
//! [`roles`] turns the answers into what it qualifies for and runs the writer elections
//! ([`topology`]) of the pools it is in.
//!
//! A server whose listener sends the PROXY protocol (`send_proxy`) is probed with the protocol's
//! LOCAL header first (see [`probe`] for why).
//!
//! A probe that could not even open its socket because ringlb itself is out of descriptors or
//! memory is no verdict on the server and is left out of the hysteresis: otherwise ringlb running
//! out of descriptors under a flood of clients would take every healthy backend down, and keep
//! refusing clients for `rise` intervals after the flood ended. The data path treats the same
//! failure the same way (no backend is marked suspect for it).
//!
//! Invariants: only this module writes `up`, and only on a transition, so the atomic always
//! equals the hysteresis state; a transition to up also clears `suspect_until_ms`, so a server
//! that recovered is not skipped on the strength of a stale connect failure. Every transition is
//! logged in one line with its reason.

pub mod hysteresis;
pub mod mysql;
pub mod probe;
pub mod resultset;
pub mod roles;
pub mod state;
pub mod tls;
pub mod topology;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use crate::balance::{ServerLive, NEEDS_REPLICAS, NEEDS_STATE};
use crate::config::HealthConfig;
use crate::config::TlsMode;
use crate::shared::SharedState;
use hysteresis::{Hysteresis, Transition};
use probe::{Alive, Login, ProbeError, Target, TlsUse};
use tls::TlsClient;

/// The health checkers: one thread per server, probing every `interval_ms`, writing the server's
/// `up` atomic with rise/fall hysteresis and, for servers in role pools, what its state
/// qualifies it for ([`roles`]).
pub struct Health {
    config: Arc<HealthConfig>,
    shared: Arc<SharedState>,
    stop: Arc<Stop>,
    started: AtomicUsize,
}

impl Health {
    pub fn new(config: HealthConfig, shared: Arc<SharedState>) -> Self {
        Self::with_stop(config, shared, Arc::new(Stop::default()))
    }

    fn with_stop(config: HealthConfig, shared: Arc<SharedState>, stop: Arc<Stop>) -> Self {
        Health {
            config: Arc::new(config),
            shared,
            stop,
            started: AtomicUsize::new(0),
        }
    }

    /// Starts a checker for each of `servers` (each must have none yet). A failure to start one
    /// reaches the caller instead of leaving a server silently unchecked.
    pub fn watch<'a>(
        &self,
        servers: impl IntoIterator<Item = &'a Arc<CachePadded<ServerLive>>>,
    ) -> io::Result<Vec<JoinHandle<()>>> {
        let mut handles = Vec::new();
        for server in servers {
            let (config, stop, shared) = (self.config.clone(), self.stop.clone(), self.shared.clone());
            let server = server.clone();
            let n = self.started.fetch_add(1, Ordering::Relaxed);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("health-{n}"))
                    .spawn(move || check_loop(&config, &server, &shared, &stop))?,
            );
        }
        Ok(handles)
    }
}

/// The statements a check sends after its login for a server whose pools need `needs`, on a
/// server of `version`.
fn state_statements(needs: u8, version: &str) -> Vec<String> {
    let mut statements = Vec::new();
    if needs & (NEEDS_STATE | NEEDS_REPLICAS) != 0 {
        statements.push(state::VARIABLES_QUERY.to_string());
        statements.push(state::GALERA_STATUS_QUERY.to_string());
    }
    if needs & NEEDS_REPLICAS != 0 {
        statements.push(state::replica_status_query(version).to_string());
    }
    statements
}

/// Whether `[health] check_query` passed: the first column of its first row is neither NULL,
/// empty nor zero.
fn check_query_verdict(alive: &Alive, reply: Option<&resultset::Reply>) -> Result<(), String> {
    use resultset::Reply;
    if !matches!(alive, Alive::LoggedIn { .. }) {
        return Err("check_query could not run: the check user did not log in".into());
    }
    let set = match reply {
        Some(Reply::Rows(set)) => set,
        Some(Reply::Err(e)) => return Err(format!("check_query failed: {e}")),
        Some(Reply::Ok) | None => return Err("check_query returned no result set".into()),
    };
    match set.rows.first().map(|row| row.first().cloned().flatten()) {
        None => Err("check_query returned no row".into()),
        Some(None) => Err("check_query returned NULL".into()),
        Some(Some(value)) => {
            let value = value.trim();
            let zero = value.parse::<f64>().is_ok_and(|n| n == 0.0);
            if value.is_empty() || zero {
                Err(format!("check_query returned {value:?}"))
            } else {
                Ok(())
            }
        }
    }
}

/// How long `tls = "auto"` waits before it tries TLS again for a server where TLS did not help
/// (the login was refused over TLS too).
const AUTO_TLS_RETRY: Duration = Duration::from_secs(60);

/// What `tls = "auto"` knows of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AutoTls {
    /// Logins without TLS, and TLS when one is refused.
    Unknown,
    /// A login without TLS was refused and one over TLS passed: TLS from now on.
    Needed,
    /// Refused over TLS too: no TLS retry until then.
    NotHelping(Instant),
}

impl AutoTls {
    fn may_try(self, now: Instant) -> bool {
        match self {
            AutoTls::Unknown => true,
            AutoTls::Needed => false,
            AutoTls::NotHelping(until) => now >= until,
        }
    }
}

/// Probes one server until `stop` or until a reload retires it, one probe per interval.
fn check_loop(config: &HealthConfig, server: &ServerLive, shared: &SharedState, stop: &Stop) {
    let interval = Duration::from_millis(config.interval_ms.max(1));
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let target = Target {
        name: &server.name,
        addr: server.addr,
        send_proxy: server.send_proxy,
    };
    let mut checker = Checker::new(config);
    let mut judge = roles::Judge::new(config);
    // Config validation built the same client once: an error here is no longer expected, and
    // under `required` it fails every check rather than let one go out in clear.
    let tls_client = match config.tls {
        TlsMode::Off => None,
        _ => Some(TlsClient::new(config.tls_ca.as_deref())),
    };
    let mut tls_auto = AutoTls::Unknown;
    let mut next = Instant::now();
    loop {
        if server.retired.load(Ordering::Relaxed) {
            tracing::debug!(server = %server.name, "health checks end: server removed");
            return;
        }
        let needs = server.needs.load(Ordering::Relaxed);
        let statements = |version: &str| {
            let mut statements = state_statements(needs, version);
            statements.extend(config.check_query.iter().cloned());
            statements
        };
        let probe = |tls, timeout| {
            let login = Login {
                user: &config.user,
                password: config.password.as_ref().map_or(&[][..], |p| p.as_bytes()),
                tls,
            };
            probe::probe_with(config.check, target, login, timeout, &statements)
        };
        let started = Instant::now();
        let result = match (&tls_client, config.tls) {
            (Some(Err(e)), TlsMode::Required) => Err(ProbeError::Tls(e.clone())),
            (Some(Ok(client)), TlsMode::Required) => probe(TlsUse::Always(client), timeout),
            (Some(Ok(client)), TlsMode::Auto) if tls_auto == AutoTls::Needed => {
                let result = probe(TlsUse::Always(client), timeout);
                if let Err(ProbeError::Tls(e)) = &result {
                    // The server no longer offers TLS (or its handshake fails): the next check
                    // starts again without it.
                    tracing::info!(backend = %server.name, "check over TLS failed ({e}): the next one tries without TLS");
                    tls_auto = AutoTls::Unknown;
                }
                result
            }
            (Some(Ok(client)), TlsMode::Auto) => {
                let plain = probe(TlsUse::Never, timeout);
                let refused = matches!(&plain, Ok((Alive::AccessDenied { .. }, _)))
                    || matches!(&plain, Err(ProbeError::LoginFailed(e)) if e.code != mysql::ER_HOST_NOT_PRIVILEGED);
                let left = timeout.saturating_sub(started.elapsed());
                if refused && tls_auto.may_try(started) && !left.is_zero() {
                    // Refused without TLS: the server may require it (MariaDB answers 1045 as
                    // for a wrong user, MySQL 3159). Tried over TLS in what is left of the
                    // check's time.
                    match probe(TlsUse::Always(client), left) {
                        Ok(logged_in @ (Alive::LoggedIn { .. }, _)) => {
                            tracing::info!(
                                backend = %server.name,
                                "the server refused a login without TLS: checks use TLS from now on"
                            );
                            tls_auto = AutoTls::Needed;
                            Ok(logged_in)
                        }
                        // Refused over TLS too: the plain answer says why, and TLS is not tried
                        // again for a while, so that a missing check user is not refused twice
                        // per interval.
                        Ok((Alive::AccessDenied { .. }, _)) | Err(ProbeError::LoginFailed(_)) => {
                            tls_auto = AutoTls::NotHelping(started + AUTO_TLS_RETRY);
                            plain
                        }
                        // No answer over TLS (its time ran out, the handshake failed): nothing
                        // learnt, the next check tries again.
                        _ => plain,
                    }
                } else {
                    plain
                }
            }
            _ => probe(TlsUse::Never, timeout),
        };
        let (alive, sample) = match result {
            Ok((alive, replies)) => {
                let sample = roles::sample(&alive, &replies, needs);
                let alive = match &config.check_query {
                    // Its reply is the last one; none came when the check did not log in.
                    Some(_) => check_query_verdict(&alive, replies.last())
                        .map(|()| alive)
                        .map_err(ProbeError::CheckQuery),
                    None => Ok(alive),
                };
                (alive, Some(sample))
            }
            Err(e) => (Err(e), None),
        };
        let reached = checker.apply(server, alive);
        if needs != 0 && reached {
            let table = shared.table();
            judge.judge(server, sample.filter(|_| server.is_up()), &table);
            for group in table.groups_of(server) {
                roles::elect(group, &table, shared, config);
            }
        }
        // Keep the cadence; a probe that overran its interval is followed by the next at once.
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        if stop.wait_until(next) {
            return;
        }
    }
}

/// One server's up/down state between probes.
struct Checker {
    hysteresis: Hysteresis,
    fall: u32,
    rise: u32,
    user: String,
    /// The missing-check-user warning was logged and the user has not logged in since.
    warned_access_denied: bool,
    /// A probe was skipped for lack of a local socket and no probe has reached the server
    /// since: one warning per such run, not one per interval.
    warned_local_shortage: bool,
}

impl Checker {
    fn new(config: &HealthConfig) -> Self {
        Checker {
            hysteresis: Hysteresis::new(config.rise, config.fall),
            fall: config.fall.max(1),
            rise: config.rise.max(1),
            user: config.user.clone(),
            warned_access_denied: false,
            warned_local_shortage: false,
        }
    }

    /// Feeds one probe result: warns, writes the atomics and logs as needed. Returns whether the
    /// result was a verdict on the server (false: ringlb could not open a socket).
    fn apply(&mut self, server: &ServerLive, result: Result<Alive, ProbeError>) -> bool {
        if let Err(e) = &result {
            if e.is_local_shortage() {
                if !self.warned_local_shortage {
                    self.warned_local_shortage = true;
                    tracing::warn!(
                        backend = %server.name,
                        "health check skipped: ringlb cannot open a socket ({e}); the backend keeps \
                         its state until a check can reach it"
                    );
                }
                return false;
            }
        }
        self.warned_local_shortage = false;
        match &result {
            Ok(Alive::AccessDenied { error, .. }) if !self.warned_access_denied => {
                self.warned_access_denied = true;
                tracing::warn!(
                    backend = %server.name,
                    "health check user '{user}' cannot log in ({error}); the backend counts as up, but \
                     every check now counts in the server's Aborted_connects. Create the user on the \
                     server, with no password and no privileges: CREATE USER '{user}'@'<the host \
                     named in the error>';",
                    user = self.user,
                );
            }
            Ok(Alive::LoggedIn { .. }) => self.warned_access_denied = false,
            _ => {}
        }
        if result.is_ok() {
            // A probe that got through proves the server reachable again: forget a connect
            // failure the workers marked it suspect for, without waiting out the mark.
            server.suspect_until_ms.store(0, Ordering::Relaxed);
        }
        let was_up = self.hysteresis.is_up();
        match self.hysteresis.observe(result.is_ok()) {
            Some(Transition::Down { first_check }) => {
                server.up.store(false, Ordering::Relaxed);
                let reason = match &result {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                };
                let after = if first_check {
                    "first check failed".to_string()
                } else {
                    format!("{} consecutive checks failed", self.fall)
                };
                tracing::warn!(backend = %server.name, "backend up -> down: {after}: {reason}");
            }
            Some(Transition::Up) => {
                server
                    .up_since_ms
                    .store(crate::clock::now_ms(), Ordering::Relaxed);
                server.up.store(true, Ordering::Relaxed);
                server.suspect_until_ms.store(0, Ordering::Relaxed);
                let how = match &result {
                    Ok(alive) => alive.to_string(),
                    Err(_) => String::new(),
                };
                tracing::info!(
                    backend = %server.name,
                    "backend down -> up: {} consecutive checks passed: {how}",
                    self.rise
                );
            }
            None => match &result {
                // A failure that has not (yet) taken an up server down: worth a line, since
                // `fall - 1` of these precede a transition at most.
                Err(e) if was_up => tracing::info!(
                    backend = %server.name,
                    "check failed ({} of {}): {e}",
                    self.hysteresis.run(),
                    self.fall
                ),
                Err(e) => tracing::debug!(backend = %server.name, "check failed, still down: {e}"),
                Ok(alive) => tracing::trace!(backend = %server.name, "check passed: {alive}"),
            },
        }
        true
    }
}

/// A stop signal checker threads wait on between probes, so stopping never waits out an interval.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    #[cfg(test)]
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Waits until `deadline` or a stop; returns whether stopped.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        while !*stopped {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            if left.is_zero() {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::probe::tests::{err_packet, greeting_packet};
    use super::*;
    use crate::balance::Backends;
    use crate::config::{BackendConfig, CheckKind, Config};
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    fn config(check: CheckKind, interval_ms: u64, timeout_ms: u64) -> HealthConfig {
        HealthConfig {
            check,
            interval_ms,
            rise: 2,
            fall: 3,
            timeout_ms,
            user: "ringlb_check".into(),
            galera_donor_ok: false,
            password: None,
            password_file: None,
            tls: crate::config::TlsMode::Auto,
            tls_ca: None,
            tls_ca_file: None,
            check_query: None,
            notify: None,
        }
    }

    /// Checks every backend of `table` until `stop`; the handle ends when every checker has.
    fn spawn_until(
        config: HealthConfig,
        table: Arc<Backends>,
        stop: Arc<Stop>,
    ) -> io::Result<JoinHandle<()>> {
        let shared = Arc::new(SharedState::new(table.clone(), 1)?);
        let checkers = Health::with_stop(config, shared, stop).watch(table.servers.iter())?;
        std::thread::Builder::new().spawn(move || {
            for checker in checkers {
                let _ = checker.join();
            }
        })
    }

    fn backends(addrs: &[SocketAddr]) -> Arc<Backends> {
        let backends = addrs.iter().map(|a| BackendConfig::at(*a)).collect();
        let config = Config::with_listener("127.0.0.1:0".parse().unwrap(), backends);
        Arc::new(Backends::from_config(&config))
    }

    /// Polls `cond` every 10 ms for up to 5 s.
    fn eventually(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out waiting for: {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A fake MySQL server answering every connection with `reply(n)` for the n-th connection
    /// (0-based) and a login OK; counts the connections it served. Ends when `done` is set.
    fn fake_server(
        reply: impl Fn(usize) -> Vec<u8> + Send + 'static,
        done: Arc<AtomicBool>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let ok = mysql::packet(2, &[0, 0, 0, 2, 0, 0, 0]).unwrap();
        fake_server_answering(reply, ok, done)
    }

    /// [`fake_server`] answering the login with `login_reply` instead of an OK.
    fn fake_server_answering(
        reply: impl Fn(usize) -> Vec<u8> + Send + 'static,
        login_reply: Vec<u8>,
        done: Arc<AtomicBool>,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let n = count.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(&reply(n));
                let mut buf = [0u8; 512];
                // Handshake response in, the login reply out; then read to EOF (COM_QUIT and
                // close, or the client's close after an ERR).
                if let Ok(n) = s.read(&mut buf) {
                    if n > 0 {
                        let _ = s.write_all(&login_reply);
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    }
                }
            }
        });
        (addr, served)
    }

    #[test]
    fn backend_dead_at_start_goes_down_on_the_first_check() {
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let table = backends(&[dead]);
        let stop = Arc::new(Stop::default());
        let handle = spawn_until(config(CheckKind::Tcp, 20, 200), table.clone(), stop.clone()).unwrap();
        eventually("dead backend down", || !table.all[0].is_up());
        stop.stop();
        handle.join().unwrap();
    }

    #[test]
    fn refusing_server_goes_down_then_comes_back_after_rise_and_clears_suspect() {
        let done = Arc::new(AtomicBool::new(false));
        // Connections 0..3 get "too many connections", later ones a greeting.
        let (addr, served) = fake_server(
            |n| {
                if n < 3 {
                    err_packet(0, 1040, "Too many connections")
                } else {
                    greeting_packet()
                }
            },
            done.clone(),
        );
        let table = backends(&[addr]);
        table.all[0]
            .server
            .suspect_until_ms
            .store(u64::MAX, Ordering::Relaxed);
        let stop = Arc::new(Stop::default());
        let handle = spawn_until(config(CheckKind::Mysql, 20, 1000), table.clone(), stop.clone()).unwrap();
        eventually("refused backend down", || !table.all[0].is_up());
        eventually("recovered backend up", || table.all[0].is_up());
        // rise = 2: the two passing checks are connections 3 and 4.
        assert!(served.load(Ordering::Relaxed) >= 5);
        assert_eq!(table.all[0].server.suspect_until_ms.load(Ordering::Relaxed), 0);
        stop.stop();
        handle.join().unwrap();
        done.store(true, Ordering::Relaxed);
    }

    #[test]
    fn access_denied_keeps_the_backend_up() {
        let done = Arc::new(AtomicBool::new(false));
        let (addr, served) = fake_server_answering(
            |_| greeting_packet(),
            err_packet(2, 1045, "Access denied"),
            done.clone(),
        );
        let table = backends(&[addr]);
        let stop = Arc::new(Stop::default());
        let handle = spawn_until(config(CheckKind::Mysql, 10, 1000), table.clone(), stop.clone()).unwrap();
        eventually("several checks", || served.load(Ordering::Relaxed) >= 5);
        assert!(table.all[0].is_up());
        stop.stop();
        handle.join().unwrap();
        done.store(true, Ordering::Relaxed);
    }

    #[test]
    fn black_holed_backend_does_not_delay_the_others() {
        // Accepts (through the backlog) but never answers: each probe waits out its timeout.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let (good, served) = fake_server(|_| greeting_packet(), done.clone());
        let table = backends(&[silent.local_addr().unwrap(), good]);
        let stop = Arc::new(Stop::default());
        let start = Instant::now();
        let handle = spawn_until(config(CheckKind::Mysql, 20, 2000), table.clone(), stop.clone()).unwrap();
        // Ten checks of the good backend while the silent one's first probe is still waiting.
        eventually("ten checks of the good backend", || {
            served.load(Ordering::Relaxed) >= 10
        });
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        assert!(
            table.all[0].is_up(),
            "silent backend's probe has not timed out yet"
        );
        assert!(table.all[1].is_up());
        stop.stop();
        handle.join().unwrap();
        done.store(true, Ordering::Relaxed);
    }

    #[test]
    fn each_backend_gets_the_proxy_header_of_its_own_listener() {
        use super::probe::tests::scripted_proxy_server;
        use crate::proxy_protocol::{self, ProxyVersion};
        let ok = || mysql::packet(2, &[0, 0, 0, 2, 0, 0, 0]).unwrap();
        let header = proxy_protocol::local_header(ProxyVersion::V2);
        let (proxied, proxied_seen) = scripted_proxy_server(header.len(), greeting_packet(), vec![ok()]);
        let (plain, plain_seen) = scripted_proxy_server(0, greeting_packet(), vec![ok()]);
        // Two listeners: the first sends v2 to `proxied`, the second nothing to `plain`.
        let mut both =
            Config::with_listener("127.0.0.1:0".parse().unwrap(), vec![BackendConfig::at(proxied)]);
        both.listeners[0].send_proxy = Some(ProxyVersion::V2);
        both.listeners.push(crate::config::ListenerConfig::new(
            "plain",
            "127.0.0.1:0".parse().unwrap(),
            vec![BackendConfig::at(plain)],
        ));
        let table = Arc::new(Backends::from_config(&both));
        let stop = Arc::new(Stop::default());
        let handle = spawn_until(config(CheckKind::Mysql, 1000, 1000), table, stop.clone()).unwrap();
        // Each scripted server serves the first probe only and returns once it is done.
        let (preamble, seen) = proxied_seen.join().unwrap();
        assert_eq!(preamble, header);
        assert_eq!(seen.len(), 2, "login and COM_QUIT after the header: {seen:?}");
        let (preamble, seen) = plain_seen.join().unwrap();
        assert!(preamble.is_empty());
        assert_eq!(seen.len(), 2, "login and COM_QUIT, no header: {seen:?}");
        assert_eq!(seen[0].0, 1, "the first bytes were the handshake response");
        stop.stop();
        handle.join().unwrap();
    }

    #[test]
    fn a_probe_without_a_local_socket_is_no_verdict_on_the_backend() {
        let table = backends(&["127.0.0.1:1".parse().unwrap()]);
        let b = &table.all[0];
        let watched = &b.server;
        let mut checker = Checker::new(&config(CheckKind::Mysql, 1000, 1000));
        let no_socket = |errno| ProbeError::Io {
            stage: probe::Stage::Connect,
            source: io::Error::from_raw_os_error(errno),
        };
        // Never passed yet: one failure that reached the backend would take it down at once.
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::ENOMEM,
            libc::EMFILE,
        ] {
            checker.apply(watched, Err(no_socket(errno)));
            assert!(b.is_up(), "errno {errno} at connect took the backend down");
        }
        // A refused connect is the backend's own failure.
        checker.apply(watched, Err(no_socket(libc::ECONNREFUSED)));
        assert!(!b.is_up());
    }

    #[test]
    fn a_check_query_passes_only_on_a_first_value_that_is_neither_null_empty_nor_zero() {
        use resultset::{Reply, ResultSet};
        let logged_in = Alive::LoggedIn {
            server_version: "10.11.19-MariaDB".into(),
            tls: false,
        };
        let one = |value: Option<&str>| {
            Reply::Rows(ResultSet {
                columns: vec!["ok".into(), "other".into()],
                rows: vec![vec![value.map(String::from), Some("0".into())]],
            })
        };
        for good in ["1", "yes", "0.5", " 2 "] {
            assert_eq!(
                check_query_verdict(&logged_in, Some(&one(Some(good)))),
                Ok(()),
                "{good}"
            );
        }
        for (bad, why) in [
            (one(Some("0")), "returned \"0\""),
            (one(Some("0.0")), "returned \"0.0\""),
            (one(Some("")), "returned \"\""),
            (one(None), "returned NULL"),
            (Reply::Rows(ResultSet::default()), "no row"),
            (Reply::Ok, "no result set"),
        ] {
            let verdict = check_query_verdict(&logged_in, Some(&bad));
            assert!(verdict.as_ref().is_err_and(|e| e.contains(why)), "{verdict:?}");
        }
        let denied = Alive::Greeted {
            server_version: String::new(),
        };
        assert!(check_query_verdict(&denied, None).is_err());
    }

    #[test]
    fn stop_wakes_a_waiting_checker_at_once() {
        let stop = Arc::new(Stop::default());
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || stop.wait_until(Instant::now() + Duration::from_secs(60)))
        };
        stop.stop();
        assert!(waiter.join().unwrap());
        assert!(!Stop::default().wait_until(Instant::now()));
    }
}
