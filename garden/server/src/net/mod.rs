//! Container networking like Guardian's kawasaki: a /30 (or a static subnet) per container from
//! an IP pool, a veth pair per container, NetIn port forwarding, a NetOut firewall chain per
//! container, /etc/hosts and resolv.conf, tc bandwidth limits.
//!
//! A subnet that several containers share gets a bridge holding its gateway address, like
//! Guardian's. A /30 has room for one container only, so there the host end of the veth holds
//! the gateway address itself (routed, no bridge). That matters for speed: deleting a bridge
//! costs this kernel 35-50 ms of RCU waiting under the global rtnl lock, so every destroy paid
//! it one after the other, while the veth goes away with the container's network namespace,
//! batched by the kernel's namespace cleanup (30 at once in 90 ms, against 1.9 s for deleting
//! the same 30 veths and bridges with `ip link del`).
//!
//! Host-side changes go through the standard tools (`ip -batch`, `tc`, `iptables-restore`); the
//! container end is configured with ioctls from a thread that joins the container's network
//! namespace. Names carry a tag derived from the instance name (the cgroup parent), so several
//! gardends on one host never touch each other's links or chains, and a restart removes exactly
//! what its predecessor left.
//!
//! Why iptables (through `iptables-restore --noflush`) rather than nftables: Guardian's rule
//! model (per-container chains, `-g` into a shared default chain, DNAT/MASQUERADE in the nat
//! table) maps onto it one to one; one restore is one kernel transaction, so every container
//! change is atomic, 3000 NetOut rules land in about 0.1 s; and on current distributions the
//! `iptables` binary is iptables-nft, so the rules live in nf_tables anyway and coexist with
//! Docker's or firewalld's rules, which also still use the iptables tables.

mod antispoof;
mod bridge;
mod cmd;
pub mod egress;
pub mod firewall;
mod host_nets;
mod host_ports;
pub mod hosts;
mod netlink;
pub mod pool;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use egress::{EgressRule, IcmpMatch, PortMap, Protocol, Traffic};
use firewall::{ContainerRules, Firewall};
pub use pool::Cidr;
use pool::{IpPool, Lease, PortPool};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad input from a client or the operator; the message is the whole story.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Exhausted(String),
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("container {0} has no network")]
    Unknown(String),
}

/// Operator settings: Guardian's kawasaki flags, declared once (see `config.rs`).
#[derive(Debug, Clone, clap::Args)]
pub struct NetConfig {
    /// Pool of container subnets, carved into /30s.
    #[arg(
        long = "network-pool",
        value_name = "CIDR",
        default_value = "10.254.0.0/22"
    )]
    pub pool: Cidr,
    /// First host port handed out by NetIn.
    #[arg(long, value_name = "PORT", default_value_t = 61001)]
    pub port_pool_start: u32,
    /// Number of host ports for NetIn.
    #[arg(long, value_name = "N", default_value_t = 4534)]
    pub port_pool_size: u32,
    /// MTU of container interfaces [default: the host's outbound MTU, at most 1500].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(68..=65535))]
    pub mtu: Option<u32>,
    /// Network containers may not reach unless a NetOut rule allows it (repeatable).
    #[arg(long = "deny-network", value_name = "CIDR")]
    pub deny_networks: Vec<Cidr>,
    /// Let containers reach the host itself.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub allow_host_access: bool,
    /// DNS server for containers' resolv.conf instead of the host's (repeatable).
    #[arg(long = "dns-server", value_name = "IP")]
    pub dns_servers: Vec<Ipv4Addr>,
    /// DNS server added to containers' resolv.conf (repeatable).
    #[arg(long = "additional-dns-server", value_name = "IP")]
    pub additional_dns_servers: Vec<Ipv4Addr>,
    /// Line added to containers' /etc/hosts, e.g. `10.0.0.5 db` (repeatable).
    #[arg(long = "additional-host-entry", value_name = "ENTRY")]
    pub additional_host_entries: Vec<String>,
    /// Host address NetIn forwards from and Info reports [default: the default route's source].
    #[arg(long, value_name = "IP")]
    pub external_ip: Option<Ipv4Addr>,
    /// Let NetIn take an explicit host port outside the port pool (ports a host service
    /// listens on are refused either way).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub netin_any_port: bool,
    /// Also forward NetIn ports on 127.0.0.1 (off: loopback stays the host's own).
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub netin_loopback: bool,
    /// iptables binary; `<bin>-restore` and `<bin>-save` are used next to it.
    #[arg(long, value_name = "PATH", default_value = "iptables")]
    pub iptables_bin: PathBuf,
}

