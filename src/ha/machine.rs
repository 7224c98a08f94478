//! The HA state machine: pure and deterministic. Time comes in as `now_ms` (any monotonic
//! millisecond clock), peer messages come in already verified ([`super::message::decode`] and
//! [`super::message::PeerTracker`]), and what to do goes out as [`Action`]s for the I/O around
//! it: send a heartbeat, take or release the VIP, run the notify command.
//!
//! # Rules
//!
//! Rank of a node, best first: healthy (a backend up), then preferred (its configuration names
//! it), then the smaller name. Every node computes ranks from the same reported facts, so two
//! nodes with the same view reach the same verdict. A peer is *alive* when heard within
//! `deadtime_ms` and its last role is not `leaving`.
//!
//! | this node | when | then | reason |
//! |---|---|---|---|
//! | any | every `keepalive_ms`, and at once after any change of role or health | send a heartbeat | |
//! | (new) | first input of any kind | release the VIP (a crashed earlier run may have left it) | |
//! | starting | `initdead_ms` passed, or an alive peer reports standby/active | leave starting as standby, or straight to active by the standby rule | `started` |
//! | standby | no alive peer is active, and this node outranks every alive starting/standby peer | take the VIP | `peer_dead`, `peer_left` or `no_holder` |
//! | active | an alive peer is active and outranks this node (split brain) | release the VIP | `split_brain` |
//! | active | this node is unhealthy and an alive standby peer is healthy | release the VIP | `unhealthy` |
//! | active | `auto_failback`, this node is not preferred, an alive standby peer is preferred and healthy | release the VIP | `failback` |
//! | any | shutdown | release the VIP if held, send `leaving` | `shutdown` |
//!
//! Invariants that follow (and the tests below drive two machines through a lossy, partitioned
//! network to check them):
//!
//! - A planned move (failback, an unhealthy holder, split brain) is decided by the holder, which
//!   releases first; the other takes when it hears the release. So the two never hold the VIP at
//!   once because of a decision, only because of a partition.
//! - When the holder dies the standby takes over within `deadtime_ms` of its last heartbeat,
//!   so within `deadtime_ms + keepalive_ms` of its death; when it leaves, at once.
//! - While both nodes are up and healthy the VIP stays where it is, unless `auto_failback`
//!   brings it to the preferred node (once).
//! - After a partition heals, both active, each hears the other within one keepalive and the
//!   lower-ranked one releases.
//!
//! The same rules are in LIFECYCLE.md beside this file, with the timelines.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::message::{Message, Role};
use crate::config::HaConfig;

/// What the machine needs to know; [`Params::from_config`] fills it from `[ha]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub node: String,
    /// Whether `[ha] preferred` names this node.
    pub preferred: bool,
    pub auto_failback: bool,
    pub keepalive_ms: u64,
    pub deadtime_ms: u64,
    pub initdead_ms: u64,
    /// Larger on every start of this node (the wall clock in ns at start does): peers drop
    /// messages from an incarnation older than one they heard.
    pub incarnation: u64,
}

impl Params {
    pub fn from_config(ha: &HaConfig, incarnation: u64) -> Params {
        Params {
            node: ha.node.clone(),
            preferred: ha.preferred.as_deref() == Some(ha.node.as_str()),
            auto_failback: ha.auto_failback,
            keepalive_ms: ha.keepalive_ms,
            deadtime_ms: ha.deadtime_ms,
            initdead_ms: ha.initdead_ms,
            incarnation,
        }
    }
}

/// Why a transition happened: for logs, the notify command and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Left `starting`: initdead passed or a settled peer was heard.
    Started,
    /// Took over from a holder silent for `deadtime_ms`.
    PeerDead,
    /// Took over from a holder that said it was leaving.
    PeerLeft,
    /// Took the VIP nobody held, being the best-ranked node.
    NoHolder,
    /// Released to a peer that also held it and ranks higher.
    SplitBrain,
    /// Released: no backend up here, one up there.
    Unhealthy,
    /// Released to the preferred node, back and healthy.
    Failback,
    Shutdown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Started => "started",
            Reason::PeerDead => "peer_dead",
            Reason::PeerLeft => "peer_left",
            Reason::NoHolder => "no_holder",
            Reason::SplitBrain => "split_brain",
            Reason::Unhealthy => "unhealthy",
            Reason::Failback => "failback",
            Reason::Shutdown => "shutdown",
        }
    }
}

/// A change of this node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Transition {
    pub from: Role,
    pub to: Role,
    pub reason: Reason,
}

/// What the I/O around the machine must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Sign and send this heartbeat to every peer.
    Send(Message),
    /// Add the VIP to the interface and announce it (gratuitous ARP). Idempotent.
    TakeVip,
    /// Remove the VIP from the interface. Idempotent: also sent when it may not be there.
    ReleaseVip,
    /// Run the notify command, if any, for this transition.
    Notify(Transition),
}

