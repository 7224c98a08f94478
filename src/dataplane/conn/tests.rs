//! The connection machine driven without sockets: scripted paths first, then a simulated world
//! (two byte streams, a buffer ring, pipes, a pool) that answers every question and ends every op
//! in random orders with random results, checking the machine's promises after every step.

use super::*;

const BUF_BYTES: u32 = 64;
const PIPE_BYTES: u32 = 256;

fn ctx(now_ms: u64) -> Ctx {
    Ctx {
        now_ms,
        now_us: now_ms * 1000 + 7,
        buf_bytes: BUF_BYTES,
        splice_only: false,
    }
}

fn done(op: Op, dir: usize, result: i32) -> Event {
    Event::Done {
        op,
        dir,
        result,
        buffer: None,
    }
}

fn recv_bytes(dir: usize, n: i32, buffer: u16) -> Event {
    Event::Done {
        op: Op::Recv,
        dir,
        result: n,
        buffer: Some(buffer),
    }
}

fn backend(index: usize) -> Choice {
    Choice::Backend {
        index,
        position: index,
    }
}

/// Steps `conn` through `event` and answers nothing: returns the intents.
fn step(conn: &mut Conn, event: Event) -> Vec<Intent> {
    let mut out = Vec::new();
    conn.step(&ctx(1000), event, &mut out);
    out
}

/// A connection relaying to backend 0 (buffered), both directions receiving.
fn relaying() -> Conn {
    let mut conn = Conn::new();
    assert_eq!(
        step(&mut conn, Event::Accepted { queue_first: false }),
        [Intent::Pick]
    );
    assert_eq!(
        step(&mut conn, Event::Picked(backend(0))),
        [Intent::OpenBackend { backend: 0 }]
    );
    assert_eq!(step(&mut conn, Event::BackendOpened(Ok(()))), [Intent::Connect]);
    assert_eq!(step(&mut conn, done(Op::Connect, 0, 0)), [Intent::Handshake]);
    let out = step(&mut conn, Event::HandshakeDone(Ok(())));
    assert_eq!(
        out[1..],
        [Intent::Recv { dir: TO_BACKEND }, Intent::Recv { dir: TO_CLIENT }]
    );
    assert!(matches!(out[0], Intent::Connected { backend: 0, .. }));
    assert_eq!(step(&mut conn, done(Op::ConnectTimeout, 0, -libc::ECANCELED)), []);
    assert_eq!((conn.phase(), conn.inflight()), (Phase::Relaying, 2));
    conn
}

#[test]
fn a_refused_connect_releases_marks_and_tries_the_next_backend() {
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: false });
    step(&mut conn, Event::Picked(backend(0)));
    step(&mut conn, Event::BackendOpened(Ok(())));
    let out = step(&mut conn, done(Op::Connect, 0, -libc::ECONNREFUSED));
    assert_eq!(
        out,
        [
            Intent::CloseBackend,
            Intent::Release { backend: 0 },
            Intent::ConnectFailed {
                backend: 0,
                errno: libc::ECONNREFUSED
            },
            Intent::Pick
        ]
    );
    // The next backend, counted as a redispatch; the first connect's timeout still in flight.
    let out = step(&mut conn, Event::Picked(backend(1)));
    assert_eq!(out, [Intent::Redispatched, Intent::OpenBackend { backend: 1 }]);
    assert_eq!(conn.tried().len(), 2);
    assert_eq!(conn.inflight(), 1);
}

#[test]
fn a_timed_out_connect_is_reported_as_a_timeout() {
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: false });
    step(&mut conn, Event::Picked(backend(3)));
    step(&mut conn, Event::BackendOpened(Ok(())));
    let out = step(&mut conn, done(Op::Connect, 0, -libc::ECANCELED));
    assert!(out.contains(&Intent::ConnectFailed {
        backend: 3,
        errno: libc::ETIMEDOUT
    }));
}

#[test]
fn with_no_backend_left_the_client_gets_an_error_and_is_freed_once_its_ops_end() {
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: false });
    step(&mut conn, Event::Picked(backend(0)));
    step(&mut conn, Event::BackendOpened(Ok(())));
    step(&mut conn, done(Op::Connect, 0, -libc::ECONNREFUSED));
    let out = step(&mut conn, Event::Picked(Choice::None));
    assert_eq!(out, [Intent::Refuse(Refusal::NoBackend), Intent::Abort]);
    assert_eq!(conn.phase(), Phase::Closing, "the connect's timeout is in flight");
    assert_eq!(
        step(&mut conn, done(Op::ConnectTimeout, 0, -libc::ECANCELED)),
        [Intent::Free]
    );
    assert_eq!(conn.phase(), Phase::Freed);
}

#[test]
fn no_backend_socket_is_a_local_failure_with_no_suspect_mark() {
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: false });
    step(&mut conn, Event::Picked(backend(0)));
    let out = step(&mut conn, Event::BackendOpened(Err(libc::EMFILE)));
    assert_eq!(
        out,
        [
            Intent::Release { backend: 0 },
            Intent::Refuse(Refusal::NoSocket(libc::EMFILE)),
            Intent::Abort,
            Intent::Free
        ]
    );
}

