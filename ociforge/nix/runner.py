"""Run ``nix``: build an installable, read its closure, find its system.

This is the only module of ociforge that starts a ``nix`` process. Every call passes
``--extra-experimental-features 'nix-command flakes'`` (needed by Nix 2.8, harmless later) and
adapts to the version it finds:

- ``.drv`` installables: Nix < 2.13 builds all outputs of a bare ``/nix/store/x.drv``; from
  2.13 the ``x.drv^*`` syntax exists and from 2.15 a bare ``.drv`` means the file itself, so
  ``^*`` is used whenever it is available.
- ``nix path-info --json`` is called without ``--json-format``: older versions reject the flag,
  2.33+ only warn (on stderr, which ociforge logs at DEBUG) that the default is deprecated, and
  the parser reads every shape. Should a later Nix refuse the bare ``--json``, the call is
  repeated once with ``--json-format 1``. Not asking ``nix --version`` first saves a nix
  process (about 0.1 s) on every run; only ``.drv`` installables still need the version.
- ``nix show-derivation`` became ``nix derivation show`` in 2.15.

``nix build --no-link --json`` is used to build: it works on every version (Nix 2.8 has no
``--print-out-paths``). Nix's stderr is logged at DEBUG as it arrives; when nix fails, its own
error line (ANSI colours stripped) ends up in a one-line :class:`NixError`.

Every nix is recorded while it runs. It stays in ociforge's process group, so the terminal's
Ctrl-C reaches it as it reaches ociforge (a library caller gets nothing worse than before); a
signal sent to ociforge's pid alone (``kill``, a CI runner cancelling the job) would orphan it,
so the front end forwards it with :func:`terminate_children` when it is asked to stop: nix
(which stops its own builders on SIGTERM) goes down with ociforge, never after it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ociforge.errors import NixError, UsageError
from ociforge.nix.closure import Closure
from ociforge.nix.pathinfo import (
    DEFAULT_STORE_DIR,
    PathInfoDocument,
    closure_from_path_info,
    load_path_info,
)

logger = logging.getLogger(__name__)

EXPERIMENTAL_FEATURES: tuple[str, ...] = ("--extra-experimental-features", "nix-command flakes")

_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
_STDERR_TAIL = 200
# The children running now; a set guarded by a lock, as nix runs on a planning thread.
_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.RLock()  # re-entered by a signal handler on the starting thread


@dataclass(frozen=True)
class NixVersion:
    """What ``nix --version`` said. ``compat`` is the upstream Nix version whose CLI it matches."""

    flavour: str  # "nix", "lix" or "determinate"
    version: tuple[int, int, int]
    compat: tuple[int, int]
    text: str

    @property
    def has_drv_outputs_syntax(self) -> bool:
        """``/nix/store/x.drv^*`` exists (Nix 2.13)."""
        return self.compat >= (2, 13)

    @property
    def has_derivation_show(self) -> bool:
        """``nix derivation show`` exists (Nix 2.15; ``show-derivation`` before)."""
        return self.compat >= (2, 15)


def parse_nix_version(text: str) -> NixVersion:
    """Parse ``nix (Nix) 2.8.0``, ``nix (Lix, like Nix) 2.91.1`` or Determinate Nix's line."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    matches = list(_VERSION_RE.finditer(line))
    if not matches:
        raise NixError(f"cannot read the nix version from {line!r}")
    # Determinate Nix prints "nix (Determinate Nix 3.6.2) 2.29.0": the last number is Nix's.
    m = matches[-1]
    version = (int(m[1]), int(m[2]), int(m[3] or 0))
    if "lix" in line.lower():
        # Lix forked from Nix 2.18: list-shaped path-info, ^* and `derivation show`.
        return NixVersion("lix", version, (2, 18), line)
    flavour = "determinate" if "determinate" in line.lower() else "nix"
    return NixVersion(flavour, version, version[:2], line)