impl Default for NetConfig {
    fn default() -> Self {
        crate::config::Config::default().net
    }
}

/// A container's traffic shaping in the server's own terms (the core converts Garden's
/// `BandwidthLimits` at the service boundary): bytes per second and burst bytes; 0 = none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub rate: u64,
    pub burst: u64,
}

/// Where a container stands, so teardown undoes exactly what was done.
#[derive(Debug, Default)]
struct Progress {
    link: bool,
    /// Its filter chain exists (see [`ContainerRules::chain_optional`]).
    firewall: bool,
    /// A NetIn made the container's nat chain.
    nat_chain: bool,
    /// The address went back to the pool (exactly once, even if a later step fails).
    ip_released: bool,
}

/// One container's network.
struct Attached {
    lease: Lease,
    rules: ContainerRules,
    host_if: String,
    mapped: Mutex<Vec<PortMap>>,
    progress: Mutex<Progress>,
    /// Serialises NetIn/NetOut/teardown of this container.
    op: tokio::sync::Mutex<()>,
}

/// What Info shows about a container's network.
pub struct NetInfo {
    pub host_ip: String,
    pub container_ip: String,
    /// The container's subnet (`a.b.c.d/n`), for the depot record.
    pub subnet: String,
    pub external_ip: String,
    pub mapped_ports: Vec<PortMap>,
}

pub struct Network {
    cfg: NetConfig,
    /// Prefix of every link name (`g<tag>`).
    links_prefix: String,
    external_ip: Ipv4Addr,
    mtu: u32,
    ips: Mutex<IpPool>,
    ports: Mutex<PortPool>,
    containers: Mutex<HashMap<String, Arc<Attached>>>,
    /// Subnets whose bridge exists; bridge creation and removal happen under this lock.
    bridges: tokio::sync::Mutex<HashSet<Cidr>>,
    firewall: Firewall,
}

/// How long a routed container's veth may take to vanish with its namespace before it is
/// deleted by hand (a process that escaped the kill still holding the namespace).
const NAMESPACE_TEARDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// A /30 has room for one container: no bridge, the host end of the veth holds the gateway
/// address.
fn routed(subnet: &Cidr) -> bool {
    subnet.prefix() == 30
}

/// A container's network record for `lease`: link and chain names follow from the address.
fn attached(cfg: &NetConfig, links_prefix: &str, chain_prefix: &str, lease: Lease) -> Attached {
    let id = format!("{:08x}", u32::from(lease.container_ip));
    let host_if = format!("{links_prefix}h{id}");
    let routed = routed(&lease.subnet);
    Attached {
        lease,
        rules: ContainerRules {
            chain: format!("{chain_prefix}{id}"),
            in_pool: cfg.pool.contains_cidr(&lease.subnet),
            gateway_if: if routed {
                host_if.clone()
            } else {
                format!("{links_prefix}b{}", lease.subnet.hex())
            },
            routed,
            container_ip: lease.container_ip,
            subnet: lease.subnet,
        },
        host_if,
        mapped: Mutex::default(),
        progress: Mutex::default(),
        op: tokio::sync::Mutex::new(()),
    }
}

/// Five hex digits identifying an instance (FNV-1a of its name).
fn tag(instance: &str) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in instance.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("{:05x}", h & 0xfffff)
}

