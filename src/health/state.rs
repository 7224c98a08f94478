//! What a check reads of a server beyond "it answers": whether it takes writes (`read_only`,
//! `super_read_only`), whether it replicates and how far behind (replica status), and its Galera
//! state; and the rules that turn these into what a writer or a reader pool needs to know.
//!
//! Pure: the state is parsed from result sets ([`super::resultset`]) and judged by functions, so
//! every rule is unit-tested on values as real servers report them. The statements are chosen so
//! that one set works on MariaDB and MySQL alike: `SHOW GLOBAL VARIABLES WHERE Variable_name IN
//! (...)` returns the variables a server has and no error for those it lacks (MariaDB has no
//! `super_read_only`, a server without Galera no `wsrep_*`), and needs no privilege.
//!
//! Galera states (`wsrep_local_state`): 1 Joining, 2 Donor/Desynced, 3 Joined, 4 Synced. A node
//! takes traffic only when Synced, or as a donor when the operator allows it (`galera_donor_ok`),
//! and never while `wsrep_ready` is OFF, `wsrep_desync` is ON or `wsrep_reject_queries` is set.

use super::resultset::ResultSet;

/// The variables a state check reads, in one statement.
pub const VARIABLES_QUERY: &str = "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
     ('read_only', 'super_read_only', 'wsrep_on', 'wsrep_desync', 'wsrep_reject_queries')";

/// The Galera status a state check reads (no rows on a server without Galera).
pub const GALERA_STATUS_QUERY: &str =
    "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state')";

/// Galera's `wsrep_local_state` of a node in sync with its cluster.
pub const GALERA_SYNCED: u8 = 4;
/// Galera's `wsrep_local_state` of a donor (or a node desynced by the operator).
pub const GALERA_DONOR: u8 = 2;

/// The statement that lists replica status on a server of `server_version` (the greeting's):
/// every replication source on MariaDB (multi-source), the one channel set on MySQL.
pub fn replica_status_query(server_version: &str) -> &'static str {
    match parse_version(server_version) {
        Version::MariaDb(major, minor, _) if (major, minor) >= (10, 5) => "SHOW ALL REPLICAS STATUS",
        Version::MariaDb(..) => "SHOW ALL SLAVES STATUS",
        Version::MySql(major, minor, patch) if (major, minor, patch) >= (8, 0, 22) => "SHOW REPLICA STATUS",
        Version::MySql(..) => "SHOW SLAVE STATUS",
    }
}

/// The privilege a check user needs for [`replica_status_query`] on `server_version`, for the
/// line that says why a refused check failed.
pub fn replica_status_privilege(server_version: &str) -> &'static str {
    match parse_version(server_version) {
        // MariaDB 10.5.2 split REPLICATION CLIENT: SHOW REPLICA STATUS needed REPLICATION SLAVE
        // ADMIN until 10.5.9 brought SLAVE MONITOR.
        Version::MariaDb(major, minor, patch) if (major, minor, patch) >= (10, 5, 9) => "SLAVE MONITOR",
        Version::MariaDb(major, minor, patch) if (major, minor, patch) >= (10, 5, 2) => {
            "REPLICATION SLAVE ADMIN"
        }
        _ => "REPLICATION CLIENT",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    MariaDb(u32, u32, u32),
    MySql(u32, u32, u32),
}

/// "10.11.19-MariaDB-0+deb12u1", "5.5.5-10.4.34-MariaDB-log" (the compatibility prefix older
/// MariaDB servers send), "8.0.36", "8.0.36-0ubuntu0.22.04.1".
fn parse_version(text: &str) -> Version {
    let mariadb = text.contains("MariaDB");
    let text = if mariadb {
        text.strip_prefix("5.5.5-").unwrap_or(text)
    } else {
        text
    };
    let mut numbers = text
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        numbers.next().unwrap_or(0),
        numbers.next().unwrap_or(0),
        numbers.next().unwrap_or(0),
    );
    if mariadb {
        Version::MariaDb(major, minor, patch)
    } else {
        Version::MySql(major, minor, patch)
    }
}

