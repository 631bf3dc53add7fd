from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest

from ociforge.digest import Digest
from ociforge.errors import DigestMismatchError, ImageError, RegistryError
from ociforge.events import BlobFinished, BlobProgress, BlobRetry, BlobStarted, Event, Message
from ociforge.registry.client import RegistryClient
from ociforge.registry.manifests import get_manifest, get_small_blob, put_manifest
from ociforge.registry.streams import HashingStream
from ociforge.registry.upload import (
    BlobJob,
    blob_exists,
    mount_blob,
    upload_all,
    upload_blob,
    upload_bytes,
)
from ociforge.spec import ACCEPT_MANIFEST_TYPES, OCI_MANIFEST
from tests.support.fakeregistry import REGISTRY, FakeRegistry, sha

LAYER = b"0123456789" * 10
E = TypeVar("E", bound=Event)


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.sleeps: list[float] = []

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


def client_for(fake: FakeRegistry, rec: Recorder | None = None, retries: int = 3) -> RegistryClient:
    rec = rec or Recorder()
    return RegistryClient(
        REGISTRY,
        transport=fake.transport(),
        on_event=rec.events.append,
        sleep=rec.sleeps.append,
        retries=retries,
    )


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def opener(data: bytes, opened: list[int] | None = None) -> Callable[[], HashingStream]:
    def open_stream() -> HashingStream:
        if opened is not None:
            opened.append(1)
        return HashingStream(chunks(data))

    return open_stream


# -- the streamed flow -------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["relative", "absolute", "http-absolute"])
def test_streamed_upload_exchange(style: str) -> None:
    fake = FakeRegistry(location_style=style)  # type: ignore[arg-type]
    rec = Recorder()
    with client_for(fake, rec) as client:
        digest, size = upload_blob(client, "grp/app", opener(LAYER), key="layer-1")
    assert (str(digest), size) == (sha(LAYER), len(LAYER))
    assert fake.blobs["grp/app"][sha(LAYER)] == LAYER
    assert [r.method for r in fake.requests] == ["POST", "PATCH", "PUT"]
    post, patch, put = fake.requests
    assert post.path == "/v2/grp/app/blobs/uploads/"
    # One PATCH with the whole blob, chunked transfer encoding, no Content-Range.
    assert patch.headers["transfer-encoding"] == "chunked"
    assert "content-range" not in patch.headers and "content-length" not in patch.headers
    assert patch.body == LAYER
    # The PUT goes to the newest Location (state 1, not 0), keeps its query, adds the digest.
    assert put.url.scheme == "https"
    assert put.url.params["_state"].endswith(".1==")
    assert put.url.params["digest"] == sha(LAYER)
    assert put.body == b""
    assert rec.of(BlobStarted) == [BlobStarted("layer-1", None)]
    assert sum(e.delta for e in rec.of(BlobProgress)) == len(LAYER)
    assert rec.of(BlobFinished) == [BlobFinished("layer-1", "uploaded", len(LAYER), sha(LAYER))]


def test_chunked_mode_sends_content_ranges() -> None:
    fake = FakeRegistry()
    with client_for(fake) as client:
        digest, _ = upload_blob(client, "app", opener(LAYER), key="l", chunk_size=40)
    patches = fake.calls("PATCH")
    assert [p.headers["content-range"] for p in patches] == ["0-39", "40-79", "80-99"]
    assert [p.headers["content-length"] for p in patches] == ["40", "40", "20"]
    assert b"".join(p.body for p in patches) == LAYER
    states = [p.url.params["_state"] for p in patches]
    assert len(set(states)) == 3  # each PATCH used the Location the previous one returned
    assert fake.blobs["app"][str(digest)] == LAYER


def test_empty_blob() -> None:
    fake = FakeRegistry()
    with client_for(fake) as client:
        digest, size = upload_blob(client, "app", lambda: HashingStream([]), key="e")
        upload_blob(client, "app2", lambda: HashingStream([]), key="e", chunk_size=10)
    assert (str(digest), size) == (sha(b""), 0)
    assert fake.blobs["app"][sha(b"")] == b""
    assert fake.blobs["app2"][sha(b"")] == b""


def test_expected_digest_mismatch_never_finalises() -> None:
    fake = FakeRegistry()
    with client_for(fake) as client, pytest.raises(DigestMismatchError) as caught:
        upload_blob(client, "app", opener(LAYER), key="l", expected=Digest.of(b"other"))
    assert caught.value.actual == sha(LAYER)
    assert [r.method for r in fake.requests] == ["POST", "PATCH", "DELETE"]
    assert fake.uploads == {}  # the session was cancelled
    assert fake.blobs == {}


