//! Async client for a Garden server (cloudfoundry/garden's HTTP API).
//!
//! It speaks the wire exactly as the Go client in `code.cloudfoundry.org/garden` does, so it
//! can drive gdn as well as our own server: every plain request goes over a fresh connection
//! with `Connection: close`, and Run/Attach take over the raw socket after the response head
//! (see `shared/spec/garden-api.md` §1 and §5). HTTP is hand-written on purpose: the hijacked
//! routes answer an ordinary 2xx whose "body" is an unframed byte stream, which generic HTTP
//! libraries cannot hand over.

mod client;
mod conn;
mod error;
mod process;

pub use client::Client;
pub use conn::Address;
pub use error::ClientError;
pub use process::{Process, ProcessControl, ProcessIo};
