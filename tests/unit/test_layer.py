"""Layer recipes and the one-pass digest pipeline."""

from __future__ import annotations

import gc
import gzip
import hashlib
import os
import pathlib
import tracemalloc

import pytest
import zstandard

from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.layer import EntriesLayer, LayerRecipe, StoreLayer
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
    assert (result.size, result.uncompressed_size) == (len(blob), len(tar))
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
    tmp_path: pathlib.Path, algorithm: Compression, size: int
) -> None:
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
    assert stream.result.uncompressed_size > size
    assert total == stream.result.size
    assert peak < 6 << 20, f"peak {peak} bytes while streaming a {size}-byte layer"
