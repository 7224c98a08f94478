//! The io_uring driver: each op is one submission entry (a connect two, linked to its timeout),
//! each end one completion. Entries that find the submission queue full wait in a backlog, in
//! order, and a linked pair is never split across two submissions.
//!
//! `user_data` layout: generation (32 bits) | index (24) | op (7) | direction (1).
//!
//! Receives take their buffer from a provided-buffer ring ([`BufRing`]) with poll-first, so a
//! connection waiting for its peer to speak holds no buffer.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::bufring::BufRing;
use super::driver::{Completion, Driver, Io, Key, Op, MAX_INDEX};
use crate::clock;
use crate::config::TuningConfig;
use crate::shared::SharedState;

/// `IORING_RECVSEND_POLL_FIRST`: arm poll before trying, since a fresh recv usually finds no data.
const RECVSEND_POLL_FIRST: u16 = 1;
/// Buffer group id of the ring.
const BUFFER_GROUP: u16 = 0;
/// At most one completion-queue warning per this interval.
const WARN_INTERVAL_MS: u64 = 1000;

fn token(key: Key) -> u64 {
    (u64::from(key.generation) << 32) | ((key.index as u64) << 8) | ((key.op as u64) << 1) | key.dir as u64
}

fn untoken(user_data: u64) -> Option<Key> {
    Some(Key {
        index: ((user_data >> 8) & MAX_INDEX as u64) as usize,
        generation: (user_data >> 32) as u32,
        op: Op::from_u8(((user_data >> 1) & 0x7f) as u8)?,
        dir: (user_data & 1) as usize,
    })
}

pub struct Uring {
    // Field order is drop order: the ring goes before the buffer memory it may write into.
    ring: IoUring,
    buffers: BufRing,
    /// Timespecs the kernel reads, by milliseconds: an entry points at one until it is
    /// submitted, so they live as long as the driver (a handful of distinct values).
    timespecs: Vec<(u64, Box<types::Timespec>)>,
    /// Entries that did not fit in the submission queue, in order, each with whether it links
    /// to the next one.
    backlog: VecDeque<(squeue::Entry, bool)>,
    /// The kernel's count of completions it dropped, as last read.
    dropped_seen: u32,
    last_overflow_warning_ms: u64,
    shared: Arc<SharedState>,
    id: usize,
}

impl Uring {
    pub fn new(tuning: &TuningConfig, shared: Arc<SharedState>, id: usize) -> io::Result<Uring> {
        let entries = tuning.ring_entries;
        let mut ring = if tuning.sqpoll_idle_ms > 0 {
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
        let dropped_seen = ring.completion().overflow();
        Ok(Uring {
            ring,
            buffers,
            timespecs: Vec::new(),
            backlog: VecDeque::new(),
            dropped_seen,
            last_overflow_warning_ms: 0,
            shared,
            id,
        })
    }

    fn timespec(&mut self, ms: u64) -> *const types::Timespec {
        if let Some((_, ts)) = self.timespecs.iter().find(|(m, _)| *m == ms) {
            return &**ts;
        }
        let ts = Box::new(
            types::Timespec::new()
                .sec(ms / 1000)
                .nsec(((ms % 1000) * 1_000_000) as u32),
        );
        let ptr: *const types::Timespec = &*ts;
        self.timespecs.push((ms, ts));
        ptr
    }

    /// Queues entries in order; all of them go to the backlog when the queue lacks room for all,
    /// so a linked pair is never split across two submissions.
    fn push(&mut self, entries: &[squeue::Entry]) {
        if self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() >= entries.len() {
                for entry in entries {
                    // SAFETY: every buffer, address and timespec an entry points to lives at a
                    // stable address until its completion (the driver's promise), and room was
                    // checked.
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

    fn flush_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            if room == 0 {
                drop(sq);
                // Make room by submitting; completions are reaped by `wait`.
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
            let now = clock::now_ms();
            if self.last_overflow_warning_ms == 0 || now >= self.last_overflow_warning_ms + WARN_INTERVAL_MS {
                self.last_overflow_warning_ms = now;
                tracing::warn!(worker = self.id, "completion queue full; the kernel holds completions back until it is read (raise [tuning] ring_entries; logged at most once a second)");
            }
        }
        Ok(())
    }

    /// Reaps what the completion queue holds now, without waiting.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        let buffers = &mut self.buffers;
        out.extend(self.ring.completion().map(|c| {
            let key = untoken(c.user_data());
            let buffer = cqueue::buffer_select(c.flags());
            if buffer.is_some() {
                buffers.taken();
            }
            Completion {
                key,
                raw: c.user_data(),
                result: c.result(),
                buffer,
                more: cqueue::more(c.flags()),
            }
        }));
    }
}

impl Driver for Uring {
    fn start(&mut self, key: Key, io: Io<'_>) {
        let user_data = token(key);
        let entry = match io {
            Io::Accept { fd } => opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build(),
            Io::Wake { fd } => opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                .multi(true)
                .build(),
            Io::Timer { ms } => opcode::Timeout::new(self.timespec(ms)).build(),
            Io::Connect { fd, addr, timeout_ms } => {
                let connect = opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len())
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(user_data);
                let timeout = opcode::LinkTimeout::new(self.timespec(timeout_ms))
                    .build()
                    .user_data(token(Key {
                        op: Op::ConnectTimeout,
                        ..key
                    }));
                self.push(&[connect, timeout]);
                return;
            }
            Io::Recv { fd } => {
                opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), self.buffers.buf_bytes())
                    .buf_group(self.buffers.group())
                    .ioprio(RECVSEND_POLL_FIRST)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            Io::Send {
                fd,
                buffer,
                offset,
                len,
            } => {
                // The machine sends only bytes a receive put in the buffer, so offset + len stays
                // inside it; checked here in every build all the same.
                assert!(offset.saturating_add(len) <= self.buffers.buf_bytes());
                // SAFETY: offset + len <= the buffer size (checked above), so the pointer stays
                // inside buffer `buffer`.
                let data = unsafe { self.buffers.buffer(buffer).add(offset as usize) };
                opcode::Send::new(types::Fd(fd), data, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            // Non-blocking on both ends: a socket that has nothing (or no room) answers EAGAIN at
            // once instead of holding an io-wq worker.
            Io::Splice { from, to, len } => opcode::Splice::new(types::Fd(from), -1, types::Fd(to), -1, len)
                .flags(libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE)
                .build(),
            Io::Poll { fd, events } => opcode::PollAdd::new(types::Fd(fd), events).build(),
            Io::Cancel { target, .. } => opcode::AsyncCancel::new(token(target)).build(),
        };
        self.push(&[entry.user_data(user_data)]);
    }

    fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.flush_backlog();
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            // EBUSY: the completion queue is full; reaping below makes room.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EINTR)) => {}
            // EBADR: the kernel dropped completions (see `check_completion_queue`).
            Err(e) if e.raw_os_error() == Some(libc::EBADR) => {}
            Err(e) => return Err(e),
        }
        self.check_completion_queue()?;
        self.reap(out);
        Ok(())
    }

