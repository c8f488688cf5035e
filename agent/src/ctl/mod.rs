//! `cellctl`'s library: what a controller does over NATS only — collect advertisements,
//! place instances and tasks (§7), query instances, serve a droplet file over HTTP for the
//! agents to download, find the directory server behind a signed file URL, and stage apps
//! (zip, serve, receive the uploads, follow the replies and the log).

pub mod archive;
pub mod multipart;
pub mod placement;
pub mod stage;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;

use crate::bus::{Bus, BusError};
use crate::protocol::{subject, Advertise, FindDroplet, FindDropletReply, RouterRegister};

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(
        "bad size {0:?}: expected a number with an optional unit K, M, G or T (e.g. 256M, 1G)"
    )]
    Size(String),
    #[error("cannot serve the droplet on {addr}: {message}")]
    Serve { addr: String, message: String },
    #[error(transparent)]
    Archive(#[from] archive::ArchiveError),
    #[error("{0}")]
    Staging(String),
}

/// `256M`, `1G`, `512` (MB), `1.5G`, `2048K` → MB (rounded up).
pub fn parse_size_mb(text: &str) -> Result<u64, CtlError> {
    let bad = || CtlError::Size(text.to_string());
    let t = text.trim();
    let t = t
        .strip_suffix("B")
        .or_else(|| t.strip_suffix('b'))
        .unwrap_or(t);
    let (num, unit_kb) = match t.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let kb: f64 = match c.to_ascii_uppercase() {
                'K' => 1.0,
                'M' => 1024.0,
                'G' => 1024.0 * 1024.0,
                'T' => 1024.0 * 1024.0 * 1024.0,
                _ => return Err(bad()),
            };
            (&t[..t.len() - 1], kb)
        }
        _ => (t, 1024.0),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    let mb = (n * unit_kb / 1024.0).ceil();
    if mb > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(mb as u64)
}

/// Ask every agent to advertise now (`dea.locate`) and collect advertisements for `window`;
/// the latest one per agent, sorted by id.
pub async fn advertisements(bus: &Bus, window: Duration) -> Result<Vec<Advertise>, CtlError> {
    let mut sub = bus
        .client()
        .subscribe(subject::ADVERTISE.to_string())
        .await
        .map_err(|e| BusError::Subscribe {
            subject: subject::ADVERTISE.into(),
            message: e.to_string(),
        })?;
    // The subscription must be in place before anyone answers the locate.
    bus.flush().await;
    bus.publish(subject::LOCATE, &serde_json::json!({})).await;
    let mut latest: BTreeMap<String, Advertise> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if let Some(ad) = Bus::decode::<Advertise>(&m) {
            latest.insert(ad.id.clone(), ad);
        }
    }
    Ok(latest.into_values().collect())
}

/// `dea.find.droplet`: every reply that arrives within `window`.
pub async fn find(
    bus: &Bus,
    query: &FindDroplet,
    window: Duration,
) -> Result<Vec<FindDropletReply>, CtlError> {
    let mut replies: Vec<FindDropletReply> =
        bus.gather(subject::FIND_DROPLET, query, window).await?;
    replies.sort_by(|a, b| (a.index, &a.instance).cmp(&(b.index, &b.instance)));
    Ok(replies)
}

/// The directory server (host, port) that announced `host_name` (`<uuid>.<domain>`) in a
/// `router.register`; asks for registrations at once with `router.start`.
pub async fn directory_server(
    bus: &Bus,
    host_name: &str,
    window: Duration,
) -> Result<Option<SocketAddr>, CtlError> {
    let mut sub = bus
        .client()
        .subscribe(subject::ROUTER_REGISTER.to_string())
        .await
        .map_err(|e| BusError::Subscribe {
            subject: subject::ROUTER_REGISTER.into(),
            message: e.to_string(),
        })?;
    bus.flush().await;
    bus.publish(subject::ROUTER_START, &serde_json::json!({}))
        .await;
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
        let Some(reg) = Bus::decode::<RouterRegister>(&m) else {
            continue;
        };
        if reg.uris.iter().any(|u| u.eq_ignore_ascii_case(host_name)) {
            if let Ok(ip) = reg.host.parse::<IpAddr>() {
                return Ok(Some(SocketAddr::new(ip, reg.port)));
            }
        }
    }
    Ok(None)
}

/// A droplet served over HTTP by cellctl itself until dropped.
pub struct DropletServer {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl DropletServer {
    /// Serve `bytes` at `http://<ip>:<free port>/droplets/<name>`.
    pub async fn start(ip: IpAddr, name: &str, bytes: Vec<u8>) -> Result<DropletServer, CtlError> {
        let listener =
            tokio::net::TcpListener::bind((ip, 0))
                .await
                .map_err(|e| CtlError::Serve {
                    addr: ip.to_string(),
                    message: e.to_string(),
                })?;
        let addr = listener.local_addr().map_err(|e| CtlError::Serve {
            addr: ip.to_string(),
            message: e.to_string(),
        })?;
        let path = format!("/droplets/{name}");
        let body = axum::body::Bytes::from(bytes);
        let app = axum::Router::new().route(
            &path,
            axum::routing::get(move || {
                let body = body.clone();
                async move { body }
            }),
        );
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "droplet server stopped");
            }
        });
        Ok(DropletServer {
            url: format!("http://{addr}{path}"),
            task,
        })
    }
}

impl Drop for DropletServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Several words as one shell command line (each quoted when needed); one word is taken as
/// shell text as it is.
pub fn shell_command(words: &[String]) -> String {
    if words.len() == 1 {
        return words[0].clone();
    }
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mb("256M").unwrap(), 256);
        assert_eq!(parse_size_mb("256").unwrap(), 256);
        assert_eq!(parse_size_mb("1G").unwrap(), 1024);
        assert_eq!(parse_size_mb("1.5g").unwrap(), 1536);
        assert_eq!(parse_size_mb("512MB").unwrap(), 512);
        assert_eq!(parse_size_mb("100K").unwrap(), 1);
        for bad in ["", "M", "-1M", "0", "12Q", "lots", "1e300T"] {
            assert!(parse_size_mb(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_command(&["echo hi; exit 3".into()]),
            "echo hi; exit 3"
        );
        assert_eq!(
            shell_command(&["sh".into(), "-c".into(), "exit 3".into(), "it's".into()]),
            r"sh -c 'exit 3' 'it'\''s'"
        );
    }
}
