//! Links on the host: a veth pair per container (the peer created directly in the container's
//! network namespace as `eth0`), a bridge per shared subnet, and tc shaping on the host end.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
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
        gateway_line(bridge, subnet),
        format!("link set {bridge} up"),
    ]
}

/// The command putting the subnet's gateway address on `dev`.
fn gateway_line(dev: &str, subnet: &Cidr) -> String {
    format!(
        "addr add {}/{} brd + dev {dev}",
        subnet.gateway(),
        subnet.prefix()
    )
}

/// A path other processes (ip, nsenter) can open to reach the network namespace `netns`
/// gardend holds: no pid of the container is ever named, so none can have been reused.
pub fn netns_path(netns: BorrowedFd<'_>) -> String {
    format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd())
}

/// The command creating a container's veth pair, the container end straight in the namespace
/// `netns` (a path, see [`netns_path`]) as [`CONTAINER_IF`].
fn veth_line(host_if: &str, netns: &str, mtu: u32) -> String {
    format!(
        "link add {host_if} mtu {mtu} type veth peer name {CONTAINER_IF} mtu {mtu} netns {netns}"
    )
}

/// NetIn from loopback: DNATed packets keep their 127.0.0.1 source until MASQUERADE, so the
/// interface holding the gateway address must route them.
async fn allow_route_localnet(dev: &str) -> Result<(), NetError> {
    write_host_conf(dev, "route_localnet", "1")
}

/// Strict reverse-path filtering on the interface containers' traffic enters the host by: a
/// packet whose source address would not be routed back out of that interface (a forged
/// neighbour's or outside address) is dropped.
async fn strict_source_check(dev: &str) -> Result<(), NetError> {
    write_host_conf(dev, "rp_filter", "1")
}

/// The address family whose per-interface settings [`write_host_conf`] writes.
#[derive(Clone, Copy)]
enum Family {
    Ipv4,
    Ipv6,
}

/// Write the host's `net.<family>.conf.<dev>.<key>`, relative to a descriptor of the host's
/// `/proc/sys/net/<family>/conf` kept open: every network namespace that looked up
/// `/proc/sys/net` leaves a dentry of that name in one hash chain, so a lookup by path walks
/// one entry per container (the largest kernel cost in `perf` at 5,000 containers).
fn write_host_conf(dev: &str, key: &str, value: &str) -> Result<(), NetError> {
    write_conf(Family::Ipv4, dev, key, value).map_err(|source| NetError::Io {
        path: format!("/proc/sys/net/ipv4/conf/{dev}/{key}"),
        source,
    })
}

/// The host's `/proc/sys/net/<family>/conf`, opened once. Opened by a runtime thread, which
/// lives in the host's network namespace (only the short-lived `netns-config` threads enter
/// containers').
fn conf_dir(family: Family) -> &'static std::io::Result<OwnedFd> {
    type Dir = std::sync::OnceLock<std::io::Result<OwnedFd>>;
    static IPV4: Dir = std::sync::OnceLock::new();
    static IPV6: Dir = std::sync::OnceLock::new();
    let (dir, name) = match family {
        Family::Ipv4 => (&IPV4, "ipv4"),
        Family::Ipv6 => (&IPV6, "ipv6"),
    };
    dir.get_or_init(|| {
        nix::fcntl::open(
            format!("/proc/sys/net/{name}/conf").as_str(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)
    })
}

fn write_conf(family: Family, dev: &str, key: &str, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let conf = conf_dir(family)
        .as_ref()
        .map_err(|e| std::io::Error::new(e.kind(), e.to_string()))?;
    let fd = nix::fcntl::openat(
        conf,
        format!("{dev}/{key}").as_str(),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    std::fs::File::from(fd).write_all(value.as_bytes())
}

/// No IPv6 at all on the host end of a container's veth (set before it comes up): gardend's
/// networking is IPv4, and with IPv6 on, each host end got multicast routes, MLD reports and
/// the container's neighbour probes, all handled in the host's one IPv6 table where every
/// lookup walked an entry per container (`__find_rr_leaf`, `fib6_add_rt2node`,
/// `fib6_ifdown`: about 10% of the samples in `perf` at 3,000 containers, even with no
/// link-local address). Packets the container sends over IPv6 are dropped on arrival.
fn no_ipv6(dev: &str) -> std::io::Result<()> {
    // A kernel without IPv6 (`ipv6.disable=1`) has no /proc/sys/net/ipv6: nothing to do. (Its
    // absence is learnt once, not by a path lookup per create.)
    if conf_dir(Family::Ipv6)
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        return Ok(());
    }
    write_conf(Family::Ipv6, dev, "disable_ipv6", "1")
}

