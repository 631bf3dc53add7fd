"""Layers as reopenable recipes, their identity before any byte is read, and the one-pass
pipeline that digests them.

A recipe (its store paths or synthetic entries, plus tar and compression options) regenerates
the identical byte stream on every :meth:`LayerRecipe.open`, so a failed upload restarts from
byte 0 without temp files. One pass computes everything a manifest needs::

    tar chunks -> sha256 (diff_id) -> compress -> sha256 + count (digest, size) -> caller
    [----- reading thread -------]   [worker threads]   [------ caller's thread ------]

With ``Compression.NONE`` the blob *is* the tar, so it is hashed once (in the reading thread).
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import TracebackType

from ociforge.compress import Compression, CompressionOptions, compress_chunks
from ociforge.digest import Digest, HashingCounter
from ociforge.errors import OciforgeError, UsageError
from ociforge.tarstream import (
    TarEntry,
    TarOptions,
    entries_tar_chunks,
    store_tar_chunks,
    store_tar_size,
)
from ociforge.threads import Prefetch, check_threads

__all__ = [
    "KEY_ANNOTATION",
    "EntriesLayer",
    "LayerDigests",
    "LayerRecipe",
    "LayerStream",
    "StoreLayer",
    "layer_key",
]


@dataclass(frozen=True)
class LayerDigests:
    """What a manifest and a config need to know about one layer: from its stream, the local
    cache or a manifest pushed before (see ``layer_key``)."""

    diff_id: Digest  # sha256 of the uncompressed tar (config rootfs.diff_ids)
    digest: Digest  # sha256 of the blob as stored/uploaded (manifest layers[].digest)
    size: int  # blob size in bytes


class LayerStream:
    """One pass over a layer's blob: iterate the chunks, then read :attr:`result`.

    The tar is read (and its diff_id hashed) in a background thread a few chunks ahead,
    while this thread compresses (on ``threads`` cores, default all) and hashes the blob, so
    reading files, hashing and compressing overlap with flat memory. Errors raised while
    reading the tar reach the caller unchanged. Single use; close it (or use ``with``) to stop
    early: the reading thread is stopped and its open file closed before ``close`` returns.
    """

    def __init__(
        self,
        tar_chunks: Iterator[bytes],
        compression: CompressionOptions,
        *,
        threads: int | None = None,
    ) -> None:
        threads = check_threads(threads)  # a bad count fails here, not at the first chunk
        self._box: list[LayerDigests] = []  # the pipeline's result; not `self`: no ref cycle
        tar = HashingCounter()
        self._tar = Prefetch(tar.tap(tar_chunks), depth=_READ_AHEAD)
        self._chunks = _pipeline(self._tar, tar, compression, threads, self._box)

    def __iter__(self) -> LayerStream:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    @property
    def result(self) -> LayerDigests:
        """The layer's digests; known only once the stream has been read to its end."""
        if not self._box:
            raise UsageError("layer digests are known only after the stream is read to the end")
        return self._box[0]

    @property
    def digest(self) -> Digest:
        """The blob digest (what a registry names the blob by), once read to the end."""
        return self.result.digest

    @property
    def size(self) -> int:
        """The blob size in bytes, once read to the end."""
        return self.result.size

    def close(self) -> None:
        """Stop early: stops the reading thread and closes the tar generator (its open file)."""
        self._chunks.close()
        self._tar.close()  # a tar generator that never started holds no open file

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


_READ_AHEAD = 2  # tar chunks (1 MiB each) read ahead of the compressor


def _pipeline(
    tar_chunks: Prefetch[bytes],
    tar: HashingCounter,
    compression: CompressionOptions,
    threads: int,
    box: list[LayerDigests],
) -> Generator[bytes, None, None]:
    try:
        if compression.algorithm is Compression.NONE:
            blob = tar  # the blob is the tar: hash it once
            yield from tar_chunks
        else:
            blob = HashingCounter()
            yield from blob.tap(compress_chunks(tar_chunks, compression, threads=threads))
    finally:
        tar_chunks.close()  # stops the reading thread: its counter is final, or abandoned
    box.append(LayerDigests(diff_id=tar.digest, digest=blob.digest, size=blob.size))


