"""The local layer cache: layer key -> :class:`LayerDigests` (diff_id, blob digest, size).

A layer's key (``assemble.layer.layer_key``) is known before any file is read, so a cached
entry saves streaming an unchanged layer. One small JSON file per key under the XDG cache dir,
written atomically so concurrent ociforge processes are safe; unreadable or inconsistent entries
are ignored and logged, never trusted. The registry is the other source of such knowledge (see
``publish/reuse.py``).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ociforge.assemble.layer import LayerDigests
from ociforge.digest import Digest
from ociforge.errors import OciforgeError
from ociforge.trust import entry_mac

log = logging.getLogger(__name__)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$OCIFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/ociforge``, else ``~/.cache/ociforge``."""
    env = os.environ if env is None else env
    if env.get("OCIFORGE_CACHE_DIR"):
        return Path(env["OCIFORGE_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ociforge"


class LayerCache:
    """key -> :class:`LayerDigests`, one JSON file per key; missing or bad entries read as None.

    Every entry carries an HMAC under ``secret`` (``TrustKeys.cache_key``): an entry this user
    did not write with the same key (another pipeline's, in a shared CI cache; a disk error) is
    ignored, never acted on. Without a secret the cache is off.
    """

    def __init__(self, directory: str | Path, secret: bytes) -> None:
        self.directory = Path(directory) / "layers-v2"
        self._secret = secret

    def _path(self, key: str) -> Path:
        return self.directory / f"{key.removeprefix('sha256:')}.json"

    def get(self, key: str) -> LayerDigests | None:
        if not self._secret:
            return None
        raw = _read_small(self._path(key))
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            if data["key"] != key:
                raise ValueError("entry names another key")
            if not hmac.compare_digest(str(data["mac"]), entry_mac(self._secret, data)):
                raise ValueError("entry not written with this machine's or signing key's secret")
            return LayerDigests(
                diff_id=Digest.parse(data["diff_id"]),
                digest=Digest.parse(data["digest"]),
                size=_positive_int(data["size"]),
            )
        except (ValueError, KeyError, TypeError, OciforgeError) as exc:
            log.warning("ignoring corrupt layer cache entry %s: %s", self._path(key), exc)
            return None

    def put(self, key: str, layer: LayerDigests) -> None:
        """Record ``layer`` atomically; a cache that cannot be written is only a warning."""
        if not self._secret:
            return
        entry: dict[str, object] = {
            "key": key,
            "diff_id": str(layer.diff_id),
            "digest": str(layer.digest),
            "size": layer.size,
        }
        entry["mac"] = entry_mac(self._secret, entry)
        _write_json(self._path(key), entry)

    def forget(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink()


_MAX_ENTRY = 4096  # an entry is a few hundred bytes


def _read_small(path: Path) -> bytes | None:
    """An entry's bytes, or None: the cache directory may be shared, so a FIFO, a link or a
    huge file there is not read (no blocking, no following, at most _MAX_ENTRY bytes)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _MAX_ENTRY + 1)[: _MAX_ENTRY + 1] or None
    except OSError:
        return None
    finally:
        os.close(fd)


def _write_json(path: Path, entry: Mapping[str, object]) -> None:
    """Atomically (concurrent processes read whole entries or none); failure only warns."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the layer cache in %s: %s", path.parent, exc.strerror)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _positive_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"size {value!r} is not a byte count")
    return value