#[test]
fn a_backend_that_resets_before_its_first_byte_is_redispatched_after_the_clients_read_ends() {
    let mut conn = relaying();
    let out = step(&mut conn, done(Op::Recv, TO_CLIENT, -libc::ECONNRESET));
    assert_eq!(
        out,
        [
            Intent::CloseBackend,
            Intent::Release { backend: 0 },
            Intent::ConnectFailed {
                backend: 0,
                errno: libc::ECONNRESET
            },
            Intent::Cancel {
                op: Op::Recv,
                dir: TO_BACKEND
            }
        ]
    );
    assert_eq!(conn.phase(), Phase::Redispatching);
    assert_eq!(step(&mut conn, done(Op::Cancel, TO_BACKEND, 0)), []);
    // The client's read ends cancelled: nothing left, the next backend.
    let out = step(&mut conn, done(Op::Recv, TO_BACKEND, -libc::ECANCELED));
    assert_eq!(out, [Intent::Pick]);
    assert_eq!(conn.phase(), Phase::Connecting);
}

#[test]
fn a_backend_that_closes_before_its_first_byte_counts_as_a_failed_connect() {
    let mut conn = relaying();
    let out = step(&mut conn, done(Op::Recv, TO_CLIENT, 0));
    assert!(out.contains(&Intent::ConnectFailed {
        backend: 0,
        errno: CLOSED_BEFORE_FIRST_BYTE
    }));
}

#[test]
fn a_client_that_speaks_while_its_backend_is_redispatched_is_closed_not_moved() {
    let mut conn = relaying();
    step(&mut conn, done(Op::Recv, TO_CLIENT, 0));
    step(&mut conn, done(Op::Cancel, TO_BACKEND, -libc::ENOENT));
    // Its read had taken bytes before the cancel: they are dropped and the client closed.
    let out = step(&mut conn, recv_bytes(TO_BACKEND, 10, 5));
    assert_eq!(out, [Intent::Recycle { buffer: 5 }, Intent::Abort, Intent::Free]);
}

#[test]
fn once_a_byte_moved_a_backend_reset_ends_the_connection() {
    let mut conn = relaying();
    let out = step(&mut conn, recv_bytes(TO_BACKEND, 10, 1));
    assert_eq!(
        out,
        [Intent::Send {
            dir: TO_BACKEND,
            buffer: 1,
            offset: 0,
            len: 10
        }]
    );
    let out = step(&mut conn, done(Op::Recv, TO_CLIENT, -libc::ECONNRESET));
    assert_eq!(out, [Intent::Abort]);
    assert_eq!(conn.phase(), Phase::Closing);
    // The send ends after the close began: its buffer goes back at the free, once.
    let out = step(&mut conn, done(Op::Send, TO_BACKEND, -libc::EPIPE));
    assert_eq!(out.first(), Some(&Intent::Recycle { buffer: 1 }));
    assert!(out.contains(&Intent::Release { backend: 0 }));
    assert_eq!(out.last(), Some(&Intent::Free));
}

#[test]
fn half_closes_pass_each_way_and_the_second_frees_without_a_reset() {
    for first in [TO_BACKEND, TO_CLIENT] {
        let mut conn = relaying();
        // A byte each way first, so that the backend's end is not a failed connect.
        step(&mut conn, recv_bytes(TO_BACKEND, 3, 0));
        step(&mut conn, done(Op::Send, TO_BACKEND, 3));
        let out = step(&mut conn, done(Op::Recv, first, 0));
        assert_eq!(out, [Intent::HalfClose { dir: first }]);
        assert_eq!(conn.phase(), Phase::Relaying, "the other direction flows on");
        let out = step(&mut conn, done(Op::Recv, 1 - first, 0));
        assert_eq!(out[0], Intent::HalfClose { dir: 1 - first });
        assert!(!out.contains(&Intent::Abort));
        assert_eq!(out.last(), Some(&Intent::Free));
    }
}

#[test]
fn a_partial_send_sends_the_rest_then_counts_it_all_once() {
    let mut conn = relaying();
    step(&mut conn, recv_bytes(TO_CLIENT, 40, 2));
    let out = step(&mut conn, done(Op::Send, TO_CLIENT, 15));
    assert_eq!(
        out[1],
        Intent::Send {
            dir: TO_CLIENT,
            buffer: 2,
            offset: 15,
            len: 25
        }
    );
    let out = step(&mut conn, done(Op::Send, TO_CLIENT, 25));
    assert_eq!(
        out,
        [
            Intent::CountBytes {
                backend: 0,
                dir: TO_CLIENT,
                bytes: 25
            },
            Intent::Recycle { buffer: 2 },
            Intent::Recv { dir: TO_CLIENT }
        ]
    );
}

