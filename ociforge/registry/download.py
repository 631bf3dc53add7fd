"""Blobs read as they stream (a base image's layers): never held whole, whatever their size.

``RegistryClient.request`` reads every answer into memory under a size limit, which suits
documents, not layers. Here a body-less ``HEAD`` goes first through the client (it answers the
auth challenge, so the token is cached, and says clearly when the blob is missing), then the
``GET`` is streamed with that token. Redirects (to blob storage) are followed without the
``Authorization`` header: httpx drops it when the origin changes. The caller checks the bytes
against their digest; nothing here trusts them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import httpx

from ociforge.digest import Digest
from ociforge.registry.auth import repository_scope
from ociforge.registry.client import RegistryClient
from ociforge.registry.responses import ERROR_BODY_LIMIT, check_response, redact_url

_CHUNK = 1 << 20
_MAX_REDIRECTS = 5


def stream_blob(
    client: RegistryClient,
    repo: str,
    digest: Digest,
    *,
    scopes: Sequence[str] | None = None,
) -> Iterator[bytes]:
    """The bytes of blob ``digest`` of ``repo``, in chunks as they arrive (unchecked)."""
    scopes = list(scopes or [repository_scope(repo, "pull")])
    path = f"/v2/{repo}/blobs/{digest}"
    client.request("HEAD", path, scopes=scopes, expect={200}, follow_redirects=True)
    return _streamed(client, client.url(path), scopes)


def _streamed(client: RegistryClient, url: httpx.URL, scopes: Sequence[str]) -> Iterator[bytes]:
    authorization = client.auth.authorization(scopes)
    headers = {"Authorization": authorization} if authorization else {}
    http = client._http  # the client's pool and timeouts: one policy
    try:
        request = http.build_request("GET", url, headers=headers, timeout=client._timeouts())
        response = http.send(request, stream=True)
        for _ in range(_MAX_REDIRECTS):
            if response.next_request is None:
                break
            response.close()
            response = http.send(response.next_request, stream=True)
    except httpx.HTTPError as exc:
        raise client._transport_error(exc, "GET", url) from None
    try:
        if response.status_code != 200:
            body = b""
            for chunk in response.iter_raw():
                body += chunk
                if len(body) >= ERROR_BODY_LIMIT:  # an error page says all it can in that
                    break
            answer = httpx.Response(response.status_code, content=body, request=response.request)
            check_response(answer, expect={200}, auth_hint=client.auth_hint(url))
        received = 0
        for chunk in response.iter_raw(_CHUNK):
            received += len(chunk)
            client.check_deadline(f"GET {redact_url(url)} was still arriving ({received} bytes)")
            yield chunk
    except httpx.HTTPError as exc:
        raise client._transport_error(exc, "GET", url) from None
    finally:
        response.close()
