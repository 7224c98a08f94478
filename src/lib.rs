//! ringlb: a thread-per-core io_uring (or epoll) load balancer for MySQL and MariaDB.
//!
//! # Layout
//!
//! | module | job |
//! |---|---|
//! | [`cli`] | the clap command line: `run`, `check`, `stats`, `histogram`; turns errors into one line and an exit code |
//! | [`config`] | TOML file plus flags, parsed then validated into a typed [`config::Config`] |
//! | [`runtime`] | binds sockets, starts the threads below, waits for a signal |
//! | [`dataplane`] | the workers: each connection's pure state machine ([`dataplane::conn`]), the worker that feeds it (accept, queue, reload), and its I/O driver, io_uring or epoll |
//! | [`balance`] | the shared backend table (atomics only), its servers and writer groups, and the least-connections choice narrowed by the listener's role |
//! | [`health`] | the checker threads: MySQL greeting and login, or TCP; rise/fall hysteresis; server state (read_only, replica status, Galera) and the writer elections of role pools |
//! | [`proxy_protocol`] | PROXY protocol v1/v2 headers sent to backends ahead of a client's bytes (`send_proxy`) |
//! | [`ha`] | the HA sidecar: signed heartbeats with the peer node, the state machine that moves the floating IP, netlink for the address, gratuitous ARP |
//! | [`admin`] | HTTP (loopback by default): `/metrics` (Prometheus), `/stats` (JSON), `/histogram` open to all; `/reload` and `/backend/...` behind the admin token or loopback ([`admin::auth`]); the clients behind `ringlb stats`, `backend`, `reload` and `histogram` |
//! | [`shared`] | [`shared::SharedState`]: what every thread shares (the backend table, the workers' wakers and counters, the HA status, the stop flag) |
//! | [`stats`] | per-worker counters and the [`stats::Snapshot`] every view renders |
//! | [`latency`] | per-backend latency histograms (connect, first byte, lifetime) and their table, HdrHistogram log and Prometheus views |
//! | [`clock`] | a cheap monotonic millisecond clock shared by all threads |
//!
//! # Threads
//!
//! | thread | owns | talks to others through |
//! |---|---|---|
//! | main | config, binding, signals | joins the rest |
//! | `worker-N` × cores, pinned | one I/O driver (an io_uring, or an epoll set where io_uring is refused), one SO_REUSEPORT listener per listener, its connections and pipes | the backend table's atomics; its own counters |
//! | `health-N`, one per server | one probe per interval, with the state reads its pools need | the server's atomics (`up`, what it qualifies as, lag); a writer group's election under its mutex, published in one atomic; wakes the workers when a former writer's connections must close |
//! | `ha` (with `[ha]`) | the heartbeat UDP socket, the VIP, gratuitous ARP | reads backend health; writes the status `GET /ha` shows |
//! | `admin` | the admin HTTP socket | reads atomics and the HA status; locks each worker's latency histograms briefly to merge them |
//!
//! No contended lock is taken on the data path: a worker's connections never leave it, and what
//! workers share is a table of cache-padded atomics. The one mutex a worker takes is its own
//! latency histograms' ([`balance::BackendStats::latency`]), which only the admin thread also
//! takes, for a merge of a few microseconds per scrape.

pub mod admin;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod ha;
pub mod health;
pub mod latency;
pub mod proxy_protocol;
pub mod reload;
pub mod runtime;
pub mod shared;
pub mod stats;
