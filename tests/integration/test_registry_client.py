"""ociforge.registry against real distribution 2.8.2 registries, a GitLab-like token server and
a fault proxy (tests/support). Every failure mode of registry-notes.md has a test here.

What the registry stored is checked with plain httpx requests, not with the client under test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from ociforge.digest import Digest
from ociforge.errors import AuthError, DigestMismatchError, RegistryError
from ociforge.events import BlobRetry, Event
from ociforge.registry import (
    BlobJob,
    Credentials,
    HashingStream,
    RegistryClient,
    blob_exists,
    get_manifest,
    mount_blob,
    put_manifest,
    resolve_credentials,
    upload_all,
    upload_blob,
    upload_bytes,
)
from ociforge.spec import OCI_MANIFEST
from tests.support.faultproxy import (
    Fault,
    FaultProxy,
    InvalidToken,
    ResetConnection,
    html_page,
    registry_error,
    too_many_requests,
)
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy, TokenRegistry

pytestmark = pytest.mark.integration

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


class Recorder:
    """Progress events and requested sleeps (recorded, not slept: retries cost no time)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.sleeps: list[float] = []

    def retries(self) -> list[BlobRetry]:
        return [e for e in self.events if isinstance(e, BlobRetry)]


def client(
    host: str, creds: Credentials | None = None, rec: Recorder | None = None
) -> RegistryClient:
    rec = rec or Recorder()
    return RegistryClient(
        host, credentials=creds, on_event=rec.events.append, sleep=rec.sleeps.append, retries=3
    )


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def opener(data: bytes, opened: list[int] | None = None) -> Callable[[], HashingStream]:
    def open_stream() -> HashingStream:
        if opened is not None:
            opened.append(1)
        return HashingStream(pieces(data))

    return open_stream


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def stored_blob(url: str, repo: str, digest: str, token: str | None = None) -> bytes | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/v2/{repo}/blobs/{digest}", headers=headers, follow_redirects=True)
    return response.content if response.status_code == 200 else None


def manifest_bytes(config: bytes, layers: list[bytes]) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": LAYER_TYPE, "digest": sha(x), "size": len(x)} for x in layers],
    }
    return json.dumps(document, separators=(",", ":")).encode()


# --- anonymous registry: the whole flow ---------------------------------------------------------


def test_push_and_read_back_an_image(registry: RegistryServer, repo_name: str) -> None:
    layer, config = os.urandom(300_000), b'{"architecture":"amd64","os":"linux"}'
    data = manifest_bytes(config, [layer])
    with client(registry.host) as c:
        digest, size = upload_blob(c, repo_name, opener(layer), key="layer")
        assert upload_bytes(c, repo_name, config) == Digest.of(config)
        assert put_manifest(c, repo_name, "v1", data, OCI_MANIFEST) == Digest.of(data)
        # 2.8.2 answers 404 for an OCI manifest unless the OCI type is accepted.
        assert get_manifest(c, repo_name, "v1") == (data, OCI_MANIFEST, Digest.of(data))
        assert get_manifest(c, repo_name, "nope") is None
        assert blob_exists(c, repo_name, digest) == len(layer)
    assert (str(digest), size) == (sha(layer), len(layer))
    assert stored_blob(registry.url, repo_name, sha(layer)) == layer
    assert stored_blob(registry.url, repo_name, sha(config)) == config


def test_chunked_mode_on_2_8_2(registry: RegistryServer, repo_name: str) -> None:
    layer = os.urandom(250_000)
    with client(registry.host) as c:
        digest, _ = upload_blob(c, repo_name, opener(layer), key="l", chunk_size=100_000)
    assert stored_blob(registry.url, repo_name, str(digest)) == layer


def test_blob_existence_is_per_repository_and_mount_links_it(
    registry: RegistryServer, repo_name: str
) -> None:
    layer = os.urandom(10_000)
    other = f"{repo_name}-other"
    with client(registry.host) as c:
        digest, _ = upload_blob(c, repo_name, opener(layer), key="l")
        assert blob_exists(c, other, digest) is None
        assert not mount_blob(c, other, Digest.of(b"not there"), repo_name)  # 202: plain session
        assert mount_blob(c, other, digest, repo_name)
        assert blob_exists(c, other, digest) == len(layer)


