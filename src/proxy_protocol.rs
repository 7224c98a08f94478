//! PROXY protocol headers (HAProxy's specification, version 1 text and version 2 binary) that
//! ringlb writes to a backend ahead of a client's bytes, so that the server sees the client's
//! address instead of the load balancer's (listener option `send_proxy`).
//!
//! Only the sending side lives here: [`header`] for a client connection (the PROXY command) and
//! [`local_header`] for ringlb's own connections, the health check (v2 LOCAL, v1 UNKNOWN: "use the
//! connection's real addresses"). [`parse`] reads either version back; ringlb itself never
//! receives the protocol, and the parser exists so that the encoder is tested against an
//! independent reading of the spec.
//!
//! What the encoder promises, and why (MariaDB 10.11 is the receiver this was checked against):
//!
//! - Both addresses are of one family. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
//!   dual-stack `[::]` listener sees for an IPv4 client) is first written as the IPv4 address it
//!   stands for; if the two are then of different families, the IPv4 one is mapped into IPv6 and
//!   the header is TCP6 / AF_INET6. MariaDB turns a mapped source back into IPv4, so the client
//!   shows as `a.b.c.d` either way; no information is lost, as it would be with UNKNOWN.
//! - A v2 header carries no TLVs: the address block is 12 (IPv4) or 36 (IPv6) bytes. MariaDB reads
//!   only the low byte of the v2 length field and at most 256 header bytes.
//! - A v2 header must reach the server in one piece: MariaDB reads the 16-byte fixed part and then
//!   the address block with one `read` each and does not retry a short read, so a header split
//!   across two segments fails ("Failed to parse proxy header") or desynchronises the stream. A
//!   writer sends the whole header in one `send` (at 28 or 52 bytes it fits any segment). A v1
//!   line is read byte by byte and may arrive in pieces.
//! - A v1 line is at most [`V1_MAX_LEN`] bytes, CRLF included.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Which version of the protocol a listener sends (`send_proxy = "v1"` or `"v2"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text line, `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary header: signature, version/command, family, length, addresses.
    V2,
}

impl ProxyVersion {
    /// The name in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }

    /// The version a configuration value names: `"v1"` or `"v2"`.
    pub fn from_name(name: &str) -> Option<ProxyVersion> {
        match name {
            "v1" => Some(ProxyVersion::V1),
            "v2" => Some(ProxyVersion::V2),
            _ => None,
        }
    }
}

impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The twelve bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v2 header before the address block: signature, version/command, family, length.
pub const V2_FIXED_LEN: usize = 16;
/// The longest v1 line the spec allows, CRLF included (`PROXY UNKNOWN` with two full IPv6
/// addresses); TCP6 lines reach 104, TCP4 lines 56.
pub const V1_MAX_LEN: usize = 107;

/// v2 version (high nibble 2) with the PROXY command: the addresses are the client's.
const V2_PROXY: u8 = 0x21;
/// v2 version with the LOCAL command: a connection of the proxy's own, real addresses stand.
const V2_LOCAL: u8 = 0x20;
/// v2 family and transport: AF_INET / AF_INET6 over STREAM; AF_UNSPEC.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;
const V2_UNSPEC: u8 = 0x00;
/// Address block lengths: two addresses and two ports.
const V2_TCP4_ADDRESSES: usize = 4 + 4 + 2 + 2;
const V2_TCP6_ADDRESSES: usize = 16 + 16 + 2 + 2;

/// The header announcing a client connection from `source` that was made to `destination` (the
/// address the client connected to: the listener's, as the client saw it).
pub fn header(version: ProxyVersion, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source_ip, destination_ip) = one_family(source.ip(), destination.ip());
    match version {
        ProxyVersion::V1 => {
            let family = if source_ip.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {source_ip} {destination_ip} {} {}\r\n",
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => {
            let mut out = Vec::with_capacity(V2_FIXED_LEN + V2_TCP6_ADDRESSES);
            out.extend_from_slice(&V2_SIGNATURE);
            out.push(V2_PROXY);
            match (source_ip, destination_ip) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.push(V2_TCP4);
                    out.extend_from_slice(&(V2_TCP4_ADDRESSES as u16).to_be_bytes());
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (s, d) => {
                    out.push(V2_TCP6);
                    out.extend_from_slice(&(V2_TCP6_ADDRESSES as u16).to_be_bytes());
                    out.extend_from_slice(&as_v6(s).octets());
                    out.extend_from_slice(&as_v6(d).octets());
                }
            }
            out.extend_from_slice(&source.port().to_be_bytes());
            out.extend_from_slice(&destination.port().to_be_bytes());
            out
        }
    }
}

