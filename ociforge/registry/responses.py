"""The one boundary where HTTP answers and httpx exceptions become RegistryError / AuthError.

Every message is one line: who answered what to which request, the registry's own error codes
or a short excerpt of a proxy's HTML page, and a hint when we know the usual cause. URLs are
redacted before they reach a message, an error attribute or a log record: no userinfo, no query
(upload ``_state`` and presigned-URL signatures are long and sometimes secret).
"""

from __future__ import annotations

import email.utils
import html
import json
import logging
import re
import socket
import time
from collections.abc import Container
from typing import TypeVar

import httpx

from ociforge.errors import AuthError, RegistryError

_EXCERPT_CHARS = 120
ERROR_BODY_LIMIT = 64 * 1024  # of an error answer, read for its codes and an excerpt
_AUTH_VALUE_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_USERINFO_RE = re.compile(r"://[^/\s@'\"]+@")
_QUERY_RE = re.compile(r"(https?://[^\s?#'\"<>]+)\?[^\s'\"<>]*")
# httpx logs every request URL at INFO and httpcore response headers (Location) at DEBUG.
_THIRD_PARTY_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
_TAG_RE = re.compile(r"<[^>]*>")
_TITLE_RE = re.compile(r"(?is)<title[^>]*>(.*?)</title>")
_DROP_RE = re.compile(r"(?is)<(script|style)[^>]*>.*?</\1>")

_CODE_HINTS = {
    "MANIFEST_BLOB_UNKNOWN": "a blob the manifest references is not in this repository "
    "(a mount that did not happen?); push layers and config before the manifest",
    "BLOB_UPLOAD_INVALID": "the upload session is stale or was replaced; the blob is retried "
    "in a fresh session",
    "BLOB_UPLOAD_UNKNOWN": "the upload session expired or was cancelled",
    "DIGEST_INVALID": "the uploaded bytes do not match the digest; the registry dropped them",
    "MANIFEST_INVALID": "the registry rejected the manifest: Content-Type must equal its "
    "mediaType, and only standard media types are accepted",
    "NAME_UNKNOWN": "the repository does not exist or is not visible to these credentials",
    "SIZE_INVALID": "the uploaded size differs from the declared one",
}


