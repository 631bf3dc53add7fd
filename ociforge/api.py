"""The typed facade: what the CLI calls and what other tools import.

``build()`` reads a closure (or takes one), plans its layers and writes the image to a target.
Everything the image's bytes depend on is in :class:`ImageOptions`; everything else (where nix
lives, progress reporting) is a keyword argument.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ociforge.assemble import BuiltImage, ImageOptions, ImagePlan, plan_image
from ociforge.assemble.customise import ImageSource
from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.events import Message, ProgressCallback, ignore_event
from ociforge.nix import Closure, closure_from_json_file, read_closure
from ociforge.nix.closure import merge_closures
from ociforge.publish.session import (
    PushPreview,
    PushResult,
    RegistryOptions,
    preview_push,
    push_layout,
    push_plan,
)
from ociforge.reference import Reference, parse_reference
from ociforge.registry import check_ca_bundle
from ociforge.sinks import (
    DockerArchiveTarget,
    OciTarget,
    Target,
    parse_target,
    write_docker_archive,
    write_oci,
)

_HOST_SYSTEMS = {
    "x86_64": "x86_64-linux",
    "amd64": "x86_64-linux",
    "aarch64": "aarch64-linux",
    "arm64": "aarch64-linux",
}


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: where, and the digests that identify it."""

    target: str
    manifest_digest: str
    config_digest: str
    layers: int
    image: BuiltImage


def host_system() -> str:
    """The Nix system of this machine, the default platform when a closure does not say."""
    machine = os.uname().machine.lower()
    return _HOST_SYSTEMS.get(machine, f"{machine}-linux")


Source = str | Closure | ImageSource | None


def load_closure(
    installable: str | Closure | None = None,
    *,
    closure_json: str | None = None,
    nix: str = "nix",
) -> Closure:
    """A closure from an installable (built if needed), a saved path-info JSON, or as given."""
    if isinstance(installable, Closure):
        return installable
    if closure_json is not None:
        roots = [installable] if installable else None
        return closure_from_json_file(closure_json, roots=roots)
    if not installable:
        raise UsageError("nothing to build: give an installable or --closure-json FILE")
    return read_closure(installable, nix=nix)


def load_source(
    installable: Source,
    *,
    devshell: bool = False,
    contents: Sequence[str] = (),
    with_nix: bool = False,
    closure_json: str | None = None,
    nix: str = "nix",
) -> ImageSource:
    """Everything Nix gives for an image: the closure, and with ``devshell`` the environment.

    ``devshell``: ``installable`` is a dev shell (``.#devShells.<system>.default``); its
    environment comes from ``nix print-dev-env`` and the image holds the shell's closure.
    ``contents``: more installables whose closures join the image and whose roots are linked
    into ``/``. ``with_nix``: register the whole closure in a Nix database for the image.
    """
    if isinstance(installable, ImageSource):
        return installable
    if devshell:
        source = _devshell_source(installable, closure_json, nix)
    else:
        closure = load_closure(installable, closure_json=closure_json, nix=nix)
        source = ImageSource(closure)
    if contents:
        extra = [read_closure(c, nix=nix) for c in contents]
        closure = merge_closures([source.closure, *extra])
        linked = (*source.roots_to_link, *(r for c in extra for r in c.roots))
        source = dataclasses.replace(source, closure=closure, linked_roots=linked)
    if with_nix:
        from ociforge.nix.nixdb import make_nix_db  # noqa: PLC0415  (sqlite3: only if needed)

        db = make_nix_db(sorted(source.closure.paths), nix=nix)
        source = dataclasses.replace(source, nix_db=db)
    return source


def _devshell_source(installable: Source, closure_json: str | None, nix: str) -> ImageSource:
    if closure_json is not None:
        raise UsageError("--devshell reads the shell's environment with nix: drop --closure-json")
    if not isinstance(installable, str) or not installable:
        raise UsageError("--devshell needs the shell as an installable (.#devShells.<system>.X)")
    from ociforge.nix.devenv import read_devshell  # noqa: PLC0415  (dev shells only)

    shell = read_devshell(installable, nix=nix)
    return ImageSource(shell.closure, linked_roots=(), devenv=shell.env)


