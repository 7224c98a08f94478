//! Accepting clients: the multishot accept of each listening socket, its back-off when
//! descriptors run short, the allow list, and a new connection's slot.

use super::*;

impl<D: Driver> Worker<D> {
    /// A removed listener's accept has ended: its socket closes.
    pub(super) fn close_listening(&mut self, index: usize) {
        if let Some(listening) = self.listening[index].take() {
            self.driver.forget(listening.socket.as_raw_fd());
        }
    }

    pub(super) fn arm_accept(&mut self, index: usize) {
        let fd = self.listening[index]
            .as_ref()
            .expect("live listener slot")
            .socket
            .as_raw_fd();
        self.start_own(index, Op::Accept, Io::Accept { fd });
    }

    pub(super) fn on_accept(&mut self, index: usize, result: i32, more: bool) {
        let Some(listening) = self.listening.get(index).and_then(Option::as_ref) else {
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            let key = Key {
                index,
                generation: 0,
                op: Op::Accept,
                dir: 0,
            };
            self.accounting_error(0, Some(key), result, "an accept ended on a free listener slot");
            return;
        };
        let (closing, listener) = (listening.closing, listening.listener);
        if self.shared.stopping.load(Ordering::Relaxed) || closing {
            // Shutting down, or the listener was removed: a client that slipped in is closed.
            if result >= 0 {
                // SAFETY: a successful accept returns a new descriptor that nothing else owns.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            if closing && !more {
                self.close_listening(index);
            }
            return;
        }
        if !more {
            let resource = matches!(
                -result,
                libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
            );
            if result < 0 && resource {
                // Out of descriptors or memory: back off instead of spinning on accept.
                if log_due(&mut self.last_accept_warning_ms, self.now_ms) {
                    tracing::warn!(worker = self.id, error = %errno(result), "accept failed; retrying shortly (logged at most once a second)");
                }
                self.start_own(index, Op::AcceptRetry, Io::Timer { ms: ACCEPT_RETRY_MS });
            } else {
                self.arm_accept(index);
            }
        }
        if result < 0 {
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing else owns.
        let client = unsafe { OwnedFd::from_raw_fd(result) };
        self.shared.workers[self.id]
            .accepted
            .fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.clone();
        if !epoch.table.listeners[listener].config.allow.is_empty()
            && !self.allowed(&epoch, listener, &client)
        {
            return; // Dropping `client` closes it before a byte is exchanged.
        }
        let free = self.free.pop();
        if free.is_none() && self.conns.len() > MAX_INDEX {
            return; // More connections than a key can name (never, under any fd limit).
        }
        // TCP_NODELAY comes from the listening socket (accepted sockets inherit it): no syscall.
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let slot = Slot {
            conn: Conn::new(),
            client,
            backend: None,
            pipes: [None, None],
            epoch: epoch.clone(),
            listener,
            generation,
        };
        let index = put(&mut self.conns, free, slot);
        self.open += 1;
        self.shared.workers[self.id]
            .open
            .store(self.open, Ordering::Relaxed);
        // Others wait already: queue behind them rather than take a slot that frees first.
        let queue_first = epoch.table.listeners[listener]
            .state
            .queued
            .load(Ordering::Relaxed)
            > 0;
        self.step(index, Event::Accepted { queue_first });
    }

    /// Whether the listener's allow list admits this client; counts and (at a bounded rate)
    /// logs the ones it does not. One getpeername per accept, only on listeners with a list.
    pub(super) fn allowed(&mut self, epoch: &Epoch, listener: usize, client: &OwnedFd) -> bool {
        let peer = socket2::SockRef::from(client)
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket());
        let Some(peer) = peer else {
            return false;
        };
        let l = &epoch.table.listeners[listener];
        if l.config.allow.iter().any(|net| net.contains(peer.ip())) {
            return true;
        }
        l.state.rejected[self.id].fetch_add(1, Ordering::Relaxed);
        if log_due(&mut self.last_rejection_log_ms, self.now_ms) {
            tracing::warn!(worker = self.id, listener = %l.config.name, client = %peer, "client outside the allow list; closed (further ones this second only counted)");
        }
        false
    }
}
