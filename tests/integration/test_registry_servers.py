"""The test registries, token server and fault proxy, proven with independent clients only
(skopeo, curl, httpx): if these pass, a failing ociforge push test is ociforge's fault."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faultproxy import (
    Delay,
    Fault,
    FaultProxy,
    InvalidToken,
    ResetConnection,
    html_page,
    registry_error,
    too_many_requests,
)
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy, OciImage, TokenRegistry, skopeo
from tests.support.tokenserver import Grant, TokenServer, decode_token, grant_access

pytestmark = pytest.mark.integration


def push(env: dict[str, str], image: OciImage, dest: str, *creds: str) -> None:
    args = ["copy", "--dest-tls-verify=false", *creds, image.reference, f"docker://{dest}"]
    result = skopeo(env, *args)
    assert result.returncode == 0, result.stderr


def inspect_digest(env: dict[str, str], ref: str, *creds: str) -> str:
    result = skopeo(env, "inspect", "--raw", "--tls-verify=false", *creds, f"docker://{ref}")
    assert result.returncode == 0, result.stderr
    return "sha256:" + hashlib.sha256(result.stdout.encode()).hexdigest()


@pytest.fixture(scope="module")
def web() -> Iterator[httpx.Client]:
    """One client for the module: a new httpx client costs ~50 ms (its TLS context)."""
    with httpx.Client(timeout=30) as client:
        yield client


def fetch_token(
    web: httpx.Client, tokens: TokenServer, scopes: list[str], auth: tuple[str, str] | None
) -> str:
    params = httpx.QueryParams([("service", tokens.service), *(("scope", s) for s in scopes)])
    response = web.get(tokens.realm, params=params, auth=auth)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"token"}  # like GitLab: no expires_in, no access_token
    token: str = response.json()["token"]
    return token


def with_digest(location: str, digest: str) -> str:
    """The upload URL for the final PUT; the Location already carries ``?_state=``."""
    return f"{location}&digest={digest}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- plain registries


def test_anonymous_registry_round_trips_an_image(
    registry: RegistryServer, tiny_oci_image: OciImage, repo_name: str, skopeo_env: dict[str, str]
) -> None:
    push(skopeo_env, tiny_oci_image, f"{registry.host}/{repo_name}:t")

    assert inspect_digest(skopeo_env, f"{registry.host}/{repo_name}:t") == (
        tiny_oci_image.manifest_digest
    )
    layer_hex = tiny_oci_image.layer_digest.removeprefix("sha256:")
    assert list(registry.storage_dir.rglob(f"blobs/sha256/{layer_hex[:2]}/{layer_hex}/data"))
    assert f"/v2/{repo_name}/manifests/t" in registry.log_text()


def test_registry_deletes_blobs(registry: RegistryServer, repo_name: str) -> None:
    blob = b"to be deleted"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with httpx.Client(base_url=registry.url) as client:
        location = client.post(f"/v2/{repo_name}/blobs/uploads/").headers["Location"]
        assert client.put(with_digest(location, digest), content=blob).status_code == 201
        assert client.head(f"/v2/{repo_name}/blobs/{digest}").status_code == 200

        assert client.delete(f"/v2/{repo_name}/blobs/{digest}").status_code == 202
        assert client.head(f"/v2/{repo_name}/blobs/{digest}").status_code == 404


def test_registry_can_answer_relative_locations(web: httpx.Client, tmp_path: Path) -> None:
    with RegistryServer(tmp_path, relative_urls=True) as server:
        started = web.post(f"{server.url}/v2/grp/app/blobs/uploads/")
    assert started.status_code == 202
    assert started.headers["Location"].startswith("/v2/grp/app/blobs/uploads/")


def test_basic_registry_demands_the_right_password(basic_registry: RegistryServer) -> None:
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials

    def curl(*args: str) -> str:
        cmd = ["curl", "-s", "-o", "/dev/null", "-D", "-", *args, f"{basic_registry.url}/v2/"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout

    anonymous = curl()
    assert anonymous.startswith("HTTP/1.1 401")
    assert 'www-authenticate: basic realm="basic-realm"' in anonymous.lower()
    assert curl("-u", f"{user}:{password}x").startswith("HTTP/1.1 401")
    assert curl("-u", f"{user}:{password}").startswith("HTTP/1.1 200")


def test_basic_registry_accepts_skopeo_with_credentials_only(
    basic_registry: RegistryServer,
    tiny_oci_image: OciImage,
    repo_name: str,
    skopeo_env: dict[str, str],
) -> None:
    assert basic_registry.credentials is not None
    creds = ":".join(basic_registry.credentials)
    dest = f"{basic_registry.host}/{repo_name}:t"

    refused = skopeo(
        skopeo_env, "copy", "--dest-tls-verify=false", tiny_oci_image.reference, f"docker://{dest}"
    )
    assert refused.returncode != 0
    assert "unauthorized" in refused.stderr.lower()

    push(skopeo_env, tiny_oci_image, dest, f"--dest-creds={creds}")
    got = inspect_digest(skopeo_env, dest, f"--creds={creds}")
    assert got == tiny_oci_image.manifest_digest


# --- token auth


def test_job_token_pushes_below_its_project_and_reader_pulls(
    token_registry: TokenRegistry, tiny_oci_image: OciImage, skopeo_env: dict[str, str]
) -> None:
    env = token_registry.ci_env
    dest = f"{env['CI_REGISTRY_IMAGE']}/app:t"
    push(
        skopeo_env,
        tiny_oci_image,
        dest,
        f"--dest-creds={env['CI_REGISTRY_USER']}:{env['CI_REGISTRY_PASSWORD']}",
    )

    reader = ":".join(token_registry.reader)
    assert inspect_digest(skopeo_env, dest, f"--creds={reader}") == tiny_oci_image.manifest_digest
    seen = token_registry.tokens.requests
    assert seen and all(r.method == "GET" and r.auth_given for r in seen)
    push_grants = [a for r in seen for a in r.granted if "push" in a.actions]
    assert {a.name for a in push_grants} == {f"{token_registry.project}/app"}
    assert all(token_registry.job_token not in r.query for r in seen)


def test_pull_only_user_cannot_push(
    web: httpx.Client,
    token_registry: TokenRegistry,
    tiny_oci_image: OciImage,
    skopeo_env: dict[str, str],
) -> None:
    reader = ":".join(token_registry.reader)
    refused = skopeo(
        skopeo_env,
        "copy",
        "--dest-tls-verify=false",
        f"--dest-creds={reader}",
        tiny_oci_image.reference,
        f"docker://{token_registry.image}:t",
    )
    assert refused.returncode != 0
    assert "requested access to the resource is denied" in refused.stderr

    scope = f"repository:{token_registry.project}:pull,push"
    token = fetch_token(web, token_registry.tokens, [scope], token_registry.reader)
    assert decode_token(token)[1]["access"] == [
        {"type": "repository", "name": token_registry.project, "actions": ["pull"]}
    ]
    upload = f"{token_registry.url}/v2/{token_registry.project}/blobs/uploads/"
    response = web.post(upload, headers=bearer(token))
    assert response.status_code == 401
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_token_server_answers_like_gitlab(web: httpx.Client, token_registry: TokenRegistry) -> None:
    tokens = token_registry.tokens
    job = ("gitlab-ci-token", token_registry.job_token)
    own, other = token_registry.project, "someone/else"
    service = {"service": tokens.service}

    assert web.post(tokens.realm, params=service, auth=job).status_code == 404
    wrong = web.get(tokens.realm, params=service, auth=(job[0], "nope"))
    assert wrong.status_code == 401
    assert wrong.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert web.get(tokens.realm, params={"service": "other"}, auth=job).status_code == 404
    assert web.get(tokens.realm, params=service).status_code == 403

    anonymous = fetch_token(web, tokens, [f"repository:{own}:pull"], None)
    assert decode_token(anonymous)[1]["access"] == []  # a private project
    tokens.allow_anonymous(Grant(own, frozenset({"pull"})))
    public = fetch_token(web, tokens, [f"repository:{own}:pull,push"], None)
    assert decode_token(public)[1]["access"] == [
        {"type": "repository", "name": own, "actions": ["pull"]}
    ]

    scopes = [f"repository:{own}/a/b:push,pull repository:{other}:pull", f"repository:{own}:pull"]
    header, claims = decode_token(fetch_token(web, tokens, scopes, job))
    assert claims["access"] == [
        {"type": "repository", "name": f"{own}/a/b", "actions": ["push", "pull"]},
        {"type": "repository", "name": own, "actions": ["pull"]},
    ]
    assert header["alg"] == "RS256"
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", str(header["kid"]))
    assert claims["aud"] == tokens.service and claims["iss"] == tokens.issuer
    assert isinstance(claims["exp"], int) and isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] in (300, 301)
    assert [r.status for r in tokens.requests] == [404, 401, 404, 403, 200, 200, 200]


def test_job_token_grants_stop_two_levels_below_the_project() -> None:
    grants = (Grant("grp/proj", frozenset({"pull", "push"})),)
    scopes = [
        "repository:grp/proj/a/b/c:pull,push",
        "repository:grp/project:pull",
        "repository:grp/proj/a/b:delete,push",
        "registry:catalog:*",
    ]
    assert [(a.name, a.actions) for a in grant_access(scopes, grants)] == [
        ("grp/proj/a/b", ("push",))
    ]


def test_x5c_tokens_are_accepted(web: httpx.Client, tmp_path: Path) -> None:
    with TokenServer(key_header="x5c") as tokens:
        job = tokens.add_job_token("grp/proj")
        auth = tokens.auth_config()
        with RegistryServer(tmp_path, mode="token", token_auth=auth) as server:
            token = fetch_token(web, tokens, ["repository:grp/proj:pull"], ("gitlab-ci-token", job))
            assert "x5c" in decode_token(token)[0]
            response = web.get(f"{server.url}/v2/grp/proj/tags/list", headers=bearer(token))
    assert response.status_code == 404  # authorized; the repository just does not exist
    assert response.json()["errors"][0]["code"] == "NAME_UNKNOWN"


def test_short_lived_token_expires_but_the_upload_session_survives(
    web: httpx.Client,
    token_registry: TokenRegistry,
) -> None:
    tokens, repo = token_registry.tokens, f"{token_registry.project}/app"
    job = ("gitlab-ci-token", token_registry.job_token)
    scope = [f"repository:{repo}:pull,push"]
    long_lived = fetch_token(web, tokens, scope, job)
    tokens.set_registry_validity(1)
    short = fetch_token(web, tokens, scope, job)
    blob = b"survives a token refresh"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with httpx.Client(base_url=token_registry.url) as client:
        started = client.post(f"/v2/{repo}/blobs/uploads/", headers=bearer(short))
        assert started.status_code == 202
        time.sleep(2.1)  # validity 1 s means at most 2 s (exp is rounded up)

        expired = client.put(
            with_digest(started.headers["Location"], digest),
            content=blob,
            headers=bearer(short),
        )
        assert expired.status_code == 401
        assert 'error="invalid_token"' in expired.headers["WWW-Authenticate"]
        finished = client.put(
            with_digest(started.headers["Location"], digest),
            content=blob,
            headers=bearer(long_lived),
        )
    assert finished.status_code == 201


# --- fault proxy


def test_proxy_carries_a_skopeo_push_end_to_end(
    fault_proxy: FaultProxy,
    registry: RegistryServer,
    tiny_oci_image: OciImage,
    repo_name: str,
    skopeo_env: dict[str, str],
) -> None:
    push(skopeo_env, tiny_oci_image, f"{fault_proxy.host}/{repo_name}:t")

    # Uploads went through the proxy only if the registry's Locations were rewritten.
    assert fault_proxy.count("PATCH", r"/blobs/uploads/") >= 1
    assert fault_proxy.count("PUT", r"/blobs/uploads/") >= 1
    assert fault_proxy.count("PUT", rf"^/v2/{repo_name}/manifests/t$") == 1
    got = inspect_digest(skopeo_env, f"{registry.host}/{repo_name}:t")
    assert got == tiny_oci_image.manifest_digest


@pytest.mark.parametrize(
    ("mode", "pattern"),
    [
        ("proxy", r"^http://{proxy}/v2/{repo}/blobs/uploads/[^/]+\?_state="),
        ("relative", r"^/v2/{repo}/blobs/uploads/[^/]+\?_state="),
        ("wrong_scheme", r"^https://{proxy}/v2/{repo}/blobs/uploads/"),
        ("upstream", r"^http://{registry}/v2/{repo}/blobs/uploads/"),
    ],
)
def test_proxy_location_modes(
    web: httpx.Client,
    make_fault_proxy: MakeFaultProxy,
    registry: RegistryServer,
    repo_name: str,
    mode: str,
    pattern: str,
) -> None:
    proxy = make_fault_proxy(registry.url, mode)
    response = web.post(f"{proxy.url}/v2/{repo_name}/blobs/uploads/")
    expected = pattern.format(
        proxy=re.escape(proxy.host), registry=re.escape(registry.host), repo=re.escape(repo_name)
    )
    assert response.status_code == 202
    assert re.match(expected, response.headers["Location"]), response.headers["Location"]


def test_proxy_scripted_status_faults_then_recovery(fault_proxy: FaultProxy) -> None:
    fault_proxy.add_fault(
        Fault("GET", r"^/v2/$", registry_error(503, "UNAVAILABLE", "try later"), times=2),
        Fault("GET", r"^/v2/$", too_many_requests(retry_after=1), nth=3),
        Fault("GET", r"^/v2/$", html_page(502), nth=4),
        Fault("GET", r"^/v2/$", Delay(0.3), nth=5),
    )
    with httpx.Client(base_url=fault_proxy.url) as client:
        answers = [client.get("/v2/") for _ in range(4)]
        started = time.monotonic()
        delayed = client.get("/v2/")
        elapsed = time.monotonic() - started
        after = client.get("/v2/")

    assert [r.status_code for r in answers] == [503, 503, 429, 502]
    assert answers[0].json()["errors"][0]["code"] == "UNAVAILABLE"
    assert answers[2].headers["Retry-After"] == "1"
    assert answers[3].headers["Content-Type"] == "text/html"
    assert "<title>502 Bad Gateway</title>" in answers[3].text
    assert delayed.status_code == 200 and elapsed >= 0.3
    assert after.status_code == 200
    assert [r.fault for r in fault_proxy.requests] == [*["Respond"] * 4, "Delay", None]


def test_stopped_proxy_also_drops_kept_alive_connections(
    make_fault_proxy: MakeFaultProxy, registry: RegistryServer
) -> None:
    proxy = make_fault_proxy(registry.url)
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get("/v2/").status_code == 200
        proxy.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/v2/")


def test_proxy_html_413_is_seen_by_curl(fault_proxy: FaultProxy, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"x" * 1000)
    fault_proxy.add_fault(Fault("PATCH", r"/blobs/uploads/", html_page(413, drain_body=False)))
    cmd = [
        "curl",
        "-s",
        "-X",
        "PATCH",
        "--data-binary",
        f"@{body}",
        "-w",
        "\n%{http_code}",
        f"{fault_proxy.url}/v2/x/blobs/uploads/abc",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False).stdout
    assert out.endswith("\n413")
    assert "413 Request Entity Too Large" in out


def _pieces(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_proxy_streams_a_large_chunked_patch(fault_proxy: FaultProxy, repo_name: str) -> None:
    data = os.urandom(12 * 1024 * 1024 + 7)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with httpx.Client(base_url=fault_proxy.url, timeout=30) as client:
        location = client.post(f"/v2/{repo_name}/blobs/uploads/").headers["Location"]
        patched = client.patch(location, content=_pieces(data))  # generator: chunked
        assert patched.status_code == 202
        done = client.put(with_digest(patched.headers["Location"], digest))
        assert done.status_code == 201
        assert client.head(f"/v2/{repo_name}/blobs/{digest}").headers["Content-Length"] == str(
            len(data)
        )
    patch = next(r for r in fault_proxy.requests if r.method == "PATCH")
    assert patch.body_bytes == len(data)


def test_proxy_resets_mid_patch_and_a_fresh_session_works(
    fault_proxy: FaultProxy, repo_name: str
) -> None:
    data = os.urandom(4 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fault_proxy.add_fault(Fault("PATCH", r"/blobs/uploads/", ResetConnection(64 * 1024)))
    with httpx.Client(base_url=fault_proxy.url, timeout=30) as client:
        first = client.post(f"/v2/{repo_name}/blobs/uploads/").headers["Location"]
        with pytest.raises(httpx.TransportError):
            client.patch(first, content=_pieces(data))

        second = client.post(f"/v2/{repo_name}/blobs/uploads/").headers["Location"]
        patched = client.patch(second, content=_pieces(data))
        done = client.put(with_digest(patched.headers["Location"], digest))
    assert done.status_code == 201
    reset = fault_proxy.faults_fired()
    assert [(r.method, r.status, r.body_bytes) for r in reset] == [("PATCH", None, 64 * 1024)]


def test_proxy_invalid_token_fault_looks_like_an_expired_token(
    web: httpx.Client, token_registry: TokenRegistry, make_fault_proxy: MakeFaultProxy
) -> None:
    proxy = make_fault_proxy(token_registry.url)
    repo = f"{token_registry.project}/app"
    proxy.add_fault(Fault("GET", r"/tags/list$", InvalidToken()))
    job = ("gitlab-ci-token", token_registry.job_token)
    token = fetch_token(web, token_registry.tokens, [f"repository:{repo}:pull"], job)
    with httpx.Client(base_url=proxy.url, headers=bearer(token)) as client:
        refused = client.get(f"/v2/{repo}/tags/list")
        again = client.get(f"/v2/{repo}/tags/list")
    challenge = refused.headers["WWW-Authenticate"]
    assert refused.status_code == 401
    assert challenge.startswith(f'Bearer realm="{token_registry.tokens.realm}"')
    assert f'scope="repository:{repo}:pull"' in challenge
    assert challenge.endswith('error="invalid_token"')
    assert again.status_code == 404  # the same token, now let through: authorized
    assert json.loads(again.text)["errors"][0]["code"] == "NAME_UNKNOWN"
