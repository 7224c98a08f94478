//! Reload: re-read the configuration file and apply it without dropping a connection
//! (SIGHUP, `ringlb reload`, `POST /reload`).
//!
//! A reload is all or nothing. The new file is loaded and validated, and every new listener's
//! sockets are bound, before anything changes; any failure leaves the running configuration
//! exactly as it was and is answered with one line naming the culprit. Then the new table is
//! handed to the workers in two steps ([`hand_off`]): each worker holds it aside and answers
//! ([`Control::Prepare`]); only when every one has answered does each switch to it
//! ([`Control::Commit`]), and if one cannot be reached or does not answer in time, every worker
//! drops it ([`Control::Abort`]) and the reload is refused. Connections already open keep the
//! table they were opened under until they close. Backends and listeners that stay keep their
//! state (health, counts, counters); new backends get a health checker, removed ones lose theirs.
//!
//! What a reload cannot change in a running process — worker count, admin address and token, `[tuning]`,
//! `[health]`, `[ha]` — keeps its running value, and the reload says so in its answer and log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::Socket;

use crate::config::{self, Config, Overrides};
use crate::dataplane::listener;
use crate::dataplane::worker::{Control, NewSockets};
use crate::health::Health;
use crate::shared::SharedState;

/// How long a reload waits for every worker to answer each step.
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
    shared: Arc<SharedState>,
    workers: Vec<Sender<Control>>,
    health: Health,
    state: Mutex<State>,
}

struct State {
    config: Config,
    listening: Vec<Listening>,
}

/// Hands `table` (and each worker's new listener sockets, `per_worker`) to every worker, all or
/// none: first every worker holds it aside and answers; if one is gone or does not answer within
/// `answer_within`, every worker is told to drop it and the answer is an error, with no worker
/// changed. Otherwise every worker is told to switch, which a worker that has just answered
/// cannot fail to do; its confirmation is awaited so that the reload's answer comes after.
/// `wake` makes a worker read its messages.
pub fn hand_off(
    workers: &[Sender<Control>],
    wake: impl Fn(usize),
    table: &Arc<crate::balance::Backends>,
    per_worker: Vec<NewSockets>,
    answer_within: Duration,
) -> Result<(), String> {
    let abort_all = || {
        for (w, sender) in workers.iter().enumerate() {
            if sender.send(Control::Abort).is_ok() {
                wake(w);
            }
        }
    };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for (w, (sender, add)) in workers.iter().zip(per_worker).enumerate() {
        let message = Control::Prepare {
            table: table.clone(),
            add,
            done: done_tx.clone(),
        };
        if sender.send(message).is_err() {
            abort_all();
            return Err(format!("worker {w} is gone; no worker changed"));
        }
        wake(w);
    }
    if let Err(missing) = await_all(&done_rx, workers.len(), answer_within) {
        abort_all();
        return Err(format!(
            "worker(s) {missing:?} did not answer within {answer_within:?}; no worker changed"
        ));
    }
    for (w, sender) in workers.iter().enumerate() {
        // Only a worker thread that has ended (the process is going down) refuses this.
        if sender
            .send(Control::Commit {
                done: done_tx.clone(),
            })
            .is_ok()
        {
            wake(w);
        }
    }
    if let Err(missing) = await_all(&done_rx, workers.len(), answer_within) {
        tracing::warn!("worker(s) {missing:?} did not confirm the reload within {answer_within:?}; they switch when they next wake");
    }
    Ok(())
}

/// Waits for an answer from each of `workers` workers (answers carry the worker's id); on a
/// timeout, the ids that did not answer.
fn await_all(
    answers: &std::sync::mpsc::Receiver<usize>,
    workers: usize,
    within: Duration,
) -> Result<(), Vec<usize>> {
    let deadline = std::time::Instant::now() + within;
    let mut answered = vec![false; workers];
    let mut left = workers;
    while left > 0 {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match answers.recv_timeout(wait) {
            Ok(w) if w < workers && !answered[w] => {
                answered[w] = true;
                left -= 1;
            }
            Ok(_) => {}
            Err(_) => {
                return Err((0..workers).filter(|&w| !answered[w]).collect());
            }
        }
    }
    Ok(())
}

