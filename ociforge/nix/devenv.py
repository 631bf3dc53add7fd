"""A dev shell's environment (``nix print-dev-env --json``) and the closure that carries it.

``nix print-dev-env --json INSTALLABLE`` builds the shell's inputs and runs its setup the way
``nix develop`` would, then prints (the same shape from Nix 2.4 to today)::

    {"bashFunctions": {"name": "body"},
     "variables": {"NAME": {"type": "exported" | "var", "value": "text"},
                   "ARR": {"type": "array", "value": ["a", "b"]},
                   "MAP": {"type": "associative", "value": {"k": "v"}},
                   "X": {"type": "unknown"}}}

Newer Nix adds a ``structuredAttrs`` key for derivations with ``__structuredAttrs``; it is
ignored (only bash can use it). Facts checked on Nix 2.8 with a ``builder = "/bin/bash"``,
``outputs = [ "out" ]`` derivation: derivation attributes (``buildInputs``, custom variables,
``shellHook``) come back as exported variables; ``PATH`` is the derivation's own ``PATH``
attribute (only stdenv's setup builds it from the inputs, so a bare derivation must set it);
``out`` names the ``*-env`` file print-dev-env itself produced; ``NIX_BUILD_TOP``/``TMPDIR``
name the temporary build directory of that run; bash's own variables come back as ``var``.

The image needs every store path the environment names (``PATH`` entries, the hook's
``source ...``): a ``mkShell`` output records all of them, a hand-written derivation may not.
:func:`read_devshell` therefore adds the missing ones to the closure as extra roots.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ociforge.errors import NixError, UsageError
from ociforge.nix.closure import Closure
from ociforge.nix.pathinfo import DEFAULT_STORE_DIR, closure_from_path_info
from ociforge.nix.runner import Nix, classify_installable

__all__ = ["DevEnv", "DevShell", "parse_dev_env", "print_dev_env", "read_devshell"]

logger = logging.getLogger(__name__)

# A store path's base name: 32 nix32 characters, a dash, then the name's allowed characters.
_NAME_CHARS = r"[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+"


@dataclass(frozen=True)
class DevEnv:
    """What ``nix print-dev-env --json`` said about a shell, unfiltered.

    ``variables`` are the *exported* string variables except ``shellHook`` (kept apart in
    ``shell_hook``: it is code, not something a job's environment should carry). The other
    fields keep what only a bash process can hold: plain shell variables, arrays, associative
    arrays and functions (an entrypoint can restore them; an image config cannot).
    ``store_paths`` are the top-level store paths the environment mentions anywhere (hook and
    functions included) that exist in this machine's store, except the ``*-env`` output of
    print-dev-env itself; sorted.
    """

    installable: str
    variables: Mapping[str, str]
    shell_hook: str | None = None
    shell_variables: Mapping[str, str] = field(default_factory=dict)
    arrays: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    associative: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    bash_functions: Mapping[str, str] = field(default_factory=dict)
    store_paths: tuple[str, ...] = ()

    @property
    def name(self) -> str | None:
        """The derivation's ``name`` (``nix-shell``, ``devshell``...), when it exported one."""
        return self.variables.get("name")

    @property
    def build_top(self) -> str | None:
        """The temporary build directory of the print-dev-env run (``NIX_BUILD_TOP``)."""
        return self.variables.get("NIX_BUILD_TOP") or None

    @property
    def output_names(self) -> tuple[str, ...]:
        """The derivation's outputs (``out``...): their variables name print-dev-env's file."""
        outputs = self.variables.get("outputs")
        if outputs is not None:
            return tuple(outputs.split())
        if "outputs" in self.associative:  # structured attrs: outputs is a name -> path map
            return tuple(sorted(self.associative["outputs"]))
        return ("out",)


@dataclass(frozen=True)
class DevShell:
    """A dev shell ready for an image: its environment and a closure that covers it."""

    env: DevEnv
    closure: Closure
    extra_roots: tuple[str, ...] = ()  # store paths the env names that the build did not record


def parse_dev_env(
    data: bytes | str,
    installable: str,
    *,
    store_dir: str = DEFAULT_STORE_DIR,
    path_exists: Callable[[str], bool] = os.path.lexists,
) -> DevEnv:
    """Parse print-dev-env's JSON. ``path_exists`` decides which mentioned store paths count."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise NixError(f"nix print-dev-env {installable} printed no JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("variables"), dict):
        raise NixError(f"nix print-dev-env {installable} printed JSON without 'variables'")
    functions = doc.get("bashFunctions", {})
    if not isinstance(functions, dict) or not all(isinstance(v, str) for v in functions.values()):
        raise NixError(f"nix print-dev-env {installable}: 'bashFunctions' is not a string map")
    exported, plain, arrays, assoc = _split_variables(doc["variables"], installable)
    hook = exported.pop("shellHook", None)
    env = DevEnv(
        installable=installable,
        variables=dict(sorted(exported.items())),
        shell_hook=hook,
        shell_variables=dict(sorted(plain.items())),
        arrays=dict(sorted(arrays.items())),
        associative=dict(sorted(assoc.items())),
        bash_functions=dict(sorted(functions.items())),
    )
    paths = _mentioned_store_paths(env, store_dir)
    return dataclasses.replace(env, store_paths=tuple(p for p in paths if path_exists(p)))


_Split = tuple[
    dict[str, str], dict[str, str], dict[str, tuple[str, ...]], dict[str, dict[str, str]]
]


def _split_variables(variables: Mapping[str, object], installable: str) -> _Split:
    exported: dict[str, str] = {}
    plain: dict[str, str] = {}
    arrays: dict[str, tuple[str, ...]] = {}
    assoc: dict[str, dict[str, str]] = {}
    for name, info in variables.items():
        if not isinstance(info, dict):
            raise NixError(f"nix print-dev-env {installable}: variable {name} is not an object")
        kind, value = info.get("type"), info.get("value")
        if kind in ("exported", "var") and isinstance(value, str):
            (exported if kind == "exported" else plain)[name] = value
        elif kind == "array" and isinstance(value, list):
            arrays[name] = tuple(str(v) for v in value)
        elif kind == "associative" and isinstance(value, dict):
            assoc[name] = {str(k): str(v) for k, v in sorted(value.items())}
        else:
            # "unknown" (bash specials such as BASHPID) carry no value; nix develop skips them.
            logger.debug("skipping variable %s of type %r", name, kind)
    return exported, plain, arrays, assoc


def _mentioned_store_paths(env: DevEnv, store_dir: str) -> list[str]:
    pattern = re.compile(re.escape(store_dir.rstrip("/")) + "/" + _NAME_CHARS)
    outputs = set(env.output_names)
    texts = [v for k, v in env.variables.items() if k not in outputs]
    texts += [env.shell_hook or "", *env.shell_variables.values(), *env.bash_functions.values()]
    texts += [v for values in env.arrays.values() for v in values]
    texts += [v for k, m in env.associative.items() if k != "outputs" for v in m.values()]
    found = {m.group(0) for text in texts for m in pattern.finditer(text)}
    # The outputs' values name the *-env file of this print-dev-env run, not an input.
    found -= {env.variables.get(name, "") for name in outputs}
    return sorted(found)


def _dev_env_target(nix: Nix, installable: str) -> str:
    kind, target = classify_installable(installable)
    if kind == "store-path":
        raise UsageError(
            f"{installable} is a built store path: print-dev-env needs a derivation "
            "(a flake output such as .#devShells.x86_64-linux.default, or a .drv path)"
        )
    if kind == "drv" and nix.version().has_drv_outputs_syntax:
        return f"{target}^*"  # from Nix 2.15 a bare .drv means the file, not the derivation
    return target


def _print_dev_env(nix: Nix, installable: str) -> DevEnv:
    target = _dev_env_target(nix, installable)
    # Nix has no public "run a subcommand" API in ociforge.nix.runner besides its methods;
    # _run gives the same experimental-features flags, stderr logging and one-line NixError.
    out = nix._run(["print-dev-env"], ["--json"], [target], what=f"nix print-dev-env {installable}")
    return parse_dev_env(out, installable)


def print_dev_env(installable: str, *, nix: str = "nix", extra_args: Sequence[str] = ()) -> DevEnv:
    """Run ``nix print-dev-env --json INSTALLABLE`` (building the shell's inputs if needed).

    ``installable`` is a flake output (``.#devShells.x86_64-linux.default``,
    ``path:/dir#devShells...``) or a ``.drv`` path. ``extra_args`` go to nix (``--option
    substituters ''``, ``--impure``...). A failure raises :class:`NixError` with nix's message.
    """
    return _print_dev_env(Nix(nix, extra_args=extra_args), installable)


def read_devshell(
    installable: str,
    *,
    nix: str = "nix",
    extra_args: Sequence[str] = (),
    system: str | None = None,
) -> DevShell:
    """The shell's environment plus a closure holding everything that environment names.

    The closure is that of the shell's outputs (``nix build``, as :func:`read_closure` does:
    a ``mkShell`` output records every input). Store paths the environment mentions but the
    outputs do not reference become extra roots, after the outputs; each is logged.
    """
    runner = Nix(nix, extra_args=extra_args)
    env = _print_dev_env(runner, installable)
    closure = runner.read_closure(installable, system=system)
    missing = tuple(p for p in env.store_paths if p not in closure.paths)
    if not missing:
        return DevShell(env, closure)
    for path in missing:
        logger.info("adding %s: the shell's environment names it, its output does not", path)
    roots = [*closure.roots, *missing]
    doc = runner.path_info(roots)
    extended = closure_from_path_info(doc.infos, roots, closure.system, store_dir=doc.store_dir)
    return DevShell(env, extended, missing)
