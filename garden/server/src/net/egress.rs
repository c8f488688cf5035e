//! The network's own terms for what crosses a container's edge: egress (NetOut) rules already
//! checked by the core, NetIn port mappings and traffic counters. Garden's wire types stop at
//! the core (`garden/convert.rs`), so a wire change never reaches the firewall.

use std::net::Ipv4Addr;

/// What an egress rule matches on, by protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    /// ICMP, optionally of one type (and code).
    Icmp(Option<IcmpMatch>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpMatch {
    pub kind: u8,
    /// None = any code.
    pub code: Option<u8>,
}

/// One NetOut rule, valid by construction: destination ranges are ordered, ports are only
/// given for TCP or UDP. Empty lists match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    pub protocol: Protocol,
    /// Inclusive destination address ranges.
    pub networks: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Inclusive destination port ranges.
    pub ports: Vec<(u16, u16)>,
    /// Log new TCP connections (and, for `All`, any new flow) before accepting.
    pub log: bool,
}

impl EgressRule {
    /// Everything, unlogged.
    pub fn allow_all() -> EgressRule {
        EgressRule {
            protocol: Protocol::All,
            networks: Vec::new(),
            ports: Vec::new(),
            log: false,
        }
    }
}

/// A NetIn mapping: host port → container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    pub host_port: u32,
    pub container_port: u32,
}

/// Bytes a container received and sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}
