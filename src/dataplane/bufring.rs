//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) for the buffered relay path.
//!
//! A recv with `IOSQE_BUFFER_SELECT` takes a buffer from this ring only when data arrives, so a
//! connection waiting for its peer to speak holds no memory. The worker gives a buffer back once
//! its bytes are sent. Buffer and ring memory are anonymous mappings: pages become resident only
//! when first used, and the addresses never move while the kernel may write to them.
//!
//! # Soundness on its own
//!
//! The kernel reads the ring and writes into the buffers for as long as the ring is registered
//! with an io_uring instance that is alive. A `BufRing` keeps that instance alive itself (a
//! duplicate of its descriptor: the kernel keeps an io_uring while any descriptor of it is open),
//! and its `Drop` unregisters the ring before it unmaps anything; so whatever order its owner
//! drops things in, no memory is unmapped while the kernel may still use it.
//!
//! Unregistering excludes later writes because the kernel picks a buffer and copies into it in
//! one step under the instance's lock, the lock the unregister takes too. That holds for
//! receives issued inline, by the submitting task's task work or by the SQPOLL thread. It does
//! not for a receive the kernel hands to an io-wq worker, which picks its buffer under the lock
//! but copies after: the kernel does that for `IOSQE_ASYNC`, which the worker never sets, and
//! for a file it cannot poll, which a TCP socket never is. (And a worker drops its ring only as
//! its thread ends.)
//! Buffer ids are checked against the count in every build: an id the kernel never gave out
//! panics instead of pointing outside the mapping.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// An anonymous private mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing aliases no
        // memory of ours; the result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            addr: addr.cast(),
            len,
        })
    }
}

impl Mapping {
    /// No memory: what a leaked mapping is replaced with.
    fn empty() -> Mapping {
        Mapping {
            addr: std::ptr::null_mut(),
            len: 0,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        // SAFETY: addr/len are exactly what mmap returned, and nothing uses the range after drop:
        // BufRing::drop unregisters the ring from the kernel before its mappings drop.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// The ring of `count` buffers of `buf_bytes` each, registered as buffer group `group`.
#[derive(Debug)]
pub struct BufRing {
    ring: Mapping,
    buffers: Mapping,
    count: u16,
    buf_bytes: u32,
    group: u16,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Buffers in the ring as far as this side knows: given back and not yet reported taken by
    /// a completion. May briefly count a buffer the kernel has taken for a completion not yet
    /// read, never the other way round.
    available: u16,
    /// The io_uring instance the ring is registered with, kept open until the ring is
    /// unregistered and unmapped (see the module docs); last, so it closes last.
    uring: OwnedFd,
}

impl BufRing {
    /// Maps and registers the ring with `uring`, then provides every buffer.
    ///
    /// `count` must be a power of two no larger than 32768.
    pub fn new(uring: &IoUring, group: u16, count: u16, buf_bytes: u32) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && count <= 32768);
        let ring = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(count) * buf_bytes as usize)?;
        // SAFETY: `uring` is borrowed for this call, so its descriptor is open.
        let instance = unsafe { BorrowedFd::borrow_raw(uring.as_raw_fd()) }.try_clone_to_owned()?;
        // SAFETY: the ring mapping is page-aligned and sized for `count` entries; this BufRing
        // owns it and unregisters it (through `instance`, kept open until then) before it is
        // unmapped.
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ring.addr as u64, count, group, 0)?;
        }
        let mut this = BufRing {
            ring,
            buffers,
            count,
            buf_bytes,
            group,
            tail: 0,
            available: 0,
            uring: instance,
        };
        for id in 0..count {
            this.push(id);
        }
        this.publish();
        Ok(this)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn buf_bytes(&self) -> u32 {
        self.buf_bytes
    }

    /// Start of buffer `id`. Panics on an id that is not one of the ring's.
    pub fn buffer(&self, id: u16) -> *mut u8 {
        assert!(id < self.count, "buffer id {id} of a ring of {}", self.count);
        // SAFETY: id < count, so the offset stays inside the buffers mapping.
        unsafe { self.buffers.addr.add(usize::from(id) * self.buf_bytes as usize) }
    }

    fn push(&mut self, id: u16) {
        // A buffer goes back only after the kernel took it: one more would overrun the ring.
        debug_assert!(
            self.available < self.count,
            "buffer {id} given back to a full ring"
        );
        let slot = usize::from(self.tail & (self.count - 1));
        let addr = self.buffer(id) as u64;
        // SAFETY: slot < count, so the entry is inside the ring mapping.
        let entry = unsafe { (self.ring.addr as *mut BufRingEntry).add(slot) };
        // SAFETY: the entry is in bounds and aligned (the mapping is page-aligned and holds
        // `count` entries); no other reference to it exists, and the kernel reads only entries
        // between its head and the published tail, which this slot is past.
        let entry = unsafe { &mut *entry };
        entry.set_addr(addr);
        entry.set_len(self.buf_bytes);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
        self.available += 1;
    }

    fn publish(&self) {
        // SAFETY: the ring mapping starts with an entry, whose reserved field is the tail.
        let tail = unsafe { BufRingEntry::tail(self.ring.addr as *const BufRingEntry) } as *const AtomicU16;
        // SAFETY: the tail is a live, aligned u16 inside the mapping, which the kernel only reads
        // (with acquire semantics, so a release store publishes the entries before it).
        unsafe { (*tail).store(self.tail, Ordering::Release) };
    }

    /// A completion reports that the kernel took a buffer from the ring.
    pub fn taken(&mut self) {
        self.available = self.available.saturating_sub(1);
    }

    /// Buffers in the ring, as of the completions read so far.
    pub fn available(&self) -> u16 {
        self.available
    }

    /// Gives buffer `id` back to the kernel. Panics on an id that is not one of the ring's.
    pub fn recycle(&mut self, id: u16) {
        self.push(id);
        self.publish();
    }
}

