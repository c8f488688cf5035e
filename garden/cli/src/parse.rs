//! Parsers for the values people type on the command line: sizes, durations, bind mounts,
//! `key=value` pairs, port and address ranges. Each returns a one-line error that names the
//! offending input, so clap can print it next to the flag.

use std::net::IpAddr;

use garden_api::{
    BindMount, IpRange, PortRange, Protocol, BIND_MOUNT_MODE_RO, BIND_MOUNT_MODE_RW, PROTOCOL_ALL,
    PROTOCOL_ICMP, PROTOCOL_ICMPV6, PROTOCOL_TCP, PROTOCOL_UDP,
};

/// A byte size such as `1048576`, `512K`, `64M`, `1.5G`, `2GiB` (see [`garden_api::units`]).
pub use garden_api::units::parse_size as size;

/// A duration such as `30s`, `5m`, `1h30m`, `500ms` or `2d`; a bare number means seconds.
pub use garden_api::units::parse_duration as duration;

/// `key=value`, split at the first `=`; the key must not be empty, the value may be.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid pair '{s}': empty key")),
        Some((k, v)) => Ok((k.to_string(), v.to_string())),
        None => Err(format!("invalid pair '{s}': expected key=value")),
    }
}

/// An environment entry `NAME=value`. A bare `NAME` takes its value from our own
/// environment, as `docker run -e NAME` does.
pub fn env(s: &str) -> Result<String, String> {
    env_with(s, |name| std::env::var(name).ok())
}

fn env_with(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    match s.split_once('=') {
        Some(("", _)) => Err(format!("invalid environment entry '{s}': empty name")),
        Some(_) => Ok(s.to_string()),
        None if s.is_empty() => Err("invalid environment entry '': expected NAME=value".into()),
        None => match lookup(s) {
            Some(v) => Ok(format!("{s}={v}")),
            None => Err(format!(
                "invalid environment entry '{s}': expected NAME=value ({s} is not set here)"
            )),
        },
    }
}

/// `src:dst[:ro|rw]` with absolute paths; read-only unless `rw` is given.
pub fn bind_mount(s: &str) -> Result<BindMount, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (src, dst, mode) = match parts.as_slice() {
        [src, dst] => (*src, *dst, BIND_MOUNT_MODE_RO),
        [src, dst, "ro"] => (*src, *dst, BIND_MOUNT_MODE_RO),
        [src, dst, "rw"] => (*src, *dst, BIND_MOUNT_MODE_RW),
        [_, _, other] => {
            return Err(format!(
                "invalid bind mount '{s}': mode must be ro or rw, not '{other}'"
            ))
        }
        _ => {
            return Err(format!(
                "invalid bind mount '{s}': expected SRC:DST[:ro|rw]"
            ))
        }
    };
    for (what, p) in [("source", src), ("destination", dst)] {
        if !p.starts_with('/') {
            return Err(format!(
                "invalid bind mount '{s}': {what} '{p}' must be an absolute path"
            ));
        }
    }
    Ok(BindMount {
        src_path: src.into(),
        dst_path: dst.into(),
        mode,
        ..Default::default()
    })
}

/// A NetOut protocol name.
pub fn protocol(s: &str) -> Result<Protocol, String> {
    match s.to_ascii_lowercase().as_str() {
        "all" | "any" => Ok(PROTOCOL_ALL),
        "tcp" => Ok(PROTOCOL_TCP),
        "udp" => Ok(PROTOCOL_UDP),
        "icmp" => Ok(PROTOCOL_ICMP),
        "icmpv6" => Ok(PROTOCOL_ICMPV6),
        _ => Err(format!(
            "invalid protocol '{s}': use all, tcp, udp, icmp or icmpv6"
        )),
    }
}

/// `80` or `8000-9000` (inclusive).
pub fn port_range(s: &str) -> Result<PortRange, String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "invalid port range '{s}': '{p}' is not a port (1-65535)"
            )),
            Ok(n) => Ok(n),
        }
    };
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if start > end {
        return Err(format!("invalid port range '{s}': start is after end"));
    }
    Ok(PortRange { start, end })
}

/// An address range: `10.0.0.1`, `10.0.0.0/8`, `10.0.0.1-10.0.0.9`, or the IPv6 forms.
pub fn ip_range(s: &str) -> Result<IpRange, String> {
    let addr = |a: &str| {
        a.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("invalid network '{s}': '{a}' is not an IP address"))
    };
    let (start, end) = if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (addr(a)?, addr(b)?);
        match (a, b) {
            (IpAddr::V4(x), IpAddr::V4(y)) if x <= y => (a, b),
            (IpAddr::V6(x), IpAddr::V6(y)) if x <= y => (a, b),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                return Err(format!("invalid network '{s}': start is after end"))
            }
            _ => return Err(format!("invalid network '{s}': mixes IPv4 and IPv6")),
        }
    } else if let Some((a, bits)) = s.split_once('/') {
        let base = addr(a)?;
        let bits: u32 = bits
            .parse()
            .map_err(|_| format!("invalid network '{s}': bad prefix length '{bits}'"))?;
        match base {
            IpAddr::V4(v4) => {
                if bits > 32 {
                    return Err(format!(
                        "invalid network '{s}': prefix length must be at most 32"
                    ));
                }
                let host = if bits == 0 {
                    u32::MAX
                } else {
                    (1u32 << (32 - bits)) - 1
                };
                let n = u32::from(v4) & !host;
                (IpAddr::V4(n.into()), IpAddr::V4((n | host).into()))
            }
            IpAddr::V6(v6) => {
                if bits > 128 {
                    return Err(format!(
                        "invalid network '{s}': prefix length must be at most 128"
                    ));
                }
                let host = if bits == 0 {
                    u128::MAX
                } else {
                    (1u128 << (128 - bits)) - 1
                };
                let n = u128::from(v6) & !host;
                (IpAddr::V6(n.into()), IpAddr::V6((n | host).into()))
            }
        }
    } else {
        let a = addr(s)?;
        (a, a)
    };
    Ok(IpRange {
        start: start.to_string(),
        end: end.to_string(),
    })
}

