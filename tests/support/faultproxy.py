"""A loopback reverse proxy in front of a registry that injects scripted faults.

Clients talk to the proxy as if it were the registry. Requests are forwarded as they arrive:
request bodies (``Content-Length`` or chunked) are decoded and re-sent piece by piece, and
responses are relayed piece by piece, so multi-gigabyte blobs never sit in memory. ``Location``
headers are rewritten to point at the proxy (or, on request, made relative or given the wrong
scheme, as behind TLS-offloading proxies).

A ``Fault`` matches on method + path regex and fires on the nth matching request (and the
``times - 1`` matching requests after it). Actions: answer a canned response (registry JSON
error, 429 with ``Retry-After``, an nginx-like HTML page), reset the connection after N bytes of
request body have been forwarded, delay, or answer 401 ``invalid_token`` as a registry does for
an expired token. Every request is recorded for assertions.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import re
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar, cast
from urllib.parse import urlsplit

from tests.support.loopbackapp import LoopbackApp
from tests.support.registry import LoopbackHandler, LoopbackHTTPServer

logger = logging.getLogger(__name__)

LocationMode = Literal["proxy", "relative", "wrong_scheme", "upstream"]
PIECE = 64 * 1024
# Headers that describe one hop, never forwarded (RFC 9110 7.6.1); the proxy sets its own
# framing and Host, and answers Expect: 100-continue itself (http.client does not speak it).
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "te", "trailer",
     "proxy-authorization", "transfer-encoding", "upgrade", "expect", "host", "content-length"}
)  # fmt: skip


@dataclass(frozen=True)
class Respond:
    """Answer instead of the registry. ``drain_body=False`` answers before reading the
    request body and closes the connection, like nginx rejecting a body that is too large."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    drain_body: bool = True


@dataclass(frozen=True)
class ResetConnection:
    """Forward ``after_body_bytes`` bytes of the request body, then reset both connections."""

    after_body_bytes: int = 0


@dataclass(frozen=True)
class Delay:
    """Wait, then forward normally."""

    seconds: float


@dataclass(frozen=True)
class Dribble:
    """Answer 200 announcing ``size`` bytes of body, then send one byte every ``interval``
    seconds: a registry that is never silent long enough to stall, and never finishes."""

    interval: float = 0.5
    size: int = 1000


@dataclass(frozen=True)
class InvalidToken:
    """401 with the registry's own Bearer challenge plus ``error="invalid_token"``, as 2.8.2
    answers an expired token; the request never reaches the registry. Needs a token registry."""


FaultAction = Respond | ResetConnection | Delay | Dribble | InvalidToken


A = TypeVar("A", covariant=True)  # a Fault[Respond] is a Fault[FaultAction]


@dataclass(frozen=True)
class Fault(Generic[A]):
    """A scripted fault for the proxy, and (with its own actions) the in-process transport."""

    method: str  # "*" matches any method
    path: str  # regular expression searched in the request path (without the query)
    action: A
    nth: int = 1  # first matching request (1-based) that gets the fault
    times: int = 1  # number of consecutive matching requests that get it

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and re.search(self.path, path) is not None


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str
    query: str
    status: int | None  # None: the connection was reset or broke
    fault: str | None  # name of the action that fired
    body_bytes: int  # request body bytes read from the client


def registry_error(status: int, code: str, message: str) -> Respond:
    """A distribution-style JSON error, e.g. ``registry_error(503, "UNAVAILABLE", ...)``."""
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})
    return Respond(status, body.encode(), (("Content-Type", "application/json"),))


def too_many_requests(retry_after: int = 1) -> Respond:
    body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "too many requests"}]})
    headers = (("Content-Type", "application/json"), ("Retry-After", str(retry_after)))
    return Respond(429, body.encode(), headers)


