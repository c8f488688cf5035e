//! The client's error type.

use garden_api::GardenError;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A typed error decoded from the server's error body (selected by its `Type`).
    #[error(transparent)]
    Garden(#[from] GardenError),
    /// The connection failed: dialing, writing the request, or reading the reply.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The server answered something we cannot use: bad JSON, a malformed head, an early close.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The typed Garden error, when the server sent one.
    pub fn garden(&self) -> Option<&GardenError> {
        match self {
            ClientError::Garden(e) => Some(e),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }

    /// A copy for `Process::wait`, which caches its result (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            ClientError::Garden(e) => ClientError::Garden(e.clone()),
            ClientError::Io { context, source } => ClientError::Io {
                context: context.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            ClientError::Protocol(m) => ClientError::Protocol(m.clone()),
        }
    }
}
