//! The epoll driver, for where io_uring is refused (the default seccomp profiles of Docker and
//! containerd, `kernel.io_uring_disabled`): the same ops and the same promises as the io_uring
//! driver ([`super::driver`]), made of non-blocking calls.
//!
//! Every socket is registered once, edge-triggered, for reading, writing and the peer's
//! half-close. The driver remembers what each edge said (`readable`, `writable`, `hup`) until a
//! call says otherwise (`EAGAIN`, or a short read or write), and keeps at most one waiting op per
//! side of each socket: a receive, accept or readability poll on the read side; a send, connect
//! or writability poll on the write side; the queue's hang-up watch beside them. An op is tried
//! when it starts if its side is known to be ready (a send always: sockets are almost always
//! writable), and otherwise when the next edge comes. Splices are tried at once and end with
//! whatever the call returned, `EAGAIN` included, exactly as io_uring's non-blocking splice does.
//!
//! A receive takes a buffer only when its socket is readable, and gives it back when the call
//! found nothing, so an idle connection holds none (as with io_uring's provided buffers). Ends
//! are queued and delivered by the next [`Driver::wait`], never from inside [`Driver::start`].
//! Timers (the ticks, the write retry, each connect's timeout) sit in a heap; `epoll_wait`
//! sleeps until the nearest one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::driver::{Completion, Driver, Io, Key, Op};
use crate::clock;
use crate::config::TuningConfig;

/// Accepts per listener per edge before other sockets get their turn (the rest are taken on the
/// next pass, without waiting for another edge).
const ACCEPTS_PER_PASS: usize = 64;
/// Events read per `epoll_wait`.
const EVENTS: usize = 256;
/// Batches of ends delivered one after another without asking the kernel for new events: an end
/// that is ready at once (a send that went through) is worth delivering without a syscall, but
/// sockets that became ready meanwhile must not wait long for their turn.
const BATCHES_PER_POLL: u32 = 8;

#[derive(Debug, Clone, Copy)]
enum ReadOp {
    Accept,
    Wake,
    Recv,
    PollIn,
}

#[derive(Debug, Clone, Copy)]
enum WriteOp {
    Send {
        buffer: u16,
        offset: u32,
        len: u32,
    },
    PollOut,
    /// A connect in progress, bounded by the timer numbered `timer`.
    Connect {
        timer: u64,
    },
}

/// What the driver knows of one descriptor, by its number.
#[derive(Debug, Default, Clone, Copy)]
struct FdState {
    registered: bool,
    readable: bool,
    writable: bool,
    /// The peer half-closed, or the socket hung up or failed: final.
    hup: bool,
    read: Option<(Key, ReadOp)>,
    write: Option<(Key, WriteOp)>,
    /// The queue's hang-up watch.
    watch: Option<Key>,
}

#[derive(Debug)]
struct Timer {
    deadline_us: u64,
    /// Unique, in start order: ties end in order, and a connect finds its own timer.
    seq: u64,
    /// The connect it bounds (its socket), or `None` for a plain timer.
    connect_fd: Option<RawFd>,
    key: Key,
}

// The heap orders timers by deadline, then start order (`seq` is unique, so that is all).
impl PartialEq for Timer {
    fn eq(&self, other: &Timer) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Timer) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Timer) -> std::cmp::Ordering {
        (self.deadline_us, self.seq).cmp(&(other.deadline_us, other.seq))
    }
}

/// The receive buffers: `count` of `buf_bytes` each in one allocation whose pages become
/// resident only when first written.
struct Buffers {
    memory: Box<[u8]>,
    buf_bytes: u32,
    free: Vec<u16>,
}

impl Buffers {
    fn new(count: u16, buf_bytes: u32) -> Buffers {
        Buffers {
            memory: vec![0u8; usize::from(count) * buf_bytes as usize].into_boxed_slice(),
            buf_bytes,
            // Popped from the end: the most recently used (warmest) buffer goes out first.
            free: (0..count).rev().collect(),
        }
    }

