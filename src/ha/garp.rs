//! Gratuitous ARP: tells every host on the segment that the VIP now lives at this interface's MAC.
//!
//! Without it, clients and routers keep sending to the old holder's MAC until their ARP entry
//! goes stale (tens of seconds on Linux), and the takeover is invisible to them. Each round sends
//! the two forms hosts accept, as keepalived does:
//!
//! - an ARP request (announcement, RFC 5227): sender and target IP = VIP, target MAC zero;
//! - an ARP reply: sender and target IP = VIP, sender and target MAC = ours. Linux treats a reply
//!   as gratuitous only when the two MACs are equal, and a gratuitous packet overrides an entry
//!   even within its `locktime`.
//!
//! Both go to the Ethernet broadcast address through an AF_PACKET socket bound to nothing and
//! addressed to the interface on each send. The socket, the MAC and the index belong to the
//! network namespace of the thread that opened the [`Garp`]; the MAC is read with SIOCGIFHWADDR
//! on that socket, not from /sys, which shows the namespace sysfs was mounted in.
//!
//! Building the frame is the pure function [`frame`]; this module's I/O is one socket and sendto.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Length of an Ethernet header plus an ARP packet for IPv4 over Ethernet. Shorter than the
/// 60-byte Ethernet minimum: the driver pads it, as for keepalived's frames.
pub const FRAME_LEN: usize = 42;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV4: u16 = 0x0800;
const HARDWARE_ETHERNET: u16 = 1;
const BROADCAST: [u8; 6] = [0xff; 6];

/// The ARP operation of a gratuitous frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request = 1,
    Reply = 2,
}

/// What went wrong sending gratuitous ARP, naming the VIP, the interface and the errno.
#[derive(Debug, thiserror::Error)]
pub enum GarpError {
    #[error("gratuitous ARP for {vip}: interface {interface:?} not found: {source}")]
    NoInterface {
        vip: Ipv4Addr,
        interface: String,
        source: io::Error,
    },
    #[error(
        "gratuitous ARP for {vip} on {interface}: cannot {op}: {source}; \
         sending it needs CAP_NET_RAW (run as root or grant the capability)"
    )]
    PermissionDenied {
        op: &'static str,
        vip: Ipv4Addr,
        interface: String,
        source: io::Error,
    },
    #[error("gratuitous ARP for {vip} on {interface}: cannot {op}: {source}")]
    Io {
        op: &'static str,
        vip: Ipv4Addr,
        interface: String,
        source: io::Error,
    },
    #[error("gratuitous ARP for {vip} on {interface}: the interface has no Ethernet address")]
    NotEthernet { vip: Ipv4Addr, interface: String },
}

/// The Ethernet frame of one gratuitous ARP for `vip` from `mac`, to the broadcast address.
pub fn frame(op: ArpOp, mac: [u8; 6], vip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let target_mac = match op {
        ArpOp::Request => [0; 6],
        ArpOp::Reply => mac,
    };
    let mut frame = [0u8; FRAME_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        frame[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    // Ethernet header.
    put(&BROADCAST);
    put(&mac);
    put(&ETHERTYPE_ARP.to_be_bytes());
    // ARP: IPv4 over Ethernet.
    put(&HARDWARE_ETHERNET.to_be_bytes());
    put(&ETHERTYPE_IPV4.to_be_bytes());
    put(&[6, 4]);
    put(&(op as u16).to_be_bytes());
    put(&mac);
    put(&vip.octets());
    put(&target_mac);
    put(&vip.octets());
    frame
}

/// An open AF_PACKET socket for one VIP on one interface, kept by the HA thread for the slow
/// refresh while it holds the VIP.
#[derive(Debug)]
pub struct Garp {
    socket: OwnedFd,
    index: i32,
    mac: [u8; 6],
    vip: Ipv4Addr,
    interface: String,
}

impl Garp {
    /// Opens the socket and reads the interface's index and MAC in the calling thread's network
    /// namespace.
    pub fn open(interface: &str, vip: Ipv4Addr) -> Result<Garp, GarpError> {
        let io_error = |op, source: io::Error| {
            if source.kind() == io::ErrorKind::PermissionDenied {
                GarpError::PermissionDenied {
                    op,
                    vip,
                    interface: interface.to_owned(),
                    source,
                }
            } else {
                GarpError::Io {
                    op,
                    vip,
                    interface: interface.to_owned(),
                    source,
                }
            }
        };
        let name = ifreq_name(interface).ok_or_else(|| GarpError::NoInterface {
            vip,
            interface: interface.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a valid interface name"),
        })?;
        // Protocol 0: this socket only sends, so the kernel queues no received frames on it.
        // SAFETY: socket has no memory preconditions; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io_error("open an AF_PACKET socket", io::Error::last_os_error()));
        }
        // SAFETY: fd is a socket this function just opened and nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };

        // SAFETY: ifreq is plain old data, for which all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        request.ifr_name = name;
        // SAFETY: the socket is open and `request` is a valid ifreq whose name is NUL-terminated;
        // SIOCGIFINDEX writes only inside it.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &mut request) } < 0 {
            return Err(GarpError::NoInterface {
                vip,
                interface: interface.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: SIOCGIFINDEX succeeded, so the union holds the index.
        let index = unsafe { request.ifr_ifru.ifru_ifindex };
        // SAFETY: as above; SIOCGIFHWADDR writes a sockaddr inside the ifreq.
        if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } < 0 {
            return Err(io_error("read the interface's MAC", io::Error::last_os_error()));
        }
        // SAFETY: SIOCGIFHWADDR succeeded, so the union holds the hardware address.
        let hwaddr = unsafe { request.ifr_ifru.ifru_hwaddr };
        if hwaddr.sa_family != libc::ARPHRD_ETHER {
            return Err(GarpError::NotEthernet {
                vip,
                interface: interface.to_owned(),
            });
        }
        let mut mac = [0u8; 6];
        for (byte, &raw) in mac.iter_mut().zip(hwaddr.sa_data.iter()) {
            *byte = raw as u8;
        }
        Ok(Garp {
            socket,
            index,
            mac,
            vip,
            interface: interface.to_owned(),
        })
    }

    /// The MAC the frames announce.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one round: a gratuitous request and a gratuitous reply.
    pub fn send(&self) -> Result<(), GarpError> {
        for op in [ArpOp::Request, ArpOp::Reply] {
            self.send_frame(&frame(op, self.mac, self.vip))?;
        }
        Ok(())
    }

    fn send_frame(&self, frame: &[u8; FRAME_LEN]) -> Result<(), GarpError> {
        // SAFETY: sockaddr_ll is plain old data, for which all zeroes is a valid value.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETHERTYPE_ARP.to_be();
        to.sll_ifindex = self.index;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&BROADCAST);
        // SAFETY: the socket is open; `frame` and `to` are valid for the lengths passed and
        // outlive the call, which only reads them.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let source = io::Error::last_os_error();
            let (op, vip, interface) = ("send", self.vip, self.interface.clone());
            return Err(if source.kind() == io::ErrorKind::PermissionDenied {
                GarpError::PermissionDenied {
                    op,
                    vip,
                    interface,
                    source,
                }
            } else {
                GarpError::Io {
                    op,
                    vip,
                    interface,
                    source,
                }
            });
        }
        Ok(())
    }
}

