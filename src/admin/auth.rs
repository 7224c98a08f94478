//! Who may change state through the admin endpoint (`POST /reload`, `POST /backend/...`).
//!
//! Reads stay open to whoever reaches the endpoint, so that Prometheus can scrape it. A change
//! needs one of two things:
//!
//! - With `[global] admin_token_file`: `Authorization: Bearer TOKEN`, from any address. The
//!   token is compared in time that does not depend on where it differs.
//! - Without one: a peer on loopback *and* an `X-Ringlb-Admin` header. A web page cannot make a
//!   browser send a custom header to another origin without a CORS pre-flight, which the
//!   endpoint never grants, so a page that a browser on the LB node opens cannot change the
//!   pool with a form or a plain `fetch`.
//!
//! A non-loopback admin address without a token file is refused when the configuration is
//! loaded (`config`), so the second rule only ever meets loopback addresses, and holds even when
//! something forwards outside traffic to the loopback address.
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
            Ok(())
        }
    }
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
    fn secrets_compare_equal_only_when_every_byte_matches() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
        assert!(!same_secret(b"\x00bc", b"abc"));
    }
}
