"""Output files that either appear whole or not at all, and the checks made before writing one.

A docker archive is written to a temporary file beside its destination, fsynced, and renamed
over it only once complete: a failure at any point (a bad reference, ENOSPC, Ctrl-C, a store
path that vanished) removes the temporary file and leaves a previous archive as it was. The
rename is atomic because both names are in one directory (one file system).

What cannot be replaced atomically is streamed as before: stdout (``-``), and any existing
destination that is not a regular file (``/dev/stdout``, ``/dev/null``, a FIFO). Renaming over
those would replace the device node or pipe itself, not write to it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import IO

from ociforge.errors import ImageError, UsageError


def check_output_file(path: str) -> None:
    """Refuse, before anything is built or touched, a destination that cannot be written.

    The destination's directory must exist and be writable (a temporary file is made there);
    an existing destination must not be a directory.
    """
    if path == "-" or _existing_special(path):
        return
    real = os.path.realpath(path)
    if os.path.isdir(real):
        raise UsageError(f"cannot write {path}: it is a directory (name a file in it)")
    parent = os.path.dirname(real)
    if not os.path.isdir(parent):
        raise UsageError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: directory {parent} is not writable")


def is_streamed(path: str) -> bool:
    """Whether ``path`` is written in place (stdout, a device, a FIFO) rather than replaced."""
    return path == "-" or _existing_special(path)


def _existing_special(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, or a dangling link: a regular file will be made
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


@contextlib.contextmanager
def replaced_atomically(path: str) -> Iterator[IO[bytes]]:
    """A new file that replaces ``path`` when the ``with`` block ends without an exception.

    A symlink is followed: the file it points at is replaced, the link stays. On any exception
    (KeyboardInterrupt included) the temporary file is removed and ``path`` is untouched; an
    OSError becomes an ImageError naming ``path`` and the system's reason.
    """
    real = os.path.realpath(path)
    directory, name = os.path.split(real)
    tmp = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(8)}")
    try:
        # O_EXCL: never write through a file or link someone placed under the temporary name.
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())  # the rename must not publish an archive still in the cache
        os.replace(tmp, real)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise ImageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    _sync_directory(directory)


def _sync_directory(directory: str) -> None:
    # Makes the rename itself durable; a file system that cannot fsync a directory is no error.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