#[test]
fn a_full_buffer_switches_its_direction_to_splice_and_back_once_drained() {
    let mut conn = relaying();
    step(&mut conn, recv_bytes(TO_CLIENT, BUF_BYTES as i32, 0));
    let out = step(&mut conn, done(Op::Send, TO_CLIENT, BUF_BYTES as i32));
    assert_eq!(out.last(), Some(&Intent::TakePipe { dir: TO_CLIENT }));
    let out = step(
        &mut conn,
        Event::PipeTaken {
            dir: TO_CLIENT,
            capacity: Some(PIPE_BYTES),
        },
    );
    assert_eq!(
        out,
        [Intent::SpliceIn {
            dir: TO_CLIENT,
            len: PIPE_BYTES
        }]
    );
    let out = step(&mut conn, done(Op::SpliceIn, TO_CLIENT, 100));
    assert_eq!(
        out,
        [Intent::SpliceOut {
            dir: TO_CLIENT,
            len: 100
        }]
    );
    // The destination is full: wait for room, then the rest.
    let out = step(&mut conn, done(Op::SpliceOut, TO_CLIENT, -libc::EAGAIN));
    assert_eq!(out, [Intent::PollOut { dir: TO_CLIENT }]);
    let out = step(&mut conn, done(Op::PollOut, TO_CLIENT, libc::POLLOUT as i32));
    assert_eq!(
        out,
        [Intent::SpliceOut {
            dir: TO_CLIENT,
            len: 100
        }]
    );
    let out = step(&mut conn, done(Op::SpliceOut, TO_CLIENT, 100));
    assert_eq!(
        out[1..],
        [
            Intent::ReturnPipe {
                dir: TO_CLIENT,
                empty: true
            },
            Intent::Recv { dir: TO_CLIENT }
        ]
    );
}

#[test]
fn a_write_to_a_half_closed_full_peer_waits_a_pause_not_a_spin() {
    let mut conn = relaying();
    step(&mut conn, recv_bytes(TO_CLIENT, BUF_BYTES as i32, 0));
    step(&mut conn, done(Op::Send, TO_CLIENT, BUF_BYTES as i32));
    step(
        &mut conn,
        Event::PipeTaken {
            dir: TO_CLIENT,
            capacity: Some(PIPE_BYTES),
        },
    );
    step(&mut conn, done(Op::SpliceIn, TO_CLIENT, 10));
    step(&mut conn, done(Op::SpliceOut, TO_CLIENT, -libc::EAGAIN));
    let out = step(&mut conn, done(Op::PollOut, TO_CLIENT, libc::POLLRDHUP as i32));
    assert_eq!(out, [Intent::WriteRetry { dir: TO_CLIENT }]);
    let out = step(&mut conn, done(Op::WriteRetry, TO_CLIENT, -libc::ETIME));
    assert_eq!(
        out,
        [Intent::SpliceOut {
            dir: TO_CLIENT,
            len: 10
        }]
    );
}

#[test]
fn with_no_pipe_to_be_had_a_bulk_direction_stays_buffered() {
    let mut conn = relaying();
    step(&mut conn, recv_bytes(TO_CLIENT, BUF_BYTES as i32, 0));
    step(&mut conn, done(Op::Send, TO_CLIENT, BUF_BYTES as i32));
    let out = step(
        &mut conn,
        Event::PipeTaken {
            dir: TO_CLIENT,
            capacity: None,
        },
    );
    assert_eq!(out, [Intent::Recv { dir: TO_CLIENT }]);
}

#[test]
fn a_pipe_a_late_splice_filled_goes_back_as_not_empty() {
    let mut conn = relaying();
    step(&mut conn, recv_bytes(TO_CLIENT, BUF_BYTES as i32, 0));
    step(&mut conn, done(Op::Send, TO_CLIENT, BUF_BYTES as i32));
    step(
        &mut conn,
        Event::PipeTaken {
            dir: TO_CLIENT,
            capacity: Some(PIPE_BYTES),
        },
    );
    assert_eq!(step(&mut conn, Event::Close), [Intent::Abort]);
    step(&mut conn, done(Op::Recv, TO_BACKEND, 0));
    let out = step(&mut conn, done(Op::SpliceIn, TO_CLIENT, 100));
    assert!(out.contains(&Intent::ReturnPipe {
        dir: TO_CLIENT,
        empty: false
    }));
}

#[test]
fn an_empty_buffer_ring_parks_the_direction_until_a_buffer_is_back() {
    let mut conn = relaying();
    let out = step(&mut conn, done(Op::Recv, TO_BACKEND, -libc::ENOBUFS));
    assert_eq!(out, [Intent::ParkForBuffer { dir: TO_BACKEND }]);
    assert!(conn.waits_for_buffer(TO_BACKEND));
    assert_eq!(conn.inflight(), 1);
    assert_eq!(step(&mut conn, Event::BufferBack { dir: TO_CLIENT }), []);
    let out = step(&mut conn, Event::BufferBack { dir: TO_BACKEND });
    assert_eq!(out, [Intent::Recv { dir: TO_BACKEND }]);
}

