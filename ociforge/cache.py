"""Layer identity before any byte is read, and what is known about it from earlier pushes.

A layer's *key* is a digest over everything its bytes depend on: the ordered (store path,
narHash) list (or the synthetic entries), the tar and compression settings, the compression
libraries' versions and the key format version. ``narHash`` comes from ``nix path-info``, so
keys cost nothing to compute and an unchanged layer is recognised without opening a file.

Known keys map to :class:`KnownLayer` (diff_id, digest, size, media type) from two sources:
this module's local cache (one small JSON file per key under the XDG cache dir, written
atomically so concurrent ociforge processes are safe; unreadable or inconsistent entries are
ignored and logged, never trusted), and the registry itself: every layer ociforge pushes in OCI
format carries its key as the annotation :data:`KEY_ANNOTATION`, so the manifest previously
pushed to a tag tells a fresh CI runner which layers already exist (see ``pushing.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

import zstandard

from ociforge.digest import Digest
from ociforge.errors import OciforgeError
from ociforge.layer import EntriesLayer, LayerRecipe, StoreLayer
from ociforge.tarstream import TarOptions

log = logging.getLogger(__name__)

KEY_ANNOTATION = "dev.ociforge.layer.key"
# Bump when anything that shapes layer bytes changes in ociforge itself (tar format, headers).
KEY_FORMAT = 2  # 2: block-parallel gzip and multi-threaded zstd frames


@dataclass(frozen=True)
class KnownLayer:
    """What a manifest and config need about a layer, without producing it."""

    diff_id: Digest
    digest: Digest
    size: int
    media_type: str


def layer_key(recipe: LayerRecipe, nar_hashes: Mapping[str, str], media_type: str) -> str:
    """``sha256:<hex>`` over everything the layer's blob bytes depend on."""
    identity: dict[str, object] = {
        "format": KEY_FORMAT,
        "media_type": media_type,
        "compression": [recipe.compression.algorithm.value, recipe.compression.effective_level],
        # The same input compresses to other bytes under another zlib or libzstd release.
        "libraries": [zlib.ZLIB_RUNTIME_VERSION, zstandard.ZSTD_VERSION],
    }
    if isinstance(recipe, StoreLayer):
        identity["tar"] = _tar_fields(recipe.tar_options)
        identity["store_dir"] = recipe.store_dir
        identity["paths"] = [[p, nar_hashes[p]] for p in recipe.paths]
    elif isinstance(recipe, EntriesLayer):
        identity["tar"] = _tar_fields(recipe.tar_options)
        identity["entries"] = [
            [e.name, e.kind, e.mode, hashlib.sha256(e.data).hexdigest(), e.target]
            for e in recipe.entries
        ]
    else:
        raise OciforgeError(f"internal: no cache key for {type(recipe).__name__}")
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _tar_fields(options: TarOptions) -> dict[str, object]:
    # Not asdict: its deep copies were half of planning a 100-layer image (5 of 11 ms, on the
    # warm push's critical path); the fields are plain values.
    return {f.name: getattr(options, f.name) for f in fields(options)}


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$OCIFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/ociforge``, else ``~/.cache/ociforge``."""
    env = os.environ if env is None else env
    if env.get("OCIFORGE_CACHE_DIR"):
        return Path(env["OCIFORGE_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ociforge"


class LayerCache:
    """key -> :class:`KnownLayer`, one JSON file per key; missing or bad entries read as None."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory) / "layers-v1"

    def _path(self, key: str) -> Path:
        return self.directory / f"{key.removeprefix('sha256:')}.json"

    def get(self, key: str) -> KnownLayer | None:
        try:
            raw = self._path(key).read_text()
        except OSError:
            return None
        try:
            data = json.loads(raw)
            if data["key"] != key:
                raise ValueError("entry names another key")
            return KnownLayer(
                diff_id=Digest.parse(data["diff_id"]),
                digest=Digest.parse(data["digest"]),
                size=_positive_int(data["size"]),
                media_type=str(data["media_type"]),
            )
        except (ValueError, KeyError, TypeError, OciforgeError) as exc:
            log.warning("ignoring corrupt layer cache entry %s: %s", self._path(key), exc)
            return None

    def put(self, key: str, layer: KnownLayer) -> None:
        """Record ``layer`` atomically; a cache that cannot be written is only a warning."""
        entry = {
            "key": key,
            "diff_id": str(layer.diff_id),
            "digest": str(layer.digest),
            "size": layer.size,
            "media_type": layer.media_type,
        }
        _write_json(self._path(key), entry)

    def forget(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink()


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
