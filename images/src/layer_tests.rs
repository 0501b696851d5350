//! Tests of layer unpacking and rootfs stacking with hand-made tars,
//! hostile ones included.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sidewhale_core::ImageError;

use crate::digest::sha256_of;
use crate::rootfs::{build_rootfs, check_stack, LayerDir};
use crate::testutil::{tar_of, tree, unpack_into, Item};
use crate::unpack::LayerMetadata;

/// A scratch area: `layer/` receives the unpacked layer, and `outside`
/// must never change.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/passwd"), b"original").unwrap();
        Sandbox { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Asserts that the only things outside `layer/` and `rootfs/` are the
    /// untouched `outside/passwd`.
    fn assert_outside_untouched(&self) {
        let outside: Vec<PathBuf> = tree(self.dir.path())
            .into_iter()
            .filter(|p| {
                !p.starts_with("layer")
                    && !p.starts_with("rootfs")
                    && !p.starts_with("rootfs-check")
                    && !p.starts_with("lower")
            })
            .collect();
        assert_eq!(
            outside,
            vec![PathBuf::from("outside"), PathBuf::from("outside/passwd")]
        );
        assert_eq!(fs::read(self.path("outside/passwd")).unwrap(), b"original");
    }
}

fn assert_invalid(result: Result<LayerMetadata, ImageError>) {
    match result {
        Err(ImageError::InvalidLayer { .. }) => {}
        other => panic!("expected InvalidLayer, got {other:?}"),
    }
}

