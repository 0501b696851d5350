//! Manifests, indexes and image configurations, parsed with the fields
//! sidewhale uses. Docker schema 2 and OCI share these shapes.

use serde::Deserialize;
use sidewhale_core::ImageConfig;

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Media types sent in the `Accept` header of manifest requests.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
];

/// A content descriptor: a blob's media type, digest and size.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// Any manifest document: an image manifest has `config` and `layers`, an
/// index or manifest list has `manifests`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDocument {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

impl ManifestDocument {
    pub fn is_index(&self) -> bool {
        match self.media_type.as_deref() {
            Some(DOCKER_MANIFEST_LIST) | Some(OCI_INDEX) => true,
            Some(_) => false,
            None => self.manifests.is_some(),
        }
    }
}

/// Picks the index entry for `(os, architecture)`. Among several matches,
/// one without a variant or with the architecture's usual variant
/// (`v8` for arm64, `v7` for arm) comes first.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    os: &str,
    architecture: &str,
) -> Option<&'a Descriptor> {
    let usual_variant = match architecture {
        "arm64" => Some("v8"),
        "arm" => Some("v7"),
        _ => None,
    };
    let matching = |entry: &&Descriptor| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == architecture)
    };
    let preferred = |entry: &&Descriptor| {
        let variant = entry.platform.as_ref().and_then(|p| p.variant.as_deref());
        variant.is_none() || variant == usual_variant
    };
    let mut candidates = entries.iter().filter(matching);
    let first = candidates.clone().next()?;
    Some(candidates.find(preferred).unwrap_or(first))
}

/// The parts of an image configuration blob that go into `ImageRecord`.
#[derive(Debug, Deserialize)]
pub struct ImageConfigBlob {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ImageConfig>,
    pub rootfs: RootFs,
    #[serde(default)]
    pub history: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    pub diff_ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(os: &str, architecture: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            digest: digest.to_string(),
            size: 1,
            urls: None,
            platform: Some(Platform {
                architecture: architecture.to_string(),
                os: os.to_string(),
                variant: variant.map(str::to_string),
            }),
        }
    }

    #[test]
    fn select_platform_prefers_usual_variant() {
        let entries = vec![
            entry("linux", "amd64", None, "amd"),
            entry("linux", "arm", Some("v6"), "arm6"),
            entry("linux", "arm", Some("v7"), "arm7"),
            entry("unknown", "unknown", None, "attestation"),
        ];
        assert_eq!(
            select_platform(&entries, "linux", "amd64").unwrap().digest,
            "amd"
        );
        assert_eq!(
            select_platform(&entries, "linux", "arm").unwrap().digest,
            "arm7"
        );
        assert!(select_platform(&entries, "linux", "s390x").is_none());
    }
}
