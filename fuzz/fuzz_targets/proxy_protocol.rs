//! PROXY protocol headers: any pair of socket addresses, either version, encodes to a header of
//! the documented size that `parse` reads back exactly (family unified, IPv4-mapped addresses
//! unmapped), whole or followed by the connection's data, and whose every proper prefix is
//! incomplete. Arbitrary bytes given to `parse` never panic, and a header read from them is
//! self-delimiting: the bytes it claims parse the same on their own.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringlb::proxy_protocol::{
    self, header, local_header, parse, ParseError, Parsed, ProxyVersion, V1_MAX_LEN, V2_FIXED_LEN,
};

/// A socket address as a listener may report one: IPv4, IPv6 (with flow info and scope id,
/// which the protocol does not carry) or IPv4 mapped into IPv6 (a dual-stack listener).
#[derive(Debug, Arbitrary)]
enum Address {
    V4([u8; 4], u16),
    V6([u8; 16], u16, u32, u32),
    Mapped([u8; 4], u16, u32, u32),
}

impl Address {
    fn socket_addr(&self) -> SocketAddr {
        match *self {
            Address::V4(ip, port) => SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            Address::V6(ip, port, flow, scope) => {
                SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope).into()
            }
            Address::Mapped(ip, port, flow, scope) => {
                SocketAddrV6::new(Ipv4Addr::from(ip).to_ipv6_mapped(), port, flow, scope).into()
            }
        }
    }
}

/// What a receiver must read back: mapped IPv4 as IPv4, then both sides in one family (IPv4
/// mapped into IPv6 when the other side is IPv6), and no flow info or scope id.
fn expected(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (s, d) = (source.ip().to_canonical(), destination.ip().to_canonical());
    let (s, d) = match (s, d) {
        (IpAddr::V4(_), IpAddr::V4(_)) => (s, d),
        _ => (IpAddr::V6(as_v6(s)), IpAddr::V6(as_v6(d))),
    };
    (
        SocketAddr::new(s, source.port()),
        SocketAddr::new(d, destination.port()),
    )
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

fn version(v2: bool) -> ProxyVersion {
    if v2 {
        ProxyVersion::V2
    } else {
        ProxyVersion::V1
    }
}

fn check_encoder(v2: bool, source: &Address, destination: &Address, data: &[u8]) {
    let version = version(v2);
    let (source, destination) = (source.socket_addr(), destination.socket_addr());
    let (want_source, want_destination) = expected(source, destination);
    let bytes = header(version, source, destination);
    let ipv4 = want_source.is_ipv4();

    match version {
        ProxyVersion::V1 => {
            // The spec's bounds: 56 bytes for TCP4, 104 for TCP6, 107 for any line.
            assert!(bytes.len() <= if ipv4 { 56 } else { 104 }, "{bytes:?}");
            assert!(bytes.len() <= V1_MAX_LEN);
            let line = std::str::from_utf8(&bytes).expect("a v1 line is ASCII");
            assert!(line.is_ascii(), "{line:?}");
            assert!(
                line.starts_with(if ipv4 { "PROXY TCP4 " } else { "PROXY TCP6 " }),
                "{line:?}"
            );
            assert_eq!(
                line.find("\r\n"),
                Some(line.len() - 2),
                "one CRLF, at the end: {line:?}"
            );
        }
        ProxyVersion::V2 => {
            // No TLVs: the address block is 12 or 36 bytes, far under MariaDB's 256-byte read.
            let block = if ipv4 { 12 } else { 36 };
            assert_eq!(bytes.len(), V2_FIXED_LEN + block, "{bytes:?}");
            assert_eq!(&bytes[..12], &proxy_protocol::V2_SIGNATURE);
            assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), block as u16);
        }
    }

    let want = Parsed {
        version,
        local: false,
        addresses: Some((want_source, want_destination)),
    };
    assert_eq!(parse(&bytes), Ok((want, bytes.len())), "{source} {destination}");
    let mut followed = bytes.clone();
    followed.extend_from_slice(data);
    assert_eq!(
        parse(&followed),
        Ok((want, bytes.len())),
        "{source} {destination} + data"
    );
    for n in 0..bytes.len() {
        assert_eq!(
            parse(&bytes[..n]),
            Err(ParseError::Incomplete),
            "{n} bytes of {bytes:?}"
        );
    }

    let local = local_header(version);
    let (parsed, len) = parse(&local).expect("a LOCAL header parses");
    assert_eq!(len, local.len());
    assert_eq!(parsed.addresses, None);
}

fn check_parser(bytes: &[u8]) {
    match parse(bytes) {
        Ok((parsed, len)) => {
            assert!(len <= bytes.len());
            match parsed.version {
                ProxyVersion::V1 => {
                    assert!(len <= V1_MAX_LEN);
                    assert!(!parsed.local);
                    assert_eq!(&bytes[len - 2..len], b"\r\n");
                }
                ProxyVersion::V2 => {
                    assert_eq!(
                        len,
                        V2_FIXED_LEN + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]))
                    )
                }
            }
            assert_eq!(parse(&bytes[..len]), Ok((parsed, len)), "self-delimiting");
            if let (Some((source, destination)), false) = (parsed.addresses, parsed.local) {
                // What was read, written again, reads back to the same addresses (unified).
                let again = header(parsed.version, source, destination);
                let (want_source, want_destination) = expected(source, destination);
                assert_eq!(
                    parse(&again).map(|(p, _)| p.addresses),
                    Ok(Some((want_source, want_destination)))
                );
            }
        }
        Err(error) => assert!(!error.to_string().contains(['\n', '\r']), "{error}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check_parser(data);
    let mut input = Unstructured::new(data);
    if let Ok((v2, source, destination)) = <(bool, Address, Address)>::arbitrary(&mut input) {
        check_encoder(v2, &source, &destination, input.take_rest());
    }
});
