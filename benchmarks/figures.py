"""What the harness measures: each figure is an ociforge command and a reference command (the
shell pipeline doing the same work, or what users run instead), run on the same closure in the
same session.

A *figure set* is a function ``(ctx, stack) -> list[Figure]``; :data:`FIGURE_SETS` lists them.
``ctx.closure(shape, scale)`` builds (or finds) a closure; ``stack`` is an ``ExitStack`` closed
after all figures ran, for sets that need a service: the push set keeps two loopback
registries there (one wiped before every cold run, one that keeps what warm runs rely on).
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
from benchmarks.registry import loopback_registry, storage_wiper
from tests.support.registry import RegistryServer

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
    target_s: float | None = None  # a goal for ours' wall time (issue 4), shown, never checked
    cold_figure: str | None = None  # the figure (same closure, same run) this one is warm after
    setup: tuple[Command, ...] = ()  # run once, unrecorded, before anything else (warm-up too)


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

    def ociforge(
        self,
        label: str,
        *args: str,
        output: Path | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> Command:
        """``python -m ociforge ARGS`` from this checkout; ``output`` is emptied and ``prepare``
        called before each run."""
        hooks = ([] if output is None else [_emptier(output)]) + ([prepare] if prepare else [])
        argv = (sys.executable, "-m", "ociforge", *args)
        return Command(label, argv, prepare=_chain(hooks), env=self.env(), cwd=REPO)

    def pipeline(self, label: str, stages: str, closure: ClosureInfo) -> Command:
        """``tar -cf - PATHS | STAGES`` in bash with pipefail (paths relative to /)."""
        script = f'set -o pipefail; tar -C / -cf - "$@" | {stages}'
        names = tuple(p.lstrip("/") for p in closure.paths)
        return Command(label, ("bash", "-c", script, "bash", *names), env=self.env())


def _emptier(path: Path, *, recreate: bool = False) -> Callable[[], None]:
    def empty() -> None:
        shutil.rmtree(path, ignore_errors=True)
        if recreate:
            path.mkdir(parents=True)

    return empty


def _chain(hooks: list[Callable[[], None]]) -> Callable[[], None] | None:
    if not hooks:
        return None

    def run_all() -> None:
        for hook in hooks:
            hook()

    return run_all


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


def pigz1(ctx: BenchContext) -> str:
    return f"pigz -1 -p {ctx.jobs} | sha256sum"


ZSTD3 = "zstd -3 -T0 -q -c | sha256sum"


def gzip1(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "gzip", 1, pigz1(ctx))


def zstd3(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "zstd", 3, ZSTD3)


def uncompressed(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "none", None, "sha256sum")


def build_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    realistic = ctx.closure("realistic", ctx.scale)
    tiny = ctx.closure("tiny-files", ctx.scale)
    return [gzip1(ctx, realistic), zstd3(ctx, realistic), uncompressed(ctx, tiny), gzip1(ctx, tiny)]


def linearity_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    """gzip-1 builds at 1/4 and 1/2 of the scale (the full scale is in ``build``)."""
    return [gzip1(ctx, ctx.closure("realistic", ctx.scale * f)) for f in (0.25, 0.5)]


# --- push: a real registry on loopback (issues 4 and 5) ---------------------------------------

WARM_TARGET_S = 0.5  # unchanged closure, local cache present: nothing but nix and a few requests
FRESH_RUNNER_TARGET_S = 1.0  # empty cache: the tag's previous manifest tells what is there


def push_args(
    closure: ClosureInfo, ref: str, cache: Path, compression: str, level: int
) -> list[str]:
    return [
        "push", closure.root, ref, "--cache-dir", str(cache), "--compression", compression,
        "--compression-level", str(level), "--json", "--no-progress",
    ]  # fmt: skip


def cold_push(
    ctx: BenchContext,
    registry: RegistryServer,
    closure: ClosureInfo,
    repo: str,
    compression: str,
    level: int,
) -> Command:
    """``ociforge push`` as a fresh runner's first push: the registry is wiped and the layer
    cache emptied before every run, so every blob is compressed, hashed and uploaded."""
    cache = ctx.workdir / f"cache-{repo}"
    ref = f"{registry.host}/bench/{repo}:latest"
    prepare = _chain([storage_wiper(registry), _emptier(cache, recreate=True)])
    args = push_args(closure, ref, cache, compression, level)
    return ctx.ociforge(f"ociforge push {compression}-{level}", *args, prepare=prepare)


def push_figure(
    ctx: BenchContext,
    registry: RegistryServer,
    closure: ClosureInfo,
    compression: str,
    level: int,
    stages: str,
) -> Figure:
    """A cold push against ``tar | STAGES``: the same floor as the build figures (the reference
    uploads nothing; the registry's own work shows up in ociforge's wall time only)."""
    tag = f"{compression}-{level}"
    ours = cold_push(ctx, registry, closure, f"push-{tag}", compression, level)
    reference = ctx.pipeline(f"tar | {stages}", stages, closure)
    return Figure(f"push {tag}", closure, ours, reference, f"tar | {stages}")


def skopeo_figure(ctx: BenchContext, registry: RegistryServer, closure: ClosureInfo) -> Figure:
    """A cold push against what users do today: ``ociforge build`` to an OCI layout, then
    ``skopeo copy`` of that layout to the same (wiped) registry; both steps are timed."""
    layout = ctx.workdir / "oci-for-skopeo"
    ref = f"{registry.host}/bench/skopeo:latest"
    script = (
        'set -e; "$1" -m ociforge build "$2" "oci:$3:bench" --compression gzip'
        " --compression-level 1 --quiet --no-progress;"
        ' skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$3:bench" "docker://$4"'
    )
    argv = ("bash", "-c", script, "bash", sys.executable, closure.root, str(layout), ref)
    prepare = _chain([storage_wiper(registry), _emptier(layout)])
    reference = Command("build + skopeo copy", argv, prepare=prepare, env=ctx.env(), cwd=REPO)
    ours = cold_push(ctx, registry, closure, "push-vs-skopeo", "gzip", 1)
    text = "ociforge build gzip-1 oci:DIR && skopeo copy oci:DIR docker://REF"
    return Figure("push gzip-1 vs build+skopeo", closure, ours, reference, text)


def warm_figure(
    ctx: BenchContext, registry: RegistryServer, closure: ClosureInfo, *, fresh_runner: bool
) -> Figure:
    """The same closure pushed again to the same tag (the figure's setup is the cold push that
    fills the registry, and the cache). With ``fresh_runner`` the layer cache is emptied before
    every run: a new CI runner, which learns what is there from the tag's previous manifest.
    The reference is the ``nix path-info`` ociforge cannot avoid: the floor of a warm push."""
    kind = "fresh runner" if fresh_runner else "local cache"
    slug = kind.replace(" ", "-")
    cache = ctx.workdir / f"cache-warm-{slug}"
    # One tag for both kinds: whichever runs second finds it filled, and its setup is warm.
    ref = f"{registry.host}/bench/warm:latest"
    prepare = _emptier(cache, recreate=True) if fresh_runner else None
    args = push_args(closure, ref, cache, "gzip", 1)
    ours = ctx.ociforge(f"ociforge push warm, {kind}", *args, prepare=prepare)
    nix = ("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "-r")
    reference = Command("nix path-info", (*nix, closure.root), env=ctx.env())
    return Figure(
        f"warm push gzip-1, {kind}",
        closure,
        ours,
        reference,
        "nix path-info --json -r ROOT",
        target_s=FRESH_RUNNER_TARGET_S if fresh_runner else WARM_TARGET_S,
        cold_figure="push gzip-1",
        setup=(ours,),
    )


def new_commit_figure(ctx: BenchContext, registry: RegistryServer, closure: ClosureInfo) -> Figure:
    """The same closure pushed by the next commit: every layer is known, but the manifest is
    new (GitLab CI's revision annotation), so config and manifest are built and sent. Before
    every run the tag is moved to the previous commit's manifest, unrecorded."""
    cache = ctx.workdir / "cache-warm-new-commit"
    ref = f"{registry.host}/bench/commit:latest"
    args = push_args(closure, ref, cache, "gzip", 1)
    previous = ctx.ociforge("previous commit", *args, "--annotation", "rev=previous")

    def retag() -> None:
        subprocess.run(
            previous.argv, env=previous.env, cwd=previous.cwd, check=True, capture_output=True
        )

    ours = ctx.ociforge(
        "ociforge push, new commit", *args, "--annotation", "rev=next", prepare=retag
    )
    nix = ("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "-r")
    return Figure(
        "warm push gzip-1, new commit",
        closure,
        ours,
        Command("nix path-info", (*nix, closure.root), env=ctx.env()),
        "nix path-info --json -r ROOT",
        cold_figure="push gzip-1",
        setup=(previous,),
    )


def startup_figure(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    """``ociforge --help`` against a bare interpreter: the imports every ociforge command pays
    before its first byte of work, to read the warm pushes' times against."""
    ours = ctx.ociforge("ociforge --help", "--help")
    bare = Command("python -c pass", (sys.executable, "-c", "pass"), env=ctx.env(), cwd=REPO)
    return Figure("start-up: ociforge --help", closure, ours, bare, "python -c pass")


def push_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    """Cold pushes to a registry wiped before every run; warm pushes to another one, which
    keeps what the warm-up run pushed. Both registries live until every figure has run."""
    closure = ctx.closure("realistic", ctx.scale)
    cold = stack.enter_context(loopback_registry(ctx.workdir / "registry-cold"))
    warm = stack.enter_context(loopback_registry(ctx.workdir / "registry-warm"))
    return [
        push_figure(ctx, cold, closure, "gzip", 1, pigz1(ctx)),
        push_figure(ctx, cold, closure, "zstd", 3, ZSTD3),
        skopeo_figure(ctx, cold, closure),
        startup_figure(ctx, closure),
        warm_figure(ctx, warm, closure, fresh_runner=False),
        warm_figure(ctx, warm, closure, fresh_runner=True),
        new_commit_figure(ctx, warm, closure),
    ]


def warm_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    """Only the start-up and warm-push figures of ``push`` (their setup still pushes the closure
    once, unrecorded): about a minute at full scale, for work on the warm path. The table has
    no cold push to read them against; the ``push`` set has."""
    closure = ctx.closure("realistic", ctx.scale)
    warm = stack.enter_context(loopback_registry(ctx.workdir / "registry-warm"))
    return [
        startup_figure(ctx, closure),
        warm_figure(ctx, warm, closure, fresh_runner=False),
        warm_figure(ctx, warm, closure, fresh_runner=True),
        new_commit_figure(ctx, warm, closure),
    ]


FigureSet = Callable[[BenchContext, ExitStack], list[Figure]]
FIGURE_SETS: dict[str, FigureSet] = {
    "build": build_figures,
    "linearity": linearity_figures,
    "push": push_figures,
    "warm": warm_figures,
}
DEFAULT_SETS = ("build", "linearity", "push")  # warm's figures are part of push
