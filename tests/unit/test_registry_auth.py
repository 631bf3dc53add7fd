from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import httpx
import pytest

from ociforge.digest import Digest
from ociforge.errors import AuthError
from ociforge.events import BlobRetry, Event
from ociforge.registry.auth import Authenticator, Challenge, merge_scopes, parse_challenges
from ociforge.registry.client import RegistryClient
from ociforge.registry.credentials import Credentials
from ociforge.registry.streams import BytesBlob, HashingStream
from ociforge.registry.upload import blob_exists, mount_blob, upload_blob
from tests.support.fakeregistry import REALM, REGISTRY, SERVICE, USERS, FakeRegistry, basic, sha

ALICE = Credentials("alice", USERS["alice"], "test")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for(
    fake: FakeRegistry, credentials: Credentials | None = ALICE, clock: Clock | None = None
) -> RegistryClient:
    return RegistryClient(
        REGISTRY,
        credentials=credentials,
        transport=fake.transport(),
        sleep=lambda _: None,
        clock=clock or Clock(),
    )


# -- challenge parsing -------------------------------------------------------------------------


def test_bearer_challenge_with_several_scopes_and_error() -> None:
    header = (
        'Bearer realm="https://gitlab.example/jwt/auth",service="container_registry",'
        'scope="repository:grp/app:pull,push repository:grp/base:pull",error="insufficient_scope"'
    )
    [challenge] = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.realm == "https://gitlab.example/jwt/auth"
    assert challenge.service == "container_registry"
    assert challenge.scopes == ["repository:grp/app:pull,push", "repository:grp/base:pull"]
    assert challenge.error == "insufficient_scope"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("BASIC REALM=x", [Challenge("basic", {"realm": "x"})]),
        (
            'Bearer realm="a\\"b\\\\c, d", service = svc',
            [Challenge("bearer", {"realm": 'a"b\\c, d', "service": "svc"})],
        ),
        (
            'Basic realm="x", Bearer realm="https://t/token",service="s"',
            [
                Challenge("basic", {"realm": "x"}),
                Challenge("bearer", {"realm": "https://t/token", "service": "s"}),
            ],
        ),
        (
            "Negotiate abc==, Basic realm=r",
            [Challenge("negotiate"), Challenge("basic", {"realm": "r"})],
        ),
        (
            "Bearer realm=https://t/token,service=s",
            [Challenge("bearer", {"realm": "https://t/token", "service": "s"})],
        ),
        ('Bearer realm="unterminated', [Challenge("bearer", {"realm": "unterminated"})]),
        ("", []),
        ("   ,  ", []),
    ],
)
def test_challenge_edge_cases(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_merge_scopes_keeps_first_order_and_merges_actions() -> None:
    merged = merge_scopes(
        ["repository:grp/app:pull,push"],
        ["repository:grp/app:pull", "repository:grp/base:pull", "registry:catalog:*"],
    )
    assert merged == [
        "repository:grp/app:pull,push",
        "repository:grp/base:pull",
        "registry:catalog:*",
    ]
    assert merge_scopes(["repository:a:pull"], ["repository:a:push"]) == ["repository:a:pull,push"]


# -- the Authenticator on its own ----------------------------------------------------------------


class Fetcher:
    def __init__(self, answers: list[Mapping[str, object]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list[tuple[str, str]], str | None]] = []

    def __call__(
        self, realm: str, params: Sequence[tuple[str, str]], header: str | None
    ) -> Mapping[str, object]:
        self.calls.append((realm, list(params), header))
        return self.answers.pop(0)


CHALLENGE = f'Bearer realm="{REALM}",service="{SERVICE}",scope="repository:a:pull,push"'


def test_token_or_access_token_and_default_lifetime() -> None:
    fetch = Fetcher([{"access_token": "first"}, {"token": "second", "access_token": "ignored"}])
    clock = Clock()
    auth = Authenticator(ALICE, fetch, clock=clock)
    assert auth.on_unauthorized(CHALLENGE, ["repository:a:pull,push"], None) == [
        "repository:a:pull,push"
    ]
    assert auth.authorization(["repository:a:pull,push"]) == "Bearer first"
    clock.now += 45  # still valid (60 s default minus a safety margin)
    assert auth.authorization(["repository:a:pull"]) == "Bearer first"  # covered by pull,push
    clock.now += 20
    assert auth.authorization(["repository:a:pull,push"]) == "Bearer second"
    assert [c[2] for c in fetch.calls] == [basic("alice", USERS["alice"])] * 2


def test_expires_in_is_honoured() -> None:
    fetch = Fetcher([{"token": "long", "expires_in": 300}, {"token": "next"}])
    clock = Clock()
    auth = Authenticator(None, fetch, clock=clock)
    auth.on_unauthorized(CHALLENGE, [], None)
    assert auth.authorization(["repository:a:pull"]) == "Bearer long"
    clock.now += 250
    assert auth.authorization(["repository:a:pull"]) == "Bearer long"
    clock.now += 50
    assert auth.authorization(["repository:a:pull"]) == "Bearer next"
    assert fetch.calls[0][2] is None  # anonymous: no Basic to the token service


def test_tokens_are_cached_per_scope_set() -> None:
    fetch = Fetcher([{"token": "a"}, {"token": "b"}])
    auth = Authenticator(ALICE, fetch, clock=Clock())
    auth.on_unauthorized(CHALLENGE, [], None)
    assert auth.authorization(["repository:a:pull,push"]) == "Bearer a"
    assert auth.authorization(["repository:a:pull,push", "repository:b:pull"]) == "Bearer b"
    assert auth.authorization(["repository:b:pull"]) == "Bearer b"
    assert auth.authorization(["repository:a:pull,push"]) == "Bearer a"
    assert len(fetch.calls) == 2


def test_token_answer_without_token_is_an_auth_error() -> None:
    auth = Authenticator(ALICE, Fetcher([{"expires_in": 60}]), clock=Clock())
    auth.on_unauthorized(CHALLENGE, [], None)
    with pytest.raises(AuthError, match="without a token"):
        auth.authorization(["repository:a:pull"])


# -- token flow through the client -------------------------------------------------------------


@pytest.mark.parametrize("field", ["token", "access_token"])
def test_push_token_request_scopes_and_params(field: str) -> None:
    fake = FakeRegistry(auth="bearer", token_field=field)
    fake.blobs["grp/base"] = {sha(b"layer"): b"layer"}
    with client_for(fake) as client:
        assert mount_blob(client, "grp/app", Digest.of(b"layer"), "grp/base")
    [token_request] = fake.token_requests
    params = token_request.url.params
    assert params["service"] == SERVICE
    # The push scope comes first, the mount source after it, each as its own `scope` param.
    assert params.get_list("scope") == ["repository:grp/app:pull,push", "repository:grp/base:pull"]
    assert token_request.headers["authorization"] == basic("alice", USERS["alice"])
    posts = fake.calls("POST")
    assert "authorization" not in posts[0].headers  # first attempt anonymous, answered with 401
    assert posts[1].headers["authorization"] == "Bearer tok-0"


def test_token_is_reused_across_requests_until_it_expires() -> None:
    clock = Clock()
    fake = FakeRegistry(auth="bearer", expires_in=120)
    with client_for(fake, clock=clock) as client:
        for _ in range(3):
            assert blob_exists(client, "grp/app", Digest.of(b"x")) is None
        clock.now += 121
        assert blob_exists(client, "grp/app", Digest.of(b"x")) is None
    assert len(fake.token_requests) == 2
    assert len(fake.calls("HEAD")) == 5  # one 401 to learn the challenge, then one each


def test_invalid_token_mid_push_gets_a_new_token_and_repeats_on_the_same_url() -> None:
    fake = FakeRegistry(auth="bearer", expires_in=3600)

    def handle(request: httpx.Request) -> httpx.Response:
        response = fake.handle(request)
        if request.method == "PATCH":
            # Auth is checked when a request starts: the token expired during the long PATCH,
            # and only the next request (the PUT) is refused.
            fake.revoked.update(fake.tokens)
        return response

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    client = RegistryClient(
        REGISTRY, credentials=ALICE, transport=httpx.MockTransport(handle), clock=Clock()
    )
    with client:
        digest, size = upload_blob(client, "grp/app", lambda: HashingStream(chunks()), key="l")
    assert (digest, size) == (Digest.of(b"part one, part two"), 18)
    assert fake.blobs["grp/app"][str(digest)] == b"part one, part two"
    puts = fake.calls("PUT")
    assert len(puts) == 2
    assert puts[0].url == puts[1].url  # same session, same Location
    assert puts[0].headers["authorization"] != puts[1].headers["authorization"]
    assert len(fake.token_requests) == 2
    assert len(fake.calls("POST")) == 2  # the anonymous probe and the real one: no restart
    assert len(fake.calls("PATCH")) == 1


def test_401_on_a_streamed_patch_restarts_the_blob_in_a_fresh_session() -> None:
    fake = FakeRegistry(auth="bearer", expires_in=3600)
    events: list[Event] = []
    with client_for(fake) as client:
        upload_blob(client, "grp/app", lambda: BytesBlob(b"warm-up"), key="w")
        client.on_event = events.append
        fake.revoked.update(fake.tokens)  # expires between POST and PATCH
        location = _location(fake)
        fake.fail_once(
            lambda r: r.method == "POST", httpx.Response(202, headers={"Location": location})
        )
        before = len(fake.calls("POST"))
        digest, _ = upload_blob(client, "grp/app", lambda: HashingStream([b"data"]), key="l")
    assert fake.blobs["grp/app"][str(digest)] == b"data"
    assert len(fake.calls("POST")) - before == 2  # the blob was restarted in a new session
    assert [e.attempt for e in events if isinstance(e, BlobRetry)] == [1]


def _location(fake: FakeRegistry) -> str:
    # A session the fake knows, opened out of band so that the POST itself needs no auth.
    fake.uploads["manual"] = ("grp/app", 0, bytearray())
    return "/v2/grp/app/blobs/uploads/manual?_state=manual.0%3D%3D"


def test_insufficient_scope_is_an_auth_error_naming_the_source() -> None:
    fake = FakeRegistry(auth="bearer")
    with client_for(fake, credentials=None) as client, pytest.raises(AuthError) as caught:
        upload_blob(client, "grp/app", lambda: BytesBlob(b"x"), key="x")
    message = str(caught.value)
    assert "401" in message
    assert "no credentials found for registry.test" in message
    assert caught.value.codes == ("UNAUTHORIZED",)


def test_rejected_credentials_at_the_token_service() -> None:
    fake = FakeRegistry(auth="bearer")
    wrong = Credentials("alice", "wrong-password", "OCIFORGE_USERNAME/OCIFORGE_PASSWORD")
    with client_for(fake, credentials=wrong) as client, pytest.raises(AuthError) as caught:
        client.ping()
    assert "auth.test answered 401" in str(caught.value)
    assert "OCIFORGE_USERNAME/OCIFORGE_PASSWORD" in str(caught.value)
    assert "wrong-password" not in str(caught.value)


def test_ping_with_a_token_checks_the_credentials() -> None:
    fake = FakeRegistry(auth="bearer")
    with client_for(fake) as client:
        client.ping()
    [token_request] = fake.token_requests
    assert token_request.url.params.get_list("scope") == []
    assert fake.calls("GET")[-1].headers["authorization"] == "Bearer tok-0"


# -- Basic and registry tokens -----------------------------------------------------------------


def test_basic_registry() -> None:
    fake = FakeRegistry(auth="basic")
    with client_for(fake) as client:
        digest, _ = upload_blob(client, "app", lambda: HashingStream([b"abc"]), key="l")
    assert fake.blobs["app"][str(digest)] == b"abc"
    assert fake.token_requests == []
    sent = [r.headers.get("authorization") for r in fake.requests]
    assert sent[0] is None  # nothing is sent before the registry asks
    assert set(sent[1:]) == {basic("alice", USERS["alice"])}


def test_basic_registry_with_wrong_password_does_not_loop() -> None:
    fake = FakeRegistry(auth="basic")
    with client_for(fake, Credentials("alice", "nope", "x")) as client, pytest.raises(AuthError):
        client.ping()
    assert len(fake.requests) == 2


def test_registry_token_is_sent_as_bearer_without_exchange() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={})

    creds = Credentials("<token>", "rt-secret", "x", "registry_token")
    with RegistryClient(REGISTRY, credentials=creds, transport=httpx.MockTransport(handler)) as c:
        c.ping()
    assert seen == ["Bearer rt-secret"]


