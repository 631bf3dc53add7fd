"""The README's quick-start command works: scripts/demo builds, pushes, pulls and runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.registry import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_demo_pushes_an_image_that_podman_runs() -> None:
    env = {**os.environ, "OCIFORGE_DEMO_PORT": str(free_port())}
    proc = subprocess.run(
        ["bash", "scripts/demo"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pushed = [line for line in proc.stdout.splitlines() if "/example/hello:latest@sha256:" in line]
    assert len(pushed) == 2 and pushed[0] == pushed[1]
    assert "Hello from an ociforge image" in proc.stdout
