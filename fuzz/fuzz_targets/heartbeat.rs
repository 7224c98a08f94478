//! Heartbeats: `decode` never panics; a datagram it accepts is exactly what `encode` writes for
//! the message it returns. The bytes are also decoded re-signed with the key, which lets the
//! fuzzer past the tag into the field checks: behind a good tag the only refusal left is
//! `Malformed`. Messages drawn from the input round-trip through `encode`, and a stream of them
//! through `PeerTracker` is accepted exactly when it is newer than all accepted before from its
//! node.
#![no_main]

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use ringlb::config::{Secret, MAX_NODE_NAME_BYTES};
use ringlb::ha::message::{self, decode, encode, Drop, Message, PeerTracker, Role};
use sha2::Sha256;

const TAG_BYTES: usize = 32;

fn key() -> Secret {
    Secret::from_bytes(b"the fuzzer's shared secret")
}

/// `datagram` with its last 32 bytes replaced by the HMAC-SHA256 of the others: what a sender
/// holding the key (but perhaps with a bug) would send.
fn resign(datagram: &[u8], key: &Secret) -> Option<Vec<u8>> {
    let signed = datagram.len().checked_sub(TAG_BYTES).map(|n| &datagram[..n])?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).ok()?;
    mac.update(signed);
    let mut out = signed.to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    Some(out)
}

/// Checks one decode and returns what it refused, if anything.
fn check_decode(datagram: &[u8], key: &Secret) -> Option<Drop> {
    match decode(datagram, key) {
        Ok(m) => {
            assert_eq!(
                encode(&m, key),
                datagram,
                "an accepted datagram is the encoding of {m:?}"
            );
            assert!((1..=MAX_NODE_NAME_BYTES).contains(&m.node.len()));
            None
        }
        Err(drop) => {
            assert!(
                !matches!(drop, Drop::Replayed | Drop::Stale),
                "decode judges bytes, not freshness: {drop}"
            );
            // The refusals that need no key come first, in the documented order.
            let expected = if datagram.len() < message::MIN_BYTES {
                Some(Drop::Truncated)
            } else if datagram.len() > message::MAX_BYTES {
                Some(Drop::Oversized)
            } else if datagram[..4] != message::MAGIC {
                Some(Drop::BadMagic)
            } else if datagram[4] != message::VERSION {
                Some(Drop::BadVersion)
            } else {
                None
            };
            if let Some(expected) = expected {
                assert_eq!(drop, expected);
            }
            Some(drop)
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Fields {
    node: String,
    incarnation: u64,
    sequence: u64,
    role: u8,
    preferred: bool,
    healthy: bool,
}

fn role(byte: u8) -> Role {
    [Role::Starting, Role::Standby, Role::Active, Role::Leaving][usize::from(byte % 4)]
}

fn check_round_trip(fields: Fields, key: &Secret) {
    let m = Message {
        node: fields.node,
        incarnation: fields.incarnation,
        sequence: fields.sequence,
        role: role(fields.role),
        preferred: fields.preferred,
        healthy: fields.healthy,
    };
    let bytes = encode(&m, key);
    // The name is cut to 64 bytes at a char boundary; without one the datagram is a byte short
    // of the shortest message.
    let mut cut = m.node.len().min(MAX_NODE_NAME_BYTES);
    while !m.node.is_char_boundary(cut) {
        cut -= 1;
    }
    let want_node = &m.node[..cut];
    if want_node.is_empty() {
        assert_eq!(bytes.len(), message::MIN_BYTES - 1);
        assert_eq!(decode(&bytes, key), Err(Drop::Truncated));
        return;
    }
    assert!((message::MIN_BYTES..=message::MAX_BYTES).contains(&bytes.len()));
    let want = Message {
        node: want_node.to_string(),
        ..m
    };
    assert_eq!(decode(&bytes, key), Ok(want));
    // Any other key refuses it.
    assert_eq!(
        decode(&bytes, &Secret::from_bytes(b"another key")),
        Err(Drop::BadTag)
    );
}

/// The tracker against a model that keeps the newest (incarnation, sequence) accepted per node.
/// Three bytes make a message (node, incarnation, sequence), in small ranges so that they collide.
fn check_tracker(bytes: &[u8]) {
    let mut tracker = PeerTracker::new();
    let mut newest: HashMap<u8, (u64, u64)> = HashMap::new();
    for chunk in bytes.chunks_exact(3) {
        let node = chunk[0] % 3;
        let received = (u64::from(chunk[1] % 4), u64::from(chunk[2] % 8));
        let m = Message {
            node: format!("node-{node}"),
            incarnation: received.0,
            sequence: received.1,
            role: Role::Active,
            preferred: false,
            healthy: true,
        };
        let want = match newest.get(&node) {
            Some(&last) if received.0 < last.0 => Err(Drop::Stale),
            Some(&last) if received <= last => Err(Drop::Replayed),
            _ => Ok(()),
        };
        assert_eq!(tracker.accept(&m), want, "{m:?} after {newest:?}");
        if want.is_ok() {
            newest.insert(node, received);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let key = key();
    check_decode(data, &key);
    if let Some(resigned) = resign(data, &key) {
        if let Some(drop) = check_decode(&resigned, &key) {
            assert!(
                matches!(
                    drop,
                    Drop::Truncated | Drop::Oversized | Drop::BadMagic | Drop::BadVersion | Drop::Malformed
                ),
                "a re-signed datagram refused as {drop}"
            );
        }
    }
    let mut input = Unstructured::new(data);
    if let Ok(fields) = Fields::arbitrary(&mut input) {
        check_round_trip(fields, &key);
    }
    check_tracker(input.take_rest());
});