def test_credentials_never_go_to_a_plain_http_realm() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        challenge = 'Bearer realm="http://auth.example/token",service="s"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    transport = httpx.MockTransport(handler)
    client = RegistryClient(REGISTRY, credentials=ALICE, transport=transport)
    with client, pytest.raises(AuthError, match="plain-http token realm"):
        client.ping()


def test_no_secret_in_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeRegistry(auth="bearer")
    with caplog.at_level(logging.DEBUG), client_for(fake) as client:
        upload_blob(client, "grp/app", lambda: BytesBlob(b"x"), key="x")
    assert "registry.test" in caplog.text  # requests are logged ...
    for secret in (USERS["alice"], "tok-0", basic("alice", USERS["alice"])[6:]):
        assert secret not in caplog.text  # ... without credentials or tokens


def test_anonymous_ping_learns_the_challenge_without_a_token() -> None:
    fake = FakeRegistry(auth="bearer")
    with client_for(fake, credentials=None) as client:
        client.ping()
        assert client.auth.challenge is not None
        assert client.auth.challenge.realm == REALM
    assert fake.token_requests == []


def test_own_push_scope_stays_first_whatever_the_challenge_order() -> None:
    fetch = Fetcher([{"token": "t"}])
    auth = Authenticator(ALICE, fetch, clock=Clock())
    challenge = f'Bearer realm="{REALM}",scope="repository:base:pull repository:app:pull,push"'
    scopes = auth.on_unauthorized(challenge, ["repository:app:pull,push"], None)
    assert scopes is not None
    auth.authorization(scopes)
    assert fetch.calls[0][1] == [
        ("scope", "repository:app:pull,push"),
        ("scope", "repository:base:pull"),
    ]