def summarize_nix_stderr(stderr: str) -> str:
    """One line out of nix's stderr: its error message, plus the last build log line if any.

    Nix prints ``error: <message>`` (newer versions print a bare ``error:`` followed by a trace
    whose last ``error:`` line is the message); a failed builder adds ``> log`` lines.
    """
    lines = [ln.strip() for ln in _ANSI_RE.sub("", stderr).splitlines()]
    lines = [ln for ln in lines if ln]
    errors = [ln[len("error:") :].strip() for ln in lines if ln.startswith("error:")]
    errors = [e.rstrip(";").strip() for e in errors if e]
    log_lines = [ln[1:].strip() for ln in lines if ln.startswith(">")]
    if errors:
        first, last = errors[0], errors[-1]
        summary = first if first == last else f"{first}; {last}"
    elif lines:
        summary = lines[-1]
    else:
        return "no error message"
    if log_lines and log_lines[-1] not in summary:
        summary += f" (last log line: {log_lines[-1]})"
    return summary


class Nix:
    """One ``nix`` executable plus the extra arguments given to every subcommand."""

    def __init__(self, nix: str = "nix", *, extra_args: Sequence[str] = ()) -> None:
        self._nix = nix
        self._extra = tuple(extra_args)
        self._version: NixVersion | None = None

    def executable(self) -> str:
        """The full path of the nix binary; NixError when there is none."""
        found = shutil.which(self._nix)
        if found is None:
            where = f"at {self._nix}" if os.sep in self._nix else "on PATH"
            raise NixError(
                f"{self._nix} not found {where}: install Nix (https://nixos.org/download) "
                "or give the path of the nix binary"
            )
        return found

    def version(self) -> NixVersion:
        if self._version is None:
            out = self._run([], ["--version"], what="nix --version")
            self._version = parse_nix_version(out.decode("utf-8", "replace"))
            logger.debug("using %s", self._version.text)
        return self._version

    def build(self, installable: str, *, system: str | None = None) -> list[BuildResult]:
        """``nix build --no-link --json``; one result per derivation nix built or found."""
        opts = ["--no-link", "--json", *_system_args(system)]
        out = self._run(["build"], opts, [installable], what=f"nix build {installable}")
        return _parse_build_results(out, installable)

    def path_info(self, paths: Sequence[str]) -> PathInfoDocument:
        """``nix path-info --json --recursive`` of ``paths``, in the shape this nix prints."""
        what = f"nix path-info {' '.join(paths)}"
        try:
            out = self._run(["path-info"], ["--json", "--recursive"], paths, what=what)
        except NixError as exc:
            if "json-format" not in str(exc):
                raise
            opts = ["--json", "--json-format", "1", "--recursive"]
            out = self._run(["path-info"], opts, paths, what=what)
        return load_path_info(out)

    def derivation_system(self, drv: str) -> str | None:
        """The ``system`` of a store derivation, or None when nix cannot show it.

        Read from the ``.drv`` file itself when it is there (its ATerm format has not changed
        in a decade): one nix process less on every run. ``nix derivation show`` otherwise.
        """
        try:
            with open(drv, "rb") as f:
                system = system_of_drv_text(f.read().decode("utf-8", "replace"))
        except OSError:
            system = None
        if system is not None:
            return system if system != "builtin" else None
        cmd = ["derivation", "show"] if self.version().has_derivation_show else ["show-derivation"]
        try:
            out = self._run(cmd, [], [drv], what=f"nix {' '.join(cmd)} {drv}")
        except NixError as e:
            logger.info("cannot read the system of %s: %s", drv, e)
            return None
        return _system_of_derivation_json(out)

    def read_closure(self, installable: str, *, system: str | None = None) -> Closure:
        """Build ``installable`` if needed and read the closure of all its outputs."""
        kind, target = classify_installable(installable)
        derivers: dict[str, str] = {}
        if kind == "store-path":
            roots = [target]
        else:
            if kind == "drv" and self.version().has_drv_outputs_syntax:
                target = f"{target}^*"
            results = self.build(target, system=system)
            roots = [path for r in results for path in r.outputs]
            derivers = {path: r.drv_path for r in results if r.drv_path for path in r.outputs}
        doc = self.path_info(roots)
        if system is None and roots:
            drv = derivers.get(roots[0]) or doc.derivers.get(roots[0])
            system = self.derivation_system(drv) if drv else None
        return closure_from_path_info(doc.infos, roots, system, store_dir=doc.store_dir)

    def _run(
        self,
        command: Sequence[str],
        options: Sequence[str] = (),
        operands: Sequence[str] = (),
        *,
        what: str,
    ) -> bytes:
        """Run ``nix <command> <options> <extra_args> <operands>``; NixError on failure."""
        argv = [self.executable(), *EXPERIMENTAL_FEATURES, *command, *options]
        if command:  # extra_args are subcommand options: `nix --version` gets none
            argv += self._extra
        argv += operands
        logger.debug("running %s", argv)
        returncode, stdout, stderr_tail = _run_streaming(argv)
        if returncode != 0:
            raise NixError(f"{what} failed: {summarize_nix_stderr(stderr_tail)}")
        return stdout