def test_registry_reporting_another_digest_is_caught() -> None:
    fake = FakeRegistry()
    wrong = httpx.Response(201, headers={"Docker-Content-Digest": sha(b"nope")})
    fake.fail_once(lambda r: r.method == "PUT", wrong)
    with client_for(fake) as client, pytest.raises(DigestMismatchError, match="registry stored"):
        upload_blob(client, "app", opener(LAYER), key="l")


# -- restarting the blob -------------------------------------------------------------------------


def test_connection_reset_mid_patch_restarts_in_a_fresh_session() -> None:
    fake = FakeRegistry()
    rec = Recorder()
    opened: list[int] = []

    def reset(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PATCH" and len(opened) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return None

    fake.faults.append(reset)
    with client_for(fake, rec) as client:
        digest, _ = upload_blob(client, "app", opener(LAYER, opened), key="l")
    assert fake.blobs["app"][str(digest)] == LAYER
    assert len(opened) == 2  # the stream was regenerated from byte 0
    assert [r.method for r in fake.requests] == ["POST", "PATCH", "POST", "PATCH", "PUT"]
    assert fake.requests[1].url.path != fake.requests[3].url.path  # a new session
    [retry] = rec.of(BlobRetry)
    assert retry.attempt == 1 and "RemoteProtocolError" in retry.reason
    assert rec.sleeps == [0.5]


def test_stale_location_restarts_the_blob() -> None:
    fake = FakeRegistry()
    rec = Recorder()

    def go_stale(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT" and not fake.calls("DELETE"):
            # Something else advanced the session: our Location is stale now.
            uuid = request.url.path.rsplit("/", 1)[-1]
            name, state, data = fake.uploads[uuid]
            fake.uploads[uuid] = (name, state + 1, data)
            fake.faults.remove(go_stale)
        return None

    fake.faults.append(go_stale)
    with client_for(fake, rec) as client:
        digest, _ = upload_blob(client, "app", opener(LAYER), key="l")
    assert fake.blobs["app"][str(digest)] == LAYER
    assert [r.method for r in fake.requests] == ["POST", "PATCH", "PUT", "POST", "PATCH", "PUT"]
    assert "BLOB_UPLOAD_INVALID" in rec.of(BlobRetry)[0].reason


def test_blob_retries_are_bounded() -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda r: httpx.Response(500) if r.method == "PATCH" else None)
    rec = Recorder()
    with client_for(fake, rec, retries=2) as client, pytest.raises(RegistryError) as caught:
        upload_blob(client, "app", opener(LAYER), key="l")
    assert caught.value.status == 500
    assert len(fake.calls("PATCH")) == 3
    assert len(rec.of(BlobRetry)) == 2


def test_a_failing_layer_stream_is_not_retried() -> None:
    fake = FakeRegistry()

    def broken() -> HashingStream:
        def gen() -> Iterator[bytes]:
            yield b"x"
            raise ImageError("store path vanished")

        return HashingStream(gen())

    with client_for(fake) as client, pytest.raises(ImageError, match="vanished"):
        upload_blob(client, "app", broken, key="l")
    assert len(fake.calls("POST")) == 1


def reset_connection() -> httpx.Response:
    raise httpx.RemoteProtocolError("Server disconnected without sending a response.")


def read_error() -> httpx.Response:
    raise httpx.ReadError("[Errno 104] Connection reset by peer")


def session_unknown() -> httpx.Response:
    body = {"errors": [{"code": "BLOB_UPLOAD_UNKNOWN", "message": "blob upload unknown"}]}
    return httpx.Response(404, json=body)


@pytest.mark.parametrize(
    ("method", "answer", "restarts"),
    [
        ("POST", lambda: httpx.Response(503), False),
        ("PUT", lambda: httpx.Response(502, text="<h1>Bad Gateway</h1>"), False),
        ("PUT", read_error, False),
        ("PATCH", lambda: httpx.Response(503), True),
        ("PATCH", reset_connection, True),
        ("PUT", session_unknown, True),
    ],
    ids=["post-503", "put-502", "put-reset", "patch-503", "patch-reset", "put-session-unknown"],
)
def test_a_failing_request_is_tried_at_most_the_budget(
    method: str, answer: Callable[[], httpx.Response], restarts: bool
) -> None:
    """Retried in place (POST, PUT) or by restarting the blob (a failed PATCH, a lost
    session), never both: the request that keeps failing is tried 1 + retries times."""
    fake = FakeRegistry()
    fake.faults.append(lambda r: answer() if r.method == method else None)
    rec = Recorder()
    with client_for(fake, rec, retries=3) as client, pytest.raises(RegistryError):
        upload_blob(client, "app", opener(LAYER), key="l")
    assert len(fake.calls(method)) == 4
    assert len(rec.sleeps) == 3
    assert len(rec.of(BlobRetry)) == (3 if restarts else 0)
    assert len(rec.of(Message)) == (0 if restarts else 3)  # in-place retries are notes
    assert len(fake.calls("POST")) == (4 if restarts or method == "POST" else 1)
    assert fake.blobs == {}


def test_in_place_retries_and_restarts_do_not_multiply() -> None:
    # Every session's PATCH is cut, and every second POST answers 503 once: each POST is
    # repeated at most once in place, and the blob is restarted retries times, not more.
    fake = FakeRegistry()
    fake.faults.append(lambda r: reset_connection() if r.method == "PATCH" else None)
    posts = iter(range(100))
    fake.faults.append(
        lambda r: httpx.Response(503) if r.method == "POST" and next(posts) % 2 else None
    )
    rec = Recorder()
    with client_for(fake, rec, retries=2) as client, pytest.raises(RegistryError) as caught:
        upload_blob(client, "app", opener(LAYER), key="l")
    assert "RemoteProtocolError" in str(caught.value)
    assert len(fake.calls("PATCH")) == 3
    assert len(fake.calls("POST")) == 5  # three sessions, two of them after one 503
    assert [e.attempt for e in rec.of(BlobRetry)] == [1, 2]


# -- cancellation --------------------------------------------------------------------------------


def cancelling_client(
    fake: FakeRegistry, cancel: threading.Event, rec: Recorder, retries: int = 3
) -> RegistryClient:
    """A client whose first backoff wait is when another worker gives up (sets ``cancel``)."""

    def sleep(seconds: float) -> None:
        rec.sleeps.append(seconds)
        cancel.set()

    return RegistryClient(
        REGISTRY,
        transport=fake.transport(),
        on_event=rec.events.append,
        sleep=sleep,
        retries=retries,
    )


@pytest.mark.parametrize("method", ["POST", "PATCH", "PUT"])
def test_cancel_during_a_backoff_wait_sends_nothing_more(method: str) -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda r: httpx.Response(503) if r.method == method else None)
    cancel = threading.Event()
    rec = Recorder()
    with (
        cancelling_client(fake, cancel, rec) as client,
        pytest.raises(RegistryError, match="cancelled"),
    ):
        upload_blob(client, "app", opener(LAYER), key="l", cancel=cancel)
    assert len(fake.calls(method)) == 1
    assert len(rec.sleeps) == 1
    assert rec.of(BlobFinished) == []


