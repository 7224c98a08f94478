//! High availability: the sidecar that replaces Heartbeat. Two (or more) ringlb nodes exchange
//! authenticated heartbeats over UDP; exactly one of them holds the floating IP (the VIP).
//!
//! | module | job |
//! |---|---|
//! | [`message`] | the signed wire format (HMAC-SHA256), and the replay guard per peer |
//! | [`machine`] | the pure state machine: ticks, verified messages and local health in; send, take or release the VIP, notify out |
//! | [`runner`] | the `ha` thread: the heartbeat socket and the thin I/O that carries out the machine's decisions |
//! | [`vip`] | add, remove and look for the VIP on an interface through rtnetlink |
//! | [`garp`] | gratuitous ARP, so that neighbours learn the VIP's new MAC at once |
//! | [`status`] | what `GET /ha` and `ringlb ha status` show |
//!
//! The machine never touches a socket, so every rule of LIFECYCLE.md is unit-tested with a
//! simulated network and a fake clock. `vip` and `garp` act in the network namespace of the
//! calling thread.

pub mod garp;
pub mod machine;
pub mod message;
pub mod runner;
pub mod status;
pub mod vip;
