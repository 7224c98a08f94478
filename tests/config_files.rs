//! Every configuration file we ship or keep as a fixture goes through `config::load`:
//! `examples/*.toml` and `tests/config/valid/*.toml` must load, and each
//! `tests/config/invalid/*.toml` must fail with the error its first line announces:
//!
//! ```toml
//! # expect: :7: listener[0].backend[1].address: cannot resolve
//! ```
//!
//! The expectation is what follows the file's path in the error, so it pins the line, the key
//! path and the start of the message.
//!
//! `packaging/*.toml` are production files (backend names, a key under /etc/ringlb) that cannot
//! load as they stand on a test machine; they load with a stand-in resolver and a temporary key,
//! and `packaging/ringlb.service` is checked for the keys the deployment depends on.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ringlb::config::{self, Overrides};

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {}", dir.display());
    files
}

fn load(path: &Path) -> Result<config::Config, config::ConfigError> {
    make_key_fixtures_private();
    config::load(Some(path), &Overrides::default())
}

/// `[ha]` refuses a key file open to group or others, and git checks files out with the
/// umask's mode (it keeps only the executable bit), so the `*.authkey` files of the valid
/// fixtures and the examples are made 0600 before anything loads them.
fn make_key_fixtures_private() {
    use std::os::unix::fs::PermissionsExt;
    for folder in ["tests/config/valid", "examples"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(folder);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "authkey") {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
    }
}

#[test]
fn shipped_examples_load() {
    for path in toml_files("examples") {
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!config.listeners.is_empty(), "{}", path.display());
    }
}

#[test]
fn valid_fixtures_load_and_their_effective_form_loads_back_the_same() {
    let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-files-effective");
    std::fs::create_dir_all(&scratch).unwrap();
    for path in toml_files("tests/config/valid")
        .into_iter()
        .chain(toml_files("examples"))
    {
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let effective = scratch.join(path.file_name().unwrap());
        std::fs::write(&effective, config::to_toml(&config)).unwrap();
        let again = load(&effective).unwrap_or_else(|e| panic!("{e} (written from {})", path.display()));
        assert_eq!(again, config, "{}", path.display());
    }
}

