//! The admin endpoint: HTTP/1.1 (loopback by default), served by the `admin` thread.
//! `GET /metrics` is the Prometheus text format ([`metrics`], then the latency histograms of
//! [`crate::latency`]), `GET /stats` the JSON [`Snapshot`](crate::stats::Snapshot), and
//! `GET /histogram` the latency histograms as a table, an HdrHistogram log or JSON percentiles;
//! [`stats_table`] and [`histogram`] are the clients behind `ringlb stats` and `ringlb histogram`.
//!
//! The `admin` thread accepts; each connection is served on a thread of its own, at most
//! [`MAX_HANDLERS`] at once, and one more is answered `503` at once by the accepting thread. What
//! bounds the harm one client can do is the 2 s budget for reading a request head (8 KiB at
//! most): a slow or silent client holds one handler for 2 s at worst, and slow clients together
//! can only make others retry, never wait behind them. Every response has `Content-Length` and
//! `Connection: close`. The thread reads atomics (through [`SharedState::snapshot`]), locks each
//! worker's latency histograms only to merge them ([`SharedState::latency`]), and never panics on what
//! a client sends.
//!
//! Reads are open to whoever reaches the address; changes (`POST /reload`, `POST /backend/...`)
//! pass [`auth::authorize`] first: the admin token, or loopback and the `X-Ringlb-Admin` header.

pub mod auth;
pub mod histograms;
pub mod http;
pub mod metrics;
pub mod table;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::latency;
use crate::shared::SharedState;
use auth::Guard;
use http::{HeadError, RequestHead, MAX_HEAD_BYTES};

/// Budget for receiving a request head, and for sending the response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// After the response, how long unread request bytes are drained so that closing does not reset
/// the connection (a reset can destroy the response before the client reads it).
const LINGER: Duration = Duration::from_millis(200);
const LINGER_MAX_BYTES: usize = 64 * 1024;
/// The linger of a `503` answered by the accepting thread.
const BUSY_LINGER: Duration = Duration::from_millis(50);

/// What `POST /reload` runs: reloads the configuration, answering one line either way.
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What `POST /backend/HOST:PORT/promote` runs: makes the named backend the writer of its
/// writer pools, answering one line either way.
pub type PromoteHook = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What runs after the operator changed a backend's state (`drain`, `disable`, `enable`): the
/// writer elections of the pools that have it, at once.
pub type AdminStateHook = Arc<dyn Fn(&str) + Send + Sync>;

/// What the endpoint can change beyond the backend table: each absent in tests that do not
/// need it.
#[derive(Default, Clone)]
pub struct Hooks {
    pub reload: Option<ReloadHook>,
    pub promote: Option<PromoteHook>,
    pub admin_state: Option<AdminStateHook>,
}

/// Starts the `admin` thread serving HTTP on an already bound listener; `guard` is what a change
/// needs.
pub fn spawn(
    listener: TcpListener,
    shared: Arc<SharedState>,
    hooks: Hooks,
    guard: Guard,
) -> io::Result<JoinHandle<()>> {
    // The accept loop blocks: make sure the socket does, whatever the caller set on it.
    listener.set_nonblocking(false)?;
    let context = Arc::new(Context {
        shared,
        hooks,
        guard,
        busy: AtomicUsize::new(0),
        refusal_logged: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || serve(&listener, &context))
}

/// Connections served at once; one more gets `503` straight away.
pub const MAX_HANDLERS: usize = 4;

/// What the endpoint serves from.
struct Context {
    shared: Arc<SharedState>,
    hooks: Hooks,
    guard: Guard,
    /// Connections being served now.
    busy: AtomicUsize,
    /// The second (since the epoch) of the last refused change logged: at most one line a
    /// second, so that a flood of refused requests cannot flood the log.
    refusal_logged: AtomicU64,
}

/// Counts one handler while it lives.
struct Busy(Arc<Context>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Fetches `/stats` from a running ringlb and renders it as a table (`ringlb stats`).
/// Errors are one line naming the admin address.
pub fn stats_table(admin: std::net::SocketAddr) -> Result<String, String> {
    table::fetch(admin).map(|snapshot| table::render(&snapshot))
}

/// How `GET /histogram` shows the latency histograms (`?format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistogramFormat {
    /// [`histograms::report`]: a table for people.
    Text,
    /// [`latency::hdr_log`]: an HdrHistogram interval log.
    Hdr,
    /// [`latency::percentiles`] as JSON.
    Json,
}

impl HistogramFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            HistogramFormat::Text => "text",
            HistogramFormat::Hdr => "hdr",
            HistogramFormat::Json => "json",
        }
    }

    pub fn parse(name: &str) -> Option<HistogramFormat> {
        [HistogramFormat::Text, HistogramFormat::Hdr, HistogramFormat::Json]
            .into_iter()
            .find(|f| f.as_str() == name)
    }
}