/// A container of a previous run whose network is taken over as it is: its address (the
/// links and chains named after it are kept; NetIn mappings are read back from its nat chain).
#[derive(Debug, Clone)]
pub struct KeptNetwork {
    pub handle: String,
    pub subnet: Cidr,
    pub container_ip: Ipv4Addr,
    /// It was given NetOut rules (at create or later), so it had a filter chain.
    pub had_netout: bool,
}

impl Network {
    /// Remove what a previous run of this instance left, except the links, chains and
    /// addresses of the containers in `kept`, which are registered as they are; then install
    /// the shared chains (and the kept containers' jumps into theirs).
    pub async fn new(
        cfg: NetConfig,
        instance: &str,
        kept: &[KeptNetwork],
    ) -> Result<Network, NetError> {
        let tag = tag(instance);
        let links_prefix = format!("g{tag}");
        let firewall = Firewall::new(
            &cfg.iptables_bin,
            format!("gd-{tag}-"),
            format!("{links_prefix}+"),
        );
        let mut ips = IpPool::new(cfg.pool)?;
        let mut ports = PortPool::new(cfg.port_pool_start, cfg.port_pool_size)?;
        let mut adopted = Vec::new();
        for k in kept {
            let lease = Lease {
                subnet: k.subnet,
                container_ip: k.container_ip,
            };
            match ips.claim(&lease) {
                Ok(()) => adopted.push((
                    k.handle.clone(),
                    attached(&cfg, &links_prefix, firewall.prefix(), lease),
                    k.had_netout,
                )),
                Err(e) => {
                    tracing::warn!(handle = k.handle, error = %e, "address of a kept container")
                }
            }
        }
        let mut dns = cfg.dns_servers.clone();
        dns.extend(cfg.additional_dns_servers.iter().copied());
        let global =
            firewall.global_script(cfg.pool, &cfg.deny_networks, &dns, cfg.allow_host_access);
        let kept_rules: Vec<firewall::Kept> = adopted
            .iter()
            .map(|(_, a, had_netout)| firewall::Kept {
                rules: &a.rules,
                had_netout: *had_netout,
            })
            .collect();
        let saved = firewall.take_over(&kept_rules, global).await?;
        // A container whose chain is gone cannot be kept.
        let adopted: Vec<(String, Attached, bool)> = adopted
            .into_iter()
            .filter_map(|(handle, a, had_netout)| {
                let chain = firewall::has_chain(&saved, "filter", &a.rules.chain);
                let kept = firewall::Kept {
                    rules: &a.rules,
                    had_netout,
                };
                if !kept.whole(chain) {
                    tracing::warn!(
                        handle,
                        chain = a.rules.chain,
                        "firewall chain of a kept container is gone"
                    );
                    ips.release(&a.lease);
                    return None;
                }
                Some((handle, a, chain))
            })
            .collect();
        let keep_links: HashSet<String> = adopted
            .iter()
            .flat_map(|(_, a, _)| [a.host_if.clone(), a.rules.gateway_if.clone()])
            .collect();
        for name in bridge::list(&links_prefix) {
            if keep_links.contains(&name) {
                continue;
            }
            tracing::info!(link = name, "removing link left by a previous run");
            bridge::delete(&name).await?;
        }
        let mut containers = HashMap::new();
        let mut bridges = HashSet::new();
        // Anti-spoofing rules are rebuilt: a previous run's go, kept bridged containers get
        // theirs again.
        antispoof::remove_all(&format!("{links_prefix}h")).await;
        for (handle, a, chain) in adopted {
            let mapped = firewall::netin_mappings(&saved, &a.rules.chain);
            let nat_chain = firewall::has_nat_chain(&saved, &a.rules.chain);
            for m in &mapped {
                if let Err(e) = ports.claim(m.host_port) {
                    tracing::warn!(handle, port = m.host_port, error = %e, "kept NetIn port");
                }
            }
            {
                let mut p = a.progress.lock().expect("progress lock");
                p.link = true;
                p.firewall = chain;
                p.nat_chain = nat_chain;
            }
            *a.mapped.lock().expect("mapped lock") = mapped;
            if !routed(&a.lease.subnet) {
                bridges.insert(a.lease.subnet);
                if let Err(e) = antispoof::bind(&a.host_if, a.lease.container_ip).await {
                    tracing::warn!(handle, error = %e, "anti-spoofing rules of a kept container");
                }
            }
            tracing::info!(handle, ip = %a.lease.container_ip, "network kept");
            containers.insert(handle, Arc::new(a));
        }
        let path = "/proc/sys/net/ipv4/ip_forward";
        std::fs::write(path, "1").map_err(|source| NetError::Io {
            path: path.into(),
            source,
        })?;
        let external_ip = cfg.external_ip.unwrap_or_else(bridge::default_external_ip);
        let mtu = cfg.mtu.unwrap_or_else(bridge::default_mtu);
        tracing::info!(%external_ip, mtu, pool = %cfg.pool, prefix = firewall.prefix(), "network ready");
        Ok(Network {
            cfg,
            links_prefix,
            external_ip,
            mtu,
            ips: Mutex::new(ips),
            ports: Mutex::new(ports),
            containers: Mutex::new(containers),
            bridges: tokio::sync::Mutex::new(bridges),
            firewall,
        })
    }