def html_page(status: int, *, drain_body: bool = True) -> Respond:
    """The HTML error page an nginx in front of a registry sends (502, 504, 413, 403...)."""
    title = f"{status} {http.client.responses.get(status, 'Error')}"
    body = (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    headers = (("Content-Type", "text/html"),)
    return Respond(status, body.encode(), headers, drain_body)


@dataclass
class _Armed:
    fault: Fault[FaultAction]
    seen: int = 0


@dataclass
class _State:
    faults: list[_Armed] = field(default_factory=list)
    requests: list[ProxiedRequest] = field(default_factory=list)
    arrivals: list[tuple[str, str]] = field(default_factory=list)  # (method, path) on arrival


class FaultProxy(LoopbackApp):
    """Threaded reverse proxy on 127.0.0.1; start/stop or use as a context manager."""

    def __init__(self, upstream_url: str, *, location_mode: LocationMode = "proxy") -> None:
        super().__init__(_Handler)
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream_netloc = parts.netloc
        self.upstream_address = (parts.hostname, parts.port)
        self.location_mode: LocationMode = location_mode
        self._state = _State()

    def add_fault(self, *faults: Fault[FaultAction]) -> None:
        with self._lock:
            self._state.faults.extend(_Armed(f) for f in faults)

    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._state.requests)

    def count(self, method: str = "*", path: str = "") -> int:
        """Requests seen whose method matches (``*`` = any) and whose path matches the regex."""
        return sum(
            1
            for r in self.requests
            if method in ("*", r.method) and re.search(path, r.path) is not None
        )

    def arrived(self, method: str = "*", path: str = "") -> int:
        """Like :meth:`count`, but counting requests as they arrive: one a fault is still
        delaying is not in ``requests`` yet (it is recorded when it is answered)."""
        with self._lock:
            arrivals = list(self._state.arrivals)
        return sum(1 for m, p in arrivals if method in ("*", m) and re.search(path, p) is not None)

    def faults_fired(self) -> list[ProxiedRequest]:
        return [r for r in self.requests if r.fault is not None]

    def rewrite_location(self, location: str) -> str:
        parts = urlsplit(location)
        relative = parts.path + (f"?{parts.query}" if parts.query else "")
        if parts.netloc and parts.netloc != self.upstream_netloc:
            return location  # points elsewhere (a redirect to storage): not ours to touch
        if self.location_mode == "relative":
            return relative
        if self.location_mode == "wrong_scheme":
            return f"https://{self.host}{relative}"
        if self.location_mode == "proxy" and parts.netloc:
            return f"http://{self.host}{relative}"
        return location

    def _select(self, method: str, path: str) -> FaultAction | None:
        chosen: FaultAction | None = None
        with self._lock:
            self._state.arrivals.append((method, path))
            for armed in self._state.faults:
                if not armed.fault.matches(method, path):
                    continue
                armed.seen += 1
                fault = armed.fault
                if chosen is None and fault.nth <= armed.seen < fault.nth + fault.times:
                    chosen = fault.action
        return chosen

    def _record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self._state.requests.append(request)


class _RequestBody:
    """The client's request body, decoded from Content-Length or chunked framing, streamed.
    With ``stop_at`` set, reading stops after exactly that many bytes (for resets)."""

    def __init__(self, rfile: io.BufferedIOBase, chunked: bool, length: int) -> None:
        self._rfile = rfile
        self.chunked = chunked
        self.remaining = length
        self.received = 0
        self.finished = not chunked and length == 0
        self.stop_at: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        pieces = self._chunked_pieces() if self.chunked else self._sized_pieces()
        for piece in pieces:
            self.received += len(piece)
            yield piece
            if self.stop_at is not None and self.received >= self.stop_at:
                return
        self.finished = True

    def drain(self) -> None:
        for _ in self:
            pass

    def _sized_pieces(self) -> Iterator[bytes]:
        while self.remaining > 0:
            want = min(PIECE, self.remaining)
            if self.stop_at is not None:
                want = min(want, self.stop_at - self.received)
            piece = self._rfile.read(want)
            if not piece:
                raise ConnectionError("client closed the connection mid-body")
            self.remaining -= len(piece)
            yield piece

    def _chunked_pieces(self) -> Iterator[bytes]:
        while True:
            size_line = self._rfile.readline(1024)
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise ConnectionError(f"bad chunk size line {size_line[:40]!r}") from None
            if size == 0:
                while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are dropped
                return
            self.remaining = size
            yield from self._sized_pieces()
            self._rfile.readline(16)  # CRLF after the chunk data


