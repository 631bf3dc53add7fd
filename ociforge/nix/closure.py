"""Value types of a Nix closure, independent of how it was read."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ociforge.errors import UsageError

# <32 nix-base32 chars>-<name>, as Nix itself accepts store path names.
_STORE_NAME = re.compile(r"[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+")


def configured_store_dir(environ: Mapping[str, str] | None = None) -> str:
    """This machine's Nix store: ``$NIX_STORE_DIR`` as nix reads it, else ``/nix/store``."""
    env = os.environ if environ is None else environ
    return (env.get("NIX_STORE_DIR") or "/nix/store").rstrip("/") or "/"


@dataclass(frozen=True)
class StorePathInfo:
    """One store path of a closure, as ``nix path-info --json`` describes it.

    ``references`` are full store paths, self-reference removed, sorted. ``nar_hash`` is the
    SRI-or-base32 string nix printed, kept verbatim: with ``path`` it identifies the content.
    """

    path: str
    nar_hash: str
    nar_size: int
    references: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """``hello-2.12`` of ``/nix/store/<hash>-hello-2.12``."""
        base = self.path.rsplit("/", 1)[-1]
        return base.split("-", 1)[1] if "-" in base else base


@dataclass(frozen=True)
class Closure:
    """A set of store paths closed under references, and the roots it was asked for.

    ``roots`` keep the order the user gave (they decide the customisation layer and PATH).
    ``system`` is the Nix system (``x86_64-linux``) of the roots when known.
    """

    roots: tuple[str, ...]
    paths: Mapping[str, StorePathInfo] = field(repr=False)
    system: str | None = None
    store_dir: str = "/nix/store"

    @property
    def graph(self) -> dict[str, tuple[str, ...]]:
        """path -> references (no self-references), the input of the layering strategies."""
        return {p: info.references for p, info in self.paths.items()}

    @property
    def nar_size(self) -> int:
        return sum(info.nar_size for info in self.paths.values())


def merge_closures(closures: Sequence[Closure]) -> Closure:
    """One closure holding every path of ``closures``; roots keep their order, first seen wins.

    The system is the first one known (the main installable comes first). Closures of
    different store directories cannot share an image.
    """
    if not closures:
        raise UsageError("internal: no closure to merge")
    store_dirs = {c.store_dir for c in closures}
    if len(store_dirs) > 1:
        raise UsageError(f"closures from different store directories: {sorted(store_dirs)}")
    paths: dict[str, StorePathInfo] = {}
    for closure in closures:
        paths.update(closure.paths)
    roots = tuple(dict.fromkeys(r for c in closures for r in c.roots))
    system = next((c.system for c in closures if c.system), None)
    return Closure(roots=roots, paths=paths, system=system, store_dir=closures[0].store_dir)


def check_in_store(closure: Closure, store_dir: str, *, source: str) -> None:
    """UsageError naming the first path of ``closure`` that is not a store path present in
    ``store_dir``. For closures read from files: a path-info JSON must never make ociforge pack
    files from outside the store (``"storeDir": "/etc"`` would otherwise archive /etc/shadow)."""
    if closure.store_dir != store_dir:
        raise UsageError(
            f"{source} describes the store {closure.store_dir}, but this machine's store is "
            f"{store_dir}: save the path-info where the store is {store_dir}"
        )
    for path in closure.paths:
        parent, _, base = path.rpartition("/")
        if parent != store_dir or not _STORE_NAME.fullmatch(base):
            raise UsageError(f"{source}: {path!r} is not a store path of {store_dir}")
        try:
            os.lstat(path)  # the path itself; what it holds is read without following links
        except OSError:
            raise UsageError(
                f"{source}: {path} is not in this machine's store: build or fetch it first "
                f"(nix-store --realise {path})"
            ) from None
