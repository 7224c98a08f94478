//! The epoll driver keeps io_uring's promises ([`super::super::driver`]): each test starts ops on
//! real sockets and reads their ends back through `wait`.

use super::*;
use socket2::SockAddr;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;

fn driver(buffers: u16, buffer_bytes: u32) -> Epoll {
    Epoll::new(&TuningConfig {
        buffers,
        buffer_bytes,
        pin_workers: false,
        ..TuningConfig::default()
    })
    .unwrap()
}

fn key(index: usize, op: Op, dir: usize) -> Key {
    Key {
        index,
        generation: 1,
        op,
        dir,
    }
}

/// Waits until an end for `want` arrives, or a guard timer of `ms` does; every end seen.
fn wait_for(d: &mut Epoll, want: Key, ms: u64) -> Vec<Completion> {
    let guard = Key {
        index: 999_999,
        generation: 0,
        op: Op::Tick,
        dir: 0,
    };
    d.start(guard, Io::Timer { ms });
    let mut all = Vec::new();
    loop {
        let mut out = Vec::new();
        d.wait(&mut out).unwrap();
        let done = out.iter().any(|c| c.key == Some(want) || c.key == Some(guard));
        all.extend(out);
        if done {
            return all;
        }
    }
}

fn end_of(ends: &[Completion], want: Key) -> Option<Completion> {
    ends.iter().copied().find(|c| c.key == Some(want))
}

/// A connected pair of non-blocking TCP sockets on loopback.
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

#[test]
fn a_receive_with_no_buffer_left_waits_for_bytes_instead_of_ending() {
    let mut d = driver(1, 4);
    let (ours, theirs) = pair();
    // Exactly one buffer's worth: the socket is empty after it, but the read filled its buffer.
    (&theirs).write_all(b"abcd").unwrap();
    let first = key(5, Op::Recv, 0);
    d.start(first, Io::Recv { fd: ours.as_raw_fd() });
    let ends = wait_for(&mut d, first, 1000);
    let end = end_of(&ends, first).expect("the first receive ended");
    assert_eq!(end.result, 4);
    // Its buffer is still held: none is free, and nothing is there to read.
    let second = key(5, Op::Recv, 1);
    d.start(second, Io::Recv { fd: ours.as_raw_fd() });
    let ends = wait_for(&mut d, second, 200);
    assert_eq!(end_of(&ends, second), None, "a receive on an empty socket ended");
    // Bytes arrive while no buffer is free: now it is ENOBUFS.
    (&theirs).write_all(b"e").unwrap();
    let ends = wait_for(&mut d, second, 1000);
    let end = end_of(&ends, second).expect("ENOBUFS once bytes wait");
    assert_eq!((end.result, end.buffer), (-libc::ENOBUFS, None));
}

#[test]
fn bytes_and_the_end_in_one_edge_are_both_read() {
    let mut d = driver(4, 4);
    let (ours, theirs) = pair();
    (&theirs).write_all(b"0123456789").unwrap();
    theirs.shutdown(Shutdown::Write).unwrap();
    let mut total = 0;
    for i in 0..10 {
        let k = key(3, Op::Recv, i & 1);
        d.start(k, Io::Recv { fd: ours.as_raw_fd() });
        let ends = wait_for(&mut d, k, 1000);
        let end = end_of(&ends, k).expect("the receive ended");
        if let Some(id) = end.buffer {
            d.recycle(id);
        }
        if end.result == 0 {
            assert_eq!(total, 10);
            return;
        }
        total += end.result;
    }
    panic!("no end of stream after 10 receives");
}

#[test]
fn a_listener_shut_down_by_a_reload_ends_its_accept() {
    let mut d = driver(4, 64);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let k = key(0, Op::Accept, 0);
    d.start(k, Io::Accept { fd: l.as_raw_fd() });
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let ends = wait_for(&mut d, k, 1000);
    let accepted = end_of(&ends, k).expect("an accept");
    assert!(accepted.result >= 0 && accepted.more, "{accepted:?}");
    // SAFETY: the accept returned a descriptor nothing else owns.
    drop(unsafe { OwnedFd::from_raw_fd(accepted.result) });
    drop(client);
    socket2::SockRef::from(&l).shutdown(Shutdown::Read).unwrap();
    let ends = wait_for(&mut d, k, 1000);
    let end = end_of(&ends, k).expect("the accept ended");
    assert!(!end.more && end.result < 0, "{end:?}");
}

