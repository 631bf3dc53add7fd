"""Layer keys change with everything that shapes a layer's bytes, and nothing else."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ociforge.assemble.layer import EntriesLayer, LayerDigests, StoreLayer, layer_key
from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.publish.cache import LayerCache, default_cache_dir
from ociforge.tarstream import TarEntry, TarOptions

A, B = "/nix/store/" + "a" * 32 + "-a", "/nix/store/" + "b" * 32 + "-b"
HASHES = {A: "sha256-AAAA", B: "sha256-BBBB"}
MEDIA = "application/vnd.oci.image.layer.v1.tar+gzip"


def key(layer: StoreLayer | EntriesLayer, hashes: dict[str, str] = HASHES) -> str:
    return layer_key(layer, hashes, MEDIA)


def test_key_is_stable_and_covers_what_shapes_the_bytes() -> None:
    base = StoreLayer(paths=(A, B))
    assert key(base) == key(StoreLayer(paths=(A, B))) and key(base).startswith("sha256:")
    variants = [
        StoreLayer(paths=(B, A)),
        StoreLayer(paths=(A,)),
        StoreLayer(paths=(A, B), tar_options=TarOptions(mtime=2)),
        StoreLayer(paths=(A, B), tar_options=TarOptions(relative_names=True)),
        StoreLayer(paths=(A, B), compression=CompressionOptions(Compression.GZIP, 1)),
        StoreLayer(paths=(A, B), compression=CompressionOptions(Compression.ZSTD)),
    ]
    keys = {key(v) for v in variants}
    assert len(keys) == len(variants) and key(base) not in keys
    assert key(base, {**HASHES, B: "sha256-CHANGED"}) != key(base)
    assert layer_key(base, HASHES, "application/vnd.oci.image.layer.v1.tar+zstd") != key(base)


def test_entries_layer_key_follows_content() -> None:
    one = EntriesLayer(entries=(TarEntry("/etc/x", "file", 0o644, b"1"),))
    two = EntriesLayer(entries=(TarEntry("/etc/x", "file", 0o644, b"2"),))
    assert key(one) != key(two) and key(one) == key(EntriesLayer(entries=one.entries))


LAYER = LayerDigests(Digest.of(b"tar"), Digest.of(b"blob"), 4)


def test_cache_round_trip_and_bad_entries_read_as_missing(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path, b"secret")
    k = key(StoreLayer(paths=(A,)))
    assert cache.get(k) is None
    cache.put(k, LAYER)
    assert cache.get(k) == LAYER
    entry = next(tmp_path.rglob("*.json"))
    for garbage in [
        "{",
        "[]",
        '{"key": "other"}',
        entry.read_text().replace('"size": 4', '"size": -1'),
    ]:
        entry.write_text(garbage)
        assert cache.get(k) is None
    cache.forget(k)
    assert not entry.exists()


def test_concurrent_writers_never_leave_a_torn_entry(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path, b"secret")
    k = key(StoreLayer(paths=(A,)))
    errors: list[object] = []

    def writer() -> None:
        for _ in range(50):
            cache.put(k, LAYER)
            got = cache.get(k)
            if got not in (None, LAYER):
                errors.append(got)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and cache.get(k) == LAYER
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []


def test_unwritable_cache_is_only_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    LayerCache(blocker, b"secret").put(key(StoreLayer(paths=(A,))), LAYER)
    assert "cannot write the layer cache" in caplog.text


def test_default_cache_dir_follows_the_environment() -> None:
    assert default_cache_dir({"OCIFORGE_CACHE_DIR": "/x"}) == Path("/x")
    assert default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/ociforge")
