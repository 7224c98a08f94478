//! `ringlb stats`: fetch `/stats` from a running instance and render it as an aligned table. The
//! fetch is also every other client command's ([`fetch_json`], [`post_json`], [`fetch_text`]).
//!
//! The fetch is a plain blocking HTTP/1.1 GET bounded by timeouts, so a wedged instance cannot
//! hang the command. Errors are one line naming the admin address, which is what the operator
//! must check.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::http;
use crate::config::Secret;
use crate::stats::Snapshot;

/// Bound on the connect, and on the whole exchange after it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// A /stats body is a few hundred bytes per backend; anything near this is not ringlb.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Fetches and parses `/stats`; the error is one line naming `admin`.
pub fn fetch(admin: SocketAddr) -> Result<Snapshot, String> {
    fetch_json(admin, "/stats")
}

/// GETs `path` from the admin endpoint and parses its JSON body; the error is one line naming
/// `admin`.
pub fn fetch_json<T: serde::de::DeserializeOwned>(admin: SocketAddr, path: &str) -> Result<T, String> {
    exchange_json(admin, "GET", path, "")
}

/// POSTs to `path` (an empty body) with the [`auth::ADMIN_HEADER`](super::auth::ADMIN_HEADER)
/// and, given one, the admin token, and parses the JSON answer; the error is one line naming
/// `admin`, or the endpoint's own one-line answer.
pub fn post_json<T: serde::de::DeserializeOwned>(
    admin: SocketAddr,
    path: &str,
    token: Option<&Secret>,
) -> Result<T, String> {
    let mut headers = format!("{}: 1\r\n", super::auth::ADMIN_HEADER);
    if let Some(token) = token {
        // Checked printable ASCII when it was read (config::load_admin_token).
        headers.push_str("Authorization: Bearer ");
        headers.push_str(&String::from_utf8_lossy(token.as_bytes()));
        headers.push_str("\r\n");
    }
    exchange_json(admin, "POST", path, &headers)
}

fn exchange_json<T: serde::de::DeserializeOwned>(
    admin: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Result<T, String> {
    let body = exchange(admin, method, path, "application/json", headers)?;
    serde_json::from_slice(&body).map_err(|e| format!("{admin}: invalid {path} JSON: {e}"))
}

/// GETs `path` from the admin endpoint and returns its body as text; the error is one line
/// naming `admin`, or the endpoint's own one-line answer.
pub fn fetch_text(admin: SocketAddr, path: &str) -> Result<String, String> {
    let body = exchange(admin, "GET", path, "text/plain", "")?;
    String::from_utf8(body)
        .map_err(|_| format!("{admin}: {path} is not UTF-8 text: is this a ringlb admin endpoint?"))
}

/// One request, the body of a 200 answer back. A 4xx with a one-line body becomes that line.
/// `headers` are whole header lines, each ending in CRLF.
fn exchange(
    admin: SocketAddr,
    method: &str,
    path: &str,
    accept: &str,
    headers: &str,
) -> Result<Vec<u8>, String> {
    let fail = |what: String| format!("{admin}: {what}");
    let mut stream = TcpStream::connect_timeout(&admin, CONNECT_TIMEOUT).map_err(|e| fail(describe(&e)))?;
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    stream
        .set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(|e| fail(describe(&e)))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nAccept: {accept}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(describe(&e)))?;

    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                fail(format!(
                    "no complete answer within {} s",
                    EXCHANGE_TIMEOUT.as_secs()
                ))
            })?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| fail(describe(&e)))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&chunk[..n]);
                if response.len() > MAX_RESPONSE_BYTES {
                    return Err(fail("answer too large: is this a ringlb admin endpoint?".into()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(describe(&e))),
        }
    }
    let (status, body) = http::parse_response(&response)
        .map_err(|e| fail(format!("{e}: is this a ringlb admin endpoint?")))?;
    if status != 200 {
        let said = String::from_utf8_lossy(body);
        let said = said.trim();
        if (400..500).contains(&status) && !said.is_empty() && !said.contains('\n') {
            return Err(fail(said.to_string()));
        }
        return Err(fail(format!("{method} {path} answered HTTP {status}")));
    }
    Ok(body.to_vec())
}

/// Words for an I/O error that tell the operator what to check.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused: is ringlb running?".into(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            "timed out: is ringlb running and reachable?".into()
        }
        io::ErrorKind::ConnectionReset => "connection reset: is this a ringlb admin endpoint?".into(),
        _ => e.to_string(),
    }
}

