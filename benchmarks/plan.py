"""What a benchmark closure holds, decided in Python before nix builds anything.

A :class:`ClosurePlan` is a list of :class:`PackageSpec` (name, dependencies, entries) in
dependency order: a package only depends on packages before it, and the last one is the root.
Entries are the JSON arrays that ``benchmarks/materialise.py`` turns into files inside the
builder, so a plan is small (sizes and keys, not bytes) and fully determines the store paths.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

# A spec entry as materialise.py reads it: ["f", path, kind, size, key, executable, prefix]...
Entry = list[str | int | bool]

KINDS = ("bin", "c", "py", "doc")


@dataclass(frozen=True)
class PackageSpec:
    """One store path to build: its name, the indices of the packages it refers to, its files."""

    name: str
    deps: tuple[int, ...]
    entries: tuple[Entry, ...]

    def spec_json(self) -> str:
        """The spec materialise.py reads (compact, stable key order)."""
        return json.dumps({"entries": list(self.entries)}, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class PlanStats:
    """What a plan promises, counted without building it."""

    packages: int
    files: int
    bytes: int
    symlinks: int
    largest_file: int


@dataclass(frozen=True)
class ClosurePlan:
    shape: str
    scale: float
    seed: int
    packages: tuple[PackageSpec, ...]

    @property
    def root(self) -> PackageSpec:
        return self.packages[-1]

    def stats(self) -> PlanStats:
        files = size = links = largest = 0
        for package in self.packages:
            for entry in package.entries:
                if entry[0] == "f":
                    files, size, largest = (
                        files + 1,
                        size + int(entry[3]),
                        max(largest, int(entry[3])),
                    )
                elif entry[0] == "t":
                    files, size = files + 1, size + len(str(entry[2]))
                elif entry[0] == "g":
                    count, lo, hi = int(entry[2]), int(entry[3]), int(entry[4])
                    files, size = files + count, size + count * (lo + hi) // 2
                elif entry[0] == "l":
                    links += 1
        return PlanStats(len(self.packages), files, size, links, largest)


@dataclass
class PackageBuilder:
    """Collects one package's entries; :meth:`ref` both names a dependency and records it."""

    name: str
    entries: list[Entry] = field(default_factory=list)
    deps: list[int] = field(default_factory=list)
    paths: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)

    def has(self, path: str) -> bool:
        """``path`` cannot be added: it is taken, is a directory, or is under a file."""
        parents = path.split("/")
        return (
            path in self.paths
            or path in self.dirs
            or any("/".join(parents[:i]) in self.paths for i in range(1, len(parents)))
        )

    def _add(self, entry: Entry) -> None:
        path = str(entry[1])
        if self.has(path):
            raise ValueError(f"{self.name}: {path} planned twice (or as file and directory)")
        self.paths.add(path)
        parts = path.split("/")
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        self.entries.append(entry)

    def ref(self, package: int) -> str:
        """The placeholder of ``package``'s store path (making it a dependency)."""
        if package not in self.deps:
            self.deps.append(package)
        return f"@dep:{self.deps.index(package)}@"

    def file(
        self,
        path: str,
        kind: str,
        size: int,
        key: str,
        *,
        executable: bool = False,
        prefix: str = "",
    ) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"unknown content kind {kind!r}")
        entry: Entry = ["f", path, kind, max(0, size), key, executable, prefix]
        self._add(entry)
        return entry

    def text(self, path: str, content: str, *, executable: bool = False) -> None:
        self._add(["t", path, content, executable])

    def link(self, path: str, target: str) -> None:
        self._add(["l", path, target])

    def tiny_files(self, directory: str, count: int, sizes: tuple[int, int], key: str) -> None:
        """``count`` files of ``sizes`` bytes (inclusive range), 100 to a directory."""
        self._add(["g", directory, count, sizes[0], sizes[1], key, 100])

    def finish(self, extra_deps: Sequence[int] = ()) -> PackageSpec:
        """The package, with every dependency also listed in ``nix-support/runtime-deps``.

        Listing them makes the references exactly the planned dependencies, whatever else the
        files mention (the way nixpkgs' ``propagated-build-inputs`` pins references).
        """
        for dep in extra_deps:
            self.ref(dep)
        if self.deps:
            listed = "".join(f"@dep:{i}@\n" for i in range(len(self.deps)))
            self.text("nix-support/runtime-deps", listed)
        return PackageSpec(self.name, tuple(self.deps), tuple(self.entries))


