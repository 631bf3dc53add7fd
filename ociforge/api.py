"""The typed facade: what the CLI calls and what other tools import.

Every behaviour of the ``ociforge`` command is here with the same result: the CLI only parses
its flags into these arguments, prints and maps errors to exit codes. Everything an image's bytes
depend on is in :class:`ImageOptions` (GitLab CI's annotations included: they are read from this
process's environment, as the CLI does); how to talk to a registry is in
:class:`RegistryOptions`; what the image is made of is a source (see ``parse_source``). The
option types and parsers a front end needs are re-exported here, so the CLI imports nothing
else of ociforge but its errors and its progress display.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ociforge.assemble import BuiltImage, ImageOptions, ImagePlan, plan_source
from ociforge.assemble.annotations import parse_annotation_items
from ociforge.assemble.essentials import EssentialsOptions
from ociforge.assemble.plan import host_system
from ociforge.batch.plan import ResolvedImage
from ociforge.batch.run import BatchResult, ImageResult
from ociforge.batch.run import push_many as _push_many
from ociforge.ci_gitlab import GitlabOptions, ImageJob, IndexJob, gitlab_pipeline, read_jobs_file
from ociforge.compress import Compression, CompressionOptions
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.events import ProgressCallback, ignore_event
from ociforge.image.config import EPOCH_PLUS_ONE, RuntimeConfig, check_created, parse_env_items
from ociforge.image.documents import Platform
from ociforge.layering import STRATEGIES
from ociforge.nix import Closure
from ociforge.nix.runner import terminate_children
from ociforge.publish import PushPreview, PushResult, PushSession, RegistryOptions
from ociforge.publish.base import BaseResolver
from ociforge.publish.index import IndexResult, join_images
from ociforge.publish.options import check_destinations
from ociforge.publish.promote import CopyResult, Inspection, TagResult, add_tags, copy_to, describe
from ociforge.reference import Reference, parse_reference
from ociforge.registry import Credentials, check_ca_bundle
from ociforge.sinks import (
    BASE_IN_ARCHIVE,
    DockerArchiveTarget,
    Target,
    check_target,
    parse_target,
    write_docker_archive,
    write_oci,
)
from ociforge.source import ImageSource, LayoutRef, SourceSpec, parse_source
from ociforge.source import load_source as _load_spec
from ociforge.spec import sbom_media_type
from ociforge.supplyapi import (
    SupplyOptions,
    VerifyReport,
    generate_cosign_key,
    layout_sbom,
    load_cosign_key,
    sbom,
    verify,
)
from ociforge.tarstream import TarOptions
from ociforge.trust import TrustKeys, generate_key, trust_from_environment

__all__ = [
    "EPOCH_PLUS_ONE",
    "STRATEGIES",
    "BatchResult",
    "BuildResult",
    "Compression",
    "CompressionOptions",
    "CopyResult",
    "Credentials",
    "EssentialsOptions",
    "GitlabOptions",
    "ImageJob",
    "ImageOptions",
    "ImageResult",
    "IndexJob",
    "IndexResult",
    "Inspection",
    "Platform",
    "PushPreview",
    "PushResult",
    "RegistryOptions",
    "ResolvedImage",
    "RuntimeConfig",
    "SupplyOptions",
    "TagResult",
    "TarOptions",
    "VerifyReport",
    "build",
    "check_created",
    "copy_image",
    "generate_cosign_key",
    "generate_key",
    "gitlab_pipeline",
    "gitlab_pipeline_for",
    "host_system",
    "inspect_image",
    "load_closure",
    "load_cosign_key",
    "load_source",
    "load_trust",
    "parse_annotation_items",
    "parse_env_items",
    "parse_reference",
    "preview",
    "push",
    "push_index",
    "push_many",
    "read_jobs_file",
    "resolve_images",
    "sbom",
    "tag_image",
    "terminate_children",
    "verify",
]

Source = str | Closure | SourceSpec | None


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: where, and the digests that identify it."""

    target: str
    manifest_digest: str
    config_digest: str
    layers: int
    image: BuiltImage
    sbom_digest: str | None = None  # the SBOM artifact's manifest, with ``sbom_format``
    base_digest: str | None = None  # --from: the manifest digest the base resolved to


def load_closure(
    installable: str | Closure | None = None,
    *,
    closure_json: str | None = None,
    nix: str = "nix",
) -> Closure:
    """A closure from an installable (built if needed), a saved path-info JSON, or as given."""
    return load_source(installable, closure_json=closure_json, nix=nix).closure


