//! What reaches a worker from outside its connections: reloads and wakes through its eventfd,
//! a writer change (its connections to the former writer close), and the idle sweep.

use super::*;

impl<D: Driver> Worker<D> {
    pub(super) fn on_wake(&mut self, more: bool) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from this worker's eventfd (non-blocking).
        unsafe { libc::read(self.shared.waker(self.id), (&mut value as *mut u64).cast(), 8) };
        if !more {
            self.arm_wake();
        }
        while let Ok(message) = self.control.try_recv() {
            match message {
                Control::Prepare { table, add, done } => {
                    self.prepared = Some((table, add));
                    let _ = done.send(self.id);
                }
                Control::Commit { done } => {
                    if let Some((table, add)) = self.prepared.take() {
                        self.reload(table, add);
                    }
                    let _ = done.send(self.id);
                }
                Control::Abort => self.prepared = None,
            }
        }
        let writer_changes = self.shared.writer_changes.load(Ordering::Acquire);
        if writer_changes != self.writer_changes_seen {
            self.writer_changes_seen = writer_changes;
            self.close_former_writers();
        }
        self.queue_dirty = true;
    }

    /// Resets the connections of writer pools with `on_writer_change = "close"` whose backend
    /// no longer holds the writer role, so that no client goes on writing to a server that left
    /// it (the former writer of a master-master pair would take conflicting writes).
    pub(super) fn close_former_writers(&mut self) {
        let mut closed = 0;
        for index in 0..self.conns.len() {
            let Some(slot) = self.conns[index].as_ref() else {
                continue;
            };
            let Some(backend) = slot.conn.backend() else {
                continue;
            };
            let table = &slot.epoch.table;
            let listener = &table.listeners[slot.listener].config;
            if listener.on_writer_change != OnWriterChange::Close || slot.conn.phase() == Phase::Closing {
                continue;
            }
            let b = &table.all[backend];
            if b.writer.is_none() || b.is_writer() {
                continue;
            }
            closed += 1;
            self.step(index, Event::Close);
        }
        if closed > 0 {
            tracing::info!(worker = self.id, closed, "connections to a former writer closed");
        }
    }

    /// Switches new connections to `table`; see the module docs.
    pub(super) fn reload(&mut self, table: Arc<Backends>, add: NewSockets) {
        for listening in self.listening.iter_mut().flatten() {
            if listening.closing {
                continue;
            }
            let kept = table
                .listeners
                .iter()
                .position(|l| l.config.name == listening.name && l.config.bind == listening.bind);
            match kept {
                Some(listener) => listening.listener = listener,
                None => {
                    // Ends the multishot accept; the slot is freed at its last end.
                    listening.closing = true;
                    let _ = listening.socket.shutdown(std::net::Shutdown::Read);
                }
            }
        }
        for (name, socket) in add {
            let Some(listener) = table.listeners.iter().position(|l| l.config.name == name) else {
                continue;
            };
            let bind = table.listeners[listener].config.bind;
            let listening = Listening {
                socket,
                name,
                bind,
                listener,
                closing: false,
            };
            let free = self.listening.iter().position(Option::is_none);
            let index = put(&mut self.listening, free, listening);
            self.arm_accept(index);
        }
        self.epoch = Rc::new(Epoch::new(table));
        // Connections opened under the old table keep its idle timeouts: sweep often enough for
        // both until they are gone.
        self.idle_tick_ms = match (self.open > 0, self.idle_tick_ms, self.epoch.idle_tick_ms) {
            (true, old, new) if old > 0 && new > 0 => old.min(new),
            (true, old, new) => old.max(new),
            (false, _, new) => new,
        };
    }

    pub(super) fn on_idle_tick(&mut self) {
        self.idle_tick_armed = false;
        if self.open > 0 && self.idle_tick_ms > 0 {
            self.close_idle();
        }
    }

    /// Closes relaying connections that received no byte for their listener's
    /// `idle_timeout_ms`.
    pub(super) fn close_idle(&mut self) {
        for index in 0..self.conns.len() {
            let Some(slot) = self.conns[index].as_ref() else {
                continue;
            };
            let Some(since_ms) = slot.conn.relaying_since_ms() else {
                continue;
            };
            let listener = &slot.epoch.table.listeners[slot.listener];
            let idle = listener.config.idle_timeout_ms;
            if idle == 0 || self.now_ms.saturating_sub(since_ms) < idle {
                continue;
            }
            listener.state.idle_closed[self.id].fetch_add(1, Ordering::Relaxed);
            tracing::debug!(worker = self.id, listener = %listener.config.name, idle_ms = idle, "idle connection closed");
            self.step(index, Event::Close);
        }
    }
}