#[test]
fn a_descriptor_number_reused_after_forget_gets_its_edges() {
    let mut d = driver(4, 64);
    let (ours, theirs) = pair();
    let fd = ours.as_raw_fd();
    let k = key(1, Op::Recv, 0);
    d.start(k, Io::Recv { fd });
    (&theirs).write_all(b"x").unwrap();
    let ends = wait_for(&mut d, k, 1000);
    d.recycle(end_of(&ends, k).unwrap().buffer.unwrap());
    d.forget(fd);
    drop(ours);
    let (again, theirs2) = pair();
    let k2 = key(2, Op::Recv, 0);
    d.start(
        k2,
        Io::Recv {
            fd: again.as_raw_fd(),
        },
    );
    (&theirs2).write_all(b"yy").unwrap();
    let ends = wait_for(&mut d, k2, 1000);
    assert_eq!(end_of(&ends, k2).map(|c| c.result), Some(2));
    drop(theirs);
}

#[test]
fn a_connect_ends_twice_whether_it_connects_times_out_or_is_cancelled() {
    let mut d = driver(4, 64);
    let connect = |d: &mut Epoll, index: usize, addr: &SockAddr, timeout_ms: u64| {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM.nonblocking(), None).unwrap();
        let k = key(index, Op::Connect, 0);
        d.start(
            k,
            Io::Connect {
                fd: socket.as_raw_fd(),
                addr,
                timeout_ms,
            },
        );
        (socket, k)
    };
    let timeout_of = |k: Key| Key {
        op: Op::ConnectTimeout,
        ..k
    };
    // Connects.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = SockAddr::from(l.local_addr().unwrap());
    let (_s1, k) = connect(&mut d, 1, &addr, 1000);
    let mut ends = wait_for(&mut d, k, 1000);
    ends.extend(wait_for(&mut d, timeout_of(k), 100));
    assert_eq!(end_of(&ends, k).map(|c| c.result), Some(0));
    assert_eq!(
        end_of(&ends, timeout_of(k)).map(|c| c.result),
        Some(-libc::ECANCELED)
    );
    // Times out: an address that never answers (a documentation range, routed nowhere here; a
    // refusal or an unreachable network ends the connect at once instead, and is accepted too).
    let nowhere = SockAddr::from("192.0.2.1:9".parse::<std::net::SocketAddr>().unwrap());
    let (_s2, k) = connect(&mut d, 2, &nowhere, 50);
    let mut ends = wait_for(&mut d, k, 1000);
    ends.extend(wait_for(&mut d, timeout_of(k), 100));
    let connect_end = end_of(&ends, k).expect("the connect ended");
    assert!(connect_end.result < 0, "{connect_end:?}");
    assert!(end_of(&ends, timeout_of(k)).is_some(), "its timeout ended");
    // Cancelled while in progress.
    let (s3, k) = connect(&mut d, 3, &nowhere, 5000);
    let cancel = key(3, Op::Cancel, 0);
    d.start(
        cancel,
        Io::Cancel {
            target: k,
            fd: s3.as_raw_fd(),
        },
    );
    let mut ends = wait_for(&mut d, cancel, 1000);
    ends.extend(wait_for(&mut d, timeout_of(k), 100));
    if end_of(&ends, cancel).map(|c| c.result) == Some(0) {
        assert_eq!(end_of(&ends, k).map(|c| c.result), Some(-libc::ECANCELED));
        assert!(end_of(&ends, timeout_of(k)).is_some(), "its timeout ended too");
    }
}

#[test]
fn the_queue_watch_ends_when_the_client_hangs_up() {
    let mut d = driver(4, 64);
    let (ours, theirs) = pair();
    let k = key(4, Op::QueueWatch, 0);
    let io = Io::Poll {
        fd: ours.as_raw_fd(),
        events: libc::POLLRDHUP as u32,
    };
    d.start(k, io);
    let ends = wait_for(&mut d, k, 100);
    assert_eq!(end_of(&ends, k), None, "nothing happened yet");
    drop(theirs);
    let ends = wait_for(&mut d, k, 1000);
    assert!(end_of(&ends, k).is_some());
}
