"""The ``ociforge`` command: a thin click layer over :mod:`ociforge.api`.

Known errors become one line on stderr and the error's exit code; ``--debug`` shows tracebacks
and debug logs (which never contain secrets: the library redacts before it logs).

Exit codes: 0 success, 1 unexpected error, 2 usage (bad option, input or reference), 3 nix
failed, 4 image could not be assembled or written, 5 registry error, 6 authentication error,
7 verify found a mismatch (signature, SBOM or layers), 130 interrupted (SIGINT, Ctrl-C),
143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from ociforge.api import (
    EPOCH_PLUS_ONE,
    STRATEGIES,
    BatchResult,
    BuildResult,
    Compression,
    CompressionOptions,
    CopyResult,
    Credentials,
    EssentialsOptions,
    GitlabOptions,
    ImageOptions,
    ImageResult,
    Inspection,
    Platform,
    PushPreview,
    PushResult,
    RegistryOptions,
    RuntimeConfig,
    SupplyOptions,
    TarOptions,
    VerifyReport,
    build,
    check_created,
    copy_image,
    generate_cosign_key,
    generate_key,
    gitlab_pipeline,
    gitlab_pipeline_for,
    inspect_image,
    load_cosign_key,
    load_trust,
    parse_annotation_items,
    parse_env_items,
    parse_reference,
    preview,
    push,
    push_index,
    push_many,
    read_jobs_file,
    sbom,
    tag_image,
    terminate_children,
    verify,
)
from ociforge.errors import Interrupted, OciforgeError, UsageError, VerificationError
from ociforge.progress import MODES, ProgressDisplay, human_size

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
    click.option(
        "--signing-key",
        type=click.Path(dir_okay=False),
        help=(
            "Sign the manifest's layer-key table (default: $OCIFORGE_SIGNING_KEY), so later "
            "pushes may reuse its layers without reading them. Make one: ociforge keygen."
        ),
    ),
    click.option(
        "--trusted-key",
        "trusted_keys",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="Also trust layer keys signed by this public key (--cache-from). Repeatable.",
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
    click.option(
        "--from",
        "base",
        metavar="REF",
        help=(
            "Put the layers of image REF (REGISTRY/REPO[:TAG|@DIGEST] or oci:DIR[:TAG]) below "
            "the Nix layers; its config is merged (see README, Base images)."
        ),
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


_SBOM_FORMAT = click.option(
    "--sbom-format",
    type=click.Choice(["cyclonedx", "spdx"]),
    default="cyclonedx",
    show_default=True,
    help="SBOM format: CycloneDX 1.6 JSON or SPDX 2.3 JSON.",
)
_SBOM_OPTIONS = [
    click.option(
        "--sbom",
        is_flag=True,
        help="Attach an SBOM of the closure to the image (an OCI artifact about it).",
    ),
    _SBOM_FORMAT,
]
_SIGN_OPTIONS = [
    click.option(
        "--sign-key",
        metavar="FILE",
        help=(
            "Sign the pushed manifest as cosign does with this P-256 PEM key (default: the key "
            "in OCIFORGE_COSIGN_KEY, if set)."
        ),
    ),
]


_COMMON_OPTIONS = [
    click.option(
        "--progress",
        type=click.Choice(MODES),
        default="auto",
        show_default=True,
        # A bare --progress keeps its old meaning (bars even off a terminal), when nothing
        # follows it or an option does.
        is_flag=False,
        flag_value="bar",
        help=(
            "Progress on stderr: bar (a terminal), plain (a line every 10 s and per large "
            "layer, for CI logs), none; auto: bar on a terminal, plain otherwise."
        ),
    ),
    click.option("--no-progress", is_flag=True, help="Same as --progress none."),
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
        trust=load_trust(kw["signing_key"], kw["trusted_keys"]),
        base=kw["base"],
    )


def _essentials(kw: dict[str, Any]) -> EssentialsOptions | None:
    """None (the source's default) unless essentials or one of their settings were asked for."""
    on = kw["essentials"] if kw["essentials"] is not None else kw["devshell"]
    chosen = {
        "user": kw["user"],
        "home": kw["home"],
        "ca_bundle": kw["ca_bundle"],
        "with_nix": kw["with_nix"],
        "adds": tuple(kw["adds"]),
    }
    if kw["essentials"] is None and not on and not any(chosen.values()):
        return None
    return EssentialsOptions(**chosen) if on else EssentialsOptions.only(**chosen)


def _run(debug: bool, action: Callable[[], None]) -> None:
    """Run a command: every way it can end is one line on stderr and an exit code (and,
    with ``--debug``, the traceback before that line; the exit code stays the same)."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="ociforge: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        with _stop_on_signals():
            action()
            sys.stdout.flush()  # a closed pipe shows here, not at exit as a Python warning
    except OciforgeError as exc:
        _fail(f"ociforge: error: {exc}", exc.exit_code, debug)
    except KeyboardInterrupt as exc:
        interrupted = exc if isinstance(exc, Interrupted) else Interrupted("SIGINT", signal.SIGINT)
        terminate_children()
        # os._exit: upload threads blocked in a request would be joined at exit until they
        # time out; everything that must happen (sessions deleted, nix stopped) has happened.
        _exit_now(f"ociforge: interrupted by {interrupted.signal_name}", interrupted.exit_code)
    except _NoStdout:
        _fail("ociforge: error: standard output is closed: nothing was done", 1, debug)
    except BrokenPipeError:
        _stdout_closed()
    except Exception as exc:  # a bug of ours: still one line, the traceback under --debug
        message = f"ociforge: internal error: {type(exc).__name__}: {exc}"
        _fail(message + ("" if debug else " (run with --debug for details)"), 1, debug)


class _NoStdout(Exception):
    """Standard output was closed before ociforge started (``>&-``): where the result (or
    the image, for ``docker-archive:-``) would go is missing, so nothing is started."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the command: the first one stops nix and raises
    :class:`Interrupted` where the main thread is (uploads delete their sessions on the way
    out, tags are never moved after it); a second one exits at once."""
    if sys.stdout is None:
        raise _NoStdout
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if received:  # the first one is still being handled: nix gets no grace now
            terminate_children(grace=0)
            _exit_now(f"ociforge: {name} again: stopped at once", 128 + received[0])
        received.append(signum)
        terminate_children()  # before anything waits for nix to end
        raise Interrupted(name, signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fail(line: str, code: int, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    click.echo(line, err=True)
    sys.exit(code)


def _stdout_closed() -> NoReturn:
    # Whoever reads our stdout has gone (`| head -0`) or it was never open: the work is done
    # but its result could not be printed. Later writes to it must not fail again at exit.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    _exit_now("ociforge: error: standard output is closed: the result could not be printed", 1)


def _exit_now(line: str, code: int) -> NoReturn:
    """One line on stderr, then exit without running atexit handlers or joining threads."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    os._exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ociforge")
