//! [`to_toml`]: a `Config` written back in the file's shape (`ringlb check`); what it writes
//! loads back to the same `Config`.

use super::*;

/// Writes `config` in the shape of the configuration file, every default filled in and each
/// backend's resolved address as a comment. Loading the output gives `config` back.
pub fn to_toml(config: &Config) -> String {
    let health = &config.health;
    let check = match health.check {
        CheckKind::Mysql => "mysql",
        CheckKind::Tcp => "tcp",
    };
    let mut out = String::new();
    out.push_str("[global]\n");
    out.push_str(&format!("workers = {}\n", config.workers));
    out.push_str(&format!("admin = {}\n", toml_string(&config.admin.to_string())));
    if let Some(file) = &config.admin_token_file {
        let file = file.to_string_lossy();
        out.push_str(&format!("admin_token_file = {}\n", toml_string(&file)));
    }
    out.push_str(&format!("shutdown_grace_ms = {}\n", config.shutdown_grace_ms));
    out.push_str(&format!(
        "histogram_dump = {}\n",
        toml_string(&config.histogram_dump.display().to_string())
    ));
    out.push_str("\n[health]\n");
    out.push_str(&format!("check = {}\n", toml_string(check)));
    out.push_str(&format!("interval_ms = {}\n", health.interval_ms));
    out.push_str(&format!("rise = {}\n", health.rise));
    out.push_str(&format!("fall = {}\n", health.fall));
    out.push_str(&format!("timeout_ms = {}\n", health.timeout_ms));
    out.push_str(&format!("user = {}\n", toml_string(&health.user)));
    if health.galera_donor_ok {
        out.push_str("galera_donor_ok = true\n");
    }
    if let Some(path) = &health.password_file {
        out.push_str(&format!(
            "password_file = {}\n",
            toml_string(&path.to_string_lossy())
        ));
    }
    if health.tls != TlsMode::Auto {
        out.push_str(&format!("tls = {}\n", toml_string(health.tls.as_str())));
    }
    if let Some(path) = &health.tls_ca_file {
        out.push_str(&format!(
            "tls_ca_file = {}\n",
            toml_string(&path.to_string_lossy())
        ));
    }
    if let Some(query) = &health.check_query {
        out.push_str(&format!("check_query = {}\n", toml_string(query)));
    }
    if let Some(notify) = &health.notify {
        out.push_str(&format!("notify = {}\n", toml_string(&notify.to_string_lossy())));
    }
    for listener in &config.listeners {
        out.push_str("\n[[listener]]\n");
        out.push_str(&format!("name = {}\n", toml_string(&listener.name)));
        out.push_str(&format!("bind = {}\n", toml_string(&listener.bind.to_string())));
        out.push_str(&format!("connect_timeout_ms = {}\n", listener.connect_timeout_ms));
        out.push_str(&format!("idle_timeout_ms = {}\n", listener.idle_timeout_ms));
        out.push_str(&format!("queue_limit = {}\n", listener.queue_limit));
        out.push_str(&format!("queue_timeout_ms = {}\n", listener.queue_timeout_ms));
        out.push_str(&format!("retries = {}\n", listener.retries));
        if listener.slowstart_ms > 0 {
            out.push_str(&format!("slowstart_ms = {}\n", listener.slowstart_ms));
        }
        if listener.balance == Balance::Roundrobin {
            out.push_str("balance = \"roundrobin\"\n");
        }
        if let Some(version) = listener.send_proxy {
            out.push_str(&format!("send_proxy = {}\n", toml_string(version.name())));
        }
        match listener.role {
            Role::Any => {}
            Role::Writer => {
                out.push_str("role = \"writer\"\n");
                out.push_str(&format!("failback = {}\n", listener.failback));
                let close = toml_string(listener.on_writer_change.as_str());
                out.push_str(&format!("on_writer_change = {close}\n"));
            }
            Role::Reader => {
                out.push_str("role = \"reader\"\n");
                out.push_str(&format!("max_lag_s = {}\n", listener.max_lag_s));
                out.push_str(&format!("lag_return_s = {}\n", listener.lag_return_s));
                out.push_str(&format!("reader_uses_writer = {}\n", listener.reader_uses_writer));
            }
        }
        if !listener.allow.is_empty() {
            let nets: Vec<String> = listener
                .allow
                .iter()
                .map(|c| toml_string(&c.to_string()))
                .collect();
            out.push_str(&format!("allow = [{}]\n", nets.join(", ")));
        }
        for backend in &listener.backends {
            out.push_str("[[listener.backend]]\n");
            let address = toml_string(&backend.name);
            if backend.name.parse::<SocketAddr>() == Ok(backend.addr) {
                out.push_str(&format!("address = {address}\n"));
            } else {
                out.push_str(&format!("address = {address}  # resolved to {}\n", backend.addr));
            }
            out.push_str(&format!("weight = {}\n", backend.weight));
            if backend.backup {
                out.push_str("backup = true\n");
            }
            if backend.maxconn > 0 {
                out.push_str(&format!("maxconn = {}\n", backend.maxconn));
            }
        }
    }
    let tuning = &config.tuning;
    let relay = match tuning.relay {
        RelayMode::Auto => "auto",
        RelayMode::Splice => "splice",
    };
    out.push_str("\n[tuning]\n");
    out.push_str(&format!("driver = {}\n", toml_string(tuning.driver.name())));
    out.push_str(&format!("relay = {}\n", toml_string(relay)));
    out.push_str(&format!("buffer_bytes = {}\n", tuning.buffer_bytes));
    out.push_str(&format!("buffers = {}\n", tuning.buffers));
    out.push_str(&format!("pipe_bytes = {}\n", tuning.pipe_bytes));
    out.push_str(&format!("pipes_kept = {}\n", tuning.pipes_kept));
    out.push_str(&format!("ring_entries = {}\n", tuning.ring_entries));
    out.push_str(&format!("iowq_max_workers = {}\n", tuning.iowq_max_workers));
    out.push_str(&format!("pin_workers = {}\n", tuning.pin_workers));
    out.push_str(&format!("sqpoll_idle_ms = {}\n", tuning.sqpoll_idle_ms));
    if let Some(ha) = &config.ha {
        let peers: Vec<String> = ha.peers.iter().map(|p| toml_string(&p.to_string())).collect();
        out.push_str("\n[ha]\n");
        out.push_str(&format!("node = {}\n", toml_string(&ha.node)));
        out.push_str(&format!("bind = {}\n", toml_string(&ha.bind.to_string())));
        out.push_str(&format!("peers = [{}]\n", peers.join(", ")));
        out.push_str(&format!("vip = {}\n", toml_string(&ha.vip.to_string())));
        out.push_str(&format!("interface = {}\n", toml_string(&ha.interface)));
        if let Some(preferred) = &ha.preferred {
            out.push_str(&format!("preferred = {}\n", toml_string(preferred)));
        }
        out.push_str(&format!("auto_failback = {}\n", ha.auto_failback));
        out.push_str(&format!("keepalive_ms = {}\n", ha.keepalive_ms));
        out.push_str(&format!("deadtime_ms = {}\n", ha.deadtime_ms));
        out.push_str(&format!("initdead_ms = {}\n", ha.initdead_ms));
        let authkey_file = ha.authkey_file.to_string_lossy();
        out.push_str(&format!("authkey_file = {}\n", toml_string(&authkey_file)));
        if let Some(notify) = &ha.notify {
            out.push_str(&format!("notify = {}\n", toml_string(&notify.to_string_lossy())));
        }
    }
    out
}

/// A TOML basic string. (toml's own `Value` writes multi-line literals for strings with
/// newlines, which would not fit behind `key = ` on one line with a comment after it.)
pub(super) fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
