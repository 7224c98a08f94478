//! Data integrity under load: 32 streams at once through ringlb, each carrying pseudo-random
//! bytes both ways to a backend that checksums what it reads, every direction ended by its
//! sender's half-close; each direction's CRC-32 and byte count must match at its far end.
//!
//! The streams mix sizes and write patterns so that every relay path carries bytes at the same
//! time as the others: several MiB in large writes (reads that fill ringlb's buffers switch a
//! direction to splice), thousands of small writes with Nagle off (the buffered path), and
//! streams that are bulk one way and small the other. ringlb's pipe descriptors are sampled
//! during the run to show that the splice path did carry bytes.
//!
//! A functional check, not a benchmark: nothing here depends on how fast the machine is.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{one_at_a_time, poll_until, Ringlb, TcpServer};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const STREAMS: u64 = 32;
/// A bulk direction: this many bytes plus up to as many again, in writes of up to
/// [`BULK_WRITE_BYTES`].
const BULK_BYTES: u64 = 8 * MIB;
const BULK_WRITE_BYTES: u64 = 256 * KIB;
/// A small-message direction: this many bytes plus up to as many again, in writes of 1 to
/// [`SMALL_WRITE_BYTES`] bytes.
const SMALL_BYTES: u64 = 96 * KIB;
const SMALL_WRITE_BYTES: u64 = 300;
/// A stream that makes no progress for this long has failed (nothing here should ever wait).
const STALL: Duration = Duration::from_secs(60);
/// `seed`, bytes the backend sends, its largest write: the first bytes of every stream.
const HEADER_BYTES: usize = 24;
/// Byte count (u64 LE) and CRC-32 (u32 LE) of what the backend read, then the same of what it
/// wrote: the backend's last bytes.
const TRAILER_BYTES: usize = 24;

/// A `tcp` check at start-up and then once a minute: its probe is a connection that sends
/// nothing, which the backend drops.
const QUIET_HEALTH: &str = "[health]\ncheck = \"tcp\"\ninterval_ms = 60000\n";

/// xorshift64*: the same bytes for the same seed however the reader or writer cuts them.
struct Random {
    state: u64,
    /// Bytes of the last word not handed out yet (the first `8 - spare_used` of it).
    spare: [u8; 8],
    spare_used: usize,
}

impl Random {
    fn new(seed: u64) -> Random {
        Random {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            spare: [0; 8],
            spare_used: 8,
        }
    }