class LayerRecipe(abc.ABC):
    """How to regenerate a layer's bytes; every :meth:`open` yields the identical stream."""

    compression: CompressionOptions

    @abc.abstractmethod
    def tar_chunks(self) -> Iterator[bytes]:
        """The uncompressed tar, in chunks."""

    def tar_size(self) -> int:
        """The exact length of :meth:`tar_chunks`' stream (subclasses avoid reading content)."""
        return sum(len(chunk) for chunk in self.tar_chunks())

    def open(self, *, threads: int | None = None) -> LayerStream:
        """A fresh one-pass stream of the (compressed) blob; ``threads`` as in LayerStream."""
        return LayerStream(self.tar_chunks(), self.compression, threads=threads)


@dataclass(frozen=True)
class StoreLayer(LayerRecipe):
    """Store paths, archived in the given order."""

    paths: Sequence[str]
    store_dir: str = "/nix/store"
    tar_options: TarOptions = field(default_factory=TarOptions)
    compression: CompressionOptions = field(default_factory=CompressionOptions)

    def __post_init__(self) -> None:
        if isinstance(self.paths, str):
            raise UsageError("a store layer needs a sequence of store paths, not one string")
        # A tuple: the recipe must not change under us, and stays hashable.
        object.__setattr__(self, "paths", tuple(self.paths))

    def tar_chunks(self) -> Iterator[bytes]:
        return store_tar_chunks(self.paths, store_dir=self.store_dir, options=self.tar_options)

    def tar_size(self) -> int:
        return store_tar_size(self.paths, store_dir=self.store_dir, options=self.tar_options)


@dataclass(frozen=True)
class EntriesLayer(LayerRecipe):
    """Synthetic entries (the customisation layer: /bin links, /etc/passwd, /tmp ...)."""

    entries: Sequence[TarEntry]
    tar_options: TarOptions = field(default_factory=TarOptions)
    compression: CompressionOptions = field(default_factory=CompressionOptions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))

    def tar_chunks(self) -> Iterator[bytes]:
        return entries_tar_chunks(self.entries, options=self.tar_options)


KEY_ANNOTATION = "dev.ociforge.layer.key"
# Bump when anything that shapes layer bytes changes in ociforge itself (tar format, headers).
KEY_FORMAT = 3  # 2: block-parallel gzip and multi-threaded zstd frames; 3: gzip on ISA-L


def layer_key(recipe: LayerRecipe, nar_hashes: Mapping[str, str], media_type: str) -> str:
    """``sha256:<hex>`` over everything the layer's blob bytes depend on."""
    identity: dict[str, object] = {
        "format": KEY_FORMAT,
        "media_type": media_type,
        "compression": [recipe.compression.algorithm.value, recipe.compression.effective_level],
        # The same input compresses to other bytes under another backend (ISA-L or zlib for
        # gzip) or another release of it: the engine names both, and the backend's own level.
        "engine": recipe.compression.engine,
    }
    if isinstance(recipe, StoreLayer):
        identity["tar"] = _tar_fields(recipe.tar_options)
        identity["store_dir"] = recipe.store_dir
        identity["paths"] = [[p, nar_hashes[p]] for p in recipe.paths]
    elif isinstance(recipe, EntriesLayer):
        identity["tar"] = _tar_fields(recipe.tar_options)
        identity["entries"] = [
            [e.name, e.kind, e.mode, hashlib.sha256(e.data).hexdigest(), e.target]
            for e in recipe.entries
        ]
    else:
        raise OciforgeError(f"internal: no cache key for {type(recipe).__name__}")
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _tar_fields(options: TarOptions) -> dict[str, object]:
    # Not asdict: its deep copies were half of planning a 100-layer image (5 of 11 ms, on the
    # warm push's critical path); the fields are plain values.
    return {f.name: getattr(options, f.name) for f in fields(options)}
