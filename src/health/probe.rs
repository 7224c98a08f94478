//! One probe of one backend: blocking std sockets under one deadline.
//!
//! The `mysql` probe reads the greeting and, with a check user, logs in and sends `COM_QUIT`, so
//! the server sees a client that came and left properly: nothing counts in `Aborted_connects` and
//! nothing moves the server toward blocking our host (`max_connect_errors`). The `tcp` probe only
//! connects.
//!
//! For a backend behind a listener with `send_proxy`, the `mysql` probe first sends the PROXY
//! protocol's LOCAL header ([`proxy_protocol::local_header`]): the server checks a client's
//! header as the data path will send it, so a server that refuses headers from ringlb (MariaDB:
//! ringlb not in `proxy_protocol_networks`) fails the login with ERROR 1130 "Proxy header is not
//! accepted" and goes down, instead of passing checks while it refuses every client. LOCAL keeps
//! the connection's own address, so the check user is matched against ringlb's host as without
//! the header. MariaDB answers the header only after its greeting, when it reads the client's
//! first bytes, so a greeting-only check (`user = ""`) cannot see the refusal. The `tcp` probe
//! sends nothing, header included.
//!
//! A refused header counts on the server as a connection error of ringlb's host, and with name
//! resolution on (MariaDB's default) `max_connect_errors` of them in a row block the host for
//! every connection (ERROR 1129) until `FLUSH HOSTS`. So a refused probe is followed at once by a
//! login without the header, within the same timeout: a successful login resets the count, and
//! the checks alone never get ringlb blocked. The verdict stays a failure.
//!
//! The check user may have a password (`[health] password_file`): the login answers the server's
//! nonce with the plugin's scramble (mysql_native_password, or caching_sha2_password's fast
//! path), never the password itself. With TLS (`[health] tls`), an `SSLRequest` and a rustls
//! handshake ([`super::tls`]) come between the greeting and the login; with `tls = "auto"` only
//! after a login without TLS was refused, on a second connection within the same deadline.
//!
//! Invariant: a probe never takes longer than its timeout (plus scheduling slack): every connect,
//! read and write is bounded by the time left until one deadline.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::mysql::{self, AuthReply, ErrPacket, InitialPacket, ProtocolError};
use super::resultset::{self, Reply, ReplyReader};
use super::tls::TlsClient;
use crate::config::CheckKind;
use crate::proxy_protocol::{self, ProxyVersion};

/// The largest packet the check accepts; a greeting or login reply is a few hundred bytes, so a
/// bigger announced length means the peer is not a MySQL server.
const MAX_CHECK_PAYLOAD: usize = 64 * 1024;

/// Auth switches followed before the login is called a protocol error: a server asking for a
/// second switch is not going to accept an empty password.
const MAX_AUTH_SWITCHES: u32 = 1;

/// What a successful probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alive {
    /// `tcp` check: the connect succeeded.
    Connected,
    /// `mysql` check without a user: the greeting arrived.
    Greeted { server_version: String },
    /// Logged in and quit cleanly.
    LoggedIn {
        server_version: String,
        /// Over TLS.
        tls: bool,
    },
    /// The server greeted us but refused the check user (1044, 1045, 1698): alive, but each such
    /// check counts as an aborted connect on the server.
    AccessDenied {
        server_version: String,
        error: ErrPacket,
    },
}

impl fmt::Display for Alive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alive::Connected => f.write_str("TCP connect succeeded"),
            Alive::Greeted { server_version } => write!(f, "greeting from {server_version}"),
            Alive::LoggedIn {
                server_version,
                tls: false,
            } => write!(f, "logged in to {server_version}"),
            Alive::LoggedIn {
                server_version,
                tls: true,
            } => write!(f, "logged in to {server_version} over TLS"),
            Alive::AccessDenied {
                server_version,
                error,
            } => {
                write!(f, "{server_version} is alive but refused the check user: {error}")
            }
        }
    }
}

/// The step a probe was at when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    ProxyHeader,
    Greeting,
    Login,
    LoginReply,
    /// Sending the state statements, or reading their replies.
    Query,
    Quit,
    Tls,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connecting",
            Stage::ProxyHeader => "sending the PROXY protocol header",
            Stage::Greeting => "reading the greeting",
            Stage::Login => "sending the login",
            Stage::LoginReply => "reading the login reply",
            Stage::Query => "reading the server's state",
            Stage::Quit => "sending COM_QUIT",
            Stage::Tls => "in the TLS handshake",
        })
    }
}

/// Why a probe counts as failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out after {timeout_ms} ms while {stage}")]
    Timeout { stage: Stage, timeout_ms: u64 },
    #[error("{stage}: {source}")]
    Io { stage: Stage, source: io::Error },
    #[error("connection closed by the server while {stage}")]
    Closed { stage: Stage },
    /// An ERR packet instead of the greeting: too many connections, host blocked, ...
    #[error("server refused the connection: {0}")]
    Refused(ErrPacket),
    /// An ERR after the login other than access denied.
    #[error("login failed: {0}")]
    LoginFailed(ErrPacket),
    /// The server refused the PROXY protocol header (ERROR 1130 after the greeting).
    #[error(
        "server refuses the PROXY protocol header (is ringlb's address in its proxy_protocol_networks?): {0}"
    )]
    ProxyHeaderRefused(ErrPacket),
    #[error("{stage}: {error}")]
    Protocol { stage: Stage, error: ProtocolError },
    /// TLS could not be set up: the server offers none, or its handshake or certificate failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The check cannot answer the server's authentication (its plugin, or it needs TLS).
    #[error("login: {0}")]
    Auth(String),
    /// `[health] check_query` said no, or could not run.
    #[error("{0}")]
    CheckQuery(String),
}

