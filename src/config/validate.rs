//! Validation: `build` merges the flags over the raw file and checks every value into a
//! [`Config`], naming the file, line and key (or the flag) of whatever it refuses.

use super::*;

/// The text of a `[health]` key that only a check that logs in can use (`purpose` says what it
/// does with the login): refused when blank, or when the check does not log in.
pub(super) fn login_key<'a>(
    origin: &Origin<'_>,
    value: &'a Spanned<String>,
    key: &str,
    purpose: &str,
    logs_in: bool,
) -> Result<&'a str, ConfigError> {
    let at = |message: String| origin.at(value.span().start, key, message);
    if value.get_ref().trim().is_empty() {
        return Err(at("must not be empty (leave the key out)".into()));
    }
    if !logs_in {
        return Err(at(format!("{purpose}: needs check = \"mysql\" with a user")));
    }
    Ok(value.get_ref())
}

/// The certificates of a PEM file, as DER; an error names what is wrong with the file.
pub(super) fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    // What the checks will trust: a certificate that is PEM but not one rustls can use is found
    // here, by `ringlb check`, not at the first check.
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in certificates.iter().enumerate() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("{}: certificate {}: {e}", path.display(), i + 1))?;
    }
    Ok(certificates)
}

/// An integer from the file, checked against `min..=max`.
pub(super) fn int_in<T: TryFrom<i64>>(
    origin: &Origin<'_>,
    value: &Spanned<i64>,
    key: &str,
    min: i64,
    max: i64,
) -> Result<T, ConfigError> {
    let v = *value.get_ref();
    let out_of_range = || {
        let bound = if max == i64::MAX {
            format!("at least {min}")
        } else {
            format!("from {min} to {max}")
        };
        origin.at(
            value.span().start,
            key,
            format!("{v} is out of range: must be {bound}"),
        )
    };
    if v < min || v > max {
        return Err(out_of_range());
    }
    T::try_from(v).map_err(|_| out_of_range())
}

/// A listener being built, with where its name, bind and role came from.
pub(super) struct Draft {
    pub(super) config: ListenerConfig,
    pub(super) name_site: Site,
    pub(super) bind_site: Site,
    pub(super) role_site: Option<Site>,
}

/// A listener's role and the keys that go with it.
pub(super) struct RoleKeys {
    pub(super) role: Role,
    pub(super) failback: bool,
    pub(super) on_writer_change: OnWriterChange,
    pub(super) max_lag_s: u64,
    pub(super) lag_return_s: u64,
    pub(super) reader_uses_writer: bool,
}

/// The role keys of listener `key`; a key that belongs to another role is refused, so that a
/// `max_lag_s` under a writer pool does not sit there doing nothing.
pub(super) fn listener_role(
    origin: &Origin<'_>,
    key: &str,
    listener: &RawListener,
) -> Result<RoleKeys, ConfigError> {
    let role = match &listener.role {
        None => Role::Any,
        Some(r) => match r.get_ref().as_str() {
            "any" => Role::Any,
            "writer" => Role::Writer,
            "reader" => Role::Reader,
            other => {
                return Err(origin.at(
                    r.span().start,
                    format!("{key}.role"),
                    format!("unknown role {other:?}, expected \"any\", \"writer\" or \"reader\""),
                ))
            }
        },
    };
    let belongs = |offset: usize, name: &str, owner: Role| -> Result<(), ConfigError> {
        if role == owner {
            return Ok(());
        }
        Err(origin.at(
            offset,
            format!("{key}.{name}"),
            format!(
                "applies only to role = \"{}\" (this listener's role is \"{}\")",
                owner.as_str(),
                role.as_str()
            ),
        ))
    };
    if let Some(v) = &listener.failback {
        belongs(v.span().start, "failback", Role::Writer)?;
    }
    let on_writer_change = match &listener.on_writer_change {
        None => OnWriterChange::default(),
        Some(v) => {
            belongs(v.span().start, "on_writer_change", Role::Writer)?;
            match v.get_ref().as_str() {
                "close" => OnWriterChange::Close,
                "keep" => OnWriterChange::Keep,
                other => {
                    return Err(origin.at(
                        v.span().start,
                        format!("{key}.on_writer_change"),
                        format!("unknown value {other:?}, expected \"close\" or \"keep\""),
                    ))
                }
            }
        }
    };
    let max_lag_s: u64 = match &listener.max_lag_s {
        None => DEFAULT_MAX_LAG_S,
        Some(v) => {
            belongs(v.span().start, "max_lag_s", Role::Reader)?;
            int_in(origin, v, &format!("{key}.max_lag_s"), 0, MAX_LAG_S)?
        }
    };
    let lag_return_s: u64 = match &listener.lag_return_s {
        None => max_lag_s / 2,
        Some(v) => {
            belongs(v.span().start, "lag_return_s", Role::Reader)?;
            let ret = int_in(origin, v, &format!("{key}.lag_return_s"), 0, MAX_LAG_S)?;
            if ret > max_lag_s {
                return Err(origin.at(
                    v.span().start,
                    format!("{key}.lag_return_s"),
                    format!("{ret} is above max_lag_s ({max_lag_s}): a replica must be back within the limit to return"),
                ));
            }
            ret
        }
    };
    if let Some(v) = &listener.reader_uses_writer {
        belongs(v.span().start, "reader_uses_writer", Role::Reader)?;
    }
    Ok(RoleKeys {
        role,
        failback: listener.failback.as_ref().is_some_and(|v| *v.get_ref()),
        on_writer_change,
        max_lag_s,
        lag_return_s,
        reader_uses_writer: listener.reader_uses_writer.as_ref().is_some_and(|v| *v.get_ref()),
    })
}

