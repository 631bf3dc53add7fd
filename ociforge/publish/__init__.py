"""The registry sink and its policy: what to upload, what to reuse, when to tag.

``session.py`` holds :class:`PushSession` (one registry, one client, one retry policy) pushing
images built while they stream or read from an OCI layout; ``tags.py`` reads and moves the
destination tags; ``reuse.py`` decides which layers are already known (local cache, manifests
pushed before); ``cache.py`` is the local layer cache; ``options.py`` the options and results.
"""

from __future__ import annotations

from ociforge.publish.options import (
    PushedBlob,
    PushPreview,
    PushResult,
    RegistryOptions,
    check_destinations,
)
from ociforge.publish.session import PushSession, push_plan

__all__ = [
    "PushPreview",
    "PushResult",
    "PushSession",
    "PushedBlob",
    "RegistryOptions",
    "check_destinations",
    "push_plan",
]
