//! The worker's answers to a connection's questions about its backend: which one (least
//! connections, within `retries`), a socket for it, and the PROXY header it gets first; and what
//! a failed connect costs the backend.

use super::*;

impl<D: Driver> Worker<D> {
    pub(super) fn choice(epoch: &Epoch, listener: usize, pick: Pick) -> Choice {
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
    pub(super) fn pick(&mut self, index: usize) -> Choice {
        let slot = self.conns[index].as_ref().expect("live connection");
        let table = &slot.epoch.table;
        if slot.conn.tried().len() > table.listeners[slot.listener].config.retries {
            return Choice::None;
        }
        let pick = table.acquire(slot.listener, slot.conn.tried(), self.now_ms);
        Self::choice(&slot.epoch, slot.listener, pick)
    }

    /// A socket for `backend`; a failure is local (descriptors or memory), logged at most once a
    /// second.
    pub(super) fn open_backend(&mut self, index: usize, backend: usize) -> Result<(), i32> {
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
    pub(super) fn handshake(&mut self, index: usize) -> Result<(), HandshakeFailure> {
        let slot = self.conns[index].as_ref().expect("live connection");
        let Some(version) = slot.epoch.table.listeners[slot.listener].config.send_proxy else {
            return Ok(());
        };
        send_proxy_header(slot, version).inspect_err(|failure| {
            tracing::debug!(worker = self.id, failure = ?failure, "cannot send the PROXY header");
        })
    }

    pub(super) fn connect_failed(&mut self, epoch: &Epoch, backend: usize, error: &io::Error) {
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
}

/// A non-blocking backend socket with Nagle off (MySQL packets are small and latency-bound).
pub(super) fn new_backend_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
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
pub(super) fn send_proxy_header(
    slot: &Slot,
    version: crate::proxy_protocol::ProxyVersion,
) -> Result<(), HandshakeFailure> {
    let client = socket2::SockRef::from(&slot.client);
    // The client's addresses: a client that reset meanwhile (or is not IP) is its own failure,
    // not the backend's.
    let address = |a: io::Result<SockAddr>| a.ok().and_then(|a| a.as_socket());
    let (Some(source), Some(destination)) = (address(client.peer_addr()), address(client.local_addr()))
    else {
        return Err(HandshakeFailure::Client);
    };
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
        n if n < 0 => Err(HandshakeFailure::Backend(
            io::Error::last_os_error().raw_os_error().unwrap_or(libc::EPIPE),
        )),
        // Sent in part: MariaDB would not read the rest as a header.
        _ => Err(HandshakeFailure::Backend(libc::EPIPE)),
    }
}
