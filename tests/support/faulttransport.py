"""An ``httpx.BaseTransport`` that puts scripted faults between a client and a handler.

The in-process sibling of ``faultproxy.py``: the same vocabulary (a ``Fault`` matches method +
path regex and fires on the nth matching request and the ``times - 1`` after it; ``Respond``,
``Delay`` and the ``registry_error`` / ``too_many_requests`` / ``html_page`` builders are shared),
but no sockets, so a whole push with faults runs in milliseconds. The handler is usually a
``FakeRegistry`` (see :func:`around`), which also serves the token endpoint.

Actions only a transport can play:

- ``ResetMidBody``: read part of the (streamed) request body, then raise ``httpx.ReadError``
  (or another transport error), as a connection reset in the middle of a PATCH does;
- ``ExpireToken``: the Bearer token this request carries expires now; the registry then
  answers 401 ``invalid_token`` to it and to every later request carrying it;
- ``Alter``: forward to the handler, then change the answer's status, headers or body (a
  registry lying about digests or sizes).

Every exchange is recorded (what was sent, what came back, which fault fired, when), so tests
can assert on the wire as a user's proxy log would show it.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.support.fakeregistry import FakeRegistry
from tests.support.faultproxy import (
    Delay,
    Fault,
    Respond,
    html_page,
    registry_error,
    too_many_requests,
)

__all__ = [
    "Alter",
    "Delay",
    "Exchange",
    "ExpireToken",
    "Fault",
    "FaultTransport",
    "ResetMidBody",
    "Respond",
    "around",
    "html_page",
    "registry_error",
    "too_many_requests",
]

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass(frozen=True)
class ResetMidBody:
    """Take ``after_bytes`` bytes of the request body, then raise ``error``.

    The client's stream is read chunk by chunk until that many bytes have gone (a chunk may be
    larger: its tail is lost on the wire); the exchange records exactly ``after_bytes``. The
    handler never sees the request: the registry got a truncated body and dropped it.
    """

    after_bytes: int = 1
    error: type[httpx.TransportError] = httpx.ReadError


@dataclass(frozen=True)
class ExpireToken:
    """The Bearer token of this request expires now (needs ``revoke_token``, see :func:`around`).

    The request goes on to the handler, which answers 401 ``invalid_token`` as 2.8.2 does,
    checked when the request starts; so does every later request that carries the same token.
    """


@dataclass(frozen=True)
class Alter:
    """Forward to the handler, then replace the answer's status, some headers, or the body."""

    status: int | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


FaultAction = Respond | Delay | ResetMidBody | ExpireToken | Alter


@dataclass(frozen=True)
class Exchange:
    """One request as the transport saw it, and what it answered (``status`` None: reset)."""

    method: str
    url: httpx.URL
    headers: httpx.Headers
    body: bytes  # the request body bytes read from the client (partial after a reset)
    status: int | None
    response_headers: httpx.Headers
    fault: str | None  # the name of the action that fired, if any
    started: float  # time.monotonic() when the request arrived

    @property
    def path(self) -> str:
        return self.url.path

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        return value[len("Bearer ") :] if value.startswith("Bearer ") else None


@dataclass
class _Armed:
    fault: Fault[FaultAction]
    seen: int = 0


