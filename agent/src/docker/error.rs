//! The driver's one error type. Every message says what was attempted, on what, and why it
//! failed, so it can go straight into a log line or a status report.

use std::path::PathBuf;

/// What went wrong talking to the Docker engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine's socket is missing or does not answer.
    #[error(
        "cannot reach the Docker engine at {}: {reason}; is dockerd running (check `docker info`)?",
        socket.display()
    )]
    Connect { socket: PathBuf, reason: String },

    /// An image is not present locally and pulling it failed.
    #[error("image {image} is not present and could not be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },

    /// An image the container needs is not present locally (nothing tried to pull it).
    #[error(
        "image {image} for container {container} is not present locally; pull it first ({reason})"
    )]
    ImageMissing {
        image: String,
        container: String,
        reason: String,
    },

    /// The container spec cannot be expressed as a Docker container (it should have been
    /// refused by validation already).
    #[error("container {container}: {reason}")]
    InvalidSpec { container: String, reason: String },

    /// A container with that name already exists.
    #[error("a container named {name} already exists: {reason}")]
    NameConflict { name: String, reason: String },

    /// The container does not exist (any more).
    #[error("container {container} does not exist: {reason}")]
    NotFound { container: String, reason: String },

    /// The container was created but would not start; it was removed again (`cleanup` says
    /// otherwise when that removal failed too).
    #[error("container {container} was created but failed to start: {reason}{}", cleanup_note(.cleanup))]
    StartFailed {
        container: String,
        reason: String,
        cleanup: Option<String>,
    },

    /// A `docker save` tarball could not be read or loaded.
    #[error("loading images from {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },

    /// Any other failed engine call; `op` says which (e.g. "list containers").
    #[error("Docker engine: {op} failed: {reason}")]
    Engine { op: String, reason: String },
}

fn cleanup_note(cleanup: &Option<String>) -> String {
    match cleanup {
        None => " (the container was removed again)".to_string(),
        Some(e) => {
            format!(" (removing it again also failed, a leftover container may remain: {e})")
        }
    }
}

impl DockerError {
    /// True when the error means "no such container".
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::NotFound { .. })
    }

    pub(super) fn engine(op: impl Into<String>, e: &bollard::errors::Error) -> Self {
        DockerError::Engine {
            op: op.into(),
            reason: describe(e),
        }
    }
}

/// The HTTP status of an engine response error, if that is what `e` is.
pub(super) fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The useful part of a bollard error: the engine's own message when there is one.
pub(super) fn describe(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error as E;
    match e {
        E::DockerResponseServerError {
            status_code,
            message,
        } => {
            let message = message.trim();
            if message.is_empty() {
                format!("the engine answered HTTP {status_code}")
            } else {
                format!("{message} (HTTP {status_code})")
            }
        }
        E::DockerStreamError { error } => error.trim().to_string(),
        E::RequestTimeoutError => "the engine did not answer in time".to_string(),
        other => other.to_string(),
    }
}
