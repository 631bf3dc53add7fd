"""The typed facade: what the CLI calls and what other tools import.

``build()`` reads a closure (or takes one), plans its layers and writes the image to a target.
Everything the image's bytes depend on is in :class:`ImageOptions`; everything else (where nix
lives, progress reporting) is a keyword argument.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence
from dataclasses import dataclass

from ociforge.assemble import BuiltImage, ImageOptions, ImagePlan, plan_image
from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.events import ProgressCallback, ignore_event
from ociforge.nix import Closure, closure_from_json_file, read_closure
from ociforge.outputs import (
    DockerArchiveTarget,
    OciTarget,
    Target,
    parse_target,
    write_docker_archive,
    write_oci,
)
from ociforge.push import (
    PushPreview,
    PushResult,
    RegistryOptions,
    preview_push,
    push_layout,
    push_plan,
)
from ociforge.reference import Reference, parse_reference

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
    machine = platform.machine().lower()
    return _HOST_SYSTEMS.get(machine, f"{machine}-linux")


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


def build(
    installable: str | Closure | None,
    target: str | Target,
    *,
    options: ImageOptions | None = None,
    closure_json: str | None = None,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
) -> BuildResult:
    """Build the image of ``installable`` into ``target`` (``oci:DIR[:TAG]``,
    ``docker-archive:FILE|-``).

    Example::

        import ociforge
        result = ociforge.build(".#devshell", "oci:./out:latest",
                                options=ociforge.ImageOptions(max_layers=60))
        print(result.manifest_digest)
    """
    parsed = parse_target(target) if isinstance(target, str) else target
    closure = load_closure(installable, closure_json=closure_json, nix=nix)
    opts = options or ImageOptions()
    if isinstance(parsed, DockerArchiveTarget):
        # docker load wants plain tar layers and Docker media types.
        opts = dataclasses.replace(
            opts, format="docker", compression=CompressionOptions(Compression.NONE)
        )
    plan: ImagePlan = plan_image(closure, opts, host_system=host_system())
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
    source: str | Closure | None,
    destinations: Sequence[str | Reference],
    *,
    options: ImageOptions | None = None,
    registry: RegistryOptions | None = None,
    closure_json: str | None = None,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
) -> PushResult:
    """Push the image of ``source`` to every destination (``host/repo:tag``) of one registry.

    ``source`` is an installable or closure (the image is built while it streams up) or
    ``oci:DIR[:TAG]`` (an image built before, pushed byte for byte). Layers go up first, in
    parallel, then the config, then the manifest under each tag: a failed push tags nothing.
    Layers the local cache or the tag's previous manifest already know are not rebuilt.

    Example::

        result = ociforge.push(".#devshell", ["registry.example.com/group/proj/builder:latest"])
        print(result.manifest_digest, result.up_to_date)
    """
    refs = [d if isinstance(d, Reference) else parse_reference(d) for d in destinations]
    reg = registry or RegistryOptions()
    layout = _layout_source(source)
    if layout is not None:
        return push_layout(layout.directory, layout.tag, refs, reg, on_event)
    plan = _plan(source, options, closure_json, nix)
    return push_plan(plan, refs, reg, on_event)


def preview(
    source: str | Closure | None,
    destinations: Sequence[str | Reference],
    *,
    options: ImageOptions | None = None,
    registry: RegistryOptions | None = None,
    closure_json: str | None = None,
    nix: str = "nix",
) -> PushPreview:
    """What :func:`push` would do with the same arguments, without uploading anything."""
    refs = [d if isinstance(d, Reference) else parse_reference(d) for d in destinations]
    if _layout_source(source) is not None:
        raise UsageError("--dry-run previews images built from an installable, not oci: sources")
    plan = _plan(source, options, closure_json, nix)
    return preview_push(plan, refs, registry or RegistryOptions())


def _layout_source(source: str | Closure | None) -> OciTarget | None:
    if isinstance(source, str) and source.startswith("docker-archive:"):
        raise UsageError("push reads oci:DIR[:TAG] or an installable, not a docker-archive")
    if not (isinstance(source, str) and source.startswith("oci:")):
        return None
    target = parse_target(source)
    if not isinstance(target, OciTarget):
        raise UsageError(f"cannot push from {source!r}: use oci:DIR[:TAG] or an installable")
    return target


def _plan(
    source: str | Closure | None, options: ImageOptions | None, closure_json: str | None, nix: str
) -> ImagePlan:
    closure = load_closure(source, closure_json=closure_json, nix=nix)
    return plan_image(closure, options or ImageOptions(), host_system=host_system())
