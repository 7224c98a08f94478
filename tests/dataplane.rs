//! The data path's resource and failure behaviour, seen from outside the process: what ringlb
//! holds (descriptors in /proc, resident memory, sockets left in CLOSE_WAIT) while connections
//! idle, close in every way a client can close, stall behind a slow reader or reset mid-transfer;
//! that a backend which never answers a connect is skipped after the listener's connect timeout;
//! and that bulk streams in both directions arrive byte for byte.
//!
//! These are functional checks with generous deadlines, not benchmarks: the machine they run on
//! may have two shared cores.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use support::{
    one_at_a_time, poll_until, wait_until, EchoServer, MariaDb, Ringlb, StreamConn, StreamEnd, StreamServer,
    TcpServer, CHUNK_BYTES, PIPES_KEPT,
};

const MIB: u64 = 1024 * 1024;
/// Workers the harness starts ringlb with.
const WORKERS: usize = 2;
const PIPE_FDS_KEPT: usize = 2 * PIPES_KEPT * WORKERS;

/// A `tcp` health check whose first probe runs at start-up and the next one a minute later, so
/// no probe socket comes and goes while a test counts descriptors or backend connections.
const QUIET_HEALTH: &str = "[health]\ncheck = \"tcp\"\ninterval_ms = 60000\n";

/// Generous deadline for conditions that normally hold within milliseconds.
const SETTLE: Duration = Duration::from_secs(30);

fn active_connections(lb: &Ringlb) -> Option<f64> {
    lb.metric("ringlb_backend_active_connections", &[("listener", "default")])
}

/// Waits until a [`StreamServer`]'s start-up health probe has come and gone, and returns how many
/// connections it has accepted: the next one is the test's, proxied by ringlb.
fn probes_done(backend: &StreamServer) -> usize {
    wait_until(SETTLE, "the start-up health probe to connect and leave", || {
        let conns = backend.connections();
        !conns.is_empty() && conns.iter().all(|c| c.end().is_some())
    });
    backend.connections().len()
}

/// The backend side of the connection ringlb opens after `seen` earlier ones.
fn next_backend_conn(backend: &StreamServer, seen: usize) -> Arc<StreamConn> {
    wait_until(SETTLE, "ringlb to connect to the stream backend", || {
        backend.connections().len() > seen
    });
    backend.connections()[seen].clone()
}