/// Renders the snapshot: one row per backend, then the per-worker accepted counts.
pub fn render(snapshot: &Snapshot) -> String {
    let header = [
        "LISTENER",
        "BACKEND",
        "STATE",
        "ROLE",
        "LAG",
        "ACTIVE",
        "CONNECTIONS",
        "CONNECT_ERRORS",
        "BYTES_TO_BACKEND",
        "BYTES_TO_CLIENT",
    ];
    // The first four columns are text (left-aligned), the rest numbers (right-aligned).
    let text_columns = 4;
    let rows: Vec<Vec<String>> = snapshot
        .backends
        .iter()
        .map(|b| {
            vec![
                b.listener.clone(),
                b.backend.clone(),
                if b.up { "up" } else { "down" }.to_string(),
                if b.role.is_empty() { "any" } else { &b.role }.to_string(),
                b.lag_s.map_or("-".to_string(), |lag| format!("{lag}s")),
                b.active_connections.to_string(),
                b.connections_total.to_string(),
                b.connect_errors_total.to_string(),
                b.bytes_to_backend_total.to_string(),
                b.bytes_to_client_total.to_string(),
            ]
        })
        .collect();
    let mut out = String::new();
    aligned(&mut out, &header, &rows, text_columns);
    out.push('\n');
    let worker_rows: Vec<Vec<String>> = snapshot
        .workers
        .iter()
        .map(|w| vec![w.worker.to_string(), w.accepted_total.to_string()])
        .collect();
    aligned(&mut out, &["WORKER", "ACCEPTED"], &worker_rows, 0);
    if !snapshot.driver.is_empty() {
        out.push_str(&format!("\ndriver: {}\n", snapshot.driver));
    }
    out
}

/// Appends `header` and `rows` with columns two spaces apart; columns before `text_columns` are
/// left-aligned, the others right-aligned. No trailing spaces.
pub(crate) fn aligned(out: &mut String, header: &[&str], rows: &[Vec<String>], text_columns: usize) {
    let width = |c: usize| {
        rows.iter()
            .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
            .chain(std::iter::once(header[c].len()))
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let w = widths.get(c).copied().unwrap_or(0);
            if c < text_columns {
                line.push_str(&format!("{cell:<w$}"));
            } else {
                line.push_str(&format!("{cell:>w$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{BackendSnapshot, WorkerSnapshot};

    #[test]
    fn table_aligns_text_left_and_numbers_right() {
        let snapshot = Snapshot {
            driver: String::new(),
            listeners: Vec::new(),
            backends: vec![
                BackendSnapshot {
                    state: "enabled".into(),
                    backend: "db-01:3306".into(),
                    listener: "default".into(),
                    up: true,
                    weight: 1,
                    maxconn: 0,
                    active_connections: 12,
                    connections_total: 3456,
                    connect_errors_total: 0,
                    bytes_to_backend_total: 1_048_576,
                    bytes_to_client_total: 99,
                    role: "writer".into(),
                    ..Default::default()
                },
                BackendSnapshot {
                    state: "enabled".into(),
                    backend: "10.0.0.2:3306".into(),
                    listener: "ro".into(),
                    up: false,
                    weight: 2,
                    maxconn: 0,
                    active_connections: 0,
                    connections_total: 7,
                    connect_errors_total: 3,
                    bytes_to_backend_total: 0,
                    bytes_to_client_total: 0,
                    role: "reader".into(),
                    lag_s: Some(3),
                    ..Default::default()
                },
            ],
            workers: vec![
                WorkerSnapshot {
                    worker: 0,
                    accepted_total: 3000,
                    ..Default::default()
                },
                WorkerSnapshot {
                    worker: 1,
                    accepted_total: 463,
                    ..Default::default()
                },
            ],
        };
        let expected = "\
LISTENER  BACKEND        STATE  ROLE    LAG  ACTIVE  CONNECTIONS  CONNECT_ERRORS  BYTES_TO_BACKEND  BYTES_TO_CLIENT
default   db-01:3306     up     writer    -      12         3456               0           1048576               99
ro        10.0.0.2:3306  down   reader   3s       0            7               3                 0                0

WORKER  ACCEPTED
     0      3000
     1       463
";
        assert_eq!(render(&snapshot), expected);
    }

    #[test]
    fn empty_snapshot_renders_headers_only() {
        let out = render(&Snapshot::default());
        assert_eq!(
            out,
            "LISTENER  BACKEND  STATE  ROLE  LAG  ACTIVE  CONNECTIONS  CONNECT_ERRORS  BYTES_TO_BACKEND  BYTES_TO_CLIENT\n\nWORKER  ACCEPTED\n"
        );
    }

    #[test]
    fn refused_connect_names_the_address_and_asks_if_ringlb_runs() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(
            fetch(addr),
            Err(format!("{addr}: connection refused: is ringlb running?"))
        );
    }
}
