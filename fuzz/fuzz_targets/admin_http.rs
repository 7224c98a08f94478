//! The admin endpoint's HTTP on any bytes a client may send: no panic; a parsed request line is
//! what the buffer starts with and holds no space or control byte in its target; a verdict on a
//! buffer (a head, or an error) stands whatever bytes follow, and an incomplete buffer's
//! prefixes are incomplete too; query strings decode to pairs that re-encode and decode to the
//! same pairs; responses built by `response` read back through `parse_response`; error texts
//! are one line; a bearer token is a clean header value, and deciding on any head cannot panic.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ringlb::admin::auth::{authorize, Guard};
use ringlb::admin::http::{
    encode_query_value, parse_query, parse_request_head, parse_response, response, HeadError, MAX_HEAD_BYTES,
};
use ringlb::config::Secret;

fn assert_one_line(text: &str) {
    assert!(!text.contains(['\n', '\r']), "{text:?}");
}

fn check_head(data: &[u8]) {
    let result = parse_request_head(data);
    match &result {
        Ok(Some(head)) => {
            assert!(!head.method.is_empty());
            assert!(head.path.starts_with('/'));
            assert!(!head.path.contains('?'));
            for part in [head.path, head.query] {
                assert!(!part.bytes().any(|b| b <= b' ' || b == 0x7F), "{part:?}");
            }
            let target = if head.query.is_empty() {
                // `/x?` and `/x` both have an empty query.
                format!("{} {}", head.method, head.path)
            } else {
                format!("{} {}?{}", head.method, head.path, head.query)
            };
            assert!(data.starts_with(target.as_bytes()), "{target:?}");
            check_query(head.query);
            // A token is a header value: no line end, no control byte, not empty.
            if let Some(token) = head.bearer {
                assert!(!token.is_empty());
                assert!(
                    !token.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7F),
                    "{token:?}"
                );
            }
            // Whatever the head says, deciding on it cannot panic, and a guessed token fails.
            let guard = Guard::new(Some(Secret::from_bytes(
                b"fuzzed-token-not-in-any-input-0123456789",
            )));
            let verdict = authorize(&guard, None, head);
            assert!(verdict.is_err() || head.bearer == Some("fuzzed-token-not-in-any-input-0123456789"));
            let _ = authorize(
                &Guard::new(None),
                Some(std::net::Ipv4Addr::LOCALHOST.into()),
                head,
            );
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEAD_BYTES);
            let half = &data[..data.len() / 2];
            assert_eq!(
                parse_request_head(half),
                Ok(None),
                "a prefix of an incomplete head"
            );
        }
        Err(error) => {
            assert_one_line(&error.to_string());
            if *error == HeadError::TooLarge {
                assert!(data.len() >= MAX_HEAD_BYTES);
            }
        }
    }
    if !matches!(result, Ok(None)) {
        // The verdict rests on the head alone: a pipelined request or body behind it changes
        // nothing.
        let mut more = data.to_vec();
        more.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n\0\xff");
        assert_eq!(parse_request_head(&more), result);
    }
}

fn check_query(query: &str) {
    match parse_query(query) {
        Ok(pairs) => {
            let encoded: Vec<String> = pairs
                .iter()
                .map(|(name, value)| format!("{}={}", encode_query_value(name), encode_query_value(value)))
                .collect();
            let encoded = encoded.join("&");
            assert!(encoded.bytes().all(|b| b > b' ' && b < 0x7F), "{encoded:?}");
            assert_eq!(parse_query(&encoded).as_ref(), Ok(&pairs), "{encoded:?}");
        }
        Err(error) => assert_one_line(error),
    }
}

#[derive(Debug, Arbitrary)]
struct Response<'a> {
    status: u16,
    plain: bool,
    body: &'a [u8],
}

fn check_response(input: &mut Unstructured<'_>) {
    let Ok(built) = Response::arbitrary(input) else {
        return;
    };
    let status = 100 + built.status % 500;
    let content_type = if built.plain {
        "text/plain"
    } else {
        "application/json"
    };
    let bytes = response(status, content_type, &["Allow: GET"], built.body);
    assert_eq!(parse_response(&bytes), Ok((status, built.body)));
}

fuzz_target!(|data: &[u8]| {
    check_head(data);
    check_query(&String::from_utf8_lossy(data));
    match parse_response(data) {
        Ok((status, body)) => {
            assert!((100..=599).contains(&status));
            // The body is the bytes right after the head's empty line, perhaps cut to its
            // Content-Length.
            let offset = body.as_ptr() as usize - data.as_ptr() as usize;
            assert!(offset + body.len() <= data.len());
            assert!(data[..offset].ends_with(b"\n\n") || data[..offset].ends_with(b"\n\r\n"));
        }
        Err(error) => assert_one_line(error),
    }
    check_response(&mut Unstructured::new(data));
});
