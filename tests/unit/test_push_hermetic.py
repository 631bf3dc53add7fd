"""Whole pushes through the public API against an in-memory registry with scripted faults.

No network, no nix, no real registry: a small synthetic closure (files in a temporary store
directory), ``ociforge.push`` with ``RegistryOptions(transport=FaultTransport(...))``, and the
faults registry-notes.md says a push must live with. Each test asserts what a user would notice:
the push result, what the registry holds afterwards (tag, manifest, every blob's bytes), the
error and its message, and that a failed push left the tag where it was.

Only ``import ociforge`` and ``tests.support`` are used, so these tests outlive any reshuffle of
the package's insides.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

import ociforge
from tests.support.fakeregistry import USERS, FakeRegistry, sha
from tests.support.faulttransport import (
    Alter,
    Delay,
    Exchange,
    ExpireToken,
    Fault,
    FaultTransport,
    ResetMidBody,
    Respond,
    around,
    html_page,
    registry_error,
    too_many_requests,
)

REPO = "group/app"
TAG = f"registry.test/{REPO}:latest"
UPLOADS = r"/blobs/uploads/"
MANIFESTS = r"/manifests/"
BLOBS = r"/blobs/sha256:"
CREDS = ociforge.Credentials("alice", USERS["alice"], source="test")
FILE_SIZE = 48 * 1024  # a few stream chunks per layer: a reset can really be mid-body
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"


# -- a synthetic closure --------------------------------------------------------------------------


def _store_path(store: Path, name: str, version: str, data: bytes) -> tuple[str, str]:
    digest = hashlib.sha256(f"{name}-{version}".encode() + data).digest()
    hash_part = "".join(NIX_BASE32[b % 32] for b in digest[:32])
    path = store / f"{hash_part}-{name}-{version}"
    (path / "bin").mkdir(parents=True, exist_ok=True)  # shared by the closures that use it
    (path / "bin" / name).write_bytes(data)
    # A narHash is the identity of the content (layer keys are built from it): unique per path.
    return str(path), "sha256-" + base64.b64encode(digest).decode()


def _noise(seed: str, size: int) -> bytes:
    """Incompressible bytes, so every layer is about FILE_SIZE on the wire too."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def make_closure(store: Path, app_version: str, libs: tuple[str, ...]) -> ociforge.Closure:
    """``app`` depending on every lib; one layer per store path plus the root links layer."""
    infos: dict[str, ociforge.StorePathInfo] = {}
    lib_paths: list[str] = []
    for lib in libs:
        path, nar = _store_path(store, lib, "1.0", _noise(lib, FILE_SIZE))
        infos[path] = ociforge.StorePathInfo(path, nar, FILE_SIZE)
        lib_paths.append(path)
    data = _noise(f"app-{app_version}", FILE_SIZE)
    app, nar = _store_path(store, "app", app_version, data)
    infos[app] = ociforge.StorePathInfo(app, nar, FILE_SIZE, tuple(sorted(lib_paths)))
    return ociforge.Closure((app,), infos, "x86_64-linux", str(store))


@dataclass(frozen=True)
class Images:
    new: ociforge.Closure  # what the tests push: 4 store paths -> 5 layers
    previous: ociforge.Closure  # the same libs, an older app: shares 3 layers with ``new``
    unrelated: ociforge.Closure  # nothing in common with ``new``
    honest_digest: str  # the manifest digest of ``new`` (builds are deterministic)
    home: Path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    root = tmp_path_factory.mktemp("hermetic")
    store = root / "store"
    libs = ("libc", "libssl", "libz")
    new = make_closure(store, "2.0", libs)
    previous = make_closure(store, "1.0", libs)
    unrelated = make_closure(store, "0.1", ("oldlibc", "oldlibm"))
    (root / "home").mkdir()
    honest = push(new, FakeRegistry(auth="bearer").transport(), home=root / "home")
    return Images(new, previous, unrelated, honest.manifest_digest, root / "home")


