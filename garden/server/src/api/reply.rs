//! Replies as bytes. The one place where a [`GardenError`] becomes a status and a body.

use garden_api::{to_wire, GardenError};

use crate::http::{HttpError, ResponseHead};

/// `Connection: close` on plain routes; none on hijacked ones, whose error replies must keep the
/// Go client's persistent-connection reader happy (spec §2.2).
fn framing(head: ResponseHead, hijacked: bool) -> ResponseHead {
    if hijacked {
        head
    } else {
        head.close()
    }
}

/// 200 with a JSON body already in wire form.
pub fn json_response(body: &[u8]) -> Vec<u8> {
    framing(
        ResponseHead::new(200)
            .header("Content-Type", "application/json")
            .date(),
        false,
    )
    .with_body(body)
}

/// A Garden error: 404 for the two not-found types, else 500, and the five-key body.
pub fn error_response(err: &GardenError, hijacked: bool) -> Vec<u8> {
    error_with_status(err.http_status(), err, hijacked)
}

fn error_with_status(status: u16, err: &GardenError, hijacked: bool) -> Vec<u8> {
    let body = err.to_body();
    // Plain errors have no Garden kind: count them by status instead.
    let kind = if body.kind.is_empty() {
        format!("status_{status}")
    } else {
        body.kind.clone()
    };
    crate::telemetry::metrics().error(&kind);
    let head = ResponseHead::new(status)
        .header("Content-Type", "application/json")
        .date();
    framing(head, hijacked).with_body(&to_wire(&body))
}

/// Go's `http.NotFound`.
pub fn not_found_response() -> Vec<u8> {
    text_response(404, "404 page not found")
}

/// What Go's router answers for a known path with the wrong method.
pub fn method_not_allowed_response(allowed: &[&str]) -> Vec<u8> {
    let head = ResponseHead::new(405).header("Allow", allowed.join(", "));
    text_head(head, "Method Not Allowed")
}

/// A request that could not be read. An oversized body gets a Garden error body, since a
/// client may be waiting for one; malformed framing gets plain text like Go's server.
pub fn http_error_response(status: u16, err: &HttpError, hijacked: bool) -> Vec<u8> {
    if status == 413 {
        return error_with_status(413, &GardenError::generic(err.to_string()), hijacked);
    }
    text_response(
        status,
        &format!("{} {}: {err}", status, crate::http::reason_phrase(status)),
    )
}

fn text_response(status: u16, text: &str) -> Vec<u8> {
    text_head(ResponseHead::new(status), text)
}

fn text_head(head: ResponseHead, text: &str) -> Vec<u8> {
    let head = head
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("X-Content-Type-Options", "nosniff")
        .date()
        .close();
    head.with_body(format!("{text}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drop the `Date` line, whose value changes.
    fn without_date(bytes: &[u8]) -> String {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        text.split("\r\n")
            .filter(|l| !l.starts_with("Date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    #[test]
    fn error_bodies_and_framing() {
        let bytes = error_response(&GardenError::container_not_found("foo"), false);
        let body = r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: foo","Handle":"foo","ProcessID":"","Binary":""}"#;
        assert_eq!(
            without_date(&bytes),
            format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n", body.len() + 1)
        );
        let bytes = error_response(&GardenError::generic("boom"), true);
        let text = without_date(&bytes);
        assert!(
            text.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{text}"
        );
        assert!(!text.contains("Connection"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"Type\":\"\",\"Message\":\"boom\",\"Handle\":\"\",\"ProcessID\":\"\",\"Binary\":\"\"}\n"));
    }

    #[test]
    fn text_replies() {
        assert!(without_date(&not_found_response())
            .ends_with("Content-Length: 19\r\nConnection: close\r\n\r\n404 page not found\n"));
        let text = without_date(&method_not_allowed_response(&["GET", "PUT"]));
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, PUT\r\n"),
            "{text}"
        );
    }
}