_WORD_TEXT = (
    "config manager backend parser util internal detail impl handler stream buffer async core"
    " common protocol transport client server plugin extension compat types format encoding"
    " serialization validation schema resource metadata registry cache storage network crypto"
    " signature token session context event loop thread pool queue scheduler worker task"
    " pipeline filter transform render template widget layout graphics image audio video codec"
    " container runtime"
)
_WORDS = tuple(_WORD_TEXT.split())


class Planner:
    """Seeded choices and the package list of one plan; everything random goes through here."""

    def __init__(self, shape: str, scale: float, seed: int) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.shape, self.scale, self.seed = shape, scale, seed
        self.rng = random.Random(f"{shape}:{seed}")
        self.packages: list[PackageSpec] = []

    def add(self, builder: PackageBuilder, extra_deps: Sequence[int] = ()) -> int:
        """Finish ``builder`` and return its package index."""
        self.packages.append(builder.finish(extra_deps))
        return len(self.packages) - 1

    def plan(self) -> ClosurePlan:
        return ClosurePlan(self.shape, self.scale, self.seed, tuple(self.packages))

    def count(self, n: float, minimum: int = 1) -> int:
        """``n`` things at full scale, scaled."""
        return max(minimum, round(n * self.scale))

    def size(self, n: float) -> int:
        """``n`` bytes at full scale, scaled (at least 1 KiB, so nothing vanishes)."""
        return max(1024, int(n * self.scale))

    def lognormal(self, median: float, sigma: float, lo: int, hi: int) -> int:
        return int(min(hi, max(lo, median * math.exp(self.rng.gauss(0.0, sigma)))))

    def ident(self, words: int = 2) -> str:
        """A plausible identifier of ``words`` words (``config_manager``)."""
        return "_".join(self.rng.sample(_WORDS, words))

    def version(self) -> str:
        r = self.rng
        return f"{r.randint(0, 9)}.{r.randint(0, 40)}.{r.randint(0, 20)}"

    def pick(self, pool: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` distinct members of ``pool``, earlier members much more likely.

        Weight 1/(position+1): the first few libraries end up shared by many packages and the
        rest form a long tail, as in real closures (glibc, zlib, openssl... versus leaf libs).
        """
        chosen: list[int] = []
        weights = [1.0 / (i + 1) for i in range(len(pool))]
        while len(chosen) < min(k, len(pool)):
            candidate = self.rng.choices(pool, weights)[0]
            if candidate not in chosen:
                chosen.append(candidate)
        return chosen

    def tree(self, root: str, dirs: int, depth: int) -> list[str]:
        """``root`` and ``dirs`` nested directories under it (up to ``depth`` levels)."""
        tree = [root]
        for _ in range(dirs):
            parent = self.rng.choice(tree)
            if parent.count("/") - root.count("/") < depth:
                tree.append(f"{parent}/{self.ident(self.rng.randint(1, 3))}")
        return sorted(set(tree))

    def sources(
        self, b: PackageBuilder, dirs: list[str], n: int, ext: str, kind: str, median: int
    ) -> list[str]:
        """``n`` text files (``.h``, ``.py``...) spread over ``dirs``; returns their paths."""
        paths: list[str] = []
        while len(paths) < n:
            path = f"{self.rng.choice(dirs)}/{self.ident(self.rng.randint(1, 3))}{ext}"
            if b.has(path):
                continue
            size = self.lognormal(median, 1.0, 64, 400_000)
            b.file(path, kind, size, f"{b.name}/{path}")
            paths.append(path)
        return paths


def bump_package(plan: ClosurePlan, name_prefix: str) -> ClosurePlan:
    """``plan`` with one package changed, as a new release of it would be: one more file (a
    version stamp), so its store path and those of the packages referring to it change.

    ``name_prefix`` picks the package (``webapp-server`` matches ``webapp-server-1.4.0``).
    """
    index = next((i for i, p in enumerate(plan.packages) if p.name.startswith(name_prefix)), None)
    if index is None:
        raise ValueError(f"no package named {name_prefix}* in the {plan.shape} plan")
    package = plan.packages[index]
    stamp: Entry = ["t", "share/release-stamp", "bumped\n", False]
    entries = (*package.entries, stamp)
    packages = list(plan.packages)
    packages[index] = PackageSpec(package.name, package.deps, entries)
    return ClosurePlan(plan.shape, plan.scale, plan.seed, tuple(packages))
