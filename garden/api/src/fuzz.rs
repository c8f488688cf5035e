//! Bounded-time fuzzing of everything that parses client bytes on the server's behalf: the
//! chunked decoder, the route parser and the JSON specs. Plain unit tests with a seeded
//! generator (no extra dependency), so they run in every CI `cargo test` in well under a
//! second; `GARDEN_FUZZ_CASES` raises the case count for a longer local run.

use bytes::BytesMut;

use crate::chunked::{encode_chunk, ChunkedDecoder, Decoded, LAST_CHUNK};
use crate::routes::Route;
use crate::{ContainerSpec, NetOutRule, ProcessSpec};

/// xorshift64*: deterministic, so a failing case is reproducible from its index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// `input` with a few random edits: flipped, inserted, deleted or duplicated bytes.
    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(out.len() + 1);
            match self.below(4) {
                0 if at < out.len() => out[at] ^= 1 << self.below(8),
                1 => out.insert(at, self.pick(b"0123456789abcdefxX;: \r\n\"{}[],-%/?\0\xff")),
                2 if at < out.len() => {
                    out.remove(at);
                }
                _ => {
                    let end = (at + self.below(16)).min(out.len());
                    let piece = out[at..end].to_vec();
                    out.splice(at..at, piece);
                }
            }
        }
        out
    }
}

fn cases() -> usize {
    std::env::var("GARDEN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000)
}

/// Feed `input` in random pieces; the body, or the error. Never loops forever: every
/// `NeedMore` consumes a piece.
fn decode(rng: &mut Rng, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut dec = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = input;
    loop {
        match dec.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::Done => return Ok(body),
            Decoded::NeedMore if rest.is_empty() => return Err("eof".into()),
            Decoded::NeedMore => {
                let n = 1 + rng.below(rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
        }
    }
}

#[test]
fn chunked_decoder_round_trips_and_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..cases() {
        let parts: Vec<Vec<u8>> = (0..rng.below(5))
            .map(|_| (0..1 + rng.below(300)).map(|_| rng.next() as u8).collect())
            .collect();
        let mut wire: Vec<u8> = parts.iter().flat_map(|p| encode_chunk(p)).collect();
        wire.extend_from_slice(LAST_CHUNK);
        assert_eq!(
            decode(&mut rng, &wire),
            Ok(parts.concat()),
            "case {case}: a valid body must round-trip"
        );
        let broken = rng.mutate(&wire);
        let _ = decode(&mut rng, &broken);
        let noise: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        let _ = decode(&mut rng, &noise);
    }
}

#[test]
fn route_parser_never_panics() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let methods = [
        "GET", "PUT", "POST", "DELETE", "PATCH", "", "get", "G\u{e9}T",
    ];
    let seeds = [
        "/ping",
        "/containers",
        "/containers/h/info",
        "/containers/h/processes/p/attach?stream_id=1",
        "/containers/bulk_info?handles=a%2Cb",
        "/containers/h/properties/a%20b",
        "/containers/%ff%/net/in",
        "/containers/h/files?destination=/tmp",
    ];
    for _ in 0..cases() {
        let seed = rng.pick(&seeds);
        let target = rng.mutate(seed.as_bytes());
        let target = String::from_utf8_lossy(&target);
        let _ = Route::recognize(rng.pick(&methods), &target);
    }
}

#[test]
fn json_specs_never_panic() {
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    let seeds: [&[u8]; 3] = [
        br#"{"handle":"h","grace_time":5,"network":"10.0.0.0/24","limits":{"memory_limits":{"limit_in_bytes":1024},"pid_limits":{"max":9}},"netin":[{"host_port":1,"container_port":2}],"properties":{"a":"b"},"env":["A=1"]}"#,
        br#"{"id":"p","path":"/bin/sh","args":["-c","x"],"env":null,"rlimits":{"nofile":10},"tty":{"window_size":{"columns":80,"rows":24}}}"#,
        br#"{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.9"}],"ports":[{"start":80,"end":443}],"icmps":{"type":8,"code":0},"log":true}"#,
    ];
    for _ in 0..cases() {
        let seed = rng.pick(&seeds);
        let body = rng.mutate(seed);
        let _ = serde_json::from_slice::<ContainerSpec>(&body);
        let _ = serde_json::from_slice::<ProcessSpec>(&body);
        let _ = serde_json::from_slice::<NetOutRule>(&body);
    }
}
