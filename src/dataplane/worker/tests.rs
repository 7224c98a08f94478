//! The worker's own jobs (ends matched to connections, the queue, retries, buffer waiters)
//! driven through a driver that only records what it is asked to start: no ring, no epoll.

use super::*;
use crate::balance::Tried;
use crate::config::{BackendConfig, Config, TuningConfig};
use std::io::Read;
use std::os::unix::net::UnixStream;

/// Records the ops started; ends are fed by the tests.
struct Recorder {
    started: Vec<Key>,
    available: u16,
}

impl Driver for Recorder {
    fn start(&mut self, key: Key, _io: Io<'_>) {
        self.started.push(key);
    }

    fn wait(&mut self, _out: &mut Vec<Completion>) -> io::Result<()> {
        unreachable!("the tests feed the ends")
    }

    fn forget(&mut self, _fd: RawFd) {}

    fn buf_bytes(&self) -> u32 {
        64
    }

    fn buffers_available(&self) -> u16 {
        self.available
    }

    fn recycle(&mut self, _id: u16) {
        self.available += 1;
    }
}

/// A worker over a table of `backends` backends (at 127.0.0.1:41000 and up, never connected
/// to) with `maxconn`, `retries` and `queue_timeout_ms`, and 4 buffers.
fn worker_with(backends: usize, maxconn: u32, retries: u32, queue_timeout_ms: u64) -> Worker<Recorder> {
    let pool = (0..backends)
        .map(|i| BackendConfig {
            maxconn,
            ..BackendConfig::at(format!("127.0.0.1:{}", 41000 + i).parse().unwrap())
        })
        .collect();
    let mut config = Config::with_listener("127.0.0.1:4040".parse().unwrap(), pool);
    config.listeners[0].retries = retries;
    config.listeners[0].queue_timeout_ms = queue_timeout_ms;
    worker_over(config)
}

/// A worker over the table of `config`, and 4 buffers.
fn worker_over(config: Config) -> Worker<Recorder> {
    let shared = Arc::new(SharedState::new(Arc::new(Backends::from_config(&config)), 1).unwrap());
    let config = WorkerConfig {
        id: 0,
        driver: DriverKind::Epoll,
        core: None,
        tuning: TuningConfig {
            pin_workers: false,
            ..TuningConfig::default()
        },
    };
    let (_control, receiver) = std::sync::mpsc::channel();
    let driver = Recorder {
        started: Vec::new(),
        available: 4,
    };
    Worker::new(driver, &config, Vec::new(), shared, receiver)
}

/// A client accepted as `on_accept` does it: its slot, generation and the peer's end.
fn accept(worker: &mut Worker<Recorder>) -> (usize, u32, UnixStream) {
    let (client, peer) = UnixStream::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let generation = worker.next_generation;
    worker.next_generation += 1;
    let slot = Slot {
        conn: Conn::new(),
        client: client.into(),
        backend: None,
        pipes: [None, None],
        epoch: worker.epoch.clone(),
        listener: 0,
        generation,
    };
    let free = worker.free.pop();
    let index = put(&mut worker.conns, free, slot);
    worker.open += 1;
    let queue_first = queued(worker) > 0;
    worker.step(index, Event::Accepted { queue_first });
    (index, generation, peer)
}

fn end(worker: &mut Worker<Recorder>, index: usize, generation: u32, op: Op, dir: usize, result: i32) {
    let key = Key {
        index,
        generation,
        op,
        dir,
    };
    worker.complete(Completion {
        key: Some(key),
        raw: 0,
        result,
        buffer: None,
        more: false,
    });
}

fn queued(worker: &Worker<Recorder>) -> u32 {
    worker.epoch.table.listeners[0]
        .state
        .queued
        .load(Ordering::Relaxed)
}

fn phase(worker: &Worker<Recorder>, index: usize) -> Option<Phase> {
    worker.conns[index].as_ref().map(|s| s.conn.phase())
}

fn accounting_errors(worker: &Worker<Recorder>) -> u64 {
    worker.shared.workers[0].accounting_errors.load(Ordering::Relaxed)
}

/// Takes every backend's slots, as other clients would.
fn fill(worker: &Worker<Recorder>) {
    while let Pick::Backend(_) = worker.epoch.table.acquire(0, &Tried::default(), 0) {}
}

/// A client queued behind full backends, then served when `freed` backends release a slot.
fn queued_until_slots_free(worker: &mut Worker<Recorder>, freed: &[usize]) -> (usize, u32, UnixStream) {
    fill(worker);
    let client = accept(worker);
    assert_eq!(phase(worker, client.0), Some(Phase::Queued));
    let epoch = worker.epoch.clone();
    freed.iter().for_each(|&backend| worker.release(&epoch, backend));
    worker.serve_queue();
    client
}

