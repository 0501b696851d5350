use sidewhale_core::{ExecutorError, ImageError};

/// A failed daemon operation, classified as Docker classifies errors so
/// that the API returns Docker's status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidParameter(String),
    /// The operation is not allowed in the current state (HTTP 403).
    #[error("{0}")]
    Forbidden(String),
    /// The container is already in the requested state (HTTP 304).
    #[error("container is already in the requested state")]
    NotModified,
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn no_such_container(name: &str) -> Error {
        Error::NotFound(format!("No such container: {name}"))
    }

    pub fn internal(context: &str, error: impl std::fmt::Display) -> Error {
        Error::Internal(format!("{context}: {error}"))
    }
}

impl From<ImageError> for Error {
    fn from(error: ImageError) -> Error {
        match error {
            ImageError::NoSuchImage(_) | ImageError::NotFound(_) | ImageError::Unauthorized(_) => {
                Error::NotFound(error.to_string())
            }
            ImageError::NoMatchingPlatform { .. } => Error::NotFound(error.to_string()),
            // A stored layer that cannot be stacked is a bad image, which
            // pulling it again or another image fixes, not a daemon fault.
            ImageError::Reference(_) | ImageError::InvalidLayer { .. } => {
                Error::InvalidParameter(error.to_string())
            }
            ImageError::Conflict(_) => Error::Conflict(error.to_string()),
            _ => Error::Internal(error.to_string()),
        }
    }
}

impl From<ExecutorError> for Error {
    fn from(error: ExecutorError) -> Error {
        match error {
            ExecutorError::NotFound(_)
            | ExecutorError::NotExecutable(_)
            | ExecutorError::UnknownUser(_)
            | ExecutorError::InvalidWorkingDir(_) => Error::InvalidParameter(error.to_string()),
            _ => Error::Internal(error.to_string()),
        }
    }
}
