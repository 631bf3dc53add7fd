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
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from ociforge.api import (
    EPOCH_PLUS_ONE,
    STRATEGIES,
    BuildResult,
    Compression,
    CompressionOptions,
    Credentials,
    EssentialsOptions,
    ImageOptions,
    PushPreview,
    PushResult,
    RegistryOptions,
    RuntimeConfig,
    TarOptions,
    build,
    check_created,
    parse_annotation_items,
    parse_env_items,
    parse_reference,
    preview,
    push,
)
from ociforge.errors import OciforgeError, UsageError
from ociforge.progress import ProgressDisplay

F = TypeVar("F", bound=Callable[..., Any])


def _options(options: Sequence[Callable[[F], F]]) -> Callable[[F], F]:
    """One decorator applying click options in the order listed (as in ``--help``)."""

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


_content_options = [
    click.option(
        "--devshell",
        is_flag=True,
        help=(
            "INSTALLABLE is a dev shell (.#devShells.<system>.default): its environment becomes "
            "the image's Env, for CI job images. Turns the essentials on."
        ),
    ),
    click.option(
        "--entrypoint-hook",
        is_flag=True,
        help="With --devshell: an entrypoint that runs the shell's shellHook before the command.",
    ),
    click.option(
        "--essentials/--no-essentials",
        default=None,
        help=(
            "/bin/sh, /usr/bin/env, /tmp, /etc/passwd and group, HOME, CA bundle and its "
            "variables (default: on with --devshell, off otherwise)."
        ),
    ),
    click.option("--home", help="The user's home directory (default /root or /home/NAME)."),
    click.option(
        "--ca-bundle",
        type=click.Path(dir_okay=False),
        help="CA bundle for /etc/ssl/certs (default: the closure's cacert, if any).",
    ),
    click.option(
        "--with-nix",
        is_flag=True,
        help="For images that run Nix: /etc/nix/nix.conf and the closure in a Nix database.",
    ),
    click.option(
        "--add",
        "adds",
        multiple=True,
        metavar="SRC:DEST",
        help="Copy a host file or directory to DEST in the image. Repeatable.",
    ),
    click.option(
        "--contents",
        multiple=True,
        metavar="INSTALLABLE",
        help="Add INSTALLABLE's closure and link its top-level directories into /. Repeatable.",
    ),
    click.option(
        "--annotation",
        "annotations",
        multiple=True,
        metavar="K=V",
        help=(
            "Manifest annotation (OCI only); K= drops an automatic one. In GitLab CI, source, "
            "revision and created come from CI_PROJECT_URL, CI_COMMIT_SHA, CI_COMMIT_TIMESTAMP."
        ),
    ),
]


# The options that decide an image's bytes, shared by ``build`` and ``push``.
_IMAGE_OPTIONS = [
    click.option(
        "--closure-json",
        type=click.Path(dir_okay=False),
        help=("Read the closure from a saved `nix path-info --json -r` instead of running nix."),
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
        default="auto",
        show_default=True,
        help=(
            "How store paths are grouped into layers: auto (nixpkgs' auto-layer: a changed"
            " package re-ships about its own layer) or popularity (streamLayeredImage's old"
            " layers, byte for byte; its catch-all layer changes with almost any change)."
        ),
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
        help=(
            "Layer compression. zstd is smaller and faster, but Docker 20.10 and containerd 1.4"
            " (still on many runners) cannot pull it."
        ),
    ),
    click.option(
        "--compression-level",
        type=int,
        default=None,
        help=(
            f"gzip 1-9 (default 3: {CompressionOptions().engine}; 1-3 run on ISA-L when"
            f" installed, 4-9 on zlib, several times slower), zstd 1-22 (default 3)."
        ),
    ),
    click.option("--entrypoint", help='JSON array (\'["/bin/sh","-c"]\') or a shell-split string.'),
    click.option("--cmd", help="JSON array or a shell-split string."),
    click.option("--env", "env", multiple=True, metavar="K=V", help="Repeatable."),
    click.option("--workdir"),
    click.option(
        "--user",
        help="Who runs the image: NAME or UID[:GID] (with essentials: also in /etc/passwd).",
    ),
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
    *_content_options,
]


