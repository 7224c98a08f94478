//! `/metrics`: a [`Snapshot`] in the Prometheus text exposition format (version 0.0.4).
//!
//! A pure function of the snapshot, so the exact output is unit-tested. Every family has its
//! `# HELP` and `# TYPE` lines even when it has no samples, and label values are escaped, since
//! listener names come from the operator's file.

use std::borrow::Cow;
use std::fmt::Write;

use crate::ha::status::HaStatus;
use crate::stats::{BackendSnapshot, ListenerSnapshot, Snapshot, WorkerSnapshot};

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A family with one sample per `T` (a backend or a listener).
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&T) -> u64,
}

const BACKEND_GAUGES_AND_COUNTERS: [Family<BackendSnapshot>; 4] = [
    Family {
        name: "ringlb_backend_up",
        kind: "gauge",
        help: "Whether health checks count the backend up (1) or down (0).",
        value: |b| u64::from(b.up),
    },
    Family {
        name: "ringlb_backend_active_connections",
        kind: "gauge",
        help: "Client connections relayed to the backend right now.",
        value: |b| b.active_connections,
    },
    Family {
        name: "ringlb_backend_connections_total",
        kind: "counter",
        help: "Connections made to the backend.",
        value: |b| b.connections_total,
    },
    Family {
        name: "ringlb_backend_connect_errors_total",
        kind: "counter",
        help: "Connects to the backend that failed or timed out.",
        value: |b| b.connect_errors_total,
    },
];

/// Renders every metric family.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(512 + snapshot.backends.len() * 600);
    let labels: Vec<String> = snapshot
        .backends
        .iter()
        .map(|b| {
            format!(
                "backend=\"{}\",listener=\"{}\"",
                escape(&b.backend),
                escape(&b.listener)
            )
        })
        .collect();
    let backends: Vec<_> = snapshot.backends.iter().zip(&labels).collect();
    render_families(
        &mut out,
        &BACKEND_GAUGES_AND_COUNTERS,
        &backends,
        |(b, labels)| (Cow::Borrowed(labels.as_str()), *b),
    );
    header(
        &mut out,
        "ringlb_backend_bytes_total",
        "counter",
        "Bytes relayed, by direction: client to backend (to_backend) or backend to client (to_client).",
    );
    for (b, labels) in snapshot.backends.iter().zip(&labels) {
        let _ = writeln!(
            out,
            "ringlb_backend_bytes_total{{{labels},direction=\"to_backend\"}} {}",
            b.bytes_to_backend_total
        );
        let _ = writeln!(
            out,
            "ringlb_backend_bytes_total{{{labels},direction=\"to_client\"}} {}",
            b.bytes_to_client_total
        );
    }
    header(
        &mut out,
        "ringlb_worker_accepted_total",
        "counter",
        "Client connections accepted by each worker thread.",
    );
    for w in &snapshot.workers {
        let _ = writeln!(
            out,
            "ringlb_worker_accepted_total{{worker=\"{}\"}} {}",
            w.worker, w.accepted_total
        );
    }
    // After the families above, so that their exposition stays byte-for-byte as it was.
    if !snapshot.listeners.is_empty() {
        render_families(&mut out, &LISTENER_FAMILIES, &snapshot.listeners, |l| {
            (Cow::Owned(format!("listener=\"{}\"", escape(&l.listener))), l)
        });
    }
    header(
        &mut out,
        "ringlb_backend_maxconn",
        "gauge",
        "Connections the backend holds at most (0: no limit).",
    );
    for (b, labels) in snapshot.backends.iter().zip(&labels) {
        let _ = writeln!(out, "ringlb_backend_maxconn{{{labels}}} {}", b.maxconn);
    }
    render_families(&mut out, &WORKER_FAMILIES, &snapshot.workers, |w| {
        (Cow::Owned(format!("worker=\"{}\"", w.worker)), w)
    });
    render_roles(&mut out, snapshot, &labels);
    if !snapshot.driver.is_empty() {
        header(
            &mut out,
            "ringlb_driver",
            "gauge",
            "The workers' I/O driver, in the driver label: io_uring or epoll ([tuning] driver). Always 1.",
        );
        let _ = writeln!(out, "ringlb_driver{{driver=\"{}\"}} 1", escape(&snapshot.driver));
    }
    out
}

