"""Compare file trees the way an image user would see them: kind, mode, content, link target."""

from __future__ import annotations

import os
import stat
from pathlib import Path

Node = tuple[str, int, bytes | str]


def tree(root: Path) -> dict[str, Node]:
    """relative path -> (kind, mode, content or link target), following no symlink."""
    out: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out
