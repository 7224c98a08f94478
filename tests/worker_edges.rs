//! Edges of a worker's data path where a connection used to be stranded, neither served nor
//! closed:
//!
//! - a direction whose receive found the provided-buffer ring empty must wake when a buffer comes
//!   back, also when it came back earlier in the same batch of completions: with one or two
//!   buffers per worker, fifty clients sending at once all get their echo;
//! - a client whose every backend accepts and closes at once is tried on at most `retries` other
//!   backends, each a different one (all of a pool larger than 64 when `retries` allows), and
//!   then gets MySQL error 1040 and is closed, instead of being redispatched forever;
//! - a client that hangs up while it waits in the queue leaves it at once and never takes a
//!   backend connection from the clients behind it;
//! - a client that has half-closed and reads slowly while the backend streams to it costs no
//!   CPU while its window is full (an io_uring poll for room reports the half-close at once and
//!   for good, which used to make the worker retry in a loop).
//!
//! A stranded connection waits for the idle timeout (8 hours by default): the deadlines below are
//! bounds on a hang, not on speed.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::{one_at_a_time, poll_until, wait_until, EchoServer, MariaDb, Ringlb, TcpServer};

/// How long a client waits for each answer through ringlb.
const CLIENT_DEADLINE: Duration = Duration::from_secs(10);
/// Generous deadline for conditions that normally hold within milliseconds.
const SETTLE: Duration = Duration::from_secs(30);
/// The name of the one listener every test configures.
const LISTENER: &str = "edges";
/// A `tcp` check (the backends here are not MySQL servers) whose start-up probe is the only one
/// a test sees, so that probes do not count among the connections ringlb relays.
const TCP_HEALTH_ONCE: &str = "[health]\ncheck = \"tcp\"\ninterval_ms = 3600000\n";
/// MySQL's ER_CON_COUNT_ERROR, which ringlb answers when it cannot serve a client.
const ER_CON_COUNT_ERROR: u16 = 1040;

/// A configuration file: `[global]` with the admin address, then `sections` (health, tuning),
/// then listener [`LISTENER`] on `listen` with `listener_keys`, its backends `backends`, each
/// with `backend_keys`.
fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    sections: &str,
    listener_keys: &str,
    backends: &[SocketAddr],
    backend_keys: &str,
) -> String {
    let mut text = format!(
        "[global]\nadmin = \"{admin}\"\n\n{sections}\n[[listener]]\nname = \"{LISTENER}\"\nbind = \"{listen}\"\n\
         {listener_keys}"
    );
    for backend in backends {
        text.push_str(&format!(
            "\n[[listener.backend]]\naddress = \"{backend}\"\n{backend_keys}"
        ));
    }
    text
}

/// A counter of [`LISTENER`] in ringlb's `/metrics`; panics naming it when the series is missing.
fn listener_counter(lb: &Ringlb, name: &str) -> f64 {
    lb.metric(name, &[("listener", LISTENER)])
        .unwrap_or_else(|| panic!("no {name}{{listener=\"{LISTENER}\"}} in ringlb's /metrics"))
}

/// Reads one MySQL packet: its sequence number and payload.
fn read_packet(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload)?;
    Ok((header[3], payload))
}

// ---- a direction waiting for a buffer ----

/// Clients that send at once in each round, on fresh connections.
const CLIENTS: usize = 50;
const ROUNDS: usize = 5;
const MESSAGE_BYTES: usize = 200;

/// One client of a round: connects, waits for the others, sends its message at once and reads
/// the echo back.
fn echo_once(addr: SocketAddr, start: &Barrier, tag: usize) -> Result<(), String> {
    let connected = TcpStream::connect_timeout(&addr, CLIENT_DEADLINE)
        .and_then(|s| s.set_read_timeout(Some(CLIENT_DEADLINE)).map(|()| s));
    // Every client reaches the barrier, a failed one too, so the others are not held there.
    start.wait();
    let mut stream = connected.map_err(|e| format!("client {tag}: connect: {e}"))?;
    let message: Vec<u8> = (0..MESSAGE_BYTES).map(|i| (tag * 7 + i) as u8).collect();
    stream
        .write_all(&message)
        .map_err(|e| format!("client {tag}: send: {e}"))?;
    let mut echo = vec![0u8; MESSAGE_BYTES];
    stream
        .read_exact(&mut echo)
        .map_err(|e| format!("client {tag}: no echo of its {MESSAGE_BYTES} bytes: {e}"))?;
    if echo != message {
        return Err(format!("client {tag}: the echo differs from what it sent"));
    }
    Ok(())
}

