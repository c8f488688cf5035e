//! `Transfer-Encoding: chunked` (RFC 9112 §7.1), the one codec of the workspace: gardend decodes
//! StreamIn bodies and encodes StreamOut replies with it, garden-client encodes StreamIn bodies
//! and decodes every chunked reply. The decoder is sans-I/O (bytes in, body bytes out) and never
//! buffers chunk data (StreamIn bodies are tar streams of any size).
//!
//! Like Go's reader, line ends may be `\r\n` or a bare `\n`; chunk extensions and trailers are
//! read and discarded. Size lines and trailers are bounded so a hostile client cannot make us
//! buffer without limit.

use bytes::{Buf, Bytes, BytesMut};

use crate::routes::hex_digit;

/// Malformed chunked framing; the message says what was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChunkError(pub &'static str);

/// Longest accepted chunk-size line (digits plus extensions).
const MAX_SIZE_LINE: usize = 4096;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILER: usize = 64 * 1024;

/// The terminating chunk plus an empty trailer.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes (part of one chunk).
    Data(Bytes),
    /// The buffer holds no complete step; read more and call again.
    NeedMore,
    /// The last chunk and trailer were read; bytes after them stay in the buffer.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    Digits,
    AfterDigits,
    Extension,
    Cr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size {
        value: u64,
        digits: usize,
        line: usize,
        phase: SizePhase,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    Trailer {
        line: usize,
        total: usize,
        cr: bool,
    },
    Done,
}

const SIZE_START: State = State::Size {
    value: 0,
    digits: 0,
    line: 0,
    phase: SizePhase::Digits,
};

/// Incremental chunked-body decoder; feed it the connection's read buffer.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: SIZE_START }
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume framing from the front of `buf` and return the next piece of body data, if any.
    /// Only the bytes belonging to the body are consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            if let State::Data { remaining } = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let left = remaining - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == State::Done {
                return Ok(Decoded::Done);
            }
            let Some(&byte) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = step(self.state, byte)?;
        }
    }
}

/// Advance the framing state machine by one byte (never called in `Data` or `Done`).
fn step(state: State, b: u8) -> Result<State, ChunkError> {
    match state {
        State::Size {
            value,
            digits,
            line,
            phase,
        } => {
            let line = line + 1;
            if line > MAX_SIZE_LINE {
                return Err(ChunkError("chunk-size line too long"));
            }
            let next = |phase| {
                Ok(State::Size {
                    value,
                    digits,
                    line,
                    phase,
                })
            };
            match (phase, b) {
                (SizePhase::Digits, _) if hex_digit(b).is_some() => {
                    if digits == 16 {
                        return Err(ChunkError("chunk size too large"));
                    }
                    let value = value << 4 | u64::from(hex_digit(b).unwrap_or(0));
                    Ok(State::Size {
                        value,
                        digits: digits + 1,
                        line,
                        phase,
                    })
                }
                (SizePhase::Cr, b'\n') => end_of_size_line(value),
                (SizePhase::Cr, _) => Err(ChunkError("expected LF after CR in chunk-size line")),
                _ if digits == 0 => Err(ChunkError("invalid chunk size")),
                (_, b'\n') => end_of_size_line(value),
                (_, b'\r') => next(SizePhase::Cr),
                (SizePhase::Extension, _) => next(SizePhase::Extension),
                (_, b';') => next(SizePhase::Extension),
                (_, b' ' | b'\t') => next(SizePhase::AfterDigits),
                _ => Err(ChunkError("invalid chunk size")),
            }
        }
        State::DataCr => match b {
            b'\r' => Ok(State::DataLf),
            b'\n' => Ok(SIZE_START),
            _ => Err(ChunkError("missing CRLF after chunk data")),
        },
        State::DataLf => match b {
            b'\n' => Ok(SIZE_START),
            _ => Err(ChunkError("missing CRLF after chunk data")),
        },
        State::Trailer { line, total, cr } => match b {
            b'\n' if line == 0 => Ok(State::Done),
            b'\n' => Ok(State::Trailer {
                line: 0,
                total,
                cr: false,
            }),
            _ if cr => Err(ChunkError("expected LF after CR in trailer")),
            b'\r' => Ok(State::Trailer {
                line,
                total,
                cr: true,
            }),
            _ if total + 1 > MAX_TRAILER => Err(ChunkError("trailer too large")),
            _ => Ok(State::Trailer {
                line: line + 1,
                total: total + 1,
                cr: false,
            }),
        },
        State::Data { .. } | State::Done => Ok(state),
    }
}

