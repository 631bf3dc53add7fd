"""Layer compression: gzip, zstd or none, deterministic, streaming and on every core.

Determinism: the output is a function of the input bytes, the algorithm, the level and the
backend library and its version only; never of the thread count or of how the caller chunks
its data.

- Input chunks are first re-cut into fixed-size blocks, so the caller's chunking can never
  change the compressor's call sequence (and so its output).
- gzip is block-parallel, like pigz: the input is cut at fixed 1 MiB boundaries, each block
  is raw-deflated on its own in a thread pool (by ISA-L or zlib, see below) with the 32 KiB
  before it as preset dictionary and ends with a sync flush (the last one with a final block),
  and the pieces are concatenated into one gzip member: a fixed header (no file name, mtime 0,
  OS 255 "unknown", as Python's ``gzip.compress`` writes it) and the crc32/size trailer. Each
  block depends only on its own bytes and the 32 KiB before it, so the thread count cannot
  change a byte. It costs about 0.1% of size against a one-shot deflate.
- zstd uses libzstd's own worker threads (``threads >= 1``, never 0): multi-threaded zstd cuts
  its jobs at a fixed size (set here from the level), not by the worker count, so 1, 2 or 64
  workers write the same frame (single-threaded mode, ``threads=0``, writes a different one, so
  it is never used). Frames carry a checksum and no content size (a streamed layer has no size
  to pledge).

gzip backends: ISA-L (``isal``) deflates 6-16x faster than zlib at zlib-1-like sizes, but it
has only levels 1-3. The user's gzip levels 1-9 keep zlib's meaning (1 fastest, 9 smallest):
levels 1-3 run on ISA-L's levels 1-3, or on zlib level 1 without ISA-L (zlib 2-3 are much
slower for a few percent, and ISA-L's 1-3 all land near zlib 1's size); levels 4-9 run on zlib
at that level, as ISA-L cannot compress that small. :func:`gzip_engine` says which ran.

The same backend (ISA-L, zlib or libzstd) and version are needed to reproduce a digest
byte-for-byte: other builds (zlib-ng, another zstd release) may choose other matches. Memory is
bounded: a few blocks per thread for gzip; for zstd, libzstd's job buffers (about 15 MiB per
worker at level 3).
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import zstandard

try:  # wheels for the usual platforms; without it gzip runs on zlib, slower but the same format
    from isal import ISAL_VERSION
    from isal import isal_zlib as _isal_zlib

    isal_zlib: ModuleType | None = _isal_zlib
except ImportError:  # pragma: no cover - depends on the platform
    isal_zlib = None
    ISAL_VERSION = ""

from ociforge.errors import UsageError
from ociforge.threads import check_threads, ordered_map

__all__ = ["Compression", "CompressionOptions", "GzipEngine", "compress_chunks", "gzip_engine"]

_ZSTD_BLOCK = 1 << 20  # what zstd is fed per call
_ZSTD_JOB = 2 << 20  # the smallest job libzstd's workers compress at once: part of the format
# Each gzip block is deflated on its own: changing the size changes the bytes. 1 MiB, not
# pigz's 128 KiB: every block costs two GIL hand-overs in a worker (up to the 5 ms switch
# interval each while the tar reader runs Python code), so big blocks keep the cores busy.
_GZIP_BLOCK = 1 << 20
_WINDOW = 32 << 10  # deflate's window: the preset dictionary of each gzip block
_AHEAD_PER_THREAD = 2  # gzip blocks in flight per thread: keeps every core busy, memory flat

Buffer = bytes | memoryview


class Compression(str, enum.Enum):
    """A layer's compression; the value is what the CLI and media types call it."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


# algorithm -> (lowest level, highest level, default level). gzip 3 is ISA-L's best level: on
# ISA-L the fastest setting that keeps zlib-1's sizes on every closure measured (its levels 1-2
# are 1.5x faster but up to 1.55x larger on some data); see README "Speed and defaults".
_LEVELS: dict[Compression, tuple[int, int, int]] = {
    Compression.GZIP: (1, 9, 3),
    Compression.ZSTD: (1, 22, 3),
}
_ISAL_TOP = 3  # ISA-L's highest level: gzip levels above it need zlib
# The same CRC-32, 3.5x faster with ISA-L's: it runs in the one thread that feeds the workers.
_crc32: Callable[[Buffer, int], int] = isal_zlib.crc32 if isal_zlib is not None else zlib.crc32


@dataclass(frozen=True)
class GzipEngine:
    """Which deflate implementation and level a gzip level runs on."""

    backend: str  # "isal" or "zlib"
    version: str  # the library's version: another version may write other bytes
    level: int  # the backend's own level

    def __str__(self) -> str:
        name = "ISA-L" if self.backend == "isal" else "zlib"
        return f"{name} {self.version} level {self.level}"


def gzip_engine(level: int) -> GzipEngine:
    """The engine that deflates gzip ``level``: ISA-L for levels 1-3 when it imports."""
    if isal_zlib is not None and level <= _ISAL_TOP:
        return GzipEngine("isal", ISAL_VERSION, level)
    # Without ISA-L, its levels' zlib equivalent is level 1: 2-3 cost much time for little.
    return GzipEngine("zlib", zlib.ZLIB_RUNTIME_VERSION, 1 if level <= _ISAL_TOP else level)


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
        """The level asked for, or the default (``None`` for no compression)."""
        if self.algorithm is Compression.NONE:
            return None
        return self.level if self.level is not None else _LEVELS[self.algorithm][2]

    @property
    def engine(self) -> str:
        """The library, its version and level that write these bytes (``none``: none)."""
        level = self.effective_level
        if level is None:
            return "none"
        if self.algorithm is Compression.GZIP:
            return str(gzip_engine(level))
        return f"zstd {'.'.join(map(str, zstandard.ZSTD_VERSION))} level {level}"


