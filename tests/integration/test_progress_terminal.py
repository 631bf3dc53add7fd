"""What a person sees of a real ``python -m ociforge push``: on a terminal (a tmux pane, a real
pseudo-terminal) and in a CI log (stderr to a pipe), against a real registry.

A proxy holds one layer's upload session back for a moment, so the push is mid-way for a while
whatever the machine's speed: progress drawn meanwhile shows a percentage below 100 and an ETA.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ociforge.progress import INTERVAL_ENV
from tests.integration.test_push_e2e import APP, REPO, UPLOADS, cli_env, ociforge
from tests.support.faultproxy import Delay, Fault, FaultProxy
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import MakeFaultProxy

pytestmark = pytest.mark.integration

PERCENT_LINE = re.compile(r"^ociforge: (\d+)% \S+ [kMG]?B of \S+ [kMG]?B, \d+/4 layers")
# busybox and the 3 MiB noise file are each >= 5% of the input: a line each; the app's tiny
# layer and the root links are only in the summary.
LAYER_LINE = re.compile(r"^ociforge: layer \d/4: uploaded \S+ [kMG]?B in \S+s$")
SUMMARY = re.compile(r"^ociforge: pushed 4 layers \(4 uploaded\): \S+ [kMG]?B sent in \S+s \(")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n
HOLD = 1.5  # seconds the second upload session waits


def slow_proxy(make_fault_proxy: MakeFaultProxy, registry: RegistryServer) -> FaultProxy:
    proxy = make_fault_proxy(registry.url)
    proxy.add_fault(Fault("POST", UPLOADS, Delay(HOLD), nth=2))
    return proxy


def test_a_ci_log_gets_plain_progress_lines_before_the_end(
    closure: BuiltClosure,
    registry: RegistryServer,
    make_fault_proxy: MakeFaultProxy,
    repo_name: str,
    home: Path,
) -> None:
    dest = f"{slow_proxy(make_fault_proxy, registry).host}/{repo_name}:t"
    run = ociforge("push", closure[APP], dest, env=cli_env(home, {INTERVAL_ENV: "0.1"}))
    assert run.code == 0, run.explain()
    assert list(run.pushed()) == [dest]  # stdout: only REF@digest, as scripts expect
    assert not CONTROL.search(run.err), run.explain()
    lines = run.err.splitlines()
    assert SUMMARY.match(lines[-1]), run.explain()
    percents = [int(m[1]) for line in lines[:-1] if (m := PERCENT_LINE.match(line))]
    # Lines came while the push was under way (the held session takes many intervals)...
    assert any(p < 100 for p in percents), run.explain()
    assert percents == sorted(percents), run.explain()
    # ...and the two large layers got a line each, the small ones none.
    assert len([line for line in lines if LAYER_LINE.match(line)]) == 2, run.explain()


def test_quiet_and_no_progress(
    closure: BuiltClosure, registry: RegistryServer, repo_name: str, home: Path
) -> None:
    dest = f"{registry.host}/{repo_name}:t"
    env = cli_env(home, {INTERVAL_ENV: "0.001"})
    quiet = ociforge("push", closure[APP], dest, "-q", "--no-cache", env=env)
    assert quiet.code == 0 and quiet.err == "", quiet.explain()
    none = ociforge("push", closure[APP], dest + "2", "--no-progress", "--no-cache", env=env)
    assert none.code == 0, none.explain()
    assert [SUMMARY.match(line) is not None for line in none.err.splitlines()] == [True]


# -- a terminal -------------------------------------------------------------------------------


class Tmux:
    """A tmux server of its own, one 120x40 pane running one command."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        self.socket = str(tmp / "tmux.sock")
        self.env = env

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", self.socket, *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False)


def wait_for(path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().endswith("\n"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.1)
    return path.read_text()


def test_a_terminal_gets_a_bar_with_percent_and_eta_then_the_summary(
    closure: BuiltClosure,
    registry: RegistryServer,
    make_fault_proxy: MakeFaultProxy,
    repo_name: str,
    home: Path,
    tmp_path: Path,
) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (scripts/setup installs it)")
    dest = f"{slow_proxy(make_fault_proxy, registry).host}/{repo_name}:t"
    raw, status, go = tmp_path / "raw", tmp_path / "status", tmp_path / "go"
    subprocess.run(["mkfifo", str(go)], check=True)
    push = shlex.join([sys.executable, "-m", "ociforge", "push", closure[APP], dest])
    # The push starts once the pane's output is recorded; the pane stays to be read.
    script = f"read x < {go}; cd {REPO}; {push}; echo $? > {status}; exec sleep 600"
    tmux = Tmux(tmp_path, cli_env(home, {"TERM": "xterm-256color"}))
    try:
        tmux("new-session", "-d", "-x", "120", "-y", "40", "sh", "-c", script)
        tmux("pipe-pane", "-o", f"cat > {raw}")
        go.write_text("go\n")
        assert wait_for(status) == "0\n", tmux("capture-pane", "-p")
        screen = tmux("capture-pane", "-p", "-J").splitlines()
    finally:
        tmux.kill()
    drawn = raw.read_text(errors="replace")
    # While it ran: the total bar, with a percentage below 100, sizes, a rate and an ETA.
    frames = re.findall(r"(\d+)% \|[^|\r\n]*\| [^\r\n]* of [^\r\n]*/s, ETA \d", drawn)
    assert any(int(p) < 100 for p in frames), drawn
    # At the end: the large layers' lines, the summary and REF@digest; no bar left over.
    shown = [line.rstrip() for line in screen if line.strip()]
    assert len([line for line in shown if LAYER_LINE.match(line)]) == 2, shown
    assert SUMMARY.match(shown[-2]), shown
    assert re.fullmatch(re.escape(dest) + r"@sha256:[0-9a-f]{64}", shown[-1]), shown
    assert not any(re.search(r"\d+% \|", line) for line in shown), shown
