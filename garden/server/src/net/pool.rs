//! Address and port bookkeeping: which subnets and container IPs are taken, which host ports
//! are handed out. Pure data, no kernel calls, so every rule of the spec is unit-tested here.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::NetError;

/// An IPv4 network, always stored with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: u32,
    prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, NetError> {
        if prefix > 32 {
            return Err(NetError::Invalid(format!(
                "invalid prefix length /{prefix} for {addr}"
            )));
        }
        Ok(Cidr {
            network: u32::from(addr) & mask(prefix),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Number of addresses, network and broadcast included.
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network | !mask(self.prefix))
    }

    /// The bridge address: first host address, as in Guardian.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network.wrapping_add(1))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.network
    }

    /// Every address of `other` is in `self`.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        self.prefix <= other.prefix && self.contains(other.network())
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        self.network & mask(p) == other.network & mask(p)
    }

    /// Network address as 8 hex digits, for interface and chain names.
    pub fn hex(&self) -> String {
        format!("{:08x}", self.network)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = NetError;

    /// `a.b.c.d/n`; a bare address is a /32.
    fn from_str(s: &str) -> Result<Cidr, NetError> {
        let (ip, prefix) = parse_addr(s)?;
        Cidr::new(ip, prefix.unwrap_or(32))
    }
}

/// `a.b.c.d[/n]` into the address (host bits kept) and the prefix if given.
fn parse_addr(s: &str) -> Result<(Ipv4Addr, Option<u8>), NetError> {
    let bad = || NetError::Invalid(format!("invalid network {s:?}: want a.b.c.d or a.b.c.d/n"));
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
        None => (s, None),
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    if prefix.is_some_and(|p| p > 32) {
        return Err(bad());
    }
    Ok((ip, prefix))
}

/// A container's place in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Cidr,
    pub container_ip: Ipv4Addr,
}

impl Lease {
    pub fn host_ip(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }
}

/// Subnets in use and the container IPs taken in each. The dynamic pool is carved into /30s;
/// static subnets (from a create spec) live outside it.
#[derive(Debug)]
pub struct IpPool {
    dynamic: Cidr,
    subnets: BTreeMap<Cidr, BTreeSet<u32>>,
    /// IPs held across all subnets (what `subnets` holds, counted as it changes).
    addresses: u64,
    /// Every /30 of the dynamic range below this index is taken: the search for the lowest
    /// free one starts here instead of at the range's start (it walked every container's).
    lowest_free: u32,
}

impl IpPool {
    pub fn new(dynamic: Cidr) -> Result<IpPool, NetError> {
        if dynamic.prefix > 30 {
            return Err(NetError::Invalid(format!(
                "network pool {dynamic} is smaller than a /30"
            )));
        }
        let pool = IpPool {
            dynamic,
            subnets: BTreeMap::new(),
            addresses: 0,
            lowest_free: 0,
        };
        pool.publish();
        Ok(pool)
    }

    /// How many /30 subnets the dynamic pool holds.
    pub fn capacity(&self) -> u64 {
        1u64 << (30 - self.dynamic.prefix)
    }

    /// Allocate for a create spec's `network`: empty = the next free /30 of the pool;
    /// `x.x.x.0/n` = the next free IP of that static subnet; `x.x.x.y[/n]` = exactly that IP
    /// (a bare address means a /30).
    pub fn acquire(&mut self, request: &str) -> Result<Lease, NetError> {
        let lease = self.acquire_unpublished(request);
        self.publish();
        lease
    }

