//! Docker Registry HTTP API v2, the parts a pull needs: manifests (by tag or digest) and
//! blobs, behind the registry's own authentication (`WWW-Authenticate` challenge: a bearer
//! token from its token service, or basic auth) and redirects to blob storage.
//!
//! Plain HTTP is used only for registries the operator listed as insecure, and a redirect may
//! not downgrade to HTTP either. Bodies are never trusted: callers verify every digest.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::digest::Digest;
use crate::reference::{DockerRef, Tagged};
use crate::RootfsError;

/// Every manifest form a pull understands, in the registry's `Accept` negotiation.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and indexes are small; anything bigger is refused rather than buffered.
pub(crate) const MAX_MANIFEST: u64 = 4 << 20;

/// Username and password for a private image (`image.username` / `image.password`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    fn given(&self) -> bool {
        !self.username.is_empty() || !self.password.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// True if `host[:port]` was listed with `--insecure-docker-registry` (a listed host without
/// a port covers every port).
pub(crate) fn is_insecure(insecure: &[String], host_port: &str) -> bool {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    insecure.iter().any(|i| i == host_port || i == host)
}

/// The HTTP client every pull shares (connection reuse); redirects may go to other hosts
/// (blob storage) but never from HTTPS to plain HTTP unless the target is insecure-listed.
pub(crate) fn client(insecure: Arc<Vec<String>>) -> Result<Client, RootfsError> {
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("more than 10 redirects");
        }
        let url = attempt.url();
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => return attempt.error("redirect without a host"),
        };
        let downgrade = attempt
            .previous()
            .last()
            .is_some_and(|p| p.scheme() == "https")
            && url.scheme() != "https";
        if downgrade && !is_insecure(&insecure, &host) {
            let msg = format!("refusing redirect from https to {url}");
            return attempt.error(msg);
        }
        attempt.follow()
    });
    Client::builder()
        .redirect(policy)
        .connect_timeout(Duration::from_secs(15))
        .timeout(None)
        .user_agent(concat!("gardend-rootfs/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| RootfsError::Image {
            image: String::new(),
            reason: format!("building the HTTP client: {}", chain(&e)),
        })
}

/// How requests to this registry authenticate, learnt from its first challenge.
#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic,
    Bearer(String),
}

/// One image's registry session.
pub(crate) struct Registry<'a> {
    client: &'a Client,
    image: &'a DockerRef,
    base: String,
    creds: Credentials,
    auth: Mutex<Auth>,
    insecure: bool,
}

impl<'a> Registry<'a> {
    pub(crate) fn new(
        client: &'a Client,
        image: &'a DockerRef,
        creds: Credentials,
        insecure: &[String],
    ) -> Self {
        let host = image.api_host();
        let insecure = is_insecure(insecure, host);
        let scheme = if insecure { "http" } else { "https" };
        Registry {
            client,
            image,
            base: format!("{scheme}://{host}/v2/{}", image.repository),
            creds,
            auth: Mutex::new(Auth::Anonymous),
            insecure,
        }
    }

    fn err(&self, reason: impl Into<String>) -> RootfsError {
        RootfsError::Image {
            image: self.image.to_string(),
            reason: reason.into(),
        }
    }

