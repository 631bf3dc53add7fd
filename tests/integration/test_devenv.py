"""Dev shells with the real nix: their environment, their closure, and a job run in their rootfs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from ociforge.assemble.devshell import image_env
from ociforge.assemble.essentials import EssentialsOptions, essentials, merge_entries
from ociforge.assemble.rootfs import root_links
from ociforge.errors import NixError, UsageError
from ociforge.nix.devenv import DevShell, print_dev_env, read_devshell
from ociforge.tarstream import TarEntry
from tests.support.nixstore import BuiltClosure, busybox_package, make_closure

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHROOT = (
    shutil.which("chroot") or "/usr/sbin/chroot"
)  # resolved here: the job's PATH is the image's
EXAMPLE = f"path:{REPO / 'examples' / 'devshell'}#devShells.x86_64-linux.default"


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> BuiltClosure:
    return make_closure(tmp_path_factory.mktemp("devenv"), [busybox_package()])


@pytest.fixture(scope="module")
def shell_drv(tools: BuiltClosure, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A bash-builder shell whose output does NOT record its input (unlike mkShell)."""
    expr = tmp_path_factory.mktemp("shell") / "shell.nix"
    expr.write_text(
        f"""
        let busybox = builtins.storePath "{tools["busybox"]}"; in
        builtins.derivation {{
          name = "test-devshell"; system = builtins.currentSystem;
          builder = "/bin/bash"; outputs = [ "out" ];
          buildInputs = [ busybox ];
          PATH = "${{busybox}}/bin";
          GREETING = "hello from the test shell";
          shellHook = "export HOOKED=1";
          args = [ "-c" "echo built > $out" ];
        }}
        """
    )
    done = subprocess.run(
        ["nix-instantiate", str(expr)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_print_dev_env_reads_the_shells_variables(shell_drv: str, tools: BuiltClosure) -> None:
    env = print_dev_env(shell_drv)
    assert env.variables["GREETING"] == "hello from the test shell"
    assert env.variables["PATH"] == f"{tools['busybox']}/bin"
    assert env.variables["buildInputs"] == tools["busybox"]
    assert env.shell_hook == "export HOOKED=1"
    assert env.name == "test-devshell"
    assert env.store_paths == (tools["busybox"],)


def test_inputs_the_output_does_not_record_become_extra_roots(
    shell_drv: str, tools: BuiltClosure
) -> None:
    shell = read_devshell(shell_drv)
    busybox = tools["busybox"]
    assert shell.extra_roots == (busybox,)
    assert busybox in shell.closure.paths
    assert shell.closure.roots[-1] == busybox
    assert shell.closure.roots[0].endswith("-test-devshell")
    assert shell.closure.system == "x86_64-linux"


def test_the_example_flakes_shell_records_its_inputs() -> None:
    shell = read_devshell(EXAMPLE)
    assert shell.extra_roots == ()  # its builder writes $buildInputs to $out, like mkShell
    assert shell.env.variables["GREETING"] == "Hello from the example dev shell"
    for entry in shell.env.variables["PATH"].split(":"):
        assert entry.removesuffix("/bin") in shell.closure.paths, entry


def test_an_unknown_shell_is_a_nix_error_with_nixs_message() -> None:
    missing = EXAMPLE.replace("devShells.x86_64-linux.default", "devShells.x86_64-linux.nope")
    with pytest.raises(NixError, match="does not provide attribute") as info:
        print_dev_env(missing)
    assert "print-dev-env" in str(info.value)


def test_a_built_store_path_is_not_a_shell(tools: BuiltClosure) -> None:
    with pytest.raises(UsageError, match="needs a derivation"):
        print_dev_env(tools["busybox"])


# --- a GitLab-style job in the image's file tree -----------------------------------------


def materialise(root: Path, store_paths: Sequence[str], entries: Sequence[TarEntry]) -> None:
    """The image's file tree: the store paths, then the customisation entries."""
    for path in store_paths:
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(path):
            shutil.copytree(path, dest, symlinks=True)
        else:  # a mkShell-like output is one file
            shutil.copy2(path, dest, follow_symlinks=False)
    for entry in entries:
        target = root / entry.name.lstrip("/")
        if entry.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(entry.mode)
        elif entry.kind == "symlink":
            target.symlink_to(entry.target)
        else:
            target.write_bytes(entry.data)
            target.chmod(entry.mode)


def run_job(root: Path, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    """What GitLab's docker executor does: the image's Env, and `sh` running the script.

    chroot needs root, as CI has; elsewhere this fails rather than skips (house rule).
    """
    return subprocess.run(
        [CHROOT, str(root), "/bin/sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def image_of(shell: DevShell, options: EssentialsOptions) -> tuple[list[TarEntry], dict[str, str]]:
    result = essentials(shell.closure.paths, options, roots=shell.closure.roots)
    assert result.user is not None
    entries = merge_entries(root_links(shell.closure.roots), result.entries)
    env = {**result.env, **image_env(shell.env, home=result.user.home, user=options.user)}
    return entries, env


def test_a_job_runs_the_example_shells_tools_in_its_image_tree(tmp_path: Path) -> None:
    shell = read_devshell(EXAMPLE)
    entries, env = image_of(shell, EssentialsOptions(user="ci"))
    materialise(tmp_path, list(shell.closure.paths), entries)
    job = run_job(
        tmp_path,
        env,
        'greet && echo "home=$HOME tmp=$TMPDIR" && id -un && touch /tmp/ok && env',
    )
    assert job.returncode == 0, job.stderr
    lines = job.stdout.splitlines()
    assert lines[0] == "Hello from the example dev shell"
    assert lines[1] == "home=/home/ci tmp=/tmp"
    assert lines[2] == "root"  # chroot keeps our uid; /etc/passwd names it
    assert (tmp_path / "tmp" / "ok").exists()
    assert "IN_NIX_SHELL=impure" in lines
    assert "/tmp/nix-build-" not in job.stdout  # nothing points into the capture's build dir


# --- the example pipelines ---------------------------------------------------------------
# Checked line by line (PyYAML is not a test dependency): the commands a user copies must name
# the shell attribute tested above and the tags the README explains.


def test_the_devshell_pipeline_pushes_the_tested_shell_and_runs_a_job_in_it() -> None:
    text = (REPO / "examples" / "devshell" / ".gitlab-ci.yml").read_text()
    assert "\t" not in text
    assert "ociforge push --devshell .#devShells.x86_64-linux.default" in text
    assert '"$CI_REGISTRY_IMAGE/builder:latest"' in text
    assert re.search(r'^  image: "\$CI_REGISTRY_IMAGE/builder:latest"$', text, re.M)
    assert re.search(r"^    - greet$", text, re.M)  # the shell's own tool, found via Env PATH


def test_the_image_repo_pipeline_is_scheduled_and_tags_date_commit_and_latest() -> None:
    text = (REPO / "examples" / "image-repo" / ".gitlab-ci.yml").read_text()
    assert "\t" not in text
    assert re.search(r'^    - if: \$CI_PIPELINE_SOURCE == "schedule"$', text, re.M)
    assert "DATE_TAG=$(date -u +%Y%m%d)" in text
    for tag in ("$DATE_TAG", "$CI_COMMIT_SHORT_SHA", "latest"):
        assert f'"$CI_REGISTRY_IMAGE/$IMAGE:{tag}"' in text, tag
    assert re.search(r"^        INSTALLABLE: \.#devShells\.x86_64-linux\.default$", text, re.M)
