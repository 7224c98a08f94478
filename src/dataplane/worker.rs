//! One worker: a pinned thread with its own I/O driver (io_uring or epoll), its own
//! SO_REUSEPORT listeners and every connection it accepted. Connections never leave their
//! worker, so nothing here is shared but the backend table's atomics and this worker's own
//! counters.
//!
//! The worker does what belongs to no single connection: it accepts (and applies the allow
//! list), keeps the queue of clients waiting for a backend under its `maxconn`, sweeps idle
//! connections, closes those of a former writer, applies reloads, and wakes directions parked for
//! a buffer. Each connection's own decisions are its machine's ([`super::conn`]): the worker
//! feeds it events and carries out its intents, answering its questions (which backend, room in
//! the queue, a pipe, a socket) from the table and its pools, and turning its ops into the
//! driver's ([`super::driver`]). `LIFECYCLE.md` beside this file describes a connection's life.
//!
//! This file holds the loop, the dispatch of ends and the carrying out of intents; each other job
//! has a file of its own under `worker/`: `accept.rs` (accepting, the allow list), `backend.rs`
//! (which backend, its socket, the PROXY header, a failed connect), `queue.rs` (the queue, the
//! error packet, releases, buffer waiters) and `control.rs` (reloads, wakes, a writer change,
//! the idle sweep).
//!
//! # Queue, timeouts, reload
//!
//! A backend at its `maxconn` takes no new connection; when every backend that could take one is
//! full, the client waits in this worker's queue (with only a watch for its hang-up in flight,
//! so that a client that leaves is dropped from the queue at once) until a slot frees — on this
//! worker, or on another, which then wakes this one through its eventfd — or until
//! `queue_timeout_ms`, when it gets a MySQL "Too many connections" error and is closed.
//! A periodic tick, armed only while there are connections, closes those idle past
//! `idle_timeout_ms` and expires queued clients.
//!
//! A reload arrives as [`Control`] messages with the new backend table (held aside, then applied
//! once every worker holds it: all workers switch or none does): listeners that stay
//! keep their sockets, removed ones stop accepting, added ones arrive as sockets bound by the
//! main thread. Each connection holds the table it was opened under ([`Epoch`]) until it
//! closes, so established connections never notice a reload.
//!
//! # Ownership
//!
//! A connection's slot, sockets and pipes are released only when its machine says
//! [`Intent::Free`], which it does only when closing with nothing in flight; every op carries the
//! slot's generation, so an end that arrives for a slot freed (and perhaps reused) since is
//! recognised. An end that matches no op in flight would be a bug: it is counted and logged in
//! every build and changes nothing (a buffer it took goes back).
//!
//! Buffers: a receive that finds none left parks its direction; after each batch of ends, parked
//! directions are re-armed, oldest first, one per buffer back, so a buffer returned anywhere in
//! the batch wakes a direction parked anywhere in it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::conn::{self, Choice, Conn, Ctx, Event, HandshakeFailure, Intent, Phase, Refusal, TO_BACKEND};
use super::driver::{Completion, Driver, Io, Key, Op, MAX_INDEX};
use super::epoll::Epoll;
use super::pipes::{Pipe, PipePool};
use super::uring::Uring;
use super::{DriverKind, WorkerConfig};
use crate::balance::{BackendTraffic, Backends, Pick};
use crate::clock;
use crate::config::{OnWriterChange, RelayMode};
use crate::shared::SharedState;

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
/// a poll cannot wait for room there (see the machine's `on_poll_out`). At most 100 tries a
/// second for such a connection, each a few microseconds.
const WRITE_RETRY_MS: u64 = 10;
/// Tick while clients wait in the queue: the precision of `queue_timeout_ms`.
const QUEUE_TICK_MS: u64 = 20;
/// Bounds of the idle-sweep tick (a quarter of the shortest `idle_timeout_ms`).
const IDLE_TICK_MIN_MS: u64 = 20;
const IDLE_TICK_MAX_MS: u64 = 1000;
/// MySQL's ER_CON_COUNT_ERROR: what a client gets when it cannot be served.
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

