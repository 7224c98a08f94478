//! One worker: a pinned thread with its own io_uring, its own SO_REUSEPORT listeners and every
//! connection it accepted. Connections never leave their worker, so nothing here is shared but
//! the backend table's atomics and this worker's own counters.
//!
//! # A connection's life
//!
//! 1. Multishot accept completes → pick a backend by least connections ([`crate::balance::Backends::acquire`]).
//! 2. Connect through the ring, linked to a timeout. Refused or timed out → count the error, mark
//!    the backend suspect and try the next backend at once (redispatch), never one this client
//!    has tried, at most `retries` times; then, or when no backend is left, the client gets MySQL
//!    error 1040 "no backend available" and is closed.
//! 3. Relay each direction (`Flow`) independently until both have seen EOF:
//!    - buffered: a recv that selects a buffer from the provided-buffer ring only when data
//!      arrives (poll first, so waiting costs no buffer), then a send of exactly those bytes;
//!    - bulk: when a recv fills its whole buffer, the direction switches to splice
//!      (socket → pooled pipe → socket, zero copy) until a splice finds the socket drained, then
//!      it gives the pipe back and returns to the buffered recv.
//!
//!    One buffer or one pipe per direction at most is ever in flight, so a slow reader stalls its
//!    writer instead of making ringlb buffer (backpressure), and an idle connection holds neither.
//! 4. EOF on one side → `shutdown(SHUT_WR)` on the other while the other direction keeps flowing.
//!    An error on either side → `shutdown(SHUT_RDWR)` on both, which completes every op still in
//!    flight; the connection is freed when the last completion arrives.
//!
//!    Except while no byte has moved either way: a backend that closes or resets then (a MariaDB
//!    server being stopped does so with the connections in its listen queue) counts as a failed
//!    connect, and the client, which has seen nothing, goes to the next backend
//!    (`Phase::Redispatching`: its pending read is cancelled first, so that no op is left on it).
//!
//! # Queue, timeouts, reload
//!
//! A backend at its `maxconn` takes no new connection; when every backend that could take one is
//! full, the client waits in this worker's queue (`Phase::Queued`, with only a poll for its
//! hang-up in flight, so that a client that leaves is dropped from the queue at once) until a
//! slot frees — on this worker, or on another, which then wakes this one through its eventfd — or
//! until `queue_timeout_ms`, when it gets a MySQL "Too many connections" error and is closed.
//! A periodic tick, armed only while there are connections, closes those idle past
//! `idle_timeout_ms` and expires queued clients.
//!
//! A reload arrives as [`Control`] messages with the new backend table (held aside, then applied
//! once every worker holds it: all workers switch or none does): listeners that stay
//! keep their sockets, removed ones stop accepting, added ones arrive as sockets bound by the
//! main thread. Each connection holds the table it was opened under ([`Epoch`]) until it
//! closes, so established connections never notice a reload.
//!
//! # Ownership invariant
//!
//! Every op in flight is counted in its connection's `inflight`, by the one function that submits
//! a connection's ops (`Worker::submit`), which also tags it with the connection's generation.
//! A connection's slot, sockets, buffer and pipes are released only when it is closing and
//! `inflight` is zero, so no completion can ever refer to a reused slot or a closed descriptor,
//! and no op can write into memory that has been handed to someone else. A completion that
//! matches no op in flight (another generation, a free slot, one more than was submitted) would
//! be a bug: it is counted and logged in every build and changes nothing.
//!
//! Buffers: a recv that finds the ring empty parks its direction (`FlowState::WaitBuffer`); after
//! each batch of completions, parked directions are re-armed, oldest first, one per buffer back
//! in the ring, so a buffer returned anywhere in the batch wakes a direction parked anywhere in it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::bufring::BufRing;
use super::pipes::{Pipe, PipePool};
use super::WorkerConfig;
use crate::balance::{Backends, Pick, Tried};
use crate::clock;
use crate::config::{OnWriterChange, RelayMode};
use crate::stats::{BackendTraffic, Shared};

/// `IORING_RECVSEND_POLL_FIRST`: arm poll before trying, since a fresh recv usually finds no data.
const RECVSEND_POLL_FIRST: u16 = 1;
/// Buffer group id of the ring.
const BUFFER_GROUP: u16 = 0;
/// A backend whose connect failed is skipped by new connections for this long, or until its
/// health check brings it up again.
const SUSPECT_MS: u64 = 2000;
/// While another backend could take the connection, a connect gets at most this long before it
/// is given up for the next backend: on a LAN a handshake takes well under a millisecond, and a
/// lost SYN is not retransmitted for a second, so a client must not wait out the whole connect
/// timeout on a backend that died without a word (its link cut, its box powered off).
const REDISPATCH_AFTER_MS: u64 = 250;
/// Accept is re-armed after this delay when it failed for lack of descriptors or memory.
const ACCEPT_RETRY_MS: u64 = 100;
/// At most one warning per backend per this interval about failed connects, and one per worker
/// about failed accepts.
const WARN_INTERVAL_MS: u64 = 1000;
/// A write to a peer that has half-closed and whose window is full is retried after this pause:
/// a poll cannot wait for room there (see `on_poll_out`). At most 100 tries a second for such a
/// connection, each a few microseconds.
const WRITE_RETRY_MS: u64 = 10;
/// Tick while clients wait in the queue: the precision of `queue_timeout_ms`.
const QUEUE_TICK_MS: u64 = 20;
/// Bounds of the idle-sweep tick (a quarter of the shortest `idle_timeout_ms`).
const IDLE_TICK_MIN_MS: u64 = 20;
const IDLE_TICK_MAX_MS: u64 = 1000;
/// MySQL's ER_CON_COUNT_ERROR: what a client gets when its queue wait is refused.
const ER_CON_COUNT_ERROR: u16 = 1040;

/// A worker's sockets for a reload's new listeners, by listener name.
pub type NewSockets = Vec<(String, socket2::Socket)>;

/// What the main thread tells a worker. A reload comes in two steps, so that it is all or
/// nothing across workers ([`crate::reload`]): every worker first holds the new table aside and
/// answers, and only once all have answered does each switch to it.
pub enum Control {
    /// Hold `table` and `add` (this worker's sockets for new listeners, by listener name) aside,
    /// replacing anything held before, and answer on `done` with this worker's id. Nothing
    /// changes yet.
    Prepare {
        table: Arc<Backends>,
        add: NewSockets,
        done: Sender<usize>,
    },
    /// Use what was prepared for new connections from now on; answer once applied.
    Commit { done: Sender<usize> },
    /// Drop what was prepared (its sockets close): the reload did not reach every worker.
    Abort,
}

/// What an op was for; packed with the connection index into `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Accept = 0,
    AcceptRetry = 1,
    Connect = 2,
    ConnectTimeout = 3,
    Recv = 4,
    Send = 5,
    SpliceIn = 6,
    SpliceOut = 7,
    PollOut = 8,
    PollIn = 9,
    Wake = 10,
    Tick = 11,
    /// Cancels an op of the connection: the client's pending read in `Phase::Redispatching`,
    /// or the hang-up watch of a client leaving the queue.
    Cancel = 12,
    QueueTick = 13,
    /// Watches a queued client for a hang-up (it has no other op in flight meanwhile).
    QueueWatch = 14,
    /// A pause before retrying a write to a half-closed peer whose window is full.
    WriteRetry = 15,
}

impl Op {
    fn from_u8(value: u8) -> Option<Op> {
        Some(match value {
            0 => Op::Accept,
            1 => Op::AcceptRetry,
            2 => Op::Connect,
            3 => Op::ConnectTimeout,
            4 => Op::Recv,
            5 => Op::Send,
            6 => Op::SpliceIn,
            7 => Op::SpliceOut,
            8 => Op::PollOut,
            9 => Op::PollIn,
            10 => Op::Wake,
            11 => Op::Tick,
            12 => Op::Cancel,
            13 => Op::QueueTick,
            14 => Op::QueueWatch,
            15 => Op::WriteRetry,
            _ => return None,
        })
    }
}

/// `user_data` layout: generation (32 bits) | index (24) | op (7) | direction (1). The index is
/// a listener slot or a connection slot; the generation tells a connection from an earlier one
/// in the same slot (0 for ops that belong to no connection), so a completion that arrives for a
/// slot reused since is recognised instead of being taken for the new occupant's.
fn token(index: usize, generation: u32, op: Op, dir: usize) -> u64 {
    (u64::from(generation) << 32) | ((index as u64) << 8) | ((op as u64) << 1) | dir as u64
}

fn untoken(user_data: u64) -> (usize, u32, Option<Op>, usize) {
    (
        ((user_data >> 8) & MAX_INDEX as u64) as usize,
        (user_data >> 32) as u32,
        Op::from_u8(((user_data >> 1) & 0x7f) as u8),
        (user_data & 1) as usize,
    )
}

/// The largest slot index a token holds (24 bits): far more connections than descriptors.
const MAX_INDEX: usize = (1 << 24) - 1;

/// Direction 0 moves client → backend, direction 1 backend → client.
const TO_BACKEND: usize = 0;
const TO_CLIENT: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// Not started (connecting).
    Idle,
    Recv,
    Send,
    SpliceIn,
    SpliceOut,
    /// Waiting for the destination to take more bytes after a splice found it full.
    PollOut,
    /// Splice-only relay: waiting for the source to have bytes.
    PollIn,
    /// The buffer ring was empty: parked until a buffer comes back.
    WaitBuffer,
    /// EOF seen and passed on as `shutdown(SHUT_WR)`.
    Done,
}

/// One direction of a connection.
#[derive(Debug)]
struct Flow {
    state: FlowState,
    /// Buffer holding received bytes not yet fully sent: (id, sent, received).
    buffer: Option<(u16, u32, u32)>,
    /// Pipe lent while this direction is in bulk mode.
    pipe: Option<Pipe>,
    pipe_capacity: u32,
    /// Bytes spliced into the pipe and not yet out of it.
    in_pipe: u32,
    /// The last read filled its buffer or pipe: more is probably waiting, keep splicing.
    bulk: bool,
}

