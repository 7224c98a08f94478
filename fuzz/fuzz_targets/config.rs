//! The configuration file on any text: loading never panics; a refusal is one line that starts
//! with the file's name (or the key file's, for a key that cannot be read); a configuration that
//! loads is written by `to_toml` in a form that loads back to the same configuration, and
//! writing that again gives the same text. Names resolve through a stand-in (no DNS) and key
//! files through another (no file system), both deterministic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use ringlb::config::{load_str_with, to_toml, ConfigError, Overrides, Secret};

const CONFIG_PATH: &str = "/fuzz/ringlb.toml";

/// IP literals are themselves; a name under `.invalid` does not exist; any other name has one
/// IPv4 address derived from its text.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if host.ends_with(".invalid") {
        return Err("no such host".into());
    }
    let hash = host.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [_, b, c, d] = hash.to_be_bytes();
    Ok(SocketAddr::new(Ipv4Addr::new(10, b, c, d).into(), port))
}

/// A key file named `missing` does not exist; any other holds a key derived from its path.
fn read_key(path: &Path) -> Result<Secret, ConfigError> {
    if path.ends_with("missing") {
        return Err(ConfigError::Read {
            path: path.to_path_buf(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    Ok(Secret::from_bytes(path.as_os_str().as_encoded_bytes()))
}

fuzz_target!(|data: &[u8]| {
    // The file is read as UTF-8 text: other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new(CONFIG_PATH);
    let overrides = Overrides::default();
    match load_str_with(path, text, &overrides, &resolve, &read_key) {
        Ok(config) => {
            let written = to_toml(&config);
            let again = load_str_with(path, &written, &overrides, &resolve, &read_key)
                .unwrap_or_else(|e| panic!("to_toml wrote a file that does not load: {e}\n{written}"));
            assert_eq!(again, config, "to_toml lost something:\n{written}");
            assert_eq!(to_toml(&again), written);
        }
        Err(error) => {
            let line = error.to_string();
            assert!(!line.contains(['\n', '\r']), "more than one line: {line:?}");
            let about_key = matches!(&error, ConfigError::Read { path, .. } if path.ends_with("missing"));
            assert!(
                about_key || line.starts_with(&format!("{CONFIG_PATH}:")),
                "{line:?}"
            );
        }
    }
});