def compress_chunks(
    chunks: Iterable[bytes], options: CompressionOptions, *, threads: int | None = None
) -> Iterator[bytes]:
    """Compress a stream of chunks lazily, on ``threads`` threads (default: every core).

    The thread count never changes the output. Memory stays flat: a few blocks per thread are
    in flight. Chunks that are not ``bytes`` are copied, so a caller may reuse its buffer.
    """
    workers = check_threads(threads)
    level = options.effective_level
    if level is None:  # Compression.NONE
        return iter(chunks)
    return _ENCODERS[options.algorithm](chunks, level, workers)


def _fixed_blocks(chunks: Iterable[bytes], size: int) -> Iterator[Buffer]:
    """Re-cut ``chunks`` into blocks of exactly ``size`` bytes (the last one may be shorter).

    Blocks inside a chunk are zero-copy views of it; only blocks spanning chunks are copied.
    """
    pending = bytearray()
    for chunk in chunks:
        # A view of a mutable buffer could change under a block still in flight: copy those.
        view = memoryview(chunk if isinstance(chunk, bytes) else bytes(chunk))
        if pending:
            head = view[: size - len(pending)]
            pending += head
            view = view[len(head) :]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending = bytearray()
        while len(view) >= size:
            yield view[:size]
            view = view[size:]
        pending += view
    if pending:
        yield bytes(pending)


def _gzip_header(level: int) -> bytes:
    # XFL says "best" (2) or "fastest" (4) like gzip and Python's gzip module do (by the level
    # asked for, so the header does not depend on the backend).
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    return struct.pack("<BBBBIBB", 0x1F, 0x8B, 8, 0, 0, xfl, 255)


@dataclass(frozen=True)
class _Block:
    """One gzip block and the window of input before it (its preset dictionary)."""

    data: Buffer
    dictionary: bytes  # the 32 KiB of input before the block (empty for the first)
    last: bool


def _deflate_block(engine: GzipEngine, block: _Block) -> bytes:
    """Raw deflate of one block: a pure function of its bytes, dictionary, engine and `last`.

    isal_zlib has zlib's API (and releases the GIL likewise), so one code path serves both.
    """
    lib: ModuleType | None = isal_zlib if engine.backend == "isal" else zlib
    assert lib is not None  # gzip_engine chooses isal only if it imported
    level = engine.level
    if block.dictionary:
        deflate = lib.compressobj(
            level, lib.DEFLATED, -lib.MAX_WBITS, lib.DEF_MEM_LEVEL, 0, block.dictionary
        )
    else:
        deflate = lib.compressobj(level, lib.DEFLATED, -lib.MAX_WBITS)
    # A sync flush ends the block on a byte boundary, so the next one can simply follow it.
    end = lib.Z_FINISH if block.last else lib.Z_SYNC_FLUSH
    out: bytes = deflate.compress(block.data) + deflate.flush(end)
    return out


class _Trailer:
    """crc32 and length of the uncompressed bytes, for the gzip trailer."""

    def __init__(self) -> None:
        self.crc = 0
        self.size = 0

    def jobs(self, blocks: Iterator[Buffer]) -> Iterator[_Block]:
        """The blocks as deflate jobs, each with its dictionary and whether it is the last."""
        held: Buffer | None = None  # one block of look-ahead: the last one ends differently
        dictionary = b""
        for block in blocks:
            self.crc = _crc32(block, self.crc)
            self.size += len(block)
            if held is not None:
                yield _Block(held, dictionary, last=False)
                dictionary = bytes(held[-_WINDOW:])  # a copy: do not pin the whole chunk
            held = block
        if held is not None:
            yield _Block(held, dictionary, last=True)

    def pack(self) -> bytes:
        return struct.pack("<II", self.crc, self.size & 0xFFFFFFFF)


def _gzip(chunks: Iterable[bytes], level: int, threads: int) -> Iterator[bytes]:
    trailer = _Trailer()
    jobs = trailer.jobs(_fixed_blocks(chunks, _GZIP_BLOCK))
    engine = gzip_engine(level)
    yield _gzip_header(level)
    yield from ordered_map(
        partial(_deflate_block, engine), jobs, workers=threads, ahead=_AHEAD_PER_THREAD * threads
    )
    if trailer.size == 0:  # no block at all: an empty final block (zlib's, the same at any level)
        yield zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS).flush()
    yield trailer.pack()


def _zstd_parameters(level: int, threads: int) -> zstandard.ZstdCompressionParameters:
    # threads >= 1 always (see the module docstring): the frame does not depend on the count.
    # Jobs of one window (at least 2 MiB) instead of libzstd's four (8 MiB at level 3): peak
    # RSS 77 instead of 124 MiB with two workers on the 1 GB benchmark, for 0.7% of size.
    window_log = zstandard.ZstdCompressionParameters.from_level(level).window_log
    return zstandard.ZstdCompressionParameters.from_level(
        level,
        threads=threads,
        job_size=max(_ZSTD_JOB, 1 << window_log),
        write_checksum=1,
        write_content_size=0,
    )


def _zstd(chunks: Iterable[bytes], level: int, threads: int) -> Iterator[bytes]:
    compressor = zstandard.ZstdCompressor(compression_params=_zstd_parameters(level, threads))
    stream = compressor.compressobj()
    for block in _fixed_blocks(chunks, _ZSTD_BLOCK):
        out = stream.compress(block)
        if out:
            yield out
    yield stream.flush()


_ENCODERS: dict[Compression, Callable[[Iterable[bytes], int, int], Iterator[bytes]]] = {
    Compression.GZIP: _gzip,
    Compression.ZSTD: _zstd,
}
