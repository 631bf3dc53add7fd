"""`ociforge push` to a registry over verified TLS, as GitLab's registry always is.

The registry (distribution 2.8.2) serves https on 127.0.0.2 with a certificate from a throw-away
CA. 127.0.0.2 is loopback, but not one of the names ociforge talks plain http to, so every push
here is https with certificate verification, exactly as against a real host. What was pushed is
read back by skopeo over TLS trusting the same CA; the registry's own log tells which requests
reached it and over how many connections.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ociforge.registry.client import LOOPBACK_HOSTS
from tests.integration.test_push_e2e import APP, Run, cli_env, ociforge
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import skopeo, unique_name
from tests.support.tls import TlsFiles

pytestmark = pytest.mark.integration

JOBS = 4
_REMOTE_ADDR = re.compile(r'http\.request\.remoteaddr="?([^" ]+)')
_USER_AGENT = re.compile(r"http\.request\.useragent=(\S*)")


class RegistryLog:
    """The registry's log from now on: what one ociforge run made the registry see."""

    def __init__(self, server: RegistryServer) -> None:
        self.server = server
        self.start = len(server.log_text())

    def lines(self, marker: str | None = None) -> list[str]:
        """New log lines. The registry logs a request after answering it, so a client may
        exit before its last line is written: wait for ``marker`` (a request's access-log
        text), or else for a probe of our own, which is logged after anything sent before."""
        if marker is None:
            marker = f"/v2/{unique_name('log-marker')}/tags/list"
            context = tls_files(self.server).client_context()
            _get(self.server, marker, context)
        deadline = time.monotonic() + 5
        while True:
            text = self.server.log_text()[self.start :]
            if marker in text or time.monotonic() > deadline:
                assert marker in text, text
                return [line for line in text.splitlines() if marker not in line]
            time.sleep(0.02)


def ociforge_requests(lines: list[str]) -> list[str]:
    """Remote ``ip:port`` of each request ociforge sent (one port per TCP connection)."""
    completed = [line for line in lines if 'msg="response completed"' in line]
    ours = [line for line in completed if _user_agent(line).startswith("ociforge/")]
    return [_remote_addr(line) for line in ours]


def _user_agent(line: str) -> str:
    match = _USER_AGENT.search(line)
    return match.group(1).strip('"') if match else ""


def _remote_addr(line: str) -> str:
    match = _REMOTE_ADDR.search(line)
    assert match, line
    return match.group(1)


def _get(server: RegistryServer, path: str, context: ssl.SSLContext) -> None:
    conn = http.client.HTTPSConnection(server.address, server.port, timeout=5, context=context)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    finally:
        conn.close()


def tls_files(server: RegistryServer) -> TlsFiles:
    assert server.tls is not None, "not a TLS registry"
    return server.tls


def skopeo_digest(skopeo_env: dict[str, str], server: RegistryServer, dest: str) -> str:
    """The manifest digest skopeo reads over verified TLS, trusting only the test CA."""
    cert_dir = str(tls_files(server).cert_dir)
    result = skopeo(skopeo_env, "inspect", "--cert-dir", cert_dir, f"docker://{dest}")
    assert result.returncode == 0, result.stderr
    digest: str = json.loads(result.stdout)["Digest"]
    return digest


def only_error_line(run: Run) -> str:
    """The ``ociforge: error:`` line, which must be all that stderr holds."""
    line = run.one_line_error()
    assert run.err.strip().splitlines() == [line], run.explain()
    return line


@dataclass(frozen=True)
class ColdPush:
    run: Run
    dest: str
    home: Path
    connections: list[str]  # remote ip:port of every request, in log order


