//! A client connection as a pure state machine: events in ([`Event`]), intents out ([`Intent`]).
//!
//! The machine owns no socket, no ring, no clock and no shared counter. It decides; the worker
//! and its I/O driver (io_uring or epoll) execute what it decides and feed back what happened:
//! the end of every op it started (`Event::Done`), the answer to every question it asked
//! (`Event::Picked`, `Event::Enqueued`, ...), and what the worker decided for it from outside
//! (`Event::Served`, `Event::BufferBack`, `Event::Close`). Time comes in with each step
//! ([`Ctx`]). `LIFECYCLE.md` beside this file has the phases, every transition and the
//! invariants; the tests in `conn/tests.rs` drive the machine through random orders of events
//! and failures and check those invariants after every step.
//!
//! # Rules the machine keeps, and its callers rely on
//!
//! - **Ops in flight are counted here.** Every op intent adds one to `inflight`
//!   ([`Intent::Connect`] two: the connect and its timeout, which end separately), and every
//!   `Event::Done` takes one away. The connection is freed ([`Intent::Free`]) only when it is
//!   closing and nothing is in flight, so no op can outlive its sockets, buffer or pipe.
//! - **At most one op per direction** moves bytes or waits for them at any time; a direction
//!   holds at most one buffer or one pipe, and only while bytes are in it (an idle connection
//!   holds neither).
//! - **A buffer is given back once**, after the last send that reads it has ended (or at once,
//!   when it arrives with an end that carries no bytes to send). **A pipe goes back to the pool
//!   as empty only when it is**: bytes a late splice left in it make it `empty: false`, and the
//!   pool closes it.
//! - **A question is always the last intent of a step** ([`Intent::is_question`]): the caller
//!   answers it at once with the matching event, whose intents follow it.
//! - **Every backend the machine was given is released once** ([`Intent::Release`]), whatever
//!   the path: failed connect, redispatch or close.

use crate::balance::Tried;

use super::driver::Op;

/// Direction 0 moves client → backend, direction 1 backend → client.
pub const TO_BACKEND: usize = 0;
pub const TO_CLIENT: usize = 1;

/// `errno` of [`Intent::ConnectFailed`] for a backend that accepted and closed before its first
/// byte.
pub const CLOSED_BEFORE_FIRST_BYTE: i32 = 0;

/// What each step needs to know from outside: the time, read once per batch of completions,
/// and the worker's relay settings.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now_ms: u64,
    pub now_us: u64,
    /// Size of one buffer: a receive that fills one marks its direction as bulk.
    pub buf_bytes: u32,
    /// `[tuning] relay = "splice"`: wait for readability, then splice, never a buffered receive.
    pub splice_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A backend is being chosen or connected to (or the next one after a failure).
    Connecting,
    /// Every candidate backend is at its `maxconn`: waiting in the worker's queue, with only a
    /// watch for the client's hang-up in flight.
    Queued,
    /// Connected: two flows move bytes.
    Relaying,
    /// The backend went away before its first byte and the client has sent none: waiting for
    /// every op to end before the next backend is tried.
    Redispatching,
    /// Ending: freed when nothing is in flight.
    Closing,
    /// Freed ([`Intent::Free`] was given): nothing more happens.
    Freed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowState {
    /// Not started (connecting).
    Idle,
    Recv,
    Send,
    SpliceIn,
    SpliceOut,
    /// Waiting for the destination to take more bytes after a splice found it full (or for the
    /// pause after which such a write is retried).
    PollOut,
    /// Splice-only relay: waiting for the source to have bytes.
    PollIn,
    /// The buffers were all taken: parked until one comes back ([`Event::BufferBack`]).
    WaitBuffer,
    /// EOF seen and passed on as a half-close.
    Done,
}

/// A buffer a direction holds: bytes received and not yet all sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub id: u16,
    pub sent: u32,
    pub received: u32,
}

/// One direction of a connection.
#[derive(Debug, Clone)]
pub struct Flow {
    pub state: FlowState,
    pub buffer: Option<Held>,
    /// The capacity of the pipe this direction holds, while it holds one.
    pub pipe: Option<u32>,
    /// Bytes spliced into the pipe and not yet out of it.
    pub in_pipe: u32,
    /// The last read filled its buffer or pipe: more is probably waiting, keep splicing.
    pub bulk: bool,
}

