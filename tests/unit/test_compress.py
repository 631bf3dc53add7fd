"""gzip / zstd / none layer compression: readable by the real tools, deterministic, lazy."""

from __future__ import annotations

import gzip
import itertools
import random
import subprocess
from collections.abc import Iterator

import pytest
import zstandard

from ociforge.compress import Compression, CompressionOptions, compress_chunks
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


def test_gzip_is_readable_by_gzip_and_has_a_fixed_header() -> None:
    blob = compress(DATA, CompressionOptions(Compression.GZIP))
    # magic, deflate, no flags (no file name), mtime 0, XFL 0 (level 6), OS 255 (unknown)
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert (
        subprocess.run(["gzip", "-d"], input=blob, capture_output=True, check=True).stdout == DATA
    )
    assert gzip.decompress(blob) == DATA


@pytest.mark.parametrize("level", [1, 6, 9])
def test_gzip_equals_zlib_one_shot_except_the_os_byte(level: int) -> None:
    blob = compress(
        split(DATA, itertools.repeat(70_000)), CompressionOptions(Compression.GZIP, level)
    )
    reference = gzip.compress(DATA, compresslevel=level, mtime=0)  # zlib's own gzip header
    # zlib writes OS 3 (Unix); we write 255 like Go's compress/gzip (Docker, containerd,
    # go-containerregistry) and Python's gzip header writer. Everything else is identical,
    # including XFL (4 for level 1, 2 for level 9).
    assert blob[:9] + blob[10:] == reference[:9] + reference[10:]
    assert (reference[9], blob[9]) == (3, 255)


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


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_output_flows_before_the_input_ends(algorithm: Compression) -> None:
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        rng = random.Random(3)
        while True:
            consumed += 1
            yield rng.randbytes(1 << 20)  # incompressible: output must follow input

    out = compress_chunks(endless(), CompressionOptions(algorithm))
    produced = 0
    while produced < 3 << 20:
        produced += len(next(out))
    assert consumed <= 6


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
    assert CompressionOptions().effective_level == 6
    assert CompressionOptions(Compression.ZSTD).effective_level == 3
    assert CompressionOptions(Compression.ZSTD, 19).effective_level == 19
    assert CompressionOptions(Compression.NONE).effective_level is None
