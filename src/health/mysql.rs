//! The pieces of the MySQL client/server protocol the health check speaks, as pure functions over
//! byte slices: no I/O here, so every branch is unit-tested with byte fixtures.
//!
//! The check needs only the connection phase: the server's initial packet (a protocol-10 greeting,
//! or an ERR packet when the server refuses the connection outright), a `HandshakeResponse41`
//! logging in as a user with an empty password, the server's reply (OK, ERR, or an auth switch)
//! and `COM_QUIT`. Logging in and quitting is what keeps a check out of the server's
//! `Aborted_connects` and its `max_connect_errors` host block.
//!
//! Invariant: no input makes these functions panic or read out of bounds; anything short or
//! unexpected is a [`ProtocolError`] naming the field that was being read. Text meant for people
//! (the server version, an ERR packet's SQL state and message) ends up in log lines, so it comes
//! out as one line: invalid UTF-8 replaced, control characters escaped (`\n`, `\u{1b}`).

use std::fmt;

/// Length of a packet header: 3-byte little-endian payload length, then the sequence id.
pub const HEADER_LEN: usize = 4;
/// Largest payload one packet can carry (longer ones are split; the check never needs them).
pub const MAX_PAYLOAD_LEN: usize = 0xFF_FFFF;

/// Capability flags (the subset the check reads or sends).
pub const CLIENT_LONG_PASSWORD: u32 = 0x0000_0001;
pub const CLIENT_PROTOCOL_41: u32 = 0x0000_0200;
pub const CLIENT_SSL: u32 = 0x0000_0800;
pub const CLIENT_SECURE_CONNECTION: u32 = 0x0000_8000;
pub const CLIENT_PLUGIN_AUTH: u32 = 0x0008_0000;

/// What the check offers; the response carries the intersection with the server's flags.
const CLIENT_CAPABILITIES: u32 =
    CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;

/// The payload of `COM_QUIT`.
pub const COM_QUIT: u8 = 0x01;
/// `COM_QUERY`: a statement in the text protocol.
pub const COM_QUERY: u8 = 0x03;

/// Plugin assumed when a server supports plugin auth but names none.
const DEFAULT_AUTH_PLUGIN: &str = "mysql_native_password";
/// Collation sent when an old greeting carries none: utf8_general_ci exists on every server.
const DEFAULT_CHARACTER_SET: u8 = 33;
/// `max_packet_size` announced in the handshake response; the check never receives large packets.
const CLIENT_MAX_PACKET_SIZE: u32 = 1 << 24;

/// Server error codes meaning "alive, but this user may not log in".
pub const ER_DBACCESS_DENIED_ERROR: u16 = 1044;
pub const ER_ACCESS_DENIED_ERROR: u16 = 1045;
pub const ER_ACCESS_DENIED_NO_PASSWORD_ERROR: u16 = 1698;
/// Codes a server may send instead of a greeting.
pub const ER_CON_COUNT_ERROR: u16 = 1040;
pub const ER_HOST_IS_BLOCKED: u16 = 1129;
/// Instead of a greeting: this host may not connect. After the greeting, in reply to a PROXY
/// protocol header (MariaDB): the header is not accepted from this address.
pub const ER_HOST_NOT_PRIVILEGED: u16 = 1130;

/// Why bytes from the server could not be understood. Small and `Copy`: it travels in the probe's
/// result once per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The input ended while `0` was being read.
    #[error("truncated packet: {0} missing")]
    Truncated(&'static str),
    /// The first byte of the initial packet is neither protocol version 10 nor ERR: an old server
    /// (protocol 9) or not MySQL at all.
    #[error("not a MySQL protocol 10 greeting (first byte 0x{0:02x})")]
    UnsupportedProtocol(u8),
    /// A reply to the login started with a byte that is none of OK, ERR, auth switch, more data.
    #[error("unexpected packet type 0x{0:02x}")]
    UnexpectedPacket(u8),
    /// The packet header announces more than the caller is willing to read.
    #[error("packet of {0} bytes is larger than expected")]
    PacketTooLarge(usize),
    /// The server is older than MySQL 4.1 and cannot take a `HandshakeResponse41`.
    #[error("server does not support the 4.1 protocol (CLIENT_PROTOCOL_41)")]
    NoProtocol41,
    /// The check user's name contains a NUL byte, which cannot be sent.
    #[error("user name contains a NUL byte")]
    NulInUser,
    /// A result set with more columns or rows than a status query returns.
    #[error("result set has too many {0}")]
    ResultTooLarge(&'static str),
}

/// A parsed packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    pub payload_len: usize,
    pub sequence: u8,
}

