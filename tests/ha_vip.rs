//! The HA sidecar's I/O against a real kernel: the VIP added and removed through netlink and
//! gratuitous ARP, inside network namespaces on a private bridge (lb1, lb2, client).
//!
//! The library code runs inside a node through [`Topology::run_in`], a thread that has entered
//! the node's namespace, as the HA thread runs in the namespace of the ringlb process. Needs root;
//! see [`require_root`].

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ringlb::ha::garp;
use ringlb::ha::vip::Vip;
use support::netns::{require_root, Topology, NODE_INTERFACE, SUBNET_PREFIX, VIP};
use support::wait_until;

/// A port for the test listeners; namespaces are private, so any port is free.
const PORT: u16 = 4040;
/// How long a step that should be immediate may take before the test fails.
const PROMPT: Duration = Duration::from_secs(2);
/// One connection attempt while polling: short, because on a segment without routers an answer
/// takes well under a millisecond.
const ATTEMPT: Duration = Duration::from_millis(200);

fn vip_in(net: &Topology, node: &str) -> Vip {
    net.run_in(node, || Vip::new(VIP, SUBNET_PREFIX, NODE_INTERFACE))
        .unwrap_or_else(|e| panic!("VIP on {node}: {e}"))
}

fn vip_address() -> SocketAddr {
    SocketAddr::from((VIP, PORT))
}

/// A listener on VIP:PORT inside `node`; binding proves the node holds the VIP.
fn listen_on_vip(net: &Topology, node: &str) -> TcpListener {
    net.run_in(node, || TcpListener::bind(vip_address()))
        .unwrap_or_else(|e| panic!("bind {} in {node}: {e}", vip_address()))
}

#[test]
fn added_vip_answers_the_client_and_is_gone_after_remove() {
    if !require_root() {
        return;
    }
    let net = Topology::new(&["lb1", "lb2", "client"]);
    let vip = vip_in(&net, "lb1");

    assert!(!net
        .run_in("lb1", || vip.is_present())
        .expect("dump lb1's addresses"));
    net.run_in("lb1", || vip.add()).expect("add the VIP in lb1");
    assert!(net
        .run_in("lb1", || vip.is_present())
        .expect("dump lb1's addresses"));
    net.run_in("lb1", || vip.add())
        .expect("adding a VIP that is there succeeds");

    let addresses = net.ip("lb1", &["-4", "addr", "show", "dev", NODE_INTERFACE]);
    assert!(
        addresses.contains(&format!("{VIP}/{SUBNET_PREFIX}")) && addresses.contains("eth0:ringlb"),
        "lb1 should show the VIP with its label:\n{addresses}"
    );
    let lb2_vip = vip_in(&net, "lb2");
    assert!(
        !net.run_in("lb2", || lb2_vip.is_present())
            .expect("dump lb2's addresses"),
        "the VIP was added in lb1's namespace only"
    );

    let listener = listen_on_vip(&net, "lb1");
    wait_until(PROMPT, "the client to connect to the VIP held by lb1", || {
        net.tcp_connects("client", vip_address(), ATTEMPT)
    });
    drop(listener);

    net.run_in("lb1", || vip.remove())
        .expect("remove the VIP from lb1");
    assert!(!net
        .run_in("lb1", || vip.is_present())
        .expect("dump lb1's addresses"));
    net.run_in("lb1", || vip.remove())
        .expect("removing a VIP that is not there succeeds");
    let bound = net.run_in("lb1", || TcpListener::bind(vip_address()));
    assert!(bound.is_err(), "lb1 can still bind the removed VIP");
}