    fn acquire_unpublished(&mut self, request: &str) -> Result<Lease, NetError> {
        if request.is_empty() {
            return self.acquire_dynamic();
        }
        let (ip, prefix) = parse_addr(request)?;
        let subnet = Cidr::new(ip, prefix.unwrap_or(30))?;
        if subnet.prefix > 30 {
            return Err(NetError::Invalid(format!(
                "subnet {subnet} is too small for a container (at most /30)"
            )));
        }
        if subnet.overlaps(&self.dynamic) {
            return Err(NetError::Invalid(format!(
                "the requested subnet ({subnet}) overlaps the dynamic allocation range ({})",
                self.dynamic
            )));
        }
        if let Some(other) = self
            .subnets
            .keys()
            .find(|s| s.overlaps(&subnet) && **s != subnet)
        {
            return Err(NetError::Invalid(format!(
                "the requested subnet ({subnet}) overlaps an existing subnet ({other})"
            )));
        }
        let taken = self.subnets.get(&subnet);
        let first = u32::from(subnet.gateway()) + 1;
        let last = u32::from(subnet.broadcast()) - 1;
        let ip = if prefix.is_some() && u32::from(ip) == subnet.network {
            (first..=last)
                .find(|c| !taken.is_some_and(|t| t.contains(c)))
                .ok_or_else(|| NetError::Exhausted(format!("no free IP left in subnet {subnet}")))?
        } else {
            let c = u32::from(ip);
            if c == subnet.network
                || c == u32::from(subnet.gateway())
                || c == u32::from(subnet.broadcast())
            {
                return Err(NetError::Invalid(format!(
                    "the requested IP ({ip}) is the network, gateway or broadcast address of {subnet}"
                )));
            }
            if taken.is_some_and(|t| t.contains(&c)) {
                return Err(NetError::Invalid(format!(
                    "the requested IP ({ip}) is already allocated"
                )));
            }
            c
        };
        self.take(subnet, ip);
        Ok(Lease {
            subnet,
            container_ip: Ipv4Addr::from(ip),
        })
    }

    fn acquire_dynamic(&mut self) -> Result<Lease, NetError> {
        let base = self.dynamic.network;
        for i in self.lowest_free..self.capacity() as u32 {
            let subnet = Cidr {
                network: base + i * 4,
                prefix: 30,
            };
            if !self.subnets.contains_key(&subnet) {
                self.lowest_free = i + 1;
                let ip = subnet.network + 2;
                self.take(subnet, ip);
                return Ok(Lease {
                    subnet,
                    container_ip: Ipv4Addr::from(ip),
                });
            }
        }
        Err(NetError::Exhausted(
            "insufficient subnets remaining in the pool".into(),
        ))
    }

    /// Take exactly `lease` (a container kept from a previous run).
    pub fn claim(&mut self, lease: &Lease) -> Result<(), NetError> {
        let c = u32::from(lease.container_ip);
        if !lease.subnet.contains(lease.container_ip)
            || c == lease.subnet.network
            || c == u32::from(lease.subnet.gateway())
            || c == u32::from(lease.subnet.broadcast())
        {
            return Err(NetError::Invalid(format!(
                "{} is not a container address of {}",
                lease.container_ip, lease.subnet
            )));
        }
        if let Some(other) = self
            .subnets
            .keys()
            .find(|s| s.overlaps(&lease.subnet) && **s != lease.subnet)
        {
            return Err(NetError::Invalid(format!(
                "subnet {} overlaps {other}",
                lease.subnet
            )));
        }
        if !self.take(lease.subnet, c) {
            return Err(NetError::Invalid(format!(
                "the IP {} is already allocated",
                lease.container_ip
            )));
        }
        self.publish();
        Ok(())
    }

    /// Record `ip` as held in `subnet`; false if it already was.
    fn take(&mut self, subnet: Cidr, ip: u32) -> bool {
        let new = self.subnets.entry(subnet).or_default().insert(ip);
        if new {
            self.addresses += 1;
        }
        new
    }

    /// Give the IP back. True when its subnet is now empty (its bridge can go).
    pub fn release(&mut self, lease: &Lease) -> bool {
        let Some(ips) = self.subnets.get_mut(&lease.subnet) else {
            return true;
        };
        if ips.remove(&u32::from(lease.container_ip)) {
            self.addresses -= 1;
        }
        let empty = ips.is_empty();
        if empty {
            self.subnets.remove(&lease.subnet);
            if self.dynamic.contains_cidr(&lease.subnet) && lease.subnet.prefix == 30 {
                let i = (lease.subnet.network - self.dynamic.network) / 4;
                self.lowest_free = self.lowest_free.min(i);
            }
        }
        self.publish();
        empty
    }

    /// Report size and use to the metrics, after every change.
    fn publish(&self) {
        crate::telemetry::metrics().address_pool(self.capacity(), self.addresses);
    }

    /// Whether anybody still holds an IP in `subnet`.
    pub fn in_use(&self, subnet: &Cidr) -> bool {
        self.subnets.contains_key(subnet)
    }
}

/// Host ports for NetIn: handed out in order, returned to the back of the queue.
#[derive(Debug)]
pub struct PortPool {
    start: u32,
    end: u32,
    free: VecDeque<u32>,
    taken: HashSet<u32>,
}