def load_source(
    source: Source,
    *,
    devshell: bool = False,
    contents: Sequence[str] = (),
    with_nix: bool = False,
    closure_json: str | None = None,
    nix: str = "nix",
) -> ImageSource:
    """Everything Nix gives for an image: the closure, and with ``devshell`` the environment.

    ``devshell``: ``source`` is a dev shell (``.#devShells.<system>.default``); its
    environment comes from ``nix print-dev-env`` and the image holds the shell's closure.
    ``contents``: more installables whose closures join the image and whose roots are linked
    into ``/``. ``with_nix``: register the whole closure in a Nix database for the image.
    """
    spec = parse_source(
        source, closure_json=closure_json, devshell=devshell, contents=contents, nix=nix
    )
    return _load_spec(spec, with_nix=with_nix)


def build(
    source: Source,
    target: str | Target,
    *,
    options: ImageOptions | None = None,
    devshell: bool = False,
    contents: Sequence[str] = (),
    closure_json: str | None = None,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
    sbom_format: str | None = None,
    registry: RegistryOptions | None = None,
) -> BuildResult:
    """Build the image of ``source`` into ``target`` (``oci:DIR[:TAG]``,
    ``docker-archive:FILE|-``). ``devshell`` and ``contents`` as in :func:`load_source`.
    ``sbom_format`` (``cyclonedx``/``spdx``): an SBOM artifact about the image joins the layout.
    ``registry``: how to reach the registry of ``options.base`` (``--from``), if any.

    Example::

        import ociforge
        result = ociforge.build(".#devshell", "oci:./out:latest",
                                options=ociforge.ImageOptions(max_layers=60))
        print(result.manifest_digest)
    """
    parsed = parse_target(target) if isinstance(target, str) else target
    check_target(parsed)  # a bad destination is refused before nix runs and before it is touched
    spec = parse_source(
        source, closure_json=closure_json, devshell=devshell, contents=contents, nix=nix
    )
    if spec.layout is not None:
        raise UsageError(f"build makes images of closures; {spec.layout} is one already")
    opts = _options_for(parsed, options or ImageOptions(), sbom_format)
    plan = plan_source(spec, opts, on_event=on_event)
    with BaseResolver(registry, on_event) as bases:
        plan = bases.attach(plan)
        if isinstance(parsed, DockerArchiveTarget):
            built = write_docker_archive(plan, parsed, on_event)
        else:
            built = write_oci(plan, parsed, on_event)
    sbom_digest = None
    if sbom_format is not None and not isinstance(parsed, DockerArchiveTarget):
        sbom_digest = layout_sbom(parsed, plan.closure, built, sbom_format)
    return BuildResult(
        target=str(parsed),
        manifest_digest=built.manifest_digest,
        config_digest=str(Digest.of(built.config)),
        layers=len(built.layers),
        image=built,
        sbom_digest=sbom_digest,
        base_digest=None if plan.base is None else str(plan.base.digest),
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
    supply: SupplyOptions | None = None,
) -> PushResult:
    """Push the image of ``source`` to every destination (``host/repo:tag``) of one registry.

    ``source`` is an installable or closure (the image is built while it streams up) or
    ``oci:DIR[:TAG]`` (an image built before, pushed byte for byte). Layers go up first, in
    parallel, then the config, then the manifest under each tag: a failed push tags nothing.
    Layers the local cache or the tag's previous manifest already know are not rebuilt.
    ``devshell`` and ``contents`` as in :func:`load_source`. ``supply``: the SBOM and cosign
    signature to attach once the tags are set (default: signed when ``OCIFORGE_COSIGN_KEY`` is
    set, no SBOM).

    Example::

        result = ociforge.push(".#devshell", ["registry.example.com/group/proj/builder:latest"],
                               devshell=True)
        print(result.manifest_digest, result.up_to_date)
    """
    refs, reg = _destinations(destinations, registry)
    spec = parse_source(
        source, closure_json=closure_json, devshell=devshell, contents=contents, nix=nix
    )
    supply = supply or SupplyOptions.from_environment()
    destination = refs[0].registry
    with (
        PushSession(destination, reg, on_event) as session,
        BaseResolver(reg, on_event, destination=destination) as bases,
    ):
        if spec.layout is not None:
            _no_image_options(spec.layout, options)
            supply.check_layout_source(spec.layout)
            return supply.attach(session, refs, session.push_layout(spec.layout, refs), None)
        opts = options or ImageOptions()
        plans: list[ImagePlan] = []  # the SBOM is made of the closure the plan read

        def make() -> ImagePlan:
            plans.append(bases.attach(plan_source(spec, opts, on_event=on_event)))
            return plans[-1]

        # Made while the registry is asked what the tags hold: nix and the round trips overlap.
        result = session.push(make, refs)
        return supply.attach(session, refs, result, plans[0].closure)


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
    refs, reg = _destinations(destinations, registry)
    spec = parse_source(
        source, closure_json=closure_json, devshell=devshell, contents=contents, nix=nix
    )
    if spec.layout is not None:
        raise UsageError("--dry-run previews images built from an installable, not oci: sources")
    opts = options or ImageOptions()
    destination = refs[0].registry
    with (
        PushSession(destination, reg, on_event) as session,
        BaseResolver(reg, on_event, destination=destination) as bases,
    ):
        return session.preview(
            lambda: bases.attach(plan_source(spec, opts, on_event=on_event)), refs
        )


