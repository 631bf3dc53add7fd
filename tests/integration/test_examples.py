"""The examples run as written: their GitLab CI scripts and the Python API script, against the
token registry a GitLab job sees, checked with skopeo and podman.

A job's script is taken from the example's .gitlab-ci.yml and run with ``sh`` in a copy of the
example flake, with the job's variables and an ``ociforge`` on PATH that runs this checkout
(what the ``before_script`` installs in real CI). Only ``before_script`` is skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_push_e2e import cli_env, inspect_digest, reader_creds
from tests.support.podman import Podman
from tests.support.registry_fixtures import TokenRegistry

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


def load_jobs(example: str) -> dict[str, Any]:
    jobs: dict[str, Any] = yaml.safe_load((EXAMPLES / example / ".gitlab-ci.yml").read_text())
    return jobs


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A project checkout: the devshell example's flake, and ``ociforge`` on PATH."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(EXAMPLES / "devshell" / "flake.nix", project / "flake.nix")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ociforge"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m ociforge "$@"\n')
    wrapper.chmod(0o755)
    return project


def job_env(workdir: Path, tr: TokenRegistry, **extra: str) -> dict[str, str]:
    env = cli_env(workdir.parent / "home", {**tr.ci_env, "CI_COMMIT_SHORT_SHA": COMMIT[:8]})
    env["PATH"] = f"{workdir.parent / 'bin'}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    # The job's NIX_CONFIG adds to the test's (no substituters: these machines are offline).
    nix_config = "\n".join(filter(None, [env["NIX_CONFIG"], extra.pop("NIX_CONFIG", "")]))
    return {**env, **extra, "NIX_CONFIG": nix_config}


def run_script(lines: list[str], env: Mapping[str, str], cwd: Path) -> str:
    """The job's script as GitLab runs it: one shell, stopping at the first failing line."""
    script = "set -e\n" + "\n".join(lines)
    done = run(["sh", "-c", script], env, cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run(argv: list[str], env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=300, check=False
    )


def test_devshell_pipeline_builds_the_image_and_a_later_job_runs_in_it(
    workdir: Path, token_registry: TokenRegistry, podman: Podman
) -> None:
    jobs = load_jobs("devshell")
    env = job_env(workdir, token_registry, **jobs["build-builder-image"]["variables"])
    run_script(jobs["build-builder-image"]["script"], env, workdir)

    use = jobs["use-builder-image"]
    image = use["image"].replace("$CI_REGISTRY_IMAGE", token_registry.image)
    podman.pull(image, creds=token_registry.reader)
    ran = podman.sh(image, "set -e\n" + "\n".join(use["script"]))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Hello from the example dev shell" in ran.stdout
    assert "CA bundle at /etc/ssl/certs/ca-bundle.crt" in ran.stdout


def test_image_repo_pipeline_publishes_three_tags_of_one_image(
    workdir: Path, token_registry: TokenRegistry, skopeo_env: dict[str, str]
) -> None:
    jobs = load_jobs("image-repo")
    [builder] = [m for m in jobs["publish"]["parallel"]["matrix"] if m["IMAGE"] == "builder"]
    variables = {**jobs["variables"], **builder, "CI_PIPELINE_SOURCE": "schedule"}
    env = job_env(workdir, token_registry, **variables)
    # The tag the script itself computed (no race with midnight).
    out = run_script([*jobs[".publish"]["script"], 'echo "date-tag=$DATE_TAG"'], env, workdir)
    date_tag = out.splitlines()[-1].removeprefix("date-tag=")
    assert len(date_tag) == 8 and date_tag.isdigit()
    tags = [date_tag, COMMIT[:8], "latest"]
    digests = {
        inspect_digest(
            skopeo_env, f"{token_registry.image}/builder:{tag}", *reader_creds(token_registry)
        )
        for tag in tags
    }
    assert len(digests) == 1


def publish(workdir: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(EXAMPLES / "python-api" / "publish.py"), *args], env, workdir)


def test_python_api_script_publishes_semver_tags(
    workdir: Path, token_registry: TokenRegistry, skopeo_env: dict[str, str]
) -> None:
    env = job_env(workdir, token_registry)
    repository = f"{token_registry.image}/app"
    done = publish(workdir, env, f"path:{workdir}#greet", repository, "1.4.2")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["tags"] == [f"{repository}:{t}" for t in ("1.4.2", "1.4", "latest")]
    creds = reader_creds(token_registry)
    assert inspect_digest(skopeo_env, f"{repository}:1.4", *creds) == summary["manifest"]
    # Bad input: one line on stderr and ociforge's exit code, no traceback.
    bad = publish(workdir, env, f"path:{workdir}#nothing", repository, "1.0.0")
    assert bad.returncode == 3, bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
