//! Network namespaces for the HA tests: private "boxes" on a private Ethernet segment, so that a
//! test can move a floating IP between nodes, cut a node off and watch ARP without touching the
//! host's network.
//!
//! What it promises:
//!
//! - [`Topology::new`] gives one namespace per named node, each with an `eth0` (a veth) whose peer
//!   is a port of a bridge living in a namespace of its own. Nothing is created in the host's
//!   namespace: no interface, no address, no route. Node `i` (in the order given) has address
//!   10.231.0.(11 + i)/24; [`VIP`] and other hosts of that subnet are free for the test.
//! - Namespace names are unique per test (`rlbt-<pid>-<counter>-<node>`), so tests may run in
//!   parallel. `Drop` deletes every namespace the topology created, even while a panic unwinds;
//!   namespaces left by a test process that was killed are deleted by the next [`Topology::new`].
//! - Code runs inside a node either as a child process ([`Topology::command`], `ip netns exec`) or
//!   as a closure on a thread that has entered the node's namespace with `setns`
//!   ([`Topology::run_in`]). Sockets opened there stay in that namespace wherever they are used.
//! - [`Topology::cut`] takes a node's bridge port down: the node neither sends nor receives, so
//!   no RST or ICMP reaches anyone, as when a box loses power. [`Topology::restore`] undoes it.
//!
//! Root is needed (creating namespaces); tests call [`require_root`] first.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{die_with_parent, find_program, is_root};

/// The prefix of every namespace the harness creates; the next topology deletes stale ones.
const NAMESPACE_PREFIX: &str = "rlbt-";
/// The interface of every node, the veth peer of its bridge port.
pub const NODE_INTERFACE: &str = "eth0";
/// The prefix length of the test subnet, 10.231.0.0/24.
pub const SUBNET_PREFIX: u8 = 24;
/// An address of the test subnet no node has: the floating IP of the HA tests.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 100);
const BRIDGE: &str = "br0";

/// Whether the test may go on: true as root. Otherwise it prints a loud SKIPPED line and returns
/// false, except under `CI=true`, where a skipped test would hide a broken CI setup: it panics.
pub fn require_root() -> bool {
    if is_root() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("this test").to_owned();
    let why = "it creates network namespaces, veth pairs and a bridge, which needs root";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} must run as root under CI=true: {why}");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of a passing test,
    // and a skip must not pass unnoticed.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: {why}; run the tests as root to include it ***\n"
    );
    false
}

/// One box of the topology.
#[derive(Debug)]
pub struct Node {
    /// The name the test gives it ("lb1", "client").
    pub name: String,
    pub namespace: String,
    /// Its address on [`NODE_INTERFACE`].
    pub addr: Ipv4Addr,
    /// Its bridge port, in the bridge's namespace: the switch port [`Topology::cut`] disables.
    port: String,
}

/// An entry of a namespace's neighbour (ARP) table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Lower-case `aa:bb:cc:dd:ee:ff`; none while unresolved or failed.
    pub mac: Option<String>,
    /// The kernel's NUD states, e.g. `["REACHABLE"]`, `["STALE"]`.
    pub state: Vec<String>,
}

/// Namespaces joined by a bridge; see the module docs.
#[derive(Debug)]
pub struct Topology {
    bridge_namespace: String,
    nodes: Vec<Node>,
    /// Every namespace created so far, deleted on drop even when construction fails halfway.
    created: Vec<String>,
}

