"""Manifest GET and PUT, kept as raw bytes: the digest is taken over exactly the bytes sent."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, ImageError, RegistryDigestError
from ociforge.registry.auth import repository_scope
from ociforge.registry.client import RegistryClient
from ociforge.registry.responses import redact_url
from ociforge.spec import ACCEPT_MANIFEST_TYPES, MAX_MANIFEST_BYTES


def get_manifest(
    client: RegistryClient,
    repo: str,
    ref: str,
    *,
    scopes: Sequence[str] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[bytes, str, Digest] | None:
    """The manifest ``ref`` (tag or digest) of ``repo`` as (bytes, media type, digest), or None.

    ``scopes`` default to pull on ``repo``; a pusher passes its push scopes so that one token
    serves the whole push (GitLab issues a token per scope set). Once ``cancel`` is set, no
    more requests (retries) are sent.
    """
    return _get_checked(
        client,
        f"/v2/{repo}/manifests/{ref}",
        scopes or [repository_scope(repo, "pull")],
        what=f"manifest {ref} of {repo}",
        expected=ref if ref.startswith("sha256:") else None,
        headers={"Accept": ", ".join(ACCEPT_MANIFEST_TYPES)},
        cancel=cancel,
    )


def put_manifest(
    client: RegistryClient, repo: str, ref: str, data: bytes, media_type: str
) -> Digest:
    """PUT ``data`` as ``repo:ref`` with Content-Type ``media_type``; return its digest.

    Every blob it references must already be in ``repo`` (else MANIFEST_BLOB_UNKNOWN), and
    ``media_type`` must equal the manifest's own ``mediaType`` (else MANIFEST_INVALID).
    """
    digest = Digest.of(data)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ImageError(f"manifest is {len(data)} bytes; registries accept at most 4 MiB")
    if ref.startswith("sha256:") and ref != str(digest):
        raise DigestMismatchError(f"manifest for {repo}@{ref}", ref, str(digest))
    response = client.request(
        "PUT",
        f"/v2/{repo}/manifests/{ref}",
        scopes=[repository_scope(repo)],
        headers={"Content-Type": media_type},
        content=data,
        key="manifest",
    )
    stored = response.headers.get("docker-content-digest")
    if stored and stored != str(digest):
        where = redact_url(response.request.url)
        raise RegistryDigestError(
            f"registry stored manifest {repo}:{ref} (at {client.registry})",
            str(digest),
            stored,
            url=where,
        )
    return digest


def get_small_blob(
    client: RegistryClient,
    repo: str,
    digest: Digest,
    *,
    max_size: int = MAX_MANIFEST_BYTES,
    scopes: Sequence[str] | None = None,
) -> bytes | None:
    """A small blob (an image config) of ``repo``, checked against its digest; None if absent."""
    found = _get_checked(
        client,
        f"/v2/{repo}/blobs/{digest}",
        scopes or [repository_scope(repo, "pull")],
        what=f"blob {digest} of {repo}",
        expected=str(digest),
        max_size=max_size,
    )
    return None if found is None else found[0]


def _get_checked(
    client: RegistryClient,
    path: str,
    scopes: Sequence[str],
    *,
    what: str,
    expected: str | None,
    max_size: int = MAX_MANIFEST_BYTES,
    headers: Mapping[str, str] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[bytes, str, Digest] | None:
    """GET a small document as (bytes, media type, digest), or None on 404.

    A body larger than ``max_size`` (refused while it streams: never buffered past it), or not
    hashing to ``expected``, is an error: what a registry (or a proxy) sends instead must
    never become part of an image.
    """
    response = client.request(
        "GET",
        path,
        scopes=scopes,
        headers=headers,
        expect={200, 404},
        follow_redirects=True,
        cancel=cancel,
        max_body=max_size,
    )
    if response.status_code == 404:
        return None
    data = response.content
    digest = Digest.of(data)
    if expected is not None and str(digest) != expected:
        where = redact_url(response.request.url)
        raise RegistryDigestError(
            f"{client.registry} sent {what}", expected, str(digest), url=where
        )
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    return data, media_type, digest