#[test]
fn a_queued_client_is_served_timed_out_or_gone() {
    // Served: its watch is cancelled and it connects.
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: true });
    assert_eq!(step(&mut conn, Event::Enqueued(true)), [Intent::QueueWatch]);
    assert_eq!(conn.queued_since_ms(), Some(1000));
    let out = step(&mut conn, Event::Served(Some(backend(1))));
    assert_eq!(
        out,
        [
            Intent::Cancel {
                op: Op::QueueWatch,
                dir: 0
            },
            Intent::OpenBackend { backend: 1 }
        ]
    );
    // Its watch ends cancelled after it left the queue: nothing.
    assert_eq!(step(&mut conn, done(Op::QueueWatch, 0, -libc::ECANCELED)), []);

    // Timed out: an error, then freed once the watch and its cancel end.
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: true });
    step(&mut conn, Event::Enqueued(true));
    let out = step(&mut conn, Event::Served(None));
    assert_eq!(out[1..], [Intent::Refuse(Refusal::QueueTimeout), Intent::Abort]);
    step(&mut conn, done(Op::QueueWatch, 0, libc::POLLRDHUP as i32));
    assert_eq!(step(&mut conn, done(Op::Cancel, 0, 0)), [Intent::Free]);

    // Gone: its hang-up takes it out of the queue.
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: true });
    step(&mut conn, Event::Enqueued(true));
    let out = step(&mut conn, done(Op::QueueWatch, 0, libc::POLLRDHUP as i32));
    assert_eq!(out, [Intent::LeftQueue, Intent::Abort, Intent::Free]);

    // No room in the queue.
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: true });
    let out = step(&mut conn, Event::Enqueued(false));
    assert_eq!(
        out,
        [Intent::Refuse(Refusal::QueueFull), Intent::Abort, Intent::Free]
    );
}

#[test]
fn an_idle_or_former_writer_close_resets_and_frees_after_the_last_op() {
    let mut conn = relaying();
    assert_eq!(conn.relaying_since_ms(), Some(1000));
    assert_eq!(step(&mut conn, Event::Close), [Intent::Abort]);
    assert_eq!(step(&mut conn, Event::Close), [], "closing once");
    assert_eq!(step(&mut conn, done(Op::Recv, TO_BACKEND, 0)), []);
    let out = step(&mut conn, done(Op::Recv, TO_CLIENT, -libc::ECANCELED));
    assert_eq!(
        out,
        [
            Intent::Lifetime {
                backend: 0,
                took_us: 0
            },
            Intent::Release { backend: 0 },
            Intent::Free
        ]
    );
}

#[test]
fn a_backend_that_cannot_take_the_proxy_header_is_a_failed_connect() {
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: false });
    step(&mut conn, Event::Picked(backend(0)));
    step(&mut conn, Event::BackendOpened(Ok(())));
    step(&mut conn, done(Op::Connect, 0, 0));
    let out = step(
        &mut conn,
        Event::HandshakeDone(Err(HandshakeFailure::Backend(libc::ECONNRESET))),
    );
    assert_eq!(
        out,
        [
            Intent::CloseBackend,
            Intent::Release { backend: 0 },
            Intent::ConnectFailed {
                backend: 0,
                errno: libc::ECONNRESET
            },
            Intent::Pick
        ]
    );
}

#[test]
fn a_client_gone_before_its_proxy_header_ends_without_blaming_the_backend() {
    let mut conn = Conn::new();
    step(&mut conn, Event::Accepted { queue_first: false });
    step(&mut conn, Event::Picked(backend(0)));
    step(&mut conn, Event::BackendOpened(Ok(())));
    step(&mut conn, done(Op::Connect, 0, 0));
    let out = step(&mut conn, Event::HandshakeDone(Err(HandshakeFailure::Client)));
    assert_eq!(out, [Intent::Abort]);
    let out = step(&mut conn, done(Op::ConnectTimeout, 0, -libc::ECANCELED));
    assert_eq!(out, [Intent::Release { backend: 0 }, Intent::Free]);
}

#[test]
fn a_client_that_resets_while_redispatched_is_closed_not_moved() {
    let mut conn = relaying();
    step(&mut conn, done(Op::Recv, TO_CLIENT, 0));
    step(&mut conn, done(Op::Cancel, TO_BACKEND, -libc::ENOENT));
    let out = step(&mut conn, done(Op::Recv, TO_BACKEND, -libc::ECONNRESET));
    assert_eq!(out, [Intent::Abort, Intent::Free]);
}

#[test]
fn a_splice_only_client_that_turns_readable_while_redispatched_is_closed_not_moved() {
    let mut conn = Conn::new();
    let c = Ctx {
        splice_only: true,
        ..ctx(5)
    };
    let mut out = Vec::new();
    for event in [
        Event::Accepted { queue_first: false },
        Event::Picked(backend(0)),
        Event::BackendOpened(Ok(())),
        done(Op::Connect, 0, 0),
        done(Op::ConnectTimeout, 0, -libc::ECANCELED),
        Event::HandshakeDone(Ok(())),
        done(Op::PollIn, TO_CLIENT, libc::POLLIN as i32),
        Event::PipeTaken {
            dir: TO_CLIENT,
            capacity: Some(PIPE_BYTES),
        },
        // The backend ends before its first byte: the client's poll is cancelled.
        done(Op::SpliceIn, TO_CLIENT, 0),
        done(Op::Cancel, TO_BACKEND, -libc::ENOENT),
    ] {
        conn.step(&c, event, &mut out);
    }
    assert_eq!(conn.phase(), Phase::Redispatching);
    out.clear();
    // The client's poll had fired: it spoke or left, so it is not moved.
    conn.step(&c, done(Op::PollIn, TO_BACKEND, libc::POLLIN as i32), &mut out);
    assert_eq!(out, [Intent::Abort, Intent::Free]);
}

