"""The push's overlap of planning (nix) with its first registry round trips: which error wins,
and that a failed plan stops the registry's retries at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from ociforge.assemble import ImagePlan
from ociforge.errors import AuthError, RegistryError, UsageError
from ociforge.publish.options import check_destinations
from ociforge.publish.tags import Tags, read_tags, tags_while_planning
from ociforge.reference import parse_reference
from ociforge.registry import Credentials, RegistryClient
from ociforge.threads import Background

REF = parse_reference("registry.test/group/app:latest")


def client(handler: httpx.MockTransport, **kw: object) -> RegistryClient:
    return RegistryClient("registry.test", transport=handler, **kw)  # type: ignore[arg-type]


def overlapped(plan: Callable[[], object], c: RegistryClient) -> tuple[object, Tags]:
    planning = Background(plan, name="test-plan")
    return tags_while_planning(planning, c, [REF], ["repository:group/app:pull,push"])  # type: ignore[arg-type]


def test_a_failed_plan_stops_the_registry_retries_and_is_the_error() -> None:
    asked = threading.Event()
    sent: list[httpx.Request] = []

    def unavailable(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        asked.set()
        return httpx.Response(503)

    def plan() -> ImagePlan:
        asked.wait(10)  # fails while the registry read waits to retry (30 s backoff)
        raise UsageError("nix: bad installable")

    c = client(httpx.MockTransport(unavailable), retries=3, backoff=30.0)
    with c, pytest.raises(UsageError, match="bad installable"):
        overlapped(plan, c)
    assert len(sent) == 1  # not 4: the retry wait ended when the plan failed


def test_a_registry_error_waits_for_the_plan_and_is_raised() -> None:
    refusing, planned = threading.Event(), threading.Event()

    def refused(request: httpx.Request) -> httpx.Response:
        refusing.set()
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    def plan() -> ImagePlan:
        refusing.wait(10)
        time.sleep(0.2)  # still planning well after the registry has said no
        planned.set()
        return None  # type: ignore[return-value]

    creds = Credentials("alice", "wrong", source="test")
    with client(httpx.MockTransport(refused), credentials=creds) as c, pytest.raises(AuthError):
        overlapped(plan, c)
    assert planned.is_set()


def test_tags_are_read_while_the_plan_is_made() -> None:
    """Both run at once: each waits for the other to have started."""
    reading, planning = threading.Event(), threading.Event()

    def registry(request: httpx.Request) -> httpx.Response:
        reading.set()
        assert planning.wait(10), "the plan was not being made meanwhile"
        return httpx.Response(200 if request.url.path == "/v2/" else 404)

    made = object()

    def plan() -> object:
        planning.set()
        assert reading.wait(10), "the registry was not being read meanwhile"
        return made

    with client(httpx.MockTransport(registry)) as c:
        got, tags = overlapped(plan, c)
    assert got is made
    assert tags == {("group/app", "latest"): None}


def test_background_hands_over_the_same_exception() -> None:
    error = RegistryError("boom")

    def fail() -> None:
        raise error

    job = Background(fail, name="test")
    with pytest.raises(RegistryError) as caught:
        job.result()
    assert caught.value is error and job.failed.is_set()
    assert Background(lambda: 42, name="test").result() == 42


def test_tags_are_read_once_per_tag() -> None:
    paths: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return httpx.Response(200 if request.url.path == "/v2/" else 404)

    with client(httpx.MockTransport(registry)) as c:
        tags: Tags = read_tags(c, [REF, REF], ["repository:group/app:pull,push"], threading.Event())
    assert tags == {("group/app", "latest"): None}
    assert paths == ["/v2/", "/v2/group/app/manifests/latest"]


def test_cache_from_may_name_a_digest_but_not_another_registry() -> None:
    pinned = parse_reference("registry.test/group/base@sha256:" + "a" * 64)
    check_destinations([REF], [pinned])
    with pytest.raises(UsageError, match=r"--cache-from \S+ is on another registry"):
        check_destinations([REF], [parse_reference("other.test/base:1")])
    with pytest.raises(UsageError, match=r"destination \S+ names a digest"):
        check_destinations([pinned])