/// Whether two listeners name the same servers (same addresses, same PROXY setting), in any
/// order: their writer pools share one writer.
pub(super) fn same_servers(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    let addrs = |l: &ListenerConfig| {
        let mut addrs: Vec<SocketAddr> = l.backends.iter().map(|b| b.addr).collect();
        addrs.sort();
        addrs
    };
    a.send_proxy == b.send_proxy && addrs(a) == addrs(b)
}

/// What the roles need of the rest: a check that logs in (state is read over its session), and
/// writer pools over the same servers that agree on how their one writer is chosen.
pub(super) fn check_roles(
    origin: &Origin<'_>,
    drafts: &[Draft],
    health: &HealthConfig,
) -> Result<(), ConfigError> {
    for draft in drafts {
        let (Some(site), listener) = (&draft.role_site, &draft.config) else {
            continue;
        };
        if listener.role == Role::Any {
            continue;
        }
        if health.check != CheckKind::Mysql || health.user.is_empty() {
            return Err(site.error(
                origin,
                format!(
                    "role = \"{}\" reads each server's state after the health check's login: set \
                     [health] check = \"mysql\" with a user",
                    listener.role.as_str()
                ),
            ));
        }
    }
    let writers: Vec<&Draft> = drafts.iter().filter(|d| d.config.role == Role::Writer).collect();
    for (i, a) in writers.iter().enumerate() {
        for b in &writers[i + 1..] {
            let shares = a
                .config
                .backends
                .iter()
                .any(|x| b.config.backends.iter().any(|y| x.addr == y.addr));
            if !shares {
                continue;
            }
            let differs = if !same_servers(&a.config, &b.config) {
                "name the same servers with the same send_proxy"
            } else if a.config.failback != b.config.failback {
                "set the same failback"
            } else {
                continue;
            };
            let site = b.role_site.as_ref().unwrap_or(&b.name_site);
            return Err(site.error(
                origin,
                format!(
                    "listener {:?} shares servers with writer listener {:?}: writer pools that share \
                     a server elect one writer together, so both must {differs}",
                    b.config.name, a.config.name
                ),
            ));
        }
    }
    Ok(())
}

/// A path from the file, relative paths taken from the configuration file's folder.
pub(super) fn relative_to_file(origin: &Origin<'_>, text: &str) -> PathBuf {
    let path = Path::new(text);
    match origin.path.parent() {
        Some(folder) if path.is_relative() => folder.join(path),
        _ => path.to_path_buf(),
    }
}

