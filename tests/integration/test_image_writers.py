"""OCI layouts and docker archives checked by the real clients: skopeo, umoci, podman.

podman runs as root without systemd here, with its own throw-away store:
``podman --root R --runroot RR --storage-driver vfs --cgroup-manager cgroupfs
--events-backend file``. vfs needs no overlay mounts, and ``podman image mount`` then gives a
plain directory with the image's files. (``podman run`` is not used: in this sandbox runc may not
set rlimits, which says nothing about our images.)
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image.config import RuntimeConfig, config_document
from ociforge.image.documents import Descriptor, Manifest, canonical_bytes
from ociforge.sinks.docker_archive import DockerArchiveWriter
from ociforge.sinks.oci_layout import OciLayout
from ociforge.spec import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from tests.support.podman import Podman

pytestmark = pytest.mark.integration


def run(*args: str | Path, stdin: bytes | None = None) -> bytes:
    result = subprocess.run(
        [str(a) for a in args], input=stdin, capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{args} failed: {result.stderr.decode(errors='replace')}"
    return result.stdout


def run_json(*args: str | Path) -> Any:
    return json.loads(run(*args))


def tar_layer(files: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted({n.rsplit("/", 1)[0] for n in files if "/" in n}):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1
            tar.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1
            tar.addfile(info)
    return buf.getvalue()


@dataclass(frozen=True)
class Image:
    layers: tuple[bytes, ...]  # uncompressed tars
    config: bytes


@pytest.fixture(scope="module")
def image() -> Image:
    layers = (
        tar_layer({"hello.txt": b"hello from ociforge\n", "etc/motd": b"motd\n"}),
        tar_layer({"data/big.bin": bytes(range(256)) * 512}, {"greeting": "/hello.txt"}),
    )
    config = config_document(
        runtime=RuntimeConfig(
            entrypoint=("/bin/hello",),
            cmd=("--loud",),
            env={"LANG": "C.UTF-8"},
            workdir="/data",
            labels={"org.opencontainers.image.title": "test"},
            exposed_ports=("8080",),
        ),
        architecture="amd64",
        os="linux",
        variant=None,
        diff_ids=[Digest.of(layer) for layer in layers],
        history_comments=["first", "second"],
        default_path="/bin",
    )
    return Image(layers, canonical_bytes(config))


def write_oci(image: Image, path: Path, tag: str) -> tuple[bytes, list[Digest]]:
    """Layers gzip-compressed and streamed in small chunks, like the real build does."""
    layout = OciLayout(path)
    descriptors, blob_digests = [], []
    for layer in image.layers:
        blob = gzip.compress(layer, mtime=0)
        digest, size = layout.write_blob_stream(
            blob[i : i + 1000] for i in range(0, len(blob), 1000)
        )
        descriptors.append(Descriptor(OCI_LAYER_GZIP, digest, size))
        blob_digests.append(digest)
    layout.write_blob(image.config)
    manifest = Manifest(
        OCI_MANIFEST, Descriptor.of(image.config, OCI_CONFIG), tuple(descriptors)
    ).to_bytes()
    layout.add_manifest(manifest, OCI_MANIFEST, tag=tag)
    return manifest, blob_digests


def write_archive(image: Image, path: Path, tags: list[str]) -> None:
    with path.open("wb") as out:
        writer = DockerArchiveWriter(out)
        for layer in image.layers:
            writer.add_layer([layer[:700], layer[700:]], len(layer))
        writer.finish(image.config, tags)


def test_skopeo_reads_the_oci_layout_byte_for_byte(image: Image, tmp_path: Path) -> None:
    manifest, blobs = write_oci(image, tmp_path / "oci", "v1")
    write_oci(image, tmp_path / "oci", "also")  # a second tag in the same layout
    ref = f"oci:{tmp_path / 'oci'}:v1"
    assert run("skopeo", "inspect", "--raw", ref) == manifest
    assert run("skopeo", "inspect", "--config", "--raw", ref) == image.config
    info = run_json("skopeo", "inspect", ref)
    assert info["Digest"] == str(Digest.of(manifest))
    assert info["Layers"] == [str(b) for b in blobs]
    assert (info["Architecture"], info["Os"]) == ("amd64", "linux")
    assert info["Env"] == ["PATH=/bin", "LANG=C.UTF-8"]
    assert info["Labels"] == {"org.opencontainers.image.title": "test"}
    assert run("skopeo", "inspect", "--raw", f"oci:{tmp_path / 'oci'}:also") == manifest


def test_skopeo_copies_the_oci_layout_to_a_docker_archive(image: Image, tmp_path: Path) -> None:
    write_oci(image, tmp_path / "oci", "v1")
    archive = tmp_path / "copy.tar"
    run(
        "skopeo",
        "copy",
        "--quiet",
        f"oci:{tmp_path / 'oci'}:v1",
        f"docker-archive:{archive}:localhost/copied:v1",
    )
    info = run_json("skopeo", "inspect", f"docker-archive:{archive}")
    # docker archives hold uncompressed layers: their digests are our diff_ids
    assert info["Layers"] == [str(Digest.of(layer)) for layer in image.layers]


def test_umoci_unpacks_the_oci_layout(image: Image, tmp_path: Path) -> None:
    write_oci(image, tmp_path / "oci", "v1")
    bundle = tmp_path / "bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'oci'}:v1", bundle)
    rootfs = bundle / "rootfs"
    assert (rootfs / "hello.txt").read_bytes() == b"hello from ociforge\n"
    assert (rootfs / "etc/motd").read_bytes() == b"motd\n"
    assert (rootfs / "data/big.bin").read_bytes() == bytes(range(256)) * 512
    assert (rootfs / "greeting").readlink() == Path("/hello.txt")
    process = json.loads((bundle / "config.json").read_bytes())["process"]
    assert process["args"] == ["/bin/hello", "--loud"]
    assert process["cwd"] == "/data"
    assert "LANG=C.UTF-8" in process["env"]


def test_skopeo_reads_the_docker_archive(image: Image, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    write_archive(image, archive, ["localhost/ociforge-test:v1"])
    ref = f"docker-archive:{archive}"
    assert run("skopeo", "inspect", "--config", "--raw", ref) == image.config
    info = run_json("skopeo", "inspect", ref)
    assert info["Layers"] == [str(Digest.of(layer)) for layer in image.layers]
    assert info["Env"] == ["PATH=/bin", "LANG=C.UTF-8"]


def check_loaded(podman: Podman, ref: str, image: Image) -> None:
    [info] = run_json(*podman.argv, "image", "inspect", ref)
    assert info["Id"] == Digest.of(image.config).hex
    assert info["RootFS"]["Layers"] == [str(Digest.of(layer)) for layer in image.layers]
    assert info["Config"]["Entrypoint"] == ["/bin/hello"]
    mounted = Path(run(*podman.argv, "image", "mount", ref).decode().strip())
    try:
        assert (mounted / "hello.txt").read_bytes() == b"hello from ociforge\n"
        assert (mounted / "greeting").readlink() == Path("/hello.txt")
    finally:
        run(*podman.argv, "image", "unmount", ref)


def test_podman_loads_the_docker_archive(image: Image, tmp_path: Path, podman: Podman) -> None:
    archive = tmp_path / "image.tar"
    write_archive(image, archive, ["localhost/ociforge-test:v1"])
    out = run(*podman.argv, "load", "-i", archive)
    assert b"localhost/ociforge-test:v1" in out
    check_loaded(podman, "localhost/ociforge-test:v1", image)


def test_podman_loads_the_archive_streamed_through_a_pipe(image: Image, podman: Podman) -> None:
    # stdout is not seekable: the writer must never seek, and podman reads it from stdin.
    with subprocess.Popen(
        [*podman.argv, "load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdin is not None
        write_error = None
        try:
            writer = DockerArchiveWriter(proc.stdin)
            for layer in image.layers:
                writer.add_layer(iter([layer]), len(layer))
            writer.finish(image.config, ["localhost/piped:1"])
        except ImageError as exc:  # a broken pipe: podman's stderr below says why
            write_error = exc
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert write_error is None
    assert b"localhost/piped:1" in out
    check_loaded(podman, "localhost/piped:1", image)