def main() -> None:
    """Build and push OCI images of Nix closures in one streaming pass."""


@main.command("build")
@click.argument("args", nargs=-1, required=True, metavar="[INSTALLABLE] TARGET")
@_options(_IMAGE_OPTIONS)
@_options(_SBOM_OPTIONS)
@_options(_COMMON_OPTIONS)
def build_command(args: tuple[str, ...], **kw: Any) -> None:
    """Build INSTALLABLE's image into TARGET.

    INSTALLABLE is a flake reference (.#attr), a store path or a .drv; with --closure-json it is
    optional. TARGET is oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG] (FILE '-' = stdout).
    """

    def action() -> None:
        installable, target = _installable_and_target(args, kw["closure_json"])
        options = options_from_cli(kw)
        with _display(kw) as display:
            result = build(
                installable,
                target,
                options=options,
                devshell=kw["devshell"],
                contents=kw["contents"],
                closure_json=kw["closure_json"],
                nix=kw["nix_bin"],
                on_event=display.handle,
                sbom_format=kw["sbom_format"] if kw["sbom"] else None,
            )
        to_stdout = not target.startswith("docker-archive:-")
        _report_build(result, kw["as_json"], display, to_stdout=to_stdout)

    _run(kw["debug"], action)


def _image_flags_given() -> bool:
    ctx = click.get_current_context()
    image = {p.name for option in _IMAGE_OPTIONS for p in _params_of(option)}
    return any(
        ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)
        for name in image
        if name not in ("closure_json", "nix_bin", "devshell", "contents")  # source, not image
    )