fn end_of_size_line(value: u64) -> Result<State, ChunkError> {
    Ok(if value == 0 {
        State::Trailer {
            line: 0,
            total: 0,
            cr: false,
        }
    } else {
        State::Data { remaining: value }
    })
}

/// Frame one chunk (`data` must not be empty: an empty chunk would end the body).
pub fn encode_chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 20);
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes; return the body and the bytes left after it
    /// (`ChunkError("eof")` when the input ends first).
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(step.max(1));
        loop {
            match dec.decode(&mut buf)? {
                Decoded::Data(d) => body.extend_from_slice(&d),
                Decoded::Done => {
                    return Ok((
                        body,
                        [&buf[..], &pieces.flatten().copied().collect::<Vec<_>>()].concat(),
                    ))
                }
                Decoded::NeedMore => match pieces.next() {
                    Some(p) => buf.extend_from_slice(p),
                    None => return Err(ChunkError("eof")),
                },
            }
        }
    }

    #[test]
    fn decodes_at_every_split_point() {
        let input =
            b"5\r\nhello\r\n1;ext=1\r\n \r\nA \r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        for step in 1..=input.len() {
            let (body, rest) = decode_in_steps(input, step).unwrap();
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn accepts_bare_lf_like_go() {
        let (body, rest) = decode_in_steps(b"3\nabc\n0\n\n", 2).unwrap();
        assert_eq!((body.as_slice(), rest.as_slice()), (&b"abc"[..], &b""[..]));
    }

    #[test]
    fn rejects_bad_framing() {
        let cases: &[(&[u8], &str)] = &[
            (b"zz\r\n", "invalid chunk size"),
            (b"\r\n", "invalid chunk size"),
            (b"3\r\nabcX\r\n", "missing CRLF after chunk data"),
            (b"3\rX", "expected LF after CR"),
            (b"11111111111111111\r\n", "chunk size too large"),
            (b"3 x\r\n", "invalid chunk size"),
        ];
        for (input, want) in cases {
            let err = decode_in_steps(input, 1).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(input)
            );
        }
        let long = [b"1;".as_slice(), &[b'x'; MAX_SIZE_LINE]].concat();
        assert!(decode_in_steps(&long, 4096)
            .unwrap_err()
            .to_string()
            .contains("too long"));
        let trailer = [b"0\r\n".as_slice(), &[b'x'; MAX_TRAILER + 1]].concat();
        assert!(decode_in_steps(&trailer, 4096)
            .unwrap_err()
            .to_string()
            .contains("trailer too large"));
    }

    #[test]
    fn truncated_body_needs_more() {
        assert_eq!(decode_in_steps(b"5\r\nhel", 3), Err(ChunkError("eof")));
    }

    #[test]
    fn huge_chunk_is_streamed_not_buffered() {
        let mut dec = ChunkedDecoder::new();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nabc"[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(dec.decode(&mut buf).unwrap(), Decoded::NeedMore);
    }

    #[test]
    fn encodes_chunks() {
        assert_eq!(
            encode_chunk(b"0123456789abcdef!"),
            b"11\r\n0123456789abcdef!\r\n"
        );
        let (body, _) =
            decode_in_steps(&[encode_chunk(b"xy"), LAST_CHUNK.to_vec()].concat(), 1).unwrap();
        assert_eq!(body, b"xy");
    }
}
