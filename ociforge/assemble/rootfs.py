"""The customisation layer: what lives outside /nix/store in the image.

Like streamLayeredImage's ``contents``, the roots' top-level directories are merged into ``/``
with symlinks, so ``/bin/<tool>`` works: a name present in one root only becomes one symlink into
that root; a directory present in several roots becomes a real directory whose entries are merged
the same way, one level further down. The first root wins a conflict between non-directories,
which is deterministic because roots keep the order the user gave.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from ociforge.errors import ImageError
from ociforge.tarstream import TarEntry


def root_links(roots: Sequence[str]) -> list[TarEntry]:
    """Tar entries linking every root's top-level tree into ``/``, sorted by path component.

    A root that is a file (not a directory) contributes nothing: there is no name to link it at.
    """
    dirs = [r for r in roots if _is_dir(r)]
    entries: list[TarEntry] = []
    for name in _merged_names(dirs):
        sources = [os.path.join(r, name) for r in dirs if _exists(os.path.join(r, name))]
        # Top-level names are always real directories so later additions (/bin/sh, /etc) can
        # sit beside the links instead of replacing a symlinked directory.
        if _is_dir(sources[0]):
            entries.append(TarEntry(name=f"/{name}", kind="dir", mode=0o755))
            _merge_into(entries, f"/{name}", [s for s in sources if _is_dir(s)])
        else:
            entries.append(TarEntry(name=f"/{name}", kind="symlink", target=sources[0]))
    return entries


def _merge_into(entries: list[TarEntry], dest: str, sources: Sequence[str]) -> None:
    for name in _merged_names(sources):
        here = [os.path.join(s, name) for s in sources if _exists(os.path.join(s, name))]
        as_dirs = [h for h in here if _is_dir(h)]
        if len(as_dirs) > 1 and _is_dir(here[0]):
            entries.append(TarEntry(name=f"{dest}/{name}", kind="dir", mode=0o755))
            _merge_into(entries, f"{dest}/{name}", as_dirs)
        else:
            entries.append(TarEntry(name=f"{dest}/{name}", kind="symlink", target=here[0]))


def _merged_names(dirs: Sequence[str]) -> list[str]:
    names: set[str] = set()
    for d in dirs:
        try:
            names.update(os.listdir(d))
        except OSError as exc:
            raise ImageError(f"cannot list {d}: {exc.strerror}") from exc
    return sorted(names)


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _is_dir(path: str) -> bool:
    # Follows symlinks on purpose: a root's ``bin -> sbin`` link still merges as a directory.
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


def default_path(roots: Sequence[str]) -> str:
    """PATH covering the roots' ``bin/`` (and the linked ``/bin``), in root order."""
    bins = [f"{r}/bin" for r in roots if _is_dir(f"{r}/bin")]
    return ":".join([*bins, "/usr/local/bin", "/usr/bin", "/bin"])
