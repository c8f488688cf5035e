//! Garden's wire protocol, as the Go client of cloudfoundry/garden speaks it.
//!
//! Every type here serialises exactly as Go's `encoding/json` would (field names, `omitempty`,
//! durations in nanoseconds, enums as integers) and deserialises as leniently as Go does
//! (unknown keys ignored, `null` accepted where Go accepts it). Both the server and the client
//! use these types, so the wire is defined once. See `shared/spec/garden-api.md`.
//!
//! No I/O lives here.

pub mod chunked;
pub mod error;
pub mod info;
pub mod process;
pub mod routes;
pub mod spec;
pub mod units;

mod de;
#[cfg(test)]
mod fuzz;

pub use error::{ErrorBody, GardenError};
pub use info::*;
pub use process::*;
pub use routes::{Route, RouteMatch};
pub use spec::*;

/// `{}`: the body of every successful reply that carries nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Empty {}

/// Create's reply. The Go client also accepts `handle`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandleResponse {
    #[serde(
        rename = "Handle",
        alias = "handle",
        default,
        deserialize_with = "de::null"
    )]
    pub handle: String,
}

/// List's reply: `{"Handles":[...]}`, never `null`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandlesResponse {
    #[serde(
        rename = "Handles",
        alias = "handles",
        default,
        deserialize_with = "de::null"
    )]
    pub handles: Vec<String>,
}

/// Body of Property and SetProperty.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PropertyValue {
    #[serde(default, deserialize_with = "de::null")]
    pub value: String,
}

/// Body of Stop. The Go client always sends `kill`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StopRequest {
    #[serde(default, deserialize_with = "de::null")]
    pub kill: bool,
}

/// Encode a value as the Go server does: compact JSON plus a trailing newline.
pub fn to_wire<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).expect("wire types always serialise");
    out.push(b'\n');
    out
}
