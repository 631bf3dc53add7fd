"""Real Nix store paths for tests and benchmarks, without nixpkgs.

Everything is built by the machine's own ``nix-build`` from ``builtins.derivation`` with
``builder = "/bin/sh"`` (so it works on Debian's Nix 2.8 and on any newer Nix), always with
``--option substituters ''`` so nix never tries the network.

Low level::

    build_derivations(nix_expr: str, tmp_path: Path) -> list[str]
        Build a Nix expression (a derivation, or a list of derivations) and return the output
        paths nix-build printed, in order. ``mk_derivation(name, script)`` is available to the
        expression through ``OCIFORGE_PRELUDE`` if you prepend it.

High level::

    make_closure(tmp_path, [Package(...), ...]) -> BuiltClosure

    Package(name, entries={relpath: entry}, deps=("other-package-name", ...))
        entry is one of
          "text" or File("text", executable=True)   text; may contain placeholders (below)
          b"\\x00bytes" or File(b"...")             bytes, written verbatim (no placeholders)
          Symlink("target")                         relative or absolute; placeholders allowed
          Dir()                                     an empty directory
          HostFile("/bin/busybox")                  a copy of a file of this machine
        Parent directories are created as needed, so "a/b/c.txt" gives nested dirs and a
        relpath of any length (over 100 characters, say) works.
        Placeholders in text and symlink targets: "@out@" is the package's own store path,
        "@NAME@" the store path of dependency NAME (which must be listed in ``deps``).
        Each dependency is also written into ``nix-support/deps`` (one store path a line) so
        that nix records the reference even when no placeholder mentions it.

    BuiltClosure.paths   package name -> store path, in spec order
    BuiltClosure.roots   store paths of the packages no other package depends on
    closure["name"]      the store path of one package

    busybox_package(name="busybox", applets=("sh", ...)) -> Package
        /bin/busybox (Debian's busybox-static) as bin/busybox plus one symlink per applet: an
        image made of it really runs.

Other helpers: ``OFFLINE_NIX_ARGS`` (pass to ``nix`` subcommands) and ``offline_env()`` (an
environment with ``NIX_CONFIG="substituters ="``) for tests that call nix themselves.

Store paths are content-derived, so building the same spec twice gives the same paths and the
second build is nearly free. Nothing is ever deleted from the store.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

OFFLINE_NIX_ARGS: tuple[str, ...] = ("--option", "substituters", "")

# A two-line Nix function for hand-written expressions: mk_derivation "name" "shell script".
OCIFORGE_PRELUDE = """\
let mk_derivation = name: script: builtins.derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" script ]; PATH = "/usr/bin:/bin";
}; in
"""

_NAME_RE = re.compile(r"^[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*$")
_PLACEHOLDER_RE = re.compile(r"@([A-Za-z0-9+._?=-]+)@")


class NixStoreError(RuntimeError):
    """nix-build failed; the message carries its stderr."""


@dataclass(frozen=True)
class File:
    content: str | bytes = ""
    executable: bool = False


@dataclass(frozen=True)
class Symlink:
    target: str


@dataclass(frozen=True)
class Dir:
    pass


@dataclass(frozen=True)
class HostFile:
    source: str


Entry = File | Symlink | Dir | HostFile | str | bytes


@dataclass(frozen=True)
class Package:
    name: str
    entries: Mapping[str, Entry] = field(default_factory=dict)
    deps: Sequence[str] = ()


@dataclass(frozen=True)
class BuiltClosure:
    paths: dict[str, str]
    roots: tuple[str, ...]

    def __getitem__(self, name: str) -> str:
        return self.paths[name]


def offline_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: os.environ) with nix told not to use any substituter."""
    env = dict(os.environ if base is None else base)
    env["NIX_CONFIG"] = "substituters ="
    return env


