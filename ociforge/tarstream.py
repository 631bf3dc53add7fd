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

Nothing here calls nix or touches the network; every OSError becomes an ImageError naming the file.
"""

from __future__ import annotations

import itertools
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

from ociforge.errors import ImageError, UsageError

__all__ = ["TarEntry", "TarOptions", "entries_tar_chunks", "store_tar_chunks", "store_tar_size"]

_BLOCK = 512
_RECORD = 20 * _BLOCK
_ZEROS = bytes(_RECORD + 2 * _BLOCK)
_MAGIC = b"ustar\x0000"  # POSIX magic + version, what tarfile writes for PAX_FORMAT
_MAX_ID = 8**7  # largest+1 value of an 8-byte octal field
_MAX_SIZE = 8**11  # largest+1 value of a 12-byte octal field (8 GiB)
_REGTYPE, _SYMTYPE, _DIRTYPE = b"0", b"2", b"5"
_ENCODING = "utf-8"  # fixed, not the locale's: the bytes must not depend on the machine


@dataclass(frozen=True)
class TarOptions:
    """What every entry's metadata is forced to (nixpkgs' defaults)."""

    mtime: int = 1  # 1970-01-01T00:00:01Z like nixpkgs
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"
    relative_names: bool = False  # "nix/store/..." instead of "/nix/store/..."

    def __post_init__(self) -> None:
        for field in ("mtime", "uid", "gid"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"tar {field} must be an integer >= 0, got {value!r}")
        for field in ("uname", "gname"):
            _check_encodable(getattr(self, field), f"tar {field}")


@dataclass(frozen=True)
class TarEntry:
    """A synthetic entry (``/bin`` symlinks, ``/etc/passwd``, ``/tmp`` ...).

    ``mode`` is ignored for symlinks: they are written 0777, as Linux reports every symlink.
    """

    name: str  # absolute path in the image, e.g. "/bin"
    kind: Literal["dir", "file", "symlink"]
    mode: int = 0o755
    data: bytes = b""
    target: str = ""

    def __post_init__(self) -> None:
        name = self.name
        if not name.startswith("/") or name.startswith("//") or os.path.normpath(name) != name:
            raise UsageError(f"tar entry name must be a normalised absolute path: {name!r}")
        if name == "/":
            raise UsageError("tar entry name must not be '/' itself")
        _check_encodable(name, "tar entry name")
        if not isinstance(self.data, bytes):
            raise UsageError(f"{name}: tar entry data must be bytes")
        if self.kind not in ("dir", "file", "symlink"):
            raise UsageError(f"{name}: tar entry kind must be dir, file or symlink: {self.kind!r}")
        if not 0 <= self.mode <= 0o7777:
            raise UsageError(f"{name}: tar entry mode must be within 0..0o7777: {self.mode:o}")
        if self.data and self.kind != "file":
            raise UsageError(f"{name}: only a file entry can carry data")
        if (self.kind == "symlink") != bool(self.target):
            raise UsageError(f"{name}: a symlink entry needs a target, and only a symlink has one")
        _check_encodable(self.target, f"{name}: symlink target")


def _check_encodable(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise UsageError(f"{what} must be a string, got {text!r}")
    try:
        text.encode(_ENCODING, "surrogateescape")
    except UnicodeEncodeError:
        raise UsageError(f"{what} cannot be encoded as file name bytes: {text!r}") from None


def _field(text: str, length: int) -> tuple[bytes, bool]:
    """Return (ustar field content, whether a PAX record is needed), as tarfile decides it."""
    if text.isascii():
        raw = text.encode("ascii")
        return raw[:length], len(raw) > length
    # tarfile writes the ASCII-replaced, truncated text in the ustar field and the truth in PAX.
    return text.encode("ascii", "replace")[:length], True


def _pax_record(key: str, value: str) -> tuple[bytes, bool]:
    """One ``"<len> key=value\\n"`` record, and whether the value is not valid UTF-8."""
    try:
        raw, binary = value.encode("utf-8"), False
    except UnicodeEncodeError:  # surrogate-escaped bytes of a name that is not UTF-8
        raw, binary = value.encode(_ENCODING, "surrogateescape"), True
    body = b" %s=%s\n" % (key.encode("ascii"), raw)
    length = len(body)
    while len(body) + len(str(length)) != length:  # the length counts its own digits
        length = len(body) + len(str(length))
    return b"%d%s" % (length, body), binary


def _chksum_field(adler: int) -> bytes:
    # Every byte of our header blocks is ASCII (non-ASCII text is '?'-replaced in ustar fields,
    # as tarfile does), so a block's byte sum is at most 512 * 127 = 65024 < 65521: adler32's
    # low half is then exactly 1 + that sum, computed in C instead of a Python loop.
    return b"%06o\0 " % ((adler & 0xFFFF) - 1)


class _Headers:
    """Builds header blocks for one set of options; the constant parts are computed once."""

    def __init__(self, options: TarOptions) -> None:
        self.relative = options.relative_names
        uname, uname_pax = _field(options.uname, 32)
        gname, gname_pax = _field(options.gname, 32)
        # PAX keys in tarfile's order: path, linkpath, uname, gname, uid, gid, size, mtime.
        self._pax_ids: list[tuple[str, str]] = []
        if uname_pax:
            self._pax_ids.append(("uname", options.uname))
        if gname_pax:
            self._pax_ids.append(("gname", options.gname))
        ids = b""
        for key, value in (("uid", options.uid), ("gid", options.gid)):
            if value >= _MAX_ID:  # tarfile: 0 in the ustar field, the truth in PAX
                self._pax_ids.append((key, str(value)))
            ids += b"%07o\0" % (value if value < _MAX_ID else 0)
        self._ids = ids
        self._pax_mtime = [("mtime", str(options.mtime))] if options.mtime >= _MAX_SIZE else []
        self._mtime = b"%011o\0" % (options.mtime if options.mtime < _MAX_SIZE else 0)
        self._tail = _MAGIC + uname.ljust(32, b"\0") + gname.ljust(32, b"\0") + bytes(16 + 167)
        # adler32 state whose low half is 1 + the byte sum of the constant fields and the
        # checksum field read as eight spaces.
        self._adler = zlib.adler32(ids + self._mtime + b" " * 8 + self._tail)
        self._modes: dict[int, bytes] = {}
        # The PAX header block itself: tarfile leaves every field but name/size/type at zero.
        self._pax_head = b"././@PaxHeader".ljust(100, b"\0") + b"0000000\0" * 3
        self._pax_mtime_f = b"00000000000\0"
        self._pax_rest = (b"x" + bytes(100) + _MAGIC).ljust(_BLOCK - 156, b"\0")
        self._pax_adler = zlib.adler32(
            self._pax_head + self._pax_mtime_f + b" " * 8 + self._pax_rest
        )

    def name(self, path: str) -> str:
        return path[1:] if self.relative else path

    def entry(self, name: str, mode: int, typeflag: bytes, size: int, link: str = "") -> bytes:
        """The header block(s) of one entry: an optional PAX header, then the ustar block."""
        name_f, name_pax = _field(name, 100)
        link_f, link_pax = _field(link, 100) if link else (b"", False)
        size_f = b"%011o\0" % size if size < _MAX_SIZE else b"00000000000\0"
        mode_f = self._modes.get(mode)
        if mode_f is None:
            mode_f = self._modes[mode] = b"%07o\0" % mode
        name_f = name_f.ljust(100, b"\0")
        link_f = link_f.ljust(100, b"\0")
        adler = zlib.adler32(link_f, zlib.adler32(size_f, zlib.adler32(name_f, self._adler)))
        adler = zlib.adler32(typeflag, zlib.adler32(mode_f, adler))
        chksum = _chksum_field(adler)
        parts = (name_f, mode_f, self._ids, size_f, self._mtime, chksum, typeflag, link_f)
        ustar = b"".join(parts) + self._tail
        if not (name_pax or link_pax or self._pax_ids or self._pax_mtime or size >= _MAX_SIZE):
            return ustar
        pax = [("path", name)] if name_pax else []
        if link_pax:
            pax.append(("linkpath", link))
        pax += self._pax_ids
        if size >= _MAX_SIZE:
            pax.append(("size", str(size)))
        return self._pax_block(pax + self._pax_mtime) + ustar

    def _pax_block(self, items: list[tuple[str, str]]) -> bytes:
        records = [_pax_record(key, value) for key, value in items]
        data = b"".join(record for record, _ in records)
        if any(binary for _, binary in records):
            # Values that are not UTF-8 are stored as raw bytes, and flagged (tarfile does).
            data = b"21 hdrcharset=BINARY\n" + data
        size_f = b"%011o\0" % len(data)
        chksum = _chksum_field(zlib.adler32(size_f, self._pax_adler))
        head = (self._pax_head, size_f, self._pax_mtime_f, chksum, self._pax_rest)
        return b"".join(head) + data + _ZEROS[: -len(data) % _BLOCK]


class _Chunker:
    """Coalesces tar bytes into chunks of exactly ``size`` bytes (the last one shorter)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._spare = bytearray(1)  # catches a file that grew since lstat
        self._pos = 0
        self.total = 0

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

    def add_entry(self, header: bytes, path: str, size: int) -> bool:
        """Add a whole entry if it fits before the chunk boundary (the hot path: no generator).

        Returns False, having done nothing, when it does not fit: use put/put_file then.
        """
        pos = self._pos
        data = pos + len(header)
        end = data + size + -size % _BLOCK
        if end >= self._size:
            return False
        self._buf[pos:data] = header
        if size:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                got = 0
                while got < size:
                    n = os.readv(fd, [self._view[data + got : data + size], self._spare])
                    if n == 0 or got + n > size:
                        raise _changed_size(path, size)
                    got += n
            finally:
                os.close(fd)
            self._buf[data + size : end] = _ZEROS[: -size % _BLOCK]
        self._pos = end
        self.total += end - pos
        return True

    def put_file(self, path: str, size: int) -> Iterator[bytes]:
        """Copy exactly ``size`` bytes of ``path`` straight into the chunk buffer."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            remaining = size
            while remaining:
                pos = self._pos
                space = min(remaining, self._size - pos)
                target = self._view[pos : pos + space]
                # On the last piece a spare byte detects growth without an extra read call.
                n = os.readv(fd, [target, self._spare] if space == remaining else [target])
                if n == 0 or n > space:
                    raise _changed_size(path, size)
                self._pos = pos + n
                remaining -= n
                if self._pos == self._size:
                    yield bytes(self._buf)
                    self._pos = 0
        finally:
            os.close(fd)
        self.total += size
        yield from self.put(_ZEROS[: -size % _BLOCK])

    def finish(self) -> Iterator[bytes]:
        """Two zero blocks, then zeros up to a full record, as tarfile ends an archive."""
        yield from self.put(_ZEROS[: 2 * _BLOCK + -(self.total + 2 * _BLOCK) % _RECORD])
        if self._pos:
            yield bytes(self._view[: self._pos])
            self._pos = 0


def _changed_size(path: str, size: int) -> ImageError:
    return ImageError(
        f"{path}: file changed size while being archived (expected {size} bytes);"
        " store paths are immutable, so something is modifying the store"
    )


def _children(directory: str) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(directory) as it:
        entries = sorted(it, key=_by_name)
    # lstat lazily, right before the entry is written: the size we copy is the size we saw last.
    return ((entry.path, entry.stat(follow_symlinks=False)) for entry in entries)


_by_name = attrgetter("name")


def _walk(root: str) -> Iterator[tuple[str, os.stat_result]]:
    """``root`` and everything under it, pre-order with siblings sorted by name.

    That is exactly the order of sorting all paths by their tuple of components. An explicit stack
    instead of recursion: no recursion limit, no per-level generator overhead.
    """
    st = os.lstat(root)
    yield root, st
    if not stat.S_ISDIR(st.st_mode):
        return
    stack = [_children(root)]
    while stack:
        for path, st in stack[-1]:
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(_children(path))
                break
        else:
            stack.pop()


_SPECIAL = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo"}


def _store_items(
    paths: Sequence[str], store_dir: str, headers: _Headers
) -> Iterator[tuple[bytes, str, int]]:
    """(header blocks, file to copy or "", its size) for every entry of a store layer."""
    prefix = ""
    for component in store_dir.strip("/").split("/"):
        prefix += "/" + component
        yield headers.entry(headers.name(prefix) + "/", 0o755, _DIRTYPE, 0), "", 0
    for root in paths:
        for path, st in _walk(root):
            mode = st.st_mode
            name = headers.name(path)
            if stat.S_ISREG(mode):  # hard links included: full content, every time
                size = st.st_size
                yield headers.entry(name, mode & 0o7777, _REGTYPE, size), path, size
            elif stat.S_ISDIR(mode):
                yield headers.entry(name + "/", mode & 0o7777, _DIRTYPE, 0), "", 0
            elif stat.S_ISLNK(mode):
                link = os.readlink(path)
                yield headers.entry(name, mode & 0o7777, _SYMTYPE, 0, link), "", 0
            else:
                kind = _SPECIAL.get(stat.S_IFMT(mode), "socket or other special file")
                raise ImageError(f"{path}: is a {kind}; a Nix store layer cannot contain one")


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
    return _store_chunks(list(paths), store_dir, _Headers(options), chunk_size)


def _store_chunks(
    paths: list[str], store_dir: str, headers: _Headers, chunk_size: int
) -> Iterator[bytes]:
    out = _Chunker(chunk_size)
    try:
        for header, path, size in _store_items(paths, store_dir, headers):
            if out.add_entry(header, path, size):
                continue
            yield from out.put(header)
            if size:  # an empty file has nothing to read: no need to open it
                yield from out.put_file(path, size)
    except OSError as exc:
        raise _image_error(exc) from exc
    yield from out.finish()


def store_tar_size(
    paths: Sequence[str], *, store_dir: str = "/nix/store", options: TarOptions = TarOptions()
) -> int:
    """The exact length of :func:`store_tar_chunks`' stream, from lstat/readlink only."""
    _check_store_paths(paths, store_dir)
    total = 0
    try:
        for header, _, size in _store_items(paths, store_dir, _Headers(options)):
            total += len(header) + size + -size % _BLOCK
    except OSError as exc:
        raise _image_error(exc) from exc
    total += 2 * _BLOCK
    return total + -total % _RECORD


def _image_error(exc: OSError) -> ImageError:
    where = exc.filename if exc.filename is not None else "store path"
    return ImageError(f"cannot archive {where}: {exc.strerror or exc}")


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
    return _entries_chunks(ordered, _Headers(options))


def _entries_chunks(entries: list[TarEntry], headers: _Headers) -> Iterator[bytes]:
    out = _Chunker(1 << 20)
    for entry in entries:
        name = headers.name(entry.name)
        if entry.kind == "dir":
            yield from out.put(headers.entry(name + "/", entry.mode, _DIRTYPE, 0))
        elif entry.kind == "symlink":
            yield from out.put(headers.entry(name, 0o777, _SYMTYPE, 0, entry.target))
        else:
            size = len(entry.data)
            yield from out.put(headers.entry(name, entry.mode, _REGTYPE, size))
            yield from out.put(entry.data + _ZEROS[: -size % _BLOCK])
    yield from out.finish()
