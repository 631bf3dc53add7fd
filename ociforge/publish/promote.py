"""Promotion and inspection of images already in a registry: copy, tag, describe.

A copy reads the source's manifests (an index with every child, checked against the digests
that name them), gets each blob into every destination repository (already there: skipped;
same registry: mounted where the token may pull the source; else streamed from the source's GET
into the destination's upload, hashed on the way: a source that sends other bytes fails the
copy), then writes the children by digest and, last, the tags. So a failed copy moves no tag.

A tag is a manifest PUT of the bytes the tag's reference holds: no blob is read or sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from ociforge.errors import ImageError, UsageError
from ociforge.image.documents import (
    Descriptor,
    Platform,
    parse_config_summary,
    parse_index,
    parse_manifest,
)
from ociforge.publish.options import PushedBlob
from ociforge.reference import Reference
from ociforge.registry import (
    BlobDownload,
    BlobJob,
    RegistryClient,
    get_manifest,
    get_small_blob,
    put_manifest,
    upload_all,
)
from ociforge.spec import IMAGE_MANIFEST_TYPES, INDEX_TYPES

# An index of indexes is as deep as anyone nests them; deeper is refused, not walked forever.
_MAX_DEPTH = 2


@dataclass(frozen=True)
class Fetched:
    """One manifest as the registry holds it: its exact bytes, media type and digest."""

    data: bytes
    media_type: str
    digest: str

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


@dataclass(frozen=True)
class CopyResult:
    """What a copy did: the destination tags, the manifest digest they hold (the source's),
    every blob's outcome per destination repository, and whether nothing needed doing."""

    source: str
    references: tuple[str, ...]
    manifest_digest: str
    blobs: tuple[PushedBlob, ...]
    manifests: int  # manifests written per repository: children and the top one
    up_to_date: bool = False


@dataclass(frozen=True)
class TagResult:
    """The tags written and the manifest digest they now hold."""

    references: tuple[str, ...]
    manifest_digest: str


@dataclass(frozen=True)
class InspectedLayer:
    descriptor: Descriptor
    comment: str  # the config's history comment: ociforge's name the layer's store paths


@dataclass(frozen=True)
class InspectedImage:
    """One image manifest: its platform (the index entry's, else the config's) and layers."""

    digest: str
    media_type: str
    platform: Platform | None
    created: str | None
    config: Descriptor
    layers: tuple[InspectedLayer, ...]
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes a pull transfers: config and layers (compressed)."""
        return self.config.size + sum(layer.descriptor.size for layer in self.layers)


@dataclass(frozen=True)
class Inspection:
    """What ``REF`` holds: one image, or an index (``images`` then lists its children)."""

    reference: str
    digest: str
    media_type: str
    annotations: dict[str, str]
    images: tuple[InspectedImage, ...]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def fetch(client: RegistryClient, repo: str, ref: str) -> Fetched:
    """The manifest ``ref`` (tag or digest) of ``repo``; UsageError naming it if absent."""
    found = get_manifest(client, repo, ref)
    if found is None:
        raise UsageError(f"{client.registry}/{repo} has no manifest {ref}")
    data, header_type, digest = found
    return Fetched(data, _media_type(data, header_type), str(digest))


def _media_type(data: bytes, header_type: str) -> str:
    """The document's own ``mediaType`` (what a PUT must send as Content-Type), else the
    registry's Content-Type header."""
    try:
        declared = json.loads(data).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return declared if isinstance(declared, str) and declared else header_type


def walk(client: RegistryClient, repo: str, top: Fetched) -> tuple[list[Fetched], list[Descriptor]]:
    """Every manifest under ``top``, children before their index (the order to PUT them),
    and every blob they name, each once."""
    manifests: list[Fetched] = []
    blobs: dict[str, Descriptor] = {}
    _walk(client, repo, top, 0, manifests=manifests, blobs=blobs)
    return manifests, list(blobs.values())


def _walk(
    client: RegistryClient,
    repo: str,
    fetched: Fetched,
    depth: int,
    *,
    manifests: list[Fetched],
    blobs: dict[str, Descriptor],
) -> None:
    if fetched.is_index:
        if depth >= _MAX_DEPTH:
            raise ImageError(f"{repo}@{fetched.digest}: indexes nest deeper than {_MAX_DEPTH}")
        for child in parse_index(fetched.data).manifests:
            if child.media_type not in IMAGE_MANIFEST_TYPES | INDEX_TYPES:
                raise ImageError(
                    f"{repo}@{fetched.digest} lists {child.digest} of type {child.media_type}, "
                    "which is not an image manifest or index: not copied"
                )
            child_doc = fetch(client, repo, str(child.digest))
            _walk(client, repo, child_doc, depth + 1, manifests=manifests, blobs=blobs)
    else:
        image = parse_manifest(fetched.data)
        for descriptor in (image.config, *image.layers):
            blobs.setdefault(str(descriptor.digest), descriptor)
    if all(m.digest != fetched.digest for m in manifests):
        manifests.append(fetched)


def copy_to(
    source: RegistryClient,
    dest: RegistryClient,
    src: Reference,
    refs: Sequence[Reference],
    *,
    jobs: int = 4,
    chunk_size: int | None = None,
) -> CopyResult:
    """Copy ``src`` (read through ``source``) to ``refs`` (written through ``dest``; pass the
    same client for one registry: then blobs are mounted from ``src``'s repository)."""
    top = fetch(source, src.repository, src.manifest_ref)
    manifests, blobs = walk(source, src.repository, top)
    names = tuple(str(r) for r in refs)
    if _tags_hold(dest, refs, top.digest):
        return CopyResult(str(src), names, top.digest, (), len(manifests), up_to_date=True)
    pushed: list[PushedBlob] = []
    done: list[str] = []
    for repo in dict.fromkeys(r.repository for r in refs):
        # Same registry: mount from the source; else from a destination filled already.
        mount = src.repository if source is dest else (done[0] if done else None)
        work = [_blob_job(source, src.repository, d, mount) for d in blobs]
        results = upload_all(dest, repo, work, max_workers=jobs, chunk_size=chunk_size)
        pushed += [PushedBlob(d, r.outcome) for d, r in zip(blobs, results, strict=True)]
        for child in manifests[:-1]:  # the top one goes under the tags, last
            put_manifest(dest, repo, child.digest, child.data, child.media_type)
        done.append(repo)
    for ref in refs:
        put_manifest(dest, ref.repository, ref.manifest_ref, top.data, top.media_type)
    return CopyResult(str(src), names, top.digest, tuple(pushed), len(manifests))


def _tags_hold(client: RegistryClient, refs: Sequence[Reference], digest: str) -> bool:
    """Whether every destination tag holds ``digest`` already (nothing to copy then)."""
    for ref in refs:
        found = get_manifest(client, ref.repository, ref.manifest_ref)
        if found is None or str(found[2]) != digest:
            return False
    return True


def _blob_job(
    source: RegistryClient, repo: str, descriptor: Descriptor, mount_from: str | None
) -> BlobJob:
    digest, size = descriptor.digest, descriptor.size
    return BlobJob(
        key=str(digest)[:19],
        open_stream=lambda: BlobDownload(source, repo, digest, size),
        expected=digest,
        mount_from=mount_from,
        size=size,
        description=descriptor.media_type.rsplit(".", 1)[-1],
    )


def add_tags(client: RegistryClient, ref: Reference, tags: Sequence[str]) -> TagResult:
    """PUT the manifest ``ref`` holds, byte for byte, under ``tags`` of its repository."""
    if not tags:
        raise UsageError("give at least one new tag")
    targets = [ref.with_tag(tag) for tag in tags]  # checks the tag grammar before any request
    found = fetch(client, ref.repository, ref.manifest_ref)
    for target in targets:
        put_manifest(client, ref.repository, target.manifest_ref, found.data, found.media_type)
    return TagResult(tuple(str(t) for t in targets), found.digest)


def describe(client: RegistryClient, ref: Reference) -> Inspection:
    """What ``ref`` holds, for people: platforms, layers with their history comments, sizes."""
    top = fetch(client, ref.repository, ref.manifest_ref)
    images: tuple[InspectedImage, ...]
    if not top.is_index:
        images = (_image(client, ref.repository, top, None),)
        annotations = dict(parse_manifest(top.data).annotations)
    else:
        index = parse_index(top.data)
        annotations = dict(index.annotations)
        children = [(fetch(client, ref.repository, str(d.digest)), d) for d in index.manifests]
        images = tuple(
            _image(client, ref.repository, child, entry.platform)
            for child, entry in children
            if not child.is_index
        )
    return Inspection(str(ref), top.digest, top.media_type, annotations, images)


def _image(
    client: RegistryClient, repo: str, fetched: Fetched, platform: Platform | None
) -> InspectedImage:
    manifest = parse_manifest(fetched.data)
    config = get_small_blob(client, repo, manifest.config.digest)
    if config is None:
        raise ImageError(f"{repo}@{fetched.digest}: its config {manifest.config.digest} is missing")
    summary = parse_config_summary(config, len(manifest.layers))
    layers = tuple(
        InspectedLayer(d, c) for d, c in zip(manifest.layers, summary.layer_comments, strict=True)
    )
    return InspectedImage(
        digest=fetched.digest,
        media_type=fetched.media_type,
        platform=platform or summary.platform,
        created=summary.created,
        config=manifest.config,
        layers=layers,
        annotations=dict(manifest.annotations),
    )
