//! Garden's route table: one definition used by the server to dispatch and by the client to
//! build paths. Matching works on the escaped path; captured segments are percent-decoded
//! (`+` stays literal in paths, unlike Go's quirk). Query strings are form-encoded.

/// Every route of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    Ping,
    Capacity,
    List,
    Create,
    Info,
    BulkInfo,
    BulkMetrics,
    Destroy,
    Stop,
    StreamIn,
    StreamOut,
    CurrentBandwidthLimits,
    CurrentCpuLimits,
    CurrentDiskLimits,
    CurrentMemoryLimits,
    NetIn,
    NetOut,
    BulkNetOut,
    Run,
    Attach,
    Stdout,
    Stderr,
    SetGraceTime,
    Properties,
    Property,
    SetProperty,
    RemoveProperty,
    Metrics,
}

/// The table: method, pattern. `:name` captures one segment.
const TABLE: &[(Route, &str, &str)] = &[
    (Route::Ping, "GET", "/ping"),
    (Route::Capacity, "GET", "/capacity"),
    (Route::List, "GET", "/containers"),
    (Route::Create, "POST", "/containers"),
    (Route::BulkInfo, "GET", "/containers/bulk_info"),
    (Route::BulkMetrics, "GET", "/containers/bulk_metrics"),
    (Route::Info, "GET", "/containers/:handle/info"),
    (Route::Destroy, "DELETE", "/containers/:handle"),
    (Route::Stop, "PUT", "/containers/:handle/stop"),
    (Route::StreamIn, "PUT", "/containers/:handle/files"),
    (Route::StreamOut, "GET", "/containers/:handle/files"),
    (
        Route::CurrentBandwidthLimits,
        "GET",
        "/containers/:handle/limits/bandwidth",
    ),
    (
        Route::CurrentCpuLimits,
        "GET",
        "/containers/:handle/limits/cpu",
    ),
    (
        Route::CurrentDiskLimits,
        "GET",
        "/containers/:handle/limits/disk",
    ),
    (
        Route::CurrentMemoryLimits,
        "GET",
        "/containers/:handle/limits/memory",
    ),
    (Route::NetIn, "POST", "/containers/:handle/net/in"),
    (Route::NetOut, "POST", "/containers/:handle/net/out"),
    (
        Route::BulkNetOut,
        "POST",
        "/containers/:handle/net/out/bulk",
    ),
    (Route::Run, "POST", "/containers/:handle/processes"),
    (Route::Attach, "GET", "/containers/:handle/processes/:pid"),
    (
        Route::Stdout,
        "GET",
        "/containers/:handle/processes/:pid/attaches/:streamid/stdout",
    ),
    (
        Route::Stderr,
        "GET",
        "/containers/:handle/processes/:pid/attaches/:streamid/stderr",
    ),
    (Route::SetGraceTime, "PUT", "/containers/:handle/grace_time"),
    (Route::Properties, "GET", "/containers/:handle/properties"),
    (
        Route::Property,
        "GET",
        "/containers/:handle/properties/:key",
    ),
    (
        Route::SetProperty,
        "PUT",
        "/containers/:handle/properties/:key",
    ),
    (
        Route::RemoveProperty,
        "DELETE",
        "/containers/:handle/properties/:key",
    ),
    (Route::Metrics, "GET", "/containers/:handle/metrics"),
];

/// A matched request: the route and its decoded path parameters and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub route: Route,
    pub handle: String,
    pub pid: String,
    pub stream_id: String,
    pub key: String,
    /// Decoded query pairs in order of appearance.
    pub query: Vec<(String, String)>,
}

impl RouteMatch {
    /// First value of a query key, as Go's `Query().Get` does.
    pub fn query_get(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request matched no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// 404 `404 page not found`.
    NotFound,
    /// 405, with the methods that the path does allow (for the `Allow` header).
    MethodNotAllowed(Vec<&'static str>),
}

impl Route {
    /// Whether this route hijacks the connection (Run, Attach, Stdout, Stderr).
    pub fn is_hijacked(self) -> bool {
        matches!(
            self,
            Route::Run | Route::Attach | Route::Stdout | Route::Stderr
        )
    }

    /// Whether the route acts on one container (and so pauses its grace timer).
    pub fn is_per_container(self) -> bool {
        !matches!(
            self,
            Route::Ping
                | Route::Capacity
                | Route::List
                | Route::Create
                | Route::BulkInfo
                | Route::BulkMetrics
        )
    }

    pub fn method(self) -> &'static str {
        TABLE
            .iter()
            .find(|(r, _, _)| *r == self)
            .map(|(_, m, _)| *m)
            .expect("every route is in the table")
    }

    fn pattern(self) -> &'static str {
        TABLE
            .iter()
            .find(|(r, _, _)| *r == self)
            .map(|(_, _, p)| *p)
            .expect("every route is in the table")
    }

