"""What the harness measures: each figure is an ociforge command and a reference command (the
shell pipeline doing the same work, or what users run instead), run on the same closure in the
same session.

A *figure set* is a function ``(ctx, stack) -> list[Figure]``; :data:`FIGURE_SETS` lists them.
``ctx.closure(shape, scale)`` builds (or finds) a closure; ``stack`` is an ``ExitStack`` closed
after all figures ran, for sets that need a service: the push set keeps two loopback
registries there (one wiped before every cold run, one that keeps what warm runs rely on).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.closure_gen import build_plan, requisites
from benchmarks.measure import Command
from benchmarks.plan import bump_package
from benchmarks.registry import loopback_registry, storage_wiper
from benchmarks.shapes import plan_closure
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
    bumped: str | None = None  # the package changed against the plain closure (churn figures)
    changed_bytes: int | None = None  # NAR bytes of the store paths that bump changed

    @property
    def label(self) -> str:
        bump = f", {self.bumped} bumped" if self.bumped else ""
        return f"{self.shape} x{self.scale:g}{bump}"


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
    churn: bool = False  # report bytes uploaded against closure.changed_bytes


@dataclass
class BenchContext:
    workdir: Path
    scale: float
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    _closures: dict[tuple[str, float, str | None], ClosureInfo] = field(default_factory=dict)

    def closure(self, shape: str, scale: float, bump: str | None = None) -> ClosureInfo:
        """The closure of ``shape`` at ``scale``, generated in the store on first use; with
        ``bump``, the same closure with that package changed (a new version of it)."""
        key = (shape, scale, bump)
        if key not in self._closures:
            log.info("generating %s x%g (nearly free when already in the store)", shape, scale)
            plan = plan_closure(shape, scale)
            generated = build_plan(bump_package(plan, bump) if bump else plan)
            paths = tuple(requisites(generated.root))
            info = ClosureInfo(
                shape, scale, generated.root, paths, nar_size(paths), generated.plan.stats().files
            )
            if bump:
                changed = tuple(sorted(set(paths) - set(self.closure(shape, scale).paths)))
                info = dataclasses.replace(info, bumped=bump, changed_bytes=nar_size(changed))
            self._closures[key] = info
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

# The floors: one pipeline doing the same work on every core, with the fastest tools there are
# (openssl hashes at about 5x sha256sum's speed, igzip -T is ISA-L on every core): ociforge
# hashes the tar (diff_id) and the blob (digest), so each floor hashes both too.
HASH = "openssl dgst -sha256"
TEE_HASH = f"tee >({HASH} >/dev/null)"  # the tar's hash, beside the pipeline


def gzip_floor(ctx: BenchContext, level: int) -> str:
    return f"{TEE_HASH} | igzip -{level} -T {ctx.jobs} -c | {HASH}"


def zstd_floor(level: int) -> str:
    return f"{TEE_HASH} | zstd -{level} -T0 -q -c | {HASH}"


UNCOMPRESSED_FLOOR = f"{TEE_HASH} | {HASH}"  # tar hashed twice: diff_id and digest are one
ONE_HASH = HASH  # a docker archive: one hash (diff_id) of the plain tar


def build_figure(
    ctx: BenchContext,
    closure: ClosureInfo,
    compression: str | None,
    level: int | None,
    stages: str,
    *,
    target: str = "oci",
) -> Figure:
    """``ociforge build`` into a fresh OCI layout (or a docker archive to /dev/null) against
    ``tar | STAGES`` on the same paths. ``compression`` None: ociforge's defaults.

    The reference writes nothing, so it is the floor a shell pipeline reaches, not a full
    image build.
    """
    tag = "default" if compression is None else compression
    tag += "" if level is None else f"-{level}"
    out = ctx.workdir / f"oci-{tag}-{closure.shape}-{closure.scale:g}"
    dest = f"oci:{out}:bench" if target == "oci" else "docker-archive:/dev/null"
    args = ["build", closure.root, dest, "--json", "--no-progress"]
    args += [] if compression is None else ["--compression", compression]
    args += [] if level is None else ["--compression-level", str(level)]
    name = f"build {tag}" if target == "oci" else "build docker-archive"
    ours = ctx.ociforge(f"ociforge {name}", *args, output=out if target == "oci" else None)
    reference = ctx.pipeline(f"tar | {stages}", stages, closure)
    return Figure(name, closure, ours, reference, f"tar | {stages}")


def gzip1(ctx: BenchContext, closure: ClosureInfo) -> Figure:
    return build_figure(ctx, closure, "gzip", 1, gzip_floor(ctx, 1))


def build_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    realistic = ctx.closure("realistic", ctx.scale)
    tiny = ctx.closure("tiny-files", ctx.scale)
    return [
        # The defaults (gzip 3 on ISA-L) against igzip at the same ISA-L level.
        build_figure(ctx, realistic, None, None, gzip_floor(ctx, 3)),
        gzip1(ctx, realistic),
        build_figure(ctx, realistic, "zstd", 1, zstd_floor(1)),
        build_figure(ctx, realistic, "zstd", 3, zstd_floor(3)),
        build_figure(ctx, realistic, "none", None, UNCOMPRESSED_FLOOR),
        build_figure(ctx, realistic, None, None, ONE_HASH, target="docker-archive"),
        build_figure(ctx, tiny, "none", None, ONE_HASH),
        gzip1(ctx, tiny),
    ]


def linearity_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    """gzip-1 builds at 1/4 and 1/2 of the scale (the full scale is in ``build``)."""
    return [gzip1(ctx, ctx.closure("realistic", ctx.scale * f)) for f in (0.25, 0.5)]


# --- push: a real registry on loopback (issues 4 and 5) ---------------------------------------

WARM_TARGET_S = 0.5  # unchanged closure, local cache present: nothing but nix and a few requests
FRESH_RUNNER_TARGET_S = 1.0  # empty cache: the tag's previous manifest tells what is there


def push_args(
    closure: ClosureInfo, ref: str, cache: Path, compression: str | None, level: int | None
) -> list[str]:
    """``ociforge push`` arguments; ``compression`` None: ociforge's defaults."""
    args = ["push", closure.root, ref, "--cache-dir", str(cache), "--json", "--no-progress"]
    args += [] if compression is None else ["--compression", compression]
    return args + ([] if level is None else ["--compression-level", str(level)])