fn end_of_batch(worker: &mut Worker<Recorder>) {
    worker.wake_buffer_waiters();
    if std::mem::take(&mut worker.queue_dirty) {
        worker.serve_queue();
    }
}

const RDHUP: i32 = libc::POLLRDHUP as i32;

fn queue_tick(worker: &mut Worker<Recorder>) {
    let key = Key {
        index: 0,
        generation: 0,
        op: Op::QueueTick,
        dir: 0,
    };
    worker.complete(Completion {
        key: Some(key),
        raw: 0,
        result: -libc::ETIME,
        buffer: None,
        more: false,
    });
}

#[test]
fn ends_that_match_no_op_in_flight_are_counted_and_change_nothing() {
    let mut worker = worker_with(1, 0, 3, 5000);
    worker.next_generation = 7;
    let (index, generation, _peer) = accept(&mut worker);
    let inflight = worker.conns[index].as_ref().unwrap().conn.inflight();
    assert_eq!(inflight, 2, "the connect and its timeout");
    // An end for a slot that holds nobody, one for an earlier connection of the same slot, and
    // one that names no op at all (its buffer goes back).
    end(&mut worker, index + 1, generation, Op::Send, 0, 10);
    end(&mut worker, index, generation - 1, Op::Send, 0, 10);
    let available = worker.driver.available;
    worker.complete(Completion {
        key: None,
        raw: 0xfe,
        result: 10,
        buffer: Some(3),
        more: false,
    });
    assert_eq!(worker.driver.available, available + 1);
    assert_eq!(accounting_errors(&worker), 3);
    assert_eq!(worker.conns[index].as_ref().unwrap().conn.inflight(), inflight);
    // Its own ends are taken; one more than it started is not.
    worker.step(index, Event::Close);
    end(&mut worker, index, generation, Op::Connect, 0, -libc::ECANCELED);
    end(
        &mut worker,
        index,
        generation,
        Op::ConnectTimeout,
        0,
        -libc::ECANCELED,
    );
    assert!(worker.conns[index].is_none(), "freed at its last end");
    end(
        &mut worker,
        index,
        generation,
        Op::ConnectTimeout,
        0,
        -libc::ECANCELED,
    );
    assert_eq!(accounting_errors(&worker), 4);
    assert_eq!((worker.open, worker.free.len()), (0, 1));
}

#[test]
fn a_client_tries_one_backend_and_then_at_most_retries_others() {
    for retries in [0u32, 1, 2] {
        let mut worker = worker_with(5, 0, retries, 5000);
        let (index, generation, mut client) = accept(&mut worker);
        let mut connects = 1;
        loop {
            end(
                &mut worker,
                index,
                generation,
                Op::Connect,
                0,
                -libc::ECONNREFUSED,
            );
            end(
                &mut worker,
                index,
                generation,
                Op::ConnectTimeout,
                0,
                -libc::ECANCELED,
            );
            match worker.conns[index].as_ref() {
                Some(s) if s.conn.phase() == Phase::Connecting && s.conn.backend().is_some() => connects += 1,
                _ => break,
            }
        }
        assert_eq!(connects, retries + 1);
        assert!(
            worker.conns[index].is_none(),
            "closed once its retries are used up"
        );
        let state = &worker.epoch.table.listeners[0].state;
        assert_eq!(state.redispatches[0].load(Ordering::Relaxed), u64::from(retries));
        assert_eq!(state.no_backend[0].load(Ordering::Relaxed), 1);
        let active: u32 = (0..5)
            .map(|b| worker.epoch.table.all[b].active_connections())
            .sum();
        assert_eq!(active, 0, "every backend released");
        let mut packet = [0u8; 256];
        let n = client.read(&mut packet).unwrap();
        let message = String::from_utf8_lossy(&packet[7..n]);
        assert_eq!(&packet[4..7], &[0xff, 0x10, 0x04], "ERR 1040: {message}");
        let expected = format!("{} tried, retries = {retries} used up", retries + 1);
        assert!(message.contains(&expected), "{message}");
        assert_eq!(accounting_errors(&worker), 0);
    }
}

