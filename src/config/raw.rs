//! The raw layer: `Raw*` structs that mirror the TOML (`deny_unknown_fields`, every value
//! [`Spanned`]), and the mapping from a byte offset back to a line and a key path, so that a
//! serde error or a later complaint names where it is.

use super::*;

// ---------------------------------------------------------------------------------------------
// Raw input: the file as written. Integers are read as i64 so that a negative or huge number
// gets our range message with its line, not a serde type error.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawFile {
    pub(super) global: Option<RawGlobal>,
    pub(super) health: Option<RawHealth>,
    pub(super) tuning: Option<RawTuning>,
    pub(super) ha: Option<Spanned<RawHa>>,
    #[serde(default)]
    pub(super) listener: Vec<Spanned<RawListener>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawHa {
    pub(super) node: Spanned<String>,
    pub(super) bind: Spanned<String>,
    pub(super) peers: Spanned<Vec<Spanned<String>>>,
    pub(super) vip: Spanned<String>,
    pub(super) interface: Spanned<String>,
    pub(super) preferred: Option<Spanned<String>>,
    pub(super) auto_failback: Option<bool>,
    pub(super) keepalive_ms: Option<Spanned<i64>>,
    pub(super) deadtime_ms: Option<Spanned<i64>>,
    pub(super) initdead_ms: Option<Spanned<i64>>,
    pub(super) authkey_file: Spanned<String>,
    pub(super) notify: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGlobal {
    pub(super) workers: Option<Spanned<i64>>,
    pub(super) admin: Option<Spanned<String>>,
    pub(super) admin_token_file: Option<Spanned<String>>,
    pub(super) shutdown_grace_ms: Option<Spanned<i64>>,
    pub(super) histogram_dump: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawHealth {
    pub(super) check: Option<Spanned<String>>,
    pub(super) interval_ms: Option<Spanned<i64>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) timeout_ms: Option<Spanned<i64>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) galera_donor_ok: Option<bool>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) tls: Option<Spanned<String>>,
    pub(super) tls_ca_file: Option<Spanned<String>>,
    pub(super) check_query: Option<Spanned<String>>,
    pub(super) notify: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawTuning {
    pub(super) driver: Option<Spanned<String>>,
    pub(super) relay: Option<Spanned<String>>,
    pub(super) buffer_bytes: Option<Spanned<i64>>,
    pub(super) buffers: Option<Spanned<i64>>,
    pub(super) pipe_bytes: Option<Spanned<i64>>,
    pub(super) pipes_kept: Option<Spanned<i64>>,
    pub(super) ring_entries: Option<Spanned<i64>>,
    pub(super) iowq_max_workers: Option<Spanned<i64>>,
    pub(super) pin_workers: Option<bool>,
    pub(super) sqpoll_idle_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawListener {
    pub(super) name: Spanned<String>,
    pub(super) bind: Spanned<String>,
    pub(super) connect_timeout_ms: Option<Spanned<i64>>,
    pub(super) allow: Option<Vec<Spanned<String>>>,
    pub(super) balance: Option<Spanned<String>>,
    pub(super) idle_timeout_ms: Option<Spanned<i64>>,
    pub(super) queue_limit: Option<Spanned<i64>>,
    pub(super) queue_timeout_ms: Option<Spanned<i64>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) send_proxy: Option<Spanned<String>>,
    pub(super) slowstart_ms: Option<Spanned<i64>>,
    pub(super) role: Option<Spanned<String>>,
    pub(super) failback: Option<Spanned<bool>>,
    pub(super) on_writer_change: Option<Spanned<String>>,
    pub(super) max_lag_s: Option<Spanned<i64>>,
    pub(super) lag_return_s: Option<Spanned<i64>>,
    pub(super) reader_uses_writer: Option<Spanned<bool>>,
    #[serde(default)]
    pub(super) backend: Vec<Spanned<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawBackend {
    pub(super) address: Spanned<String>,
    pub(super) weight: Option<Spanned<i64>>,
    pub(super) backup: Option<bool>,
    pub(super) maxconn: Option<Spanned<i64>>,
}

/// The file an error points into.
pub(super) struct Origin<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Origin<'_> {
    /// Stands in when there is no file: no value carries a span then, so it is never pointed at.
    pub(super) fn none() -> Origin<'static> {
        Origin {
            path: Path::new("(no file)"),
            text: "",
        }
    }

    pub(super) fn at(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::At {
            path: self.path.to_path_buf(),
            line: line_of(self.text, offset),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Where a value came from, so that a complaint about it names the right thing.
#[derive(Debug, Clone)]
pub(super) enum Site {
    File {
        offset: usize,
        key: String,
    },
    Flag(&'static str),
    /// A built-in default; `what` says which.
    Default(&'static str),
}

impl Site {
    pub(super) fn file<T>(value: &Spanned<T>, key: impl Into<String>) -> Site {
        Site::File {
            offset: value.span().start,
            key: key.into(),
        }
    }

    pub(super) fn error(&self, origin: &Origin<'_>, message: impl Into<String>) -> ConfigError {
        match self {
            Site::File { offset, key } => origin.at(*offset, key.clone(), message),
            Site::Flag(flag) => ConfigError::Flag {
                flag: (*flag).to_string(),
                message: message.into(),
            },
            Site::Default(what) => ConfigError::Flag {
                flag: format!("default {what}"),
                message: message.into(),
            },
        }
    }
}

pub(super) fn parse(origin: &Origin<'_>) -> Result<RawFile, ConfigError> {
    // Parsing the document alone first separates syntax errors from schema errors, and gives the
    // tree that maps a schema error's offset back to its key path.
    let document = DeTable::parse(origin.text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        origin.at(offset, "TOML syntax", e.message())
    })?;
    toml::from_str::<RawFile>(origin.text).map_err(|e| schema_error(origin, document.get_ref(), &e))
}

/// Turns a serde error into `file:line: key: message`.
pub(super) fn schema_error(
    origin: &Origin<'_>,
    document: &DeTable<'_>,
    error: &toml::de::Error,
) -> ConfigError {
    let offset = error.span().map_or(0, |s| s.start);
    let path = key_path_at(document, offset);
    let message = error.message();
    // "missing field `x`" points at the table that lacks it: name the key itself.
    if let Some((name, _)) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split_once('`'))
    {
        let key = match &path {
            Some(table) => join_key(table, name),
            None => name.to_string(),
        };
        return origin.at(offset, key, "required key is missing");
    }
    // "unknown field `x`, expected ..." points at the key, which the path already ends with
    // (quoted and escaped when it needs to be). serde writes the key as it stands, backticks and
    // newlines included, so the part kept is what follows the last "`, expected ": the expected
    // names are ours and hold no backtick.
    let message = match message
        .strip_prefix("unknown field `")
        .map(|rest| rest.rfind("`, expected ").map_or("", |at| &rest[at + 1..]))
    {
        Some(expected) => format!("unknown key{expected}"),
        None => message
            .replace("expected i64", "expected an integer")
            .replace("expected a sequence", "expected an array of tables"),
    };
    origin.at(offset, path.unwrap_or_else(|| "(top level)".into()), message)
}

/// The key path (`listener[0].backend[1].weight`) of the deepest key, value or array element
/// whose span covers `offset`.
pub(super) fn key_path_at(document: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut best = None;
    search_table(document, offset, "", 0, &mut best);
    best.map(|(_, path)| path)
}

pub(super) fn covers(span: Range<usize>, offset: usize) -> bool {
    // An empty span (an error at the end of a value) still covers its own position.
    span.start <= offset && offset < span.end.max(span.start + 1)
}

pub(super) fn offer(best: &mut Option<(usize, String)>, depth: usize, path: &str) {
    if best.as_ref().is_none_or(|(d, _)| depth > *d) {
        *best = Some((depth, path.to_string()));
    }
}

pub(super) fn search_table(
    table: &DeTable<'_>,
    offset: usize,
    prefix: &str,
    depth: usize,
    best: &mut Option<(usize, String)>,
) {
    for (key, value) in table.iter() {
        let path = join_key(prefix, key.get_ref());
        if covers(key.span(), offset) || covers(value.span(), offset) {
            offer(best, depth + 1, &path);
        }
        // Always descend: an array of tables has the span of its first header only, and a
        // table's span is its header, while their contents lie further down the file.
        search_value(value.get_ref(), offset, &path, depth + 1, best);
    }
}

pub(super) fn search_value(
    value: &DeValue<'_>,
    offset: usize,
    path: &str,
    depth: usize,
    best: &mut Option<(usize, String)>,
) {
    match value {
        DeValue::Table(table) => search_table(table, offset, path, depth, best),
        DeValue::Array(array) => {
            for (i, element) in array.into_iter().enumerate() {
                let element_path = format!("{path}[{i}]");
                if covers(element.span(), offset) {
                    offer(best, depth + 1, &element_path);
                }
                search_value(element.get_ref(), offset, &element_path, depth + 1, best);
            }
        }
        _ => {}
    }
}

pub(super) fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_string() } else { toml_string(key) };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}