/// Parses the 4-byte header at the start of `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<PacketHeader, ProtocolError> {
    match bytes {
        [a, b, c, sequence, ..] => Ok(PacketHeader {
            payload_len: usize::from(*a) | usize::from(*b) << 8 | usize::from(*c) << 16,
            sequence: *sequence,
        }),
        _ => Err(ProtocolError::Truncated("packet header")),
    }
}

/// Frames `payload` as one packet with sequence id `sequence`.
pub fn packet(sequence: u8, payload: &[u8]) -> Result<Vec<u8>, ProtocolError> {
    let len = payload.len();
    if len > MAX_PAYLOAD_LEN {
        return Err(ProtocolError::PacketTooLarge(len));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&[len as u8, (len >> 8) as u8, (len >> 16) as u8, sequence]);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The whole `COM_QUIT` packet: a command always starts a new sequence at 0.
pub fn com_quit() -> [u8; 5] {
    [1, 0, 0, 0, COM_QUIT]
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    /// The 5-character SQLSTATE, present when the server sent the `#` marker.
    pub sql_state: Option<String>,
    pub message: String,
}

impl ErrPacket {
    /// The server is alive but refuses this user: a missing check user, not a dead backend.
    pub fn is_access_denied(&self) -> bool {
        matches!(
            self.code,
            ER_DBACCESS_DENIED_ERROR | ER_ACCESS_DENIED_ERROR | ER_ACCESS_DENIED_NO_PASSWORD_ERROR
        )
    }
}

impl fmt::Display for ErrPacket {
    /// As the `mysql` client prints it: `ERROR 1045 (28000): Access denied ...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sql_state {
            Some(state) => write!(f, "ERROR {} ({}): {}", self.code, state, self.message),
            None => write!(f, "ERROR {}: {}", self.code, self.message),
        }
    }
}

/// The protocol-10 greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub connection_id: u32,
    /// Lower and (when sent) upper 16 bits together.
    pub capabilities: u32,
    /// The server's default collation id; absent in a minimal pre-4.1 greeting.
    pub character_set: Option<u8>,
    /// The scramble (both parts, trailing NUL removed); the check ignores it because its password
    /// is empty.
    pub auth_plugin_data: Vec<u8>,
    /// Present when the server supports `CLIENT_PLUGIN_AUTH`.
    pub auth_plugin_name: Option<String>,
}

/// The first packet a server sends on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPacket {
    Greeting(Greeting),
    /// The server refuses before the handshake (1040 too many connections, 1129 host blocked, ...).
    Error(ErrPacket),
}

/// Parses the payload of the server's first packet.
pub fn parse_initial(payload: &[u8]) -> Result<InitialPacket, ProtocolError> {
    let mut r = Reader::new(payload);
    match r.u8("protocol version")? {
        0xFF => parse_err_body(&mut r).map(InitialPacket::Error),
        10 => parse_greeting_body(&mut r).map(InitialPacket::Greeting),
        other => Err(ProtocolError::UnsupportedProtocol(other)),
    }
}

fn parse_greeting_body(r: &mut Reader<'_>) -> Result<Greeting, ProtocolError> {
    let server_version = r.nul_terminated("server version")?;
    let connection_id = r.u32_le("connection id")?;
    let mut auth_plugin_data = r.take(8, "auth plugin data")?.to_vec();
    r.take(1, "filler")?;
    let mut capabilities = u32::from(r.u16_le("capability flags")?);
    let mut greeting = Greeting {
        server_version: printable(server_version),
        connection_id,
        capabilities,
        character_set: None,
        auth_plugin_data: Vec::new(),
        auth_plugin_name: None,
    };
    // A pre-4.1 greeting may end here.
    if r.is_empty() {
        greeting.auth_plugin_data = auth_plugin_data;
        return Ok(greeting);
    }
    greeting.character_set = Some(r.u8("character set")?);
    r.u16_le("status flags")?;
    capabilities |= u32::from(r.u16_le("upper capability flags")?) << 16;
    let auth_data_len = r.u8("auth plugin data length")?;
    r.take(10, "reserved bytes")?;
    if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        // The second part is max(13, total - 8) bytes, its last one a NUL.
        let part2_len = usize::from(auth_data_len).saturating_sub(8).max(13);
        let part2 = r.take(part2_len, "auth plugin data part 2")?;
        auth_plugin_data.extend_from_slice(part2);
        if auth_plugin_data.last() == Some(&0) {
            auth_plugin_data.pop();
        }
    }
    if capabilities & CLIENT_PLUGIN_AUTH != 0 {
        // Servers before 5.5.10 omit the terminating NUL: take the rest in that case.
        let name = r.nul_terminated_or_rest();
        greeting.auth_plugin_name = Some(String::from_utf8_lossy(name).into_owned());
    }
    greeting.capabilities = capabilities;
    greeting.auth_plugin_data = auth_plugin_data;
    Ok(greeting)
}

