"""Where a built image goes besides a registry: an OCI image layout directory or a docker archive.

Targets are written as skopeo spells them: ``oci:DIR[:TAG]`` and ``docker-archive:FILE[:NAME:TAG]``
(``FILE`` may be ``-`` for stdout, so ``ociforge build ... docker-archive:- | podman load`` works).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from ociforge.assemble import BuiltImage, ImagePlan
from ociforge.assemble.layer import LayerDigests, LayerStream
from ociforge.digest import Digest
from ociforge.errors import UsageError
from ociforge.events import BlobFinished, BlobStarted, ProgressCallback, reporting
from ociforge.source import LayoutRef, parse_layout_ref
from ociforge.threads import cpu_count, ordered_map

if TYPE_CHECKING:  # the writers load when an image is written
    from ociforge.sinks.docker_archive import DockerArchiveWriter


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
    """Parse ``oci:DIR[:TAG]`` or ``docker-archive:FILE[:NAME:TAG]``."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise UsageError(
            f"unknown output {text!r}: use oci:DIR[:TAG] or docker-archive:FILE[:NAME:TAG]"
        )
    if kind == "oci":
        return parse_layout_ref(text)
    if kind == "docker-archive":
        path, _, ref = rest.partition(":")
        if ref and ":" not in ref:
            raise UsageError(f"docker-archive reference {ref!r} needs NAME:TAG")
        return DockerArchiveTarget(path, ref or None)
    raise UsageError(f"unknown output type {kind!r}: use oci:DIR[:TAG] or docker-archive:FILE")


def write_oci(plan: ImagePlan, target: LayoutRef, on_event: ProgressCallback) -> BuiltImage:
    """Stream every layer into the layout's blob store, then config, manifest and tag."""
    from ociforge.sinks.oci_layout import OciLayout  # noqa: PLC0415

    layout = OciLayout(target.directory)
    count = len(plan.layers)
    # Two layers at a time, like a push: one layer's serial parts (tar reading, the two
    # hashes, fsync) overlap the other's compression. The blobs are content-addressed and the
    # results come back in plan order, so the layout's bytes do not depend on the timing.
    workers = max(1, min(_PARALLEL_LAYERS, count))
    threads = max(1, cpu_count() // workers)

    def write_layer(index: int) -> LayerDigests:
        layer, key = plan.layers[index], f"layer {index + 1}/{count}"
        on_event(BlobStarted(key, None, layer.comment))
        stream = layer.recipe.open(threads=threads)
        # The layer stream hashes its blob already: a second sha256 pass would be pure cost.
        digest, size = layout.write_blob_stream(
            reporting(stream, key, on_event), hashed=_hashed_by(stream)
        )
        on_event(BlobFinished(key, "written", size, str(digest)))
        return stream.result

    results = list(ordered_map(write_layer, range(count), workers=workers, ahead=count))
    built = plan.finish(results)
    layout.write_blob(built.config)
    layout.add_manifest(built.manifest, built.manifest_media_type, tag=target.tag or "latest")
    return built


def write_docker_archive(
    plan: ImagePlan, target: DockerArchiveTarget, on_event: ProgressCallback
) -> BuiltImage:
    """Write a ``docker load`` archive; layers are plain tars, so their sizes are known upfront."""
    if target.path == "-":
        return _write_archive(plan, target, sys.stdout.buffer, on_event)
    try:
        with open(target.path, "wb") as out:
            return _write_archive(plan, target, out, on_event)
    except OSError as exc:
        raise UsageError(f"cannot write {target.path}: {exc.strerror}") from exc


def _write_archive(
    plan: ImagePlan, target: DockerArchiveTarget, out: BinaryIO, on_event: ProgressCallback
) -> BuiltImage:
    from ociforge.sinks.docker_archive import DockerArchiveWriter  # noqa: PLC0415

    writer: DockerArchiveWriter = DockerArchiveWriter(out)
    results: list[LayerDigests] = []
    for index, layer in enumerate(plan.layers):
        key = f"layer {index + 1}/{len(plan.layers)}"
        size = layer.recipe.tar_size()
        on_event(BlobStarted(key, size, layer.comment))
        stream = layer.recipe.open()
        writer.add_layer(reporting(stream, key, on_event), size, hashed=_diff_id_of(stream))
        results.append(stream.result)
        on_event(BlobFinished(key, "written", size, str(stream.result.digest)))
    built = plan.finish(results)
    writer.finish(built.config, _repo_tags(plan, target))
    out.flush()
    return built


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
