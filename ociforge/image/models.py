"""Pydantic models of descriptors, manifests, indexes and image configs, and their JSON bytes.

Raw bytes are the truth: a config or manifest is serialised once, and its digest, size, file and
upload all use those bytes. The models *read* foreign documents (a foreign document is never
re-serialised) and build the OCI layout's index. The configs and manifests of images ociforge
makes are plain JSON (:mod:`ociforge.image.summary`: loading pydantic was a third of a push);
tests hold them to these models, byte for byte and with unknown fields refused.

Models we produce forbid unknown fields (a typo in our code fails loudly). The ``parse_*`` helpers
read what registries and other tools wrote: they drop fields the models do not know (Docker's
``container_config``, OCI 1.1's ``data``, ...) instead of refusing the document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from ociforge.digest import Digest
from ociforge.errors import ImageError
from ociforge.image.summary import canonical_bytes, json_object
from ociforge.spec import IMAGE_MANIFEST_TYPES, INDEX_TYPES

# The OCI digest grammar; sha256 additionally needs exactly 64 lower-case hex characters.
_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")
_FOREIGN = {"foreign": True}


def _check_digest(value: str) -> str:
    if not _DIGEST_RE.fullmatch(value):
        raise ValueError(f"not a digest: {value!r}")
    if value.startswith("sha256:") and not _SHA256_RE.fullmatch(value):
        raise ValueError(f"not a sha256 digest (want sha256:<64 hex>): {value!r}")
    return value


DigestStr = Annotated[str, AfterValidator(_check_digest)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _drop_unknown_when_foreign(cls, data: Any, info: ValidationInfo) -> Any:
        # Readers pass context={"foreign": True}: fields we do not model are ignored, so newer
        # spec versions and Docker's extras still parse.
        if not (isinstance(data, dict) and info.context and info.context.get("foreign")):
            return data
        known = set(cls.model_fields)
        known.update(f.alias for f in cls.model_fields.values() if f.alias)
        return {k: v for k, v in data.items() if k in known}


class Platform(_Model):
    architecture: str
    os: str
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: Sequence[str] | None = Field(default=None, alias="os.features")
    variant: str | None = None
    features: Sequence[str] | None = None


class Descriptor(_Model):
    """A pointer to a blob: its media type, digest and size (OCI image-spec descriptor)."""

    media_type: str = Field(alias="mediaType")
    digest: DigestStr
    size: NonNegativeInt
    urls: Sequence[str] | None = None
    annotations: dict[str, str] | None = None
    platform: Platform | None = None
    artifact_type: str | None = Field(default=None, alias="artifactType")

    @property
    def sha256(self) -> Digest:
        """The digest as a :class:`Digest`; UsageError for other algorithms."""
        return Digest.parse(self.digest)


class Manifest(_Model):
    """An image manifest (OCI, or Docker schema2 which has the same shape without annotations)."""

    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    config: Descriptor
    layers: Sequence[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class Index(_Model):
    """An image index (OCI) or manifest list (Docker): manifests of several platforms."""

    schema_version: Literal[2] = Field(alias="schemaVersion")
    media_type: str | None = Field(default=None, alias="mediaType")
    artifact_type: str | None = Field(default=None, alias="artifactType")
    manifests: Sequence[Descriptor]
    subject: Descriptor | None = None
    annotations: dict[str, str] | None = None


class ContainerConfig(_Model):
    """The ``config`` object of an image config: how a container of the image starts."""

    user: str | None = Field(default=None, alias="User")
    exposed_ports: dict[str, dict[str, Any]] | None = Field(default=None, alias="ExposedPorts")
    env: Sequence[str] | None = Field(default=None, alias="Env")
    entrypoint: Sequence[str] | None = Field(default=None, alias="Entrypoint")
    cmd: Sequence[str] | None = Field(default=None, alias="Cmd")
    volumes: dict[str, dict[str, Any]] | None = Field(default=None, alias="Volumes")
    working_dir: str | None = Field(default=None, alias="WorkingDir")
    labels: dict[str, str] | None = Field(default=None, alias="Labels")
    stop_signal: str | None = Field(default=None, alias="StopSignal")


class RootFS(_Model):
    type: Literal["layers"] = "layers"
    diff_ids: Sequence[DigestStr]


class History(_Model):
    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool | None = None


class ImageConfig(_Model):
    """An OCI image config (also valid as a Docker ``container.image.v1`` config)."""

    created: str | None = None
    author: str | None = None
    architecture: str
    os: str
    os_version: str | None = Field(default=None, alias="os.version")
    os_features: Sequence[str] | None = Field(default=None, alias="os.features")
    variant: str | None = None
    config: ContainerConfig | None = None
    rootfs: RootFS
    history: Sequence[History] | None = None


def canonical_json(value: BaseModel | Mapping[str, Any] | Sequence[Any]) -> bytes:
    """The exact bytes to hash, write and send: sorted keys, compact, no ``null``s, UTF-8.

    No trailing newline. ``None`` fields of models are left out (the specs make them optional,
    and ``null`` is refused by some readers); plain mappings are dumped as they are.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    return canonical_bytes(value)


def describe_bytes(data: bytes, media_type: str) -> Descriptor:
    """The descriptor of a blob held in memory (a config or a manifest)."""
    return Descriptor(mediaType=media_type, digest=str(Digest.of(data)), size=len(data))


_M = TypeVar("_M", bound=_Model)


def _validate(model: type[_M], obj: object, what: str) -> _M:
    try:
        return model.model_validate(obj, context=_FOREIGN)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise ImageError(f"invalid {what}: {where}: {first['msg']}{more}") from None


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    obj = json_object(data, what)
    if obj.get("schemaVersion") == 1:
        raise ImageError(f"{what} is a Docker schema 1 manifest, which is not supported")
    return obj


def parse_manifest(data: bytes) -> Manifest:
    """Read an image manifest written by anyone; ImageError when it is not one."""
    obj = _load_object(data, "manifest")
    media_type = obj.get("mediaType")
    if media_type in INDEX_TYPES or (media_type is None and "manifests" in obj):
        raise ImageError(
            "expected an image manifest, got an image index (multi-platform images are not "
            "supported here: pick one platform's manifest)"
        )
    if media_type is not None and media_type not in IMAGE_MANIFEST_TYPES:
        raise ImageError(f"not an image manifest: mediaType {media_type!r}")
    return _validate(Manifest, obj, "manifest")


def parse_index(data: bytes) -> Index:
    """Read an image index / manifest list written by anyone."""
    obj = _load_object(data, "index")
    media_type = obj.get("mediaType")
    if media_type is not None and media_type not in INDEX_TYPES:
        raise ImageError(f"not an image index: mediaType {media_type!r}")
    return _validate(Index, obj, "index")


def parse_image_config(data: bytes) -> ImageConfig:
    """Read an image config written by anyone (OCI or Docker)."""
    return _validate(ImageConfig, _load_object(data, "image config"), "image config")
