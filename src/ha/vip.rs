//! The floating IP: add, remove and look for an IPv4 address on an interface through rtnetlink.
//!
//! The VIP is an ordinary secondary address with its prefix route, as keepalived adds it (and as
//! `ip addr add 10.0.0.100/24 dev eth0 label eth0:ringlb` would), so that the holder answers ARP
//! for it and accepts connections to it. No shelling out to `ip`.
//!
//! Invariants:
//!
//! - Every operation is idempotent: adding a VIP that is there and removing one that is not both
//!   succeed, because the HA thread repeats its last decision after a restart or a lost race and
//!   must not fail on it.
//! - Each operation opens its own netlink socket, in the network namespace of the calling thread,
//!   and waits for the kernel's answer: a VIP that `add` returned from is on the interface.
//!   The interface index is resolved once, by [`Vip::new`], in that same namespace.
//! - A VIP is the pair (address, prefix) on one interface, as the kernel identifies it: the same
//!   address with another prefix is another VIP.

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::{Ifa, RtAddrFamily, RtScope, Rtm};
use neli::consts::socket::NlFamily;
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::rtnl::{Ifaddrmsg, IfaddrmsgBuilder, Rtattr, RtattrBuilder};
use neli::socket::synchronous::NlSocketHandle;
use neli::types::{Buffer, RtBuffer};
use neli::utils::Groups;

/// The suffix of the address label, so that `ip addr` shows which address is ringlb's.
const LABEL_SUFFIX: &str = ":ringlb";
/// Interface names and labels share the kernel's IFNAMSIZ (16 bytes with the terminating NUL).
const MAX_LABEL_LEN: usize = 15;

/// What went wrong with the VIP, naming the address, the interface and the kernel's errno.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("VIP {addr}/{prefix}: a prefix is at most 32 bits")]
    InvalidPrefix { addr: Ipv4Addr, prefix: u8 },
    #[error("VIP {addr}/{prefix}: interface {interface:?} not found: {source}")]
    NoInterface {
        addr: Ipv4Addr,
        prefix: u8,
        interface: String,
        source: io::Error,
    },
    #[error(
        "cannot {op} VIP {addr}/{prefix} on {interface}: {source}; \
         managing the VIP needs CAP_NET_ADMIN (run as root or grant the capability)"
    )]
    PermissionDenied {
        op: &'static str,
        addr: Ipv4Addr,
        prefix: u8,
        interface: String,
        source: io::Error,
    },
    #[error("cannot {op} VIP {addr}/{prefix} on {interface}: {source}")]
    Kernel {
        op: &'static str,
        addr: Ipv4Addr,
        prefix: u8,
        interface: String,
        source: io::Error,
    },
    /// The netlink conversation itself failed: a message that would not encode or an answer that
    /// would not decode.
    #[error("cannot {op} VIP {addr}/{prefix} on {interface}: netlink: {detail}")]
    Netlink {
        op: &'static str,
        addr: Ipv4Addr,
        prefix: u8,
        interface: String,
        detail: String,
    },
}

/// A floating IPv4 address with its prefix on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    addr: Ipv4Addr,
    prefix: u8,
    interface: String,
    /// Resolved once: the kernel identifies the interface by index in every address message.
    index: u32,
}

/// Why one netlink request failed, before it is dressed with the VIP's names.
enum Failure {
    /// The kernel answered with this errno.
    Errno(i32),
    Io(io::Error),
    Other(String),
}

impl Vip {
    /// A VIP `addr/prefix` on `interface`, whose index is looked up in the calling thread's
    /// network namespace.
    pub fn new(addr: Ipv4Addr, prefix: u8, interface: &str) -> Result<Vip, VipError> {
        if prefix > 32 {
            return Err(VipError::InvalidPrefix { addr, prefix });
        }
        let no_interface = |source| VipError::NoInterface {
            addr,
            prefix,
            interface: interface.to_owned(),
            source,
        };
        let name = CString::new(interface)
            .map_err(|_| no_interface(io::Error::new(io::ErrorKind::InvalidInput, "name holds a NUL")))?;
        // SAFETY: `name` is a valid NUL-terminated string that outlives the call; if_nametoindex
        // only reads it.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(no_interface(io::Error::last_os_error()));
        }
        Ok(Vip {
            addr,
            prefix,
            interface: interface.to_owned(),
            index,
        })
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Adds the VIP to the interface; success when it is already there.
    pub fn add(&self) -> Result<(), VipError> {
        let mut attrs = self.address_attrs().map_err(|f| self.error("add", f))?;
        if let Some(label) = self.label() {
            attrs.push(rtattr(Ifa::Label, label.as_str()).map_err(|f| self.error("add", f))?);
        }
        let flags = NlmF::REQUEST | NlmF::ACK | NlmF::CREATE | NlmF::EXCL;
        match request(
            Rtm::Newaddr,
            flags,
            self.message(attrs).map_err(|f| self.error("add", f))?,
        ) {
            // EXCL makes the kernel say EEXIST instead of silently replacing: the VIP is there.
            Ok(_) | Err(Failure::Errno(libc::EEXIST)) => Ok(()),
            Err(failure) => Err(self.error("add", failure)),
        }
    }

