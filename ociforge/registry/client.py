"""One registry, one ``httpx.Client``: scheme and TLS choice, authentication, retries.

``RegistryClient.request`` is the single door to the network. It adds the Authorization header
(only for the registry's own origin), answers a 401 challenge once by repeating the request with
fresh credentials (bodies that are ``bytes`` or absent can be repeated; a streamed body cannot,
so that 401 surfaces as a temporary error and the caller restarts the blob), maps every answer
through :func:`check_response` and retries temporary failures in place with exponential
backoff, honouring ``Retry-After``. PATCH is never repeated in place: after a failure the
session's state is unknown, and the robust unit of retry is the whole blob in a new session.

A request that was repeated in place until ``retries`` ran out has had its budget: callers
must not start it over (a blob restart after it would multiply the budget). A ``cancel``
event stops the retry loop: no request starts once it is set, and backoff waits end early.

Nothing a registry sends is trusted to end. Two clocks bound it: ``stall_timeout`` (no byte
moving either way for that long: a temporary error, handled by the retry policy like any other)
and ``timeout``, the deadline of everything this client does (no request starts after it, each
socket wait is cut to it, and a body still trickling in or out is dropped at it: a final error).
Every body is read as a stream against a size limit (``max_body``; 64 KiB of an error page),
refused before reading when its Content-Length is over it and never buffered past it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from types import TracebackType

import httpx

from ociforge.errors import AuthError, RegistryError, UsageError
from ociforge.events import BlobRetry, Message, ProgressCallback, ignore_event
from ociforge.registry.auth import Authenticator
from ociforge.registry.credentials import Credentials
from ociforge.registry.responses import (
    ERROR_BODY_LIMIT,
    check_response,
    error_from_exception,
    error_from_response,
    install_log_redaction,
    redact_url,
)

log = logging.getLogger(__name__)

Body = bytes | Iterable[bytes] | None
Transport = httpx.BaseTransport  # what RegistryClient talks through (the test seam)
DEFAULT_STALL_TIMEOUT = 60.0
CONNECT_TIMEOUT = 15.0
ABORT_TIMEOUT = 1.0  # a best-effort request of a push that is stopping (DELETE of a session)
DEFAULT_BODY_LIMIT = 1 << 20  # an answer that is no document (ping, upload steps)
UNREAD = -1  # max_body of open_stream: a successful answer's body is left for the caller
TOKEN_BODY_LIMIT = 1 << 20
_MAX_REDIRECTS = 5
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Docker Hub's references say docker.io; its API lives elsewhere.
_API_HOSTS = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}
_MAX_BACKOFF = 30.0
USER_AGENT = "ociforge/0.1"


class RegistryClient:
    """HTTP access to one registry (``host[:port]``); thread-safe, use as a context manager.

    Plain http is used when ``insecure`` is true, or when it is None (the default) and the host
    is loopback; otherwise https with verified TLS (``ca_file`` adds a CA bundle). ``transport``
    is the test seam (``httpx.MockTransport``); ``sleep`` (None: wait in real time, cut short
    by a cancel event) and ``clock`` are injectable for the same reason. ``retries`` is the
    budget of one request (repeated in place) and of one blob (restarted in a fresh session
    after a failure that only a new session cures); see :meth:`request`.
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool | None = None,
        ca_file: str | None = None,
        transport: httpx.BaseTransport | None = None,
        retries: int = 5,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        on_event: ProgressCallback = ignore_event,
        timeout: float | None = None,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.base_url = _base_url(registry, insecure)
        self.insecure = self.base_url.scheme == "http"
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.on_event = on_event
        self.sleep = sleep
        self.timeout = timeout
        self.stall_timeout = stall_timeout
        self._clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        self.auth = Authenticator(credentials, self._fetch_token, clock=clock)
        self.uploads = OpenUploads()
        install_log_redaction()
        self._http = httpx.Client(
            transport=transport or _plain_transport(),
            mounts=None if transport else {"https://": _tls_transport(ca_file)},
            # Identity: a compressed body could expand past any limit within one read.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def url(self, path: str) -> httpx.URL:
        return self.base_url.join(path)

    def ping(self, *, cancel: threading.Event | None = None) -> None:
        """``GET /v2/``: checks reachability and TLS, and that credentials (if any) work.

        Without credentials a 401 is fine: it only says which authentication the registry uses.
        """
        anonymous = self.auth.credentials is None
        expect = range(200, 300) if not anonymous else {200, 401}
        self.request("GET", "/v2/", expect=expect, cancel=cancel)

    def request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        content: Body = None,
        expect: Container[int] | None = None,
        key: str | None = None,
        authenticate: bool = True,
        follow_redirects: bool = False,
        retry: bool = True,
        cancel: threading.Event | None = None,
        max_body: int = DEFAULT_BODY_LIMIT,
    ) -> httpx.Response:
        """Send one request; raise RegistryError/AuthError unless the status is expected.

        A temporary failure is repeated in place, ``retries`` times at most, unless ``retry``
        is false (a best-effort request) or the request cannot be repeated (see
        :meth:`repeats_in_place`). Once ``cancel`` is set nothing more is sent. A successful
        answer's body longer than ``max_body`` bytes is an error (see the module doc).
        """
        target = self.url(url) if isinstance(url, str) else url
        streamed = content is not None and not isinstance(content, bytes)
        repeatable = retry and self.repeats_in_place(method, content)
        attempt = 0
        while True:
            _stop_if_cancelled(cancel, f"{method} {redact_url(target)} not sent")
            self.check_deadline(f"{method} {target.path} was not sent")
            try:
                outgoing = self._build(method, target, headers, content, self._timeouts())
                response = self._send(
                    outgoing,
                    scopes if authenticate else None,
                    streamed,
                    follow_redirects,
                    max_body,
                )
                check_response(
                    response, expect=expect, auth_hint=self.auth_hint(target), now=time.time()
                )
                return response
            except RegistryError as error:
                attempt += 1
                wait = self.retry_delay(error, attempt) if repeatable else None
                if wait is None:
                    raise
                self.announce_retry(error, attempt, wait, key=key, cancel=cancel)

    @staticmethod
    def repeats_in_place(method: str, content: Body) -> bool:
        """Whether :meth:`request` repeats this request itself after a temporary failure.

        Not a streamed body (consumed by the first try) and not a PATCH (the upload session's
        state is unknown after a failed one): their failures are for the caller to cure by
        restarting the whole blob.
        """
        return method != "PATCH" and (content is None or isinstance(content, bytes))

    @contextlib.contextmanager
    def open_stream(
        self,
        url: httpx.URL | str,
        *,
        scopes: Sequence[str],
        headers: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[httpx.Response]:
        """GET whose successful answer is not read: the caller streams it with
        :meth:`iter_body` (a blob of any size, never held whole). Everything up to the first
        body byte (auth challenge, redirects without our credentials, retries in place) is as
        in :meth:`request`; the response is closed on leaving the block."""
        response = self.request(
            "GET",
            url,
            scopes=scopes,
            headers=headers,
            follow_redirects=True,
            cancel=cancel,
            max_body=UNREAD,
        )
        try:
            yield response
        finally:
            response.close()

    def iter_body(
        self, response: httpx.Response, *, cancel: threading.Event | None = None
    ) -> Iterator[bytes]:
        """The body of an :meth:`open_stream` answer as it arrives: a stall or a broken
        connection is a temporary RegistryError, the deadline and ``cancel`` end it."""
        request = response.request
        received = 0
        _check_encoding(response)
        try:
            for chunk in _raw(response):
                _stop_if_cancelled(cancel, f"{request.method} {request.url.path} stopped")
                self.check_deadline(
                    f"{request.method} {request.url.path} was still arriving "
                    f"({received} bytes so far)"
                )
                received += len(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, request.method, request.url) from None

    def retry_delay(
        self, error: RegistryError, attempt: int, *, temporary: bool | None = None
    ) -> float | None:
        """Seconds before attempt ``attempt + 1``, or None when ``error`` must be raised.

        ``temporary`` overrides ``error.temporary`` for callers that know better (a stale
        upload session is permanent for the request but not for the blob).
        """
        if not (error.temporary if temporary is None else temporary) or attempt > self.retries:
            return None
        if error.retry_after is not None:
            # Honour the registry's wish, but do not hang a build for an hour on it.
            wait: float = error.retry_after
            return wait if wait <= self.max_wait else None
        return min(self.backoff * 2.0 ** (attempt - 1), _MAX_BACKOFF)

    def announce_retry(
        self,
        error: RegistryError,
        attempt: int,
        wait: float,
        *,
        key: str | None = None,
        restart: bool = False,
        cancel: threading.Event | None = None,
    ) -> None:
        """Log the retry, tell the progress callback, wait (raising if ``cancel`` is set).

        ``restart`` means the blob ``key`` is sent again from byte 0 (BlobRetry: its progress
        restarts); a request repeated in place sends no blob bytes again and is only a Message.
        """
        left = self.remaining()
        if left is not None and wait >= left:
            # Waiting would end after the deadline: say now what kept failing.
            raise self._past_deadline(f"the last try failed ({error})")
        log.info("retry %d/%d in %.1fs: %s", attempt, self.retries, wait, error)
        if restart and key is not None:
            self.on_event(BlobRetry(key, attempt, str(error)))
        else:
            prefix = f"{key}: " if key else ""
            text = f"{prefix}retry {attempt}/{self.retries} in {wait:.1f}s: {error}"
            self.on_event(Message(text))
        self._pause(wait, cancel)
        _stop_if_cancelled(cancel, f"{key or error.method or 'request'} not retried")

    def remaining(self) -> float | None:
        """Seconds left before the deadline (negative once past it), None without one."""
        return None if self.deadline is None else self.deadline - self._clock()

    def check_deadline(self, what: str) -> None:
        """RegistryError (final) once the deadline has passed; ``what`` says what stopped."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise self._past_deadline(what)

    def _past_deadline(self, what: str) -> RegistryError:
        return RegistryError(
            f"gave up on {self.registry} after {self.timeout:g} s (--timeout): {what}",
            temporary=False,
        )

    def abort_request(self, method: str, url: httpx.URL, scopes: Sequence[str]) -> None:
        """One try of a best-effort request for a push that is stopping: past the deadline
        and after a cancel too, but waiting at most ABORT_TIMEOUT per step, never retried."""
        timeouts = httpx.Timeout(ABORT_TIMEOUT)
        try:
            request = self._build(method, url, _OCTET_HEADERS, None, timeouts)
            sent = self.auth.authorization(scopes) if self._own(url) else None
        except (RegistryError, httpx.HTTPError) as error:
            log.debug("%s %s not sent: %s", method, redact_url(url), error)
            return
        if sent is not None:
            request.headers["Authorization"] = sent
        try:
            response = self._http.send(request, stream=True)
            response.close()
            log.debug("%s %s -> %d", method, redact_url(url), response.status_code)
        except httpx.HTTPError as exc:
            log.debug("%s %s failed: %s", method, redact_url(url), type(exc).__name__)

    def _timeouts(self) -> httpx.Timeout:
        """Per socket wait: the stall timeout, cut to what is left before the deadline."""
        stall = self.stall_timeout
        left = self.remaining()
        if left is not None:
            stall = max(0.001, min(stall, left))
        return httpx.Timeout(stall, connect=min(CONNECT_TIMEOUT, stall))

    def _pause(self, seconds: float, cancel: threading.Event | None) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        elif cancel is not None:
            cancel.wait(seconds)  # returns as soon as another worker gives up
        else:
            time.sleep(seconds)

    def location(self, response: httpx.Response) -> httpx.URL:
        """The response's ``Location``, resolved against the request URL.

        A registry behind a TLS-offloading proxy announces ``http://`` for its own host (it
        sees plain http); following it would downgrade to plain text or hit a closed port. So
        for our own host name, a Location with another scheme gets our scheme and port.
        """
        value = response.headers.get("location")
        if not value:
            request = response.request
            raise RegistryError(
                f"{request.url.host} answered {request.method} {request.url.path} without a "
                "Location header",
                method=request.method,
                url=redact_url(request.url),
                status=response.status_code,
            )
        url = response.request.url.join(value)
        base = self.base_url
        if url.host == base.host and url.scheme != base.scheme:
            log.debug("Location %s: keeping our scheme %s", redact_url(url), base.scheme)
            url = url.copy_with(scheme=base.scheme, port=base.port)
        return url

    def auth_hint(self, url: httpx.URL | None = None) -> str:
        """What to do about a refusal of ``url`` (a registry or token service URL)."""
        creds = self.auth.credentials
        foreign = foreign_repositories(creds, url) if url is not None else []
        if creds is not None and creds.ci_project and foreign:
            return (
                f"{', '.join(foreign)} is outside this job's project: the CI job token can only "
                f"push to its own project (CI_PROJECT_PATH={creds.ci_project}); for another "
                "project add this project to its job token allowlist (Settings > CI/CD > Job "
                "token permissions) for pulls, or use a deploy token / access token with "
                "write_registry via OCIFORGE_USERNAME/OCIFORGE_PASSWORD"
            )
        if creds is None:
            return (
                f"no credentials found for {self.registry}: use --username/--password-stdin, "
                "OCIFORGE_USERNAME/OCIFORGE_PASSWORD or docker login"
            )
        return (
            f"check the credentials from {creds.source}: rejected, expired, or without "
            "access to this repository"
        )

    def _build(
        self,
        method: str,
        url: httpx.URL,
        headers: Mapping[str, str] | None,
        content: Body,
        timeouts: httpx.Timeout,
    ) -> httpx.Request:
        try:
            return self._http.build_request(
                method, url, headers=headers, content=content, timeout=timeouts
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise error_from_exception(exc, method, url) from None

    def _own(self, url: httpx.URL) -> bool:
        base = self.base_url
        return (url.scheme, url.host, url.port) == (base.scheme, base.host, base.port)

    def _send(
        self,
        request: httpx.Request,
        scopes: Sequence[str] | None,
        streamed: bool,
        follow_redirects: bool,
        max_body: int,
    ) -> httpx.Response:
        """Send with credentials for our own origin; answer one 401 challenge if repeatable.

        ``scopes`` None means unauthenticated (the token request itself). Credentials never go
        to another origin (a Location or redirect pointing at a storage backend).
        """
        own = scopes is not None and self._own(request.url)
        sent = self.auth.authorization(scopes or ()) if own else None
        if sent is not None:
            request.headers["Authorization"] = sent
        response = self._transmit(request, follow_redirects, max_body)
        if response.status_code != 401 or not own:
            return response
        challenge = response.headers.get("www-authenticate", "")
        repeat_scopes = self.auth.on_unauthorized(challenge, scopes or (), sent)
        if repeat_scopes is None:
            return response
        if streamed:
            # The body generator is consumed; repeating needs the caller to reopen the stream.
            hint = self.auth_hint(request.url)
            error = error_from_response(response, auth_hint=hint)
            error.temporary = True
            raise error
        log.debug("%s %s: answering the auth challenge", request.method, redact_url(request.url))
        fresh = self.auth.authorization(repeat_scopes)
        if fresh is not None:
            request.headers["Authorization"] = fresh
        return self._transmit(request, follow_redirects, max_body)

    def _transmit(
        self, request: httpx.Request, follow_redirects: bool, max_body: int
    ) -> httpx.Response:
        """Send, follow redirects ourselves (each hop's body bounded too), read the body."""
        for _ in range(_MAX_REDIRECTS + 1):
            response = self._exchange(request, max_body)
            following = response.next_request if follow_redirects else None
            if following is None:
                return response
            request = following
        raise RegistryError(
            f"{request.url.host} redirected {request.method} {request.url.path} more than "
            f"{_MAX_REDIRECTS} times",
            method=request.method,
            url=redact_url(request.url),
        )

    def _exchange(self, request: httpx.Request, max_body: int) -> httpx.Response:
        """One hop, its body read (bounded); with ``max_body=UNREAD`` a success is returned
        unread and open, for the caller to stream (:meth:`open_stream`)."""
        method, url = request.method, request.url
        try:
            response = self._http.send(request, stream=True)
            if max_body == UNREAD and response.is_success:
                log.debug("%s %s -> %d (streamed)", method, redact_url(url), response.status_code)
                return response
            try:
                body = self._read_body(response, max_body)
            finally:
                response.close()
        except httpx.HTTPError as exc:
            log.debug("%s %s: %s", method, redact_url(url), type(exc).__name__)
            raise self._transport_error(exc, method, url) from None
        log.debug("%s %s -> %d", method, redact_url(url), response.status_code)
        return _with_body(response, body)

    def _read_body(self, response: httpx.Response, limit: int) -> bytes:
        """The body, read as it streams; past ``limit`` bytes an error (a success) or cut (an
        error page: 64 KiB say all a message can use). Never more than the limit is held."""
        request = response.request
        success = response.is_success
        limit = limit if success else ERROR_BODY_LIMIT
        declared = response.headers.get("content-length", "")
        if success and request.method != "HEAD" and declared.isdigit() and int(declared) > limit:
            raise _too_large(response, f"of {int(declared)} bytes (Content-Length), unread", limit)
        if not success and _encoded(response):
            return b""  # an error page we cannot read safely: its status says enough
        _check_encoding(response)
        body = bytearray()
        for chunk in _raw(response):  # raw: the limits count what arrives
            body += chunk
            if len(body) > limit:
                if success:
                    raise _too_large(response, f"of more than {limit} bytes", limit)
                del body[limit:]
                break
            # A registry trickling its answer moves bytes and never stalls: the deadline ends it.
            self.check_deadline(
                f"{request.method} {request.url.path}: the answer was still arriving "
                f"({len(body)} bytes so far)"
            )
        return bytes(body)

    def _transport_error(self, exc: httpx.HTTPError, method: str, url: httpx.URL) -> RegistryError:
        """A timeout names what stalled, and past the deadline is final; the rest is mapped
        by :func:`error_from_exception`."""
        if not isinstance(exc, httpx.TimeoutException):
            return error_from_exception(exc, method, url)
        what = _STALLS.get(type(exc), "stalled").format(
            host=url.netloc.decode("ascii", "replace"), method=method, path=url.path
        )
        left = self.remaining()
        if left is not None and left <= 0:
            return self._past_deadline(what)
        return RegistryError(
            f"{method} {redact_url(url)} failed: {what} for {self.stall_timeout:g} s",
            method=method,
            url=redact_url(url),
            temporary=True,
        )

    def _fetch_token(
        self, realm: str, params: Sequence[tuple[str, str]], basic: str | None
    ) -> Mapping[str, object]:
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise AuthError(f"the registry named an invalid token realm {realm!r}") from None
        if url.scheme not in ("http", "https"):
            raise AuthError(f"the token realm {redact_url(url)} is not an http(s) URL")
        if basic and url.scheme == "http" and not (self.insecure or url.host in LOOPBACK_HOSTS):
            raise AuthError(
                f"refusing to send credentials to the plain-http token realm {redact_url(url)}"
            )
        headers = {"Authorization": basic} if basic else {}
        response = self.request(
            "GET",
            url.copy_merge_params(list(params)),
            headers=headers,
            authenticate=False,
            max_body=TOKEN_BODY_LIMIT,
        )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthError(f"token service {redact_url(url)} answered something that is not JSON")
        return answer


_REPO_PATH_RE = re.compile(r"^/v2/(?P<name>.+?)/(?:blobs|manifests)/")
_OCTET_HEADERS = {"Content-Type": "application/octet-stream"}
_STALLS: dict[type[httpx.TimeoutException], str] = {
    httpx.ConnectTimeout: "could not connect to {host}",
    httpx.ReadTimeout: "{host} sent nothing in answer to {method} {path}",
    httpx.WriteTimeout: "{host} took no bytes of the {method} {path} body",
    httpx.PoolTimeout: "no connection to {host} came free",
}


class OpenUploads:
    """Upload sessions started and neither finished nor deleted, so that an interrupted push
    can delete them (a registry keeps an abandoned one, and its bytes, for hours)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[httpx.URL, tuple[str, ...]]] = {}

    def opened(self, key: int, location: httpx.URL, scopes: Sequence[str]) -> None:
        with self._lock:
            self._open[key] = (location, tuple(scopes))

    def moved(self, key: int, location: httpx.URL) -> None:
        with self._lock:
            if key in self._open:
                self._open[key] = (location, self._open[key][1])

    def closed(self, key: int) -> None:
        with self._lock:
            self._open.pop(key, None)

    def take(self) -> list[tuple[httpx.URL, tuple[str, ...]]]:
        with self._lock:
            taken = list(self._open.values())
            self._open.clear()
        return taken


def foreign_repositories(creds: Credentials | None, url: httpx.URL) -> list[str]:
    """Repositories ``url`` names (a registry path, or a token request's scopes) that are
    outside the GitLab project of a CI job token; [] for other credentials."""
    if creds is None or not creds.ci_project:
        return []
    scopes = [s for value in url.params.get_list("scope") for s in value.split()]
    names = [s.split(":")[1] for s in scopes if s.startswith("repository:") and s.count(":") == 2]
    match = _REPO_PATH_RE.match(url.path)
    if match is not None:
        names.append(match["name"])
    project = creds.ci_project.lower()  # repository names are lower case, project paths not
    return sorted({n for n in names if n != project and not n.startswith(project + "/")})


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """A closed response carrying ``body`` (already decoded: no Content-Encoding any more)."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "content-encoding"]
    answer = httpx.Response(
        response.status_code,
        headers=headers,
        content=body,
        request=response.request,
        extensions=response.extensions,
    )
    answer.next_request = response.next_request
    return answer


def _too_large(response: httpx.Response, what: str, limit: int) -> RegistryError:
    request = response.request
    return RegistryError(
        f"{request.url.host} answered {request.method} {request.url.path} with a body "
        f"{what}; at most {limit} bytes are expected: refused",
        method=request.method,
        url=redact_url(request.url),
        status=response.status_code,
    )


def _stop_if_cancelled(cancel: threading.Event | None, what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise RegistryError(f"{what}: cancelled because another operation failed")


def _base_url(registry: str, insecure: bool | None) -> httpx.URL:
    host = registry.lower()
    hostname = host[1:].split("]")[0] if host.startswith("[") else host.split(":")[0]
    plain = insecure if insecure is not None else hostname in LOOPBACK_HOSTS
    try:
        return httpx.URL(f"{'http' if plain else 'https'}://{_API_HOSTS.get(host, host)}")
    except httpx.InvalidURL:
        raise UsageError(f"invalid registry host {registry!r}") from None


def check_ca_bundle(ca_file: str) -> None:
    """UsageError now, before any work, if ``ca_file`` is not a CA bundle ssl can load."""
    _tls_context(ca_file)


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"cannot load CA bundle {ca_file}: {exc}") from None


def _plain_transport() -> httpx.HTTPTransport:
    # For http:// URLs only (https has its own mount): no TLS, so no CA store to load.
    return httpx.HTTPTransport(verify=False)


def _tls_transport(ca_file: str | None) -> httpx.BaseTransport:
    """https with verified TLS. Loading the system CA store costs ~0.1 s, a fifth of a warm
    push to a plain-http registry that never uses it: it is loaded on the first https request.
    An explicit ``ca_file`` is loaded now, so a bad one is reported before any work."""
    if ca_file is not None:
        return httpx.HTTPTransport(verify=_tls_context(ca_file))
    return _LazyTransport(lambda: httpx.HTTPTransport(verify=_tls_context(None)))


class _LazyTransport(httpx.BaseTransport):
    """A transport made on its first request (thread-safe: uploads run in parallel)."""

    def __init__(self, make: Callable[[], httpx.BaseTransport]) -> None:
        self._make = make
        self._inner: httpx.BaseTransport | None = None
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            if self._inner is None:
                self._inner = self._make()
        return self._inner.handle_request(request)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def _check_encoding(response: httpx.Response) -> None:
    """We ask for ``identity``: a compressed answer could expand past every size limit (128 KiB
    of zstd is gigabytes), and a blob's digest is over its raw bytes. Refused, not decoded."""
    if _encoded(response):
        encoding = response.headers["content-encoding"]
        request = response.request
        raise RegistryError(
            f"{request.url.host} answered {request.method} {redact_url(request.url)} with "
            f"Content-Encoding {encoding!r} although identity was asked: refused",
            method=request.method,
            url=redact_url(request.url),
            status=response.status_code,
        )


def _encoded(response: httpx.Response) -> bool:
    return response.headers.get("content-encoding", "identity").strip().lower() not in (
        "",
        "identity",
    )


def _raw(response: httpx.Response) -> Iterator[bytes]:
    """The body's bytes as they arrive, undecoded; a body read already (an in-memory answer,
    as a test transport gives) as it is."""
    if response.is_stream_consumed:
        return iter([response.content])
    return response.iter_raw()
