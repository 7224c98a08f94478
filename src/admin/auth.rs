//! Who may change state through the admin endpoint (`POST /reload`, `POST /backend/...`).
//!
//! Reads stay open to whoever reaches the endpoint, so that Prometheus can scrape it. A change
//! needs one of two things:
//!
//! - With `[global] admin_token_file`: `Authorization: Bearer TOKEN`, from any address. The
//!   token is compared in time that does not depend on where it differs.
//! - Without one: a peer on loopback, an `X-Ringlb-Admin` header, no `Origin` header, and a
//!   `Host` that is an IP address or `localhost`. A web page cannot make a browser send a custom
//!   header to another origin without a CORS pre-flight, which the endpoint never grants; a page
//!   that rebinds its own name to 127.0.0.1 (DNS rebinding) is same-origin and could send it,
//!   but its requests carry its name in `Host` and an `Origin`. So a page that a browser on the
//!   LB node opens cannot change the pool.
//!
//! A non-loopback admin address without a token file is refused when the configuration is
//! loaded (`config`), so the second rule only ever meets loopback peers. It keeps browsers out,
//! not local users: any process on the node can change the pool, and so can anyone whose traffic
//! something on the node forwards to the loopback address. Where that matters, set a token.
//!
//! [`authorize`] is a pure function of the guard, the peer and the request head; the refusals it
//! returns are what the endpoint answers.

use std::net::IpAddr;

use crate::config::Secret;

use super::http::RequestHead;

/// The header that proves a request was not sent cross-site by a browser.
pub const ADMIN_HEADER: &str = "X-Ringlb-Admin";

/// What a state change needs.
#[derive(Debug, Clone)]
pub enum Guard {
    /// `Authorization: Bearer` with this token.
    Token(Secret),
    /// A loopback peer that sends [`ADMIN_HEADER`].
    LoopbackWithHeader,
}

impl Guard {
    pub fn new(token: Option<Secret>) -> Guard {
        token.map_or(Guard::LoopbackWithHeader, Guard::Token)
    }
}

/// Why a change was refused: the status to answer and one line that says how to do it right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

/// Whether `head`, from `peer`, may change state under `guard`.
pub fn authorize(guard: &Guard, peer: Option<IpAddr>, head: &RequestHead<'_>) -> Result<(), Refusal> {
    match guard {
        Guard::Token(token) => match head.bearer {
            None => Err(Refusal {
                status: 401,
                message: "this change needs the admin token: send Authorization: Bearer TOKEN \
                          (the contents of [global] admin_token_file), or use `ringlb backend` or \
                          `ringlb reload` with --token-file or --config",
            }),
            Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Refusal {
                status: 403,
                message: "wrong admin token",
            }),
        },
        Guard::LoopbackWithHeader => {
            if !peer.is_some_and(|ip| ip.to_canonical().is_loopback()) {
                return Err(Refusal {
                    status: 403,
                    message: "changes are taken from loopback only unless [global] \
                              admin_token_file is set",
                });
            }
            if !head.admin_header {
                return Err(Refusal {
                    status: 403,
                    message: "a change needs the X-Ringlb-Admin header (curl -H 'X-Ringlb-Admin: 1' \
                              -X POST ...), which a browser does not send cross-site; \
                              `ringlb backend` and `ringlb reload` send it",
                });
            }
            if head.origin || !head.host.is_some_and(is_address_host) {
                return Err(Refusal {
                    status: 403,
                    message: "a change from loopback must name the endpoint by address (Host: \
                              127.0.0.1:PORT or localhost) and come from no web page (no Origin \
                              header); set admin_token_file to take changes otherwise",
                });
            }
            Ok(())
        }
    }
}