def build(
    installable: Source,
    target: str | Target,
    *,
    options: ImageOptions | None = None,
    devshell: bool = False,
    contents: Sequence[str] = (),
    closure_json: str | None = None,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
) -> BuildResult:
    """Build the image of ``installable`` into ``target`` (``oci:DIR[:TAG]``,
    ``docker-archive:FILE|-``). ``devshell`` and ``contents`` as in :func:`load_source`.

    Example::

        import ociforge
        result = ociforge.build(".#devshell", "oci:./out:latest",
                                options=ociforge.ImageOptions(max_layers=60))
        print(result.manifest_digest)
    """
    parsed = parse_target(target) if isinstance(target, str) else target
    opts = options or ImageOptions()
    if isinstance(parsed, DockerArchiveTarget):
        # docker load wants plain tar layers and Docker media types, and Docker manifests
        # carry no annotations (the ones GitLab CI adds by itself included).
        opts = dataclasses.replace(
            opts, format="docker", compression=CompressionOptions(Compression.NONE), annotations={}
        )
    plan = _plan(
        installable, opts, _Loading(devshell, tuple(contents), closure_json, nix), on_event
    )
    if isinstance(parsed, OciTarget):
        built = write_oci(plan, parsed, on_event)
    else:
        built = write_docker_archive(plan, parsed, on_event)
    return BuildResult(
        target=str(parsed),
        manifest_digest=built.manifest_digest,
        config_digest=str(Digest.of(built.config)),
        layers=len(built.layers),
        image=built,
    )


def push(
    source: Source,
    destinations: Sequence[str | Reference],
    *,
    options: ImageOptions | None = None,
    registry: RegistryOptions | None = None,
    devshell: bool = False,
    contents: Sequence[str] = (),
    closure_json: str | None = None,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """Push the image of ``source`` to every destination (``host/repo:tag``) of one registry.

    ``source`` is an installable or closure (the image is built while it streams up) or
    ``oci:DIR[:TAG]`` (an image built before, pushed byte for byte). Layers go up first, in
    parallel, then the config, then the manifest under each tag: a failed push tags nothing.
    Layers the local cache or the tag's previous manifest already know are not rebuilt.
    ``devshell`` and ``contents`` as in :func:`load_source`.

    Example::

        result = ociforge.push(".#devshell", ["registry.example.com/group/proj/builder:latest"],
                               devshell=True)
        print(result.manifest_digest, result.up_to_date)
    """
    refs = [d if isinstance(d, Reference) else parse_reference(d) for d in destinations]
    reg = _checked(registry)
    layout = _layout_source(source)
    if layout is not None:
        return push_layout(layout.directory, layout.tag, refs, reg, on_event)
    opts = options or ImageOptions()
    loading = _Loading(devshell, tuple(contents), closure_json, nix)
    # Made while the registry is asked what the tags hold: nix and the round trips overlap.
    return push_plan(lambda: _plan(source, opts, loading, on_event), refs, reg, on_event)


def preview(
    source: Source,
    destinations: Sequence[str | Reference],
    *,
    options: ImageOptions | None = None,
    registry: RegistryOptions | None = None,
    devshell: bool = False,
    contents: Sequence[str] = (),
    closure_json: str | None = None,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
) -> PushPreview:
    """What :func:`push` would do with the same arguments, without uploading anything."""
    refs = [d if isinstance(d, Reference) else parse_reference(d) for d in destinations]
    if _layout_source(source) is not None:
        raise UsageError("--dry-run previews images built from an installable, not oci: sources")
    reg = _checked(registry)
    opts = options or ImageOptions()
    loading = _Loading(devshell, tuple(contents), closure_json, nix)
    return preview_push(lambda: _plan(source, opts, loading, on_event), refs, reg, on_event)


def _checked(registry: RegistryOptions | None) -> RegistryOptions:
    """The options, with a bad --ca-file reported before nix evaluates anything."""
    registry = registry or RegistryOptions()
    if registry.ca_file is not None:
        check_ca_bundle(registry.ca_file)
    return registry


def _layout_source(source: Source) -> OciTarget | None:
    if isinstance(source, str) and source.startswith("docker-archive:"):
        raise UsageError("push reads oci:DIR[:TAG] or an installable, not a docker-archive")
    if not (isinstance(source, str) and source.startswith("oci:")):
        return None
    target = parse_target(source)
    if not isinstance(target, OciTarget):
        raise UsageError(f"cannot push from {source!r}: use oci:DIR[:TAG] or an installable")
    return target


@dataclass(frozen=True)
class _Loading:
    """How :func:`load_source` reads a source: the keyword arguments every entry point takes."""

    devshell: bool
    contents: tuple[str, ...]
    closure_json: str | None
    nix: str


def _plan(
    source: Source, options: ImageOptions, loading: _Loading, on_event: ProgressCallback
) -> ImagePlan:
    with_nix = options.essentials is not None and options.essentials.with_nix
    loaded = load_source(source, with_nix=with_nix, **dataclasses.asdict(loading))
    plan = plan_image(loaded, options, host_system=host_system())
    for warning in plan.warnings:
        on_event(Message(f"warning: {warning}"))
    return plan
