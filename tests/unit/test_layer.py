"""Layer recipes and the one-pass digest threads."""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import pathlib
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import zstandard

import ociforge.threads as thread_tools
from ociforge import compress as compress_module
from ociforge.assemble.layer import EntriesLayer, LayerRecipe, LayerStream, StoreLayer, layer_key
from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.tarstream import TarEntry, TarOptions, entries_tar_chunks, store_tar_chunks

ALL = [Compression.GZIP, Compression.ZSTD, Compression.NONE]


def decompress(blob: bytes, algorithm: Compression) -> bytes:
    if algorithm is Compression.GZIP:
        return gzip.decompress(blob)
    if algorithm is Compression.ZSTD:
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


@pytest.fixture
def store(tmp_path: pathlib.Path) -> tuple[str, list[str]]:
    store_dir = tmp_path / "store"
    app = store_dir / "aaaa-app-1.0"
    (app / "bin").mkdir(parents=True)
    (app / "bin" / "app").write_bytes(b"\x7fELF" + os.urandom(3 << 20))  # spans several chunks
    (app / "README").write_text("hello\n" * 1000)
    lib = store_dir / "bbbb-lib"
    lib.mkdir()
    os.symlink("../aaaa-app-1.0/README", lib / "doc")
    return str(store_dir), [str(app), str(lib)]


def read_all(recipe: LayerRecipe) -> tuple[bytes, object]:
    stream = recipe.open()
    blob = b"".join(stream)
    return blob, stream.result


@pytest.mark.parametrize("algorithm", ALL)
def test_digests_equal_hashes_of_the_materialised_streams(
    store: tuple[str, list[str]], algorithm: Compression
) -> None:
    store_dir, paths = store
    recipe = StoreLayer(paths, store_dir, compression=CompressionOptions(algorithm))
    stream = recipe.open()
    blob = b"".join(stream)
    result = stream.result
    tar = b"".join(store_tar_chunks(paths, store_dir=store_dir))
    assert decompress(blob, algorithm) == tar
    assert result.diff_id == Digest(hashlib.sha256(tar).hexdigest())
    assert result.digest == Digest(hashlib.sha256(blob).hexdigest())
    assert result.size == len(blob)
    assert recipe.tar_size() == len(tar)
    if algorithm is Compression.NONE:
        assert result.digest == result.diff_id
    else:
        assert result.digest != result.diff_id


@pytest.mark.parametrize("algorithm", ALL)
def test_reopening_gives_identical_bytes(
    store: tuple[str, list[str]], algorithm: Compression
) -> None:
    store_dir, paths = store
    recipe = StoreLayer(paths, store_dir, compression=CompressionOptions(algorithm))
    first = read_all(recipe)
    partial = recipe.open()
    next(partial)  # an aborted upload...
    partial.close()
    assert read_all(recipe) == first  # ...then a fresh attempt from byte 0


def test_entries_layer() -> None:
    entries = (
        TarEntry("/tmp", "dir", 0o1777),
        TarEntry("/etc/group", "file", 0o644, b"root:x:0:\n"),
    )
    recipe = EntriesLayer(entries, TarOptions(mtime=5), CompressionOptions(Compression.ZSTD))
    blob, result = read_all(recipe)
    tar = b"".join(entries_tar_chunks(entries, options=TarOptions(mtime=5)))
    assert decompress(blob, Compression.ZSTD) == tar
    assert result == read_all(recipe)[1]
    assert recipe.tar_size() == len(tar)


