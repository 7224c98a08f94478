//! What a server's state qualifies it for, and the writer elections that follow.
//!
//! After each probe of a server that a writer or reader pool names, its checker turns what the
//! probe read ([`sample`]) into the server's role verdicts ([`Judge`]): whether it may be a
//! writer, whether it serves reads as a replica, whether it is a primary, each through rise/fall
//! hysteresis like `up`, so that one odd sample moves no traffic; and, per reader pool, whether
//! its lag is within the pool's limit ([`super::state::LagGate`]: its own hysteresis). The
//! verdicts go into the server's atomics, which the workers read when they choose a backend.
//!
//! Then the checker runs the election of every writer group the server belongs to ([`elect`]):
//! the group's mutex serialises the checkers of its servers, and the result is published in the
//! one atomic the workers read, so every worker and every listener over those servers agrees on
//! the writer. A change is logged with its reason, counted, run through `[health] notify`, and,
//! for pools with `on_writer_change = "close"`, the workers are told to reset the connections
//! to the server that lost the role.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use super::hysteresis::{Hysteresis, Transition};
use super::probe::Alive;
use super::resultset::Reply;
use super::state::{self, LagGate, Reason, ServerState};
use super::topology::{Change, Verdict};
use crate::balance::{AdminState, Backends, ServerLive, WriterGroup, NEEDS_REPLICAS, NO_LAG};
use crate::config::{HealthConfig, OnWriterChange, Role};
use crate::shared::SharedState;

/// What one probe read of a server's state, or why it read nothing usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub state: Result<ServerState, Reason>,
    /// Why the replica status could not be read, when the pools need it and it was refused.
    pub replicas_refused: Option<Reason>,
    pub server_version: String,
}

/// The sample from a probe that reached the server: `replies` answer
/// the state statements for `needs`.
pub fn sample(alive: &Alive, replies: &[Reply], needs: u8) -> Sample {
    let (server_version, refused) = match alive {
        Alive::LoggedIn { server_version, .. } => (server_version.clone(), None),
        Alive::AccessDenied {
            server_version,
            error,
        } => (
            server_version.clone(),
            Some(format!(
                "the check user cannot log in ({error}), so no state is read"
            )),
        ),
        Alive::Greeted { server_version } => (
            server_version.clone(),
            Some("the check did not log in, so no state is read".to_string()),
        ),
        Alive::Connected => (String::new(), Some("a tcp check reads no state".to_string())),
    };
    let failed = |state: Result<ServerState, Reason>| Sample {
        state,
        replicas_refused: None,
        server_version: server_version.clone(),
    };
    if let Some(why) = refused {
        return failed(Err(why));
    }
    let rows = |i: usize, what: &str| match replies.get(i) {
        Some(Reply::Rows(set)) => Ok(set),
        Some(Reply::Err(e)) => Err(format!("{what} refused: {e}")),
        Some(Reply::Ok) | None => Err(format!("{what}: no result set")),
    };
    let (variables, galera) = match (rows(0, "SHOW GLOBAL VARIABLES"), rows(1, "SHOW GLOBAL STATUS")) {
        (Ok(v), Ok(g)) => (v, g),
        (Err(e), _) | (_, Err(e)) => return failed(Err(e)),
    };
    let (replicas, replicas_refused) = if needs & NEEDS_REPLICAS == 0 {
        (None, None)
    } else {
        match replies.get(2) {
            Some(Reply::Rows(set)) => (Some(set), None),
            Some(Reply::Err(e)) => {
                let privilege = state::replica_status_privilege(&server_version);
                let why = format!("replica status refused ({e}): GRANT {privilege} ON *.* to the check user");
                (None, Some(why))
            }
            _ => (None, Some("replica status: no result set".to_string())),
        }
    };
    Sample {
        state: Ok(ServerState::read(variables, galera, replicas)),
        replicas_refused,
        server_version,
    }
}