/// Runs [`ROUNDS`] rounds of [`CLIENTS`] clients sending at once through a ringlb with `buffers`
/// provided buffers per worker in front of an echo server; panics naming the clients that got
/// no echo. Returns the sum of `ringlb_worker_buffer_waits_total` afterwards, if ringlb has it.
fn echo_rounds_with_buffers(buffers: u16) -> Option<f64> {
    let backend = EchoServer::start();
    let sections = format!("{TCP_HEALTH_ONCE}\n[tuning]\nbuffers = {buffers}\n");
    let lb =
        Ringlb::start_with_file(|listen, admin| config(listen, admin, &sections, "", &[backend.addr()], ""));
    let addr = lb.addr();
    for round in 0..ROUNDS {
        let start = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let start = start.clone();
                std::thread::spawn(move || echo_once(addr, &start, round * CLIENTS + client))
            })
            .collect();
        let failed: Vec<String> = clients
            .into_iter()
            .filter_map(|client| client.join().expect("a client thread panicked").err())
            .collect();
        assert!(
            failed.is_empty(),
            "buffers = {buffers}, round {round}: {} of {CLIENTS} clients stranded (read timeout \
             {CLIENT_DEADLINE:?}):\n{}\nringlb stderr:\n{}",
            failed.len(),
            failed.join("\n"),
            lb.log_tail()
        );
    }
    lb.metric("ringlb_worker_buffer_waits_total", &[])
}

#[test]
fn with_one_buffer_per_worker_every_client_sending_at_once_gets_its_echo() {
    let _serial = one_at_a_time();
    let waits = echo_rounds_with_buffers(1);
    // Proves the rounds went through the parked-for-a-buffer path, not around it.
    assert!(
        waits.is_some_and(|w| w > 0.0),
        "ringlb_worker_buffer_waits_total summed over workers is {waits:?} after {ROUNDS} rounds of \
         {CLIENTS} clients on one buffer per worker; expected a count above 0"
    );
}

#[test]
fn with_two_buffers_per_worker_every_client_sending_at_once_gets_its_echo() {
    let _serial = one_at_a_time();
    echo_rounds_with_buffers(2);
}

// ---- a client every backend turns away ----

/// More backends than a 64-bit mask of tried positions covers.
const POOL: usize = 66;

/// A backend that accepts every connection and closes it before sending a byte, and counts them.
struct ClosingBackend {
    server: TcpServer,
    accepted: Arc<AtomicUsize>,
}

