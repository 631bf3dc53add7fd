"""What the harness measures: each figure is an ociforge command and the shell pipeline that
does the same work, run on the same closure in the same session.

A *figure set* is a function ``(ctx, stack) -> list[Figure]``; :data:`FIGURE_SETS` lists them.
``ctx.closure(shape, scale)`` builds (or finds) a closure; ``stack`` is an ``ExitStack`` closed
after all figures ran, for sets that need a service. Adding push figures is one function::

    def push_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
        registry = stack.enter_context(local_registry(ctx.workdir / "registry"))  # loopback
        closure = ctx.closure("realistic", ctx.scale)
        ours = ctx.ociforge("push", closure.root, f"{registry}/bench/realistic:latest", ...)
        reference = ctx.pipeline("... | pigz -1 | curl --upload-file - ...", closure)
        return [Figure("push gzip-1", closure, ours, reference, "tar | pigz | upload")]

and one line in :data:`FIGURE_SETS`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.closure_gen import generate, requisites
from benchmarks.measure import Command

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ClosureInfo:
    shape: str
    scale: float
    root: str
    paths: tuple[str, ...]
    nar_bytes: int
    files: int

    @property
    def label(self) -> str:
        return f"{self.shape} x{self.scale:g}"


@dataclass(frozen=True)
class Figure:
    """One comparison: ``ours`` and ``reference`` (None: nothing to compare with)."""

    name: str
    closure: ClosureInfo
    ours: Command
    reference: Command | None
    reference_text: str = ""


@dataclass
class BenchContext:
    workdir: Path
    scale: float
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    _closures: dict[tuple[str, float], ClosureInfo] = field(default_factory=dict)

    def closure(self, shape: str, scale: float) -> ClosureInfo:
        """The closure of ``shape`` at ``scale``, generated in the store on first use."""
        key = (shape, scale)
        if key not in self._closures:
            log.info("generating %s x%g (nearly free when already in the store)", shape, scale)
            generated = generate(shape, scale)
            paths = tuple(requisites(generated.root))
            self._closures[key] = ClosureInfo(
                shape, scale, generated.root, paths, nar_size(paths), generated.plan.stats().files
            )
        return self._closures[key]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NIX_CONFIG"] = "substituters =\n" + env.get("NIX_CONFIG", "")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def ociforge(self, label: str, *args: str, output: Path | None = None) -> Command:
        """``python -m ociforge ARGS`` from this checkout; ``output`` is emptied before each run."""
        prepare = None if output is None else _emptier(output)
        argv = (sys.executable, "-m", "ociforge", *args)
        return Command(label, argv, prepare=prepare, env=self.env(), cwd=REPO)

    def pipeline(self, label: str, stages: str, closure: ClosureInfo) -> Command:
        """``tar -cf - PATHS | STAGES`` in bash with pipefail (paths relative to /)."""
        script = f'set -o pipefail; tar -C / -cf - "$@" | {stages}'
        names = tuple(p.lstrip("/") for p in closure.paths)
        return Command(label, ("bash", "-c", script, "bash", *names), env=self.env())


def _emptier(path: Path) -> Callable[[], None]:
    def empty() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return empty


def nar_size(paths: tuple[str, ...]) -> int:
    """The closure's size as nix counts it (sum of narSize)."""
    proc = subprocess.run(
        ["nix-store", "--query", "--size", *paths],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return sum(int(n) for n in proc.stdout.split())


# --- the figure sets -------------------------------------------------------------------------


def build_figure(
    ctx: BenchContext, closure: ClosureInfo, compression: str, level: int | None, stages: str
) -> Figure:
    """``ociforge build`` into a fresh OCI layout against ``tar | STAGES`` on the same paths.

    The reference ends in ``sha256sum`` because ociforge hashes every layer it writes; it writes
    nothing, so it is the floor a shell pipeline reaches, not a full image build.
    """
    tag = compression if level is None else f"{compression}-{level}"
    out = ctx.workdir / f"oci-{tag}-{closure.shape}-{closure.scale:g}"
    args = ["build", closure.root, f"oci:{out}:bench", "--json", "--no-progress"]
    args += ["--compression", compression]
    if level is not None:
        args += ["--compression-level", str(level)]
    ours = ctx.ociforge(f"ociforge build {tag}", *args, output=out)
    reference = ctx.pipeline(f"tar | {stages}", stages, closure)
    return Figure(f"build {tag}", closure, ours, reference, f"tar | {stages}")


def gzip1(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "gzip", 1, f"pigz -1 -p {ctx.jobs} | sha256sum")


def zstd3(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "zstd", 3, "zstd -3 -T0 -q -c | sha256sum")


def uncompressed(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "none", None, "sha256sum")


def build_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    realistic = ctx.closure("realistic", ctx.scale)
    tiny = ctx.closure("tiny-files", ctx.scale)
    return [gzip1(ctx, realistic), zstd3(ctx, realistic), uncompressed(ctx, tiny), gzip1(ctx, tiny)]


def linearity_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    """gzip-1 builds at 1/4 and 1/2 of the scale (the full scale is in ``build``)."""
    return [gzip1(ctx, ctx.closure("realistic", ctx.scale * f)) for f in (0.25, 0.5)]


FigureSet = Callable[[BenchContext, ExitStack], list[Figure]]
FIGURE_SETS: dict[str, FigureSet] = {
    "build": build_figures,
    "linearity": linearity_figures,
}