/// Bridge (when `new_bridge`) and veth pair in one `ip` run; the container end goes straight
/// into the namespace `netns` as [`CONTAINER_IF`].
pub async fn create_host(
    bridge: &str,
    new_bridge: bool,
    subnet: &Cidr,
    host_if: &str,
    netns: BorrowedFd<'_>,
    mtu: u32,
) -> Result<(), NetError> {
    let mut lines = if new_bridge {
        bridge_lines(bridge, subnet, mtu)
    } else {
        Vec::new()
    };
    lines.push(veth_line(host_if, &netns_path(netns), mtu));
    lines.push(format!("link set {host_if} master {bridge} up"));
    ip_batch(&lines).await?;
    if new_bridge {
        allow_route_localnet(bridge).await?;
        strict_source_check(bridge).await?;
    }
    Ok(())
}

/// A routed /30's veth pair, over netlink (no process to spawn on the hot path): the host
/// end holds the gateway address.
pub async fn create_routed(
    host_if: &str,
    subnet: &Cidr,
    netns: BorrowedFd<'_>,
    mtu: u32,
) -> Result<(), NetError> {
    let path = netns_path(netns);
    let netns = netns.try_clone_to_owned().map_err(|e| NetError::Io {
        path: path.clone(),
        source: e,
    })?;
    let (host, subnet_) = (host_if.to_string(), *subnet);
    let made =
        tokio::task::spawn_blocking(move || -> Result<(), (&'static str, std::io::Error)> {
            let mut nl = super::netlink::Rtnl::open().map_err(|e| ("netlink socket", e))?;
            nl.add_veth(&host, CONTAINER_IF, mtu, netns.as_fd())
                .map_err(|e| ("add the veth pair", e))?;
            let index = super::netlink::index(&host).map_err(|e| ("find the host end", e))?;
            nl.add_address(
                index,
                subnet_.gateway(),
                subnet_.prefix(),
                subnet_.broadcast(),
            )
            .map_err(|e| ("add the gateway address", e))?;
            no_ipv6(&host).map_err(|e| ("turn off IPv6 on the host end", e))?;
            nl.set_up(index).map_err(|e| ("set the host end up", e))
        })
        .await
        .map_err(|e| NetError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    made.map_err(|(what, source)| NetError::Io {
        path: format!("{host_if} ({what}, peer in {path})"),
        source,
    })?;
    allow_route_localnet(host_if).await?;
    strict_source_check(host_if).await
}

/// Address, link up and default route via the bridge, set from inside the container's
/// namespace by a short-lived thread (namespaces are per thread), with plain ioctls: no process
/// to spawn.
pub async fn configure_inside(
    netns: BorrowedFd<'_>,
    container_ip: Ipv4Addr,
    subnet: &Cidr,
) -> Result<(), NetError> {
    let path = netns_path(netns);
    let netns = netns.try_clone_to_owned().map_err(|e| NetError::Io {
        path: path.clone(),
        source: e,
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let subnet = *subnet;
    std::thread::Builder::new()
        .name("netns-config".into())
        .spawn(move || {
            let _ = tx.send(inside::configure(netns, container_ip, &subnet));
        })
        .map_err(|e| NetError::Io {
            path: "spawn netns thread".into(),
            source: e,
        })?;
    rx.await
        .map_err(|_| NetError::Io {
            path: path.clone(),
            source: std::io::Error::other("netns thread died"),
        })?
        .map_err(|(what, source)| NetError::Io {
            path: format!("{path} ({what})"),
            source,
        })
}

mod inside {
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, OwnedFd};

    use super::{Cidr, CONTAINER_IF};

    type Result = std::result::Result<(), (&'static str, std::io::Error)>;

    /// `struct rtentry` from <net/route.h> (not in the libc crate for glibc targets).
    #[repr(C)]
    struct RtEntry {
        rt_pad1: libc::c_ulong,
        rt_dst: libc::sockaddr,
        rt_gateway: libc::sockaddr,
        rt_genmask: libc::sockaddr,
        rt_flags: libc::c_ushort,
        rt_pad2: libc::c_short,
        rt_pad3: libc::c_ulong,
        rt_pad4: *mut libc::c_void,
        rt_metric: libc::c_short,
        rt_dev: *mut libc::c_char,
        rt_mtu: libc::c_ulong,
        rt_window: libc::c_ulong,
        rt_irtt: libc::c_ushort,
    }

    fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size; this is how the ioctls take it.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }

    fn ifreq() -> libc::ifreq {
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (i, b) in CONTAINER_IF.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        req
    }

    fn check(what: &'static str, rc: libc::c_int) -> Result {
        if rc < 0 {
            Err((what, std::io::Error::last_os_error()))
        } else {
            Ok(())
        }
    }

    /// Runs on a thread of its own, which it moves into the container's network namespace.
    pub fn configure(ns: OwnedFd, ip: Ipv4Addr, subnet: &Cidr) -> Result {
        // SAFETY: setns on this thread only; the thread ends right after.
        check("setns", unsafe {
            libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET)
        })?;
        // SAFETY: plain socket(2); the fd is owned right away.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check("socket", sock)?;
        // SAFETY: sock is a fresh, valid descriptor that nothing else owns.
        let sock: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(sock) };
        let fd = sock.as_raw_fd();
        let prefix_mask = if subnet.prefix() == 0 {
            0
        } else {
            u32::MAX << (32 - subnet.prefix())
        };
        for (what, request, addr) in [
            ("set address", libc::SIOCSIFADDR, ip),
            (
                "set netmask",
                libc::SIOCSIFNETMASK,
                Ipv4Addr::from(prefix_mask),
            ),
            ("set broadcast", libc::SIOCSIFBRDADDR, subnet.broadcast()),
        ] {
            let mut req = ifreq();
            req.ifr_ifru.ifru_addr = sockaddr(addr);
            // SAFETY: valid socket and a properly initialised ifreq for these requests.
            check(what, unsafe { libc::ioctl(fd, request, &mut req) })?;
        }
        let mut req = ifreq();
        // SAFETY: as above, for SIOCGIFFLAGS / SIOCSIFFLAGS.
        unsafe {
            check("get flags", libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req))?;
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check("link up", libc::ioctl(fd, libc::SIOCSIFFLAGS, &req))?;
        }
        let mut dev = std::ffi::CString::new(CONTAINER_IF)
            .expect("no NUL")
            .into_bytes_with_nul();
        let mut route = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(subnet.gateway()),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr() as *mut libc::c_char,
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: valid socket, rtentry laid out as the kernel expects, `dev` outlives the call.
        check("add default route", unsafe {
            libc::ioctl(fd, libc::SIOCADDRT, &mut route)
        })?;
        // A new namespace's interfaces inherit the host's forwarding=1; a container is an end
        // host and must not route (e.g. a neighbour's traffic it lured with forged ARP
        // replies). Its one interface decides: a socket made on this thread lives in the
        // container's namespace.
        let index = super::super::netlink::index(CONTAINER_IF).map_err(|e| ("find eth0", e))?;
        super::super::netlink::Rtnl::open()
            .and_then(|mut nl| nl.no_ipv4_forwarding(index))
            .map_err(|e| ("disable forwarding", e))
    }
}