fn reset_on_close(stream: &TcpStream) {
    SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

#[test]
fn idle_connections_hold_no_pipes_and_no_buffers() {
    let _serial = one_at_a_time();
    const IDLE: usize = 500;
    // What ringlb may hold with 500 idle connections: per worker the buffer ring (128 x 16 KiB =
    // 2 MiB), the io_uring rings (4096 SQEs, 8192 CQEs: under 1 MiB) and a slot of a few hundred
    // bytes per connection; plus the binary, the admin and health threads' stacks as touched, and
    // the allocator. About 16 MiB all told; 64 MiB leaves room for allocator slack while still
    // failing if each connection held a 16 KiB buffer per direction (16 MiB more) plus a pipe.
    const RSS_BOUND: u64 = 64 * MIB;
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Ringlb::start(&[&a, &b], QUIET_HEALTH);
    // Descriptors ringlb inherited (a pipe of whatever started the tests, say) are in the baseline.
    let baseline = lb.settled_descriptors();

    // Results larger than a buffer move by splice, so these leave pipes in the workers' pools and
    // the bound below is not met merely because no pipe was ever made.
    let big = 8 * MIB as usize;
    for _ in 0..4 {
        let value: Vec<u8> = lb
            .conn()
            .query_first(format!("SELECT REPEAT('x', {big})"))
            .expect("a large result")
            .expect("a row");
        assert_eq!(value.len(), big);
    }
    let after_bulk = lb.descriptors();
    assert!(
        after_bulk.pipes >= baseline.pipes + 2,
        "no pooled pipe after 32 MiB of results: {after_bulk:?}, baseline {baseline:?}"
    );

    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let mut conn = lb
            .try_conn()
            .unwrap_or_else(|e| panic!("login {i} through ringlb: {e}"));
        let port: u16 = conn
            .query_first("SELECT @@port")
            .expect("a query")
            .expect("a row");
        assert!(port == a.port() || port == b.port(), "answered by {port}");
        idle.push(conn);
    }
    wait_until(SETTLE, "ringlb to count 500 active connections", || {
        active_connections(&lb) == Some(IDLE as f64)
    });

    let held = lb.descriptors();
    let rss = lb.rss_bytes();
    eprintln!(
        "with {IDLE} idle connections: {held:?} (baseline {baseline:?}), RSS {} KiB",
        rss / 1024
    );
    assert!(
        held.sockets >= baseline.sockets + 2 * IDLE,
        "ringlb should hold a client and a backend socket per connection: {held:?}"
    );
    assert!(
        held.pipes <= baseline.pipes + PIPE_FDS_KEPT,
        "{IDLE} idle connections and ringlb holds {} pipe ends (baseline {}, at most {PIPE_FDS_KEPT} more \
         idle in the pools)",
        held.pipes,
        baseline.pipes
    );
    assert!(
        rss < RSS_BOUND,
        "ringlb's RSS is {} MiB with {IDLE} idle connections (bound {} MiB)",
        rss / MIB,
        RSS_BOUND / MIB
    );

    // Each worker accepted about 250 of the idle connections, each with a receive parked in both
    // directions: some 500 parked receives against 128 buffers per worker. Were a parked receive
    // holding a buffer, the ring would be empty and these new connections could not be answered.
    for _ in 0..4 {
        let mut conn = lb.conn();
        let port: u16 = conn
            .query_first("SELECT @@port")
            .expect("a query")
            .expect("a row");
        assert!(port == a.port() || port == b.port(), "answered by {port}");
        let value: Vec<u8> = conn
            .query_first(format!("SELECT REPEAT('y', {big})"))
            .expect("a large result")
            .expect("a row");
        assert_eq!(value.len(), big);
    }
    // And the idle ones still answer after their long wait.
    for conn in idle.iter_mut().step_by(25) {
        let _: u16 = conn
            .query_first("SELECT @@port")
            .expect("a query")
            .expect("a row");
    }
    let pipes = lb.descriptors().pipes;
    assert!(
        pipes <= baseline.pipes + PIPE_FDS_KEPT,
        "after more bulk transfers ringlb holds {pipes} pipe ends (baseline {})",
        baseline.pipes
    );

    drop(idle);
    wait_until(SETTLE, "ringlb to count 0 active connections", || {
        active_connections(&lb) == Some(0.0)
    });
    wait_until(SETTLE, "ringlb to close the idle connections' sockets", || {
        lb.descriptors().sockets <= after_bulk.sockets
    });
}

/// How a client of [`closed_connections_leave_no_descriptors_or_close_wait`] leaves.
#[derive(Debug, Clone, Copy)]
enum Leaving {
    /// Logs in, queries, sends COM_QUIT and closes.
    Quit,
    /// Resets the connection (SO_LINGER 0) before reading anything.
    ResetAtOnce,
    /// Resets the connection after the server's greeting arrived.
    ResetAfterGreeting,
    /// Half-closes after the greeting; the server then closes, and the client reads to EOF.
    HalfClose,
}

