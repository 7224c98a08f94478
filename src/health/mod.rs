//! Health checks: every `interval_ms` each backend is probed ([`probe`]), the result goes through
//! rise/fall hysteresis ([`hysteresis`]) and the verdict is written to the backend's `live.up`
//! atomic, which the workers read when they choose a backend.
//!
//! A backend whose listener sends the PROXY protocol (`send_proxy`) is probed with the protocol's
//! LOCAL header first ([`spawn_with`]; see [`probe`] for why).
//!
//! Each backend has its own checker thread (`health-N`); the `health` thread [`spawn`] returns
//! waits on them. A black-holed backend, whose probe waits out the whole timeout, never
//! delays another backend's checks. Threads are cheap next to the number of backends a MySQL
//! load balancer fronts, and blocking sockets keep each probe a straight line of code.
//!
//! Invariants: only this module writes `live.up`, and only on a transition, so the atomic always
//! equals the hysteresis state; a transition to up also clears `live.suspect_until_ms`, so a
//! backend that recovered is not skipped on the strength of a stale connect failure. Every
//! transition is logged in one line with its reason.

pub mod hysteresis;
pub mod mysql;
pub mod probe;

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::balance::{Backend, Backends};
use crate::config::{HealthConfig, ListenerConfig};
use crate::proxy_protocol::ProxyVersion;
use hysteresis::{Hysteresis, Transition};
use probe::{Alive, ProbeError, Target};

/// Starts the `health` thread, which probes every backend every `interval_ms` and writes each
/// backend's `live.up` atomic with rise/fall hysteresis. No probe sends the PROXY protocol.
pub fn spawn(config: HealthConfig, backends: Arc<Backends>) -> io::Result<JoinHandle<()>> {
    let send_proxy = vec![None; backends.len()];
    spawn_with(config, backends, send_proxy)
}

/// As [`spawn`], where `send_proxy[i]` is the PROXY protocol version of the listener that holds
/// `backends.all[i]` ([`send_proxy_of`] makes the list); the `mysql` probe of such a backend
/// sends the LOCAL header first. A list of another length is refused (`InvalidInput`).
pub fn spawn_with(
    config: HealthConfig,
    backends: Arc<Backends>,
    send_proxy: Vec<Option<ProxyVersion>>,
) -> io::Result<JoinHandle<()>> {
    spawn_until(config, backends, send_proxy, Arc::new(Stop::default()))
}

/// Each backend's `send_proxy`, that of the listener whose pool holds it, in the order of
/// `backends.all`: the list [`spawn_with`] takes.
pub fn send_proxy_of(listeners: &[ListenerConfig], backends: &Backends) -> Vec<Option<ProxyVersion>> {
    backends
        .all
        .iter()
        .map(|backend| listeners.get(backend.listener).and_then(|l| l.send_proxy))
        .collect()
}

/// As [`spawn_with`], with a way to stop every checker thread (tests).
fn spawn_until(
    config: HealthConfig,
    backends: Arc<Backends>,
    send_proxy: Vec<Option<ProxyVersion>>,
    stop: Arc<Stop>,
) -> io::Result<JoinHandle<()>> {
    if send_proxy.len() != backends.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "health checks: {} send_proxy entries for {} backends",
                send_proxy.len(),
                backends.len()
            ),
        ));
    }
    let config = Arc::new(config);
    // Start the per-backend threads here, not in the `health` thread, so that a failure to start
    // one reaches the caller instead of leaving a backend silently unchecked.
    let mut checkers = Vec::with_capacity(backends.len());
    for (index, send_proxy) in send_proxy.into_iter().enumerate() {
        let (config, table, own_stop) = (config.clone(), backends.clone(), stop.clone());
        let started = std::thread::Builder::new()
            .name(format!("health-{index}"))
            .spawn(move || check_loop(&config, &table.all[index], send_proxy, &own_stop));
        match started {
            Ok(handle) => checkers.push(handle),
            Err(e) => {
                stop.stop();
                return Err(e);
            }
        }
    }
    std::thread::Builder::new().name("health".into()).spawn(move || {
        for checker in checkers {
            // A checker cannot panic on bad input; if one did, the others carry on.
            let _ = checker.join();
        }
    })
}

