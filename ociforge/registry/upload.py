"""Blob operations: existence, cross-repo mount, streamed and chunked uploads, concurrency.

The streaming flow (registry-notes.md, "Blob upload"): ``POST`` starts a session, one ``PATCH``
carries the whole blob as a chunked-encoded stream, ``PUT <location>&digest=`` with an empty
body finalises it. The digest is known only when the stream is exhausted, which is exactly when
the PUT needs it. Every step follows the newest ``Location``.

Two kinds of retry that never multiply: the client repeats a body-less request in place
(``retries`` times at most; what still fails is final), and a failure no such repeat can cure (a
failed PATCH, a stale or vanished session) restarts the whole blob from byte 0 in a fresh session
(``retries`` times at most): ``open_stream`` regenerates the identical bytes (layers are recipes,
not files). Once ``cancel`` is set (``upload_all``: another blob failed), nothing is sent but a
best-effort DELETE of the session: it is checked before each request, wait and chunk.

Chunked mode (``chunk_size``) sends several PATCHes with ``Content-Range: start-end`` for
registries and proxies that cap one request's size; it holds one chunk in memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

import httpx

from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, RegistryDigestError, RegistryError, UsageError
from ociforge.events import BlobFinished, BlobProgress, BlobStarted, reporting
from ociforge.registry.auth import repository_scope
from ociforge.registry.client import Body, RegistryClient
from ociforge.registry.responses import redact_url
from ociforge.registry.streams import BlobStream, BytesBlob, StreamOpener

log = logging.getLogger(__name__)

_OCTET = {"Content-Type": "application/octet-stream"}
# A stale or vanished session is final for that request but not for the blob.
_SESSION_CODES = frozenset({"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})
_CANCELLED = "cancelled because another blob upload failed"


@dataclass(frozen=True)
class BlobJob:
    """One blob to get into a repository: skipped if present, mounted if possible, else sent."""

    key: str
    open_stream: StreamOpener
    expected: Digest | None = None
    mount_from: str | None = None
    size: int | None = None
    description: str = ""


@dataclass(frozen=True)
class BlobResult:
    """One blob in the repository: uploaded, already there (skipped) or mounted."""

    key: str
    digest: Digest
    size: int
    outcome: Literal["uploaded", "skipped", "mounted"]


def blob_exists(
    client: RegistryClient, repo: str, digest: Digest, *, cancel: threading.Event | None = None
) -> int | None:
    """``HEAD`` the blob in ``repo`` (existence is per repository): its size, or None."""
    response = client.request(
        "HEAD",
        f"/v2/{repo}/blobs/{digest}",
        scopes=[repository_scope(repo)],
        expect={200, 404},
        follow_redirects=True,
        cancel=cancel,
    )
    if response.status_code == 404:
        return None
    return int(response.headers.get("content-length", "0"))


def mount_blob(
    client: RegistryClient,
    repo: str,
    digest: Digest,
    from_repo: str,
    *,
    cancel: threading.Event | None = None,
) -> bool:
    """Ask the registry to link ``digest`` from ``from_repo``; True only on 201 Created.

    Anything else means "upload normally": 202 opened an ordinary session (cancelled here so it
    does not linger), and a 401/403/404 usually means the token may not read ``from_repo``.
    """
    scopes = [repository_scope(repo), repository_scope(from_repo, "pull")]
    try:
        response = client.request(
            "POST",
            client.url(f"/v2/{repo}/blobs/uploads/").copy_merge_params(
                {"mount": str(digest), "from": from_repo}
            ),
            scopes=scopes,
            cancel=cancel,
        )
    except RegistryError as error:
        if error.temporary or _is_set(cancel):
            raise
        log.debug("mount of %s from %s refused: %s", digest, from_repo, error)
        return False
    if response.status_code == 201:
        return True
    if response.status_code == 202 and "location" in response.headers:
        _cancel_session(client, client.location(response), scopes)
    return False


def upload_blob(
    client: RegistryClient,
    repo: str,
    open_stream: StreamOpener,
    *,
    key: str,
    expected: Digest | None = None,
    chunk_size: int | None = None,
    total: int | None = None,
    description: str = "",
    cancel: threading.Event | None = None,
) -> tuple[Digest, int]:
    """Upload one blob, restarting it whole in fresh sessions; return its digest and size.

    A blob is restarted only after a failure a fresh session may cure (see the module doc),
    ``client.retries`` times at most. If ``expected`` is given and the bytes hash differently,
    DigestMismatchError is raised before the finalising PUT: a wrong blob is never committed.
    Setting ``cancel`` stops the upload before its next request, wait or chunk.
    """
    if chunk_size is not None and chunk_size <= 0:
        raise UsageError(f"chunk size must be positive, got {chunk_size}")
    client.on_event(BlobStarted(key, total, description))
    restarts = 0
    while True:
        # Failures to open a session were already repeated in place: they are final.
        session = _Session.start(client, repo, key, cancel)
        try:
            digest, size = session.send(open_stream, expected, chunk_size)
        except KeyboardInterrupt:  # on the caller's thread: its session must not linger
            session.abandon()
            raise
        except RegistryError as error:
            left = client.remaining()
            if _is_set(cancel) or (left is not None and left <= 0):
                session.abandon()
                raise
            restarts += 1
            wait = client.retry_delay(error, restarts, temporary=_cured_by_restart(error))
            if wait is None:
                raise
            client.announce_retry(error, restarts, wait, key=key, restart=True, cancel=cancel)
            continue
        client.on_event(BlobFinished(key, "uploaded", size, str(digest)))
        return digest, size


def _cured_by_restart(error: RegistryError) -> bool:
    """Whether a fresh session may succeed where this one failed, without spending twice.

    Temporary failures of other requests than PATCH (``RegistryClient.repeats_in_place``)
    arrive here with their budget already spent in place.
    """
    if _SESSION_CODES & set(error.codes):
        return True
    return error.temporary and error.method == "PATCH"


def upload_bytes(client: RegistryClient, repo: str, data: bytes, *, key: str = "config") -> Digest:
    """Push an in-memory blob (a config) unless ``repo`` already has it; return its digest."""
    job = BlobJob(key, lambda: BytesBlob(data), expected=Digest.of(data), size=len(data))
    return push_blob(client, repo, job).digest


def push_blob(
    client: RegistryClient,
    repo: str,
    job: BlobJob,
    *,
    chunk_size: int | None = None,
    cancel: threading.Event | None = None,
) -> BlobResult:
    """HEAD (if the digest is known), then mount (if a source repo is given), then upload."""
    if _is_set(cancel):
        raise RegistryError(f"push of {job.key} {_CANCELLED}")
    if job.expected is not None:
        size = blob_exists(client, repo, job.expected, cancel=cancel)
        if size is not None and job.size is not None and size != job.size:
            # A registry's word is checked: a blob of another size is not the one we know.
            log.warning(
                "%s answered %d bytes for %s of %s, expected %d: uploading it",
                client.registry,
                size,
                job.expected,
                repo,
                job.size,
            )
            size = None
        outcome: Literal["skipped", "mounted"] = "skipped"
        source = job.mount_from if size is None and job.mount_from != repo else None
        if source and mount_blob(client, repo, job.expected, source, cancel=cancel):
            outcome = "mounted"
            size = job.size
            if size is None:
                size = blob_exists(client, repo, job.expected, cancel=cancel) or 0
        if size is not None:
            client.on_event(BlobStarted(job.key, job.size, job.description))
            client.on_event(BlobFinished(job.key, outcome, size, str(job.expected)))
            return BlobResult(job.key, job.expected, size, outcome)
    digest, size = upload_blob(
        client,
        repo,
        job.open_stream,
        key=job.key,
        expected=job.expected,
        chunk_size=chunk_size,
        total=job.size,
        description=job.description,
        cancel=cancel,
    )
    return BlobResult(job.key, digest, size, "uploaded")


def upload_all(
    client: RegistryClient,
    repo: str,
    jobs: Sequence[BlobJob],
    *,
    max_workers: int = 4,
    chunk_size: int | None = None,
) -> list[BlobResult]:
    """Push ``jobs`` with at most ``max_workers`` in flight; results in job order.

    The first failure stops the others (queued ones never start, running ones stop before
    their next request, wait or chunk) and is raised once they have stopped.
    """
    if max_workers < 1:
        raise UsageError(f"max_workers must be at least 1, got {max_workers}")
    cancel = threading.Event()
    failures: list[BaseException] = []  # the first is what cancelled the others

    def push(job: BlobJob) -> BlobResult:
        try:
            return push_blob(client, repo, job, chunk_size=chunk_size, cancel=cancel)
        except BaseException as error:
            failures.append(error)
            # Here, not in the waiting thread: this worker takes the next queued job at once.
            cancel.set()
            raise

    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ociforge-push")
    futures: list[Future[BlobResult]] = []
    try:  # submitting too: the first jobs run (and may be interrupted) while others queue
        futures += [pool.submit(push, job) for job in jobs]
        for future in as_completed(futures):
            future.result()
    except Exception as error:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        # A cancelled upload may finish before the failure that cancelled it: report that.
        if failures and failures[0] is not error:
            raise failures[0] from None
        raise
    except BaseException:
        # Ctrl-C or SIGTERM: stop now, not when the workers' requests time out. They stop at
        # their next chunk or request; their sessions are deleted from here.
        cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        abort_open_uploads(client)
        raise
    pool.shutdown(wait=True)
    return [future.result() for future in futures]


@dataclass
class _Session:
    """One attempt at one blob: the upload session and the newest Location it announced."""

    client: RegistryClient
    repo: str
    key: str
    cancel: threading.Event | None
    location: httpx.URL

    @classmethod
    def start(
        cls, client: RegistryClient, repo: str, key: str, cancel: threading.Event | None
    ) -> _Session:
        # A body-less POST first: it answers any auth challenge before a body is streamed.
        started = client.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scopes=[repository_scope(repo)],
            key=key,
            cancel=cancel,
        )
        session = cls(client, repo, key, cancel, client.location(started))
        client.uploads.opened(id(session), session.location, session.scopes)
        return session

    @property
    def scopes(self) -> list[str]:
        return [repository_scope(self.repo)]

    def send(
        self, stream_opener: StreamOpener, expected: Digest | None, chunk_size: int | None
    ) -> tuple[Digest, int]:
        stream = stream_opener()
        if chunk_size is not None:
            self._patch_chunks(stream, chunk_size)
        elif isinstance(stream, BytesBlob):
            list(stream)  # hash it; bytes can be repeated after a 401, a generator cannot
            self.patch(stream.data, {})
            self.client.on_event(BlobProgress(self.key, stream.size))
        else:
            chunks = _checked(stream, self.cancel, self.client, self.key)
            self.patch(reporting(chunks, self.key, self.client.on_event), {})
        digest, size = stream.digest, stream.size
        if expected is not None and digest != expected:
            self.abandon()
            raise DigestMismatchError(f"blob {self.key}", str(expected), str(digest))
        final = httpx.URL(f"{self.location}{'&' if self.location.query else '?'}digest={digest}")
        response = self.request("PUT", final, content=b"")
        self.client.uploads.closed(id(self))  # committed: nothing left to delete
        stored = response.headers.get("docker-content-digest")
        if stored and stored != str(digest):
            what = f"registry stored blob {self.key} (at {self.client.registry})"
            raise RegistryDigestError(what, str(digest), stored, url=redact_url(final))
        return digest, size

    def request(
        self, method: str, url: httpx.URL, content: Body = None, headers: Mapping[str, str] = _OCTET
    ) -> httpx.Response:
        return self.client.request(
            method,
            url,
            scopes=self.scopes,
            headers=headers,
            content=content,
            key=self.key,
            cancel=self.cancel,
        )

    def patch(self, content: Body, extra_headers: Mapping[str, str]) -> None:
        response = self.request("PATCH", self.location, content, {**_OCTET, **extra_headers})
        # The newest Location is the only valid one; a registry that sends none keeps the old.
        if "location" in response.headers:
            self.location = self.client.location(response)
            self.client.uploads.moved(id(self), self.location)

    def _patch_chunks(self, stream: BlobStream, chunk_size: int) -> None:
        offset = 0
        for piece in _rechunk(_checked(stream, self.cancel, self.client, self.key), chunk_size):
            # No "bytes " prefix: the distribution API's Content-Range is plain start-end.
            self.patch(piece, {"Content-Range": f"{offset}-{offset + len(piece) - 1}"})
            offset += len(piece)
            self.client.on_event(BlobProgress(self.key, len(piece)))

    def abandon(self) -> None:
        """Best-effort DELETE of a session we will not finish (it would expire anyway)."""
        self.client.uploads.closed(id(self))
        _cancel_session(self.client, self.location, self.scopes)


def _is_set(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


def _checked(
    chunks: Iterable[bytes], cancel: threading.Event | None, client: RegistryClient, key: str
) -> Iterator[bytes]:
    """The blob's chunks, stopping at a cancel or at the deadline: a registry that takes
    the body slowly but steadily never stalls, so only the deadline ends such an upload."""
    sent = 0
    for chunk in chunks:
        if _is_set(cancel):
            raise RegistryError(f"upload {_CANCELLED}")
        client.check_deadline(f"{key} was still uploading ({sent} bytes sent)")
        if chunk:
            sent += len(chunk)
            yield chunk


def _rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


def _cancel_session(client: RegistryClient, location: httpx.URL, scopes: Sequence[str]) -> None:
    """Best-effort DELETE of an upload session we will not finish (it would expire anyway):
    tried once with a short timeout, even after a cancel or the deadline, for a push that
    stops must end now."""
    client.abort_request("DELETE", location, scopes)


def abort_open_uploads(client: RegistryClient) -> int:
    """DELETE every upload session of ``client`` still open (an interrupted push: its
    workers may be blocked in a request that only a timeout ends). Returns how many."""
    sessions = client.uploads.take()
    for location, scopes in sessions:
        _cancel_session(client, location, scopes)
    return len(sessions)
