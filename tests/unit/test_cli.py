"""CLI parsing: options become ImageOptions/RegistryOptions, bad input becomes one line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ociforge.cli import main, parse_size


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("10MB", 10_000_000),
        ("5MiB", 5 * 1024 * 1024),
        ("64KB", 64_000),
        ("1.5GiB", int(1.5 * 1024**3)),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text, "--chunk-size") == expected


@pytest.mark.parametrize("text", ["ten", "10XB", "0", "-5MB"])
def test_bad_sizes(text: str) -> None:
    from ociforge.errors import UsageError

    with pytest.raises(UsageError, match="--chunk-size"):
        parse_size(text, "--chunk-size")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["build", "only-one-arg"], "INSTALLABLE and TARGET"),
        (["build", "a", "b", "c"], "got 3 arguments"),
        (["build", "x", "oci:/tmp/o", "--entrypoint", "[1, 2]"], "--entrypoint"),
        (["build", "x", "oci:/tmp/o", "--cmd", "'unbalanced"], "--cmd"),
        (["build", "x", "oci:/tmp/o", "--created", "yesterday"], "--created"),
        (["build", "x", "oci:/tmp/o", "--label", "nolabel"], "--label"),
        # Exit 2, not nix's 3: runtime settings are checked before nix evaluates "x".
        (["build", "x", "oci:/tmp/o", "--created", "2024-05-01"], "--created"),
        (["build", "x", "oci:/tmp/o", "--expose", "http"], "--expose"),
        (["build", "x", "oci:/tmp/o", "--workdir", "relative"], "working directory"),
        (["build", "x", "oci:/tmp/o", "--annotation", "novalue"], "--annotation"),
        (["build", "x", "oci:/tmp/o", "--add", "relative"], "--add"),
        (["build", "x", "oci:/tmp/o", "--user", "Bad User"], "--user"),
        (["build", "x", "oci:/tmp/o", "--format", "docker", "--compression", "zstd"], "zstd"),
        (["build", "x", "oci:/tmp/o", "--format", "docker", "--annotation", "a=b"], "--format"),
        (["build", "x", "oci:/tmp/o", "--entrypoint-hook", "--entrypoint", "/x"], "drop"),
        (["build", "x", "oci:/tmp/o", "--annotation", "dev.ociforge.layer.key=k"], "ociforge"),
        (["build", "--devshell", "--closure-json", "/tmp/c.json", "oci:/tmp/o"], "--devshell"),
        (["push", "x"], "SOURCE and at least one DEST"),
        (["push", "x", "localhost:5000/a:b", "--username", "u"], "--password-stdin"),
        (["push", "x", "localhost:5000/a:b", "--jobs", "0"], "--jobs"),
        (["push", "x", "localhost:5000/a:b", "--chunk-size", "huge"], "--chunk-size"),
        # Exit 2, not nix's 3: the CA bundle is checked before nix evaluates "x".
        (["push", "x", "localhost:5000/a:b", "--ca-file", "/nonexistent.pem"], "CA bundle"),
        (["push", "--dry-run", "x", "localhost:5000/a:b", "--ca-file", "/none.pem"], "CA bundle"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(args: list[str], needle: str) -> None:
    code, output = run(*args)
    assert code == 2, output
    assert output.startswith("ociforge: error:")
    assert needle in output
    assert len(output.strip().splitlines()) == 1


def test_password_stdin_needs_a_password() -> None:
    code, output = run(
        "push", "x", "localhost:5000/a:b", "--username", "u", "--password-stdin", stdin=""
    )
    assert code == 2 and "nothing on standard input" in output


def test_help_lists_both_commands() -> None:
    code, output = run("--help")
    assert code == 0
    commands = output.split("Commands:", 1)[1].split()
    assert "build" in commands and "push" in commands  # not just the group's description