    /// Whether `handle` has a network here (allocated, or kept from a previous run).
    pub fn has(&self, handle: &str) -> bool {
        self.get(handle).is_ok()
    }

    /// Remove the shared chains and any link of this instance; for a shutdown that leaves no
    /// container behind (with containers still running, their networking is kept).
    pub async fn remove_all(&self) {
        for name in bridge::list(&self.links_prefix) {
            if let Err(e) = bridge::delete(&name).await {
                tracing::warn!(link = name, error = %e, "remove link");
            }
        }
        if let Err(e) = self.firewall.cleanup().await {
            tracing::warn!(error = %e, "remove firewall chains");
        }
    }

    /// Number of /30 subnets in the pool.
    pub fn max_containers(&self) -> u64 {
        self.ips.lock().expect("ip pool lock").capacity()
    }

    /// Check a create spec's network inputs before anything is built.
    pub fn validate(&self, bandwidth: Bandwidth) -> Result<(), NetError> {
        if bandwidth.rate > 0 && bandwidth.burst == 0 {
            return Err(NetError::Invalid(
                "bandwidth limit: burst must be > 0 when rate is set".into(),
            ));
        }
        if bandwidth.rate == 0 && bandwidth.burst > 0 {
            return Err(NetError::Invalid(
                "bandwidth limit: rate must be > 0 when burst is set".into(),
            ));
        }
        Ok(())
    }

    /// Reserve an address for `handle` (`network` as in the create spec).
    pub fn allocate(&self, handle: &str, network: &str) -> Result<(), NetError> {
        let lease = self.ips.lock().expect("ip pool lock").acquire(network)?;
        if !network.is_empty() {
            if let Some(what) = host_nets::conflict(&lease.subnet, &self.links_prefix) {
                self.ips.lock().expect("ip pool lock").release(&lease);
                return Err(NetError::Invalid(format!(
                    "the requested network ({}) overlaps the {what}",
                    lease.subnet
                )));
            }
        }
        let attached = attached(&self.cfg, &self.links_prefix, self.firewall.prefix(), lease);
        self.containers
            .lock()
            .expect("containers lock")
            .insert(handle.to_string(), Arc::new(attached));
        Ok(())
    }

    fn get(&self, handle: &str) -> Result<Arc<Attached>, NetError> {
        self.containers
            .lock()
            .expect("containers lock")
            .get(handle)
            .cloned()
            .ok_or_else(|| NetError::Unknown(handle.into()))
    }