/// Parses what follows the 0xFF of an ERR packet.
pub(super) fn parse_err_body(r: &mut Reader<'_>) -> Result<ErrPacket, ProtocolError> {
    let code = r.u16_le("error code")?;
    let sql_state = if r.peek() == Some(b'#') {
        r.take(1, "SQL state marker")?;
        let state = r.take(5, "SQL state")?;
        Some(printable(state))
    } else {
        None
    };
    let message = printable(r.rest());
    Ok(ErrPacket {
        code,
        sql_state,
        message,
    })
}

/// Text from the server for a log line: invalid UTF-8 kept lossily, control characters (a
/// newline, an escape sequence) written as Rust escapes so that they cannot break the line.
pub(super) fn printable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if !text.chars().any(char::is_control) {
        return text.into_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Auth plugins the check answers with a password: the scramble is all that crosses the wire.
const NATIVE_PASSWORD: &str = "mysql_native_password";
const CACHING_SHA2_PASSWORD: &str = "caching_sha2_password";

/// Why the check cannot answer the server's authentication.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "the check user authenticates with {0:?}, which the check does not speak: give it \
         mysql_native_password or caching_sha2_password"
    )]
    UnsupportedPlugin(String),
    #[error(
        "{0} needs the password in clear text, which the check sends only over TLS verified with \
         [health] tls_ca_file"
    )]
    NeedsTls(&'static str),
}

/// The auth response of `plugin` for `password` and the server's `nonce`; empty for an empty
/// password, whatever the plugin.
pub fn auth_response(plugin: &str, nonce: &[u8], password: &[u8]) -> Result<Vec<u8>, AuthError> {
    use sha1::Sha1;
    use sha2::{Digest, Sha256};
    if password.is_empty() {
        return Ok(Vec::new());
    }
    // The scramble covers the first 20 bytes of the nonce; servers send exactly 20.
    let nonce = &nonce[..nonce.len().min(20)];
    match plugin {
        // SHA1(password) XOR SHA1(nonce, SHA1(SHA1(password))).
        NATIVE_PASSWORD => {
            let stage1 = Sha1::digest(password);
            let stage2 = Sha1::digest(stage1);
            let mixed = Sha1::new().chain_update(nonce).chain_update(stage2).finalize();
            Ok(stage1.iter().zip(mixed.iter()).map(|(a, b)| a ^ b).collect())
        }
        // SHA256(password) XOR SHA256(SHA256(SHA256(password)), nonce).
        CACHING_SHA2_PASSWORD => {
            let stage1 = Sha256::digest(password);
            let stage2 = Sha256::digest(stage1);
            let mixed = Sha256::new().chain_update(stage2).chain_update(nonce).finalize();
            Ok(stage1.iter().zip(mixed.iter()).map(|(a, b)| a ^ b).collect())
        }
        "mysql_clear_password" => Err(AuthError::NeedsTls("mysql_clear_password")),
        other => Err(AuthError::UnsupportedPlugin(other.to_string())),
    }
}

/// Builds the payload of a `HandshakeResponse41` logging in as `user` with `password` (empty:
/// none). It answers with the server's default plugin when the check speaks it, else with
/// mysql_native_password; a user of another plugin gets an auth switch, answered then.
/// With `tls`, the response follows an [`ssl_request`] and the TLS handshake, and says so.
pub fn handshake_response(
    greeting: &Greeting,
    user: &str,
    password: &[u8],
    tls: bool,
) -> Result<Vec<u8>, ProtocolError> {
    if user.as_bytes().contains(&0) {
        return Err(ProtocolError::NulInUser);
    }
    let mut out = response_head(greeting, tls)?;
    let capabilities = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
    out.extend_from_slice(user.as_bytes());
    out.push(0);
    let plugin = greeting
        .auth_plugin_name
        .as_deref()
        .unwrap_or(DEFAULT_AUTH_PLUGIN);
    // A name parsed from the greeting cannot hold a NUL; one from elsewhere is cut at it.
    let plugin = plugin.split('\0').next().unwrap_or_default();
    let (plugin, response) = match auth_response(plugin, &greeting.auth_plugin_data, password) {
        Ok(response) => (plugin, response),
        Err(_) => (
            NATIVE_PASSWORD,
            auth_response(NATIVE_PASSWORD, &greeting.auth_plugin_data, password)
                .expect("the check speaks mysql_native_password"),
        ),
    };
    // With CLIENT_SECURE_CONNECTION a length byte, then the scramble (20 or 32 bytes); an empty
    // response is the single zero byte either way.
    if capabilities & CLIENT_SECURE_CONNECTION != 0 {
        out.push(response.len() as u8);
        out.extend_from_slice(&response);
    } else {
        out.extend_from_slice(&response);
        out.push(0);
    }
    if capabilities & CLIENT_PLUGIN_AUTH != 0 {
        out.extend_from_slice(plugin.as_bytes());
        out.push(0);
    }
    Ok(out)
}

