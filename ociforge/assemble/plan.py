"""From a closure and options to an image: layer recipes first, config and manifest last.

The order is forced by the digests: the config lists every layer's diff_id and the manifest
lists every blob's digest, so both are serialised once, after the layers streamed, and those exact
bytes are what gets hashed, written and pushed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ociforge.assemble.annotations import check_annotations, ci_annotations, merge_annotations
from ociforge.assemble.base import BaseImage, config_on_base, merged_runtime
from ociforge.assemble.customise import customise
from ociforge.assemble.essentials import EssentialsOptions
from ociforge.assemble.layer import (
    KEY_ANNOTATION,
    EntriesLayer,
    LayerDigests,
    LayerRecipe,
    StoreLayer,
    layer_key,
)
from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.events import Message, ProgressCallback, ignore_event
from ociforge.image.config import (
    EPOCH_PLUS_ONE,
    RuntimeConfig,
    check_runtime,
    config_document,
    platform_for_system,
)
from ociforge.image.documents import Descriptor, Manifest, canonical_bytes
from ociforge.layering import plan_layers
from ociforge.nix.closure import Closure
from ociforge.reference import parse_reference
from ociforge.source import ImageSource, SourceSpec, load_source, parse_layout_ref
from ociforge.spec import (
    ImageFormat,
    config_media_type,
    layer_media_type,
    layer_media_type_in,
    manifest_media_type,
)
from ociforge.tarstream import TarEntry, TarOptions
from ociforge.trust import TrustKeys, trust_from_environment


@dataclass(frozen=True)
class ImageOptions:
    """Everything that decides the bytes of an image, besides the closure itself."""

    format: ImageFormat = "oci"
    strategy: str = "auto"  # churn-aware: a leaf bump re-ships about the leaf, not the image
    max_layers: int = 100
    compression: CompressionOptions = field(default_factory=CompressionOptions)
    tar: TarOptions = field(default_factory=TarOptions)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    created: str = EPOCH_PLUS_ONE
    architecture: str | None = None
    os: str | None = None
    variant: str | None = None
    link_roots: bool = True
    # None: the source's default (every essential for a dev shell, none otherwise).
    essentials: EssentialsOptions | None = None
    entrypoint_hook: bool = False  # a dev shell's shellHook run by the image's entrypoint
    # Manifest annotations (OCI only); an empty value drops an automatic one.
    annotations: Mapping[str, str] = field(default_factory=dict)
    # OCI manifests also get source, revision and created from GitLab CI's variables, when the
    # environment given to plan_image (the process's, for build() and push()) has them.
    ci_annotations: bool = True
    # Who signs the manifest's layer-key table and whose tables are trusted (ociforge.trust);
    # None: as OCIFORGE_SIGNING_KEY / OCIFORGE_TRUSTED_KEYS say in plan_source's environment.
    trust: TrustKeys | None = field(default=None, repr=False, compare=False)
    # --from: the image whose layers go below ours (REGISTRY/REPO[:TAG|@DIGEST], or
    # oci:DIR[:TAG]); resolved and pinned by digest when the image is made (publish.base).
    base: str | None = None

    def __post_init__(self) -> None:
        # Checked here, for API callers too, before nix builds anything.
        _check_format(self)
        check_base_name(self.base)
        check_runtime(self.runtime, self.created)
        if self.entrypoint_hook and self.runtime.entrypoint is not None:
            raise UsageError(
                "--entrypoint-hook sets the entrypoint: drop --entrypoint (use --cmd for it)"
            )


@dataclass(frozen=True)
class PlannedLayer:
    """One layer of a plan: how to make its bytes, and what identifies them."""

    recipe: LayerRecipe
    comment: str
    media_type: str
    key: str  # layer_key: identity of the blob's bytes, known before reading any


@dataclass(frozen=True)
class ImagePlan:
    """The recipes of every layer and what the config needs; no byte has been read yet."""

    closure: Closure
    layers: tuple[PlannedLayer, ...]
    options: ImageOptions
    host_system: str
    runtime: RuntimeConfig  # the user's, with the source's variables, user and entrypoint
    default_path: str | None = None
    warnings: tuple[str, ...] = ()  # what the image will lack (no /bin/sh, no CA bundle...)
    annotations: Mapping[str, str] = field(default_factory=dict)  # the manifest's, merged
    base: BaseImage | None = None  # its layers go below ours (ImageOptions.base, resolved)

    def finish(self, results: Sequence[LayerDigests]) -> BuiltImage:
        """Serialise config and manifest once the layers' digests are known."""
        if len(results) != len(self.layers):
            raise UsageError("internal: one result per planned layer is required")
        return _finish(self, results)


