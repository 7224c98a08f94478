//! Start-up and the main thread: probe the kernel, bind every socket, start the threads, then
//! wait for a signal.
//!
//! Everything that can fail because of the user's input (a port in use, io_uring disabled) fails
//! here, before any thread runs, with one line naming the culprit.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crate::admin;
use crate::balance::Backends;
use crate::config::Config;
use crate::dataplane::{self, probe, WorkerConfig};
use crate::health::Health;
use crate::reload::{Listening, Reloader, Source};
use crate::shared::SharedState;

/// Why ringlb could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Kernel(#[from] probe::ProbeError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("worker {worker}: {message}")]
    Worker { worker: usize, message: String },
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Ha(#[from] crate::ha::runner::HaError),
}

/// How long a stopping node waits for the HA thread to tell its peer and release the VIP.
const HA_HANDOVER: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs ringlb until SIGINT or SIGTERM; `source` is where SIGHUP reloads the configuration from.
pub fn run(config: Config, source: Option<Source>) -> Result<(), RunError> {
    reserve_descriptor_table();
    let (driver, fallback) = probe::choose(config.tuning.driver)?;
    if let Some(why) = fallback {
        tracing::warn!(driver = driver.name(), "io_uring is not usable here, so the workers use epoll: {why} ([tuning] driver = \"io_uring\" refuses to start instead)");
    }
    let signals = block_signals();

    let backends = Arc::new(Backends::from_config(&config));
    let shared = Arc::new(SharedState::new(backends.clone(), config.workers).map_err(RunError::Thread)?);
    let _ = shared.driver.set(driver.name());

    let admin_socket = TcpListener::bind(config.admin).map_err(|source| RunError::Bind {
        what: "admin".into(),
        addr: config.admin,
        source,
    })?;
    // One exclusive bind per listener first: SO_REUSEPORT would otherwise let us share a port
    // silently with another process that also set it.
    for l in &config.listeners {
        dataplane::listener::check_free(l.bind).map_err(|source| RunError::Bind {
            what: format!("listener {}", l.name),
            addr: l.bind,
            source,
        })?;
    }
    let mut per_worker: Vec<Vec<socket2::Socket>> = (0..config.workers).map(|_| Vec::new()).collect();
    // The same listening sockets, kept here to stop every worker's accepting at shutdown.
    let mut listening = Vec::new();
    for l in &config.listeners {
        let mut kept = Vec::with_capacity(config.workers);
        for sockets in per_worker.iter_mut() {
            let socket = dataplane::listener::bind_reuseport(l.bind).map_err(|source| RunError::Bind {
                what: format!("listener {}", l.name),
                addr: l.bind,
                source,
            })?;
            kept.push(socket.try_clone().map_err(RunError::Thread)?);
            sockets.push(socket);
        }
        listening.push(Listening {
            name: l.name.clone(),
            bind: l.bind,
            sockets: kept,
        });
    }

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut controls = Vec::with_capacity(config.workers);
    for (id, sockets) in per_worker.into_iter().enumerate() {
        let worker_config = WorkerConfig {
            id,
            driver,
            core: (config.tuning.pin_workers && !cores.is_empty()).then(|| cores[id % cores.len()]),
            tuning: config.tuning.clone(),
        };
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let (control_tx, control_rx) = std::sync::mpsc::channel();
        controls.push(control_tx);
        std::thread::Builder::new()
            .name(format!("worker-{id}"))
            .spawn(move || dataplane::worker::run(worker_config, sockets, shared, control_rx, ready))
            .map_err(RunError::Thread)?;
    }
    drop(ready_tx);
    for _ in 0..config.workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err((worker, message))) => return Err(RunError::Worker { worker, message }),
            Err(_) => {
                return Err(RunError::Worker {
                    worker: 0,
                    message: "exited during start-up".into(),
                })
            }
        }
    }

    let health = Health::new(config.health.clone(), shared.clone());
    health.watch(backends.servers.iter()).map_err(RunError::Thread)?;
    // After the workers: the VIP may arrive on the interface any moment from here on, and the
    // listeners (on 0.0.0.0, or freebind on the VIP) take its connections at once.
    let ha = match config.ha.clone() {
        Some(ha) => Some(crate::ha::runner::spawn(ha, shared.clone())?),
        None => None,
    };
    tracing::info!(
        driver = driver.name(),
        workers = config.workers,
        "data path started"
    );
    for l in &config.listeners {
        let names: Vec<&str> = l.backends.iter().map(|b| b.name.as_str()).collect();
        tracing::info!(listener = %l.name, bind = %l.bind, backends = ?names, "listening");
    }
    let (workers, admin) = (config.workers, config.admin);
    let guard = admin::auth::Guard::new(config.admin_token.clone());
    let changes = match &guard {
        admin::auth::Guard::Token(_) => "with the admin token",
        admin::auth::Guard::LoopbackWithHeader => "from loopback with the X-Ringlb-Admin header",
    };
    let reloader = Arc::new(Reloader::new(
        source,
        config,
        shared.clone(),
        controls,
        health,
        listening,
    ));
    let reload_hook: admin::ReloadHook = {
        let reloader = reloader.clone();
        Arc::new(move || reloader.reload())
    };
    let promote_hook: admin::PromoteHook = {
        let (shared, health) = (shared.clone(), reloader.config().health);
        Arc::new(move |name: &str| crate::health::roles::promote_named(&shared, name, &health))
    };
    let admin_state_hook: admin::AdminStateHook = {
        let (shared, health) = (shared.clone(), reloader.config().health);
        Arc::new(move |name: &str| crate::health::roles::elect_named(&shared, name, &health))
    };
    let hooks = admin::Hooks {
        reload: Some(reload_hook),
        promote: Some(promote_hook),
        admin_state: Some(admin_state_hook),
    };
    admin::spawn(admin_socket, shared.clone(), hooks, guard).map_err(RunError::Thread)?;
    tracing::info!(workers, admin = %admin, admin_changes = changes, "ringlb started");

    let signal = loop {
        match wait_for_signal(&signals) {
            libc::SIGHUP => {
                let _ = reloader.reload();
            }
            libc::SIGUSR1 => dump_histograms(&shared, &reloader.config().histogram_dump),
            libc::SIGINT => break "SIGINT",
            _ => break "SIGTERM",
        }
    };
    tracing::info!(signal, "stopping");
    if let Some(ha) = ha {
        // Release the VIP first and tell the peer, which takes over at once.
        ha.stop(HA_HANDOVER);
    }
    let grace = std::time::Duration::from_millis(reloader.config().shutdown_grace_ms);
    reloader.with_listening(|listening| drain(&shared, listening, grace));
    Ok(())
}

