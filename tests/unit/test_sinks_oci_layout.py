"""OCI layout writer/reader: files on disk, tags in index.json, errors a user can act on."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, ImageError, UsageError
from ociforge.image.documents import Descriptor, Manifest, Platform
from ociforge.sinks.oci_layout import REF_NAME, OciLayout
from ociforge.spec import OCI_CONFIG, OCI_MANIFEST


def manifest_bytes(config: bytes = b"{}") -> bytes:
    return Manifest(OCI_MANIFEST, Descriptor.of(config, OCI_CONFIG), ()).to_bytes()


def read_index(path: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((path / "index.json").read_bytes())
    return result


def index_tags(path: Path) -> list[str | None]:
    manifests = read_index(path)["manifests"]
    return [m.get("annotations", {}).get(REF_NAME) for m in manifests]  # type: ignore[attr-defined]


def test_new_layout_has_the_spec_files(tmp_path: Path) -> None:
    OciLayout(tmp_path / "out")
    assert json.loads((tmp_path / "out/oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    assert (tmp_path / "out/blobs/sha256").is_dir()
    assert read_index(tmp_path / "out") == {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [],
    }


def test_write_blob_stream_names_the_blob_by_its_digest(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    digest, size = layout.write_blob_stream(iter([b"hello ", b"", b"world"]))
    assert (digest, size) == (Digest.of(b"hello world"), 11)
    assert (tmp_path / "blobs/sha256" / digest.hex).read_bytes() == b"hello world"
    assert layout.has_blob(digest)
    assert layout.blob_size(digest) == 11
    assert os.listdir(tmp_path / "blobs/sha256") == [digest.hex]  # no temp file left
    assert (tmp_path / "blobs/sha256" / digest.hex).stat().st_mode & 0o777 == 0o644 & ~_umask()


def test_a_stream_that_hashes_itself_is_not_hashed_again(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    calls: list[str] = []

    def hashed() -> tuple[Digest, int]:
        calls.append("asked once the stream ended")
        return Digest.of(b"hello"), 5

    written = layout.write_blob_stream(iter([b"hel", b"lo"]), hashed=hashed)
    digest, _ = written
    assert written == (Digest.of(b"hello"), 5) and len(calls) == 1
    assert (tmp_path / "blobs/sha256" / digest.hex).read_bytes() == b"hello"
    with pytest.raises(DigestMismatchError):
        layout.write_blob_stream(iter([b"x"]), Digest.of(b"y"), hashed=lambda: (Digest.of(b"x"), 1))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_writing_an_existing_blob_again_is_fine(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    first, _ = layout.write_blob(b"same")
    second, _ = layout.write_blob_stream([b"sa", b"me"], expected=Digest.of(b"same"))
    assert first == second
    assert os.listdir(tmp_path / "blobs/sha256") == [first.hex]


def test_expected_digest_mismatch_stores_nothing(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    with pytest.raises(DigestMismatchError, match="expected digest sha256:"):
        layout.write_blob_stream([b"actual"], expected=Digest.of(b"something else"))
    assert os.listdir(tmp_path / "blobs/sha256") == []


def test_a_failing_stream_leaves_no_temp_file(tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise ImageError("store path vanished")

    layout = OciLayout(tmp_path)
    with pytest.raises(ImageError, match="vanished"):
        layout.write_blob_stream(chunks())
    assert os.listdir(tmp_path / "blobs/sha256") == []


def test_tags_are_added_and_moved(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    one, two = manifest_bytes(b'{"a":1}'), manifest_bytes(b'{"a":2}')
    layout.add_manifest(one, OCI_MANIFEST, tag="1.0")
    layout.add_manifest(one, OCI_MANIFEST, tag="latest")
    layout.add_manifest(two, OCI_MANIFEST, tag="latest")  # the tag moves to the new image
    assert index_tags(tmp_path) == ["1.0", "latest"]
    assert layout.tags() == ["1.0", "latest"]
    assert layout.resolve("1.0") == (one, OCI_MANIFEST)
    assert layout.resolve("latest") == (two, OCI_MANIFEST)
    assert (tmp_path / "blobs/sha256" / Digest.of(two).hex).read_bytes() == two


def test_a_second_build_into_the_same_directory_keeps_the_first_tag(tmp_path: Path) -> None:
    OciLayout(tmp_path).add_manifest(manifest_bytes(b"[1]"), OCI_MANIFEST, tag="first")
    OciLayout(tmp_path).add_manifest(manifest_bytes(b"[2]"), OCI_MANIFEST, tag="second")
    assert index_tags(tmp_path) == ["first", "second"]


def test_untagged_manifest_is_listed_once(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    data = manifest_bytes()
    layout.add_manifest(data, OCI_MANIFEST, tag=None)
    layout.add_manifest(data, OCI_MANIFEST, tag=None)
    assert index_tags(tmp_path) == [None]
    assert layout.resolve(None) == (data, OCI_MANIFEST)


def test_index_entry_carries_platform_and_keeps_foreign_fields(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    index = read_index(tmp_path)
    index["annotations"] = {"org.example.note": "kept"}
    (tmp_path / "index.json").write_text(json.dumps(index))
    platform = Platform("arm64", "linux", "v8")
    layout.add_manifest(manifest_bytes(), OCI_MANIFEST, tag="v1", platform=platform)
    index = read_index(tmp_path)
    assert index["annotations"] == {"org.example.note": "kept"}
    entry = index["manifests"][0]  # type: ignore[index]
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert entry["size"] == len(manifest_bytes())


def test_concurrent_builds_do_not_lose_tags(tmp_path: Path) -> None:
    OciLayout(tmp_path)
    errors: list[BaseException] = []

    def build(n: int) -> None:
        try:
            layout = OciLayout(tmp_path)
            for k in range(4):
                data = manifest_bytes(f"[{n},{k}]".encode())
                layout.add_manifest(data, OCI_MANIFEST, tag=f"t{n}-{k}")
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(t for t in index_tags(tmp_path) if t) == sorted(
        f"t{n}-{k}" for n in range(8) for k in range(4)
    )


@pytest.mark.parametrize("tag", ["-x", "x-", "a b", "a__b", "", "é", "a//b", "x" * 256])
def test_invalid_tags_are_refused(tmp_path: Path, tag: str) -> None:
    layout = OciLayout(tmp_path)
    with pytest.raises(UsageError, match="invalid OCI layout tag"):
        layout.add_manifest(manifest_bytes(), OCI_MANIFEST, tag=tag)
    assert index_tags(tmp_path) == []


@pytest.mark.parametrize("tag", ["latest", "1.0.0", "v1_2", "a--b", "example.com/app:1.0", "A"])
def test_valid_tags(tmp_path: Path, tag: str) -> None:
    layout = OciLayout(tmp_path)
    layout.add_manifest(manifest_bytes(), OCI_MANIFEST, tag=tag)
    assert layout.tags() == [tag]


def test_resolve_without_tag_needs_exactly_one_image(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    with pytest.raises(UsageError, match="holds no image"):
        layout.resolve(None)
    layout.add_manifest(manifest_bytes(b"[1]"), OCI_MANIFEST, tag="one")
    layout.add_manifest(manifest_bytes(b"[2]"), OCI_MANIFEST, tag="two")
    with pytest.raises(UsageError, match=r"holds 2 images: .*\(tags: one, two\)"):
        layout.resolve(None)
    with pytest.raises(UsageError, match=r"has no tag 'three' \(tags: one, two\)"):
        layout.resolve("three")


def test_reader_does_not_create_a_layout(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an OCI layout"):
        OciLayout(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_writer_refuses_a_directory_with_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and not an OCI layout"):
        OciLayout(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


def test_corrupted_manifest_blob_is_detected(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    data = manifest_bytes()
    layout.add_manifest(data, OCI_MANIFEST, tag="v1")
    (tmp_path / "blobs/sha256" / Digest.of(data).hex).write_bytes(data.replace(b"2", b"3"))
    with pytest.raises(DigestMismatchError):
        layout.resolve("v1")


def test_resolve_refuses_an_index(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    nested = b'{"schemaVersion":2,"manifests":[]}'
    layout.add_manifest(nested, "application/vnd.oci.image.index.v1+json", tag="multi")
    with pytest.raises(ImageError, match="multi-platform"):
        layout.resolve("multi")


def test_missing_blob_is_an_image_error(tmp_path: Path) -> None:
    layout = OciLayout(tmp_path)
    absent = Digest.of(b"absent")
    with pytest.raises(ImageError, match=f"blob {absent} is missing"):
        layout.open_blob(absent)
    with pytest.raises(ImageError, match="missing"):
        layout.blob_size(absent)
    digest, _ = layout.write_blob(b"present")
    with layout.open_blob(digest) as f:
        assert f.read() == b"present"