/// Fetches `/histogram` in `format`, of one backend or all, from a running ringlb (`ringlb
/// histogram`). Errors are one line naming the admin address, or the endpoint's own line (an
/// unknown backend).
pub fn histogram(
    admin: std::net::SocketAddr,
    format: HistogramFormat,
    backend: Option<&str>,
) -> Result<String, String> {
    let mut path = format!("/histogram?format={}", format.as_str());
    if let Some(backend) = backend {
        path.push_str("&backend=");
        path.push_str(&http::encode_query_value(backend));
    }
    table::fetch_text(admin, &path)
}

fn serve(listener: &TcpListener, context: &Arc<Context>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => dispatch(stream, context),
            // ECONNABORTED and friends concern one connection; EMFILE/ENFILE would repeat at once,
            // so wait a little before the next try instead of spinning.
            Err(e)
                if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::ConnectionAborted => {
            }
            Err(e) => {
                tracing::warn!("admin: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Serves `stream` on a handler thread of its own, or answers 503 when [`MAX_HANDLERS`] are busy.
fn dispatch(mut stream: TcpStream, context: &Arc<Context>) {
    let admitted = context
        .busy
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_HANDLERS).then_some(n + 1)
        })
        .is_ok();
    if !admitted {
        let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
        let busy = format!("admin endpoint busy: {MAX_HANDLERS} requests in progress; retry");
        if stream.write_all(&error_response(503, &busy)).is_ok() {
            // A short linger, so the unread request does not turn the close into a reset that
            // destroys the answer; short, since this is the accepting thread's time.
            linger_close_within(stream, BUSY_LINGER);
        }
        return;
    }
    let guard = Busy(context.clone());
    let spawned = std::thread::Builder::new()
        .name("admin-conn".into())
        .spawn(move || {
            let guard = guard;
            handle(stream, &guard.0);
        });
    if let Err(e) = spawned {
        // The stream went with the closure that could not run; the client sees it closed.
        tracing::warn!("admin: cannot start a handler thread: {e}");
    }
}

/// What came of reading a request head.
enum Incoming {
    /// The head is in the buffer.
    Complete,
    Error(HeadError),
    /// The client stopped sending (closed or timed out) before the head was complete.
    Gone,
    TimedOut,
}

fn handle(mut stream: TcpStream, context: &Context) {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let (len, incoming) = read_head(&mut stream, &mut buf);
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let response = match incoming {
        Incoming::Complete => match http::parse_request_head(&buf[..len]) {
            Ok(Some(head)) => route(&head, peer, context),
            Ok(None) => error_response(400, "incomplete request head"),
            Err(e) => head_error_response(e),
        },
        Incoming::Error(e) => head_error_response(e),
        Incoming::TimedOut => error_response(408, "request head not received in time"),
        Incoming::Gone => return,
    };
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    if stream.write_all(&response).is_err() {
        return;
    }
    linger_close(stream);
}

/// Reads until the head is complete, malformed, over the cap, or the time budget is spent.
fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> (usize, Incoming) {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut len = 0;
    loop {
        match http::parse_request_head(&buf[..len]) {
            Ok(Some(_)) => return (len, Incoming::Complete),
            Err(e) => return (len, Incoming::Error(e)),
            Ok(None) => {}
        }
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return (len, Incoming::TimedOut);
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            return (len, Incoming::Gone);
        }
        match stream.read(&mut buf[len..]) {
            // EOF before a complete head: if it sent something, tell it what was wrong.
            Ok(0) if len > 0 => {
                return (
                    len,
                    Incoming::Error(HeadError::Malformed("incomplete request head")),
                )
            }
            Ok(0) => return (len, Incoming::Gone),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return (len, Incoming::TimedOut)
            }
            Err(_) => return (len, Incoming::Gone),
        }
    }
}

