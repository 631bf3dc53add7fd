"""Content digests and the stream helpers that compute them on the fly."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ociforge.errors import UsageError

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, order=True)
class Digest:
    """A ``sha256:<hex>`` content digest (the only algorithm OCI registries all accept)."""

    hex: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.hex):
            raise UsageError(f"not a sha256 digest: {self.hex!r}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not _DIGEST_RE.match(text):
            raise UsageError(f"not a sha256 digest (want sha256:<64 hex>): {text!r}")
        return cls(text[len("sha256:") :])

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"sha256:{self.hex}"


class HashingCounter:
    """Hashes and counts the bytes passed through :meth:`tap`."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def tap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """``chunks`` hashed as they pass; closing this closes ``chunks`` (and its open file)."""
        try:
            for chunk in chunks:
                self.update(chunk)
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    @property
    def digest(self) -> Digest:
        return Digest(self._hash.hexdigest())
