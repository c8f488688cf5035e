//! One clear line per failure: the server's typed error in words, or what went wrong locally.

use garden_api::GardenError;
use garden_client::ClientError;

/// A typed server error as a person wants to read it.
pub fn garden_error(e: &GardenError) -> String {
    match e {
        GardenError::ContainerNotFound { handle } => format!("container not found: {handle}"),
        GardenError::ProcessNotFound { process_id } => format!("process not found: {process_id}"),
        GardenError::ExecutableNotFound { message } if message.is_empty() => {
            "executable not found".into()
        }
        GardenError::ExecutableNotFound { message } => {
            if message.contains("not found") {
                message.clone()
            } else {
                format!("executable not found: {message}")
            }
        }
        GardenError::ServiceUnavailable { message } => format!("service unavailable: {message}"),
        GardenError::Unrecoverable { message } => {
            format!("server is in an unrecoverable state: {message}")
        }
        GardenError::Generic { message } if message.is_empty() => {
            "the server failed without a message".into()
        }
        GardenError::Generic { message } | GardenError::BadRequest { message } => message.clone(),
    }
}

/// A client error; `target` adds a hint when the server cannot be reached at all.
pub fn client_error(e: &ClientError, target: Option<&str>) -> String {
    match e {
        ClientError::Garden(g) => garden_error(g),
        ClientError::Io { source, .. }
            if matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AddrNotAvailable
            ) && target.is_some() =>
        {
            format!(
                "cannot reach gardend at {}: {e} (is it running? set --target or GARDEN_TARGET)",
                target.unwrap_or_default()
            )
        }
        other => other.to_string(),
    }
}

/// The whole chain of an error as one line, with the client error (if any) in words.
pub fn describe(err: &anyhow::Error, target: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(ce) = cause.downcast_ref::<ClientError>() {
            parts.push(client_error(ce, Some(target)));
            break;
        }
        let text = cause.to_string();
        // Many errors repeat their source in their own message; say it once.
        if !parts.last().is_some_and(|p| p.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_read_well() {
        assert_eq!(
            garden_error(&GardenError::container_not_found("foo")),
            "container not found: foo"
        );
        assert_eq!(
            garden_error(&GardenError::process_not_found("p1")),
            "process not found: p1"
        );
        assert_eq!(
            garden_error(&GardenError::generic("Handle 'x' already in use")),
            "Handle 'x' already in use"
        );
        let e = anyhow::Error::new(ClientError::Garden(GardenError::container_not_found("foo")));
        assert_eq!(
            describe(&e.context("info"), "127.0.0.1:1"),
            "info: container not found: foo"
        );
    }

    #[test]
    fn unreachable_server_gets_a_hint() {
        let e = ClientError::Io {
            context: "connect 127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        let text = client_error(&e, Some("127.0.0.1:1"));
        assert!(
            text.starts_with("cannot reach gardend at 127.0.0.1:1"),
            "{text}"
        );
    }
}
