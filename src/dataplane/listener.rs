//! Listening sockets: one SO_REUSEPORT socket per worker per listener, so the kernel spreads
//! connections over the workers without a shared accept queue.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each worker's listening socket; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// Fails with EADDRINUSE when anything already listens on `addr`, ringlb or not.
pub fn check_free(addr: SocketAddr) -> io::Result<()> {
    let socket = new_socket(addr)?;
    socket.bind(&addr.into())?;
    Ok(())
}

/// A listening socket for one worker.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<Socket> {
    let socket = new_socket(addr)?;
    socket.set_reuse_port(true)?;
    // A VIP-specific bind must work before the address is on the interface.
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_freebind_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket)
}