fn route(head: &RequestHead<'_>, peer: Option<IpAddr>, context: &Context) -> Vec<u8> {
    let (method, path, query) = (head.method, head.path, head.query);
    let shared = &*context.shared;
    let changes = path == "/reload" || path.starts_with("/backend/");
    if changes && method == "POST" {
        if let Err(refusal) = auth::authorize(&context.guard, peer, head) {
            log_refusal(context, peer, path, &refusal);
            let challenge: &[&str] = if refusal.status == 401 {
                &["WWW-Authenticate: Bearer realm=\"ringlb admin\""]
            } else {
                &[]
            };
            return http::response(
                refusal.status,
                "text/plain; charset=utf-8",
                challenge,
                format!("{}\n", refusal.message).as_bytes(),
            );
        }
    }
    if let Some(rest) = path.strip_prefix("/backend/") {
        return backend_action(method, rest, shared, &context.hooks);
    }
    if path == "/reload" {
        return reload(method, context.hooks.reload.as_ref());
    }
    match path {
        "/metrics" | "/stats" | "/ha" | "/histogram" if method != "GET" => http::response(
            405,
            "text/plain; charset=utf-8",
            &["Allow: GET"],
            b"method not allowed: only GET\n",
        ),
        "/metrics" => {
            let mut body = metrics::render(&shared.snapshot());
            // After the counters and gauges, so that their exposition stays as it was.
            histograms::prometheus(&mut body, &shared.latency());
            let ha = shared.ha.lock().unwrap_or_else(|e| e.into_inner()).clone();
            metrics::render_ha(&mut body, &ha);
            http::response(200, metrics::CONTENT_TYPE, &[], body.as_bytes())
        }
        "/histogram" => histogram_response(query, shared),
        "/stats" => match serde_json::to_vec(&shared.snapshot()) {
            Ok(mut body) => {
                body.push(b'\n');
                http::response(200, "application/json", &[], &body)
            }
            Err(e) => error_response(500, &format!("cannot encode the snapshot: {e}")),
        },
        "/ha" => {
            let status = shared.ha.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match serde_json::to_vec(&status) {
                Ok(mut body) => {
                    body.push(b'\n');
                    http::response(200, "application/json", &[], &body)
                }
                Err(e) => error_response(500, &format!("cannot encode the HA status: {e}")),
            }
        }
        _ => error_response(404, "not found: try /metrics, /stats, /ha or /histogram"),
    }
}

/// Logs a refused change (who, what, why; never a token), at most once a second.
fn log_refusal(context: &Context, peer: Option<IpAddr>, path: &str, refusal: &auth::Refusal) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if context.refusal_logged.swap(now, Ordering::Relaxed) == now {
        return;
    }
    let peer = peer.map_or_else(|| "an unknown address".to_string(), |ip| ip.to_string());
    // The path is the client's: cut it, and print it escaped, so it cannot forge log lines.
    let path: String = path.chars().take(120).collect();
    tracing::warn!(
        "admin: refused POST {path:?} from {peer} with HTTP {}: {}",
        refusal.status,
        refusal.message
    );
}

/// `GET /histogram[?format=text|hdr|json][&backend=HOST:PORT]`: the latency histograms of every
/// backend, or of the one named (in every listener that has it).
fn histogram_response(query: &str, shared: &SharedState) -> Vec<u8> {
    let pairs = match http::parse_query(query) {
        Ok(pairs) => pairs,
        Err(e) => return error_response(400, e),
    };
    let mut format = HistogramFormat::Text;
    let mut backend = None;
    for (name, value) in pairs {
        match name.as_str() {
            "format" => match HistogramFormat::parse(&value) {
                Some(f) => format = f,
                None => return error_response(400, &format!("format {value:?}: expected text, hdr or json")),
            },
            "backend" => backend = Some(value),
            _ => {
                return error_response(
                    400,
                    &format!("unknown query parameter {name:?}: expected format or backend"),
                )
            }
        }
    }
    if let Some(name) = &backend {
        if !shared.table().all.iter().any(|b| b.name == *name) {
            return error_response(404, &format!("no backend {name:?} (names as in /stats)"));
        }
    }
    let mut entries = shared.latency();
    if let Some(name) = &backend {
        entries.retain(|e| e.backend == *name);
    }
    match format {
        HistogramFormat::Text => http::response(
            200,
            "text/plain; charset=utf-8",
            &[],
            histograms::report(&entries).as_bytes(),
        ),
        HistogramFormat::Hdr => {
            let log = latency::hdr_log(
                &entries,
                latency::earliest_since(&entries),
                std::time::SystemTime::now(),
            );
            http::response(200, "text/plain; charset=utf-8", &[], &log)
        }
        HistogramFormat::Json => match serde_json::to_vec(&latency::percentiles(&entries)) {
            Ok(mut body) => {
                body.push(b'\n');
                http::response(200, "application/json", &[], &body)
            }
            Err(e) => error_response(500, &format!("cannot encode the percentiles: {e}")),
        },
    }
}