impl PortPool {
    pub fn new(start: u32, size: u32) -> Result<PortPool, NetError> {
        let end = start + size;
        if start == 0 || end > 65536 {
            return Err(NetError::Invalid(format!(
                "port pool {start}+{size} does not fit in 1..65535"
            )));
        }
        let pool = PortPool {
            start,
            end,
            free: (start..end).collect(),
            taken: HashSet::new(),
        };
        pool.publish();
        Ok(pool)
    }

    pub fn acquire(&mut self) -> Result<u32, NetError> {
        let p = self
            .free
            .pop_front()
            .ok_or_else(|| NetError::Exhausted("port pool is exhausted".into()))?;
        self.taken.insert(p);
        self.publish();
        Ok(p)
    }

    /// The next free port that no host service listens on (`busy`); busy ones go to the back
    /// of the queue, so they are tried again later.
    pub fn acquire_free(&mut self, busy: &HashSet<u32>) -> Result<u32, NetError> {
        for _ in 0..self.free.len() {
            let p = self.acquire()?;
            if !busy.contains(&p) {
                return Ok(p);
            }
            self.release(p);
        }
        Err(NetError::Exhausted("port pool is exhausted".into()))
    }

    /// Whether `port` is one of the pool's.
    pub fn contains(&self, port: u32) -> bool {
        (self.start..self.end).contains(&port)
    }

    /// The pool as `first-last`, for messages.
    pub fn range(&self) -> String {
        format!("{}-{}", self.start, self.end - 1)
    }

    fn publish(&self) {
        let size = u64::from(self.end - self.start);
        crate::telemetry::metrics().port_pool(size, self.taken.len() as u64);
    }

    /// Take a specific port (a NetIn with an explicit host port).
    pub fn claim(&mut self, port: u32) -> Result<(), NetError> {
        if port == 0 || port > 65535 {
            return Err(NetError::Invalid(format!("invalid host port {port}")));
        }
        if !self.taken.insert(port) {
            return Err(NetError::Invalid(format!(
                "port {port} is already acquired"
            )));
        }
        if (self.start..self.end).contains(&port) {
            self.free.retain(|p| *p != port);
        }
        self.publish();
        Ok(())
    }