def push(
    closure: ociforge.Closure,
    transport: httpx.BaseTransport,
    *,
    home: Path,
    tags: tuple[str, ...] = (TAG,),
    events: list[ociforge.Event] | None = None,
    **registry: object,
) -> ociforge.PushResult:
    settings: dict[str, object] = {
        "credentials": CREDS,
        "transport": transport,
        "backoff": 0.001,  # the first retry wait; Retry-After, when sent, wins
        "cache_dir": None,
        "env": {},
        "home": home,
    }
    options = ociforge.RegistryOptions(**{**settings, **registry})  # type: ignore[arg-type]
    return ociforge.push(
        closure,
        list(tags),
        options=ociforge.ImageOptions(),
        registry=options,
        on_event=(events if events is not None else []).append,
    )


# -- a registry holding an older image under the tag ----------------------------------------------


@dataclass
class World:
    images: Images
    fake: FakeRegistry = field(default_factory=lambda: FakeRegistry(auth="bearer"))
    old_manifests: dict[str, bytes] = field(default_factory=dict)
    events: list[ociforge.Event] = field(default_factory=list)

    def seed(self, closure: ociforge.Closure, *tags: str) -> bytes:
        """Push ``closure`` to ``tags`` without faults; the manifest bytes they now hold."""
        result = push(closure, self.fake.transport(), home=self.images.home, tags=tags)
        data = self.manifest(tags[0].rsplit(":", 1)[1])
        assert sha(data) == result.manifest_digest
        for tag in tags:
            self.old_manifests[tag.rsplit(":", 1)[1]] = data
        return data

    def push(
        self, transport: FaultTransport, *, tags: tuple[str, ...] = (TAG,), **registry: object
    ) -> ociforge.PushResult:
        return push(
            self.images.new,
            transport,
            home=self.images.home,
            tags=tags,
            events=self.events,
            **registry,
        )

    def manifest(self, tag: str = "latest", repo: str = REPO) -> bytes:
        return self.fake.manifests[(repo, tag)][0]

    def of(self, kind: type[ociforge.Event]) -> list[ociforge.Event]:
        return [e for e in self.events if isinstance(e, kind)]

    def assert_complete(self, result: ociforge.PushResult, tag: str = "latest") -> None:
        """The tag holds the honest manifest, and every blob it names is there, byte-exact."""
        data = self.manifest(tag)
        assert result.manifest_digest == sha(data) == self.images.honest_digest
        manifest = json.loads(data)
        held = self.fake.blobs[REPO]
        for descriptor in [manifest["config"], *manifest["layers"]]:
            blob = held.get(descriptor["digest"])
            assert blob is not None, f"{descriptor['digest']} is not in the registry"
            assert (sha(blob), len(blob)) == (descriptor["digest"], descriptor["size"])
        pushed = [(str(b.descriptor.digest), b.descriptor.size) for b in result.blobs]
        assert pushed == [(d["digest"], d["size"]) for d in manifest["layers"]]

    def assert_untouched(self) -> None:
        """Every tag still holds what it held before the push: a failed push tags nothing."""
        for tag, data in self.old_manifests.items():
            assert self.manifest(tag) == data, f"tag {tag} was rewritten"
        assert {ref for (_, ref) in self.fake.manifests if not ref.startswith("sha256:")} == set(
            self.old_manifests
        )


@pytest.fixture
def world(images: Images) -> World:
    """A registry whose tag holds an older, unrelated image: a failed push must leave it."""
    w = World(images)
    w.seed(images.unrelated, TAG)
    return w


def statuses(exchanges: list[Exchange]) -> list[int | None]:
    return [e.status for e in exchanges]


# -- 1. connection reset in the middle of a blob upload -------------------------------------------