/// The roles an HA node can be in, each a sample of `ringlb_ha_role` (1 for the one it is in).
const HA_ROLES: [&str; 4] = ["starting", "standby", "active", "leaving"];

/// The HA sidecar's families: every header always, samples only with `[ha]` (but
/// `ringlb_ha_enabled`, which says which). Across the two nodes, `ringlb_ha_vip_held == 1` names
/// the VIP's owner.
pub fn render_ha(out: &mut String, ha: &HaStatus) {
    header(
        out,
        "ringlb_ha_enabled",
        "gauge",
        "Whether this node runs the HA sidecar ([ha] configured): 1 or 0.",
    );
    let _ = writeln!(out, "ringlb_ha_enabled {}", u8::from(ha.enabled));
    header(
        out,
        "ringlb_ha_role",
        "gauge",
        "This node's HA role, one sample per role in the role label: 1 for the one it is in (starting, standby, active or leaving).",
    );
    let node = escape(&ha.node);
    if ha.enabled {
        for role in HA_ROLES {
            let _ = writeln!(
                out,
                "ringlb_ha_role{{node=\"{node}\",role=\"{role}\"}} {}",
                u8::from(ha.role == role)
            );
        }
    }
    header(
        out,
        "ringlb_ha_vip_held",
        "gauge",
        "Whether this node holds the floating IP now: 1 or 0.",
    );
    if ha.enabled {
        let _ = writeln!(
            out,
            "ringlb_ha_vip_held{{node=\"{node}\",vip=\"{}\"}} {}",
            escape(&ha.vip),
            u8::from(ha.vip_held)
        );
    }
    header(
        out,
        "ringlb_ha_healthy",
        "gauge",
        "Whether at least one backend is up on this node (a node with none yields the VIP): 1 or 0.",
    );
    if ha.enabled {
        let _ = writeln!(
            out,
            "ringlb_ha_healthy{{node=\"{node}\"}} {}",
            u8::from(ha.healthy)
        );
    }
    header(
        out,
        "ringlb_ha_peer_up",
        "gauge",
        "Whether the peer's authenticated heartbeats arrive (1) or stopped for deadtime_ms (0).",
    );
    let peers = if ha.enabled { &ha.peers[..] } else { &[] };
    for peer in peers {
        let _ = writeln!(
            out,
            "ringlb_ha_peer_up{{peer=\"{}\",peer_node=\"{}\"}} {}",
            escape(&peer.address),
            escape(&peer.node),
            u8::from(peer.state == "alive")
        );
    }
    header(
        out,
        "ringlb_ha_takeovers_total",
        "counter",
        "Times this node took the floating IP over.",
    );
    if ha.enabled {
        let _ = writeln!(
            out,
            "ringlb_ha_takeovers_total{{node=\"{node}\"}} {}",
            ha.takeovers
        );
    }
    header(
        out,
        "ringlb_ha_heartbeats_dropped_total",
        "counter",
        "Heartbeat datagrams dropped, by reason (bad_tag: not signed with the key; replayed, stale, unknown_sender, malformed, truncated, oversized).",
    );
    if ha.enabled {
        for (reason, count) in ha.dropped.by_reason() {
            let _ = writeln!(
                out,
                "ringlb_ha_heartbeats_dropped_total{{node=\"{node}\",reason=\"{reason}\"}} {count}"
            );
        }
    }
}

/// A per-backend gauge that only some backends have: name, help, and its value when there is one.
type OptionalGauge = (&'static str, &'static str, fn(&BackendSnapshot) -> Option<u64>);