def _tag(compression: str | None, level: int | None) -> str:
    return ("default" if compression is None else compression) + (
        "" if level is None else f"-{level}"
    )


def cold_push(
    ctx: BenchContext,
    registry: RegistryServer,
    closure: ClosureInfo,
    repo: str,
    compression: str | None,
    level: int | None,
    *extra: str,
) -> Command:
    """``ociforge push`` as a fresh runner's first push: the registry is wiped and the layer
    cache emptied before every run, so every blob is compressed, hashed and uploaded."""
    cache = ctx.workdir / f"cache-{repo}"
    ref = f"{registry.host}/bench/{repo}:latest"
    prepare = _chain([storage_wiper(registry), _emptier(cache, recreate=True)])
    args = [*push_args(closure, ref, cache, compression, level), *extra]
    label = f"ociforge push {_tag(compression, level)}"
    return ctx.ociforge(label, *args, prepare=prepare)


def push_figure(
    ctx: BenchContext,
    registry: RegistryServer,
    closure: ClosureInfo,
    compression: str | None,
    level: int | None,
    stages: str,
) -> Figure:
    """A cold push against ``tar | STAGES``: the same floor as the build figures (the reference
    uploads nothing; the registry's own work shows up in ociforge's wall time only)."""
    tag = _tag(compression, level)
    ours = cold_push(ctx, registry, closure, f"push-{tag}", compression, level)
    reference = ctx.pipeline(f"tar | {stages}", stages, closure)
    return Figure(f"push {tag}", closure, ours, reference, f"tar | {stages}")


SEED_SCRIPT = (
    'set -eo pipefail; "$1" -m ociforge build "$2" docker-archive:- --strategy popularity'
    ' --quiet --no-progress | gzip --fast > "$3.gz";'
    # skopeo 1.9.3 cannot read a gzipped archive (newer ones decompress it themselves): the
    # same work, done by gzip -d.
    ' gzip -dc "$3.gz" > "$3";'
    ' skopeo --insecure-policy copy --quiet --dest-tls-verify=false "docker-archive:$3"'
    ' "docker://$4"'
)


def seed_figure(ctx: BenchContext, registry: RegistryServer, closure: ClosureInfo) -> Figure:
    """The default cold push against the pipeline it replaces: ``streamLayeredImage | gzip
    --fast | skopeo copy`` (``ociforge build docker-archive:-`` with popularity layers stands
    in for streamLayeredImage: the same layers, as a plain-tar docker archive)."""
    archive = ctx.workdir / "seed-archive.tar"
    ref = f"{registry.host}/bench/seed:latest"
    argv = ("bash", "-c", SEED_SCRIPT, "bash", sys.executable, closure.root, str(archive), ref)
    prepare = _chain([storage_wiper(registry), _emptier(archive)])
    reference = Command("seed pipeline", argv, prepare=prepare, env=ctx.env(), cwd=REPO)
    ours = cold_push(ctx, registry, closure, "push-vs-seed", None, None)
    text = "ociforge build docker-archive:- | gzip --fast > F.gz; skopeo copy docker-archive:F"
    return Figure("push default vs seed pipeline", closure, ours, reference, text)