/// Merges the flags over the raw file and validates the result.
pub(super) fn build(
    origin: &Origin<'_>,
    raw: RawFile,
    overrides: &Overrides,
    resolve: Resolver<'_>,
    read_key: KeyReader<'_>,
) -> Result<Config, ConfigError> {
    let global = raw.global.unwrap_or(RawGlobal {
        workers: None,
        admin: None,
        admin_token_file: None,
        shutdown_grace_ms: None,
        histogram_dump: None,
    });
    let shutdown_grace_ms = match &global.shutdown_grace_ms {
        Some(v) => int_in(origin, v, "global.shutdown_grace_ms", 0, 3_600_000)?,
        None => DEFAULT_SHUTDOWN_GRACE_MS,
    };
    let histogram_dump = match &global.histogram_dump {
        Some(v) if v.get_ref().trim().is_empty() => {
            return Err(origin.at(v.span().start, "global.histogram_dump", "must not be empty"))
        }
        Some(v) => relative_to_file(origin, v.get_ref()),
        None => PathBuf::from(DEFAULT_HISTOGRAM_DUMP),
    };

    let workers = match (overrides.workers, &global.workers) {
        (Some(n), _) if (1..=MAX_WORKERS).contains(&n) => n,
        (Some(n), _) => {
            return Err(Site::Flag("--workers").error(
                origin,
                format!("{n} is out of range: must be from 1 to {MAX_WORKERS}"),
            ))
        }
        (None, Some(w)) => int_in(origin, w, "global.workers", 1, MAX_WORKERS as i64)?,
        (None, None) => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS),
    };

    let (admin_text, admin_site) = match (&overrides.admin, &global.admin) {
        (Some(flag), _) => (flag.as_str(), Site::Flag("--admin")),
        (None, Some(a)) => (a.get_ref().as_str(), Site::file(a, "global.admin")),
        (None, None) => (DEFAULT_ADMIN, Site::Default("admin address")),
    };
    let admin = parse_ip_port(admin_text).map_err(|m| admin_site.error(origin, m))?;
    let (admin_token_file, admin_token) = match &global.admin_token_file {
        Some(v) if v.get_ref().trim().is_empty() => {
            return Err(origin.at(
                v.span().start,
                "global.admin_token_file",
                "must not be empty (leave the key out)",
            ))
        }
        Some(v) => {
            let path = relative_to_file(origin, v.get_ref());
            let token = read_key(&path)
                .and_then(|token| check_admin_token(&path, token))
                .map_err(|e| origin.at(v.span().start, "global.admin_token_file", e.to_string()))?;
            (Some(path), Some(token))
        }
        None => (None, None),
    };
    if admin_token.is_none() && !admin.ip().to_canonical().is_loopback() {
        return Err(admin_site.error(
            origin,
            format!(
                "{admin} is not a loopback address, and without [global] admin_token_file anyone \
                 who reaches it could change the pool: set admin_token_file (a file of mode 0600 \
                 holding a random token, e.g. `openssl rand -hex 32`) or bind the admin endpoint \
                 to 127.0.0.1"
            ),
        ));
    }

    let health = build_health(origin, raw.health, read_key)?;
    let mut tuning = build_tuning(origin, raw.tuning)?;
    if let Some(driver) = overrides.driver {
        tuning.driver = driver;
    }
    let ha = match &raw.ha {
        Some(ha) => Some(build_ha(origin, ha, read_key)?),
        None => None,
    };

    let mut drafts = Vec::new();
    if raw.listener.is_empty() {
        drafts.push(default_listener(origin, overrides, resolve)?);
    } else {
        let count = raw.listener.len();
        if count > 1 {
            let why = format!(
                "{} defines {count} listeners; set each listener's bind and backends in the file",
                origin.path.display()
            );
            if overrides.listen.is_some() {
                return Err(Site::Flag("--listen").error(origin, why));
            }
            if !overrides.backends.is_empty() {
                return Err(Site::Flag("--backend").error(origin, why));
            }
        }
        for (i, listener) in raw.listener.iter().enumerate() {
            drafts.push(file_listener(origin, i, listener, overrides, resolve)?);
        }
    }

    check_listeners_apart(origin, &drafts, admin, &admin_site)?;
    check_roles(origin, &drafts, &health)?;
    Ok(Config {
        workers,
        admin,
        admin_token_file,
        admin_token,
        shutdown_grace_ms,
        histogram_dump,
        health,
        listeners: drafts.into_iter().map(|d| d.config).collect(),
        tuning,
        ha,
    })
}

pub(super) fn build_tuning(origin: &Origin<'_>, raw: Option<RawTuning>) -> Result<TuningConfig, ConfigError> {
    let defaults = TuningConfig::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let relay = match &raw.relay {
        None => defaults.relay,
        Some(r) => match r.get_ref().as_str() {
            "auto" => RelayMode::Auto,
            "splice" => RelayMode::Splice,
            other => {
                return Err(origin.at(
                    r.span().start,
                    "tuning.relay",
                    format!("unknown relay {other:?}, expected \"auto\" or \"splice\""),
                ))
            }
        },
    };
    let driver = match &raw.driver {
        None => defaults.driver,
        Some(d) => DriverChoice::parse(d.get_ref())
            .map_err(|message| origin.at(d.span().start, "tuning.driver", message))?,
    };
    let power_of_two = |v: &Spanned<i64>, key: &str, min: i64, max: i64| -> Result<i64, ConfigError> {
        let n: i64 = int_in(origin, v, key, min, max)?;
        if (n as u64).is_power_of_two() {
            Ok(n)
        } else {
            Err(origin.at(v.span().start, key, format!("{n} is not a power of two")))
        }
    };
    Ok(TuningConfig {
        driver,
        relay,
        buffer_bytes: match &raw.buffer_bytes {
            Some(v) => int_in(origin, v, "tuning.buffer_bytes", 512, 1 << 20)?,
            None => defaults.buffer_bytes,
        },
        buffers: match &raw.buffers {
            Some(v) => power_of_two(v, "tuning.buffers", 1, 32768)? as u16,
            None => defaults.buffers,
        },
        pipe_bytes: match &raw.pipe_bytes {
            Some(v) => int_in(origin, v, "tuning.pipe_bytes", 4096, 1 << 30)?,
            None => defaults.pipe_bytes,
        },
        pipes_kept: match &raw.pipes_kept {
            Some(v) => int_in(origin, v, "tuning.pipes_kept", 0, 4096)?,
            None => defaults.pipes_kept,
        },
        ring_entries: match &raw.ring_entries {
            Some(v) => power_of_two(v, "tuning.ring_entries", 64, 32768)? as u32,
            None => defaults.ring_entries,
        },
        iowq_max_workers: match &raw.iowq_max_workers {
            Some(v) => int_in(origin, v, "tuning.iowq_max_workers", 0, 4096)?,
            None => defaults.iowq_max_workers,
        },
        pin_workers: raw.pin_workers.unwrap_or(defaults.pin_workers),
        sqpoll_idle_ms: match &raw.sqpoll_idle_ms {
            Some(v) => int_in(origin, v, "tuning.sqpoll_idle_ms", 0, 60_000)?,
            None => defaults.sqpoll_idle_ms,
        },
    })
}

