//! Images: references, configuration, and the `ImageSource` trait.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// The registry Docker assumes when a reference names none.
pub const DOCKER_HUB: &str = "docker.io";

/// A normalised image reference, as Docker understands one.
///
/// `redis` becomes `docker.io/library/redis:latest`, and
/// `localhost:5000/app@sha256:…` keeps its registry and digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reference {
    /// Registry host with optional port, `docker.io` for Docker Hub.
    pub registry: String,
    /// Repository path, with `library/` added for official Hub images.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `sha256:` followed by 64 hex digits.
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid reference format: {reason}: {text:?}")]
pub struct ReferenceError {
    pub text: String,
    pub reason: &'static str,
}

impl Reference {
    /// Parses and normalises a reference such as `redis`, `redis:7`,
    /// `user/app`, `host:5000/team/app:1.0` or `app@sha256:…`.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        let invalid = |reason| ReferenceError { text: text.to_string(), reason };
        if text.is_empty() || text.len() > 4096 {
            return Err(invalid("empty or too long"));
        }

        let (name_and_tag, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(digest)),
            None => (text, None),
        };
        if let Some(digest) = digest {
            if !is_digest(digest) {
                return Err(invalid("digest must be sha256: followed by 64 hex digits"));
            }
        }

        // A tag follows the last colon after the last slash; a colon before
        // it belongs to a registry port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |index| index + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(index) => {
                let split = last_slash + index;
                (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            if !is_tag(tag) {
                return Err(invalid("tag must be 1 to 128 of [A-Za-z0-9_.-], not starting with . or -"));
            }
        }

        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        if registry.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(invalid("registry host must be lowercase"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(is_path_component) {
            return Err(invalid("repository name must be lowercase path components"));
        }

        let tag = match (tag, digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_string()),
        };
        Ok(Reference { registry, repository, tag, digest: digest.map(str::to_string) })
    }

    /// Returns the repository in Docker's short form: `redis` for
    /// `docker.io/library/redis`, `user/app` for Hub user images, and the
    /// full name elsewhere.
    pub fn familiar_repository(&self) -> String {
        if self.registry == DOCKER_HUB {
            match self.repository.strip_prefix("library/") {
                Some(short) if !short.contains('/') => short.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// Returns `familiar_repository:tag`, the form in `RepoTags`, or the
    /// digest form when there is no tag.
    pub fn familiar(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(tag), _) => format!("{}:{tag}", self.familiar_repository()),
            (None, Some(digest)) => format!("{}@{digest}", self.familiar_repository()),
            (None, None) => self.familiar_repository(),
        }
    }

    /// Returns the same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference { tag: Some(tag.to_string()), digest: None, ..self.clone() }
    }
}

impl fmt::Display for Reference {
    /// Writes the fully qualified form, `registry/repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Checks a tag: 1 to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or
/// `-`.
pub fn is_valid_tag(text: &str) -> bool {
    is_tag(text)
}

fn is_tag(text: &str) -> bool {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-';
    !text.is_empty()
        && text.len() <= 128
        && !text.starts_with(['.', '-'])
        && text.chars().all(valid_char)
}

/// Checks one path component: lowercase alphanumerics joined by single
/// separators (`.`, `_`, `__`, or runs of `-`).
fn is_path_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        if alnum(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !alnum(bytes[index]) {
            index += 1;
        }
        let separator = &text[start..index];
        let dashes = separator.bytes().all(|b| b == b'-');
        if !(separator == "." || separator == "_" || separator == "__" || dashes) {
            return false;
        }
    }
    true
}

/// The `config` object of an image configuration, with Docker's field
/// names, so it parses from an OCI image config and renders into
/// `GET /images/{name}/json` unchanged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    pub user: Option<String>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub env: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub working_dir: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<serde_json::Value>,
    pub shell: Option<Vec<String>>,
}

