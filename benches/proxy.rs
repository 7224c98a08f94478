//! `cargo bench`: ringlb against HAProxy and against no proxy at all, on one machine.
//!
//! It starts everything itself on 127.0.0.1: two MariaDB servers (the test harness's), ringlb
//! (the release binary cargo built for this bench), HAProxy from the OS package in the
//! foreground as a child (TCP mode, `balance leastconn`, `option splice-auto`, checks every
//! second like ringlb's default, `nbthread` equal to ringlb's workers), and a direct baseline
//! (clients straight to the first MariaDB server, or straight to the sink for the bulk load).
//!
//! Workloads, each run for the proxies alternately (ringlb, HAProxy, ringlb, HAProxy...; the
//! direct baseline after each pair) because the machine is shared and noisy:
//!
//! - (a) mysqlslap, 32 clients, `SELECT 1`: queries / wall time of the mysqlslap process.
//! - (b) sysbench `oltp_point_select`, 32 threads: its queries/s and its latency histogram.
//!   In full mode ringlb with `[tuning] relay = "splice"` runs too, as an extra column.
//! - (c) connection churn: threads that connect, log in, run `SELECT 1` and quit, for a fixed
//!   time; connections/s and the latency of each whole connection.
//! - (d) bulk: pseudo-random streams through the proxy to a sink that checksums what it reads
//!   and answers with its count and CRC; the sender compares them with its own. Gbit/s.
//! - (e) 5,000 idle MySQL sessions held through a freshly started proxy: its RSS, descriptors,
//!   pipes, and the CPU it uses over a few idle seconds.
//!
//! For each run: throughput, the proxy's CPU (utime + stime of every thread, sampled before and
//! after the run) per query, connection or GiB, and client-side latency from an HdrHistogram.
//! Output: a table on stdout, `target/bench/results.json`, one HdrHistogram interval log per
//! workload and target, and `target/bench/latency-b.png`.
//!
//! `RINGLB_BENCH_TUNING="pin_workers = false; buffers = 64"` adds `[tuning]` keys to ringlb's
//! configuration. Every workload has a column for ringlb on its epoll driver (`ringlb-epoll`),
//! and `RINGLB_BENCH_BASELINE=/path/to/ringlb` adds one for another build (`baseline`: the
//! binary before a change, measured side by side with it).
//! `RINGLB_BENCH_QUICK=1` runs one pair of shorter runs (the smoke test in scripts/test);
//! `RINGLB_BENCH_WORKERS` sets both proxies' worker threads (default 1: the clients and MariaDB
//! need the other core of a 2-core machine). The bench fails (non-zero exit) only when the
//! harness itself breaks: a tool missing, a checksum mismatch, a workload that completes
//! nothing. A ratio that misses its target is reported, never fatal.
//!
//! Every child process is started from the main thread with `PR_SET_PDEATHSIG`, so nothing
//! outlives the bench, even when it panics or is killed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::Histogram;
use mysql::prelude::Queryable;
use mysql::Conn;
use serde_json::{json, Value};

use support::{Descriptors, MariaDb, Ringlb, TempDir};

/// Client threads of workloads (a) and (b), as the performance targets name them.
const CLIENTS: usize = 32;
/// Rows in sysbench's table: small enough to stay in the servers' 16 MiB buffer pools.
const SYSBENCH_ROWS: u32 = 10_000;
/// Client threads that churn connections in (c).
const CHURN_THREADS: usize = 8;
/// Streams of the bulk load (d), as in the reference iperf3 figures.
const BULK_STREAMS: usize = 4;
/// Connections held in (e), and the threads that open them.
const IDLE_CONNECTIONS: usize = 5_000;
const IDLE_OPENERS: usize = 16;
/// Per-server connection limit: (e) puts about 2,500 on each server, plus health checks.
const SERVER_MAX_CONNECTIONS: &str = "--max-connections=4000";
/// HAProxy's connection limit: above (e)'s 5,000 and low enough that the descriptors it asks
/// for (two per connection) fit under this machine's 20,000 open-file limit.
const HAPROXY_MAXCONN: u32 = 6_000;
/// Bound on any single client operation or child process beyond its planned duration.
const GRACE: Duration = Duration::from_secs(120);
/// Histogram range: 1 µs to 60 s, 3 significant digits.
const HIST_MAX_US: u64 = 60_000_000;

// ---------------------------------------------------------------------------------------------
// Settings

/// Sizes of one benchmark invocation: full (`cargo bench`) or quick (`RINGLB_BENCH_QUICK=1`).
#[derive(Debug, Clone, serde::Serialize)]
struct Settings {
    quick: bool,
    /// Worker threads of ringlb and `nbthread` of HAProxy.
    workers: usize,
    /// ringlb/HAProxy pairs per workload.
    pairs: usize,
    /// (a) queries per mysqlslap run (over all 32 clients).
    slap_queries: u64,
    /// (b) seconds per sysbench run.
    sysbench_secs: u64,
    /// (b) whether ringlb with `relay = "splice"` runs as an extra column.
    splice_column: bool,
    /// (c) seconds per churn run.
    churn_secs: f64,
    /// (d) bytes per stream per run.
    bulk_stream_bytes: u64,
    /// (e) seconds the idle connections are watched.
    idle_secs: f64,
    /// Workloads to run (`RINGLB_BENCH_ONLY=bd` runs (b) and (d) only); all by default.
    /// `RINGLB_BENCH_PAIRS` overrides `pairs`.
    only: String,
}

impl Settings {
    fn runs(&self, workload: &str) -> bool {
        self.only.contains(workload)
    }

    fn from_env() -> Settings {
        let quick = std::env::var("RINGLB_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let workers = match std::env::var("RINGLB_BENCH_WORKERS") {
            Ok(text) => text.parse::<usize>().ok().filter(|&n| n >= 1).unwrap_or_else(|| {
                panic!("RINGLB_BENCH_WORKERS={text:?} is not a number of threads (1 or more)")
            }),
            Err(_) => 1,
        };
        let only = std::env::var("RINGLB_BENCH_ONLY").unwrap_or_else(|_| "abcde".into());
        if let Some(bad) = only.chars().find(|c| !"abcde".contains(*c)) {
            panic!("RINGLB_BENCH_ONLY={only:?}: {bad:?} is not a workload (a to e)");
        }
        let mut settings = if quick {
            Settings {
                only,
                quick,
                workers,
                pairs: 1,
                slap_queries: 40_000,
                sysbench_secs: 3,
                splice_column: false,
                churn_secs: 2.0,
                bulk_stream_bytes: 256 << 20,
                idle_secs: 2.0,
            }
        } else {
            Settings {
                only,
                quick,
                workers,
                pairs: 3,
                slap_queries: 200_000,
                sysbench_secs: 10,
                splice_column: true,
                churn_secs: 8.0,
                bulk_stream_bytes: 512 << 20,
                idle_secs: 5.0,
            }
        };
        if let Ok(text) = std::env::var("RINGLB_BENCH_PAIRS") {
            settings.pairs = text.parse::<usize>().ok().filter(|&n| n >= 1).unwrap_or_else(|| {
                panic!("RINGLB_BENCH_PAIRS={text:?} is not a number of pairs (1 or more)")
            });
        }
        settings
    }
}

// ---------------------------------------------------------------------------------------------
// Targets and runs