pub(super) fn build_ha(
    origin: &Origin<'_>,
    raw: &Spanned<RawHa>,
    read_key: KeyReader<'_>,
) -> Result<HaConfig, ConfigError> {
    let ha = raw.get_ref();

    let node = ha.node.get_ref();
    check_node_name(node).map_err(|m| origin.at(ha.node.span().start, "ha.node", m))?;

    let bind = parse_ip_port(ha.bind.get_ref()).map_err(|m| origin.at(ha.bind.span().start, "ha.bind", m))?;
    if bind.port() == 0 {
        return Err(origin.at(
            ha.bind.span().start,
            "ha.bind",
            format!(
                "{:?}: port 0 is not allowed, peers send to a known port",
                ha.bind.get_ref()
            ),
        ));
    }

    if ha.peers.get_ref().is_empty() {
        return Err(origin.at(
            ha.peers.span().start,
            "ha.peers",
            "needs at least one peer IP:PORT",
        ));
    }
    let mut peers: Vec<SocketAddr> = Vec::with_capacity(ha.peers.get_ref().len());
    for (i, peer) in ha.peers.get_ref().iter().enumerate() {
        let at = |m: String| origin.at(peer.span().start, format!("ha.peers[{i}]"), m);
        let addr = parse_ip_port(peer.get_ref()).map_err(at)?;
        if addr.port() == 0 {
            return Err(at(format!("{:?}: port 0 is not allowed", peer.get_ref())));
        }
        if addr.is_ipv4() != bind.is_ipv4() {
            return Err(at(format!(
                "{addr} is not of the same address family as ha.bind {bind}"
            )));
        }
        if addr == bind {
            return Err(at(format!("{addr} is this node's own ha.bind")));
        }
        if peers.contains(&addr) {
            return Err(at(format!("{addr} is listed twice")));
        }
        peers.push(addr);
    }

    let vip = parse_vip(ha.vip.get_ref()).map_err(|m| origin.at(ha.vip.span().start, "ha.vip", m))?;

    let interface = ha.interface.get_ref();
    check_interface_name(interface).map_err(|m| origin.at(ha.interface.span().start, "ha.interface", m))?;

    let preferred = match &ha.preferred {
        Some(p) => {
            check_node_name(p.get_ref()).map_err(|m| origin.at(p.span().start, "ha.preferred", m))?;
            Some(p.get_ref().clone())
        }
        None => None,
    };

    let timer = |value: &Option<Spanned<i64>>, key: &str, min: u64, default: u64| match value {
        Some(v) => int_in::<u64>(origin, v, key, min as i64, MAX_HA_TIMER_MS as i64),
        None => Ok(default),
    };
    let keepalive_ms = timer(
        &ha.keepalive_ms,
        "ha.keepalive_ms",
        MIN_KEEPALIVE_MS,
        DEFAULT_KEEPALIVE_MS,
    )?;
    // The bounds below name the key the operator wrote, or `ha` when both values are defaults
    // shifted by the other key.
    let deadtime_ms = timer(&ha.deadtime_ms, "ha.deadtime_ms", 1, DEFAULT_DEADTIME_MS)?;
    if deadtime_ms <= keepalive_ms {
        let (offset, key) = site_of(
            raw,
            &ha.deadtime_ms,
            &ha.keepalive_ms,
            "ha.deadtime_ms",
            "ha.keepalive_ms",
        );
        return Err(origin.at(
            offset,
            key,
            format!(
                "deadtime_ms ({deadtime_ms}) must exceed keepalive_ms ({keepalive_ms}); \
                 3× or more is recommended"
            ),
        ));
    }
    let initdead_ms = timer(&ha.initdead_ms, "ha.initdead_ms", 1, DEFAULT_INITDEAD_MS)?;
    if initdead_ms < deadtime_ms {
        let (offset, key) = site_of(
            raw,
            &ha.initdead_ms,
            &ha.deadtime_ms,
            "ha.initdead_ms",
            "ha.deadtime_ms",
        );
        return Err(origin.at(
            offset,
            key,
            format!("initdead_ms ({initdead_ms}) must be at least deadtime_ms ({deadtime_ms})"),
        ));
    }
    if deadtime_ms < 3 * keepalive_ms {
        tracing::warn!(
            "{}: ha.deadtime_ms {deadtime_ms} is less than 3 × keepalive_ms {keepalive_ms}: \
             one or two lost heartbeats will move the VIP",
            origin.path.display()
        );
    }

    let relative_to_file = |text: &str| relative_to_file(origin, text);
    if ha.authkey_file.get_ref().is_empty() {
        return Err(origin.at(
            ha.authkey_file.span().start,
            "ha.authkey_file",
            "must not be empty",
        ));
    }
    let authkey_file = relative_to_file(ha.authkey_file.get_ref());
    let authkey = read_key(&authkey_file)
        .map_err(|e| origin.at(ha.authkey_file.span().start, "ha.authkey_file", e.to_string()))?;
    let notify = match &ha.notify {
        Some(n) if n.get_ref().is_empty() => {
            return Err(origin.at(
                n.span().start,
                "ha.notify",
                "must not be empty (leave the key out)",
            ))
        }
        Some(n) => Some(relative_to_file(n.get_ref())),
        None => None,
    };

    Ok(HaConfig {
        node: node.clone(),
        bind,
        peers,
        vip,
        interface: interface.clone(),
        preferred,
        auto_failback: ha.auto_failback.unwrap_or(true),
        keepalive_ms,
        deadtime_ms,
        initdead_ms,
        authkey_file,
        authkey,
        notify,
    })
}