impl ProbeError {
    /// Whether the probe failed before it reached the backend because ringlb itself had no
    /// descriptor or memory for a socket (EMFILE, ENFILE, ENOBUFS, ENOMEM at connect): such a
    /// failure says nothing about the backend.
    pub fn is_local_shortage(&self) -> bool {
        match self {
            ProbeError::Io {
                stage: Stage::Connect,
                source,
            } => matches!(
                source.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            ),
            _ => false,
        }
    }
}

/// Who the check logs in as, and how. `Debug` leaves the password out.
#[derive(Clone, Copy)]
pub struct Login<'a> {
    pub user: &'a str,
    /// Empty: no password.
    pub password: &'a [u8],
    pub tls: TlsUse<'a>,
}

impl fmt::Debug for Login<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("tls", &self.tls)
            .finish()
    }
}

impl<'a> Login<'a> {
    /// `user` with no password, without TLS.
    pub fn user(user: &'a str) -> Login<'a> {
        Login {
            user,
            password: b"",
            tls: TlsUse::Never,
        }
    }
}

/// Whether a check speaks TLS (`tls = "auto"` decides per server, in the checker).
#[derive(Debug, Clone, Copy)]
pub enum TlsUse<'a> {
    Never,
    /// From the start; a server that offers no TLS fails the check.
    Always(&'a TlsClient),
}

/// Where a probe goes: the backend's address and whether its listener sends the PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// As configured ("db-01:3306"): the name a TLS certificate is checked against.
    pub name: &'a str,
    pub addr: SocketAddr,
    /// The `mysql` probe sends this version's LOCAL header right after connecting.
    pub send_proxy: Option<ProxyVersion>,
}

impl From<SocketAddr> for Target<'_> {
    /// A backend without the PROXY protocol, named by its address.
    fn from(addr: SocketAddr) -> Self {
        Target {
            name: "",
            addr,
            send_proxy: None,
        }
    }
}

/// Probes `target` once; the whole probe is bounded by `timeout`.
pub fn probe<'a>(
    kind: CheckKind,
    target: impl Into<Target<'a>>,
    user: &str,
    timeout: Duration,
) -> Result<Alive, ProbeError> {
    probe_state(kind, target, user, timeout, &[]).map(|(alive, _)| alive)
}

/// Probes `target` once and, once logged in, sends `statements` back to back (one round trip)
/// and reads their replies, in order, before it quits. No reply comes back when the check did not
/// log in (a `tcp` check, a greeting-only check, a refused check user). The whole probe is
/// bounded by `timeout`.
pub fn probe_state<'a>(
    kind: CheckKind,
    target: impl Into<Target<'a>>,
    user: &str,
    timeout: Duration,
    statements: &[&str],
) -> Result<(Alive, Vec<Reply>), ProbeError> {
    let statements = |_: &str| statements.iter().map(|s| s.to_string()).collect();
    probe_with(kind, target, Login::user(user), timeout, &statements)
}

/// [`probe_state`] with the statements chosen once the greeting has named the server's version
/// (the replica status statement differs between MariaDB and MySQL versions).
pub fn probe_with<'a>(
    kind: CheckKind,
    target: impl Into<Target<'a>>,
    login: Login<'_>,
    timeout: Duration,
    statements: &dyn Fn(&str) -> Vec<String>,
) -> Result<(Alive, Vec<Reply>), ProbeError> {
    let target = target.into();
    let deadline = Instant::now() + timeout;
    let timeout_ms = timeout.as_millis() as u64;
    let result = probe_until(kind, target, login, deadline, timeout_ms, statements);
    match result {
        Err(ProbeError::LoginFailed(error))
            if target.send_proxy.is_some() && error.code == mysql::ER_HOST_NOT_PRIVILEGED =>
        {
            // Resets the server's count of connection errors for our host (module docs); its
            // own outcome changes nothing.
            let plain = Target {
                send_proxy: None,
                ..target
            };
            let _ = probe_until(kind, plain, login, deadline, timeout_ms, &|_| Vec::new());
            Err(ProbeError::ProxyHeaderRefused(error))
        }
        result => result,
    }
}

/// One probe of `target` that ends by `deadline`.
fn probe_until(
    kind: CheckKind,
    target: Target<'_>,
    login: Login<'_>,
    deadline: Instant,
    timeout_ms: u64,
    statements: &dyn Fn(&str) -> Vec<String>,
) -> Result<(Alive, Vec<Reply>), ProbeError> {
    let mut conn = Conn {
        stream: None,
        deadline,
        timeout_ms,
    };
    conn.connect(target.addr)?;
    match kind {
        CheckKind::Tcp => Ok((Alive::Connected, Vec::new())),
        CheckKind::Mysql => {
            if let Some(version) = target.send_proxy {
                // In one write: MariaDB reads a v2 header with one read per part and does not
                // retry a short one (see proxy_protocol).
                conn.write_all(&proxy_protocol::local_header(version), Stage::ProxyHeader)?;
            }
            mysql_check(&mut conn, login, target, statements)
        }
    }
}

