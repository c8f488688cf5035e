//! The host's own IPv4 networks (interface addresses, routes, link networks), so a static
//! `network` at create cannot put a host address on a container bridge or shadow a route.

use std::process::Command;

use super::pool::Cidr;

/// What on the host `subnet` would clash with, if anything. Links whose name starts with
/// `own_prefix` are this gardend's (bridges of subnets it already serves) and do not count.
pub fn conflict(subnet: &Cidr, own_prefix: &str) -> Option<String> {
    let addrs = ip(&["-4", "-o", "addr", "show"]);
    let routes = ip(&["-4", "-o", "route", "show", "table", "all"]);
    let nets = addresses(&addrs, own_prefix).chain(route_networks(&routes, own_prefix));
    for (net, what) in nets {
        if net.overlaps(subnet) {
            return Some(what);
        }
    }
    None
}

fn ip(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `2: eth0    inet 10.0.2.15/24 brd ...`: each address as a /32 and its link network.
fn addresses<'a>(text: &'a str, own_prefix: &'a str) -> impl Iterator<Item = (Cidr, String)> + 'a {
    text.lines().flat_map(move |line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let mut out = Vec::new();
        if f.len() >= 4 && f[2] == "inet" && !f[1].starts_with(own_prefix) {
            let dev = f[1].trim_end_matches(':');
            if let Ok(net) = f[3].parse::<Cidr>() {
                out.push((net, format!("host network {net} on {dev}")));
            }
            if let Some((ip, _)) = f[3].split_once('/') {
                if let Ok(addr) = ip.parse::<Cidr>() {
                    out.push((addr, format!("host address {ip} on {dev}")));
                }
            }
        }
        out
    })
}

/// Route destinations (`10.0.2.0/24 dev eth0 ...`, `local 10.0.2.15 dev eth0 table local`)
/// and gateways (`default via 10.0.2.2 ...`); the default route itself overlaps everything and
/// is skipped.
fn route_networks<'a>(
    text: &'a str,
    own_prefix: &'a str,
) -> impl Iterator<Item = (Cidr, String)> + 'a {
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    text.lines().flat_map(move |line| {
        let mut f: Vec<&str> = line.split_whitespace().collect();
        if f.first().is_some_and(|t| TYPES.contains(t)) {
            f.remove(0);
        }
        let after = |key: &str| f.iter().position(|w| *w == key).and_then(|i| f.get(i + 1));
        let mut out = Vec::new();
        if after("dev").is_some_and(|d| d.starts_with(own_prefix)) {
            return out;
        }
        if let Some(dest) = f.first().filter(|d| **d != "default") {
            if let Ok(net) = dest.parse::<Cidr>() {
                out.push((net, format!("host route {}", line.trim())));
            }
        }
        if let Some(Ok(gw)) = after("via").map(|g| g.parse::<Cidr>()) {
            out.push((gw, format!("host gateway {gw} ({})", line.trim())));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_routes_and_gateways_but_not_our_own_links() {
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\n2: eth0    inet 10.0.2.15/24 brd 10.0.2.255 scope global eth0\n9: gabcdeb0a0b0c00    inet 10.11.12.1/24 scope global gabcdeb0a0b0c00\n";
        let routes = "default via 192.0.2.1 dev eth0\n198.51.100.0/24 via 10.0.2.3 dev eth0\nlocal 10.0.2.15 dev eth0 table local proto kernel scope host src 10.0.2.15\n10.11.12.0/24 dev gabcdeb0a0b0c00 proto kernel\n";
        let nets: Vec<Cidr> = addresses(addrs, "gabcde")
            .chain(route_networks(routes, "gabcde"))
            .map(|(n, _)| n)
            .collect();
        for want in [
            "127.0.0.0/8",
            "10.0.2.0/24",
            "192.0.2.1/32",
            "198.51.100.0/24",
        ] {
            assert!(nets.contains(&cidr(want)), "{want} in {nets:?}");
        }
        assert!(!nets.iter().any(|n| n.overlaps(&cidr("10.11.12.0/24"))));
        assert!(!nets.iter().any(|n| n.overlaps(&cidr("172.16.0.0/24"))));
    }
}