@pytest.mark.parametrize(
    "error",
    [httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError],
    ids=lambda e: e.__name__,
)
def test_a_reset_mid_patch_restarts_that_blob_in_a_fresh_session(
    world: World, error: type[httpx.TransportError]
) -> None:
    transport = around(world.fake, Fault("PATCH", UPLOADS, ResetMidBody(8192, error), nth=2))
    result = world.push(transport)
    world.assert_complete(result)
    [reset] = transport.fired()
    assert reset.status is None and len(reset.body) == 8192  # of about FILE_SIZE
    # The broken session is never finished; the blob went up again from byte 0 elsewhere.
    assert not transport.calls("PUT", reset.path)
    assert len(world.of(ociforge.BlobRetry)) == 1
    sessions = transport.calls("POST", UPLOADS)
    assert len(sessions) == len(result.blobs) + 1 + 1  # layers, the config, one restart


def test_a_reset_mid_chunk_restarts_the_blob_from_byte_zero(world: World) -> None:
    """Chunked mode (--chunk-size): a reset in the second chunk restarts the whole blob."""
    transport = around(world.fake, Fault("PATCH", UPLOADS, ResetMidBody(100), nth=2))
    result = world.push(transport, chunk_size=16 * 1024, jobs=1)
    world.assert_complete(result)
    [reset] = transport.fired()
    patches = transport.calls("PATCH")
    after = patches[patches.index(reset) + 1]
    assert after.path != reset.path  # a new session, not the broken one resumed
    assert after.headers["content-range"] == f"0-{16 * 1024 - 1}"


def test_a_reset_mid_manifest_put_is_repeated(world: World) -> None:
    transport = around(world.fake, Fault("PUT", MANIFESTS, ResetMidBody(10)))
    result = world.push(transport)
    world.assert_complete(result)
    assert statuses(transport.calls("PUT", MANIFESTS)) == [None, 201]


# -- 2. bursts of 5xx -----------------------------------------------------------------------------


BURSTS = {
    "ping": ("GET", r"^/v2/$"),
    "token": ("GET", r"^/token$"),
    "tag read": ("GET", MANIFESTS),
    "session start": ("POST", UPLOADS),
    "patch": ("PATCH", UPLOADS),
    "blob put": ("PUT", UPLOADS),
    "config head": ("HEAD", BLOBS),
    "manifest put": ("PUT", MANIFESTS),
}


@pytest.mark.parametrize("where", BURSTS)
def test_three_503_then_ok_is_survived(world: World, where: str) -> None:
    method, path = BURSTS[where]
    unavailable = registry_error(503, "UNAVAILABLE", "service unavailable")
    transport = around(world.fake, Fault(method, path, unavailable, times=3))
    result = world.push(transport, jobs=1)
    world.assert_complete(result)
    matching = transport.calls(method, path)
    assert statuses(matching[:3]) == [503, 503, 503]
    retried = matching[3]  # reached the registry (the ping's first answer is a 401 challenge)
    assert retried.status is not None and retried.status < 500
    if method != "PATCH":  # repeated in place: the same request on the same URL
        assert retried.url == matching[2].url
    else:  # a failed PATCH leaves the session unknown: the blob restarts in a new one
        assert len({e.path for e in matching[:4]}) == 4
        assert len(world.of(ociforge.BlobRetry)) == 3


def test_a_burst_of_proxy_502_pages_is_survived(world: World) -> None:
    transport = around(world.fake, Fault("PUT", MANIFESTS, html_page(502), times=2))
    result = world.push(transport)
    world.assert_complete(result)
    assert statuses(transport.calls("PUT", MANIFESTS)) == [502, 502, 201]


def test_a_503_that_never_ends_fails_after_the_retries_and_tags_nothing(world: World) -> None:
    unavailable = registry_error(503, "UNAVAILABLE", "service unavailable")
    transport = around(world.fake, Fault("PUT", MANIFESTS, unavailable, times=100))
    with pytest.raises(ociforge.RegistryError, match=r"503.*UNAVAILABLE") as caught:
        world.push(transport, retries=2)
    assert caught.value.status == 503
    assert len(transport.calls("PUT", MANIFESTS)) == 3  # the first try and 2 retries
    world.assert_untouched()


