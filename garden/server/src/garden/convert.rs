//! Garden's wire types become the server's own here, at the service boundary: below the core
//! (`kernel/`, `cgroups/`, `quota/`, `runtime/`) nothing takes a `garden_api` limit type, so a
//! wire change never reaches the code that talks to the kernel.

use std::net::Ipv4Addr;

use garden_api::{
    BandwidthLimits, BindMount, ContainerCpuStat, ContainerMemoryStat, ContainerNetworkStat,
    ContainerPidStat, DiskLimits, Limits, NetOutRule, PortMapping, ProcessLimits, ResourceLimits,
    BIND_MOUNT_MODE_RO, DISK_LIMIT_SCOPE_TOTAL, PROTOCOL_ALL, PROTOCOL_ICMP, PROTOCOL_TCP,
    PROTOCOL_UDP,
};

use crate::cgroups::{CpuStats, MemoryStats, PidStats};
use crate::init::proto::{InitBindMount, Rlimit};
use crate::kernel::{Bandwidth, DiskLimit, EgressRule, Resources, Traffic};
use crate::net::{IcmpMatch, PortMap, Protocol};

pub(super) fn resources(l: &Limits) -> Resources {
    Resources {
        memory_bytes: l.memory_limits.limit_in_bytes,
        pids_max: l.pid_limits.max,
        cpu_shares: l.cpu_limits.shares(),
    }
}

/// A pea's own limits (`ProcessSpec.limits`); zero = unlimited.
pub(super) fn process_resources(l: &ProcessLimits) -> Resources {
    Resources {
        memory_bytes: l.memory_limits.limit_in_bytes,
        pids_max: 0,
        cpu_shares: l.cpu_limits.shares(),
    }
}

pub(super) fn disk_limit(l: &DiskLimits) -> DiskLimit {
    DiskLimit {
        byte_soft: l.byte_soft,
        byte_hard: l.byte_hard,
        inode_soft: l.inode_soft,
        inode_hard: l.inode_hard,
        includes_image: l.scope == DISK_LIMIT_SCOPE_TOTAL,
    }
}

pub(super) fn bandwidth(l: &BandwidthLimits) -> Bandwidth {
    Bandwidth {
        rate: l.rate,
        burst: l.burst,
    }
}

pub(super) fn bind_mounts(mounts: &[BindMount]) -> Vec<InitBindMount> {
    mounts
        .iter()
        .map(|b| InitBindMount {
            src: b.src_path.clone().into(),
            dst: b.dst_path.clone().into(),
            read_only: b.mode == BIND_MOUNT_MODE_RO,
            fd: None,
            src_is_dir: false,
        })
        .collect()
}

