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

use super::conn::{self, Choice, Conn, Ctx, Event, Intent, Phase, Refusal, TO_BACKEND};
use super::driver::{Completion, Driver, Io, Key, Op, MAX_INDEX};
use super::epoll::Epoll;
use super::pipes::{Pipe, PipePool};
use super::uring::Uring;
use super::{DriverKind, WorkerConfig};
use crate::balance::{Backends, Pick};
use crate::clock;
use crate::config::{OnWriterChange, RelayMode};
use crate::stats::{BackendTraffic, Shared};

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
    /// The last [`Shared::writer_changes`] this worker acted on.
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
    shared: Arc<Shared>,
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
        shared: Arc<Shared>,
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

    /// A removed listener's accept has ended: its socket closes.
    fn close_listening(&mut self, index: usize) {
        if let Some(listening) = self.listening[index].take() {
            self.driver.forget(listening.socket.as_raw_fd());
        }
    }

    fn arm_accept(&mut self, index: usize) {
        let fd = self.listening[index]
            .as_ref()
            .expect("live listener slot")
            .socket
            .as_raw_fd();
        self.start_own(index, Op::Accept, Io::Accept { fd });
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
            Intent::Connected { backend, took_us } => {
                let epoch = self.slot(index).epoch.clone();
                self.latency(&epoch, backend).record_connect(took_us);
                self.traffic(&epoch, backend)
                    .connections
                    .fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Intent::FirstByte { backend, took_us } => {
                let epoch = self.slot(index).epoch.clone();
                self.latency(&epoch, backend).record_first_byte(took_us);
                return None;
            }
            Intent::Lifetime { backend, took_us } => {
                let epoch = self.slot(index).epoch.clone();
                self.latency(&epoch, backend).record_lifetime(took_us);
                return None;
            }
            _ => {}
        }
        // Then what acts on the connection's sockets, pipes and buffers.
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
                    // The backend's close will be a reset: a server still writing a result must
                    // fail at once. After a plain close it could wait, blocked on a window that
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
            | Intent::ConnectFailed { .. }
            | Intent::Connected { .. }
            | Intent::FirstByte { .. }
            | Intent::Lifetime { .. } => {}
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

    fn choice(epoch: &Epoch, listener: usize, pick: Pick) -> Choice {
        match pick {
            Pick::Backend(index) => Choice::Backend {
                index,
                position: index - epoch.table.pools[listener].start,
            },
            Pick::Full => Choice::Full,
            Pick::None => Choice::None,
        }
    }

    /// The next backend not yet tried, once the client's `retries` allow another.
    fn pick(&mut self, index: usize) -> Choice {
        let slot = self.conns[index].as_ref().expect("live connection");
        let table = &slot.epoch.table;
        if slot.conn.tried().len() > table.listeners[slot.listener].config.retries {
            return Choice::None;
        }
        let pick = table.acquire(slot.listener, slot.conn.tried(), self.now_ms);
        Self::choice(&slot.epoch, slot.listener, pick)
    }

    /// Puts a client in the queue if its listener's queue has room.
    fn enqueue(&mut self, index: usize) -> bool {
        let slot = self.conns[index].as_ref().expect("live connection");
        let listener = &slot.epoch.table.listeners[slot.listener];
        let limit = listener.config.queue_limit;
        let admitted = listener
            .state
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q < limit).then_some(q + 1)
            })
            .is_ok();
        if admitted {
            self.queue.push_back((index, slot.generation));
        }
        admitted
    }

    /// A socket for `backend`; a failure is local (descriptors or memory), logged at most once a
    /// second.
    fn open_backend(&mut self, index: usize, backend: usize) -> Result<(), i32> {
        let slot = self.conns[index].as_mut().expect("live connection");
        match new_backend_socket(slot.epoch.table.all[backend].addr) {
            Ok(fd) => {
                slot.backend = Some(fd);
                Ok(())
            }
            Err(e) => {
                if log_due(&mut self.last_socket_warning_ms, self.now_ms) {
                    tracing::warn!(worker = self.id, error = %e, "cannot create a backend socket; client closed with an error (logged at most once a second)");
                }
                Err(e.raw_os_error().unwrap_or(libc::EIO))
            }
        }
    }

    /// Writes what the listener sends a fresh backend connection first: the PROXY header.
    fn handshake(&mut self, index: usize) -> Result<(), i32> {
        let slot = self.conns[index].as_ref().expect("live connection");
        let Some(version) = slot.epoch.table.listeners[slot.listener].config.send_proxy else {
            return Ok(());
        };
        send_proxy_header(slot, version).map_err(|e| {
            tracing::debug!(worker = self.id, error = %e, "cannot send the PROXY header; trying the next backend");
            e.raw_os_error().unwrap_or(libc::EPIPE)
        })
    }

    // ---- accept ----

    fn on_accept(&mut self, index: usize, result: i32, more: bool) {
        let Some(listening) = self.listening.get(index).and_then(Option::as_ref) else {
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            let key = Key {
                index,
                generation: 0,
                op: Op::Accept,
                dir: 0,
            };
            self.accounting_error(0, Some(key), result, "an accept ended on a free listener slot");
            return;
        };
        let (closing, listener) = (listening.closing, listening.listener);
        if self.shared.stopping.load(Ordering::Relaxed) || closing {
            // Shutting down, or the listener was removed: a client that slipped in is closed.
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            if closing && !more {
                self.close_listening(index);
            }
            return;
        }
        if !more {
            let resource = matches!(
                -result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            );
            if result < 0 && resource {
                // Out of descriptors or memory: back off instead of spinning on accept.
                if log_due(&mut self.last_accept_warning_ms, self.now_ms) {
                    tracing::warn!(worker = self.id, error = %errno(result), "accept failed; retrying shortly (logged at most once a second)");
                }
                self.start_own(index, Op::AcceptRetry, Io::Timer { ms: ACCEPT_RETRY_MS });
            } else {
                self.arm_accept(index);
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
        let free = self.free.pop();
        if free.is_none() && self.conns.len() > MAX_INDEX {
            return; // More connections than a key can name (never, under any fd limit).
        }
        // TCP_NODELAY comes from the listening socket (accepted sockets inherit it): no syscall.
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let slot = Slot {
            conn: Conn::new(),
            client,
            backend: None,
            pipes: [None, None],
            epoch: epoch.clone(),
            listener,
            generation,
        };
        let index = put(&mut self.conns, free, slot);
        self.open += 1;
        self.shared.workers[self.id]
            .open
            .store(self.open, Ordering::Relaxed);
        // Others wait already: queue behind them rather than take a slot that frees first.
        let queue_first = epoch.table.listeners[listener]
            .state
            .queued
            .load(Ordering::Relaxed)
            > 0;
        self.step(index, Event::Accepted { queue_first });
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

    fn traffic<'a>(&self, epoch: &'a Epoch, backend: usize) -> &'a BackendTraffic {
        &epoch.table.all[backend].stats.traffic[self.id]
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

    // ---- control, tick, queue ----

    fn on_wake(&mut self, more: bool) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from this worker's eventfd (non-blocking).
        unsafe { libc::read(self.shared.waker(self.id), (&mut value as *mut u64).cast(), 8) };
        if !more {
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
            let Some(slot) = self.conns[index].as_ref() else {
                continue;
            };
            let Some(backend) = slot.conn.backend() else {
                continue;
            };
            let table = &slot.epoch.table;
            let listener = &table.listeners[slot.listener].config;
            if listener.on_writer_change != OnWriterChange::Close || slot.conn.phase() == Phase::Closing {
                continue;
            }
            let b = &table.all[backend];
            if b.writer.is_none() || b.is_writer() {
                continue;
            }
            closed += 1;
            self.step(index, Event::Close);
        }
        if closed > 0 {
            tracing::info!(worker = self.id, closed, "connections to a former writer closed");
        }
    }

    /// Switches new connections to `table`; see the module docs.
    fn reload(&mut self, table: Arc<Backends>, add: NewSockets) {
        for listening in self.listening.iter_mut().flatten() {
            if listening.closing {
                continue;
            }
            let kept = table
                .listeners
                .iter()
                .position(|l| l.config.name == listening.name && l.config.bind == listening.bind);
            match kept {
                Some(listener) => listening.listener = listener,
                None => {
                    // Ends the multishot accept; the slot is freed at its last end.
                    listening.closing = true;
                    let _ = listening.socket.shutdown(std::net::Shutdown::Read);
                }
            }
        }
        for (name, socket) in add {
            let Some(listener) = table.listeners.iter().position(|l| l.config.name == name) else {
                continue;
            };
            let bind = table.listeners[listener].config.bind;
            let listening = Listening {
                socket,
                name,
                bind,
                listener,
                closing: false,
            };
            let free = self.listening.iter().position(Option::is_none);
            let index = put(&mut self.listening, free, listening);
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
        if self.open > 0 && self.idle_tick_ms > 0 {
            self.close_idle();
        }
    }

    /// Closes relaying connections that received no byte for their listener's
    /// `idle_timeout_ms`.
    fn close_idle(&mut self) {
        for index in 0..self.conns.len() {
            let Some(slot) = self.conns[index].as_ref() else {
                continue;
            };
            let Some(since_ms) = slot.conn.relaying_since_ms() else {
                continue;
            };
            let listener = &slot.epoch.table.listeners[slot.listener];
            let idle = listener.config.idle_timeout_ms;
            if idle == 0 || self.now_ms.saturating_sub(since_ms) < idle {
                continue;
            }
            listener.state.idle_closed[self.id].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(worker = self.id, listener = %listener.config.name, idle_ms = idle, "idle connection closed");
            self.step(index, Event::Close);
        }
    }

    /// Gives freed slots to queued clients, oldest first, and refuses those that waited too long.
    fn serve_queue(&mut self) {
        let mut left = self.queue.len();
        while left > 0 {
            left -= 1;
            let Some((index, generation)) = self.queue.pop_front() else {
                break;
            };
            let Some(slot) = self.conns.get(index).and_then(Option::as_ref) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            let Some(since_ms) = slot.conn.queued_since_ms() else {
                continue;
            };
            let epoch = slot.epoch.clone();
            let listener = &epoch.table.listeners[slot.listener];
            // Strictly more: both clocks are whole milliseconds, so a wait of exactly the timeout
            // may be up to a millisecond short of it.
            let pick = if self.now_ms.saturating_sub(since_ms) > listener.config.queue_timeout_ms {
                None
            } else {
                let pick = epoch.table.acquire(slot.listener, slot.conn.tried(), self.now_ms);
                Some(Self::choice(&epoch, slot.listener, pick))
            };
            if pick == Some(Choice::Full) {
                self.queue.push_back((index, generation));
                continue;
            }
            listener.state.queued.fetch_sub(1, Ordering::Relaxed);
            self.step(index, Event::Served(pick));
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

    /// Tells a client why it cannot be served, as a MySQL ERR packet (code 1040, "Too many
    /// connections", which client libraries treat as worth retrying later), with a message that
    /// says which: the queue, no backend (its `retries` used up, every backend of its pool
    /// tried, or none up), or no socket. The machine closes it next.
    fn refuse(&mut self, index: usize, why: Refusal) {
        let id = self.id;
        let slot = self.conns[index].as_ref().expect("live connection");
        let listener = &slot.epoch.table.listeners[slot.listener];
        let name = &listener.config.name;
        let message = match why {
            Refusal::QueueFull | Refusal::QueueTimeout => {
                listener.state.queue_refused[id].fetch_add(1, Ordering::Relaxed);
                let why = if why == Refusal::QueueFull {
                    "every backend is at its maxconn and the queue is full"
                } else {
                    "waited queue_timeout_ms for a backend under its maxconn"
                };
                format!("Too many connections (ringlb listener {name}: {why})")
            }
            Refusal::NoBackend => {
                listener.state.no_backend[id].fetch_add(1, Ordering::Relaxed);
                let tried = slot.conn.tried().len();
                let pool = slot.epoch.table.pools[slot.listener].len();
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
                format!("no backend available (ringlb listener {name}: {why})")
            }
            Refusal::NoSocket(errno) => format!(
                "ringlb cannot open a connection to a backend: {}",
                io::Error::from_raw_os_error(errno)
            ),
        };
        let packet = error_packet(ER_CON_COUNT_ERROR, &message);
        // One small write to a fresh socket whose send buffer is empty: it fits at once, and a
        // client that has gone only makes it fail.
        // SAFETY: sends from a live buffer on a descriptor this connection owns.
        unsafe {
            libc::send(
                slot.client.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        tracing::debug!(worker = id, "client refused: {message}");
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

    /// Wakes directions parked for lack of a buffer, oldest first, one per buffer back. Runs
    /// after each whole batch of ends, so that a park and a recycle in the same batch, in either
    /// order, never strand a direction while a buffer sits free.
    fn wake_buffer_waiters(&mut self) {
        let mut free = self.driver.buffers_available();
        while free > 0 {
            let Some((index, generation, dir)) = self.waiting_for_buffer.pop_front() else {
                return;
            };
            let waiting = self
                .conns
                .get(index)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.generation == generation && s.conn.waits_for_buffer(dir));
            if waiting {
                self.step(index, Event::BufferBack { dir });
                free -= 1;
            }
        }
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

/// Writes the PROXY protocol header for the slot's client to its fresh backend connection,
/// whole: MariaDB reads a v2 header with one read per part and does not retry a short one. The
/// send buffer of a socket that just connected is empty, so the few dozen bytes fit at once; a
/// short or failed write is an error. Two syscalls learn the addresses, only on listeners that
/// send.
fn send_proxy_header(slot: &Slot, version: crate::proxy_protocol::ProxyVersion) -> io::Result<()> {
    let client = socket2::SockRef::from(&slot.client);
    let unknown = || io::Error::new(io::ErrorKind::InvalidData, "client address is not IP");
    let source = client.peer_addr()?.as_socket().ok_or_else(unknown)?;
    let destination = client.local_addr()?.as_socket().ok_or_else(unknown)?;
    let header = crate::proxy_protocol::header(version, source, destination);
    // SAFETY: sends from a live buffer on a descriptor this connection owns.
    let sent = unsafe {
        libc::send(
            slot.backend_fd(),
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

fn errno(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

#[cfg(test)]
mod tests;
