//! Everything that can go wrong while reading a request off the wire.

use std::io;

/// A request that cannot be read. [`HttpError::status`] says how to answer it (if at all).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request head exceeds {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("malformed request head: {0}")]
    BadHead(httparse::Error),
    #[error("invalid Content-Length header: {0:?}")]
    BadContentLength(String),
    #[error("unsupported Transfer-Encoding: {0:?}")]
    UnsupportedTransferEncoding(String),
    #[error("malformed chunked encoding: {0}")]
    BadChunk(#[from] garden_api::chunked::ChunkError),
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("connection closed in the middle of the request {0}")]
    UnexpectedEof(&'static str),
    #[error("timed out reading the request head")]
    HeadTimeout,
    #[error("timed out waiting for the request body")]
    BodyTimeout,
    #[error("i/o error reading the request: {0}")]
    Io(#[from] io::Error),
}

impl HttpError {
    /// The status to answer with, or `None` when the connection is unusable and should just be
    /// closed (the peer went away or the socket failed).
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => Some(431),
            HttpError::BadHead(_) | HttpError::BadContentLength(_) | HttpError::BadChunk(_) => {
                Some(400)
            }
            HttpError::UnsupportedTransferEncoding(_) => Some(501),
            HttpError::BodyTooLarge { .. } => Some(413),
            HttpError::HeadTimeout | HttpError::BodyTimeout => Some(408),
            HttpError::UnexpectedEof(_) | HttpError::Io(_) => None,
        }
    }

    /// As an `io::Error`, for handing to a streamed [`crate::service::Body`].
    pub fn into_io(self) -> io::Error {
        match self {
            HttpError::Io(e) => e,
            HttpError::UnexpectedEof(_) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, self.to_string())
            }
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}
