"""Registry credentials and the one chain that finds them.

Order (registry-notes.md, "Credentials"); the first source that yields credentials wins:

1. explicit credentials from the caller (``--username`` + ``--password-stdin``, the API argument);
2. ``OCIFORGE_USERNAME`` + ``OCIFORGE_PASSWORD`` (sent to whichever registry is pushed to);
3. GitLab CI: ``CI_REGISTRY_USER``/``CI_REGISTRY_PASSWORD`` when the host equals ``CI_REGISTRY``,
   else ``gitlab-ci-token`` + ``CI_JOB_TOKEN``, but only for hosts of the same GitLab instance
   (host name equal to that of ``CI_REGISTRY`` or ``CI_SERVER_HOST``, any port). A job token
   is a secret of that instance; sending it to docker.io or a mirror would leak it;
4. ``DOCKER_AUTH_CONFIG`` (config.json-shaped JSON in an environment variable);
5. auth files: ``REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
   ``~/.config/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` or
   ``~/.docker/config.json``. In each: ``credHelpers[host]``, then ``credsStore``, then
   ``auths``; a source that knows nothing about the host falls through to the next;
6. anonymous (``None``).

Identity tokens (``identitytoken``, or a helper answering ``Username == "<token>"``) would need
the OAuth2 refresh-token grant, which ociforge does not implement: they are sent as the password
of HTTP Basic to the token service, which registries such as ACR accept. ``registrytoken`` is
sent to the registry as a Bearer token as is. Environment and home are parameters, so tests never
read the real ones. The source is logged at debug level, never the value.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ociforge.errors import UsageError

log = logging.getLogger(__name__)

CredentialKind = Literal["password", "identity_token", "registry_token"]
_HELPER_TIMEOUT = 30.0
# Docker Hub is stored under its historical v1 index URL by `docker login`.
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
JOB_TOKEN_USER = "gitlab-ci-token"  # noqa: S105  (a user name GitLab fixes, no secret)


@dataclass(frozen=True)
class Credentials:
    """A user name and a secret; ``repr``/``str`` never show the secret.

    ``source`` says where they came from (for messages and logs); ``kind`` says how to send the
    secret: ``password`` and ``identity_token`` as HTTP Basic, ``registry_token`` as Bearer.
    """

    username: str
    secret: str = field(repr=False)
    source: str = "explicit credentials"
    kind: CredentialKind = "password"
    # A GitLab CI job token: the project it may push to (CI_PROJECT_PATH), for the message
    # that tells what to do when it is refused for another project.
    ci_project: str | None = None

    def __str__(self) -> str:
        return repr(self)


def resolve_credentials(
    host: str,
    *,
    env: Mapping[str, str],
    home: Path,
    explicit: Credentials | None = None,
) -> Credentials | None:
    """Walk the chain above for ``host`` (``name[:port]``); ``None`` means anonymous."""
    host = host.lower()
    found = explicit or _from_ociforge_env(env) or _from_gitlab_ci(host, env)
    if found is None and "DOCKER_AUTH_CONFIG" in env:
        config = _parse_json(env["DOCKER_AUTH_CONFIG"], "DOCKER_AUTH_CONFIG")
        found = _from_config(config, host, "DOCKER_AUTH_CONFIG", env)
    for path in [] if found else auth_file_paths(env, home):
        if path.is_file():
            config = _parse_json(_read_text(path), str(path))
            found = _from_config(config, host, str(path), env)
            if found:
                break
    if found:
        log.debug("credentials for %s: %s (%s)", host, found.source, found.kind)
    else:
        log.debug("no credentials for %s: anonymous", host)
    return found


def auth_file_paths(env: Mapping[str, str], home: Path) -> list[Path]:
    """The auth files of step 5, in the order they are consulted (missing ones included)."""
    paths = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    paths.append(home / ".config" / "containers" / "auth.json")
    docker_dir = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"
    paths.append(docker_dir / "config.json")
    return paths


def _from_ociforge_env(env: Mapping[str, str]) -> Credentials | None:
    user, password = env.get("OCIFORGE_USERNAME"), env.get("OCIFORGE_PASSWORD")
    if user and password:
        return Credentials(user, password, "OCIFORGE_USERNAME/OCIFORGE_PASSWORD")
    if user or password:
        missing = "OCIFORGE_PASSWORD" if user else "OCIFORGE_USERNAME"
        raise UsageError(f"{missing} is not set: set both OCIFORGE_USERNAME and OCIFORGE_PASSWORD")
    return None


def _from_gitlab_ci(host: str, env: Mapping[str, str]) -> Credentials | None:
    ci_registry = env.get("CI_REGISTRY", "").lower()
    user, password = env.get("CI_REGISTRY_USER"), env.get("CI_REGISTRY_PASSWORD")
    if ci_registry and host == ci_registry and user and password:
        project = _ci_project(env) if user == JOB_TOKEN_USER else None
        source = "GitLab CI_REGISTRY_USER/CI_REGISTRY_PASSWORD"
        return Credentials(user, password, source, ci_project=project)
    job_token = env.get("CI_JOB_TOKEN")
    instance_hosts = {_hostname(ci_registry), _hostname(env.get("CI_SERVER_HOST", "").lower())}
    if job_token and _hostname(host) in instance_hosts - {""}:
        source = "GitLab CI_JOB_TOKEN"
        return Credentials(JOB_TOKEN_USER, job_token, source, ci_project=_ci_project(env))
    return None


def _ci_project(env: Mapping[str, str]) -> str | None:
    """The job's project: CI_PROJECT_PATH, else CI_REGISTRY_IMAGE without its host."""
    if env.get("CI_PROJECT_PATH"):
        return env["CI_PROJECT_PATH"]
    image = env.get("CI_REGISTRY_IMAGE", "")
    return image.split("/", 1)[1] if "/" in image else None