/// What the role pools know of their servers: a sample only where there is something to say
/// (a backend outside a role pool has no read_only, a server that is no replica no lag).
fn render_roles(out: &mut String, snapshot: &Snapshot, labels: &[String]) {
    header(
        out,
        "ringlb_backend_role",
        "gauge",
        "The backend's role in its pool now, in the role label: writer, reader, primary (a reader pool's fallback), none, or any (a pool without a role). Always 1.",
    );
    for (b, labels) in snapshot.backends.iter().zip(labels) {
        let _ = writeln!(
            out,
            "ringlb_backend_role{{{labels},role=\"{}\"}} 1",
            escape(&b.role)
        );
    }
    // Gauges a backend has only in some pools: a sample where there is a value.
    let optional: [OptionalGauge; 3] = [
        (
            "ringlb_backend_read_only",
            "In a writer or reader pool: the server's read_only (or super_read_only) at the last check, 1 on, 0 off.",
            |b| b.read_only.map(u64::from),
        ),
        (
            "ringlb_backend_replication_lag_seconds",
            "In a reader pool: the replica's Seconds_Behind_Master at the last check (the worst over its sources); absent when it reports none.",
            |b| b.lag_s,
        ),
        (
            "ringlb_backend_galera_state",
            "In a writer or reader pool: Galera's wsrep_local_state (1 Joining, 2 Donor/Desynced, 3 Joined, 4 Synced); 0 on a server without Galera.",
            |b| b.galera_state.map(u64::from),
        ),
    ];
    for (name, help, value) in optional {
        header(out, name, "gauge", help);
        for (b, labels) in snapshot.backends.iter().zip(labels) {
            if let Some(value) = value(b) {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    }
    header(
        out,
        "ringlb_writer_changes_total",
        "counter",
        "Changes of a writer pool's writer (elected, moved or lost); pools over the same servers share one writer and one count.",
    );
    for l in &snapshot.listeners {
        if let Some(changes) = l.writer_changes_total {
            let _ = writeln!(
                out,
                "ringlb_writer_changes_total{{listener=\"{}\"}} {changes}",
                escape(&l.listener)
            );
        }
    }
}

/// Each family's header, then one sample per item: `sample` gives an item's labels and what the
/// family's value reads.
fn render_families<'a, I, T: 'a>(
    out: &mut String,
    families: &[Family<T>],
    items: &'a [I],
    sample: impl Fn(&'a I) -> (Cow<'a, str>, &'a T),
) {
    for family in families {
        header(out, family.name, family.kind, family.help);
        for item in items {
            let (labels, value) = sample(item);
            let _ = writeln!(out, "{}{{{labels}}} {}", family.name, (family.value)(value));
        }
    }
}

/// What explains a stall in a worker: each its own family, one sample per worker.
const WORKER_FAMILIES: [Family<WorkerSnapshot>; 6] = [
    Family {
        name: "ringlb_worker_open_connections",
        kind: "gauge",
        help: "Client connections the worker holds right now (queued, connecting or relaying).",
        value: |w| w.open,
    },
    Family {
        name: "ringlb_worker_buffer_waits_total",
        kind: "counter",
        help: "Reads that found every provided buffer in use and waited for one ([tuning] buffers).",
        value: |w| w.buffer_waits_total,
    },
    Family {
        name: "ringlb_worker_backlogged_total",
        kind: "counter",
        help: "Submissions that found the submission queue full and waited in the worker's backlog ([tuning] ring_entries).",
        value: |w| w.backlogged_total,
    },
    Family {
        name: "ringlb_worker_backlog",
        kind: "gauge",
        help: "Submissions waiting in the worker's backlog right now.",
        value: |w| w.backlog,
    },
    Family {
        name: "ringlb_worker_cq_overflows_total",
        kind: "counter",
        help: "Times the completion queue was full and the kernel held completions back ([tuning] ring_entries).",
        value: |w| w.cq_overflows_total,
    },
    Family {
        name: "ringlb_worker_accounting_errors_total",
        kind: "counter",
        help: "Completions that matched no operation in flight: a bug, counted and logged (please report).",
        value: |w| w.accounting_errors_total,
    },
];

const LISTENER_FAMILIES: [Family<ListenerSnapshot>; 6] = [
    Family {
        name: "ringlb_listener_rejected_total",
        kind: "counter",
        help: "Client connections closed at accept because the listener's allow list left them out.",
        value: |l| l.rejected_total,
    },
    Family {
        name: "ringlb_listener_queued",
        kind: "gauge",
        help: "Clients waiting right now for a backend under its maxconn.",
        value: |l| l.queued,
    },
    Family {
        name: "ringlb_listener_queue_refused_total",
        kind: "counter",
        help: "Clients refused with 'Too many connections': the queue was full or their wait ran out.",
        value: |l| l.queue_refused_total,
    },
    Family {
        name: "ringlb_listener_idle_closed_total",
        kind: "counter",
        help: "Connections closed after idle_timeout_ms without a byte either way.",
        value: |l| l.idle_closed_total,
    },
    Family {
        name: "ringlb_listener_redispatches_total",
        kind: "counter",
        help:
            "Clients moved to another backend after theirs failed to connect or closed before its first byte.",
        value: |l| l.redispatches_total,
    },
    Family {
        name: "ringlb_listener_no_backend_total",
        kind: "counter",
        help: "Clients closed with 'no backend available': retries used up, every backend tried, or none up.",
        value: |l| l.no_backend_total,
    },
];

pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and line feed, as the format requires.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::WorkerSnapshot;

    fn backend(listener: &str, name: &str, up: bool, n: u64) -> BackendSnapshot {
        BackendSnapshot {
            state: "enabled".into(),
            backend: name.into(),
            listener: listener.into(),
            up,
            weight: 1,
            maxconn: 0,
            active_connections: n,
            connections_total: n * 10,
            connect_errors_total: n * 2,
            bytes_to_backend_total: n * 1000,
            bytes_to_client_total: n * 5000,
            role: "any".into(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_every_family_with_help_type_and_samples() {
        let snapshot = Snapshot {
            driver: String::new(),
            listeners: Vec::new(),
            backends: vec![
                backend("default", "db-01:3306", true, 3),
                backend("default", "db-02:3306", false, 0),
            ],
            workers: vec![
                WorkerSnapshot {
                    worker: 0,
                    accepted_total: 17,
                    open: 2,
                    buffer_waits_total: 5,
                    backlogged_total: 9,
                    backlog: 1,
                    cq_overflows_total: 3,
                    accounting_errors_total: 4,
                },
                WorkerSnapshot {
                    worker: 1,
                    accepted_total: 4,
                    ..Default::default()
                },
            ],
        };
        let expected = "\
# HELP ringlb_backend_up Whether health checks count the backend up (1) or down (0).
# TYPE ringlb_backend_up gauge
ringlb_backend_up{backend=\"db-01:3306\",listener=\"default\"} 1
ringlb_backend_up{backend=\"db-02:3306\",listener=\"default\"} 0
# HELP ringlb_backend_active_connections Client connections relayed to the backend right now.
# TYPE ringlb_backend_active_connections gauge
ringlb_backend_active_connections{backend=\"db-01:3306\",listener=\"default\"} 3
ringlb_backend_active_connections{backend=\"db-02:3306\",listener=\"default\"} 0
# HELP ringlb_backend_connections_total Connections made to the backend.
# TYPE ringlb_backend_connections_total counter
ringlb_backend_connections_total{backend=\"db-01:3306\",listener=\"default\"} 30
ringlb_backend_connections_total{backend=\"db-02:3306\",listener=\"default\"} 0
# HELP ringlb_backend_connect_errors_total Connects to the backend that failed or timed out.
# TYPE ringlb_backend_connect_errors_total counter
ringlb_backend_connect_errors_total{backend=\"db-01:3306\",listener=\"default\"} 6
ringlb_backend_connect_errors_total{backend=\"db-02:3306\",listener=\"default\"} 0
# HELP ringlb_backend_bytes_total Bytes relayed, by direction: client to backend (to_backend) or backend to client (to_client).
# TYPE ringlb_backend_bytes_total counter
ringlb_backend_bytes_total{backend=\"db-01:3306\",listener=\"default\",direction=\"to_backend\"} 3000
ringlb_backend_bytes_total{backend=\"db-01:3306\",listener=\"default\",direction=\"to_client\"} 15000
ringlb_backend_bytes_total{backend=\"db-02:3306\",listener=\"default\",direction=\"to_backend\"} 0
ringlb_backend_bytes_total{backend=\"db-02:3306\",listener=\"default\",direction=\"to_client\"} 0
# HELP ringlb_worker_accepted_total Client connections accepted by each worker thread.
# TYPE ringlb_worker_accepted_total counter
ringlb_worker_accepted_total{worker=\"0\"} 17
ringlb_worker_accepted_total{worker=\"1\"} 4
# HELP ringlb_backend_maxconn Connections the backend holds at most (0: no limit).
# TYPE ringlb_backend_maxconn gauge
ringlb_backend_maxconn{backend=\"db-01:3306\",listener=\"default\"} 0
ringlb_backend_maxconn{backend=\"db-02:3306\",listener=\"default\"} 0
# HELP ringlb_worker_open_connections Client connections the worker holds right now (queued, connecting or relaying).
# TYPE ringlb_worker_open_connections gauge
ringlb_worker_open_connections{worker=\"0\"} 2
ringlb_worker_open_connections{worker=\"1\"} 0
# HELP ringlb_worker_buffer_waits_total Reads that found every provided buffer in use and waited for one ([tuning] buffers).
# TYPE ringlb_worker_buffer_waits_total counter
ringlb_worker_buffer_waits_total{worker=\"0\"} 5
ringlb_worker_buffer_waits_total{worker=\"1\"} 0
# HELP ringlb_worker_backlogged_total Submissions that found the submission queue full and waited in the worker's backlog ([tuning] ring_entries).
# TYPE ringlb_worker_backlogged_total counter
ringlb_worker_backlogged_total{worker=\"0\"} 9
ringlb_worker_backlogged_total{worker=\"1\"} 0
# HELP ringlb_worker_backlog Submissions waiting in the worker's backlog right now.
# TYPE ringlb_worker_backlog gauge
ringlb_worker_backlog{worker=\"0\"} 1
ringlb_worker_backlog{worker=\"1\"} 0
# HELP ringlb_worker_cq_overflows_total Times the completion queue was full and the kernel held completions back ([tuning] ring_entries).
# TYPE ringlb_worker_cq_overflows_total counter
ringlb_worker_cq_overflows_total{worker=\"0\"} 3
ringlb_worker_cq_overflows_total{worker=\"1\"} 0
# HELP ringlb_worker_accounting_errors_total Completions that matched no operation in flight: a bug, counted and logged (please report).
# TYPE ringlb_worker_accounting_errors_total counter
ringlb_worker_accounting_errors_total{worker=\"0\"} 4
ringlb_worker_accounting_errors_total{worker=\"1\"} 0
# HELP ringlb_backend_role The backend's role in its pool now, in the role label: writer, reader, primary (a reader pool's fallback), none, or any (a pool without a role). Always 1.
# TYPE ringlb_backend_role gauge
ringlb_backend_role{backend=\"db-01:3306\",listener=\"default\",role=\"any\"} 1
ringlb_backend_role{backend=\"db-02:3306\",listener=\"default\",role=\"any\"} 1
# HELP ringlb_backend_read_only In a writer or reader pool: the server's read_only (or super_read_only) at the last check, 1 on, 0 off.
# TYPE ringlb_backend_read_only gauge
# HELP ringlb_backend_replication_lag_seconds In a reader pool: the replica's Seconds_Behind_Master at the last check (the worst over its sources); absent when it reports none.
# TYPE ringlb_backend_replication_lag_seconds gauge
# HELP ringlb_backend_galera_state In a writer or reader pool: Galera's wsrep_local_state (1 Joining, 2 Donor/Desynced, 3 Joined, 4 Synced); 0 on a server without Galera.
# TYPE ringlb_backend_galera_state gauge
# HELP ringlb_writer_changes_total Changes of a writer pool's writer (elected, moved or lost); pools over the same servers share one writer and one count.
# TYPE ringlb_writer_changes_total counter
";
        assert_eq!(render(&snapshot), expected);
    }

    #[test]
    fn empty_snapshot_still_declares_every_family() {
        let out = render(&Snapshot {
            driver: String::new(),
            listeners: Vec::new(),
            backends: vec![],
            workers: vec![],
        });
        assert_eq!(out.lines().filter(|l| l.starts_with("# TYPE ")).count(), 18);
        assert!(out.lines().all(|l| l.starts_with('#')));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("line\nbreak"), "line\\nbreak");
        assert_eq!(escape("plain:3306"), "plain:3306");
        let out = render(&Snapshot {
            driver: String::new(),
            listeners: Vec::new(),
            backends: vec![backend("we\"ird\\\n", "db:1", true, 1)],
            workers: vec![],
        });
        assert!(
            out.contains("ringlb_backend_up{backend=\"db:1\",listener=\"we\\\"ird\\\\\\n\"} 1\n"),
            "{out}"
        );
        // Every sample stays on one line.
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 8);
    }

    #[test]
    fn role_pools_export_what_their_checks_read() {
        let writer = BackendSnapshot {
            role: "writer".into(),
            read_only: Some(false),
            galera_state: Some(0),
            ..backend("rw", "db-01:3306", true, 1)
        };
        let replica = BackendSnapshot {
            role: "reader".into(),
            read_only: Some(true),
            lag_s: Some(7),
            galera_state: Some(4),
            ..backend("ro", "db-02:3306", true, 1)
        };
        let listener = ListenerSnapshot {
            listener: "rw".into(),
            role: "writer".into(),
            writer: Some("db-01:3306".into()),
            writer_changes_total: Some(2),
            ..Default::default()
        };
        let out = render(&Snapshot {
            driver: String::new(),
            listeners: vec![listener],
            backends: vec![writer, replica],
            workers: vec![],
        });
        for line in [
            "ringlb_backend_role{backend=\"db-01:3306\",listener=\"rw\",role=\"writer\"} 1",
            "ringlb_backend_role{backend=\"db-02:3306\",listener=\"ro\",role=\"reader\"} 1",
            "ringlb_backend_read_only{backend=\"db-01:3306\",listener=\"rw\"} 0",
            "ringlb_backend_read_only{backend=\"db-02:3306\",listener=\"ro\"} 1",
            "ringlb_backend_replication_lag_seconds{backend=\"db-02:3306\",listener=\"ro\"} 7",
            "ringlb_backend_galera_state{backend=\"db-02:3306\",listener=\"ro\"} 4",
            "ringlb_writer_changes_total{listener=\"rw\"} 2",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
        }
        assert!(
            !out.contains("ringlb_backend_replication_lag_seconds{backend=\"db-01"),
            "{out}"
        );
    }

    #[test]
    fn ha_families_are_declared_always_and_sampled_with_ha() {
        use crate::ha::status::{DropCounts, PeerStatus};

        let mut out = String::new();
        render_ha(&mut out, &HaStatus::default());
        assert!(out.contains("\nringlb_ha_enabled 0\n"), "{out}");
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples, ["ringlb_ha_enabled 0"], "no HA, no samples but that one");
        for family in ["ringlb_ha_role", "ringlb_ha_vip_held", "ringlb_ha_peer_up"] {
            assert!(out.contains(&format!("# TYPE {family} gauge\n")), "{out}");
        }

        let status = HaStatus {
            enabled: true,
            node: "lb-db-01".into(),
            role: "active".into(),
            vip: "10.0.0.100/24".into(),
            vip_held: true,
            healthy: true,
            peers: vec![PeerStatus {
                address: "10.0.0.12:694".into(),
                node: "lb-db-02".into(),
                state: "dead".into(),
                role: "standby".into(),
                last_heartbeat_age_ms: Some(900),
            }],
            takeovers: 2,
            dropped: DropCounts {
                bad_tag: 5,
                ..DropCounts::default()
            },
        };
        let mut out = String::new();
        render_ha(&mut out, &status);
        for line in [
            "ringlb_ha_enabled 1",
            "ringlb_ha_role{node=\"lb-db-01\",role=\"active\"} 1",
            "ringlb_ha_role{node=\"lb-db-01\",role=\"standby\"} 0",
            "ringlb_ha_vip_held{node=\"lb-db-01\",vip=\"10.0.0.100/24\"} 1",
            "ringlb_ha_healthy{node=\"lb-db-01\"} 1",
            "ringlb_ha_peer_up{peer=\"10.0.0.12:694\",peer_node=\"lb-db-02\"} 0",
            "ringlb_ha_takeovers_total{node=\"lb-db-01\"} 2",
            "ringlb_ha_heartbeats_dropped_total{node=\"lb-db-01\",reason=\"bad_tag\"} 5",
            "ringlb_ha_heartbeats_dropped_total{node=\"lb-db-01\",reason=\"replayed\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "no {line:?} in\n{out}");
        }
        let roles = out.lines().filter(|l| l.starts_with("ringlb_ha_role{")).count();
        assert_eq!(roles, HA_ROLES.len());
    }
}
