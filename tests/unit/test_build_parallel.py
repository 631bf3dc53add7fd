"""An OCI layout build streams layers in parallel: the bytes and their order never change."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import ociforge.sinks as sinks
from ociforge.api import build
from ociforge.assemble import ImageOptions
from ociforge.compress import CompressionOptions
from ociforge.nix.closure import Closure, StorePathInfo

NAR_HASH = "sha256-" + "C" * 43 + "="


def closure_of_packages(store: Path, count: int) -> Closure:
    """``count`` store paths of different sizes (a chain: each refers to the next), so layers
    finish out of order when they run in parallel."""
    rng = random.Random(5)
    paths = [str(store / f"{chr(97 + i) * 32}-pkg{i}") for i in range(count)]
    infos = {}
    for i, path in enumerate(paths):
        os.makedirs(f"{path}/lib")
        size = (count - i) * 300_000
        Path(f"{path}/lib/data").write_bytes(rng.randbytes(size // 2) * 2)
        refs = (paths[i + 1],) if i + 1 < count else ()
        infos[path] = StorePathInfo(path, NAR_HASH, size, refs)
    return Closure((paths[0],), infos, "x86_64-linux", str(store))


def layout_files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_parallel_layers_write_the_same_layout_as_one_at_a_time(
    tmp_path: Path, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    closure = closure_of_packages(tmp_path / "store", 5)
    options = ImageOptions(compression=CompressionOptions(compression))  # type: ignore[arg-type]
    layouts = []
    for parallel, cores in ((1, 1), (2, 2), (4, 8)):
        monkeypatch.setattr(sinks, "_PARALLEL_LAYERS", parallel)
        monkeypatch.setattr(sinks, "cpu_count", lambda cores=cores: cores)
        out = tmp_path / f"layout-{parallel}"
        result = build(closure, f"oci:{out}:t", options=options)
        assert result.layers > 2
        layouts.append((result.manifest_digest, layout_files(out)))
    assert layouts[1] == layouts[0]
    assert layouts[2] == layouts[0]
