//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`) for the buffered relay path.
//!
//! A recv with `IOSQE_BUFFER_SELECT` takes a buffer from this ring only when data arrives, so a
//! connection waiting for its peer to speak holds no memory. The worker gives a buffer back once
//! its bytes are sent. Buffer and ring memory are anonymous mappings: pages become resident only
//! when first used, and the addresses never move while the kernel may write to them.

use std::io;
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

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: addr/len are exactly what mmap returned, and nothing uses the range after drop
        // (the owning ring is unregistered or destroyed first, see BufRing's field order).
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
}

impl BufRing {
    /// Maps and registers the ring with `uring`, then provides every buffer.
    ///
    /// `count` must be a power of two no larger than 32768.
    pub fn new(uring: &IoUring, group: u16, count: u16, buf_bytes: u32) -> io::Result<BufRing> {
        assert!(count.is_power_of_two() && count <= 32768);
        let ring = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(count) * buf_bytes as usize)?;
        // SAFETY: the ring mapping is page-aligned, sized for `count` entries and lives as long as
        // this BufRing, which the worker drops only after its IoUring (see worker::Worker).
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

    /// Start of buffer `id`.
    pub fn buffer(&self, id: u16) -> *mut u8 {
        debug_assert!(id < self.count);
        // SAFETY: id < count, so the offset stays inside the buffers mapping.
        unsafe { self.buffers.addr.add(usize::from(id) * self.buf_bytes as usize) }
    }

    fn push(&mut self, id: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: slot < count, inside the ring mapping. The kernel reads only entries between its
        // head and the published tail, and this slot is past the published tail.
        unsafe {
            let entry = &mut *(self.ring.addr as *mut BufRingEntry).add(slot);
            entry.set_addr(self.buffer(id) as u64);
            entry.set_len(self.buf_bytes);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
        self.available += 1;
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field, inside the mapping;
        // the kernel reads it with acquire semantics, so a release store publishes the entries.
        unsafe {
            let tail = BufRingEntry::tail(self.ring.addr as *const BufRingEntry) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// A completion reports that the kernel took a buffer from the ring.
    pub fn taken(&mut self) {
        self.available = self.available.saturating_sub(1);
    }

    /// Buffers in the ring, as of the completions read so far.
    pub fn available(&self) -> u16 {
        self.available
    }

    /// Gives buffer `id` back to the kernel.
    pub fn recycle(&mut self, id: u16) {
        self.push(id);
        self.publish();
    }
}
