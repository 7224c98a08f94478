//! The reply to one `COM_QUERY` in the text protocol, read packet by packet: OK, ERR, or a result
//! set (column count, column definitions, EOF, rows, EOF).
//!
//! The checker reads a server's state (read_only, replica status, Galera status) with a few
//! statements sent back to back and reads their replies in order, one round trip for all of them,
//! so each reply is parsed on its own by a [`ReplyReader`]. ringlb never asks for
//! `CLIENT_DEPRECATE_EOF`, so the EOF packets after the definitions and after the rows are always
//! there. A reply is bounded ([`MAX_COLUMNS`], [`MAX_ROWS`]): a server status is a few dozen
//! rows, and a peer that sends more is not answering what was asked.

use super::mysql::{parse_err_body, printable, ErrPacket, ProtocolError, Reader};

/// Columns a result set may have; `SHOW REPLICA STATUS` has about 60.
pub const MAX_COLUMNS: usize = 256;
/// Rows a result set may have: one per replication source, one per status variable asked for.
pub const MAX_ROWS: usize = 4096;
/// Bytes one reply may take on the wire: a server's state is a few KiB. Without it a hostile
/// peer could make the checker hold `MAX_ROWS` packets of 64 KiB, each value grown by escaping.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// One statement's reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A statement without a result set succeeded.
    Ok,
    Err(ErrPacket),
    Rows(ResultSet),
}

/// A result set, every value as text (`None` for SQL NULL). Values are kept printable: control
/// characters are escaped, so that a value can go into a log line as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl ResultSet {
    /// The position of the column named `name`, compared without regard to case.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.eq_ignore_ascii_case(name))
    }

    /// The value of column `name` in row `row`: `None` when there is no such row or column, or the
    /// value is NULL.
    pub fn value(&self, row: usize, name: &str) -> Option<&str> {
        let column = self.column(name)?;
        self.rows.get(row)?.get(column)?.as_deref()
    }
}

/// Where a [`ReplyReader`] is in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing read yet: OK, ERR or a column count comes.
    First,
    /// Column definitions, this many still to come.
    Columns(usize),
    /// The EOF after the definitions.
    ColumnsEnd,
    /// Rows until an EOF (or an ERR, when the statement failed part-way).
    Rows,
    /// The reply is complete; nothing more belongs to it.
    Done,
}

/// Parses one statement's reply from its packets' payloads, in order.
#[derive(Debug)]
pub struct ReplyReader {
    stage: Stage,
    set: ResultSet,
    /// Payload bytes fed so far ([`MAX_REPLY_BYTES`] at most).
    bytes: usize,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    pub fn new() -> Self {
        ReplyReader {
            stage: Stage::First,
            set: ResultSet::default(),
            bytes: 0,
        }
    }

    /// Takes the next packet's payload; returns the reply once it is complete, `None` while more
    /// packets belong to it.
    pub fn feed(&mut self, payload: &[u8]) -> Result<Option<Reply>, ProtocolError> {
        self.bytes += payload.len();
        if self.bytes > MAX_REPLY_BYTES {
            return Err(ProtocolError::ResultTooLarge("bytes"));
        }
        let mut r = Reader::new(payload);
        match self.stage {
            Stage::First => match r.peek() {
                Some(0x00) => self.finish(Reply::Ok),
                Some(0xFF) => {
                    r.u8("reply type")?;
                    let err = parse_err_body(&mut r)?;
                    self.finish(Reply::Err(err))
                }
                // A LOCAL INFILE request: never asked for by a state statement.
                Some(0xFB) => Err(ProtocolError::UnexpectedPacket(0xFB)),
                _ => {
                    let count = r.lenenc_int("column count")?.unwrap_or(0);
                    let count = usize::try_from(count).unwrap_or(usize::MAX);
                    if count == 0 || count > MAX_COLUMNS {
                        return Err(ProtocolError::ResultTooLarge("columns"));
                    }
                    self.stage = Stage::Columns(count);
                    Ok(None)
                }
            },
            Stage::Columns(left) => {
                // Column definition 41: catalog, schema, table, org_table, name, org_name, ...
                for what in ["catalog", "schema", "table", "original table"] {
                    r.lenenc_bytes(what)?;
                }
                let name = r.lenenc_bytes("column name")?.unwrap_or_default();
                self.set.columns.push(printable(name));
                self.stage = if left > 1 {
                    Stage::Columns(left - 1)
                } else {
                    Stage::ColumnsEnd
                };
                Ok(None)
            }
            Stage::ColumnsEnd => {
                if !is_eof(payload) {
                    return Err(ProtocolError::UnexpectedPacket(r.peek().unwrap_or(0)));
                }
                self.stage = Stage::Rows;
                Ok(None)
            }
            Stage::Rows => {
                if is_eof(payload) {
                    let set = std::mem::take(&mut self.set);
                    return self.finish(Reply::Rows(set));
                }
                if r.peek() == Some(0xFF) {
                    r.u8("reply type")?;
                    let err = parse_err_body(&mut r)?;
                    return self.finish(Reply::Err(err));
                }
                if self.set.rows.len() >= MAX_ROWS {
                    return Err(ProtocolError::ResultTooLarge("rows"));
                }
                let mut row = Vec::with_capacity(self.set.columns.len());
                for _ in 0..self.set.columns.len() {
                    row.push(r.lenenc_bytes("row value")?.map(printable));
                }
                if !r.is_empty() {
                    return Err(ProtocolError::UnexpectedPacket(r.peek().unwrap_or(0)));
                }
                self.set.rows.push(row);
                Ok(None)
            }
            Stage::Done => Err(ProtocolError::UnexpectedPacket(r.peek().unwrap_or(0))),
        }
    }

