//! The `ha` thread: the thin I/O around the pure [`Machine`].
//!
//! It owns the heartbeat UDP socket, the VIP and the gratuitous-ARP socket. Each loop it feeds
//! the machine the clock, this node's health (any backend up) and every authenticated datagram,
//! and carries out what the machine decides: send a signed heartbeat to every peer, add the VIP
//! and announce it (a burst, then a slow refresh while active, so that neighbours whose ARP cache
//! went stale during a partition follow), remove it, run the notify command. Datagrams that fail
//! authentication, parse, or replay checks are counted by reason and otherwise ignored.
//!
//! Start-up errors (the UDP port, the interface) surface from [`spawn`] before the thread runs;
//! at run time a failed VIP change is logged and retried on the next decision, never fatal.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::garp::Garp;
use super::machine::{Action, Machine, Params, PeerState, Transition};
use super::message::{self, PeerTracker};
use super::status::{DropCounts, HaStatus, PeerStatus};
use super::vip::Vip;
use crate::clock;
use crate::config::HaConfig;
use crate::stats::Shared;

/// Gratuitous ARPs sent at once on takeover.
const GARP_BURST: u32 = 3;
/// Interval of the slow gratuitous-ARP refresh while this node holds the VIP.
const GARP_REFRESH_MS: u64 = 1000;
/// Longest wait in one receive, so a stop request is seen promptly.
const MAX_WAIT_MS: u64 = 50;
/// Heartbeats are far smaller; anything larger is dropped as oversized.
const DATAGRAM_BYTES: usize = 2048;
/// Datagrams read in one pass before the machine gets its next tick.
const MAX_DATAGRAMS_PER_PASS: usize = 1024;

/// Why the HA sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("[ha] bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("[ha] {0}")]
    Vip(#[from] super::vip::VipError),
    #[error("cannot start the ha thread: {0}")]
    Thread(io::Error),
}

/// The running sidecar; [`HaHandle::stop`] hands the VIP over before returning.
pub struct HaHandle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl HaHandle {
    /// Tells the peer this node is leaving, releases the VIP and waits (bounded) for it.
    pub fn stop(self, within: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + within;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            tracing::warn!("ha thread did not finish releasing the VIP in time");
        }
    }
}

/// Binds the heartbeat socket, checks the interface, and starts the `ha` thread.
pub fn spawn(ha: HaConfig, shared: Arc<Shared>) -> Result<HaHandle, HaError> {
    let socket = UdpSocket::bind(ha.bind).map_err(|source| HaError::Bind {
        addr: ha.bind,
        source,
    })?;
    socket.set_nonblocking(true).map_err(|source| HaError::Bind {
        addr: ha.bind,
        source,
    })?;
    let vip = Vip::new(ha.vip.addr, ha.vip.prefix_len, &ha.interface)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ha".into())
        .spawn(move || Sidecar::new(ha, socket, vip, shared).run(&thread_stop))
        .map_err(HaError::Thread)?;
    Ok(HaHandle { stop, thread })
}

/// Waits up to `ms` for the socket to have a datagram.
fn wait_readable(socket: &UdpSocket, ms: u64) -> bool {
    use std::os::fd::AsRawFd;
    let mut pollfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; poll touches nothing else.
    let ready = unsafe { libc::poll(&mut pollfd, 1, ms as libc::c_int) };
    ready > 0
}

struct Sidecar {
    ha: HaConfig,
    socket: UdpSocket,
    vip: Vip,
    shared: Arc<Shared>,
    machine: Machine,
    tracker: PeerTracker,
    healthy: bool,
    vip_held: bool,
    garp: Option<Garp>,
    next_garp_ms: u64,
    dropped: DropCounts,
    /// Where each node was last heard from, for the status.
    addresses: HashMap<String, SocketAddr>,
    /// Notify commands still running, reaped as they finish.
    children: Vec<Child>,
}

