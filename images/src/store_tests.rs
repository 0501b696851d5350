//! Tests of the store's lookups, tags, removal and crash recovery.

use std::fs;

use sidewhale_core::ImageError;

use crate::store::{ImageStore, RegistryOptions, RemoveEvent};
use crate::testutil::{add_image, gzip, tar_of, Item};
use crate::unpack;

fn open(root: &std::path::Path) -> ImageStore {
    ImageStore::open(root.to_path_buf(), RegistryOptions::default()).unwrap()
}

fn base_layer() -> Vec<u8> {
    tar_of(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/os-release", b"ID=test\n", 0o644),
    ])
}

#[test]
fn get_resolves_names_and_ids() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let id = add_image(&store, &[base_layer()], Some("redis:7"), "one");
    let hex = id.strip_prefix("sha256:").unwrap();

    for name in [
        "redis:7",
        "docker.io/library/redis:7",
        "index.docker.io/library/redis:7",
        id.as_str(),
        hex,
        &hex[..12],
        &hex[..1],
        &format!("sha256:{}", &hex[..5]),
    ] {
        let record = store.get(name);
        assert_eq!(record.map(|r| r.id), Some(id.clone()), "lookup of {name}");
    }
    assert_eq!(
        store.get("redis:7").unwrap().repo_tags,
        vec!["redis:7".to_string()]
    );
    assert!(store.get("redis").is_none(), "redis means redis:latest");
    assert!(store.get("redis:6").is_none());
    assert!(store.get("").is_none());
}

#[test]
fn get_rejects_ambiguous_prefix() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    // 17 ids cannot all start with different hex digits.
    let ids: Vec<String> = (0..17)
        .map(|n| add_image(&store, &[base_layer()], None, &n.to_string()))
        .collect();
    let first_digit = |id: &String| id.as_bytes()[7];
    let shared = ids
        .iter()
        .find(|id| {
            ids.iter()
                .filter(|other| first_digit(other) == first_digit(id))
                .count()
                > 1
        })
        .unwrap();
    let prefix = (first_digit(shared) as char).to_string();
    assert!(store.get(&prefix).is_none());
    assert_eq!(store.list().len(), 17);
}

#[test]
fn remove_untags_before_deleting() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let id = add_image(&store, &[base_layer()], Some("app:1"), "one");
    store.tag("app:1", "other/app:2").unwrap();
    let record = store.get(&id).unwrap();
    assert_eq!(
        record.repo_tags,
        vec!["app:1".to_string(), "other/app:2".to_string()]
    );

    let conflict = store.remove(&id, false);
    assert!(
        matches!(conflict, Err(ImageError::Conflict(_))),
        "{conflict:?}"
    );

    let events = store.remove("app:1", false).unwrap();
    assert_eq!(events, vec![RemoveEvent::Untagged("app:1".to_string())]);
    assert!(store.get(&id).is_some());

    let diff_id = record.diff_ids[0].clone();
    assert!(store.load_layer(&diff_id).is_some());
    let events = store.remove("other/app:2", false).unwrap();
    assert_eq!(
        events,
        vec![
            RemoveEvent::Untagged("other/app:2".to_string()),
            RemoveEvent::Deleted(id.clone())
        ]
    );
    assert!(store.get(&id).is_none());
    assert!(
        store.load_layer(&diff_id).is_none(),
        "unused layer is removed"
    );
    assert!(matches!(
        store.remove("app:1", false),
        Err(ImageError::NoSuchImage(_))
    ));
}

#[test]
fn remove_by_id_with_force_keeps_shared_layers() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let first = add_image(&store, &[base_layer()], Some("a:1"), "one");
    let second = add_image(&store, &[base_layer()], Some("b:1"), "two");
    store.tag("a:1", "a:2").unwrap();

    let events = store.remove(&first[..15], true).unwrap();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events.last(), Some(&RemoveEvent::Deleted(first.clone())));
    let shared = store.get(&second).unwrap().diff_ids[0].clone();
    assert!(
        store.load_layer(&shared).is_some(),
        "layer still used by b:1"
    );
}

#[test]
fn reopen_cleans_up_after_crash() {
    let root = tempfile::tempdir().unwrap();
    let id = {
        let store = open(root.path());
        add_image(&store, &[base_layer()], Some("app:1"), "one")
    };

    // Leftovers of writes interrupted at different points.
    fs::write(root.path().join("tmp/blob-123"), b"partial").unwrap();
    fs::create_dir_all(root.path().join("tmp/layer-9/diff/etc")).unwrap();
    let half_layer = root.path().join("layers").join("b".repeat(64));
    fs::create_dir_all(half_layer.join("diff")).unwrap();
    let orphan_blob = root.path().join("blobs/sha256").join("c".repeat(64));
    fs::write(&orphan_blob, b"unreferenced").unwrap();
    let broken_record = root
        .path()
        .join("images")
        .join(format!("{}.json", "d".repeat(64)));
    let mut record = serde_json::to_value(open(root.path()).get(&id).unwrap()).unwrap();
    record["id"] = format!("sha256:{}", "d".repeat(64)).into();
    record["diff_ids"] = serde_json::json!([format!("sha256:{}", "e".repeat(64))]);
    fs::write(&broken_record, serde_json::to_vec(&record).unwrap()).unwrap();

    let store = open(root.path());
    assert_eq!(fs::read_dir(root.path().join("tmp")).unwrap().count(), 0);
    assert!(!half_layer.exists());
    assert!(!orphan_blob.exists());
    assert!(!broken_record.exists());
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.get("app:1").map(|r| r.id), Some(id));

    let dest = root.path().join("rootfs");
    store.create_rootfs("app:1", &dest).unwrap();
    assert_eq!(fs::read(dest.join("etc/os-release")).unwrap(), b"ID=test\n");
}