#[test]
fn splice_only_relay_polls_then_splices() {
    let mut conn = Conn::new();
    let c = Ctx {
        splice_only: true,
        ..ctx(5)
    };
    let mut out = Vec::new();
    for event in [
        Event::Accepted { queue_first: false },
        Event::Picked(backend(0)),
        Event::BackendOpened(Ok(())),
        done(Op::Connect, 0, 0),
    ] {
        conn.step(&c, event, &mut out);
    }
    out.clear();
    conn.step(&c, Event::HandshakeDone(Ok(())), &mut out);
    assert_eq!(
        out[1..],
        [
            Intent::PollIn { dir: TO_BACKEND },
            Intent::PollIn { dir: TO_CLIENT }
        ]
    );
    out.clear();
    conn.step(&c, done(Op::PollIn, TO_BACKEND, libc::POLLIN as i32), &mut out);
    assert_eq!(out, [Intent::TakePipe { dir: TO_BACKEND }]);
}

// ---- the simulated world ----

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const POOL: usize = 4;
const BUFFERS: u16 = 3;

#[derive(Debug, Clone, Copy)]
struct Pending {
    intent: Intent,
    op: Op,
    dir: usize,
    /// Its cancel ended first: it ends cancelled.
    cancelled: bool,
}

/// Everything around one connection: the client's and the backend's byte streams, the buffers,
/// the pipes, the pool, the queue, and the ops in flight.
struct World {
    rng: Rng,
    now_ms: u64,
    splice_only: bool,
    conn: Conn,
    pending: Vec<Pending>,
    /// What each source has to send, how much of it was read, and whether it ends after it.
    source: [Vec<u8>; 2],
    read: [usize; 2],
    ends: [bool; 2],
    delivered: [Vec<u8>; 2],
    counted: [u64; 2],
    half_closed: [bool; 2],
    /// Buffers in the ring, and the bytes each buffer holds.
    ring: Vec<u16>,
    contents: Vec<Vec<u8>>,
    /// Each direction's pipe while it holds one, with the bytes in it.
    pipes: [Option<Vec<u8>>; 2],
    backend_held: Option<usize>,
    backend_socket: bool,
    connected_backend: bool,
    queued: bool,
    aborted: bool,
    freed: bool,
    /// Refusals seen (an error packet each).
    refused: u32,
    steps: u32,
}

impl World {
    fn new(seed: u64, splice_only: bool) -> World {
        let mut rng = Rng(seed | 1);
        let client: Vec<u8> = (0..rng.below(300)).map(|i| i as u8).collect();
        let ends = [rng.chance(80), rng.chance(80)];
        World {
            now_ms: 1000,
            splice_only,
            conn: Conn::new(),
            pending: Vec::new(),
            source: [client, Vec::new()],
            read: [0, 0],
            ends,
            delivered: [Vec::new(), Vec::new()],
            counted: [0, 0],
            half_closed: [false, false],
            ring: (0..BUFFERS).collect(),
            contents: vec![Vec::new(); BUFFERS as usize],
            pipes: [None, None],
            backend_held: None,
            backend_socket: false,
            connected_backend: false,
            queued: false,
            aborted: false,
            freed: false,
            refused: 0,
            steps: 0,
            rng,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            now_ms: self.now_ms,
            now_us: self.now_ms * 1000,
            buf_bytes: BUF_BYTES,
            splice_only: self.splice_only,
        }
    }

    /// A backend's answer stream, fresh for each backend connected.
    fn new_backend_stream(&mut self) {
        let len = if self.rng.chance(20) {
            0
        } else {
            self.rng.below(400)
        };
        self.source[TO_CLIENT] = (0..len).map(|i| (i as u8).wrapping_mul(7)).collect();
        self.read[TO_CLIENT] = 0;
        self.ends[TO_CLIENT] = self.rng.chance(80);
    }

    fn choose(&mut self) -> Choice {
        let free: Vec<usize> = (0..POOL).filter(|&p| !self.conn.tried().contains(p)).collect();
        let roll = self.rng.below(100);
        if free.is_empty() || roll < 5 {
            Choice::None
        } else if roll < 20 {
            Choice::Full
        } else {
            let position = free[self.rng.below(free.len() as u64) as usize];
            Choice::Backend {
                index: position,
                position,
            }
        }
    }

    fn step(&mut self, event: Event) {
        let ctx = self.ctx();
        let mut out = Vec::new();
        self.conn.step(&ctx, event, &mut out);
        let mut next = 0;
        while next < out.len() {
            let intent = out[next];
            next += 1;
            if intent.is_question() {
                assert_eq!(next, out.len(), "a question is the last intent: {out:?}");
            }
            if let Some(answer) = self.execute(intent) {
                self.conn.step(&ctx, answer, &mut out);
            }
        }
        self.check(&out);
    }

    fn start(&mut self, intent: Intent, op: Op, dir: usize) {
        assert!(!self.freed, "{intent:?} after the free");
        self.pending.push(Pending {
            intent,
            op,
            dir,
            cancelled: false,
        });
    }

    fn pending_on(&self, op: Op, dir: usize) -> bool {
        self.pending.iter().any(|p| p.op == op && p.dir == dir)
    }