/// Where to point a complaint about two timers that disagree: the first key if the file sets
/// it, else the second, else the `[ha]` header.
pub(super) fn site_of(
    raw: &Spanned<RawHa>,
    first: &Option<Spanned<i64>>,
    second: &Option<Spanned<i64>>,
    first_key: &'static str,
    second_key: &'static str,
) -> (usize, &'static str) {
    match (first, second) {
        (Some(v), _) => (v.span().start, first_key),
        (None, Some(v)) => (v.span().start, second_key),
        (None, None) => (raw.span().start, "ha"),
    }
}

/// A node name travels in every heartbeat behind a one-byte length and shows in logs.
pub(super) fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NODE_NAME_BYTES {
        return Err(format!(
            "{} bytes is too long: at most {MAX_NODE_NAME_BYTES}",
            name.len()
        ));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{name:?} must not contain spaces or control characters"));
    }
    Ok(())
}

/// The kernel's rule for interface names (`dev_valid_name`): 1..=15 bytes, not `.` or `..`,
/// no `/`, `:` or whitespace.
pub(super) fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME_BYTES {
        return Err(format!(
            "{name:?} is not an interface name: 1 to {MAX_INTERFACE_NAME_BYTES} bytes"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} is not an interface name"));
    }
    Ok(())
}

/// `IPv4/PREFIX` with a prefix of 1..=32, and an address a host can hold.
pub fn parse_vip(text: &str) -> Result<Vip, String> {
    let malformed = || format!("{text:?} is not IPv4/PREFIX (for example \"10.0.0.100/24\")");
    let (addr, prefix) = text.split_once('/').ok_or_else(malformed)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| malformed())?;
    let prefix_len = if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_digit()) {
        prefix.parse::<u8>().ok().filter(|p| (1..=32).contains(p))
    } else {
        None
    };
    let prefix_len =
        prefix_len.ok_or_else(|| format!("{text:?}: prefix {prefix:?} is not a number from 1 to 32"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        return Err(format!("{text:?}: {addr} cannot be a floating IP"));
    }
    Ok(Vip { addr, prefix_len })
}