def test_cancel_mid_stream_only_deletes_the_session() -> None:
    fake = FakeRegistry()
    fake.faults.append(lambda r: httpx.Response(503) if r.method == "DELETE" else None)
    cancel = threading.Event()

    def stream() -> HashingStream:
        def gen() -> Iterator[bytes]:
            yield b"first"
            cancel.set()  # another blob failed while this one was streaming
            yield b"second"

        return HashingStream(gen())

    rec = Recorder()
    with client_for(fake, rec) as client, pytest.raises(RegistryError, match="cancelled"):
        upload_blob(client, "app", stream, key="l", cancel=cancel)
    # The aborted PATCH never reached the registry; the DELETE is tried once, not retried.
    assert [r.method for r in fake.requests] == ["POST", "DELETE"]
    assert fake.requests[1].url.path == fake.requests[0].url.path + next(iter(fake.uploads))
    assert rec.sleeps == [] and rec.of(BlobRetry) == []


def test_a_failed_blob_stops_the_queued_ones() -> None:
    fake = FakeRegistry()
    denied = httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no push"}]})
    fake.fail_once(lambda r: r.method == "POST", denied)
    jobs = [BlobJob(f"b{i}", opener(b"blob %d" % i)) for i in range(4)]
    with client_for(fake) as client, pytest.raises(RegistryError) as caught:
        upload_all(client, "app", jobs, max_workers=1)
    assert caught.value.codes == ("DENIED",)  # the failure, not a cancellation
    assert len(fake.requests) == 1


# -- existence, mount, config blobs -------------------------------------------------------------


def test_blob_exists_is_per_repository() -> None:
    fake = FakeRegistry()
    fake.blobs["a"] = {sha(LAYER): LAYER}
    with client_for(fake) as client:
        assert blob_exists(client, "a", Digest.of(LAYER)) == len(LAYER)
        assert blob_exists(client, "b", Digest.of(LAYER)) is None