/// One server's role verdicts between probes (the checker thread's own).
pub struct Judge {
    writer: Hysteresis,
    reader: Hysteresis,
    donor_ok: bool,
    /// A sample was taken: until then the server qualifies for nothing.
    sampled: bool,
    /// Why the last sample did not qualify it as a writer, and as a reader.
    last: (Option<Reason>, Option<Reason>),
    rise: u32,
    fall: u32,
}

impl Judge {
    pub fn new(config: &HealthConfig) -> Judge {
        Judge {
            writer: Hysteresis::new(config.rise, config.fall),
            reader: Hysteresis::new(config.rise, config.fall),
            donor_ok: config.galera_donor_ok,
            sampled: false,
            last: (None, None),
            rise: config.rise.max(1),
            fall: config.fall.max(1),
        }
    }

    /// Takes the sample of one probe that reached `server` (`None`: the server is down, or the
    /// probe failed while it is still up) and publishes the verdicts in its atomics; then feeds
    /// the lag of every reader pool's gate in `table` that names it.
    pub fn judge(&mut self, server: &ServerLive, sample: Option<Sample>, table: &Backends) {
        let needs = server.needs.load(Ordering::Relaxed);
        let mut lag = None;
        if let Some(sample) = &sample {
            self.sampled = true;
            let (writer, reader) = match &sample.state {
                Ok(state) => {
                    let reader = match (&sample.replicas_refused, state.galera) {
                        (Some(why), None) => Err(why.clone()),
                        _ => state.reader(self.donor_ok),
                    };
                    (state.writable(self.donor_ok), reader)
                }
                Err(why) => (Err(why.clone()), Err(why.clone())),
            };
            if let Ok(state) = &sample.state {
                let read_only = if state.read_only_reported {
                    u8::from(state.read_only)
                } else {
                    2
                };
                server.read_only.store(read_only, Ordering::Relaxed);
                let galera = state.galera.map_or(0, |g| g.local_state.max(1));
                server.galera_state.store(galera, Ordering::Relaxed);
            } else {
                server.read_only.store(2, Ordering::Relaxed);
            }
            lag = reader.as_ref().ok().copied();
            let lag_value = match &reader {
                Ok(Some(lag)) => *lag,
                _ => NO_LAG,
            };
            server.lag_s.store(lag_value, Ordering::Relaxed);
            report(server, "a writer", self.writer.observe(writer.is_ok()), &writer);
            if needs & NEEDS_REPLICAS != 0 {
                let verdict = reader.as_ref().map(|_| ()).map_err(Clone::clone);
                report(server, "a reader", self.reader.observe(reader.is_ok()), &verdict);
            }
            self.last = (writer.err(), reader.err());
        }
        let up = server.is_up();
        if !up {
            // A server that comes back is judged afresh: what it was before it went down says
            // nothing about it now (it may be back read-only, or with its replication stopped),
            // so its first sample decides, as a backend's first check does.
            self.writer = Hysteresis::new(self.rise, self.fall);
            self.reader = Hysteresis::new(self.rise, self.fall);
            self.sampled = false;
            self.last = (None, None);
        }
        let writable = up && self.sampled && self.writer.is_up();
        server.writable.store(writable, Ordering::Relaxed);
        // Only a server that a reader pool names has its replica status read.
        let replicating = up && self.sampled && needs & NEEDS_REPLICAS != 0 && self.reader.is_up();
        if replicating && !server.replicating.load(Ordering::Relaxed) {
            // Before the flag: a worker that sees it sees where the ramp starts.
            server
                .replicating_since_ms
                .store(crate::clock::now_ms(), Ordering::Relaxed);
        }
        server.replicating.store(replicating, Ordering::Relaxed);
        let why = |qualifies: bool, last: &Option<Reason>, hysteresis: &Hysteresis| match last {
            _ if qualifies => String::new(),
            _ if !up => "down".to_string(),
            _ if !self.sampled => "not checked yet".to_string(),
            Some(why) => why.clone(),
            None => format!(
                "passed {} of the {} checks that bring it back",
                hysteresis.run(),
                self.rise
            ),
        };
        let not_writer = why(writable, &self.last.0, &self.writer);
        let not_reader = why(replicating, &self.last.1, &self.reader);
        *server.not_writer.lock().unwrap_or_else(PoisonError::into_inner) = not_writer;
        *server.not_reader.lock().unwrap_or_else(PoisonError::into_inner) = not_reader;
        if sample.is_some() || !up {
            server.judged.store(true, Ordering::Relaxed);
        }
        if let Some(lag) = lag {
            gate_lag(server, lag, table);
        }
    }
}