def test_expected_digest_mismatch_is_never_committed(
    registry: RegistryServer, repo_name: str
) -> None:
    layer = os.urandom(5_000)
    with client(registry.host) as c, pytest.raises(DigestMismatchError):
        upload_blob(c, repo_name, opener(layer), key="l", expected=Digest.of(b"other"))
    assert stored_blob(registry.url, repo_name, sha(layer)) is None


def test_manifest_blob_unknown_after_a_failed_mount(
    registry: RegistryServer, repo_name: str
) -> None:
    layer, config = os.urandom(1000), b"{}"
    with client(registry.host) as c:
        upload_bytes(c, repo_name, config)
        assert not mount_blob(c, repo_name, Digest.of(layer), f"{repo_name}-nowhere")
        with pytest.raises(RegistryError) as caught:
            put_manifest(c, repo_name, "v1", manifest_bytes(config, [layer]), OCI_MANIFEST)
    assert "MANIFEST_BLOB_UNKNOWN" in caught.value.codes
    assert "push layers and config before the manifest" in str(caught.value)


def test_manifest_content_type_must_match(registry: RegistryServer, repo_name: str) -> None:
    config = b"{}"
    with client(registry.host) as c:
        upload_bytes(c, repo_name, config)
        with pytest.raises(RegistryError) as caught:
            put_manifest(
                c,
                repo_name,
                "v1",
                manifest_bytes(config, []),
                "application/vnd.docker.distribution.manifest.v2+json",
            )
    assert caught.value.status == 400
    assert "MANIFEST_INVALID" in caught.value.codes


def test_upload_all_in_parallel(registry: RegistryServer, repo_name: str) -> None:
    blobs = [os.urandom(50_000 + i) for i in range(5)]
    jobs = [BlobJob(f"l{i}", opener(b)) for i, b in enumerate(blobs)]
    with client(registry.host) as c:
        results = upload_all(c, repo_name, jobs, max_workers=3)
    assert [str(r.digest) for r in results] == [sha(b) for b in blobs]
    for blob in blobs:
        assert stored_blob(registry.url, repo_name, sha(blob)) == blob


# --- basic auth -----------------------------------------------------------------------------------


def test_basic_registry_push(basic_registry: RegistryServer, repo_name: str) -> None:
    assert basic_registry.credentials is not None
    creds = Credentials(*basic_registry.credentials, source="test")
    layer = os.urandom(20_000)
    with client(basic_registry.host, creds) as c:
        c.ping()
        digest, _ = upload_blob(c, repo_name, opener(layer), key="l")
        assert blob_exists(c, repo_name, digest) == len(layer)


def test_basic_registry_wrong_password(basic_registry: RegistryServer, repo_name: str) -> None:
    creds = Credentials("ociforge", "hunter2-secret", source="OCIFORGE_USERNAME/OCIFORGE_PASSWORD")
    with client(basic_registry.host, creds) as c, pytest.raises(AuthError) as caught:
        upload_blob(c, repo_name, opener(b"x"), key="l")
    assert caught.value.status == 401
    assert "OCIFORGE_USERNAME/OCIFORGE_PASSWORD" in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


# --- GitLab-like token auth ---------------------------------------------------------------------


def ci_credentials(token_registry: TokenRegistry, tmp_path: Path) -> Credentials:
    creds = resolve_credentials(token_registry.host, env=token_registry.ci_env, home=tmp_path)
    assert creds is not None
    return creds


def test_job_token_push_scopes_and_round_trip(
    token_registry: TokenRegistry, tmp_path: Path
) -> None:
    repo = f"{token_registry.project}/app"
    layer, config = os.urandom(100_000), b'{"os":"linux"}'
    data = manifest_bytes(config, [layer])
    with client(token_registry.host, ci_credentials(token_registry, tmp_path)) as c:
        upload_blob(c, repo, opener(layer), key="l")
        upload_bytes(c, repo, config)
        put_manifest(c, repo, "latest", data, OCI_MANIFEST)
        assert get_manifest(c, repo, "latest") == (data, OCI_MANIFEST, Digest.of(data))
    requests = token_registry.tokens.requests
    assert requests and all(r.status == 200 and r.method == "GET" for r in requests)
    assert requests[0].username == "gitlab-ci-token"
    assert requests[0].scopes == (f"repository:{repo}:pull,push",)
    # One token serves the whole push (GitLab's lifetime is 5 minutes, ours assumes 60 s).
    assert len(requests) == 1