    fn forget(&mut self, _fd: RawFd) {}

    fn buf_bytes(&self) -> u32 {
        self.buffers.buf_bytes()
    }

    fn buffers_available(&self) -> u16 {
        self.buffers.available()
    }

    fn recycle(&mut self, id: u16) {
        self.buffers.recycle(id);
    }

    fn backlog(&self) -> usize {
        self.backlog.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Backends;
    use crate::config::Config;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn driver(ring_entries: u32) -> Option<Uring> {
        let config = Config::with_listener("127.0.0.1:4040".parse().unwrap(), Vec::new());
        let shared = Arc::new(SharedState::new(Arc::new(Backends::from_config(&config)), 1).unwrap());
        let tuning = TuningConfig {
            ring_entries,
            buffers: 4,
            pin_workers: false,
            ..TuningConfig::default()
        };
        match Uring::new(&tuning, shared, 0) {
            Ok(driver) => Some(driver),
            Err(e) => {
                eprintln!("SKIPPED: no io_uring here: {e}");
                assert!(std::env::var("CI").is_err(), "io_uring is refused under CI: {e}");
                None
            }
        }
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
                    let key = Key {
                        index: 123_456,
                        generation,
                        op,
                        dir,
                    };
                    assert_eq!(untoken(token(key)), Some(key));
                }
            }
        }
        let key = Key {
            index: MAX_INDEX,
            generation: u32::MAX,
            op: Op::QueueWatch,
            dir: 1,
        };
        assert_eq!(untoken(token(key)), Some(key));
        assert_eq!(untoken(0x7f << 1), None);
    }

    #[test]
    fn a_receive_reports_the_buffer_it_took_and_counts_it_out_of_the_ring() {
        let Some(mut driver) = driver(64) else { return };
        assert_eq!(driver.buffers_available(), 4);
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&theirs).write_all(b"0123456789").unwrap();
        let key = Key {
            index: 3,
            generation: 1,
            op: Op::Recv,
            dir: 0,
        };
        driver.start(key, Io::Recv { fd: ours.as_raw_fd() });
        let mut out = Vec::new();
        while out.is_empty() {
            driver.wait(&mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].key, out[0].result), (Some(key), 10));
        let id = out[0].buffer.expect("a buffer");
        assert_eq!(driver.buffers_available(), 3);
        driver.recycle(id);
        assert_eq!(driver.buffers_available(), 4);
    }

    #[test]
    fn a_full_completion_queue_is_counted_and_nothing_is_lost() {
        let Some(mut driver) = driver(64) else { return };
        let cq_entries = driver.ring.params().cq_entries() as usize;
        let nops = cq_entries + 40;
        for i in 0..nops {
            let entry = opcode::Nop::new().build().user_data(u64::MAX - i as u64);
            driver.push(&[entry]);
            driver.flush_backlog();
            driver.ring.submit().unwrap();
        }
        driver.check_completion_queue().expect("nothing dropped");
        let overflows = driver.shared.workers[0].cq_overflows.load(Ordering::Relaxed);
        assert_eq!(overflows, 1);
        // Every completion still arrives, the held-back ones once the queue has room.
        let mut seen = 0;
        while seen < nops {
            seen += driver.ring.completion().count();
            driver.ring.submit_and_wait(0).unwrap();
        }
        assert_eq!(seen, nops);
    }
}