    fn execute(&mut self, intent: Intent) -> Option<Event> {
        assert!(!self.freed, "{intent:?} after the free");
        match intent {
            Intent::Pick => {
                let choice = self.choose();
                if let Choice::Backend { index, .. } = choice {
                    assert_eq!(self.backend_held, None, "two backends held at once");
                    self.backend_held = Some(index);
                }
                return Some(Event::Picked(choice));
            }
            Intent::Enqueue => {
                let admitted = self.rng.chance(85);
                self.queued = admitted;
                return Some(Event::Enqueued(admitted));
            }
            Intent::OpenBackend { backend } => {
                assert_eq!(self.backend_held, Some(backend));
                let ok = self.rng.chance(95);
                self.backend_socket = ok;
                return Some(Event::BackendOpened(if ok { Ok(()) } else { Err(libc::EMFILE) }));
            }
            Intent::Handshake => {
                let ok = self.rng.chance(97);
                let failure = if self.rng.chance(50) {
                    HandshakeFailure::Client
                } else {
                    HandshakeFailure::Backend(libc::EPIPE)
                };
                return Some(Event::HandshakeDone(if ok { Ok(()) } else { Err(failure) }));
            }
            Intent::TakePipe { dir } => {
                assert!(self.pipes[dir].is_none(), "a second pipe for {dir}");
                let capacity = self.rng.chance(85).then_some(PIPE_BYTES);
                if capacity.is_some() {
                    self.pipes[dir] = Some(Vec::new());
                }
                return Some(Event::PipeTaken { dir, capacity });
            }
            Intent::Connect => {
                assert!(self.backend_socket);
                self.start(intent, Op::Connect, 0);
                self.start(intent, Op::ConnectTimeout, 0);
            }
            Intent::Recv { dir } => {
                assert!(self.backend_socket, "a receive with no backend socket");
                self.start(intent, Op::Recv, dir);
            }
            Intent::Send {
                dir,
                buffer,
                offset,
                len,
            } => {
                assert!(!self.ring.contains(&buffer), "sending from a buffer in the ring");
                let held = self.contents[buffer as usize].len() as u32;
                assert!(len > 0 && offset + len <= held, "{intent:?} past {held} bytes");
                self.start(intent, Op::Send, dir);
            }
            Intent::SpliceIn { dir, len } => {
                let pipe = self.pipes[dir].as_ref().expect("splicing into no pipe");
                assert!(pipe.is_empty(), "splicing into a pipe that holds bytes");
                assert_eq!(len, PIPE_BYTES);
                self.start(intent, Op::SpliceIn, dir);
            }
            Intent::SpliceOut { dir, len } => {
                let pipe = self.pipes[dir].as_ref().expect("splicing out of no pipe");
                assert_eq!(len as usize, pipe.len(), "splicing out what the pipe holds");
                self.start(intent, Op::SpliceOut, dir);
            }
            Intent::PollIn { dir } => self.start(intent, Op::PollIn, dir),
            Intent::PollOut { dir } => self.start(intent, Op::PollOut, dir),
            Intent::WriteRetry { dir } => self.start(intent, Op::WriteRetry, dir),
            Intent::QueueWatch => self.start(intent, Op::QueueWatch, 0),
            Intent::Cancel { .. } => self.start(intent, Op::Cancel, 0),
            Intent::Recycle { buffer } => {
                assert!(!self.ring.contains(&buffer), "buffer {buffer} given back twice");
                let in_use = self
                    .pending
                    .iter()
                    .any(|p| matches!(p.intent, Intent::Send { buffer: b, .. } if b == buffer));
                assert!(!in_use, "buffer {buffer} given back while a send reads it");
                self.contents[buffer as usize].clear();
                self.ring.push(buffer);
            }
            Intent::ReturnPipe { dir, empty } => {
                let pipe = self.pipes[dir].take().expect("returning no pipe");
                assert!(
                    !self.pending_on(Op::SpliceIn, dir) && !self.pending_on(Op::SpliceOut, dir),
                    "a pipe returned with a splice in flight"
                );
                if empty {
                    assert!(pipe.is_empty(), "a pipe holding {} bytes pooled", pipe.len());
                }
            }
            Intent::CloseBackend => {
                let on_backend = self.pending.iter().any(|p| match p.op {
                    Op::Connect => true,
                    Op::Recv | Op::PollIn | Op::SpliceIn => p.dir == TO_CLIENT,
                    Op::Send | Op::SpliceOut | Op::PollOut => p.dir == TO_BACKEND,
                    _ => false,
                });
                assert!(
                    !on_backend,
                    "backend socket closed under an op: {:?}",
                    self.pending
                );
                self.backend_socket = false;
            }
            Intent::Release { backend } => {
                assert_eq!(
                    self.backend_held.take(),
                    Some(backend),
                    "release of a backend not held"
                );
            }
            Intent::ConnectFailed { backend, .. } => {
                assert_eq!(self.backend_held, None);
                assert!(backend < POOL);
            }
            Intent::Redispatched => {}
            Intent::Connected { backend, .. } => {
                assert_eq!(self.backend_held, Some(backend));
                self.connected_backend = true;
            }
            Intent::FirstByte { .. } | Intent::Lifetime { .. } => {}
            Intent::CountBytes { dir, bytes, .. } => self.counted[dir] += u64::from(bytes),
            Intent::ParkForBuffer { dir } => assert!(self.conn.waits_for_buffer(dir)),
            Intent::LeftQueue => {
                assert!(self.queued, "left a queue it was not in");
                self.queued = false;
            }
            Intent::Refuse(_) => self.refused += 1,
            Intent::HalfClose { dir } => {
                assert!(!self.half_closed[dir]);
                assert!(self.ends[dir] && self.read[dir] == self.source[dir].len());
                assert_eq!(
                    self.delivered[dir], self.source[dir],
                    "all of {dir} before its end"
                );
                self.half_closed[dir] = true;
            }
            Intent::Abort => self.aborted = true,
            Intent::Free => {
                assert!(
                    self.pending.is_empty(),
                    "freed with ops in flight: {:?}",
                    self.pending
                );
                assert_eq!(self.ring.len(), BUFFERS as usize, "a buffer not given back");
                assert!(self.pipes.iter().all(Option::is_none), "a pipe not given back");
                assert_eq!(self.backend_held, None, "a backend not released");
                assert!(!self.queued, "freed while counted in the queue");
                self.freed = true;
            }
        }
        None
    }

