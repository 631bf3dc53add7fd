"""Nothing a registry sends is trusted to be small or to end: size limits, stalls, deadlines.

Hermetic (httpx transports serving generated bodies) where it is about bytes and time, with a
loopback socket that never answers where it is about a real socket's timeouts.
"""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import ociforge
from ociforge.errors import AuthError, RegistryDigestError, RegistryError
from ociforge.registry import HashingStream, default_timeout, get_manifest
from ociforge.registry.client import RegistryClient
from ociforge.registry.credentials import Credentials, resolve_credentials
from ociforge.registry.upload import upload_blob
from ociforge.spec import MAX_MANIFEST_BYTES
from tests.support.fakeregistry import FakeRegistry, sha
from tests.support.faulttransport import Alter, Delay, Fault, around
from tests.unit import test_push_hermetic as hermetic
from tests.unit.test_push_hermetic import MANIFESTS, UPLOADS, World
from tests.unit.test_registry_upload import opener

images = hermetic.images  # the hermetic push tests' fixtures, for the push-level tests here
world = hermetic.world
GIB = 1 << 30
PIECE = 64 * 1024
MiB = 1 << 20


class Source:
    """A generated body: ``size`` bytes in 64 KiB pieces, counting what was taken from it."""

    def __init__(self, size: int, pause: float = 0.0, piece: int = PIECE) -> None:
        self.size, self.pause, self.piece = size, pause, piece
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        block = b"{" * self.piece
        while self.produced < self.size:
            if self.pause:
                time.sleep(self.pause)
            part = block[: min(self.piece, self.size - self.produced)]
            self.produced += len(part)
            yield part


def serving(
    status: int, source: Source, *, declare: bool
) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if declare:
            headers["Content-Length"] = str(source.size)
        return httpx.Response(status, headers=headers, stream=_Stream(source), request=request)

    return handler


class _Stream(httpx.SyncByteStream):
    def __init__(self, source: Source) -> None:
        self.source = source

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.source)


def client(handler: Callable[[httpx.Request], httpx.Response], **options: object) -> RegistryClient:
    return RegistryClient(
        "registry.test",
        transport=httpx.MockTransport(handler),
        sleep=lambda _: None,
        retries=1,
        **options,  # type: ignore[arg-type]
    )


def peak_while(action: Callable[[], object]) -> tuple[int, BaseException | None]:
    """tracemalloc's peak (bytes) while ``action`` runs, and what it raised."""
    tracemalloc.start()
    try:
        action()
        caught: BaseException | None = None
    except BaseException as exc:  # handed to the test, which asserts on it
        caught = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, caught


def one_line(error: BaseException | None) -> str:
    assert isinstance(error, RegistryError), error
    text = str(error)
    assert "\n" not in text
    return text


# -- 7. size limits enforced while streaming -------------------------------------------------


def test_a_1_gib_manifest_by_content_length_is_refused_before_reading() -> None:
    source = Source(GIB)
    with client(serving(200, source, declare=True)) as c:
        peak, error = peak_while(lambda: get_manifest(c, "app", "latest"))
    text = one_line(error)
    assert f"body of {GIB} bytes (Content-Length), unread" in text
    assert f"at most {MAX_MANIFEST_BYTES} bytes" in text and "registry.test" in text
    assert source.produced == 0
    assert peak < 2 * MiB, peak


@pytest.mark.parametrize("status", [200, 203])
def test_a_1_gib_manifest_without_content_length_is_cut_at_the_limit(status: int) -> None:
    source = Source(GIB)
    with client(serving(status, source, declare=False)) as c:
        peak, error = peak_while(lambda: get_manifest(c, "app", "latest"))
    assert f"body of more than {MAX_MANIFEST_BYTES} bytes" in one_line(error)
    assert source.produced <= MAX_MANIFEST_BYTES + PIECE  # it stopped reading at limit + 1
    # The body up to the limit, and one copy of it at most: never the gigabyte.
    assert peak < 3 * MAX_MANIFEST_BYTES, peak


def test_a_content_length_that_lies_low_still_stops_at_the_limit() -> None:
    source = Source(GIB)

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Length": "100"}
        return httpx.Response(200, headers=headers, stream=_Stream(source), request=request)

    with client(handler) as c:
        peak, error = peak_while(lambda: get_manifest(c, "app", "latest"))
    assert "body of more than" in one_line(error)
    assert source.produced <= MAX_MANIFEST_BYTES + PIECE
    assert peak < 3 * MAX_MANIFEST_BYTES, peak


