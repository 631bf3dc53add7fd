"""podman, run the way a CI runner would, as an independent check that images work.

Rootful podman with its own storage in a short temporary directory (podman refuses run roots
longer than 50 characters), vfs storage and runc: no system configuration is touched and
nothing survives the test. ``run`` pulls and starts an image like GitLab's docker executor:
``sh -c SCRIPT`` as the container's command, no network.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

RUN_FLAGS = (
    "--rm",
    "--network=none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1000:1000",
)


@dataclass(frozen=True)
class Podman:
    argv: tuple[str, ...]  # podman and its storage options

    def __call__(
        self, *args: str, stdin: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.argv, *args],
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
        return done

    def pull(self, image: str, *, creds: tuple[str, str] | None = None) -> None:
        """Pull ``host/repo:tag`` over plain HTTP, logging in with ``creds`` if given."""
        login = ["--creds", f"{creds[0]}:{creds[1]}"] if creds else []
        self("pull", "--tls-verify=false", *login, f"docker://{image}")

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        options: Sequence[str] = (),
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in ``image`` (already pulled, or ``oci:DIR:TAG``); never raises.

        ``stdin`` is fed to the container (``-i``), as GitLab feeds a job script to its shell.
        """
        interactive = ("-i",) if stdin is not None else ()
        return self("run", *RUN_FLAGS, *interactive, *options, image, *command, stdin=stdin,
                    check=False)  # fmt: skip

    def sh(self, image: str, script: str) -> subprocess.CompletedProcess[str]:
        """What GitLab does with a job script: ``sh -c SCRIPT`` as the command."""
        return self.run(image, ["sh", "-c", script])


@pytest.fixture
def podman() -> Iterator[Podman]:
    with tempfile.TemporaryDirectory(prefix="ocf-podman-") as d:
        yield Podman(
            (
                "podman",
                "--root",
                f"{d}/s",
                "--runroot",
                f"{d}/r",
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            )
        )
