//! High availability: the sidecar thread that holds or yields the floating IP (VIP).
//!
//! A pure state machine decides; thin I/O carries its decisions out. This part is the I/O:
//!
//! | module | job |
//! |---|---|
//! | [`vip`] | add, remove and look for the VIP on an interface through rtnetlink |
//! | [`garp`] | gratuitous ARP, so that neighbours learn the VIP's new MAC at once |
//! | [`status`] | what `GET /ha` and `ringlb ha status` show |
//!
//! Both act in the network namespace of the calling thread.

pub mod garp;
pub mod status;
pub mod vip;
