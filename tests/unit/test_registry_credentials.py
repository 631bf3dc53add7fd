from __future__ import annotations

import base64
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from ociforge.errors import UsageError
from ociforge.registry.credentials import Credentials, auth_file_paths, resolve_credentials

HOST = "registry.example.com"
SECRETS = ("env-secret", "ci-secret", "job-secret", "dac-secret", "file-secret", "helper-secret")


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    return tmp_path / "bin"


def helper(bin_dir: Path, name: str, answers: dict[str, tuple[str, str]]) -> None:
    """A docker-credential-<name> script answering ``get`` for the given servers, else exit 1."""
    table = {
        server: {"ServerURL": server, "Username": u, "Secret": s}
        for server, (u, s) in answers.items()
    }
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"table = {json.dumps(table)}\n"
        "assert sys.argv[1:] == ['get'], sys.argv\n"
        "server = sys.stdin.read().strip()\n"
        "if server not in table:\n"
        "    print('credentials not found in native keychain', file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "print(json.dumps(table[server]))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def base_env(bin_dir: Path) -> dict[str, str]:
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def resolve(env: dict[str, str], home: Path, host: str = HOST) -> Credentials | None:
    return resolve_credentials(host, env=env, home=home)


def full_env(tmp_path: Path, home: Path, bin_dir: Path) -> dict[str, str]:
    """Every source of the chain holds credentials for HOST, each with its own secret."""
    env = base_env(bin_dir)
    env.update(
        OCIFORGE_USERNAME="env-user",
        OCIFORGE_PASSWORD="env-secret",
        CI_REGISTRY=HOST,
        CI_REGISTRY_USER="gitlab-ci-token",
        CI_REGISTRY_PASSWORD="ci-secret",
        CI_JOB_TOKEN="job-secret",
        DOCKER_AUTH_CONFIG=json.dumps({"auths": {HOST: {"auth": auth("dac", "dac-secret")}}}),
    )
    auth_file = write_json(
        tmp_path / "auth.json", {"auths": {HOST: {"auth": auth("f", "file-secret")}}}
    )
    env["REGISTRY_AUTH_FILE"] = str(auth_file)
    return env


def test_chain_order_each_source_in_turn(tmp_path: Path, home: Path, bin_dir: Path) -> None:
    env = full_env(tmp_path, home, bin_dir)
    explicit = Credentials("me", "explicit-secret")
    assert resolve_credentials(HOST, env=env, home=home, explicit=explicit) is explicit
    seen = []
    for drop in (
        ["OCIFORGE_USERNAME", "OCIFORGE_PASSWORD"],
        ["CI_REGISTRY_USER", "CI_REGISTRY_PASSWORD"],
        ["CI_JOB_TOKEN"],
        ["DOCKER_AUTH_CONFIG"],
        ["REGISTRY_AUTH_FILE"],
    ):
        found = resolve(env, home)
        assert found is not None
        seen.append((found.username, found.secret))
        for name in drop:
            del env[name]
    assert seen == [
        ("env-user", "env-secret"),
        ("gitlab-ci-token", "ci-secret"),
        ("gitlab-ci-token", "job-secret"),
        ("dac", "dac-secret"),
        ("f", "file-secret"),
    ]
    assert resolve(env, home) is None  # anonymous at the end