fn leave(lb: &Ringlb, how: Leaving) -> Result<(), String> {
    let read_greeting = |stream: &mut TcpStream| {
        let mut greeting = [0u8; 512];
        match stream.read(&mut greeting) {
            Ok(n) if n > 4 => Ok(()),
            Ok(n) => Err(format!("{how:?}: greeting of {n} bytes")),
            Err(e) => Err(format!("{how:?}: reading the greeting: {e}")),
        }
    };
    let connect = || -> Result<TcpStream, String> {
        let stream = TcpStream::connect(lb.addr()).map_err(|e| format!("{how:?}: connect: {e}"))?;
        stream.set_read_timeout(Some(SETTLE)).map_err(|e| e.to_string())?;
        Ok(stream)
    };
    match how {
        Leaving::Quit => {
            let mut conn = lb.try_conn().map_err(|e| format!("{how:?}: login: {e}"))?;
            conn.query_first::<u16, _>("SELECT @@port")
                .map_err(|e| format!("{how:?}: query: {e}"))?;
        }
        Leaving::ResetAtOnce => reset_on_close(&connect()?),
        Leaving::ResetAfterGreeting => {
            let mut stream = connect()?;
            read_greeting(&mut stream)?;
            reset_on_close(&stream);
        }
        Leaving::HalfClose => {
            let mut stream = connect()?;
            read_greeting(&mut stream)?;
            stream
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("{how:?}: shutdown: {e}"))?;
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .map_err(|e| format!("{how:?}: reading to EOF after the half-close: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn closed_connections_leave_no_descriptors_or_close_wait() {
    let _serial = one_at_a_time();
    const THREADS: usize = 4;
    const PER_THREAD: usize = 80;
    let a = MariaDb::start();
    let b = MariaDb::start();
    let lb = Arc::new(Ringlb::start(&[&a, &b], QUIET_HEALTH));
    let baseline = lb.settled_descriptors();
    assert_eq!(lb.sockets_in_close_wait(), 0, "CLOSE_WAIT before any client");

    let kinds = [
        Leaving::Quit,
        Leaving::ResetAtOnce,
        Leaving::ResetAfterGreeting,
        Leaving::HalfClose,
    ];
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let lb = lb.clone();
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..PER_THREAD {
                    leave(&lb, kinds[(t + i) % kinds.len()])?;
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a client thread panicked").unwrap();
    }
    lb.wait_for_baseline(
        baseline,
        &format!(
            "{} connections that quit, reset or half-closed",
            THREADS * PER_THREAD
        ),
    );
    wait_until(SETTLE, "ringlb to count 0 active connections", || {
        active_connections(&lb) == Some(0.0)
    });
}

#[test]
fn a_slow_reader_does_not_make_ringlb_buffer() {
    let _serial = one_at_a_time();
    // ringlb may buffer one 16 KiB buffer or one 1 MiB pipe per direction (the pipe is kernel
    // memory, not RSS): anything near this means it is reading ahead of its client.
    const RSS_GROWTH_BOUND: u64 = 16 * MIB;
    // What the kernel may hold between the backend's writes and the client's reads: the send
    // and receive buffers of both hops, each autotuned up to its sysctl maximum (32 MiB for a
    // receive buffer here), plus one pipe. An endless stream read ahead without bound passes
    // any finite figure; this one only keeps the kernel's own share out of the count.
    let max_of = |sysctl: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{sysctl}"))
            .ok()
            .and_then(|v| v.split_whitespace().last()?.parse().ok())
            .unwrap_or(8 * MIB)
    };
    let in_flight_bound = 2 * max_of("tcp_rmem") + 2 * max_of("tcp_wmem") + 2 * MIB;
    let backend = StreamServer::start(None);
    let lb = Ringlb::start_with_addrs(&[backend.addr()], QUIET_HEALTH);
    let seen = probes_done(&backend);
    let rss_before = lb.rss_bytes();

    let mut client = TcpStream::connect(lb.addr()).expect("connect to ringlb");
    let stream = next_backend_conn(&backend, seen);
    // Observation window: the client reads nothing until the backend has managed to write
    // nothing more for a whole second, i.e. every buffer between them is full.
    let quiet = Duration::from_secs(1);
    let (mut last, mut changed_at) = (0, Instant::now());
    let stalled = poll_until(Duration::from_secs(60), || {
        let written = stream.written();
        if written != last {
            (last, changed_at) = (written, Instant::now());
        }
        written > 0 && changed_at.elapsed() >= quiet
    });
    let written = stream.written();
    assert!(
        stalled,
        "the backend was still writing after 60 s to a client that reads nothing: {} MiB so far",
        written / MIB
    );
    assert!(
        written < in_flight_bound,
        "the backend wrote {written} bytes to a client that reads nothing (bound {in_flight_bound})"
    );
    let rss_after = lb.rss_bytes();
    eprintln!(
        "stalled after {written} bytes from the backend; ringlb RSS {} KiB -> {} KiB",
        rss_before / 1024,
        rss_after / 1024
    );
    assert!(
        rss_after < rss_before + RSS_GROWTH_BOUND,
        "ringlb's RSS grew from {} KiB to {} KiB behind a stalled client",
        rss_before / 1024,
        rss_after / 1024
    );
    assert_eq!(stream.end(), None, "the stalled stream ended");

    // The client reads: the stream flows again, well past what was in flight at the stall.
    client.set_read_timeout(Some(SETTLE)).expect("set a read timeout");
    let mut chunk = vec![0u8; CHUNK_BYTES];
    let read_bytes = (in_flight_bound + 16 * MIB).div_ceil(CHUNK_BYTES as u64) * CHUNK_BYTES as u64;
    for _ in 0..read_bytes / CHUNK_BYTES as u64 {
        client
            .read_exact(&mut chunk)
            .expect("the stream through ringlb after the stall");
    }
    wait_until(SETTLE, "the backend to write again once the client reads", || {
        stream.written() >= written + read_bytes - in_flight_bound
    });
    assert!(stream.written() > written);
}

/// A listening socket that never accepts and whose accept queue is full, so the kernel drops
/// further SYNs and a connect to it hangs (rather than being refused). Holds the queued
/// connections; dropping it closes everything.
struct BlackHole {
    addr: SocketAddr,
    _listener: Socket,
    _queued: Vec<Socket>,
}

impl BlackHole {
    fn new() -> BlackHole {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        listener
            .bind(&SockAddr::from(SocketAddr::from(([127, 0, 0, 1], 0))))
            .expect("bind");
        // Backlog 0: the accept queue takes one connection; SYNs that find it full are dropped
        // (with tcp_abort_on_overflow = 0, the default).
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .expect("local_addr")
            .as_socket()
            .expect("an inet address");
        let mut queued = Vec::new();
        for _ in 0..8 {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            match socket.connect_timeout(&addr.into(), Duration::from_millis(300)) {
                Ok(()) => queued.push(socket),
                Err(_) => break,
            }
        }
        BlackHole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}

#[test]
fn connect_timeout_redispatches_to_the_next_backend() {
    let _serial = one_at_a_time();
    const CONNECTIONS: usize = 10;
    let hole = BlackHole::new();
    // The premise: a connect to the full queue hangs (it is neither refused nor accepted).
    let probe = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    match probe.connect_timeout(&hole.addr.into(), Duration::from_millis(500)) {
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
        other => panic!("a connect to a listener with a full accept queue should hang; it gave {other:?}"),
    }
    drop(probe);
    let b = MariaDb::start();
    // `--listen` and `--backend` fill in the listener's bind and backends; the file gives it the
    // short connect timeout. The health check's first probe of the black hole waits out its
    // 30 s timeout, so the checker does not take the black hole out before the data path meets it.
    let config = "[health]\ncheck = \"tcp\"\ninterval_ms = 60000\ntimeout_ms = 30000\n\n\
                  [[listener]]\nname = \"default\"\nbind = \"127.0.0.1:1\"\nconnect_timeout_ms = 300\n\
                  [[listener.backend]]\naddress = \"127.0.0.1:1\"\n";
    let lb = Ringlb::start_with_addrs(&[hole.addr, b.addr()], config);
    assert_eq!(
        lb.backend_metric("ringlb_backend_up", hole.addr),
        Some(1.0),
        "the black hole must still count as up for the data path to meet it"
    );

    for i in 0..CONNECTIONS {
        let started = Instant::now();
        let port = lb
            .try_conn()
            .and_then(|mut conn| conn.query_first::<u16, _>("SELECT @@port"))
            .unwrap_or_else(|e| panic!("connection {i} failed after {:?}: {e}", started.elapsed()));
        assert_eq!(port, Some(b.port()), "connection {i} answered by {port:?}");
    }
    let errors = lb
        .backend_metric("ringlb_backend_connect_errors_total", hole.addr)
        .unwrap_or(0.0);
    assert!(
        errors >= 1.0,
        "no connect error counted for the black hole ({errors}): the connections never met it"
    );
}

/// Backends that accept a connection and end it before sending a byte, as a MariaDB server that
/// is being stopped does with the connections still in its listen queue: one closes (FIN), one
/// resets (RST). The client has sent nothing yet, so ringlb can still hand it to the next backend
/// unnoticed, and every client must get a server's greeting; with either relay.
#[test]
fn backend_gone_before_its_first_byte_is_replaced_by_the_next() {
    let _serial = one_at_a_time();
    const CONNECTIONS: usize = 12;
    for tuning in ["", "[tuning]\nrelay = \"splice\"\n"] {
        // Until armed they behave (hold each connection until its EOF), so that the health
        // check's start-up probe counts them up; armed, they end every connection at once.
        let armed = Arc::new(AtomicBool::new(false));
        let broken = |reset: bool| {
            let armed = armed.clone();
            move |mut stream: TcpStream, _: &AtomicBool| {
                if !armed.load(Ordering::Relaxed) {
                    let _ = stream.read(&mut [0u8; 64]);
                } else if reset {
                    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                }
            }
        };
        let closes = TcpServer::start("the closing backend", broken(false));
        let resets = TcpServer::start("the resetting backend", broken(true));
        let b = MariaDb::start();
        let backends = [closes.addr(), resets.addr(), b.addr()];
        let lb = Ringlb::start_with_addrs(&backends, &format!("{QUIET_HEALTH}{tuning}"));
        wait_until(SETTLE, "the start-up checks to count every backend up", || {
            backends
                .iter()
                .all(|&backend| lb.backend_metric("ringlb_backend_up", backend) == Some(1.0))
        });
        armed.store(true, Ordering::Relaxed);

        for i in 0..CONNECTIONS {
            let port = lb
                .try_conn()
                .and_then(|mut conn| conn.query_first::<u16, _>("SELECT @@port"))
                .unwrap_or_else(|e| {
                    panic!(
                        "{tuning:?}: connection {i} failed: {e}\nringlb stderr:\n{}",
                        lb.log_tail()
                    )
                });
            assert_eq!(
                port,
                Some(b.port()),
                "{tuning:?}: connection {i} answered by {port:?}"
            );
        }
        // Both broken backends were met (and each marked suspect, so later clients skip them).
        for broken in [closes.addr(), resets.addr()] {
            let errors = lb
                .backend_metric("ringlb_backend_connect_errors_total", broken)
                .unwrap_or(0.0);
            assert!(
                errors >= 1.0,
                "{tuning:?}: no error counted for {broken}: the clients never met it"
            );
        }
    }
}

#[test]
fn client_reset_mid_transfer_closes_the_backend_side() {
    let _serial = one_at_a_time();
    const STREAM_BYTES: u64 = 64 * MIB;
    // More resets than the pipe pools can keep pipes, so a pipe lost with each reset would show
    // in the descriptor count.
    const RESETS: usize = 3 * PIPES_KEPT * WORKERS;
    let backend = StreamServer::start(Some(STREAM_BYTES));
    let lb = Ringlb::start_with_addrs(&[backend.addr()], QUIET_HEALTH);
    probes_done(&backend);
    let baseline = lb.settled_descriptors();

    for round in 0..RESETS {
        let seen = backend.connections().len();
        let mut client = TcpStream::connect(lb.addr()).expect("connect to ringlb");
        client.set_read_timeout(Some(SETTLE)).expect("set a read timeout");
        let stream = next_backend_conn(&backend, seen);
        let mut first = vec![0u8; MIB as usize];
        client
            .read_exact(&mut first)
            .expect("the first MiB through ringlb");
        assert!(
            stream.written() < STREAM_BYTES,
            "round {round}: the backend wrote the whole stream before the client read 1 MiB"
        );
        reset_on_close(&client);
        drop(client);

        let closed = poll_until(SETTLE, || stream.end().is_some());
        assert!(
            closed,
            "round {round}: the backend still sees its connection open {SETTLE:?} after the client \
             reset ({} of {} MiB written)",
            stream.written() / MIB,
            STREAM_BYTES / MIB
        );
        let end = stream.end();
        assert!(
            matches!(end, Some(StreamEnd::WriteFailed(_) | StreamEnd::PeerClosed(_))),
            "round {round}: the backend side ended with {end:?}"
        );
    }
    lb.wait_for_baseline(baseline, &format!("after {RESETS} client resets mid-transfer"));
}

/// Block `index` of client `seed`'s stream: xorshift output, different for every block and
/// client, so a lost, repeated, reordered or crossed block changes what the reader compares.
fn pattern_block(seed: u64, index: u64, block: &mut [u8]) {
    let mut state =
        (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03)) | 1;
    for word in block.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
}

/// Sends `blocks` pattern blocks through `addr` while reading the echo back, half-closes, and
/// checks every byte of the echo and its EOF.
fn echo_round_trip(addr: SocketAddr, seed: u64, blocks: u64) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("client {seed}: connect: {e}"))?;
    let timeout = Some(Duration::from_secs(60));
    stream.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    stream.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let mut sender = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> Result<(), String> {
        let mut block = vec![0u8; CHUNK_BYTES];
        for index in 0..blocks {
            pattern_block(seed, index, &mut block);
            sender
                .write_all(&block)
                .map_err(|e| format!("client {seed}: write block {index}: {e}"))?;
        }
        sender
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("client {seed}: half-close: {e}"))
    });
    let checked = (|| {
        let (mut got, mut want) = (vec![0u8; CHUNK_BYTES], vec![0u8; CHUNK_BYTES]);
        for index in 0..blocks {
            stream
                .read_exact(&mut got)
                .map_err(|e| format!("client {seed}: read echo block {index}: {e}"))?;
            pattern_block(seed, index, &mut want);
            if let Some(at) = got.iter().zip(&want).position(|(g, w)| g != w) {
                return Err(format!(
                    "client {seed}: echo differs at byte {}",
                    index * CHUNK_BYTES as u64 + at as u64
                ));
            }
        }
        match stream.read(&mut got) {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!("client {seed}: {n} bytes past the end of the echo")),
            Err(e) => Err(format!("client {seed}: no EOF after the echo: {e}")),
        }
    })();
    if checked.is_err() {
        // Unblocks the writer.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let written = writer.join().expect("the writer thread panicked");
    checked.and(written)
}

