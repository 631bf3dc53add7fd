"""What an image is made of, parsed once: :class:`SourceSpec`, and what Nix gives for it.

A source is a flake installable (``.#attr``), a store path or ``.drv``, a saved ``nix path-info
--json`` (``closure_json``), a :class:`Closure` handed over by a Python caller, or ``oci:DIR[:TAG]``
(an image built before, pushed byte for byte). ``parse_source`` checks the combination before
nix runs; ``load_source`` turns a spec into an :class:`ImageSource` (the closure, and a dev
shell's environment or Nix database when asked for). The only module above ``nix/`` that
decides how a source is read: the CLI, the API and the push session all go through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ociforge.errors import UsageError
from ociforge.nix import Closure, closure_from_json_file, read_closure
from ociforge.nix.closure import check_in_store, configured_store_dir, merge_closures
from ociforge.spec import TAG_RE

if TYPE_CHECKING:  # nixdb imports sqlite3 (only --with-nix pays for it), devenv is shells only
    from ociforge.nix.devenv import DevEnv
    from ociforge.nix.nixdb import NixDatabase

__all__ = ["ImageSource", "LayoutRef", "SourceSpec", "load_source", "parse_source"]


@dataclass(frozen=True)
class LayoutRef:
    """``oci:DIR[:TAG]``: an image in an OCI image layout directory."""

    directory: str
    tag: str | None = None  # None: "latest" when writing, "the only image" when reading

    def __str__(self) -> str:
        return f"oci:{self.directory}:{self.tag or 'latest'}"


def parse_layout_ref(text: str) -> LayoutRef:
    """``oci:DIR[:TAG]``, split at the last ``:``.

    A last ``:part`` without ``/`` is meant as a tag, so it must be one: ``oci:out:bad tag!`` is
    refused rather than silently written to a directory named ``out:bad tag!``. A directory whose
    name holds a ``:`` is still reachable: ``oci:./a:b/`` (a trailing ``/`` makes the last part a
    path), or ``oci:./a:b:TAG``.
    """
    rest = text.removeprefix("oci:")
    if not rest:
        raise UsageError(f"{text!r} names no directory: use oci:DIR[:TAG]")
    directory, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag:
        return LayoutRef(rest)
    if not directory:
        raise UsageError(f"{text!r} names no directory: use oci:DIR[:TAG]")
    if not TAG_RE.fullmatch(tag):
        raise UsageError(
            f"invalid tag {tag!r} in {text!r}: use letters, digits, _ . - (max 128); "
            f"for a directory whose name has a ':', end it with '/' (oci:{rest}/)"
        )
    return LayoutRef(directory, tag)


@dataclass(frozen=True)
class SourceSpec:
    """One image source, as given; see the module docstring. Checked when made."""

    installable: str | None = None
    closure: Closure | None = None
    closure_json: str | None = None
    layout: LayoutRef | None = None
    devshell: bool = False  # installable is a dev shell: its environment becomes Env
    contents: tuple[str, ...] = ()  # more installables whose roots are linked into /
    nix: str = "nix"

    def __post_init__(self) -> None:
        from_nix = self.installable is not None or self.closure_json is not None
        if from_nix + (self.closure is not None) + (self.layout is not None) != 1:
            raise UsageError("nothing to build: give an installable or --closure-json FILE")
        if self.devshell and self.closure_json is not None:
            raise UsageError(
                "--devshell reads the shell's environment with nix: drop --closure-json"
            )
        if self.devshell and not self.installable:
            raise UsageError(
                "--devshell needs the shell as an installable (.#devShells.<system>.X)"
            )


def parse_source(
    source: str | Closure | SourceSpec | None,
    *,
    closure_json: str | None = None,
    devshell: bool = False,
    contents: Sequence[str] = (),
    nix: str = "nix",
) -> SourceSpec:
    """A :class:`SourceSpec` from what a user or a caller gave (see the module docstring)."""
    if isinstance(source, SourceSpec):
        return source
    shell = {"devshell": devshell, "contents": tuple(contents), "nix": nix}
    if isinstance(source, Closure):
        return SourceSpec(closure=source, **shell)  # type: ignore[arg-type]
    if source and source.startswith("docker-archive:"):
        raise UsageError("a source is oci:DIR[:TAG] or an installable, not a docker-archive")
    if source and source.startswith("oci:"):
        if closure_json or devshell or contents:
            raise UsageError(
                f"{source} is a built image: drop --closure-json, --devshell and --contents"
            )
        return SourceSpec(layout=parse_layout_ref(source), nix=nix)
    installable = source or None
    return SourceSpec(installable, closure_json=closure_json, **shell)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageSource:
    """What Nix gave for an image: the closure, and what goes beside the store paths.

    ``linked_roots``: the roots whose top-level trees are linked into ``/`` (``None``: every
    root of the closure; a dev shell's own output is a file, so only ``--contents`` roots).
    ``devenv``: the shell's captured environment. ``nix_db``: the closure's registration, for
    ``--with-nix``.
    """

    closure: Closure
    linked_roots: tuple[str, ...] | None = None
    devenv: DevEnv | None = None
    nix_db: NixDatabase | None = None

    @property
    def roots_to_link(self) -> tuple[str, ...]:
        return self.closure.roots if self.linked_roots is None else self.linked_roots


def load_source(spec: SourceSpec, *, with_nix: bool = False) -> ImageSource:
    """Everything Nix gives for ``spec``'s image (built first if needed).

    ``with_nix``: register the whole closure in a Nix database for the image.
    """
    if spec.layout is not None:
        raise UsageError(f"{spec.layout} is a built image, not a closure to build")
    if spec.devshell:
        from ociforge.nix.devenv import read_devshell  # noqa: PLC0415  (dev shells only)

        shell = read_devshell(str(spec.installable), nix=spec.nix)
        source = ImageSource(shell.closure, linked_roots=(), devenv=shell.env)
    else:
        source = ImageSource(_closure(spec))
    if spec.contents:
        extra = [read_closure(c, nix=spec.nix) for c in spec.contents]
        closure = merge_closures([source.closure, *extra])
        linked = (*source.roots_to_link, *(r for c in extra for r in c.roots))
        source = dataclasses.replace(source, closure=closure, linked_roots=linked)
    if with_nix:
        from ociforge.nix.nixdb import make_nix_db  # noqa: PLC0415  (sqlite3: only if needed)

        db = make_nix_db(sorted(source.closure.paths), nix=spec.nix)
        source = dataclasses.replace(source, nix_db=db)
    return source


def _closure(spec: SourceSpec) -> Closure:
    if spec.closure is not None:
        return spec.closure
    if spec.closure_json is not None:
        roots = [spec.installable] if spec.installable else None
        store = configured_store_dir()
        closure = closure_from_json_file(spec.closure_json, roots=roots, store_dir=store)
        check_in_store(closure, store, source=spec.closure_json)
        return closure
    return read_closure(str(spec.installable), nix=spec.nix)