def test_a_huge_error_page_is_read_to_64_kib_only() -> None:
    source = Source(GIB)
    with client(serving(502, source, declare=True)) as c:
        peak, error = peak_while(lambda: get_manifest(c, "app", "latest"))
    text = one_line(error)
    assert text.startswith("registry.test answered 502 Bad Gateway for GET /v2/app/manifests")
    assert source.produced <= 2 * (64 * 1024 + PIECE)  # 502 is temporary: asked twice
    assert peak < 2 * MiB, peak


def test_a_huge_token_answer_is_refused() -> None:
    fake = FakeRegistry(auth="bearer")
    source = Source(GIB)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return httpx.Response(200, stream=_Stream(source), request=request)
        return fake.handle(request)

    creds = Credentials("alice", "s3cret-pass")
    with client(handler, credentials=creds) as c:
        peak, error = peak_while(lambda: get_manifest(c, "app", "latest"))
    assert f"body of more than {1 << 20} bytes" in one_line(error)
    assert source.produced <= (1 << 20) + PIECE
    assert peak < 4 * MiB, peak


# -- 6. stalls and the deadline ----------------------------------------------------------------


class SilentServer:
    """Accepts connections on loopback and never answers (until stopped)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_a_stalled_answer_is_a_temporary_error_that_is_retried(silent: SilentServer) -> None:
    waits: list[float] = []
    host = f"127.0.0.1:{silent.port}"
    with (
        RegistryClient(host, stall_timeout=0.3, retries=2, sleep=waits.append) as c,
        pytest.raises(RegistryError) as caught,
    ):
        c.ping()
    assert f"{host} sent nothing in answer to GET /v2/ for 0.3 s" in one_line(caught.value)
    assert caught.value.temporary
    assert len(waits) == 2 and len(silent.accepted) == 3  # the retry policy took it


def test_a_silent_registry_fails_at_the_deadline_not_after_the_stall_timeouts(
    silent: SilentServer,
) -> None:
    host = f"127.0.0.1:{silent.port}"
    started = time.monotonic()
    with (
        RegistryClient(host, timeout=1.0, stall_timeout=60) as c,
        pytest.raises(RegistryError) as caught,
    ):
        c.ping()
    elapsed = time.monotonic() - started
    text = one_line(caught.value)
    assert text.startswith(f"gave up on {host} after 1 s (--timeout): ")
    assert "sent nothing in answer to GET /v2/" in text
    assert not caught.value.temporary
    assert elapsed < 15  # one stall would be 60 s


def test_a_registry_dribbling_its_answer_is_stopped_at_the_deadline() -> None:
    source = Source(10_000, pause=0.05, piece=1)  # a byte every 50 ms: never a stall
    started = time.monotonic()
    with (
        client(serving(200, source, declare=True), timeout=0.5) as c,
        pytest.raises(RegistryError) as caught,
    ):
        get_manifest(c, "app", "latest")
    text = one_line(caught.value)
    assert "gave up on registry.test after 0.5 s (--timeout)" in text
    assert "GET /v2/app/manifests/latest: the answer was still arriving" in text
    assert source.produced < 10_000
    assert time.monotonic() - started < 15


def test_a_slow_upload_is_stopped_at_the_deadline() -> None:
    fake = FakeRegistry()
    slow = Source(10 * MiB, pause=0.05)
    with (
        RegistryClient(
            "registry.test", transport=around(fake), timeout=0.5, sleep=lambda _: None
        ) as c,
        pytest.raises(RegistryError) as caught,
    ):
        upload_blob(c, "app", lambda: HashingStream(iter(slow)), key="layer 1/1")
    text = one_line(caught.value)
    assert "gave up on registry.test after 0.5 s (--timeout): layer 1/1 was still uploading" in text
    assert slow.produced < slow.size
    assert not fake.uploads, "the session was left open"  # deleted when it gave up


def test_a_push_to_a_registry_that_stops_answering_fails_at_the_deadline_and_tags_nothing(
    world: World,
) -> None:
    transport = around(world.fake, Fault("PATCH", UPLOADS, Delay(1.5), times=100))
    started = time.monotonic()
    with pytest.raises(ociforge.RegistryError) as caught:
        world.push(transport, timeout=1.0)
    text = one_line(caught.value)
    assert text.startswith("gave up on registry.test after 1 s (--timeout)")
    assert caught.value.exit_code == 5
    assert time.monotonic() - started < 20
    assert not transport.calls("PUT", MANIFESTS)
    world.assert_untouched()


# -- 10. DNS, registry digest lies -------------------------------------------------------------


def test_a_host_that_does_not_resolve_fails_at_once() -> None:
    waits: list[float] = []
    with (
        RegistryClient("registry.invalid", sleep=waits.append) as c,
        pytest.raises(RegistryError) as caught,
    ):
        c.ping()
    assert one_line(caught.value).startswith("cannot resolve registry.invalid: ")
    assert not caught.value.temporary and waits == []


def test_a_registry_naming_another_digest_is_a_registry_error_exit_5(world: World) -> None:
    liar = Alter(headers=(("Docker-Content-Digest", sha(b"something else")),))
    transport = around(world.fake, Fault("PUT", UPLOADS, liar, nth=2))
    with pytest.raises(ociforge.RegistryError) as caught:
        world.push(transport)
    assert isinstance(caught.value, RegistryDigestError)
    assert caught.value.exit_code == 5
    assert "registry stored blob" in str(caught.value) and "registry.test" in str(caught.value)
    world.assert_untouched()


# -- 11. a job token refused for another project -----------------------------------------------


def test_a_job_token_refused_for_another_project_says_what_to_do() -> None:
    env = {
        "CI_REGISTRY": "registry.test",
        "CI_REGISTRY_USER": "gitlab-ci-token",
        "CI_REGISTRY_PASSWORD": "job-token",
        "CI_PROJECT_PATH": "Team/App",
    }
    creds = resolve_credentials("registry.test", env=env, home=Path("/nonexistent"))
    assert creds is not None and creds.ci_project == "Team/App"

    def handler(request: httpx.Request) -> httpx.Response:
        challenge = 'Bearer realm="https://auth.test/token",service="registry.test"'
        if request.url.host == "auth.test":
            return httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no"}]})
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    with client(handler, credentials=creds) as c:
        with pytest.raises(AuthError) as caught:
            get_manifest(c, "other/project", "latest")
        own = c.auth_hint(c.url("/v2/team/app/sub/manifests/latest"))
    text = one_line(caught.value)
    assert "other/project is outside this job's project" in text
    assert "CI_PROJECT_PATH=Team/App" in text and "OCIFORGE_USERNAME/OCIFORGE_PASSWORD" in text
    assert "outside" not in own  # its own project (lower case, two levels below) is not foreign


# -- the default deadline ----------------------------------------------------------------------


def test_the_default_deadline_is_what_is_left_of_the_gitlab_job() -> None:
    env = {"CI_JOB_TIMEOUT": "3600", "CI_JOB_STARTED_AT": "2024-05-01T10:00:00Z"}
    ten_minutes_in = 1714557600 + 600
    assert default_timeout(env, now=ten_minutes_in) == 3000 - 180  # 5 % kept for the job
    assert default_timeout({"CI_JOB_TIMEOUT": "600"}, now=0) == 600 - 60
    assert default_timeout(env, now=ten_minutes_in + 3500) == 30  # late: still a chance
    assert default_timeout({}) == 3600
    assert default_timeout({"CI_JOB_TIMEOUT": "soon"}) == 3600
    options = ociforge.RegistryOptions(env={"CI_JOB_TIMEOUT": "600"}, cache_dir=None)
    assert options.push_timeout() == 540
    assert ociforge.RegistryOptions(timeout=5, cache_dir=None).push_timeout() == 5
    with pytest.raises(ociforge.UsageError, match="--timeout"):
        ociforge.RegistryOptions(timeout=0, cache_dir=None)


def test_an_upload_waiting_out_the_deadline_says_what_kept_failing() -> None:
    fake = FakeRegistry()
    down = httpx.Response(503)
    fake.faults.append(lambda r: down if r.method == "POST" else None)
    clock = [0.0]
    with (
        RegistryClient(
            "registry.test",
            transport=fake.transport(),
            timeout=10,
            backoff=30,
            sleep=lambda s: clock.__setitem__(0, clock[0] + s),
            clock=lambda: clock[0],
        ) as c,
        pytest.raises(RegistryError) as caught,
    ):
        upload_blob(c, "app", opener(b"x" * 10), key="l")
    assert "gave up on registry.test after 10 s (--timeout): the last try failed" in str(
        caught.value
    )
    assert "503" in str(caught.value)
    assert clock[0] == 0  # it did not sleep past the deadline first