    /// Wire up an allocated container whose network namespace is `netns`: links, firewall with the create-time NetOut rules, bandwidth, /etc files.
    /// On error the caller calls [`Network::release`], which undoes whatever was done.
    pub async fn setup(
        &self,
        handle: &str,
        hostname: &str,
        netns: BorrowedFd<'_>,
        root: hosts::ContainerRoot<'_>,
        netout: &[EgressRule],
        bandwidth: Bandwidth,
    ) -> Result<(), NetError> {
        let started = std::time::Instant::now();
        let a = self.get(handle)?;
        let _op = a.op.lock().await;
        let expanded = firewall::expand(handle, netout);
        // Links and firewall rules do not depend on each other: set both up at once.
        let links = async {
            if routed(&a.lease.subnet) {
                a.progress.lock().expect("progress lock").link = true;
                bridge::create_routed(&a.host_if, &a.lease.subnet, netns, self.mtu).await?;
            } else {
                // Bridge creation and removal are decided under this lock.
                let mut bridges = self.bridges.lock().await;
                let new_bridge = !bridges.contains(&a.lease.subnet);
                a.progress.lock().expect("progress lock").link = true;
                bridge::create_host(
                    &a.rules.gateway_if,
                    new_bridge,
                    &a.lease.subnet,
                    &a.host_if,
                    netns,
                    self.mtu,
                )
                .await?;
                bridges.insert(a.lease.subnet);
                drop(bridges);
                antispoof::bind(&a.host_if, a.lease.container_ip).await?;
            }
            bridge::configure_inside(netns, a.lease.container_ip, &a.lease.subnet).await
        };
        let rules = async {
            if netout.is_empty() && a.rules.chain_optional() {
                return Ok(());
            }
            a.progress.lock().expect("progress lock").firewall = true;
            let r = self.firewall.add_container(&a.rules, &expanded).await;
            if r.is_err() {
                // The restore is atomic: nothing of it was applied.
                a.progress.lock().expect("progress lock").firewall = false;
            }
            r
        };
        let (linked, filtered) = tokio::join!(links, rules);
        linked?;
        filtered?;
        if bandwidth.rate > 0 {
            bridge::limit_bandwidth(&a.host_if, netns, bandwidth.rate, bandwidth.burst).await?;
        }
        self.write_hosts(handle, hostname, root)?;
        let resolv = hosts::resolv_conf(
            &self.cfg.dns_servers,
            &self.cfg.additional_dns_servers,
            &hosts::host_resolv_conf(),
        );
        hosts::write_etc(root.fd, "resolv.conf", &resolv, root.owner)?;
        tracing::debug!(
            handle,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "network set up"
        );
        Ok(())
    }

    /// The container's `/etc/hosts`: localhost, its address under `hostname`, and the
    /// configured extra entries.
    pub fn write_hosts(
        &self,
        handle: &str,
        hostname: &str,
        root: hosts::ContainerRoot<'_>,
    ) -> Result<(), NetError> {
        let a = self.get(handle)?;
        let text = hosts::hosts(
            a.lease.container_ip,
            hostname,
            &self.cfg.additional_host_entries,
        );
        hosts::write_etc(root.fd, "hosts", &text, root.owner)
    }

    /// The network set up under `old` is `new`'s from now on (a warm container claimed by a
    /// create): links and chains are named after the address, so only the record moves.
    pub fn rename(&self, old: &str, new: &str) -> Result<(), NetError> {
        let mut containers = self.containers.lock().expect("containers lock");
        if containers.contains_key(new) {
            return Err(NetError::Invalid(format!(
                "network of {new} already exists"
            )));
        }
        let a = containers
            .remove(old)
            .ok_or_else(|| NetError::Unknown(old.into()))?;
        containers.insert(new.to_string(), a);
        Ok(())
    }