def test_result_before_the_end_is_an_error(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    stream = StoreLayer(paths, store_dir).open()
    with pytest.raises(UsageError, match="read to the end"):
        _ = stream.result
    next(stream)
    with pytest.raises(UsageError, match="read to the end"):
        _ = stream.result
    for _ in stream:
        pass
    assert stream.result.size > 0


def test_recipes_are_frozen_values(store: tuple[str, list[str]]) -> None:
    store_dir, paths = store
    recipe = StoreLayer(list(paths), store_dir)
    assert recipe.paths == tuple(paths)
    assert recipe == StoreLayer(tuple(paths), store_dir)
    assert hash(recipe) == hash(StoreLayer(tuple(paths), store_dir))
    entries = EntriesLayer([TarEntry("/tmp", "dir")])
    assert entries.entries == (TarEntry("/tmp", "dir"),)


def test_errors_surface_while_streaming(tmp_path: pathlib.Path) -> None:
    store_dir = str(tmp_path / "store")
    stream = StoreLayer([f"{store_dir}/cccc-missing"], store_dir).open()
    with pytest.raises(ImageError, match="cccc-missing"):
        list(stream)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_releases_the_open_file(tmp_path: pathlib.Path) -> None:
    store_dir = tmp_path / "store"
    big = store_dir / "dddd-big"
    store_dir.mkdir()
    with open(big, "wb") as handle:
        handle.truncate(64 << 20)
    before = _open_fds()
    options = CompressionOptions(Compression.NONE)
    stream = StoreLayer([str(big)], str(store_dir), compression=options).open()
    next(stream)
    next(stream)  # now inside the file
    assert _open_fds() == before + 1
    stream.close()
    assert _open_fds() == before


@pytest.mark.parametrize(
    ("algorithm", "size"),
    [(Compression.NONE, 200 << 20), (Compression.GZIP, 48 << 20), (Compression.ZSTD, 48 << 20)],
)
def test_memory_does_not_grow_with_layer_size(
    tmp_path: pathlib.Path, algorithm: Compression, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In flight, in 1 MiB tar chunks: the reader's buffer and the chunk it is handing over, 2
    # queued, and for gzip 2 blocks per core plus one held back (libzstd's job buffers are not
    # Python allocations). Pin the core count so the bound is the same on any machine.
    monkeypatch.setattr(thread_tools, "cpu_count", lambda: 2)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    big = store_dir / "eeee-big"
    with open(big, "wb") as handle:
        handle.truncate(size)  # sparse: reads as zeros without using the disk
    recipe = StoreLayer([str(big)], str(store_dir), compression=CompressionOptions(algorithm))
    gc.collect()
    tracemalloc.start()
    try:
        with recipe.open() as stream:
            total = sum(len(chunk) for chunk in stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recipe.tar_size() > size
    assert total == stream.result.size
    assert peak < 12 << 20, f"peak {peak} bytes while streaming a {size}-byte layer"


@pytest.mark.parametrize("algorithm", ALL)
def test_blob_is_identical_whatever_the_thread_count(
    store: tuple[str, list[str]], algorithm: Compression
) -> None:
    store_dir, paths = store
    level = None if algorithm is Compression.NONE else 1
    recipe = StoreLayer(paths, store_dir, compression=CompressionOptions(algorithm, level))
    results = set()
    for threads in (1, 2, 3, 4):
        stream = LayerStream(recipe.tar_chunks(), recipe.compression, threads=threads)
        blob = b"".join(stream)
        assert stream.result.digest == Digest.of(blob)
        results.add((blob, stream.result))
    assert len(results) == 1


@pytest.mark.parametrize("algorithm", ALL)
def test_a_file_vanishing_while_streaming_raises_the_tarstream_error(
    tmp_path: pathlib.Path,
    algorithm: Compression,
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    path = tmp_path / "store" / "hhhh-app"
    path.mkdir(parents=True)
    with open(path / "a-big", "wb") as handle:
        handle.truncate(64 << 20)
    (path / "b-small").write_text("soon gone\n")
    recipe = StoreLayer([str(path)], str(path.parent), compression=CompressionOptions(algorithm))
    stream = recipe.open()
    next(stream)  # (gzip's first chunk is its header: nothing read yet)
    next(stream)  # the reader is inside a-big, having listed the directory
    os.unlink(path / "b-small")
    with pytest.raises(ImageError, match="b-small"):
        list(stream)
    assert new_readers() == []


def test_errors_from_the_tar_reach_the_caller_unchanged() -> None:
    error = ImageError("cannot read /nix/store/x-gone/file: No such file or directory")

    def tar() -> Iterator[bytes]:
        yield os.urandom(1 << 20)
        raise error

    for algorithm in ALL:
        with pytest.raises(ImageError) as info:
            list(LayerStream(tar(), CompressionOptions(algorithm)))
        assert info.value is error


def _sparse_store_path(tmp_path: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
    """A store dir holding one 256 MiB sparse file: a layer far longer than any read-ahead."""
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    big = store_dir / name
    with open(big, "wb") as handle:
        handle.truncate(256 << 20)
    return store_dir, big


@pytest.mark.parametrize("algorithm", ALL)
def test_closing_early_stops_the_reader_and_closes_the_file(
    tmp_path: pathlib.Path,
    algorithm: Compression,
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    store_dir, big = _sparse_store_path(tmp_path, "ffff-big")
    before = _open_fds()
    recipe = StoreLayer([str(big)], str(store_dir), compression=CompressionOptions(algorithm))
    with recipe.open() as stream:
        next(stream)
        next(stream)
    assert _open_fds() == before
    assert new_readers() == []


def test_an_abandoned_stream_stops_its_reader(
    tmp_path: pathlib.Path, new_readers: Callable[[], list[threading.Thread]]
) -> None:
    store_dir, big = _sparse_store_path(tmp_path, "gggg-big")
    before = _open_fds()
    stream = StoreLayer([str(big)], str(store_dir)).open()
    next(stream)
    del stream  # e.g. an upload that failed and was retried with a fresh stream
    gc.collect()
    deadline = time.monotonic() + 5
    while (new_readers() or _open_fds() != before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert new_readers() == []
    assert _open_fds() == before


def test_nothing_is_read_before_the_first_chunk_is_asked_for(
    new_readers: Callable[[], list[threading.Thread]],
) -> None:
    pulled = []

    def tar() -> Iterator[bytes]:
        pulled.append(1)
        yield b"x" * 10240

    stream = LayerStream(tar(), CompressionOptions())
    time.sleep(0.05)
    assert pulled == []
    assert new_readers() == []
    assert gzip.decompress(b"".join(stream)) == b"x" * 10240


def test_a_bad_thread_count_fails_when_the_stream_is_opened() -> None:
    with pytest.raises(UsageError, match="thread count"):
        LayerStream(iter([b"x"]), CompressionOptions(), threads=0)


def test_the_layer_key_names_the_gzip_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key computed where gzip runs on zlib must never match a blob ISA-L wrote (or the
    other way round): the same tar gives other bytes, so the registry's blob would not be the
    one this machine would write."""
    path = "/nix/store/" + "a" * 32 + "-app"
    layer = StoreLayer([path], compression=CompressionOptions(Compression.GZIP, 1))
    media = "application/vnd.oci.image.layer.v1.tar+gzip"
    on_isal = layer_key(layer, {path: "sha256:00"}, media)
    monkeypatch.setattr(compress_module, "isal_zlib", None)
    on_zlib = layer_key(layer, {path: "sha256:00"}, media)
    assert on_isal != on_zlib
    assert layer_key(layer, {path: "sha256:00"}, media) == on_zlib  # and it is stable
