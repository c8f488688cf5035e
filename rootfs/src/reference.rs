//! Image references in Garden's URI forms: `docker://[host[:port]]/repo[:tag|@digest][#tag]`,
//! `oci:///path/to/layout[#tag]` and
//! `preloaded+layer:///base?layer=URL&layer_path=P&layer_digest=sha256:HEX`.
//!
//! Parsing is strict (Docker's grammar for repository names, tags and digests), so a bad
//! reference fails before anything touches the network or the store.

use std::fmt;
use std::path::PathBuf;

use crate::digest::Digest;

/// Docker Hub's canonical name and the host its API lives on.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A tag or a content digest in a registry reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tagged {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Tagged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tagged::Tag(t) => f.write_str(t),
            Tagged::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A registry image: `registry` is `host[:port]` as the user wrote it (`docker.io` for the
/// default registry), `repository` has Docker Hub's `library/` added to single names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    pub registry: String,
    pub repository: String,
    pub reference: Tagged,
}

impl DockerRef {
    /// The host[:port] the registry API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for DockerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Tagged::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Tagged::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Docker(DockerRef),
    /// A local OCI image layout and the `org.opencontainers.image.ref.name` to pick.
    OciLayout {
        path: PathBuf,
        tag: String,
    },
    /// Diego's droplet layer (a gzipped tarball unpacked at `layer_path`) on top of a
    /// preloaded rootfs directory.
    PreloadedLayer {
        base: PathBuf,
        layer_url: String,
        layer_path: String,
        layer_digest: Digest,
    },
}

/// Parses the registry, OCI layout and preloaded-layer forms; `Ok(None)` for any other scheme
/// (local paths, `raw://`, ...), which [`crate::image::resolve`] handles. `Err` is a reason.
pub fn parse(uri: &str) -> Result<Option<ImageSource>, String> {
    if let Some(rest) = uri.strip_prefix("docker://") {
        return parse_docker(rest).map(|r| Some(ImageSource::Docker(r)));
    }
    if let Some(rest) = uri.strip_prefix("oci://") {
        let (path, tag) = match rest.split_once('#') {
            Some((p, t)) => (p, t),
            None => (rest, ""),
        };
        let path = local_path(path)?;
        let tag = if tag.is_empty() { "latest" } else { tag };
        if tag.chars().any(|c| c.is_control()) {
            return Err("the tag holds control characters".into());
        }
        return Ok(Some(ImageSource::OciLayout {
            path,
            tag: tag.to_string(),
        }));
    }
    if let Some(rest) = uri.strip_prefix("preloaded+layer://") {
        return parse_preloaded(rest).map(Some);
    }
    Ok(None)
}

/// `[host[:port]]/repo[:tag|@digest][#tag]`.
fn parse_docker(rest: &str) -> Result<DockerRef, String> {
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let Some((host, path)) = rest.split_once('/') else {
        return Err("expected docker:///repository#tag or docker://host/repository#tag".into());
    };
    let registry = if host.is_empty() {
        DOCKER_HUB.to_string()
    } else {
        validate_host(host)?;
        match host {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            h => h.to_string(),
        }
    };
    // `repo@sha256:...` or `repo:tag` (a colon after the last slash).
    let (name, inline) = if let Some((n, d)) = path.split_once('@') {
        let digest = Digest::parse(d).map_err(|e| format!("bad digest {d:?}: {e}"))?;
        (n, Some(Tagged::Digest(digest)))
    } else {
        match path.rfind(':') {
            Some(i) if !path[i..].contains('/') => {
                (&path[..i], Some(Tagged::Tag(path[i + 1..].to_string())))
            }
            _ => (path, None),
        }
    };
    let reference = match (inline, fragment) {
        (Some(_), Some(_)) => {
            return Err("give the tag either after ':' / '@' or after '#', not both".into())
        }
        (Some(r), None) => r,
        (None, Some("")) | (None, None) => Tagged::Tag("latest".into()),
        (None, Some(f)) => Tagged::Tag(f.to_string()),
    };
    if let Tagged::Tag(t) = &reference {
        validate_tag(t)?;
    }
    validate_repository(name)?;
    let repository = if registry == DOCKER_HUB && !name.contains('/') {
        format!("library/{name}")
    } else {
        name.to_string()
    };
    Ok(DockerRef {
        registry,
        repository,
        reference,
    })
}

fn parse_preloaded(rest: &str) -> Result<ImageSource, String> {
    let (path, query) = rest.split_once('?').ok_or(
        "expected preloaded+layer:///base?layer=URL&layer_path=PATH&layer_digest=sha256:HEX",
    )?;
    let base = local_path(path)?;
    let (mut layer, mut layer_path, mut digest) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("bad percent-encoding in {k}"))?;
        match k {
            "layer" => layer = Some(v),
            "layer_path" => layer_path = Some(v),
            "layer_digest" => digest = Some(v),
            _ => {}
        }
    }
    let layer_url = layer.ok_or("missing layer=URL")?;
    if !(layer_url.starts_with("http://") || layer_url.starts_with("https://")) {
        return Err(format!("layer {layer_url:?} is not an http(s) URL"));
    }
    let layer_path = layer_path.ok_or("missing layer_path=PATH")?;
    if !layer_path.starts_with('/') || layer_path.split('/').any(|c| c == "..") {
        return Err(format!(
            "layer_path {layer_path:?} must be absolute, without '..'"
        ));
    }
    let d = digest.ok_or("missing layer_digest=sha256:HEX")?;
    // Diego passes the bare hex as often as the prefixed form.
    let prefixed = if d.contains(':') {
        d.clone()
    } else {
        format!("sha256:{d}")
    };
    let layer_digest = Digest::parse(&prefixed).map_err(|e| format!("layer_digest {d:?}: {e}"))?;
    Ok(ImageSource::PreloadedLayer {
        base,
        layer_url,
        layer_path,
        layer_digest,
    })
}