#[test]
fn gratuitous_arp_from_the_new_holder_repoints_the_clients_neighbour_entry_at_once() {
    if !require_root() {
        return;
    }
    let net = Topology::new(&["lb1", "lb2", "client"]);
    let (lb1_mac, lb2_mac) = (net.mac("lb1"), net.mac("lb2"));

    // The client talks to the VIP on lb1, so its neighbour table maps the VIP to lb1's MAC.
    let on_lb1 = vip_in(&net, "lb1");
    net.run_in("lb1", || on_lb1.add()).expect("add the VIP in lb1");
    let listener = listen_on_vip(&net, "lb1");
    wait_until(PROMPT, "the client to connect to the VIP held by lb1", || {
        net.tcp_connects("client", vip_address(), ATTEMPT)
    });
    drop(listener);
    let before = net
        .neighbour("client", VIP)
        .expect("the client has an entry for the VIP");
    assert_eq!(before.mac.as_deref(), Some(lb1_mac.as_str()), "{before:?}");

    // The VIP moves. Adding an address announces nothing, so the client still points at lb1,
    // where packets for the VIP are now dropped, and would until its entry goes stale and is
    // probed again (tens of seconds).
    net.run_in("lb1", || on_lb1.remove())
        .expect("remove the VIP from lb1");
    let on_lb2 = vip_in(&net, "lb2");
    net.run_in("lb2", || on_lb2.add()).expect("add the VIP in lb2");
    let listener = listen_on_vip(&net, "lb2");
    let moved = net
        .neighbour("client", VIP)
        .expect("the client still has an entry");
    assert_eq!(moved.mac.as_deref(), Some(lb1_mac.as_str()), "{moved:?}");

    let sent = Instant::now();
    let garp_mac = net
        .run_in("lb2", || -> Result<[u8; 6], garp::GarpError> {
            let garp = garp::Garp::open(NODE_INTERFACE, VIP)?;
            garp.send()?;
            Ok(garp.mac())
        })
        .expect("gratuitous ARP from lb2");
    let garp_mac = garp_mac.map(|b| format!("{b:02x}")).join(":");
    assert_eq!(
        garp_mac, lb2_mac,
        "the frames announce lb2's eth0, read with SIOCGIFHWADDR"
    );
    net.run_in("lb2", || garp::send_burst(NODE_INTERFACE, VIP, 3))
        .expect("a burst of gratuitous ARP from lb2");

    // Well under a second: no waiting for the entry to expire.
    wait_until(
        Duration::from_secs(1),
        "the client's entry for the VIP to name lb2's MAC",
        || net.neighbour("client", VIP).and_then(|n| n.mac).as_deref() == Some(lb2_mac.as_str()),
    );
    println!(
        "client's neighbour entry for {VIP} repointed at lb2 {:?} after the first frame",
        sent.elapsed()
    );
    assert!(
        net.tcp_connects("client", vip_address(), ATTEMPT),
        "the client reaches the VIP on lb2 with its updated entry"
    );
    drop(listener);
}

#[test]
fn a_cut_node_neither_answers_nor_resets_until_its_link_is_restored() {
    if !require_root() {
        return;
    }
    let net = Topology::new(&["lb1", "client"]);
    // No listener on this port: a reachable lb1 answers with an RST.
    let closed_port = SocketAddr::from((net.addr("lb1"), PORT));
    let refused = net
        .tcp_connect("client", closed_port, ATTEMPT)
        .map(drop)
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");

    net.cut("lb1");
    let silent = net
        .tcp_connect("client", closed_port, ATTEMPT)
        .map(drop)
        .unwrap_err();
    assert_eq!(
        silent.kind(),
        std::io::ErrorKind::TimedOut,
        "a cut node sent something back: {silent}"
    );

    net.restore("lb1");
    wait_until(PROMPT, "lb1 to answer again after its link is restored", || {
        net.tcp_connect("client", closed_port, ATTEMPT)
            .map(drop)
            .err()
            .map(|e| e.kind())
            == Some(std::io::ErrorKind::ConnectionRefused)
    });
}

#[test]
fn each_node_sees_only_its_own_namespace() {
    if !require_root() {
        return;
    }
    let net = Topology::new(&["lb1", "client"]);
    let lb1 = net.addr("lb1");
    let listener = net
        .run_in("lb1", || TcpListener::bind((lb1, PORT)))
        .expect("bind lb1's own address inside lb1");
    assert!(
        net.run_in("client", || TcpListener::bind((lb1, PORT))).is_err(),
        "the client must not have lb1's address"
    );
    assert!(
        TcpListener::bind((Ipv4Addr::new(10, 231, 0, 11), PORT)).is_err(),
        "the host's namespace must not have the test subnet"
    );
    let output = net
        .command("client", "ip")
        .args(["-4", "-o", "addr", "show", "dev", NODE_INTERFACE])
        .output()
        .expect("run ip inside the client");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&net.addr("client").to_string()), "{text}");
    drop(listener);
}