fn mysql_check(
    conn: &mut Conn,
    login: Login<'_>,
    target: Target<'_>,
    statements: &dyn Fn(&str) -> Vec<String>,
) -> Result<(Alive, Vec<Reply>), ProbeError> {
    let (user, password) = (login.user, login.password);
    let (sequence, payload) = conn.read_packet(Stage::Greeting)?;
    let greeting = match mysql::parse_initial(&payload).map_err(protocol(Stage::Greeting))? {
        InitialPacket::Greeting(g) => g,
        InitialPacket::Error(e) => return Err(ProbeError::Refused(e)),
    };
    let server_version = greeting.server_version.clone();
    if user.is_empty() {
        return Ok((Alive::Greeted { server_version }, Vec::new()));
    }

    let mut next = sequence.wrapping_add(1);
    let tls = match login.tls {
        TlsUse::Always(client) => {
            if greeting.capabilities & mysql::CLIENT_SSL == 0 {
                return Err(ProbeError::Tls("the server offers no TLS ([health] tls)".into()));
            }
            let request = mysql::ssl_request(&greeting).map_err(protocol(Stage::Login))?;
            conn.write_all(
                &mysql::packet(next, &request).map_err(protocol(Stage::Login))?,
                Stage::Login,
            )?;
            next = next.wrapping_add(1);
            let name = client.server_name(target.name, target.addr.ip());
            conn.start_tls(client, name)?;
            true
        }
        TlsUse::Never => false,
    };
    // caching_sha2_password's full authentication sends the password itself: only into a TLS
    // session whose server was verified against tls_ca_file.
    let verified = matches!(login.tls, TlsUse::Always(client) if client.verifies) && tls;
    let response =
        mysql::handshake_response(&greeting, user, password, tls).map_err(protocol(Stage::Login))?;
    let login = mysql::packet(next, &response).map_err(protocol(Stage::Login))?;
    if let Err(failed) = conn.write_all(&login, Stage::Login) {
        return Err(match err_left_behind(conn) {
            Some(error) => ProbeError::LoginFailed(error),
            None => failed,
        });
    }
    let mut switches = 0;
    loop {
        let (sequence, payload) = conn.read_packet(Stage::LoginReply)?;
        next = sequence.wrapping_add(1);
        match mysql::parse_auth_reply(&payload).map_err(protocol(Stage::LoginReply))? {
            AuthReply::Ok => break,
            AuthReply::Err(error) if error.is_access_denied() => {
                let alive = Alive::AccessDenied {
                    server_version,
                    error,
                };
                return Ok((alive, Vec::new()));
            }
            AuthReply::Err(error) => return Err(ProbeError::LoginFailed(error)),
            AuthReply::AuthSwitch { plugin, data } if switches < MAX_AUTH_SWITCHES => {
                switches += 1;
                let response = mysql::auth_response(&plugin, &data, password)
                    .map_err(|e| ProbeError::Auth(e.to_string()))?;
                let packet = mysql::packet(next, &response).map_err(protocol(Stage::Login))?;
                conn.write_all(&packet, Stage::Login)?;
            }
            AuthReply::AuthSwitch { .. } => {
                return Err(ProbeError::Protocol {
                    stage: Stage::LoginReply,
                    error: ProtocolError::UnexpectedPacket(0xFE),
                })
            }
            // caching_sha2_password's "fast auth succeeded": the OK follows.
            AuthReply::MoreData(data) if data == mysql::FAST_AUTH_SUCCESS => {}
            AuthReply::MoreData(data) if data == mysql::FULL_AUTH_NEEDED && verified => {
                let mut clear = password.to_vec();
                clear.push(0);
                let packet = mysql::packet(next, &clear).map_err(protocol(Stage::Login))?;
                conn.write_all(&packet, Stage::Login)?;
            }
            AuthReply::MoreData(data) if data == mysql::FULL_AUTH_NEEDED => {
                return Err(ProbeError::Auth(
                    mysql::AuthError::NeedsTls("caching_sha2_password's full authentication").to_string(),
                ))
            }
            AuthReply::MoreData(_) => {
                return Err(ProbeError::Protocol {
                    stage: Stage::LoginReply,
                    error: ProtocolError::UnexpectedPacket(0x01),
                })
            }
        }
    }
    let replies = read_state(conn, &statements(&server_version))?;
    // As the mysql client does: COM_QUIT, then close. The server ends the session as a normal
    // disconnect.
    conn.write_all(&mysql::com_quit(), Stage::Quit)?;
    conn.shutdown_write();
    Ok((Alive::LoggedIn { server_version, tls }, replies))
}

/// Sends `statements` in one write (each its own `COM_QUERY`, sequence 0: the server reads them
/// one after the other) and reads one reply for each, in order.
fn read_state(conn: &mut Conn, statements: &[String]) -> Result<Vec<Reply>, ProbeError> {
    if statements.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = Vec::new();
    for statement in statements {
        let query = resultset::com_query(statement);
        batch.extend(mysql::packet(0, &query).map_err(protocol(Stage::Query))?);
    }
    conn.write_all(&batch, Stage::Query)?;
    let mut replies = Vec::with_capacity(statements.len());
    for _ in statements {
        let mut reader = ReplyReader::new();
        let reply = loop {
            let (_, payload) = conn.read_packet(Stage::Query)?;
            if let Some(reply) = reader.feed(&payload).map_err(protocol(Stage::Query))? {
                break reply;
            }
        };
        replies.push(reply);
    }
    Ok(replies)
}

/// After a write failed: the ERR packet the server sent before it closed, if one waits in the
/// receive queue. A server that refuses the client on its first bytes (MariaDB refusing a PROXY
/// header: ERROR 1130) closes with the rest of them unread, so its kernel resets the connection
/// and the login write fails; the ERR that explains why still arrived ahead of the reset.
fn err_left_behind(conn: &mut Conn) -> Option<ErrPacket> {
    let (_, payload) = conn.read_packet(Stage::LoginReply).ok()?;
    match mysql::parse_auth_reply(&payload) {
        Ok(AuthReply::Err(error)) => Some(error),
        _ => None,
    }
}