/// Galera's view of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Galera {
    /// `wsrep_ready`: the node accepts queries at all.
    pub ready: bool,
    /// `wsrep_local_state` (see the module docs); 0 when not reported.
    pub local_state: u8,
    /// `wsrep_desync`: the operator took the node out of flow control.
    pub desync: bool,
    /// `wsrep_reject_queries` is ALL or ALL_KILL.
    pub reject_queries: bool,
}

/// Replication as a replica reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// Replica status was not asked for.
    NotRead,
    /// The server replicates from no source (its replica status is empty).
    NotReplica,
    /// Over every source: both threads running on all of them, and the largest
    /// `Seconds_Behind_Master` (`None` when a source reports none, as while its SQL thread is
    /// stopped).
    Replica {
        io_running: bool,
        sql_running: bool,
        lag_s: Option<u64>,
    },
}

/// What one state check read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// `read_only` or `super_read_only` is ON, or the server reports no `read_only` at all.
    pub read_only: bool,
    /// The server reported `read_only` (every MySQL and MariaDB does; something that does not is
    /// no writer a check can vouch for).
    pub read_only_reported: bool,
    /// `Some` on a Galera node (`wsrep_on` = ON).
    pub galera: Option<Galera>,
    pub replication: Replication,
}

/// Why a server does not qualify for a role; the text goes into the log line of the change.
pub type Reason = String;

impl ServerState {
    /// The state from the replies to [`VARIABLES_QUERY`] and [`GALERA_STATUS_QUERY`]
    /// (two-column `Variable_name`, `Value` result sets) and, when it was asked for, the replica
    /// status.
    pub fn read(
        variables: &ResultSet,
        galera_status: &ResultSet,
        replicas: Option<&ResultSet>,
    ) -> ServerState {
        let on = |set: &ResultSet, name: &str| variable(set, name).is_some_and(is_on);
        let galera = on(variables, "wsrep_on").then(|| Galera {
            ready: on(galera_status, "wsrep_ready"),
            local_state: variable(galera_status, "wsrep_local_state")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            desync: on(variables, "wsrep_desync"),
            reject_queries: variable(variables, "wsrep_reject_queries")
                .is_some_and(|v| !v.eq_ignore_ascii_case("NONE") && !v.is_empty()),
        });
        ServerState {
            read_only: variable(variables, "read_only").is_none_or(is_on) || on(variables, "super_read_only"),
            read_only_reported: variable(variables, "read_only").is_some(),
            galera,
            replication: replicas.map_or(Replication::NotRead, replication),
        }
    }

    /// Whether a Galera node may take traffic; a server without Galera always may.
    pub fn galera_ok(&self, donor_ok: bool) -> Result<(), Reason> {
        let Some(g) = self.galera else {
            return Ok(());
        };
        if !g.ready {
            return Err("Galera wsrep_ready is OFF".into());
        }
        if g.reject_queries {
            return Err("Galera wsrep_reject_queries is set".into());
        }
        if g.desync {
            return Err("Galera wsrep_desync is ON".into());
        }
        match g.local_state {
            GALERA_SYNCED => Ok(()),
            GALERA_DONOR if donor_ok => Ok(()),
            state => Err(format!(
                "Galera state {state} ({}), not Synced",
                galera_state_name(state)
            )),
        }
    }

    /// Whether the server may be a writer: writable, and in sync if it is a Galera node.
    pub fn writable(&self, donor_ok: bool) -> Result<(), Reason> {
        if !self.read_only_reported {
            return Err("the server reports no read_only variable".into());
        }
        if self.read_only {
            return Err("read_only is ON".into());
        }
        self.galera_ok(donor_ok)
    }

    /// Whether the server may serve a reader pool as a replica: a replica with both threads
    /// running, or a Galera node in sync (which replicates synchronously: lag 0). `Ok(lag)`.
    pub fn reader(&self, donor_ok: bool) -> Result<Option<u64>, Reason> {
        self.galera_ok(donor_ok)?;
        match self.replication {
            Replication::NotReplica | Replication::NotRead if self.galera.is_some() => Ok(Some(0)),
            _ => self.replicating(),
        }
    }