def _params_of(option: Callable[[Any], Any]) -> list[click.Parameter]:
    """The click parameters an option decorator adds (applied to a scratch function)."""

    def scratch() -> None: ...

    option(scratch)
    return list(getattr(scratch, "__click_params__", []))


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


def _display(kw: dict[str, Any]) -> ProgressDisplay:
    progress = "none" if kw["no_progress"] else kw["progress"]
    return ProgressDisplay.for_cli(progress, kw["quiet"])


def _report_build(
    result: BuildResult, as_json: bool, display: ProgressDisplay, *, to_stdout: bool
) -> None:
    line = display.summary("wrote")
    if line is not None and not display.quiet:
        click.echo(f"ociforge: {line}", err=True)
    if as_json:
        summary = {
            "target": result.target,
            "manifest_digest": result.manifest_digest,
            "config_digest": result.config_digest,
            "layers": _layer_rows(result),
        }
        if result.base_digest is not None:
            summary["base_digest"] = result.base_digest
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
        timeout=kw["timeout"],
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
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="Give up on the registry after this long (default: in GitLab CI what is left of "
        "the job's timeout minus a margin, else 3600).",
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
@_options(_SBOM_OPTIONS)
@_options(_SIGN_OPTIONS)
@_options(_COMMON_OPTIONS)
def push_command(args: tuple[str, ...], **kw: Any) -> None:
    """Build SOURCE's image while pushing it to DEST (host/repo:tag), one or more tags.

    SOURCE is an installable (.#attr, a store path, a .drv) or oci:DIR[:TAG] (an image built
    before). With --closure-json, SOURCE may be left out. Prints DEST@sha256:<digest> per tag.
    In GitLab CI no credentials are needed: CI_REGISTRY_USER/CI_REGISTRY_PASSWORD are used.
    """

    def action() -> None:
        source, dests = _source_and_destinations(args, kw["closure_json"])
        # Only options the user gave: an oci: source refuses them (it is pushed as it is).
        options = options_from_cli(kw) if _image_flags_given() else None
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
                    on_event=ProgressDisplay("none", quiet=kw["quiet"]).handle,
                ),
                kw["as_json"],
            )
            return
        with _display(kw) as display:
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
                supply=SupplyOptions(
                    kw["sbom_format"] if kw["sbom"] else None, load_cosign_key(kw["sign_key"])
                ),
            )
        _report_push(result, kw["as_json"], display)

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


def _report_push(result: PushResult, as_json: bool, display: ProgressDisplay) -> None:
    # stderr: what happened, for people; stdout (REF@digest or JSON) is for scripts: unchanged.
    if result.up_to_date:
        if not display.quiet:
            click.echo("ociforge: up to date: every tag already holds this image", err=True)
    elif not display.quiet and (line := display.summary("pushed", result.seconds)):
        click.echo(f"ociforge: {line}", err=True)
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
        if result.base_digest is not None:
            summary["base_digest"] = result.base_digest
        click.echo(json.dumps(summary, indent=2))
        return
    for ref in result.references:
        click.echo(f"{ref}@{result.manifest_digest}")
    for done in result.attached:
        if not display.quiet and done.sbom_digest:
            click.echo(f"ociforge: SBOM {done.sbom_digest} attached in {done.repository}", err=True)
        if not display.quiet and done.signature_tag:
            click.echo(f"ociforge: signed: {done.repository}:{done.signature_tag}", err=True)


@main.command("keygen")
@click.argument("prefix", default=None, required=False, metavar="[PREFIX]")
@click.option("--cosign", is_flag=True, help="An ECDSA P-256 image-signing key pair instead.")
def keygen_command(prefix: str | None, cosign: bool) -> None:
    """Make a signing key pair: PREFIX (private, one line) and PREFIX.pub (public, PEM).

    Store the private key as a masked, protected CI/CD variable OCIFORGE_SIGNING_KEY; other
    projects trust your layers with --trusted-key PREFIX.pub (or OCIFORGE_TRUSTED_KEYS).
    With --cosign (default PREFIX cosign): a PEM key pair for image signatures that cosign
    reads; store the private key as the File variable OCIFORGE_COSIGN_KEY.
    """
    if cosign:
        _run(False, lambda: _cosign_keygen(prefix or "cosign"))
        return
    prefix = prefix or "ociforge-key"

    def action() -> None:
        private, public = generate_key()
        _write_new(prefix, private + "\n", 0o600)
        _write_new(prefix + ".pub", public, 0o644)
        click.echo(f"wrote {prefix} (private) and {prefix}.pub (public)", err=True)
        click.echo(
            "in GitLab: Settings > CI/CD > Variables: add OCIFORGE_SIGNING_KEY with the one line "
            f"of {prefix}, Masked and Protected; then delete {prefix}",
            err=True,
        )

    _run(False, action)


