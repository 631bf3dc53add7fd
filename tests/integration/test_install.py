"""ociforge as a user installs it: sdist and wheel, a fresh virtual environment, pipx, completion.

The editable install that runs the rest of the suite hides packaging mistakes (a subpackage or a
data file left out of the wheel, a dependency missing from pyproject.toml). Here a copy of the
checkout is built with ``python -m build`` (the wheel from the sdist), checked with ``twine check
--strict``, installed into a new virtual environment and run from there, away from the checkout;
and installed with Debian's ``pipx``. pip uses the machine's own index settings (pip.conf, PIP_*
variables), as a user's pip would.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.nixstore import OFFLINE_NIX_ARGS, File, Package, make_closure, offline_env

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
VERSION = importlib.metadata.version("ociforge")  # of the checkout's editable install
# Made by a checkout's own use, never part of what a user builds from.
TOP_LEVEL_IGNORED = {".git", ".venv", "build", "dist", "out", "result"}
IGNORED_ANYWHERE = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without what would let the checkout or its .venv leak into a child Python."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    }
    env.update(extra)
    return env


def run(argv: Sequence[str | Path], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run argv; on failure, fail the test with everything it printed. Returns stdout."""
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def copy_checkout(dest: Path) -> Path:
    """The checkout as a user would get it, without .git, .venv or build leftovers."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory) == REPO
        return {
            n
            for n in names
            if n in IGNORED_ANYWHERE or n.endswith(".egg-info") or (top and n in TOP_LEVEL_IGNORED)
        }

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_checkout(tmp_path_factory.mktemp("checkout") / "ociforge")


@pytest.fixture(scope="module")
def dists(source: Path) -> Dists:
    out = source.parent / "dist"
    run([sys.executable, "-m", "build", "--outdir", out, source], cwd=source.parent)
    (sdist,) = out.glob("ociforge-*.tar.gz")
    (wheel,) = out.glob("ociforge-*.whl")
    return Dists(sdist=sdist, wheel=wheel)


@pytest.fixture(scope="module")
def venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with only the wheel (and its dependencies) installed."""
    venv = tmp_path_factory.mktemp("venv") / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    run([venv / "bin/python", "-m", "pip", "install", "-q", dists.wheel], cwd=venv.parent)
    return venv


def package_files() -> list[str]:
    """Every file of the checkout's ociforge package that must ship: modules and py.typed."""
    files = sorted(
        p.relative_to(REPO).as_posix()
        for p in (REPO / "ociforge").rglob("*")
        if p.is_file() and (p.suffix == ".py" or p.name == "py.typed")
    )
    assert "ociforge/py.typed" in files and "ociforge/registry/__init__.py" in files
    return files


def test_sdist_and_wheel_pass_twine_check_strict(dists: Dists) -> None:
    out = run(
        [sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel],
        cwd=dists.wheel.parent,
    )
    assert out.count("PASSED") == 2, out