    fn word(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `1..=max`.
    fn up_to(&mut self, max: u64) -> u64 {
        1 + self.word() % max
    }

    fn fill(&mut self, out: &mut [u8]) {
        let from_spare = (8 - self.spare_used).min(out.len());
        out[..from_spare].copy_from_slice(&self.spare[self.spare_used..self.spare_used + from_spare]);
        self.spare_used += from_spare;
        let mut words = out[from_spare..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.word().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.spare = self.word().to_le_bytes();
            tail.copy_from_slice(&self.spare[..tail.len()]);
            self.spare_used = tail.len();
        }
    }
}

/// Writes `bytes` pseudo-random bytes from `seed` in writes of random sizes up to `max_write`,
/// feeding each through `crc` (the header, if any, is already in it).
fn send_random(
    stream: &mut TcpStream,
    seed: u64,
    bytes: u64,
    max_write: u64,
    crc: &mut crc32fast::Hasher,
) -> std::io::Result<()> {
    let (mut data, mut sizes) = (Random::new(seed), Random::new(!seed));
    let mut buffer = vec![0u8; max_write as usize];
    let mut left = bytes;
    while left > 0 {
        let chunk = &mut buffer[..sizes.up_to(max_write).min(left) as usize];
        data.fill(chunk);
        stream.write_all(chunk)?;
        crc.update(chunk);
        left -= chunk.len() as u64;
    }
    Ok(())
}

/// Reads `bytes` bytes through `crc`.
fn receive_counted(stream: &mut TcpStream, bytes: u64, crc: &mut crc32fast::Hasher) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let want = left.min(buffer.len() as u64) as usize;
        let n = stream.read(&mut buffer[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("EOF with {left} of {bytes} bytes still to come"),
            ));
        }
        crc.update(&buffer[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// The backend: reads a stream's header, then at once sends the bytes it asks for (from its
/// seed's complement) while reading the rest of the stream to EOF through a CRC-32; then sends
/// the trailer and closes. A connection that ends before its header (a health probe) is dropped.
fn checksum_backend() -> TcpServer {
    TcpServer::start("the checksum backend", |mut stream, _| {
        let _ = stream.set_read_timeout(Some(STALL));
        let _ = stream.set_write_timeout(Some(STALL));
        let mut header = [0u8; HEADER_BYTES];
        if stream.read_exact(&mut header).is_err() {
            return;
        }
        let field = |i: usize| u64::from_le_bytes(header[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (seed, down_bytes, down_max_write) = (field(0), field(1), field(2));
        let Ok(mut sender) = stream.try_clone() else {
            return;
        };
        let writer = std::thread::spawn(move || {
            let mut crc = crc32fast::Hasher::new();
            send_random(&mut sender, !seed, down_bytes, down_max_write, &mut crc).map(|()| (sender, crc))
        });
        let mut read_crc = crc32fast::Hasher::new();
        read_crc.update(&header);
        let mut read_bytes = HEADER_BYTES as u64;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    read_crc.update(&buffer[..n]);
                    read_bytes += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    let _ = writer.join();
                    return;
                }
            }
        }
        let Ok(Ok((mut sender, write_crc))) = writer.join() else {
            return;
        };
        let mut trailer = Vec::with_capacity(TRAILER_BYTES);
        trailer.extend_from_slice(&read_bytes.to_le_bytes());
        trailer.extend_from_slice(&read_crc.finalize().to_le_bytes());
        trailer.extend_from_slice(&down_bytes.to_le_bytes());
        trailer.extend_from_slice(&write_crc.finalize().to_le_bytes());
        let _ = sender.write_all(&trailer);
        let _ = sender.shutdown(Shutdown::Write);
    })
}

/// One stream's sizes and write patterns.
#[derive(Debug, Clone, Copy)]
struct Plan {
    seed: u64,
    up_bytes: u64,
    up_max_write: u64,
    down_bytes: u64,
    down_max_write: u64,
}

impl Plan {
    /// Stream `index`: by `index % 4` bulk both ways, small both ways, bulk up and small down,
    /// small up and bulk down.
    fn of(index: u64) -> Plan {
        let mut sizes = Random::new(0xC0FFEE ^ index);
        let mut direction = |bulk: bool| {
            if bulk {
                (BULK_BYTES + sizes.up_to(BULK_BYTES), BULK_WRITE_BYTES)
            } else {
                (SMALL_BYTES + sizes.up_to(SMALL_BYTES), SMALL_WRITE_BYTES)
            }
        };
        let (up_bulk, down_bulk) =
            [(true, true), (false, false), (true, false), (false, true)][index as usize % 4];
        let (up_bytes, up_max_write) = direction(up_bulk);
        let (down_bytes, down_max_write) = direction(down_bulk);
        Plan {
            seed: 0x5EED_0000 + index,
            up_bytes,
            up_max_write,
            down_bytes,
            down_max_write,
        }
    }
}

/// Runs one stream through `addr` and checks both directions' counts and CRCs at their far
/// ends; returns the bytes it moved, or what differed.
fn run_stream(addr: SocketAddr, plan: Plan) -> Result<u64, String> {
    let name = format!("stream {:#x} ({plan:?})", plan.seed);
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{name}: connect: {e}"))?;
    stream.set_read_timeout(Some(STALL)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(STALL)).map_err(|e| e.to_string())?;
    // Small writes go out as small segments, one each.
    stream
        .set_nodelay(plan.up_max_write <= SMALL_WRITE_BYTES)
        .map_err(|e| e.to_string())?;
    let mut sender = stream.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> std::io::Result<u32> {
        let mut header = Vec::with_capacity(HEADER_BYTES);
        for field in [plan.seed, plan.down_bytes, plan.down_max_write] {
            header.extend_from_slice(&field.to_le_bytes());
        }
        sender.write_all(&header)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        send_random(&mut sender, plan.seed, plan.up_bytes, plan.up_max_write, &mut crc)?;
        sender.shutdown(Shutdown::Write)?;
        Ok(crc.finalize())
    });
    let mut down_crc = crc32fast::Hasher::new();
    let received = receive_counted(&mut stream, plan.down_bytes, &mut down_crc).and_then(|()| {
        let mut trailer = [0u8; TRAILER_BYTES];
        stream.read_exact(&mut trailer)?;
        let mut rest = [0u8; 1];
        match stream.read(&mut rest)? {
            0 => Ok(trailer),
            _ => Err(std::io::Error::other("bytes after the trailer")),
        }
    });
    if received.is_err() {
        // Unblocks the writer.
        let _ = stream.shutdown(Shutdown::Both);
    }
    let sent = writer.join().expect("a writer thread panicked");
    let trailer = received.map_err(|e| format!("{name}: reading from the backend: {e}"))?;
    let up_crc = sent.map_err(|e| format!("{name}: sending to the backend: {e}"))?;

    let u64_at = |at: usize| u64::from_le_bytes(trailer[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(trailer[at..at + 4].try_into().expect("4 bytes"));
    let up_total = HEADER_BYTES as u64 + plan.up_bytes;
    let (backend_read, backend_read_crc) = (u64_at(0), u32_at(8));
    let (backend_wrote, backend_wrote_crc) = (u64_at(12), u32_at(20));
    let down_crc = down_crc.finalize();
    if (backend_read, backend_read_crc) != (up_total, up_crc) {
        return Err(format!(
            "{name}: CHECKSUM MISMATCH to the backend: sent {up_total} bytes with CRC-32 {up_crc:08x}, \
             the backend read {backend_read} with CRC-32 {backend_read_crc:08x}"
        ));
    }
    if (backend_wrote, backend_wrote_crc) != (plan.down_bytes, down_crc) {
        return Err(format!(
            "{name}: CHECKSUM MISMATCH to the client: the backend sent {backend_wrote} bytes with CRC-32 \
             {backend_wrote_crc:08x}, the client read {} with CRC-32 {down_crc:08x}",
            plan.down_bytes
        ));
    }
    Ok(up_total + plan.down_bytes)
}

/// Runs the 32 streams at once through ringlb started with `config`; panics listing every
/// stream that failed. Returns how many pipe descriptors ringlb held before, and the most it
/// held at one time during the run.
fn streams_arrive_intact(config: &str) -> (usize, usize) {
    let backend = checksum_backend();
    let lb = Ringlb::start_with_addrs(&[backend.addr()], config);
    let pipes_before = lb.descriptors().pipes;
    let addr = lb.addr();

    let done = Arc::new(AtomicBool::new(false));
    let max_pipes = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, max_pipes, pid) = (done.clone(), max_pipes.clone(), lb.pid());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max_pipes.fetch_max(support::Descriptors::of(pid).pipes, Ordering::Relaxed);
                // A sampling interval, not a wait for a condition.
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let start = Instant::now();
    let streams: Vec<_> = (0..STREAMS)
        .map(|index| {
            let plan = Plan::of(index);
            std::thread::spawn(move || run_stream(addr, plan))
        })
        .collect();
    let results: Vec<Result<u64, String>> = streams
        .into_iter()
        .map(|s| s.join().expect("a stream thread panicked"))
        .collect();
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("the sampler panicked");

    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {STREAMS} streams failed:\n{}\nringlb stderr:\n{}",
        failures.len(),
        failures.iter().map(|f| f.as_str()).collect::<Vec<_>>().join("\n"),
        lb.log_tail()
    );
    let moved: u64 = results.iter().flatten().sum();
    let max_pipes = max_pipes.load(Ordering::Relaxed);
    eprintln!(
        "{STREAMS} streams, {:.1} MiB both ways in {:.1} s, zero mismatches; ringlb held up to {max_pipes} \
         pipe descriptors ({pipes_before} before)",
        moved as f64 / MIB as f64,
        elapsed.as_secs_f64()
    );
    // Every connection closed on both sides: none is left open in ringlb.
    let settled = poll_until(Duration::from_secs(30), || {
        lb.metric("ringlb_backend_active_connections", &[]) == Some(0.0)
    });
    assert!(settled, "connections left open:\n{}", lb.metrics());
    (pipes_before, max_pipes)
}

#[test]
fn concurrent_streams_arrive_intact_in_both_directions() {
    let _serial = one_at_a_time();
    let (pipes_before, max_pipes) = streams_arrive_intact(QUIET_HEALTH);
    assert!(
        max_pipes > pipes_before,
        "ringlb never held a pipe: the bulk directions did not take the splice path"
    );
}

#[test]
fn concurrent_streams_arrive_intact_through_splice_only() {
    let _serial = one_at_a_time();
    let (pipes_before, max_pipes) =
        streams_arrive_intact(&format!("{QUIET_HEALTH}[tuning]\nrelay = \"splice\"\n"));
    assert!(
        max_pipes > pipes_before,
        "relay = \"splice\" but ringlb never held a pipe"
    );
}
