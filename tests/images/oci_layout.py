#!/usr/bin/env python3
"""Write OCI image layouts from root filesystem directories, without Docker.

Subcommands:
  layer  pack a rootfs (or its difference from a base rootfs) as a gzip layer blob
  image  write an image config and manifest from layer descriptors and tag it
  index  write an image index over tagged manifests and tag it

Layouts follow the OCI image layout specification v1.0: blobs/sha256/<hex>, index.json
and oci-layout. A tag is stored as the annotation org.opencontainers.image.ref.name,
which is what `skopeo copy oci:LAYOUT:TAG ...` reads.
"""

import argparse
import datetime
import gzip
import hashlib
import json
import os
import stat
import sys
import tarfile
import tempfile

MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

# Directories whose contents a container runtime provides, so layers keep only the
# directory itself.
RUNTIME_DIRS = {"dev", "proc", "sys", "tmp", "var/tmp"}


class HashingWriter:
    """File-like object that counts and hashes the bytes written through it."""

    def __init__(self, target):
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)

    def flush(self):
        if self.target is not None:
            self.target.flush()


def ensure_layout(layout):
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    marker = os.path.join(layout, "oci-layout")
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
    index_path = os.path.join(layout, "index.json")
    if not os.path.exists(index_path):
        write_json_file(index_path, {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []})


def write_json_file(path, value):
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(temporary, path)


def blob_path(layout, digest):
    algorithm, hex_digest = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, hex_digest)


def write_json_blob(layout, value, media_type):
    """Store value as canonical JSON and return its descriptor."""
    data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_path(layout, digest)
    if not os.path.exists(path):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def is_runtime_content(relative_path):
    parent = os.path.dirname(relative_path)
    return parent in RUNTIME_DIRS


def walk_rootfs(root):
    """Yield the relative paths under root, parents before children, in sorted order."""
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        relative_directory = os.path.relpath(directory, root)
        names = sorted(subdirectories + files)
        for name in names:
            relative = name if relative_directory == "." else os.path.join(relative_directory, name)
            if is_runtime_content(relative):
                continue
            yield relative
        # Do not descend into runtime-provided directories.
        subdirectories[:] = [
            name
            for name in subdirectories
            if not is_runtime_content(name if relative_directory == "." else os.path.join(relative_directory, name))
        ]


def file_signature(path):
    """Return the metadata that decides whether a path changed between two rootfs trees."""
    info = os.lstat(path)
    link_target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
    return (info.st_mode, info.st_uid, info.st_gid, info.st_size, info.st_mtime_ns, link_target)


def select_changes(rootfs, base):
    """Return (paths to add, paths to whiteout) for the layer from base to rootfs."""
    if base is None:
        return list(walk_rootfs(rootfs)), []

    base_signatures = {path: file_signature(os.path.join(base, path)) for path in walk_rootfs(base)}
    new_paths = list(walk_rootfs(rootfs))
    new_path_set = set(new_paths)

    changed = set()
    whiteouts = []
    for path in new_paths:
        old = base_signatures.get(path)
        if old is None or old != file_signature(os.path.join(rootfs, path)):
            changed.add(path)
            if old is not None and stat.S_ISDIR(old[0]) and not os.path.isdir(os.path.join(rootfs, path)):
                # A directory replaced by another file type needs a whiteout for the old tree.
                whiteouts.append(path)

    for path in base_signatures:
        parent = os.path.dirname(path)
        if path not in new_path_set and (parent == "" or parent in new_path_set):
            whiteouts.append(path)

    # Every changed path and whiteout needs its parent directories in the layer.
    needed = set(changed)
    for path in list(changed) + whiteouts:
        parent = os.path.dirname(path)
        while parent:
            needed.add(parent)
            parent = os.path.dirname(parent)
    ordered = [path for path in new_paths if path in needed]
    return ordered, sorted(whiteouts)


def add_entry(archive, rootfs, relative):
    info = archive.gettarinfo(os.path.join(rootfs, relative), arcname=relative)
    if info is None:
        # Sockets cannot be stored in a tar archive and are recreated at run time.
        return
    info.uname = ""
    info.gname = ""
    if info.isreg():
        with open(os.path.join(rootfs, relative), "rb") as f:
            archive.addfile(info, f)
    else:
        archive.addfile(info)


def add_whiteout(archive, relative):
    directory, name = os.path.split(relative)
    info = tarfile.TarInfo(os.path.join(directory, ".wh." + name))
    info.mode = 0o644
    archive.addfile(info)