fn protocol(stage: Stage) -> impl Fn(ProtocolError) -> ProbeError {
    move |error| ProbeError::Protocol { stage, error }
}

/// A connection with a deadline applied to every operation.
struct Conn {
    stream: Option<Transport>,
    deadline: Instant,
    timeout_ms: u64,
}

/// The check's connection: plain, or TLS over it once an `SSLRequest` was answered.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsSession>),
}

/// A TLS session driven by hand, one socket read or write at a time, so that every one of them
/// is bounded by the time left before the probe's deadline (rustls's own stream loops until a
/// whole record arrives, which a server sending one byte at a time could stretch without end).
struct TlsSession {
    conn: rustls::ClientConnection,
    sock: TcpStream,
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &tls.sock,
        }
    }
}

impl Conn {
    fn remaining(&self, stage: Stage) -> Result<Duration, ProbeError> {
        match self.deadline.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(self.timeout(stage)),
        }
    }

    fn timeout(&self, stage: Stage) -> ProbeError {
        ProbeError::Timeout {
            stage,
            timeout_ms: self.timeout_ms,
        }
    }

    fn io_error(&self, stage: Stage, source: io::Error) -> ProbeError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout(stage),
            io::ErrorKind::UnexpectedEof => ProbeError::Closed { stage },
            _ => ProbeError::Io { stage, source },
        }
    }

    fn connect(&mut self, addr: SocketAddr) -> Result<(), ProbeError> {
        let left = self.remaining(Stage::Connect)?;
        let stream = TcpStream::connect_timeout(&addr, left).map_err(|e| self.io_error(Stage::Connect, e))?;
        // Login packets are tiny and each waits for an answer: do not let Nagle hold them.
        let _ = stream.set_nodelay(true);
        self.stream = Some(Transport::Plain(stream));
        Ok(())
    }

    /// Turns the plain connection into TLS, and completes the handshake by the deadline.
    fn start_tls(
        &mut self,
        client: &TlsClient,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<(), ProbeError> {
        let stage = Stage::Tls;
        let Some(Transport::Plain(sock)) = self.stream.take() else {
            return Err(ProbeError::Closed { stage });
        };
        let conn = rustls::ClientConnection::new(client.config.clone(), name)
            .map_err(|e| ProbeError::Tls(e.to_string()))?;
        let mut tls = TlsSession { conn, sock };
        while tls.conn.is_handshaking() {
            // Every pass is bounded, even one that would find nothing to send or to read.
            self.remaining(stage)?;
            self.send_tls(&mut tls, stage)?;
            if tls.conn.is_handshaking() && tls.conn.wants_read() {
                self.receive_tls(&mut tls, stage)?;
            }
        }
        self.send_tls(&mut tls, stage)?;
        self.stream = Some(Transport::Tls(Box::new(tls)));
        Ok(())
    }

    /// Writes what the session has to send, each write bounded by the time left.
    fn send_tls(&self, tls: &mut TlsSession, stage: Stage) -> Result<(), ProbeError> {
        while tls.conn.wants_write() {
            let left = self.remaining(stage)?;
            tls.sock
                .set_write_timeout(Some(left))
                .map_err(|source| ProbeError::Io { stage, source })?;
            match tls.conn.write_tls(&mut tls.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(stage, e)),
            }
        }
        Ok(())
    }

    /// One socket read into the session (bounded by the time left), then its processing.
    fn receive_tls(&self, tls: &mut TlsSession, stage: Stage) -> Result<(), ProbeError> {
        let left = self.remaining(stage)?;
        tls.sock
            .set_read_timeout(Some(left))
            .map_err(|source| ProbeError::Io { stage, source })?;
        match tls.conn.read_tls(&mut tls.sock) {
            Ok(0) => return Err(ProbeError::Closed { stage }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(self.io_error(stage, e)),
        }
        let processed = tls.conn.process_new_packets();
        // An alert the session wants to send about the failure goes out first.
        let _ = self.send_tls(tls, stage);
        processed.map(|_| ()).map_err(|e| ProbeError::Tls(e.to_string()))
    }

    /// Reads into `buf` what the session has decrypted, reading the socket when it has none.
    fn read_tls(&self, tls: &mut TlsSession, buf: &mut [u8], stage: Stage) -> Result<usize, ProbeError> {
        loop {
            match tls.conn.reader().read(buf) {
                Ok(0) => return Err(ProbeError::Closed { stage }),
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.receive_tls(tls, stage)?,
                Err(e) => return Err(self.io_error(stage, e)),
            }
        }
    }

    fn read_exact(&mut self, mut buf: &mut [u8], stage: Stage) -> Result<(), ProbeError> {
        while !buf.is_empty() {
            let left = self.remaining(stage)?;
            let mut stream = self.stream.take().ok_or(ProbeError::Closed { stage })?;
            let read = match &mut stream {
                Transport::Plain(tcp) => tcp
                    .set_read_timeout(Some(left))
                    .and_then(|()| tcp.read(buf))
                    .map_err(|e| self.io_error(stage, e)),
                Transport::Tls(tls) => self.read_tls(tls, buf, stage),
            };
            self.stream = Some(stream);
            match read {
                Ok(0) => return Err(ProbeError::Closed { stage }),
                Ok(n) => buf = &mut buf[n..],
                Err(ProbeError::Io { source, .. }) if source.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads one packet: its sequence id and payload.
    fn read_packet(&mut self, stage: Stage) -> Result<(u8, Vec<u8>), ProbeError> {
        let mut header = [0u8; mysql::HEADER_LEN];
        self.read_exact(&mut header, stage)?;
        let header = mysql::parse_header(&header).map_err(protocol(stage))?;
        if header.payload_len > MAX_CHECK_PAYLOAD {
            return Err(ProbeError::Protocol {
                stage,
                error: ProtocolError::PacketTooLarge(header.payload_len),
            });
        }
        let mut payload = vec![0u8; header.payload_len];
        self.read_exact(&mut payload, stage)?;
        Ok((header.sequence, payload))
    }

    fn write_all(&mut self, bytes: &[u8], stage: Stage) -> Result<(), ProbeError> {
        let left = self.remaining(stage)?;
        let mut stream = self.stream.take().ok_or(ProbeError::Closed { stage })?;
        let written = match &mut stream {
            Transport::Plain(tcp) => tcp
                .set_write_timeout(Some(left))
                .and_then(|()| tcp.write_all(bytes))
                .map_err(|e| self.io_error(stage, e)),
            Transport::Tls(tls) => {
                // Buffered in the session as records, then sent write by write.
                match tls.conn.writer().write_all(bytes) {
                    Ok(()) => self.send_tls(tls, stage),
                    Err(e) => Err(ProbeError::Tls(e.to_string())),
                }
            }
        };
        self.stream = Some(stream);
        written
    }

    fn shutdown_write(&mut self) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        if let Transport::Tls(tls) = &mut stream {
            // close_notify first, so that the server sees a clean end of the session; bounded
            // by the deadline like every other write.
            tls.conn.send_close_notify();
            let _ = self.send_tls(tls, Stage::Quit);
        }
        let _ = stream.tcp().shutdown(Shutdown::Write);
        self.stream = Some(stream);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A greeting packet (header included) from a server that supports plugin auth.
    pub(crate) fn greeting_packet() -> Vec<u8> {
        let mut p = vec![10];
        p.extend_from_slice(b"10.11.6-MariaDB\0");
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh\0");
        p.extend_from_slice(&0xF7FEu16.to_le_bytes());
        p.push(45);
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(&0x81FFu16.to_le_bytes());
        p.push(21);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        mysql::packet(0, &p).unwrap()
    }

    pub(crate) fn err_packet(sequence: u8, code: u16, message: &str) -> Vec<u8> {
        let mut p = vec![0xFF];
        p.extend_from_slice(&code.to_le_bytes());
        p.extend_from_slice(b"#28000");
        p.extend_from_slice(message.as_bytes());
        mysql::packet(sequence, &p).unwrap()
    }

    fn read_packet(s: &mut TcpStream) -> io::Result<(u8, Vec<u8>)> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h)?;
        let h = mysql::parse_header(&h).unwrap();
        let mut p = vec![0; h.payload_len];
        s.read_exact(&mut p)?;
        Ok((h.sequence, p))
    }

    /// The client packets a scripted server received: (sequence, payload) each.
    pub(crate) type Packets = Vec<(u8, Vec<u8>)>;

    /// What a scripted server received.
    pub(crate) type Seen = thread::JoinHandle<Packets>;

    /// What a scripted server received: the PROXY header ahead of the packets, then the packets.
    pub(crate) type SeenWithPreamble = thread::JoinHandle<(Vec<u8>, Packets)>;

    /// One scripted server connection: after the greeting, each reply in `replies` is sent after
    /// reading one client packet. Everything the client sent (sequence, payload) comes back through
    /// the join handle, read until EOF.
    pub(crate) fn scripted_server(first: Vec<u8>, replies: Vec<Vec<u8>>) -> (SocketAddr, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || serve_script(&listener, 0, first, replies).1);
        (addr, handle)
    }

    /// [`scripted_server`] for a client that sends a `preamble_len`-byte PROXY header first: the
    /// join handle gives the preamble too.
    pub(crate) fn scripted_proxy_server(
        preamble_len: usize,
        first: Vec<u8>,
        replies: Vec<Vec<u8>>,
    ) -> (SocketAddr, SeenWithPreamble) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || serve_script(&listener, preamble_len, first, replies));
        (addr, handle)
    }

    /// Serves one connection: `first` out, `preamble_len` bytes in, then a reply per packet.
    fn serve_script(
        listener: &TcpListener,
        preamble_len: usize,
        first: Vec<u8>,
        replies: Vec<Vec<u8>>,
    ) -> (Vec<u8>, Packets) {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&first).unwrap();
        let mut preamble = vec![0; preamble_len];
        s.read_exact(&mut preamble).unwrap();
        let mut seen = Vec::new();
        let mut replies = replies.into_iter();
        while let Ok(packet) = read_packet(&mut s) {
            seen.push(packet);
            if let Some(reply) = replies.next() {
                let _ = s.write_all(&reply);
            }
        }
        (preamble, seen)
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn login_then_quit_leaves_the_server_cleanly() {
        let ok = mysql::packet(2, &[0, 0, 0, 2, 0, 0, 0]).unwrap();
        let (addr, server) = scripted_server(greeting_packet(), vec![ok]);
        let alive = probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT).unwrap();
        assert_eq!(
            alive,
            Alive::LoggedIn {
                server_version: "10.11.6-MariaDB".into(),
                tls: false,
            }
        );
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 2, "handshake response then COM_QUIT: {seen:?}");
        assert_eq!(seen[0].0, 1);
        assert!(seen[0].1.ends_with(b"ringlb_check\0\0mysql_native_password\0"));
        assert_eq!(seen[1], (0, vec![mysql::COM_QUIT]));
    }

    /// `payloads` as the packets of one reply, numbered from 1.
    fn reply(payloads: Vec<Vec<u8>>) -> Vec<u8> {
        let packets = payloads.iter().enumerate();
        packets
            .flat_map(|(i, p)| mysql::packet(i as u8 + 1, p).unwrap())
            .collect()
    }

    #[test]
    fn state_statements_follow_the_login_and_their_replies_come_back_in_order() {
        use crate::health::resultset::tests::result_set_payloads;
        let ok = mysql::packet(2, &[0, 0, 0, 2, 0, 0, 0]).unwrap();
        let variables = result_set_payloads(
            &["Variable_name", "Value"],
            &[vec![Some("read_only"), Some("ON")]],
        );
        let denied = err_packet(1, 1227, "Access denied; you need the SLAVE MONITOR privilege");
        let (addr, server) = scripted_server(greeting_packet(), vec![ok, reply(variables), denied]);
        let statements = ["SHOW GLOBAL VARIABLES", "SHOW ALL REPLICAS STATUS"];
        let (alive, replies) =
            probe_state(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT, &statements).unwrap();
        assert!(matches!(alive, Alive::LoggedIn { .. }), "{alive:?}");
        assert_eq!(replies.len(), 2);
        let Reply::Rows(set) = &replies[0] else {
            panic!("not a result set: {:?}", replies[0]);
        };
        assert_eq!(set.value(0, "Value"), Some("ON"));
        assert!(matches!(&replies[1], Reply::Err(e) if e.code == 1227));
        // The login, each statement as its own COM_QUERY with sequence 0, then COM_QUIT.
        let seen = server.join().unwrap();
        let queries: Vec<_> = seen[1..3]
            .iter()
            .map(|(seq, p)| (*seq, p[0], p[1..].to_vec()))
            .collect();
        assert_eq!(
            queries,
            vec![
                (0, mysql::COM_QUERY, statements[0].as_bytes().to_vec()),
                (0, mysql::COM_QUERY, statements[1].as_bytes().to_vec()),
            ]
        );
        assert_eq!(seen[3], (0, vec![mysql::COM_QUIT]));
    }

    #[test]
    fn proxy_local_header_goes_first_then_the_login_as_usual() {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            let header = proxy_protocol::local_header(version);
            let ok = mysql::packet(2, &[0, 0, 0, 2, 0, 0, 0]).unwrap();
            let (addr, server) = scripted_proxy_server(header.len(), greeting_packet(), vec![ok]);
            let target = Target {
                name: "",
                addr,
                send_proxy: Some(version),
            };
            let alive = probe(CheckKind::Mysql, target, "ringlb_check", TIMEOUT).unwrap();
            assert!(matches!(alive, Alive::LoggedIn { .. }), "{version}: {alive:?}");
            let (preamble, seen) = server.join().unwrap();
            assert_eq!(preamble, header, "{version}");
            assert_eq!(
                seen.len(),
                2,
                "{version}: handshake response then COM_QUIT: {seen:?}"
            );
            assert_eq!(seen[1], (0, vec![mysql::COM_QUIT]));
        }
    }

    #[test]
    fn refused_proxy_header_fails_and_a_plain_login_follows() {
        // MariaDB's answer when ringlb is not in proxy_protocol_networks: the greeting, then this
        // ERR in reply to the client's first bytes. The second connection, without the header,
        // logs in.
        let refusal = err_packet(1, 1130, "Proxy header is not accepted from 127.0.0.1");
        let ok = mysql::packet(2, &[0, 0, 0, 2, 0, 0, 0]).unwrap();
        let header_len = proxy_protocol::local_header(ProxyVersion::V2).len();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let refused = serve_script(&listener, header_len, greeting_packet(), vec![refusal]);
            let plain = serve_script(&listener, 0, greeting_packet(), vec![ok]);
            (refused, plain)
        });
        let target = Target {
            name: "",
            addr,
            send_proxy: Some(ProxyVersion::V2),
        };
        match probe(CheckKind::Mysql, target, "ringlb_check", TIMEOUT) {
            Err(e @ ProbeError::ProxyHeaderRefused(_)) => assert_eq!(
                e.to_string(),
                "server refuses the PROXY protocol header (is ringlb's address in its \
                 proxy_protocol_networks?): ERROR 1130 (28000): Proxy header is not accepted from 127.0.0.1"
            ),
            other => panic!("{other:?}"),
        }
        let ((preamble, refused), (no_preamble, plain)) = server.join().unwrap();
        assert_eq!(preamble, proxy_protocol::local_header(ProxyVersion::V2));
        assert_eq!(refused.len(), 1, "the login only: {refused:?}");
        assert!(no_preamble.is_empty());
        assert_eq!(plain.len(), 2, "login and COM_QUIT, no header: {plain:?}");
        assert_eq!(plain[0].0, 1, "the first bytes were the handshake response");
    }

    #[test]
    fn refusal_without_a_header_sent_is_a_plain_failed_login() {
        // The same code when no header went out is not about the PROXY protocol: no second login.
        let refusal = err_packet(2, 1130, "Host is not allowed");
        let (addr, _server) = scripted_server(greeting_packet(), vec![refusal]);
        match probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT) {
            Err(ProbeError::LoginFailed(e)) => assert_eq!(e.code, 1130),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn err_before_a_reset_is_reported_instead_of_the_reset() {
        // As MariaDB refusing a header: it reads the first 4 bytes only, answers greeting and ERR,
        // and closes with the rest unread, which resets the connection before the login is sent.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut first = [0u8; 4];
            s.read_exact(&mut first).unwrap();
            let refusal = err_packet(1, 1130, "Proxy header is not accepted from 127.0.0.1");
            s.write_all(&[greeting_packet(), refusal].concat()).unwrap();
        });
        let target = Target {
            name: "",
            addr,
            send_proxy: Some(ProxyVersion::V1),
        };
        match probe(CheckKind::Mysql, target, "ringlb_check", TIMEOUT) {
            Err(ProbeError::ProxyHeaderRefused(e)) => assert_eq!(e.code, 1130),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn tcp_check_sends_no_proxy_header() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Target {
            name: "",
            addr,
            send_proxy: Some(ProxyVersion::V1),
        };
        assert_eq!(
            probe(CheckKind::Tcp, target, "", TIMEOUT).unwrap(),
            Alive::Connected
        );
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut received = Vec::new();
        s.read_to_end(&mut received).unwrap();
        assert!(received.is_empty(), "{received:?}");
    }

    #[test]
    fn auth_switch_is_answered_with_an_empty_packet() {
        let mut switch = vec![0xFE];
        switch.extend_from_slice(b"mysql_native_password\0aaaaaaaaaaaaaaaaaaaa\0");
        let replies = vec![
            mysql::packet(2, &switch).unwrap(),
            mysql::packet(4, &[0, 0, 0, 2, 0, 0, 0]).unwrap(),
        ];
        let (addr, server) = scripted_server(greeting_packet(), replies);
        let alive = probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT).unwrap();
        assert!(matches!(alive, Alive::LoggedIn { .. }), "{alive:?}");
        let seen = server.join().unwrap();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[1], (3, Vec::new()));
        assert_eq!(seen[2], (0, vec![mysql::COM_QUIT]));
    }

    #[test]
    fn fast_auth_more_data_is_followed_by_ok() {
        let replies = vec![[
            mysql::packet(2, &[0x01, 0x03]).unwrap(),
            mysql::packet(3, &[0, 0, 0, 2, 0, 0, 0]).unwrap(),
        ]
        .concat()];
        let (addr, server) = scripted_server(greeting_packet(), replies);
        let alive = probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT).unwrap();
        assert!(matches!(alive, Alive::LoggedIn { .. }), "{alive:?}");
        assert_eq!(server.join().unwrap().len(), 2);
    }

    #[test]
    fn access_denied_counts_as_alive() {
        let (addr, server) = scripted_server(
            greeting_packet(),
            vec![err_packet(
                2,
                1045,
                "Access denied for user 'ringlb_check'@'localhost'",
            )],
        );
        match probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT) {
            Ok(Alive::AccessDenied { error, .. }) => assert_eq!(error.code, 1045),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            server.join().unwrap().len(),
            1,
            "no COM_QUIT after a refused login"
        );
    }

    #[test]
    fn other_login_error_is_down() {
        let (addr, _server) =
            scripted_server(greeting_packet(), vec![err_packet(2, 1226, "User has exceeded")]);
        match probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT) {
            Err(ProbeError::LoginFailed(e)) => assert_eq!(e.code, 1226),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn err_instead_of_greeting_is_down() {
        let (addr, _server) = scripted_server(err_packet(0, 1129, "Host is blocked"), vec![]);
        match probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT) {
            Err(e @ ProbeError::Refused(_)) => {
                assert_eq!(
                    e.to_string(),
                    "server refused the connection: ERROR 1129 (28000): Host is blocked"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_user_reads_the_greeting_only() {
        let (addr, server) = scripted_server(greeting_packet(), vec![]);
        let alive = probe(CheckKind::Mysql, addr, "", TIMEOUT).unwrap();
        assert!(matches!(alive, Alive::Greeted { .. }), "{alive:?}");
        assert!(server.join().unwrap().is_empty());
    }

    #[test]
    fn non_mysql_peer_is_a_protocol_error() {
        let (addr, _server) = scripted_server(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(), vec![]);
        match probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT) {
            Err(ProbeError::Protocol {
                stage: Stage::Greeting,
                error: ProtocolError::PacketTooLarge(_),
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_closing_mid_greeting_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let greeting = greeting_packet();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&greeting[..10]).unwrap();
        });
        match probe(CheckKind::Mysql, addr, "ringlb_check", TIMEOUT) {
            Err(ProbeError::Closed {
                stage: Stage::Greeting,
            }) => {}
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn silent_server_times_out_within_the_bound() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let start = Instant::now();
        // The kernel completes the handshake from the backlog; nobody ever writes.
        match probe(CheckKind::Mysql, addr, "ringlb_check", Duration::from_millis(200)) {
            Err(ProbeError::Timeout {
                stage: Stage::Greeting,
                timeout_ms: 200,
            }) => {}
            other => panic!("{other:?}"),
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(listener);
    }

    #[test]
    fn refused_connect_is_an_io_error() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        for kind in [CheckKind::Tcp, CheckKind::Mysql] {
            match probe(kind, addr, "u", TIMEOUT) {
                Err(ProbeError::Io {
                    stage: Stage::Connect,
                    source,
                }) => assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn tcp_check_needs_only_the_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            probe(CheckKind::Tcp, addr, "", TIMEOUT).unwrap(),
            Alive::Connected
        );
    }

    #[test]
    fn server_that_never_answers_the_login_times_out() {
        let (addr, server) = scripted_server(greeting_packet(), vec![]);
        match probe(CheckKind::Mysql, addr, "u", Duration::from_millis(300)) {
            Err(ProbeError::Timeout {
                stage: Stage::LoginReply,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // The probe closed its socket, so the scripted server sees EOF and ends.
        assert_eq!(server.join().unwrap().len(), 1);
    }
}

#[cfg(test)]
mod tls_deadlines {
    use super::tests::greeting_packet;
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread;

    fn tls_greeting(plugin: &str) -> Vec<u8> {
        let g = greeting_packet();
        let mut p = g[4..].to_vec();
        // lower capability bytes at offset 1+16+4+9 = 30
        let off = 1 + b"10.11.6-MariaDB\0".len() + 4 + 9;
        p[off..off + 2].copy_from_slice(&0xFFFEu16.to_le_bytes());
        let cut = p.len() - b"mysql_native_password\0".len();
        p.truncate(cut);
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
        mysql::packet(0, &p).unwrap()
    }

    fn server_config() -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        // One directory per test thread: the tests run in parallel and each makes its own key.
        let dir = std::env::temp_dir()
            .join(format!(
                "rlb-tls-unit-{}-{:?}",
                std::process::id(),
                thread::current().id()
            ))
            .to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-days",
                "1",
                "-keyout",
                "k.pem",
                "-out",
                "c.pem",
            ])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(st.status.success());
        let certs: Vec<_> = CertificateDer::pem_file_iter(dir.join("c.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("k.pem")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        )
    }

    fn read_plain(s: &mut TcpStream) -> Vec<u8> {
        let mut h = [0u8; 4];
        s.read_exact(&mut h).unwrap();
        let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
        let mut p = vec![0; len];
        s.read_exact(&mut p).unwrap();
        p
    }

    /// One probe of `addr` as user "u" with a password, over TLS (no CA): its result and how
    /// long it took.
    fn probe_over_tls(
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> (Result<(Alive, Vec<Reply>), ProbeError>, Duration) {
        let client = crate::health::tls::TlsClient::new(None).unwrap();
        let login = Login {
            user: "u",
            password: b"pw",
            tls: TlsUse::Always(&client),
        };
        let start = Instant::now();
        let result = probe_with(CheckKind::Mysql, addr, login, timeout, &|_| Vec::new());
        (result, start.elapsed())
    }

    /// Server: greeting, SSLRequest, then dribbles a bogus TLS record one byte per 100 ms: the
    /// probe ends at its deadline, not when the record is complete.
    #[test]
    fn a_tls_handshake_dribbled_a_byte_at_a_time_ends_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&tls_greeting("mysql_native_password")).unwrap();
            let _ssl_request = read_plain(&mut s);
            let mut hello = [0u8; 4096];
            let _ = s.read(&mut hello);
            let record = [&[0x16u8, 0x03, 0x03, 0x00, 0x1e][..], &[0u8; 30]].concat();
            for b in record {
                if s.write_all(&[b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        let (r, took) = probe_over_tls(addr, Duration::from_millis(500));
        let _ = server.join();
        eprintln!("handshake: {r:?} after {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "a 500 ms probe took {took:?}: {r:?}"
        );
    }

    /// Server: full TLS handshake, reads the login, then dribbles the TLS record of its OK.
    #[test]
    fn a_tls_record_dribbled_after_the_handshake_ends_at_the_deadline() {
        let config = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&tls_greeting("mysql_native_password")).unwrap();
            let _ssl_request = read_plain(&mut s);
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut s).unwrap();
            }
            // the login
            let mut tls = rustls::Stream::new(&mut conn, &mut s);
            let mut h = [0u8; 4];
            tls.read_exact(&mut h).unwrap();
            let mut p = vec![0; h[0] as usize];
            tls.read_exact(&mut p).unwrap();
            conn.writer()
                .write_all(&mysql::packet(3, &[0, 0, 0, 2, 0, 0, 0]).unwrap())
                .unwrap();
            let mut bytes = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut bytes).unwrap();
            }
            for b in bytes {
                if s.write_all(&[b]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            thread::sleep(Duration::from_millis(200));
        });
        let (r, took) = probe_over_tls(addr, Duration::from_millis(500));
        let _ = server.join();
        eprintln!("read: {r:?} after {took:?}");
        assert!(
            took < Duration::from_millis(1500),
            "a 500 ms probe took {took:?}: {r:?}"
        );
    }

    /// caching_sha2_password asks for full authentication over a TLS session whose server was not
    /// verified (no tls_ca_file): the password is not sent.
    #[test]
    fn caching_sha2_full_authentication_sends_no_password_to_an_unverified_server() {
        let config = server_config();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&tls_greeting("caching_sha2_password")).unwrap();
            let _ssl_request = read_plain(&mut s);
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, s);
            let mut h = [0u8; 4];
            tls.read_exact(&mut h).unwrap();
            let mut p = vec![0; h[0] as usize];
            tls.read_exact(&mut p).unwrap();
            // "perform full authentication"
            tls.write_all(&mysql::packet(3, &[0x01, 0x04]).unwrap()).unwrap();
            tls.flush().unwrap();
            // A real client now sends the password + NUL, sequence 4.
            let mut h = [0u8; 4];
            let got = tls.read_exact(&mut h).map(|()| h);
            conn = tls.conn;
            let _ = conn;
            got.ok()
        });
        let (r, _) = probe_over_tls(addr, Duration::from_secs(3));
        let seen = server.join().unwrap();
        assert!(
            matches!(&r, Err(ProbeError::Auth(why)) if why.contains("tls_ca_file")),
            "{r:?}"
        );
        assert_eq!(seen, None, "the server got another packet: the password?");
    }
}