#[test]
fn a_queued_client_that_hangs_up_as_a_slot_frees_leaves_the_slot_to_the_next() {
    let mut worker = worker_with(1, 1, 3, 60_000);
    fill(&worker);
    let (hung_up, generation, _) = accept(&mut worker);
    let (live, _, _client) = accept(&mut worker);
    assert_eq!(queued(&worker), 2);
    // One batch: a slot frees, the queue's tick fires, the first client's hang-up arrives.
    let epoch = worker.epoch.clone();
    worker.release(&epoch, 0);
    queue_tick(&mut worker);
    end(&mut worker, hung_up, generation, Op::QueueWatch, 0, RDHUP);
    end_of_batch(&mut worker);
    assert_eq!(phase(&worker, hung_up), None, "freed");
    assert_eq!(
        phase(&worker, live),
        Some(Phase::Connecting),
        "the live client has the slot"
    );
    assert_eq!(queued(&worker), 0);
    assert_eq!(accounting_errors(&worker), 0);
}

#[test]
fn a_queued_client_timing_out_and_hanging_up_in_one_batch_leaves_the_queue_once() {
    for hang_up_first in [true, false] {
        let mut worker = worker_with(1, 1, 3, 50);
        fill(&worker);
        let (index, generation, _client) = accept(&mut worker);
        assert_eq!((phase(&worker, index), queued(&worker)), (Some(Phase::Queued), 1));
        worker.now_ms += 80;
        if hang_up_first {
            end(&mut worker, index, generation, Op::QueueWatch, 0, RDHUP);
            queue_tick(&mut worker);
            end_of_batch(&mut worker);
        } else {
            queue_tick(&mut worker);
            end_of_batch(&mut worker);
            // Refused: the cancel of its watch and the watch itself are still in flight.
            assert_eq!(phase(&worker, index), Some(Phase::Closing));
            end(&mut worker, index, generation, Op::QueueWatch, 0, RDHUP);
            end(&mut worker, index, generation, Op::Cancel, 0, -libc::ENOENT);
        }
        assert_eq!(phase(&worker, index), None, "freed");
        assert_eq!((queued(&worker), worker.open), (0, 0));
        assert_eq!(accounting_errors(&worker), 0);
    }
}

#[test]
fn a_queued_client_is_refused_only_once_its_whole_timeout_has_passed() {
    let mut worker = worker_with(1, 1, 3, 300);
    fill(&worker);
    let (index, _, _client) = accept(&mut worker);
    // Both clocks are whole milliseconds: 300 of them may be 299.001 real ones.
    worker.now_ms += 300;
    queue_tick(&mut worker);
    end_of_batch(&mut worker);
    assert_eq!(phase(&worker, index), Some(Phase::Queued));
    worker.now_ms += 1;
    queue_tick(&mut worker);
    end_of_batch(&mut worker);
    assert_eq!(phase(&worker, index), Some(Phase::Closing));
}

#[test]
fn a_client_back_in_the_queue_after_a_refused_connect_ignores_its_old_watch() {
    let mut worker = worker_with(2, 1, 3, 5000);
    let (index, generation, _client) = queued_until_slots_free(&mut worker, &[0]);
    assert_eq!(worker.conns[index].as_ref().unwrap().conn.backend(), Some(0));
    end(
        &mut worker,
        index,
        generation,
        Op::Connect,
        0,
        -libc::ECONNREFUSED,
    );
    assert_eq!((phase(&worker, index), queued(&worker)), (Some(Phase::Queued), 1));
    // The first watch (cancelled), its cancel and the connect's timeout arrive late.
    end(
        &mut worker,
        index,
        generation,
        Op::QueueWatch,
        0,
        -libc::ECANCELED,
    );
    end(&mut worker, index, generation, Op::Cancel, 0, 0);
    end(
        &mut worker,
        index,
        generation,
        Op::ConnectTimeout,
        0,
        -libc::ECANCELED,
    );
    assert_eq!((phase(&worker, index), queued(&worker)), (Some(Phase::Queued), 1));
    let inflight = worker.conns[index].as_ref().unwrap().conn.inflight();
    assert_eq!(inflight, 1, "the new watch");
    end(&mut worker, index, generation, Op::QueueWatch, 0, RDHUP);
    assert_eq!((phase(&worker, index), queued(&worker)), (None, 0));
    assert_eq!(accounting_errors(&worker), 0);
}

