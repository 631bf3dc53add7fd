"""Every exit code of the README's table, through the CLI, with and without ``--debug``.

The failures are raised from inside the command (``api.push`` replaced), so each code is the
CLI's mapping of that error; the real ways to get them are in the integration tests
(test_cancel.py for 5, 6, 130 and 143, test_push_e2e.py and test_build_e2e.py for the others).
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import ociforge.cli
from ociforge.errors import (
    AuthError,
    DigestMismatchError,
    ImageError,
    NixError,
    RegistryDigestError,
    RegistryError,
    UsageError,
)

ARGS = ["push", ".#image", "localhost:5000/group/app:latest"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError("a bug"), 1),
        (UsageError("bad input"), 2),
        (NixError("nix build .#image failed: boom"), 3),
        (ImageError("cannot write"), 4),
        (DigestMismatchError("layer 1/3", "sha256:aa", "sha256:bb"), 4),
        (RegistryError("registry.test answered 500"), 5),
        (RegistryDigestError("registry stored blob l", "sha256:aa", "sha256:bb"), 5),
        (AuthError("registry.test answered 401"), 6),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_each_error_exits_with_its_code(
    error: Exception, code: int, debug: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_push(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(ociforge.cli, "push", failing_push)
    result = CliRunner().invoke(ociforge.cli.main, [*ARGS, *(["--debug"] if debug else [])])
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("ociforge: ") and str(error) in lines[-1]
    if debug:  # the traceback, then the same line
        assert lines[0] == "Traceback (most recent call last):"
        assert "(run with --debug for details)" not in lines[-1]
    else:
        assert len(lines) == 1


def test_a_usage_error_found_by_the_cli_itself_exits_2() -> None:
    result = CliRunner().invoke(ociforge.cli.main, [*ARGS, "--timeout", "0"])
    assert result.exit_code == 2 and "--timeout" in result.output