/// Logs a change of what a server qualifies as.
fn report(server: &ServerLive, role: &str, transition: Option<Transition>, verdict: &Result<(), Reason>) {
    match (transition, verdict) {
        (Some(Transition::Down { .. }), Err(why)) => {
            tracing::warn!(backend = %server.name, "no longer qualifies as {role}: {why}")
        }
        (Some(Transition::Up), _) => tracing::info!(backend = %server.name, "qualifies as {role} again"),
        _ => {}
    }
}

/// Feeds `lag` to the gate of every reader pool in `table` that names `server`.
fn gate_lag(server: &ServerLive, lag: Option<u64>, table: &Backends) {
    for b in table.all.iter().filter(|b| std::ptr::eq(&**b.server, server)) {
        let listener = &table.listeners[b.listener].config;
        if listener.role != Role::Reader {
            continue;
        }
        let was_in = b.live.lag_in.load(Ordering::Relaxed);
        let mut gate = LagGate::resume(listener.max_lag_s, listener.lag_return_s, was_in);
        let now_in = gate.sample(lag);
        if now_in != was_in {
            if now_in {
                b.live
                    .lag_in_since_ms
                    .store(crate::clock::now_ms(), Ordering::Relaxed);
            }
            b.live.lag_in.store(now_in, Ordering::Relaxed);
            let lag = lag.map_or("unknown".to_string(), |l| format!("{l} s"));
            if now_in {
                tracing::info!(
                    backend = %b.name, listener = %listener.name,
                    "replica back in the reader pool: lag {lag} is within lag_return_s {}",
                    listener.lag_return_s
                );
            } else {
                tracing::warn!(
                    backend = %b.name, listener = %listener.name,
                    "replica leaves the reader pool: lag {lag} is over max_lag_s {}",
                    listener.max_lag_s
                );
            }
        }
    }
}

/// Whether `server` may hold the writer role of `group` now.
fn writer_verdict(server: &ServerLive, group: &Arc<WriterGroup>, table: &Backends) -> Verdict {
    if !server.is_up() {
        return Err("down".into());
    }
    if !server.judged.load(Ordering::Relaxed) {
        return Err("not checked yet".into());
    }
    if !server.writable.load(Ordering::Relaxed) {
        let why = server
            .not_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        return Err(if why.is_empty() {
            "not writable".into()
        } else {
            why
        });
    }
    let held_back = table.all.iter().find(|b| {
        std::ptr::eq(&**b.server, server)
            && b.writer.as_ref().is_some_and(|(g, _)| Arc::ptr_eq(g, group))
            && b.admin_state() != AdminState::Enabled
    });
    match held_back {
        Some(b) => Err(format!("set to {} by the operator", b.admin_state().as_str())),
        None => Ok(()),
    }
}

/// Runs `group`'s election on its servers' verdicts now and publishes the result.
pub fn elect(group: &Arc<WriterGroup>, table: &Backends, shared: &SharedState, config: &HealthConfig) {
    let mut election = group.election.lock().unwrap_or_else(PoisonError::into_inner);
    // The first election waits until every server that is up has been judged once, so that the
    // first writer is the first qualifying server in the list, not the first one checked.
    if election.writer().is_none()
        && group.changes.load(Ordering::Relaxed) == 0
        && group
            .servers
            .iter()
            .any(|s| s.is_up() && !s.judged.load(Ordering::Relaxed))
    {
        return;
    }
    let verdicts: Vec<Verdict> = group
        .servers
        .iter()
        .map(|s| writer_verdict(s, group, table))
        .collect();
    let change = election.update(&verdicts);
    group.publish(election.writer());
    announce(group, &change, table, shared, config);
}

