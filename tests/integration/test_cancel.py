"""Stopping: Ctrl-C / SIGTERM, the --timeout deadline, and the ways a command ends badly.

Each test runs ``python -m ociforge`` as a user's CI job does, against the real registry (behind
a fault proxy where it must misbehave) and real or fake nix, and asserts what the job log and
the registry show: the exit code, one line on stderr, how long it took, no nix left running,
the tag where it was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.integration.test_push_e2e import (
    APP,
    REPO,
    Run,
    cli_env,
    finish,
    gitlab_env,
    ociforge,
    start_ociforge,
)
from tests.support.faultproxy import Delay, Dribble, Fault
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy, OciImage, TokenRegistry

UPLOADS = r"/blobs/uploads/"
MANIFESTS = r"/manifests/"
ACCEPT = "application/vnd.oci.image.manifest.v1+json"
EXIT_WITHIN = 5.0  # seconds from the signal to the exit, on a loaded 2-core machine


def tag_digest(registry: RegistryServer, repo: str, tag: str = "latest") -> str | None:
    """What the tag holds, read from the registry itself (not through any proxy)."""
    url = f"{registry.url}/v2/{repo}/manifests/{tag}"
    response = httpx.head(url, headers={"Accept": ACCEPT}, timeout=10)
    if response.status_code == 404:
        return None
    return response.headers["docker-content-digest"]


def seed(registry: RegistryServer, repo: str, image: OciImage, home: Path) -> str:
    run = ociforge(
        "push", f"oci:{image.layout}:{image.tag}", f"{registry.host}/{repo}:latest",
        env=cli_env(home),
    )  # fmt: skip
    assert run.code == 0, run.explain()
    digest = tag_digest(registry, repo)
    assert digest == image.manifest_digest
    return digest


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def stop_with(proc: subprocess.Popen[str], signum: int) -> tuple[Run, float]:
    started = time.monotonic()
    proc.send_signal(signum)
    run = finish(proc, timeout=60)
    return run, time.monotonic() - started


def only_line(run: Run) -> str:
    assert "Traceback" not in run.err, run.explain()
    lines = [line for line in run.err.strip().splitlines() if line]
    assert len(lines) == 1, run.explain()
    return lines[0]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


# -- 5. SIGINT / SIGTERM -------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_stalled_upload_stops_at_once_and_deletes_the_sessions(
    signum: int,
    closure: BuiltClosure,
    registry: RegistryServer,
    make_fault_proxy: MakeFaultProxy,
    repo_name: str,
    tiny_oci_image: OciImage,
    home: Path,
) -> None:
    before = seed(registry, repo_name, tiny_oci_image, home)
    proxy = make_fault_proxy(registry.url)
    proxy.add_fault(Fault("PATCH", UPLOADS, Delay(30), times=100))
    dest = f"{proxy.host}/{repo_name}:latest"
    proc = start_ociforge("push", closure[APP], dest, env=cli_env(home / "push"))
    wait_for(lambda: proxy.arrived("PATCH", UPLOADS) >= 1, "an upload to be under way")

    run, seconds = stop_with(proc, signum)

    name = signal.Signals(signum).name
    assert run.code == 128 + signum, run.explain()
    assert only_line(run) == f"ociforge: interrupted by {name}"
    assert seconds < EXIT_WITHIN, seconds
    assert proxy.count("DELETE", UPLOADS) >= 1, proxy.requests  # the stalled session
    assert proxy.arrived("PUT", MANIFESTS) == 0
    assert tag_digest(registry, repo_name) == before


FAKE_NIX = """\
#!{python}
import os, signal, sys, time
if {ignore}:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
with open(os.environ["FAKE_NIX_PID"], "w") as f:
    f.write(str(os.getpid()))
