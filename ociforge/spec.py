"""What the OCI specs and registries fix: media types, size limits, the tag grammar.

The one place for these constants; ``image/``, ``sinks/`` and ``registry/`` all import them.
Only the standard media types are produced: GitLab's registry answers ``MANIFEST_INVALID`` for
unknown ones. Docker schema2 has no zstd layer type, so docker + zstd is refused, not guessed.
"""

from __future__ import annotations

import re
from typing import Literal

from ociforge.errors import UsageError

ImageFormat = Literal["oci", "docker"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

# Registries answer 404 for a manifest whose type the client did not accept (distribution 2.8.2
# does so for OCI manifests), so GET/HEAD always offers all four.
ACCEPT_MANIFEST_TYPES: tuple[str, ...] = (
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
)
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# distribution 2.8.2 refuses larger manifests; configs are read under the same bound.
MAX_MANIFEST_BYTES = 4 << 20

# A tag (distribution's reference grammar): what `REPO:TAG`, `oci:DIR:TAG` and
# `docker-archive:FILE:NAME:TAG` accept.
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

_LAYER_TYPES: dict[tuple[str, str], str] = {
    ("oci", "none"): OCI_LAYER_TAR,
    ("oci", "gzip"): OCI_LAYER_GZIP,
    ("oci", "zstd"): OCI_LAYER_ZSTD,
    ("docker", "none"): DOCKER_LAYER_TAR,
    ("docker", "gzip"): DOCKER_LAYER_GZIP,
}


def _check_format(fmt: str) -> None:
    if fmt not in ("oci", "docker"):
        raise UsageError(f"unknown image format {fmt!r}: use 'oci' or 'docker'")


def layer_media_type(fmt: ImageFormat, compression: str) -> str:
    """The layer media type for a format and a compression (``none``, ``gzip`` or ``zstd``)."""
    _check_format(fmt)
    if fmt == "docker" and compression == "zstd":
        raise UsageError(
            "Docker schema2 has no zstd layer media type: use --compression gzip or --format oci"
        )
    try:
        return _LAYER_TYPES[(fmt, compression)]
    except KeyError:
        raise UsageError(
            f"unknown layer compression {compression!r}: use 'gzip', 'zstd' or 'none'"
        ) from None


def manifest_media_type(fmt: ImageFormat) -> str:
    _check_format(fmt)
    return OCI_MANIFEST if fmt == "oci" else DOCKER_MANIFEST


def config_media_type(fmt: ImageFormat) -> str:
    _check_format(fmt)
    return OCI_CONFIG if fmt == "oci" else DOCKER_CONFIG


# Supply-chain artifacts. GitLab's registry accepts only media types on its allow-list; these
# are on it (CycloneDX and SPDX JSON for SBOMs, cosign's simple signing for signatures).
SBOM_CYCLONEDX = "application/vnd.cyclonedx+json"
SBOM_SPDX = "application/spdx+json"
SBOM_MEDIA_TYPES: dict[str, str] = {"cyclonedx": SBOM_CYCLONEDX, "spdx": SBOM_SPDX}
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
# An SBOM of a big closure is a few MB; it is read back under this bound.
MAX_SBOM_BYTES = 64 << 20


def referrers_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``sha256:<hex>``: ``sha256-<hex>`` (OCI dist. 1.1)."""
    return digest.replace(":", "-", 1)


def sbom_media_type(fmt: str) -> str:
    """The SBOM media type of ``cyclonedx`` or ``spdx``."""
    try:
        return SBOM_MEDIA_TYPES[fmt]
    except KeyError:
        raise UsageError(f"unknown SBOM format {fmt!r}: use 'cyclonedx' or 'spdx'") from None


# A base image's layers keep their bytes; only the name of their type follows the manifest's
# format (Docker's gzip and tar layer types are the OCI ones under another name).
_LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_TAR: "none",
    DOCKER_LAYER_GZIP: "gzip",
}


def layer_media_type_in(fmt: ImageFormat, media_type: str) -> str:
    """The media type a base image's layer of ``media_type`` has in a ``fmt`` manifest."""
    compression = _LAYER_COMPRESSION.get(media_type)
    if compression is None:
        raise UsageError(
            f"the base image has a layer of media type {media_type!r}, which ociforge cannot "
            "carry over (only tar, tar+gzip and tar+zstd layers)"
        )
    return layer_media_type(fmt, compression)
