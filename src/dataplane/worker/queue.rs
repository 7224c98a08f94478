//! The queue of clients waiting for a backend under its `maxconn`, the error packet a client
//! that cannot be served gets, the release of a backend (which may serve a waiter, here or on
//! another worker), and the directions parked for a buffer.

use super::*;

impl<D: Driver> Worker<D> {
    /// Puts a client in the queue if its listener's queue has room.
    pub(super) fn enqueue(&mut self, index: usize) -> bool {
        let slot = self.conns[index].as_ref().expect("live connection");
        let listener = &slot.epoch.table.listeners[slot.listener];
        let limit = listener.config.queue_limit;
        let admitted = listener
            .state
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q < limit).then_some(q + 1)
            })
            .is_ok();
        if admitted {
            self.queue.push_back((index, slot.generation));
        }
        admitted
    }

    /// Gives freed slots to queued clients, oldest first, and refuses those that waited too long.
    pub(super) fn serve_queue(&mut self) {
        let mut left = self.queue.len();
        while left > 0 {
            left -= 1;
            let Some((index, generation)) = self.queue.pop_front() else {
                break;
            };
            let Some(slot) = self.conns.get(index).and_then(Option::as_ref) else {
                continue;
            };
            if slot.generation != generation {
                continue;
            }
            let Some(since_ms) = slot.conn.queued_since_ms() else {
                continue;
            };
            let epoch = slot.epoch.clone();
            let listener = &epoch.table.listeners[slot.listener];
            // Strictly more: both clocks are whole milliseconds, so a wait of exactly the timeout
            // may be up to a millisecond short of it.
            let pick = if self.now_ms.saturating_sub(since_ms) > listener.config.queue_timeout_ms {
                None
            } else {
                let pick = epoch.table.acquire(slot.listener, slot.conn.tried(), self.now_ms);
                Some(Self::choice(&epoch, slot.listener, pick))
            };
            if pick == Some(Choice::Full) {
                self.queue.push_back((index, generation));
                continue;
            }
            listener.state.queued.fetch_sub(1, Ordering::Relaxed);
            self.step(index, Event::Served(pick));
        }
        // A slot this worker freed, that its own queue did not take, may serve a client queued on
        // another worker: wake them. Only after a release, so that workers never wake each other
        // in turn while the backends stay full.
        if !std::mem::take(&mut self.released_for_waiters) {
            return;
        }
        let waiting: u64 = self
            .epoch
            .table
            .listeners
            .iter()
            .map(|l| u64::from(l.state.queued.load(Ordering::Relaxed)))
            .sum();
        if waiting > self.queue.len() as u64 {
            for worker in (0..self.shared.workers.len()).filter(|&w| w != self.id) {
                self.shared.wake(worker);
            }
        }
    }

    /// Tells a client why it cannot be served, as a MySQL ERR packet (code 1040, "Too many
    /// connections", which client libraries treat as worth retrying later), with a message that
    /// says which: the queue, no backend (its `retries` used up, every backend of its pool
    /// tried, or none up), or no socket. The machine closes it next.
    pub(super) fn refuse(&mut self, index: usize, why: Refusal) {
        let id = self.id;
        let slot = self.conns[index].as_ref().expect("live connection");
        let listener = &slot.epoch.table.listeners[slot.listener];
        let name = &listener.config.name;
        let message = match why {
            Refusal::QueueFull | Refusal::QueueTimeout => {
                listener.state.queue_refused[id].fetch_add(1, Ordering::Relaxed);
                let why = if why == Refusal::QueueFull {
                    "every backend is at its maxconn and the queue is full"
                } else {
                    "waited queue_timeout_ms for a backend under its maxconn"
                };
                format!("Too many connections (ringlb listener {name}: {why})")
            }
            Refusal::NoBackend => {
                listener.state.no_backend[id].fetch_add(1, Ordering::Relaxed);
                let tried = slot.conn.tried().len();
                let pool = slot.epoch.table.pools[slot.listener].len();
                let why = if tried == 0 {
                    "none is up".to_string()
                } else if tried > listener.config.retries {
                    format!("{tried} tried, retries = {} used up", listener.config.retries)
                } else if tried as usize >= pool {
                    format!("all {tried} tried")
                } else {
                    format!(
                        "{tried} tried, the other {} down or drained",
                        pool - tried as usize
                    )
                };
                format!("no backend available (ringlb listener {name}: {why})")
            }
            Refusal::NoSocket(errno) => format!(
                "ringlb cannot open a connection to a backend: {}",
                io::Error::from_raw_os_error(errno)
            ),
        };
        let packet = error_packet(ER_CON_COUNT_ERROR, &message);
        // One small write to a fresh socket whose send buffer is empty: it fits at once, and a
        // client that has gone only makes it fail.
        // SAFETY: sends from a live buffer on a descriptor this connection owns.
        unsafe {
            libc::send(
                slot.client.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        tracing::debug!(worker = id, "client refused: {message}");
    }

    /// Undoes a backend's acquire; a queued client may now take the slot.
    pub(super) fn release(&mut self, epoch: &Epoch, backend: usize) {
        epoch.table.release(backend);
        let listener = epoch.table.all[backend].listener;
        if epoch.table.listeners[listener]
            .state
            .queued
            .load(Ordering::Relaxed)
            > 0
        {
            self.queue_dirty = true;
            self.released_for_waiters = true;
        }
    }

    /// Wakes directions parked for lack of a buffer, oldest first, one per buffer back. Runs
    /// after each whole batch of ends, so that a park and a recycle in the same batch, in either
    /// order, never strand a direction while a buffer sits free.
    pub(super) fn wake_buffer_waiters(&mut self) {
        let mut free = self.driver.buffers_available();
        while free > 0 {
            let Some((index, generation, dir)) = self.waiting_for_buffer.pop_front() else {
                return;
            };
            let waiting = self
                .conns
                .get(index)
                .and_then(Option::as_ref)
                .is_some_and(|s| s.generation == generation && s.conn.waits_for_buffer(dir));
            if waiting {
                self.step(index, Event::BufferBack { dir });
                free -= 1;
            }
        }
    }
}

/// A MySQL ERR packet as a server sends it before the handshake (sequence 0, no SQL state).
pub(super) fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(3 + message.len());
    payload.push(0xff);
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = payload.len() as u32;
    let mut packet = len.to_le_bytes()[..3].to_vec();
    packet.push(0);
    packet.extend_from_slice(&payload);
    packet
}