/// What the clients connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Ringlb,
    Haproxy,
    Direct,
    /// ringlb with `[tuning] relay = "splice"`: every byte through pipes.
    RinglbSplice,
    /// ringlb with `[tuning] driver = "epoll"`: where io_uring is refused.
    RinglbEpoll,
    /// Another ringlb binary (`RINGLB_BENCH_BASELINE`), e.g. the build before a change.
    Baseline,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ringlb => "ringlb",
            Target::Haproxy => "haproxy",
            Target::Direct => "direct",
            Target::RinglbSplice => "ringlb-splice",
            Target::RinglbEpoll => "ringlb-epoll",
            Target::Baseline => "baseline",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::Ringlb => "ringlb",
            Target::Haproxy => "HAProxy",
            Target::Direct => "direct",
            Target::RinglbSplice => "ringlb splice",
            Target::RinglbEpoll => "ringlb epoll",
            Target::Baseline => "baseline",
        }
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Latency {
    count: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(hist: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: hist.len(),
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}

/// One measured run of one workload against one target.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    workload: &'static str,
    target: &'static str,
    /// Which ringlb/HAProxy pair this run belongs to (0-based).
    pair: usize,
    /// Seconds since the epoch when the run started.
    started_unix_s: f64,
    wall_s: f64,
    /// Queries, connections or bytes completed.
    ops: u64,
    /// In the workload's unit (queries/s, connections/s, Gbit/s).
    throughput: f64,
    /// The proxy's utime + stime over the run; `None` for the direct baseline.
    proxy_cpu_s: Option<f64>,
    /// The proxy's CPU per unit of work in the workload's CPU unit.
    cpu_per_unit: Option<f64>,
    latency: Option<Latency>,
    /// Operations that failed (counted, reported, and fatal only when nothing succeeded).
    errors: u64,
    /// Workload-specific figures ((e): RSS, descriptors, idle CPU...).
    extra: BTreeMap<&'static str, f64>,
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

fn record_us(hist: &mut Histogram<u64>, elapsed: Duration) {
    let us = (elapsed.as_micros() as u64).clamp(1, HIST_MAX_US);
    hist.record(us).expect("value clamped into the histogram's range");
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `work` and measures its wall time and, when `pid` is a proxy, the proxy's CPU seconds
/// over exactly that window.
fn measure<T>(pid: Option<u32>, work: impl FnOnce() -> T) -> (T, f64, Option<f64>) {
    let cpu_before = pid.map(support::cpu_seconds);
    let start = Instant::now();
    let out = work();
    let wall = start.elapsed().as_secs_f64();
    let cpu = pid.map(support::cpu_seconds).zip(cpu_before).map(|(a, b)| a - b);
    (out, wall, cpu)
}

/// System-wide figures around a run, to tell a proxy's outlier from a noisy machine: the load
/// average, and the kernel's TCP counters (retransmitted segments, listen-queue overflows and
/// drops, retransmission timeouts) whose change over the run is recorded.
struct SystemSnapshot {
    counters: BTreeMap<&'static str, f64>,
}

/// (file, line prefix, counter, name in a run's `extra`).
const TCP_COUNTERS: &[(&str, &str, &str, &str)] = &[
    ("/proc/net/snmp", "Tcp:", "RetransSegs", "tcp_retrans_segs"),
    (
        "/proc/net/netstat",
        "TcpExt:",
        "ListenOverflows",
        "tcp_listen_overflows",
    ),
    ("/proc/net/netstat", "TcpExt:", "ListenDrops", "tcp_listen_drops"),
    ("/proc/net/netstat", "TcpExt:", "TCPTimeouts", "tcp_timeouts"),
];

impl SystemSnapshot {
    fn take() -> SystemSnapshot {
        let mut counters = BTreeMap::new();
        for (file, prefix, counter, name) in TCP_COUNTERS {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            // Each table is a header line and a value line with the same prefix.
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
            if let [header, values] = lines[..] {
                let value = header
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(h, _)| h == counter)
                    .and_then(|(_, v)| v.parse::<f64>().ok());
                if let Some(value) = value {
                    counters.insert(*name, value);
                }
            }
        }
        SystemSnapshot { counters }
    }

    /// Records the counters' change since `self`, and the load average now, in `run.extra`.
    fn record_delta(&self, run: &mut Run) {
        let now = SystemSnapshot::take();
        for (name, before) in &self.counters {
            if let Some(after) = now.counters.get(name) {
                run.extra.insert(name, after - before);
            }
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        if let Some(one_minute) = load.split_whitespace().next().and_then(|v| v.parse().ok()) {
            run.extra.insert("loadavg_1m", one_minute);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// Runs a client tool to completion within `limit`, its output captured; panics (a harness
/// failure) if it cannot start, overruns or exits non-zero.
fn run_tool(mut command: Command, limit: Duration, what: &str) -> String {
    let dir = TempDir::new("rlb-tool");
    let out_path = dir.path().join("out");
    let out = std::fs::File::create(&out_path).expect("create tool output file");
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone output handle"))
        .stderr(out);
    support::die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", command.get_program()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for a client tool") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: still running after {limit:?}; output:\n{}",
                support::log_tail(&out_path, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(status.success(), "{what}: exited with {status}; output:\n{text}");
    text
}

/// First line of `program args...`'s output, for the machine description.
fn version_of(program: &str, args: &[&str]) -> String {
    Command::new(support::find_program(program))
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// HAProxy from the OS package, in the foreground (`-db`) as our child. Killed on drop.
struct Haproxy {
    dir: TempDir,
    child: Option<Child>,
    listen: SocketAddr,
    stats: SocketAddr,
    servers: usize,
}

/// How HAProxy checks its servers.
#[derive(Clone, Copy)]
enum HaproxyCheck {
    /// `option mysql-check user ringlb_check post-41`: a login and a clean quit, as ringlb's
    /// mysql check does (a bare TCP check counts in MariaDB's Aborted_connects).
    Mysql,
    /// Plain `check`: a TCP connect.
    Tcp,
}

impl Haproxy {
    fn start(backends: &[SocketAddr], workers: usize, check: HaproxyCheck) -> Haproxy {
        let program = support::find_program("haproxy");
        let mut dir = TempDir::new("rlb-hap");
        for _attempt in 0..5 {
            let listen = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
            let stats = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
            let check_option = match check {
                HaproxyCheck::Mysql => {
                    format!("    option mysql-check user {} post-41\n", support::CHECK_USER)
                }
                HaproxyCheck::Tcp => String::new(),
            };
            let mut servers = String::new();
            for (i, backend) in backends.iter().enumerate() {
                servers.push_str(&format!("    server s{i} {backend} check inter 1s\n"));
            }
            let config = format!(
                "global\n    nbthread {workers}\n    maxconn {HAPROXY_MAXCONN}\n\n\
                 defaults\n    mode tcp\n    option splice-auto\n    timeout connect 1s\n\
                 \x20   timeout client 1h\n    timeout server 1h\n    retries 3\n    option redispatch\n\n\
                 listen stats\n    bind {stats}\n    mode http\n    stats enable\n    stats uri /stats\n\n\
                 listen proxy\n    bind {listen}\n    balance leastconn\n{check_option}{servers}"
            );
            let config_path = dir.path().join("haproxy.cfg");
            std::fs::write(&config_path, config).expect("write haproxy.cfg");
            let log = dir.path().join("haproxy.log");
            let log_file = std::fs::File::create(&log).expect("create haproxy.log");
            let mut command = Command::new(&program);
            command
                .arg("-f")
                .arg(&config_path)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("clone log handle"))
                .stderr(log_file);
            support::die_with_parent(&mut command);
            let child = command.spawn().unwrap_or_else(|e| panic!("start haproxy: {e}"));
            let mut haproxy = Haproxy {
                dir,
                child: Some(child),
                listen,
                stats,
                servers: backends.len(),
            };
            match haproxy.wait_ready() {
                Ok(()) => return haproxy,
                Err(tail) if tail.contains("cannot bind") || tail.contains("Address already in use") => {
                    dir = haproxy.take_dir();
                    continue;
                }
                Err(tail) => panic!("haproxy did not start; its log:\n{tail}"),
            }
        }
        panic!("haproxy: no free port pair after 5 attempts");
    }

    /// Waits until HAProxy serves its stats page with every server UP; the log tail if it exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("exited with {status}\n{}", self.log_tail()));
                }
            }
            if let Ok((200, csv)) = support::http_get(self.stats, "/stats;csv") {
                let up = csv
                    .lines()
                    .filter(|l| l.starts_with("proxy,s"))
                    .filter(|l| l.split(',').nth(17).is_some_and(|s| s.starts_with("UP")))
                    .count();
                if up == self.servers {
                    return Ok(());
                }
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("servers not all UP after 30 s\n{}", self.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn take_dir(mut self) -> TempDir {
        self.stop();
        std::mem::replace(&mut self.dir, TempDir::new("rlb-hap"))
    }

    fn log_tail(&self) -> String {
        support::log_tail(&self.dir.path().join("haproxy.log"), 30)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("haproxy is running").id()
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            support::terminate(child);
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy under test: its listening address and its process.
enum Proxy {
    Ringlb(Ringlb),
    Haproxy(Haproxy),
}

impl Proxy {
    /// Starts `target` in front of `backends`; `tcp_check` for backends that are not MySQL.
    fn start(target: Target, backends: &[SocketAddr], workers: usize, tcp_check: bool) -> Proxy {
        let mut config = String::new();
        if tcp_check {
            config.push_str("[health]\ncheck = \"tcp\"\n");
        }
        // RINGLB_BENCH_TUNING: extra `[tuning]` keys for ringlb, separated by `;` (tuning.md's
        // figures come from runs with one knob changed this way).
        let mut tuning: Vec<String> = std::env::var("RINGLB_BENCH_TUNING")
            .unwrap_or_default()
            .split(';')
            .map(|kv| kv.trim().to_string())
            .filter(|kv| !kv.is_empty())
            .collect();
        if target == Target::RinglbSplice {
            tuning.push("relay = \"splice\"".into());
        }
        if target == Target::RinglbEpoll {
            tuning.push("driver = \"epoll\"".into());
        }
        if !tuning.is_empty() {
            config.push_str("[tuning]\n");
            for kv in &tuning {
                config.push_str(kv);
                config.push('\n');
            }
        }
        match target {
            Target::Ringlb | Target::RinglbSplice | Target::RinglbEpoll => {
                Proxy::Ringlb(start_ringlb(backends, &config, workers, None))
            }
            Target::Baseline => Proxy::Ringlb(start_ringlb(backends, &config, workers, baseline())),
            Target::Haproxy => {
                let check = if tcp_check {
                    HaproxyCheck::Tcp
                } else {
                    HaproxyCheck::Mysql
                };
                Proxy::Haproxy(Haproxy::start(backends, workers, check))
            }
            Target::Direct => unreachable!("the direct baseline has no proxy"),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Proxy::Ringlb(r) => r.addr(),
            Proxy::Haproxy(h) => h.listen,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Proxy::Ringlb(r) => r.pid(),
            Proxy::Haproxy(h) => h.pid(),
        }
    }

    /// Warnings and errors ringlb logged so far (HAProxy in `-db` mode logs only start-up).
    fn log_problems(&self) -> Vec<String> {
        let path = match self {
            Proxy::Ringlb(r) => r.log_path(),
            Proxy::Haproxy(h) => h.dir.path().join("haproxy.log"),
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("ALERT"))
            .map(str::to_owned)
            .collect()
    }
}

/// `RINGLB_BENCH_BASELINE`: a ringlb binary to measure beside this build (its own column).
fn baseline() -> Option<PathBuf> {
    std::env::var_os("RINGLB_BENCH_BASELINE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// ringlb (this build's, or `binary`) in front of `backends`, waiting until its health checker
/// has them all up.
fn start_ringlb(backends: &[SocketAddr], config: &str, workers: usize, binary: Option<PathBuf>) -> Ringlb {
    let launch = support::Launch {
        workers,
        binary,
        ..support::Launch::default()
    };
    let ringlb = Ringlb::launch(backends, config, launch);
    let all_up = support::poll_until(Duration::from_secs(30), || {
        ringlb.metric("ringlb_backend_up", &[]) == Some(backends.len() as f64)
    });
    assert!(
        all_up,
        "ringlb's backends did not all come up; stderr:\n{}",
        ringlb.log_tail()
    );
    ringlb
}

// ---------------------------------------------------------------------------------------------
// (a) mysqlslap

fn run_mysqlslap(addr: SocketAddr, queries: u64) -> (u64, f64) {
    let mut command = Command::new(support::find_program("mysqlslap"));
    command.args([
        "--host=127.0.0.1",
        &format!("--port={}", addr.port()),
        "--protocol=tcp",
        &format!("--user={}", support::APP_USER),
        &format!("--password={}", support::APP_PASSWORD),
        &format!("--create-schema={}", support::TEST_SCHEMA),
        "--no-drop",
        &format!("--concurrency={CLIENTS}"),
        "--iterations=1",
        &format!("--number-of-queries={queries}"),
        "--query=SELECT 1",
    ]);
    let output = run_tool(command, GRACE, "mysqlslap");
    // "Average number of seconds to run all queries: 1.234 seconds"
    let seconds = output
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Average number of seconds to run all queries:")
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("mysqlslap printed no run time:\n{output}"));
    (queries, seconds)
}

// ---------------------------------------------------------------------------------------------
// (b) sysbench

fn sysbench_command(addr: SocketAddr) -> Command {
    let mut command = Command::new(support::find_program("sysbench"));
    command.args([
        "oltp_point_select",
        "--db-driver=mysql",
        "--mysql-host=127.0.0.1",
        &format!("--mysql-port={}", addr.port()),
        &format!("--mysql-user={}", support::APP_USER),
        &format!("--mysql-password={}", support::APP_PASSWORD),
        &format!("--mysql-db={}", support::TEST_SCHEMA),
        "--tables=1",
        &format!("--table-size={SYSBENCH_ROWS}"),
    ]);
    command
}

fn sysbench_prepare(server: &MariaDb) {
    let mut command = sysbench_command(server.addr());
    command.arg("prepare");
    run_tool(command, GRACE, "sysbench prepare");
}

/// Queries done and the latency histogram that sysbench printed.
fn run_sysbench(addr: SocketAddr, secs: u64) -> (u64, Histogram<u64>) {
    let mut command = sysbench_command(addr);
    command.args([
        &format!("--threads={CLIENTS}"),
        &format!("--time={secs}"),
        "--histogram=on",
        "--report-interval=0",
        "run",
    ]);
    let output = run_tool(command, Duration::from_secs(secs) + GRACE, "sysbench run");
    let queries = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("queries:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("sysbench printed no query count:\n{output}"));
    let errors = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("ignored errors:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(errors, 0, "sysbench saw errors:\n{output}");
    // Histogram lines: "       0.061 |*****                                    123"
    let mut hist = new_histogram();
    let mut in_histogram = false;
    for line in output.lines() {
        if line.contains("Latency histogram") {
            in_histogram = true;
            continue;
        }
        if !in_histogram {
            continue;
        }
        let Some((value, rest)) = line.split_once('|') else {
            if line.trim().is_empty() {
                continue;
            }
            if line.contains("distribution") {
                continue;
            }
            break;
        };
        let (Ok(ms), Some(Ok(count))) = (
            value.trim().parse::<f64>(),
            rest.split_whitespace().last().map(str::parse::<u64>),
        ) else {
            continue;
        };
        let us = ((ms * 1000.0).round() as u64).clamp(1, HIST_MAX_US);
        hist.record_n(us, count).expect("value clamped into range");
    }
    assert!(
        !hist.is_empty(),
        "sysbench printed no latency histogram:\n{output}"
    );
    (queries, hist)
}

// ---------------------------------------------------------------------------------------------
// (c) connection churn

/// Connections completed, failures, and the latency of each whole connection (connect, greeting,
/// login, `SELECT 1`, COM_QUIT).
fn run_churn(addr: SocketAddr, secs: f64) -> (u64, u64, Histogram<u64>) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let threads: Vec<JoinHandle<(u64, u64, Histogram<u64>)>> = (0..CHURN_THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut hist = new_histogram();
                let (mut done, mut failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let start = Instant::now();
                    match churn_once(addr) {
                        Ok(()) => {
                            record_us(&mut hist, start.elapsed());
                            done += 1;
                        }
                        Err(e) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("churn via {addr}: {e}");
                            }
                        }
                    }
                }
                (done, failed, hist)
            })
        })
        .collect();
    let mut hist = new_histogram();
    let (mut done, mut failed) = (0, 0);
    for thread in threads {
        let (d, f, h) = thread.join().expect("churn thread panicked");
        done += d;
        failed += f;
        hist.add(h).expect("same histogram bounds");
    }
    (done, failed, hist)
}

/// Login options with nothing extra on the wire: no `SELECT @@max_allowed_packet` after login.
fn login_opts(addr: SocketAddr) -> mysql::OptsBuilder {
    support::tcp_opts(
        addr.port(),
        support::APP_USER,
        support::APP_PASSWORD,
        Some(support::TEST_SCHEMA),
    )
    .max_allowed_packet(Some(16 << 20))
}

fn churn_once(addr: SocketAddr) -> mysql::Result<()> {
    let mut conn = Conn::new(login_opts(addr))?;
    let one: Option<u8> = conn.query_first("SELECT 1")?;
    if one != Some(1) {
        return Err(mysql::Error::DriverError(mysql::DriverError::SetupError));
    }
    // Dropping the connection sends COM_QUIT.
    drop(conn);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// (d) bulk

/// A TCP sink: every connection is read to EOF through a CRC-32, then answered with the byte
/// count (u64 LE) and the CRC (u32 LE). Health-check connections that send nothing get an
/// answer too, which nobody reads.
struct Sink(support::TcpServer);

/// Read and write size of the bulk load.
const BULK_CHUNK: usize = 256 * 1024;

impl Sink {
    fn start() -> Sink {
        Sink(support::TcpServer::start("the sink", |mut stream, _| {
            let _ = stream.set_read_timeout(Some(GRACE));
            let mut buffer = vec![0u8; BULK_CHUNK];
            let mut hasher = crc32fast::Hasher::new();
            let mut total = 0u64;
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) => {
                        hasher.update(&buffer[..n]);
                        total += n as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
            let mut answer = total.to_le_bytes().to_vec();
            answer.extend_from_slice(&hasher.finalize().to_le_bytes());
            let _ = stream.write_all(&answer);
            let _ = stream.shutdown(Shutdown::Write);
        }))
    }
}

/// Pseudo-random bytes (xorshift64*), different for every seed.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `bytes` on each of [`BULK_STREAMS`] connections to `addr` and checks the sink's count
/// and CRC of every stream against the sender's; panics on any difference. Returns the bytes
/// sent in total.
fn run_bulk(addr: SocketAddr, bytes: u64, seed: u64) -> u64 {
    let threads: Vec<JoinHandle<u64>> = (0..BULK_STREAMS)
        .map(|stream_index| {
            std::thread::spawn(move || {
                // A pool of random bytes, sent as overlapping windows at shifting offsets, so
                // that a chunk lost, repeated or reordered changes the CRC.
                let pool = random_bytes(seed ^ (stream_index as u64 + 1), 4 << 20);
                let mut stream = TcpStream::connect(addr)
                    .unwrap_or_else(|e| panic!("bulk stream {stream_index}: connect {addr}: {e}"));
                stream.set_write_timeout(Some(GRACE)).expect("set_write_timeout");
                stream.set_read_timeout(Some(GRACE)).expect("set_read_timeout");
                let mut hasher = crc32fast::Hasher::new();
                let mut sent = 0u64;
                let mut offset = 0usize;
                while sent < bytes {
                    let len = (bytes - sent).min(BULK_CHUNK as u64) as usize;
                    offset = (offset + 4099) % (pool.len() - BULK_CHUNK);
                    let chunk = &pool[offset..offset + len];
                    hasher.update(chunk);
                    stream.write_all(chunk).unwrap_or_else(|e| {
                        panic!("bulk stream {stream_index} via {addr}: write after {sent} bytes: {e}")
                    });
                    sent += len as u64;
                }
                stream
                    .shutdown(Shutdown::Write)
                    .expect("half-close the bulk stream");
                let mut answer = [0u8; 12];
                stream.read_exact(&mut answer).unwrap_or_else(|e| {
                    panic!("bulk stream {stream_index} via {addr}: no answer from the sink: {e}")
                });
                let sink_bytes = u64::from_le_bytes(answer[..8].try_into().expect("8 bytes"));
                let sink_crc = u32::from_le_bytes(answer[8..].try_into().expect("4 bytes"));
                let crc = hasher.finalize();
                assert!(
                    sink_bytes == sent && sink_crc == crc,
                    "CHECKSUM MISMATCH on bulk stream {stream_index} via {addr}: sent {sent} bytes \
                     with CRC-32 {crc:08x}, the sink read {sink_bytes} bytes with CRC-32 {sink_crc:08x}"
                );
                sent
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| panic!("a bulk stream through {addr} failed (see above)"))
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// (e) idle connections

/// Opens `count` logged-in MySQL sessions through `addr` with [`IDLE_OPENERS`] threads; returns
/// them and the latency of each login. Panics if one fails: holding them all is the workload.
fn open_idle(addr: SocketAddr, count: usize) -> (Vec<Conn>, Histogram<u64>) {
    let next = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let threads: Vec<JoinHandle<(Vec<Conn>, Histogram<u64>)>> = (0..IDLE_OPENERS)
        .map(|_| {
            let (next, failure) = (next.clone(), failure.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                let mut hist = new_histogram();
                while next.fetch_add(1, Ordering::Relaxed) < count as u64 {
                    let start = Instant::now();
                    match Conn::new(login_opts(addr)) {
                        Ok(conn) => {
                            record_us(&mut hist, start.elapsed());
                            conns.push(conn);
                        }
                        Err(e) => {
                            *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(format!("login {} through {addr}: {e}", conns.len()));
                            break;
                        }
                    }
                }
                (conns, hist)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    let mut hist = new_histogram();
    for thread in threads {
        let (c, h) = thread.join().expect("idle opener panicked");
        conns.extend(c);
        hist.add(h).expect("same histogram bounds");
    }
    if let Some(message) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        panic!("opening {count} idle connections: {message}");
    }
    (conns, hist)
}

/// Closes the sessions (COM_QUIT each) in parallel.
fn close_idle(conns: Vec<Conn>) {
    let mut groups: Vec<Vec<Conn>> = (0..IDLE_OPENERS).map(|_| Vec::new()).collect();
    for (i, conn) in conns.into_iter().enumerate() {
        groups[i % IDLE_OPENERS].push(conn);
    }
    let threads: Vec<_> = groups
        .into_iter()
        .map(|g| std::thread::spawn(move || drop(g)))
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

/// A workload's name, units and performance targets.
struct Workload {
    key: &'static str,
    title: String,
    unit: &'static str,
    /// What `cpu_per_unit` means.
    cpu_unit: &'static str,
    /// How the proxy's CPU is scaled: per op × this factor (1e6 for µs per op; 2^30 for s/GiB).
    cpu_scale: f64,
    /// ringlb/HAProxy ratio targets: (metric, at least?, bound).
    targets: Vec<(&'static str, bool, f64)>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// A metric of a run by name: "throughput", "cpu", "p50", "p99", "p999" or an `extra` key.
fn metric(run: &Run, name: &str) -> Option<f64> {
    match name {
        "throughput" => Some(run.throughput),
        "cpu" => run.cpu_per_unit,
        "p50" => run.latency.map(|l| l.p50_ms),
        "p99" => run.latency.map(|l| l.p99_ms),
        "p999" => run.latency.map(|l| l.p999_ms),
        other => run.extra.get(other).copied(),
    }
}

fn fmt(value: Option<f64>) -> String {
    match value {
        None => "n/a".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) if v.abs() >= 0.1 => format!("{v:.2}"),
        Some(v) => format!("{v:.4}"),
    }
}

/// Prints one workload's table and returns its summary for results.json.
fn report(workload: &Workload, runs: &[Run], rows: &[(&str, &str)]) -> Value {
    let mut targets: Vec<&'static str> = Vec::new();
    for run in runs {
        if !targets.contains(&run.target) {
            targets.push(run.target);
        }
    }
    let runs_of = |target: &'static str| runs.iter().filter(move |r| r.target == target);
    println!();
    println!("({}) {}", workload.key, workload.title);
    print!("  {:<28}", "median of runs");
    for t in &targets {
        print!("{t:>15}");
    }
    println!();
    let mut medians = serde_json::Map::new();
    for (name, label) in rows {
        print!("  {label:<28}");
        for t in &targets {
            let m = median(runs_of(t).filter_map(|r| metric(r, name)).collect());
            print!("{:>15}", fmt(m));
            medians
                .entry(t.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object")
                .insert(name.to_string(), json!(m));
        }
        println!();
    }
    // Per-pair ratios ringlb / HAProxy, for every row.
    let pairs: Vec<usize> = {
        let mut p: Vec<usize> = runs.iter().map(|r| r.pair).collect();
        p.dedup();
        p
    };
    // Per-pair ratios of each ringlb driver over HAProxy; the workload's targets judge the
    // default (io_uring) one.
    let ratios_of = |contender: &str, heading: &str, judged: bool| {
        println!(
            "  {:<28}{:>30}{:>9}{:>13}",
            heading,
            "per pair",
            "median",
            if judged { "target" } else { "" }
        );
        let mut ratios = serde_json::Map::new();
        for (name, label) in rows {
            let per_pair: Vec<Option<f64>> = pairs
                .iter()
                .map(|&p| {
                    let get = |t: &str| {
                        runs.iter()
                            .find(|r| r.pair == p && r.target == t)
                            .and_then(|r| metric(r, name))
                    };
                    match (get(contender), get("haproxy")) {
                        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
                        _ => None,
                    }
                })
                .collect();
            if per_pair.iter().all(Option::is_none) {
                continue;
            }
            let med = median(per_pair.iter().flatten().copied().collect());
            let target = workload.targets.iter().find(|(m, _, _)| judged && m == name);
            let verdict = match (target, med) {
                (Some((_, at_least, bound)), Some(r)) => {
                    let pass = if *at_least { r >= *bound } else { r <= *bound };
                    format!(
                        "{}{bound} {}",
                        if *at_least { ">=" } else { "<=" },
                        if pass { "PASS" } else { "MISS" }
                    )
                }
                _ => String::new(),
            };
            let pair_text: Vec<String> = per_pair.iter().map(|v| fmt(*v)).collect();
            println!(
                "  {label:<28}{:>30}{:>9}{:>13}",
                pair_text.join(" "),
                fmt(med),
                verdict
            );
            ratios.insert(
            name.to_string(),
            json!({ "per_pair": per_pair, "median": med, "target": target.map(|(_, at_least, bound)| json!({"at_least": at_least, "bound": bound})), "verdict": verdict }),
        );
        }
        ratios
    };
    let ratios = ratios_of("ringlb", "ringlb / HAProxy", true);
    let baseline_ratios = if targets.contains(&"baseline") {
        ratios_of("baseline", "baseline / HAProxy", false)
    } else {
        serde_json::Map::new()
    };
    let epoll_ratios = if targets.contains(&"ringlb-epoll") {
        ratios_of("ringlb-epoll", "ringlb epoll / HAProxy", false)
    } else {
        serde_json::Map::new()
    };
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    if errors > 0 {
        println!("  failed operations over all runs: {errors} (see stderr)");
    }
    json!({
        "title": workload.title,
        "unit": workload.unit,
        "cpu_unit": workload.cpu_unit,
        "medians": medians,
        "ratios_ringlb_over_haproxy": ratios,
        "ratios_ringlb_epoll_over_haproxy": epoll_ratios,
        "ratios_baseline_over_haproxy": baseline_ratios,
    })
}

/// Writes one V2 interval log per target of a workload: one histogram per run.
fn write_hdr_logs(dir: &Path, workload: &str, runs: &[Run], t0: f64) {
    let mut by_target: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r.hist.is_some()) {
        by_target.entry(run.target).or_default().push(run);
    }
    for (target, runs) in by_target {
        let path = dir.join(format!("{workload}-{target}.hlog"));
        let mut buf = Vec::new();
        let mut serializer = V2Serializer::new();
        {
            let mut writer = IntervalLogWriterBuilder::new()
                .add_comment(&format!(
                    "ringlb bench: workload {workload}, target {target}; values in microseconds"
                ))
                .with_base_time(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t0))
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut buf, &mut serializer)
                .expect("begin an interval log in memory");
            for run in runs {
                let hist = run.hist.as_ref().expect("filtered");
                let tag = format!("pair{}", run.pair);
                writer
                    .write_histogram(
                        hist,
                        Duration::from_secs_f64((run.started_unix_s - t0).max(0.0)),
                        Duration::from_secs_f64(run.wall_s),
                        Tag::new(&tag),
                    )
                    .expect("serialize a histogram");
            }
        }
        std::fs::write(&path, buf).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Latency percentile curves of workload (b): x is the percentile on a log scale
/// (-log10(1 - p), so 0, 90, 99, 99.9, 99.99 are evenly spaced), y the latency in ms, also on a
/// log scale (it spans three orders of magnitude or more).
fn plot_percentiles(path: &Path, title: &str, curves: &[(&str, Histogram<u64>)]) -> Result<(), String> {
    use plotters::prelude::*;
    use plotters::style::FontStyle;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        epaint_default_fonts::HACK_REGULAR,
    )
    .map_err(|_| "the embedded font does not load".to_string())?;
    const X_MAX: f64 = 4.0; // 99.99th percentile
    let y_max = curves
        .iter()
        .map(|(_, h)| h.value_at_quantile(0.9999) as f64 / 1000.0)
        .fold(0.0, f64::max)
        .max(0.001)
        * 1.5;
    let y_min = curves
        .iter()
        .map(|(_, h)| h.min() as f64 / 1000.0)
        .fold(f64::INFINITY, f64::min)
        .clamp(0.001, y_max / 10.0)
        * 0.8;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..X_MAX, (y_min..y_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms, log scale)")
        .x_labels(5)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 10f64.powf(-x));
            if p < 99.0 {
                format!("{p:.0}")
            } else {
                format!("{p:.2}")
                    .trim_end_matches('0')
                    .trim_end_matches('.')
                    .to_string()
            }
        })
        .draw()
        .map_err(|e| e.to_string())?;
    let colors = [RED, BLUE, BLACK, GREEN];
    for (i, (name, hist)) in curves.iter().enumerate() {
        let color = colors[i % colors.len()];
        let points: Vec<(f64, f64)> = (0..=400)
            .map(|step| {
                let x = step as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-x);
                (x, hist.value_at_quantile(q) as f64 / 1000.0)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(target)
    };
    target.join("bench")
}

fn machine_info() -> Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu_model,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "ringlb_commit": commit,
        "haproxy": version_of("haproxy", &["-v"]),
        "mariadb": version_of("mariadbd", &["--version"]),
        "sysbench": version_of("sysbench", &["--version"]),
        "mysqlslap": version_of("mysqlslap", &["--version"]),
    })
}

/// Raises the open-file limit to the hard limit: (e) holds 5,000 client sockets here.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads only the struct we pass.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
    limit.rlim_cur
}

// ---------------------------------------------------------------------------------------------

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing and run the same.
    let settings = Settings::from_env();
    let started = Instant::now();
    let t0 = unix_now();
    let out_dir = output_dir();
    std::fs::create_dir_all(&out_dir).unwrap_or_else(|e| panic!("create {}: {e}", out_dir.display()));
    for tool in [
        "haproxy",
        "mysqlslap",
        "sysbench",
        "mariadbd",
        "mariadb-install-db",
    ] {
        support::find_program(tool);
    }
    let nofile = raise_nofile();
    assert!(
        nofile >= IDLE_CONNECTIONS as u64 + 1000,
        "the open-file limit is {nofile}; workload (e) needs more than {IDLE_CONNECTIONS}"
    );
    let machine = machine_info();
    eprintln!(
        "ringlb bench: {} mode, {} worker(s) per proxy, {} pair(s); machine {machine}",
        if settings.quick { "quick" } else { "full" },
        settings.workers,
        settings.pairs
    );

    let servers = [
        MariaDb::start_with_options(&[SERVER_MAX_CONNECTIONS]),
        MariaDb::start_with_options(&[SERVER_MAX_CONNECTIONS]),
    ];
    for server in &servers {
        let max: u64 = server
            .root_conn()
            .and_then(|mut c| c.query_first("SELECT @@max_connections"))
            .ok()
            .flatten()
            .unwrap_or(0);
        assert!(
            max as usize > IDLE_CONNECTIONS / 2,
            "MariaDB on {} allows {max} connections; (e) needs more than {}",
            server.port(),
            IDLE_CONNECTIONS / 2
        );
        sysbench_prepare(server);
    }
    let backends: Vec<SocketAddr> = servers.iter().map(MariaDb::addr).collect();
    let direct = servers[0].addr();
    let w = settings.workers;

    let mut all_runs: Vec<Run> = Vec::new();
    let mut summary = serde_json::Map::new();
    let mut problems: Vec<String> = Vec::new();
    let pair_targets = |extra: bool| {
        let mut t = vec![Target::Ringlb, Target::Haproxy, Target::RinglbEpoll];
        if baseline().is_some() {
            t.push(Target::Baseline);
        }
        if extra {
            t.push(Target::RinglbSplice);
        }
        t.push(Target::Direct);
        t
    };

    // The MySQL proxies stay up for (a) to (c); (d) and (e) start their own.
    let mut proxies: BTreeMap<Target, Proxy> = BTreeMap::new();
    for target in pair_targets(settings.splice_column) {
        if target != Target::Direct {
            proxies.insert(target, Proxy::start(target, &backends, w, false));
        }
    }
    let endpoint = |target: Target| -> (SocketAddr, Option<u32>) {
        match proxies.get(&target) {
            Some(p) => (p.addr(), Some(p.pid())),
            None => (direct, None),
        }
    };
    let new_run = |workload: &'static str, target: Target, pair: usize| Run {
        workload,
        target: target.name(),
        pair,
        started_unix_s: unix_now(),
        wall_s: 0.0,
        ops: 0,
        throughput: 0.0,
        proxy_cpu_s: None,
        cpu_per_unit: None,
        latency: None,
        errors: 0,
        extra: BTreeMap::new(),
        hist: None,
    };
    let png = out_dir.join("latency-b.png");
    let latency_rows: [(&str, &str); 3] = [("p50", "p50 ms"), ("p99", "p99 ms"), ("p999", "p99.9 ms")];

    // (a) mysqlslap.
    if settings.runs("a") {
        let workload_a = Workload {
        key: "a",
        title: format!(
            "mysqlslap --concurrency={CLIENTS} --query=\"SELECT 1\" --number-of-queries={} (per-query latency: not available from mysqlslap)",
            settings.slap_queries
        ),
        unit: "queries/s",
        cpu_unit: "proxy CPU µs/query",
        cpu_scale: 1e6,
        targets: vec![("throughput", true, 1.5)],
    };
        let mut runs = Vec::new();
        for pair in 0..settings.pairs {
            for target in pair_targets(false) {
                let (addr, pid) = endpoint(target);
                let mut run = new_run("a", target, pair);
                let system = SystemSnapshot::take();
                let ((queries, slap_secs), wall, cpu) =
                    measure(pid, || run_mysqlslap(addr, settings.slap_queries));
                system.record_delta(&mut run);
                assert!(queries > 0, "mysqlslap through {} ran no query", target.name());
                run.wall_s = wall;
                run.ops = queries;
                run.throughput = queries as f64 / wall;
                run.proxy_cpu_s = cpu;
                run.cpu_per_unit = cpu.map(|c| c / queries as f64 * workload_a.cpu_scale);
                run.extra.insert("mysqlslap_reported_s", slap_secs);
                eprintln!(
                    "(a) pair {pair} {:<14} {:>10.0} q/s",
                    target.name(),
                    run.throughput
                );
                runs.push(run);
            }
        }
        summary.insert(
            "a".into(),
            report(
                &workload_a,
                &runs,
                &[
                    ("throughput", "queries/s (wall time)"),
                    ("cpu", "proxy CPU µs/query"),
                ],
            ),
        );
        all_runs.append(&mut runs);
    }
    // (b) sysbench oltp_point_select.
    if settings.runs("b") {
        let workload_b = Workload {
            key: "b",
            title: format!(
                "sysbench oltp_point_select --threads={CLIENTS} --time={}",
                settings.sysbench_secs
            ),
            unit: "queries/s",
            cpu_unit: "proxy CPU µs/query",
            cpu_scale: 1e6,
            targets: vec![
                ("throughput", true, 1.5),
                ("cpu", false, 0.5),
                ("p99", false, 1.0),
            ],
        };
        let mut runs = Vec::new();
        for pair in 0..settings.pairs {
            for target in pair_targets(settings.splice_column) {
                let (addr, pid) = endpoint(target);
                let mut run = new_run("b", target, pair);
                let system = SystemSnapshot::take();
                let ((queries, hist), wall, cpu) =
                    measure(pid, || run_sysbench(addr, settings.sysbench_secs));
                system.record_delta(&mut run);
                assert!(queries > 0, "sysbench through {} ran no query", target.name());
                run.wall_s = wall;
                run.ops = queries;
                // sysbench's own rate counts only its --time; wall includes its start and connects.
                run.throughput = queries as f64 / settings.sysbench_secs as f64;
                run.proxy_cpu_s = cpu;
                run.cpu_per_unit = cpu.map(|c| c / queries as f64 * workload_b.cpu_scale);
                run.latency = Some(Latency::of(&hist));
                run.hist = Some(hist);
                eprintln!(
                    "(b) pair {pair} {:<14} {:>10.0} q/s",
                    target.name(),
                    run.throughput
                );
                runs.push(run);
            }
        }
        let mut rows = vec![("throughput", "queries/s"), ("cpu", "proxy CPU µs/query")];
        rows.extend(latency_rows);
        summary.insert("b".into(), report(&workload_b, &runs, &rows));
        let mut curves: Vec<(&str, Histogram<u64>)> = Vec::new();
        for target in [
            Target::Ringlb,
            Target::Haproxy,
            Target::RinglbEpoll,
            Target::Direct,
            Target::RinglbSplice,
        ] {
            let mut merged = new_histogram();
            for run in runs.iter().filter(|r| r.target == target.name()) {
                if let Some(h) = &run.hist {
                    merged.add(h).expect("same bounds");
                }
            }
            if !merged.is_empty() {
                curves.push((target.label(), merged));
            }
        }
        match plot_percentiles(
            &png,
            "(b) sysbench oltp_point_select, 32 threads: latency by percentile",
            &curves,
        ) {
            Ok(()) => {}
            Err(e) => panic!("drawing {}: {e}", png.display()),
        }
        all_runs.append(&mut runs);
    }
    // (c) connection churn.
    if settings.runs("c") {
        let workload_c = Workload {
            key: "c",
            title: format!(
                "connection churn: {CHURN_THREADS} threads x (connect, login, SELECT 1, COM_QUIT) for {} s",
                settings.churn_secs
            ),
            unit: "connections/s",
            cpu_unit: "proxy CPU µs/connection",
            cpu_scale: 1e6,
            targets: vec![("throughput", true, 1.5)],
        };
        let mut runs = Vec::new();
        for pair in 0..settings.pairs {
            for target in pair_targets(false) {
                let (addr, pid) = endpoint(target);
                let mut run = new_run("c", target, pair);
                let system = SystemSnapshot::take();
                let ((done, failed, hist), wall, cpu) = measure(pid, || run_churn(addr, settings.churn_secs));
                system.record_delta(&mut run);
                assert!(
                    done > 0,
                    "connection churn through {} completed no connection",
                    target.name()
                );
                run.wall_s = wall;
                run.ops = done;
                run.errors = failed;
                run.throughput = done as f64 / wall;
                run.proxy_cpu_s = cpu;
                run.cpu_per_unit = cpu.map(|c| c / done as f64 * workload_c.cpu_scale);
                run.latency = Some(Latency::of(&hist));
                run.hist = Some(hist);
                eprintln!(
                    "(c) pair {pair} {:<14} {:>10.0} conn/s ({failed} failed)",
                    target.name(),
                    run.throughput
                );
                runs.push(run);
            }
        }
        let mut rows = vec![
            ("throughput", "connections/s"),
            ("cpu", "proxy CPU µs/connection"),
        ];
        rows.extend(latency_rows);
        summary.insert("c".into(), report(&workload_c, &runs, &rows));
        all_runs.append(&mut runs);
    }
    for (target, proxy) in &proxies {
        for line in proxy.log_problems() {
            problems.push(format!("{} (MySQL listener): {line}", target.name()));
        }
    }
    drop(proxies);

    // (d) bulk through a sink.
    if settings.runs("d") {
        let sink = Sink::start();
        let mut bulk_targets = vec![Target::Ringlb, Target::Haproxy, Target::RinglbEpoll];
        if baseline().is_some() {
            bulk_targets.push(Target::Baseline);
        }
        let bulk_proxies: BTreeMap<Target, Proxy> = bulk_targets
            .into_iter()
            .map(|t| (t, Proxy::start(t, &[sink.0.addr()], w, true)))
            .collect();
        let workload_d = Workload {
        key: "d",
        title: format!(
            "bulk: {BULK_STREAMS} streams x {} MiB of pseudo-random data to a CRC-checking sink (client-side latency: n/a)",
            settings.bulk_stream_bytes >> 20
        ),
        unit: "Gbit/s",
        cpu_unit: "proxy CPU s/GiB",
        cpu_scale: (1u64 << 30) as f64,
        targets: vec![("throughput", true, 1.15), ("cpu", false, 0.6)],
    };
        let mut runs = Vec::new();
        for pair in 0..settings.pairs {
            for target in pair_targets(false) {
                let (addr, pid) = match bulk_proxies.get(&target) {
                    Some(p) => (p.addr(), Some(p.pid())),
                    None => (sink.0.addr(), None),
                };
                let mut run = new_run("d", target, pair);
                let seed = (pair as u64) << 8 | target as u64;
                let system = SystemSnapshot::take();
                let (bytes, wall, cpu) = measure(pid, || run_bulk(addr, settings.bulk_stream_bytes, seed));
                system.record_delta(&mut run);
                assert!(
                    bytes >= 1 << 30,
                    "bulk through {} moved only {bytes} bytes",
                    target.name()
                );
                run.wall_s = wall;
                run.ops = bytes;
                run.throughput = bytes as f64 * 8.0 / wall / 1e9;
                run.proxy_cpu_s = cpu;
                run.cpu_per_unit = cpu.map(|c| c / bytes as f64 * workload_d.cpu_scale);
                eprintln!(
                    "(d) pair {pair} {:<14} {:>10.2} Gbit/s",
                    target.name(),
                    run.throughput
                );
                runs.push(run);
            }
        }
        summary.insert(
            "d".into(),
            report(
                &workload_d,
                &runs,
                &[("throughput", "Gbit/s"), ("cpu", "proxy CPU s/GiB")],
            ),
        );
        all_runs.append(&mut runs);
        for (target, proxy) in &bulk_proxies {
            for line in proxy.log_problems() {
                problems.push(format!("{} (sink listener): {line}", target.name()));
            }
        }
        drop(bulk_proxies);
        drop(sink);
    }
    // (e) idle connections, each run on a freshly started proxy.
    if settings.runs("e") {
        let workload_e = Workload {
        key: "e",
        title: format!(
            "{IDLE_CONNECTIONS} idle MySQL sessions (logged in to MariaDB) held through a fresh proxy, watched {} s \
             (latency: of each login; direct: no proxy to measure)",
            settings.idle_secs
        ),
        unit: "sessions",
        cpu_unit: "idle CPU ms/s",
        cpu_scale: 1.0,
        targets: vec![],
    };
        // Warm-up, unmeasured: each server and this client hold as many sessions as a run makes
        // them hold, once. A multi-threaded process's descriptor table grows by doubling, each
        // growth waiting for an RCU grace period (7-12 ms measured) in the call that needed the
        // slot; the tables never shrink, so without this the first target measured would pay
        // the servers' and the client's growth in its login tail.
        let mut warm = Vec::new();
        for server in &backends {
            warm.extend(open_idle(*server, IDLE_CONNECTIONS / backends.len()).0);
        }
        close_idle(warm);
        let mut runs = Vec::new();
        for pair in 0..settings.pairs {
            let mut idle_targets = vec![Target::Ringlb, Target::Haproxy, Target::RinglbEpoll];
            if baseline().is_some() {
                idle_targets.push(Target::Baseline);
            }
            for target in idle_targets {
                let proxy = Proxy::start(target, &backends, w, false);
                let pid = proxy.pid();
                let mut run = new_run("e", target, pair);
                let rss_before = support::rss_bytes(pid);
                let system = SystemSnapshot::take();
                let start = Instant::now();
                let (conns, hist) = open_idle(proxy.addr(), IDLE_CONNECTIONS);
                run.wall_s = start.elapsed().as_secs_f64();
                system.record_delta(&mut run);
                // Let the last logins' traffic drain before "at rest".
                std::thread::sleep(Duration::from_secs(1));
                let rss = support::rss_bytes(pid);
                let fds = Descriptors::of(pid);
                let ((), idle_wall, idle_cpu) = measure(Some(pid), || {
                    std::thread::sleep(Duration::from_secs_f64(settings.idle_secs))
                });
                let idle_cpu = idle_cpu.unwrap_or(0.0);
                run.ops = conns.len() as u64;
                run.throughput = conns.len() as f64;
                run.proxy_cpu_s = Some(idle_cpu);
                run.cpu_per_unit = Some(idle_cpu * 1000.0 / idle_wall);
                run.latency = Some(Latency::of(&hist));
                run.hist = Some(hist);
                run.extra.insert("rss_mib", rss as f64 / (1 << 20) as f64);
                run.extra
                    .insert("rss_at_start_mib", rss_before as f64 / (1 << 20) as f64);
                run.extra.insert("fds", fds.total as f64);
                run.extra.insert("sockets", fds.sockets as f64);
                run.extra.insert("pipe_fds", fds.pipes as f64);
                run.extra
                    .insert("idle_cpu_ms_per_s", idle_cpu * 1000.0 / idle_wall);
                eprintln!(
                "(e) pair {pair} {:<14} RSS {:.1} MiB, {} fds ({} pipes), idle CPU {:.3} s over {idle_wall:.1} s",
                target.name(),
                rss as f64 / (1 << 20) as f64,
                fds.total,
                fds.pipes,
                idle_cpu
            );
                close_idle(conns);
                for line in proxy.log_problems() {
                    problems.push(format!("{} (idle run {pair}): {line}", target.name()));
                }
                drop(proxy);
                runs.push(run);
            }
        }
        let mut rows = vec![
            ("rss_mib", "RSS MiB (5,000 held)"),
            ("rss_at_start_mib", "RSS MiB (fresh, none held)"),
            ("fds", "open fds"),
            ("sockets", "socket fds"),
            ("pipe_fds", "pipe fds"),
            ("idle_cpu_ms_per_s", "idle CPU ms per s"),
        ];
        rows.extend([
            ("p50", "login p50 ms"),
            ("p99", "login p99 ms"),
            ("p999", "login p99.9 ms"),
        ]);
        let mut summary_e = report(&workload_e, &runs, &rows);
        // (e)'s targets are absolute, on ringlb's medians.
        let ringlb_median = |name: &str| {
            median(
                runs.iter()
                    .filter(|r| r.target == "ringlb")
                    .filter_map(|r| metric(r, name))
                    .collect(),
            )
        };
        let absolute = [
            ("rss_mib", "RSS", 16.0, "MiB"),
            ("pipe_fds", "pipe fds", 64.0, ""),
            // "No CPU burnt while idle": at most 2 ms per second (0.2% of a core), which leaves
            // room for the health checks' two logins a second.
            ("idle_cpu_ms_per_s", "idle CPU ms/s", 2.0, ""),
        ];
        let mut verdicts = serde_json::Map::new();
        for (name, label, bound, unit) in absolute {
            let value = ringlb_median(name);
            let pass = value.is_some_and(|v| v <= bound);
            println!(
                "  ringlb {label:<21}{:>39} {:>12}",
                fmt(value),
                format!("<={bound}{unit} {}", if pass { "PASS" } else { "MISS" })
            );
            verdicts.insert(
                name.into(),
                json!({"ringlb_median": value, "bound": bound, "pass": pass}),
            );
        }
        summary_e["absolute_targets"] = Value::Object(verdicts);
        summary.insert("e".into(), summary_e);
        all_runs.append(&mut runs);
    }
    // Files.
    for workload in ["b", "c", "e"] {
        let runs: Vec<Run> = all_runs
            .iter()
            .filter(|r| r.workload == workload)
            .cloned()
            .collect();
        write_hdr_logs(&out_dir, workload, &runs, t0);
    }
    if !problems.is_empty() {
        println!();
        println!("Warnings and errors the proxies logged ({}):", problems.len());
        for line in problems.iter().take(20) {
            println!("  {line}");
        }
    }
    let results = json!({
        "machine": machine,
        "settings": settings,
        "direct_baseline": "clients straight to the first MariaDB server (a-c), or straight to the sink (d)",
        "started_unix_s": t0,
        "duration_s": started.elapsed().as_secs_f64(),
        "summary": summary,
        "runs": all_runs,
        "proxy_log_problems": problems,
    });
    let json_path = out_dir.join("results.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&results).expect("serialize results"),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", json_path.display()));
    println!();
    println!(
        "Wrote {}, {}/*.hlog and {} in {:.0} s.",
        json_path.display(),
        out_dir.display(),
        png.display(),
        started.elapsed().as_secs_f64()
    );
}