impl Flow {
    fn new() -> Flow {
        Flow {
            state: FlowState::Idle,
            buffer: None,
            pipe: None,
            pipe_capacity: 0,
            in_pipe: 0,
            bulk: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a backend under its `maxconn`; nothing in flight but a watch for the client
    /// hanging up (`Op::QueueWatch`), cancelled when it leaves the queue.
    Queued,
    Connecting,
    Relaying,
    /// The backend went away before its first byte, and the client has sent none: the old
    /// backend socket is closed, the client's pending read is being cancelled, and when nothing
    /// is left in flight the next backend is tried.
    Redispatching,
    Closing,
}

/// One backend table as this worker uses it: the shared table plus what the ring needs at stable
/// addresses. Connections hold the epoch they were opened under (an `Rc`: no atomics).
struct Epoch {
    table: Arc<Backends>,
    /// Backend addresses, by backend index, for CONNECT.
    addrs: Box<[SockAddr]>,
    /// Per listener: the configured connect timeout, for when no other backend is left to try,
    /// and the shorter redispatch one while there is.
    connect_timeouts: Box<[types::Timespec]>,
    redispatch_timeouts: Box<[types::Timespec]>,
    /// Last connect-failure warning per backend, ms.
    last_warning_ms: Box<[Cell<u64>]>,
    /// Idle-sweep tick, ms; 0 when no listener has an idle timeout.
    idle_tick_ms: u64,
}

impl Epoch {
    fn new(table: Arc<Backends>) -> Epoch {
        let listeners = &table.listeners;
        let idle_tick_ms = listeners
            .iter()
            .map(|l| l.config.idle_timeout_ms)
            .filter(|&ms| ms > 0)
            .min()
            .map_or(0, |ms| (ms / 4).clamp(IDLE_TICK_MIN_MS, IDLE_TICK_MAX_MS));
        Epoch {
            addrs: table.all.iter().map(|b| SockAddr::from(b.addr)).collect(),
            connect_timeouts: listeners
                .iter()
                .map(|l| timespec_ms(l.config.connect_timeout_ms))
                .collect(),
            redispatch_timeouts: listeners
                .iter()
                .map(|l| timespec_ms(l.config.connect_timeout_ms.min(REDISPATCH_AFTER_MS)))
                .collect(),
            last_warning_ms: table.all.iter().map(|_| Cell::new(0)).collect(),
            idle_tick_ms,
            table,
        }
    }
}

/// One listening socket of this worker. The slot index is the accept's token.
struct Slot {
    socket: Socket,
    name: String,
    bind: SocketAddr,
    /// Index of its listener in the current epoch's table.
    listener: usize,
    /// Removed by a reload: its accept was ended, and the slot is freed at its last completion.
    closing: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Times {
    /// When the client was accepted, µs ([`clock::now_us`]).
    accepted_us: u64,
    /// When the current connect started, µs.
    connect_us: u64,
    /// When the client's current request began (its first bytes since the last response), µs;
    /// 0 while none is outstanding.
    request_us: u64,
    /// When a byte last moved either way (or the client was queued), ms.
    active_ms: u64,
}

struct Conn {
    client: OwnedFd,
    backend: Option<OwnedFd>,
    epoch: Rc<Epoch>,
    /// Listener index in `epoch`.
    listener: usize,
    /// Global index of the backend this connection counts against, while it does.
    backend_index: Option<usize>,
    /// Pool positions already tried (redispatch never retries one); its size is the number of
    /// connects made, which `retries` bounds.
    tried: Tried,
    phase: Phase,
    flows: [Flow; 2],
    /// Ops submitted and not yet completed; see the module's ownership invariant.
    inflight: u32,
    /// Distinguishes this connection from later ones in the same slot (buffer wait queue).
    generation: u32,
    times: Times,
    /// The backend accepted the connection (its lifetime is recorded at close).
    connected: bool,
    /// A byte has arrived from either side (or, while redispatching, the client's EOF): from then
    /// on the client is tied to its backend, and the backend going away ends the connection.
    bytes_seen: bool,
}

impl Conn {
    fn src(&self, dir: usize) -> RawFd {
        if dir == TO_BACKEND {
            self.client.as_raw_fd()
        } else {
            self.backend_fd()
        }
    }

    fn dst(&self, dir: usize) -> RawFd {
        if dir == TO_BACKEND {
            self.backend_fd()
        } else {
            self.client.as_raw_fd()
        }
    }

    fn backend_fd(&self) -> RawFd {
        self.backend.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }
}

/// Runs a worker until the process exits. Reports start-up success or failure on `ready`.
/// `listeners` are this worker's sockets in the order of the table's listeners.
pub fn run(
    config: WorkerConfig,
    listeners: Vec<Socket>,
    shared: Arc<Shared>,
    control: Receiver<Control>,
    ready: Sender<Result<(), (usize, String)>>,
) {
    let id = config.id;
    if let Some(core) = config.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(worker = id, core = core.id, "cannot pin worker to its core");
        }
    }
    let mut worker = match Worker::new(config, listeners, shared, control) {
        Ok(worker) => worker,
        Err(e) => {
            let _ = ready.send(Err((id, e.to_string())));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    drop(ready);
    if let Err(e) = worker.run() {
        // A worker cannot lose its ring and go on; the process must stop so a peer takes over.
        tracing::error!(worker = id, error = %e, "worker ring failed");
        std::process::exit(70);
    }
}

struct Worker {
    // Field order is drop order: the ring goes before the buffer memory it may write into.
    ring: IoUring,
    relay: RelayMode,
    buffers: BufRing,
    pipes: PipePool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_generation: u32,
    /// Client connections held (any phase).
    open: u64,
    slots: Vec<Option<Slot>>,
    /// The table new connections use.
    epoch: Rc<Epoch>,
    control: Receiver<Control>,
    /// A reload's table and new sockets, held until every worker has them ([`Control`]).
    prepared: Option<(Arc<Backends>, NewSockets)>,
    accept_retry: Box<types::Timespec>,
    /// The idle sweep's interval while it is armed (read by the kernel then: changed only while
    /// not), and the interval itself: the shortest of every table this worker's connections use.
    idle_tick: Box<types::Timespec>,
    idle_tick_armed: bool,
    idle_tick_ms: u64,
    /// The pause before a write to a half-closed, full peer is retried ([`WRITE_RETRY_MS`]).
    write_retry: Box<types::Timespec>,
    /// The queue's tick ([`QUEUE_TICK_MS`], never changed), armed while clients are queued.
    queue_tick: Box<types::Timespec>,
    queue_tick_armed: bool,
    /// Clients waiting for a backend under its `maxconn`: (slot, generation), oldest first.
    queue: VecDeque<(usize, u32)>,
    /// A slot may have freed for a queued client: serve the queue after this batch.
    queue_dirty: bool,
    /// The last [`Shared::writer_changes`] this worker acted on.
    writer_changes_seen: u64,
    /// This worker freed a slot that clients wait for since it last served its queue: what its
    /// own queue does not take, another worker's may (they are woken then, and only then).
    released_for_waiters: bool,
    /// Read once per batch of completions, ms.
    now_ms: u64,
    /// Last rejected-client log line, ms: at most one a second.
    last_rejection_log_ms: u64,
    /// Last failed-accept log line, ms: at most one a second, though accept is retried ten
    /// times a second while descriptors run short.
    last_accept_warning_ms: u64,
    /// Last line about a backend socket that could not be created, ms: at most one a second.
    last_socket_warning_ms: u64,
    shared: Arc<Shared>,
    id: usize,
    /// Entries that did not fit in the submission queue, in order, each with whether it links
    /// to the next one.
    backlog: VecDeque<(squeue::Entry, bool)>,
    /// The backlog length last published to `WorkerStats::backlog`.
    backlog_published: u64,
    /// Directions parked for lack of a buffer: (slot, generation, direction). Woken at the end
    /// of each batch of completions while buffers are back in the ring: a buffer recycled earlier
    /// in the same batch as the recv that found the ring empty must still wake it.
    waiting_for_buffer: VecDeque<(usize, u32, usize)>,
    completions: Vec<(u64, i32, u32)>,
    /// The kernel's count of completions it dropped (`IORING_FEAT_NODROP` rings drop one only
    /// when they cannot allocate room for it), as last read.
    dropped_seen: u32,
    /// Last completion-queue overflow warning, ms: at most one a second.
    last_overflow_warning_ms: u64,
    /// Last accounting-error log line, ms: at most one a second.
    last_accounting_log_ms: u64,
}

impl Worker {
    fn new(
        config: WorkerConfig,
        listeners: Vec<Socket>,
        shared: Arc<Shared>,
        control: Receiver<Control>,
    ) -> io::Result<Worker> {
        let tuning = &config.tuning;
        let entries = tuning.ring_entries;
        let ring = if tuning.sqpoll_idle_ms > 0 {
            // A kernel thread polls the submission queue; deferred task running needs the
            // submitting task itself to enter the kernel, so it is left off here.
            IoUring::builder()
                .setup_cqsize(entries * 2)
                .setup_sqpoll(tuning.sqpoll_idle_ms)
                .build(entries)?
        } else {
            // Completions are run only when the worker asks for them (one batch per wait), and
            // the kernel need not interrupt the worker to run them.
            IoUring::builder()
                .setup_cqsize(entries * 2)
                .setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(entries)
                .or_else(|_| IoUring::builder().setup_cqsize(entries * 2).build(entries))?
        };
        if tuning.iowq_max_workers > 0 {
            // [bounded, unbounded]: splice on sockets and pipes is unbounded work; 0 keeps a value.
            let mut max = [0, tuning.iowq_max_workers];
            ring.submitter().register_iowq_max_workers(&mut max)?;
        }
        let buffers = BufRing::new(&ring, BUFFER_GROUP, tuning.buffers, tuning.buffer_bytes)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot register the buffer ring: {e}")))?;
        let table = shared.table();
        let slots = listeners
            .into_iter()
            .zip(table.listeners.iter())
            .enumerate()
            .map(|(listener, (socket, l))| {
                Some(Slot {
                    socket,
                    name: l.config.name.clone(),
                    bind: l.config.bind,
                    listener,
                    closing: false,
                })
            })
            .collect();
        let mut worker = Worker {
            ring,
            relay: config.tuning.relay,
            buffers,
            pipes: PipePool::new(
                config.tuning.pipes_kept as usize,
                config.tuning.pipe_bytes as usize,
            ),
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            open: 0,
            slots,
            epoch: Rc::new(Epoch::new(table)),
            control,
            prepared: None,
            accept_retry: Box::new(timespec_ms(ACCEPT_RETRY_MS)),
            idle_tick: Box::new(timespec_ms(IDLE_TICK_MAX_MS)),
            idle_tick_armed: false,
            idle_tick_ms: 0,
            write_retry: Box::new(timespec_ms(WRITE_RETRY_MS)),
            queue_tick: Box::new(timespec_ms(QUEUE_TICK_MS)),
            queue_tick_armed: false,
            queue: VecDeque::new(),
            queue_dirty: false,
            writer_changes_seen: shared.writer_changes.load(Ordering::Acquire),
            released_for_waiters: false,
            now_ms: clock::now_ms(),
            last_rejection_log_ms: 0,
            last_accept_warning_ms: 0,
            last_socket_warning_ms: 0,
            shared,
            id: config.id,
            backlog: VecDeque::new(),
            backlog_published: 0,
            waiting_for_buffer: VecDeque::new(),
            completions: Vec::with_capacity(config.tuning.ring_entries as usize),
            dropped_seen: 0,
            last_overflow_warning_ms: 0,
            last_accounting_log_ms: 0,
        };
        worker.dropped_seen = worker.ring.completion().overflow();
        worker.idle_tick_ms = worker.epoch.idle_tick_ms;
        for slot in 0..worker.slots.len() {
            worker.arm_accept(slot);
        }
        worker.arm_wake();
        worker.ring.submit()?;
        Ok(worker)
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            self.flush_backlog();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // EBUSY: the completion queue is full; reaping below makes room.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) => {}
                // EBADR: the kernel dropped completions (see `check_completion_queue`).
                Err(e) if e.raw_os_error() == Some(libc::EBADR) => {}
                Err(e) => return Err(e),
            }
            self.now_ms = clock::now_ms();
            self.check_completion_queue()?;
            let mut completions = std::mem::take(&mut self.completions);
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(user_data, result, flags) in &completions {
                self.complete(user_data, result, flags);
            }
            completions.clear();
            self.completions = completions;
            self.wake_buffer_waiters();
            if self.queue_dirty {
                self.queue_dirty = false;
                self.serve_queue();
            }
            self.arm_ticks();
            self.publish_backlog();
        }
    }

    /// Publishes the backlog's length for the metrics when it changed (it is almost always 0).
    fn publish_backlog(&mut self) {
        let len = self.backlog.len() as u64;
        if len != self.backlog_published {
            self.backlog_published = len;
            self.shared.workers[self.id].backlog.store(len, Ordering::Relaxed);
        }
    }

    /// Reads the completion queue's overflow state. Completions the kernel holds back because
    /// the queue was full (`IORING_SQ_CQ_OVERFLOW`) are delivered by the next wait: counted, and
    /// a sign that `ring_entries` is too small. Completions the kernel *dropped* (it could not
    /// allocate room for them) are ops whose end this worker will never see: their connections
    /// could never be freed and the kernel may still hold their buffers, so the worker cannot go
    /// on safely, and the process exits for the HA peer (or the service manager) to take over.
    fn check_completion_queue(&mut self) -> io::Result<()> {
        let dropped = self.ring.completion().overflow();
        if dropped != self.dropped_seen {
            let lost = dropped.wrapping_sub(self.dropped_seen);
            self.dropped_seen = dropped;
            return Err(io::Error::other(format!(
                "the kernel dropped {lost} completion(s) for want of memory: this worker's \
                 connections can no longer be accounted for"
            )));
        }
        if self.ring.submission().cq_overflow() {
            self.shared.workers[self.id]
                .cq_overflows
                .fetch_add(1, Ordering::Relaxed);
            if log_due(&mut self.last_overflow_warning_ms, self.now_ms) {
                tracing::warn!(worker = self.id, "completion queue full; the kernel holds completions back until it is read (raise [tuning] ring_entries; logged at most once a second)");
            }
        }
        Ok(())
    }
    // ---- submission ----

    /// Queues entries in order; all of them go to the backlog when the queue lacks room for all,
    /// so a linked pair is never split across two submissions.
    fn push(&mut self, entries: &[squeue::Entry]) {
        if self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() >= entries.len() {
                for entry in entries {
                    // SAFETY: every buffer, address and timespec an entry points to lives at a
                    // stable address until its completion (module invariant), and room was checked.
                    let _ = unsafe { sq.push(entry) };
                }
                return;
            }
        }
        let last = entries.len().saturating_sub(1);
        self.backlog
            .extend(entries.iter().enumerate().map(|(i, e)| (e.clone(), i < last)));
        self.shared.workers[self.id]
            .backlogged
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
    }