@dataclass(frozen=True)
class BuiltImage:
    """A finished image's config and manifest bytes, and its layers' descriptors."""

    config: bytes
    config_media_type: str
    manifest: bytes
    manifest_media_type: str
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]

    @property
    def manifest_digest(self) -> str:
        return str(Digest.of(self.manifest))


def host_system() -> str:
    """The Nix system of this machine, the default platform when a closure does not say."""
    machine = os.uname().machine.lower()
    return _HOST_SYSTEMS.get(machine, f"{machine}-linux")


_HOST_SYSTEMS = {
    "x86_64": "x86_64-linux",
    "amd64": "x86_64-linux",
    "aarch64": "aarch64-linux",
    "arm64": "aarch64-linux",
}


def plan_source(
    spec: SourceSpec,
    options: ImageOptions,
    *,
    environ: Mapping[str, str] | None = None,
    on_event: ProgressCallback = ignore_event,
) -> ImagePlan:
    """Read ``spec`` (nix builds what it must) and plan its image; what the image will lack
    is reported as warning messages. ``environ``: for the CI annotations (default: this
    process's)."""
    with_nix = options.essentials is not None and options.essentials.with_nix
    env = os.environ if environ is None else environ
    if options.trust is None:  # a bad key fails here, before nix builds anything
        options = dataclasses.replace(options, trust=trust_from_environment(env))
    loaded = load_source(spec, with_nix=with_nix)
    plan = plan_image(loaded, options, host_system=host_system(), environ=env)
    for warning in plan.warnings:
        on_event(Message(f"warning: {warning}"))
    return plan


def plan_image(
    source: Closure | ImageSource,
    options: ImageOptions,
    *,
    host_system: str,
    environ: Mapping[str, str] | None = None,
) -> ImagePlan:
    """Group the closure into layers; the last one links the roots into ``/`` and holds the
    essentials, added files and the dev shell's entrypoint. ``environ`` gives the GitLab CI
    annotations (none when None)."""
    if isinstance(source, Closure):
        source = ImageSource(source)
    closure = source.closure
    custom = customise(
        source,
        essentials_options=options.essentials,
        entrypoint_hook=options.entrypoint_hook,
        link_roots=options.link_roots,
    )
    runtime = _runtime(options.runtime, custom.env, custom.user, custom.entrypoint)
    return ImagePlan(
        closure,
        _planned_layers(closure, custom.entries, options),
        options,
        host_system,
        runtime,
        custom.default_path,
        custom.warnings,
        _annotations(options, environ or {}),
    )


def _planned_layers(
    closure: Closure, custom: Sequence[TarEntry], options: ImageOptions
) -> tuple[PlannedLayer, ...]:
    """The store layers as the strategy groups them, then the customisation layer."""
    plans = plan_layers(
        closure.graph,
        strategy=options.strategy,
        max_layers=options.max_layers,
        sizes={p: i.nar_size for p, i in closure.paths.items()},
    )
    tar, compression = options.tar, options.compression
    recipes: list[tuple[LayerRecipe, str]] = [
        (StoreLayer(plan.paths, closure.store_dir, tar, compression), _comment(plan.paths))
        for plan in plans
    ]
    if custom:
        recipe = EntriesLayer(entries=custom, tar_options=tar, compression=compression)
        recipes.append((recipe, "customisation: " + _describe(custom)))
    media = layer_media_type(options.format, compression.algorithm.value)
    nar_hashes = {p: info.nar_hash for p, info in closure.paths.items()}
    return tuple(
        PlannedLayer(recipe, comment, media, layer_key(recipe, nar_hashes, media))
        for recipe, comment in recipes
    )


def _annotations(options: ImageOptions, environ: Mapping[str, str]) -> dict[str, str]:
    """The user's over GitLab CI's; none for Docker (ImageOptions refuses explicit ones)."""
    if options.format != "oci":
        return {}
    automatic = ci_annotations(environ) if options.ci_annotations else {}
    return merge_annotations(automatic, options.annotations)


def _runtime(
    user_runtime: RuntimeConfig,
    env: Mapping[str, str],
    user: str | None,
    entrypoint: tuple[str, ...] | None,
) -> RuntimeConfig:
    """The user's settings win over what the source brings (ImageOptions refuses both
    --entrypoint and --entrypoint-hook)."""
    return dataclasses.replace(
        user_runtime,
        env={**env, **user_runtime.env},
        user=user_runtime.user or user,
        entrypoint=user_runtime.entrypoint or entrypoint,
    )


def _describe(entries: Sequence[TarEntry]) -> str:
    """What the customisation layer holds, for its history entry: its top-level names."""
    return ", ".join(sorted({"/" + e.name.split("/")[1] for e in entries}))