def resolve_images(
    path: str | Path,
    *,
    only: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    now: datetime.datetime | None = None,
) -> tuple[ResolvedImage, ...]:
    """The images of ``images.toml`` as a run pushes them: tags filled in from ``env`` (default:
    this process's environment) and ``now`` (default: the current UTC time); ``only``: these
    entries. Raises :class:`UsageError` naming the file, entry and field of a mistake."""
    # pydantic is loaded only here: a plain push's start-up never pays for it.
    from ociforge.batch.model import load_image_repo  # noqa: PLC0415

    repo = load_image_repo(path)
    unknown = sorted(set(only) - repo.images.keys())
    if unknown:
        raise UsageError(f"{path}: no image named {', '.join(unknown)}")
    env = os.environ if env is None else env
    when = now or _pipeline_date(env) or datetime.datetime.now(datetime.timezone.utc)
    resolved = repo.resolve(env, when)
    return tuple(r for r in resolved if not only or r.name in only)


def gitlab_pipeline_for(
    path: str | Path,
    options: GitlabOptions | None = None,
    *,
    env: Mapping[str, str] | None = None,
    now: datetime.datetime | None = None,
) -> str:
    """The child pipeline of ``images.toml``: a job per image and platform, an index job per
    multi-platform image (see ``ociforge/batch/ci.py``). The jobs share the pipeline's date."""
    from ociforge.batch.ci import DATE_VARIABLE, gitlab_jobs  # noqa: PLC0415

    env = os.environ if env is None else env
    when = now or _pipeline_date(env) or datetime.datetime.now(datetime.timezone.utc)
    images, indexes = gitlab_jobs(resolve_images(path, env=env, now=when), str(path))
    opts = options or GitlabOptions()
    variables = {**opts.variables, DATE_VARIABLE: when.strftime("%Y-%m-%d")}
    return gitlab_pipeline(images, indexes, dataclasses.replace(opts, variables=variables))


def _pipeline_date(env: Mapping[str, str]) -> datetime.datetime | None:
    """``OCIFORGE_DATE`` (YYYY-MM-DD): the day a pipeline's jobs all use for ``{date}``."""
    text = env.get("OCIFORGE_DATE")
    if not text:
        return None
    try:
        day = datetime.datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise UsageError(f"OCIFORGE_DATE={text!r} is not a date (YYYY-MM-DD)") from None
    return day.replace(tzinfo=datetime.timezone.utc)


def push_many(
    images: str | Path | Sequence[ResolvedImage],
    *,
    registry: RegistryOptions | None = None,
    only: Sequence[str] = (),
    fail_fast: bool = False,
    nix: str = "nix",
    on_event: ProgressCallback = ignore_event,
    on_image: Callable[[ImageResult], None] = lambda result: None,
    platform: str | None = None,
    index_only: bool = False,
) -> BatchResult:
    """Push every image of ``images.toml`` (a path) or of :func:`resolve_images`' result, one
    session per registry: one token, one connection pool, ``registry.jobs`` blobs at once.

    Layers several images share go up once and are mounted into the other repositories. A
    failed image does not stop the others unless ``fail_fast``; each result says what
    happened (``pushed``, ``up to date``: nothing written, ``failed``, ``not run``) and
    ``on_image`` hears it as it finishes. Multi-platform images get their children under
    ``TAG-ARCH`` and an index under the tags. ``platform`` / ``index_only``: one job of a
    scaled-out pipeline (see :func:`gitlab_pipeline_for`).

    Example::

        result = ociforge.push_many("images.toml", registry=ociforge.RegistryOptions(jobs=8))
        print([(r.name, r.status) for r in result.images], result.uploaded_bytes)
    """
    resolved = resolve_images(images, only=only) if isinstance(images, (str, Path)) else images
    return _push_many(
        resolved,
        registry,
        fail_fast=fail_fast,
        nix=nix,
        on_event=on_event,
        on_image=on_image,
        platform=platform,
        index_only=index_only,
    )


def push_index(
    destinations: Sequence[str | Reference],
    sources: Sequence[str | Reference],
    *,
    registry: RegistryOptions | None = None,
    on_event: ProgressCallback = ignore_event,
) -> IndexResult:
    """Join images pushed by separate jobs (``REPO:TAG-amd64``, ``REPO:TAG-arm64``) into one
    index under ``destinations`` (tags of one repository); each child's platform is read from
    its config. Children in other repositories of the registry are mounted, not copied."""
    refs, reg = _destinations(destinations, registry)
    srcs = [s if isinstance(s, Reference) else parse_reference(s) for s in sources]
    with PushSession(refs[0].registry, reg, on_event) as session:
        return join_images(session, refs, srcs)


