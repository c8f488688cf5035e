//! NetIn, NetOut and BulkNetOut.

use garden_api::{GardenError, NetInRequest, NetOutRule, Route, RouteMatch};

use super::decode;
use crate::service::Request;

/// The body's `handle` is redundant; the path's wins.
pub fn net_in(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let mut request: NetInRequest = decode(Route::NetIn, body)?;
    request.handle.clone_from(&m.handle);
    Ok(Request::NetIn {
        handle: m.handle,
        request,
    })
}

pub fn net_out(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let rule: NetOutRule = decode(Route::NetOut, body)?;
    Ok(Request::NetOut {
        handle: m.handle,
        rule,
    })
}

/// The client sends `null` for a nil slice.
pub fn bulk_net_out(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let rules: Option<Vec<NetOutRule>> = decode(Route::BulkNetOut, body)?;
    Ok(Request::BulkNetOut {
        handle: m.handle,
        rules: rules.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn post(path: &str, body: &[u8]) -> Result<Request, GardenError> {
        parse(Route::recognize("POST", path).unwrap(), body)
    }

    #[test]
    fn net_in_uses_the_path_handle() {
        let req = post(
            "/containers/h1/net/in",
            br#"{"handle":"other","container_port":8080}"#,
        )
        .unwrap();
        let Request::NetIn { handle, request } = req else {
            panic!()
        };
        assert_eq!((handle.as_str(), request.handle.as_str()), ("h1", "h1"));
        assert_eq!((request.host_port, request.container_port), (0, 8080));
    }

    #[test]
    fn net_out_rules() {
        let req = post(
            "/containers/h/net/out",
            br#"{"protocol":1,"ports":[{"start":80,"end":443}]}"#,
        )
        .unwrap();
        assert!(
            matches!(req, Request::NetOut { rule, .. } if rule.protocol == 1 && rule.ports.len() == 1)
        );
        let req = post("/containers/h/net/out/bulk", b"null\n").unwrap();
        assert!(matches!(req, Request::BulkNetOut { rules, .. } if rules.is_empty()));
        let req = post("/containers/h/net/out/bulk", b"[{},{\"log\":true}]").unwrap();
        assert!(
            matches!(req, Request::BulkNetOut { rules, .. } if rules.len() == 2 && rules[1].log)
        );
        assert!(post("/containers/h/net/out/bulk", b"{}").is_err());
    }
}