pub(super) fn build_health(
    origin: &Origin<'_>,
    raw: Option<RawHealth>,
    read_key: KeyReader<'_>,
) -> Result<HealthConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HealthConfig {
            check: CheckKind::Mysql,
            interval_ms: DEFAULT_INTERVAL_MS,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            user: DEFAULT_CHECK_USER.to_string(),
            galera_donor_ok: false,
            password: None,
            password_file: None,
            tls: TlsMode::Auto,
            tls_ca: None,
            tls_ca_file: None,
            check_query: None,
            notify: None,
        });
    };
    let check = match &raw.check {
        None => CheckKind::Mysql,
        Some(c) => match c.get_ref().as_str() {
            "mysql" => CheckKind::Mysql,
            "tcp" => CheckKind::Tcp,
            other => {
                return Err(origin.at(
                    c.span().start,
                    "health.check",
                    format!("unknown check {other:?}, expected \"mysql\" or \"tcp\""),
                ))
            }
        },
    };
    let interval_ms: u64 = match &raw.interval_ms {
        Some(v) => int_in(origin, v, "health.interval_ms", MIN_INTERVAL_MS as i64, i64::MAX)?,
        None => DEFAULT_INTERVAL_MS,
    };
    let rise: u32 = match &raw.rise {
        Some(v) => int_in(origin, v, "health.rise", 1, i64::from(u32::MAX))?,
        None => DEFAULT_RISE,
    };
    let fall: u32 = match &raw.fall {
        Some(v) => int_in(origin, v, "health.fall", 1, i64::from(u32::MAX))?,
        None => DEFAULT_FALL,
    };
    let timeout_ms: u64 = match &raw.timeout_ms {
        Some(v) => int_in(origin, v, "health.timeout_ms", 1, i64::MAX)?,
        None => DEFAULT_TIMEOUT_MS,
    };
    let user = match raw.user {
        None => DEFAULT_CHECK_USER.to_string(),
        Some(u) if u.get_ref().contains('\0') => {
            // The handshake response carries the user NUL-terminated.
            return Err(origin.at(u.span().start, "health.user", "must not contain a NUL character"));
        }
        Some(u) => u.into_inner(),
    };
    let logs_in = check == CheckKind::Mysql && !user.is_empty();
    let (password, password_file) = match &raw.password_file {
        None => (None, None),
        Some(p) => {
            login_key(
                origin,
                p,
                "health.password_file",
                "is the check user's password",
                logs_in,
            )?;
            let path = relative_to_file(origin, p.get_ref());
            let secret = read_key(&path)
                .map_err(|e| origin.at(p.span().start, "health.password_file", e.to_string()))?;
            (Some(secret), Some(path))
        }
    };
    let tls = match &raw.tls {
        None => TlsMode::Auto,
        Some(t) => match t.get_ref().as_str() {
            "off" => TlsMode::Off,
            "auto" => TlsMode::Auto,
            "required" => TlsMode::Required,
            other => {
                return Err(origin.at(
                    t.span().start,
                    "health.tls",
                    format!("unknown value {other:?}, expected \"off\", \"auto\" or \"required\""),
                ))
            }
        },
    };
    if let (Some(t), false) = (&raw.tls, logs_in) {
        if tls == TlsMode::Required {
            return Err(origin.at(
                t.span().start,
                "health.tls",
                "\"required\" is for the check's login: needs check = \"mysql\" with a user",
            ));
        }
    }
    let (tls_ca, tls_ca_file) = match &raw.tls_ca_file {
        None => (None, None),
        Some(f) => {
            let purpose = "verifies the server of the check's login";
            login_key(origin, f, "health.tls_ca_file", purpose, logs_in)?;
            if tls == TlsMode::Off {
                return Err(origin.at(
                    f.span().start,
                    "health.tls_ca_file",
                    "has no use with tls = \"off\"",
                ));
            }
            let path = relative_to_file(origin, f.get_ref());
            let certificates = read_pem_certificates(&path)
                .map_err(|m| origin.at(f.span().start, "health.tls_ca_file", m))?;
            (Some(certificates), Some(path))
        }
    };
    let check_query = match &raw.check_query {
        None => None,
        Some(q) => {
            let purpose = "runs after the check's login";
            Some(login_key(origin, q, "health.check_query", purpose, logs_in)?.to_string())
        }
    };
    Ok(HealthConfig {
        check,
        interval_ms,
        rise,
        fall,
        timeout_ms,
        user,
        galera_donor_ok: raw.galera_donor_ok.unwrap_or(false),
        password,
        password_file,
        tls,
        tls_ca,
        tls_ca_file,
        check_query,
        notify: match &raw.notify {
            Some(n) if n.get_ref().is_empty() => {
                return Err(origin.at(
                    n.span().start,
                    "health.notify",
                    "must not be empty (leave the key out)",
                ))
            }
            Some(n) => Some(relative_to_file(origin, n.get_ref())),
            None => None,
        },
    })
}

/// The listener made from flags (or MySQL Proxy's defaults) when the file has none.
pub(super) fn default_listener(
    origin: &Origin<'_>,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Draft, ConfigError> {
    let (bind_text, bind_site) = match &overrides.listen {
        Some(listen) => (listen.as_str(), Site::Flag("--listen")),
        None => (DEFAULT_LISTEN, Site::Default("listen address")),
    };
    let bind = parse_bind(bind_text).map_err(|m| bind_site.error(origin, m))?;
    let backends = if overrides.backends.is_empty() {
        vec![backend(
            origin,
            DEFAULT_BACKEND,
            1,
            &Site::Default("backend"),
            resolve,
        )?]
    } else {
        flag_backends(origin, overrides, resolve)?
    };
    Ok(Draft {
        config: ListenerConfig::new("default", bind, backends),
        name_site: Site::Default("listener name"),
        bind_site,
        role_site: None,
    })
}

