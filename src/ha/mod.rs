//! High availability: the sidecar that replaces Heartbeat. Two (or more) ringlb nodes exchange
//! authenticated heartbeats over UDP; exactly one of them holds the floating IP (the VIP).
//!
//! | module | job |
//! |---|---|
//! | [`message`] | the signed wire format (HMAC-SHA256), and the replay guard per peer |
//! | [`machine`] | the pure state machine: ticks, verified messages and local health in; send, take or release the VIP, notify out |
//!
//! The I/O around them stays thin and lives beside them: the heartbeat socket, the VIP added and
//! removed through netlink, gratuitous ARP. The machine never touches a socket, so every rule
//! of LIFECYCLE.md is unit-tested with a simulated network and a fake clock.

pub mod machine;
pub mod message;
