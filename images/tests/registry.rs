//! Pulls from a real registry: Debian's `docker-registry` on a loopback
//! port, filled with `skopeo copy` from an OCI layout this test writes.
//! The test fails when either program is missing, because without them it
//! would prove nothing.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sidewhale_core::{ImageError, ImageSource, PullProgress, Reference};
use sidewhale_images::{ImageStore, RegistryOptions};
use tokio::sync::mpsc;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A registry process on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join("registry-storage");
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry must be installed (Debian package docker-registry)");

        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            storage,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Copies the image `name` of the OCI layout into `repository:tag`.
    fn push(&self, layout: &Path, name: &str, target: &str, extra: &[&str]) {
        let status = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .args(extra)
            .arg(format!("oci:{}:{name}", layout.display()))
            .arg(format!("docker://{}/{target}", self.host()))
            .status()
            .expect("skopeo must be installed (Debian package skopeo)");
        assert!(status.success(), "skopeo copy of {name} failed");
    }

    /// Overwrites the bytes of a blob in the registry's storage, keeping
    /// its length, so the registry serves content that does not match.
    fn corrupt_blob(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").unwrap();
        let path = self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&path, data).unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an OCI image layout with blobs and named images.
struct Layout {
    dir: PathBuf,
    refs: Vec<Value>,
}