_COMMON_OPTIONS = [
    click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bars on stderr (default: only on a terminal).",
    ),
    click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr."),
    click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout."),
    click.option("--debug", is_flag=True, help="Debug logs and tracebacks on stderr."),
]


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
        return check_created(value)
    except UsageError:
        raise UsageError(f"--created: {value!r} is not an RFC 3339 time or 'now'") from None


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
    created = _created(kw["created"])
    return ImageOptions(  # checks itself, before nix builds anything
        format=kw["image_format"],
        strategy=kw["strategy"],
        max_layers=kw["max_layers"],
        compression=CompressionOptions(Compression(kw["compression"]), kw["compression_level"]),
        tar=TarOptions(mtime=kw["mtime"], relative_names=kw["relative_names"]),
        runtime=runtime,
        created=created,
        architecture=kw["arch"],
        os=kw["os_name"],
        variant=kw["variant"],
        link_roots=not kw["no_root_links"],
        essentials=_essentials(kw),
        entrypoint_hook=kw["entrypoint_hook"],
        annotations=parse_annotation_items(kw["annotations"]),
    )


def _essentials(kw: dict[str, Any]) -> EssentialsOptions:
    on = kw["essentials"] if kw["essentials"] is not None else kw["devshell"]
    chosen = {
        "user": kw["user"],
        "home": kw["home"],
        "ca_bundle": kw["ca_bundle"],
        "with_nix": kw["with_nix"],
        "adds": tuple(kw["adds"]),
    }
    return EssentialsOptions(**chosen) if on else EssentialsOptions.only(**chosen)


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
    except Exception as exc:  # a bug of ours: still one line, the traceback under --debug
        if debug:
            raise
        click.echo(
            f"ociforge: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
            err=True,
        )
        sys.exit(1)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ociforge")
def main() -> None:
    """Build and push OCI images of Nix closures in one streaming pass."""


@main.command("build")
@click.argument("args", nargs=-1, required=True, metavar="[INSTALLABLE] TARGET")
@_options(_IMAGE_OPTIONS)
@_options(_COMMON_OPTIONS)
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
                devshell=kw["devshell"],
                contents=kw["contents"],
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
        {"digest": str(d.digest), "size": d.size, "mediaType": d.media_type}
        for d in result.image.layers
    ]


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_size(text: str, option: str) -> int:
    """``10MB``, ``5MiB``, ``1048576`` -> bytes."""
    number = text.rstrip("kKmMgGiIbB ")
    unit = text[len(number) :].strip().lower()
    try:
        value = int(float(number) * _SIZE_UNITS[unit])
    except (ValueError, KeyError) as exc:
        raise UsageError(f"{option}: {text!r} is not a size like 10MB or 5MiB") from exc
    if value < 1:
        raise UsageError(f"{option}: must be positive")
    return value


def _registry_options(kw: dict[str, Any]) -> RegistryOptions:
    creds = None
    if kw["password_stdin"]:
        if not kw["username"]:
            raise UsageError("--password-stdin needs --username")
        secret = sys.stdin.readline().rstrip("\r\n")
        if not secret:
            raise UsageError("--password-stdin: nothing on standard input")
        creds = Credentials(kw["username"], secret, source="--username/--password-stdin")
    elif kw["username"]:
        raise UsageError(
            "--username needs --password-stdin (passwords never go on the command line)"
        )
    return RegistryOptions(
        credentials=creds,
        insecure=True if kw["insecure"] else None,
        ca_file=kw["ca_file"],
        jobs=kw["jobs"],
        chunk_size=parse_size(kw["chunk_size"], "--chunk-size") if kw["chunk_size"] else None,
        mount_from=kw["mount_from"],
        **({"cache_dir": None} if kw["no_cache"] else _given(cache_dir=kw["cache_dir"])),
        cache_from=tuple(parse_reference(r) for r in kw["cache_from"]),
    )


def _given(**options: Any) -> dict[str, Any]:
    """The options the user gave: the others keep the library's defaults."""
    return {k: v for k, v in options.items() if v is not None}