/// The header for a connection of ringlb's own (the health check): v2 LOCAL with AF_UNSPEC and no
/// addresses, v1 `PROXY UNKNOWN`. The server keeps the connection's real addresses, so the check
/// user is matched against ringlb's host as without the protocol.
pub fn local_header(version: ProxyVersion) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyVersion::V2 => {
            let mut out = Vec::with_capacity(V2_FIXED_LEN);
            out.extend_from_slice(&V2_SIGNATURE);
            out.extend_from_slice(&[V2_LOCAL, V2_UNSPEC, 0, 0]);
            out
        }
    }
}

/// Both addresses in one family: mapped IPv4 unmapped, then IPv4 mapped into IPv6 if the other is
/// IPv6.
fn one_family(source: IpAddr, destination: IpAddr) -> (IpAddr, IpAddr) {
    match (source.to_canonical(), destination.to_canonical()) {
        (s @ IpAddr::V4(_), d @ IpAddr::V4(_)) => (s, d),
        (s, d) => (IpAddr::V6(as_v6(s)), IpAddr::V6(as_v6(d))),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A header read back by [`parse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    pub version: ProxyVersion,
    /// The v2 LOCAL command: the proxy's own connection.
    pub local: bool,
    /// The client's address and the address it connected to. `None` for LOCAL, v1 `UNKNOWN`, and
    /// v2 families this parser does not read (AF_UNSPEC, AF_UNIX, datagram): the connection's own
    /// addresses stand then.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why [`parse`] read no header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// What there is so far is the start of a header: read more and call again.
    #[error("incomplete PROXY header")]
    Incomplete,
    /// The bytes do not start with either version's signature.
    #[error("not a PROXY protocol header")]
    NotProxy,
    /// A signature followed by something the spec does not allow.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Reads one header at the start of `bytes`: the header and its length in bytes (what follows it
/// is the connection's own data).
pub fn parse(bytes: &[u8]) -> Result<(Parsed, usize), ParseError> {
    const V1_PREFIX: &[u8] = b"PROXY ";
    if starts_like(bytes, &V2_SIGNATURE) {
        parse_v2(bytes)
    } else if starts_like(bytes, V1_PREFIX) {
        parse_v1(bytes)
    } else {
        Err(ParseError::NotProxy)
    }
}

/// Whether `bytes` and `prefix` agree as far as both go (`bytes` may be the first part of one).
fn starts_like(bytes: &[u8], prefix: &[u8]) -> bool {
    let n = bytes.len().min(prefix.len());
    bytes[..n] == prefix[..n]
}

fn parse_v2(bytes: &[u8]) -> Result<(Parsed, usize), ParseError> {
    if bytes.len() < V2_FIXED_LEN {
        return Err(ParseError::Incomplete);
    }
    let version_command = bytes[12];
    let family = bytes[13];
    let length = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let total = V2_FIXED_LEN + length;
    if version_command >> 4 != 2 {
        return Err(ParseError::Malformed("version is not 2"));
    }
    let local = match version_command & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(ParseError::Malformed("command is neither LOCAL nor PROXY")),
    };
    if bytes.len() < total {
        return Err(ParseError::Incomplete);
    }
    let block = &bytes[V2_FIXED_LEN..total];
    let addresses = match family {
        // LOCAL: the receiver ignores whatever addresses come with it.
        _ if local => None,
        V2_TCP4 => {
            let block = block
                .get(..V2_TCP4_ADDRESSES)
                .ok_or(ParseError::Malformed("address block too short for AF_INET"))?;
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    block[at],
                    block[at + 1],
                    block[at + 2],
                    block[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some((SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10))))
        }
        V2_TCP6 => {
            let block = block
                .get(..V2_TCP6_ADDRESSES)
                .ok_or(ParseError::Malformed("address block too short for AF_INET6"))?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // AF_UNSPEC, AF_UNIX, datagrams: the spec lets the receiver use the real addresses.
        _ => None,
    };
    Ok((
        Parsed {
            version: ProxyVersion::V2,
            local,
            addresses,
        },
        total,
    ))
}

fn parse_v1(bytes: &[u8]) -> Result<(Parsed, usize), ParseError> {
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(end) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if bytes.len() >= V1_MAX_LEN {
            Err(ParseError::Malformed("no CRLF within 107 bytes"))
        } else {
            Err(ParseError::Incomplete)
        };
    };
    let line = std::str::from_utf8(&window[..end]).map_err(|_| ParseError::Malformed("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by the caller
    let family = fields.next().ok_or(ParseError::Malformed("no protocol field"))?;
    let unknown = Parsed {
        version: ProxyVersion::V1,
        local: false,
        addresses: None,
    };
    let parsed = match family {
        // The rest of an UNKNOWN line is to be ignored, whatever it holds.
        "UNKNOWN" => unknown,
        "TCP4" | "TCP6" => {
            let mut next = || fields.next().ok_or(ParseError::Malformed("missing field"));
            let (source_ip, destination_ip) = (next()?, next()?);
            let (source_port, destination_port) = (next()?, next()?);
            if fields.next().is_some() {
                return Err(ParseError::Malformed("more than six fields"));
            }
            let ip = |text: &str| -> Result<IpAddr, ParseError> {
                let parsed = if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                parsed.map_err(|_| ParseError::Malformed("address not of the announced family"))
            };
            Parsed {
                version: ProxyVersion::V1,
                local: false,
                addresses: Some((
                    SocketAddr::new(ip(source_ip)?, v1_port(source_port)?),
                    SocketAddr::new(ip(destination_ip)?, v1_port(destination_port)?),
                )),
            }
        }
        _ => return Err(ParseError::Malformed("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok((parsed, end + 2))
}

/// A v1 port: decimal digits only (no sign), no leading zero, at most 65535.
fn v1_port(text: &str) -> Result<u16, ParseError> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if digits_only && !leading_zero => Ok(port),
        _ => Err(ParseError::Malformed("port is not a number from 0 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_line_is_the_specs_format() {
        let h = header(ProxyVersion::V1, addr("10.1.2.3:5555"), addr("192.168.0.1:4040"));
        assert_eq!(h, b"PROXY TCP4 10.1.2.3 192.168.0.1 5555 4040\r\n");
    }

    #[test]
    fn v1_tcp6_line_uses_the_compressed_form() {
        let h = header(ProxyVersion::V1, addr("[2001:db8::7]:5555"), addr("[::1]:4040"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::1 5555 4040\r\n");
    }

    #[test]
    fn v2_tcp4_header_matches_the_spec_byte_for_byte() {
        let h = header(ProxyVersion::V2, addr("10.1.2.3:5555"), addr("192.168.0.1:4040"));
        let expected: [u8; 28] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 address bytes follow
            10, 1, 2, 3, // source
            192, 168, 0, 1, // destination
            0x15, 0xB3, // 5555
            0x0F, 0xC8, // 4040
        ];
        assert_eq!(h, expected);
    }

    #[test]
    fn v2_tcp6_header_matches_the_spec_byte_for_byte() {
        let h = header(ProxyVersion::V2, addr("[2001:db8::7]:5555"), addr("[::1]:3306"));
        let mut expected = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
            0x21, // version 2, PROXY
            0x21, // AF_INET6, STREAM
            0x00, 0x24, // 36 address bytes follow
        ];
        expected.extend_from_slice(&[0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x15, 0xB3, 0x0C, 0xEA]);
        assert_eq!(h, expected);
        assert_eq!(h.len(), 52);
    }

    #[test]
    fn local_headers_are_v2_local_unspec_and_v1_unknown() {
        assert_eq!(local_header(ProxyVersion::V1), b"PROXY UNKNOWN\r\n");
        assert_eq!(
            local_header(ProxyVersion::V2),
            [
                0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00,
                0x00
            ]
        );
    }

    #[test]
    fn mixed_families_map_the_ipv4_side_into_ipv6() {
        let (client, listener) = (addr("10.1.2.3:5555"), addr("[2001:db8::1]:4040"));
        assert_eq!(
            header(ProxyVersion::V1, client, listener),
            b"PROXY TCP6 ::ffff:10.1.2.3 2001:db8::1 5555 4040\r\n"
        );
        let v2 = header(ProxyVersion::V2, listener, client);
        assert_eq!(v2[13], V2_TCP6);
        assert_eq!(&v2[32..48], &Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets());
    }

    #[test]
    fn mapped_ipv4_on_both_sides_is_written_as_ipv4() {
        // A dual-stack [::] listener sees an IPv4 client as ::ffff:a.b.c.d.
        let (client, listener) = (addr("[::ffff:10.1.2.3]:5555"), addr("[::ffff:192.168.0.1]:4040"));
        assert_eq!(
            header(ProxyVersion::V1, client, listener),
            b"PROXY TCP4 10.1.2.3 192.168.0.1 5555 4040\r\n"
        );
        assert_eq!(header(ProxyVersion::V2, client, listener).len(), 28);
    }

    #[test]
    fn longest_v1_lines_stay_within_the_spec_bound() {
        let six = addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535");
        let tcp6 = header(ProxyVersion::V1, six, six);
        assert_eq!(tcp6.len(), 104);
        let four = addr("255.255.255.255:65535");
        assert_eq!(header(ProxyVersion::V1, four, four).len(), 56);
        assert!(tcp6.len() <= V1_MAX_LEN);
    }

    #[test]
    fn every_header_parses_back_to_its_addresses() {
        let pairs = [
            ("10.1.2.3:5555", "127.0.0.1:4040"),
            ("[2001:db8::7]:1", "[::1]:65535"),
            ("0.0.0.0:0", "255.255.255.255:65535"),
        ];
        for (source, destination) in pairs {
            let (source, destination) = (addr(source), addr(destination));
            for version in [ProxyVersion::V1, ProxyVersion::V2] {
                let mut bytes = header(version, source, destination);
                let len = bytes.len();
                bytes.extend_from_slice(b"\x4a\0\0\0\x0a5.5"); // the server's data that follows
                let parsed = parse(&bytes).unwrap();
                assert_eq!(
                    parsed,
                    (
                        Parsed {
                            version,
                            local: false,
                            addresses: Some((source, destination))
                        },
                        len
                    ),
                    "{version} {source} {destination}"
                );
            }
        }
    }

    #[test]
    fn local_headers_parse_back_without_addresses() {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let bytes = local_header(version);
            let (parsed, len) = parse(&bytes).unwrap();
            assert_eq!(len, bytes.len());
            assert_eq!(parsed.addresses, None);
            assert_eq!(parsed.local, version == ProxyVersion::V2);
        }
    }

    #[test]
    fn every_proper_prefix_is_incomplete() {
        let headers = [
            header(ProxyVersion::V1, addr("10.1.2.3:5555"), addr("127.0.0.1:4040")),
            header(ProxyVersion::V2, addr("[2001:db8::7]:5555"), addr("[::1]:4040")),
            local_header(ProxyVersion::V2),
        ];
        for h in headers {
            for n in 0..h.len() {
                assert_eq!(parse(&h[..n]), Err(ParseError::Incomplete), "{n} bytes of {h:?}");
            }
        }
    }

    #[test]
    fn non_proxy_bytes_and_bad_fields_are_refused() {
        // A MySQL greeting, an HTTP request.
        assert_eq!(parse(b"\x4a\0\0\0\x0a"), Err(ParseError::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ParseError::NotProxy));
        let malformed = [
            &b"PROXY TCP4 10.1.2.3 127.0.0.1 5555\r\n"[..],
            b"PROXY TCP4 10.1.2.3 127.0.0.1 5555 4040 9\r\n",
            b"PROXY TCP4 ::1 127.0.0.1 5555 4040\r\n",
            b"PROXY TCP6 10.1.2.3 ::1 5555 4040\r\n",
            b"PROXY TCP4 10.1.2.3 127.0.0.1 65536 4040\r\n",
            b"PROXY TCP4 10.1.2.3 127.0.0.1 +555 4040\r\n",
            b"PROXY TCP4 10.1.2.3 127.0.0.1 0555 4040\r\n",
            b"PROXY UDP4 10.1.2.3 127.0.0.1 5555 4040\r\n",
            b"PROXY  TCP4 10.1.2.3 127.0.0.1 5555 4040\r\n",
        ];
        for bytes in malformed {
            assert!(
                matches!(parse(bytes), Err(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(
            parse(&endless),
            Err(ParseError::Malformed("no CRLF within 107 bytes"))
        );

        let mut v2 = header(ProxyVersion::V2, addr("10.1.2.3:5555"), addr("127.0.0.1:4040"));
        v2[12] = 0x11;
        assert_eq!(parse(&v2), Err(ParseError::Malformed("version is not 2")));
        v2[12] = 0x22;
        assert!(matches!(parse(&v2), Err(ParseError::Malformed(_))));
        v2[12] = 0x21;
        v2[15] = 4; // AF_INET with a 4-byte block
        assert!(matches!(parse(&v2), Err(ParseError::Malformed(_))));
    }

    #[test]
    fn v2_tlvs_and_unsupported_families_are_skipped_whole() {
        let mut bytes = V2_SIGNATURE.to_vec();
        // PROXY over AF_UNIX: 216 address bytes the parser does not read, then the data.
        bytes.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        bytes.extend_from_slice(&[0u8; 216]);
        bytes.extend_from_slice(b"data");
        let (parsed, len) = parse(&bytes).unwrap();
        assert_eq!((parsed.addresses, len), (None, V2_FIXED_LEN + 216));

        // IPv4 addresses followed by a 3-byte NOOP TLV.
        let mut with_tlv = header(ProxyVersion::V2, addr("10.1.2.3:5555"), addr("127.0.0.1:4040"));
        with_tlv[15] += 6;
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        let (parsed, len) = parse(&with_tlv).unwrap();
        assert_eq!(len, with_tlv.len());
        assert_eq!(parsed.addresses.unwrap().0, addr("10.1.2.3:5555"));
    }

    #[test]
    fn version_names_are_the_configuration_values() {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            assert_eq!(ProxyVersion::from_name(version.name()), Some(version));
            assert_eq!(
                serde_json::to_string(&version).unwrap(),
                format!("\"{}\"", version.name())
            );
        }
        assert_eq!(ProxyVersion::from_name("V1"), None);
        assert_eq!(ProxyVersion::from_name("1"), None);
    }
}