class _Handler(LoopbackHandler):
    @property
    def app(self) -> FaultProxy:
        return cast(FaultProxy, cast(LoopbackHTTPServer, self.server).app)

    # Per-request bookkeeping, reset by _handle; these defaults cover answers sent before it
    # runs (100 Continue, 400 for a malformed request line), which are not recorded.
    _recorded = True
    _status = 0
    _fault: str | None = None
    _body: _RequestBody

    def _handle(self) -> None:
        url = urlsplit(self.path)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = 0 if chunked else int(self.headers.get("Content-Length") or 0)
        self._body = _RequestBody(self.rfile, chunked, length)
        action = self.app._select(self.command, url.path)
        self._fault = type(action).__name__ if action is not None else None
        self._recorded = False
        try:
            self._apply(action, self._body)
        except (OSError, http.client.HTTPException) as exc:
            logger.debug("fault proxy: %s %s broke: %s", self.command, url.path, exc)
            self.close_connection = True
        finally:
            if not self._body.finished:
                self.close_connection = True
            self._note(None)

    def _note(self, status: int | None) -> None:
        """Record this request once, *before* the client can see the outcome, so a test that
        has its answer also finds the request in ``requests``."""
        if self._recorded:
            return
        self._recorded = True
        url = urlsplit(self.path)
        self.app._record(
            ProxiedRequest(
                self.command, url.path, url.query, status, self._fault, self._body.received
            )
        )

    def end_headers(self) -> None:
        if self._status >= 200:  # not for the interim "100 Continue"
            self._note(self._status)
        super().end_headers()

    def send_response_only(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response_only(code, message)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _apply(self, action: FaultAction | None, body: _RequestBody) -> None:
        if isinstance(action, Respond):
            if action.drain_body:
                body.drain()
            else:
                self.close_connection = True
            self._send(action.status, list(action.headers), action.body)
        elif isinstance(action, ResetConnection):
            self._forward(body, reset_after=action.after_body_bytes)
        elif isinstance(action, InvalidToken):
            body.drain()
            self._invalid_token()
        elif isinstance(action, Dribble):
            body.drain()
            self._dribble(action)
        else:
            if isinstance(action, Delay):
                time.sleep(action.seconds)
            self._forward(body, reset_after=None)

    def _open_upstream(self, chunked: bool, length: int | None) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(*self.app.upstream_address, timeout=60)
        conn.connect()
        if conn.sock is not None:
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", self.app.upstream_netloc)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                conn.putheader(name, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif length is not None:
            conn.putheader("Content-Length", str(length))
        conn.endheaders()
        return conn

    def _forward(self, body: _RequestBody, reset_after: int | None) -> None:
        length = None if body.chunked else body.remaining
        if self.command in ("GET", "HEAD", "DELETE") and not length:
            length = None  # no body, no framing header: what clients send
        conn = self._open_upstream(body.chunked, length)
        try:
            try:
                complete = self._send_body(conn, body, reset_after)
            except OSError:
                # The registry answered early and hung up (e.g. 401 before reading a PATCH
                # body): its answer may still be readable, relay it if so.
                complete = True
            if not complete:
                _abort(conn.sock)
                self._note(None)
                self._reset_client()
                return
            self._relay(conn.getresponse())
        finally:
            conn.close()

    def _send_body(
        self, conn: http.client.HTTPConnection, body: _RequestBody, reset_after: int | None
    ) -> bool:
        """Stream the body upstream; False when a ResetConnection fault cut it (a body
        shorter than the limit is cut at its end, before the registry can answer)."""
        body.stop_at = reset_after
        for piece in body:
            conn.send(_frame(piece, body.chunked))
        if reset_after is not None:
            return False
        if body.chunked:
            conn.send(b"0\r\n\r\n")
        return True

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        headers = [
            (k, self.app.rewrite_location(v) if k.lower() == "location" else v) for k, v in headers
        ]
        self.send_response_only(resp.status, resp.reason)
        for name, value in headers:
            self.send_header(name, value)
        bodiless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        declared = resp.getheader("Content-Length")
        if declared is not None:
            self.send_header("Content-Length", declared)
        elif not bodiless:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if not bodiless:
            while piece := resp.read(PIECE):
                self.wfile.write(_frame(piece, declared is None))
            if declared is None:
                self.wfile.write(b"0\r\n\r\n")

    def _dribble(self, action: Dribble) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.send_header("Content-Length", str(action.size))
        self.end_headers()
        for _ in range(action.size):  # ends with an OSError once the client has hung up
            self.wfile.write(b" ")
            self.wfile.flush()
            time.sleep(action.interval)

    def _invalid_token(self) -> None:
        # The registry's challenge for this very request, asked for without credentials.
        conn = http.client.HTTPConnection(*self.app.upstream_address, timeout=60)
        try:
            headers = {"Host": self.app.upstream_netloc, "Content-Length": "0"}
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            challenge = resp.getheader("WWW-Authenticate") or ""
        finally:
            conn.close()
        if resp.status != 401 or not challenge.startswith("Bearer "):
            self._send(500, [], b"InvalidToken fault: the upstream registry does not use tokens")
            return
        challenge += ',error="invalid_token"'
        headers_out = [("WWW-Authenticate", challenge), ("Content-Type", "application/json")]
        self._send(401, headers_out, payload)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset_client(self) -> None:
        self.close_connection = True
        self.rfile.close()  # drops makefile's reference so close() really closes the socket
        _abort(self.connection)


def _frame(piece: bytes, chunked: bool) -> bytes:
    return b"%x\r\n%s\r\n" % (len(piece), piece) if chunked and piece else piece


def _abort(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, not an orderly FIN."""
    if sock is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