    pub fn release(&mut self, port: u32) {
        if self.taken.remove(&port) && (self.start..self.end).contains(&port) {
            self.free.push_back(port);
        }
        self.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> IpPool {
        IpPool::new("10.254.0.0/22".parse().unwrap()).unwrap()
    }

    #[test]
    fn dynamic_subnets_are_distinct_30s_and_reused() {
        let mut p = pool();
        assert_eq!(p.capacity(), 256);
        let a = p.acquire("").unwrap();
        let b = p.acquire("").unwrap();
        assert_eq!(a.subnet.to_string(), "10.254.0.0/30");
        assert_eq!(
            (a.host_ip(), a.container_ip),
            ("10.254.0.1".parse().unwrap(), "10.254.0.2".parse().unwrap())
        );
        assert_eq!(b.container_ip, "10.254.0.6".parse::<Ipv4Addr>().unwrap());
        assert!(p.release(&a));
        assert_eq!(p.acquire("").unwrap(), a);
        // Always the lowest free /30, whatever order they come back in; claims (kept
        // containers) are skipped.
        let c = p.acquire("").unwrap();
        let d = p.acquire("").unwrap();
        p.release(&d);
        p.release(&b);
        assert_eq!(p.acquire("").unwrap(), b);
        p.claim(&d).unwrap();
        let e = p.acquire("").unwrap();
        assert_eq!(e.container_ip, "10.254.0.18".parse::<Ipv4Addr>().unwrap());
        assert!(c.container_ip < d.container_ip && d.container_ip < e.container_ip);
        for _ in 0..251 {
            p.acquire("").unwrap();
        }
        assert!(p.acquire("").is_err(), "full");
        p.release(&c);
        assert_eq!(p.acquire("").unwrap(), c);
    }

    #[test]
    fn addresses_in_use_are_counted_as_they_change() {
        let mut p = pool();
        let a = p.acquire("").unwrap();
        let s = p.acquire("10.1.2.0/29").unwrap();
        let t = p.acquire("10.1.2.0/29").unwrap();
        assert_eq!(p.addresses, 3);
        assert!(p.claim(&a).is_err(), "already held");
        assert_eq!(p.addresses, 3);
        assert!(!p.release(&s));
        assert!(p.release(&t));
        assert!(p.release(&t), "a second release changes nothing");
        assert_eq!(p.addresses, 1);
        p.claim(&s).unwrap();
        assert_eq!(p.addresses, 2);
    }

    #[test]
    fn cidr_containment() {
        let pool: Cidr = "10.254.0.0/22".parse().unwrap();
        let inside: Cidr = "10.254.3.4/30".parse().unwrap();
        let wider: Cidr = "10.254.0.0/16".parse().unwrap();
        let outside: Cidr = "10.253.1.0/24".parse().unwrap();
        assert!(pool.contains_cidr(&inside));
        assert!(pool.contains_cidr(&pool));
        assert!(!pool.contains_cidr(&wider), "overlaps but is not inside");
        assert!(!pool.contains_cidr(&outside));
    }

    #[test]
    fn pool_exhaustion_is_an_error() {
        let mut p = IpPool::new("10.1.0.0/29".parse().unwrap()).unwrap();
        p.acquire("").unwrap();
        p.acquire("").unwrap();
        assert!(matches!(p.acquire(""), Err(NetError::Exhausted(_))));
    }

    #[test]
    fn static_subnet_hands_out_next_free_ip_and_shares_the_subnet() {
        let mut p = pool();
        let a = p.acquire("10.253.1.0/24").unwrap();
        let b = p.acquire("10.253.1.0/24").unwrap();
        assert_eq!(a.container_ip, "10.253.1.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.container_ip, "10.253.1.3".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.host_ip(), "10.253.1.1".parse::<Ipv4Addr>().unwrap());
        assert!(!p.release(&a));
        assert!(p.in_use(&b.subnet));
        assert!(p.release(&b));
        assert!(!p.in_use(&b.subnet));
    }

    #[test]
    fn static_ip_rules() {
        let mut p = pool();
        let a = p.acquire("10.253.2.9/24").unwrap();
        assert_eq!(a.container_ip, "10.253.2.9".parse::<Ipv4Addr>().unwrap());
        assert!(p.acquire("10.253.2.9/24").is_err(), "taken");
        assert!(p.acquire("10.253.2.1/24").is_err(), "gateway");
        assert!(p.acquire("10.253.2.255/24").is_err(), "broadcast");
        assert!(p.acquire("10.253.2.0/25").is_err(), "partial overlap");
        assert!(
            p.acquire("10.254.1.0/24").is_err(),
            "overlaps the dynamic pool"
        );
        let bare = p.acquire("10.253.3.6").unwrap();
        assert_eq!(bare.subnet.to_string(), "10.253.3.4/30");
        assert!(p.acquire("nonsense").is_err());
        assert!(p.acquire("10.0.0.0/31").is_err());
    }

    #[test]
    fn claimed_leases_are_not_handed_out_again() {
        let mut p = pool();
        let kept = Lease {
            subnet: "10.254.0.0/30".parse().unwrap(),
            container_ip: "10.254.0.2".parse().unwrap(),
        };
        p.claim(&kept).unwrap();
        assert!(p.claim(&kept).is_err(), "claimed twice");
        assert_ne!(p.acquire("").unwrap().subnet, kept.subnet);
        let gateway = Lease {
            container_ip: "10.254.0.5".parse().unwrap(),
            subnet: "10.254.0.4/30".parse().unwrap(),
        };
        assert!(p.claim(&gateway).is_err(), "gateway address");
    }

    #[test]
    fn ports_in_order_returned_to_the_back() {
        let mut p = PortPool::new(61001, 3).unwrap();
        assert_eq!(p.acquire().unwrap(), 61001);
        assert_eq!(p.acquire().unwrap(), 61002);
        p.release(61001);
        assert_eq!(p.acquire().unwrap(), 61003);
        assert_eq!(p.acquire().unwrap(), 61001);
        assert!(
            matches!(p.acquire(), Err(NetError::Exhausted(m)) if m == "port pool is exhausted")
        );
    }

    #[test]
    fn claimed_ports_are_exclusive() {
        let mut p = PortPool::new(61001, 3).unwrap();
        p.claim(61002).unwrap();
        assert!(p.claim(61002).is_err());
        assert_eq!(p.acquire().unwrap(), 61001);
        assert_eq!(p.acquire().unwrap(), 61003);
        p.claim(8080).unwrap();
        p.release(8080);
        p.claim(8080).unwrap();
    }
}
