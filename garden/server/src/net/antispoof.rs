//! Source checks for containers on a shared bridge. Their frames stay at layer 2, out of
//! reach of rp_filter and of iptables, so ebtables (the `iptables` package's nft flavour)
//! binds each bridge port to its container's address: IPv4 packets and ARP messages entering
//! the bridge from a port with another sender address (a neighbour's, to poison an ARP cache
//! or to forge its traffic) are dropped, both on their way to neighbours (FORWARD) and to the
//! host (INPUT).

use std::net::Ipv4Addr;
use std::path::Path;

use super::{cmd, NetError};

const CHAINS: [&str; 2] = ["FORWARD", "INPUT"];

fn ebtables() -> &'static Path {
    Path::new("ebtables")
}

/// The rule specs binding `port` to `ip`.
fn rules(port: &str, ip: Ipv4Addr) -> [String; 2] {
    [
        format!("-i {port} -p IPv4 --ip-src ! {ip} -j DROP"),
        format!("-i {port} -p ARP --arp-ip-src ! {ip} -j DROP"),
    ]
}

/// Bind `port` (the host end of a container's veth) to the container's address.
pub async fn bind(port: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    for chain in CHAINS {
        for rule in rules(port, ip) {
            let mut args = vec!["-A", chain];
            args.extend(rule.split(' '));
            cmd::run(ebtables(), &args, None).await?;
        }
    }
    Ok(())
}

/// Remove what [`bind`] added; rules already gone are fine.
pub async fn unbind(port: &str, ip: Ipv4Addr) {
    for chain in CHAINS {
        for rule in rules(port, ip) {
            let mut args = vec!["-D", chain];
            args.extend(rule.split(' '));
            if let Err(e) = cmd::run(ebtables(), &args, None).await {
                tracing::debug!(port, error = %e, "remove anti-spoofing rule");
            }
        }
    }
}

/// Remove the rules of ports whose name starts with `prefix` (a previous run's).
pub async fn remove_all(prefix: &str) {
    for chain in CHAINS {
        let Ok(listing) = cmd::run(ebtables(), &["-L", chain], None).await else {
            return;
        };
        for line in listing
            .lines()
            .filter(|l| l.contains(&format!("-i {prefix}")))
        {
            let mut args = vec!["-D", chain];
            args.extend(line.split_whitespace());
            if let Err(e) = cmd::run(ebtables(), &args, None).await {
                tracing::warn!(rule = line, error = %e, "remove a previous run's anti-spoofing rule");
            }
        }
    }
}
