"""What others can write (a registry's answers, a shared cache directory, a manifest under a
tag) never costs unbounded memory, blocks a push, or is believed without its key."""

from __future__ import annotations

import gzip
import json
import os
import threading
from pathlib import Path

import httpx
import pytest

from ociforge.assemble.layer import LayerDigests
from ociforge.digest import Digest
from ociforge.errors import ImageError, RegistryError
from ociforge.image.documents import parse_manifest
from ociforge.publish.cache import LayerCache
from ociforge.registry.client import RegistryClient
from ociforge.registry.manifests import get_manifest
from ociforge.trust import local_secret

KEY = "sha256:" + "1" * 64
LAYER = LayerDigests(Digest.of(b"tar"), Digest.of(b"blob"), 4)


def test_a_compressed_answer_is_refused_not_decoded() -> None:
    """128 KiB of zstd can be gigabytes: a body is never decoded past the limits we count."""
    bomb = gzip.compress(b"{" * (8 << 20))

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(200, content=bomb, headers={"Content-Encoding": "gzip"})

    transport = httpx.MockTransport(registry)
    client = RegistryClient("registry.test", transport=transport)
    with client, pytest.raises(RegistryError, match="Content-Encoding 'gzip'"):
        get_manifest(client, "app", "latest")


def test_a_deeply_nested_manifest_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="nested too deeply"):
        parse_manifest(b"[" * 100_000)


def test_a_fifo_in_the_cache_is_ignored_without_blocking(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path, b"s" * 32)
    cache.put(KEY, LAYER)
    entry = next(tmp_path.rglob("*.json"))
    entry.unlink()
    os.mkfifo(entry)
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(cache.get(KEY)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading a FIFO in the cache blocked"
    assert found == [None]


def test_an_entry_written_with_another_secret_is_ignored(tmp_path: Path) -> None:
    LayerCache(tmp_path, b"a" * 32).put(KEY, LAYER)
    assert LayerCache(tmp_path, b"a" * 32).get(KEY) == LAYER
    assert LayerCache(tmp_path, b"b" * 32).get(KEY) is None
    entry = next(tmp_path.rglob("*.json"))
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "size": 5}))  # changed after it was MAC'd
    assert LayerCache(tmp_path, b"a" * 32).get(KEY) is None


def test_the_machine_secret_is_32_bytes_or_nothing(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": str(tmp_path)}
    made = local_secret(env)
    assert made is not None and len(made) == 32 and local_secret(env) == made
    secret_file = tmp_path / "ociforge" / "cache-secret"
    assert secret_file.stat().st_mode & 0o077 == 0
    secret_file.write_bytes(b"")
    assert local_secret(env) is None  # an empty secret turns the cache off, never weakens it
