"""A ``docker load`` / ``podman load`` archive, streamed to any writable (stdout is not seekable).

The archive is the classic ``docker save`` shape: one tar holding each layer as an
*uncompressed* tar member, the config as ``<config-hex>.json``, ``manifest.json``
(``[{"Config", "RepoTags", "Layers"}]``) and the legacy ``repositories`` map.

Member names: a tar header precedes its data, so a layer's name is fixed before its digest is
known. ``docker save`` and skopeo name layers by digest because they already know it; we cannot
without a second pass, so layers are ``layer-0001.tar``, ``layer-0002.tar``... in manifest order:
deterministic, and both loaders read names only through ``manifest.json``. Every header is fixed
(mtime 0, uid/gid 0, no user names, mode 0644), so the same image gives the same archive bytes.
``repositories`` maps each tag to the top layer's diff_id: loaders read it only when
``manifest.json`` is missing, so it is informational.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ociforge.digest import Digest, HashingCounter
from ociforge.errors import ImageError, UsageError
from ociforge.image.documents import canonical_bytes, config_diff_ids
from ociforge.spec import TAG_RE

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar's traditional record size: readers expect the archive padded to it
# Compressed layers would make the returned digest a blob digest instead of the diff_id.
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd")
# A layer's size is measured before it streams; a different length means the files moved.
_CHANGED = "the store changed between measuring and writing this layer (is something modifying it?)"

# The docker reference grammar (distribution/reference): lower-case path components, an optional
# registry host[:port] first, a tag of at most 128 word characters, dots and dashes.
_HOST = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN_RE = re.compile(rf"{_HOST}(?:\.{_HOST})*(?::[0-9]+)?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


def check_repo_tag(ref: str) -> str:
    """Validate a ``RepoTags`` entry: ``[host[:port]/]name:tag``, name lower-case."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not name:
        raise UsageError(f"image name {ref!r} needs a tag: use {ref}:latest")
    first, slash, rest = name.partition("/")
    has_domain = bool(slash) and ("." in first or ":" in first or first == "localhost")
    path = rest if has_domain else name
    if has_domain and not _DOMAIN_RE.fullmatch(first):
        raise UsageError(f"invalid registry host {first!r} in image name {ref!r}")
    if not _PATH_RE.fullmatch(path) or len(name) > 255:
        hint = " (repository names must be lower-case)" if path.lower() != path else ""
        raise UsageError(f"invalid repository name {name!r} in {ref!r}{hint}")
    if not TAG_RE.fullmatch(tag):
        raise UsageError(f"invalid tag {tag!r} in {ref!r}: use letters, digits, _ . - (max 128)")
    return ref


class Writable(Protocol):
    """Anything with ``write(bytes)``: a file, ``sys.stdout.buffer``, a pipe. Never seeked."""

    def write(self, data: bytes, /) -> object: ...


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    # PAX: a layer over 8 GiB gets a size record instead of overflowing the ustar field.
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


class DockerArchiveWriter:
    """Writes layers as they stream, then config, ``manifest.json`` and the tar end.

    After an error the archive is incomplete and every further call raises: discard the output.
    The file object is neither flushed nor closed here.
    """

    def __init__(self, fileobj: Writable, name: str = "the docker archive") -> None:
        self._out = fileobj
        self._name = name  # for errors: the file the user named, or "stdout"
        self._written = 0
        self._layers: list[tuple[str, Digest]] = []
        self._broken = False
        self._finished = False

    def add_layer(
        self,
        chunks: Iterable[bytes],
        size: int,
        *,
        hashed: Callable[[], Digest] | None = None,
    ) -> Digest:
        """Write one uncompressed layer tar of exactly ``size`` bytes; returns its diff_id.

        ``hashed``: the stream hashes itself (a layer stream does): called once it is
        exhausted, it gives the diff_id, and this pass hashes nothing (sha256 is ~0.8 s of
        CPU per GB).
        """
        self._check_open()
        if size < 0:
            raise UsageError(f"layer size must not be negative: {size}")
        name = f"layer-{len(self._layers) + 1:04d}.tar"
        self._broken = True  # until the member is complete
        self._write(_header(name, size))
        counter = HashingCounter()
        written = 0
        head = b""
        for chunk in chunks:
            if len(head) < 4:
                head += chunk[: 4 - len(head)]
                if head.startswith(_COMPRESSED_MAGIC):
                    raise ImageError(f"{name}: docker archive layers must be uncompressed tar")
            written += len(chunk)
            if written > size:
                raise ImageError(f"{name}: {_CHANGED} (longer than the {size} bytes measured)")
            if hashed is None:
                counter.update(chunk)
            self._write(chunk)
        if written != size:
            raise ImageError(f"{name}: {_CHANGED} ({written} bytes, {size} measured)")
        digest = hashed() if hashed is not None else counter.digest
        self._pad()
        self._broken = False
        self._layers.append((name, digest))
        return digest

    def finish(self, config_bytes: bytes, repo_tags: Sequence[str]) -> None:
        """Write the config, ``manifest.json``, ``repositories`` and the end of the tar.

        The config's ``rootfs.diff_ids`` must list the layers written, in order: loaders refuse
        the archive otherwise, with a far less helpful message.
        """
        self._check_open()
        tags = [check_repo_tag(t) for t in repo_tags]
        self._check_diff_ids(config_bytes)
        config_name = f"{Digest.of(config_bytes).hex}.json"
        manifest = [
            {"Config": config_name, "RepoTags": tags, "Layers": [n for n, _ in self._layers]}
        ]
        self._broken = True
        self._add_file(config_name, config_bytes)
        self._add_file("manifest.json", canonical_bytes(manifest))
        self._add_file("repositories", canonical_bytes(self._repositories(tags)))
        self._write(b"\0" * (2 * _BLOCK))
        self._write(b"\0" * (-self._written % _RECORD))
        self._broken = False
        self._finished = True

    def _check_open(self) -> None:
        if self._broken:
            raise ImageError("the docker archive is incomplete after an earlier error")
        if self._finished:
            raise ImageError("the docker archive is already finished")

    def _check_diff_ids(self, config_bytes: bytes) -> None:
        diff_ids = [str(d) for d in config_diff_ids(config_bytes)]
        written = [str(d) for _, d in self._layers]
        if diff_ids != written:
            raise ImageError(
                f"image config lists {len(diff_ids)} diff_ids that do not match the "
                f"{len(written)} layers written to the docker archive"
            )

    def _repositories(self, tags: Sequence[str]) -> dict[str, dict[str, str]]:
        if not self._layers:
            return {}
        top = self._layers[-1][1].hex
        repos: dict[str, dict[str, str]] = {}
        for ref in tags:
            name, _, tag = ref.rpartition(":")
            repos.setdefault(name, {})[tag] = top
        return repos

    def _add_file(self, name: str, data: bytes) -> None:
        self._write(_header(name, len(data)))
        self._write(data)
        self._pad()

    def _pad(self) -> None:
        self._write(b"\0" * (-self._written % _BLOCK))

    def _write(self, data: bytes) -> None:
        if not data:
            return
        size = len(data)
        try:
            written = self._out.write(data)
            # An unbuffered (raw) file may take only part of the data: write the rest.
            while isinstance(written, int) and 0 < written < len(data):
                data = data[written:]
                written = self._out.write(data)
        except OSError as exc:
            self._broken = True
            raise ImageError(f"cannot write {self._name}: {exc.strerror or exc}") from exc
        self._written += size