#[test]
fn unpack_rejects_parent_traversal() {
    let sandbox = Sandbox::new();
    let tar = tar_of(&[Item::File("../outside/passwd", b"evil", 0o644)]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    let tar = tar_of(&[Item::File("a/../../../outside/x", b"evil", 0o644)]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    sandbox.assert_outside_untouched();
}

#[test]
fn unpack_rejects_absolute_path() {
    let sandbox = Sandbox::new();
    let target = format!("{}/x", sandbox.path("outside").display());
    let tar = tar_of(&[Item::File(&target, b"evil", 0o644)]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    sandbox.assert_outside_untouched();
}

#[test]
fn unpack_rejects_write_through_escaping_symlink() {
    let sandbox = Sandbox::new();
    let tar = tar_of(&[
        Item::Symlink("escape", "../outside"),
        Item::File("escape/passwd", b"evil", 0o644),
    ]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    sandbox.assert_outside_untouched();
}

#[test]
fn unpack_keeps_absolute_symlink_inside_root() {
    let sandbox = Sandbox::new();
    let outside = sandbox.path("outside");
    let tar = tar_of(&[
        Item::Symlink("etc", outside.to_str().unwrap()),
        Item::File("etc/passwd", b"inside", 0o644),
    ]);
    unpack_into(&tar, &sandbox.path("layer")).unwrap();

    // The absolute target is interpreted inside the layer, as in a chroot.
    let written = sandbox
        .path("layer")
        .join(outside.strip_prefix("/").unwrap())
        .join("passwd");
    assert_eq!(fs::read(written).unwrap(), b"inside");
    sandbox.assert_outside_untouched();
}

#[test]
fn unpack_rejects_hardlink_outside() {
    let sandbox = Sandbox::new();
    let tar = tar_of(&[Item::HardLink("passwd", "/etc/passwd")]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    let tar = tar_of(&[Item::HardLink("passwd", "../outside/passwd")]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    let tar = tar_of(&[
        Item::Symlink("up", "../outside"),
        Item::HardLink("passwd", "up/passwd"),
    ]);
    assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    sandbox.assert_outside_untouched();
    assert_eq!(
        fs::metadata(sandbox.path("outside/passwd"))
            .unwrap()
            .nlink(),
        1
    );
}

#[test]
fn unpack_rejects_whiteout_of_parent() {
    let sandbox = Sandbox::new();
    for name in ["dir/.wh..", ".wh..", "dir/.wh."] {
        let tar = tar_of(&[Item::Dir("dir/", 0o755), Item::File(name, b"", 0o644)]);
        assert_invalid(unpack_into(&tar, &sandbox.path("layer")));
    }
    sandbox.assert_outside_untouched();
}

#[test]
fn unpack_records_skipped_and_diff_id() {
    let sandbox = Sandbox::new();
    let tar = tar_of(&[
        Item::Dir("dev/", 0o755),
        Item::Fifo("dev/pipe"),
        Item::File("bin/tool", b"#!/bin/sh\n", 0o4755),
    ]);
    let metadata = unpack_into(&tar, &sandbox.path("layer")).unwrap();
    assert_eq!(metadata.diff_id, sha256_of(&tar));
    assert_eq!(metadata.skipped, vec![PathBuf::from("dev/pipe")]);
    assert!(metadata.implicit_dirs.contains(Path::new("bin")));
    assert!(!metadata.implicit_dirs.contains(Path::new("dev")));
    assert_eq!(metadata.size, 10);

    let tool = fs::metadata(sandbox.path("layer/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), 1_000_000);
}

/// Unpacks each tar into `lower/<n>` and stacks them into `rootfs/`.
fn stack(sandbox: &Sandbox, tars: &[Vec<u8>]) -> Result<(), ImageError> {
    let mut metadata = Vec::new();
    for (index, tar) in tars.iter().enumerate() {
        let dir = sandbox.path(&format!("lower/{index}"));
        metadata.push((dir.clone(), unpack_into(tar, &dir).unwrap()));
    }
    let layers: Vec<LayerDir<'_>> = metadata
        .iter()
        .map(|(diff, metadata)| LayerDir {
            diff: diff.clone(),
            metadata,
        })
        .collect();
    build_rootfs(&layers, &sandbox.path("rootfs"))
}

#[test]
fn rootfs_applies_whiteouts_in_order() {
    let sandbox = Sandbox::new();
    let base = tar_of(&[
        Item::Dir("etc/", 0o755),
        Item::File("etc/a", b"a", 0o644),
        Item::File("etc/b", b"b", 0o644),
        Item::Dir("var/", 0o755),
        Item::File("var/old", b"old", 0o644),
    ]);
    let upper = tar_of(&[
        Item::File("etc/.wh.a", b"", 0o644),
        Item::File(".wh.var", b"", 0o644),
        Item::Dir("var/", 0o700),
        Item::File("var/new", b"new", 0o644),
    ]);
    stack(&sandbox, &[base, upper]).unwrap();

    let rootfs = sandbox.path("rootfs");
    assert!(!rootfs.join("etc/a").exists());
    assert_eq!(fs::read(rootfs.join("etc/b")).unwrap(), b"b");
    assert!(!rootfs.join("var/old").exists());
    assert_eq!(fs::read(rootfs.join("var/new")).unwrap(), b"new");
    assert_eq!(
        fs::metadata(rootfs.join("var")).unwrap().mode() & 0o777,
        0o700
    );
    assert!(!tree(&rootfs)
        .iter()
        .any(|p| p.to_string_lossy().contains(".wh.")));
}

#[test]
fn rootfs_opaque_dir_hides_lower_entries() {
    let sandbox = Sandbox::new();
    let base = tar_of(&[
        Item::Dir("data/", 0o755),
        Item::File("data/lower", b"lower", 0o644),
        Item::Dir("data/sub/", 0o755),
        Item::File("data/sub/deep", b"deep", 0o644),
    ]);
    let upper = tar_of(&[
        Item::Dir("data/", 0o755),
        Item::File("data/.wh..wh..opq", b"", 0o644),
        Item::File("data/upper", b"upper", 0o644),
    ]);
    let top = tar_of(&[Item::File("data/top", b"top", 0o644)]);
    stack(&sandbox, &[base, upper, top]).unwrap();

    let names = tree(&sandbox.path("rootfs/data"));
    assert_eq!(names, vec![PathBuf::from("top"), PathBuf::from("upper")]);
}

#[test]
fn rootfs_keeps_hard_links() {
    let sandbox = Sandbox::new();
    let base = tar_of(&[
        Item::File("bin/perl", b"perl", 0o755),
        Item::HardLink("bin/perl5", "bin/perl"),
    ]);
    let upper = tar_of(&[Item::HardLink("usr/bin/perl", "bin/perl")]);
    stack(&sandbox, &[base, upper]).unwrap();

    let rootfs = sandbox.path("rootfs");
    let inode = |p: &str| fs::metadata(rootfs.join(p)).unwrap().ino();
    assert_eq!(inode("bin/perl"), inode("bin/perl5"));
    assert_eq!(inode("bin/perl"), inode("usr/bin/perl"));
    assert_eq!(fs::metadata(rootfs.join("bin/perl")).unwrap().nlink(), 3);

    // The rootfs has its own copy: the layer's inode is not shared.
    let layer_inode = fs::metadata(sandbox.path("lower/0/bin/perl"))
        .unwrap()
        .ino();
    assert_ne!(layer_inode, inode("bin/perl"));
}

#[test]
fn rootfs_rejects_lower_symlink_escape() {
    let sandbox = Sandbox::new();
    let base = tar_of(&[Item::Symlink("escape", "../../../../../../../..")]);
    // No directory entry for `escape/`: it is implicit, so it follows the
    // lower symlink, which leaves the rootfs.
    let upper = tar_of(&[Item::File("escape/tmp/x", b"evil", 0o644)]);
    let result = stack(&sandbox, &[base, upper]);
    assert!(
        matches!(result, Err(ImageError::InvalidLayer { .. })),
        "{result:?}"
    );
    sandbox.assert_outside_untouched();
    assert!(fs::read("/tmp/x").map_or(true, |data| data != b"evil"));
}

/// Unpacks each tar into `lower/<n>` and returns whether `check_stack` and
/// `build_rootfs` accept the stack.
fn check_and_build(sandbox: &Sandbox, tars: &[Vec<u8>]) -> (bool, bool) {
    let mut metadata = Vec::new();
    for (index, tar) in tars.iter().enumerate() {
        let dir = sandbox.path(&format!("lower/{index}"));
        metadata.push((dir.clone(), unpack_into(tar, &dir).unwrap()));
    }
    let layers: Vec<LayerDir<'_>> = metadata
        .iter()
        .map(|(diff, metadata)| LayerDir {
            diff: diff.clone(),
            metadata,
        })
        .collect();
    let checked = check_stack(&layers, &sandbox.path("rootfs-check"));
    let built = build_rootfs(&layers, &sandbox.path("rootfs"));
    for result in [&checked, &built] {
        assert!(
            matches!(result, Ok(()) | Err(ImageError::InvalidLayer { .. })),
            "{result:?}"
        );
    }
    (checked.is_ok(), built.is_ok())
}

#[test]
fn check_stack_agrees_with_build_rootfs() {
    let escape = "../../../../tmp";
    let cases: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        (
            "upper file through lower escaping symlink",
            vec![
                tar_of(&[Item::Symlink("escape", escape)]),
                tar_of(&[Item::File("escape/x", b"evil", 0o644)]),
            ],
            false,
        ),
        (
            "symlink chain across three layers",
            vec![
                tar_of(&[Item::Symlink("a", "b")]),
                tar_of(&[Item::Symlink("b", escape)]),
                tar_of(&[Item::File("a/x", b"evil", 0o644)]),
            ],
            false,
        ),
        (
            "hard link through lower escaping symlink",
            vec![
                tar_of(&[
                    Item::File("etc/passwd", b"root", 0o644),
                    Item::Symlink("escape", escape),
                ]),
                tar_of(&[Item::HardLink("escape/x", "etc/passwd")]),
            ],
            false,
        ),
        (
            "hard link to missing lower file",
            vec![
                tar_of(&[Item::File("etc/passwd", b"root", 0o644)]),
                tar_of(&[Item::HardLink("etc/copy", "etc/missing")]),
            ],
            false,
        ),
        (
            "upper file through lower symlink inside root",
            vec![
                tar_of(&[
                    Item::Dir("usr/", 0o755),
                    Item::Dir("usr/lib/", 0o755),
                    Item::Symlink("lib", "usr/lib"),
                ]),
                tar_of(&[Item::File("lib/libx.so", b"x", 0o644)]),
            ],
            true,
        ),
        (
            "escaping symlink removed by a whiteout",
            vec![
                tar_of(&[Item::Symlink("escape", escape)]),
                tar_of(&[Item::File(".wh.escape", b"", 0o644)]),
                tar_of(&[Item::File("escape/x", b"fine", 0o644)]),
            ],
            true,
        ),
    ];
    for (name, tars, valid) in cases {
        let sandbox = Sandbox::new();
        let (checked, built) = check_and_build(&sandbox, &tars);
        assert_eq!(checked, valid, "check_stack on {name}");
        assert_eq!(built, valid, "build_rootfs on {name}");
        sandbox.assert_outside_untouched();
    }
    assert!(fs::read("/tmp/x").map_or(true, |data| data != b"evil"));
}

#[test]
fn rootfs_follows_lower_symlink_for_implicit_dirs() {
    let sandbox = Sandbox::new();
    let base = tar_of(&[
        Item::Dir("usr/", 0o755),
        Item::Dir("usr/lib/", 0o755),
        Item::Symlink("lib", "usr/lib"),
    ]);
    let upper = tar_of(&[Item::File("lib/libx.so", b"x", 0o644)]);
    let replaced = tar_of(&[
        Item::Dir("sbin/", 0o755),
        Item::File("sbin/tool", b"t", 0o755),
    ]);
    let lower_link = tar_of(&[Item::Symlink("sbin", "usr/lib")]);
    stack(&sandbox, &[base, upper, lower_link, replaced]).unwrap();

    let rootfs = sandbox.path("rootfs");
    assert!(fs::symlink_metadata(rootfs.join("lib"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(rootfs.join("usr/lib/libx.so")).unwrap(), b"x");
    // An explicit directory entry replaces the lower symlink.
    assert!(fs::symlink_metadata(rootfs.join("sbin")).unwrap().is_dir());
    assert!(!rootfs.join("usr/lib/tool").exists());
}

#[test]
fn rootfs_is_private_and_removable() {
    let sandbox = Sandbox::new();
    let base = tar_of(&[
        Item::Dir("ro/", 0o555),
        Item::File("ro/file", b"store", 0o444),
        Item::File("bin/su", b"su", 0o4755),
    ]);
    stack(&sandbox, &[base]).unwrap();

    let rootfs = sandbox.path("rootfs");
    assert_eq!(
        fs::metadata(rootfs.join("ro")).unwrap().mode() & 0o777,
        0o555
    );
    assert_eq!(
        fs::metadata(rootfs.join("bin/su")).unwrap().mode() & 0o7777,
        0o4755
    );
    assert_eq!(
        fs::metadata(rootfs.join("ro/file")).unwrap().mtime(),
        1_000_000
    );

    let file = rootfs.join("ro/file");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&file, b"container").unwrap();
    assert_eq!(fs::read(sandbox.path("lower/0/ro/file")).unwrap(), b"store");

    crate::fsutil::remove_tree(&rootfs).unwrap();
    assert!(!rootfs.exists());
}