/// How this node sees a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Heard within `deadtime_ms`.
    Alive,
    /// Silent for `deadtime_ms` or more.
    Dead,
    /// Said it was leaving, and has not spoken since.
    Left,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    pub node: String,
    pub state: PeerState,
    /// The role in its last heartbeat.
    pub role: Role,
    pub healthy: bool,
    pub preferred: bool,
    /// Time since its last heartbeat, as of the machine's latest input.
    pub last_heartbeat_age_ms: u64,
}

/// What `GET /ha` and `ringlb ha status` show (the dropped-message counts come from the I/O).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub node: String,
    pub role: Role,
    pub healthy: bool,
    pub incarnation: u64,
    /// Times this node took the VIP since it started.
    pub takeovers: u64,
    /// Every node heard from, by name.
    pub peers: Vec<PeerStatus>,
}

/// The last heartbeat of a peer.
#[derive(Debug, Clone)]
struct Peer {
    role: Role,
    healthy: bool,
    preferred: bool,
    last_heard_ms: u64,
}

/// Orders nodes for every decision: the larger key wins. Names are unique, so it is total.
fn rank(healthy: bool, preferred: bool, node: &str) -> (bool, bool, Reverse<&str>) {
    (healthy, preferred, Reverse(node))
}

#[derive(Debug)]
pub struct Machine {
    params: Params,
    role: Role,
    /// Whether a backend is up here; assumed until told otherwise, so that a node whose health
    /// checker has not finished its first round is not passed over.
    healthy: bool,
    started_ms: u64,
    next_send_ms: u64,
    sequence: u64,
    /// Whether the first input, which clears a VIP left behind by an earlier run, has come.
    cleared: bool,
    takeovers: u64,
    /// The latest `now_ms` given, for the ages in [`Machine::status`].
    latest_ms: u64,
    peers: BTreeMap<String, Peer>,
}