/// One backend table as this worker uses it. Connections hold the epoch they were opened under
/// (an `Rc`: no atomics).
struct Epoch {
    table: Arc<Backends>,
    /// Backend addresses, by backend index, for the connect (which reads it until it ends).
    addrs: Box<[SockAddr]>,
    /// Last connect-failure warning per backend, ms.
    last_warning_ms: Box<[Cell<u64>]>,
    /// Idle-sweep tick, ms; 0 when no listener has an idle timeout.
    idle_tick_ms: u64,
}

impl Epoch {
    fn new(table: Arc<Backends>) -> Epoch {
        let idle_tick_ms = table
            .listeners
            .iter()
            .map(|l| l.config.idle_timeout_ms)
            .filter(|&ms| ms > 0)
            .min()
            .map_or(0, |ms| (ms / 4).clamp(IDLE_TICK_MIN_MS, IDLE_TICK_MAX_MS));
        Epoch {
            addrs: table.all.iter().map(|b| SockAddr::from(b.addr)).collect(),
            last_warning_ms: table.all.iter().map(|_| Cell::new(0)).collect(),
            idle_tick_ms,
            table,
        }
    }
}

/// One listening socket of this worker. Its index is the accept's key.
struct Listening {
    socket: Socket,
    name: String,
    bind: SocketAddr,
    /// Index of its listener in the current epoch's table.
    listener: usize,
    /// Removed by a reload: its accept was ended, and the slot is freed at its last end.
    closing: bool,
}

/// A connection's slot: its machine and what the machine's intents act on.
struct Slot {
    conn: Conn,
    client: OwnedFd,
    backend: Option<OwnedFd>,
    /// The pipe each direction holds while it splices.
    pipes: [Option<Pipe>; 2],
    epoch: Rc<Epoch>,
    /// Listener index in `epoch`.
    listener: usize,
    /// Distinguishes this connection from earlier and later ones in the same slot.
    generation: u32,
}

impl Slot {
    fn backend_fd(&self) -> RawFd {
        self.backend.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    /// The socket `dir` reads from.
    fn src(&self, dir: usize) -> RawFd {
        if dir == TO_BACKEND {
            self.client.as_raw_fd()
        } else {
            self.backend_fd()
        }
    }

    /// The socket `dir` writes to.
    fn dst(&self, dir: usize) -> RawFd {
        if dir == TO_BACKEND {
            self.backend_fd()
        } else {
            self.client.as_raw_fd()
        }
    }

    fn pipe(&self, dir: usize) -> &Pipe {
        self.pipes[dir]
            .as_ref()
            .expect("a splice names a pipe its direction holds")
    }
}

/// Runs a worker until the process exits. Reports start-up success or failure on `ready`.
/// `listeners` are this worker's sockets in the order of the table's listeners.
pub fn run(
    config: WorkerConfig,
    listeners: Vec<Socket>,
    shared: Arc<SharedState>,
    control: Receiver<Control>,
    ready: Sender<Result<(), (usize, String)>>,
) {
    let id = config.id;
    if let Some(core) = config.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(worker = id, core = core.id, "cannot pin worker to its core");
        }
    }
    let result = match config.driver {
        DriverKind::IoUring => Uring::new(&config.tuning, shared.clone(), id)
            .map(|driver| Worker::new(driver, &config, listeners, shared, control))
            .map(|worker| serve(worker, ready.clone())),
        DriverKind::Epoll => Epoll::new(&config.tuning)
            .map(|driver| Worker::new(driver, &config, listeners, shared, control))
            .map(|worker| serve(worker, ready.clone())),
    };
    if let Err(e) = result {
        let _ = ready.send(Err((id, e.to_string())));
    }
}

/// Reports a started worker and runs it until the process exits.
fn serve<D: Driver>(mut worker: Worker<D>, ready: Sender<Result<(), (usize, String)>>) {
    let id = worker.id;
    let _ = ready.send(Ok(()));
    drop(ready);
    if let Err(e) = worker.run() {
        // A worker cannot lose its driver and go on; the process must stop so a peer takes over.
        tracing::error!(worker = id, error = %e, "worker's I/O driver failed");
        std::process::exit(70);
    }
}

