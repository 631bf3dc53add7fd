"""Deterministic tar streams of Nix store paths and of synthetic entries.

The bytes are what nixpkgs' ``stream_layered_image.py`` writes with Python's ``tarfile``
(``format=PAX_FORMAT``), built here by hand for speed. The determinism checklist:

- Entries for the store dir's components first (``/nix``, ``/nix/store``; dirs 0755), then each
  store path in the order given: the path itself, then its contents sorted by path *component*
  (``/x/a/b`` before ``/x/a-b``), i.e. a pre-order walk with siblings sorted by name.
- Permissions are ``st_mode & 0o7777`` from the store; mtime, uid, gid, uname and gname are
  forced to :class:`TarOptions`; device major/minor are left empty (as current tarfile and GNU
  tar do for entries that are not devices; older tarfile releases wrote "0000000" there).
- Hard links are written as regular files with their full content, so a digest does not depend
  on whether the store was optimised.
- Names and link targets that do not fit ustar (over 100 bytes, or not ASCII) get a PAX
  extended header exactly as tarfile writes it (``././@PaxHeader``, records in tarfile's order,
  ``hdrcharset=BINARY`` for names that are not valid UTF-8).
- The end: two zero blocks, then zeros up to a multiple of the 10240-byte record.

Speed (issue 5): the common entry, a small file or a directory whose name fits ustar, is
written straight into the chunk buffer: header fields cached per mode and size, the checksum
summed by adler32 in C, header and content packed by one ``struct`` call, the file opened
relative to its directory's fd and read with one ``os.read``; chunks are 1 MiB.

Nothing here calls nix or touches the network; every OSError becomes an ImageError naming the file.
"""

from __future__ import annotations

import itertools
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from operator import attrgetter

from ociforge.errors import ImageError, UsageError
from ociforge.tarheader import (
    BLOCK,
    DIR_FLAGS,
    DIRTYPE,
    ENCODING,
    FILE_FLAGS,
    MAX_OPEN_DIRS,
    OCTAL3,
    RECORD,
    REGTYPE,
    SYMTYPE,
    ZEROS,
    Fields,
    Headers,
    Sized,
    TarEntry,
    TarOptions,
    plain_name,
)

__all__ = ["TarEntry", "TarOptions", "entries_tar_chunks", "store_tar_chunks", "store_tar_size"]


class _Dir:
    """A directory being archived: its path, its entries sorted by name, whether all their
    names (with a slash for directories) are plain, and its fd (None deep down the tree:
    entries are then opened by full path, so the number of open fds stays bounded)."""

    __slots__ = ("entries", "fd", "plain")

    def __init__(self, fd: int | None, path: bytes, entries: list[os.DirEntry[bytes]], cut: int):
        names = [entry.name for entry in entries]
        ascii_names = b"".join(names).isascii()
        if not ascii_names:  # sort as tarfile does: by name as text, not as bytes
            entries.sort(key=lambda entry: _decode(entry.name))
        longest = max(map(len, names), default=0)
        self.fd = fd
        self.entries = iter(entries)
        self.plain = ascii_names and path.isascii() and len(path) - cut + longest + 2 <= 100