impl Machine {
    pub fn new(params: Params, now_ms: u64) -> Machine {
        Machine {
            params,
            role: Role::Starting,
            healthy: true,
            started_ms: now_ms,
            next_send_ms: now_ms,
            sequence: 0,
            cleared: false,
            takeovers: 0,
            latest_ms: now_ms,
            peers: BTreeMap::new(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// When [`Machine::tick`] has something to do next: a heartbeat due, the end of initdead or
    /// a peer's deadtime. Ticking earlier or more often is harmless.
    pub fn next_tick_ms(&self) -> u64 {
        if self.role == Role::Leaving {
            return u64::MAX;
        }
        let mut next = self.next_send_ms;
        if self.role == Role::Starting {
            next = next.min(self.started_ms.saturating_add(self.params.initdead_ms));
        }
        for peer in self.peers.values().filter(|p| p.role != Role::Leaving) {
            let death = peer.last_heard_ms.saturating_add(self.params.deadtime_ms);
            if death > self.latest_ms {
                next = next.min(death);
            }
        }
        next
    }

    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.role == Role::Leaving {
            return actions;
        }
        self.enter(now_ms, &mut actions);
        if self.role == Role::Starting {
            if now_ms >= self.started_ms.saturating_add(self.params.initdead_ms) {
                self.leave_starting(now_ms, &mut actions);
            }
        } else {
            self.evaluate(now_ms, &mut actions);
        }
        if now_ms >= self.next_send_ms && !sent(&actions) {
            self.heartbeat(now_ms, &mut actions);
        }
        actions
    }

    /// A heartbeat from a peer, already authenticated and checked for replay.
    pub fn on_message(&mut self, now_ms: u64, message: &Message) -> Vec<Action> {
        let mut actions = Vec::new();
        // Our own name coming back is a reflection or a peer configured with our name: either
        // way it says nothing about another node.
        if self.role == Role::Leaving || message.node == self.params.node {
            return actions;
        }
        self.enter(now_ms, &mut actions);
        self.peers.insert(
            message.node.clone(),
            Peer {
                role: message.role,
                healthy: message.healthy,
                preferred: message.preferred,
                last_heard_ms: now_ms,
            },
        );
        match self.role {
            // A settled peer tells us all initdead would: no need to wait it out.
            Role::Starting if matches!(message.role, Role::Standby | Role::Active) => {
                self.leave_starting(now_ms, &mut actions)
            }
            Role::Starting | Role::Leaving => {}
            Role::Standby | Role::Active => self.evaluate(now_ms, &mut actions),
        }
        actions
    }

    /// Whether at least one backend is up here (the health checker's verdict).
    pub fn on_local_health(&mut self, now_ms: u64, healthy: bool) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.role == Role::Leaving || healthy == self.healthy {
            return actions;
        }
        self.enter(now_ms, &mut actions);
        self.healthy = healthy;
        if self.role != Role::Starting {
            self.evaluate(now_ms, &mut actions);
        }
        // The peer's decisions depend on our health: tell it now, not at the next keepalive.
        if !sent(&actions) {
            self.heartbeat(now_ms, &mut actions);
        }
        actions
    }

    /// Leaves for good: releases the VIP if held and tells the peers, which may take it at once.
    pub fn shutdown(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.role == Role::Leaving {
            return actions;
        }
        self.enter(now_ms, &mut actions);
        self.become_(Role::Leaving, Reason::Shutdown, now_ms, &mut actions);
        actions
    }

    pub fn status(&self) -> Status {
        let peers = self
            .peers
            .iter()
            .map(|(node, peer)| PeerStatus {
                node: node.clone(),
                state: if peer.role == Role::Leaving {
                    PeerState::Left
                } else if self.alive(peer, self.latest_ms) {
                    PeerState::Alive
                } else {
                    PeerState::Dead
                },
                role: peer.role,
                healthy: peer.healthy,
                preferred: peer.preferred,
                last_heartbeat_age_ms: self.latest_ms.saturating_sub(peer.last_heard_ms),
            })
            .collect();
        Status {
            node: self.params.node.clone(),
            role: self.role,
            healthy: self.healthy,
            incarnation: self.params.incarnation,
            takeovers: self.takeovers,
            peers,
        }
    }

    /// What every input does first: note the time, and on the very first input release the VIP,
    /// which an earlier run of this node may have left on the interface when it crashed.
    fn enter(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.latest_ms = self.latest_ms.max(now_ms);
        if !self.cleared {
            self.cleared = true;
            actions.push(Action::ReleaseVip);
        }
    }

    fn alive(&self, peer: &Peer, now_ms: u64) -> bool {
        peer.role != Role::Leaving && now_ms.saturating_sub(peer.last_heard_ms) < self.params.deadtime_ms
    }

    fn alive_peers(&self, now_ms: u64) -> impl Iterator<Item = (&String, &Peer)> {
        self.peers.iter().filter(move |(_, p)| self.alive(p, now_ms))
    }

    fn my_rank(&self) -> (bool, bool, Reverse<&str>) {
        rank(self.healthy, self.params.preferred, &self.params.node)
    }

    /// The role this node should move to, with why, if it should move (standby or active only).
    fn decide(&self, now_ms: u64) -> Option<(Role, Reason)> {
        let mine = self.my_rank();
        let mut alive = self.alive_peers(now_ms);
        if self.role == Role::Active {
            let outranked = |(node, p): (&String, &Peer)| {
                p.role == Role::Active && rank(p.healthy, p.preferred, node) > mine
            };
            let healthy_standby = |p: &Peer| p.role == Role::Standby && p.healthy;
            let peers: Vec<_> = alive.collect();
            if peers.iter().any(|&peer| outranked(peer)) {
                return Some((Role::Standby, Reason::SplitBrain));
            }
            if !self.healthy && peers.iter().any(|(_, p)| healthy_standby(p)) {
                return Some((Role::Standby, Reason::Unhealthy));
            }
            if self.params.auto_failback
                && !self.params.preferred
                && peers.iter().any(|(_, p)| healthy_standby(p) && p.preferred)
            {
                return Some((Role::Standby, Reason::Failback));
            }
            return None;
        }
        let first = alive.all(|(node, p)| match p.role {
            Role::Active => false,
            _ => rank(p.healthy, p.preferred, node) < mine,
        });
        if !first {
            return None;
        }
        let reason = if self.peers.values().any(|p| p.role == Role::Active) {
            Reason::PeerDead
        } else if self.peers.values().any(|p| p.role == Role::Leaving) {
            Reason::PeerLeft
        } else {
            Reason::NoHolder
        };
        Some((Role::Active, reason))
    }

    fn evaluate(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if let Some((role, reason)) = self.decide(now_ms) {
            self.become_(role, reason, now_ms, actions);
        }
    }

    fn leave_starting(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        // Decide as a standby would, then make the one transition out of starting.
        self.role = Role::Standby;
        let to = match self.decide(now_ms) {
            Some((Role::Active, _)) => Role::Active,
            _ => Role::Standby,
        };
        self.role = Role::Starting;
        self.become_(to, Reason::Started, now_ms, actions);
    }

    fn become_(&mut self, to: Role, reason: Reason, now_ms: u64, actions: &mut Vec<Action>) {
        let from = self.role;
        // The VIP first, then the word: a peer that takes over on our heartbeat finds it released.
        if from == Role::Active {
            actions.push(Action::ReleaseVip);
        }
        if to == Role::Active {
            actions.push(Action::TakeVip);
            self.takeovers += 1;
        }
        self.role = to;
        self.heartbeat(now_ms, actions);
        actions.push(Action::Notify(Transition { from, to, reason }));
    }

    fn heartbeat(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.sequence += 1;
        self.next_send_ms = now_ms.saturating_add(self.params.keepalive_ms);
        actions.push(Action::Send(Message {
            node: self.params.node.clone(),
            incarnation: self.params.incarnation,
            sequence: self.sequence,
            role: self.role,
            preferred: self.params.preferred,
            healthy: self.healthy,
        }));
    }
}

fn sent(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Send(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::ha::message::{decode, encode, PeerTracker};

    const KEEPALIVE: u64 = 100;
    const DEADTIME: u64 = 400;
    const INITDEAD: u64 = 2000;
    /// One-way delay of the simulated network.
    const LATENCY: u64 = 1;

    const A: usize = 0;
    const B: usize = 1;

    fn params(node: &str, preferred: bool, auto_failback: bool) -> Params {
        Params {
            node: node.into(),
            preferred,
            auto_failback,
            keepalive_ms: KEEPALIVE,
            deadtime_ms: DEADTIME,
            initdead_ms: INITDEAD,
            incarnation: 1,
        }
    }

    /// One ringlb process on one box: its machine and what the I/O around it would hold.
    struct Node {
        params: Params,
        machine: Machine,
        tracker: PeerTracker,
        /// The process runs and its link is up.
        up: bool,
        /// The VIP is on its interface.
        vip: bool,
        transitions: Vec<(u64, Transition)>,
    }

    /// Two nodes, a network with latency, loss and partitions, and a millisecond clock. Each
    /// node is ticked only when its machine asks (`next_tick_ms`), as the real loop would.
    struct Sim {
        now: u64,
        nodes: [Node; 2],
        key: Secret,
        /// (delivery time, destination, datagram)
        in_flight: Vec<(u64, usize, Vec<u8>)>,
        partitioned: bool,
        /// Decides from the running count of datagrams sent whether this one is lost.
        lose: fn(u64) -> bool,
        datagrams: u64,
        /// Every change of who holds the VIP: (time, A holds, B holds).
        owners: Vec<(u64, bool, bool)>,
    }

    impl Sim {
        fn new(a: Params, b: Params) -> Sim {
            let node = |params: Params| Node {
                machine: Machine::new(params.clone(), 0),
                params,
                tracker: PeerTracker::new(),
                up: true,
                vip: false,
                transitions: Vec::new(),
            };
            Sim {
                now: 0,
                nodes: [node(a), node(b)],
                key: Secret::from_bytes(b"simulated key"),
                in_flight: Vec::new(),
                partitioned: false,
                lose: |_| false,
                datagrams: 0,
                owners: vec![(0, false, false)],
            }
        }

        /// The article's pair: lb-db-01 preferred (or not), auto_failback as given.
        fn pair(preferred_a: bool, auto_failback: bool) -> Sim {
            Sim::new(
                params("lb-db-01", preferred_a, auto_failback),
                params("lb-db-02", false, auto_failback),
            )
        }

        /// Both nodes up and settled: one active, past initdead.
        fn settled(preferred_a: bool, auto_failback: bool) -> Sim {
            let mut sim = Sim::pair(preferred_a, auto_failback);
            sim.run_for(INITDEAD + 500);
            assert_eq!(sim.holders(), 1);
            sim
        }

        fn apply(&mut self, i: usize, actions: Vec<Action>) {
            for action in actions {
                match action {
                    Action::TakeVip => self.nodes[i].vip = true,
                    Action::ReleaseVip => self.nodes[i].vip = false,
                    Action::Notify(t) => self.nodes[i].transitions.push((self.now, t)),
                    Action::Send(message) => {
                        assert_eq!(message.node, self.nodes[i].params.node);
                        self.datagrams += 1;
                        if !self.partitioned && !(self.lose)(self.datagrams) {
                            let datagram = encode(&message, &self.key);
                            self.in_flight.push((self.now + LATENCY, 1 - i, datagram));
                        }
                    }
                }
            }
            let node = &self.nodes[i];
            if node.up {
                assert_eq!(
                    node.vip,
                    node.machine.role() == Role::Active,
                    "{} at {}: holds the VIP exactly when active",
                    node.params.node,
                    self.now
                );
            }
        }

        fn step(&mut self) {
            self.now += 1;
            let now = self.now;
            let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(at, _, _)| *at <= now);
            self.in_flight = later;
            for (_, to, datagram) in due {
                if !self.nodes[to].up {
                    continue;
                }
                let node = &mut self.nodes[to];
                let message = decode(&datagram, &self.key).expect("the simulated network corrupts nothing");
                if node.tracker.accept(&message).is_ok() {
                    let actions = node.machine.on_message(now, &message);
                    self.apply(to, actions);
                }
            }
            for i in [A, B] {
                if self.nodes[i].up && now >= self.nodes[i].machine.next_tick_ms() {
                    let actions = self.nodes[i].machine.tick(now);
                    self.apply(i, actions);
                }
            }
            let owners = (self.active(A), self.active(B));
            if self.owners.last().map(|&(_, a, b)| (a, b)) != Some(owners) {
                self.owners.push((now, owners.0, owners.1));
            }
        }

        fn run_for(&mut self, ms: u64) {
            for _ in 0..ms {
                self.step();
            }
        }

        /// Steps until `cond` holds, at most `ms`; the time it took, if it did.
        fn run_until(&mut self, ms: u64, cond: impl Fn(&Sim) -> bool) -> Option<u64> {
            let start = self.now;
            while self.now - start < ms {
                if cond(self) {
                    return Some(self.now - start);
                }
                self.step();
            }
            cond(self).then(|| self.now - start)
        }

        /// Holds the VIP where clients can reach it (a dead box's link is cut).
        fn active(&self, i: usize) -> bool {
            self.nodes[i].up && self.nodes[i].vip
        }

        fn holders(&self) -> usize {
            [A, B].iter().filter(|&&i| self.active(i)).count()
        }

        /// Kills the process and cuts the link: no goodbye, the VIP stays on a box nobody
        /// reaches.
        fn kill(&mut self, i: usize) {
            self.nodes[i].up = false;
        }

        /// Starts a fresh process (a new incarnation) on a box whose link is back.
        fn start(&mut self, i: usize) {
            let node = &mut self.nodes[i];
            node.params.incarnation += 1;
            node.machine = Machine::new(node.params.clone(), self.now);
            node.tracker = PeerTracker::new();
            node.up = true;
            // A real loop ticks as soon as it has a machine; this one clears the old VIP.
            let actions = self.nodes[i].machine.tick(self.now);
            self.apply(i, actions);
        }

        fn shutdown(&mut self, i: usize) {
            let actions = self.nodes[i].machine.shutdown(self.now);
            self.apply(i, actions);
            self.nodes[i].up = false;
        }

        fn set_health(&mut self, i: usize, healthy: bool) {
            let actions = self.nodes[i].machine.on_local_health(self.now, healthy);
            self.apply(i, actions);
        }

        /// Owner changes since `since`, each (time, A holds, B holds).
        fn changes_since(&self, since: u64) -> Vec<(u64, bool, bool)> {
            self.owners
                .iter()
                .copied()
                .filter(|&(t, _, _)| t > since)
                .collect()
        }

        /// Times at which both held the VIP, as (from, to) spans.
        fn two_owner_spans(&self) -> Vec<(u64, u64)> {
            let mut spans = Vec::new();
            for (i, &(t, a, b)) in self.owners.iter().enumerate() {
                if a && b {
                    let end = self.owners.get(i + 1).map_or(self.now, |&(t, _, _)| t);
                    spans.push((t, end));
                }
            }
            spans
        }
    }

    #[test]
    fn both_starting_together_elect_the_preferred_node_once() {
        for (preferred_a, expected) in [(true, A), (false, A)] {
            let mut sim = Sim::pair(preferred_a, true);
            sim.run_for(INITDEAD + 5000);
            assert!(sim.active(expected));
            assert_eq!(sim.holders(), 1);
            assert_eq!(sim.owners.len(), 2, "taken once, never moved: {:?}", sim.owners);
            assert!(
                sim.owners[1].0 >= INITDEAD,
                "nobody before initdead: {:?}",
                sim.owners
            );
        }
        // The preferred node wins over the smaller name.
        let mut sim = Sim::new(params("lb-db-01", false, true), params("lb-db-02", true, true));
        sim.run_for(INITDEAD + 5000);
        assert!(sim.active(B));
        assert_eq!(sim.owners.len(), 2, "{:?}", sim.owners);
    }

    #[test]
    fn a_lone_node_takes_the_vip_when_initdead_is_over_not_before() {
        let mut sim = Sim::pair(false, true);
        sim.kill(B);
        let took = sim.run_until(10_000, |s| s.active(A)).unwrap();
        assert_eq!(took, INITDEAD);
        let transitions: Vec<_> = sim.nodes[A].transitions.iter().map(|(_, t)| *t).collect();
        assert_eq!(
            transitions,
            vec![Transition {
                from: Role::Starting,
                to: Role::Active,
                reason: Reason::Started
            }]
        );
    }

    #[test]
    fn standby_takes_over_within_deadtime_plus_keepalive_after_the_active_dies() {
        for offset in (0..KEEPALIVE).step_by(7) {
            let mut sim = Sim::settled(true, true);
            sim.run_for(offset);
            assert!(sim.active(A));
            sim.kill(A);
            let took = sim.run_until(5000, |s| s.active(B)).expect("B takes over");
            assert!(
                took <= DEADTIME + KEEPALIVE,
                "took {took} ms after the kill at offset {offset}"
            );
            assert!(took + KEEPALIVE >= DEADTIME, "not before deadtime: {took} ms");
            let (_, last) = *sim.nodes[B].transitions.last().unwrap();
            assert_eq!(last.reason, Reason::PeerDead);
            assert_eq!(sim.nodes[B].machine.status().takeovers, 1);
        }
    }

    #[test]
    fn active_leaving_hands_over_at_once() {
        let mut sim = Sim::settled(true, true);
        sim.shutdown(A);
        let took = sim.run_until(5000, |s| s.active(B)).unwrap();
        assert!(took <= LATENCY + 1, "{took} ms");
        assert_eq!(
            sim.nodes[B].transitions.last().unwrap().1.reason,
            Reason::PeerLeft
        );
        assert!(sim.two_owner_spans().is_empty());
        let status = sim.nodes[B].machine.status();
        assert_eq!(status.peers[0].state, PeerState::Left);
    }

    #[test]
    fn standby_leaving_moves_nothing() {
        let mut sim = Sim::settled(true, true);
        let since = sim.now;
        sim.shutdown(B);
        sim.run_for(5000);
        assert!(sim.active(A));
        assert!(sim.changes_since(since).is_empty());
    }

    #[test]
    fn shutdown_releases_sends_leaving_and_is_final() {
        let mut machine = Machine::new(params("lb-db-01", true, true), 0);
        machine.tick(0);
        machine.tick(INITDEAD);
        assert_eq!(machine.role(), Role::Active);
        let actions = machine.shutdown(INITDEAD + 1);
        assert_eq!(actions[0], Action::ReleaseVip);
        assert!(matches!(&actions[1], Action::Send(m) if m.role == Role::Leaving));
        assert_eq!(
            actions[2],
            Action::Notify(Transition {
                from: Role::Active,
                to: Role::Leaving,
                reason: Reason::Shutdown
            })
        );
        assert!(machine.shutdown(INITDEAD + 2).is_empty());
        assert!(machine.tick(INITDEAD + 10_000).is_empty());
        assert!(machine.on_local_health(INITDEAD + 10_001, false).is_empty());
        assert_eq!(machine.next_tick_ms(), u64::MAX);
    }

    #[test]
    fn preferred_node_returning_takes_the_vip_back_with_auto_failback() {
        let mut sim = Sim::settled(true, true);
        sim.kill(A);
        sim.run_until(5000, |s| s.active(B)).unwrap();
        sim.run_for(3000);
        sim.start(A);
        let since = sim.now;
        // A hears B active, settles as standby at once, B releases, A takes: no initdead wait.
        let back = sim.run_until(5000, |s| s.active(A)).unwrap();
        assert!(back <= KEEPALIVE + 4 * LATENCY, "{back} ms");
        assert!(!sim.active(B));
        assert!(sim.two_owner_spans().is_empty(), "B releases before A takes");
        assert_eq!(
            sim.nodes[B].transitions.last().unwrap().1.reason,
            Reason::Failback
        );
        sim.run_for(5000);
        assert_eq!(sim.changes_since(since).len(), 2, "release, take; then quiet");
    }

    #[test]
    fn without_auto_failback_the_holder_keeps_the_vip_when_the_preferred_returns() {
        let mut sim = Sim::settled(true, false);
        sim.kill(A);
        sim.run_until(5000, |s| s.active(B)).unwrap();
        let since = sim.now;
        sim.start(A);
        sim.run_for(INITDEAD + 5000);
        assert!(sim.active(B));
        assert_eq!(sim.nodes[A].machine.role(), Role::Standby);
        assert!(sim.changes_since(since).is_empty());
    }

    #[test]
    fn crash_and_restart_within_deadtime_clears_the_old_vip_and_settles_on_one_holder() {
        let mut sim = Sim::settled(true, true);
        sim.kill(A);
        sim.run_for(50);
        sim.start(A);
        // The new process's first input clears the VIP the crashed one left on the interface.
        sim.step();
        assert!(!sim.nodes[A].vip);
        sim.run_until(5000, |s| s.active(A)).unwrap();
        sim.run_for(5000);
        assert!(sim.active(A) && !sim.active(B));
        assert!(sim.two_owner_spans().is_empty());
    }

    #[test]
    fn restart_without_preference_keeps_the_vip_on_the_survivor() {
        // No preferred node: after lb-db-01 dies and returns, lb-db-02 keeps the VIP even
        // though lb-db-01 has the smaller name.
        let mut sim = Sim::settled(false, true);
        assert!(sim.active(A));
        sim.kill(A);
        sim.run_until(5000, |s| s.active(B)).unwrap();
        let since = sim.now;
        sim.start(A);
        sim.run_for(INITDEAD + 5000);
        assert!(sim.active(B));
        assert!(sim.changes_since(since).is_empty());
    }

    #[test]
    fn partition_heal_leaves_one_active_within_one_keepalive() {
        // (A preferred, A healthy, B healthy, who keeps the VIP)
        let cases = [
            (true, true, true, A),
            (false, true, true, A),
            (false, false, true, B),
            (true, false, true, B),
        ];
        for (preferred_a, healthy_a, healthy_b, winner) in cases {
            for heal_offset in (0..KEEPALIVE).step_by(13) {
                let mut sim = Sim::settled(preferred_a, true);
                sim.partitioned = true;
                sim.run_for(DEADTIME + KEEPALIVE + 1);
                assert_eq!(sim.holders(), 2, "each side alone takes the VIP");
                sim.set_health(A, healthy_a);
                sim.set_health(B, healthy_b);
                sim.run_for(heal_offset + 1000);
                sim.partitioned = false;
                let healed = sim.now;
                sim.run_for(KEEPALIVE + 2 * LATENCY);
                assert_eq!(sim.holders(), 1, "one keepalive after the heal");
                assert!(sim.active(winner));
                let loser = 1 - winner;
                assert_eq!(
                    sim.nodes[loser].transitions.last().unwrap().1.reason,
                    Reason::SplitBrain
                );
                sim.run_for(5000);
                assert_eq!(sim.changes_since(healed).len(), 1, "one release, then quiet");
            }
        }
    }

    #[test]
    fn lost_heartbeats_short_of_deadtime_move_nothing() {
        let mut sim = Sim::settled(true, true);
        let since = sim.now;
        // Two of every three datagrams lost: never four keepalives of silence in a row.
        sim.lose = |n| n % 3 != 0;
        sim.run_for(30_000);
        assert!(
            sim.changes_since(since).is_empty(),
            "{:?}",
            sim.changes_since(since)
        );
        // Bursts of three lost heartbeats in a row (300 ms of silence < 400 ms deadtime).
        sim.lose = |n| n % 8 < 6;
        sim.run_for(30_000);
        assert!(sim.changes_since(since).is_empty());
        assert!(sim.active(A));
    }

    #[test]
    fn heavy_random_loss_never_leaves_two_owners_for_long() {
        // Here deaths are declared falsely now and then; whatever happens, every split
        // resolves within a keepalive of the two sides hearing each other again, and someone
        // always holds the VIP once settled.
        let mut sim = Sim::settled(true, true);
        sim.lose = |n| n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) % 10 < 6;
        let since = sim.now;
        for _ in 0..60_000 {
            sim.step();
            assert!(sim.holders() >= 1, "nobody holds the VIP at {}", sim.now);
        }
        assert!(
            !sim.two_owner_spans().is_empty(),
            "this much loss does cause false deaths"
        );
        for (from, to) in sim.two_owner_spans() {
            if from > since {
                assert!(to - from <= DEADTIME + 2 * KEEPALIVE, "two owners {from}..{to}");
            }
        }
    }

