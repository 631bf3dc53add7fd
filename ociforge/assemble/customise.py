"""The customisation layer and the environment of an image, from what its source provides.

An image's source is more than a closure: a dev shell brings its environment (``Env``) and may
bring an entrypoint running its ``shellHook``; ``--contents`` adds roots linked into ``/``;
essentials add ``/bin/sh``, ``/tmp``, users, CA certificates and Nix's database. This module
decides, from an :class:`ImageSource` and the options, which entries the last layer holds and
which variables, user and entrypoint the config gets. Who wins, from weakest to strongest:
root links < essentials < ``--add`` < the devshell entrypoint (entries); default ``PATH`` <
essentials' variables < the shell's environment < ``--env`` (variables).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ociforge.assemble.essentials import (
    EssentialsOptions,
    essentials,
    find_program,
    merge_entries,
    ordered_store_paths,
    parse_user,
)
from ociforge.assemble.rootfs import default_path, root_links
from ociforge.errors import UsageError
from ociforge.nix.closure import Closure
from ociforge.source import ImageSource
from ociforge.tarstream import TarEntry

if TYPE_CHECKING:  # devenv is for dev shells only
    from ociforge.nix.devenv import DevEnv

__all__ = ["Customisation", "customise"]


@dataclass(frozen=True)
class Customisation:
    """The last layer's entries and what the config gets besides the user's own settings."""

    entries: tuple[TarEntry, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # below the user's --env
    default_path: str | None = None  # PATH when neither the shell nor --env sets one
    user: str | None = None  # config User when --user did not set it
    entrypoint: tuple[str, ...] | None = None
    warnings: tuple[str, ...] = ()


def customise(
    source: ImageSource,
    *,
    essentials_options: EssentialsOptions | None,
    entrypoint_hook: bool = False,
    link_roots: bool = True,
) -> Customisation:
    """Entries, variables and warnings for ``source``.

    ``essentials_options`` ``None`` means the source's default: every essential for a dev
    shell (a job image needs them), none otherwise.
    """
    if entrypoint_hook and source.devenv is None:
        raise UsageError("--entrypoint-hook runs a dev shell's shellHook: use it with --devshell")
    opts = essentials_options
    if opts is None and source.devenv is not None:
        opts = EssentialsOptions()
    closure = source.closure
    links = root_links(source.roots_to_link) if link_roots else []
    extra: list[TarEntry] = []
    env: dict[str, str] = {}
    warnings: tuple[str, ...] = ()
    user_spec = opts.user if opts is not None else None
    if opts is not None:
        found = essentials(closure.paths, opts, roots=closure.roots, nix_db=source.nix_db)
        extra += found.entries
        env.update(found.env)
        warnings = found.warnings
    entrypoint = None
    if source.devenv is not None:
        shell_env, hook = _shell(
            source.devenv, closure, opts or EssentialsOptions(), entrypoint_hook
        )
        env.update(shell_env)
        if hook is not None:
            extra.append(hook)
            entrypoint = (hook.name,)
    entries = tuple(merge_entries(links, extra))
    if opts is not None and not any(e.name == "/etc/passwd" for e in entries):
        warnings += _user_warning(opts)
    path = default_path(source.roots_to_link)
    env = dict(sorted(env.items()))
    return Customisation(entries, env, path, user_spec, entrypoint, warnings)


def _shell(
    devenv: DevEnv, closure: Closure, opts: EssentialsOptions, entrypoint_hook: bool
) -> tuple[dict[str, str], TarEntry | None]:
    """The shell's variables for ``Env``, and the entrypoint running its hook if asked for."""
    # Imported here: only dev shell images pay for them.
    from ociforge.assemble.devshell import entrypoint_entry, image_env  # noqa: PLC0415

    home = parse_user(opts.user, home=opts.home).home
    env = image_env(devenv, home=home, user=opts.user, store_dir=closure.store_dir)
    if not entrypoint_hook:
        return env, None
    bash = find_program(ordered_store_paths(closure.roots, closure.paths), ("bash",))
    return env, entrypoint_entry(devenv, bash=bash)


def _user_warning(opts: EssentialsOptions) -> tuple[str, ...]:
    """A user name the image cannot resolve stops every container before it starts."""
    name = (opts.user or "").split(":", 1)[0]
    if not name or name.isdigit() or name == "root":
        return ()
    return (
        f"--user {name}: without essentials the image has no /etc/passwd entry for it and "
        "containers will not start; add --essentials or give a numeric UID[:GID]",
    )
