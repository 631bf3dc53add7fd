"""What an upload reads: chunks that know their digest and size once exhausted."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from ociforge.digest import Digest, HashingCounter

__all__ = ["BlobStream", "BytesBlob", "HashingStream", "StreamOpener"]


class BlobStream(Protocol):
    """An iterable of byte chunks that knows its digest and size once exhausted."""

    def __iter__(self) -> Iterator[bytes]: ...

    @property
    def digest(self) -> Digest: ...

    @property
    def size(self) -> int: ...


StreamOpener = Callable[[], BlobStream]


class HashingStream:
    """Wraps plain chunks into a BlobStream that hashes and counts them as they pass."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = chunks
        self._counter = HashingCounter()

    def __iter__(self) -> Iterator[bytes]:
        return self._counter.tap(self._chunks)

    @property
    def digest(self) -> Digest:
        return self._counter.digest

    @property
    def size(self) -> int:
        return self._counter.size


class BytesBlob(HashingStream):
    """A blob already in memory (a config): sent with Content-Length, repeatable after a 401."""

    def __init__(self, data: bytes) -> None:
        super().__init__([data] if data else [])
        self.data = data
