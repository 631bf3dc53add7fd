"""Layer compression: gzip, zstd or none, deterministic and streaming.

Determinism: the output is a function of the input bytes, the algorithm, the level and the
library version only. Input chunks are first re-cut into fixed 1 MiB blocks, so the way the
caller happens to chunk its data can never change the compressor's call sequence (and so its
output). gzip gets a fixed header (no file name, mtime 0, OS 255 "unknown", as Python's
``gzip.compress`` writes it); zstd frames carry a checksum and no content size (a streamed layer
has no size to pledge). The same zlib/libzstd versions are needed to reproduce a digest
byte-for-byte: other builds (zlib-ng, another zstd release) may choose other matches.

A block-parallel encoder (pigz-like) can replace ``_ENCODERS[algorithm]`` behind the same
``compress_chunks`` signature; its blocks would start at the same fixed boundaries.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard

from ociforge.errors import UsageError

__all__ = ["Compression", "CompressionOptions", "compress_chunks"]

_BLOCK_SIZE = 1 << 20


class Compression(str, enum.Enum):
    """A layer's compression; the value is what the CLI and media types call it."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


# algorithm -> (lowest level, highest level, default level)
_LEVELS: dict[Compression, tuple[int, int, int]] = {
    Compression.GZIP: (1, 9, 6),
    Compression.ZSTD: (1, 22, 3),
}


@dataclass(frozen=True)
class CompressionOptions:
    """Which algorithm, at which level (``None``: the algorithm's usual default)."""

    algorithm: Compression = Compression.GZIP
    level: int | None = None

    def __post_init__(self) -> None:
        try:
            algorithm = Compression(self.algorithm)
        except ValueError:
            raise UsageError(
                f"unknown compression {self.algorithm!r}: use gzip, zstd or none"
            ) from None
        object.__setattr__(self, "algorithm", algorithm)  # accept the plain string too
        level = self.level
        if level is None:
            return
        if algorithm is Compression.NONE:
            raise UsageError("a compression level makes no sense with compression 'none'")
        low, high, _ = _LEVELS[algorithm]
        if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
            raise UsageError(
                f"{algorithm.value} compression level must be {low}..{high}, got {level!r}"
            )

    @property
    def effective_level(self) -> int | None:
        """The level actually used (``None`` for no compression)."""
        if self.algorithm is Compression.NONE:
            return None
        return self.level if self.level is not None else _LEVELS[self.algorithm][2]


def compress_chunks(chunks: Iterable[bytes], options: CompressionOptions) -> Iterator[bytes]:
    """Compress a stream of chunks lazily; never holds more than about one block in memory."""
    if options.algorithm is Compression.NONE:
        return iter(chunks)
    level = options.level if options.level is not None else _LEVELS[options.algorithm][2]
    return _ENCODERS[options.algorithm](_fixed_blocks(chunks, _BLOCK_SIZE), level)


def _fixed_blocks(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut ``chunks`` into blocks of exactly ``size`` bytes (the last one may be shorter)."""
    pending = bytearray()
    for chunk in chunks:
        if not pending and len(chunk) == size:  # the tar stream's usual case: pass through
            yield chunk
            continue
        pending += chunk
        while len(pending) >= size:
            yield bytes(pending[:size])
            del pending[:size]
    if pending:
        yield bytes(pending)


def _gzip_header(level: int) -> bytes:
    # XFL says "best" (2) or "fastest" (4) like gzip and Python's gzip module do.
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)


def _gzip(blocks: Iterator[bytes], level: int) -> Iterator[bytes]:
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate
    crc = 0
    size = 0
    yield _gzip_header(level)
    for block in blocks:
        crc = zlib.crc32(block, crc)
        size += len(block)
        out = deflate.compress(block)
        if out:
            yield out
    yield deflate.flush() + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _zstd(blocks: Iterator[bytes], level: int) -> Iterator[bytes]:
    # threads=0: multi-threaded zstd writes different (if equally valid) frames.
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=True, write_content_size=False, threads=0
    )
    stream = compressor.compressobj()
    for block in blocks:
        out = stream.compress(block)
        if out:
            yield out
    yield stream.flush()


_ENCODERS: dict[Compression, Callable[[Iterator[bytes], int], Iterator[bytes]]] = {
    Compression.GZIP: _gzip,
    Compression.ZSTD: _zstd,
}