/// The absolute path of `//` + empty host URIs (`oci:///p`, `preloaded+layer:///p`).
fn local_path(rest: &str) -> Result<PathBuf, String> {
    let Some(path) = rest.strip_prefix('/') else {
        return Err("expected an empty host and an absolute path (three slashes)".into());
    };
    let path = format!("/{path}");
    let path = percent_decode(&path).ok_or("bad percent-encoding")?;
    if path == "/" {
        return Err("no path given".into());
    }
    Ok(PathBuf::from(path))
}

fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("bad port in registry {host:?}"))?;
    }
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !name.starts_with(['-', '.'])
        && !name.ends_with('-');
    if !ok {
        return Err(format!("bad registry host {host:?}"));
    }
    Ok(())
}

/// Docker's name grammar: `/`-separated components of `[a-z0-9]` runs joined by one `.`,
/// one or two `_`, or any number of `-`.
fn validate_repository(name: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("bad repository name {name:?}: {why}"));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 characters");
    }
    for comp in name.split('/') {
        if comp.is_empty() {
            return bad("empty path component");
        }
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return bad("components start and end with a lower-case letter or digit");
        }
        let mut i = 0;
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return bad("only lower-case letters, digits and single separators (. _ __ -)");
            }
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("bad tag {tag:?}"))
    }
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docker(uri: &str) -> DockerRef {
        match parse(uri) {
            Ok(Some(ImageSource::Docker(r))) => r,
            other => panic!("{uri}: {other:?}"),
        }
    }

    fn tag(t: &str) -> Tagged {
        Tagged::Tag(t.into())
    }

    #[test]
    fn docker_hub_names_get_library() {
        let r = docker("docker:///busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.reference, tag("latest"));
        assert_eq!(
            docker("docker:///cloudfoundry/cflinuxfs4#1.2").repository,
            "cloudfoundry/cflinuxfs4"
        );
        assert_eq!(docker("docker:///busybox#1.36").reference, tag("1.36"));
        assert_eq!(docker("docker:///busybox:1.36").reference, tag("1.36"));
        assert_eq!(
            docker("docker://index.docker.io/busybox").repository,
            "library/busybox"
        );
    }

    #[test]
    fn other_registries_keep_names_and_ports() {
        let r = docker("docker://127.0.0.1:5000/team/app#v1");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.reference, tag("v1"));
        let r = docker("docker://reg.example.com/app:v2");
        assert_eq!(r.repository, "app");
        assert_eq!(r.reference, tag("v2"));
        let hex = "a".repeat(64);
        let r = docker(&format!("docker://reg:5000/app@sha256:{hex}"));
        assert_eq!(
            r.reference,
            Tagged::Digest(Digest::parse(&format!("sha256:{hex}")).unwrap())
        );
        assert_eq!(r.to_string(), format!("reg:5000/app@sha256:{hex}"));
    }

    #[test]
    fn bad_docker_references_fail() {
        for uri in [
            "docker://",
            "docker:///",
            "docker://host",
            "docker:///Busybox",
            "docker:///a//b",
            "docker:///a#bad tag",
            "docker:///a:t1#t2",
            "docker:///a@sha256:abc",
            "docker:///a@md5:0123",
            "docker://bad_host/a",
            "docker://host:0/a",
            "docker://host:99999/a",
            "docker:///-a",
            "docker:///a..b",
        ] {
            assert!(parse(uri).is_err(), "{uri} should fail");
        }
    }

    #[test]
    fn oci_layouts_default_to_latest() {
        assert_eq!(
            parse("oci:///images/app").unwrap(),
            Some(ImageSource::OciLayout {
                path: "/images/app".into(),
                tag: "latest".into()
            })
        );
        assert_eq!(
            parse("oci:///images/my%20app#v1").unwrap(),
            Some(ImageSource::OciLayout {
                path: "/images/my app".into(),
                tag: "v1".into()
            })
        );
        assert!(parse("oci://host/images").is_err());
        assert!(parse("oci:///").is_err());
    }

    #[test]
    fn preloaded_layers() {
        let hex = "b".repeat(64);
        let uri = format!(
            "preloaded+layer:///var/rootfs?layer=http%3A%2F%2Ff%2Fd.tgz&layer_path=/home/vcap&layer_digest={hex}"
        );
        match parse(&uri).unwrap() {
            Some(ImageSource::PreloadedLayer {
                base,
                layer_url,
                layer_path,
                layer_digest,
            }) => {
                assert_eq!(base, PathBuf::from("/var/rootfs"));
                assert_eq!(layer_url, "http://f/d.tgz");
                assert_eq!(layer_path, "/home/vcap");
                assert_eq!(layer_digest.hex(), hex);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "preloaded+layer:///r".to_string(),
            format!("preloaded+layer:///r?layer=http://x&layer_digest={hex}"),
            format!("preloaded+layer:///r?layer=ftp://x&layer_path=/a&layer_digest={hex}"),
            format!("preloaded+layer:///r?layer=http://x&layer_path=a/..&layer_digest={hex}"),
            "preloaded+layer:///r?layer=http://x&layer_path=/a&layer_digest=sha256:1".to_string(),
        ] {
            assert!(parse(&bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn other_schemes_are_not_ours() {
        assert_eq!(parse("/a/b").unwrap(), None);
        assert_eq!(parse("raw:///a").unwrap(), None);
    }
}