#[test]
fn invalid_fixtures_fail_with_the_announced_error() {
    for path in toml_files("tests/config/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text
            .lines()
            .next()
            .and_then(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: <error>`", path.display()));
        let error = match load(&path) {
            Ok(config) => panic!("{} loaded: {config:?}", path.display()),
            Err(e) => e.to_string(),
        };
        let wanted = format!("{}{expected}", path.display());
        assert!(
            error.starts_with(&wanted),
            "\n  got:    {error}\n  wanted: {wanted}..."
        );
        assert!(!error.contains('\n'), "{error:?} is more than one line");
    }
}

/// Where the packaging configs expect the HA key in production.
const PRODUCTION_AUTHKEY: &str = "/etc/ringlb/authkey";

/// Resolves every host to 127.0.0.1: the packaging configs name db-01 and db-02, which do not
/// resolve here. What is tested is the file, not this machine's DNS.
fn resolve_to_loopback(_host: &str, port: u16) -> Result<SocketAddr, String> {
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A key file of production shape (32 bytes, base64) with the mode ringlb demands, 0600, in a
/// scratch directory of the test's own (tests run in parallel: one must not read a key another
/// is writing).
fn temporary_authkey(test: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("config-files-packaging")
        .join(test);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("authkey");
    std::fs::write(&key, "q7ZrV0m2v9C6vJ3nq1p8kE4yT5uW2xL0aB9cD8eF7gI=\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    key
}

#[test]
fn packaging_configs_load_with_their_backend_names_and_vip() {
    let key = temporary_authkey("load");
    for path in toml_files("packaging") {
        let text = std::fs::read_to_string(&path).unwrap();
        // The file points at /etc/ringlb/authkey, which does not exist on a test machine (and
        // must not be created by a test): swap in the temporary 0600 key, and only that line.
        let production_line = format!("authkey_file = \"{PRODUCTION_AUTHKEY}\"");
        assert_eq!(
            text.matches(&production_line).count(),
            1,
            "{}: expected one `{production_line}`",
            path.display()
        );
        let text = text.replace(
            &production_line,
            &format!("authkey_file = {:?}", key.to_str().unwrap()),
        );

        let config = config::load_str(&path, &text, &Overrides::default(), &resolve_to_loopback)
            .unwrap_or_else(|e| panic!("{e}"));

        let [listener] = &config.listeners[..] else {
            panic!("{}: expected one listener", path.display())
        };
        assert_eq!(
            listener.bind,
            "0.0.0.0:4040".parse().unwrap(),
            "{}",
            path.display()
        );
        let names: Vec<&str> = listener.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["db-01:3306", "db-02:3306"], "{}", path.display());
        assert!(
            config.admin.ip().is_loopback(),
            "{}: admin must stay on loopback",
            path.display()
        );
        let ha = config
            .ha
            .as_ref()
            .unwrap_or_else(|| panic!("{}: no [ha] section", path.display()));
        assert_eq!(ha.vip.addr, Ipv4Addr::new(10, 0, 0, 100), "{}", path.display());
        assert_eq!(ha.vip.prefix_len, 24, "{}", path.display());
        assert_eq!(ha.interface, "eth0", "{}", path.display());
        assert_eq!(ha.authkey_file, key, "{}", path.display());
        let node = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(
            ha.node,
            node,
            "{}: [ha] node must match the file name",
            path.display()
        );
    }
}

#[test]
fn packaging_configs_are_the_two_nodes_of_one_pair() {
    let key = temporary_authkey("pair");
    // As above, the production key path swapped for a temporary key (comments included,
    // which is harmless).
    let load = |name: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging").join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(PRODUCTION_AUTHKEY, key.to_str().unwrap());
        config::load_str(&path, &text, &Overrides::default(), &resolve_to_loopback)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let one = load("lb-db-01.toml");
    let two = load("lb-db-02.toml");
    let (ha1, ha2) = (one.ha.as_ref().unwrap(), two.ha.as_ref().unwrap());
    assert_eq!(ha1.peers, [ha2.bind], "lb-db-01 must heartbeat to lb-db-02");
    assert_eq!(ha2.peers, [ha1.bind], "lb-db-02 must heartbeat to lb-db-01");
    assert_eq!(
        ha1.preferred, ha2.preferred,
        "both nodes must agree on the preferred one"
    );
    assert_eq!(ha1.auto_failback, ha2.auto_failback);
    assert_eq!(ha1.vip, ha2.vip);
    assert_eq!(
        (ha1.keepalive_ms, ha1.deadtime_ms, ha1.initdead_ms),
        (ha2.keepalive_ms, ha2.deadtime_ms, ha2.initdead_ms)
    );
    // Everything but [ha] is the same on both nodes: whichever holds the VIP proxies alike.
    assert_eq!(one.listeners, two.listeners);
    assert_eq!(one.health, two.health);
    assert_eq!(one.admin, two.admin);
}

/// `Key=Value` lines of a systemd unit, comments and section headers left out. A key may repeat.
fn unit_entries(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .map(|line| {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=Value: {line:?}"));
            (key.trim(), value.trim())
        })
        .collect()
}

#[test]
fn systemd_unit_runs_the_config_reloads_with_hup_and_grants_the_vip_capabilities() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/ringlb.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let entries = unit_entries(&text);
    let one = |key: &str| -> &str {
        let values: Vec<&str> = entries
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect();
        match values[..] {
            [value] => value,
            _ => panic!("{key}= must appear once in {}, found {values:?}", path.display()),
        }
    };

    let start: Vec<&str> = one("ExecStart").split_whitespace().collect();
    assert_eq!(start[0], "/usr/bin/ringlb", "{start:?}");
    assert_eq!(start[1..3], ["run", "--config"], "{start:?}");
    assert_eq!(start[3], "/etc/ringlb/ringlb.toml", "{start:?}");

    let reload: Vec<&str> = one("ExecReload").split_whitespace().collect();
    assert!(reload[0].ends_with("/kill"), "{reload:?}");
    assert!(reload.contains(&"-HUP"), "{reload:?}");
    assert_eq!(reload.last(), Some(&"$MAINPID"), "{reload:?}");

    let nofile: u64 = one("LimitNOFILE").parse().expect("LimitNOFILE is a number");
    assert!(
        nofile >= 65536,
        "LimitNOFILE={nofile} is too low for two sockets per connection"
    );

    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let caps: Vec<&str> = one(key).split_whitespace().collect();
        for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW"] {
            assert!(caps.contains(&cap), "{key} lacks {cap}: {caps:?}");
        }
    }
    // The bounding set must not take away what the ambient set grants.
    let bounding: Vec<&str> = one("CapabilityBoundingSet").split_whitespace().collect();
    for cap in one("AmbientCapabilities").split_whitespace() {
        assert!(
            bounding.contains(&cap),
            "{cap} is ambient but not in the bounding set"
        );
    }

    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("User"), "ringlb");
    assert_eq!(one("Group"), "ringlb");
    assert_eq!(one("DynamicUser"), "no");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("KillSignal"), "SIGTERM");
    // A seccomp filter would block io_uring_setup in many systemd versions; see the unit.
    assert!(
        entries.iter().all(|(k, _)| *k != "SystemCallFilter"),
        "SystemCallFilter= can block io_uring"
    );
}
