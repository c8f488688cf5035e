//! Garden's HTTP API on top of [`crate::http`]: route recognition, request parsing into
//! [`Request`], rendering of [`crate::service::Reply`] and [`GardenError`], and the hijack
//! protocol of Run, Attach, Stdout and Stderr (spec §5).
//!
//! Parsers live in one file per resource group and never touch sockets; `connection.rs` drives
//! one connection from request head to close.

mod connection;
mod containers;
mod files;
mod hijack;
mod limits;
mod ndjson;
mod net;
mod processes;
mod properties;
mod reply;

#[cfg(test)]
mod tests;

use garden_api::{GardenError, Route, RouteMatch};
use serde::de::DeserializeOwned;

use crate::service::{Body, Request};

pub use connection::{serve_connection, ConnOptions};
pub use ndjson::{NdjsonDecoder, NdjsonError};
pub use reply::{error_response, json_response, not_found_response};

/// What a route does with the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// Ignored (hijacked routes skip it so it is not taken for inbound messages).
    None,
    /// One JSON value, read fully (bounded) before parsing.
    Json,
    /// Streamed to the core as it arrives (StreamIn's tar).
    Stream,
}

pub fn body_use(route: Route) -> BodyUse {
    match route {
        Route::Create
        | Route::Stop
        | Route::NetIn
        | Route::NetOut
        | Route::BulkNetOut
        | Route::Run
        | Route::SetGraceTime
        | Route::SetProperty => BodyUse::Json,
        Route::StreamIn => BodyUse::Stream,
        _ => BodyUse::None,
    }
}

/// Parse a matched route and its (fully read) body into a [`Request`]. StreamIn, whose body is
/// a stream, goes through [`parse_streaming`] instead.
pub fn parse(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    match m.route {
        Route::Ping => Ok(Request::Ping),
        Route::Capacity => Ok(Request::Capacity),
        Route::List => Ok(containers::list(&m)),
        Route::Create => containers::create(body),
        Route::Info => Ok(Request::Info { handle: m.handle }),
        Route::BulkInfo => Ok(containers::bulk_info(&m)),
        Route::BulkMetrics => Ok(containers::bulk_metrics(&m)),
        Route::Destroy => Ok(Request::Destroy { handle: m.handle }),
        Route::Stop => containers::stop(m, body),
        Route::Metrics => Ok(Request::Metrics { handle: m.handle }),
        Route::SetGraceTime => containers::set_grace_time(m, body),
        Route::StreamIn => Err(GardenError::generic("StreamIn needs a streamed body")),
        Route::StreamOut => Ok(files::stream_out(m)),
        Route::CurrentBandwidthLimits
        | Route::CurrentCpuLimits
        | Route::CurrentDiskLimits
        | Route::CurrentMemoryLimits => Ok(limits::current(m)),
        Route::NetIn => net::net_in(m, body),
        Route::NetOut => net::net_out(m, body),
        Route::BulkNetOut => net::bulk_net_out(m, body),
        Route::Run => processes::run(m, body),
        Route::Attach => Ok(processes::attach(m)),
        Route::Stdout | Route::Stderr => Ok(processes::output(m)),
        Route::Properties => Ok(Request::Properties { handle: m.handle }),
        Route::Property => Ok(properties::get(m)),
        Route::SetProperty => properties::set(m, body),
        Route::RemoveProperty => Ok(properties::remove(m)),
    }
}

/// Parse a route whose body is streamed to the core ([`BodyUse::Stream`]).
pub fn parse_streaming(m: RouteMatch, body: Body) -> Result<Request, GardenError> {
    match m.route {
        Route::StreamIn => Ok(files::stream_in(m, body)),
        other => Err(GardenError::generic(format!(
            "route {other:?} does not take a streamed body"
        ))),
    }
}

/// Decode the first JSON value of a body as Go's `json.Decoder` does (trailing bytes ignored).
/// Errors are 400s (generic bodies) that name the route and the problem.
fn decode<T: DeserializeOwned>(route: Route, body: &[u8]) -> Result<T, GardenError> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match values.next() {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(GardenError::bad_request(format!(
            "invalid {route:?} request body: {e}"
        ))),
        None => Err(GardenError::bad_request(format!(
            "invalid {route:?} request body: empty body, expected JSON"
        ))),
    }
}
