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