def test_mount_from_a_project_the_job_may_not_read_falls_back_to_upload(
    token_registry: TokenRegistry, tmp_path: Path
) -> None:
    repo = f"{token_registry.project}/app"
    layer = os.urandom(10_000)
    foreign = "someone-else/project"
    job = BlobJob("l", opener(layer), expected=Digest.of(layer), mount_from=foreign)
    with client(token_registry.host, ci_credentials(token_registry, tmp_path)) as c:
        [result] = upload_all(c, repo, [job])
    assert result.outcome == "uploaded"
    mount_request = next(r for r in token_registry.tokens.requests if len(r.scopes) > 1)
    # The push scope first, then the source; both as separate `scope` parameters.
    assert parse_qs(mount_request.query)["scope"] == [
        f"repository:{repo}:pull,push",
        f"repository:{foreign}:pull",
    ]


def test_pull_only_user_cannot_push(token_registry: TokenRegistry) -> None:
    creds = Credentials(*token_registry.reader, source="deploy token")
    with client(token_registry.host, creds) as c, pytest.raises(AuthError) as caught:
        upload_blob(c, f"{token_registry.project}/app", opener(b"x"), key="l")
    assert "deploy token" in str(caught.value)


def test_token_expiring_during_a_long_patch(token_registry: TokenRegistry, tmp_path: Path) -> None:
    """The registry accepts each token for 1-2 s; ociforge assumes 60 s (no expires_in)."""
    repo = f"{token_registry.project}/app"
    token_registry.tokens.set_registry_validity(1)

    def slow() -> HashingStream:
        def gen() -> Iterator[bytes]:
            yield b"first half "
            time.sleep(2.2)  # the PATCH started with a valid token; it is dead when it ends
            yield b"second half"

        return HashingStream(gen())

    with client(token_registry.host, ci_credentials(token_registry, tmp_path)) as c:
        digest, _ = upload_blob(c, repo, slow, key="l")
    assert digest == Digest.of(b"first half second half")
    assert len(token_registry.tokens.requests) == 2  # a fresh token for the PUT


def test_invalid_token_on_put_repeats_it_on_the_same_session(
    token_registry: TokenRegistry, make_fault_proxy: MakeFaultProxy, tmp_path: Path
) -> None:
    proxy = make_fault_proxy(token_registry.url)
    proxy.add_fault(Fault("PUT", r"/blobs/uploads/", InvalidToken()))
    repo = f"{token_registry.project}/app"
    creds = ci_credentials(token_registry, tmp_path)
    rec = Recorder()
    layer = os.urandom(30_000)
    with client(proxy.host, creds, rec) as c:
        upload_blob(c, repo, opener(layer), key="l")
    puts = [r for r in proxy.requests if r.method == "PUT"]
    assert [r.status for r in puts] == [401, 201]
    assert puts[0].path == puts[1].path and puts[0].query == puts[1].query
    assert proxy.count("POST") == 2  # the anonymous probe, then one session only
    assert rec.retries() == []


def test_no_secrets_in_logs_or_errors(
    token_registry: TokenRegistry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    creds = ci_credentials(token_registry, tmp_path)
    with caplog.at_level(logging.DEBUG), client(token_registry.host, creds) as c:
        upload_blob(c, f"{token_registry.project}/app", opener(b"layer"), key="l")
        with pytest.raises(AuthError) as caught:
            upload_blob(c, "someone-else/project", opener(b"layer"), key="l")
    text = caplog.text + str(caught.value) + caught.value.url
    assert "/v2/" in caplog.text  # requests are logged, at DEBUG and by httpx at INFO
    assert token_registry.job_token not in text
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}", text)  # no JWT (header starts with eyJ)


# --- failures between us and the registry ---------------------------------------------------------


