"""Writing images locally reports progress the way pushing does: bytes per layer as they go."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ociforge.api import build
from ociforge.assemble import ImageOptions
from ociforge.events import BlobFinished, BlobProgress, Event
from ociforge.nix.closure import Closure, StorePathInfo
from tests.unit.test_essentials import busybox

NAR_HASH = "sha256-" + "B" * 43 + "="


@pytest.mark.parametrize("target", ["oci:{tmp}/layout:t", "docker-archive:{tmp}/image.tar"])
def test_every_written_byte_is_reported(tmp_path: Path, target: str) -> None:
    store = tmp_path / "store"
    root = busybox(store)
    closure = Closure((root,), {root: StorePathInfo(root, NAR_HASH, 1)}, "x86_64-linux", str(store))
    events: list[Event] = []
    build(closure, target.format(tmp=tmp_path), on_event=events.append)
    progressed = Counter[str]()
    for event in events:
        if isinstance(event, BlobProgress):
            progressed[event.key] += event.delta
    finished = {e.key: e.size for e in events if isinstance(e, BlobFinished)}
    assert len(finished) == 2  # the store path's layer and the root links
    assert dict(progressed) == finished


def test_a_docker_archive_drops_manifest_annotations(tmp_path: Path) -> None:
    """GitLab CI annotates every manifest by itself: a docker archive, which cannot carry
    annotations, must still build there."""
    store = tmp_path / "store"
    root = busybox(store)
    closure = Closure((root,), {root: StorePathInfo(root, NAR_HASH, 1)}, "x86_64-linux", str(store))
    options = ImageOptions(annotations={"org.opencontainers.image.revision": "abc"})
    result = build(closure, f"docker-archive:{tmp_path}/image.tar", options=options)
    assert (tmp_path / "image.tar").stat().st_size > 0 and result.layers == 2
