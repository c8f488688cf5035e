//! The limit getters (`/limits/{bandwidth,cpu,disk,memory}`); limits are only set at Create.

use garden_api::{Route, RouteMatch};

use crate::service::Request;

pub fn current(m: RouteMatch) -> Request {
    let handle = m.handle;
    match m.route {
        Route::CurrentBandwidthLimits => Request::CurrentBandwidthLimits { handle },
        Route::CurrentCpuLimits => Request::CurrentCpuLimits { handle },
        Route::CurrentDiskLimits => Request::CurrentDiskLimits { handle },
        _ => Request::CurrentMemoryLimits { handle },
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn each_getter() {
        let get = |kind: &str| {
            parse(
                Route::recognize("GET", &format!("/containers/h/limits/{kind}")).unwrap(),
                b"",
            )
            .unwrap()
        };
        assert!(
            matches!(get("bandwidth"), Request::CurrentBandwidthLimits { handle } if handle == "h")
        );
        assert!(matches!(get("cpu"), Request::CurrentCpuLimits { .. }));
        assert!(matches!(get("disk"), Request::CurrentDiskLimits { .. }));
        assert!(matches!(get("memory"), Request::CurrentMemoryLimits { .. }));
    }
}