/// The limits a process spec sets, for garden-init's setrlimit.
pub(super) fn rlimits(r: &ResourceLimits) -> Vec<(Rlimit, u64)> {
    [
        (Rlimit::As, r.as_),
        (Rlimit::Core, r.core),
        (Rlimit::Cpu, r.cpu),
        (Rlimit::Data, r.data),
        (Rlimit::Fsize, r.fsize),
        (Rlimit::Locks, r.locks),
        (Rlimit::Memlock, r.memlock),
        (Rlimit::Msgqueue, r.msgqueue),
        (Rlimit::Nice, r.nice),
        (Rlimit::Nofile, r.nofile),
        (Rlimit::Nproc, r.nproc),
        (Rlimit::Rss, r.rss),
        (Rlimit::Rtprio, r.rtprio),
        (Rlimit::Sigpending, r.sigpending),
        (Rlimit::Stack, r.stack),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

/// Check NetOut rules as Guardian does and turn them into the firewall's terms. The messages
/// are Guardian's, which clients match on.
pub(super) fn egress_rules(rules: &[NetOutRule]) -> Result<Vec<EgressRule>, String> {
    rules.iter().map(egress_rule).collect()
}

fn egress_rule(r: &NetOutRule) -> Result<EgressRule, String> {
    let name = match r.protocol {
        PROTOCOL_ALL => "ALL",
        PROTOCOL_TCP => "TCP",
        PROTOCOL_UDP => "UDP",
        PROTOCOL_ICMP => "ICMP",
        n => return Err(format!("invalid protocol: {n}")),
    };
    if !r.ports.is_empty() && (r.protocol == PROTOCOL_ALL || r.protocol == PROTOCOL_ICMP) {
        return Err(format!("Ports cannot be specified for Protocol {name}"));
    }
    if r.icmps.is_some() && r.protocol != PROTOCOL_ICMP {
        return Err(format!(
            "ICMP control cannot be specified for Protocol {name}"
        ));
    }
    let protocol = match r.protocol {
        PROTOCOL_TCP => Protocol::Tcp,
        PROTOCOL_UDP => Protocol::Udp,
        PROTOCOL_ICMP => Protocol::Icmp(r.icmps.map(|i| IcmpMatch {
            kind: i.icmp_type,
            code: i.code,
        })),
        _ => Protocol::All,
    };
    let ip = |s: &str, default: &str| -> Result<Ipv4Addr, String> {
        let s = if s.is_empty() { default } else { s };
        s.parse()
            .map_err(|_| format!("invalid IP address in NetOut rule: {s:?}"))
    };
    let mut networks = Vec::with_capacity(r.networks.len());
    for n in &r.networks {
        let start = ip(&n.start, "0.0.0.0")?;
        let end = ip(
            if n.end.is_empty() { &n.start } else { &n.end },
            "255.255.255.255",
        )?;
        if start > end {
            return Err(format!("invalid IP range in NetOut rule: {start}-{end}"));
        }
        networks.push((start, end));
    }
    let mut ports = Vec::with_capacity(r.ports.len());
    for p in &r.ports {
        let end = if p.end == 0 { p.start } else { p.end };
        if p.start > end {
            return Err(format!(
                "invalid port range in NetOut rule: {}-{end}",
                p.start
            ));
        }
        ports.push((p.start, end));
    }
    Ok(EgressRule {
        protocol,
        networks,
        ports,
        log: r.log,
    })
}

pub(super) fn port_mappings(maps: &[PortMap]) -> Vec<PortMapping> {
    maps.iter()
        .map(|m| PortMapping {
            host_port: m.host_port,
            container_port: m.container_port,
        })
        .collect()
}

pub(super) fn network_stat(t: Traffic) -> ContainerNetworkStat {
    ContainerNetworkStat {
        rx_bytes: t.rx_bytes,
        tx_bytes: t.tx_bytes,
    }
}

pub(super) fn memory_stat(m: &MemoryStats) -> ContainerMemoryStat {
    let g = |name| m.get(name);
    ContainerMemoryStat {
        active_anon: g("active_anon"),
        active_file: g("active_file"),
        cache: g("cache"),
        hierarchical_memory_limit: g("hierarchical_memory_limit"),
        inactive_anon: g("inactive_anon"),
        inactive_file: g("inactive_file"),
        mapped_file: g("mapped_file"),
        pgfault: g("pgfault"),
        pgmajfault: g("pgmajfault"),
        pgpgin: g("pgpgin"),
        pgpgout: g("pgpgout"),
        rss: g("rss"),
        total_active_anon: g("total_active_anon"),
        total_active_file: g("total_active_file"),
        total_cache: g("total_cache"),
        total_inactive_anon: g("total_inactive_anon"),
        total_inactive_file: g("total_inactive_file"),
        total_mapped_file: g("total_mapped_file"),
        total_pgfault: g("total_pgfault"),
        total_pgmajfault: g("total_pgmajfault"),
        total_pgpgin: g("total_pgpgin"),
        total_pgpgout: g("total_pgpgout"),
        total_rss: g("total_rss"),
        total_unevictable: g("total_unevictable"),
        unevictable: g("unevictable"),
        swap: g("swap"),
        hierarchical_memsw_limit: g("hierarchical_memsw_limit"),
        total_swap: g("total_swap"),
        total_usage_toward_limit: m.usage_toward_limit,
        anon: g("anon"),
        file: g("file"),
        swapcached: g("swapcached"),
    }
}

pub(super) fn cpu_stat(c: CpuStats) -> ContainerCpuStat {
    ContainerCpuStat {
        usage: c.usage,
        user: c.user,
        system: c.system,
    }
}

pub(super) fn pid_stat(p: PidStats) -> ContainerPidStat {
    ContainerPidStat {
        current: p.current,
        max: p.max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garden_api::{IcmpControl, IpRange, PortRange};

    #[test]
    fn netout_rules_become_egress_rules() {
        let r = NetOutRule {
            protocol: PROTOCOL_TCP,
            networks: vec![
                IpRange {
                    start: "10.0.0.1".into(),
                    end: "10.0.0.9".into(),
                },
                IpRange {
                    start: "8.8.8.8".into(),
                    end: String::new(),
                },
                IpRange::default(),
            ],
            ports: vec![
                PortRange {
                    start: 80,
                    end: 443,
                },
                PortRange { start: 22, end: 0 },
            ],
            icmps: None,
            log: true,
        };
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            egress_rules(&[r]).unwrap(),
            [EgressRule {
                protocol: Protocol::Tcp,
                networks: vec![
                    (ip("10.0.0.1"), ip("10.0.0.9")),
                    (ip("8.8.8.8"), ip("8.8.8.8")),
                    (ip("0.0.0.0"), ip("255.255.255.255")),
                ],
                ports: vec![(80, 443), (22, 22)],
                log: true,
            }]
        );
        let icmp = NetOutRule {
            protocol: PROTOCOL_ICMP,
            icmps: Some(IcmpControl {
                icmp_type: 8,
                code: Some(0),
            }),
            ..Default::default()
        };
        assert_eq!(
            egress_rules(&[icmp]).unwrap()[0].protocol,
            Protocol::Icmp(Some(IcmpMatch {
                kind: 8,
                code: Some(0)
            }))
        );
        assert_eq!(
            egress_rules(&[NetOutRule::default()]).unwrap(),
            [EgressRule::allow_all()]
        );
    }

    #[test]
    fn bad_netout_rules_are_refused_with_guardians_messages() {
        let refused = |r: NetOutRule| egress_rules(&[NetOutRule::default(), r]).unwrap_err();
        assert_eq!(
            refused(NetOutRule {
                ports: vec![PortRange { start: 1, end: 2 }],
                ..Default::default()
            }),
            "Ports cannot be specified for Protocol ALL"
        );
        assert_eq!(
            refused(NetOutRule {
                protocol: PROTOCOL_UDP,
                icmps: Some(IcmpControl::default()),
                ..Default::default()
            }),
            "ICMP control cannot be specified for Protocol UDP"
        );
        assert_eq!(
            refused(NetOutRule {
                protocol: 4,
                ..Default::default()
            }),
            "invalid protocol: 4"
        );
        let range = |start: &str, end: &str| NetOutRule {
            networks: vec![IpRange {
                start: start.into(),
                end: end.into(),
            }],
            ..Default::default()
        };
        assert!(refused(range("x", "")).contains("invalid IP address"));
        assert!(refused(range("::1", "")).contains("invalid IP address"));
        assert!(refused(range("10.0.0.9", "10.0.0.1")).contains("invalid IP range"));
        assert!(refused(NetOutRule {
            protocol: PROTOCOL_TCP,
            ports: vec![PortRange { start: 9, end: 1 }],
            ..Default::default()
        })
        .contains("invalid port range"));
    }

    /// Every counter the cgroup side reads reaches the wire under its own name (a misspelt
    /// name would silently report 0).
    #[test]
    fn every_memory_counter_reaches_its_wire_field() {
        let text: String = crate::cgroups::MEMORY_COUNTERS
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {}\n", i + 1))
            .collect();
        let wire =
            serde_json::to_value(memory_stat(&crate::cgroups::v1_memory_stat(&text))).unwrap();
        let zero: Vec<&String> = wire
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_u64() == Some(0))
            .map(|(k, _)| k)
            .collect();
        // v1 has no anon/file/swapcached; everything else is set.
        assert_eq!(zero, ["anon", "file", "swapcached"], "{wire}");
    }
}