    /// Submits ops of connection `index`, in order (an entry flagged `IO_LINK` links to the
    /// next). The one place where a connection's ops are counted in flight and tagged with its
    /// generation: see the module's ownership invariant.
    fn submit<const N: usize>(&mut self, index: usize, ops: [(Op, usize, squeue::Entry); N]) {
        let conn = self.conns[index].as_mut().expect("live connection");
        conn.inflight += N as u32;
        let generation = conn.generation;
        let entries = ops.map(|(op, dir, entry)| entry.user_data(token(index, generation, op, dir)));
        self.push(&entries);
    }

    fn flush_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            if room == 0 {
                drop(sq);
                // Make room by submitting; completions are reaped in the main loop.
                if self.ring.submit().is_err() {
                    return;
                }
                if self.ring.submission().is_full() {
                    return;
                }
                continue;
            }
            // Keep a linked pair together: never end a batch on an entry that links onward.
            let mut take = room.min(self.backlog.len());
            while take > 0 && self.backlog[take - 1].1 {
                take -= 1;
            }
            if take == 0 {
                return;
            }
            for (entry, _) in self.backlog.drain(..take) {
                // SAFETY: as in push; room was checked.
                let _ = unsafe { sq.push(&entry) };
            }
        }
    }

    fn arm_accept(&mut self, slot: usize) {
        let fd = self.slots[slot].as_ref().expect("live slot").socket.as_raw_fd();
        let entry = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(token(slot, 0, Op::Accept, 0));
        self.push(&[entry]);
    }

    /// Polls this worker's eventfd (multishot): reloads and freed queue slots wake the worker.
    fn arm_wake(&mut self) {
        let entry = opcode::PollAdd::new(types::Fd(self.shared.waker(self.id)), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token(0, 0, Op::Wake, 0));
        self.push(&[entry]);
    }

    /// Arms the ticks that something needs: the queue's while clients are queued (their
    /// timeout), the idle sweep's while connections live under an idle timeout. A worker with
    /// neither never wakes on its own.
    fn arm_ticks(&mut self) {
        if !self.queue_tick_armed && !self.queue.is_empty() {
            self.queue_tick_armed = true;
            let entry = opcode::Timeout::new(&*self.queue_tick as *const types::Timespec)
                .build()
                .user_data(token(0, 0, Op::QueueTick, 0));
            self.push(&[entry]);
        }
        if !self.idle_tick_armed && self.open > 0 && self.idle_tick_ms > 0 {
            *self.idle_tick = timespec_ms(self.idle_tick_ms);
            self.idle_tick_armed = true;
            let entry = opcode::Timeout::new(&*self.idle_tick as *const types::Timespec)
                .build()
                .user_data(token(0, 0, Op::Tick, 0));
            self.push(&[entry]);
        }
    }

    // ---- completion dispatch ----

    fn complete(&mut self, user_data: u64, result: i32, flags: u32) {
        let (index, generation, op, dir) = untoken(user_data);
        if op == Some(Op::Recv) && cqueue::buffer_select(flags).is_some() {
            self.buffers.taken();
        }
        match op {
            Some(Op::Accept) => self.on_accept(index, result, flags),
            Some(Op::AcceptRetry) => match self.slots.get(index).and_then(Option::as_ref) {
                Some(slot) if slot.closing => self.slots[index] = None,
                Some(_) => self.arm_accept(index),
                None => self.accounting_error(user_data, result, "an accept retry for a free listener slot"),
            },
            Some(Op::Wake) => self.on_wake(flags),
            Some(Op::Tick) => self.on_idle_tick(),
            Some(Op::QueueTick) => {
                self.queue_tick_armed = false;
                // Served after the whole batch, so that a hang-up completing in it counts first.
                self.queue_dirty = true;
            }
            Some(op) => {
                let conn = self.conns.get_mut(index).and_then(Option::as_mut);
                let Some(conn) = conn.filter(|c| c.generation == generation && c.inflight > 0) else {
                    // No op of this connection is in flight: the completion is for a slot freed
                    // (and perhaps reused) since, or one more than was submitted. Never taken for
                    // the current occupant's; a buffer it took goes straight back.
                    if let Some(id) = cqueue::buffer_select(flags) {
                        self.buffers.recycle(id);
                    }
                    self.accounting_error(user_data, result, "a completion matches no op in flight");
                    return;
                };
                conn.inflight -= 1;
                if conn.phase == Phase::Closing {
                    // Closing: every completion only brings the release nearer. A recv may
                    // still have taken a buffer, which goes straight back; a splice may still
                    // have filled its pipe, which then must not go back to the pool as empty
                    // (the next connection to borrow it would send these bytes first).
                    if op == Op::SpliceIn && result > 0 {
                        let flow = &mut conn.flows[dir];
                        flow.in_pipe = flow.in_pipe.saturating_add(result as u32);
                    }
                    if op == Op::Recv {
                        if let Some(id) = cqueue::buffer_select(flags) {
                            self.buffers.recycle(id);
                        }
                    }
                    self.finish_if_done(index);
                    return;
                }
                if conn.phase == Phase::Redispatching {
                    if op == Op::Recv {
                        // The client's read completed before its cancel: bytes taken or its EOF
                        // mean it can no longer move unnoticed; nothing taken (cancelled, no
                        // buffer) changes nothing.
                        if result >= 0 {
                            conn.bytes_seen = true;
                        }
                        if let Some(id) = cqueue::buffer_select(flags) {
                            self.buffers.recycle(id);
                        }
                    }
                    self.redispatch_if_done(index);
                    return;
                }
                match op {
                    Op::Connect => self.on_connect(index, result),
                    Op::ConnectTimeout => {}
                    Op::Recv => self.on_recv(index, dir, result, flags),
                    Op::Send => self.on_send(index, dir, result),
                    Op::SpliceIn => self.on_splice_in(index, dir, result),
                    Op::SpliceOut => self.on_splice_out(index, dir, result),
                    Op::PollOut => self.on_poll_out(index, dir, result),
                    Op::PollIn => self.on_poll_in(index, dir, result),
                    // Its work is done by the completion of the op it cancelled.
                    Op::Cancel => {}
                    Op::QueueWatch => self.on_queue_watch(index, result),
                    Op::WriteRetry => self.submit_splice_out(index, dir),
                    Op::Accept | Op::AcceptRetry | Op::Wake | Op::Tick | Op::QueueTick => {
                        // Ops of no connection, dispatched above: reaching here is a bug.
                        self.accounting_error(
                            user_data,
                            result,
                            "a worker op was dispatched as a connection's",
                        );
                    }
                }
            }
            None => self.accounting_error(user_data, result, "a completion names no known op"),
        }
    }

    /// A completion that matches nothing this worker expects: a bug, but never fatal. Counted
    /// (`ringlb_worker_accounting_errors_total`) and logged at most once a second, in every build.
    fn accounting_error(&mut self, user_data: u64, result: i32, what: &str) {
        self.shared.workers[self.id]
            .accounting_errors
            .fetch_add(1, Ordering::Relaxed);
        if log_due(&mut self.last_accounting_log_ms, self.now_ms) {
            let (index, generation, op, dir) = untoken(user_data);
            tracing::error!(worker = self.id, index, generation, op = ?op, dir, result, "{what}; ignored (a bug: please report it; counted in ringlb_worker_accounting_errors_total, logged at most once a second)");
        }
    }

    fn on_accept(&mut self, slot: usize, result: i32, flags: u32) {
        let Some(slot_ref) = self.slots.get(slot).and_then(Option::as_ref) else {
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            self.accounting_error(
                token(slot, 0, Op::Accept, 0),
                result,
                "an accept completed on a free listener slot",
            );
            return;
        };
        let (closing, listener) = (slot_ref.closing, slot_ref.listener);
        if self.shared.stopping.load(Ordering::Relaxed) || closing {
            // Shutting down, or the listener was removed: a client that slipped in is closed.
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            if closing && !cqueue::more(flags) {
                self.slots[slot] = None;
            }
            return;
        }
        if !cqueue::more(flags) {
            let resource = matches!(
                -result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            );
            if result < 0 && resource {
                // Out of descriptors or memory: back off instead of spinning on accept.
                if log_due(&mut self.last_accept_warning_ms, self.now_ms) {
                    tracing::warn!(worker = self.id, error = %errno(result), "accept failed; retrying shortly (logged at most once a second)");
                }
                let entry = opcode::Timeout::new(&*self.accept_retry as *const types::Timespec)
                    .build()
                    .user_data(token(slot, 0, Op::AcceptRetry, 0));
                self.push(&[entry]);
            } else {
                self.arm_accept(slot);
            }
        }
        if result < 0 {
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing else owns.
        let client = unsafe { OwnedFd::from_raw_fd(result) };
        self.shared.workers[self.id]
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.clone();
        if !epoch.table.listeners[listener].config.allow.is_empty()
            && !self.allowed(&epoch, listener, &client)
        {
            return; // Dropping `client` closes it before a byte is exchanged.
        }
        // TCP_NODELAY comes from the listening socket (accepted sockets inherit it): no syscall.
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let conn = Conn {
            client,
            backend: None,
            epoch: epoch.clone(),
            listener,
            backend_index: None,
            tried: Tried::default(),
            phase: Phase::Connecting,
            flows: [Flow::new(), Flow::new()],
            inflight: 0,
            generation,
            times: Times {
                accepted_us: clock::now_us(),
                active_ms: self.now_ms,
                ..Times::default()
            },
            connected: false,
            bytes_seen: false,
        };
        let free = self.free.pop();
        if free.is_none() && self.conns.len() > MAX_INDEX {
            return; // More connections than a token can name (never, under any fd limit).
        }
        let index = put(&mut self.conns, free, conn);
        self.open += 1;
        self.shared.workers[self.id]
            .open
            .store(self.open, Ordering::Relaxed);
        if epoch.table.listeners[listener]
            .state
            .queued
            .load(Ordering::Relaxed)
            > 0
        {
            // Others wait already: queue behind them rather than take a slot that frees first.
            self.enqueue(index);
        } else {
            self.connect_next(index);
        }
    }

    /// Whether the listener's allow list admits this client; counts and (at a bounded rate)
    /// logs the ones it does not. One getpeername per accept, only on listeners with a list.
    fn allowed(&mut self, epoch: &Epoch, listener: usize, client: &OwnedFd) -> bool {
        let peer = socket2::SockRef::from(client)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        let Some(peer) = peer else {
            return false;
        };
        let l = &epoch.table.listeners[listener];
        if l.config.allow.iter().any(|net| net.contains(peer.ip())) {
            return true;
        }
        l.state.rejected[self.id].fetch_add(1, Ordering::Relaxed);
        if log_due(&mut self.last_rejection_log_ms, self.now_ms) {
            tracing::warn!(worker = self.id, listener = %l.config.name, client = %peer, "client outside the allow list; closed (further ones this second only counted)");
        }
        false
    }

    fn conn(&mut self, index: usize) -> &mut Conn {
        self.conns[index].as_mut().expect("live connection")
    }

    fn traffic<'a>(&self, epoch: &'a Epoch, backend: usize) -> &'a BackendTraffic {
        &epoch.table.all[backend].stats.traffic[self.id]
    }

    // ---- control, tick, queue ----

    fn on_wake(&mut self, flags: u32) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from this worker's eventfd (non-blocking).
        unsafe { libc::read(self.shared.waker(self.id), (&mut value as *mut u64).cast(), 8) };
        if !cqueue::more(flags) {
            self.arm_wake();
        }
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Prepare { table, add, done } => {
                    self.prepared = Some((table, add));
                    let _ = done.send(self.id);
                }
                Control::Commit { done } => {
                    if let Some((table, add)) = self.prepared.take() {
                        self.reload(table, add);
                    }
                    let _ = done.send(self.id);
                }
                Control::Abort => self.prepared = None,
            }
        }
        let writer_changes = self.shared.writer_changes.load(Ordering::Acquire);
        if writer_changes != self.writer_changes_seen {
            self.writer_changes_seen = writer_changes;
            self.close_former_writers();
        }
        self.queue_dirty = true;
    }

    /// Resets the connections of writer pools with `on_writer_change = "close"` whose backend
    /// no longer holds the writer role, so that no client goes on writing to a server that left
    /// it (the former writer of a master-master pair would take conflicting writes).
    fn close_former_writers(&mut self) {
        let mut closed = 0;
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_ref() else {
                continue;
            };
            let Some(backend) = conn.backend_index else {
                continue;
            };
            let table = &conn.epoch.table;
            let listener = &table.listeners[conn.listener].config;
            if listener.on_writer_change != OnWriterChange::Close || conn.phase == Phase::Closing {
                continue;
            }
            let b = &table.all[backend];
            if b.writer.is_none() || b.is_writer() {
                continue;
            }
            closed += 1;
            self.abort(index);
        }
        if closed > 0 {
            tracing::info!(worker = self.id, closed, "connections to a former writer closed");
        }
    }

    /// Switches new connections to `table`; see the module docs.
    fn reload(&mut self, table: Arc<Backends>, add: NewSockets) {
        for index in 0..self.slots.len() {
            let Some(slot) = self.slots[index].as_mut() else {
                continue;
            };
            if slot.closing {
                continue;
            }
            let kept = table
                .listeners
                .iter()
                .position(|l| l.config.name == slot.name && l.config.bind == slot.bind);
            match kept {
                Some(listener) => slot.listener = listener,
                None => {
                    // Ends the multishot accept; the slot is freed at its last completion.
                    slot.closing = true;
                    let _ = slot.socket.shutdown(std::net::Shutdown::Read);
                }
            }
        }
        for (name, socket) in add {
            let Some(listener) = table.listeners.iter().position(|l| l.config.name == name) else {
                continue;
            };
            let bind = table.listeners[listener].config.bind;
            let slot = Slot {
                socket,
                name,
                bind,
                listener,
                closing: false,
            };
            let free = self.slots.iter().position(Option::is_none);
            let index = put(&mut self.slots, free, slot);
            self.arm_accept(index);
        }
        self.epoch = Rc::new(Epoch::new(table));
        // Connections opened under the old table keep its idle timeouts: sweep often enough for
        // both until they are gone.
        self.idle_tick_ms = match (self.open > 0, self.idle_tick_ms, self.epoch.idle_tick_ms) {
            (true, old, new) if old > 0 && new > 0 => old.min(new),
            (true, old, new) => old.max(new),
            (false, _, new) => new,
        };
    }

    fn on_idle_tick(&mut self) {
        self.idle_tick_armed = false;
        self.now_ms = clock::now_ms();
        if self.open > 0 && self.idle_tick_ms > 0 {
            self.close_idle();
        }
    }

    /// Closes relaying connections that moved no byte for their listener's `idle_timeout_ms`.
    fn close_idle(&mut self) {
        for index in 0..self.conns.len() {
            let Some(conn) = self.conns[index].as_ref() else {
                continue;
            };
            if conn.phase != Phase::Relaying {
                continue;
            }
            let listener = &conn.epoch.table.listeners[conn.listener];
            let idle = listener.config.idle_timeout_ms;
            if idle == 0 || self.now_ms.saturating_sub(conn.times.active_ms) < idle {
                continue;
            }
            listener.state.idle_closed[self.id].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(worker = self.id, listener = %listener.config.name, idle_ms = idle, "idle connection closed");
            self.abort(index);
        }
    }

    /// Puts a client in the queue, or refuses it when the listener's queue is full.
    fn enqueue(&mut self, index: usize) {
        let now_ms = self.now_ms;
        let conn = self.conn(index);
        let listener = &conn.epoch.table.listeners[conn.listener];
        let limit = listener.config.queue_limit;
        let admitted = listener
            .state
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q < limit).then_some(q + 1)
            })
            .is_ok();
        if !admitted {
            self.refuse(index, "every backend is at its maxconn and the queue is full");
            return;
        }
        conn.phase = Phase::Queued;
        conn.times.active_ms = now_ms;
        let generation = conn.generation;
        let client = conn.client.as_raw_fd();
        self.queue.push_back((index, generation));
        // A queued client has no other op in flight: without this, its hang-up would go unseen
        // and a freed slot could go to it while a live client waits.
        let watch = opcode::PollAdd::new(types::Fd(client), libc::POLLRDHUP as u32).build();
        self.submit(index, [(Op::QueueWatch, 0, watch)]);
    }

    /// The watch of a queued client ended: it hung up (or reset), or the watch was cancelled as
    /// it left the queue. Once out of the queue its result means nothing: the relay sees the
    /// client's own end, half-closes included.
    fn on_queue_watch(&mut self, index: usize, result: i32) {
        let id = self.id;
        let conn = self.conn(index);
        if conn.phase != Phase::Queued || result == -libc::ECANCELED {
            return;
        }
        let listener = &conn.epoch.table.listeners[conn.listener];
        listener.state.queued.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(worker = id, listener = %listener.config.name, "queued client hung up");
        // Its queue entry is skipped later (no longer queued); the slot it would have taken
        // goes to the next client.
        self.abort(index);
    }

    /// Leaving the queue: cancels the hang-up watch (it completes, cancelled or fired, while
    /// the connection goes on; `on_queue_watch` then ignores it).
    fn unqueue(&mut self, index: usize) {
        let conn = self.conn(index);
        conn.phase = Phase::Connecting;
        let watch = token(index, conn.generation, Op::QueueWatch, 0);
        let cancel = opcode::AsyncCancel::new(watch).build();
        self.submit(index, [(Op::Cancel, 0, cancel)]);
    }

    /// Gives freed slots to queued clients, oldest first, and refuses those that waited too long.
    fn serve_queue(&mut self) {
        let mut left = self.queue.len();
        while left > 0 {
            left -= 1;
            let Some((index, generation)) = self.queue.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if conn.generation != generation || conn.phase != Phase::Queued {
                continue;
            }
            let epoch = conn.epoch.clone();
            let listener = &epoch.table.listeners[conn.listener];
            let waited = self.now_ms.saturating_sub(conn.times.active_ms);
            let pick = if waited >= listener.config.queue_timeout_ms {
                None
            } else {
                Some(epoch.table.acquire(conn.listener, &conn.tried, self.now_ms))
            };
            if pick == Some(Pick::Full) {
                self.queue.push_back((index, generation));
                continue;
            }
            listener.state.queued.fetch_sub(1, Ordering::Relaxed);
            self.unqueue(index);
            match pick {
                Some(Pick::Backend(backend)) => self.connect_to(index, backend),
                Some(Pick::None) => self.no_backend(index),
                _ => self.refuse(index, "waited queue_timeout_ms for a backend under its maxconn"),
            }
        }
        // A slot this worker freed, that its own queue did not take, may serve a client queued on
        // another worker: wake them. Only after a release, so that workers never wake each other
        // in turn while the backends stay full.
        if !std::mem::take(&mut self.released_for_waiters) {
            return;
        }
        let waiting: u64 = self
            .epoch
            .table
            .listeners
            .iter()
            .map(|l| u64::from(l.state.queued.load(Ordering::Relaxed)))
            .sum();
        if waiting > self.queue.len() as u64 {
            for worker in (0..self.shared.workers.len()).filter(|&w| w != self.id) {
                self.shared.wake(worker);
            }
        }
    }

    /// Tells a client it cannot be served (MySQL's "Too many connections", as a server at its
    /// max_connections would) and closes it.
    fn refuse(&mut self, index: usize, why: &str) {
        let id = self.id;
        let conn = self.conn(index);
        let listener = &conn.epoch.table.listeners[conn.listener];
        listener.state.queue_refused[id].fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "Too many connections (ringlb listener {}: {why})",
            listener.config.name
        );
        self.send_error_and_close(index, &message);
    }

    /// Tells a client that no backend can take it — its `retries` are used up, every backend
    /// of its pool has been tried, or none is up — and closes it. The same error code as a full
    /// queue (a connection-class error, which client libraries treat as worth retrying later),
    /// with a message that says which.
    fn no_backend(&mut self, index: usize) {
        let id = self.id;
        let conn = self.conn(index);
        let listener = &conn.epoch.table.listeners[conn.listener];
        listener.state.no_backend[id].fetch_add(1, Ordering::Relaxed);
        let tried = conn.tried.len();
        let pool = conn.epoch.table.pools[conn.listener].len();
        let why = if tried == 0 {
            "none is up".to_string()
        } else if tried > listener.config.retries {
            format!("{tried} tried, retries = {} used up", listener.config.retries)
        } else if tried as usize >= pool {
            format!("all {tried} tried")
        } else {
            format!(
                "{tried} tried, the other {} down or drained",
                pool - tried as usize
            )
        };
        let message = format!(
            "no backend available (ringlb listener {}: {why})",
            listener.config.name
        );
        self.send_error_and_close(index, &message);
    }

    fn send_error_and_close(&mut self, index: usize, message: &str) {
        let id = self.id;
        let conn = self.conn(index);
        let packet = error_packet(ER_CON_COUNT_ERROR, message);
        // One small write to a fresh socket whose send buffer is empty: it fits at once, and a
        // client that has gone only makes it fail.
        // SAFETY: sends from a live buffer on a descriptor this connection owns.
        unsafe {
            libc::send(
                conn.client.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        tracing::debug!(worker = id, "client refused: {message}");
        self.abort(index);
    }

    /// Undoes a backend's acquire; a queued client may now take the slot.
    fn release(&mut self, epoch: &Epoch, backend: usize) {
        epoch.table.release(backend);
        let listener = epoch.table.all[backend].listener;
        if epoch.table.listeners[listener]
            .state
            .queued
            .load(Ordering::Relaxed)
            > 0
        {
            self.queue_dirty = true;
            self.released_for_waiters = true;
        }
    }

    // ---- connecting ----

    /// Picks the next backend not yet tried and connects to it; queues the client when every
    /// candidate is at its maxconn; when its `retries` are used up or no backend is left, the
    /// client gets a "no backend available" error and is closed.
    fn connect_next(&mut self, index: usize) {
        let now_ms = self.now_ms;
        let conn = self.conn(index);
        let epoch = conn.epoch.clone();
        if conn.tried.len() > epoch.table.listeners[conn.listener].config.retries {
            self.no_backend(index);
            return;
        }
        match epoch.table.acquire(conn.listener, &conn.tried, now_ms) {
            Pick::Backend(backend) => self.connect_to(index, backend),
            Pick::Full => self.enqueue(index),
            Pick::None => self.no_backend(index),
        }
    }

    /// Connects to `backend`, already acquired for this connection.
    fn connect_to(&mut self, index: usize, backend: usize) {
        let id = self.id;
        let conn = self.conn(index);
        let epoch = conn.epoch.clone();
        let listener = conn.listener;
        let table = &epoch.table;
        let position = backend - table.pools[listener].start;
        let fd = match new_backend_socket(table.all[backend].addr) {
            Ok(fd) => fd,
            Err(e) => {
                // No socket to be had (out of descriptors or memory): a local failure, not the
                // backend's, so no backend is marked suspect and no other is tried.
                self.release(&epoch, backend);
                if log_due(&mut self.last_socket_warning_ms, self.now_ms) {
                    tracing::warn!(worker = id, error = %e, "cannot create a backend socket; client closed with an error (logged at most once a second)");
                }
                let message = format!("ringlb cannot open a connection to a backend: {e}");
                self.send_error_and_close(index, &message);
                return;
            }
        };
        let conn = self.conn(index);
        if !conn.tried.is_empty() {
            table.listeners[listener].state.redispatches[id].fetch_add(1, Ordering::Relaxed);
        }
        conn.tried.insert(position);
        let raw = fd.as_raw_fd();
        conn.backend_index = Some(backend);
        conn.backend = Some(fd);
        conn.times.connect_us = clock::now_us();
        let addr = &epoch.addrs[backend];
        let connect = opcode::Connect::new(types::Fd(raw), addr.as_ptr().cast(), addr.len())
            .build()
            .flags(squeue::Flags::IO_LINK);
        // The short redispatch timeout only while this client may still go elsewhere.
        let others_left = conn.tried.len() <= table.listeners[listener].config.retries
            && table.has_candidate(listener, &conn.tried);
        let timeout = if others_left {
            &epoch.redispatch_timeouts[listener]
        } else {
            &epoch.connect_timeouts[listener]
        };
        let timeout = opcode::LinkTimeout::new(timeout).build();
        self.submit(
            index,
            [(Op::Connect, 0, connect), (Op::ConnectTimeout, 0, timeout)],
        );
    }

    fn connect_failed(&mut self, epoch: &Epoch, backend: usize, error: &io::Error) {
        let now = self.now_ms;
        self.traffic(epoch, backend)
            .connect_errors
            .fetch_add(1, Ordering::Relaxed);
        epoch.table.mark_suspect(backend, now + SUSPECT_MS);
        let last = &epoch.last_warning_ms[backend];
        let mut last_ms = last.get();
        if log_due(&mut last_ms, now) {
            last.set(last_ms);
            let name = &epoch.table.all[backend].name;
            tracing::warn!(worker = self.id, backend = %name, error = %error, "connect failed; trying the next backend");
        }
    }

    fn on_connect(&mut self, index: usize, result: i32) {
        let conn = self.conn(index);
        let epoch = conn.epoch.clone();
        let backend = conn.backend_index.expect("connecting to a backend");
        if result < 0 {
            conn.backend = None;
            conn.backend_index = None;
            self.release(&epoch, backend);
            // The link timeout cancels the connect: ECANCELED means it timed out.
            let error = if -result == libc::ECANCELED {
                io::Error::from_raw_os_error(libc::ETIMEDOUT)
            } else {
                errno(result)
            };
            self.connect_failed(&epoch, backend, &error);
            self.connect_next(index);
            return;
        }
        if let Some(version) = epoch.table.listeners[conn.listener].config.send_proxy {
            if let Err(e) = send_proxy_header(conn, version) {
                tracing::debug!(worker = self.id, error = %e, "cannot send the PROXY header; closing");
                self.abort(index);
                return;
            }
        }
        let now_ms = self.now_ms;
        let conn = self.conn(index);
        conn.phase = Phase::Relaying;
        conn.connected = true;
        // Idle from here on, not from the accept or a wait in the queue.
        conn.times.active_ms = now_ms;
        let now_us = clock::now_us();
        let took = now_us.saturating_sub(conn.times.connect_us);
        self.latency(&epoch, backend).record_connect(took);
        self.traffic(&epoch, backend)
            .connections
            .fetch_add(1, Ordering::Relaxed);
        self.wait_readable(index, TO_BACKEND);
        self.wait_readable(index, TO_CLIENT);
    }

    /// This worker's histograms of `backend` (its own lock: uncontended but while the admin
    /// thread merges).
    fn latency<'a>(
        &self,
        epoch: &'a Epoch,
        backend: usize,
    ) -> std::sync::MutexGuard<'a, crate::latency::Latency> {
        epoch.table.all[backend].stats.latency[self.id]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived in `dir`: keeps the idle clock and the request → first-byte clock.
    fn saw_bytes(&mut self, index: usize, dir: usize) {
        let now_ms = self.now_ms;
        let conn = self.conn(index);
        conn.times.active_ms = now_ms;
        conn.bytes_seen = true;
        if dir == TO_BACKEND {
            if conn.times.request_us == 0 {
                conn.times.request_us = clock::now_us();
            }
        } else if conn.times.request_us != 0 {
            let took = clock::now_us().saturating_sub(conn.times.request_us);
            conn.times.request_us = 0;
            let (epoch, backend) = (conn.epoch.clone(), conn.backend_index.expect("relaying"));
            self.latency(&epoch, backend).record_first_byte(took);
        }
    }
    /// Waits for the source of `dir` to have bytes, holding no buffer or pipe meanwhile.
    fn wait_readable(&mut self, index: usize, dir: usize) {
        match self.relay {
            RelayMode::Auto => self.submit_recv(index, dir),
            RelayMode::Splice => {
                let conn = self.conn(index);
                conn.flows[dir].state = FlowState::PollIn;
                let entry = opcode::PollAdd::new(types::Fd(conn.src(dir)), libc::POLLIN as u32).build();
                self.submit(index, [(Op::PollIn, dir, entry)]);
            }
        }
    }

    fn on_poll_in(&mut self, index: usize, dir: usize, result: i32) {
        if result < 0 && !matches!(-result, libc::EINTR | libc::EAGAIN) {
            self.read_failed(index, dir, result, "poll for reading");
        } else {
            // Readable, at EOF, or an error the splice will report.
            self.submit_splice_in(index, dir);
        }
    }

    // ---- relaying ----

    fn submit_recv(&mut self, index: usize, dir: usize) {
        let group = self.buffers.group();
        let len = self.buffers.buf_bytes();
        let conn = self.conn(index);
        conn.flows[dir].state = FlowState::Recv;
        let entry = opcode::Recv::new(types::Fd(conn.src(dir)), std::ptr::null_mut(), len)
            .buf_group(group)
            .ioprio(RECVSEND_POLL_FIRST)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        self.submit(index, [(Op::Recv, dir, entry)]);
    }

    fn on_recv(&mut self, index: usize, dir: usize, result: i32, flags: u32) {
        let selected = cqueue::buffer_select(flags);
        match result {
            n if n > 0 => {
                let Some(id) = selected else {
                    self.abort(index);
                    return;
                };
                let full = n as u32 == self.buffers.buf_bytes();
                self.saw_bytes(index, dir);
                let flow = &mut self.conn(index).flows[dir];
                flow.buffer = Some((id, 0, n as u32));
                flow.bulk = full;
                self.submit_send(index, dir);
            }
            0 => {
                if let Some(id) = selected {
                    self.buffers.recycle(id);
                }
                self.end_of_stream(index, dir);
            }
            _ if -result == libc::ENOBUFS => {
                let conn = self.conn(index);
                conn.flows[dir].state = FlowState::WaitBuffer;
                let generation = conn.generation;
                self.waiting_for_buffer.push_back((index, generation, dir));
                self.shared.workers[self.id]
                    .buffer_waits
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ if matches!(-result, libc::EAGAIN | libc::EINTR) => self.submit_recv(index, dir),
            _ => self.read_failed(index, dir, result, "recv"),
        }
    }

    fn submit_send(&mut self, index: usize, dir: usize) {
        let conn = self.conns[index].as_mut().expect("live connection");
        let (id, sent, received) = conn.flows[dir].buffer.expect("buffer to send");
        conn.flows[dir].state = FlowState::Send;
        // SAFETY: sent < received <= the buffer size, so the pointer stays inside buffer `id`.
        let data = unsafe { self.buffers.buffer(id).add(sent as usize) };
        let entry = opcode::Send::new(types::Fd(conn.dst(dir)), data, received - sent)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        self.submit(index, [(Op::Send, dir, entry)]);
    }

    fn on_send(&mut self, index: usize, dir: usize, result: i32) {
        if result < 0 {
            if matches!(-result, libc::EAGAIN | libc::EINTR) {
                self.submit_send(index, dir);
            } else {
                tracing::debug!(worker = self.id, dir, error = %errno(result), "send failed; closing");
                self.abort(index);
            }
            return;
        }
        self.count_bytes(index, dir, result as u64);
        let flow = &mut self.conn(index).flows[dir];
        let (id, sent, received) = flow.buffer.expect("buffer being sent");
        let sent = sent + result as u32;
        if sent < received {
            flow.buffer = Some((id, sent, received));
            self.submit_send(index, dir);
            return;
        }
        flow.buffer = None;
        let bulk = flow.bulk;
        self.buffers.recycle(id);
        if bulk {
            self.submit_splice_in(index, dir);
        } else {
            self.submit_recv(index, dir);
        }
    }

    fn submit_splice_in(&mut self, index: usize, dir: usize) {
        if self.conn(index).flows[dir].pipe.is_none() {
            match self.pipes.take() {
                Ok(pipe) => {
                    let capacity = pipe.capacity() as u32;
                    let flow = &mut self.conn(index).flows[dir];
                    flow.pipe_capacity = capacity;
                    flow.pipe = Some(pipe);
                }
                Err(e) => {
                    // No pipe to be had (descriptor or pipe-memory limits): stay buffered.
                    tracing::debug!(worker = self.id, error = %e, "no pipe; staying on the buffered path");
                    self.submit_recv(index, dir);
                    return;
                }
            }
        }
        let conn = self.conn(index);
        let flow = &mut conn.flows[dir];
        flow.state = FlowState::SpliceIn;
        let pipe_in = flow.pipe.as_ref().expect("pipe").write_fd();
        let len = flow.pipe_capacity;
        let src = conn.src(dir);
        self.submit_splice(index, dir, Op::SpliceIn, src, pipe_in, len);
    }

    /// One splice op of `dir`, non-blocking on both ends: a socket that has nothing (or no room)
    /// answers EAGAIN at once instead of holding an io-wq worker.
    fn submit_splice(&mut self, index: usize, dir: usize, op: Op, from: RawFd, to: RawFd, len: u32) {
        let entry = opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len)
            .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
            .build();
        self.submit(index, [(op, dir, entry)]);
    }

    fn on_splice_in(&mut self, index: usize, dir: usize, result: i32) {
        match result {
            n if n > 0 => {
                self.saw_bytes(index, dir);
                let flow = &mut self.conn(index).flows[dir];
                flow.in_pipe = n as u32;
                flow.bulk = n as u32 == flow.pipe_capacity;
                self.submit_splice_out(index, dir);
            }
            0 => {
                self.return_pipe(index, dir);
                self.end_of_stream(index, dir);
            }
            _ if matches!(-result, libc::EAGAIN | libc::EINTR) => {
                // Drained: back to waiting, holding no pipe.
                self.return_pipe(index, dir);
                self.wait_readable(index, dir);
            }
            _ => self.read_failed(index, dir, result, "splice from socket"),
        }
    }

    fn submit_splice_out(&mut self, index: usize, dir: usize) {
        let conn = self.conn(index);
        let dst = conn.dst(dir);
        let flow = &mut conn.flows[dir];
        flow.state = FlowState::SpliceOut;
        let pipe_out = flow.pipe.as_ref().expect("pipe").read_fd();
        let len = flow.in_pipe;
        self.submit_splice(index, dir, Op::SpliceOut, pipe_out, dst, len);
    }

    fn on_splice_out(&mut self, index: usize, dir: usize, result: i32) {
        if result > 0 {
            self.count_bytes(index, dir, result as u64);
            let flow = &mut self.conn(index).flows[dir];
            flow.in_pipe -= result as u32;
            if flow.in_pipe > 0 {
                self.submit_splice_out(index, dir);
            } else if flow.bulk {
                self.submit_splice_in(index, dir);
            } else {
                self.return_pipe(index, dir);
                self.wait_readable(index, dir);
            }
        } else if matches!(-result, libc::EAGAIN | libc::EINTR) {
            // The destination is full: wait until it can take more (backpressure).
            let conn = self.conn(index);
            let dst = conn.dst(dir);
            conn.flows[dir].state = FlowState::PollOut;
            let entry = opcode::PollAdd::new(types::Fd(dst), libc::POLLOUT as u32).build();
            self.submit(index, [(Op::PollOut, dir, entry)]);
        } else {
            tracing::debug!(worker = self.id, dir, error = %errno(result), "splice to socket failed; closing");
            self.abort(index);
        }
    }

    fn on_poll_out(&mut self, index: usize, dir: usize, result: i32) {
        const ERROR_OR_HANG_UP: i32 = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as i32;
        if result < 0 && !matches!(-result, libc::EINTR | libc::EAGAIN) {
            self.abort(index);
        } else if result > 0 && result & ERROR_OR_HANG_UP == 0 {
            // Only POLLRDHUP: the destination's peer has half-closed, which an io_uring poll
            // always reports, at once and for good, while its window is still full. Retrying
            // the splice now would spin; a short pause bounds the cost of such a slow reader.
            let pause = opcode::Timeout::new(&*self.write_retry as *const types::Timespec).build();
            self.submit(index, [(Op::WriteRetry, dir, pause)]);
        } else {
            // Writable, or an error the next splice will report.
            self.submit_splice_out(index, dir);
        }
    }

    fn count_bytes(&mut self, index: usize, dir: usize, bytes: u64) {
        let conn = self.conns[index].as_ref().expect("live connection");
        let backend = conn.backend_index.expect("relaying to a backend");
        // Borrowed in place: this runs for every send and splice.
        let traffic = &conn.epoch.table.all[backend].stats.traffic[self.id];
        let counter = if dir == TO_BACKEND {
            &traffic.bytes_to_backend
        } else {
            &traffic.bytes_to_client
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// EOF from the source: pass it on as a half-close, and close when both directions are done.
    fn end_of_stream(&mut self, index: usize, dir: usize) {
        if dir == TO_CLIENT {
            let closed = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed the connection before sending a byte",
            );
            if self.redispatch_before_first_byte(index, &closed) {
                return;
            }
        }
        let conn = self.conn(index);
        conn.flows[dir].state = FlowState::Done;
        // SAFETY: shutdown on a descriptor this connection owns; it touches no memory.
        unsafe { libc::shutdown(conn.dst(dir), libc::SHUT_WR) };
        if conn.flows.iter().all(|f| f.state == FlowState::Done) {
            conn.phase = Phase::Closing;
            self.finish_if_done(index);
        }
    }

    /// Reading the source of `dir` failed (`what`, with `result`): the connection ends, unless it
    /// is the backend failing before its first byte, which is redispatched instead.
    fn read_failed(&mut self, index: usize, dir: usize, result: i32, what: &str) {
        if dir == TO_CLIENT && self.redispatch_before_first_byte(index, &errno(result)) {
            return;
        }
        tracing::debug!(worker = self.id, dir, error = %errno(result), "{what} failed; closing");
        self.abort(index);
    }

    /// The backend ended the connection (`error`) before its first byte: when the client has
    /// sent nothing either, gives this one up as a failed connect and starts moving the client
    /// on (`Phase::Redispatching`): to the next backend, to the queue when the others are at
    /// their maxconn, or to its end when none is left. Returns whether it did; otherwise the
    /// caller ends the connection as usual.
    fn redispatch_before_first_byte(&mut self, index: usize, error: &io::Error) -> bool {
        let conn = self.conn(index);
        if conn.phase != Phase::Relaying || conn.bytes_seen {
            return false;
        }
        // The client's direction may only be waiting for the client, holding nothing and with
        // no op on the backend socket: a read or poll of the client, or nothing at all.
        let pending = match conn.flows[TO_BACKEND].state {
            FlowState::Recv => Some(Op::Recv),
            FlowState::PollIn => Some(Op::PollIn),
            FlowState::Idle | FlowState::WaitBuffer => None,
            _ => return false,
        };
        let epoch = conn.epoch.clone();
        let Some(backend) = conn.backend_index else {
            return false;
        };
        self.return_pipe(index, TO_CLIENT);
        let conn = self.conn(index);
        conn.phase = Phase::Redispatching;
        // No op refers to the backend socket any more: the backend's direction has just
        // completed its last one, and the client's waits on the client.
        conn.backend = None;
        conn.backend_index = None;
        conn.connected = false;
        self.release(&epoch, backend);
        self.connect_failed(&epoch, backend, error);
        if let Some(op) = pending {
            let generation = self.conn(index).generation;
            let entry = opcode::AsyncCancel::new(token(index, generation, op, TO_BACKEND)).build();
            self.submit(index, [(Op::Cancel, TO_BACKEND, entry)]);
        }
        self.redispatch_if_done(index);
        true
    }

    /// Once nothing of a redispatching connection is in flight: the next backend, or the end
    /// when the client sent something (or left) meanwhile.
    fn redispatch_if_done(&mut self, index: usize) {
        let conn = self.conn(index);
        if conn.phase != Phase::Redispatching || conn.inflight > 0 {
            return;
        }
        if conn.bytes_seen {
            self.abort(index);
            return;
        }
        conn.flows = [Flow::new(), Flow::new()];
        conn.phase = Phase::Connecting;
        self.connect_next(index);
    }

    fn return_pipe(&mut self, index: usize, dir: usize) {
        let flow = &mut self.conn(index).flows[dir];
        if let Some(pipe) = flow.pipe.take() {
            let empty = flow.in_pipe == 0;
            flow.in_pipe = 0;
            self.pipes.give(pipe, empty);
        }
    }

    /// Wakes directions parked for lack of a buffer, oldest first, one per buffer back in the
    /// ring. Runs after each whole batch of completions, so that a park and a recycle in the
    /// same batch, in either order, never strand a direction while a buffer sits free.
    fn wake_buffer_waiters(&mut self) {
        let mut free = self.buffers.available();
        while free > 0 {
            let Some((index, generation, dir)) = self.waiting_for_buffer.pop_front() else {
                return;
            };
            let waiting = self.conns.get(index).and_then(Option::as_ref).is_some_and(|c| {
                c.generation == generation
                    && c.phase == Phase::Relaying
                    && c.flows[dir].state == FlowState::WaitBuffer
            });
            if waiting {
                self.submit_recv(index, dir);
                free -= 1;
            }
        }
    }

    // ---- closing ----

    /// Closes both sides at once: shutting both sockets down completes every op in flight, and
    /// the connection is freed when the last of them has completed.
    fn abort(&mut self, index: usize) {
        let conn = self.conn(index);
        if conn.phase == Phase::Closing {
            return;
        }
        conn.phase = Phase::Closing;
        if let Some(backend) = &conn.backend {
            // The backend's close will be a reset, not a FIN: a server still writing a result
            // must fail at once. After a FIN it could wait, blocked on a window that this closed
            // socket no longer opens, until its zero-window probes back off to tens of seconds
            // (measured: a MariaDB session left 30 s with 3.6 MB unsent). The client's side keeps
            // its FIN, so that an error packet written to it just before is still read.
            let _ = socket2::SockRef::from(backend).set_linger(Some(std::time::Duration::ZERO));
        }
        for fd in [conn.client.as_raw_fd(), conn.backend_fd()] {
            if fd >= 0 {
                // SAFETY: shutdown on descriptors this connection owns; it touches no memory.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
        self.finish_if_done(index);
    }

    fn finish_if_done(&mut self, index: usize) {
        let conn = self.conn(index);
        if conn.phase != Phase::Closing || conn.inflight > 0 {
            return;
        }
        let mut conn = self.conns[index].take().expect("live connection");
        self.free.push(index);
        for flow in &mut conn.flows {
            if let Some((id, _, _)) = flow.buffer.take() {
                self.buffers.recycle(id);
            }
            if let Some(pipe) = flow.pipe.take() {
                self.pipes.give(pipe, flow.in_pipe == 0);
            }
        }
        if let Some(backend) = conn.backend_index {
            if conn.connected {
                let lifetime = clock::now_us().saturating_sub(conn.times.accepted_us);
                self.latency(&conn.epoch, backend).record_lifetime(lifetime);
            }
            self.release(&conn.epoch, backend);
        }
        self.open -= 1;
        self.shared.workers[self.id]
            .open
            .store(self.open, Ordering::Relaxed);
        if self.open == 0 {
            // No connection of an older table is left: the current one's sweep is enough.
            self.idle_tick_ms = self.epoch.idle_tick_ms;
        }
        // Dropping `conn` closes both sockets.
    }
}

/// Whether a rate-limited log line may be written now (at most one per [`WARN_INTERVAL_MS`]);
/// if so, `last_ms` becomes `now_ms`. 0 means never logged.
fn log_due(last_ms: &mut u64, now_ms: u64) -> bool {
    let due = *last_ms == 0 || now_ms >= *last_ms + WARN_INTERVAL_MS;
    if due {
        *last_ms = now_ms;
    }
    due
}

/// Stores `value` in the free entry `free` of `slots`, or in a new one; returns its index.
fn put<T>(slots: &mut Vec<Option<T>>, free: Option<usize>, value: T) -> usize {
    match free {
        Some(index) => {
            slots[index] = Some(value);
            index
        }
        None => {
            slots.push(Some(value));
            slots.len() - 1
        }
    }
}

/// A non-blocking backend socket with Nagle off (MySQL packets are small and latency-bound).
fn new_backend_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

/// Writes the PROXY protocol header for `conn`'s client to its fresh backend connection, whole:
/// MariaDB reads a v2 header with one read per part and does not retry a short one. The send
/// buffer of a socket that just connected is empty, so the few dozen bytes fit at once; a short
/// or failed write is an error. Two syscalls learn the addresses, only on listeners that send.
fn send_proxy_header(conn: &Conn, version: crate::proxy_protocol::ProxyVersion) -> io::Result<()> {
    let client = socket2::SockRef::from(&conn.client);
    let unknown = || io::Error::new(io::ErrorKind::InvalidData, "client address is not IP");
    let source = client.peer_addr()?.as_socket().ok_or_else(unknown)?;
    let destination = client.local_addr()?.as_socket().ok_or_else(unknown)?;
    let header = crate::proxy_protocol::header(version, source, destination);
    // SAFETY: sends from a live buffer on a descriptor this connection owns.
    let sent = unsafe {
        libc::send(
            conn.backend_fd(),
            header.as_ptr().cast(),
            header.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    match sent {
        n if n == header.len() as isize => Ok(()),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "PROXY header sent in part",
        )),
    }
}

/// A MySQL ERR packet as a server sends it before the handshake (sequence 0, no SQL state).
fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(3 + message.len());
    payload.push(0xff);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = payload.len() as u32;
    let mut packet = len.to_le_bytes()[..3].to_vec();
    packet.push(0);
    packet.extend_from_slice(&payload);
    packet
}

fn timespec_ms(ms: u64) -> types::Timespec {
    types::Timespec::new()
        .sec(ms / 1000)
        .nsec(((ms % 1000) * 1_000_000) as u32)
}

fn errno(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Config, TuningConfig};
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A worker with no listener and a ring of `ring_entries`, over a table of `backends`
    /// backends (at 127.0.0.1:41000 and up, never connected to) with `maxconn`, `retries` and
    /// `queue_timeout_ms`; `None` where io_uring is refused (the kernel-probe tests cover that).
    fn worker_with(
        ring_entries: u32,
        backends: usize,
        maxconn: u32,
        retries: u32,
        queue_timeout_ms: u64,
    ) -> Option<Worker> {
        let pool = (0..backends)
            .map(|i| BackendConfig {
                maxconn,
                ..BackendConfig::at(format!("127.0.0.1:{}", 41000 + i).parse().unwrap())
            })
            .collect();
        let mut config = Config::with_listener("127.0.0.1:4040".parse().unwrap(), pool);
        config.listeners[0].retries = retries;
        config.listeners[0].queue_timeout_ms = queue_timeout_ms;
        let shared = Arc::new(Shared::new(Arc::new(Backends::from_config(&config)), 1).unwrap());
        let tuning = TuningConfig {
            ring_entries,
            buffers: 4,
            pin_workers: false,
            ..TuningConfig::default()
        };
        let config = WorkerConfig {
            id: 0,
            core: None,
            tuning,
        };
        let (_control, receiver) = std::sync::mpsc::channel();
        match Worker::new(config, Vec::new(), shared, receiver) {
            Ok(worker) => Some(worker),
            Err(e) => {
                eprintln!("SKIPPED: no io_uring here: {e}");
                assert!(std::env::var("CI").is_err(), "io_uring is refused under CI: {e}");
                None
            }
        }
    }

    fn worker(ring_entries: u32) -> Option<Worker> {
        worker_with(ring_entries, 1, 0, 3, 5000)
    }

    /// A connection in a new slot of `worker`, in `phase`, with `inflight` ops counted, and the
    /// client's end of its socket.
    fn conn_in(worker: &mut Worker, phase: Phase, inflight: u32) -> (usize, u32, UnixStream) {
        let (client, peer) = UnixStream::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let generation = worker.next_generation;
        worker.next_generation += 1;
        let conn = Conn {
            client: client.into(),
            backend: None,
            epoch: worker.epoch.clone(),
            listener: 0,
            backend_index: None,
            tried: Tried::default(),
            phase,
            flows: [Flow::new(), Flow::new()],
            inflight,
            generation,
            times: Times {
                active_ms: worker.now_ms,
                ..Times::default()
            },
            connected: false,
            bytes_seen: false,
        };
        worker.open += 1;
        let free = worker.free.pop();
        (put(&mut worker.conns, free, conn), generation, peer)
    }

    /// A connection relaying with `inflight` ops counted.
    fn live_conn(worker: &mut Worker, inflight: u32) -> (usize, u32) {
        let (index, generation, _peer) = conn_in(worker, Phase::Relaying, inflight);
        (index, generation)
    }

    /// A client just accepted: connecting, nothing in flight.
    fn new_client(worker: &mut Worker) -> (usize, u32, UnixStream) {
        conn_in(worker, Phase::Connecting, 0)
    }

    fn queued(worker: &Worker) -> u32 {
        worker.epoch.table.listeners[0]
            .state
            .queued
            .load(Ordering::Relaxed)
    }

    fn phase(worker: &Worker, index: usize) -> Option<Phase> {
        worker.conns[index].as_ref().map(|c| c.phase)
    }

    /// Takes every backend's slots, as other clients would.
    fn fill(worker: &Worker) {
        while let Pick::Backend(_) = worker.epoch.table.acquire(0, &Tried::default(), 0) {}
    }

    /// A client queued behind full backends, then served when `freed` backends release a slot.
    fn queued_until_slots_free(worker: &mut Worker, freed: &[usize]) -> (usize, u32, UnixStream) {
        fill(worker);
        let client = new_client(worker);
        worker.connect_next(client.0);
        assert_eq!(phase(worker, client.0), Some(Phase::Queued));
        let epoch = worker.epoch.clone();
        freed.iter().for_each(|&backend| worker.release(&epoch, backend));
        worker.serve_queue();
        client
    }

    /// What `run` does after a batch of completions.
    fn end_of_batch(worker: &mut Worker) {
        worker.wake_buffer_waiters();
        if std::mem::take(&mut worker.queue_dirty) {
            worker.serve_queue();
        }
    }

    const RDHUP: i32 = libc::POLLRDHUP as i32;

    fn queue_tick() -> u64 {
        token(0, 0, Op::QueueTick, 0)
    }

    fn accounting_errors(worker: &Worker) -> u64 {
        worker.shared.workers[0].accounting_errors.load(Ordering::Relaxed)
    }

    #[test]
    fn completions_that_match_no_op_in_flight_are_counted_and_change_nothing() {
        let Some(mut worker) = worker(64) else { return };
        worker.next_generation = 7;
        let (index, _) = live_conn(&mut worker, 1);
        // A completion for a slot that holds nobody.
        worker.complete(token(index + 1, 7, Op::Send, 0), 10, 0);
        // One for an earlier connection of the same slot (stale generation).
        worker.complete(token(index, 6, Op::Send, 0), 10, 0);
        // One naming no op at all.
        worker.complete(token(index, 7, Op::Send, 0) | (0x7f << 1), 0, 0);
        assert_eq!(accounting_errors(&worker), 3);
        // The live connection still counts its one op: nothing above was taken for it.
        assert_eq!(worker.conns[index].as_ref().unwrap().inflight, 1);
        // Its own completion is taken; one more than it submitted is not.
        worker.conns[index].as_mut().unwrap().phase = Phase::Closing;
        worker.conns[index].as_mut().unwrap().inflight = 1;
        worker.complete(token(index, 7, Op::PollOut, 1), 0, 0);
        assert!(worker.conns[index].is_none(), "freed at its last completion");
        worker.complete(token(index, 7, Op::PollOut, 1), 0, 0);
        assert_eq!(accounting_errors(&worker), 4);
    }

    #[test]
    fn a_stale_completion_that_took_a_buffer_gives_it_back() {
        let Some(mut worker) = worker(64) else { return };
        assert_eq!(worker.buffers.available(), 4);
        // A real recv takes a buffer, its completion tagged for a connection gone since.
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs).write_all(b"0123456789").unwrap();
        let recv = opcode::Recv::new(types::Fd(ours.as_raw_fd()), std::ptr::null_mut(), 64)
            .buf_group(worker.buffers.group())
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(token(3, 1, Op::Recv, TO_BACKEND));
        worker.push(&[recv]);
        worker.ring.submit_and_wait(1).unwrap();
        let cqe = worker.ring.completion().next().expect("the recv's completion");
        assert_eq!(cqe.result(), 10);
        assert!(cqueue::buffer_select(cqe.flags()).is_some());
        worker.complete(cqe.user_data(), cqe.result(), cqe.flags());
        assert_eq!(accounting_errors(&worker), 1);
        // Counted out of the ring by its completion, then given back.
        assert_eq!(worker.buffers.available(), 4);
    }

    #[test]
    fn a_full_completion_queue_is_counted_and_nothing_is_lost() {
        let Some(mut worker) = worker(64) else { return };
        // Drain the worker's own start-up completions first (none: accept and wake wait).
        let cq_entries = worker.ring.params().cq_entries() as usize;
        let nops = cq_entries + 40;
        for i in 0..nops {
            let entry = opcode::Nop::new().build().user_data(u64::MAX - i as u64);
            worker.push(&[entry]);
            worker.flush_backlog();
            worker.ring.submit().unwrap();
        }
        worker.check_completion_queue().expect("nothing dropped");
        assert_eq!(worker.shared.workers[0].cq_overflows.load(Ordering::Relaxed), 1);
        // Every completion still arrives, the held-back ones once the queue has room.
        let mut seen = 0;
        while seen < nops {
            seen += worker.ring.completion().count();
            worker.ring.submit_and_wait(0).unwrap();
        }
        assert_eq!(seen, nops);
    }

    #[test]
    fn tokens_round_trip() {
        for op in [
            Op::Accept,
            Op::Connect,
            Op::Recv,
            Op::SpliceOut,
            Op::PollOut,
            Op::Cancel,
        ] {
            for dir in [0, 1] {
                for generation in [0, 7, u32::MAX] {
                    let back = untoken(token(123_456, generation, op, dir));
                    assert_eq!(back, (123_456, generation, Some(op), dir));
                }
            }
        }
        let back = untoken(token(MAX_INDEX, u32::MAX, Op::QueueWatch, 1));
        assert_eq!(back, (MAX_INDEX, u32::MAX, Some(Op::QueueWatch), 1));
        assert_eq!(untoken(0x7f << 1).2, None);
    }

    #[test]
    fn a_client_tries_one_backend_and_then_at_most_retries_others() {
        for retries in [0u32, 1, 2] {
            let Some(mut worker) = worker_with(64, 5, 0, retries, 5000) else {
                return;
            };
            let (index, generation, mut client) = new_client(&mut worker);
            worker.connect_next(index);
            let mut connects = 1;
            loop {
                worker.complete(token(index, generation, Op::Connect, 0), -libc::ECONNREFUSED, 0);
                worker.complete(
                    token(index, generation, Op::ConnectTimeout, 0),
                    -libc::ECANCELED,
                    0,
                );
                match worker.conns[index].as_ref() {
                    Some(c) if c.phase == Phase::Connecting && c.backend_index.is_some() => connects += 1,
                    _ => break,
                }
            }
            assert_eq!(connects, retries + 1);
            assert!(
                worker.conns[index].is_none(),
                "closed once its retries are used up"
            );
            let state = &worker.epoch.table.listeners[0].state;
            assert_eq!(state.redispatches[0].load(Ordering::Relaxed), u64::from(retries));
            assert_eq!(state.no_backend[0].load(Ordering::Relaxed), 1);
            let mut packet = [0u8; 256];
            let n = client.read(&mut packet).unwrap();
            let message = String::from_utf8_lossy(&packet[7..n]);
            assert_eq!(&packet[4..7], &[0xff, 0x10, 0x04], "ERR 1040: {message}");
            let expected = format!("{} tried, retries = {retries} used up", retries + 1);
            assert!(message.contains(&expected), "{message}");
            assert_eq!(accounting_errors(&worker), 0);
        }
    }

    #[test]
    fn a_queued_client_that_hangs_up_as_a_slot_frees_leaves_the_slot_to_the_next() {
        let Some(mut worker) = worker_with(64, 1, 1, 3, 60_000) else {
            return;
        };
        fill(&worker);
        let (hung_up, generation, _) = new_client(&mut worker);
        worker.connect_next(hung_up);
        let (live, _, _client) = new_client(&mut worker);
        worker.connect_next(live);
        assert_eq!(queued(&worker), 2);
        // One batch: a slot frees, the queue's tick fires, the first client's hang-up arrives.
        let epoch = worker.epoch.clone();
        worker.release(&epoch, 0);
        worker.complete(queue_tick(), -libc::ETIME, 0);
        worker.complete(token(hung_up, generation, Op::QueueWatch, 0), RDHUP, 0);
        end_of_batch(&mut worker);
        assert_eq!(phase(&worker, hung_up), None, "freed");
        assert_eq!(
            phase(&worker, live),
            Some(Phase::Connecting),
            "the live client has the slot"
        );
        assert_eq!(queued(&worker), 0);
        assert_eq!(accounting_errors(&worker), 0);
    }

    #[test]
    fn a_queued_client_timing_out_and_hanging_up_in_one_batch_leaves_the_queue_once() {
        for hang_up_first in [true, false] {
            let Some(mut worker) = worker_with(64, 1, 1, 3, 50) else {
                return;
            };
            fill(&worker);
            let (index, generation, _client) = new_client(&mut worker);
            worker.connect_next(index);
            assert_eq!((phase(&worker, index), queued(&worker)), (Some(Phase::Queued), 1));
            std::thread::sleep(std::time::Duration::from_millis(80));
            worker.now_ms = clock::now_ms();
            let watch = token(index, generation, Op::QueueWatch, 0);
            if hang_up_first {
                worker.complete(watch, RDHUP, 0);
                worker.complete(queue_tick(), -libc::ETIME, 0);
                end_of_batch(&mut worker);
            } else {
                worker.complete(queue_tick(), -libc::ETIME, 0);
                end_of_batch(&mut worker);
                // Refused: the cancel of its watch and the watch itself are still in flight.
                assert_eq!(phase(&worker, index), Some(Phase::Closing));
                worker.complete(watch, RDHUP, 0);
                worker.complete(token(index, generation, Op::Cancel, 0), -libc::ENOENT, 0);
            }
            assert_eq!(phase(&worker, index), None, "freed");
            assert_eq!((queued(&worker), worker.open), (0, 0));
            assert_eq!(accounting_errors(&worker), 0);
        }
    }

    #[test]
    fn a_client_back_in_the_queue_after_a_refused_connect_ignores_its_old_watch() {
        let Some(mut worker) = worker_with(64, 2, 1, 3, 5000) else {
            return;
        };
        let (index, generation, _client) = queued_until_slots_free(&mut worker, &[0]);
        assert_eq!(worker.conns[index].as_ref().unwrap().backend_index, Some(0));
        worker.complete(token(index, generation, Op::Connect, 0), -libc::ECONNREFUSED, 0);
        assert_eq!((phase(&worker, index), queued(&worker)), (Some(Phase::Queued), 1));
        // The first watch (cancelled), its cancel and the connect's timeout arrive late.
        let watch = token(index, generation, Op::QueueWatch, 0);
        worker.complete(watch, -libc::ECANCELED, 0);
        worker.complete(token(index, generation, Op::Cancel, 0), 0, 0);
        worker.complete(
            token(index, generation, Op::ConnectTimeout, 0),
            -libc::ECANCELED,
            0,
        );
        assert_eq!((phase(&worker, index), queued(&worker)), (Some(Phase::Queued), 1));
        assert_eq!(worker.conns[index].as_ref().unwrap().inflight, 1, "the new watch");
        worker.complete(watch, RDHUP, 0);
        assert_eq!((phase(&worker, index), queued(&worker)), (None, 0));
        assert_eq!(accounting_errors(&worker), 0);
    }

    #[test]
    fn a_pipe_a_splice_filled_after_the_close_began_is_not_pooled_as_empty() {
        let Some(mut worker) = worker(64) else { return };
        let (index, generation) = live_conn(&mut worker, 1);
        let pipe = worker.pipes.take().expect("a pipe");
        worker.conns[index].as_mut().unwrap().flows[TO_BACKEND].pipe = Some(pipe);
        let held = worker.pipes.held();
        worker.abort(index);
        assert_eq!(phase(&worker, index), Some(Phase::Closing));
        // The splice into the pipe completes after the close began, with 100 bytes moved.
        worker.complete(token(index, generation, Op::SpliceIn, TO_BACKEND), 100, 0);
        assert!(worker.conns[index].is_none(), "freed at its last completion");
        assert_eq!(
            worker.pipes.held(),
            held - 1,
            "a pipe holding 100 bytes went back to the pool"
        );
        assert_eq!(accounting_errors(&worker), 0);
    }

    #[test]
    fn a_redispatch_waits_for_every_op_of_the_client_before_the_next_connect() {
        let Some(mut worker) = worker_with(64, 2, 1, 3, 5000) else {
            return;
        };
        let (index, generation, _client) = queued_until_slots_free(&mut worker, &[0, 1]);
        worker.complete(token(index, generation, Op::Connect, 0), 0, 0);
        assert_eq!(phase(&worker, index), Some(Phase::Relaying));
        // The watch, its cancel, the connect's timeout and a recv each way.
        assert_eq!(worker.conns[index].as_ref().unwrap().inflight, 5);
        // The backend closes before its first byte: the client's recv is cancelled.
        worker.complete(token(index, generation, Op::Recv, TO_CLIENT), 0, 0);
        assert_eq!(phase(&worker, index), Some(Phase::Redispatching));
        let op = |op, dir| token(index, generation, op, dir);
        for (user_data, result) in [
            (op(Op::Recv, TO_BACKEND), -libc::ECANCELED),
            (op(Op::Cancel, TO_BACKEND), 0),
            (op(Op::QueueWatch, 0), -libc::ECANCELED),
            (op(Op::Cancel, 0), 0),
        ] {
            worker.complete(user_data, result, 0);
            assert_eq!(phase(&worker, index), Some(Phase::Redispatching));
        }
        worker.complete(op(Op::ConnectTimeout, 0), -libc::ECANCELED, 0);
        let conn = worker.conns[index].as_ref().unwrap();
        assert_eq!((conn.phase, conn.backend_index), (Phase::Connecting, Some(1)));
        assert_eq!(accounting_errors(&worker), 0);
    }

    #[test]
    fn a_recv_that_found_no_buffer_wakes_when_one_came_back_earlier_in_its_batch() {
        let Some(mut worker) = worker(64) else { return };
        let (parked, parked_generation) = live_conn(&mut worker, 2);
        let (sender, sender_generation) = live_conn(&mut worker, 2);
        for index in [parked, sender] {
            let conn = worker.conns[index].as_mut().unwrap();
            conn.backend_index = Some(0);
            conn.flows[TO_BACKEND].state = FlowState::Recv;
            conn.flows[TO_CLIENT].state = FlowState::Recv;
        }
        // Every buffer is out; the sender holds buffer 0 in a send.
        (0..4).for_each(|_| worker.buffers.taken());
        let conn = worker.conns[sender].as_mut().unwrap();
        conn.flows[TO_BACKEND].state = FlowState::Send;
        conn.flows[TO_BACKEND].buffer = Some((0, 0, 10));
        // One batch: the send completes (buffer back), then a recv that ran before it reports
        // the ring empty.
        worker.complete(token(sender, sender_generation, Op::Send, TO_BACKEND), 10, 0);
        worker.complete(
            token(parked, parked_generation, Op::Recv, TO_BACKEND),
            -libc::ENOBUFS,
            0,
        );
        let state = |w: &Worker| w.conns[parked].as_ref().unwrap().flows[TO_BACKEND].state;
        assert_eq!(state(&worker), FlowState::WaitBuffer);
        end_of_batch(&mut worker);
        assert_eq!(state(&worker), FlowState::Recv, "re-armed: a buffer is back");
        assert_eq!(worker.shared.workers[0].buffer_waits.load(Ordering::Relaxed), 1);
        assert_eq!(accounting_errors(&worker), 0);
    }
}
