"""Image indexes on a registry: one tag naming an image per platform.

``push-all`` writes the index of a multi-platform image whose children it pushed itself;
``ociforge index DEST SRC...`` joins images that separate jobs pushed (one per runner
architecture), taking each child's platform from its config. The children must already be in
the destination repository or another repository of the same registry (then they are mounted:
no blob crosses the network). An index whose children are all Docker schema2 manifests is a
Docker manifest list (Docker 20.10 and older tools read only that); otherwise an OCI index.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ociforge.digest import Digest
from ociforge.errors import ImageError, UsageError
from ociforge.image.documents import (
    Descriptor,
    Index,
    Platform,
    config_platform,
    parse_manifest,
)
from ociforge.publish.options import check_destinations
from ociforge.publish.session import PushSession
from ociforge.publish.tags import put_tags, read_tags, tag_names
from ociforge.reference import Reference
from ociforge.registry import (
    BlobJob,
    BlobStream,
    RegistryClient,
    StreamOpener,
    get_manifest,
    get_small_blob,
    put_manifest,
    repository_scope,
    upload_all,
)
from ociforge.spec import DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, IMAGE_MANIFEST_TYPES, OCI_INDEX


@dataclass(frozen=True)
class IndexResult:
    """What an index push did: the tags, the index digest they hold, its children."""

    references: tuple[str, ...]
    digest: str
    media_type: str
    children: tuple[Descriptor, ...]
    up_to_date: bool = False  # every tag already held this index: nothing was written


def child_descriptor(
    client: RegistryClient, repo: str, ref: str, platform: Platform | None, scopes: Sequence[str]
) -> Descriptor:
    """The index entry of ``repo``'s image ``ref`` (tag or digest); its platform as given,
    else the one its config declares."""
    found = get_manifest(client, repo, ref, scopes=scopes)
    if found is None:
        raise UsageError(f"{repo}:{ref} does not exist: push it before joining it into an index")
    data, media_type, digest = found
    if media_type not in IMAGE_MANIFEST_TYPES:
        raise UsageError(f"{repo}:{ref} is not one image (it is {media_type}): give its children")
    if platform is None:
        config = get_small_blob(client, repo, parse_manifest(data).config.digest, scopes=scopes)
        if config is None:
            raise ImageError(f"the config of {repo}:{ref} is missing from the registry")
        platform = config_platform(config)
        if not platform.architecture or not platform.os:
            raise UsageError(f"{repo}:{ref} declares no platform: it cannot go into an index")
    return Descriptor(media_type, digest, len(data), platform=platform)


def make_index(children: Sequence[Descriptor]) -> Index:
    """The index of ``children``: a Docker manifest list when all are Docker schema2."""
    platforms = [c.platform for c in children]
    if len(set(platforms)) != len(platforms):
        raise UsageError("two images of the index have the same platform: give one of each")
    docker = all(c.media_type == DOCKER_MANIFEST for c in children)
    return Index(DOCKER_MANIFEST_LIST if docker else OCI_INDEX, tuple(children))


def put_index(session: PushSession, refs: Sequence[Reference], index: Index) -> IndexResult:
    """``index`` under every tag of ``refs`` that does not hold it yet."""
    check_destinations(refs)
    client = session.client
    data = index.to_bytes()
    scopes = session.options.scopes(refs)
    current = read_tags(client, refs, scopes, threading.Event())
    digest = Digest.of(data)
    up_to_date = all(
        (found := current.get((r.repository, r.manifest_ref))) is not None and found[2] == digest
        for r in refs
    )
    put_tags(client, refs, data, index.media_type, current)
    return IndexResult(tag_names(refs), str(digest), index.media_type, index.manifests, up_to_date)


def join_images(
    session: PushSession, refs: Sequence[Reference], sources: Sequence[Reference]
) -> IndexResult:
    """One index under ``refs`` of the images ``sources`` (same registry) name."""
    check_destinations(refs)
    if not sources:
        raise UsageError("give at least one image to join (REGISTRY/REPOSITORY:TAG)")
    for src in sources:
        if src.registry != refs[0].registry:
            raise UsageError(f"{src} is on another registry than {refs[0]}: copy it first")
    repo = refs[0].repository
    if any(r.repository != repo for r in refs):
        raise UsageError("an index is written to one repository: give its tags only")
    pull = [repository_scope(s.repository, "pull") for s in sources]
    scopes = list(dict.fromkeys([*session.options.scopes(refs), *pull]))
    children = []
    for src in sources:
        child = child_descriptor(session.client, src.repository, src.manifest_ref, None, scopes)
        if src.repository != repo:
            _mount_image(session, src.repository, repo, child, scopes)
        children.append(child)
    return put_index(session, refs, make_index(children))


def _mount_image(
    session: PushSession, source: str, repo: str, child: Descriptor, scopes: Sequence[str]
) -> None:
    """The child's blobs mounted into ``repo``, then its manifest put there by digest."""
    client = session.client
    found = get_manifest(client, source, str(child.digest), scopes=scopes)
    if found is None:
        raise UsageError(f"{source}@{child.digest} vanished while joining the index")
    manifest = parse_manifest(found[0])
    jobs = [
        BlobJob(
            key=f"{repo} {d.digest.hex[:12]}",
            open_stream=_not_mountable(d.digest, source),
            expected=d.digest,
            mount_from=source,
            size=d.size,
        )
        for d in (*manifest.layers, manifest.config)
    ]
    upload_all(client, repo, jobs, max_workers=session.options.jobs)
    put_manifest(client, repo, str(child.digest), found[0], found[1])


def _not_mountable(digest: Digest, source: str) -> StreamOpener:
    def opener() -> BlobStream:
        raise UsageError(
            f"blob {digest} could not be mounted from {source}: "
            "the token may not read it; push the image into the index's repository"
        )

    return opener