    /// Removes the VIP from the interface; success when it is not there.
    pub fn remove(&self) -> Result<(), VipError> {
        // No label: an address someone added with another label is still this VIP.
        let attrs = self.address_attrs().map_err(|f| self.error("remove", f))?;
        let message = self.message(attrs).map_err(|f| self.error("remove", f))?;
        match request(Rtm::Deladdr, NlmF::REQUEST | NlmF::ACK, message) {
            // The kernel says EADDRNOTAVAIL for an address that is not on the interface, and
            // ENODEV or ENOENT when the interface has no IPv4 configuration left at all.
            Ok(_) | Err(Failure::Errno(libc::EADDRNOTAVAIL | libc::ENOENT | libc::ENODEV)) => Ok(()),
            Err(failure) => Err(self.error("remove", failure)),
        }
    }

    /// Whether the VIP (this address with this prefix) is on the interface now.
    pub fn is_present(&self) -> Result<bool, VipError> {
        let dump = IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Inet)
            .ifa_prefixlen(0)
            .ifa_scope(RtScope::Universe)
            .ifa_index(0)
            .build()
            .map_err(|e| self.error("look for", Failure::Other(e.to_string())))?;
        let addresses =
            request(Rtm::Getaddr, NlmF::REQUEST | NlmF::DUMP, dump).map_err(|f| self.error("look for", f))?;
        Ok(addresses.iter().any(|msg| {
            *msg.ifa_index() == self.index
                && *msg.ifa_prefixlen() == self.prefix
                && local_address(msg) == Some(self.addr)
        }))
    }

    /// `<interface>:ringlb`, or none where that would not fit the kernel's label size.
    fn label(&self) -> Option<String> {
        let label = format!("{}{LABEL_SUFFIX}", self.interface);
        (label.len() <= MAX_LABEL_LEN).then_some(label)
    }

    /// IFA_LOCAL and IFA_ADDRESS, both the VIP, as `ip addr` sends them for a non-point-to-point
    /// interface.
    fn address_attrs(&self) -> Result<RtBuffer<Ifa, Buffer>, Failure> {
        let octets = self.addr.octets();
        let mut attrs = RtBuffer::new();
        attrs.push(rtattr(Ifa::Local, octets)?);
        attrs.push(rtattr(Ifa::Address, octets)?);
        Ok(attrs)
    }

    fn message(&self, attrs: RtBuffer<Ifa, Buffer>) -> Result<Ifaddrmsg, Failure> {
        IfaddrmsgBuilder::default()
            .ifa_family(RtAddrFamily::Inet)
            .ifa_prefixlen(self.prefix)
            .ifa_scope(RtScope::Universe)
            .ifa_index(self.index)
            .rtattrs(attrs)
            .build()
            .map_err(|e| Failure::Other(e.to_string()))
    }

    fn error(&self, op: &'static str, failure: Failure) -> VipError {
        let (addr, prefix, interface) = (self.addr, self.prefix, self.interface.clone());
        match failure {
            Failure::Errno(errno @ (libc::EPERM | libc::EACCES)) => VipError::PermissionDenied {
                op,
                addr,
                prefix,
                interface,
                source: io::Error::from_raw_os_error(errno),
            },
            Failure::Errno(errno) => VipError::Kernel {
                op,
                addr,
                prefix,
                interface,
                source: io::Error::from_raw_os_error(errno),
            },
            Failure::Io(source) if source.kind() == io::ErrorKind::PermissionDenied => {
                VipError::PermissionDenied {
                    op,
                    addr,
                    prefix,
                    interface,
                    source,
                }
            }
            Failure::Io(source) => VipError::Kernel {
                op,
                addr,
                prefix,
                interface,
                source,
            },
            Failure::Other(detail) => VipError::Netlink {
                op,
                addr,
                prefix,
                interface,
                detail,
            },
        }
    }
}

fn rtattr<P: neli::Size + neli::ToBytes>(kind: Ifa, payload: P) -> Result<Rtattr<Ifa, Buffer>, Failure> {
    RtattrBuilder::default()
        .rta_type(kind)
        .rta_payload(payload)
        .build()
        .map_err(|e| Failure::Other(e.to_string()))
}

/// The address of an RTM_NEWADDR message: IFA_LOCAL, or IFA_ADDRESS where there is no IFA_LOCAL.
fn local_address(msg: &Ifaddrmsg) -> Option<Ipv4Addr> {
    let attr_addr = |kind: Ifa| {
        msg.rtattrs()
            .iter()
            .find(|attr| *attr.rta_type() == kind)
            .and_then(|attr| {
                let bytes: [u8; 4] = attr.rta_payload().as_ref().try_into().ok()?;
                Some(Ipv4Addr::from(bytes))
            })
    };
    attr_addr(Ifa::Local).or_else(|| attr_addr(Ifa::Address))
}

