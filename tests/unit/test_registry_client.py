from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from ociforge.errors import AuthError, RegistryError, UsageError
from ociforge.registry.client import RegistryClient
from ociforge.registry.credentials import Credentials
from ociforge.registry.responses import (
    check_response,
    error_from_exception,
    error_from_response,
    parse_retry_after,
    redact_url,
)

Handler = Callable[[httpx.Request], httpx.Response]
NGINX_413 = (
    "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n"
    "<center><h1>413 Request Entity Too Large</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(
    handler: Handler, sleeps: Callable[[float], None] | None = None, **options: object
) -> RegistryClient:
    return RegistryClient(
        "registry.example.com",
        transport=httpx.MockTransport(handler),
        sleep=sleeps if sleeps is not None else Sleeps(),
        **options,  # type: ignore[arg-type]
    )


def answers(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler giving ``responses`` in turn (raising the exceptions) and recording requests."""
    queue = list(responses)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def registry_error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, json={"errors": [{"code": code, "message": code.lower()}]}, headers=headers
    )


# -- scheme and TLS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "insecure", "base"),
    [
        ("registry.example.com", None, "https://registry.example.com"),
        ("localhost:5000", None, "http://localhost:5000"),
        ("127.0.0.1:5000", None, "http://127.0.0.1:5000"),
        ("[::1]:5000", None, "http://[::1]:5000"),
        ("localhost:5000", False, "https://localhost:5000"),
        ("reg.lan:5000", True, "http://reg.lan:5000"),
        ("docker.io", None, "https://registry-1.docker.io"),
    ],
)
def test_scheme_choice(registry: str, insecure: bool | None, base: str) -> None:
    with RegistryClient(registry, insecure=insecure) as client:
        assert client.base_url == httpx.URL(base)


def test_missing_ca_file_is_a_usage_error(tmp_path: object) -> None:
    with pytest.raises(UsageError, match="cannot load CA bundle"):
        RegistryClient("registry.example.com", ca_file="/nonexistent/ca.pem")


def test_untrusted_certificate_is_not_retried() -> None:
    sleeps = Sleeps()
    handler, seen = answers(
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    )
    with make_client(handler, sleeps) as client, pytest.raises(RegistryError) as caught:
        client.ping()
    assert "--ca-file" in str(caught.value)
    assert not caught.value.temporary
    assert (len(seen), sleeps) == (1, [])


def test_tls_to_a_plain_http_port_says_to_use_insecure() -> None:
    sleeps = Sleeps()
    error = "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"
    handler, _ = answers(httpx.ConnectError(error))
    with make_client(handler, sleeps) as client, pytest.raises(RegistryError) as caught:
        client.ping()
    assert str(caught.value).endswith(
        "the registry does not speak TLS on this port: use --insecure for plain http "
        "(wrong version number)"
    )
    assert not caught.value.temporary


# -- retries -----------------------------------------------------------------------------------


def test_429_honours_retry_after_seconds() -> None:
    sleeps = Sleeps()
    handler, seen = answers(
        registry_error(429, "TOOMANYREQUESTS", {"Retry-After": "7"}),
        registry_error(503, "UNAVAILABLE"),
        httpx.Response(200, json={}),
    )
    with make_client(handler, sleeps, backoff=0.5) as client:
        client.ping()
    assert sleeps == [7.0, 1.0]  # Retry-After, then the second step of the backoff
    assert len(seen) == 3


def test_retries_are_bounded_and_backoff_grows() -> None:
    sleeps = Sleeps()
    handler, seen = answers(*[httpx.Response(502, text="<h1>Bad Gateway</h1>")] * 4)
    client = make_client(handler, sleeps, retries=3, backoff=0.5)
    with client, pytest.raises(RegistryError) as caught:
        client.ping()
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(seen) == 4
    assert caught.value.status == 502
    assert caught.value.temporary


def test_too_long_retry_after_is_not_waited_for() -> None:
    sleeps = Sleeps()
    handler, _ = answers(registry_error(429, "TOOMANYREQUESTS", {"Retry-After": "3600"}))
    with make_client(handler, sleeps) as client, pytest.raises(RegistryError) as caught:
        client.ping()
    assert sleeps == []
    assert caught.value.retry_after == 3600.0


def test_connection_errors_are_temporary_and_retried() -> None:
    sleeps = Sleeps()
    handler, seen = answers(
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.Response(200, json={}),
    )
    with make_client(handler, sleeps) as client:
        client.ping()
    assert len(seen) == 3
    assert len(sleeps) == 2


def test_client_errors_are_not_retried() -> None:
    sleeps = Sleeps()
    handler, seen = answers(registry_error(404, "NAME_UNKNOWN"))
    with make_client(handler, sleeps) as client, pytest.raises(RegistryError) as caught:
        client.request("GET", "/v2/grp/app/tags/list")
    assert (len(seen), sleeps) == (1, [])
    assert caught.value.codes == ("NAME_UNKNOWN",)
    assert "does not exist" in str(caught.value)


def test_patch_is_never_retried_in_place() -> None:
    sleeps = Sleeps()
    handler, seen = answers(httpx.Response(503), httpx.Response(202))
    with make_client(handler, sleeps) as client, pytest.raises(RegistryError) as caught:
        client.request("PATCH", "/v2/a/blobs/uploads/u?_state=x", content=b"data")
    assert caught.value.temporary  # the caller restarts the blob
    assert (len(seen), sleeps) == (1, [])


@pytest.mark.parametrize(
    ("method", "content", "repeated"),
    [
        ("GET", None, True),
        ("PUT", b"", True),
        ("POST", b"{}", True),
        ("PUT", iter([b"streamed"]), False),
        ("PATCH", b"data", False),
    ],
)
def test_which_requests_are_repeated_in_place(
    method: str, content: bytes | Iterator[bytes] | None, repeated: bool
) -> None:
    handler, seen = answers(httpx.Response(503), httpx.Response(201))
    with make_client(handler, retries=3) as client:
        assert client.repeats_in_place(method, content) is repeated
        if repeated:
            client.request(method, "/v2/a/blobs/uploads/u", content=content)
        else:
            with pytest.raises(RegistryError):
                client.request(method, "/v2/a/blobs/uploads/u", content=content)
    assert len(seen) == (2 if repeated else 1)


def test_best_effort_requests_are_sent_once() -> None:
    sleeps = Sleeps()
    handler, seen = answers(httpx.Response(503), httpx.Response(204))
    with make_client(handler, sleeps) as client, pytest.raises(RegistryError):
        client.request("DELETE", "/v2/a/blobs/uploads/u", retry=False)
    assert (len(seen), sleeps) == (1, [])


# -- cancellation ------------------------------------------------------------------------------


def test_nothing_is_sent_once_cancelled() -> None:
    handler, seen = answers(httpx.Response(200, json={}))
    cancel = threading.Event()
    cancel.set()
    with make_client(handler) as client, pytest.raises(RegistryError, match="cancelled") as caught:
        client.request("GET", "/v2/", cancel=cancel)
    assert seen == []
    assert "GET https://registry.example.com/v2/ not sent" in str(caught.value)


def test_cancel_during_the_backoff_ends_the_retries() -> None:
    cancel = threading.Event()
    sleeps = Sleeps()

    def sleep(seconds: float) -> None:
        sleeps(seconds)
        cancel.set()  # another worker gave up meanwhile

    handler, seen = answers(*[httpx.Response(503)] * 6)
    with make_client(handler, sleep) as client, pytest.raises(RegistryError, match="cancelled"):
        client.request("POST", "/v2/a/blobs/uploads/", cancel=cancel)
    assert (len(seen), sleeps) == (1, [0.5])


def test_a_real_backoff_wait_is_cut_short_by_cancel() -> None:
    cancel = threading.Event()
    handler, seen = answers(registry_error(429, "TOOMANYREQUESTS", {"Retry-After": "30"}))
    client = RegistryClient("registry.example.com", transport=httpx.MockTransport(handler))
    timer = threading.Timer(0.1, cancel.set)
    started = time.monotonic()
    timer.start()
    with client, pytest.raises(RegistryError, match="cancelled"):
        client.request("GET", "/v2/", cancel=cancel)
    timer.join()
    assert time.monotonic() - started < 10  # not the 30 s the registry asked for
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("soon", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(value, now) == expected


# -- error messages ----------------------------------------------------------------------------


def error_for(
    response: httpx.Response, method: str = "GET", url: str = "https://registry.example.com/v2/"
) -> RegistryError:
    response.request = httpx.Request(method, url)
    with pytest.raises(RegistryError) as caught:
        check_response(response)
    return caught.value


def test_html_413_from_a_proxy_is_one_readable_line() -> None:
    url = "https://registry.example.com/v2/grp/app/blobs/uploads/abc?_state=s3cr3t"
    error = error_for(
        httpx.Response(413, text=NGINX_413, headers={"Content-Type": "text/html"}), "PATCH", url
    )
    message = str(error)
    assert message.startswith(
        "registry.example.com answered 413 Request Entity Too Large for PATCH "
        "/v2/grp/app/blobs/uploads/abc: '413 Request Entity Too Large'"
    )
    assert "--chunk-size" in message
    assert "\n" not in message and "<" not in message
    assert "s3cr3t" not in message
    assert (error.status, error.temporary, error.codes) == (413, False, ())


@pytest.mark.parametrize("status", [502, 504])
def test_html_gateway_errors_are_temporary(status: int) -> None:
    page = "<html><body><h1>Gateway</h1><p>" + "upstream " * 100 + "</p></body></html>"
    error = error_for(httpx.Response(status, text=page))
    assert error.temporary
    assert len(str(error)) < 250
    assert "Gateway upstream" in str(error)


def test_html_403_from_a_proxy_is_an_auth_error() -> None:
    page = "<html><head><title>403 Forbidden</title></head><body><h1>403</h1></body></html>"
    error = error_for(httpx.Response(403, text=page), "PUT")
    assert isinstance(error, AuthError)
    assert not error.temporary
    assert "answered 403 Forbidden for PUT /v2/: '403 Forbidden'" in str(error)


def test_empty_body_error() -> None:
    error = error_for(httpx.Response(403))
    assert isinstance(error, AuthError)
    assert "answered 403 Forbidden for GET /v2/: empty body" in str(error)


def test_registry_error_codes_and_messages() -> None:
    body = {
        "errors": [
            {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": "x"},
            {"code": "MANIFEST_INVALID", "message": "manifest invalid"},
        ]
    }
    error = error_for(
        httpx.Response(400, json=body), "PUT", "https://registry.example.com/v2/a/manifests/v1"
    )
    assert error.codes == ("MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID")
    assert "MANIFEST_BLOB_UNKNOWN: blob unknown to registry" in str(error)
    assert "push layers and config before the manifest" in str(error)
    assert error.url == "https://registry.example.com/v2/a/manifests/v1"


# -- redaction -------------------------------------------------------------------------------------


def test_redact_url() -> None:
    url = "https://user:pa55@registry.example.com:8443/v2/a/blobs/uploads/u?_state=x&token=t0k"
    assert redact_url(url) == "https://registry.example.com:8443/v2/a/blobs/uploads/u"


def test_exception_messages_are_redacted() -> None:
    exc = httpx.ConnectError(
        "failed for https://user:pa55@proxy.example:3128 with Bearer abcdefghijkl"
    )
    error = error_from_exception(
        exc, "GET", httpx.URL("https://u:pa55@registry.example.com/v2/?t=1")
    )
    assert "pa55" not in str(error) and "abcdefghijkl" not in str(error)
    assert error.temporary
    assert error.url == "https://registry.example.com/v2/"


def test_secrets_absent_from_errors_and_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    echo = "<html><title>Denied</title><p>Authorization: Bearer supersecrettoken123</p></html>"
    handler, _ = answers(
        httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}),
        httpx.Response(401, text=echo, headers={"WWW-Authenticate": 'Basic realm="r"'}),
    )
    creds = Credentials("robot", "hunter2-password", "OCIFORGE_USERNAME/OCIFORGE_PASSWORD")
    client = make_client(handler, credentials=creds)
    with caplog.at_level(logging.DEBUG), client, pytest.raises(AuthError) as caught:
        client.request("GET", "/v2/a/manifests/v1?access_token=querysecret")
    text = str(caught.value) + caught.value.url + caplog.text
    assert "OCIFORGE_USERNAME/OCIFORGE_PASSWORD" in str(caught.value)
    for secret in (
        "hunter2-password",
        "cm9ib3Q6aHVudGVyMi1wYXNzd29yZA",
        "querysecret",
        "supersecrettoken123",
    ):
        assert secret not in text
    assert "registry.example.com" in caplog.text


# -- Location handling -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "resolved"),
    [
        (
            "/v2/a/blobs/uploads/u?_state=x",
            "https://registry.example.com/v2/a/blobs/uploads/u?_state=x",
        ),
        ("u2?_state=y", "https://registry.example.com/v2/a/blobs/uploads/u2?_state=y"),
        (
            "http://registry.example.com/v2/a/blobs/uploads/u",
            "https://registry.example.com/v2/a/blobs/uploads/u",
        ),
        ("http://registry.example.com:5000/v2/u", "https://registry.example.com/v2/u"),
        ("https://localhost:5000/v2/u?_state=1", "http://localhost:5000/v2/u?_state=1"),
        ("https://storage.example.net/upload?sig=1", "https://storage.example.net/upload?sig=1"),
        ("http://storage.example.net/upload", "http://storage.example.net/upload"),
    ],
)
def test_location_resolution(location: str, resolved: str) -> None:
    response = httpx.Response(202, headers={"Location": location})
    host = "localhost:5000" if "localhost" in location else "registry.example.com"
    base = "http://localhost:5000" if "localhost" in location else "https://registry.example.com"
    response.request = httpx.Request("POST", f"{base}/v2/a/blobs/uploads/")
    with RegistryClient(host) as client:
        assert client.location(response) == httpx.URL(resolved)


def test_missing_location_is_an_error() -> None:
    response = httpx.Response(202)
    response.request = httpx.Request("POST", "https://registry.example.com/v2/a/blobs/uploads/")
    with (
        RegistryClient("registry.example.com") as client,
        pytest.raises(RegistryError, match="without a Location"),
    ):
        client.location(response)


def test_credentials_only_go_to_the_registry_origin() -> None:
    seen: dict[str, str | None] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen[request.url.host] = request.headers.get("authorization")
        return httpx.Response(200)

    creds = Credentials("<token>", "rt-secret", "x", "registry_token")
    with make_client(handler, credentials=creds) as client:
        client.request("GET", "/v2/")
        client.request("PATCH", httpx.URL("https://storage.example.net/upload"), content=b"x")
    assert seen == {"registry.example.com": "Bearer rt-secret", "storage.example.net": None}


def test_an_http_date_retry_after_is_read_against_the_clock() -> None:
    """Callers that do not pass ``now`` (the streamed-401 path) must not read a date as 56
    years away."""
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    request = httpx.Request("POST", "https://registry.example.com/v2/r/blobs/uploads/")
    response = httpx.Response(503, headers={"Retry-After": soon}, request=request)
    wait = error_from_response(response).retry_after
    assert wait is not None and 20 < wait <= 31