def test_mount_created_or_not() -> None:
    fake = FakeRegistry()
    fake.blobs["base"] = {sha(LAYER): LAYER}
    with client_for(fake) as client:
        assert mount_blob(client, "app", Digest.of(LAYER), "base")
        # Not in the source: 202 opens a plain session, which is cancelled, and False says so.
        assert not mount_blob(client, "app", Digest.of(b"missing"), "base")
    post = fake.calls("POST")[0]
    assert post.url.params["mount"] == sha(LAYER) and post.url.params["from"] == "base"
    assert fake.blobs["app"][sha(LAYER)] == LAYER
    assert [r.method for r in fake.requests] == ["POST", "POST", "DELETE"]
    assert fake.uploads == {}


def test_mount_refused_by_auth_means_upload_normally() -> None:
    fake = FakeRegistry()
    fake.fail_once(
        lambda r: r.method == "POST", httpx.Response(403, json={"errors": [{"code": "DENIED"}]})
    )
    with client_for(fake) as client:
        assert not mount_blob(client, "app", Digest.of(LAYER), "other/project")


def test_upload_bytes_heads_first_and_skips_present_blobs() -> None:
    config = json.dumps({"architecture": "amd64"}).encode()
    fake = FakeRegistry()
    rec = Recorder()
    with client_for(fake, rec) as client:
        assert upload_bytes(client, "app", config) == Digest.of(config)
        assert upload_bytes(client, "app", config) == Digest.of(config)
    assert [r.method for r in fake.requests] == ["HEAD", "POST", "PATCH", "PUT", "HEAD"]
    patch = fake.calls("PATCH")[0]
    assert patch.headers["content-length"] == str(len(config))  # bytes: not chunked
    assert [e.outcome for e in rec.of(BlobFinished)] == ["uploaded", "skipped"]


# -- manifests -----------------------------------------------------------------------------------


def manifest_for(config: bytes, layer: bytes) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(layer),
                "size": len(layer),
            }
        ],
    }
    return json.dumps(document, indent=1).encode()


def test_manifest_put_and_get_round_trip() -> None:
    fake = FakeRegistry()
    config = b'{"os":"linux"}'
    data = manifest_for(config, LAYER)
    with client_for(fake) as client:
        upload_blob(client, "app", opener(LAYER), key="l")
        upload_bytes(client, "app", config)
        digest = put_manifest(client, "app", "v1", data, OCI_MANIFEST)
        assert get_manifest(client, "app", "v1") == (data, OCI_MANIFEST, Digest.of(data))
        assert get_manifest(client, "app", str(digest)) == (data, OCI_MANIFEST, digest)
        assert get_manifest(client, "app", "missing") is None
    assert digest == Digest.of(data)  # over exactly the bytes sent
    put = fake.calls("PUT")[-1]
    assert put.headers["content-type"] == OCI_MANIFEST and put.body == data
    accept = fake.calls("GET")[0].headers["accept"]
    assert all(media_type in accept for media_type in ACCEPT_MANIFEST_TYPES)


def test_manifest_before_its_blobs_is_a_readable_error() -> None:
    fake = FakeRegistry()
    with client_for(fake) as client, pytest.raises(RegistryError) as caught:
        put_manifest(client, "app", "v1", manifest_for(b"{}", LAYER), OCI_MANIFEST)
    assert caught.value.codes == ("MANIFEST_BLOB_UNKNOWN",)
    assert "push layers and config before the manifest" in str(caught.value)


def test_manifest_by_digest_is_verified() -> None:
    fake = FakeRegistry()
    data = manifest_for(b"{}", LAYER)
    fake.manifests[("app", sha(b"x"))] = (data, OCI_MANIFEST)
    with client_for(fake) as client, pytest.raises(DigestMismatchError):
        get_manifest(client, "app", sha(b"x"))


def test_small_blobs_are_checked_like_manifests() -> None:
    fake = FakeRegistry()
    config = b'{"os":"linux"}'
    fake.blobs["app"] = {sha(config): config, sha(b"big"): b"x" * 100, sha(b"y"): b"z"}
    with client_for(fake) as client:
        assert get_small_blob(client, "app", Digest.of(config)) == config
        assert get_small_blob(client, "app", Digest.of(b"absent")) is None
        with pytest.raises(
            RegistryError, match=r"body of 100 bytes \(Content-Length\), unread; at most 50 bytes"
        ):
            get_small_blob(client, "app", Digest.of(b"big"), max_size=50)
        with pytest.raises(DigestMismatchError, match=f"blob {sha(b'y')} of app"):
            get_small_blob(client, "app", Digest.of(b"y"))


