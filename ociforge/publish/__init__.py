"""The registry sink and its policy: what to upload, what to reuse, when to tag.

``session.py`` pushes one image (built while it streams, or read from an OCI layout) through one
registry client; ``reuse.py`` decides which layers are already known (local cache, manifests
pushed before); ``cache.py`` is the local layer cache.
"""

from __future__ import annotations

from ociforge.publish.session import (
    PushedBlob,
    PushPreview,
    PushResult,
    RegistryOptions,
    preview_push,
    push_layout,
    push_plan,
)

__all__ = [
    "PushPreview",
    "PushResult",
    "PushedBlob",
    "RegistryOptions",
    "preview_push",
    "push_layout",
    "push_plan",
]