class _Chunker:
    """Coalesces tar bytes into chunks of exactly ``size`` bytes (the last one shorter).

    The common entries go straight into the chunk buffer (:meth:`add_file`, :meth:`add_dir`):
    no generator, no yield. Anything else goes through :meth:`put` / :meth:`put_file`, which
    cut chunks where they fall.
    """

    def __init__(self, size: int, headers: Headers) -> None:
        self._size = size
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._spare = bytearray(1)  # catches a file that grew since fstat
        self._pos = 0
        self.total = 0
        self._headers = headers
        self._cut = 1 if headers.relative else 0

    def put(self, data: bytes) -> Iterator[bytes]:
        pos = self._pos
        end = pos + len(data)
        self.total += len(data)
        if end < self._size:  # the common case: no chunk boundary inside
            self._buf[pos:end] = data
            self._pos = end
            return
        view = memoryview(data)
        while view:
            piece = view[: self._size - self._pos]
            self._buf[self._pos : self._pos + len(piece)] = piece
            self._pos += len(piece)
            view = view[len(piece) :]
            if self._pos == self._size:
                yield bytes(self._buf)
                self._pos = 0

    def _pack(self, name: bytes, fields: Fields, sized: Sized, content: bytes) -> None:
        mode_ids, type_tail, adler = fields
        size_mtime, size_sum, packer = sized
        chksum = (zlib.adler32(name, adler) & 0xFFFF) + size_sum
        high, low = OCTAL3[chksum >> 9], OCTAL3[chksum & 0o777]
        packer.pack_into(
            self._buf, self._pos, name, mode_ids, size_mtime, high, low, type_tail, content
        )
        self._pos += packer.size
        self.total += packer.size

    def add_dir(self, name: bytes, st_mode: int) -> bool:
        """Write a directory's plain header in place if its name fits ustar and the block ends
        before the chunk boundary; False, having written nothing, otherwise."""
        headers = self._headers
        fields = headers.dir_fields.get(st_mode) or headers.fast_fields(st_mode, DIRTYPE)
        sized = headers.sizes.get(0) or headers.size_fields(0)
        if fields is None or sized is None or self._pos + BLOCK >= self._size:
            return False
        if not plain_name(name):
            return False
        self._pack(name, fields, sized, b"")
        return True

    def add_file(self, level: _Dir, entry: os.DirEntry[bytes]) -> _Opened | None:
        """Archive a regular file of a directory listing in one go, if its name fits ustar and
        its header and content end before the chunk boundary (the hot path).

        The size written is what fstat says of the open file, and exactly that many bytes must
        be read. Returns None when done, else the open file and its stat for the generic path.
        """
        dfd = level.fd
        fd = os.open(entry.path if dfd is None else entry.name, FILE_FLAGS, dir_fd=dfd)
        try:
            st = os.fstat(fd)
            mode, size = st.st_mode, st.st_size
            headers = self._headers
            fields = headers.file_fields.get(mode) or headers.fast_fields(mode, REGTYPE)
            sized = headers.sizes.get(size) or headers.size_fields(size)
            name = entry.path[self._cut :] if self._cut else entry.path
            if fields is None or sized is None or self._pos + sized[2].size >= self._size:
                return fd, st
            if not (level.plain or plain_name(name)):
                return fd, st
            content = os.read(fd, size + 1)  # one byte more than expected: detects growth
            if len(content) != size:
                content = _read_rest(fd, content, size)
            self._pack(name, fields, sized, content)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def put_file(self, fd: int, size: int) -> Iterator[bytes]:
        """Copy exactly ``size`` bytes of the open file straight into the chunk buffer."""
        remaining = size
        while remaining:
            pos = self._pos
            space = min(remaining, self._size - pos)
            target = self._view[pos : pos + space]
            # On the last piece a spare byte detects growth without an extra read call.
            n = os.readv(fd, [target, self._spare] if space == remaining else [target])
            if n == 0 or n > space:
                raise _size_changed(size)
            self._pos = pos + n
            remaining -= n
            if self._pos == self._size:
                yield bytes(self._buf)
                self._pos = 0
        self.total += size
        yield from self.put(ZEROS[: -size % BLOCK])

    def finish(self) -> Iterator[bytes]:
        """Two zero blocks, then zeros up to a full record, as tarfile ends an archive."""
        yield from self.put(ZEROS[: 2 * BLOCK + -(self.total + 2 * BLOCK) % RECORD])
        if self._pos:
            yield bytes(self._view[: self._pos])
            self._pos = 0


_Opened = tuple[int, os.stat_result]


class _Changed(Exception):
    """A file changed under us; turned into an ImageError once the caller knows its path."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _size_changed(size: int) -> _Changed:
    return _Changed(f"file changed size while being archived (expected {size} bytes)")


def _read_rest(fd: int, content: bytes, size: int) -> bytes:
    """Finish a short read (rare: a regular file normally returns all of it at once)."""
    parts = [content]
    got = len(content)
    while got < size:
        more = os.read(fd, size + 1 - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    if got != size:
        raise _size_changed(size)
    return b"".join(parts)


def _entry_error(exc: OSError | _Changed, path: str) -> ImageError:
    if isinstance(exc, _Changed):
        return ImageError(
            f"{path}: {exc.detail}; store paths are immutable, so something is modifying the store"
        )
    return ImageError(f"cannot archive {path}: {exc.strerror or exc}")


def _image_error(exc: OSError) -> ImageError:
    where = exc.filename if exc.filename is not None else "store path"
    return _entry_error(exc, os.fsdecode(where))


def _decode(name: bytes) -> str:
    return name.decode(ENCODING, "surrogateescape")


_by_name = attrgetter("name")
_SPECIAL = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo"}


def _open_dir(
    parent: _Dir | None, path: bytes, name: bytes, depth: int, cut: int
) -> tuple[_Dir, os.stat_result]:
    """Open and list a directory (``name``: relative to the parent's fd, if it has one).

    While its entries are archived its fd stays open: they are opened relative to it, one path
    component for the kernel to resolve instead of the whole path.
    """
    dfd = None if parent is None else parent.fd
    fd = os.open(name if dfd is not None else path, DIR_FLAGS, dir_fd=dfd)
    keep = depth < MAX_OPEN_DIRS
    try:
        st = os.fstat(fd)
        with os.scandir(path) as it:  # by path, so entries carry their full path as bytes
            level = _Dir(fd if keep else None, path, sorted(it, key=_by_name), cut)
    except BaseException:
        os.close(fd)
        raise
    if not keep:
        os.close(fd)
    return level, st


def _dir_header(out: _Chunker, headers: Headers, name: bytes, st: os.stat_result) -> bytes:
    """The header of a directory the fast path could not take (b"" when it did)."""
    if out.add_dir(name, st.st_mode):
        return b""
    return headers.entry(_decode(name), st.st_mode & 0o7777, DIRTYPE, 0)


def _other_header(headers: Headers, path: bytes, name: bytes, st: os.stat_result) -> bytes:
    """The header of a symlink; anything else but a file or directory is an error."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        link = _decode(os.readlink(path))
        return headers.entry(_decode(name), mode & 0o7777, SYMTYPE, 0, link)
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):  # not what the directory listing said
        raise _Changed("changed type while being archived")
    kind = _SPECIAL.get(stat.S_IFMT(mode), "socket or other special file")
    raise ImageError(f"{os.fsdecode(path)}: is a {kind}; a Nix store layer cannot contain one")