/// `struct io_uring_buf_reg` of the kernel's uapi, for the unregister below.
#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// `IORING_UNREGISTER_PBUF_RING`.
const UNREGISTER_PBUF_RING: libc::c_uint = 23;

impl Drop for BufRing {
    fn drop(&mut self) {
        let reg = BufReg {
            ring_addr: 0,
            ring_entries: 0,
            bgid: self.group,
            flags: 0,
            resv: [0; 3],
        };
        // SAFETY: io_uring_register on a descriptor this ring owns, with a pointer to one
        // io_uring_buf_reg that lives across the call; the kernel only reads it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_uring_register,
                self.uring.as_raw_fd(),
                UNREGISTER_PBUF_RING,
                std::ptr::from_ref(&reg),
                1,
            )
        };
        if rc < 0 {
            // Registered in `new`, never unregistered elsewhere: this cannot fail unless the
            // kernel changed. Leak the memory rather than unmap what the kernel may still use.
            tracing::error!(
                "cannot unregister the buffer ring (group {}): {}; its memory is leaked",
                self.group,
                io::Error::last_os_error()
            );
            std::mem::forget(std::mem::replace(&mut self.ring, Mapping::empty()));
            std::mem::forget(std::mem::replace(&mut self.buffers, Mapping::empty()));
        }
        // The mappings unmap next (field drops), then the instance's descriptor closes.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An io_uring, or `None` (said loudly) where it is refused; under `CI=true` a refusal fails.
    fn uring() -> Option<IoUring> {
        match IoUring::new(8) {
            Ok(uring) => Some(uring),
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!("*** SKIPPED: io_uring is refused here ({e}) ***");
                None
            }
            Err(e) => panic!("io_uring is refused here ({e}), and CI=true needs it"),
        }
    }

    #[test]
    fn dropping_the_ring_unregisters_it_so_the_group_can_be_registered_again() {
        let Some(uring) = uring() else { return };
        let first = BufRing::new(&uring, 7, 4, 4096).unwrap();
        // A second ring for the same group is refused while the first is registered...
        assert!(BufRing::new(&uring, 7, 4, 4096).is_err());
        drop(first);
        // ...and taken once the first one's drop unregistered it.
        let again = BufRing::new(&uring, 7, 4, 4096).unwrap();
        assert_eq!(again.available(), 4);
    }

    #[test]
    fn the_ring_outlives_its_io_uring_without_harm() {
        let Some(uring) = uring() else { return };
        let ring = BufRing::new(&uring, 3, 8, 1024).unwrap();
        drop(uring);
        // The instance is still open through the ring's own descriptor, so the ring's memory
        // stays valid and its drop unregisters it there.
        assert_eq!(ring.available(), 8);
        drop(ring);
    }

    #[test]
    #[should_panic(expected = "buffer id 4 of a ring of 4")]
    fn a_buffer_id_outside_the_ring_panics_in_every_build() {
        let Some(uring) = uring() else {
            panic!("buffer id 4 of a ring of 4 (no io_uring here)")
        };
        let ring = BufRing::new(&uring, 1, 4, 1024).unwrap();
        let _ = ring.buffer(4);
    }
}