/// The `SSLRequest` packet's payload: the head of a handshake response, with `CLIENT_SSL`; the
/// TLS handshake follows it, then the whole response.
pub fn ssl_request(greeting: &Greeting) -> Result<Vec<u8>, ProtocolError> {
    response_head(greeting, true)
}

/// The 32 bytes a handshake response and an `SSLRequest` begin with: capabilities, packet
/// size, collation, filler.
fn response_head(greeting: &Greeting, tls: bool) -> Result<Vec<u8>, ProtocolError> {
    if greeting.capabilities & CLIENT_PROTOCOL_41 == 0 {
        return Err(ProtocolError::NoProtocol41);
    }
    let mut capabilities = CLIENT_CAPABILITIES & greeting.capabilities;
    if tls {
        capabilities |= CLIENT_SSL;
    }
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(&capabilities.to_le_bytes());
    out.extend_from_slice(&CLIENT_MAX_PACKET_SIZE.to_le_bytes());
    out.push(greeting.character_set.unwrap_or(DEFAULT_CHARACTER_SET));
    out.extend_from_slice(&[0; 23]);
    Ok(out)
}

/// The server's reply to a handshake response or to an auth-switch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthReply {
    /// Logged in.
    Ok,
    Err(ErrPacket),
    /// The server wants another plugin: answer with an empty auth packet (empty password).
    AuthSwitch {
        plugin: String,
        data: Vec<u8>,
    },
    /// Plugin-specific data (caching_sha2_password sends `[3]` for "fast auth succeeded", then OK).
    MoreData(Vec<u8>),
}

/// `AuthMoreData` payload of caching_sha2_password meaning "fast auth succeeded, OK follows".
pub const FAST_AUTH_SUCCESS: &[u8] = &[3];

/// Parses the payload of the server's reply during authentication.
pub fn parse_auth_reply(payload: &[u8]) -> Result<AuthReply, ProtocolError> {
    let mut r = Reader::new(payload);
    match r.u8("reply type")? {
        0x00 => Ok(AuthReply::Ok),
        0xFF => parse_err_body(&mut r).map(AuthReply::Err),
        // A lone 0xFE is the pre-4.1 request to switch to the old password hash.
        0xFE if r.is_empty() => Ok(AuthReply::AuthSwitch {
            plugin: "mysql_old_password".into(),
            data: Vec::new(),
        }),
        0xFE => {
            let plugin = String::from_utf8_lossy(r.nul_terminated_or_rest()).into_owned();
            let mut data = r.rest().to_vec();
            if data.last() == Some(&0) {
                data.pop();
            }
            Ok(AuthReply::AuthSwitch { plugin, data })
        }
        0x01 => Ok(AuthReply::MoreData(r.rest().to_vec())),
        other => Err(ProtocolError::UnexpectedPacket(other)),
    }
}

/// `AuthMoreData` payload of caching_sha2_password meaning "the scramble is not cached: send
/// the password in full", which needs TLS.
pub const FULL_AUTH_NEEDED: &[u8] = &[4];