/// Probes one backend forever (until `stop`), one probe per interval.
fn check_loop(config: &HealthConfig, backend: &Backend, send_proxy: Option<ProxyVersion>, stop: &Stop) {
    let interval = Duration::from_millis(config.interval_ms.max(1));
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let target = Target {
        addr: backend.addr,
        send_proxy,
    };
    let mut checker = Checker::new(config);
    let mut next = Instant::now();
    loop {
        let result = probe::probe(config.check, target, &config.user, timeout);
        checker.apply(backend, result);
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

/// One backend's verdict state between probes.
struct Checker {
    hysteresis: Hysteresis,
    fall: u32,
    rise: u32,
    user: String,
    /// The missing-check-user warning was logged and the user has not logged in since.
    warned_access_denied: bool,
}

impl Checker {
    fn new(config: &HealthConfig) -> Self {
        Checker {
            hysteresis: Hysteresis::new(config.rise, config.fall),
            fall: config.fall.max(1),
            rise: config.rise.max(1),
            user: config.user.clone(),
            warned_access_denied: false,
        }
    }

    /// Feeds one probe result: warns, writes the atomics and logs as needed.
    fn apply(&mut self, backend: &Backend, result: Result<Alive, ProbeError>) {
        match &result {
            Ok(Alive::AccessDenied { error, .. }) if !self.warned_access_denied => {
                self.warned_access_denied = true;
                tracing::warn!(
                    backend = %backend.name,
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
            // A probe that got through proves the backend reachable again: forget a connect
            // failure the workers marked it suspect for, without waiting out the mark.
            backend.live.suspect_until_ms.store(0, Ordering::Relaxed);
        }
        let was_up = self.hysteresis.is_up();
        match self.hysteresis.observe(result.is_ok()) {
            Some(Transition::Down { first_check }) => {
                backend.live.up.store(false, Ordering::Relaxed);
                let reason = match &result {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                };
                let after = if first_check {
                    "first check failed".to_string()
                } else {
                    format!("{} consecutive checks failed", self.fall)
                };
                tracing::warn!(backend = %backend.name, "backend up -> down: {after}: {reason}");
            }
            Some(Transition::Up) => {
                backend.live.up.store(true, Ordering::Relaxed);
                backend.live.suspect_until_ms.store(0, Ordering::Relaxed);
                let how = match &result {
                    Ok(alive) => alive.to_string(),
                    Err(_) => String::new(),
                };
                tracing::info!(
                    backend = %backend.name,
                    "backend down -> up: {} consecutive checks passed: {how}",
                    self.rise
                );
            }
            None => match &result {
                // A failure that has not (yet) taken an up backend down: worth a line, since
                // `fall - 1` of these precede a transition at most.
                Err(e) if was_up => tracing::info!(
                    backend = %backend.name,
                    "check failed ({} of {}): {e}",
                    self.hysteresis.run(),
                    self.fall
                ),
                Err(e) => tracing::debug!(backend = %backend.name, "check failed, still down: {e}"),
                Ok(alive) => tracing::trace!(backend = %backend.name, "check passed: {alive}"),
            },
        }
    }
}

/// A stop signal checker threads wait on between probes, so stopping never waits out an interval.
#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
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
    use crate::config::{BackendConfig, CheckKind, Config, ListenerConfig};
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
        }
    }

    fn backends(addrs: &[SocketAddr]) -> Arc<Backends> {
        let config = Config {
            workers: 1,
            admin: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace_ms: 5000,
            health: config(CheckKind::Tcp, 1000, 1000),
            listeners: vec![ListenerConfig {
                name: "default".into(),
                bind: "127.0.0.1:0".parse().unwrap(),
                connect_timeout_ms: 1000,
                backends: addrs
                    .iter()
                    .map(|a| BackendConfig {
                        name: a.to_string(),
                        addr: *a,
                        weight: 1,
                        backup: false,
                    })
                    .collect(),
                allow: Vec::new(),
                balance: Default::default(),
                send_proxy: None,
            }],
            tuning: Default::default(),
            ha: None,
        };
        Arc::new(Backends::from_config(&config))
    }

    /// No backend of `table` sends the PROXY protocol.
    fn none(table: &Backends) -> Vec<Option<ProxyVersion>> {
        vec![None; table.len()]
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
        let handle = spawn_until(
            config(CheckKind::Tcp, 20, 200),
            table.clone(),
            none(&table),
            stop.clone(),
        )
        .unwrap();
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
            .live
            .suspect_until_ms
            .store(u64::MAX, Ordering::Relaxed);
        let stop = Arc::new(Stop::default());
        let handle = spawn_until(
            config(CheckKind::Mysql, 20, 1000),
            table.clone(),
            none(&table),
            stop.clone(),
        )
        .unwrap();
        eventually("refused backend down", || !table.all[0].is_up());
        eventually("recovered backend up", || table.all[0].is_up());
        // rise = 2: the two passing checks are connections 3 and 4.
        assert!(served.load(Ordering::Relaxed) >= 5);
        assert_eq!(table.all[0].live.suspect_until_ms.load(Ordering::Relaxed), 0);
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
        let handle = spawn_until(
            config(CheckKind::Mysql, 10, 1000),
            table.clone(),
            none(&table),
            stop.clone(),
        )
        .unwrap();
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
        let handle = spawn_until(
            config(CheckKind::Mysql, 20, 2000),
            table.clone(),
            none(&table),
            stop.clone(),
        )
        .unwrap();
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
        let table = backends(&[proxied, plain]);
        let stop = Arc::new(Stop::default());
        let send_proxy = vec![Some(ProxyVersion::V2), None];
        let handle = spawn_until(
            config(CheckKind::Mysql, 1000, 1000),
            table,
            send_proxy,
            stop.clone(),
        )
        .unwrap();
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
    fn send_proxy_list_follows_each_backends_listener_and_must_match_in_length() {
        use crate::proxy_protocol::ProxyVersion;
        let text = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\nsend_proxy = \"v1\"\n\
                    [[listener.backend]]\naddress = \"127.0.0.1:2\"\n\
                    [[listener.backend]]\naddress = \"127.0.0.1:3\"\n\
                    [[listener]]\nname = \"b\"\nbind = \"127.0.0.1:4\"\n\
                    [[listener.backend]]\naddress = \"127.0.0.1:5\"\n";
        let resolve = |host: &str, port: u16| Ok(SocketAddr::new(host.parse().unwrap(), port));
        let config = crate::config::load_str(
            std::path::Path::new("test.toml"),
            text,
            &Default::default(),
            &resolve,
        )
        .unwrap();
        let table = Arc::new(Backends::from_config(&config));
        assert_eq!(
            send_proxy_of(&config.listeners, &table),
            vec![Some(ProxyVersion::V1), Some(ProxyVersion::V1), None]
        );
        let e = spawn_with(config.health.clone(), table, vec![None]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            e.to_string(),
            "health checks: 1 send_proxy entries for 3 backends"
        );
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