/// Validates a `--target` value early so clap reports it against the flag.
pub fn target(s: &str) -> Result<String, String> {
    garden_client::Address::parse(s).map_err(|e| format!("invalid target '{s}': {e}"))?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_mounts() {
        let m = bind_mount("/host/data:/data").unwrap();
        assert_eq!(
            (m.src_path.as_str(), m.dst_path.as_str(), m.mode),
            ("/host/data", "/data", BIND_MOUNT_MODE_RO)
        );
        assert_eq!(bind_mount("/a:/b:rw").unwrap().mode, BIND_MOUNT_MODE_RW);
        assert_eq!(bind_mount("/a:/b:ro").unwrap().mode, BIND_MOUNT_MODE_RO);
        assert!(bind_mount("/a:/b:rx")
            .unwrap_err()
            .contains("mode must be ro or rw"));
        assert!(bind_mount("/a").unwrap_err().contains("SRC:DST"));
        assert!(bind_mount("rel:/b")
            .unwrap_err()
            .contains("source 'rel' must be an absolute path"));
        assert!(bind_mount("/a:b").unwrap_err().contains("destination"));
        assert!(bind_mount("/a:/b:rw:x").is_err());
    }

    #[test]
    fn filters_and_properties() {
        assert_eq!(key_value("app=web"), Ok(("app".into(), "web".into())));
        assert_eq!(key_value("k=a=b"), Ok(("k".into(), "a=b".into())));
        assert_eq!(key_value("k="), Ok(("k".into(), "".into())));
        assert!(key_value("=v").unwrap_err().contains("empty key"));
        assert!(key_value("novalue")
            .unwrap_err()
            .contains("expected key=value"));
    }

    #[test]
    fn env_entries() {
        let lookup = |n: &str| (n == "HOME").then(|| "/root".to_string());
        assert_eq!(env_with("A=1", lookup), Ok("A=1".into()));
        assert_eq!(env_with("A=", lookup), Ok("A=".into()));
        assert_eq!(env_with("HOME", lookup), Ok("HOME=/root".into()));
        assert!(env_with("NOPE", lookup)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(env_with("=x", lookup).is_err());
        assert!(env_with("", lookup).is_err());
    }

    #[test]
    fn ports() {
        assert_eq!(port_range("80"), Ok(PortRange { start: 80, end: 80 }));
        assert_eq!(
            port_range("8000-9000"),
            Ok(PortRange {
                start: 8000,
                end: 9000
            })
        );
        assert!(port_range("9000-8000")
            .unwrap_err()
            .contains("start is after end"));
        assert!(port_range("0").is_err());
        assert!(port_range("70000").is_err());
        assert!(port_range("http").is_err());
    }

    #[test]
    fn networks() {
        let r = |s| ip_range(s).map(|r| (r.start, r.end));
        assert_eq!(
            r("10.0.0.0/8"),
            Ok(("10.0.0.0".into(), "10.255.255.255".into()))
        );
        assert_eq!(
            r("10.1.2.3/24"),
            Ok(("10.1.2.0".into(), "10.1.2.255".into()))
        );
        assert_eq!(
            r("0.0.0.0/0"),
            Ok(("0.0.0.0".into(), "255.255.255.255".into()))
        );
        assert_eq!(r("1.2.3.4"), Ok(("1.2.3.4".into(), "1.2.3.4".into())));
        assert_eq!(
            r("1.2.3.4-1.2.3.9"),
            Ok(("1.2.3.4".into(), "1.2.3.9".into()))
        );
        assert_eq!(
            r("fd00::/64"),
            Ok(("fd00::".into(), "fd00::ffff:ffff:ffff:ffff".into()))
        );
        assert!(r("1.2.3.9-1.2.3.4")
            .unwrap_err()
            .contains("start is after end"));
        assert!(r("1.2.3.4-::1").unwrap_err().contains("mixes"));
        assert!(r("10.0.0.0/33").is_err());
        assert!(r("example.com").is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!(protocol("TCP"), Ok(PROTOCOL_TCP));
        assert_eq!(protocol("icmpv6"), Ok(PROTOCOL_ICMPV6));
        assert_eq!(protocol("all"), Ok(PROTOCOL_ALL));
        assert!(protocol("sctp").is_err());
    }
}