def test_429_and_gateway_errors_are_retried(fault_proxy: FaultProxy, repo_name: str) -> None:
    fault_proxy.add_fault(
        Fault("POST", r"/blobs/uploads/", too_many_requests(retry_after=3)),
        Fault("PUT", r"/blobs/uploads/", html_page(502)),
        Fault("HEAD", r"/blobs/", html_page(504)),
    )
    rec = Recorder()
    layer = os.urandom(10_000)
    with client(fault_proxy.host, rec=rec) as c:
        digest, _ = upload_blob(c, repo_name, opener(layer), key="l")
        assert blob_exists(c, repo_name, digest) == len(layer)
    assert rec.sleeps[0] == 3.0  # Retry-After honoured
    assert len(rec.sleeps) == 3
    assert [r.status for r in fault_proxy.requests if r.method == "POST"] == [429, 202]


def test_connection_reset_mid_patch_restarts_the_blob(
    fault_proxy: FaultProxy, registry: RegistryServer, repo_name: str
) -> None:
    fault_proxy.add_fault(Fault("PATCH", r"/blobs/uploads/", ResetConnection(128 * 1024)))
    rec = Recorder()
    opened: list[int] = []
    layer = os.urandom(1024 * 1024)
    with client(fault_proxy.host, rec=rec) as c:
        digest, _ = upload_blob(c, repo_name, opener(layer, opened), key="l")
    assert len(opened) == 2  # regenerated from byte 0
    assert fault_proxy.count("POST") == 2  # in a fresh session
    assert [r.attempt for r in rec.retries()] == [1]
    assert stored_blob(registry.url, repo_name, str(digest)) == layer


def test_stale_location_restarts_the_blob(fault_proxy: FaultProxy, repo_name: str) -> None:
    fault_proxy.add_fault(
        Fault("PUT", r"/blobs/uploads/", registry_error(404, "BLOB_UPLOAD_INVALID", "stale"))
    )
    rec = Recorder()
    with client(fault_proxy.host, rec=rec) as c:
        upload_blob(c, repo_name, opener(b"stale"), key="l")
    assert "BLOB_UPLOAD_INVALID" in rec.retries()[0].reason
    assert fault_proxy.count("POST") == 2


def test_html_413_is_one_line_with_a_hint(fault_proxy: FaultProxy, repo_name: str) -> None:
    fault_proxy.add_fault(Fault("PATCH", r"/blobs/uploads/", html_page(413, drain_body=False)))
    with client(fault_proxy.host) as c, pytest.raises(RegistryError) as caught:
        upload_blob(c, repo_name, opener(os.urandom(4000)), key="l")
    message = str(caught.value)
    assert caught.value.status == 413
    assert "answered 413 Request Entity Too Large for PATCH" in message
    assert "--chunk-size" in message
    assert "\n" not in message and "<" not in message


@pytest.mark.parametrize("mode", ["relative", "wrong_scheme", "proxy"])
def test_location_modes(
    make_fault_proxy: MakeFaultProxy, registry: RegistryServer, repo_name: str, mode: str
) -> None:
    proxy = make_fault_proxy(registry.url, mode)
    layer = os.urandom(70_000)
    with client(proxy.host) as c:
        digest, _ = upload_blob(c, repo_name, opener(layer), key="l", chunk_size=30_000)
    assert stored_blob(registry.url, repo_name, str(digest)) == layer
    assert proxy.count("PATCH") == 3


def test_first_failure_cancels_parallel_uploads(fault_proxy: FaultProxy, repo_name: str) -> None:
    fault_proxy.add_fault(
        Fault("PUT", r"/blobs/uploads/", registry_error(403, "DENIED", "no"), times=100)
    )
    release = threading.Event()

    def slow() -> HashingStream:
        def gen() -> Iterator[bytes]:
            for _ in range(200):
                if release.wait(0.01):
                    return
                yield b"x" * 1000

        return HashingStream(gen())

    jobs = [BlobJob("fast", opener(b"fast")), BlobJob("slow", slow)]
    jobs += [BlobJob(f"p{i}", opener(b"p%d" % i)) for i in range(4)]
    with client(fault_proxy.host) as c, pytest.raises(AuthError):
        upload_all(c, repo_name, jobs, max_workers=2)
    release.set()
    assert fault_proxy.count("PUT") < 3