/// Sends `count` rounds of gratuitous ARP for `vip` on `interface` back to back: the burst of a
/// takeover.
pub fn send_burst(interface: &str, vip: Ipv4Addr, count: u32) -> Result<(), GarpError> {
    let garp = Garp::open(interface, vip)?;
    for _ in 0..count {
        garp.send()?;
    }
    Ok(())
}

/// The interface name as ifreq holds it, NUL-terminated; none for a name that does not fit or
/// holds a NUL.
fn ifreq_name(interface: &str) -> Option<[libc::c_char; libc::IFNAMSIZ]> {
    let bytes = interface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (slot, &byte) in name.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 100);

    #[test]
    fn a_gratuitous_request_announces_the_vip_from_our_mac_to_everyone() {
        let expected: [u8; FRAME_LEN] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // Ethernet destination: broadcast
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // Ethernet source: our MAC
            0x08, 0x06, // EtherType: ARP
            0x00, 0x01, // hardware: Ethernet
            0x08, 0x00, // protocol: IPv4
            6, 4, // address lengths
            0x00, 0x01, // operation: request
            0x02, 0x11, 0x22, 0x33, 0x44, 0x55, // sender MAC: ours
            10, 231, 0, 100, // sender IP: the VIP
            0, 0, 0, 0, 0, 0, // target MAC: unknown, as in an announcement
            10, 231, 0, 100, // target IP: the VIP
        ];
        assert_eq!(frame(ArpOp::Request, MAC, VIP), expected);
    }

    #[test]
    fn a_gratuitous_reply_names_our_mac_as_sender_and_target() {
        let reply = frame(ArpOp::Reply, MAC, VIP);
        assert_eq!(&reply[..6], &BROADCAST);
        assert_eq!(&reply[20..22], &[0x00, 0x02], "operation: reply");
        assert_eq!(&reply[22..28], &MAC, "sender MAC");
        assert_eq!(&reply[28..32], &VIP.octets(), "sender IP");
        // Linux counts a reply as gratuitous only when target MAC equals sender MAC.
        assert_eq!(&reply[32..38], &MAC, "target MAC");
        assert_eq!(&reply[38..42], &VIP.octets(), "target IP");
    }

    #[test]
    fn interface_names_that_do_not_fit_ifreq_are_refused() {
        assert!(ifreq_name("eth0").is_some());
        assert!(ifreq_name("exactly15chars_").is_some());
        assert!(ifreq_name("sixteen_chars_xx").is_none());
        assert!(ifreq_name("").is_none());
        assert!(ifreq_name("a\0b").is_none());
    }

    #[test]
    fn a_missing_interface_is_an_error_naming_it() {
        match Garp::open("nosuchif0", VIP) {
            // Without CAP_NET_RAW the socket itself is refused first.
            Err(GarpError::PermissionDenied { .. }) => {}
            Err(err @ GarpError::NoInterface { .. }) => {
                assert!(err.to_string().contains("\"nosuchif0\""), "{err}");
            }
            other => panic!("expected NoInterface, got {other:?}"),
        }
    }
}
