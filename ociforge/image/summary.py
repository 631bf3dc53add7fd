"""Manifests and configs as plain JSON, without pydantic: the few fields a warm push reads, and
the exact bytes ociforge writes.

A push that finds its layers in the tag's previous manifest (a fresh CI runner) needs only the
layers' digests, sizes, media types and annotations, the config's digest and its ``diff_ids``.
Importing pydantic and building the models for that cost about 0.2 s, a third of such a push
(measured with ``benchmarks --sets warm``), so these readers take the fields straight from the
JSON. They check what they take as strictly as :mod:`ociforge.image.models` does and raise
:class:`ImageError` for anything else.

The same goes for writing: a push of a new commit serialises a config and a manifest, and
loading the models for that was a third of it. :func:`canonical_bytes` of the documents built
here is what the models gave: tests pin the bytes of an empty and a full image, and hold the
documents to the models in their strict mode (unknown fields refused: a typo here fails there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.spec import IMAGE_MANIFEST_TYPES


@dataclass(frozen=True)
class BlobDescriptor:
    """A manifest's pointer to a blob (a layer or the config)."""

    digest: Digest
    size: int
    media_type: str
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class ManifestSummary:
    """An image manifest's config and layers (its own annotations are not read)."""

    config: BlobDescriptor
    layers: tuple[BlobDescriptor, ...]


def summarise_manifest(data: bytes) -> ManifestSummary:
    """The layers and annotations of an image manifest (OCI or Docker schema2)."""
    obj = json_object(data, "manifest")
    media_type, version = obj.get("mediaType"), obj.get("schemaVersion")
    if (
        type(version) is not int
        or version != 2
        or "manifests" in obj  # an index, whatever its mediaType says
        or (media_type is not None and media_type not in IMAGE_MANIFEST_TYPES)
    ):
        raise ImageError(f"not a schema 2 image manifest (mediaType {media_type!r})")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise ImageError("manifest has no layers list")
    return ManifestSummary(
        config=_descriptor(obj.get("config"), "config"),
        layers=tuple(_descriptor(d, f"layers.{i}") for i, d in enumerate(layers)),
    )


def config_diff_ids(data: bytes) -> tuple[Digest, ...]:
    """The ``rootfs.diff_ids`` of an image config, in order."""
    rootfs = json_object(data, "image config").get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise ImageError("image config has no rootfs of type layers")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise ImageError("image config has no rootfs.diff_ids list")
    return tuple(_digest(d, f"rootfs.diff_ids.{i}") for i, d in enumerate(diff_ids))


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object; ImageError naming ``what`` otherwise."""
    try:
        obj = json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise ImageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def _descriptor(obj: object, where: str) -> BlobDescriptor:
    if not isinstance(obj, dict):
        raise ImageError(f"manifest {where} is not a descriptor")
    size, media_type = obj.get("size"), obj.get("mediaType")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageError(f"manifest {where}.size is not a size: {size!r}")
    if not isinstance(media_type, str):
        raise ImageError(f"manifest {where} has no mediaType")
    return BlobDescriptor(
        digest=_digest(obj.get("digest"), f"{where}.digest"),
        size=size,
        media_type=media_type,
        annotations=_annotations(obj.get("annotations"), f"{where}.annotations"),
    )


def _digest(value: object, where: str) -> Digest:
    if not isinstance(value, str):
        raise ImageError(f"{where} is not a digest: {value!r}")
    try:
        return Digest.parse(value)
    except UsageError:
        raise ImageError(f"{where} is not a sha256 digest: {value!r}") from None


def _annotations(value: object, where: str) -> Mapping[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ImageError(f"manifest {where} is not a map of strings")
    return value


def canonical_bytes(document: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """The exact bytes to hash, write and send: sorted keys, compact, UTF-8, no newline."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise UsageError(f"text is not valid Unicode (undecodable {bad!r})") from None


def descriptor_document(blob: BlobDescriptor) -> dict[str, Any]:
    """The JSON of a descriptor (no ``annotations`` key when there are none)."""
    document: dict[str, Any] = {
        "mediaType": blob.media_type,
        "digest": str(blob.digest),
        "size": blob.size,
    }
    if blob.annotations:
        document["annotations"] = dict(blob.annotations)
    return document


def manifest_document(
    media_type: str,
    config: BlobDescriptor,
    layers: Sequence[BlobDescriptor],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """The JSON of an image manifest (OCI, or Docker schema2 without ``annotations``)."""
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor_document(config),
        "layers": [descriptor_document(layer) for layer in layers],
    }
    if annotations:
        document["annotations"] = dict(annotations)
    return document
