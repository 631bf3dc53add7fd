"""The image model, without I/O: media types, documents (manifest, index, config), the config.

Nothing here knows about nix, tar streams or HTTP: writers take plain iterables of bytes and
report the digests and sizes they computed while writing.

Names are imported on first use (PEP 562): a warm push loads only what it reads.
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
    from ociforge.image.documents import (
        Descriptor,
        Index,
        Manifest,
        Platform,
        canonical_bytes,
        config_diff_ids,
        parse_index,
        parse_manifest,
    )
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
    "DOCKER_CONFIG": "ociforge.spec",
    "DOCKER_LAYER_GZIP": "ociforge.spec",
    "DOCKER_LAYER_TAR": "ociforge.spec",
    "DOCKER_MANIFEST": "ociforge.spec",
    "DOCKER_MANIFEST_LIST": "ociforge.spec",
    "Descriptor": "ociforge.image.documents",
    "EPOCH_PLUS_ONE": "ociforge.image.config",
    "IMAGE_MANIFEST_TYPES": "ociforge.spec",
    "INDEX_TYPES": "ociforge.spec",
    "ImageFormat": "ociforge.spec",
    "Index": "ociforge.image.documents",
    "Manifest": "ociforge.image.documents",
    "OCI_CONFIG": "ociforge.spec",
    "OCI_INDEX": "ociforge.spec",
    "OCI_LAYER_GZIP": "ociforge.spec",
    "OCI_LAYER_TAR": "ociforge.spec",
    "OCI_LAYER_ZSTD": "ociforge.spec",
    "OCI_MANIFEST": "ociforge.spec",
    "Platform": "ociforge.image.documents",
    "RuntimeConfig": "ociforge.image.config",
    "config_diff_ids": "ociforge.image.documents",
    "config_document": "ociforge.image.config",
    "canonical_bytes": "ociforge.image.documents",
    "check_created": "ociforge.image.config",
    "check_runtime": "ociforge.image.config",
    "config_media_type": "ociforge.spec",
    "layer_media_type": "ociforge.spec",
    "manifest_media_type": "ociforge.spec",
    "parse_env_items": "ociforge.image.config",
    "parse_index": "ociforge.image.documents",
    "parse_label_items": "ociforge.image.config",
    "parse_manifest": "ociforge.image.documents",
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
    "Descriptor",
    "ImageFormat",
    "Index",
    "Manifest",
    "Platform",
    "RuntimeConfig",
    "canonical_bytes",
    "check_created",
    "check_runtime",
    "config_diff_ids",
    "config_document",
    "config_media_type",
    "layer_media_type",
    "manifest_media_type",
    "parse_env_items",
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
