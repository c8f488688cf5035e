//! What a client asks for at Create: `ContainerSpec` and everything nested in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::de::{is_default, null};

/// Create's body. Every field is optional on the wire.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub handle: String,
    /// Idle time in nanoseconds before the container is reaped; 0 = the server default.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub grace_time: u64,
    /// Deprecated rootfs URI; an error together with `image.uri`.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub rootfs: String,
    #[serde(default, deserialize_with = "null")]
    pub image: ImageRef,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub bind_mounts: Vec<BindMount>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub network: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub properties: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub privileged: bool,
    #[serde(default, deserialize_with = "null")]
    pub limits: Limits,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub netout_rules: Vec<NetOutRule>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub netin: Vec<NetIn>,
}

/// An image reference: `uri` plus optional registry credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub uri: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub username: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub password: String,
}

/// Read-only (0, the default) or read-write (1).
pub type BindMountMode = u8;
pub const BIND_MOUNT_MODE_RO: BindMountMode = 0;
pub const BIND_MOUNT_MODE_RW: BindMountMode = 1;
/// Source is a host path (0, the default) or a path inside the container (1).
pub type BindMountOrigin = u8;
pub const BIND_MOUNT_ORIGIN_HOST: BindMountOrigin = 0;
pub const BIND_MOUNT_ORIGIN_CONTAINER: BindMountOrigin = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub src_path: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub dst_path: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub mode: BindMountMode,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub origin: BindMountOrigin,
}

/// All limits, as the client always sends them (nested structs are never omitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, deserialize_with = "null")]
    pub bandwidth_limits: BandwidthLimits,
    #[serde(default, deserialize_with = "null")]
    pub cpu_limits: CpuLimits,
    #[serde(default, deserialize_with = "null")]
    pub disk_limits: DiskLimits,
    #[serde(default, deserialize_with = "null")]
    pub memory_limits: MemoryLimits,
    #[serde(default, deserialize_with = "null")]
    pub pid_limits: PidLimits,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandwidthLimits {
    /// Bytes per second.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub rate: u64,
    /// Bytes.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub burst: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimits {
    /// cgroup cpu shares units; preferred over `limit_in_shares` when > 0.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub weight: u64,
    /// Deprecated name of `weight`.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub limit_in_shares: u64,
}

impl CpuLimits {
    /// The shares in effect: `weight` if set, else `limit_in_shares`.
    pub fn shares(&self) -> u64 {
        if self.weight > 0 {
            self.weight
        } else {
            self.limit_in_shares
        }
    }
}

/// 0 = total (counting the image), 1 = exclusive (only the container's own writes).
pub type DiskLimitScope = u8;
pub const DISK_LIMIT_SCOPE_TOTAL: DiskLimitScope = 0;
pub const DISK_LIMIT_SCOPE_EXCLUSIVE: DiskLimitScope = 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskLimits {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub inode_soft: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub inode_hard: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub byte_soft: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub byte_hard: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub scope: DiskLimitScope,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLimits {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub limit_in_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidLimits {
    /// Maximum number of tasks; 0 = unlimited.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub max: u64,
}

/// A NetIn mapping requested at create. No `omitempty`: both keys are always present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetIn {
    #[serde(default, deserialize_with = "null")]
    pub host_port: u32,
    #[serde(default, deserialize_with = "null")]
    pub container_port: u32,
}

/// NetIn's request body; the `handle` is redundant (the path wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInRequest {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub handle: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub host_port: u32,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub container_port: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInResponse {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub host_port: u32,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub container_port: u32,
}

/// 0 all, 1 tcp, 2 udp, 3 icmp, 4 icmpv6.
pub type Protocol = u8;
pub const PROTOCOL_ALL: Protocol = 0;
pub const PROTOCOL_TCP: Protocol = 1;
pub const PROTOCOL_UDP: Protocol = 2;
pub const PROTOCOL_ICMP: Protocol = 3;
pub const PROTOCOL_ICMPV6: Protocol = 4;

/// An outbound firewall rule. All defaults encode as `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetOutRule {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    /// Inclusive destination ranges; empty = any.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub networks: Vec<IpRange>,
    /// Inclusive port ranges (tcp/udp only); empty = any.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub ports: Vec<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<IcmpControl>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub log: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    /// An IP address in text form; empty = unbounded.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub start: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub end: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub start: u16,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub end: u16,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpControl {
    #[serde(
        rename = "type",
        default,
        deserialize_with = "null",
        skip_serializing_if = "is_default"
    )]
    pub icmp_type: u8,
    /// Present even when 0; absent = any code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_encodes_as_the_go_client_sends_it() {
        let json = serde_json::to_string(&ContainerSpec::default()).unwrap();
        assert_eq!(
            json,
            r#"{"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}"#
        );
    }

    #[test]
    fn nulls_and_unknown_keys_are_accepted() {
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"handle":"h","env":null,"properties":null,"limits":null,"image":null,"bogus":[1,2],"grace_time":3000000000}"#,
        )
        .unwrap();
        assert_eq!(spec.handle, "h");
        assert_eq!(spec.grace_time, 3_000_000_000);
        assert!(spec.env.is_empty());
    }

    #[test]
    fn netout_rule_defaults_encode_as_empty_object() {
        assert_eq!(serde_json::to_string(&NetOutRule::default()).unwrap(), "{}");
        let rule = NetOutRule {
            protocol: PROTOCOL_ICMP,
            icmps: Some(IcmpControl {
                icmp_type: 0,
                code: Some(0),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&rule).unwrap(),
            r#"{"protocol":3,"icmps":{"code":0}}"#
        );
    }

    #[test]
    fn large_u64_round_trips() {
        let spec: ContainerSpec = serde_json::from_str(
            r#"{"limits":{"memory_limits":{"limit_in_bytes":18446744073709551615}}}"#,
        )
        .unwrap();
        assert_eq!(spec.limits.memory_limits.limit_in_bytes, u64::MAX);
    }
}