    #[test]
    fn active_with_all_backends_down_yields_to_a_healthy_peer() {
        for auto_failback in [true, false] {
            let mut sim = Sim::settled(true, auto_failback);
            sim.set_health(A, false);
            let moved = sim.run_until(1000, |s| s.active(B)).unwrap();
            assert!(moved <= 2 * LATENCY, "{moved} ms");
            assert!(sim.two_owner_spans().is_empty());
            assert_eq!(
                sim.nodes[A].transitions.last().unwrap().1.reason,
                Reason::Unhealthy
            );
            sim.run_for(3000);
            sim.set_health(A, true);
            sim.run_for(3000);
            // Healthy again: the preferred node takes it back only with auto_failback.
            assert_eq!(sim.active(A), auto_failback);
            assert_eq!(sim.holders(), 1);
            assert!(sim.two_owner_spans().is_empty());
        }
    }

    #[test]
    fn when_both_sides_are_unhealthy_the_vip_stays_put() {
        let mut sim = Sim::settled(true, true);
        let since = sim.now;
        sim.set_health(B, false);
        sim.run_for(1000);
        sim.set_health(A, false);
        sim.run_for(5000);
        assert!(sim.active(A));
        assert!(sim.changes_since(since).is_empty());
        // The standby recovers: the unhealthy holder hands over.
        sim.set_health(B, true);
        sim.run_until(1000, |s| s.active(B)).unwrap();
    }