impl Reloader {
    pub fn new(
        source: Option<Source>,
        config: Config,
        shared: Arc<SharedState>,
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
        // A role pool reads state over the check's login; the running [health] is what checks.
        let reads_state = old.health.check == config::CheckKind::Mysql && !old.health.user.is_empty();
        if let Some(l) = loaded
            .listeners
            .iter()
            .find(|l| l.role != config::Role::Any && !reads_state)
        {
            return Err(format!(
                "{}: listener {:?} has role = \"{}\", which needs the running [health] check = \"mysql\" \
                 with a user; [health] changes need a restart",
                source.path.display(),
                l.name,
                l.role.as_str()
            ));
        }

        // What only a restart changes keeps its running value.
        let mut restart = Vec::new();
        if loaded.workers != old.workers {
            restart.push("workers");
        }
        if loaded.admin != old.admin {
            restart.push("admin");
        }
        if loaded.admin_token_file != old.admin_token_file || loaded.admin_token != old.admin_token {
            restart.push("admin_token_file");
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
            admin_token_file: old.admin_token_file.clone(),
            admin_token: old.admin_token.clone(),
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
        let mut per_worker: Vec<NewSockets> = (0..self.workers.len()).map(|_| Vec::new()).collect();
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
        let new_servers: Vec<_> = table
            .servers
            .iter()
            .filter(|s| !old_table.servers.iter().any(|o| Arc::ptr_eq(o, s)))
            .collect();
        let removed_servers: Vec<_> = old_table.servers_removed_in(&table).collect();

        hand_off(
            &self.workers,
            |w| self.shared.wake(w),
            &table,
            per_worker,
            WORKER_ANSWER,
        )?;
        table.publish_needs();
        self.shared.set_table(table.clone());
        for b in &removed_backends {
            b.live.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for s in &removed_servers {
            s.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = self.health.watch(new_servers.iter().copied()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver};

    use crate::balance::Backends;

    fn table() -> Arc<Backends> {
        let backends = vec![config::BackendConfig::at("127.0.0.1:3306".parse().unwrap())];
        let config = Config::with_listener("127.0.0.1:4040".parse().unwrap(), backends);
        Arc::new(Backends::from_config(&config))
    }

    /// What a worker received, by kind.
    fn kinds(receiver: &Receiver<Control>) -> Vec<&'static str> {
        receiver
            .try_iter()
            .map(|m| match m {
                Control::Prepare { .. } => "prepare",
                Control::Commit { .. } => "commit",
                Control::Abort => "abort",
            })
            .collect()
    }

    /// A worker thread that answers every step, as a live worker does.
    fn answering_worker(id: usize) -> (Sender<Control>, std::thread::JoinHandle<Vec<&'static str>>) {
        let (sender, receiver) = channel();
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Ok(message) = receiver.recv() {
                match message {
                    Control::Prepare { done, .. } => {
                        seen.push("prepare");
                        let _ = done.send(id);
                    }
                    Control::Commit { done } => {
                        seen.push("commit");
                        let _ = done.send(id);
                    }
                    Control::Abort => seen.push("abort"),
                }
            }
            seen
        });
        (sender, thread)
    }

    fn no_sockets(workers: usize) -> Vec<NewSockets> {
        (0..workers).map(|_| Vec::new()).collect()
    }

    #[test]
    fn a_worker_that_is_gone_leaves_every_worker_on_the_old_table() {
        let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| channel()).unzip();
        drop(receivers.pop()); // Worker 2 is gone.
        let result = hand_off(&senders, |_| {}, &table(), no_sockets(3), Duration::from_secs(1));
        assert_eq!(result, Err("worker 2 is gone; no worker changed".to_string()));
        // The workers before it were told to prepare, then to drop it; none to switch.
        for receiver in &receivers {
            assert_eq!(kinds(receiver), vec!["prepare", "abort"]);
        }
    }

    #[test]
    fn a_worker_that_does_not_answer_leaves_every_worker_on_the_old_table() {
        let (first, first_thread) = answering_worker(0);
        let (silent, silent_receiver) = channel();
        let (last, last_thread) = answering_worker(2);
        let workers = [first, silent, last];
        let result = hand_off(
            &workers,
            |_| {},
            &table(),
            no_sockets(3),
            Duration::from_millis(200),
        );
        let error = result.unwrap_err();
        assert!(error.contains("[1] did not answer"), "{error}");
        // The silent one finds the table and then its withdrawal, in that order, when it wakes.
        assert_eq!(kinds(&silent_receiver), vec!["prepare", "abort"]);
        drop(workers);
        assert_eq!(first_thread.join().unwrap(), vec!["prepare", "abort"]);
        assert_eq!(last_thread.join().unwrap(), vec!["prepare", "abort"]);
    }

    #[test]
    fn workers_that_answer_all_switch() {
        let (senders, threads): (Vec<_>, Vec<_>) = (0..3).map(answering_worker).unzip();
        let woken = Mutex::new(Vec::new());
        let result = hand_off(
            &senders,
            |w| woken.lock().unwrap().push(w),
            &table(),
            no_sockets(3),
            Duration::from_secs(5),
        );
        drop(senders);
        let seen: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(result, Ok(()), "{seen:?}");
        for worker in seen {
            assert_eq!(worker, vec!["prepare", "commit"]);
        }
        assert_eq!(woken.into_inner().unwrap(), vec![0, 1, 2, 0, 1, 2]);
    }
}