impl Layout {
    fn new(dir: PathBuf) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir,
            refs: Vec::new(),
        }
    }

    fn blob(&self, media_type: &str, data: &[u8]) -> Value {
        let digest = sha256(data);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap());
        fs::write(path, data).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": data.len()})
    }

    /// Stores a gzip layer of `files` and returns (descriptor, diff id).
    fn layer(&self, files: &[(&str, &[u8], u32)]) -> (Value, String) {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data, mode) in files {
            let mut header = tar::Header::new_gnu();
            header.set_path(name).unwrap();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&tar).unwrap();
        let blob = encoder.finish().unwrap();
        (self.blob(OCI_LAYER_GZIP, &blob), sha256(&tar))
    }

    /// Stores a config and manifest for `layers` and returns the manifest
    /// descriptor.
    fn manifest(&self, architecture: &str, layers: &[&(Value, String)]) -> Value {
        let diff_ids: Vec<&String> = layers.iter().map(|(_, diff_id)| diff_id).collect();
        let config = json!({
            "architecture": architecture, "os": "linux",
            "created": "2024-05-01T12:00:00Z",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/hello"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "test"}],
        });
        let config = self.blob(OCI_CONFIG, &serde_json::to_vec(&config).unwrap());
        let descriptors: Vec<&Value> = layers.iter().map(|(descriptor, _)| descriptor).collect();
        let manifest = json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config, "layers": descriptors,
        });
        self.blob(OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap())
    }

    fn index(&self, entries: &[(Value, &str, Option<&str>)]) -> Value {
        let manifests: Vec<Value> = entries
            .iter()
            .map(|(descriptor, architecture, variant)| {
                let mut entry = descriptor.clone();
                entry["platform"] = json!({"os": "linux", "architecture": architecture});
                if let Some(variant) = variant {
                    entry["platform"]["variant"] = json!(variant);
                }
                entry
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        self.blob(OCI_INDEX, &serde_json::to_vec(&index).unwrap())
    }

    fn name(&mut self, descriptor: &Value, name: &str) {
        let mut entry = descriptor.clone();
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": name});
        self.refs.push(entry);
        let index = json!({"schemaVersion": 2, "manifests": self.refs});
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

/// Pulls `reference` and returns the result with every progress message.
async fn pull(
    store: &ImageStore,
    reference: &str,
) -> (
    Result<sidewhale_core::ImageRecord, ImageError>,
    Vec<PullProgress>,
) {
    let (sender, mut receiver) = mpsc::channel(100_000);
    let reference = Reference::parse(reference).unwrap();
    let result = store.pull(&reference, sender).await;
    let mut messages = Vec::new();
    while let Ok(message) = receiver.try_recv() {
        messages.push(message);
    }
    (result, messages)
}

fn statuses(messages: &[PullProgress]) -> Vec<String> {
    messages.iter().map(|m| m.status.clone()).collect()
}

fn count(messages: &[PullProgress], status: &str) -> usize {
    messages.iter().filter(|m| m.status == status).count()
}

fn amd64_options() -> RegistryOptions {
    RegistryOptions {
        platform: ("linux".into(), "amd64".into()),
        ..RegistryOptions::default()
    }
}

#[tokio::test]
async fn pull_from_local_registry() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(work.path());
    let mut layout = Layout::new(work.path().join("layout"));

    let base = layout.layer(&[
        ("etc/os-release", b"ID=sidewhale-test\n", 0o644),
        ("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
    ]);
    let app = layout.layer(&[("app/data.txt", b"app data\n", 0o644)]);
    let other = layout.layer(&[("other/x", b"other\n", 0o644)]);
    let broken = layout.layer(&[("broken/x", b"will be corrupted\n", 0o644)]);
    let amd64 = layout.manifest("amd64", &[&base, &app]);
    let arm64 = layout.manifest("arm64", &[&base, &app]);
    let app_index = layout.index(&[(amd64, "amd64", None), (arm64, "arm64", Some("v8"))]);
    layout.name(&app_index, "app");
    let other_manifest = layout.manifest("amd64", &[&base, &other]);
    layout.name(&other_manifest, "other");
    let broken_manifest = layout.manifest("amd64", &[&broken]);
    layout.name(&broken_manifest, "broken");

    registry.push(&layout.dir, "app", "test/app:1", &["--all"]);
    registry.push(
        &layout.dir,
        "other",
        "library/other:1",
        &["--format", "v2s2"],
    );
    registry.push(&layout.dir, "broken", "test/broken:1", &[]);
    registry.corrupt_blob(broken.0["digest"].as_str().unwrap());

    let store_root = work.path().join("store");
    let host = registry.host();
    let options = RegistryOptions {
        mirrors: vec![format!("http://{host}")],
        ..amd64_options()
    };
    let store = ImageStore::open(store_root.clone(), options).unwrap();

    // First pull of a manifest list: everything is downloaded.
    let app_ref = format!("{host}/test/app:1");
    let (result, messages) = pull(&store, &app_ref).await;
    let record = result.unwrap();
    let index_digest = app_index["digest"].as_str().unwrap();
    assert_eq!(record.architecture, "amd64");
    assert_eq!(record.repo_tags, vec![app_ref.clone()]);
    assert_eq!(
        record.repo_digests,
        vec![format!("{host}/test/app@{index_digest}")]
    );
    assert_eq!(record.config.cmd, Some(vec!["/bin/hello".to_string()]));
    assert_eq!(record.history.len(), 1);
    assert_eq!(record.size, 18 + 21 + 9);
    let expected_order = [
        "Pulling from test/app",
        "Pulling fs layer",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
    ];
    let all = statuses(&messages);
    let mut position = 0;
    for status in expected_order {
        let found = all[position..].iter().position(|s| s == status);
        assert!(found.is_some(), "{status:?} missing in order from {all:?}");
        position += found.unwrap_or(0);
    }
    assert_eq!(count(&messages, "Pull complete"), 2);
    let base_id = &base.0["digest"].as_str().unwrap()[7..19];
    assert!(
        messages.iter().any(|m| m.id.as_deref() == Some(base_id)),
        "layer ids are short digests"
    );
    assert_eq!(all[all.len() - 2], format!("Digest: {index_digest}"));
    assert_eq!(
        all[all.len() - 1],
        format!("Status: Downloaded newer image for {app_ref}")
    );

    // Second pull: nothing is transferred or unpacked again.
    let layer_dir = store_root.join("layers").join(&base.1[7..]);
    let before = fs::metadata(&layer_dir).unwrap();
    let (result, messages) = pull(&store, &app_ref).await;
    assert_eq!(result.unwrap().id, record.id);
    for status in [
        "Pulling fs layer",
        "Downloading",
        "Extracting",
        "Pull complete",
    ] {
        assert_eq!(count(&messages, status), 0, "{status} on a second pull");
    }
    let last = statuses(&messages).pop().unwrap();
    assert_eq!(last, format!("Status: Image is up to date for {app_ref}"));
    let after = fs::metadata(&layer_dir).unwrap();
    assert_eq!((before.ino(), before.mtime()), (after.ino(), after.mtime()));

    // A Docker Hub name through the mirror, sharing the base layer.
    let (result, messages) = pull(&store, "other:1").await;
    let other_record = result.unwrap();
    assert_eq!(other_record.repo_tags, vec!["other:1".to_string()]);
    assert_eq!(count(&messages, "Already exists"), 1);
    assert_eq!(count(&messages, "Pull complete"), 1);
    assert_eq!(statuses(&messages)[0], "Pulling from library/other");
    assert_eq!(
        statuses(&messages).pop().unwrap(),
        "Status: Downloaded newer image for other:1"
    );
    let after = fs::metadata(&layer_dir).unwrap();
    assert_eq!((before.ino(), before.mtime()), (after.ino(), after.mtime()));

    // By digest, and by a digest the registry does not have.
    let by_digest = format!("{host}/test/app@{index_digest}");
    let (result, _) = pull(&store, &by_digest).await;
    assert_eq!(result.unwrap().id, record.id);
    let unknown = format!("{host}/test/app@sha256:{}", "0".repeat(64));
    let (result, _) = pull(&store, &unknown).await;
    assert!(matches!(result, Err(ImageError::NotFound(_))), "{result:?}");
    let (result, _) = pull(&store, &format!("{host}/test/app:missing")).await;
    assert!(matches!(result, Err(ImageError::NotFound(_))), "{result:?}");

    // A corrupt blob is rejected and never enters the store.
    let (result, _) = pull(&store, &format!("{host}/test/broken:1")).await;
    assert!(
        matches!(result, Err(ImageError::DigestMismatch { .. })),
        "{result:?}"
    );
    let broken_blob = store_root
        .join("blobs/sha256")
        .join(&broken.0["digest"].as_str().unwrap()[7..]);
    assert!(!broken_blob.exists());
    assert_eq!(fs::read_dir(store_root.join("tmp")).unwrap().count(), 0);
    assert!(!store_root.join("layers").join(&broken.1[7..]).exists());

    // A platform the manifest list lacks.
    let s390x = RegistryOptions {
        platform: ("linux".into(), "s390x".into()),
        ..amd64_options()
    };
    let other_store = ImageStore::open(work.path().join("store-s390x"), s390x).unwrap();
    let (result, _) = pull(&other_store, &app_ref).await;
    assert!(
        matches!(result, Err(ImageError::NoMatchingPlatform { .. })),
        "{result:?}"
    );

    // The rootfs contains both layers and is private to the container.
    let rootfs = work.path().join("rootfs");
    store.create_rootfs(&app_ref, &rootfs).unwrap();
    assert_eq!(
        fs::read(rootfs.join("app/data.txt")).unwrap(),
        b"app data\n"
    );
    assert_eq!(
        fs::metadata(rootfs.join("bin/hello")).unwrap().mode() & 0o777,
        0o755
    );
    fs::write(rootfs.join("etc/os-release"), b"changed").unwrap();
    let stored = layer_dir.join("diff/etc/os-release");
    assert_eq!(fs::read(stored).unwrap(), b"ID=sidewhale-test\n");
    store.remove_rootfs(&rootfs).unwrap();
    assert!(!rootfs.exists());
}

#[tokio::test]
async fn unreachable_mirror_and_registry_are_reported() {
    let work = tempfile::tempdir().unwrap();
    // A port nothing listens on: bound, then released.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = ImageStore::open(work.path().join("store"), amd64_options()).unwrap();
    let (result, messages) = pull(&store, &format!("127.0.0.1:{port}/app:1")).await;
    let error = result.unwrap_err();
    assert!(matches!(error, ImageError::Registry { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert_eq!(statuses(&messages), vec!["Pulling from app".to_string()]);
}