struct Worker<D: Driver> {
    driver: D,
    /// `[tuning] relay = "splice"`.
    splice_only: bool,
    pipes: PipePool,
    conns: Vec<Option<Slot>>,
    free: Vec<usize>,
    next_generation: u32,
    /// Client connections held (any phase).
    open: u64,
    listening: Vec<Option<Listening>>,
    /// The table new connections use.
    epoch: Rc<Epoch>,
    control: Receiver<Control>,
    /// A reload's table and new sockets, held until every worker has them ([`Control`]).
    prepared: Option<(Arc<Backends>, NewSockets)>,
    /// The idle sweep's interval: the shortest of every table this worker's connections use.
    idle_tick_ms: u64,
    idle_tick_armed: bool,
    /// The queue's tick ([`QUEUE_TICK_MS`]), armed while clients are queued.
    queue_tick_armed: bool,
    /// Clients waiting for a backend under its `maxconn`: (slot, generation), oldest first.
    queue: VecDeque<(usize, u32)>,
    /// A slot may have freed for a queued client: serve the queue after this batch.
    queue_dirty: bool,
    /// The last [`SharedState::writer_changes`] this worker acted on.
    writer_changes_seen: u64,
    /// This worker freed a slot that clients wait for since it last served its queue: what its
    /// own queue does not take, another worker's may (they are woken then, and only then).
    released_for_waiters: bool,
    /// Read once per batch of ends.
    now_ms: u64,
    now_us: u64,
    /// Last rejected-client log line, ms: at most one a second.
    last_rejection_log_ms: u64,
    /// Last failed-accept log line, ms: at most one a second, though accept is retried ten
    /// times a second while descriptors run short.
    last_accept_warning_ms: u64,
    /// Last line about a backend socket that could not be created, ms: at most one a second.
    last_socket_warning_ms: u64,
    /// Last accounting-error log line, ms: at most one a second.
    last_accounting_log_ms: u64,
    shared: Arc<SharedState>,
    id: usize,
    /// The backlog length last published to `WorkerStats::backlog`.
    backlog_published: u64,
    /// Directions parked for lack of a buffer: (slot, generation, direction).
    waiting_for_buffer: VecDeque<(usize, u32, usize)>,
    completions: Vec<Completion>,
    /// A machine's intents being carried out (kept to reuse its allocation).
    intents: Vec<Intent>,
}