impl Sidecar {
    fn new(ha: HaConfig, socket: UdpSocket, vip: Vip, shared: Arc<Shared>) -> Sidecar {
        // Larger on every start: the wall clock in nanoseconds.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let machine = Machine::new(Params::from_config(&ha, incarnation), clock::now_ms());
        Sidecar {
            ha,
            socket,
            vip,
            shared,
            machine,
            tracker: PeerTracker::new(),
            healthy: true,
            vip_held: false,
            garp: None,
            next_garp_ms: 0,
            dropped: DropCounts::default(),
            addresses: HashMap::new(),
            children: Vec::new(),
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        tracing::info!(node = %self.ha.node, vip = %self.ha.vip, interface = %self.ha.interface, "ha started");
        let mut buffer = vec![0u8; DATAGRAM_BYTES + 1];
        loop {
            let now = clock::now_ms();
            if stop.load(Ordering::Relaxed) {
                let actions = self.machine.shutdown(now);
                self.execute(actions);
                self.publish();
                tracing::info!(node = %self.ha.node, "ha stopped");
                return;
            }
            let healthy = self.shared.table().all.iter().any(|b| b.is_up());
            if healthy != self.healthy {
                self.healthy = healthy;
                let actions = self.machine.on_local_health(now, healthy);
                self.execute(actions);
            }
            let actions = self.machine.tick(now);
            self.execute(actions);
            self.refresh_garp(now);
            self.reap_children();
            self.publish();

            let wait = self
                .machine
                .next_tick_ms()
                .saturating_sub(clock::now_ms())
                .clamp(1, MAX_WAIT_MS);
            if wait_readable(&self.socket, wait) {
                // Drain everything queued before the next tick, so that a flood of garbage costs
                // one pass over the socket buffer rather than one loop each, and a genuine
                // heartbeat behind it is not left waiting (or dropped by a full buffer).
                for _ in 0..MAX_DATAGRAMS_PER_PASS {
                    match self.socket.recv_from(&mut buffer) {
                        Ok((len, from)) => self.receive(&buffer[..len], from),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "ha: receive failed");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn receive(&mut self, datagram: &[u8], from: SocketAddr) {
        if !self.ha.peers.iter().any(|p| p.ip() == from.ip()) {
            self.dropped.unknown_sender += 1;
            return;
        }
        let message = match message::decode(datagram, &self.ha.authkey) {
            Ok(message) => message,
            Err(reason) => return self.count_drop(reason),
        };
        if message.node == self.ha.node {
            // Our own name from elsewhere: a misconfigured peer, never a heartbeat to trust.
            self.dropped.malformed += 1;
            return;
        }
        if let Err(reason) = self.tracker.accept(&message) {
            return self.count_drop(reason);
        }
        self.addresses.insert(message.node.clone(), from);
        let actions = self.machine.on_message(clock::now_ms(), &message);
        self.execute(actions);
    }

    fn count_drop(&mut self, reason: message::Drop) {
        let d = &mut self.dropped;
        let counter = match reason {
            message::Drop::Truncated => &mut d.truncated,
            message::Drop::Oversized => &mut d.oversized,
            message::Drop::BadMagic | message::Drop::BadVersion | message::Drop::Malformed => {
                &mut d.malformed
            }
            message::Drop::BadTag => &mut d.bad_tag,
            message::Drop::Replayed => &mut d.replayed,
            message::Drop::Stale => &mut d.stale,
        };
        *counter += 1;
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(message) => {
                    let datagram = message::encode(&message, &self.ha.authkey);
                    for peer in &self.ha.peers {
                        if let Err(e) = self.socket.send_to(&datagram, peer) {
                            tracing::debug!(peer = %peer, error = %e, "ha: heartbeat not sent");
                        }
                    }
                }
                Action::TakeVip => self.take_vip(),
                Action::ReleaseVip => self.release_vip(),
                Action::Notify(transition) => self.notify(transition),
            }
        }
    }

    fn take_vip(&mut self) {
        if let Err(e) = self.vip.add() {
            tracing::error!(error = %e, "ha: cannot add the VIP");
            return;
        }
        self.vip_held = true;
        match Garp::open(&self.ha.interface, self.ha.vip.addr) {
            Ok(garp) => {
                for _ in 0..GARP_BURST {
                    if let Err(e) = garp.send() {
                        tracing::warn!(error = %e, "ha: gratuitous ARP not sent");
                        break;
                    }
                }
                self.garp = Some(garp);
                self.next_garp_ms = clock::now_ms() + GARP_REFRESH_MS;
            }
            Err(e) => tracing::warn!(error = %e, "ha: cannot open the gratuitous ARP socket"),
        }
    }

    fn release_vip(&mut self) {
        self.garp = None;
        match self.vip.remove() {
            Ok(()) => self.vip_held = false,
            Err(e) => tracing::error!(error = %e, "ha: cannot remove the VIP"),
        }
    }

    fn refresh_garp(&mut self, now: u64) {
        if let Some(garp) = &self.garp {
            if now >= self.next_garp_ms {
                let _ = garp.send();
                self.next_garp_ms = now + GARP_REFRESH_MS;
            }
        }
    }

    fn notify(&mut self, t: Transition) {
        tracing::info!(
            node = %self.ha.node,
            from = t.from.as_str(),
            to = t.to.as_str(),
            reason = t.reason.as_str(),
            "ha transition"
        );
        let Some(command) = &self.ha.notify else {
            return;
        };
        // Arguments, as keepalived's notify scripts get them: node, new role, old role, reason, VIP.
        let spawned = Command::new(command)
            .args([
                self.ha.node.as_str(),
                t.to.as_str(),
                t.from.as_str(),
                t.reason.as_str(),
                &self.ha.vip.to_string(),
            ])
            .stdin(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.children.push(child),
            Err(e) => tracing::warn!(command = %command.display(), error = %e, "ha: notify command failed"),
        }
    }

    fn reap_children(&mut self) {
        self.children
            .retain_mut(|child| matches!(child.try_wait(), Ok(None)));
    }

    fn publish(&self) {
        let status = self.machine.status();
        let mut peers: Vec<PeerStatus> = status
            .peers
            .iter()
            .map(|p| PeerStatus {
                address: self
                    .addresses
                    .get(&p.node)
                    .map_or_else(String::new, |a| a.to_string()),
                node: p.node.clone(),
                state: match p.state {
                    PeerState::Alive => "alive",
                    PeerState::Dead => "dead",
                    PeerState::Left => "left",
                }
                .to_string(),
                role: p.role.as_str().to_string(),
                last_heartbeat_age_ms: Some(p.last_heartbeat_age_ms),
            })
            .collect();
        for peer in &self.ha.peers {
            if !self.addresses.values().any(|a| a.ip() == peer.ip()) {
                peers.push(PeerStatus {
                    address: peer.to_string(),
                    node: String::new(),
                    state: "unknown".into(),
                    role: String::new(),
                    last_heartbeat_age_ms: None,
                });
            }
        }
        let report = HaStatus {
            enabled: true,
            node: self.ha.node.clone(),
            role: status.role.as_str().to_string(),
            vip: self.ha.vip.to_string(),
            vip_held: self.vip_held,
            healthy: status.healthy,
            peers,
            takeovers: status.takeovers,
            dropped: self.dropped,
        };
        *self.shared.ha.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }
}
