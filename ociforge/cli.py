"""The ``ociforge`` command: a thin click layer over :mod:`ociforge.api`.

Known errors become one line on stderr and the error's exit code; ``--debug`` shows tracebacks
and debug logs (which never contain secrets: the library redacts before it logs).

Exit codes: 0 success, 1 unexpected error, 2 usage (bad option, input or reference), 3 nix
failed, 4 image could not be assembled or written, 5 registry error, 6 authentication error.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from ociforge.api import BuildResult, build
from ociforge.assemble import EPOCH_PLUS_ONE, ImageOptions
from ociforge.compress import Compression, CompressionOptions
from ociforge.errors import OciforgeError, UsageError
from ociforge.image import RuntimeConfig, parse_env_items
from ociforge.layering import STRATEGIES
from ociforge.progress import ProgressDisplay
from ociforge.tarstream import TarOptions

F = TypeVar("F", bound=Callable[..., Any])


def _image_options(func: F) -> F:
    """The options that decide an image's bytes, shared by ``build`` and ``push``."""
    decorators = [
        click.option(
            "--closure-json",
            type=click.Path(dir_okay=False),
            help=(
                "Read the closure from a saved `nix path-info --json -r` instead of running nix."
            ),
        ),
        click.option(
            "--format",
            "image_format",
            type=click.Choice(["oci", "docker"]),
            default="oci",
            show_default=True,
            help="Manifest and media types.",
        ),
        click.option(
            "--strategy",
            type=click.Choice(STRATEGIES),
            default="popularity",
            show_default=True,
            help="How store paths are grouped into layers.",
        ),
        click.option(
            "--max-layers",
            type=int,
            default=100,
            show_default=True,
            help="Layer budget, counting the final customisation layer.",
        ),
        click.option(
            "--compression",
            type=click.Choice([c.value for c in Compression]),
            default="gzip",
            show_default=True,
        ),
        click.option(
            "--compression-level",
            type=int,
            default=None,
            help="gzip 1-9 (default 6), zstd 1-19 (default 3).",
        ),
        click.option(
            "--entrypoint", help='JSON array (\'["/bin/sh","-c"]\') or a shell-split string.'
        ),
        click.option("--cmd", help="JSON array or a shell-split string."),
        click.option("--env", "env", multiple=True, metavar="K=V", help="Repeatable."),
        click.option("--workdir"),
        click.option("--user"),
        click.option("--label", "labels", multiple=True, metavar="K=V", help="Repeatable."),
        click.option("--expose", multiple=True, metavar="PORT[/PROTO]", help="Repeatable."),
        click.option("--volume", multiple=True, metavar="PATH", help="Repeatable."),
        click.option(
            "--created",
            default=EPOCH_PLUS_ONE,
            show_default=True,
            help="RFC 3339 time or 'now' (makes the config non-reproducible).",
        ),
        click.option("--arch", help="Override the architecture (default: from the closure)."),
        click.option("--os", "os_name", help="Override the OS (default: linux)."),
        click.option("--variant", help="Override the architecture variant."),
        click.option(
            "--mtime",
            type=int,
            default=1,
            show_default=True,
            help="Modification time of every file, seconds since the epoch.",
        ),
        click.option(
            "--relative-names",
            is_flag=True,
            help="Write nix/store/... instead of /nix/store/... in layer tars.",
        ),
        click.option(
            "--no-root-links",
            is_flag=True,
            help="Do not link the roots' top-level directories into /.",
        ),
        click.option("--nix", "nix_bin", default="nix", show_default=True, help="nix executable."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _common(func: F) -> F:
    for decorator in reversed(
        [
            click.option(
                "--progress/--no-progress",
                default=None,
                help="Progress bars on stderr (default: only on a terminal).",
            ),
            click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr."),
            click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
            click.option("--debug", is_flag=True, help="Debug logs and tracebacks on stderr."),
        ]
    ):
        func = decorator(func)
    return func


def _argv(value: str | None, option: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{option}: not a JSON array of strings: {exc.msg}") from exc
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise UsageError(f"{option}: want a JSON array of strings")
        return tuple(parsed)
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from exc


def _created(value: str) -> str:
    if value == "now":
        return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise UsageError(f"--created: {value!r} is not an RFC 3339 time or 'now'") from exc
    return value


def options_from_cli(kw: dict[str, Any]) -> ImageOptions:
    """Turn the shared image options into :class:`ImageOptions` (validating as it goes)."""
    runtime = RuntimeConfig(
        entrypoint=_argv(kw["entrypoint"], "--entrypoint"),
        cmd=_argv(kw["cmd"], "--cmd"),
        env=parse_env_items(kw["env"], option="--env"),
        workdir=kw["workdir"],
        user=kw["user"],
        labels=parse_env_items(kw["labels"], option="--label"),
        exposed_ports=tuple(kw["expose"]),
        volumes=tuple(kw["volume"]),
    )
    return ImageOptions(
        format=kw["image_format"],
        strategy=kw["strategy"],
        max_layers=kw["max_layers"],
        compression=CompressionOptions(Compression(kw["compression"]), kw["compression_level"]),
        tar=TarOptions(mtime=kw["mtime"], relative_names=kw["relative_names"]),
        runtime=runtime,
        created=_created(kw["created"]),
        architecture=kw["arch"],
        os=kw["os_name"],
        variant=kw["variant"],
        link_roots=not kw["no_root_links"],
    )


def _run(debug: bool, action: Callable[[], None]) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="ociforge: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        action()
    except OciforgeError as exc:
        if debug:
            raise
        click.echo(f"ociforge: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("ociforge: interrupted", err=True)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ociforge")
def main() -> None:
    """Build and push OCI images of Nix closures in one streaming pass."""


@main.command("build")
@click.argument("args", nargs=-1, required=True, metavar="[INSTALLABLE] TARGET")
@_image_options
@_common
def build_command(args: tuple[str, ...], **kw: Any) -> None:
    """Build INSTALLABLE's image into TARGET.

    INSTALLABLE is a flake reference (.#attr), a store path or a .drv; with --closure-json it is
    optional. TARGET is oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG] (FILE '-' = stdout).
    """

    def action() -> None:
        installable, target = _installable_and_target(args, kw["closure_json"])
        options = options_from_cli(kw)
        with ProgressDisplay.for_cli(kw["progress"], kw["quiet"]) as display:
            result = build(
                installable,
                target,
                options=options,
                closure_json=kw["closure_json"],
                nix=kw["nix_bin"],
                on_event=display.handle,
            )
        _report_build(result, kw["as_json"], to_stdout=not target.startswith("docker-archive:-"))

    _run(kw["debug"], action)


def _installable_and_target(
    args: tuple[str, ...], closure_json: str | None
) -> tuple[str | None, str]:
    if len(args) == 2:
        return args[0], args[1]
    if len(args) == 1 and closure_json:
        return None, args[0]
    if len(args) == 1:
        raise UsageError(
            "give INSTALLABLE and TARGET (INSTALLABLE is optional with --closure-json)"
        )
    raise UsageError(f"expected [INSTALLABLE] TARGET, got {len(args)} arguments")


def _report_build(result: BuildResult, as_json: bool, *, to_stdout: bool) -> None:
    if as_json:
        summary = {
            "target": result.target,
            "manifest_digest": result.manifest_digest,
            "config_digest": result.config_digest,
            "layers": _layer_rows(result),
        }
        click.echo(json.dumps(summary, indent=2), err=not to_stdout)
    else:
        click.echo(f"{result.target}@{result.manifest_digest}", err=not to_stdout)


def _layer_rows(result: BuildResult) -> Sequence[dict[str, Any]]:
    return [
        {"digest": d.digest, "size": d.size, "mediaType": d.media_type} for d in result.image.layers
    ]
