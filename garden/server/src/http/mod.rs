//! A minimal HTTP/1.1 server codec over any `AsyncRead + AsyncWrite` stream.
//!
//! Hyper cannot produce Garden's hijacked responses (a plain 2xx head followed by unframed bytes,
//! spec §5.3), so gardend reads request heads with `httparse`, decodes bodies itself
//! (`Content-Length`, or chunked with `garden_api::chunked`, the codec the client shares) and
//! writes response heads by hand. Nothing here knows about Garden routes; that is `api/`.

mod conn;
mod error;
mod response;

pub use conn::{BodyKind, BodyReader, Conn, RequestHead, MAX_HEADERS, MAX_HEAD_BYTES};
pub use error::HttpError;
pub use garden_api::chunked::{encode_chunk, ChunkError, ChunkedDecoder, Decoded, LAST_CHUNK};
pub use response::{http_date, reason_phrase, ResponseHead};