def redact_url(url: httpx.URL | str) -> str:
    """``scheme://host[:port]/path``: userinfo and query removed."""
    parsed = httpx.URL(url) if isinstance(url, str) else url
    port = f":{parsed.port}" if parsed.port is not None else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def redact_text(text: str) -> str:
    """Scrub what may hide in free text: userinfo, URL queries, Authorization values."""
    text = _QUERY_RE.sub(r"\1", _USERINFO_RE.sub("://", text))
    return _AUTH_VALUE_RE.sub(r"\1 <redacted>", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message through :func:`redact_text` (never drops records)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Put a RedactingFilter on httpx's and httpcore's loggers (idempotent).

    Logger filters are not inherited by child loggers, hence one per logger httpcore uses. The
    filter only rewrites text, so other users of httpx in the process lose nothing but secrets.
    """
    for name in _THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def is_temporary(status: int, codes: Container[str] = ()) -> bool:
    return status in (408, 429) or status >= 500 or "TOOMANYREQUESTS" in codes


def _racing_manifest(request: httpx.Request, codes: Container[str]) -> bool:
    """distribution 2.8.2 answers a manifest PUT with 400 DIGEST_INVALID when a blob it names
    is being committed by a concurrent upload at that moment (two CI jobs pushing the same
    layers: seen here). The manifest's own digest is ours, computed over the bytes sent, so the
    complaint is about the race: the same PUT is repeated in place like any temporary error."""
    return (
        request.method == "PUT"
        and "/manifests/" in request.url.path
        and ("DIGEST_INVALID" in codes)
    )


def check_response(
    response: httpx.Response,
    *,
    expect: Container[int] | None = None,
    auth_hint: str = "",
    now: float | None = None,
) -> None:
    """Raise the RegistryError for ``response`` unless its status is expected (default: 2xx)."""
    ok = response.is_success if expect is None else response.status_code in expect
    if not ok:
        raise error_from_response(response, auth_hint=auth_hint, now=now)


def error_from_response(
    response: httpx.Response, *, auth_hint: str = "", now: float | None = None
) -> RegistryError:
    """``now`` (default: the clock) turns an HTTP-date ``Retry-After`` into a wait."""
    now = time.time() if now is None else now
    request = response.request
    status = response.status_code
    codes, detail = _describe_body(response)
    hints = [_CODE_HINTS[c] for c in codes if c in _CODE_HINTS]
    is_auth = status in (401, 403) or bool({"UNAUTHORIZED", "DENIED"} & set(codes))
    if is_auth and auth_hint:
        hints.append(auth_hint)
    if status == 413:
        hints.append("the registry or a proxy caps the request size; try --chunk-size 10MB")
    message = (
        f"{request.url.host} answered {status} {response.reason_phrase} for "
        f"{request.method} {request.url.path}: {detail}"
    )
    message = "; ".join([message, *dict.fromkeys(hints)])
    kind = AuthError if is_auth else RegistryError
    return kind(
        message,
        method=request.method,
        url=redact_url(request.url),
        status=status,
        codes=codes,
        temporary=is_temporary(status, codes) or _racing_manifest(request, codes),
        retry_after=parse_retry_after(response.headers.get("retry-after"), now),
    )


def _describe_body(response: httpx.Response) -> tuple[list[str], str]:
    """The registry's ``errors[]`` codes and a short readable description of the body."""
    if response.request.method == "HEAD" or not response.content:
        return [], "empty body"
    text = response.content[:ERROR_BODY_LIMIT].decode("utf-8", errors="replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    errors = document.get("errors") if isinstance(document, dict) else None
    if isinstance(errors, list) and errors:
        entries = [e for e in errors if isinstance(e, dict)]
        codes = [str(e.get("code", "")) for e in entries if e.get("code")]
        parts = [f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ") for e in entries]
        return codes, _shorten("; ".join(parts))
    return [], repr(_shorten(_page_text(text)))


def _page_text(text: str) -> str:
    if "<" not in text:
        return text
    title = _TITLE_RE.search(text)
    if title and title.group(1).strip():
        return html.unescape(title.group(1))
    return html.unescape(_TAG_RE.sub(" ", _DROP_RE.sub(" ", text)))


def _shorten(text: str) -> str:
    text = redact_text(" ".join(text.split()))
    if len(text) > _EXCERPT_CHARS:
        return text[: _EXCERPT_CHARS - 3] + "..."
    return text


def error_from_exception(exc: Exception, method: str, url: httpx.URL) -> RegistryError:
    """Wrap an httpx exception (the only place they are caught) into a RegistryError."""
    unresolved = _cause(exc, socket.gaierror)
    if unresolved is not None:
        # Not temporary: a name that does not resolve now will not in the next 16 s of backoff.
        reason = unresolved.strerror or str(unresolved)
        return RegistryError(
            f"cannot resolve {url.host}: {reason} (check the registry's host name)",
            method=method,
            url=redact_url(url),
        )
    text = redact_text(str(exc).strip()) or type(exc).__name__
    tls = _TLS_HINTS.get(next((k for k in _TLS_HINTS if k in text), ""))
    if tls is None and "SSL" in text:
        tls = "the TLS handshake failed"
    temporary = isinstance(exc, httpx.TransportError) and tls is None
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.ProxyError)):
        temporary = False
    where = f"{method} {redact_url(url)} failed"
    if tls is not None:  # OpenSSL's "[SSL: X] ... (_ssl.c:1006)" wrapping says nothing more
        detail = _shorten(re.sub(r"\[SSL: \w+\]\s*|\s*\(_ssl\.c:\d+\)", "", text))
        message = f"{where}: {tls} ({detail})"
    else:
        message = f"{where}: {type(exc).__name__}: {_shorten(text)}"
        if isinstance(exc, httpx.TimeoutException):
            message += "; the registry did not answer in time"
    return RegistryError(message, method=method, url=redact_url(url), temporary=temporary)


E = TypeVar("E", bound=BaseException)


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``exc``'s chain of causes (httpx wraps httpcore,
    which wraps the socket error)."""
    seen: BaseException | None = exc
    for _ in range(10):  # a chain is short; a cycle must not hang us
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# OpenSSL reason -> what the user can do about it
_TLS_HINTS = {
    "CERTIFICATE_VERIFY_FAILED": (
        "the registry's TLS certificate is not trusted: pass --ca-file with its CA bundle "
        "(or point SSL_CERT_FILE at one)"
    ),
    "WRONG_VERSION_NUMBER": (
        "the registry does not speak TLS on this port: use --insecure for plain http"
    ),
}
