"""Targets are checked before anything is touched, and a failed write never damages what was there.

A docker archive file appears whole or not at all; an OCI layout's index.json never names a blob
that is missing, whichever step of a build is interrupted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ociforge.api import build
from ociforge.assemble import ImageOptions
from ociforge.errors import ImageError, UsageError
from ociforge.events import BlobProgress, Event
from ociforge.nix.closure import Closure, StorePathInfo
from ociforge.sinks import DockerArchiveTarget, check_target, parse_target
from ociforge.source import LayoutRef, parse_layout_ref
from tests.unit.test_essentials import busybox

NAR_HASH = "sha256-" + "B" * 43 + "="
OLD = b"a good archive from yesterday\n"


@pytest.fixture
def closure(tmp_path: Path) -> Closure:
    root = busybox(tmp_path / "store")
    return Closure(
        (root,), {root: StorePathInfo(root, NAR_HASH, 1)}, "x86_64-linux", str(tmp_path / "store")
    )


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "directory", "tag"),
    [
        ("oci:out", "out", None),
        ("oci:out:v1", "out", "v1"),
        ("oci:/abs/out:1.0", "/abs/out", "1.0"),
        ("oci:./dir:with:colons", "./dir:with", "colons"),  # the last part is the tag
        ("oci:./a:b/", "./a:b/", None),  # a trailing / keeps a ':' in the directory
        ("oci:/tmp/a:b/out", "/tmp/a:b/out", None),  # a last part with / is a path
    ],
)
def test_layout_references(text: str, directory: str, tag: str | None) -> None:
    assert parse_layout_ref(text) == LayoutRef(directory, tag)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("oci:out:bad tag!", "invalid tag 'bad tag!'"),
        ("oci:out:", "invalid tag ''"),
        ("oci::v1", "names no directory"),
    ],
)
def test_a_last_part_meant_as_a_tag_must_be_one(text: str, needle: str) -> None:
    """Before, ``oci:out:bad tag!`` silently wrote a directory named ``out:bad tag!``."""
    with pytest.raises(UsageError, match=needle):
        parse_layout_ref(text)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("oci:out:v1_", "invalid OCI layout tag 'v1_'"),  # was refused only after the build
        ("docker-archive:x.tar:Bad/Name:1", "lower-case"),
        ("docker-archive:x.tar:app:bad tag", "invalid tag"),
    ],
)
def test_targets_are_checked_when_parsed(text: str, needle: str) -> None:
    with pytest.raises(UsageError, match=needle):
        parse_target(text)


def test_a_valid_archive_reference_is_kept() -> None:
    assert parse_target("docker-archive:x.tar:localhost:5000/app:1") == DockerArchiveTarget(
        "x.tar", "localhost:5000/app:1"
    )


# -- checking the destination -----------------------------------------------------------------


def test_destinations_that_cannot_be_written_are_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_bytes(b"x")
    cases = {
        f"docker-archive:{tmp_path}/missing/image.tar": "does not exist",
        f"docker-archive:{tmp_path}": "is a directory",
        f"oci:{tmp_path}/file": "is not a directory",
        f"oci:{tmp_path}/other": "not empty and not an OCI layout",
        f"oci:{tmp_path}/file/sub": "is not a directory",
    }
    for text, needle in cases.items():
        with pytest.raises(UsageError, match=needle):
            check_target(parse_target(text))


def test_streams_and_new_paths_are_accepted(tmp_path: Path) -> None:
    for text in ("docker-archive:-", "docker-archive:/dev/null", f"oci:{tmp_path}/a/b/c"):
        check_target(parse_target(text))
    assert not (tmp_path / "a").exists()  # checking creates nothing


def test_a_bad_destination_is_refused_before_the_closure_is_read(tmp_path: Path) -> None:
    unreadable = Closure(("/nowhere/x",), {}, "x86_64-linux", "/nowhere")
    with pytest.raises(UsageError, match="does not exist"):
        build(unreadable, f"docker-archive:{tmp_path}/missing/image.tar")


# -- docker archive: whole or not at all -------------------------------------------------------


def test_a_bad_reference_leaves_the_old_archive_untouched(closure: Closure, tmp_path: Path) -> None:
    old = tmp_path / "image.tar"
    old.write_bytes(OLD)
    with pytest.raises(UsageError, match="lower-case"):
        build(closure, f"docker-archive:{old}:Bad/Name:1")
    assert old.read_bytes() == OLD


def interrupt_on_first_progress(event: Event) -> None:
    if isinstance(event, BlobProgress):
        raise KeyboardInterrupt


def test_an_interrupted_write_leaves_the_old_archive_and_no_temporary_file(
    closure: Closure, tmp_path: Path
) -> None:
    old = tmp_path / "out" / "image.tar"
    old.parent.mkdir()
    old.write_bytes(OLD)
    with pytest.raises(KeyboardInterrupt):
        build(closure, f"docker-archive:{old}", on_event=interrupt_on_first_progress)
    assert old.read_bytes() == OLD
    assert os.listdir(old.parent) == ["image.tar"]


def test_disk_full_is_an_image_error_naming_the_file(
    closure: Closure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tmp_path / "out" / "image.tar"
    old.parent.mkdir()
    old.write_bytes(OLD)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ImageError, match=rf"cannot write {old}: No space left on device"):
        build(closure, f"docker-archive:{old}")
    assert old.read_bytes() == OLD
    assert os.listdir(old.parent) == ["image.tar"]


def test_a_complete_archive_replaces_the_file_a_link_points_at(
    closure: Closure, tmp_path: Path
) -> None:
    real = tmp_path / "real.tar"
    real.write_bytes(OLD)
    (tmp_path / "link.tar").symlink_to("real.tar")
    build(closure, f"docker-archive:{tmp_path}/link.tar")
    assert os.readlink(tmp_path / "link.tar") == "real.tar"
    assert real.read_bytes() != OLD and real.stat().st_size % 10240 == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.tar", "real.tar", "store"]


# -- OCI layout: index.json never names a missing blob -----------------------------------------


def blob(layout: Path, digest: str) -> bytes:
    algorithm, hex_ = digest.split(":")
    data = (layout / "blobs" / algorithm / hex_).read_bytes()
    assert hashlib.sha256(data).hexdigest() == hex_
    return data


def images(layout: Path) -> dict[str, str]:
    """Tag -> manifest digest, after checking that every blob the index names is there."""
    index: dict[str, Any] = json.loads((layout / "index.json").read_bytes())
    tags = {}
    for entry in index["manifests"]:
        manifest = json.loads(blob(layout, entry["digest"]))
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blob(layout, descriptor["digest"])
        tags[entry["annotations"]["org.opencontainers.image.ref.name"]] = entry["digest"]
    return tags


def temporary_files(layout: Path) -> list[str]:
    return [str(p) for p in layout.rglob("*") if ".tmp-" in p.name]


def interrupt_call(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """Make the ``nth`` durable step (an fsync or rename) of a build raise KeyboardInterrupt."""
    calls = [0]

    def wrap(real: Callable[..., None]) -> Callable[..., None]:
        def step(*args: Any) -> None:
            calls[0] += 1
            if calls[0] == nth:
                raise KeyboardInterrupt
            real(*args)

        return step

    monkeypatch.setattr(os, "fsync", wrap(os.fsync))
    monkeypatch.setattr(os, "replace", wrap(os.replace))


def count_steps(monkeypatch: pytest.MonkeyPatch, action: Callable[[], object]) -> int:
    counted = [0]
    with monkeypatch.context() as m:
        for name in ("fsync", "replace"):
            real = getattr(os, name)

            def step(*args: Any, _real: Callable[..., None] = real) -> None:
                counted[0] += 1
                _real(*args)

            m.setattr(os, name, step)
        action()
    return counted[0]


NEWER = ImageOptions(created="2024-05-01T00:00:00Z")


def test_a_tag_that_moves_is_never_left_naming_missing_blobs(
    closure: Closure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = tmp_path / "ref"
    build(closure, f"oci:{reference}:t")
    steps = count_steps(monkeypatch, lambda: build(closure, f"oci:{reference}:t", options=NEWER))
    assert steps >= 4  # layers, config, manifest, index.json
    moved = images(reference)["t"]
    for nth in range(1, steps + 1):
        layout = tmp_path / f"layout-{nth}"
        build(closure, f"oci:{layout}:t")
        before = images(layout)["t"]
        with monkeypatch.context() as m:
            interrupt_call(m, nth)
            with pytest.raises(KeyboardInterrupt):
                build(closure, f"oci:{layout}:t", options=NEWER)
        assert images(layout)["t"] in (before, moved), nth
        assert temporary_files(layout) == [], nth
        build(closure, f"oci:{layout}:t", options=NEWER)
        assert images(layout) == {"t": moved}, nth


def test_an_interrupted_first_build_leaves_a_layout_the_next_build_accepts(
    closure: Closure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = count_steps(monkeypatch, lambda: build(closure, f"oci:{tmp_path}/ref:t"))
    for nth in range(1, steps + 1):
        layout = tmp_path / f"new-{nth}" / "oci"
        with monkeypatch.context() as m:
            interrupt_call(m, nth)
            with pytest.raises(KeyboardInterrupt):
                build(closure, f"oci:{layout}:t")
        if layout.exists():
            assert temporary_files(layout) == [], nth
            if (layout / "index.json").exists():
                assert images(layout) in ({}, images(tmp_path / "ref")), nth
        build(closure, f"oci:{layout}:t")
        assert images(layout) == images(tmp_path / "ref"), nth


def test_disk_full_in_a_layout_is_an_image_error_naming_it(
    closure: Closure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = tmp_path / "oci"
    build(closure, f"oci:{layout}:t")
    before = images(layout)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ImageError, match=rf"{layout}.*No space left on device"):
        build(closure, f"oci:{layout}:t", options=NEWER)
    assert images(layout) == before