/// The operator's switchover of `group`'s writer to `server` (`ringlb backend promote`); the
/// answer says why it was refused.
pub fn promote(
    group: &Arc<WriterGroup>,
    server: &ServerLive,
    table: &Backends,
    shared: &SharedState,
    config: &HealthConfig,
) -> Result<Change, String> {
    let mut election = group.election.lock().unwrap_or_else(PoisonError::into_inner);
    let position = group
        .servers
        .iter()
        .position(|s| std::ptr::eq(&***s, server))
        .ok_or_else(|| format!("{} is not in this writer pool", server.name))?;
    let verdicts: Vec<Verdict> = group
        .servers
        .iter()
        .map(|s| writer_verdict(s, group, table))
        .collect();
    let change = election.promote(position, &verdicts)?;
    group.publish(election.writer());
    announce(group, &change, table, shared, config);
    Ok(change)
}

/// After the operator drained, disabled or enabled the backends named `name`: the writer
/// groups that have them elect now, so that a drained writer hands its role over at once
/// rather than at its next check.
pub fn elect_named(shared: &SharedState, name: &str, config: &HealthConfig) {
    let table = shared.table();
    for (group, _) in writer_groups_named(&table, name) {
        elect(group, &table, shared, config);
    }
}

/// `ringlb backend promote NAME`: makes the server of the backends named `name` the writer of
/// every writer pool that has it; the answer, either way, is one line.
pub fn promote_named(shared: &SharedState, name: &str, config: &HealthConfig) -> Result<String, String> {
    let table = shared.table();
    if !table.all.iter().any(|b| b.name == name) {
        return Err(format!("no backend {name:?} (names as in ringlb stats)"));
    }
    let groups = writer_groups_named(&table, name);
    if groups.is_empty() {
        return Err(format!("{name} is in no listener with role = \"writer\""));
    }
    for (group, server) in groups {
        promote(group, server, &table, shared, config)
            .map_err(|why| format!("cannot promote {name}: {why}"))?;
    }
    Ok(format!("{name} is the writer"))
}

/// The writer groups that have a backend named `name`, each once, with that backend's server.
fn writer_groups_named<'a>(table: &'a Backends, name: &str) -> Vec<(&'a Arc<WriterGroup>, &'a ServerLive)> {
    let mut groups: Vec<(&Arc<WriterGroup>, &ServerLive)> = Vec::new();
    for b in table.all.iter().filter(|b| b.name == name) {
        if let Some((group, _)) = &b.writer {
            if !groups.iter().any(|(g, _)| Arc::ptr_eq(g, group)) {
                groups.push((group, &b.server));
            }
        }
    }
    groups
}