    /// The machine's promises, after every step.
    fn check(&self, out: &[Intent]) {
        assert_eq!(
            self.pending.len() as u32,
            self.conn.inflight(),
            "ops in flight after {out:?}"
        );
        if self.freed {
            assert_eq!(self.conn.phase(), Phase::Freed);
            return;
        }
        for dir in [TO_BACKEND, TO_CLIENT] {
            let moving = self
                .pending
                .iter()
                .filter(|p| {
                    p.dir == dir
                        && matches!(
                            p.op,
                            Op::Recv
                                | Op::Send
                                | Op::SpliceIn
                                | Op::SpliceOut
                                | Op::PollIn
                                | Op::PollOut
                                | Op::WriteRetry
                        )
                })
                .count();
            assert!(moving <= 1, "{moving} ops at once on {dir}: {:?}", self.pending);
            let delivered = &self.delivered[dir];
            assert_eq!(delivered[..], self.source[dir][..delivered.len()], "out of order");
            assert_eq!(self.counted[dir], delivered.len() as u64, "counted once each");
            // A relaying direction that has not ended has an op in flight or waits for a buffer.
            if self.conn.phase() == Phase::Relaying {
                let state = self.conn.flow(dir).state;
                if state != FlowState::Done {
                    assert!(
                        moving == 1 || self.conn.waits_for_buffer(dir),
                        "direction {dir} ({state:?}) has nothing in flight and waits for nothing"
                    );
                }
            }
        }
        assert_eq!(
            self.ring.len() + (0..BUFFERS).filter(|b| !self.ring.contains(b)).count(),
            BUFFERS as usize
        );
        // Something must be able to happen: an op, a buffer coming back, the queue.
        let waits = self.conn.waits_for_buffer(0) || self.conn.waits_for_buffer(1);
        assert!(
            !self.pending.is_empty() || waits,
            "stalled in {:?}",
            self.conn.phase()
        );
    }

    /// Whether op `p` can end now, as the world stands.
    fn can_end(&self, p: &Pending) -> bool {
        if self.aborted || p.cancelled {
            return true;
        }
        match p.op {
            Op::Recv | Op::PollIn => self.read[p.dir] < self.source[p.dir].len() || self.ends[p.dir],
            _ => true,
        }
    }

    /// Bytes the source of `dir` can give now, up to `max`.
    fn take_source(&mut self, dir: usize, max: usize) -> Vec<u8> {
        let left = self.source[dir].len() - self.read[dir];
        let n = (1 + self.rng.below(max as u64) as usize).min(left);
        let bytes = self.source[dir][self.read[dir]..self.read[dir] + n].to_vec();
        self.read[dir] += n;
        bytes
    }

