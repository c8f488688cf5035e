//! Which TCP ports a host service already listens on, so NetIn never puts a DNAT rule in
//! front of one (the container would take the service's traffic).

use std::collections::HashSet;

/// `/proc/net/tcp{,6}` state of a listening socket.
const TCP_LISTEN: &str = "0A";

/// TCP ports in LISTEN state on any address of gardend's network namespace (the host's).
pub fn listening() -> HashSet<u32> {
    let mut ports = HashSet::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            ports.extend(parse(&text));
        }
    }
    ports
}

/// The local ports of LISTEN lines (`sl local_address rem_address st ...`, the address as
/// `HEXADDR:HEXPORT`).
fn parse(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1)?;
        let state = fields.nth(1)?;
        if state != TCP_LISTEN {
            return None;
        }
        let (_, port) = local.rsplit_once(':')?;
        u32::from_str_radix(port, 16).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_ports() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:1E61 00000000:0000 0A 00000000:00000000\n   1: 0100007F:B38E 0100007F:1E61 01 00000000:00000000\n";
        assert_eq!(parse(text).collect::<Vec<_>>(), [7777]);
    }

    #[test]
    fn sees_a_listener_of_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = u32::from(l.local_addr().unwrap().port());
        assert!(listening().contains(&port));
    }
}