impl Topology {
    /// Creates the bridge and one node per name, all links up; panics naming the step that failed.
    pub fn new(node_names: &[&str]) -> Topology {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        remove_stale_namespaces();
        let base = format!(
            "{NAMESPACE_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut topology = Topology {
            bridge_namespace: format!("{base}-bridge"),
            nodes: Vec::new(),
            created: Vec::new(),
        };
        let bridge = topology.bridge_namespace.clone();
        topology.add_namespace(&bridge);
        ip(&["-n", &bridge, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&["-n", &bridge, "link", "set", BRIDGE, "up"]);

        for (i, name) in node_names.iter().enumerate() {
            let host = u8::try_from(11 + i).expect("at most 240 nodes");
            let node = Node {
                name: (*name).to_owned(),
                namespace: format!("{base}-{name}"),
                addr: Ipv4Addr::new(10, 231, 0, host),
                port: format!("port{i}"),
            };
            topology.add_namespace(&node.namespace);
            let ns = node.namespace.as_str();
            // Created in the bridge's namespace with its peer moved straight into the node's:
            // the pair never appears in the host's namespace, so names cannot clash there.
            ip(&[
                "-n",
                &bridge,
                "link",
                "add",
                &node.port,
                "type",
                "veth",
                "peer",
                "name",
                NODE_INTERFACE,
                "netns",
                ns,
            ]);
            ip(&["-n", &bridge, "link", "set", &node.port, "master", BRIDGE, "up"]);
            let cidr = format!("{}/{SUBNET_PREFIX}", node.addr);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", NODE_INTERFACE]);
            ip(&["-n", ns, "link", "set", NODE_INTERFACE, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            topology.nodes.push(node);
        }
        topology
    }

    fn add_namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.created.push(name.to_owned());
    }

    /// The node called `name`; panics listing the nodes there are.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                panic!("no node {name:?} in the topology; there are {names:?}")
            })
    }

    pub fn namespace(&self, node: &str) -> &str {
        &self.node(node).namespace
    }

    pub fn addr(&self, node: &str) -> Ipv4Addr {
        self.node(node).addr
    }

    /// Runs `ip -n <node's namespace> args…` and returns its stdout; panics with its stderr.
    pub fn ip(&self, node: &str, args: &[&str]) -> String {
        let mut all = vec!["-n", self.namespace(node)];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// The MAC of the node's [`NODE_INTERFACE`], lower-case `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self, node: &str) -> String {
        let json = self.ip(node, &["-j", "link", "show", "dev", NODE_INTERFACE]);
        let links: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j link of {node}: {e}: {json}"));
        links[0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address in ip -j link of {node}: {json}"))
            .to_owned()
    }

    /// A command that runs `program` inside the node's namespace (through `ip netns exec`), dying
    /// with the thread that spawns it. The caller spawns, waits for and kills it.
    pub fn command(&self, node: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(find_program("ip"));
        command.args(["netns", "exec", self.namespace(node)]).arg(program);
        die_with_parent(&mut command);
        command
    }

    /// Runs `f` on a thread that has entered the node's network namespace, and returns what it
    /// returns; a panic in `f` goes on in the caller. The thread ends with `f`, so nothing else
    /// ever runs in the namespace by accident; sockets `f` opens stay in the namespace.
    pub fn run_in<T: Send>(&self, node: &str, f: impl FnOnce() -> T + Send) -> T {
        let namespace = self.namespace(node);
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns-{node}"))
                .spawn_scoped(scope, || {
                    enter_namespace(namespace);
                    f()
                })
                .expect("spawn a thread");
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Takes the node's bridge port down: from now on nothing it sends arrives and nothing reaches
    /// it (no RST, no ICMP), as when the box loses power or its cable.
    pub fn cut(&self, node: &str) {
        let port = &self.node(node).port;
        ip(&["-n", &self.bridge_namespace, "link", "set", port, "down"]);
    }

    /// Brings the node's bridge port back up after [`Topology::cut`].
    pub fn restore(&self, node: &str) {
        let port = &self.node(node).port;
        ip(&["-n", &self.bridge_namespace, "link", "set", port, "up"]);
    }

    /// Whether a TCP connection from inside `from` to `to` completes within `timeout`.
    pub fn tcp_connects(&self, from: &str, to: SocketAddr, timeout: Duration) -> bool {
        self.tcp_connect(from, to, timeout).is_ok()
    }

    /// A TCP connection attempt from inside `from`, with its error: `ConnectionRefused` means an
    /// RST came back, `TimedOut` that nothing did.
    pub fn tcp_connect(&self, from: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.run_in(from, || TcpStream::connect_timeout(&to, timeout))
    }

    /// The node's neighbour (ARP) entry for `ip` on [`NODE_INTERFACE`], if it has one.
    pub fn neighbour(&self, node: &str, ip: Ipv4Addr) -> Option<Neighbour> {
        let json = self.ip(
            node,
            &[
                "-j",
                "neigh",
                "show",
                "to",
                &ip.to_string(),
                "dev",
                NODE_INTERFACE,
            ],
        );
        let entries: serde_json::Value =
            serde_json::from_str(&json).unwrap_or_else(|e| panic!("ip -j neigh of {node}: {e}: {json}"));
        let entry = entries.as_array()?.first()?;
        Some(Neighbour {
            mac: entry["lladdr"].as_str().map(str::to_owned),
            state: entry["state"]
                .as_array()
                .map(|states| {
                    states
                        .iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace destroys its interfaces, and with a veth either end the pair.
        for namespace in self.created.iter().rev() {
            if let Err(e) = try_ip(&["netns", "del", namespace]) {
                eprintln!("could not delete network namespace {namespace}: {e}");
            }
        }
    }
}

/// Moves the calling thread into the named network namespace; panics naming it on failure.
/// Runs `f` on a thread inside the named namespace (see [`Topology::run_in`]); for code that
/// holds a namespace's name but not its topology.
pub fn in_namespace<T: Send>(namespace: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_namespace(namespace);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn enter_namespace(namespace: &str) {
    let path = Path::new("/run/netns").join(namespace);
    let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: the descriptor is open for the duration of the call; setns only changes this
    // thread's network namespace, which no other thread observes.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "setns into network namespace {namespace}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Deletes the namespaces of test processes that no longer exist (killed before their `Drop`).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NAMESPACE_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = try_ip(&["netns", "del", &name]);
        }
    }
}

/// Runs `ip args…`, returning stdout; panics with the command and its stderr when it fails.
fn ip(args: &[&str]) -> String {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_ip(args: &[&str]) -> Result<String, String> {
    let output: Output = Command::new(find_program("ip"))
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
