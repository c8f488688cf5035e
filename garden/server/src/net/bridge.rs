//! Links on the host: a bridge per subnet, a veth pair per container (the peer created directly
//! in the container's network namespace as `eth0`), and tc shaping on the host end.

use std::net::Ipv4Addr;
use std::path::Path;

use super::pool::Cidr;
use super::{cmd, NetError};

/// The container end's name inside its namespace.
pub const CONTAINER_IF: &str = "eth0";

fn ip_bin() -> &'static Path {
    Path::new("ip")
}

/// One `ip -batch` run: stops at the first failing line.
async fn ip_batch(lines: &[String]) -> Result<(), NetError> {
    cmd::run(ip_bin(), &["-batch", "-"], Some(lines.join("\n") + "\n"))
        .await
        .map(|_| ())
}

/// Commands creating a bridge holding the subnet's gateway address.
pub fn bridge_lines(bridge: &str, subnet: &Cidr, mtu: u32) -> Vec<String> {
    vec![
        format!("link add name {bridge} mtu {mtu} type bridge"),
        format!(
            "addr add {}/{} brd + dev {bridge}",
            subnet.gateway(),
            subnet.prefix()
        ),
        format!("link set {bridge} up"),
    ]
}

/// Bridge (when `new_bridge`) and veth pair in one go; the container end is configured from
/// inside its namespace (address, link up, default route via the bridge).
#[allow(clippy::too_many_arguments)]
pub async fn create(
    bridge: &str,
    new_bridge: bool,
    subnet: &Cidr,
    host_if: &str,
    init_pid: i32,
    container_ip: Ipv4Addr,
    mtu: u32,
) -> Result<(), NetError> {
    let mut lines = if new_bridge {
        bridge_lines(bridge, subnet, mtu)
    } else {
        Vec::new()
    };
    lines.push(format!("link add {host_if} mtu {mtu} type veth peer name {CONTAINER_IF} mtu {mtu} netns {init_pid}"));
    lines.push(format!("link set {host_if} master {bridge} up"));
    ip_batch(&lines).await?;
    if new_bridge {
        // NetIn from loopback: DNATed packets keep their 127.0.0.1 source until MASQUERADE.
        let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
        tokio::fs::write(&path, "1")
            .await
            .map_err(|e| NetError::Io { path, source: e })?;
    }
    let ns = format!("--net=/proc/{init_pid}/ns/net");
    let inside = [
        format!(
            "addr add {container_ip}/{} brd + dev {CONTAINER_IF}",
            subnet.prefix()
        ),
        format!("link set {CONTAINER_IF} up"),
        format!("route add default via {}", subnet.gateway()),
    ];
    cmd::run(
        Path::new("nsenter"),
        &[&ns, "ip", "-batch", "-"],
        Some(inside.join("\n") + "\n"),
    )
    .await
    .map(|_| ())
}

/// Delete a link; a link that is already gone (the container's namespace took the veth with it)
/// is fine.
pub async fn delete(name: &str) -> Result<(), NetError> {
    if !exists(name) {
        return Ok(());
    }
    match cmd::run(ip_bin(), &["link", "del", name], None).await {
        Err(_) if !exists(name) => Ok(()),
        r => r.map(|_| ()),
    }
}

pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Links whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Shape traffic towards the container with a token bucket on the host end's egress. (The
/// other direction would need tc actions — police, or mirred to an ifb — and this kernel has
/// no act_police.) Rates are bytes per second, bursts bytes.
pub async fn limit_bandwidth(host_if: &str, rate: u64, burst: u64) -> Result<(), NetError> {
    let rate = rate.to_string() + "bps";
    let burst = burst.to_string();
    let args = [
        "qdisc", "add", "dev", host_if, "root", "tbf", "rate", &rate, "burst", &burst, "latency",
        "25ms",
    ];
    cmd::run(Path::new("tc"), &args, None).await.map(|_| ())
}

/// (rx, tx) bytes of a link, as the host sees it.
pub fn counters(name: &str) -> Option<(u64, u64)> {
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/class/net/{name}/statistics/{f}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((read("rx_bytes")?, read("tx_bytes")?))
}

/// MTU of the interface carrying the default route, capped at 1500 (1500 if unknown).
pub fn default_mtu() -> u32 {
    let iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines().skip(1).find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
            })
        });
    iface
        .and_then(|i| std::fs::read_to_string(format!("/sys/class/net/{i}/mtu")).ok())
        .and_then(|m| m.trim().parse::<u32>().ok())
        .map(|m| m.min(1500))
        .unwrap_or(1500)
}

/// The host's address towards the default route (no packet is sent), loopback if none.
pub fn default_external_ip() -> Ipv4Addr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("203.0.113.1:9")?;
            s.local_addr()
        })
        .ok()
        .and_then(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::LOCALHOST)
}
