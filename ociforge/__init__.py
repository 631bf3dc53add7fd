"""ociforge: build and push OCI images of Nix closures in one streaming pass.

The public API is what ``__all__`` lists; everything else is private and may change.

Names are imported on first use (PEP 562): ``import ociforge.errors`` or the command's entry
point do not pay for httpx until they need it, and the entry point can keep
unused optional modules out before anything imports them (see ``__main__``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ociforge.api import (
        BatchResult,
        BuildResult,
        CopyResult,
        ImageResult,
        IndexResult,
        Inspection,
        ResolvedImage,
        TagResult,
        build,
        copy_image,
        generate_key,
        gitlab_pipeline_for,
        host_system,
        inspect_image,
        load_closure,
        load_source,
        load_trust,
        preview,
        push,
        push_index,
        push_many,
        resolve_images,
        tag_image,
    )
    from ociforge.assemble import BuiltImage, ImageOptions
    from ociforge.assemble.annotations import ci_annotations
    from ociforge.assemble.essentials import EssentialsOptions
    from ociforge.ci_gitlab import (
        GitlabOptions,
        ImageJob,
        IndexJob,
        gitlab_pipeline,
        read_jobs_file,
    )
    from ociforge.compress import Compression, CompressionOptions
    from ociforge.digest import Digest
    from ociforge.errors import (
        AuthError,
        DigestMismatchError,
        ImageError,
        NixError,
        OciforgeError,
        RegistryError,
        UsageError,
    )
    from ociforge.events import (
        BlobFinished,
        BlobProgress,
        BlobRetry,
        BlobStarted,
        Event,
        InputProgress,
        Message,
        PlanReady,
        ProgressCallback,
    )
    from ociforge.image.config import RuntimeConfig
    from ociforge.layering import STRATEGIES, LayerPlan, plan_layers
    from ociforge.nix import Closure, StorePathInfo, read_closure
    from ociforge.publish import (
        PushedBlob,
        PushPreview,
        PushResult,
        PushSession,
        RegistryOptions,
    )
    from ociforge.publish.reuse import LayerPreview
    from ociforge.reference import Reference, parse_reference
    from ociforge.registry import Credentials
    from ociforge.source import ImageSource, SourceSpec, parse_source
    from ociforge.supplyapi import (
        SupplyOptions,
        VerifyReport,
        generate_cosign_key,
        load_cosign_key,
        sbom,
        verify,
    )
    from ociforge.tarstream import TarOptions
    from ociforge.trust import TrustKeys

_EXPORTS: dict[str, str] = {
    "SupplyOptions": "ociforge.supplyapi",
    "VerifyReport": "ociforge.supplyapi",
    "generate_cosign_key": "ociforge.supplyapi",
    "load_cosign_key": "ociforge.supplyapi",
    "sbom": "ociforge.supplyapi",
    "verify": "ociforge.supplyapi",
    "AuthError": "ociforge.errors",
    "BlobFinished": "ociforge.events",
    "BlobProgress": "ociforge.events",
    "BlobRetry": "ociforge.events",
    "BlobStarted": "ociforge.events",
    "BuildResult": "ociforge.api",
    "BuiltImage": "ociforge.assemble",
    "Closure": "ociforge.nix",
    "Compression": "ociforge.compress",
    "CompressionOptions": "ociforge.compress",
    "Credentials": "ociforge.registry",
    "Digest": "ociforge.digest",
    "DigestMismatchError": "ociforge.errors",
    "EssentialsOptions": "ociforge.assemble.essentials",
    "Event": "ociforge.events",
    "ImageError": "ociforge.errors",
    "ImageOptions": "ociforge.assemble",
    "ImageSource": "ociforge.source",
    "InputProgress": "ociforge.events",
    "LayerPlan": "ociforge.layering",
    "LayerPreview": "ociforge.publish.reuse",
    "Message": "ociforge.events",
    "NixError": "ociforge.errors",
    "OciforgeError": "ociforge.errors",
    "PlanReady": "ociforge.events",
    "ProgressCallback": "ociforge.events",
    "PushPreview": "ociforge.publish",
    "PushResult": "ociforge.publish",
    "PushSession": "ociforge.publish",
    "PushedBlob": "ociforge.publish",
    "Reference": "ociforge.reference",
    "SourceSpec": "ociforge.source",
    "RegistryError": "ociforge.errors",
    "RegistryOptions": "ociforge.publish",
    "RuntimeConfig": "ociforge.image.config",
    "STRATEGIES": "ociforge.layering",
    "StorePathInfo": "ociforge.nix",
    "TarOptions": "ociforge.tarstream",
    "UsageError": "ociforge.errors",
    "build": "ociforge.api",
    "BatchResult": "ociforge.api",
    "ImageResult": "ociforge.api",
    "IndexResult": "ociforge.api",
    "ResolvedImage": "ociforge.api",
    "push_index": "ociforge.api",
    "push_many": "ociforge.api",
    "resolve_images": "ociforge.api",
    "generate_key": "ociforge.api",
    "load_trust": "ociforge.api",
    "TrustKeys": "ociforge.trust",
    "ci_annotations": "ociforge.assemble.annotations",
    "host_system": "ociforge.api",
    "load_closure": "ociforge.api",
    "load_source": "ociforge.api",
    "parse_reference": "ociforge.reference",
    "parse_source": "ociforge.source",
    "plan_layers": "ociforge.layering",
    "preview": "ociforge.api",
    "push": "ociforge.api",
    "read_closure": "ociforge.nix",
    # promotion and inspection (publish/promote.py)
    "CopyResult": "ociforge.api",
    "Inspection": "ociforge.api",
    "TagResult": "ociforge.api",
    "copy_image": "ociforge.api",
    "inspect_image": "ociforge.api",
    "tag_image": "ociforge.api",
    # GitLab CI scale-out
    "GitlabOptions": "ociforge.ci_gitlab",
    "ImageJob": "ociforge.ci_gitlab",
    "IndexJob": "ociforge.ci_gitlab",
    "gitlab_pipeline": "ociforge.ci_gitlab",
    "gitlab_pipeline_for": "ociforge.api",
    "read_jobs_file": "ociforge.ci_gitlab",
}

__all__ = [
    "STRATEGIES",
    "AuthError",
    "BatchResult",
    "BlobFinished",
    "BlobProgress",
    "BlobRetry",
    "BlobStarted",
    "BuildResult",
    "BuiltImage",
    "Closure",
    "Compression",
    "CompressionOptions",
    "CopyResult",
    "Credentials",
    "Digest",
    "DigestMismatchError",
    "EssentialsOptions",
    "Event",
    "GitlabOptions",
    "ImageError",
    "ImageJob",
    "ImageOptions",
    "ImageResult",
    "ImageSource",
    "IndexJob",
    "IndexResult",
    "InputProgress",
    "Inspection",
    "LayerPlan",
    "LayerPreview",
    "Message",
    "NixError",
    "OciforgeError",
    "PlanReady",
    "ProgressCallback",
    "PushPreview",
    "PushResult",
    "PushSession",
    "PushedBlob",
    "Reference",
    "RegistryError",
    "RegistryOptions",
    "ResolvedImage",
    "RuntimeConfig",
    "SourceSpec",
    "StorePathInfo",
    "SupplyOptions",
    "TagResult",
    "TarOptions",
    "TrustKeys",
    "UsageError",
    "VerifyReport",
    "build",
    "ci_annotations",
    "copy_image",
    "generate_cosign_key",
    "generate_key",
    "gitlab_pipeline",
    "gitlab_pipeline_for",
    "host_system",
    "inspect_image",
    "load_closure",
    "load_cosign_key",
    "load_source",
    "load_trust",
    "parse_reference",
    "parse_source",
    "plan_layers",
    "preview",
    "push",
    "push_index",
    "push_many",
    "read_closure",
    "read_jobs_file",
    "resolve_images",
    "sbom",
    "tag_image",
    "verify",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ociforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
