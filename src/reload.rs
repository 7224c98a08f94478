//! Reload: re-read the configuration file and apply it without dropping a connection
//! (SIGHUP, `ringlb reload`, `POST /reload`).
//!
//! A reload is all or nothing. The new file is loaded and validated, and every new listener's
//! sockets are bound, before anything changes; any failure leaves the running configuration
//! exactly as it was and is answered with one line naming the culprit. Then each worker gets the
//! new table ([`Control::Reload`]) and answers once it uses it; connections already open keep the
//! table they were opened under until they close. Backends and listeners that stay keep their
//! state (health, counts, counters); new backends get a health checker, removed ones lose theirs.
//!
//! What a reload cannot change in a running process — worker count, admin address, `[tuning]`,
//! `[health]`, `[ha]` — keeps its running value, and the reload says so in its answer and log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::Socket;

use crate::config::{self, Config, Overrides};
use crate::dataplane::listener;
use crate::dataplane::worker::Control;
use crate::health::Health;
use crate::stats::Shared;

/// How long a reload waits for every worker to take the new table.
const WORKER_ANSWER: Duration = Duration::from_secs(5);

/// Where a reload reads the configuration from: the file and flags ringlb was started with.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub overrides: Overrides,
}

/// One listening socket per worker, kept to stop accepting at shutdown.
pub struct Listening {
    pub name: String,
    pub bind: SocketAddr,
    pub sockets: Vec<Socket>,
}

pub struct Reloader {
    source: Option<Source>,
    shared: Arc<Shared>,
    workers: Vec<Sender<Control>>,
    health: Health,
    state: Mutex<State>,
}

struct State {
    config: Config,
    listening: Vec<Listening>,
}

impl Reloader {
    pub fn new(
        source: Option<Source>,
        config: Config,
        shared: Arc<Shared>,
        workers: Vec<Sender<Control>>,
        health: Health,
        listening: Vec<Listening>,
    ) -> Self {
        Reloader {
            source,
            shared,
            workers,
            health,
            state: Mutex::new(State { config, listening }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.lock().config.clone()
    }

    /// Every listening socket in force (shutdown stops accepting on them).
    pub fn with_listening<T>(&self, f: impl FnOnce(&[Listening]) -> T) -> T {
        f(&self.lock().listening)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reloads; the answer is one line, for the log and for `ringlb reload`.
    pub fn reload(&self) -> Result<String, String> {
        let result = self.try_reload();
        match &result {
            Ok(summary) => tracing::info!("reloaded: {summary}"),
            Err(e) => tracing::warn!("reload refused, the running configuration stays: {e}"),
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let Some(source) = &self.source else {
            return Err(
                "ringlb was started without a configuration file (--config): nothing to reload".into(),
            );
        };
        let mut state = self.lock();
        let loaded = config::load(Some(&source.path), &source.overrides).map_err(|e| e.to_string())?;
        let old = &state.config;

        // What only a restart changes keeps its running value.
        let mut restart = Vec::new();
        if loaded.workers != old.workers {
            restart.push("workers");
        }
        if loaded.admin != old.admin {
            restart.push("admin");
        }
        if loaded.tuning != old.tuning {
            restart.push("[tuning]");
        }
        if loaded.health != old.health {
            restart.push("[health]");
        }
        if loaded.ha != old.ha {
            restart.push("[ha]");
        }
        let new = Config {
            workers: old.workers,
            admin: old.admin,
            tuning: old.tuning.clone(),
            health: old.health.clone(),
            ha: old.ha.clone(),
            ..loaded
        };

        let same =
            |a: &config::ListenerConfig, b: &config::ListenerConfig| a.name == b.name && a.bind == b.bind;
        let added: Vec<&config::ListenerConfig> = new
            .listeners
            .iter()
            .filter(|l| !old.listeners.iter().any(|o| same(o, l)))
            .collect();
        let removed: Vec<String> = old
            .listeners
            .iter()
            .filter(|o| !new.listeners.iter().any(|l| same(o, l)))
            .map(|o| o.name.clone())
            .collect();
        let changed = new
            .listeners
            .iter()
            .filter(|l| old.listeners.iter().any(|o| same(o, l) && o != *l))
            .count();

        // Bind everything new before changing anything.
        let mut fresh = Vec::new();
        for l in &added {
            let bind_error =
                |e: std::io::Error| format!("listener {}: cannot listen on {}: {e}", l.name, l.bind);
            // A listener moving to an address another one leaves frees it only after the
            // reload; everything else must be free now.
            let moving = old
                .listeners
                .iter()
                .any(|o| o.bind == l.bind && removed.contains(&o.name));
            if !moving {
                listener::check_free(l.bind).map_err(bind_error)?;
            }
            let mut sockets = Vec::with_capacity(self.workers.len());
            for _ in 0..self.workers.len() {
                sockets.push(listener::bind_reuseport(l.bind).map_err(bind_error)?);
            }
            fresh.push(Listening {
                name: l.name.clone(),
                bind: l.bind,
                sockets,
            });
        }
        let mut per_worker: Vec<Vec<(String, Socket)>> =
            (0..self.workers.len()).map(|_| Vec::new()).collect();
        for l in &fresh {
            for (w, socket) in l.sockets.iter().enumerate() {
                let socket = socket
                    .try_clone()
                    .map_err(|e| format!("listener {}: {e}", l.name))?;
                per_worker[w].push((l.name.clone(), socket));
            }
        }

        let old_table = self.shared.table();
        let table = Arc::new(old_table.rebuild(&new));
        let new_backends: Vec<_> = table
            .all
            .iter()
            .filter(|b| !old_table.all.iter().any(|o| Arc::ptr_eq(&o.live, &b.live)))
            .collect();
        let removed_backends: Vec<_> = old_table.removed_in(&table).collect();

        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for (w, (sender, add)) in self.workers.iter().zip(per_worker).enumerate() {
            let message = Control::Reload {
                table: table.clone(),
                add,
                done: done_tx.clone(),
            };
            if sender.send(message).is_err() {
                return Err(format!("worker {w} is gone"));
            }
            self.shared.wake(w);
        }
        drop(done_tx);
        for _ in 0..self.workers.len() {
            // A worker that does not answer still applies the message when it next wakes.
            if done_rx.recv_timeout(WORKER_ANSWER).is_err() {
                tracing::warn!("a worker did not confirm the reload within {WORKER_ANSWER:?}");
                break;
            }
        }
        self.shared.set_table(table.clone());
        for b in &removed_backends {
            b.live.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = self.health.watch(&table, new_backends.iter().copied()) {
            tracing::error!("cannot start a health checker: {e}; new backends stay unchecked");
        }

        state.listening.retain(|l| !removed.contains(&l.name));
        state.listening.extend(fresh);
        let summary = format!(
            "listeners +{} -{} changed {}; backends +{} -{}{}",
            added.len(),
            removed.len(),
            changed,
            new_backends.len(),
            removed_backends.len(),
            if restart.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} changed but need a restart (running values kept)",
                    restart.join(", ")
                )
            }
        );
        state.config = new;
        Ok(summary)
    }
}
