//! Run, Attach and the stdout/stderr stream routes. Their replies are hijacked (see `hijack.rs`).

use garden_api::{GardenError, ProcessSpec, Route, RouteMatch};

use super::decode;
use crate::service::{bind_mounts_need_image, Request};

/// Bind mounts without an image are refused here, synchronously, before the core starts
/// anything (spec §4.2).
pub fn run(m: RouteMatch, body: &[u8]) -> Result<Request, GardenError> {
    let spec: ProcessSpec = decode(Route::Run, body)?;
    bind_mounts_need_image(&spec.bind_mounts, &spec.image.uri)?;
    Ok(Request::Run {
        handle: m.handle,
        spec: Box::new(spec),
    })
}

pub fn attach(m: RouteMatch) -> Request {
    Request::Attach {
        handle: m.handle,
        process_id: m.pid,
    }
}

pub fn output(m: RouteMatch) -> Request {
    let (handle, process_id, stream_id) = (m.handle, m.pid, m.stream_id);
    match m.route {
        Route::Stderr => Request::Stderr {
            handle,
            process_id,
            stream_id,
        },
        _ => Request::Stdout {
            handle,
            process_id,
            stream_id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn run_parses_the_go_client_body() {
        let body = br#"{"id":"p1","path":"/bin/sh","args":["-c","x"],"rlimits":{},"tty":{"window_size":{"columns":80,"rows":24}},"image":{}}
"#;
        let req = parse(
            Route::recognize("POST", "/containers/h/processes").unwrap(),
            body,
        )
        .unwrap();
        let Request::Run { handle, spec } = req else {
            panic!()
        };
        assert_eq!(
            (handle.as_str(), spec.id.as_str(), spec.path.as_str()),
            ("h", "p1", "/bin/sh")
        );
        assert!(spec.tty.is_some());
    }

    #[test]
    fn run_refuses_bind_mounts_without_image() {
        let body = br#"{"path":"ls","bind_mounts":[{"src_path":"/a","dst_path":"/b"}],"image":{}}"#;
        let err = parse(
            Route::recognize("POST", "/containers/h/processes").unwrap(),
            body,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("bind mounts and no image"),
            "{err}"
        );
    }

    #[test]
    fn attach_and_streams() {
        let req = parse(
            Route::recognize("GET", "/containers/h/processes/p%201").unwrap(),
            b"",
        )
        .unwrap();
        assert!(
            matches!(req, Request::Attach { handle, process_id } if handle == "h" && process_id == "p 1")
        );
        let req = parse(
            Route::recognize("GET", "/containers/h/processes/p/attaches/7/stderr").unwrap(),
            b"",
        )
        .unwrap();
        assert!(matches!(req, Request::Stderr { stream_id, .. } if stream_id == "7"));
        let req = parse(
            Route::recognize("GET", "/containers/h/processes/p/attaches/7/stdout").unwrap(),
            b"",
        )
        .unwrap();
        assert!(matches!(req, Request::Stdout { process_id, .. } if process_id == "p"));
    }
}