#[test]
fn a_redispatch_waits_for_every_op_of_the_client_before_the_next_connect() {
    let mut worker = worker_with(2, 1, 3, 5000);
    let (index, generation, _client) = queued_until_slots_free(&mut worker, &[0, 1]);
    end(&mut worker, index, generation, Op::Connect, 0, 0);
    assert_eq!(phase(&worker, index), Some(Phase::Relaying));
    // The watch, its cancel, the connect's timeout and a receive each way.
    assert_eq!(worker.conns[index].as_ref().unwrap().conn.inflight(), 5);
    // The backend closes before its first byte: the client's receive is cancelled.
    end(&mut worker, index, generation, Op::Recv, conn::TO_CLIENT, 0);
    assert_eq!(phase(&worker, index), Some(Phase::Redispatching));
    for (op, dir, result) in [
        (Op::Recv, TO_BACKEND, -libc::ECANCELED),
        (Op::Cancel, TO_BACKEND, 0),
        (Op::QueueWatch, 0, -libc::ECANCELED),
        (Op::Cancel, 0, 0),
    ] {
        end(&mut worker, index, generation, op, dir, result);
        assert_eq!(phase(&worker, index), Some(Phase::Redispatching));
    }
    end(
        &mut worker,
        index,
        generation,
        Op::ConnectTimeout,
        0,
        -libc::ECANCELED,
    );
    let slot = worker.conns[index].as_ref().unwrap();
    assert_eq!(
        (slot.conn.phase(), slot.conn.backend()),
        (Phase::Connecting, Some(1))
    );
    assert_eq!(accounting_errors(&worker), 0);
}

#[test]
fn a_receive_that_found_no_buffer_wakes_when_one_came_back_earlier_in_its_batch() {
    let mut worker = worker_with(1, 0, 3, 5000);
    let mut relaying = || {
        let (index, generation, peer) = accept(&mut worker);
        end(&mut worker, index, generation, Op::Connect, 0, 0);
        (index, generation, peer)
    };
    let (parked, parked_generation, _a) = relaying();
    let (sender, sender_generation, _b) = relaying();
    // Every buffer is out; the sender holds buffer 0 in a send.
    worker.driver.available = 0;
    worker.complete(Completion {
        key: Some(Key {
            index: sender,
            generation: sender_generation,
            op: Op::Recv,
            dir: TO_BACKEND,
        }),
        raw: 0,
        result: 10,
        buffer: Some(0),
        more: false,
    });
    // One batch: the send ends (its buffer back), then a receive that ran before it reports no
    // buffer left.
    end(&mut worker, sender, sender_generation, Op::Send, TO_BACKEND, 10);
    end(
        &mut worker,
        parked,
        parked_generation,
        Op::Recv,
        TO_BACKEND,
        -libc::ENOBUFS,
    );
    let waits = |w: &Worker<Recorder>| {
        w.conns[parked]
            .as_ref()
            .unwrap()
            .conn
            .waits_for_buffer(TO_BACKEND)
    };
    assert!(waits(&worker));
    let started = worker.driver.started.len();
    end_of_batch(&mut worker);
    assert!(!waits(&worker), "re-armed: a buffer is back");
    assert_eq!(worker.driver.started[started..].len(), 1);
    assert_eq!(worker.driver.started[started].op, Op::Recv);
    assert_eq!(worker.shared.workers[0].buffer_waits.load(Ordering::Relaxed), 1);
    assert_eq!(accounting_errors(&worker), 0);
}

#[test]
fn a_client_that_resets_while_its_backend_connects_does_not_get_the_backend_marked() {
    let mut config = Config::with_listener(
        "127.0.0.1:4040".parse().unwrap(),
        vec![BackendConfig::at("127.0.0.1:41000".parse().unwrap())],
    );
    config.listeners[0].send_proxy = Some(crate::proxy_protocol::ProxyVersion::V1);
    let mut worker = worker_over(config);
    // A real TCP client that resets before its backend has connected.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (client, _) = listener.accept().unwrap();
    socket2::SockRef::from(&peer)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(peer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while socket2::SockRef::from(&client).peer_addr().is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the client's reset never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let slot = Slot {
        conn: Conn::new(),
        client: client.into(),
        backend: None,
        pipes: [None, None],
        epoch: worker.epoch.clone(),
        listener: 0,
        generation: 0,
    };
    let index = put(&mut worker.conns, None, slot);
    worker.open += 1;
    worker.step(index, Event::Accepted { queue_first: false });
    end(&mut worker, index, 0, Op::Connect, 0, 0);
    let backend = &worker.epoch.table.all[0];
    assert_eq!(backend.stats.traffic[0].connect_errors.load(Ordering::Relaxed), 0);
    let suspect_until = backend.server.suspect_until_ms.load(Ordering::Relaxed);
    assert_eq!(suspect_until, 0, "the backend was marked suspect");
    assert_eq!(phase(&worker, index), Some(Phase::Closing));
}
