"""gzip / zstd / none layer compression: readable by the real tools, deterministic, lazy."""

from __future__ import annotations

import gzip
import itertools
import random
import struct
import subprocess
import zlib
from collections.abc import Iterator

import pytest
import zstandard
from isal import ISAL_VERSION, isal_zlib

from ociforge import compress as compress_module
from ociforge.compress import (
    Compression,
    CompressionOptions,
    GzipEngine,
    _fixed_blocks,
    compress_chunks,
    gzip_engine,
)
from ociforge.errors import UsageError

ALGORITHMS = [Compression.GZIP, Compression.ZSTD]


def sample(size: int, seed: int = 1) -> bytes:
    """Compressible but not trivial data (like a tar of text and binaries)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 12)) for _ in range(500)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def split(data: bytes, sizes: Iterator[int]) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(data):
        step = next(sizes)
        chunks.append(data[pos : pos + step])
        pos += step
    return chunks


def compress(data: bytes | list[bytes], options: CompressionOptions) -> bytes:
    chunks = [data] if isinstance(data, bytes) else data
    return b"".join(compress_chunks(chunks, options))


DATA = sample(2_600_000)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_chunking_of_the_input_does_not_change_the_output(algorithm: Compression) -> None:
    options = CompressionOptions(algorithm)
    whole = compress(DATA, options)
    rng = random.Random(7)
    for sizes in (
        itertools.repeat(1 << 20),
        itertools.repeat(4096),
        iter(lambda: rng.randint(1, 300_000), None),
        itertools.chain([0, 0, 1], itertools.repeat(999_999)),
    ):
        assert compress(split(DATA, sizes), options) == whole


def test_gzip_is_readable_by_gzip_and_pigz_and_has_a_fixed_header() -> None:
    blob = compress(DATA, CompressionOptions(Compression.GZIP))
    # magic, deflate, no flags (no file name), mtime 0, XFL 0 (level 3), OS 255 (unknown):
    # like Go's compress/gzip (Docker, containerd, go-containerregistry) and Python's gzip.
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    for tool in (["gzip", "-d"], ["pigz", "-d"]):
        assert subprocess.run(tool, input=blob, capture_output=True, check=True).stdout == DATA
    assert gzip.decompress(blob) == DATA
    # one member: a decoder that stops after the first member still gets everything
    assert zlib.decompressobj(31).decompress(blob) == DATA


def pigz_reference(data: bytes, level: int, *, isal: bool = True, block: int = 1 << 20) -> bytes:
    """The format, written out plainly: independent blocks, each with the 32 KiB before it as
    dictionary, sync-flushed (the last one finished), in one gzip member. Levels 1-3 deflate
    with ISA-L at that level (with zlib level 1 if ``isal`` is false), 4-9 with zlib."""
    lib = isal_zlib if isal and level <= 3 else zlib
    lib_level = level if lib is isal_zlib or level > 3 else 1
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00", bytes([{1: 4, 9: 2}.get(level, 0), 255])]
    starts = range(0, len(data), block)
    for start in starts:
        dictionary = data[max(0, start - 32768) : start]
        if dictionary:
            engine = lib.compressobj(lib_level, lib.DEFLATED, -15, 8, 0, dictionary)
        else:
            engine = lib.compressobj(lib_level, lib.DEFLATED, -15)
        last = start == starts[-1]
        out += [engine.compress(data[start : start + block])]
        out += [engine.flush(lib.Z_FINISH if last else lib.Z_SYNC_FLUSH)]
    if not data:
        out.append(zlib.compressobj(1, zlib.DEFLATED, -15).flush())
    out.append(struct.pack("<II", zlib.crc32(data), len(data)))
    return b"".join(out)


@pytest.mark.parametrize("level", [6, 9])
def test_gzip_is_pigz_style_independent_blocks(level: int) -> None:
    blob = compress(
        split(DATA, itertools.repeat(70_000)), CompressionOptions(Compression.GZIP, level)
    )
    assert blob == pigz_reference(DATA, level)
    # the price of independent blocks: well under 1% against one deflate stream
    assert len(blob) < len(gzip.compress(DATA, compresslevel=level, mtime=0)) * 1.01


@pytest.mark.parametrize("level", [1, 2, 3])
def test_gzip_levels_1_to_3_run_on_isal_in_the_same_block_format(level: int) -> None:
    blob = compress(
        split(DATA, itertools.repeat(70_000)), CompressionOptions(Compression.GZIP, level)
    )
    assert blob == pigz_reference(DATA, level)
    assert blob != pigz_reference(DATA, level, isal=False)
    for tool in (["gzip", "-d", "-c"], ["igzip", "-d", "-c"]):
        assert subprocess.run(tool, input=blob, capture_output=True, check=True).stdout == DATA


@pytest.mark.parametrize("level", [1, 2, 3])
def test_without_isal_levels_1_to_3_are_zlib_level_1(
    level: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compress_module, "isal_zlib", None)
    blob = compress(DATA, CompressionOptions(Compression.GZIP, level))
    assert blob == pigz_reference(DATA, level, isal=False)
    assert gzip_engine(level) == GzipEngine("zlib", zlib.ZLIB_RUNTIME_VERSION, 1)
    assert CompressionOptions(Compression.GZIP, level).engine.startswith("zlib ")


def test_the_engine_names_backend_version_and_level() -> None:
    assert gzip_engine(3) == GzipEngine("isal", ISAL_VERSION, 3)
    assert gzip_engine(4) == GzipEngine("zlib", zlib.ZLIB_RUNTIME_VERSION, 4)
    assert CompressionOptions().engine == f"ISA-L {ISAL_VERSION} level 3"
    assert (
        CompressionOptions(Compression.GZIP, 9).engine
        == f"zlib {zlib.ZLIB_RUNTIME_VERSION} level 9"
    )
    assert (
        CompressionOptions(Compression.ZSTD).engine
        == "zstd " + ".".join(map(str, zstandard.ZSTD_VERSION)) + " level 3"
    )
    assert CompressionOptions(Compression.NONE).engine == "none"


GZIP_BLOCK = 1 << 20
EDGE_SIZES = [0, 1, 1000, 32767, 32768, GZIP_BLOCK - 1, GZIP_BLOCK, GZIP_BLOCK + 1, 3 * GZIP_BLOCK]


@pytest.mark.parametrize("size", EDGE_SIZES)
def test_gzip_edge_sizes_round_trip_through_every_decoder(size: int) -> None:
    data = sample(size, seed=size)
    blob = compress(split(data, itertools.repeat(100_000)), CompressionOptions(Compression.GZIP))
    assert blob == pigz_reference(data, 3)
    assert gzip.decompress(blob) == data
    for tool in (["gzip", "-d", "-c"], ["pigz", "-d", "-c"]):
        assert subprocess.run(tool, input=blob, capture_output=True, check=True).stdout == data


@pytest.mark.parametrize("size", [*EDGE_SIZES, (1 << 20) - 1, 1 << 20, (3 << 20) + 5])
def test_zstd_edge_sizes_round_trip(size: int) -> None:
    data = sample(size, seed=size)
    blobs = {
        compress(split(data, itertools.repeat(step)), CompressionOptions(Compression.ZSTD))
        for step in (1 << 20, 77_777)
    }
    assert len(blobs) == 1
    blob = blobs.pop()
    out = subprocess.run(["zstd", "-d", "-c"], input=blob, capture_output=True, check=True)
    assert out.stdout == data
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == data


@pytest.mark.parametrize(
    "options",
    [CompressionOptions(Compression.GZIP, 1), CompressionOptions(Compression.GZIP, 6)]
    + [CompressionOptions(Compression.ZSTD, level) for level in (1, 3)],
    ids=["gzip-1-isal", "gzip-6-zlib", "zstd-1", "zstd-3"],
)
def test_thread_count_does_not_change_a_byte(options: CompressionOptions) -> None:
    reference = compress(DATA, options)
    rng = random.Random(11)
    for threads in (1, 2, 3, 4, 8):
        chunks = split(DATA, iter(lambda: rng.randint(1, 700_000), None))
        blob = b"".join(compress_chunks(chunks, options, threads=threads))
        assert blob == reference, f"{threads} threads"


@pytest.mark.parametrize("bad", [0, -2, True])
def test_thread_count_must_be_positive(bad: int) -> None:
    with pytest.raises(UsageError, match="thread count"):
        compress_chunks([b"x"], CompressionOptions(), threads=bad)


def test_blocks_of_a_reused_buffer_do_not_change_when_it_is_overwritten() -> None:
    """What lets a producer reuse its buffer while blocks are still in flight (gzip's workers;
    libzstd copies its input itself, so the test below cannot catch this for zstd)."""
    buffer = bytearray(b"a" * 8)
    blocks = _fixed_blocks([buffer], 4)  # type: ignore[list-item]
    first = next(blocks)
    buffer[:] = b"b" * 8
    assert bytes(first) == b"aaaa"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_reused_chunk_buffer_is_safe(algorithm: Compression) -> None:
    def reusing() -> Iterator[bytearray]:
        buffer = bytearray(1 << 20)
        for start in range(0, len(DATA), 1 << 20):
            piece = DATA[start : start + (1 << 20)]
            buffer[: len(piece)] = piece
            yield buffer if len(piece) == len(buffer) else buffer[: len(piece)]

    blob = b"".join(compress_chunks(reusing(), CompressionOptions(algorithm), threads=2))  # type: ignore[arg-type]
    assert blob == compress(DATA, CompressionOptions(algorithm))


def test_zstd_is_readable_by_zstd_with_checksum_and_no_content_size() -> None:
    blob = compress(DATA, CompressionOptions(Compression.ZSTD))
    out = subprocess.run(["zstd", "-d", "-c"], input=blob, capture_output=True, check=True).stdout
    assert out == DATA
    params = zstandard.get_frame_parameters(blob)
    assert params.has_checksum
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_input_is_a_valid_empty_stream(algorithm: Compression) -> None:
    blob = compress([], CompressionOptions(algorithm))
    tool = ["gzip", "-d"] if algorithm is Compression.GZIP else ["zstd", "-d", "-c"]
    assert subprocess.run(tool, input=blob, capture_output=True, check=True).stdout == b""


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_level_is_applied(algorithm: Compression) -> None:
    fast = compress(DATA, CompressionOptions(algorithm, 1))
    default = compress(DATA, CompressionOptions(algorithm))
    best = compress(DATA, CompressionOptions(algorithm, 9))
    assert len(best) < len(fast)
    assert default not in (fast, best)


def test_none_passes_bytes_through() -> None:
    chunks = [b"abc", b"", b"def" * 1000]
    assert list(compress_chunks(chunks, CompressionOptions(Compression.NONE))) == chunks


@pytest.mark.parametrize("threads", [1, 2, 4])
@pytest.mark.parametrize(
    # libzstd's workers buffer whole jobs (4 MiB at level 3, a few per worker); gzip blocks
    # are 1 MiB, two per thread.
    ("algorithm", "lag_mib"),
    [(Compression.GZIP, 12), (Compression.ZSTD, 40)],
)
def test_output_flows_before_the_input_ends(
    algorithm: Compression, lag_mib: int, threads: int
) -> None:
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        rng = random.Random(3)
        while True:
            consumed += 1
            yield rng.randbytes(1 << 20)  # incompressible: output must follow input

    out = compress_chunks(endless(), CompressionOptions(algorithm, 1), threads=threads)
    produced = 0
    while produced < 40 << 20:
        produced += len(next(out))
        assert consumed - (produced >> 20) <= lag_mib
    out.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("algorithm", "level", "message"),
    [
        ("gzip", 0, "1..9"),
        ("gzip", 10, "1..9"),
        ("zstd", 0, "1..22"),
        ("zstd", 23, "1..22"),
        ("none", 1, "none"),
        ("brotli", None, "unknown compression"),
    ],
)
def test_invalid_options_rejected(algorithm: str, level: int | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        CompressionOptions(algorithm, level)  # type: ignore[arg-type]


def test_options_accept_strings_and_report_effective_level() -> None:
    assert CompressionOptions("zstd").algorithm is Compression.ZSTD  # type: ignore[arg-type]
    assert CompressionOptions().effective_level == 3
    assert CompressionOptions(Compression.ZSTD).effective_level == 3
    assert CompressionOptions(Compression.ZSTD, 19).effective_level == 19
    assert CompressionOptions(Compression.NONE).effective_level is None