# -- 3. 429 TOOMANYREQUESTS with Retry-After ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("POST", UPLOADS), ("PATCH", UPLOADS)], ids=["in place", "restart"]
)
def test_429_waits_as_long_as_retry_after_says(world: World, method: str, path: str) -> None:
    transport = around(world.fake, Fault(method, path, too_many_requests(retry_after=1)))
    result = world.push(transport, jobs=1)  # backoff is 1 ms: only Retry-After makes it wait
    world.assert_complete(result)
    matching = transport.calls(method, path)
    throttled = next(e for e in matching if e.fault is not None)
    after = matching[matching.index(throttled) + 1]
    assert throttled.status == 429
    assert 0.95 <= after.started - throttled.started < 5.0


def test_429_with_retry_after_zero_is_retried_at_once(world: World) -> None:
    transport = around(world.fake, Fault("PUT", MANIFESTS, too_many_requests(retry_after=0)))
    result = world.push(transport)
    world.assert_complete(result)
    assert statuses(transport.calls("PUT", MANIFESTS)) == [429, 201]
    texts = [e.text for e in world.of(ociforge.Message) if isinstance(e, ociforge.Message)]
    assert any("retry 1/5 in 0.0s" in t and "TOOMANYREQUESTS" in t for t in texts), texts


# -- 4. the bearer token expires in the middle of the push ----------------------------------------


EXPIRIES = {
    "blob put": Fault("PUT", UPLOADS, ExpireToken()),
    "patch": Fault("PATCH", UPLOADS, ExpireToken(), nth=2),
    "config head": Fault("HEAD", BLOBS, ExpireToken()),
    "manifest put": Fault("PUT", MANIFESTS, ExpireToken()),
    "after 6 requests": Fault("*", r"^/v2/.", ExpireToken(), nth=6),
}


@pytest.mark.parametrize("where", EXPIRIES)
def test_an_expired_token_is_replaced_and_the_push_completes(world: World, where: str) -> None:
    transport = around(world.fake, EXPIRIES[where])
    result = world.push(transport)
    world.assert_complete(result)
    [expired] = transport.fired()
    assert expired.status == 401 and expired.bearer is not None
    assert 'error="invalid_token"' in expired.response_headers["www-authenticate"]
    # By start time, not list order: with parallel uploads another request may meet the
    # revoked token and fetch the new one before the fired exchange is recorded.
    later = [e for e in transport.exchanges if e.started >= expired.started]
    token_requests = [e for e in later if e.url.host == "auth.test"]
    assert token_requests and all(e.status == 200 for e in token_requests)
    final = transport.calls("PUT", MANIFESTS)[-1]
    assert final.status == 201 and final.bearer not in (None, expired.bearer)


def test_a_blob_put_after_expiry_is_repeated_on_the_same_session(world: World) -> None:
    """registry-notes: the upload session survives a 401; repeat the PUT on the same URL."""
    transport = around(world.fake, Fault("PUT", UPLOADS, ExpireToken()))
    world.assert_complete(world.push(transport, jobs=1))
    puts = transport.calls("PUT", UPLOADS)
    assert statuses(puts[:2]) == [401, 201]
    assert puts[0].url == puts[1].url  # not restarted: the session and its bytes were kept
    assert not world.of(ociforge.BlobRetry)


# -- 5. a registry lying about digests and sizes --------------------------------------------------


def test_a_blob_put_answering_another_digest_fails_and_tags_nothing(world: World) -> None:
    liar = Alter(headers=(("Docker-Content-Digest", sha(b"something else")),))
    transport = around(world.fake, Fault("PUT", UPLOADS, liar, nth=2))
    with pytest.raises(ociforge.DigestMismatchError, match="registry stored blob") as caught:
        world.push(transport)
    assert caught.value.actual == sha(b"something else")
    assert not transport.calls("PUT", MANIFESTS)
    world.assert_untouched()