    /// Forward a host port to the container. 0 host port = next from the pool; 0 container
    /// port = same as the host port.
    pub async fn net_in(
        &self,
        handle: &str,
        host_port: u32,
        container_port: u32,
    ) -> Result<(u32, u32), NetError> {
        let a = self.get(handle)?;
        let _op = a.op.lock().await;
        if container_port > 65535 {
            return Err(NetError::Invalid(format!(
                "invalid container port {container_port}"
            )));
        }
        let host_port = {
            let busy = host_ports::listening();
            let mut ports = self.ports.lock().expect("port pool lock");
            if host_port == 0 {
                ports.acquire_free(&busy)?
            } else {
                if !ports.contains(host_port) && !self.cfg.netin_any_port {
                    return Err(NetError::Invalid(format!(
                        "host port {host_port} is outside the port pool {}",
                        ports.range()
                    )));
                }
                if busy.contains(&host_port) {
                    return Err(NetError::Invalid(format!(
                        "host port {host_port} is already in use on the host"
                    )));
                }
                ports.claim(host_port)?;
                host_port
            }
        };
        let container_port = if container_port == 0 {
            host_port
        } else {
            container_port
        };
        let first = !a.progress.lock().expect("progress lock").nat_chain;
        if let Err(e) = self
            .firewall
            .add_netin(
                &a.rules,
                self.external_ip,
                self.cfg.netin_loopback,
                host_port,
                container_port,
                first,
            )
            .await
        {
            self.ports
                .lock()
                .expect("port pool lock")
                .release(host_port);
            return Err(e);
        }
        a.progress.lock().expect("progress lock").nat_chain = true;
        a.mapped.lock().expect("mapped lock").push(PortMap {
            host_port,
            container_port,
        });
        Ok((host_port, container_port))
    }

    /// Prepend NetOut rules (all or none).
    pub async fn net_out(&self, handle: &str, rules: &[EgressRule]) -> Result<(), NetError> {
        let a = self.get(handle)?;
        let expanded = firewall::expand(handle, rules);
        let _op = a.op.lock().await;
        if rules.is_empty() || a.progress.lock().expect("progress lock").firewall {
            return self.firewall.add_netout(&a.rules.chain, &expanded).await;
        }
        // The first NetOut of a container without a chain makes it (all or nothing).
        self.firewall.add_container(&a.rules, &expanded).await?;
        a.progress.lock().expect("progress lock").firewall = true;
        Ok(())
    }

    pub fn info(&self, handle: &str) -> Option<NetInfo> {
        let a = self.get(handle).ok()?;
        let mapped_ports = a.mapped.lock().expect("mapped lock").clone();
        Some(NetInfo {
            host_ip: a.lease.host_ip().to_string(),
            container_ip: a.lease.container_ip.to_string(),
            subnet: a.lease.subnet.to_string(),
            external_ip: self.external_ip.to_string(),
            mapped_ports,
        })
    }

