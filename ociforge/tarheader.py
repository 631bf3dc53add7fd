"""Tar headers as nixpkgs' ``tarfile`` writes them (``PAX_FORMAT``), built by hand for speed.

The options and entries of a tar stream, and :class:`Headers`, which makes every header block:
ustar fields cached per mode and size for the common entry (the fast path of ``tarstream``),
PAX extended headers exactly as tarfile writes them for names that do not fit. See
``tarstream`` for the determinism checklist.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Literal

from ociforge.errors import UsageError

BLOCK = 512
RECORD = 20 * BLOCK
ZEROS = bytes(RECORD + 2 * BLOCK)
_MAGIC = b"ustar\x0000"  # POSIX magic + version, what tarfile writes for PAX_FORMAT
_MAX_ID = 8**7  # largest+1 value of an 8-byte octal field
_MAX_SIZE = 8**11  # largest+1 value of a 12-byte octal field (8 GiB)
REGTYPE, SYMTYPE, DIRTYPE = b"0", b"2", b"5"
ENCODING = "utf-8"  # fixed, not the locale's: the bytes must not depend on the machine
# The fast path packs a plain ustar block and the file's content, zero-padded to whole blocks,
# with one pack_into: name, mode+uid+gid, size+mtime, the checksum's two halves in octal, then
# "\0 " + typeflag..end of the block (constant for a type and options), then the content.
_USTAR_FORMAT = "100s24s24s3s3s358s%ds"
OCTAL3 = tuple(b"%03o" % n for n in range(0o1000))
_PACK_MAX = 1 << 16  # larger files are copied straight into the chunk buffer instead
_SIZE_CACHE_MAX = 1 << 14  # sizes whose fields are cached (bounded memory)
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = FILE_FLAGS | os.O_DIRECTORY
MAX_OPEN_DIRS = 64  # deeper directories' entries are opened by full path: bounded open fds
Fields = tuple[bytes, bytes, int]  # mode+uid+gid, "\0 " + typeflag..end, adler32 state
Sized = tuple[bytes, int, struct.Struct]  # size+mtime, its byte sum - 1, packer


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
        if not isinstance(self.relative_names, bool):  # it is part of every layer key
            raise UsageError(f"tar relative_names must be a bool, got {self.relative_names!r}")


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
        text.encode(ENCODING, "surrogateescape")
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
        raw, binary = value.encode(ENCODING, "surrogateescape"), True
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


class Headers:
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
        self._pax_rest = (b"x" + bytes(100) + _MAGIC).ljust(BLOCK - 156, b"\0")
        self._pax_adler = zlib.adler32(
            self._pax_head + self._pax_mtime_f + b" " * 8 + self._pax_rest
        )
        self._init_fast()

    def _init_fast(self) -> None:
        """Caches of the fast path (see :meth:`fast_fields`): a few entries each, bounded."""
        self.plain = not (self._pax_ids or self._pax_mtime)  # else every entry needs PAX
        self.file_fields: dict[int, Fields] = {}  # by st_mode
        self.dir_fields: dict[int, Fields] = {}
        self.sizes: dict[int, Sized] = {}  # by size, below _SIZE_CACHE_MAX

    def name(self, path: str) -> str:
        return path[1:] if self.relative else path

    def fast_fields(self, st_mode: int, typeflag: bytes) -> Fields | None:
        """The fields of a plain header for this st_mode that do not depend on name and size,
        if it is of ``typeflag``'s type and no PAX record is needed; else None.

        The adler32 state covers those fields and the constant ones, the checksum read as
        spaces: its low half is 1 + their byte sum; the name's and size's sums remain to add.
        """
        if typeflag == REGTYPE:
            matches, cache = stat.S_ISREG(st_mode), self.file_fields
        else:
            matches, cache = stat.S_ISDIR(st_mode), self.dir_fields
        if not (matches and self.plain):
            return None
        mode_ids = b"%07o\0" % (st_mode & 0o7777) + self._ids
        type_tail = b"\0 " + typeflag + bytes(100) + self._tail
        adler = zlib.adler32(mode_ids + b" " * 8 + type_tail[2:])
        fields = cache[st_mode] = mode_ids, type_tail, adler
        return fields

    def size_fields(self, size: int) -> Sized | None:
        """Size and mtime fields, their byte sum minus 1 (the start of the adler32 that sums
        the rest) and the packer of a header with this much content; None for content the fast
        path does not pack."""
        padded = size + -size % BLOCK
        if padded > _PACK_MAX:
            return None
        size_mtime = b"%011o\0" % size + self._mtime
        sized = size_mtime, (zlib.adler32(size_mtime) & 0xFFFF) - 2, _packer(padded)
        if size < _SIZE_CACHE_MAX:
            self.sizes[size] = sized
        return sized

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
        return b"".join(head) + data + ZEROS[: -len(data) % BLOCK]


_PACKERS = [struct.Struct(_USTAR_FORMAT % (n * BLOCK)) for n in range(_PACK_MAX // BLOCK + 1)]


def _packer(padded: int) -> struct.Struct:
    return _PACKERS[padded // BLOCK]


def plain_name(name: bytes) -> bool:
    """Whether ``name`` fits the ustar name field as it is (else a PAX record holds it)."""
    return len(name) <= 100 and name.isascii()