    fn range(&self, id: u16) -> std::ops::Range<usize> {
        let start = usize::from(id) * self.buf_bytes as usize;
        start..start + self.buf_bytes as usize
    }
}

pub struct Epoll {
    epoll: OwnedFd,
    buffers: Buffers,
    fds: Vec<FdState>,
    /// Ends to deliver with the next wait.
    ready: VecDeque<Completion>,
    timers: BinaryHeap<Reverse<Timer>>,
    next_timer: u64,
    /// Listeners whose last pass stopped at [`ACCEPTS_PER_PASS`]: accepted on from next pass.
    accept_again: Vec<RawFd>,
    events: Vec<libc::epoll_event>,
    /// Batches delivered since the last `epoll_wait` ([`BATCHES_PER_POLL`]).
    unpolled: u32,
}

/// Makes `fd` non-blocking (the listening sockets are bound blocking; io_uring does not care,
/// a plain `accept4` does); the error as a negative errno.
fn nonblocking(fd: RawFd) -> Result<(), i32> {
    // SAFETY: F_GETFL takes no argument and returns an int; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: F_SETFL takes an int; no memory is passed.
    let ok = flags >= 0 && unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } >= 0;
    if ok {
        Ok(())
    } else {
        Err(-errno())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

impl Epoll {
    pub fn new(tuning: &TuningConfig) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes a flag and returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            buffers: Buffers::new(tuning.buffers, tuning.buffer_bytes),
            fds: Vec::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            next_timer: 0,
            accept_again: Vec::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
            unpolled: 0,
        })
    }

    fn state(&mut self, fd: RawFd) -> &mut FdState {
        let i = fd as usize;
        if self.fds.len() <= i {
            self.fds.resize(i + 1, FdState::default());
        }
        &mut self.fds[i]
    }

    /// Registers `fd` (edge-triggered, every event) unless it is; the error as a negative errno.
    fn register(&mut self, fd: RawFd) -> Result<(), i32> {
        if fd < 0 {
            return Err(-libc::EBADF);
        }
        if self.state(fd).registered {
            return Ok(());
        }
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: fd as u64,
        };
        // SAFETY: registers a descriptor the worker owns; the event is read during the call.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if rc < 0 {
            return Err(-errno());
        }
        // The kernel reports what is ready now as the first edge.
        *self.state(fd) = FdState {
            registered: true,
            ..FdState::default()
        };
        Ok(())
    }

    fn end(&mut self, key: Key, result: i32, buffer: Option<u16>, more: bool) {
        self.ready.push_back(Completion {
            key: Some(key),
            raw: 0,
            result,
            buffer,
            more,
        });
    }

    fn add_timer(&mut self, key: Key, ms: u64, connect_fd: Option<RawFd>) -> u64 {
        self.next_timer += 1;
        let seq = self.next_timer;
        self.timers.push(Reverse(Timer {
            deadline_us: clock::now_us() + ms * 1000,
            seq,
            connect_fd,
            key,
        }));
        seq
    }

    /// Runs the read side's op of `fd` if the socket may have something for it.
    fn try_read(&mut self, fd: RawFd) {
        let state = *self.state(fd);
        let Some((key, op)) = state.read else {
            return;
        };
        if !state.readable {
            return;
        }
        match op {
            ReadOp::Accept => self.accept(fd, key),
            ReadOp::Wake => {
                // The worker reads the eventfd, which arms the next edge.
                self.state(fd).readable = false;
                self.end(key, libc::POLLIN as i32, None, true);
            }
            ReadOp::PollIn => {
                self.state(fd).read = None;
                self.end(key, libc::POLLIN as i32, None, false);
            }
            ReadOp::Recv => {
                let Some(id) = self.buffers.free.pop() else {
                    // `readable` may be stale (a short splice or a receive that filled its
                    // buffer leaves it set): end with ENOBUFS only when bytes (or the end) are
                    // really there, as io_uring's poll-first receive does, so that a direction is
                    // parked for a buffer only when it will take the one it is woken for.
                    let mut byte = 0u8;
                    // SAFETY: peeks at most one byte into a live byte; nothing is consumed.
                    let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
                    let result = match n {
                        n if n > 0 => -libc::ENOBUFS,
                        // The end of the stream needs no buffer.
                        0 => 0,
                        _ => match errno() {
                            libc::EAGAIN | libc::EINTR => {
                                self.state(fd).readable = false;
                                return;
                            }
                            // A reset the peek consumed is this receive's end, as it would be.
                            e => -e,
                        },
                    };
                    self.state(fd).read = None;
                    self.end(key, result, None, false);
                    return;
                };
                let range = self.buffers.range(id);
                let len = range.len();
                let buf = &mut self.buffers.memory[range];
                // SAFETY: receives into a live buffer of `len` bytes that nothing else uses.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), len, 0) };
                if n < 0 {
                    let e = errno();
                    self.buffers.free.push(id);
                    if e == libc::EAGAIN || e == libc::EINTR {
                        // Nothing after all: wait for the next edge, holding no buffer.
                        self.state(fd).readable = false;
                        return;
                    }
                    self.state(fd).read = None;
                    self.end(key, -e, None, false);
                    return;
                }
                let state = self.state(fd);
                state.read = None;
                if n == 0 {
                    self.buffers.free.push(id);
                    self.end(key, 0, None, false);
                    return;
                }
                if (n as usize) < len && !state.hup {
                    // Drained: bytes that arrive from now on bring a new edge. Not so the end of
                    // the stream, whose edge may have come before these bytes were read: once the
                    // peer has half-closed, the next receive is tried (and reads the end).
                    state.readable = false;
                }
                self.end(key, n as i32, Some(id), false);
            }
        }
    }

    fn accept(&mut self, fd: RawFd, key: Key) {
        for _ in 0..ACCEPTS_PER_PASS {
            // SAFETY: accept4 on a listening socket the worker owns; no address is asked for.
            let client = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if client >= 0 {
                self.end(key, client, None, true);
                continue;
            }
            match errno() {
                libc::EAGAIN => {
                    self.state(fd).readable = false;
                    return;
                }
                // The client left before it was taken: the next one.
                libc::ECONNABORTED | libc::EINTR | libc::EPROTO => continue,
                e => {
                    // Out of descriptors or memory, or the listener shut down: the accept ends
                    // (the worker retries later or frees the listener).
                    self.state(fd).read = None;
                    self.end(key, -e, None, false);
                    return;
                }
            }
        }
        self.accept_again.push(fd);
    }

    /// Runs the write side's op of `fd` if the socket may take it (a send that has just started
    /// is tried whatever the last edge said: `first`).
    fn try_write(&mut self, fd: RawFd, first: bool) {
        let state = *self.state(fd);
        let Some((key, op)) = state.write else {
            return;
        };
        match op {
            WriteOp::Send { buffer, offset, len } => {
                if !state.writable && !first {
                    return;
                }
                let start = self.buffers.range(buffer).start + offset as usize;
                let data = &self.buffers.memory[start..start + len as usize];
                // SAFETY: sends from a live buffer of `len` bytes.
                let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
                if n < 0 {
                    let e = errno();
                    if e == libc::EAGAIN || e == libc::EINTR {
                        self.state(fd).writable = false;
                        return;
                    }
                    self.state(fd).write = None;
                    self.end(key, -e, None, false);
                    return;
                }
                let state = self.state(fd);
                state.write = None;
                if (n as u32) < len {
                    // The send buffer is full: the rest waits for the next edge.
                    state.writable = false;
                }
                self.end(key, n as i32, None, false);
            }
            WriteOp::PollOut => {
                if state.writable {
                    self.state(fd).write = None;
                    self.end(key, libc::POLLOUT as i32, None, false);
                }
            }
            WriteOp::Connect { .. } => {
                if !state.writable {
                    return;
                }
                let mut error: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: reads an int option into a live int of the size given.
                let rc = unsafe {
                    libc::getsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut error as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                let result = if rc < 0 { -errno() } else { -error };
                self.state(fd).write = None;
                self.end_connect(key, result);
            }
        }
    }

    /// A connect ended (`result`) before its timeout: both ends, as io_uring reports a connect
    /// linked to its timeout.
    fn end_connect(&mut self, key: Key, result: i32) {
        self.end(key, result, None, false);
        let timeout = Key {
            op: Op::ConnectTimeout,
            ..key
        };
        self.end(timeout, -libc::ECANCELED, None, false);
    }

    fn try_watch(&mut self, fd: RawFd) {
        let state = *self.state(fd);
        if let (Some(key), true) = (state.watch, state.hup) {
            self.state(fd).watch = None;
            self.end(key, libc::POLLRDHUP as i32, None, false);
        }
    }

    fn on_event(&mut self, fd: RawFd, events: u32) {
        let events = events as i32;
        let state = self.state(fd);
        if !state.registered {
            return;
        }
        if events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            state.readable = true;
        }
        if events & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            state.writable = true;
        }
        if events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            state.hup = true;
        }
        self.try_write(fd, false);
        self.try_read(fd);
        self.try_watch(fd);
    }

    fn fire_timers(&mut self) {
        let now = clock::now_us();
        while self.timers.peek().is_some_and(|t| t.0.deadline_us <= now) {
            let Reverse(timer) = self.timers.pop().expect("peeked");
            let key = timer.key;
            let Some(fd) = timer.connect_fd else {
                self.end(key, -libc::ETIME, None, false);
                continue;
            };
            // A connect's timeout: the connect ends cancelled, unless it ended already.
            let state = self.state(fd);
            if let Some((connect, WriteOp::Connect { timer: seq })) = state.write {
                if seq == timer.seq {
                    state.write = None;
                    self.end(connect, -libc::ECANCELED, None, false);
                    self.end(key, -libc::ETIME, None, false);
                }
            }
        }
    }

    /// Milliseconds until the nearest timer, rounded up; -1 for none.
    fn timeout_ms(&self) -> i32 {
        match self.timers.peek() {
            None => -1,
            Some(t) => {
                let left = t.0.deadline_us.saturating_sub(clock::now_us());
                left.div_ceil(1000).min(i32::MAX as u64) as i32
            }
        }
    }
}