def _file_chunks(out: _Chunker, headers: Headers, opened: _Opened, name: bytes) -> Iterator[bytes]:
    """A regular file the fast path did not take: a long name, or a chunk boundary inside."""
    fd, st = opened
    try:
        if not stat.S_ISREG(st.st_mode):  # not what the directory listing said
            raise _Changed("changed type while being archived")
        size = st.st_size  # hard links included: full content, every time
        yield from out.put(headers.entry(_decode(name), st.st_mode & 0o7777, REGTYPE, size))
        yield from out.put_file(fd, size)
    finally:
        os.close(fd)


def _tree_chunks(out: _Chunker, headers: Headers, root: bytes) -> Iterator[bytes]:
    """``root`` (a directory) and everything under it, pre-order with siblings sorted by name.

    That is exactly the order of sorting all paths by their tuple of components. An explicit
    stack instead of recursion: no recursion limit, no per-level generator overhead.
    """
    cut = 1 if headers.relative else 0
    stack: list[_Dir] = []
    entry: os.DirEntry[bytes] | None = None
    try:
        level, st = _open_dir(None, root, root, 0, cut)
        stack.append(level)
        yield from out.put(_dir_header(out, headers, root[cut:] + b"/", st))
        while stack:
            level = stack[-1]
            for entry in level.entries:
                if entry.is_file(follow_symlinks=False):
                    opened = out.add_file(level, entry)
                    if opened is not None:
                        yield from _file_chunks(out, headers, opened, entry.path[cut:])
                elif entry.is_dir(follow_symlinks=False):
                    path = entry.path
                    child, st = _open_dir(level, path, entry.name, len(stack), cut)
                    stack.append(child)
                    yield from out.put(_dir_header(out, headers, path[cut:] + b"/", st))
                    break
                else:
                    st = entry.stat(follow_symlinks=False)
                    yield from out.put(_other_header(headers, entry.path, entry.path[cut:], st))
            else:
                stack.pop()
                if level.fd is not None:
                    os.close(level.fd)
            entry = None
    except (OSError, _Changed) as exc:
        where = root if entry is None else entry.path
        raise _entry_error(exc, os.fsdecode(where)) from exc
    finally:
        for level in stack:
            if level.fd is not None:
                os.close(level.fd)


def _root_chunks(out: _Chunker, headers: Headers, root: str) -> Iterator[bytes]:
    path = os.fsencode(root)
    name = path[1:] if headers.relative else path
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        yield from _tree_chunks(out, headers, path)
        return
    try:
        if stat.S_ISREG(st.st_mode):
            fd = os.open(path, FILE_FLAGS)
            try:
                opened = fd, os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            yield from _file_chunks(out, headers, opened, name)
        else:
            yield from out.put(_other_header(headers, path, name, st))
    except _Changed as exc:
        raise _entry_error(exc, root) from exc


def _check_store_paths(paths: Sequence[str], store_dir: str) -> None:
    normalised = store_dir.startswith("/") and os.path.normpath(store_dir) == store_dir
    if not normalised or not store_dir.strip("/") or store_dir.startswith("//"):
        raise UsageError(f"store dir must be a normalised absolute path, not '/': {store_dir!r}")
    if isinstance(paths, str):
        raise UsageError("store paths must be a sequence of paths, not one string")
    seen: set[str] = set()
    for path in paths:
        base = os.path.basename(path)
        if os.path.dirname(path) != store_dir or base in ("", ".", ".."):
            raise UsageError(f"not a path directly inside the store dir {store_dir}: {path!r}")
        if path in seen:
            raise UsageError(f"store path listed twice in one layer: {path}")
        seen.add(path)


