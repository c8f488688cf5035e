//! Garden's error body and the typed errors it carries.
//!
//! Only the body's `Type` selects the error on the client side; the HTTP status is chosen here,
//! in one place, for the server.

use serde::{Deserialize, Serialize};

use crate::de::null;

/// The JSON body of every error reply. All five keys are always present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "Type", default, deserialize_with = "null")]
    pub kind: String,
    #[serde(rename = "Message", default, deserialize_with = "null")]
    pub message: String,
    #[serde(rename = "Handle", default, deserialize_with = "null")]
    pub handle: String,
    #[serde(rename = "ProcessID", default, deserialize_with = "null")]
    pub process_id: String,
    #[serde(rename = "Binary", default, deserialize_with = "null")]
    pub binary: String,
}

/// A typed Garden error, as both sides see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GardenError {
    #[error("unknown handle: {handle}")]
    ContainerNotFound { handle: String },
    #[error("unknown process: {process_id}")]
    ProcessNotFound { process_id: String },
    #[error("{message}")]
    ExecutableNotFound { message: String },
    #[error("{message}")]
    ServiceUnavailable { message: String },
    #[error("{message}")]
    Unrecoverable { message: String },
    /// Everything else: `"Type":""`, status 500.
    #[error("{message}")]
    Generic { message: String },
    /// A request the server refuses before doing anything (malformed JSON, a limit out of
    /// range): a generic body (`"Type":""`, so Go clients see a plain error) with status 400.
    /// The client decodes it as [`GardenError::Generic`], since only `Type` travels.
    #[error("{message}")]
    BadRequest { message: String },
}

impl GardenError {
    pub fn generic(message: impl Into<String>) -> Self {
        GardenError::Generic {
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        GardenError::BadRequest {
            message: message.into(),
        }
    }

    pub fn container_not_found(handle: impl Into<String>) -> Self {
        GardenError::ContainerNotFound {
            handle: handle.into(),
        }
    }

    pub fn process_not_found(process_id: impl Into<String>) -> Self {
        GardenError::ProcessNotFound {
            process_id: process_id.into(),
        }
    }

    /// The status the Go server answers with: 404 for the two not-found types, else 500;
    /// 400 for a request refused up front.
    pub fn http_status(&self) -> u16 {
        match self {
            GardenError::ContainerNotFound { .. } | GardenError::ProcessNotFound { .. } => 404,
            GardenError::BadRequest { .. } => 400,
            _ => 500,
        }
    }

    pub fn to_body(&self) -> ErrorBody {
        let message = self.to_string();
        match self {
            GardenError::ContainerNotFound { handle } => ErrorBody {
                kind: "ContainerNotFoundError".into(),
                message,
                handle: handle.clone(),
                ..Default::default()
            },
            GardenError::ProcessNotFound { process_id } => ErrorBody {
                kind: "ProcessNotFoundError".into(),
                message,
                process_id: process_id.clone(),
                ..Default::default()
            },
            GardenError::ExecutableNotFound { .. } => ErrorBody {
                kind: "ExecutableNotFoundError".into(),
                message,
                ..Default::default()
            },
            GardenError::ServiceUnavailable { .. } => ErrorBody {
                kind: "ServiceUnavailableError".into(),
                message,
                ..Default::default()
            },
            GardenError::Unrecoverable { .. } => ErrorBody {
                kind: "UnrecoverableError".into(),
                message,
                ..Default::default()
            },
            GardenError::Generic { .. } | GardenError::BadRequest { .. } => ErrorBody {
                message,
                ..Default::default()
            },
        }
    }

    /// How the Go client decodes a body: by `Type` only.
    pub fn from_body(body: ErrorBody) -> Self {
        match body.kind.as_str() {
            "ContainerNotFoundError" => GardenError::ContainerNotFound {
                handle: body.handle,
            },
            "ProcessNotFoundError" => GardenError::ProcessNotFound {
                process_id: body.process_id,
            },
            "ExecutableNotFoundError" => GardenError::ExecutableNotFound {
                message: body.message,
            },
            "ServiceUnavailableError" => GardenError::ServiceUnavailable {
                message: body.message,
            },
            "UnrecoverableError" => GardenError::Unrecoverable {
                message: body.message,
            },
            _ => GardenError::Generic {
                message: body.message,
            },
        }
    }
}

impl From<ErrorBody> for GardenError {
    fn from(body: ErrorBody) -> Self {
        GardenError::from_body(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_not_found_body() {
        let body = GardenError::container_not_found("foo").to_body();
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: foo","Handle":"foo","ProcessID":"","Binary":""}"#
        );
        assert_eq!(
            GardenError::from_body(body),
            GardenError::container_not_found("foo")
        );
    }

    #[test]
    fn generic_body_and_status() {
        let e = GardenError::generic("Handle 'x' already in use");
        assert_eq!(e.http_status(), 500);
        assert_eq!(e.to_body().kind, "");
        assert_eq!(GardenError::process_not_found("p").http_status(), 404);
        let e = GardenError::bad_request("pid limit out of range");
        assert_eq!((e.http_status(), e.to_body().kind.as_str()), (400, ""));
        assert_eq!(
            GardenError::from_body(e.to_body()),
            GardenError::generic("pid limit out of range")
        );
    }
}
