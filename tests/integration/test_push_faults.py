"""`ociforge push` when things go wrong, and what the user sees then.

Network faults come from a proxy in front of the anonymous registry (tests/support/faultproxy.py):
connection resets in the middle of a layer, bursts of 5xx, 429 with Retry-After, an nginx HTML
page. Transient ones must not be noticed beyond a retry note; exhausted retries must end in one
error line and leave every tag where it was. Also here: refused credentials, bad input, and
``--debug`` output that never shows a secret.

What a registry holds is read from the registry directly (not through the proxy) with skopeo or
hand-made requests. Helpers and conventions come from test_push_e2e.py.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.test_push_e2e import (
    APP,
    UPLOADS,
    Run,
    cli_env,
    copy_to_layout,
    finish,
    gitlab_env,
    inspect_digest,
    ociforge,
    start_ociforge,
)
from tests.support.faultproxy import (
    Fault,
    FaultProxy,
    InvalidToken,
    ResetConnection,
    Respond,
    html_page,
    registry_error,
    too_many_requests,
)
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy, TokenRegistry
from tests.support.tokenserver import JOB_TOKEN_USER, Access

pytestmark = pytest.mark.integration

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.docker.distribution.manifest.list.v2+json"
)
ALWAYS = 10_000  # a fault's ``times`` that no push exhausts
RETRY_NOTE = re.compile(r"retry \d+/\d+ in \d+\.\ds: ")


@dataclass(frozen=True)
class ProxiedPush:
    """``ociforge push`` of the app to ``<repo>:t`` through the fault proxy, and the checks of
    what reached the registry (read from the registry itself, not through the proxy)."""

    closure: BuiltClosure
    registry: RegistryServer
    proxy: FaultProxy
    repo: str
    home: Path
    skopeo_env: dict[str, str]
    scratch: Path

    @property
    def dest(self) -> str:
        return f"{self.proxy.host}/{self.repo}:t"

    def run(self, *options: str) -> Run:
        return ociforge("push", self.closure[APP], self.dest, *options, env=cli_env(self.home))

    def succeeds(self) -> str:
        """The push must succeed without an error line; returns the pushed digest."""
        run = self.run()
        assert run.code == 0, f"{run.explain()}\nproxy saw: {self.proxy.requests}"
        assert "ociforge: error" not in run.err, run.explain()
        return run.pushed()[self.dest]

    def verify(self, digest: str) -> None:
        """The registry holds ``digest`` under the tag, with every blob intact."""
        ref = f"{self.registry.host}/{self.repo}:t"
        assert inspect_digest(self.skopeo_env, ref) == digest
        copy_to_layout(self.skopeo_env, ref, self.scratch / "verified")


@pytest.fixture
def push(
    closure: BuiltClosure,
    registry: RegistryServer,
    fault_proxy: FaultProxy,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> ProxiedPush:
    return ProxiedPush(closure, registry, fault_proxy, repo_name, home, skopeo_env, tmp_path)


def manifest_status(url: str, repository: str, ref: str, token: str | None = None) -> int:
    headers = {"Accept": MANIFEST_TYPES}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{url}/v2/{repository}/manifests/{ref}", headers=headers).status_code


# --- transient faults: the push succeeds ----------------------------------------------------


def test_connection_reset_in_the_middle_of_a_layer_restarts_it(push: ProxiedPush) -> None:
    # The first PATCH of every layer is cut after 100 KB, the 3 MiB layer's included.
    push.proxy.add_fault(Fault("PATCH", UPLOADS, ResetConnection(100_000), times=4))
    digest = push.succeeds()
    cut = [r for r in push.proxy.requests if r.fault == "ResetConnection"]
    assert len(cut) == 4 and max(r.body_bytes for r in cut) == 100_000, cut
    assert push.proxy.count("PATCH") > 4  # restarted
    push.verify(digest)


def test_bursts_of_server_errors_are_retried(push: ProxiedPush) -> None:
    push.proxy.add_fault(
        Fault("POST", UPLOADS, registry_error(503, "UNAVAILABLE", "restarting"), times=2),
        Fault("PUT", UPLOADS, html_page(500), times=2),
        Fault("PUT", r"/manifests/", registry_error(500, "UNKNOWN", "oops")),
    )
    digest = push.succeeds()
    assert len(push.proxy.faults_fired()) == 5
    push.verify(digest)


def test_429_is_retried_after_the_time_retry_after_asks(push: ProxiedPush) -> None:
    push.proxy.add_fault(
        Fault("POST", UPLOADS, too_many_requests(retry_after=1)),
        Fault("PUT", r"/manifests/", too_many_requests(retry_after=1)),
    )
    run = push.run()
    assert run.code == 0, run.explain()
    # The retry note says how long it waits: Retry-After's second, not the 0.5 s backoff.
    notes = [line for line in run.err.splitlines() if RETRY_NOTE.search(line)]
    assert len(notes) == 2 and all("in 1.0s" in n and "429" in n for n in notes), run.err
    push.verify(run.pushed()[push.dest])


# --- retries exhausted: one line, and the tag keeps its image --------------------------------


def test_exhausted_retries_fail_in_one_line_and_leave_the_tag_alone(
    closure: BuiltClosure,
    registry: RegistryServer,
    make_fault_proxy: MakeFaultProxy,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
) -> None:
    env = cli_env(home)
    # Image A under :t in two repositories.
    tags = {fault: f"{registry.host}/{repo_name}-{fault}:t" for fault in ("reset", "html")}
    image_a = ociforge("push", closure[APP], *tags.values(), env=env)
    assert image_a.code == 0, image_a.explain()
    digest_a = image_a.pushed()[tags["reset"]]

    # Image B (other layer bytes: --mtime) to the same tags, through proxies that break every
    # layer upload: by resetting the connection, or with the HTML page of an nginx in front.
    # Each push waits out its whole backoff, so both run at once.
    proxies = {fault: make_fault_proxy(registry.url) for fault in tags}
    proxies["reset"].add_fault(Fault("PATCH", UPLOADS, ResetConnection(100_000), times=ALWAYS))
    proxies["html"].add_fault(Fault("PATCH", UPLOADS, html_page(502), times=ALWAYS))

    def push_b(fault: str, *options: str) -> subprocess.Popen[str]:
        dest = f"{proxies[fault].host}/{repo_name}-{fault}:t"
        return start_ociforge("push", closure[APP], dest, "--mtime", "2", *options, env=env)

    started = {"reset": push_b("reset", "--quiet"), "html": push_b("html")}
    runs = {fault: finish(proc) for fault, proc in started.items()}

    for fault, run in runs.items():
        assert run.code == 5, run.explain()
        assert run.out == ""
        assert proxies[fault].count("PATCH") >= 6  # the first attempt and the retries
        assert inspect_digest(skopeo_env, tags[fault]) == digest_a
    # Quiet: the error line is all there is.
    assert len(runs["reset"].err.strip().splitlines()) == 1, runs["reset"].explain()
    assert "PATCH" in runs["reset"].one_line_error()
    # The proxy's HTML page is reduced to its title.
    html_error = runs["html"].one_line_error()
    assert "502 Bad Gateway" in html_error and "<" not in html_error, html_error


def test_a_request_that_keeps_failing_is_not_retried_beyond_the_budget(
    push: ProxiedPush,
) -> None:
    # Retry-After: 0 keeps the test fast; without it the same push waits out every backoff.
    body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "maintenance"}]}).encode()
    headers = (("Content-Type", "application/json"), ("Retry-After", "0"))
    push.proxy.add_fault(Fault("POST", UPLOADS, Respond(503, body, headers), times=ALWAYS))
    run = push.run("--jobs", "1", "-q")
    assert run.code == 5, run.explain()
    assert "503" in run.one_line_error()
    # The budget is 5 retries: the POST is tried 6 times in all. Not 6 more per restart of the
    # blob (its failure was already retried in place), and no other blob starts once the push
    # has failed: nothing reaches the registry after the last refused POST.
    posts = [r for r in push.proxy.requests if r.method == "POST"]
    assert [r.status for r in posts] == [503] * 6, push.proxy.requests
    assert push.proxy.requests[-1] == posts[-1], push.proxy.requests


# --- refused credentials ----------------------------------------------------------------------


def test_pull_only_credentials_fail_with_exit_6_and_tag_nothing(
    closure: BuiltClosure, token_registry: TokenRegistry, home: Path
) -> None:
    user, password = token_registry.reader
    dest = f"{token_registry.image}/builder:denied"
    args = ("push", closure[APP], dest, "--username", user, "--password-stdin")
    run = ociforge(*args, env=cli_env(home), stdin=password + "\n")
    assert run.code == 6, run.explain()
    assert len(run.err.strip().splitlines()) == 1, run.explain()
    run.one_line_error()
    assert password not in run.err
    repository = f"{token_registry.project}/builder"
    token = token_registry.tokens.issue_token(
        "checker", (Access("repository", repository, ("pull",)),)
    )
    assert manifest_status(token_registry.url, repository, "denied", token) == 404


def test_wrong_basic_password_fails_with_exit_6(
    closure: BuiltClosure, basic_registry: RegistryServer, repo_name: str, home: Path
) -> None:
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials
    dest = f"{basic_registry.host}/{repo_name}:t"
    args = ("push", closure[APP], dest, "--username", user, "--password-stdin")
    run = ociforge(*args, env=cli_env(home), stdin=f"not-{password}\n")
    assert run.code == 6, run.explain()
    assert len(run.err.strip().splitlines()) == 1, run.explain()
    assert "--username/--password-stdin" in run.one_line_error()  # names the source
    url = f"{basic_registry.url}/v2/{repo_name}/manifests/t"
    response = httpx.get(url, auth=(user, password), headers={"Accept": MANIFEST_TYPES})
    assert response.status_code == 404


def test_a_nix_error_comes_before_a_registry_error(home: Path, tmp_path: Path) -> None:
    """nix runs while the registry is first asked; a bad installable is still what the user
    hears of (exit 3), not the unreachable registry, and the retries stop at once."""
    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    missing = "/nix/store/" + "a" * 32 + "-missing"
    run = ociforge("push", missing, f"127.0.0.1:{port}/app:t", env=cli_env(home))
    assert run.code == 3, run.explain()
    assert "is not valid" in run.one_line_error()
    assert "retry 2/" not in run.err, run.explain()  # nix fails in well under 1.5 s


# --- secrets never reach the output, not even with --debug -----------------------------------


def test_debug_output_never_shows_secrets(
    closure: BuiltClosure,
    token_registry: TokenRegistry,
    basic_registry: RegistryServer,
    make_fault_proxy: MakeFaultProxy,
    repo_name: str,
    home: Path,
) -> None:
    assert basic_registry.credentials is not None
    user, password = basic_registry.credentials
    reader, reader_password = token_registry.reader
    # A CI job whose manifest PUT needs a fresh token: the renewal path logs too.
    proxy = make_fault_proxy(token_registry.url)
    proxy.add_fault(Fault("PUT", r"/manifests/", InvalidToken()))
    ci_env = gitlab_env(home, token_registry, host=proxy.host)
    ci_dest = f"{ci_env['CI_REGISTRY_IMAGE']}/debug:1"
    ci = ociforge("push", closure[APP], ci_dest, "--debug", env=ci_env)
    assert ci.code == 0, ci.explain()

    def with_password(dest: str, username: str, secret: str) -> Run:
        args = ("push", closure[APP], dest, "--debug", "--username", username, "--password-stdin")
        return ociforge(*args, env=cli_env(home), stdin=secret + "\n")

    denied = with_password(f"{token_registry.image}/debug:2", reader, reader_password)
    assert denied.code != 0, denied.explain()
    basic = with_password(f"{basic_registry.host}/{repo_name}:debug", user, password)
    assert basic.code == 0, basic.explain()

    # The debug logs are there, and name the credential source...
    assert "CI_REGISTRY_USER" in ci.err and "--username/--password-stdin" in basic.err
    assert len(ci.err.splitlines()) > 20, ci.explain()
    # ...but no password, job token, HTTP Basic value, or JWT ("eyJ" is base64 of '{"').
    pairs = [(JOB_TOKEN_USER, token_registry.job_token), (reader, reader_password)]
    pairs.append((user, password))
    secrets = {p for _, p in pairs} | {"eyJ"}
    secrets |= {base64.b64encode(f"{u}:{p}".encode()).decode() for u, p in pairs}
    for run in (ci, denied, basic):
        shown = [s for s in secrets if s in run.out or s in run.err]
        assert not shown, f"secrets {shown} in the output of {run.explain()}"


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dest", "needle"),
    [
        ("{app}", "test/no-host:1", "explicit registry host"),
        ("{app}", "{host}/test/pinned@sha256:" + "a" * 64, "digest"),
        ("{app}", "{host}/test/Upper:1", "lower-case"),
        ("oci:{tmp}/missing:t", "{host}/test/x:1", "not an OCI layout"),
        ("oci:{tmp}/layout:nosuchtag", "{host}/test/x:1", "nosuchtag"),
        # ociforge's own output syntax: push cannot read it, and nix is not the one to blame.
        ("docker-archive:{tmp}/image.tar", "{host}/test/x:1", "docker-archive"),
    ],
    ids=["no-host", "digest-dest", "upper-case", "no-layout", "unknown-tag", "docker-archive"],
)
def test_bad_input_exits_2_with_one_line(
    source: str,
    dest: str,
    needle: str,
    closure: BuiltClosure,
    registry: RegistryServer,
    home: Path,
    tmp_path: Path,
) -> None:
    env = cli_env(home)
    builds = {
        "{tmp}/layout": f"oci:{tmp_path}/layout:t",
        "{tmp}/image": f"docker-archive:{tmp_path}/image.tar",
    }
    for target in (t for marker, t in builds.items() if marker in source):
        made = ociforge("build", closure["busybox"], target, env=env)
        assert made.code == 0, made.explain()
    names = {"app": closure[APP], "host": registry.host, "tmp": tmp_path}
    run = ociforge("push", source.format(**names), dest.format(**names), env=env)
    assert run.code == 2, run.explain()
    assert len(run.err.strip().splitlines()) == 1, run.explain()
    assert needle in run.one_line_error()
    assert run.out == ""
