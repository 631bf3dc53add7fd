"""The one codec of the JSON documents ociforge reads and writes: descriptors, image manifests,
image indexes and the fields of image configs it reads.

One :class:`Descriptor` type stands for "a blob" everywhere (a layer, a config, a manifest in an
index). Readers are strict and bounded by the caller (``spec.MAX_MANIFEST_BYTES``): anything a
registry, a layout or a file says is checked field by field and refused with an
:class:`ImageError` naming the field, never coerced. Writers build plain JSON, serialised once by
:func:`canonical_bytes`: those exact bytes are hashed, written and sent. Plain dataclasses, not
pydantic: importing and building models cost a third of a warm push (0.2 s).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.spec import IMAGE_MANIFEST_TYPES, INDEX_TYPES


@dataclass(frozen=True)
class Platform:
    """Where an image runs (OCI image-spec ``platform``)."""

    architecture: str
    os: str
    variant: str | None = None

    def document(self) -> dict[str, Any]:
        doc = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            doc["variant"] = self.variant
        return doc


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: media type, digest, size, and optional annotations and platform."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    artifact_type: str | None = None  # set on the entries of a referrers index

    @classmethod
    def of(cls, data: bytes, media_type: str) -> Descriptor:
        """The descriptor of a blob held in memory (a config, a manifest)."""
        return cls(media_type, Digest.of(data), len(data))

    def document(self) -> dict[str, Any]:
        """The JSON of the descriptor (no ``annotations``/``platform`` key when absent)."""
        doc: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.platform is not None:
            doc["platform"] = self.platform.document()
        if self.artifact_type is not None:
            doc["artifactType"] = self.artifact_type
        return doc


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI, or Docker schema2: the same shape without annotations)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)
    # OCI 1.1 artifacts (an SBOM): what it is, and the image manifest it is about.
    artifact_type: str | None = None
    subject: Descriptor | None = None

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.document(),
            "layers": [layer.document() for layer in self.layers],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.artifact_type is not None:
            doc["artifactType"] = self.artifact_type
        if self.subject is not None:
            doc["subject"] = self.subject.document()
        return doc

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.document())


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "manifests": [m.document() for m in self.manifests],
        }
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        return doc

    def to_bytes(self) -> bytes:
        return canonical_bytes(self.document())


def parse_manifest(data: bytes) -> Manifest:
    """An image manifest written by anyone (OCI or Docker schema2); ImageError otherwise."""
    obj = _schema2(data, "manifest")
    media_type = obj.get("mediaType")
    if media_type in INDEX_TYPES or "manifests" in obj:  # an index, whatever its mediaType says
        raise ImageError(
            "expected an image manifest, got an image index (multi-platform images are not "
            "supported here: pick one platform's manifest)"
        )
    if media_type is not None and media_type not in IMAGE_MANIFEST_TYPES:
        raise ImageError(f"not a schema 2 image manifest (mediaType {media_type!r})")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise ImageError("manifest has no layers list")
    return Manifest(
        media_type=media_type or _media_type_of_config(obj),
        config=_descriptor(obj.get("config"), "config"),
        layers=tuple(_descriptor(d, f"layers.{i}") for i, d in enumerate(layers)),
        annotations=_annotations(obj.get("annotations"), "annotations"),
        artifact_type=_optional_str(obj.get("artifactType"), "artifactType"),
        subject=None if obj.get("subject") is None else _descriptor(obj["subject"], "subject"),
    )


def parse_index(data: bytes) -> Index:
    """An image index or manifest list written by anyone; ImageError otherwise."""
    obj = _schema2(data, "index")
    media_type = obj.get("mediaType")
    if media_type is not None and media_type not in INDEX_TYPES:
        raise ImageError(f"not an image index: mediaType {media_type!r}")
    manifests = obj.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError("index has no manifests list")
    return Index(
        media_type=media_type or "application/vnd.oci.image.index.v1+json",
        manifests=tuple(_descriptor(d, f"manifests.{i}") for i, d in enumerate(manifests)),
        annotations=_annotations(obj.get("annotations"), "annotations"),
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


def config_platform(data: bytes) -> Platform:
    """The platform an image config declares (``architecture``, ``os``, ``variant``)."""
    obj = json_object(data, "image config")
    return _platform(
        {k: obj.get(k) for k in ("architecture", "os", "variant")}, "config"
    ) or Platform("", "")


@dataclass(frozen=True)
class ConfigSummary:
    """What an image config says for people (``ociforge inspect``): where the image runs, when
    it was made, and one history comment per layer ("" where the history has none)."""

    platform: Platform | None
    created: str | None
    layer_comments: tuple[str, ...]


def parse_config_summary(data: bytes, layers: int) -> ConfigSummary:
    """The summary of an image config whose manifest has ``layers`` layers.

    History entries with ``empty_layer`` describe no layer and are skipped; a history that
    does not cover every layer (other tools write none) leaves the rest without comment.
    """
    obj = json_object(data, "image config")
    arch, os_name, variant = obj.get("architecture"), obj.get("os"), obj.get("variant")
    platform = None
    if isinstance(arch, str) and isinstance(os_name, str):
        platform = Platform(arch, os_name, variant if isinstance(variant, str) else None)
    created = obj.get("created")
    history = obj.get("history")
    entries = [e for e in history if isinstance(e, dict)] if isinstance(history, list) else []
    comments = [
        str(e.get("comment") or e.get("created_by") or "")
        for e in entries
        if not e.get("empty_layer")
    ]
    comments = (comments + [""] * layers)[:layers]
    return ConfigSummary(platform, created if isinstance(created, str) else None, tuple(comments))


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object; ImageError naming ``what`` otherwise."""
    try:
        obj = json.loads(data)
    except ValueError as exc:  # also UnicodeDecodeError
        raise ImageError(f"{what} is not JSON: {exc}") from None
    except RecursionError:  # a few KB of brackets, from anyone who can write a manifest
        raise ImageError(f"{what} is nested too deeply to be a document") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def canonical_bytes(document: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """The exact bytes to hash, write and send: sorted keys, compact, UTF-8, no newline."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        raise UsageError(f"text is not valid Unicode (undecodable {bad!r})") from None


def _schema2(data: bytes, what: str) -> dict[str, Any]:
    obj = json_object(data, what)
    version = obj.get("schemaVersion")
    if version == 1:
        raise ImageError(f"{what} is a Docker schema 1 manifest, which is not supported")
    if type(version) is not int or version != 2:
        raise ImageError(f"not a schema 2 {what} (schemaVersion {version!r})")
    return obj


def _media_type_of_config(obj: dict[str, Any]) -> str:
    """A manifest without ``mediaType`` (allowed by OCI): Docker's if its config says so."""
    config = obj.get("config")
    docker = isinstance(config, dict) and config.get("mediaType", "").startswith(
        "application/vnd.docker."
    )
    return (
        "application/vnd.docker.distribution.manifest.v2+json"
        if docker
        else "application/vnd.oci.image.manifest.v1+json"
    )


def _descriptor(obj: object, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ImageError(f"manifest {where} is not a descriptor")
    size, media_type = obj.get("size"), obj.get("mediaType")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ImageError(f"manifest {where}.size is not a size: {size!r}")
    if not isinstance(media_type, str):
        raise ImageError(f"manifest {where} has no mediaType")
    return Descriptor(
        media_type=media_type,
        digest=_digest(obj.get("digest"), f"{where}.digest"),
        size=size,
        annotations=_annotations(obj.get("annotations"), f"{where}.annotations"),
        platform=_platform(obj.get("platform"), f"{where}.platform"),
        artifact_type=_optional_str(obj.get("artifactType"), f"{where}.artifactType"),
    )


def _optional_str(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ImageError(f"manifest {where} is not a string")
    return value


def _platform(value: object, where: str) -> Platform | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ImageError(f"manifest {where} is not a platform")
    arch, os_name, variant = value.get("architecture"), value.get("os"), value.get("variant")
    if not isinstance(arch, str) or not isinstance(os_name, str):
        raise ImageError(f"manifest {where} has no architecture and os")
    if variant is not None and not isinstance(variant, str):
        raise ImageError(f"manifest {where}.variant is not a string")
    return Platform(arch, os_name, variant)


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


@dataclass(frozen=True)
class ImageConfig:
    """The fields of an image config that another image built on it inherits (a base image):
    platform, how a container starts, history and ``rootfs.diff_ids``. ``history`` entries are
    kept as the JSON objects they were (``empty_layer`` ones included), checked to be objects
    of known field types."""

    architecture: str
    os: str
    variant: str | None
    diff_ids: tuple[Digest, ...]
    history: tuple[Mapping[str, Any], ...] = ()
    env: tuple[tuple[str, str], ...] = ()  # in the base's order
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    user: str | None = None
    workdir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    stop_signal: str | None = None


def parse_image_config(data: bytes) -> ImageConfig:
    """An image config written by anyone, strictly: ImageError naming the first bad field."""
    obj = json_object(data, "image config")
    arch, os_name, variant = obj.get("architecture"), obj.get("os"), obj.get("variant")
    if not isinstance(arch, str) or not isinstance(os_name, str):
        raise ImageError("image config has no architecture and os")
    container = obj.get("config")
    if container is None:
        container = {}
    if not isinstance(container, dict):
        raise ImageError("image config field config is not an object")
    return ImageConfig(
        architecture=arch,
        os=os_name,
        variant=_optional_text(variant, "variant"),
        diff_ids=config_diff_ids(data),
        history=_history(obj.get("history")),
        env=_env(container.get("Env")),
        entrypoint=_text_list(container.get("Entrypoint"), "config.Entrypoint"),
        cmd=_text_list(container.get("Cmd"), "config.Cmd"),
        user=_optional_text(container.get("User"), "config.User") or None,
        workdir=_optional_text(container.get("WorkingDir"), "config.WorkingDir") or None,
        labels=_annotations(container.get("Labels"), "config.Labels"),
        exposed_ports=_keys(container.get("ExposedPorts"), "config.ExposedPorts"),
        volumes=_keys(container.get("Volumes"), "config.Volumes"),
        stop_signal=_optional_text(container.get("StopSignal"), "config.StopSignal") or None,
    )


_HISTORY_FIELDS = {"created": str, "created_by": str, "author": str, "comment": str}


def _history(value: object) -> tuple[Mapping[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ImageError("image config field history is not a list")
    entries: list[Mapping[str, Any]] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            raise ImageError(f"image config history.{i} is not an object")
        for name, kind in _HISTORY_FIELDS.items():
            if name in entry and not isinstance(entry[name], kind):
                raise ImageError(f"image config history.{i}.{name} is not text")
        if "empty_layer" in entry and not isinstance(entry["empty_layer"], bool):
            raise ImageError(f"image config history.{i}.empty_layer is not a boolean")
        known = {*_HISTORY_FIELDS, "empty_layer"}
        entries.append({k: v for k, v in entry.items() if k in known})
    return tuple(entries)


def _env(value: object) -> tuple[tuple[str, str], ...]:
    items = _text_list(value, "config.Env") or ()
    pairs: list[tuple[str, str]] = []
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise ImageError(f"image config config.Env item {item!r} is not NAME=VALUE")
        pairs.append((name, text))
    return tuple(pairs)


def _text_list(value: object, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"image config {where} is not a list of strings")
    return tuple(value)


def _optional_text(value: object, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ImageError(f"image config {where} is not text")
    return value


def _keys(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ImageError(f"image config {where} is not an object")
    return tuple(value)