def command_layer(args):
    ensure_layout(args.layout)
    paths, whiteouts = select_changes(args.rootfs, args.base)

    blob_directory = os.path.join(args.layout, "blobs", "sha256")
    with tempfile.NamedTemporaryFile(dir=blob_directory, delete=False) as blob_file:
        compressed = HashingWriter(blob_file)
        with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, compresslevel=args.compress_level) as gz:
            uncompressed = HashingWriter(gz)
            with tarfile.open(fileobj=uncompressed, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                whiteout_set = set(whiteouts)
                for relative in whiteouts:
                    if relative not in paths:
                        add_whiteout(archive, relative)
                for relative in paths:
                    if relative in whiteout_set:
                        add_whiteout(archive, relative)
                    add_entry(archive, args.rootfs, relative)
        temporary_name = blob_file.name

    digest = "sha256:" + compressed.sha256.hexdigest()
    # NamedTemporaryFile creates mode 0600, but blobs must be readable by every user.
    os.chmod(temporary_name, 0o644)
    os.replace(temporary_name, blob_path(args.layout, digest))
    descriptor = {
        "mediaType": MEDIA_TYPE_LAYER,
        "digest": digest,
        "size": compressed.size,
        "diff_id": "sha256:" + uncompressed.sha256.hexdigest(),
        "created_by": args.created_by,
        "entries": len(paths) + len(whiteouts),
    }
    write_json_file(args.output, descriptor)
    print(f"layer {digest} ({compressed.size} bytes, {descriptor['entries']} entries) from {args.rootfs}")


def creation_time():
    """Return the image creation time, taken from SOURCE_DATE_EPOCH when it is set."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    moment = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc)
        if epoch
        else datetime.datetime.now(datetime.timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_descriptor(layout, descriptor, ref):
    """Point ref at descriptor in index.json, replacing an earlier descriptor with that ref."""
    index_path = os.path.join(layout, "index.json")
    with open(index_path) as f:
        index = json.load(f)
    manifests = [entry for entry in index["manifests"] if entry.get("annotations", {}).get(REF_ANNOTATION) != ref]
    tagged = dict(descriptor)
    tagged["annotations"] = {REF_ANNOTATION: ref}
    manifests.append(tagged)
    index["manifests"] = manifests
    write_json_file(index_path, index)


def find_tagged(layout, ref):
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get(REF_ANNOTATION) == ref:
            return entry
    raise SystemExit(f"error: tag {ref!r} not found in {layout}/index.json, build that image first")


def command_image(args):
    ensure_layout(args.layout)
    with open(args.config) as f:
        container_config = json.load(f)
    layers = []
    for path in args.layer:
        with open(path) as f:
            layers.append(json.load(f))

    created = creation_time()
    config = {
        "created": created,
        "architecture": args.architecture,
        "os": "linux",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer["diff_id"] for layer in layers]},
        "history": [{"created": created, "created_by": layer["created_by"]} for layer in layers],
    }
    if args.variant:
        config["variant"] = args.variant
    config_descriptor = write_json_blob(args.layout, config, MEDIA_TYPE_CONFIG)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_descriptor,
        "layers": [
            {"mediaType": layer["mediaType"], "digest": layer["digest"], "size": layer["size"]}
            for layer in layers
        ],
    }
    manifest_descriptor = write_json_blob(args.layout, manifest, MEDIA_TYPE_MANIFEST)
    platform = {"architecture": args.architecture, "os": "linux"}
    if args.variant:
        platform["variant"] = args.variant
    manifest_descriptor["platform"] = platform
    tag_descriptor(args.layout, manifest_descriptor, args.ref)
    print(f"image {args.ref}: manifest {manifest_descriptor['digest']}, config {config_descriptor['digest']}")


def command_index(args):
    entries = []
    for ref in args.manifest_ref:
        entry = dict(find_tagged(args.layout, ref))
        entry.pop("annotations", None)
        if entry.get("mediaType") != MEDIA_TYPE_MANIFEST or "platform" not in entry:
            raise SystemExit(f"error: tag {ref!r} is not an image manifest with a platform")
        entries.append(entry)
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": entries}
    descriptor = write_json_blob(args.layout, index, MEDIA_TYPE_INDEX)
    tag_descriptor(args.layout, descriptor, args.ref)
    platforms = ", ".join(
        "/".join(filter(None, (e["platform"]["os"], e["platform"]["architecture"], e["platform"].get("variant"))))
        for e in entries
    )
    print(f"index {args.ref}: {descriptor['digest']} ({platforms})")


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subcommands = parser.add_subparsers(dest="command", required=True)

    layer = subcommands.add_parser("layer", help="pack a rootfs directory as a gzip layer blob")
    layer.add_argument("--layout", required=True, help="OCI layout directory to store the blob in")
    layer.add_argument("--rootfs", required=True, help="root filesystem directory to pack")
    layer.add_argument("--base", help="root filesystem of the layers below: pack only the difference")
    layer.add_argument("--created-by", required=True, help="history text for this layer")
    layer.add_argument("--compress-level", type=int, default=6, help="gzip level, 1 (fast) to 9 (small)")
    layer.add_argument("--output", required=True, help="file to write the layer descriptor JSON to")

    image = subcommands.add_parser("image", help="write a config and manifest and tag them")
    image.add_argument("--layout", required=True)
    image.add_argument("--ref", required=True, help="tag to store in index.json")
    image.add_argument("--config", required=True, help="JSON file with the container config (Env, Cmd, ...)")
    image.add_argument("--layer", action="append", required=True, help="layer descriptor JSON, bottom first")
    image.add_argument("--architecture", default="amd64", help="GOARCH name, e.g. amd64 or arm64")
    image.add_argument("--variant", help="CPU variant, e.g. v8 for arm64")

    index = subcommands.add_parser("index", help="write an image index over tagged manifests and tag it")
    index.add_argument("--layout", required=True)
    index.add_argument("--ref", required=True, help="tag for the index")
    index.add_argument("--manifest-ref", action="append", required=True, help="tag of a platform manifest")

    return parser.parse_args(argv)


def main(argv):
    args = parse_arguments(argv)
    handlers = {"layer": command_layer, "image": command_image, "index": command_index}
    handlers[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