def copy_image(
    source: str | Reference,
    destinations: Sequence[str | Reference],
    *,
    registry: RegistryOptions | None = None,
    source_registry: RegistryOptions | None = None,
    on_event: ProgressCallback = ignore_event,
) -> CopyResult:
    """Copy the image (or index, with every child) ``source`` to ``destinations``
    (``host/repo:tag``, one registry), tagging them only once every blob is there.

    Within one registry blobs are mounted from the source repository (the credentials must
    allow pulling it); across registries each is streamed from the source's GET into the
    destination's upload and checked against its digest on the way. ``registry`` is how to
    talk to the destinations; ``source_registry`` to the source when it is another registry
    (default: the same options, minus explicit credentials, which are the destination's: the
    source's come from the credential chain).

    Example::

        ociforge.copy_image("registry.example.com/team/app:rc",
                            ["registry.example.com/team/app:stable"])
    """
    src = source if isinstance(source, Reference) else parse_reference(source)
    refs, reg = _destinations(destinations, registry)
    with PushSession(refs[0].registry, reg, on_event) as dest:
        if src.registry == refs[0].registry:
            return copy_to(
                dest.client, dest.client, src, refs, jobs=reg.jobs, chunk_size=reg.chunk_size
            )
        src_options = source_registry or dataclasses.replace(reg, credentials=None)
        with PushSession(src.registry, src_options, on_event) as origin:
            return copy_to(
                origin.client, dest.client, src, refs, jobs=reg.jobs, chunk_size=reg.chunk_size
            )


def tag_image(
    reference: str | Reference,
    tags: Sequence[str],
    *,
    registry: RegistryOptions | None = None,
) -> TagResult:
    """Put the manifest ``reference`` holds under ``tags`` of the same repository: the same
    bytes, so the same digest; no blob is read or sent."""
    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    with PushSession(ref.registry, registry) as session:
        return add_tags(session.client, ref, tags)


def inspect_image(
    reference: str | Reference, *, registry: RegistryOptions | None = None
) -> Inspection:
    """What ``reference`` holds: for an image its layers (with the store paths ociforge wrote
    in the config's history), sizes and annotations; for an index each platform's image."""
    ref = reference if isinstance(reference, Reference) else parse_reference(reference)
    with PushSession(ref.registry, registry) as session:
        return describe(session.client, ref)


def _options_for(target: Target, opts: ImageOptions, sbom_format: str | None) -> ImageOptions:
    """The options a build into ``target`` uses, refused before nix runs if they cannot be."""
    sbom_media_type(sbom_format or "cyclonedx")  # an unknown format fails here
    if not isinstance(target, DockerArchiveTarget):
        return opts
    if opts.base is not None:
        raise UsageError(BASE_IN_ARCHIVE)
    if sbom_format is not None:
        raise UsageError("--sbom attaches to OCI images: build to oci:DIR, or push")
    # docker load wants plain tar layers and Docker media types, and Docker manifests carry no
    # annotations (the ones GitLab CI adds by itself included).
    none = CompressionOptions(Compression.NONE)
    return dataclasses.replace(opts, format="docker", compression=none, annotations={})


def load_trust(
    signing_key_file: str | None = None, trusted_key_files: Sequence[str] = ()
) -> TrustKeys:
    """The signing key and trusted keys: from these files, else as ``OCIFORGE_SIGNING_KEY`` and
    ``OCIFORGE_TRUSTED_KEYS`` in this process's environment say (see ``ociforge.trust``)."""
    return trust_from_environment(
        os.environ, signing_key_file=signing_key_file, trusted_key_files=trusted_key_files
    )


def _no_image_options(layout: LayoutRef, options: ImageOptions | None) -> None:
    """An image built before is pushed byte for byte: options that would change it are refused,
    not silently ignored."""
    if options is None:
        return
    default = ImageOptions()
    changed = [
        f.name
        for f in dataclasses.fields(ImageOptions)
        if f.compare and getattr(options, f.name) != getattr(default, f.name)
    ]
    if changed:
        raise UsageError(
            f"{layout} is pushed as it was built: drop the image options "
            f"({', '.join(changed)}), or push the installable to apply them"
        )


def _destinations(
    destinations: Sequence[str | Reference], registry: RegistryOptions | None
) -> tuple[list[Reference], RegistryOptions]:
    """Parsed destinations and options, checked before nix evaluates anything."""
    refs = [d if isinstance(d, Reference) else parse_reference(d) for d in destinations]
    reg = registry or RegistryOptions()
    check_destinations(refs, reg.cache_from)
    if reg.ca_file is not None:
        check_ca_bundle(reg.ca_file)
    return refs, reg
