"""push-all against ten single pushes, same run: 10 images sharing a ~70% common closure.

    python -m benchmarks.push_all [--workdir DIR]

Prints wall times and bytes; asserts nothing (timings on shared machines are noise).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.registry import loopback_registry
from tests.support.nixstore import Package, make_closure

IMAGES = 10
COMMON, OWN = 7 << 20, 3 << 20  # incompressible bytes: 70% of each image is shared


def closures(tmp: Path) -> list[str]:
    rng = random.Random(20261203)
    packages = [Package("common-1.0", {"share/common.bin": rng.randbytes(COMMON)})]
    for i in range(IMAGES):
        own = {"share/own.bin": rng.randbytes(OWN)}
        packages.append(Package(f"img{i}-1.0", own, deps=("common-1.0",)))
    built = make_closure(tmp, packages)
    return [built[f"img{i}-1.0"] for i in range(IMAGES)]


def ociforge(args: list[str], home: Path) -> tuple[float, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "NIX_CONFIG": "substituters ="}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ociforge", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ociforge {' '.join(args)}: {done.stderr}")
    return time.monotonic() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path)
    work = parser.parse_args().workdir or Path(tempfile.mkdtemp(prefix="ocf-bench-"))
    (work / "nix").mkdir(parents=True, exist_ok=True)
    paths = closures(work / "nix")
    with loopback_registry(work / "registry") as server:
        single = 0.0
        for i, path in enumerate(paths):  # one CI job per image: its own HOME, no cache
            seconds, _ = ociforge(["push", path, f"{server.host}/single/img{i}:latest"],
                                  work / f"home-single-{i}")  # fmt: skip
            single += seconds
        toml = work / "images.toml"
        lines = ["[defaults]", f'registry = "{server.host}/all"']
        lines += [f'[images.img{i}]\nsource = "{p}"' for i, p in enumerate(paths)]
        toml.write_text("\n".join(lines) + "\n")
        cold, out = ociforge(["push-all", str(toml), "--json"], work / "home-all")
        warm, warm_out = ociforge(["push-all", str(toml), "--json"], work / "home-all")
    summary = json.loads(out)
    unique = COMMON + IMAGES * OWN
    print(f"10 single pushes: {single:.1f} s; push-all: {cold:.1f} s ({cold / single:.2f}x)")
    print(f"push-all uploaded {summary['uploaded_bytes']} B for {unique} B of unique store "
          f"content ({summary['uploaded_bytes'] / unique:.3f}x); distinct layers "
          f"{summary['layer_bytes']} B")  # fmt: skip
    statuses = {i["status"] for i in json.loads(warm_out)["images"]}
    print(f"warm re-run: {warm:.2f} s, statuses {sorted(statuses)}")


if __name__ == "__main__":
    main()