# -- concurrency -------------------------------------------------------------------------------


def test_upload_all_pushes_concurrently_and_keeps_order() -> None:
    fake = FakeRegistry()
    fake.blobs["app"] = {sha(b"present"): b"present"}
    fake.blobs["base"] = {sha(b"shared"): b"shared"}
    barrier = threading.Barrier(2, timeout=5)

    def waiting(data: bytes) -> Callable[[], HashingStream]:
        def open_stream() -> HashingStream:
            def gen() -> Iterator[bytes]:
                barrier.wait()  # both uploads must be in flight at once
                yield data

            return HashingStream(gen())

        return open_stream

    jobs = [
        BlobJob("a", waiting(b"first")),
        BlobJob("b", opener(b"present"), expected=Digest.of(b"present")),
        BlobJob("c", waiting(b"second")),
        BlobJob("d", opener(b"shared"), expected=Digest.of(b"shared"), mount_from="base"),
    ]
    with client_for(fake) as client:
        results = upload_all(client, "app", jobs, max_workers=2)
    assert [(r.key, r.outcome) for r in results] == [
        ("a", "uploaded"),
        ("b", "skipped"),
        ("c", "uploaded"),
        ("d", "mounted"),
    ]
    assert [r.digest for r in results] == [
        Digest.of(d) for d in (b"first", b"present", b"second", b"shared")
    ]
    assert set(fake.blobs["app"]) == {sha(d) for d in (b"first", b"present", b"second", b"shared")}


def test_upload_all_first_failure_cancels_the_rest() -> None:
    fake = FakeRegistry()
    denied = httpx.Response(403, json={"errors": [{"code": "DENIED", "message": "no push"}]})
    fake.fail_once(
        lambda r: r.method == "PUT" and r.url.params.get("digest") == sha(b"bad"), denied
    )
    slow_chunks: list[int] = []

    def slow() -> HashingStream:
        def gen() -> Iterator[bytes]:
            for _ in range(1000):
                slow_chunks.append(1)
                yield b"x" * 10
                threading.Event().wait(0.002)

        return HashingStream(gen())

    others = [BlobJob(f"p{i}", opener(b"p%d" % i)) for i in range(5)]
    jobs = [BlobJob("slow", slow), BlobJob("bad", opener(b"bad")), *others]
    with client_for(fake) as client, pytest.raises(RegistryError) as caught:
        upload_all(client, "app", jobs, max_workers=2)
    assert caught.value.codes == ("DENIED",)
    assert len(slow_chunks) < 1000  # the running upload stopped at its next chunk
    assert sha(b"x" * 10000) not in fake.blobs.get("app", {})
    assert len(fake.calls("POST")) < len(jobs)  # pending jobs did not start


def test_digest_invalid_at_put_is_reported_not_retried() -> None:
    fake = FakeRegistry()
    invalid = httpx.Response(
        400, json={"errors": [{"code": "DIGEST_INVALID", "message": "digest did not match"}]}
    )
    fake.fail_once(lambda r: r.method == "PUT", invalid)
    rec = Recorder()
    with client_for(fake, rec) as client, pytest.raises(RegistryError) as caught:
        upload_blob(client, "app", opener(LAYER), key="l")
    assert caught.value.codes == ("DIGEST_INVALID",)
    assert "do not match the digest" in str(caught.value)
    assert len(fake.calls("POST")) == 1 and rec.sleeps == []


def test_in_place_retry_is_a_message_not_a_restart() -> None:
    fake = FakeRegistry()
    fake.fail_once(lambda r: r.method == "PUT", httpx.Response(503))
    rec = Recorder()
    with client_for(fake, rec) as client:
        upload_blob(client, "app", opener(LAYER), key="layer-7")
    assert rec.of(BlobRetry) == []
    [message] = rec.of(Message)
    assert message.text.startswith("layer-7: retry 1/3 in 0.5s: registry.test answered 503")
    assert len(fake.calls("POST")) == 1  # the PUT was repeated on the same session


def test_oversized_manifest_is_refused_before_sending() -> None:
    fake = FakeRegistry()
    with client_for(fake) as client, pytest.raises(ImageError, match="at most 4 MiB"):
        put_manifest(client, "app", "v1", b" " * (4 * 1024 * 1024 + 1), OCI_MANIFEST)
    assert fake.requests == []