/// Whether a `Host` value names the endpoint by address: an IP literal (IPv6 in brackets) or
/// `localhost`, with or without a port. A DNS-rebinding page's requests carry its own name.
fn is_address_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.strip_prefix(':').is_some_and(is_port) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// Equal, in time that depends on the lengths only.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let differ = given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(differ) == 0
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn head<'a>(bearer: Option<&'a str>, admin_header: bool) -> RequestHead<'a> {
        RequestHead {
            method: "POST",
            path: "/reload",
            query: "",
            bearer,
            admin_header,
            host: Some("127.0.0.1:4041"),
            origin: false,
        }
    }

    const LOOPBACK: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    const OUTSIDE: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));

    fn token() -> Guard {
        Guard::new(Some(Secret::from_bytes(b"0123456789abcdef0123")))
    }

    #[test]
    fn with_a_token_the_right_one_passes_from_anywhere_and_nothing_else_does() {
        let guard = token();
        for peer in [LOOPBACK, OUTSIDE, None] {
            assert_eq!(
                authorize(&guard, peer, &head(Some("0123456789abcdef0123"), false)),
                Ok(())
            );
            // The header alone is not enough once a token is set, even from loopback.
            assert_eq!(
                authorize(&guard, peer, &head(None, true)).unwrap_err().status,
                401
            );
            for wrong in [
                "0123456789abcdef012",
                "0123456789abcdef01234",
                "x123456789abcdef0123",
                "",
            ] {
                let refusal = authorize(&guard, peer, &head(Some(wrong), true)).unwrap_err();
                assert_eq!(refusal.status, 403, "{wrong:?}");
                assert!(!refusal.message.contains("0123"), "the token must not be echoed");
            }
        }
    }

    #[test]
    fn without_a_token_only_loopback_with_the_header_passes() {
        let guard = Guard::new(None);
        let v6_loopback = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let mapped = Some(IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped()));
        for peer in [
            LOOPBACK,
            v6_loopback,
            mapped,
            Some(IpAddr::V4(Ipv4Addr::new(127, 9, 9, 9))),
        ] {
            assert_eq!(authorize(&guard, peer, &head(None, true)), Ok(()), "{peer:?}");
            assert_eq!(
                authorize(&guard, peer, &head(None, false)).unwrap_err().status,
                403
            );
            // A bearer token is no substitute for the header when none is configured.
            assert_eq!(
                authorize(&guard, peer, &head(Some("anything"), false))
                    .unwrap_err()
                    .status,
                403
            );
        }
        let mapped_outside = Some(IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped()));
        for peer in [
            OUTSIDE,
            mapped_outside,
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            None,
        ] {
            let refusal = authorize(&guard, peer, &head(None, true)).unwrap_err();
            assert_eq!(refusal.status, 403, "{peer:?}");
            assert!(
                refusal.message.contains("admin_token_file"),
                "{}",
                refusal.message
            );
        }
    }

    #[test]
    fn without_a_token_a_page_that_rebound_its_name_to_loopback_is_refused() {
        let guard = Guard::new(None);
        for host in [
            "127.0.0.1:4041",
            "127.0.0.1",
            "localhost:4041",
            "LOCALHOST",
            "[::1]:4041",
            "[::1]",
        ] {
            let request = RequestHead {
                host: Some(host),
                ..head(None, true)
            };
            assert_eq!(authorize(&guard, LOOPBACK, &request), Ok(()), "{host}");
        }
        for host in [
            "rebind.evil.example:4041",
            "rebind.evil.example",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "127.0.0.1:x",
            "[::1",
            "[::1]x",
            "",
        ] {
            let request = RequestHead {
                host: Some(host),
                ..head(None, true)
            };
            assert_eq!(
                authorize(&guard, LOOPBACK, &request).unwrap_err().status,
                403,
                "{host}"
            );
        }
        let no_host = RequestHead {
            host: None,
            ..head(None, true)
        };
        assert_eq!(authorize(&guard, LOOPBACK, &no_host).unwrap_err().status, 403);
        // Whatever the Host, a request a web page sent (it carries an Origin) is refused.
        let from_a_page = RequestHead {
            origin: true,
            ..head(None, true)
        };
        assert_eq!(authorize(&guard, LOOPBACK, &from_a_page).unwrap_err().status, 403);
        // With a token, neither matters: a page cannot know the token.
        let token = token();
        let request = RequestHead {
            host: Some("lb-db-01.example:4041"),
            origin: true,
            ..head(Some("0123456789abcdef0123"), false)
        };
        assert_eq!(authorize(&token, OUTSIDE, &request), Ok(()));
    }

    #[test]
    fn secrets_compare_equal_only_when_every_byte_matches() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"\x00bc", b"abc"));
    }
}