def test_a_manifest_put_answering_another_digest_stops_before_the_next_tag(world: World) -> None:
    stable = f"registry.test/{REPO}:stable"
    world.seed(world.images.unrelated, stable)
    liar = Alter(headers=(("Docker-Content-Digest", sha(b"not this manifest")),))
    transport = around(world.fake, Fault("PUT", MANIFESTS, liar))
    with pytest.raises(ociforge.DigestMismatchError, match="registry stored manifest"):
        world.push(transport, tags=(TAG, stable))
    assert len(transport.calls("PUT", MANIFESTS)) == 1
    assert world.manifest("stable") == world.old_manifests["stable"]


def test_a_head_answering_a_wrong_size_is_not_trusted(world: World, tmp_path: Path) -> None:
    """The local cache knows every layer; the registry has them all (an earlier push to
    ``v1``) but one HEAD lies about the blob's size. Fail, or do not take that blob as
    present: the result must never report a size the registry made up."""
    cache = str(tmp_path / "cache")
    v1 = f"registry.test/{REPO}:v1"
    push(
        world.images.new,
        world.fake.transport(),
        home=world.images.home,
        tags=(v1,),
        cache_dir=cache,
    )
    world.old_manifests["v1"] = world.manifest("v1")
    liar = Alter(headers=(("Content-Length", "7"),))
    transport = around(world.fake, Fault("HEAD", BLOBS, liar, nth=2))
    try:
        result = world.push(transport, cache_dir=cache, jobs=1)
    except ociforge.OciforgeError as error:
        assert "size" in str(error)
        world.assert_untouched()
    else:
        world.assert_complete(result)
    [lie] = transport.fired()
    assert lie.status == 200 and lie.response_headers["content-length"] == "7"


def test_a_pinned_cache_from_manifest_with_other_bytes_is_not_trusted(world: World) -> None:
    """--cache-from base@sha256:X, and the registry answers bytes that hash otherwise (here:
    the real manifest with two layer digests swapped). Fail, or ignore it: never reuse from it."""
    base = world.seed(world.images.new, "registry.test/group/app:base")
    pinned = ociforge.parse_reference(f"registry.test/{REPO}@{sha(base)}")
    document = json.loads(base)
    layers = document["layers"]
    layers[0]["digest"], layers[1]["digest"] = layers[1]["digest"], layers[0]["digest"]
    forged = json.dumps(document).encode()
    transport = around(world.fake, Fault("GET", f"/manifests/{sha(base)}$", Alter(body=forged)))
    try:
        result = world.push(transport, cache_from=(pinned,))
    except ociforge.OciforgeError as error:
        assert sha(base) in str(error)
        world.assert_untouched()
    else:
        world.assert_complete(result)
    assert [e.status for e in transport.fired()] == [200]


def test_a_config_blob_with_other_bytes_teaches_nothing(world: World) -> None:
    """The tag's previous manifest shares layers with this push; its config (which gives the
    diff_ids of those layers) comes back with other bytes. Fail, or learn nothing from it."""
    world.seed(world.images.previous, TAG)
    previous = json.loads(world.manifest())
    config = previous["config"]["digest"]
    diff_ids = [sha(b"%d" % i) for i in range(len(previous["layers"]))]  # believable, wrong
    forged = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    transport = around(world.fake, Fault("GET", f"/blobs/{config}$", Alter(body=forged)))
    try:
        result = world.push(transport)
    except ociforge.OciforgeError as error:
        assert config in str(error)
        world.assert_untouched()
    else:
        world.assert_complete(result)
    assert [e.status for e in transport.fired()] == [200]


