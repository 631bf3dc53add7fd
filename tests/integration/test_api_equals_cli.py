"""The command is a thin layer over the Python API: the same input gives the same image.

Options that decide bytes (layering, compression, runtime, essentials, annotations: GitLab CI's
included) go through ``ociforge.build`` / ``ociforge.push`` exactly as through the command, so a
tool calling the API publishes the manifest a pipeline calling the CLI publishes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ociforge
from tests.support.nixstore import BuiltClosure
from tests.support.registry import RegistryServer
from tests.support.registry_fixtures import skopeo

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CI = {
    "CI_PROJECT_URL": "https://gitlab.example.com/group/project",
    "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
    "CI_COMMIT_TIMESTAMP": "2026-12-01T10:00:00+00:00",
}
FLAGS = [
    "--strategy", "auto", "--max-layers", "4", "--compression", "zstd",
    "--env", "A=1", "--label", "team=platform", "--cmd", "/bin/app",
    "--essentials", "--user", "1000:1000", "--annotation", "org.example.k=v",
    "--annotation", "org.opencontainers.image.source=",
]  # fmt: skip
OPTIONS = ociforge.ImageOptions(
    strategy="auto",
    max_layers=4,
    compression=ociforge.CompressionOptions(ociforge.Compression.ZSTD),
    runtime=ociforge.RuntimeConfig(env={"A": "1"}, labels={"team": "platform"}, cmd=("/bin/app",)),
    essentials=ociforge.EssentialsOptions(user="1000:1000"),
    annotations={"org.example.k": "v", "org.opencontainers.image.source": ""},
)


def command(*args: str, home: Path) -> str:
    env = {**os.environ, **CI, "HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "ociforge", *args, "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary: dict[str, str] = json.loads(done.stdout)
    return summary["manifest_digest"]


def test_build_gives_the_commands_image(
    closure: BuiltClosure, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = closure["app-1.0"]
    by_command = command("build", app, f"oci:{tmp_path}/cli:t", *FLAGS, home=home)
    for key, value in CI.items():
        monkeypatch.setenv(key, value)
    by_api = ociforge.build(app, f"oci:{tmp_path}/api:t", options=OPTIONS)
    assert by_api.manifest_digest == by_command
    manifest = json.loads((tmp_path / "api/blobs/sha256" / by_command[7:]).read_bytes())
    # CI's annotations, minus the one dropped with K=, plus the user's.
    assert manifest["annotations"] == {
        "org.example.k": "v",
        "org.opencontainers.image.created": CI["CI_COMMIT_TIMESTAMP"],
        "org.opencontainers.image.revision": CI["CI_COMMIT_SHA"],
    }


def test_push_gives_the_commands_manifest(
    closure: BuiltClosure,
    registry: RegistryServer,
    repo_name: str,
    home: Path,
    monkeypatch: pytest.MonkeyPatch,
    skopeo_env: dict[str, str],
) -> None:
    app = closure["app-1.0"]
    cli_ref, api_ref = f"{registry.host}/{repo_name}:cli", f"{registry.host}/{repo_name}:api"
    by_command = command("push", app, cli_ref, *FLAGS, "--no-cache", home=home)
    for key, value in CI.items():
        monkeypatch.setenv(key, value)
    no_cache = ociforge.RegistryOptions(cache_dir=None, home=home)
    by_api = ociforge.push(app, [api_ref], options=OPTIONS, registry=no_cache)
    assert by_api.manifest_digest == by_command
    inspected = skopeo(skopeo_env, "inspect", "--tls-verify=false", f"docker://{api_ref}")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == by_command
