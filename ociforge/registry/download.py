"""Streamed blob GET: a blob of one repository read as a :class:`BlobStream`.

What a copy between registries sends on: the source's bytes go straight into the
destination's upload (``upload_blob`` with this as the stream), chunk by chunk, never held
whole. A registry (or a proxy) is not believed: the bytes are hashed as they pass, and more
bytes than the descriptor's size, fewer, or another digest raise RegistryDigestError before the
stream ends, so the upload's finalising PUT is never sent with them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ociforge.digest import Digest, HashingCounter
from ociforge.errors import RegistryDigestError
from ociforge.registry.auth import repository_scope
from ociforge.registry.client import RegistryClient
from ociforge.registry.responses import redact_url


class BlobDownload:
    """The blob ``digest`` (``size`` bytes) of ``repo``, fetched again on each iteration."""

    def __init__(
        self,
        client: RegistryClient,
        repo: str,
        digest: Digest,
        size: int,
        *,
        cancel: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.repo = repo
        self.expected = digest
        self.expected_size = size
        self.cancel = cancel
        self._counter = HashingCounter()

    def __iter__(self) -> Iterator[bytes]:
        self._counter = HashingCounter()
        path = f"/v2/{self.repo}/blobs/{self.expected}"
        scopes = [repository_scope(self.repo, "pull")]
        with self.client.open_stream(path, scopes=scopes, cancel=self.cancel) as response:
            where = redact_url(response.request.url)
            for chunk in self._counter.tap(self.client.iter_body(response, cancel=self.cancel)):
                if self._counter.size > self.expected_size:
                    raise self._mismatch(f"more than {self.expected_size} bytes", where)
                yield chunk
        if self._counter.size != self.expected_size:
            raise self._mismatch(f"{self._counter.size} of {self.expected_size} bytes", where)
        if self._counter.digest != self.expected:
            raise self._mismatch(str(self._counter.digest), where)

    def _mismatch(self, actual: str, where: str) -> RegistryDigestError:
        return RegistryDigestError(
            f"{self.client.registry} sent blob {self.expected} of {self.repo}",
            str(self.expected),
            actual,
            url=where,
        )

    @property
    def digest(self) -> Digest:
        return self._counter.digest

    @property
    def size(self) -> int:
        return self._counter.size