def _write_new(path: str, text: str, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(
            f"{path} exists: keys are never overwritten, pick another PREFIX"
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _cosign_keygen(prefix: str) -> None:
    private, public = generate_cosign_key()
    _write_new(prefix + ".key", private, 0o600)
    _write_new(prefix + ".pub", public, 0o644)
    click.echo(f"wrote {prefix}.key (private) and {prefix}.pub (public)", err=True)
    click.echo(
        "in GitLab: Settings > CI/CD > Variables: add OCIFORGE_COSIGN_KEY (type Variable) with "
        f"the contents of {prefix}.key, Protected; then delete {prefix}.key. Deployers check "
        f"images with `ociforge verify REF --key {prefix}.pub` or `cosign verify --key "
        f"{prefix}.pub REF`",
        err=True,
    )


@main.command("sbom")
@click.argument("source", required=False, metavar="[SOURCE]")
@click.option("-o", "--output", required=True, metavar="FILE", help="Where to write ('-': stdout).")
@_SBOM_FORMAT
@click.option("--name", help="What the SBOM describes (default: the first root's name).")
@click.option("--closure-json", metavar="FILE", help="Read the closure from this path-info JSON.")
@click.option("--nix", "nix_bin", default="nix", show_default=True, help="nix executable.")
def sbom_command(source: str | None, output: str, **kw: Any) -> None:
    """Write the SBOM of SOURCE's closure (an installable or store path) to FILE."""

    def action() -> None:
        document = sbom(
            source,
            sbom_format=kw["sbom_format"],
            name=kw["name"],
            closure_json=kw["closure_json"],
            nix=kw["nix_bin"],
        )
        if output == "-":
            click.echo(document.decode(), nl=False)
            return
        try:
            with open(output, "wb") as out:
                out.write(document)
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror}") from None

    _run(False, action)


@main.command("verify")
@click.argument("reference", metavar="REF")
@click.option("--key", "key_file", metavar="PUB.PEM", help="Check the cosign signature by it.")
@click.option("--source", metavar="SOURCE", help="Check the layers are what SOURCE builds to.")
@_options(_IMAGE_OPTIONS)
@_options(_REGISTRY_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on stderr.")
def verify_command(reference: str, key_file: str | None, source: str | None, **kw: Any) -> None:
    """Check REF: its signature (--key), its SBOM, and with --source (and the image options
    it was built with) that it is exactly that closure's image. Exit 7 on a mismatch."""

    def action() -> None:
        report = verify(
            reference,
            public_key_file=key_file,
            source=source,
            options=options_from_cli(kw),
            registry=_registry_options(kw),
            closure_json=kw["closure_json"],
            devshell=kw["devshell"],
            contents=kw["contents"],
            nix=kw["nix_bin"],
        )
        _report_verify(report, kw["as_json"])
        if not report.ok:
            raise VerificationError("; ".join(c.detail for c in report.failures))

    _run(kw["debug"], action)


@main.command("push-all")
@click.argument("file", metavar="IMAGES.TOML", type=click.Path(dir_okay=False))
@click.option("--only", multiple=True, metavar="NAME", help="Only this image. Repeatable.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first image that fails.")
@click.option(
    "--platform",
    metavar="SYSTEM",
    help="Only this platform's child of multi-platform images (TAG-ARCH, no index): one job "
    "of a scaled-out pipeline (ociforge ci gitlab).",
)
@click.option(
    "--index-only",
    is_flag=True,
    help="Only the indexes of multi-platform images, over the TAG-ARCH images already pushed.",
)
@click.option("--nix", "nix_bin", default="nix", show_default=True, help="nix executable.")
@_options(_REGISTRY_OPTIONS)
@_options(_COMMON_OPTIONS)
def push_all_command(file: str, **kw: Any) -> None:
    """Push every image IMAGES.TOML describes: one login and one connection pool per
    registry, shared layers uploaded once. A line per image on stderr; REF@sha256:<digest>
    per tag on stdout (--json: one result per image). Exit 1 if any image failed."""

    def action() -> None:
        if kw["dry_run"]:
            raise UsageError("push-all has no --dry-run: use push --dry-run for one image")
        quiet = kw["quiet"]
        result = push_many(
            file,
            registry=_registry_options(kw),
            only=kw["only"],
            fail_fast=kw["fail_fast"],
            platform=kw["platform"],
            index_only=kw["index_only"],
            nix=kw["nix_bin"],
            on_image=lambda r: None if quiet else click.echo(_image_line(r), err=True),
        )
        _report_push_all(result, kw["as_json"], quiet)

    _run(kw["debug"], action)


def _report_verify(report: VerifyReport, as_json: bool) -> None:
    if as_json:
        checks = [asdict(c) for c in report.checks]
        summary = {"reference": report.reference, "manifest_digest": report.manifest_digest}
        click.echo(json.dumps({**summary, "ok": report.ok, "checks": checks}, indent=2))
        return
    click.echo(f"{report.reference}@{report.manifest_digest}")
    for check in report.checks:
        click.echo(f"  {'ok  ' if check.ok else 'FAIL'} {check.name:<9} {check.detail}")


def _image_line(result: ImageResult) -> str:
    if result.status in ("failed", "not run"):
        return f"ociforge: {result.name}: {result.status}" + (
            f": {result.error}" if result.error else ""
        )
    sent = human_size(result.uploaded_bytes)
    return f"ociforge: {result.name}: {result.status} ({sent} uploaded, {result.seconds:.1f} s)"


def _report_push_all(result: BatchResult, as_json: bool, quiet: bool) -> None:
    if as_json:
        summary = {
            "images": [r.to_json() for r in result.images],
            "uploaded_bytes": result.uploaded_bytes,
            "layer_bytes": result.layer_bytes,
            "store_bytes": result.store_bytes,
            "seconds": round(result.seconds, 3),
        }
        click.echo(json.dumps(summary, indent=2))
    else:
        for image in result.images:
            for ref in image.references if image.digest else ():
                click.echo(f"{ref}@{image.digest}")
    if not quiet:
        click.echo(
            f"ociforge: {len(result.images) - len(result.failed)} of {len(result.images)} "
            f"images done: {human_size(result.uploaded_bytes)} uploaded for "
            f"{human_size(result.layer_bytes)} of distinct layers in {result.seconds:.1f} s",
            err=True,
        )
    if result.failed:
        names = ", ".join(r.name for r in result.failed)
        raise OciforgeError(f"{len(result.failed)} of {len(result.images)} images failed: {names}")


@main.command("index")
@click.argument("dest", metavar="DEST")
@click.argument("sources", nargs=-1, required=True, metavar="SRC...")
@click.option("--tag", "more_tags", multiple=True, metavar="TAG", help="Also under this tag.")
@_options(_REGISTRY_OPTIONS)
@_options(_COMMON_OPTIONS)
def index_command(dest: str, sources: tuple[str, ...], **kw: Any) -> None:
    """Join images pushed by separate jobs (REPO:TAG-amd64, REPO:TAG-arm64, same registry)
    into one multi-platform index at DEST (REPO:TAG); each child's platform comes from its
    config. Prints DEST@sha256:<digest>."""

    def action() -> None:
        if kw["dry_run"]:
            raise UsageError("index has no --dry-run")
        name = dest.rsplit(":", 1)[0] if ":" in dest.rsplit("/", 1)[-1] else dest
        dests = [dest, *(f"{name}:{t}" for t in kw["more_tags"])]
        result = push_index(dests, list(sources), registry=_registry_options(kw))
        if kw["as_json"]:
            doc = {"references": list(result.references), "digest": result.digest}
            click.echo(json.dumps({**doc, "up_to_date": result.up_to_date}, indent=2))
            return
        for ref in result.references:
            click.echo(f"{ref}@{result.digest}")

    _run(kw["debug"], action)


# --- promotion and inspection: copy, tag, inspect -------------------------------------------

_PROMOTE_REGISTRY = {"username", "password_stdin", "insecure", "ca_file", "timeout"}
_PROMOTE_OPTIONS = [
    o for o in _REGISTRY_OPTIONS if {p.name for p in _params_of(o)} <= _PROMOTE_REGISTRY
]
_COPY_OPTIONS = [
    o for o in _REGISTRY_OPTIONS if {p.name for p in _params_of(o)} <= {"jobs", "chunk_size"}
]


def _promote_registry(kw: dict[str, Any]) -> RegistryOptions:
    """The registry options of copy, tag and inspect: no layer cache, no mounts to name."""
    defaults = {"jobs": 4, "chunk_size": None, "mount_from": None, "cache_from": ()}
    return _registry_options({**defaults, **kw, "no_cache": True, "cache_dir": None})


@main.command("copy")
@click.argument("source", metavar="SRC")
@click.argument("destinations", nargs=-1, required=True, metavar="DEST [DEST...]")
@_options(_PROMOTE_OPTIONS + _COPY_OPTIONS)
@_options(_COMMON_OPTIONS)
def copy_command(source: str, destinations: tuple[str, ...], **kw: Any) -> None:
    """Copy the image or index SRC (host/repo:tag or @digest) to DEST (host/repo:tag).

    Same registry: blobs are mounted from SRC's repository. Another registry: each blob is
    streamed from SRC to DEST and checked against its digest; a mismatch fails the copy and
    tags nothing. Credentials (--username/--password-stdin) are DEST's; SRC's come from the
    credential chain. Prints DEST@sha256:<digest> per tag.
    """

    def action() -> None:
        with _display(kw) as display:
            result = copy_image(
                source, destinations, registry=_promote_registry(kw), on_event=display.handle
            )
        if not display.quiet:
            outcomes = [b.outcome for b in result.blobs]
            counts = ", ".join(f"{outcomes.count(o)} {o}" for o in sorted(set(outcomes)))
            state = "up to date" if result.up_to_date else f"copied {len(outcomes)} blobs"
            click.echo(f"ociforge: {state}{f' ({counts})' if counts else ''}", err=True)
        if kw["as_json"]:
            click.echo(json.dumps(_copy_summary(result), indent=2))
            return
        for ref in result.references:
            click.echo(f"{ref}@{result.manifest_digest}")

    _run(kw["debug"], action)


def _copy_summary(result: CopyResult) -> dict[str, Any]:
    return {
        "source": result.source,
        "references": list(result.references),
        "manifest_digest": result.manifest_digest,
        "up_to_date": result.up_to_date,
        "manifests": result.manifests,
        "blobs": [
            {"digest": str(b.descriptor.digest), "size": b.descriptor.size, "outcome": b.outcome}
            for b in result.blobs
        ],
    }


@main.command("tag")
@click.argument("reference", metavar="REF")
@click.argument("tags", nargs=-1, required=True, metavar="NEWTAG...")
@_options(_PROMOTE_OPTIONS)
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on stderr.")
def tag_command(reference: str, tags: tuple[str, ...], **kw: Any) -> None:
    """Put the manifest REF holds under NEWTAG... in the same repository (no blob traffic).

    Prints host/repo:NEWTAG@sha256:<digest> per tag.
    """

    def action() -> None:
        result = tag_image(reference, tags, registry=_promote_registry(kw))
        for ref in result.references:
            click.echo(f"{ref}@{result.manifest_digest}")

    _run(kw["debug"], action)


@main.command("inspect")
@click.argument("reference", metavar="REF")
@_options(_PROMOTE_OPTIONS)
@click.option("--json", "as_json", is_flag=True, help="Print the whole description as JSON.")
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on stderr.")
def inspect_command(reference: str, **kw: Any) -> None:
    """Describe REF: platforms of an index, each image's layers with their store paths (from
    the config's history), sizes and annotations."""

    def action() -> None:
        result = inspect_image(reference, registry=_promote_registry(kw))
        if kw["as_json"]:
            click.echo(json.dumps(_inspection_document(result), indent=2))
        else:
            click.echo("\n".join(_inspection_lines(result)))

    _run(kw["debug"], action)


def _platform_text(platform: Platform | None) -> str:
    if platform is None:
        return "unknown platform"
    return "/".join(p for p in (platform.os, platform.architecture, platform.variant) if p)


def _inspection_document(result: Inspection) -> dict[str, Any]:
    images = [
        {
            "digest": image.digest,
            "mediaType": image.media_type,
            "platform": _platform_text(image.platform) if image.platform else None,
            "created": image.created,
            "size": image.size,
            "config": image.config.document(),
            "annotations": image.annotations,
            "layers": [
                {**layer.descriptor.document(), "comment": layer.comment} for layer in image.layers
            ],
        }
        for image in result.images
    ]
    return {
        "reference": result.reference,
        "digest": result.digest,
        "mediaType": result.media_type,
        "annotations": result.annotations,
        "images": images,
    }


def _inspection_lines(result: Inspection) -> list[str]:
    kind = f"index of {len(result.images)} images" if result.is_index else "image"
    lines = [f"{result.reference}@{result.digest}  {kind}  {result.media_type}"]
    lines += [f"  annotation {k}={v}" for k, v in sorted(result.annotations.items())]
    for image in result.images:
        lines.append(
            f"{_platform_text(image.platform)}  {image.digest}  {human_size(image.size)} in "
            f"{len(image.layers)} layers  created {image.created or 'unknown'}"
        )
        lines += [f"  annotation {k}={v}" for k, v in sorted(image.annotations.items())]
        for n, layer in enumerate(image.layers, 1):
            size = human_size(layer.descriptor.size)
            lines.append(f"  layer {n:>3}  {size:>9}  {layer.descriptor.digest}  {layer.comment}")
    return lines


# --- GitLab CI scale-out --------------------------------------------------------------------


@main.group("ci")
def ci_group() -> None:
    """Pipelines for CI systems that spread the images over their runners."""


@ci_group.command("gitlab")
@click.argument("jobs_file", metavar="IMAGES.toml|JOBS.json")
@click.option(
    "--image",
    "job_image",
    default="$OCIFORGE_IMAGE",
    show_default=True,
    help="The jobs' image: one with ociforge and Nix (the project's own ociforge image).",
)
@click.option(
    "--no-image", is_flag=True, help="Leave image: out (shell executors, gitlab-ci-local)."
)
@click.option(
    "--runner-tags",
    multiple=True,
    metavar="SYSTEM=TAG[,TAG]",
    help="Runner tags of a platform's jobs (default: GitLab.com's saas-linux-small-amd64 and "
    "-arm64); SYSTEM= gives none. Repeatable.",
)
@click.option("--retries", type=click.IntRange(0, 2), default=2, show_default=True)
@click.option("--debug", is_flag=True, help="Debug logs and tracebacks on stderr.")
def ci_gitlab_command(jobs_file: str, **kw: Any) -> None:
    """Print a child pipeline: a job per image and platform, index jobs after their children.

    IMAGES.toml: the file push-all reads; each job runs `ociforge push-all IMAGES.toml --only
    NAME --platform SYSTEM` (or `--index-only`). JOBS.json: your own jobs, {"images":
    [{"image", "platform", "script"}], "indexes": [{"image", "platforms", "script"}]}. Write
    it to a file and trigger it from the parent pipeline (see examples/image-repo/scale-out).
    """

    def action() -> None:
        options = GitlabOptions(
            job_image=None if kw["no_image"] else kw["job_image"],
            runner_tags=_runner_tags(kw["runner_tags"]),
            retries=kw["retries"],
        )
        if jobs_file.endswith(".toml"):
            click.echo(gitlab_pipeline_for(jobs_file, options), nl=False)
            return
        images, indexes = read_jobs_file(jobs_file)
        click.echo(gitlab_pipeline(images, indexes, options), nl=False)

    _run(kw["debug"], action)


def _runner_tags(items: Sequence[str]) -> dict[str, tuple[str, ...]]:
    tags = dict(GitlabOptions().runner_tags)
    for item in items:
        system, sep, value = item.partition("=")
        if not sep or not system:
            raise UsageError(f"--runner-tags: {item!r} is not SYSTEM=TAG[,TAG]")
        tags[system] = tuple(t for t in value.split(",") if t)
    return tags
