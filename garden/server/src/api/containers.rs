//! Container lifecycle routes: List, Create, BulkInfo, BulkMetrics, Stop, SetGraceTime.

use garden_api::{ContainerSpec, GardenError, Route, RouteMatch, StopRequest};

use super::decode;
use crate::service::Request;

/// Every query pair is a property filter; the first value of a repeated key wins.
pub fn list(m: &RouteMatch) -> Request {
    let mut filter: Vec<(String, String)> = Vec::new();
    for (key, value) in &m.query {
        if !filter.iter().any(|(k, _)| k == key) {
            filter.push((key.clone(), value.clone()));
        }
    }
    Request::List { filter }
}

pub fn create(body: &[u8]) -> Result<Request, GardenError> {
    let spec: ContainerSpec = decode(Route::Create, body)?;
    Ok(Request::Create(Box::new(spec)))
}

pub fn bulk_info(m: &RouteMatch) -> Request {
    Request::BulkInfo {
        handles: handles(m),
    }
}

pub fn bulk_metrics(m: &RouteMatch) -> Request {
    Request::BulkMetrics {
        handles: handles(m),
    }
}

/// The `handles` parameter holds the comma-joined list; missing or empty means none (the Go
/// server panics on a missing parameter; we do not).
fn handles(m: &RouteMatch) -> Vec<String> {
    m.query_get("handles")
        .unwrap_or("")
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn stop(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let StopRequest { kill } = decode(Route::Stop, body)?;
    Ok(Request::Stop {
        handle: m.handle,
        kill,
    })
}

/// The body is a bare JSON integer of nanoseconds.
pub fn set_grace_time(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let grace_time: u64 = decode(Route::SetGraceTime, body)?;
    Ok(Request::SetGraceTime {
        handle: m.handle,
        grace_time,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn route(method: &str, target: &str) -> RouteMatch {
        Route::recognize(method, target).unwrap()
    }

    #[test]
    fn list_dedups_keeping_the_first_value() {
        let req = parse(route("GET", "/containers?a=1&b=2&a=3&c+d=%2F"), b"").unwrap();
        let Request::List { filter } = req else {
            panic!("{req:?}")
        };
        assert_eq!(
            filter,
            [
                ("a".into(), "1".into()),
                ("b".into(), "2".into()),
                ("c d".into(), "/".into())
            ]
        );
    }

    #[test]
    fn bulk_handles() {
        let cases: &[(&str, &[&str])] = &[
            ("/containers/bulk_info?handles=a%2Cb", &["a", "b"]),
            ("/containers/bulk_info?handles=a,b&handles=c", &["a", "b"]),
            ("/containers/bulk_info?handles=", &[]),
            ("/containers/bulk_info", &[]),
            ("/containers/bulk_info?handles=a,,b,", &["a", "b"]),
        ];
        for (target, want) in cases {
            let Request::BulkInfo { handles } = parse(route("GET", target), b"").unwrap() else {
                panic!()
            };
            assert_eq!(&handles, want, "{target}");
        }
        let req = parse(route("GET", "/containers/bulk_metrics?handles=x"), b"").unwrap();
        assert!(matches!(req, Request::BulkMetrics { handles } if handles == ["x"]));
    }

    #[test]
    fn create_parses_the_go_client_body() {
        let body = br#"{"handle":"h1","grace_time":5000000000,"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{"limit_in_bytes":1024},"pid_limits":{}},"properties":{"a":"b"}}
"#;
        let Request::Create(spec) = parse(route("POST", "/containers"), body).unwrap() else {
            panic!()
        };
        assert_eq!(
            (spec.handle.as_str(), spec.grace_time),
            ("h1", 5_000_000_000)
        );
        assert_eq!(spec.limits.memory_limits.limit_in_bytes, 1024);
        assert_eq!(spec.properties["a"], "b");
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let err = parse(route("POST", "/containers"), br#"{"handle":7}"#).unwrap_err();
        assert_eq!(err.http_status(), 400);
        assert_eq!(err.to_body().kind, "");
        assert!(
            err.to_string().contains("invalid Create request body"),
            "{err}"
        );
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = parse(route("PUT", "/containers/h/stop"), b"").unwrap_err();
        assert!(err.to_string().contains("empty body"), "{err}");
        let err = parse(route("PUT", "/containers/h/stop"), b"{\"kill\":tru").unwrap_err();
        assert!(
            err.to_string().contains("invalid Stop request body"),
            "{err}"
        );
    }

    #[test]
    fn stop_and_grace_time() {
        let req = parse(route("PUT", "/containers/h/stop"), b"{\"kill\":true}\n").unwrap();
        assert!(matches!(req, Request::Stop { handle, kill: true } if handle == "h"));
        let req = parse(route("PUT", "/containers/h/grace_time"), b"3000000000\n").unwrap();
        assert!(
            matches!(req, Request::SetGraceTime { handle, grace_time: 3_000_000_000 } if handle == "h")
        );
        assert!(parse(route("PUT", "/containers/h/grace_time"), b"-1").is_err());
        assert!(parse(route("PUT", "/containers/h/grace_time"), b"\"1s\"").is_err());
    }
}