impl Driver for Epoll {
    fn start(&mut self, key: Key, io: Io<'_>) {
        match io {
            Io::Accept { fd } | Io::Wake { fd } => {
                if let Err(e) = nonblocking(fd).and_then(|()| self.register(fd)) {
                    return self.end(key, e, None, false);
                }
                let op = if matches!(io, Io::Accept { .. }) {
                    ReadOp::Accept
                } else {
                    ReadOp::Wake
                };
                self.state(fd).read = Some((key, op));
                self.try_read(fd);
            }
            Io::Timer { ms } => {
                self.add_timer(key, ms, None);
            }
            Io::Connect { fd, addr, timeout_ms } => {
                if let Err(e) = self.register(fd) {
                    return self.end_connect(key, e);
                }
                // SAFETY: connects a socket the worker owns to an address that lives as long as
                // the call.
                let rc = unsafe { libc::connect(fd, addr.as_ptr().cast(), addr.len()) };
                let e = if rc < 0 { errno() } else { 0 };
                if e != libc::EINPROGRESS {
                    self.state(fd).writable = e == 0;
                    return self.end_connect(key, -e);
                }
                let timeout = Key {
                    op: Op::ConnectTimeout,
                    ..key
                };
                let timer = self.add_timer(timeout, timeout_ms, Some(fd));
                self.state(fd).write = Some((key, WriteOp::Connect { timer }));
            }
            Io::Recv { fd } => {
                if let Err(e) = self.register(fd) {
                    return self.end(key, e, None, false);
                }
                self.state(fd).read = Some((key, ReadOp::Recv));
                self.try_read(fd);
            }
            Io::Send {
                fd,
                buffer,
                offset,
                len,
            } => {
                assert!(offset.saturating_add(len) <= self.buffers.buf_bytes);
                if let Err(e) = self.register(fd) {
                    return self.end(key, e, None, false);
                }
                let op = WriteOp::Send { buffer, offset, len };
                self.state(fd).write = Some((key, op));
                // Tried at once whatever the last edge said: a socket can almost always take a
                // write, and one that cannot answers EAGAIN.
                self.try_write(fd, true);
            }
            Io::Splice { from, to, len } => {
                // SAFETY: splices between descriptors the worker owns; no memory is passed.
                let n = unsafe {
                    libc::splice(
                        from,
                        std::ptr::null_mut(),
                        to,
                        std::ptr::null_mut(),
                        len as usize,
                        libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
                    )
                };
                let result = if n < 0 { -errno() } else { n as i32 };
                // What the call says of the socket's side: nothing there, or no room. Only
                // EAGAIN says so: a short splice may have filled the pipe's slots (one per
                // segment, however small) with bytes still waiting in the socket.
                let drained = result == -libc::EAGAIN;
                if key.op == Op::SpliceIn && drained && from >= 0 {
                    self.state(from).readable = false;
                } else if key.op == Op::SpliceOut && result == -libc::EAGAIN && to >= 0 {
                    self.state(to).writable = false;
                }
                self.end(key, result, None, false);
            }
            Io::Poll { fd, events } => {
                if let Err(e) = self.register(fd) {
                    return self.end(key, e, None, false);
                }
                let events = events as i32;
                if events & libc::POLLOUT as i32 != 0 {
                    self.state(fd).write = Some((key, WriteOp::PollOut));
                    self.try_write(fd, false);
                } else if events & libc::POLLIN as i32 != 0 {
                    self.state(fd).read = Some((key, ReadOp::PollIn));
                    self.try_read(fd);
                } else {
                    self.state(fd).watch = Some(key);
                    self.try_watch(fd);
                }
            }
            Io::Cancel { target, fd } => {
                let state = self.state(fd);
                let found = if state.read.is_some_and(|(k, _)| k == target) {
                    state.read = None;
                    true
                } else if state.watch == Some(target) {
                    state.watch = None;
                    true
                } else if let Some((k, op)) = state.write.filter(|(k, _)| *k == target) {
                    state.write = None;
                    if let WriteOp::Connect { .. } = op {
                        // A connect ends twice: its timeout's timer then finds nothing to end.
                        self.end_connect(k, -libc::ECANCELED);
                        self.end(key, 0, None, false);
                        return;
                    }
                    true
                } else {
                    false
                };
                if found {
                    self.end(target, -libc::ECANCELED, None, false);
                    self.end(key, 0, None, false);
                } else {
                    self.end(key, -libc::ENOENT, None, false);
                }
            }
        }
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.ready.is_empty() && self.unpolled < BATCHES_PER_POLL {
            self.unpolled += 1;
            self.fire_timers();
            out.extend(self.ready.drain(..));
            return Ok(());
        }
        self.unpolled = 0;
        loop {
            for fd in std::mem::take(&mut self.accept_again) {
                self.try_read(fd);
            }
            let timeout = if self.ready.is_empty() {
                self.timeout_ms()
            } else {
                0
            };
            // SAFETY: the kernel writes at most `events.len()` events into the live vector.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    self.events.len() as i32,
                    timeout,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(e);
                }
            }
            for i in 0..n.max(0) as usize {
                let event = self.events[i];
                self.on_event(event.u64 as RawFd, event.events);
            }
            self.fire_timers();
            if !self.ready.is_empty() {
                out.extend(self.ready.drain(..));
                return Ok(());
            }
        }
    }

    fn forget(&mut self, fd: RawFd) {
        if fd >= 0 && (fd as usize) < self.fds.len() {
            self.fds[fd as usize] = FdState::default();
        }
        self.accept_again.retain(|&f| f != fd);
    }

    fn buf_bytes(&self) -> u32 {
        self.buffers.buf_bytes
    }

    fn buffers_available(&self) -> u16 {
        self.buffers.free.len() as u16
    }

    fn recycle(&mut self, id: u16) {
        debug_assert!(!self.buffers.free.contains(&id));
        self.buffers.free.push(id);
    }
}

#[cfg(test)]
mod tests;