def _hostname(host: str) -> str:
    """``name`` of ``name[:port]`` (``[v6]`` kept bracketed)."""
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.split(":", 1)[0]


def _from_config(
    config: Mapping[str, object], host: str, source: str, env: Mapping[str, str]
) -> Credentials | None:
    helpers = config.get("credHelpers")
    if isinstance(helpers, Mapping):
        helper = _lookup(helpers, host)
        if isinstance(helper, str) and helper:
            found = run_helper(helper, _helper_server(host), env, f"{source} credHelpers")
            if found:
                return found
    store = config.get("credsStore")
    if isinstance(store, str) and store:
        found = run_helper(store, _helper_server(host), env, f"{source} credsStore")
        if found:
            return found
    auths = config.get("auths")
    if isinstance(auths, Mapping):
        entry = _lookup(auths, host)
        if isinstance(entry, Mapping):
            return _from_auth_entry(entry, f"{source} auths")
    return None


def _lookup(table: Mapping[str, object], host: str) -> object | None:
    """Exact key first, then keys like ``https://host/v1/`` that normalise to the host."""
    if host in table:
        return table[host]
    wanted = ({_DOCKER_HUB_KEY} | _DOCKER_HUB_HOSTS) if host in _DOCKER_HUB_HOSTS else {host}
    for key, value in table.items():
        if key in wanted or _normalise_key(key) in wanted:
            return value
    return None


def _normalise_key(key: str) -> str:
    key = key.lower()
    for prefix in ("https://", "http://"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.split("/", 1)[0]


def _helper_server(host: str) -> str:
    return _DOCKER_HUB_KEY if host in _DOCKER_HUB_HOSTS else host


def _from_auth_entry(entry: Mapping[str, object], source: str) -> Credentials | None:
    def text(name: str) -> str:
        value = entry.get(name)
        return value if isinstance(value, str) else ""

    user, password = text("username"), text("password")
    if text("auth"):
        user, password = _decode_auth(text("auth"), source)
    # registrytoken needs no exchange at all; a real password beats an identity token, whose
    # OAuth2 refresh-token grant ociforge does not implement.
    if text("registrytoken"):
        return Credentials(user or "<token>", text("registrytoken"), source, "registry_token")
    if user and password:
        return Credentials(user, password, source)
    if text("identitytoken"):
        return Credentials(user or "<token>", text("identitytoken"), source, "identity_token")
    return None


def _decode_auth(value: str, source: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise UsageError(f"{source}: 'auth' is not base64 of user:password") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise UsageError(f"{source}: 'auth' does not decode to user:password")
    return user, password


def run_helper(name: str, server: str, env: Mapping[str, str], source: str) -> Credentials | None:
    """Run ``docker-credential-<name> get`` with ``server`` on stdin; ``None`` if it has none."""
    program = f"docker-credential-{name}"
    executable = shutil.which(program, path=env.get("PATH", os.defpath))
    if executable is None:
        log.warning("credential helper %s not found on PATH; ignoring it", program)
        return None
    try:
        result = subprocess.run(
            [executable, "get"],
            input=server,
            capture_output=True,
            text=True,
            env=dict(env),
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("credential helper %s failed (%s); ignoring it", program, type(exc).__name__)
        return None
    if result.returncode != 0:
        # Non-zero is the protocol's "no credentials for this server". Its stderr is not logged:
        # ociforge cannot know what a third-party helper prints there.
        log.debug("%s has no credentials for %s (exit %d)", program, server, result.returncode)
        return None
    return _parse_helper_answer(result.stdout, f"{source} ({program})")


def _parse_helper_answer(stdout: str, source: str) -> Credentials | None:
    try:
        answer = json.loads(stdout)
    except json.JSONDecodeError:
        log.warning("%s answered something that is not JSON; ignoring it", source)
        return None
    if not isinstance(answer, dict):
        return None
    user, secret = answer.get("Username"), answer.get("Secret")
    if not isinstance(user, str) or not isinstance(secret, str) or not secret:
        return None
    kind: CredentialKind = "identity_token" if user == "<token>" else "password"
    return Credentials(user, secret, source, kind)


def _parse_json(text: str, source: str) -> Mapping[str, object]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source} is not valid JSON (line {exc.lineno}): fix or remove it"
        ) from None
    if not isinstance(value, dict):
        raise UsageError(f"{source} must hold a JSON object")
    return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read auth file {path}: {exc}") from None