def test_wheel_holds_every_module_py_typed_and_complete_metadata(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        metadata = whl.read(f"ociforge-{VERSION}.dist-info/METADATA").decode()
    missing = [f for f in package_files() if f not in names]
    assert not missing, f"left out of the wheel: {missing}"
    assert f"ociforge-{VERSION}.dist-info/licenses/LICENSE" in names
    headers = [line.split(":", 1)[0] for line in metadata.split("\n\n", 1)[0].splitlines()]
    for header in ("License-Expression", "Project-URL", "Classifier", "Keywords"):
        assert header in headers, header
    assert "Description-Content-Type: text/markdown" in metadata
    assert "## Quick start" in metadata  # the README is the long description
    assert "Requires-Dist: click" in metadata


def test_sdist_holds_what_a_build_from_it_needs(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    needed = ["pyproject.toml", "README.md", "LICENSE", *package_files()]
    assert not [n for n in needed if n not in names]


def test_wheel_in_a_fresh_venv_runs_from_there(venv: Path) -> None:
    where = run([venv / "bin/python", "-c", "import ociforge; print(ociforge.__file__)"], venv)
    assert Path(where.strip()).is_relative_to(venv), where  # the wheel's copy, not the checkout
    out = run([venv / "bin/ociforge", "--version"], cwd=venv)
    assert out.strip() == f"ociforge, version {VERSION}"


def test_wheel_in_a_fresh_venv_builds_an_image_from_closure_json(
    venv: Path, tmp_path: Path
) -> None:
    closure = make_closure(
        tmp_path,
        [
            Package(
                "install-check",
                {
                    "bin/hello": File("#!/bin/sh\necho hello from the wheel\n", executable=True),
                    "share/doc/install-check/README": "installed from a wheel\n",
                },
            )
        ],
    )
    saved = tmp_path / "closure.json"
    saved.write_text(
        run(
            [
                "nix",
                "--extra-experimental-features",
                "nix-command",
                "path-info",
                "--json",
                "--recursive",
                *OFFLINE_NIX_ARGS,
                closure["install-check"],
            ],
            cwd=tmp_path,
            env=offline_env(clean_env()),
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(HOME=str(home), OCIFORGE_CACHE_DIR=str(home / "cache"))
    layout = tmp_path / "oci"
    out = run(
        [venv / "bin/ociforge", "build", "--closure-json", saved, f"oci:{layout}:t"],
        cwd=tmp_path,
        env=env,
    )
    assert out.startswith(f"oci:{layout}:t@sha256:"), out
    digest = out.strip().rsplit("@", 1)[1]
    index = json.loads((layout / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [digest]
    assert (layout / "blobs/sha256" / digest.split(":", 1)[1]).is_file()
    # The same bytes as the checkout's own ociforge makes: nothing behaves differently installed.
    again = run(
        [sys.executable, "-m", "ociforge", "build", "--closure-json", saved, f"oci:{tmp_path}/o2"],
        cwd=REPO,
        env=env,
    )
    assert again.strip().rsplit("@", 1)[1] == digest


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _ociforge_completion ociforge"),
        ("zsh", "#compdef ociforge"),
        ("fish", "complete --no-files --command ociforge"),
    ],
)
def test_completion_script_is_generated_for_each_shell(venv: Path, shell: str, marker: str) -> None:
    # What the README's one-liners run: _OCIFORGE_COMPLETE=<shell>_source ociforge
    script = run(
        [venv / "bin/ociforge"], cwd=venv, env=clean_env(_OCIFORGE_COMPLETE=f"{shell}_source")
    )
    assert marker in script, script


def test_bash_completion_completes_subcommands_and_options(venv: Path) -> None:
    env = clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    complete = (
        'eval "$(_OCIFORGE_COMPLETE=bash_source ociforge)"; '
        "COMP_WORDS=($WORDS); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); "
        '_ociforge_completion ociforge; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    commands = run(["bash", "-c", complete], cwd=venv, env={**env, "WORDS": "ociforge p"})
    assert commands.split() == ["push", "push-all"], commands
    options = run(
        ["bash", "-c", complete], cwd=venv, env={**env, "WORDS": "ociforge build --closure-"}
    )
    assert options.split() == ["--closure-json"], options


def test_pipx_install_of_the_checkout_gives_a_working_ociforge(
    source: Path, tmp_path: Path
) -> None:
    pipx = shutil.which("pipx")
    assert pipx is not None, "pipx not found: scripts/setup installs it (apt-get install pipx)"
    bin_dir = tmp_path / "bin"
    env = clean_env(
        PIPX_HOME=str(tmp_path / "pipx"),
        PIPX_BIN_DIR=str(bin_dir),
        PIPX_MAN_DIR=str(tmp_path / "man"),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    )
    run([pipx, "install", source], cwd=source, env=env)
    out = run([bin_dir / "ociforge", "--version"], cwd=tmp_path, env=env)
    assert out.strip() == f"ociforge, version {VERSION}"