pub(super) fn file_listener(
    origin: &Origin<'_>,
    index: usize,
    raw: &Spanned<RawListener>,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Draft, ConfigError> {
    let key = format!("listener[{index}]");
    let listener = raw.get_ref();

    let name = listener.name.get_ref();
    let name_site = Site::file(&listener.name, format!("{key}.name"));
    if name.trim().is_empty() {
        return Err(name_site.error(origin, "must not be empty"));
    }
    if name.chars().any(char::is_control) {
        return Err(name_site.error(origin, "must not contain control characters"));
    }

    // `--listen` and `--backend` reach here only when this is the file's one listener.
    let (bind_text, bind_site) = match &overrides.listen {
        Some(listen) => (listen.as_str(), Site::Flag("--listen")),
        None => (
            listener.bind.get_ref().as_str(),
            Site::file(&listener.bind, format!("{key}.bind")),
        ),
    };
    let bind = parse_bind(bind_text).map_err(|m| bind_site.error(origin, m))?;

    let connect_timeout_ms = match &listener.connect_timeout_ms {
        Some(v) => int_in(origin, v, &format!("{key}.connect_timeout_ms"), 1, i64::MAX)?,
        None => DEFAULT_CONNECT_TIMEOUT_MS,
    };
    let balance = match &listener.balance {
        None => Balance::default(),
        Some(b) => match b.get_ref().as_str() {
            "leastconn" => Balance::Leastconn,
            "roundrobin" => Balance::Roundrobin,
            other => {
                return Err(origin.at(
                    b.span().start,
                    format!("{key}.balance"),
                    format!("unknown balance {other:?}, expected \"leastconn\" or \"roundrobin\""),
                ))
            }
        },
    };
    let idle_timeout_ms = match &listener.idle_timeout_ms {
        Some(v) => int_in(origin, v, &format!("{key}.idle_timeout_ms"), 0, 365 * 86_400_000)?,
        None => DEFAULT_IDLE_TIMEOUT_MS,
    };
    let queue_limit = match &listener.queue_limit {
        Some(v) => int_in(origin, v, &format!("{key}.queue_limit"), 0, 1_000_000)?,
        None => DEFAULT_QUEUE_LIMIT,
    };
    let queue_timeout_ms = match &listener.queue_timeout_ms {
        Some(v) => int_in(origin, v, &format!("{key}.queue_timeout_ms"), 1, 3_600_000)?,
        None => DEFAULT_QUEUE_TIMEOUT_MS,
    };
    let retries = match &listener.retries {
        Some(v) => int_in(origin, v, &format!("{key}.retries"), 0, MAX_RETRIES)?,
        None => DEFAULT_RETRIES,
    };
    let send_proxy = match &listener.send_proxy {
        None => None,
        Some(v) => Some(ProxyVersion::from_name(v.get_ref()).ok_or_else(|| {
            origin.at(
                v.span().start,
                format!("{key}.send_proxy"),
                format!(
                    "unknown PROXY protocol version {:?}, expected \"v1\" or \"v2\"",
                    v.get_ref()
                ),
            )
        })?),
    };
    let role = listener_role(origin, &key, listener)?;
    let slowstart_ms = match &listener.slowstart_ms {
        Some(v) => int_in(origin, v, &format!("{key}.slowstart_ms"), 0, 3_600_000)?,
        None => 0,
    };
    let mut allow = Vec::new();
    for (j, entry) in listener.allow.iter().flatten().enumerate() {
        let cidr = Cidr::parse(entry.get_ref())
            .map_err(|m| origin.at(entry.span().start, format!("{key}.allow[{j}]"), m))?;
        allow.push(cidr);
    }

    let backends = if !overrides.backends.is_empty() {
        flag_backends(origin, overrides, resolve)?
    } else if listener.backend.is_empty() {
        return Err(origin.at(
            raw.span().start,
            format!("{key}.backend"),
            "a listener needs at least one [[listener.backend]]",
        ));
    } else {
        let mut backends: Vec<BackendConfig> = Vec::with_capacity(listener.backend.len());
        for (j, b) in listener.backend.iter().enumerate() {
            let b = b.get_ref();
            let site = Site::file(&b.address, format!("{key}.backend[{j}].address"));
            let weight = match &b.weight {
                Some(w) => int_in(
                    origin,
                    w,
                    &format!("{key}.backend[{j}].weight"),
                    1,
                    i64::from(MAX_WEIGHT),
                )?,
                None => 1,
            };
            let mut built = backend(origin, b.address.get_ref(), weight, &site, resolve)?;
            built.backup = b.backup.unwrap_or(false);
            if built.backup && role.role == Role::Writer {
                return Err(site.error(
                    origin,
                    "backup = true has no meaning in a writer pool, which elects one writer: list \
                     the preferred server first and set failback = true",
                ));
            }
            if let Some(m) = &b.maxconn {
                built.maxconn = int_in(origin, m, &format!("{key}.backend[{j}].maxconn"), 0, 1_000_000)?;
            }
            refuse_duplicate_backend(origin, &backends, &built, &site)?;
            backends.push(built);
        }
        backends
    };

    Ok(Draft {
        config: ListenerConfig {
            name: name.clone(),
            bind,
            connect_timeout_ms,
            backends,
            allow,
            balance,
            idle_timeout_ms,
            queue_limit,
            queue_timeout_ms,
            retries,
            send_proxy,
            role: role.role,
            failback: role.failback,
            on_writer_change: role.on_writer_change,
            max_lag_s: role.max_lag_s,
            lag_return_s: role.lag_return_s,
            reader_uses_writer: role.reader_uses_writer,
            slowstart_ms,
        },
        name_site,
        role_site: listener
            .role
            .as_ref()
            .map(|r| Site::file(r, format!("{key}.role"))),
        bind_site,
    })
}

pub(super) fn flag_backends(
    origin: &Origin<'_>,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Vec<BackendConfig>, ConfigError> {
    let site = Site::Flag("--backend");
    let mut backends = Vec::with_capacity(overrides.backends.len());
    for address in &overrides.backends {
        let built = backend(origin, address, 1, &site, resolve)?;
        refuse_duplicate_backend(origin, &backends, &built, &site)?;
        backends.push(built);
    }
    Ok(backends)
}

pub(super) fn backend(
    origin: &Origin<'_>,
    address: &str,
    weight: u32,
    site: &Site,
    resolve: Resolver<'_>,
) -> Result<BackendConfig, ConfigError> {
    let (host, port) = split_host_port(address).map_err(|m| site.error(origin, m))?;
    let addr =
        resolve(host, port).map_err(|m| site.error(origin, format!("cannot resolve {address:?}: {m}")))?;
    Ok(BackendConfig {
        name: address.to_string(),
        addr,
        weight,
        backup: false,
        maxconn: 0,
    })
}

/// The same backend twice in one listener would give two metric series one label, and double
/// its share in a way `weight` says more plainly.
pub(super) fn refuse_duplicate_backend(
    origin: &Origin<'_>,
    earlier: &[BackendConfig],
    backend: &BackendConfig,
    site: &Site,
) -> Result<(), ConfigError> {
    if earlier.iter().any(|b| b.name == backend.name) {
        return Err(site.error(
            origin,
            format!(
                "{:?} is listed twice for this listener (use weight for a larger share)",
                backend.name
            ),
        ));
    }
    Ok(())
}

/// A listener's bind: `IP:PORT` with a real port, since every worker binds the same one.
pub(super) fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_ip_port(text)?;
    if addr.port() == 0 {
        return Err(format!(
            "{text:?}: port 0 is not allowed, every worker must bind the same port"
        ));
    }
    Ok(addr)
}