#[test]
fn bulk_transfer_both_directions_is_byte_identical() {
    let _serial = one_at_a_time();
    const CLIENTS: u64 = 4;
    const STREAM_BYTES: u64 = 64 * MIB;
    let backend = EchoServer::start();
    let lb = Ringlb::start_with_addrs(&[backend.addr()], QUIET_HEALTH);
    let name = backend.addr().to_string();
    let bytes = |direction: &str| {
        lb.metric(
            "ringlb_backend_bytes_total",
            &[
                ("backend", &name),
                ("listener", "default"),
                ("direction", direction),
            ],
        )
        .unwrap_or_else(|| panic!("no ringlb_backend_bytes_total {direction} series"))
    };
    let (to_backend, to_client) = (bytes("to_backend"), bytes("to_client"));

    let addr = lb.addr();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|seed| {
            std::thread::spawn(move || echo_round_trip(addr, seed, STREAM_BYTES / CHUNK_BYTES as u64))
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread panicked").unwrap();
    }

    let expected = (CLIENTS * STREAM_BYTES) as f64;
    let counted = poll_until(SETTLE, || {
        bytes("to_backend") - to_backend == expected && bytes("to_client") - to_client == expected
    });
    assert!(
        counted,
        "ringlb_backend_bytes_total moved by {} to_backend and {} to_client; {expected} expected each way",
        bytes("to_backend") - to_backend,
        bytes("to_client") - to_client
    );
}
