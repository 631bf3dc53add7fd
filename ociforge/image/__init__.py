"""Image value types and writers: media types, models, canonical JSON, config, OCI layout, archive.

Nothing here knows about nix, tar streams or HTTP: writers take plain iterables of bytes and
report the digests and sizes they computed while writing.

Names are imported on first use (PEP 562): the pydantic models cost a tenth of a second to build,
and a warm push that finds its manifest in the local cache never needs them; the media types,
``RuntimeConfig`` and the option parsers do not import pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ociforge.image.config import (
        EPOCH_PLUS_ONE,
        RuntimeConfig,
        check_created,
        check_runtime,
        config_document,
        parse_env_items,
        parse_label_items,
        parse_port_items,
        platform_for_system,
    )
    from ociforge.image.docker_archive import DockerArchiveWriter, check_repo_tag
    from ociforge.image.models import (
        ContainerConfig,
        Descriptor,
        History,
        ImageConfig,
        Index,
        Manifest,
        Platform,
        RootFS,
        canonical_json,
        describe_bytes,
        parse_image_config,
        parse_index,
        parse_manifest,
    )
    from ociforge.image.oci_layout import REF_NAME, BlobRef, OciLayout, check_tag
    from ociforge.image.summary import BlobDescriptor, config_diff_ids
    from ociforge.spec import (
        ACCEPT_MANIFEST_TYPES,
        DOCKER_CONFIG,
        DOCKER_LAYER_GZIP,
        DOCKER_LAYER_TAR,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
        IMAGE_MANIFEST_TYPES,
        INDEX_TYPES,
        OCI_CONFIG,
        OCI_INDEX,
        OCI_LAYER_GZIP,
        OCI_LAYER_TAR,
        OCI_LAYER_ZSTD,
        OCI_MANIFEST,
        ImageFormat,
        config_media_type,
        layer_media_type,
        manifest_media_type,
    )

_EXPORTS: dict[str, str] = {
    "ACCEPT_MANIFEST_TYPES": "ociforge.spec",
    "BlobDescriptor": "ociforge.image.summary",
    "BlobRef": "ociforge.image.oci_layout",
    "ContainerConfig": "ociforge.image.models",
    "DOCKER_CONFIG": "ociforge.spec",
    "DOCKER_LAYER_GZIP": "ociforge.spec",
    "DOCKER_LAYER_TAR": "ociforge.spec",
    "DOCKER_MANIFEST": "ociforge.spec",
    "DOCKER_MANIFEST_LIST": "ociforge.spec",
    "Descriptor": "ociforge.image.models",
    "DockerArchiveWriter": "ociforge.image.docker_archive",
    "EPOCH_PLUS_ONE": "ociforge.image.config",
    "History": "ociforge.image.models",
    "IMAGE_MANIFEST_TYPES": "ociforge.spec",
    "INDEX_TYPES": "ociforge.spec",
    "ImageConfig": "ociforge.image.models",
    "ImageFormat": "ociforge.spec",
    "Index": "ociforge.image.models",
    "Manifest": "ociforge.image.models",
    "OCI_CONFIG": "ociforge.spec",
    "OCI_INDEX": "ociforge.spec",
    "OCI_LAYER_GZIP": "ociforge.spec",
    "OCI_LAYER_TAR": "ociforge.spec",
    "OCI_LAYER_ZSTD": "ociforge.spec",
    "OCI_MANIFEST": "ociforge.spec",
    "OciLayout": "ociforge.image.oci_layout",
    "Platform": "ociforge.image.models",
    "REF_NAME": "ociforge.image.oci_layout",
    "RootFS": "ociforge.image.models",
    "RuntimeConfig": "ociforge.image.config",
    "config_diff_ids": "ociforge.image.summary",
    "config_document": "ociforge.image.config",
    "canonical_json": "ociforge.image.models",
    "check_created": "ociforge.image.config",
    "check_runtime": "ociforge.image.config",
    "check_repo_tag": "ociforge.image.docker_archive",
    "check_tag": "ociforge.image.oci_layout",
    "config_media_type": "ociforge.spec",
    "describe_bytes": "ociforge.image.models",
    "layer_media_type": "ociforge.spec",
    "manifest_media_type": "ociforge.spec",
    "parse_env_items": "ociforge.image.config",
    "parse_image_config": "ociforge.image.models",
    "parse_index": "ociforge.image.models",
    "parse_label_items": "ociforge.image.config",
    "parse_manifest": "ociforge.image.models",
    "parse_port_items": "ociforge.image.config",
    "platform_for_system": "ociforge.image.config",
}

__all__ = [
    "ACCEPT_MANIFEST_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_TAR",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "EPOCH_PLUS_ONE",
    "IMAGE_MANIFEST_TYPES",
    "INDEX_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "REF_NAME",
    "BlobDescriptor",
    "BlobRef",
    "ContainerConfig",
    "Descriptor",
    "DockerArchiveWriter",
    "History",
    "ImageConfig",
    "ImageFormat",
    "Index",
    "Manifest",
    "OciLayout",
    "Platform",
    "RootFS",
    "RuntimeConfig",
    "canonical_json",
    "check_created",
    "check_repo_tag",
    "check_runtime",
    "check_tag",
    "config_diff_ids",
    "config_document",
    "config_media_type",
    "describe_bytes",
    "layer_media_type",
    "manifest_media_type",
    "parse_env_items",
    "parse_image_config",
    "parse_index",
    "parse_label_items",
    "parse_manifest",
    "parse_port_items",
    "platform_for_system",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ociforge.image' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