impl Flow {
    const fn new() -> Flow {
        Flow {
            state: FlowState::Idle,
            buffer: None,
            pipe: None,
            in_pipe: 0,
            bulk: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Times {
    /// When the client was accepted, µs.
    accepted_us: u64,
    /// When the current connect started, µs.
    connect_us: u64,
    /// When the client's current request began (its first bytes since the last response), µs;
    /// 0 while none is outstanding.
    request_us: u64,
    /// When bytes last arrived from either side, ms; while queued, when the wait began.
    active_ms: u64,
}

/// The worker's answer to [`Intent::Pick`] (and its choice in [`Event::Served`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// This backend (global index; `position` in the listener's pool), already counted as
    /// active for this connection.
    Backend { index: usize, position: usize },
    /// Every candidate is at its `maxconn`.
    Full,
    /// No backend can take the client (none up, all tried, or its retries used up).
    None,
}

/// Why the first bytes for a fresh backend connection (the PROXY header) could not go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client's side: its addresses cannot be read (it reset meanwhile) or are not IP. The
    /// backend is not to blame.
    Client,
    /// The backend's socket refused the bytes (`errno`): a failed connect.
    Backend(i32),
}

/// Why a client gets an error packet before it is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    QueueFull,
    QueueTimeout,
    NoBackend,
    /// No backend socket could be made (`errno`).
    NoSocket(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The client was accepted; `queue_first` when others of its listener wait already.
    Accepted { queue_first: bool },
    /// Answers [`Intent::Pick`].
    Picked(Choice),
    /// Answers [`Intent::Enqueue`]: admitted, or the queue is full.
    Enqueued(bool),
    /// Answers [`Intent::OpenBackend`]: `Err(errno)` when no socket could be made.
    BackendOpened(Result<(), i32>),
    /// Answers [`Intent::Handshake`]: whatever the listener sends a new backend connection
    /// first (a PROXY header) went out whole, or why not.
    HandshakeDone(Result<(), HandshakeFailure>),
    /// Answers [`Intent::TakePipe`]: the pipe's capacity, or `None` when no pipe can be had.
    PipeTaken { dir: usize, capacity: Option<u32> },
    /// The worker took the client out of its queue: with a choice, or `None` when it waited
    /// `queue_timeout_ms`.
    Served(Option<Choice>),
    /// A buffer is back for a direction parked in `WaitBuffer`.
    BufferBack { dir: usize },
    /// Close now (idle past its timeout, or its backend lost the writer role).
    Close,
    /// An op this machine started has ended: `result` as the kernel reports it (bytes, or a
    /// negative errno); `buffer` when a receive took one.
    Done {
        op: Op,
        dir: usize,
        result: i32,
        buffer: Option<u16>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    // ---- questions: answered at once, each by its event ----
    /// Choose a backend not yet tried (→ [`Event::Picked`]).
    Pick,
    /// Put the client in the queue if there is room (→ [`Event::Enqueued`]).
    Enqueue,
    /// Make a socket for `backend` (→ [`Event::BackendOpened`]).
    OpenBackend { backend: usize },
    /// Send what goes first on a fresh backend connection (→ [`Event::HandshakeDone`]).
    Handshake,
    /// Lend a pipe to `dir` (→ [`Event::PipeTaken`]).
    TakePipe { dir: usize },

    // ---- ops: each ends with an `Event::Done` ----
    /// Connect the backend socket, bounded by a timeout: two ops, `Op::Connect` and
    /// `Op::ConnectTimeout`, each with its own end.
    Connect,
    /// Receive from `dir`'s source into a buffer taken only when bytes arrive.
    Recv { dir: usize },
    /// Send `len` bytes of `buffer` from `offset` to `dir`'s destination.
    Send {
        dir: usize,
        buffer: u16,
        offset: u32,
        len: u32,
    },
    /// Splice up to `len` bytes from `dir`'s source into its pipe.
    SpliceIn { dir: usize, len: u32 },
    /// Splice `len` bytes from `dir`'s pipe to its destination.
    SpliceOut { dir: usize, len: u32 },
    /// Wait until `dir`'s source is readable.
    PollIn { dir: usize },
    /// Wait until `dir`'s destination can take bytes.
    PollOut { dir: usize },
    /// A short pause before a write to a destination whose peer half-closed is retried.
    WriteRetry { dir: usize },
    /// Watch the queued client for a hang-up.
    QueueWatch,
    /// Cancel this connection's op `op` of `dir` (its own end follows, cancelled or not).
    Cancel { op: Op, dir: usize },

    // ---- effects ----
    /// Give buffer `buffer` back.
    Recycle { buffer: u16 },
    /// Give `dir`'s pipe back; pooled only when `empty`.
    ReturnPipe { dir: usize, empty: bool },
    /// Close the backend socket (no op refers to it any more).
    CloseBackend,
    /// Undo the acquire of `backend`: a queued client may take the slot.
    Release { backend: usize },
    /// A connect to `backend` failed (`errno`; [`CLOSED_BEFORE_FIRST_BYTE`] for a backend that
    /// closed before its first byte): count it, mark the backend suspect.
    ConnectFailed { backend: usize, errno: i32 },
    /// A connect to another backend than the first one tried is about to start.
    Redispatched,
    /// The backend accepted after `took_us`.
    Connected { backend: usize, took_us: u64 },
    /// The backend's first byte of a response came `took_us` after the request's.
    FirstByte { backend: usize, took_us: u64 },
    /// `bytes` reached `dir`'s destination.
    CountBytes { backend: usize, dir: usize, bytes: u32 },
    /// `dir` waits for a buffer: wake it with [`Event::BufferBack`] once one is back.
    ParkForBuffer { dir: usize },
    /// The client left the queue other than by being served (it hung up, or was closed).
    LeftQueue,
    /// Send the client an error packet (the close follows).
    Refuse(Refusal),
    /// `dir`'s source ended: pass the end on (`shutdown(SHUT_WR)` of its destination).
    HalfClose { dir: usize },
    /// Close both sides at once: the backend with a reset, both sockets shut down, which ends
    /// every op still in flight on them.
    Abort,
    /// The connection to `backend` lived `took_us` from the accept.
    Lifetime { backend: usize, took_us: u64 },
    /// Free the connection: nothing is in flight, every buffer, pipe and backend is back.
    Free,
}

impl Intent {
    /// Whether the caller must answer this intent with an event before anything else.
    pub fn is_question(&self) -> bool {
        matches!(
            self,
            Intent::Pick
                | Intent::Enqueue
                | Intent::OpenBackend { .. }
                | Intent::Handshake
                | Intent::TakePipe { .. }
        )
    }
}

/// One client connection's state.
#[derive(Debug, Clone)]
pub struct Conn {
    phase: Phase,
    flows: [Flow; 2],
    /// Ops started and not yet ended; see the module's rules.
    inflight: u32,
    /// Global index of the backend this connection counts against, while it does.
    backend: Option<usize>,
    /// Pool positions already tried (a redispatch never retries one); its size is the number of
    /// connects made, which the worker bounds by `retries` when it picks.
    tried: Tried,
    /// The backend accepted the connection (its lifetime is recorded at close).
    connected: bool,
    /// A byte has arrived from either side (or, while redispatching, the client's end): from
    /// then on the client is tied to its backend, and the backend going away ends the
    /// connection.
    bytes_seen: bool,
    times: Times,
}

impl Default for Conn {
    fn default() -> Self {
        Conn::new()
    }
}

impl Conn {
    pub const fn new() -> Conn {
        Conn {
            phase: Phase::Connecting,
            flows: [Flow::new(), Flow::new()],
            inflight: 0,
            backend: None,
            tried: Tried::new(),
            connected: false,
            bytes_seen: false,
            times: Times {
                accepted_us: 0,
                connect_us: 0,
                request_us: 0,
                active_ms: 0,
            },
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// The backend this connection holds a count of, if any.
    pub fn backend(&self) -> Option<usize> {
        self.backend
    }

    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    pub fn flow(&self, dir: usize) -> &Flow {
        &self.flows[dir]
    }

    /// When bytes last arrived (ms), while relaying; the idle sweep's measure.
    pub fn relaying_since_ms(&self) -> Option<u64> {
        (self.phase == Phase::Relaying).then_some(self.times.active_ms)
    }

    /// When the client began waiting in the queue (ms), while it does.
    pub fn queued_since_ms(&self) -> Option<u64> {
        (self.phase == Phase::Queued).then_some(self.times.active_ms)
    }

    /// Whether `dir` is parked for a buffer, so that [`Event::BufferBack`] would re-arm it.
    pub fn waits_for_buffer(&self, dir: usize) -> bool {
        self.phase == Phase::Relaying && self.flows[dir].state == FlowState::WaitBuffer
    }

    /// Applies `event`, appending what to do to `out`.
    pub fn step(&mut self, ctx: &Ctx, event: Event, out: &mut Vec<Intent>) {
        if self.phase == Phase::Freed {
            // Nothing can reach a freed connection (its slot is gone); a buffer handed in with
            // an event still goes back.
            if let Event::Done { buffer: Some(id), .. } = event {
                out.push(Intent::Recycle { buffer: id });
            }
            return;
        }
        match event {
            Event::Accepted { queue_first } => {
                self.times.accepted_us = ctx.now_us;
                self.times.active_ms = ctx.now_ms;
                out.push(if queue_first {
                    Intent::Enqueue
                } else {
                    Intent::Pick
                });
            }
            Event::Picked(choice) => self.picked(ctx, choice, out),
            Event::Enqueued(true) => {
                self.phase = Phase::Queued;
                self.times.active_ms = ctx.now_ms;
                self.start(Intent::QueueWatch, out);
            }
            Event::Enqueued(false) => self.refuse(ctx, Refusal::QueueFull, out),
            Event::BackendOpened(Ok(())) => {
                self.times.connect_us = ctx.now_us;
                self.inflight += 2;
                out.push(Intent::Connect);
            }
            Event::BackendOpened(Err(errno)) => {
                // A local failure (descriptors or memory), not the backend's: no suspect mark,
                // no other backend.
                if let Some(backend) = self.backend.take() {
                    out.push(Intent::Release { backend });
                }
                self.refuse(ctx, Refusal::NoSocket(errno), out);
            }
            Event::HandshakeDone(Ok(())) => self.relay(ctx, out),
            // The backend went away as it accepted: a failed connect like any other.
            Event::HandshakeDone(Err(HandshakeFailure::Backend(errno))) => self.connect_failed(errno, out),
            // The client is gone (or cannot be described): it ends, the backend is not marked.
            Event::HandshakeDone(Err(HandshakeFailure::Client)) => self.abort(ctx, out),
            Event::PipeTaken { dir, capacity } => match capacity {
                Some(capacity) => {
                    let flow = &mut self.flows[dir];
                    flow.pipe = Some(capacity);
                    flow.in_pipe = 0;
                    self.splice_in(dir, out);
                }
                // No pipe to be had (descriptor or pipe-memory limits): stay buffered.
                None => self.recv(dir, out),
            },
            Event::Served(choice) => {
                if self.phase != Phase::Queued {
                    return;
                }
                self.phase = Phase::Connecting;
                // The watch ends, cancelled or fired, while the connection goes on; its end is
                // ignored once out of the queue.
                self.start(
                    Intent::Cancel {
                        op: Op::QueueWatch,
                        dir: 0,
                    },
                    out,
                );
                match choice {
                    Some(choice) => self.picked(ctx, choice, out),
                    None => self.refuse(ctx, Refusal::QueueTimeout, out),
                }
            }
            Event::BufferBack { dir } => {
                if self.waits_for_buffer(dir) {
                    self.recv(dir, out);
                }
            }
            Event::Close => self.abort(ctx, out),
            Event::Done {
                op,
                dir,
                result,
                buffer,
            } => self.done(ctx, op, dir, result, buffer, out),
        }
    }

    /// Starts an op: counted in flight.
    fn start(&mut self, intent: Intent, out: &mut Vec<Intent>) {
        self.inflight += 1;
        out.push(intent);
    }

    fn picked(&mut self, ctx: &Ctx, choice: Choice, out: &mut Vec<Intent>) {
        match choice {
            Choice::Backend { index, position } => {
                if !self.tried.is_empty() {
                    out.push(Intent::Redispatched);
                }
                self.tried.insert(position);
                self.backend = Some(index);
                out.push(Intent::OpenBackend { backend: index });
            }
            Choice::Full => out.push(Intent::Enqueue),
            Choice::None => self.refuse(ctx, Refusal::NoBackend, out),
        }
    }

    fn refuse(&mut self, ctx: &Ctx, why: Refusal, out: &mut Vec<Intent>) {
        out.push(Intent::Refuse(why));
        self.abort(ctx, out);
    }

    fn done(
        &mut self,
        ctx: &Ctx,
        op: Op,
        dir: usize,
        result: i32,
        buffer: Option<u16>,
        out: &mut Vec<Intent>,
    ) {
        self.inflight -= 1;
        match self.phase {
            Phase::Closing => {
                // Every end only brings the release nearer. A receive may still have taken a
                // buffer, which goes straight back; a splice may still have filled its pipe,
                // which then must not go back to the pool as empty.
                if op == Op::SpliceIn && result > 0 {
                    let flow = &mut self.flows[dir];
                    flow.in_pipe = flow.in_pipe.saturating_add(result as u32);
                }
                if let Some(id) = buffer {
                    out.push(Intent::Recycle { buffer: id });
                }
                self.finish_if_done(ctx, out);
                return;
            }
            Phase::Redispatching => {
                // The client's read ended before its cancel: bytes taken (or waiting: ENOBUFS),
                // its EOF, its reset (or, relaying by splice, its socket turning readable) mean
                // it can no longer move on unnoticed; nothing taken (cancelled) changes nothing.
                let client_acted = match op {
                    Op::Recv => {
                        result >= 0 || !matches!(-result, libc::ECANCELED | libc::EAGAIN | libc::EINTR)
                    }
                    Op::PollIn => result > 0,
                    _ => false,
                };
                if client_acted {
                    self.bytes_seen = true;
                }
                if let Some(id) = buffer {
                    out.push(Intent::Recycle { buffer: id });
                }
                self.redispatch_if_done(ctx, out);
                return;
            }
            _ => {}
        }
        match op {
            Op::Connect => self.on_connect(result, out),
            Op::Recv => self.on_recv(ctx, dir, result, buffer, out),
            Op::Send => self.on_send(ctx, dir, result, out),
            Op::SpliceIn => self.on_splice_in(ctx, dir, result, out),
            Op::SpliceOut => self.on_splice_out(ctx, dir, result, out),
            Op::PollOut => self.on_poll_out(ctx, dir, result, out),
            Op::PollIn => self.on_poll_in(ctx, dir, result, out),
            Op::QueueWatch => {
                // Once out of the queue its end means nothing: the relay sees the client's own
                // end, half-closes included.
                if self.phase == Phase::Queued && result != -libc::ECANCELED {
                    self.abort(ctx, out);
                }
            }
            Op::WriteRetry => self.splice_out(dir, out),
            // Its work is done by the end of the op it cancelled (a connect's timeout by the
            // connect's).
            Op::Cancel | Op::ConnectTimeout => {}
            Op::Accept | Op::AcceptRetry | Op::Wake | Op::Tick | Op::QueueTick => {
                debug_assert!(false, "a worker op ended as a connection's");
            }
        }
        if let (Some(id), false) = (buffer, op == Op::Recv) {
            out.push(Intent::Recycle { buffer: id });
        }
    }

    fn on_connect(&mut self, result: i32, out: &mut Vec<Intent>) {
        let Some(backend) = self.backend else {
            debug_assert!(false, "a connect ended with no backend");
            return;
        };
        if result < 0 {
            // The timeout cancels the connect: ECANCELED means it timed out.
            let errno = if -result == libc::ECANCELED {
                libc::ETIMEDOUT
            } else {
                -result
            };
            self.connect_failed(errno, out);
            return;
        }
        debug_assert_eq!(self.backend, Some(backend));
        out.push(Intent::Handshake);
    }

    /// The connect to the backend held failed (`errno`): its socket closes (only the connect's
    /// timeout, which names no socket, may still be in flight), it is released and marked, and
    /// the next backend is tried.
    fn connect_failed(&mut self, errno: i32, out: &mut Vec<Intent>) {
        let Some(backend) = self.backend.take() else {
            debug_assert!(false, "a connect failed with no backend");
            return;
        };
        out.push(Intent::CloseBackend);
        out.push(Intent::Release { backend });
        out.push(Intent::ConnectFailed { backend, errno });
        out.push(Intent::Pick);
    }

    /// The backend is connected and has what goes first: relay both ways.
    fn relay(&mut self, ctx: &Ctx, out: &mut Vec<Intent>) {
        let Some(backend) = self.backend else {
            debug_assert!(false, "relaying with no backend");
            return;
        };
        self.phase = Phase::Relaying;
        self.connected = true;
        // Idle from here on, not from the accept or a wait in the queue.
        self.times.active_ms = ctx.now_ms;
        let took_us = ctx.now_us.saturating_sub(self.times.connect_us);
        out.push(Intent::Connected { backend, took_us });
        self.wait_readable(ctx, TO_BACKEND, out);
        self.wait_readable(ctx, TO_CLIENT, out);
    }

    /// Waits for the source of `dir` to have bytes, holding no buffer or pipe meanwhile.
    fn wait_readable(&mut self, ctx: &Ctx, dir: usize, out: &mut Vec<Intent>) {
        if ctx.splice_only {
            self.flows[dir].state = FlowState::PollIn;
            self.start(Intent::PollIn { dir }, out);
        } else {
            self.recv(dir, out);
        }
    }

    fn recv(&mut self, dir: usize, out: &mut Vec<Intent>) {
        self.flows[dir].state = FlowState::Recv;
        self.start(Intent::Recv { dir }, out);
    }

    /// Bytes arrived in `dir`: keeps the idle clock and the request → first-byte clock.
    fn saw_bytes(&mut self, ctx: &Ctx, dir: usize, out: &mut Vec<Intent>) {
        self.times.active_ms = ctx.now_ms;
        self.bytes_seen = true;
        if dir == TO_BACKEND {
            if self.times.request_us == 0 {
                self.times.request_us = ctx.now_us.max(1);
            }
        } else if self.times.request_us != 0 {
            let took_us = ctx.now_us.saturating_sub(self.times.request_us);
            self.times.request_us = 0;
            if let Some(backend) = self.backend {
                out.push(Intent::FirstByte { backend, took_us });
            }
        }
    }

    fn on_recv(&mut self, ctx: &Ctx, dir: usize, result: i32, buffer: Option<u16>, out: &mut Vec<Intent>) {
        if result > 0 {
            let Some(id) = buffer else {
                // Bytes with no buffer: the driver broke its word; end the connection.
                self.abort(ctx, out);
                return;
            };
            self.saw_bytes(ctx, dir, out);
            let flow = &mut self.flows[dir];
            flow.buffer = Some(Held {
                id,
                sent: 0,
                received: result as u32,
            });
            flow.bulk = result as u32 == ctx.buf_bytes;
            self.send(dir, out);
            return;
        }
        if let Some(id) = buffer {
            out.push(Intent::Recycle { buffer: id });
        }
        match -result {
            0 => self.end_of_stream(ctx, dir, out),
            libc::ENOBUFS => {
                self.flows[dir].state = FlowState::WaitBuffer;
                out.push(Intent::ParkForBuffer { dir });
            }
            libc::EAGAIN | libc::EINTR => self.recv(dir, out),
            errno => self.read_failed(ctx, dir, errno, out),
        }
    }

    fn send(&mut self, dir: usize, out: &mut Vec<Intent>) {
        let flow = &mut self.flows[dir];
        let Some(held) = flow.buffer else {
            debug_assert!(false, "a send with no buffer");
            return;
        };
        flow.state = FlowState::Send;
        self.start(
            Intent::Send {
                dir,
                buffer: held.id,
                offset: held.sent,
                len: held.received - held.sent,
            },
            out,
        );
    }

    fn on_send(&mut self, ctx: &Ctx, dir: usize, result: i32, out: &mut Vec<Intent>) {
        if result < 0 && matches!(-result, libc::EAGAIN | libc::EINTR) {
            self.send(dir, out);
            return;
        }
        // An error, or a send that moved nothing (it would only be retried forever).
        let (Some(backend), Some(held), true) = (self.backend, self.flows[dir].buffer, result > 0) else {
            self.abort(ctx, out);
            return;
        };
        let bytes = (result as u32).min(held.received - held.sent);
        out.push(Intent::CountBytes { backend, dir, bytes });
        let sent = held.sent + bytes;
        let flow = &mut self.flows[dir];
        if sent < held.received {
            flow.buffer = Some(Held { sent, ..held });
            self.send(dir, out);
            return;
        }
        flow.buffer = None;
        out.push(Intent::Recycle { buffer: held.id });
        if flow.bulk {
            self.splice_in(dir, out);
        } else {
            self.recv(dir, out);
        }
    }

    fn splice_in(&mut self, dir: usize, out: &mut Vec<Intent>) {
        let flow = &mut self.flows[dir];
        let Some(capacity) = flow.pipe else {
            out.push(Intent::TakePipe { dir });
            return;
        };
        flow.state = FlowState::SpliceIn;
        self.start(Intent::SpliceIn { dir, len: capacity }, out);
    }

    fn on_splice_in(&mut self, ctx: &Ctx, dir: usize, result: i32, out: &mut Vec<Intent>) {
        match result {
            n if n > 0 => {
                self.saw_bytes(ctx, dir, out);
                let flow = &mut self.flows[dir];
                flow.in_pipe = n as u32;
                flow.bulk = Some(n as u32) == flow.pipe;
                self.splice_out(dir, out);
            }
            0 => {
                self.return_pipe(dir, out);
                self.end_of_stream(ctx, dir, out);
            }
            _ if matches!(-result, libc::EAGAIN | libc::EINTR) => {
                // Drained: back to waiting, holding no pipe.
                self.return_pipe(dir, out);
                self.wait_readable(ctx, dir, out);
            }
            _ => self.read_failed(ctx, dir, -result, out),
        }
    }

    fn splice_out(&mut self, dir: usize, out: &mut Vec<Intent>) {
        let flow = &mut self.flows[dir];
        flow.state = FlowState::SpliceOut;
        let len = flow.in_pipe;
        self.start(Intent::SpliceOut { dir, len }, out);
    }

    fn on_splice_out(&mut self, ctx: &Ctx, dir: usize, result: i32, out: &mut Vec<Intent>) {
        if result > 0 {
            let Some(backend) = self.backend else {
                self.abort(ctx, out);
                return;
            };
            let flow = &mut self.flows[dir];
            let bytes = (result as u32).min(flow.in_pipe);
            flow.in_pipe -= bytes;
            out.push(Intent::CountBytes { backend, dir, bytes });
            let flow = &self.flows[dir];
            if flow.in_pipe > 0 {
                self.splice_out(dir, out);
            } else if flow.bulk {
                self.splice_in(dir, out);
            } else {
                self.return_pipe(dir, out);
                self.wait_readable(ctx, dir, out);
            }
        } else if matches!(-result, libc::EAGAIN | libc::EINTR) {
            // The destination is full: wait until it can take more (backpressure).
            self.flows[dir].state = FlowState::PollOut;
            self.start(Intent::PollOut { dir }, out);
        } else {
            self.abort(ctx, out);
        }
    }

    fn on_poll_out(&mut self, ctx: &Ctx, dir: usize, result: i32, out: &mut Vec<Intent>) {
        const ERROR_OR_HANG_UP: i32 = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as i32;
        if result < 0 && !matches!(-result, libc::EINTR | libc::EAGAIN) {
            self.abort(ctx, out);
        } else if result > 0 && result & ERROR_OR_HANG_UP == 0 {
            // Only POLLRDHUP: the destination's peer has half-closed, which an io_uring poll
            // reports at once and for good while the window is still full. Retrying now would
            // spin; a short pause bounds the cost of such a slow reader.
            self.start(Intent::WriteRetry { dir }, out);
        } else {
            // Writable, or an error the next splice will report.
            self.splice_out(dir, out);
        }
    }

    fn on_poll_in(&mut self, ctx: &Ctx, dir: usize, result: i32, out: &mut Vec<Intent>) {
        if result < 0 && !matches!(-result, libc::EINTR | libc::EAGAIN) {
            self.read_failed(ctx, dir, -result, out);
        } else {
            // Readable, at EOF, or an error the splice will report.
            self.splice_in(dir, out);
        }
    }

    fn return_pipe(&mut self, dir: usize, out: &mut Vec<Intent>) {
        let flow = &mut self.flows[dir];
        if flow.pipe.take().is_some() {
            out.push(Intent::ReturnPipe {
                dir,
                empty: flow.in_pipe == 0,
            });
            flow.in_pipe = 0;
        }
    }

    /// EOF from the source: pass it on as a half-close, and close when both directions are done.
    fn end_of_stream(&mut self, ctx: &Ctx, dir: usize, out: &mut Vec<Intent>) {
        if dir == TO_CLIENT && self.redispatch_before_first_byte(ctx, CLOSED_BEFORE_FIRST_BYTE, out) {
            return;
        }
        self.flows[dir].state = FlowState::Done;
        out.push(Intent::HalfClose { dir });
        if self.flows.iter().all(|f| f.state == FlowState::Done) {
            self.phase = Phase::Closing;
            self.finish_if_done(ctx, out);
        }
    }

    /// Reading the source of `dir` failed (`errno`): the connection ends, unless it is the
    /// backend failing before its first byte, which is redispatched instead.
    fn read_failed(&mut self, ctx: &Ctx, dir: usize, errno: i32, out: &mut Vec<Intent>) {
        if dir == TO_CLIENT && self.redispatch_before_first_byte(ctx, errno, out) {
            return;
        }
        self.abort(ctx, out);
    }

    /// The backend ended the connection (`errno`) before its first byte: when the client has
    /// sent nothing either, gives this one up as a failed connect and moves the client on
    /// (`Phase::Redispatching`): to the next backend, to the queue when the others are at
    /// their maxconn, or to its end when none is left. Returns whether it did.
    fn redispatch_before_first_byte(&mut self, ctx: &Ctx, errno: i32, out: &mut Vec<Intent>) -> bool {
        if self.phase != Phase::Relaying || self.bytes_seen {
            return false;
        }
        // The client's direction may only be waiting for the client, holding nothing and with
        // no op on the backend socket: a read or poll of the client, or nothing at all.
        let pending = match self.flows[TO_BACKEND].state {
            FlowState::Recv => Some(Op::Recv),
            FlowState::PollIn => Some(Op::PollIn),
            FlowState::Idle | FlowState::WaitBuffer => None,
            _ => return false,
        };
        let Some(backend) = self.backend.take() else {
            return false;
        };
        self.return_pipe(TO_CLIENT, out);
        self.phase = Phase::Redispatching;
        self.connected = false;
        // No op refers to the backend socket any more: the backend's direction has just ended
        // its last one, and the client's waits on the client.
        out.push(Intent::CloseBackend);
        out.push(Intent::Release { backend });
        out.push(Intent::ConnectFailed { backend, errno });
        if let Some(op) = pending {
            self.start(Intent::Cancel { op, dir: TO_BACKEND }, out);
        }
        self.redispatch_if_done(ctx, out);
        true
    }

    /// Once nothing of a redispatching connection is in flight: the next backend, or the end
    /// when the client sent something (or left) meanwhile.
    fn redispatch_if_done(&mut self, ctx: &Ctx, out: &mut Vec<Intent>) {
        if self.phase != Phase::Redispatching || self.inflight > 0 {
            return;
        }
        if self.bytes_seen {
            self.abort(ctx, out);
            return;
        }
        self.flows = [Flow::new(), Flow::new()];
        self.phase = Phase::Connecting;
        out.push(Intent::Pick);
    }

    /// Closes both sides at once; the connection is freed when the last op has ended.
    fn abort(&mut self, ctx: &Ctx, out: &mut Vec<Intent>) {
        if matches!(self.phase, Phase::Closing | Phase::Freed) {
            return;
        }
        if self.phase == Phase::Queued {
            // Leaving the queue other than by being served: the worker's count of queued
            // clients drops here (its entry is skipped later).
            out.push(Intent::LeftQueue);
        }
        self.phase = Phase::Closing;
        out.push(Intent::Abort);
        self.finish_if_done(ctx, out);
    }

    fn finish_if_done(&mut self, ctx: &Ctx, out: &mut Vec<Intent>) {
        if self.phase != Phase::Closing || self.inflight > 0 {
            return;
        }
        for dir in [TO_BACKEND, TO_CLIENT] {
            if let Some(held) = self.flows[dir].buffer.take() {
                out.push(Intent::Recycle { buffer: held.id });
            }
            self.return_pipe(dir, out);
        }
        if let Some(backend) = self.backend.take() {
            if self.connected {
                let took_us = ctx.now_us.saturating_sub(self.times.accepted_us);
                out.push(Intent::Lifetime { backend, took_us });
            }
            out.push(Intent::Release { backend });
        }
        self.phase = Phase::Freed;
        out.push(Intent::Free);
    }
}

#[cfg(test)]
mod tests;
