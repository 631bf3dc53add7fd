"""A dev shell as a GitLab CI job image, end to end: pushed by a CI job with no flags, pulled
and run by podman the way GitLab's docker executor runs a job (``sh -c SCRIPT``).

The shell is examples/devshell (a static busybox, a ``greet`` tool that needs the shell's
``GREETING``, a CA bundle), copied to a temporary directory so nix writes nothing in the repo.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.test_push_e2e import Run, cli_env, ociforge, raw_manifest, reader_creds
from tests.support.podman import Podman
from tests.support.registry_fixtures import TokenRegistry

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHELL_ATTR = "devShells.x86_64-linux.default"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
JOB_SCRIPT = """
set -e
greet
echo "var=$GREETING"
echo "id=$(id -u):$(id -g) whoami=$(whoami) home=$HOME"
echo "path=$PATH"
touch /tmp/job-file && echo tmp-writable
touch "$HOME/home-file" && echo home-writable
for v in SSL_CERT_FILE NIX_SSL_CERT_FILE GIT_SSL_CAINFO; do
  eval "f=\\$$v"; test -s "$f" && echo "$v=$f"
done
grep -c "BEGIN CERTIFICATE" "$SSL_CERT_FILE" >/dev/null && echo bundle-has-certificates
/usr/bin/env true && echo env-works
"""


@pytest.fixture(scope="module")
def flake(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("devshell-flake")
    shutil.copy(REPO / "examples" / "devshell" / "flake.nix", directory / "flake.nix")
    return f"path:{directory}"


def gitlab_job_env(home: Path, tr: TokenRegistry) -> dict[str, str]:
    """A GitLab job's variables: the registry's, and those the annotations come from."""
    project = {
        "CI_PROJECT_URL": "https://gitlab.example.com/group/project",
        "CI_COMMIT_SHA": COMMIT,
        "CI_COMMIT_TIMESTAMP": "2026-11-27T10:00:00+00:00",
    }
    return cli_env(home, {**tr.ci_env, **project})


def push_devshell(flake: str, tr: TokenRegistry, home: Path, *flags: str) -> tuple[str, Run]:
    image = f"{tr.image}/builder:latest"
    run = ociforge(
        "push", "--devshell", f"{flake}#{SHELL_ATTR}", image, *flags, env=gitlab_job_env(home, tr)
    )
    assert run.code == 0, run.explain()
    return image, run


def job_lines(podman: Podman, image: str, tr: TokenRegistry) -> list[str]:
    podman.pull(image, creds=tr.reader)
    ran = podman.sh(image, JOB_SCRIPT)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return ran.stdout.splitlines()


def test_a_job_runs_in_the_pushed_devshell_image(
    flake: str, token_registry: TokenRegistry, tmp_path: Path, podman: Podman
) -> None:
    image, run = push_devshell(flake, token_registry, tmp_path / "home")
    assert "warning" not in run.err, run.explain()  # the shell has sh, env and a CA bundle
    lines = job_lines(podman, image, token_registry)
    assert lines[:3] == [
        "Hello from the example dev shell",
        "var=Hello from the example dev shell",
        "id=0:0 whoami=root home=/root",
    ]
    path = lines[3].removeprefix("path=").split(":")
    assert path[-2:] == ["/bin", "/usr/bin"]
    assert any(p.endswith("-greet-1.0/bin") for p in path)
    assert lines[4:] == [
        "tmp-writable",
        "home-writable",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
        "NIX_SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt",
        "GIT_SSL_CAINFO=/etc/ssl/certs/ca-bundle.crt",
        "bundle-has-certificates",
        "env-works",
    ]


def test_the_manifest_says_where_the_image_comes_from(
    flake: str, token_registry: TokenRegistry, tmp_path: Path, skopeo_env: dict[str, str]
) -> None:
    image, _ = push_devshell(flake, token_registry, tmp_path / "home", "--annotation", "team=ci")
    manifest = json.loads(raw_manifest(skopeo_env, image, *reader_creds(token_registry)))
    assert manifest["annotations"] == {
        "org.opencontainers.image.created": "2026-11-27T10:00:00+00:00",
        "org.opencontainers.image.revision": COMMIT,
        "org.opencontainers.image.source": "https://gitlab.example.com/group/project",
        "team": "ci",
    }
    # The same commit pushed again from a fresh runner: the same manifest, nothing to do.
    _, again = push_devshell(flake, token_registry, tmp_path / "fresh-runner")
    assert "up to date" not in again.err  # the explicit annotation is gone: a new manifest
    _, third = push_devshell(flake, token_registry, tmp_path / "third-runner")
    assert "up to date" in third.err, third.explain()


def test_a_non_root_user_gets_a_passwd_entry_and_a_writable_home(
    flake: str, token_registry: TokenRegistry, tmp_path: Path, podman: Podman
) -> None:
    image, _ = push_devshell(flake, token_registry, tmp_path / "home", "--user", "ci")
    lines = job_lines(podman, image, token_registry)
    assert lines[2] == "id=1000:1000 whoami=ci home=/home/ci"
    assert "home-writable" in lines


def test_with_nix_the_image_nix_sees_the_closure_as_valid(
    flake: str, tmp_path: Path, podman: Podman
) -> None:
    """``--with-nix``, ``--add`` and ``--contents`` together, checked inside the container.

    Debian's Nix is not in the store, so the container borrows the host's ``/usr`` (read-only)
    for ``nix-store``: what is checked is the image's ``/nix/var/nix/db`` and store.
    """
    extra = tmp_path / "extra"
    (extra / "sub").mkdir(parents=True)
    (extra / "sub" / "settings.conf").write_text("answer = 42\n")
    layout = f"oci:{tmp_path}/image:t"
    run = ociforge(
        "build", "--devshell", f"{flake}#{SHELL_ATTR}", layout, "--with-nix",
        "--add", f"{extra}:/opt/extra", "--contents", f"{flake}#greet",
        env=cli_env(tmp_path / "home"),
    )  # fmt: skip
    assert run.code == 0, run.explain()
    assert "warning: --with-nix: no bin/nix in the closure" in run.err
    script = """
    set -e
    for p in /nix/store/*; do /usr/bin/nix-store --verify-path "$p"; done
    echo verified $(ls /nix/store | wc -l)
    /usr/bin/nix-store --verify-path /nix/store/00000000000000000000000000000000-x 2>/dev/null \
      || echo unknown-path-invalid
    cat /opt/extra/sub/settings.conf
    readlink /bin/greet
    grep -c flakes /etc/nix/nix.conf
    """
    host = ["-v", "/usr:/usr:ro", "-v", "/usr/lib:/lib:ro", "-v", "/usr/lib64:/lib64:ro"]
    ran = podman.run(layout, ["/bin/sh", "-c", script], options=host)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "verified 5"  # busybox, bash, greet, cacert, the shell
    assert lines[1:3] == ["unknown-path-invalid", "answer = 42"]
    assert lines[3].endswith("-greet-1.0/bin/greet")
    assert lines[4] == "1"


def test_the_entrypoint_hook_runs_the_shell_hook_before_the_job(
    flake: str, tmp_path: Path, podman: Podman
) -> None:
    layout = f"oci:{tmp_path}/image:t"
    run = ociforge(
        "build", "--devshell", f"{flake}#{SHELL_ATTR}", layout, "--entrypoint-hook",
        env=cli_env(tmp_path / "home"),
    )  # fmt: skip
    assert run.code == 0, run.explain()
    # GitLab runs the job shell as the command: the entrypoint runs the hook, then execs it.
    job = "echo hook=${HOOK_RAN:-no}; greet; read -r line && echo stdin=$line"
    ran = podman.run(layout, ["sh", "-c", job], stdin=b"job script on stdin\n")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.splitlines() == [
        "hook=yes",
        "Hello from the example dev shell",
        "stdin=job script on stdin",  # the hook read /dev/null, not the job's stdin
    ]
    assert "entering the example dev shell" in ran.stderr  # the hook's output goes to stderr
    # Without the flag, nothing runs the hook.
    plain = f"oci:{tmp_path}/plain:t"
    assert (
        ociforge(
            "build", "--devshell", f"{flake}#{SHELL_ATTR}", plain, env=cli_env(tmp_path / "home")
        ).code
        == 0
    )
    assert podman.sh(plain, job.split(";")[0]).stdout.strip() == "hook=no"
