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
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from types import TracebackType

import httpx

from ociforge.errors import AuthError, RegistryError, UsageError
from ociforge.events import BlobRetry, Message, ProgressCallback, ignore_event
from ociforge.registry.auth import Authenticator
from ociforge.registry.credentials import Credentials
from ociforge.registry.responses import (
    check_response,
    error_from_exception,
    error_from_response,
    install_log_redaction,
    redact_url,
)

log = logging.getLogger(__name__)

Body = bytes | Iterable[bytes] | None
Transport = httpx.BaseTransport  # what RegistryClient talks through (the test seam)
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=15.0)
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
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
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
        self.auth = Authenticator(credentials, self._fetch_token, clock=clock)
        install_log_redaction()
        self._http = httpx.Client(
            transport=transport or _plain_transport(),
            mounts=None if transport else {"https://": _tls_transport(ca_file)},
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
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
    ) -> httpx.Response:
        """Send one request; raise RegistryError/AuthError unless the status is expected.

        A temporary failure is repeated in place, ``retries`` times at most, unless ``retry``
        is false (a best-effort request) or the request cannot be repeated (see
        :meth:`repeats_in_place`). Once ``cancel`` is set nothing more is sent.
        """
        target = self.url(url) if isinstance(url, str) else url
        streamed = content is not None and not isinstance(content, bytes)
        repeatable = retry and self.repeats_in_place(method, content)
        attempt = 0
        while True:
            _stop_if_cancelled(cancel, f"{method} {redact_url(target)} not sent")
            try:
                outgoing = self._build(method, target, headers, content)
                response = self._send(
                    outgoing, scopes if authenticate else None, streamed, follow_redirects
                )
                check_response(response, expect=expect, auth_hint=self.auth_hint(), now=time.time())
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
        log.info("retry %d/%d in %.1fs: %s", attempt, self.retries, wait, error)
        if restart and key is not None:
            self.on_event(BlobRetry(key, attempt, str(error)))
        else:
            prefix = f"{key}: " if key else ""
            text = f"{prefix}retry {attempt}/{self.retries} in {wait:.1f}s: {error}"
            self.on_event(Message(text))
        self._pause(wait, cancel)
        _stop_if_cancelled(cancel, f"{key or error.method or 'request'} not retried")

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

    def auth_hint(self) -> str:
        creds = self.auth.credentials
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
        self, method: str, url: httpx.URL, headers: Mapping[str, str] | None, content: Body
    ) -> httpx.Request:
        try:
            return self._http.build_request(method, url, headers=headers, content=content)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise error_from_exception(exc, method, url) from None

    def _send(
        self,
        request: httpx.Request,
        scopes: Sequence[str] | None,
        streamed: bool,
        follow_redirects: bool,
    ) -> httpx.Response:
        """Send with credentials for our own origin; answer one 401 challenge if repeatable.

        ``scopes`` None means unauthenticated (the token request itself). Credentials never go
        to another origin (a Location or redirect pointing at a storage backend).
        """
        url, base = request.url, self.base_url
        own = scopes is not None and (url.scheme, url.host, url.port) == (
            base.scheme,
            base.host,
            base.port,
        )
        sent = self.auth.authorization(scopes or ()) if own else None
        if sent is not None:
            request.headers["Authorization"] = sent
        response = self._transmit(request, follow_redirects)
        if response.status_code != 401 or not own:
            return response
        challenge = response.headers.get("www-authenticate", "")
        repeat_scopes = self.auth.on_unauthorized(challenge, scopes or (), sent)
        if repeat_scopes is None:
            return response
        if streamed:
            # The body generator is consumed; repeating needs the caller to reopen the stream.
            error = error_from_response(response, auth_hint=self.auth_hint())
            error.temporary = True
            raise error
        log.debug("%s %s: answering the auth challenge", request.method, redact_url(url))
        response.close()
        fresh = self.auth.authorization(repeat_scopes)
        if fresh is not None:
            request.headers["Authorization"] = fresh
        return self._transmit(request, follow_redirects)

    def _transmit(self, request: httpx.Request, follow_redirects: bool) -> httpx.Response:
        method, url = request.method, request.url
        try:
            response = self._http.send(request, follow_redirects=follow_redirects)
        except httpx.HTTPError as exc:
            log.debug("%s %s: %s", method, redact_url(url), type(exc).__name__)
            raise error_from_exception(exc, method, url) from None
        log.debug("%s %s -> %d", method, redact_url(url), response.status_code)
        return response

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
            "GET", url.copy_merge_params(list(params)), headers=headers, authenticate=False
        )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthError(f"token service {redact_url(url)} answered something that is not JSON")
        return answer


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