/// SIGUSR1: writes every backend's latency histograms to `path` (HdrHistogram log format).
fn dump_histograms(shared: &SharedState, path: &std::path::Path) {
    match crate::latency::dump_to_file(path, &shared.latency()) {
        Ok(()) => tracing::info!(file = %path.display(), "latency histograms written"),
        Err(e) => tracing::warn!(file = %path.display(), "cannot write the latency histograms: {e}"),
    }
}

/// Stops accepting on every listener, then waits up to `grace` for open connections to finish.
/// What is still open then is closed when the process exits.
fn drain(shared: &SharedState, listening: &[Listening], grace: std::time::Duration) {
    shared.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    for socket in listening.iter().flat_map(|l| &l.sockets) {
        // Ends each worker's multishot accept; with `stopping` set it is not armed again.
        let _ = socket.shutdown(std::net::Shutdown::Read);
    }
    let deadline = std::time::Instant::now() + grace;
    let left = shared.open_connections();
    if left > 0 {
        tracing::info!(
            connections = left,
            grace_ms = grace.as_millis() as u64,
            "waiting for open connections to finish"
        );
    }
    while shared.open_connections() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = shared.open_connections();
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown grace over; closing the connections still open"
        );
    }
}

/// Keeps the heap on small pages. mimalloc asks for transparent huge pages for its arenas, and
/// each 2 MiB page a thread's first allocations touch becomes resident whole: measured here,
/// 6 MiB of a fresh process's 10 MiB RSS, a third of the memory budget for 5,000 idle
/// connections. A proxy's heap is small and gains nothing measurable from huge pages.
/// Call first thing in `main`.
pub fn disable_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and touches no memory of ours.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// Descriptor-table slots reserved at start-up at most (the open-files limit may be lower):
/// 65,536 slots cost the kernel about 600 KiB, and past them the table still grows on demand.
const RESERVED_DESCRIPTORS: u64 = 65_536;

/// Grows the process's descriptor table once, now, to what the open-files limit allows (at most
/// [`RESERVED_DESCRIPTORS`]). The kernel grows the table by doubling as descriptors are taken,
/// and in a process with more than one thread each growth waits for an RCU grace period
/// (`expand_files` → `synchronize_rcu`) inside whichever call took the descriptor: measured
/// under a burst of 5,000 logins, a worker's multishot accept blocked 7-12 ms five times,
/// stalling every connection of that worker meanwhile (the login p99 tail). Done before any
/// other thread exists, the growth waits for nothing, and the table never shrinks.
fn reserve_descriptor_table() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and touches nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    let slots = limit.rlim_cur.min(RESERVED_DESCRIPTORS);
    if slots < 2 {
        return;
    }
    let highest = (slots - 1) as libc::c_int;
    // Any open descriptor will do; standard error may be closed under some supervisors.
    let Ok(null) = std::fs::File::open("/dev/null") else {
        return;
    };
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor at or above `highest`, owned by nobody
    // else, which is closed at once; only the table's size stays.
    let fd = unsafe { libc::fcntl(null.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if fd >= 0 {
        // SAFETY: `fd` was created just above and is not used anywhere else.
        unsafe { libc::close(fd) };
    }
}

/// Blocks the signals the main thread waits for, before any other thread exists, so that every
/// thread inherits the mask and only `sigwait` here sees them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, for which all zeroes is a valid value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset initialises the set it is given, a live local.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
        // SAFETY: adds a valid signal number to the live local set.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    // SAFETY: reads the live local set and changes only this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // A write to a peer that has gone must return EPIPE, not kill the process.
    // SAFETY: SIG_IGN for SIGPIPE installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    set
}

/// Waits for one of the blocked signals and returns it.
fn wait_for_signal(set: &libc::sigset_t) -> libc::c_int {
    loop {
        let mut signal: libc::c_int = 0;
        // SAFETY: `set` was initialised by block_signals and `signal` is a valid out pointer.
        let rc = unsafe { libc::sigwait(set, &mut signal) };
        if rc == 0 {
            return signal;
        }
    }
}
