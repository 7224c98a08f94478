//! Writer and reader pools over a real three-node Galera cluster on loopback (MariaDB's
//! galera-4 provider, state transfers by rsync): a node set to `wsrep_desync = ON` (Galera state
//! 2, Donor/Desynced, as a donor is) leaves the pools and comes back; the writer stays unique
//! throughout, and moves only when the writer itself stops qualifying.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use mysql::prelude::Queryable;
use support::{free_port, poll_until, wait_until, MariaDb, Ringlb};

/// The Galera provider of the OS package.
const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";

/// A node of cluster `cluster`, joining the nodes at `peers` (Galera ports; none: it starts the
/// cluster), with its own Galera, IST and SST ports.
fn node(cluster: &str, peers: &[u16]) -> (MariaDb, u16) {
    let (gcomm, ist, sst) = (free_port(), free_port(), free_port());
    let peers: Vec<String> = peers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let server = MariaDb::start_galera_node(&[
        "--wsrep-on=ON",
        &format!("--wsrep-provider={PROVIDER}"),
        &format!("--wsrep-cluster-name={cluster}"),
        &format!("--wsrep-cluster-address=gcomm://{}", peers.join(",")),
        &format!("--wsrep-node-address=127.0.0.1:{gcomm}"),
        &format!(
            "--wsrep-provider-options=gmcast.listen_addr=tcp://127.0.0.1:{gcomm};\
             ist.recv_addr=127.0.0.1:{ist};gcache.size=16M"
        ),
        "--wsrep-sst-method=rsync",
        &format!("--wsrep-sst-receive-address=127.0.0.1:{sst}"),
        "--binlog-format=ROW",
        "--innodb-autoinc-lock-mode=2",
    ]);
    (server, gcomm)
}

fn root(server: &MariaDb, sql: &str) {
    let mut conn = server.root_conn().expect("root connection");
    conn.query_drop(sql)
        .unwrap_or_else(|e| panic!("{sql} on {}: {e}", server.addr()));
}

/// What `/stats` says of each backend of `listener`: (backend, role, why_not).
fn roles(ringlb: &Ringlb, listener: &str) -> Vec<(String, String, String)> {
    let stats = ringlb.stats_json();
    stats["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter(|b| b["listener"] == listener)
        .map(|b| {
            let text = |key: &str| b[key].as_str().unwrap_or_default().to_string();
            (text("backend"), text("role"), text("why_not"))
        })
        .collect()
}

fn role_of(ringlb: &Ringlb, listener: &str, backend: SocketAddr) -> (String, String) {
    roles(ringlb, listener)
        .into_iter()
        .find(|(b, _, _)| *b == backend.to_string())
        .map(|(_, role, why)| (role, why))
        .expect("the backend in /stats")
}

/// The writers of `rw` now; asserts there is never more than one.
fn writer(ringlb: &Ringlb) -> Option<String> {
    let writers: Vec<String> = roles(ringlb, "rw")
        .into_iter()
        .filter(|(_, role, _)| role == "writer")
        .map(|(b, _, _)| b)
        .collect();
    assert!(writers.len() <= 1, "two writers at once: {writers:?}");
    writers.into_iter().next()
}

#[test]
fn a_desynced_galera_node_leaves_the_pools_and_the_writer_stays_unique() {
    let cluster = format!("rlb{}", free_port());
    let (n1, p1) = node(&cluster, &[]);
    let (n2, p2) = node(&cluster, &[p1]);
    let (n3, _) = node(&cluster, &[p1, p2]);
    let nodes = [n1.addr(), n2.addr(), n3.addr()];
    let backends: String = nodes
        .iter()
        .map(|n| format!("[[listener.backend]]\naddress = \"{n}\"\n"))
        .collect();
    let read_port = free_port();
    let ringlb = Ringlb::start_with_file(move |listen, admin| {
        format!(
            "[global]\nadmin = \"{admin}\"\n[health]\ninterval_ms = 200\nrise = 2\nfall = 2\n\n\
             [[listener]]\nname = \"rw\"\nbind = \"{listen}\"\nrole = \"writer\"\n{backends}\n\
             [[listener]]\nname = \"ro\"\nbind = \"127.0.0.1:{read_port}\"\nrole = \"reader\"\n\
             reader_uses_writer = true\n{backends}"
        )
    });
    let within = Duration::from_secs(15);
    let await_writer = |expected: SocketAddr, after: &str| {
        wait_until(within, &format!("writer {expected} {after}"), || {
            writer(&ringlb).as_deref() == Some(expected.to_string().as_str())
        })
    };
    let await_role = |listener: &str, node: SocketAddr, expected: &str, after: &str| {
        let mut last = Default::default();
        let found = poll_until(within, || {
            // Polled often: the writer is checked for uniqueness at every look.
            writer(&ringlb);
            last = role_of(&ringlb, listener, node);
            last.0 == expected
        });
        assert!(found, "{node} in {listener} is {last:?}, not {expected}, {after}");
        last.1
    };

    await_writer(
        nodes[0],
        "at start-up: every node is Synced, the first listed wins",
    );
    for node in nodes {
        await_role("ro", node, "reader", "at start-up");
    }
    assert_eq!(
        ringlb.metric(
            "ringlb_backend_galera_state",
            &[("backend", &nodes[1].to_string()), ("listener", "ro")]
        ),
        Some(4.0)
    );

    // A desynced node (as a donor is) leaves the reader pool, and comes back once in sync.
    root(&n2, "SET GLOBAL wsrep_desync = ON");
    let why = await_role("ro", nodes[1], "none", "while desynced");
    assert!(why.contains("wsrep_desync is ON"), "{why}");
    assert_eq!(writer(&ringlb).as_deref(), Some(nodes[0].to_string().as_str()));
    root(&n2, "SET GLOBAL wsrep_desync = OFF");
    await_role("ro", nodes[1], "reader", "after wsrep_desync = OFF");

    // The writer desynced: the role moves to the next Synced node, and stays there after.
    root(&n1, "SET GLOBAL wsrep_desync = ON");
    await_writer(nodes[1], "after the writer desynced");
    root(&n1, "SET GLOBAL wsrep_desync = OFF");
    await_role(
        "ro",
        nodes[0],
        "reader",
        "after the former writer is in sync again",
    );
    // It qualifies as a writer again (its checker has elected since), and the role stays put.
    wait_until(within, "the former writer qualifying again", || {
        role_of(&ringlb, "rw", nodes[0]).1.starts_with("qualifies")
    });
    assert_eq!(writer(&ringlb).as_deref(), Some(nodes[1].to_string().as_str()));
    // Writes through the writer listener land on the writer and replicate to every node.
    let mut conn = ringlb.conn();
    conn.query_drop("CREATE TABLE IF NOT EXISTS galera_writes (id INT PRIMARY KEY, port INT)")
        .unwrap();
    conn.query_drop("INSERT INTO galera_writes VALUES (1, @@port)")
        .unwrap();
    for node in [&n1, &n2, &n3] {
        let mut direct = node.root_conn().unwrap();
        // Applied on the other nodes a moment after the commit (wsrep_sync_wait is off).
        let mut port: Option<u16> = None;
        poll_until(within, || {
            port = direct
                .query_first("SELECT port FROM ringlb_test.galera_writes WHERE id = 1")
                .unwrap();
            port.is_some()
        });
        assert_eq!(port, Some(n2.port()), "on {}", node.addr());
    }
}
