"""Layers as reopenable recipes, and the one-pass pipeline that digests them.

A recipe (its store paths or synthetic entries, plus tar and compression options) regenerates
the identical byte stream on every :meth:`LayerRecipe.open`, so a failed upload restarts from
byte 0 without temp files. One pass computes everything a manifest needs::

    tar chunks -> sha256 (diff_id) -> compress -> sha256 + count (digest, size) -> caller

With ``Compression.NONE`` the blob *is* the tar, so it is hashed once.
"""

from __future__ import annotations

import abc
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from ociforge.compress import Compression, CompressionOptions, compress_chunks
from ociforge.digest import Digest, HashingCounter
from ociforge.errors import UsageError
from ociforge.tarstream import (
    TarEntry,
    TarOptions,
    entries_tar_chunks,
    store_tar_chunks,
    store_tar_size,
)

__all__ = ["EntriesLayer", "LayerDigests", "LayerRecipe", "LayerStream", "StoreLayer"]


@dataclass(frozen=True)
class LayerDigests:
    """What a manifest and a config need to know about one layer."""

    diff_id: Digest  # sha256 of the uncompressed tar (config rootfs.diff_ids)
    digest: Digest  # sha256 of the blob as stored/uploaded (manifest layers[].digest)
    size: int  # blob size in bytes
    uncompressed_size: int


class LayerStream:
    """One pass over a layer's blob: iterate the chunks, then read :attr:`result`.

    Single use; close it (or use ``with``) to release open files when stopping early.
    """

    def __init__(self, tar_chunks: Iterator[bytes], compression: CompressionOptions) -> None:
        self._source = tar_chunks
        self._result: LayerDigests | None = None
        self._chunks = self._run(compression)

    def _run(self, compression: CompressionOptions) -> Generator[bytes, None, None]:
        tar = HashingCounter()
        tapped = tar.tap(self._source)
        if compression.algorithm is Compression.NONE:
            blob = tar  # the blob is the tar: hash it once
            yield from tapped
        else:
            blob = HashingCounter()
            yield from blob.tap(compress_chunks(tapped, compression))
        self._result = LayerDigests(
            diff_id=tar.digest, digest=blob.digest, size=blob.size, uncompressed_size=tar.size
        )

    def __iter__(self) -> LayerStream:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    @property
    def result(self) -> LayerDigests:
        """The layer's digests; known only once the stream has been read to its end."""
        if self._result is None:
            raise UsageError("layer digests are known only after the stream is read to the end")
        return self._result

    @property
    def digest(self) -> Digest:
        """The blob digest (what a registry names the blob by), once read to the end."""
        return self.result.digest

    @property
    def size(self) -> int:
        """The blob size in bytes, once read to the end."""
        return self.result.size

    def close(self) -> None:
        """Stop early: closes the tar generator now, so its open file is closed now."""
        self._chunks.close()
        if isinstance(self._source, Generator):
            self._source.close()

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LayerRecipe(abc.ABC):
    """How to regenerate a layer's bytes; every :meth:`open` yields the identical stream."""

    compression: CompressionOptions

    @abc.abstractmethod
    def tar_chunks(self) -> Iterator[bytes]:
        """The uncompressed tar, in chunks."""

    def tar_size(self) -> int:
        """The exact length of :meth:`tar_chunks`' stream (subclasses avoid reading content)."""
        return sum(len(chunk) for chunk in self.tar_chunks())

    def open(self) -> LayerStream:
        """A fresh one-pass stream of the (compressed) blob."""
        return LayerStream(self.tar_chunks(), self.compression)


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
