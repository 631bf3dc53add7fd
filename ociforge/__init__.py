"""ociforge: build and push OCI images of Nix closures in one streaming pass.

The public API is what ``__all__`` lists; everything else is private and may change.
"""

from __future__ import annotations

from ociforge.annotations import ci_annotations
from ociforge.api import (
    BuildResult,
    build,
    host_system,
    load_closure,
    load_source,
    preview,
    push,
)
from ociforge.assemble import BuiltImage, ImageOptions
from ociforge.compress import Compression, CompressionOptions
from ociforge.customise import ImageSource
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
from ociforge.essentials import EssentialsOptions
from ociforge.events import (
    BlobFinished,
    BlobProgress,
    BlobRetry,
    BlobStarted,
    Event,
    Message,
    ProgressCallback,
)
from ociforge.image import RuntimeConfig
from ociforge.layering import STRATEGIES, LayerPlan, plan_layers
from ociforge.nix import Closure, StorePathInfo, read_closure
from ociforge.push import PushedBlob, PushPreview, PushResult, RegistryOptions
from ociforge.reference import Reference, parse_reference
from ociforge.registry import Credentials
from ociforge.reuse import LayerPreview
from ociforge.tarstream import TarOptions

__all__ = [
    "STRATEGIES",
    "AuthError",
    "BlobFinished",
    "BlobProgress",
    "BlobRetry",
    "BlobStarted",
    "BuildResult",
    "BuiltImage",
    "Closure",
    "Compression",
    "CompressionOptions",
    "Credentials",
    "Digest",
    "DigestMismatchError",
    "EssentialsOptions",
    "Event",
    "ImageError",
    "ImageOptions",
    "ImageSource",
    "LayerPlan",
    "LayerPreview",
    "Message",
    "NixError",
    "OciforgeError",
    "ProgressCallback",
    "PushPreview",
    "PushResult",
    "PushedBlob",
    "Reference",
    "RegistryError",
    "RegistryOptions",
    "RuntimeConfig",
    "StorePathInfo",
    "TarOptions",
    "UsageError",
    "build",
    "ci_annotations",
    "host_system",
    "load_closure",
    "load_source",
    "parse_reference",
    "plan_layers",
    "preview",
    "push",
    "read_closure",
]
