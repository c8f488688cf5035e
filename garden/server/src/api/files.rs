//! StreamIn and StreamOut: tar streams in and out of a container.

use garden_api::RouteMatch;

use crate::service::{Body, Request};

/// `user` and `destination` come from the query (form-encoded, either may be empty).
pub fn stream_in(m: RouteMatch, body: Body) -> Request {
    let user = m.query_get("user").unwrap_or("").to_string();
    let destination = m.query_get("destination").unwrap_or("").to_string();
    Request::StreamIn {
        handle: m.handle,
        user,
        destination,
        body,
    }
}

pub fn stream_out(m: RouteMatch) -> Request {
    let user = m.query_get("user").unwrap_or("").to_string();
    let source = m.query_get("source").unwrap_or("").to_string();
    Request::StreamOut {
        handle: m.handle,
        user,
        source,
    }
}

#[cfg(test)]
mod tests {
    use garden_api::Route;

    use super::super::{parse, parse_streaming};
    use super::*;

    #[test]
    fn query_parameters() {
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let m =
            Route::recognize("PUT", "/containers/h/files?user=alice&destination=%2Fa+b").unwrap();
        let req = parse_streaming(m, rx).unwrap();
        assert!(
            matches!(&req, Request::StreamIn { handle, user, destination, .. }
            if handle == "h" && user == "alice" && destination == "/a b")
        );
        let m = Route::recognize("GET", "/containers/h/files?source=%2Fetc%2F").unwrap();
        let req = parse(m, b"").unwrap();
        assert!(
            matches!(&req, Request::StreamOut { handle, user, source } if handle == "h" && user.is_empty() && source == "/etc/")
        );
    }
}
