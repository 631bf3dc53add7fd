"""The benchmark closures, as plans: ``realistic`` (benchmarks/realistic.py) and ``tiny-files``.

``tiny-files`` (scale 1): 200k files of 10-500 bytes in 50 store paths, a shared base and a root
over them: what walking and tarring many small entries costs, with almost no bytes to compress.

``scale`` multiplies byte and file totals (store path counts too, with small floors), so 1/4,
1/2 and 1 give closures whose sizes grow linearly.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.plan import ClosurePlan, PackageBuilder, Planner
from benchmarks.realistic import realistic

TINY_FILES = 200_000
TINY_PATHS = 50


def tiny_files(scale: float, seed: int) -> ClosurePlan:
    """200k tiny files (at scale 1) in 50 store paths, a shared base and a root over them."""
    p = Planner("tiny-files", scale, seed)
    paths = p.count(TINY_PATHS, minimum=2)
    total = p.count(TINY_FILES, minimum=paths)
    base = PackageBuilder("tiny-base-1.0")
    base.text("share/tiny-base/README", "Shared by every tiny-data package.\n")
    base_index = p.add(base)
    data: list[int] = []
    for i in range(paths):
        b = PackageBuilder(f"tiny-data-{i:02d}-1.0")
        b.ref(base_index)
        if data:
            b.ref(p.rng.choice(data))
        count = total // paths + (1 if i < total % paths else 0)
        b.tiny_files(f"share/tiny-data-{i:02d}", count, (10, 500), f"tiny/{seed}/{i}")
        data.append(p.add(b))
    p.add(PackageBuilder("tiny-files-env"), extra_deps=data)
    return p.plan()


SHAPES: dict[str, Callable[[float, int], ClosurePlan]] = {
    "realistic": realistic,
    "tiny-files": tiny_files,
}


def plan_closure(shape: str, scale: float = 1.0, seed: int = 0) -> ClosurePlan:
    """The plan of ``shape`` at ``scale``; the same arguments always give the same plan."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: use one of {', '.join(SHAPES)}")
    return SHAPES[shape](scale, seed)