    /// Ends op number `i` with a result the world allows.
    fn end(&mut self, i: usize) {
        let p = self.pending.remove(i);
        let mut buffer = None;
        let dir = p.dir;
        let failing = self.aborted || p.cancelled;
        let result = match p.op {
            Op::Connect if p.cancelled || self.aborted => -libc::ECANCELED,
            Op::Connect => match self.rng.below(10) {
                0 => -libc::ECONNREFUSED,
                1 => -libc::ECANCELED,
                _ => {
                    self.new_backend_stream();
                    0
                }
            },
            Op::ConnectTimeout => -libc::ECANCELED,
            Op::Recv if p.cancelled => -libc::ECANCELED,
            Op::Recv => {
                let left = self.source[dir].len() - self.read[dir];
                if left > 0 && !self.aborted && self.rng.chance(95) {
                    match self.ring.pop() {
                        Some(id) => {
                            let bytes = self.take_source(dir, BUF_BYTES as usize);
                            let n = bytes.len() as i32;
                            self.contents[id as usize] = bytes;
                            buffer = Some(id);
                            n
                        }
                        None => -libc::ENOBUFS,
                    }
                } else if self.rng.chance(5) {
                    -libc::ECONNRESET
                } else if self.aborted || left == 0 {
                    0
                } else {
                    -libc::EAGAIN
                }
            }
            Op::Send => {
                let Intent::Send {
                    buffer: id,
                    offset,
                    len,
                    ..
                } = p.intent
                else {
                    unreachable!()
                };
                if failing || self.rng.chance(3) {
                    -libc::EPIPE
                } else if self.rng.chance(10) {
                    -libc::EAGAIN
                } else {
                    let n = 1 + self.rng.below(u64::from(len)) as u32;
                    let from = &self.contents[id as usize][offset as usize..(offset + n) as usize];
                    self.delivered[dir].extend_from_slice(from);
                    n as i32
                }
            }
            Op::SpliceIn => {
                let left = self.source[dir].len() - self.read[dir];
                // A splice may move bytes even after the close began.
                if left > 0 && !p.cancelled && self.rng.chance(90) {
                    let bytes = self.take_source(dir, PIPE_BYTES as usize);
                    let n = bytes.len() as i32;
                    self.pipes[dir].as_mut().expect("pipe").extend(bytes);
                    n
                } else if self.rng.chance(5) {
                    -libc::ECONNRESET
                } else if left == 0 && (self.ends[dir] || self.aborted) {
                    0
                } else {
                    -libc::EAGAIN
                }
            }
            Op::SpliceOut => {
                if failing || self.rng.chance(3) {
                    -libc::EPIPE
                } else if self.rng.chance(15) {
                    -libc::EAGAIN
                } else {
                    let pipe = self.pipes[dir].as_mut().expect("pipe");
                    let n = 1 + self.rng.below(pipe.len() as u64) as usize;
                    let bytes: Vec<u8> = pipe.drain(..n).collect();
                    self.delivered[dir].extend(bytes);
                    n as i32
                }
            }
            Op::PollIn if p.cancelled => -libc::ECANCELED,
            Op::PollIn => libc::POLLIN as i32,
            Op::PollOut => match self.rng.below(4) {
                0 => libc::POLLRDHUP as i32,
                1 if failing => libc::POLLHUP as i32,
                _ => libc::POLLOUT as i32,
            },
            Op::WriteRetry => -libc::ETIME,
            Op::QueueWatch if p.cancelled => -libc::ECANCELED,
            Op::QueueWatch => libc::POLLRDHUP as i32,
            Op::Cancel => {
                let Intent::Cancel { op, dir } = p.intent else {
                    unreachable!()
                };
                match self.pending.iter_mut().find(|q| q.op == op && q.dir == dir) {
                    Some(target) => {
                        target.cancelled = true;
                        0
                    }
                    None => -libc::ENOENT,
                }
            }
            other => unreachable!("{other:?}"),
        };
        self.step(Event::Done {
            op: p.op,
            dir,
            result,
            buffer,
        });
    }

    /// One move of the world: an op ends, a buffer comes back to a parked direction, the queue
    /// serves the client, or the connection is closed from outside.
    fn tick(&mut self) {
        self.steps += 1;
        self.now_ms += self.rng.below(3);
        for dir in [TO_BACKEND, TO_CLIENT] {
            if self.conn.waits_for_buffer(dir) && !self.ring.is_empty() && self.rng.chance(70) {
                self.step(Event::BufferBack { dir });
                return;
            }
        }
        if self.queued && self.conn.phase() == Phase::Queued && self.rng.chance(30) {
            let choice = if self.rng.chance(20) {
                None
            } else {
                match self.choose() {
                    Choice::Full => return,
                    choice => Some(choice),
                }
            };
            if let Some(Choice::Backend { index, .. }) = choice {
                self.backend_held = Some(index);
            }
            self.queued = false;
            self.step(Event::Served(choice));
            return;
        }
        if self.rng.chance(1) {
            self.step(Event::Close);
            return;
        }
        let ready: Vec<usize> = (0..self.pending.len())
            .filter(|&i| self.can_end(&self.pending[i]))
            .collect();
        if ready.is_empty() {
            // Only waits for bytes that never come: the client gives up.
            self.step(Event::Close);
            return;
        }
        let i = ready[self.rng.below(ready.len() as u64) as usize];
        self.end(i);
    }
}

#[test]
fn random_orders_of_events_and_failures_keep_every_promise() {
    let mut clean = 0;
    let mut refused = 0;
    let mut redispatched = 0;
    for seed in 1..=3000u64 {
        let mut world = World::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), seed % 4 == 0);
        let queue_first = world.rng.chance(10);
        world.step(Event::Accepted { queue_first });
        while !world.freed {
            assert!(world.steps < 5000, "seed {seed}: no end after 5000 steps");
            if world.steps == 2000 {
                world.step(Event::Close);
            }
            world.tick();
        }
        if !world.aborted {
            clean += 1;
            assert!(world.half_closed.iter().all(|&h| h), "seed {seed}: freed unended");
        }
        refused += u32::from(world.refused > 0);
        redispatched += u32::from(world.conn.tried().len() > 1);
    }
    // The walk reaches every kind of end.
    assert!(clean > 100, "{clean} clean ends");
    assert!(refused > 100, "{refused} refusals");
    assert!(redispatched > 100, "{redispatched} redispatches");
}
