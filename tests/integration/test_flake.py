"""ociforge's own flake.nix evaluates, with a stub nixpkgs standing in for the real one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "tests" / "fixtures" / "stub-nixpkgs"

pytestmark = pytest.mark.integration


def nix_eval(attr: str) -> object:
    out = subprocess.run(
        [
            "nix",
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--json",
            f"path:{REPO}#{attr}",
            "--override-input",
            "nixpkgs",
            f"path:{STUB}",
            "--no-write-lock-file",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_package_has_the_runtime_dependencies_of_pyproject() -> None:
    deps = nix_eval("packages.x86_64-linux.default.dependencies")
    pyproject = (REPO / "pyproject.toml").read_text()
    assert isinstance(deps, list) and deps
    for dep in deps:
        assert f'"{dep}>=' in pyproject, f"flake dependency {dep} is not in pyproject.toml"


def test_app_runs_the_ociforge_entry_point() -> None:
    program = nix_eval("apps.x86_64-linux.default.program")
    assert isinstance(program, str) and program.endswith("-ociforge/bin/ociforge")


def test_dev_shell_carries_the_test_tools() -> None:
    packages = nix_eval("devShells.aarch64-linux.default.packages")
    assert isinstance(packages, list)
    assert {"python3-env", "ruff", "skopeo", "umoci"} <= set(packages)