    /// `garden.network.*` and `kawasaki.*` properties of a container.
    pub fn properties(&self, handle: &str) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        let Ok(a) = self.get(handle) else { return p };
        let mut dns = self.cfg.dns_servers.clone();
        dns.extend(self.cfg.additional_dns_servers.iter().copied());
        let join = |v: Vec<String>| v.join(",");
        for (k, v) in [
            (
                "garden.network.container-ip",
                a.lease.container_ip.to_string(),
            ),
            ("garden.network.host-ip", a.lease.host_ip().to_string()),
            ("garden.network.external-ip", self.external_ip.to_string()),
            ("kawasaki.host-interface", a.host_if.clone()),
            (
                "kawasaki.container-interface",
                bridge::CONTAINER_IF.to_string(),
            ),
            ("kawasaki.bridge-interface", a.rules.gateway_if.clone()),
            ("kawasaki.subnet", a.lease.subnet.to_string()),
            (
                "kawasaki.iptable-prefix",
                self.firewall.prefix().to_string(),
            ),
            (
                "kawasaki.iptable-inst",
                a.rules
                    .chain
                    .trim_start_matches(self.firewall.prefix())
                    .to_string(),
            ),
            ("kawasaki.mtu", self.mtu.to_string()),
            (
                "kawasaki.dns-servers",
                join(dns.iter().map(|d| d.to_string()).collect()),
            ),
            (
                "kawasaki.host-entries",
                join(self.cfg.additional_host_entries.clone()),
            ),
        ] {
            p.insert(k.to_string(), v);
        }
        p
    }

    /// Bytes received and sent by the container (the host end's counters, mirrored).
    pub fn stats(&self, handle: &str) -> Option<Traffic> {
        let a = self.get(handle).ok()?;
        let (host_rx, host_tx) = bridge::counters(&a.host_if)?;
        Some(Traffic {
            rx_bytes: host_tx,
            tx_bytes: host_rx,
        })
    }

    /// Give the address back to the pool (once); true when its subnet is now empty.
    fn release_lease(&self, a: &Attached) -> bool {
        let mut p = a.progress.lock().expect("progress lock");
        let mut ips = self.ips.lock().expect("ip pool lock");
        if p.ip_released {
            !ips.in_use(&a.lease.subnet)
        } else {
            p.ip_released = true;
            ips.release(&a.lease)
        }
    }

    /// Undo everything of `handle`: firewall, veth, bridge if it was the subnet's last
    /// container, ports and address back to the pools. Safe on a half-built container and
    /// on an unknown handle.
    pub async fn release(&self, handle: &str) -> Result<(), NetError> {
        let Ok(a) = self.get(handle) else {
            return Ok(());
        };
        let _op = a.op.lock().await;
        let (link, fw, nat_chain) = {
            let p = a.progress.lock().expect("progress lock");
            (p.link, p.firewall, p.nat_chain)
        };
        // Rules and links are independent: remove both at once.
        let rules = async {
            if fw || nat_chain {
                self.firewall
                    .remove_container(&a.rules, fw, nat_chain)
                    .await?;
                let mut p = a.progress.lock().expect("progress lock");
                (p.firewall, p.nat_chain) = (false, false);
            }
            Ok::<(), NetError>(())
        };
        let links = async {
            if routed(&a.lease.subnet) {
                if link {
                    // Gone with the namespace once the container's processes are; deleting
                    // it ourselves would cost a full unregister under the rtnl lock.
                    bridge::delete_after(&a.host_if, NAMESPACE_TEARDOWN).await?;
                    a.progress.lock().expect("progress lock").link = false;
                }
                // Only now: the link's name comes from the address, so the next holder of
                // the address must not find it still there.
                self.release_lease(&a);
                return Ok(());
            }
            if link {
                antispoof::unbind(&a.host_if, a.lease.container_ip).await;
            }
            // Bridge creation and removal are decided under this lock.
            let mut bridges = self.bridges.lock().await;
            let empty = self.release_lease(&a);
            let mut doomed = Vec::new();
            if link {
                doomed.push(a.host_if.as_str());
            }
            if empty && (bridges.contains(&a.lease.subnet) || bridge::exists(&a.rules.gateway_if)) {
                doomed.push(a.rules.gateway_if.as_str());
            }
            bridge::delete_all(&doomed).await?;
            a.progress.lock().expect("progress lock").link = false;
            if empty {
                bridges.remove(&a.lease.subnet);
            }
            Ok(())
        };
        let (unruled, unlinked) = tokio::join!(rules, links);
        unruled?;
        unlinked?;
        let mut ports = self.ports.lock().expect("port pool lock");
        for m in a.mapped.lock().expect("mapped lock").drain(..) {
            ports.release(m.host_port);
        }
        drop(ports);
        self.containers
            .lock()
            .expect("containers lock")
            .remove(handle);
        Ok(())
    }
}

/// A gardend going away without containers (including a failed start, e.g. the port was taken)
/// takes its shared chains and bridges with it. With containers still running nothing is
/// touched: they keep their network until the next start cleans up.
impl Drop for Network {
    fn drop(&mut self) {
        let empty = self
            .containers
            .lock()
            .map(|c| c.is_empty())
            .unwrap_or(false);
        if !empty {
            return;
        }
        for name in bridge::list(&self.links_prefix) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &name])
                .status();
        }
        self.firewall.cleanup_blocking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_fit_interface_names() {
        let t = tag("garden-e2e-40123");
        assert_eq!(t.len(), 5);
        assert_ne!(t, tag("garden-e2e-40124"));
        // g + tag + b + 8 hex digits: within IFNAMSIZ - 1.
        assert!(format!("g{t}b{:08x}", u32::MAX).len() <= 15);
    }
}