impl ClosingBackend {
    fn start() -> ClosingBackend {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        // Counted before the close, so ringlb cannot see the close of a connection not counted.
        let server = TcpServer::start("the closing backend", move |stream, _| {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        });
        ClosingBackend { server, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Sends one client through ringlb (listener keys `listener_keys`) to [`POOL`] closing backends
/// and expects ringlb's "no backend available" error 1040 (sequence 0, as a server's first
/// packet), then the end of the connection, each within [`CLIENT_DEADLINE`]; and ringlb's
/// counters to agree with the backends: one client refused, every connection but the first a
/// redispatch. Returns the connections each backend got for the client.
fn one_client_turned_away(listener_keys: &str) -> Vec<usize> {
    let backends: Vec<ClosingBackend> = (0..POOL).map(|_| ClosingBackend::start()).collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.server.addr()).collect();
    let lb = Ringlb::start_with_file(|listen, admin| {
        config(listen, admin, TCP_HEALTH_ONCE, listener_keys, &addrs, "")
    });
    // The start-up health probes are the only connections before the client's.
    wait_until(SETTLE, "every backend's start-up health probe", || {
        backends.iter().all(|b| b.accepted() >= 1)
    });
    let probes: Vec<usize> = backends.iter().map(ClosingBackend::accepted).collect();

    let mut client = lb.tcp_connect().expect("connect to ringlb");
    client
        .set_read_timeout(Some(CLIENT_DEADLINE))
        .expect("set a read timeout");
    let (sequence, payload) = read_packet(&mut client).unwrap_or_else(|e| {
        panic!(
            "the client got no answer within {CLIENT_DEADLINE:?} ({e}): neither served nor closed\n\
             ringlb stderr:\n{}",
            lb.log_tail()
        )
    });
    let message = String::from_utf8_lossy(payload.get(3..).unwrap_or_default());
    assert!(
        sequence == 0
            && payload.first() == Some(&0xff)
            && payload.get(1..3) == Some(&ER_CON_COUNT_ERROR.to_le_bytes()[..])
            && message.contains("no backend available"),
        "expected ERR 1040 \"...no backend available...\" with sequence 0; got sequence {sequence}, \
         payload {payload:02x?} ({message:?})"
    );
    let mut rest = [0u8; 64];
    match client.read(&mut rest) {
        Ok(0) => {}
        Ok(n) => panic!("{n} more bytes after the error: {:02x?}", &rest[..n]),
        Err(e) => panic!("the connection was not closed after the error: {e}"),
    }

    let tries: Vec<usize> = backends
        .iter()
        .zip(&probes)
        .map(|(backend, probes)| backend.accepted() - probes)
        .collect();
    let no_backend = || lb.metric("ringlb_listener_no_backend_total", &[("listener", LISTENER)]);
    assert!(
        poll_until(SETTLE, || no_backend() == Some(1.0)),
        "ringlb_listener_no_backend_total{{listener=\"{LISTENER}\"}} is {:?}; expected 1",
        no_backend()
    );
    let attempts: usize = tries.iter().sum();
    assert_eq!(
        listener_counter(&lb, "ringlb_listener_redispatches_total"),
        attempts.saturating_sub(1) as f64,
        "redispatches after {attempts} backend connections for one client"
    );
    tries
}

#[test]
fn a_client_that_every_backend_closes_on_gets_error_1040_after_the_default_three_retries() {
    let _serial = one_at_a_time();
    let tries = one_client_turned_away("");
    let attempts: usize = tries.iter().sum();
    assert_eq!(
        attempts, 4,
        "backend connections for one client: one try and 3 retries: {tries:?}"
    );
    assert!(
        tries.iter().all(|&n| n <= 1),
        "a backend was tried twice for one client: {tries:?}"
    );
}

#[test]
fn with_retries_to_spare_each_of_66_backends_is_tried_exactly_once_before_error_1040() {
    let _serial = one_at_a_time();
    let tries = one_client_turned_away("retries = 100\n");
    assert_eq!(
        tries,
        vec![1; POOL],
        "connections each backend got for one client (every one once expected)"
    );
}

// ---- a queued client that hangs up ----

#[test]
fn a_queued_client_that_hangs_up_leaves_the_queue_and_never_reaches_the_backend() {
    let _serial = one_at_a_time();
    let db = MariaDb::start();
    let lb = Ringlb::start_with_file(|listen, admin| {
        config(
            listen,
            admin,
            "",
            "queue_timeout_ms = 60000\n",
            &[db.addr()],
            "maxconn = 1\n",
        )
    });
    let queued = || lb.metric("ringlb_listener_queued", &[("listener", LISTENER)]);

    // A holds the only slot; B and C queue behind it.
    let a = lb.conn();
    let b = lb.tcp_connect().expect("client B connects");
    wait_until(SETTLE, "client B queued", || queued() == Some(1.0));
    let mut c = lb.tcp_connect().expect("client C connects");
    wait_until(SETTLE, "clients B and C queued", || queued() == Some(2.0));

    drop(b);
    let noticed = poll_until(Duration::from_secs(5), || queued() == Some(1.0));
    assert!(
        noticed,
        "client B hung up while queued, and 5 s later ringlb counts {:?} queued clients (expected 1: C)\n\
         ringlb stderr:\n{}",
        queued(),
        lb.log_tail()
    );

    // The slot frees: C, not the departed B, gets the server's greeting.
    drop(a);
    c.set_read_timeout(Some(CLIENT_DEADLINE))
        .expect("set a read timeout");
    let (_, greeting) = read_packet(&mut c).unwrap_or_else(|e| {
        panic!(
            "client C got no greeting within {CLIENT_DEADLINE:?} of the slot freeing: {e}\n\
             ringlb stderr:\n{}",
            lb.log_tail()
        )
    });
    assert_eq!(
        greeting.first(),
        Some(&10),
        "client C's first packet is not a protocol-10 greeting: {greeting:02x?}"
    );
    let backend = db.addr().to_string();
    assert_eq!(
        lb.metric(
            "ringlb_backend_connections_total",
            &[("backend", &backend), ("listener", LISTENER)]
        ),
        Some(2.0),
        "connections ringlb made to the backend: A's and C's only"
    );
}

/// ringlb's CPU seconds over 1 s while a backend streams 256 MiB to one client that does not read
/// (after `half_close`, it has shut its sending side), in `relay` mode.
fn cpu_while_a_client_does_not_read(relay: &str, half_close: bool) -> f64 {
    let backend = TcpServer::start("bulk writer", |mut stream, _| {
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..256 {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let sections = format!("{TCP_HEALTH_ONCE}[tuning]\nrelay = \"{relay}\"\n");
    let lb =
        Ringlb::start_with_file(|listen, admin| config(listen, admin, &sections, "", &[backend.addr()], ""));
    let client = lb.tcp_connect().expect("connect through ringlb");
    if half_close {
        client.shutdown(std::net::Shutdown::Write).expect("half-close");
    }
    // The client reads nothing: wait until every buffer on the way is full and the transfer
    // stalls (the bytes relayed stop growing).
    let relayed = || lb.metric("ringlb_backend_bytes_total", &[("direction", "to_client")]);
    let mut last = None;
    wait_until(SETTLE, "the relay to stall on the client's full window", || {
        let now = relayed();
        let stalled = now.is_some() && now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        stalled
    });
    let before = lb.cpu_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let used = lb.cpu_seconds() - before;
    drop(client);
    used
}

#[test]
fn a_half_closed_client_that_does_not_read_costs_no_cpu_while_its_window_is_full() {
    let _serial = one_at_a_time();
    for relay in ["auto", "splice"] {
        for half_close in [false, true] {
            let used = cpu_while_a_client_does_not_read(relay, half_close);
            eprintln!("relay {relay}, client half-closed {half_close}: ringlb CPU {used:.3} s over 1 s");
            // A worker spinning on the poll burns a whole core: 1 s. Waiting costs nothing but
            // the retries' few microseconds 100 times a second.
            assert!(
                used < 0.25,
                "relay {relay}, half-closed {half_close}: ringlb used {used:.3} s of CPU in 1 s \
                 while the client's window stayed full"
            );
        }
    }
}

/// With one buffer per worker, clients whose messages are sometimes larger than the buffer (so
/// their directions switch to splice and back) all get every echo: a direction parked for a
/// buffer is woken once one is back, and the one woken before it never takes a buffer it has
/// no bytes for. No idle timeout, so no periodic tick hides a stranded direction.
#[test]
fn with_one_buffer_clients_mixing_small_and_bulk_messages_all_get_every_echo() {
    let _serial = one_at_a_time();
    let echo = EchoServer::start();
    let config = "[health]\ncheck = \"tcp\"\ninterval_ms = 60000\n\
                  [tuning]\nbuffers = 1\nbuffer_bytes = 1024\n\
                  [[listener]]\nname = \"default\"\nbind = \"127.0.0.1:1\"\nidle_timeout_ms = 0\n\
                  [[listener.backend]]\naddress = \"127.0.0.1:1\"\n";
    let lb = Ringlb::start_with_workers(&[echo.addr()], config, 1);
    let addr = lb.addr();
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            std::thread::spawn(move || -> Result<(), String> {
                let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut seed = c * 7919 + 1;
                for i in 0..300 {
                    seed = seed
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let len = 1 + (seed >> 33) as usize % 3000;
                    let message: Vec<u8> = (0..len).map(|k| (k as u8).wrapping_add(i as u8)).collect();
                    stream
                        .write_all(&message)
                        .map_err(|e| format!("client {c}, message {i}: write: {e}"))?;
                    let mut back = vec![0u8; len];
                    stream
                        .read_exact(&mut back)
                        .map_err(|e| format!("client {c}, message {i} ({len} bytes): {e}"))?;
                    if back != message {
                        return Err(format!("client {c}, message {i}: other bytes came back"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = clients
        .into_iter()
        .filter_map(|t| t.join().expect("a client thread panicked").err())
        .collect();
    assert!(
        errors.is_empty(),
        "stalled clients: {errors:#?}\nringlb log:\n{}",
        lb.log_tail()
    );
}
