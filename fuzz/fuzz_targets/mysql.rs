//! The health check's MySQL parsers on any bytes a server (or something that is not one) may
//! send: no panic; a packet header and `packet` agree; a greeting yields a well-formed
//! `HandshakeResponse41` (or refuses a pre-4.1 server); and every text that reaches a log line
//! (errors, ERR packets, the server version) is one line without control characters. A state
//! query's reply, the input cut into packets at the bytes that announce their lengths, ends in a
//! reply or an error, never a panic, with every value printable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringlb::health::mysql::{
    self, handshake_response, packet, parse_auth_reply, parse_header, parse_initial, AuthReply, ErrPacket,
    Greeting, InitialPacket, ProtocolError, HEADER_LEN, MAX_PAYLOAD_LEN,
};
use ringlb::health::resultset::{Reply, ReplyReader};

const USER: &str = "ringlb_check";

/// What ringlb logs must stay on its line: no newline, no escape sequence.
fn assert_printable(text: &str) {
    assert!(
        !text.chars().any(char::is_control),
        "control character in {text:?}"
    );
}

fn check_error(error: &ProtocolError) {
    assert_printable(&error.to_string());
}

fn check_err_packet(err: &ErrPacket) {
    assert_printable(&err.to_string());
}

fn check_header(data: &[u8]) {
    match parse_header(data) {
        Ok(header) => {
            assert!(data.len() >= HEADER_LEN);
            assert!(header.payload_len <= MAX_PAYLOAD_LEN);
            // `packet` frames a payload of that length with that sequence the same way (tried
            // when the input holds that many bytes: a 16 MB payload per run would slow the
            // fuzzer to a crawl).
            if let Some(payload) = data.get(HEADER_LEN..HEADER_LEN + header.payload_len) {
                assert_eq!(
                    packet(header.sequence, payload).expect("fits"),
                    &data[..HEADER_LEN + header.payload_len]
                );
            }
        }
        Err(error) => {
            assert!(data.len() < HEADER_LEN);
            check_error(&error);
        }
    }
    let framed = packet(data.first().copied().unwrap_or(0), data).expect("fuzz inputs are small");
    let header = parse_header(&framed).expect("a framed packet has a header");
    assert_eq!(header.payload_len, data.len());
    assert_eq!(&framed[HEADER_LEN..], data);
}

/// The response is the documented `HandshakeResponse41` for an empty password; with a password
/// and TLS, a scramble of the plugin's length and `CLIENT_SSL`, whatever the greeting says.
fn check_login(greeting: &Greeting) {
    if let Ok(response) = handshake_response(greeting, USER, b"secret", true) {
        let capabilities = u32::from_le_bytes(response[..4].try_into().unwrap());
        assert_ne!(capabilities & mysql::CLIENT_SSL, 0);
        if capabilities & mysql::CLIENT_SECURE_CONNECTION != 0 {
            let length = response[32 + USER.len() + 1];
            assert!(length == 20 || length == 32, "{length}");
        }
        let request = mysql::ssl_request(greeting).expect("the same head as the response");
        assert_eq!(&request[..], &response[..32]);
    }
    let plugin = greeting.auth_plugin_name.as_deref().unwrap_or("");
    let _ = mysql::auth_response(plugin, &greeting.auth_plugin_data, b"secret");
    let response = match handshake_response(greeting, USER, b"", false) {
        Ok(response) => response,
        Err(error) => {
            assert_eq!(error, ProtocolError::NoProtocol41);
            assert_eq!(greeting.capabilities & mysql::CLIENT_PROTOCOL_41, 0);
            return;
        }
    };
    let capabilities = u32::from_le_bytes(response[..4].try_into().unwrap());
    assert_eq!(
        capabilities & !greeting.capabilities,
        0,
        "only what the server offers"
    );
    assert_ne!(capabilities & mysql::CLIENT_PROTOCOL_41, 0);
    assert_eq!(response[8], greeting.character_set.unwrap_or(33));
    assert_eq!(&response[9..32], &[0; 23]);
    let rest = &response[32..];
    assert_eq!(&rest[..USER.len() + 2], format!("{USER}\0\0").as_bytes());
    let plugin = &rest[USER.len() + 2..];
    if capabilities & mysql::CLIENT_PLUGIN_AUTH != 0 {
        // One NUL-terminated name, the server's (or the default) up to any NUL in it.
        assert_eq!(
            plugin.iter().position(|&b| b == 0),
            Some(plugin.len() - 1),
            "{plugin:?}"
        );
        let name = greeting
            .auth_plugin_name
            .as_deref()
            .unwrap_or("mysql_native_password");
        assert!(name.as_bytes().starts_with(&plugin[..plugin.len() - 1]));
    } else {
        assert!(plugin.is_empty());
    }
    assert!(packet(1, &response).is_ok());
}

fn check_initial(data: &[u8]) {
    match parse_initial(data) {
        Ok(InitialPacket::Greeting(greeting)) => {
            assert_eq!(data[0], 10);
            assert_printable(&greeting.server_version);
            if let Some(name) = &greeting.auth_plugin_name {
                assert!(!name.contains('\0'));
            }
            check_login(&greeting);
        }
        Ok(InitialPacket::Error(err)) => {
            assert_eq!(data[0], 0xFF);
            check_err_packet(&err);
        }
        Err(error) => check_error(&error),
    }
}

fn check_auth_reply(data: &[u8]) {
    match parse_auth_reply(data) {
        Ok(AuthReply::Ok) => assert_eq!(data[0], 0x00),
        Ok(AuthReply::Err(err)) => {
            assert_eq!(data[0], 0xFF);
            check_err_packet(&err);
        }
        Ok(AuthReply::AuthSwitch {
            plugin,
            data: switch_data,
        }) => {
            assert_eq!(data[0], 0xFE);
            assert!(!plugin.contains('\0'));
            assert!(switch_data.len() < data.len());
        }
        Ok(AuthReply::MoreData(more)) => {
            assert_eq!(data[0], 0x01);
            assert_eq!(more, &data[1..]);
        }
        Err(error) => check_error(&error),
    }
}

/// Cuts `data` into packets (each a length byte, then that many bytes) and feeds them to one
/// reply reader until it finishes or fails.
fn check_reply(data: &[u8]) {
    let mut reader = ReplyReader::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (payload, tail) = tail.split_at(usize::from(len).min(tail.len()));
        rest = tail;
        match reader.feed(payload) {
            Ok(None) => {}
            Ok(Some(Reply::Rows(set))) => {
                set.columns.iter().for_each(|c| assert_printable(c));
                for row in &set.rows {
                    assert_eq!(row.len(), set.columns.len());
                    row.iter().flatten().for_each(|v| assert_printable(v));
                }
                return;
            }
            Ok(Some(Reply::Err(err))) => return check_err_packet(&err),
            Ok(Some(Reply::Ok)) => return,
            Err(error) => return check_error(&error),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check_header(data);
    check_initial(data);
    check_auth_reply(data);
    check_reply(data);
});