_REGISTRY_OPTIONS = [
    click.option("--username", help="Registry user (with --password-stdin)."),
    click.option("--password-stdin", is_flag=True, help="Read the password or token from stdin."),
    click.option(
        "--insecure",
        is_flag=True,
        help="Plain HTTP (default only for localhost/127.0.0.1).",
    ),
    click.option(
        "--ca-file",
        type=click.Path(dir_okay=False),
        help="Extra CA bundle to verify the registry's TLS certificate.",
    ),
    click.option("--jobs", type=int, default=4, show_default=True, help="Blobs uploaded at once."),
    click.option(
        "--chunk-size",
        help="Upload in PATCH chunks of this size (e.g. 10MB) for "
        "registries or proxies that cap request size.",
    ),
    click.option(
        "--mount-from",
        metavar="REPO",
        help="Mount blobs from this repository of the same registry when possible.",
    ),
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        help="Local layer cache (default: $OCIFORGE_CACHE_DIR or ~/.cache/ociforge).",
    ),
    click.option(
        "--no-cache",
        is_flag=True,
        help="Do not use the local layer cache (the registry's manifests still count).",
    ),
    click.option(
        "--cache-from",
        multiple=True,
        metavar="REF",
        help="Reuse unchanged layers of this image (same registry). Repeatable.",
    ),
    click.option(
        "--dry-run",
        is_flag=True,
        help="Show per layer: reused / mounted / to upload, and upload nothing.",
    ),
]


@main.command("push")
@click.argument("args", nargs=-1, required=True, metavar="SOURCE DEST [DEST...]")
@_options(_IMAGE_OPTIONS)
@_options(_REGISTRY_OPTIONS)
@_options(_COMMON_OPTIONS)
def push_command(args: tuple[str, ...], **kw: Any) -> None:
    """Build SOURCE's image while pushing it to DEST (host/repo:tag), one or more tags.

    SOURCE is an installable (.#attr, a store path, a .drv) or oci:DIR[:TAG] (an image built
    before). With --closure-json, SOURCE may be left out. Prints DEST@sha256:<digest> per tag.
    In GitLab CI no credentials are needed: CI_REGISTRY_USER/CI_REGISTRY_PASSWORD are used.
    """

    def action() -> None:
        source, dests = _source_and_destinations(args, kw["closure_json"])
        options = options_from_cli(kw)
        registry = _registry_options(kw)
        if kw["dry_run"]:
            _report_preview(
                preview(
                    source,
                    dests,
                    options=options,
                    registry=registry,
                    devshell=kw["devshell"],
                    contents=kw["contents"],
                    closure_json=kw["closure_json"],
                    nix=kw["nix_bin"],
                    on_event=ProgressDisplay(enabled=False, quiet=kw["quiet"]).handle,
                ),
                kw["as_json"],
            )
            return
        with ProgressDisplay.for_cli(kw["progress"], kw["quiet"]) as display:
            result = push(
                source,
                dests,
                options=options,
                registry=registry,
                devshell=kw["devshell"],
                contents=kw["contents"],
                closure_json=kw["closure_json"],
                nix=kw["nix_bin"],
                on_event=display.handle,
            )
        _report_push(result, kw["as_json"])

    _run(kw["debug"], action)


def _source_and_destinations(
    args: tuple[str, ...], closure_json: str | None
) -> tuple[str | None, list[str]]:
    if closure_json and _is_reference(args[0]):
        return None, list(args)
    if len(args) < 2:
        raise UsageError("give SOURCE and at least one DEST (host/repo:tag)")
    return args[0], list(args[1:])


def _is_reference(text: str) -> bool:
    try:
        parse_reference(text)
    except UsageError:
        return False
    return True


def _report_preview(result: PushPreview, as_json: bool) -> None:
    if as_json:
        summary = {
            "references": list(result.references),
            "up_to_date": result.up_to_date,
            "layers": [asdict(row) for row in result.layers],
        }
        click.echo(json.dumps(summary, indent=2))
        return
    total = len(result.layers)
    for row in result.layers:
        size = f"{row.size} B" if row.size is not None else f"~{row.estimate} B uncompressed"
        click.echo(f"layer {row.index + 1}/{total}  {row.action:<7} {size:>24}  {row.comment}")
    state = "up to date" if result.up_to_date else "would push"
    click.echo(f"{', '.join(result.references)}: {state}")


def _report_push(result: PushResult, as_json: bool) -> None:
    if as_json:
        summary = {
            "references": list(result.references),
            "up_to_date": result.up_to_date,
            "manifest_digest": result.manifest_digest,
            "seconds": round(result.seconds, 3),
            "blobs": [
                {
                    "digest": str(b.descriptor.digest),
                    "size": b.descriptor.size,
                    "outcome": b.outcome,
                    "mediaType": b.descriptor.media_type,
                }
                for b in result.blobs
            ],
        }
        click.echo(json.dumps(summary, indent=2))
        return
    if result.up_to_date:
        click.echo("ociforge: up to date: every tag already holds this image", err=True)
    for ref in result.references:
        click.echo(f"{ref}@{result.manifest_digest}")
