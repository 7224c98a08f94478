#[test]
fn allow_networks_match_their_addresses_only() {
    let net = Cidr::parse("10.0.0.0/24").unwrap();
    assert!(net.contains("10.0.0.7".parse().unwrap()));
    assert!(!net.contains("10.0.1.7".parse().unwrap()));
    // An IPv4 client on an IPv6 socket.
    assert!(net.contains("::ffff:10.0.0.9".parse().unwrap()));
    let one = Cidr::parse("127.0.0.1").unwrap();
    assert_eq!(one.prefix_len, 32);
    assert!(one.contains("127.0.0.1".parse().unwrap()));
    assert!(!one.contains("127.0.0.2".parse().unwrap()));
    let all = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all.contains("192.0.2.1".parse().unwrap()));
    let v6 = Cidr::parse("fd00::/8").unwrap();
    assert!(v6.contains("fd12::1".parse().unwrap()));
    assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/", "::/129"] {
        assert!(Cidr::parse(bad).is_err(), "{bad}");
    }
}

use super::*;

/// Stands in for DNS: db-01 and db-02 exist, IP literals are themselves, nothing else does.
fn fake_dns(host: &str, port: u16) -> Result<SocketAddr, String> {
    let ip: IpAddr = match host {
        "db-01" => [10, 0, 0, 1].into(),
        "db-02" => [10, 0, 0, 2].into(),
        other => other.parse().map_err(|_| "no such host".to_string())?,
    };
    Ok(SocketAddr::new(ip, port))
}