/// A cursor over a payload whose reads fail with the name of the missing field.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.first().copied()
    }

    pub(super) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.bytes.len() < n {
            return Err(ProtocolError::Truncated(what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }

    pub(super) fn u16_le(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_le(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated string (the NUL is consumed, not returned).
    fn nul_terminated(&mut self, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::Truncated(what))?;
        let s = &self.bytes[..end];
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }

    /// Up to the next NUL (consumed) or to the end when there is none.
    fn nul_terminated_or_rest(&mut self) -> &'a [u8] {
        match self.bytes.iter().position(|&b| b == 0) {
            Some(end) => {
                let s = &self.bytes[..end];
                self.bytes = &self.bytes[end + 1..];
                s
            }
            None => self.rest(),
        }
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// A length-encoded integer; `None` for 0xFB, which a text-protocol row uses for NULL.
    pub(super) fn lenenc_int(&mut self, what: &'static str) -> Result<Option<u64>, ProtocolError> {
        let width = match self.u8(what)? {
            0xFB => return Ok(None),
            0xFC => 2,
            0xFD => 3,
            0xFE => 8,
            small => return Ok(Some(u64::from(small))),
        };
        let bytes = self.take(width, what)?;
        let mut value = [0u8; 8];
        value[..width].copy_from_slice(bytes);
        Ok(Some(u64::from_le_bytes(value)))
    }

    /// A length-encoded string; `None` for NULL (0xFB).
    pub(super) fn lenenc_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, ProtocolError> {
        match self.lenenc_int(what)? {
            None => Ok(None),
            Some(len) => {
                let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated(what))?;
                self.take(len, what).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A MariaDB 10.11 greeting as captured on the wire (payload only).
    fn mariadb_greeting() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        p.extend_from_slice(&42u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&0xF7FEu16.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&0x0002u16.to_le_bytes());
        p.extend_from_slice(&0x81FFu16.to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 6]);
        p.extend_from_slice(&[0x1D, 0, 0, 0]); // MariaDB extended capabilities
        p.extend_from_slice(b"ijklmnopqrst\0");
        p.extend_from_slice(b"mysql_native_password\0");
        p
    }

    fn greeting(payload: &[u8]) -> Greeting {
        match parse_initial(payload) {
            Ok(InitialPacket::Greeting(g)) => g,
            other => panic!("expected a greeting, got {other:?}"),
        }
    }

    #[test]
    fn header_is_little_endian_length_then_sequence() {
        assert_eq!(
            parse_header(&[0x4A, 0x01, 0x02, 7]),
            Ok(PacketHeader {
                payload_len: 0x02014A,
                sequence: 7
            })
        );
        assert_eq!(
            parse_header(&[0xFF, 0xFF, 0xFF, 0, 99]),
            Ok(PacketHeader {
                payload_len: MAX_PAYLOAD_LEN,
                sequence: 0
            })
        );
    }

    #[test]
    fn short_header_is_truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                parse_header(&[1; 3][..len.min(3)]),
                Err(ProtocolError::Truncated("packet header"))
            );
        }
    }

    #[test]
    fn packet_frames_payload_and_round_trips_through_header() {
        let p = packet(3, b"hello").unwrap();
        assert_eq!(p, b"\x05\x00\x00\x03hello");
        let h = parse_header(&p).unwrap();
        assert_eq!((h.payload_len, h.sequence), (5, 3));
        assert_eq!(packet(0, &[]).unwrap(), [0, 0, 0, 0]);
    }

    #[test]
    fn oversized_payload_is_refused_not_truncated() {
        let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
        assert_eq!(
            packet(0, &big),
            Err(ProtocolError::PacketTooLarge(MAX_PAYLOAD_LEN + 1))
        );
    }

    #[test]
    fn com_quit_is_one_byte_command_at_sequence_zero() {
        assert_eq!(com_quit(), [1, 0, 0, 0, 0x01]);
    }

    #[test]
    fn mariadb_greeting_parses_every_field() {
        let g = greeting(&mariadb_greeting());
        assert_eq!(g.server_version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
        assert_eq!(g.connection_id, 42);
        assert_eq!(g.capabilities, 0x81FF_F7FE);
        assert_ne!(g.capabilities & CLIENT_PROTOCOL_41, 0);
        assert_ne!(g.capabilities & CLIENT_PLUGIN_AUTH, 0);
        assert_eq!(g.character_set, Some(45));
        assert_eq!(g.auth_plugin_data, b"abcdefghijklmnopqrst");
        assert_eq!(g.auth_plugin_name.as_deref(), Some("mysql_native_password"));
    }

    #[test]
    fn greeting_without_nul_after_plugin_name_takes_the_rest() {
        let mut p = mariadb_greeting();
        p.pop();
        assert_eq!(
            greeting(&p).auth_plugin_name.as_deref(),
            Some("mysql_native_password")
        );
    }

    #[test]
    fn greeting_without_plugin_auth_has_no_plugin_name() {
        let mut p = mariadb_greeting();
        // Clear CLIENT_PLUGIN_AUTH (bit 19 = bit 3 of the upper half) and drop the name.
        // protocol, version, connection id, scramble, filler, lower flags, charset, status.
        let upper = 1 + 32 + 4 + 8 + 1 + 2 + 1 + 2;
        p[upper] &= !0x08;
        p.truncate(p.len() - b"mysql_native_password\0".len());
        let g = greeting(&p);
        assert_eq!(g.capabilities & CLIENT_PLUGIN_AUTH, 0);
        assert_eq!(g.auth_plugin_name, None);
    }

    #[test]
    fn minimal_pre_41_greeting_parses_with_lower_flags_only() {
        let mut p = vec![10];
        p.extend_from_slice(b"4.0.30\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"12345678\0");
        p.extend_from_slice(&0x002Cu16.to_le_bytes());
        let g = greeting(&p);
        assert_eq!(g.server_version, "4.0.30");
        assert_eq!(g.capabilities, 0x2C);
        assert_eq!(g.character_set, None);
        assert_eq!(g.auth_plugin_data, b"12345678");
    }

    #[test]
    fn every_truncation_of_a_greeting_is_an_error_or_a_shorter_valid_greeting() {
        let full = mariadb_greeting();
        for len in 0..full.len() {
            match parse_initial(&full[..len]) {
                Err(ProtocolError::Truncated(_)) => {}
                // Cut right after the lower flags: a valid minimal greeting. Cut inside the
                // plugin name: the name is taken to the end (pre-5.5.10 servers send no NUL).
                Ok(InitialPacket::Greeting(_)) => {}
                other => panic!("prefix of {len} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_greeting_names_the_missing_field() {
        assert_eq!(
            parse_initial(&[]),
            Err(ProtocolError::Truncated("protocol version"))
        );
        assert_eq!(
            parse_initial(b"\x0a5.5"),
            Err(ProtocolError::Truncated("server version"))
        );
        assert_eq!(
            parse_initial(b"\x0a5.5\0\x01\x02"),
            Err(ProtocolError::Truncated("connection id"))
        );
        let full = mariadb_greeting();
        assert_eq!(
            parse_initial(&full[..40]),
            Err(ProtocolError::Truncated("auth plugin data"))
        );
    }

    #[test]
    fn protocol_9_and_garbage_are_unsupported() {
        assert_eq!(
            parse_initial(b"\x093.22\0"),
            Err(ProtocolError::UnsupportedProtocol(9))
        );
        assert_eq!(
            parse_initial(b"HTTP/1.1 400 Bad Request\r\n"),
            Err(ProtocolError::UnsupportedProtocol(b'H'))
        );
    }

    #[test]
    fn too_many_connections_err_with_sql_state() {
        let mut p = vec![0xFF];
        p.extend_from_slice(&ER_CON_COUNT_ERROR.to_le_bytes());
        p.extend_from_slice(b"#08004Too many connections");
        let Ok(InitialPacket::Error(e)) = parse_initial(&p) else {
            panic!("expected ERR");
        };
        assert_eq!(e.code, 1040);
        assert_eq!(e.sql_state.as_deref(), Some("08004"));
        assert_eq!(e.message, "Too many connections");
        assert!(!e.is_access_denied());
        assert_eq!(e.to_string(), "ERROR 1040 (08004): Too many connections");
    }

    #[test]
    fn host_blocked_err_without_sql_state() {
        // What mysqld sends before the handshake: no `#` marker, since no client flags are known.
        let mut p = vec![0xFF];
        p.extend_from_slice(&ER_HOST_IS_BLOCKED.to_le_bytes());
        p.extend_from_slice(
            b"Host '10.0.0.5' is blocked because of many connection errors; unblock with 'mariadb-admin flush-hosts'",
        );
        let Ok(InitialPacket::Error(e)) = parse_initial(&p) else {
            panic!("expected ERR");
        };
        assert_eq!(e.code, 1129);
        assert_eq!(e.sql_state, None);
        assert!(e.message.starts_with("Host '10.0.0.5' is blocked"));
        assert!(e.to_string().starts_with("ERROR 1129: Host"));
    }

    #[test]
    fn err_packets_truncated_or_with_odd_bytes_never_panic() {
        assert_eq!(
            parse_initial(&[0xFF]),
            Err(ProtocolError::Truncated("error code"))
        );
        assert_eq!(
            parse_initial(&[0xFF, 0x10]),
            Err(ProtocolError::Truncated("error code"))
        );
        assert_eq!(
            parse_initial(&[0xFF, 0x10, 0x04, b'#', b'0']),
            Err(ProtocolError::Truncated("SQL state"))
        );
        // Code only, empty message.
        let Ok(InitialPacket::Error(e)) = parse_initial(&[0xFF, 0x10, 0x04]) else {
            panic!("expected ERR");
        };
        assert_eq!((e.code, e.message.as_str()), (1040, ""));
        // Invalid UTF-8 in the message is kept lossily.
        let Ok(InitialPacket::Error(e)) = parse_initial(&[0xFF, 0x10, 0x04, 0xC3, 0x28]) else {
            panic!("expected ERR");
        };
        assert_eq!(e.message, "\u{FFFD}(");
    }

    #[test]
    fn control_characters_from_the_server_are_escaped_onto_one_line() {
        // Found by the mysql fuzz target: an ERR packet's message and SQL state, and the server
        // version, went into log lines as sent, newlines and escape sequences included.
        let mut p = vec![0xFF];
        p.extend_from_slice(&ER_CON_COUNT_ERROR.to_le_bytes());
        p.extend_from_slice(b"#\x05oo m\nToo many\r\nconnections \x1b[31m\xc3(");
        let Ok(InitialPacket::Error(e)) = parse_initial(&p) else {
            panic!("expected ERR");
        };
        assert_eq!(e.sql_state.as_deref(), Some("\\u{5}oo m"));
        assert_eq!(e.message, "\\nToo many\\r\\nconnections \\u{1b}[31m\u{FFFD}(");
        assert_eq!(
            e.to_string(),
            "ERROR 1040 (\\u{5}oo m): \\nToo many\\r\\nconnections \\u{1b}[31m\u{FFFD}("
        );
        let Ok(AuthReply::Err(e)) = parse_auth_reply(&p) else {
            panic!("expected ERR");
        };
        assert!(!e.to_string().contains(['\n', '\r', '\x1b']), "{e}");

        let mut bytes = mariadb_greeting();
        bytes[1..4].copy_from_slice(b"\n5\t");
        let g = greeting(&bytes);
        assert_eq!(g.server_version, "\\n5\\t.5-10.11.6-MariaDB-0+deb12u1");
        // Ordinary text, non-ASCII included, is kept as sent.
        assert_eq!(printable("Accès refusé".as_bytes()), "Accès refusé");
    }

    #[test]
    fn handshake_response_logs_in_with_empty_password_and_echoes_plugin() {
        let g = greeting(&mariadb_greeting());
        let p = handshake_response(&g, "ringlb_check", b"", false).unwrap();
        let caps = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        // MariaDB clears bit 0 (CLIENT_MYSQL / CLIENT_LONG_PASSWORD), so it is not echoed.
        assert_eq!(
            caps,
            CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
        );
        assert_eq!(u32::from_le_bytes([p[4], p[5], p[6], p[7]]), 1 << 24);
        assert_eq!(p[8], 45, "the server's own collation");
        assert_eq!(&p[9..32], &[0; 23]);
        let mut expected_tail = b"ringlb_check\0".to_vec();
        expected_tail.push(0); // empty auth response
        expected_tail.extend_from_slice(b"mysql_native_password\0");
        assert_eq!(&p[32..], &expected_tail[..]);
    }

    #[test]
    fn handshake_response_offers_only_what_the_server_allows() {
        let mut g = greeting(&mariadb_greeting());
        g.capabilities = CLIENT_PROTOCOL_41;
        g.character_set = None;
        let p = handshake_response(&g, "u", b"", false).unwrap();
        assert_eq!(u32::from_le_bytes([p[0], p[1], p[2], p[3]]), CLIENT_PROTOCOL_41);
        assert_eq!(p[8], DEFAULT_CHARACTER_SET);
        // No plugin name without CLIENT_PLUGIN_AUTH: user, NUL, empty auth response.
        assert_eq!(&p[32..], b"u\0\0");
    }

    #[test]
    fn handshake_response_names_default_plugin_when_greeting_has_none() {
        let mut g = greeting(&mariadb_greeting());
        g.auth_plugin_name = None;
        let p = handshake_response(&g, "u", b"", false).unwrap();
        assert!(p.ends_with(b"u\0\0mysql_native_password\0"));
    }

    #[test]
    fn handshake_response_refuses_pre_41_server_and_nul_in_user() {
        let mut g = greeting(&mariadb_greeting());
        assert_eq!(
            handshake_response(&g, "a\0b", b"", false),
            Err(ProtocolError::NulInUser)
        );
        g.capabilities &= !CLIENT_PROTOCOL_41;
        assert_eq!(
            handshake_response(&g, "u", b"", false),
            Err(ProtocolError::NoProtocol41)
        );
    }

    #[test]
    fn ok_reply_is_ok() {
        assert_eq!(parse_auth_reply(&[0, 0, 0, 2, 0, 0, 0]), Ok(AuthReply::Ok));
        assert_eq!(parse_auth_reply(&[0]), Ok(AuthReply::Ok));
    }

    #[test]
    fn access_denied_reply_is_recognised() {
        for code in [1044u16, 1045, 1698] {
            let mut p = vec![0xFF];
            p.extend_from_slice(&code.to_le_bytes());
            p.extend_from_slice(b"#28000Access denied for user 'ringlb_check'@'localhost'");
            let Ok(AuthReply::Err(e)) = parse_auth_reply(&p) else {
                panic!("expected ERR");
            };
            assert_eq!(e.code, code);
            assert!(e.is_access_denied());
        }
    }

    #[test]
    fn auth_switch_reply_carries_plugin_and_data() {
        let mut p = vec![0xFE];
        p.extend_from_slice(b"mysql_native_password\0");
        p.extend_from_slice(b"01234567890123456789\0");
        assert_eq!(
            parse_auth_reply(&p),
            Ok(AuthReply::AuthSwitch {
                plugin: "mysql_native_password".into(),
                data: b"01234567890123456789".to_vec(),
            })
        );
        // Name without NUL and no data.
        assert_eq!(
            parse_auth_reply(b"\xfeclient_ed25519"),
            Ok(AuthReply::AuthSwitch {
                plugin: "client_ed25519".into(),
                data: Vec::new(),
            })
        );
    }

    #[test]
    fn lone_fe_is_old_password_switch() {
        assert_eq!(
            parse_auth_reply(&[0xFE]),
            Ok(AuthReply::AuthSwitch {
                plugin: "mysql_old_password".into(),
                data: Vec::new(),
            })
        );
    }

    #[test]
    fn more_data_reply_carries_its_bytes() {
        assert_eq!(
            parse_auth_reply(&[0x01, 0x03]),
            Ok(AuthReply::MoreData(FAST_AUTH_SUCCESS.to_vec()))
        );
        assert_eq!(parse_auth_reply(&[0x01]), Ok(AuthReply::MoreData(Vec::new())));
    }

    #[test]
    fn empty_or_unknown_reply_is_an_error() {
        assert_eq!(parse_auth_reply(&[]), Err(ProtocolError::Truncated("reply type")));
        assert_eq!(
            parse_auth_reply(&[0x0A, 1, 2]),
            Err(ProtocolError::UnexpectedPacket(0x0A))
        );
        assert_eq!(
            parse_auth_reply(&[0xFF, 0x15]),
            Err(ProtocolError::Truncated("error code"))
        );
    }

    #[test]
    fn password_scrambles_match_the_servers_formulas() {
        // Computed independently: SHA1(pw) ^ SHA1(nonce + SHA1(SHA1(pw))), and
        // SHA256(pw) ^ SHA256(SHA256(SHA256(pw)) + nonce), for nonce 1..=20 and "secret".
        let nonce: Vec<u8> = (1..=20).collect();
        let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let native = auth_response("mysql_native_password", &nonce, b"secret").unwrap();
        assert_eq!(hex(native), "b32bb3a583e1340c0a1108d58b1be49781ad8c2f");
        let sha2 = auth_response("caching_sha2_password", &nonce, b"secret").unwrap();
        assert_eq!(
            hex(sha2),
            "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9"
        );
        // No password: an empty response whatever the plugin; the clear and unknown ones refused.
        assert_eq!(auth_response("client_ed25519", &nonce, b""), Ok(Vec::new()));
        assert_eq!(
            auth_response("mysql_clear_password", &nonce, b"x"),
            Err(AuthError::NeedsTls("mysql_clear_password"))
        );
        assert!(matches!(
            auth_response("client_ed25519", &nonce, b"x"),
            Err(AuthError::UnsupportedPlugin(p)) if p == "client_ed25519"
        ));
        // A handshake for a plugin the check does not speak answers with mysql_native_password.
        let mut g = greeting(&mariadb_greeting());
        g.auth_plugin_name = Some("client_ed25519".into());
        g.auth_plugin_data = nonce.clone();
        let p = handshake_response(&g, "u", b"secret", false).unwrap();
        let tail = b"mysql_native_password\0";
        assert!(p.ends_with(tail), "{p:?}");
        assert_eq!(p[p.len() - tail.len() - 21], 20, "a 20-byte scramble");
    }

    /// A tiny deterministic generator, so the garbage test needs no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_garbage_and_mutated_greetings_never_panic() {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        let base = mariadb_greeting();
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = (xorshift(&mut seed) % 96) as usize;
                (0..len).map(|_| xorshift(&mut seed) as u8).collect()
            } else {
                let mut m = base.clone();
                for _ in 0..1 + xorshift(&mut seed) % 4 {
                    let at = (xorshift(&mut seed) as usize) % m.len();
                    m[at] = xorshift(&mut seed) as u8;
                }
                m.truncate(1 + (xorshift(&mut seed) as usize) % m.len());
                m
            };
            let _ = parse_header(&input);
            let _ = parse_auth_reply(&input);
            if let Ok(InitialPacket::Greeting(g)) = parse_initial(&input) {
                let _ = handshake_response(&g, "ringlb_check", b"", false);
            }
        }
    }
}