/// Whether two sockets cannot both listen: same port and the same address, or one of them is
/// the wildcard (`[::]` also covers IPv4, as Linux binds it dual-stack by default).
pub(super) fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    let wildcard_v6 = |s: SocketAddr| s.is_ipv6() && s.ip().is_unspecified();
    a.ip() == b.ip()
        || wildcard_v6(a)
        || wildcard_v6(b)
        || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified()))
}

/// Names unique, binds apart from each other and from the admin endpoint. Catching an overlap
/// here names the line; at bind time only "address in use" would be left to say.
pub(super) fn check_listeners_apart(
    origin: &Origin<'_>,
    drafts: &[Draft],
    admin: SocketAddr,
    admin_site: &Site,
) -> Result<(), ConfigError> {
    for (i, draft) in drafts.iter().enumerate() {
        let l = &draft.config;
        for (j, earlier) in drafts[..i].iter().enumerate() {
            if earlier.config.name == l.name {
                return Err(draft.name_site.error(
                    origin,
                    format!("{:?} is already the name of listener[{j}]", l.name),
                ));
            }
            if binds_overlap(earlier.config.bind, l.bind) {
                return Err(draft.bind_site.error(
                    origin,
                    format!(
                        "{} overlaps listener {:?} on {}",
                        l.bind, earlier.config.name, earlier.config.bind
                    ),
                ));
            }
        }
        if binds_overlap(admin, l.bind) {
            let message = format!(
                "listener {:?} on {} overlaps the admin endpoint {admin}",
                l.name, l.bind
            );
            let site = match draft.bind_site {
                Site::Default(_) => admin_site,
                _ => &draft.bind_site,
            };
            return Err(site.error(origin, message));
        }
    }
    Ok(())
}
