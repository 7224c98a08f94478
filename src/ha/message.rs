//! The heartbeat on the wire, and the replay guard that stands behind it.
//!
//! One UDP datagram per heartbeat, all integers big-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `RLHA` |
//! | 1 | version, [`VERSION`] |
//! | 1 | role: 0 starting, 1 standby, 2 active, 3 leaving |
//! | 1 | flags: bit 0 healthy (a backend is up), bit 1 preferred (the sender's config names it); other bits 0 |
//! | 1 | node name length, 1..=64 |
//! | n | node name, UTF-8 |
//! | 8 | incarnation: per boot of the sender, larger on each boot |
//! | 8 | sequence: per incarnation, strictly increasing |
//! | 32 | HMAC-SHA256 under the shared key over every byte before it |
//!
//! Invariants: [`decode`] never panics, whatever the bytes; it checks the tag (in constant time)
//! before it reads any field behind the version, so an unauthenticated datagram is only ever
//! measured, never parsed. A message that decodes is authentic but may be old: [`PeerTracker`]
//! then accepts it only if its (incarnation, sequence) is newer than the last one accepted from
//! that node, which stops a recorded heartbeat from being played back.

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Secret, MAX_NODE_NAME_BYTES};

pub const MAGIC: [u8; 4] = *b"RLHA";
pub const VERSION: u8 = 1;
const TAG_BYTES: usize = 32;
/// Magic, version, role, flags, name length.
const HEADER_BYTES: usize = 8;
/// Incarnation and sequence.
const COUNTERS_BYTES: usize = 16;
/// The shortest message: a one-byte node name.
pub const MIN_BYTES: usize = HEADER_BYTES + 1 + COUNTERS_BYTES + TAG_BYTES;
/// The longest message: a 64-byte node name. A receive buffer of this size plus one tells an
/// oversized datagram from one that fits.
pub const MAX_BYTES: usize = HEADER_BYTES + MAX_NODE_NAME_BYTES + COUNTERS_BYTES + TAG_BYTES;

const FLAG_HEALTHY: u8 = 1 << 0;
const FLAG_PREFERRED: u8 = 1 << 1;

type HmacSha256 = Hmac<Sha256>;

/// What a node says it is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Listening for `initdead_ms` after start; never holds the VIP.
    Starting,
    /// Up, not holding the VIP, ready to take it.
    Standby,
    /// Holding the VIP.
    Active,
    /// Shutting down: has released the VIP (if it held it); the peer may take it at once.
    Leaving,
}

impl Role {
    fn to_wire(self) -> u8 {
        match self {
            Role::Starting => 0,
            Role::Standby => 1,
            Role::Active => 2,
            Role::Leaving => 3,
        }
    }