#[test]
fn stack_check_rejects_cross_layer_escape() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let lower = tar_of(&[Item::Symlink("escape", "../../../../tmp")]);
    let upper = tar_of(&[Item::File("escape/x", b"evil", 0o644)]);
    let id = add_image(&store, &[base_layer(), lower, upper], None, "escape");
    let diff_ids = store.get(&id).unwrap().diff_ids;

    let checked = store.stack_check(&diff_ids).unwrap().run();
    assert!(
        matches!(checked, Err(ImageError::InvalidLayer { .. })),
        "{checked:?}"
    );
    let created = store.create_rootfs(&id, &root.path().join("rootfs"));
    assert!(
        matches!(created, Err(ImageError::InvalidLayer { .. })),
        "{created:?}"
    );
    let scratch = fs::read_dir(root.path().join("tmp")).unwrap().count();
    assert_eq!(scratch, 0, "check left files in the store's tmp");

    let valid = store.stack_check(&diff_ids[..1]).unwrap().run();
    assert!(valid.is_ok(), "{valid:?}");
}

/// Stores a layer made of `tar` without any image, as a failed pull
/// leaves it, and returns its diff id.
fn store_layer(store: &ImageStore, tar: &[u8]) -> String {
    let blob = store.temp_path("blob");
    fs::write(&blob, gzip(tar)).unwrap();
    let temp = store.temp_path("layer");
    fs::create_dir_all(temp.join("diff")).unwrap();
    let metadata =
        unpack::unpack_layer(&blob, &temp.join("diff"), "sha256:test", &mut |_| {}).unwrap();
    fs::write(
        temp.join("layer.json"),
        serde_json::to_vec(&metadata).unwrap(),
    )
    .unwrap();
    store.commit_layer(&temp, &metadata.diff_id).unwrap();
    fs::remove_file(&blob).unwrap();
    metadata.diff_id
}

#[test]
fn discard_unused_layers_keeps_used_ones() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let id = add_image(&store, &[base_layer()], Some("app:1"), "one");
    let used = store.get(&id).unwrap().diff_ids[0].clone();
    let unused = store_layer(&store, &tar_of(&[Item::File("a", b"a", 0o644)]));
    let pinned = store_layer(&store, &tar_of(&[Item::File("b", b"b", 0o644)]));
    store.pin_layers(std::slice::from_ref(&pinned));

    store.discard_unused_layers(&[used.clone(), unused.clone(), pinned.clone()]);
    assert!(store.load_layer(&used).is_some(), "layer of an image");
    assert!(
        store.load_layer(&pinned).is_some(),
        "layer of a running pull"
    );
    assert!(store.load_layer(&unused).is_none(), "unused layer");
}

#[test]
fn create_rootfs_rejects_non_empty_dest() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    add_image(&store, &[base_layer()], Some("app:1"), "one");
    let dest = root.path().join("busy");
    fs::create_dir(&dest).unwrap();
    fs::write(dest.join("keep"), b"x").unwrap();
    assert!(store.create_rootfs("app:1", &dest).is_err());
    assert_eq!(fs::read(dest.join("keep")).unwrap(), b"x");
    let missing = store.create_rootfs("nope:1", &root.path().join("r"));
    assert!(matches!(missing, Err(ImageError::NoSuchImage(_))));
}

/// Measures `create_rootfs` on an image the size of the `postgres` image:
/// about 150 MB in 6000 files over 3 layers. Run with
/// `cargo test -p sidewhale-images --release -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; writes 300 MB"]
fn create_rootfs_speed() {
    let root = tempfile::tempdir().unwrap();
    let store = open(root.path());
    let big = vec![7u8; 5 << 20];
    let small = vec![1u8; 4096];
    let mut layers = Vec::new();
    for layer in 0..3 {
        let names: Vec<String> = (0..2000)
            .map(|n| format!("usr/lib/l{layer}/d{}/f{n}", n % 50))
            .collect();
        let mut items: Vec<Item<'_>> = names.iter().map(|n| Item::File(n, &small, 0o644)).collect();
        let big_names: Vec<String> = (0..8).map(|n| format!("usr/lib/l{layer}/big{n}")).collect();
        items.extend(big_names.iter().map(|n| Item::File(n, &big, 0o755)));
        layers.push(tar_of(&items));
    }
    add_image(&store, &layers, Some("big:1"), "big");

    let dest = root.path().join("rootfs");
    let started = std::time::Instant::now();
    store.create_rootfs("big:1", &dest).unwrap();
    let elapsed = started.elapsed();
    println!("create_rootfs: 6024 files, 150 MiB, {elapsed:?}");
    store.remove_rootfs(&dest).unwrap();
}