# -- 6. one blob fails for good -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        (html_page(413), r"413 .*Request Entity Too Large.*--chunk-size"),
        (registry_error(403, "DENIED", "requested access to the resource is denied"), "DENIED"),
    ],
    ids=["413 page", "403 DENIED"],
)
def test_a_blob_failing_for_good_cancels_the_others_and_tags_nothing(
    world: World, answer: Respond, named: str
) -> None:
    """jobs=3: the first and third PATCH are held back a little; the second fails for good.
    The held uploads stop and drop their sessions, the queued ones never start."""
    transport = around(
        world.fake,
        Fault("PATCH", UPLOADS, Delay(0.3), nth=1),
        Fault("PATCH", UPLOADS, answer, nth=2),
        Fault("PATCH", UPLOADS, Delay(0.3), nth=3),
    )
    with pytest.raises(ociforge.RegistryError, match=named) as caught:
        world.push(transport, jobs=3)
    assert caught.value.status == answer.status
    assert not world.of(ociforge.BlobRetry)  # a permanent failure is not retried
    assert not transport.calls("PUT", MANIFESTS)
    assert len(transport.calls("POST", UPLOADS)) <= 3  # 5 layers + config: the rest never began
    patches = transport.calls("PATCH")
    assert [e.status for e in patches if e.fault == "Respond"] == [answer.status]
    held = [e for e in patches if e.fault == "Delay"]
    assert held and all(e.status is None for e in held)  # stopped instead of sending bytes
    deleted = {e.path for e in transport.calls("DELETE", UPLOADS) if e.status == 204}
    assert {e.path for e in held} <= deleted  # and their sessions were dropped
    assert not transport.calls("PUT", UPLOADS)
    world.assert_untouched()


# -- one session, many images ----------------------------------------------------------------


def test_one_session_pushes_several_images_with_one_token(images: Images) -> None:
    """What a batch needs: the second image reuses the session's client, its token and what the
    first push uploaded (shared layers are not sent again)."""
    from ociforge.assemble import plan_image
    from ociforge.reference import parse_reference

    fake = FakeRegistry(auth="bearer")
    transport = around(fake)
    options = ociforge.RegistryOptions(
        credentials=CREDS, transport=transport, cache_dir=None, env={}, home=images.home
    )
    other = f"registry.test/{REPO}:previous"
    with ociforge.PushSession("registry.test", options) as session:
        first = session.push(
            plan_image(images.new, ociforge.ImageOptions(), host_system="x86_64-linux"),
            [parse_reference(TAG)],
        )
        before = len(transport.exchanges)
        second = session.push(
            plan_image(images.previous, ociforge.ImageOptions(), host_system="x86_64-linux"),
            [parse_reference(other)],
        )
    assert first.manifest_digest == images.honest_digest
    tokens = [e for e in transport.exchanges[before:] if "/token" in e.url.path]
    assert tokens == [], "the second push asked for a token again"
    # The three libraries' layers went up once; the second image sent only what differs.
    outcomes = [b.outcome for b in second.blobs]
    assert outcomes.count("uploaded") == 2 and outcomes.count("skipped") == 3, outcomes


def test_a_refused_later_tag_names_what_moved_and_what_did_not(images: Images) -> None:
    world = World(images)
    world.seed(images.previous, TAG, f"registry.test/{REPO}:stable")
    refused = Fault("PUT", r"/manifests/stable$", registry_error(403, "DENIED", "tag is protected"))
    with pytest.raises(ociforge.AuthError) as info:
        world.push(around(world.fake, refused), tags=(TAG, f"registry.test/{REPO}:stable"))
    message = str(info.value)
    assert f"tags updated: registry.test/{REPO}:latest" in message
    assert f"not updated: registry.test/{REPO}:stable" in message
    assert world.manifest("latest") != world.old_manifests["latest"]  # it did move
    assert world.manifest("stable") == world.old_manifests["stable"]


def test_a_manifest_put_racing_a_concurrent_blob_commit_is_repeated(images: Images) -> None:
    """distribution answers 400 DIGEST_INVALID to a manifest PUT while another job commits a
    blob it names: repeated in place, the push completes."""
    world = World(images)
    race = Fault("PUT", MANIFESTS, registry_error(400, "DIGEST_INVALID", "digest did not match"))
    result = world.push(around(world.fake, race))
    world.assert_complete(result)