impl<D: Driver> Worker<D> {
    fn new(
        driver: D,
        config: &WorkerConfig,
        listeners: Vec<Socket>,
        shared: Arc<SharedState>,
        control: Receiver<Control>,
    ) -> Worker<D> {
        let tuning = &config.tuning;
        let table = shared.table();
        let listening = listeners
            .into_iter()
            .zip(table.listeners.iter())
            .enumerate()
            .map(|(listener, (socket, l))| {
                Some(Listening {
                    socket,
                    name: l.config.name.clone(),
                    bind: l.config.bind,
                    listener,
                    closing: false,
                })
            })
            .collect();
        let now_us = clock::now_us();
        let mut worker = Worker {
            driver,
            splice_only: tuning.relay == RelayMode::Splice,
            pipes: PipePool::new(tuning.pipes_kept as usize, tuning.pipe_bytes as usize),
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            open: 0,
            listening,
            epoch: Rc::new(Epoch::new(table)),
            control,
            prepared: None,
            idle_tick_ms: 0,
            idle_tick_armed: false,
            queue_tick_armed: false,
            queue: VecDeque::new(),
            queue_dirty: false,
            writer_changes_seen: shared.writer_changes.load(Ordering::Acquire),
            released_for_waiters: false,
            now_ms: now_us / 1000,
            now_us,
            last_rejection_log_ms: 0,
            last_accept_warning_ms: 0,
            last_socket_warning_ms: 0,
            last_accounting_log_ms: 0,
            shared,
            id: config.id,
            backlog_published: 0,
            waiting_for_buffer: VecDeque::new(),
            completions: Vec::with_capacity(tuning.ring_entries as usize),
            intents: Vec::with_capacity(16),
        };
        worker.idle_tick_ms = worker.epoch.idle_tick_ms;
        for index in 0..worker.listening.len() {
            worker.arm_accept(index);
        }
        worker.arm_wake();
        worker
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            let mut completions = std::mem::take(&mut self.completions);
            self.driver.wait(&mut completions)?;
            self.now_us = clock::now_us();
            self.now_ms = self.now_us / 1000;
            for completion in completions.drain(..) {
                self.complete(completion);
            }
            self.completions = completions;
            self.end_of_batch();
        }
    }

    /// What follows each batch of ends.
    fn end_of_batch(&mut self) {
        self.wake_buffer_waiters();
        if std::mem::take(&mut self.queue_dirty) {
            self.serve_queue();
        }
        self.arm_ticks();
        self.publish_backlog();
    }

    /// Publishes the backlog's length for the metrics when it changed (it is almost always 0).
    fn publish_backlog(&mut self) {
        let len = self.driver.backlog() as u64;
        if len != self.backlog_published {
            self.backlog_published = len;
            self.shared.workers[self.id].backlog.store(len, Ordering::Relaxed);
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            now_ms: self.now_ms,
            now_us: self.now_us,
            buf_bytes: self.driver.buf_bytes(),
            splice_only: self.splice_only,
        }
    }

    /// A worker op (no connection's): generation 0.
    fn start_own(&mut self, index: usize, op: Op, io: Io<'_>) {
        let key = Key {
            index,
            generation: 0,
            op,
            dir: 0,
        };
        self.driver.start(key, io);
    }

    /// Watches this worker's eventfd: reloads and freed queue slots wake the worker.
    fn arm_wake(&mut self) {
        let fd = self.shared.waker(self.id);
        self.start_own(0, Op::Wake, Io::Wake { fd });
    }

    /// Arms the ticks that something needs: the queue's while clients are queued (their
    /// timeout), the idle sweep's while connections live under an idle timeout. A worker with
    /// neither never wakes on its own.
    fn arm_ticks(&mut self) {
        if !self.queue_tick_armed && !self.queue.is_empty() {
            self.queue_tick_armed = true;
            self.start_own(0, Op::QueueTick, Io::Timer { ms: QUEUE_TICK_MS });
        }
        if !self.idle_tick_armed && self.open > 0 && self.idle_tick_ms > 0 {
            self.idle_tick_armed = true;
            let ms = self.idle_tick_ms;
            self.start_own(0, Op::Tick, Io::Timer { ms });
        }
    }

    // ---- ends of ops ----

    fn complete(&mut self, completion: Completion) {
        let Completion {
            key,
            raw,
            result,
            buffer,
            more,
        } = completion;
        let Some(key) = key else {
            if let Some(id) = buffer {
                self.driver.recycle(id);
            }
            self.accounting_error(raw, None, result, "an end names no known op");
            return;
        };
        match key.op {
            Op::Accept => self.on_accept(key.index, result, more),
            Op::AcceptRetry => match self.listening.get(key.index).and_then(Option::as_ref) {
                Some(slot) if slot.closing => self.close_listening(key.index),
                Some(_) => self.arm_accept(key.index),
                None => {
                    self.accounting_error(raw, Some(key), result, "an accept retry for a free listener slot")
                }
            },
            Op::Wake => self.on_wake(more),
            Op::Tick => self.on_idle_tick(),
            Op::QueueTick => {
                self.queue_tick_armed = false;
                // Served after the whole batch, so that a hang-up ending in it counts first.
                self.queue_dirty = true;
            }
            op => {
                let live = self
                    .conns
                    .get(key.index)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.generation == key.generation && s.conn.inflight() > 0);
                if !live {
                    // No op of this connection is in flight: the end is for a slot freed (and
                    // perhaps reused) since, or one more than was started. Never taken for the
                    // current occupant's; a buffer it took goes straight back.
                    if let Some(id) = buffer {
                        self.driver.recycle(id);
                    }
                    self.accounting_error(raw, Some(key), result, "an end matches no op in flight");
                    return;
                }
                let event = Event::Done {
                    op,
                    dir: key.dir,
                    result,
                    buffer,
                };
                self.step(key.index, event);
            }
        }
    }

    /// An end that matches nothing this worker expects: a bug, but never fatal. Counted
    /// (`ringlb_worker_accounting_errors_total`) and logged at most once a second, in every build.
    fn accounting_error(&mut self, raw: u64, key: Option<Key>, result: i32, what: &str) {
        self.shared.workers[self.id]
            .accounting_errors
            .fetch_add(1, Ordering::Relaxed);
        if log_due(&mut self.last_accounting_log_ms, self.now_ms) {
            tracing::error!(worker = self.id, raw, key = ?key, result, "{what}; ignored (a bug: please report it; counted in ringlb_worker_accounting_errors_total, logged at most once a second)");
        }
    }

    // ---- a connection's machine ----

    /// Feeds `event` to connection `index`'s machine and carries out its intents, answering its
    /// questions as they come (a question is always the last intent of a step, so its answer's
    /// intents follow in order).
    fn step(&mut self, index: usize, event: Event) {
        let ctx = self.ctx();
        let mut intents = std::mem::take(&mut self.intents);
        self.conns[index]
            .as_mut()
            .expect("live connection")
            .conn
            .step(&ctx, event, &mut intents);
        let mut next = 0;
        while next < intents.len() {
            let intent = intents[next];
            next += 1;
            if let Some(answer) = self.execute(index, intent) {
                self.conns[index]
                    .as_mut()
                    .expect("a question comes from a live connection")
                    .conn
                    .step(&ctx, answer, &mut intents);
            }
        }
        intents.clear();
        self.intents = intents;
    }

    /// Carries out one intent of connection `index`; the answer, for a question.
    fn execute(&mut self, index: usize, intent: Intent) -> Option<Event> {
        let id = self.id;
        // First what needs the whole worker: questions, the pool, counters, histograms.
        match intent {
            Intent::Pick => return Some(Event::Picked(self.pick(index))),
            Intent::Enqueue => return Some(Event::Enqueued(self.enqueue(index))),
            Intent::OpenBackend { backend } => {
                return Some(Event::BackendOpened(self.open_backend(index, backend)))
            }
            Intent::Handshake => return Some(Event::HandshakeDone(self.handshake(index))),
            Intent::TakePipe { dir } => {
                let capacity = match self.pipes.take() {
                    Ok(pipe) => {
                        let capacity = pipe.capacity() as u32;
                        self.slot(index).pipes[dir] = Some(pipe);
                        Some(capacity)
                    }
                    Err(e) => {
                        tracing::debug!(worker = id, error = %e, "no pipe; staying on the buffered path");
                        None
                    }
                };
                return Some(Event::PipeTaken { dir, capacity });
            }
            Intent::Refuse(why) => {
                self.refuse(index, why);
                return None;
            }
            Intent::Free => {
                self.free_slot(index);
                return None;
            }
            Intent::Release { backend } => {
                let epoch = self.slot(index).epoch.clone();
                self.release(&epoch, backend);
                return None;
            }
            Intent::ConnectFailed { backend, errno } => {
                let epoch = self.slot(index).epoch.clone();
                let error = if errno == conn::CLOSED_BEFORE_FIRST_BYTE {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed the connection before sending a byte",
                    )
                } else {
                    io::Error::from_raw_os_error(errno)
                };
                self.connect_failed(&epoch, backend, &error);
                return None;
            }
            _ => {}
        }
        // Then what acts on the connection alone: its sockets, pipes and buffers, and its
        // backend's counters and histograms (borrowed in place: some run for every message).
        let Worker {
            conns,
            driver,
            pipes,
            waiting_for_buffer,
            shared,
            ..
        } = self;
        let slot = conns[index].as_mut().expect("live connection");
        let key = |op, dir| Key {
            index,
            generation: slot.generation,
            op,
            dir,
        };
        match intent {
            Intent::Connect => {
                let table = &slot.epoch.table;
                let backend = slot.conn.backend().expect("connecting to a backend");
                let config = &table.listeners[slot.listener].config;
                let tried = slot.conn.tried();
                // The short redispatch timeout only while this client may still go elsewhere.
                let others_left = tried.len() <= config.retries && table.has_candidate(slot.listener, tried);
                let timeout_ms = if others_left {
                    config.connect_timeout_ms.min(REDISPATCH_AFTER_MS)
                } else {
                    config.connect_timeout_ms
                };
                let io = Io::Connect {
                    fd: slot.backend_fd(),
                    addr: &slot.epoch.addrs[backend],
                    timeout_ms,
                };
                driver.start(key(Op::Connect, 0), io);
            }
            Intent::Recv { dir } => driver.start(key(Op::Recv, dir), Io::Recv { fd: slot.src(dir) }),
            Intent::Send {
                dir,
                buffer,
                offset,
                len,
            } => {
                let io = Io::Send {
                    fd: slot.dst(dir),
                    buffer,
                    offset,
                    len,
                };
                driver.start(key(Op::Send, dir), io);
            }
            Intent::SpliceIn { dir, len } => {
                let (from, to) = (slot.src(dir), slot.pipe(dir).write_fd());
                driver.start(key(Op::SpliceIn, dir), Io::Splice { from, to, len });
            }
            Intent::SpliceOut { dir, len } => {
                let (from, to) = (slot.pipe(dir).read_fd(), slot.dst(dir));
                driver.start(key(Op::SpliceOut, dir), Io::Splice { from, to, len });
            }
            Intent::PollIn { dir } => {
                let io = Io::Poll {
                    fd: slot.src(dir),
                    events: libc::POLLIN as u32,
                };
                driver.start(key(Op::PollIn, dir), io);
            }
            Intent::PollOut { dir } => {
                let io = Io::Poll {
                    fd: slot.dst(dir),
                    events: libc::POLLOUT as u32,
                };
                driver.start(key(Op::PollOut, dir), io);
            }
            Intent::WriteRetry { dir } => {
                driver.start(key(Op::WriteRetry, dir), Io::Timer { ms: WRITE_RETRY_MS });
            }
            Intent::QueueWatch => {
                // A queued client has no other op in flight: without this, its hang-up would go
                // unseen and a freed slot could go to it while a live client waits.
                let io = Io::Poll {
                    fd: slot.client.as_raw_fd(),
                    events: libc::POLLRDHUP as u32,
                };
                driver.start(key(Op::QueueWatch, 0), io);
            }
            Intent::Cancel { op, dir } => {
                // Every op the machine cancels waits on the client: a read, a poll, the watch.
                let (target, fd) = (key(op, dir), slot.client.as_raw_fd());
                driver.start(key(Op::Cancel, dir), Io::Cancel { target, fd });
            }
            Intent::Recycle { buffer } => driver.recycle(buffer),
            Intent::ReturnPipe { dir, empty } => {
                if let Some(pipe) = slot.pipes[dir].take() {
                    pipes.give(pipe, empty);
                }
            }
            Intent::CloseBackend => {
                if let Some(fd) = slot.backend.take() {
                    driver.forget(fd.as_raw_fd());
                }
            }
            Intent::Connected { backend, took_us } => {
                latency(&slot.epoch, backend, id).record_connect(took_us);
                let traffic = &slot.epoch.table.all[backend].stats.traffic[id];
                traffic.connections.fetch_add(1, Ordering::Relaxed);
            }
            Intent::FirstByte { backend, took_us } => {
                latency(&slot.epoch, backend, id).record_first_byte(took_us);
            }
            Intent::Lifetime { backend, took_us } => {
                latency(&slot.epoch, backend, id).record_lifetime(took_us);
            }
            Intent::Redispatched => {
                let listener = &slot.epoch.table.listeners[slot.listener];
                listener.state.redispatches[id].fetch_add(1, Ordering::Relaxed);
            }
            Intent::CountBytes { backend, dir, bytes } => {
                // Borrowed in place: this runs for every send and splice.
                let traffic = &slot.epoch.table.all[backend].stats.traffic[id];
                let counter = if dir == TO_BACKEND {
                    &traffic.bytes_to_backend
                } else {
                    &traffic.bytes_to_client
                };
                counter.fetch_add(u64::from(bytes), Ordering::Relaxed);
            }
            Intent::ParkForBuffer { dir } => {
                waiting_for_buffer.push_back((index, slot.generation, dir));
                shared.workers[id].buffer_waits.fetch_add(1, Ordering::Relaxed);
            }
            Intent::LeftQueue => {
                let listener = &slot.epoch.table.listeners[slot.listener];
                listener.state.queued.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(worker = id, listener = %listener.config.name, "queued client left");
                // Its queue entry is skipped later (no longer queued); the slot it would have
                // taken goes to the next client.
            }
            Intent::HalfClose { dir } => {
                // SAFETY: shutdown on a descriptor this connection owns; it touches no memory.
                unsafe { libc::shutdown(slot.dst(dir), libc::SHUT_WR) };
            }
            Intent::Abort => {
                if let Some(backend) = &slot.backend {
                    // With a zero linger the backend socket's close (once its ops have ended)
                    // sends a reset, after the FIN of the shutdown below: a server still writing
                    // a result must fail at once. After a plain close it could wait, blocked on a window that
                    // this closed socket no longer opens, until its zero-window probes back off
                    // to tens of seconds (measured: a MariaDB session left 30 s with 3.6 MB
                    // unsent). The client's side keeps its FIN, so that an error packet written
                    // to it just before is still read.
                    let _ = socket2::SockRef::from(backend).set_linger(Some(std::time::Duration::ZERO));
                }
                for fd in [slot.client.as_raw_fd(), slot.backend_fd()] {
                    if fd >= 0 {
                        // SAFETY: shutdown on descriptors this connection owns; it touches no
                        // memory. It ends every op in flight on them.
                        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    }
                }
            }
            // Carried out above.
            Intent::Pick
            | Intent::Enqueue
            | Intent::OpenBackend { .. }
            | Intent::Handshake
            | Intent::TakePipe { .. }
            | Intent::Refuse(_)
            | Intent::Free
            | Intent::Release { .. }
            | Intent::ConnectFailed { .. } => {}
        }
        None
    }

    fn slot(&mut self, index: usize) -> &mut Slot {
        self.conns[index].as_mut().expect("live connection")
    }

    /// The machine freed connection `index`: its slot, sockets and (already returned) pipes go.
    fn free_slot(&mut self, index: usize) {
        let mut slot = self.conns[index].take().expect("live connection");
        self.free.push(index);
        for pipe in slot.pipes.iter_mut().filter_map(Option::take) {
            // The machine returns every pipe before it frees; one left here may hold bytes.
            self.pipes.give(pipe, false);
        }
        self.driver.forget(slot.client.as_raw_fd());
        if let Some(fd) = &slot.backend {
            self.driver.forget(fd.as_raw_fd());
        }
        self.open -= 1;
        self.shared.workers[self.id]
            .open
            .store(self.open, Ordering::Relaxed);
        if self.open == 0 {
            // No connection of an older table is left: the current one's sweep is enough.
            self.idle_tick_ms = self.epoch.idle_tick_ms;
        }
        // Dropping `slot` closes both sockets.
    }

    // ---- questions ----

    // ---- accept ----

    fn traffic<'a>(&self, epoch: &'a Epoch, backend: usize) -> &'a BackendTraffic {
        &epoch.table.all[backend].stats.traffic[self.id]
    }

    // ---- control, tick, queue ----
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

/// Worker `worker`'s histograms of `backend` (its own lock: uncontended but while the admin
/// thread merges).
fn latency(
    epoch: &Epoch,
    backend: usize,
    worker: usize,
) -> std::sync::MutexGuard<'_, crate::latency::Latency> {
    epoch.table.all[backend].stats.latency[worker]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
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

fn errno(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

mod accept;
mod backend;
mod control;
mod queue;
#[cfg(test)]
mod tests;