    /// The manifest or index `reference` names: its bytes and media type. Bytes fetched by
    /// digest are verified against it.
    pub(crate) fn manifest(&self, reference: &Tagged) -> Result<(Vec<u8>, String), RootfsError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let resp = self.get(&url, Some(MANIFEST_TYPES))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(self.err(format!(
                "manifest {reference} not found (no such repository or tag)"
            )));
        }
        let resp = self.check(resp, "manifest")?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let mut body = Vec::new();
        resp.take(MAX_MANIFEST + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.err(format!("reading manifest: {e}")))?;
        if body.len() as u64 > MAX_MANIFEST {
            return Err(self.err("manifest larger than 4 MiB"));
        }
        if let Tagged::Digest(d) = reference {
            let got = Digest::of(&body);
            if &got != d {
                return Err(RootfsError::DigestMismatch {
                    what: format!("manifest of {}", self.image),
                    expected: d.to_string(),
                    got: got.to_string(),
                });
            }
        }
        Ok((body, media_type))
    }

    /// A streaming reader of blob `digest` (the caller verifies it while reading).
    pub(crate) fn blob(&self, digest: &Digest) -> Result<Response, RootfsError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let resp = self.get(&url, None)?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(self.err(format!("blob {digest} not found")));
        }
        self.check(resp, "blob")
    }

    fn check(&self, resp: Response, what: &str) -> Result<Response, RootfsError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let mut body = String::new();
        let _ = resp.take(512).read_to_string(&mut body);
        Err(self.err(format!(
            "{what}: registry answered {status}: {}",
            body.trim()
        )))
    }

    /// GET with the session's credentials; a 401 is answered once by authenticating as the
    /// challenge asks, then retried.
    fn get(&self, url: &str, accept: Option<&str>) -> Result<Response, RootfsError> {
        for attempt in 0..2 {
            let mut req = self.client.get(url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            req = self.authorize(req);
            let resp = req
                .send()
                .map_err(|e| self.err(format!("GET {url}: {}", chain(&e))))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                if resp.status() == StatusCode::FORBIDDEN {
                    return Err(self.unauthorized("the registry denied access"));
                }
                return Ok(resp);
            }
            if attempt == 1 {
                break;
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            self.authenticate(&challenge)?;
        }
        Err(self.unauthorized(if self.creds.given() {
            "the registry refused the username and password"
        } else {
            "the registry requires a username and password"
        }))
    }

    fn unauthorized(&self, reason: &str) -> RootfsError {
        RootfsError::Unauthorized {
            image: self.image.to_string(),
            reason: reason.to_string(),
        }
    }

    fn authorize(&self, req: RequestBuilder) -> RequestBuilder {
        match &*self.auth.lock().expect("auth lock") {
            Auth::Anonymous => req,
            Auth::Basic => req.basic_auth(&self.creds.username, Some(&self.creds.password)),
            Auth::Bearer(t) => req.bearer_auth(t),
        }
    }

    /// Answers a `WWW-Authenticate` challenge: `Basic` uses the image's credentials, `Bearer`
    /// asks the named token service (with the credentials, if any) for a pull token.
    fn authenticate(&self, challenge: &str) -> Result<(), RootfsError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if !self.creds.given() {
                    return Err(self.unauthorized("the registry requires a username and password"));
                }
                *self.auth.lock().expect("auth lock") = Auth::Basic;
                Ok(())
            }
            "bearer" => {
                let param = |k: &str| {
                    params
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(k))
                        .map(|(_, v)| v.as_str())
                };
                let realm =
                    param("realm").ok_or_else(|| self.err("bearer challenge without a realm"))?;
                let mut url = reqwest::Url::parse(realm)
                    .map_err(|e| self.err(format!("bad token realm {realm:?}: {e}")))?;
                if url.scheme() != "https" && !(url.scheme() == "http" && self.insecure) {
                    return Err(self.err(format!("refusing token realm {realm} over plain HTTP")));
                }
                let scope = param("scope")
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
                {
                    let mut q = url.query_pairs_mut();
                    q.append_pair("scope", &scope);
                    if let Some(service) = param("service") {
                        q.append_pair("service", service);
                    }
                }
                let mut req = self.client.get(url);
                if self.creds.given() {
                    req = req.basic_auth(&self.creds.username, Some(&self.creds.password));
                }
                let resp = req
                    .send()
                    .map_err(|e| self.err(format!("token service {realm}: {}", chain(&e))))?;
                if matches!(
                    resp.status(),
                    StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
                ) {
                    return Err(self.unauthorized(if self.creds.given() {
                        "the token service refused the username and password"
                    } else {
                        "the token service requires a username and password"
                    }));
                }
                let resp = self.check(resp, "token")?;
                #[derive(serde::Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: String,
                    #[serde(default)]
                    access_token: String,
                }
                let mut body = Vec::new();
                resp.take(1 << 20)
                    .read_to_end(&mut body)
                    .map_err(|e| self.err(format!("reading token: {e}")))?;
                let t: Token = serde_json::from_slice(&body)
                    .map_err(|e| self.err(format!("token service answer: {e}")))?;
                let token = if t.token.is_empty() {
                    t.access_token
                } else {
                    t.token
                };
                if token.is_empty() {
                    return Err(self.err("token service answered no token"));
                }
                *self.auth.lock().expect("auth lock") = Auth::Bearer(token);
                Ok(())
            }
            _ => Err(self.unauthorized(&format!(
                "unsupported authentication challenge {challenge:?}"
            ))),
        }
    }
}

/// `Bearer realm="https://a",service="b",scope="c"` -> ("Bearer", [(realm, https://a), ...]).
pub(crate) fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some(eq) = s.find('=') else { break };
        let key = s[..eq].trim().trim_start_matches(',').trim().to_string();
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(q) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            s = &q[end.min(q.len())..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        s = s.trim_start().trim_start_matches(',').trim_start();
        params.push((key, value));
    }
    (scheme.to_string(), params)
}

/// An error with its causes, since reqwest's top-level message rarely says what failed.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.docker.io/token".into()),
                ("service".into(), "registry.docker.io".into()),
                ("scope".into(), "repository:library/busybox:pull".into()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p, vec![("realm".into(), "Registry Realm".into())]);
        let (_, p) = parse_challenge(r#"Bearer realm=x, scope="a,b""#);
        assert_eq!(
            p,
            vec![("realm".into(), "x".into()), ("scope".into(), "a,b".into())]
        );
    }

    #[test]
    fn insecure_matching() {
        let list = vec!["127.0.0.1:5000".to_string(), "reg.local".to_string()];
        assert!(is_insecure(&list, "127.0.0.1:5000"));
        assert!(!is_insecure(&list, "127.0.0.1:5001"));
        assert!(is_insecure(&list, "reg.local:443"));
        assert!(!is_insecure(&list, "registry-1.docker.io"));
    }
}