def skopeo_figure(ctx: BenchContext, registry: RegistryServer, closure: ClosureInfo) -> Figure:
    """A cold push against what users do today: ``ociforge build`` to an OCI layout, then
    ``skopeo copy`` of that layout to the same (wiped) registry; both steps are timed."""
    layout = ctx.workdir / "oci-for-skopeo"
    ref = f"{registry.host}/bench/skopeo:latest"
    script = (
        'set -e; "$1" -m ociforge build "$2" "oci:$3:bench" --quiet --no-progress;'
        ' skopeo --insecure-policy copy --quiet --dest-tls-verify=false "oci:$3:bench" "docker://$4"'
    )
    argv = ("bash", "-c", script, "bash", sys.executable, closure.root, str(layout), ref)
    prepare = _chain([storage_wiper(registry), _emptier(layout)])
    reference = Command("build + skopeo copy", argv, prepare=prepare, env=ctx.env(), cwd=REPO)
    ours = cold_push(ctx, registry, closure, "push-vs-skopeo", None, None)
    text = "ociforge build oci:DIR && skopeo copy oci:DIR docker://REF"
    return Figure("push default vs build+skopeo", closure, ours, reference, text)


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
    args = push_args(closure, ref, cache, None, None)
    ours = ctx.ociforge(f"ociforge push warm, {kind}", *args, prepare=prepare)
    nix = ("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "-r")
    reference = Command("nix path-info", (*nix, closure.root), env=ctx.env())
    return Figure(
        f"warm push, {kind}",
        closure,
        ours,
        reference,
        "nix path-info --json -r ROOT",
        target_s=FRESH_RUNNER_TARGET_S if fresh_runner else WARM_TARGET_S,
        cold_figure="push default vs seed pipeline",
        setup=(ours,),
    )


def new_commit_figure(ctx: BenchContext, registry: RegistryServer, closure: ClosureInfo) -> Figure:
    """The same closure pushed by the next commit: every layer is known, but the manifest is
    new (GitLab CI's revision annotation), so config and manifest are built and sent. Before
    every run the tag is moved to the previous commit's manifest, unrecorded."""
    cache = ctx.workdir / "cache-warm-new-commit"
    ref = f"{registry.host}/bench/commit:latest"
    args = push_args(closure, ref, cache, None, None)
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
        "warm push, new commit",
        closure,
        ours,
        Command("nix path-info", (*nix, closure.root), env=ctx.env()),
        "nix path-info --json -r ROOT",
        cold_figure="push default vs seed pipeline",
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
        seed_figure(ctx, cold, closure),
        push_figure(ctx, cold, closure, "gzip", 1, gzip_floor(ctx, 1)),
        push_figure(ctx, cold, closure, "zstd", 1, zstd_floor(1)),
        skopeo_figure(ctx, cold, closure),
        startup_figure(ctx, closure),
        warm_figure(ctx, warm, closure, fresh_runner=False),
        warm_figure(ctx, warm, closure, fresh_runner=True),
        new_commit_figure(ctx, warm, closure),
    ]


# --- churn: the next release of one package, pushed over the previous image -----------------

CHURN_PACKAGE = "webapp-server"  # an application only the root refers to: a leaf bump
FULL_PATHS = 192  # store paths of the realistic closure at scale 1


def layer_budget(closure: ClosureInfo) -> list[str]:
    """``--max-layers`` for a closure smaller than the full one: as many paths per layer as
    the full closure has at the default budget of 100, so popularity still has its catch-all
    layer (with fewer paths than layers, every strategy gives one path per layer)."""
    if len(closure.paths) >= FULL_PATHS:
        return []
    return ["--max-layers", str(max(3, round(100 * len(closure.paths) / FULL_PATHS)))]


def churn_figure(
    ctx: BenchContext, registry: RegistryServer, base: ClosureInfo, strategy: str | None
) -> Figure:
    """The bumped closure pushed over the tag holding the previous one, from a fresh runner
    (empty layer cache: what is there comes from the tag's manifest). Before every run the
    registry is wiped and the previous image pushed again (unrecorded). The figure that
    matters is bytes: uploaded over the NAR size of the store paths the bump changed. The
    reference is a cold push of the bumped closure, for the time."""
    bumped = ctx.closure(base.shape, base.scale, CHURN_PACKAGE)
    name = strategy or "default"
    ref = f"{registry.host}/bench/churn-{name}:latest"
    cache = ctx.workdir / f"cache-churn-{name}"
    extra = [*layer_budget(base), *(["--strategy", strategy] if strategy else [])]
    previous = ctx.ociforge("previous release", *push_args(base, ref, cache, None, None), *extra)

    def push_previous() -> None:
        storage_wiper(registry)()
        subprocess.run(
            previous.argv, env=previous.env, cwd=previous.cwd, check=True, capture_output=True
        )
        _emptier(cache, recreate=True)()

    args = [*push_args(bumped, ref, cache, None, None), *extra]
    ours = ctx.ociforge(f"ociforge push bump, {name}", *args, prepare=push_previous)
    reference = cold_push(ctx, registry, bumped, f"churn-cold-{name}", None, None, *extra)
    return Figure(
        f"churn: {CHURN_PACKAGE} bump, {name} layers",
        bumped,
        ours,
        reference,
        "cold push of the bumped closure",
        churn=True,
    )


def churn_figures(ctx: BenchContext, stack: ExitStack) -> list[Figure]:
    """A leaf bump pushed with the default layering and with popularity."""
    base = ctx.closure("realistic", ctx.scale)
    registry = stack.enter_context(loopback_registry(ctx.workdir / "registry-churn"))
    return [
        churn_figure(ctx, registry, base, None),
        churn_figure(ctx, registry, base, "popularity"),
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
    "churn": churn_figures,
}
DEFAULT_SETS = ("build", "linearity", "push", "churn")  # warm's figures are part of push
