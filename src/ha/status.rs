//! What the HA sidecar reports: the body of `GET /ha` and the table of `ringlb ha status`.
//!
//! The HA thread writes a fresh [`HaStatus`] after every event it handles; the admin thread reads
//! it. Neither is on the data path, so a mutex is the simple and right tool here.

use serde::{Deserialize, Serialize};

/// The HA view of this node, or only `enabled: false` when `[ha]` is not configured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// starting, standby, active or leaving.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// The floating IP with its prefix, and whether this node holds it now.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vip: String,
    #[serde(default)]
    pub vip_held: bool,
    /// Whether at least one backend is up here (a node with none yields the VIP).
    #[serde(default)]
    pub healthy: bool,
    #[serde(default)]
    pub peers: Vec<PeerStatus>,
    /// Times this node took the VIP over.
    #[serde(default)]
    pub takeovers: u64,
    /// Datagrams dropped, by reason.
    #[serde(default)]
    pub dropped: DropCounts,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's address as configured.
    pub address: String,
    /// The node name it announces; empty until its first authenticated heartbeat.
    pub node: String,
    /// alive, dead or unknown (nothing heard since start-up).
    pub state: String,
    /// The role it announced last.
    pub role: String,
    /// Milliseconds since its last authenticated heartbeat; absent when none came.
    pub last_heartbeat_age_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub truncated: u64,
    pub oversized: u64,
    pub malformed: u64,
    pub bad_tag: u64,
    pub replayed: u64,
    pub stale: u64,
    pub unknown_sender: u64,
}

impl DropCounts {
    /// Each count with its reason's name (as `/metrics` labels it).
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("truncated", self.truncated),
            ("oversized", self.oversized),
            ("malformed", self.malformed),
            ("bad_tag", self.bad_tag),
            ("replayed", self.replayed),
            ("stale", self.stale),
            ("unknown_sender", self.unknown_sender),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// The table `ringlb ha status` prints.
pub fn render(status: &HaStatus) -> String {
    if !status.enabled {
        return "HA is not configured on this node (no [ha] section).\n".to_string();
    }
    let mut out = String::new();
    let vip_state = if status.vip_held {
        "held here"
    } else {
        "not held here"
    };
    out.push_str(&format!("node      {}\n", status.node));
    out.push_str(&format!("role      {}\n", status.role));
    out.push_str(&format!("vip       {} ({vip_state})\n", status.vip));
    out.push_str(&format!(
        "backends  {}\n",
        if status.healthy {
            "at least one up"
        } else {
            "none up"
        }
    ));
    out.push_str(&format!("takeovers {}\n", status.takeovers));
    let d = &status.dropped;
    out.push_str(&format!(
        "dropped   {} (bad tag {}, replayed {}, stale {}, truncated {}, oversized {}, malformed {}, unknown sender {})\n",
        d.total(),
        d.bad_tag,
        d.replayed,
        d.stale,
        d.truncated,
        d.oversized,
        d.malformed,
        d.unknown_sender
    ));
    out.push('\n');
    let rows: Vec<[String; 5]> = status
        .peers
        .iter()
        .map(|p| {
            [
                p.address.clone(),
                if p.node.is_empty() {
                    "-".into()
                } else {
                    p.node.clone()
                },
                p.state.clone(),
                if p.role.is_empty() {
                    "-".into()
                } else {
                    p.role.clone()
                },
                p.last_heartbeat_age_ms
                    .map_or("never".into(), |ms| format!("{ms} ms ago")),
            ]
        })
        .collect();
    let header = ["PEER", "NODE", "STATE", "ROLE", "LAST HEARTBEAT"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.push('\n');
        l
    };
    out.push_str(&line(header));
    for row in &rows {
        out.push_str(&line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_status_says_so_and_serialises_small() {
        let status = HaStatus::default();
        assert!(render(&status).contains("not configured"));
        assert!(serde_json::to_string(&status)
            .unwrap()
            .contains("\"enabled\":false"));
    }

    #[test]
    fn table_shows_role_vip_peers_and_drops() {
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
                state: "alive".into(),
                role: "standby".into(),
                last_heartbeat_age_ms: Some(42),
            }],
            takeovers: 1,
            dropped: DropCounts {
                bad_tag: 3,
                ..DropCounts::default()
            },
        };
        let table = render(&status);
        for needle in [
            "lb-db-01",
            "active",
            "10.0.0.100/24 (held here)",
            "lb-db-02",
            "42 ms ago",
            "dropped   3",
        ] {
            assert!(table.contains(needle), "{needle:?} missing from:\n{table}");
        }
        let json = serde_json::to_string(&status).unwrap();
        let back: HaStatus = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
    }
}
