//! Raw HTTP/1.1 against gardend, for tests that send what a well-behaved client never would
//! (garbage heads, bad chunk sizes, stalled bodies).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Gardend;

/// Send `request` (optionally keeping the write side open) and read the reply until the server
/// closes or `Content-Length` bytes of body arrived. Returns (status, head, body).
pub async fn exchange(g: &Gardend, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(g.address()).await.expect("connect");
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = s.write_all(request).await;
    read_reply(&mut s).await
}

pub async fn read_reply(s: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
                let len = head.split("\r\n").find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                });
                if let Some(len) = len {
                    if buf.len() >= i + 4 + len {
                        return (head, buf[i + 4..i + 4 + len].to_vec());
                    }
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let i = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no reply head: {buf:?}"));
        (
            String::from_utf8_lossy(&buf[..i + 4]).into_owned(),
            buf[i + 4..].to_vec(),
        )
    };
    let (head, body) = tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("reply within 15s");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, head, body)
}

/// A POST of `body` as JSON, closing the connection after the reply.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// gardend still answers Ping and has not logged a panic.
pub async fn healthy(g: &Gardend) {
    g.client().ping().await.expect("gardend still answers ping");
    assert!(
        g.log().find("panicked").is_none(),
        "gardend panicked:\n{}",
        g.log()
    );
}