@dataclass
class FaultTransport(httpx.BaseTransport):
    """Wraps ``handler``; thread-safe, as a push sends from several threads at once."""

    handler: Handler
    faults: list[Fault[FaultAction]] = field(default_factory=list)
    revoke_token: Callable[[str], None] | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    _armed: list[_Armed] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _serial: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._armed = [_Armed(f) for f in self.faults]

    def add(self, *faults: Fault[FaultAction]) -> None:
        with self._lock:
            self.faults.extend(faults)
            self._armed.extend(_Armed(f) for f in faults)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        started = time.monotonic()
        action = self._select(request)
        fault = type(action).__name__ if action is not None else None
        if isinstance(action, ResetMidBody):
            partial = _read_part(request, action.after_bytes)
            self._record(request, partial, None, httpx.Headers(), fault, started)
            raise action.error("connection reset by peer", request=request)
        try:
            response = self._apply(action, request)
        except BaseException:  # the body's generator gave up (a cancelled upload): recorded
            self._record(request, b"", None, httpx.Headers(), fault, started)
            raise
        body = request.content if _is_read(request) else b""
        self._record(request, body, response.status_code, response.headers, fault, started)
        return response

    # -- queries for tests ----------------------------------------------------------------------

    def calls(self, method: str = "*", path: str = "") -> list[Exchange]:
        """Exchanges whose method matches (``*`` = any) and whose path matches the regex."""
        with self._lock:
            return [
                e
                for e in self.exchanges
                if method in ("*", e.method) and re.search(path, e.path) is not None
            ]

    def fired(self) -> list[Exchange]:
        return [e for e in self.calls() if e.fault is not None]

    # -- internals ------------------------------------------------------------------------------

    def _select(self, request: httpx.Request) -> FaultAction | None:
        chosen: FaultAction | None = None
        with self._lock:
            for armed in self._armed:
                if not armed.fault.matches(request.method, request.url.path):
                    continue
                armed.seen += 1
                fault = armed.fault
                if chosen is None and fault.nth <= armed.seen < fault.nth + fault.times:
                    chosen = fault.action
        return chosen

    def _apply(self, action: FaultAction | None, request: httpx.Request) -> httpx.Response:
        if isinstance(action, Respond):
            if action.drain_body:
                request.read()
            return httpx.Response(
                action.status, headers=list(action.headers), content=action.body, request=request
            )
        if isinstance(action, Delay):
            time.sleep(action.seconds)
        request.read()  # as a server does; a streamed body's generator runs here
        if isinstance(action, ExpireToken):
            token = request.headers.get("authorization", "").removeprefix("Bearer ")
            if self.revoke_token is None:
                raise AssertionError("ExpireToken needs revoke_token (use around(fake, ...))")
            self.revoke_token(token)
        with self._serial:  # the fake is a plain object: one request at a time inside it
            response = self.handler(request)
            response.read()
        if isinstance(action, Alter):
            response = _altered(request, response, action)
        response.request = request
        return response

    def _record(
        self,
        request: httpx.Request,
        body: bytes,
        status: int | None,
        headers: httpx.Headers,
        fault: str | None,
        started: float,
    ) -> None:
        exchange = Exchange(
            request.method,
            request.url,
            request.headers.copy(),
            body,
            status,
            headers.copy(),
            fault,
            started,
        )
        with self._lock:
            self.exchanges.append(exchange)


def around(fake: FakeRegistry, *faults: Fault[FaultAction]) -> FaultTransport:
    """A FaultTransport in front of ``fake``, whose token revocation ``ExpireToken`` uses."""
    return FaultTransport(fake.handle, list(faults), revoke_token=fake.revoked.add)


def _is_read(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018  (raises RequestNotRead for an unread stream)
    except httpx.RequestNotRead:
        return False
    return True


def _read_part(request: httpx.Request, limit: int) -> bytes:
    """Consume the body until ``limit`` bytes have gone; the first ``limit`` bytes."""
    if _is_read(request):
        return request.content[:limit]
    read = bytearray()
    assert isinstance(request.stream, httpx.SyncByteStream)
    for chunk in request.stream:
        read += chunk
        if len(read) >= limit:
            break
    return bytes(read[:limit])


def _altered(request: httpx.Request, response: httpx.Response, alter: Alter) -> httpx.Response:
    headers = response.headers.copy()
    body = response.content
    if alter.body is not None:
        body = alter.body
        headers["content-length"] = str(len(body))
    for name, value in alter.headers:
        headers[name] = value
    status = response.status_code if alter.status is None else alter.status
    return httpx.Response(status, headers=headers, content=body, request=request)