def test_auth_file_order(tmp_path: Path, home: Path) -> None:
    env = {
        "REGISTRY_AUTH_FILE": str(tmp_path / "explicit.json"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "DOCKER_CONFIG": str(tmp_path / "dockercfg"),
    }
    paths = auth_file_paths(env, home)
    assert paths == [
        tmp_path / "explicit.json",
        tmp_path / "run" / "containers" / "auth.json",
        home / ".config" / "containers" / "auth.json",
        tmp_path / "dockercfg" / "config.json",
    ]
    assert auth_file_paths({}, home)[-1] == home / ".docker" / "config.json"
    # Files that know nothing about the host fall through to the next one.
    for index, path in enumerate(paths):
        write_json(path, {"auths": {"other.io": {"auth": auth("x", "y")}}})
        if index >= 2:
            write_json(path, {"auths": {HOST: {"auth": auth(f"user{index}", "pw")}}})
    found = resolve(env, home)
    assert found is not None
    assert found.username == "user2"
    assert found.source == f"{paths[2]} auths"


def test_gitlab_job_token_only_for_the_same_instance(home: Path) -> None:
    env = {
        "CI_REGISTRY": "registry.gitlab.example:5050",
        "CI_SERVER_HOST": "gitlab.example",
        "CI_JOB_TOKEN": "job-secret",
    }
    for host in ("registry.gitlab.example:5050", "registry.gitlab.example", "gitlab.example"):
        found = resolve(env, home, host)
        assert found is not None, host
        assert (found.username, found.secret) == ("gitlab-ci-token", "job-secret")
    # Never leak the job token to other registries.
    assert resolve(env, home, "docker.io") is None
    assert resolve(env, home, "registry.gitlab.example.evil.io") is None


def test_ci_registry_user_only_for_ci_registry(home: Path) -> None:
    env = {"CI_REGISTRY": "reg.gl.io", "CI_REGISTRY_USER": "u", "CI_REGISTRY_PASSWORD": "ci-secret"}
    found = resolve(env, home, "reg.gl.io")
    assert found is not None
    assert found.secret == "ci-secret"
    assert resolve(env, home, "other.io") is None


def test_half_set_ociforge_env_is_an_error(home: Path) -> None:
    with pytest.raises(UsageError, match="OCIFORGE_PASSWORD is not set"):
        resolve({"OCIFORGE_USERNAME": "u"}, home)


@pytest.mark.parametrize(
    "key", [HOST, f"https://{HOST}", f"https://{HOST}/v1/", f"http://{HOST}/v2/", HOST.upper()]
)
def test_auths_key_forms(home: Path, key: str) -> None:
    env = {"DOCKER_AUTH_CONFIG": json.dumps({"auths": {key: {"auth": auth("u", "p:with:colons")}}})}
    found = resolve(env, home)
    assert found is not None
    assert (found.username, found.secret, found.kind) == ("u", "p:with:colons", "password")


def test_docker_hub_uses_the_v1_index_key(home: Path) -> None:
    config = {"auths": {"https://index.docker.io/v1/": {"auth": auth("hubuser", "hubpw")}}}
    env = {"DOCKER_AUTH_CONFIG": json.dumps(config)}
    for host in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        found = resolve(env, home, host)
        assert found is not None
        assert found.username == "hubuser"


def test_identity_and_registry_tokens(home: Path) -> None:
    config = {
        "auths": {
            "id.io": {"identitytoken": "id-secret"},
            "rt.io": {"registrytoken": "rt-secret"},
            "both.io": {"auth": auth("u", "pw"), "identitytoken": "id-secret"},
            "empty.io": {},
        }
    }
    env = {"DOCKER_AUTH_CONFIG": json.dumps(config)}
    identity = resolve(env, home, "id.io")
    registry_token = resolve(env, home, "rt.io")
    both = resolve(env, home, "both.io")
    assert identity == Credentials(
        "<token>", "id-secret", "DOCKER_AUTH_CONFIG auths", "identity_token"
    )
    assert registry_token is not None
    assert (registry_token.secret, registry_token.kind) == ("rt-secret", "registry_token")
    assert both is not None
    assert (both.secret, both.kind) == ("pw", "password")
    assert resolve(env, home, "empty.io") is None


def test_cred_helpers_beat_creds_store_beats_auths(
    tmp_path: Path, home: Path, bin_dir: Path
) -> None:
    helper(bin_dir, "special", {HOST: ("helper-user", "helper-secret")})
    helper(bin_dir, "store", {HOST: ("store-user", "store-secret"), "b.io": ("sb", "sb-secret")})
    config = {
        "credHelpers": {HOST: "special"},
        "credsStore": "store",
        "auths": {HOST: {"auth": auth("a", "a")}, "c.io": {"auth": auth("c", "c-secret")}},
    }
    write_json(home / ".docker" / "config.json", config)
    env = base_env(bin_dir)
    found = resolve(env, home)
    assert found is not None
    assert (found.username, found.secret) == ("helper-user", "helper-secret")
    assert "docker-credential-special" in found.source
    store = resolve(env, home, "b.io")
    assert store is not None
    assert store.secret == "sb-secret"
    # The store has nothing for c.io (exit 1): auths still answers.
    fallback = resolve(env, home, "c.io")
    assert fallback is not None
    assert fallback.secret == "c-secret"


def test_helper_token_username_means_identity_token(home: Path, bin_dir: Path) -> None:
    helper(bin_dir, "acr", {HOST: ("<token>", "refresh-secret")})
    write_json(home / ".docker" / "config.json", {"credHelpers": {HOST: "acr"}})
    found = resolve(base_env(bin_dir), home)
    assert found is not None
    assert found.kind == "identity_token"


def test_missing_helper_is_ignored_with_a_warning(
    home: Path, bin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = {"credsStore": "desktop", "auths": {HOST: {"auth": auth("u", "pw")}}}
    write_json(home / ".docker" / "config.json", config)
    with caplog.at_level(logging.WARNING):
        found = resolve({"PATH": str(bin_dir)}, home)
    assert found is not None
    assert found.username == "u"
    assert "docker-credential-desktop not found" in caplog.text


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        (json.dumps({"auths": {HOST: {"auth": "%%%"}}}), "not base64"),
        (
            json.dumps({"auths": {HOST: {"auth": base64.b64encode(b"nocolon").decode()}}}),
            "user:password",
        ),
    ],
)
def test_broken_config_names_the_source(home: Path, document: str, complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint) as caught:
        resolve({"DOCKER_AUTH_CONFIG": document}, home)
    assert "DOCKER_AUTH_CONFIG" in str(caught.value)


def test_secrets_never_logged_or_shown(
    tmp_path: Path, home: Path, bin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    helper(bin_dir, "store", {HOST: ("h", "helper-secret")})
    write_json(home / ".docker" / "config.json", {"credsStore": "store"})
    env = full_env(tmp_path, home, bin_dir)
    found: list[Credentials | None] = []
    with caplog.at_level(logging.DEBUG, logger="ociforge"):
        for drop in (
            "OCIFORGE_USERNAME",
            "CI_REGISTRY_USER",
            "CI_JOB_TOKEN",
            "DOCKER_AUTH_CONFIG",
            "REGISTRY_AUTH_FILE",
            None,
        ):
            found.append(resolve(env, home))
            env.pop(drop or "", None)
            if drop == "OCIFORGE_USERNAME":
                del env["OCIFORGE_PASSWORD"]
    assert all(f is not None for f in found)
    assert {f.secret for f in found if f} == set(SECRETS)
    text = caplog.text + " ".join(repr(f) + str(f) for f in found)
    assert "OCIFORGE_USERNAME/OCIFORGE_PASSWORD" in caplog.text  # the source is logged
    for secret in SECRETS:
        assert secret not in text
