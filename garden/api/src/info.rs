//! What the server reports: Capacity, Info, Metrics and their bulk entries.
//!
//! Info and Metrics have no json tags in Go, so their keys are Go's capitalised field names and
//! nothing is omitted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::de::{is_default, null};
use crate::error::ErrorBody;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub memory_in_bytes: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub disk_in_bytes: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub schedulable_disk_in_bytes: u64,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub max_containers: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortMapping {
    #[serde(default, deserialize_with = "null")]
    pub host_port: u32,
    #[serde(default, deserialize_with = "null")]
    pub container_port: u32,
}

/// Info's reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInfo {
    /// `"active"` or `"stopped"`.
    #[serde(default, deserialize_with = "null")]
    pub state: String,
    /// e.g. `"Out of memory"`; `null` when none.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    #[serde(rename = "HostIP", default, deserialize_with = "null")]
    pub host_ip: String,
    #[serde(rename = "ContainerIP", default, deserialize_with = "null")]
    pub container_ip: String,
    #[serde(rename = "ContainerIPv6", default, deserialize_with = "null")]
    pub container_ipv6: String,
    #[serde(rename = "ExternalIP", default, deserialize_with = "null")]
    pub external_ip: String,
    #[serde(default, deserialize_with = "null")]
    pub container_path: String,
    #[serde(rename = "ProcessIDs", default)]
    pub process_ids: Option<Vec<String>>,
    #[serde(default)]
    pub properties: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mapped_ports: Option<Vec<PortMapping>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInfoEntry {
    #[serde(default, deserialize_with = "null")]
    pub info: ContainerInfo,
    #[serde(default)]
    pub err: Option<ErrorBody>,
}

/// Memory statistics, in Go's field order. All keys are always present.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMemoryStat {
    #[serde(default, deserialize_with = "null")]
    pub active_anon: u64,
    #[serde(default, deserialize_with = "null")]
    pub active_file: u64,
    #[serde(default, deserialize_with = "null")]
    pub cache: u64,
    #[serde(default, deserialize_with = "null")]
    pub hierarchical_memory_limit: u64,
    #[serde(default, deserialize_with = "null")]
    pub inactive_anon: u64,
    #[serde(default, deserialize_with = "null")]
    pub inactive_file: u64,
    #[serde(default, deserialize_with = "null")]
    pub mapped_file: u64,
    #[serde(default, deserialize_with = "null")]
    pub pgfault: u64,
    #[serde(default, deserialize_with = "null")]
    pub pgmajfault: u64,
    #[serde(default, deserialize_with = "null")]
    pub pgpgin: u64,
    #[serde(default, deserialize_with = "null")]
    pub pgpgout: u64,
    #[serde(default, deserialize_with = "null")]
    pub rss: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_active_anon: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_active_file: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_cache: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_inactive_anon: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_inactive_file: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_mapped_file: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_pgfault: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_pgmajfault: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_pgpgin: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_pgpgout: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_rss: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_unevictable: u64,
    #[serde(default, deserialize_with = "null")]
    pub unevictable: u64,
    #[serde(default, deserialize_with = "null")]
    pub swap: u64,
    #[serde(default, deserialize_with = "null")]
    pub hierarchical_memsw_limit: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_swap: u64,
    /// Go field name, no tag. v1: total_rss + total_cache + total_swap − total_inactive_file;
    /// v2: file + anon + swapcached − inactive_file (floored at 0).
    #[serde(rename = "TotalUsageTowardLimit", default, deserialize_with = "null")]
    pub total_usage_toward_limit: u64,
    #[serde(default, deserialize_with = "null")]
    pub anon: u64,
    #[serde(default, deserialize_with = "null")]
    pub file: u64,
    #[serde(default, deserialize_with = "null")]
    pub swapcached: u64,
}

/// Cumulative CPU time in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCpuStat {
    #[serde(default, deserialize_with = "null")]
    pub usage: u64,
    #[serde(default, deserialize_with = "null")]
    pub user: u64,
    #[serde(default, deserialize_with = "null")]
    pub system: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerDiskStat {
    #[serde(default, deserialize_with = "null")]
    pub total_bytes_used: u64,
    #[serde(default, deserialize_with = "null")]
    pub total_inodes_used: u64,
    #[serde(default, deserialize_with = "null")]
    pub exclusive_bytes_used: u64,
    #[serde(default, deserialize_with = "null")]
    pub exclusive_inodes_used: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerNetworkStat {
    #[serde(default, deserialize_with = "null")]
    pub rx_bytes: u64,
    #[serde(default, deserialize_with = "null")]
    pub tx_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerPidStat {
    #[serde(default, deserialize_with = "null")]
    pub current: u64,
    /// 0 = no limit.
    #[serde(default, deserialize_with = "null")]
    pub max: u64,
}

/// Metrics' reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Metrics {
    #[serde(rename = "MemoryStat", default, deserialize_with = "null")]
    pub memory_stat: ContainerMemoryStat,
    #[serde(rename = "CPUStat", default, deserialize_with = "null")]
    pub cpu_stat: ContainerCpuStat,
    #[serde(default, deserialize_with = "null")]
    pub disk_stat: ContainerDiskStat,
    /// `null` unless network metrics are known.
    #[serde(default)]
    pub network_stat: Option<ContainerNetworkStat>,
    #[serde(default, deserialize_with = "null")]
    pub pid_stat: ContainerPidStat,
    /// Nanoseconds since the container was created.
    #[serde(default, deserialize_with = "null")]
    pub age: u64,
    #[serde(rename = "CPUEntitlement", default, deserialize_with = "null")]
    pub cpu_entitlement: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerMetricsEntry {
    #[serde(default, deserialize_with = "null")]
    pub metrics: Metrics,
    #[serde(default)]
    pub err: Option<ErrorBody>,
}

/// BulkInfo's reply, keyed by handle.
pub type BulkInfo = BTreeMap<String, ContainerInfoEntry>;
/// BulkMetrics' reply, keyed by handle.
pub type BulkMetrics = BTreeMap<String, ContainerMetricsEntry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_info_matches_go() {
        assert_eq!(
            serde_json::to_string(&ContainerInfo::default()).unwrap(),
            r#"{"State":"","Events":null,"HostIP":"","ContainerIP":"","ContainerIPv6":"","ExternalIP":"","ContainerPath":"","ProcessIDs":null,"Properties":null,"MappedPorts":null}"#
        );
    }

    #[test]
    fn metrics_keys() {
        let json = serde_json::to_string(&Metrics::default()).unwrap();
        assert!(
            json.contains(r#""CPUStat":{"Usage":0,"User":0,"System":0}"#),
            "{json}"
        );
        assert!(json.contains(r#""NetworkStat":null"#));
        assert!(json.contains(r#""TotalUsageTowardLimit":0"#));
        assert!(json.contains(r#""PidStat":{"Current":0,"Max":0}"#));
        assert!(json.contains(r#""CPUEntitlement":0"#));
    }
}