/// Stands in for key files: any path holds "test key" except one named `missing`.
fn fake_key(path: &Path) -> Result<Secret, ConfigError> {
    if path.ends_with("missing") {
        return Err(ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    Ok(Secret::from_bytes(b"test key"))
}

fn load_text(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    load_str_with(Path::new("ringlb.toml"), text, overrides, &fake_dns, &fake_key)
}

fn error_text(text: &str, overrides: &Overrides) -> String {
    match load_text(text, overrides) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

const TWO_LISTENERS: &str = r#"
[[listener]]
name = "rw"
bind = "0.0.0.0:4040"
[[listener.backend]]
address = "db-01:3306"

[[listener]]
name = "ro"
bind = "0.0.0.0:4042"
[[listener.backend]]
address = "db-02:3306"
"#;

#[test]
fn no_file_and_no_flags_give_mysql_proxy_defaults() {
    let config = build(
        &Origin::none(),
        RawFile::default(),
        &Overrides::default(),
        &fake_dns,
        &fake_key,
    )
    .unwrap();
    assert!(config.workers >= 1);
    assert_eq!(config.admin, addr(DEFAULT_ADMIN));
    assert_eq!(config.listeners.len(), 1);
    let l = &config.listeners[0];
    assert_eq!(l.name, "default");
    assert_eq!(l.bind, addr(DEFAULT_LISTEN));
    assert_eq!(l.connect_timeout_ms, DEFAULT_CONNECT_TIMEOUT_MS);
    assert_eq!(l.backends.len(), 1);
    assert_eq!(l.backends[0].name, DEFAULT_BACKEND);
    assert_eq!(l.backends[0].addr, addr(DEFAULT_BACKEND));
    assert_eq!(l.backends[0].weight, 1);
    assert_eq!(
        config.health,
        HealthConfig {
            check: CheckKind::Mysql,
            interval_ms: 1000,
            rise: 2,
            fall: 3,
            timeout_ms: 1000,
            user: "ringlb_check".into(),
            galera_donor_ok: false,
            password: None,
            password_file: None,
            tls: TlsMode::Auto,
            tls_ca: None,
            tls_ca_file: None,
            check_query: None,
            notify: None,
        }
    );
}

#[test]
fn every_key_of_the_schema_is_read() {
    let config = load_text(
        r#"
[global]
workers = 3
admin = "127.0.0.1:5041"

[health]
check = "tcp"
interval_ms = 250
rise = 4
fall = 5
timeout_ms = 100
user = ""
galera_donor_ok = true
notify = "/usr/local/bin/on-writer"

[[listener]]
name = "rw"
bind = "10.1.1.1:3306"
connect_timeout_ms = 300
send_proxy = "v2"
[[listener.backend]]
address = "db-01:3306"
weight = 10
[[listener.backend]]
address = "[::1]:3307"
"#,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.workers, 3);
    assert_eq!(config.admin, addr("127.0.0.1:5041"));
    assert_eq!(
        config.health,
        HealthConfig {
            check: CheckKind::Tcp,
            interval_ms: 250,
            rise: 4,
            fall: 5,
            timeout_ms: 100,
            user: String::new(),
            galera_donor_ok: true,
            password: None,
            password_file: None,
            tls: TlsMode::Auto,
            tls_ca: None,
            tls_ca_file: None,
            check_query: None,
            notify: Some(PathBuf::from("/usr/local/bin/on-writer")),
        }
    );
    assert_eq!(
        config.listeners,
        vec![ListenerConfig {
            name: "rw".into(),
            bind: addr("10.1.1.1:3306"),
            connect_timeout_ms: 300,
            backends: vec![
                BackendConfig {
                    name: "db-01:3306".into(),
                    addr: addr("10.0.0.1:3306"),
                    weight: 10,
                    backup: false,
                    maxconn: 0,
                },
                BackendConfig {
                    name: "[::1]:3307".into(),
                    addr: addr("[::1]:3307"),
                    weight: 1,
                    backup: false,
                    maxconn: 0,
                },
            ],
            allow: Vec::new(),
            balance: Default::default(),
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            queue_timeout_ms: DEFAULT_QUEUE_TIMEOUT_MS,
            retries: DEFAULT_RETRIES,
            send_proxy: Some(ProxyVersion::V2),
            role: Role::Any,
            failback: false,
            on_writer_change: OnWriterChange::Close,
            max_lag_s: DEFAULT_MAX_LAG_S,
            lag_return_s: DEFAULT_MAX_LAG_S / 2,
            reader_uses_writer: false,
            slowstart_ms: 0,
        }]
    );
}

#[test]
fn probe_timeout_defaults_to_one_second_whatever_the_interval() {
    let short = load_text("[health]\ninterval_ms = 200\n", &Overrides::default()).unwrap();
    assert_eq!(short.health.timeout_ms, 1000);
    let long = load_text("[health]\ninterval_ms = 5000\n", &Overrides::default()).unwrap();
    assert_eq!(long.health.timeout_ms, 1000);
}

#[test]
fn flags_make_the_default_listener_when_the_file_has_none() {
    let overrides = Overrides {
        listen: Some("127.0.0.1:5000".into()),
        backends: vec!["db-01:3306".into(), "db-02:3307".into()],
        workers: Some(2),
        admin: Some("127.0.0.1:5001".into()),
        driver: None,
    };
    let config = load_text("[global]\nworkers = 8\n", &overrides).unwrap();
    assert_eq!(config.workers, 2, "the flag wins over the file");
    assert_eq!(config.admin, addr("127.0.0.1:5001"));
    let l = &config.listeners[0];
    assert_eq!((l.name.as_str(), l.bind), ("default", addr("127.0.0.1:5000")));
    let backends: Vec<_> = l.backends.iter().map(|b| (b.name.as_str(), b.addr)).collect();
    assert_eq!(
        backends,
        vec![
            ("db-01:3306", addr("10.0.0.1:3306")),
            ("db-02:3307", addr("10.0.0.2:3307"))
        ]
    );
}

#[test]
fn flags_replace_bind_and_backends_of_the_single_file_listener() {
    let file = "[[listener]]\nname = \"rw\"\nbind = \"0.0.0.0:4040\"\nconnect_timeout_ms = 50\n\
                [[listener.backend]]\naddress = \"unknown-host:3306\"\n";
    let overrides = Overrides {
        listen: Some("127.0.0.1:6000".into()),
        backends: vec!["db-02:3306".into()],
        ..Overrides::default()
    };
    let config = load_text(file, &overrides).unwrap();
    let l = &config.listeners[0];
    assert_eq!(l.name, "rw");
    assert_eq!(l.bind, addr("127.0.0.1:6000"));
    assert_eq!(l.connect_timeout_ms, 50, "what the flags do not replace stays");
    assert_eq!(l.backends.len(), 1);
    assert_eq!(
        l.backends[0].name, "db-02:3306",
        "replaced backends are not resolved"
    );
}

#[test]
fn listen_or_backend_flag_with_several_listeners_names_the_flag() {
    let listen = Overrides {
        listen: Some("127.0.0.1:6000".into()),
        ..Overrides::default()
    };
    let e = error_text(TWO_LISTENERS, &listen);
    assert!(e.starts_with("--listen: ringlb.toml defines 2 listeners"), "{e}");
    let backend = Overrides {
        backends: vec!["db-01:3306".into()],
        ..Overrides::default()
    };
    assert!(error_text(TWO_LISTENERS, &backend).starts_with("--backend: "));
    assert_eq!(
        load_text(TWO_LISTENERS, &Overrides::default())
            .unwrap()
            .listeners
            .len(),
        2
    );
}

#[test]
fn unresolvable_backend_names_file_line_key_and_address() {
    let file = "[[listener]]\nname = \"rw\"\nbind = \"0.0.0.0:4040\"\n\
                [[listener.backend]]\naddress = \"db-01:3306\"\n[[listener.backend]]\naddress = \"db-9:3306\"\n";
    assert_eq!(
        error_text(file, &Overrides::default()),
        "ringlb.toml:7: listener[0].backend[1].address: cannot resolve \"db-9:3306\": no such host"
    );
}

#[test]
fn flag_errors_name_the_flag_and_the_value() {
    let cases: [(Overrides, &str); 6] = [
        (
            Overrides {
                workers: Some(0),
                ..Overrides::default()
            },
            "--workers: 0 is out of range",
        ),
        (
            Overrides {
                backends: vec!["nonsense".into()],
                ..Overrides::default()
            },
            "--backend: \"nonsense\" is not HOST:PORT",
        ),
        (
            Overrides {
                backends: vec!["host:notaport".into()],
                ..Overrides::default()
            },
            "--backend: \"host:notaport\": port \"notaport\" is not a number",
        ),
        (
            Overrides {
                backends: vec!["nowhere:3306".into()],
                ..Overrides::default()
            },
            "--backend: cannot resolve \"nowhere:3306\"",
        ),
        (
            Overrides {
                listen: Some("localhost:4040".into()),
                ..Overrides::default()
            },
            "--listen: \"localhost:4040\" is not IP:PORT",
        ),
        (
            Overrides {
                admin: Some("4041".into()),
                ..Overrides::default()
            },
            "--admin: \"4041\" is not IP:PORT",
        ),
    ];
    for (overrides, expected) in cases {
        let e = error_text("", &overrides);
        assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
    }
}

#[test]
fn schema_errors_name_line_and_key_path() {
    let cases = [
        (
            "[global]\nworkerz = 2\n",
            "ringlb.toml:2: global.workerz: unknown key, expected one of `workers`, `admin`, `admin_token_file`, `shutdown_grace_ms`",
        ),
        (
            "[global]\nworkers = \"2\"\n",
            "ringlb.toml:2: global.workers: invalid type: string \"2\"",
        ),
        ("bogus = 1\n", "ringlb.toml:1: bogus: unknown key"),
        (
            "global = 5\n",
            "ringlb.toml:1: global: invalid type: integer `5`, expected a table",
        ),
        (
            "[listener]\nname = \"x\"\n",
            "ringlb.toml:1: listener: invalid type",
        ),
        (
            "[[listener]]\nbind = \"0.0.0.0:1\"\n",
            "ringlb.toml:1: listener[0].name: required key is missing",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\n[[listener.backend]]\nweight = 2\n",
            "ringlb.toml:4: listener[0].backend[0].address: required key is missing",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\n\n[[listener]]\nname = \"b\"\n\
             bind = \"0.0.0.0:2\"\nbackend = [{ address = \"db-01:1\", port = 3 }]\n",
            "ringlb.toml:8: listener[1].backend[0].port: unknown key",
        ),
        (
            "[global]\nworkers = 2\nworkers = 3\n",
            "ringlb.toml:3: TOML syntax: ",
        ),
        ("[global\nworkers = 2\n", "ringlb.toml:1: TOML syntax: "),
        ("[health]\nuser = \n", "ringlb.toml:2: TOML syntax: "),
    ];
    for (text, expected) in cases {
        let e = error_text(text, &Overrides::default());
        assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
    }
}

#[test]
fn unknown_keys_with_backticks_or_newlines_stay_on_one_line() {
    // Found by the config fuzz target: serde quotes an unknown key between backticks as it
    // stands, and the message was cut at the key's own backtick, leaving its newline in.
    let cases = [
        (
            "[global]\n\"a`b\\n\" = 1\n",
            "ringlb.toml:2: global.\"a`b\\n\": unknown key, expected one of `workers`, `admin`, `admin_token_file`, \
             `shutdown_grace_ms`, `histogram_dump`",
        ),
        (
            "\"x`, expected \\n`\" = 1\n",
            "ringlb.toml:1: \"x`, expected \\n`\": unknown key, expected one of `global`, `health`, \
             `tuning`, `ha`, `listener`",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(error_text(text, &Overrides::default()), expected);
    }
}

#[test]
fn values_out_of_range_name_line_and_key() {
    let listener = |extra: &str, backend_extra: &str| {
        format!(
            "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:4040\"\n{extra}\n\
             [[listener.backend]]\naddress = \"db-01:3306\"\n{backend_extra}\n"
        )
    };
    let cases = [
        (
            "[global]\nworkers = 0\n".to_string(),
            "ringlb.toml:2: global.workers: 0 is out of range",
        ),
        (
            "[global]\nworkers = -1\n".to_string(),
            "ringlb.toml:2: global.workers: -1 is out of range",
        ),
        (
            "[global]\nworkers = 5000\n".to_string(),
            "ringlb.toml:2: global.workers: 5000 is out of range",
        ),
        (
            "[global]\nadmin = \"localhost\"\n".to_string(),
            "ringlb.toml:2: global.admin: \"localhost\"",
        ),
        (
            "[health]\ncheck = \"http\"\n".to_string(),
            "ringlb.toml:2: health.check: unknown check \"http\"",
        ),
        (
            "[health]\ninterval_ms = 9\n".to_string(),
            "ringlb.toml:2: health.interval_ms: 9 is out of range",
        ),
        (
            "[health]\nrise = 0\n".to_string(),
            "ringlb.toml:2: health.rise: 0 is out of range",
        ),
        (
            "[health]\nfall = 0\n".to_string(),
            "ringlb.toml:2: health.fall: 0 is out of range",
        ),
        (
            "[health]\ntimeout_ms = 0\n".to_string(),
            "ringlb.toml:2: health.timeout_ms: 0 is out of range",
        ),
        (
            "[health]\nrise = 4294967296\n".to_string(),
            "ringlb.toml:2: health.rise: 4294967296 is out of range",
        ),
        (
            listener("connect_timeout_ms = 0", ""),
            "ringlb.toml:4: listener[0].connect_timeout_ms: 0 is",
        ),
        (
            listener("", "weight = 0"),
            "ringlb.toml:7: listener[0].backend[0].weight: 0 is out of range",
        ),
        (
            listener("", "weight = 1001"),
            "ringlb.toml:7: listener[0].backend[0].weight: 1001 is out of",
        ),
    ];
    for (text, expected) in cases {
        let e = error_text(&text, &Overrides::default());
        assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
    }
}

#[test]
fn listener_errors_name_line_and_key() {
    let one = |name: &str, bind: &str, backend: &str| {
        format!(
            "[[listener]]\nname = {name:?}\nbind = {bind:?}\n[[listener.backend]]\naddress = {backend:?}\n"
        )
    };
    let cases = [
        (
            one("", "0.0.0.0:1", "db-01:1"),
            "ringlb.toml:2: listener[0].name: must not be empty",
        ),
        (
            one("a", "0.0.0.0", "db-01:1"),
            "ringlb.toml:3: listener[0].bind: \"0.0.0.0\" is not IP:PORT",
        ),
        (
            one("a", "db-01:3306", "db-01:1"),
            "ringlb.toml:3: listener[0].bind: \"db-01:3306\" is not IP",
        ),
        (
            one("a", "0.0.0.0:0", "db-01:1"),
            "ringlb.toml:3: listener[0].bind: \"0.0.0.0:0\": port 0",
        ),
        (
            one("a", "0.0.0.0:1", "db-01"),
            "ringlb.toml:5: listener[0].backend[0].address: \"db-01\" is not",
        ),
        (
            one("a", "0.0.0.0:1", "db-01:0"),
            "ringlb.toml:5: listener[0].backend[0].address: \"db-01:0\": port",
        ),
        (
            one("a", "0.0.0.0:1", ":3306"),
            "ringlb.toml:5: listener[0].backend[0].address: \":3306\" is not",
        ),
        (
            "\n\n[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\n".to_string(),
            "ringlb.toml:3: listener[0].backend: a listener needs at least one",
        ),
        (
            one("a", "0.0.0.0:1", "db-01:1") + &one("a", "0.0.0.0:2", "db-01:1"),
            "ringlb.toml:7: listener[1].name: \"a\" is already the name of listener[0]",
        ),
        (
            one("a", "0.0.0.0:1", "db-01:1") + &one("b", "0.0.0.0:1", "db-01:1"),
            "ringlb.toml:8: listener[1].bind: 0.0.0.0:1 overlaps listener \"a\"",
        ),
        (
            one("a", "10.0.0.1:1", "db-01:1") + &one("b", "0.0.0.0:1", "db-01:1"),
            "ringlb.toml:8: listener[1].bind: 0.0.0.0:1 overlaps listener \"a\" on 10.0.0.1:1",
        ),
        (
            one("a", "127.0.0.1:4041", "db-01:1"),
            "ringlb.toml:3: listener[0].bind: listener \"a\" on 127.0.0.1:4041 overlaps the admin",
        ),
        (
            one("a", "0.0.0.0:1", "db-01:1") + "[[listener.backend]]\naddress = \"db-01:1\"\n",
            "ringlb.toml:7: listener[0].backend[1].address: \"db-01:1\" is listed twice",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\nsend_proxy = \"V2\"\n".to_string()
                + "[[listener.backend]]\naddress = \"db-01:1\"\n",
            "ringlb.toml:4: listener[0].send_proxy: unknown PROXY protocol version \"V2\", expected \"v1\" or \"v2\"",
        ),
        (
            "[[listener]]\nname = \"a\"\nbind = \"0.0.0.0:1\"\nsend_proxy = true\n".to_string()
                + "[[listener.backend]]\naddress = \"db-01:1\"\n",
            "ringlb.toml:4: listener[0].send_proxy: invalid type: boolean `true`, expected a string",
        ),
    ];
    for (text, expected) in cases {
        let e = error_text(&text, &Overrides::default());
        assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
    }
}

#[test]
fn default_listen_address_clashing_with_the_admin_flag_names_the_flag() {
    let overrides = Overrides {
        admin: Some("127.0.0.1:4040".into()),
        ..Overrides::default()
    };
    let e = error_text("", &overrides);
    assert!(
        e.starts_with("--admin: listener \"default\" on 0.0.0.0:4040 overlaps"),
        "{e}"
    );
}

#[test]
fn host_port_splitting_accepts_names_and_literals_and_rejects_the_rest() {
    assert_eq!(split_host_port("db-01:3306"), Ok(("db-01", 3306)));
    assert_eq!(split_host_port("10.0.0.1:1"), Ok(("10.0.0.1", 1)));
    assert_eq!(split_host_port("[::1]:65535"), Ok(("::1", 65535)));
    for bad in [
        "",
        "db-01",
        ":3306",
        "db-01:",
        "db-01:0",
        "db-01:65536",
        "db-01:+80",
        "db-01:-1",
        "::1:3306",
        "[::1]",
        "[::1]3306",
        "[db-01]:3306",
        "db 01:3306",
        "host:notaport",
    ] {
        assert!(split_host_port(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn binds_overlap_when_one_is_a_wildcard_on_the_same_port() {
    let overlap = |a: &str, b: &str| binds_overlap(addr(a), addr(b));
    assert!(overlap("0.0.0.0:1", "0.0.0.0:1"));
    assert!(overlap("0.0.0.0:1", "127.0.0.1:1"));
    assert!(overlap("127.0.0.1:1", "0.0.0.0:1"));
    assert!(overlap("[::]:1", "127.0.0.1:1"), "[::] is dual-stack");
    assert!(overlap("[::1]:1", "[::]:1"));
    assert!(!overlap("0.0.0.0:1", "0.0.0.0:2"));
    assert!(!overlap("127.0.0.1:1", "127.0.0.2:1"));
    assert!(
        !overlap("0.0.0.0:1", "[::1]:1"),
        "an IPv4 wildcard leaves IPv6 alone"
    );
}

#[test]
fn line_of_counts_from_one() {
    assert_eq!(line_of("", 0), 1);
    assert_eq!(line_of("a\nb\nc", 0), 1);
    assert_eq!(line_of("a\nb\nc", 2), 2);
    assert_eq!(line_of("a\nb\nc", 4), 3);
    assert_eq!(line_of("a\nb\nc", 99), 3);
}

#[test]
fn effective_configuration_loads_back_to_itself() {
    let file = r#"
[global]
workers = 2
[health]
user = "odd \"user\"\\ name"
[[listener]]
name = "rw"
bind = "[::]:4040"
send_proxy = "v1"
[[listener.backend]]
address = "db-01:3306"
weight = 7
[[listener.backend]]
address = "127.0.0.1:3307"
"#;
    let config = load_text(file, &Overrides::default()).unwrap();
    let written = to_toml(&config);
    assert!(
        written.contains("address = \"db-01:3306\"  # resolved to 10.0.0.1:3306\n"),
        "{written}"
    );
    assert!(written.contains("address = \"127.0.0.1:3307\"\n"), "{written}");
    assert!(written.contains("send_proxy = \"v1\"\n"), "{written}");
    assert_eq!(load_text(&written, &Overrides::default()).unwrap(), config);

    let defaults = load_text("", &Overrides::default()).unwrap();
    assert_eq!(
        load_text(&to_toml(&defaults), &Overrides::default()).unwrap(),
        defaults
    );
}

#[test]
fn toml_strings_escape_what_toml_requires() {
    assert_eq!(toml_string("plain"), "\"plain\"");
    assert_eq!(toml_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    let parsed: toml::Table = toml::from_str(&format!("k = {}", toml_string("a\"b\\c\nd\u{1}é"))).unwrap();
    assert_eq!(parsed["k"].as_str(), Some("a\"b\\c\nd\u{1}é"));
}

#[test]
fn missing_file_is_a_read_error_naming_the_path() {
    let e = load(Some(Path::new("/nonexistent/ringlb.toml")), &Overrides::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/ringlb.toml: cannot read: "),
        "{e}"
    );
}

const HA: &str = r#"
[ha]
node = "lb-db-01"
bind = "10.0.0.11:694"
peers = ["10.0.0.12:694"]
vip = "10.0.0.100/24"
interface = "eth0"
preferred = "lb-db-01"
auto_failback = true
keepalive_ms = 100
deadtime_ms = 400
initdead_ms = 2000
authkey_file = "/etc/ringlb/authkey"
"#;

/// The issue's `[ha]` example with one line replaced (`key = value`, matched by key).
fn ha_with(key: &str, line: Option<&str>) -> String {
    let mut out = String::new();
    for l in HA.lines() {
        if l.starts_with(&format!("{key} = ")) {
            if let Some(line) = line {
                out.push_str(line);
                out.push('\n');
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn ha_section_reads_every_key_and_the_key_file() {
    let config = load_text(
        &ha_with(
            "authkey_file",
            Some("authkey_file = \"/etc/ringlb/authkey\"\nnotify = \"/usr/local/bin/ha-notify\""),
        ),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        config.ha,
        Some(HaConfig {
            node: "lb-db-01".into(),
            bind: addr("10.0.0.11:694"),
            peers: vec![addr("10.0.0.12:694")],
            vip: Vip {
                addr: Ipv4Addr::new(10, 0, 0, 100),
                prefix_len: 24
            },
            interface: "eth0".into(),
            preferred: Some("lb-db-01".into()),
            auto_failback: true,
            keepalive_ms: 100,
            deadtime_ms: 400,
            initdead_ms: 2000,
            authkey_file: "/etc/ringlb/authkey".into(),
            authkey: Secret::from_bytes(b"test key"),
            notify: Some("/usr/local/bin/ha-notify".into()),
        })
    );
    assert_eq!(load_text("", &Overrides::default()).unwrap().ha, None);
}

#[test]
fn ha_optional_keys_take_their_documented_defaults() {
    let text = "[ha]\nnode = \"b\"\nbind = \"10.0.0.12:694\"\npeers = [\"10.0.0.11:694\"]\n\
                vip = \"10.0.0.100/32\"\ninterface = \"br-lb\"\nauthkey_file = \"authkey\"\n";
    let ha = load_text(text, &Overrides::default()).unwrap().ha.unwrap();
    assert_eq!(ha.preferred, None);
    assert!(ha.auto_failback);
    assert_eq!(
        (ha.keepalive_ms, ha.deadtime_ms, ha.initdead_ms),
        (DEFAULT_KEEPALIVE_MS, DEFAULT_DEADTIME_MS, DEFAULT_INITDEAD_MS)
    );
    assert_eq!(ha.notify, None);
    assert_eq!(ha.vip.to_string(), "10.0.0.100/32");
}

#[test]
fn ha_relative_paths_are_taken_from_the_config_files_folder() {
    let text = ha_with(
        "authkey_file",
        Some("authkey_file = \"keys/authkey\"\nnotify = \"notify.sh\""),
    );
    let config = load_str_with(
        Path::new("/etc/ringlb/ringlb.toml"),
        &text,
        &Overrides::default(),
        &fake_dns,
        &fake_key,
    )
    .unwrap();
    let ha = config.ha.unwrap();
    assert_eq!(ha.authkey_file, Path::new("/etc/ringlb/keys/authkey"));
    assert_eq!(ha.notify.as_deref(), Some(Path::new("/etc/ringlb/notify.sh")));
}

#[test]
fn ha_preferred_may_name_another_node_and_failback_may_be_off() {
    let text = ha_with("preferred", Some("preferred = \"lb-db-02\""))
        .replace("auto_failback = true", "auto_failback = false");
    let ha = load_text(&text, &Overrides::default()).unwrap().ha.unwrap();
    assert_eq!(ha.preferred.as_deref(), Some("lb-db-02"));
    assert!(!ha.auto_failback);
}

#[test]
fn file_with_only_ha_combines_with_listen_and_backend_flags() {
    let overrides = Overrides {
        listen: Some("0.0.0.0:4040".into()),
        backends: vec!["db-01:3306".into(), "db-02:3306".into()],
        ..Overrides::default()
    };
    let config = load_text(HA, &overrides).unwrap();
    assert_eq!(config.ha.as_ref().unwrap().node, "lb-db-01");
    let l = &config.listeners[0];
    assert_eq!(l.bind, addr("0.0.0.0:4040"));
    let backends: Vec<_> = l.backends.iter().map(|b| b.addr).collect();
    assert_eq!(backends, vec![addr("10.0.0.1:3306"), addr("10.0.0.2:3306")]);
}

#[test]
fn ha_errors_name_line_and_key() {
    let cases = [
        (
            ha_with("node", Some("node = \"\"")),
            "ringlb.toml:3: ha.node: must not be empty",
        ),
        (
            ha_with("node", Some(&format!("node = \"{}\"", "n".repeat(65)))),
            "ringlb.toml:3: ha.node: 65 bytes is too long: at most 64",
        ),
        (
            ha_with("node", Some("node = \"lb 1\"")),
            "ringlb.toml:3: ha.node: \"lb 1\" must not",
        ),
        (
            ha_with("node", None),
            "ringlb.toml:2: ha.node: required key is missing",
        ),
        (
            ha_with("bind", Some("bind = \"lb-db-01:694\"")),
            "ringlb.toml:4: ha.bind: \"lb-db-01:694\" is not IP:PORT",
        ),
        (
            ha_with("bind", Some("bind = \"10.0.0.11:0\"")),
            "ringlb.toml:4: ha.bind: \"10.0.0.11:0\": port 0",
        ),
        (
            ha_with("peers", Some("peers = []")),
            "ringlb.toml:5: ha.peers: needs at least one peer",
        ),
        (
            ha_with("peers", Some("peers = \"10.0.0.12:694\"")),
            "ringlb.toml:5: ha.peers: invalid type: string",
        ),
        (
            ha_with("peers", Some("peers = [\"10.0.0.12:694\", \"lb-db-02:694\"]")),
            "ringlb.toml:5: ha.peers[1]: \"lb-db-02:694\" is not IP:PORT",
        ),
        (
            ha_with("peers", Some("peers = [\"[fe80::2]:694\"]")),
            "ringlb.toml:5: ha.peers[0]: [fe80::2]:694 is not of the same address family",
        ),
        (
            ha_with("peers", Some("peers = [\"10.0.0.11:694\"]")),
            "ringlb.toml:5: ha.peers[0]: 10.0.0.11:694 is this node's own ha.bind",
        ),
        (
            ha_with("peers", Some("peers = [\"10.0.0.12:694\", \"10.0.0.12:694\"]")),
            "ringlb.toml:5: ha.peers[1]: 10.0.0.12:694 is listed twice",
        ),
        (
            ha_with("vip", Some("vip = \"10.0.0.100\"")),
            "ringlb.toml:6: ha.vip: \"10.0.0.100\" is not IPv4/PREFIX",
        ),
        (
            ha_with("vip", Some("vip = \"10.0.0.100/33\"")),
            "ringlb.toml:6: ha.vip: \"10.0.0.100/33\": prefix \"33\"",
        ),
        (
            ha_with("vip", Some("vip = \"10.0.0.100/0\"")),
            "ringlb.toml:6: ha.vip: \"10.0.0.100/0\": prefix \"0\"",
        ),
        (
            ha_with("vip", Some("vip = \"fe80::1/64\"")),
            "ringlb.toml:6: ha.vip: \"fe80::1/64\" is not IPv4/PREFIX",
        ),
        (
            ha_with("vip", Some("vip = \"224.0.0.1/24\"")),
            "ringlb.toml:6: ha.vip: \"224.0.0.1/24\": 224.0.0.1 cannot",
        ),
        (
            ha_with("interface", Some("interface = \"\"")),
            "ringlb.toml:7: ha.interface: \"\" is not an interface",
        ),
        (
            ha_with("interface", Some("interface = \"a-very-long-name\"")),
            "ringlb.toml:7: ha.interface: \"a-very-long-name\" is not an interface name: 1 to 15 bytes",
        ),
        (
            ha_with("interface", Some("interface = \"eth0:1\"")),
            "ringlb.toml:7: ha.interface: \"eth0:1\" is not",
        ),
        (
            ha_with("preferred", Some("preferred = \"\"")),
            "ringlb.toml:8: ha.preferred: must not be empty",
        ),
        (
            ha_with("auto_failback", Some("auto_failback = \"on\"")),
            "ringlb.toml:9: ha.auto_failback: invalid type",
        ),
        (
            ha_with("keepalive_ms", Some("keepalive_ms = 5")),
            "ringlb.toml:10: ha.keepalive_ms: 5 is out of range: must be from 10 to 3600000",
        ),
        (
            ha_with("deadtime_ms", Some("deadtime_ms = 100")),
            "ringlb.toml:11: ha.deadtime_ms: deadtime_ms (100) must exceed keepalive_ms (100)",
        ),
        (
            ha_with("deadtime_ms", None).replace("keepalive_ms = 100", "keepalive_ms = 500"),
            "ringlb.toml:10: ha.keepalive_ms: deadtime_ms (400) must exceed keepalive_ms (500)",
        ),
        (
            ha_with("initdead_ms", Some("initdead_ms = 300")),
            "ringlb.toml:12: ha.initdead_ms: initdead_ms (300) must be at least deadtime_ms (400)",
        ),
        (
            ha_with("initdead_ms", None).replace("deadtime_ms = 400", "deadtime_ms = 3000"),
            "ringlb.toml:11: ha.deadtime_ms: initdead_ms (2000) must be at least deadtime_ms (3000)",
        ),
        (
            ha_with("authkey_file", None),
            "ringlb.toml:2: ha.authkey_file: required key is missing",
        ),
        (
            ha_with("authkey_file", Some("authkey_file = \"\"")),
            "ringlb.toml:13: ha.authkey_file: must not be empty",
        ),
        (
            ha_with("authkey_file", Some("authkey_file = \"/etc/ringlb/missing\"")),
            "ringlb.toml:13: ha.authkey_file: /etc/ringlb/missing: cannot read: entity not found",
        ),
        (
            HA.to_string() + "notify = \"\"\n",
            "ringlb.toml:14: ha.notify: must not be empty",
        ),
        (
            HA.to_string() + "vip_interface = \"eth0\"\n",
            "ringlb.toml:14: ha.vip_interface: unknown key",
        ),
    ];
    for (text, expected) in cases {
        let e = error_text(&text, &Overrides::default());
        assert!(e.starts_with(expected), "{e:?} should start with {expected:?}");
    }
}

#[test]
fn effective_configuration_with_ha_loads_back_to_itself() {
    for text in [
        HA.to_string(),
        ha_with("preferred", None) + "notify = \"/usr/local/bin/ha-notify\"\n",
    ] {
        let config = load_text(&text, &Overrides::default()).unwrap();
        let written = to_toml(&config);
        assert!(
            !written.contains("test key"),
            "the key itself is never written: {written}"
        );
        assert_eq!(
            load_text(&written, &Overrides::default()).unwrap(),
            config,
            "{written}"
        );
    }
}

#[test]
fn auth_key_never_shows_in_debug_or_serialized_output() {
    let key = Secret::from_bytes(b"hunter2");
    assert_eq!(format!("{key:?}"), "Secret(<redacted>)");
    let config = load_text(HA, &Overrides::default()).unwrap();
    assert!(!format!("{config:?}").contains("test key"));
    let json = serde_json::to_string(&config).unwrap();
    assert!(json.contains("\"authkey\":\"<redacted>\""), "{json}");
    assert!(!json.contains("test key"));
}

/// A fresh folder under the system temp dir for one test's key files.
fn key_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlb-authkey-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn key_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[test]
fn key_file_private_to_its_owner_loads_without_its_trailing_newline() {
    let dir = key_dir("private");
    let key = load_secret(&key_file(&dir, "a", b"s3cret \n", 0o600)).unwrap();
    assert_eq!(key.as_bytes(), b"s3cret ", "only the newline goes");
    let key = load_secret(&key_file(&dir, "b", b"s3cret\r\n", 0o400)).unwrap();
    assert_eq!(key.as_bytes(), b"s3cret");
    let key = load_secret(&key_file(&dir, "c", b"\x00binary\xff\n\n", 0o600)).unwrap();
    assert_eq!(key.as_bytes(), b"\x00binary\xff\n", "one newline only");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn key_file_open_to_group_or_others_is_refused_naming_file_and_fix() {
    let dir = key_dir("open");
    for (name, mode) in [
        ("group-read", 0o640),
        ("other-read", 0o604),
        ("group-write", 0o620),
        ("all", 0o777),
    ] {
        let path = key_file(&dir, name, b"s3cret\n", mode);
        let e = load_secret(&path).unwrap_err().to_string();
        let expected = format!(
            "{}: key file mode {:04o} lets group or others in; run `chmod 600 {}`",
            path.display(),
            mode,
            path.display()
        );
        assert_eq!(e, expected);
        assert!(!e.contains("s3cret"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_or_empty_key_file_is_refused() {
    let dir = key_dir("empty");
    let missing = dir.join("nowhere");
    let e = load_secret(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read: ", missing.display())));
    for (name, contents) in [("empty", &b""[..]), ("newline", b"\n")] {
        let path = key_file(&dir, name, contents, 0o600);
        assert_eq!(
            load_secret(&path).unwrap_err().to_string(),
            format!(
                "{}: key file is empty; write a long random secret into it",
                path.display()
            )
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn load_reads_the_key_file_and_stops_on_a_bad_one() {
    let dir = key_dir("load");
    key_file(&dir, "authkey", b"s3cret\n", 0o600);
    let config_path = dir.join("ringlb.toml");
    let text = ha_with("authkey_file", Some("authkey_file = \"authkey\""));
    std::fs::write(&config_path, &text).unwrap();
    let config = load(Some(&config_path), &Overrides::default()).unwrap();
    assert_eq!(config.ha.unwrap().authkey.as_bytes(), b"s3cret");

    key_file(&dir, "authkey", b"s3cret\n", 0o644);
    let e = load(Some(&config_path), &Overrides::default())
        .unwrap_err()
        .to_string();
    let key_path = dir.join("authkey");
    assert_eq!(
        e,
        format!(
            "{}:13: ha.authkey_file: {}: key file mode 0644 lets group or others in; run `chmod 600 {}`",
            config_path.display(),
            key_path.display(),
            key_path.display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_token_file_is_read_from_the_files_folder_and_opens_any_admin_address() {
    let dir = key_dir("admin-token");
    let token = b"0123456789abcdef0123456789abcdef";
    key_file(&dir, "admin.token", &[&token[..], b"\n"].concat(), 0o600);
    let config_path = dir.join("ringlb.toml");
    std::fs::write(
        &config_path,
        "[global]\nadmin = \"0.0.0.0:4041\"\nadmin_token_file = \"admin.token\"\n",
    )
    .unwrap();
    let config = load(Some(&config_path), &Overrides::default()).unwrap();
    assert_eq!(config.admin_token_file, Some(dir.join("admin.token")));
    assert_eq!(
        config.admin_token.as_ref().map(Secret::as_bytes),
        Some(&token[..])
    );
    assert!(!format!("{config:?}").contains("0123456789abcdef"));

    // The effective configuration names the file, never the token, and loads back the same.
    let written = to_toml(&config);
    assert!(written.contains("admin_token_file = "), "{written}");
    assert!(!written.contains("0123456789abcdef"), "{written}");
    std::fs::write(&config_path, &written).unwrap();
    assert_eq!(load(Some(&config_path), &Overrides::default()).unwrap(), config);

    // What `ringlb backend` and `ringlb reload` take from the file.
    assert_eq!(
        admin_client(&config_path, true).unwrap(),
        AdminClient {
            admin: addr("0.0.0.0:4041"),
            token: config.admin_token.clone(),
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_token_only_a_loopback_admin_address_is_taken() {
    for loopback in ["127.0.0.1:4041", "127.0.0.2:4041", "[::1]:4041"] {
        let overrides = Overrides {
            admin: Some(loopback.into()),
            ..Overrides::default()
        };
        assert_eq!(load_text("", &overrides).unwrap().admin, addr(loopback));
    }
    for open in [
        "0.0.0.0:4041",
        "10.0.0.5:4041",
        "[::]:4041",
        "[::ffff:10.0.0.5]:4041",
    ] {
        let overrides = Overrides {
            admin: Some(open.into()),
            ..Overrides::default()
        };
        let e = load_text("", &overrides).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("--admin: {} is not a loopback address", addr(open))),
            "{e}"
        );
        assert!(e.contains("admin_token_file") && !e.contains('\n'), "{e}");
    }
    let e = load_text("[global]\nadmin_token_file = \" \"\n", &Overrides::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ringlb.toml:2: global.admin_token_file: must not be empty (leave the key out)"
    );
}

#[test]
fn a_key_path_that_is_a_fifo_a_directory_or_a_huge_file_is_refused_without_hanging() {
    let dir = key_dir("odd-files");
    // A FIFO: opening it for reading would block until a writer came.
    let fifo = dir.join("fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path it is given, a live CString.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let directory = dir.join("dir");
    std::fs::create_dir(&directory).unwrap();
    for path in [&fifo, &directory] {
        assert_eq!(
            load_secret(path).unwrap_err().to_string(),
            format!("{}: key file is not a regular file", path.display())
        );
    }
    let huge = key_file(&dir, "huge", &vec![b'k'; 70_000], 0o600);
    let e = load_secret(&huge).unwrap_err().to_string();
    assert!(e.contains("larger than 65536 bytes"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