@dataclass(frozen=True)
class BuildResult:
    """One entry of ``nix build --json``: the derivation (if any) and its output paths."""

    drv_path: str | None
    outputs: tuple[str, ...]


def read_closure(
    installable: str,
    *,
    nix: str = "nix",
    system: str | None = None,
    extra_args: Sequence[str] = (),
) -> Closure:
    """Build ``installable`` if needed and return the closure of all its outputs.

    ``installable`` is a flake reference (``.#attr``, ``path:/dir#attr``, ``github:o/r#attr``),
    an existing store path (not built: its closure is read as is) or a ``.drv`` path (all its
    outputs are built). ``system`` is passed to nix as ``--system`` for the build (it selects
    ``packages.<system>`` of a flake) and becomes the closure's system; without it the system
    is read from the deriver of the first root, or left None when nix does not know it.
    ``extra_args`` go to every nix subcommand (``--option substituters ''``, ``--impure`` ...).
    """
    return Nix(nix, extra_args=extra_args).read_closure(installable, system=system)


def closure_from_json_file(
    path: str | os.PathLike[str],
    roots: Sequence[str] | None = None,
    *,
    system: str | None = None,
    store_dir: str = DEFAULT_STORE_DIR,
) -> Closure:
    """A closure from a saved ``nix path-info --json --recursive`` output of any shape.

    Without ``roots`` the roots are the paths no other path references. Nix is not run, so the
    system is only what the caller says.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read closure JSON {path}: {e.strerror or e}") from None
    try:
        doc = load_path_info(data, store_dir=store_dir)
        return closure_from_path_info(doc.infos, roots, system, store_dir=doc.store_dir)
    except NixError as e:  # the file is the user's input: a bad one is a usage error
        raise UsageError(f"{path}: {e}") from None


def classify_installable(installable: str, store_dir: str = DEFAULT_STORE_DIR) -> tuple[str, str]:
    """``("store-path", path)``, ``("drv", path)`` or ``("installable", text)``.

    A local path (``./result`` too) that resolves into the store names the top store path it
    is in. Anything with ``#`` or ``^`` is left to nix.
    """
    if not installable or "#" in installable or "^" in installable or "://" in installable:
        return "installable", installable
    if ":" in installable.split("/", 1)[0]:
        return "installable", installable  # a flake reference such as path:... or github:...
    real = os.path.realpath(installable)
    prefix = store_dir.rstrip("/") + "/"
    if not real.startswith(prefix):
        return "installable", installable
    top = prefix + real[len(prefix) :].split("/", 1)[0]
    return ("drv" if top.endswith(".drv") else "store-path"), top


# --- helpers ------------------------------------------------------------------------------


def _system_args(system: str | None) -> list[str]:
    return ["--system", system] if system else []


def _run_streaming(argv: Sequence[str]) -> tuple[int, bytes, str]:
    """Run ``argv``; log stderr lines as they come; return (code, stdout, last stderr lines)."""
    proc = _start(argv)
    chunks: list[bytes] = []
    tail: deque[str] = deque(maxlen=_STDERR_TAIL)
    with _recorded(proc), proc:  # closes both pipes and reaps nix whatever happens
        stdout, stderr = proc.stdout, proc.stderr
        if stdout is None or stderr is None:  # cannot happen with PIPE; keeps mypy exact
            raise NixError(f"cannot read the output of {argv[0]}")
        # stdout is read on a thread so that a full stderr pipe can never block nix (or us).
        reader = threading.Thread(target=_read_into, args=(stdout, chunks), daemon=True)
        reader.start()
        for raw in stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            tail.append(line)
            logger.debug("nix: %s", line)
        reader.join()
    return proc.returncode, b"".join(chunks), "\n".join(tail)


def _start(argv: Sequence[str]) -> subprocess.Popen[bytes]:
    try:
        with _children_lock:  # started and recorded as one step: terminate_children sees it
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            _children.add(proc)
    except OSError as e:
        raise NixError(f"cannot run {argv[0]}: {e.strerror or e}; is Nix installed?") from None
    return proc


@contextlib.contextmanager
def _recorded(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        with _children_lock:
            _children.discard(proc)


def terminate_children(grace: float = 1.0) -> int:
    """Stop every nix still running: SIGTERM (nix stops its builders and exits), then SIGKILL
    for one still there after ``grace`` seconds. Returns how many were running.

    Safe to call from a signal handler in the main thread while nix runs on another one.
    """
    with _children_lock:
        running = [p for p in _children if p.poll() is None]
    for proc in running:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.debug("nix %d ignored SIGTERM for %.1fs: killing it", proc.pid, grace)
            _signal(proc, signal.SIGKILL)
    return len(running)


def _signal(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    # send_signal is a no-op once the process was reaped; it may exit between check and kill.
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signum)


def _read_into(pipe: IO[bytes], chunks: list[bytes]) -> None:
    chunks.append(pipe.read())


def _parse_build_results(out: bytes, installable: str) -> list[BuildResult]:
    try:
        doc = json.loads(out)
    except ValueError:
        raise NixError(f"nix build {installable} printed no JSON") from None
    if not isinstance(doc, list) or not doc:
        raise NixError(f"nix build {installable} printed no results")
    results = []
    for item in doc:
        if isinstance(item, dict) and isinstance(item.get("outputs"), dict):
            outputs = item["outputs"]
            # "out" first, then the other outputs by name: a stable root order.
            names = sorted(outputs, key=lambda n: (n != "out", n))
            paths = tuple(outputs[n] for n in names)
            drv = item.get("drvPath")
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            paths, drv = (item["path"],), None
        else:
            raise NixError(f"nix build {installable} printed an unexpected result: {item!r}")
        if not all(isinstance(p, str) for p in paths):
            raise NixError(f"nix build {installable} printed outputs without store paths")
        results.append(BuildResult(drv if isinstance(drv, str) else None, paths))
    return results


def system_of_drv_text(text: str) -> str | None:
    """The 4th field of ``Derive(outputs, inputDrvs, inputSrcs, "system", ...)``, or None."""
    if not text.startswith("Derive("):
        return None
    depth, commas, i = 0, 0, len("Derive(")
    while i < len(text):
        c = text[i]
        if c == '"':
            end = _string_end(text, i)
            if depth == 0 and commas == 3:
                return json.loads(text[i : end + 1]) if end > 0 else None
            if end < 0:
                return None
            i = end
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            commas += 1
        i += 1
    return None


def _string_end(text: str, start: int) -> int:
    """Index of the quote closing the string opened at ``start`` (-1 if unterminated)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _system_of_derivation_json(out: bytes) -> str | None:
    try:
        doc = json.loads(out)
    except ValueError:
        return None
    # Nix >= 2.33 wraps the map as {"version": 4, "derivations": {...}}.
    if isinstance(doc, dict) and isinstance(doc.get("derivations"), dict):
        doc = doc["derivations"]
    if not isinstance(doc, dict) or not doc:
        return None
    drv = next(iter(doc.values()))
    if not isinstance(drv, dict):
        return None
    system = drv.get("system", drv.get("platform"))
    # "builtin" derivations (fetchurl & co.) say nothing about the image architecture.
    return system if isinstance(system, str) and system != "builtin" else None
