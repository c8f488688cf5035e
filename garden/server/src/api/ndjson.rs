//! A streaming decoder for the JSON values exchanged on a hijacked Run/Attach connection.
//!
//! Like Go's `json.Decoder`, values are separated by optional whitespace and may arrive split
//! across reads or several in one read. Framing is found with `IgnoredAny` (no allocation); the
//! value is then decoded into its type, so a value of the wrong shape is skipped without losing
//! the stream, while a syntax error is fatal (there is no way to resynchronise).

use bytes::{Buf, BytesMut};
use serde::de::{DeserializeOwned, IgnoredAny};

/// Why [`NdjsonDecoder::next_value`] produced no value.
#[derive(Debug, thiserror::Error)]
pub enum NdjsonError {
    /// A complete JSON value that is not the expected type; it was consumed.
    #[error("unexpected message: {0}")]
    Invalid(serde_json::Error),
    /// Not JSON: the rest of the stream cannot be framed.
    #[error("malformed message stream: {0}")]
    Syntax(serde_json::Error),
    #[error("message exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

impl NdjsonError {
    /// Whether decoding can continue after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, NdjsonError::Invalid(_))
    }
}

pub struct NdjsonDecoder {
    buf: BytesMut,
    max_value: usize,
}

impl NdjsonDecoder {
    /// `initial`: bytes already read from the connection (e.g. after a request body).
    pub fn new(initial: BytesMut, max_value: usize) -> Self {
        NdjsonDecoder {
            buf: initial,
            max_value,
        }
    }

    /// Where to read more bytes into.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// The next complete value, or `Ok(None)` if more bytes are needed.
    pub fn next_value<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NdjsonError> {
        let blank = self
            .buf
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
        self.buf.advance(blank);
        if self.buf.is_empty() {
            return Ok(None);
        }
        let mut values = serde_json::Deserializer::from_slice(&self.buf).into_iter::<IgnoredAny>();
        match values.next() {
            None => Ok(None),
            Some(Ok(IgnoredAny)) => {
                let end = values.byte_offset();
                let raw = self.buf.split_to(end);
                serde_json::from_slice(&raw)
                    .map(Some)
                    .map_err(NdjsonError::Invalid)
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buf.len() > self.max_value {
                    Err(NdjsonError::TooLarge {
                        limit: self.max_value,
                    })
                } else {
                    Ok(None)
                }
            }
            Some(Err(e)) => Err(NdjsonError::Syntax(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use garden_api::{ProcessInput, ProcessPayload, Signal};

    use super::*;

    fn feed_all(input: &[u8], step: usize) -> Vec<ProcessInput> {
        let mut dec = NdjsonDecoder::new(BytesMut::new(), 1 << 20);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            dec.buffer_mut().extend_from_slice(piece);
            while let Some(p) = dec.next_value::<ProcessPayload>().unwrap() {
                out.push(p.classify());
            }
        }
        out
    }

    #[test]
    fn values_split_and_merged_across_reads() {
        let input = b"{\"process_id\":\"p1\",\"source\":0,\"data\":\"hel\\nlo \\u003c\"}\n{\"process_id\":\"p1\",\"signal\":1}  {\"source\":0}\r\n\t{\"tty\":{\"window_size\":{\"columns\":100,\"rows\":50}}}";
        let want = vec![
            ProcessInput::Stdin(b"hel\nlo <".to_vec()),
            ProcessInput::Signal(Signal::Kill),
            ProcessInput::StdinEof,
            ProcessInput::Resize(garden_api::WindowSize {
                columns: 100,
                rows: 50,
            }),
        ];
        for step in 1..=input.len() {
            assert_eq!(feed_all(input, step), want, "step {step}");
        }
    }

    #[test]
    fn wrong_shapes_are_skipped_and_garbage_is_fatal() {
        let mut dec = NdjsonDecoder::new(
            BytesMut::from(&b"{\"signal\":\"x\"} [1] {\"signal\":0} }"[..]),
            1024,
        );
        assert!(matches!(dec.next_value::<ProcessPayload>(), Err(e) if !e.is_fatal()));
        assert!(matches!(dec.next_value::<ProcessPayload>(), Err(e) if !e.is_fatal()));
        assert_eq!(
            dec.next_value::<ProcessPayload>()
                .unwrap()
                .unwrap()
                .classify(),
            ProcessInput::Signal(Signal::Terminate)
        );
        assert!(
            matches!(dec.next_value::<ProcessPayload>(), Err(e @ NdjsonError::Syntax(_)) if e.is_fatal())
        );
    }

    #[test]
    fn unterminated_values_are_bounded() {
        let mut dec = NdjsonDecoder::new(BytesMut::from(&b"{\"data\":\""[..]), 16);
        assert!(dec.next_value::<ProcessPayload>().unwrap().is_none());
        dec.buffer_mut().extend_from_slice(&[b'a'; 32]);
        assert!(matches!(
            dec.next_value::<ProcessPayload>(),
            Err(NdjsonError::TooLarge { limit: 16 })
        ));
    }
}
