"""An OCI image layout directory: ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``.

Blobs are streamed into a temporary file inside ``blobs/sha256/`` and renamed to their digest
once it is known, so a reader never sees a half-written blob under a digest name, and no layer is
buffered in memory. ``index.json`` is rewritten atomically (temp file + rename) while holding an
exclusive ``flock`` on the layout directory itself, so several builds writing tags into one
layout at once do not lose each other's tags (a lock on ``index.json`` would be lost with the
renamed inode; locking the directory needs no extra file in the layout).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from ociforge.digest import Digest, HashingCounter
from ociforge.errors import DigestMismatchError, ImageError, UsageError
from ociforge.image.documents import Platform, canonical_bytes
from ociforge.spec import INDEX_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"

# image-spec annotations.md: ref ::= component ("/" component)*, component ::= alphanum
# (separator alphanum)*, alphanum ::= [A-Za-z0-9]+, separator ::= [-._:@+] | "--".
_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
# distribution 2.8.2 refuses larger manifests; a bigger "manifest" is a broken layout.


def check_tag(tag: str) -> str:
    """Validate a layout tag (the ``ref.name`` annotation) against the image-spec grammar."""
    if len(tag) > 255 or not _REF_NAME_RE.fullmatch(tag):
        raise UsageError(
            f"invalid OCI layout tag {tag!r}: use letters, digits and . _ - (e.g. 'latest', "
            "'1.0'), starting and ending with a letter or digit"
        )
    return tag


def check_layout_directory(path: str) -> None:
    """Refuse, before anything is built, a directory an image layout cannot be written to.

    It must be an OCI layout, empty, or not exist yet (its nearest existing parent must then be
    a writable directory: it is created).
    """
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{path} exists and is not a directory: pick a new directory")
        if not os.path.exists(os.path.join(path, "oci-layout")) and os.listdir(path):
            raise UsageError(f"{path} is not empty and not an OCI layout: pick a new directory")
        existing = path
    else:
        existing = os.path.dirname(os.path.abspath(path))
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise UsageError(f"cannot create {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write an OCI layout in {path}: {existing} is not writable")


class OciLayout:
    """Writer and reader of one OCI image layout directory.

    ``OciLayout(path)`` creates the layout if needed (refusing a non-empty directory that is not
    one); ``OciLayout(path, create=False)`` only opens an existing layout.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = os.fspath(path)
        self._blobs = os.path.join(self.path, "blobs", "sha256")
        try:
            if create:
                self._create()
            else:
                self._check_layout()
        except OSError as exc:
            raise ImageError(f"cannot open OCI layout {self.path}: {exc.strerror}") from exc

    # -- setup ------------------------------------------------------------------------------

    def _create(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        with self._locked():
            marker = os.path.join(self.path, "oci-layout")
            if not os.path.exists(marker):
                if os.listdir(self.path):
                    raise UsageError(
                        f"{self.path} is not empty and not an OCI layout: pick a new directory"
                    )
                self._write_atomic(marker, canonical_bytes({"imageLayoutVersion": LAYOUT_VERSION}))
            self._check_layout()
            os.makedirs(self._blobs, exist_ok=True)
            if not os.path.exists(self._index_path):
                self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    def _check_layout(self) -> None:
        marker = os.path.join(self.path, "oci-layout")
        try:
            with open(marker, "rb") as f:
                version = json.load(f).get("imageLayoutVersion")
        except FileNotFoundError:
            raise UsageError(f"{self.path} is not an OCI layout (no oci-layout file)") from None
        except (ValueError, AttributeError):
            raise ImageError(f"{marker} is not valid JSON") from None
        if version != LAYOUT_VERSION:
            raise ImageError(f"{self.path}: unsupported imageLayoutVersion {version!r}")

    @property
    def _index_path(self) -> str:
        return os.path.join(self.path, "index.json")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    # -- writing blobs ----------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> str:
        return os.path.join(self._blobs, digest.hex)

    def has_blob(self, digest: Digest) -> bool:
        return os.path.isfile(self.blob_path(digest))

    def write_blob(self, data: bytes) -> tuple[Digest, int]:
        """Store an in-memory blob (config, manifest); a no-op when it is already there."""
        return self.write_blob_stream([data], expected=Digest.of(data))

    def write_blob_stream(
        self,
        chunks: Iterable[bytes],
        expected: Digest | None = None,
        *,
        hashed: Callable[[], tuple[Digest, int]] | None = None,
    ) -> tuple[Digest, int]:
        """Stream a blob to ``blobs/sha256/<digest>``, hashing and counting on the way.

        The whole stream is always consumed (the caller's layer digests are computed while it is
        read). With ``expected``, a different digest raises DigestMismatchError and stores
        nothing. ``hashed``: the stream hashes itself (a layer stream does); called once the
        stream is exhausted, it gives the digest and size, and this pass hashes nothing.
        """
        tmp = os.path.join(self._blobs, f".tmp-{secrets.token_hex(8)}")
        counter = HashingCounter()
        try:
            with self._open_new(tmp) as out:
                for chunk in chunks if hashed is not None else counter.tap(chunks):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())  # the rename must not publish a blob still in the cache
            digest, size = hashed() if hashed is not None else (counter.digest, counter.size)
            if expected is not None and digest != expected:
                raise DigestMismatchError(
                    "blob written to the OCI layout", str(expected), str(digest)
                )
            if self.has_blob(digest):
                os.unlink(tmp)
            else:
                os.replace(tmp, self.blob_path(digest))
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise ImageError(f"cannot write a blob in {self._blobs}: {exc.strerror}") from exc
            raise
        return digest, size

    def _open_new(self, path: str) -> IO[bytes]:
        # O_EXCL with 0o644 (minus umask): tempfile's 0o600 would make blobs unreadable to others.
        return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb")

    # -- index.json -------------------------------------------------------------------------

    def add_manifest(
        self,
        manifest: bytes,
        media_type: str,
        *,
        tag: str | None,
        platform: Platform | None = None,
    ) -> Digest:
        """Store ``manifest`` and point ``index.json`` at it, under ``tag`` if given.

        An entry already holding ``tag`` is replaced (the tag moves); other tags stay. Without a
        tag, the manifest is listed once, untagged. Fields of ``index.json`` written by other
        tools are kept as they are.
        """
        if tag is not None:
            check_tag(tag)
        digest, size = self.write_blob(manifest)
        entry: dict[str, Any] = {"mediaType": media_type, "digest": str(digest), "size": size}
        if tag is not None:
            entry["annotations"] = {REF_NAME: tag}
        if platform is not None:
            entry["platform"] = platform.document()
        try:
            with self._locked():
                index = self._read_index()
                kept = [m for m in index["manifests"] if not _same_slot(m, entry, tag)]
                index["manifests"] = [*kept, entry]
                self._write_index(index)
        except OSError as exc:
            raise ImageError(f"cannot update {self._index_path}: {exc.strerror}") from exc
        return digest

    def _write_index(self, index: dict[str, Any]) -> None:
        self._write_atomic(self._index_path, canonical_bytes(index))

    def _write_atomic(self, path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{secrets.token_hex(8)}"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _read_index(self) -> dict[str, Any]:
        try:
            with open(self._index_path, "rb") as f:
                index = json.load(f)
        except FileNotFoundError:
            raise UsageError(f"{self.path} is not an OCI layout (no index.json)") from None
        except ValueError:
            raise ImageError(f"{self._index_path} is not valid JSON") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ImageError(f"{self._index_path} has no manifests list")
        return index

    # -- reading ----------------------------------------------------------------------------

    def tags(self) -> list[str]:
        """Every tag of ``index.json``, in its order."""
        return [t for m in self._read_index()["manifests"] if (t := _ref_name(m)) is not None]

    def resolve(self, tag: str | None) -> tuple[bytes, str]:
        """The manifest bytes and media type that ``tag`` names (checked against its digest).

        Without a tag, the layout must hold exactly one manifest.
        """
        entry = self._find_entry(tag)
        try:
            digest = Digest.parse(str(entry.get("digest")))
        except UsageError:
            raise ImageError(f"{self._index_path}: bad digest {entry.get('digest')!r}") from None
        size = self.blob_size(digest)
        if size != entry.get("size") or size > MAX_MANIFEST_BYTES:
            raise ImageError(
                f"manifest {digest} in {self.path} has {size} bytes, index.json says "
                f"{entry.get('size')!r} (at most {MAX_MANIFEST_BYTES} allowed)"
            )
        data = self.read_blob(digest)
        media_type = entry.get("mediaType") or _media_type_inside(data)
        if media_type in INDEX_TYPES:
            raise ImageError(
                f"{self.path}:{tag or ''} is a multi-platform image index: not supported here"
            )
        return data, str(media_type)

    def _find_entry(self, tag: str | None) -> dict[str, Any]:
        manifests: list[dict[str, Any]] = self._read_index()["manifests"]
        tags = ", ".join(t for m in manifests if (t := _ref_name(m)) is not None) or "none"
        if tag is None:
            if len(manifests) == 1:
                return manifests[0]
            if not manifests:
                raise UsageError(f"OCI layout {self.path} holds no image")
            raise UsageError(
                f"OCI layout {self.path} holds {len(manifests)} images: pick one with "
                f"oci:{self.path}:TAG (tags: {tags})"
            )
        check_tag(tag)
        found = [m for m in manifests if _ref_name(m) == tag]
        if len(found) != 1:
            problem = "has no" if not found else "has more than one image with"
            raise UsageError(f"OCI layout {self.path} {problem} tag {tag!r} (tags: {tags})")
        return found[0]

    def read_blob(self, digest: Digest) -> bytes:
        """A whole (small) blob, checked against its digest."""
        with self.open_blob(digest) as f:
            data = f.read()
        if Digest.of(data) != digest:
            raise DigestMismatchError(f"blob in {self.path}", str(digest), str(Digest.of(data)))
        return data

    def open_blob(self, digest: Digest) -> IO[bytes]:
        """The blob's file, opened for reading in binary mode; the caller closes it."""
        try:
            return open(self.blob_path(digest), "rb")
        except OSError as exc:
            raise _missing(self.path, digest, exc) from exc

    def blob_size(self, digest: Digest) -> int:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except OSError as exc:
            raise _missing(self.path, digest, exc) from exc


def _missing(path: str, digest: Digest, exc: OSError) -> ImageError:
    if exc.errno == errno.ENOENT:
        return ImageError(f"blob {digest} is missing from OCI layout {path}")
    return ImageError(f"cannot read blob {digest} of OCI layout {path}: {exc.strerror}")


def _ref_name(entry: Any) -> str | None:
    annotations = entry.get("annotations") if isinstance(entry, dict) else None
    name = annotations.get(REF_NAME) if isinstance(annotations, dict) else None
    return name if isinstance(name, str) else None


def _same_slot(existing: Any, new: dict[str, Any], tag: str | None) -> bool:
    """Whether ``existing`` is replaced by ``new``: same tag, or both untagged and same digest."""
    if tag is not None:
        return _ref_name(existing) == tag
    return _ref_name(existing) is None and existing.get("digest") == new["digest"]


def _media_type_inside(data: bytes) -> str:
    try:
        media_type = json.loads(data).get("mediaType")
    except (ValueError, AttributeError):
        raise ImageError("manifest in OCI layout is not a JSON object") from None
    if not isinstance(media_type, str):
        raise ImageError("manifest in OCI layout has no mediaType and index.json names none")
    return media_type
