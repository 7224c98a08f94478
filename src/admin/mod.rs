//! Admin endpoint. (Skeleton: see the helper task.)

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::stats::Shared;

/// Starts the `admin` thread serving HTTP on an already bound listener.
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    let _ = (listener, shared);
    std::thread::Builder::new().name("admin".into()).spawn(|| {})
}

/// Fetches `/stats` from a running ringlb and renders it as a table (`ringlb stats`).
/// Errors are one line naming the admin address.
pub fn stats_table(admin: std::net::SocketAddr) -> Result<String, String> {
    Err(format!("{admin}: not implemented yet"))
}