/// `POST /reload`: re-reads the configuration file; 200 with a JSON summary, or 409 with one
/// line saying why the new configuration was refused (the running one stays).
fn reload(method: &str, hook: Option<&ReloadHook>) -> Vec<u8> {
    if method != "POST" {
        return http::response(
            405,
            "text/plain; charset=utf-8",
            &["Allow: POST"],
            b"method not allowed: POST /reload\n",
        );
    }
    let Some(hook) = hook else {
        return error_response(404, "reload is not available here");
    };
    let summary = match hook() {
        Ok(summary) => summary,
        Err(error) => {
            return error_response(
                409,
                &format!("reload refused, the running configuration stays: {error}"),
            )
        }
    };
    let mut body = serde_json::json!({ "reloaded": true, "summary": summary })
        .to_string()
        .into_bytes();
    body.push(b'\n');
    http::response(200, "application/json", &[], &body)
}

/// `POST /backend/HOST:PORT/drain|disable|enable`: the operator's say over a backend, in every
/// listener that has it. New connections follow at once; open ones finish as they would, except
/// in a writer pool with `on_writer_change = "close"`, where a drained or disabled writer loses
/// its role at once and its connections are reset like any former writer's.
/// `POST /backend/HOST:PORT/promote`: a switchover of the writer role to it.
fn backend_action(method: &str, rest: &str, shared: &SharedState, hooks: &Hooks) -> Vec<u8> {
    if method != "POST" {
        return http::response(
            405,
            "text/plain; charset=utf-8",
            &["Allow: POST"],
            b"method not allowed: POST /backend/HOST:PORT/drain|disable|enable|promote\n",
        );
    }
    let Some((name, action)) = rest.rsplit_once('/') else {
        return error_response(
            404,
            "not found: POST /backend/HOST:PORT/drain|disable|enable|promote",
        );
    };
    if action == "promote" {
        if !shared.table().all.iter().any(|b| b.name == name) {
            return error_response(404, &format!("no backend {name:?} (names as in /stats)"));
        }
        let Some(promote) = &hooks.promote else {
            return error_response(409, "promote is not available in this process");
        };
        return match promote(name) {
            Ok(summary) => {
                tracing::info!(backend = %name, "writer promoted by the operator");
                let body = serde_json::json!({ "backend": name, "state": "writer", "summary": summary });
                let mut body = body.to_string().into_bytes();
                body.push(b'\n');
                http::response(200, "application/json", &[], &body)
            }
            Err(why) => error_response(409, &why),
        };
    }
    let Some(state) = crate::balance::AdminState::parse(action) else {
        return error_response(
            400,
            &format!("{action:?}: expected drain, disable, enable or promote"),
        );
    };
    let matched = shared.table().set_admin_state(name, state);
    if matched == 0 {
        return error_response(404, &format!("no backend {name:?} (names as in /stats)"));
    }
    if let Some(changed) = &hooks.admin_state {
        changed(name);
    }
    tracing::info!(backend = %name, state = state.as_str(), listeners = matched, "backend state set by the operator");
    let body = serde_json::json!({ "backend": name, "state": state.as_str(), "listeners": matched });
    let mut body = body.to_string().into_bytes();
    body.push(b'\n');
    http::response(200, "application/json", &[], &body)
}

fn head_error_response(e: HeadError) -> Vec<u8> {
    match e {
        HeadError::TooLarge => error_response(431, &e.to_string()),
        HeadError::Malformed(_) => error_response(400, &e.to_string()),
    }
}

fn error_response(status: u16, message: &str) -> Vec<u8> {
    http::response(
        status,
        "text/plain; charset=utf-8",
        &[],
        format!("{message}\n").as_bytes(),
    )
}

/// Closes gracefully: FIN first, then drain what the client still sends for a moment, so the
/// kernel does not answer unread bytes with a reset that could discard the response in flight.
fn linger_close(stream: TcpStream) {
    linger_close_within(stream, LINGER);
}

/// [`linger_close`] draining for at most `linger`.
fn linger_close_within(mut stream: TcpStream, linger: Duration) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + linger;
    let mut drained = 0;
    let mut sink = [0u8; 4096];
    while drained < LINGER_MAX_BYTES {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            return;
        };
        if stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}
