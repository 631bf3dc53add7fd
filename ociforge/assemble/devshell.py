"""A dev shell's environment as an image's ``Env``, and an opt-in entrypoint for its shellHook.

GitLab's docker executor replaces ``Cmd`` with the job script, which ``sh`` runs: no rc file is
ever read, so the shell's environment must be in the image config's ``Env``. This module turns
what ``nix print-dev-env`` captured (:class:`~ociforge.nix.devenv.DevEnv`) into that ``Env``,
keeping what a job can use and dropping what only made sense inside the capturing build
(:data:`DROPPED_VARIABLES` says why for each), like ``nix develop`` does (its ``ignoreVars``,
plus a few more) and like nixpkgs' ``streamNixShellImage`` sets ``HOME``, ``TMPDIR`` and
``NIX_BUILD_TOP``.

``shellHook`` cannot run from ``Env``: it is bash code, and an image config only holds strings.
:func:`entrypoint_script` makes ``/bin/ociforge-devshell-entrypoint``, a bash script (bash from
the closure is its interpreter, so the image needs no other shell for it) that restores the
shell's functions and shell variables, evaluates the hook as ``nix develop`` does, then execs
the container's command. With it as ``Entrypoint``, GitLab's job shell inherits what the hook
exported. It is opt-in: a hook that prints, prompts or starts services slows every job down.
Kubernetes executors ignore image entrypoints unless told otherwise (the GitLab runner's
``FF_KUBERNETES_HONOR_ENTRYPOINT``), so anything a job *needs* should be a variable, not a hook.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Mapping

from ociforge.errors import UsageError
from ociforge.nix.devenv import DevEnv
from ociforge.tarstream import TarEntry

__all__ = [
    "DROPPED_VARIABLES",
    "ENTRYPOINT",
    "entrypoint_entry",
    "entrypoint_script",
    "image_env",
]

logger = logging.getLogger(__name__)

ENTRYPOINT = "/bin/ociforge-devshell-entrypoint"
IMAGE_TMPDIR = "/tmp"  # noqa: S108  (the image's own /tmp, created mode 1777 by essentials)
APPENDED_PATH = ("/bin", "/usr/bin")  # where essentials puts sh and env

# name -> why it does not belong in a job's environment. The first group is nix develop's own
# ignore list (src/nix/develop.cc); the rest are additions for images.
DROPPED_VARIABLES: Mapping[str, str] = {
    "BASHOPTS": "bash options of the shell that captured the environment",
    "HOME": "/homeless-shelter during a build; the image user's home is set instead",
    "NIX_BUILD_TOP": "the capture's temporary build directory; set to /tmp instead",
    "NIX_ENFORCE_PURITY": "makes the compiler wrappers reject paths outside the store",
    "NIX_LOG_FD": "the builder's log file descriptor, not a job's",
    "NIX_REMOTE": "the capturing machine's daemon setting",
    "PPID": "a process id of the capturing machine",
    "SHELL": "the build user's login shell (/noshell or nologin)",
    "SHELLOPTS": "bash options of the shell that captured the environment",
    "TEMP": "the capture's temporary build directory",
    "TEMPDIR": "the capture's temporary build directory",
    "TERM": "the capture's terminal; the runtime sets its own",
    "TMP": "the capture's temporary build directory",
    "TMPDIR": "the capture's temporary build directory; set to /tmp instead",
    "TZ": "the capturing machine's time zone",
    "UID": "a user id of the capturing machine",
    "OLDPWD": "a directory of the capturing shell",
    "PWD": "a directory of the capturing shell",
    "SHLVL": "the nesting depth of the capturing shell",
    "NIX_BUILD_CORES": "the capturing machine's core count, wrong on a CI runner",
    "builder": "the program nix runs to build the shell, nothing a job runs",
    "outputs": "names outputs whose variables are dropped (see 'out')",
    "out": "print-dev-env's own read-only *-env file, not a place a job can write",
}

# Kept only when they point into the store: a build sets them to /no-cert-file.crt, while a
# shell that sets them on purpose (pkgs.cacert) names a bundle in its closure.
_CERT_VARIABLES = frozenset({"SSL_CERT_FILE", "NIX_SSL_CERT_FILE"})

# Bash's own variables: print-dev-env reports the capturing bash's values; assigning them in
# another bash is pointless (PWD, LINENO) or fails (readonly EUID, PPID).
_BASH_SPECIAL = re.compile(
    r"BASH\w*|COMP_WORDBREAKS|DIRSTACK|EPOCH\w+|EUID|FUNCNAME|GROUPS|HIST\w+|HOST(NAME|TYPE)"
    r"|IFS|LINENO|MACHTYPE|OLDPWD|OPT(ERR|IND)|OSTYPE|PIPESTATUS|PPID|PS[1-4]|PWD|S?RANDOM"
    r"|SECONDS|SHELL(OPTS)?|SHLVL|UID|_"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_:.+-]*")


def image_env(
    devenv: DevEnv,
    *,
    home: str,
    user: str | None = None,
    store_dir: str = "/nix/store",
) -> dict[str, str]:
    """The ``Env`` of a devshell image, sorted by name.

    Keeps the shell's exported variables except :data:`DROPPED_VARIABLES`, certificate
    variables that do not point into the store, and any variable whose value names the
    capture's temporary build directory. Sets ``HOME`` to ``home``, ``TMPDIR`` and
    ``NIX_BUILD_TOP`` to ``/tmp`` (as streamNixShellImage does; setup hooks read the latter),
    ``USER`` to ``user`` when it is a name, and appends ``/bin:/usr/bin`` to ``PATH``.
    Callers layer it above essentials' variables and below the user's ``--env``.
    """
    env = {name: value for name, value in devenv.variables.items() if _keep(name, value, devenv)}
    in_store = store_dir.rstrip("/") + "/"
    env = {n: v for n, v in env.items() if n not in _CERT_VARIABLES or v.startswith(in_store)}
    env["PATH"] = _extend_path(devenv.variables.get("PATH", ""))
    env["HOME"] = home
    env["TMPDIR"] = IMAGE_TMPDIR
    env["NIX_BUILD_TOP"] = IMAGE_TMPDIR
    if user and not user.split(":", 1)[0].isdigit():
        env["USER"] = user.split(":", 1)[0]
    return dict(sorted(env.items()))


def _keep(name: str, value: str, devenv: DevEnv) -> bool:
    if name in DROPPED_VARIABLES or name in devenv.output_names:
        return False
    return not _in_build_top(value, devenv.build_top)


def _in_build_top(value: str, top: str | None) -> bool:
    """Whether ``value`` names the capture's build dir (a sandbox's is just ``/build``).

    Only a whole path counts: ``/build/src`` does, ``/nix/store/...-x/build-tools`` does not.
    """
    if not top:
        return False
    return re.search(r"(?:^|[\s:=])" + re.escape(top) + r"(?:$|[\s:/])", value) is not None


def _extend_path(path: str) -> str:
    entries = [p for p in path.split(":") if p]
    entries += [p for p in APPENDED_PATH if p not in entries]
    return ":".join(dict.fromkeys(entries))


def entrypoint_script(devenv: DevEnv, *, bash: str | None) -> bytes:
    """``/bin/ociforge-devshell-entrypoint``: run the shellHook, then ``exec "$@"``.

    ``bash`` is the bash of the closure (``essentials.find_program(paths, ("bash",))``); the
    hook is bash code, so without one this raises :class:`UsageError`. The hook reads
    ``/dev/null`` (GitLab feeds the job script on stdin: a hook must not eat it) and writes to
    stderr (so a command's stdout stays its own). Functions, arrays and non-exported variables
    are defined for the hook only: ``exec`` keeps exported variables, as a job shell needs.
    With no command, it starts ``bash``.
    """
    if not bash:
        raise UsageError(
            "the devshell entrypoint runs the shellHook with bash, but the closure has no "
            "bin/bash: add bash to the shell's packages, or build without the entrypoint hook"
        )
    lines = [
        f"#!{bash}",
        "# Made by ociforge: the dev shell's functions and variables, then its shellHook as",
        "# `nix develop` runs it, then the container's command.",
        *_shell_variable_lines(devenv),
        *_function_lines(devenv),
    ]
    if devenv.shell_hook:
        lines += [
            f"shellHook={shlex.quote(devenv.shell_hook)}",
            'eval "$shellHook" </dev/null >&2',
            "unset shellHook",
        ]
    lines += [f'if [ "$#" -eq 0 ]; then set -- {shlex.quote(bash)}; fi', 'exec "$@"', ""]
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def _shell_variable_lines(devenv: DevEnv) -> list[str]:
    lines = []
    for name, value in devenv.shell_variables.items():
        if _restorable(name) and not _in_build_top(value, devenv.build_top):
            lines.append(f"{name}={shlex.quote(value)}")
    for name, values in devenv.arrays.items():
        if _restorable(name):
            lines.append(f"declare -a {name}=({' '.join(shlex.quote(v) for v in values)})")
    for name, mapping in devenv.associative.items():
        if _restorable(name):
            items = " ".join(f"[{shlex.quote(k)}]={shlex.quote(v)}" for k, v in mapping.items())
            lines.append(f"declare -A {name}=({items})")
    return lines


def _restorable(name: str) -> bool:
    if not _IDENTIFIER.fullmatch(name) or _BASH_SPECIAL.fullmatch(name):
        logger.debug("entrypoint: not restoring bash variable %s", name)
        return False
    return True


def _function_lines(devenv: DevEnv) -> list[str]:
    lines = []
    for name, body in devenv.bash_functions.items():
        if not _FUNCTION_NAME.fullmatch(name):
            logger.info("entrypoint: skipping bash function with an unusual name %r", name)
            continue
        # print-dev-env gives the body without its braces, as `nix develop` writes it back.
        code = body.rstrip() if body.strip() else ":"  # bash rejects an empty `{ }`
        lines.append(f"{name} ()\n{{\n{code}\n}}")
    return lines


def entrypoint_entry(devenv: DevEnv, *, bash: str | None) -> TarEntry:
    """The entrypoint as a customisation-layer file (mode 0555, like store executables)."""
    return TarEntry(
        name=ENTRYPOINT, kind="file", mode=0o555, data=entrypoint_script(devenv, bash=bash)
    )