def _store_dir_headers(store_dir: str, headers: Headers) -> bytes:
    """Entries for the store dir's components (``/nix``, ``/nix/store``), dirs 0755."""
    parts = []
    prefix = ""
    for component in store_dir.strip("/").split("/"):
        prefix += "/" + component
        parts.append(headers.entry(headers.name(prefix) + "/", 0o755, DIRTYPE, 0))
    return b"".join(parts)


def store_tar_chunks(
    paths: Sequence[str],
    *,
    store_dir: str = "/nix/store",
    options: TarOptions = TarOptions(),
    chunk_size: int = 1 << 20,
) -> Iterator[bytes]:
    """The tar of ``paths`` (store paths, in this order) as chunks of ``chunk_size`` bytes.

    Arguments are checked now; the file system is read lazily as the chunks are consumed.
    """
    _check_store_paths(paths, store_dir)
    if chunk_size < 1:
        raise UsageError(f"chunk size must be positive, got {chunk_size}")
    return _store_chunks(list(paths), store_dir, Headers(options), chunk_size)


def _store_chunks(
    paths: list[str], store_dir: str, headers: Headers, chunk_size: int
) -> Iterator[bytes]:
    out = _Chunker(chunk_size, headers)
    try:
        yield from out.put(_store_dir_headers(store_dir, headers))
        for root in paths:
            yield from _root_chunks(out, headers, root)
    except OSError as exc:
        raise _image_error(exc) from exc
    yield from out.finish()


_USTAR_SIZE_MAX = 0o77777777777  # eleven octal digits; larger files need a PAX size record


def _walk(root: str) -> Iterator[tuple[bytes, os.stat_result]]:
    """``root`` and everything under it, in no particular order (sizes add up in any order)."""
    path = os.fsencode(root)
    st = os.lstat(path)
    yield path, st
    pending = [path] if stat.S_ISDIR(st.st_mode) else []
    while pending:
        with os.scandir(pending.pop()) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                yield entry.path, st
                if stat.S_ISDIR(st.st_mode):
                    pending.append(entry.path)


def _entry_size(headers: Headers, path: bytes, st: os.stat_result) -> int:
    """How many bytes one entry takes in :func:`store_tar_chunks`' stream."""
    mode = st.st_mode
    name = path[1:] if headers.relative else path
    if stat.S_ISREG(mode):
        size = st.st_size
        if headers.plain and plain_name(name) and size <= _USTAR_SIZE_MAX:
            header = BLOCK  # no PAX record: one ustar block, without building it
        else:
            header = len(headers.entry(_decode(name), mode & 0o7777, REGTYPE, size))
        return header + size + -size % BLOCK
    if stat.S_ISDIR(mode):
        if headers.plain and plain_name(name + b"/"):
            return BLOCK
        return len(headers.entry(_decode(name) + "/", mode & 0o7777, DIRTYPE, 0))
    return len(_other_header(headers, path, name, st))


def store_tar_size(
    paths: Sequence[str], *, store_dir: str = "/nix/store", options: TarOptions = TarOptions()
) -> int:
    """The exact length of :func:`store_tar_chunks`' stream, from lstat/readlink only."""
    _check_store_paths(paths, store_dir)
    headers = Headers(options)
    total = len(_store_dir_headers(store_dir, headers))
    try:
        for root in paths:
            total += sum(_entry_size(headers, path, st) for path, st in _walk(root))
    except OSError as exc:
        raise _image_error(exc) from exc
    total += 2 * BLOCK
    return total + -total % RECORD


def entries_tar_chunks(
    entries: Sequence[TarEntry], *, options: TarOptions = TarOptions()
) -> Iterator[bytes]:
    """The tar of synthetic entries, sorted by path component (parents before children).

    Sorting makes the bytes depend only on the set of entries, not on the caller's order.
    """
    ordered = sorted(entries, key=lambda entry: entry.name.split("/"))
    for before, after in itertools.pairwise(ordered):
        if before.name == after.name:
            raise UsageError(f"tar entry listed twice: {after.name}")
    return _entries_chunks(ordered, Headers(options))


def _entries_chunks(entries: list[TarEntry], headers: Headers) -> Iterator[bytes]:
    out = _Chunker(1 << 20, headers)
    for entry in entries:
        name = headers.name(entry.name)
        if entry.kind == "dir":
            yield from out.put(headers.entry(name + "/", entry.mode, DIRTYPE, 0))
        elif entry.kind == "symlink":
            yield from out.put(headers.entry(name, 0o777, SYMTYPE, 0, entry.target))
        else:
            size = len(entry.data)
            yield from out.put(headers.entry(name, entry.mode, REGTYPE, size))
            yield from out.put(entry.data + ZEROS[: -size % BLOCK])
    yield from out.finish()
