"""The fake registry (tests/support/fakeregistry.py) must itself behave like 2.8.2, or the
tests using it prove nothing."""

from __future__ import annotations

from typing import Literal

import httpx
import pytest

from tests.support.fakeregistry import REGISTRY, FakeRegistry, sha


def _client(fake: FakeRegistry) -> httpx.Client:
    return httpx.Client(transport=fake.transport(), base_url=f"https://{REGISTRY}")


def test_fake_rejects_a_stale_location() -> None:
    fake = FakeRegistry()
    with _client(fake) as http:
        first = http.post("/v2/a/blobs/uploads/").headers["location"]
        assert http.patch(first, content=b"x").status_code == 202
        stale = http.patch(first, content=b"y")
    assert stale.status_code == 404
    assert stale.json()["errors"][0]["code"] == "BLOB_UPLOAD_INVALID"


def test_fake_checks_the_digest_and_keeps_blobs_per_repository() -> None:
    fake = FakeRegistry()
    with _client(fake) as http:
        location = http.post("/v2/a/blobs/uploads/").headers["location"]
        wrong = http.put(location + "&digest=" + sha(b"other"), content=b"data")
        location = http.post("/v2/a/blobs/uploads/").headers["location"]
        right = http.put(location + "&digest=" + sha(b"data"), content=b"data")
        elsewhere = http.head(f"/v2/b/blobs/{sha(b'data')}")
    assert wrong.status_code == 400
    assert right.status_code == 201
    assert elsewhere.status_code == 404


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_fake_requires_authentication(auth: Literal["basic", "bearer"]) -> None:
    fake = FakeRegistry(auth=auth)
    with _client(fake) as http:
        answer = http.post("/v2/a/blobs/uploads/")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].lower().startswith(auth)