/// Delete links in one `ip` run; links already gone are fine (a veth goes away with the
/// container's namespace on its own).
pub async fn delete_all(names: &[&str]) -> Result<(), NetError> {
    let present: Vec<&str> = names.iter().copied().filter(|n| exists(n)).collect();
    if present.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = present.iter().map(|n| format!("link del {n}")).collect();
    let result = cmd::run(
        ip_bin(),
        &["-force", "-batch", "-"],
        Some(lines.join("\n") + "\n"),
    )
    .await;
    match result {
        Err(e) if present.iter().any(|n| exists(n)) => Err(e),
        _ => Ok(()),
    }
}

/// Wait up to `patience` for a veth to vanish with its network namespace, then delete it.
pub async fn delete_after(name: &str, patience: std::time::Duration) -> Result<(), NetError> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut pause = std::time::Duration::from_millis(1);
    while exists(name) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                link = name,
                "still there after the container's namespace went; deleting it"
            );
            return delete(name).await;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Delete a link; a link that is already gone (the container's namespace took the veth with it)
/// is fine.
pub async fn delete(name: &str) -> Result<(), NetError> {
    if !exists(name) {
        return Ok(());
    }
    let n = name.to_string();
    let deleted = tokio::task::spawn_blocking(move || {
        super::netlink::Rtnl::open().and_then(|mut nl| nl.delete_link(&n))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r);
    match deleted {
        Err(_) if !exists(name) => Ok(()),
        Err(source) => Err(NetError::Io {
            path: format!("delete link {name}"),
            source,
        }),
        Ok(()) => Ok(()),
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

/// Shape both directions with a token bucket filter: traffic towards the container on the
/// host end's egress, and traffic from the container on its own `eth0`'s egress, set from
/// inside its network namespace (where an unprivileged container lacks CAP_NET_ADMIN to undo
/// it, and where it goes away with the namespace). Shaping the container's traffic on the
/// host side instead would need tc actions (police, or mirred into an ifb device that costs a
/// netdev per container); this kernel has no act_police. Rates are bytes per second, bursts
/// bytes.
pub async fn limit_bandwidth(
    host_if: &str,
    netns: BorrowedFd<'_>,
    rate: u64,
    burst: u64,
) -> Result<(), NetError> {
    // Interface names and numbers hold no spaces.
    let tbf = |dev: &str| {
        format!("qdisc add dev {dev} root tbf rate {rate}bps burst {burst} latency 25ms")
    };
    let host = tbf(host_if);
    let inside = format!("--net={} tc {}", netns_path(netns), tbf(CONTAINER_IF));
    let host: Vec<&str> = host.split(' ').collect();
    let inside: Vec<&str> = inside.split(' ').collect();
    let (towards, from) = tokio::join!(
        cmd::run(Path::new("tc"), &host, None),
        cmd::run(Path::new("nsenter"), &inside, None)
    );
    towards?;
    from.map(|_| ())
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
