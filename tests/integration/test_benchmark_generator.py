"""The benchmark closure generator, at 1/200 scale: real store paths with the promised shape;
and a smoke run of the push figures at that scale."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import zlib
from collections import defaultdict
from pathlib import Path

import pytest

from benchmarks.closure_gen import GeneratedClosure, generate, nix_expression, requisites
from benchmarks.run import report, run
from benchmarks.shapes import plan_closure

pytestmark = pytest.mark.integration
SCALE = 1 / 200


@pytest.fixture(scope="module")
def realistic() -> GeneratedClosure:
    return generate("realistic", SCALE)


def walk(paths: list[str] | tuple[str, ...]) -> list[Path]:
    found: list[Path] = []
    for top in paths:
        for dirpath, dirnames, filenames in os.walk(top):
            found += [Path(dirpath, n) for n in filenames + dirnames]
    return found


def references(path: str) -> set[str]:
    out = subprocess.run(
        ["nix-store", "--query", "--references", path], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split()) - {path}


def test_realistic_closure_is_the_planned_dag(realistic: GeneratedClosure) -> None:
    plan = realistic.plan
    assert len(plan.packages) >= 15
    assert requisites(realistic.root) == sorted(realistic.paths)
    for package, path in zip(plan.packages, realistic.paths, strict=True):
        assert references(path) == {realistic.paths[d] for d in package.deps}, package.name
    # A few applications under the root, and a base library nearly everything refers to.
    assert len(references(realistic.root)) == 4
    glibc = realistic.path_of("glibc-2.37-8")
    users = [p for p in realistic.paths if glibc in references(p)]
    assert len(users) >= len(realistic.paths) // 2


def test_realistic_closure_has_every_kind_of_entry(realistic: GeneratedClosure) -> None:
    entries = walk(realistic.paths)
    files = [e for e in entries if e.is_file() and not e.is_symlink()]
    links = [e for e in entries if e.is_symlink()]
    stats = realistic.plan.stats()
    assert len(files) == stats.files
    assert len(links) == stats.symlinks
    assert any(os.stat(f).st_mode & stat.S_IXUSR for f in files)
    assert any(not os.readlink(link).startswith("/") for link in links)
    absolute = [link for link in links if os.readlink(link).startswith("/nix/store/")]
    assert absolute
    # Absolute links point into other store paths and resolve.
    assert all(link.resolve().exists() for link in absolute)
    assert any(os.readlink(link).split("/")[3] != str(link).split("/")[3] for link in absolute)
    assert sum(len(str(e)) > 100 for e in entries) > len(entries) // 3


def test_identical_files_across_store_paths(realistic: GeneratedClosure) -> None:
    owners: dict[str, set[str]] = defaultdict(set)
    for f in walk(realistic.paths):
        if f.is_file() and not f.is_symlink() and f.stat().st_size > 1000:
            owners[hashlib.sha256(f.read_bytes()).hexdigest()].add(str(f).split("/")[3])
    assert max(len(stores) for stores in owners.values()) >= 3


def test_binaries_compress_like_real_ones(realistic: GeneratedClosure) -> None:
    stats = realistic.plan.stats()
    largest = max(
        (f for f in walk(realistic.paths) if f.is_file() and not f.is_symlink()),
        key=lambda f: f.stat().st_size,
    )
    assert largest.stat().st_size == stats.largest_file
    data = largest.read_bytes()
    ratio = len(data) / len(zlib.compress(data, 1))
    assert 2.3 < ratio < 3.3, ratio


def test_same_inputs_give_the_same_store_paths(realistic: GeneratedClosure) -> None:
    again = plan_closure("realistic", SCALE)
    assert nix_expression(again) == nix_expression(realistic.plan)
    assert generate("realistic", SCALE).paths == realistic.paths
    assert nix_expression(plan_closure("realistic", SCALE, seed=1)) != nix_expression(again)


def test_tiny_files_closure() -> None:
    closure = generate("tiny-files", SCALE)
    files = [f for f in walk(closure.paths) if f.is_file()]
    data = [f for f in files if "/share/tiny-data-" in str(f)]
    assert len(files) == closure.plan.stats().files
    assert len(data) == 1000
    assert all(10 <= f.stat().st_size <= 500 for f in data)
    assert requisites(closure.root) == sorted(closure.paths)


def test_churn_figures_report_bytes_uploaded_against_the_change(tmp_path: Path) -> None:
    """The churn set at 1/200 scale, one run: the bump changes two store paths (the package
    and the root), the push over the previous release uploads some blobs and skips others."""
    session = run(["churn"], SCALE, 1, tmp_path, warmup=False)
    assert session.failures == []
    text = report(session.results, 1, 2, warmup=False)
    assert "Leaf bump pushed over the previous release" in text
    for result in session.results:
        assert result.closure.changed_bytes and result.uploaded_bytes
        assert re.fullmatch(r"\d+ skipped, \d+ uploaded", str(result.blobs)), result.blobs
    assert not any(p.name.startswith("registry-") for p in tmp_path.iterdir())


def test_push_figures_report_cold_and_warm_pushes(tmp_path: Path) -> None:
    """The push set at 1/200 scale, one run: every row is in the report, cold runs upload
    every blob, warm runs none, and the registries' storage is gone afterwards."""
    session = run(["push"], SCALE, 1, tmp_path, warmup=False)
    assert session.failures == []
    results = session.results
    text = report(results, 1, 2, warmup=False)
    pushes = text.split("Pushes to docker-registry on loopback:")[1]
    by_name = {r.name: r for r in results}
    for name in (
        "push default vs seed pipeline",
        "push gzip-1",
        "push zstd-1",
        "push default vs build+skopeo",
    ):
        assert f"| {name} |" in pushes
        assert re.fullmatch(r"\d+ uploaded", str(by_name[name].blobs)), by_name[name].blobs
    for name, target in (("local cache", "0.50"), ("fresh runner", "1.00")):
        warm = by_name[f"warm push, {name}"]
        assert re.fullmatch(r"\d+ skipped", str(warm.blobs)), warm.blobs
        row = pushes.split(f"| warm push, {name} |")[1].splitlines()[0]
        cold_s = f"{by_name['push default vs seed pipeline'].ours.wall_s:.2f}"
        assert f"| {target} | {cold_s} |" in row
    assert "| start-up: ociforge --help |" in text.split("Pushes to")[0]
    assert all(r.ours.max_rss_kib > 1024 for r in results)
    assert not any(p.name.startswith("registry-") for p in tmp_path.iterdir())
