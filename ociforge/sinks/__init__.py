"""Where a built image goes besides a registry: an OCI image layout directory or a docker archive.

Targets are written as skopeo spells them: ``oci:DIR[:TAG]`` and ``docker-archive:FILE[:NAME:TAG]``
(``FILE`` may be ``-`` for stdout, so ``ociforge build ... docker-archive:- | podman load`` works).

Nothing is touched before everything that can be checked is: :func:`parse_target` checks tags
and references, :func:`check_target` the destination, both before nix runs. A docker archive
file then appears whole or not at all (see :mod:`ociforge.sinks.files`); stdout, a device or a
FIFO cannot be replaced atomically and are streamed, so a failure there leaves a partial stream
(a reader such as ``podman load`` fails on it). An OCI layout's ``index.json`` is rewritten
atomically after every blob it names is stored, so an interrupted build never leaves it naming
a missing blob; a failed first build may leave a layout without images (and finished blobs a
later build reuses), which the next build accepts.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from ociforge.assemble import BuiltImage, ImagePlan, PlannedLayer
from ociforge.assemble.layer import EntriesLayer, LayerDigests, LayerStream, StoreLayer
from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.events import (
    BlobFinished,
    BlobStarted,
    PlanReady,
    ProgressCallback,
    reading,
    reporting,
)
from ociforge.image.documents import Descriptor
from ociforge.sinks.files import check_output_file, is_streamed, replaced_atomically
from ociforge.source import LayoutRef, parse_layout_ref
from ociforge.threads import cpu_count, ordered_map

if TYPE_CHECKING:  # the writers load when an image is written
    from ociforge.sinks.docker_archive import DockerArchiveWriter
    from ociforge.sinks.oci_layout import OciLayout

# A docker archive holds plain tar layers of sizes known before they are written: a base's
# compressed layers would have to be fetched twice (to measure, then to write).
BASE_IN_ARCHIVE = (
    "--from is not supported for docker-archive: outputs: build to oci:DIR or push, "
    "then convert (skopeo copy oci:DIR docker-archive:FILE)"
)


_PARALLEL_LAYERS = 2  # layers an OCI layout build streams at once


@dataclass(frozen=True)
class DockerArchiveTarget:
    """``docker-archive:FILE[:NAME:TAG]``: a tarball for ``docker load``."""

    path: str  # "-" is stdout
    reference: str | None = None  # name:tag recorded in the archive (RepoTags)

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.reference}" if self.reference else "")


Target = LayoutRef | DockerArchiveTarget


def parse_target(text: str) -> Target:
    """Parse ``oci:DIR[:TAG]`` or ``docker-archive:FILE[:NAME:TAG]``, checking TAG and NAME:TAG."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UsageError(
            f"unknown output {text!r}: use oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG]"
        )
    if kind == "oci":
        from ociforge.sinks.oci_layout import check_tag  # noqa: PLC0415

        layout = parse_layout_ref(text)
        if layout.tag is not None:
            check_tag(layout.tag)
        return layout
    if kind == "docker-archive":
        from ociforge.sinks.docker_archive import check_repo_tag  # noqa: PLC0415

        path, _, ref = rest.partition(":")
        if ref and ":" not in ref:
            raise UsageError(f"docker-archive reference {ref!r} needs NAME:TAG")
        return DockerArchiveTarget(path, check_repo_tag(ref) if ref else None)
    raise UsageError(f"unknown output type {kind!r}: use oci:DIR[:TAG] or docker-archive:FILE")


def check_target(target: Target) -> None:
    """Refuse a destination that cannot be written, before anything is built or touched."""
    if isinstance(target, DockerArchiveTarget):
        check_output_file(target.path)
        return
    from ociforge.sinks.oci_layout import check_layout_directory  # noqa: PLC0415

    check_layout_directory(target.directory)


