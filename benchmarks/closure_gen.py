"""Build a benchmark closure in the real Nix store and print its root store path.

    python -m benchmarks.closure_gen --shape realistic|tiny-files [--scale 1.0] [--seed 0]

Every store path is a ``builtins.derivation`` whose builder is the host's python3 running
``benchmarks/materialise.py`` (the sandbox is off, so a builder outside the store works) on a
JSON spec from ``benchmarks/shapes.py``. Data is generated inside the builders, so nothing big
goes through the Nix evaluator, and the same shape, scale and seed always give the same
derivations, so the same store paths: a second run only evaluates and finds them valid.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.plan import ClosurePlan
from benchmarks.shapes import SHAPES, plan_closure

DEFAULT_PYTHON = "/usr/bin/python3"
MATERIALISE = Path(__file__).with_name("materialise.py")
OFFLINE = ("--option", "substituters", "")


class GenerationError(RuntimeError):
    """nix-build (or the builder python) failed; the message says what to do."""


@dataclass(frozen=True)
class GeneratedClosure:
    """A plan and the store paths nix built for it (same order as ``plan.packages``)."""

    plan: ClosurePlan
    paths: tuple[str, ...]

    @property
    def root(self) -> str:
        return self.paths[-1]

    def path_of(self, name: str) -> str:
        for package, path in zip(self.plan.packages, self.paths, strict=True):
            if package.name == name:
                return path
        raise KeyError(name)


def nix_string(text: str) -> str:
    """``text`` as a Nix double-quoted string literal (no interpolation)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def nix_expression(plan: ClosurePlan, python: str = DEFAULT_PYTHON) -> str:
    """One Nix expression evaluating to the list of the plan's derivations, in order."""
    lines = [
        "let",
        '  materialise = builtins.toFile "ociforge-bench-materialise.py" '
        f"{nix_string(MATERIALISE.read_text(encoding='utf-8'))};",
        "  mk = name: deps: spec: builtins.derivation {",
        "    inherit name deps spec;",
        "    system = builtins.currentSystem;",
        f"    builder = {nix_string(python)};",
        # -I -S: ignore the host's environment variables and site-packages.
        '    args = [ "-I" "-S" materialise ];',
        '    passAsFile = [ "spec" ];',
        "  };",
    ]
    for i, package in enumerate(plan.packages):
        deps = " ".join(f"p{d}" for d in package.deps)
        lines.append(
            f"  p{i} = mk {nix_string(package.name)} [ {deps} ] {nix_string(package.spec_json())};"
        )
    lines.append("in [ " + " ".join(f"p{i}" for i in range(len(plan.packages))) + " ]")
    return "\n".join(lines) + "\n"


def build_plan(
    plan: ClosurePlan, *, python: str = DEFAULT_PYTHON, jobs: int | None = None
) -> GeneratedClosure:
    """Build every package of ``plan`` with nix-build; returns their store paths."""
    nix_build = shutil.which("nix-build")
    if nix_build is None:
        raise GenerationError("nix-build not found on PATH: install Nix")
    if not os.access(python, os.X_OK):
        raise GenerationError(f"{python} is not an executable python3: pass --python PATH")
    with tempfile.TemporaryDirectory(prefix="ociforge-bench-") as tmp:
        expr = Path(tmp) / "closure.nix"
        expr.write_text(nix_expression(plan, python), encoding="utf-8")
        argv = [
            nix_build,
            "--no-out-link",
            *OFFLINE,
            "--max-jobs",
            str(jobs or os.cpu_count() or 1),
            str(expr),
        ]
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
        )
    if proc.returncode != 0:
        tail = "\n".join(line[:300] for line in proc.stderr.strip().splitlines()[-20:])
        raise GenerationError(f"nix-build of the {plan.shape} closure failed:\n{tail}")
    paths = tuple(proc.stdout.split())
    if len(paths) != len(plan.packages):
        raise GenerationError(
            f"expected {len(plan.packages)} store paths from nix-build, got {len(paths)}"
        )
    return GeneratedClosure(plan, paths)


def generate(
    shape: str, scale: float = 1.0, seed: int = 0, *, python: str = DEFAULT_PYTHON
) -> GeneratedClosure:
    """Plan and build ``shape`` at ``scale`` (see benchmarks/shapes.py)."""
    return build_plan(plan_closure(shape, scale, seed), python=python)


def requisites(root: str) -> list[str]:
    """Every store path of ``root``'s closure, sorted (``nix-store --query --requisites``)."""
    proc = subprocess.run(
        ["nix-store", "--query", "--requisites", root],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise GenerationError(
            f"nix-store --query --requisites {root} failed: {proc.stderr.strip()}"
        )
    return sorted(proc.stdout.split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.closure_gen", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies sizes and counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--python", default=DEFAULT_PYTHON, help="python3 the builders run")
    args = parser.parse_args(argv)
    if not args.scale > 0:
        parser.error("--scale must be positive")
    plan = plan_closure(args.shape, args.scale, args.seed)
    stats = plan.stats()
    print(
        f"building {args.shape} x{args.scale:g}: {stats.packages} store paths, {stats.files} files,"
        f" {stats.bytes / 1e6:.0f} MB, {stats.symlinks} symlinks",
        file=sys.stderr,
    )
    try:
        closure = build_plan(plan, python=args.python)
    except GenerationError as exc:
        print(f"closure_gen: error: {exc}", file=sys.stderr)
        return 1
    print(closure.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