def build_derivations(nix_expr: str, tmp_path: Path) -> list[str]:
    """Build ``nix_expr`` with nix-build and return the printed output paths, in order."""
    fd, name = tempfile.mkstemp(prefix="expr-", suffix=".nix", dir=tmp_path)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(nix_expr)
    nix_build = shutil.which("nix-build")
    if nix_build is None:
        raise NixStoreError("nix-build not found on PATH: install Nix")
    proc = subprocess.run(
        [nix_build, "--no-out-link", *OFFLINE_NIX_ARGS, name],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise NixStoreError(f"nix-build {name} failed:\n{proc.stderr}")
    return proc.stdout.split()


def make_closure(tmp_path: Path, spec: Sequence[Package]) -> BuiltClosure:
    """Build every package of ``spec`` (see the module docstring) in one nix-build."""
    names = [p.name for p in spec]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate package names in {names}")
    index = {name: i for i, name in enumerate(names)}
    for package in spec:
        _check_package(package, index)
    src_root = Path(tempfile.mkdtemp(prefix="closure-", dir=tmp_path))
    bindings = [_derivation_expr(i, p, index, src_root) for i, p in enumerate(spec)]
    outputs = " ".join(f"p{i}" for i in index.values())
    expr = "let\n" + "".join(bindings) + f"in [ {outputs} ]\n"
    paths = build_derivations(expr, tmp_path)
    if len(paths) != len(spec):
        raise NixStoreError(f"expected {len(spec)} store paths from nix-build, got {paths}")
    by_name = dict(zip(names, paths, strict=True))
    depended = {d for p in spec for d in p.deps}
    roots = tuple(by_name[n] for n in names if n not in depended)
    return BuiltClosure(paths=by_name, roots=roots)


def busybox_package(
    name: str = "busybox",
    applets: Sequence[str] = ("sh", "ls", "cat", "echo", "env", "true"),
    source: str = "/bin/busybox",
) -> Package:
    """A package with a static busybox in bin/ and a relative symlink per applet."""
    if not os.path.isfile(source):
        raise FileNotFoundError(f"{source} not found: apt-get install busybox-static")
    entries: dict[str, Entry] = {"bin/busybox": HostFile(source)}
    entries.update({f"bin/{a}": Symlink("busybox") for a in applets})
    return Package(name=name, entries=entries)


# --- expression generation ----------------------------------------------------------------


def _check_package(package: Package, index: Mapping[str, int]) -> None:
    if not _NAME_RE.match(package.name) or package.name == "out":
        raise ValueError(f"invalid package name {package.name!r}")
    for dep in package.deps:
        if dep not in index:
            raise ValueError(f"{package.name} depends on unknown package {dep!r}")
    for rel in package.entries:
        parts = PurePosixPath(rel).parts
        if not parts or rel.startswith("/") or any(p in {".", ".."} for p in parts):
            raise ValueError(f"{package.name}: entry path {rel!r} must be relative and plain")


def _derivation_expr(i: int, package: Package, index: Mapping[str, int], src_root: Path) -> str:
    attrs: dict[str, str] = {}  # extra derivation attributes, as Nix expressions
    lines = ["set -e", 'mkdir -p "$out"']
    src = src_root / f"p{i}"
    for n, (rel, entry) in enumerate(sorted(package.entries.items())):
        dest = '"$out"/' + shlex.quote(rel)
        parent = PurePosixPath(rel).parent
        if str(parent) != ".":
            lines.append('mkdir -p "$out"/' + shlex.quote(str(parent)))
        lines.extend(_entry_lines(n, rel, entry, dest, package, index, attrs, src))
    for dep in package.deps:
        # Symlink targets name dependencies through these variables (see _shell_target).
        attrs[f"ociforgeDep{index[dep]}"] = f"p{index[dep]}"
    if package.deps:
        attrs["ociforgeDeps"] = '"' + "".join(f"${{p{index[d]}}}\\n" for d in package.deps) + '"'
        lines += ['mkdir -p "$out/nix-support"', 'cp "$ociforgeDepsPath" "$out/nix-support/deps"']
    pass_as_file = [k for k in attrs if k.startswith("ociforgeFile") or k == "ociforgeDeps"]
    script = "\n".join(lines) + "\n"
    extra = "".join(f"    {k} = {v};\n" for k, v in attrs.items())
    return (
        f"  p{i} = builtins.derivation {{\n"
        f'    name = "{package.name}"; system = builtins.currentSystem;\n'
        f'    builder = "/bin/sh"; PATH = "/usr/bin:/bin";\n'
        f"    passAsFile = [ {' '.join(chr(34) + k + chr(34) for k in pass_as_file)} ];\n"
        f"{extra}"
        f'    args = [ "-c" "{_nix_escape_static(script)}" ];\n'
        f"  }};\n"
    )


def _entry_lines(
    n: int,
    rel: str,
    entry: Entry,
    dest: str,
    package: Package,
    index: Mapping[str, int],
    attrs: dict[str, str],
    src: Path,
) -> list[str]:
    if isinstance(entry, (str, bytes)):
        entry = File(entry)
    if isinstance(entry, Dir):
        return [f"mkdir -p {dest}"]
    if isinstance(entry, Symlink):
        return [f"ln -s {_shell_target(entry.target, package, index)} {dest}"]
    if isinstance(entry, HostFile):
        attrs[f"ociforgeHost{n}"] = (
            f'builtins.path {{ path = "{_nix_escape_static(entry.source)}"; name = "host-{n}"; }}'
        )
        return [f'cp "$ociforgeHost{n}" {dest}']
    mode = "0555" if entry.executable else "0444"
    if isinstance(entry.content, bytes):
        # Bytes may hold NULs, which Nix strings cannot: go through a source directory.
        src.mkdir(parents=True, exist_ok=True)
        blob = src / f"blob-{n}"
        blob.write_bytes(entry.content)
        attrs[f"ociforgeBlob{n}"] = f'builtins.path {{ path = "{blob}"; name = "blob-{n}"; }}'
        return [f'cp "$ociforgeBlob{n}" {dest}', f"chmod {mode} {dest}"]
    if "\x00" in entry.content:
        raise ValueError(f"{package.name}: {rel} has a NUL byte: give its content as bytes")
    attrs[f"ociforgeFile{n}"] = _nix_string(entry.content, package, index)
    return [f'cp "$ociforgeFile{n}Path" {dest}', f"chmod {mode} {dest}"]


def _nix_string(text: str, package: Package, index: Mapping[str, int]) -> str:
    """A Nix string literal of ``text`` with the placeholders turned into interpolations."""
    out, pos = [], 0
    for m in _PLACEHOLDER_RE.finditer(text):
        ref = _placeholder_expr(m.group(1), package, index)
        if ref is None:
            continue
        out.append(_nix_escape_static(text[pos : m.start()]) + "${" + ref + "}")
        pos = m.end()
    out.append(_nix_escape_static(text[pos:]))
    return '"' + "".join(out) + '"'


def _shell_target(target: str, package: Package, index: Mapping[str, int]) -> str:
    """A shell word for a symlink target; placeholders become $out or a dependency path."""
    words, pos = [], 0
    for m in _PLACEHOLDER_RE.finditer(target):
        ref = _placeholder_expr(m.group(1), package, index)
        if ref is None:
            continue
        words.append(shlex.quote(target[pos : m.start()]) if m.start() > pos else "")
        words.append('"$out"' if m.group(1) == "out" else f'"$ociforgeDep{index[m.group(1)]}"')
        pos = m.end()
    if pos < len(target) or not words:
        words.append(shlex.quote(target[pos:]))
    return "".join(words)


def _placeholder_expr(name: str, package: Package, index: Mapping[str, int]) -> str | None:
    if name == "out":
        return 'builtins.placeholder "out"'
    if name in package.deps:
        return f"p{index[name]}"
    return None


def _nix_escape_static(text: str) -> str:
    """Escape ``text`` for the inside of a Nix double-quoted string (no interpolation)."""
    return (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