def write_oci(plan: ImagePlan, target: LayoutRef, on_event: ProgressCallback) -> BuiltImage:
    """Stream every layer into the layout's blob store, then config, manifest and tag."""
    from ociforge.sinks.oci_layout import OciLayout  # noqa: PLC0415

    layout = OciLayout(target.directory)
    on_event(plan_ready(plan))
    _copy_base(plan, layout, on_event)
    count = len(plan.layers)
    # Two layers at a time, like a push: one layer's serial parts (tar reading, the two
    # hashes, fsync) overlap the other's compression. The blobs are content-addressed and the
    # results come back in plan order, so the layout's bytes do not depend on the timing.
    workers = max(1, min(_PARALLEL_LAYERS, count))
    threads = max(1, cpu_count() // workers)

    def write_layer(index: int) -> LayerDigests:
        layer, key = plan.layers[index], layer_key_name(index, count)
        on_event(BlobStarted(key, None, layer.comment))
        stream = open_counted(layer, key, on_event, threads=threads)
        # The layer stream hashes its blob already: a second sha256 pass would be pure cost.
        digest, size = layout.write_blob_stream(
            reporting(stream, key, on_event), hashed=_hashed_by(stream)
        )
        on_event(BlobFinished(key, "written", size, str(digest)))
        return stream.result

    results = list(ordered_map(write_layer, range(count), workers=workers, ahead=count))
    built = plan.finish(results)
    # Every blob the new index entry names is stored before index.json changes.
    layout.write_blob(built.config)
    layout.add_manifest(built.manifest, built.manifest_media_type, tag=target.tag or "latest")
    return built


def _copy_base(plan: ImagePlan, layout: OciLayout, on_event: ProgressCallback) -> None:
    """The base image's layers into the layout's blob store, each checked against its digest
    before it is stored under it; a blob the layout holds already is not fetched again."""
    if plan.base is None:
        return
    base, count = plan.base, len(plan.base.layers)
    for index, descriptor in enumerate(base.layers):
        key = f"base layer {index + 1}/{count}"
        if layout.has_blob(descriptor.digest):
            on_event(BlobFinished(key, "skipped", descriptor.size, str(descriptor.digest)))
            continue
        on_event(BlobStarted(key, descriptor.size, f"base image {base.name}"))
        layout.write_blob_stream(base.open_verified(descriptor), expected=descriptor.digest)
        on_event(BlobFinished(key, "written", descriptor.size, str(descriptor.digest)))


def write_docker_archive(
    plan: ImagePlan, target: DockerArchiveTarget, on_event: ProgressCallback
) -> BuiltImage:
    """Write a ``docker load`` archive; layers are plain tars, so their sizes are known upfront.

    A file is replaced only by a complete archive; stdout, devices and FIFOs are streamed.
    """
    check_target(target)  # a caller of this function may not have called it
    if plan.base is not None:
        raise UsageError(BASE_IN_ARCHIVE)
    if target.path == "-":
        return _write_archive(plan, target, sys.stdout.buffer, "stdout", on_event)
    if is_streamed(target.path):
        try:
            with open(target.path, "wb") as out:
                return _write_archive(plan, target, out, target.path, on_event)
        except OSError as exc:
            raise ImageError(f"cannot write {target.path}: {exc.strerror or exc}") from exc
    with replaced_atomically(target.path) as out:
        return _write_archive(plan, target, out, target.path, on_event)


def _write_archive(
    plan: ImagePlan,
    target: DockerArchiveTarget,
    out: IO[bytes],
    name: str,
    on_event: ProgressCallback,
) -> BuiltImage:
    from ociforge.sinks.docker_archive import DockerArchiveWriter  # noqa: PLC0415

    writer: DockerArchiveWriter = DockerArchiveWriter(out, name)
    results: list[LayerDigests] = []
    on_event(plan_ready(plan))
    for index, layer in enumerate(plan.layers):
        key = layer_key_name(index, len(plan.layers))
        size = layer.recipe.tar_size()
        on_event(BlobStarted(key, size, layer.comment))
        stream = open_counted(layer, key, on_event)
        writer.add_layer(reporting(stream, key, on_event), size, hashed=_diff_id_of(stream))
        results.append(stream.result)
        on_event(BlobFinished(key, "written", size, str(stream.result.digest)))
    built = plan.finish(results)
    writer.finish(built.config, _repo_tags(plan, target))
    try:
        out.flush()  # the last buffered bytes: ENOSPC may show only here
    except OSError as exc:
        raise ImageError(f"cannot write {name}: {exc.strerror or exc}") from exc
    return built


def layer_key_name(index: int, count: int) -> str:
    """How progress events name a layer: ``layer 3/100``."""
    return f"layer {index + 1}/{count}"


def plan_ready(plan: ImagePlan) -> PlanReady:
    """The :class:`PlanReady` event of ``plan``: what each layer will read, before it is read."""
    count = len(plan.layers)
    keys = tuple(layer_key_name(i, count) for i in range(count))
    return PlanReady(keys, tuple(_input_bytes(plan, layer) for layer in plan.layers))


def _input_bytes(plan: ImagePlan, layer: PlannedLayer) -> int:
    recipe = layer.recipe
    if isinstance(recipe, StoreLayer):
        paths = plan.closure.paths
        return sum(paths[p].nar_size for p in recipe.paths if p in paths)
    if isinstance(recipe, EntriesLayer):
        # Small synthetic files: their data plus a tar header each is close enough.
        return sum(_TAR_BLOCK + len(entry.data) for entry in recipe.entries)
    return 0


_TAR_BLOCK = 512


def open_counted(
    layer: PlannedLayer, key: str, on_event: ProgressCallback, *, threads: int | None = None
) -> LayerStream:
    """``layer.recipe.open(threads=...)``, telling ``on_event`` of each input chunk read
    (:class:`InputProgress`, from the stream's reading thread): what progress is measured on."""
    recipe = layer.recipe
    chunks = reading(recipe.tar_chunks(), key, on_event)
    return LayerStream(chunks, recipe.compression, threads=threads)


def _hashed_by(stream: LayerStream) -> Callable[[], tuple[Digest, int]]:
    return lambda: (stream.digest, stream.size)


def _diff_id_of(stream: LayerStream) -> Callable[[], Digest]:
    return lambda: stream.result.diff_id


def _repo_tags(plan: ImagePlan, target: DockerArchiveTarget) -> Sequence[str]:
    if target.reference:
        return [target.reference]
    roots = plan.closure.roots
    base = roots[0].rsplit("/", 1)[-1].split("-", 1)[-1] if roots else "image"
    name = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-._") or "image"
    return [f"{name}:latest"]


def attach_sbom_to_layout(directory: str, built: BuiltImage, sbom: bytes, media_type: str) -> str:
    """Store the SBOM artifact about ``built`` in the layout, listed untagged in index.json
    (where OCI layout readers such as oras find referrers); its manifest digest."""
    from ociforge.sinks.oci_layout import OciLayout  # noqa: PLC0415
    from ociforge.supply.artifacts import sbom_artifact  # noqa: PLC0415

    layout = OciLayout(directory)
    subject = Descriptor.of(built.manifest, built.manifest_media_type)
    artifact = sbom_artifact(sbom, media_type, subject)
    for blob in artifact.blobs:  # blobs before the index entry that names them
        layout.write_blob(blob)
    return str(layout.add_manifest(artifact.manifest, artifact.media_type, tag=None))