    #[test]
    fn unhealthy_standby_is_not_handed_the_vip() {
        let mut sim = Sim::settled(false, true);
        let since = sim.now;
        sim.set_health(B, false);
        sim.run_for(1000);
        assert!(sim.active(A));
        assert!(sim.changes_since(since).is_empty());
        // Preferred but unhealthy: no failback either.
        let mut sim = Sim::new(params("lb-db-01", false, true), params("lb-db-02", true, true));
        sim.set_health(B, false);
        sim.run_for(INITDEAD + 5000);
        assert!(sim.active(A));
        assert_eq!(sim.owners.len(), 2, "{:?}", sim.owners);
    }

    #[test]
    fn status_reports_role_peer_heartbeat_age_and_takeovers() {
        let mut sim = Sim::settled(true, true);
        let status = sim.nodes[B].machine.status();
        assert_eq!(status.node, "lb-db-02");
        assert_eq!(status.role, Role::Standby);
        assert_eq!(status.takeovers, 0);
        assert_eq!(status.peers.len(), 1);
        let peer = &status.peers[0];
        assert_eq!(
            (peer.node.as_str(), peer.state, peer.role),
            ("lb-db-01", PeerState::Alive, Role::Active)
        );
        assert!(peer.healthy && peer.preferred);
        assert!(
            peer.last_heartbeat_age_ms <= KEEPALIVE,
            "{}",
            peer.last_heartbeat_age_ms
        );

        sim.kill(A);
        sim.run_for(DEADTIME + KEEPALIVE);
        let status = sim.nodes[B].machine.status();
        assert_eq!(status.role, Role::Active);
        assert_eq!(status.takeovers, 1);
        assert_eq!(status.peers[0].state, PeerState::Dead);
        assert!(status.peers[0].last_heartbeat_age_ms >= DEADTIME);
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"role\":\"active\""), "{json}");
        assert!(json.contains("\"state\":\"dead\""), "{json}");
    }

    #[test]
    fn heartbeats_go_out_every_keepalive_with_increasing_sequences() {
        let mut machine = Machine::new(params("lb-db-01", true, true), 1000);
        let mut sends = Vec::new();
        for now in 1000..2000 {
            if now >= machine.next_tick_ms() {
                for action in machine.tick(now) {
                    if let Action::Send(m) = action {
                        sends.push((now, m));
                    }
                }
            }
        }
        let times: Vec<u64> = sends.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            (1000..2000).step_by(KEEPALIVE as usize).collect::<Vec<_>>()
        );
        for (i, (_, m)) in sends.iter().enumerate() {
            assert_eq!(m.sequence, i as u64 + 1);
            assert_eq!((m.role, m.healthy, m.preferred), (Role::Starting, true, true));
            assert_eq!(m.node, "lb-db-01");
        }
    }

    #[test]
    fn first_input_clears_a_leftover_vip_once() {
        let mut machine = Machine::new(params("lb-db-01", false, true), 0);
        assert_eq!(machine.tick(0).first(), Some(&Action::ReleaseVip));
        assert!(!machine.tick(KEEPALIVE).contains(&Action::ReleaseVip));
        let mut machine = Machine::new(params("lb-db-01", false, true), 0);
        let peer = Message {
            node: "lb-db-02".into(),
            incarnation: 1,
            sequence: 1,
            role: Role::Active,
            preferred: false,
            healthy: true,
        };
        assert_eq!(machine.on_message(3, &peer).first(), Some(&Action::ReleaseVip));
        assert!(!machine.tick(4).contains(&Action::ReleaseVip));
    }

    #[test]
    fn a_message_in_its_own_name_is_ignored() {
        let mut machine = Machine::new(params("lb-db-01", false, true), 0);
        machine.tick(0);
        let echo = Message {
            node: "lb-db-01".into(),
            incarnation: 9,
            sequence: 1,
            role: Role::Active,
            preferred: true,
            healthy: true,
        };
        assert!(machine.on_message(10, &echo).is_empty());
        assert!(machine.status().peers.is_empty());
        assert_eq!(machine.role(), Role::Starting);
    }

    #[test]
    fn health_change_is_announced_at_once() {
        let mut machine = Machine::new(params("lb-db-01", false, true), 0);
        machine.tick(0);
        let actions = machine.on_local_health(5, false);
        assert!(matches!(&actions[..], [Action::Send(m)] if !m.healthy));
        assert!(
            machine.on_local_health(6, false).is_empty(),
            "no change, no message"
        );
    }

    #[test]
    fn params_come_from_the_ha_section() {
        let ha = HaConfig {
            node: "lb-db-02".into(),
            bind: "10.0.0.12:694".parse().unwrap(),
            peers: vec!["10.0.0.11:694".parse().unwrap()],
            vip: crate::config::parse_vip("10.0.0.100/24").unwrap(),
            interface: "eth0".into(),
            preferred: Some("lb-db-01".into()),
            auto_failback: false,
            keepalive_ms: 100,
            deadtime_ms: 400,
            initdead_ms: 2000,
            authkey_file: "/k".into(),
            authkey: Secret::from_bytes(b"k"),
            notify: None,
        };
        let p = Params::from_config(&ha, 77);
        assert_eq!(p.node, "lb-db-02");
        assert!(!p.preferred, "preferred names the other node");
        assert!(!p.auto_failback);
        assert_eq!(
            (p.keepalive_ms, p.deadtime_ms, p.initdead_ms, p.incarnation),
            (100, 400, 2000, 77)
        );
        let ha = HaConfig {
            node: "lb-db-01".into(),
            ..ha
        };
        assert!(Params::from_config(&ha, 1).preferred);
    }
}