time.sleep(120)
"""


def fake_nix(tmp_path: Path, *, ignore_signals: bool = False) -> Path:
    path = tmp_path / "nix"
    path.write_text(FAKE_NIX.format(python=sys.executable, ignore=ignore_signals))
    path.chmod(0o755)
    return path


def start_with_fake_nix(
    tmp_path: Path, registry: RegistryServer, repo: str, home: Path, *, ignore_signals: bool
) -> tuple[subprocess.Popen[str], int]:
    nix = fake_nix(tmp_path, ignore_signals=ignore_signals)
    pid_file = tmp_path / "nix.pid"
    env = cli_env(home, {"FAKE_NIX_PID": str(pid_file)})
    dest = f"{registry.host}/{repo}:latest"
    proc = start_ociforge("push", "--nix", str(nix), ".#image", dest, env=env)
    wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "the fake nix to start")
    return proc, int(pid_file.read_text())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_nix_builds_stops_nix_too(
    signum: int,
    registry: RegistryServer,
    repo_name: str,
    tiny_oci_image: OciImage,
    home: Path,
    tmp_path: Path,
) -> None:
    before = seed(registry, repo_name, tiny_oci_image, home)
    proc, nix_pid = start_with_fake_nix(
        tmp_path, registry, repo_name, home / "push", ignore_signals=False
    )
    try:
        run, seconds = stop_with(proc, signum)
        assert run.code == 128 + signum, run.explain()
        assert only_line(run) == f"ociforge: interrupted by {signal.Signals(signum).name}"
        assert seconds < EXIT_WITHIN, seconds
        wait_for(lambda: not running(nix_pid), "nix to be gone", timeout=5)
        assert tag_digest(registry, repo_name) == before
    finally:
        if running(nix_pid):
            os.kill(nix_pid, signal.SIGKILL)


def test_a_second_signal_exits_at_once_and_kills_a_nix_that_ignores_the_first(
    registry: RegistryServer, repo_name: str, home: Path, tmp_path: Path
) -> None:
    proc, nix_pid = start_with_fake_nix(tmp_path, registry, repo_name, home, ignore_signals=True)
    try:
        proc.send_signal(signal.SIGINT)  # nix ignores the SIGTERM it is sent: ociforge waits
        time.sleep(0.2)
        run, seconds = stop_with(proc, signal.SIGINT)
        assert run.code == 130, run.explain()
        assert "Traceback" not in run.err and "Exception ignored" not in run.err, run.explain()
        assert run.err.strip().splitlines()[-1] == "ociforge: SIGINT again: stopped at once"
        assert seconds < EXIT_WITHIN, seconds
        wait_for(lambda: not running(nix_pid), "nix to be killed", timeout=5)
    finally:
        if running(nix_pid):
            os.kill(nix_pid, signal.SIGKILL)


# -- 6. the deadline -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "stalled"),
    [
        (Delay(20), "sent nothing in answer to GET /v2/{repo}/manifests/latest"),
        (Dribble(0.5), "GET /v2/{repo}/manifests/latest: the answer was still arriving"),
    ],
    ids=["silent", "dribbling"],
)
def test_a_registry_that_never_finishes_answering_fails_at_the_deadline(
    action: Delay | Dribble,
    stalled: str,
    closure: BuiltClosure,
    registry: RegistryServer,
    make_fault_proxy: MakeFaultProxy,
    repo_name: str,
    home: Path,
) -> None:
    proxy = make_fault_proxy(registry.url)
    proxy.add_fault(Fault("GET", MANIFESTS, action, times=100))
    dest = f"{proxy.host}/{repo_name}:latest"
    started = time.monotonic()
    run = ociforge("push", "--timeout", "3", closure[APP], dest, env=cli_env(home))
    seconds = time.monotonic() - started
    assert run.code == 5, run.explain()
    line = only_line(run)
    assert line.startswith(f"ociforge: error: gave up on {proxy.host} after 3 s (--timeout): ")
    assert stalled.format(repo=repo_name) in line
    assert seconds < 30, seconds  # 3 s, plus starting Python and nix on a busy machine
    assert tag_digest(registry, repo_name) is None


# -- 10. closed standard output ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["closed", "reader-gone"])
def test_a_closed_stdout_is_one_line_not_a_traceback(
    how: str, registry: RegistryServer, repo_name: str, tiny_oci_image: OciImage, home: Path
) -> None:
    args = ["push", "-q", f"oci:{tiny_oci_image.layout}:t", f"{registry.host}/{repo_name}:latest"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ociforge", *args],
        cwd=REPO,
        env=cli_env(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # `ociforge ... >&-`: no stdout at all; `| head -0`: a pipe nobody reads.
        preexec_fn=(lambda: os.close(1)) if how == "closed" else None,  # noqa: PLW1509
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    run = Run(tuple(args), proc.returncode, "", err)
    assert run.code == 1, run.explain()
    assert "Exception ignored" not in run.err, run.explain()
    line = only_line(run)
    if how == "closed":  # known before anything starts: nothing is done
        assert line == "ociforge: error: standard output is closed: nothing was done"
        assert tag_digest(registry, repo_name) is None
    else:  # found when the result is printed: the push itself is done
        assert line == "ociforge: error: standard output is closed: the result could not be printed"
        assert tag_digest(registry, repo_name) == tiny_oci_image.manifest_digest


# -- 11. a CI job token pushing to another project -----------------------------------------------


def test_a_job_token_pushing_to_another_project_is_told_what_to_do(
    closure: BuiltClosure, token_registry: TokenRegistry, home: Path
) -> None:
    env = {**gitlab_env(home, token_registry), "CI_PROJECT_PATH": token_registry.project}
    dest = f"{token_registry.host}/someone-else/project:latest"
    run = ociforge("push", closure[APP], dest, env=env)
    assert run.code == 6, run.explain()
    line = only_line(run)
    assert "someone-else/project is outside this job's project" in line
    assert f"(CI_PROJECT_PATH={token_registry.project})" in line
    assert "job token allowlist (Settings > CI/CD > Job token permissions)" in line
    assert "deploy token / access token with write_registry" in line
    assert token_registry.job_token not in run.err
