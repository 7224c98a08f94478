//! The seam between a worker and its I/O: the worker starts ops ([`Io`]) tagged with a [`Key`],
//! the driver reports each op's end as a [`Completion`] with the same key. Two drivers implement
//! it: io_uring ([`super::uring`]), where ops are submission entries and ends are completions,
//! and epoll ([`super::epoll`]), where an op is a non-blocking call made when its descriptor is
//! ready and its end is the call's result. Both keep the same promises, so the worker and the
//! connection machine ([`super::conn`]) never know which one runs:
//!
//! - every op started ends exactly once, with the key it was started with, and not before the
//!   call that started it has returned (ends are delivered by [`Driver::wait`]);
//! - an op owns the descriptors, buffer and address it names until its end is delivered;
//! - `result` is what the system call returned: bytes or a negative errno; an op cancelled by
//!   [`Io::Cancel`], or a connect whose timeout passed, ends with `-ECANCELED`;
//! - a receive takes a buffer only when bytes arrive, and reports it in `buffer`;
//! - a multishot accept reports `more` while it stays armed.

use std::io;
use std::os::fd::RawFd;

use socket2::SockAddr;

/// What an op is for. Connection ops carry their connection's slot and generation; the
/// worker's own (accept, wake, ticks) carry a listener slot or 0, and generation 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
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
    /// Cancels an op of the connection: the client's pending read while redispatching, or the
    /// hang-up watch of a client leaving the queue.
    Cancel = 12,
    QueueTick = 13,
    /// Watches a queued client for a hang-up (it has no other op in flight meanwhile).
    QueueWatch = 14,
    /// A pause before retrying a write to a half-closed peer whose window is full.
    WriteRetry = 15,
}

impl Op {
    pub fn from_u8(value: u8) -> Option<Op> {
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

/// Which op of whom: a connection's slot `index` and `generation` (so that an end that arrives
/// after the slot was reused is recognised), or a listener slot / 0 with generation 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub index: usize,
    pub generation: u32,
    pub op: Op,
    pub dir: usize,
}

/// The largest slot index a key may carry (the io_uring driver packs it in 24 bits).
pub const MAX_INDEX: usize = (1 << 24) - 1;

/// The end of an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// `None` when the driver cannot tell which op ended (a bug, counted by the worker).
    pub key: Option<Key>,
    /// What the worker can log about an end with no key.
    pub raw: u64,
    pub result: i32,
    /// The buffer a receive took.
    pub buffer: Option<u16>,
    /// A multishot op (accept, the wake watch) stays armed.
    pub more: bool,
}

/// An op to start.
#[derive(Debug, Clone, Copy)]
pub enum Io<'a> {
    /// Accept clients on listening socket `fd` until stopped (multishot; `more` while armed).
    Accept { fd: RawFd },
    /// Wait for the eventfd `fd` to be readable (multishot).
    Wake { fd: RawFd },
    /// A timer of `ms`: ends with `-ETIME`.
    Timer { ms: u64 },
    /// Connect socket `fd` to `addr` within `timeout_ms`: ends twice, `Op::Connect` with the
    /// connect's result (`-ECANCELED` when the timeout passed first) and `Op::ConnectTimeout`.
    /// `addr` must stay where it is until the connect ends.
    Connect {
        fd: RawFd,
        addr: &'a SockAddr,
        timeout_ms: u64,
    },
    /// Receive from `fd` into a buffer taken only when bytes arrive (`-ENOBUFS` when none is
    /// left).
    Recv { fd: RawFd },
    /// Send `len` bytes of buffer `buffer` from `offset` to `fd`.
    Send {
        fd: RawFd,
        buffer: u16,
        offset: u32,
        len: u32,
    },
    /// Splice up to `len` bytes from `from` to `to`, never blocking on either.
    Splice { from: RawFd, to: RawFd, len: u32 },
    /// Wait for `events` (`POLLIN`, `POLLOUT`, `POLLRDHUP`) on `fd`; ends with the events seen.
    Poll { fd: RawFd, events: u32 },
    /// Cancel the op `target` (on socket `fd`) if it has not ended: it then ends with
    /// `-ECANCELED`. Ends with 0, or `-ENOENT` when `target` had ended already.
    Cancel { target: Key, fd: RawFd },
}

/// A worker's I/O.
pub trait Driver {
    /// Starts an op; its end comes from a later [`Driver::wait`].
    fn start(&mut self, key: Key, io: Io<'_>);

    /// Waits until at least one op has ended and appends the ends to `out`. An error is fatal
    /// for the worker.
    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;

    /// The descriptor `fd` is about to be closed: forget whatever is known about it (the
    /// number will be reused). No op may be in flight on it.
    fn forget(&mut self, fd: RawFd);

    /// Size of each receive buffer.
    fn buf_bytes(&self) -> u32;

    /// Buffers free to be taken, as of the ends read so far.
    fn buffers_available(&self) -> u16;

    /// Gives buffer `id` back.
    fn recycle(&mut self, id: u16);

    /// Entries waiting for room to be submitted (io_uring's backlog; 0 for epoll).
    fn backlog(&self) -> usize {
        0
    }
}
