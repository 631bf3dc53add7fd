"""Measure ociforge against shell pipelines on the benchmark closures; print a markdown table.

    python -m benchmarks.run [--runs 3] [--quick] [--scale S] [--sets build,linearity]
                             [--json FILE] [--workdir DIR]

Every figure runs its ociforge command and its reference pipeline once unrecorded (warm-up:
the figures are warm-cache figures), then ``--runs`` times each, interleaved, in this one
session. Prints medians and ratios; never asserts anything about them. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import dataclasses
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.closure_gen import GenerationError
from benchmarks.figures import (
    DEFAULT_SETS,
    FIGURE_SETS,
    REPO,
    BenchContext,
    ClosureInfo,
    Figure,
)
from benchmarks.measure import Command, MeasureError, Sample, Summary, run_measured

log = logging.getLogger("benchmarks.run")
QUICK_SCALE = 0.1
MB = 1e6


@dataclass(frozen=True)
class FigureResult:
    name: str
    closure: ClosureInfo
    reference_text: str
    ours: Summary
    reference: Summary | None
    image_bytes: int | None
    target_s: float | None = None
    cold_figure: str | None = None
    blobs: str | None = None  # push figures: what the measured runs did with the blobs
    uploaded_bytes: int | None = None  # push figures: blob bytes the last measured run uploaded
    churn: bool = False

    @property
    def ratio(self) -> float | None:
        """ociforge's wall time over the reference's (above 1: ociforge is slower)."""
        return None if self.reference is None else self.ours.wall_s / self.reference.wall_s


def image_bytes(sample: Sample) -> int | None:
    """The sum of the layer sizes from ``ociforge build --json`` or ``ociforge push --json``
    (None if it did not say)."""
    try:
        summary = json.loads(sample.stdout)
        if "blobs" in summary:  # push: the config blob is listed too
            layers = [b for b in summary["blobs"] if ".layer." in b["mediaType"]]
        else:
            layers = summary["layers"]
        return sum(int(layer["size"]) for layer in layers)
    except (ValueError, KeyError, TypeError):
        return None


def uploaded_bytes(sample: Sample) -> int | None:
    """The bytes of the blobs ``ociforge push --json`` uploaded (None for other commands)."""
    try:
        blobs = json.loads(sample.stdout)["blobs"]
        return sum(int(b["size"]) for b in blobs if b["outcome"] == "uploaded")
    except (ValueError, KeyError, TypeError):
        return None


def blob_outcomes(samples: Sequence[Sample]) -> str | None:
    """``ociforge push --json``'s blob outcomes, counted: "17 uploaded", "1 uploaded, 16 skipped"
    (None for other commands); runs that differ are separated by "/". Shows that every cold
    run was cold and every warm one warm."""
    seen: list[str] = []
    for sample in samples:
        try:
            outcomes = [str(b["outcome"]) for b in json.loads(sample.stdout)["blobs"]]
        except (ValueError, KeyError, TypeError):
            return None
        counts = collections.Counter(outcomes)
        text = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        if text not in seen:
            seen.append(text)
    return " / ".join(seen) or None


def measure(figure: Figure, runs: int, scratch: Path, *, warmup: bool = True) -> FigureResult:
    commands: list[Command] = [figure.ours] + ([figure.reference] if figure.reference else [])
    if figure.setup:
        log.info("%s on %s: setup", figure.name, figure.closure.label)
    for command in figure.setup:
        run_measured(command, scratch)
    if warmup:
        log.info("%s on %s: warm-up", figure.name, figure.closure.label)
        for command in commands:
            run_measured(command, scratch)
    samples: dict[str, list[Sample]] = {c.label: [] for c in commands}
    for i in range(runs):
        for command in commands:
            sample = run_measured(command, scratch)
            samples[command.label].append(sample)
            log.info(
                "  run %d %s: %.2f s, %.0f MiB",
                i + 1,
                command.label,
                sample.wall_s,
                sample.max_rss_kib / 1024,
            )
    ours = samples[figure.ours.label]
    reference = samples[figure.reference.label] if figure.reference else None
    return FigureResult(
        figure.name,
        figure.closure,
        figure.reference_text,
        Summary.of(ours),
        Summary.of(reference) if reference else None,
        image_bytes(ours[-1]),
        figure.target_s,
        figure.cold_figure,
        blob_outcomes(ours),
        uploaded_bytes(ours[-1]),
        figure.churn,
    )


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _code(text: str) -> str:
    """A code span in a table cell: its pipes escaped, or they would split the cell."""
    return "`" + text.replace("|", "\\|") + "`"


def _mib(summary: Summary | None) -> str:
    return "-" if summary is None else f"{summary.max_rss_kib / 1024:.0f}"


RESULT_COLUMNS = (
    "figure", "closure", "MB", "files", "ociforge s", "reference s", "ratio", "ociforge MB/s",
    "ociforge CPU s", "ociforge peak RSS MiB", "reference peak RSS MiB", "NAR/image", "reference",
)  # fmt: skip


def results_table(results: Sequence[FigureResult]) -> str:
    rows = []
    for r in results:
        c, ref = r.closure, r.reference
        compression = c.nar_bytes / r.image_bytes if r.image_bytes else None
        rows.append(
            [
                r.name,
                c.label,
                f"{c.nar_bytes / MB:.0f}",
                str(c.files),
                _fmt(r.ours.wall_s),
                _fmt(ref.wall_s if ref else None),
                _fmt(r.ratio),
                f"{c.nar_bytes / MB / r.ours.wall_s:.0f}",
                _fmt(r.ours.cpu_s),
                _mib(r.ours),
                _mib(ref),
                _fmt(compression),
                _code(r.reference_text),
            ]
        )
    return _table(RESULT_COLUMNS, rows)


LINEARITY_COLUMNS = (
    "scale", "MB", "ociforge s", "ociforge s/GB", "reference s", "ratio", "ociforge peak RSS MiB",
)  # fmt: skip


def linearity_table(results: Sequence[FigureResult]) -> str:
    """The realistic gzip-1 builds by scale: time per GB should stay flat."""
    chosen = [r for r in results if r.name == "build gzip-1" and r.closure.shape == "realistic"]
    if len(chosen) < 2:
        return ""
    rows = []
    for r in sorted(chosen, key=lambda r: r.closure.scale):
        c = r.closure
        rows.append(
            [
                f"{c.scale:g}",
                f"{c.nar_bytes / MB:.0f}",
                _fmt(r.ours.wall_s),
                f"{r.ours.wall_s / (c.nar_bytes / 1e9):.2f}",
                _fmt(r.reference.wall_s if r.reference else None),
                _fmt(r.ratio),
                _mib(r.ours),
            ]
        )
    return _table(LINEARITY_COLUMNS, rows) + "\n\n" + _fit_line(chosen)


def _fit_line(results: Sequence[FigureResult]) -> str:
    """Least squares of wall time against GB: the fixed cost and the cost per GB."""
    gb = [r.closure.nar_bytes / 1e9 for r in results]
    ours = statistics.linear_regression(gb, [r.ours.wall_s for r in results])
    text = f"Fit: ociforge {ours.intercept:.2f} s + {ours.slope:.2f} s/GB"
    refs = [r.reference.wall_s for r in results if r.reference]
    if len(refs) == len(gb):
        reference = statistics.linear_regression(gb, refs)
        text += f"; reference {reference.intercept:.2f} s + {reference.slope:.2f} s/GB"
    return text + "."


PUSH_COLUMNS = (
    "figure", "ociforge s", "reference s", "ratio", "target s", "cold push s", "ociforge/cold",
    "blobs", "ociforge peak RSS MiB", "reference",
)  # fmt: skip


def push_table(results: Sequence[FigureResult]) -> str:
    """Every push figure; warm ones next to their target and the cold push of this same run."""
    by_name = {(r.name, r.closure): r for r in results}
    rows = []
    for r in results:
        if r.blobs is None or r.churn:
            continue
        cold = by_name.get((r.cold_figure, r.closure)) if r.cold_figure else None
        rows.append(
            [
                r.name,
                _fmt(r.ours.wall_s),
                _fmt(r.reference.wall_s if r.reference else None),
                _fmt(r.ratio),
                _fmt(r.target_s),
                _fmt(cold.ours.wall_s if cold else None),
                _fmt(r.ours.wall_s / cold.ours.wall_s if cold else None, 3),
                r.blobs,
                _mib(r.ours),
                _code(r.reference_text),
            ]
        )
    return _table(PUSH_COLUMNS, rows) if rows else ""


CHURN_COLUMNS = (
    "figure", "changed store paths MB", "uploaded MB", "uploaded/changed", "push s",
    "cold push s", "push/cold", "blobs", "ociforge peak RSS MiB",
)  # fmt: skip


def churn_table(results: Sequence[FigureResult]) -> str:
    """Leaf bumps: blob bytes uploaded over the NAR bytes of the store paths that changed."""
    rows = []
    for r in results:
        changed, uploaded = r.closure.changed_bytes, r.uploaded_bytes
        if not r.churn or not changed or uploaded is None:
            continue
        rows.append(
            [
                r.name,
                f"{changed / MB:.1f}",
                f"{uploaded / MB:.1f}",
                _fmt(uploaded / changed),
                _fmt(r.ours.wall_s),
                _fmt(r.reference.wall_s if r.reference else None),
                _fmt(r.ratio),
                str(r.blobs),
                _mib(r.ours),
            ]
        )
    return _table(CHURN_COLUMNS, rows) if rows else ""


def report(results: Sequence[FigureResult], runs: int, jobs: int, *, warmup: bool = True) -> str:
    first = "after one warm-up run (warm page cache)" if warmup else "without a warm-up run"
    parts = [
        f"Machine: {jobs} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"{runs} measured run(s) per command {first}. "
        "Times are medians; ratio = ociforge / reference wall time; peak RSS is the largest seen.",
        "",
        results_table(results),
    ]
    pushes = push_table(results)
    if pushes:
        parts += ["", "Pushes to docker-registry on loopback:", "", pushes]
    churn = churn_table(results)
    if churn:
        parts += ["", "Leaf bump pushed over the previous release (fresh runner):", "", churn]
    linearity = linearity_table(results)
    if linearity:
        parts += ["", "Linearity (realistic closure, gzip -1):", "", linearity]
    return "\n".join(parts) + "\n"


def to_json(results: Sequence[FigureResult], runs: int, jobs: int) -> dict[str, Any]:
    figures = []
    for r in results:
        row = dataclasses.asdict(r)
        row["closure"].pop("paths")
        row["ratio"] = r.ratio
        figures.append(row)
    return {
        "runs": runs,
        "cores": jobs,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "figures": figures,
    }


@dataclass(frozen=True)
class Session:
    results: list[FigureResult]
    failures: list[str]  # "figure on closure: error" for every figure that could not be measured


def run(
    sets: Sequence[str], scale: float, runs: int, workdir: Path, *, warmup: bool = True
) -> Session:
    """Measure every figure of ``sets``; a figure whose command fails is logged and skipped, so
    one broken command does not throw away the figures measured before it."""
    ctx = BenchContext(workdir=workdir, scale=scale)
    # Bytecode as an installed package has it (pip compiles at install): a checkout whose .pyc
    # are stale or missing (PYTHONDONTWRITEBYTECODE) would compile every module on every run,
    # about 0.1 s of a warm push.
    compileall.compile_dir(REPO / "ociforge", quiet=1)
    scratch = workdir / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    session = Session([], [])
    with ExitStack() as stack:
        figures = [f for name in sets for f in FIGURE_SETS[name](ctx, stack)]
        for figure in figures:
            try:
                session.results.append(measure(figure, runs, scratch, warmup=warmup))
            except MeasureError as exc:
                log.error("%s on %s failed: %s", figure.name, figure.closure.label, exc)
                session.failures.append(f"{figure.name} on {figure.closure.label}: {exc}")
    return session


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs per command (default 3)")
    parser.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE} (about 100 MB)")
    parser.add_argument(
        "--scale", type=float, help="closure scale (default 1, or 0.1 with --quick)"
    )
    parser.add_argument(
        "--sets",
        default=",".join(DEFAULT_SETS),
        help=f"comma-separated: {', '.join(FIGURE_SETS)} (default: {','.join(DEFAULT_SETS)})",
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="no unrecorded first run (cold page cache: for smoke runs, not for figures)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument(
        "--workdir", type=Path, help="where images are written (default: a temp dir, removed)"
    )
    args = parser.parse_args(argv)
    unknown = [s for s in args.sets.split(",") if s not in FIGURE_SETS]
    if unknown:
        parser.error(f"unknown figure set(s) {', '.join(unknown)}: use {', '.join(FIGURE_SETS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.scale is not None and not args.scale > 0:
        parser.error("--scale must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    scale = args.scale or (QUICK_SCALE if args.quick else 1.0)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ociforge-bench-"))
    jobs = os.cpu_count() or 1
    try:
        session = run(args.sets.split(","), scale, args.runs, workdir, warmup=args.warmup)
    except (MeasureError, GenerationError) as exc:
        print(f"benchmarks.run: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results = session.results
    print(report(results, args.runs, jobs, warmup=args.warmup), end="")
    if args.json:
        summary = to_json(results, args.runs, jobs) | {"failures": session.failures}
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    for failure in session.failures:
        print(f"benchmarks.run: error: {failure}", file=sys.stderr)
    return 1 if session.failures else 0


if __name__ == "__main__":
    sys.exit(main())