    /// Whether a replica replicates: both threads running on every source. `Ok(lag)` with its lag
    /// (`None`: not reported); a server that is no replica, or was not asked, is an error here.
    pub fn replicating(&self) -> Result<Option<u64>, Reason> {
        match self.replication {
            Replication::NotRead => Err("replica status not read".into()),
            Replication::NotReplica => Err("not a replica".into()),
            Replication::Replica {
                io_running: false, ..
            } => Err("replica IO thread not running".into()),
            Replication::Replica {
                sql_running: false, ..
            } => Err("replica SQL thread not running".into()),
            Replication::Replica { lag_s, .. } => Ok(lag_s),
        }
    }
}

/// The name of a Galera `wsrep_local_state`.
pub fn galera_state_name(state: u8) -> &'static str {
    match state {
        1 => "Joining",
        2 => "Donor/Desynced",
        3 => "Joined",
        4 => "Synced",
        _ => "unknown",
    }
}

/// The value of variable `name` in a `Variable_name`, `Value` result set.
fn variable<'a>(set: &'a ResultSet, name: &str) -> Option<&'a str> {
    let names = set.column("Variable_name")?;
    let values = set.column("Value")?;
    set.rows
        .iter()
        .find(|row| {
            row.get(names)
                .and_then(Option::as_deref)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|row| row.get(values)?.as_deref())
}

fn is_on(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "ON" | "1" | "YES" | "TRUE"
    )
}

/// Replica status over every source (row): MariaDB and MySQL before 8.0.22 name the columns
/// `Slave_*` and `Seconds_Behind_Master`, MySQL since then `Replica_*` and `Seconds_Behind_Source`.
fn replication(set: &ResultSet) -> Replication {
    if set.rows.is_empty() {
        return Replication::NotReplica;
    }
    let field = |row: usize, names: [&str; 2]| names.iter().find_map(|n| set.value(row, n));
    let running = |row: usize, names| field(row, names).is_some_and(|v| v.eq_ignore_ascii_case("Yes"));
    let mut io_running = true;
    let mut sql_running = true;
    let mut lag_s = Some(0u64);
    for row in 0..set.rows.len() {
        io_running &= running(row, ["Slave_IO_Running", "Replica_IO_Running"]);
        sql_running &= running(row, ["Slave_SQL_Running", "Replica_SQL_Running"]);
        let lag = field(row, ["Seconds_Behind_Master", "Seconds_Behind_Source"])
            .and_then(|v| v.trim().parse::<u64>().ok());
        lag_s = match (lag_s, lag) {
            (Some(worst), Some(lag)) => Some(worst.max(lag)),
            _ => None,
        };
    }
    Replication::Replica {
        io_running,
        sql_running,
        lag_s,
    }
}

/// Lag with its own hysteresis: a replica leaves the reader pool when its lag goes above
/// `max_lag_s`, and comes back only once it is at or below `return_s` (half of `max_lag_s`
/// unless configured), so that a replica hovering around the limit does not flap. A lag that is
/// not reported counts as too far behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagGate {
    pub max_lag_s: u64,
    pub return_s: u64,
    in_pool: bool,
}

impl LagGate {
    pub fn new(max_lag_s: u64, return_s: Option<u64>) -> LagGate {
        LagGate {
            max_lag_s,
            return_s: return_s.unwrap_or(max_lag_s / 2).min(max_lag_s),
            in_pool: true,
        }
    }

    /// A gate that is `in_pool` now (its state kept elsewhere, in an atomic of the pool).
    pub fn resume(max_lag_s: u64, return_s: u64, in_pool: bool) -> LagGate {
        LagGate {
            in_pool,
            ..LagGate::new(max_lag_s, Some(return_s))
        }
    }

    /// Takes one lag sample; returns whether the replica is in the pool after it.
    pub fn sample(&mut self, lag_s: Option<u64>) -> bool {
        self.in_pool = match lag_s {
            None => false,
            Some(lag) if self.in_pool => lag <= self.max_lag_s,
            Some(lag) => lag <= self.return_s,
        };
        self.in_pool
    }

