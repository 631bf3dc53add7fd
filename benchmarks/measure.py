"""Run one command and measure it: wall time, CPU time and peak RSS.

CPU time and peak RSS come from GNU time (``/usr/bin/time -f``, Debian package ``time``), which
reads them from ``wait4()`` on the command: the largest resident set of the command and of every
descendant it waited for (for ``bash -c 'a | b'``, the largest pipeline member; for ``ociforge
build``, ociforge itself or the ``nix`` it runs, whichever was larger). Calling ``wait4()`` from
this harness would not do: on Linux a process inherits its parent's peak RSS across fork and
exec, so every command would report at least the harness's own peak (tens of MiB once it has
planned a full-scale closure); GNU time is a tiny parent with a floor of about 1 MiB.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GNU_TIME = "/usr/bin/time"


class MeasureError(RuntimeError):
    """A measured command failed; the message carries its exit status and stderr's tail."""


@dataclass(frozen=True)
class Command:
    """What to run, and what to do before each run (e.g. empty the output directory)."""

    label: str
    argv: tuple[str, ...]
    prepare: Callable[[], None] | None = None
    env: Mapping[str, str] | None = None
    cwd: Path | None = None


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float
    max_rss_kib: int
    stdout: str = field(repr=False, default="")


@dataclass(frozen=True)
class Summary:
    """One command over its runs: median wall and CPU time, the largest peak RSS seen, and
    every run's wall time and peak RSS (to spot a run disturbed by something else)."""

    wall_s: float
    cpu_s: float
    max_rss_kib: int
    runs: int
    wall_samples: tuple[float, ...]
    rss_samples_kib: tuple[int, ...] = ()

    @staticmethod
    def of(samples: Sequence[Sample]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarise")
        return Summary(
            wall_s=statistics.median(s.wall_s for s in samples),
            cpu_s=statistics.median(s.cpu_s for s in samples),
            max_rss_kib=max(s.max_rss_kib for s in samples),
            runs=len(samples),
            wall_samples=tuple(s.wall_s for s in samples),
            rss_samples_kib=tuple(s.max_rss_kib for s in samples),
        )


def run_measured(command: Command, scratch: Path) -> Sample:
    """Run ``command`` once (after its ``prepare``) and measure it; raises if it fails."""
    if not os.access(GNU_TIME, os.X_OK):
        raise MeasureError(f"{GNU_TIME} not found: apt-get install time (GNU time)")
    if command.prepare is not None:
        command.prepare()
    out_path, err_path, usage_path = scratch / "stdout", scratch / "stderr", scratch / "usage"
    argv = (GNU_TIME, "-f", "%U %S %M", "-o", str(usage_path), *command.argv)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=dict(command.env) if command.env is not None else None,
            cwd=command.cwd,
            check=False,
        )
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-10:]
        raise MeasureError(f"{command.label} exited {proc.returncode}: " + " | ".join(tail))
    # GNU time may put a "Command exited..." line first: the figures are on the last line.
    user, system, max_rss = usage_path.read_text().split("\n")[-2].split()
    return Sample(
        wall_s=wall,
        cpu_s=float(user) + float(system),
        max_rss_kib=int(max_rss),
        stdout=out_path.read_text(errors="replace"),
    )