@pytest.fixture(scope="module")
def cold_push(
    closure: BuiltClosure,
    tls_registry: RegistryServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> ColdPush:
    """One cold push over TLS (empty HOME, so an empty layer cache) with parallel uploads."""
    home = tmp_path_factory.mktemp("tls-home")
    dest = f"{tls_registry.host}/test/{unique_name('tls-cold')}:v1"
    log = RegistryLog(tls_registry)
    ca = str(tls_files(tls_registry).ca_file)
    run = ociforge(
        "push", closure[APP], dest, "--ca-file", ca, "--jobs", str(JOBS), env=cli_env(home)
    )
    assert run.code == 0, run.explain()
    repo, tag = dest.split("/", 1)[1].rsplit(":", 1)
    manifest_put = f'"PUT /v2/{repo}/manifests/{tag} '
    return ColdPush(run, dest, home, ociforge_requests(log.lines(manifest_put)))


def test_the_tls_registry_is_https_by_default_and_trusted_only_with_its_ca(
    tls_registry: RegistryServer, skopeo_env: dict[str, str]
) -> None:
    # What makes the other tests mean something: ociforge picks https for this host, and
    # nothing on this machine trusts the certificate unless told about the test CA.
    assert tls_registry.address not in LOOPBACK_HOSTS
    assert tls_registry.url.startswith("https://127.0.0.2:")
    untrusted = skopeo(skopeo_env, "inspect", f"docker://{tls_registry.host}/test/none:t")
    assert untrusted.returncode != 0
    assert "certificate signed by unknown authority" in untrusted.stderr


def test_push_with_ca_file_is_what_skopeo_reads_over_tls(
    cold_push: ColdPush, tls_registry: RegistryServer, skopeo_env: dict[str, str]
) -> None:
    digest = cold_push.run.pushed()[cold_push.dest]
    assert skopeo_digest(skopeo_env, tls_registry, cold_push.dest) == digest


def test_parallel_uploads_reuse_their_tls_connections(cold_push: ColdPush) -> None:
    # A ping, a manifest GET, POST + PATCH + PUT for each of the 4 layers and the config, the
    # manifest PUT: over at most one connection per upload worker (plus the main thread's),
    # not one TLS handshake per request.
    requests = cold_push.connections
    connections = set(requests)
    assert len(requests) >= 4 * 3 + 2, requests
    assert len(connections) <= JOBS + 1, requests
    assert len(connections) < len(requests) / 2, requests


def test_warm_push_over_tls_is_up_to_date(
    cold_push: ColdPush, closure: BuiltClosure, tls_registry: RegistryServer
) -> None:
    ca = str(tls_files(tls_registry).ca_file)
    log = RegistryLog(tls_registry)
    run = ociforge(
        "push", closure[APP], cold_push.dest, "--ca-file", ca, env=cli_env(cold_push.home)
    )
    assert run.code == 0, run.explain()
    assert run.pushed() == cold_push.run.pushed()
    assert run.err.strip().splitlines() == [
        "ociforge: up to date: every tag already holds this image"
    ]
    # Nothing was uploaded: only reads went over the wire.
    methods = {m for line in log.lines() for m in re.findall(r'"(HEAD|GET|POST|PATCH|PUT) ', line)}
    assert methods <= {"GET", "HEAD"}, methods


def test_push_without_the_ca_fails_on_the_certificate_and_names_ca_file(
    closure: BuiltClosure, tls_registry: RegistryServer, tmp_path: Path
) -> None:
    dest = f"{tls_registry.host}/test/{unique_name('tls-untrusted')}:t"
    log = RegistryLog(tls_registry)
    run = ociforge("push", closure[APP], dest, env=cli_env(tmp_path / "home"))
    assert run.code == 5, run.explain()
    line = only_error_line(run)
    assert f"https://{tls_registry.host}/v2/" in line
    assert "certificate verify failed" in line
    assert "pass --ca-file" in line
    # The handshake failed, and no request (least of all a plain-http retry) followed.
    lines = log.lines()
    assert any("http: TLS handshake error" in line for line in lines), lines
    assert ociforge_requests(lines) == []


def test_ca_from_ssl_cert_file_needs_no_flag(
    closure: BuiltClosure,
    tls_registry: RegistryServer,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # What a corporate CI does: point OpenSSL's default bundle at its own CA.
    dest = f"{tls_registry.host}/test/{unique_name('tls-env')}:t"
    env = cli_env(tmp_path / "home", {"SSL_CERT_FILE": str(tls_files(tls_registry).ca_file)})
    run = ociforge("push", closure[APP], dest, env=env)
    assert run.code == 0, run.explain()
    assert skopeo_digest(skopeo_env, tls_registry, dest) == run.pushed()[dest]


def test_ca_file_that_is_no_ca_bundle_is_a_usage_error_before_any_request(
    closure: BuiltClosure, tls_registry: RegistryServer, tmp_path: Path
) -> None:
    not_a_bundle = tmp_path / "ca.pem"
    not_a_bundle.write_text("this is a text file, not a PEM certificate\n")
    dest = f"{tls_registry.host}/test/{unique_name('tls-bad-ca')}:t"
    log = RegistryLog(tls_registry)
    args = ("push", closure[APP], dest, "--ca-file", str(not_a_bundle))
    run = ociforge(*args, env=cli_env(tmp_path / "home"))
    assert run.code == 2, run.explain()
    line = only_error_line(run)
    assert str(not_a_bundle) in line
    assert "CA bundle" in line
    # Not even a TLS handshake: the registry would log it (see the test above).
    assert log.lines() == []
