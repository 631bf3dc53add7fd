"""The pipeline `ociforge ci gitlab` writes, run by gitlab-ci-local (shell executor) in a git
repository: its jobs push images with `python -m ociforge` to a real registry on loopback, the
index job runs only after its own children, and skopeo then reads what the jobs pushed.

gitlab-ci-local is installed by scripts/setup into .tools/ (pinned, see testing-notes); it runs
``trigger:`` child pipelines not at all, so the generated child file is run directly.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_push_e2e import APP, cli_env
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import skopeo

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GITLAB_CI_LOCAL = REPO / ".tools" / "node_modules" / ".bin" / "gitlab-ci-local"


def ociforge_line(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "ociforge", *args])


def jobs_file(path: Path, closure: BuiltClosure, image: str) -> Path:
    """app on two platforms (the same closure labelled arm64 for the second) joined by an
    index job, and tools on one: the typed input of the generator, as a JSON file."""
    app, tools = closure[APP], closure["busybox"]
    jobs = {
        "images": [
            {
                "image": "app",
                "platform": "x86_64-linux",
                "script": [ociforge_line("push", app, f"{image}/app:x86_64-linux")],
            },
            {
                "image": "app",
                "platform": "aarch64-linux",
                "script": [
                    ociforge_line("push", "--arch", "arm64", app, f"{image}/app:aarch64-linux")
                ],
            },
            {
                "image": "tools",
                "platform": "x86_64-linux",
                "script": [ociforge_line("push", tools, f"{image}/tools:latest")],
            },
        ],
        "indexes": [
            {
                "image": "app",
                "platforms": ["x86_64-linux", "aarch64-linux"],
                # Fails unless both children were pushed before it started.
                "script": [
                    ociforge_line("inspect", f"{image}/app:aarch64-linux"),
                    ociforge_line("tag", f"{image}/app:x86_64-linux", "latest"),
                ],
            }
        ],
    }
    path.write_text(json.dumps(jobs, indent=2))
    return path


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, timeout=60)


def test_generated_pipeline_runs_and_pushes_every_image(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    if not GITLAB_CI_LOCAL.exists():
        pytest.skip("gitlab-ci-local is not installed: run scripts/setup")
    image = f"{registry.host}/{repo_name}"
    project = tmp_path / "project"
    project.mkdir()
    env = cli_env(home)
    jobs = jobs_file(tmp_path / "jobs.json", closure, image)
    generated = subprocess.run(
        [sys.executable, "-m", "ociforge", "ci", "gitlab", "--no-image", str(jobs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert generated.returncode == 0, generated.stderr
    (project / "images.yml").write_text(generated.stdout)
    git(project, "init", "-q")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty",
        "-m", "base")  # fmt: skip
    git(project, "add", "images.yml")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "ci")

    run = subprocess.run(
        [str(GITLAB_CI_LOCAL), "--shell-isolation=false", "--file", "images.yml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    for job in ("app:x86_64-linux", "app:aarch64-linux", "tools:x86_64-linux", "app:index"):
        assert re.search(rf"PASS\s+{re.escape(job)}\b", log), log
    # The index job started after both of its children had finished, and not before.
    assert position(log, "app:index", "starting") > max(
        position(log, job, "finished") for job in ("app:x86_64-linux", "app:aarch64-linux")
    ), log

    seen = {ref: inspect(skopeo_env, f"{image}/{ref}") for ref in
            ("app:x86_64-linux", "app:aarch64-linux", "tools:latest", "app:latest")}  # fmt: skip
    assert seen["app:x86_64-linux"]["Architecture"] == "amd64"
    assert seen["app:aarch64-linux"]["Architecture"] == "arm64"
    assert seen["tools:latest"]["Layers"]
    assert seen["app:latest"]["Digest"] == seen["app:x86_64-linux"]["Digest"]


def position(log: str, job: str, word: str) -> int:
    """Where gitlab-ci-local's ``<job> <padding> <word>`` line is in the log."""
    found = re.search(rf"^{re.escape(job)}\s+{word}\b", log, re.MULTILINE)
    assert found is not None, log
    return found.start()


def inspect(skopeo_env: dict[str, str], ref: str) -> dict[str, object]:
    result = skopeo(skopeo_env, "inspect", "--tls-verify=false", f"docker://{ref}")
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)
    return found


def test_the_pipeline_of_an_images_toml_runs_and_writes_the_index(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    skopeo_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """`ociforge ci gitlab images.toml`: the same file push-all reads; platform jobs push the
    children, the index job joins them, and every job agrees on `{date}`."""
    if not GITLAB_CI_LOCAL.exists():
        pytest.skip("gitlab-ci-local is not installed: run scripts/setup")
    project = tmp_path / "project"
    project.mkdir()
    (project / "images.toml").write_text(
        "[defaults]\n"
        f'registry = "{registry.host}/{repo_name}"\n'
        'tags = ["latest", "nightly-{date}"]\n'
        f'[images.tools]\nsource = "{closure["busybox"]}"\n'
        f'[images.app.platforms]\nx86_64-linux = "{closure[APP]}"\n'
        f'aarch64-linux = "{closure[APP]}"\n'  # architecture-independent, labelled arm64 too
    )
    # The venv's `ociforge` is what the jobs run; the date is fixed by the generator.
    env = {**cli_env(home), "PATH": f"{Path(sys.executable).parent}:{cli_env(home)['PATH']}"}
    generated = subprocess.run(
        [sys.executable, "-m", "ociforge", "ci", "gitlab", "--no-image", "images.toml"],
        cwd=project, env={**env, "OCIFORGE_DATE": "2026-12-31"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    assert 'OCIFORGE_DATE: "2026-12-31"' in generated.stdout, generated.stdout
    (project / "images.yml").write_text(generated.stdout)
    git(project, "init", "-q")
    git(project, "add", "images.yml", "images.toml")
    git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "ci")
    run = subprocess.run(
        [str(GITLAB_CI_LOCAL), "--shell-isolation=false", "--file", "images.yml"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    for job in ("app:x86_64-linux", "app:aarch64-linux", "tools:x86_64-linux", "app:index"):
        assert re.search(rf"PASS\s+{re.escape(job)}\b", log), log
    image = f"{registry.host}/{repo_name}"
    for tag in ("latest", "nightly-2026-12-31"):
        for arch in ("amd64", "arm64"):
            found = skopeo(
                skopeo_env, "inspect", "--tls-verify=false", "--override-arch", arch,
                f"docker://{image}/app:{tag}",
            )  # fmt: skip
            assert found.returncode == 0, found.stderr
            assert json.loads(found.stdout)["Architecture"] == arch
    assert inspect(skopeo_env, f"{image}/tools:nightly-2026-12-31")["Layers"]
