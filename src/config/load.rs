//! Loading: the entry points that read a file (or only the flags), the key and token files
//! with their mode checks, the resolver, and the address parsers the flags share.

use super::*;

/// Reads the optional file, applies the flags over it and validates the result. Backend names
/// are resolved here, once, with the system resolver (IPv4 preferred).
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            load_str(path, &text, overrides, &resolve_system)
        }
        None => build(
            &Origin::none(),
            RawFile::default(),
            overrides,
            &resolve_system,
            &load_secret,
        ),
    }
}

/// Reads the HA key file: refuses one that group or others may read or write (as Heartbeat does
/// with its authkeys) and an empty one, and drops one trailing newline so that `echo secret >
/// FILE` and an editor's final newline give the same key. Errors name the file, never the key.
pub fn load_secret(path: &Path) -> Result<Secret, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    // Non-blocking, so that a FIFO put where the key should be cannot hang start-up or
    // `ringlb check` in open; anything but a regular file is refused below.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_error)?;
    // The type and mode of the file opened, not of the path checked earlier: no window for a
    // swap.
    let metadata = file.metadata().map_err(read_error)?;
    if !metadata.is_file() {
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            message: "key file is not a regular file".to_string(),
        });
    }
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            message: format!(
                "key file mode {:04o} lets group or others in; run `chmod 600 {}`",
                mode & 0o7777,
                path.display()
            ),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            message: format!("key file is larger than {MAX_KEY_FILE_BYTES} bytes: is it the right file?"),
        });
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(ConfigError::Key {
            path: path.to_path_buf(),
            message: "key file is empty; write a long random secret into it".to_string(),
        });
    }
    Ok(Secret(bytes))
}

/// The largest key or token file read: a secret is a few dozen bytes.
pub const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The shortest admin token: 128 bits as hex, so that it cannot be guessed over the network.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 32;

/// Reads an admin token file as [`load_secret`] does and checks the token ([`check_admin_token`]).
/// `ringlb backend` and `ringlb reload` read their `--token-file` with it.
pub fn load_admin_token(path: &Path) -> Result<Secret, ConfigError> {
    load_secret(path).and_then(|token| check_admin_token(path, token))
}

/// An admin token travels in an HTTP header: printable ASCII without spaces, and long enough not
/// to be guessed. Errors name the file, never the token.
pub(super) fn check_admin_token(path: &Path, token: Secret) -> Result<Secret, ConfigError> {
    let refuse = |message: String| ConfigError::Key {
        path: path.to_path_buf(),
        message,
    };
    if !token.as_bytes().iter().all(|b| b.is_ascii_graphic()) {
        return Err(refuse(
            "admin token must be printable ASCII without spaces (it travels in an HTTP header); \
             `openssl rand -hex 32` writes one"
                .into(),
        ));
    }
    if token.as_bytes().len() < MIN_ADMIN_TOKEN_BYTES {
        return Err(refuse(format!(
            "admin token is {} characters; use at least {MIN_ADMIN_TOKEN_BYTES} \
             (`openssl rand -hex 32` writes 64)",
            token.as_bytes().len()
        )));
    }
    Ok(token)
}

/// Reads a key file; a parameter of `build` so that validation is unit-tested without files.
pub type KeyReader<'r> = &'r dyn Fn(&Path) -> Result<Secret, ConfigError>;

/// Resolves a host (a name or an IP literal) and port to one address.
pub type Resolver<'r> = &'r dyn Fn(&str, u16) -> Result<SocketAddr, String>;

/// [`load`] for text already in memory; `path` only labels the errors. The resolver is a
/// parameter so tests can stand in for DNS.
pub fn load_str(
    path: &Path,
    text: &str,
    overrides: &Overrides,
    resolve: Resolver<'_>,
) -> Result<Config, ConfigError> {
    load_str_with(path, text, overrides, resolve, &load_secret)
}

/// [`load_str`] with the key file read by `read_key` too: the unit tests and the config fuzz
/// target stand in for the file system with it, as for DNS with `resolve`.
pub fn load_str_with(
    path: &Path,
    text: &str,
    overrides: &Overrides,
    resolve: Resolver<'_>,
    read_key: KeyReader<'_>,
) -> Result<Config, ConfigError> {
    let origin = Origin { path, text };
    let raw = parse(&origin)?;
    build(&origin, raw, overrides, resolve, read_key)
}

/// What a client command (`ringlb backend`, `ringlb reload`) takes from a configuration file:
/// the admin address and token of the ringlb that runs with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminClient {
    pub admin: SocketAddr,
    pub token: Option<Secret>,
}

/// Reads the `[global]` admin keys of the configuration file at `path`, and, with `read_token`,
/// the token file it names; nothing else is validated or resolved, so the command works on a
/// node whose backends do not resolve from where it runs. Errors are located as [`load`]'s are.
pub fn admin_client(path: &Path, read_token: bool) -> Result<AdminClient, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = Origin { path, text: &text };
    let global = parse(&origin)?.global;
    let admin = match global.as_ref().and_then(|g| g.admin.as_ref()) {
        Some(a) => parse_ip_port(a.get_ref()).map_err(|m| origin.at(a.span().start, "global.admin", m))?,
        None => DEFAULT_ADMIN.parse().expect("valid default"),
    };
    let token = match global.as_ref().and_then(|g| g.admin_token_file.as_ref()) {
        Some(v) if read_token => Some(
            load_admin_token(&relative_to_file(&origin, v.get_ref()))
                .map_err(|e| origin.at(v.span().start, "global.admin_token_file", e.to_string()))?,
        ),
        _ => None,
    };
    Ok(AdminClient { admin, token })
}

/// The system resolver: an IP literal as is, otherwise the first IPv4 address the name has, or
/// its first address when it has no IPv4 one.
pub fn resolve_system(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| "the name has no address".to_string())
}

/// Parses `IP:PORT` (IPv6 in brackets), as a bind or admin address must be.
pub fn parse_ip_port(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is not IP:PORT (for example \"127.0.0.1:4041\")"))
}

/// Splits `HOST:PORT` (`[IPv6]:PORT` for an IPv6 literal) without resolving anything. The port
/// is required and must be 1..=65535.
pub fn split_host_port(address: &str) -> Result<(&str, u16), String> {
    let malformed = || format!("{address:?} is not HOST:PORT (for example \"db-01:3306\")");
    let (host, port) = match address.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']').ok_or_else(malformed)?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(format!(
                    "{address:?}: {host:?} in brackets is not an IPv6 address"
                ));
            }
            (host, after.strip_prefix(':').ok_or_else(malformed)?)
        }
        None => {
            let (host, port) = address.rsplit_once(':').ok_or_else(malformed)?;
            if host.contains(':') {
                return Err(format!(
                    "{address:?}: an IPv6 address needs brackets, as in \"[::1]:3306\""
                ));
            }
            (host, port)
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed());
    }
    // u16::from_str would also take "+80"; a port is digits only.
    let port_number = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse::<u16>().ok().filter(|&p| p != 0)
    } else {
        None
    };
    match port_number {
        Some(port) => Ok((host, port)),
        None => Err(format!(
            "{address:?}: port {port:?} is not a number from 1 to 65535"
        )),
    }
}