    pub fn in_pool(&self) -> bool {
        self.in_pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(rows: &[(&str, &str)]) -> ResultSet {
        ResultSet {
            columns: vec!["Variable_name".into(), "Value".into()],
            rows: rows
                .iter()
                .map(|(n, v)| vec![Some(n.to_string()), Some(v.to_string())])
                .collect(),
        }
    }

    /// `SHOW ALL REPLICAS STATUS` of MariaDB 10.11, the columns the rules read among its ~60,
    /// one row per source.
    fn replicas(rows: &[(&str, &str, Option<&str>)]) -> ResultSet {
        ResultSet {
            columns: [
                "Connection_name",
                "Slave_IO_State",
                "Slave_IO_Running",
                "Slave_SQL_Running",
                "Seconds_Behind_Master",
            ]
            .map(String::from)
            .to_vec(),
            rows: rows
                .iter()
                .map(|(io, sql, lag)| {
                    vec![
                        Some(String::new()),
                        Some("Waiting for master to send event".into()),
                        Some(io.to_string()),
                        Some(sql.to_string()),
                        lag.map(String::from),
                    ]
                })
                .collect(),
        }
    }

    /// MariaDB 10.11 without Galera, as `SHOW GLOBAL VARIABLES WHERE ...` answers: wsrep_on
    /// exists (OFF), the others too, super_read_only does not.
    fn plain_mariadb(read_only: &str) -> ResultSet {
        pairs(&[
            ("read_only", read_only),
            ("wsrep_desync", "OFF"),
            ("wsrep_on", "OFF"),
            ("wsrep_reject_queries", "NONE"),
        ])
    }

    fn galera_node(ready: &str, state: &str, desync: &str, reject: &str) -> ServerState {
        let variables = pairs(&[
            ("read_only", "OFF"),
            ("wsrep_desync", desync),
            ("wsrep_on", "ON"),
            ("wsrep_reject_queries", reject),
        ]);
        let status = pairs(&[("wsrep_local_state", state), ("wsrep_ready", ready)]);
        ServerState::read(&variables, &status, None)
    }

    #[test]
    fn a_plain_primary_is_writable_and_no_replica() {
        let state = ServerState::read(&plain_mariadb("OFF"), &pairs(&[]), Some(&replicas(&[])));
        assert_eq!(state.writable(false), Ok(()));
        assert_eq!(state.galera, None);
        assert_eq!(state.replicating(), Err("not a replica".into()));
    }

    #[test]
    fn a_server_that_reports_no_read_only_is_no_writer() {
        let state = ServerState::read(&pairs(&[("wsrep_on", "OFF")]), &pairs(&[]), None);
        assert_eq!(
            state.writable(false),
            Err("the server reports no read_only variable".into())
        );
    }

    #[test]
    fn read_only_or_super_read_only_is_not_writable() {
        let state = ServerState::read(&plain_mariadb("ON"), &pairs(&[]), None);
        assert_eq!(state.writable(false), Err("read_only is ON".into()));
        // MySQL: super_read_only alone (read_only follows it on a real server, but either counts).
        let mysql = pairs(&[("read_only", "OFF"), ("super_read_only", "ON")]);
        assert!(ServerState::read(&mysql, &pairs(&[]), None)
            .writable(false)
            .is_err());
        assert_eq!(
            ServerState::read(&mysql, &pairs(&[]), None).replication,
            Replication::NotRead
        );
    }

    #[test]
    fn a_replica_qualifies_by_both_threads_and_reports_its_worst_lag() {
        let read = |rows| ServerState::read(&plain_mariadb("ON"), &pairs(&[]), Some(&replicas(rows)));
        assert_eq!(read(&[("Yes", "Yes", Some("0"))]).replicating(), Ok(Some(0)));
        assert_eq!(
            read(&[("Yes", "No", None)]).replicating(),
            Err("replica SQL thread not running".into())
        );
        assert_eq!(
            read(&[("Connecting", "Yes", Some("3"))]).replicating(),
            Err("replica IO thread not running".into())
        );
        // Two sources: the worst lag; one without a lag makes the whole unknown.
        assert_eq!(
            read(&[("Yes", "Yes", Some("4")), ("Yes", "Yes", Some("40"))]).replicating(),
            Ok(Some(40))
        );
        assert_eq!(
            read(&[("Yes", "Yes", Some("4")), ("Yes", "Yes", None)]).replicating(),
            Ok(None)
        );
    }

    #[test]
    fn mysql_8_replica_columns_are_read_too() {
        let set = ResultSet {
            columns: [
                "Replica_IO_Running",
                "Replica_SQL_Running",
                "Seconds_Behind_Source",
            ]
            .map(String::from)
            .to_vec(),
            rows: vec![vec![Some("Yes".into()), Some("Yes".into()), Some("7".into())]],
        };
        let state = ServerState::read(&pairs(&[("read_only", "ON")]), &pairs(&[]), Some(&set));
        assert_eq!(state.replicating(), Ok(Some(7)));
    }

    #[test]
    fn galera_takes_traffic_only_synced_ready_and_neither_desynced_nor_rejecting() {
        assert_eq!(galera_node("ON", "4", "OFF", "NONE").writable(false), Ok(()));
        let refused = [
            (galera_node("OFF", "4", "OFF", "NONE"), "wsrep_ready is OFF"),
            (galera_node("ON", "4", "ON", "NONE"), "wsrep_desync is ON"),
            (galera_node("ON", "4", "OFF", "ALL"), "wsrep_reject_queries"),
            (galera_node("ON", "4", "OFF", "ALL_KILL"), "wsrep_reject_queries"),
            (galera_node("ON", "1", "OFF", "NONE"), "state 1 (Joining)"),
            (galera_node("ON", "3", "OFF", "NONE"), "state 3 (Joined)"),
            (galera_node("ON", "2", "OFF", "NONE"), "state 2 (Donor/Desynced)"),
        ];
        for (state, why) in refused {
            let verdict = state.galera_ok(false);
            assert!(
                verdict.as_ref().is_err_and(|e| e.contains(why)),
                "{why}: {verdict:?}"
            );
        }
        // A donor counts only when the operator allows it, and a desynced one never.
        assert_eq!(galera_node("ON", "2", "OFF", "NONE").galera_ok(true), Ok(()));
        assert!(galera_node("ON", "2", "ON", "NONE").galera_ok(true).is_err());
    }

    #[test]
    fn lag_leaves_above_the_limit_and_returns_below_half_of_it() {
        let mut gate = LagGate::new(10, None);
        let samples = [0, 9, 10, 11, 9, 6, 5, 8, 10, 12];
        let in_pool: Vec<bool> = samples.iter().map(|&lag| gate.sample(Some(lag))).collect();
        assert_eq!(
            in_pool,
            vec![true, true, true, false, false, false, true, true, true, false]
        );
        // An unknown lag is out; an explicit return point is used as given.
        assert!(!LagGate::new(10, None).sample(None));
        let mut gate = LagGate::new(10, Some(8));
        assert!(!gate.sample(Some(20)));
        assert!(gate.sample(Some(8)));
        assert_eq!(LagGate::new(10, Some(30)).return_s, 10, "never above the limit");
    }

    #[test]
    fn the_replica_status_statement_and_privilege_follow_the_server_version() {
        let cases = [
            (
                "10.11.19-MariaDB-0+deb12u1",
                "SHOW ALL REPLICAS STATUS",
                "SLAVE MONITOR",
            ),
            (
                "5.5.5-10.4.34-MariaDB-log",
                "SHOW ALL SLAVES STATUS",
                "REPLICATION CLIENT",
            ),
            ("11.4.2-MariaDB", "SHOW ALL REPLICAS STATUS", "SLAVE MONITOR"),
            (
                "10.5.4-MariaDB",
                "SHOW ALL REPLICAS STATUS",
                "REPLICATION SLAVE ADMIN",
            ),
            ("10.5.9-MariaDB", "SHOW ALL REPLICAS STATUS", "SLAVE MONITOR"),
            (
                "8.0.36-0ubuntu0.22.04.1",
                "SHOW REPLICA STATUS",
                "REPLICATION CLIENT",
            ),
            ("8.0.21", "SHOW SLAVE STATUS", "REPLICATION CLIENT"),
            ("5.7.44-log", "SHOW SLAVE STATUS", "REPLICATION CLIENT"),
            ("garbage", "SHOW SLAVE STATUS", "REPLICATION CLIENT"),
        ];
        for (version, statement, privilege) in cases {
            assert_eq!(replica_status_query(version), statement, "{version}");
            assert_eq!(replica_status_privilege(version), privilege, "{version}");
        }
    }
}
