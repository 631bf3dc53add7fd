"""Registry access: the only package of ociforge that imports httpx.

It moves blobs and manifests as raw bytes plus media type strings and knows nothing about images,
layers, tar streams or nix. Operations are functions taking a :class:`RegistryClient`.
"""

from __future__ import annotations

from ociforge.registry.auth import Challenge, merge_scopes, parse_challenges, repository_scope
from ociforge.registry.client import RegistryClient, Transport, check_ca_bundle
from ociforge.registry.credentials import Credentials, auth_file_paths, resolve_credentials
from ociforge.registry.deadline import default_timeout
from ociforge.registry.download import BlobDownload
from ociforge.registry.manifests import get_manifest, get_small_blob, put_manifest
from ociforge.registry.responses import check_response, redact_url
from ociforge.registry.streams import BlobStream, BytesBlob, HashingStream, StreamOpener
from ociforge.registry.upload import (
    BlobJob,
    BlobResult,
    abort_open_uploads,
    blob_exists,
    mount_blob,
    push_blob,
    upload_all,
    upload_blob,
    upload_bytes,
)

__all__ = [
    "BlobDownload",
    "BlobJob",
    "BlobResult",
    "BlobStream",
    "BytesBlob",
    "Challenge",
    "Credentials",
    "HashingStream",
    "RegistryClient",
    "StreamOpener",
    "Transport",
    "abort_open_uploads",
    "auth_file_paths",
    "blob_exists",
    "check_ca_bundle",
    "check_response",
    "default_timeout",
    "get_manifest",
    "get_small_blob",
    "merge_scopes",
    "mount_blob",
    "parse_challenges",
    "push_blob",
    "put_manifest",
    "redact_url",
    "repository_scope",
    "resolve_credentials",
    "upload_all",
    "upload_blob",
    "upload_bytes",
]