/// Sends one request on a fresh rtnetlink socket and reads the answer to its end: the ACK or
/// error of a change, or every message of a dump up to NLMSG_DONE. Returns the dump's messages.
fn request(kind: Rtm, flags: NlmF, payload: Ifaddrmsg) -> Result<Vec<Ifaddrmsg>, Failure> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(1);
    let socket = NlSocketHandle::connect(NlFamily::Route, None, Groups::empty()).map_err(socket_failure)?;
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let message = NlmsghdrBuilder::default()
        .nl_type(kind)
        .nl_flags(flags)
        .nl_seq(sequence)
        .nl_payload(NlPayload::Payload(payload))
        .build()
        .map_err(|e| Failure::Other(e.to_string()))?;
    socket.send(&message).map_err(socket_failure)?;

    let mut found = Vec::new();
    loop {
        let (messages, _) = socket.recv::<Rtm, Ifaddrmsg>().map_err(socket_failure)?;
        for reply in messages {
            let reply: Nlmsghdr<Rtm, Ifaddrmsg> = reply.map_err(socket_failure)?;
            if *reply.nl_seq() != sequence {
                // Not an answer to this request (the socket is fresh, so this should not happen).
                continue;
            }
            match reply.nl_payload() {
                NlPayload::Ack(_) => return Ok(found),
                NlPayload::Err(err) => return Err(Failure::Errno(-*err.error())),
                NlPayload::DumpExtAck(done) if *done.error() != 0 => {
                    return Err(Failure::Errno(-*done.error()))
                }
                NlPayload::DumpExtAck(_) => return Ok(found),
                NlPayload::Empty if u16::from(*reply.nl_type()) == libc::NLMSG_DONE as u16 => {
                    return Ok(found)
                }
                NlPayload::Empty => {}
                NlPayload::Payload(msg) => {
                    if *reply.nl_type() == Rtm::Newaddr && *msg.ifa_family() == RtAddrFamily::Inet {
                        found.push(msg.clone());
                    }
                }
            }
        }
    }
}

fn socket_failure(err: neli::err::SocketError) -> Failure {
    match err {
        neli::err::SocketError::Io(io) => match io.raw_os_error() {
            Some(errno) => Failure::Errno(errno),
            None => Failure::Io(io::Error::new(io.kind(), io.to_string())),
        },
        other => Failure::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_is_an_error_naming_it() {
        let err = Vip::new(Ipv4Addr::new(10, 231, 0, 100), 24, "nosuchif0").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, VipError::NoInterface { .. }), "{err:?}");
        assert!(
            text.contains("\"nosuchif0\"") && text.contains("10.231.0.100/24"),
            "{text}"
        );
    }

    #[test]
    fn a_prefix_longer_than_32_bits_is_refused() {
        let err = Vip::new(Ipv4Addr::new(10, 231, 0, 100), 33, "lo").unwrap_err();
        assert!(
            matches!(err, VipError::InvalidPrefix { prefix: 33, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn permission_denied_says_cap_net_admin_is_needed() {
        let vip = Vip::new(Ipv4Addr::new(10, 231, 0, 100), 24, "lo").expect("lo exists");
        let text = vip.error("add", Failure::Errno(libc::EPERM)).to_string();
        assert!(
            text.contains("CAP_NET_ADMIN") && text.contains("10.231.0.100/24 on lo"),
            "{text}"
        );
        let text = vip.error("remove", Failure::Errno(libc::EINVAL)).to_string();
        assert!(text.contains("remove") && text.contains("os error 22"), "{text}");
    }

    #[test]
    fn the_label_is_the_interface_with_a_suffix_when_it_fits() {
        let vip = Vip::new(Ipv4Addr::new(10, 231, 0, 100), 24, "lo").expect("lo exists");
        assert_eq!(vip.label().as_deref(), Some("lo:ringlb"));
        let long = Vip {
            interface: "enp0s31f6".to_owned(),
            ..vip
        };
        assert_eq!(long.label(), None, "enp0s31f6:ringlb is 16 bytes, one too many");
    }

    #[test]
    fn loopback_addresses_are_found_by_a_dump() {
        // A dump needs no privilege: 127.0.0.1/8 is on lo in every network namespace.
        let vip = Vip::new(Ipv4Addr::LOCALHOST, 8, "lo").expect("lo exists");
        assert!(vip.is_present().expect("dump addresses"));
        let other = Vip::new(Ipv4Addr::new(127, 0, 0, 2), 8, "lo").expect("lo exists");
        assert!(!other.is_present().expect("dump addresses"));
    }
}
