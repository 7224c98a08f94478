//! Per-worker pool of pipes for `IORING_OP_SPLICE`.
//!
//! A connection borrows a pipe only while bytes of a bulk transfer are in flight and gives it
//! back as soon as the pipe is empty, so idle connections hold none (the kernel caps pipe memory
//! per user through `fs.pipe-user-pages-soft`). A pipe that still holds bytes when its connection
//! dies is closed, never pooled, so no connection can read another's leftovers.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The two ends of one pipe; both closed on drop.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What the kernel gave, read back once at creation: lending a pooled pipe costs no syscall.
    capacity: usize,
}

impl Pipe {
    /// A non-blocking, close-on-exec pipe sized to `size` bytes where the kernel allows it.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given, which has room for two.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so the read end is open and owned by nobody else.
        let read = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // SAFETY: likewise the write end.
        let write = unsafe { OwnedFd::from_raw_fd(fds[1]) };
        // Best effort: past fs.pipe-max-size or the per-user quota the pipe keeps its default size.
        // SAFETY: F_SETPIPE_SZ takes an int argument and touches no memory of ours.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
        // SAFETY: F_GETPIPE_SZ takes no argument and touches no memory of ours.
        let capacity = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        Ok(Pipe {
            read,
            write,
            capacity: capacity.max(4096) as usize,
        })
    }

    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// The capacity the kernel actually gave this pipe.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Idle pipes of one worker.
#[derive(Debug)]
pub struct PipePool {
    idle: Vec<Pipe>,
    /// Pipes kept for reuse beyond this are closed on return.
    max_idle: usize,
    /// Requested size of new pipes.
    pipe_bytes: usize,
}

impl PipePool {
    pub fn new(max_idle: usize, pipe_bytes: usize) -> Self {
        PipePool {
            idle: Vec::with_capacity(max_idle),
            max_idle,
            pipe_bytes,
        }
    }

    /// Lends an empty pipe, creating one if none is idle.
    pub fn take(&mut self) -> io::Result<Pipe> {
        let pipe = match self.idle.pop() {
            Some(pipe) => pipe,
            None => Pipe::new(self.pipe_bytes)?,
        };
        Ok(pipe)
    }

    /// Takes a pipe back. `empty` must be false when bytes may remain in it: it is then closed.
    pub fn give(&mut self, pipe: Pipe, empty: bool) {
        if empty && self.idle.len() < self.max_idle {
            self.idle.push(pipe);
        }
    }
}