def check_base_name(base: str | None) -> None:
    """UsageError unless ``base`` is a registry reference or ``oci:DIR[:TAG]``."""
    if base is None:
        return
    if not isinstance(base, str) or not base:
        raise UsageError(f"--from needs an image reference, got {base!r}")
    if base.startswith("oci:"):
        parse_layout_ref(base)
    else:
        parse_reference(base)


def image_platform(plan: ImagePlan) -> tuple[str, str, str | None]:
    """The image's (architecture, os, variant): what a base image's index is searched for."""
    return _platform(plan)


def _check_format(options: ImageOptions) -> None:
    if options.format == "docker" and options.compression.algorithm is Compression.ZSTD:
        raise UsageError("--format docker cannot carry zstd layers: use --compression gzip")
    if options.format == "docker" and any(options.annotations.values()):
        raise UsageError("--format docker manifests have no annotations: use --format oci")
    check_annotations(options.annotations)


def _comment(paths: Sequence[str]) -> str:
    names = [p.rsplit("/", 1)[-1] for p in paths]
    shown = ", ".join(names[:5])
    return f"store paths: {shown}" + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _platform(plan: ImagePlan) -> tuple[str, str, str | None]:
    """The closure's platform, with the user's --arch/--os/--variant taking precedence."""
    opts = plan.options
    if opts.architecture and opts.os:
        return opts.architecture, opts.os, opts.variant
    arch, os_name, variant = platform_for_system(plan.closure.system or plan.host_system)
    if opts.architecture:  # another architecture: the closure's variant does not apply
        return opts.architecture, opts.os or os_name, opts.variant
    return arch, opts.os or os_name, opts.variant or variant


def _layer_annotations(plan: ImagePlan, layer: PlannedLayer) -> dict[str, str]:
    return {KEY_ANNOTATION: layer.key} if plan.options.format == "oci" else {}


def _signature(plan: ImagePlan, results: Sequence[LayerDigests]) -> dict[str, str]:
    """The signed layer-key table, when the user has a signing key (OCI only)."""
    trust = plan.options.trust
    if trust is None or plan.options.format != "oci":
        return {}
    return trust.sign(
        [
            (layer.key, r.digest, r.diff_id, r.size)
            for layer, r in zip(plan.layers, results, strict=True)
        ]
    )


def _finish(plan: ImagePlan, results: Sequence[LayerDigests]) -> BuiltImage:
    # Plain JSON documents (image/documents.py): cheap enough that a warm push serialises the
    # manifest it would push to compare it with the tag's (the bytes are pinned by a test).
    opts, base = plan.options, plan.base
    arch, os_name, variant = _platform(plan)
    runtime = plan.runtime
    if base is not None:
        runtime = merged_runtime(base.config, runtime, plan.default_path)
    config = config_document(
        runtime=runtime,
        architecture=arch,
        os=os_name,
        variant=variant,
        diff_ids=[r.diff_id for r in results],
        history_comments=[layer.comment for layer in plan.layers],
        created=opts.created,
        default_path=plan.default_path,
    )
    if base is not None:
        config = config_on_base(config, base.config)
    config_bytes = canonical_bytes(config)
    cfg_type = config_media_type(opts.format)
    # Docker schema2 has no annotations; OCI descriptors carry the layer key so the next push,
    # even on a fresh runner, recognises unchanged layers from the manifest alone.
    layers = _base_layers(plan) + tuple(
        Descriptor(layer.media_type, r.digest, r.size, _layer_annotations(plan, layer))
        for layer, r in zip(plan.layers, results, strict=True)
    )
    manifest = Manifest(
        manifest_media_type(opts.format),
        Descriptor.of(config_bytes, cfg_type),
        layers,
        {**_base_annotations(plan), **plan.annotations, **_signature(plan, results)},
    )
    base_ids = tuple(str(d) for d in base.config.diff_ids) if base is not None else ()
    return BuiltImage(
        config=config_bytes,
        config_media_type=cfg_type,
        manifest=manifest.to_bytes(),
        manifest_media_type=manifest_media_type(opts.format),
        layers=layers,
        diff_ids=base_ids + tuple(str(r.diff_id) for r in results),
    )


def _base_layers(plan: ImagePlan) -> tuple[Descriptor, ...]:
    """The base's layers as our manifest lists them: same bytes, our format's media type, no
    annotations (the base's may name layer keys that are not ours to claim)."""
    if plan.base is None:
        return ()
    fmt = plan.options.format
    return tuple(
        Descriptor(layer_media_type_in(fmt, d.media_type), d.digest, d.size)
        for d in plan.base.layers
    )


def _base_annotations(plan: ImagePlan) -> dict[str, str]:
    """The OCI base-image annotations (Docker manifests have none); the user's win."""
    if plan.base is None or plan.options.format != "oci":
        return {}
    return plan.base.annotations