    fn finish(&mut self, reply: Reply) -> Result<Option<Reply>, ProtocolError> {
        self.stage = Stage::Done;
        Ok(Some(reply))
    }
}

/// An EOF packet: 0xFE and shorter than 9 bytes (a row may start with 0xFE, an 8-byte length
/// prefix, but is then at least 9 bytes long).
fn is_eof(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < 9
}

/// The payload of a `COM_QUERY` for `sql`.
pub fn com_query(sql: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + sql.len());
    out.push(super::mysql::COM_QUERY);
    out.extend_from_slice(sql.as_bytes());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A length-encoded string.
    fn lenenc(value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match value.len() {
            n if n < 0xFB => out.push(n as u8),
            n if n < 1 << 16 => {
                out.push(0xFC);
                out.extend_from_slice(&(n as u16).to_le_bytes());
            }
            n => {
                out.push(0xFD);
                out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
            }
        }
        out.extend_from_slice(value);
        out
    }

    /// The payloads a MariaDB server sends for a result set with `columns` and `rows` (`None` is
    /// NULL), as on the wire without `CLIENT_DEPRECATE_EOF`.
    pub(crate) fn result_set_payloads(columns: &[&str], rows: &[Vec<Option<&str>>]) -> Vec<Vec<u8>> {
        let eof = vec![0xFE, 0, 0, 0x02, 0];
        let mut packets = vec![vec![columns.len() as u8]];
        for name in columns {
            let mut def = Vec::new();
            for part in [&b"def"[..], b"", b"", b"", name.as_bytes(), name.as_bytes()] {
                def.extend(lenenc(part));
            }
            // Fixed fields: length 0x0c, charset, column length, type, flags, decimals, filler.
            def.extend_from_slice(&[0x0c, 0x21, 0, 0, 0, 0, 0xFD, 0, 0, 0x27, 0, 0]);
            packets.push(def);
        }
        packets.push(eof.clone());
        for row in rows {
            let mut out = Vec::new();
            for value in row {
                match value {
                    Some(v) => out.extend(lenenc(v.as_bytes())),
                    None => out.push(0xFB),
                }
            }
            packets.push(out);
        }
        packets.push(eof);
        packets
    }

    /// Feeds `packets` to a fresh reader; the reply must complete with the last one.
    pub(crate) fn read(packets: &[Vec<u8>]) -> Result<Reply, ProtocolError> {
        let mut reader = ReplyReader::new();
        for (i, packet) in packets.iter().enumerate() {
            if let Some(reply) = reader.feed(packet)? {
                assert_eq!(i + 1, packets.len(), "reply complete before its last packet");
                return Ok(reply);
            }
        }
        panic!("reply not complete after {} packets", packets.len());
    }

    #[test]
    fn a_result_set_reads_back_with_nulls_and_names() {
        let packets = result_set_payloads(
            &["Slave_IO_Running", "Seconds_Behind_Master"],
            &[vec![Some("Yes"), None], vec![Some("No"), Some("12")]],
        );
        let Reply::Rows(set) = read(&packets).unwrap() else {
            panic!("not a result set");
        };
        assert_eq!(set.columns, vec!["Slave_IO_Running", "Seconds_Behind_Master"]);
        assert_eq!(set.value(0, "slave_io_running"), Some("Yes"));
        assert_eq!(set.value(0, "Seconds_Behind_Master"), None);
        assert_eq!(set.value(1, "Seconds_Behind_Master"), Some("12"));
        assert_eq!(set.value(2, "Slave_IO_Running"), None);
        assert_eq!(set.value(0, "Nope"), None);
    }

    #[test]
    fn an_empty_result_set_has_its_columns_and_no_rows() {
        let packets = result_set_payloads(&["Slave_IO_Running"], &[]);
        assert_eq!(
            read(&packets).unwrap(),
            Reply::Rows(ResultSet {
                columns: vec!["Slave_IO_Running".into()],
                rows: vec![],
            })
        );
    }

    #[test]
    fn ok_and_err_replies_are_one_packet() {
        assert_eq!(read(&[vec![0, 0, 0, 2, 0, 0, 0]]).unwrap(), Reply::Ok);
        let mut err = vec![0xFF, 0xCB, 0x04, b'#'];
        err.extend_from_slice(
            b"42000Access denied; you need (at least one of) the SLAVE MONITOR privilege(s)",
        );
        let Reply::Err(e) = read(&[err]).unwrap() else {
            panic!("not an error");
        };
        assert_eq!(e.code, 1227);
        assert_eq!(e.sql_state.as_deref(), Some("42000"));
        assert!(e.message.contains("SLAVE MONITOR"));
    }

    #[test]
    fn an_error_in_the_middle_of_the_rows_ends_the_reply() {
        let mut packets = result_set_payloads(&["a"], &[vec![Some("1")]]);
        packets.pop();
        packets.push(vec![0xFF, 0x28, 0x05, b'#', b'7', b'0', b'1', b'0', b'0', b'x']);
        assert!(matches!(read(&packets).unwrap(), Reply::Err(e) if e.code == 1320));
    }

    #[test]
    fn a_value_with_a_control_character_is_kept_printable() {
        let packets = result_set_payloads(&["Last_Error"], &[vec![Some("line\nbreak\x1b[2J")]]);
        let Reply::Rows(set) = read(&packets).unwrap() else {
            panic!("not a result set");
        };
        assert_eq!(set.value(0, "Last_Error"), Some("line\\nbreak\\u{1b}[2J"));
    }

    #[test]
    fn long_values_use_wider_length_prefixes() {
        let long = "x".repeat(300);
        let packets = result_set_payloads(&["v"], &[vec![Some(&long)]]);
        let Reply::Rows(set) = read(&packets).unwrap() else {
            panic!("not a result set");
        };
        assert_eq!(set.value(0, "v").map(str::len), Some(300));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let mut reader = ReplyReader::new();
        // A column count and then a truncated definition.
        assert_eq!(reader.feed(&[1]).unwrap(), None);
        assert!(reader.feed(&[3, b'd']).is_err());
        // Too many columns.
        assert!(ReplyReader::new().feed(&[0xFC, 0xFF, 0xFF]).is_err());
        // A packet after the reply was complete.
        let mut done = ReplyReader::new();
        assert_eq!(done.feed(&[0, 0, 0, 2, 0, 0, 0]).unwrap(), Some(Reply::Ok));
        assert!(done.feed(&[0]).is_err());
        // No EOF after the definitions.
        let mut packets = result_set_payloads(&["a"], &[]);
        packets[2] = vec![1, b'x'];
        assert!(matches!(read(&packets), Err(ProtocolError::UnexpectedPacket(1))));
        // A row with fewer values than columns, or more.
        let mut packets = result_set_payloads(&["a", "b"], &[vec![Some("1"), Some("2")]]);
        packets[4] = vec![1, b'1'];
        assert!(read(&packets[..5]).is_err());
        packets[4] = vec![1, b'1', 1, b'2', 1, b'3'];
        assert!(read(&packets[..5]).is_err());
        // A LOCAL INFILE request instead of a reply.
        assert!(matches!(
            ReplyReader::new().feed(&[0xFB, b'f']),
            Err(ProtocolError::UnexpectedPacket(0xFB))
        ));
    }

    #[test]
    fn a_reply_larger_than_its_byte_budget_is_refused() {
        let value = "\u{1}".repeat(60_000);
        let rows: Vec<_> = (0..40).map(|_| vec![Some(value.as_str())]).collect();
        let packets = result_set_payloads(&["v"], &rows);
        let mut reader = ReplyReader::new();
        let refused = packets.iter().find_map(|p| reader.feed(p).err());
        assert_eq!(refused, Some(ProtocolError::ResultTooLarge("bytes")));
        // Within the budget, the same values read back.
        let packets = result_set_payloads(&["v"], &rows[..10]);
        assert!(matches!(read(&packets), Ok(Reply::Rows(set)) if set.rows.len() == 10));
    }

    #[test]
    fn com_query_is_the_command_byte_and_the_text() {
        assert_eq!(com_query("SELECT 1"), b"\x03SELECT 1".to_vec());
    }
}