/// Logs, counts and runs the notify command for a change of `group`'s writer; tells the
/// workers to close connections to a former writer where a pool asks for that.
fn announce(
    group: &WriterGroup,
    change: &Change,
    table: &Backends,
    shared: &SharedState,
    config: &HealthConfig,
) {
    let name = |pos: usize| group.servers[pos].name.as_str();
    let (from, to, reason) = match change {
        Change::None => return,
        Change::Elected { to, reason } => (None, Some(*to), reason),
        Change::Moved { from, to, reason } => (Some(*from), Some(*to), reason),
        Change::Lost { from, reason } => (Some(*from), None, reason),
    };
    group.changes.fetch_add(1, Ordering::Relaxed);
    let listeners: Vec<&str> = table
        .listeners
        .iter()
        .enumerate()
        .filter(|(l, _)| {
            table.all[table.pools[*l].clone()]
                .iter()
                .any(|b| b.writer.as_ref().is_some_and(|(g, _)| std::ptr::eq(&**g, group)))
        })
        .map(|(_, l)| l.config.name.as_str())
        .collect();
    let listeners = listeners.join(", ");
    match (from, to) {
        (None, Some(to)) => tracing::info!(listeners, "writer elected: {} ({reason})", name(to)),
        (Some(from), Some(to)) => {
            tracing::warn!(
                listeners,
                "writer moved: {} -> {} ({reason})",
                name(from),
                name(to)
            )
        }
        (Some(from), None) => tracing::error!(
            listeners,
            "writer lost: {} ({reason}); no server qualifies, writes are refused until one does",
            name(from)
        ),
        (None, None) => {}
    }
    if let Some(command) = &config.notify {
        let to = to.map_or("none", name).to_string();
        let spawned = std::process::Command::new(command)
            .args(["writer", &to, reason.as_str()])
            .stdin(std::process::Stdio::null())
            .spawn();
        match spawned {
            // Reaped by a thread of its own: the checker does not wait on the script.
            Ok(mut child) => {
                let _ = std::thread::Builder::new()
                    .name("notify".into())
                    .spawn(move || child.wait());
            }
            Err(e) => tracing::warn!(command = %command.display(), "writer notify command failed: {e}"),
        }
    }
    let closes = table
        .listeners
        .iter()
        .any(|l| l.config.role == Role::Writer && l.config.on_writer_change == OnWriterChange::Close);
    if from.is_some() && closes {
        shared.writer_changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Config};
    use state::Replication;

    /// A writer listener over two servers; the health settings of `Config::with_listener`
    /// (rise 2, fall 3).
    fn writer_table() -> (Backends, HealthConfig) {
        let backends = ["127.0.0.1:3306", "127.0.0.1:3307"]
            .map(|a| BackendConfig::at(a.parse().unwrap()))
            .to_vec();
        let mut config = Config::with_listener("127.0.0.1:4040".parse().unwrap(), backends);
        config.listeners[0].role = Role::Writer;
        (Backends::from_config(&config), config.health)
    }

    fn sample(read_only: bool) -> Option<Sample> {
        Some(Sample {
            state: Ok(ServerState {
                read_only,
                read_only_reported: true,
                galera: None,
                replication: Replication::NotRead,
            }),
            replicas_refused: None,
            server_version: "10.11.19-MariaDB".into(),
        })
    }

    #[test]
    fn a_server_back_from_down_is_judged_on_its_first_sample_not_on_what_it_was() {
        let (table, health) = writer_table();
        let server = &table.servers[0];
        let mut judge = Judge::new(&health);
        judge.judge(server, sample(false), &table);
        assert!(server.writable.load(Ordering::Relaxed));
        server.up.store(false, Ordering::Relaxed);
        judge.judge(server, None, &table);
        assert!(!server.writable.load(Ordering::Relaxed));
        // Back, but read-only now: one sample is enough, as for a backend's first check.
        server.up.store(true, Ordering::Relaxed);
        judge.judge(server, sample(true), &table);
        assert!(!server.writable.load(Ordering::Relaxed));
        let why = server.not_writer.lock().unwrap().clone();
        assert!(why.contains("read_only is ON"), "{why}");
        // While up, one read-only sample among writable ones moves nothing (fall = 3).
        judge.judge(server, sample(false), &table);
        judge.judge(server, sample(false), &table);
        assert!(server.writable.load(Ordering::Relaxed));
        judge.judge(server, sample(true), &table);
        assert!(server.writable.load(Ordering::Relaxed));
    }

    #[test]
    fn a_server_no_reader_pool_names_is_never_published_as_a_replica() {
        let (table, health) = writer_table();
        let server = &table.servers[0];
        let mut judge = Judge::new(&health);
        judge.judge(server, sample(false), &table);
        assert!(!server.replicating.load(Ordering::Relaxed));
    }
}