    fn from_wire(byte: u8) -> Option<Role> {
        Some(match byte {
            0 => Role::Starting,
            1 => Role::Standby,
            2 => Role::Active,
            3 => Role::Leaving,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Active => "active",
            Role::Leaving => "leaving",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One heartbeat, as the state machine writes it and reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender's node name, 1..=64 bytes ([`encode`] cuts a longer one at a char boundary).
    pub node: String,
    /// Per boot of the sender; a larger one means the sender restarted.
    pub incarnation: u64,
    /// Per incarnation, strictly increasing.
    pub sequence: u64,
    pub role: Role,
    /// The sender's configuration names it the preferred node.
    pub preferred: bool,
    /// The sender has at least one backend up.
    pub healthy: bool,
}

/// Why a datagram was dropped; the label of the dropped-messages counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// Shorter than the shortest message.
    Truncated,
    /// Longer than the longest message.
    Oversized,
    /// Not a ringlb heartbeat.
    BadMagic,
    /// A heartbeat of another version.
    BadVersion,
    /// The tag does not match: another key, or bytes changed on the way.
    BadTag,
    /// Authentic but not well formed (a sender with a bug, or a future flag).
    Malformed,
    /// A sequence number already seen (or older) in the sender's current incarnation.
    Replayed,
    /// From an older incarnation of the sender than one already heard.
    Stale,
}

impl Drop {
    pub const ALL: [Drop; 8] = [
        Drop::Truncated,
        Drop::Oversized,
        Drop::BadMagic,
        Drop::BadVersion,
        Drop::BadTag,
        Drop::Malformed,
        Drop::Replayed,
        Drop::Stale,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Drop::Truncated => "truncated",
            Drop::Oversized => "oversized",
            Drop::BadMagic => "bad_magic",
            Drop::BadVersion => "bad_version",
            Drop::BadTag => "bad_tag",
            Drop::Malformed => "malformed",
            Drop::Replayed => "replayed",
            Drop::Stale => "stale",
        }
    }
}

impl std::fmt::Display for Drop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn mac(key: &Secret) -> HmacSha256 {
    // HMAC takes a key of any length (longer ones are hashed), so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key.as_bytes()).expect("HMAC accepts any key length")
}

/// The longest prefix of `name` that fits the wire and ends on a char boundary.
fn wire_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_NODE_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The datagram for `message`, signed with `key`.
pub fn encode(message: &Message, key: &Secret) -> Vec<u8> {
    let name = wire_name(&message.node);
    let mut out = Vec::with_capacity(HEADER_BYTES + name.len() + COUNTERS_BYTES + TAG_BYTES);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(message.role.to_wire());
    let mut flags = 0;
    if message.healthy {
        flags |= FLAG_HEALTHY;
    }
    if message.preferred {
        flags |= FLAG_PREFERRED;
    }
    out.push(flags);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&message.incarnation.to_be_bytes());
    out.extend_from_slice(&message.sequence.to_be_bytes());
    let mut mac = mac(key);
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// The message in `datagram`, if it is a well-formed heartbeat signed with `key`.
pub fn decode(datagram: &[u8], key: &Secret) -> Result<Message, Drop> {
    if datagram.len() < MIN_BYTES {
        return Err(Drop::Truncated);
    }
    if datagram.len() > MAX_BYTES {
        return Err(Drop::Oversized);
    }
    // Magic and version are public constants: checking them first costs an attacker nothing and
    // tells an operator a version mismatch from a wrong key.
    if datagram[..4] != MAGIC {
        return Err(Drop::BadMagic);
    }
    if datagram[4] != VERSION {
        return Err(Drop::BadVersion);
    }
    let (signed, tag) = datagram.split_at(datagram.len() - TAG_BYTES);
    let mut mac = mac(key);
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| Drop::BadTag)?;

    // Authentic from here on; what follows only guards against a sender with a bug.
    let role = Role::from_wire(signed[5]).ok_or(Drop::Malformed)?;
    let flags = signed[6];
    if flags & !(FLAG_HEALTHY | FLAG_PREFERRED) != 0 {
        return Err(Drop::Malformed);
    }
    let name_len = usize::from(signed[7]);
    if name_len == 0 || HEADER_BYTES + name_len + COUNTERS_BYTES != signed.len() {
        return Err(Drop::Malformed);
    }
    let (name, counters) = signed[HEADER_BYTES..].split_at(name_len);
    let node = std::str::from_utf8(name)
        .map_err(|_| Drop::Malformed)?
        .to_string();
    let (incarnation, sequence) = counters.split_at(8);
    let u64_at = |bytes: &[u8]| {
        bytes
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| Drop::Malformed)
    };
    Ok(Message {
        node,
        incarnation: u64_at(incarnation)?,
        sequence: u64_at(sequence)?,
        role,
        preferred: flags & FLAG_PREFERRED != 0,
        healthy: flags & FLAG_HEALTHY != 0,
    })
}

/// The newest (incarnation, sequence) accepted from each node. Only authentic messages reach it,
/// so only holders of the key can add a node.
#[derive(Debug, Default)]
pub struct PeerTracker {
    newest: HashMap<String, (u64, u64)>,
}

impl PeerTracker {
    pub fn new() -> PeerTracker {
        PeerTracker::default()
    }

