"""pytest fixtures for real registries (load with ``pytest_plugins`` from tests/conftest.py).

Registries are session-scoped (one process per mode, about 0.1 s to start; the basic one adds
0.25 s of pure-Python bcrypt); everything a test can disturb is per test: repository names are
unique per test, ``token_registry`` registers a fresh project, job token and pull-only user and
resets the token server's lifetime and request log, and fault proxies live for one test.

Fixtures: ``registry`` (no auth), ``basic_registry``, ``token_server``, ``token_registry``,
``repo_name``, ``make_fault_proxy``, ``fault_proxy`` (in front of ``registry``),
``tiny_oci_image`` (an OCI layout with one small gzip layer, for skopeo/umoci/ociforge),
``skopeo_env`` with the ``skopeo()`` helper (an independent client for cross-checks),
``tls_registry`` (https on 127.0.0.2, with its throw-away CA).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast, get_args

import pytest

from tests.support.faultproxy import FaultProxy, LocationMode
from tests.support.registry import RegistryServer
from tests.support.tls import make_tls_files
from tests.support.tokenserver import JOB_TOKEN_USER, TokenServer

_unique = itertools.count(1)


@dataclass(frozen=True)
class TokenRegistry:
    """A token-auth registry as a GitLab CI job sees it, with one project per test."""

    registry: RegistryServer
    tokens: TokenServer
    project: str  # "ci-<test>/project"
    job_token: str
    reader: tuple[str, str]  # pull-only (username, password) on the same project

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def url(self) -> str:
        return self.registry.url

    @property
    def image(self) -> str:
        """CI_REGISTRY_IMAGE: ``host:port/<project>``."""
        return f"{self.registry.host}/{self.project}"

    @property
    def ci_env(self) -> dict[str, str]:
        """The variables GitLab sets in a job of this project."""
        return {
            "GITLAB_CI": "true",
            "CI_REGISTRY": self.registry.host,
            "CI_REGISTRY_IMAGE": self.image,
            "CI_REGISTRY_USER": JOB_TOKEN_USER,
            "CI_REGISTRY_PASSWORD": self.job_token,
            "CI_JOB_TOKEN": self.job_token,
        }


@dataclass(frozen=True)
class OciImage:
    layout: Path
    tag: str
    manifest_digest: str
    layer_digest: str

    @property
    def reference(self) -> str:
        """``oci:<layout>:<tag>`` for skopeo."""
        return f"oci:{self.layout}:{self.tag}"


def unique_name(test_name: str) -> str:
    """A valid repository path component, unique in this session, readable in logs."""
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 't'}-{next(_unique)}"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with RegistryServer(tmp_path_factory.mktemp("registry-anonymous")) as server:
        yield server


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    workdir = tmp_path_factory.mktemp("registry-basic")
    with RegistryServer(workdir, mode="basic") as server:
        yield server


@pytest.fixture(scope="session")
def token_server() -> Iterator[TokenServer]:
    with TokenServer() as server:
        yield server


@pytest.fixture(scope="session")
def _token_registry_server(
    token_server: TokenServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RegistryServer]:
    workdir = tmp_path_factory.mktemp("registry-token")
    with RegistryServer(workdir, mode="token", token_auth=token_server.auth_config()) as server:
        yield server


@pytest.fixture
def repo_name(request: pytest.FixtureRequest) -> str:
    """``test/<test-name>-<n>``: a repository no other test touches."""
    return f"test/{unique_name(request.node.name)}"


@pytest.fixture
def token_registry(
    _token_registry_server: RegistryServer,
    token_server: TokenServer,
    request: pytest.FixtureRequest,
) -> Iterator[TokenRegistry]:
    token_server.reset()
    project = f"ci-{unique_name(request.node.name)}/project"
    job_token = token_server.add_job_token(project)
    reader = f"reader-{next(_unique)}"
    reader_password = token_server.add_pull_only_user(reader, project)
    yield TokenRegistry(
        _token_registry_server, token_server, project, job_token, (reader, reader_password)
    )
    token_server.reset()


class MakeFaultProxy(Protocol):
    def __call__(self, upstream_url: str, location_mode: str = "proxy") -> FaultProxy: ...


@pytest.fixture
def make_fault_proxy() -> Iterator[MakeFaultProxy]:
    """``make_fault_proxy(upstream_url, location_mode="proxy")``; stopped after the test."""
    started: list[FaultProxy] = []

    def make(upstream_url: str, location_mode: str = "proxy") -> FaultProxy:
        if location_mode not in get_args(LocationMode):
            raise ValueError(f"location_mode must be one of {get_args(LocationMode)}")
        mode = cast(LocationMode, location_mode)
        proxy = FaultProxy(upstream_url, location_mode=mode).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def fault_proxy(registry: RegistryServer, make_fault_proxy: MakeFaultProxy) -> FaultProxy:
    """A fault proxy in front of the anonymous ``registry``, fresh for each test."""
    return make_fault_proxy(registry.url)


@pytest.fixture(scope="session")
def skopeo_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for :func:`skopeo`: no user auth files, a permissive policy of its own."""
    home = tmp_path_factory.mktemp("skopeo-home")
    (home / "auth.json").write_text("{}")
    (home / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONFIG", "XDG_RUNTIME_DIR")}
    env.update(HOME=str(home), REGISTRY_AUTH_FILE=str(home / "auth.json"))
    return env


def skopeo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run skopeo (an independent client to check what a registry holds) with ``skopeo_env``."""
    policy = str(Path(env["HOME"]) / "policy.json")
    return subprocess.run(
        ["skopeo", "--policy", policy, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="session")
def tiny_oci_image(tmp_path_factory: pytest.TempPathFactory) -> OciImage:
    return write_tiny_oci_image(tmp_path_factory.mktemp("tiny-oci") / "layout", "t")


def write_tiny_oci_image(layout: Path, tag: str) -> OciImage:
    """An OCI image layout with one gzip layer holding ``hello.txt``, written by hand."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        content = b"hello from the ociforge test suite\n"
        info = tarfile.TarInfo("hello.txt")
        info.size, info.mode, info.mtime = len(content), 0o644, 1
        tar.addfile(info, io.BytesIO(content))
    layer = gzip.compress(tar_bytes.getvalue(), mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(tar_bytes.getvalue())]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _descriptor("application/vnd.oci.image.config.v1+json", config_bytes),
        "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    for blob in (layer, config_bytes, manifest_bytes):
        path = layout / "blobs" / "sha256" / _digest(blob).removeprefix("sha256:")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    index_entry = _descriptor("application/vnd.oci.image.manifest.v1+json", manifest_bytes)
    index_entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [index_entry]}))
    return OciImage(layout, tag, _digest(manifest_bytes), _digest(layer))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An anonymous registry serving https on 127.0.0.2 with a certificate from a throw-away
    CA (``tls_registry.tls``: its PEM files and a skopeo cert dir). 127.0.0.2 is loopback but
    not "localhost", so clients such as ociforge default to https for it, as for GitLab."""
    workdir = tmp_path_factory.mktemp("registry-tls")
    address = "127.0.0.2"
    files = make_tls_files(workdir / "tls", ip_addresses=(address,))
    with RegistryServer(workdir, tls=files, address=address) as server:
        yield server
