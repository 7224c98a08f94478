//! The `ha` thread: the thin I/O around the pure [`Machine`].
//!
//! It owns the heartbeat UDP sockets, the VIP and the gratuitous-ARP socket. Each loop it feeds
//! the machine the clock, this node's health (any backend up) and every authenticated datagram,
//! and carries out what the machine decides: send a signed heartbeat to every peer, add the VIP
//! and announce it (a burst, then a slow refresh while active, so that neighbours whose ARP cache
//! went stale during a partition follow), remove it, run the notify command. Datagrams that fail
//! authentication, parse, or replay checks are counted by reason and otherwise ignored.
//!
//! A flood at the heartbeat port must not cost a genuine heartbeat (four lost in a row are a
//! false takeover with the default timers). So each peer's datagrams have a socket, and a kernel
//! queue, of their own ([`Sockets`]), read first on every pass: garbage from any other address,
//! or from a peer's address with another port, fills only the shared socket's queue, which the
//! kernel may overflow at no cost to the peers.
//!
//! Start-up errors (the UDP port, the interface) surface from [`spawn`] before the thread runs;
//! at run time a failed VIP change is logged and retried on the next decision, never fatal.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::garp::Garp;
use super::machine::{Action, Machine, Params, PeerState, Transition};
use super::message::{self, PeerTracker};
use super::status::{DropCounts, HaStatus, PeerStatus};
use super::vip::Vip;
use crate::clock;
use crate::config::HaConfig;
use crate::shared::SharedState;

/// Gratuitous ARPs sent at once on takeover.
const GARP_BURST: u32 = 3;
/// Interval of the slow gratuitous-ARP refresh while this node holds the VIP.
const GARP_REFRESH_MS: u64 = 1000;
/// Longest wait in one receive, so a stop request is seen promptly.
const MAX_WAIT_MS: u64 = 50;
/// Heartbeats are far smaller; anything larger is dropped as oversized.
const DATAGRAM_BYTES: usize = 2048;
/// Datagrams read from one socket in one pass before the machine gets its next tick.
const MAX_DATAGRAMS_PER_PASS: usize = 1024;

/// Why the HA sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("[ha] bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("[ha] the heartbeat socket for peer {peer}: {source}")]
    Peer { peer: SocketAddr, source: io::Error },
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

/// Binds the heartbeat sockets, checks the interface, and starts the `ha` thread.
pub fn spawn(ha: HaConfig, shared: Arc<SharedState>) -> Result<HaHandle, HaError> {
    let sockets = Sockets::bind(&ha)?;
    let vip = Vip::new(ha.vip.addr, ha.vip.prefix_len, &ha.interface)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("ha".into())
        .spawn(move || Sidecar::new(ha, sockets, vip, shared).run(&thread_stop))
        .map_err(HaError::Thread)?;
    Ok(HaHandle { stop, thread })
}

/// The heartbeat sockets. `shared` is bound to `[ha] bind`: it sends every heartbeat and
/// receives whatever no other socket takes. Each of `peers` is bound to the same address and
/// connected to one peer, which makes the kernel deliver datagrams from that exact address and
/// port to it alone (a connected socket wins the lookup), in a receive queue of its own.
///
/// What this does not separate: datagrams that spoof a peer's address *and* port share its queue,
/// and a sender faster than the HMAC checks can still overflow it. Against an attacker on the
/// heartbeat network only a dedicated link helps.
struct Sockets {
    shared: UdpSocket,
    /// In `[ha] peers` order.
    peers: Vec<UdpSocket>,
}

impl Sockets {
    fn bind(ha: &HaConfig) -> Result<Sockets, HaError> {
        let bind_error = |source| HaError::Bind {
            addr: ha.bind,
            source,
        };
        let domain = Domain::for_address(ha.bind);
        let shared = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_error)?;
        // Bound before SO_REUSEADDR is set, so that a port another socket holds (a second ringlb
        // with the same configuration) is still refused; set afterwards, it lets the peers'
        // sockets share the port.
        shared.bind(&ha.bind.into()).map_err(bind_error)?;
        shared.set_reuse_address(true).map_err(bind_error)?;
        shared.set_nonblocking(true).map_err(bind_error)?;
        // The port the kernel chose when `bind` names port 0.
        let local = shared.local_addr().map_err(bind_error)?;
        let mut peers = Vec::with_capacity(ha.peers.len());
        for &peer in &ha.peers {
            let connected = || -> io::Result<UdpSocket> {
                let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
                socket.set_reuse_address(true)?;
                socket.bind(&local)?;
                socket.connect(&peer.into())?;
                socket.set_nonblocking(true)?;
                Ok(socket.into())
            };
            peers.push(connected().map_err(|source| HaError::Peer { peer, source })?);
        }
        Ok(Sockets {
            shared: shared.into(),
            peers,
        })
    }

    /// Every socket in the order a pass reads them: the peers' first, the shared one last.
    fn in_read_order(&self) -> impl Iterator<Item = &UdpSocket> {
        self.peers.iter().chain(std::iter::once(&self.shared))
    }

    /// Waits up to `ms` for any of the sockets to have a datagram.
    fn wait_readable(&self, ms: u64) -> bool {
        let mut pollfds: Vec<libc::pollfd> = self
            .in_read_order()
            .map(|socket| libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pollfds` is a valid array of that many pollfds for the duration of the call,
        // and poll writes only their `revents`.
        let ready = unsafe {
            libc::poll(
                pollfds.as_mut_ptr(),
                pollfds.len() as libc::nfds_t,
                ms as libc::c_int,
            )
        };
        ready > 0
    }
}

struct Sidecar {
    ha: HaConfig,
    sockets: Sockets,
    vip: Vip,
    shared: Arc<SharedState>,
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
    fn new(ha: HaConfig, sockets: Sockets, vip: Vip, shared: Arc<SharedState>) -> Sidecar {
        // Larger on every start: the wall clock in nanoseconds.
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        let machine = Machine::new(Params::from_config(&ha, incarnation), clock::now_ms());
        Sidecar {
            ha,
            sockets,
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
            if self.sockets.wait_readable(wait) {
                // Drain what is queued before the next tick, so that a flood of garbage costs one
                // pass rather than one loop each; the peers' sockets first, so that a genuine
                // heartbeat never waits behind the shared socket's garbage.
                for index in 0..=self.sockets.peers.len() {
                    self.drain(index, &mut buffer);
                }
            }
        }
    }

    /// Reads and handles up to [`MAX_DATAGRAMS_PER_PASS`] datagrams from the socket at `index`
    /// of [`Sockets::in_read_order`].
    fn drain(&mut self, index: usize, buffer: &mut [u8]) {
        for _ in 0..MAX_DATAGRAMS_PER_PASS {
            let socket = self
                .sockets
                .in_read_order()
                .nth(index)
                .expect("an index below the socket count");
            match socket.recv_from(buffer) {
                Ok((len, from)) => self.receive(&buffer[..len], from),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // A peer's socket reports an ICMP port unreachable for a heartbeat sent while the
                // peer's ringlb was down; reading it cleared it.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ha: receive failed");
                    return;
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
                        if let Err(e) = self.sockets.shared.send_to(&datagram, peer) {
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