    /// Accepts `message` if it is newer than everything accepted from its node: a larger
    /// incarnation (the node restarted, its sequence starts over), or the same incarnation and
    /// a larger sequence.
    pub fn accept(&mut self, message: &Message) -> Result<(), Drop> {
        let received = (message.incarnation, message.sequence);
        match self.newest.get_mut(&message.node) {
            Some(newest) if received.0 < newest.0 => Err(Drop::Stale),
            Some(newest) if received <= *newest => Err(Drop::Replayed),
            Some(newest) => {
                *newest = received;
                Ok(())
            }
            None => {
                self.newest.insert(message.node.clone(), received);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Secret {
        Secret::from_bytes(b"the shared secret")
    }

    fn message() -> Message {
        Message {
            node: "lb-db-01".into(),
            incarnation: 1_700_000_000_123_456_789,
            sequence: 42,
            role: Role::Active,
            preferred: true,
            healthy: true,
        }
    }

    /// Re-signs a datagram after a test changed its fields, to reach the checks behind the tag.
    fn resign(mut datagram: Vec<u8>, key: &Secret) -> Vec<u8> {
        datagram.truncate(datagram.len() - TAG_BYTES);
        let mut mac = mac(key);
        mac.update(&datagram);
        datagram.extend_from_slice(&mac.finalize().into_bytes());
        datagram
    }

    /// xorshift64*: deterministic bytes for the property loops, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let key = key();
        for role in [Role::Starting, Role::Standby, Role::Active, Role::Leaving] {
            for (preferred, healthy) in [(false, false), (false, true), (true, false), (true, true)] {
                for node in ["a", "lb-db-01", "nœud-é", &"n".repeat(64)] {
                    let m = Message {
                        node: node.into(),
                        incarnation: u64::MAX,
                        sequence: 0,
                        role,
                        preferred,
                        healthy,
                    };
                    assert_eq!(decode(&encode(&m, &key), &key), Ok(m));
                }
            }
        }
    }

    #[test]
    fn layout_is_the_documented_one() {
        let bytes = encode(&message(), &key());
        assert_eq!(&bytes[..4], b"RLHA");
        assert_eq!(bytes[4], VERSION);
        assert_eq!(bytes[5], 2, "active");
        assert_eq!(bytes[6], FLAG_HEALTHY | FLAG_PREFERRED);
        assert_eq!(bytes[7], 8);
        assert_eq!(&bytes[8..16], b"lb-db-01");
        assert_eq!(bytes[16..24], 1_700_000_000_123_456_789u64.to_be_bytes());
        assert_eq!(bytes[24..32], 42u64.to_be_bytes());
        assert_eq!(bytes.len(), 32 + TAG_BYTES);
        assert_eq!(MIN_BYTES, 57);
        assert_eq!(MAX_BYTES, 120);
    }

    #[test]
    fn a_name_longer_than_the_wire_allows_is_cut_at_a_char_boundary() {
        let key = key();
        let mut m = message();
        m.node = format!("{}é", "n".repeat(63));
        let decoded = decode(&encode(&m, &key), &key).unwrap();
        assert_eq!(decoded.node, "n".repeat(63));
    }

    #[test]
    fn every_truncation_is_dropped() {
        let key = key();
        let bytes = encode(&message(), &key);
        for len in 0..bytes.len() {
            let e = decode(&bytes[..len], &key).unwrap_err();
            let expected = if len < MIN_BYTES {
                Drop::Truncated
            } else {
                Drop::BadTag
            };
            assert_eq!(e, expected, "length {len}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_dropped() {
        let key = key();
        let bytes = encode(&message(), &key);
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[i] ^= 1 << bit;
                let e = decode(&flipped, &key).unwrap_err();
                let expected = match i {
                    0..=3 => Drop::BadMagic,
                    4 => Drop::BadVersion,
                    _ => Drop::BadTag,
                };
                assert_eq!(e, expected, "byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn another_key_is_a_bad_tag() {
        let bytes = encode(&message(), &key());
        for other in [
            &b"the shared secreT"[..],
            b"",
            b"the shared secret\n",
            &[0u8; 200],
        ] {
            assert_eq!(decode(&bytes, &Secret::from_bytes(other)), Err(Drop::BadTag));
        }
    }

    #[test]
    fn oversized_datagrams_are_dropped_before_anything_is_read() {
        let key = key();
        let mut bytes = encode(&message(), &key);
        bytes.push(0);
        assert_eq!(
            decode(&bytes, &key),
            Err(Drop::BadTag),
            "one byte more still fits"
        );
        assert_eq!(decode(&[0; MAX_BYTES + 1], &key), Err(Drop::Oversized));
        assert_eq!(decode(&vec![0xff; 65536], &key), Err(Drop::Oversized));
    }

    #[test]
    fn signed_but_ill_formed_fields_are_malformed() {
        let key = key();
        let good = encode(&message(), &key);
        let with = |i: usize, byte: u8| {
            let mut bytes = good.clone();
            bytes[i] = byte;
            decode(&resign(bytes, &key), &key)
        };
        assert_eq!(with(5, 4), Err(Drop::Malformed), "unknown role");
        assert_eq!(with(6, 0b100), Err(Drop::Malformed), "unknown flag");
        assert_eq!(with(7, 0), Err(Drop::Malformed), "empty name");
        assert_eq!(with(7, 7), Err(Drop::Malformed), "length shorter than the name");
        assert_eq!(with(7, 9), Err(Drop::Malformed), "length longer than the name");
        assert_eq!(with(7, 255), Err(Drop::Malformed));
        assert_eq!(with(8, 0xff), Err(Drop::Malformed), "not UTF-8");
        // A foreign magic or version is refused before the tag, signed or not.
        assert_eq!(with(0, b'X'), Err(Drop::BadMagic));
        assert_eq!(with(4, 2), Err(Drop::BadVersion));
    }

    #[test]
    fn random_bytes_never_panic_and_never_decode() {
        let key = key();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = (rng.next() % (MAX_BYTES as u64 + 16)) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Half the time give it a real header, so the loop reaches the tag check.
            if rng.next().is_multiple_of(2) && len >= HEADER_BYTES {
                bytes[..4].copy_from_slice(&MAGIC);
                bytes[4] = VERSION;
            }
            assert!(decode(&bytes, &key).is_err());
        }
    }

    #[test]
    fn random_signed_bytes_never_panic() {
        // Behind a valid tag every field is attacker-free but may be anything a buggy sender
        // wrote: decoding must still only answer.
        let key = key();
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let len = MIN_BYTES + (rng.next() % (MAX_BYTES - MIN_BYTES + 1) as u64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            bytes[..4].copy_from_slice(&MAGIC);
            bytes[4] = VERSION;
            if rng.next().is_multiple_of(2) {
                bytes[7] = (len - HEADER_BYTES - COUNTERS_BYTES - TAG_BYTES) as u8;
            }
            let _ = decode(&resign(bytes, &key), &key);
        }
    }

    fn at(incarnation: u64, sequence: u64) -> Message {
        Message {
            incarnation,
            sequence,
            ..message()
        }
    }

    #[test]
    fn tracker_accepts_increasing_sequences_only() {
        let mut tracker = PeerTracker::new();
        assert_eq!(tracker.accept(&at(5, 1)), Ok(()));
        assert_eq!(
            tracker.accept(&at(5, 1)),
            Err(Drop::Replayed),
            "the same one again"
        );
        assert_eq!(tracker.accept(&at(5, 0)), Err(Drop::Replayed), "an older one");
        assert_eq!(tracker.accept(&at(5, 3)), Ok(()), "gaps are lost datagrams, fine");
        assert_eq!(
            tracker.accept(&at(5, 2)),
            Err(Drop::Replayed),
            "reordered behind a newer one"
        );
        assert_eq!(tracker.accept(&at(5, 4)), Ok(()));
    }

    #[test]
    fn tracker_restarts_sequences_on_a_new_incarnation_and_refuses_older_ones() {
        let mut tracker = PeerTracker::new();
        assert_eq!(tracker.accept(&at(5, 100)), Ok(()));
        assert_eq!(tracker.accept(&at(6, 0)), Ok(()), "restarted node");
        assert_eq!(
            tracker.accept(&at(5, 101)),
            Err(Drop::Stale),
            "the old boot, replayed"
        );
        assert_eq!(tracker.accept(&at(4, u64::MAX)), Err(Drop::Stale));
        assert_eq!(tracker.accept(&at(6, 0)), Err(Drop::Replayed));
        assert_eq!(tracker.accept(&at(6, 1)), Ok(()));
    }

    #[test]
    fn tracker_keeps_each_node_apart() {
        let mut tracker = PeerTracker::new();
        let other = |incarnation, sequence| Message {
            node: "lb-db-02".into(),
            ..at(incarnation, sequence)
        };
        assert_eq!(tracker.accept(&at(5, 10)), Ok(()));
        assert_eq!(tracker.accept(&other(1, 1)), Ok(()), "its own counters");
        assert_eq!(tracker.accept(&other(1, 1)), Err(Drop::Replayed));
        assert_eq!(tracker.accept(&at(5, 11)), Ok(()));
    }

    #[test]
    fn a_captured_stream_replayed_later_is_all_dropped() {
        let key = key();
        let mut tracker = PeerTracker::new();
        let captured: Vec<Vec<u8>> = (1..=20).map(|s| encode(&at(5, s), &key)).collect();
        for datagram in &captured {
            assert_eq!(tracker.accept(&decode(datagram, &key).unwrap()), Ok(()));
        }
        for datagram in &captured {
            assert_eq!(
                tracker.accept(&decode(datagram, &key).unwrap()),
                Err(Drop::Replayed)
            );
        }
    }

    #[test]
    fn drop_labels_are_distinct() {
        let labels: std::collections::HashSet<_> = Drop::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(labels.len(), Drop::ALL.len());
    }
}