/// An image in the local store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The digest of the image configuration blob, Docker's image id.
    pub id: String,
    /// Familiar `repository:tag` names pointing at this image.
    pub repo_tags: Vec<String>,
    /// Familiar `repository@digest` names of the manifests it came from.
    pub repo_digests: Vec<String>,
    /// RFC 3339 creation time from the image configuration.
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    pub config: ImageConfig,
    /// Digests of the compressed layer blobs, base layer first.
    pub layers: Vec<String>,
    /// Uncompressed layer digests (`rootfs.diff_ids`), base layer first.
    pub diff_ids: Vec<String>,
    /// Sum of the unpacked layer sizes in bytes.
    pub size: u64,
    /// The configuration's `history` array, kept for `docker history`.
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
}

/// One step of a pull, rendered by the server as a line of Docker's JSON
/// progress stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PullProgress {
    /// The short layer id (12 hex digits) or the tag; `None` for lines
    /// about the whole pull.
    pub id: Option<String>,
    /// Docker's wording: `Pulling fs layer`, `Downloading`, `Pull complete`.
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

impl PullProgress {
    pub fn status(status: impl Into<String>) -> Self {
        PullProgress { id: None, status: status.into(), current: None, total: None }
    }

    pub fn layer(id: &str, status: impl Into<String>) -> Self {
        PullProgress { id: Some(id.to_string()), status: status.into(), current: None, total: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry has no such repository or tag.
    #[error("manifest for {0} not found: manifest unknown")]
    NotFound(String),
    #[error("pull access denied for {0}, repository does not exist or may require authorization")]
    Unauthorized(String),
    #[error("no matching manifest for {platform} in the manifest list entries of {reference}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("digest mismatch for {reference}: expected {expected}, got {actual}")]
    DigestMismatch { reference: String, expected: String, actual: String },
    #[error("invalid layer {digest}: {reason}")]
    InvalidLayer { digest: String, reason: String },
    #[error("registry error for {reference}: {message}")]
    Registry { reference: String, message: String },
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("failed to {operation}: {source}")]
    Io {
        operation: String,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub fn io(operation: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io { operation: operation.into(), source }
    }
}

/// A source of images.
///
/// The bundled implementation pulls from OCI distribution registries into
/// a content-addressed store. Implement this to serve images from
/// somewhere else, such as a pre-populated directory in an air-gapped CI.
#[async_trait]
pub trait ImageSource: Send + Sync {
    /// Fetches `reference` and everything it needs into the local store,
    /// sending progress as it goes, and returns the stored image. Layers
    /// already in the store are neither downloaded nor unpacked again.
    async fn pull(
        &self,
        reference: &Reference,
        progress: mpsc::Sender<PullProgress>,
    ) -> Result<ImageRecord, ImageError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> String {
        Reference::parse(text).unwrap().to_string()
    }

    #[test]
    fn reference_normalises_hub_names() {
        assert_eq!(parsed("redis"), "docker.io/library/redis:latest");
        assert_eq!(parsed("redis:7"), "docker.io/library/redis:7");
        assert_eq!(parsed("user/app"), "docker.io/user/app:latest");
        assert_eq!(parsed("docker.io/redis"), "docker.io/library/redis:latest");
        assert_eq!(parsed("index.docker.io/library/redis:7"), "docker.io/library/redis:7");
    }

    #[test]
    fn reference_keeps_registry_port_and_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parsed("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(parsed("reg.example:5000/a/b:1.0"), "reg.example:5000/a/b:1.0");
        assert_eq!(parsed(&format!("app@{digest}")), format!("docker.io/library/app@{digest}"));
        assert_eq!(parsed(&format!("app:1@{digest}")), format!("docker.io/library/app:1@{digest}"));
    }

    #[test]
    fn reference_familiar_forms() {
        assert_eq!(Reference::parse("redis").unwrap().familiar(), "redis:latest");
        assert_eq!(Reference::parse("docker.io/user/app:2").unwrap().familiar(), "user/app:2");
        assert_eq!(Reference::parse("localhost:5000/app:1").unwrap().familiar(), "localhost:5000/app:1");
    }

    #[test]
    fn reference_rejects_invalid() {
        for text in ["", "Redis", "redis:", "redis:-x", "a//b", "app@sha256:abc", "UPPER.io/x", "a/-b"] {
            assert!(Reference::parse(text).is_err(), "{text} should be rejected");
        }
    }
}