    /// Match a request target (`/path?query`) and method against the table.
    pub fn recognize(method: &str, target: &str) -> Result<RouteMatch, NoRoute> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        let segments: Vec<&str> = path.split('/').collect();
        let mut allowed = Vec::new();
        for (route, m, pattern) in TABLE {
            let Some(params) = match_pattern(pattern, &segments) else {
                continue;
            };
            if *m != method {
                if !allowed.contains(m) {
                    allowed.push(*m);
                }
                continue;
            }
            let mut rm = RouteMatch {
                route: *route,
                handle: String::new(),
                pid: String::new(),
                stream_id: String::new(),
                key: String::new(),
                query: parse_query(query),
            };
            for (name, value) in params {
                let value = percent_decode(value, false);
                match name {
                    "handle" => rm.handle = value,
                    "pid" => rm.pid = value,
                    "streamid" => rm.stream_id = value,
                    "key" => rm.key = value,
                    _ => {}
                }
            }
            return Ok(rm);
        }
        if allowed.is_empty() {
            Err(NoRoute::NotFound)
        } else {
            Err(NoRoute::MethodNotAllowed(allowed))
        }
    }

    /// Build the escaped path for this route from its parameters (`handle`, `pid`,
    /// `streamid`, `key`, in the order the pattern names them).
    pub fn path(self, params: &[&str]) -> String {
        let mut out = String::new();
        let mut next = params.iter();
        for seg in self.pattern().split('/').skip(1) {
            out.push('/');
            if seg.starts_with(':') {
                out.push_str(&path_escape(next.next().copied().unwrap_or("")));
            } else {
                out.push_str(seg);
            }
        }
        out
    }
}

fn match_pattern<'a>(
    pattern: &'static str,
    segments: &[&'a str],
) -> Option<Vec<(&'static str, &'a str)>> {
    let pat: Vec<&str> = pattern.split('/').collect();
    if pat.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (p, s) in pat.iter().zip(segments) {
        if let Some(name) = p.strip_prefix(':') {
            if s.is_empty() {
                return None;
            }
            params.push((name, *s));
        } else if p != s {
            return None;
        }
    }
    Some(params)
}

/// Parse a form-encoded query string (`+` is a space).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Percent-decode; with `plus_is_space`, `+` decodes to a space (form encoding). Invalid escapes
/// are kept literally; invalid UTF-8 is replaced.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one hex digit (percent escapes here, chunk sizes in `chunked`).
pub(crate) fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Escape one path segment (RFC 3986 unreserved characters and `:@!$&'()*+,;=` stay literal).
pub fn path_escape(s: &str) -> String {
    escape(s, |b| {
        b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b)
    })
}

/// Form-encode one query key or value (space becomes `+`).
pub fn query_escape(s: &str) -> String {
    escape(s, |b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)).replace("%20", "+")
}

fn escape(s: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Build a query string from pairs, form-encoded.
pub fn build_query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", query_escape(k), query_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_routes_and_params() {
        let m =
            Route::recognize("GET", "/containers/h%201/processes/p1/attaches/7/stdout").unwrap();
        assert_eq!(m.route, Route::Stdout);
        assert_eq!(
            (m.handle.as_str(), m.pid.as_str(), m.stream_id.as_str()),
            ("h 1", "p1", "7")
        );
        let m = Route::recognize("GET", "/containers/bulk_info?handles=a%2Cb").unwrap();
        assert_eq!(m.route, Route::BulkInfo);
        assert_eq!(m.query_get("handles"), Some("a,b"));
        assert_eq!(
            Route::recognize("DELETE", "/containers/bulk_info")
                .unwrap()
                .route,
            Route::Destroy
        );
        let m = Route::recognize("PUT", "/containers/h/files?destination=%2Ftmp+x&user=").unwrap();
        assert_eq!(m.query_get("destination"), Some("/tmp x"));
        assert_eq!(m.query_get("user"), Some(""));
        let m = Route::recognize("GET", "/containers?foo=bar&foo=baz&a+b=c").unwrap();
        assert_eq!(m.route, Route::List);
        assert_eq!(m.query_get("foo"), Some("bar"));
        assert_eq!(m.query_get("a b"), Some("c"));
    }

    #[test]
    fn unknown_paths_and_methods() {
        assert_eq!(Route::recognize("GET", "/nope"), Err(NoRoute::NotFound));
        assert_eq!(
            Route::recognize("GET", "/containers/"),
            Err(NoRoute::NotFound)
        );
        assert_eq!(
            Route::recognize("POST", "/ping"),
            Err(NoRoute::MethodNotAllowed(vec!["GET"]))
        );
    }

    #[test]
    fn paths_round_trip() {
        let p = Route::Stdout.path(&["a b", "p/1", "3"]);
        assert_eq!(p, "/containers/a%20b/processes/p%2F1/attaches/3/stdout");
        let m = Route::recognize("GET", &p).unwrap();
        assert_eq!((m.handle.as_str(), m.pid.as_str()), ("a b", "p/1"));
        assert_eq!(
            build_query(&[("destination", "/a b"), ("user", "")]),
            "destination=%2Fa+b&user="
        );
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }
}
