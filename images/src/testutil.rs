//! Builders for hand-made layer tars and stores, for unit tests.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use sidewhale_core::{ImageConfig, ImageRecord, Reference};

use crate::digest::{sha256_hex, sha256_of};
use crate::store::ImageStore;
use crate::unpack::{self, LayerMetadata};

/// One tar entry. Names and link targets are written into the header
/// verbatim, so tests can build entries the `tar` crate would refuse.
pub enum Item<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Fifo(&'a str),
}

/// Builds an uncompressed tar of `items`, every entry with mtime 1000000.
pub fn tar_of(items: &[Item<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for item in items {
        let mut header = tar::Header::new_gnu();
        let (name, data, link): (&str, &[u8], Option<&str>) = match item {
            Item::Dir(name, mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                (name, &[], None)
            }
            Item::File(name, data, mode) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                (name, data, None)
            }
            Item::Symlink(name, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                (name, &[], Some(target))
            }
            Item::HardLink(name, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                (name, &[], Some(target))
            }
            Item::Fifo(name) => {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_mode(0o644);
                (name, &[], None)
            }
        };
        let gnu = header.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_size(data.len() as u64);
        header.set_mtime(1_000_000);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// Unpacks `tar` into a fresh directory `dest` and returns the result.
pub fn unpack_into(tar: &[u8], dest: &Path) -> Result<LayerMetadata, sidewhale_core::ImageError> {
    std::fs::create_dir_all(dest).unwrap();
    unpack::unpack_tar(tar, dest, "sha256:test")
}

/// Adds an image made of `layers` (uncompressed tars, base first) to the
/// store the way a pull does, tagged `tag`. `salt` makes the configuration,
/// and so the image id, unique.
pub fn add_image(store: &ImageStore, layers: &[Vec<u8>], tag: Option<&str>, salt: &str) -> String {
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        let blob = gzip(tar);
        let digest = sha256_of(&blob);
        let blob_path = store.blob_path(sha256_hex(&digest).unwrap());
        std::fs::write(&blob_path, &blob).unwrap();

        let diff_id = sha256_of(tar);
        if store.load_layer(&diff_id).is_none() {
            let temp = store.temp_path("layer");
            std::fs::create_dir_all(temp.join("diff")).unwrap();
            let metadata =
                unpack::unpack_layer(&blob_path, &temp.join("diff"), &digest, &mut |_| {}).unwrap();
            assert_eq!(metadata.diff_id, diff_id);
            std::fs::write(
                temp.join("layer.json"),
                serde_json::to_vec(&metadata).unwrap(),
            )
            .unwrap();
            store.commit_layer(&temp, &diff_id).unwrap();
        }
        layer_digests.push(digest);
        diff_ids.push(diff_id);
    }

    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Env": [format!("SALT={salt}")]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let id = sha256_of(&config_bytes);
    std::fs::write(store.blob_path(sha256_hex(&id).unwrap()), &config_bytes).unwrap();

    let reference = tag.map(|tag| Reference::parse(tag).unwrap());
    let record = ImageRecord {
        id: id.clone(),
        repo_tags: Vec::new(),
        repo_digests: Vec::new(),
        created: Some("2024-01-01T00:00:00Z".to_string()),
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        config: ImageConfig::default(),
        layers: layer_digests,
        diff_ids,
        size: 0,
        history: Vec::new(),
    };
    store.commit_image(record, reference.as_ref()).unwrap();
    id
}

/// Lists every path below `root`, relative to it, sorted.
pub fn tree(root: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            paths.push(path.strip_prefix(root).unwrap().to_path_buf());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    paths.sort();
    paths
}
