//! The receiving end of the agent's droplet and build-cache uploads: a multipart/form-data
//! body (RFC 7578) with the file in the field `upload[droplet]`, as a Cloud Controller gets it.
//! Bodies are whole in memory (a droplet is tens of MB), so parsing is a scan for delimiters.

/// One part of a multipart body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    pub name: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    #[error("Content-Type is not multipart/form-data with a boundary")]
    NotMultipart,
    #[error("no opening boundary")]
    NoOpening,
    #[error("part {0}: headers do not end")]
    Headers(usize),
    #[error("part {0}: no Content-Disposition with a name")]
    NoName(usize),
    #[error("part {0}: no closing boundary")]
    Unterminated(usize),
}

/// The boundary of a `multipart/form-data; boundary=...` Content-Type (quoted or not).
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let kind = params.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty() && v.len() <= 200).then(|| v.to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if from > hay.len() || needle.is_empty() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Every part of `body`.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, MultipartError> {
    let opening = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // The preamble may be empty (body starts with the boundary) or end with CRLF.
    let mut pos = if body.starts_with(opening.as_bytes()) {
        opening.len()
    } else {
        find(body, delimiter.as_bytes(), 0).ok_or(MultipartError::NoOpening)? + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let i = parts.len();
        // After a boundary: `--` ends the body, else optional whitespace then CRLF.
        if body[pos..].starts_with(b"--") {
            return Ok(parts);
        }
        while matches!(body.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        if !body[pos..].starts_with(b"\r\n") {
            return Err(MultipartError::Unterminated(i));
        }
        pos += 2;
        let (head, data_start) = if body[pos..].starts_with(b"\r\n") {
            (std::borrow::Cow::Borrowed(""), pos + 2)
        } else {
            let end = find(body, b"\r\n\r\n", pos).ok_or(MultipartError::Headers(i))?;
            (String::from_utf8_lossy(&body[pos..end]), end + 4)
        };
        let data_end =
            find(body, delimiter.as_bytes(), data_start).ok_or(MultipartError::Unterminated(i))?;
        let (mut name, mut filename, mut content_type) = (None, None, None);
        for line in head.split("\r\n") {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-disposition") {
                name = disposition_param(v, "name");
                filename = disposition_param(v, "filename");
            } else if k.eq_ignore_ascii_case("content-type") {
                content_type = Some(v.trim().to_string());
            }
        }
        parts.push(Part {
            name: name.ok_or(MultipartError::NoName(i))?,
            filename,
            content_type,
            data: &body[data_start..data_end],
        });
        pos = data_end + delimiter.len();
    }
}

/// `name="x"` (quoted, with `\"` escapes) or `name=x` from a Content-Disposition value.
fn disposition_param(value: &str, key: &str) -> Option<String> {
    let mut rest = value;
    while let Some(semi) = rest.find(';') {
        rest = rest[semi + 1..].trim_start();
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        if k.trim().eq_ignore_ascii_case(key) {
            let v = v.trim_start();
            if let Some(q) = v.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = q.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => out.extend(chars.next()),
                        '"' => return Some(out),
                        c => out.push(c),
                    }
                }
                return None;
            }
            return Some(v.split(';').next().unwrap_or("").trim().to_string());
        }
    }
    None
}

/// The data of the field `name` in a body of `content_type`.
pub fn field<'a>(
    content_type: &str,
    body: &'a [u8],
    name: &str,
) -> Result<Option<Part<'a>>, MultipartError> {
    let b = boundary(content_type).ok_or(MultipartError::NotMultipart)?;
    Ok(parse(body, &b)?.into_iter().find(|p| p.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(boundary: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, data) in parts {
            b.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match file {
                Some(f) => b.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => b.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        b
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc123").as_deref(),
            Some("abc123")
        );
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; BOUNDARY=\"q\"").as_deref(),
            Some("q")
        );
        assert_eq!(boundary("application/octet-stream; boundary=x"), None);
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
    }

    #[test]
    fn the_droplet_field_is_found_among_others_with_binary_data() {
        // Data that contains CRLFs, dashes and a near-boundary must come back byte for byte.
        let droplet: Vec<u8> = (0..=255u8)
            .chain(b"\r\n--bound\r\n-- \r\n\r\n".iter().copied())
            .chain((0..=255u8).rev())
            .collect();
        let b = body(
            "boundary42",
            &[
                ("async", None, b"true"),
                ("upload[droplet]", Some("droplet.tgz"), &droplet),
                ("other", Some("x.bin"), b""),
            ],
        );
        let ct = "multipart/form-data; boundary=boundary42";
        let part = field(ct, &b, "upload[droplet]").unwrap().unwrap();
        assert_eq!(part.data, &droplet[..]);
        assert_eq!(part.filename.as_deref(), Some("droplet.tgz"));
        assert_eq!(
            part.content_type.as_deref(),
            Some("application/octet-stream")
        );
        let all = parse(&b, "boundary42").unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].name, "async");
        assert_eq!(all[0].data, b"true");
        assert_eq!(all[2].data, b"");
        assert_eq!(field(ct, &b, "missing").unwrap(), None);
    }

    #[test]
    fn a_preamble_and_lowercase_headers_are_accepted() {
        let mut b = b"this is a preamble\r\n".to_vec();
        b.extend_from_slice(
            b"--XyZ\r\ncontent-disposition: form-data; name=upload[droplet]; filename=d.tgz\r\n\r\nDATA\r\n--XyZ--",
        );
        let part = field("multipart/form-data; boundary=XyZ", &b, "upload[droplet]")
            .unwrap()
            .unwrap();
        assert_eq!(part.data, b"DATA");
        assert_eq!(part.filename.as_deref(), Some("d.tgz"));
    }

    #[test]
    fn bad_bodies_are_errors() {
        let ct = "multipart/form-data; boundary=b";
        assert_eq!(
            field("text/plain", b"", "x"),
            Err(MultipartError::NotMultipart)
        );
        assert_eq!(
            field(ct, b"nothing here", "x"),
            Err(MultipartError::NoOpening)
        );
        assert_eq!(
            field(
                ct,
                b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\ncut off",
                "x"
            ),
            Err(MultipartError::Unterminated(0))
        );
        assert_eq!(
            field(
                ct,
                b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--",
                "x"
            ),
            Err(MultipartError::NoName(0))
        );
        assert_eq!(
            field(
                ct,
                b"--b\r\nContent-Disposition: form-data; name=\"x\"",
                "x"
            ),
            Err(MultipartError::Headers(0))
        );
    }

    #[test]
    fn reqwest_style_bodies_parse() {
        // What a multipart client writes: boundary in the header, CRLF after the last one.
        let b = body(
            "7f3c2a",
            &[("upload[droplet]", Some("droplet.tgz"), b"\x1f\x8b\x08")],
        );
        let part = field(
            "multipart/form-data; boundary=7f3c2a",
            &b,
            "upload[droplet]",
        )
        .unwrap()
        .unwrap();
        assert_eq!(part.data, b"\x1f\x8b\x08");
    }
}
